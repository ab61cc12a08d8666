//! Elementwise math written so that loops over it compile to vector code.

/// `eˣ` to about 2 ulp over the range where it is finite; saturates beyond (`e⁻⁸⁷` below,
/// `e⁸⁸` above), and a NaN input gives NaN. No branches and no float-to-integer cast (Rust's
/// saturating `as i32` compiles to a scalar conversion per lane), so loops over it vectorize:
/// `x = n·ln 2 + r`, `eʳ` by its Taylor series on |r| ≤ ln 2 / 2, `2ⁿ` built in the exponent
/// bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·ln 2 is subtracted exactly for |n| ≤ 128.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to the nearest integer n and leaves it in the low bits of the
    // sum's mantissa: the bits are those of 1.5·2²³ plus n.
    const ROUND: f32 = 12_582_912.0;
    const ROUND_BITS: u32 = 0x4B40_0000;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor terms to r⁶/720: truncation below 2e-8 relative.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n lies in −126..=127 after the clamp: 127 + n is a normal exponent.
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(ROUND_BITS - 127) << 23);
    p * two_n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1000.0), exp(-87.0));
        let tiny = exp(-1000.0);
        assert!(tiny > 0.0 && tiny < 1e-37, "far below: {tiny}");
        assert!(exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    /// The point of this module: with AVX-512 enabled, as the kernels that call it are, the
    /// loop becomes vector code. The same function with `n as i32` in place of the bit trick,
    /// and the standard library's `exp`, in the same build for comparison:
    /// `cargo test --release --lib vmath::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn speed() {
        /// [`exp`] as it was, with Rust's saturating cast.
        #[inline(always)]
        fn exp_cast(x: f32) -> f32 {
            let x = x.clamp(-87.0, 88.0);
            let n = (x * std::f32::consts::LOG2_E).round();
            let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
            let p = 1.0
                + r * (1.0
                    + r * (0.5
                        + r * (1.0 / 6.0
                            + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
            p * f32::from_bits(((n as i32 + 127) as u32) << 23)
        }
        // Generic, so that each function is inlined into the loop as in the kernels.
        #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
        unsafe fn run<F: Fn(f32) -> f32>(f: F, xs: &[f32], out: &mut [f32]) {
            for (x, o) in xs.iter().zip(out) {
                *o = f(*x);
            }
        }
        #[cfg(target_arch = "x86_64")]
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        let xs: Vec<f32> = (0..1 << 20)
            .map(|i| (i % 2000) as f32 / 20.0 - 80.0)
            .collect();
        let mut out = vec![0f32; xs.len()];
        let mut time = |name: &str, go: &mut dyn FnMut(&mut [f32])| {
            let mut best = f64::MAX;
            for _ in 0..20 {
                let t = std::time::Instant::now();
                go(&mut out);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("{name}: {:.3} ns a value", best / xs.len() as f64 * 1e9);
        };
        // SAFETY (all three): the feature was checked above.
        time("exp", &mut |o| unsafe { run(exp, &xs, o) });
        time("with the cast", &mut |o| unsafe { run(exp_cast, &xs, o) });
        time("f32::exp", &mut |o| unsafe { run(f32::exp, &xs, o) });
    }
}
