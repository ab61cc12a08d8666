//! AVX2 micro-kernels (x86-64-v3: AVX2, FMA, F16C) on the sixteen-row layout, and the Q8_K
//! quantizer.
//!
//! A 64-byte run of the layout holds four values of sixteen rows; its two 32-byte halves are
//! rows 0–7 and 8–15, so each half is one 256-bit vector and the kernels walk the halves one
//! after the other. Without VNNI, `vpmaddubsw` multiplies the unsigned codes by the signed
//! activations and adds pairs into 16 bits; a row's products stay in its own dword, two words
//! of it. The words of a Q4_K sub-block (eight `vpmaddubsw`, sixteen products a word, at
//! most 16·15·128 = 30720) are added in 16 bits, then one `vpmaddwd` against the rows'
//! scales (each in both words of its dword) gives each row's scaled sum in its dword. Q6_K
//! codes reach 63, so its words take two `vpmaddubsw` at most (4·63·128 = 32256) before
//! their `vpmaddwd`. The float work per super-block follows the scalar twin (`scalar.rs`)
//! operation for operation, so both give the same bits.

#![allow(clippy::needless_range_loop)]

use super::blocks::{Q8x32, Q8K, QK};
use super::layout16::{Q4Kx16, Q6Kx16, Q8_0x16, PREFETCH_BLOCKS};
use std::arch::x86_64::*;

/// Each dword `r` of `v` (a value that fits 16 bits) copied into both of its words, so that
/// `vpmaddwd` against two partial sums of row `r` scales and adds them.
#[inline(always)]
unsafe fn both_words(v: __m256i) -> __m256i {
    _mm256_or_si256(
        _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF)),
        _mm256_slli_epi32(v, 16),
    )
}

/// Pairs two byte vectors' first (`HI` false) or last (`HI` true) eight bytes, widened to
/// words: dword `r` of the result holds `a[r]` in its low word and `b[r]` in its high one.
#[inline(always)]
unsafe fn word_pairs<const SIGNED: bool, const HI: bool>(a: __m128i, b: __m128i) -> __m256i {
    let bytes = if HI {
        _mm_unpackhi_epi8(a, b)
    } else {
        _mm_unpacklo_epi8(a, b)
    };
    if SIGNED {
        _mm256_cvtepi8_epi16(bytes)
    } else {
        _mm256_cvtepu8_epi16(bytes)
    }
}

/// Stores (or adds, when `add`) each activation row's sixteen results into `out[c·n..]`.
#[inline(always)]
unsafe fn store_rows<const C: usize>(facc: &[[__m256; 2]; C], out: *mut f32, n: usize, add: bool) {
    for (c, halves) in facc.iter().enumerate() {
        for (hf, &acc) in halves.iter().enumerate() {
            let o = out.add(c * n + 8 * hf);
            let v = if add {
                _mm256_add_ps(_mm256_loadu_ps(o), acc)
            } else {
                acc
            };
            _mm256_storeu_ps(o, v);
        }
    }
}

/// The 4-byte run of activations at byte `at` of `q`, broadcast to all eight dwords.
#[inline(always)]
unsafe fn run_of(q: *const i8, at: usize) -> __m256i {
    _mm256_set1_epi32((q.add(at) as *const i32).read_unaligned())
}

/// Q4_K on sixteen rows: `C` activation rows × the group's 16 rows, over `count`
/// super-blocks, stored into `out[c·n + r]` (added to it when `add`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` must hold `count` blocks, `a` and `bs` `C` rows
/// of `nb` entries, `out` `C` rows of `n` floats from the group's first column.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4kx16<const C: usize>(
    w: *const Q4Kx16,
    a: (*const Q8K, *const [i16; 16]),
    blocks: (usize, usize),
    out: (*mut f32, usize, bool),
) {
    q4kx16_reading::<C, false>(w, a, blocks, out)
}

/// [`q4kx16`], asking for the next weight block ahead when `STREAM` (see [`streaming`]).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4kx16_reading<const C: usize, const STREAM: bool>(
    w: *const Q4Kx16,
    (a, bs): (*const Q8K, *const [i16; 16]),
    (nb, count): (usize, usize),
    (out, n, add): (*mut f32, usize, bool),
) {
    let low = _mm256_set1_epi8(0x0F);
    let low128 = _mm_set1_epi8(0x0F);
    let top128 = _mm_set1_epi8(0x30);
    let mut facc = [[_mm256_setzero_ps(); 2]; C];
    for b in 0..count {
        let blk = &*w.add(b);
        // Scales and mins of sub-block s, rows 0..16, one byte each.
        let mut sc = [_mm_setzero_si128(); 8];
        let mut mn = [_mm_setzero_si128(); 8];
        for s in 0..8 {
            let l = _mm_loadu_si128(blk.scales.as_ptr().add(16 * s) as *const _);
            let h = _mm_loadu_si128(blk.scales.as_ptr().add(128 + 16 * (s % 4)) as *const _);
            // Top bits of scale i sit at bit 2·(i / 64) of byte 128 + i % 64, of min i four
            // bits higher: moved to bits 4–5 here.
            let (hs, hm) = if s < 4 {
                (_mm_slli_epi16(h, 4), h)
            } else {
                (_mm_slli_epi16(h, 2), _mm_srli_epi16(h, 2))
            };
            sc[s] = _mm_or_si128(_mm_and_si128(l, low128), _mm_and_si128(hs, top128));
            mn[s] = _mm_or_si128(
                _mm_and_si128(_mm_srli_epi16(l, 4), low128),
                _mm_and_si128(hm, top128),
            );
        }
        for hf in 0..2 {
            let mut iacc = [_mm256_setzero_si256(); C];
            for s in 0..8 {
                if STREAM && hf == 0 {
                    // The next block's 36 lines, five a step over the first half's eight
                    // steps: without them the stream stalls between blocks (decode reads
                    // every weight from memory once; figures in doc/benchmarks.md).
                    let next = w.wrapping_add(b + PREFETCH_BLOCKS) as *const i8;
                    for l in 5 * s..(5 * s + 5).min(size_of::<Q4Kx16>() / 64) {
                        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(64 * l));
                    }
                }
                let mut wq = [_mm256_setzero_si256(); 8];
                for h in 0..4 {
                    let p = _mm256_loadu_si256(
                        blk.qs.as_ptr().add(256 * s + 64 * h + 32 * hf) as *const _
                    );
                    wq[2 * h] = _mm256_and_si256(p, low);
                    wq[2 * h + 1] = _mm256_and_si256(_mm256_srli_epi16(p, 4), low);
                }
                let rows = if hf == 0 {
                    sc[s]
                } else {
                    _mm_srli_si128(sc[s], 8)
                };
                let sv = both_words(_mm256_cvtepu8_epi32(rows));
                for c in 0..C {
                    let q = (*a.add(c * nb + b)).qs.as_ptr().add(32 * s);
                    let mut sum = _mm256_maddubs_epi16(wq[0], run_of(q, 0));
                    for t in 1..8 {
                        sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(wq[t], run_of(q, 4 * t)));
                    }
                    iacc[c] = _mm256_add_epi32(iacc[c], _mm256_madd_epi16(sum, sv));
                }
            }
            // Min words: vector t pairs, in dword r, the mins of sub-blocks 2t and 2t + 1.
            let mw: [__m256i; 4] = std::array::from_fn(|t| {
                if hf == 0 {
                    word_pairs::<false, false>(mn[2 * t], mn[2 * t + 1])
                } else {
                    word_pairs::<false, true>(mn[2 * t], mn[2 * t + 1])
                }
            });
            let dv = _mm256_cvtph_ps(_mm_loadu_si128(blk.d.as_ptr().add(8 * hf) as *const _));
            let mv = _mm256_cvtph_ps(_mm_loadu_si128(blk.dmin.as_ptr().add(8 * hf) as *const _));
            for c in 0..C {
                let ab = &*a.add(c * nb + b);
                let s = bs.add(c * nb + b) as *const i32;
                let y = |t: usize| _mm256_set1_epi32(s.add(t).read_unaligned());
                let m01 = _mm256_add_epi32(
                    _mm256_madd_epi16(mw[0], y(0)),
                    _mm256_madd_epi16(mw[1], y(1)),
                );
                let m23 = _mm256_add_epi32(
                    _mm256_madd_epi16(mw[2], y(2)),
                    _mm256_madd_epi16(mw[3], y(3)),
                );
                let msum = _mm256_add_epi32(m01, m23);
                let t = _mm256_mul_ps(_mm256_cvtepi32_ps(iacc[c]), dv);
                let t = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), mv, t);
                facc[c][hf] = _mm256_fmadd_ps(t, _mm256_set1_ps(ab.d), facc[c][hf]);
            }
        }
    }
    store_rows(&facc, out, n, add);
}

/// Q6_K on sixteen rows: `d·Σ_g sc_g·Σ (q − 32)·y` for `C` activation rows × the group's
/// 16 rows, over `count` super-blocks, stored into `out[c·n + r]` (added to it when `add`).
/// The −32 stays in the integer sum as `−32·Σ_g sc_g·bsum_g`.
///
/// # Safety
/// As for [`q4kx16`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q6kx16<const C: usize>(
    w: *const Q6Kx16,
    a: (*const Q8K, *const [i16; 16]),
    blocks: (usize, usize),
    out: (*mut f32, usize, bool),
) {
    q6kx16_reading::<C, false>(w, a, blocks, out)
}

/// [`q6kx16`], asking for the next weight block ahead when `STREAM` (see [`streaming`]).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6kx16_reading<const C: usize, const STREAM: bool>(
    w: *const Q6Kx16,
    (a, bs): (*const Q8K, *const [i16; 16]),
    (nb, count): (usize, usize),
    (out, n, add): (*mut f32, usize, bool),
) {
    let low = _mm256_set1_epi8(0x0F);
    let top = _mm256_set1_epi8(0x30);
    let mut facc = [[_mm256_setzero_ps(); 2]; C];
    for b in 0..count {
        let blk = &*w.add(b);
        for hf in 0..2 {
            let mut iacc = [_mm256_setzero_si256(); C];
            for p in 0..8 {
                if STREAM {
                    // A block is 52.5 lines; each of the sixteen steps asks for four of the
                    // next block's (prefetches past the matrix's end read nothing).
                    let next = (w.wrapping_add(b + PREFETCH_BLOCKS) as *const i8)
                        .wrapping_add(256 * (2 * p + hf));
                    for l in 0..4 {
                        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(64 * l));
                    }
                }
                let qh: [__m256i; 2] = std::array::from_fn(|e| {
                    _mm256_loadu_si256(blk.qh.as_ptr().add(128 * p + 64 * e + 32 * hf) as *const _)
                });
                // Codes of values 32p + 4t + i, t = 0..8, of the eight rows.
                let mut wq = [_mm256_setzero_si256(); 8];
                for h in 0..4 {
                    let ql = _mm256_loadu_si256(
                        blk.ql.as_ptr().add(256 * p + 64 * h + 32 * hf) as *const _
                    );
                    for e in 0..2 {
                        let t = 2 * h + e;
                        let nib = if e == 0 { ql } else { _mm256_srli_epi16(ql, 4) };
                        let src = qh[t / 4];
                        let bits = match t % 4 {
                            0 => _mm256_slli_epi16(src, 4),
                            1 => _mm256_slli_epi16(src, 2),
                            2 => src,
                            _ => _mm256_srli_epi16(src, 2),
                        };
                        wq[t] = _mm256_or_si256(
                            _mm256_and_si256(nib, low),
                            _mm256_and_si256(bits, top),
                        );
                    }
                }
                for e in 0..2 {
                    let g = 2 * p + e;
                    let sv = both_words(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        blk.scales.as_ptr().add(16 * g + 8 * hf) as *const _,
                    )));
                    for c in 0..C {
                        let q = (*a.add(c * nb + b)).qs.as_ptr().add(16 * g);
                        let s01 = _mm256_add_epi16(
                            _mm256_maddubs_epi16(wq[4 * e], run_of(q, 0)),
                            _mm256_maddubs_epi16(wq[4 * e + 1], run_of(q, 4)),
                        );
                        let s23 = _mm256_add_epi16(
                            _mm256_maddubs_epi16(wq[4 * e + 2], run_of(q, 8)),
                            _mm256_maddubs_epi16(wq[4 * e + 3], run_of(q, 12)),
                        );
                        let sum = _mm256_add_epi32(
                            _mm256_madd_epi16(s01, sv),
                            _mm256_madd_epi16(s23, sv),
                        );
                        iacc[c] = _mm256_add_epi32(iacc[c], sum);
                    }
                }
            }
            // Offset words: vector k pairs, in dword r, the scales of groups 2k and 2k + 1.
            let off: [__m256i; 8] = std::array::from_fn(|k| {
                let sa = _mm_loadu_si128(blk.scales.as_ptr().add(32 * k) as *const _);
                let sb = _mm_loadu_si128(blk.scales.as_ptr().add(32 * k + 16) as *const _);
                if hf == 0 {
                    word_pairs::<true, false>(sa, sb)
                } else {
                    word_pairs::<true, true>(sa, sb)
                }
            });
            let dv = _mm256_cvtph_ps(_mm_loadu_si128(blk.d.as_ptr().add(8 * hf) as *const _));
            for c in 0..C {
                let ab = &*a.add(c * nb + b);
                let s = bs.add(c * nb + b) as *const i32;
                let y = |k: usize| _mm256_set1_epi32(s.add(k).read_unaligned());
                let mut o0 = _mm256_madd_epi16(off[0], y(0));
                let mut o1 = _mm256_madd_epi16(off[1], y(1));
                for k in (2..8).step_by(2) {
                    o0 = _mm256_add_epi32(o0, _mm256_madd_epi16(off[k], y(k)));
                    o1 = _mm256_add_epi32(o1, _mm256_madd_epi16(off[k + 1], y(k + 1)));
                }
                let osum = _mm256_add_epi32(o0, o1);
                let isum = _mm256_sub_epi32(iacc[c], _mm256_slli_epi32(osum, 5));
                facc[c][hf] = _mm256_fmadd_ps(
                    _mm256_mul_ps(_mm256_cvtepi32_ps(isum), dv),
                    _mm256_set1_ps(ab.d),
                    facc[c][hf],
                );
            }
        }
    }
    store_rows(&facc, out, n, add);
}

/// Q8_0 on sixteen rows: `(Σ w·a)·d_w·d_a` per block of 32, for `C` activation rows × the
/// group's 16 rows, over `count` blocks, stored into `out[c·n + r]` (added to it when `add`).
/// `vpmaddubsw` wants one unsigned operand, so each weight vector gives its magnitudes (once
/// for all activation rows) and the activations take the weights' signs (`vpsignb`); a pair of
/// products reaches 2·128·127, so each `vpmaddubsw` is widened by `vpmaddwd` before adding.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` must hold `count` blocks, `a` `C` rows of `nb`
/// blocks, `out` `C` rows of `n` floats from the group's first column.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q8_0x16<const C: usize>(
    w: *const Q8_0x16,
    a: *const Q8x32,
    (nb, count): (usize, usize),
    (out, n, add): (*mut f32, usize, bool),
) {
    let ones = _mm256_set1_epi16(1);
    let mut facc = [[_mm256_setzero_ps(); 2]; C];
    for b in 0..count {
        let blk = &*w.add(b);
        for hf in 0..2 {
            let at = |t: usize| blk.qs.as_ptr().add(64 * t + 32 * hf) as *const __m256i;
            let mag: [__m256i; 8] =
                std::array::from_fn(|t| _mm256_abs_epi8(_mm256_loadu_si256(at(t))));
            let dv = _mm256_cvtph_ps(_mm_loadu_si128(blk.d.as_ptr().add(8 * hf) as *const _));
            for c in 0..C {
                let ab = &*a.add(c * nb + b);
                let q = ab.qs.as_ptr();
                let mut acc = [_mm256_setzero_si256(); 2];
                for t in 0..8 {
                    let signed = _mm256_sign_epi8(run_of(q, 4 * t), _mm256_loadu_si256(at(t)));
                    let pairs = _mm256_maddubs_epi16(mag[t], signed);
                    acc[t % 2] = _mm256_add_epi32(acc[t % 2], _mm256_madd_epi16(pairs, ones));
                }
                let isum = _mm256_add_epi32(acc[0], acc[1]);
                let t = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), dv);
                facc[c][hf] = _mm256_fmadd_ps(t, _mm256_set1_ps(ab.d), facc[c][hf]);
            }
        }
    }
    store_rows(&facc, out, n, add);
}

/// The sum of the eight dwords of `v`.
#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0b01_00_11_10));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0b10_11_00_01));
    _mm_cvtsi128_si32(x)
}

/// One block of 256 values to Q8_K, with the same results as the scalar quantizer
/// (`scalar::quantize_q8k`): the scale from the first value of largest magnitude,
/// `-127 / max`, values rounded half away from zero.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8k(x: &[f32; QK], y: &mut Q8K) {
    let p = x.as_ptr();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let mut amax = _mm256_setzero_ps();
    for i in 0..QK / 8 {
        amax = _mm256_max_ps(amax, _mm256_and_ps(_mm256_loadu_ps(p.add(8 * i)), abs_mask));
    }
    let m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    let amax = _mm_cvtss_f32(m);
    if amax == 0.0 || amax.is_nan() {
        y.d = 0.0;
        y.qs.fill(0);
        y.bsums.fill(0);
        return;
    }
    let target = _mm256_set1_ps(amax);
    let at = (0..QK / 8)
        .find_map(|i| {
            let v = _mm256_and_ps(_mm256_loadu_ps(p.add(8 * i)), abs_mask);
            let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, target));
            (hit != 0).then(|| 8 * i + hit.trailing_zeros() as usize)
        })
        .unwrap_or(0);
    let iscale = -127.0 / x[at];
    let sv = _mm256_set1_ps(iscale);
    let half = _mm256_set1_ps(0.5);
    let sign = _mm256_set1_ps(-0.0);
    let one = _mm256_set1_ps(1.0);
    // Dword order after the two packs, back to value order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for g in 0..QK / 32 {
        let q: [__m256i; 4] = std::array::from_fn(|j| {
            let v = _mm256_mul_ps(sv, _mm256_loadu_ps(p.add(32 * g + 8 * j)));
            // Round half away from zero, exactly: truncate, then step away from zero where
            // the dropped part is at least a half.
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
            let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, half);
            let step = _mm256_and_ps(up, _mm256_or_ps(one, _mm256_and_ps(v, sign)));
            let r = _mm256_cvttps_epi32(_mm256_add_ps(t, step));
            _mm256_max_epi32(
                _mm256_min_epi32(r, _mm256_set1_epi32(127)),
                _mm256_set1_epi32(-128),
            )
        });
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        _mm256_storeu_si256(
            y.qs.as_mut_ptr().add(32 * g) as *mut _,
            _mm256_permutevar8x32_epi32(packed, order),
        );
        y.bsums[2 * g] = hsum_epi32(_mm256_add_epi32(q[0], q[1])) as i16;
        y.bsums[2 * g + 1] = hsum_epi32(_mm256_add_epi32(q[2], q[3])) as i16;
    }
    y.d = 1.0 / iscale;
}

/// The same kernels for products whose weights stream from memory once: decoding, one
/// activation row or a batch's few (a single tile). They ask for the next weight block while
/// working on this one; without that the stream stalls between blocks (on Zen 3 one Q4_K row
/// ran 1.39× faster with it, four rows 1.26×, four Q6_K rows 2×). Prefill reuses each block
/// across many tiles from the cache, and there the extra reads cost (≈ 9 % of a Q4_K prefill
/// product): it takes the plain kernels.
pub(super) mod streaming {
    use super::*;

    /// [`super::q4kx16`] reading ahead.
    ///
    /// # Safety
    /// As for [`super::q4kx16`].
    #[target_feature(enable = "avx2,fma,f16c")]
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
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in super::super) unsafe fn q6kx16<const C: usize>(
        w: *const Q6Kx16,
        a: (*const Q8K, *const [i16; 16]),
        blocks: (usize, usize),
        out: (*mut f32, usize, bool),
    ) {
        q6kx16_reading::<C, true>(w, a, blocks, out)
    }

    /// [`super::q8_0x16`] as it is (it keeps up with the memory without reading ahead).
    ///
    /// # Safety
    /// As for [`super::q8_0x16`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in super::super) unsafe fn q8_0x16<const C: usize>(
        w: *const Q8_0x16,
        a: *const Q8x32,
        blocks: (usize, usize),
        out: (*mut f32, usize, bool),
    ) {
        super::q8_0x16::<C>(w, a, blocks, out)
    }
}
