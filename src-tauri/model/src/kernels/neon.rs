//! AArch64 NEON micro-kernels on the sixteen-row layout, the Q8_K quantizer, and the F16 to
//! F32 conversion of the attention's cache rows.
//!
//! A 64-byte run of the layout holds four values of sixteen rows; its four 16-byte quarters
//! are rows 0–3, 4–7, 8–11 and 12–15, one 128-bit register each, and the kernels walk the
//! quarters one after the other (as the AVX2 kernels walk two halves). Three variants share
//! one body and differ only in how a quarter's codes meet the activations ([`Products`]):
//! - [`dotprod`] (`sdot`, ARMv8.2 FEAT_DotProd): one instruction adds each of the quarter's
//!   four rows' products with a 4-byte activation run taken from a lane of a register, so a
//!   row's sum stays in its own dword, as `vpdpbusd` does on AVX-512.
//! - [`i8mm`] (`smmla`, ARMv8.6 FEAT_I8MM), for two activation rows or more: a row's low- and
//!   high-nibble runs zipped are eight consecutive values, and one instruction multiplies
//!   two weight rows' eight values by two activation rows' (a 2×2 block of sums), so half
//!   as many multiply instructions as `sdot` for the same products, plus the zips. One
//!   activation row (decoding) takes the `sdot` kernels.
//! - [`base`] (any ARMv8: Cortex-A53, the Raspberry Pi 4's A72): `smull`/`smlal` products in
//!   16 bits, folded into dwords by pairwise adds once per sub-block.
//!
//! K-quant codes are unsigned (0..16 for Q4_K, 0..64 for Q6_K) but fit the signed bytes these
//! instructions take (Q8_0's are signed bytes already); Q6_K's codes have 32 taken off first,
//! so its offset needs no sum of its own (Σ sc·Σ (q − 32)·y is the scalar twin's
//! `isum − 32·osum`, exactly). The integer sums
//! are exact and the float work per super-block follows the scalar twin (`scalar.rs`)
//! operation for operation (`fmla`/`fmls` are fused, as `f32::mul_add` is), so every variant
//! gives the scalar twin's bits.
//!
//! `sdot` and `smmla` are not stable as intrinsics in this Rust, so they are inline assembly,
//! in functions that enable the matching target feature. The variants' speeds are unmeasured:
//! no ARM machine was available, and timings under qemu say nothing about real cores.

#![allow(clippy::needless_range_loop)]

use super::blocks::{Q8x32, Q8K, QK};
use super::layout16::{Q4Kx16, Q6Kx16, Q8_0x16};
use core::arch::asm;
use half::f16;
use std::arch::aarch64::*;

/// How a quarter's codes meet the activations: one implementation per variant.
trait Products {
    /// For `C` activation rows (at most 4): `iacc[c] += sc · Σ_t w[t]·a[c][4t..4t + 4]` per
    /// weight row of the quarter, where run `w[t]` holds four codes of each of the four rows
    /// and `a[c]` points at `4·R` activations. `sc` holds the four rows' scales. The codes are
    /// k-quant codes (at most 64 in magnitude). The accumulators are in the variant's own
    /// order; [`Products::rows`] puts them in row order.
    unsafe fn scaled<const C: usize, const R: usize>(
        w: &[int8x16_t; R],
        a: &[*const i8; C],
        sc: int32x4_t,
        iacc: &mut [int32x4_t; 4],
    );

    /// As [`Products::scaled`] without a scale, for codes of any byte value (Q8_0).
    unsafe fn summed<const C: usize, const R: usize>(
        w: &[int8x16_t; R],
        a: &[*const i8; C],
        iacc: &mut [int32x4_t; 4],
    );

    /// The accumulators as one vector of the quarter's four rows per activation row.
    unsafe fn rows<const C: usize>(iacc: &[int32x4_t; 4]) -> [int32x4_t; C];
}

/// `acc += w · run L of a` per dword: `sdot` by element.
///
/// # Safety
/// The CPU must have FEAT_DotProd, and the caller must enable the `dotprod` target feature
/// (the assembler refuses `sdot` otherwise).
#[inline(always)]
unsafe fn sdot<const L: i32>(mut acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    // SAFETY: registers only; the caller guarantees the instruction exists.
    asm!(
        "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{l}]",
        acc = inout(vreg) acc,
        w = in(vreg) w,
        a = in(vreg) a,
        l = const L,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// `acc += w · aᵀ` for two rows of eight bytes each: `smmla`. Lanes of the result:
/// (w₀·a₀, w₀·a₁, w₁·a₀, w₁·a₁).
///
/// # Safety
/// The CPU must have FEAT_I8MM, and the caller must enable the `i8mm` target feature.
#[inline(always)]
unsafe fn smmla(mut acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    // SAFETY: registers only; the caller guarantees the instruction exists.
    asm!(
        "smmla {acc:v}.4s, {w:v}.16b, {a:v}.16b",
        acc = inout(vreg) acc,
        w = in(vreg) w,
        a = in(vreg) a,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// Four F16 values at `p` as F32, exactly (`fcvtl` is in every ARMv8 CPU).
#[inline(always)]
unsafe fn f16x4(p: *const u16) -> float32x4_t {
    let h = vld1_u16(p);
    let f: float32x4_t;
    // SAFETY: registers only; FCVTL (half to single) is baseline Advanced SIMD.
    asm!(
        "fcvtl {f:v}.4s, {h:v}.4h",
        f = lateout(vreg) f,
        h = in(vreg) h,
        options(pure, nomem, nostack, preserves_flags)
    );
    f
}

/// The `sdot` products: one instruction a run, in two chains of accumulators.
struct Sdot;

impl Sdot {
    /// `acc + Σ_t w[t]·a[4t..4t + 4]` per row.
    #[inline(always)]
    unsafe fn dots<const R: usize>(acc: int32x4_t, w: &[int8x16_t; R], a: *const i8) -> int32x4_t {
        let (mut even, mut odd) = (acc, vdupq_n_s32(0));
        for v in 0..R / 4 {
            let y = vld1q_s8(a.add(16 * v));
            even = sdot::<0>(even, w[4 * v], y);
            odd = sdot::<1>(odd, w[4 * v + 1], y);
            even = sdot::<2>(even, w[4 * v + 2], y);
            odd = sdot::<3>(odd, w[4 * v + 3], y);
        }
        vaddq_s32(even, odd)
    }
}

impl Products for Sdot {
    #[inline(always)]
    unsafe fn scaled<const C: usize, const R: usize>(
        w: &[int8x16_t; R],
        a: &[*const i8; C],
        sc: int32x4_t,
        iacc: &mut [int32x4_t; 4],
    ) {
        for c in 0..C {
            iacc[c] = vmlaq_s32(iacc[c], Self::dots(vdupq_n_s32(0), w, a[c]), sc);
        }
    }

    #[inline(always)]
    unsafe fn summed<const C: usize, const R: usize>(
        w: &[int8x16_t; R],
        a: &[*const i8; C],
        iacc: &mut [int32x4_t; 4],
    ) {
        for c in 0..C {
            iacc[c] = Self::dots(iacc[c], w, a[c]);
        }
    }

    #[inline(always)]
    unsafe fn rows<const C: usize>(iacc: &[int32x4_t; 4]) -> [int32x4_t; C] {
        std::array::from_fn(|c| iacc[c])
    }
}

/// The baseline products: `smull`/`smlal` of a run against its activation run repeated
/// (rows 0–1 in one register, rows 2–3 in another), then pairwise adds to dwords. For
/// k-quant codes a word adds `R` products before the pairwise adds: at most 8·15·128 = 15360
/// for Q4_K, 4·32·128 = 16384 for Q6_K. Q8_0's products reach 128·128, so each is added
/// into dwords at once (`sadalp`).
struct Widen;

impl Widen {
    /// Run `t` of `a` repeated over all four dwords, for `t` = 0..4 of the vector at `a`.
    #[inline(always)]
    unsafe fn runs(a: *const i8) -> [int8x16_t; 4] {
        let y = vreinterpretq_s32_s8(vld1q_s8(a));
        [
            vreinterpretq_s8_s32(vdupq_laneq_s32::<0>(y)),
            vreinterpretq_s8_s32(vdupq_laneq_s32::<1>(y)),
            vreinterpretq_s8_s32(vdupq_laneq_s32::<2>(y)),
            vreinterpretq_s8_s32(vdupq_laneq_s32::<3>(y)),
        ]
    }
}

impl Products for Widen {
    #[inline(always)]
    unsafe fn scaled<const C: usize, const R: usize>(
        w: &[int8x16_t; R],
        a: &[*const i8; C],
        sc: int32x4_t,
        iacc: &mut [int32x4_t; 4],
    ) {
        for c in 0..C {
            let (mut lo, mut hi) = (vdupq_n_s16(0), vdupq_n_s16(0));
            for v in 0..R / 4 {
                for (t, run) in Self::runs(a[c].add(16 * v)).into_iter().enumerate() {
                    let wt = w[4 * v + t];
                    lo = vmlal_s8(lo, vget_low_s8(wt), vget_low_s8(run));
                    hi = vmlal_high_s8(hi, wt, run);
                }
            }
            let dot = vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi));
            iacc[c] = vmlaq_s32(iacc[c], dot, sc);
        }
    }

    #[inline(always)]
    unsafe fn summed<const C: usize, const R: usize>(
        w: &[int8x16_t; R],
        a: &[*const i8; C],
        iacc: &mut [int32x4_t; 4],
    ) {
        for c in 0..C {
            let (mut lo, mut hi) = (vdupq_n_s32(0), vdupq_n_s32(0));
            for v in 0..R / 4 {
                for (t, run) in Self::runs(a[c].add(16 * v)).into_iter().enumerate() {
                    let wt = w[4 * v + t];
                    lo = vpadalq_s16(lo, vmull_s8(vget_low_s8(wt), vget_low_s8(run)));
                    hi = vpadalq_s16(hi, vmull_high_s8(wt, run));
                }
            }
            iacc[c] = vaddq_s32(iacc[c], vpaddq_s32(lo, hi));
        }
    }

    #[inline(always)]
    unsafe fn rows<const C: usize>(iacc: &[int32x4_t; 4]) -> [int32x4_t; C] {
        std::array::from_fn(|c| iacc[c])
    }
}

/// The `smmla` products, for two activation rows at a time: accumulator `2p + j` holds the
/// 2×2 sums of weight rows `2j`, `2j + 1` with activation rows `2p`, `2p + 1` (an odd last
/// row is paired with itself).
struct Smmla;

impl Smmla {
    /// `acc[2p + j]` plus the 2×2 sums above, for each pair `p` of activation rows.
    #[inline(always)]
    unsafe fn dots<const C: usize, const R: usize>(
        mut acc: [int32x4_t; 4],
        w: &[int8x16_t; R],
        a: &[*const i8; C],
    ) -> [int32x4_t; 4] {
        // Eight consecutive values (runs 2h and 2h + 1) of rows 0–1 and of rows 2–3.
        let mut w8 = [[vdupq_n_s8(0); 2]; 4];
        for h in 0..R / 2 {
            let (l, u) = (
                vreinterpretq_s32_s8(w[2 * h]),
                vreinterpretq_s32_s8(w[2 * h + 1]),
            );
            w8[h] = [
                vreinterpretq_s8_s32(vzip1q_s32(l, u)),
                vreinterpretq_s8_s32(vzip2q_s32(l, u)),
            ];
        }
        for p in 0..C.div_ceil(2) {
            let (a0, a1) = (a[2 * p], a[(2 * p + 1).min(C - 1)]);
            for v in 0..R / 4 {
                let y0 = vreinterpretq_s64_s8(vld1q_s8(a0.add(16 * v)));
                let y1 = vreinterpretq_s64_s8(vld1q_s8(a1.add(16 * v)));
                // The same eight values of both activation rows.
                let ys = [vzip1q_s64(y0, y1), vzip2q_s64(y0, y1)];
                for (k, y) in ys.into_iter().enumerate() {
                    for j in 0..2 {
                        let at = 2 * p + j;
                        acc[at] = smmla(acc[at], w8[2 * v + k][j], vreinterpretq_s8_s64(y));
                    }
                }
            }
        }
        acc
    }
}

impl Products for Smmla {
    #[inline(always)]
    unsafe fn scaled<const C: usize, const R: usize>(
        w: &[int8x16_t; R],
        a: &[*const i8; C],
        sc: int32x4_t,
        iacc: &mut [int32x4_t; 4],
    ) {
        // Rows' scales in the accumulators' order: (0, 0, 1, 1) and (2, 2, 3, 3).
        let scales = [vzip1q_s32(sc, sc), vzip2q_s32(sc, sc)];
        let dots = Self::dots::<C, R>([vdupq_n_s32(0); 4], w, a);
        for at in 0..2 * C.div_ceil(2) {
            iacc[at] = vmlaq_s32(iacc[at], dots[at], scales[at % 2]);
        }
    }

    #[inline(always)]
    unsafe fn summed<const C: usize, const R: usize>(
        w: &[int8x16_t; R],
        a: &[*const i8; C],
        iacc: &mut [int32x4_t; 4],
    ) {
        *iacc = Self::dots::<C, R>(*iacc, w, a);
    }

    #[inline(always)]
    unsafe fn rows<const C: usize>(iacc: &[int32x4_t; 4]) -> [int32x4_t; C] {
        std::array::from_fn(|c| {
            let (x, y) = (iacc[c / 2 * 2], iacc[c / 2 * 2 + 1]);
            if c.is_multiple_of(2) {
                vuzp1q_s32(x, y)
            } else {
                vuzp2q_s32(x, y)
            }
        })
    }
}

/// Bytes `4q..4q + 4` of `v`, widened to words.
#[inline(always)]
unsafe fn quarter_u16(v: uint8x16_t, q: usize) -> uint16x4_t {
    let half = if q < 2 {
        vmovl_u8(vget_low_u8(v))
    } else {
        vmovl_high_u8(v)
    };
    if q.is_multiple_of(2) {
        vget_low_u16(half)
    } else {
        vget_high_u16(half)
    }
}

/// Signed bytes `4q..4q + 4` of `v`, widened to dwords.
#[inline(always)]
unsafe fn quarter_s32(v: int8x16_t, q: usize) -> int32x4_t {
    let half = if q < 2 {
        vmovl_s8(vget_low_s8(v))
    } else {
        vmovl_high_s8(v)
    };
    if q.is_multiple_of(2) {
        vmovl_s16(vget_low_s16(half))
    } else {
        vmovl_high_s16(half)
    }
}

/// `Σ_s mn[s]·y[s]` over the eight sub-blocks, per row.
#[inline(always)]
unsafe fn min_sums(mn: &[int16x4_t; 8], y: int16x8_t) -> int32x4_t {
    let even = vmull_laneq_s16::<0>(mn[0], y);
    let odd = vmull_laneq_s16::<1>(mn[1], y);
    let even = vmlal_laneq_s16::<2>(even, mn[2], y);
    let odd = vmlal_laneq_s16::<3>(odd, mn[3], y);
    let even = vmlal_laneq_s16::<4>(even, mn[4], y);
    let odd = vmlal_laneq_s16::<5>(odd, mn[5], y);
    let even = vmlal_laneq_s16::<6>(even, mn[6], y);
    let odd = vmlal_laneq_s16::<7>(odd, mn[7], y);
    vaddq_s32(even, odd)
}

/// Stores (or adds, when `add`) each activation row's sixteen results into `out[c·n..]`.
#[inline(always)]
unsafe fn store_rows<const C: usize>(
    facc: &[[float32x4_t; 4]; C],
    out: *mut f32,
    n: usize,
    add: bool,
) {
    for (c, quarters) in facc.iter().enumerate() {
        for (q, &acc) in quarters.iter().enumerate() {
            let o = out.add(c * n + 4 * q);
            let v = if add {
                vaddq_f32(vld1q_f32(o), acc)
            } else {
                acc
            };
            vst1q_f32(o, v);
        }
    }
}

/// Q4_K on sixteen rows: `C` activation rows × the group's 16 rows, over `count`
/// super-blocks, stored into `out[c·n + r]` (added to it when `add`).
///
/// # Safety
/// The CPU must have what `P` uses; `w` must hold `count` blocks, `a` and `bs` `C` rows of
/// `nb` entries, `out` `C` rows of `n` floats from the group's first column.
#[inline(always)]
unsafe fn q4k<P: Products, const C: usize>(
    w: *const Q4Kx16,
    (a, bs): (*const Q8K, *const [i16; 16]),
    (nb, count): (usize, usize),
    (out, n, add): (*mut f32, usize, bool),
) {
    let low = vdupq_n_u8(0x0F);
    let top = vdupq_n_u8(0x30);
    let mut facc = [[vdupq_n_f32(0.0); 4]; C];
    for b in 0..count {
        let blk = &*w.add(b);
        let acts: [&Q8K; C] = std::array::from_fn(|c| &*a.add(c * nb + b));
        let sums: [int16x8_t; C] =
            std::array::from_fn(|c| vld1q_s16(bs.add(c * nb + b) as *const i16));
        // Scales and mins of sub-block s, rows 0..16, one byte each.
        let mut sc = [vdupq_n_u8(0); 8];
        let mut mn = [vdupq_n_u8(0); 8];
        for s in 0..8 {
            let l = vld1q_u8(blk.scales.as_ptr().add(16 * s));
            let h = vld1q_u8(blk.scales.as_ptr().add(128 + 16 * (s % 4)));
            // Top bits of scale i sit at bit 2·(i / 64) of byte 128 + i % 64, of min i four
            // bits higher: moved to bits 4–5 here.
            let (hs, hm) = if s < 4 {
                (vshlq_n_u8::<4>(h), h)
            } else {
                (vshlq_n_u8::<2>(h), vshrq_n_u8::<2>(h))
            };
            sc[s] = vorrq_u8(vandq_u8(l, low), vandq_u8(hs, top));
            mn[s] = vorrq_u8(vshrq_n_u8::<4>(l), vandq_u8(hm, top));
        }
        for q in 0..4 {
            let mut iacc = [vdupq_n_s32(0); 4];
            for s in 0..8 {
                // Run t: values 32s + 4t..32s + 4t + 4 of the quarter's four rows.
                let mut runs = [vdupq_n_s8(0); 8];
                for h in 0..4 {
                    let p = vld1q_u8(blk.qs.as_ptr().add(256 * s + 64 * h + 16 * q));
                    runs[2 * h] = vreinterpretq_s8_u8(vandq_u8(p, low));
                    runs[2 * h + 1] = vreinterpretq_s8_u8(vshrq_n_u8::<4>(p));
                }
                let ys: [*const i8; C] = std::array::from_fn(|c| acts[c].qs.as_ptr().add(32 * s));
                let scales = vreinterpretq_s32_u32(vmovl_u16(quarter_u16(sc[s], q)));
                P::scaled::<C, 8>(&runs, &ys, scales, &mut iacc);
            }
            let isum = P::rows::<C>(&iacc);
            let mins: [int16x4_t; 8] =
                std::array::from_fn(|s| vreinterpret_s16_u16(quarter_u16(mn[s], q)));
            let dv = f16x4(blk.d.as_ptr().add(4 * q));
            let mv = f16x4(blk.dmin.as_ptr().add(4 * q));
            for c in 0..C {
                let msum = min_sums(&mins, sums[c]);
                let t = vmulq_f32(vcvtq_f32_s32(isum[c]), dv);
                let t = vfmsq_f32(t, vcvtq_f32_s32(msum), mv);
                facc[c][q] = vfmaq_f32(facc[c][q], t, vdupq_n_f32(acts[c].d));
            }
        }
    }
    store_rows(&facc, out, n, add);
}

/// Q6_K on sixteen rows: `d·Σ_g sc_g·Σ (q − 32)·y` for `C` activation rows × the group's 16
/// rows, over `count` super-blocks, stored into `out[c·n + r]` (added to it when `add`).
///
/// # Safety
/// As for [`q4k`].
#[inline(always)]
unsafe fn q6k<P: Products, const C: usize>(
    w: *const Q6Kx16,
    (a, _): (*const Q8K, *const [i16; 16]),
    (nb, count): (usize, usize),
    (out, n, add): (*mut f32, usize, bool),
) {
    let low = vdupq_n_u8(0x0F);
    let top = vdupq_n_u8(0x30);
    let offset = vdupq_n_s8(32);
    let mut facc = [[vdupq_n_f32(0.0); 4]; C];
    for b in 0..count {
        let blk = &*w.add(b);
        let acts: [&Q8K; C] = std::array::from_fn(|c| &*a.add(c * nb + b));
        for q in 0..4 {
            let mut iacc = [vdupq_n_s32(0); 4];
            for p in 0..8 {
                let qh: [uint8x16_t; 2] = std::array::from_fn(|e| {
                    vld1q_u8(blk.qh.as_ptr().add(128 * p + 64 * e + 16 * q))
                });
                // Run t: codes less 32 of values 32p + 4t..32p + 4t + 4 of the four rows.
                let mut runs = [vdupq_n_s8(0); 8];
                for h in 0..4 {
                    let ql = vld1q_u8(blk.ql.as_ptr().add(256 * p + 64 * h + 16 * q));
                    for e in 0..2 {
                        let t = 2 * h + e;
                        let nib = if e == 0 {
                            vandq_u8(ql, low)
                        } else {
                            vshrq_n_u8::<4>(ql)
                        };
                        // The top bits of run t sit at bits 2·(t % 4) of `qh[t / 4]`.
                        let src = qh[t / 4];
                        let bits = match t % 4 {
                            0 => vshlq_n_u8::<4>(src),
                            1 => vshlq_n_u8::<2>(src),
                            2 => src,
                            _ => vshrq_n_u8::<2>(src),
                        };
                        let code = vorrq_u8(nib, vandq_u8(bits, top));
                        runs[t] = vsubq_s8(vreinterpretq_s8_u8(code), offset);
                    }
                }
                for e in 0..2 {
                    let g = 2 * p + e;
                    let ys: [*const i8; C] =
                        std::array::from_fn(|c| acts[c].qs.as_ptr().add(16 * g));
                    let scales = quarter_s32(vld1q_s8(blk.scales.as_ptr().add(16 * g)), q);
                    let group: &[int8x16_t; 4] = runs[4 * e..4 * e + 4].try_into().expect("4");
                    P::scaled::<C, 4>(group, &ys, scales, &mut iacc);
                }
            }
            let isum = P::rows::<C>(&iacc);
            let dv = f16x4(blk.d.as_ptr().add(4 * q));
            for c in 0..C {
                let t = vmulq_f32(vcvtq_f32_s32(isum[c]), dv);
                facc[c][q] = vfmaq_f32(facc[c][q], t, vdupq_n_f32(acts[c].d));
            }
        }
    }
    store_rows(&facc, out, n, add);
}

/// Q8_0 on sixteen rows: `(Σ w·a)·d_w` per block of 32 values, times the activation's
/// scale, for `C` activation rows × the group's 16 rows, over `count` blocks, stored into
/// `out[c·n + r]` (added to it when `add`).
///
/// # Safety
/// The CPU must have what `P` uses; `w` must hold `count` blocks, `a` `C` rows of `nb`
/// blocks, `out` `C` rows of `n` floats from the group's first column.
#[inline(always)]
unsafe fn q8_0<P: Products, const C: usize>(
    w: *const Q8_0x16,
    a: *const Q8x32,
    (nb, count): (usize, usize),
    (out, n, add): (*mut f32, usize, bool),
) {
    let mut facc = [[vdupq_n_f32(0.0); 4]; C];
    for b in 0..count {
        let blk = &*w.add(b);
        let acts: [&Q8x32; C] = std::array::from_fn(|c| &*a.add(c * nb + b));
        let ys: [*const i8; C] = std::array::from_fn(|c| acts[c].qs.as_ptr());
        for q in 0..4 {
            // Run t: values 4t..4t + 4 of the quarter's four rows.
            let runs: [int8x16_t; 8] =
                std::array::from_fn(|t| vld1q_s8(blk.qs.as_ptr().add(64 * t + 16 * q)));
            let mut iacc = [vdupq_n_s32(0); 4];
            P::summed::<C, 8>(&runs, &ys, &mut iacc);
            let isum = P::rows::<C>(&iacc);
            let dv = f16x4(blk.d.as_ptr().add(4 * q));
            for c in 0..C {
                let t = vmulq_f32(vcvtq_f32_s32(isum[c]), dv);
                facc[c][q] = vfmaq_f32(facc[c][q], t, vdupq_n_f32(acts[c].d));
            }
        }
    }
    store_rows(&facc, out, n, add);
}

/// The kernels for any ARMv8 CPU (no `sdot`).
pub(super) mod base {
    use super::*;

    /// Q4_K on sixteen rows with baseline NEON (see [`q4k`]).
    ///
    /// # Safety
    /// As for [`q4k`].
    pub(in crate::kernels) unsafe fn q4kx16<const C: usize>(
        w: *const Q4Kx16,
        a: (*const Q8K, *const [i16; 16]),
        nb: (usize, usize),
        out: (*mut f32, usize, bool),
    ) {
        q4k::<Widen, C>(w, a, nb, out)
    }

    /// Q6_K on sixteen rows with baseline NEON (see [`q6k`]).
    ///
    /// # Safety
    /// As for [`q4k`].
    pub(in crate::kernels) unsafe fn q6kx16<const C: usize>(
        w: *const Q6Kx16,
        a: (*const Q8K, *const [i16; 16]),
        nb: (usize, usize),
        out: (*mut f32, usize, bool),
    ) {
        q6k::<Widen, C>(w, a, nb, out)
    }

    /// Q8_0 on sixteen rows with baseline NEON (see [`q8_0`]).
    ///
    /// # Safety
    /// As for [`q8_0`].
    pub(in crate::kernels) unsafe fn q8_0x16<const C: usize>(
        w: *const Q8_0x16,
        a: *const Q8x32,
        nb: (usize, usize),
        out: (*mut f32, usize, bool),
    ) {
        q8_0::<Widen, C>(w, a, nb, out)
    }
}

/// The kernels for CPUs with the dot-product instructions.
pub(super) mod dotprod {
    use super::*;

    /// Q4_K on sixteen rows with `sdot` (see [`q4k`]).
    ///
    /// # Safety
    /// As for [`q4k`]; the CPU must have FEAT_DotProd.
    #[target_feature(enable = "dotprod")]
    pub(in crate::kernels) unsafe fn q4kx16<const C: usize>(
        w: *const Q4Kx16,
        a: (*const Q8K, *const [i16; 16]),
        nb: (usize, usize),
        out: (*mut f32, usize, bool),
    ) {
        q4k::<Sdot, C>(w, a, nb, out)
    }

    /// Q6_K on sixteen rows with `sdot` (see [`q6k`]).
    ///
    /// # Safety
    /// As for [`q4kx16`].
    #[target_feature(enable = "dotprod")]
    pub(in crate::kernels) unsafe fn q6kx16<const C: usize>(
        w: *const Q6Kx16,
        a: (*const Q8K, *const [i16; 16]),
        nb: (usize, usize),
        out: (*mut f32, usize, bool),
    ) {
        q6k::<Sdot, C>(w, a, nb, out)
    }

    /// Q8_0 on sixteen rows with `sdot` (see [`q8_0`]).
    ///
    /// # Safety
    /// As for [`q8_0`]; the CPU must have FEAT_DotProd.
    #[target_feature(enable = "dotprod")]
    pub(in crate::kernels) unsafe fn q8_0x16<const C: usize>(
        w: *const Q8_0x16,
        a: *const Q8x32,
        nb: (usize, usize),
        out: (*mut f32, usize, bool),
    ) {
        q8_0::<Sdot, C>(w, a, nb, out)
    }
}

/// The kernels for CPUs with the int8 matrix instructions (and the dot-product ones, which
/// one activation row takes).
pub(super) mod i8mm {
    use super::*;

    /// Q4_K on sixteen rows with `smmla`, or `sdot` for one activation row (see [`q4k`]).
    ///
    /// # Safety
    /// As for [`q4k`]; the CPU must have FEAT_DotProd and FEAT_I8MM.
    #[target_feature(enable = "dotprod,i8mm")]
    pub(in crate::kernels) unsafe fn q4kx16<const C: usize>(
        w: *const Q4Kx16,
        a: (*const Q8K, *const [i16; 16]),
        nb: (usize, usize),
        out: (*mut f32, usize, bool),
    ) {
        if C == 1 {
            q4k::<Sdot, C>(w, a, nb, out)
        } else {
            q4k::<Smmla, C>(w, a, nb, out)
        }
    }

    /// Q6_K on sixteen rows with `smmla`, or `sdot` for one activation row (see [`q6k`]).
    ///
    /// # Safety
    /// As for [`q4kx16`].
    #[target_feature(enable = "dotprod,i8mm")]
    pub(in crate::kernels) unsafe fn q6kx16<const C: usize>(
        w: *const Q6Kx16,
        a: (*const Q8K, *const [i16; 16]),
        nb: (usize, usize),
        out: (*mut f32, usize, bool),
    ) {
        if C == 1 {
            q6k::<Sdot, C>(w, a, nb, out)
        } else {
            q6k::<Smmla, C>(w, a, nb, out)
        }
    }

    /// Q8_0 on sixteen rows with `smmla`, or `sdot` for one activation row (see [`q8_0`]).
    ///
    /// # Safety
    /// As for [`q8_0`]; the CPU must have FEAT_DotProd and FEAT_I8MM.
    #[target_feature(enable = "dotprod,i8mm")]
    pub(in crate::kernels) unsafe fn q8_0x16<const C: usize>(
        w: *const Q8_0x16,
        a: *const Q8x32,
        nb: (usize, usize),
        out: (*mut f32, usize, bool),
    ) {
        if C == 1 {
            q8_0::<Sdot, C>(w, a, nb, out)
        } else {
            q8_0::<Smmla, C>(w, a, nb, out)
        }
    }
}

/// One block of 256 values to Q8_K, with the same results as the scalar quantizer
/// (`scalar::quantize_q8k`): the scale from the first value of largest magnitude,
/// `-127 / max`, values rounded half away from zero (`fcvtas`), block sums of 16.
///
/// # Safety
/// None beyond the target's baseline (Advanced SIMD); `unsafe` for the dispatch's sake.
pub(super) unsafe fn quantize_q8k(x: &[f32; QK], y: &mut Q8K) {
    let p = x.as_ptr();
    // `fmaxnm` skips NaNs as the scalar loop's comparisons do, and starting from zero keeps an
    // all-NaN block at zero as there.
    let mut amax = [vdupq_n_f32(0.0); 4];
    for i in 0..QK / 16 {
        for (j, m) in amax.iter_mut().enumerate() {
            *m = vmaxnmq_f32(*m, vabsq_f32(vld1q_f32(p.add(16 * i + 4 * j))));
        }
    }
    let amax = vmaxnmvq_f32(vmaxnmq_f32(
        vmaxnmq_f32(amax[0], amax[1]),
        vmaxnmq_f32(amax[2], amax[3]),
    ));
    if amax == 0.0 {
        y.d = 0.0;
        y.qs.fill(0);
        y.bsums.fill(0);
        return;
    }
    let at = x.iter().position(|v| v.abs() == amax).unwrap_or(0);
    let iscale = -127.0 / x[at];
    let sv = vdupq_n_f32(iscale);
    for g in 0..QK / 16 {
        let q: [int32x4_t; 4] = std::array::from_fn(|j| {
            vcvtaq_s32_f32(vmulq_f32(sv, vld1q_f32(p.add(16 * g + 4 * j))))
        });
        // Saturating narrows clamp to −128..127 as the scalar `clamp` does.
        let words = [
            vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1])),
            vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3])),
        ];
        let bytes = vcombine_s8(vqmovn_s16(words[0]), vqmovn_s16(words[1]));
        vst1q_s8(y.qs.as_mut_ptr().add(16 * g), bytes);
        y.bsums[g] = vaddlvq_s8(bytes);
    }
    y.d = 1.0 / iscale;
}

/// F16 to F32, eight values per pair of `fcvtl`, which every ARMv8 CPU has. (`half` converts
/// with it only where the CPU also has FP16 arithmetic, FEAT_FP16, and bit by bit in software
/// elsewhere, such as on the Raspberry Pi 4's Cortex-A72.)
///
/// # Panics
/// If the slices' lengths differ (as `half`'s conversion does).
pub(crate) fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_to_f32: lengths differ");
    let mut from = src.chunks_exact(8);
    let mut to = dst.chunks_exact_mut(8);
    for (s, d) in (&mut from).zip(&mut to) {
        // SAFETY: `s` holds eight F16 (16 bytes) and `d` eight F32 (32 bytes); FCVTL/FCVTL2
        // are baseline Advanced SIMD and touch registers only.
        unsafe {
            let h = vld1q_u16(s.as_ptr() as *const u16);
            let (lo, hi): (float32x4_t, float32x4_t);
            asm!(
                "fcvtl {lo:v}.4s, {h:v}.4h",
                "fcvtl2 {hi:v}.4s, {h:v}.8h",
                lo = out(vreg) lo,
                hi = lateout(vreg) hi,
                h = in(vreg) h,
                options(pure, nomem, nostack, preserves_flags)
            );
            vst1q_f32(d.as_mut_ptr(), lo);
            vst1q_f32(d.as_mut_ptr().add(4), hi);
        }
    }
    for (s, d) in from.remainder().iter().zip(to.into_remainder()) {
        *d = s.to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::super::layout16::ROWS;
    use super::super::{scalar, Level};
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn f16_conversion_matches_half_on_every_value() {
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        // Odd lengths and offsets exercise the tail.
        for skip in [0, 3] {
            let src = &all[skip..];
            let mut got = vec![0f32; src.len()];
            f16_to_f32(src, &mut got);
            for (h, g) in src.iter().zip(&got) {
                let want = h.to_f32();
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "{:#06x}: {g} vs {want}",
                    h.to_bits()
                );
            }
        }
    }

    /// A random block's bytes, as plain old data of type `T`.
    fn random<T>(rng: &mut impl Rng) -> Box<T> {
        let mut bytes = vec![0u8; std::mem::size_of::<T>()];
        rng.fill(&mut bytes[..]);
        // SAFETY: the block types here are `repr(C)` integers throughout, so any bytes are a
        // value; read unaligned from the byte buffer.
        Box::new(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
    }

    /// F16 scales of ordinary size, so no product overflows to infinity.
    fn scales(rng: &mut impl Rng) -> [u16; ROWS] {
        std::array::from_fn(|_| f16::from_f32(rng.gen_range(-0.01..0.01)).to_bits())
    }

    /// The fill of block `i` of the activations: all 127, all −128, or left random.
    fn extreme(i: usize, qs: &mut [i8]) {
        match i % 3 {
            0 => qs.fill(127),
            1 => qs.fill(-128),
            _ => {}
        }
    }

    /// Q8_K activations at the extremes, with the block sums the format's offset multiplies
    /// (of `span` = 32 values for Q4_K, of 16 for Q6_K).
    fn q8k_activations(
        rng: &mut impl Rng,
        count: usize,
        span: usize,
    ) -> (Vec<Q8K>, Vec<[i16; 16]>) {
        let blocks: Vec<Q8K> = (0..count)
            .map(|i| {
                let mut b: Q8K = *random(rng);
                b.d = rng.gen_range(0.001..0.1);
                extreme(i, &mut b.qs);
                b
            })
            .collect();
        let sums = blocks
            .iter()
            .map(|b| {
                std::array::from_fn(|s| match b.qs.get(span * s..span * (s + 1)) {
                    Some(run) => run.iter().map(|&q| i16::from(q)).sum(),
                    None => 0,
                })
            })
            .collect();
        (blocks, sums)
    }

    /// A micro-kernel taking activations `A`.
    type Kernel<W, A> = unsafe fn(*const W, A, (usize, usize), (*mut f32, usize, bool));

    /// Each variant's kernel for 1..=4 activation rows against the scalar twin, bit for bit,
    /// on blocks of random bytes, the largest codes and the most negative activations
    /// included (the baseline's 16-bit sums are at their limits there). `act` holds four
    /// rows of `blocks.len()` activation blocks.
    fn check<W, A: Copy>(
        name: &str,
        (blocks, act): (&[W], A),
        variants: [(Level, [Kernel<W, A>; 4]); 3],
        twin: [Kernel<W, A>; 4],
    ) {
        let nb = blocks.len();
        let run = |kernel: Kernel<W, A>, add: bool| {
            let mut out = vec![0.5f32; 4 * ROWS];
            // SAFETY: `blocks` holds `nb` blocks, `act` four rows of `nb`, the output four
            // rows of sixteen; the kernels run are those of levels this CPU has.
            unsafe {
                kernel(
                    blocks.as_ptr(),
                    act,
                    (nb, nb),
                    (out.as_mut_ptr(), ROWS, add),
                )
            };
            out
        };
        let variants: Vec<_> = variants.into_iter().filter(|(l, _)| l.cpu_has()).collect();
        for c in 1..=4 {
            for add in [false, true] {
                let want = run(twin[c - 1], add);
                for (level, kernels) in &variants {
                    let got = run(kernels[c - 1], add);
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(g, w)| g.to_bits() == w.to_bits());
                    let variant = level.name();
                    assert!(
                        same,
                        "{name} neon+{variant} C={c} add={add}: {got:?} vs {want:?}"
                    );
                }
            }
        }
        let names: Vec<&str> = variants.iter().map(|(l, _)| l.name()).collect();
        eprintln!(
            "{name}: neon+{{{}}} match the scalar twin",
            names.join(", ")
        );
    }

    macro_rules! sizes {
        ($m:ident, $f:ident) => {
            [$m::$f::<1>, $m::$f::<2>, $m::$f::<3>, $m::$f::<4>]
        };
    }

    macro_rules! variants {
        ($f:ident) => {
            [
                (Level::Base, sizes!(base, $f)),
                (Level::Dotprod, sizes!(dotprod, $f)),
                (Level::I8mm, sizes!(i8mm, $f)),
            ]
        };
    }

    #[test]
    fn q4k_variants_match_the_scalar_twin_at_the_extremes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let blocks: Vec<Q4Kx16> = (0..3)
            .map(|i| {
                let mut b: Q4Kx16 = *random(&mut rng);
                (b.d, b.dmin) = (scales(&mut rng), scales(&mut rng));
                if i == 0 {
                    // Every code 15, every scale and min 63.
                    b.qs.fill(0xFF);
                    b.scales.fill(0xFF);
                }
                b
            })
            .collect();
        let (act, sums) = q8k_activations(&mut rng, 4 * blocks.len(), 32);
        let act = (act.as_ptr(), sums.as_ptr());
        check(
            "Q4_K",
            (&blocks, act),
            variants!(q4kx16),
            sizes!(scalar, q4kx16),
        );
    }

    #[test]
    fn q6k_variants_match_the_scalar_twin_at_the_extremes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let blocks: Vec<Q6Kx16> = (0..3)
            .map(|i| {
                let mut b: Q6Kx16 = *random(&mut rng);
                b.d = scales(&mut rng);
                match i {
                    // Every code 0 (−32 once offset), every scale −128.
                    0 => {
                        b.ql.fill(0);
                        b.qh.fill(0);
                        b.scales.fill(-128);
                    }
                    // Every code 63, every scale 127.
                    1 => {
                        b.ql.fill(0xFF);
                        b.qh.fill(0xFF);
                        b.scales.fill(127);
                    }
                    _ => {}
                }
                b
            })
            .collect();
        let (act, sums) = q8k_activations(&mut rng, 4 * blocks.len(), 16);
        let act = (act.as_ptr(), sums.as_ptr());
        check(
            "Q6_K",
            (&blocks, act),
            variants!(q6kx16),
            sizes!(scalar, q6kx16),
        );
    }

    #[test]
    fn q8_0_variants_match_the_scalar_twin_at_the_extremes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let blocks: Vec<Q8_0x16> = (0..3)
            .map(|i| {
                let mut b: Q8_0x16 = *random(&mut rng);
                b.d = scales(&mut rng);
                // Every weight −128, then every weight 127.
                extreme(i + 1, &mut b.qs);
                b
            })
            .collect();
        let act: Vec<Q8x32> = (0..4 * blocks.len())
            .map(|i| {
                let mut b: Q8x32 = *random(&mut rng);
                b.d = rng.gen_range(0.001..0.1);
                extreme(i, &mut b.qs);
                b.sum = b.qs.iter().map(|&q| i32::from(q)).sum();
                b
            })
            .collect();
        check(
            "Q8_0",
            (&blocks, act.as_ptr()),
            variants!(q8_0x16),
            sizes!(scalar, q8_0x16),
        );
    }
}
