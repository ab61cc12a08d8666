//! The first-run wizard's core: getting a model onto the machine and loaded, when none is.
//!
//! A download runs as a background task through the hub's [`Downloader`]; what it does is
//! published as [`Phase`] snapshots on a broadcast channel (at most four a second while bytes
//! arrive) that the shells forward to the page the same way as reply deltas. Once a file is
//! verified it is validated as a SmolLM3 model, its path is saved in the settings, and the
//! model is loaded with [`load_model`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;

use super::service::{ChatService, EngineState};
use crate::hub::{
    self, catalogue, DownloadControl, DownloadEvent, DownloadOptions, DownloadOutcome, Downloader,
    HubConfig, HubError, ImportMode, Progress,
};

/// Least time between two progress snapshots sent to the page.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Where the wizard stands; every change is broadcast.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Nothing started.
    Idle,
    /// Bytes are arriving.
    Downloading {
        /// Catalogue entry id.
        entry: String,
        /// File being downloaded.
        file: String,
        /// Latest snapshot.
        progress: Progress,
        /// Why the bytes have stopped for now (a retry after a dropped connection).
        note: Option<String>,
    },
    /// Stopped by the user; the partial file is kept.
    Paused {
        /// Catalogue entry id.
        entry: String,
        /// Bytes kept.
        bytes: u64,
        /// Size of the file, when known.
        total: Option<u64>,
    },
    /// Checking the file (digest, then the model itself).
    Verifying {
        /// File being checked.
        file: String,
    },
    /// The model is loading.
    Loading {
        /// The model file.
        path: PathBuf,
    },
    /// The model is loaded: the chat can start.
    Ready {
        /// The model file.
        path: PathBuf,
    },
    /// Something failed; `title` and `message` are for a person.
    Failed {
        /// Catalogue entry to retry, when the failure was a download.
        entry: Option<String>,
        /// A short headline.
        title: String,
        /// What happened and what to do.
        message: String,
    },
    /// Cancelled by the user; the partial file was removed.
    Cancelled,
}

/// Why a wizard action was refused.
#[derive(Debug, thiserror::Error)]
pub enum WizardError {
    /// No such catalogue entry.
    #[error("there is no model called “{0}” in the list")]
    UnknownEntry(String),
    /// A download is already running.
    #[error("a download is already running; pause or cancel it first")]
    Busy,
    /// The model manager failed.
    #[error("{0}")]
    Hub(#[from] HubError),
    /// The file is not a usable model.
    #[error("{0}")]
    Invalid(String),
}

struct Job {
    phase: Phase,
    control: Option<DownloadControl>,
    dismissed: bool,
    dir: Option<PathBuf>,
    options: DownloadOptions,
}

/// The wizard's shared state. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Wizard {
    job: Arc<Mutex<Job>>,
    events: broadcast::Sender<Phase>,
}

impl Default for Wizard {
    fn default() -> Self {
        Self {
            job: Arc::new(Mutex::new(Job {
                phase: Phase::Idle,
                control: None,
                dismissed: false,
                dir: None,
                options: DownloadOptions {
                    progress_interval: PROGRESS_INTERVAL,
                    ..DownloadOptions::default()
                },
            })),
            events: broadcast::channel(256).0,
        }
    }
}

impl std::fmt::Debug for Wizard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wizard").finish_non_exhaustive()
    }
}

/// A headline for a download failure, so the page can say in a few words what went wrong.
pub fn failure_title(e: &HubError) -> &'static str {
    match e {
        HubError::Network { .. } => "No network connection",
        HubError::Unauthorized { .. } => "This model needs a Hugging Face token (HF_TOKEN)",
        HubError::NotFound { .. } => "The model was not found on the server (404)",
        HubError::DiskFull { .. } | HubError::InsufficientSpace { .. } => "The disk is full",
        HubError::ChecksumMismatch { .. } => "The downloaded file is damaged (checksum mismatch)",
        _ => "The download failed",
    }
}

/// Free bytes on the file system that holds `dir` (or its nearest existing parent).
pub fn free_space(dir: &Path) -> Option<u64> {
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.exists() {
            return fs4::available_space(d).ok();
        }
        p = d.parent();
    }
    None
}

/// Why the configured model cannot be used, or `None` when it looks usable.
/// Cheap: checks the file is there and starts like a GGUF; loading it checks the rest.
pub fn model_problem(service: &ChatService) -> Option<String> {
    if let EngineState::Failed { message } = service.engine_state() {
        return Some(format!("The model could not be loaded: {message}"));
    }
    let Some(path) = service.model_files().0 else {
        return Some("No model is set up yet.".into());
    };
    if !path.is_file() {
        return Some(format!("The model file {} is missing.", path.display()));
    }
    hub::import::check_gguf_header(&path)
        .err()
        .map(|e| format!("The model file {} is not usable: {e:#}", path.display()))
}

impl Wizard {
    fn job(&self) -> MutexGuard<'_, Job> {
        // Each change under this lock is whole, so a poisoned lock still holds consistent data.
        self.job.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps models in `dir` instead of the usual folder.
    pub fn set_models_dir(&self, dir: PathBuf) {
        self.job().dir = Some(dir);
    }

    /// The models folder: the one set with [`Wizard::set_models_dir`], else
    /// `SMOLLM3_MODELS_DIR`, else the platform default.
    pub fn models_dir(&self) -> Result<PathBuf, WizardError> {
        match &self.job().dir {
            Some(d) => Ok(d.clone()),
            None => Ok(hub::models_dir(None)?),
        }
    }

    /// Changes how downloads retry and check free space (tests use short waits and a
    /// simulated disk). Progress stays at most four updates a second.
    pub fn set_download_options(&self, options: DownloadOptions) {
        self.job().options = DownloadOptions {
            progress_interval: options.progress_interval.max(PROGRESS_INTERVAL),
            ..options
        };
    }

    /// Opens the chat without a model until the app restarts (commands such as `/quote` work).
    pub fn dismiss(&self) {
        self.job().dismissed = true;
    }

    /// Whether the user chose to go on without a model.
    pub fn dismissed(&self) -> bool {
        self.job().dismissed
    }

    /// Receives every phase change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Phase> {
        self.events.subscribe()
    }

    /// Where the wizard stands now.
    pub fn phase(&self) -> Phase {
        self.job().phase.clone()
    }

    fn set(&self, phase: Phase) {
        self.job().phase = phase.clone();
        // Nobody listening is fine: the page asks for the phase when it opens.
        let _ = self.events.send(phase);
    }

    /// Starts downloading a catalogue entry into `dir`, from the mirror in the settings when
    /// one is set (only the desktop's owner changes it), else from `HF_ENDPOINT` or the hub.
    /// Progress and the outcome arrive as phases.
    pub fn start_download(
        &self,
        service: &ChatService,
        entry_id: &str,
        dir: PathBuf,
    ) -> Result<(), WizardError> {
        let entry = catalogue::find(entry_id)
            .ok_or_else(|| WizardError::UnknownEntry(entry_id.to_owned()))?;
        let control = DownloadControl::new();
        let options = {
            let mut job = self.job();
            if matches!(
                job.phase,
                Phase::Downloading { .. } | Phase::Verifying { .. } | Phase::Loading { .. }
            ) {
                return Err(WizardError::Busy);
            }
            job.control = Some(control.clone());
            job.options.clone()
        };
        let mirror = service.settings().hub_mirror;
        let config = HubConfig::from_env(Some(mirror.as_str()).filter(|m| !m.trim().is_empty()));
        let downloader = Downloader::new(config, options)?;
        let specs = entry.download_specs(&dir);
        let id = entry.id.to_owned();
        self.set(Phase::Downloading {
            entry: id.clone(),
            file: entry.model.file.to_owned(),
            progress: Progress {
                done: 0,
                total: None,
                bytes_per_sec: 0.0,
                eta_secs: None,
            },
            note: None,
        });
        let wizard = self.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let mut model_path = None;
            for spec in &specs {
                let file = spec.remote.local_name().to_owned();
                let w = wizard.clone();
                let (entry, name) = (id.clone(), file.clone());
                let on_event = move |ev: DownloadEvent| match ev {
                    DownloadEvent::Progress(progress) => w.set(Phase::Downloading {
                        entry: entry.clone(),
                        file: name.clone(),
                        progress,
                        note: None,
                    }),
                    DownloadEvent::Retrying {
                        attempt,
                        max_retries,
                        reason,
                        ..
                    } => {
                        let progress = match w.phase() {
                            Phase::Downloading { progress, .. } => progress,
                            _ => Progress {
                                done: 0,
                                total: None,
                                bytes_per_sec: 0.0,
                                eta_secs: None,
                            },
                        };
                        w.set(Phase::Downloading {
                            entry: entry.clone(),
                            file: name.clone(),
                            progress,
                            note: Some(format!(
                                "{reason}; trying again ({attempt} of {max_retries})…"
                            )),
                        });
                    }
                    DownloadEvent::Verifying => w.set(Phase::Verifying { file: name.clone() }),
                    _ => {}
                };
                match downloader.download(spec, &control, &on_event).await {
                    Ok(DownloadOutcome::Completed { path, .. }) => {
                        model_path.get_or_insert(path);
                    }
                    Ok(DownloadOutcome::Paused { bytes, .. }) => {
                        let total = match wizard.phase() {
                            Phase::Downloading { progress, .. } => progress.total,
                            _ => None,
                        };
                        wizard.set(Phase::Paused {
                            entry: id,
                            bytes,
                            total,
                        });
                        return;
                    }
                    Ok(DownloadOutcome::Cancelled) => {
                        wizard.set(Phase::Cancelled);
                        return;
                    }
                    // A companion (tokenizer.json) is a nicety: the model file carries a
                    // tokenizer of its own, so a mirror that only has the model still works.
                    Err(e) if model_path.is_some() => {
                        tracing::warn!(error = %e, file, "optional file not downloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, file, "download failed");
                        wizard.set(Phase::Failed {
                            entry: Some(id),
                            title: failure_title(&e).to_owned(),
                            message: e.to_string(),
                        });
                        return;
                    }
                }
            }
            if let Some(path) = model_path {
                let w = wizard.clone();
                let done =
                    tokio::task::spawn_blocking(move || w.finish(&service, &path, Some(id))).await;
                if let Err(e) = done {
                    tracing::warn!(error = %e, "model check stopped");
                }
            }
        });
        Ok(())
    }

    /// Pauses the running download (the partial file is kept).
    pub fn pause(&self) {
        if let Some(c) = &self.job().control {
            c.pause();
        }
    }

    /// Cancels the running or paused download and removes its partial file.
    pub fn cancel(&self, dir: &Path) {
        let (control, phase) = {
            let job = self.job();
            (job.control.clone(), job.phase.clone())
        };
        match phase {
            Phase::Paused { entry, .. } => {
                // Nothing runs: remove what the paused download kept.
                if let Some(e) = catalogue::find(&entry) {
                    for part in ["part", "part.json"] {
                        let _ = std::fs::remove_file(
                            dir.join(format!("{}.{part}", e.model.remote().local_name())),
                        );
                    }
                }
                self.set(Phase::Cancelled);
            }
            _ => {
                if let Some(c) = control {
                    c.cancel();
                }
            }
        }
    }

    /// Resumes a paused download, or retries a failed one.
    pub fn resume(&self, service: &ChatService, dir: PathBuf) -> Result<(), WizardError> {
        let phase = self.job().phase.clone();
        match phase {
            Phase::Paused { entry, .. }
            | Phase::Failed {
                entry: Some(entry), ..
            } => self.start_download(service, &entry, dir),
            _ => Err(WizardError::Invalid(
                "There is no download to resume.".into(),
            )),
        }
    }

    /// Brings a `.gguf` the user has into `dir` after checking it is a usable model, then
    /// saves it in the settings and loads it. Blocking: validation reads the whole model.
    pub fn import(
        &self,
        service: &ChatService,
        path: &Path,
        dir: &Path,
    ) -> Result<PathBuf, WizardError> {
        if path.as_os_str().is_empty() {
            return Err(WizardError::Invalid(
                "Type the path of a .gguf file first.".into(),
            ));
        }
        if !path.is_file() {
            return Err(WizardError::Invalid(format!(
                "There is no file at {}.",
                path.display()
            )));
        }
        let model = hub::import(path, dir, ImportMode::Link, &|p| {
            crate::engine::loader::validate_file(p)
        })
        .or_else(|e| match e {
            // Imported before: use the copy already in the folder.
            HubError::InvalidInput(_) => {
                let existing = dir.join(path.file_name().unwrap_or_default());
                if existing.is_file() {
                    Ok(hub::LocalModel {
                        name: String::new(),
                        size: 0,
                        sha256: None,
                        path: existing,
                    })
                } else {
                    Err(e)
                }
            }
            other => Err(other),
        })
        .map_err(|e| match e {
            HubError::InvalidModel { path, reason } => WizardError::Invalid(format!(
                "{} is not a usable SmolLM3 model: {reason}",
                path.display()
            )),
            other => WizardError::Hub(other),
        })?;
        self.use_model(service, &model.path);
        Ok(model.path)
    }

    /// Checks a downloaded file, then saves and loads it; failures become a phase.
    fn finish(&self, service: &ChatService, path: &Path, entry: Option<String>) {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.set(Phase::Verifying { file });
        if let Err(e) = crate::engine::loader::validate_file(path) {
            self.set(Phase::Failed {
                entry,
                title: "The downloaded file is not a usable model".into(),
                message: format!("{e:#}"),
            });
            return;
        }
        self.use_model(service, path);
    }

    /// Saves `path` as the model in the settings and loads it in the background.
    fn use_model(&self, service: &ChatService, path: &Path) {
        let mut settings = service.settings();
        settings.model_path = path.display().to_string();
        settings.tokenizer_path.clear();
        // Saved without the settings' own reload: the wizard loads it below and follows it.
        if let Err(e) = service.store_settings(settings) {
            self.set(Phase::Failed {
                entry: None,
                title: "The settings could not be saved".into(),
                message: e.to_string(),
            });
            return;
        }
        self.set(Phase::Loading {
            path: path.to_path_buf(),
        });
        let wizard = self.clone();
        let service = service.clone();
        let path = path.to_path_buf();
        std::thread::spawn(move || match load_model(&service, &path) {
            Ok(()) => wizard.set(Phase::Ready { path }),
            Err(message) => wizard.set(Phase::Failed {
                entry: None,
                title: "The model could not be loaded".into(),
                message,
            }),
        });
    }
}

/// Loads the model at `path` with the settings' options and makes it the one replies use,
/// replacing the current one cleanly (see [`ChatService::switch_model`]); the status bar
/// follows. Blocking. The error is for a person.
pub fn load_model(service: &ChatService, path: &Path) -> Result<(), String> {
    service.switch_model(path, None)
}
