//! The chat engine: sampling, generation and the worker thread that owns the model.

pub mod core;
pub mod events;
pub mod generate;
pub mod loader;
pub mod sampler;
pub mod worker;
