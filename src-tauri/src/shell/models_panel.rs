//! The desktop's models screen (Settings → Models…, or `/models` in the composer): the models
//! on this computer with their quantization, size and path, which one is in use, switching,
//! deleting (asked twice), downloading another catalogue entry and importing a file. Downloads,
//! imports and loading are the first-run wizard's own (`app::wizard`), with its progress
//! events; this screen shows them in the dialog instead of the wizard's page. Only the
//! desktop's owner reaches these routes: files on the machine are not for a browser.

use std::path::{Path, PathBuf};

use axum::extract::Form;
use axum::response::Html;
use axum::routing::{get, post};
use axum::Router;
use minijinja::context;
use minijinja::value::Value;
use serde::Deserialize;

use super::handler::{desktop_only, Result, Scoped};
use crate::app::model_library;
use crate::app::service::{ChatService, ServiceError};
use crate::app::wizard::{self, Phase, WizardError};
use crate::hub::error::human_bytes;
use crate::hub::{self, catalogue};
use crate::view::{render, safe};

/// The screen's routes, for the desktop's router.
pub fn routes() -> Router<ChatService> {
    Router::new()
        .route("/models", get(panel))
        .route("/models/download", post(download))
        .route("/models/use", post(use_model))
        .route("/models/delete", post(delete))
        .route("/models/import", post(import))
        .route("/models/pause", post(pause))
        .route("/models/resume", post(resume))
        .route("/models/cancel", post(cancel))
        .route("/models/dismiss", post(dismiss))
}

/// What the screen shows besides the lists: an error, and a model whose deletion is asked.
#[derive(Default)]
struct Shown<'a> {
    error: Option<String>,
    confirm: Option<&'a str>,
}

/// Renders the screen; blocking (reads the models' headers and looks in other tools' folders).
fn render_panel(s: &ChatService, shown: Shown<'_>) -> String {
    let mut error = shown.error;
    let installed = model_library::installed(s).unwrap_or_else(|e| {
        error.get_or_insert_with(|| e.to_string());
        Vec::new()
    });
    let installed_names: Vec<&str> = installed.iter().map(|m| m.name.as_str()).collect();
    let phase = s.wizard().phase();
    let busy = matches!(
        phase,
        Phase::Downloading { .. } | Phase::Verifying { .. } | Phase::Loading { .. }
    );
    let dir = s.wizard().models_dir().ok();
    let free = dir.as_deref().and_then(wizard::free_space);
    let partials = dir
        .as_deref()
        .and_then(|d| hub::partials(d).ok())
        .unwrap_or_default();
    // A download that runs is shown with its bar, not as a stopped one.
    let running = match &phase {
        Phase::Downloading { file, .. } => Some(file.as_str()),
        _ => None,
    };
    let partials: Vec<Value> = partials
        .iter()
        .filter(|p| Some(p.name.as_str()) != running)
        .map(|p| {
            let entry = catalogue()
                .iter()
                .find(|e| e.model.remote().local_name() == p.name)
                .map(|e| e.id);
            let done = match p.total {
                Some(t) => format!("{} of {}", human_bytes(p.bytes), human_bytes(t)),
                None => human_bytes(p.bytes),
            };
            context! { name => p.name, done, entry }
        })
        .collect();
    let paths: Vec<&Path> = installed.iter().map(|m| m.path.as_path()).collect();
    let found = super::wizard::found_entries(&paths);
    let entries = super::wizard::catalogue_entries(free, &installed_names);
    let folder = super::wizard::folder_line(dir.as_deref(), free);
    let installed: Vec<Value> = installed
        .iter()
        .map(|m| {
            context! {
                name => m.name,
                path => m.path.display().to_string(),
                size => human_bytes(m.size),
                quantization => m.quantization.clone().unwrap_or_else(|| "unreadable header".into()),
                in_use => m.in_use,
                elsewhere => m.elsewhere,
                confirm => shown.confirm == Some(m.name.as_str()),
            }
        })
        .collect();
    render(
        "models_panel.html",
        context! {
            error,
            task => task(&phase),
            installed,
            partials,
            found,
            entries,
            folder,
            busy,
        },
    )
}

/// The download, check or load under way (or the last one's failure), with its buttons.
fn task(phase: &Phase) -> Option<Value> {
    let (title, body) = super::wizard::task_text(phase)?;
    let button = |action: &str, label: &str, primary: bool| context! { action, label, primary };
    let (buttons, error) = match phase {
        Phase::Downloading { .. } => (
            vec![
                button("pause", "Pause", false),
                button("cancel", "Cancel", false),
            ],
            None,
        ),
        Phase::Paused { .. } => (
            vec![
                button("resume", "Resume", true),
                button("cancel", "Cancel", false),
            ],
            None,
        ),
        Phase::Failed { entry, message, .. } => (
            entry
                .is_some()
                .then(|| button("resume", "Retry", true))
                .into_iter()
                .chain([button("dismiss", "Dismiss", false)])
                .collect(),
            Some(message.clone()),
        ),
        _ => (Vec::new(), None),
    };
    let with_bar = matches!(
        phase,
        Phase::Downloading { .. } | Phase::Paused { .. } | Phase::Verifying { .. }
    );
    Some(context! {
        phase => super::wizard::phase_name(phase),
        title,
        body,
        error,
        buttons,
        bar => with_bar.then(|| safe(super::wizard::bar(phase))),
    })
}

/// Runs a blocking action of the screen, then renders it with the action's error, if any.
async fn act(
    s: ChatService,
    action: impl FnOnce(&ChatService) -> std::result::Result<(), WizardError> + Send + 'static,
) -> Result<Html<String>> {
    desktop_only(&s)?;
    let html = tokio::task::spawn_blocking(move || {
        let error = action(&s).err().map(|e| e.to_string());
        render_panel(
            &s,
            Shown {
                error,
                confirm: None,
            },
        )
    })
    .await
    .map_err(|e| ServiceError::Storage(format!("the models screen stopped: {e}")))?;
    Ok(Html(html))
}

async fn panel(Scoped(s): Scoped) -> Result<Html<String>> {
    act(s, |_| Ok(())).await
}

#[derive(Deserialize)]
struct EntryForm {
    #[serde(default)]
    entry: String,
}

async fn download(Scoped(s): Scoped, Form(f): Form<EntryForm>) -> Result<Html<String>> {
    act(s, move |s| {
        s.wizard()
            .start_download(s, f.entry.trim(), s.wizard().models_dir()?)
    })
    .await
}

#[derive(Deserialize)]
struct PathForm {
    #[serde(default)]
    path: String,
}

async fn use_model(Scoped(s): Scoped, Form(f): Form<PathForm>) -> Result<Html<String>> {
    act(s, move |s| {
        model_library::switch(s, &PathBuf::from(f.path.trim()))
    })
    .await
}

async fn import(Scoped(s): Scoped, Form(f): Form<PathForm>) -> Result<Html<String>> {
    act(s, move |s| {
        let dir = s.wizard().models_dir()?;
        s.wizard()
            .import(s, &PathBuf::from(f.path.trim()), &dir)
            .map(drop)
    })
    .await
}

#[derive(Deserialize)]
struct DeleteForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    confirm: String,
}

/// Asks first (the screen shows the question in the model's row); deletes when confirmed.
async fn delete(Scoped(s): Scoped, Form(f): Form<DeleteForm>) -> Result<Html<String>> {
    desktop_only(&s)?;
    if f.confirm != "yes" {
        let html = tokio::task::spawn_blocking(move || {
            render_panel(
                &s,
                Shown {
                    error: None,
                    confirm: Some(f.name.trim()),
                },
            )
        })
        .await
        .map_err(|e| ServiceError::Storage(format!("the models screen stopped: {e}")))?;
        return Ok(Html(html));
    }
    act(s, move |s| model_library::delete(s, f.name.trim())).await
}

async fn pause(Scoped(s): Scoped) -> Result<Html<String>> {
    act(s, |s| {
        s.wizard().pause();
        Ok(())
    })
    .await
}

async fn resume(Scoped(s): Scoped) -> Result<Html<String>> {
    act(s, |s| s.wizard().resume(s, s.wizard().models_dir()?)).await
}

async fn cancel(Scoped(s): Scoped) -> Result<Html<String>> {
    act(s, |s| {
        s.wizard().cancel(&s.wizard().models_dir()?);
        Ok(())
    })
    .await
}

async fn dismiss(Scoped(s): Scoped) -> Result<Html<String>> {
    act(s, |s| {
        s.wizard().dismiss_failure();
        Ok(())
    })
    .await
}
