//! A running job's events as an OpenAI response: one JSON object, or server-sent chunks.

use super::wire::{assistant_message, chunk, delta_for, finish_reason, usage, ApiError};
use super::ApiState;
use crate::engine::admission::Ticket;
use crate::engine::{EngineEvent, JobHandle};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde_json::json;
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
    fn finish(&mut self) {
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
}

pub(super) async fn whole_reply(mut job: Running, meta: Meta) -> Result<Response, ApiError> {
    let mut answer = String::new();
    let mut reasoning = String::new();
    while let Some(ev) = job.handle.events.recv().await {
        match ev {
            EngineEvent::Queued { .. } | EngineEvent::Started { .. } => {}
            EngineEvent::Reasoning { text } => reasoning.push_str(&text),
            EngineEvent::Answer { text } => answer.push_str(&text),
            EngineEvent::Done { stats, .. } => {
                job.finish();
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
    answer: String,
    ended: bool,
}

pub(super) fn stream_reply(
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
                Some(EngineEvent::Done { stats, .. }) => {
                    s.job.finish();
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
                    s.job.finish();
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
