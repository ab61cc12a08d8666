//! AArch64 NEON micro-kernels on the sixteen-row layout (to be written: these forward to the
//! scalar twins for now, so that the ARM build and its tests run).

use super::blocks::{Q8x32, Q8K, QK};
use super::interleaved::{Q4Kx16, Q6Kx16, Q8_0x16};
use super::scalar;

pub(super) unsafe fn quantize_q8k(x: &[f32; QK], y: &mut Q8K) {
    scalar::quantize_q8k(x, y)
}

pub(super) unsafe fn q4kx16<const C: usize>(
    w: *const Q4Kx16,
    a: (*const Q8K, *const [i16; 16]),
    nb: (usize, usize),
    out: (*mut f32, usize, bool),
) {
    scalar::q4kx16::<C>(w, a, nb, out)
}

pub(super) unsafe fn q6kx16<const C: usize>(
    w: *const Q6Kx16,
    a: (*const Q8K, *const [i16; 16]),
    nb: (usize, usize),
    out: (*mut f32, usize, bool),
) {
    scalar::q6kx16::<C>(w, a, nb, out)
}

pub(super) unsafe fn q8_0x16<const C: usize>(
    w: *const Q8_0x16,
    a: *const Q8x32,
    nb: (usize, usize),
    out: (*mut f32, usize, bool),
) {
    scalar::q8_0x16::<C>(w, a, nb, out)
}
