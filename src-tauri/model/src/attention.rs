//! Attention for the new tokens over the whole cache, fused into one pass per KV head and
//! query position.
//!
//! Decoding spends its attention time reading the cache: with candle's ops each step converts
//! an F16 cache to F32, runs a small matrix product per head and a separate softmax. Here the
//! query heads that share a KV head walk its keys and values once, straight from the cache
//! buffer in its own element type (F32 or F16), with the softmax in between; so the cost per
//! step is one read of the cache, and an F16 cache halves it. Prefill runs the same way, one
//! unit of work per (KV head, position), each walking only the keys it may see; this measured
//! faster than candle's masked matrix products (see doc/benchmarks.md).

use super::kernels::{Isa, Kernels};
use super::vmath::exp;
use candle_core::{CpuStorage, DType, Device, Layout, Result, Storage, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// The cache's elements as stored.
#[derive(Clone, Copy)]
enum Elems<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// One cache buffer's rows: element `(head, pos, d)` sits at `start + head·s0 + pos·s1 + d`.
#[derive(Clone, Copy)]
struct Rows<'a> {
    elems: Elems<'a>,
    start: usize,
    s0: usize,
    s1: usize,
    /// The path: AVX-512 and AVX2 convert F16 with inlined code (16 or 8 values an
    /// instruction) rather than `half`'s routine (a function chosen at run time per call).
    isa: Isa,
}

impl Rows<'_> {
    /// Rows `pos..pos + n` of `head` as F32, `buf.len() / n` values each: borrowed when the
    /// cache is F32 and its rows are adjacent, else converted or gathered into `buf`.
    #[inline(always)]
    fn rows<'b>(&'b self, head: usize, pos: usize, n: usize, buf: &'b mut [f32]) -> &'b [f32] {
        let hd = buf.len() / n;
        let at = self.start + head * self.s0 + pos * self.s1;
        if self.s1 == hd {
            return match self.elems {
                Elems::F32(v) => &v[at..at + n * hd],
                Elems::F16(v) => {
                    // One bulk conversion per block of rows.
                    self.convert(&v[at..at + n * hd], buf);
                    buf
                }
            };
        }
        for (i, out) in buf.chunks_exact_mut(hd).enumerate() {
            let at = at + i * self.s1;
            match self.elems {
                Elems::F32(v) => out.copy_from_slice(&v[at..at + hd]),
                Elems::F16(v) => self.convert(&v[at..at + hd], out),
            }
        }
        buf
    }

    /// The first `n` rows of `head` as one F16 slice, if the cache is F16 with adjacent rows.
    fn f16_rows(&self, head: usize, n: usize, hd: usize) -> Option<&[f16]> {
        let at = self.start + head * self.s0;
        match self.elems {
            Elems::F16(v) if self.s1 == hd => v.get(at..at + n * hd),
            _ => None,
        }
    }

    #[inline(always)]
    fn convert(&self, src: &[f16], dst: &mut [f32]) {
        // SAFETY (both SIMD arms): `isa` comes from a `Kernels`, made only for an ISA the CPU
        // has.
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { f16_to_f32(src, dst) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::f16_to_f32(src, dst) },
            // `fcvtl` on every ARM CPU; `half` uses it only on those with FP16 arithmetic.
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => super::kernels::f16_to_f32(src, dst),
            _ => src.convert_to_f32_slice(dst),
        }
    }
}

/// How far ahead (in F16 values) cache reads are requested: one block of 128-value rows.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = BLOCK * 128;

/// F16 to F32, 16 values an instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
#[inline]
unsafe fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        // The next block of rows, requested while this one is converted and used: the cache
        // is read once per step, from memory, and the prefetchers alone leave gaps.
        _mm_prefetch::<_MM_HINT_T0>(src.as_ptr().wrapping_add(i + PREFETCH) as *const i8);
        let h = _mm256_loadu_si256(src.as_ptr().add(i) as *const _);
        _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
        i += 16;
    }
    src[i..n].convert_to_f32_slice(&mut dst[i..n]);
}

fn rows<'a>(kernels: Kernels, storage: &'a Storage, layout: &Layout) -> Result<Rows<'a>> {
    let elems = match storage {
        Storage::Cpu(CpuStorage::F32(v)) => Elems::F32(v),
        Storage::Cpu(CpuStorage::F16(v)) => Elems::F16(v),
        _ => candle_core::bail!("attention: the cache must be F32 or F16 on the CPU"),
    };
    let &[s0, s1, s2] = layout.stride() else {
        candle_core::bail!("attention: the cache must be (heads, positions, head_dim)")
    };
    if s2 != 1 {
        candle_core::bail!("attention: cache rows must be contiguous");
    }
    Ok(Rows {
        elems,
        start: layout.start_offset(),
        s0,
        s1,
        isa: kernels.isa(),
    })
}

/// Causal grouped-query attention of `q` `(heads, seq, head_dim)` F32, the queries of the
/// last `seq` positions, over keys and values `(kv_heads, kv_len, head_dim)` (views of the
/// cache, F32 or F16): query `t` sees positions `0..=kv_len − seq + t`. Returns
/// `(seq, heads·head_dim)`.
pub fn attend(kernels: Kernels, q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let (nh, seq, hd) = q.dims3()?;
    let (nkv, kv_len, khd) = k.dims3()?;
    if v.dims3()? != (nkv, kv_len, khd) || khd != hd || nkv == 0 || nh % nkv != 0 {
        candle_core::bail!(
            "attention: queries {:?}, keys {:?} and values {:?} do not fit",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if seq > kv_len {
        candle_core::bail!("attention: {seq} queries over only {kv_len} positions");
    }
    let q = q.to_dtype(DType::F32)?.contiguous()?;
    let (qs, ql) = q.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(qv)) = &*qs else {
        candle_core::bail!("attention: queries must be F32 on the CPU")
    };
    let qv = &qv[ql.start_offset()..ql.start_offset() + nh * seq * hd];
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (kr, vr) = (rows(kernels, &ks, kl)?, rows(kernels, &vs, vl)?);
    let group = nh / nkv;
    let mut out = vec![0f32; seq * nh * hd];
    let out_addr = out.as_mut_ptr() as usize;
    let shape = Shape {
        seq,
        hd,
        kv_len,
        group,
    };
    candle_core::utils::barrier_pool().execute_chunked(nkv * seq, |units| {
        let mut scratch = Scratch::new(group, kv_len, hd);
        for u in units {
            let (h, t) = (u / seq, u % seq);
            // SAFETY: unit (h, t) writes only query heads h·group..(h+1)·group of row t.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    (out_addr as *mut f32).add(t * nh * hd + h * group * hd),
                    group * hd,
                )
            };
            let at = (h, t);
            // SAFETY (both SIMD arms): `kernels` is only made for an ISA the CPU has.
            match kernels.isa() {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe {
                    unit_avx512(&shape, qv, kr, vr, scale, at, &mut scratch, dst)
                },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { unit_avx2(&shape, qv, kr, vr, scale, at, &mut scratch, dst) },
                _ => unit(
                    &shape,
                    qv,
                    kr,
                    vr,
                    scale,
                    at,
                    &mut scratch,
                    dst,
                    kernels.isa(),
                ),
            }
        }
    });
    drop((qs, ks, vs));
    Tensor::from_vec(out, (seq, nh * hd), &Device::Cpu)
}

struct Shape {
    seq: usize,
    hd: usize,
    kv_len: usize,
    group: usize,
}

/// Per-thread buffers: the group's scores and two converted cache rows.
struct Scratch {
    scores: Vec<f32>,
    block: Vec<f32>,
}

/// Cache rows converted at a time: 64 rows of 128 values are 32 KB, which stay in L1/L2
/// between their conversion and their use.
const BLOCK: usize = 64;

impl Scratch {
    fn new(group: usize, kv_len: usize, hd: usize) -> Self {
        Self {
            scores: vec![0.0; group * kv_len],
            block: vec![0.0; BLOCK * hd],
        }
    }
}

/// The same body compiled for AVX-512, so its fixed-width loops become 512-bit vector code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn unit_avx512(
    shape: &Shape,
    qv: &[f32],
    kr: Rows,
    vr: Rows,
    scale: f32,
    at: (usize, usize),
    scratch: &mut Scratch,
    dst: &mut [f32],
) {
    unit(shape, qv, kr, vr, scale, at, scratch, dst, Isa::Avx512)
}

/// The portable body compiled for AVX2 and FMA: its fixed-width loops become 256-bit code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn unit_avx2(
    shape: &Shape,
    qv: &[f32],
    kr: Rows,
    vr: Rows,
    scale: f32,
    at: (usize, usize),
    scratch: &mut Scratch,
    dst: &mut [f32],
) {
    unit(shape, qv, kr, vr, scale, at, scratch, dst, Isa::Avx2)
}

/// Query position `t` of the query heads sharing KV head `h`: scores against every visible
/// key (each key row read once for the whole group), softmax, then the weighted sum of the
/// value rows (each read once), normalised at the end.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn unit(
    s: &Shape,
    qv: &[f32],
    kr: Rows,
    vr: Rows,
    scale: f32,
    (h, t): (usize, usize),
    scratch: &mut Scratch,
    dst: &mut [f32],
    isa: Isa,
) {
    let (hd, group) = (s.hd, s.group);
    // AVX-512's own inner loops; AVX2 has its own for F16 caches with four heads a group
    // (SmolLM3's case); every other case runs the portable loops.
    let simd = cfg!(target_arch = "x86_64") && isa == Isa::Avx512;
    #[cfg(target_arch = "x86_64")]
    let avx2 = isa == Isa::Avx2;
    let visible = s.kv_len - s.seq + t + 1;
    let query = |g: usize| {
        let qh = h * group + g;
        &qv[(qh * s.seq + t) * hd..(qh * s.seq + t + 1) * hd]
    };
    let Scratch { scores, block } = scratch;
    let wide = simd && hd.is_multiple_of(LANES);
    let mut from = 0;
    #[cfg(target_arch = "x86_64")]
    if let (true, 4, Some(k)) = (
        avx2 && hd.is_multiple_of(8),
        group,
        kr.f16_rows(h, visible, hd),
    ) {
        from = visible / 4 * 4;
        for j in (0..from).step_by(4) {
            // SAFETY: `avx2` is only set where the CPU has AVX2, FMA and F16C; 4 keys remain.
            unsafe {
                avx2::quad_scores(
                    [query(0), query(1), query(2), query(3)],
                    &k[j * hd..(j + 4) * hd],
                    scale,
                    scores,
                    visible,
                    j,
                )
            };
        }
    }
    if let (true, 4, Some(k)) = (wide, group, kr.f16_rows(h, visible, hd)) {
        from = visible / 4 * 4;
        for j in (0..from).step_by(4) {
            // SAFETY: `simd` is only set where the CPU has AVX-512; 4 keys remain.
            unsafe {
                quad_scores(
                    [query(0), query(1), query(2), query(3)],
                    &k[j * hd..(j + 4) * hd],
                    scale,
                    scores,
                    visible,
                    j,
                )
            };
        }
    }
    for j0 in (from..visible).step_by(BLOCK) {
        let n = BLOCK.min(visible - j0);
        let keys = kr.rows(h, j0, n, &mut block[..n * hd]);
        // Pairs of heads over eight keys at a time, or one head over sixteen, share one
        // reduction of sixteen partial sums.
        let paired = wide && group.is_multiple_of(2);
        let done = match (wide, paired) {
            (true, true) => n / 8 * 8,
            (true, false) => n / LANES * LANES,
            _ => 0,
        };
        if paired {
            for g in (0..group).step_by(2) {
                let (a, b) = scores[g * visible..].split_at_mut(visible);
                for c in (0..done).step_by(8) {
                    let at = j0 + c;
                    // SAFETY: `simd` is only set where the CPU has AVX-512; 8 keys remain.
                    unsafe {
                        pair_scores(
                            (query(g), query(g + 1)),
                            &keys[c * hd..(c + 8) * hd],
                            scale,
                            (&mut a[at..at + 8], &mut b[at..at + 8]),
                        )
                    };
                }
            }
        } else if done > 0 {
            for g in 0..group {
                let out = &mut scores[g * visible + j0..g * visible + j0 + done];
                for (o, k) in out
                    .chunks_exact_mut(LANES)
                    .zip(keys.chunks_exact(LANES * hd))
                {
                    // SAFETY: `simd` is only set where the CPU has AVX-512.
                    unsafe { wide_scores(query(g), k, scale, o.try_into().expect("16 keys")) };
                }
            }
        }
        for (jj, key) in keys.chunks_exact(hd).enumerate().skip(done) {
            for g in 0..group {
                scores[g * visible + j0 + jj] = dot(query(g), key) * scale;
            }
        }
    }
    let mut inv = [0f32; 64];
    let mut inv_heap;
    let inv: &mut [f32] = if group <= inv.len() {
        &mut inv[..group]
    } else {
        inv_heap = vec![0f32; group];
        &mut inv_heap
    };
    for g in 0..group {
        let row = &mut scores[g * visible..(g + 1) * visible];
        let max = lanes(row, f32::NEG_INFINITY, f32::max);
        // Three passes, each one that vectorizes: a running sum in the same loop as `exp`
        // would keep the loop scalar (float addition is not reassociated).
        for x in row.iter_mut() {
            *x = exp(*x - max);
        }
        inv[g] = 1.0 / lanes(row, 0.0, |a, b| a + b);
    }
    dst.fill(0.0);
    let f16_values = vr.f16_rows(h, visible, hd).filter(|_| group == 4);
    // SAFETY (both arms): `simd`/`avx2` are only set where the CPU has the ISA.
    let fused = match f16_values {
        Some(v) if simd && hd.is_multiple_of(SPAN) => {
            unsafe { weighted_sum_4_f16(scores, visible, v, hd, dst) };
            true
        }
        #[cfg(target_arch = "x86_64")]
        Some(v) if avx2 && hd.is_multiple_of(avx2::SPAN) => {
            unsafe { avx2::weighted_sum_4_f16(scores, visible, v, hd, dst) };
            true
        }
        _ => false,
    };
    if !fused {
        weighted_sums(vr, h, visible, scores, block, hd, group, dst);
    }
    for g in 0..group {
        for x in &mut dst[g * hd..(g + 1) * hd] {
            *x *= inv[g];
        }
    }
}

/// `dst[g] += Σ_j p[g][j] · value_j` over the visible value rows, converted a block at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn weighted_sums(
    vr: Rows,
    h: usize,
    visible: usize,
    scores: &[f32],
    block: &mut [f32],
    hd: usize,
    group: usize,
    dst: &mut [f32],
) {
    for j0 in (0..visible).step_by(BLOCK) {
        let n = BLOCK.min(visible - j0);
        let values = vr.rows(h, j0, n, &mut block[..n * hd]);
        if group == 4 && hd.is_multiple_of(SPAN) {
            weighted_sum_4(scores, visible, j0, values, hd, dst);
        } else {
            for (jj, value) in values.chunks_exact(hd).enumerate() {
                for g in 0..group {
                    axpy(
                        &mut dst[g * hd..(g + 1) * hd],
                        scores[g * visible + j0 + jj],
                        value,
                    );
                }
            }
        }
    }
}

/// Value rows per pass of [`weighted_block`]: 16 rows of 128 F16 values are 4 KB, so the
/// second half of each row is still in L1 when its pass comes. Longer passes (64 rows, half
/// a row at a time) were slower (see doc/benchmarks.md).
#[cfg(target_arch = "x86_64")]
const VALUE_BLOCK: usize = 16;

/// Value blocks between the one in use and the one [`prefetch_values`] asks for (8 KB ahead).
/// A pass over a block reads each 256-byte row in pieces, a stride the hardware prefetchers do
/// not run ahead of across the 4 KB blocks: from memory the value pass ran at a third of its
/// speed from the cache (Zen 5, one thread: 24–26 ns a position against 11; with the request
/// one block ahead 15, two or four 12, eight 12.4; doc/benchmarks.md).
#[cfg(target_arch = "x86_64")]
const VALUE_AHEAD: usize = 2;

/// Asks for slice `part` of `parts` of the value rows [`VALUE_AHEAD`] blocks after the block
/// starting at row `j0`, so a block's passes together request the whole block ahead. Rows past
/// the cache's end are only hinted at: prefetches do not fault.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch_values(v: *const f16, hd: usize, j0: usize, (part, parts): (usize, usize)) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let per = (VALUE_BLOCK * hd * size_of::<f16>()).div_ceil(parts);
    let ahead = v.wrapping_add((j0 + VALUE_AHEAD * VALUE_BLOCK) * hd) as *const i8;
    for off in (0..per).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(part * per + off));
    }
}

/// [`weighted_sum_4`] over every visible row, read straight from an F16 cache: each value
/// row is converted in registers where it is used, with fused multiply-adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c,fma")]
unsafe fn weighted_sum_4_f16(
    scores: &[f32],
    visible: usize,
    values: &[f16],
    hd: usize,
    dst: &mut [f32],
) {
    let v = values.as_ptr();
    for j0 in (0..visible).step_by(VALUE_BLOCK) {
        let rows = j0..visible.min(j0 + VALUE_BLOCK);
        weighted_block(scores, visible, v, hd, rows, dst);
    }
}

/// [`weighted_sum_4_f16`] over one block of rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c,fma")]
unsafe fn weighted_block(
    scores: &[f32],
    visible: usize,
    v: *const f16,
    hd: usize,
    rows: std::ops::Range<usize>,
    dst: &mut [f32],
) {
    use std::arch::x86_64::*;
    for c0 in (0..hd).step_by(SPAN) {
        prefetch_values(v, hd, rows.start, (c0 / SPAN, hd / SPAN));
        let mut acc = [[_mm512_setzero_ps(); SPAN / LANES]; 4];
        for j in rows.clone() {
            let row = v.add(j * hd + c0);
            let x: [__m512; SPAN / LANES] = std::array::from_fn(|i| {
                _mm512_cvtph_ps(_mm256_loadu_si256(row.add(i * LANES) as *const _))
            });
            for (g, a) in acc.iter_mut().enumerate() {
                let p = _mm512_set1_ps(*scores.get_unchecked(g * visible + j));
                for (ai, xi) in a.iter_mut().zip(&x) {
                    *ai = _mm512_fmadd_ps(p, *xi, *ai);
                }
            }
        }
        for (g, a) in acc.iter().enumerate() {
            for (i, ai) in a.iter().enumerate() {
                let d = dst.as_mut_ptr().add(g * hd + c0 + i * LANES);
                _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), *ai));
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn weighted_sum_4_f16(_: &[f32], _: usize, _: &[f16], _: usize, _: &mut [f32]) {
    unreachable!("AVX-512 called off x86-64")
}

/// Output values per pass of [`weighted_sum_4`]: 4 heads × 64 values are 16 registers.
const SPAN: usize = 64;

/// `dst[g] += Σ_j p[g][j] · value_j` for a group of four query heads (SmolLM3's 16:4), with
/// the sums held in registers across the block of rows instead of going through memory for
/// every row.
#[inline(always)]
fn weighted_sum_4(
    scores: &[f32],
    visible: usize,
    j0: usize,
    values: &[f32],
    hd: usize,
    dst: &mut [f32],
) {
    for c0 in (0..hd).step_by(SPAN) {
        let mut acc = [[0f32; SPAN]; 4];
        for (jj, value) in values.chunks_exact(hd).enumerate() {
            let v: &[f32; SPAN] = value[c0..c0 + SPAN].try_into().expect("SPAN values");
            for (g, a) in acc.iter_mut().enumerate() {
                let p = scores[g * visible + j0 + jj];
                for i in 0..SPAN {
                    a[i] += p * v[i];
                }
            }
        }
        for (g, a) in acc.iter().enumerate() {
            for (d, x) in dst[g * hd + c0..g * hd + c0 + SPAN].iter_mut().zip(a) {
                *d += x;
            }
        }
    }
}

/// Lanes of the partial sums: one 512-bit register of F32.
const LANES: usize = 16;

/// Folds `xs` with `f` lane-wise over [`LANES`] partial results, then across them.
#[inline(always)]
fn lanes(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(init, |a, &x| f(a, x));
    for c in chunks {
        for i in 0..LANES {
            acc[i] = f(acc[i], c[i]);
        }
    }
    acc.iter().fold(tail, |a, &x| f(a, x))
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `out[j] = scale · (query · key_j)` for 16 consecutive key rows of `query.len()` values.
/// Each key's products are summed lane-wise into one register; the sixteen registers are then
/// reduced together by a transposing tree (45 instructions) instead of sixteen separate
/// horizontal sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn wide_scores(query: &[f32], keys: &[f32], scale: f32, out: &mut [f32; LANES]) {
    use std::arch::x86_64::*;
    let hd = query.len();
    let (q, k) = (query.as_ptr(), keys.as_ptr());
    let mut p = [_mm512_setzero_ps(); LANES];
    for c in (0..hd).step_by(LANES) {
        let qc = _mm512_loadu_ps(q.add(c));
        for (j, pj) in p.iter_mut().enumerate() {
            *pj = _mm512_fmadd_ps(qc, _mm512_loadu_ps(k.add(j * hd + c)), *pj);
        }
    }
    let s = reduce16(&p);
    _mm512_storeu_ps(out.as_mut_ptr(), _mm512_mul_ps(s, _mm512_set1_ps(scale)));
}

/// Lane `j` of the result is the sum of the lanes of `p[j]`: sixteen horizontal sums in one
/// transposing tree (45 instructions).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
unsafe fn reduce16(p: &[std::arch::x86_64::__m512; LANES]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // Per 128-bit lane: pairs of vectors to [v0 02, v1 02, v0 13, v1 13]-style partial sums,
    // then four vectors to their lane sums, then lanes across vectors. (Macros, not closures:
    // a closure would not share this function's target features.)
    macro_rules! pair {
        ($a:expr, $b:expr) => {
            _mm512_add_ps(_mm512_unpacklo_ps($a, $b), _mm512_unpackhi_ps($a, $b))
        };
    }
    macro_rules! quad {
        ($a:expr, $b:expr) => {{
            // The 64-bit moves only place pairs of floats; the sum is a float one.
            let (a, b) = (_mm512_castps_pd($a), _mm512_castps_pd($b));
            _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
            )
        }};
    }
    macro_rules! lanes {
        ($a:expr, $b:expr) => {{
            let (a, b) = ($a, $b);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
            )
        }};
    }
    let c0 = quad!(pair!(p[0], p[1]), pair!(p[2], p[3]));
    let c1 = quad!(pair!(p[4], p[5]), pair!(p[6], p[7]));
    let c2 = quad!(pair!(p[8], p[9]), pair!(p[10], p[11]));
    let c3 = quad!(pair!(p[12], p[13]), pair!(p[14], p[15]));
    lanes!(lanes!(c0, c1), lanes!(c2, c3))
}

/// `out_a[j] = scale · (qa · key_j)` and `out_b[j] = scale · (qb · key_j)` for 8 consecutive
/// key rows: two queries (heads of one group) share every key load, which halves the loads per
/// multiply-add against [`wide_scores`] (the scores pass is bound by loads, one 512-bit load
/// per cycle).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn pair_scores(
    (qa, qb): (&[f32], &[f32]),
    keys: &[f32],
    scale: f32,
    (out_a, out_b): (&mut [f32], &mut [f32]),
) {
    use std::arch::x86_64::*;
    let hd = qa.len();
    debug_assert!(qb.len() == hd && keys.len() >= 8 * hd && out_a.len() >= 8 && out_b.len() >= 8);
    let k = keys.as_ptr();
    let mut p = [_mm512_setzero_ps(); LANES];
    for c in (0..hd).step_by(LANES) {
        let (a, b) = (
            _mm512_loadu_ps(qa.as_ptr().add(c)),
            _mm512_loadu_ps(qb.as_ptr().add(c)),
        );
        for j in 0..8 {
            let kj = _mm512_loadu_ps(k.add(j * hd + c));
            p[j] = _mm512_fmadd_ps(a, kj, p[j]);
            p[8 + j] = _mm512_fmadd_ps(b, kj, p[8 + j]);
        }
    }
    let s = _mm512_mul_ps(reduce16(&p), _mm512_set1_ps(scale));
    _mm256_storeu_ps(out_a.as_mut_ptr(), _mm512_castps512_ps256(s));
    _mm256_storeu_ps(out_b.as_mut_ptr(), _mm512_extractf32x8_ps::<1>(s));
}

/// `scores[g·visible + at + j] = scale · (q_g · key_j)` for the four query heads of a group
/// and 4 consecutive F16 key rows, each converted once in registers for all four heads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,f16c,fma")]
unsafe fn quad_scores(
    q: [&[f32]; 4],
    keys: &[f16],
    scale: f32,
    scores: &mut [f32],
    visible: usize,
    at: usize,
) {
    use std::arch::x86_64::*;
    let hd = q[0].len();
    debug_assert!(keys.len() >= 4 * hd && scores.len() >= 3 * visible + at + 4);
    let k = keys.as_ptr();
    let mut p = [_mm512_setzero_ps(); LANES];
    for c in (0..hd).step_by(LANES) {
        let kj: [__m512; 4] = std::array::from_fn(|j| {
            _mm512_cvtph_ps(_mm256_loadu_si256(k.add(j * hd + c) as *const _))
        });
        for g in 0..4 {
            let qg = _mm512_loadu_ps(q[g].as_ptr().add(c));
            for j in 0..4 {
                p[g * 4 + j] = _mm512_fmadd_ps(qg, kj[j], p[g * 4 + j]);
            }
        }
    }
    let s = _mm512_mul_ps(reduce16(&p), _mm512_set1_ps(scale));
    let o = scores.as_mut_ptr().add(at);
    _mm_storeu_ps(o, _mm512_castps512_ps128(s));
    _mm_storeu_ps(o.add(visible), _mm512_extractf32x4_ps::<1>(s));
    _mm_storeu_ps(o.add(2 * visible), _mm512_extractf32x4_ps::<2>(s));
    _mm_storeu_ps(o.add(3 * visible), _mm512_extractf32x4_ps::<3>(s));
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn quad_scores(_: [&[f32]; 4], _: &[f16], _: f32, _: &mut [f32], _: usize, _: usize) {
    unreachable!("AVX-512 called off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pair_scores(_: (&[f32], &[f32]), _: &[f32], _: f32, _: (&mut [f32], &mut [f32])) {
    unreachable!("AVX-512 called off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn wide_scores(_: &[f32], _: &[f32], _: f32, _: &mut [f32; LANES]) {
    unreachable!("AVX-512 called off x86-64")
}

/// The AVX2 + FMA + F16C inner loops, for F16 caches with four query heads per KV head.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::PREFETCH;
    use half::f16;
    use half::slice::HalfFloatSliceExt;
    use std::arch::x86_64::*;

    /// Output values per pass of [`weighted_sum_4_f16`]: 4 heads × 16 values are 8 registers.
    pub(super) const SPAN: usize = 16;

    /// Value rows per pass of [`weighted_sum_4_f16`] (as for AVX-512's).
    const VALUE_BLOCK: usize = super::VALUE_BLOCK;

    /// F16 to F32, 8 values an instruction.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    pub(super) unsafe fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            if i % 32 == 0 {
                // The next block of rows, requested while this one is converted and used.
                _mm_prefetch::<_MM_HINT_T0>(src.as_ptr().wrapping_add(i + PREFETCH) as *const i8);
            }
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const _);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
        src[i..n].convert_to_f32_slice(&mut dst[i..n]);
    }

    /// Lane `i` of the result is the sum of the lanes of `p[i]`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn reduce8(p: &[__m256; 8]) -> __m256 {
        let u0 = _mm256_hadd_ps(_mm256_hadd_ps(p[0], p[1]), _mm256_hadd_ps(p[2], p[3]));
        let u1 = _mm256_hadd_ps(_mm256_hadd_ps(p[4], p[5]), _mm256_hadd_ps(p[6], p[7]));
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(u0, u1),
            _mm256_permute2f128_ps::<0x31>(u0, u1),
        )
    }

    /// `scores[g·visible + at + j] = scale · (q_g · key_j)` for the four query heads of a
    /// group and 4 consecutive F16 key rows, two keys at a time: each key row is converted
    /// once in registers for all four heads, with 8 accumulators (of 16 registers).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quad_scores(
        q: [&[f32]; 4],
        keys: &[f16],
        scale: f32,
        scores: &mut [f32],
        visible: usize,
        at: usize,
    ) {
        let hd = q[0].len();
        debug_assert!(keys.len() >= 4 * hd && scores.len() >= 3 * visible + at + 4);
        let k = keys.as_ptr();
        let sv = _mm256_set1_ps(scale);
        for j0 in [0, 2] {
            let mut p = [_mm256_setzero_ps(); 8];
            for c in (0..hd).step_by(8) {
                let k0 = _mm256_cvtph_ps(_mm_loadu_si128(k.add(j0 * hd + c) as *const _));
                let k1 = _mm256_cvtph_ps(_mm_loadu_si128(k.add((j0 + 1) * hd + c) as *const _));
                for g in 0..4 {
                    let qg = _mm256_loadu_ps(q[g].as_ptr().add(c));
                    p[2 * g] = _mm256_fmadd_ps(qg, k0, p[2 * g]);
                    p[2 * g + 1] = _mm256_fmadd_ps(qg, k1, p[2 * g + 1]);
                }
            }
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(reduce8(&p), sv));
            for g in 0..4 {
                let o = scores.as_mut_ptr().add(g * visible + at + j0);
                *o = out[2 * g];
                *o.add(1) = out[2 * g + 1];
            }
        }
    }

    /// `dst[g] += Σ_j p[g][j] · value_j` over every visible row of an F16 cache, for a group of
    /// four query heads: each value row is converted in registers where it is used.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sum_4_f16(
        scores: &[f32],
        visible: usize,
        values: &[f16],
        hd: usize,
        dst: &mut [f32],
    ) {
        let v = values.as_ptr();
        for j0 in (0..visible).step_by(VALUE_BLOCK) {
            let rows = j0..visible.min(j0 + VALUE_BLOCK);
            for c0 in (0..hd).step_by(SPAN) {
                super::prefetch_values(v, hd, j0, (c0 / SPAN, hd / SPAN));
                let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                for j in rows.clone() {
                    let row = v.add(j * hd + c0);
                    let x0 = _mm256_cvtph_ps(_mm_loadu_si128(row as *const _));
                    let x1 = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8) as *const _));
                    for (g, a) in acc.iter_mut().enumerate() {
                        let p = _mm256_set1_ps(*scores.get_unchecked(g * visible + j));
                        a[0] = _mm256_fmadd_ps(p, x0, a[0]);
                        a[1] = _mm256_fmadd_ps(p, x1, a[1]);
                    }
                }
                for (g, a) in acc.iter().enumerate() {
                    for (i, ai) in a.iter().enumerate() {
                        let d = dst.as_mut_ptr().add(g * hd + c0 + 8 * i);
                        _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), *ai));
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The plain definition with candle's ops: scores, causal mask, softmax, weighted sum.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        let (nh, seq, hd) = q.dims3().unwrap();
        let (nkv, kv_len, _) = k.dims3().unwrap();
        let (k, v) = (
            k.to_dtype(DType::F32).unwrap(),
            v.to_dtype(DType::F32).unwrap(),
        );
        let group = nh / nkv;
        let mut outs = Vec::new();
        for qh in 0..nh {
            let kh = k.get(qh / group).unwrap();
            let vh = v.get(qh / group).unwrap();
            let s = (q.get(qh).unwrap().matmul(&kh.t().unwrap()).unwrap() * scale).unwrap();
            let mask: Vec<f32> = (0..seq)
                .flat_map(|t| {
                    (0..kv_len).map(move |j| {
                        if j > kv_len - seq + t {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (seq, kv_len), &Device::Cpu).unwrap();
            let p = candle_nn::ops::softmax_last_dim(&(s + mask).unwrap()).unwrap();
            outs.push(p.matmul(&vh).unwrap());
        }
        Tensor::stack(&outs, 0)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .reshape((seq, nh * hd))
            .unwrap()
    }

    fn random(shape: (usize, usize, usize), rng: &mut rand::rngs::StdRng) -> Tensor {
        let n = shape.0 * shape.1 * shape.2;
        let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn check(nh: usize, nkv: usize, seq: usize, kv_len: usize, hd: usize, dtype: DType) {
        let mut rng = rand::rngs::StdRng::seed_from_u64((nh * 31 + seq * 7 + kv_len) as u64);
        let q = random((nh, seq, hd), &mut rng);
        // Views into a larger buffer, as the cache hands them out.
        let cap = kv_len + 5;
        // Odd key-value head counts store the buffer position-major, so rows of one head are
        // not adjacent and the gathering path runs too.
        let buffer = |rng: &mut rand::rngs::StdRng| {
            if nkv % 2 == 1 {
                random((cap, nkv, hd), rng).transpose(0, 1).unwrap()
            } else {
                random((nkv, cap, hd), rng)
            }
        };
        let kb = buffer(&mut rng).to_dtype(dtype).unwrap();
        let vb = buffer(&mut rng).to_dtype(dtype).unwrap();
        let (k, v) = (
            kb.narrow(1, 0, kv_len).unwrap(),
            vb.narrow(1, 0, kv_len).unwrap(),
        );
        let scale = 1.0 / (hd as f64).sqrt();
        let want = reference(&q, &k, &v, scale);
        for kernels in Kernels::available() {
            let got = attend(kernels, &q, &k, &v, scale as f32).unwrap();
            let diff = (got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff < 2e-5,
                "{} kernels: nh {nh} nkv {nkv} seq {seq} kv_len {kv_len} {dtype:?}: max |Δ| {diff}",
                kernels.isa()
            );
        }
    }

    #[test]
    fn matches_the_plain_definition() {
        for dtype in [DType::F32, DType::F16] {
            check(16, 4, 1, 1, 128, dtype);
            check(16, 4, 1, 300, 128, dtype);
            check(16, 4, 2, 200, 128, dtype);
            // Visible lengths 5, 6 and 7: four keys at a time, then a tail of each length.
            check(16, 4, 3, 7, 128, dtype);
            check(8, 2, 1, 130, 64, dtype);
            check(12, 3, 1, 150, 64, dtype);
            check(4, 1, 3, 70, 64, dtype);
            check(4, 2, 3, 9, 32, dtype);
            check(8, 8, 5, 5, 24, dtype);
            check(6, 2, 17, 40, 20, dtype);
        }
    }

    #[test]
    fn rejects_shapes_that_do_not_fit() {
        let t = |s| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
        let k = Kernels::default();
        assert!(attend(k, &t((6, 1, 8)), &t((4, 3, 8)), &t((4, 3, 8)), 1.0).is_err());
        assert!(attend(k, &t((4, 1, 8)), &t((2, 3, 16)), &t((2, 3, 16)), 1.0).is_err());
        assert!(attend(k, &t((4, 5, 8)), &t((2, 3, 8)), &t((2, 3, 8)), 1.0).is_err());
    }

    /// Decode-step attention over a long F16 cache, as in SmolLM3-3B (16 query heads over 4
    /// KV heads of 128): `cargo test --release --lib attention::tests::decode_speed --
    /// --ignored --nocapture`.
    #[test]
    #[ignore]
    fn decode_speed() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for (kernels, kv_len) in Kernels::available()
            .into_iter()
            .flat_map(|k| [(k, 512), (k, 4096)])
        {
            let mut r =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect() };
            let q = Tensor::from_vec(r(16 * 128), (16, 1, 128), &Device::Cpu).unwrap();
            // One cache per layer, as in the model, so that reads come from memory, not L3.
            let layers: Vec<(Tensor, Tensor)> = (0..36)
                .map(|_| {
                    let mut t = || {
                        Tensor::from_vec(r(4 * kv_len * 128), (4, kv_len, 128), &Device::Cpu)
                            .unwrap()
                            .to_dtype(DType::F16)
                            .unwrap()
                    };
                    (t(), t())
                })
                .collect();
            let mut best = f64::MAX;
            for _ in 0..10 {
                let t = std::time::Instant::now();
                for (k, v) in &layers {
                    attend(kernels, &q, k, v, 0.088).unwrap();
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            let mb = 36.0 * 2.0 * (4 * kv_len * 128 * 2) as f64 / 1e6;
            // The floor: the same bytes only read (summed as integers), the same units over
            // the same threads.
            let mut read = f64::MAX;
            for _ in 0..10 {
                let t = std::time::Instant::now();
                for (k, v) in &layers {
                    let (ks, _) = k.storage_and_layout();
                    let (vs, _) = v.storage_and_layout();
                    let (Storage::Cpu(CpuStorage::F16(kv)), Storage::Cpu(CpuStorage::F16(vv))) =
                        (&*ks, &*vs)
                    else {
                        unreachable!()
                    };
                    let per = kv_len * 128;
                    let sum = std::sync::atomic::AtomicU64::new(0);
                    candle_core::utils::barrier_pool().execute_chunked(4, |units| {
                        for h in units {
                            let words = |x: &[f16]| -> u64 {
                                // SAFETY: any bit pattern is a valid u64.
                                let (_, mid, _) = unsafe { x.align_to::<u64>() };
                                mid.iter().fold(0u64, |a, w| a.wrapping_add(*w))
                            };
                            let s = words(&kv[h * per..(h + 1) * per])
                                .wrapping_add(words(&vv[h * per..(h + 1) * per]));
                            sum.fetch_add(s, std::sync::atomic::Ordering::Relaxed);
                        }
                    });
                    std::hint::black_box(sum.into_inner());
                }
                read = read.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{} kernels, kv_len {kv_len}: {:.1} ms for 36 layers ({:.1} GB/s of cache); \
                 reading alone {:.1} ms ({:.1} GB/s)",
                kernels.isa(),
                best * 1e3,
                mb / 1e3 / best,
                read * 1e3,
                mb / 1e3 / read
            );
        }
    }

    #[test]
    fn wide_scores_are_sixteen_dots() {
        if !Isa::Avx512.cpu_has() {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let q: Vec<f32> = (0..128).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let k: Vec<f32> = (0..16 * 128).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut out = [0f32; LANES];
        unsafe { wide_scores(&q, &k, 0.5, &mut out) };
        for j in 0..16 {
            let want = 0.5 * dot(&q, &k[j * 128..(j + 1) * 128]);
            assert!(
                (out[j] - want).abs() < 1e-4,
                "key {j}: {} vs {want} ({out:?})",
                out[j]
            );
        }
    }
}
