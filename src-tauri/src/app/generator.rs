//! The seam between the chat service and whatever produces a reply: the [`Generator`] trait,
//! what a job asks for, and the two generators that need no model (`NoModel`, `Quote`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::engine::events::{ChatMessage, EngineEvent, FinishReason, GenerationStats};

/// How many events a job may buffer before the producer waits for the consumer.
pub const JOB_CHANNEL_CAPACITY: usize = 256;

/// Sampling parameters for one reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingSettings {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling threshold (1.0 disables it).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 disables it).
    pub top_k: usize,
    /// Drop tokens less likely than `min_p` times the most likely one (0 disables it).
    pub min_p: f32,
    /// Penalty for repeating recent tokens (1.0 disables it).
    pub repeat_penalty: f32,
    /// Most tokens to generate for one reply.
    pub max_tokens: usize,
}

impl Default for SamplingSettings {
    /// The values SmolLM3's model card recommends.
    fn default() -> Self {
        Self {
            temperature: 0.6,
            top_p: 0.95,
            top_k: 20,
            min_p: 0.0,
            repeat_penalty: 1.0,
            max_tokens: 2048,
        }
    }
}

/// Everything the engine needs for one reply.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The conversation; the engine keeps one KV cache slot per conversation.
    pub conversation_id: i64,
    /// The chat so far, system prompt first, ending with the user's turn.
    pub messages: Vec<ChatMessage>,
    /// How to pick tokens.
    pub sampling: SamplingSettings,
    /// Whether the model may reason inside `<think>` first.
    pub enable_thinking: bool,
    /// The date printed in the system prompt; fixed per conversation so the KV prefix stays valid.
    pub today: NaiveDate,
    /// Most reasoning tokens before the engine closes the `<think>` block (None: no limit).
    pub thinking_budget: Option<usize>,
}

/// A submitted job: its event stream and the switch that stops it.
#[derive(Debug)]
pub struct JobHandle {
    /// Events in order: `Queued`/`Started`, deltas, then `Done` or `Error`.
    pub events: mpsc::Receiver<EngineEvent>,
    /// Set to ask the producer to stop; it then ends with `Done` and `FinishReason::Cancelled`.
    pub cancel: Arc<AtomicBool>,
}

impl JobHandle {
    /// A job that fails at once with `message` (for a person to read).
    pub fn failed(message: impl Into<String>) -> Self {
        let (tx, rx) = mpsc::channel(1);
        // A fresh channel with capacity 1 always has room for one event.
        let _ = tx.try_send(EngineEvent::Error {
            message: message.into(),
        });
        Self {
            events: rx,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Something that turns a chat into a streamed reply. The real engine implements it; so do
/// the model-free generators below.
pub trait Generator: Send + Sync {
    /// Queues a job and returns at once; events arrive on the handle.
    fn submit(&self, req: GenerateRequest) -> JobHandle;

    /// Drops whatever is cached for a conversation (it was deleted or cleared).
    fn forget(&self, _conversation_id: i64) {}

    /// Stops for good before being replaced: cancels the reply in progress and any queued
    /// ones (they end with `Done`, cancelled) and frees the model. Blocks until done.
    fn shutdown(&self) {}
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
        let (tx, rx) = mpsc::channel(JOB_CHANNEL_CAPACITY);
        let cancel = Arc::new(AtomicBool::new(false));
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
            let send = |ev: EngineEvent| tx.blocking_send(ev).is_ok();
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
                if stop.load(Ordering::Relaxed) {
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
        JobHandle { events: rx, cancel }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(thinking: bool) -> GenerateRequest {
        GenerateRequest {
            conversation_id: 1,
            messages: vec![ChatMessage::new("user", "/quote")],
            sampling: SamplingSettings::default(),
            enable_thinking: thinking,
            today: NaiveDate::from_ymd_opt(2026, 1, 2).expect("valid date"),
            thinking_budget: None,
        }
    }

    fn drain(mut job: JobHandle) -> Vec<EngineEvent> {
        let mut out = Vec::new();
        while let Some(ev) = job.events.blocking_recv() {
            out.push(ev);
        }
        out
    }

    #[test]
    fn words_keep_every_character() {
        let text = "  one two\n\nthree  ";
        assert_eq!(words(text).concat(), text);
        assert_eq!(words("a b").len(), 2);
    }

    #[test]
    fn quote_streams_the_text_then_done() {
        let events = drain(
            Quote::new("hello <b>world</b> again")
                .with_delay(Duration::ZERO)
                .submit(request(false)),
        );
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
        let events = drain(
            Quote::new("")
                .with_delay(Duration::ZERO)
                .submit(request(true)),
        );
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
        job.cancel.store(true, Ordering::Relaxed);
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
