//! Quantized matrix products with AVX-512 VNNI, read straight from the GGUF block layout.
//!
//! The interleaved layout ([`super::interleaved`]) is faster; these kernels are for a model
//! whose prepared file could not be written or was switched off. They unpack a weight block once
//! and use it against a tile of activation rows held in L1, with 512-bit `vpdpbusd`
//! (unsigned weight codes × signed Q8_K activations) and `vpmaddwd` (the per-sub-block scales).
//! The weights' offset terms (Q4_K mins, the −32 of Q6_K codes) only need the activation's
//! per-sub-block sums, so they are one FMA per block against sums computed once per product.
//! Weights are never copied or repacked: the memory-mapped file stays the only copy. Other
//! instruction sets keep candle's products on this layout.

use super::blocks::{Format, Q8K, QK};
use super::{check_shape, quantize, Isa, KernelError, Kernels};

#[cfg(target_arch = "x86_64")]
use super::avx512_gguf;

/// `dst = lhs · Wᵀ` where `lhs` is (m, k) row-major F32, `w` holds `n` rows of `k` values in
/// the GGUF block layout of `format`, and `dst` is (m, n) row-major.
///
/// Work is split over candle's thread pool (`CANDLE_NUM_THREADS`) by groups of weight rows.
pub fn matmul(
    kernels: Kernels,
    format: Format,
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    w: &[u8],
    dst: &mut [f32],
) -> Result<(), KernelError> {
    if kernels.isa() != Isa::Avx512 {
        return Err(KernelError::Unsupported(kernels.isa()));
    }
    let nb = check_shape((m, k, n), (lhs.len(), dst.len()), w.len(), |nb| {
        n * nb * format.block_bytes()
    })?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if !(w.as_ptr() as usize).is_multiple_of(2) {
        // GGUF aligns tensor data; a caller with an odd address takes the generic path.
        return Err(KernelError::Unsupported(kernels.isa()));
    }

    if m == 1 {
        gemv(kernels, format, (k, n), lhs, w, dst);
        return Ok(());
    }

    // Passes over `k` add their partial sums into `dst`.
    dst.fill(0.0);
    let act = quantize(kernels, lhs, m, k);
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
fn gemv(
    kernels: Kernels,
    format: Format,
    (k, n): (usize, usize),
    lhs: &[f32],
    w: &[u8],
    dst: &mut [f32],
) {
    let micro = match format {
        Format::Q4K => GEMV_ROWS[0],
        Format::Q6K => GEMV_ROWS[1],
    };
    gemv_rows_of(kernels, format, (k, n), lhs, w, dst, micro)
}

pub(super) fn gemv_rows_of(
    kernels: Kernels,
    format: Format,
    (k, n): (usize, usize),
    lhs: &[f32],
    w: &[u8],
    dst: &mut [f32],
    micro: usize,
) {
    let nb = k / QK;
    let mut act = quantize(kernels, lhs, 1, k);
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
                                Format::Q4K => {
                                    avx512_gguf::q4k_gemv::<{ $r }>(wr, row_bytes, act, sums)
                                }
                                Format::Q6K => {
                                    avx512_gguf::q6k_gemv::<{ $r }>(wr, row_bytes, act, neg)
                                }
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
            Format::Q4K => avx512_gguf::q4k::<R, C>(
                self.w,
                self.row_bytes,
                self.a,
                self.sa,
                (self.nb, self.count),
                &mut out,
            ),
            Format::Q6K => avx512_gguf::q6k::<R, C>(
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{self, BlockQ4K, BlockQ6K, GgmlType};
    use rand::{Rng, SeedableRng};

    /// Random weights quantized with candle, as raw GGUF bytes.
    pub(in crate::kernels) fn weights<T: GgmlType>(
        n: usize,
        k: usize,
        rng: &mut rand::rngs::StdRng,
    ) -> Vec<T> {
        let vals: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut blocks = vec![T::zeros(); n * k / QK];
        T::from_float(&vals, &mut blocks);
        blocks
    }

    pub(in crate::kernels) fn bytes<T>(blocks: &[T]) -> &[u8] {
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
        matmul(
            avx512().unwrap(),
            format,
            (m, k, n),
            &x,
            bytes(&w),
            &mut got,
        )
        .unwrap();
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

    /// The AVX-512 path, where the CPU has it.
    fn avx512() -> Option<Kernels> {
        Kernels::new(Isa::Avx512).ok()
    }

    #[test]
    fn q4k_matches_candle() {
        if avx512().is_none() {
            eprintln!("skipped: no AVX-512 VNNI");
            return;
        }
        for (i, &shape) in SHAPES.iter().enumerate() {
            check::<BlockQ4K>(Format::Q4K, shape, 40 + i as u64);
        }
    }

    #[test]
    fn q6k_matches_candle() {
        if avx512().is_none() {
            eprintln!("skipped: no AVX-512 VNNI");
            return;
        }
        for (i, &shape) in SHAPES.iter().enumerate() {
            check::<BlockQ6K>(Format::Q6K, shape, 60 + i as u64);
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let Some(kernels) = avx512() else {
            return;
        };
        let mut dst = vec![0f32; 4];
        assert_eq!(
            matmul(
                kernels,
                Format::Q4K,
                (2, 100, 2),
                &[0.0; 200],
                &[],
                &mut dst
            ),
            Err(KernelError::Features(100))
        );
        let err = matmul(
            kernels,
            Format::Q6K,
            (2, 256, 2),
            &[0.0; 512],
            &[0u8; 10],
            &mut dst,
        );
        assert!(matches!(
            err,
            Err(KernelError::Size {
                what: "weight bytes",
                ..
            })
        ));
    }
}
