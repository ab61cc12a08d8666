//! The first-run wizard's core: getting a model onto the machine and loaded, when none is.
//!
//! A download runs as a background task through the hub's [`Downloader`]; what it does is
//! published as [`Phase`] snapshots on a broadcast channel (at most four a second while bytes
//! arrive) that the shells forward to the page the same way as reply deltas. Once a file is
//! verified it is validated as a SmolLM3 model, its path is saved in the settings, and the
//! model is loaded with [`load_model`]. The state these steps change is in `app::wizard_state`.

use std::path::{Path, PathBuf};

use super::service::{ChatService, EngineState};
pub use super::wizard_state::{failure_title, free_space, Phase, Wizard, WizardError};
use crate::hub::{
    self, catalogue, DownloadControl, DownloadEvent, DownloadOutcome, Downloader, HubConfig,
    HubError, ImportMode, Progress,
};

/// Why the configured model cannot be used, or `None` when it looks usable.
/// Cheap: checks the file is there and starts like a GGUF; loading it checks the rest.
pub fn model_problem(service: &ChatService) -> Option<String> {
    if service.uses_a_server() {
        // A server answers; its problems show in the status bar, not as a missing model.
        return None;
    }
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
        // Said from the first instant, until the first byte arrives.
        let connecting = format!(
            "Connecting to {}…",
            reqwest::Url::parse(&config.endpoint)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_else(|| config.endpoint.clone())
        );
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
            note: Some(connecting),
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
                        delay_ms,
                        reason,
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
                                "{}; retrying in {} s ({attempt} of {max_retries})…",
                                capitalized(&reason),
                                delay_ms.div_ceil(1000)
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

    /// Clears a failure shown on the models screen (the wizard's own panel offers its buttons).
    pub fn dismiss_failure(&self) {
        if matches!(self.phase(), Phase::Failed { .. }) {
            self.set(Phase::Idle);
        }
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

    /// Imports a `.gguf` dropped onto the window into the models folder and loads it; a file
    /// that cannot be used also becomes the wizard's failed phase, so the wizard shows why.
    pub fn import_dropped(&self, service: &ChatService, path: &Path) -> Result<(), WizardError> {
        let result = self
            .models_dir()
            .and_then(|dir| self.import(service, path, &dir).map(drop));
        if let Err(e) = &result {
            self.set(Phase::Failed {
                entry: None,
                title: "The dropped file cannot be used".into(),
                message: e.to_string(),
            });
        }
        result
    }

    /// Uses a model found on this computer where it lies (no copy: it belongs to the tool
    /// that downloaded it). Only a file the search offers now is accepted, so the page cannot
    /// name just any path. Blocking: the search reads each candidate's header.
    pub fn use_found(&self, service: &ChatService, path: &Path) -> Result<PathBuf, WizardError> {
        if !found_models().iter().any(|f| f.path == path) {
            return Err(WizardError::Invalid(format!(
                "{} is not among the models found on this computer.",
                path.display()
            )));
        }
        self.use_model(service, path);
        Ok(path.to_path_buf())
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
    pub(crate) fn use_model(&self, service: &ChatService, path: &Path) {
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

/// SmolLM3 models other tools keep in the standard places (the Hugging Face cache, LM
/// Studio, llama.cpp's cache), checked from their headers. Blocking; a fraction of a second.
pub fn found_models() -> Vec<hub::found::FoundModel> {
    hub::found::find(
        &hub::found::standard_places(),
        &crate::engine::loader::check_header,
    )
}

/// Loads the model at `path` with the settings' options and makes it the one replies use,
/// replacing the current one cleanly (see [`ChatService::switch_model`]); the status bar
/// follows. Blocking. The error is for a person.
pub fn load_model(service: &ChatService, path: &Path) -> Result<(), String> {
    service.switch_model(path, None)
}

/// `text` with its first letter in capitals, to start a sentence with a lower-level reason.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
