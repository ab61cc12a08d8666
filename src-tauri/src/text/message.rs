//! A chat message: what the chat template renders and the engine answers.

use serde::{Deserialize, Serialize};

/// One chat message as the engine sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The visible text (for an assistant message, the answer without reasoning).
    pub content: String,
    /// Token ids the model produced for an assistant message; later prompts are built from them
    /// so the KV prefix stays reusable (re-tokenizing text can give other ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

impl ChatMessage {
    /// A message from text alone.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            token_ids: None,
        }
    }
}
