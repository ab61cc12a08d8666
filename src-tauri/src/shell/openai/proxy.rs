//! The app's API while replies come from another OpenAI-compatible server (the desktop's
//! Engine setting, or `serve --remote`): requests that passed the app's own guard (its key,
//! Host and Origin checks) are forwarded to that server with the server's key in place of
//! the client's, and its answer (a stream too) comes back as it is. The app adds nothing of
//! its own model here: tokenizing is the local model's and is refused.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::super::guard::{error_response, DEFAULT_MAX_BODY_BYTES};
use crate::engine::remote::{RemoteOptions, RemoteServer};

/// How long the server may take to start answering a forwarded request (it may read a long
/// prompt first); the body then streams without a total limit.
const FIRST_BYTE: std::time::Duration = std::time::Duration::from_secs(300);

/// The API path of `path` under the server's `/v1` (`/v1/chat/completions` and the
/// unversioned `/chat/completions` alike); none for routes that are not the OpenAI API's.
fn api_path(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/v1/")
        .unwrap_or(path.trim_start_matches('/'));
    match rest {
        "" | "tokenize" | "detokenize" | "health" => None,
        _ => Some(rest),
    }
}

/// Forwards one API request to `server`.
pub async fn forward(server: &RemoteServer, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if path == "/health" {
        return axum::Json(serde_json::json!({
            "status": "ok",
            "model": server.model,
            "upstream": server.host(),
        }))
        .into_response();
    }
    let Some(api) = api_path(&path) else {
        return error_response(
            StatusCode::NOT_IMPLEMENTED,
            "invalid_request_error",
            "not_available_remotely",
            "replies come from another server, so this app's own tokenizer routes are not available",
        );
    };
    let mut url = server.endpoint(api);
    if let Some(q) = req.uri().query() {
        url.push('?');
        url.push_str(q);
    }
    let method = req.method().clone();
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let accept = req.headers().get(header::ACCEPT).cloned();
    let body = match axum::body::to_bytes(req.into_body(), DEFAULT_MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
                "the request body is too large",
            )
        }
    };
    let client = match forwarding_client() {
        Ok(c) => c,
        Err(e) => return upstream_error(&format!("cannot set up the connection: {e}")),
    };
    let mut out = client.request(method, &url).body(body);
    if let Some(ct) = content_type {
        out = out.header(header::CONTENT_TYPE, ct);
    }
    if let Some(a) = accept {
        out = out.header(header::ACCEPT, a);
    }
    if let Some(key) = &server.api_key {
        out = out.bearer_auth(key);
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            return upstream_error(&format!(
                "the server behind this app ({}) did not answer: {}",
                server.host(),
                if e.is_timeout() {
                    "it took too long".to_string()
                } else {
                    "it cannot be reached".to_string()
                }
            ))
        }
    };
    let status = resp.status();
    let mut builder = Response::builder().status(status.as_u16());
    for name in [
        header::CONTENT_TYPE,
        header::CACHE_CONTROL,
        header::RETRY_AFTER,
    ] {
        if let Some(v) = resp.headers().get(&name) {
            builder = builder.header(name, v.clone());
        }
    }
    let stream = resp
        .bytes_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| upstream_error(&format!("bad answer from the server: {e}")))
}

/// One client for every forwarded request, so connections to the server are reused.
fn forwarding_client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let client = reqwest::Client::builder()
        .connect_timeout(RemoteOptions::default().connect_timeout)
        .read_timeout(FIRST_BYTE)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(CLIENT.get_or_init(|| client))
}

fn upstream_error(message: &str) -> Response {
    error_response(
        StatusCode::BAD_GATEWAY,
        "server_error",
        "upstream_unavailable",
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_map_under_v1_and_local_routes_stay_local() {
        assert_eq!(api_path("/v1/chat/completions"), Some("chat/completions"));
        assert_eq!(api_path("/chat/completions"), Some("chat/completions"));
        assert_eq!(api_path("/v1/models/big"), Some("models/big"));
        assert_eq!(api_path("/models"), Some("models"));
        assert_eq!(api_path("/tokenize"), None);
        assert_eq!(api_path("/health"), None);
    }
}
