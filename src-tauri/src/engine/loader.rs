//! Opening a model file: GGUF map, validated configuration, weights, tokenizer and template.

use crate::model::{prepared, GgufFile, Model};
use crate::text::tokenizer::{self, SpecialTokens};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokenizers::Tokenizer;

/// Everything needed to run a chat on one model file.
pub struct LoadedModel {
    /// The mapped file (weights point into it).
    pub gguf: GgufFile,
    /// The decoder.
    pub model: Model,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// End-of-turn and thinking tokens.
    pub specials: SpecialTokens,
    /// Seconds spent loading.
    pub load_s: f64,
    /// Identifies the model's bytes (see [`GgufFile::fingerprint`]): what saved KV caches
    /// are checked against.
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("path", &self.gguf.path())
            .field("load_s", &self.load_s)
            .finish()
    }
}

/// The `tokenizer.json` to use: the given one, else one lying beside the model, else none
/// (the GGUF's own vocabulary is used).
pub fn tokenizer_path(model: &Path, given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_path_buf());
    }
    let beside = model.with_file_name("tokenizer.json");
    beside.exists().then_some(beside)
}

impl LoadedModel {
    /// Maps, validates and prepares a model; `tokenizer_json` overrides the GGUF's vocabulary.
    pub fn open(path: &Path, tokenizer_json: Option<&Path>) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let gguf =
            GgufFile::open(path).with_context(|| format!("cannot load {}", path.display()))?;
        let t_map = t0.elapsed();
        let tok_path = tokenizer_path(path, tokenizer_json);
        // The tokenizer (a 128K-entry BPE) takes as long to build as the model takes to map
        // and check, so the two are prepared side by side.
        let (model, tokenizer) = std::thread::scope(|s| {
            let tok = s.spawn(|| tokenizer::load(&gguf, tok_path.as_deref()));
            let model = Model::load(&gguf)
                .with_context(|| format!("cannot load {}", path.display()))
                .map(|mut m| {
                    prepare(&gguf, &mut m);
                    m
                });
            let tok = tok.join().unwrap_or_else(|_| {
                Err(tokenizer::TokenizerError::Build(
                    "tokenizer construction panicked".into(),
                ))
            });
            (model, tok)
        });
        let (model, tokenizer) = (model?, tokenizer?);
        let t_model = t0.elapsed();
        tracing::debug!(map = ?t_map, model = ?t_model, total = ?t0.elapsed(), "model loaded");
        tracing::info!(kernels = %model.kernels(), "kernel path");
        if tokenizer.get_vocab_size(true) > model.config().vocab {
            anyhow::bail!(
                "the tokenizer has {} tokens but the model only {}; is it the right tokenizer?",
                tokenizer.get_vocab_size(true),
                model.config().vocab
            );
        }
        let specials = tokenizer::special_tokens(&gguf, &tokenizer);
        let fingerprint = gguf.fingerprint(gguf.tensors());
        Ok(Self {
            gguf,
            model,
            tokenizer,
            specials,
            load_s: t0.elapsed().as_secs_f64(),
            fingerprint,
        })
    }

    /// The chat template stored in the GGUF, if any.
    pub fn gguf_chat_template(&self) -> Option<&str> {
        self.gguf.get_str("tokenizer.chat_template")
    }
}

/// Moves the model's Q4_K matrices to the interleaved layout (building the prepared file on
/// the first load). Failing that, the model keeps the GGUF layout: slower prefill, same results.
fn prepare(gguf: &GgufFile, model: &mut Model) {
    if !model.kernels().interleaved() {
        return;
    }
    match prepared::open_or_build(gguf) {
        Ok(Some(p)) => {
            let n = model.attach_interleaved(&p);
            tracing::info!(path = %p.path().display(), tensors = n, built = p.built, "interleaved weights in use");
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "interleaved weights unavailable; using the GGUF layout")
        }
    }
}

/// Checks from its header alone that a file is a SmolLM3 model with the tensors the decoder
/// needs and a vocabulary: a few milliseconds for a 2 GB file, so folders can be searched with
/// it. Loading checks the rest.
pub fn check_header(path: &Path) -> anyhow::Result<()> {
    let gguf = GgufFile::open(path)?;
    let config = crate::model::Config::from_gguf(&gguf)?;
    config.validate_tensors(&gguf)?;
    if tokenizer_path(path, None).is_none() {
        anyhow::ensure!(
            gguf.get("tokenizer.ggml.tokens").is_some(),
            "the file has no vocabulary and no tokenizer.json lies beside it"
        );
    }
    Ok(())
}

/// Checks that a file is a usable SmolLM3 model (used before importing or using a file).
pub fn validate_file(path: &Path) -> anyhow::Result<()> {
    let gguf = GgufFile::open(path)?;
    Model::load(&gguf)?;
    if tokenizer_path(path, None).is_none() {
        tokenizer::from_gguf(&gguf)
            .context("the file has no usable tokenizer and no tokenizer.json lies beside it")?;
    }
    Ok(())
}
