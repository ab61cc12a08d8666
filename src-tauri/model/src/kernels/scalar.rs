//! The reference twin of every micro-kernel: plain Rust over the same layouts, with the same
//! integer sums and the same order of float operations (fused where the SIMD kernels fuse),
//! so that a SIMD kernel that is right gives the same bits. The tests compare each path's
//! kernels against these; the generic path uses them where candle has no equivalent.

#![allow(clippy::needless_range_loop)]

use super::blocks::{Q8x32, Q8K, QK, QK8_0};
use super::layout16::{Q4Kx16, Q6Kx16, Q8_0x16, ROWS};

/// One block of 256 values to Q8_K, as llama.cpp's scalar `quantize_row_q8_K` (and candle's
/// on x86) does: the scale from the first value of largest magnitude, `-127 / max`, values
/// rounded half away from zero. Written out rather than calling candle's, whose ARM version
/// picks among equal magnitudes differently.
pub(super) fn quantize_q8k(x: &[f32; QK], y: &mut Q8K) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        y.d = 0.0;
        y.qs.fill(0);
        y.bsums.fill(0);
        return;
    }
    let iscale = -127.0 / max;
    for (q, &v) in y.qs.iter_mut().zip(x) {
        *q = (iscale * v).round().clamp(-128.0, 127.0) as i8;
    }
    for (s, chunk) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
        *s = chunk.iter().map(|&q| i16::from(q)).sum();
    }
    y.d = 1.0 / iscale;
}

/// One block of 32 values to Q8_0 as llama.cpp's `quantize_row_q8_0_ref` does: scale
/// `max|x| / 127` (kept as its f16), values `x · (1 / scale)` rounded half away from zero; and
/// their sum.
pub(super) fn quantize_q8_0(x: &[f32; QK8_0], y: &mut Q8x32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in y.qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    y.d = half::f16::from_f32(d).to_f32();
    y.sum = y.qs.iter().map(|&q| i32::from(q)).sum();
}

/// The code of value `v` (0..256) of row `r` in a sixteen-row block's nibbles, stored as
/// [`Q4Kx16::qs`] and [`Q6Kx16::ql`] are: byte `256·(v / 32) + 64·h + 4·r + i` holds value
/// `32·(v / 32) + 8h + i` in its low nibble and the value 4 above in its high nibble.
#[inline(always)]
fn nibble(bytes: &[u8], r: usize, v: usize) -> i32 {
    let (s, w) = (v / 32, v % 32);
    let (h, j) = (w / 8, w % 8);
    let byte = bytes[256 * s + 64 * h + 4 * r + j % 4];
    i32::from(if j >= 4 { byte >> 4 } else { byte & 0x0F })
}

/// Scale (`min` false) or min (`min` true) `i` = `16·s + r` of a Q4_K sixteen-row block.
#[inline(always)]
fn q4k_six_bits(blk: &Q4Kx16, i: usize, min: bool) -> i32 {
    let lo = (blk.scales[i] >> (4 * usize::from(min))) & 0x0F;
    let shift = 2 * (i / 64) + 4 * usize::from(min);
    let hi = (blk.scales[128 + i % 64] >> shift) & 3;
    i32::from(lo | (hi << 4))
}

/// Stores (or adds, when `add`) each activation row's sixteen results into `out[c·n..]`.
#[inline(always)]
unsafe fn store_rows<const C: usize>(facc: &[[f32; ROWS]; C], out: *mut f32, n: usize, add: bool) {
    for (c, acc) in facc.iter().enumerate() {
        for (r, &v) in acc.iter().enumerate() {
            let o = out.add(c * n + r);
            *o = if add { *o + v } else { v };
        }
    }
}

/// Q4_K on sixteen rows, `C` activation rows, over `count` super-blocks: per block,
/// `d·Σ_s sc_s·Σ q·y − dmin·Σ_s m_s·bsum_s`, then times the activation's scale.
///
/// # Safety
/// `w` must hold `count` blocks, `a` and `bs` `C` rows of `nb` entries, `out` `C` rows of
/// `n` floats from the group's first column.
pub(super) unsafe fn q4kx16<const C: usize>(
    w: *const Q4Kx16,
    (a, bs): (*const Q8K, *const [i16; 16]),
    (nb, count): (usize, usize),
    (out, n, add): (*mut f32, usize, bool),
) {
    let mut facc = [[0f32; ROWS]; C];
    for b in 0..count {
        let blk = &*w.add(b);
        for c in 0..C {
            let ab = &*a.add(c * nb + b);
            let sums = &*bs.add(c * nb + b);
            for r in 0..ROWS {
                let (mut isum, mut msum) = (0i32, 0i32);
                for s in 0..8 {
                    let dot: i32 = (32 * s..32 * s + 32)
                        .map(|v| nibble(&blk.qs, r, v) * i32::from(ab.qs[v]))
                        .sum();
                    isum += q4k_six_bits(blk, 16 * s + r, false) * dot;
                    msum += q4k_six_bits(blk, 16 * s + r, true) * i32::from(sums[s]);
                }
                let d = half::f16::from_bits(blk.d[r]).to_f32();
                let dmin = half::f16::from_bits(blk.dmin[r]).to_f32();
                let t = isum as f32 * d;
                let t = (-(msum as f32)).mul_add(dmin, t);
                facc[c][r] = t.mul_add(ab.d, facc[c][r]);
            }
        }
    }
    store_rows(&facc, out, n, add);
}

/// Q6_K on sixteen rows, `C` activation rows, over `count` super-blocks: per block,
/// `d·Σ_g sc_g·Σ (q − 32)·y`, the −32 taken as `−32·Σ_g sc_g·bsum_g`.
///
/// # Safety
/// As for [`q4kx16`].
pub(super) unsafe fn q6kx16<const C: usize>(
    w: *const Q6Kx16,
    (a, bs): (*const Q8K, *const [i16; 16]),
    (nb, count): (usize, usize),
    (out, n, add): (*mut f32, usize, bool),
) {
    let mut facc = [[0f32; ROWS]; C];
    for b in 0..count {
        let blk = &*w.add(b);
        for c in 0..C {
            let ab = &*a.add(c * nb + b);
            let sums = &*bs.add(c * nb + b);
            for r in 0..ROWS {
                let (mut isum, mut osum) = (0i32, 0i32);
                for g in 0..16 {
                    let dot: i32 = (16 * g..16 * g + 16)
                        .map(|v| {
                            let (p, w) = (v / 32, v % 32);
                            let (e, j, i) = (w / 16, (w % 16) / 4, w % 4);
                            let top = (blk.qh[128 * p + 64 * e + 4 * r + i] >> (2 * j)) & 3;
                            let code = nibble(&blk.ql, r, v) | (i32::from(top) << 4);
                            code * i32::from(ab.qs[v])
                        })
                        .sum();
                    let sc = i32::from(blk.scales[16 * g + r]);
                    isum += sc * dot;
                    osum += sc * i32::from(sums[g]);
                }
                let d = half::f16::from_bits(blk.d[r]).to_f32();
                let t = (isum - (osum << 5)) as f32 * d;
                facc[c][r] = t.mul_add(ab.d, facc[c][r]);
            }
        }
    }
    store_rows(&facc, out, n, add);
}

/// Q8_0 on sixteen rows, `C` activation rows, over `count` blocks of 32: per block,
/// `(Σ w·a) · d_w`, then times the activation's scale.
///
/// # Safety
/// `w` must hold `count` blocks, `a` `C` rows of `nb` blocks, `out` `C` rows of `n` floats
/// from the group's first column.
pub(super) unsafe fn q8_0x16<const C: usize>(
    w: *const Q8_0x16,
    a: *const Q8x32,
    (nb, count): (usize, usize),
    (out, n, add): (*mut f32, usize, bool),
) {
    let mut facc = [[0f32; ROWS]; C];
    for b in 0..count {
        let blk = &*w.add(b);
        for c in 0..C {
            let ab = &*a.add(c * nb + b);
            for r in 0..ROWS {
                let isum: i32 = (0..QK8_0)
                    .map(|v| i32::from(blk.qs[64 * (v / 4) + 4 * r + v % 4]) * i32::from(ab.qs[v]))
                    .sum();
                let t = isum as f32 * half::f16::from_bits(blk.d[r]).to_f32();
                facc[c][r] = t.mul_add(ab.d, facc[c][r]);
            }
        }
    }
    store_rows(&facc, out, n, add);
}
