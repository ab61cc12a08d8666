//! The desktop's "Engine" dialog, driven through the router against a small OpenAI-compatible
//! mock server on 127.0.0.1: a server's models are listed with its key, it is saved and
//! used, a message is answered by it (and says so under the reply), a wrong key is refused
//! with a clear message, and going back to this computer works. The key never reaches the
//! database file. (A real llama.cpp server is exercised by `tests/remote_engine.rs`.)

mod support;
use support::router::{assistant_id, call_with_headers as call, enc, wait_done};

use std::time::Duration;

use axum::extract::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use smollm3_bot::app::ChatService;
use smollm3_bot::shell::http::router;
use smollm3_bot::store::keys::KeyStore;

const KEY: &str = "sk-mock-0123456789";

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {KEY}"))
}

fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": {"message": "invalid api key", "type": "auth"}})),
    )
        .into_response()
}

async fn models(headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return refused();
    }
    Json(json!({"object": "list", "data": [
        {"id": "big-model", "object": "model"},
        {"id": "other-model", "object": "model"}
    ]}))
    .into_response()
}

/// Streams reasoning (llama.cpp's `reasoning_content`), then the answer, then usage.
async fn chat(headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if !authorized(&headers) {
        return refused();
    }
    assert_eq!(body["model"], "big-model");
    assert_eq!(body["stream"], true);
    let last = body["messages"].as_array().and_then(|m| m.last()).cloned();
    if last.is_some_and(|m| m["content"].as_str().is_some_and(|c| c.contains("cut"))) {
        // Two pieces, then the connection breaks (the server died mid-reply).
        let pieces: Vec<Result<String, std::io::Error>> = vec![
            Ok(format!(
                "data: {}\n\n",
                json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Half a"}}]})
            )),
            Ok(format!(
                "data: {}\n\n",
                json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": " sentence"}}]})
            )),
            Err(std::io::Error::other("the server died")),
        ];
        // Each piece a moment apart, so the text reaches the client before the break.
        let paced = futures_util::stream::unfold(pieces.into_iter(), |mut rest| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            rest.next().map(|piece| (piece, rest))
        });
        return (
            [("content-type", "text/event-stream")],
            axum::body::Body::from_stream(paced),
        )
            .into_response();
    }
    let chunk = |delta: Value| {
        format!(
            "data: {}\n\n",
            json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})
        )
    };
    let mut sse = String::new();
    sse += &chunk(json!({"role": "assistant", "reasoning_content": "Thinking it over."}));
    for piece in ["Hello", " from", " the <b>big</b>", " server."] {
        sse += &chunk(json!({"content": piece}));
    }
    sse += &format!(
        "data: {}\n\n",
        json!({"object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 21, "completion_tokens": 6, "total_tokens": 27}})
    );
    sse += "data: [DONE]\n\n";
    ([("content-type", "text/event-stream")], sse).into_response()
}

async fn mock_server() -> String {
    let app = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_server_answers_and_the_reply_says_so() {
    let url = mock_server().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.sqlite3");
    let service = ChatService::open(&db).unwrap();
    service.set_keys(KeyStore::file(dir.path().join("keys.json")));
    let app = router(service.clone());

    let (status, _, panel) = call(&app, "GET", "/engine", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        panel.contains("This computer") && panel.contains("Add a server"),
        "{panel}"
    );

    // A wrong key: the server's refusal, in words.
    let (_, _, listed) = call(
        &app,
        "POST",
        "/engine/models",
        Some(&format!("base_url={}&key=wrong", enc(&url))),
    )
    .await;
    assert!(listed.contains("engine-models-error"), "{listed}");
    assert!(
        listed.to_lowercase().contains("key"),
        "says the key is the problem: {listed}"
    );

    // The right key lists the models to choose from.
    let (_, _, listed) = call(
        &app,
        "POST",
        "/engine/models",
        Some(&format!("base_url={}&key={KEY}", enc(&url))),
    )
    .await;
    assert!(listed.contains("<option value=\"big-model\">"), "{listed}");
    assert!(listed.contains("other-model"));

    // Save and use.
    let (status, _, panel) = call(
        &app,
        "POST",
        "/engine/servers",
        Some(&format!(
            "base_url={}&key={KEY}&model=big-model&name={}",
            enc(&url),
            enc("GPU <box>")
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(panel.contains("engine-notice"), "{panel}");
    assert!(
        panel.contains("GPU &lt;box&gt;"),
        "the name is escaped: {panel}"
    );
    assert!(!panel.contains(KEY), "the key is never shown back");
    assert!(service.uses_a_server());
    let host = url.trim_start_matches("http://");
    let (_, _, status_bar) = call(&app, "GET", "/status", None).await;
    assert!(
        status_bar.contains(&format!("big-model on {host}")),
        "{status_bar}"
    );

    // A message is answered by the server, its reasoning and figures kept, and the reply
    // says which model wrote it.
    let (status, _, body) = call(&app, "POST", "/messages", Some("text=Hi+there")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = wait_done(&app, assistant_id(&body)).await;
    assert!(done.contains("Hello from the"), "{done}");
    assert!(done.contains("&lt;b&gt;big&lt;/b&gt;") || !done.contains("<b>big</b>"));
    assert!(done.contains("Thinking it over."), "reasoning kept: {done}");
    assert!(done.contains("6 tokens"), "usage shown: {done}");
    assert!(done.contains(&format!("big-model on {host}")), "{done}");

    // The server lost mid-reply: the text so far is kept, the reply marked cut short (kept
    // in the conversation), the reason shown.
    let (_, _, body) = call(&app, "POST", "/messages", Some("text=Now+cut+it+short")).await;
    let conversation_reply = assistant_id(&body);
    let done = wait_done(&app, conversation_reply).await;
    assert!(done.contains("Half a sentence"), "{done}");
    assert!(done.contains("Cut short:"), "{done}");
    let stored = service.message(conversation_reply).unwrap().message;
    assert_eq!(
        stored.status,
        smollm3_bot::app::repo::MessageStatus::Interrupted
    );
    assert_eq!(stored.content, "Half a sentence");

    // The key is in the key file, not in the database.
    let bytes = std::fs::read(&db).unwrap();
    assert!(!bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()));
    assert!(std::fs::read_to_string(dir.path().join("keys.json"))
        .unwrap()
        .contains(KEY));

    // Back to this computer (no model set up here: the status says so).
    let (_, _, panel) = call(&app, "POST", "/engine/use", Some("engine=local")).await;
    assert!(panel.contains("engine-notice"), "{panel}");
    assert!(!service.uses_a_server());
    // The server stays saved and can be used again, then removed with its key.
    let id = service.servers().unwrap()[0].server.id;
    let (_, _, panel) = call(&app, "POST", "/engine/use", Some(&format!("engine={id}"))).await;
    assert!(panel.contains("In use"), "{panel}");
    assert!(service.uses_a_server());
    let (_, _, panel) = call(&app, "POST", &format!("/engine/servers/{id}/remove"), None).await;
    assert!(!panel.contains("GPU &lt;box&gt;"), "{panel}");
    assert!(!service.uses_a_server());
    assert!(!std::fs::read_to_string(dir.path().join("keys.json"))
        .unwrap()
        .contains(KEY));
}

#[tokio::test]
async fn a_browser_never_reaches_the_engine_dialog() {
    let service = ChatService::in_memory();
    let app = smollm3_bot::shell::http::browser_router(service);
    let (status, _, _) = call(&app, "GET", "/engine", None).await;
    assert_ne!(status, StatusCode::OK);
    let (status, _, _) = call(&app, "POST", "/engine/use", Some("engine=local")).await;
    assert_ne!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_api_forwards_to_the_server_in_use_with_the_servers_key() {
    let url = mock_server().await;
    let dir = tempfile::tempdir().unwrap();
    let service = ChatService::open(dir.path().join("chat.sqlite3")).unwrap();
    service.set_keys(KeyStore::file(dir.path().join("keys.json")));
    let saved = service.add_server("mock", &url, "big-model", KEY).unwrap();
    service.use_server(saved.id).unwrap();
    let api = smollm3_bot::shell::openai::live_api_router(service.clone(), false);

    // The model list is the server's.
    let (status, _, body) = call(&api, "GET", "/v1/models", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("big-model") && body.contains("other-model"),
        "{body}"
    );

    // A streamed chat completion comes back as the server sent it; the client's own key (none
    // here: the app's guard checks it) is never what the server sees, the saved key is.
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer the-apps-own-key")
        .body(axum::body::Body::from(
            json!({"model": "big-model", "stream": true,
                   "messages": [{"role": "user", "content": "Hi"}]})
            .to_string(),
        ))
        .unwrap();
    let resp = tower::ServiceExt::oneshot(api.clone(), req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("Hello") && text.contains("[DONE]"), "{text}");

    // The local model's tokenizer routes are not there; health says where replies come from.
    let (status, _, body) = call(&api, "POST", "/tokenize", Some("x")).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    let (status, _, body) = call(&api, "GET", "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("big-model"), "{body}");

    // Back on this computer (no model here), the API says there is no model.
    service.use_this_computer().unwrap();
    let (status, _, _) = call(&api, "GET", "/v1/models", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}
