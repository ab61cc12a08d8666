//! Renders every case of the shared chat-template fixture and compares bytes with the
//! reference output (produced by `transformers`' `apply_chat_template`).

use std::path::PathBuf;

use chrono::NaiveDate;
use serde::Deserialize;
use smollm3_bot::engine::events::ChatMessage;
use smollm3_bot::text::chat_template::{ChatTemplate, RenderOptions};

#[derive(Deserialize)]
struct Fixture {
    template: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    kwargs: serde_json::Map<String, serde_json::Value>,
    #[serde(default = "yes")]
    add_generation_prompt: bool,
    today: String,
    expected: String,
}

fn yes() -> bool {
    true
}

fn fixtures_dir() -> PathBuf {
    match std::env::var_os("SMOLLM3_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"),
    }
}

fn load() -> (PathBuf, Fixture) {
    let dir = fixtures_dir().join("chat_template");
    let path = dir.join("cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let fixture = serde_json::from_str(&text).expect("cases.json parses");
    (dir, fixture)
}

fn check_all(template: &ChatTemplate, fixture: &Fixture) {
    assert_eq!(fixture.cases.len(), 10, "the fixture has ten cases");
    let mut failures = Vec::new();
    for case in &fixture.cases {
        let opts = RenderOptions {
            add_generation_prompt: case.add_generation_prompt,
            today: NaiveDate::parse_from_str(&case.today, "%Y-%m-%d")
                .unwrap_or_else(|e| panic!("{}: bad date {:?}: {e}", case.name, case.today)),
            extra: case.kwargs.clone(),
        };
        match template.render(&case.messages, &opts) {
            Ok(out) if out == case.expected => {}
            Ok(out) => failures.push(format!(
                "{}:\n--- expected\n{:?}\n--- got\n{:?}",
                case.name, case.expected, out
            )),
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn builtin_template_matches_reference_renderings() {
    let (_, fixture) = load();
    check_all(&ChatTemplate::builtin(), &fixture);
}

#[test]
fn fixture_template_file_matches_reference_renderings() {
    let (dir, fixture) = load();
    let source = std::fs::read_to_string(dir.join(&fixture.template)).expect("template readable");
    check_all(
        &ChatTemplate::new(&source).expect("template compiles"),
        &fixture,
    );
}

#[test]
fn cli_render_prints_exactly_the_prompt() {
    let (dir, fixture) = load();
    let case = fixture
        .cases
        .iter()
        .find(|c| !c.add_generation_prompt)
        .expect("a case without generation prompt");
    let tmp = tempfile::tempdir().unwrap();
    let messages = tmp.path().join("m.json");
    let kwargs = tmp.path().join("k.json");
    std::fs::write(&messages, serde_json::to_string(&case.messages).unwrap()).unwrap();
    let mut k = case.kwargs.clone();
    k.insert("add_generation_prompt".into(), false.into());
    std::fs::write(&kwargs, serde_json::Value::Object(k).to_string()).unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smollm3-bot"))
        .arg("render")
        .arg("--messages")
        .arg(&messages)
        .arg("--kwargs")
        .arg(&kwargs)
        .args(["--today", &case.today])
        .arg("--template")
        .arg(dir.join(&fixture.template))
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), case.expected);
}

/// The reference model's tokenizer (the SmolLM3 special-token layout).
fn reference_tokenizer() -> tokenizers::Tokenizer {
    let path = fixtures_dir().join("reference/tiny-smollm3-f32.gguf");
    let g = smollm3_bot::model::GgufFile::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    smollm3_bot::text::tokenizer::from_gguf(&g).unwrap()
}

#[test]
fn prompts_tokenize_as_llama_cpp_parses_them() {
    use smollm3_bot::text::prompt::{self, AddedTokens};
    use smollm3_bot::text::tokenizer;
    let tok = reference_tokenizer();
    let added = AddedTokens::of(&tok);

    // llama.cpp's own tokenization of a ChatML prompt (special tokens parsed).
    let j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            fixtures_dir().join("reference/tiny-smollm3-f32.llama-cpp.kvf32.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let want: Vec<u32> = j["tokenize_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let text = j["tokenize_text"].as_str().unwrap();
    assert_eq!(prompt::markup(text, &tok, &added).unwrap(), want);

    // Every fixture conversation: the same ids as the whole rendered prompt tokenized with
    // special tokens parsed, which is what llama.cpp does with it.
    let (_, fixture) = load();
    let template = ChatTemplate::builtin();
    for case in &fixture.cases {
        let opts = RenderOptions {
            add_generation_prompt: case.add_generation_prompt,
            today: NaiveDate::parse_from_str(&case.today, "%Y-%m-%d").unwrap(),
            extra: case.kwargs.clone(),
        };
        let whole = tokenizer::encode(&tok, &case.expected).unwrap();
        let ours =
            prompt::conversation_ids(&template, &tok, &added, &case.messages, &[], &opts).unwrap();
        assert_eq!(ours, whole, "{}", case.name);
    }
}

#[test]
fn special_token_text_typed_in_a_message_is_tokenized_as_plain_text() {
    use smollm3_bot::text::prompt::{self, AddedTokens};
    use smollm3_bot::text::tokenizer;
    let tok = reference_tokenizer();
    let added = AddedTokens::of(&tok);
    let im_start = tok.token_to_id("<|im_start|>").unwrap();
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let template = ChatTemplate::builtin();
    let opts = RenderOptions::for_date(NaiveDate::from_ymd_opt(2026, 11, 27).unwrap());
    let forged = "<|im_start|>";
    for role in ["user", "system", "tool"] {
        let mut messages = vec![ChatMessage::new(role, forged)];
        if role != "user" {
            messages.push(ChatMessage::new("user", "hi"));
        }
        let ids = prompt::conversation_ids(&template, &tok, &added, &messages, &[], &opts).unwrap();
        let mut benign = messages.clone();
        benign[0].content = "x".into();
        let benign =
            prompt::conversation_ids(&template, &tok, &added, &benign, &[], &opts).unwrap();
        let count = |v: &[u32], id: u32| v.iter().filter(|&&i| i == id).count();
        assert_eq!(count(&ids, im_start), count(&benign, im_start), "{role}");
        assert_eq!(count(&ids, im_end), count(&benign, im_end), "{role}");
        // The prompt still says what was typed.
        let text = template.render(&messages, &opts).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{role}");
    }
    // In a user turn, the typed characters have the ids of the same characters tokenized as
    // plain text, right up to the turn's real end.
    let messages = vec![ChatMessage::new("user", forged)];
    let ids = prompt::conversation_ids(&template, &tok, &added, &messages, &[], &opts).unwrap();
    let mut turn = tokenizer::encode_plain(&tok, &format!("user\n{forged}")).unwrap();
    turn.push(im_end);
    assert!(
        ids.windows(turn.len()).any(|w| w == turn.as_slice()),
        "{ids:?} lacks {turn:?}"
    );
    assert_ne!(tokenizer::encode_plain(&tok, forged).unwrap(), [im_start]);
}
