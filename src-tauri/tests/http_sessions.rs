//! The browser router of the built-in server, driven in-process: every browser (cookie jar)
//! gets its own conversations and reply stream, and a reply that waits for the model shows
//! its place in the queue before its first token.

mod support;
use support::router::{assistant_id, enc};

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use smollm3_bot::app::{ChatService, EngineState};
use smollm3_bot::engine::core::EngineOptions;
use smollm3_bot::engine::loader::LoadedModel;
use smollm3_bot::engine::worker::Engine;
use smollm3_bot::model::synth::{self, Preset, Quant};
use smollm3_bot::shell::http::browser_router;
use smollm3_bot::shell::session::CLIENT_COOKIE;
use smollm3_bot::store::Settings;
use tower::ServiceExt;

/// One browser: its cookie jar holds at most the session cookie.
#[derive(Clone, Default)]
struct Jar(Option<String>);

fn app() -> (ChatService, Router) {
    let service = ChatService::in_memory().with_quote_delay(Duration::from_millis(2));
    (service.clone(), browser_router(service))
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{CLIENT_COOKIE}=")))
        .map(str::to_string)
}

fn request(jar: &Jar, method: &str, uri: &str, form: Option<&str>) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    if form.is_some() {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    if let Some(token) = &jar.0 {
        req = req.header(header::COOKIE, format!("{CLIENT_COOKIE}={token}"));
    }
    req.body(Body::from(form.unwrap_or("").to_string()))
        .expect("request")
}

/// Sends a request as `jar`'s browser and keeps the cookie the server sets.
async fn call(
    app: &Router,
    jar: &mut Jar,
    method: &str,
    uri: &str,
    form: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    let resp = app
        .clone()
        .oneshot(request(jar, method, uri, form))
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    if let Some(c) = session_cookie(&headers) {
        let value = c.split(';').next().unwrap_or_default();
        jar.0 = value.split_once('=').map(|(_, v)| v.to_string());
    }
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        headers,
        String::from_utf8(bytes.to_vec()).expect("utf-8"),
    )
}

/// The number after `marker` in `html`.
fn number_after(html: &str, marker: &str) -> i64 {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in {html}"))
        + marker.len();
    html[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

fn user_id(html: &str) -> i64 {
    let at = html.find("class=\"msg user").expect("a user message");
    number_after(&html[at..], "id=\"msg-")
}

/// Starts a conversation with `text` and waits for its reply; returns the conversation id,
/// the user message id and the reply id.
async fn chat(app: &Router, jar: &mut Jar, text: &str) -> (i64, i64, i64) {
    let (status, _, body) = call(
        app,
        jar,
        "POST",
        "/messages",
        Some(&format!("text={}", enc(text))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let conversation = number_after(&body, "data-conversation-id=\"");
    let (user, reply) = (user_id(&body), assistant_id(&body));
    for _ in 0..500 {
        let (status, _, body) = call(app, jar, "GET", &format!("/messages/{reply}"), None).await;
        assert_eq!(status, StatusCode::OK);
        if !body.contains("streaming") {
            return (conversation, user, reply);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("reply {reply} never finished");
}

#[tokio::test]
async fn a_first_visit_gets_an_http_only_same_site_session_cookie() {
    let (service, app) = app();
    service.wizard().dismiss();
    let mut jar = Jar::default();
    let (status, headers, _) = call(&app, &mut jar, "GET", "/", None).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = session_cookie(&headers).expect("a session cookie on the first visit");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.split("; ").any(|p| p == part), "{cookie}");
    }
    let token = jar.0.clone().expect("a token");
    assert_eq!(token.len(), 64);

    // The browser sends it back: no new cookie.
    let (_, headers, _) = call(&app, &mut jar, "GET", "/conversations", None).await;
    assert!(session_cookie(&headers).is_none());
    assert_eq!(jar.0.as_deref(), Some(token.as_str()));

    // A cookie this server did not make is replaced, not trusted.
    let mut forged = Jar(Some("desktop".into()));
    let (_, headers, _) = call(&app, &mut forged, "GET", "/conversations", None).await;
    assert!(session_cookie(&headers).is_some());
    assert_ne!(forged.0.as_deref(), Some("desktop"));
}

#[tokio::test]
async fn a_planted_cookie_gets_a_new_session() {
    let (_, app) = app();
    // A value of exactly the right shape that this server never handed out, planted in two
    // browsers (cookies on 127.0.0.1 are shared by every port, so any local page could).
    let planted = "ab".repeat(32);
    let (mut victim, mut attacker) = (Jar(Some(planted.clone())), Jar(Some(planted.clone())));
    let (_, headers, _) = call(&app, &mut victim, "GET", "/conversations", None).await;
    assert!(
        session_cookie(&headers).is_some(),
        "a new session is issued in its place"
    );
    assert_ne!(victim.0.as_deref(), Some(planted.as_str()));
    let (conversation, _, _) = chat(&app, &mut victim, "/quote victim's private note").await;
    // Whoever planted the value has nothing to share with the victim.
    let (_, headers, list) = call(&app, &mut attacker, "GET", "/conversations", None).await;
    assert!(session_cookie(&headers).is_some());
    assert!(!list.contains("private note"), "{list}");
    let (status, _, _) = call(
        &app,
        &mut attacker,
        "GET",
        &format!("/conversations/{conversation}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A forged value that differs from a real one in its last digit is refused too.
    let mut forged = victim.0.clone().unwrap();
    let last = if forged.ends_with('0') { "1" } else { "0" };
    forged.replace_range(forged.len() - 1.., last);
    let mut near = Jar(Some(forged));
    let (_, _, list) = call(&app, &mut near, "GET", "/conversations", None).await;
    assert!(!list.contains("private note"), "{list}");
}

#[tokio::test]
async fn two_browsers_never_see_each_others_conversations() {
    let (service, app) = app();
    let (mut alice, mut bob) = (Jar::default(), Jar::default());
    let (a1, a_user, a_reply) = chat(&app, &mut alice, "/quote alice marmalade secret").await;
    let (a2, _, _) = chat(&app, &mut alice, "/quote alice second").await;
    let (b1, b_user, b_reply) = chat(&app, &mut bob, "/quote bob porridge secret").await;
    assert!(alice.0.is_some() && bob.0.is_some() && alice.0 != bob.0);

    // Lists and searches.
    let (_, _, list) = call(&app, &mut alice, "GET", "/conversations", None).await;
    assert!(list.contains(&format!("conv-{a1}\"")) && list.contains(&format!("conv-{a2}\"")));
    assert!(!list.contains(&format!("conv-{b1}\"")) && !list.contains("porridge"));
    let (_, _, list) = call(&app, &mut bob, "GET", "/conversations", None).await;
    assert!(list.contains(&format!("conv-{b1}\"")));
    assert!(!list.contains(&format!("conv-{a1}\"")) && !list.contains("marmalade"));
    let (_, _, found) = call(&app, &mut bob, "GET", "/conversations?q=secret", None).await;
    assert!(found.contains(&format!("conv-{b1}\"")) && !found.contains(&format!("conv-{a1}\"")));
    let (_, _, found) = call(&app, &mut bob, "GET", "/conversations?q=marmalade", None).await;
    assert!(found.contains("Nothing matches"), "{found}");
    // The pages show the chat (browsers never get the desktop's first-run wizard).
    let (status, _, page) = call(&app, &mut bob, "GET", "/layout", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("porridge"), "the layout shows bob's own");
    assert!(!page.contains("marmalade"), "the layout leaked: {page}");

    // Reads, changes and deletes of the other's conversation are "not found", without content.
    let forbidden = [
        ("GET", format!("/conversations/{a1}"), None),
        ("GET", format!("/conversations/{a1}/rename"), None),
        (
            "POST",
            format!("/conversations/{a1}/rename"),
            Some("title=mine"),
        ),
        (
            "POST",
            format!("/conversations/{a1}/thinking"),
            Some("enabled=on"),
        ),
        (
            "POST",
            format!("/conversations/{a1}/messages"),
            Some("text=hi"),
        ),
        ("POST", format!("/conversations/{a1}/delete"), None),
        ("POST", format!("/conversations/{a1}/undo"), None),
        ("GET", format!("/messages/{a_reply}"), None),
        ("GET", format!("/messages/{a_user}/edit"), None),
        (
            "POST",
            format!("/messages/{a_user}/edit"),
            Some("text=changed"),
        ),
        ("POST", format!("/messages/{a_reply}/regenerate"), None),
        ("POST", format!("/messages/{a_user}/select"), None),
    ];
    for (method, uri, form) in &forbidden {
        let (status, _, body) = call(&app, &mut bob, method, uri, *form).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}: {body}");
        assert!(!body.contains("marmalade"), "{method} {uri} leaked: {body}");
    }
    let (_, _, status_bar) = call(&app, &mut bob, "GET", &format!("/status?c={a1}"), None).await;
    assert!(status_bar.contains("Context 0 /"), "{status_bar}");

    // Alice still has everything, untouched.
    let (status, _, body) = call(
        &app,
        &mut alice,
        "GET",
        &format!("/conversations/{a1}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("alice marmalade secret") && !body.contains("changed"));
    assert!(!body.contains("mine</h1>"));

    // And each can delete their own.
    let (status, _, body) = call(
        &app,
        &mut bob,
        "POST",
        &format!("/conversations/{b1}/delete"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains(&format!("conv-{b1}\"")) && body.contains("Undo"));
    let (status, _, _) = call(
        &app,
        &mut alice,
        "GET",
        &format!("/messages/{b_reply}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = call(
        &app,
        &mut alice,
        "POST",
        &format!("/messages/{b_user}/edit"),
        Some("text=x"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A request without a cookie is a new browser with nothing in it.
    let mut stranger = Jar::default();
    let (_, headers, list) = call(&app, &mut stranger, "GET", "/conversations", None).await;
    assert!(session_cookie(&headers).is_some());
    assert!(list.contains("No conversations yet"), "{list}");

    // The desktop's conversations are its own too.
    let desk = service.new_conversation().unwrap();
    let desk_list: Vec<i64> = service
        .conversations(None)
        .unwrap()
        .iter()
        .map(|c| c.id.0)
        .collect();
    assert_eq!(desk_list, [desk.id.0]);
    let (status, _, _) = call(
        &app,
        &mut alice,
        "GET",
        &format!("/conversations/{}", desk.id),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Reads server-sent events from a response body, bounded by `limit`.
struct Sse {
    body: Body,
    buf: String,
}

impl Sse {
    async fn open(app: &Router, jar: &Jar) -> Self {
        let resp = app
            .clone()
            .oneshot(request(jar, "GET", "/events", None))
            .await
            .expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK);
        Self {
            body: resp.into_body(),
            buf: String::new(),
        }
    }

    /// The next event's JSON, or None when nothing came within `limit`.
    async fn next(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                return Some(serde_json::from_str(&data).expect("JSON event"));
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??;
            if let Ok(bytes) = frame.expect("stream").into_data() {
                self.buf
                    .push_str(std::str::from_utf8(&bytes).expect("utf-8"));
            }
        }
    }
}

#[tokio::test]
async fn each_browser_streams_only_its_own_replies() {
    let (_, app) = app();
    let (mut alice, mut bob) = (Jar::default(), Jar::default());
    // Both browsers get their cookies first, as a page load does.
    call(&app, &mut alice, "GET", "/conversations", None).await;
    call(&app, &mut bob, "GET", "/conversations", None).await;
    let mut alice_events = Sse::open(&app, &alice).await;
    let (b_conv, _, _) = chat(&app, &mut bob, "/quote for bob only").await;
    let (a_conv, _, a_reply) = chat(&app, &mut alice, "/quote for alice").await;
    let mut text = String::new();
    loop {
        let ev = alice_events
            .next(Duration::from_secs(10))
            .await
            .expect("alice's reply events");
        assert_ne!(
            ev["conversation_id"], b_conv,
            "bob's event reached alice: {ev}"
        );
        assert_eq!(ev["conversation_id"], a_conv);
        assert_eq!(ev["message_id"], a_reply);
        match ev["type"].as_str() {
            Some("answer") => text.push_str(ev["text"].as_str().unwrap_or_default()),
            Some("done") => break,
            _ => {}
        }
    }
    assert_eq!(text, "for alice");
}

/// A tiny synthetic model on the real engine, behind a browser router.
fn engine_app(tag: &str) -> (ChatService, Router, Engine) {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny-q8.gguf");
    synth::write(Preset::Tiny, Quant::Q8_0, 5, &path).unwrap();
    let loaded = LoadedModel::open(&path, None).unwrap();
    let engine = Engine::start(
        loaded,
        EngineOptions {
            context_size: 8192,
            // One reply at a time, so a second one waits and shows its place in the queue.
            max_batch: 1,
            kv_budget_bytes: 0,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let service = ChatService::in_memory();
    service.set_generator(
        Arc::new(engine.clone()),
        EngineState::Ready {
            model: "tiny".into(),
        },
    );
    let mut settings: Settings = service.settings();
    settings.sampling.max_tokens = 24;
    service.update_settings(settings).unwrap();
    (service.clone(), browser_router(service), engine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_behind_another_shows_its_queue_position_before_its_first_token() {
    let (_service, app, engine) = engine_app("queue");
    let (mut alice, mut bob) = (Jar::default(), Jar::default());
    call(&app, &mut alice, "GET", "/conversations", None).await;
    call(&app, &mut bob, "GET", "/conversations", None).await;
    let mut bob_events = Sse::open(&app, &bob).await;

    // Alice's long prompt keeps the model busy while Bob's message arrives.
    let long = "tell me a long story about the sea and ships ".repeat(150);
    let (status, _, a_body) = call(
        &app,
        &mut alice,
        "POST",
        "/messages",
        Some(&format!("text={}", enc(&long))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let a_reply = assistant_id(&a_body);
    let (status, _, b_body) = call(&app, &mut bob, "POST", "/messages", Some("text=hello")).await;
    assert_eq!(status, StatusCode::OK);
    let b_reply = assistant_id(&b_body);
    // The placeholder has room for the queue note.
    assert!(b_body.contains("class=\"queue-note\""), "{b_body}");

    let mut seen = Vec::new();
    loop {
        let ev = bob_events
            .next(Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("bob's reply stalled after {seen:?}"));
        assert_eq!(ev["message_id"], b_reply, "only bob's reply: {ev}");
        let kind = ev["type"].as_str().unwrap_or_default().to_string();
        if kind == "queued" {
            assert_eq!(ev["position"], 1);
            assert_eq!(ev["text"], "Waiting — position 1 in queue");
            if !seen.iter().any(|k| k == "queued") {
                // While it waits, the rendered reply shows its place too.
                let (_, _, html) =
                    call(&app, &mut bob, "GET", &format!("/messages/{b_reply}"), None).await;
                let started = html.contains("queue-note\" role=\"status\" hidden");
                assert!(
                    html.contains("Waiting — position 1 in queue") || started,
                    "{html}"
                );
            }
        }
        let end = kind == "done" || kind == "error";
        seen.push(kind);
        if end {
            break;
        }
    }
    let first_queued = seen.iter().position(|k| k == "queued");
    let first_token = seen
        .iter()
        .position(|k| k == "answer" || k == "reasoning" || k == "started");
    assert!(
        matches!((first_queued, first_token), (Some(q), Some(t)) if q < t),
        "queued before the first token: {seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("done"), "{seen:?}");
    // Alice's reply finished first (FIFO) and is hers alone.
    let (status, _, html) = call(
        &app,
        &mut alice,
        "GET",
        &format!("/messages/{a_reply}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!html.contains("streaming"), "{html}");
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_browser_cannot_fill_the_queue() {
    let (service, app, engine) = engine_app("flood");
    // Greedy decoding on the synthetic model never ends a turn: every reply stays in.
    let mut settings = service.settings();
    settings.sampling.temperature = 0.0;
    settings.sampling.max_tokens = 4000;
    service.update_settings(settings).unwrap();
    let (mut alice, mut bob) = (Jar::default(), Jar::default());
    call(&app, &mut alice, "GET", "/conversations", None).await;
    call(&app, &mut bob, "GET", "/conversations", None).await;

    let mut accepted = 0;
    let mut refusals = Vec::new();
    for i in 0..30 {
        let form = format!("text={}", enc(&format!("Tell me story number {i}.")));
        let (status, headers, body) =
            call(&app, &mut alice, "POST", "/messages", Some(&form)).await;
        if status == StatusCode::OK {
            assert!(refusals.is_empty(), "accepted after a refusal: post {i}");
            accepted += 1;
        } else {
            refusals.push((i, status, headers, body));
        }
    }
    assert_eq!(accepted, 4, "one browser gets four replies in at once");
    let (first, status, headers, body) = &refusals[0];
    assert_eq!(*first, 4, "the fifth is refused");
    assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        body.contains("You already have 4 replies waiting or being written"),
        "{body}"
    );
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert_eq!(refusals.len(), 26);
    // Nothing of a refused message was kept.
    let (_, _, list) = call(&app, &mut alice, "GET", "/conversations", None).await;
    assert!(!list.contains("story number 4"), "{list}");
    assert!(list.contains("story number 3"));

    // Another browser still gets its turn in the same queue.
    let (status, _, body) = call(&app, &mut bob, "POST", "/messages", Some("text=hello")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The queue is now full for everyone (one running, four waiting).
    let (status, _, body) = call(&app, &mut bob, "POST", "/messages", Some("text=again")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("The model is busy"), "{body}");
    engine.shutdown();
}
