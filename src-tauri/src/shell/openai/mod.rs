//! The OpenAI-compatible HTTP API over the engine: `POST /v1/chat/completions` (plain and
//! streamed), `GET /v1/models`, `GET /health`, and llama.cpp's `/tokenize` and `/detokenize`. This module only translates: [`wire`] holds the
//! wire format, [`plan`] turns a request into the engine's, [`stream`] turns the job's events
//! back into a response; [`responses`] does both for OpenAI's Responses API
//! (`POST /v1/responses`) over the same plan. Thinking is off for API requests unless a
//! request asks for it.
//!
//! The API keeps no memory of earlier requests: each one carries its whole conversation, and
//! the engine reuses whatever KV cache shares the longest start with its prompt.

mod completions;
mod plan;
mod proxy;
mod responses;
mod stream;
mod tokens;
mod tool_calls;
mod wire;

pub use plan::{parse_request, Plan};
pub use responses::parse_request as parse_responses_request;
pub use wire::{assistant_message, chunk, delta_for, finish_reason, usage, ApiError};

use super::guard::{error_response, ClientAddr, DEFAULT_MAX_BODY_BYTES};
use crate::app::service::ChatService;
use crate::engine::admission::{QueueLimits, Refusal};
use crate::engine::{CancelToken, Engine, JobError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use stream::{Choices, Meta, Running};
use wire::{completion_id, unknown_model, ChatRequest};

/// Settings of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The id `/v1/models` lists and requests name.
    pub model_id: String,
    /// Generation jobs that may wait behind the running one before requests get 503.
    pub max_queue: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Serve requests that name another model (a client's default, such as `gpt-4o-mini`)
    /// with the one loaded, instead of 404: on by default on 127.0.0.1, off in LAN mode.
    pub any_model_name: bool,
}

impl ApiConfig {
    /// Defaults for a model id: 4 waiting jobs, the guard's body limit, any model name served.
    pub fn new(model_id: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            max_queue: 4,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            any_model_name: true,
        }
    }
}

/// The family name every server of this app answers to, whatever its file is called.
pub const MODEL_ALIAS: &str = "smollm3";

/// The id a model file is listed under: its file name without `.gguf`.
pub fn model_id_for(path: &std::path::Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "smollm3".into())
}

struct Inner {
    engine: Engine,
    config: ApiConfig,
    created: i64,
    /// The stop switches of the jobs running for API clients.
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
    pub fn new(engine: Engine, config: ApiConfig) -> Self {
        // The bound is the engine's, shared with the browser UI's replies on the same engine.
        engine.admission().set_limits(QueueLimits {
            max_waiting: config.max_queue,
            ..engine.admission().limits()
        });
        Self(Arc::new(Inner {
            engine,
            created: chrono::Utc::now().timestamp(),
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
            || name.eq_ignore_ascii_case(MODEL_ALIAS)
            || name.eq_ignore_ascii_case(&format!("{id}.gguf"))
            || name.eq_ignore_ascii_case(&self.0.engine.status().model)
    }

    /// Whether a request naming `name` is served (by the one model this server runs).
    fn serves(&self, name: &str) -> bool {
        self.0.config.any_model_name || self.known_model(name)
    }

    /// Forgets a job that ended or whose client left.
    fn stopped(&self, job: u64) {
        if let Ok(mut running) = self.0.running.lock() {
            running.remove(&job);
        }
    }
}

/// Paths of the API outside `/v1`: clients given a base URL without `/v1` (as some setups
/// ask for) reach the same handlers, and get JSON, never the browser UI's HTML.
const UNVERSIONED: [&str; 7] = [
    "/chat/completions",
    "/completions",
    "/responses",
    "/models",
    "/models/{id}",
    "/tokenize",
    "/detokenize",
];

/// The API's routes: `/v1/chat/completions`, `/v1/models`, `/v1/models/{id}` (also without
/// `/v1`), `/health`, and a JSON 404 for any other `/v1/…` path. It has no fallback of its
/// own, so it merges into any router; wear [`super::guard::Guard::protect`] before serving it
/// over TCP.
pub fn api_router(state: ApiState) -> Router {
    let limit = state.0.config.max_body_bytes;
    let mut router = Router::new();
    for prefix in ["/v1", ""] {
        router = router
            .route(
                &format!("{prefix}/chat/completions"),
                post(chat_completions).fallback(method_not_allowed),
            )
            .route(
                &format!("{prefix}/completions"),
                post(completions::completions).fallback(method_not_allowed),
            )
            .route(
                &format!("{prefix}/responses"),
                post(responses::responses).fallback(method_not_allowed),
            )
            .route(
                &format!("{prefix}/models"),
                get(list_models).fallback(method_not_allowed),
            )
            .route(
                &format!("{prefix}/models/{{id}}"),
                get(get_model).fallback(method_not_allowed),
            );
    }
    router
        .route(
            "/tokenize",
            post(tokens::tokenize).fallback(method_not_allowed),
        )
        .route(
            "/detokenize",
            post(tokens::detokenize).fallback(method_not_allowed),
        )
        .route("/v1/{*rest}", any(not_found))
        .route("/health", get(health).fallback(method_not_allowed))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The API over whichever engine `service` runs on at the moment of each request: for the
/// server inside the app, whose model can be changed (or not yet loaded) while it serves.
/// Without a model every API route answers 503 in the API's error shape; while replies come
/// from another server, requests are forwarded to it (see `proxy`). `any_model_name`
/// as in [`ApiConfig`].
pub fn live_api_router(service: ChatService, any_model_name: bool) -> Router {
    /// The API built for the engine last seen.
    type Built = Option<(Engine, Router)>;
    let built: Arc<Mutex<Built>> = Arc::default();
    let handler = move |req: axum::extract::Request| {
        let (service, built) = (service.clone(), built.clone());
        async move {
            if let Some(server) = service.remote_server() {
                // Replies come from another server: the API is that server's, behind our guard.
                return proxy::forward(&server, req).await;
            }
            let Some(engine) = service.engine() else {
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "model_not_loaded",
                    "no model is loaded in the app yet; choose one in the app's settings",
                );
            };
            let router = {
                let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
                match built.as_ref() {
                    Some((seen, router)) if seen.same(&engine) => router.clone(),
                    // A new engine: the model was changed in the app.
                    _ => {
                        let model_id = service
                            .model_files()
                            .0
                            .map(|p| model_id_for(&p))
                            .unwrap_or_else(|| {
                                model_id_for(std::path::Path::new(&engine.status().model))
                            });
                        let config = ApiConfig {
                            any_model_name,
                            ..ApiConfig::new(model_id)
                        };
                        let router = api_router(ApiState::new(engine.clone(), config));
                        *built = Some((engine, router.clone()));
                        router
                    }
                }
            };
            match tower::ServiceExt::oneshot(router, req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    };
    let mut router = Router::new()
        .route("/v1/{*rest}", any(handler.clone()))
        .route("/health", any(handler.clone()));
    for path in UNVERSIONED {
        router = router.route(path, any(handler.clone()));
    }
    router
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

fn model_object(st: &ApiState, id: &str) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": st.0.created,
        "owned_by": "local",
        "context_length": st.0.engine.context_size(),
    })
}

async fn list_models(State(st): State<ApiState>) -> Json<Value> {
    let id = &st.0.config.model_id;
    let mut data = vec![model_object(&st, id)];
    if !id.eq_ignore_ascii_case(MODEL_ALIAS) {
        data.push(model_object(&st, MODEL_ALIAS));
    }
    Json(json!({ "object": "list", "data": data }))
}

async fn get_model(State(st): State<ApiState>, Path(id): Path<String>) -> Response {
    if st.known_model(&id) {
        let shown = if id.eq_ignore_ascii_case(MODEL_ALIAS) {
            MODEL_ALIAS
        } else {
            st.0.config.model_id.as_str()
        };
        Json(model_object(&st, shown)).into_response()
    } else {
        unknown_model(&id).into_response()
    }
}

/// The queue's name for a client: its address (clients that cannot be told apart share one).
fn client_of(addr: Option<std::net::IpAddr>) -> String {
    match addr {
        Some(ip) => format!("api:{ip}"),
        None => "api".to_string(),
    }
}

/// The request body, or the error for one too large or unreadable.
fn body_of(st: &ApiState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
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
    })
}

/// 404 for a model name this server does not answer to.
fn check_model(st: &ApiState, model: Option<&str>) -> Result<(), ApiError> {
    match model.filter(|m| !m.is_empty()) {
        Some(m) if !st.serves(m) => Err(unknown_model(m)),
        _ => Ok(()),
    }
}

/// The prompt's length in tokens, refused when it leaves no room in the context. The prompt
/// is rendered off the async workers (a long one takes milliseconds).
async fn check_prompt(
    st: &ApiState,
    request: &crate::engine::GenerateRequest,
    param: &str,
) -> Result<usize, ApiError> {
    let context = st.0.engine.context_size();
    let engine = st.0.engine.clone();
    let owned = request.clone();
    let prompt_tokens = tokio::task::spawn_blocking(move || engine.prompt(&owned))
        .await
        .map_err(|e| ApiError::engine(format!("prompt check failed: {e}")))?
        .map_err(|e| match e {
            // The template refused the messages (raise_exception), or an id is not in the
            // vocabulary: the request's fault.
            JobError::Template(_) | JobError::Settings(_) => {
                ApiError::bad_request(Some(param), e.to_string())
            }
            other => ApiError::engine(other.to_string()),
        })?
        .len();
    if prompt_tokens >= context {
        return Err(ApiError {
            param: Some(param.into()),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
                // Worded so that clients recognise a full context from the text alone (litellm
                // looks for "prompt is too long", langchain-openai for the code).
                format!(
                    "the prompt is too long (context_length_exceeded): it has {prompt_tokens} \
                     tokens and this model's maximum context length is {context} tokens; \
                     shorten the {param} or start the server with a larger --context"
                ),
            )
        });
    }
    Ok(prompt_tokens)
}

/// 400 naming `field` when the reply's constraint cannot be compiled (a schema feature the
/// grammar engine lacks); compiled off the async workers (the first call builds the
/// vocabulary tables). Under `tool_choice: auto` a tool whose parameters cannot be compiled
/// only loses the hold on its arguments (the reply goes unconstrained, as before tools were
/// held), so a client that never asked for constraints is not refused for one.
async fn check_constraint(
    st: &ApiState,
    constraint: &mut Option<crate::engine::Constraint>,
    field: &str,
) -> Result<(), ApiError> {
    let Some(owned) = constraint.clone() else {
        return Ok(());
    };
    let engine = st.0.engine.clone();
    let lenient = matches!(
        owned,
        crate::engine::Constraint::ToolCalls {
            instead: Some(crate::engine::CallsOr::Text),
            ..
        }
    );
    let checked = tokio::task::spawn_blocking(move || engine.check_constraint(&owned))
        .await
        .map_err(|e| ApiError::engine(format!("constraint check failed: {e}")))?;
    match checked {
        Ok(()) => Ok(()),
        Err(JobError::Constraint(reason)) if lenient => {
            tracing::warn!("tool arguments left unconstrained: {reason}");
            *constraint = None;
            Ok(())
        }
        Err(e @ JobError::Constraint(_)) => Err(ApiError::bad_request(Some(field), e.to_string())),
        Err(other) => Err(ApiError::engine(other.to_string())),
    }
}

/// Admits a job for `client` (or answers 503 with `Retry-After`) and queues it.
fn start(
    st: &ApiState,
    client: &str,
    request: crate::engine::GenerateRequest,
) -> Result<Running, ApiError> {
    let ticket = match st.0.engine.admission().try_admit(client) {
        Ok(t) => t,
        Err(refusal) => {
            let message = match refusal {
                Refusal::QueueFull { .. } => {
                    "the server is busy: too many requests are waiting; retry later".to_string()
                }
                Refusal::ClientLimit { limit, .. } => format!(
                    "this client already has {limit} requests waiting or running, the most one \
                     client may have; retry when one has finished"
                ),
            };
            return Err(ApiError {
                retry_after_s: Some(refusal.retry_after_s()),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "queue_full",
                    message,
                )
            });
        }
    };
    let handle = st.0.engine.submit(request);
    if let Ok(mut running) = st.0.running.lock() {
        running.insert(handle.id, handle.cancel.clone());
    }
    Ok(Running {
        state: st.clone(),
        handle,
        _ticket: ticket,
        finished: false,
    })
}

async fn chat_completions(
    State(st): State<ApiState>,
    ClientAddr(addr): ClientAddr,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_of(&st, body)?;
    let context = st.0.engine.context_size();
    let req: ChatRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(None, format!("the request body is not valid: {e}")))?;
    check_model(&st, req.model.as_deref())?;
    let mut plan = plan::plan(req, context, chrono::Local::now().date_naive())?;
    check_prompt(&st, &plan.request, "messages").await?;
    let field = plan.constraint_field.unwrap_or("response_format");
    check_constraint(&st, &mut plan.request.constraint, field).await?;
    let meta = Meta {
        id: completion_id(),
        created: chrono::Utc::now().timestamp(),
        model: st.0.config.model_id.clone(),
        logprobs: plan.request.logprobs.is_some(),
        tools: plan.tools,
    };
    let choices = Choices {
        state: st.clone(),
        client: client_of(addr),
        request: plan.request,
        n: plan.n,
    };
    // The first job is admitted before anything is sent, so a busy server answers 503.
    let job = choices.start(0)?;
    if plan.stream {
        Ok(stream::stream_reply(job, choices, meta, plan.include_usage).into_response())
    } else {
        stream::whole_reply(job, choices, meta).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineEvent, FinishReason};

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
                Some("top_p"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
                Some("max_tokens"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "n": 5}),
                Some("n"),
            ),
            (
                json!({"messages": [{"role": "robot", "content": "x"}]}),
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
