//! AVX-512 VNNI micro-kernels on the GGUF block layout: `R` weight rows × `C` activation rows
//! over all super-blocks (prefill), and `R` weight rows against one activation row (decode).

// The micro-kernels index several per-row and per-column register arrays in step.
#![allow(clippy::needless_range_loop)]

use super::blocks::{Q4K, Q6K, Q8K, QK};
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
            let qh =
                _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.qh.as_ptr().add(32 * h) as *const _));
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
unsafe fn reduce<const R: usize, const C: usize>(acc: &[[__m512; C]; R], out: &mut [[f32; C]; R]) {
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
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * ab.d), acc[r]);
        }
    }
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = hsum(acc[r]);
    }
    out
}

const _: () = assert!(QK == 256);
