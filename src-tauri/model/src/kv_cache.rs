//! The key/value cache: one preallocated buffer per layer, the token ids it covers, and
//! truncation to any position, so a new chat turn recomputes only what changed.

use super::config::Config;
use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use half::f16;

/// Keys and values of every layer for a sequence of tokens.
///
/// Buffers are laid out `(kv_heads, capacity, head_dim)` and written in place; when a turn
/// outgrows them the capacity doubles (bounded by `max_len`), so appending is amortised
/// linear, never quadratic.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    tokens: Vec<u32>,
    capacity: usize,
    max_len: usize,
    n_kv_head: usize,
    head_dim: usize,
    dtype: DType,
}

/// The smallest capacity allocated, in tokens.
const MIN_CAPACITY: usize = 256;

impl KvCache {
    /// An empty cache for `cfg` holding up to `max_len` tokens with elements of `dtype`
    /// (F32, or F16 to halve its memory).
    pub fn new(cfg: &Config, max_len: usize, dtype: DType) -> Self {
        Self {
            layers: vec![None; cfg.n_layer],
            tokens: Vec::new(),
            capacity: 0,
            max_len,
            n_kv_head: cfg.n_kv_head,
            head_dim: cfg.head_dim,
            dtype,
        }
    }

    /// Tokens whose keys and values are stored.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token ids covered, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The most tokens this cache may hold.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Element type of the stored keys and values.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bytes currently allocated.
    pub fn allocated_bytes(&self) -> usize {
        self.layers.iter().flatten().count()
            * 2
            * self.n_kv_head
            * self.capacity
            * self.head_dim
            * self.dtype.size_in_bytes()
    }

    /// Forgets everything after the first `n` tokens (keeps the buffers).
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    /// Length of the longest common prefix of the cached tokens and `tokens`.
    pub fn common_prefix(&self, tokens: &[u32]) -> usize {
        self.tokens
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// The shape of what is stored per layer: `(kv_heads, head_dim)`.
    pub fn row_shape(&self) -> (usize, usize) {
        (self.n_kv_head, self.head_dim)
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Layer `il`'s keys then values for the first `n` tokens as little-endian bytes of the
    /// cache's element type, each laid out `(kv_heads, n, head_dim)`: what
    /// [`KvCache::restore`] takes back.
    pub fn layer_bytes(&self, il: usize, n: usize) -> Result<Vec<u8>> {
        if n > self.len() {
            candle_core::bail!("only {} tokens are cached, not {n}", self.len());
        }
        let mut out = Vec::with_capacity(self.bytes_per_layer(n));
        let Some((k, v)) = self.layers[il].as_ref() else {
            return Ok(out);
        };
        for t in [k, v] {
            let t = t.narrow(1, 0, n)?.contiguous()?;
            let (storage, layout) = t.storage_and_layout();
            let from = layout.start_offset();
            let count = self.n_kv_head * n * self.head_dim;
            match &*storage {
                Storage::Cpu(CpuStorage::F16(x)) => out.extend(
                    x[from..from + count]
                        .iter()
                        .flat_map(|e| e.to_bits().to_le_bytes()),
                ),
                Storage::Cpu(CpuStorage::F32(x)) => {
                    out.extend(x[from..from + count].iter().flat_map(|e| e.to_le_bytes()))
                }
                _ => candle_core::bail!("the cache holds {:?} on the CPU only", self.dtype),
            }
        }
        Ok(out)
    }

    /// Bytes [`KvCache::layer_bytes`] gives for `n` tokens.
    pub fn bytes_per_layer(&self, n: usize) -> usize {
        2 * self.n_kv_head * n * self.head_dim * self.dtype.size_in_bytes()
    }

    /// Refills the cache with `tokens` from bytes laid out as [`KvCache::layer_bytes`] gives
    /// them for `stored` tokens (`stored` may exceed `tokens.len()`: the rest is left out).
    /// `layer(il)` supplies each layer's bytes in turn. On an error the cache is left empty.
    pub fn restore(
        &mut self,
        tokens: &[u32],
        stored: usize,
        layer: impl FnMut(usize) -> Result<Vec<u8>>,
    ) -> Result<()> {
        self.clear();
        let done = self.fill(tokens, stored, layer);
        if done.is_err() {
            self.clear();
        }
        done
    }

    fn fill(
        &mut self,
        tokens: &[u32],
        stored: usize,
        mut layer: impl FnMut(usize) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let n = tokens.len();
        if n > stored {
            candle_core::bail!("{n} tokens asked of a snapshot holding {stored}");
        }
        self.reserve(n)?;
        let shape = (self.n_kv_head, stored, self.head_dim);
        let half = self.bytes_per_layer(stored) / 2;
        for il in 0..self.layers.len() {
            let bytes = layer(il)?;
            if bytes.len() != 2 * half {
                candle_core::bail!(
                    "layer {il}: {} bytes where {} were expected",
                    bytes.len(),
                    2 * half
                );
            }
            let tensor = |b: &[u8]| -> Result<Tensor> {
                let t = match self.dtype {
                    DType::F16 => Tensor::from_vec(
                        b.chunks_exact(2)
                            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                            .collect::<Vec<_>>(),
                        shape,
                        &Device::Cpu,
                    )?,
                    DType::F32 => Tensor::from_vec(
                        b.chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect::<Vec<_>>(),
                        shape,
                        &Device::Cpu,
                    )?,
                    other => candle_core::bail!("no snapshot format for a {other:?} cache"),
                };
                t.narrow(1, 0, n)
            };
            let (k, v) = (tensor(&bytes[..half])?, tensor(&bytes[half..])?);
            self.append(il, &k, &v)?;
        }
        self.commit(tokens);
        Ok(())
    }

    /// Makes room for `extra` more tokens; errors when that would exceed `max_len`.
    pub(crate) fn reserve(&mut self, extra: usize) -> Result<()> {
        let needed = self.len() + extra;
        if needed > self.max_len {
            candle_core::bail!(
                "the context is full: {needed} tokens needed, the limit is {}",
                self.max_len
            );
        }
        if needed <= self.capacity {
            return Ok(());
        }
        let new_cap = needed
            .max(self.capacity * 2)
            .max(MIN_CAPACITY)
            .min(self.max_len);
        let keep = self.len();
        for slot in self.layers.iter_mut() {
            let fresh = |old: Option<&Tensor>| -> Result<Tensor> {
                let t = Tensor::zeros(
                    (self.n_kv_head, new_cap, self.head_dim),
                    self.dtype,
                    &Device::Cpu,
                )?;
                if let Some(old) = old {
                    if keep > 0 {
                        t.slice_set(&old.narrow(1, 0, keep)?.contiguous()?, 1, 0)?;
                    }
                }
                Ok(t)
            };
            let (k, v) = match slot.as_ref() {
                Some((k, v)) => (fresh(Some(k))?, fresh(Some(v))?),
                None => (fresh(None)?, fresh(None)?),
            };
            *slot = Some((k, v));
        }
        self.capacity = new_cap;
        Ok(())
    }

    /// Stores layer `il`'s keys and values `(kv_heads, seq, head_dim)` at the current end and
    /// returns views of all keys and values so far. Call [`KvCache::reserve`] first and
    /// [`KvCache::commit`] once every layer is done.
    pub(crate) fn append(&mut self, il: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let pos = self.len();
        let seq = k.dim(1)?;
        let (ck, cv) = self.layers[il]
            .as_ref()
            .expect("reserve() allocates every layer");
        ck.slice_set(&k.to_dtype(self.dtype)?.contiguous()?, 1, pos)?;
        cv.slice_set(&v.to_dtype(self.dtype)?.contiguous()?, 1, pos)?;
        Ok((ck.narrow(1, 0, pos + seq)?, cv.narrow(1, 0, pos + seq)?))
    }

    /// Records that `tokens` were appended to every layer.
    pub(crate) fn commit(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
    }

    /// Makes this cache hold the longest start of `prompt` that it or `other` holds, copying
    /// `other`'s rows instead of computing them (the same tokens at the same positions have
    /// the same keys and values), and returns how many tokens of `prompt` it now holds. What
    /// this cache held beyond that start is dropped; nothing is copied between caches of
    /// different shapes or element types.
    pub fn share_prefix(&mut self, other: &KvCache, prompt: &[u32]) -> Result<usize> {
        let from = self.common_prefix(prompt);
        let upto = other.common_prefix(prompt).min(self.max_len);
        if upto <= from
            || other.row_shape() != self.row_shape()
            || other.dtype != self.dtype
            || other.layers.len() != self.layers.len()
        {
            return Ok(from);
        }
        self.truncate(from);
        self.reserve(upto - from)?;
        for (mine, theirs) in self.layers.iter().zip(&other.layers) {
            let (Some((ck, cv)), Some((ok, ov))) = (mine, theirs) else {
                candle_core::bail!("a cache holding tokens has every layer");
            };
            ck.slice_set(&ok.narrow(1, from, upto - from)?.contiguous()?, 1, from)?;
            cv.slice_set(&ov.narrow(1, from, upto - from)?.contiguous()?, 1, from)?;
        }
        self.tokens.extend_from_slice(&prompt[from..upto]);
        Ok(upto)
    }
}
