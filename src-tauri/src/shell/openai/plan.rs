//! Request planning: a parsed OpenAI request checked and turned into the engine's
//! [`GenerateRequest`]. The result depends on the request (and the date) alone, so two
//! identical requests get identical prompts whatever came before them.

use super::wire::{ApiError, ChatRequest, Content, InMessage, Stop};
use crate::engine::{ChatMessage, GenerateRequest, SamplingParams};
use chrono::NaiveDate;
use serde_json::Value;

/// Most stop strings one request may give.
const MAX_STOPS: usize = 16;

/// A validated request, ready for the engine.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The job.
    pub request: GenerateRequest,
    /// Stream the reply as server-sent events.
    pub stream: bool,
    /// Send a final usage chunk when streaming.
    pub include_usage: bool,
}

fn text_of(i: usize, m: InMessage) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match m.content {
        None if m.role == "assistant" => Ok(String::new()),
        None => Err(ApiError::bad_request(
            Some(&param),
            format!("{param} is missing"),
        )),
        Some(Content::Text(t)) => Ok(t),
        Some(Content::Parts(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.kind.as_str(), p.text) {
                    ("text", Some(t)) => out.push_str(&t),
                    ("text", None) => {
                        return Err(ApiError::bad_request(
                            Some(&param),
                            "a text part needs a `text` field",
                        ))
                    }
                    (other, _) => {
                        return Err(ApiError::bad_request(
                            Some(&param),
                            format!("content parts of type `{other}` are not supported; this model reads text only"),
                        ))
                    }
                }
            }
            Ok(out)
        }
    }
}

/// Checks a parsed body and turns it into an engine request for the day `today`. The request
/// names no conversation: the engine finds the cached prefix it shares with earlier ones.
pub fn plan(req: ChatRequest, context: usize, today: NaiveDate) -> Result<Plan, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::bad_request(
            Some("messages"),
            "messages must hold at least one message",
        ));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request(Some("n"), "only n = 1 is supported"));
    }
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::bad_request(
            Some("tools"),
            "tool calling is not supported by this server",
        ));
    }
    if req.logprobs == Some(true) {
        return Err(ApiError::bad_request(
            Some("logprobs"),
            "logprobs are not supported by this server",
        ));
    }
    if let Some(rf) = &req.response_format {
        if rf.get("type").and_then(Value::as_str).unwrap_or("text") != "text" {
            return Err(ApiError::bad_request(
                Some("response_format"),
                "only the `text` response format is supported",
            ));
        }
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::bad_request(
                    Some(&format!("messages[{i}].role")),
                    format!("role `{other}` is not supported (system, developer, user, assistant)"),
                ))
            }
        };
        let text = text_of(i, m)?;
        messages.push(ChatMessage::new(role, text));
    }

    let mut params = SamplingParams::default();
    if let Some(t) = req.temperature {
        params.temperature = t;
    }
    if let Some(p) = req.top_p {
        params.top_p = p;
    }
    if let Some(k) = req.top_k {
        params.top_k = usize::try_from(k).map_err(|_| {
            ApiError::bad_request(Some("top_k"), format!("top_k must be 0 or more (got {k})"))
        })?;
    }
    if let Some(p) = req.min_p {
        params.min_p = p;
    }
    if let Some(r) = req.repeat_penalty {
        params.repeat_penalty = r;
    }
    params.seed = req.seed.map(|s| s as u64);
    let (max_param, max) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    params.max_tokens = match max {
        // Without a limit, the reply may fill the context (the engine stops there).
        None => context,
        Some(m) if m >= 1 => usize::try_from(m).unwrap_or(usize::MAX).min(context),
        Some(m) => {
            return Err(ApiError::bad_request(
                Some(max_param),
                format!("{max_param} must be at least 1 (got {m})"),
            ))
        }
    };
    if let Some((field, message)) = params.problems().into_iter().next() {
        return Err(ApiError::bad_request(Some(field), message));
    }

    let stop = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::bad_request(
            Some("stop"),
            format!("at most {MAX_STOPS} stop strings are supported"),
        ));
    }
    let thinking = match req
        .chat_template_kwargs
        .as_ref()
        .and_then(|k| k.get("enable_thinking"))
    {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::bad_request(
                Some("chat_template_kwargs.enable_thinking"),
                "enable_thinking must be true or false",
            ))
        }
    };
    let stream = req.stream.unwrap_or(false);
    let include_usage = stream
        && req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
    let _ = req.model;
    Ok(Plan {
        request: GenerateRequest {
            params,
            enable_thinking: thinking,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            ..GenerateRequest::new(None, messages, today)
        },
        stream,
        include_usage,
    })
}

/// Parses and validates a request body, dated today.
pub fn parse_request(body: &[u8], context: usize) -> Result<Plan, ApiError> {
    let req: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(None, format!("the request body is not valid: {e}")))?;
    plan(req, context, chrono::Local::now().date_naive())
}
