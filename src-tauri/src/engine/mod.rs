//! The chat engine: one worker thread owns the model and runs queued jobs from messages to
//! streamed deltas, keeping each conversation's KV cache between turns.
//!
//! The engine owns the vocabulary of that seam: [`GenerateRequest`], [`SamplingParams`],
//! [`JobHandle`], [`CancelToken`] and the [`Generator`] trait, which [`Engine`] implements.

pub mod admission;
pub mod constraint;
pub mod core;
pub mod events;
pub mod generate;
pub mod generator;
pub mod loader;
pub mod prompter;
pub mod remote;
mod remote_server;
pub mod request;
pub mod sampler;
pub mod sequence;
pub mod snapshot;
pub mod worker;

pub use self::core::EngineOptions;
pub use events::{ChatMessage, EngineEvent, FinishReason, GenerationStats};
pub use generator::{CancelToken, Generator, JobHandle, NoModel, Quote};
pub use prompter::Prompter;
pub use remote::{RemoteGenerator, RemoteOptions, RemoteServer};
pub use request::{CallsOr, Constraint, GenerateRequest, JobError};
pub use sampler::SamplingParams;
pub use snapshot::SnapshotOptions;
pub use worker::Engine;
