//! The OpenAI-compatible HTTP API over the engine: `POST /v1/chat/completions` (plain and
//! streamed), `GET /v1/models`, `GET /health`.
//!
//! Field names follow OpenAI's Chat Completions API, with the extras llama.cpp's server made
//! common: `top_k`, `min_p`, `repeat_penalty`, `chat_template_kwargs.enable_thinking`, and the
//! model's reasoning returned apart from the answer as `reasoning_content` (in the message, and
//! in stream deltas). Thinking is off for API requests unless a request asks for it.
//!
//! Every request gets its own KV-cache slot, except one that continues an earlier exchange (its
//! messages start with that exchange's messages and reply): it reuses that slot, with the reply's
//! token ids spliced back in, so the engine only has to prefill the new turn.
//!
//! Errors use OpenAI's JSON shape `{"error":{"message","type","param","code"}}`.

use super::guard::{error_response, GatePermit, JobGate, DEFAULT_MAX_BODY_BYTES};
use crate::engine::core::GenerateRequest;
use crate::engine::events::{ChatMessage, EngineEvent, FinishReason, GenerationStats};
use crate::engine::loader::LoadedModel;
use crate::engine::sampler::SamplingParams;
use crate::engine::worker::{CancelToken, Engine, JobHandle};
use crate::text::chat_template::{ChatTemplate, RenderOptions};
use crate::text::tokenizer;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use chrono::NaiveDate;
use futures_util::stream::{self, Stream};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokenizers::Tokenizer;

/// How many finished exchanges are remembered for continuation.
const REMEMBERED_EXCHANGES: usize = 32;

/// Most text (bytes of message content) the remembered exchanges may hold together.
const REMEMBERED_BYTES: usize = 16 * 1024 * 1024;

/// Most stop strings one request may give.
const MAX_STOPS: usize = 16;

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
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
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
    fn from_engine_message(message: String) -> Self {
        // The engine words its errors for people; these prefixes are its two request faults.
        if message.starts_with("the conversation is too long") {
            Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
                message,
            )
        } else if message.starts_with("invalid settings") {
            Self::bad_request(None, message)
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

/// Counts prompt tokens the way the engine will, so a prompt too long for the context is
/// refused with 400 before it waits in the queue.
pub struct Prompter {
    template: ChatTemplate,
    tokenizer: Tokenizer,
}

impl std::fmt::Debug for Prompter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prompter").finish_non_exhaustive()
    }
}

impl Prompter {
    /// The template and tokenizer the engine will use for this model.
    pub fn from_loaded(loaded: &LoadedModel) -> anyhow::Result<Self> {
        let cfg_json = loaded.gguf.path().with_file_name("tokenizer_config.json");
        let template = ChatTemplate::from_sources(
            loaded.gguf_chat_template(),
            cfg_json.exists().then_some(cfg_json.as_path()),
        )?;
        Ok(Self {
            template,
            tokenizer: loaded.tokenizer.clone(),
        })
    }

    /// Tokens in the rendered prompt.
    pub fn count(
        &self,
        messages: &[ChatMessage],
        thinking: bool,
        today: NaiveDate,
    ) -> Result<usize, ApiError> {
        let opts = RenderOptions::for_date(today).with_thinking(thinking);
        let text = self
            .template
            .render(messages, &opts)
            .map_err(|e| ApiError::bad_request(Some("messages"), e.to_string()))?;
        tokenizer::encode(&self.tokenizer, &text)
            .map(|ids| ids.len())
            .map_err(|e| ApiError::engine(e.to_string()))
    }
}

/// Settings of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The id `/v1/models` lists and requests name.
    pub model_id: String,
    /// Generation jobs that may wait behind the running one before requests get 503.
    pub max_queue: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
}

impl ApiConfig {
    /// Defaults for a model id: 4 waiting jobs, the guard's body limit.
    pub fn new(model_id: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            max_queue: 4,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// The id a model file is listed under: its file name without `.gguf`.
pub fn model_id_for(path: &std::path::Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "smollm3".into())
}

/// A finished exchange that a later request may continue.
#[derive(Debug, Clone)]
struct Exchange {
    key: String,
    today: NaiveDate,
    thinking: bool,
    /// The request's messages and the reply (with its token ids).
    history: Vec<ChatMessage>,
}

struct Inner {
    engine: Engine,
    prompter: Prompter,
    config: ApiConfig,
    gate: JobGate,
    created: i64,
    next_key: AtomicU64,
    exchanges: Mutex<VecDeque<Exchange>>,
    running: Mutex<HashMap<u64, CancelToken>>,
}

/// What the API's handlers share; cheap to clone.
#[derive(Clone)]
pub struct ApiState(Arc<Inner>);

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("model", &self.0.config.model_id)
            .finish()
    }
}

impl ApiState {
    /// An API over a running engine.
    pub fn new(engine: Engine, prompter: Prompter, config: ApiConfig) -> Self {
        let gate = JobGate::new(config.max_queue);
        Self(Arc::new(Inner {
            engine,
            prompter,
            gate,
            created: chrono::Utc::now().timestamp(),
            next_key: AtomicU64::new(1),
            exchanges: Mutex::new(VecDeque::new()),
            running: Mutex::new(HashMap::new()),
            config,
        }))
    }

    /// The engine behind the API.
    pub fn engine(&self) -> &Engine {
        &self.0.engine
    }

    /// The settings.
    pub fn config(&self) -> &ApiConfig {
        &self.0.config
    }

    /// Stops every running API job (used at shutdown, so open streams end promptly).
    pub fn cancel_all(&self) {
        if let Ok(running) = self.0.running.lock() {
            for c in running.values() {
                c.cancel();
            }
        }
    }

    fn known_model(&self, name: &str) -> bool {
        let id = &self.0.config.model_id;
        name.eq_ignore_ascii_case(id)
            || name.eq_ignore_ascii_case(&format!("{id}.gguf"))
            || name.eq_ignore_ascii_case(&self.0.engine.status().model)
    }

    /// Picks the conversation slot: an earlier exchange this one continues, else a new key.
    /// Continued assistant messages get their token ids back. The exchange stays listed
    /// until [`Self::claim`], so a request refused before it runs loses nothing.
    fn slot_for(&self, messages: &mut [ChatMessage], thinking: bool) -> (String, NaiveDate) {
        let exchanges = self.0.exchanges.lock().unwrap_or_else(|p| p.into_inner());
        let found = exchanges.iter().rev().find(|x| {
            x.thinking == thinking
                && x.history.len() < messages.len()
                && x.history
                    .iter()
                    .zip(messages.iter())
                    .all(|(a, b)| a.role == b.role && a.content == b.content)
        });
        if let Some(x) = found {
            for (m, old) in messages.iter_mut().zip(&x.history) {
                m.token_ids.clone_from(&old.token_ids);
            }
            return (x.key.clone(), x.today);
        }
        let n = self.0.next_key.fetch_add(1, Ordering::Relaxed);
        (format!("api-{n}"), chrono::Local::now().date_naive())
    }

    /// Takes a continued exchange off the list: its slot is about to hold a longer one.
    fn claim(&self, key: &str) {
        let mut exchanges = self.0.exchanges.lock().unwrap_or_else(|p| p.into_inner());
        exchanges.retain(|x| x.key != key);
    }

    /// Remembers a finished exchange; the oldest ones (and their caches) are dropped.
    fn remember(&self, x: Exchange) {
        let mut exchanges = self.0.exchanges.lock().unwrap_or_else(|p| p.into_inner());
        exchanges.retain(|old| old.key != x.key);
        exchanges.push_back(x);
        let bytes = |x: &Exchange| x.history.iter().map(|m| m.content.len()).sum::<usize>();
        let mut total: usize = exchanges.iter().map(bytes).sum();
        while exchanges.len() > REMEMBERED_EXCHANGES
            || (total > REMEMBERED_BYTES && exchanges.len() > 1)
        {
            if let Some(old) = exchanges.pop_front() {
                total -= bytes(&old);
                self.0.engine.forget(&old.key);
            }
        }
    }
}

/// The API's routes: `/v1/chat/completions`, `/v1/models`, `/v1/models/{id}`, `/health`, and
/// a JSON 404 for any other `/v1/…` path. It has no fallback of its own, so it merges into
/// any router; wear [`super::guard::Guard::protect`] before serving it over TCP.
pub fn api_router(state: ApiState) -> Router {
    let limit = state.0.config.max_body_bytes;
    Router::new()
        .route(
            "/v1/chat/completions",
            post(chat_completions).fallback(method_not_allowed),
        )
        .route("/v1/models", get(list_models).fallback(method_not_allowed))
        .route(
            "/v1/models/{id}",
            get(get_model).fallback(method_not_allowed),
        )
        .route("/v1/{*rest}", any(not_found))
        .route("/health", get(health).fallback(method_not_allowed))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// 404 in the API's error shape; serve it as the fallback of a composed router.
pub async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        "no such route; the API lives under /v1 (chat/completions, models)",
    )
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        "this route does not take that method",
    )
}

async fn health(State(st): State<ApiState>) -> Json<Value> {
    let s = st.0.engine.status();
    Json(json!({
        "status": "ok",
        "model": st.0.config.model_id,
        "context_size": s.context_size,
        "busy": s.busy,
        "queued": s.queued,
    }))
}

fn model_object(st: &ApiState) -> Value {
    json!({
        "id": st.0.config.model_id,
        "object": "model",
        "created": st.0.created,
        "owned_by": "local",
        "context_length": st.0.engine.context_size(),
    })
}

async fn list_models(State(st): State<ApiState>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [model_object(&st)] }))
}

async fn get_model(State(st): State<ApiState>, Path(id): Path<String>) -> Response {
    if st.known_model(&id) {
        Json(model_object(&st)).into_response()
    } else {
        unknown_model(&id).into_response()
    }
}

fn unknown_model(name: &str) -> ApiError {
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
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// The request body; fields we do not know are ignored, as OpenAI clients send many.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    repeat_penalty: Option<f32>,
    #[serde(default)]
    chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    response_format: Option<Value>,
}

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

/// Checks a parsed body and turns it into an engine request (slot key and date left empty).
fn plan(req: ChatRequest, context: usize) -> Result<Plan, ApiError> {
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
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::bad_request(
                Some("temperature"),
                format!("temperature must be between 0 and 2 (got {t})"),
            ));
        }
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
    params
        .validate()
        .map_err(|e| ApiError::bad_request(None, e))?;

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
            conversation: String::new(),
            messages,
            params,
            enable_thinking: thinking,
            today: NaiveDate::default(),
            thinking_budget: None,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            assistant_prefix: None,
        },
        stream,
        include_usage,
    })
}

/// Parses and validates a request body (exposed for unit tests of the mapping).
pub fn parse_request(body: &[u8], context: usize) -> Result<Plan, ApiError> {
    let req: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(None, format!("the request body is not valid: {e}")))?;
    plan(req, context)
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
    })
}

fn completion_id() -> String {
    let tail: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("chatcmpl-{tail}")
}

/// An admitted job: cancelled if dropped before it finished (a client that went away).
struct Running {
    state: ApiState,
    handle: JobHandle,
    _permit: GatePermit,
    key: String,
    today: NaiveDate,
    thinking: bool,
    messages: Vec<ChatMessage>,
    finished: bool,
}

impl Running {
    /// Records the exchange for continuation, or forgets a slot that holds a broken reply.
    fn finish(&mut self, done: Option<(&str, &[u32], FinishReason)>) {
        self.finished = true;
        match done {
            Some((answer, ids, FinishReason::Stop | FinishReason::Length)) => {
                let mut history = std::mem::take(&mut self.messages);
                history.push(ChatMessage {
                    role: "assistant".into(),
                    content: answer.to_string(),
                    token_ids: Some(ids.to_vec()),
                });
                self.state.remember(Exchange {
                    key: self.key.clone(),
                    today: self.today,
                    thinking: self.thinking,
                    history,
                });
            }
            _ => self.state.0.engine.forget(&self.key),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut running) = self.state.0.running.lock() {
            running.remove(&self.handle.id);
        }
        if !self.finished {
            tracing::info!(job = self.handle.id, "client went away; cancelling its job");
            self.handle.cancel.cancel();
            self.state.0.engine.forget(&self.key);
        }
    }
}

async fn chat_completions(
    State(st): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
                format!(
                    "the request body is larger than the server accepts ({} bytes)",
                    st.0.config.max_body_bytes
                ),
            )
        } else {
            ApiError::bad_request(None, e.body_text())
        }
    })?;
    let context = st.0.engine.context_size();
    let req: ChatRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(None, format!("the request body is not valid: {e}")))?;
    if let Some(m) = req.model.as_deref().filter(|m| !m.is_empty()) {
        if !st.known_model(m) {
            return Err(unknown_model(m));
        }
    }
    let mut plan = plan(req, context)?;

    let (key, today) = st.slot_for(&mut plan.request.messages, plan.request.enable_thinking);
    plan.request.conversation = key.clone();
    plan.request.today = today;

    // Tokenizing a long prompt takes milliseconds; keep it off the async workers anyway.
    let counted = {
        let st = st.clone();
        let messages = plan.request.messages.clone();
        let thinking = plan.request.enable_thinking;
        tokio::task::spawn_blocking(move || st.0.prompter.count(&messages, thinking, today))
            .await
            .map_err(|e| ApiError::engine(format!("prompt check failed: {e}")))?
    };
    let prompt_tokens = counted?;
    if prompt_tokens >= context {
        return Err(ApiError {
            param: Some("messages".into()),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
                format!(
                    "the prompt has {prompt_tokens} tokens but the context holds {context}; \
                     shorten the messages or start the server with a larger --context"
                ),
            )
        });
    }

    let permit = match st.0.gate.try_enter(st.0.engine.status().queued) {
        Ok(p) => p,
        Err(busy) => {
            return Err(ApiError {
                retry_after_s: Some(busy.retry_after_s),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "queue_full",
                    "the server is busy: too many requests are waiting; retry later".into(),
                )
            });
        }
    };
    let thinking = plan.request.enable_thinking;
    let messages = plan.request.messages.clone();
    st.claim(&key);
    let handle = st.0.engine.submit(plan.request);
    if let Ok(mut running) = st.0.running.lock() {
        running.insert(handle.id, handle.cancel.clone());
    }
    let job = Running {
        state: st.clone(),
        handle,
        _permit: permit,
        key,
        today,
        thinking,
        messages,
        finished: false,
    };
    let meta = Meta {
        id: completion_id(),
        created: chrono::Utc::now().timestamp(),
        model: st.0.config.model_id.clone(),
    };
    if plan.stream {
        Ok(stream_reply(job, meta, plan.include_usage).into_response())
    } else {
        whole_reply(job, meta).await
    }
}

/// Fields every response object repeats.
#[derive(Debug, Clone)]
struct Meta {
    id: String,
    created: i64,
    model: String,
}

async fn whole_reply(mut job: Running, meta: Meta) -> Result<Response, ApiError> {
    let mut answer = String::new();
    let mut reasoning = String::new();
    while let Some(ev) = job.handle.events.recv().await {
        match ev {
            EngineEvent::Queued { .. } | EngineEvent::Started { .. } => {}
            EngineEvent::Reasoning { text } => reasoning.push_str(&text),
            EngineEvent::Answer { text } => answer.push_str(&text),
            EngineEvent::Done { stats, token_ids } => {
                job.finish(Some((&answer, &token_ids, stats.finish_reason)));
                let message = assistant_message(&answer, &reasoning);
                let body = json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [{
                        "index": 0,
                        "message": message,
                        "logprobs": null,
                        "finish_reason": finish_reason(stats.finish_reason),
                    }],
                    "usage": usage(&stats),
                });
                return Ok(Json(body).into_response());
            }
            EngineEvent::Error { message } => {
                job.finish(None);
                return Err(ApiError::from_engine_message(message));
            }
        }
    }
    job.finish(None);
    Err(ApiError::engine(
        "the engine stopped before the reply was complete",
    ))
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

struct StreamState {
    job: Running,
    meta: Meta,
    include_usage: bool,
    pending: VecDeque<String>,
    answer: String,
    ended: bool,
}

fn stream_reply(
    job: Running,
    meta: Meta,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = chunk(
        &meta.id,
        meta.created,
        &meta.model,
        json!({ "role": "assistant", "content": "" }),
        None,
        include_usage,
    );
    let state = StreamState {
        job,
        meta,
        include_usage,
        pending: VecDeque::from([first.to_string()]),
        answer: String::new(),
        ended: false,
    };
    let events = stream::unfold(state, |mut s| async move {
        loop {
            if let Some(data) = s.pending.pop_front() {
                return Some((Ok(Event::default().data(data)), s));
            }
            if s.ended {
                return None;
            }
            let ev = s.job.handle.events.recv().await;
            let m = &s.meta;
            match ev {
                Some(EngineEvent::Done { stats, token_ids }) => {
                    s.job
                        .finish(Some((&s.answer, &token_ids, stats.finish_reason)));
                    let end = chunk(
                        &m.id,
                        m.created,
                        &m.model,
                        json!({}),
                        Some(finish_reason(stats.finish_reason)),
                        s.include_usage,
                    );
                    s.pending.push_back(end.to_string());
                    if s.include_usage {
                        let u = json!({
                            "id": m.id,
                            "object": "chat.completion.chunk",
                            "created": m.created,
                            "model": m.model,
                            "choices": [],
                            "usage": usage(&stats),
                        });
                        s.pending.push_back(u.to_string());
                    }
                    s.pending.push_back("[DONE]".into());
                    s.ended = true;
                }
                Some(EngineEvent::Error { message }) => {
                    s.job.finish(None);
                    let e = ApiError::from_engine_message(message);
                    s.pending.push_back(e.body().to_string());
                    s.pending.push_back("[DONE]".into());
                    s.ended = true;
                }
                Some(ev) => {
                    if let EngineEvent::Answer { text } = &ev {
                        s.answer.push_str(text);
                    }
                    if let Some(d) = delta_for(&ev) {
                        let c = chunk(&m.id, m.created, &m.model, d, None, s.include_usage);
                        s.pending.push_back(c.to_string());
                    }
                }
                None => {
                    s.job.finish(None);
                    let e = ApiError::engine("the engine stopped before the reply was complete");
                    s.pending.push_back(e.body().to_string());
                    s.pending.push_back("[DONE]".into());
                    s.ended = true;
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_and_answer_map_to_their_delta_fields() {
        let r = delta_for(&EngineEvent::Reasoning { text: "hmm".into() }).unwrap();
        assert_eq!(r, json!({ "reasoning_content": "hmm" }));
        let a = delta_for(&EngineEvent::Answer { text: "hi".into() }).unwrap();
        assert_eq!(a, json!({ "content": "hi" }));
        assert!(delta_for(&EngineEvent::Answer {
            text: String::new()
        })
        .is_none());
        assert!(delta_for(&EngineEvent::Queued { position: 1 }).is_none());
    }

    #[test]
    fn reasoning_goes_beside_the_answer_in_the_message() {
        let m = assistant_message("42", "Let me add.");
        assert_eq!(
            m,
            json!({"role": "assistant", "content": "42", "reasoning_content": "Let me add."})
        );
        assert!(assistant_message("42", "")
            .get("reasoning_content")
            .is_none());
    }

    #[test]
    fn finish_reasons_follow_openai() {
        assert_eq!(finish_reason(FinishReason::Stop), "stop");
        assert_eq!(finish_reason(FinishReason::Length), "length");
        assert_eq!(finish_reason(FinishReason::ContextFull), "length");
    }

    #[test]
    fn parts_stops_and_extras_are_read() {
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
            "stop": "END", "seed": 7, "top_k": 20, "min_p": 0.05, "repeat_penalty": 1.1,
            "max_completion_tokens": 9, "max_tokens": 100,
            "chat_template_kwargs": {"enable_thinking": true},
            "stream": true, "stream_options": {"include_usage": true}
        });
        let p = parse_request(body.to_string().as_bytes(), 512).unwrap();
        let r = &p.request;
        assert_eq!(r.messages[0].role, "system");
        assert_eq!(r.messages[1].content, "ab");
        assert_eq!(r.stop, vec!["END".to_string()]);
        assert_eq!(r.params.seed, Some(7));
        assert_eq!(r.params.top_k, 20);
        assert_eq!(r.params.max_tokens, 9, "max_completion_tokens wins");
        assert!(r.enable_thinking && p.stream && p.include_usage);
    }

    #[test]
    fn thinking_is_off_unless_asked_and_bad_values_are_refused() {
        let ok = json!({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b"]});
        let p = parse_request(ok.to_string().as_bytes(), 512).unwrap();
        assert!(!p.request.enable_thinking && !p.stream);
        assert_eq!(p.request.params.max_tokens, 512);
        for (bad, param) in [
            (json!({"messages": []}), Some("messages")),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3}),
                Some("temperature"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "top_p": 0}),
                None,
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
                Some("max_tokens"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "n": 2}),
                Some("n"),
            ),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                Some("messages[0].role"),
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                Some("messages[0].content"),
            ),
        ] {
            let e = parse_request(bad.to_string().as_bytes(), 512).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(e.param.as_deref(), param, "{bad}");
        }
        let e = parse_request(b"{not json", 512).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn engine_errors_keep_their_meaning() {
        let e = ApiError::from_engine_message(
            "the conversation is too long: its prompt has 9 tokens and the context holds 8.".into(),
        );
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "context_length_exceeded")
        );
        let e = ApiError::from_engine_message("the model failed: boom".into());
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.body()["error"]["type"], "server_error");
    }
}
