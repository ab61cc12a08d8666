//! Text handling around the model: tokenizer, chat template, streaming detokenizer, think splitter.

pub mod tokenizer;
