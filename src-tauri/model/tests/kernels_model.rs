//! Every Q4_K and Q6_K weight of the reference model gives the same product through
//! `QWeight::matmul` on every kernel path (and NEON variant) this CPU has as through candle's
//! k-quant path, for prefill-sized inputs.

mod common;

use candle_core::quantized::k_quants::{self, BlockQ4K, BlockQ6K, GgmlType as Block};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use smollm3_model::gguf::GgmlType;
use smollm3_model::kernels::Kernels;
use smollm3_model::weights::QWeight;
use smollm3_model::GgufFile;

fn candle_product<T: Block>(w: &QWeight, x: &[f32], m: usize) -> Vec<f32> {
    let bytes = w.bytes();
    // SAFETY: `QWeight::from_gguf` checked the block type, size and alignment of these bytes,
    // and candle's blocks are plain old data.
    let blocks = unsafe {
        std::slice::from_raw_parts(
            bytes.as_ptr() as *const T,
            bytes.len() / std::mem::size_of::<T>(),
        )
    };
    let mut out = vec![0f32; m * w.rows()];
    k_quants::matmul::<T>((m, w.cols(), w.rows()), x, blocks, &mut out).unwrap();
    out
}

#[test]
fn k_quant_weights_match_candle() {
    for kernels in Kernels::variants() {
        check_all_weights(kernels);
        eprintln!("kernels: {kernels} checked");
    }
}

fn check_all_weights(kernels: Kernels) {
    let g = GgufFile::open(common::reference("tiny-smollm3-q4_k_m.gguf")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut q4, mut q6) = (0, 0);
    for info in g.tensors() {
        if info.dims.len() != 2 || !matches!(info.ty, GgmlType::Q4K | GgmlType::Q6K) {
            continue;
        }
        let w = QWeight::from_gguf(&g, info, kernels).unwrap();
        for m in [2, 5, 13] {
            let x: Vec<f32> = (0..m * w.cols())
                .map(|_| rng.gen_range(-2.0..2.0))
                .collect();
            let xt = Tensor::from_vec(x.clone(), (m, w.cols()), &Device::Cpu).unwrap();
            let got: Vec<f32> = w
                .matmul(&xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want = match info.ty {
                GgmlType::Q4K => candle_product::<BlockQ4K>(&w, &x, m),
                _ => candle_product::<BlockQ6K>(&w, &x, m),
            };
            let scale = want.iter().fold(1f32, |s, v| s.max(v.abs()));
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * scale,
                    "{kernels} kernels, {} m={m} element {i}: {a} vs candle {b}",
                    info.name
                );
            }
        }
        match info.ty {
            GgmlType::Q4K => q4 += 1,
            _ => q6 += 1,
        }
    }
    assert!(
        q4 > 0 && q6 > 0,
        "fixture has {q4} Q4_K and {q6} Q6_K weights"
    );
}
