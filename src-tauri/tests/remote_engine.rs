//! The remote engine against a real third-party OpenAI-compatible server: llama-cpp-python's
//! server on 127.0.0.1 serving the shared tiny fixture. Needs `pip install
//! 'llama-cpp-python[server]'` (it compiles llama.cpp, minutes), so it is not in the default
//! run: `cargo test -p smollm3-bot --test remote_engine -- --ignored --nocapture` (`.ci/test`
//! installs it and runs them).

mod support;
use support::router::{call_with_headers as call, enc, wait_done_within};

use smollm3_bot::engine::events::{ChatMessage, EngineEvent, FinishReason};
use smollm3_bot::engine::remote::{list_models, RemoteGenerator, RemoteOptions, RemoteServer};
use smollm3_bot::engine::{GenerateRequest, Generator, JobHandle};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "test-key-for-the-remote-engine";

fn fixture() -> PathBuf {
    let dir = std::env::var_os("SMOLLM3_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    dir.join("reference/tiny-smollm3-f32.gguf")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// llama-cpp-python's server on a free port, killed when dropped.
struct LlamaServer {
    child: Child,
    base: String,
}

impl LlamaServer {
    async fn start() -> Self {
        let port = free_port();
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let child = Command::new(python)
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(fixture())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--api_key",
                KEY,
                "--n_ctx",
                "512",
                // One thread: llama.cpp's threads spin at each step's barrier, and on a CPU
                // shared with other work (two cores, a compiler beside) that can stall a
                // reply for minutes.
                "--n_threads",
                "1",
                "--chat_format",
                "chatml",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m llama_cpp.server (pip install 'llama-cpp-python[server]')");
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let t = Instant::now();
        while list_models(&server.base, Some(KEY), &RemoteOptions::default())
            .await
            .is_err()
        {
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "the server did not start"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        server
    }

    fn generator(&self, key: &str, model: &str) -> RemoteGenerator {
        RemoteGenerator::new(
            RemoteServer {
                base_url: format!("{}/v1", self.base),
                api_key: Some(key.into()),
                model: model.into(),
            },
            RemoteOptions::default(),
        )
        .unwrap()
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn request(max_tokens: usize) -> GenerateRequest {
    let mut req = GenerateRequest::new(
        Some("remote".into()),
        vec![ChatMessage::new("user", "Tell me about the sea.")],
        chrono::NaiveDate::from_ymd_opt(2026, 12, 7).unwrap(),
    );
    req.params.max_tokens = max_tokens;
    req.params.temperature = 0.0;
    req.params.seed = Some(1);
    req
}

/// Reads a reply to its end; `on_text` may stop it or kill the server after the first text.
async fn read(mut job: JobHandle, mut on_text: impl FnMut(&JobHandle)) -> Vec<EngineEvent> {
    let mut out = Vec::new();
    let mut seen_text = false;
    while let Some(e) = tokio::time::timeout(Duration::from_secs(120), job.events.recv())
        .await
        .expect("an event within two minutes")
    {
        if !seen_text
            && matches!(
                e,
                EngineEvent::Answer { .. } | EngineEvent::Reasoning { .. }
            )
        {
            seen_text = true;
            on_text(&job);
        }
        out.push(e);
    }
    out
}

fn text_len(events: &[EngineEvent]) -> usize {
    events
        .iter()
        .map(|e| match e {
            EngineEvent::Answer { text } | EngineEvent::Reasoning { text } => text.len(),
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs llama-cpp-python[server]"]
async fn a_real_openai_compatible_server_streams_stops_and_fails_clearly() {
    let server = LlamaServer::start().await;
    let models = list_models(&server.base, Some(KEY), &RemoteOptions::default())
        .await
        .unwrap();
    assert!(!models.is_empty(), "the server lists its model");
    let model = models[0].clone();

    // A reply streams and ends with its figures (this server sends no `usage` in a stream:
    // the generated count is then the chunks streamed, the prompt's unknown, 0).
    let ev = read(server.generator(KEY, &model).submit(request(24)), |_| {}).await;
    assert!(text_len(&ev) > 0, "{ev:?}");
    match ev.last() {
        Some(EngineEvent::Done { stats, .. }) => {
            assert!(
                stats.generated_tokens > 0 && stats.ttft_s > 0.0,
                "{stats:?}"
            );
            assert!(matches!(
                stats.finish_reason,
                FinishReason::Length | FinishReason::Stop
            ));
        }
        other => panic!("no end: {other:?}"),
    }

    // Stop after the first text: the reply ends as cancelled, well before its length.
    let ev = read(server.generator(KEY, &model).submit(request(400)), |job| {
        job.cancel.cancel()
    })
    .await;
    match ev.last() {
        Some(EngineEvent::Done { stats, .. }) => {
            assert_eq!(stats.finish_reason, FinishReason::Cancelled)
        }
        other => panic!("no end: {other:?}"),
    }

    // A wrong key is said plainly.
    let ev = read(
        server.generator("wrong-key", &model).submit(request(8)),
        |_| {},
    )
    .await;
    match ev.last() {
        Some(EngineEvent::Error { message }) => {
            assert!(message.contains("refused the API key (401)"), "{message}")
        }
        other => panic!("no error: {other:?}"),
    }

    // The server killed mid-reply: the text so far came, then an error says the connection
    // ended.
    let mut server = server;
    let pid = server.child.id();
    let ev = read(server.generator(KEY, &model).submit(request(400)), |_| {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    })
    .await;
    assert!(text_len(&ev) > 0);
    match ev.last() {
        Some(EngineEvent::Error { message }) => assert!(
            message.contains("mid-reply") || message.contains("lost"),
            "{message}"
        ),
        other => panic!("no error: {other:?}"),
    }
    let _ = server.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs llama-cpp-python[server]"]
async fn the_app_saves_a_real_server_and_its_replies_say_who_wrote_them() {
    use axum::http::StatusCode;
    let server = LlamaServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.sqlite3");
    let service = smollm3_bot::app::ChatService::open(&db).unwrap();
    service.set_keys(smollm3_bot::store::keys::KeyStore::file(
        dir.path().join("keys.json"),
    ));
    let app = smollm3_bot::shell::http::router(service.clone());
    // Short replies: this server sends nothing while the random tiny model writes pieces of
    // characters, and a long reply can hold such a silence past the app's 60 s between chunks.
    let mut settings = service.settings();
    settings.sampling.max_tokens = 64;
    service.update_settings(settings).unwrap();

    // The Engine dialog lists the server's model with the key, then saves and uses it.
    let (_, _, listed) = call(
        &app,
        "POST",
        "/engine/models",
        Some(&format!("base_url={}&key=wrong", enc(&server.base))),
    )
    .await;
    assert!(listed.contains("refused the API key"), "{listed}");
    let (_, _, listed) = call(
        &app,
        "POST",
        "/engine/models",
        Some(&format!("base_url={}&key={KEY}", enc(&server.base))),
    )
    .await;
    let start = listed.find("<option value=\"").expect("a model to choose") + 15;
    let model = listed[start..].split('"').next().unwrap().to_string();
    let (status, _, panel) = call(
        &app,
        "POST",
        "/engine/servers",
        Some(&format!(
            "base_url={}&key={KEY}&model={}&name=llama.cpp",
            enc(&server.base),
            enc(&model)
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(panel.contains("engine-notice"), "{panel}");

    // A message: the reply streams from llama.cpp's server into the conversation.
    let (status, _, body) = call(
        &app,
        "POST",
        "/messages",
        Some("text=Tell+me+about+the+sea"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let at = body.find("class=\"msg assistant").expect("a reply");
    let id: i64 = body[at..]
        .split("id=\"msg-")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("reply id");
    let done = wait_done_within(&app, id, Duration::from_secs(120)).await;
    let host = server.base.trim_start_matches("http://");
    // llama.cpp's server names the model by its file's path: shown by the file's name.
    let shown = model.rsplit('/').next().unwrap();
    assert!(done.contains(&format!("{shown} on {host}")), "{done}");
    assert!(done.contains("tokens"), "figures under the reply: {done}");
    let stored = service.message(id).unwrap().message;
    assert!(!stored.content.is_empty() || !stored.reasoning.is_empty());
    assert_eq!(
        stored.answered_by.as_deref(),
        Some(format!("{shown} on {host}").as_str())
    );
    let bytes = std::fs::read(&db).unwrap();
    assert!(!bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()));

    // The app's own API answers through the server too (behind the app's guard, with the
    // saved key): a chat completion from llama.cpp's server, its model list.
    let api = smollm3_bot::shell::openai::live_api_router(service.clone(), false);
    let (status, _, listed) = call(&api, "GET", "/v1/models", None).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert!(listed.contains(&model), "{listed}");
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            serde_json::json!({"model": model, "max_tokens": 8, "temperature": 0,
                   "messages": [{"role": "user", "content": "Hello"}]})
            .to_string(),
        ))
        .unwrap();
    let resp = tower::ServiceExt::oneshot(api, req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");

    // The server killed mid-reply: the reply keeps its text and is marked cut short.
    let mut events = service.subscribe();
    // A long reply, so that it still runs when the kill lands.
    let mut settings = service.settings();
    settings.sampling.max_tokens = 400;
    service.update_settings(settings).unwrap();
    // A new conversation: the first one may already fill this server's 512-token context.
    let outcome = service.send(None, "Tell me about the sea.").unwrap();
    let smollm3_bot::app::SendOutcome::Reply { assistant, .. } = outcome else {
        panic!("no reply started");
    };
    let mut server = server;
    let pid = server.child.id();
    let t = Instant::now();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(120), events.recv())
            .await
            .expect("an event")
            .expect("the stream");
        if e.message_id != assistant.id.0 {
            continue;
        }
        match e.event {
            EngineEvent::Answer { .. } | EngineEvent::Reasoning { .. } => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                break;
            }
            EngineEvent::Done { .. } | EngineEvent::Error { .. } => {
                panic!("the reply ended before any text: {:?}", e.event)
            }
            _ => assert!(t.elapsed() < Duration::from_secs(120)),
        }
    }
    let _ = server.child.wait();
    let html = wait_done_within(&app, assistant.id.0, Duration::from_secs(180)).await;
    let cut = service.message(assistant.id.0).unwrap().message;
    assert_eq!(
        cut.status,
        smollm3_bot::app::repo::MessageStatus::Interrupted,
        "{html}"
    );
    assert!(!cut.content.is_empty() || !cut.reasoning.is_empty());
    assert!(html.contains("Cut short:"), "{html}");
}
