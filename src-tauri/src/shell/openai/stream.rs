//! A running job's events as an OpenAI response: one JSON object, or server-sent chunks.

use super::wire::{
    assistant_message, chunk, delta_for, finish_reason, logprob_entry, usage, ApiError,
};
use super::{tool_calls, ApiState};
use crate::engine::admission::Ticket;
use crate::engine::{EngineEvent, GenerateRequest, GenerationStats, JobHandle};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;

/// An admitted job: cancelled if dropped before it finished (a client that went away).
pub(super) struct Running {
    pub(super) state: ApiState,
    pub(super) handle: JobHandle,
    pub(super) _ticket: Ticket,
    pub(super) finished: bool,
}

impl Running {
    /// The job ended (its last event was read); nothing to cancel any more.
    pub(super) fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.state.stopped(self.handle.id);
        if !self.finished {
            tracing::info!(job = self.handle.id, "client went away; cancelling its job");
            self.handle.cancel.cancel();
        }
    }
}

/// Fields every response object repeats.
#[derive(Debug, Clone)]
pub(super) struct Meta {
    pub(super) id: String,
    pub(super) created: i64,
    pub(super) model: String,
    /// Whether the request asked for logprobs (`choices[].logprobs` is then an object).
    pub(super) logprobs: bool,
    /// Whether tools were offered (the reply's `<tool_call>` blocks become `tool_calls`).
    pub(super) tools: bool,
}

/// The finish reason of a reply that made calls: OpenAI's `tool_calls`.
const TOOL_CALLS: &str = "tool_calls";

impl Meta {
    /// One streamed chunk of choice `index` of this reply.
    fn chunk(&self, index: usize, delta: Value, finish: Option<&str>, with_usage: bool) -> Value {
        let mut c = chunk(
            &self.id,
            self.created,
            &self.model,
            delta,
            finish,
            with_usage,
        );
        c["choices"][0]["index"] = json!(index);
        c
    }
}

/// The jobs of one request: `n` replies to the same prompt, generated one after the other.
/// Each starts when the one before has finished, so the engine finds the prompt in its cache
/// and only the first pays for the prefill; a request with a seed gives choice `i` the seed
/// plus `i`, so the choices differ and each is reproducible.
pub(super) struct Choices {
    pub(super) state: ApiState,
    pub(super) client: String,
    pub(super) request: GenerateRequest,
    pub(super) n: usize,
}

impl Choices {
    /// Admits and queues the job of choice `index`.
    pub(super) fn start(&self, index: usize) -> Result<Running, ApiError> {
        let mut request = self.request.clone();
        if let Some(seed) = request.params.seed {
            request.params.seed = Some(seed.wrapping_add(index as u64));
        }
        super::start(&self.state, &self.client, request)
    }
}

/// The usage of every choice together: the prompt once (it is read once and then found in
/// the cache), the generated tokens of all.
pub(super) fn total_usage(total: &mut Option<GenerationStats>, stats: &GenerationStats) {
    match total {
        None => *total = Some(stats.clone()),
        Some(t) => t.generated_tokens += stats.generated_tokens,
    }
}

/// `choices[].logprobs` for these entries: `null` when none were asked for.
fn logprobs_field(asked: bool, entries: Vec<Value>) -> Value {
    if asked {
        json!({ "content": entries, "refusal": null })
    } else {
        Value::Null
    }
}

/// Every choice, read whole, as one `chat.completion` object.
pub(super) async fn whole_reply(
    first: Running,
    choices: Choices,
    meta: Meta,
) -> Result<Response, ApiError> {
    let mut out = Vec::with_capacity(choices.n);
    let mut total = None;
    let mut job = Some(first);
    for index in 0..choices.n {
        let running = match job.take() {
            Some(j) => j,
            None => choices.start(index)?,
        };
        let (choice, stats) = one_choice(running, &meta, index).await?;
        out.push(choice);
        total_usage(&mut total, &stats);
    }
    let stats = total.unwrap_or_default();
    let body = json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": out,
        "usage": usage(&stats),
    });
    Ok(Json(body).into_response())
}

/// One choice read to its end: its `choices[]` entry and the job's figures.
async fn one_choice(
    mut job: Running,
    meta: &Meta,
    index: usize,
) -> Result<(Value, GenerationStats), ApiError> {
    let mut answer = String::new();
    let mut reasoning = String::new();
    let mut logprobs = Vec::new();
    while let Some(ev) = job.handle.events.recv().await {
        if let Some(entry) = logprob_entry(&ev) {
            logprobs.push(entry);
            continue;
        }
        match ev {
            EngineEvent::Queued { .. }
            | EngineEvent::Started { .. }
            | EngineEvent::Logprob { .. } => {}
            EngineEvent::Reasoning { text } => reasoning.push_str(&text),
            EngineEvent::Answer { text } => answer.push_str(&text),
            EngineEvent::Done { stats, .. } => {
                job.finish();
                let mut message = assistant_message(&answer, &reasoning);
                let mut finish = finish_reason(stats.finish_reason);
                if meta.tools {
                    let split = tool_calls::split(&answer);
                    if !split.calls.is_empty() {
                        message["content"] = if split.content.is_empty() {
                            Value::Null
                        } else {
                            Value::String(split.content)
                        };
                        message["tool_calls"] = Value::Array(split.calls);
                        finish = TOOL_CALLS;
                    }
                }
                let choice = json!({
                    "index": index,
                    "message": message,
                    "logprobs": logprobs_field(meta.logprobs, logprobs),
                    "finish_reason": finish,
                });
                return Ok((choice, stats));
            }
            EngineEvent::Error { message } => {
                job.finish();
                return Err(ApiError::from_engine_message(message));
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
    choices: Choices,
    /// The choice being streamed.
    index: usize,
    /// The usage of the choices done so far.
    total: Option<GenerationStats>,
    meta: Meta,
    include_usage: bool,
    pending: VecDeque<String>,
    /// Logprob entries of tokens whose text has not been sent yet.
    logprobs: Vec<Value>,
    /// Holds back what may be a tool call (when tools were offered).
    calls: Option<tool_calls::ToolStream>,
    ended: bool,
}

impl StreamState {
    /// The chunk that opens choice `index`.
    fn opening(&self, index: usize) -> String {
        self.meta
            .chunk(
                index,
                json!({ "role": "assistant", "content": "" }),
                None,
                self.include_usage,
            )
            .to_string()
    }

    /// An error in OpenAI's shape, then the end of the stream.
    fn fail(&mut self, e: ApiError) {
        self.pending.push_back(e.body().to_string());
        self.pending.push_back("[DONE]".into());
        self.ended = true;
    }
}

/// Every choice as server-sent chunks, one choice after the other (each chunk names its
/// choice's `index`, as OpenAI's do).
pub(super) fn stream_reply(
    job: Running,
    choices: Choices,
    meta: Meta,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let calls = meta.tools.then(tool_calls::ToolStream::default);
    let mut state = StreamState {
        job,
        choices,
        index: 0,
        total: None,
        meta,
        include_usage,
        pending: VecDeque::new(),
        logprobs: Vec::new(),
        calls,
        ended: false,
    };
    let first = state.opening(0);
    state.pending.push_back(first);
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
            let index = s.index;
            if let Some(entry) = ev.as_ref().and_then(logprob_entry) {
                s.logprobs.push(entry);
                continue;
            }
            match ev {
                Some(EngineEvent::Done { stats, .. }) => {
                    s.job.finish();
                    if !s.logprobs.is_empty() {
                        // Tokens whose text never showed (held for a stop string, say).
                        let mut c = m.chunk(index, json!({}), None, s.include_usage);
                        c["choices"][0]["logprobs"] =
                            logprobs_field(true, std::mem::take(&mut s.logprobs));
                        s.pending.push_back(c.to_string());
                    }
                    let mut finish = finish_reason(stats.finish_reason);
                    if let Some(held) = s.calls.take() {
                        let (rest, calls) = held.finish();
                        if !rest.is_empty() {
                            let c =
                                m.chunk(index, json!({ "content": rest }), None, s.include_usage);
                            s.pending.push_back(c.to_string());
                        }
                        if !calls.is_empty() {
                            let deltas: Vec<Value> = calls
                                .into_iter()
                                .enumerate()
                                .map(|(i, mut call)| {
                                    call["index"] = json!(i);
                                    call
                                })
                                .collect();
                            let c = m.chunk(
                                index,
                                json!({ "tool_calls": deltas }),
                                None,
                                s.include_usage,
                            );
                            s.pending.push_back(c.to_string());
                            finish = TOOL_CALLS;
                        }
                    }
                    let end = m.chunk(index, json!({}), Some(finish), s.include_usage);
                    s.pending.push_back(end.to_string());
                    total_usage(&mut s.total, &stats);
                    if index + 1 < s.choices.n {
                        // The next choice: its job starts now that this one is done.
                        match s.choices.start(index + 1) {
                            Ok(next) => {
                                s.job = next;
                                s.index = index + 1;
                                s.calls = s.meta.tools.then(tool_calls::ToolStream::default);
                                let opening = s.opening(index + 1);
                                s.pending.push_back(opening);
                            }
                            Err(e) => s.fail(e),
                        }
                        continue;
                    }
                    if s.include_usage {
                        let u = json!({
                            "id": m.id,
                            "object": "chat.completion.chunk",
                            "created": m.created,
                            "model": m.model,
                            "choices": [],
                            "usage": usage(&s.total.clone().unwrap_or_default()),
                        });
                        s.pending.push_back(u.to_string());
                    }
                    s.pending.push_back("[DONE]".into());
                    s.ended = true;
                }
                Some(EngineEvent::Error { message }) => {
                    s.job.finish();
                    s.fail(ApiError::from_engine_message(message));
                }
                Some(mut ev) => {
                    if let (EngineEvent::Answer { text }, Some(held)) = (&mut ev, s.calls.as_mut())
                    {
                        *text = held.push(text);
                    }
                    if let Some(d) = delta_for(&ev) {
                        let mut c = m.chunk(index, d, None, s.include_usage);
                        if m.logprobs {
                            c["choices"][0]["logprobs"] =
                                logprobs_field(true, std::mem::take(&mut s.logprobs));
                        }
                        s.pending.push_back(c.to_string());
                    }
                }
                None => {
                    s.job.finish();
                    s.fail(ApiError::engine(
                        "the engine stopped before the reply was complete",
                    ));
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
