//! SmolLM3 hyper-parameters, read from the GGUF's `smollm3.*` metadata and validated.

use super::gguf::{GgufError, GgufFile};
use serde::Serialize;
use std::collections::HashSet;

/// The architecture name a SmolLM3 GGUF declares.
pub const ARCH: &str = "smollm3";

/// Model dimensions and constants.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Number of decoder layers (`block_count`).
    pub n_layer: usize,
    /// Hidden size (`embedding_length`).
    pub hidden: usize,
    /// MLP inner size (`feed_forward_length`).
    pub ffn: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention).
    pub n_kv_head: usize,
    /// Size of one attention head.
    pub head_dim: usize,
    /// Dimensions rotated by RoPE in each head (`rope.dimension_count`).
    pub rope_dim: usize,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// Context length the model was trained for.
    pub context_length: usize,
    /// Vocabulary size (rows of `token_embd`).
    pub vocab: usize,
    /// SmolLM3 drops rotary embeddings on every `nope_interval`-th layer: layer `il` uses no
    /// RoPE when `(il + 1) % nope_interval == 0`. The GGUF has no key for it; llama.cpp and the
    /// reference implementation hard-code 4.
    pub nope_interval: usize,
}

impl Config {
    /// Reads and validates the configuration of a SmolLM3 GGUF.
    pub fn from_gguf(g: &GgufFile) -> Result<Self, GgufError> {
        let arch = g
            .get_str("general.architecture")
            .ok_or_else(|| GgufError::Metadata {
                key: "general.architecture".into(),
                problem: "missing".into(),
            })?;
        if arch != ARCH {
            return Err(GgufError::Architecture(arch.to_string()));
        }
        let key = |k: &str| format!("{ARCH}.{k}");
        let int = |k: &str| -> Result<usize, GgufError> {
            let v = g.require_u64(&key(k))?;
            if v == 0 || v > (1 << 31) {
                return Err(GgufError::Metadata {
                    key: key(k),
                    problem: format!("out of range ({v})"),
                });
            }
            Ok(v as usize)
        };
        let n_layer = int("block_count")?;
        check_layer_count(g, n_layer)?;
        let hidden = int("embedding_length")?;
        let ffn = int("feed_forward_length")?;
        let n_head = int("attention.head_count")?;
        let n_kv_head = int("attention.head_count_kv")?;
        let context_length = int("context_length")?;
        if hidden % n_head != 0 {
            return Err(GgufError::Metadata {
                key: key("attention.head_count"),
                problem: format!("{n_head} does not divide the hidden size {hidden}"),
            });
        }
        if n_head % n_kv_head != 0 {
            return Err(GgufError::Metadata {
                key: key("attention.head_count_kv"),
                problem: format!("{n_kv_head} does not divide the head count {n_head}"),
            });
        }
        let head_dim = hidden / n_head;
        let rope_dim = match g.get(&key("rope.dimension_count")) {
            Some(_) => int("rope.dimension_count")?,
            None => head_dim,
        };
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(GgufError::Metadata {
                key: key("rope.dimension_count"),
                problem: format!("{rope_dim} does not fit a head of {head_dim}"),
            });
        }
        let rope_theta = g.require_f64(&key("rope.freq_base"))?;
        let rms_eps = g.require_f64(&key("attention.layer_norm_rms_epsilon"))?;
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(GgufError::Metadata {
                key: key("rope.freq_base"),
                problem: format!("out of range ({rope_theta})"),
            });
        }
        if !(rms_eps.is_finite() && rms_eps > 0.0 && rms_eps < 1.0) {
            return Err(GgufError::Metadata {
                key: key("attention.layer_norm_rms_epsilon"),
                problem: format!("out of range ({rms_eps})"),
            });
        }
        let embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| GgufError::MissingTensor("token_embd.weight".into()))?;
        if embd.dims.len() != 2 || embd.dims[0] != hidden as u64 {
            return Err(GgufError::Shape {
                name: embd.name.clone(),
                found: embd.dims.clone(),
                expected: vec![hidden as u64, embd.dims.get(1).copied().unwrap_or(0)],
            });
        }
        let vocab = embd.dims[1] as usize;
        Ok(Self {
            n_layer,
            hidden,
            ffn,
            n_head,
            n_kv_head,
            head_dim,
            rope_dim,
            rope_theta,
            rms_eps,
            context_length,
            vocab,
            nope_interval: 4,
        })
    }

    /// Whether layer `il` applies rotary position embeddings.
    pub fn uses_rope(&self, il: usize) -> bool {
        self.nope_interval == 0 || !(il + 1).is_multiple_of(self.nope_interval)
    }

    /// The layers that apply no rotary embedding.
    pub fn nope_layers(&self) -> Vec<usize> {
        (0..self.n_layer)
            .filter(|&il| !self.uses_rope(il))
            .collect()
    }

    /// Bytes of KV cache per token with elements of `elem_bytes` bytes.
    pub fn kv_bytes_per_token(&self, elem_bytes: usize) -> usize {
        2 * self.n_layer * self.n_kv_head * self.head_dim * elem_bytes
    }

    /// The shape (ggml order) every tensor of the model must have.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<u64>)> {
        self.expected().collect()
    }

    /// [`Config::expected_tensors`] one at a time, so checking a file allocates nothing per
    /// layer.
    fn expected(&self) -> impl Iterator<Item = (String, Vec<u64>)> + '_ {
        let (h, f, kv) = (
            self.hidden as u64,
            self.ffn as u64,
            (self.n_kv_head * self.head_dim) as u64,
        );
        let q = (self.n_head * self.head_dim) as u64;
        let global = [
            ("token_embd.weight".to_string(), vec![h, self.vocab as u64]),
            ("output_norm.weight".to_string(), vec![h]),
        ];
        let layers = (0..self.n_layer).flat_map(move |il| {
            let p = |n: &str| format!("blk.{il}.{n}.weight");
            [
                (p("attn_norm"), vec![h]),
                (p("attn_q"), vec![h, q]),
                (p("attn_k"), vec![h, kv]),
                (p("attn_v"), vec![h, kv]),
                (p("attn_output"), vec![q, h]),
                (p("ffn_norm"), vec![h]),
                (p("ffn_gate"), vec![h, f]),
                (p("ffn_up"), vec![h, f]),
                (p("ffn_down"), vec![f, h]),
            ]
        });
        global.into_iter().chain(layers)
    }

    /// Checks that every tensor is present with the right shape (and `output.weight`, if an
    /// untied head is present).
    pub fn validate_tensors(&self, g: &GgufFile) -> Result<(), GgufError> {
        // A caller-built configuration is bounded by the file's tensors like one read from the
        // metadata.
        check_layer_count(g, self.n_layer)?;
        let head = g.tensor("output.weight").map(|_| {
            (
                "output.weight".to_string(),
                vec![self.hidden as u64, self.vocab as u64],
            )
        });
        for (name, dims) in self.expected().chain(head) {
            let t = g
                .tensor(&name)
                .ok_or_else(|| GgufError::MissingTensor(name.clone()))?;
            if t.dims != dims {
                return Err(GgufError::Shape {
                    name,
                    found: t.dims.clone(),
                    expected: dims,
                });
            }
        }
        Ok(())
    }
}

/// Refuses a layer count the file's tensors cannot back, before anything is sized by it: a
/// `block_count` is only a number in the metadata, while each layer needs tensors named
/// `blk.N.…` whose descriptions and bytes lie in the file. A crafted count of four million
/// layers in a 3 MB file would otherwise size lists of tens of millions of names. (A missing
/// tensor in a layer that exists is left to [`Config::validate_tensors`], which names it.)
fn check_layer_count(g: &GgufFile, n_layer: usize) -> Result<(), GgufError> {
    let present: HashSet<usize> = g
        .tensors()
        .iter()
        .filter_map(|t| t.name.strip_prefix("blk.")?.split('.').next()?.parse().ok())
        .collect();
    if n_layer > present.len() {
        return Err(GgufError::Metadata {
            key: format!("{ARCH}.block_count"),
            problem: format!(
                "{n_layer}, but the file holds tensors for only {} layers",
                present.len()
            ),
        });
    }
    Ok(())
}
