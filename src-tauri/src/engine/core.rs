//! One generation job from messages to streamed deltas, with the KV prefix kept between turns.
//!
//! This is the synchronous heart of the engine; [`super::worker`] runs it on the thread that
//! owns the model.

use super::constraint::Constrainer;
use super::events::{EngineEvent, FinishReason, GenerationStats};
use super::generate::PREFILL_CHUNK;
use super::loader::LoadedModel;
use super::prompter::Prompter;
pub use super::request::{GenerateRequest, JobError};
use super::sampler::Sampler;
use super::snapshot::{Saved, SnapshotOptions, Snapshots};
use crate::model::{KvCache, Logits};
use crate::text::detok::Detokenizer;
use crate::text::think::{Delta, ThinkSplitter};
use crate::text::tokenizer;
use candle_core::DType;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

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
    /// Where conversations' caches are saved after each reply and read back after a restart
    /// (none: nothing is kept on disk).
    pub snapshots: Option<SnapshotOptions>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            context_size: 8192,
            kv_dtype: DType::F16,
            max_slots: 2,
            snapshots: None,
        }
    }
}

struct Slot {
    /// The conversation it belongs to; `None` for the slots of stand-alone requests.
    key: Option<String>,
    cache: KvCache,
    /// Whether the cache changed since it was last saved to (or read from) disk.
    unsaved: bool,
}

/// The model, its template and the per-conversation caches.
pub struct EngineCore {
    loaded: LoadedModel,
    prompter: Arc<Prompter>,
    /// Compiles requests' output constraints; shared with the engine's handle.
    constrainer: Arc<Constrainer>,
    opts: EngineOptions,
    /// Least recently used first.
    slots: Vec<Slot>,
    /// Conversations' caches on disk.
    snapshots: Option<Snapshots>,
}

impl EngineCore {
    /// Wraps a loaded model; the chat template comes from the GGUF, a `tokenizer_config.json`
    /// beside the model, or the bundled SmolLM3 one.
    pub fn new(loaded: LoadedModel, mut opts: EngineOptions) -> Result<Self, JobError> {
        let prompter = Arc::new(Prompter::for_model(&loaded)?);
        opts.context_size = opts
            .context_size
            .clamp(16, loaded.model.config().context_length);
        opts.max_slots = opts.max_slots.max(1);
        let constrainer = Arc::new(Constrainer::new(
            loaded.tokenizer.clone(),
            loaded.specials.clone(),
            loaded.model.config().vocab,
        ));
        let snapshots = opts
            .snapshots
            .clone()
            .map(|o| Snapshots::new(o, loaded.fingerprint));
        Ok(Self {
            loaded,
            prompter,
            constrainer,
            opts,
            slots: Vec::new(),
            snapshots,
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
            .find(|s| s.key.as_deref() == Some(conversation))
            .map_or(0, |s| s.cache.len())
    }

    /// Drops the caches of stand-alone requests (after a panic in one of them).
    pub fn forget_unnamed(&mut self) {
        self.slots.retain(|s| s.key.is_some());
    }

    /// Drops a conversation's cache, in memory and on disk (after `/clear` or deletion).
    pub fn forget(&mut self, conversation: &str) {
        self.slots
            .retain(|s| s.key.as_deref() != Some(conversation));
        if let Some(snapshots) = &self.snapshots {
            snapshots.remove(conversation);
        }
    }

    /// Whether some conversation's cache changed since it was saved to disk.
    pub fn has_unsaved(&self) -> bool {
        self.snapshots.is_some() && self.slots.iter().any(|s| s.unsaved && s.key.is_some())
    }

    /// Saves the conversations' caches that changed since they were saved, most recent first;
    /// stops (keeping the rest for later) once `keep_going` says no.
    pub fn save_snapshots(&mut self, keep_going: &dyn Fn() -> bool) {
        let Some(snapshots) = &self.snapshots else {
            return;
        };
        for slot in self.slots.iter_mut().rev() {
            let Some(key) = slot.key.as_deref().filter(|_| slot.unsaved) else {
                continue;
            };
            if !keep_going() {
                return;
            }
            let t0 = Instant::now();
            match snapshots.save(key, &slot.cache, keep_going) {
                Ok(Saved::Abandoned) => return,
                Ok(Saved::Written(bytes)) => tracing::info!(
                    conversation = key,
                    tokens = slot.cache.len(),
                    mb = bytes / 1_000_000,
                    s = t0.elapsed().as_secs_f64(),
                    "KV snapshot saved"
                ),
                Ok(Saved::TooLarge) => {
                    tracing::info!(
                        conversation = key,
                        "KV snapshot over the disk budget; not saved"
                    )
                }
                Ok(Saved::Empty) => {}
                Err(e) => tracing::warn!(conversation = key, error = %e, "KV snapshot not saved"),
            }
            slot.unsaved = false;
        }
    }

    /// Gives a conversation without a cache in memory the one saved on disk, if it is usable
    /// for `prompt`; an unusable one is logged and left for a prefill.
    fn restore_snapshot(&mut self, conversation: Option<&str>, prompt: &[u32]) {
        let (Some(key), Some(snapshots)) = (conversation, &self.snapshots) else {
            return;
        };
        if pick_slot(&self.slots, Some(key), prompt).is_some() {
            return;
        }
        let t0 = Instant::now();
        let slot = slot_for(
            &mut self.slots,
            &self.opts,
            &self.loaded.model,
            Some(key),
            prompt,
        );
        match snapshots.load(key, prompt, &mut slot.cache) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                conversation = key,
                tokens = n,
                s = t0.elapsed().as_secs_f64(),
                "KV snapshot read"
            ),
            Err(e) => {
                tracing::warn!(conversation = key, error = %e, "KV snapshot ignored; prefilling")
            }
        }
    }

    /// Turns requests into prompt ids; shared with the engine's handle.
    pub fn prompter(&self) -> &Arc<Prompter> {
        &self.prompter
    }

    /// Compiles output constraints; shared with the engine's handle.
    pub fn constrainer(&self) -> &Arc<Constrainer> {
        &self.constrainer
    }

    /// The prompt's token ids (see [`Prompter::prompt`]).
    pub fn build_prompt(&self, req: &GenerateRequest) -> Result<Vec<u32>, JobError> {
        self.prompter.prompt(req)
    }

    /// Brings the conversation's cache to `prompt`, computing only what differs from what it
    /// holds; returns the last position's logits and how many tokens were reused.
    pub fn prefill(
        &mut self,
        conversation: Option<&str>,
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
        self.restore_snapshot(conversation, prompt);
        let model = &self.loaded.model;
        let slot = slot_for(&mut self.slots, &self.opts, model, conversation, prompt);
        slot.unsaved = true;
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
        let prefix = self.prompter.prefix_ids(req)?;
        let mut prompt = self.prompter.conversation_ids(req)?;
        prompt.extend_from_slice(&prefix);
        let context = self.opts.context_size;
        if prompt.len() >= context {
            return Err(JobError::ContextFull {
                prompt: prompt.len(),
                context,
            });
        }
        let mut guide = req
            .constraint
            .as_ref()
            .map(|c| {
                self.constrainer
                    .guide(c, req.enable_thinking && req.raw_prompt.is_none())
            })
            .transpose()?;
        self.restore_snapshot(req.conversation.as_deref(), &prompt);
        let reused_guess =
            pick_slot(&self.slots, req.conversation.as_deref(), &prompt).map_or(0, |i| {
                self.slots[i]
                    .cache
                    .common_prefix(&prompt)
                    .min(prompt.len() - 1)
            });
        emit(EngineEvent::Started {
            prompt_tokens: prompt.len(),
            reused_tokens: reused_guess,
        });
        let (mut logits, reused) = self.prefill(req.conversation.as_deref(), &prompt, cancel)?;
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
            if let Some(g) = guide.as_mut() {
                if splitter.in_reasoning() {
                    g.begin_in_reasoning();
                } else {
                    // The prefix's answer is the reply's start: the constraint follows it,
                    // so a prefilled `<tool_call>` or `{` is continued as the grammar says.
                    let closed = text.contains("</think>");
                    let answer = text.rsplit_once("</think>").map_or(text, |(_, a)| a);
                    let ids = tokenizer::encode_plain(&self.loaded.tokenizer, answer)
                        .map_err(|e| JobError::Model(e.to_string()))?;
                    g.follow_prefix(&ids, closed).map_err(|e| {
                        JobError::Constraint(format!(
                            "the assistant message to continue does not fit the reply's \
                             format: {e}"
                        ))
                    })?;
                }
            }
        }
        let mut stop = StopMatcher::new(&req.stop);
        // A raw prompt's reply is plain text: no template asked for reasoning.
        let plain = req.raw_prompt.is_some();
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
            // The model's own distribution, before the sampling settings change the logits.
            let raw = req.logprobs.map(|_| logits.clone());
            if let Some(g) = guide.as_mut() {
                g.mask(&mut logits)?;
            }
            let next = sampler.sample(&mut logits, &history);
            ttft.get_or_insert_with(|| t0.elapsed().as_secs_f64());
            if specials.eos.contains(&next) {
                break FinishReason::Stop;
            }
            if let (Some(raw), Some(top)) = (raw, req.logprobs) {
                let (logprob, best) = crate::engine::sampler::log_probs(&raw, next, top);
                let piece = |id: u32| tokenizer::decode(tok, &[id]).unwrap_or_default();
                emit(EngineEvent::Logprob {
                    token: piece(next),
                    logprob,
                    top: best.into_iter().map(|(id, lp)| (piece(id), lp)).collect(),
                });
            }
            forward_pending.clear();
            forward_pending.push(next);
            if !plain && splitter.in_reasoning() {
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
                stopped |= if plain {
                    if !stop.done {
                        emit_delta(Delta::Answer(text), &mut stop, emit);
                    }
                    stop.done
                } else {
                    route(&mut splitter, &mut stop, &text, emit)
                };
            }
            generated.extend_from_slice(&forward_pending);
            history.extend_from_slice(&forward_pending);
            if let Some(g) = guide.as_mut() {
                g.advance(&forward_pending)?;
                // The constraint is complete and allows nothing more, not even text: the
                // reply is whole.
                stopped |= g.is_finished();
            }
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
        if !tail.is_empty() && plain && !stop.done {
            emit_delta(Delta::Answer(tail), &mut stop, emit);
        } else if !tail.is_empty() {
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

/// The slot a job runs in, if one exists: the conversation's own, or for a stand-alone
/// request the unnamed slot whose cache shares the longest start with `prompt`, provided that
/// start is at least half of what the slot holds (else the request gets a fresh slot, so one
/// request does not wipe out another's cache for the sake of a shared system prompt).
fn pick_slot(slots: &[Slot], key: Option<&str>, prompt: &[u32]) -> Option<usize> {
    if let Some(key) = key {
        return slots.iter().position(|s| s.key.as_deref() == Some(key));
    }
    let (i, common) = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.key.is_none())
        .map(|(i, s)| (i, s.cache.common_prefix(prompt)))
        .max_by_key(|&(i, common)| (common, i))?;
    (common > 0 && common * 2 >= slots[i].cache.len()).then_some(i)
}

/// The slot a job runs in, moved to the most-recent end; created (dropping the least
/// recently used one when all are taken) if [`pick_slot`] finds none.
fn slot_for<'a>(
    slots: &'a mut Vec<Slot>,
    opts: &EngineOptions,
    model: &crate::model::Model,
    key: Option<&str>,
    prompt: &[u32],
) -> &'a mut Slot {
    if let Some(i) = pick_slot(slots, key, prompt) {
        let s = slots.remove(i);
        slots.push(s);
    } else {
        if slots.len() >= opts.max_slots {
            slots.remove(0);
        }
        let cache = model.new_cache(opts.context_size, opts.kv_dtype);
        slots.push(Slot {
            key: key.map(str::to_string),
            cache,
            unsaved: false,
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
