//! The sixteen-row layout: Q4_K, Q6_K and Q8_0 weights with sixteen rows interleaved, and
//! the repacking from GGUF's layout. The products on it are per instruction set
//! (`avx512.rs`, `avx2.rs`, `neon.rs`, `scalar.rs`); `interleaved.rs` schedules them.
//!
//! In the GGUF layout every row's 32-value (Q4_K) or 16-value (Q6_K) sub-block has its own
//! scale, so a kernel on that layout applies a scale after every few dozen products of every
//! (weight row, activation row) pair. On AMD Zen 4, where a 512-bit integer multiply issues
//! once per cycle, the scales, packs and float conversions then take about as long as the
//! products themselves.
//!
//! Here a block holds super-block `b` of sixteen consecutive rows, stored in 4-byte runs, one
//! per row: one 64-byte vector holds 4 values of all sixteen rows. A 4-byte run of activations
//! broadcast to every row meets it in one `vpdpbusd`, which leaves each row's sum in its own
//! dword; after a sub-block's `vpdpbusd` (eight for Q4_K, four for Q6_K) one `vpmulld`
//! applies the sixteen rows' scales. Per 512 products that is 9 multiply-pipe instructions
//! for Q4_K and 10 for Q6_K. Eight rows in 8-byte runs, the layout before this one, split
//! each row's sum over two dwords and needed a pack and a 16-bit scale product for them:
//! 10 for Q4_K, and 12 for Q6_K, whose sums of 16 do not fit 16 bits and went through
//! `vpmaddubsw`. Block scales, mins and float work happen once per super-block and
//! activation row.
//!
//! A block has the size of the sixteen GGUF blocks it replaces, so the layout costs no
//! memory; it is built once ([`repack_q4k`], [`repack_q6k`]) and kept in a file beside the
//! model ([`crate::prepared`]). A tensor's row count must be a multiple of [`ROWS`].

use super::blocks::{q4k_scales_mins, Q4K, Q6K, Q80, QK, QK8_0};

/// A Q4_K row block's 256 codes (0..16), in value order.
pub(super) fn q4k_codes(blk: &Q4K) -> [u8; QK] {
    let mut out = [0u8; QK];
    for j in 0..4 {
        for l in 0..32 {
            let byte = blk.qs[32 * j + l];
            out[64 * j + l] = byte & 0x0F;
            out[64 * j + 32 + l] = byte >> 4;
        }
    }
    out
}

/// Why a tensor cannot be interleaved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RepackError {
    /// The row count is not a multiple of [`ROWS`].
    #[error("{0} rows is not a multiple of {ROWS}")]
    Rows(usize),
    /// The column count is not a multiple of the super-block size.
    #[error("{0} columns is not a multiple of {QK}")]
    Cols(usize),
    /// The byte counts do not match the shape.
    #[error("{what} holds {found} bytes, {expected} expected")]
    Size {
        /// Which buffer.
        what: &'static str,
        /// Its length.
        found: usize,
        /// The length the shape needs.
        expected: usize,
    },
}

/// Rows per interleaved block.
pub const ROWS: usize = 16;

/// Sixteen Q4_K super-blocks (one per row), interleaved.
#[repr(C)]
pub(super) struct Q4Kx16 {
    /// Block scales of the sixteen rows (f16).
    pub(super) d: [u16; ROWS],
    /// Block min scales of the sixteen rows (f16).
    pub(super) dmin: [u16; ROWS],
    /// The 128 sub-block scales and the 128 mins, index `16·s + r`, 6 bits each: byte `i` of
    /// 0..128 holds scale `i`'s low nibble and min `i`'s high nibble, byte `128 + i` the top
    /// two bits of scales `i`, `64 + i` and of mins `i`, `64 + i`, in that order from bit 0.
    pub(super) scales: [u8; 192],
    /// Sub-block `s` in bytes `256·s..256·(s + 1)`: byte `64·h + 4·r + i` holds value
    /// `32·s + 8·h + i` of row `r` in its low nibble and value `32·s + 8·h + 4 + i` in its
    /// high nibble.
    pub(super) qs: [u8; 2048],
}

const _: () = assert!(std::mem::size_of::<Q4Kx16>() == ROWS * std::mem::size_of::<Q4K>());

/// Bytes of one sixteen-row Q4_K block.
pub const Q4K_BYTES: usize = std::mem::size_of::<Q4Kx16>();

/// Rewrites `rows × cols` Q4_K weights in the GGUF layout (`src`) into the sixteen-row
/// layout (`dst`, the same size). Exact: every code, scale and min is kept as it is.
pub fn repack_q4k(src: &[u8], rows: usize, cols: usize, dst: &mut [u8]) -> Result<(), RepackError> {
    const B: usize = std::mem::size_of::<Q4K>();
    let nb = check_repack(src.len(), dst.len(), rows, cols, B)?;
    for g in 0..rows / ROWS {
        for b in 0..nb {
            let mut out = Q4Kx16 {
                d: [0; ROWS],
                dmin: [0; ROWS],
                scales: [0; 192],
                qs: [0; 2048],
            };
            let (mut sc, mut mn) = ([0u8; 128], [0u8; 128]);
            for r in 0..ROWS {
                let at = ((g * ROWS + r) * nb + b) * B;
                let bytes = &src[at..at + B];
                let mut scales = [0u8; 12];
                scales.copy_from_slice(&bytes[4..16]);
                let mut qs = [0u8; QK / 2];
                qs.copy_from_slice(&bytes[16..]);
                let blk = Q4K {
                    d: u16::from_le_bytes([bytes[0], bytes[1]]),
                    dmin: u16::from_le_bytes([bytes[2], bytes[3]]),
                    scales,
                    qs,
                };
                out.d[r] = blk.d;
                out.dmin[r] = blk.dmin;
                let (s6, m6) = q4k_scales_mins(&blk.scales);
                for s in 0..8 {
                    sc[16 * s + r] = s6[s];
                    mn[16 * s + r] = m6[s];
                }
                let codes = q4k_codes(&blk);
                for s in 0..8 {
                    for h in 0..4 {
                        for i in 0..4 {
                            let v = 32 * s + 8 * h + i;
                            out.qs[256 * s + 64 * h + 4 * r + i] = codes[v] | (codes[v + 4] << 4);
                        }
                    }
                }
            }
            for i in 0..128 {
                out.scales[i] = (sc[i] & 0x0F) | ((mn[i] & 0x0F) << 4);
            }
            for i in 0..64 {
                out.scales[128 + i] = (sc[i] >> 4)
                    | ((sc[64 + i] >> 4) << 2)
                    | ((mn[i] >> 4) << 4)
                    | ((mn[64 + i] >> 4) << 6);
            }
            let at = (g * nb + b) * Q4K_BYTES;
            // SAFETY: `Q4Kx16` is `repr(C)` plain old data without padding (its size is
            // asserted to be the sum of its fields' sizes).
            let bytes = unsafe {
                std::slice::from_raw_parts(&out as *const Q4Kx16 as *const u8, Q4K_BYTES)
            };
            dst[at..at + Q4K_BYTES].copy_from_slice(bytes);
        }
    }
    Ok(())
}

/// A Q6_K row block's 256 codes (0..64, the stored value plus 32), in value order.
fn q6k_codes(ql: &[u8], qh: &[u8]) -> [u8; QK] {
    let mut out = [0u8; QK];
    for half in 0..2 {
        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
        let o = &mut out[128 * half..];
        for l in 0..32 {
            o[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
            o[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            o[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            o[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    out
}

/// Sixteen Q6_K super-blocks (one per row), interleaved.
#[repr(C)]
pub(super) struct Q6Kx16 {
    /// Block scales of the sixteen rows (f16).
    pub(super) d: [u16; ROWS],
    /// The 16-value groups' scales, index `16·g + r`.
    pub(super) scales: [i8; 256],
    /// Low four bits of the codes: values `32p..32p + 32` in bytes `256·p..256·(p + 1)`, byte
    /// `64·h + 4·r + i` holding value `32p + 8h + i` of row `r` (low nibble) and
    /// `32p + 8h + 4 + i` (high nibble).
    pub(super) ql: [u8; 2048],
    /// Top two bits: byte `128·p + 64·e + 4·r + i` holds those of values `32p + 16e + 4j + i`,
    /// j = 0..4, in bits `2j..2j + 2`.
    pub(super) qh: [u8; 1024],
}

const _: () = assert!(std::mem::size_of::<Q6Kx16>() == ROWS * std::mem::size_of::<Q6K>());

/// Bytes of one sixteen-row Q6_K block.
pub const Q6K_BYTES: usize = std::mem::size_of::<Q6Kx16>();

/// Rewrites `rows × cols` Q6_K weights in the GGUF layout (`src`) into the sixteen-row
/// layout (`dst`, the same size). Exact: every code and scale is kept as it is.
pub fn repack_q6k(src: &[u8], rows: usize, cols: usize, dst: &mut [u8]) -> Result<(), RepackError> {
    const B: usize = std::mem::size_of::<Q6K>();
    let nb = check_repack(src.len(), dst.len(), rows, cols, B)?;
    for g in 0..rows / ROWS {
        for b in 0..nb {
            let mut out = Q6Kx16 {
                d: [0; ROWS],
                scales: [0; 256],
                ql: [0; 2048],
                qh: [0; 1024],
            };
            for r in 0..ROWS {
                let at = ((g * ROWS + r) * nb + b) * B;
                let blk = &src[at..at + B];
                let (ql, qh, sc, d) = (&blk[..128], &blk[128..192], &blk[192..208], &blk[208..]);
                out.d[r] = u16::from_le_bytes([d[0], d[1]]);
                for (gi, &v) in sc.iter().enumerate() {
                    out.scales[16 * gi + r] = v as i8;
                }
                let codes = q6k_codes(ql, qh);
                for p in 0..8 {
                    for h in 0..4 {
                        for i in 0..4 {
                            let v = 32 * p + 8 * h + i;
                            out.ql[256 * p + 64 * h + 4 * r + i] =
                                (codes[v] & 0x0F) | ((codes[v + 4] & 0x0F) << 4);
                        }
                    }
                    for e in 0..2 {
                        for i in 0..4 {
                            let mut byte = 0;
                            for j in 0..4 {
                                byte |= (codes[32 * p + 16 * e + 4 * j + i] >> 4) << (2 * j);
                            }
                            out.qh[128 * p + 64 * e + 4 * r + i] = byte;
                        }
                    }
                }
            }
            let at = (g * nb + b) * Q6K_BYTES;
            // SAFETY: `Q6Kx16` is `repr(C)` plain old data without padding (its size is
            // asserted to be the sum of its fields' sizes).
            let bytes = unsafe {
                std::slice::from_raw_parts(&out as *const Q6Kx16 as *const u8, Q6K_BYTES)
            };
            dst[at..at + Q6K_BYTES].copy_from_slice(bytes);
        }
    }
    Ok(())
}

/// Checks a repack's shape and buffers.
fn check_repack(
    src: usize,
    dst: usize,
    rows: usize,
    cols: usize,
    block: usize,
) -> Result<usize, RepackError> {
    if !rows.is_multiple_of(ROWS) {
        return Err(RepackError::Rows(rows));
    }
    if !cols.is_multiple_of(QK) {
        return Err(RepackError::Cols(cols));
    }
    let values = if block == std::mem::size_of::<Q80>() {
        QK8_0
    } else {
        QK
    };
    let nb = cols / values;
    let expected = rows * nb * block;
    for (what, found) in [("source", src), ("destination", dst)] {
        if found != expected {
            return Err(RepackError::Size {
                what,
                found,
                expected,
            });
        }
    }
    Ok(nb)
}

/// Sixteen Q8_0 blocks (one per row), interleaved.
#[repr(C)]
pub(super) struct Q8_0x16 {
    /// Scales of the sixteen rows (f16).
    pub(super) d: [u16; ROWS],
    /// Byte `64·t + 4·r + i` holds value `4t + i` of row `r`.
    pub(super) qs: [i8; ROWS * QK8_0],
}

const _: () = assert!(std::mem::size_of::<Q8_0x16>() == ROWS * std::mem::size_of::<Q80>());

/// Bytes of one sixteen-row Q8_0 block.
pub const Q8_0_BYTES: usize = std::mem::size_of::<Q8_0x16>();

/// Rewrites `rows × cols` Q8_0 weights in the GGUF layout (`src`) into the sixteen-row layout
/// (`dst`, the same size). Exact: every value and scale is kept as it is.
pub fn repack_q8_0(
    src: &[u8],
    rows: usize,
    cols: usize,
    dst: &mut [u8],
) -> Result<(), RepackError> {
    const B: usize = std::mem::size_of::<Q80>();
    let nb = check_repack(src.len(), dst.len(), rows, cols, B)?;
    for g in 0..rows / ROWS {
        for b in 0..nb {
            let at = (g * nb + b) * Q8_0_BYTES;
            let out = &mut dst[at..at + Q8_0_BYTES];
            for r in 0..ROWS {
                let from = ((g * ROWS + r) * nb + b) * B;
                let blk = &src[from..from + B];
                out[2 * r..2 * r + 2].copy_from_slice(&blk[..2]);
                for v in 0..QK8_0 {
                    out[2 * ROWS + 64 * (v / 4) + 4 * r + v % 4] = blk[2 + v];
                }
            }
        }
    }
    Ok(())
}

/// A repack function: (GGUF bytes, rows, cols, destination).
pub type Repack = fn(&[u8], usize, usize, &mut [u8]) -> Result<(), RepackError>;

/// Blocks a decoding product reads ahead of the block in use. Decode streams every weight
/// from memory once; without the hint the products keep too few reads in flight to reach the
/// memory's bandwidth (figures in doc/benchmarks.md; AVX2's use in `avx2::streaming`).
#[cfg(target_arch = "x86_64")]
pub(super) const PREFETCH_BLOCKS: usize = 1;
