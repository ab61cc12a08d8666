//! The first-run wizard's pages and actions: welcome → choose a model (or import a local
//! `.gguf`) → download with live progress → verify → load → chat.
//!
//! The main page shows the wizard instead of the chat while no usable model is configured
//! (see [`needed`]). These routes belong to the desktop app alone (its owner is the machine's
//! user): `serve` never mounts them, since downloading to and importing from the server's disk,
//! or choosing where downloads come from, is not for whoever can reach a port. The download
//! mirror is a setting, not a request parameter. Progress reaches the page like reply deltas do: as `chat-stream` events
//! of type `download` (Tauri events in the desktop, SSE from `/wizard/events` in a browser),
//! each carrying server-rendered HTML for the progress bar and the panel around it.

use std::convert::Infallible;
use std::path::{Path, PathBuf};

use axum::extract::{Form, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::handler::{layout_html, Scoped, UiError, STREAM_EVENT};
use super::html;
use crate::app::service::ChatService;
use crate::app::wizard::{self, Phase, WizardError};
use crate::hub::error::human_bytes;
use crate::hub::{catalogue, Progress};
use crate::view::{render, safe};
use minijinja::context;
use minijinja::value::Value;

/// The wizard's routes, to merge into the app's router.
pub fn routes() -> Router<ChatService> {
    Router::new()
        .route("/wizard", get(panel))
        .route("/wizard/choose", get(choose))
        .route("/wizard/download", post(download))
        .route("/wizard/mirror", post(mirror))
        .route("/wizard/pause", post(pause))
        .route("/wizard/resume", post(resume))
        .route("/wizard/cancel", post(cancel))
        .route("/wizard/import", post(import))
        .route("/wizard/use", post(use_found))
        .route("/wizard/skip", post(skip))
        .route("/wizard/events", get(events))
}

/// Whether the main page should show the wizard rather than the chat: no model is
/// configured, or the configured one is missing or unusable, and none is loaded.
pub fn needed(s: &ChatService) -> Option<String> {
    if s.wizard().dismissed()
        || matches!(
            s.engine_state(),
            crate::app::EngineState::Ready { .. } | crate::app::EngineState::Kept { .. }
        )
    {
        return None;
    }
    wizard::model_problem(s)
}

/// The app element in wizard mode (in place of sidebar and chat); `reason` says why it shows.
pub fn app(s: &ChatService, reason: &str) -> String {
    render(
        "wizard_app.html",
        context! {
            main => safe(main(&s.wizard().phase(), reason)),
            theme => safe(html::theme_state(s.settings().theme, false)),
        },
    )
}

fn main(phase: &Phase, reason: &str) -> String {
    let inner = match phase {
        Phase::Idle | Phase::Cancelled => render("wizard_welcome.html", context! { reason }),
        other => progress_panel(other),
    };
    render("wizard_main.html", context! { inner => safe(inner) })
}

fn choose_html(s: &ChatService, error: Option<&str>, import_path: &str) -> String {
    let dir = s.wizard().models_dir().ok();
    let free = dir.as_deref().and_then(wizard::free_space);
    render(
        "wizard_choose.html",
        context! {
            error,
            folder => folder_line(dir.as_deref(), free),
            entries => catalogue_entries(free, &[]),
            found => found_entries(&[]),
            mirror => s.settings().hub_mirror,
            path => import_path,
        },
    )
}

/// SmolLM3 models other tools keep on this computer, for a template, leaving out `except`.
pub(super) fn found_entries(except: &[&Path]) -> Vec<Value> {
    wizard::found_models()
        .iter()
        .filter(|f| !except.contains(&f.path.as_path()))
        .map(|f| {
            context! {
                label => f.label,
                tool => f.tool,
                size => human_bytes(f.size),
                path => f.path.display().to_string(),
            }
        })
        .collect()
}

/// The catalogue for a template, leaving out the files named in `except`; `free` is the
/// models folder's free space, when known.
pub(super) fn catalogue_entries(free: Option<u64>, except: &[&str]) -> Vec<Value> {
    catalogue()
        .iter()
        .filter(|e| !except.contains(&e.model.remote().local_name()))
        .map(|e| {
            context! {
                default => e.default,
                description => e.description,
                file => e.model.file,
                size => human_bytes(e.approx_size),
                ram => human_bytes(e.ram_needed),
                fits => free.is_none_or(|f| f > e.approx_size),
                id => e.id,
            }
        })
        .collect()
}

/// Where models are kept and how much room is left, in a sentence.
pub(super) fn folder_line(dir: Option<&Path>, free: Option<u64>) -> String {
    match (dir, free) {
        (Some(d), Some(f)) => format!(
            "Models are kept in {} ({} free).",
            d.display(),
            human_bytes(f)
        ),
        (Some(d), None) => format!("Models are kept in {}.", d.display()),
        (None, _) => "No models folder is known for this system: set SMOLLM3_MODELS_DIR.".into(),
    }
}

fn pct(done: u64, total: Option<u64>) -> Option<f64> {
    total
        .filter(|&t| t > 0)
        .map(|t| (done as f64 * 100.0 / t as f64).min(100.0))
}

fn eta(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

/// The progress bar alone: replaced several times a second while bytes arrive.
pub fn bar(phase: &Phase) -> String {
    let (done, total, detail) = match phase {
        Phase::Downloading { progress, note, .. } => {
            let Progress {
                done,
                total,
                bytes_per_sec,
                eta_secs,
            } = progress;
            let mut d = match total {
                Some(t) => format!("{} of {}", human_bytes(*done), human_bytes(*t)),
                None => human_bytes(*done),
            };
            if *bytes_per_sec > 0.0 {
                d.push_str(&format!(" · {}/s", human_bytes(*bytes_per_sec as u64)));
            }
            if let Some(e) = eta_secs {
                d.push_str(&format!(" · {} left", eta(*e)));
            }
            if let Some(n) = note {
                d.push_str(&format!(" · {n}"));
            }
            (*done, *total, d)
        }
        Phase::Paused { bytes, total, .. } => {
            (*bytes, *total, format!("Paused at {}", human_bytes(*bytes)))
        }
        Phase::Verifying { .. } | Phase::Loading { .. } | Phase::Ready { .. } => {
            (1, Some(1), String::new())
        }
        _ => (0, None, String::new()),
    };
    let p = pct(done, total);
    let label = p.map(|p| format!("{p:.0}%")).unwrap_or_default();
    render(
        "download_bar.html",
        context! {
            done,
            value => format!("{:.1}", p.unwrap_or(0.0)),
            label,
            detail,
        },
    )
}

/// Phase names the page compares to know when the panel (not only the bar) must change.
pub fn phase_name(phase: &Phase) -> &'static str {
    match phase {
        Phase::Idle => "idle",
        Phase::Downloading { .. } => "downloading",
        Phase::Paused { .. } => "paused",
        Phase::Verifying { .. } => "verifying",
        Phase::Loading { .. } => "loading",
        Phase::Ready { .. } => "ready",
        Phase::Failed { .. } => "failed",
        Phase::Cancelled => "cancelled",
    }
}

/// The title of a download, check or load under way, or of its failure, and the sentence under
/// it: what the wizard's panel and the models screen both say.
pub(super) fn task_text(phase: &Phase) -> Option<(String, Option<String>)> {
    Some(match phase {
        Phase::Downloading { file, .. } => (format!("Downloading {file}"), None),
        Phase::Paused { .. } => (
            "Download paused".into(),
            Some("The part already downloaded is kept.".into()),
        ),
        Phase::Verifying { file } => (
            format!("Checking {file}"),
            Some("Making sure the file is complete and is a SmolLM3 model.".into()),
        ),
        Phase::Loading { path } => ("Loading the model".into(), Some(path.display().to_string())),
        Phase::Failed { title, .. } => (title.clone(), None),
        Phase::Idle | Phase::Cancelled | Phase::Ready { .. } => return None,
    })
}

/// A download panel's parts: title, body text and its class, error, buttons.
type Panel<'a> = (
    String,
    (Option<String>, &'a str),
    Option<&'a str>,
    Vec<Value>,
);

/// The panel of a running, paused, finished or failed download, with its buttons.
pub fn progress_panel(phase: &Phase) -> String {
    let post = |label: &str, url: &str, primary: bool| context! { label, url, primary };
    let get = |label: &str, primary: bool| {
        context! { label, url => "/wizard/choose", primary, get => true }
    };
    let none = (None, "");
    let text = || task_text(phase).unwrap_or_default();
    let muted_text = || {
        let (title, body) = text();
        (title, (body, "muted"))
    };
    let (title, (body, body_class), error, buttons): Panel<'_> = match phase {
        Phase::Downloading { .. } | Phase::Paused { .. } => {
            let (title, body) = muted_text();
            let first = if matches!(phase, Phase::Paused { .. }) {
                post("Resume", "/wizard/resume", true)
            } else {
                post("Pause", "/wizard/pause", false)
            };
            (
                title,
                body,
                None,
                vec![first, post("Cancel", "/wizard/cancel", false)],
            )
        }
        Phase::Verifying { .. } | Phase::Loading { .. } => {
            let (title, body) = muted_text();
            (title, body, None, Vec::new())
        }
        Phase::Ready { path } => (
            "The model is ready".into(),
            (
                Some(format!("Saved in the settings: {}", path.display())),
                "",
            ),
            None,
            vec![context! {
                label => "Start chatting",
                url => "/layout",
                primary => true,
                id => "wizard-start-chat",
            }],
        ),
        Phase::Failed { entry, message, .. } => (
            text().0,
            none,
            Some(message.as_str()),
            entry
                .is_some()
                .then(|| post("Retry", "/wizard/resume", true))
                .into_iter()
                .chain([get("Choose another", false)])
                .collect(),
        ),
        Phase::Idle | Phase::Cancelled => (
            "Download cancelled".into(),
            none,
            None,
            vec![get("Choose a model", true)],
        ),
    };
    render(
        "download_panel.html",
        context! {
            name => phase_name(phase),
            title,
            bar => safe(bar(phase)),
            body,
            body_class,
            error,
            buttons,
        },
    )
}

/// The JSON the page receives for one phase change, over SSE or as a Tauri event.
pub fn stream_payload(phase: &Phase) -> serde_json::Value {
    json!({
        "type": "download",
        "phase": phase_name(phase),
        "state": phase,
        "bar": bar(phase),
        "html": progress_panel(phase),
    })
}

/// A refused action, shown in place of the wizard's current step.
struct WizardUiError(WizardError);

impl IntoResponse for WizardUiError {
    fn into_response(self) -> Response {
        let mut resp = (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(html::error_toast(&self.0.to_string())),
        )
            .into_response();
        resp.headers_mut()
            .insert("HX-Retarget", HeaderValue::from_static("#toast"));
        resp.headers_mut()
            .insert("HX-Reswap", HeaderValue::from_static("innerHTML"));
        resp
    }
}

impl From<WizardError> for WizardUiError {
    fn from(e: WizardError) -> Self {
        Self(e)
    }
}

async fn panel(State(s): State<ChatService>) -> Html<String> {
    let reason = needed(&s).unwrap_or_default();
    Html(main(&s.wizard().phase(), &reason))
}

// The chat it shows is the requester's own (a browser's session, or the desktop).
async fn skip(Scoped(s): Scoped) -> Result<Html<String>, UiError> {
    s.wizard().dismiss();
    Ok(Html(layout_html(&s)?))
}

async fn choose(State(s): State<ChatService>) -> Html<String> {
    Html(choose_html(&s, None, ""))
}

#[derive(Deserialize)]
struct DownloadForm {
    #[serde(default)]
    entry: String,
}

async fn download(
    State(s): State<ChatService>,
    Form(f): Form<DownloadForm>,
) -> Result<Html<String>, WizardUiError> {
    s.wizard()
        .start_download(&s, f.entry.trim(), s.wizard().models_dir()?)?;
    Ok(Html(progress_panel(&s.wizard().phase())))
}

#[derive(Deserialize)]
struct MirrorForm {
    #[serde(default)]
    mirror: String,
}

/// Saves the download mirror setting (empty: the hub) and shows the choice again.
async fn mirror(State(s): State<ChatService>, Form(f): Form<MirrorForm>) -> Response {
    let mut settings = s.settings();
    settings.hub_mirror = f.mirror.trim().to_owned();
    match s.update_settings(settings) {
        Ok(()) => Html(choose_html(&s, None, "")).into_response(),
        Err(e) => {
            let message = match e {
                crate::app::ServiceError::Settings(bad) => bad
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
                other => other.to_string(),
            };
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Html(choose_html(&s, Some(&message), "")),
            )
                .into_response()
        }
    }
}

async fn pause(State(s): State<ChatService>) -> Html<String> {
    s.wizard().pause();
    Html(progress_panel(&s.wizard().phase()))
}

async fn resume(State(s): State<ChatService>) -> Result<Html<String>, WizardUiError> {
    s.wizard().resume(&s, s.wizard().models_dir()?)?;
    Ok(Html(progress_panel(&s.wizard().phase())))
}

async fn cancel(State(s): State<ChatService>) -> Result<Html<String>, WizardUiError> {
    s.wizard().cancel(&s.wizard().models_dir()?);
    Ok(Html(choose_html(&s, None, "")))
}

#[derive(Deserialize)]
struct ImportForm {
    #[serde(default)]
    path: String,
}

async fn import(State(s): State<ChatService>, Form(f): Form<ImportForm>) -> Response {
    let typed = f.path.trim().to_owned();
    let path = PathBuf::from(&typed);
    let service = s.clone();
    let result = tokio::task::spawn_blocking(move || {
        let dir = service.wizard().models_dir()?;
        service.wizard().import(&service, &path, &dir)
    })
    .await;
    match result {
        Ok(Ok(_)) => Html(progress_panel(&s.wizard().phase())).into_response(),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(choose_html(&s, Some(&e.to_string()), &typed)),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Html(choose_html(
                &s,
                Some(&format!("The import stopped: {e}")),
                &typed,
            )),
        )
            .into_response(),
    }
}

/// Uses a model found on this computer in place, then shows it loading.
async fn use_found(State(s): State<ChatService>, Form(f): Form<ImportForm>) -> Response {
    let path = PathBuf::from(f.path.trim());
    let service = s.clone();
    let result = tokio::task::spawn_blocking(move || service.wizard().use_found(&service, &path))
        .await
        .map_err(|e| format!("The search stopped: {e}"))
        .and_then(|r| r.map_err(|e| e.to_string()));
    match result {
        Ok(_) => Html(progress_panel(&s.wizard().phase())).into_response(),
        Err(message) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(choose_html(&s, Some(&message), "")),
        )
            .into_response(),
    }
}

async fn events(
    State(s): State<ChatService>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = s.wizard().subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(phase) => {
                    let data = stream_payload(&phase).to_string();
                    return Some((Ok(Event::default().event(STREAM_EVENT).data(data)), rx));
                }
                // Each event carries the whole state, so a skipped one costs nothing.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Sends every wizard phase change to the desktop window as a `chat-stream` event.
#[cfg(feature = "desktop")]
pub fn forward_to_window<R: tauri::Runtime>(app: &tauri::AppHandle<R>, service: &ChatService) {
    use tauri::Emitter;
    let mut rx = service.wizard().subscribe();
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(phase) => {
                    if let Err(e) = app.emit(STREAM_EVENT, stream_payload(&phase)) {
                        tracing::warn!(error = %e, "could not send download progress to the window");
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => break,
            }
        }
    });
}
