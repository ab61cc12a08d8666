//! Quantized matrix products with AVX-512 VNNI, read straight from the GGUF block layout.
//!
//! Prefill spends almost all of its time in `x · Wᵀ` with Q4_K and Q6_K weights. candle's
//! generic path computes one dot product at a time with AVX2, so every weight block is fetched
//! and unpacked again for every activation row. The kernels here unpack a weight block once
//! and use it against a tile of activation rows held in L1, with 512-bit `vpdpbusd`
//! (unsigned weight codes × signed Q8_K activations) and `vpmaddwd` (the per-sub-block scales).
//! The weights' offset terms (Q4_K mins, the −32 of Q6_K codes) only need the activation's
//! per-sub-block sums, so they are one FMA per block against sums computed once per product.
//!
//! The activations are quantized to Q8_K with candle's own `BlockQ8K::from_float`, exactly as
//! candle's path does, so both paths see the same integers and differ only in the order of
//! the float additions. Weights are never copied or repacked: the memory-mapped file stays the
//! only copy. Everything is chosen at run time ([`available`]); on other CPUs, or with
//! `SMOLLM3_KERNELS=candle`, callers keep candle's path.

use candle_core::quantized::k_quants::{BlockQ8K, GgmlType as _};
use std::sync::OnceLock;

/// Values per k-quant super-block.
pub(super) const QK: usize = 256;

/// A Q4_K super-block as stored in GGUF: 8 sub-blocks of 32 values with 6-bit scales and mins.
#[repr(C)]
pub(super) struct Q4K {
    pub(super) d: u16,
    pub(super) dmin: u16,
    pub(super) scales: [u8; 12],
    pub(super) qs: [u8; QK / 2],
}

/// A Q6_K super-block as stored in GGUF: 16 sub-blocks of 16 values with 8-bit scales.
#[repr(C)]
pub(super) struct Q6K {
    pub(super) ql: [u8; QK / 2],
    pub(super) qh: [u8; QK / 4],
    pub(super) scales: [i8; QK / 16],
    pub(super) d: u16,
}

/// The Q8_K activation block, field for field the layout of candle's `BlockQ8K`.
#[repr(C)]
pub(super) struct Q8K {
    pub(super) d: f32,
    pub(super) qs: [i8; QK],
    pub(super) bsums: [i16; QK / 16],
}

const _: () = assert!(std::mem::size_of::<Q4K>() == 144);
const _: () = assert!(std::mem::size_of::<Q6K>() == 210);
const _: () = assert!(std::mem::size_of::<Q8K>() == std::mem::size_of::<BlockQ8K>());
const _: () = assert!(std::mem::align_of::<Q8K>() == std::mem::align_of::<BlockQ8K>());

/// Weight formats these kernels compute with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// GGUF `Q4_K`.
    Q4K,
    /// GGUF `Q6_K`.
    Q6K,
}

impl Format {
    fn block_bytes(self) -> usize {
        match self {
            Format::Q4K => std::mem::size_of::<Q4K>(),
            Format::Q6K => std::mem::size_of::<Q6K>(),
        }
    }
}

/// Whether the CPU has the instructions these kernels need (checked once).
pub fn cpu_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether the kernels should be used: the CPU supports them and `SMOLLM3_KERNELS` is not
/// `candle` (the switch that forces candle's path, for A/B measurements).
pub fn available() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        let forced_off = std::env::var("SMOLLM3_KERNELS")
            .map(|v| v.eq_ignore_ascii_case("candle"))
            .unwrap_or(false);
        cpu_supported() && !forced_off
    })
}

/// Errors from [`matmul`] on arguments that do not describe a valid product.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    /// The CPU lacks AVX-512 VNNI.
    #[error("the CPU lacks the AVX-512 VNNI instructions these kernels need")]
    Unsupported,
    /// `k` is not a whole number of 256-value super-blocks.
    #[error("{0} input features is not a multiple of {QK}")]
    Features(usize),
    /// A buffer does not match the (m, k, n) shape.
    #[error("{what} holds {found} elements, ({m}, {k}, {n}) needs {expected}")]
    Size {
        /// Which buffer.
        what: &'static str,
        /// Its length.
        found: usize,
        /// The length the shape needs.
        expected: usize,
        /// Activation rows.
        m: usize,
        /// Input features.
        k: usize,
        /// Output features.
        n: usize,
    },
}

/// Checks a product's arguments: the CPU, `k` in whole super-blocks, and the lengths of the
/// activations, the output and the weights (`weight_bytes` of the super-blocks per row).
/// Returns the super-blocks per row.
pub(super) fn check_shape(
    (m, k, n): (usize, usize, usize),
    (lhs, dst): (usize, usize),
    weights: usize,
    weight_bytes: impl Fn(usize) -> usize,
) -> Result<usize, KernelError> {
    if !cpu_supported() {
        return Err(KernelError::Unsupported);
    }
    if !k.is_multiple_of(QK) {
        return Err(KernelError::Features(k));
    }
    let size = |what, found, expected| {
        if found == expected {
            Ok(())
        } else {
            Err(KernelError::Size {
                what,
                found,
                expected,
                m,
                k,
                n,
            })
        }
    };
    size("lhs", lhs, m * k)?;
    size("dst", dst, m * n)?;
    let nb = k / QK;
    size("weight bytes", weights, weight_bytes(nb))?;
    Ok(nb)
}

/// `dst = lhs · Wᵀ` where `lhs` is (m, k) row-major F32, `w` holds `n` rows of `k` values in
/// the GGUF block layout of `format`, and `dst` is (m, n) row-major.
///
/// Work is split over candle's thread pool (`CANDLE_NUM_THREADS`) by groups of weight rows.
pub fn matmul(
    format: Format,
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    w: &[u8],
    dst: &mut [f32],
) -> Result<(), KernelError> {
    let nb = check_shape((m, k, n), (lhs.len(), dst.len()), w.len(), |nb| {
        n * nb * format.block_bytes()
    })?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if !(w.as_ptr() as usize).is_multiple_of(2) {
        // GGUF aligns tensor data; a caller with an odd address takes the generic path.
        return Err(KernelError::Unsupported);
    }

    if m == 1 {
        gemv(format, (k, n), lhs, w, dst);
        return Ok(());
    }

    // Passes over `k` add their partial sums into `dst`.
    dst.fill(0.0);
    let act = quantize(lhs, m, k);
    let act: &[Q8K] = &act;
    let sums = block_sums(format, act);
    let sums: &[f32] = &sums;
    let pool = candle_core::utils::barrier_pool();
    let groups = n.div_ceil(ROW_GROUP);
    let dst_addr = dst.as_mut_ptr() as usize;
    let w_addr = w.as_ptr() as usize;
    pool.execute_chunked(groups, |range| {
        for g in range {
            let rows = g * ROW_GROUP..n.min((g + 1) * ROW_GROUP);
            // SAFETY: the sizes were checked above; each group writes only its own columns
            // of `dst`, so concurrent workers never touch the same element.
            unsafe {
                run_group(
                    format,
                    rows,
                    (m, nb, n),
                    (act, sums),
                    w_addr as *const u8,
                    dst_addr as *mut f32,
                )
            }
        }
    });
    Ok(())
}

/// Weight rows per unit of work in [`gemv`].
const GEMV_GROUP: usize = 16;
/// Weight rows per [`gemv`] micro-kernel call, by format: one activation load serves all of
/// them, but more streams than the prefetchers follow cost more than they save (measured by
/// `gemv_speed`).
const GEMV_ROWS: [usize; 2] = [4, 2];

/// Decode's product with one activation row, where every weight byte is read once and used
/// once: the work per weight block is what counts. Each micro-kernel call streams a few weight
/// rows over the whole of `k` against the one quantized activation row, which stays in L1,
/// and reduces its accumulators only at the end.
fn gemv(format: Format, (k, n): (usize, usize), lhs: &[f32], w: &[u8], dst: &mut [f32]) {
    let micro = match format {
        Format::Q4K => GEMV_ROWS[0],
        Format::Q6K => GEMV_ROWS[1],
    };
    gemv_rows_of(format, (k, n), lhs, w, dst, micro)
}

fn gemv_rows_of(
    format: Format,
    (k, n): (usize, usize),
    lhs: &[f32],
    w: &[u8],
    dst: &mut [f32],
    micro: usize,
) {
    let nb = k / QK;
    let mut act = quantize(lhs, 1, k);
    let sums = match format {
        Format::Q4K => block_sums(format, &act),
        Format::Q6K => Vec::new(),
    };
    // Q6_K's −32 code offset stays in the integer sum: `sc_g · (−bsum_g)`, weighted by 32
    // through the scales, is one more `vpdpwssd` against these words.
    let neg: Vec<[i16; 32]> = match format {
        Format::Q4K => Vec::new(),
        Format::Q6K => act
            .iter()
            .map(|b| {
                let mut v = [0i16; 32];
                for (o, &s) in v.iter_mut().zip(&b.bsums) {
                    *o = -s;
                }
                v
            })
            .collect(),
    };
    if format == Format::Q4K {
        // A Q4_K block's 64-byte half holds, in its low nibbles, values 0..32 and 64..96 of
        // its 128, and in its high nibbles 32..64 and 96..128. Reordering the activation once
        // to match saves every weight block a shuffle.
        for blk in &mut act {
            let q = blk.qs;
            for h in 0..2 {
                let (src, out) = (&q[128 * h..], &mut blk.qs[128 * h..128 * (h + 1)]);
                out[..32].copy_from_slice(&src[..32]);
                out[32..64].copy_from_slice(&src[64..96]);
                out[64..96].copy_from_slice(&src[32..64]);
                out[96..128].copy_from_slice(&src[96..128]);
            }
        }
    }
    let (act, sums, neg): (&[Q8K], &[f32], &[[i16; 32]]) = (&act, &sums, &neg);
    let row_bytes = nb * format.block_bytes();
    let dst_addr = dst.as_mut_ptr() as usize;
    let w_addr = w.as_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(GEMV_GROUP), |range| {
        for g in range {
            let mut r = g * GEMV_GROUP;
            let end = n.min(r + GEMV_GROUP);
            while r < end {
                let rows = micro.min(end - r);
                // SAFETY: `matmul` checked that `w` holds `n` rows of `row_bytes` and `dst`
                // `n` floats; each group writes only its own elements of `dst`.
                unsafe {
                    let wr = (w_addr as *const u8).add(r * row_bytes);
                    let out = (dst_addr as *mut f32).add(r);
                    macro_rules! rows {
                        ($r:expr) => {{
                            let v = match format {
                                Format::Q4K => avx512::q4k_gemv::<{ $r }>(wr, row_bytes, act, sums),
                                Format::Q6K => avx512::q6k_gemv::<{ $r }>(wr, row_bytes, act, neg),
                            };
                            for (i, x) in v.iter().enumerate() {
                                *out.add(i) = *x;
                            }
                        }};
                    }
                    match rows {
                        4 => rows!(4),
                        1 => rows!(1),
                        2 => rows!(2),
                        _ => rows!(3),
                    }
                }
                r += rows;
            }
        }
    });
}

/// Weight rows per unit of work: their blocks stay in L1/L2 while the whole activation
/// matrix streams past them once.
const ROW_GROUP: usize = 32;
/// Super-blocks per pass: a tile of activation rows over this span of `k` stays in L1.
const KBLOCKS: usize = 8;
/// Activation rows per micro-kernel call.
const TILE: usize = 8;
/// Weight rows per micro-kernel call.
const WROWS: usize = 1;
const _: () = assert!(
    TILE <= 8,
    "run_group handles tails of up to 7 activation rows"
);

/// Quantizes each row of `lhs` to Q8_K with candle's quantizer, on the thread pool.
pub(super) fn quantize(lhs: &[f32], m: usize, k: usize) -> Vec<Q8K> {
    let nb = k / QK;
    let mut blocks = vec![BlockQ8K::zeros(); m * nb];
    let addr = blocks.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(m, |rows| {
        for r in rows {
            // SAFETY: row `r` owns blocks r*nb..(r+1)*nb, disjoint from every other row.
            let out =
                unsafe { std::slice::from_raw_parts_mut((addr as *mut BlockQ8K).add(r * nb), nb) };
            let row = &lhs[r * k..(r + 1) * k];
            if cpu_supported() {
                for (x, y) in row.chunks_exact(QK).zip(out.iter_mut()) {
                    // SAFETY: the CPU features were checked; `Q8K` has `BlockQ8K`'s layout.
                    unsafe {
                        avx512::quantize_q8k(
                            x.try_into().expect("a whole block"),
                            &mut *(y as *mut BlockQ8K as *mut Q8K),
                        )
                    }
                }
            } else {
                BlockQ8K::from_float(row, out);
            }
        }
    });
    let mut blocks = std::mem::ManuallyDrop::new(blocks);
    // SAFETY: `Q8K` has the size, alignment and field layout of `BlockQ8K` (asserted above,
    // both `repr(C)` with the same fields), and both are plain old data without `Drop`.
    unsafe {
        Vec::from_raw_parts(
            blocks.as_mut_ptr() as *mut Q8K,
            blocks.len(),
            blocks.capacity(),
        )
    }
}

/// Per activation block, 16 floats that the weight-only offset terms multiply: for Q4_K the
/// scaled sums of the 8 sub-blocks of 32 (then 8 zeros), for Q6_K of the 16 sub-blocks of 16.
/// Taking these terms out of the integer loop leaves it one FMA per block and row pair.
fn block_sums(format: Format, act: &[Q8K]) -> Vec<f32> {
    let mut out = vec![0f32; act.len() * 16];
    for (blk, o) in act.iter().zip(out.chunks_exact_mut(16)) {
        match format {
            Format::Q4K => {
                for (s, v) in o.iter_mut().take(8).enumerate() {
                    *v = blk.d * f32::from(blk.bsums[2 * s] + blk.bsums[2 * s + 1]);
                }
            }
            Format::Q6K => {
                for (v, &b) in o.iter_mut().zip(&blk.bsums) {
                    *v = blk.d * f32::from(b);
                }
            }
        }
    }
    out
}

/// Computes `dst[.., rows]` for all activation rows.
///
/// # Safety
/// `w` must hold `n * nb` blocks of `format`, `dst` must hold `m * n` floats, and `rows` must
/// lie inside `0..n`; the caller must have checked the CPU features.
unsafe fn run_group(
    format: Format,
    rows: std::ops::Range<usize>,
    (m, nb, n): (usize, usize, usize),
    (act, sums): (&[Q8K], &[f32]),
    w: *const u8,
    dst: *mut f32,
) {
    let row_bytes = nb * format.block_bytes();
    for kb in (0..nb).step_by(KBLOCKS) {
        let count = KBLOCKS.min(nb - kb);
        for c0 in (0..m).step_by(TILE) {
            let tile = TILE.min(m - c0);
            let a = act.as_ptr().add(c0 * nb + kb);
            let sa = sums.as_ptr().add((c0 * nb + kb) * 16);
            run_tile(
                format,
                rows.clone(),
                row_bytes,
                (a, sa),
                (nb, count, tile),
                w.add(kb * format.block_bytes()),
                dst.add(c0 * n),
                n,
            );
        }
    }
}

/// One tile of activation rows against the group's weight rows, over `count` blocks.
///
/// # Safety
/// As for [`run_group`], with `a`, `sa` and `w` already offset to the first block.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn run_tile(
    format: Format,
    rows: std::ops::Range<usize>,
    row_bytes: usize,
    (a, sa): (*const Q8K, *const f32),
    (nb, count, tile): (usize, usize, usize),
    w: *const u8,
    dst: *mut f32,
    n: usize,
) {
    {
        let mut r = rows.start;
        while r < rows.end {
            let wr = if rows.end - r >= WROWS { WROWS } else { 1 };
            let at = Tile {
                format,
                w: w.add(r * row_bytes),
                row_bytes,
                a,
                sa,
                nb,
                count,
                dst: dst.add(r),
                n,
            };
            macro_rules! by_tile {
                ($r:expr) => {
                    match tile {
                        _ if tile == TILE => at.run::<{ $r }, TILE>(),
                        1 => at.run::<{ $r }, 1>(),
                        2 => at.run::<{ $r }, 2>(),
                        3 => at.run::<{ $r }, 3>(),
                        4 => at.run::<{ $r }, 4>(),
                        5 => at.run::<{ $r }, 5>(),
                        6 => at.run::<{ $r }, 6>(),
                        _ => at.run::<{ $r }, 7>(),
                    }
                };
            }
            if wr == WROWS {
                by_tile!(WROWS)
            } else {
                by_tile!(1)
            }
            r += wr;
        }
    }
}

/// One micro-kernel call: a few weight rows against a tile of activation rows.
struct Tile {
    format: Format,
    w: *const u8,
    row_bytes: usize,
    a: *const Q8K,
    sa: *const f32,
    nb: usize,
    count: usize,
    dst: *mut f32,
    n: usize,
}

impl Tile {
    /// Runs the `R` × `C` micro-kernel and writes its results into `dst`.
    ///
    /// # Safety
    /// As for [`run_group`]: `R` weight rows and `C` activation rows exist from the pointers.
    #[inline(always)]
    unsafe fn run<const R: usize, const C: usize>(&self) {
        let mut out = [[0f32; C]; R];
        match self.format {
            Format::Q4K => avx512::q4k::<R, C>(
                self.w,
                self.row_bytes,
                self.a,
                self.sa,
                (self.nb, self.count),
                &mut out,
            ),
            Format::Q6K => avx512::q6k::<R, C>(
                self.w,
                self.row_bytes,
                self.a,
                self.sa,
                (self.nb, self.count),
                &mut out,
            ),
        }
        for (i, o) in out.iter().enumerate() {
            for (c, v) in o.iter().enumerate() {
                *self.dst.add(c * self.n + i) += *v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
// The micro-kernels index several per-row and per-column register arrays in step.
#[allow(clippy::needless_range_loop)]
mod avx512 {
    //! The micro-kernels: `R` weight rows × `C` activation rows over all super-blocks.

    use super::{Q4K, Q6K, Q8K, QK};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn f16_to_f32(bits: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// Lane indices that put the right 16-bit scale under each word of
    /// `_mm512_packs_epi32(x, y)`, whose 128-bit lane `l` holds 4 dwords of `x` (words 0-3)
    /// then 4 of `y` (words 4-7); `scale(l, from_y)` names the scale for each half-lane.
    #[inline(always)]
    unsafe fn pack_index(scale: impl Fn(i16, bool) -> i16) -> __m512i {
        let mut idx = [0i16; 32];
        for (i, v) in idx.iter_mut().enumerate() {
            *v = scale((i / 8) as i16, i % 8 >= 4);
        }
        _mm512_loadu_si512(idx.as_ptr() as *const _)
    }

    /// `Σ_j scale_j · (codes_j · y_j)`: `vpdpbusd` sums 4 products per dword (at most
    /// 4·63·128 < 2¹⁵, so packing to words is exact), then one `vpmaddwd` per chunk pair
    /// applies the sub-block scales.
    #[inline(always)]
    unsafe fn scaled_dot(wq: &[__m512i; 4], y: &[__m512i; 4], sv: &[__m512i; 2]) -> __m512i {
        let z = _mm512_setzero_si512();
        let d0 = _mm512_dpbusd_epi32(z, wq[0], y[0]);
        let d1 = _mm512_dpbusd_epi32(z, wq[1], y[1]);
        let d2 = _mm512_dpbusd_epi32(z, wq[2], y[2]);
        let d3 = _mm512_dpbusd_epi32(z, wq[3], y[3]);
        let lo = _mm512_madd_epi16(_mm512_packs_epi32(d0, d1), sv[0]);
        _mm512_dpwssd_epi32(lo, _mm512_packs_epi32(d2, d3), sv[1])
    }

    #[inline(always)]
    unsafe fn hsum(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }

    /// A Q8_K block's 256 values as four 64-byte vectors.
    #[inline(always)]
    unsafe fn load_q8k(ab: &Q8K) -> [__m512i; 4] {
        [
            _mm512_loadu_si512(ab.qs.as_ptr() as *const _),
            _mm512_loadu_si512(ab.qs.as_ptr().add(64) as *const _),
            _mm512_loadu_si512(ab.qs.as_ptr().add(128) as *const _),
            _mm512_loadu_si512(ab.qs.as_ptr().add(192) as *const _),
        ]
    }

    /// What unpacking Q6_K blocks needs, built once per kernel call.
    struct Q6kUnpack {
        low: __m512i,
        top: __m512i,
        left: __m512i,
        right: __m512i,
        sidx: [__m512i; 2],
    }

    impl Q6kUnpack {
        #[inline(always)]
        unsafe fn new() -> Self {
            // The high-bit pairs of values 0..32 sit in bits 0-1 of qh, of 32..64 in bits
            // 2-3, of 64..96 in bits 4-5 and of 96..128 in bits 6-7; move each to bits 4-5.
            let mut left = [0i16; 32];
            let mut right = [0i16; 32];
            for lane in 0..32 {
                left[lane] = if lane < 16 { 4 } else { 2 };
                right[lane] = if lane < 16 { 0 } else { 2 };
            }
            Self {
                low: _mm512_set1_epi8(0x0F),
                top: _mm512_set1_epi8(0x30),
                left: _mm512_loadu_si512(left.as_ptr() as *const _),
                right: _mm512_loadu_si512(right.as_ptr() as *const _),
                // Chunk c covers groups 4c..4c + 4, one per 128-bit lane.
                sidx: [
                    pack_index(|l, y| 4 * i16::from(y) + l),
                    pack_index(|l, y| 8 + 4 * i16::from(y) + l),
                ],
            }
        }

        /// The 16 group scales as bytes and as words (in the low half of the vector).
        #[inline(always)]
        unsafe fn scales(blk: &Q6K) -> (__m128i, __m512i) {
            let s8 = _mm_loadu_si128(blk.scales.as_ptr() as *const _);
            (s8, _mm512_zextsi256_si512(_mm256_cvtepi8_epi16(s8)))
        }

        /// The scale words under each word of `scaled_dot`'s packed sums.
        #[inline(always)]
        unsafe fn scale_words(&self, s512: __m512i) -> [__m512i; 2] {
            [
                _mm512_permutexvar_epi16(self.sidx[0], s512),
                _mm512_permutexvar_epi16(self.sidx[1], s512),
            ]
        }

        /// The 256 six-bit codes (0..64), in value order, as four 64-byte vectors.
        #[inline(always)]
        unsafe fn codes(&self, blk: &Q6K) -> [__m512i; 4] {
            let mut wq = [_mm512_setzero_si512(); 4];
            for h in 0..2 {
                let ql = _mm512_loadu_si512(blk.ql.as_ptr().add(64 * h) as *const _);
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    blk.qh.as_ptr().add(32 * h) as *const _
                ));
                let lo = _mm512_and_si512(ql, self.low);
                let hi = _mm512_and_si512(_mm512_srli_epi16(ql, 4), self.low);
                let hl = _mm512_and_si512(_mm512_sllv_epi16(qh, self.left), self.top);
                let hh = _mm512_and_si512(_mm512_srlv_epi16(qh, self.right), self.top);
                wq[2 * h] = _mm512_or_si512(lo, hl);
                wq[2 * h + 1] = _mm512_or_si512(hi, hh);
            }
            wq
        }
    }

    /// One super-block of `R` weight rows, unpacked: codes, scale words, the block scale and
    /// the offset term (Q4_K mins or Q6_K's −32, against the activation's block sums).
    struct Unpacked<'a, const R: usize> {
        wq: &'a [[__m512i; 4]; R],
        sv: &'a [[__m512i; 2]; R],
        d: &'a [f32; R],
        off: &'a [__m512; R],
    }

    impl<const R: usize> Unpacked<'_, R> {
        /// Adds block `b` of `C` activation rows against these weight rows into `acc`.
        #[inline(always)]
        unsafe fn accumulate<const C: usize>(
            &self,
            a: *const Q8K,
            sa: *const f32,
            (nb, b): (usize, usize),
            acc: &mut [[__m512; C]; R],
        ) {
            for c in 0..C {
                let ab = &*a.add(c * nb + b);
                let y = load_q8k(ab);
                let sums = _mm512_loadu_ps(sa.add((c * nb + b) * 16));
                for r in 0..R {
                    let isum = scaled_dot(&self.wq[r], &y, &self.sv[r]);
                    let a1 = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(isum),
                        _mm512_set1_ps(self.d[r] * ab.d),
                        acc[r][c],
                    );
                    acc[r][c] = _mm512_fnmadd_ps(self.off[r], sums, a1);
                }
            }
        }
    }

    /// The horizontal sums of the accumulators.
    #[inline(always)]
    unsafe fn reduce<const R: usize, const C: usize>(
        acc: &[[__m512; C]; R],
        out: &mut [[f32; C]; R],
    ) {
        for r in 0..R {
            for c in 0..C {
                out[r][c] = hsum(acc[r][c]);
            }
        }
    }

    /// Q4_K: per sub-block s, `d·sc_s·Σ q·y − dmin·m_s·Σ y`, with `Σ y` from the Q8_K bsums.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub(super) unsafe fn q4k<const R: usize, const C: usize>(
        w: *const u8,
        row_bytes: usize,
        a: *const Q8K,
        sa: *const f32,
        (nb, count): (usize, usize),
        out: &mut [[f32; C]; R],
    ) {
        let low = _mm512_set1_epi8(0x0F);
        // Chunk c covers sub-blocks 2c (128-bit lanes 0-1) and 2c + 1 (lanes 2-3).
        let sidx = [
            pack_index(|l, y| 2 * i16::from(y) + l / 2),
            pack_index(|l, y| 4 + 2 * i16::from(y) + l / 2),
        ];
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for b in 0..count {
            let mut wq = [[_mm512_setzero_si512(); 4]; R];
            let mut sv = [[_mm512_setzero_si512(); 2]; R];
            let mut mv = [_mm512_setzero_ps(); R];
            let mut d = [0f32; R];
            let mut dmin = [0f32; R];
            for r in 0..R {
                let blk = &*(w.add(r * row_bytes) as *const Q4K).add(b);
                d[r] = f16_to_f32(blk.d);
                dmin[r] = f16_to_f32(blk.dmin);
                let s = q4k_scales_vec(blk.scales.as_ptr());
                let s512 = _mm512_zextsi256_si512(_mm256_cvtepu8_epi16(s));
                for j in 0..2 {
                    sv[r][j] = _mm512_permutexvar_epi16(sidx[j], s512);
                }
                // dmin·m_s against the activation's scaled sub-block sums (lanes 8.. are 0 there).
                mv[r] = _mm512_mul_ps(
                    _mm512_set1_ps(dmin[r]),
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_srli_si128(s, 8))),
                );
                // Byte i of each 32-byte run holds value i (low nibble) and value 32 + i
                // (high nibble) of a 64-value chunk.
                for h in 0..2 {
                    let v = _mm512_loadu_si512(blk.qs.as_ptr().add(64 * h) as *const _);
                    let lo = _mm512_and_si512(v, low);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                    wq[r][2 * h] = _mm512_shuffle_i64x2(lo, hi, 0x44);
                    wq[r][2 * h + 1] = _mm512_shuffle_i64x2(lo, hi, 0xEE);
                }
            }
            let w = Unpacked {
                wq: &wq,
                sv: &sv,
                d: &d,
                off: &mv,
            };
            w.accumulate(a, sa, (nb, b), &mut acc);
        }
        reduce(&acc, out);
    }

    /// Q6_K: `d·Σ_g sc_g·Σ (q − 32)·y`, the −32 folded in as `−32·sc_g·bsum_g`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub(super) unsafe fn q6k<const R: usize, const C: usize>(
        w: *const u8,
        row_bytes: usize,
        a: *const Q8K,
        sa: *const f32,
        (nb, count): (usize, usize),
        out: &mut [[f32; C]; R],
    ) {
        let q6 = Q6kUnpack::new();
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for b in 0..count {
            let mut wq = [[_mm512_setzero_si512(); 4]; R];
            let mut sv = [[_mm512_setzero_si512(); 2]; R];
            let mut ov = [_mm512_setzero_ps(); R];
            let mut d = [0f32; R];
            for r in 0..R {
                let blk = &*(w.add(r * row_bytes) as *const Q6K).add(b);
                d[r] = f16_to_f32(blk.d);
                let (s8, s512) = Q6kUnpack::scales(blk);
                // 32·d·sc_g against the activation's scaled group sums: the codes' −32 offset.
                ov[r] = _mm512_mul_ps(
                    _mm512_set1_ps(32.0 * d[r]),
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(s8)),
                );
                sv[r] = q6.scale_words(s512);
                wq[r] = q6.codes(blk);
            }
            let w = Unpacked {
                wq: &wq,
                sv: &sv,
                d: &d,
                off: &ov,
            };
            w.accumulate(a, sa, (nb, b), &mut acc);
        }
        reduce(&acc, out);
    }

    /// Reads ahead into the rows after these `R`: while block `b` of each row is used, the
    /// same share of the next rows' bytes is requested. Rows are contiguous, so the
    /// `R`-row streams never look sequential to the hardware prefetcher on their own, and
    /// short rows (k = 2048 is 1.1 KB) end before it would catch on.
    #[inline(always)]
    unsafe fn prefetch_next<const R: usize>(w: *const u8, row_bytes: usize, b: usize, bb: usize) {
        let step = R * bb;
        let from = w.wrapping_add(R * row_bytes + b * step);
        let mut off = 0;
        while off < step {
            // Prefetches never fault, so reading ahead past the weight's end is harmless.
            _mm_prefetch::<_MM_HINT_T0>(from.wrapping_add(off) as *const i8);
            off += 64;
        }
    }

    /// A Q4_K block's scales and mins as `[sc0..sc7, m0..m7]` bytes, unpacked from their 6-bit
    /// packing with four-byte-wide masks.
    #[inline(always)]
    unsafe fn q4k_scales_vec(s: *const u8) -> __m128i {
        let a = (s as *const u32).read_unaligned();
        let b = (s.add(4) as *const u32).read_unaligned();
        let c = (s.add(8) as *const u32).read_unaligned();
        let sc_lo = a & 0x3f3f_3f3f;
        let m_lo = b & 0x3f3f_3f3f;
        let sc_hi = (c & 0x0f0f_0f0f) | ((a >> 2) & 0x3030_3030);
        let m_hi = ((c >> 4) & 0x0f0f_0f0f) | ((b >> 2) & 0x3030_3030);
        _mm_set_epi32(m_hi as i32, m_lo as i32, sc_hi as i32, sc_lo as i32)
    }

    /// Q4_K against one activation row whose blocks were reordered to the nibble order (see
    /// `gemv`): `R` weight rows starting `row_bytes` apart, over all of their blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub(super) unsafe fn q4k_gemv<const R: usize>(
        w: *const u8,
        row_bytes: usize,
        act: &[Q8K],
        sums: &[f32],
    ) -> [f32; R] {
        let low = _mm512_set1_epi8(0x0F);
        // The low nibbles of a 64-byte half hold sub-blocks 4h (lanes 0-1) and 4h + 2 (lanes
        // 2-3), the high nibbles 4h + 1 and 4h + 3.
        let sidx = [
            pack_index(|l, y| 2 * (l / 2) + i16::from(y)),
            pack_index(|l, y| 4 + 2 * (l / 2) + i16::from(y)),
        ];
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, ab) in act.iter().enumerate() {
            let y = load_q8k(ab);
            let bs = _mm512_loadu_ps(sums.as_ptr().add(b * 16));
            prefetch_next::<R>(w, row_bytes, b, std::mem::size_of::<Q4K>());
            for r in 0..R {
                let blk = &*(w.add(r * row_bytes) as *const Q4K).add(b);
                let s = q4k_scales_vec(blk.scales.as_ptr());
                let s512 = _mm512_zextsi256_si512(_mm256_cvtepu8_epi16(s));
                let sv = [
                    _mm512_permutexvar_epi16(sidx[0], s512),
                    _mm512_permutexvar_epi16(sidx[1], s512),
                ];
                let v0 = _mm512_loadu_si512(blk.qs.as_ptr() as *const _);
                let v1 = _mm512_loadu_si512(blk.qs.as_ptr().add(64) as *const _);
                let wq = [
                    _mm512_and_si512(v0, low),
                    _mm512_and_si512(_mm512_srli_epi16(v0, 4), low),
                    _mm512_and_si512(v1, low),
                    _mm512_and_si512(_mm512_srli_epi16(v1, 4), low),
                ];
                let isum = scaled_dot(&wq, &y, &sv);
                let mins = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_srli_si128(s, 8)));
                let mv = _mm512_mul_ps(_mm512_set1_ps(f16_to_f32(blk.dmin)), mins);
                let a1 = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(isum),
                    _mm512_set1_ps(f16_to_f32(blk.d) * ab.d),
                    acc[r],
                );
                acc[r] = _mm512_fnmadd_ps(mv, bs, a1);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum(acc[r]);
        }
        out
    }

    /// Q6_K against one activation row: `R` weight rows starting `row_bytes` apart.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub(super) unsafe fn q6k_gemv<const R: usize>(
        w: *const u8,
        row_bytes: usize,
        act: &[Q8K],
        neg: &[[i16; 32]],
    ) -> [f32; R] {
        let q6 = Q6kUnpack::new();
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, ab) in act.iter().enumerate() {
            let y = load_q8k(ab);
            let nbs = _mm512_loadu_si512(neg.as_ptr().add(b) as *const _);
            prefetch_next::<R>(w, row_bytes, b, std::mem::size_of::<Q6K>());
            for r in 0..R {
                let blk = &*(w.add(r * row_bytes) as *const Q6K).add(b);
                let d = f16_to_f32(blk.d);
                let (_, s512) = Q6kUnpack::scales(blk);
                let sv = q6.scale_words(s512);
                let wq = q6.codes(blk);
                // At most 4·63·127 per dword before the scales and 2·(127·32)·2032 after the
                // offset term: far inside i32.
                let isum =
                    _mm512_dpwssd_epi32(scaled_dot(&wq, &y, &sv), _mm512_slli_epi16(s512, 5), nbs);
                acc[r] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * ab.d), acc[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum(acc[r]);
        }
        out
    }

    /// One block of 256 values to Q8_K, with the same results as candle's (and llama.cpp's)
    /// scalar quantizer: the scale from the first value of largest magnitude, `-127 / max`,
    /// values rounded half away from zero.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub(super) unsafe fn quantize_q8k(x: &[f32; QK], y: &mut Q8K) {
        let p = x.as_ptr();
        let mut amax = _mm512_setzero_ps();
        for i in 0..16 {
            amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(p.add(16 * i))));
        }
        let amax = _mm512_reduce_max_ps(amax);
        if amax == 0.0 || amax.is_nan() {
            y.d = 0.0;
            y.qs.fill(0);
            y.bsums.fill(0);
            return;
        }
        let at = (0..16)
            .find_map(|i| {
                let v = _mm512_abs_ps(_mm512_loadu_ps(p.add(16 * i)));
                let m = _mm512_cmpeq_ps_mask(v, _mm512_set1_ps(amax));
                (m != 0).then(|| 16 * i + m.trailing_zeros() as usize)
            })
            .unwrap_or(0);
        let iscale = -127.0 / x[at];
        let sv = _mm512_set1_ps(iscale);
        let half = _mm512_set1_ps(0.5);
        let sign = _mm512_set1_ps(-0.0);
        for i in 0..16 {
            let v = _mm512_mul_ps(sv, _mm512_loadu_ps(p.add(16 * i)));
            // Round half away from zero, exactly: truncate, then step away from zero where
            // the dropped part is at least a half.
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            let frac = _mm512_abs_ps(_mm512_sub_ps(v, t));
            let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, half);
            let one = _mm512_or_ps(_mm512_set1_ps(1.0), _mm512_and_ps(v, sign));
            let r = _mm512_mask_add_ps(t, up, t, one);
            let q = _mm512_max_epi32(
                _mm512_min_epi32(_mm512_cvttps_epi32(r), _mm512_set1_epi32(127)),
                _mm512_set1_epi32(-128),
            );
            _mm_storeu_si128(
                y.qs.as_mut_ptr().add(16 * i) as *mut _,
                _mm512_cvtepi32_epi8(q),
            );
            y.bsums[i] = _mm512_reduce_add_epi32(q) as i16;
        }
        y.d = 1.0 / iscale;
    }

    const _: () = assert!(QK == 256);
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    //! Never called: [`super::cpu_supported`] is false off x86-64.
    use super::{Q8K, QK};
    pub(super) unsafe fn quantize_q8k(_: &[f32; QK], _: &mut Q8K) {
        unreachable!("AVX-512 kernels called off x86-64")
    }
    pub(super) unsafe fn q4k<const R: usize, const C: usize>(
        _: *const u8,
        _: usize,
        _: *const Q8K,
        _: *const f32,
        _: (usize, usize),
        _: &mut [[f32; C]; R],
    ) {
        unreachable!("AVX-512 kernels called off x86-64")
    }
    pub(super) unsafe fn q6k<const R: usize, const C: usize>(
        _: *const u8,
        _: usize,
        _: *const Q8K,
        _: *const f32,
        _: (usize, usize),
        _: &mut [[f32; C]; R],
    ) {
        unreachable!("AVX-512 kernels called off x86-64")
    }
    pub(super) unsafe fn q4k_gemv<const R: usize>(
        _: *const u8,
        _: usize,
        _: &[Q8K],
        _: &[f32],
    ) -> [f32; R] {
        unreachable!("AVX-512 kernels called off x86-64")
    }
    pub(super) unsafe fn q6k_gemv<const R: usize>(
        _: *const u8,
        _: usize,
        _: &[Q8K],
        _: &[[i16; 32]],
    ) -> [f32; R] {
        unreachable!("AVX-512 kernels called off x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{self, BlockQ4K, BlockQ6K, GgmlType};
    use rand::{Rng, SeedableRng};

    /// Random weights quantized with candle, as raw GGUF bytes.
    fn weights<T: GgmlType>(n: usize, k: usize, rng: &mut rand::rngs::StdRng) -> Vec<T> {
        let vals: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut blocks = vec![T::zeros(); n * k / QK];
        T::from_float(&vals, &mut blocks);
        blocks
    }

    fn bytes<T>(blocks: &[T]) -> &[u8] {
        // SAFETY: candle's k-quant blocks are plain old data.
        unsafe {
            std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks))
        }
    }

    /// Compares the kernel with candle's `vec_dot` path on one shape.
    fn check<T: GgmlType>(format: Format, (m, k, n): (usize, usize, usize), seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let w = weights::<T>(n, k, &mut rng);
        // Activations with a spread of magnitudes, like hidden states.
        let x: Vec<f32> = (0..m * k)
            .map(|i| rng.gen_range(-1.0..1.0) * if i % 7 == 0 { 8.0 } else { 1.0 })
            .collect();
        let mut want = vec![0f32; m * n];
        k_quants::matmul::<T>((m, k, n), &x, &w, &mut want).unwrap();
        let mut got = vec![0f32; m * n];
        matmul(format, (m, k, n), &x, bytes(&w), &mut got).unwrap();
        // Sums of many terms of both signs: compare against the size of the terms, not of
        // the (possibly cancelling) result.
        let scale = want.iter().fold(0f32, |s, v| s.max(v.abs())).max(1.0);
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - e).abs() <= 1e-5 * scale,
                "{format:?} ({m},{k},{n}) element {i} (row {}, col {}): got {g}, candle {e}",
                i / n,
                i % n
            );
        }
    }

    const SHAPES: [(usize, usize, usize); 10] = [
        (2, 256, 4),
        (3, 512, 5),
        (4, 256, 16),
        (5, 768, 17),
        (9, 1024, 35),
        (17, 2048, 33),
        (1, 512, 7),
        (1, 2048, 37),
        (1, 256, 1),
        (1, 768, 18),
    ];

    #[test]
    fn q4k_matches_candle() {
        if !cpu_supported() {
            eprintln!("skipped: no AVX-512 VNNI");
            return;
        }
        for (i, &shape) in SHAPES.iter().enumerate() {
            check::<BlockQ4K>(Format::Q4K, shape, 40 + i as u64);
        }
    }

    #[test]
    fn q6k_matches_candle() {
        if !cpu_supported() {
            eprintln!("skipped: no AVX-512 VNNI");
            return;
        }
        for (i, &shape) in SHAPES.iter().enumerate() {
            check::<BlockQ6K>(Format::Q6K, shape, 60 + i as u64);
        }
    }

    /// Decode-shaped products, ours (by rows per micro-kernel) against candle's, on weights
    /// larger than the L3 cache: `cargo test --release --lib kernels::tests::gemv_speed --
    /// --ignored --nocapture`. Best of several interleaved runs.
    #[test]
    #[ignore]
    fn gemv_speed() {
        fn time<T: GgmlType>(format: Format, k: usize, n: usize) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(1);
            let w = weights::<T>(n, k, &mut rng);
            let x: Vec<f32> = (0..k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut out = vec![0f32; n];
            let mut best = [f64::MAX; 4];
            for _ in 0..8 {
                for (v, b) in best.iter_mut().enumerate() {
                    let t = std::time::Instant::now();
                    match v {
                        0 => k_quants::matmul::<T>((1, k, n), &x, &w, &mut out).unwrap(),
                        1 => gemv_rows_of(format, (k, n), &x, bytes(&w), &mut out, 1),
                        2 => gemv_rows_of(format, (k, n), &x, bytes(&w), &mut out, 2),
                        _ => gemv_rows_of(format, (k, n), &x, bytes(&w), &mut out, 4),
                    }
                    *b = b.min(t.elapsed().as_secs_f64());
                }
            }
            let gb = std::mem::size_of_val(&w[..]) as f64 / 1e9;
            let f = |t: f64| format!("{:.2} ms {:.1} GB/s", t * 1e3, gb / t);
            println!(
                "{format:?} k={k} n={n}: candle {} | rows 1 {} | 2 {} | 4 {}",
                f(best[0]),
                f(best[1]),
                f(best[2]),
                f(best[3])
            );
        }
        time::<BlockQ4K>(Format::Q4K, 2048, 32768);
        time::<BlockQ6K>(Format::Q6K, 11008, 4096);
        time::<BlockQ6K>(Format::Q6K, 2048, 32768);
    }

    #[test]
    fn quantizer_matches_candle_bit_for_bit() {
        if !cpu_supported() {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut x: Vec<f32> = (0..QK * 64)
            .map(|i| rng.gen_range(-3.0..3.0) * if i % 11 == 0 { 40.0 } else { 1.0 })
            .collect();
        // Halves after scaling, ties for the largest magnitude (the first wins), an all-zero
        // block and a negative maximum.
        for (j, v) in x[..QK].iter_mut().enumerate() {
            *v = (j as f32 - 128.0) * 0.5;
        }
        for v in &mut x[QK..2 * QK] {
            *v *= 0.01;
        }
        x[QK + 3] = 9.0;
        x[QK + 70] = -9.0;
        x[2 * QK..3 * QK].fill(0.0);
        x[3 * QK + 200] = -1000.0;
        let mut want = vec![BlockQ8K::zeros(); 64];
        BlockQ8K::from_float(&x, &mut want);
        let got = quantize(&x, 1, QK * 64);
        for (b, (g, w)) in got.iter().zip(&want).enumerate() {
            // SAFETY: same layout (asserted at the top of the module).
            let w: &Q8K = unsafe { &*(w as *const BlockQ8K as *const Q8K) };
            assert_eq!(g.d.to_bits(), w.d.to_bits(), "block {b} scale");
            assert_eq!(g.qs, w.qs, "block {b} values");
            assert_eq!(g.bsums, w.bsums, "block {b} sums");
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        if !cpu_supported() {
            return;
        }
        let mut dst = vec![0f32; 4];
        assert_eq!(
            matmul(Format::Q4K, (2, 100, 2), &[0.0; 200], &[], &mut dst),
            Err(KernelError::Features(100))
        );
        let err = matmul(Format::Q6K, (2, 256, 2), &[0.0; 512], &[0u8; 10], &mut dst);
        assert!(matches!(
            err,
            Err(KernelError::Size {
                what: "weight bytes",
                ..
            })
        ));
    }
}
