//! SmolLM3 on candle: GGUF loading (memory-mapped), configuration, the NoPE decoder and its KV cache.

pub mod attention;
pub mod config;
pub mod gguf;
pub mod heap;
pub mod kernels;
pub mod kv_cache;
pub mod norm;
pub mod options;
pub mod prepared;
pub mod smollm3;
pub mod swiglu;
pub mod synth;
pub mod vmath;
pub mod weights;

pub use config::Config;
pub use gguf::{GgufError, GgufFile};
pub use kv_cache::KvCache;
pub use smollm3::{BatchItem, Logits, Model};
