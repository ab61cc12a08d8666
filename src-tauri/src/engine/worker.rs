//! The engine worker: one thread owns the model; jobs wait in a fair FIFO queue; each job
//! streams its events to an async receiver, so callers never block on the model. Callers that
//! queue jobs for other people pass the engine's [`Admission`] first, which bounds the queue.

use super::admission::{Admission, QueueLimits, Refusal, Ticket};
use super::constraint::Constrainer;
use super::core::{EngineCore, EngineOptions, GenerateRequest, JobError};
use super::events::{EngineEvent, FinishReason, GenerationStats};
use super::generate::PREFILL_CHUNK;
use super::generator::{CancelToken, Generator, JobHandle};
use super::loader::LoadedModel;
use super::prompter::Prompter;
use super::request::Constraint;
use super::sequence::{Progress, Sequence};
use crate::model::BatchItem;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

struct Job {
    id: u64,
    /// The queue position last reported to the caller.
    position: usize,
    req: GenerateRequest,
    tx: UnboundedSender<EngineEvent>,
    cancel: CancelToken,
    /// Cache rows the reply may fill: its prompt plus its `max_tokens`, at most the context.
    kv_tokens: usize,
}

enum Work {
    // Boxed: a job carries its whole request, a forget only a key.
    Generate(Box<Job>),
    Forget(String),
}

#[derive(Default)]
struct Shared {
    queue: VecDeque<Work>,
    /// Replies being computed (at most the batch size).
    active: usize,
    /// The batch size: replies computed together.
    max_batch: usize,
    /// The stop switches of the jobs the worker is running.
    running: Vec<CancelToken>,
    shutdown: bool,
    /// Tokens cached per named conversation after its last job.
    cached: HashMap<String, usize>,
}

/// What the status bar shows about the engine.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineStatus {
    /// Model file name.
    pub model: String,
    /// Context size in tokens.
    pub context_size: usize,
    /// Whether a job is running.
    pub busy: bool,
    /// Jobs waiting.
    pub queued: usize,
    /// Seconds the model took to load.
    pub load_s: f64,
}

/// Handle to the engine thread. Cloning shares the same engine.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<(Mutex<Shared>, std::sync::Condvar)>,
    next_id: Arc<AtomicU64>,
    model_name: Arc<String>,
    context_size: usize,
    load_s: f64,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// The bound every caller that queues replies for others (the chat service, the API) goes
    /// through before [`Engine::submit`].
    admission: Admission,
    prompter: Arc<Prompter>,
    /// Compiles output constraints (shared with the worker's core).
    constrainer: Arc<Constrainer>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model_name)
            .finish()
    }
}

impl Engine {
    /// Whether `other` is this same engine (a clone of it), not another one.
    pub fn same(&self, other: &Engine) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Starts the worker thread on a loaded model.
    pub fn start(loaded: LoadedModel, opts: EngineOptions) -> Result<Self, JobError> {
        let model_name = loaded
            .gguf
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let load_s = loaded.load_s;
        let core = EngineCore::new(loaded, opts)?;
        let context_size = core.options().context_size;
        let max_batch = core.options().max_batch;
        let prompter = core.prompter().clone();
        let constrainer = core.constrainer().clone();
        let shared = Arc::new((
            Mutex::new(Shared {
                max_batch: core.options().max_batch,
                ..Shared::default()
            }),
            std::sync::Condvar::new(),
        ));
        let worker_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("smollm3-engine".into())
            .spawn(move || worker(core, worker_shared))
            .map_err(|e| JobError::Model(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            shared,
            next_id: Arc::new(AtomicU64::new(1)),
            model_name: Arc::new(model_name),
            context_size,
            load_s,
            thread: Arc::new(Mutex::new(Some(thread))),
            // As many run at once as the batch holds; the rest wait within the bound.
            admission: Admission::new(QueueLimits {
                running: max_batch,
                ..QueueLimits::default()
            }),
            prompter,
            constrainer,
        })
    }

    /// Opens a model file and starts the engine on it, reporting progress from 0.0 to 1.0.
    pub fn load(
        model: &Path,
        tokenizer: Option<&Path>,
        opts: EngineOptions,
        progress: &dyn Fn(f32),
    ) -> anyhow::Result<Self> {
        progress(0.05);
        let loaded = LoadedModel::open(model, tokenizer)?;
        progress(0.8);
        let engine = Self::start(loaded, opts)?;
        progress(1.0);
        Ok(engine)
    }

    /// The prompt a request will run with, as token ids; callable from any thread (the API
    /// checks a prompt's length before it waits in the queue).
    pub fn prompt(&self, req: &GenerateRequest) -> Result<Vec<u32>, JobError> {
        self.prompter.prompt(req)
    }

    /// Checks that a request's output constraint compiles (a schema feature the grammar
    /// engine lacks is the request's fault); callable from any thread. The first call for a
    /// model builds the vocabulary tables (about a second).
    pub fn check_constraint(&self, constraint: &Constraint) -> Result<(), JobError> {
        self.constrainer.check(constraint)
    }

    /// The model's tokenizer and template (tokenizing and detokenizing for callers).
    pub fn prompter(&self) -> &Prompter {
        &self.prompter
    }

    /// The queue's bound, shared by every source of replies (see [`Admission`]).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Queues a job; events start with `Queued` when others are ahead of it.
    pub fn submit(&self, req: GenerateRequest) -> JobHandle {
        // A prompt that cannot be built fails when the job starts; until then it counts as
        // the whole context.
        let kv_tokens = self.prompt(&req).map_or(self.context_size, |p| {
            p.len()
                .saturating_add(req.params.max_tokens)
                .min(self.context_size)
        });
        let (tx, rx) = unbounded_channel();
        let cancel = CancelToken::new();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (lock, cv) = &*self.shared;
        let mut s = lock.lock().expect("engine state");
        if s.shutdown {
            // No worker will take it; the stream ends at once instead of never.
            let _ = tx.send(EngineEvent::Error {
                message: "the model was unloaded; send the message again".into(),
            });
            return JobHandle {
                id,
                events: rx,
                cancel,
            };
        }
        // It waits when it will not fit in the batch with those already waiting; else it
        // joins at the next step.
        let waiting = s
            .queue
            .iter()
            .filter(|w| matches!(w, Work::Generate(_)))
            .count();
        let free = s.max_batch.saturating_sub(s.active);
        let ahead = (waiting + 1).saturating_sub(free);
        if ahead > 0 {
            let _ = tx.send(EngineEvent::Queued { position: ahead });
        }
        s.queue.push_back(Work::Generate(Box::new(Job {
            id,
            position: ahead,
            req,
            tx,
            cancel: cancel.clone(),
            kv_tokens,
        })));
        cv.notify_one();
        JobHandle {
            id,
            events: rx,
            cancel,
        }
    }

    /// Drops a conversation's KV cache (it is rebuilt on the next turn).
    pub fn forget(&self, conversation: &str) {
        let (lock, cv) = &*self.shared;
        let mut s = lock.lock().expect("engine state");
        s.queue.push_back(Work::Forget(conversation.to_string()));
        cv.notify_one();
    }

    /// Tokens of a conversation held in the KV cache after its last job.
    pub fn cached_tokens(&self, conversation: &str) -> usize {
        self.shared
            .0
            .lock()
            .expect("engine state")
            .cached
            .get(conversation)
            .copied()
            .unwrap_or(0)
    }

    /// A snapshot for the status bar.
    pub fn status(&self) -> EngineStatus {
        let s = self.shared.0.lock().expect("engine state");
        EngineStatus {
            model: self.model_name.to_string(),
            context_size: self.context_size,
            busy: s.active > 0,
            queued: s
                .queue
                .iter()
                .filter(|w| matches!(w, Work::Generate(_)))
                .count(),
            load_s: self.load_s,
        }
    }

    /// Context size in tokens.
    pub fn context_size(&self) -> usize {
        self.context_size
    }

    /// Stops the worker and waits for it: the running job and every queued one are cancelled
    /// (each still ends with `Done`, finish reason `cancelled`, so callers can keep what was
    /// streamed), then the thread ends and the model is freed once the last handle is dropped.
    pub fn shutdown(&self) {
        {
            let (lock, cv) = &*self.shared;
            let mut s = lock.lock().expect("engine state");
            s.shutdown = true;
            for running in &s.running {
                running.cancel();
            }
            for w in &s.queue {
                if let Work::Generate(job) = w {
                    job.cancel.cancel();
                }
            }
            cv.notify_all();
        }
        if let Some(t) = self.thread.lock().expect("engine thread").take() {
            let _ = t.join();
        }
    }
}

/// Prompt tokens a newcomer runs per step while other replies decode: few enough that those
/// keep streaming while a long prompt goes in (a step then costs about this many tokens of
/// prefill, ≈ 2 s on two cores with SmolLM3-3B), enough that a short message gets its first
/// token within about its own prefill time plus one step (figures in doc/benchmarks.md).
const CHUNK_BESIDE_DECODING: usize = 64;

/// A job whose reply is being computed.
struct Active<'m> {
    seq: Sequence<'m>,
    /// Its job's [`Job::kv_tokens`], counted against the memory budget while it runs.
    kv_tokens: usize,
    tx: UnboundedSender<EngineEvent>,
    cancel: CancelToken,
    span: tracing::Span,
}

/// The sink of a job's events: a receiver gone stops the job (nobody reads the reply any
/// more, so the engine is freed for others).
fn sink<'a>(
    tx: &'a UnboundedSender<EngineEvent>,
    cancel: &'a CancelToken,
) -> impl FnMut(EngineEvent) + 'a {
    move |e| {
        if tx.send(e).is_err() {
            cancel.cancel();
        }
    }
}

/// The worker loop: takes jobs while there is room in the batch, then advances every running
/// reply by one forward pass together (continuous batching: the weights are read once per
/// step for all of them), and ends those that finished. Idle, it saves caches to disk.
fn worker(mut core: EngineCore, shared: Arc<(Mutex<Shared>, std::sync::Condvar)>) {
    let (lock, cv) = &*shared;
    let loaded = core.shared_model();
    let max_batch = core.options().max_batch;
    let budget = KvBudget::new(&core);
    let mut active: Vec<Active<'_>> = Vec::new();
    loop {
        let mut starting: Vec<Box<Job>> = Vec::new();
        {
            let mut s = lock.lock().expect("engine state");
            loop {
                while active.len() + starting.len() < max_batch {
                    if let Some(Work::Generate(job)) = s.queue.front() {
                        let running = active.iter().map(|a| a.kv_tokens);
                        let held: usize = running.chain(starting.iter().map(|j| j.kv_tokens)).sum();
                        let alone = active.is_empty() && starting.is_empty();
                        if !alone && !budget.fits(held + job.kv_tokens) {
                            // It waits (its place shown) until running replies end.
                            break;
                        }
                    }
                    match s.queue.pop_front() {
                        Some(Work::Forget(key)) => {
                            core.forget(&key);
                            s.cached.remove(&key);
                        }
                        Some(Work::Generate(job)) => starting.push(job),
                        None => break,
                    }
                }
                if !active.is_empty() || !starting.is_empty() {
                    break;
                }
                if s.shutdown {
                    drop(s);
                    // On close: what the last replies left unsaved goes to disk now.
                    core.save_snapshots(&|| true);
                    return;
                }
                if core.has_unsaved() {
                    // Idle: save caches to disk now, after the reply was shown as finished,
                    // and give way at once to the next job that arrives.
                    drop(s);
                    core.save_snapshots(&|| lock.lock().expect("engine state").queue.is_empty());
                    s = lock.lock().expect("engine state");
                    continue;
                }
                s = cv.wait(s).expect("engine state");
            }
            // Tell the jobs still waiting where they stand now.
            let mut pos = 1;
            for w in s.queue.iter_mut() {
                if let Work::Generate(j) = w {
                    if j.position != pos {
                        j.position = pos;
                        let _ = j.tx.send(EngineEvent::Queued { position: pos });
                    }
                    pos += 1;
                }
            }
            s.active = active.len() + starting.len();
            s.running = active
                .iter()
                .map(|a| a.cancel.clone())
                .chain(starting.iter().map(|j| j.cancel.clone()))
                .collect();
        }
        for job in starting {
            let job = *job;
            if job.cancel.is_cancelled() {
                let stats = GenerationStats {
                    finish_reason: FinishReason::Cancelled,
                    ..Default::default()
                };
                let _ = job.tx.send(EngineEvent::Done {
                    stats,
                    token_ids: Vec::new(),
                });
                continue;
            }
            let key = job.req.conversation.as_deref().unwrap_or("-");
            let span = tracing::info_span!("job", id = job.id, conversation = %key);
            let begun = {
                let _g = span.enter();
                let mut emit = sink(&job.tx, &job.cancel);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    core.begin(&loaded, job.req, &mut emit)
                }))
            };
            match begun {
                Ok(Ok(seq)) => active.push(Active {
                    seq,
                    kv_tokens: job.kv_tokens,
                    tx: job.tx,
                    cancel: job.cancel,
                    span,
                }),
                Ok(Err(e)) => {
                    let _ = job.tx.send(EngineEvent::Error {
                        message: e.to_string(),
                    });
                }
                Err(_) => {
                    tracing::error!("starting a reply panicked");
                    let _ = job.tx.send(EngineEvent::Error {
                        message: "the engine hit an internal error".into(),
                    });
                }
            }
        }
        let closing = if active.is_empty() {
            Vec::new()
        } else {
            step(&mut core, &loaded.model, &mut active)
        };
        let mut s = lock.lock().expect("engine state");
        s.active = active.len();
        s.running = active.iter().map(|a| a.cancel.clone()).collect();
        for key in core.take_ended() {
            let tokens = core.cached_tokens(&key);
            s.cached.insert(key, tokens);
        }
        // Only now do the ended replies' streams close: whoever waited for the end sees the
        // engine's state after it.
        drop(s);
        drop(closing);
    }
}

/// The memory bound on the caches of the replies computed together
/// ([`EngineOptions::kv_budget_bytes`]), in cache rows.
struct KvBudget {
    /// Bytes of one token's keys and values over every layer.
    bytes_per_token: u64,
    limit_bytes: u64,
}

impl KvBudget {
    fn new(core: &EngineCore) -> Self {
        let opts = core.options();
        let probe = core.loaded().model.new_cache(1, opts.kv_dtype);
        Self {
            bytes_per_token: (probe.bytes_per_layer(1) * probe.n_layers()) as u64,
            limit_bytes: opts.kv_budget_bytes,
        }
    }

    fn fits(&self, tokens: usize) -> bool {
        self.limit_bytes == 0
            || (tokens as u64).saturating_mul(self.bytes_per_token) <= self.limit_bytes
    }
}

/// Prompts that start alike are computed once: a reply still reading its prompt copies the
/// rows another running reply's cache already holds of it (the same system prompt, say), and
/// sits out this step (true in the result) while an earlier reply is still computing more of
/// the start they share. Only earlier replies are waited for, so the first one reading its
/// prompt always runs.
fn share_prompts(active: &mut [Active<'_>], ended: &[bool]) -> Vec<bool> {
    let mut waiting = vec![false; active.len()];
    for i in 0..active.len() {
        if ended[i] || active[i].seq.decoding() {
            continue;
        }
        let (before, rest) = active.split_at_mut(i);
        let (me, after) = rest.split_first_mut().expect("index in range");
        let donor = before
            .iter()
            .chain(after.iter())
            .map(|a| a.seq.cache())
            .max_by_key(|c| me.seq.ahead_in(c))
            .filter(|c| me.seq.ahead_in(c) > 0);
        if let Some(cache) = donor {
            if let Err(e) = me.seq.take_rows_from(cache) {
                // The rows are computed as usual instead.
                tracing::warn!("could not share a prompt's start: {e}");
            }
        }
        waiting[i] = before
            .iter()
            .zip(ended)
            .any(|(a, &end)| !end && !a.seq.decoding() && me.seq.ahead_in_prompt_of(&a.seq) > 0);
    }
    waiting
}

/// One forward pass for every running reply, then each takes its logits; finished replies
/// give their caches back. A panic abandons every reply of the step (their caches are reset).
/// Returns the ended replies' event senders, to drop once the engine's state is updated.
fn step(
    core: &mut EngineCore,
    model: &crate::model::Model,
    active: &mut Vec<Active<'_>>,
) -> Vec<UnboundedSender<EngineEvent>> {
    let mut closing = Vec::new();
    let decoding = active.iter().any(|a| a.seq.decoding());
    let chunk = if decoding {
        CHUNK_BESIDE_DECODING
    } else {
        PREFILL_CHUNK
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut ended = vec![false; active.len()];
        // A stop asked since the last step ends the reply before it runs again.
        for (a, end) in active.iter_mut().zip(ended.iter_mut()) {
            if a.cancel.is_cancelled() {
                let _g = a.span.enter();
                a.seq.cancel(&mut sink(&a.tx, &a.cancel));
                *end = true;
            }
        }
        let waiting = share_prompts(active, &ended);
        let inputs: Vec<Vec<u32>> = active
            .iter()
            .zip(&ended)
            .zip(&waiting)
            .map(|((a, &end), &wait)| {
                if end || wait {
                    Vec::new()
                } else {
                    a.seq.next_input(chunk)
                }
            })
            .collect();
        let logits = {
            let mut batch: Vec<BatchItem<'_>> = active
                .iter_mut()
                .zip(&inputs)
                .filter(|(_, t)| !t.is_empty())
                .map(|(a, t)| BatchItem {
                    tokens: t,
                    cache: a.seq.cache_mut(),
                })
                .collect();
            if batch.is_empty() {
                Ok(Vec::new())
            } else {
                model.forward_batch(&mut batch).and_then(|ls| {
                    ls.into_iter()
                        .map(|l| l.to_vec1::<f32>())
                        .collect::<candle_core::Result<Vec<_>>>()
                })
            }
        };
        let mut logits = match logits {
            Ok(l) => l.into_iter(),
            Err(e) => {
                // The model failed for the whole step: every reply in it ends with the error.
                for ((a, end), t) in active.iter_mut().zip(ended.iter_mut()).zip(&inputs) {
                    if !t.is_empty() {
                        let _ = a.tx.send(EngineEvent::Error {
                            message: e.to_string(),
                        });
                        *end = true;
                    }
                }
                return ended;
            }
        };
        for ((a, end), t) in active.iter_mut().zip(ended.iter_mut()).zip(&inputs) {
            if t.is_empty() {
                continue;
            }
            let l = logits.next().expect("one row of logits per sequence");
            let _g = a.span.enter();
            let cancelled = a.cancel.is_cancelled();
            let mut emit = sink(&a.tx, &a.cancel);
            match a.seq.absorb(l, t.len(), cancelled, &mut emit) {
                Ok(Progress::Running) => {}
                Ok(Progress::Finished(_)) => *end = true,
                Err(e) => {
                    emit(EngineEvent::Error {
                        message: e.to_string(),
                    });
                    *end = true;
                }
            }
        }
        ended
    }));
    match outcome {
        Ok(ended) => {
            for i in (0..ended.len()).rev() {
                if ended[i] {
                    let a = active.remove(i);
                    core.end(a.seq);
                    closing.push(a.tx);
                }
            }
        }
        Err(_) => {
            tracing::error!("generation panicked");
            for a in active.drain(..) {
                let _ = a.tx.send(EngineEvent::Error {
                    message: "the engine hit an internal error; the conversation's cache was reset"
                        .into(),
                });
                core.abandon(a.seq);
                closing.push(a.tx);
            }
        }
    }
    closing
}

impl Generator for Engine {
    fn admit(&self, client: &str) -> Result<Option<Ticket>, Refusal> {
        self.admission.try_admit(client).map(Some)
    }

    fn submit(&self, req: GenerateRequest) -> JobHandle {
        Engine::submit(self, req)
    }

    fn forget(&self, conversation: &str) {
        Engine::forget(self, conversation);
    }

    fn shutdown(&self) {
        Engine::shutdown(self);
    }

    fn engine(&self) -> Option<Engine> {
        Some(self.clone())
    }

    fn answered_by(&self) -> String {
        format!("{} on this computer", self.model_name)
    }
}
