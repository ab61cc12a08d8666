//! The engine worker: one thread owns the model; jobs wait in a fair FIFO queue; each job
//! streams its events to an async receiver, so callers never block on the model.

use super::core::{EngineCore, EngineOptions, GenerateRequest, JobError};
use super::events::{EngineEvent, FinishReason, GenerationStats};
use super::loader::LoadedModel;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

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

    fn flag(&self) -> &AtomicBool {
        &self.0
    }
}

/// A submitted job: its event stream and its stop switch.
#[derive(Debug)]
pub struct JobHandle {
    /// Job id (unique per engine).
    pub id: u64,
    /// Events in order; the stream ends after `Done` or `Error`.
    pub events: UnboundedReceiver<EngineEvent>,
    /// Stops the job.
    pub cancel: CancelToken,
}

struct Job {
    id: u64,
    /// The queue position last reported to the caller.
    position: usize,
    req: GenerateRequest,
    tx: UnboundedSender<EngineEvent>,
    cancel: CancelToken,
}

enum Work {
    Generate(Job),
    Forget(String),
}

#[derive(Default)]
struct Shared {
    queue: VecDeque<Work>,
    busy: bool,
    /// The stop switch of the job the worker is running.
    running: Option<CancelToken>,
    shutdown: bool,
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
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model_name)
            .finish()
    }
}

impl Engine {
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
        })
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
        s.queue.push_back(Work::Generate(Job {
            id,
            position: ahead,
            req,
            tx,
            cancel: cancel.clone(),
        }));
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
                    return;
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
                    let span = tracing::info_span!("job", id = job.id, conversation = %job.req.conversation);
                    let _g = span.enter();
                    // A panic in the model must not take the app down with it.
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        core.run(&job.req, job.cancel.flag(), &mut |e| {
                            let _ = tx.send(e);
                        })
                    }));
                    if run.is_err() {
                        tracing::error!("generation panicked");
                        core.forget(&job.req.conversation);
                        let _ = job.tx.send(EngineEvent::Error { message: "the engine hit an internal error; the conversation's cache was reset".into() });
                    }
                }
                let cached = core.cached_tokens(&job.req.conversation);
                let mut s = lock.lock().expect("engine state");
                s.cached.insert(job.req.conversation.clone(), cached);
                s.busy = false;
                s.running = None;
            }
        }
    }
}
