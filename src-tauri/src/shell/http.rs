//! The axum [`Router`]: the single source of every page, fragment and action of the chat UI.
//!
//! A browser reaches it over TCP (replies stream as server-sent events from `/events`); the
//! desktop runs the same router in-process for each request (see `shell::desktop`) and gets
//! the same stream as Tauri events. Handlers are small: extractors in, HTML out.
//!
//! Every handler that touches conversations takes [`Scoped`]: the service acting for the
//! request's [`Owner`]. [`router`] serves the desktop's owner; [`browser_router`] gives each
//! browser its own through `shell::session`, and its `/events` stream carries only that
//! browser's replies.

use std::collections::HashMap;
use std::convert::Infallible;
use std::str::FromStr;

use axum::extract::{Form, Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

pub use super::handler::STREAM_EVENT;
use super::handler::{layout_html, retarget, Result, Scoped, UiError};
use super::html;
use super::local_server::LocalServer;
use crate::app::service::{ChatService, Owner, SendOutcome, ServiceError, StreamEvent};
use crate::engine::events::EngineEvent;
use crate::store::{InvalidSetting, Settings, Theme};

/// Builds the desktop's router over a chat service: the chat UI and the first-run wizard;
/// every request acts for the service's own owner (the desktop, for a new service).
pub fn router(service: ChatService) -> Router {
    desktop_router(service, None)
}

/// The desktop's router with the "Browser & API access" dialog over the app's `server`.
pub fn router_with_server(service: ChatService, server: LocalServer) -> Router {
    desktop_router(service, Some(server))
}

fn desktop_router(service: ChatService, server: Option<LocalServer>) -> Router {
    let owner = service.owner().clone();
    let mut routes = routes()
        .merge(super::wizard::routes())
        .merge(super::models_panel::routes())
        .merge(super::engine_panel::routes());
    if server.is_some() {
        routes = routes.merge(super::server_panel::routes());
    }
    let mut router = routes.fallback(not_found).with_state(service);
    if let Some(server) = server {
        router = router.layer(Extension(server));
    }
    router.layer(Extension(owner))
}

/// The router the built-in server gives browsers: each browser (told apart by a session
/// cookie the server issued, set on its first request) sees only its own conversations and
/// replies. It has no wizard: downloads and imports on the server's disk are the desktop's.
pub fn browser_router(service: ChatService) -> Router {
    routes()
        .fallback(not_found)
        .with_state(service.clone())
        .layer(axum::middleware::from_fn_with_state(
            service,
            super::session::attach,
        ))
}

/// Whether a handle acts for the desktop app's owner: the machine's user, who alone may
/// change machine-level settings (the model file, the download mirror) and run the wizard.
fn is_desktop(s: &ChatService) -> bool {
    *s.owner() == Owner::desktop()
}

fn routes() -> Router<ChatService> {
    Router::new()
        .route("/", get(index))
        .route("/layout", get(layout))
        .route("/empty", get(empty))
        // The desktop's files at the paths `ui/index.html` names them by.
        .route("/app.css", get(css))
        .route("/app.js", get(js))
        .route("/vendor/htmx.min.js", get(htmx))
        .route("/conversations", get(list).post(create))
        .route("/conversations/{id}", get(open))
        .route("/conversations/{id}/rename", get(rename_form).post(rename))
        // A whole history may be large; the built-in server's own body limit still applies to
        // browsers (`--max-body`).
        .route(
            "/conversations/import",
            post(import).layer(axum::extract::DefaultBodyLimit::max(IMPORT_MAX_BYTES)),
        )
        .route("/conversations/{id}/export/{format}", get(export))
        .route("/conversations/export/{format}", get(export_all))
        .route("/conversations/{id}/delete", post(delete))
        .route("/conversations/{id}/undo", post(undo))
        .route("/conversations/{id}/thinking", post(thinking))
        .route(
            "/conversations/{id}/system",
            get(system_prompt_form).post(set_system_prompt),
        )
        .route("/conversations/{id}/messages", post(send_in))
        .route("/conversations/{id}/stop", post(stop))
        .route("/messages", post(send_new))
        .route("/messages/{id}", get(message))
        .route("/messages/{id}/edit", get(edit_form).post(edit))
        .route("/messages/{id}/regenerate", post(regenerate))
        .route("/messages/{id}/select", post(select))
        .route("/settings", get(settings).post(save_settings))
        .route("/status", get(status))
        .route("/render", post(render))
        .route("/events", get(events))
}

async fn not_found() -> Response {
    UiError(ServiceError::NotFound(
        "There is nothing at this address.".into(),
    ))
    .into_response()
}

/// The wizard in place of the chat, when the desktop has no usable model.
fn wizard_for(s: &ChatService) -> Option<String> {
    if !is_desktop(s) {
        return None;
    }
    super::wizard::needed(s).map(|reason| super::wizard::app(s, &reason))
}

/// The page skeleton, the same file the desktop window opens; it asks for `/layout`, which
/// holds the wizard or the chat.
async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../../ui/index.html"),
    )
        .into_response()
}

async fn layout(Scoped(s): Scoped) -> Result<Html<String>> {
    if let Some(wizard) = wizard_for(&s) {
        return Ok(Html(wizard));
    }
    Ok(Html(layout_html(&s)?))
}

async fn empty() -> Html<String> {
    Html(html::empty_chat())
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../../ui/app.css"),
    )
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../../ui/app.js"),
    )
}

async fn htmx() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../../ui/vendor/htmx.min.js"),
    )
}

#[derive(Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
}

async fn list(Scoped(s): Scoped, Query(q): Query<SearchQuery>) -> Result<Html<String>> {
    let found = s.conversations(Some(&q.q))?;
    if found.is_empty() && !q.q.trim().is_empty() {
        return Ok(Html(html::no_match(q.q.trim())));
    }
    Ok(Html(html::conversation_list(&found, None)))
}

fn chat_with_sidebar(s: &ChatService, id: i64, extra: &str) -> Result<String> {
    let view = s.conversation(id)?;
    let settings = s.settings();
    let status = html::status_bar(
        true,
        &s.engine_state(),
        s.busy(),
        Some(id),
        s.context_used(id),
        settings.context_size,
        s.serving().as_ref(),
    );
    let list = html::conversation_list_oob(&s.conversations(None)?);
    Ok([html::chat(&view, extra), list, status].concat())
}

async fn create(Scoped(s): Scoped) -> Result<Html<String>> {
    let c = s.new_conversation()?;
    Ok(Html(chat_with_sidebar(&s, c.id.0, "")?))
}

async fn open(Scoped(s): Scoped, Path(id): Path<i64>) -> Result<Html<String>> {
    Ok(Html(chat_with_sidebar(&s, id, "")?))
}

async fn rename_form(Scoped(s): Scoped, Path(id): Path<i64>) -> Result<Html<String>> {
    let view = s.conversation(id)?;
    Ok(Html(html::rename_form(&view.conversation)))
}

async fn system_prompt_form(Scoped(s): Scoped, Path(id): Path<i64>) -> Result<Html<String>> {
    let view = s.conversation(id)?;
    Ok(Html(html::system_prompt_form(
        &view.conversation,
        &s.default_system_prompt(),
        false,
        None,
    )))
}

#[derive(Deserialize)]
struct SystemPromptForm {
    #[serde(default)]
    system_prompt: String,
}

/// Saves a conversation's system prompt; the head swaps in where it is open (its button marks
/// that there is one).
async fn set_system_prompt(
    Scoped(s): Scoped,
    Path(id): Path<i64>,
    Form(f): Form<SystemPromptForm>,
) -> Result<Response> {
    let default = s.default_system_prompt();
    match s.set_system_prompt(id, &f.system_prompt) {
        Ok(c) => Ok(Html(format!(
            "{}{}",
            html::system_prompt_form(&c, &default, true, None),
            html::chat_head(&c, true)
        ))
        .into_response()),
        Err(ServiceError::Invalid(message)) => {
            let mut c = s.conversation(id)?.conversation;
            c.system_prompt = f.system_prompt;
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                Html(html::system_prompt_form(
                    &c,
                    &default,
                    false,
                    Some(&message),
                )),
            )
                .into_response())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct TitleForm {
    #[serde(default)]
    title: String,
}

async fn rename(
    Scoped(s): Scoped,
    Path(id): Path<i64>,
    Form(f): Form<TitleForm>,
) -> Result<Html<String>> {
    let c = s.rename(id, &f.title)?;
    // The title swaps in only where this conversation is open.
    Ok(Html(format!(
        "{}{}",
        html::conversation_list(&s.conversations(None)?, None),
        html::chat_title(&c, true)
    )))
}

/// Header in which the page names the conversation it has open.
pub const OPEN_CONVERSATION: &str = "x-open-conversation";

async fn delete(
    Scoped(s): Scoped,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Result<Html<String>> {
    let c = s.delete(id)?;
    let mut body = html::conversation_list(&s.conversations(None)?, Some(&html::undo_toast(&c)));
    let open = headers
        .get(OPEN_CONVERSATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    if open == Some(id) {
        // The open conversation is gone: show the start screen in its place.
        body.push_str(&html::chat_slot_oob(&html::empty_chat()));
    }
    Ok(Html(body))
}

/// A conversation as a file to save: `md`, `json` or `jsonl`.
async fn export(Scoped(s): Scoped, Path((id, format)): Path<(i64, String)>) -> Result<Response> {
    attachment(s.export(Some(id), &format)?, &format)
}

/// Every conversation of the owner as one file.
async fn export_all(Scoped(s): Scoped, Path(format): Path<String>) -> Result<Response> {
    attachment(s.export(None, &format)?, &format)
}

/// An export as a download named `name`.
fn attachment((name, text): (String, String), format: &str) -> Result<Response> {
    let kind = match format {
        "md" => "text/markdown; charset=utf-8",
        "jsonl" => "application/x-ndjson; charset=utf-8",
        _ => "application/json; charset=utf-8",
    };
    // The name as UTF-8 (RFC 5987), with a plain fallback for old clients.
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_ ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"),
            ),
        ],
        text,
    )
        .into_response())
}

/// The largest import the window sends (its text, form-encoded).
const IMPORT_MAX_BYTES: usize = 64 * 1024 * 1024;

#[derive(Deserialize)]
struct ImportForm {
    text: String,
}

/// Conversations from an export file's text (the page reads the file the person chose): the
/// list with the new ones, and a toast saying how many came in.
async fn import(Scoped(s): Scoped, Form(f): Form<ImportForm>) -> Result<Html<String>> {
    let ids = s.import(&f.text)?;
    let said = match ids.len() {
        1 => "Imported 1 conversation.".to_string(),
        n => format!("Imported {n} conversations."),
    };
    Ok(Html(html::conversation_list(
        &s.conversations(None)?,
        Some(&html::notice(&said)),
    )))
}

async fn undo(Scoped(s): Scoped, Path(id): Path<i64>) -> Result<Html<String>> {
    s.undo_delete(id)?;
    Ok(Html(html::conversation_list(
        &s.conversations(None)?,
        Some(""),
    )))
}

#[derive(Deserialize)]
struct ThinkingForm {
    enabled: Option<String>,
}

async fn thinking(
    Scoped(s): Scoped,
    Path(id): Path<i64>,
    Form(f): Form<ThinkingForm>,
) -> Result<Html<String>> {
    let c = s.set_thinking(id, f.enabled.is_some())?;
    Ok(Html(html::chat_head(&c, false)))
}

#[derive(Deserialize)]
struct TextForm {
    #[serde(default)]
    text: String,
}

async fn send_in(
    Scoped(s): Scoped,
    Path(id): Path<i64>,
    Form(f): Form<TextForm>,
) -> Result<Response> {
    let outcome = s.send(Some(id), &f.text)?;
    sent(&s, outcome)
}

async fn send_new(Scoped(s): Scoped, Form(f): Form<TextForm>) -> Result<Response> {
    let outcome = s.send(None, &f.text)?;
    sent(&s, outcome)
}

/// The response to a sent line. A reply appends the two new messages to the list; a new
/// conversation replaces the chat pane; a command re-renders the list with its notice.
fn sent(s: &ChatService, outcome: SendOutcome) -> Result<Response> {
    let list = || -> Result<String> { Ok(html::conversation_list_oob(&s.conversations(None)?)) };
    match outcome {
        SendOutcome::Reply {
            conversation,
            created: true,
            ..
        } => {
            let mut resp = Html(chat_with_sidebar(s, conversation.id.0, "")?).into_response();
            retarget(&mut resp, "#chat", "innerHTML");
            Ok(resp)
        }
        SendOutcome::Reply {
            conversation,
            created: false,
            user,
            assistant,
        } => {
            let body = format!(
                "{}{}{}{}",
                html::message(&s.message(user.id)?),
                html::message(&s.message(assistant.id)?),
                html::chat_title(&conversation, true),
                list()?
            );
            Ok(Html(body).into_response())
        }
        SendOutcome::Notice {
            conversation: Some(c),
            created,
            text,
        } => {
            if created {
                let mut resp =
                    Html(chat_with_sidebar(s, c.id.0, &html::notice(&text))?).into_response();
                retarget(&mut resp, "#chat", "innerHTML");
                return Ok(resp);
            }
            let view = s.conversation(c.id)?;
            let body = format!(
                "{}{}{}",
                html::messages(&view),
                html::notice(&text),
                html::chat_head(&c, true)
            );
            let mut resp = Html(body).into_response();
            retarget(&mut resp, "#messages", "innerHTML");
            Ok(resp)
        }
        SendOutcome::Notice {
            conversation: None,
            text,
            ..
        } => Ok(Html(html::notice(&text)).into_response()),
    }
}

async fn stop(Scoped(s): Scoped, Path(id): Path<i64>) -> StatusCode {
    s.stop(id);
    StatusCode::NO_CONTENT
}

async fn message(Scoped(s): Scoped, Path(id): Path<i64>) -> Result<Html<String>> {
    Ok(Html(html::message(&s.message(id)?)))
}

async fn edit_form(Scoped(s): Scoped, Path(id): Path<i64>) -> Result<Html<String>> {
    Ok(Html(html::edit_form(&s.message(id)?.message)))
}

fn messages_of(s: &ChatService, conversation_id: i64) -> Result<Html<String>> {
    let view = s.conversation(conversation_id)?;
    Ok(Html(format!(
        "{}{}",
        html::messages(&view),
        html::chat_head(&view.conversation, true)
    )))
}

async fn edit(
    Scoped(s): Scoped,
    Path(id): Path<i64>,
    Form(f): Form<TextForm>,
) -> Result<Html<String>> {
    let (user, _) = s.edit(id, &f.text)?;
    messages_of(&s, user.conversation_id.0)
}

async fn regenerate(Scoped(s): Scoped, Path(id): Path<i64>) -> Result<Html<String>> {
    let reply = s.regenerate(id)?;
    messages_of(&s, reply.conversation_id.0)
}

async fn select(Scoped(s): Scoped, Path(id): Path<i64>) -> Result<Html<String>> {
    let conversation_id = s.select_branch(id)?;
    messages_of(&s, conversation_id)
}

async fn settings(Scoped(s): Scoped) -> Html<String> {
    Html(html::settings_panel(
        &s.settings(),
        &[],
        false,
        is_desktop(&s),
    ))
}

fn parse_field<T: FromStr>(
    form: &HashMap<String, String>,
    name: &'static str,
    into: &mut T,
    bad: &mut Vec<InvalidSetting>,
) {
    let Some(raw) = form.get(name) else { return };
    match raw.trim().parse() {
        Ok(v) => *into = v,
        Err(_) => bad.push(InvalidSetting {
            field: name,
            message: format!("“{}” is not a number", raw.trim()),
        }),
    }
}

/// Form fields that name files or servers of the machine: only the desktop's owner sets them.
const MACHINE_FIELDS: [&str; 6] = [
    "model_path",
    "tokenizer_path",
    "hub_mirror",
    "snapshot_budget_mb",
    "batch_size",
    "kv_budget_mb",
];

/// Reads the settings form over the current settings; fields left out keep their value.
/// `machine`: whether the form may set the machine-level fields ([`MACHINE_FIELDS`]).
fn settings_from_form(
    current: &Settings,
    form: &HashMap<String, String>,
    machine: bool,
) -> (Settings, Vec<InvalidSetting>) {
    let mut s = current.clone();
    let mut bad = Vec::new();
    if let Some(p) = form.get("system_prompt") {
        s.system_prompt = p.clone();
    }
    parse_field(form, "temperature", &mut s.sampling.temperature, &mut bad);
    parse_field(form, "top_p", &mut s.sampling.top_p, &mut bad);
    parse_field(form, "top_k", &mut s.sampling.top_k, &mut bad);
    parse_field(form, "min_p", &mut s.sampling.min_p, &mut bad);
    parse_field(
        form,
        "repeat_penalty",
        &mut s.sampling.repeat_penalty,
        &mut bad,
    );
    parse_field(form, "max_tokens", &mut s.sampling.max_tokens, &mut bad);
    parse_field(form, "context_size", &mut s.context_size, &mut bad);
    parse_field(form, "threads", &mut s.threads, &mut bad);
    parse_field(form, "thinking_budget", &mut s.thinking_budget, &mut bad);
    // The form always carries the theme select, so a missing checkbox means "off".
    if form.contains_key("theme") {
        s.thinking_default = form.contains_key("thinking_default");
    }
    if let Some(t) = form.get("theme") {
        match Theme::parse(t) {
            Some(t) => s.theme = t,
            None => bad.push(InvalidSetting {
                field: "theme",
                message: "choose one of the listed themes".into(),
            }),
        }
    }
    if !machine {
        for field in MACHINE_FIELDS {
            if form.contains_key(field) {
                bad.push(InvalidSetting {
                    field,
                    message: "only the desktop app on this computer can change this".into(),
                });
            }
        }
        return (s, bad);
    }
    if let Some(p) = form.get("model_path") {
        s.model_path = p.trim().to_string();
    }
    if let Some(p) = form.get("tokenizer_path") {
        s.tokenizer_path = p.trim().to_string();
    }
    if let Some(p) = form.get("hub_mirror") {
        s.hub_mirror = p.trim().to_string();
    }
    parse_field(
        form,
        "snapshot_budget_mb",
        &mut s.snapshot_budget_mb,
        &mut bad,
    );
    parse_field(form, "batch_size", &mut s.batch_size, &mut bad);
    parse_field(form, "kv_budget_mb", &mut s.kv_budget_mb, &mut bad);
    (s, bad)
}

async fn save_settings(
    Scoped(s): Scoped,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response> {
    let machine = is_desktop(&s);
    let (new, mut bad) = settings_from_form(&s.settings(), &form, machine);
    if bad.is_empty() {
        match s.update_settings(new.clone()) {
            Ok(()) => {
                return Ok(Html(html::settings_panel(&new, &[], true, machine)).into_response())
            }
            Err(ServiceError::Settings(errors)) => bad = errors,
            Err(e) => return Err(e.into()),
        }
    }
    Ok((
        StatusCode::UNPROCESSABLE_ENTITY,
        Html(html::settings_panel(&new, &bad, false, machine)),
    )
        .into_response())
}

/// Markdown to sanitized HTML, for a reply still streaming (the page re-renders it a few times
/// a second; each call costs the length of that one reply).
async fn render(Form(f): Form<TextForm>) -> Html<String> {
    Html(html::markdown(&f.text))
}

#[derive(Deserialize)]
struct StatusQuery {
    c: Option<i64>,
}

async fn status(Scoped(s): Scoped, Query(q): Query<StatusQuery>) -> Html<String> {
    let used = q.c.and_then(|c| s.context_used(c));
    Html(html::status_bar(
        false,
        &s.engine_state(),
        s.busy(),
        q.c,
        used,
        s.settings().context_size,
        s.serving().as_ref(),
    ))
}

/// The JSON a client receives for one stream event, over SSE or as a Tauri event: the delta
/// text, or for the last event the finished message's HTML.
pub fn stream_payload(s: &ChatService, ev: &StreamEvent) -> serde_json::Value {
    let base = |kind: &str| json!({"conversation_id": ev.conversation_id, "message_id": ev.message_id, "seq": ev.seq, "type": kind});
    let mut v = match &ev.event {
        EngineEvent::Started { .. } => base("started"),
        EngineEvent::Queued { position } => {
            let mut v = base("queued");
            v["position"] = json!(position);
            v["text"] = json!(html::queue_text(*position));
            v
        }
        EngineEvent::Reasoning { text } => {
            let mut v = base("reasoning");
            v["text"] = json!(text);
            v
        }
        EngineEvent::Answer { text } => {
            let mut v = base("answer");
            v["text"] = json!(text);
            v
        }
        EngineEvent::Done { .. } => base("done"),
        // The app's replies never ask for them; a page would ignore the type.
        EngineEvent::Logprob { .. } => base("logprob"),
        EngineEvent::Error { message } => {
            let mut v = base("error");
            v["text"] = json!(message);
            v
        }
    };
    if matches!(
        ev.event,
        EngineEvent::Done { .. } | EngineEvent::Error { .. }
    ) {
        if let Ok(m) = s.message(ev.message_id) {
            v["html"] = json!(html::message(&m));
        }
    }
    v
}

async fn events(
    Scoped(s): Scoped,
) -> Sse<impl Stream<Item = std::result::Result<Event, Infallible>>> {
    let rx = s.subscribe();
    let stream = futures_util::stream::unfold((rx, s), |(mut rx, s)| async move {
        loop {
            match rx.recv().await {
                // Another owner's reply: not for this client.
                Ok(ev) if ev.owner != *s.owner() => continue,
                Ok(ev) => {
                    let data = stream_payload(&s, &ev).to_string();
                    return Some((Ok(Event::default().event(STREAM_EVENT).data(data)), (rx, s)));
                }
                // A slow client misses deltas; the final event carries the whole message.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
