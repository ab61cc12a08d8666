//! `POST /v1/completions`: OpenAI's legacy text completion, used by code-completion plugins
//! and scripts that build their own prompts. The prompt is taken as it is (a string, tokenized
//! with control-token text read as those tokens, or token ids), with no chat template; the
//! reply continues it. `n` choices are generated one after the other, as for chat. `suffix`
//! (fill in the middle) and `best_of` above 1 are refused: this model was not trained for the
//! one, and the other would multiply the work unseen.

use super::plan::MAX_CHOICES;
use super::stream::{total_usage, Choices, Running};
use super::wire::{finish_reason, usage, ApiError, SamplingFields, Stop};
use super::{body_of, check_model, check_prompt, client_of, ApiState};
use crate::engine::{EngineEvent, GenerateRequest, GenerationStats};
use crate::shell::guard::ClientAddr;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: usize = 16;
/// Most alternatives the legacy `logprobs` integer may ask for (OpenAI's limit).
const MAX_LOGPROBS: u64 = 5;

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    prompt: Value,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    best_of: Option<i64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<super::wire::StreamOptions>,
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    stop: Option<Stop>,
    /// A label for the request: accepted, without effect.
    #[serde(default)]
    user: Option<String>,
    #[serde(flatten)]
    sampling: SamplingFields,
    #[serde(flatten)]
    unknown: serde_json::Map<String, Value>,
}

/// The prompt as token ids: a string (or a list of one) is tokenized, a list of ids (or a list
/// of one such list) is taken as it is.
fn prompt_ids(st: &ApiState, prompt: &Value) -> Result<(Vec<u32>, Option<String>), ApiError> {
    let bad = |m: &str| ApiError::bad_request(Some("prompt"), m);
    let one = match prompt {
        Value::Array(items) if items.len() == 1 && !items[0].is_number() => &items[0],
        Value::Array(items) if items.iter().any(|i| !i.is_number()) => {
            return Err(bad("only one prompt per request is supported (n = 1)"))
        }
        other => other,
    };
    match one {
        Value::String(text) => {
            let ids = st
                .engine()
                .prompter()
                .tokenize(text, true)
                .map_err(|e| ApiError::engine(e.to_string()))?;
            Ok((ids, Some(text.clone())))
        }
        Value::Array(ids) => {
            let ids = ids
                .iter()
                .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| bad("token ids must be whole numbers"))?;
            Ok((ids, None))
        }
        _ => Err(bad("prompt must be a string or a list of token ids")),
    }
}

/// Checks the request and turns it into an engine job.
fn plan(
    st: &ApiState,
    req: &CompletionRequest,
) -> Result<(GenerateRequest, Option<String>), ApiError> {
    if let Some(field) = req.unknown.keys().next() {
        return Err(ApiError::bad_request(
            Some(field),
            format!("`{field}` is not a field this server knows; remove it from the request"),
        ));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(
            Some("suffix"),
            "suffix (fill in the middle) is not supported: SmolLM3 was not trained for it",
        ));
    }
    if req
        .n
        .is_some_and(|n| !(1..=MAX_CHOICES as i64).contains(&n))
    {
        return Err(ApiError::bad_request(
            Some("n"),
            format!("n must be from 1 to {MAX_CHOICES}; the choices are generated in turn"),
        ));
    }
    if req.best_of.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request(
            Some("best_of"),
            "only best_of = 1 is supported",
        ));
    }
    let (ids, text) = prompt_ids(st, &req.prompt)?;
    let mut params = super::plan::sampling_params(&req.sampling)?;
    params.max_tokens = match req.max_tokens {
        None => DEFAULT_MAX_TOKENS,
        Some(m) if m >= 1 => usize::try_from(m).unwrap_or(usize::MAX),
        Some(m) => {
            return Err(ApiError::bad_request(
                Some("max_tokens"),
                format!("max_tokens must be at least 1 (got {m})"),
            ))
        }
    };
    if let Some((field, message)) = params.problems().into_iter().next() {
        return Err(ApiError::bad_request(Some(field), message));
    }
    let logprobs = match &req.logprobs {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(k) if k <= MAX_LOGPROBS => Some(k as usize),
            _ => {
                return Err(ApiError::bad_request(
                    Some("logprobs"),
                    format!("logprobs must be an integer from 0 to {MAX_LOGPROBS}"),
                ))
            }
        },
    };
    let stop = match &req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    let today = chrono::Local::now().date_naive();
    let echo = req.echo.unwrap_or(false).then(|| match text {
        Some(t) => t,
        None => st.engine().prompter().detokenize(&ids).unwrap_or_default(),
    });
    let _ = &req.user;
    Ok((
        GenerateRequest {
            params,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            logprobs,
            raw_prompt: Some(ids),
            ..GenerateRequest::new(None, Vec::new(), today)
        },
        echo,
    ))
}

/// One generated token's logprob and its likeliest alternatives (an engine `Logprob` event).
type Entry = (String, f32, Vec<(String, f32)>);

/// The legacy logprobs object for these entries: parallel lists, as OpenAI's completions give
/// them; `offset` is where the first token's text starts in `text`.
fn legacy_logprobs(entries: &[Entry], offset: usize) -> Value {
    let mut at = offset;
    let mut offsets = Vec::new();
    for (token, _, _) in entries {
        offsets.push(at);
        at += token.len();
    }
    json!({
        "tokens": entries.iter().map(|e| e.0.clone()).collect::<Vec<_>>(),
        "token_logprobs": entries.iter().map(|e| e.1).collect::<Vec<_>>(),
        "top_logprobs": entries.iter().map(|e| {
            e.2.iter().map(|(t, lp)| (t.clone(), json!(lp))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

pub(super) async fn completions(
    State(st): State<ApiState>,
    ClientAddr(addr): ClientAddr,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_of(&st, body)?;
    let req: CompletionRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(None, format!("the request body is not valid: {e}")))?;
    check_model(&st, req.model.as_deref())?;
    let (request, echo) = plan(&st, &req)?;
    check_prompt(&st, &request, "prompt").await?;
    let asked_logprobs = request.logprobs.is_some();
    let choices = Choices {
        state: st.clone(),
        client: client_of(addr),
        request,
        n: req.n.map_or(1, |n| n as usize),
    };
    // The first job is admitted before anything is sent, so a busy server answers 503.
    let first = choices.start(0)?;
    let id = format!(
        "cmpl-{}",
        &super::wire::completion_id()["chatcmpl-".len()..]
    );
    let created = chrono::Utc::now().timestamp();
    let model = st.config().model_id.clone();
    let object = move |choice: Value| json!({ "id": id, "object": "text_completion", "created": created, "model": model, "choices": [choice] });

    if !req.stream.unwrap_or(false) {
        let mut out = Vec::new();
        let mut total = None;
        let mut job = Some(first);
        for index in 0..choices.n {
            let running = match job.take() {
                Some(j) => j,
                None => choices.start(index)?,
            };
            let (choice, stats) =
                whole_choice(running, index, echo.as_deref(), asked_logprobs).await?;
            out.push(choice);
            total_usage(&mut total, &stats);
        }
        let mut body = object(Value::Null);
        body["choices"] = Value::Array(out);
        body["usage"] = usage(&total.unwrap_or_default());
        return Ok(Json(body).into_response());
    }

    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    // The echoed prompt opens each choice.
    let opening = move |index: usize| {
        echo.as_ref()
            .filter(|e| !e.is_empty())
            .map(|e| json!({ "text": e, "index": index, "logprobs": null, "finish_reason": null }))
    };
    let mut pending = VecDeque::new();
    if let Some(c) = opening(0) {
        pending.push_back(object(c).to_string());
    }
    let state = StreamState {
        job: first,
        choices,
        index: 0,
        total: None,
        pending,
        entries: Vec::new(),
        ended: false,
    };
    let events = stream::unfold(state, move |mut s| {
        let object = object.clone();
        let opening = opening.clone();
        async move {
            loop {
                if let Some(data) = s.pending.pop_front() {
                    return Some((
                        Ok::<_, std::convert::Infallible>(Event::default().data(data)),
                        s,
                    ));
                }
                if s.ended {
                    return None;
                }
                let index = s.index;
                match s.job.handle.events.recv().await {
                    Some(EngineEvent::Answer { text } | EngineEvent::Reasoning { text }) => {
                        let logprobs = asked_logprobs
                            .then(|| legacy_logprobs(&std::mem::take(&mut s.entries), 0));
                        s.pending.push_back(
                            object(json!({ "text": text, "index": index, "logprobs": logprobs, "finish_reason": null }))
                                .to_string(),
                        );
                    }
                    Some(EngineEvent::Logprob {
                        token,
                        logprob,
                        top,
                    }) => s.entries.push((token, logprob, top)),
                    Some(EngineEvent::Done { stats, .. }) => {
                        s.job.finish();
                        s.pending.push_back(
                            object(json!({ "text": "", "index": index, "logprobs": null,
                                "finish_reason": finish_reason(stats.finish_reason) }))
                            .to_string(),
                        );
                        total_usage(&mut s.total, &stats);
                        if index + 1 < s.choices.n {
                            match s.choices.start(index + 1) {
                                Ok(next) => {
                                    s.job = next;
                                    s.index = index + 1;
                                    if let Some(c) = opening(index + 1) {
                                        s.pending.push_back(object(c).to_string());
                                    }
                                }
                                Err(e) => s.fail(e),
                            }
                            continue;
                        }
                        if include_usage {
                            let mut u = object(json!(null));
                            u["choices"] = json!([]);
                            u["usage"] = usage(&s.total.clone().unwrap_or_default());
                            s.pending.push_back(u.to_string());
                        }
                        s.pending.push_back("[DONE]".into());
                        s.ended = true;
                    }
                    Some(EngineEvent::Error { message }) => {
                        s.job.finish();
                        s.fail(ApiError::from_engine_message(message));
                    }
                    Some(EngineEvent::Queued { .. } | EngineEvent::Started { .. }) => {}
                    None => {
                        s.job.finish();
                        s.fail(ApiError::engine(
                            "the engine stopped before the reply was complete",
                        ));
                    }
                }
            }
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A streamed completion as it goes.
struct StreamState {
    job: Running,
    choices: Choices,
    /// The choice being streamed.
    index: usize,
    /// The usage of the choices done so far.
    total: Option<GenerationStats>,
    pending: VecDeque<String>,
    /// Logprob entries of tokens whose text has not been sent yet.
    entries: Vec<Entry>,
    ended: bool,
}

impl StreamState {
    /// An error in OpenAI's shape, then the end of the stream.
    fn fail(&mut self, e: ApiError) {
        self.pending.push_back(e.body().to_string());
        self.pending.push_back("[DONE]".into());
        self.ended = true;
    }
}

/// One choice read to its end: its `choices[]` entry and the job's figures.
async fn whole_choice(
    mut job: Running,
    index: usize,
    echo: Option<&str>,
    asked_logprobs: bool,
) -> Result<(Value, GenerationStats), ApiError> {
    let mut text = echo.unwrap_or_default().to_string();
    let offset = text.len();
    let mut entries = Vec::new();
    while let Some(ev) = job.handle.events.recv().await {
        match ev {
            EngineEvent::Answer { text: t } | EngineEvent::Reasoning { text: t } => {
                text.push_str(&t)
            }
            EngineEvent::Logprob {
                token,
                logprob,
                top,
            } => entries.push((token, logprob, top)),
            EngineEvent::Done { stats, .. } => {
                job.finish();
                let choice = json!({
                    "text": text,
                    "index": index,
                    "logprobs": asked_logprobs.then(|| legacy_logprobs(&entries, offset)),
                    "finish_reason": finish_reason(stats.finish_reason),
                });
                return Ok((choice, stats));
            }
            EngineEvent::Error { message } => {
                job.finish();
                return Err(ApiError::from_engine_message(message));
            }
            EngineEvent::Queued { .. } | EngineEvent::Started { .. } => {}
        }
    }
    job.finish();
    Err(ApiError::engine(
        "the engine stopped before the reply was complete",
    ))
}
