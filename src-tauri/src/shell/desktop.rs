//! The desktop shell: a Tauri window whose HTML comes from the same axum router the browser
//! uses. The page's htmx requests reach the router through the `hx` command (in-process, no
//! port opened) and reply deltas arrive as Tauri events with the payload the SSE path sends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tauri::{AppHandle, Builder, Emitter, Manager, Runtime};
use tokio::sync::broadcast::error::RecvError;
use tower::ServiceExt;

pub use super::data_dir::{database_path, DATA_DIR_ENV};
use super::http::{self, STREAM_EVENT};
use super::local_server::LocalServer;
use crate::app::service::{ChatService, EngineState, ModelOverride};

/// An HTTP request as the page's glue script sends it.
#[derive(Debug, Clone, Deserialize)]
pub struct HxRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path and query, such as `/conversations?q=rust`.
    pub url: String,
    /// Request headers.
    #[serde(default)]
    pub headers: HashMap<String, String>,
    /// URL-encoded form body (empty for `GET`).
    #[serde(default)]
    pub body: String,
}

/// The router's answer, handed back to the page.
#[derive(Debug, Clone, Serialize)]
pub struct HxResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers (htmx reads `HX-*` ones).
    pub headers: HashMap<String, String>,
    /// The HTML.
    pub body: String,
}

/// What the `hx` command needs: the router, built once.
pub struct Bridge {
    router: Router,
}

impl Bridge {
    /// A bridge over the router of `service`.
    pub fn new(service: ChatService) -> Self {
        Self {
            router: http::router(service),
        }
    }

    /// A bridge over the router of `service` with the dialog of the app's `server`.
    pub fn with_server(service: ChatService, server: LocalServer) -> Self {
        Self {
            router: http::router_with_server(service, server),
        }
    }

    /// A bridge for a window that cannot use its data (another process holds the folder, or
    /// it cannot be opened): every page says why, in place of the app.
    pub fn unavailable(message: &str) -> Self {
        let page = super::html::unavailable(message);
        let router = Router::new().fallback(move || {
            let page = page.clone();
            async move {
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    axum::response::Html(page),
                )
            }
        });
        Self { router }
    }

    /// Runs one request through the router in-process.
    pub async fn call(&self, req: HxRequest) -> anyhow::Result<HxResponse> {
        let path = req.url.split('?').next().unwrap_or_default();
        if path == "/events" {
            // An endless body would never return; the desktop streams through Tauri events.
            anyhow::bail!(
                "/events is served to browsers only; the desktop receives replies as events"
            );
        }
        let mut builder = axum::http::Request::builder()
            .method(req.method.as_str())
            .uri(&req.url);
        let mut has_type = false;
        for (k, v) in &req.headers {
            has_type |= k.eq_ignore_ascii_case("content-type");
            builder = builder.header(k, v);
        }
        if !has_type && !req.body.is_empty() {
            builder = builder.header("content-type", "application/x-www-form-urlencoded");
        }
        let request = builder
            .body(Body::from(req.body))
            .context("the request from the page is malformed")?;
        let response = match self.router.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let bytes = response
            .into_body()
            .collect()
            .await
            .context("reading the router's response failed")?
            .to_bytes();
        Ok(HxResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
}

/// Tauri's commands, grouped here as the only IPC surface of the app.
pub mod commands {
    use super::{Bridge, HxRequest, HxResponse};

    /// Runs an htmx request through the app's router and returns the response.
    #[tauri::command]
    pub async fn hx(
        bridge: tauri::State<'_, Bridge>,
        request: HxRequest,
    ) -> Result<HxResponse, String> {
        bridge.call(request).await.map_err(|e| format!("{e:#}"))
    }

    /// Opens the system's file dialog for a `model` (`.gguf`) or a `tokenizer` (`.json`) and
    /// returns the chosen path, or `None` when the person closed it. The page only learns the
    /// path it is given; reading the file is the app's job.
    #[tauri::command]
    pub async fn pick_file<R: tauri::Runtime>(
        window: tauri::Window<R>,
        kind: String,
    ) -> Result<Option<String>, String> {
        use tauri_plugin_dialog::DialogExt;
        let (title, filter, extension) = match kind.as_str() {
            "model" => ("Choose a SmolLM3 model", "GGUF model", "gguf"),
            "tokenizer" => ("Choose a tokenizer", "Tokenizer", "json"),
            other => return Err(format!("unknown kind of file: {other}")),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        window
            .dialog()
            .file()
            .set_parent(&window)
            .set_title(title)
            .add_filter(filter, &[extension])
            .pick_file(move |file| {
                let _ = tx.send(file.and_then(|f| f.into_path().ok()));
            });
        let path = rx
            .await
            .map_err(|_| "the file dialog closed unexpectedly")?;
        Ok(path.map(|p| p.display().to_string()))
    }

    /// Saves a conversation (or, without one, all of them) as a file: the router makes the
    /// export (`md`, `json`, `jsonl`), the system's save dialog says where, the app writes
    /// it. The path written, or `None` when the person closed the dialog. The page never gets
    /// to write files itself.
    #[tauri::command]
    pub async fn save_export<R: tauri::Runtime>(
        window: tauri::Window<R>,
        bridge: tauri::State<'_, Bridge>,
        conversation: Option<i64>,
        format: String,
    ) -> Result<Option<String>, String> {
        use tauri_plugin_dialog::DialogExt;
        if !matches!(format.as_str(), "md" | "json" | "jsonl") {
            return Err(format!("unknown export format: {format}"));
        }
        let response = bridge
            .call(HxRequest {
                method: "GET".into(),
                url: match conversation {
                    Some(id) => format!("/conversations/{id}/export/{format}"),
                    None => format!("/conversations/export/{format}"),
                },
                headers: Default::default(),
                body: String::new(),
            })
            .await
            .map_err(|e| format!("{e:#}"))?;
        if response.status != 200 {
            return Err(format!("the export failed ({})", response.status));
        }
        let name = super::offered_name(&response.headers)
            .unwrap_or_else(|| format!("conversation.{format}"));
        let (tx, rx) = tokio::sync::oneshot::channel();
        window
            .dialog()
            .file()
            .set_parent(&window)
            .set_title(if conversation.is_some() {
                "Export the conversation"
            } else {
                "Export all conversations"
            })
            .set_file_name(&name)
            .save_file(move |file| {
                let _ = tx.send(file.and_then(|f| f.into_path().ok()));
            });
        let Some(path) = rx
            .await
            .map_err(|_| "the file dialog closed unexpectedly")?
        else {
            return Ok(None);
        };
        std::fs::write(&path, response.body.as_bytes())
            .map_err(|e| format!("could not write {}: {e}", path.display()))?;
        Ok(Some(path.display().to_string()))
    }
}

/// The file name a `Content-Disposition: attachment; filename="…"` header offers.
fn offered_name(headers: &HashMap<String, String>) -> Option<String> {
    let value = headers.get("content-disposition")?;
    let start = value.find("filename=\"")? + "filename=\"".len();
    let end = value[start..].find('"')? + start;
    Some(value[start..end].to_string()).filter(|n| !n.is_empty())
}

/// Installs the app's commands and the navigation lock on a Tauri builder; shared by the real
/// app and tests.
pub fn configure<R: Runtime>(builder: Builder<R>) -> Builder<R> {
    builder
        .plugin(tauri_plugin_opener::init())
        .plugin(tauri_plugin_dialog::init())
        .plugin(navigation_lock())
        .invoke_handler(tauri::generate_handler![
            commands::hx,
            commands::pick_file,
            commands::save_export
        ])
        .on_window_event(|window, event| {
            if let tauri::WindowEvent::DragDrop(drop) = event {
                on_drag_drop(window.app_handle(), drop);
            }
        })
}

/// A file dragged onto the window: the page shows where it can be dropped while a `.gguf` is
/// over the window, and a dropped `.gguf` is imported like one chosen in the wizard, then
/// loaded. What happens is shown as the wizard's phases (in the wizard) and in the status
/// bar (in the chat); a file that is not a usable model says why in a toast.
fn on_drag_drop<R: Runtime>(app: &AppHandle<R>, event: &tauri::DragDropEvent) {
    use tauri::DragDropEvent;
    let models = |paths: &[PathBuf]| -> Vec<PathBuf> {
        paths
            .iter()
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
            })
            .cloned()
            .collect()
    };
    let hint = |over: bool| {
        let _ = app.emit(
            STREAM_EVENT,
            serde_json::json!({ "type": "drag", "over": over }),
        );
    };
    match event {
        DragDropEvent::Enter { paths, .. } => hint(!models(paths).is_empty()),
        DragDropEvent::Leave => hint(false),
        DragDropEvent::Drop { paths, .. } => {
            hint(false);
            let Some(service) = app.try_state::<ChatService>().map(|s| s.inner().clone()) else {
                return;
            };
            let Some(path) = models(paths).into_iter().next() else {
                let toast =
                    super::html::error_toast("Only a .gguf model file can be dropped here.");
                let _ = app.emit(
                    STREAM_EVENT,
                    serde_json::json!({ "type": "toast", "html": toast }),
                );
                return;
            };
            let app = app.clone();
            std::thread::spawn(move || {
                if let Err(e) = service.wizard().import_dropped(&service, &path) {
                    let toast = super::html::error_toast(&e.to_string());
                    let _ = app.emit(
                        STREAM_EVENT,
                        serde_json::json!({ "type": "toast", "html": toast }),
                    );
                }
            });
        }
        _ => {}
    }
}

/// Whether `url` is one of the app's own pages (its bundled UI, served by Tauri's protocol:
/// `tauri://localhost` on Linux and macOS, `http(s)://tauri.localhost` on Windows).
pub fn is_app_url(url: &tauri::Url) -> bool {
    match url.scheme() {
        "tauri" => url.host_str() == Some("localhost"),
        "http" | "https" => url.host_str() == Some("tauri.localhost"),
        _ => false,
    }
}

/// Keeps every webview on the app's own pages. A reply is model text, and a link in it is a
/// link to anywhere: followed in the window, it would replace the app with a remote page that
/// runs in the app's webview. So the window never navigates away: web and mail links open in
/// the system's browser (through the opener plugin, from here, so the page itself is granted
/// no opener command), and anything else is dropped.
fn navigation_lock<R: Runtime>() -> tauri::plugin::TauriPlugin<R> {
    tauri::plugin::Builder::new("navigation-lock")
        .on_navigation(|webview, url| {
            if is_app_url(url) {
                return true;
            }
            if matches!(url.scheme(), "http" | "https" | "mailto") {
                use tauri_plugin_opener::OpenerExt;
                if let Err(e) = webview.opener().open_url(url.as_str(), None::<&str>) {
                    tracing::warn!(%url, error = %e, "cannot open the link in the browser");
                }
            } else {
                tracing::warn!(%url, "blocked a navigation away from the app");
            }
            false
        })
        .build()
}

/// Puts the chat service behind the `hx` command and forwards its reply stream as
/// `chat-stream` events to every window. The app's built-in server starts when the saved
/// settings have it on.
/// `lan_ip` is the address the server binds when other devices are allowed (none: every
/// interface).
pub fn install<R: Runtime>(app: &AppHandle<R>, service: ChatService, lan_ip: Option<IpAddr>) {
    let server = super::serve::in_app_server(service.clone(), lan_ip);
    app.manage(service.clone());
    app.manage(Bridge::with_server(service.clone(), server.clone()));
    app.manage(server.clone());
    tauri::async_runtime::spawn(async move {
        let status = server.apply().await;
        if let Some(problem) = status.problem {
            // The dialog shows it too, when opened.
            tracing::warn!("the app's server did not start: {problem}");
        }
    });
    super::wizard::forward_to_window(app, &service);
    forward_replies_to_window(app, service);
}

/// Sends the desktop's reply events to the window, text gathered for up to
/// [`batching::WINDOW_BATCH`] (the first text after a quiet spell goes at once).
fn forward_replies_to_window<R: Runtime>(app: &AppHandle<R>, service: ChatService) {
    use super::batching::{self, WINDOW_BATCH};
    use tokio::time::{timeout_at, Instant};
    let mut rx = service.subscribe();
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        let send = |pending: &mut Vec<_>| {
            for ev in pending.drain(..) {
                if let Err(e) = app.emit(STREAM_EVENT, http::stream_payload(&service, &ev)) {
                    tracing::warn!(error = %e, "could not send a reply event to the window");
                }
            }
        };
        let mut pending = Vec::new();
        // As if the last event went long ago: the first text goes at once.
        let mut last_sent = Instant::now()
            .checked_sub(WINDOW_BATCH)
            .unwrap_or_else(Instant::now);
        let mut due: Option<Instant> = None;
        loop {
            let next = match due {
                Some(at) => timeout_at(at, rx.recv()).await,
                None => Ok(rx.recv().await),
            };
            match next {
                // The gathered text has waited long enough.
                Err(_) => {
                    send(&mut pending);
                    last_sent = Instant::now();
                    due = None;
                }
                // Replies of other owners (browsers of a server in this process) stay theirs.
                Ok(Ok(ev)) if ev.owner != *service.owner() => {}
                Ok(Ok(ev)) => {
                    let text = batching::is_text(&ev);
                    batching::gather(&mut pending, ev);
                    if !text || last_sent.elapsed() >= WINDOW_BATCH {
                        send(&mut pending);
                        last_sent = Instant::now();
                        due = None;
                    } else if due.is_none() {
                        due = Some(last_sent + WINDOW_BATCH);
                    }
                }
                // The final event carries the whole message, so skipped deltas heal.
                Ok(Err(RecvError::Lagged(n))) => {
                    tracing::debug!(skipped = n, "window fell behind the stream")
                }
                Ok(Err(RecvError::Closed)) => {
                    send(&mut pending);
                    break;
                }
            }
        }
    });
}

pub use crate::app::service::ModelLoader;

/// The environment variable naming the one address the app's server binds when other
/// devices are allowed (a machine with several networks; the end-to-end test's second
/// loopback address); unset, it binds every interface.
pub const SERVER_LAN_ADDRESS_ENV: &str = "SMOLLM3_SERVER_LAN_ADDRESS";

/// The address in [`SERVER_LAN_ADDRESS_ENV`], read once at start; a value that is not an IP
/// address is reported and ignored.
pub fn server_lan_address_from_env() -> Option<IpAddr> {
    let value = std::env::var(SERVER_LAN_ADDRESS_ENV).ok()?;
    match value.trim().parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            tracing::warn!("{SERVER_LAN_ADDRESS_ENV}={value:?} is not an IP address; ignored");
            None
        }
    }
}

/// The model files named by `MODEL_PATH` and `TOKENIZER_PATH`, read once at start.
pub fn model_override_from_env() -> ModelOverride {
    let path = |env: &str| {
        std::env::var_os(env)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    ModelOverride {
        model: path("MODEL_PATH"),
        tokenizer: path("TOKENIZER_PATH"),
    }
}

/// Loads the model on a background thread so the window is usable at once; the status bar
/// shows progress, then the model or the reason there is none. `loader` stays installed, so
/// choosing another model file in the settings later loads that one in its place.
pub fn load_model_in_background(service: ChatService, loader: ModelLoader) {
    service.set_model_loader(loader);
    if let Some(server) = service.engine_server() {
        // Replies come from a saved server: no model to load here.
        std::thread::spawn(move || {
            if let Err(message) = service.use_server(server.id) {
                service.set_engine_state(EngineState::Failed {
                    message: format!("{}: {message}", server.name),
                });
            }
        });
        return;
    }
    let (model, tokenizer) = service.model_files();
    let Some(model) = model else {
        service.set_engine_state(EngineState::NoModel {
            reason: "No model is loaded. Set the model file in Settings or start the app with MODEL_PATH.".into(),
        });
        return;
    };
    service.set_engine_state(EngineState::Loading {
        model: model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        progress: 0.0,
    });
    std::thread::spawn(move || {
        let _ = service.switch_model(&model, tokenizer.as_deref());
    });
}

/// How the window's web view draws on Linux, chosen before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebviewRendering {
    /// WebKit's accelerated compositing, on the GPU the system has.
    Gpu,
    /// No GPU render node: WebKit paints without compositing, because compositing through a
    /// software OpenGL (Mesa's llvmpipe) costs several times the CPU of plain painting, and
    /// on a machine without a GPU that CPU is taken from the model decoding the reply
    /// (doc/benchmarks.md, "In the desktop window").
    Software,
    /// The user's own `WEBKIT_DISABLE_COMPOSITING_MODE`, left as it is.
    UserChoice,
}

/// WebKitGTK's switch for compositing, read by its web process when it starts.
const WEBKIT_NO_COMPOSITING: &str = "WEBKIT_DISABLE_COMPOSITING_MODE";

/// Picks the web view's rendering from the machine: compositing only where a GPU can do it.
/// Call before any thread starts (it sets an environment variable the web process inherits).
pub fn choose_webview_rendering() -> WebviewRendering {
    if std::env::var_os(WEBKIT_NO_COMPOSITING).is_some() {
        return WebviewRendering::UserChoice;
    }
    if cfg!(target_os = "linux") && !has_gpu_render_node(std::path::Path::new("/dev/dri")) {
        std::env::set_var(WEBKIT_NO_COMPOSITING, "1");
        return WebviewRendering::Software;
    }
    WebviewRendering::Gpu
}

/// Whether `dri` (normally `/dev/dri`) lists a GPU render node (`renderD128`, …): what Mesa
/// and the proprietary drivers create for a GPU that can render, and what a machine without
/// one (a VM, a server, a virtual X display) lacks.
pub fn has_gpu_render_node(dri: &std::path::Path) -> bool {
    std::fs::read_dir(dri).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
    })
}

/// Opens the desktop window and runs until it is closed. `log` keeps the log file open; it is
/// dropped (writing out what is buffered) when the app exits, since Tauri's event loop ends the
/// process without returning here.
pub fn run(log: super::logging::LogGuard) -> anyhow::Result<()> {
    let mut log = Some(log);
    let app = configure(tauri::Builder::default())
        .setup(|app| {
            let file = database_path(None)?;
            match crate::app::repo::Repo::open(&file).map(ChatService::new) {
                Ok(service) => {
                    tracing::info!(data = %file.display(), "chat data");
                    service.follow_moved_files(&super::data_dir::moved_pairs());
                    service.set_model_override(model_override_from_env());
                    install(app.handle(), service.clone(), server_lan_address_from_env());
                    app.manage(ClosedOnExit(service.clone()));
                    load_model_in_background(service, crate::app::service::load_engine);
                }
                // Most often another copy of the app holds the data folder; the window says so
                // instead of the app vanishing with a message on a terminal nobody sees.
                Err(e) => {
                    tracing::error!("cannot open {}: {e}", file.display());
                    app.manage(Bridge::unavailable(&e.to_string()));
                }
            }
            Ok(())
        })
        .build(tauri::generate_context!())
        .context("the desktop window failed")?;
    app.run(move |handle, event| {
        if let tauri::RunEvent::Exit = event {
            if let Some(service) = handle.try_state::<ClosedOnExit>() {
                service.0.close();
            }
            drop(log.take());
        }
    });
    Ok(())
}

/// The chat service, closed when the app exits (the engine saves what its caches hold).
struct ClosedOnExit(ChatService);

#[cfg(test)]
mod tests {
    #[test]
    fn a_gpu_is_a_render_node() {
        let dri = tempfile::tempdir().unwrap();
        assert!(!super::has_gpu_render_node(&dri.path().join("absent")));
        assert!(!super::has_gpu_render_node(dri.path()));
        // A display controller alone (card0) cannot render: KMS without a GPU, or a VM's.
        std::fs::write(dri.path().join("card0"), b"").unwrap();
        assert!(!super::has_gpu_render_node(dri.path()));
        std::fs::write(dri.path().join("renderD128"), b"").unwrap();
        assert!(super::has_gpu_render_node(dri.path()));
    }

    use super::*;

    #[test]
    fn only_the_apps_own_pages_are_app_urls() {
        let url = |s: &str| tauri::Url::parse(s).unwrap();
        for ours in [
            "tauri://localhost/",
            "tauri://localhost/index.html",
            "http://tauri.localhost/index.html",
            "https://tauri.localhost/",
        ] {
            assert!(is_app_url(&url(ours)), "{ours}");
        }
        for theirs in [
            "https://example.com/",
            "http://localhost:3000/",
            "tauri://evil.example/",
            "https://tauri.localhost.evil.example/",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "data:text/html,hi",
            "about:blank",
        ] {
            assert!(!is_app_url(&url(theirs)), "{theirs}");
        }
    }
}
