//! A running job's events as an OpenAI response: one JSON object, or server-sent chunks.

use super::wire::{
    assistant_message, chunk, delta_for, finish_reason, logprob_entry, usage, ApiError,
};
use super::{tool_calls, ApiState};
use crate::engine::admission::Ticket;
use crate::engine::{EngineEvent, JobHandle};
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
    /// One streamed chunk of this reply.
    fn chunk(&self, delta: Value, finish: Option<&str>, with_usage: bool) -> Value {
        chunk(
            &self.id,
            self.created,
            &self.model,
            delta,
            finish,
            with_usage,
        )
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

pub(super) async fn whole_reply(mut job: Running, meta: Meta) -> Result<Response, ApiError> {
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
                let body = json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [{
                        "index": 0,
                        "message": message,
                        "logprobs": logprobs_field(meta.logprobs, logprobs),
                        "finish_reason": finish,
                    }],
                    "usage": usage(&stats),
                });
                return Ok(Json(body).into_response());
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
    meta: Meta,
    include_usage: bool,
    pending: VecDeque<String>,
    /// Logprob entries of tokens whose text has not been sent yet.
    logprobs: Vec<Value>,
    /// Holds back what may be a tool call (when tools were offered).
    calls: Option<tool_calls::ToolStream>,
    ended: bool,
}

pub(super) fn stream_reply(
    job: Running,
    meta: Meta,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = meta.chunk(
        json!({ "role": "assistant", "content": "" }),
        None,
        include_usage,
    );
    let calls = meta.tools.then(tool_calls::ToolStream::default);
    let state = StreamState {
        job,
        meta,
        include_usage,
        pending: VecDeque::from([first.to_string()]),
        logprobs: Vec::new(),
        calls,
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
            if let Some(entry) = ev.as_ref().and_then(logprob_entry) {
                s.logprobs.push(entry);
                continue;
            }
            match ev {
                Some(EngineEvent::Done { stats, .. }) => {
                    s.job.finish();
                    if !s.logprobs.is_empty() {
                        // Tokens whose text never showed (held for a stop string, say).
                        let mut c = m.chunk(json!({}), None, s.include_usage);
                        c["choices"][0]["logprobs"] =
                            logprobs_field(true, std::mem::take(&mut s.logprobs));
                        s.pending.push_back(c.to_string());
                    }
                    let mut finish = finish_reason(stats.finish_reason);
                    if let Some(held) = s.calls.take() {
                        let (rest, calls) = held.finish();
                        if !rest.is_empty() {
                            let c = m.chunk(json!({ "content": rest }), None, s.include_usage);
                            s.pending.push_back(c.to_string());
                        }
                        if !calls.is_empty() {
                            let deltas: Vec<Value> = calls
                                .into_iter()
                                .enumerate()
                                .map(|(index, mut call)| {
                                    call["index"] = json!(index);
                                    call
                                })
                                .collect();
                            let c = m.chunk(json!({ "tool_calls": deltas }), None, s.include_usage);
                            s.pending.push_back(c.to_string());
                            finish = TOOL_CALLS;
                        }
                    }
                    let end = m.chunk(json!({}), Some(finish), s.include_usage);
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
                    s.job.finish();
                    let e = ApiError::from_engine_message(message);
                    s.pending.push_back(e.body().to_string());
                    s.pending.push_back("[DONE]".into());
                    s.ended = true;
                }
                Some(mut ev) => {
                    if let (EngineEvent::Answer { text }, Some(held)) = (&mut ev, s.calls.as_mut())
                    {
                        *text = held.push(text);
                    }
                    if let Some(d) = delta_for(&ev) {
                        let mut c = m.chunk(d, None, s.include_usage);
                        if m.logprobs {
                            c["choices"][0]["logprobs"] =
                                logprobs_field(true, std::mem::take(&mut s.logprobs));
                        }
                        s.pending.push_back(c.to_string());
                    }
                }
                None => {
                    s.job.finish();
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
