//! The SmolLM3 decoder: a Llama-style transformer (RMSNorm, grouped-query attention, SwiGLU)
//! whose every fourth layer uses no positional encoding at all (NoPE; see doc/nope.md).
//!
//! Reads top to bottom like llama.cpp's `smollm3.cpp`: embed → for each layer
//! `x += attn(norm(x))`, `x += mlp(norm(x))` → norm → tied output projection.

use super::attention;
use super::config::Config;
use super::gguf::{GgufError, GgufFile};
use super::heap;
use super::kernels::Kernels;
use super::kv_cache::KvCache;
use super::norm;
use super::prepared::Prepared;
use super::weights::{vector_f32, QWeight};
use candle_core::{DType, Device, Result, Tensor, D};

/// SwiGLU feed-forward block.
#[derive(Debug)]
struct Mlp {
    gate: QWeight,
    up: QWeight,
    down: QWeight,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down.matmul(&QWeight::swiglu(&self.gate, &self.up, x)?)
    }
}

/// One decoder layer.
#[derive(Debug)]
struct Layer {
    attn_norm: Tensor,
    wq: QWeight,
    wk: QWeight,
    wv: QWeight,
    wo: QWeight,
    ffn_norm: Tensor,
    mlp: Mlp,
    /// False on NoPE layers.
    use_rope: bool,
}

/// Rotary tables for a run of positions.
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(cfg: &Config, start: usize, len: usize) -> Result<Self> {
        let half = cfg.rope_dim / 2;
        let inv: Vec<f64> = (0..half)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.rope_dim as f64))
            .collect();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in start..start + len {
            for f in &inv {
                // Angles in f64 so that positions in the tens of thousands keep their precision.
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (len, half), &Device::Cpu)?,
            sin: Tensor::from_vec(sin, (len, half), &Device::Cpu)?,
        })
    }

    /// Rotates adjacent pairs (ggml's "normal" RoPE, which GGUF Llama-family weights expect)
    /// of the first `rope_dim` dimensions of `x` (heads, seq, head_dim).
    fn apply(&self, x: &Tensor, rope_dim: usize) -> Result<Tensor> {
        let head_dim = x.dim(D::Minus1)?;
        if rope_dim == head_dim {
            return candle_nn::rotary_emb::rope_i(
                &x.unsqueeze(0)?.contiguous()?,
                &self.cos,
                &self.sin,
            )?
            .squeeze(0);
        }
        let rot = x
            .narrow(D::Minus1, 0, rope_dim)?
            .unsqueeze(0)?
            .contiguous()?;
        let rot = candle_nn::rotary_emb::rope_i(&rot, &self.cos, &self.sin)?.squeeze(0)?;
        Tensor::cat(
            &[rot, x.narrow(D::Minus1, rope_dim, head_dim - rope_dim)?],
            D::Minus1,
        )
    }
}

/// Which positions a forward pass returns logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation).
    Last,
    /// Every position of the input (teacher forcing, tests).
    All,
}

/// One sequence's part of a batched step ([`Model::forward_batch`]).
pub struct BatchItem<'a> {
    /// The tokens to run after what the cache holds.
    pub tokens: &'a [u32],
    /// The sequence's own cache; the tokens are appended to it.
    pub cache: &'a mut KvCache,
}

/// A loaded SmolLM3 model. Weights stay in the memory-mapped file.
#[derive(Debug)]
pub struct Model {
    cfg: Config,
    embd: QWeight,
    layers: Vec<Layer>,
    out_norm: Tensor,
    lm_head: QWeight,
    /// The kernel path of every product, attention and norm.
    kernels: Kernels,
}

impl Model {
    /// Builds the model from an open GGUF, validating every tensor's presence, shape and type.
    pub fn load(g: &GgufFile) -> std::result::Result<Self, GgufError> {
        let cfg = Config::from_gguf(g)?;
        Self::load_with_config(g, cfg)
    }

    /// Like [`Model::load`] with a configuration the caller may have adjusted (e.g. the NoPE
    /// interval, for experiments).
    pub fn load_with_config(g: &GgufFile, cfg: Config) -> std::result::Result<Self, GgufError> {
        Self::load_with(g, cfg, Kernels::default())
    }

    /// Like [`Model::load`] with a configuration and the kernel path to compute on.
    pub fn load_with(
        g: &GgufFile,
        cfg: Config,
        kernels: Kernels,
    ) -> std::result::Result<Self, GgufError> {
        cfg.validate_tensors(g)?;
        heap::keep_freed_buffers();
        let w = |name: &str| -> std::result::Result<QWeight, GgufError> {
            let info = g
                .tensor(name)
                .ok_or_else(|| GgufError::MissingTensor(name.into()))?;
            QWeight::from_gguf(g, info, kernels)
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for il in 0..cfg.n_layer {
            let p = |n: &str| format!("blk.{il}.{n}.weight");
            layers.push(Layer {
                attn_norm: vector_f32(g, &p("attn_norm"))?,
                wq: w(&p("attn_q"))?,
                wk: w(&p("attn_k"))?,
                wv: w(&p("attn_v"))?,
                wo: w(&p("attn_output"))?,
                ffn_norm: vector_f32(g, &p("ffn_norm"))?,
                mlp: Mlp {
                    gate: w(&p("ffn_gate"))?,
                    up: w(&p("ffn_up"))?,
                    down: w(&p("ffn_down"))?,
                },
                use_rope: cfg.uses_rope(il),
            });
        }
        let embd = w("token_embd.weight")?;
        // SmolLM3 ties the output projection to the embedding; use an explicit head if present.
        let lm_head = if g.tensor("output.weight").is_some() {
            w("output.weight")?
        } else {
            embd.clone()
        };
        Ok(Self {
            out_norm: vector_f32(g, "output_norm.weight")?,
            cfg,
            embd,
            layers,
            lm_head,
            kernels,
        })
    }

    /// Takes every matrix that `p` holds in the interleaved layout from there; returns how
    /// many were taken.
    pub fn attach_interleaved(&mut self, p: &Prepared) -> usize {
        let mut n = 0;
        for l in &mut self.layers {
            for w in [
                &mut l.wq,
                &mut l.wk,
                &mut l.wv,
                &mut l.wo,
                &mut l.mlp.gate,
                &mut l.mlp.up,
                &mut l.mlp.down,
            ] {
                n += usize::from(w.attach_interleaved(p));
            }
        }
        // The output projection (the embedding's own matrix when tied). With it on its copy,
        // the original embedding is only looked up row by row.
        let head = self.lm_head.attach_interleaved(p);
        if head {
            self.embd.advise_scattered_reads();
        }
        n + usize::from(head)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The kernel path it computes on.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// How many of its matrices compute on the interleaved layout.
    pub fn interleaved_weights(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| {
                [
                    &l.wq,
                    &l.wk,
                    &l.wv,
                    &l.wo,
                    &l.mlp.gate,
                    &l.mlp.up,
                    &l.mlp.down,
                ]
            })
            .chain([&self.lm_head])
            .filter(|w| w.is_interleaved())
            .count()
    }

    /// A fresh cache for this model.
    pub fn new_cache(&self, max_len: usize, dtype: DType) -> KvCache {
        KvCache::new(&self.cfg, max_len.min(self.cfg.context_length), dtype)
    }

    /// Runs `tokens` after what `cache` holds, appends them to the cache, and returns logits
    /// `(vocab,)` for the last position or `(tokens, vocab)` for all.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Tensor> {
        if tokens.is_empty() {
            candle_core::bail!("forward called with no tokens");
        }
        let cfg = &self.cfg;
        let (seq, pos) = (tokens.len(), cache.len());
        cache.reserve(seq)?;
        let rope = Rope::new(cfg, pos, seq)?;
        let h = self.decoder(tokens, |il, layer, h| {
            self.attention(il, layer, h, cache, &rope)
        })?;
        cache.commit(tokens);
        if seq > 1 {
            // The chunk's activations are free now; an idle app should not keep them.
            heap::release();
        }
        let h = match which {
            Logits::Last => h.narrow(0, seq - 1, 1)?,
            Logits::All => h,
        };
        let logits = self.lm_head.matmul(&h)?;
        match which {
            Logits::Last => logits.squeeze(0),
            Logits::All => Ok(logits),
        }
    }

    /// Embeds `tokens` and runs every layer over them, `attention` giving each layer's
    /// attention output `(tokens, heads·head_dim)` for its normalized input; returns the final
    /// normalized hidden states `(tokens, hidden)`.
    fn decoder(
        &self,
        tokens: &[u32],
        mut attention: impl FnMut(usize, &Layer, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_eps as f32;
        let first_norm = self.layers.first().map_or(&self.out_norm, |l| &l.attn_norm);
        // `h` is always the normalized `x` that the next block reads: each residual addition
        // comes with the norm after it.
        let (mut x, mut h) = norm::add_rms_norm(
            self.kernels,
            &self.embd.rows_f32(tokens)?,
            None,
            first_norm,
            eps,
        )?;
        for (il, layer) in self.layers.iter().enumerate() {
            let attn = layer.wo.matmul(&attention(il, layer, &h)?)?;
            (x, h) = norm::add_rms_norm(self.kernels, &x, Some(&attn), &layer.ffn_norm, eps)?;
            let next_norm = self
                .layers
                .get(il + 1)
                .map_or(&self.out_norm, |l| &l.attn_norm);
            (x, h) = norm::add_rms_norm(
                self.kernels,
                &x,
                Some(&layer.mlp.forward(&h)?),
                next_norm,
                eps,
            )?;
        }
        Ok(h)
    }

    /// One step for several sequences at once, each with its own cache: every sequence's
    /// `tokens` (one for a decoding reply, a chunk for a prompt) go through the weights as rows
    /// of one product, so the weights are read once per step for all of them; attention runs
    /// per sequence over its own cache. Returns each sequence's logits `(vocab,)` for its last
    /// position. One sequence is exactly [`Model::forward`].
    pub fn forward_batch(&self, batch: &mut [BatchItem<'_>]) -> Result<Vec<Tensor>> {
        if let [one] = batch {
            return Ok(vec![self.forward(one.tokens, one.cache, Logits::Last)?]);
        }
        if batch.is_empty() || batch.iter().any(|b| b.tokens.is_empty()) {
            candle_core::bail!("forward_batch needs tokens for every sequence");
        }
        let cfg = &self.cfg;
        let mut ropes = Vec::with_capacity(batch.len());
        for b in batch.iter_mut() {
            b.cache.reserve(b.tokens.len())?;
            ropes.push(Rope::new(cfg, b.cache.len(), b.tokens.len())?);
        }
        let all: Vec<u32> = batch
            .iter()
            .flat_map(|b| b.tokens.iter().copied())
            .collect();
        let h = self.decoder(&all, |il, layer, h| {
            self.attention_batch(il, layer, h, batch, &ropes)
        })?;
        // Each sequence's last row, through the output projection together.
        let mut last = Vec::with_capacity(batch.len());
        let mut end = 0;
        for b in batch.iter_mut() {
            end += b.tokens.len();
            last.push(h.narrow(0, end - 1, 1)?);
            b.cache.commit(b.tokens);
        }
        if all.len() > batch.len() {
            heap::release();
        }
        let logits = self.lm_head.matmul(&Tensor::cat(&last, 0)?)?;
        (0..batch.len()).map(|i| logits.get(i)).collect()
    }

    /// [`Model::attention`] for a batch: the projections over every row at once, then RoPE,
    /// the cache and attention per sequence.
    fn attention_batch(
        &self,
        il: usize,
        layer: &Layer,
        h: &Tensor,
        batch: &mut [BatchItem<'_>],
        ropes: &[Rope],
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (hd, nh, nkv) = (cfg.head_dim, cfg.n_head, cfg.n_kv_head);
        let [q, k, v]: [Tensor; 3] = QWeight::matmul_many(&[&layer.wq, &layer.wk, &layer.wv], h)?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("three products expected".into()))?;
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let mut outs = Vec::with_capacity(batch.len());
        let mut start = 0;
        for (b, rope) in batch.iter_mut().zip(ropes) {
            let seq = b.tokens.len();
            let heads = |t: &Tensor, n: usize| {
                t.narrow(0, start, seq)?
                    .reshape((seq, n, hd))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let (mut qs, mut ks, vs) = (heads(&q, nh)?, heads(&k, nkv)?, heads(&v, nkv)?);
            if layer.use_rope {
                qs = rope.apply(&qs, cfg.rope_dim)?;
                ks = rope.apply(&ks, cfg.rope_dim)?;
            }
            let (kc, vc) = b.cache.append(il, &ks, &vs)?;
            outs.push(attention::attend(self.kernels, &qs, &kc, &vc, scale)?);
            start += seq;
        }
        Tensor::cat(&outs, 0)
    }

    /// Grouped-query attention over the cache; `h` is (seq, hidden), the result (seq, heads·head_dim).
    fn attention(
        &self,
        il: usize,
        layer: &Layer,
        h: &Tensor,
        cache: &mut KvCache,
        rope: &Rope,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (seq, hd, nh, nkv) = (h.dim(0)?, cfg.head_dim, cfg.n_head, cfg.n_kv_head);
        let heads = |t: Tensor, n: usize| t.reshape((seq, n, hd))?.transpose(0, 1)?.contiguous();
        let [q, k, v]: [Tensor; 3] = QWeight::matmul_many(&[&layer.wq, &layer.wk, &layer.wv], h)?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("three products expected".into()))?;
        let (mut q, mut k, v) = (heads(q, nh)?, heads(k, nkv)?, heads(v, nkv)?);
        // NoPE: on every `nope_interval`-th layer queries and keys carry no position at all.
        if layer.use_rope {
            q = rope.apply(&q, cfg.rope_dim)?;
            k = rope.apply(&k, cfg.rope_dim)?;
        }
        let (k, v) = cache.append(il, &k, &v)?;
        let scale = 1.0 / (hd as f64).sqrt();
        // Fused over the cache in place for any number of new tokens: no mask, no repeated KV
        // heads, no copies, so it beats candle's masked matrix products, more so as the
        // context grows (figures in doc/benchmarks.md).
        attention::attend(self.kernels, &q, &k, &v, scale as f32)
    }
}
