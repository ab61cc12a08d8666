//! One generation job from messages to streamed deltas, with the KV prefix kept between turns.
//!
//! This is the synchronous heart of the engine; [`super::worker`] runs it on the thread that
//! owns the model.

use super::events::{ChatMessage, EngineEvent, FinishReason, GenerationStats};
use super::generate::PREFILL_CHUNK;
use super::loader::LoadedModel;
use super::sampler::{Sampler, SamplingParams};
use crate::model::{KvCache, Logits};
use crate::text::chat_template::{ChatTemplate, RenderOptions};
use crate::text::detok::Detokenizer;
use crate::text::think::{Delta, ThinkSplitter};
use crate::text::tokenizer;
use candle_core::DType;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What a caller asks the engine to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The conversation this continues: its KV cache slot is kept between turns.
    pub conversation: String,
    /// The conversation so far, ending with the message to answer.
    pub messages: Vec<ChatMessage>,
    /// Sampling settings (including `max_tokens`).
    pub params: SamplingParams,
    /// SmolLM3's reasoning mode (`/think` and `/no_think` in a system message override it).
    pub enable_thinking: bool,
    /// The conversation's fixed "Today Date".
    pub today: NaiveDate,
    /// After this many reasoning tokens, close the reasoning and go on with the answer.
    pub thinking_budget: Option<usize>,
    /// Strings that end the answer (not included in it).
    #[serde(default)]
    pub stop: Vec<String>,
    /// Text the assistant turn already starts with: the model continues it instead of
    /// beginning a reply. `"<think>\n"` starts inside the reasoning; a cut-short reply's text
    /// continues that reply. The prefix is not streamed back (the caller has it), but its
    /// token ids lead the reply's kept ids.
    #[serde(default)]
    pub assistant_prefix: Option<String>,
}

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Tokens of context per conversation (at most the model's own).
    pub context_size: usize,
    /// Element type of the KV cache: F16 by default, as llama.cpp, for half the memory and
    /// half the bytes attention reads per token; F32 for reference checks.
    pub kv_dtype: DType,
    /// Conversations whose caches are kept at once (least recently used is dropped).
    pub max_slots: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            context_size: 8192,
            kv_dtype: DType::F16,
            max_slots: 2,
        }
    }
}

/// A job's failure, worded for the person waiting on it.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The prompt does not fit the context.
    #[error("the conversation is too long: its prompt has {prompt} tokens and the context holds {context}. Start a new conversation, delete old messages, or raise the context size in the settings.")]
    ContextFull {
        /// Prompt tokens.
        prompt: usize,
        /// Context size.
        context: usize,
    },
    /// Bad sampling settings.
    #[error("invalid settings: {0}")]
    Settings(String),
    /// The chat template failed.
    #[error("the chat template failed: {0}")]
    Template(String),
    /// The model failed.
    #[error("the model failed: {0}")]
    Model(String),
}

struct Slot {
    key: String,
    cache: KvCache,
}

/// The model, its template and the per-conversation caches.
pub struct EngineCore {
    loaded: LoadedModel,
    template: ChatTemplate,
    opts: EngineOptions,
    /// Least recently used first.
    slots: Vec<Slot>,
}

/// Marks where an assistant message's content goes in the rendered prompt, so its stored
/// token ids can be spliced in. Private-use characters never appear in chat text in practice.
const MARK: char = '\u{F8FF}';

impl EngineCore {
    /// Wraps a loaded model; the chat template comes from the GGUF, a `tokenizer_config.json`
    /// beside the model, or the bundled SmolLM3 one.
    pub fn new(loaded: LoadedModel, mut opts: EngineOptions) -> Result<Self, JobError> {
        let cfg_json = loaded.gguf.path().with_file_name("tokenizer_config.json");
        let template = ChatTemplate::from_sources(
            loaded.gguf_chat_template(),
            cfg_json.exists().then_some(cfg_json.as_path()),
        )
        .map_err(|e| JobError::Template(e.to_string()))?;
        opts.context_size = opts
            .context_size
            .clamp(16, loaded.model.config().context_length);
        opts.max_slots = opts.max_slots.max(1);
        Ok(Self {
            loaded,
            template,
            opts,
            slots: Vec::new(),
        })
    }

    /// The loaded model.
    pub fn loaded(&self) -> &LoadedModel {
        &self.loaded
    }

    /// Effective settings.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Tokens cached for a conversation (its context in use).
    pub fn cached_tokens(&self, conversation: &str) -> usize {
        self.slots
            .iter()
            .find(|s| s.key == conversation)
            .map_or(0, |s| s.cache.len())
    }

    /// Drops a conversation's cache (after `/clear` or deletion).
    pub fn forget(&mut self, conversation: &str) {
        self.slots.retain(|s| s.key != conversation);
    }

    /// The prompt's token ids: the rendered conversation, then the assistant prefix if the
    /// request has one. Assistant messages that carry the ids the model generated are spliced
    /// in as those ids (when they still decode to the message text), so the prompt matches the
    /// cache token for token; everything else is tokenized from the rendered text.
    pub fn build_prompt(&self, req: &GenerateRequest) -> Result<Vec<u32>, JobError> {
        let mut ids = self.build_conversation(req)?;
        ids.extend(self.prefix_ids(req)?);
        Ok(ids)
    }

    /// The token ids of the request's assistant prefix (none without one).
    fn prefix_ids(&self, req: &GenerateRequest) -> Result<Vec<u32>, JobError> {
        match req.assistant_prefix.as_deref() {
            Some(p) if !p.is_empty() => tokenizer::encode(&self.loaded.tokenizer, p)
                .map_err(|e| JobError::Model(e.to_string())),
            _ => Ok(Vec::new()),
        }
    }

    /// The rendered conversation up to the start of the assistant turn, as token ids (see
    /// [`EngineCore::build_prompt`]).
    fn build_conversation(&self, req: &GenerateRequest) -> Result<Vec<u32>, JobError> {
        let tok = &self.loaded.tokenizer;
        let mut splices: Vec<Option<Vec<u32>>> = Vec::new();
        let mut messages = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            let mut m = m.clone();
            if m.role == "assistant" {
                if let Some(ids) = m
                    .token_ids
                    .take()
                    .and_then(|ids| self.content_ids(&ids, &m.content))
                {
                    m.content = format!("{MARK}{}{MARK}", splices.len());
                    splices.push(Some(ids));
                }
            }
            messages.push(m);
        }
        let opts = RenderOptions::for_date(req.today).with_thinking(req.enable_thinking);
        let text = self
            .template
            .render(&messages, &opts)
            .map_err(|e| JobError::Template(e.to_string()))?;
        let mut ids = Vec::new();
        let encode = |s: &str, ids: &mut Vec<u32>| -> Result<(), JobError> {
            if !s.is_empty() {
                ids.extend(tokenizer::encode(tok, s).map_err(|e| JobError::Model(e.to_string()))?);
            }
            Ok(())
        };
        let mut parts = text.split(MARK);
        encode(parts.next().unwrap_or(""), &mut ids)?;
        while let (Some(index), Some(after)) = (parts.next(), parts.next()) {
            match index
                .parse::<usize>()
                .ok()
                .and_then(|i| splices.get_mut(i))
                .and_then(Option::take)
            {
                Some(s) => ids.extend(s),
                None => {
                    return Err(JobError::Template(
                        "an assistant message was rendered twice".into(),
                    ))
                }
            }
            encode(after, &mut ids)?;
        }
        Ok(ids)
    }

    /// The part of a reply's generated ids that the template renders as the message content:
    /// after `</think>` (history drops the reasoning) and without the leading newlines the
    /// template strips. `None` when they do not decode to exactly `content`.
    fn content_ids(&self, generated: &[u32], content: &str) -> Option<Vec<u32>> {
        let tok = &self.loaded.tokenizer;
        let mut ids = generated;
        if let Some(end) = self.loaded.specials.end_think {
            if let Some(p) = ids.iter().position(|&t| t == end) {
                ids = &ids[p + 1..];
            }
        }
        while let Some((&first, rest)) = ids.split_first() {
            match tok.decode(&[first], false) {
                Ok(s) if !s.is_empty() && s.chars().all(|c| c == '\n') => ids = rest,
                _ => break,
            }
        }
        let text = tok.decode(ids, false).ok()?;
        (text == content.trim_start_matches('\n') && !ids.is_empty()).then(|| ids.to_vec())
    }

    /// Brings the conversation's cache to `prompt`, computing only what differs from what it
    /// holds; returns the last position's logits and how many tokens were reused.
    pub fn prefill(
        &mut self,
        conversation: &str,
        prompt: &[u32],
        cancel: &AtomicBool,
    ) -> Result<(Vec<f32>, usize), JobError> {
        let context = self.opts.context_size;
        if prompt.is_empty() {
            return Err(JobError::Model("the prompt is empty".into()));
        }
        if prompt.len() >= context {
            return Err(JobError::ContextFull {
                prompt: prompt.len(),
                context,
            });
        }
        let model = &self.loaded.model;
        let slot = slot_for(&mut self.slots, &self.opts, model, conversation);
        // At least one token must run to produce logits.
        let reused = slot.cache.common_prefix(prompt).min(prompt.len() - 1);
        slot.cache.truncate(reused);
        let mut last = None;
        for chunk in prompt[reused..].chunks(PREFILL_CHUNK) {
            if cancel.load(Ordering::Relaxed) && last.is_some() {
                break;
            }
            last = Some(
                model
                    .forward(chunk, &mut slot.cache, Logits::Last)
                    .map_err(|e| JobError::Model(e.to_string()))?,
            );
        }
        let logits = last
            .expect("one chunk at least")
            .to_vec1()
            .map_err(|e| JobError::Model(e.to_string()))?;
        Ok((logits, reused))
    }

    /// Runs one job to the end, reporting through `emit` (never `Started` twice; always ends
    /// with `Done` or `Error`).
    pub fn run(
        &mut self,
        req: &GenerateRequest,
        cancel: &AtomicBool,
        emit: &mut dyn FnMut(EngineEvent),
    ) {
        if let Err(e) = self.try_run(req, cancel, emit) {
            emit(EngineEvent::Error {
                message: e.to_string(),
            });
        }
    }

    fn try_run(
        &mut self,
        req: &GenerateRequest,
        cancel: &AtomicBool,
        emit: &mut dyn FnMut(EngineEvent),
    ) -> Result<(), JobError> {
        req.params.validate().map_err(JobError::Settings)?;
        let t0 = Instant::now();
        let prefix = self.prefix_ids(req)?;
        let mut prompt = self.build_conversation(req)?;
        prompt.extend_from_slice(&prefix);
        let context = self.opts.context_size;
        if prompt.len() >= context {
            return Err(JobError::ContextFull {
                prompt: prompt.len(),
                context,
            });
        }
        let reused_guess = self
            .slots
            .iter()
            .find(|s| s.key == req.conversation)
            .map_or(0, |s| s.cache.common_prefix(&prompt).min(prompt.len() - 1));
        emit(EngineEvent::Started {
            prompt_tokens: prompt.len(),
            reused_tokens: reused_guess,
        });
        let (mut logits, reused) = self.prefill(&req.conversation, &prompt, cancel)?;
        let prefill_s = t0.elapsed().as_secs_f64();
        let specials = self.loaded.specials.clone();
        let tok = &self.loaded.tokenizer;
        let model = &self.loaded.model;
        let slot = self.slots.last_mut().expect("prefill made the slot");
        let mut sampler = Sampler::new(&req.params);
        let mut detok = Detokenizer::new(tok);
        let mut splitter = ThinkSplitter::new();
        if let Some(text) = req.assistant_prefix.as_deref() {
            // The splitter must know where the prefix leaves the reply (e.g. inside the
            // reasoning); its text is the caller's, so nothing of it is streamed.
            let _ = splitter.push(text);
        }
        let mut stop = StopMatcher::new(&req.stop);
        let mut history: Vec<u32> = prompt.clone();
        let mut generated: Vec<u32> = Vec::new();
        let mut reasoning_tokens = 0usize;
        let mut ttft = None;
        let t_decode = Instant::now();
        let mut forward_pending: Vec<u32> = Vec::new();
        let finish = loop {
            if cancel.load(Ordering::Relaxed) {
                break FinishReason::Cancelled;
            }
            let next = sampler.sample(&mut logits, &history);
            ttft.get_or_insert_with(|| t0.elapsed().as_secs_f64());
            if specials.eos.contains(&next) {
                break FinishReason::Stop;
            }
            forward_pending.clear();
            forward_pending.push(next);
            if splitter.in_reasoning() {
                reasoning_tokens += 1;
                if req.thinking_budget.is_some_and(|b| reasoning_tokens >= b)
                    && Some(next) != specials.end_think
                {
                    // Over budget: close the reasoning ourselves and let the model answer.
                    if let Ok(close) = tokenizer::encode(tok, "\n</think>\n") {
                        forward_pending.extend(close);
                    }
                }
            }
            let mut stopped = false;
            for &id in &forward_pending {
                let text = detok.push(id).map_err(|e| JobError::Model(e.to_string()))?;
                stopped |= route(&mut splitter, &mut stop, &text, emit);
            }
            generated.extend_from_slice(&forward_pending);
            history.extend_from_slice(&forward_pending);
            if stopped {
                break FinishReason::Stop;
            }
            if slot.cache.len() + forward_pending.len() >= slot.cache.max_len() {
                break FinishReason::ContextFull;
            }
            // Even the last token goes through the model, so the cache covers the whole reply
            // and the next turn can reuse all of it.
            logits = model
                .forward(&forward_pending, &mut slot.cache, Logits::Last)
                .and_then(|t| t.to_vec1())
                .map_err(|e| JobError::Model(e.to_string()))?;
            if generated.len() >= req.params.max_tokens {
                break FinishReason::Length;
            }
        };
        let tail = detok.finish();
        if !tail.is_empty() {
            route(&mut splitter, &mut stop, &tail, emit);
        }
        for d in splitter.finish() {
            emit_delta(d, &mut stop, emit);
        }
        if let Some(rest) = stop.flush() {
            emit(EngineEvent::Answer { text: rest });
        }
        let decode_s = t_decode.elapsed().as_secs_f64();
        let computed = prompt.len() - reused;
        let stats = GenerationStats {
            prompt_tokens: prompt.len(),
            reused_tokens: reused,
            generated_tokens: generated.len(),
            ttft_s: ttft.unwrap_or(prefill_s),
            prefill_tps: if prefill_s > 0.0 {
                computed as f64 / prefill_s
            } else {
                0.0
            },
            decode_tps: if decode_s > 0.0 && generated.len() > 1 {
                (generated.len() - 1) as f64 / decode_s
            } else {
                0.0
            },
            finish_reason: finish,
        };
        // The kept ids are the whole assistant turn, so a later prompt can splice them in.
        let mut token_ids = prefix;
        token_ids.extend(generated);
        emit(EngineEvent::Done { stats, token_ids });
        Ok(())
    }
}

/// The conversation's slot, moved to the most-recent end; created (dropping the least
/// recently used one when all are taken) if it does not exist.
fn slot_for<'a>(
    slots: &'a mut Vec<Slot>,
    opts: &EngineOptions,
    model: &crate::model::Model,
    key: &str,
) -> &'a mut Slot {
    if let Some(i) = slots.iter().position(|s| s.key == key) {
        let s = slots.remove(i);
        slots.push(s);
    } else {
        if slots.len() >= opts.max_slots {
            slots.remove(0);
        }
        let cache = model.new_cache(opts.context_size, opts.kv_dtype);
        slots.push(Slot {
            key: key.to_string(),
            cache,
        });
    }
    slots.last_mut().expect("just pushed")
}

/// Sends text through the think splitter and the stop matcher; true once a stop string matched.
fn route(
    splitter: &mut ThinkSplitter,
    stop: &mut StopMatcher,
    text: &str,
    emit: &mut dyn FnMut(EngineEvent),
) -> bool {
    if stop.done {
        return true;
    }
    for d in splitter.push(text) {
        emit_delta(d, stop, emit);
    }
    stop.done
}

fn emit_delta(d: Delta, stop: &mut StopMatcher, emit: &mut dyn FnMut(EngineEvent)) {
    match d {
        Delta::Reasoning(text) if !text.is_empty() => emit(EngineEvent::Reasoning { text }),
        Delta::Answer(text) => {
            if let Some(text) = stop.push(&text) {
                emit(EngineEvent::Answer { text });
            }
        }
        _ => {}
    }
}

/// Holds back answer text that could be the start of a stop string.
struct StopMatcher {
    stops: Vec<String>,
    held: String,
    done: bool,
}

impl StopMatcher {
    fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            done: false,
        }
    }

    /// Text safe to show now, if any.
    fn push(&mut self, text: &str) -> Option<String> {
        if self.done {
            return None;
        }
        if self.stops.is_empty() {
            return (!text.is_empty()).then(|| text.to_string());
        }
        self.held.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.done = true;
            let out: String = self.held[..at].to_string();
            self.held.clear();
            return (!out.is_empty()).then_some(out);
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&n| s.is_char_boundary(n))
                    .map(move |n| &s[..n])
            })
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out: String = self.held.drain(..cut).collect();
        (!out.is_empty()).then_some(out)
    }

    fn flush(&mut self) -> Option<String> {
        let out = std::mem::take(&mut self.held);
        (!self.done && !out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    #[test]
    fn stop_strings_hold_back_partial_matches() {
        let mut m = StopMatcher::new(&["STOP".to_string()]);
        assert_eq!(m.push("hello S").as_deref(), Some("hello "));
        assert_eq!(m.push("T").as_deref(), None);
        assert_eq!(m.push("x").as_deref(), Some("STx"));
        assert_eq!(m.push(" then STO").as_deref(), Some(" then "));
        assert_eq!(m.push("P and more").as_deref(), None);
        assert!(m.done);
        assert_eq!(m.flush(), None);
    }

    #[test]
    fn no_stop_strings_pass_text_through() {
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.push("abc").as_deref(), Some("abc"));
        assert_eq!(m.flush(), None);
    }
}
