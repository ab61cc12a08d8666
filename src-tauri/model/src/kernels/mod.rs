//! The inner loops of the model, one file per instruction set, chosen at run time.
//!
//! Laid out like ggml-cpu: the formats and layouts are shared, the micro-kernels are per ISA.
//! - `blocks.rs`: the GGUF block formats (Q4_K, Q6_K weights, Q8_K activations).
//! - [`interleaved`]: the sixteen-row weight layout, its exact repacking, and the products'
//!   scheduling over the thread pool; every SIMD path computes on this one layout.
//! - `gguf_layout.rs`: AVX-512 products on the GGUF blocks in place, for a model whose
//!   prepared file could not be written (other paths use candle's products on that layout).
//! - `scalar.rs`: the reference twin of every micro-kernel, in plain Rust with the same order
//!   of float operations, which the tests compare each ISA's kernels against.
//! - `avx512.rs` (+ `avx512_gguf.rs`), `avx2.rs`, `neon.rs`: the micro-kernels.
//!
//! A [`Kernels`] value names the path in use and proves the CPU can run it: it is only made
//! for an ISA the CPU has ([`Kernels::new`]). The process-wide choice ([`Kernels::default`])
//! is the best the CPU has unless the shell set another ([`set_default`], from
//! `SMOLLM3_KERNELS`); a model takes its own at load, so tests run every path in one process.
//! A path may have variants for optional instructions ([`Level`]: NEON's `sdot` and `smmla`),
//! chosen the same way; [`Kernels::variants`] lists them all, for the tests.

pub mod interleaved;
mod layout16;

mod blocks;
mod scalar;

#[cfg(test)]
mod bench;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_gguf;
#[cfg(target_arch = "x86_64")]
mod gguf_layout;
#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(target_arch = "aarch64")]
pub(crate) use neon::f16_to_f32;

pub use blocks::Format;
use blocks::{Q8x32, Q8K, QK, QK8_0};

use candle_core::quantized::k_quants::{BlockQ8K, GgmlType as _};
use std::sync::OnceLock;

/// The instruction sets the kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512 with VNNI and VBMI (Intel Ice Lake and later servers, AMD Zen 4 and later).
    Avx512,
    /// x86-64-v3: AVX2, FMA and F16C (Intel Haswell and later, AMD Zen and later).
    Avx2,
    /// AArch64 Advanced SIMD, with the dot-product and int8-matrix instructions where present.
    Neon,
    /// Plain Rust (candle's products on the GGUF layout): any CPU.
    Generic,
}

impl Isa {
    /// Every path, fastest first.
    pub const ALL: [Isa; 4] = [Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Generic];

    /// The name `SMOLLM3_KERNELS` takes and `bench`/`inspect` print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Neon => "neon",
            Isa::Generic => "generic",
        }
    }

    /// The path a name selects (`candle` is the old name of `generic`).
    pub fn from_name(name: &str) -> Option<Isa> {
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "candle" => Some(Isa::Generic),
            _ => Isa::ALL.into_iter().find(|i| i.name() == name),
        }
    }

    /// The CPU features the path needs, as the CPU documentation names them.
    pub fn requires(self) -> &'static str {
        match self {
            Isa::Avx512 => {
                "x86-64 with avx512f, avx512bw, avx512vl, avx512vnni, avx512vbmi, fma and f16c"
            }
            Isa::Avx2 => "x86-64 with avx2, fma and f16c",
            Isa::Neon => "aarch64 (Advanced SIMD)",
            Isa::Generic => "nothing",
        }
    }

    /// Whether this CPU can run the path.
    pub fn cpu_has(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx512vbmi")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => true,
            Isa::Generic => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

/// Optional instructions a path may use beyond what it requires, detected at run time like
/// the path itself. Only NEON has them; the other paths are always at [`Level::Base`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// The path's own instructions only (for NEON: any ARMv8, e.g. the Raspberry Pi 4's
    /// Cortex-A72).
    Base,
    /// The dot-product instructions, `sdot` (ARMv8.2 FEAT_DotProd: Cortex-A55/A76 and later,
    /// Apple M1, Neoverse N1).
    Dotprod,
    /// `sdot` and the int8 matrix multiply `smmla` (ARMv8.6 FEAT_I8MM: Apple M2, Neoverse V1
    /// and N2, Cortex-A510/A710 and later).
    I8mm,
}

impl Level {
    /// Every level, fastest first.
    pub const ALL: [Level; 3] = [Level::I8mm, Level::Dotprod, Level::Base];

    /// The name after the `+` in a variant's name (`neon+dotprod`).
    pub fn name(self) -> &'static str {
        match self {
            Level::Base => "base",
            Level::Dotprod => "dotprod",
            Level::I8mm => "i8mm",
        }
    }

    /// What the level needs, as the CPU documentation names it.
    pub fn requires(self) -> &'static str {
        match self {
            Level::Base => "nothing more",
            Level::Dotprod => "aarch64 with dotprod",
            Level::I8mm => "aarch64 with dotprod and i8mm",
        }
    }

    /// Whether this CPU has the level's instructions (for the NEON path, the only one with
    /// levels above the base).
    pub fn cpu_has(self) -> bool {
        match self {
            Level::Base => true,
            #[cfg(target_arch = "aarch64")]
            Level::Dotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[cfg(target_arch = "aarch64")]
            Level::I8mm => {
                std::arch::is_aarch64_feature_detected!("dotprod")
                    && std::arch::is_aarch64_feature_detected!("i8mm")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A kernel path this CPU can run. Holding one is what makes calling its `unsafe`
/// micro-kernels sound, so it is only made after checking the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kernels {
    isa: Isa,
    level: Level,
}

/// Why a kernel path cannot be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    /// The name is not a path.
    #[error("unknown kernel path {0:?}: expected avx512, avx2, neon[+base|+dotprod|+i8mm], generic or auto")]
    Unknown(String),
    /// The CPU lacks what the path needs.
    #[error("this CPU cannot run the {isa} kernels: they need {}", isa.requires())]
    Missing {
        /// The path asked for.
        isa: Isa,
    },
    /// The path has no such variant, or the CPU lacks its instructions.
    #[error("this CPU cannot run the {isa}+{} kernels: they need {}", level.name(), level.requires())]
    MissingLevel {
        /// The path asked for.
        isa: Isa,
        /// The variant asked for.
        level: Level,
    },
}

impl Kernels {
    /// The path for `isa`, if the CPU has it, at the best [`Level`] the CPU has for it.
    pub fn new(isa: Isa) -> Result<Self, SelectError> {
        if !isa.cpu_has() {
            return Err(SelectError::Missing { isa });
        }
        let level = match isa {
            Isa::Neon => Level::ALL.into_iter().find(|l| l.cpu_has()),
            _ => None,
        };
        Ok(Self {
            isa,
            level: level.unwrap_or(Level::Base),
        })
    }

    /// The path for `isa` at `level` exactly, if the CPU has both (levels above the base are
    /// NEON's only).
    pub fn with_level(isa: Isa, level: Level) -> Result<Self, SelectError> {
        Self::new(isa)?;
        if level == Level::Base || (isa == Isa::Neon && level.cpu_has()) {
            Ok(Self { isa, level })
        } else {
            Err(SelectError::MissingLevel { isa, level })
        }
    }

    /// The fastest path this CPU has.
    pub fn best() -> Self {
        Self::available()[0]
    }

    /// Every path this CPU can run, fastest first (the generic one last, always there).
    pub fn available() -> Vec<Self> {
        Isa::ALL
            .into_iter()
            .filter_map(|i| Self::new(i).ok())
            .collect()
    }

    /// Every variant of every path this CPU can run, fastest first: [`Kernels::available`]
    /// with each NEON [`Level`] the CPU has, so that tests check them all on one machine.
    pub fn variants() -> Vec<Self> {
        Self::available()
            .into_iter()
            .flat_map(|k| {
                Level::ALL
                    .into_iter()
                    .filter_map(move |l| Self::with_level(k.isa, l).ok())
            })
            .collect()
    }

    /// The path a setting names: `auto` or nothing for [`Kernels::best`], else a path's name,
    /// optionally with a level (`neon+dotprod`, as [`Kernels`]' `Display` writes it).
    pub fn from_setting(value: Option<&str>) -> Result<Self, SelectError> {
        let unknown = |v: &str| SelectError::Unknown(v.into());
        match value.map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(Self::best()),
            Some(v) if v.eq_ignore_ascii_case("auto") => Ok(Self::best()),
            Some(v) => match v.split_once('+') {
                None => Self::new(Isa::from_name(v).ok_or_else(|| unknown(v))?),
                Some((isa, level)) => {
                    let isa = Isa::from_name(isa).ok_or_else(|| unknown(v))?;
                    let level = Level::ALL
                        .into_iter()
                        .find(|l| l.name().eq_ignore_ascii_case(level.trim()))
                        .ok_or_else(|| unknown(v))?;
                    Self::with_level(isa, level)
                }
            },
        }
    }

    /// The instruction set.
    pub fn isa(self) -> Isa {
        self.isa
    }

    /// The optional instructions in use ([`Level::Base`] on every path but NEON).
    pub fn level(self) -> Level {
        self.level
    }

    /// Whether this path computes on the interleaved layout (every SIMD path does; the
    /// generic one keeps the GGUF layout and candle's products).
    pub fn interleaved(self) -> bool {
        self.isa != Isa::Generic
    }
}

impl std::fmt::Display for Kernels {
    /// The path's name; NEON's with its level (`neon+i8mm`, `neon+dotprod`, `neon+base`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.isa {
            Isa::Neon => write!(f, "{}+{}", self.isa, self.level.name()),
            _ => write!(f, "{}", self.isa),
        }
    }
}

static DEFAULT: OnceLock<Kernels> = OnceLock::new();

/// Sets the process-wide path, before the first model loads (the shell does, from
/// `SMOLLM3_KERNELS`). Returns the path already in force if it was set or used before.
pub fn set_default(kernels: Kernels) -> Result<(), Kernels> {
    DEFAULT.set(kernels)?;
    Ok(())
}

impl Default for Kernels {
    /// The process-wide path: what [`set_default`] set, else [`Kernels::best`].
    fn default() -> Self {
        *DEFAULT.get_or_init(Kernels::best)
    }
}

/// Errors from the products on arguments that do not describe a valid product.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    /// This product has no kernel on this path (the caller takes candle's).
    #[error("the {0} kernels have no such product")]
    Unsupported(Isa),
    /// `k` is not a whole number of 256-value super-blocks.
    #[error("{0} input features is not a multiple of {QK}")]
    Features(usize),
    /// A buffer does not match the (m, k, n) shape.
    #[error("{what} holds {found} elements, ({m}, {k}, {n}) needs {expected}")]
    Size {
        /// Which buffer.
        what: &'static str,
        /// Its length.
        found: usize,
        /// The length the shape needs.
        expected: usize,
        /// Activation rows.
        m: usize,
        /// Input features.
        k: usize,
        /// Output features.
        n: usize,
    },
}

/// Checks a product's arguments: `k` in whole super-blocks, and the lengths of the
/// activations, the output and the weights (`weight_bytes` of the super-blocks per row).
/// Returns the super-blocks per row.
fn check_shape(
    (m, k, n): (usize, usize, usize),
    (lhs, dst): (usize, usize),
    weights: usize,
    weight_bytes: impl Fn(usize) -> usize,
) -> Result<usize, KernelError> {
    if !k.is_multiple_of(QK) {
        return Err(KernelError::Features(k));
    }
    let size = |what, found, expected| {
        if found == expected {
            Ok(())
        } else {
            Err(KernelError::Size {
                what,
                found,
                expected,
                m,
                k,
                n,
            })
        }
    };
    size("lhs", lhs, m * k)?;
    size("dst", dst, m * n)?;
    let nb = k / QK;
    size("weight bytes", weights, weight_bytes(nb))?;
    Ok(nb)
}

/// `dst = lhs · Wᵀ` on the GGUF block layout of `format` (see `gguf_layout.rs`): `lhs` is
/// (m, k) row-major F32, `w` holds `n` rows of `k` values, `dst` is (m, n) row-major.
/// [`KernelError::Unsupported`] on paths without these kernels (all but AVX-512).
pub fn matmul_gguf(
    kernels: Kernels,
    format: Format,
    shape: (usize, usize, usize),
    lhs: &[f32],
    w: &[u8],
    dst: &mut [f32],
) -> Result<(), KernelError> {
    #[cfg(target_arch = "x86_64")]
    {
        gguf_layout::matmul(kernels, format, shape, lhs, w, dst)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (format, shape, lhs, w, dst);
        Err(KernelError::Unsupported(kernels.isa()))
    }
}

/// Quantizes each row of `lhs` (m, k) to Q8_K, on the thread pool. Every path gives the same
/// bits as candle's (and llama.cpp's) scalar quantizer.
fn quantize(kernels: Kernels, lhs: &[f32], m: usize, k: usize) -> Vec<Q8K> {
    let nb = k / QK;
    let mut blocks = vec![BlockQ8K::zeros(); m * nb];
    let addr = blocks.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(m, |rows| {
        for r in rows {
            // SAFETY: row `r` owns blocks r*nb..(r+1)*nb, disjoint from every other row; `Q8K`
            // has `BlockQ8K`'s layout (asserted in blocks.rs).
            let out = unsafe { std::slice::from_raw_parts_mut((addr as *mut Q8K).add(r * nb), nb) };
            let row = &lhs[r * k..(r + 1) * k];
            for (x, y) in row.chunks_exact(QK).zip(out.iter_mut()) {
                quantize_block(kernels, x.try_into().expect("a whole block"), y);
            }
        }
    });
    let mut blocks = std::mem::ManuallyDrop::new(blocks);
    // SAFETY: `Q8K` has the size, alignment and field layout of `BlockQ8K` (asserted in
    // blocks.rs, both `repr(C)` with the same fields), and both are plain old data.
    unsafe {
        Vec::from_raw_parts(
            blocks.as_mut_ptr() as *mut Q8K,
            blocks.len(),
            blocks.capacity(),
        )
    }
}

/// Quantizes each row of `lhs` (m, k) to Q8_0 blocks (with their sums), on the thread pool,
/// as llama.cpp does for products with Q8_0 weights. Written for every path in plain Rust: it
/// is a small part of a Q8_0 model's products.
fn quantize_q8_0(_kernels: Kernels, lhs: &[f32], m: usize, k: usize) -> Vec<Q8x32> {
    let nb = k / QK8_0;
    let mut blocks: Vec<Q8x32> = Vec::with_capacity(m * nb);
    let addr = blocks.spare_capacity_mut().as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(m, |rows| {
        for r in rows {
            for (i, x) in lhs[r * k..(r + 1) * k].chunks_exact(QK8_0).enumerate() {
                let mut y = Q8x32 {
                    d: 0.0,
                    sum: 0,
                    qs: [0; QK8_0],
                };
                scalar::quantize_q8_0(x.try_into().expect("a whole block"), &mut y);
                // SAFETY: row `r` owns blocks r*nb..(r+1)*nb of the capacity, disjoint from
                // every other row's.
                unsafe { (addr as *mut Q8x32).add(r * nb + i).write(y) };
            }
        }
    });
    // SAFETY: every row wrote all of its `nb` blocks.
    unsafe { blocks.set_len(m * nb) };
    blocks
}

/// One block of 256 values to Q8_K on the given path.
#[inline]
fn quantize_block(kernels: Kernels, x: &[f32; QK], y: &mut Q8K) {
    // SAFETY (all arms): `kernels` is only made for an ISA the CPU has.
    match kernels.isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::quantize_q8k(x, y) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::quantize_q8k(x, y) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::quantize_q8k(x, y) },
        _ => scalar::quantize_q8k(x, y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
        }
        assert_eq!(Isa::from_name(" AVX2 "), Some(Isa::Avx2));
        assert_eq!(Isa::from_name("candle"), Some(Isa::Generic));
        assert_eq!(
            Kernels::from_setting(Some("sse9")),
            Err(SelectError::Unknown("sse9".into()))
        );
        assert_eq!(Kernels::from_setting(None), Ok(Kernels::best()));
        assert_eq!(Kernels::from_setting(Some("auto")), Ok(Kernels::best()));
        assert_eq!(
            Kernels::from_setting(Some("generic")).unwrap().isa(),
            Isa::Generic
        );
        // A path the CPU lacks is refused with what it needs, never silently replaced.
        for isa in Isa::ALL {
            match Kernels::new(isa) {
                Ok(k) => assert!(isa.cpu_has() && k.isa() == isa),
                Err(e) => {
                    assert!(!isa.cpu_has());
                    assert!(e.to_string().contains(isa.requires()), "{e}");
                }
            }
        }
        assert_eq!(
            Kernels::available().last().map(|k| k.isa()),
            Some(Isa::Generic)
        );
    }

    #[test]
    fn variants_are_the_levels_this_cpu_has() {
        let variants = Kernels::variants();
        let names: Vec<String> = variants.iter().map(|k| k.to_string()).collect();
        eprintln!("kernel variants on this CPU: {}", names.join(", "));
        for k in &variants {
            // Each name selects its variant again.
            assert_eq!(Kernels::from_setting(Some(&k.to_string())), Ok(*k));
            assert!(k.level().cpu_has());
            assert!(k.isa() == Isa::Neon || k.level() == Level::Base);
        }
        for k in Kernels::available() {
            // The plain path is its best variant.
            assert_eq!(variants.iter().find(|v| v.isa() == k.isa()), Some(&k));
        }
        for level in Level::ALL {
            let neon = Kernels::with_level(Isa::Neon, level);
            assert_eq!(
                neon.is_ok(),
                Isa::Neon.cpu_has() && level.cpu_has(),
                "{level:?}"
            );
        }
        assert_eq!(
            Kernels::from_setting(Some("generic+i8mm")),
            Err(SelectError::MissingLevel {
                isa: Isa::Generic,
                level: Level::I8mm
            })
        );
        assert_eq!(
            Kernels::from_setting(Some("neon+sve")),
            Err(SelectError::Unknown("neon+sve".into()))
        );
    }

    #[test]
    fn every_quantizer_matches_the_scalar_one_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut x: Vec<f32> = (0..QK * 64)
            .map(|i| rng.gen_range(-3.0..3.0) * if i % 11 == 0 { 40.0 } else { 1.0 })
            .collect();
        // Halves after scaling, ties for the largest magnitude (the first wins), an all-zero
        // block and a negative maximum.
        for (j, v) in x[..QK].iter_mut().enumerate() {
            *v = (j as f32 - 128.0) * 0.5;
        }
        for v in &mut x[QK..2 * QK] {
            *v *= 0.01;
        }
        x[QK + 3] = 9.0;
        x[QK + 70] = -9.0;
        x[2 * QK..3 * QK].fill(0.0);
        x[3 * QK + 200] = -1000.0;
        let generic = Kernels::new(Isa::Generic).unwrap();
        let want = quantize(generic, &x, 1, QK * 64);
        // The scalar quantizer is candle's (and llama.cpp's) on x86.
        #[cfg(target_arch = "x86_64")]
        {
            let mut candle = vec![BlockQ8K::zeros(); 64];
            BlockQ8K::from_float(&x, &mut candle);
            for (b, (w, c)) in want.iter().zip(&candle).enumerate() {
                // SAFETY: `Q8K` has `BlockQ8K`'s layout (asserted in blocks.rs).
                let c: &Q8K = unsafe { &*(c as *const BlockQ8K as *const Q8K) };
                assert_eq!(w.d.to_bits(), c.d.to_bits(), "block {b} scale");
                assert_eq!((w.qs, w.bsums), (c.qs, c.bsums), "block {b}");
            }
        }
        for kernels in Kernels::variants() {
            let got = quantize(kernels, &x, 1, QK * 64);
            for (b, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.d.to_bits(), w.d.to_bits(), "{kernels} block {b} scale");
                assert_eq!(g.qs, w.qs, "{kernels} block {b} values");
                assert_eq!(g.bsums, w.bsums, "{kernels} block {b} sums");
            }
            eprintln!("{kernels} quantizer checked");
        }
    }
}
