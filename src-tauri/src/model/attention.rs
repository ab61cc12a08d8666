//! Attention for a few new tokens over the whole cache, fused into one pass per KV head.
//!
//! Decoding spends its attention time reading the cache: with candle's ops each step converts
//! an F16 cache to F32, runs a small matrix product per head and a separate softmax. Here the
//! query heads that share a KV head walk its keys and values once, straight from the cache
//! buffer in its own element type (F32 or F16), with the softmax in between; so the cost per
//! step is one read of the cache, and an F16 cache halves it.

use super::kernels;
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
}

impl Rows<'_> {
    /// Row `pos` of `head` as F32, converted into `buf` when stored as F16.
    #[inline(always)]
    fn row<'b>(&'b self, head: usize, pos: usize, buf: &'b mut [f32]) -> &'b [f32] {
        let at = self.start + head * self.s0 + pos * self.s1;
        match self.elems {
            Elems::F32(v) => &v[at..at + buf.len()],
            Elems::F16(v) => {
                v[at..at + buf.len()].convert_to_f32_slice(buf);
                buf
            }
        }
    }
}

fn rows<'a>(storage: &'a Storage, layout: &Layout) -> Result<Rows<'a>> {
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
    })
}

/// Causal grouped-query attention of `q` `(heads, seq, head_dim)` F32, the queries of the
/// last `seq` positions, over keys and values `(kv_heads, kv_len, head_dim)` (views of the
/// cache, F32 or F16): query `t` sees positions `0..=kv_len − seq + t`. Returns
/// `(seq, heads·head_dim)`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
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
    let (kr, vr) = (rows(&ks, kl)?, rows(&vs, vl)?);
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
            if kernels::cpu_supported() {
                // SAFETY: the CPU has the features (checked at run time).
                unsafe { unit_avx512(&shape, qv, kr, vr, scale, (h, t), &mut scratch, dst) }
            } else {
                unit(&shape, qv, kr, vr, scale, (h, t), &mut scratch, dst)
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
    krow: Vec<f32>,
    vrow: Vec<f32>,
}

impl Scratch {
    fn new(group: usize, kv_len: usize, hd: usize) -> Self {
        Self {
            scores: vec![0.0; group * kv_len],
            krow: vec![0.0; hd],
            vrow: vec![0.0; hd],
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
    unit(shape, qv, kr, vr, scale, at, scratch, dst)
}

#[cfg(not(target_arch = "x86_64"))]
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
    unit(shape, qv, kr, vr, scale, at, scratch, dst)
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
) {
    let (hd, group) = (s.hd, s.group);
    let visible = s.kv_len - s.seq + t + 1;
    let query = |g: usize| {
        let qh = h * group + g;
        &qv[(qh * s.seq + t) * hd..(qh * s.seq + t + 1) * hd]
    };
    let Scratch { scores, krow, vrow } = scratch;
    for j in 0..visible {
        let key = kr.row(h, j, krow);
        for g in 0..group {
            scores[g * visible + j] = dot(query(g), key) * scale;
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
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut sum = 0f32;
        for x in row.iter_mut() {
            *x = exp(*x - max);
            sum += *x;
        }
        inv[g] = 1.0 / sum;
    }
    dst.fill(0.0);
    for j in 0..visible {
        let value = vr.row(h, j, vrow);
        for g in 0..group {
            axpy(
                &mut dst[g * hd..(g + 1) * hd],
                scores[g * visible + j],
                value,
            );
        }
    }
    for g in 0..group {
        for x in &mut dst[g * hd..(g + 1) * hd] {
            *x *= inv[g];
        }
    }
}

/// Lanes of the partial sums: one 512-bit register of F32.
const LANES: usize = 16;

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

#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `eˣ` for `x ≤ 0` (scores minus their maximum), to a few parts in 10⁷, in plain
/// arithmetic that vectorizes: `x = n·ln 2 + r`, `eʳ` by its Taylor series on |r| ≤ ln 2 / 2,
/// and `2ⁿ` built in the exponent bits.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and removing 1.5·2²³ rounds to the nearest integer without a branch.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
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
        let kb = random((nkv, cap, hd), &mut rng).to_dtype(dtype).unwrap();
        let vb = random((nkv, cap, hd), &mut rng).to_dtype(dtype).unwrap();
        let (k, v) = (
            kb.narrow(1, 0, kv_len).unwrap(),
            vb.narrow(1, 0, kv_len).unwrap(),
        );
        let scale = 1.0 / (hd as f64).sqrt();
        let got = attend(&q, &k, &v, scale as f32).unwrap();
        let want = reference(&q, &k, &v, scale);
        let diff = (got - want)
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
            "nh {nh} nkv {nkv} seq {seq} kv_len {kv_len} {dtype:?}: max |Δ| {diff}"
        );
    }

    #[test]
    fn matches_the_plain_definition() {
        for dtype in [DType::F32, DType::F16] {
            check(16, 4, 1, 1, 128, dtype);
            check(16, 4, 1, 300, 128, dtype);
            check(4, 2, 3, 9, 32, dtype);
            check(8, 8, 5, 5, 24, dtype);
            check(6, 2, 17, 40, 20, dtype);
        }
    }

    #[test]
    fn exp_is_accurate() {
        for i in 0..=10_000 {
            let x = -(i as f32) * 0.0087;
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 5e-7 * want + 1e-37,
                "exp({x}) = {got}, want {want}"
            );
        }
        let tiny = exp(-1000.0);
        assert!(tiny > 0.0 && tiny < 1e-37, "far below: {tiny}");
    }

    #[test]
    fn rejects_shapes_that_do_not_fit() {
        let t = |s| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
        assert!(attend(&t((6, 1, 8)), &t((4, 3, 8)), &t((4, 3, 8)), 1.0).is_err());
        assert!(attend(&t((4, 1, 8)), &t((2, 3, 16)), &t((2, 3, 16)), 1.0).is_err());
        assert!(attend(&t((4, 5, 8)), &t((2, 3, 8)), &t((2, 3, 8)), 1.0).is_err());
    }
}
