//! The token loop's building blocks: chunked prefill and greedy choice.

use crate::model::{KvCache, Logits, Model};

/// Prompt tokens computed per forward pass; bounds the attention scratch memory for long
/// prompts while keeping the matmuls wide enough to be efficient.
pub const PREFILL_CHUNK: usize = 256;

/// Runs `tokens` after what `cache` holds, in chunks, and returns the last position's logits.
pub fn prefill(
    model: &Model,
    tokens: &[u32],
    cache: &mut KvCache,
) -> candle_core::Result<Vec<f32>> {
    if tokens.is_empty() {
        candle_core::bail!("nothing to prefill");
    }
    let mut last = None;
    for chunk in tokens.chunks(PREFILL_CHUNK) {
        last = Some(model.forward(chunk, cache, Logits::Last)?);
    }
    last.expect("at least one chunk").to_vec1()
}

/// The highest-scoring id (the lowest id on ties; NaN never wins): the sampler's greedy choice.
pub fn argmax(logits: &[f32]) -> u32 {
    super::sampler::argmax(logits)
}
