//! What a caller asks of the engine ([`GenerateRequest`]) and how a job can fail
//! ([`JobError`]): the vocabulary the worker, the prompter and every caller share.

use super::events::ChatMessage;
use super::sampler::SamplingParams;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a caller asks the engine to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The conversation this continues: its KV cache slot is kept between turns. `None` for a
    /// request that stands alone (the API's): the engine then reuses whichever unnamed slot
    /// shares the longest start with its prompt, so the prompt depends on the request only.
    pub conversation: Option<String>,
    /// The conversation so far, ending with the message to answer.
    pub messages: Vec<ChatMessage>,
    /// Sampling settings (including `max_tokens`).
    pub params: SamplingParams,
    /// SmolLM3's reasoning mode (`/think` and `/no_think` in a system message override it).
    pub enable_thinking: bool,
    /// The conversation's fixed "Today Date".
    pub today: NaiveDate,
    /// After this many reasoning tokens, close the reasoning and go on with the answer.
    pub thinking_budget: Option<usize>,
    /// Strings that end the answer (not included in it).
    #[serde(default)]
    pub stop: Vec<String>,
    /// Text the assistant turn already starts with: the model continues it instead of
    /// beginning a reply. `"<think>\n"` starts inside the reasoning; a cut-short reply's text
    /// continues that reply. The prefix is not streamed back (the caller has it), but its
    /// token ids lead the reply's kept ids.
    #[serde(default)]
    pub assistant_prefix: Option<String>,
    /// Report each generated token's log-probability, with this many of the likeliest
    /// alternatives (0 to 20), as [`super::EngineEvent::Logprob`] events; `None` reports none.
    #[serde(default)]
    pub logprobs: Option<usize>,
    /// Functions the model may call (`{"name", "description", "parameters"}` each), shown to
    /// it as the chat template's `xml_tools`; it answers a call with
    /// `<tool_call>{"name": …, "arguments": …}</tool_call>`.
    #[serde(default)]
    pub tools: Vec<serde_json::Value>,
    /// A prompt given as token ids, used as it is instead of the conversation rendered with
    /// the template (`/v1/completions`); the reply is all answer text, no reasoning split.
    #[serde(default)]
    pub raw_prompt: Option<Vec<u32>>,
    /// What the reply must be (JSON against a schema, tool calls only), enforced token by
    /// token; `None` leaves it free.
    #[serde(default)]
    pub constraint: Option<Constraint>,
}

impl GenerateRequest {
    /// A request with the engine's default sampling, thinking off, no budget, stop strings or
    /// prefix.
    pub fn new(conversation: Option<String>, messages: Vec<ChatMessage>, today: NaiveDate) -> Self {
        Self {
            conversation,
            messages,
            params: SamplingParams::default(),
            enable_thinking: false,
            today,
            thinking_budget: None,
            stop: Vec::new(),
            assistant_prefix: None,
            logprobs: None,
            tools: Vec::new(),
            raw_prompt: None,
            constraint: None,
        }
    }
}

/// What a reply must be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Constraint {
    /// Any JSON object (OpenAI's `response_format: json_object`).
    JsonObject,
    /// JSON valid against a schema (`response_format: json_schema`).
    JsonSchema {
        /// The JSON Schema.
        schema: Value,
    },
    /// `<tool_call>{"name": …, "arguments": …}</tool_call>` blocks as SmolLM3 writes them,
    /// each naming one of `functions` (`{"name", "parameters"}`) with arguments valid
    /// against its parameters. `instead` says what the reply may be when the model calls
    /// nothing: without it the reply is calls only, at least one (`tool_choice: required`,
    /// or a named function); otherwise the model chooses (`tool_choice: auto`).
    ToolCalls {
        /// The functions a call may name.
        functions: Vec<Value>,
        /// Whether more than one call may follow the first.
        parallel: bool,
        /// The answer the model may give instead of calls.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instead: Option<CallsOr>,
    },
}

/// What a reply held to tool calls may be when it makes no call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CallsOr {
    /// Free text, which may also hold calls among it (the calls are held to their schemas).
    Text,
    /// JSON valid against `schema` (`response_format` beside `tool_choice: auto`): the
    /// reply is either that JSON or calls.
    Json {
        /// The JSON Schema of the answer.
        schema: Value,
    },
}

/// A job's failure, worded for the person waiting on it.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The prompt does not fit the context.
    #[error("the conversation is too long: its prompt has {prompt} tokens and the context holds {context}. Start a new conversation, delete old messages, or raise the context size in the settings.")]
    ContextFull {
        /// Prompt tokens.
        prompt: usize,
        /// Context size.
        context: usize,
    },
    /// Bad sampling settings.
    #[error("invalid settings: {0}")]
    Settings(String),
    /// The chat template failed.
    #[error("the chat template failed: {0}")]
    Template(String),
    /// The output constraint (a JSON Schema, forced tool calls) cannot be used.
    #[error("the output constraint cannot be used: {0}")]
    Constraint(String),
    /// The model failed.
    #[error("the model failed: {0}")]
    Model(String),
}
