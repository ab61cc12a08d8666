//! The server inside the desktop app ("Browser & API access"), driven through the desktop's
//! own router as the window's `hx` command does, and reached over real TCP on loopback as a
//! browser or an API client would: switching on and off, the port, a taken port, a bad port,
//! other devices and their key, key rotation, connected browsers, and the switch kept across
//! a restart. Other devices are simulated on a second loopback address (127.0.0.2), never a
//! real network.

mod support;
use support::router::call;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use smollm3_bot::app::service::EngineState;
use smollm3_bot::app::ChatService;
use smollm3_bot::engine::core::EngineOptions;
use smollm3_bot::engine::loader::LoadedModel;
use smollm3_bot::engine::worker::Engine;
use smollm3_bot::model::synth::{self, Preset, Quant};
use smollm3_bot::shell::http::router_with_server;
use smollm3_bot::shell::local_server::LocalServer;
use smollm3_bot::shell::serve::in_app_router;

const SECOND_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("smollm3-app-server-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tiny-app.gguf");
        synth::write(Preset::Tiny, Quant::Q4KM, 5, &p).unwrap();
        p
    })
    .clone()
}

/// The desktop's router over a service whose data lives in `db`, and the app's server.
fn desktop(db: &Path) -> (ChatService, LocalServer, Router) {
    let service = ChatService::open(db).unwrap();
    let server = LocalServer::with_lan_address(service.clone(), SECOND_LOOPBACK, {
        let service = service.clone();
        move |lan| in_app_router(service.clone(), lan)
    });
    let router = router_with_server(service.clone(), server.clone());
    (service, server, router)
}

fn with_model(service: &ChatService) {
    let engine = Engine::start(
        LoadedModel::open(&model_path(), None).unwrap(),
        EngineOptions {
            context_size: 256,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    service.set_generator(
        Arc::new(engine),
        EngineState::Ready {
            model: "tiny-app.gguf".into(),
        },
    );
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request over TCP (connection closed after it); the status and the body.
fn http(
    ip: IpAddr,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {ip}:{port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {out:.200}"));
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Runs blocking socket code off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn refused(ip: IpAddr, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(2)).is_err()
}

/// The value after `id="ID"` up to the next `<`, in a fragment.
fn text_of(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let rest = &html[at..];
    let start = rest.find('>')? + 1;
    Some(rest[start..].split('<').next()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_serves_the_app_and_the_api_and_stops_them() {
    let dir = tempfile::tempdir().unwrap();
    let (service, server, app) = desktop(&dir.path().join("db.sqlite3"));
    with_model(&service);
    let port = free_port();

    // Off by default: the dialog says so, and nothing listens.
    let (status, panel) = call(&app, "GET", "/server", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(panel.contains("id=\"server-enabled\""), "{panel}");
    assert!(
        !panel.contains("id=\"server-enabled\" hx-post=\"/server\" hx-target=\"#overlay\" checked")
    );
    assert!(!panel.contains("server-on"));
    assert!(server.status().running.is_none());
    let (_, bar) = call(&app, "GET", "/status", None).await;
    assert!(
        bar.contains("Browser access off"),
        "the status bar offers it: {bar}"
    );

    // On: the address and the API's base URL appear, and the status bar says it serves.
    let (status, panel) = call(
        &app,
        "POST",
        "/server",
        Some(&format!("enabled=on&port={port}")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let url = format!("http://127.0.0.1:{port}");
    assert_eq!(
        text_of(&panel, "server-url").as_deref(),
        Some(url.as_str()),
        "{panel}"
    );
    assert_eq!(text_of(&panel, "server-api-url"), Some(format!("{url}/v1")));
    assert!(!panel.contains("server-key"), "no key on loopback only");
    let (_, bar) = call(&app, "GET", "/status", None).await;
    assert!(
        bar.contains(&format!("Serving on {url} · 0 browsers")),
        "{bar}"
    );

    // A browser gets the app's page, and the API lists the app's model.
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (code, page) = blocking(move || http(lo, port, "GET", "/", &[])).await;
    assert_eq!(code, 200);
    assert!(page.contains("hx-get=\"/layout\""), "{page}");
    let (code, models) = blocking(move || http(lo, port, "GET", "/v1/models", &[])).await;
    assert_eq!(code, 200, "{models}");
    assert!(models.contains("\"tiny-app\""), "{models}");
    // The window's dialog is the desktop's alone: a browser of this server has no such page.
    let (code, _) = blocking(move || http(lo, port, "GET", "/server", &[])).await;
    assert_eq!(code, 404);

    // A browser showing the chat keeps an event stream open: it counts as connected.
    let mut events = blocking(move || {
        let mut s = TcpStream::connect((lo, port)).unwrap();
        write!(s, "GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
        let mut head = [0u8; 64];
        let n = s.read(&mut head).unwrap();
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
        s
    })
    .await;
    let mut seen = 0;
    for _ in 0..100 {
        seen = server.status().browsers;
        if seen == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 1, "one browser connected");
    let (_, panel) = call(&app, "GET", "/server", None).await;
    assert!(panel.contains("1 browser connected"), "{panel}");

    // Off: the port is closed, the open stream included, and the status bar is quiet.
    let (status, panel) = call(&app, "POST", "/server", Some(&format!("port={port}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!panel.contains("server-on"), "{panel}");
    assert!(
        blocking(move || refused(lo, port)).await,
        "nothing listens once off"
    );
    let closed = blocking(move || {
        events
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match events.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    })
    .await;
    assert!(closed, "the browser's stream was closed");
    assert_eq!(server.status().browsers, 0);
    let (_, bar) = call(&app, "GET", "/status", None).await;
    assert!(!bar.contains("Serving on"), "{bar}");
    assert!(bar.contains("Browser access off"), "{bar}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_said_and_the_next_free_one_offered() {
    let dir = tempfile::tempdir().unwrap();
    let (_service, server, app) = desktop(&dir.path().join("db.sqlite3"));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();

    let (status, panel) = call(
        &app,
        "POST",
        "/server",
        Some(&format!("enabled=on&port={port}")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let problem = text_of(&panel, "server-problem").expect("the problem is shown");
    assert!(
        problem.starts_with(&format!("Port {port} is in use by another program.")),
        "{problem}"
    );
    assert!(panel.contains("id=\"use-free-port\""), "{panel}");
    let (_, bar) = call(&app, "GET", "/status", None).await;
    assert!(
        bar.contains("Server off: Port"),
        "the status bar says it too: {bar}"
    );

    // Taking the offered port works.
    let free = server.status().problem.and_then(|p| match p {
        smollm3_bot::shell::local_server::ServerProblem::PortInUse { free, .. } => free,
        _ => None,
    });
    let free = free.expect("a free port offered");
    let (_, panel) = call(
        &app,
        "POST",
        "/server",
        Some(&format!("enabled=on&port={port}&use_port={free}")),
    )
    .await;
    assert_eq!(
        text_of(&panel, "server-url"),
        Some(format!("http://127.0.0.1:{free}")),
        "{panel}"
    );
    server.stop().await;
}

#[tokio::test]
async fn ports_out_of_range_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (service, server, app) = desktop(&dir.path().join("db.sqlite3"));
    for bad in ["80", "70000", "http"] {
        let (status, panel) = call(
            &app,
            "POST",
            "/server",
            Some(&format!("enabled=on&port={bad}")),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let error = text_of(&panel, "server-error").expect("an error");
        assert!(
            error.contains(bad) && error.contains("1024 to 65535"),
            "{error}"
        );
        assert!(server.status().running.is_none());
        assert!(!service.settings().server_enabled, "nothing saved");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_devices_need_the_key_and_a_new_key_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let (service, server, app) = desktop(&dir.path().join("db.sqlite3"));
    with_model(&service);
    let port = free_port();
    let (_, panel) = call(
        &app,
        "POST",
        "/server",
        Some(&format!("enabled=on&lan=on&port={port}")),
    )
    .await;
    let key = text_of(&panel, "server-key").expect("the key is shown");
    assert!(key.starts_with("smol-") && key.len() > 40, "{key}");
    assert!(
        panel.contains(&format!("http://127.0.0.2:{port}")),
        "the address for others: {panel}"
    );
    assert!(
        panel.contains("id=\"server-qr\" src=\"data:image/svg+xml;base64,"),
        "a QR code"
    );

    let other = SECOND_LOOPBACK;
    let (code, _) = blocking(move || http(other, port, "GET", "/v1/models", &[])).await;
    assert_eq!(code, 401, "no key, no model");
    let bearer = format!("Bearer {key}");
    let (code, body) = blocking({
        let bearer = bearer.clone();
        move || {
            http(
                other,
                port,
                "GET",
                "/v1/models",
                &[("Authorization", &bearer)],
            )
        }
    })
    .await;
    assert_eq!(code, 200, "{body}");
    // A browser without the key is sent to sign in.
    let (code, _) =
        blocking(move || http(other, port, "GET", "/", &[("Accept", "text/html")])).await;
    assert_eq!(code, 303);

    // A new key: the old one stops working at once, the new one works.
    let (_, panel) = call(&app, "POST", "/server/key", Some("")).await;
    let new_key = text_of(&panel, "server-key").unwrap();
    assert_ne!(new_key, key);
    let (code, _) = blocking({
        let bearer = bearer.clone();
        move || {
            http(
                other,
                port,
                "GET",
                "/v1/models",
                &[("Authorization", &bearer)],
            )
        }
    })
    .await;
    assert_eq!(code, 401, "the old key is refused");
    let new_bearer = format!("Bearer {new_key}");
    let (code, _) = blocking(move || {
        http(
            other,
            port,
            "GET",
            "/v1/models",
            &[("Authorization", &new_bearer)],
        )
    })
    .await;
    assert_eq!(code, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_is_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite3");
    let port = free_port();
    let key = {
        let (_service, server, app) = desktop(&db);
        let (_, panel) = call(
            &app,
            "POST",
            "/server",
            Some(&format!("enabled=on&lan=on&port={port}")),
        )
        .await;
        server.stop().await;
        text_of(&panel, "server-key").unwrap()
    };
    // The app starts again: the saved switch brings the server back, with the same key.
    let (_service, server, app) = desktop(&db);
    let status = server.apply().await;
    let running = status.running.expect("serving again");
    assert_eq!((running.port, running.lan), (port, true));
    assert_eq!(running.key.as_deref(), Some(key.as_str()));
    let (_, panel) = call(&app, "GET", "/server", None).await;
    assert!(
        panel.contains("id=\"server-enabled\" hx-post=\"/server\" hx-target=\"#overlay\" checked"),
        "{panel}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_model_the_api_says_so_and_the_page_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (_service, server, app) = desktop(&dir.path().join("db.sqlite3"));
    let port = free_port();
    call(
        &app,
        "POST",
        "/server",
        Some(&format!("enabled=on&port={port}")),
    )
    .await;
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (code, body) = blocking(move || http(lo, port, "GET", "/v1/models", &[])).await;
    assert_eq!(code, 503);
    assert!(body.contains("model_not_loaded"), "{body}");
    let (code, _) = blocking(move || http(lo, port, "GET", "/", &[])).await;
    assert_eq!(code, 200);
    server.stop().await;
}
