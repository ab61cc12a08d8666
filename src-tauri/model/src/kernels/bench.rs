//! Micro-benchmarks of the kernels, on every path this CPU has: ignored tests that print
//! figures, run one at a time with
//! `cargo test --release --lib kernels::bench::NAME -- --ignored --nocapture`.
//! The model-level comparison with llama.cpp is `src-tauri/benches/compare_llama_cpp.py`.

use super::interleaved::tests::{activations, packed, q4k_weights, weights};
use super::interleaved::{self, Format, Product};
use super::{quantize, Isa, Kernels, QK};
use candle_core::quantized::k_quants::{self, BlockQ4K, BlockQ6K, BlockQ8_0};
use std::mem::MaybeUninit;

/// The best of `reps` timings of `f`, in seconds.
fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

/// The median of `reps` timings of `f`, in seconds.
fn median_of(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn gguf_bytes(format: Format, n: usize, k: usize, seed: u64) -> Vec<u8> {
    match format {
        Format::Q4Kx16 => q4k_weights(n, k, seed),
        Format::Q6Kx16 => weights::<BlockQ6K>(n, k, seed),
        Format::Q8_0x16 => weights::<BlockQ8_0>(n, k, seed),
    }
}

/// candle's product on the GGUF layout (its own runtime-detected SIMD).
fn candle_matmul(
    format: Format,
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    w: &[u8],
    out: &mut [f32],
) {
    fn blocks<T>(bytes: &[u8]) -> &[T] {
        // SAFETY: whole blocks of plain old data, from a Vec aligned for them in practice
        // (checked).
        assert!((bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
        unsafe {
            std::slice::from_raw_parts(
                bytes.as_ptr() as *const T,
                bytes.len() / std::mem::size_of::<T>(),
            )
        }
    }
    match format {
        Format::Q4Kx16 => k_quants::matmul::<BlockQ4K>((m, k, n), x, blocks(w), out),
        Format::Q6Kx16 => k_quants::matmul::<BlockQ6K>((m, k, n), x, blocks(w), out),
        Format::Q8_0x16 => k_quants::matmul::<BlockQ8_0>((m, k, n), x, blocks(w), out),
    }
    .unwrap();
}

/// Prefill-shaped products on every path, against candle's on the GGUF layout.
#[test]
#[ignore]
fn prefill_products() {
    for format in [Format::Q4Kx16, Format::Q6Kx16, Format::Q8_0x16] {
        for &(m, k, n) in &[(512, 2048, 2048), (512, 2048, 11008), (512, 11008, 2048)] {
            let w = gguf_bytes(format, n, k, 1);
            let p = packed(format, n, k, 1);
            let x = activations(m, k, 2);
            let mut out = vec![0f32; m * n];
            let gmac = (m * k * n) as f64 / 1e9;
            let mut line = format!("{format:?} ({m},{k},{n}):");
            let t = best_of(3, || candle_matmul(format, (m, k, n), &x, &w, &mut out));
            line += &format!(" candle {:.1}", gmac / t);
            for kernels in Kernels::available().into_iter().filter(|k| k.interleaved()) {
                let t = best_of(8, || {
                    interleaved::matmul(kernels, format, (m, k, n), &x, &p, &mut out).unwrap()
                });
                line += &format!(" | {} {:.1}", kernels.isa(), gmac / t);
            }
            println!("{line} GMAC/s");
        }
    }
}

/// Decode-shaped products over 220 MB of weights (more than the last-level cache, so they
/// stream from memory as a decode step does), on every path: medians of 10. One 2048-row
/// matrix repeated 64 times, since the weights' values do not change the speed.
#[test]
#[ignore]
fn decode_products() {
    let (k, n0, copies) = (2048, 2048, 64);
    let n = n0 * copies;
    let x = activations(1, k, 2);
    let mut out = vec![0f32; n];
    for format in [Format::Q4Kx16, Format::Q6Kx16, Format::Q8_0x16] {
        let w = gguf_bytes(format, n0, k, 1).repeat(copies);
        let p = packed(format, n0, k, 1).repeat(copies);
        let gb = w.len() as f64 / 1e9;
        let t = median_of(5, || candle_matmul(format, (1, k, n), &x, &w, &mut out));
        let mut line = format!("{format:?} (1,{k},{n}): candle {:.1}", gb / t);
        let gguf = match format {
            Format::Q4Kx16 => Some(super::Format::Q4K),
            Format::Q6Kx16 => Some(super::Format::Q6K),
            Format::Q8_0x16 => None,
        };
        if let (Ok(avx512), Some(gguf)) = (Kernels::new(Isa::Avx512), gguf) {
            let t = median_of(10, || {
                super::matmul_gguf(avx512, gguf, (1, k, n), &x, &w, &mut out).unwrap()
            });
            line += &format!(" | avx512 on the GGUF layout {:.1}", gb / t);
        }
        for kernels in Kernels::available().into_iter().filter(|k| k.interleaved()) {
            let t = median_of(10, || {
                interleaved::matmul(kernels, format, (1, k, n), &x, &p, &mut out).unwrap()
            });
            line += &format!(" | {} {:.1}", kernels.isa(), gb / t);
        }
        println!("{line} GB/s");
    }
}

/// One tile of 8 activation rows against 16 weight rows over 2048 values, on one thread with
/// everything in L1/L2: the loop prefill runs, without the threads and memory around it.
#[test]
#[ignore]
fn kernel_alone() {
    let (m, k, n) = (8, 2048, 16);
    let x = activations(m, k, 2);
    for format in [Format::Q4Kx16, Format::Q6Kx16, Format::Q8_0x16] {
        let p = packed(format, n, k, 1);
        for kernels in Kernels::available() {
            let mut dst = vec![MaybeUninit::new(0f32); m * n];
            let reps = if kernels.interleaved() { 20_000 } else { 200 };
            let t = best_of(3, || {
                for _ in 0..reps {
                    let mut products = [Product {
                        format,
                        n,
                        w: &p,
                        dst: &mut dst,
                    }];
                    interleaved::matmul_many_uninit(kernels, (m, k), &x, &mut products).unwrap();
                }
            });
            let gmac = (m * k * n * reps) as f64 / 1e9;
            println!(
                "{format:?} {}: {:.1} GMAC/s (with quantization and dispatch)",
                kernels.isa(),
                gmac / t
            );
        }
    }
}

/// The Q8_K quantizer on every path, a 512 × 2048 activation.
#[test]
#[ignore]
fn quantizer() {
    let (m, k) = (512, 2048);
    let x = activations(m, k, 3);
    for kernels in Kernels::available() {
        let t = best_of(10, || {
            std::hint::black_box(quantize(kernels, &x, m, k));
        });
        println!(
            "{}: {:.2} ns a value",
            kernels.isa(),
            t / (m * k) as f64 * 1e9
        );
    }
    assert_eq!(k % QK, 0);
}

/// The multiply pipe's peak on this CPU, the bound the AVX-512 products are measured against:
/// `vpdpbusd` on registers in 1, 2, 4 and 8 independent chains (its latency shows until the
/// chains cover it), one thread.
#[test]
#[ignore]
fn vnni_peak() {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn chains<const K: usize>(n: usize) -> i32 {
        use std::arch::x86_64::*;
        let w: [__m512i; 8] = std::array::from_fn(|i| _mm512_set1_epi32(i as i32 + 1));
        let mut acc = [_mm512_setzero_si512(); K];
        for _ in 0..n {
            for _ in 0..8 / K {
                for i in 0..K {
                    acc[i] = _mm512_dpbusd_epi32(acc[i], w[i], w[(i + 1) % 8]);
                }
            }
            // Keeps the loop a loop: the compiler may not fold the chains.
            std::arch::asm!("", options(nomem, nostack));
        }
        let mut s = acc[0];
        for a in &acc[1..] {
            s = _mm512_add_epi32(s, *a);
        }
        _mm_cvtsi128_si32(_mm512_castsi512_si128(s))
    }
    #[cfg(target_arch = "x86_64")]
    {
        if !Isa::Avx512.cpu_has() {
            return;
        }
        let n = 50_000_000;
        type Chains = unsafe fn(usize) -> i32;
        let runs: [(usize, Chains); 4] = [
            (1, chains::<1>),
            (2, chains::<2>),
            (4, chains::<4>),
            (8, chains::<8>),
        ];
        for (k, f) in runs {
            let t = std::time::Instant::now();
            // SAFETY: the features were checked.
            let r = unsafe { f(n) };
            let s = t.elapsed().as_secs_f64();
            println!(
                "vpdpbusd zmm, {k} chains: {:.2} G/s on one thread ({:.0} GMAC/s of int8) [{r}]",
                (8 * n) as f64 / s / 1e9,
                (8 * n * 64) as f64 / s / 1e9
            );
        }
    }
}

/// The GGUF-layout products (for a model whose repacked file is missing) by weight rows per
/// micro-kernel call, against candle's, one activation row on weights larger than the L3
/// cache: the figures that chose `gguf_layout::GEMV_ROWS`. Best of eight interleaved runs.
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore]
fn gguf_layout_rows_per_call() {
    use super::blocks::Format as GgufFormat;
    use super::gguf_layout::gemv_rows_of;
    use super::gguf_layout::tests::{bytes, weights};
    use candle_core::quantized::k_quants::GgmlType;
    use rand::{Rng, SeedableRng};

    let Ok(kernels) = Kernels::new(Isa::Avx512) else {
        return;
    };
    fn time<T: GgmlType>(kernels: Kernels, format: GgufFormat, k: usize, n: usize) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let w = weights::<T>(n, k, &mut rng);
        let x: Vec<f32> = (0..k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut out = vec![0f32; n];
        let mut best = [f64::MAX; 4];
        for _ in 0..8 {
            for (v, b) in best.iter_mut().enumerate() {
                let t = std::time::Instant::now();
                match v {
                    0 => k_quants::matmul::<T>((1, k, n), &x, &w, &mut out).unwrap(),
                    v => {
                        let rows = 1 << (v - 1);
                        gemv_rows_of(kernels, format, (k, n), &x, bytes(&w), &mut out, rows)
                    }
                }
                *b = b.min(t.elapsed().as_secs_f64());
            }
        }
        let gb = std::mem::size_of_val(&w[..]) as f64 / 1e9;
        let f = |t: f64| format!("{:.2} ms {:.1} GB/s", t * 1e3, gb / t);
        println!(
            "{format:?} k={k} n={n}: candle {} | rows 1 {} | 2 {} | 4 {}",
            f(best[0]),
            f(best[1]),
            f(best[2]),
            f(best[3])
        );
    }
    time::<BlockQ4K>(kernels, GgufFormat::Q4K, 2048, 32768);
    time::<BlockQ6K>(kernels, GgufFormat::Q6K, 11008, 4096);
    time::<BlockQ6K>(kernels, GgufFormat::Q6K, 2048, 32768);
}

/// Batched decoding's products: a few activation rows against the same 220 MB as
/// [`decode_products`], on every interleaved path; medians of 9, and each row count's time
/// against one row's (four rows should cost little more than one while the weights' stream,
/// not the arithmetic, sets the pace).
#[test]
#[ignore]
fn batched_decode_products() {
    let (k, n0, copies) = (2048, 2048, 64);
    let n = n0 * copies;
    for format in [Format::Q4Kx16, Format::Q6Kx16, Format::Q8_0x16] {
        let p = packed(format, n0, k, 1).repeat(copies);
        let gb = p.len() as f64 / 1e9;
        for kernels in Kernels::available().into_iter().filter(|k| k.interleaved()) {
            let mut line = format!("{format:?} {}:", kernels.isa());
            let mut one = 0.0;
            for m in [1, 2, 4, 8] {
                let x = activations(m, k, 2);
                let mut out = vec![0f32; m * n];
                let t = median_of(9, || {
                    interleaved::matmul(kernels, format, (m, k, n), &x, &p, &mut out).unwrap()
                });
                if m == 1 {
                    one = t;
                }
                line += &format!(
                    " | {m} rows {:.1} ms ({:.1} GB/s, {:.2}×)",
                    t * 1e3,
                    gb / t,
                    t / one
                );
            }
            println!("{line}");
        }
    }
}
