//! The desktop's "Engine" dialog: replies from the model on this computer or from a saved
//! OpenAI-compatible server. Adding a server lists its models first (with its key), so a
//! saved server is one that answered. Only the desktop's owner reaches these routes.

use axum::extract::{Form, Path};
use axum::response::Html;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::handler::{desktop_only, Result, Scoped};
use super::html;
use crate::app::engines;
use crate::app::service::{ChatService, EngineState, ServiceError};

/// The dialog's routes, for the desktop's router.
pub fn routes() -> Router<ChatService> {
    Router::new()
        .route("/engine", get(panel))
        .route("/engine/use", post(use_engine))
        .route("/engine/models", post(models))
        .route("/engine/servers", post(add))
        .route("/engine/servers/{id}/remove", post(remove))
}

/// What the dialog says after an action.
#[derive(Default)]
struct Said {
    notice: Option<String>,
    error: Option<String>,
}

impl Said {
    fn from(outcome: std::result::Result<String, String>) -> Self {
        match outcome {
            Ok(notice) => Self {
                notice: Some(notice),
                error: None,
            },
            Err(error) => Self {
                notice: None,
                error: Some(error),
            },
        }
    }
}

fn render(s: &ChatService, said: Said) -> String {
    let (servers, error) = match s.servers() {
        Ok(list) => (list, said.error),
        Err(e) => (Vec::new(), Some(e)),
    };
    let local_model = match (s.uses_a_server(), s.engine_state(), s.model_files().0) {
        (false, EngineState::Ready { model } | EngineState::Kept { model, .. }, _) => model,
        (_, _, Some(path)) => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        (_, _, None) => "no model set up yet".into(),
    };
    html::engine_panel(
        &local_model,
        &servers,
        s.settings().engine_server,
        &s.keys().place(),
        said.notice.as_deref(),
        error.as_deref(),
    )
}

/// Runs a blocking action (a switch waits for replies to stop and a model to load), then
/// renders the dialog with what it said.
async fn act(
    s: ChatService,
    action: impl FnOnce(&ChatService) -> std::result::Result<String, String> + Send + 'static,
) -> Result<Html<String>> {
    desktop_only(&s)?;
    let html = tokio::task::spawn_blocking(move || {
        let said = Said::from(action(&s));
        render(&s, said)
    })
    .await
    .map_err(|e| ServiceError::Storage(format!("the engine screen stopped: {e}")))?;
    Ok(Html(html))
}

async fn panel(Scoped(s): Scoped) -> Result<Html<String>> {
    desktop_only(&s)?;
    let html = tokio::task::spawn_blocking(move || render(&s, Said::default()))
        .await
        .map_err(|e| ServiceError::Storage(format!("the engine screen stopped: {e}")))?;
    Ok(Html(html))
}

#[derive(Deserialize)]
struct UseForm {
    /// `local`, or a saved server's id.
    engine: String,
}

async fn use_engine(Scoped(s): Scoped, Form(f): Form<UseForm>) -> Result<Html<String>> {
    act(s, move |s| match f.engine.trim() {
        "local" => s
            .use_this_computer()
            .map(|()| "Replies come from the model on this computer.".into()),
        id => {
            let id: i64 = id.parse().map_err(|_| "No such server.".to_string())?;
            s.use_server(id)?;
            Ok(format!(
                "Replies come from {}.",
                s.engine_server().map(|x| x.name).unwrap_or_default()
            ))
        }
    })
    .await
}

#[derive(Deserialize)]
struct ServerForm {
    #[serde(default)]
    base_url: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    name: String,
}

/// The server's models (asked with the key typed), for the form to choose from.
async fn models(Scoped(s): Scoped, Form(f): Form<ServerForm>) -> Result<Html<String>> {
    desktop_only(&s)?;
    let host = crate::engine::remote::RemoteServer {
        base_url: f.base_url.trim().to_string(),
        api_key: None,
        model: String::new(),
    }
    .host();
    Ok(Html(
        match engines::server_models(&f.base_url, &f.key).await {
            Ok(models) => html::engine_models(&models, &host, None),
            Err(e) => html::engine_models(&[], &host, Some(&e)),
        },
    ))
}

/// Saves the server with the chosen model and key, then uses it.
async fn add(Scoped(s): Scoped, Form(f): Form<ServerForm>) -> Result<Html<String>> {
    act(s, move |s| {
        let saved = s.add_server(&f.name, &f.base_url, &f.model, &f.key)?;
        s.use_server(saved.id)?;
        Ok(format!(
            "Saved {}; replies come from {} there.",
            saved.name, saved.model
        ))
    })
    .await
}

async fn remove(Scoped(s): Scoped, Path(id): Path<i64>) -> Result<Html<String>> {
    act(s, move |s| {
        s.remove_server(id).map(|()| "Server removed.".to_string())
    })
    .await
}
