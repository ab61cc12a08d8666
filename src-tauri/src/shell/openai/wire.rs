//! The OpenAI wire format: the request body as clients send it, the response and stream
//! chunk objects, and errors in OpenAI's shape `{"error":{"message","type","param","code"}}`.
//!
//! Field names follow OpenAI's Chat Completions API, with the extras llama.cpp's server made
//! common: `top_k`, `min_p`, `repeat_penalty`, `chat_template_kwargs.enable_thinking`, and the
//! model's reasoning returned apart from the answer as `reasoning_content` (in the message, and
//! in stream deltas).

use crate::engine::{EngineEvent, FinishReason, GenerationStats};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

/// An API failure: status and OpenAI-style error fields.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type`.
    pub kind: &'static str,
    /// OpenAI's `code`.
    pub code: &'static str,
    /// The field at fault, when one is.
    pub param: Option<String>,
    /// For a person.
    pub message: String,
    /// Seconds for `Retry-After` (503 only).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: String,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            param: None,
            message,
            retry_after_s: None,
        }
    }

    /// 400: the request is malformed or a value is out of range.
    pub fn bad_request(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            param: param.map(str::to_string),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                message.into(),
            )
        }
    }

    /// 500: the engine failed.
    pub fn engine(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "engine_error",
            message.into(),
        )
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({ "error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// The error an engine event's message stands for.
    pub(super) fn from_engine_message(message: String) -> Self {
        // The engine words its errors for people; these phrases are its request faults.
        if message.starts_with("the conversation is too long") {
            Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
                message,
            )
        } else if message.starts_with("invalid settings") {
            Self::bad_request(None, message)
        } else if message.contains("the assistant message to continue does not fit") {
            // A prefill the reply's format cannot continue (text before a JSON answer).
            Self::bad_request(Some("messages"), message)
        } else {
            Self::engine(message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// 404 for a model name this server does not serve.
pub(super) fn unknown_model(name: &str) -> ApiError {
    ApiError {
        param: Some("model".into()),
        ..ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("the model `{name}` does not exist here; GET /v1/models lists the one served"),
        )
    }
}

/// Message content: a string, or OpenAI's array of parts (only text parts are supported).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub(super) struct Part {
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct InMessage {
    pub(super) role: String,
    #[serde(default)]
    pub(super) content: Option<Content>,
    /// An assistant message's calls (OpenAI's shape).
    #[serde(default)]
    pub(super) tool_calls: Option<Vec<Value>>,
    /// Which call a `tool` message answers, and the function's name: labels the template
    /// does not show (it shows results in order).
    #[serde(default)]
    pub(super) tool_call_id: Option<String>,
    #[serde(default)]
    pub(super) name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct StreamOptions {
    #[serde(default)]
    pub(super) include_usage: Option<bool>,
}

/// The request body. Every field is either used, refused with a 400 that names it, or (for
/// `user` and `metadata`, which only label a request) accepted without effect; a field this
/// server does not know is refused by name (see `plan`), never silently dropped.
#[derive(Debug, Deserialize)]
pub(super) struct ChatRequest {
    #[serde(default)]
    pub(super) model: Option<String>,
    pub(super) messages: Vec<InMessage>,
    #[serde(default)]
    pub(super) stream: Option<bool>,
    #[serde(default)]
    pub(super) stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub(super) max_tokens: Option<i64>,
    #[serde(default)]
    pub(super) max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub(super) stop: Option<Stop>,
    #[serde(default)]
    pub(super) n: Option<i64>,
    #[serde(default)]
    pub(super) chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub(super) tools: Option<Vec<Value>>,
    #[serde(default)]
    pub(super) logprobs: Option<bool>,
    #[serde(default)]
    pub(super) response_format: Option<Value>,
    #[serde(default)]
    pub(super) reasoning_effort: Option<String>,
    #[serde(default)]
    pub(super) top_logprobs: Option<Value>,
    #[serde(default)]
    pub(super) tool_choice: Option<Value>,
    #[serde(default)]
    pub(super) functions: Option<Vec<Value>>,
    #[serde(default)]
    pub(super) function_call: Option<Value>,
    #[serde(default)]
    pub(super) parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub(super) store: Option<bool>,
    #[serde(default)]
    pub(super) service_tier: Option<String>,
    /// Labels for the request: accepted, without effect (nothing is kept per user).
    #[serde(default)]
    pub(super) user: Option<String>,
    #[serde(default)]
    pub(super) metadata: Option<Value>,
    #[serde(flatten)]
    pub(super) sampling: SamplingFields,
    /// Everything else the client sent, to be refused by name (after the flattened fields
    /// above, which take theirs first).
    #[serde(flatten)]
    pub(super) unknown: serde_json::Map<String, Value>,
}

/// The sampling fields chat and text completions share (see `plan::sampling_params`).
#[derive(Debug, Default, Deserialize)]
pub(super) struct SamplingFields {
    #[serde(default)]
    pub(super) temperature: Option<f32>,
    #[serde(default)]
    pub(super) top_p: Option<f32>,
    #[serde(default)]
    pub(super) top_k: Option<i64>,
    #[serde(default)]
    pub(super) min_p: Option<f32>,
    #[serde(default)]
    pub(super) repeat_penalty: Option<f32>,
    #[serde(default)]
    pub(super) frequency_penalty: Option<f32>,
    #[serde(default)]
    pub(super) presence_penalty: Option<f32>,
    #[serde(default)]
    pub(super) logit_bias: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub(super) seed: Option<i64>,
}

/// The reply's `message`: the answer as `content`, the reasoning (when there was any) as
/// `reasoning_content`.
pub fn assistant_message(answer: &str, reasoning: &str) -> Value {
    let mut message = json!({ "role": "assistant", "content": answer });
    if !reasoning.is_empty() {
        message["reasoning_content"] = Value::String(reasoning.to_string());
    }
    message
}

/// One streamed chunk of a reply.
pub fn chunk(
    id: &str,
    created: i64,
    model: &str,
    delta: Value,
    finish: Option<&str>,
    with_usage: bool,
) -> Value {
    let mut c = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
    });
    if with_usage {
        c["usage"] = Value::Null;
    }
    c
}

/// The stream delta for an engine event, if it carries text.
pub fn delta_for(ev: &EngineEvent) -> Option<Value> {
    match ev {
        EngineEvent::Reasoning { text } if !text.is_empty() => {
            Some(json!({ "reasoning_content": text }))
        }
        EngineEvent::Answer { text } if !text.is_empty() => Some(json!({ "content": text })),
        _ => None,
    }
}

/// One entry of OpenAI's `logprobs.content` for an engine `Logprob` event.
pub fn logprob_entry(ev: &EngineEvent) -> Option<Value> {
    let EngineEvent::Logprob {
        token,
        logprob,
        top,
    } = ev
    else {
        return None;
    };
    let entry = |t: &str, lp: f32| json!({ "token": t, "logprob": lp, "bytes": t.as_bytes() });
    let mut v = entry(token, *logprob);
    v["top_logprobs"] = top.iter().map(|(t, lp)| entry(t, *lp)).collect();
    Some(v)
}

/// OpenAI's `finish_reason` for an engine result.
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length | FinishReason::ContextFull => "length",
    }
}

/// OpenAI's `usage` object.
pub fn usage(stats: &GenerationStats) -> Value {
    json!({
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.generated_tokens,
        "total_tokens": stats.prompt_tokens + stats.generated_tokens,
        "prompt_tokens_details": { "cached_tokens": stats.reused_tokens },
    })
}

/// A fresh id for a response or a call: `prefix` and 24 random letters and digits.
pub(super) fn random_id(prefix: &str) -> String {
    let tail: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}{tail}")
}

pub(super) fn completion_id() -> String {
    random_id("chatcmpl-")
}
