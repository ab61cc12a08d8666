//! What the browser UI's handlers share: the service acting for the request's owner
//! ([`Scoped`]), the error shown as a toast ([`UiError`]), the name of the stream event, and
//! the whole-app layout. The router (`http.rs`), the sessions and the wizard's routes all use
//! these, so they live below all three.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::html;
use crate::app::service::{ChatService, Owner, ServiceError};
use crate::engine::admission::Refusal;

/// Name of the SSE event (and of the Tauri event) that carries reply deltas.
pub const STREAM_EVENT: &str = "chat-stream";

/// Refuses (as "nothing here") a request that does not act for the desktop app's owner: the
/// machine's files and server are not a browser's to change.
pub fn desktop_only(s: &ChatService) -> Result<()> {
    if *s.owner() == Owner::desktop() {
        Ok(())
    } else {
        Err(ServiceError::NotFound("There is nothing at this address.".into()).into())
    }
}

/// The chat service acting for the owner of the request, which the layer around the routes
/// names (see [`router`] and [`browser_router`]).
pub struct Scoped(pub ChatService);

impl FromRequestParts<ChatService> for Scoped {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ChatService,
    ) -> std::result::Result<Self, Self::Rejection> {
        match parts.extensions.get::<Owner>() {
            Some(owner) => Ok(Scoped(state.as_owner(owner.clone()))),
            // Refuse rather than guess whose conversations these are.
            None => Err(UiError(ServiceError::Storage(
                "this request belongs to no session".into(),
            ))
            .into_response()),
        }
    }
}

/// A failed action, shown to the user as a message in the toast area.
#[derive(Debug)]
pub struct UiError(pub ServiceError);

impl From<ServiceError> for UiError {
    fn from(e: ServiceError) -> Self {
        Self(e)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ServiceError::Busy(Refusal::ClientLimit { .. }) => StatusCode::TOO_MANY_REQUESTS,
            ServiceError::Busy(Refusal::QueueFull { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let mut resp = (status, Html(html::error_toast(&self.0.to_string()))).into_response();
        retarget(&mut resp, "#toast", "innerHTML");
        if let ServiceError::Busy(r) = &self.0 {
            if let Ok(v) = HeaderValue::from_str(&r.retry_after_s().to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

pub type Result<T, E = UiError> = std::result::Result<T, E>;

/// Tells htmx to put the response somewhere else than the element asked for.
pub fn retarget(resp: &mut Response, target: &'static str, swap: &'static str) {
    resp.headers_mut()
        .insert("HX-Retarget", HeaderValue::from_static(target));
    resp.headers_mut()
        .insert("HX-Reswap", HeaderValue::from_static(swap));
}

/// The whole app (sidebar, chat pane, status bar) as one `#app` element.
pub fn layout_html(s: &ChatService) -> Result<String> {
    let settings = s.settings();
    let status = html::status_bar(
        false,
        &s.engine_state(),
        s.busy(),
        None,
        None,
        settings.context_size,
        s.serving().as_ref(),
    );
    Ok(html::layout(
        &s.conversations(None)?,
        &html::empty_chat(),
        &status,
        settings.theme,
    ))
}
