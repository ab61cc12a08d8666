//! The tokenizer: `tokenizer.json` when one is given, else rebuilt from the GGUF's
//! `tokenizer.ggml.*` metadata the way llama.cpp tokenizes a `llama-bpe` vocabulary.
//!
//! candle's `TokenizerFromGguf` does not reproduce llama.cpp here (it adds a prefix space
//! after special tokens and applies merges to whole-vocabulary words), so we assemble the
//! `tokenizers` pipeline ourselves: special tokens matched first, the Llama-3 split regex,
//! byte-level mapping without a prefix space, and BPE with `ignore_merges`.

use crate::model::gguf::{GgufFile, Value};
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// The split pattern of Llama-3-style BPE vocabularies (`tokenizer.ggml.pre = llama-bpe`).
pub const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Why a tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A metadata key is missing or malformed.
    #[error("the model's tokenizer metadata is unusable: {0}")]
    Metadata(String),
    /// The tokenizer type is not byte-level BPE.
    #[error("tokenizer type {0:?} is not supported (SmolLM3 uses \"gpt2\" byte-level BPE)")]
    Unsupported(String),
    /// `tokenizers` refused the vocabulary or the file.
    #[error("cannot build the tokenizer: {0}")]
    Build(String),
}

/// Special token ids a chat needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of text, if defined.
    pub bos: Option<u32>,
    /// End of sequence ids: the GGUF's EOS, `<|im_end|>` and `<|end_of_text|>` when present.
    pub eos: Vec<u32>,
    /// `<|im_end|>`, which ends an assistant turn.
    pub im_end: Option<u32>,
    /// `<think>`.
    pub think: Option<u32>,
    /// `</think>`.
    pub end_think: Option<u32>,
}

/// Builds the tokenizer from GGUF metadata.
pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer, TokenizerError> {
    let model = g.get_str("tokenizer.ggml.model").unwrap_or("");
    if model != "gpt2" {
        return Err(TokenizerError::Unsupported(model.to_string()));
    }
    let strings = |key: &str| -> Result<Vec<String>, TokenizerError> {
        let arr = g
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| TokenizerError::Metadata(format!("{key} is missing")))?;
        arr.iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| TokenizerError::Metadata(format!("{key} holds non-strings")))
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<u64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| TokenizerError::Metadata(format!("merge {m:?} has no space")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(true)
        .build()
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    let mut tok = Tokenizer::new(bpe);
    let split = Split::new(
        SplitPattern::Regex(LLAMA3_SPLIT.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| TokenizerError::Build(e.to_string()))?;
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ]);
    tok.with_pre_tokenizer(Some(pre));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    // Control (3) and user-defined (4) tokens are matched in text before splitting, as
    // llama.cpp does when it parses special tokens; control tokens count as "special".
    let added = |kind: u64| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == kind)
            .map(|(s, _)| AddedToken::from(s.clone(), kind == 3).normalized(false))
            .collect()
    };
    tok.add_special_tokens(added(3))
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    tok.add_tokens(added(4))
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    Ok(tok)
}

/// Loads a `tokenizer.json`.
pub fn from_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
    Tokenizer::from_file(path)
        .map_err(|e| TokenizerError::Build(format!("{}: {e}", path.display())))
}

/// The tokenizer for a model: `tokenizer_json` if given, else the GGUF's metadata.
pub fn load(g: &GgufFile, tokenizer_json: Option<&Path>) -> Result<Tokenizer, TokenizerError> {
    match tokenizer_json {
        Some(p) => from_file(p),
        None => from_gguf(g),
    }
}

/// Finds the chat-relevant special tokens.
pub fn special_tokens(g: &GgufFile, tok: &Tokenizer) -> SpecialTokens {
    let id = |s: &str| tok.token_to_id(s);
    let meta = |k: &str| g.get(k).and_then(Value::as_u64).map(|v| v as u32);
    let mut eos: Vec<u32> = Vec::new();
    for e in [
        meta("tokenizer.ggml.eos_token_id"),
        id("<|im_end|>"),
        id("<|end_of_text|>"),
        meta("tokenizer.ggml.eot_token_id"),
    ]
    .into_iter()
    .flatten()
    {
        if !eos.contains(&e) {
            eos.push(e);
        }
    }
    SpecialTokens {
        bos: meta("tokenizer.ggml.bos_token_id"),
        eos,
        im_end: id("<|im_end|>"),
        think: id("<think>"),
        end_think: id("</think>"),
    }
}

/// Tokenizes text, parsing special tokens, without adding BOS (SmolLM3 does not use one).
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, TokenizerError> {
    tok.encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| TokenizerError::Build(e.to_string()))
}

/// Token ids as text, control tokens written out (as llama.cpp's `/detokenize` gives them).
/// An id outside the vocabulary is an error, not a silent gap.
pub fn decode(tok: &Tokenizer, ids: &[u32]) -> Result<String, TokenizerError> {
    let size = tok.get_vocab_size(true);
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= size) {
        return Err(TokenizerError::Build(format!(
            "token id {bad} is not in the vocabulary ({size} tokens)"
        )));
    }
    tok.decode(ids, false)
        .map_err(|e| TokenizerError::Build(e.to_string()))
}

/// Tokenizes text as plain text: no added token (control or user-defined) is matched, so
/// `<|im_start|>` typed in a message becomes the ids of its characters, never the control
/// token. The rest of the pipeline is the tokenizer's own (normalizer, pre-tokenizer, model),
/// so for text that spells no added token the ids are those of [`encode`].
pub fn encode_plain(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, TokenizerError> {
    use tokenizers::{Model, Normalizer, OffsetType, PreTokenizedString, PreTokenizer};
    let build = |e: tokenizers::Error| TokenizerError::Build(e.to_string());
    let mut pieces = PreTokenizedString::from(text);
    if let Some(n) = tok.get_normalizer() {
        pieces.normalize(|s| n.normalize(s)).map_err(build)?;
    }
    if let Some(p) = tok.get_pre_tokenizer() {
        p.pre_tokenize(&mut pieces).map_err(build)?;
    }
    let model = tok.get_model();
    pieces
        .tokenize(|s| model.tokenize(s.get()))
        .map_err(build)?;
    let encoding = pieces
        .into_encoding(None, 0, OffsetType::Byte)
        .map_err(build)?;
    Ok(encoding.get_ids().to_vec())
}
