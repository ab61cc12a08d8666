//! The vocabulary shared by the engine and its callers: what a generation job asks for and
//! the events it streams back.

use serde::{Deserialize, Serialize};

use crate::text::think::Delta;
pub use crate::text::ChatMessage;

/// Figures reported when a job ends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationStats {
    /// Tokens in the rendered prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV entries were reused from the cache.
    pub reused_tokens: usize,
    /// Tokens generated (reasoning and answer).
    pub generated_tokens: usize,
    /// Time to first generated token, in seconds.
    pub ttft_s: f64,
    /// Prefill speed in tokens per second (tokens actually computed).
    pub prefill_tps: f64,
    /// Decode speed in tokens per second.
    pub decode_tps: f64,
    /// Why generation ended.
    pub finish_reason: FinishReason,
}

impl GenerationStats {
    /// Prompt tokens per second: `computed` tokens in `seconds` (0 when no time passed).
    pub fn prefill_rate(computed: usize, seconds: f64) -> f64 {
        if seconds > 0.0 {
            computed as f64 / seconds
        } else {
            0.0
        }
    }

    /// Generated tokens per second after the first (whose time is the time to first token):
    /// `generated - 1` tokens in `seconds`; 0 with one token or no time.
    pub fn decode_rate(generated: usize, seconds: f64) -> f64 {
        if seconds > 0.0 && generated > 1 {
            (generated - 1) as f64 / seconds
        } else {
            0.0
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-turn token, or a stop string matched.
    #[default]
    Stop,
    /// `max_tokens` was reached.
    Length,
    /// The context window is full.
    ContextFull,
    /// The user stopped it.
    Cancelled,
}

/// One event of a job's stream, in order: `Started`, any number of deltas, then `Done` or `Error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EngineEvent {
    /// The job left the queue and the prompt is being processed.
    Started {
        /// Tokens in the rendered prompt.
        prompt_tokens: usize,
        /// Of those, tokens reused from the KV cache.
        reused_tokens: usize,
    },
    /// The job is waiting; `position` 1 means next.
    Queued {
        /// Place in the queue.
        position: usize,
    },
    /// Text inside `<think>…</think>`.
    Reasoning {
        /// The new text.
        text: String,
    },
    /// Answer text.
    Answer {
        /// The new text.
        text: String,
    },
    /// How likely the token just generated was, for a request that asked
    /// ([`super::GenerateRequest::logprobs`]); sent before the text the token adds.
    Logprob {
        /// The token's text (a piece of a character for some byte-level tokens).
        token: String,
        /// Its natural-log probability under the model (before sampling settings).
        logprob: f32,
        /// The likeliest tokens at that step, most likely first, as (text, logprob).
        top: Vec<(String, f32)>,
    },
    /// The job finished; `token_ids` are the generated ids (after the request's assistant
    /// prefix, if any), kept with the message.
    Done {
        /// Figures for the reply.
        stats: GenerationStats,
        /// The assistant prefix's ids, then the generated ids (excluding the end-of-turn token).
        token_ids: Vec<u32>,
    },
    /// The job failed; the message is meant for a person.
    Error {
        /// What went wrong.
        message: String,
    },
}

impl From<Delta> for EngineEvent {
    fn from(delta: Delta) -> Self {
        match delta {
            Delta::Reasoning(text) => EngineEvent::Reasoning { text },
            Delta::Answer(text) => EngineEvent::Answer { text },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_become_engine_events() {
        assert_eq!(
            EngineEvent::from(Delta::Reasoning("x".into())),
            EngineEvent::Reasoning { text: "x".into() }
        );
        assert_eq!(
            EngineEvent::from(Delta::Answer("y".into())),
            EngineEvent::Answer { text: "y".into() }
        );
    }
}
