//! `POST /v1/responses`: OpenAI's Responses API, for clients that default to it (the
//! openai-agents SDK, LangChain's `use_responses_api`). A request is translated into a chat
//! completion request and planned by [`super::plan`], so every check, limit and default of
//! chat completions applies; the job's events are translated back into Responses' output
//! items (reasoning, message, function calls), whole or as its typed server-sent events.
//!
//! Stateless like the rest of the API: nothing is stored, so `previous_response_id`,
//! `conversation`, `store: true` and `background: true` are refused by name.

use super::plan::{self, Plan};
use super::stream::Running;
use super::tool_calls::ToolStream;
use super::wire::{logprob_entry, random_id, ApiError, ChatRequest};
use super::{body_of, check_constraint, check_model, check_prompt, client_of, start, ApiState};
use crate::engine::{EngineEvent, FinishReason, GenerationStats};
use crate::shell::guard::ClientAddr;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::NaiveDate;
use futures_util::stream;
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::convert::Infallible;

/// Fields passed to the chat side as they are: the extras chat completions has (llama.cpp's
/// sampling names, `seed`, `stop`, `chat_template_kwargs`) and `service_tier`.
const PASSTHROUGH: [&str; 10] = [
    "seed",
    "top_k",
    "min_p",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "stop",
    "chat_template_kwargs",
    "service_tier",
];

/// Labels accepted without effect: they only name a request or hint at a cache this server
/// keeps by itself.
const LABELS: [&str; 3] = ["user", "safety_identifier", "prompt_cache_key"];

/// `include` values: logprobs are returned; encrypted reasoning has nothing to carry (the
/// reasoning comes back as plain text), so asking for it changes nothing.
const INCLUDE_LOGPROBS: &str = "message.output_text.logprobs";
const INCLUDE_ENCRYPTED: &str = "reasoning.encrypted_content";

/// A Responses request translated: the chat request it stands for, and what the response
/// object repeats of it.
#[derive(Debug)]
struct Translated {
    /// The chat completion request, as JSON (parsed by the chat side's own types).
    chat: Value,
    /// For each chat message, the request field it comes from (`instructions`, `input[3]`),
    /// so that the chat side's errors name the Responses field.
    origins: Vec<String>,
    /// The fields the response object echoes.
    echo: Map<String, Value>,
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(Some(param), message)
}

/// A field's value, `None` when absent or `null` (clients send explicit nulls for defaults).
fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

/// Reads a Responses request body into its chat equivalent.
fn translate(body: &Map<String, Value>) -> Result<Translated, ApiError> {
    let mut chat = Map::new();
    let mut echo = Map::new();
    let mut logprobs = false;
    for (key, value) in body {
        let null = value.is_null();
        match key.as_str() {
            // Read below, in their order.
            "model" | "input" | "instructions" | "tools" | "tool_choice" | "text" | "reasoning"
            | "metadata" => {}
            "previous_response_id" | "conversation" if !null => {
                return Err(bad(
                    key,
                    format!(
                        "`{key}` refers to responses stored on the server, and this server stores none: send \
                         the whole conversation in `input` (earlier messages, function_call and \
                         function_call_output items)"
                    ),
                ))
            }
            "store" if value.as_bool() == Some(true) => {
                return Err(bad(
                    "store",
                    "this server stores no responses (store must be false or left out)",
                ))
            }
            "background" if value.as_bool() == Some(true) => {
                return Err(bad(
                    "background",
                    "background responses need stored state, which this server does not keep; \
                     use stream: true to follow a long reply",
                ))
            }
            "previous_response_id" | "conversation" => {}
            "store" | "background" => {
                if !null && !value.is_boolean() {
                    return Err(bad(key, format!("`{key}` must be true or false")));
                }
            }
            "truncation" => match value.as_str() {
                None if null => {}
                Some("disabled") => {}
                Some("auto") => {
                    return Err(bad(
                        "truncation",
                        "truncation `auto` (dropping the start of the conversation) is not \
                         supported; an input too long for the context is refused",
                    ))
                }
                _ => return Err(bad("truncation", "truncation must be `disabled`")),
            },
            "max_output_tokens" => {
                if !null {
                    chat.insert("max_tokens".into(), value.clone());
                }
            }
            "temperature" | "top_p" | "parallel_tool_calls" | "stream" => {
                if !null {
                    chat.insert(key.clone(), value.clone());
                }
            }
            "top_logprobs" => {
                if !null {
                    chat.insert(key.clone(), value.clone());
                    logprobs = true;
                }
            }
            "include" => {
                for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                    match item.as_str() {
                        Some(INCLUDE_LOGPROBS) => logprobs = true,
                        Some(INCLUDE_ENCRYPTED) => {}
                        _ => {
                            return Err(bad(
                                "include",
                                format!(
                                    "include[{i}] is not something this server returns \
                                     (`{INCLUDE_LOGPROBS}` and `{INCLUDE_ENCRYPTED}` are \
                                     accepted)"
                                ),
                            ))
                        }
                    }
                }
                if !null && !value.is_array() {
                    return Err(bad("include", "include must be a list"));
                }
            }
            "stream_options" => {
                // Obfuscation pads events against length side channels over the internet;
                // this server adds none, and there is nothing else to choose.
                if !null && !value.is_object() {
                    return Err(bad("stream_options", "stream_options must be an object"));
                }
                for k in value.as_object().into_iter().flat_map(|o| o.keys()) {
                    if k != "include_obfuscation" {
                        return Err(bad(
                            &format!("stream_options.{k}"),
                            format!("stream_options.{k} is not supported"),
                        ));
                    }
                }
            }
            "max_tool_calls" if !null => {
                return Err(bad(
                    "max_tool_calls",
                    "max_tool_calls is not supported; parallel_tool_calls: false with \
                     tool_choice `required` gives exactly one call",
                ))
            }
            "max_tool_calls" => {}
            k if LABELS.contains(&k) => {
                if k == "user" && !null {
                    chat.insert("user".into(), value.clone());
                }
            }
            k if PASSTHROUGH.contains(&k) => {
                chat.insert(key.clone(), value.clone());
            }
            other => {
                return Err(bad(
                    other,
                    format!(
                        "`{other}` is not a field this server knows; remove it from the request"
                    ),
                ))
            }
        }
    }
    if logprobs {
        chat.insert("logprobs".into(), Value::Bool(true));
    }
    if let Some(m) = field(body, "model") {
        chat.insert("model".into(), m.clone());
    }

    // The conversation: instructions first, then the input's items.
    let mut messages = Vec::new();
    let mut origins = Vec::new();
    match field(body, "instructions") {
        None => {}
        Some(Value::String(s)) => {
            messages.push(json!({ "role": "system", "content": s }));
            origins.push("instructions".to_string());
        }
        Some(_) => return Err(bad("instructions", "instructions must be a string")),
    }
    match field(body, "input") {
        None => {
            return Err(bad(
                "input",
                "input is required: a string or a list of items",
            ))
        }
        Some(Value::String(s)) => {
            messages.push(json!({ "role": "user", "content": s }));
            origins.push("input".to_string());
        }
        Some(Value::Array(items)) => read_items(items, &mut messages, &mut origins)?,
        Some(_) => return Err(bad("input", "input must be a string or a list of items")),
    }
    chat.insert("messages".into(), Value::Array(messages));

    let tools = tools_of(field(body, "tools"))?;
    if !tools.is_empty() {
        chat.insert(
            "tools".into(),
            tools.iter().map(|(chat, _)| chat.clone()).collect(),
        );
    }
    if let Some(choice) = field(body, "tool_choice") {
        chat.insert("tool_choice".into(), tool_choice_of(choice)?);
    }
    let format = format_of(field(body, "text"))?;
    if let Some((rf, _)) = &format {
        chat.insert("response_format".into(), rf.clone());
    }
    let effort = reasoning_of(field(body, "reasoning"))?;
    if let Some(e) = &effort {
        chat.insert("reasoning_effort".into(), e.clone());
    }
    let metadata = field(body, "metadata").cloned();
    if metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(bad(
            "metadata",
            "metadata must be an object of string values",
        ));
    }

    echo.insert(
        "instructions".into(),
        field(body, "instructions").cloned().unwrap_or(Value::Null),
    );
    echo.insert(
        "max_output_tokens".into(),
        field(body, "max_output_tokens")
            .cloned()
            .unwrap_or(Value::Null),
    );
    echo.insert("metadata".into(), metadata.unwrap_or_else(|| json!({})));
    echo.insert(
        "parallel_tool_calls".into(),
        Value::Bool(
            field(body, "parallel_tool_calls")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        ),
    );
    echo.insert(
        "reasoning".into(),
        json!({ "effort": effort, "summary": field(body, "reasoning").and_then(|r| r.get("summary")).cloned() }),
    );
    echo.insert(
        "text".into(),
        json!({ "format": format.map(|(_, f)| f).unwrap_or_else(|| json!({"type": "text"})) }),
    );
    echo.insert(
        "tool_choice".into(),
        field(body, "tool_choice")
            .cloned()
            .unwrap_or_else(|| json!("auto")),
    );
    echo.insert(
        "tools".into(),
        tools.into_iter().map(|(_, shown)| shown).collect(),
    );
    echo.insert(
        "top_logprobs".into(),
        field(body, "top_logprobs").cloned().unwrap_or(json!(0)),
    );
    echo.insert(
        "user".into(),
        field(body, "user").cloned().unwrap_or(Value::Null),
    );
    Ok(Translated {
        chat: Value::Object(chat),
        origins,
        echo,
    })
}

/// The text of a message's or a function output's content: a string, or a list of text
/// parts (`input_text`, `output_text`, `text`; a `refusal` part's text). Images, files and
/// audio are refused: this model reads text only.
fn text_of(content: &Value, param: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for (k, part) in parts.iter().enumerate() {
                let p = format!("{param}[{k}]");
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                let text = match kind {
                    "input_text" | "output_text" | "text" => part.get("text"),
                    "refusal" => part.get("refusal"),
                    "input_image" | "input_file" | "input_audio" => {
                        return Err(bad(
                            &p,
                            format!("`{kind}` content is not supported; this model reads text only"),
                        ))
                    }
                    other => {
                        return Err(bad(
                            &p,
                            format!("content parts of type `{other}` are not supported (input_text, output_text)"),
                        ))
                    }
                };
                match text.and_then(Value::as_str) {
                    Some(t) => out.push_str(t),
                    None => return Err(bad(&p, format!("a `{kind}` part needs its text"))),
                }
            }
            Ok(out)
        }
        _ => Err(bad(
            param,
            format!("{param} must be a string or a list of parts"),
        )),
    }
}

/// A string field of an input item, required.
fn str_field<'a>(item: &'a Map<String, Value>, name: &str, at: &str) -> Result<&'a str, ApiError> {
    item.get(name).and_then(Value::as_str).ok_or_else(|| {
        bad(
            &format!("{at}.{name}"),
            format!("{at}.{name} must be a string"),
        )
    })
}

/// The input's items as chat messages: messages as they are; consecutive `function_call`
/// items as one assistant message's `tool_calls` (after that message's text when one comes
/// just before); a `function_call_output` as a `tool` message; reasoning items dropped (the
/// template shows no earlier reasoning).
fn read_items(
    items: &[Value],
    messages: &mut Vec<Value>,
    origins: &mut Vec<String>,
) -> Result<(), ApiError> {
    // The assistant message calls are being gathered into, if the last one is.
    let mut open_assistant: Option<usize> = None;
    for (j, item) in items.iter().enumerate() {
        let at = format!("input[{j}]");
        let obj = item
            .as_object()
            .ok_or_else(|| bad(&at, format!("{at} must be an object")))?;
        let kind = match obj.get("type") {
            None | Some(Value::Null) => "message",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(bad(
                    &format!("{at}.type"),
                    "an item's type must be a string",
                ))
            }
        };
        match kind {
            "message" => {
                let role = str_field(obj, "role", &at)?;
                let role = match role {
                    "user" | "system" | "developer" | "assistant" => role,
                    other => {
                        return Err(bad(
                            &format!("{at}.role"),
                            format!(
                            "role `{other}` is not supported (user, system, developer, assistant)"
                        ),
                        ))
                    }
                };
                let content = obj.get("content").ok_or_else(|| {
                    bad(&format!("{at}.content"), format!("{at}.content is missing"))
                })?;
                let text = text_of(content, &format!("{at}.content"))?;
                messages.push(json!({ "role": role, "content": text }));
                origins.push(at);
                open_assistant = (role == "assistant").then_some(messages.len() - 1);
            }
            "function_call" => {
                let call_id = str_field(obj, "call_id", &at)?;
                let name = str_field(obj, "name", &at)?;
                let arguments = str_field(obj, "arguments", &at)?;
                if !serde_json::from_str::<Value>(arguments).is_ok_and(|a| a.is_object()) {
                    return Err(bad(
                        &format!("{at}.arguments"),
                        format!("{at}.arguments must be a JSON object, as a string"),
                    ));
                }
                let call = json!({ "id": call_id, "type": "function",
                    "function": { "name": name, "arguments": arguments } });
                let i = match open_assistant {
                    Some(i) => i,
                    None => {
                        messages.push(json!({ "role": "assistant", "content": "" }));
                        origins.push(at);
                        messages.len() - 1
                    }
                };
                let m = &mut messages[i];
                match m.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    Some(calls) => calls.push(call),
                    None => m["tool_calls"] = json!([call]),
                }
                open_assistant = Some(i);
            }
            "function_call_output" => {
                let call_id = str_field(obj, "call_id", &at)?;
                let output = obj.get("output").ok_or_else(|| {
                    bad(&format!("{at}.output"), format!("{at}.output is missing"))
                })?;
                let text = text_of(output, &format!("{at}.output"))?;
                messages.push(json!({ "role": "tool", "tool_call_id": call_id, "content": text }));
                origins.push(at);
                open_assistant = None;
            }
            // An earlier reply's reasoning, sent back by clients that replay output items:
            // SmolLM3's template drops earlier reasoning from the prompt anyway.
            "reasoning" => {}
            "item_reference" => {
                return Err(bad(
                    &format!("{at}.type"),
                    "item_reference needs stored items, and this server stores none; send the \
                     item itself",
                ))
            }
            other => {
                return Err(bad(
                    &format!("{at}.type"),
                    format!(
                        "input items of type `{other}` are not supported (message, \
                         function_call, function_call_output, reasoning)"
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// The tools: for each, the chat shape (`{"type": "function", "function": {…}}`) and the
/// flat shape the response shows. The chat shape itself is accepted too (as some clients
/// send it). Hosted tools (web search, file search, …) are refused by their type.
fn tools_of(tools: Option<&Value>) -> Result<Vec<(Value, Value)>, ApiError> {
    let Some(tools) = tools else {
        return Ok(Vec::new());
    };
    let list = tools
        .as_array()
        .ok_or_else(|| bad("tools", "tools must be a list"))?;
    let mut out = Vec::new();
    for (i, tool) in list.iter().enumerate() {
        let at = format!("tools[{i}]");
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "function" {
            return Err(bad(
                &format!("{at}.type"),
                format!(
                    "`{kind}` tools are not available here: this server runs none of OpenAI's \
                     hosted tools; offer your own functions (type `function`)"
                ),
            ));
        }
        let f = match tool.get("function") {
            Some(f) => f,
            None => tool,
        };
        let mut function = Map::new();
        for k in ["name", "description", "parameters"] {
            if let Some(v) = f.get(k).filter(|v| !v.is_null()) {
                function.insert(k.into(), v.clone());
            }
        }
        let shown = json!({
            "type": "function",
            "name": f.get("name").cloned().unwrap_or(Value::Null),
            "description": f.get("description").cloned().unwrap_or(Value::Null),
            "parameters": f.get("parameters").cloned().unwrap_or(Value::Null),
            "strict": f.get("strict").cloned().unwrap_or(Value::Null),
        });
        out.push((json!({ "type": "function", "function": function }), shown));
    }
    Ok(out)
}

/// `tool_choice` in the chat shape: the same strings; `{"type": "function", "name"}` as
/// `{"type": "function", "function": {"name"}}`.
fn tool_choice_of(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("name")
                .or_else(|| o.get("function").and_then(|f| f.get("name")))
                .cloned();
            match name {
                Some(n @ Value::String(_)) => {
                    Ok(json!({ "type": "function", "function": { "name": n } }))
                }
                _ => Err(bad(
                    "tool_choice",
                    "tool_choice must name a function: {\"type\": \"function\", \"name\": …}",
                )),
            }
        }
        _ => Err(bad(
            "tool_choice",
            "tool_choice must be `auto`, `none`, `required` or {\"type\": \"function\", \"name\": …} \
             (hosted tools and allowed_tools are not supported)",
        )),
    }
}

/// `text`: its `format` as the chat `response_format`, and the format the response shows.
/// `verbosity` is accepted without effect (SmolLM3 has no such setting).
fn format_of(text: Option<&Value>) -> Result<Option<(Value, Value)>, ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let text = text
        .as_object()
        .ok_or_else(|| bad("text", "text must be an object: {\"format\": …}"))?;
    for (k, v) in text {
        match k.as_str() {
            "format" => {}
            "verbosity" => {
                if !v.is_null() && !matches!(v.as_str(), Some("low" | "medium" | "high")) {
                    return Err(bad(
                        "text.verbosity",
                        "verbosity must be low, medium or high",
                    ));
                }
            }
            other => {
                return Err(bad(
                    &format!("text.{other}"),
                    format!("text.{other} is not a field this server knows"),
                ))
            }
        }
    }
    let Some(format) = text.get("format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let rf = match format.get("type").and_then(Value::as_str) {
        Some("text") => json!({ "type": "text" }),
        Some("json_object") => json!({ "type": "json_object" }),
        Some("json_schema") => {
            let mut spec = Map::new();
            for k in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(k) {
                    spec.insert(k.into(), v.clone());
                }
            }
            json!({ "type": "json_schema", "json_schema": spec })
        }
        _ => {
            return Err(bad(
                "text.format",
                "text.format.type must be `text`, `json_object` or `json_schema`",
            ))
        }
    };
    Ok(Some((rf, format.clone())))
}

/// `reasoning.effort`, for the chat side's `reasoning_effort`; `summary` (and the older
/// `generate_summary`) are accepted without effect: the reasoning itself is returned.
fn reasoning_of(reasoning: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(r) = reasoning else {
        return Ok(None);
    };
    let r = r
        .as_object()
        .ok_or_else(|| bad("reasoning", "reasoning must be an object: {\"effort\": …}"))?;
    for k in r.keys() {
        if !matches!(k.as_str(), "effort" | "summary" | "generate_summary") {
            return Err(bad(
                &format!("reasoning.{k}"),
                format!("reasoning.{k} is not a field this server knows"),
            ));
        }
    }
    Ok(r.get("effort").filter(|e| !e.is_null()).cloned())
}

/// Chat field names in the chat side's errors, as the Responses request calls them.
const RENAMED: [(&str, &str); 4] = [
    ("max_completion_tokens", "max_output_tokens"),
    ("max_tokens", "max_output_tokens"),
    ("response_format", "text.format"),
    ("reasoning_effort", "reasoning.effort"),
];

/// A chat-side error with its `param` (and the names in its message) put in the Responses
/// request's terms.
fn renamed(mut e: ApiError, origins: &[String]) -> ApiError {
    for (from, to) in RENAMED {
        e.message = e.message.replace(from, to);
    }
    let Some(param) = e.param.take() else {
        return e;
    };
    let param = if let Some(rest) = param.strip_prefix("messages[") {
        let index = rest.split(']').next().and_then(|i| i.parse::<usize>().ok());
        match index.and_then(|i| origins.get(i)) {
            Some(origin) => origin.clone(),
            None => "input".to_string(),
        }
    } else if param == "messages" {
        "input".to_string()
    } else if let Some(rest) = param.strip_prefix("tools[") {
        format!("tools[{}", rest.split(".function").next().unwrap_or(rest))
    } else {
        RENAMED
            .iter()
            .find(|(from, _)| *from == param)
            .map_or(param, |(_, to)| to.to_string())
    };
    e.param = Some(param);
    e
}

/// The request field the chat side's constraint comes from, in Responses' terms.
fn constraint_field(field: &str) -> &'static str {
    match field {
        "response_format" => "text.format",
        "tools" => "tools",
        _ => "tool_choice",
    }
}

impl Translated {
    /// The engine job, through the chat side's own checks.
    fn plan(&self, context: usize, today: NaiveDate) -> Result<Plan, ApiError> {
        let req: ChatRequest = serde_json::from_value(self.chat.clone()).map_err(|e| {
            ApiError::bad_request(None, format!("the request body is not valid: {e}"))
        })?;
        plan::plan(req, context, today).map_err(|e| renamed(e, &self.origins))
    }
}

fn parse_body(body: &[u8]) -> Result<Translated, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(None, format!("the request body is not valid: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::bad_request(
            None,
            "the request body must be a JSON object",
        ));
    };
    translate(&map)
}

/// Parses and validates a Responses request body into the engine's plan, dated today: the
/// same plan the equivalent chat completion request gets.
pub fn parse_request(body: &[u8], context: usize) -> Result<Plan, ApiError> {
    parse_body(body)?.plan(context, chrono::Local::now().date_naive())
}

/// What every response object of one request repeats.
#[derive(Debug, Clone)]
struct Meta {
    id: String,
    created_at: i64,
    model: String,
    /// The request's echoed fields, with the temperature and top_p used.
    echo: Map<String, Value>,
    /// Tools were offered: `<tool_call>` blocks become function_call items.
    tools: bool,
    /// `</think>`'s id, to count reasoning tokens.
    end_think: Option<u32>,
}

impl Meta {
    /// The response object in a state: `in_progress`, `completed`, `incomplete`, `failed`.
    fn response(&self, status: &str, output: &[Value], usage: Value, extra: Value) -> Value {
        let mut r = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": null,
            "model": self.model,
            "output": output,
            "previous_response_id": null,
            "service_tier": "default",
            "store": false,
            "truncation": "disabled",
            "usage": usage,
        });
        if let Some(r) = r.as_object_mut() {
            for (k, v) in &self.echo {
                r.insert(k.clone(), v.clone());
            }
            for (k, v) in extra.as_object().into_iter().flatten() {
                r.insert(k.clone(), v.clone());
            }
        }
        r
    }
}

/// A number as the response shows it: the f32 the engine uses, without float noise.
fn shown(x: f32) -> Value {
    json!(((x as f64) * 1e6).round() / 1e6)
}

/// An output item being written.
#[derive(Debug)]
struct Open {
    index: usize,
    id: String,
    text: String,
}

/// Turns a job's events into Responses' output items and stream events. The whole reply
/// runs the same machine and keeps only the final object, so plain and streamed replies
/// agree.
struct Emitter {
    meta: Meta,
    seq: u64,
    /// Events not sent yet: (type, payload).
    events: Vec<(String, Value)>,
    /// Output items, in order (open ones hold their opening state until closed).
    output: Vec<Value>,
    reasoning: Option<Open>,
    message: Option<Open>,
    /// The message's logprob entries.
    message_logprobs: Vec<Value>,
    /// Blank text before the message opens: a call may come instead.
    lead: String,
    /// Logprob entries of tokens whose text has not come yet.
    pending_logprobs: Vec<Value>,
    /// Holds back what may be a tool call.
    calls: Option<ToolStream>,
    /// Some reasoning came (all the reply's tokens count as reasoning when no `</think>` did).
    reasoned: bool,
}

impl Emitter {
    fn new(meta: Meta) -> Self {
        let calls = meta.tools.then(ToolStream::default);
        Self {
            meta,
            seq: 0,
            events: Vec::new(),
            output: Vec::new(),
            reasoning: None,
            message: None,
            message_logprobs: Vec::new(),
            lead: String::new(),
            pending_logprobs: Vec::new(),
            calls,
            reasoned: false,
        }
    }

    fn emit(&mut self, kind: &str, mut payload: Value) {
        payload["type"] = json!(kind);
        payload["sequence_number"] = json!(self.seq);
        self.seq += 1;
        self.events.push((kind.to_string(), payload));
    }

    /// `response.created` and `response.in_progress`.
    fn begin(&mut self) {
        let r = self
            .meta
            .response("in_progress", &[], Value::Null, json!({}));
        self.emit("response.created", json!({ "response": r }));
        let r = self
            .meta
            .response("in_progress", &[], Value::Null, json!({}));
        self.emit("response.in_progress", json!({ "response": r }));
    }

    fn event(&mut self, ev: EngineEvent) {
        if let Some(entry) = logprob_entry(&ev) {
            self.pending_logprobs.push(entry);
            return;
        }
        match ev {
            EngineEvent::Reasoning { text } if !text.is_empty() => self.reason(&text),
            EngineEvent::Answer { text } if !text.is_empty() => {
                self.close_reasoning("completed");
                let text = match self.calls.as_mut() {
                    Some(held) => held.push(&text),
                    None => text,
                };
                self.say(text);
            }
            _ => {}
        }
    }

    fn reason(&mut self, text: &str) {
        // Reasoning tokens have no place for their logprobs here.
        self.pending_logprobs.clear();
        self.reasoned = true;
        if self.reasoning.is_none() {
            let open = Open {
                index: self.output.len(),
                id: random_id("rs_"),
                text: String::new(),
            };
            let item = json!({ "type": "reasoning", "id": open.id, "summary": [], "content": [],
                "status": "in_progress" });
            self.output.push(item.clone());
            self.emit(
                "response.output_item.added",
                json!({ "output_index": open.index, "item": item }),
            );
            self.emit(
                "response.content_part.added",
                json!({ "item_id": open.id, "output_index": open.index, "content_index": 0,
                    "part": { "type": "reasoning_text", "text": "" } }),
            );
            self.reasoning = Some(open);
        }
        let Some(open) = self.reasoning.as_mut() else {
            return;
        };
        open.text.push_str(text);
        let delta = json!({ "item_id": open.id, "output_index": open.index, "content_index": 0,
            "delta": text });
        self.emit("response.reasoning_text.delta", delta);
    }

    fn close_reasoning(&mut self, status: &str) {
        let Some(open) = self.reasoning.take() else {
            return;
        };
        let part = json!({ "type": "reasoning_text", "text": open.text });
        let at = json!({ "item_id": open.id, "output_index": open.index, "content_index": 0 });
        let mut done = at.clone();
        done["text"] = json!(open.text);
        self.emit("response.reasoning_text.done", done);
        let mut part_done = at;
        part_done["part"] = part.clone();
        self.emit("response.content_part.done", part_done);
        let item = json!({ "type": "reasoning", "id": open.id, "summary": [], "content": [part],
            "status": status });
        self.output[open.index] = item.clone();
        self.emit(
            "response.output_item.done",
            json!({ "output_index": open.index, "item": item }),
        );
    }

    fn open_message(&mut self) {
        let open = Open {
            index: self.output.len(),
            id: random_id("msg_"),
            text: String::new(),
        };
        let item = json!({ "type": "message", "id": open.id, "status": "in_progress",
            "role": "assistant", "content": [] });
        self.output.push(item.clone());
        self.emit(
            "response.output_item.added",
            json!({ "output_index": open.index, "item": item }),
        );
        self.emit(
            "response.content_part.added",
            json!({ "item_id": open.id, "output_index": open.index, "content_index": 0,
                "part": { "type": "output_text", "text": "", "annotations": [], "logprobs": [] } }),
        );
        self.message = Some(open);
    }

    /// Answer text that may be sent: opens the message at the first text that is not blank.
    fn say(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        let text = if self.message.is_none() {
            self.lead.push_str(&text);
            if self.lead.trim().is_empty() {
                return;
            }
            self.open_message();
            std::mem::take(&mut self.lead)
        } else {
            text
        };
        self.delta(text);
    }

    fn delta(&mut self, text: String) {
        let logprobs = std::mem::take(&mut self.pending_logprobs);
        self.message_logprobs.extend(logprobs.iter().cloned());
        let Some(open) = self.message.as_mut() else {
            return;
        };
        open.text.push_str(&text);
        let d = json!({ "item_id": open.id, "output_index": open.index, "content_index": 0,
            "delta": text, "logprobs": logprobs });
        self.emit("response.output_text.delta", d);
    }

    fn close_message(&mut self, status: &str) {
        let Some(open) = self.message.take() else {
            return;
        };
        let logprobs = std::mem::take(&mut self.message_logprobs);
        let part = json!({ "type": "output_text", "text": open.text, "annotations": [],
            "logprobs": logprobs });
        let at = json!({ "item_id": open.id, "output_index": open.index, "content_index": 0 });
        let mut done = at.clone();
        done["text"] = json!(open.text);
        done["logprobs"] = json!(logprobs);
        self.emit("response.output_text.done", done);
        let mut part_done = at;
        part_done["part"] = part.clone();
        self.emit("response.content_part.done", part_done);
        let item = json!({ "type": "message", "id": open.id, "status": status,
            "role": "assistant", "content": [part] });
        self.output[open.index] = item.clone();
        self.emit(
            "response.output_item.done",
            json!({ "output_index": open.index, "item": item }),
        );
    }

    /// The job ended: the open items close, calls become function_call items, and the final
    /// `response.completed` (or `response.incomplete`) carries the whole response.
    fn done(&mut self, stats: &GenerationStats, token_ids: &[u32]) -> Value {
        let cut = matches!(
            stats.finish_reason,
            FinishReason::Length | FinishReason::ContextFull
        );
        let status = if cut { "incomplete" } else { "completed" };
        self.close_reasoning(status);
        let (rest, calls) = match self.calls.take() {
            Some(held) => held.finish(),
            None => (String::new(), Vec::new()),
        };
        self.say(rest);
        if self.message.is_none() && calls.is_empty() {
            // A reply without text still has its (empty) message, as output_text expects.
            self.open_message();
            let lead = std::mem::take(&mut self.lead);
            if !lead.is_empty() {
                self.delta(lead);
            }
        }
        if self.message.is_some() && !self.pending_logprobs.is_empty() && calls.is_empty() {
            // Tokens whose text never showed (held for a stop string, say).
            let rest = std::mem::take(&mut self.pending_logprobs);
            self.message_logprobs.extend(rest);
        }
        self.close_message(status);
        for call in calls {
            let index = self.output.len();
            let id = random_id("fc_");
            let f = &call["function"];
            let arguments = f["arguments"].as_str().unwrap_or("{}").to_string();
            let mut item = json!({ "type": "function_call", "id": id, "call_id": call["id"],
                "name": f["name"], "arguments": "", "status": "in_progress" });
            self.output.push(item.clone());
            self.emit(
                "response.output_item.added",
                json!({ "output_index": index, "item": item }),
            );
            self.emit(
                "response.function_call_arguments.delta",
                json!({ "item_id": id, "output_index": index, "delta": arguments }),
            );
            self.emit(
                "response.function_call_arguments.done",
                json!({ "item_id": id, "output_index": index, "arguments": arguments }),
            );
            item["arguments"] = json!(arguments);
            item["status"] = json!("completed");
            self.output[index] = item.clone();
            self.emit(
                "response.output_item.done",
                json!({ "output_index": index, "item": item }),
            );
        }
        let reasoning_tokens = match self
            .meta
            .end_think
            .and_then(|end| token_ids.iter().position(|&t| t == end))
        {
            Some(at) => (at + 1).min(stats.generated_tokens),
            None if self.reasoned => stats.generated_tokens,
            None => 0,
        };
        let usage = json!({
            "input_tokens": stats.prompt_tokens,
            "input_tokens_details": { "cached_tokens": stats.reused_tokens, "cache_write_tokens": 0 },
            "output_tokens": stats.generated_tokens,
            "output_tokens_details": { "reasoning_tokens": reasoning_tokens },
            "total_tokens": stats.prompt_tokens + stats.generated_tokens,
        });
        let output_text: String = self
            .output
            .iter()
            .filter(|i| i["type"] == "message")
            .filter_map(|i| i["content"][0]["text"].as_str())
            .collect();
        let extra = json!({
            "completed_at": chrono::Utc::now().timestamp(),
            "incomplete_details": if cut { json!({ "reason": "max_output_tokens" }) } else { Value::Null },
            "output_text": output_text,
        });
        let response = self.meta.response(status, &self.output, usage, extra);
        let kind = if cut {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(kind, json!({ "response": response.clone() }));
        response
    }

    /// The job failed after the stream began: an `error` event, then `response.failed`.
    fn failed(&mut self, e: &ApiError) {
        self.emit(
            "error",
            json!({ "code": e.code, "message": e.message, "param": e.param }),
        );
        let code = if e.status.is_client_error() {
            "invalid_prompt"
        } else {
            "server_error"
        };
        let extra = json!({ "error": { "code": code, "message": e.message } });
        let response = self
            .meta
            .response("failed", &self.output, Value::Null, extra);
        self.emit("response.failed", json!({ "response": response }));
    }
}

/// `POST /v1/responses`.
pub(super) async fn responses(
    State(st): State<ApiState>,
    ClientAddr(addr): ClientAddr,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_of(&st, body)?;
    let context = st.engine().context_size();
    let translated = parse_body(&body)?;
    check_model(&st, translated.chat.get("model").and_then(Value::as_str))?;
    let mut plan = translated.plan(context, chrono::Local::now().date_naive())?;
    check_prompt(&st, &plan.request, "input").await?;
    let field = constraint_field(plan.constraint_field.unwrap_or("response_format"));
    check_constraint(&st, &mut plan.request.constraint, field).await?;
    let mut echo = translated.echo;
    echo.insert("temperature".into(), shown(plan.request.params.temperature));
    echo.insert("top_p".into(), shown(plan.request.params.top_p));
    let end_think = st
        .engine()
        .prompter()
        .tokenize("</think>", true)
        .ok()
        .filter(|ids| ids.len() == 1)
        .map(|ids| ids[0]);
    let meta = Meta {
        id: random_id("resp_"),
        created_at: chrono::Utc::now().timestamp(),
        model: st.config().model_id.clone(),
        echo,
        tools: plan.tools,
        end_think,
    };
    let job = start(&st, &client_of(addr), plan.request)?;
    if plan.stream {
        Ok(stream_reply(job, meta).into_response())
    } else {
        whole_reply(job, meta).await
    }
}

async fn whole_reply(mut job: Running, meta: Meta) -> Result<Response, ApiError> {
    let mut emitter = Emitter::new(meta);
    while let Some(ev) = job.handle.events.recv().await {
        match ev {
            EngineEvent::Done { stats, token_ids } => {
                job.finish();
                let response = emitter.done(&stats, &token_ids);
                return Ok(Json(response).into_response());
            }
            EngineEvent::Error { message } => {
                job.finish();
                return Err(ApiError::from_engine_message(message));
            }
            other => {
                emitter.event(other);
                emitter.events.clear();
            }
        }
    }
    job.finish();
    Err(ApiError::engine(
        "the engine stopped before the reply was complete",
    ))
}

struct StreamState {
    job: Running,
    emitter: Emitter,
    pending: VecDeque<(String, Value)>,
    ended: bool,
}

fn stream_reply(
    job: Running,
    meta: Meta,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let mut emitter = Emitter::new(meta);
    emitter.begin();
    let pending = emitter.events.drain(..).collect();
    let state = StreamState {
        job,
        emitter,
        pending,
        ended: false,
    };
    let events = stream::unfold(state, |mut s| async move {
        loop {
            if let Some((kind, data)) = s.pending.pop_front() {
                let event = Event::default().event(kind).data(data.to_string());
                return Some((Ok(event), s));
            }
            if s.ended {
                return None;
            }
            match s.job.handle.events.recv().await {
                Some(EngineEvent::Done { stats, token_ids }) => {
                    s.job.finish();
                    s.emitter.done(&stats, &token_ids);
                    s.ended = true;
                }
                Some(EngineEvent::Error { message }) => {
                    s.job.finish();
                    s.emitter.failed(&ApiError::from_engine_message(message));
                    s.ended = true;
                }
                Some(ev) => s.emitter.event(ev),
                None => {
                    s.job.finish();
                    let e = ApiError::engine("the engine stopped before the reply was complete");
                    s.emitter.failed(&e);
                    s.ended = true;
                }
            }
            s.pending.extend(s.emitter.events.drain(..));
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(tools: bool) -> Meta {
        Meta {
            id: "resp_1".into(),
            created_at: 1,
            model: "m".into(),
            echo: Map::new(),
            tools,
            end_think: Some(99),
        }
    }

    fn stats(generated: usize, finish: FinishReason) -> GenerationStats {
        GenerationStats {
            prompt_tokens: 10,
            reused_tokens: 4,
            generated_tokens: generated,
            finish_reason: finish,
            ..GenerationStats::default()
        }
    }

    fn kinds(e: &Emitter) -> Vec<&str> {
        e.events.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn reasoning_then_answer_are_two_items_in_order() {
        let mut e = Emitter::new(meta(false));
        e.begin();
        e.event(EngineEvent::Reasoning { text: "Let".into() });
        e.event(EngineEvent::Reasoning { text: " me".into() });
        e.event(EngineEvent::Answer { text: "Hi".into() });
        let r = e.done(&stats(6, FinishReason::Stop), &[1, 2, 99, 3, 4]);
        assert_eq!(
            kinds(&e),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let seqs: Vec<u64> = e
            .events
            .iter()
            .map(|(_, v)| v["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (0..16).collect::<Vec<_>>());
        assert_eq!(r["status"], "completed");
        assert_eq!(r["output"][0]["type"], "reasoning");
        assert_eq!(r["output"][0]["content"][0]["text"], "Let me");
        assert_eq!(r["output"][1]["content"][0]["text"], "Hi");
        assert_eq!(r["output"][1]["id"], e.events[9].1["item"]["id"]);
        assert_eq!(r["output_text"], "Hi");
        // Up to and including </think>.
        assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 3);
        assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 4);
    }

    #[test]
    fn a_call_after_blank_text_is_a_call_alone() {
        let mut e = Emitter::new(meta(true));
        e.event(EngineEvent::Answer { text: "\n".into() });
        e.event(EngineEvent::Answer {
            text: "<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}".into(),
        });
        e.event(EngineEvent::Answer {
            text: "</tool_call>".into(),
        });
        let r = e.done(&stats(9, FinishReason::Stop), &[]);
        let output = r["output"].as_array().unwrap();
        assert_eq!(output.len(), 1, "{r}");
        assert_eq!(output[0]["type"], "function_call");
        assert_eq!(output[0]["name"], "f");
        assert_eq!(output[0]["arguments"], "{\"x\":1}");
        assert!(output[0]["call_id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(r["output_text"], "");
        assert_eq!(
            kinds(&e),
            [
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
    }

    #[test]
    fn text_before_a_call_is_a_message_and_a_cut_reply_is_incomplete() {
        let mut e = Emitter::new(meta(true));
        e.event(EngineEvent::Answer {
            text: "Sure. <tool_call>{\"name\": \"f\"}</tool_call>".into(),
        });
        let r = e.done(&stats(9, FinishReason::Stop), &[]);
        assert_eq!(r["output"][0]["type"], "message");
        assert_eq!(r["output"][0]["content"][0]["text"], "Sure. ");
        assert_eq!(r["output"][1]["type"], "function_call");

        let mut e = Emitter::new(meta(false));
        e.event(EngineEvent::Reasoning { text: "hmm".into() });
        let r = e.done(&stats(4, FinishReason::Length), &[]);
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(r["output"][0]["status"], "incomplete");
        assert_eq!(r["output"][1]["type"], "message", "an empty message still");
        assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 4);
        assert_eq!(e.events.last().unwrap().0, "response.incomplete");
    }

    #[test]
    fn an_error_fails_the_response() {
        let mut e = Emitter::new(meta(false));
        e.event(EngineEvent::Answer { text: "a".into() });
        e.failed(&ApiError::engine("boom"));
        let (kind, last) = e.events.last().unwrap();
        assert_eq!(kind, "response.failed");
        assert_eq!(last["response"]["status"], "failed");
        assert_eq!(last["response"]["error"]["message"], "boom");
        assert_eq!(e.events[e.events.len() - 2].0, "error");
    }

    #[test]
    fn chat_errors_are_renamed_to_responses_fields() {
        let origins = vec!["instructions".to_string(), "input[2]".to_string()];
        let e = renamed(
            ApiError::bad_request(Some("messages[1].content"), "x"),
            &origins,
        );
        assert_eq!(e.param.as_deref(), Some("input[2]"));
        let e = renamed(
            ApiError::bad_request(Some("response_format"), "response_format is bad"),
            &origins,
        );
        assert_eq!(e.param.as_deref(), Some("text.format"));
        assert_eq!(e.message, "text.format is bad");
        let e = renamed(
            ApiError::bad_request(Some("tools[3].function"), "x"),
            &origins,
        );
        assert_eq!(e.param.as_deref(), Some("tools[3]"));
    }
}
