//! The server inside the desktop app: the browser UI and the OpenAI API on a port of this
//! computer, switched on and off from the window ("Browser & API access").
//!
//! It serves the router it is given (the same pages `serve` has, over the app's own chat
//! service and engine: one copy of the weights, one queue) behind the same [`Guard`]:
//! 127.0.0.1 unless other devices are allowed, and then only with the key. Turning it off
//! stops accepting at once and closes open connections (streams included) within a second.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::guard::{self, Guard, GuardConfig, KeyStore};
use super::listener::{self, ConnectionLimits};
use crate::app::service::{ChatService, Serving};

/// How long streams get to end after the server is switched off.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Ports tried after a taken one, to offer the next free port.
const PORTS_TO_PROBE: u16 = 50;

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerWish {
    /// Serve at all.
    pub enabled: bool,
    /// The port.
    pub port: u16,
    /// Allow other devices (binds every interface; every request then needs the key).
    pub lan: bool,
}

/// Why the server is not running as asked, in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerProblem {
    /// Another program listens on the port.
    #[error("Port {port} is in use by another program.{}", match free {
        Some(p) => format!(" Port {p} is free."),
        None => String::new(),
    })]
    PortInUse {
        /// The port asked for.
        port: u16,
        /// A free port near it, to offer instead.
        free: Option<u16>,
    },
    /// The system refused the address (permissions, a firewall rule, no such interface).
    #[error("Cannot listen on {addr}: {reason}")]
    BindRefused {
        /// The address.
        addr: SocketAddr,
        /// The system's reason.
        reason: String,
    },
}

/// The server while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// The port it listens on.
    pub port: u16,
    /// Whether other devices may connect.
    pub lan: bool,
    /// The addresses other devices can use (LAN mode; empty when none was found).
    pub lan_addresses: Vec<IpAddr>,
    /// The key other devices need (LAN mode).
    pub key: Option<String>,
}

impl Running {
    /// The address on this computer.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The addresses for other devices.
    pub fn lan_urls(&self) -> Vec<String> {
        self.lan_addresses
            .iter()
            .map(|ip| format!("http://{}", SocketAddr::new(*ip, self.port)))
            .collect()
    }
}

/// The server's state as the window shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStatus {
    /// Set while it runs.
    pub running: Option<Running>,
    /// Why the last change did not happen as asked.
    pub problem: Option<ServerProblem>,
    /// Browsers connected now.
    pub browsers: usize,
}

struct Live {
    running: Running,
    keys: KeyStore,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

struct Inner {
    service: ChatService,
    /// The address bound when other devices are allowed: every interface, except in tests.
    lan_ip: IpAddr,
    /// Builds the router to serve behind a guard, given whether other devices may connect.
    router: Box<dyn Fn(bool) -> Router + Send + Sync>,
    live: tokio::sync::Mutex<Option<Live>>,
    /// A copy of the state for readers that cannot wait (the status bar).
    status: Mutex<ServerStatus>,
    browsers: Arc<AtomicUsize>,
}

/// The server inside the app. Cheap to clone; clones control the same server.
#[derive(Clone)]
pub struct LocalServer(Arc<Inner>);

impl std::fmt::Debug for LocalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LocalServer").field(&self.status()).finish()
    }
}

impl LocalServer {
    /// A server (off) for `service`'s app that serves what `router` builds (told whether
    /// other devices may connect).
    pub fn new(
        service: ChatService,
        router: impl Fn(bool) -> Router + Send + Sync + 'static,
    ) -> Self {
        Self::with_lan_address(service, IpAddr::V4(Ipv4Addr::UNSPECIFIED), router)
    }

    /// Like [`LocalServer::new`], binding `lan_ip` instead of every interface when other
    /// devices are allowed: tests use a second loopback address, never a real network.
    pub fn with_lan_address(
        service: ChatService,
        lan_ip: IpAddr,
        router: impl Fn(bool) -> Router + Send + Sync + 'static,
    ) -> Self {
        service.set_serving(Some(Serving::Off));
        Self(Arc::new(Inner {
            service,
            lan_ip,
            router: Box::new(router),
            live: tokio::sync::Mutex::new(None),
            status: Mutex::new(ServerStatus::default()),
            browsers: Arc::new(AtomicUsize::new(0)),
        }))
    }

    /// The state now.
    pub fn status(&self) -> ServerStatus {
        let mut status = self
            .0
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        status.browsers = self.0.browsers.load(Ordering::Relaxed);
        status
    }

    /// What the saved settings ask for.
    pub fn wish(&self) -> ServerWish {
        let s = self.0.service.settings();
        ServerWish {
            enabled: s.server_enabled,
            port: s.server_port,
            lan: s.server_lan,
        }
    }

    /// Brings the server in line with the saved settings: starts, stops or restarts it.
    pub async fn apply(&self) -> ServerStatus {
        let wish = self.wish();
        let mut live = self.0.live.lock().await;
        let same = live.as_ref().is_some_and(|l| {
            wish.enabled && l.running.port == wish.port && l.running.lan == wish.lan
        });
        if !same {
            if let Some(old) = live.take() {
                stop(old).await;
            }
            let mut problem = None;
            if wish.enabled {
                match self.start(wish).await {
                    Ok(l) => *live = Some(l),
                    Err(p) => problem = Some(p),
                }
            }
            self.publish(live.as_ref().map(|l| l.running.clone()), problem);
        }
        self.status()
    }

    /// A new key for other devices; browsers signed in with the old one must sign in again.
    pub async fn rotate_key(&self) -> Result<ServerStatus, crate::app::service::ServiceError> {
        let secret = self.0.service.rotate_server_secret()?;
        let key = guard::key_from_secret(&secret);
        let mut live = self.0.live.lock().await;
        if let Some(l) = live.as_mut() {
            if l.running.lan {
                l.keys.set(Some(key.clone()));
                l.running.key = Some(key);
            }
        }
        let problem = self.status().problem;
        self.publish(live.as_ref().map(|l| l.running.clone()), problem);
        Ok(self.status())
    }

    /// Stops the server (when the app quits).
    pub async fn stop(&self) {
        if let Some(old) = self.0.live.lock().await.take() {
            stop(old).await;
        }
        self.publish(None, None);
    }

    fn publish(&self, running: Option<Running>, problem: Option<ServerProblem>) {
        *self.0.status.lock().unwrap_or_else(|p| p.into_inner()) = ServerStatus {
            running,
            problem,
            browsers: 0,
        };
        self.tell_service();
    }

    /// Mirrors the state into the chat service, whose status bar shows it.
    fn tell_service(&self) {
        let status = self.status();
        let note = match (status.running, status.problem) {
            (Some(r), _) => Some(Serving::On {
                url: r.url(),
                browsers: status.browsers,
            }),
            (None, Some(problem)) => Some(Serving::Failed(problem.to_string())),
            (None, None) => Some(Serving::Off),
        };
        self.0.service.set_serving(note);
    }

    async fn start(&self, wish: ServerWish) -> Result<Live, ServerProblem> {
        let ip = if wish.lan {
            self.0.lan_ip
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        };
        let addr = SocketAddr::new(ip, wish.port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(ServerProblem::PortInUse {
                    port: wish.port,
                    free: free_port_after(ip, wish.port),
                })
            }
            Err(e) => {
                return Err(ServerProblem::BindRefused {
                    addr,
                    reason: e.to_string(),
                })
            }
        };
        let key = if wish.lan {
            let secret =
                self.0
                    .service
                    .server_secret()
                    .map_err(|e| ServerProblem::BindRefused {
                        addr,
                        reason: format!("the key could not be read: {e}"),
                    })?;
            Some(guard::key_from_secret(&secret))
        } else {
            None
        };
        let mut lan_names = if wish.lan {
            guard::lan_host_names(ip)
        } else {
            Vec::new()
        };
        let lan_addresses: Vec<IpAddr> = if !wish.lan {
            Vec::new()
        } else if ip.is_unspecified() {
            lan_names
                .iter()
                .filter_map(|n| n.parse::<IpAddr>().ok())
                .filter(|ip| !ip.is_loopback())
                .collect()
        } else {
            // One address was asked for: it is the one other devices use.
            lan_names.push(ip.to_string());
            vec![ip]
        };
        let keys = KeyStore::new(key.clone());
        let guard = Guard::new(GuardConfig {
            lan: wish.lan,
            extra_hosts: lan_names,
            keys: keys.clone(),
            ..GuardConfig::local(wish.port)
        });
        let router =
            guard
                .protect((self.0.router)(wish.lan))
                .layer(axum::middleware::from_fn_with_state(
                    self.clone(),
                    count_browsers,
                ));
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let limits = ConnectionLimits {
            shutdown_grace: STOP_GRACE,
            ..ConnectionLimits::default()
        };
        let task = tokio::spawn(listener::serve(listener, router, limits, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        tracing::info!(port = wish.port, lan = wish.lan, "the app's server is on");
        Ok(Live {
            running: Running {
                port: wish.port,
                lan: wish.lan,
                lan_addresses,
                key,
            },
            keys,
            stop: stop_tx,
            task,
        })
    }
}

async fn stop(live: Live) {
    let _ = live.stop.send(true);
    // The listener closes every connection within the grace; the bound is a safety net.
    if tokio::time::timeout(STOP_GRACE * 3, live.task)
        .await
        .is_err()
    {
        tracing::warn!("the app's server did not stop in time");
    }
    tracing::info!("the app's server is off");
}

/// The next port after `port` that can be bound on `ip`, if any of the next few is free.
fn free_port_after(ip: IpAddr, port: u16) -> Option<u16> {
    (1..=PORTS_TO_PROBE)
        .filter_map(|d| port.checked_add(d))
        .find(|p| std::net::TcpListener::bind(SocketAddr::new(ip, *p)).is_ok())
}

/// Counts open `/events` streams: one per browser tab showing the chat.
async fn count_browsers(
    axum::extract::State(server): axum::extract::State<LocalServer>,
    req: Request,
    next: Next,
) -> Response {
    let is_stream = req.uri().path() == "/events";
    let resp = next.run(req).await;
    if !is_stream || !resp.status().is_success() {
        return resp;
    }
    let open = BrowserOpen::new(server);
    resp.map(|body| {
        Body::from_stream(body.into_data_stream().map(move |chunk| {
            let _still_open = &open;
            chunk
        }))
    })
}

/// Held by an open event stream; counts the browser out when the stream is dropped.
struct BrowserOpen(LocalServer);

impl BrowserOpen {
    fn new(server: LocalServer) -> Self {
        server.0.browsers.fetch_add(1, Ordering::Relaxed);
        server.tell_service();
        Self(server)
    }
}

impl Drop for BrowserOpen {
    fn drop(&mut self) {
        self.0 .0.browsers.fetch_sub(1, Ordering::Relaxed);
        self.0.tell_service();
    }
}
