//! Quantized weights that stay in the memory-mapped file.
//!
//! A [`QWeight`] is a view of a GGUF tensor's bytes. Its products run, in order of
//! preference: our kernels on the interleaved copy of the matrix (`kernels::interleaved`, where
//! the prepared file holds one), our AVX-512 kernels on the GGUF blocks in place, else candle's
//! k-quant products on those blocks (which quantize the activations to the weight's dot-product
//! type, Q8_K for the k-quants, exactly as llama.cpp does). Loading copies nothing: the
//! weights cost only page cache.

use super::gguf::{GgmlType, GgufError, GgufFile, TensorInfo};
use super::kernels::{self, interleaved, Kernels};
use super::prepared::Prepared;
use super::swiglu;
use candle_core::quantized::k_quants::{
    self, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1,
    BlockQ6K, BlockQ8_0, GgmlType as GgmlType_,
};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use half::{bf16, f16};
use memmap2::Mmap;
use std::sync::Arc;

/// Calls `$body` with `$T` bound to the candle block type of a ggml type.
macro_rules! with_block_type {
    ($ty:expr, $T:ident => $body:expr, else $other:expr) => {
        match $ty {
            GgmlType::F32 => {
                type $T = f32;
                $body
            }
            GgmlType::F16 => {
                type $T = f16;
                $body
            }
            GgmlType::BF16 => {
                type $T = bf16;
                $body
            }
            GgmlType::Q4_0 => {
                type $T = BlockQ4_0;
                $body
            }
            GgmlType::Q4_1 => {
                type $T = BlockQ4_1;
                $body
            }
            GgmlType::Q5_0 => {
                type $T = BlockQ5_0;
                $body
            }
            GgmlType::Q5_1 => {
                type $T = BlockQ5_1;
                $body
            }
            GgmlType::Q8_0 => {
                type $T = BlockQ8_0;
                $body
            }
            GgmlType::Q2K => {
                type $T = BlockQ2K;
                $body
            }
            GgmlType::Q3K => {
                type $T = BlockQ3K;
                $body
            }
            GgmlType::Q4K => {
                type $T = BlockQ4K;
                $body
            }
            GgmlType::Q5K => {
                type $T = BlockQ5K;
                $body
            }
            GgmlType::Q6K => {
                type $T = BlockQ6K;
                $body
            }
            _ => $other,
        }
    };
}

/// Whether we can compute with weights of this type.
pub fn is_supported(ty: GgmlType) -> bool {
    with_block_type!(ty, T => {
        let (blk, bytes) = ty.block_layout().expect("known type");
        std::mem::size_of::<T>() == bytes && <T as GgmlType_>::BLCK_SIZE == blk
    }, else false)
}

/// A 2-D weight of `rows` output features by `cols` input features, in the GGUF's layout.
#[derive(Clone)]
pub struct QWeight {
    map: Arc<Mmap>,
    offset: usize,
    size: usize,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    name: String,
    /// The same matrix in the interleaved layout (`interleaved`), where one was prepared.
    x8: Option<(Arc<Mmap>, usize, interleaved::Format)>,
    /// The kernel path its products run on.
    kernels: Kernels,
    /// Read only a row here and there (the embedding once the output projection has its own
    /// copy): lookups give their pages back afterwards ([`QWeight::advise_scattered_reads`]).
    scattered: bool,
}

impl std::fmt::Debug for QWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QWeight({} {}x{} {})",
            self.name, self.rows, self.cols, self.ty
        )
    }
}

impl QWeight {
    /// A view of a 2-D tensor of the file, whose products run on `kernels`.
    pub fn from_gguf(g: &GgufFile, info: &TensorInfo, kernels: Kernels) -> Result<Self, GgufError> {
        if info.dims.len() != 2 {
            return Err(GgufError::Shape {
                name: info.name.clone(),
                found: info.dims.clone(),
                expected: vec![info.dims[0], 1],
            });
        }
        if !is_supported(info.ty) {
            return Err(GgufError::UnsupportedType {
                name: info.name.clone(),
                ty: info.ty.to_string(),
            });
        }
        let w = Self {
            map: g.map().clone(),
            offset: info.offset,
            size: info.size,
            ty: info.ty,
            rows: info.dims[1] as usize,
            cols: info.dims[0] as usize,
            name: info.name.clone(),
            x8: None,
            kernels,
            scattered: false,
        };
        let align = with_block_type!(w.ty, T => std::mem::align_of::<T>(), else 1);
        if !(w.map.as_ptr() as usize + w.offset).is_multiple_of(align) {
            return Err(GgufError::Malformed(format!(
                "tensor {} is misaligned",
                info.name
            )));
        }
        Ok(w)
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Element type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// The kernel path of its products.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Marks this matrix as read a row here and there (embedding lookups). The OS is told so
    /// (a page fault then reads that page alone from the disk, not the 64 KB around it), and
    /// each lookup gives the matrix's pages back to the page cache when it is done: a fault
    /// still maps the cached pages around the row it reads (Linux's fault-around ignores
    /// `MADV_RANDOM`), so without that a 4K prompt's lookups left ≈ 100 MB of the embedding
    /// in the process's memory.
    pub fn advise_scattered_reads(&mut self) {
        self.scattered = true;
        #[cfg(unix)]
        let _ = self
            .map
            .advise_range(memmap2::Advice::Random, self.offset, self.size);
    }

    /// Unmaps this matrix's pages from the process (they stay in the page cache) after
    /// scattered reads. Only whole 64 KB stretches inside the matrix are released (a multiple
    /// of every page size in use), so the neighbouring tensors' pages are left alone.
    fn release_scattered_pages(&self) {
        #[cfg(unix)]
        {
            const ALIGN: usize = 64 * 1024;
            let base = self.map.as_ptr() as usize;
            let start = (base + self.offset).next_multiple_of(ALIGN) - base;
            let end = (base + self.offset + self.size) / ALIGN * ALIGN - base;
            if end > start {
                // SAFETY: the mapping is a read-only view of a file that is never written
                // through it: `MADV_DONTNEED` only unmaps the pages, and any later read, by
                // any thread, faults the same bytes back in from the page cache.
                let _ = unsafe {
                    self.map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
    }

    /// Computes products from the interleaved copy of this matrix in `p`, if `p` holds one of
    /// the right size; returns whether it does.
    pub fn attach_interleaved(&mut self, p: &Prepared) -> bool {
        if !self.kernels.interleaved() {
            return false;
        }
        match p.get(&self.name) {
            Some((map, offset, size)) if size == self.size => {
                let format = match self.ty {
                    GgmlType::Q4K => interleaved::Format::Q4Kx16,
                    GgmlType::Q6K => interleaved::Format::Q6Kx16,
                    GgmlType::Q8_0 => interleaved::Format::Q8_0x16,
                    _ => return false,
                };
                self.x8 = Some((map, offset, format));
                true
            }
            _ => false,
        }
    }

    /// Whether products use the interleaved layout.
    pub fn is_interleaved(&self) -> bool {
        self.x8.is_some()
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.offset..self.offset + self.size]
    }

    fn blocks<T>(&self) -> &[T] {
        let bytes = self.bytes();
        // SAFETY: `from_gguf` checked the type's block size and alignment, the byte range lies
        // inside the map (checked at parse time), and the block types are plain old data.
        unsafe {
            std::slice::from_raw_parts(
                bytes.as_ptr() as *const T,
                bytes.len() / std::mem::size_of::<T>(),
            )
        }
    }

    /// `x · Wᵀ` for `x` of shape (.., cols), giving (.., rows).
    pub fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        x.apply_op1_no_bwd(self)
    }

    /// `x · Wᵀ` for each of `ws` (matrices of the same input width), as [`QWeight::matmul`]
    /// gives them one by one. Where all have interleaved copies, the products share one
    /// quantization of `x` and one dispatch to the thread pool.
    pub fn matmul_many(ws: &[&QWeight], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let x = x.contiguous()?;
        if let Some(out) = Self::fused(ws, &x)? {
            return Ok(out);
        }
        ws.iter().map(|w| w.matmul(&x)).collect()
    }

    /// `silu(x · Gᵀ) · (x · Uᵀ)` for a feed-forward block's `gate` and `up` (same shape). With
    /// interleaved copies of both it is one pass that never stores the two products
    /// ([`interleaved::swiglu_uninit`]); otherwise the products, then [`swiglu::swiglu`].
    pub fn swiglu(gate: &QWeight, up: &QWeight, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        if let Some(out) = Self::fused_swiglu(gate, up, &x)? {
            return Ok(out);
        }
        let [g, u]: [Tensor; 2] = Self::matmul_many(&[gate, up], &x)?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("two products expected".into()))?;
        swiglu::swiglu(gate.kernels, &g, &u)
    }

    /// [`QWeight::swiglu`] in one pass, or `None` where that path does not apply.
    fn fused_swiglu(
        gate: &QWeight,
        up: &QWeight,
        x: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (Some((&k, lead)), Some(g), Some(u)) =
            (x.dims().split_last(), gate.interleaved(), up.interleaved())
        else {
            return Ok(None);
        };
        let (m, n): (usize, usize) = (lead.iter().product(), gate.rows);
        if gate.cols != k || up.cols != k || up.rows != n {
            return Ok(None);
        }
        let (storage, layout) = x.storage_and_layout();
        let candle_core::Storage::Cpu(CpuStorage::F32(v)) = &*storage else {
            return Ok(None);
        };
        let lhs = &v[layout.start_offset()..layout.start_offset() + m * k];
        let mut out = Vec::with_capacity(m * n);
        let dst = &mut out.spare_capacity_mut()[..m * n];
        if interleaved::swiglu_uninit(gate.kernels, (m, k, n), lhs, [g, u], dst).is_err() {
            return Ok(None);
        }
        // SAFETY: on success every one of the `m · n` elements was written.
        unsafe { out.set_len(m * n) };
        let shape = Shape::from([lead, &[n]].concat());
        Ok(Some(Tensor::from_vec(out, shape, x.device())?))
    }

    /// The interleaved copy's layout and bytes, where there is one.
    fn interleaved(&self) -> Option<(interleaved::Format, &[u8])> {
        let (map, offset, format) = self.x8.as_ref()?;
        Some((*format, &map[*offset..*offset + self.size]))
    }

    /// [`QWeight::matmul_many`] on the interleaved copies, or `None` where that path does not
    /// apply (a matrix without one, another input width, a CPU without the kernels).
    fn fused(ws: &[&QWeight], x: &Tensor) -> candle_core::Result<Option<Vec<Tensor>>> {
        let dims = x.dims();
        let Some((&k, lead)) = dims.split_last() else {
            return Ok(None);
        };
        if ws.iter().any(|w| w.x8.is_none() || w.cols != k) {
            return Ok(None);
        }
        let m: usize = lead.iter().product();
        let (storage, layout) = x.storage_and_layout();
        let candle_core::Storage::Cpu(CpuStorage::F32(v)) = &*storage else {
            return Ok(None);
        };
        let lhs = &v[layout.start_offset()..layout.start_offset() + m * k];
        let Some(outs) = Self::interleaved_products(ws, (m, k), lhs) else {
            return Ok(None);
        };
        let tensors = ws.iter().zip(outs).map(|(w, dst)| {
            Tensor::from_vec(dst, Shape::from([lead, &[w.rows]].concat()), x.device())
        });
        Ok(Some(tensors.collect::<candle_core::Result<_>>()?))
    }

    /// The products of `lhs` (m, k) with every one of `ws` on their interleaved copies, each
    /// (m, rows) row-major, or `None` if one has no copy or the kernels cannot run. The outputs
    /// are not zeroed first: the products write every element, and zeroing a prefill's outputs
    /// was a serial memset the other threads waited on.
    fn interleaved_products(
        ws: &[&QWeight],
        (m, k): (usize, usize),
        lhs: &[f32],
    ) -> Option<Vec<Vec<f32>>> {
        let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| Vec::with_capacity(m * w.rows)).collect();
        let mut products = ws
            .iter()
            .zip(outs.iter_mut())
            .map(|(w, dst)| {
                let (format, bytes) = w.interleaved()?;
                Some(interleaved::Product {
                    format,
                    n: w.rows,
                    w: bytes,
                    dst: &mut dst.spare_capacity_mut()[..m * w.rows],
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let kernels = ws.first()?.kernels;
        interleaved::matmul_many_uninit(kernels, (m, k), lhs, &mut products).ok()?;
        drop(products);
        for (w, dst) in ws.iter().zip(outs.iter_mut()) {
            // SAFETY: on success every product wrote all `m · rows` elements of its output.
            unsafe { dst.set_len(m * w.rows) };
        }
        Some(outs)
    }

    /// Dequantizes the given rows (an embedding lookup) into a (ids.len(), cols) F32 tensor.
    pub fn rows_f32(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        let mut out = vec![0f32; ids.len() * self.cols];
        with_block_type!(self.ty, T => {
            let per_row = self.cols / <T as GgmlType_>::BLCK_SIZE;
            let blocks = self.blocks::<T>();
            for (dst, &id) in out.chunks_mut(self.cols).zip(ids) {
                let id = id as usize;
                if id >= self.rows {
                    candle_core::bail!("token id {id} is outside the vocabulary of {} tokens", self.rows);
                }
                T::to_float(&blocks[id * per_row..(id + 1) * per_row], dst);
            }
        }, else candle_core::bail!("unsupported type {}", self.ty));
        if self.scattered {
            self.release_scattered_pages();
        }
        Tensor::from_vec(out, (ids.len(), self.cols), &candle_core::Device::Cpu)
    }

    /// The whole weight as F32 (tests and reference paths only).
    pub fn to_f32(&self) -> candle_core::Result<Tensor> {
        let ids: Vec<u32> = (0..self.rows as u32).collect();
        self.rows_f32(&ids)
    }
}

impl CustomOp1 for QWeight {
    fn name(&self) -> &'static str {
        "gguf-qmatmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        let Some((&k, lead)) = dims.split_last() else {
            candle_core::bail!("matmul input has no dimensions")
        };
        if k != self.cols {
            candle_core::bail!(
                "matmul input has {k} features, {} expects {}",
                self.name,
                self.cols
            );
        }
        let m: usize = lead.iter().product();
        let x = match storage {
            CpuStorage::F32(v) => &v[layout.start_offset()..layout.start_offset() + m * k],
            _ => candle_core::bail!("matmul input must be F32"),
        };
        let out_shape = Shape::from([lead, &[self.rows]].concat());
        if let Some(dst) = Self::interleaved_products(&[self], (m, k), x).and_then(|mut o| o.pop())
        {
            return Ok((CpuStorage::F32(dst), out_shape));
        }
        let mut dst = vec![0f32; m * self.rows];
        // Our kernels on the GGUF blocks where the path has them (AVX-512: prefill reuses each
        // weight block across activation rows; decode's one row gets a GEMV); candle's path
        // everywhere else.
        let format = match self.ty {
            GgmlType::Q4K => Some(kernels::Format::Q4K),
            GgmlType::Q6K => Some(kernels::Format::Q6K),
            _ => None,
        };
        let done = format.is_some_and(|format| {
            let shape = (m, k, self.rows);
            kernels::matmul_gguf(self.kernels, format, shape, x, self.bytes(), &mut dst).is_ok()
        });
        if !done {
            with_block_type!(self.ty, T => {
                k_quants::matmul::<T>((m, k, self.rows), x, self.blocks::<T>(), &mut dst)?
            }, else candle_core::bail!("unsupported type {}", self.ty));
        }
        Ok((CpuStorage::F32(dst), out_shape))
    }
}

/// A 1-D F32 tensor of the file (norm weights), copied into a candle tensor (they are tiny).
pub fn vector_f32(g: &GgufFile, name: &str) -> Result<Tensor, GgufError> {
    let info = g
        .tensor(name)
        .ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
    if info.dims.len() != 1 {
        return Err(GgufError::Shape {
            name: name.into(),
            found: info.dims.clone(),
            expected: vec![info.dims[0]],
        });
    }
    let bytes = g.tensor_data(info);
    let v: Vec<f32> = match info.ty {
        GgmlType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        GgmlType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        other => {
            return Err(GgufError::UnsupportedType {
                name: name.into(),
                ty: other.to_string(),
            })
        }
    };
    Tensor::from_vec(v, info.dims[0] as usize, &candle_core::Device::Cpu)
        .map_err(|e| GgufError::Malformed(e.to_string()))
}
