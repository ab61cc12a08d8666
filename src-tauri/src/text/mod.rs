//! Text handling around the model: tokenizer, chat template, streaming detokenizer, think splitter.

pub mod chat_template;
pub mod detok;
pub mod think;
pub mod tokenizer;
