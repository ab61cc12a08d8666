//! [`ChatService`]: what a user can do in the app, independent of how they reach it.
//!
//! Replies stream as [`StreamEvent`]s on a broadcast channel that every shell subscribes to
//! (Tauri events in the desktop, SSE in the browser). Each reply's text is saved as it arrives,
//! before its event goes out, so anything a shell renders from the repository is never behind
//! the events it has seen; a per-reply sequence number lets a client drop events it already has.
//!
//! Conversations belong to an [`Owner`]: the desktop app, or one browser session of the
//! built-in server. A service handle acts for one owner ([`ChatService::as_owner`]); another
//! owner's conversation is reported as not found, exactly like one that does not exist.
//! Settings, the model and the queue of replies are shared by all owners.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use chrono::NaiveDate;
use serde::Serialize;
use tokio::sync::broadcast;

use super::commands::{self, CommandError, SlashCommand};
use super::repo::{Conversation, Message, MessageStatus, Repo, RepoError, Role};
use crate::engine::admission::{Refusal, Ticket};
use crate::engine::{
    CancelToken, ChatMessage, EngineEvent, EngineOptions, GenerateRequest, Generator, NoModel,
    Quote, SnapshotOptions,
};
use crate::store::{InvalidSetting, Settings, DESKTOP_OWNER};

/// Title of a conversation before its first message names it.
pub const NEW_TITLE: &str = "New chat";

/// The longest system prompt a conversation takes, in characters.
pub const MAX_SYSTEM_PROMPT: usize = 8000;

/// Ready-made system prompts offered beside a conversation's own (name, text).
pub const SYSTEM_PRESETS: &[(&str, &str)] = &[
    ("None", ""),
    (
        "Concise",
        "Answer briefly and directly, without preamble. Use lists only when they help.",
    ),
    (
        "Teacher",
        "Explain step by step for a curious beginner, with one short example, and check \
         the reasoning before giving the answer.",
    ),
    (
        "Programmer",
        "You are an expert programmer. Give correct, idiomatic code in fenced blocks with the \
         language named, and explain only what is not obvious.",
    ),
    (
        "Translator",
        "Translate the user's text into English, keeping its meaning and tone; if it is \
         already English, translate it into French. Reply with the translation only.",
    ),
];

/// What can go wrong in a user action; every message is meant for a person.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The conversation or message is gone.
    #[error("{0}")]
    NotFound(String),
    /// The request makes no sense as given.
    #[error("{0}")]
    Invalid(String),
    /// A slash command was mistyped.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Settings out of range.
    #[error("some settings are out of range")]
    Settings(Vec<InvalidSetting>),
    /// The queue of replies has no place for this one (see `engine::admission`).
    #[error(transparent)]
    Busy(#[from] Refusal),
    /// Saving failed.
    #[error("could not save: {0}")]
    Storage(String),
}

impl From<RepoError> for ServiceError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::NotFound { what, .. } => {
                ServiceError::NotFound(format!("That {what} no longer exists."))
            }
            other => ServiceError::Storage(other.to_string()),
        }
    }
}

/// Result type of the service.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Whose conversations a service handle sees.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Owner(Arc<str>);

impl Owner {
    /// The desktop app (and every conversation stored before conversations had owners).
    pub fn desktop() -> Self {
        Self(Arc::from(DESKTOP_OWNER))
    }

    /// One browser session, named by a digest of its cookie; the cookie itself is never
    /// stored, so the database holds nothing that would let someone take a session over.
    pub fn browser(session_digest: &str) -> Self {
        Self(Arc::from(format!("web:{session_digest}")))
    }

    /// The name kept in the database.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The engine as the status bar shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EngineState {
    /// Nothing loaded; `reason` says what to do.
    NoModel {
        /// For a person to read.
        reason: String,
    },
    /// A model is loading.
    Loading {
        /// What is loading (file name).
        model: String,
        /// 0.0 to 1.0.
        progress: f32,
    },
    /// Ready to generate.
    Ready {
        /// Model name.
        model: String,
    },
    /// Loading failed.
    Failed {
        /// For a person to read.
        message: String,
    },
    /// A new model could not be loaded, so the previous one is still in use.
    Kept {
        /// The model still in use.
        model: String,
        /// Why the new one was not loaded, for a person to read.
        message: String,
    },
}

/// Loads a model file into a generator, reporting progress from 0.0 to 1.0.
pub type ModelLoader = fn(
    model: &Path,
    tokenizer: Option<&Path>,
    opts: EngineOptions,
    progress: &dyn Fn(f32),
) -> anyhow::Result<Arc<dyn Generator>>;

/// The engine as a [`ModelLoader`].
pub fn load_engine(
    model: &Path,
    tokenizer: Option<&Path>,
    opts: EngineOptions,
    progress: &dyn Fn(f32),
) -> anyhow::Result<Arc<dyn Generator>> {
    Ok(Arc::new(crate::engine::Engine::load(
        model, tokenizer, opts, progress,
    )?))
}

/// Model files given when the app started (the desktop reads `MODEL_PATH` and
/// `TOKENIZER_PATH`); while a model is given, the settings' model files are not loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelOverride {
    /// The GGUF file.
    pub model: Option<PathBuf>,
    /// Its `tokenizer.json`.
    pub tokenizer: Option<PathBuf>,
}

/// The files of a loaded model.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelFiles {
    model: PathBuf,
    tokenizer: Option<PathBuf>,
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// One event of a reply's stream, tagged with where it belongs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamEvent {
    /// Who owns the conversation; only that owner's views may receive the event.
    pub owner: Owner,
    /// The conversation.
    pub conversation_id: i64,
    /// The assistant message being written.
    pub message_id: i64,
    /// Counts the events of this reply from 1; a view rendered at `seq` n already holds 1..=n.
    pub seq: u64,
    /// What happened.
    pub event: EngineEvent,
}

/// What sending a line produced.
// Built once per request and consumed at once, so the size gap between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum SendOutcome {
    /// A reply started: the user's message and the (empty, streaming) assistant message.
    Reply {
        /// The conversation (created if none was given).
        conversation: Conversation,
        /// Whether the conversation was created by this send.
        created: bool,
        /// The stored user message.
        user: Message,
        /// The assistant message the stream fills.
        assistant: Message,
    },
    /// A command ran; `text` tells the user what happened.
    Notice {
        /// The conversation it applied to, if any.
        conversation: Option<Conversation>,
        /// Whether the conversation was created by this send.
        created: bool,
        /// For a person to read.
        text: String,
    },
}

/// A conversation as a screen shows it.
#[derive(Debug, Clone)]
pub struct ConversationView {
    /// The header.
    pub conversation: Conversation,
    /// The branch on screen, oldest first.
    pub messages: Vec<MessageView>,
}

/// A message with what a view needs besides its text.
#[derive(Debug, Clone)]
pub struct MessageView {
    /// The message.
    pub message: Message,
    /// Events of its stream already included (0 unless streaming).
    pub seq: u64,
    /// This message's position among its siblings (1-based) and how many there are.
    pub branch: (usize, usize),
    /// Sibling ids, oldest first (for branch navigation).
    pub siblings: Vec<i64>,
    /// While the reply waits for the model behind other replies: its place in the queue
    /// (1 = next).
    pub queue_position: Option<usize>,
}

struct Active {
    conversation_id: i64,
    cancel: CancelToken,
    seq: u64,
    /// The queue position last reported, until the reply starts.
    queued: Option<usize>,
    /// Stopped by a model change rather than by the user: saved as interrupted.
    interrupted: bool,
    /// The reply's place in the engine's queue, freed when the reply ends.
    _ticket: Option<Ticket>,
}

struct State {
    repo: Repo,
    active: HashMap<i64, Active>,
}

struct Inner {
    state: Mutex<State>,
    generator: RwLock<Arc<dyn Generator>>,
    engine: RwLock<EngineState>,
    events: broadcast::Sender<StreamEvent>,
    quote_delay: Duration,
    wizard: super::wizard_state::Wizard,
    /// Installed by the shell that owns the model (the desktop); with it, saving another
    /// model file in the settings loads that file.
    loader: RwLock<Option<ModelLoader>>,
    /// The files of the model in use, to go back to when a new one fails to load.
    loaded: Mutex<Option<ModelFiles>>,
    /// Counts model changes, so that one overtaken by a newer one stands down.
    load_seq: AtomicU64,
    /// Model files the shell was started with, which take precedence over the settings.
    model_override: RwLock<ModelOverride>,
    /// Held for the whole of a model change: one at a time.
    switching: Mutex<()>,
    /// The key that signs browser session ids, read once.
    session_secret: std::sync::OnceLock<[u8; 32]>,
    /// What the server inside the app is doing, for the desktop's status bar.
    serving: RwLock<Option<Serving>>,
    /// Saved servers' API keys, opened at first use (probing the system's secret store).
    keys: std::sync::OnceLock<crate::store::keys::KeyStore>,
}

/// The server inside the desktop app, as its status bar shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    /// It runs.
    On {
        /// The address on this computer (`http://127.0.0.1:3000`).
        url: String,
        /// Browsers connected to it now (open event streams).
        browsers: usize,
    },
    /// It was asked to run and could not: why, for a person to act on.
    Failed(String),
    /// It is off (the app has one, so the status bar offers to switch it on).
    Off,
}

/// The chat service. Cheap to clone; clones share everything, including the owner they act
/// for (see [`ChatService::as_owner`]).
#[derive(Clone)]
pub struct ChatService {
    inner: Arc<Inner>,
    owner: Owner,
}

impl std::fmt::Debug for ChatService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatService").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under this lock is applied whole, so a poisoned lock holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A title from the first words of a message.
fn title_from(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(NEW_TITLE);
    let mut title: String = line.chars().take(48).collect();
    if line.chars().count() > 48 {
        title.push('…');
    }
    title
}

impl ChatService {
    /// A service over `repo`, with no model loaded.
    pub fn new(repo: Repo) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    repo,
                    active: HashMap::new(),
                }),
                generator: RwLock::new(Arc::new(NoModel::default())),
                engine: RwLock::new(EngineState::NoModel {
                    reason: "No model is loaded.".into(),
                }),
                events,
                quote_delay: Duration::from_millis(60),
                wizard: super::wizard_state::Wizard::default(),
                loader: RwLock::new(None),
                loaded: Mutex::new(None),
                load_seq: AtomicU64::new(0),
                model_override: RwLock::new(ModelOverride::default()),
                switching: Mutex::new(()),
                session_secret: std::sync::OnceLock::new(),
                serving: RwLock::new(None),
                keys: std::sync::OnceLock::new(),
            }),
            owner: Owner::desktop(),
        }
    }

    /// The key that signs the browser session ids this server hands out (see
    /// `shell::session`), kept in the database so sessions outlive a restart.
    pub fn session_secret(&self) -> Result<[u8; 32]> {
        if let Some(k) = self.inner.session_secret.get() {
            return Ok(*k);
        }
        let k = self.state().repo.session_secret()?;
        Ok(*self.inner.session_secret.get_or_init(|| k))
    }

    /// Records what the server inside the app is doing (none: it is off).
    pub fn set_serving(&self, serving: Option<Serving>) {
        *self
            .inner
            .serving
            .write()
            .unwrap_or_else(|p| p.into_inner()) = serving;
    }

    /// What the server inside the app is doing, for the desktop's owner only: a browser's
    /// pages do not show the machine's server.
    pub fn serving(&self) -> Option<Serving> {
        if self.owner != Owner::desktop() {
            return None;
        }
        self.inner
            .serving
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The secret the desktop's server key is made from (see `shell::local_server`).
    pub fn server_secret(&self) -> Result<[u8; 32]> {
        Ok(self.state().repo.server_secret()?)
    }

    /// Replaces the server's secret, so the key made from it changes.
    pub fn rotate_server_secret(&self) -> Result<[u8; 32]> {
        Ok(self.state().repo.rotate_server_secret()?)
    }

    /// The engine replies run on, when a model is loaded: for a server inside the app, whose
    /// API speaks to the engine directly.
    pub fn engine(&self) -> Option<crate::engine::Engine> {
        self.current_generator().engine()
    }

    /// The OpenAI-compatible server replies come from, when it is one (the desktop's Engine
    /// setting, or `serve --remote`): the app's API forwards to it.
    pub fn remote_server(&self) -> Option<crate::engine::remote::RemoteServer> {
        self.current_generator().remote()
    }

    /// Whether `owner` has any conversation in the database.
    pub fn owner_exists(&self, owner: &Owner) -> Result<bool> {
        Ok(self.state().repo.owns_any(owner.as_str())?)
    }

    /// Records in the data folder's lock where this process serves the browser UI, so a second
    /// process started on the same folder can point the user there.
    pub fn advertise(&self, url: &str) -> Result<()> {
        Ok(self.state().repo.advertise(url)?)
    }

    /// A service that keeps nothing after it is dropped.
    pub fn in_memory() -> Self {
        Self::new(Repo::in_memory())
    }

    /// A service whose data lives in the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(Repo::open(path)?))
    }

    /// Changes how fast `/quote` streams (tests use a short delay).
    pub fn with_quote_delay(self, delay: Duration) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.quote_delay = delay;
                Self {
                    inner: Arc::new(inner),
                    owner: self.owner,
                }
            }
            Err(inner) => Self {
                inner,
                owner: self.owner,
            },
        }
    }

    /// A handle on the same service that acts for `owner`: it lists, reads, changes and
    /// streams only that owner's conversations. A new service acts for the desktop.
    pub fn as_owner(&self, owner: Owner) -> Self {
        Self {
            inner: self.inner.clone(),
            owner,
        }
    }

    /// The owner this handle acts for.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// Fails with "not found" unless this handle's owner owns the conversation, so another
    /// owner's conversation looks exactly like one that does not exist.
    fn check_owner(&self, st: &State, conversation_id: i64) -> Result<()> {
        match st.repo.owner_of(conversation_id) {
            Ok(o) if o == self.owner.as_str() => Ok(()),
            Ok(_) => Err(RepoError::NotFound {
                what: "conversation",
                id: conversation_id,
            }
            .into()),
            Err(e) => Err(e.into()),
        }
    }

    /// A conversation this handle's owner may see.
    fn owned(&self, st: &State, conversation_id: i64) -> Result<Conversation> {
        self.check_owner(st, conversation_id)?;
        Ok(st.repo.conversation(conversation_id)?)
    }

    /// A message in a conversation this handle's owner may see.
    fn owned_message(&self, st: &State, id: i64) -> Result<Message> {
        let m = st.repo.message(id)?;
        match self.check_owner(st, m.conversation_id.0) {
            Ok(()) => Ok(m),
            Err(ServiceError::NotFound(_)) => Err(RepoError::NotFound {
                what: "message",
                id,
            }
            .into()),
            Err(e) => Err(e),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// Receives every reply event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StreamEvent> {
        self.inner.events.subscribe()
    }

    /// The first-run wizard (model download or import).
    pub fn wizard(&self) -> &super::wizard_state::Wizard {
        &self.inner.wizard
    }

    /// Installs the generator new replies use, and the state the status bar shows.
    pub fn set_generator(&self, generator: Arc<dyn Generator>, state: EngineState) {
        *self
            .inner
            .generator
            .write()
            .unwrap_or_else(|p| p.into_inner()) = generator;
        self.set_engine_state(state);
    }

    /// Updates the engine state (loading progress, failure).
    pub fn set_engine_state(&self, state: EngineState) {
        *self.inner.engine.write().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// The engine state.
    pub fn engine_state(&self) -> EngineState {
        self.inner
            .engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether any reply is being generated.
    pub fn busy(&self) -> bool {
        !self.state().active.is_empty()
    }

    /// The current settings.
    pub fn settings(&self) -> Settings {
        self.state().repo.settings().clone()
    }

    /// Checks and saves new settings. When they name another model file (and a model loader
    /// is installed and `MODEL_PATH` does not override the settings), that model is loaded in
    /// the background in place of the current one; see [`ChatService::switch_model`].
    pub fn update_settings(&self, settings: Settings) -> Result<()> {
        let before = self.settings();
        self.store_settings(settings.clone())?;
        let model = settings.model_path.trim();
        let tokenizer = settings.tokenizer_path.trim();
        let changed =
            before.model_path.trim() != model || before.tokenizer_path.trim() != tokenizer;
        let overridden = self.model_override().model.is_some();
        if changed && !model.is_empty() && !overridden && self.model_loader().is_some() {
            let model = PathBuf::from(model);
            let tokenizer = (!tokenizer.is_empty()).then(|| PathBuf::from(tokenizer));
            let this = self.clone();
            std::thread::spawn(move || {
                let _ = this.switch_model(&model, tokenizer.as_deref());
            });
        }
        Ok(())
    }

    /// Checks and saves new settings, without loading anything.
    pub(crate) fn store_settings(&self, settings: Settings) -> Result<()> {
        settings.validate().map_err(ServiceError::Settings)?;
        let mut st = self.state();
        st.repo.set_settings(settings)?;
        Ok(())
    }

    /// Sets the model files the shell was started with.
    pub fn set_model_override(&self, files: ModelOverride) {
        *self
            .inner
            .model_override
            .write()
            .unwrap_or_else(|p| p.into_inner()) = files;
    }

    /// The model files the shell was started with.
    pub fn model_override(&self) -> ModelOverride {
        self.inner
            .model_override
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The model files to load: the override's, else the settings'.
    pub fn model_files(&self) -> (Option<PathBuf>, Option<PathBuf>) {
        let over = self.model_override();
        let settings = self.settings();
        let setting = |s: &str| (!s.trim().is_empty()).then(|| PathBuf::from(s.trim()));
        (
            over.model.or_else(|| setting(&settings.model_path)),
            over.tokenizer.or_else(|| setting(&settings.tokenizer_path)),
        )
    }

    /// What the settings ask of the next engine started.
    fn engine_options(&self) -> EngineOptions {
        let settings = self.settings();
        EngineOptions {
            context_size: settings.context_size,
            snapshots: self.snapshot_options(),
            max_batch: settings.batch_size,
            kv_budget_bytes: settings.kv_budget_mb * 1_000_000,
            ..EngineOptions::default()
        }
    }

    /// The folder of conversations' KV snapshots (none for data in memory), whatever the
    /// budget: removing a model removes its snapshots even when no new ones are kept.
    pub fn snapshot_dir(&self) -> Option<PathBuf> {
        self.state().repo.snapshot_dir()
    }

    /// Where conversations' KV snapshots go and how much disk they may take (none when the
    /// settings keep none or the data is in memory).
    pub fn snapshot_options(&self) -> Option<SnapshotOptions> {
        let st = self.state();
        let mb = st.repo.settings().snapshot_budget_mb;
        let dir = st.repo.snapshot_dir()?;
        (mb > 0).then(|| SnapshotOptions {
            dir,
            budget_bytes: mb * 1_000_000,
        })
    }

    /// Installs the function that loads model files; from then on, saving another model file
    /// in the settings loads it.
    pub fn set_model_loader(&self, loader: ModelLoader) {
        *self.inner.loader.write().unwrap_or_else(|p| p.into_inner()) = Some(loader);
    }

    fn model_loader(&self) -> Option<ModelLoader> {
        *self.inner.loader.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the model in `model` the one replies use, in place of the current one. The file
    /// is checked first: a bad file leaves the current model in use, and the status bar says
    /// why. Otherwise replies in progress are stopped (and saved as interrupted), the old
    /// engine is shut down and its memory freed, and the new model loads while the status bar
    /// shows its progress, then ready. Should the load still fail, the previous model is loaded
    /// again if there was one. Blocking; the error is for a person.
    ///
    /// Only an engine this method loaded is shut down; one installed with
    /// [`ChatService::set_generator`] may be shared (the server's API uses it too), so it is
    /// merely replaced.
    pub fn switch_model(
        &self,
        model: &Path,
        tokenizer: Option<&Path>,
    ) -> std::result::Result<(), String> {
        let seq = self.inner.load_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let _one_at_a_time = lock(&self.inner.switching);
        let current = || self.inner.load_seq.load(Ordering::SeqCst) == seq;
        if !current() {
            return Err("another model was chosen in the meantime".into());
        }
        let name = file_name(model);
        let previous = lock(&self.inner.loaded).clone();
        // What stays in use if the new file is refused.
        let in_use = match self.engine_state() {
            EngineState::Ready { model } | EngineState::Kept { model, .. } => Some(model),
            _ => previous.as_ref().map(|p| file_name(&p.model)),
        };
        self.set_engine_state(EngineState::Loading {
            model: name.clone(),
            progress: 0.0,
        });
        if tokenizer.is_none() {
            if let Err(e) = crate::engine::loader::validate_file(model) {
                let message = format!("{} is not a usable model: {e:#}", model.display());
                tracing::warn!("{message}");
                match in_use {
                    Some(model) => self.set_engine_state(EngineState::Kept {
                        model,
                        message: message.clone(),
                    }),
                    None => self.set_engine_state(EngineState::Failed {
                        message: message.clone(),
                    }),
                }
                return Err(message);
            }
        }
        // Nothing may run on the old model any more: stop its replies, then free it.
        self.interrupt_replies();
        let old = self.replace_generator(Arc::new(NoModel::new(format!(
            "{name} is loading; send your message again once it is ready."
        ))));
        if previous.is_some() {
            old.shutdown();
        }
        drop(old);
        *lock(&self.inner.loaded) = None;
        let loader = self.model_loader().unwrap_or(load_engine as ModelLoader);
        let opts = self.engine_options();
        let report = |progress: f32| {
            if current() {
                self.set_engine_state(EngineState::Loading {
                    model: name.clone(),
                    progress,
                });
            }
        };
        match loader(model, tokenizer, opts.clone(), &report) {
            Ok(generator) if current() => {
                *lock(&self.inner.loaded) = Some(ModelFiles {
                    model: model.to_path_buf(),
                    tokenizer: tokenizer.map(Path::to_path_buf),
                });
                self.set_generator(generator, EngineState::Ready { model: name });
                tracing::info!(model = %model.display(), "model loaded");
                Ok(())
            }
            Ok(generator) => {
                generator.shutdown();
                Err("another model was chosen in the meantime".into())
            }
            Err(e) => {
                let message = format!("{e:#}");
                tracing::warn!(model = %model.display(), "model not loaded: {message}");
                if !current() {
                    return Err(message);
                }
                if let Some(p) = previous.filter(|p| p.model != model) {
                    if let Ok(generator) = loader(&p.model, p.tokenizer.as_deref(), opts, &|_| {}) {
                        let kept = file_name(&p.model);
                        *lock(&self.inner.loaded) = Some(p);
                        self.set_generator(
                            generator,
                            EngineState::Kept {
                                model: kept,
                                message: format!("{name} could not be loaded: {message}"),
                            },
                        );
                        return Err(message);
                    }
                }
                self.set_engine_state(EngineState::Failed {
                    message: message.clone(),
                });
                Err(message)
            }
        }
    }

    /// Makes `generator` (a saved server's, see `app::engines`) the one replies use, in place
    /// of the current one, as a model change does: a model load in progress stands down,
    /// replies in progress are stopped (saved as interrupted), and a model this service loaded
    /// is shut down and its memory freed. Blocking.
    pub fn switch_generator(&self, generator: Arc<dyn Generator>, state: EngineState) {
        self.inner.load_seq.fetch_add(1, Ordering::SeqCst);
        let _one_at_a_time = lock(&self.inner.switching);
        self.interrupt_replies();
        let old = self.replace_generator(generator);
        if lock(&self.inner.loaded).take().is_some() {
            old.shutdown();
        }
        self.set_engine_state(state);
    }

    /// Saved servers' API keys: the system's secret store, else a private file beside the
    /// database (memory only for a database in memory).
    pub fn keys(&self) -> &crate::store::keys::KeyStore {
        self.inner.keys.get_or_init(|| {
            use crate::store::keys::KeyStore;
            match self.state().repo.data_dir() {
                Some(dir) => KeyStore::open(&dir),
                None => KeyStore::memory(),
            }
        })
    }

    /// Keeps saved servers' keys in `keys` instead of the store [`ChatService::keys`] would
    /// open (tests: a file of their own, never the user's keyring). Only before first use.
    pub fn set_keys(&self, keys: crate::store::keys::KeyStore) {
        let _ = self.inner.keys.set(keys);
    }

    /// Runs `f` on the repository (for the app's other modules: saved servers).
    pub(crate) fn with_repo<R>(&self, f: impl FnOnce(&mut Repo) -> R) -> R {
        f(&mut self.state().repo)
    }

    /// Swaps in the generator new replies use and returns the old one.
    fn replace_generator(&self, generator: Arc<dyn Generator>) -> Arc<dyn Generator> {
        std::mem::replace(
            &mut *self
                .inner
                .generator
                .write()
                .unwrap_or_else(|p| p.into_inner()),
            generator,
        )
    }

    /// Stops every reply in progress; each is saved as interrupted when its job ends.
    fn interrupt_replies(&self) {
        let mut st = self.state();
        for a in st.active.values_mut() {
            a.interrupted = true;
            a.cancel.cancel();
        }
    }

    /// Conversations, newest first, optionally filtered by a search query.
    pub fn conversations(&self, query: Option<&str>) -> Result<Vec<Conversation>> {
        Ok(self
            .state()
            .repo
            .list_conversations(self.owner.as_str(), query)?)
    }

    /// Starts an empty conversation with the default reasoning mode.
    pub fn new_conversation(&self) -> Result<Conversation> {
        let mut st = self.state();
        self.create(&mut st)
    }

    fn create(&self, st: &mut State) -> Result<Conversation> {
        let thinking = st.repo.settings().thinking_default;
        Ok(st
            .repo
            .create_conversation(self.owner.as_str(), NEW_TITLE, thinking)?)
    }

    /// A conversation and the branch on screen.
    pub fn conversation(&self, id: impl Into<i64>) -> Result<ConversationView> {
        let id: i64 = id.into();
        let st = self.state();
        let conversation = self.owned(&st, id)?;
        let mut messages = Vec::new();
        for message in st.repo.branch(id)? {
            let siblings = st.repo.siblings(message.id)?;
            let pos = siblings
                .iter()
                .position(|&s| s == message.id)
                .map_or(1, |p| p + 1);
            let active = st.active.get(&message.id.0);
            messages.push(MessageView {
                branch: (pos, siblings.len()),
                siblings,
                seq: active.map_or(0, |a| a.seq),
                queue_position: active.and_then(|a| a.queued),
                message,
            });
        }
        Ok(ConversationView {
            conversation,
            messages,
        })
    }

    /// One message with its stream position.
    pub fn message(&self, id: impl Into<i64>) -> Result<MessageView> {
        let id: i64 = id.into();
        let st = self.state();
        let message = self.owned_message(&st, id)?;
        let siblings = st.repo.siblings(id)?;
        let pos = siblings.iter().position(|&s| s == id).map_or(1, |p| p + 1);
        let active = st.active.get(&id);
        Ok(MessageView {
            branch: (pos, siblings.len()),
            siblings,
            seq: active.map_or(0, |a| a.seq),
            queue_position: active.and_then(|a| a.queued),
            message,
        })
    }

    /// A conversation of this owner, or with `id` `None` all of them, in an export format:
    /// `json` (lossless, every branch, imports back), `md` (the branch on screen, readable) or
    /// `jsonl` (the branch on screen as OpenAI-style messages, a line per conversation). The
    /// file name to offer and the text.
    pub fn export(&self, id: Option<i64>, format: &str) -> Result<(String, String)> {
        use crate::store::{readable, transfer};
        if !matches!(format, "json" | "md" | "jsonl") {
            return Err(ServiceError::Invalid(format!(
                "There is no export format “{format}” (json, md or jsonl)."
            )));
        }
        let exported = {
            let st = self.state();
            let ids = match id {
                Some(id) => {
                    self.check_owner(&st, id)?;
                    vec![id]
                }
                None => st
                    .repo
                    .list_conversations(self.owner.as_str(), None)?
                    .into_iter()
                    .map(|c| c.id.0)
                    .collect(),
            };
            ids.into_iter()
                .map(|i| st.repo.export(i))
                .collect::<std::result::Result<Vec<_>, _>>()?
        };
        let stem = match (id, exported.first()) {
            (Some(_), Some(c)) => file_stem(&c.title),
            _ => "conversations".into(),
        };
        let text = match format {
            "json" => transfer::export_file(exported).to_json() + "\n",
            "md" => exported
                .iter()
                .map(readable::to_markdown)
                .collect::<Vec<_>>()
                .join("\n---\n\n"),
            _ => exported
                .iter()
                .map(|c| readable::to_openai_line(c) + "\n")
                .collect(),
        };
        Ok((format!("{stem}.{format}"), text))
    }

    /// Imports the conversations of an export file's `text` as new conversations of this
    /// owner; their ids. A file that is not an export, or whose messages do not form a tree,
    /// imports nothing and says why.
    pub fn import(&self, text: &str) -> Result<Vec<i64>> {
        let file = crate::store::transfer::ExportFile::parse(text)
            .map_err(|e| ServiceError::Invalid(format!("Nothing was imported: {e}.")))?;
        let mut st = self.state();
        let mut ids = Vec::with_capacity(file.conversations.len());
        for c in &file.conversations {
            ids.push(st.repo.import(c, self.owner.as_str())?);
        }
        Ok(ids)
    }

    /// Gives a conversation its own system prompt (empty: none); its next reply uses it.
    pub fn set_system_prompt(&self, id: impl Into<i64>, prompt: &str) -> Result<Conversation> {
        let id: i64 = id.into();
        let prompt = prompt.trim();
        if prompt.chars().count() > MAX_SYSTEM_PROMPT {
            return Err(ServiceError::Invalid(format!(
                "A system prompt can be at most {MAX_SYSTEM_PROMPT} characters."
            )));
        }
        let mut st = self.state();
        self.check_owner(&st, id)?;
        st.repo.set_system_prompt(id, prompt)?;
        Ok(st.repo.conversation(id)?)
    }

    /// Points the settings' model and tokenizer files at their new place when their folder
    /// moved (`(from, to)` pairs): only a path under `from` whose file is gone while the same
    /// file exists under `to`. Returns whether anything changed.
    pub fn follow_moved_files(&self, moves: &[(PathBuf, PathBuf)]) -> bool {
        let rebased = |path: &str| -> Option<String> {
            let p = Path::new(path.trim());
            if path.trim().is_empty() || p.exists() {
                return None;
            }
            moves.iter().find_map(|(from, to)| {
                let candidate = to.join(p.strip_prefix(from).ok()?);
                candidate
                    .exists()
                    .then(|| candidate.to_string_lossy().into_owned())
            })
        };
        let mut s = self.settings();
        let model = rebased(&s.model_path);
        let tokenizer = rebased(&s.tokenizer_path);
        if model.is_none() && tokenizer.is_none() {
            return false;
        }
        if let Some(m) = model {
            s.model_path = m;
        }
        if let Some(t) = tokenizer {
            s.tokenizer_path = t;
        }
        self.update_settings(s).is_ok()
    }

    /// Stops the engine as the app exits: a reply still streaming is cancelled (what it wrote
    /// is kept; the next start marks it interrupted if it was not saved as stopped) and the
    /// conversations' caches not yet on disk are saved as KV snapshots. Blocks until done.
    pub fn close(&self) {
        self.current_generator().shutdown();
    }

    /// The system prompt the settings give new conversations (their default).
    pub fn default_system_prompt(&self) -> String {
        self.settings().system_prompt
    }

    /// Renames a conversation.
    pub fn rename(&self, id: impl Into<i64>, title: &str) -> Result<Conversation> {
        let id: i64 = id.into();
        let title = title.trim();
        if title.is_empty() {
            return Err(ServiceError::Invalid("A title cannot be empty.".into()));
        }
        let title: String = title.chars().take(200).collect();
        let mut st = self.state();
        self.check_owner(&st, id)?;
        st.repo.rename(id, &title)?;
        Ok(st.repo.conversation(id)?)
    }

    /// Deletes a conversation (undoable), stopping its reply if one is streaming.
    pub fn delete(&self, id: impl Into<i64>) -> Result<Conversation> {
        let id: i64 = id.into();
        self.owned(&self.state(), id)?;
        self.stop(id);
        self.current_generator().forget(&id.to_string());
        let mut st = self.state();
        let conv = self.owned(&st, id)?;
        st.repo.delete(id)?;
        // The engine deletes the snapshot too (after a write it may be doing); this covers the
        // time no model is loaded.
        if let Some(dir) = st.repo.snapshot_dir() {
            crate::engine::snapshot::remove_in(&dir, &id.to_string());
        }
        Ok(conv)
    }

    /// Brings back a deleted conversation.
    pub fn undo_delete(&self, id: impl Into<i64>) -> Result<Conversation> {
        let id: i64 = id.into();
        let mut st = self.state();
        self.check_owner(&st, id)?;
        st.repo.undo_delete(id)?;
        Ok(st.repo.conversation(id)?)
    }

    /// Turns reasoning on or off for a conversation.
    pub fn set_thinking(&self, id: impl Into<i64>, on: bool) -> Result<Conversation> {
        let id: i64 = id.into();
        let mut st = self.state();
        self.check_owner(&st, id)?;
        st.repo.set_thinking(id, on)?;
        Ok(st.repo.conversation(id)?)
    }

    /// Asks every reply streaming in a conversation to stop; returns whether one was.
    pub fn stop(&self, conversation_id: impl Into<i64>) -> bool {
        let conversation_id: i64 = conversation_id.into();
        let st = self.state();
        if self.check_owner(&st, conversation_id).is_err() {
            return false;
        }
        let mut any = false;
        for a in st
            .active
            .values()
            .filter(|a| a.conversation_id == conversation_id)
        {
            a.cancel.cancel();
            any = true;
        }
        any
    }

    /// Whether a reply is streaming in the conversation.
    pub fn is_streaming(&self, conversation_id: impl Into<i64>) -> bool {
        let conversation_id: i64 = conversation_id.into();
        let st = self.state();
        self.check_owner(&st, conversation_id).is_ok()
            && st
                .active
                .values()
                .any(|a| a.conversation_id == conversation_id)
    }

    /// Handles a line from the message box: a slash command, or a message to answer.
    /// `conversation_id` None starts a new conversation.
    pub fn send(&self, conversation_id: Option<i64>, text: &str) -> Result<SendOutcome> {
        if text.trim().is_empty() {
            return Err(ServiceError::Invalid("Type a message first.".into()));
        }
        let command = commands::parse(text).transpose()?;
        // The generator of a reply (none for commands that only change something), and its
        // place in the queue, before anything is saved: a refused message leaves no trace.
        let reply_generator: Option<Arc<dyn Generator>> = match &command {
            Some(SlashCommand::Quote(arg)) => {
                Some(Arc::new(Quote::new(arg).with_delay(self.inner.quote_delay)))
            }
            None => Some(self.current_generator()),
            Some(_) => None,
        };
        let ticket = match &reply_generator {
            Some(g) => g.admit(self.owner.as_str())?,
            None => None,
        };
        let mut st = self.state();
        let (conv, created) = match conversation_id {
            Some(id) => (self.owned(&st, id)?, false),
            None => (self.create(&mut st)?, true),
        };
        let notice = |st: &State, text: String| -> Result<SendOutcome> {
            Ok(SendOutcome::Notice {
                conversation: Some(st.repo.conversation(conv.id)?),
                created,
                text,
            })
        };
        let generator: Arc<dyn Generator> = match command {
            Some(SlashCommand::Think) => {
                st.repo.set_thinking(conv.id, true)?;
                return notice(&st, "Reasoning is on for this conversation.".into());
            }
            Some(SlashCommand::NoThink) => {
                st.repo.set_thinking(conv.id, false)?;
                return notice(&st, "Reasoning is off for this conversation.".into());
            }
            Some(SlashCommand::Clear) => {
                if created {
                    return notice(&st, "This conversation is already empty.".into());
                }
                // The old conversation is kept (and searchable); the chat starts over.
                let fresh =
                    st.repo
                        .create_conversation(self.owner.as_str(), NEW_TITLE, conv.thinking)?;
                return Ok(SendOutcome::Notice {
                    conversation: Some(fresh),
                    created: true,
                    text: "Cleared: this is a new conversation. The previous one is still in the sidebar.".into(),
                });
            }
            Some(SlashCommand::Status) => {
                let text = self.status_line(&st, conv.id.0);
                return notice(&st, text);
            }
            Some(SlashCommand::Help) => {
                let line = |(c, h): &(&str, &str)| format!("{c} — {h}");
                let text = format!(
                    "{}\n\nKeyboard (⌘ instead of Ctrl on a Mac):\n{}",
                    commands::HELP
                        .iter()
                        .map(line)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    commands::SHORTCUTS
                        .iter()
                        .map(line)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                return notice(&st, text);
            }
            Some(SlashCommand::Quote(_)) | None => match reply_generator {
                Some(g) => g,
                None => self.current_generator(),
            },
        };
        if st.active.values().any(|a| a.conversation_id == conv.id) {
            return Err(ServiceError::Invalid(
                "A reply is still being written. Stop it or wait for it to finish.".into(),
            ));
        }
        let parent = st.repo.conversation(conv.id)?.leaf_id;
        let user = st
            .repo
            .add_message(conv.id, parent, Role::User, text.trim())?;
        if st.repo.conversation(conv.id)?.title == NEW_TITLE {
            st.repo.rename(conv.id, &title_from(text))?;
        }
        let assistant = self.start_reply(&mut st, conv.id.0, user.id.0, generator, ticket)?;
        Ok(SendOutcome::Reply {
            conversation: st.repo.conversation(conv.id)?,
            created,
            user,
            assistant,
        })
    }

    /// Answers the same user message again; the old reply stays as a sibling branch.
    pub fn regenerate(&self, assistant_id: impl Into<i64>) -> Result<Message> {
        let assistant_id: i64 = assistant_id.into();
        let mut st = self.state();
        let old = self.owned_message(&st, assistant_id)?;
        if old.role != Role::Assistant {
            return Err(ServiceError::Invalid(
                "Only a reply can be regenerated.".into(),
            ));
        }
        let Some(parent) = old.parent_id else {
            return Err(ServiceError::Invalid("This reply answers nothing.".into()));
        };
        if st
            .active
            .values()
            .any(|a| a.conversation_id == old.conversation_id)
        {
            return Err(ServiceError::Invalid(
                "A reply is still being written. Stop it first.".into(),
            ));
        }
        let question = st.repo.message(parent)?.content;
        let generator = self.generator_for(&question);
        let ticket = generator.admit(self.owner.as_str())?;
        self.start_reply(&mut st, old.conversation_id.0, parent.0, generator, ticket)
    }

    /// Replaces a user message with `text` and answers it; the old message and its replies stay
    /// as a sibling branch.
    pub fn edit(&self, user_id: impl Into<i64>, text: &str) -> Result<(Message, Message)> {
        let user_id: i64 = user_id.into();
        if text.trim().is_empty() {
            return Err(ServiceError::Invalid("Type a message first.".into()));
        }
        let mut st = self.state();
        let old = self.owned_message(&st, user_id)?;
        if old.role != Role::User {
            return Err(ServiceError::Invalid(
                "Only your own messages can be edited.".into(),
            ));
        }
        if st
            .active
            .values()
            .any(|a| a.conversation_id == old.conversation_id)
        {
            return Err(ServiceError::Invalid(
                "A reply is still being written. Stop it first.".into(),
            ));
        }
        let generator = self.generator_for(text);
        let ticket = generator.admit(self.owner.as_str())?;
        let user =
            st.repo
                .add_message(old.conversation_id, old.parent_id, Role::User, text.trim())?;
        let assistant =
            self.start_reply(&mut st, old.conversation_id.0, user.id.0, generator, ticket)?;
        Ok((user, assistant))
    }

    /// Shows the branch through message `id` (for the ‹ › branch switcher).
    pub fn select_branch(&self, id: impl Into<i64>) -> Result<i64> {
        let id: i64 = id.into();
        let mut st = self.state();
        let conv = self.owned_message(&st, id)?.conversation_id;
        if st.active.values().any(|a| a.conversation_id == conv) {
            return Err(ServiceError::Invalid(
                "Wait for the reply to finish before switching branches.".into(),
            ));
        }
        st.repo.select_branch(id)?;
        Ok(conv.0)
    }

    fn generator_for(&self, text: &str) -> Arc<dyn Generator> {
        match commands::parse(text) {
            Some(Ok(SlashCommand::Quote(arg))) => {
                Arc::new(Quote::new(&arg).with_delay(self.inner.quote_delay))
            }
            _ => self.current_generator(),
        }
    }

    fn current_generator(&self) -> Arc<dyn Generator> {
        self.inner
            .generator
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Tokens used by the last reply of the branch on screen, if any.
    pub fn context_used(&self, conversation_id: impl Into<i64>) -> Option<usize> {
        let conversation_id: i64 = conversation_id.into();
        let st = self.state();
        self.check_owner(&st, conversation_id).ok()?;
        let branch = st.repo.branch(conversation_id).ok()?;
        branch
            .iter()
            .rev()
            .find_map(|m| m.stats.as_ref())
            .map(|s| s.prompt_tokens + s.generated_tokens)
    }

    fn status_line(&self, st: &State, conversation_id: i64) -> String {
        let engine = match self.engine_state() {
            EngineState::NoModel { reason } => reason,
            EngineState::Loading { model, progress } => {
                format!("Loading {model} ({:.0}%).", progress * 100.0)
            }
            EngineState::Ready { model } => format!("Model {model} is ready."),
            EngineState::Failed { message } => format!("The model failed to load: {message}"),
            EngineState::Kept { model, message } => {
                format!("Model {model} is still in use: {message}")
            }
        };
        let s = st.repo.settings();
        let thinking = st
            .repo
            .conversation(conversation_id)
            .map(|c| c.thinking)
            .unwrap_or(false);
        format!(
            "{engine}\nContext size {} tokens; replies generating: {}.\nReasoning is {} in this conversation.",
            s.context_size,
            st.active.len(),
            if thinking { "on" } else { "off" }
        )
    }

    fn start_reply(
        &self,
        st: &mut State,
        conversation_id: i64,
        user_id: i64,
        generator: Arc<dyn Generator>,
        ticket: Option<Ticket>,
    ) -> Result<Message> {
        let conv = st.repo.conversation(conversation_id)?;
        let settings = st.repo.settings().clone();
        let mut messages = Vec::new();
        // The conversation's own prompt: the settings' default when it was created, or what
        // was chosen for it since.
        if !conv.system_prompt.trim().is_empty() {
            messages.push(ChatMessage::new("system", conv.system_prompt.trim()));
        }
        // The path up to the message being answered (for a regenerate, the leaf is further down).
        for m in st.repo.path_to(user_id)? {
            if m.role == Role::Assistant
                && (m.status == MessageStatus::Error || m.content.is_empty())
            {
                continue;
            }
            messages.push(ChatMessage {
                role: m.role.as_str().into(),
                content: m.content,
                token_ids: m.token_ids,
            });
        }
        let assistant = st
            .repo
            .begin_reply(conversation_id, user_id, &generator.answered_by())?;
        // The store keeps the date as the chat template prints it ("27 November 2026").
        let today = NaiveDate::parse_from_str(&conv.today, "%d %B %Y")
            .or_else(|_| NaiveDate::parse_from_str(&conv.today, "%Y-%m-%d"))
            .unwrap_or_else(|_| chrono::Local::now().date_naive());
        let req = GenerateRequest {
            params: settings.sampling.clone(),
            enable_thinking: conv.thinking,
            thinking_budget: (settings.thinking_budget > 0).then_some(settings.thinking_budget),
            ..GenerateRequest::new(Some(conversation_id.to_string()), messages, today)
        };
        let job = generator.submit(req);
        st.active.insert(
            assistant.id.0,
            Active {
                conversation_id,
                cancel: job.cancel.clone(),
                seq: 0,
                queued: None,
                interrupted: false,
                _ticket: ticket,
            },
        );
        let this = self.clone();
        let message_id = assistant.id;
        tokio::spawn(async move { this.pump(conversation_id, message_id.0, job.events).await });
        Ok(assistant)
    }

    /// Moves a job's events into the repository and out to subscribers, in that order.
    async fn pump(
        &self,
        conversation_id: i64,
        message_id: i64,
        mut events: tokio::sync::mpsc::UnboundedReceiver<EngineEvent>,
    ) {
        let mut ended = false;
        // Whether any text arrived: an error after it (a server lost mid-reply) leaves a reply
        // cut short, kept as interrupted with the reason, rather than a failed one.
        let mut wrote = false;
        while let Some(event) = events.recv().await {
            let mut st = self.state();
            let applied = match &event {
                EngineEvent::Reasoning { text } => {
                    wrote |= !text.is_empty();
                    st.repo.append(message_id, text, "")
                }
                EngineEvent::Answer { text } => {
                    wrote |= !text.is_empty();
                    st.repo.append(message_id, "", text)
                }
                EngineEvent::Done { stats, token_ids } => {
                    ended = true;
                    if st.active.get(&message_id).is_some_and(|a| a.interrupted) {
                        st.repo.interrupt(message_id)
                    } else {
                        st.repo.finish(message_id, stats.clone(), token_ids.clone())
                    }
                }
                EngineEvent::Error { message } if wrote => {
                    ended = true;
                    st.repo.interrupt_because(message_id, message)
                }
                EngineEvent::Error { message } => {
                    ended = true;
                    st.repo.fail(message_id, message)
                }
                EngineEvent::Started { .. }
                | EngineEvent::Queued { .. }
                | EngineEvent::Logprob { .. } => Ok(()),
            };
            if let Some(a) = st.active.get_mut(&message_id) {
                a.queued = match &event {
                    EngineEvent::Queued { position } => Some(*position),
                    _ => None,
                };
            }
            if let Err(e) = applied {
                tracing::warn!(message_id, error = %e, "reply could not be saved");
            }
            let seq = match st.active.get_mut(&message_id) {
                Some(a) => {
                    a.seq += 1;
                    a.seq
                }
                None => 0,
            };
            if ended {
                st.active.remove(&message_id);
            }
            // Nobody listening is fine: the text is saved and views render it from there.
            let _ = self.inner.events.send(StreamEvent {
                owner: self.owner.clone(),
                conversation_id,
                message_id,
                seq,
                event,
            });
            if ended {
                return;
            }
        }
        let message = "The engine stopped before finishing the reply.".to_string();
        let mut st = self.state();
        if let Err(e) = st.repo.fail(message_id, &message) {
            tracing::warn!(error = %e, "saving the failed reply failed");
        }
        let seq = st.active.remove(&message_id).map_or(0, |a| a.seq + 1);
        let _ = self.inner.events.send(StreamEvent {
            owner: self.owner.clone(),
            conversation_id,
            message_id,
            seq,
            event: EngineEvent::Error { message },
        });
    }
}

/// A file name from a conversation's title: letters, digits, spaces, `-` and `_` kept, the
/// rest dropped, at most 60 characters; `conversation` when nothing is left.
fn file_stem(title: &str) -> String {
    let kept: String = title
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .take(60)
        .collect();
    match kept.trim() {
        "" => "conversation".into(),
        t => t.to_string(),
    }
}
