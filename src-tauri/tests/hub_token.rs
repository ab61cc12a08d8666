//! Where the Hugging Face token may go, and who may start a download.
//!
//! - `serve` has no wizard: a request naming a mirror (the old server-side request forgery that
//!   sent `Authorization: Bearer $HF_TOKEN` to any address) is a 404, and a listener at that
//!   address sees no request at all.
//! - The desktop's mirror setting over plain HTTP never receives the token.
//! - Over HTTPS the token reaches the hub's own host, and a redirect to another host (the CDN)
//!   does not carry it.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use smollm3_bot::app::ChatService;
use smollm3_bot::engine::core::EngineOptions;
use smollm3_bot::engine::loader::LoadedModel;
use smollm3_bot::engine::worker::Engine;
use smollm3_bot::hub::{
    Credential, DownloadControl, DownloadOptions, DownloadOutcome, DownloadSpec, Downloader,
    HubConfig, RemoteFile,
};
use smollm3_bot::model::synth::{self, Preset, Quant};
use smollm3_bot::shell::guard::{Guard, GuardConfig};
use smollm3_bot::shell::openai::{ApiConfig, ApiState};
use smollm3_bot::shell::serve::{app_router, browser_ui};
use support::mock_hub::MockHub;
use support::router::{call, call_with_headers, enc};

const REPO: &str = "ggml-org/SmolLM3-3B-GGUF";
const FILE: &str = "SmolLM3-Q4_K_M.gguf";

fn tiny_model() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hub-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    if !path.exists() {
        synth::write(Preset::Tiny, Quant::Q8_0, 4, &path).unwrap();
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_has_no_wizard_and_a_named_mirror_sees_no_request() {
    let listener = MockHub::start();
    let path = tiny_model();
    let loaded = LoadedModel::open(&path, None).unwrap();
    let engine = Engine::start(loaded, EngineOptions::default()).unwrap();
    let api = ApiState::new(engine.clone(), ApiConfig::new("tiny"));
    let service = ChatService::in_memory();
    let ui = browser_ui(&engine, service.clone());
    // The server's own state as `serve` composes it, with the guard in front.
    let app = Guard::new(GuardConfig::local(3000)).protect(app_router(api, Some(ui)));

    let attack = format!("entry=q4_k_m&mirror={}", enc(&listener.url()));
    for (uri, form) in [
        ("/wizard/download", attack.as_str()),
        ("/wizard/mirror", attack.as_str()),
        ("/wizard/resume", ""),
        ("/wizard/import", "path=%2Fetc%2Fpasswd"),
        ("/wizard/skip", ""),
    ] {
        let (status, _, body) =
            support::router::call_as(&app, "POST", uri, Some(form), "127.0.0.1:3000").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
    }
    let (status, _, _) =
        support::router::call_as(&app, "GET", "/wizard/choose", None, "127.0.0.1:3000").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The models screen is the desktop's too: `/models` here is the OpenAI-style list, and
    // the screen's actions are not routes at all.
    for (uri, form) in [
        ("/models/download", attack.as_str()),
        ("/models/import", "path=%2Fetc%2Fpasswd"),
        ("/models/use", "path=%2Fetc%2Fpasswd"),
        ("/models/delete", "name=tiny.gguf&confirm=yes"),
    ] {
        let (status, _, body) =
            support::router::call_as(&app, "POST", uri, Some(form), "127.0.0.1:3000").await;
        assert!(status.is_client_error(), "{uri}: {status} {body}");
        assert!(!body.contains("models-panel"), "{uri}: {body}");
    }
    let (_, _, body) =
        support::router::call_as(&app, "GET", "/models", None, "127.0.0.1:3000").await;
    assert!(!body.contains("models-panel"), "{body}");
    assert!(path.is_file());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        listener.requests().is_empty(),
        "the server made requests: {:?}",
        listener.requests()
    );
    // No wizard on the browser's pages either, even with no model set up in the settings.
    let (_, _, page) =
        support::router::call_as(&app, "GET", "/layout", None, "127.0.0.1:3000").await;
    assert!(!page.contains("id=\"wizard\""), "{page}");
    // And the machine's settings are not the browser's to change.
    let (status, _, page) = support::router::call_as(
        &app,
        "POST",
        "/settings",
        Some(&format!("hub_mirror={}", enc(&listener.url()))),
        "127.0.0.1:3000",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
    assert!(service.settings().hub_mirror.is_empty());
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_mirror_never_receives_the_token() {
    let mirror = MockHub::start();
    mirror.add_lfs_file(REPO, "main", FILE, vec![7u8; 4096]);
    let models = tempfile::tempdir().unwrap();
    let service = ChatService::in_memory();
    service.wizard().set_models_dir(models.path().to_path_buf());
    let app = smollm3_bot::shell::http::router(service.clone());
    std::env::set_var("HF_TOKEN", "hf_must_not_leak");
    std::env::remove_var("HF_ENDPOINT");
    let (status, page) = call(
        &app,
        "POST",
        "/wizard/mirror",
        Some(&format!("mirror={}", enc(&mirror.url()))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut rx = service.wizard().subscribe();
    let (status, _, _) =
        call_with_headers(&app, "POST", "/wizard/download", Some("entry=q4_k_m")).await;
    assert_eq!(status, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        use smollm3_bot::app::wizard::Phase;
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(Phase::Ready { .. } | Phase::Failed { .. })) => break,
            Ok(_) => {}
            Err(_) => panic!("no end: {:?}", service.wizard().phase()),
        }
    }
    std::env::remove_var("HF_TOKEN");
    assert!(!mirror.requests().is_empty(), "the mirror was used");
    assert!(
        mirror.requests().iter().all(|r| r.authorization.is_none()),
        "{:?}",
        mirror.requests()
    );
}

/// What a listener saw: request lines and their `Authorization` headers.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Reads one request head from `r`; returns the request line and `Authorization`.
fn read_head(r: &mut impl BufRead) -> Option<(String, Option<String>)> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let request = line.trim().to_string();
    let mut auth = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                auth = Some(v.trim().to_string());
            }
        }
    }
    (!request.is_empty()).then_some((request, auth))
}

/// A plain-HTTP "CDN" on another port that serves `content` for any path.
fn cdn(content: Arc<Vec<u8>>, seen: Seen) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let Some(head) = read_head(&mut r) else {
                continue;
            };
            let head_only = head.0.starts_with("HEAD");
            seen.lock().unwrap().push(head);
            let mut w = stream;
            let _ = write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                content.len()
            );
            if !head_only {
                let _ = w.write_all(&content);
            }
        }
    });
    port
}

/// An HTTPS hub on `localhost` with a self-signed certificate: every file answers with a
/// redirect to the CDN, carrying the LFS headers as the real hub does. Returns the port and
/// the certificate (DER) to trust.
async fn tls_hub(sha: String, size: usize, cdn_port: u16, seen: Seen) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let der = cert.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let (sha, seen) = (sha.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut r = tokio::io::BufReader::new(tls);
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut auth = None;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).await.unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.trim_end().split_once(':') {
                        if k.eq_ignore_ascii_case("authorization") {
                            auth = Some(v.trim().to_string());
                        }
                    }
                }
                seen.lock().unwrap().push((line.trim().to_string(), auth));
                let answer = format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{cdn_port}/cdn/{sha}\r\n\
                     X-Linked-Etag: \"{sha}\"\r\nX-Linked-Size: {size}\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let mut tls = r.into_inner();
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, der)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_the_token_reaches_the_hub_and_no_other_host() {
    let content = Arc::new(support::content(20_000, 5));
    let sha: String = Sha256::digest(content.as_slice())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (hub_seen, cdn_seen): (Seen, Seen) = Default::default();
    let cdn_port = cdn(content.clone(), cdn_seen.clone());
    let (port, der) = tls_hub(sha.clone(), content.len(), cdn_port, hub_seen.clone()).await;
    let hub = format!("https://localhost:{port}");
    let config = HubConfig {
        endpoint: hub.clone(),
        credential: Credential::for_hub("hf_secret", &hub),
        extra_roots: vec![der],
    };
    let downloader = Downloader::new(config, DownloadOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = DownloadSpec {
        remote: RemoteFile::new(REPO, FILE, "main").unwrap(),
        dir: dir.path().to_path_buf(),
        sha256: None,
        size: None,
    };
    let outcome = downloader
        .download(&spec, &DownloadControl::new(), &|_| {})
        .await
        .unwrap();
    assert!(
        matches!(outcome, DownloadOutcome::Completed { .. }),
        "{outcome:?}"
    );
    assert_eq!(std::fs::read(dir.path().join(FILE)).unwrap(), *content);
    let hub_seen = hub_seen.lock().unwrap().clone();
    let cdn_seen = cdn_seen.lock().unwrap().clone();
    assert!(!hub_seen.is_empty() && !cdn_seen.is_empty());
    assert!(
        hub_seen
            .iter()
            .all(|(_, a)| a.as_deref() == Some("Bearer hf_secret")),
        "the hub gets the token: {hub_seen:?}"
    );
    assert!(
        cdn_seen.iter().all(|(_, a)| a.is_none()),
        "the redirect to another host drops it: {cdn_seen:?}"
    );
}
