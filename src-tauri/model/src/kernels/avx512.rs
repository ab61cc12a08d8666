//! AVX-512 VNNI (with VBMI's byte permutes) micro-kernels: one interleaved group of 16 weight
//! rows against `C` activation rows, and the Q8_K quantizer.

#![allow(clippy::needless_range_loop)]

use super::blocks::{Q8x32, Q8K, QK};
use super::layout16::{Q4Kx16, Q6Kx16, Q8_0x16, PREFETCH_BLOCKS};
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
    a: (*const Q8K, *const [i16; 16]),
    blocks: (usize, usize),
    out: (*mut f32, usize, bool),
) {
    q4kx16_reading::<C, false>(w, a, blocks, out)
}

/// [`q4kx16`], asking for the next weight block ahead when `STREAM` (see [`streaming`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
unsafe fn q4kx16_reading<const C: usize, const STREAM: bool>(
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
            if STREAM {
                // The next block's 36 lines, five a step over the eight steps (past the
                // matrix's end the hint reads nothing: prefetches do not fault).
                let next = w.wrapping_add(b + PREFETCH_BLOCKS) as *const i8;
                for l in 5 * s..(5 * s + 5).min(size_of::<Q4Kx16>() / 64) {
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(64 * l));
                }
            }
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
    a: (*const Q8K, *const [i16; 16]),
    blocks: (usize, usize),
    out: (*mut f32, usize, bool),
) {
    q6kx16_reading::<C, false>(w, a, blocks, out)
}

/// [`q6kx16`], asking for the next weight block ahead when `STREAM` (see [`streaming`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
unsafe fn q6kx16_reading<const C: usize, const STREAM: bool>(
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
            if STREAM {
                // A block is 52.5 lines: seven per step cover it. Past the matrix's end
                // the hint reads nothing (prefetches do not fault).
                let next = (w.wrapping_add(b + PREFETCH_BLOCKS) as *const i8).wrapping_add(448 * p);
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
                    wq[t] =
                        _mm512_or_si512(_mm512_and_si512(nib, low), _mm512_and_si512(bits, top));
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

/// Q8_0 on sixteen rows: `(Σ w·a)·d_w·d_a` per block of 32, for `C` activation rows × the
/// group's 16 rows, over `count` blocks, stored into `out[c·n + r]` (added to it when `add`).
/// `vpdpbusd` wants unsigned weights: the codes are offset by 128 (a flipped sign bit) once
/// per block, and the `128·Σa` that adds is taken off with the activation block's sum.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
pub(super) unsafe fn q8_0x16<const C: usize>(
    w: *const Q8_0x16,
    a: *const Q8x32,
    (nb, count): (usize, usize),
    (out, n, add): (*mut f32, usize, bool),
) {
    let flip = _mm512_set1_epi8(i8::MIN);
    let mut facc = [_mm512_setzero_ps(); C];
    for b in 0..count {
        let blk = &*w.add(b);
        let wq: [__m512i; 8] = std::array::from_fn(|t| {
            _mm512_xor_si512(
                _mm512_loadu_si512(blk.qs.as_ptr().add(64 * t) as *const _),
                flip,
            )
        });
        let dv = _mm512_cvtph_ps(_mm256_loadu_si256(blk.d.as_ptr() as *const _));
        for c in 0..C {
            let ab = &*a.add(c * nb + b);
            let q = ab.qs.as_ptr() as *const i32;
            let mut d = [_mm512_setzero_si512(); 2];
            for t in 0..8 {
                let y = _mm512_set1_epi32(q.add(t).read_unaligned());
                d[t % 2] = _mm512_dpbusd_epi32(d[t % 2], wq[t], y);
            }
            let isum = _mm512_sub_epi32(
                _mm512_add_epi32(d[0], d[1]),
                _mm512_set1_epi32(128 * ab.sum),
            );
            let t = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), dv);
            facc[c] = _mm512_fmadd_ps(t, _mm512_set1_ps(ab.d), facc[c]);
        }
    }
    store_rows(&facc, out, n, add);
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

/// The same kernels for products whose weights stream from memory once: decoding, one
/// activation row or a batch's few (a single tile). They ask for the next weight block while
/// working on this one, as AVX2's do (`avx2::streaming`); without that the stream stalls
/// between blocks. Prefill reuses each block across many tiles from the cache and takes the
/// plain kernels. Figures in doc/benchmarks.md.
pub(super) mod streaming {
    use super::*;

    /// [`super::q4kx16`] reading ahead.
    ///
    /// # Safety
    /// As for [`super::q4kx16`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
    pub(in super::super) unsafe fn q4kx16<const C: usize>(
        w: *const Q4Kx16,
        a: (*const Q8K, *const [i16; 16]),
        blocks: (usize, usize),
        out: (*mut f32, usize, bool),
    ) {
        q4kx16_reading::<C, true>(w, a, blocks, out)
    }

    /// [`super::q6kx16`] reading ahead.
    ///
    /// # Safety
    /// As for [`super::q6kx16`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
    pub(in super::super) unsafe fn q6kx16<const C: usize>(
        w: *const Q6Kx16,
        a: (*const Q8K, *const [i16; 16]),
        blocks: (usize, usize),
        out: (*mut f32, usize, bool),
    ) {
        q6kx16_reading::<C, true>(w, a, blocks, out)
    }

    /// [`super::q8_0x16`] as it is.
    ///
    /// # Safety
    /// As for [`super::q8_0x16`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
    pub(in super::super) unsafe fn q8_0x16<const C: usize>(
        w: *const Q8_0x16,
        a: *const Q8x32,
        blocks: (usize, usize),
        out: (*mut f32, usize, bool),
    ) {
        super::q8_0x16::<C>(w, a, blocks, out)
    }
}
