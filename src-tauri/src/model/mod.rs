//! SmolLM3 on candle: GGUF loading (memory-mapped), configuration, the NoPE decoder and its KV cache.
