//! The inference engine behind the [`Generator`] trait, and the model loader the desktop uses.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use super::generator::{GenerateRequest, Generator, JobHandle, JOB_CHANNEL_CAPACITY};
use super::settings::Settings;
use crate::engine::core::{self, EngineOptions};
use crate::engine::events::EngineEvent;
use crate::engine::loader::LoadedModel;
use crate::engine::sampler::SamplingParams;
use crate::engine::worker::{self, Engine};

/// How often the forwarder looks at the stop switch while the engine is silent.
const CANCEL_POLL: Duration = Duration::from_millis(5);

/// A loaded model on its worker thread, seen as a [`Generator`].
#[derive(Debug, Clone)]
pub struct EngineGenerator {
    engine: Engine,
}

impl EngineGenerator {
    /// Wraps a started engine.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

impl Generator for EngineGenerator {
    fn submit(&self, req: GenerateRequest) -> JobHandle {
        let s = &req.sampling;
        let params = SamplingParams {
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            max_tokens: s.max_tokens,
            ..SamplingParams::default()
        };
        let job = self.engine.submit(core::GenerateRequest {
            conversation: req.conversation_id.to_string(),
            messages: req.messages,
            params,
            enable_thinking: req.enable_thinking,
            today: req.today,
            thinking_budget: req.thinking_budget,
            stop: Vec::new(),
            assistant_prefix: None,
        });
        let (tx, rx) = mpsc::channel(JOB_CHANNEL_CAPACITY);
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        std::thread::spawn(move || forward(job, tx, flag));
        JobHandle { events: rx, cancel }
    }

    fn forget(&self, conversation_id: i64) {
        self.engine.forget(&conversation_id.to_string());
    }

    fn shutdown(&self) {
        self.engine.shutdown();
    }
}

/// Moves the engine's events to the service and the service's stop switch to the engine.
fn forward(mut job: worker::JobHandle, tx: mpsc::Sender<EngineEvent>, stop: Arc<AtomicBool>) {
    loop {
        if stop.load(Ordering::Relaxed) {
            job.cancel.cancel();
        }
        match job.events.try_recv() {
            Ok(ev) => {
                let last = matches!(ev, EngineEvent::Done { .. } | EngineEvent::Error { .. });
                if tx.blocking_send(ev).is_err() {
                    // Nobody reads the reply any more: free the engine for others.
                    job.cancel.cancel();
                    return;
                }
                if last {
                    return;
                }
            }
            Err(TryRecvError::Empty) => std::thread::sleep(CANCEL_POLL),
            Err(TryRecvError::Disconnected) => return,
        }
    }
}

/// Loads a model file and starts the engine on it, reporting progress from 0.0 to 1.0.
pub fn load(
    model: &Path,
    tokenizer: Option<&Path>,
    settings: &Settings,
    progress: &dyn Fn(f32),
) -> anyhow::Result<Arc<dyn Generator>> {
    if settings.threads > 0 {
        // Read by candle's thread pool when the first computation runs, which is after this.
        std::env::set_var("CANDLE_NUM_THREADS", settings.threads.to_string());
    }
    progress(0.05);
    let loaded = LoadedModel::open(model, tokenizer)?;
    progress(0.8);
    let opts = EngineOptions {
        context_size: settings.context_size,
        ..EngineOptions::default()
    };
    let engine = Engine::start(loaded, opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    progress(1.0);
    Ok(Arc::new(EngineGenerator::new(engine)))
}
