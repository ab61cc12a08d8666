//! Request planning: a parsed OpenAI request checked and turned into the engine's
//! [`GenerateRequest`]. The result depends on the request (and the date) alone, so two
//! identical requests get identical prompts whatever came before them.

use super::tool_calls;
use super::wire::{ApiError, ChatRequest, Content, InMessage, SamplingFields, Stop};
use crate::engine::{CallsOr, ChatMessage, Constraint, GenerateRequest, SamplingParams};
use chrono::NaiveDate;
use serde_json::{json, Value};

/// Most stop strings one request may give.
const MAX_STOPS: usize = 16;

/// Most alternatives `top_logprobs` may ask for (OpenAI's limit).
const MAX_TOP_LOGPROBS: usize = 20;

/// Reasoning tokens allowed at `reasoning_effort: low` and `medium` (`high` has no limit).
const LOW_EFFORT_BUDGET: usize = 256;
const MEDIUM_EFFORT_BUDGET: usize = 1024;

/// A validated request, ready for the engine.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The job.
    pub request: GenerateRequest,
    /// Stream the reply as server-sent events.
    pub stream: bool,
    /// Send a final usage chunk when streaming.
    pub include_usage: bool,
    /// Tools were offered: the reply's `<tool_call>` blocks become `tool_calls`.
    pub tools: bool,
    /// The request field the reply's constraint comes from (`response_format`,
    /// `tool_choice`, `tools`), named when the constraint cannot be compiled.
    pub constraint_field: Option<&'static str>,
    /// How many replies (`choices`) to generate, one after the other.
    pub n: usize,
}

/// The most choices (`n`) one request may ask for: each is a whole generation, one after the
/// other (only the prompt's prefill is shared).
pub const MAX_CHOICES: usize = 4;

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
    if let Some(field) = req.unknown.keys().next() {
        return Err(ApiError::bad_request(
            Some(field),
            format!("`{field}` is not a field this server knows; remove it from the request"),
        ));
    }
    let n = match req.n {
        None => 1,
        Some(n) if (1..=MAX_CHOICES as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::bad_request(
                Some("n"),
                format!(
                "n must be from 1 to {MAX_CHOICES} (got {n}); the choices are generated in turn"
            ),
            ))
        }
    };
    let (tools, forced_call) = tools_of(&req)?;
    let top_logprobs = match req.top_logprobs {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(k) if k <= MAX_TOP_LOGPROBS as u64 => Some(k as usize),
            _ => {
                return Err(ApiError::bad_request(
                    Some("top_logprobs"),
                    format!("top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}"),
                ))
            }
        },
    };
    let logprobs = match (req.logprobs, top_logprobs) {
        (Some(true), top) => Some(top.unwrap_or(0)),
        (_, Some(_)) => {
            return Err(ApiError::bad_request(
                Some("top_logprobs"),
                "top_logprobs needs logprobs: true",
            ))
        }
        _ => None,
    };
    if req.store == Some(true) {
        return Err(ApiError::bad_request(
            Some("store"),
            "this server does not store completions (store must be false or left out)",
        ));
    }
    if let Some(tier) = req.service_tier.as_deref() {
        if !matches!(tier, "auto" | "default") {
            return Err(ApiError::bad_request(
                Some("service_tier"),
                format!("this server has one service tier (`default`); got `{tier}`"),
            ));
        }
    }
    let format = response_format_of(req.response_format.as_ref())?;
    let (constraint, constraint_field) = match (format, forced_call) {
        // Beside `tool_choice: auto`, the reply is the JSON answer or calls.
        (
            Some(format),
            Some(Constraint::ToolCalls {
                functions,
                parallel,
                instead: Some(_),
            }),
        ) => {
            let schema = match format {
                Constraint::JsonSchema { schema } => schema,
                _ => json!({"type": "object"}),
            };
            let calls = Constraint::ToolCalls {
                functions,
                parallel,
                instead: Some(CallsOr::Json { schema }),
            };
            (Some(calls), Some("response_format"))
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                Some("response_format"),
                "response_format cannot be combined with a forced tool call (tool_choice \
                 `required` or a named function): the reply is either JSON or calls",
            ))
        }
        (Some(f), None) => (Some(f), Some("response_format")),
        (None, Some(c @ Constraint::ToolCalls { instead: None, .. })) => {
            (Some(c), Some("tool_choice"))
        }
        (None, Some(c)) => (Some(c), Some("tools")),
        (None, None) => (None, None),
    };
    let count = req.messages.len();
    let mut messages = Vec::with_capacity(count);
    let mut assistant_prefix = None;
    for (i, m) in req.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            // A tool's result (and the legacy `function` role): the template shows it to the
            // model as the next user turn.
            "tool" | "function" => "tool",
            other => {
                return Err(ApiError::bad_request(
                    Some(&format!("messages[{i}].role")),
                    format!(
                    "role `{other}` is not supported (system, developer, user, assistant, tool)"
                ),
                ))
            }
        };
        // Labels the template does not show: results are shown in the order they come.
        let _ = (&m.tool_call_id, &m.name);
        let calls = m.tool_calls.clone().unwrap_or_default();
        let mut text = text_of(i, m)?;
        if !calls.is_empty() {
            // The model sees its own earlier calls as it wrote them.
            text = tool_calls::render_calls(&text, &calls).map_err(|e| {
                ApiError::bad_request(Some(&format!("messages[{i}].tool_calls")), e)
            })?;
        }
        if role == "assistant" && i + 1 == count && i > 0 {
            // A last assistant message is a reply to continue ("prefill"), as llama.cpp's
            // server does: the model goes on from its text, which is not sent back.
            assistant_prefix = Some(text).filter(|t| !t.is_empty());
            continue;
        }
        messages.push(ChatMessage::new(role, text));
    }

    let mut params = sampling_params(&req.sampling)?;
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
    // `reasoning_effort` maps to SmolLM3's two modes, with a reasoning budget for the lower
    // efforts; `enable_thinking`, when given, decides on or off.
    let (effort_thinks, budget) = match req.reasoning_effort.as_deref() {
        None => (false, None),
        Some("none" | "minimal") => (false, None),
        Some("low") => (true, Some(LOW_EFFORT_BUDGET)),
        Some("medium") => (true, Some(MEDIUM_EFFORT_BUDGET)),
        Some("high") => (true, None),
        Some(other) => {
            return Err(ApiError::bad_request(
                Some("reasoning_effort"),
                format!(
                    "reasoning_effort must be none, minimal, low, medium or high (got `{other}`)"
                ),
            ))
        }
    };
    let thinking = match req
        .chat_template_kwargs
        .as_ref()
        .and_then(|k| k.get("enable_thinking"))
    {
        None | Some(Value::Null) => effort_thinks,
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
    // Labels only (the model's name is checked by the caller).
    let _ = (&req.model, &req.user, &req.metadata);
    Ok(Plan {
        request: GenerateRequest {
            params,
            enable_thinking: thinking,
            thinking_budget: budget.filter(|_| thinking),
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            assistant_prefix,
            logprobs,
            tools: tools.clone(),
            constraint,
            ..GenerateRequest::new(None, messages, today)
        },
        stream,
        include_usage,
        tools: !tools.is_empty(),
        constraint_field,
        n,
    })
}

/// Sampling settings from the fields chat and text completions share; the caller sets
/// `max_tokens` and checks the ranges (`SamplingParams::problems`).
pub(super) fn sampling_params(f: &SamplingFields) -> Result<SamplingParams, ApiError> {
    let mut params = SamplingParams::default();
    if let Some(t) = f.temperature {
        params.temperature = t;
    }
    if let Some(p) = f.top_p {
        params.top_p = p;
    }
    if let Some(k) = f.top_k {
        params.top_k = usize::try_from(k).map_err(|_| {
            ApiError::bad_request(Some("top_k"), format!("top_k must be 0 or more (got {k})"))
        })?;
    }
    if let Some(p) = f.min_p {
        params.min_p = p;
    }
    if let Some(r) = f.repeat_penalty {
        params.repeat_penalty = r;
    }
    params.frequency_penalty = f.frequency_penalty.unwrap_or(0.0);
    params.presence_penalty = f.presence_penalty.unwrap_or(0.0);
    for (id, value) in f.logit_bias.iter().flatten() {
        let token = id.parse::<u32>().map_err(|_| {
            ApiError::bad_request(
                Some("logit_bias"),
                format!("logit_bias keys are token ids; `{id}` is not one"),
            )
        })?;
        let value = value.as_f64().ok_or_else(|| {
            ApiError::bad_request(
                Some("logit_bias"),
                format!("the bias of token {token} must be a number"),
            )
        })?;
        params.logit_bias.push((token, value as f32));
    }
    params.seed = f.seed.map(|s| s as u64);
    Ok(params)
}

/// The functions the request offers the model, as the template's `xml_tools` wants them
/// (`{"name", "description", "parameters"}`), from `tools` or the legacy `functions`; none
/// when `tool_choice` (or `function_call`) is `none`. With `required` (or a named function)
/// also the constraint that holds the reply to calls (of that function); with `auto` (the
/// default when tools are offered) the one that holds only the calls the model makes.
fn tools_of(req: &ChatRequest) -> Result<(Vec<Value>, Option<Constraint>), ApiError> {
    let mut functions = Vec::new();
    for (i, tool) in req.tools.iter().flatten().enumerate() {
        let param = format!("tools[{i}]");
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::bad_request(
                Some(&param),
                format!("{param}.type must be `function` (the only kind of tool there is)"),
            ));
        }
        functions.push(function_of(
            tool.get("function"),
            &format!("{param}.function"),
        )?);
    }
    for (i, f) in req.functions.iter().flatten().enumerate() {
        functions.push(function_of(Some(f), &format!("functions[{i}]"))?);
    }
    let parallel = req.parallel_tool_calls.unwrap_or(true);
    let mut forced = None;
    let choice = [
        ("tool_choice", &req.tool_choice),
        ("function_call", &req.function_call),
    ];
    for (field, value) in choice {
        let named = match value {
            None => continue,
            Some(Value::String(s)) if s == "none" => {
                functions.clear();
                forced = None;
                continue;
            }
            Some(Value::String(s)) if s == "auto" => continue,
            Some(Value::String(s)) if s == "required" && field == "tool_choice" => None,
            // `{"type": "function", "function": {"name"}}`, or the legacy `{"name"}`.
            Some(Value::Object(o)) => {
                let name = o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .or_else(|| o.get("name"))
                    .and_then(Value::as_str);
                match name {
                    Some(n) => Some(n.to_owned()),
                    None => {
                        return Err(ApiError::bad_request(
                            Some(field),
                            format!("{field} must name a function: {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"),
                        ))
                    }
                }
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    Some(field),
                    format!("{field} must be `auto`, `none`, `required` or a named function"),
                ))
            }
        };
        let chosen: Vec<Value> = match &named {
            None => functions.clone(),
            Some(n) => functions
                .iter()
                .filter(|f| f.get("name").and_then(Value::as_str) == Some(n))
                .cloned()
                .collect(),
        };
        if chosen.is_empty() {
            return Err(ApiError::bad_request(
                Some(field),
                match named {
                    Some(n) => format!("{field} names `{n}`, which is not among the tools"),
                    None => format!("{field} `required` needs at least one tool"),
                },
            ));
        }
        forced = Some(Constraint::ToolCalls {
            // A named function is called once, as OpenAI does.
            parallel: parallel && named.is_none(),
            functions: chosen,
            instead: None,
        });
    }
    if forced.is_none() && !functions.is_empty() {
        // `auto`: the model decides whether to call; the calls it makes are held to the
        // functions' schemas, its text is free.
        forced = Some(Constraint::ToolCalls {
            functions: functions.clone(),
            parallel,
            instead: Some(CallsOr::Text),
        });
    }
    Ok((functions, forced))
}

/// The constraint `response_format` asks for: none for `text`, any JSON object for
/// `json_object`, JSON valid against `json_schema.schema` for `json_schema`.
fn response_format_of(rf: Option<&Value>) -> Result<Option<Constraint>, ApiError> {
    let Some(rf) = rf.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let bad = |m: &str| ApiError::bad_request(Some("response_format"), m.to_string());
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::JsonObject)),
        Some("json_schema") => {
            let spec = rf.get("json_schema").and_then(Value::as_object).ok_or_else(|| {
                bad("response_format.json_schema must be an object with the schema under `schema`")
            })?;
            match spec.get("schema") {
                // OpenAI's `schema` is optional: without one, any JSON object.
                None | Some(Value::Null) => Ok(Some(Constraint::JsonObject)),
                Some(schema @ (Value::Object(_) | Value::Bool(true))) => {
                    Ok(Some(Constraint::JsonSchema {
                        schema: schema.clone(),
                    }))
                }
                Some(_) => Err(bad(
                    "response_format.json_schema.schema must be a JSON Schema object",
                )),
            }
        }
        _ => Err(bad(
            "response_format.type must be `text`, `json_object` or `json_schema`",
        )),
    }
}

/// One function definition, checked: a name of letters, digits, `_` and `-`, and JSON Schema
/// parameters when given.
fn function_of(f: Option<&Value>, param: &str) -> Result<Value, ApiError> {
    let bad = |m: String| ApiError::bad_request(Some(param), m);
    let f = f
        .and_then(Value::as_object)
        .ok_or_else(|| bad(format!("{param} must be an object")))?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .ok_or_else(|| {
            bad(format!(
                "{param}.name must be 1 to 64 letters, digits, `_` or `-`"
            ))
        })?;
    let mut out = serde_json::Map::new();
    out.insert("name".into(), Value::String(name.to_owned()));
    if let Some(d) = f.get("description") {
        out.insert("description".into(), d.clone());
    }
    match f.get("parameters") {
        None => {}
        Some(p @ Value::Object(_)) => {
            out.insert("parameters".into(), p.clone());
        }
        Some(_) => {
            return Err(bad(format!(
                "{param}.parameters must be a JSON Schema object"
            )))
        }
    }
    Ok(Value::Object(out))
}

/// Parses and validates a request body, dated today.
pub fn parse_request(body: &[u8], context: usize) -> Result<Plan, ApiError> {
    let req: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(None, format!("the request body is not valid: {e}")))?;
    plan(req, context, chrono::Local::now().date_naive())
}
