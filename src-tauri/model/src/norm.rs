//! RMSNorm with the residual addition before it fused in: `x += Δ; h = norm(x)·w` in one pass
//! over each row, as every layer does twice.
//!
//! With candle's ops that is two operations, each a pass over the (tokens, 2048) activations
//! on rayon's threads, while the products' thread pool spins beside them on the same cores.
//! Here each row is added, summed and scaled while it is in L1, on the products' pool.

#[cfg(target_arch = "x86_64")]
use super::kernels::Isa;
use super::kernels::Kernels;
use candle_core::{CpuStorage, Device, Result, Storage, Tensor};
use std::mem::MaybeUninit;

/// `(x + delta, rms_norm(x + delta) · weight)` for `x` of shape (.., dim) and `weight` of
/// (dim,); without `delta`, the first is `x` itself. The norm is candle's
/// `v / sqrt(mean(v²) + eps) · w`. Every kernel path gives the same bits: the loop is one
/// plain body, compiled for each instruction set's vector width.
pub fn add_rms_norm(
    kernels: Kernels,
    x: &Tensor,
    delta: Option<&Tensor>,
    weight: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let dim = x.dim(candle_core::D::Minus1)?;
    if weight.dims() != [dim] || delta.is_some_and(|d| d.dims() != x.dims()) {
        candle_core::bail!(
            "add_rms_norm: x {:?}, delta {:?}, weight {:?} do not fit",
            x.dims(),
            delta.map(|d| d.dims().to_vec()),
            weight.dims()
        );
    }
    let x = x.contiguous()?;
    let delta = delta.map(|d| d.contiguous()).transpose()?;
    let weight = weight.contiguous()?;
    let xs = f32s(&x)?;
    let ds = delta.as_ref().map(f32s).transpose()?;
    let ws = f32s(&weight)?;
    let n = x.elem_count();
    let rows = n.checked_div(dim).unwrap_or(0);
    let mut sum: Vec<f32> = Vec::with_capacity(if ds.is_some() { n } else { 0 });
    let mut h: Vec<f32> = Vec::with_capacity(n);
    {
        let (xv, dv, wv) = (xs.get(), ds.as_ref().map(|d| d.get()), ws.get());
        let sum_addr = sum.spare_capacity_mut().as_mut_ptr() as usize;
        let h_addr = h.spare_capacity_mut().as_mut_ptr() as usize;
        let run = |r: usize| {
            let span = r * dim..(r + 1) * dim;
            // SAFETY: row `r` of both outputs is written by this call alone, inside the
            // capacity of buffers that outlive the loop.
            let at = |addr: usize| unsafe {
                std::slice::from_raw_parts_mut((addr as *mut MaybeUninit<f32>).add(span.start), dim)
            };
            row(
                kernels,
                Row {
                    x: &xv[span.clone()],
                    delta: dv.map(|d| &d[span.clone()]),
                    weight: wv,
                    eps,
                    sum: dv.map(|_| at(sum_addr)),
                    h: at(h_addr),
                },
            );
        };
        // A handful of rows (decode) is not worth a hand-off to the other thread.
        if rows < 8 {
            (0..rows).for_each(run);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(rows, |r| r.for_each(run));
        }
    }
    // SAFETY: every row of each output was written above.
    unsafe {
        h.set_len(n);
        if ds.is_some() {
            sum.set_len(n);
        }
    }
    let h = Tensor::from_vec(h, x.shape(), &Device::Cpu)?;
    let sum = match ds {
        Some(_) => Tensor::from_vec(sum, x.shape(), &Device::Cpu)?,
        None => x.clone(),
    };
    Ok((sum, h))
}

/// A contiguous F32 CPU tensor's elements, borrowed for as long as the guard lives.
struct F32s<'a> {
    storage: Box<dyn std::ops::Deref<Target = Storage> + 'a>,
    range: std::ops::Range<usize>,
}

impl F32s<'_> {
    fn get(&self) -> &[f32] {
        match &**self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.range.clone()],
            _ => unreachable!("checked in f32s"),
        }
    }
}

fn f32s(t: &Tensor) -> Result<F32s<'_>> {
    let (storage, layout) = t.storage_and_layout();
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("add_rms_norm needs contiguous tensors");
    };
    if !matches!(&*storage, Storage::Cpu(CpuStorage::F32(_))) {
        candle_core::bail!("add_rms_norm needs F32 tensors on the CPU");
    }
    Ok(F32s {
        storage: Box::new(storage),
        range: a..b,
    })
}

/// One row: the inputs, and the outputs to write (the sum only when there is a `delta`).
struct Row<'a> {
    x: &'a [f32],
    delta: Option<&'a [f32]>,
    weight: &'a [f32],
    eps: f32,
    sum: Option<&'a mut [MaybeUninit<f32>]>,
    h: &'a mut [MaybeUninit<f32>],
}

fn row(kernels: Kernels, r: Row) {
    // SAFETY (both arms): `kernels` is only made for an ISA the CPU has.
    match kernels.isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { row_avx512(r) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { row_avx2(r) },
        // AArch64's baseline includes NEON, so the plain body is already vector code there.
        _ => row_plain(r),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_avx512(r: Row) {
    row_plain(r)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(r: Row) {
    row_plain(r)
}

/// Sixteen running sums of squares, so that the loop vectorizes (a single sum would keep it
/// scalar: float addition is not reassociated).
const LANES: usize = 16;

#[inline(always)]
fn row_plain(r: Row) {
    let Row {
        x,
        delta: d,
        weight: w,
        eps,
        sum,
        h,
    } = r;
    let dim = x.len();
    let mut acc = [0f32; LANES];
    let mut tail = 0f32;
    let v: &[f32] = match (d, sum) {
        (Some(d), Some(sum)) => {
            let body = dim / LANES * LANES;
            let chunks = sum[..body]
                .chunks_exact_mut(LANES)
                .zip(x.chunks_exact(LANES).zip(d.chunks_exact(LANES)));
            for (s, (a, b)) in chunks {
                for l in 0..LANES {
                    let v = a[l] + b[l];
                    s[l].write(v);
                    acc[l] += v * v;
                }
            }
            for i in body..dim {
                let v = x[i] + d[i];
                sum[i].write(v);
                tail += v * v;
            }
            // SAFETY: every element was just written.
            unsafe { &*(sum as *const [MaybeUninit<f32>] as *const [f32]) }
        }
        _ => {
            let chunks = x.chunks_exact(LANES);
            for &v in chunks.remainder() {
                tail += v * v;
            }
            for a in chunks {
                for l in 0..LANES {
                    acc[l] += a[l] * a[l];
                }
            }
            x
        }
    };
    let sum2 = acc.iter().sum::<f32>() + tail;
    let m = (sum2 / dim as f32 + eps).sqrt();
    for ((o, &v), &w) in h.iter_mut().zip(v).zip(w) {
        o.write(v / m * w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 100.0 - 10.0)
            .collect()
    }

    #[test]
    fn matches_candle_add_then_rms_norm() {
        let dev = Device::Cpu;
        // Rows of a width that is not a multiple of the lanes; 3 rows run inline, 20 on the
        // pool.
        let dim = 2048 + 5;
        let w = Tensor::from_vec(values(dim, 9), dim, &dev).unwrap();
        for (kernels, rows) in Kernels::available()
            .into_iter()
            .flat_map(|k| [(k, 3), (k, 20)])
        {
            eprintln!("kernels: {}", kernels.isa());
            let x = Tensor::from_vec(values(rows * dim, 1), (rows, dim), &dev).unwrap();
            let d = Tensor::from_vec(values(rows * dim, 2), (rows, dim), &dev).unwrap();
            let want_sum = (&x + &d).unwrap();
            let want_h = candle_nn::ops::rms_norm(&want_sum, &w, 1e-6).unwrap();
            let (sum, h) = add_rms_norm(kernels, &x, Some(&d), &w, 1e-6).unwrap();
            assert_eq!(
                sum.to_vec2::<f32>().unwrap(),
                want_sum.to_vec2::<f32>().unwrap()
            );
            let close = |got: &Tensor, want: &Tensor| {
                let (got, want) = (
                    got.to_vec2::<f32>().unwrap(),
                    want.to_vec2::<f32>().unwrap(),
                );
                for (g, e) in got.iter().flatten().zip(want.iter().flatten()) {
                    assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "{g} against {e}");
                }
            };
            close(&h, &want_h);
            // Without a residual: the norm of `x`, and `x` back.
            let (same, h) = add_rms_norm(kernels, &x, None, &w, 1e-6).unwrap();
            assert_eq!(same.to_vec2::<f32>().unwrap(), x.to_vec2::<f32>().unwrap());
            close(&h, &candle_nn::ops::rms_norm(&x, &w, 1e-6).unwrap());
        }
    }

    #[test]
    fn refuses_shapes_that_do_not_fit() {
        let dev = Device::Cpu;
        let kernels = Kernels::default();
        let x = Tensor::zeros((2, 8), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::ones(7, candle_core::DType::F32, &dev).unwrap();
        assert!(add_rms_norm(kernels, &x, None, &w, 1e-6).is_err());
        let w = Tensor::ones(8, candle_core::DType::F32, &dev).unwrap();
        let d = Tensor::zeros((3, 8), candle_core::DType::F32, &dev).unwrap();
        assert!(add_rms_norm(kernels, &x, Some(&d), &w, 1e-6).is_err());
    }
}
