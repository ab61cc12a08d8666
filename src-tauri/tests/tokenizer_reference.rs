//! Our tokenizer, built from a GGUF's vocabulary, against llama.cpp's tokens for the same text
//! (the shared reference fixtures).

mod common;

use smollm3_bot::model::GgufFile;
use smollm3_bot::text::tokenizer;

#[test]
fn tokenizer_from_gguf_matches_llama_cpp() {
    for name in ["tiny-smollm3-f32", "tiny-smollm3-q4_k_m"] {
        let g = GgufFile::open(common::reference(&format!("{name}.gguf"))).unwrap();
        let j = common::json(&common::reference(&format!("{name}.llama-cpp.kvf32.json")));
        let tok = tokenizer::from_gguf(&g).unwrap();
        let text = j["tokenize_text"].as_str().unwrap();
        let want: Vec<u32> = j["tokenize_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = tokenizer::encode(&tok, text).unwrap();
        assert_eq!(got, want, "{name}");
        assert_eq!(tok.decode(&got, false).unwrap(), text, "round trip");
    }
}
