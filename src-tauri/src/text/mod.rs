//! Text handling around the model: tokenizer, chat template, prompt tokens, streaming
//! detokenizer, think splitter.

pub mod chat_template;
pub mod detok;
mod message;
pub mod prompt;
pub mod think;
pub mod tokenizer;

pub use message::ChatMessage;
