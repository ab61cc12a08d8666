//! Changing the model without a restart, through the UI's router: saving another model file in
//! the settings stops the reply in progress (kept, marked interrupted), shuts the old engine
//! down, loads the new model with the status bar going from loading to ready, and chats go on
//! with it; a bad file leaves the current model in use and says why.

mod support;
use support::router::{call, enc};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use smollm3_bot::app::{ChatService, EngineState, SendOutcome};
use smollm3_bot::engine::{ChatMessage, EngineEvent, EngineOptions, GenerateRequest, Generator};
use smollm3_bot::model::synth::{self, Preset, Quant};
use smollm3_bot::store::MessageStatus;

/// While false, model loads wait: the test can look at the app mid-load.
static GATE: AtomicBool = AtomicBool::new(true);

/// Every generator the loader made, in order.
static LOADED: Mutex<Vec<Arc<dyn Generator>>> = Mutex::new(Vec::new());

/// The real loader, behind [`GATE`].
fn gated_loader(
    model: &Path,
    tokenizer: Option<&Path>,
    opts: EngineOptions,
    progress: &dyn Fn(f32),
) -> anyhow::Result<Arc<dyn Generator>> {
    let t0 = Instant::now();
    while !GATE.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let generator = smollm3_bot::app::service::load_engine(model, tokenizer, opts, progress)?;
    LOADED.lock().unwrap().push(generator.clone());
    Ok(generator)
}

/// Saves the settings form with `fields` through the router.
async fn save_settings(app: &Router, fields: &[(&str, &str)]) {
    let form: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    let (status, body) = call(app, "POST", "/settings", Some(&form.join("&"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn status_bar(app: &Router) -> String {
    let (status, body) = call(app, "GET", "/status", None).await;
    assert_eq!(status, StatusCode::OK);
    body
}

/// Polls the status bar until `ok` holds (bounded).
async fn wait_status(app: &Router, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let bar = status_bar(app).await;
        if ok(&bar) {
            return bar;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the status bar never showed {what}: {bar}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) for a reply to end; returns its status and answer text.
async fn wait_reply(service: &ChatService, id: i64) -> (MessageStatus, String) {
    let t0 = Instant::now();
    loop {
        let m = service.message(id).expect("the reply exists").message;
        if m.status != MessageStatus::Streaming {
            return (m.status, m.content);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "reply {id} never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn reply_of(outcome: SendOutcome) -> (i64, i64) {
    match outcome {
        SendOutcome::Reply {
            conversation,
            assistant,
            ..
        } => (conversation.id.0, assistant.id.0),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn models() -> (PathBuf, PathBuf, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("model-switch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("first-tiny.gguf");
    let b = dir.join("second-small.gguf");
    synth::write(Preset::Tiny, Quant::Q4KM, 1, &a).unwrap();
    synth::write(Preset::Small, Quant::Q4KM, 2, &b).unwrap();
    let bad = dir.join("broken.gguf");
    std::fs::write(&bad, b"GGUF but nothing after it").unwrap();
    (a, b, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_model_in_the_settings_loads_it_without_a_restart() {
    std::env::remove_var("MODEL_PATH");
    let (first, second, bad) = models();
    let service = ChatService::in_memory();
    service.set_model_loader(gated_loader);
    let app = smollm3_bot::shell::http::router(service.clone());

    // The first model, from the settings; greedy and long replies so one is still streaming
    // when the model changes.
    save_settings(
        &app,
        &[
            ("model_path", &first.display().to_string()),
            ("temperature", "0"),
            ("context_size", "4096"),
            ("max_tokens", "3000"),
        ],
    )
    .await;
    wait_status(&app, "the first model ready", |b| {
        b.contains("engine ready") && b.contains("first-tiny.gguf")
    })
    .await;

    let (conversation, long_reply) = reply_of(service.send(None, "Tell me everything.").unwrap());
    let t0 = Instant::now();
    while service.message(long_reply).unwrap().message.content.len() < 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the reply never streamed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Switch while it streams, holding the load so the loading state can be seen.
    GATE.store(false, Ordering::SeqCst);
    // Short replies from here on; the running reply keeps its own settings.
    save_settings(
        &app,
        &[
            ("model_path", &second.display().to_string()),
            ("max_tokens", "16"),
        ],
    )
    .await;
    wait_status(&app, "the second model loading", |b| {
        b.contains("engine loading") && b.contains("Loading second-small.gguf")
    })
    .await;
    let (status, partial) = wait_reply(&service, long_reply).await;
    assert_eq!(
        status,
        MessageStatus::Interrupted,
        "the reply in progress is stopped and kept as interrupted"
    );
    assert!(!partial.is_empty(), "its text is kept");
    // A message sent while loading gets a clear answer instead of waiting forever.
    let (_, during) = reply_of(service.send(Some(conversation), "Still there?").unwrap());
    let (status, _) = wait_reply(&service, during).await;
    assert_eq!(status, MessageStatus::Error);
    let error = service
        .message(during)
        .unwrap()
        .message
        .error
        .unwrap_or_default();
    assert!(error.contains("second-small.gguf is loading"), "{error}");

    GATE.store(true, Ordering::SeqCst);
    let bar = wait_status(&app, "the second model ready", |b| {
        b.contains("engine ready")
    })
    .await;
    assert!(bar.contains("second-small.gguf"), "{bar}");
    assert!(!bar.contains("first-tiny.gguf"), "{bar}");
    assert_eq!(
        service.engine_state(),
        EngineState::Ready {
            model: "second-small.gguf".into()
        }
    );
    // The first engine was shut down, not left running beside the new one.
    let first_engine = LOADED.lock().unwrap()[0].clone();
    let mut job = first_engine.submit(GenerateRequest::new(
        Some("99".into()),
        vec![ChatMessage::new("user", "Anyone there?")],
        chrono::NaiveDate::from_ymd_opt(2026, 11, 27).unwrap(),
    ));
    match tokio::time::timeout(Duration::from_secs(30), job.events.recv()).await {
        Ok(Some(EngineEvent::Error { message })) => {
            assert!(message.contains("unloaded"), "{message}")
        }
        other => panic!("the first engine still runs: {other:?}"),
    }

    // A chat works on the new model, in the same conversation.
    let (_, answer) = reply_of(service.send(Some(conversation), "Hello again.").unwrap());
    let (status, text) = wait_reply(&service, answer).await;
    assert_eq!(status, MessageStatus::Complete);
    assert!(!text.is_empty());

    // A broken file: the second model stays in use and the status bar says why.
    save_settings(&app, &[("model_path", &bad.display().to_string())]).await;
    let bar = wait_status(&app, "the kept model", |b| b.contains("engine kept")).await;
    assert!(
        bar.contains("second-small.gguf (new model not loaded)"),
        "{bar}"
    );
    assert!(bar.contains("broken.gguf is not a usable model"), "{bar}");
    let (_, answer) = reply_of(service.send(Some(conversation), "One more.").unwrap());
    assert_eq!(
        wait_reply(&service, answer).await.0,
        MessageStatus::Complete,
        "replies still work on the kept model"
    );

    // /clear starts a new conversation; the old one stays in the sidebar.
    let before = service.conversations(None).unwrap().len();
    service.send(Some(conversation), "/clear").unwrap();
    let after = service.conversations(None).unwrap();
    assert_eq!(after.len(), before + 1);
    assert!(after.iter().any(|c| c.id == conversation));
    let _ = std::fs::remove_dir_all(first.parent().unwrap());
}
