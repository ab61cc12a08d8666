//! Q4_K and Q6_K weights with sixteen rows interleaved, and the AVX-512 products on them.
//!
//! In the GGUF layout every row's 32-value (Q4_K) or 16-value (Q6_K) sub-block has its own
//! scale, so a kernel on that layout applies a scale after every few dozen products of every
//! (weight row, activation row) pair. On AMD Zen 4, where a 512-bit integer multiply issues
//! once per cycle, the scales, packs and float conversions then take about as long as the
//! products themselves.
//!
//! Here a block holds super-block `b` of sixteen consecutive rows, stored in 4-byte runs, one
//! per row: one 64-byte vector holds 4 values of all sixteen rows. A 4-byte run of activations
//! broadcast to every row meets it in one `vpdpbusd`, which leaves each row's sum in its own
//! dword; after a sub-block's `vpdpbusd` (eight for Q4_K, four for Q6_K) one `vpmulld`
//! applies the sixteen rows' scales. Per 512 products that is 9 multiply-pipe instructions
//! for Q4_K and 10 for Q6_K. Eight rows in 8-byte runs, the layout before this one, split
//! each row's sum over two dwords and needed a pack and a 16-bit scale product for them:
//! 10 for Q4_K, and 12 for Q6_K, whose sums of 16 do not fit 16 bits and went through
//! `vpmaddubsw`. Block scales, mins and float work happen once per super-block and
//! activation row.
//!
//! A block has the size of the sixteen GGUF blocks it replaces, so the layout costs no
//! memory; it is built once ([`repack_q4k`], [`repack_q6k`]) and kept in a file beside the
//! model ([`super::prepared`]). A tensor's row count must be a multiple of [`ROWS`].

use super::kernels::{self, Q4K, Q6K, Q8K, QK};
use std::mem::MaybeUninit;

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

/// Rows per interleaved block.
pub const ROWS: usize = 16;

/// Sixteen Q4_K super-blocks (one per row), interleaved.
#[repr(C)]
pub(super) struct Q4Kx16 {
    /// Block scales of the sixteen rows (f16).
    d: [u16; ROWS],
    /// Block min scales of the sixteen rows (f16).
    dmin: [u16; ROWS],
    /// The 128 sub-block scales and the 128 mins, index `16·s + r`, 6 bits each: byte `i` of
    /// 0..128 holds scale `i`'s low nibble and min `i`'s high nibble, byte `128 + i` the top
    /// two bits of scales `i`, `64 + i` and of mins `i`, `64 + i`, in that order from bit 0.
    scales: [u8; 192],
    /// Sub-block `s` in bytes `256·s..256·(s + 1)`: byte `64·h + 4·r + i` holds value
    /// `32·s + 8·h + i` of row `r` in its low nibble and value `32·s + 8·h + 4 + i` in its
    /// high nibble.
    qs: [u8; 2048],
}

const _: () = assert!(std::mem::size_of::<Q4Kx16>() == ROWS * std::mem::size_of::<Q4K>());

/// Bytes of one sixteen-row Q4_K block.
pub const Q4K_BYTES: usize = std::mem::size_of::<Q4Kx16>();

/// Rewrites `rows × cols` Q4_K weights in the GGUF layout (`src`) into the sixteen-row
/// layout (`dst`, the same size). Exact: every code, scale and min is kept as it is.
pub fn repack_q4k(src: &[u8], rows: usize, cols: usize, dst: &mut [u8]) -> Result<(), RepackError> {
    const B: usize = std::mem::size_of::<Q4K>();
    let nb = check_repack(src.len(), dst.len(), rows, cols, B)?;
    for g in 0..rows / ROWS {
        for b in 0..nb {
            let mut out = Q4Kx16 {
                d: [0; ROWS],
                dmin: [0; ROWS],
                scales: [0; 192],
                qs: [0; 2048],
            };
            let (mut sc, mut mn) = ([0u8; 128], [0u8; 128]);
            for r in 0..ROWS {
                let at = ((g * ROWS + r) * nb + b) * B;
                let bytes = &src[at..at + B];
                let mut scales = [0u8; 12];
                scales.copy_from_slice(&bytes[4..16]);
                let mut qs = [0u8; QK / 2];
                qs.copy_from_slice(&bytes[16..]);
                let blk = Q4K {
                    d: u16::from_le_bytes([bytes[0], bytes[1]]),
                    dmin: u16::from_le_bytes([bytes[2], bytes[3]]),
                    scales,
                    qs,
                };
                out.d[r] = blk.d;
                out.dmin[r] = blk.dmin;
                let (s6, m6) = q4k_scales_mins(&blk.scales);
                for s in 0..8 {
                    sc[16 * s + r] = s6[s];
                    mn[16 * s + r] = m6[s];
                }
                let codes = q4k_codes(&blk);
                for s in 0..8 {
                    for h in 0..4 {
                        for i in 0..4 {
                            let v = 32 * s + 8 * h + i;
                            out.qs[256 * s + 64 * h + 4 * r + i] = codes[v] | (codes[v + 4] << 4);
                        }
                    }
                }
            }
            for i in 0..128 {
                out.scales[i] = (sc[i] & 0x0F) | ((mn[i] & 0x0F) << 4);
            }
            for i in 0..64 {
                out.scales[128 + i] = (sc[i] >> 4)
                    | ((sc[64 + i] >> 4) << 2)
                    | ((mn[i] >> 4) << 4)
                    | ((mn[64 + i] >> 4) << 6);
            }
            let at = (g * nb + b) * Q4K_BYTES;
            // SAFETY: `Q4Kx16` is `repr(C)` plain old data without padding (its size is
            // asserted to be the sum of its fields' sizes).
            let bytes = unsafe {
                std::slice::from_raw_parts(&out as *const Q4Kx16 as *const u8, Q4K_BYTES)
            };
            dst[at..at + Q4K_BYTES].copy_from_slice(bytes);
        }
    }
    Ok(())
}

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

/// Sixteen Q6_K super-blocks (one per row), interleaved.
#[repr(C)]
pub(super) struct Q6Kx16 {
    /// Block scales of the sixteen rows (f16).
    d: [u16; ROWS],
    /// The 16-value groups' scales, index `16·g + r`.
    scales: [i8; 256],
    /// Low four bits of the codes: values `32p..32p + 32` in bytes `256·p..256·(p + 1)`, byte
    /// `64·h + 4·r + i` holding value `32p + 8h + i` of row `r` (low nibble) and
    /// `32p + 8h + 4 + i` (high nibble).
    ql: [u8; 2048],
    /// Top two bits: byte `128·p + 64·e + 4·r + i` holds those of values `32p + 16e + 4j + i`,
    /// j = 0..4, in bits `2j..2j + 2`.
    qh: [u8; 1024],
}

const _: () = assert!(std::mem::size_of::<Q6Kx16>() == ROWS * std::mem::size_of::<Q6K>());

/// Bytes of one sixteen-row Q6_K block.
pub const Q6K_BYTES: usize = std::mem::size_of::<Q6Kx16>();

/// Rewrites `rows × cols` Q6_K weights in the GGUF layout (`src`) into the sixteen-row
/// layout (`dst`, the same size). Exact: every code and scale is kept as it is.
pub fn repack_q6k(src: &[u8], rows: usize, cols: usize, dst: &mut [u8]) -> Result<(), RepackError> {
    const B: usize = std::mem::size_of::<Q6K>();
    let nb = check_repack(src.len(), dst.len(), rows, cols, B)?;
    for g in 0..rows / ROWS {
        for b in 0..nb {
            let mut out = Q6Kx16 {
                d: [0; ROWS],
                scales: [0; 256],
                ql: [0; 2048],
                qh: [0; 1024],
            };
            for r in 0..ROWS {
                let at = ((g * ROWS + r) * nb + b) * B;
                let blk = &src[at..at + B];
                let (ql, qh, sc, d) = (&blk[..128], &blk[128..192], &blk[192..208], &blk[208..]);
                out.d[r] = u16::from_le_bytes([d[0], d[1]]);
                for (gi, &v) in sc.iter().enumerate() {
                    out.scales[16 * gi + r] = v as i8;
                }
                let codes = q6k_codes(ql, qh);
                for p in 0..8 {
                    for h in 0..4 {
                        for i in 0..4 {
                            let v = 32 * p + 8 * h + i;
                            out.ql[256 * p + 64 * h + 4 * r + i] =
                                (codes[v] & 0x0F) | ((codes[v + 4] & 0x0F) << 4);
                        }
                    }
                    for e in 0..2 {
                        for i in 0..4 {
                            let mut byte = 0;
                            for j in 0..4 {
                                byte |= (codes[32 * p + 16 * e + 4 * j + i] >> 4) << (2 * j);
                            }
                            out.qh[128 * p + 64 * e + 4 * r + i] = byte;
                        }
                    }
                }
            }
            let at = (g * nb + b) * Q6K_BYTES;
            // SAFETY: `Q6Kx16` is `repr(C)` plain old data without padding (its size is
            // asserted to be the sum of its fields' sizes).
            let bytes = unsafe {
                std::slice::from_raw_parts(&out as *const Q6Kx16 as *const u8, Q6K_BYTES)
            };
            dst[at..at + Q6K_BYTES].copy_from_slice(bytes);
        }
    }
    Ok(())
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
const GROUPS: usize = 2;
/// Blocks a one-row product reads ahead of the block in use. Decode streams every weight from
/// memory once; without the hint the Q6_K product, with more work per byte, kept too few
/// reads in flight and moved its weights at 8–16 GB/s where Q4_K moved 20 and more.
const PREFETCH_BLOCKS: usize = 1;

/// The interleaved formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Sixteen Q4_K rows ([`repack_q4k`]).
    Q4Kx16,
    /// Sixteen Q6_K rows ([`repack_q6k`]).
    Q6Kx16,
}

impl Format {
    /// Bytes of one block of sixteen rows.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4Kx16 => Q4K_BYTES,
            Format::Q6Kx16 => Q6K_BYTES,
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
        nb = check((m, k, p.n), (lhs.len(), p.dst.len()), (p.format, p.w))?;
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
    let formats: Vec<Format> = products.iter().map(|p| p.format).collect();
    let q = Quantized::new(lhs, (m, k), &formats);
    let per_unit = if m == 1 { 1 } else { GROUPS };
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
    let (q, parts, starts) = (&q, &parts[..], &starts[..]);
    candle_core::utils::barrier_pool().execute_chunked(total, |range| {
        for unit in range {
            let i = starts.partition_point(|&s| s <= unit) - 1;
            let (format, groups, n, w, dst) = parts[i];
            let unit = unit - starts[i];
            let gs = unit * per_unit..groups.min((unit + 1) * per_unit);
            // SAFETY: the sizes were checked above; each unit writes only its own columns of
            // its product's `dst`, so concurrent workers never touch the same element.
            unsafe {
                run_unit(
                    format,
                    gs,
                    (m, nb, n),
                    (&q.act, q.sums(format)),
                    (w as *const u8, dst as *mut f32),
                )
            }
        }
    });
    Ok(())
}

/// Checks one product's shape: `n` a multiple of [`ROWS`], and the sizes of `lhs`, `dst` and
/// the weights; returns the blocks per row.
fn check(
    (m, k, n): (usize, usize, usize),
    (lhs, dst): (usize, usize),
    (format, w): (Format, &[u8]),
) -> Result<usize, kernels::KernelError> {
    if !n.is_multiple_of(ROWS) {
        return Err(kernels::KernelError::Size {
            what: "weight rows (a multiple of 16)",
            found: n,
            expected: n.next_multiple_of(ROWS),
            m,
            k,
            n,
        });
    }
    kernels::check_shape((m, k, n), (lhs, dst), w.len(), |nb| {
        n / ROWS * nb * format.block_bytes()
    })
}

/// Activations as Q8_K, and their block sums for the Q4_K and the Q6_K offset terms.
struct Quantized {
    act: Vec<Q8K>,
    q4_sums: Vec<[i16; 16]>,
    q6_sums: Vec<[i16; 16]>,
}

impl Quantized {
    /// Quantizes `lhs` (m, k) once for products in `formats`; the sums of a format not among
    /// them stay empty.
    fn new(lhs: &[f32], (m, k): (usize, usize), formats: &[Format]) -> Self {
        let act = kernels::quantize(lhs, m, k);
        let q4_sums = if formats.contains(&Format::Q4Kx16) {
            act.iter().map(q4k_sums).collect()
        } else {
            Vec::new()
        };
        // Q6_K's offset multiplies the Q8_K block's own sums of 16.
        let q6_sums = if formats.contains(&Format::Q6Kx16) {
            act.iter().map(|a| a.bsums).collect()
        } else {
            Vec::new()
        };
        Self {
            act,
            q4_sums,
            q6_sums,
        }
    }

    /// The block sums that `format`'s offset term multiplies.
    fn sums(&self, format: Format) -> &[[i16; 16]] {
        match format {
            Format::Q4Kx16 => &self.q4_sums,
            Format::Q6Kx16 => &self.q6_sums,
        }
    }
}

/// `dst = silu(lhs · Gᵀ) · (lhs · Uᵀ)`, elementwise: a feed-forward block's gate and up
/// products and its activation in one pass. `gate` and `up` hold `n` rows of `k` values each,
/// `dst` is (m, n). A unit computes a tile of both products into buffers on its stack and
/// writes only the activation, so the two (m, n) products never go through memory: for a
/// 256-token chunk they are 22 MB a layer, written, then read back by a separate pass.
pub fn swiglu_uninit(
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    [gate, up]: [(Format, &[u8]); 2],
    dst: &mut [MaybeUninit<f32>],
) -> Result<(), kernels::KernelError> {
    if !cpu_supported() {
        return Err(kernels::KernelError::Unsupported);
    }
    check((m, k, n), (lhs.len(), dst.len()), gate)?;
    let nb = check((m, k, n), (lhs.len(), dst.len()), up)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        // silu(0) · 0.
        dst.fill(MaybeUninit::new(0.0));
        return Ok(());
    }
    let q = Quantized::new(lhs, (m, k), &[gate.0, up.0]);
    let halves = [gate, up].map(|(format, w)| (format, w.as_ptr() as usize, q.sums(format)));
    let per_unit = if m == 1 { 1 } else { GROUPS };
    let groups = n / ROWS;
    let dst_addr = dst.as_mut_ptr() as usize;
    let act = &q.act[..];
    candle_core::utils::barrier_pool().execute_chunked(groups.div_ceil(per_unit), |units| {
        let gs = units.start * per_unit..groups.min(units.end * per_unit);
        // SAFETY: the sizes were checked above; each unit writes only its own columns of
        // `dst`, so concurrent workers never touch the same element.
        unsafe { run_swiglu_unit(gs, (m, nb, n), act, halves, dst_addr as *mut f32) }
    });
    Ok(())
}

/// [`swiglu_uninit`]'s work on the groups `gs`: per tile of activation rows and group, both
/// products over the whole of `k` into stack buffers, then their activation into `dst`.
///
/// # Safety
/// As [`run_unit`], for both matrices of `halves` (format, address, block sums).
unsafe fn run_swiglu_unit(
    gs: std::ops::Range<usize>,
    (m, nb, n): (usize, usize, usize),
    act: &[Q8K],
    halves: [(Format, usize, &[[i16; 16]]); 2],
    dst: *mut f32,
) {
    let pass = if m == 1 { nb } else { KBLOCKS };
    for c0 in (0..m).step_by(TILE) {
        let tile = TILE.min(m - c0);
        for g in gs.clone() {
            // Rows of the gate's tile, then the up's, sixteen columns each.
            // Left uninitialized: zeroing it cost more than the activation (1.6 GB of
            // stores in a 512-token prefill), and the first pass over `k` writes what is read.
            let mut buf = [const { MaybeUninit::<f32>::uninit() }; 2 * TILE * ROWS];
            for (i, &(format, w, sums)) in halves.iter().enumerate() {
                for kb in (0..nb).step_by(pass) {
                    let a = act.as_ptr().add(c0 * nb + kb);
                    let s = sums.as_ptr().add(c0 * nb + kb);
                    let wg = (w as *const u8).add((g * nb + kb) * format.block_bytes());
                    let out = buf.as_mut_ptr().add(i * TILE * ROWS) as *mut f32;
                    kernel(
                        format,
                        tile,
                        wg,
                        (a, s),
                        (nb, pass.min(nb - kb)),
                        (out, ROWS, kb > 0),
                    );
                }
            }
            // The first `tile` rows of each half: those the kernels above wrote.
            let half = |i: usize| {
                let at = buf.as_ptr().add(i * TILE * ROWS) as *const f32;
                std::slice::from_raw_parts(at, tile * ROWS)
            };
            let mut h = [const { MaybeUninit::<f32>::uninit() }; TILE * ROWS];
            super::swiglu::apply(half(0), half(1), &mut h[..tile * ROWS]);
            for (c, row) in h[..tile * ROWS].chunks_exact(ROWS).enumerate() {
                let to = dst.add((c0 + c) * n + g * ROWS);
                std::ptr::copy_nonoverlapping(row.as_ptr() as *const f32, to, ROWS);
            }
        }
    }
}

/// One micro-kernel call: `tile` (1..=[`TILE`]) activation rows against the group at `w`,
/// over `count` blocks, into `out[c·stride + r]` (added to it when `add`).
///
/// # Safety
/// `w` must hold `count` blocks of `format`, `a` and `s` `tile` rows of `nb` entries, `out`
/// `tile` rows of `stride`; the caller must have checked the CPU features.
unsafe fn kernel(
    format: Format,
    tile: usize,
    w: *const u8,
    (a, s): (*const Q8K, *const [i16; 16]),
    (nb, count): (usize, usize),
    (out, stride, add): (*mut f32, usize, bool),
) {
    macro_rules! tile {
        ($c:expr) => {
            match format {
                Format::Q4Kx16 => {
                    avx512::q4kx16::<{ $c }>(w as _, (a, s), (nb, count), (out, stride, add))
                }
                Format::Q6Kx16 => {
                    avx512::q6kx16::<{ $c }>(w as _, (a, s), (nb, count), (out, stride, add))
                }
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

/// An activation block's sums over the 32-value sub-blocks, which the Q4_K mins multiply (the
/// last eight words unused).
fn q4k_sums(a: &Q8K) -> [i16; 16] {
    std::array::from_fn(|s| match s {
        0..8 => a.bsums[2 * s] + a.bsums[2 * s + 1],
        _ => 0,
    })
}

/// Computes `dst[.., 16·g..16·g + 16]` for the groups `gs` and all activation rows. The first
/// pass over `k` stores and later passes add, so `dst` may start uninitialized.
///
/// # Safety
/// `w` must hold `n / 16 · nb` blocks of `format`, `dst` `m · n` floats, and `gs` must lie in
/// `0..n / 16`; the caller must have checked the CPU features.
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
                kernel(format, tile, wg, (a, s), (nb, count), (out, n, kb > 0));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
mod avx512 {
    //! The micro-kernels: one interleaved group of 16 weight rows against `C` activation rows.

    use super::{Q4Kx16, Q6Kx16, PREFETCH_BLOCKS, Q8K};
    use std::arch::x86_64::*;

    /// Sign-extends the even bytes of `v` (odd bytes ignored) to 16-bit words.
    #[inline(always)]
    unsafe fn words_of_even_bytes(v: __m512i) -> __m512i {
        _mm512_srai_epi16(_mm512_slli_epi16(v, 8), 8)
    }

    /// `vpermb` indices that put, in the low bytes of dword r's two words, bytes r and 16 + r:
    /// of the first 32 bytes (first vector) or of the second 32 (second vector). They pair a
    /// row's values of two sub-blocks stored sixteen rows apart.
    #[inline(always)]
    unsafe fn pair_indices() -> [__m512i; 2] {
        let mut idx = [0u8; 64];
        for r in 0..16 {
            idx[4 * r] = r as u8;
            idx[4 * r + 2] = (16 + r) as u8;
        }
        let first = _mm512_loadu_si512(idx.as_ptr() as *const _);
        [first, _mm512_add_epi8(first, _mm512_set1_epi8(32))]
    }

    /// Stores each activation row's sixteen results into `out[c·n..c·n + 16]`, or adds them
    /// to what is there when `add` (every pass over `k` after the first).
    #[inline(always)]
    unsafe fn store_rows<const C: usize>(facc: &[__m512; C], out: *mut f32, n: usize, add: bool) {
        for (c, &acc) in facc.iter().enumerate() {
            let o = out.add(c * n);
            let v = if add {
                _mm512_add_ps(_mm512_loadu_ps(o), acc)
            } else {
                acc
            };
            _mm512_storeu_ps(o, v);
        }
    }

    /// For every activation row `c`: `iacc[c] += sv · Σ_j wq[j] · y_c[j]`, where `y_c[j]` is
    /// the 4-byte run at byte `at + 4j` of row `c`'s block `b`, broadcast to all sixteen rows.
    /// Two activation rows at a time, two chains each: four independent `vpdpbusd` chains
    /// cover the multiply's latency of four cycles. A dword gathers at most 32 products of a
    /// code below 64 and an activation of at most 128 in size: well inside i32.
    #[inline(always)]
    unsafe fn scaled_sums<const C: usize, const L: usize>(
        wq: &[__m512i; L],
        sv: __m512i,
        (a, nb, b, at): (*const Q8K, usize, usize, usize),
        iacc: &mut [__m512i; C],
    ) {
        for c0 in (0..C).step_by(2) {
            let pair = if c0 + 1 < C { 2 } else { 1 };
            let q: [*const i32; 2] = std::array::from_fn(|p| {
                (*a.add((c0 + p.min(pair - 1)) * nb + b))
                    .qs
                    .as_ptr()
                    .add(at) as *const i32
            });
            let z = _mm512_setzero_si512();
            let mut d = [[z; 2]; 2];
            for j in (0..L).step_by(2) {
                for p in 0..pair {
                    for e in 0..2 {
                        let y = _mm512_set1_epi32(q[p].add(j + e).read_unaligned());
                        d[p][e] = _mm512_dpbusd_epi32(d[p][e], wq[j + e], y);
                    }
                }
            }
            for p in 0..pair {
                let sum = _mm512_add_epi32(d[p][0], d[p][1]);
                iacc[c0 + p] = _mm512_add_epi32(iacc[c0 + p], _mm512_mullo_epi32(sum, sv));
            }
        }
    }

    /// Q4_K on sixteen rows: `C` activation rows × the group's 16 rows, over `count`
    /// super-blocks, stored into `out[c·n + r]` (added to it when `add`). A dword holds four
    /// values of one row, so a sub-block's eight `vpdpbusd` leave each row's whole sum in one
    /// dword, and one `vpmulld` applies the sixteen rows' scales.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
    pub(super) unsafe fn q4kx16<const C: usize>(
        w: *const Q4Kx16,
        (a, bs): (*const Q8K, *const [i16; 16]),
        (nb, count): (usize, usize),
        (out, n, add): (*mut f32, usize, bool),
    ) {
        let low = _mm512_set1_epi8(0x0F);
        let top = _mm512_set1_epi8(0x30);
        // Min words: vector t pairs, in dword r, the mins of sub-blocks 2t and 2t + 1 of row
        // r, bytes 32·(t % 2) + r and 32·(t % 2) + 16 + r of the decoded mins.
        let [midx0, midx1] = pair_indices();
        let even = 0x5555_5555_5555_5555u64;

        let mut facc = [_mm512_setzero_ps(); C];
        for b in 0..count {
            let blk = &*w.add(b);
            let l0 = _mm512_loadu_si512(blk.scales.as_ptr() as *const _);
            let l1 = _mm512_loadu_si512(blk.scales.as_ptr().add(64) as *const _);
            let h = _mm512_loadu_si512(blk.scales.as_ptr().add(128) as *const _);
            // Scales and mins 0..64 and 64..128, one byte each.
            let sc = [
                _mm512_or_si512(
                    _mm512_and_si512(l0, low),
                    _mm512_and_si512(_mm512_slli_epi16(h, 4), top),
                ),
                _mm512_or_si512(
                    _mm512_and_si512(l1, low),
                    _mm512_and_si512(_mm512_slli_epi16(h, 2), top),
                ),
            ];
            let mn = [
                _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(l0, 4), low),
                    _mm512_and_si512(h, top),
                ),
                _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(l1, 4), low),
                    _mm512_and_si512(_mm512_srli_epi16(h, 2), top),
                ),
            ];

            let mut iacc = [_mm512_setzero_si512(); C];
            for s in 0..8 {
                let mut wq = [_mm512_setzero_si512(); 8];
                for h in 0..4 {
                    let p = _mm512_loadu_si512(blk.qs.as_ptr().add(256 * s + 64 * h) as *const _);
                    wq[2 * h] = _mm512_and_si512(p, low);
                    wq[2 * h + 1] = _mm512_and_si512(_mm512_srli_epi16(p, 4), low);
                }
                let sv = _mm512_cvtepu8_epi32(match s % 4 {
                    0 => _mm512_extracti32x4_epi32::<0>(sc[s / 4]),
                    1 => _mm512_extracti32x4_epi32::<1>(sc[s / 4]),
                    2 => _mm512_extracti32x4_epi32::<2>(sc[s / 4]),
                    _ => _mm512_extracti32x4_epi32::<3>(sc[s / 4]),
                });
                scaled_sums(&wq, sv, (a, nb, b, 32 * s), &mut iacc);
            }

            let dv = _mm512_cvtph_ps(_mm256_loadu_si256(blk.d.as_ptr() as *const _));
            let mv = _mm512_cvtph_ps(_mm256_loadu_si256(blk.dmin.as_ptr() as *const _));
            let mw = [
                _mm512_maskz_permutexvar_epi8(even, midx0, mn[0]),
                _mm512_maskz_permutexvar_epi8(even, midx1, mn[0]),
                _mm512_maskz_permutexvar_epi8(even, midx0, mn[1]),
                _mm512_maskz_permutexvar_epi8(even, midx1, mn[1]),
            ];
            for c in 0..C {
                let ab = &*a.add(c * nb + b);
                let s = bs.add(c * nb + b) as *const i32;
                let y = |t: usize| _mm512_set1_epi32(s.add(t).read_unaligned());
                let m01 = _mm512_dpwssd_epi32(_mm512_madd_epi16(mw[0], y(0)), mw[1], y(1));
                let m23 = _mm512_dpwssd_epi32(_mm512_madd_epi16(mw[2], y(2)), mw[3], y(3));
                let msum = _mm512_add_epi32(m01, m23);
                let t = _mm512_mul_ps(_mm512_cvtepi32_ps(iacc[c]), dv);
                let t = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), mv, t);
                facc[c] = _mm512_fmadd_ps(t, _mm512_set1_ps(ab.d), facc[c]);
            }
        }
        store_rows(&facc, out, n, add);
    }

    /// Q6_K on sixteen rows: `d·Σ_g sc_g·Σ (q − 32)·y` for `C` activation rows × the group's
    /// 16 rows, over `count` super-blocks, stored into `out[c·n + r]` (added to it when `add`).
    /// A group's four `vpdpbusd` leave each row's sum in one dword and one `vpmulld` applies
    /// the sixteen rows' scales; the −32 stays in the integer sum as `−32·Σ_g sc_g·bsum_g`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
    pub(super) unsafe fn q6kx16<const C: usize>(
        w: *const Q6Kx16,
        (a, bs): (*const Q8K, *const [i16; 16]),
        (nb, count): (usize, usize),
        (out, n, add): (*mut f32, usize, bool),
    ) {
        let low = _mm512_set1_epi8(0x0F);
        let top = _mm512_set1_epi8(0x30);
        // Offset words: vector k pairs, in dword r, the scales of groups 2k and 2k + 1 of
        // row r: bytes 32·(k % 2) + r and 32·(k % 2) + 16 + r of scale vector k / 2.
        let [oidx0, oidx1] = pair_indices();
        let even = 0x5555_5555_5555_5555u64;

        let mut facc = [_mm512_setzero_ps(); C];
        for b in 0..count {
            let blk = &*w.add(b);
            let mut iacc = [_mm512_setzero_si512(); C];
            for p in 0..8 {
                if C == 1 {
                    // A block is 52.5 lines: seven per step cover it. Past the matrix's end
                    // the hint reads nothing (prefetches do not fault).
                    let next =
                        (w.wrapping_add(b + PREFETCH_BLOCKS) as *const i8).wrapping_add(448 * p);
                    for l in 0..7 {
                        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(64 * l));
                    }
                }
                let qh: [__m512i; 2] = std::array::from_fn(|e| {
                    _mm512_loadu_si512(blk.qh.as_ptr().add(128 * p + 64 * e) as *const _)
                });
                // Codes of values 32p + 4t + i, t = 0..8, of the sixteen rows.
                let mut wq = [_mm512_setzero_si512(); 8];
                for h in 0..4 {
                    let ql = _mm512_loadu_si512(blk.ql.as_ptr().add(256 * p + 64 * h) as *const _);
                    for e in 0..2 {
                        let t = 2 * h + e;
                        let nib = if e == 0 { ql } else { _mm512_srli_epi16(ql, 4) };
                        let src = qh[t / 4];
                        let bits = match t % 4 {
                            0 => _mm512_slli_epi16(src, 4),
                            1 => _mm512_slli_epi16(src, 2),
                            2 => src,
                            _ => _mm512_srli_epi16(src, 2),
                        };
                        // (nib & 0x0F) | (bits & 0x30)
                        wq[t] = _mm512_or_si512(
                            _mm512_and_si512(nib, low),
                            _mm512_and_si512(bits, top),
                        );
                    }
                }
                for e in 0..2 {
                    let g = 2 * p + e;
                    let sv = _mm512_cvtepi8_epi32(_mm_loadu_si128(
                        blk.scales.as_ptr().add(16 * g) as *const _
                    ));
                    let wq: &[__m512i; 4] = wq[4 * e..4 * e + 4].try_into().unwrap();
                    scaled_sums(wq, sv, (a, nb, b, 16 * g), &mut iacc);
                }
            }

            let dv = _mm512_cvtph_ps(_mm256_loadu_si256(blk.d.as_ptr() as *const _));
            let off: [__m512i; 8] = std::array::from_fn(|k| {
                let src = _mm512_loadu_si512(blk.scales.as_ptr().add(64 * (k / 2)) as *const _);
                let i = if k % 2 == 0 { oidx0 } else { oidx1 };
                words_of_even_bytes(_mm512_maskz_permutexvar_epi8(even, i, src))
            });
            for c in 0..C {
                let ab = &*a.add(c * nb + b);
                let s = bs.add(c * nb + b) as *const i32;
                let y = |k: usize| _mm512_set1_epi32(s.add(k).read_unaligned());
                let mut o0 = _mm512_madd_epi16(off[0], y(0));
                let mut o1 = _mm512_madd_epi16(off[1], y(1));
                for k in (2..8).step_by(2) {
                    o0 = _mm512_dpwssd_epi32(o0, off[k], y(k));
                    o1 = _mm512_dpwssd_epi32(o1, off[k + 1], y(k + 1));
                }
                let osum = _mm512_add_epi32(o0, o1);
                let isum = _mm512_sub_epi32(iacc[c], _mm512_slli_epi32(osum, 5));
                facc[c] = _mm512_fmadd_ps(
                    _mm512_mul_ps(_mm512_cvtepi32_ps(isum), dv),
                    _mm512_set1_ps(ab.d),
                    facc[c],
                );
            }
        }
        store_rows(&facc, out, n, add);
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    //! Never called: [`super::cpu_supported`] is false off x86-64.
    use super::{Q4Kx16, Q6Kx16, Q8K};
    pub(super) unsafe fn q6kx16<const C: usize>(
        _: *const Q6Kx16,
        _: (*const Q8K, *const [i16; 16]),
        _: (usize, usize),
        _: (*mut f32, usize),
    ) {
        unreachable!("AVX-512 kernels called off x86-64")
    }
    pub(super) unsafe fn q4kx16<const C: usize>(
        _: *const Q4Kx16,
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

    /// Random weights of `n` rows in `format`, repacked to the interleaved layout.
    fn packed(format: Format, n: usize, k: usize, seed: u64) -> Vec<u8> {
        let w = match format {
            Format::Q4Kx16 => q4k_weights(n, k, seed),
            Format::Q6Kx16 => weights::<BlockQ6K>(n, k, seed),
        };
        let mut packed = vec![0u8; w.len()];
        match format {
            Format::Q4Kx16 => repack_q4k(&w, n, k, &mut packed),
            Format::Q6Kx16 => repack_q6k(&w, n, k, &mut packed),
        }
        .unwrap();
        packed
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
            (1, 256, 16),
            (1, 2048, 64),
            (2, 512, 16),
            (3, 768, 48),
            (8, 256, 16),
            (9, 2304, 80),
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
        check::<BlockQ4K>(Format::Q4Kx16, repack_q4k);
    }

    #[test]
    fn q6k_matches_candle_on_the_gguf_layout() {
        if !cpu_supported() {
            eprintln!("skipped: no AVX-512 VBMI/VNNI");
            return;
        }
        check::<BlockQ6K>(Format::Q6Kx16, repack_q6k);
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
            (Format::Q4Kx16, 64, 1),
            (Format::Q4Kx16, 16, 2),
            (Format::Q6Kx16, 32, 3),
            (Format::Q4Kx16, 0, 4),
        ]
        .into_iter()
        .map(|(format, n, seed)| (format, n, packed(format, n, k, seed)))
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
    fn fused_swiglu_matches_the_products_then_the_activation() {
        if !cpu_supported() {
            eprintln!("skipped: no AVX-512 VBMI/VNNI");
            return;
        }
        // Nine blocks of `k` take two passes; 13 rows end in a partial tile; Q4_K_M may mix
        // the formats of a block's matrices.
        let (k, n) = (9 * QK, 48);
        for (fg, fu) in [
            (Format::Q4Kx16, Format::Q4Kx16),
            (Format::Q4Kx16, Format::Q6Kx16),
        ] {
            let (g, u) = (packed(fg, n, k, 1), packed(fu, n, k, 2));
            for m in [1, 13] {
                let x = activations(m, k, 3 + m as u64);
                let (mut pg, mut pu) = (vec![0f32; m * n], vec![0f32; m * n]);
                matmul(fg, (m, k, n), &x, &g, &mut pg).unwrap();
                matmul(fu, (m, k, n), &x, &u, &mut pu).unwrap();
                let mut want = vec![MaybeUninit::new(0f32); m * n];
                crate::model::swiglu::apply(&pg, &pu, &mut want);
                let mut got = vec![MaybeUninit::new(f32::NAN); m * n];
                swiglu_uninit((m, k, n), &x, [(fg, &g), (fu, &u)], &mut got).unwrap();
                // SAFETY: all written (NaN markers would fail the comparison).
                let [got, want] =
                    [got, want].map(|v| v.iter().map(|x| unsafe { x.assume_init() }).collect());
                let (got, want): (Vec<f32>, Vec<f32>) = (got, want);
                assert_eq!(got, want, "{fg:?}/{fu:?} m {m}");
            }
            // A matrix of the wrong size is refused, and nothing runs.
            let mut dst = vec![MaybeUninit::new(0f32); n];
            let x = activations(1, k, 1);
            let short = &u[..u.len() - 1];
            assert!(swiglu_uninit((1, k, n), &x, [(fg, &g), (fu, short)], &mut dst).is_err());
        }
    }

    #[test]
    fn repack_is_a_permutation_of_the_bytes_content() {
        // Every code, scale and min comes back out of the interleaved block.
        let (n, k) = (32, 512);
        let w = q4k_weights(n, k, 3);
        let mut packed = vec![0u8; w.len()];
        repack_q4k(&w, n, k, &mut packed).unwrap();
        let nb = k / QK;
        let orig = as_blocks::<BlockQ4K>(&w);
        for g in 0..n / ROWS {
            for b in 0..nb {
                let at = (g * nb + b) * Q4K_BYTES;
                // SAFETY: `packed` holds whole blocks; u16 fields need 2-byte alignment, which
                // a Vec<u8> of this size has in practice; read unaligned to be sure.
                let blk: Q4Kx16 =
                    unsafe { std::ptr::read_unaligned(packed[at..].as_ptr() as *const Q4Kx16) };
                for r in 0..ROWS {
                    let ob = &orig[(g * ROWS + r) * nb + b];
                    // SAFETY: BlockQ4K and Q4K share the GGUF layout.
                    let ob: &Q4K = unsafe { &*(ob as *const BlockQ4K as *const Q4K) };
                    assert_eq!(blk.d[r], ob.d);
                    assert_eq!(blk.dmin[r], ob.dmin);
                    let (sc, mn) = q4k_scales_mins(&ob.scales);
                    let codes = q4k_codes(ob);
                    for s in 0..8 {
                        // Scale (min = false) or min (true) `i`.
                        let six = |i: usize, min: bool| {
                            let lo = (blk.scales[i] >> (4 * min as usize)) & 0x0F;
                            let shift = 2 * (i / 64) + 4 * min as usize;
                            let hi = (blk.scales[128 + i % 64] >> shift) & 3;
                            lo | (hi << 4)
                        };
                        assert_eq!(six(16 * s + r, false), sc[s]);
                        assert_eq!(six(16 * s + r, true), mn[s]);
                        for v in 0..32 {
                            let (h, i, high) = (v / 8, v % 4, (v % 8) >= 4);
                            let byte = blk.qs[256 * s + 64 * h + 4 * r + i];
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
        let mut dst = vec![0u8; 144 * 8];
        assert_eq!(
            repack_q4k(&[0u8; 144 * 8], 8, 256, &mut dst),
            Err(RepackError::Rows(8))
        );
        assert_eq!(
            repack_q6k(&[0u8; 210 * 16], 16, 100, &mut dst),
            Err(RepackError::Cols(100))
        );
        assert!(matches!(
            repack_q4k(&[0u8; 10], 16, 256, &mut dst),
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

    /// Decode-shaped products over 220 MB of weights (more than the last-level cache, so they
    /// stream from memory as a decode step does), interleaved against the GGUF layout:
    /// `cargo test --release --lib interleaved::tests::gemv_speed -- --ignored --nocapture`.
    /// Medians of 10; one 2048-row matrix repeated 64 times, since the weights' values do not
    /// change the speed.
    #[test]
    #[ignore]
    fn gemv_speed() {
        let (k, n0, copies) = (2048, 2048, 64);
        let n = n0 * copies;
        let x = activations(1, k, 2);
        let mut out = vec![0f32; n];
        let cases: [(&str, kernels::Format, Format, Repack); 2] = [
            ("Q4_K", kernels::Format::Q4K, Format::Q4Kx16, repack_q4k),
            ("Q6_K", kernels::Format::Q6K, Format::Q6Kx16, repack_q6k),
        ];
        for (name, gguf_format, format, repack) in cases {
            let w = match format {
                Format::Q4Kx16 => q4k_weights(n0, k, 1),
                Format::Q6Kx16 => weights::<BlockQ6K>(n0, k, 1),
            };
            let mut packed = vec![0u8; w.len()];
            repack(&w, n0, k, &mut packed).unwrap();
            let (w, packed) = (w.repeat(copies), packed.repeat(copies));
            let mut median = [0f64; 2];
            for (v, median) in median.iter_mut().enumerate() {
                let mut times: Vec<f64> = (0..10)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        match v {
                            0 => kernels::matmul(gguf_format, (1, k, n), &x, &w, &mut out),
                            _ => matmul(format, (1, k, n), &x, &packed, &mut out),
                        }
                        .unwrap();
                        t.elapsed().as_secs_f64()
                    })
                    .collect();
                times.sort_by(f64::total_cmp);
                *median = times[times.len() / 2];
            }
            let gb = w.len() as f64 / 1e9;
            println!(
                "{name} (1,{k},{n}): gguf layout {:.2} ms {:.1} GB/s | interleaved {:.2} ms {:.1} GB/s",
                median[0] * 1e3,
                gb / median[0],
                median[1] * 1e3,
                gb / median[1]
            );
        }
    }

    /// One micro-kernel call on one thread, weights and activations in L1/L2: 8 activation
    /// rows against 16 weight rows over 2048 values, the loop the prefill products run,
    /// without the threads and the memory around it.
    /// `cargo test --release --lib interleaved::tests::kernel_alone -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn kernel_alone() {
        let (m, k, n) = (8, 2048, 16);
        let nb = k / QK;
        let act = kernels::quantize(&activations(m, k, 2), m, k);
        let mut out = vec![0f32; m * n];
        for format in [Format::Q4Kx16, Format::Q6Kx16] {
            let (w, sums): (_, Vec<[i16; 16]>) = match format {
                Format::Q4Kx16 => (q4k_weights(n, k, 1), act.iter().map(q4k_sums).collect()),
                Format::Q6Kx16 => (
                    weights::<BlockQ6K>(n, k, 1),
                    act.iter().map(|a| a.bsums).collect(),
                ),
            };
            let mut packed = vec![0u8; w.len()];
            match format {
                Format::Q4Kx16 => repack_q4k(&w, n, k, &mut packed),
                Format::Q6Kx16 => repack_q6k(&w, n, k, &mut packed),
            }
            .unwrap();
            let reps = 100_000;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                let (a, out) = ((act.as_ptr(), sums.as_ptr()), (out.as_mut_ptr(), n, false));
                // SAFETY: `packed` holds one group of `nb` blocks, `act`/`sums` 8 rows of `nb`,
                // `out` 8 rows of 16; the tests run these kernels only where the CPU has them.
                unsafe {
                    match format {
                        Format::Q4Kx16 => {
                            avx512::q4kx16::<8>(packed.as_ptr() as _, a, (nb, nb), out)
                        }
                        Format::Q6Kx16 => {
                            avx512::q6kx16::<8>(packed.as_ptr() as _, a, (nb, nb), out)
                        }
                    }
                }
            }
            let gmac = (m * k * n * reps) as f64 / 1e9;
            println!(
                "{format:?} kernel alone: {:.1} GMAC/s on one thread",
                gmac / t.elapsed().as_secs_f64()
            );
        }
    }

    /// Prefill-shaped products, interleaved against the GGUF-layout kernels:
    /// `cargo test --release --lib interleaved::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn speed() {
        let cases: [(&str, kernels::Format, Format, Repack); 2] = [
            ("Q4_K", kernels::Format::Q4K, Format::Q4Kx16, repack_q4k),
            ("Q6_K", kernels::Format::Q6K, Format::Q6Kx16, repack_q6k),
        ];
        for (name, gguf_format, format, repack) in cases {
            for &(m, k, n) in &[(512, 2048, 2048), (512, 2048, 11008), (512, 11008, 2048)] {
                let w = match format {
                    Format::Q4Kx16 => q4k_weights(n, k, 1),
                    Format::Q6Kx16 => weights::<BlockQ6K>(n, k, 1),
                };
                let x = activations(m, k, 2);
                let mut packed = vec![0u8; w.len()];
                repack(&w, n, k, &mut packed).unwrap();
                let mut out = vec![0f32; m * n];
                let mut best = [f64::MAX; 3];
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
