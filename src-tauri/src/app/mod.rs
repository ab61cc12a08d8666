//! The transport-free core of the app: conversations, settings, slash commands and the queue of
//! generation jobs. The desktop, browser, API and terminal shells all call [`ChatService`] or
//! the engine's [`Generator`](crate::engine::Generator); none of them keeps state of its own.

pub mod commands;
pub mod engines;
pub mod model_library;
pub mod repo;
pub mod service;
pub mod wizard;
pub mod wizard_state;

pub use service::{
    ChatService, ConversationView, EngineState, Owner, SendOutcome, ServiceError, StreamEvent,
};
