//! The GGUF block formats the kernels read (Q4_K, Q6_K weights; Q8_K activations), laid out
//! field for field as GGUF stores them, and the scalar decoding of their packed fields that
//! repacking and the reference kernels share.

use candle_core::quantized::k_quants::BlockQ8K;

/// Values per k-quant super-block.
pub(super) const QK: usize = 256;

/// A Q4_K super-block as stored in GGUF: 8 sub-blocks of 32 values with 6-bit scales and mins.
#[repr(C)]
pub(super) struct Q4K {
    pub(super) d: u16,
    pub(super) dmin: u16,
    pub(super) scales: [u8; 12],
    pub(super) qs: [u8; QK / 2],
}

/// A Q6_K super-block as stored in GGUF: 16 sub-blocks of 16 values with 8-bit scales.
#[repr(C)]
pub(super) struct Q6K {
    pub(super) ql: [u8; QK / 2],
    pub(super) qh: [u8; QK / 4],
    pub(super) scales: [i8; QK / 16],
    pub(super) d: u16,
}

/// The Q8_K activation block, field for field the layout of candle's `BlockQ8K`.
#[repr(C)]
pub(super) struct Q8K {
    pub(super) d: f32,
    pub(super) qs: [i8; QK],
    pub(super) bsums: [i16; QK / 16],
}

const _: () = assert!(std::mem::size_of::<Q4K>() == 144);
const _: () = assert!(std::mem::size_of::<Q6K>() == 210);
const _: () = assert!(std::mem::size_of::<Q8K>() == std::mem::size_of::<BlockQ8K>());
const _: () = assert!(std::mem::align_of::<Q8K>() == std::mem::align_of::<BlockQ8K>());

/// Weight formats these kernels compute with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// GGUF `Q4_K`.
    Q4K,
    /// GGUF `Q6_K`.
    Q6K,
}

impl Format {
    #[cfg(target_arch = "x86_64")]
    pub(super) fn block_bytes(self) -> usize {
        match self {
            Format::Q4K => std::mem::size_of::<Q4K>(),
            Format::Q6K => std::mem::size_of::<Q6K>(),
        }
    }
}

/// A Q4_K block's eight 6-bit scales and eight mins.
pub(super) fn q4k_scales_mins(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = q[j] & 63;
            mn[j] = q[j + 4] & 63;
        } else {
            sc[j] = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
            mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

/// Values per Q8_0 block.
pub(super) const QK8_0: usize = 32;

/// A Q8_0 block as stored in GGUF: 32 signed bytes and their scale.
#[repr(C)]
pub(super) struct Q80 {
    pub(super) d: u16,
    pub(super) qs: [i8; QK8_0],
}

const _: () = assert!(std::mem::size_of::<Q80>() == 34);

/// The activations for products with Q8_0 weights, quantized as llama.cpp quantizes them
/// (Q8_0 blocks): 32 values, their scale (stored by llama.cpp as an f16; here the f32 that f16
/// converts to) and their sum (which the AVX-512 kernels need to undo a code offset).
#[repr(C)]
pub(super) struct Q8x32 {
    pub(super) d: f32,
    pub(super) sum: i32,
    pub(super) qs: [i8; QK8_0],
}
