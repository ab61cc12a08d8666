//! Q4_K and Q6_K weights with eight rows interleaved, and the AVX-512 products on them.
//!
//! In the GGUF layout every row's 32-value (Q4_K) or 16-value (Q6_K) sub-block has its own
//! scale, so a kernel on that layout applies a scale after every few dozen products of every
//! (weight row, activation row) pair. On AMD Zen 4, where a 512-bit integer multiply issues
//! once per cycle, the scales, packs and float conversions then take about as long as the
//! products themselves.
//!
//! Here a block holds super-block `b` of eight consecutive rows, stored in 8-byte runs, one
//! per row: one 64-byte vector holds 8 values of all eight rows. An 8-byte run of activations
//! broadcast to every row meets it in one `vpdpbusd` (Q4_K) or `vpmaddubsw` (Q6_K); the sums
//! of a whole sub-block stay in 16 bits and a single `vpdpwssd` applies the eight rows'
//! scales. Per 256 products that is 5 multiply-pipe instructions for Q4_K (about 9 on the GGUF
//! layout). Block scales, mins and float work happen once per super-block and activation row.
//!
//! A block has the size of the eight GGUF blocks it replaces, so the layout costs no memory;
//! it is built once ([`repack_q4k`], [`repack_q6k`]) and kept in a file beside the model
//! ([`super::prepared`]). Rows are grouped by eight, so a tensor's row count must be a
//! multiple of [`ROWS`].

use super::kernels::{self, Q4K, Q6K, Q8K, QK};
use std::mem::MaybeUninit;

/// Rows per interleaved block.
pub const ROWS: usize = 8;

/// Eight Q4_K super-blocks (one per row), interleaved.
#[repr(C)]
pub(super) struct Q4Kx8 {
    /// Block scales of the eight rows (f16).
    d: [u16; ROWS],
    /// Block min scales of the eight rows (f16).
    dmin: [u16; ROWS],
    /// The 64 sub-block scales then the 64 mins (index `s·8 + r`, 6 bits each): their low
    /// nibbles in bytes 0..64 (value `i` low, value `64 + i` high), their top two bits in bytes
    /// 64..96 (byte `i` holds values `i`, `32 + i`, `64 + i`, `96 + i`, two bits each).
    scales: [u8; 96],
    /// Sub-block `s` in bytes `128·s..128·(s + 1)`: byte `64·h + 8·r + i` holds value
    /// `32·s + 16·h + i` of row `r` in its low nibble and value `32·s + 16·h + 8 + i` in its
    /// high nibble.
    qs: [u8; 1024],
}

const _: () = assert!(std::mem::size_of::<Q4Kx8>() == ROWS * std::mem::size_of::<Q4K>());

/// Bytes of one interleaved block (the same as eight GGUF Q4_K blocks).
pub const Q4KX8_BYTES: usize = std::mem::size_of::<Q4Kx8>();

/// A Q4_K block's eight 6-bit scales and eight mins.
fn q4k_scales_mins(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = q[j] & 63;
            mn[j] = q[j + 4] & 63;
        } else {
            sc[j] = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
            mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

/// A Q4_K row block's 256 codes (0..16), in value order.
fn q4k_codes(blk: &Q4K) -> [u8; QK] {
    let mut out = [0u8; QK];
    for j in 0..4 {
        for l in 0..32 {
            let byte = blk.qs[32 * j + l];
            out[64 * j + l] = byte & 0x0F;
            out[64 * j + 32 + l] = byte >> 4;
        }
    }
    out
}

/// Why a tensor cannot be interleaved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RepackError {
    /// The row count is not a multiple of [`ROWS`].
    #[error("{0} rows is not a multiple of {ROWS}")]
    Rows(usize),
    /// The column count is not a multiple of the super-block size.
    #[error("{0} columns is not a multiple of {QK}")]
    Cols(usize),
    /// The byte counts do not match the shape.
    #[error("{what} holds {found} bytes, {expected} expected")]
    Size {
        /// Which buffer.
        what: &'static str,
        /// Its length.
        found: usize,
        /// The length the shape needs.
        expected: usize,
    },
}

/// Rewrites `rows × cols` Q4_K weights in the GGUF layout (`src`) into the interleaved layout
/// (`dst`, the same size). Exact: every code, scale and min is kept as it is.
pub fn repack_q4k(src: &[u8], rows: usize, cols: usize, dst: &mut [u8]) -> Result<(), RepackError> {
    let nb = check_repack(src.len(), dst.len(), rows, cols, std::mem::size_of::<Q4K>())?;
    let row_block = |r: usize, b: usize| -> Q4K {
        let at = (r * nb + b) * std::mem::size_of::<Q4K>();
        let bytes = &src[at..at + std::mem::size_of::<Q4K>()];
        let mut scales = [0u8; 12];
        scales.copy_from_slice(&bytes[4..16]);
        let mut qs = [0u8; QK / 2];
        qs.copy_from_slice(&bytes[16..]);
        Q4K {
            d: u16::from_le_bytes([bytes[0], bytes[1]]),
            dmin: u16::from_le_bytes([bytes[2], bytes[3]]),
            scales,
            qs,
        }
    };
    for g in 0..rows / ROWS {
        for b in 0..nb {
            let mut out = Q4Kx8 {
                d: [0; ROWS],
                dmin: [0; ROWS],
                scales: [0; 96],
                qs: [0; 1024],
            };
            let mut six = [0u8; 128];
            for r in 0..ROWS {
                let blk = row_block(g * ROWS + r, b);
                out.d[r] = blk.d;
                out.dmin[r] = blk.dmin;
                let (sc, mn) = q4k_scales_mins(&blk.scales);
                for s in 0..8 {
                    six[8 * s + r] = sc[s];
                    six[64 + 8 * s + r] = mn[s];
                }
                let codes = q4k_codes(&blk);
                for s in 0..8 {
                    for h in 0..2 {
                        for i in 0..8 {
                            let v = 32 * s + 16 * h + i;
                            out.qs[128 * s + 64 * h + 8 * r + i] = codes[v] | (codes[v + 8] << 4);
                        }
                    }
                }
            }
            for i in 0..64 {
                out.scales[i] = (six[i] & 0x0F) | ((six[64 + i] & 0x0F) << 4);
            }
            for i in 0..32 {
                out.scales[64 + i] = (six[i] >> 4)
                    | ((six[32 + i] >> 4) << 2)
                    | ((six[64 + i] >> 4) << 4)
                    | ((six[96 + i] >> 4) << 6);
            }
            let at = (g * nb + b) * Q4KX8_BYTES;
            // SAFETY: `Q4Kx8` is `repr(C)` plain old data without padding (its size is asserted
            // to be the sum of its fields' sizes).
            let bytes = unsafe {
                std::slice::from_raw_parts(&out as *const Q4Kx8 as *const u8, Q4KX8_BYTES)
            };
            dst[at..at + Q4KX8_BYTES].copy_from_slice(bytes);
        }
    }
    Ok(())
}

/// Eight Q6_K super-blocks (one per row), interleaved.
#[repr(C)]
pub(super) struct Q6Kx8 {
    /// Block scales of the eight rows (f16).
    d: [u16; ROWS],
    /// The 16-value groups' scales, index `g·8 + r`.
    scales: [i8; 128],
    /// Low four bits of the codes: values `32p..32p + 32` in bytes `128·p..128·(p + 1)`, byte
    /// `64·h + 8·r + i` holding value `32p + 16h + i` of row `r` (low nibble) and
    /// `32p + 16h + 8 + i` (high nibble).
    ql: [u8; 1024],
    /// Top two bits: byte `64·p + 8·r + i` holds those of values `32p + 8j + i`, j = 0..4, in
    /// bits `2j..2j + 2`.
    qh: [u8; 512],
}

const _: () = assert!(std::mem::size_of::<Q6Kx8>() == ROWS * std::mem::size_of::<Q6K>());

/// Bytes of one interleaved Q6_K block (the same as eight GGUF Q6_K blocks).
pub const Q6KX8_BYTES: usize = std::mem::size_of::<Q6Kx8>();

/// A Q6_K row block's 256 codes (0..64, the stored value plus 32), in value order.
fn q6k_codes(ql: &[u8], qh: &[u8]) -> [u8; QK] {
    let mut out = [0u8; QK];
    for half in 0..2 {
        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
        let o = &mut out[128 * half..];
        for l in 0..32 {
            o[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
            o[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            o[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            o[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    out
}

/// Checks a repack's shape and buffers.
fn check_repack(
    src: usize,
    dst: usize,
    rows: usize,
    cols: usize,
    block: usize,
) -> Result<usize, RepackError> {
    if !rows.is_multiple_of(ROWS) {
        return Err(RepackError::Rows(rows));
    }
    if !cols.is_multiple_of(QK) {
        return Err(RepackError::Cols(cols));
    }
    let nb = cols / QK;
    let expected = rows * nb * block;
    for (what, found) in [("source", src), ("destination", dst)] {
        if found != expected {
            return Err(RepackError::Size {
                what,
                found,
                expected,
            });
        }
    }
    Ok(nb)
}

/// Rewrites `rows × cols` Q6_K weights in the GGUF layout (`src`) into the interleaved layout
/// (`dst`, the same size). Exact: every code and scale is kept as it is.
pub fn repack_q6k(src: &[u8], rows: usize, cols: usize, dst: &mut [u8]) -> Result<(), RepackError> {
    const B: usize = std::mem::size_of::<Q6K>();
    let nb = check_repack(src.len(), dst.len(), rows, cols, B)?;
    for g in 0..rows / ROWS {
        for b in 0..nb {
            let mut out = Q6Kx8 {
                d: [0; ROWS],
                scales: [0; 128],
                ql: [0; 1024],
                qh: [0; 512],
            };
            for r in 0..ROWS {
                let at = ((g * ROWS + r) * nb + b) * B;
                let blk = &src[at..at + B];
                let (ql, qh, sc, d) = (&blk[..128], &blk[128..192], &blk[192..208], &blk[208..]);
                out.d[r] = u16::from_le_bytes([d[0], d[1]]);
                for (gi, &v) in sc.iter().enumerate() {
                    out.scales[8 * gi + r] = v as i8;
                }
                let codes = q6k_codes(ql, qh);
                for p in 0..8 {
                    for h in 0..2 {
                        for i in 0..8 {
                            let v = 32 * p + 16 * h + i;
                            out.ql[128 * p + 64 * h + 8 * r + i] =
                                (codes[v] & 0x0F) | ((codes[v + 8] & 0x0F) << 4);
                        }
                    }
                    for i in 0..8 {
                        let mut byte = 0;
                        for j in 0..4 {
                            byte |= (codes[32 * p + 8 * j + i] >> 4) << (2 * j);
                        }
                        out.qh[64 * p + 8 * r + i] = byte;
                    }
                }
            }
            let at = (g * nb + b) * Q6KX8_BYTES;
            // SAFETY: `Q6Kx8` is `repr(C)` plain old data without padding (its size is asserted
            // to be the sum of its fields' sizes).
            let bytes = unsafe {
                std::slice::from_raw_parts(&out as *const Q6Kx8 as *const u8, Q6KX8_BYTES)
            };
            dst[at..at + Q6KX8_BYTES].copy_from_slice(bytes);
        }
    }
    Ok(())
}

/// A repack function: (GGUF bytes, rows, cols, destination).
pub type Repack = fn(&[u8], usize, usize, &mut [u8]) -> Result<(), RepackError>;

/// Whether the CPU has what these kernels need: the AVX-512 of [`kernels::cpu_supported`] and
/// VBMI's byte permutes.
pub fn cpu_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        kernels::cpu_supported() && is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Activation rows per micro-kernel call.
const TILE: usize = 8;
/// Super-blocks per pass over `k`: a tile of activation rows over this span stays in L1.
const KBLOCKS: usize = 8;
/// Interleaved groups (of [`ROWS`] rows) per unit of prefill work.
const GROUPS: usize = 4;
/// Interleaved groups per unit of decode work.
const GEMV_GROUPS: usize = 2;

/// The interleaved formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Eight Q4_K rows ([`repack_q4k`]).
    Q4Kx8,
    /// Eight Q6_K rows ([`repack_q6k`]).
    Q6Kx8,
}

impl Format {
    /// Bytes of one block of eight rows.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4Kx8 => Q4KX8_BYTES,
            Format::Q6Kx8 => Q6KX8_BYTES,
        }
    }
}

/// `dst = lhs · Wᵀ` for `lhs` (m, k) row-major F32 and `w` holding `n` rows of `k` values in
/// an interleaved layout; `dst` is (m, n) row-major. Work is split over candle's thread pool.
pub fn matmul(
    format: Format,
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    w: &[u8],
    dst: &mut [f32],
) -> Result<(), kernels::KernelError> {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the product only writes floats.
    let dst = unsafe {
        std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut MaybeUninit<f32>, dst.len())
    };
    matmul_many_uninit((m, k), lhs, &mut [Product { format, n, w, dst }])
}

/// One matrix of [`matmul_many_uninit`]: `n` rows in `format` (`w`) and its output (m, n).
pub struct Product<'a> {
    /// Layout of `w`.
    pub format: Format,
    /// Rows of the matrix (output features).
    pub n: usize,
    /// The interleaved blocks.
    pub w: &'a [u8],
    /// The (m, n) row-major output, written in full on `Ok`.
    pub dst: &'a mut [MaybeUninit<f32>],
}

/// Several products of the same activations `lhs` (m, k), such as a layer's query, key and
/// value projections: the activations are quantized once, and all the products' work goes to
/// the thread pool in one dispatch, so the threads wait for each other once instead of once per
/// matrix. Nothing is written unless every shape checks out.
pub fn matmul_many_uninit(
    (m, k): (usize, usize),
    lhs: &[f32],
    products: &mut [Product],
) -> Result<(), kernels::KernelError> {
    if !cpu_supported() {
        return Err(kernels::KernelError::Unsupported);
    }
    let mut nb = k / QK;
    for p in products.iter() {
        let n = p.n;
        if !n.is_multiple_of(ROWS) {
            return Err(kernels::KernelError::Size {
                what: "weight rows (a multiple of 8)",
                found: n,
                expected: n.next_multiple_of(ROWS),
                m,
                k,
                n,
            });
        }
        nb = kernels::check_shape((m, k, n), (lhs.len(), p.dst.len()), p.w.len(), |nb| {
            n / ROWS * nb * p.format.block_bytes()
        })?;
    }
    if k == 0 {
        // Empty sums: no pass over `k` would write the outputs.
        for p in products.iter_mut() {
            p.dst.fill(MaybeUninit::new(0.0));
        }
        return Ok(());
    }
    if m == 0 || products.iter().all(|p| p.n == 0) {
        return Ok(());
    }
    let act = kernels::quantize(lhs, m, k);
    // Q4_K: the activation's sums over the 32-value sub-blocks, which the mins multiply, laid
    // out per 128-bit lane as the kernel's min words need them: sub-blocks (0, 1, 0, 1, 2, 3,
    // 2, 3), then the same for 4..8. Q6_K reads the Q8_K block's own sums of 16.
    let q4_sums: Vec<[i16; 16]> = if products.iter().any(|p| p.format == Format::Q4Kx8) {
        act.iter()
            .map(|a| {
                let bs = |s: usize| a.bsums[2 * s] + a.bsums[2 * s + 1];
                std::array::from_fn(|i| bs(4 * (i / 8) + 2 * (i % 8 / 4) + i % 2))
            })
            .collect()
    } else {
        Vec::new()
    };
    let q6_sums: Vec<[i16; 16]> = if products.iter().any(|p| p.format == Format::Q6Kx8) {
        act.iter().map(|a| a.bsums).collect()
    } else {
        Vec::new()
    };
    let per_unit = if m == 1 { GEMV_GROUPS } else { GROUPS };
    // Each product's units, one after the other: (format, groups, n, weights, output).
    let parts: Vec<(Format, usize, usize, usize, usize)> = products
        .iter_mut()
        .map(|p| {
            (
                p.format,
                p.n / ROWS,
                p.n,
                p.w.as_ptr() as usize,
                p.dst.as_mut_ptr() as usize,
            )
        })
        .collect();
    let starts: Vec<usize> = parts
        .iter()
        .scan(0, |at, &(_, groups, ..)| {
            let start = *at;
            *at += groups.div_ceil(per_unit);
            Some(start)
        })
        .collect();
    let total = parts
        .iter()
        .map(|&(_, groups, ..)| groups.div_ceil(per_unit))
        .sum();
    let (act, q4_sums, q6_sums) = (&act[..], &q4_sums[..], &q6_sums[..]);
    let (parts, starts) = (&parts[..], &starts[..]);
    candle_core::utils::barrier_pool().execute_chunked(total, |range| {
        for unit in range {
            let i = starts.partition_point(|&s| s <= unit) - 1;
            let (format, groups, n, w, dst) = parts[i];
            let unit = unit - starts[i];
            let gs = unit * per_unit..groups.min((unit + 1) * per_unit);
            let sums = match format {
                Format::Q4Kx8 => q4_sums,
                Format::Q6Kx8 => q6_sums,
            };
            // SAFETY: the sizes were checked above; each unit writes only its own columns of
            // its product's `dst`, so concurrent workers never touch the same element.
            unsafe {
                run_unit(
                    format,
                    gs,
                    (m, nb, n),
                    (act, sums),
                    (w as *const u8, dst as *mut f32),
                )
            }
        }
    });
    Ok(())
}

/// Computes `dst[.., 8·g..8·g + 8]` for the groups `gs` and all activation rows. The first
/// pass over `k` stores and later passes add, so `dst` may start uninitialized.
///
/// # Safety
/// `w` must hold `n / 8 · nb` blocks of `format`, `dst` `m · n` floats, and `gs` must lie in
/// `0..n / 8`; the caller must have checked the CPU features.
unsafe fn run_unit(
    format: Format,
    gs: std::ops::Range<usize>,
    (m, nb, n): (usize, usize, usize),
    (act, sums): (&[Q8K], &[[i16; 16]]),
    (w, dst): (*const u8, *mut f32),
) {
    let pass = if m == 1 { nb } else { KBLOCKS };
    for kb in (0..nb).step_by(pass) {
        let count = pass.min(nb - kb);
        for c0 in (0..m).step_by(TILE) {
            let tile = TILE.min(m - c0);
            let a = act.as_ptr().add(c0 * nb + kb);
            let s = sums.as_ptr().add(c0 * nb + kb);
            for g in gs.clone() {
                let wg = w.add((g * nb + kb) * format.block_bytes());
                let out = dst.add(c0 * n + g * ROWS);
                macro_rules! tile {
                    ($c:expr) => {
                        match format {
                            Format::Q4Kx8 => avx512::q4kx8::<{ $c }>(
                                wg as *const Q4Kx8,
                                (a, s),
                                (nb, count),
                                (out, n, kb > 0),
                            ),
                            Format::Q6Kx8 => avx512::q6kx8::<{ $c }>(
                                wg as *const Q6Kx8,
                                (a, s),
                                (nb, count),
                                (out, n, kb > 0),
                            ),
                        }
                    };
                }
                match tile {
                    TILE => tile!(TILE),
                    1 => tile!(1),
                    2 => tile!(2),
                    3 => tile!(3),
                    4 => tile!(4),
                    5 => tile!(5),
                    6 => tile!(6),
                    _ => tile!(7),
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
mod avx512 {
    //! The micro-kernels: one interleaved group of 8 weight rows against `C` activation rows.

    use super::{Q4Kx8, Q6Kx8, Q8K, ROWS};
    use std::arch::x86_64::*;

    /// Eight f16 block scales as 16 floats, lane j taking scale `row(j)`.
    #[inline(always)]
    unsafe fn scales_f32(p: &[u16; ROWS], rows: __m512i) -> __m512 {
        _mm512_permutexvar_ps(
            rows,
            _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_loadu_si128(p.as_ptr() as *const _))),
        )
    }

    /// Adds lanes holding the same row and stores the 8 row results into `out[0..8]`, or adds
    /// them to what is there when `add` (every pass over `k` after the first).
    #[inline(always)]
    unsafe fn store_rows(acc: __m512, lo: __m512i, hi: __m512i, out: *mut f32, add: bool) {
        let v = _mm512_castps512_ps256(_mm512_add_ps(
            _mm512_permutexvar_ps(lo, acc),
            _mm512_permutexvar_ps(hi, acc),
        ));
        let v = if add {
            _mm256_add_ps(_mm256_loadu_ps(out), v)
        } else {
            v
        };
        _mm256_storeu_ps(out, v);
    }

    /// Sign-extends the even bytes of `v` (odd bytes ignored) to 16-bit words.
    #[inline(always)]
    unsafe fn words_of_even_bytes(v: __m512i) -> __m512i {
        _mm512_srai_epi16(_mm512_slli_epi16(v, 8), 8)
    }

    /// Q4_K: `C` activation rows × the group's 8 rows, over `count` super-blocks, stored into
    /// `out[c·n + r]` (added to it when `add`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
    pub(super) unsafe fn q4kx8<const C: usize>(
        w: *const Q4Kx8,
        (a, bs): (*const Q8K, *const [i16; 16]),
        (nb, count): (usize, usize),
        (out, n, add): (*mut f32, usize, bool),
    ) {
        let low = _mm512_set1_epi8(0x0F);
        let three = _mm512_set1_epi8(0x03);
        // Per 16-bit lane: the top-bit shifts for scales (0, 2) and mins (4, 6) by 256-bit half.
        let shift_sc = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
        let shift_mn = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);
        let even = 0x5555_5555_5555_5555u64;
        // `vpdpbusd` leaves row r's sums in dwords 2r, 2r + 1; packing the dwords of sub-blocks
        // s and s + 1 to words puts, in 128-bit lane l, rows 2l, 2l + 1 of s then of s + 1. So
        // after `vpmaddwd` dword j of a lane (of four) holds row 2l + j % 2 of sub-block
        // s + j / 2. Byte 2w of the scale words is then scale index 8·(s + i / 4) + 2l + i % 4 / 2
        // for word i = w % 8 of lane l = w / 8.
        let mut idx = [0u8; 64];
        let (mut ia, mut ib) = ([0u8; 64], [0u8; 64]);
        for w in 0..32 {
            let (l, i) = (w / 8, w % 8);
            let r = 2 * l + i % 4 / 2;
            idx[2 * w] = (8 * (i / 4) + r) as u8;
            // The mins in the same dword order: sub-blocks (0, 1) in the first dword of a row
            // and (2, 3) in the second, 4..8 likewise in the second vector.
            let s = 2 * (i / 4) + i % 2;
            ia[2 * w] = (8 * s + r) as u8;
            ib[2 * w] = (8 * (4 + s) + r) as u8;
        }
        let sidx0 = _mm512_loadu_si512(idx.as_ptr() as *const _);
        let (midx_a, midx_b) = (
            _mm512_loadu_si512(ia.as_ptr() as *const _),
            _mm512_loadu_si512(ib.as_ptr() as *const _),
        );
        // Dword j of a 128-bit lane l belongs to row 2l + j % 2.
        let dup = _mm512_set_epi32(7, 6, 7, 6, 5, 4, 5, 4, 3, 2, 3, 2, 1, 0, 1, 0);

        let mut facc = [_mm512_setzero_ps(); C];
        for b in 0..count {
            let blk = &*w.add(b);
            let l = _mm512_loadu_si512(blk.scales.as_ptr() as *const _);
            let h =
                _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.scales.as_ptr().add(64) as *const _));
            let top =
                |shift| _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(h, shift), three), 4);
            let sc = _mm512_or_si512(_mm512_and_si512(l, low), top(shift_sc));
            let mn = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16(l, 4), low),
                top(shift_mn),
            );

            let mut iacc = [_mm512_setzero_si512(); C];
            for s in (0..8).step_by(2) {
                let mut wq = [_mm512_setzero_si512(); 8];
                for h in 0..4 {
                    let p = _mm512_loadu_si512(blk.qs.as_ptr().add(128 * s + 64 * h) as *const _);
                    wq[2 * h] = _mm512_and_si512(p, low);
                    wq[2 * h + 1] = _mm512_and_si512(_mm512_srli_epi16(p, 4), low);
                }
                let sidx = _mm512_add_epi8(sidx0, _mm512_set1_epi8(8 * s as i8));
                let sv = _mm512_maskz_permutexvar_epi8(even, sidx, sc);
                // Two activation rows at a time: four independent `vpdpbusd` chains side by
                // side keep the multiplier busy while each chain waits on its latency.
                for c0 in (0..C).step_by(2) {
                    let pair = if c0 + 1 < C { 2 } else { 1 };
                    let q: [*const i64; 2] = std::array::from_fn(|p| {
                        (*a.add((c0 + p.min(pair - 1)) * nb + b))
                            .qs
                            .as_ptr()
                            .add(32 * s) as *const i64
                    });
                    let z = _mm512_setzero_si512();
                    // 16 products per dword: at most 16·15·128, inside i16 for the pack.
                    let mut d = [[z; 2]; 2];
                    for i in 0..4 {
                        for p in 0..pair {
                            for j in 0..2 {
                                let y = _mm512_set1_epi64(q[p].add(4 * j + i).read_unaligned());
                                d[p][j] = _mm512_dpbusd_epi32(d[p][j], wq[4 * j + i], y);
                            }
                        }
                    }
                    for p in 0..pair {
                        let c = c0 + p;
                        iacc[c] =
                            _mm512_dpwssd_epi32(iacc[c], _mm512_packs_epi32(d[p][0], d[p][1]), sv);
                    }
                }
            }

            let (dv, mv) = (scales_f32(&blk.d, dup), scales_f32(&blk.dmin, dup));
            let ma = _mm512_maskz_permutexvar_epi8(even, midx_a, mn);
            let mb = _mm512_maskz_permutexvar_epi8(even, midx_b, mn);
            for c in 0..C {
                let ab = &*a.add(c * nb + b);
                let s = bs.add(c * nb + b) as *const __m128i;
                let msum = _mm512_dpwssd_epi32(
                    _mm512_madd_epi16(ma, _mm512_broadcast_i32x4(_mm_loadu_si128(s))),
                    mb,
                    _mm512_broadcast_i32x4(_mm_loadu_si128(s.add(1))),
                );
                let t = _mm512_mul_ps(_mm512_cvtepi32_ps(iacc[c]), dv);
                let t = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), mv, t);
                facc[c] = _mm512_fmadd_ps(t, _mm512_set1_ps(ab.d), facc[c]);
            }
        }
        // Row r = 2l + e's result is the sum of lanes 4l + e and 4l + 2 + e.
        let lo = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 13, 12, 9, 8, 5, 4, 1, 0);
        let hi = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 15, 14, 11, 10, 7, 6, 3, 2);
        for c in 0..C {
            store_rows(facc[c], lo, hi, out.add(c * n), add);
        }
    }

    /// Q6_K: `d·Σ_g sc_g·Σ (q − 32)·y` for `C` activation rows × the group's 8 rows, over
    /// `count` super-blocks, stored into `out[c·n + r]` (added to it when `add`). The −32 stays
    /// in the integer sum as `−32·Σ_g sc_g·bsum_g`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
    pub(super) unsafe fn q6kx8<const C: usize>(
        w: *const Q6Kx8,
        (a, bs): (*const Q8K, *const [i16; 16]),
        (nb, count): (usize, usize),
        (out, n, add): (*mut f32, usize, bool),
    ) {
        let low = _mm512_set1_epi8(0x0F);
        let three = _mm512_set1_epi8(0x03);
        // `vpmaddubsw` leaves row r's pair sums in words 4r..4r + 4 and `vpmaddwd` its sums
        // in dwords 2r, 2r + 1: word w takes the scale of row w / 4.
        let mut idx = [0u8; 64];
        let mut oidx = [[0u8; 64]; 4];
        for w in 0..32 {
            idx[2 * w] = (w / 4) as u8;
            // The offset term: vector t pairs word w with the activation sum of group
            // 4t + w % 4, against that group's scale of row w / 4.
            for (t, o) in oidx.iter_mut().enumerate() {
                o[2 * w] = (8 * (4 * t + w % 4) + w / 4) as u8;
            }
        }
        let sidx0 = _mm512_loadu_si512(idx.as_ptr() as *const _);
        let oidx: [__m512i; 4] =
            std::array::from_fn(|t| _mm512_loadu_si512(oidx[t].as_ptr() as *const _));
        let dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);

        let mut facc = [_mm512_setzero_ps(); C];
        for b in 0..count {
            let blk = &*w.add(b);
            let sc = _mm512_loadu_si512(blk.scales.as_ptr() as *const _);
            let sc2 = _mm512_loadu_si512(blk.scales.as_ptr().add(64) as *const _);
            let mut iacc = [_mm512_setzero_si512(); C];
            for p in 0..8 {
                // Codes of values 32p..32p + 32 of the eight rows, 8 values per vector.
                let mut wq = [_mm512_setzero_si512(); 4];
                let qh = _mm512_loadu_si512(blk.qh.as_ptr().add(64 * p) as *const _);
                for h in 0..2 {
                    let ql = _mm512_loadu_si512(blk.ql.as_ptr().add(128 * p + 64 * h) as *const _);
                    for e in 0..2 {
                        let j = 2 * h + e;
                        let nib = if e == 0 {
                            _mm512_and_si512(ql, low)
                        } else {
                            _mm512_and_si512(_mm512_srli_epi16(ql, 4), low)
                        };
                        let top = _mm512_and_si512(
                            _mm512_srl_epi16(qh, _mm_cvtsi32_si128(2 * j as i32)),
                            three,
                        );
                        wq[j] = _mm512_or_si512(nib, _mm512_slli_epi16(top, 4));
                    }
                }
                // Groups 2p (values 0..16 of the run) and 2p + 1 (16..32).
                let src = if p < 4 { sc } else { sc2 };
                let sv: [__m512i; 2] = std::array::from_fn(|e| {
                    let g = (2 * p + e) % 8;
                    let i = _mm512_add_epi8(sidx0, _mm512_set1_epi8(8 * g as i8));
                    words_of_even_bytes(_mm512_permutexvar_epi8(i, src))
                });
                for c in 0..C {
                    let q = (*a.add(c * nb + b)).qs.as_ptr().add(32 * p) as *const i64;
                    let y = |i: usize| _mm512_set1_epi64(q.add(i).read_unaligned());
                    // Two pair sums per word: at most 4·63·128, inside i16.
                    let mut u = [_mm512_setzero_si512(); 2];
                    for e in 0..2 {
                        u[e] = _mm512_add_epi16(
                            _mm512_maddubs_epi16(wq[2 * e], y(2 * e)),
                            _mm512_maddubs_epi16(wq[2 * e + 1], y(2 * e + 1)),
                        );
                    }
                    // One add on the accumulator per step rather than two chained
                    // `vpdpwssd`: the chain's latency, not the multiplier, bounded this loop.
                    let t = _mm512_dpwssd_epi32(_mm512_madd_epi16(u[0], sv[0]), u[1], sv[1]);
                    iacc[c] = _mm512_add_epi32(iacc[c], t);
                }
            }

            let dv = scales_f32(&blk.d, dup);
            let off: [__m512i; 4] = std::array::from_fn(|t| {
                let src = if t < 2 { sc } else { sc2 };
                let i = _mm512_sub_epi8(oidx[t], _mm512_set1_epi8(if t < 2 { 0 } else { 64 }));
                words_of_even_bytes(_mm512_permutexvar_epi8(i, src))
            });
            for c in 0..C {
                let ab = &*a.add(c * nb + b);
                let s = bs.add(c * nb + b) as *const i64;
                let mut osum = _mm512_madd_epi16(off[0], _mm512_set1_epi64(s.read_unaligned()));
                for t in 1..4 {
                    osum = _mm512_dpwssd_epi32(
                        osum,
                        off[t],
                        _mm512_set1_epi64(s.add(t).read_unaligned()),
                    );
                }
                let isum = _mm512_sub_epi32(iacc[c], _mm512_slli_epi32(osum, 5));
                facc[c] = _mm512_fmadd_ps(
                    _mm512_mul_ps(_mm512_cvtepi32_ps(isum), dv),
                    _mm512_set1_ps(ab.d),
                    facc[c],
                );
            }
        }
        // Row r's result is the sum of lanes 2r and 2r + 1.
        let lo = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 14, 12, 10, 8, 6, 4, 2, 0);
        let hi = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 15, 13, 11, 9, 7, 5, 3, 1);
        for c in 0..C {
            store_rows(facc[c], lo, hi, out.add(c * n), add);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    //! Never called: [`super::cpu_supported`] is false off x86-64.
    use super::{Q4Kx8, Q6Kx8, Q8K};
    pub(super) unsafe fn q4kx8<const C: usize>(
        _: *const Q4Kx8,
        _: (*const Q8K, *const [i16; 16]),
        _: (usize, usize),
        _: (*mut f32, usize),
    ) {
        unreachable!("AVX-512 kernels called off x86-64")
    }
    pub(super) unsafe fn q6kx8<const C: usize>(
        _: *const Q6Kx8,
        _: (*const Q8K, *const [i16; 16]),
        _: (usize, usize),
        _: (*mut f32, usize),
    ) {
        unreachable!("AVX-512 kernels called off x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{self, BlockQ4K, BlockQ6K, GgmlType};
    use rand::{Rng, SeedableRng};

    /// Random weights quantized with candle's `T`, as GGUF bytes.
    fn weights<T: GgmlType>(n: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Rows of different magnitudes, so block scales and mins differ between rows.
        let vals: Vec<f32> = (0..n * k)
            .map(|i| {
                rng.gen_range(-1.0..1.0) * (1.0 + (i / k % 5) as f32) + 0.1 * (i / k % 3) as f32
            })
            .collect();
        let mut blocks = vec![T::zeros(); n * k / QK];
        T::from_float(&vals, &mut blocks);
        // SAFETY: candle's blocks are plain old data.
        unsafe {
            std::slice::from_raw_parts(
                blocks.as_ptr() as *const u8,
                std::mem::size_of_val(&blocks[..]),
            )
        }
        .to_vec()
    }

    fn q4k_weights(n: usize, k: usize, seed: u64) -> Vec<u8> {
        weights::<BlockQ4K>(n, k, seed)
    }

    fn activations(m: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..m * k)
            .map(|i| rng.gen_range(-1.0..1.0) * if i % 7 == 0 { 8.0 } else { 1.0 })
            .collect()
    }

    fn as_blocks<T>(bytes: &[u8]) -> &[T] {
        assert!((bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
        // SAFETY: aligned (checked) plain old data of whole blocks.
        unsafe {
            std::slice::from_raw_parts(
                bytes.as_ptr() as *const T,
                bytes.len() / std::mem::size_of::<T>(),
            )
        }
    }

    /// The interleaved product against candle's on the GGUF layout, over shapes that cover
    /// activation tiles with tails, several passes over `k` and the one-row decode path.
    fn check<T: GgmlType>(format: Format, repack: Repack) {
        let shapes = [
            (1, 256, 8),
            (1, 2048, 64),
            (2, 512, 16),
            (3, 768, 24),
            (8, 256, 8),
            (9, 2304, 40),
            (17, 2048, 32),
            (33, 4096, 48),
        ];
        for (i, &(m, k, n)) in shapes.iter().enumerate() {
            let w = weights::<T>(n, k, 10 + i as u64);
            let x = activations(m, k, 20 + i as u64);
            let mut packed = vec![0u8; w.len()];
            repack(&w, n, k, &mut packed).unwrap();
            let mut want = vec![0f32; m * n];
            k_quants::matmul::<T>((m, k, n), &x, as_blocks::<T>(&w), &mut want).unwrap();
            let mut got = vec![f32::NAN; m * n];
            matmul(format, (m, k, n), &x, &packed, &mut got).unwrap();
            let scale = want.iter().fold(0f32, |s, v| s.max(v.abs())).max(1.0);
            for (j, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - e).abs() <= 1e-5 * scale,
                    "{format:?} ({m},{k},{n}) element {j} (row {}, col {}): got {g}, candle {e}",
                    j / n,
                    j % n
                );
            }
        }
    }

    #[test]
    fn q4k_matches_candle_on_the_gguf_layout() {
        if !cpu_supported() {
            eprintln!("skipped: no AVX-512 VBMI/VNNI");
            return;
        }
        check::<BlockQ4K>(Format::Q4Kx8, repack_q4k);
    }

    #[test]
    fn q6k_matches_candle_on_the_gguf_layout() {
        if !cpu_supported() {
            eprintln!("skipped: no AVX-512 VBMI/VNNI");
            return;
        }
        check::<BlockQ6K>(Format::Q6Kx8, repack_q6k);
    }

    #[test]
    fn many_products_match_one_at_a_time() {
        if !cpu_supported() {
            eprintln!("skipped: no AVX-512 VBMI/VNNI");
            return;
        }
        // A layer's query, key and value shapes with mixed formats (Q4_K_M stores some value
        // projections in Q6_K), for prefill, decode and an empty matrix.
        let k = 512;
        let mats: Vec<(Format, usize, Vec<u8>)> = [
            (Format::Q4Kx8, 64, 1),
            (Format::Q4Kx8, 16, 2),
            (Format::Q6Kx8, 24, 3),
            (Format::Q4Kx8, 0, 4),
        ]
        .into_iter()
        .map(|(format, n, seed)| {
            let w = match format {
                Format::Q4Kx8 => q4k_weights(n, k, seed),
                Format::Q6Kx8 => weights::<BlockQ6K>(n, k, seed),
            };
            let mut packed = vec![0u8; w.len()];
            match format {
                Format::Q4Kx8 => repack_q4k(&w, n, k, &mut packed),
                Format::Q6Kx8 => repack_q6k(&w, n, k, &mut packed),
            }
            .unwrap();
            (format, n, packed)
        })
        .collect();
        for m in [1, 13] {
            let x = activations(m, k, 7 + m as u64);
            let mut outs: Vec<Vec<MaybeUninit<f32>>> = mats
                .iter()
                .map(|(_, n, _)| vec![MaybeUninit::new(f32::NAN); m * n])
                .collect();
            let mut products: Vec<Product> = mats
                .iter()
                .zip(outs.iter_mut())
                .map(|((format, n, w), dst)| Product {
                    format: *format,
                    n: *n,
                    w,
                    dst,
                })
                .collect();
            matmul_many_uninit((m, k), &x, &mut products).unwrap();
            for ((format, n, w), got) in mats.iter().zip(&outs) {
                let mut want = vec![0f32; m * n];
                matmul(*format, (m, k, *n), &x, w, &mut want).unwrap();
                // SAFETY: every element was written (NaN markers would fail the comparison).
                let got: Vec<f32> = got.iter().map(|v| unsafe { v.assume_init() }).collect();
                assert_eq!(got, want, "{format:?} m {m} n {n}");
            }
        }
        // A bad shape anywhere rejects the whole call.
        let mut short = vec![MaybeUninit::new(0f32); 3];
        let (format, n, w) = &mats[0];
        let err = matmul_many_uninit(
            (1, k),
            &activations(1, k, 1),
            &mut [Product {
                format: *format,
                n: *n,
                w,
                dst: &mut short,
            }],
        );
        assert!(err.is_err());
    }

    #[test]
    fn repack_is_a_permutation_of_the_bytes_content() {
        // Every code, scale and min comes back out of the interleaved block.
        let (n, k) = (16, 512);
        let w = q4k_weights(n, k, 3);
        let mut packed = vec![0u8; w.len()];
        repack_q4k(&w, n, k, &mut packed).unwrap();
        let nb = k / QK;
        let orig = as_blocks::<BlockQ4K>(&w);
        for g in 0..n / ROWS {
            for b in 0..nb {
                let at = (g * nb + b) * Q4KX8_BYTES;
                // SAFETY: `packed` holds whole blocks; u16 fields need 2-byte alignment, which
                // a Vec<u8> of this size has in practice; read unaligned to be sure.
                let blk: Q4Kx8 =
                    unsafe { std::ptr::read_unaligned(packed[at..].as_ptr() as *const Q4Kx8) };
                for r in 0..ROWS {
                    let ob = &orig[(g * ROWS + r) * nb + b];
                    // SAFETY: BlockQ4K and Q4K share the GGUF layout.
                    let ob: &Q4K = unsafe { &*(ob as *const BlockQ4K as *const Q4K) };
                    assert_eq!(blk.d[r], ob.d);
                    assert_eq!(blk.dmin[r], ob.dmin);
                    let (sc, mn) = q4k_scales_mins(&ob.scales);
                    let codes = q4k_codes(ob);
                    for s in 0..8 {
                        let six = |i: usize| {
                            let lo = if i < 64 {
                                blk.scales[i] & 0x0F
                            } else {
                                blk.scales[i - 64] >> 4
                            };
                            let hi = (blk.scales[64 + i % 32] >> (2 * (i / 32))) & 3;
                            lo | (hi << 4)
                        };
                        assert_eq!(six(8 * s + r), sc[s]);
                        assert_eq!(six(64 + 8 * s + r), mn[s]);
                        for v in 0..32 {
                            let (h, i, high) = (v / 16, v % 8, (v % 16) >= 8);
                            let byte = blk.qs[128 * s + 64 * h + 8 * r + i];
                            let code = if high { byte >> 4 } else { byte & 0x0F };
                            assert_eq!(code, codes[32 * s + v], "g{g} b{b} r{r} s{s} v{v}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_shapes_it_cannot_group() {
        let mut dst = vec![0u8; 144 * 4];
        assert_eq!(
            repack_q4k(&[0u8; 144 * 4], 4, 256, &mut dst),
            Err(RepackError::Rows(4))
        );
        assert_eq!(
            repack_q4k(&[0u8; 144 * 8], 8, 100, &mut dst),
            Err(RepackError::Cols(100))
        );
        assert!(matches!(
            repack_q4k(&[0u8; 10], 8, 256, &mut dst),
            Err(RepackError::Size { .. })
        ));
    }

    /// The multiply pipe's peak on this CPU, the bound the products are measured against:
    /// `vpdpbusd` on registers in 1, 2, 4 and 8 independent chains (its latency shows until
    /// the chains cover it), one thread.
    /// `cargo test --release --lib interleaved::tests::vnni_peak -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn vnni_peak() {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn chains<const K: usize>(n: usize) -> i32 {
            use std::arch::x86_64::*;
            let w: [__m512i; 8] = std::array::from_fn(|i| _mm512_set1_epi32(i as i32 + 1));
            let mut acc = [_mm512_setzero_si512(); K];
            for _ in 0..n {
                for _ in 0..8 / K {
                    for i in 0..K {
                        acc[i] = _mm512_dpbusd_epi32(acc[i], w[i], w[(i + 1) % 8]);
                    }
                }
                // Keeps the loop a loop: the compiler may not fold the chains.
                std::arch::asm!("", options(nomem, nostack));
            }
            let mut s = acc[0];
            for a in &acc[1..] {
                s = _mm512_add_epi32(s, *a);
            }
            _mm_cvtsi128_si32(_mm512_castsi512_si128(s))
        }
        if !cpu_supported() {
            return;
        }
        let n = 50_000_000;
        type Chains = unsafe fn(usize) -> i32;
        let runs: [(usize, Chains); 4] = [
            (1, chains::<1>),
            (2, chains::<2>),
            (4, chains::<4>),
            (8, chains::<8>),
        ];
        for (k, f) in runs {
            let t = std::time::Instant::now();
            // SAFETY: the features were checked.
            let r = unsafe { f(n) };
            let s = t.elapsed().as_secs_f64();
            println!(
                "vpdpbusd zmm, {k} chains: {:.2} G/s on one thread ({:.0} GMAC/s of int8) [{r}]",
                (8 * n) as f64 / s / 1e9,
                (8 * n * 64) as f64 / s / 1e9
            );
        }
    }

    /// Prefill-shaped products, interleaved against the GGUF-layout kernels:
    /// `cargo test --release --lib interleaved::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn speed() {
        let cases: [(&str, kernels::Format, Format, Repack); 2] = [
            ("Q4_K", kernels::Format::Q4K, Format::Q4Kx8, repack_q4k),
            ("Q6_K", kernels::Format::Q6K, Format::Q6Kx8, repack_q6k),
        ];
        for (name, gguf_format, format, repack) in cases {
            for &(m, k, n) in &[
                (512, 2048, 2048),
                (512, 2048, 11008),
                (512, 11008, 2048),
                (1, 2048, 32768),
            ] {
                let w = match format {
                    Format::Q4Kx8 => q4k_weights(n, k, 1),
                    Format::Q6Kx8 => weights::<BlockQ6K>(n, k, 1),
                };
                let x = activations(m, k, 2);
                let mut packed = vec![0u8; w.len()];
                repack(&w, n, k, &mut packed).unwrap();
                let mut out = vec![0f32; m * n];
                let mut best = [f64::MAX; 2];
                for _ in 0..12 {
                    for (v, b) in best.iter_mut().enumerate() {
                        let t = std::time::Instant::now();
                        match v {
                            0 => kernels::matmul(gguf_format, (m, k, n), &x, &w, &mut out),
                            _ => matmul(format, (m, k, n), &x, &packed, &mut out),
                        }
                        .unwrap();
                        *b = b.min(t.elapsed().as_secs_f64());
                    }
                }
                let gmac = (m * k * n) as f64 / 1e9;
                println!(
                    "{name} ({m},{k},{n}): gguf layout {:.2} ms {:.1} GMAC/s | interleaved {:.2} ms {:.1} GMAC/s",
                    best[0] * 1e3,
                    gmac / best[0],
                    best[1] * 1e3,
                    gmac / best[1]
                );
            }
        }
    }
}
