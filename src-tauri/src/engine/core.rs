//! One generation job from messages to streamed deltas, with the KV prefix kept between turns.
//!
//! This is the synchronous heart of the engine; [`super::worker`] runs it on the thread that
//! owns the model.

use super::constraint::Constrainer;
use super::events::EngineEvent;
use super::generate::PREFILL_CHUNK;
use super::loader::LoadedModel;
use super::prompter::Prompter;
pub use super::request::{GenerateRequest, JobError};
use super::sequence::{Progress, Sequence, Slot};
use super::snapshot::{Saved, SnapshotOptions, Snapshots};
use crate::model::Logits;
use candle_core::DType;
use std::collections::{HashMap, HashSet};
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
    /// Replies computed together, one forward pass per step for all of them (continuous
    /// batching); more wait in the queue.
    pub max_batch: usize,
    /// Memory the caches of the replies computed together may take, in bytes, counted as
    /// each reply's prompt plus its `max_tokens` (at most the context); a reply that would
    /// not fit waits in the queue unless nothing runs. 0: no bound.
    pub kv_budget_bytes: u64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            context_size: 8192,
            kv_dtype: DType::F16,
            max_slots: 2,
            snapshots: None,
            max_batch: 4,
            kv_budget_bytes: 0,
        }
    }
}

/// The model, its template and the per-conversation caches.
pub struct EngineCore {
    /// Shared with the sequences that run (they borrow its tokenizer while the core changes).
    loaded: Arc<LoadedModel>,
    prompter: Arc<Prompter>,
    /// Compiles requests' output constraints; shared with the engine's handle.
    constrainer: Arc<Constrainer>,
    opts: EngineOptions,
    /// Least recently used first.
    slots: Vec<Slot>,
    /// Conversations' caches on disk.
    snapshots: Option<Snapshots>,
    /// Replies running per conversation (their caches are out of `slots` meanwhile).
    running: HashMap<String, usize>,
    /// Conversations forgotten while a reply of theirs ran: its cache is dropped at its end.
    forgotten: HashSet<String>,
    /// Conversations whose reply ended since [`EngineCore::take_ended`] was last asked.
    ended: Vec<String>,
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
        opts.max_batch = opts.max_batch.clamp(1, 64);
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
            loaded: Arc::new(loaded),
            prompter,
            constrainer,
            opts,
            slots: Vec::new(),
            snapshots,
            running: HashMap::new(),
            forgotten: HashSet::new(),
            ended: Vec::new(),
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
        if self.running.contains_key(conversation) {
            self.forgotten.insert(conversation.to_string());
        }
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
    /// with `Done` or `Error`). The worker runs several at once through [`EngineCore::begin`],
    /// [`Model::forward_batch`](crate::model::Model::forward_batch) and [`EngineCore::end`].
    pub fn run(
        &mut self,
        req: &GenerateRequest,
        cancel: &AtomicBool,
        emit: &mut dyn FnMut(EngineEvent),
    ) {
        let loaded = self.shared_model();
        let mut seq = match self.begin(&loaded, req.clone(), emit) {
            Ok(seq) => seq,
            Err(e) => {
                emit(EngineEvent::Error {
                    message: e.to_string(),
                });
                return;
            }
        };
        let result = loop {
            let input = seq.next_input(PREFILL_CHUNK);
            let logits = loaded
                .model
                .forward(&input, seq.cache_mut(), Logits::Last)
                .and_then(|t| t.to_vec1())
                .map_err(|e| JobError::Model(e.to_string()));
            match logits
                .and_then(|l| seq.absorb(l, input.len(), cancel.load(Ordering::Relaxed), emit))
            {
                Ok(Progress::Running) => {}
                Ok(Progress::Finished(_)) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.end(seq);
        if let Err(e) = result {
            emit(EngineEvent::Error {
                message: e.to_string(),
            });
        }
    }

    /// The conversations whose reply ended since the last call (their cached token counts
    /// changed).
    pub fn take_ended(&mut self) -> Vec<String> {
        std::mem::take(&mut self.ended)
    }

    /// The loaded model, to borrow for sequences while the core's caches change.
    pub fn shared_model(&self) -> Arc<LoadedModel> {
        self.loaded.clone()
    }

    /// Starts a job: checks it, builds its prompt, gives it its conversation's cache (read from
    /// its snapshot when none is in memory) and sends `Started`. Its cache is the sequence's
    /// until [`EngineCore::end`] gives it back.
    pub fn begin<'m>(
        &mut self,
        loaded: &'m LoadedModel,
        req: GenerateRequest,
        emit: &mut dyn FnMut(EngineEvent),
    ) -> Result<Sequence<'m>, JobError> {
        req.params.validate().map_err(JobError::Settings)?;
        let t0 = Instant::now();
        let prefix = self.prompter.prefix_ids(&req)?;
        let mut prompt = self.prompter.conversation_ids(&req)?;
        prompt.extend_from_slice(&prefix);
        let context = self.opts.context_size;
        if prompt.len() >= context {
            return Err(JobError::ContextFull {
                prompt: prompt.len(),
                context,
            });
        }
        let guide = req
            .constraint
            .as_ref()
            .map(|c| {
                self.constrainer
                    .guide(c, req.enable_thinking && req.raw_prompt.is_none())
            })
            .transpose()?;
        let key = req.conversation.clone();
        self.restore_snapshot(key.as_deref(), &prompt);
        slot_for(
            &mut self.slots,
            &self.opts,
            &loaded.model,
            key.as_deref(),
            &prompt,
        );
        let mut slot = self.slots.pop().expect("slot_for leaves the slot last");
        slot.unsaved = true;
        // At least one token must run to produce logits.
        let mut reused = slot.cache.common_prefix(&prompt).min(prompt.len() - 1);
        slot.cache.truncate(reused);
        // Another conversation's cache may hold more of the prompt's start (the same system
        // prompt and date): those rows are copied, not computed again.
        let shareable = &prompt[..prompt.len() - 1];
        if let Some(other) = self
            .slots
            .iter()
            .max_by_key(|s| s.cache.common_prefix(shareable))
            .filter(|s| s.cache.common_prefix(shareable) > reused)
        {
            match slot.cache.share_prefix(&other.cache, shareable) {
                Ok(held) => reused = held,
                Err(e) => {
                    tracing::warn!("could not share a prompt's start: {e}");
                    slot.cache.truncate(reused);
                }
            }
        }
        if let Some(k) = &key {
            *self.running.entry(k.clone()).or_default() += 1;
        }
        emit(EngineEvent::Started {
            prompt_tokens: prompt.len(),
            reused_tokens: reused,
        });
        let seq = Sequence::new(loaded, req, slot, prompt, prefix, reused, guide, t0);
        if seq.is_err() {
            self.release(key.as_deref());
        }
        seq
    }

    /// Takes back a finished sequence's cache as its conversation's (the most recently used);
    /// a conversation forgotten meanwhile keeps nothing.
    pub fn end(&mut self, seq: Sequence<'_>) {
        let slot = seq.slot;
        let key = slot.key.clone();
        if self.release(key.as_deref()) {
            return;
        }
        if key.is_some() {
            // A second reply of the same conversation that ran beside this one had its own.
            self.slots.retain(|s| s.key != key);
        }
        if self.slots.len() >= self.opts.max_slots {
            self.slots.remove(0);
        }
        self.slots.push(slot);
    }

    /// Drops a sequence whose cache cannot be trusted (a panic while it ran), forgetting its
    /// conversation's cache.
    pub fn abandon(&mut self, seq: Sequence<'_>) {
        let key = seq.slot.key.clone();
        self.release(key.as_deref());
        match key {
            Some(k) => self.forget(&k),
            None => self.forget_unnamed(),
        }
    }

    /// Counts a sequence of `key` as ended; true when the conversation was forgotten while it
    /// ran (its cache must not come back).
    fn release(&mut self, key: Option<&str>) -> bool {
        let Some(key) = key else { return false };
        self.ended.push(key.to_string());
        let others = match self.running.get_mut(key) {
            Some(n) => {
                *n -= 1;
                *n > 0
            }
            None => false,
        };
        if others {
            self.forgotten.contains(key)
        } else {
            self.running.remove(key);
            self.forgotten.remove(key)
        }
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
