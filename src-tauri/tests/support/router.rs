//! Driving the HTML router in-process, as the webview's `hx` command and the browser do.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// `text` encoded for an `application/x-www-form-urlencoded` body.
pub fn enc(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One request through the router, with an optional form body; the status and body text.
pub async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    form: Option<&str>,
) -> (StatusCode, String) {
    let (status, _, body) = call_with_headers(app, method, uri, form).await;
    (status, body)
}

/// Like [`call`], with the response headers too.
pub async fn call_with_headers(
    app: &Router,
    method: &str,
    uri: &str,
    form: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if form.is_some() {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    let req = req
        .body(Body::from(form.unwrap_or("").to_string()))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        headers,
        String::from_utf8(bytes.to_vec()).expect("utf-8"),
    )
}

/// Like [`call_with_headers`], for a router behind the guard: the request names `host`, as
/// every HTTP/1.1 client does.
pub async fn call_as(
    app: &Router,
    method: &str,
    uri: &str,
    form: Option<&str>,
    host: &str,
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", host);
    if form.is_some() {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    let req = req
        .body(Body::from(form.unwrap_or("").to_string()))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        headers,
        String::from_utf8(bytes.to_vec()).expect("utf-8"),
    )
}

/// The id of the first assistant message (`id="msg-N"`) in a fragment.
pub fn assistant_id(html: &str) -> i64 {
    let at = html
        .find("class=\"msg assistant")
        .expect("an assistant message");
    let rest = &html[at..];
    let start = rest.find("id=\"msg-").expect("message id") + 8;
    rest[start..]
        .split('"')
        .next()
        .expect("id")
        .parse()
        .expect("numeric id")
}

/// Polls a message until it is no longer streaming (bounded: 5 s) and returns its HTML.
pub async fn wait_done(app: &Router, id: i64) -> String {
    wait_done_within(app, id, std::time::Duration::from_secs(5)).await
}

/// Polls a message until it is no longer streaming, for at most `limit` (a reply from a real
/// server takes longer than one from the stand-ins), and returns its HTML.
pub async fn wait_done_within(app: &Router, id: i64, limit: std::time::Duration) -> String {
    let start = std::time::Instant::now();
    loop {
        let (status, _, body) =
            call_with_headers(app, "GET", &format!("/messages/{id}"), None).await;
        assert_eq!(status, StatusCode::OK);
        if !body.contains("streaming") {
            return body;
        }
        assert!(start.elapsed() < limit, "message {id} never finished");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
