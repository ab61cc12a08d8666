//! The chat engine: sampling, generation and the worker thread that owns the model.

pub mod events;
pub mod sampler;
