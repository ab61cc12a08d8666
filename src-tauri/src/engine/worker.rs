//! The engine worker: one thread owns the model; jobs wait in a fair FIFO queue; each job
//! streams its events to an async receiver, so callers never block on the model. Callers that
//! queue jobs for other people pass the engine's [`Admission`] first, which bounds the queue.

use super::admission::{Admission, Refusal, Ticket};
use super::constraint::Constrainer;
use super::core::{EngineCore, EngineOptions, GenerateRequest, JobError};
use super::events::{EngineEvent, FinishReason, GenerationStats};
use super::generator::{CancelToken, Generator, JobHandle};
use super::loader::LoadedModel;
use super::prompter::Prompter;
use super::request::Constraint;
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
}

enum Work {
    // Boxed: a job carries its whole request, a forget only a key.
    Generate(Box<Job>),
    Forget(String),
}

#[derive(Default)]
struct Shared {
    queue: VecDeque<Work>,
    busy: bool,
    /// The stop switch of the job the worker is running.
    running: Option<CancelToken>,
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
        let prompter = core.prompter().clone();
        let constrainer = core.constrainer().clone();
        let shared = Arc::new((Mutex::new(Shared::default()), std::sync::Condvar::new()));
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
            admission: Admission::default(),
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
        let ahead = s
            .queue
            .iter()
            .filter(|w| matches!(w, Work::Generate(_)))
            .count()
            + usize::from(s.busy);
        if ahead > 0 {
            let _ = tx.send(EngineEvent::Queued { position: ahead });
        }
        s.queue.push_back(Work::Generate(Box::new(Job {
            id,
            position: ahead,
            req,
            tx,
            cancel: cancel.clone(),
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
            busy: s.busy,
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
            if let Some(running) = &s.running {
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

fn worker(mut core: EngineCore, shared: Arc<(Mutex<Shared>, std::sync::Condvar)>) {
    let (lock, cv) = &*shared;
    loop {
        let work = {
            let mut s = lock.lock().expect("engine state");
            loop {
                if let Some(w) = s.queue.pop_front() {
                    s.busy = matches!(w, Work::Generate(_));
                    s.running = match &w {
                        Work::Generate(job) => Some(job.cancel.clone()),
                        Work::Forget(_) => None,
                    };
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
                    break w;
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
        };
        match work {
            Work::Forget(key) => {
                core.forget(&key);
                lock.lock().expect("engine state").cached.remove(&key);
            }
            Work::Generate(job) => {
                if job.cancel.is_cancelled() {
                    let stats = GenerationStats {
                        finish_reason: FinishReason::Cancelled,
                        ..Default::default()
                    };
                    let _ = job.tx.send(EngineEvent::Done {
                        stats,
                        token_ids: Vec::new(),
                    });
                } else {
                    let tx = job.tx.clone();
                    let key = job.req.conversation.as_deref().unwrap_or("-");
                    let span = tracing::info_span!("job", id = job.id, conversation = %key);
                    let _g = span.enter();
                    // A panic in the model must not take the app down with it.
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        core.run(&job.req, job.cancel.flag(), &mut |e| {
                            // Nobody reads the reply any more: free the engine for others.
                            if tx.send(e).is_err() {
                                job.cancel.cancel();
                            }
                        })
                    }));
                    if run.is_err() {
                        tracing::error!("generation panicked");
                        match &job.req.conversation {
                            Some(key) => core.forget(key),
                            None => core.forget_unnamed(),
                        }
                        let _ = job.tx.send(EngineEvent::Error { message: "the engine hit an internal error; the conversation's cache was reset".into() });
                    }
                }
                let mut s = lock.lock().expect("engine state");
                if let Some(key) = &job.req.conversation {
                    s.cached.insert(key.clone(), core.cached_tokens(key));
                }
                s.busy = false;
                s.running = None;
            }
        }
    }
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
}
