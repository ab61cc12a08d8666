//! Helpers shared by the integration tests.

#![allow(dead_code)] // each test file uses a different part

pub mod mock_hub;
pub mod router;

/// `len` bytes of deterministic, non-repeating-looking content, different for each `seed`.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    // xorshift: cheap, and no two offsets of a small file look alike.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
