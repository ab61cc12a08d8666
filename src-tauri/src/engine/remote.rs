//! A [`Generator`] that answers through an OpenAI-compatible server (llama.cpp's server,
//! vLLM, Ollama, a hosted API) instead of the local model: the same requests in, the same
//! events out, so conversations, the reasoning view and the built-in server work unchanged.
//!
//! Each reply is one streamed `POST /v1/chat/completions`. Reasoning arrives either as the
//! delta's `reasoning_content` (llama.cpp, vLLM, DeepSeek style) or as `<think>` tags inside
//! the content (split here as for the local model). Nothing hangs: the connection, the first
//! chunk and every gap between chunks have their own time limits, and each failure ends the
//! reply with a sentence a person can act on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use super::events::{EngineEvent, FinishReason, GenerationStats};
use super::generator::{CancelToken, Generator, JobHandle};
use super::request::GenerateRequest;
use crate::text::think::{Delta, ThinkSplitter};

pub use super::remote_server::RemoteServer;

/// How long a reply may wait at each stage before it ends with an error, and how often a
/// busy server (429, 503) is asked again.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Opening the connection.
    pub connect_timeout: Duration,
    /// From sending the request to the first chunk (the server reads the prompt meanwhile).
    pub first_chunk_timeout: Duration,
    /// Between two chunks once the reply streams.
    pub chunk_timeout: Duration,
    /// Tries after a 429 or 503, each after the server's `Retry-After` (at most
    /// [`RemoteOptions::max_retry_wait`]).
    pub busy_retries: usize,
    /// The longest wait before asking a busy server again.
    pub max_retry_wait: Duration,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            first_chunk_timeout: Duration::from_secs(300),
            chunk_timeout: Duration::from_secs(60),
            busy_retries: 3,
            max_retry_wait: Duration::from_secs(30),
        }
    }
}

/// Replies from an OpenAI-compatible server.
#[derive(Clone)]
pub struct RemoteGenerator {
    server: Arc<RemoteServer>,
    client: reqwest::Client,
    opts: RemoteOptions,
}

impl RemoteGenerator {
    /// A generator for `server`; fails only on an address that is not one.
    pub fn new(server: RemoteServer, opts: RemoteOptions) -> Result<Self, String> {
        server.validate()?;
        Ok(Self {
            client: client(&opts)?,
            server: Arc::new(server),
            opts,
        })
    }

    /// The server this generator asks.
    pub fn server(&self) -> &RemoteServer {
        &self.server
    }
}

fn client(opts: &RemoteOptions) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(opts.connect_timeout)
        // Redirects could carry the key to another host.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot set up the connection: {e}"))
}

/// The model ids a server offers (`GET /v1/models`), in its order.
pub async fn list_models(
    base_url: &str,
    api_key: Option<&str>,
    opts: &RemoteOptions,
) -> Result<Vec<String>, String> {
    let server = RemoteServer {
        base_url: base_url.to_string(),
        api_key: api_key.map(str::to_string),
        model: "-".into(),
    };
    server.validate()?;
    let mut req = client(opts)?
        .get(server.endpoint("models"))
        .timeout(opts.connect_timeout + opts.chunk_timeout);
    if let Some(key) = &server.api_key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.map_err(|e| unreachable(&server, &e))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(refusal(&server, status, &body));
    }
    let v: Value = serde_json::from_str(&body).map_err(|_| {
        format!(
            "{} did not answer with a model list (is it an OpenAI-compatible server?)",
            server.host()
        )
    })?;
    Ok(v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

impl Generator for RemoteGenerator {
    fn remote(&self) -> Option<RemoteServer> {
        Some((*self.server).clone())
    }

    fn answered_by(&self) -> String {
        format!("{} on {}", self.server.model_name(), self.server.host())
    }

    fn submit(&self, req: GenerateRequest) -> JobHandle {
        let (tx, rx) = unbounded_channel();
        let cancel = CancelToken::new();
        let job = Reply {
            gen: self.clone(),
            tx,
            cancel: cancel.clone(),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(job.run(req));
            }
            Err(_) => {
                // Called outside an async runtime (the terminal chat): a thread of its own.
                std::thread::spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(job.run(req)),
                        Err(e) => {
                            let _ = job.tx.send(EngineEvent::Error {
                                message: format!("cannot start the connection: {e}"),
                            });
                        }
                    }
                });
            }
        }
        JobHandle {
            id: 0,
            events: rx,
            cancel,
        }
    }
}

/// One reply in flight.
struct Reply {
    gen: RemoteGenerator,
    tx: UnboundedSender<EngineEvent>,
    cancel: CancelToken,
}

/// How a reply's stream ended, before it is reported.
enum Ending {
    Finished(FinishReason),
    Failed(String),
    /// Nobody reads the reply any more.
    Abandoned,
}

/// What the stream told so far.
#[derive(Default)]
struct Progress {
    prompt_tokens: usize,
    completion_tokens: Option<usize>,
    /// Chunks that carried text (empty or not): the generated count when `usage` is missing.
    pieces: usize,
    first_text: Option<Instant>,
    finish: Option<FinishReason>,
}

impl Reply {
    async fn run(self, req: GenerateRequest) {
        let t0 = Instant::now();
        let mut progress = Progress::default();
        let ending = match body(&self.gen.server.model, &req) {
            Err(message) => Ending::Failed(message),
            Ok(body) => self.stream(&body, &mut progress).await,
        };
        let message = match ending {
            Ending::Abandoned => return,
            Ending::Failed(message) => message,
            Ending::Finished(finish_reason) => {
                let end = Instant::now();
                let generated = progress.completion_tokens.unwrap_or(progress.pieces);
                let first = progress.first_text.unwrap_or(end);
                let decode_s = end.duration_since(first).as_secs_f64();
                let ttft_s = first.duration_since(t0).as_secs_f64();
                let stats = GenerationStats {
                    prompt_tokens: progress.prompt_tokens,
                    reused_tokens: 0,
                    generated_tokens: generated,
                    ttft_s,
                    prefill_tps: GenerationStats::prefill_rate(progress.prompt_tokens, ttft_s),
                    decode_tps: GenerationStats::decode_rate(generated, decode_s),
                    finish_reason,
                };
                let _ = self.tx.send(EngineEvent::Done {
                    stats,
                    // The server's token ids are of its model, not ours: none are kept.
                    token_ids: Vec::new(),
                });
                return;
            }
        };
        let _ = self.tx.send(EngineEvent::Error { message });
    }

    /// Sends the request (asking a busy server again) and reads the stream to its end.
    async fn stream(&self, body: &Value, progress: &mut Progress) -> Ending {
        let server = &self.gen.server;
        let opts = &self.gen.opts;
        let mut tries = 0;
        let resp = loop {
            let mut req = self
                .gen
                .client
                .post(server.endpoint("chat/completions"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::ACCEPT, "text/event-stream")
                .body(body.to_string());
            if let Some(key) = &server.api_key {
                req = req.bearer_auth(key);
            }
            let sent = tokio::select! {
                r = tokio::time::timeout(opts.first_chunk_timeout, req.send()) => r,
                _ = cancelled(&self.cancel) => return Ending::Finished(FinishReason::Cancelled),
            };
            let resp = match sent {
                Err(_) => {
                    return Ending::Failed(format!(
                        "{} did not answer within {} s",
                        server.host(),
                        opts.first_chunk_timeout.as_secs()
                    ))
                }
                Ok(Err(e)) => return Ending::Failed(unreachable(server, &e)),
                Ok(Ok(resp)) => resp,
            };
            let status = resp.status();
            if status.is_success() {
                break resp;
            }
            let busy = status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::SERVICE_UNAVAILABLE;
            if busy && tries < opts.busy_retries {
                tries += 1;
                let wait = retry_after(&resp)
                    .unwrap_or(Duration::from_secs(2))
                    .min(opts.max_retry_wait);
                if self.tx.send(EngineEvent::Queued { position: 1 }).is_err() {
                    return Ending::Abandoned;
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = cancelled(&self.cancel) => return Ending::Finished(FinishReason::Cancelled),
                }
            }
            let text = resp.text().await.unwrap_or_default();
            return Ending::Failed(refusal(server, status, &text));
        };
        if self
            .tx
            .send(EngineEvent::Started {
                prompt_tokens: 0,
                reused_tokens: 0,
            })
            .is_err()
        {
            return Ending::Abandoned;
        }
        let mut events = resp.bytes_stream().eventsource();
        let mut splitter = ThinkSplitter::new();
        let mut wait = opts.first_chunk_timeout;
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout(wait, events.next()) => n,
                _ = cancelled(&self.cancel) => return self.close(&mut splitter, FinishReason::Cancelled),
            };
            let waited = std::mem::replace(&mut wait, opts.chunk_timeout);
            let event = match next {
                Err(_) => {
                    return self.fail_after(
                        &mut splitter,
                        format!(
                            "{} sent nothing for {:.1} s; the reply so far is kept",
                            server.host(),
                            waited.as_secs_f64()
                        ),
                    )
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return self.fail_after(
                        &mut splitter,
                        format!(
                        "the connection to {} was lost mid-reply ({e}); the reply so far is kept",
                        server.host()
                    ),
                    )
                }
                Ok(Some(Ok(event))) => event,
            };
            if event.data.trim() == "[DONE]" {
                return self.close(&mut splitter, progress.finish.unwrap_or_default());
            }
            let chunk: Value = match serde_json::from_str(&event.data) {
                Ok(v) => v,
                Err(_) => continue, // comments and keep-alives of some servers
            };
            if let Some(err) = chunk.get("error") {
                let what = err["message"].as_str().unwrap_or("an error");
                return self.fail_after(
                    &mut splitter,
                    format!("{} stopped the reply: {what}", server.host()),
                );
            }
            if !self.absorb(&chunk, &mut splitter, progress) {
                return Ending::Abandoned;
            }
        }
        // The stream closed without `[DONE]`: complete only if the server said how it ended.
        match progress.finish {
            Some(finish) => self.close(&mut splitter, finish),
            None => self.fail_after(
                &mut splitter,
                format!(
                    "the connection to {} closed mid-reply; the reply so far is kept",
                    server.host()
                ),
            ),
        }
    }

    /// Takes one chunk's text, usage and finish reason; false when nobody listens.
    fn absorb(&self, chunk: &Value, splitter: &mut ThinkSplitter, progress: &mut Progress) -> bool {
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            if let Some(n) = usage["prompt_tokens"].as_u64() {
                progress.prompt_tokens = n as usize;
            }
            if let Some(n) = usage["completion_tokens"].as_u64() {
                progress.completion_tokens = Some(n as usize);
            }
        }
        let Some(choice) = chunk["choices"].as_array().and_then(|c| c.first()) else {
            return true;
        };
        let delta = &choice["delta"];
        let mut out = Vec::new();
        let mut carried = false;
        for key in ["reasoning_content", "reasoning"] {
            if let Some(text) = delta[key].as_str() {
                carried = true;
                if !text.is_empty() {
                    out.push(Delta::Reasoning(text.to_string()));
                }
            }
        }
        if let Some(text) = delta["content"].as_str() {
            carried = true;
            out.extend(splitter.push(text));
        }
        // Servers stream a token a chunk, some with no text of their own (part of a
        // character): without `usage`, the chunks are the count.
        if carried {
            progress.pieces += 1;
        }
        if !out.is_empty() {
            progress.first_text.get_or_insert_with(Instant::now);
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            progress.finish = Some(match reason {
                "length" => FinishReason::Length,
                _ => FinishReason::Stop,
            });
        }
        out.into_iter()
            .all(|d| self.tx.send(EngineEvent::from(d)).is_ok())
    }

    /// Sends what the splitter still holds and ends the reply with `finish`.
    fn close(&self, splitter: &mut ThinkSplitter, finish: FinishReason) -> Ending {
        for d in splitter.finish() {
            if self.tx.send(EngineEvent::from(d)).is_err() {
                return Ending::Abandoned;
            }
        }
        Ending::Finished(finish)
    }

    /// Sends what the splitter still holds, then fails with `message`.
    fn fail_after(&self, splitter: &mut ThinkSplitter, message: String) -> Ending {
        match self.close(splitter, FinishReason::Stop) {
            Ending::Abandoned => Ending::Abandoned,
            _ => Ending::Failed(message),
        }
    }
}

/// Resolves once the reply is asked to stop.
async fn cancelled(cancel: &CancelToken) {
    while !cancel.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The request body for `model`: the conversation, the sampling settings every
/// OpenAI-compatible server takes, and the extensions llama.cpp's server and vLLM read
/// (`top_k`, `min_p`, `repeat_penalty`, `chat_template_kwargs`). What no such server can
/// do from a chat request is refused, not dropped.
fn body(model: &str, req: &GenerateRequest) -> Result<Value, String> {
    let refuse = |what: &str| {
        Err(format!(
            "a server engine cannot {what}; use this computer's model for it"
        ))
    };
    if req.raw_prompt.is_some() {
        return refuse("continue a prompt given as token ids");
    }
    if req.constraint.is_some() {
        return refuse("hold a reply to a format or to tool calls");
    }
    if req.logprobs.is_some() {
        return refuse("report token probabilities");
    }
    let mut messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    if let Some(prefix) = &req.assistant_prefix {
        // llama.cpp's server continues a last assistant message; others answer anew.
        messages.push(json!({"role": "assistant", "content": prefix}));
    }
    let p = &req.params;
    let mut body = json!({
        "model": model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "top_k": p.top_k,
        "min_p": p.min_p,
        "repeat_penalty": p.repeat_penalty,
        "chat_template_kwargs": {"enable_thinking": req.enable_thinking},
    });
    if p.presence_penalty != 0.0 {
        body["presence_penalty"] = json!(p.presence_penalty);
    }
    if p.frequency_penalty != 0.0 {
        body["frequency_penalty"] = json!(p.frequency_penalty);
    }
    if let Some(seed) = p.seed {
        body["seed"] = json!(seed);
    }
    if !req.stop.is_empty() {
        body["stop"] = json!(req.stop);
    }
    if !req.tools.is_empty() {
        body["tools"] = json!(req
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": t}))
            .collect::<Vec<_>>());
    }
    Ok(body)
}

/// `Retry-After` in seconds, if the server sent one.
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A connection that could not be made, said plainly.
fn unreachable(server: &RemoteServer, e: &reqwest::Error) -> String {
    if e.is_timeout() || e.is_connect() {
        format!(
            "cannot reach {}: is the server running, and is the address right?",
            server.host()
        )
    } else {
        format!("cannot reach {}: {e}", server.host())
    }
}

/// A refusal by status, with the server's own message when it sent one.
fn refusal(server: &RemoteServer, status: reqwest::StatusCode, body: &str) -> String {
    let detail = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or_else(|| v["error"].as_str())
                .or_else(|| v["detail"].as_str())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(
            " It said: “{}”",
            detail.chars().take(300).collect::<String>()
        )
    };
    let host = server.host();
    let code = status.as_u16();
    match code {
        401 | 403 => format!("{host} refused the API key ({code}): check the key in Settings.{detail}"),
        404 => format!(
            "{host} has no model “{}” or no chat endpoint (404): choose one of the models it lists.{detail}",
            server.model
        ),
        429 | 503 => format!("{host} is busy ({code}) and still was after retrying; try again later.{detail}"),
        _ => format!("{host} answered {status}.{detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::events::ChatMessage;
    use axum::response::IntoResponse;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// How the mock server answers a chat request.
    #[derive(Clone)]
    enum Script {
        /// These SSE data lines, each after `gap`.
        Stream(Vec<String>, Duration),
        /// This status and body, `times` times, then a short stream.
        Status(u16, &'static str, usize),
    }

    async fn mock(script: Script) -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let app = axum::Router::new()
            .route(
                "/v1/chat/completions",
                axum::routing::post(move |headers: axum::http::HeaderMap| {
                    let script = script.clone();
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let authorized = headers
                            .get("authorization")
                            .is_some_and(|v| v == "Bearer right");
                        if !authorized {
                            return (
                                axum::http::StatusCode::UNAUTHORIZED,
                                "{\"error\":{\"message\":\"bad key\"}}",
                            )
                                .into_response();
                        }
                        let (lines, gap) = match script {
                            Script::Status(code, body, times) if n < times => {
                                return (
                                    axum::http::StatusCode::from_u16(code).unwrap(),
                                    [("retry-after", "0")],
                                    body,
                                )
                                    .into_response()
                            }
                            Script::Status(..) => (chunks(&["ok"], true), Duration::ZERO),
                            Script::Stream(lines, gap) => (lines, gap),
                        };
                        let stream = futures_util::stream::unfold(
                            lines.into_iter(),
                            move |mut it| async move {
                                let line = it.next()?;
                                tokio::time::sleep(gap).await;
                                Some((
                                    Ok::<_, std::convert::Infallible>(format!("data: {line}\n\n")),
                                    it,
                                ))
                            },
                        );
                        axum::response::Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(axum::body::Body::from_stream(stream))
                            .unwrap()
                    }
                }),
            )
            .route(
                "/v1/models",
                axum::routing::get(|| async {
                    axum::Json(json!({"object": "list", "data": [{"id": "smol"}, {"id": "big"}]}))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), calls)
    }

    /// Chunks carrying `pieces` as content, then (if `end`) a finish, usage and `[DONE]`.
    fn chunks(pieces: &[&str], end: bool) -> Vec<String> {
        let mut out: Vec<String> = pieces
            .iter()
            .map(|p| json!({"choices": [{"index": 0, "delta": {"content": p}}]}).to_string())
            .collect();
        if end {
            out.push(
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                    .to_string(),
            );
            out.push(json!({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": pieces.len()}}).to_string());
            out.push("[DONE]".into());
        }
        out
    }

    fn generator(base: &str, key: &str, opts: RemoteOptions) -> RemoteGenerator {
        RemoteGenerator::new(
            RemoteServer {
                base_url: base.to_string(),
                api_key: Some(key.into()),
                model: "smol".into(),
            },
            opts,
        )
        .unwrap()
    }

    fn request() -> GenerateRequest {
        GenerateRequest::new(
            Some("c".into()),
            vec![ChatMessage::new("user", "hello")],
            chrono::NaiveDate::from_ymd_opt(2026, 12, 7).unwrap(),
        )
    }

    async fn events(mut job: JobHandle, cancel_after_text: bool) -> Vec<EngineEvent> {
        let mut out = Vec::new();
        while let Some(e) = tokio::time::timeout(Duration::from_secs(20), job.events.recv())
            .await
            .expect("an event within 20 s")
        {
            if cancel_after_text && matches!(e, EngineEvent::Answer { .. }) {
                job.cancel.cancel();
            }
            out.push(e);
        }
        out
    }

    fn text(events: &[EngineEvent]) -> (String, String) {
        let (mut r, mut a) = (String::new(), String::new());
        for e in events {
            match e {
                EngineEvent::Reasoning { text } => r.push_str(text),
                EngineEvent::Answer { text } => a.push_str(text),
                _ => {}
            }
        }
        (r, a)
    }

    fn error(events: &[EngineEvent]) -> String {
        match events.last() {
            Some(EngineEvent::Error { message }) => message.clone(),
            other => panic!("no error: {other:?}"),
        }
    }

    #[tokio::test]
    async fn think_tags_in_the_content_become_reasoning() {
        let (base, _) = mock(Script::Stream(
            chunks(
                &["<think>\nLet me ", "see.</think>\n", "It is ", "42."],
                true,
            ),
            Duration::ZERO,
        ))
        .await;
        let ev = events(
            generator(&base, "right", RemoteOptions::default()).submit(request()),
            false,
        )
        .await;
        assert_eq!(text(&ev), ("Let me see.".into(), "It is 42.".into()));
        match ev.last() {
            Some(EngineEvent::Done { stats, token_ids }) => {
                assert_eq!(stats.finish_reason, FinishReason::Stop);
                assert_eq!((stats.prompt_tokens, stats.generated_tokens), (12, 4));
                assert!(token_ids.is_empty());
            }
            other => panic!("no end: {other:?}"),
        }
    }

    #[tokio::test]
    async fn reasoning_content_is_reasoning() {
        let lines = vec![
            json!({"choices": [{"delta": {"reasoning_content": "Think "}}]}).to_string(),
            json!({"choices": [{"delta": {"reasoning_content": "hard."}}]}).to_string(),
            json!({"choices": [{"delta": {"content": "Done."}, "finish_reason": "length"}]})
                .to_string(),
            "[DONE]".into(),
        ];
        let (base, _) = mock(Script::Stream(lines, Duration::ZERO)).await;
        let ev = events(
            generator(&base, "right", RemoteOptions::default()).submit(request()),
            false,
        )
        .await;
        assert_eq!(text(&ev), ("Think hard.".into(), "Done.".into()));
        assert!(
            matches!(ev.last(), Some(EngineEvent::Done { stats, .. }) if stats.finish_reason == FinishReason::Length)
        );
    }

    #[tokio::test]
    async fn a_wrong_key_and_a_missing_model_say_what_to_fix() {
        let (base, _) = mock(Script::Stream(chunks(&["x"], true), Duration::ZERO)).await;
        let ev = events(
            generator(&base, "wrong", RemoteOptions::default()).submit(request()),
            false,
        )
        .await;
        let msg = error(&ev);
        assert!(
            msg.contains("refused the API key (401)") && msg.contains("bad key"),
            "{msg}"
        );
        let (base, _) = mock(Script::Status(
            404,
            "{\"error\":{\"message\":\"model not found\"}}",
            9,
        ))
        .await;
        let msg = error(
            &events(
                generator(&base, "right", RemoteOptions::default()).submit(request()),
                false,
            )
            .await,
        );
        assert!(
            msg.contains("no model “smol”") && msg.contains("model not found"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_busy_server_is_asked_again() {
        let (base, calls) = mock(Script::Status(503, "busy", 2)).await;
        let ev = events(
            generator(&base, "right", RemoteOptions::default()).submit(request()),
            false,
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(ev.contains(&EngineEvent::Queued { position: 1 }));
        assert_eq!(text(&ev).1, "ok");
        let (base, _) = mock(Script::Status(429, "slow down", 9)).await;
        let msg = error(
            &events(
                generator(&base, "right", RemoteOptions::default()).submit(request()),
                false,
            )
            .await,
        );
        assert!(msg.contains("busy (429)"), "{msg}");
    }

    #[tokio::test]
    async fn a_stalled_or_broken_stream_ends_with_the_text_kept() {
        let opts = RemoteOptions {
            chunk_timeout: Duration::from_millis(300),
            ..RemoteOptions::default()
        };
        // The second chunk comes after 2 s: more than the gap allowed.
        let (base, _) = mock(Script::Stream(
            chunks(&["one ", "two"], true),
            Duration::from_secs(2),
        ))
        .await;
        let t = Instant::now();
        let ev = events(generator(&base, "right", opts).submit(request()), false).await;
        assert!(error(&ev).contains("sent nothing"), "{}", error(&ev));
        assert!(t.elapsed() < Duration::from_secs(5));
        // A stream that closes without saying how the reply ended.
        let (base, _) = mock(Script::Stream(
            chunks(&["half a ", "reply"], false),
            Duration::ZERO,
        ))
        .await;
        let ev = events(
            generator(&base, "right", RemoteOptions::default()).submit(request()),
            false,
        )
        .await;
        assert_eq!(text(&ev).1, "half a reply");
        assert!(error(&ev).contains("closed mid-reply"), "{}", error(&ev));
    }

    #[tokio::test]
    async fn stop_ends_the_reply_as_cancelled() {
        let pieces: Vec<String> = (0..50).map(|i| format!("w{i} ")).collect();
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let (base, _) = mock(Script::Stream(
            chunks(&refs, true),
            Duration::from_millis(50),
        ))
        .await;
        let ev = events(
            generator(&base, "right", RemoteOptions::default()).submit(request()),
            true,
        )
        .await;
        assert!(
            matches!(ev.last(), Some(EngineEvent::Done { stats, .. }) if stats.finish_reason == FinishReason::Cancelled)
        );
        assert!(text(&ev).1.len() < 40, "stopped early: {}", text(&ev).1);
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_fast_and_models_are_listed() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t = Instant::now();
        let ev = events(
            generator(
                &format!("http://127.0.0.1:{port}"),
                "right",
                RemoteOptions::default(),
            )
            .submit(request()),
            false,
        )
        .await;
        assert!(
            error(&ev).contains("cannot reach 127.0.0.1"),
            "{}",
            error(&ev)
        );
        assert!(t.elapsed() < Duration::from_secs(12));
        let (base, _) = mock(Script::Stream(Vec::new(), Duration::ZERO)).await;
        let models = list_models(&format!("{base}/v1/"), None, &RemoteOptions::default())
            .await
            .unwrap();
        assert_eq!(models, ["smol", "big"]);
    }

    #[test]
    fn what_no_server_can_do_is_refused_and_addresses_are_checked() {
        let mut req = request();
        req.logprobs = Some(2);
        assert!(body("m", &req).unwrap_err().contains("token probabilities"));
        let req = request();
        let b = body("m", &req).unwrap();
        assert_eq!(b["model"], "m");
        assert_eq!(b["messages"][0]["content"], "hello");
        assert_eq!(b["stream"], true);
        let bad = RemoteServer {
            base_url: "ftp://x".into(),
            api_key: None,
            model: "m".into(),
        };
        assert!(bad.validate().is_err());
        let ok = RemoteServer {
            base_url: "http://h:8080/v1/".into(),
            api_key: None,
            model: "m".into(),
        };
        assert_eq!(ok.endpoint("models"), "http://h:8080/v1/models");
        assert_eq!(ok.host(), "h:8080");
    }
}
