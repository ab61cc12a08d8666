//! The first-run wizard's state: where it stands ([`Phase`], broadcast on every change), the
//! running download's control and the folder models go to. The steps that change it (download,
//! import, load) are in `app::wizard`, which needs the chat service; this file does not, so the
//! service can own a [`Wizard`] without the two needing each other.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::hub::{self, DownloadControl, DownloadOptions, HubError, Progress};

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

pub(super) struct Job {
    pub(super) phase: Phase,
    pub(super) control: Option<DownloadControl>,
    dismissed: bool,
    dir: Option<PathBuf>,
    pub(super) options: DownloadOptions,
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

impl Wizard {
    pub(super) fn job(&self) -> MutexGuard<'_, Job> {
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

    pub(super) fn set(&self, phase: Phase) {
        self.job().phase = phase.clone();
        // Nobody listening is fine: the page asks for the phase when it opens.
        let _ = self.events.send(phase);
    }
}
