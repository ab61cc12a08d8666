//! The transport-free core of the app: conversations, settings, slash commands and the queue of
//! generation jobs. The desktop, HTTP and CLI shells all call [`ChatService`]; none of them
//! keeps state of its own.

pub mod commands;
pub mod engine_adapter;
pub mod generator;
pub mod repo;
pub mod service;
pub mod settings;
pub mod wizard;

pub use generator::{GenerateRequest, Generator, JobHandle, NoModel, Quote, SamplingSettings};
pub use service::{
    ChatService, ConversationView, EngineState, Owner, SendOutcome, ServiceError, StreamEvent,
};
pub use settings::{Settings, Theme};
