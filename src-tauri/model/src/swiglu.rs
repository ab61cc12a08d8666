//! The feed-forward block's activation, `silu(gate) · up`, in one pass.
//!
//! candle computes it as two ops (`silu`, then a product), each allocating a (tokens, 11008)
//! buffer and calling libm's scalar `expf` per element (a visible share of a prefill, see
//! doc/benchmarks.md). Here one
//! pass over both inputs writes the result, with a branch-free `exp` that the compiler
//! vectorizes for the kernel path's vector width, split over candle's thread pool.

#[cfg(target_arch = "x86_64")]
use super::kernels::Isa;
use super::kernels::Kernels;
use super::vmath::exp;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use std::mem::MaybeUninit;

/// `silu(gate) · up` for two F32 tensors of the same shape.
pub fn swiglu(kernels: Kernels, gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    gate.contiguous()?
        .apply_op2_no_bwd(&up.contiguous()?, &SwiGlu(kernels))
}

struct SwiGlu(Kernels);

/// Elements per unit of parallel work: big enough to amortize a hand-off.
const UNIT: usize = 16 * 1024;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "swiglu: gate {:?} and up {:?} differ",
                l1.shape(),
                l2.shape()
            );
        }
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (s1, s2) else {
            candle_core::bail!("swiglu needs F32 inputs");
        };
        let n = l1.shape().elem_count();
        let (Some((g0, g1)), Some((u0, u1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("swiglu needs contiguous inputs");
        };
        let (g, u) = (&g[g0..g1], &u[u0..u1]);
        // Not zeroed first: the units write every element, in parallel.
        let mut out: Vec<f32> = Vec::with_capacity(n);
        let addr = out.spare_capacity_mut().as_mut_ptr() as usize;
        candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(UNIT), |units| {
            let r = units.start * UNIT..(units.end * UNIT).min(n);
            // SAFETY: units are disjoint ranges of `out`'s capacity, which outlives the call.
            let o = unsafe {
                std::slice::from_raw_parts_mut(
                    (addr as *mut MaybeUninit<f32>).add(r.start),
                    r.len(),
                )
            };
            apply(self.0, &g[r.clone()], &u[r], o);
        });
        // SAFETY: the units covered `0..n` and wrote every element.
        unsafe { out.set_len(n) };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `out = silu(g) · u`, elementwise over slices of the same length; the same bits on every
/// path (one plain body, compiled for each vector width).
pub(super) fn apply(kernels: Kernels, g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
    // SAFETY (both arms): `kernels` is only made for an ISA the CPU has.
    match kernels.isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { apply_avx512(g, u, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { apply_avx2(g, u, out) },
        // AArch64's baseline includes NEON, so the plain body is already vector code there.
        _ => apply_plain(g, u, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn apply_avx512(g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
    apply_plain(g, u, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_avx2(g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
    apply_plain(g, u, out)
}

#[inline(always)]
fn apply_plain(g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        o.write(g / (1.0 + exp(-g)) * u);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_silu_times_up() {
        // Not a multiple of the unit, with large magnitudes where silu saturates.
        let n = 3 * UNIT + 77;
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 2001) as f32 / 10.0 - 100.0)
            .collect();
        let u: Vec<f32> = (0..n)
            .map(|i| ((i * 104_729) % 997) as f32 / 100.0 - 5.0)
            .collect();
        let g = Tensor::from_vec(g, n, &Device::Cpu).unwrap();
        let u = Tensor::from_vec(u, n, &Device::Cpu).unwrap();
        let want: Vec<f32> = (candle_nn::ops::silu(&g).unwrap() * &u)
            .unwrap()
            .to_vec1()
            .unwrap();
        for kernels in Kernels::available() {
            let got: Vec<f32> = swiglu(kernels, &g, &u).unwrap().to_vec1().unwrap();
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
                    "{} element {i}: {a} against {b}",
                    kernels.isa()
                );
            }
            assert!(swiglu(kernels, &g, &u.narrow(0, 0, n - 1).unwrap()).is_err());
        }
    }
}
