//! What the engine offers its callers: the [`Generator`] trait (implemented by the engine
//! itself, see `worker.rs`), a submitted job's [`JobHandle`] and [`CancelToken`], and the two
//! generators that need no model ([`NoModel`], [`Quote`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::admission::{Refusal, Ticket};
use super::core::GenerateRequest;
use super::events::{EngineEvent, FinishReason, GenerationStats};

/// Stops a job; takes effect before the next token.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A fresh token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the job to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was asked.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A submitted job: its event stream and its stop switch.
#[derive(Debug)]
pub struct JobHandle {
    /// Job id (unique per engine; 0 for generators without a queue).
    pub id: u64,
    /// Events in order: `Queued`/`Started`, deltas, then `Done` or `Error`; the stream ends
    /// after the last.
    pub events: mpsc::UnboundedReceiver<EngineEvent>,
    /// Stops the job; it then ends with `Done` and `FinishReason::Cancelled`.
    pub cancel: CancelToken,
}

impl JobHandle {
    /// A job that fails at once with `message` (for a person to read).
    pub fn failed(message: impl Into<String>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        // The receiver is alive, so the send cannot fail.
        let _ = tx.send(EngineEvent::Error {
            message: message.into(),
        });
        Self {
            id: 0,
            events: rx,
            cancel: CancelToken::new(),
        }
    }
}

/// Something that turns a chat into a streamed reply: the engine, or a model-free stand-in.
pub trait Generator: Send + Sync {
    /// Asks for a place in the queue for one of `client`'s replies, before anything of the
    /// reply is saved. The ticket (none for generators without a queue) is held until the
    /// reply ends; a refusal says why, for a person to read.
    fn admit(&self, _client: &str) -> Result<Option<Ticket>, Refusal> {
        Ok(None)
    }

    /// Queues a job and returns at once; events arrive on the handle.
    fn submit(&self, req: GenerateRequest) -> JobHandle;

    /// Drops whatever is cached for a conversation (it was deleted or cleared).
    fn forget(&self, _conversation: &str) {}

    /// Stops for good before being replaced: cancels the reply in progress and any queued
    /// ones (they end with `Done`, cancelled) and frees the model. Blocks until done.
    fn shutdown(&self) {}

    /// The engine behind this generator, for callers that speak to it directly (the API of a
    /// server started inside the app); none for the stand-ins without a model.
    fn engine(&self) -> Option<super::Engine> {
        None
    }

    /// The OpenAI-compatible server this generator answers through, if it is one (the app's
    /// own API then forwards to it).
    fn remote(&self) -> Option<super::remote_server::RemoteServer> {
        None
    }

    /// Who writes the replies, as a conversation records under each: the model and where it
    /// runs ("SmolLM3-3B-Q4_K_M.gguf on this computer"); empty for the stand-ins.
    fn answered_by(&self) -> String {
        String::new()
    }
}

/// The generator in place while no model is loaded: every job fails with a clear message.
#[derive(Debug, Clone)]
pub struct NoModel {
    reason: String,
}

impl NoModel {
    /// A stand-in that explains why there is no model (`reason` is shown to the user).
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

impl Default for NoModel {
    fn default() -> Self {
        Self::new("No model is loaded. Choose a GGUF file in Settings, or start the app with MODEL_PATH set.")
    }
}

impl Generator for NoModel {
    fn submit(&self, _req: GenerateRequest) -> JobHandle {
        JobHandle::failed(self.reason.clone())
    }
}

/// The quotation `/quote` streams when given no text of its own.
pub const DEFAULT_QUOTE: &str =
    "The most exciting phrase to hear in science, the one that heralds new \
discoveries, is not \"Eureka!\" but \"That's funny...\" — Isaac Asimov";

/// Reasoning text `/quote` streams first when thinking is on, so the reasoning block can be
/// checked without a model.
pub const QUOTE_REASONING: &str =
    "The user asked for a quotation. I will pick one about curiosity.";

/// Streams fixed text word by word, through exactly the events a model reply produces.
#[derive(Debug, Clone)]
pub struct Quote {
    text: String,
    /// Pause between words, so streaming and stopping can be seen.
    pub word_delay: Duration,
}

impl Quote {
    /// Streams `text` (the built-in quotation when empty).
    pub fn new(text: &str) -> Self {
        let text = if text.trim().is_empty() {
            DEFAULT_QUOTE.to_string()
        } else {
            text.to_string()
        };
        Self {
            text,
            word_delay: Duration::from_millis(60),
        }
    }

    /// Changes the pause between words.
    pub fn with_delay(mut self, word_delay: Duration) -> Self {
        self.word_delay = word_delay;
        self
    }
}

/// Splits text into pieces that each start with their leading whitespace, so joining them
/// gives the text back.
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = true;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if !in_space && i > start {
                out.push(&text[start..i]);
                start = i;
            }
            in_space = true;
        } else {
            in_space = false;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

impl Generator for Quote {
    fn submit(&self, req: GenerateRequest) -> JobHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = CancelToken::new();
        let stop = cancel.clone();
        let text = self.text.clone();
        let delay = self.word_delay;
        let thinking = req.enable_thinking;
        let prompt_tokens: usize = req
            .messages
            .iter()
            .map(|m| words(&m.content).len() + 4)
            .sum();
        std::thread::spawn(move || {
            let begin = Instant::now();
            let send = |ev: EngineEvent| tx.send(ev).is_ok();
            if !send(EngineEvent::Started {
                prompt_tokens,
                reused_tokens: 0,
            }) {
                return;
            }
            let mut pieces: Vec<(bool, &str)> = Vec::new();
            if thinking {
                pieces.extend(words(QUOTE_REASONING).into_iter().map(|w| (true, w)));
            }
            pieces.extend(words(&text).into_iter().map(|w| (false, w)));
            let mut generated = 0;
            let mut first_token = None;
            let mut finish = FinishReason::Stop;
            for (reasoning, piece) in pieces {
                if stop.is_cancelled() {
                    finish = FinishReason::Cancelled;
                    break;
                }
                std::thread::sleep(delay);
                first_token.get_or_insert_with(|| begin.elapsed());
                generated += 1;
                let text = piece.to_string();
                let ev = if reasoning {
                    EngineEvent::Reasoning { text }
                } else {
                    EngineEvent::Answer { text }
                };
                if !send(ev) {
                    return;
                }
            }
            let ttft = first_token.unwrap_or_else(|| begin.elapsed());
            let decode = begin.elapsed().saturating_sub(ttft).as_secs_f64();
            let stats = GenerationStats {
                prompt_tokens,
                reused_tokens: 0,
                generated_tokens: generated,
                ttft_s: ttft.as_secs_f64(),
                prefill_tps: 0.0,
                decode_tps: if decode > 0.0 {
                    generated.saturating_sub(1) as f64 / decode
                } else {
                    0.0
                },
                finish_reason: finish,
            };
            send(EngineEvent::Done {
                stats,
                token_ids: Vec::new(),
            });
        });
        JobHandle {
            id: 0,
            events: rx,
            cancel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ChatMessage;
    use chrono::NaiveDate;

    fn request(thinking: bool) -> GenerateRequest {
        GenerateRequest {
            enable_thinking: thinking,
            ..GenerateRequest::new(
                Some("1".into()),
                vec![ChatMessage::new("user", "/quote")],
                NaiveDate::from_ymd_opt(2026, 1, 2).expect("valid date"),
            )
        }
    }

    fn drain(mut job: JobHandle) -> Vec<EngineEvent> {
        let mut out = Vec::new();
        while let Some(ev) = job.events.blocking_recv() {
            out.push(ev);
        }
        out
    }

    /// Every event of quoting `text` without pauses.
    fn quote(text: &str, thinking: bool) -> Vec<EngineEvent> {
        drain(
            Quote::new(text)
                .with_delay(Duration::ZERO)
                .submit(request(thinking)),
        )
    }

    #[test]
    fn words_keep_every_character() {
        let text = "  one two\n\nthree  ";
        assert_eq!(words(text).concat(), text);
        assert_eq!(words("a b").len(), 2);
    }

    #[test]
    fn quote_streams_the_text_then_done() {
        let events = quote("hello <b>world</b> again", false);
        assert!(matches!(events[0], EngineEvent::Started { .. }));
        let answer: String = events
            .iter()
            .filter_map(|e| match e {
                EngineEvent::Answer { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(answer, "hello <b>world</b> again");
        match events.last() {
            Some(EngineEvent::Done { stats, .. }) => {
                assert_eq!(stats.generated_tokens, 3);
                assert_eq!(stats.finish_reason, FinishReason::Stop);
            }
            other => panic!("expected Done, got {other:?}"),
        }
    }

    #[test]
    fn quote_reasons_first_when_thinking() {
        let events = quote("", true);
        let first_delta = events.iter().find(|e| {
            matches!(
                e,
                EngineEvent::Reasoning { .. } | EngineEvent::Answer { .. }
            )
        });
        assert!(matches!(first_delta, Some(EngineEvent::Reasoning { .. })));
    }

    #[test]
    fn cancel_ends_with_cancelled() {
        let job = Quote::new("")
            .with_delay(Duration::from_millis(5))
            .submit(request(false));
        job.cancel.cancel();
        let events = drain(job);
        match events.last() {
            Some(EngineEvent::Done { stats, .. }) => {
                assert_eq!(stats.finish_reason, FinishReason::Cancelled)
            }
            other => panic!("expected Done, got {other:?}"),
        }
    }

    #[test]
    fn no_model_fails_with_a_message() {
        let events = drain(NoModel::default().submit(request(false)));
        assert!(
            matches!(&events[..], [EngineEvent::Error { message }] if message.contains("No model"))
        );
    }
}
