//! Streaming detokenizer: turns generated token ids into text one token at a time.
//!
//! A byte-level BPE token is a run of bytes, not of characters: an emoji can arrive as four
//! tokens and a CJK character as two, and decoding either half alone gives U+FFFD. The
//! detokenizer holds back an incomplete UTF-8 sequence until the tokens that finish it arrive,
//! so the stream never shows half a character and never loses one.
//!
//! With a `ByteLevel` decoder (Llama-3 style vocabularies such as SmolLM3's) it works on raw
//! bytes: each token is mapped back through the byte-level alphabet and only the bytes not yet
//! shown are kept, so each token costs O(1). Added tokens that are text (`<think>`, `</think>`)
//! come out as their text; control tokens (added tokens marked special, such as
//! `<|reserved_special_token_54|>` or `<|im_start|>`) come out as nothing, as llama.cpp and
//! transformers render them by default, so a reply never shows, stores or sends their names.
//! With any other decoder it decodes a short window of recent tokens and emits the
//! difference, which is also O(1) per token.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use tokenizers::{DecoderWrapper, Tokenizer};

/// Why a token could not be turned into text.
#[derive(Debug, thiserror::Error)]
pub enum DetokError {
    /// The id is outside the vocabulary.
    #[error("token id {0} is not in the vocabulary")]
    UnknownId(u32),
    /// The tokenizer's decoder failed.
    #[error("cannot decode tokens: {0}")]
    Decode(String),
}

/// Incremental detokenizer for one generated reply.
pub struct Detokenizer<'a> {
    tokenizer: &'a Tokenizer,
    mode: Mode,
    /// Control tokens: nothing of them is shown.
    control: HashSet<u32>,
}

/// Added tokens that keep their text although a vocabulary may mark them special: the
/// reasoning markers, which the think splitter reads.
const TEXT_MARKERS: [&str; 2] = ["<think>", "</think>"];

enum Mode {
    /// Byte-level vocabulary: bytes of an unfinished UTF-8 sequence wait in `pending`.
    Bytes {
        added: HashMap<u32, String>,
        pending: Vec<u8>,
    },
    /// Any other decoder: `ids[prefix..read]` is context already shown, `ids[read..]` is not.
    Window {
        ids: Vec<u32>,
        prefix: usize,
        read: usize,
    },
}

impl<'a> Detokenizer<'a> {
    /// A detokenizer for a reply generated with this tokenizer's vocabulary.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        let mode = match tokenizer.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => Mode::Bytes {
                added: tokenizer
                    .get_added_tokens_decoder()
                    .into_iter()
                    .map(|(id, tok)| (id, tok.content))
                    .collect(),
                pending: Vec::new(),
            },
            _ => Mode::Window {
                ids: Vec::new(),
                prefix: 0,
                read: 0,
            },
        };
        let control = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, tok)| tok.special && !TEXT_MARKERS.contains(&tok.content.as_str()))
            .map(|(id, _)| id)
            .collect();
        Self {
            tokenizer,
            mode,
            control,
        }
    }

    /// Adds one token and returns the text it completes (often empty mid-character).
    pub fn push(&mut self, id: u32) -> Result<String, DetokError> {
        if self.control.contains(&id) {
            return Ok(String::new());
        }
        match &mut self.mode {
            Mode::Bytes { added, pending } => {
                if let Some(content) = added.get(&id) {
                    pending.extend_from_slice(content.as_bytes());
                } else {
                    let token = self
                        .tokenizer
                        .id_to_token(id)
                        .ok_or(DetokError::UnknownId(id))?;
                    push_token_bytes(&token, pending);
                }
                Ok(take_complete(pending))
            }
            Mode::Window { ids, prefix, read } => {
                if self.tokenizer.id_to_token(id).is_none() {
                    return Err(DetokError::UnknownId(id));
                }
                ids.push(id);
                let shown = decode(self.tokenizer, &ids[*prefix..*read])?;
                let all = decode(self.tokenizer, &ids[*prefix..])?;
                if all.ends_with(char::REPLACEMENT_CHARACTER) {
                    // Most likely a character cut in the middle: wait for the rest.
                    return Ok(String::new());
                }
                let new = text_after(&shown, &all);
                // Keep the last shown tokens as context (decoders such as Metaspace treat
                // the first token of a sequence differently) and forget the rest.
                ids.drain(..*read);
                *prefix = 0;
                *read = ids.len();
                Ok(new)
            }
        }
    }

    /// Ends the reply: returns whatever was held back, with U+FFFD for bytes that never
    /// became a character.
    pub fn finish(&mut self) -> String {
        match &mut self.mode {
            Mode::Bytes { pending, .. } => {
                let rest = String::from_utf8_lossy(pending).into_owned();
                pending.clear();
                rest
            }
            Mode::Window { ids, prefix, read } => {
                let shown = decode(self.tokenizer, &ids[*prefix..*read]).unwrap_or_default();
                let all = decode(self.tokenizer, &ids[*prefix..]).unwrap_or_default();
                ids.clear();
                *prefix = 0;
                *read = 0;
                text_after(&shown, &all)
            }
        }
    }
}

fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String, DetokError> {
    tokenizer
        .decode(ids, false)
        .map_err(|e| DetokError::Decode(e.to_string()))
}

/// The part of `all` that follows `shown`; `shown` is normally a prefix of it.
fn text_after(shown: &str, all: &str) -> String {
    if let Some(rest) = all.strip_prefix(shown) {
        return rest.to_owned();
    }
    // A decoder that rewrote earlier text: emit from where the two first differ.
    let common = shown
        .char_indices()
        .zip(all.chars())
        .find(|((_, a), b)| a != b)
        .map_or(shown.len().min(all.len()), |((i, _), _)| i);
    all.get(common..).unwrap_or_default().to_owned()
}

/// Appends a byte-level token's bytes. Like the `ByteLevel` decoder, a token with a character
/// outside the byte alphabet is taken as its own UTF-8.
fn push_token_bytes(token: &str, out: &mut Vec<u8>) {
    let table = char_to_byte();
    let start = out.len();
    for c in token.chars() {
        match table.get(&c) {
            Some(&b) => out.push(b),
            None => {
                out.truncate(start);
                out.extend_from_slice(token.as_bytes());
                return;
            }
        }
    }
}

/// What one vocabulary entry stands for in a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenBytes {
    /// Text: the bytes it adds to the reply (reasoning markers included).
    Text(Vec<u8>),
    /// A control token, shown as nothing: its name (`<|im_end|>`).
    Control(String),
}

/// Every id below `n_vocab` as what it adds to a reply, by the same rules as [`Detokenizer`]
/// (ids the tokenizer does not know, such as a model's padding rows, are control tokens named
/// `<[id]>`). Constrained decoding matches grammars against these bytes.
pub fn vocabulary_bytes(tokenizer: &Tokenizer, n_vocab: usize) -> Vec<TokenBytes> {
    let added = tokenizer.get_added_tokens_decoder();
    let byte_level = matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
    (0..n_vocab as u32)
        .map(|id| {
            if let Some(tok) = added.get(&id) {
                return if tok.special && !TEXT_MARKERS.contains(&tok.content.as_str()) {
                    TokenBytes::Control(tok.content.clone())
                } else {
                    TokenBytes::Text(tok.content.clone().into_bytes())
                };
            }
            match tokenizer.id_to_token(id) {
                Some(token) if byte_level => {
                    let mut bytes = Vec::new();
                    push_token_bytes(&token, &mut bytes);
                    TokenBytes::Text(bytes)
                }
                Some(_) => TokenBytes::Text(
                    tokenizer
                        .decode(&[id], false)
                        .unwrap_or_default()
                        .into_bytes(),
                ),
                None => TokenBytes::Control(format!("<[{id}]>")),
            }
        })
        .collect()
}

/// Removes and returns the longest run of complete characters at the front of `pending`.
/// Invalid bytes become U+FFFD; an unfinished sequence at the end stays.
fn take_complete(pending: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut start = 0;
    loop {
        match std::str::from_utf8(&pending[start..]) {
            Ok(s) => {
                out.push_str(s);
                start = pending.len();
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // from_utf8 has just reported this range as valid, so nothing is lost here.
                out.push_str(std::str::from_utf8(&pending[start..start + valid]).unwrap_or(""));
                start += valid;
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        start += bad;
                    }
                    None => break,
                }
            }
        }
    }
    pending.drain(..start);
    out
}

/// The byte-level alphabet (as in GPT-2): printable bytes stand for themselves, the others
/// (controls, space, a few Latin-1 ones) are shifted to code points from U+0100 on.
fn byte_to_char(b: u8) -> char {
    let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable {
        char::from(b)
    } else {
        let rank = (0..b)
            .filter(|&x| !matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF))
            .count() as u32;
        char::from_u32(256 + rank).unwrap_or(char::REPLACEMENT_CHARACTER)
    }
}

/// The inverse of [`byte_to_char`], built once.
fn char_to_byte() -> &'static HashMap<char, u8> {
    static TABLE: OnceLock<HashMap<char, u8>> = OnceLock::new();
    TABLE.get_or_init(|| (0..=255u8).map(|b| (byte_to_char(b), b)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// The reasoning markers (one marked special, as some vocabularies do: it stays text),
    /// then control tokens.
    const SPECIALS: [&str; 4] = [
        "<think>",
        "</think>",
        "<|im_end|>",
        "<|reserved_special_token_54|>",
    ];

    /// Byte-level BPE: the 256 byte symbols (id = byte value), a few merges, added specials.
    fn tokenizer(decoder: serde_json::Value) -> Tokenizer {
        let sym = |s: &str| s.bytes().map(byte_to_char).collect::<String>();
        let mut vocab = serde_json::Map::new();
        for b in 0..=255u8 {
            vocab.insert(byte_to_char(b).to_string(), b.into());
        }
        // " h"+"i" → " hi"; the first two bytes of 中 (E4 B8) merge, AD stays alone.
        let merges = [
            (sym(" "), sym("h")),
            (sym(" h"), sym("i")),
            ("\u{e4}".to_string(), "\u{b8}".to_string()),
        ];
        for (a, b) in &merges {
            let id = vocab.len();
            vocab.insert(format!("{a}{b}"), id.into());
        }
        let added: Vec<_> = SPECIALS
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::json!({"id": vocab.len() + i, "content": s, "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false, "special": i != 1})
            })
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": decoder,
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab,
                "merges": merges.iter().map(|(a, b)| vec![a, b]).collect::<Vec<_>>()}
        });
        Tokenizer::from_str(&json.to_string()).expect("test tokenizer builds")
    }

    fn byte_level() -> Tokenizer {
        tokenizer(
            serde_json::json!({"type": "ByteLevel", "add_prefix_space": true,
            "trim_offsets": true, "use_regex": true}),
        )
    }

    /// Same vocabulary, decoder wrapped in a Sequence: exercises the window mode.
    fn windowed() -> Tokenizer {
        tokenizer(serde_json::json!({"type": "Sequence", "decoders": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}
        ]}))
    }

    fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, false).expect("encodes").get_ids().to_vec()
    }

    fn pieces(tok: &Tokenizer, ids: &[u32]) -> (Vec<String>, String) {
        let mut d = Detokenizer::new(tok);
        let out = ids
            .iter()
            .map(|&id| d.push(id).expect("known id"))
            .collect();
        (out, d.finish())
    }

    #[test]
    fn emoji_over_four_byte_tokens_comes_out_whole_once() {
        for tok in [byte_level(), windowed()] {
            let ids = ids(&tok, "👋");
            assert_eq!(ids.len(), 4, "one token per byte");
            let (out, rest) = pieces(&tok, &ids);
            assert_eq!(out, ["", "", "", "👋"]);
            assert_eq!(rest, "");
        }
    }

    #[test]
    fn cjk_split_over_two_tokens() {
        for tok in [byte_level(), windowed()] {
            let ids = ids(&tok, "a中b");
            assert_eq!(ids.len(), 4, "a, E4B8, AD, b");
            let (out, _) = pieces(&tok, &ids);
            assert_eq!(out, ["a", "", "中", "b"]);
        }
    }

    #[test]
    fn leading_space_token_keeps_its_space() {
        let tok = byte_level();
        let ids = ids(&tok, "Oh hi");
        assert_eq!(ids.len(), 3, "O, h, ' hi'");
        let (out, _) = pieces(&tok, &ids);
        assert_eq!(out, ["O", "h", " hi"]);
        let (out, _) = pieces(&windowed(), &ids);
        assert_eq!(out.concat(), "Oh hi");
    }

    #[test]
    fn reasoning_markers_come_out_as_their_text_control_tokens_as_nothing() {
        for tok in [byte_level(), windowed()] {
            let ids = ids(
                &tok,
                "<think>\nhm</think>\nok<|im_end|><|reserved_special_token_54|>!",
            );
            assert_eq!(ids[0], tok.token_to_id("<think>").unwrap());
            let (out, rest) = pieces(&tok, &ids);
            assert_eq!(out[0], "<think>");
            assert_eq!(out[1], "\n");
            assert_eq!(out.concat() + &rest, "<think>\nhm</think>\nok!");
        }
    }

    #[test]
    fn streamed_text_equals_whole_decode() {
        let samples = [
            "plain ASCII with\ttabs\r\nand newlines",
            "Grüße, ¡olé! ÿ\u{ad} soft-hyphen and NBSP\u{a0}here",
            "中文 日本語 한국어 🇫🇷 👨‍👩‍👧 e\u{301}",
            "<think>\n\n</think>\n🙂",
        ];
        for tok in [byte_level(), windowed()] {
            for text in samples {
                let ids = ids(&tok, text);
                let (out, rest) = pieces(&tok, &ids);
                assert_eq!(out.concat() + &rest, text);
                assert_eq!(out.concat() + &rest, tok.decode(&ids, false).unwrap());
                assert!(out.iter().all(|p| !p.contains(char::REPLACEMENT_CHARACTER)));
            }
        }
    }

    #[test]
    fn invalid_bytes_are_replaced_not_stuck() {
        let tok = byte_level();
        let byte = |b: u8| tok.token_to_id(&byte_to_char(b).to_string()).unwrap();
        let mut d = Detokenizer::new(&tok);
        // A lone continuation byte is invalid at once.
        assert_eq!(d.push(byte(0x80)).unwrap(), "\u{FFFD}");
        // A lead byte followed by ASCII: the lead byte was never going to finish.
        assert_eq!(d.push(byte(0xF0)).unwrap(), "");
        assert_eq!(d.push(byte(b'a')).unwrap(), "\u{FFFD}a");
        // A sequence cut off by the end of the reply.
        assert_eq!(d.push(byte(0xE4)).unwrap(), "");
        assert_eq!(d.finish(), "\u{FFFD}");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn unknown_ids_are_errors() {
        for tok in [byte_level(), windowed()] {
            let mut d = Detokenizer::new(&tok);
            assert!(matches!(
                d.push(1_000_000),
                Err(DetokError::UnknownId(1_000_000))
            ));
        }
    }

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let table = char_to_byte();
        assert_eq!(table.len(), 256);
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'A'), 'A');
    }

    #[test]
    fn window_stays_small_on_long_replies() {
        let tok = windowed();
        let text = "hi ".repeat(500);
        let mut d = Detokenizer::new(&tok);
        let mut out = String::new();
        for id in ids(&tok, &text) {
            out.push_str(&d.push(id).unwrap());
            if let Mode::Window { ids, .. } = &d.mode {
                assert!(ids.len() <= 2, "window grew to {}", ids.len());
            }
        }
        assert_eq!(out + &d.finish(), text);
    }
}
