//! The models on this computer after the first run: what is installed, which one is in use,
//! switching to another and deleting one. Downloads and imports are the wizard's own
//! ([`Wizard::start_download`], [`Wizard::import`]); the models screen only adds these.

use std::path::{Path, PathBuf};

use super::service::ChatService;
use super::wizard::{self, Phase, Wizard, WizardError};
use crate::hub;

/// A model the screen lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledModel {
    /// File name, e.g. `SmolLM3-Q4_K_M.gguf`.
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// `Q4_K_M`, `Q8_0`…, from its header; `None` when the header cannot be read.
    pub quantization: Option<String>,
    /// Whether replies use it (the model in the settings).
    pub in_use: bool,
    /// Whether it lies outside the models folder (found on this computer, or set by path):
    /// the screen never deletes such a file, which another tool may own.
    pub elsewhere: bool,
}

/// The models in the folder, sorted by name, and the one in use when it lies elsewhere
/// (listed first). Blocking: reads each file's header.
pub fn installed(service: &ChatService) -> Result<Vec<InstalledModel>, WizardError> {
    let dir = service.wizard().models_dir()?;
    let in_use = service.model_files().0.map(|p| same_file_key(&p));
    let describe = |path: PathBuf, name: String, size: u64, elsewhere: bool| InstalledModel {
        quantization: crate::model::GgufFile::open(&path)
            .ok()
            .map(|g| g.quantization()),
        in_use: in_use.as_ref() == Some(&same_file_key(&path)),
        name,
        path,
        size,
        elsewhere,
    };
    let mut out: Vec<InstalledModel> = hub::list(&dir)?
        .into_iter()
        .map(|m| describe(m.path, m.name, m.size, false))
        .collect();
    if let Some(path) = service.model_files().0 {
        if !out.iter().any(|m| m.in_use) && path.is_file() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            out.insert(0, describe(path, name, size, true));
        }
    }
    Ok(out)
}

/// Makes an installed model (or one found on this computer) the one replies use: saved in the
/// settings and loaded in the background, its progress published as wizard phases. Refused
/// while a download, check or load runs, so one does not hide the other. Blocking.
pub fn switch(service: &ChatService, path: &Path) -> Result<(), WizardError> {
    let wizard = service.wizard();
    refuse_while_busy(wizard)?;
    let listed = installed(service)?.iter().any(|m| m.path == path)
        || wizard::found_models().iter().any(|f| f.path == path);
    if !listed {
        return Err(WizardError::Invalid(format!(
            "{} is not among the models on this computer.",
            path.display()
        )));
    }
    wizard.use_model(service, path);
    Ok(())
}

/// Deletes a model from the models folder, with its digest record, prepared weights and the
/// conversations' KV snapshots made with it. The model in use is refused (it is mapped in
/// memory and the settings name it): switch first. Blocking.
pub fn delete(service: &ChatService, name: &str) -> Result<(), WizardError> {
    let model = installed(service)?
        .into_iter()
        .find(|m| m.name == name && !m.elsewhere)
        .ok_or_else(|| {
            WizardError::Invalid(format!(
                "There is no model named “{name}” in the models folder."
            ))
        })?;
    if model.in_use {
        return Err(WizardError::Invalid(format!(
            "{name} is the model in use: switch to another one first."
        )));
    }
    if let Some(dir) = service.snapshot_dir() {
        crate::engine::snapshot::Snapshots::remove_for_model_file(&dir, &model.path);
    }
    let dir = service.wizard().models_dir()?;
    hub::remove(&dir, name)?;
    tracing::info!(model = %model.path.display(), "model deleted");
    Ok(())
}

fn refuse_while_busy(wizard: &Wizard) -> Result<(), WizardError> {
    match wizard.phase() {
        Phase::Downloading { .. } | Phase::Verifying { .. } | Phase::Loading { .. } => {
            Err(WizardError::Invalid(
                "A model is being downloaded or loaded: wait for it, or cancel the download."
                    .into(),
            ))
        }
        _ => Ok(()),
    }
}

/// A path to compare files by: the file it leads to, when it can be resolved.
fn same_file_key(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}
