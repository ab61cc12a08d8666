//! Products on the sixteen-row layout (`layout16.rs`): the shape checks, the activations'
//! quantization, and one scheduler that splits the rows and tiles of every product over the
//! thread pool and calls the micro-kernels of the chosen instruction set.
//!
//! A tensor's row count must be a multiple of [`ROWS`]; the layout is built once
//! ([`repack_q4k`], [`repack_q6k`], [`repack_q8_0`]) and kept beside the model
//! ([`crate::prepared`]).

#[cfg(target_arch = "x86_64")]
use super::avx2::{self, streaming as avx2_streaming};
#[cfg(target_arch = "x86_64")]
use super::avx512::{self, streaming as avx512_streaming};
use super::blocks::{Q8x32, Q8K, QK, QK8_0};
pub use super::layout16::{
    repack_q4k, repack_q6k, repack_q8_0, Repack, RepackError, Q4K_BYTES, Q6K_BYTES, Q8_0_BYTES,
    ROWS,
};
#[cfg(target_arch = "aarch64")]
use super::neon::{base as neon_base, dotprod as neon_dotprod, i8mm as neon_i8mm};
#[cfg(target_arch = "aarch64")]
use super::Level;
use super::{check_shape, quantize, quantize_q8_0, scalar, Isa, KernelError, Kernels};
use std::mem::MaybeUninit;

/// Activation rows per micro-kernel call, at most: the AVX-512 kernels keep eight rows'
/// accumulators in registers; with sixteen 256-bit or 128-bit registers the others take four.
const TILE: usize = 8;

/// Activation rows per micro-kernel call on a path.
fn tile_rows(kernels: Kernels) -> usize {
    match kernels.isa() {
        Isa::Avx512 => TILE,
        _ => 4,
    }
}

/// Super-blocks per pass over `k`: a tile of activation rows over this span stays in L1.
const KBLOCKS: usize = 8;
/// Interleaved groups (of [`ROWS`] rows) per unit of prefill work.
const GROUPS: usize = 2;

/// The interleaved formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Sixteen Q4_K rows ([`repack_q4k`]).
    Q4Kx16,
    /// Sixteen Q6_K rows ([`repack_q6k`]).
    Q6Kx16,
    /// Sixteen Q8_0 rows ([`repack_q8_0`]).
    Q8_0x16,
}

impl Format {
    /// Bytes of one block of sixteen rows.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4Kx16 => Q4K_BYTES,
            Format::Q6Kx16 => Q6K_BYTES,
            Format::Q8_0x16 => Q8_0_BYTES,
        }
    }

    /// Values of a row in one block.
    pub fn block_values(self) -> usize {
        match self {
            Format::Q4Kx16 | Format::Q6Kx16 => QK,
            Format::Q8_0x16 => QK8_0,
        }
    }

    /// Blocks per pass over `k` in prefill: a tile of activation rows over this span (2048
    /// values) stays in L1.
    fn pass_blocks(self) -> usize {
        KBLOCKS * QK / self.block_values()
    }
}

/// `dst = lhs · Wᵀ` for `lhs` (m, k) row-major F32 and `w` holding `n` rows of `k` values in
/// an interleaved layout; `dst` is (m, n) row-major. Work is split over candle's thread pool.
pub fn matmul(
    kernels: Kernels,
    format: Format,
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    w: &[u8],
    dst: &mut [f32],
) -> Result<(), KernelError> {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the product only writes floats.
    let dst = unsafe {
        std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut MaybeUninit<f32>, dst.len())
    };
    matmul_many_uninit(kernels, (m, k), lhs, &mut [Product { format, n, w, dst }])
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
    kernels: Kernels,
    (m, k): (usize, usize),
    lhs: &[f32],
    products: &mut [Product],
) -> Result<(), KernelError> {
    for p in products.iter() {
        check((m, k, p.n), (lhs.len(), p.dst.len()), (p.format, p.w))?;
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
    let q = Quantized::new(kernels, lhs, (m, k), &formats);
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
            let nb = k / format.block_values();
            // SAFETY: the sizes were checked above; each unit writes only its own columns of
            // its product's `dst`, so concurrent workers never touch the same element.
            unsafe {
                run_unit(
                    kernels,
                    format,
                    gs,
                    (m, nb, n),
                    q,
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
) -> Result<usize, KernelError> {
    if !n.is_multiple_of(ROWS) {
        return Err(KernelError::Size {
            what: "weight rows (a multiple of 16)",
            found: n,
            expected: n.next_multiple_of(ROWS),
            m,
            k,
            n,
        });
    }
    check_shape((m, k, n), (lhs, dst), w.len(), |_| {
        n / ROWS * (k / format.block_values()) * format.block_bytes()
    })
}

/// The activations, quantized once for every product that reads them: as Q8_K with the block
/// sums of the Q4_K and the Q6_K offset terms for k-quant weights, as Q8_0 for Q8_0 weights.
struct Quantized {
    act: Vec<Q8K>,
    q4_sums: Vec<[i16; 16]>,
    q6_sums: Vec<[i16; 16]>,
    act8: Vec<Q8x32>,
}

/// Where one activation row's blocks start, in the form a format's micro-kernel reads.
#[derive(Clone, Copy)]
enum Act {
    /// Q8_K blocks and the sums the format's offset term multiplies.
    K(*const Q8K, *const [i16; 16]),
    /// Q8_0 blocks.
    Q8(*const Q8x32),
}

impl Quantized {
    /// Quantizes `lhs` (m, k) once for products in `formats`; what no format among them reads
    /// stays empty.
    fn new(kernels: Kernels, lhs: &[f32], (m, k): (usize, usize), formats: &[Format]) -> Self {
        let has = |f: Format| formats.contains(&f);
        let act = if has(Format::Q4Kx16) || has(Format::Q6Kx16) {
            quantize(kernels, lhs, m, k)
        } else {
            Vec::new()
        };
        let q4_sums = if has(Format::Q4Kx16) {
            act.iter().map(q4k_sums).collect()
        } else {
            Vec::new()
        };
        // Q6_K's offset multiplies the Q8_K block's own sums of 16.
        let q6_sums = if has(Format::Q6Kx16) {
            act.iter().map(|a| a.bsums).collect()
        } else {
            Vec::new()
        };
        let act8 = if has(Format::Q8_0x16) {
            quantize_q8_0(kernels, lhs, m, k)
        } else {
            Vec::new()
        };
        Self {
            act,
            q4_sums,
            q6_sums,
            act8,
        }
    }

    /// Activation block `i` (row-major over rows of blocks) as `format`'s kernel reads it.
    ///
    /// # Safety
    /// `i` must lie inside the activations quantized for `format`.
    unsafe fn at(&self, format: Format, i: usize) -> Act {
        match format {
            Format::Q4Kx16 => Act::K(self.act.as_ptr().add(i), self.q4_sums.as_ptr().add(i)),
            Format::Q6Kx16 => Act::K(self.act.as_ptr().add(i), self.q6_sums.as_ptr().add(i)),
            Format::Q8_0x16 => Act::Q8(self.act8.as_ptr().add(i)),
        }
    }
}

/// `dst = silu(lhs · Gᵀ) · (lhs · Uᵀ)`, elementwise: a feed-forward block's gate and up
/// products and its activation in one pass. `gate` and `up` hold `n` rows of `k` values each,
/// `dst` is (m, n). A unit computes a tile of both products into buffers on its stack and
/// writes only the activation, so the two (m, n) products never go through memory: for a
/// 256-token chunk they are 22 MB a layer, written, then read back by a separate pass.
pub fn swiglu_uninit(
    kernels: Kernels,
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    [gate, up]: [(Format, &[u8]); 2],
    dst: &mut [MaybeUninit<f32>],
) -> Result<(), KernelError> {
    check((m, k, n), (lhs.len(), dst.len()), gate)?;
    check((m, k, n), (lhs.len(), dst.len()), up)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        // silu(0) · 0.
        dst.fill(MaybeUninit::new(0.0));
        return Ok(());
    }
    let q = Quantized::new(kernels, lhs, (m, k), &[gate.0, up.0]);
    let halves = [gate, up].map(|(format, w)| (format, w.as_ptr() as usize));
    let per_unit = if m == 1 { 1 } else { GROUPS };
    let groups = n / ROWS;
    let dst_addr = dst.as_mut_ptr() as usize;
    let q = &q;
    candle_core::utils::barrier_pool().execute_chunked(groups.div_ceil(per_unit), |units| {
        let gs = units.start * per_unit..groups.min(units.end * per_unit);
        // SAFETY: the sizes were checked above; each unit writes only its own columns of
        // `dst`, so concurrent workers never touch the same element.
        unsafe { run_swiglu_unit(kernels, gs, (m, k, n), q, halves, dst_addr as *mut f32) }
    });
    Ok(())
}

/// [`swiglu_uninit`]'s work on the groups `gs`: per tile of activation rows and group, both
/// products over the whole of `k` into stack buffers, then their activation into `dst`.
///
/// # Safety
/// As [`run_unit`], for both matrices of `halves` (format, address).
unsafe fn run_swiglu_unit(
    kernels: Kernels,
    gs: std::ops::Range<usize>,
    (m, k, n): (usize, usize, usize),
    q: &Quantized,
    halves: [(Format, usize); 2],
    dst: *mut f32,
) {
    let rows = tile_rows(kernels);
    for c0 in (0..m).step_by(rows) {
        let tile = rows.min(m - c0);
        for g in gs.clone() {
            // Rows of the gate's tile, then the up's, sixteen columns each.
            // Left uninitialized: zeroing it cost more than the activation (1.6 GB of
            // stores in a 512-token prefill), and the first pass over `k` writes what is read.
            let mut buf = [const { MaybeUninit::<f32>::uninit() }; 2 * TILE * ROWS];
            for (i, &(format, w)) in halves.iter().enumerate() {
                let nb = k / format.block_values();
                let pass = if m == 1 { nb } else { format.pass_blocks() };
                for kb in (0..nb).step_by(pass) {
                    let a = q.at(format, c0 * nb + kb);
                    let wg = (w as *const u8).add((g * nb + kb) * format.block_bytes());
                    let out = buf.as_mut_ptr().add(i * TILE * ROWS) as *mut f32;
                    kernel(
                        kernels,
                        format,
                        tile,
                        wg,
                        a,
                        (nb, pass.min(nb - kb)),
                        (out, ROWS, kb > 0),
                        m <= rows,
                    );
                }
            }
            // The first `tile` rows of each half: those the kernels above wrote.
            let half = |i: usize| {
                let at = buf.as_ptr().add(i * TILE * ROWS) as *const f32;
                std::slice::from_raw_parts(at, tile * ROWS)
            };
            let mut h = [const { MaybeUninit::<f32>::uninit() }; TILE * ROWS];
            crate::swiglu::apply(kernels, half(0), half(1), &mut h[..tile * ROWS]);
            for (c, row) in h[..tile * ROWS].chunks_exact(ROWS).enumerate() {
                let to = dst.add((c0 + c) * n + g * ROWS);
                std::ptr::copy_nonoverlapping(row.as_ptr() as *const f32, to, ROWS);
            }
        }
    }
}

/// One micro-kernel call: `tile` (1..=[`tile_rows`]) activation rows against the group at
/// `w`, over `count` blocks, into `out[c·stride + r]` (added to it when `add`). `stream`:
/// the product has one tile of rows, so its weights come from memory once (decoding); the
/// paths that read ahead then do.
///
/// # Safety
/// `w` must hold `count` blocks of `format`, `a` `tile` rows of `nb` blocks of the activations
/// `format` reads, `out` `tile` rows of `stride`.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    kernels: Kernels,
    format: Format,
    tile: usize,
    w: *const u8,
    a: Act,
    (nb, count): (usize, usize),
    (out, stride, add): (*mut f32, usize, bool),
    stream: bool,
) {
    macro_rules! on {
        ($isa:ident, $c:expr) => {
            match (format, a) {
                (Format::Q4Kx16, Act::K(a, s)) => {
                    $isa::q4kx16::<{ $c }>(w as _, (a, s), (nb, count), (out, stride, add))
                }
                (Format::Q6Kx16, Act::K(a, s)) => {
                    $isa::q6kx16::<{ $c }>(w as _, (a, s), (nb, count), (out, stride, add))
                }
                (Format::Q8_0x16, Act::Q8(a)) => {
                    $isa::q8_0x16::<{ $c }>(w as _, a, (nb, count), (out, stride, add))
                }
                _ => unreachable!("activations quantized for another format"),
            }
        };
    }
    // Paths that take four rows at most get only those sizes compiled.
    macro_rules! up_to_4 {
        ($isa:ident) => {
            match tile {
                1 => on!($isa, 1),
                2 => on!($isa, 2),
                3 => on!($isa, 3),
                _ => on!($isa, 4),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    macro_rules! up_to_8 {
        ($isa:ident) => {
            match tile {
                1 => on!($isa, 1),
                2 => on!($isa, 2),
                3 => on!($isa, 3),
                4 => on!($isa, 4),
                5 => on!($isa, 5),
                6 => on!($isa, 6),
                7 => on!($isa, 7),
                _ => on!($isa, 8),
            }
        };
    }
    // Only the x86 paths have kernels that read ahead.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = stream;
    // `kernels` is only made for an ISA the CPU has, which is what the micro-kernels need.
    match kernels.isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if stream => up_to_8!(avx512_streaming),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => up_to_8!(avx512),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if stream => up_to_4!(avx2_streaming),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => up_to_4!(avx2),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => match kernels.level() {
            Level::I8mm => up_to_4!(neon_i8mm),
            Level::Dotprod => up_to_4!(neon_dotprod),
            Level::Base => up_to_4!(neon_base),
        },
        _ => up_to_4!(scalar),
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
    kernels: Kernels,
    format: Format,
    gs: std::ops::Range<usize>,
    (m, nb, n): (usize, usize, usize),
    q: &Quantized,
    (w, dst): (*const u8, *mut f32),
) {
    let pass = if m == 1 { nb } else { format.pass_blocks() };
    let rows = tile_rows(kernels);
    // One tile: each weight block is read once, from memory.
    let stream = m <= rows;
    for kb in (0..nb).step_by(pass) {
        let count = pass.min(nb - kb);
        for c0 in (0..m).step_by(rows) {
            let tile = rows.min(m - c0);
            let a = q.at(format, c0 * nb + kb);
            for g in gs.clone() {
                let wg = w.add((g * nb + kb) * format.block_bytes());
                let out = dst.add(c0 * n + g * ROWS);
                kernel(
                    kernels,
                    format,
                    tile,
                    wg,
                    a,
                    (nb, count),
                    (out, n, kb > 0),
                    stream,
                );
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::kernels::blocks::{q4k_scales_mins, Q4K};
    use crate::kernels::layout16::{q4k_codes, Q4Kx16};
    use candle_core::quantized::k_quants::{self, BlockQ4K, BlockQ6K, BlockQ8_0, GgmlType};
    use rand::{Rng, SeedableRng};

    /// Random weights quantized with candle's `T`, as GGUF bytes.
    pub(in crate::kernels) fn weights<T: GgmlType>(n: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Rows of different magnitudes, so block scales and mins differ between rows.
        let vals: Vec<f32> = (0..n * k)
            .map(|i| {
                rng.gen_range(-1.0..1.0) * (1.0 + (i / k % 5) as f32) + 0.1 * (i / k % 3) as f32
            })
            .collect();
        let mut blocks = vec![T::zeros(); n * k / T::BLCK_SIZE];
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

    pub(in crate::kernels) fn q4k_weights(n: usize, k: usize, seed: u64) -> Vec<u8> {
        weights::<BlockQ4K>(n, k, seed)
    }

    /// Random weights of `n` rows in `format`, repacked to the interleaved layout.
    pub(in crate::kernels) fn packed(format: Format, n: usize, k: usize, seed: u64) -> Vec<u8> {
        let w = match format {
            Format::Q4Kx16 => q4k_weights(n, k, seed),
            Format::Q6Kx16 => weights::<BlockQ6K>(n, k, seed),
            Format::Q8_0x16 => weights::<BlockQ8_0>(n, k, seed),
        };
        let mut packed = vec![0u8; w.len()];
        match format {
            Format::Q4Kx16 => repack_q4k(&w, n, k, &mut packed),
            Format::Q6Kx16 => repack_q6k(&w, n, k, &mut packed),
            Format::Q8_0x16 => repack_q8_0(&w, n, k, &mut packed),
        }
        .unwrap();
        packed
    }

    pub(in crate::kernels) fn activations(m: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..m * k)
            .map(|i| rng.gen_range(-1.0..1.0) * if i % 7 == 0 { 8.0 } else { 1.0 })
            .collect()
    }

    pub(in crate::kernels) fn as_blocks<T>(bytes: &[u8]) -> &[T] {
        assert!((bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
        // SAFETY: aligned (checked) plain old data of whole blocks.
        unsafe {
            std::slice::from_raw_parts(
                bytes.as_ptr() as *const T,
                bytes.len() / std::mem::size_of::<T>(),
            )
        }
    }

    /// The scalar twins (the generic path).
    fn generic() -> Kernels {
        Kernels::new(Isa::Generic).unwrap()
    }

    /// The interleaved product on every path this CPU has against candle's on the GGUF
    /// layout, and bit for bit against the scalar twin, over shapes that cover activation
    /// tiles with tails, several passes over `k` and the one-row decode path.
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
            let mut twin = vec![f32::NAN; m * n];
            matmul(generic(), format, (m, k, n), &x, &packed, &mut twin).unwrap();
            for kernels in Kernels::variants() {
                let isa = kernels;
                let mut got = vec![f32::NAN; m * n];
                matmul(kernels, format, (m, k, n), &x, &packed, &mut got).unwrap();
                let scale = want.iter().fold(0f32, |s, v| s.max(v.abs())).max(1.0);
                for (j, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - e).abs() <= 1e-5 * scale,
                        "{isa} {format:?} ({m},{k},{n}) element {j} (row {}, col {}): got {g}, candle {e}",
                        j / n,
                        j % n
                    );
                }
                let same = got
                    .iter()
                    .zip(&twin)
                    .all(|(g, t)| g.to_bits() == t.to_bits());
                assert!(
                    same,
                    "{isa} {format:?} ({m},{k},{n}) differs from the scalar twin"
                );
                if i == 0 {
                    eprintln!("{format:?}: {isa} kernels checked");
                }
            }
        }
    }

    #[test]
    fn q4k_matches_candle_on_the_gguf_layout() {
        check::<BlockQ4K>(Format::Q4Kx16, repack_q4k);
    }

    #[test]
    fn q8_0_matches_candle_on_the_gguf_layout() {
        check::<BlockQ8_0>(Format::Q8_0x16, repack_q8_0);
    }

    #[test]
    fn q6k_matches_candle_on_the_gguf_layout() {
        check::<BlockQ6K>(Format::Q6Kx16, repack_q6k);
    }

    #[test]
    fn many_products_match_one_at_a_time() {
        for kernels in Kernels::variants() {
            many_products_on(kernels);
            eprintln!("{kernels}: several products at once checked");
        }
    }

    fn many_products_on(kernels: Kernels) {
        // A layer's query, key and value shapes with mixed formats (Q4_K_M stores some value
        // projections in Q6_K), for prefill, decode and an empty matrix.
        let k = 512;
        let mats: Vec<(Format, usize, Vec<u8>)> = [
            (Format::Q4Kx16, 64, 1),
            (Format::Q4Kx16, 16, 2),
            (Format::Q6Kx16, 32, 3),
            (Format::Q4Kx16, 0, 4),
            (Format::Q8_0x16, 48, 5),
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
            matmul_many_uninit(kernels, (m, k), &x, &mut products).unwrap();
            for ((format, n, w), got) in mats.iter().zip(&outs) {
                let mut want = vec![0f32; m * n];
                matmul(kernels, *format, (m, k, *n), &x, w, &mut want).unwrap();
                // SAFETY: every element was written (NaN markers would fail the comparison).
                let got: Vec<f32> = got.iter().map(|v| unsafe { v.assume_init() }).collect();
                assert_eq!(got, want, "{kernels} {format:?} m {m} n {n}");
            }
        }
        // A bad shape anywhere rejects the whole call.
        let mut short = vec![MaybeUninit::new(0f32); 3];
        let (format, n, w) = &mats[0];
        let err = matmul_many_uninit(
            kernels,
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
        for kernels in Kernels::variants() {
            fused_swiglu_on(kernels);
            eprintln!("{kernels}: fused SwiGLU checked");
        }
    }

    fn fused_swiglu_on(kernels: Kernels) {
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
                matmul(kernels, fg, (m, k, n), &x, &g, &mut pg).unwrap();
                matmul(kernels, fu, (m, k, n), &x, &u, &mut pu).unwrap();
                let mut want = vec![MaybeUninit::new(0f32); m * n];
                crate::swiglu::apply(kernels, &pg, &pu, &mut want);
                let mut got = vec![MaybeUninit::new(f32::NAN); m * n];
                swiglu_uninit(kernels, (m, k, n), &x, [(fg, &g), (fu, &u)], &mut got).unwrap();
                // SAFETY: all written (NaN markers would fail the comparison).
                let [got, want] =
                    [got, want].map(|v| v.iter().map(|x| unsafe { x.assume_init() }).collect());
                let (got, want): (Vec<f32>, Vec<f32>) = (got, want);
                assert_eq!(got, want, "{kernels} {fg:?}/{fu:?} m {m}");
            }
            // A matrix of the wrong size is refused, and nothing runs.
            let mut dst = vec![MaybeUninit::new(0f32); n];
            let x = activations(1, k, 1);
            let short = &u[..u.len() - 1];
            assert!(
                swiglu_uninit(kernels, (1, k, n), &x, [(fg, &g), (fu, short)], &mut dst).is_err()
            );
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
}
