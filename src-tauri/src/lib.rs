//! SmolLM3 Bot: a local chat app for SmolLM3-3B.
//!
//! The crate is one library with thin shells on top (desktop, HTTP, CLI), so that every
//! transport shares the same model, chat engine and storage code.

pub mod app;
pub mod engine;
pub mod hub;
pub use smollm3_model as model;
pub mod shell;
pub mod store;
pub mod text;
pub mod view;
