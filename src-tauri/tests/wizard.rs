//! The first-run wizard through the app's router, in-process, against a mock Hugging Face hub
//! on 127.0.0.1 serving a tiny synthetic SmolLM3: the wizard shows while no model is set up,
//! a download streams rising progress and ends with a verified, loaded model saved in the
//! settings, imports are checked, and failures read as human messages.

mod support;
use support::router::{call, enc};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use smollm3_bot::app::wizard::Phase;
use smollm3_bot::app::{ChatService, EngineState};
use smollm3_bot::hub::{DownloadOptions, RetryPolicy};
use smollm3_bot::model::synth::{self, Preset, Quant};
use smollm3_bot::model::GgufFile;
use smollm3_bot::shell::http::router;
use support::mock_hub::{Fault, MockHub};
use tower::ServiceExt;

const REPO: &str = "ggml-org/SmolLM3-3B-GGUF";
const FILE: &str = "SmolLM3-Q4_K_M.gguf";
/// Longest any test waits for the wizard to reach an end.
const PATIENCE: Duration = Duration::from_secs(120);

/// A synthetic model file and the `tokenizer.json` that matches it.
fn model_bytes(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let path = dir.join("source.gguf");
    synth::write(Preset::Tiny, Quant::Q4KM, 1, &path).expect("synthetic model");
    let gguf = GgufFile::open(&path).expect("gguf");
    let tokenizer = smollm3_bot::text::tokenizer::from_gguf(&gguf)
        .expect("tokenizer")
        .to_string(false)
        .expect("tokenizer json");
    (
        std::fs::read(&path).expect("model bytes"),
        tokenizer.into_bytes(),
    )
}

/// A mock hub publishing the catalogue's recommended model (synthetic) and its tokenizer.
fn hub_with_model(scratch: &Path) -> (MockHub, usize) {
    let (model, tokenizer) = model_bytes(scratch);
    let hub = MockHub::start();
    let size = model.len();
    hub.add_lfs_file(REPO, "main", FILE, model);
    hub.add_git_file(
        "HuggingFaceTB/SmolLM3-3B",
        "main",
        "tokenizer.json",
        tokenizer,
    );
    (hub, size)
}

/// A service with no model whose wizard keeps models in `dir`.
fn app(dir: &Path) -> (ChatService, Router) {
    let service = ChatService::in_memory();
    service.wizard().set_models_dir(dir.to_path_buf());
    (service.clone(), router(service))
}

/// Makes `url` the download mirror, as the wizard's mirror form does (a desktop setting).
async fn use_mirror(app: &Router, url: &str) {
    let (status, page) = call(
        app,
        "POST",
        "/wizard/mirror",
        Some(&format!("mirror={}", enc(url))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains(&format!("value=\"{url}\"")), "{page}");
}

/// Reads the SSE body of `/wizard/events` until a phase in `until`, returning every payload.
async fn read_events(body: Body, until: &[&str]) -> Vec<Value> {
    let mut body = body;
    let mut buf = String::new();
    let mut out: Vec<Value> = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no end of download within {PATIENCE:?}: {out:?}"
        );
        let frame = tokio::time::timeout(left, body.frame())
            .await
            .expect("an event in time")
            .expect("the stream is open")
            .expect("a frame");
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.push_str(std::str::from_utf8(&data).expect("utf-8"));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let Some(line) = block.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue; // keep-alive comment
            };
            assert!(block.contains("event: chat-stream"), "{block}");
            let v: Value = serde_json::from_str(line.trim()).expect("json payload");
            let phase = v["phase"].as_str().unwrap_or_default().to_owned();
            out.push(v);
            if until.contains(&phase.as_str()) {
                return out;
            }
        }
    }
}

/// Waits for the wizard to reach ready or failed.
async fn wait_end(
    service: &ChatService,
    rx: &mut tokio::sync::broadcast::Receiver<Phase>,
) -> Phase {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the wizard did not finish: {:?}",
            service.wizard().phase()
        );
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(p @ (Phase::Ready { .. } | Phase::Failed { .. }))) => return p,
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("wizard channel closed: {e}"),
            Err(_) => panic!("the wizard did not finish: {:?}", service.wizard().phase()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_downloads_verifies_saves_and_loads_the_model() {
    let scratch = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let (hub, size) = hub_with_model(scratch.path());
    // About two seconds of transfer, so several progress updates go out.
    hub.throttle((size as u64 / 2).max(1));
    let (service, app) = app(models.path());

    let (status, page) = call(&app, "GET", "/layout", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("id=\"wizard\""), "{page}");
    assert!(page.contains("No model is set up yet"));
    assert!(!page.contains("Start a conversation"));
    let (_, choose) = call(&app, "GET", "/wizard/choose", None).await;
    assert!(choose.contains("SmolLM3-Q4_K_M.gguf") && choose.contains("RAM needed"));
    assert!(
        choose.contains("free)"),
        "free disk in the models folder: {choose}"
    );

    let sse = app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/wizard/events")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(sse.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    use_mirror(&app, &hub.url()).await;
    let form = "entry=q4_k_m".to_string();
    let started = Instant::now();
    let (status, panel) = call(&app, "POST", "/wizard/download", Some(&form)).await;
    assert_eq!(status, StatusCode::OK, "{panel}");
    assert!(
        panel.contains("Pause") && panel.contains("Cancel"),
        "{panel}"
    );

    let events = read_events(sse.into_body(), &["ready", "failed"]).await;
    let elapsed = started.elapsed().as_secs_f64();
    let last = events.last().unwrap();
    assert_eq!(last["phase"], "ready", "{last}");
    let model_done: Vec<u64> = events
        .iter()
        .filter(|e| e["phase"] == "downloading" && e["state"]["file"] == FILE)
        .map(|e| e["state"]["progress"]["done"].as_u64().unwrap())
        .collect();
    assert!(
        model_done.len() >= 3,
        "progress updates while the model downloads: {model_done:?}"
    );
    assert!(
        model_done.windows(2).all(|w| w[0] <= w[1]),
        "{model_done:?}"
    );
    assert!(model_done.first() < model_done.last(), "{model_done:?}");
    let bar = events
        .iter()
        .rev()
        .find(|e| e["phase"] == "downloading" && e["state"]["file"] == FILE)
        .unwrap()["bar"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(bar.contains('%') && bar.contains("/s"), "{bar}");
    // At most about four updates a second; the start, the first chunk and the last byte
    // each add one.
    let updates = model_done.len();
    assert!(
        updates as f64 <= 4.0 * elapsed + 3.0,
        "{updates} updates in {elapsed:.1} s"
    );
    assert!(events.iter().any(|e| e["phase"] == "verifying"));

    let want = models.path().join(FILE);
    assert_eq!(std::fs::metadata(&want).unwrap().len(), size as u64);
    assert_eq!(PathBuf::from(service.settings().model_path), want);
    assert!(matches!(service.engine_state(), EngineState::Ready { .. }));
    let (_, page) = call(&app, "GET", "/layout", None).await;
    assert!(page.contains("Start a conversation"), "{page}");
    assert!(!page.contains("id=\"wizard\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_download_says_so_and_retry_fixes_it() {
    let scratch = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let (hub, _) = hub_with_model(scratch.path());
    hub.fail_next(Fault::CorruptByte(1000));
    let (service, app) = app(models.path());
    let mut rx = service.wizard().subscribe();
    use_mirror(&app, &hub.url()).await;
    let form = "entry=q4_k_m".to_string();
    let (status, _) = call(&app, "POST", "/wizard/download", Some(&form)).await;
    assert_eq!(status, StatusCode::OK);
    match wait_end(&service, &mut rx).await {
        Phase::Failed { title, message, .. } => {
            assert!(title.contains("checksum mismatch"), "{title}");
            assert!(message.contains("download it again"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let (_, panel) = call(&app, "GET", "/wizard", None).await;
    assert!(
        panel.contains("damaged") && panel.contains("Retry"),
        "{panel}"
    );
    assert!(service.settings().model_path.is_empty());

    let (status, _) = call(&app, "POST", "/wizard/resume", Some("")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(matches!(
        wait_end(&service, &mut rx).await,
        Phase::Ready { .. }
    ));
    assert_eq!(
        PathBuf::from(service.settings().model_path),
        models.path().join(FILE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_on_the_hub_reads_as_not_found() {
    let models = tempfile::tempdir().unwrap();
    let hub = MockHub::start();
    // The endpoint comes from HF_ENDPOINT here, as it would for a user; other tests set a
    // mirror, which wins.
    std::env::set_var("HF_ENDPOINT", hub.url());
    let (service, app) = app(models.path());
    let mut rx = service.wizard().subscribe();
    let (status, _) = call(&app, "POST", "/wizard/download", Some("entry=q4_k_m")).await;
    assert_eq!(status, StatusCode::OK);
    match wait_end(&service, &mut rx).await {
        Phase::Failed { title, message, .. } => {
            assert!(
                title.contains("not found") && title.contains("404"),
                "{title}"
            );
            assert!(message.contains("Check the repository name"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(hub.requests().iter().any(|r| r.path.contains(FILE)));
    let (_, panel) = call(&app, "GET", "/wizard", None).await;
    assert!(panel.contains("not found on the server (404)"), "{panel}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_checks_the_file_and_loads_a_good_one() {
    let scratch = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let (service, app) = app(models.path());

    let (status, body) = call(
        &app,
        "POST",
        "/wizard/import",
        Some("path=%2Fno%2Fsuch%2Fmodel.gguf"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body.contains("There is no file at /no/such/model.gguf"),
        "{body}"
    );

    let junk = scratch.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a model").unwrap();
    let form = format!("path={}", enc(&junk.display().to_string()));
    let (status, body) = call(&app, "POST", "/wizard/import", Some(&form)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("is not a usable SmolLM3 model"), "{body}");
    assert!(service.settings().model_path.is_empty());

    let good = scratch.path().join("mine.gguf");
    synth::write(Preset::Tiny, Quant::Q4KM, 2, &good).unwrap();
    let mut rx = service.wizard().subscribe();
    let form = format!("path={}", enc(&good.display().to_string()));
    let (status, body) = call(&app, "POST", "/wizard/import", Some(&form)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(matches!(
        wait_end(&service, &mut rx).await,
        Phase::Ready { .. }
    ));
    assert_eq!(
        PathBuf::from(service.settings().model_path),
        models.path().join("mine.gguf")
    );
    let (_, page) = call(&app, "GET", "/layout", None).await;
    assert!(page.contains("Start a conversation"));
}

#[tokio::test]
async fn skipping_opens_the_chat_without_a_model() {
    let models = tempfile::tempdir().unwrap();
    let (_, app) = app(models.path());
    let (_, page) = call(&app, "GET", "/layout", None).await;
    assert!(page.contains("id=\"wizard-skip\""));
    let (status, chat) = call(&app, "POST", "/wizard/skip", Some("")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(chat.contains("Start a conversation"));
    let (_, page) = call(&app, "GET", "/layout", None).await;
    assert!(page.contains("Start a conversation"));
}

/// Waits for a phase that `pred` accepts.
async fn wait_for(
    rx: &mut tokio::sync::broadcast::Receiver<Phase>,
    what: &str,
    pred: impl Fn(&Phase) -> bool,
) -> Phase {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(p)) if pred(&p) => return p,
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("wizard channel closed waiting for {what}: {e}"),
            Err(_) => panic!("no {what} within {PATIENCE:?}"),
        }
    }
}

fn bytes_arrived(p: &Phase) -> bool {
    matches!(p, Phase::Downloading { file, progress, .. } if file == FILE && progress.done > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_keeps_the_part_and_resume_continues_from_it() {
    let scratch = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let (hub, size) = hub_with_model(scratch.path());
    hub.throttle((size as u64 / 3).max(1));
    let (service, app) = app(models.path());
    let mut rx = service.wizard().subscribe();
    use_mirror(&app, &hub.url()).await;
    let form = "entry=q4_k_m".to_string();
    call(&app, "POST", "/wizard/download", Some(&form)).await;
    wait_for(&mut rx, "progress", bytes_arrived).await;

    call(&app, "POST", "/wizard/pause", Some("")).await;
    let kept = match wait_for(&mut rx, "a pause", |p| matches!(p, Phase::Paused { .. })).await {
        Phase::Paused { bytes, .. } => bytes,
        _ => unreachable!(),
    };
    assert!(kept > 0 && kept < size as u64, "{kept}");
    assert!(models.path().join(format!("{FILE}.part")).exists());
    let (_, panel) = call(&app, "GET", "/wizard", None).await;
    assert!(
        panel.contains("Resume") && panel.contains("Paused at"),
        "{panel}"
    );

    call(&app, "POST", "/wizard/resume", Some("")).await;
    assert!(matches!(
        wait_end(&service, &mut rx).await,
        Phase::Ready { .. }
    ));
    let resumed = hub
        .content_requests()
        .iter()
        .filter_map(|r| r.range_start())
        .any(|start| start > 0);
    assert!(
        resumed,
        "the second request asked for the remaining bytes only"
    );
    assert_eq!(
        std::fs::metadata(models.path().join(FILE)).unwrap().len(),
        size as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_download_and_removes_the_part() {
    let scratch = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let (hub, size) = hub_with_model(scratch.path());
    hub.throttle((size as u64 / 3).max(1));
    let (service, app) = app(models.path());
    let mut rx = service.wizard().subscribe();
    use_mirror(&app, &hub.url()).await;
    let form = "entry=q4_k_m".to_string();
    call(&app, "POST", "/wizard/download", Some(&form)).await;
    wait_for(&mut rx, "progress", bytes_arrived).await;
    let (status, body) = call(&app, "POST", "/wizard/cancel", Some("")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("Choose a model"), "{body}");
    wait_for(&mut rx, "the cancel", |p| matches!(p, Phase::Cancelled)).await;
    assert!(!models.path().join(format!("{FILE}.part")).exists());
    assert!(!models.path().join(FILE).exists());
    assert!(service.settings().model_path.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_or_a_network_problem_is_named_as_such() {
    let scratch = tempfile::tempdir().unwrap();
    let (hub, _) = hub_with_model(scratch.path());
    hub.require_token("hf_secret");
    // A port that was just free: nothing listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    for (endpoint, headline, detail) in [
        (
            hub.url(),
            "needs a Hugging Face token (HF_TOKEN)",
            "export HF_TOKEN",
        ),
        (closed, "No network connection", "cannot reach 127.0.0.1"),
    ] {
        let models = tempfile::tempdir().unwrap();
        let (service, app) = app(models.path());
        service.wizard().set_download_options(DownloadOptions {
            retry: RetryPolicy {
                max_retries: 1,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(10),
                ..RetryPolicy::default()
            },
            ..DownloadOptions::default()
        });
        let mut rx = service.wizard().subscribe();
        use_mirror(&app, &endpoint).await;
        let form = "entry=q4_k_m".to_string();
        call(&app, "POST", "/wizard/download", Some(&form)).await;
        wait_end(&service, &mut rx).await;
        let (_, panel) = call(&app, "GET", "/wizard", None).await;
        assert!(panel.contains(headline), "{panel}");
        assert!(panel.contains(detail), "{panel}");
        assert!(panel.contains("Retry"), "{panel}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_download_says_it_is_connecting_and_an_unreachable_host_ends_within_15_s() {
    let models = tempfile::tempdir().unwrap();
    let (service, app) = app(models.path());
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let mut rx = service.wizard().subscribe();
    use_mirror(&app, &closed).await;
    let started = std::time::Instant::now();
    let form = "entry=q4_k_m".to_string();
    call(&app, "POST", "/wizard/download", Some(&form)).await;
    // At once, before any answer: what it is doing. Read from the first state published, not
    // from a later GET: a refused connection is answered at once, so a GET can already find the
    // first retry.
    let first = wait_for(&mut rx, "the first download state", |p| {
        matches!(p, Phase::Downloading { .. })
    })
    .await;
    let bar = smollm3_bot::shell::wizard::bar(&first);
    assert!(bar.contains("Connecting to 127.0.0.1…"), "{bar}");
    // Then each retry with its wait, then the error, all with the default policy.
    let retry = wait_for(
        &mut rx,
        "a retry note",
        |p| matches!(p, Phase::Downloading { note: Some(n), .. } if n.contains("retrying in")),
    )
    .await;
    let bar = smollm3_bot::shell::wizard::bar(&retry);
    assert!(
        bar.contains("Cannot connect; retrying in 1 s (1 of 8)"),
        "{bar}"
    );
    match wait_end(&service, &mut rx).await {
        Phase::Failed { title, .. } => assert_eq!(title, "No network connection"),
        other => panic!("expected a failure, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "the error came after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_named_before_any_byte_is_written() {
    let scratch = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let (hub, _) = hub_with_model(scratch.path());
    let (service, app) = app(models.path());
    service.wizard().set_download_options(DownloadOptions {
        space_probe: std::sync::Arc::new(|_: &Path| Ok(1_000)),
        space_margin: 0,
        ..DownloadOptions::default()
    });
    let mut rx = service.wizard().subscribe();
    use_mirror(&app, &hub.url()).await;
    let form = "entry=q4_k_m".to_string();
    call(&app, "POST", "/wizard/download", Some(&form)).await;
    match wait_end(&service, &mut rx).await {
        Phase::Failed { title, message, .. } => {
            assert_eq!(title, "The disk is full");
            assert!(message.contains("not enough free disk space"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(hub.content_requests().is_empty(), "nothing was fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_shows_a_retry_and_the_download_still_finishes() {
    let scratch = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let (hub, size) = hub_with_model(scratch.path());
    hub.fail_next(Fault::DropAt(size as u64 / 2));
    let (service, app) = app(models.path());
    let mut rx = service.wizard().subscribe();
    use_mirror(&app, &hub.url()).await;
    let form = "entry=q4_k_m".to_string();
    call(&app, "POST", "/wizard/download", Some(&form)).await;
    let retry = wait_for(
        &mut rx,
        "a retry note",
        |p| matches!(p, Phase::Downloading { note: Some(n), .. } if n.contains("retrying")),
    )
    .await;
    let bar = smollm3_bot::shell::wizard::bar(&retry);
    assert!(bar.contains("retrying in 1 s (1 of"), "{bar}");
    assert!(matches!(
        wait_end(&service, &mut rx).await,
        Phase::Ready { .. }
    ));
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_found_on_this_computer_are_offered_and_used_in_place() {
    // A Hugging Face cache as the hub's own tools leave it: the snapshot's file links into
    // the blobs. (The only test here that sets it; others do not look at found models.)
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--ggml-org--SmolLM3-3B-GGUF");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    synth::write(Preset::Tiny, Quant::Q4KM, 3, &repo.join("blobs/0a1b")).unwrap();
    let snapshot = repo.join("snapshots/5f6e");
    std::fs::create_dir_all(&snapshot).unwrap();
    let found = snapshot.join(FILE);
    std::os::unix::fs::symlink("../../blobs/0a1b", &found).unwrap();
    std::env::set_var("HF_HUB_CACHE", cache.path());

    let models = tempfile::tempdir().unwrap();
    let (service, app) = app(models.path());
    let (status, page) = call(&app, "GET", "/wizard/choose", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Found on this computer"), "{page}");
    assert!(
        page.contains("ggml-org/SmolLM3-3B-GGUF · SmolLM3-Q4_K_M.gguf"),
        "{page}"
    );
    assert!(page.contains("Hugging Face cache"), "{page}");

    // Any other path is refused, even a good model: the page cannot name files to load.
    let elsewhere = models.path().join("elsewhere.gguf");
    synth::write(Preset::Tiny, Quant::Q4KM, 4, &elsewhere).unwrap();
    let form = format!("path={}", enc(&elsewhere.display().to_string()));
    let (status, body) = call(&app, "POST", "/wizard/use", Some(&form)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("is not among the models found"), "{body}");
    assert!(service.settings().model_path.is_empty());

    let mut rx = service.wizard().subscribe();
    let form = format!("path={}", enc(&found.display().to_string()));
    let (status, body) = call(&app, "POST", "/wizard/use", Some(&form)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(matches!(
        wait_end(&service, &mut rx).await,
        Phase::Ready { .. }
    ));
    // Used where it is: the settings name the snapshot, nothing new in the models folder.
    assert_eq!(PathBuf::from(service.settings().model_path), found);
    let names: Vec<_> = std::fs::read_dir(models.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["elsewhere.gguf"]);
    assert!(
        std::fs::read_dir(&snapshot).unwrap().count() == 1,
        "nothing written beside it"
    );
    std::env::remove_var("HF_HUB_CACHE");
}

/// The installed model names the models screen lists, in order, with the one in use marked.
fn listed(page: &str) -> Vec<String> {
    page.split("class=\"model-choice installed")
        .skip(1)
        .map(|row| {
            let name = row
                .split("data-name=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default();
            let used = row.starts_with(" in-use");
            format!("{name}{}", if used { " (in use)" } else { "" })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_screen_lists_switches_and_deletes_after_asking() {
    let scratch = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let (service, app) = app(models.path());
    let q4 = scratch.path().join("SmolLM3-Q4_K_M.gguf");
    synth::write(Preset::Tiny, Quant::Q4KM, 2, &q4).unwrap();
    let q8 = models.path().join("SmolLM3-Q8_0.gguf");
    synth::write(Preset::Tiny, Quant::Q8_0, 3, &q8).unwrap();
    let mut rx = service.wizard().subscribe();
    let form = format!("path={}", enc(&q4.display().to_string()));
    let (status, body) = call(&app, "POST", "/models/import", Some(&form)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Loading the model"), "{body}");
    assert!(matches!(
        wait_end(&service, &mut rx).await,
        Phase::Ready { .. }
    ));
    let in_folder_q4 = models.path().join("SmolLM3-Q4_K_M.gguf");

    let (status, page) = call(&app, "GET", "/models", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        listed(&page),
        ["SmolLM3-Q4_K_M.gguf (in use)", "SmolLM3-Q8_0.gguf"],
        "{page}"
    );
    assert!(
        page.contains("Q4_K_M ·") && page.contains("Q8_0 ·"),
        "{page}"
    );
    assert!(page.contains(&in_folder_q4.display().to_string()), "{page}");
    // Only what is not installed is offered for download.
    assert!(page.contains("data-entry=\"f16\""), "{page}");
    assert!(!page.contains("data-entry=\"q8_0\"") && !page.contains("data-entry=\"q4_k_m\""));

    // The model in use is not deleted, even when asked directly.
    let (_, page) = call(
        &app,
        "POST",
        "/models/delete",
        Some("name=SmolLM3-Q4_K_M.gguf&confirm=yes"),
    )
    .await;
    assert!(page.contains("is the model in use"), "{page}");
    assert!(in_folder_q4.is_file());
    // Nor a name that leaves the folder.
    let (_, page) = call(
        &app,
        "POST",
        "/models/delete",
        Some("name=..%2Fescape.gguf&confirm=yes"),
    )
    .await;
    assert!(page.contains("no model named"), "{page}");

    // Switching: saved in the settings and loaded; the screen follows.
    let form = format!("path={}", enc(&q8.display().to_string()));
    let (_, page) = call(&app, "POST", "/models/use", Some(&form)).await;
    assert!(!page.contains("models-error"), "{page}");
    assert!(matches!(
        wait_end(&service, &mut rx).await,
        Phase::Ready { .. }
    ));
    assert_eq!(PathBuf::from(service.settings().model_path), q8);
    assert!(matches!(service.engine_state(), EngineState::Ready { .. }));
    let (_, page) = call(&app, "GET", "/models", None).await;
    assert_eq!(
        listed(&page),
        ["SmolLM3-Q4_K_M.gguf", "SmolLM3-Q8_0.gguf (in use)"],
        "{page}"
    );
    // A path that is not a model on this computer is not used.
    let (_, page) = call(&app, "POST", "/models/use", Some("path=%2Fetc%2Fpasswd")).await;
    assert!(page.contains("is not among the models"), "{page}");
    assert_eq!(PathBuf::from(service.settings().model_path), q8);

    // Deleting asks first; only the confirmation removes the file and what goes with it.
    let (_, page) = call(
        &app,
        "POST",
        "/models/delete",
        Some("name=SmolLM3-Q4_K_M.gguf"),
    )
    .await;
    assert!(page.contains("js-confirm-delete"), "{page}");
    assert!(in_folder_q4.exists());
    let (_, page) = call(
        &app,
        "POST",
        "/models/delete",
        Some("name=SmolLM3-Q4_K_M.gguf&confirm=yes"),
    )
    .await;
    assert!(!page.contains("models-error"), "{page}");
    assert!(
        !in_folder_q4.exists() && q4.exists(),
        "the link goes, the user's file stays"
    );
    assert_eq!(listed(&page), ["SmolLM3-Q8_0.gguf (in use)"], "{page}");
    assert!(
        page.contains("data-entry=\"q4_k_m\""),
        "offered again: {page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_screen_downloads_another_entry_and_uses_it() {
    let scratch = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let (model, tokenizer) = model_bytes(scratch.path());
    let hub = MockHub::start();
    hub.add_lfs_file(REPO, "main", "SmolLM3-Q8_0.gguf", model.clone());
    hub.add_git_file(
        "HuggingFaceTB/SmolLM3-3B",
        "main",
        "tokenizer.json",
        tokenizer,
    );
    hub.throttle((model.len() as u64 / 2).max(1));
    let (service, app) = app(models.path());
    let first = models.path().join(FILE);
    std::fs::write(&first, &model).unwrap();
    let mut rx = service.wizard().subscribe();
    let form = format!("path={}", enc(&first.display().to_string()));
    call(&app, "POST", "/models/use", Some(&form)).await;
    assert!(matches!(
        wait_end(&service, &mut rx).await,
        Phase::Ready { .. }
    ));
    use_mirror(&app, &hub.url()).await;

    let (status, page) = call(&app, "POST", "/models/download", Some("entry=q8_0")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Downloading SmolLM3-Q8_0.gguf"), "{page}");
    assert!(page.contains("id=\"download-bar\"") && page.contains("id=\"models-pause\""));
    // One download at a time.
    let (_, again) = call(&app, "POST", "/models/download", Some("entry=f16")).await;
    assert!(again.contains("already running"), "{again}");
    assert!(matches!(
        wait_end(&service, &mut rx).await,
        Phase::Ready { .. }
    ));
    let got = models.path().join("SmolLM3-Q8_0.gguf");
    assert_eq!(std::fs::read(&got).unwrap(), model);
    assert_eq!(PathBuf::from(service.settings().model_path), got);
    let (_, page) = call(&app, "GET", "/models", None).await;
    assert_eq!(
        listed(&page),
        ["SmolLM3-Q4_K_M.gguf", "SmolLM3-Q8_0.gguf (in use)"],
        "{page}"
    );
    assert!(!page.contains("id=\"download\""), "no task left: {page}");
}
