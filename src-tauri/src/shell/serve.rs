//! `smollm3-bot serve`: the headless server. Loads a model, starts the engine and serves the
//! OpenAI-compatible API (and the browser UI, where it is part of the build) behind the guard.
//!
//! Safe by default: it binds 127.0.0.1. Binding any other address turns LAN mode on, which
//! needs a key; without one the server refuses to start and prints a freshly generated key
//! the user can pass back (a key is never invented silently, so it cannot end up in a log the
//! user does not read).

use super::guard::{self, Guard, GuardConfig, KeyStore};
use super::listener::ConnectionLimits;
use super::local_server::LocalServer;
use super::openai::{self, ApiConfig, ApiState};
use crate::app::repo::{Repo, RepoError};
use crate::app::service::ChatService;
use crate::engine::core::EngineOptions;
use crate::engine::loader::LoadedModel;
use crate::engine::worker::Engine;
use crate::store::StoreError;
use anyhow::{bail, Context};
use axum::Router;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// How long open streams get to finish after Ctrl-C before the server exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `serve` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// The GGUF model; default: the first model in the models folder.
    #[arg(long, env = "MODEL_PATH")]
    pub model: Option<PathBuf>,
    /// A `tokenizer.json` to use instead of the GGUF's vocabulary.
    #[arg(long, env = "TOKENIZER_PATH")]
    pub tokenizer: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1, or 0.0.0.0 with --allow-lan); anything but
    /// loopback turns LAN mode on.
    #[arg(long, env = "HOST")]
    pub host: Option<String>,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// The key clients must send (`Authorization: Bearer KEY`); needed in LAN mode. Prefer
    /// the environment variable: command lines are visible to other users.
    #[arg(long, env = "SMOLLM3_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// LAN mode: listen on all interfaces (unless --host is given) and accept the machine's
    /// network names; every request needs the key.
    #[arg(long)]
    pub allow_lan: bool,
    /// Context size in tokens per conversation.
    #[arg(long, default_value_t = 8192)]
    pub context: usize,
    /// Threads for the matrix multiplications.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Serve a request that names another model (a client's default, such as `gpt-4o-mini`)
    /// with the loaded one: `true` or `false`; default true on 127.0.0.1, false in LAN mode.
    #[arg(long, value_name = "BOOL")]
    pub any_model_name: Option<bool>,
    /// Requests that may wait behind the running one before new ones get 503.
    #[arg(long, default_value_t = 4)]
    pub max_queue: usize,
    /// Conversations whose KV caches are kept at once.
    #[arg(long, default_value_t = 2)]
    pub slots: usize,
    /// Replies computed together (continuous batching: one pass over the weights per step
    /// for all of them); more requests wait in the queue.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Memory the caches of the replies computed together may take, in MB; a request that
    /// would not fit waits in the queue. 0: no bound.
    #[arg(long, value_name = "MB", default_value_t = crate::store::DEFAULT_KV_BUDGET_MB)]
    pub kv_budget_mb: u64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = guard::DEFAULT_MAX_BODY_BYTES)]
    pub max_body: usize,
    /// An origin (`https://app.example`) allowed to call the API from a browser (CORS);
    /// repeat for more. Off by default.
    #[arg(long = "cors-origin")]
    pub cors_origins: Vec<String>,
    /// A further host name clients may use (a reverse proxy's name, say); repeat for more.
    #[arg(long = "allow-host")]
    pub allow_hosts: Vec<String>,
    /// Seconds a client has to send a request's headers; an idle kept-alive connection is
    /// closed after as long.
    #[arg(long, value_parser = super::listener::parse_seconds, default_value = "10")]
    pub header_timeout: Duration,
    /// Seconds a request body may pause before the request is dropped.
    #[arg(long, value_parser = super::listener::parse_seconds, default_value = "30")]
    pub body_timeout: Duration,
    /// Connections open at once; further ones wait until one closes.
    #[arg(long, default_value_t = 128)]
    pub max_connections: usize,
    /// The folder of the browser UI's conversations and settings (default: the desktop app's,
    /// which only one process may use at a time).
    #[arg(long, env = super::data_dir::DATA_DIR_ENV)]
    pub data_dir: Option<PathBuf>,
    /// Answer through an OpenAI-compatible server (llama.cpp's server, vLLM, Ollama…) at this
    /// address instead of a local model: the browser UI fronts it, with this server's key
    /// and guard. No model is loaded here.
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// The remote server's model to use (default: the first it lists).
    #[arg(long, value_name = "ID", requires = "remote")]
    pub remote_model: Option<String>,
    /// The key the remote server wants. Prefer the environment variable: command lines are
    /// visible to other users.
    #[arg(
        long,
        env = "SMOLLM3_REMOTE_KEY",
        hide_env_values = true,
        requires = "remote"
    )]
    pub remote_key: Option<String>,
}

/// Where the server will listen and whether that exposes it to the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The address to bind.
    pub ip: IpAddr,
    /// LAN mode.
    pub lan: bool,
}

/// Decides the binding and checks the key rules; the error says how to fix the command.
pub fn binding(args: &ServeArgs) -> anyhow::Result<Binding> {
    let ip: IpAddr = match args.host.as_deref().map(str::trim) {
        None | Some("") if args.allow_lan => IpAddr::from([0, 0, 0, 0]),
        None | Some("") => IpAddr::from([127, 0, 0, 1]),
        Some(h) if h.eq_ignore_ascii_case("localhost") => IpAddr::from([127, 0, 0, 1]),
        Some(h) => h.trim_matches(['[', ']']).parse().with_context(|| {
            format!("--host must be an IP address such as 127.0.0.1 or 0.0.0.0 (got {h:?})")
        })?,
    };
    let lan = args.allow_lan || !ip.is_loopback();
    if lan {
        match args.api_key.as_deref() {
            None | Some("") => bail!(
                "refusing to listen on {ip} without an API key: anyone on the network could use \
                 the model. Start again with a key, for example this fresh one:\n\n    \
                 SMOLLM3_API_KEY={} smollm3-bot serve --allow-lan\n\n(or --api-key KEY; \
                 clients send it as `Authorization: Bearer KEY`)",
                guard::generate_key()
            ),
            Some(k) => {
                if let Some(why) = guard::weak_key(k) {
                    bail!(
                        "{why}. Use a random one, for example this fresh one:\n\n    \
                         SMOLLM3_API_KEY={} smollm3-bot serve --allow-lan",
                        guard::generate_key()
                    );
                }
            }
        }
    }
    Ok(Binding { ip, lan })
}

/// The model to serve: the one given, else the first in the models folder.
fn model_path(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let dir = crate::hub::local::models_dir(None)?;
    let models = crate::hub::local::list(&dir)?;
    match models.into_iter().next() {
        Some(m) => Ok(m.path),
        None => bail!(
            "no model to serve: pass --model FILE.gguf (or MODEL_PATH), or download one with \
             `smollm3-bot models pull` (models folder: {})",
            dir.display()
        ),
    }
}

/// The chat service behind the browser UI: its conversations live in the data folder, the
/// desktop app's by default (each browser sees only its own; the desktop's stay the desktop's).
/// A folder another process holds is an error that says where that process is (see
/// `store::lock`); any other failure to open it leaves the server API-only (`None`), with a
/// warning.
pub fn open_browser_data(
    data_dir: Option<&std::path::Path>,
) -> anyhow::Result<Option<ChatService>> {
    let path = match super::data_dir::database_path(data_dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("browser UI disabled: {e:#}");
            return Ok(None);
        }
    };
    match Repo::open(&path) {
        Ok(repo) => {
            let service = ChatService::new(repo);
            service.follow_moved_files(&super::data_dir::moved_pairs());
            Ok(Some(service))
        }
        Err(RepoError::Store(e @ StoreError::Locked { .. })) => Err(e.into()),
        Err(e) => {
            tracing::warn!("browser UI disabled: cannot open {}: {e}", path.display());
            Ok(None)
        }
    }
}

/// The browser UI's router, served beside the API under the same guard: the desktop's HTML
/// router over `service` using this same engine, so the pages and the API share one model and
/// one queue.
pub fn browser_ui(engine: &Engine, service: ChatService) -> Router {
    use crate::app::service::EngineState;
    let model = engine.status().model;
    service.set_generator(
        std::sync::Arc::new(engine.clone()),
        EngineState::Ready { model },
    );
    super::http::browser_router(service)
}

/// The server inside the desktop app, over the app's own chat service: the browser UI (each
/// browser its own conversations) and the API on whichever engine the app has loaded.
/// `lan_ip` is the address bound when other devices are allowed (none: every interface).
pub fn in_app_server(service: ChatService, lan_ip: Option<IpAddr>) -> LocalServer {
    let lan_ip = lan_ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    LocalServer::with_lan_address(service.clone(), lan_ip, move |lan| {
        in_app_router(service.clone(), lan)
    })
}

/// What the server inside the app serves (before its guard); `lan` when other devices may
/// connect (then a request must name the served model, see [`ApiConfig::any_model_name`]).
pub fn in_app_router(service: ChatService, lan: bool) -> Router {
    openai::live_api_router(service.clone(), !lan).merge(super::http::browser_router(service))
}

/// Everything the server answers: the API, the browser UI when there is one, and a JSON 404.
pub fn app_router(api: ApiState, ui: Option<Router>) -> Router {
    let router = openai::api_router(api);
    match ui {
        Some(ui) => router.merge(ui),
        None => router.fallback(openai::not_found),
    }
}

/// Runs `serve` until Ctrl-C.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let bind = binding(&args)?;
    // Before the model loads: a data folder in use is reported at once.
    let data = open_browser_data(args.data_dir.as_deref())?;
    if let Some(url) = args.remote.clone() {
        return serve_remote(args, bind, data, url);
    }
    let path = model_path(args.model.clone())?;
    let loaded = LoadedModel::open(&path, args.tokenizer.as_deref())?;
    let engine = Engine::start(
        loaded,
        EngineOptions {
            context_size: args.context,
            kv_dtype: EngineOptions::default().kv_dtype,
            max_slots: args.slots.max(1),
            // The browser UI's conversations reopen from disk as the desktop's do.
            snapshots: data.as_ref().and_then(|d| d.snapshot_options()),
            max_batch: args.batch,
            kv_budget_bytes: args.kv_budget_mb.saturating_mul(1_000_000),
        },
    )
    .context("cannot start the engine")?;
    let api = ApiState::new(
        engine.clone(),
        ApiConfig {
            model_id: openai::model_id_for(&path),
            max_queue: args.max_queue,
            max_body_bytes: args.max_body,
            any_model_name: args.any_model_name.unwrap_or(!bind.lan),
        },
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let ui = data
        .clone()
        .map(|service| browser_ui(api.engine(), service));
    let served = format!(
        "model {} · OpenAI API at /v1{}",
        api.config().model_id,
        if ui.is_some() {
            " · browser UI at /"
        } else {
            ""
        }
    );
    let router = app_router(api.clone(), ui);
    let stop = {
        let api = api.clone();
        move || api.cancel_all()
    };
    let result = runtime.block_on(listen(&args, &bind, router, &served, data.as_ref(), stop));
    api.cancel_all();
    engine.shutdown();
    result
}

/// `serve --remote`: the browser UI over an OpenAI-compatible server's model instead of a
/// local one. The API under `/v1` answers 503 (no local model), as the app's does before a
/// model is loaded.
fn serve_remote(
    args: ServeArgs,
    bind: Binding,
    data: Option<ChatService>,
    url: String,
) -> anyhow::Result<()> {
    use crate::app::service::EngineState;
    use crate::engine::remote::{self, RemoteGenerator, RemoteOptions, RemoteServer};
    let Some(service) = data else {
        bail!("--remote serves the browser UI, which needs a data folder (see --data-dir)");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let opts = RemoteOptions::default();
    let model = match args.remote_model.clone() {
        Some(m) => m,
        None => {
            let listed = runtime
                .block_on(remote::list_models(&url, args.remote_key.as_deref(), &opts))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            listed
                .into_iter()
                .next()
                .with_context(|| format!("{url} lists no model; name one with --remote-model"))?
        }
    };
    let generator = RemoteGenerator::new(
        RemoteServer {
            base_url: url,
            api_key: args.remote_key.clone(),
            model: model.clone(),
        },
        opts,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let label = format!("{model} on {}", generator.server().host());
    service.set_generator(
        std::sync::Arc::new(generator),
        EngineState::Ready {
            model: label.clone(),
        },
    );
    let router = in_app_router(service.clone(), !bind.lan);
    let served = format!("{label} · browser UI at /");
    runtime.block_on(listen(&args, &bind, router, &served, Some(&service), || {}))
}

/// Listens with the guard in front of `router` until Ctrl-C or SIGTERM; `served` says what
/// (printed after the address); `stop` runs when the signal comes, before connections close.
async fn listen(
    args: &ServeArgs,
    bind: &Binding,
    router: Router,
    served: &str,
    data: Option<&ChatService>,
    stop: impl FnOnce(),
) -> anyhow::Result<()> {
    let addr = SocketAddr::new(bind.ip, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let mut extra_hosts = args.allow_hosts.clone();
    if bind.lan {
        extra_hosts.extend(guard::lan_host_names(bind.ip));
    }
    let guard = Guard::new(GuardConfig {
        port: local.port(),
        lan: bind.lan,
        extra_hosts: extra_hosts.clone(),
        keys: KeyStore::new(args.api_key.clone()),
        cors_origins: args.cors_origins.clone(),
        max_body_bytes: args.max_body,
        key_attempts: guard::AttemptLimits::default(),
    });
    let router = guard.protect(router);

    let shown = if local.ip().is_unspecified() {
        SocketAddr::new(IpAddr::from([127, 0, 0, 1]), local.port())
    } else {
        local
    };
    if let Some(service) = data {
        if let Err(e) = service.advertise(&format!("http://{shown}")) {
            tracing::warn!("cannot record the address in the data folder's lock: {e}");
        }
    }
    println!("listening on http://{shown}");
    println!("{served}");
    if bind.lan {
        println!(
            "LAN mode: requests need the API key; also reachable as {}",
            extra_hosts.join(", ")
        );
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = ConnectionLimits {
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        max_connections: args.max_connections.max(1),
        shutdown_grace: SHUTDOWN_GRACE,
    };
    let server = super::listener::serve(listener, router, limits, {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    });
    let server = tokio::spawn(server);
    shutdown_signal().await;
    eprintln!("shutting down");
    stop();
    let _ = stop_tx.send(true);
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(r)) => r.context("the server failed"),
        Ok(Err(e)) => Err(anyhow::anyhow!("the server task failed: {e}")),
        Err(_) => {
            eprintln!("some connections were still open; closing them");
            Ok(())
        }
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ServeArgs,
    }

    fn args(v: &[&str]) -> ServeArgs {
        let mut all = vec!["t"];
        all.extend_from_slice(v);
        T::parse_from(all).a
    }

    #[test]
    fn loopback_is_the_default_and_needs_no_key() {
        let b = binding(&args(&[])).unwrap();
        assert_eq!(
            b,
            Binding {
                ip: IpAddr::from([127, 0, 0, 1]),
                lan: false
            }
        );
    }

    #[test]
    fn network_addresses_need_a_long_enough_key() {
        let e = binding(&args(&["--host", "0.0.0.0"])).unwrap_err();
        assert!(e.to_string().contains("without an API key"), "{e}");
        let e = binding(&args(&["--allow-lan", "--api-key", "short"])).unwrap_err();
        assert!(e.to_string().contains("too weak"), "{e}");
        let e = binding(&args(&["--allow-lan", "--api-key", &"_".repeat(16)])).unwrap_err();
        assert!(e.to_string().contains("64 bits"), "{e}");
        let key = guard::generate_key();
        let b = binding(&args(&["--allow-lan", "--api-key", &key])).unwrap();
        assert_eq!(
            b,
            Binding {
                ip: IpAddr::from([0, 0, 0, 0]),
                lan: true
            }
        );
    }
}
