//! Safety for any router the app serves over TCP, safe by default.
//!
//! A local model server is an easy target for web pages the user happens to visit: a page can
//! point a name it controls at 127.0.0.1 (DNS rebinding, as in Ollama's CVE-2024-28224) or post
//! forms across origins. The [`Guard`] stands in front of every route and refuses, in order:
//!
//! 1. more than one `Host` header → 400; a `Host` that is not this server (loopback names with
//!    the right port, plus the machine's LAN names and addresses in LAN mode) → 421;
//! 2. a CORS preflight from an origin that was not configured, or for anything but the API
//!    (`/v1/…`) → 403: the browser UI's routes never take part in CORS;
//! 3. a body over the size limit → 413 (declared length at once, streamed bodies as they go);
//! 4. a state-changing request (POST/PUT/PATCH/DELETE) whose `Origin` is another site → 403,
//!    unless it carries the key or is an API call from a configured CORS origin;
//! 5. a client that got the key wrong too often lately → 429 (see [`Attempts`]);
//! 6. a request without the key when one is needed (LAN mode, or whenever a key is set) → 401,
//!    or, for a browser page, a redirect to the small login page that sets an HttpOnly
//!    `SameSite=Strict` cookie.
//!
//! Keys are compared in constant time. How many replies may wait is the engine's business
//! (`engine::admission`), the same bound for the API and the browser UI.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Default request body limit: room for a full 64k-token conversation in JSON.
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Name of the login cookie.
pub const SESSION_COOKIE: &str = "smollm3_session";

/// Shortest key accepted when the server is reachable from the network.
pub const MIN_KEY_LEN: usize = 16;

/// Least estimated randomness of a key accepted when the server is reachable from the network.
pub const MIN_KEY_BITS: f64 = 64.0;

/// An estimate of a key's randomness in bits: its length times the Shannon entropy of its
/// characters' frequencies. Repeats and a small alphabet score low (sixteen underscores: 0;
/// `aaaabbbbccccdddd`: 32), random keys high (40 random letters and digits: about 210).
pub fn key_bits(key: &str) -> f64 {
    let mut counts: HashMap<char, usize> = HashMap::new();
    let mut n = 0usize;
    for c in key.chars() {
        *counts.entry(c).or_default() += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    let per_char: f64 = counts
        .values()
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.log2()
        })
        .sum();
    per_char * n as f64
}

/// Why `key` is too weak for a server the network can reach, if it is; the message states
/// the rule.
pub fn weak_key(key: &str) -> Option<String> {
    let len = key.chars().count();
    let bits = key_bits(key);
    (len < MIN_KEY_LEN || bits < MIN_KEY_BITS).then(|| {
        format!(
            "the API key is too weak for LAN mode: a key needs at least {MIN_KEY_LEN} characters \
             and about {MIN_KEY_BITS:.0} bits of randomness, estimated from how varied its \
             characters are (this one: {len} characters, about {bits:.0} bits)"
        )
    })
}

/// How long a login cookie lasts.
const SESSION_MAX_AGE_S: u64 = 30 * 24 * 3600;

/// A fresh random key: 40 letters and digits (about 238 bits) from the OS generator.
pub fn generate_key() -> String {
    let body: String = rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("smol-{body}")
}

/// The key made from a stored 32-byte secret (the desktop's server keeps its key this way, so
/// it survives restarts and rotates with the secret): 64 hex digits, 256 bits.
pub fn key_from_secret(secret: &[u8; 32]) -> String {
    format!("smol-{}", crate::hub::local::hex(secret))
}

/// Constant-time string equality (the time taken does not reveal where the strings differ).
pub fn keys_equal(a: &str, b: &str) -> bool {
    // Lengths are not secret (keys are generated at a fixed length); contents are.
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The server's key, shared and replaceable at run time (the settings UI can rotate it).
#[derive(Debug, Clone, Default)]
pub struct KeyStore(Arc<RwLock<Option<String>>>);

impl KeyStore {
    /// A store holding `key` (none: no key set).
    pub fn new(key: Option<String>) -> Self {
        Self(Arc::new(RwLock::new(key.filter(|k| !k.is_empty()))))
    }

    /// The current key.
    pub fn get(&self) -> Option<String> {
        self.0.read().map(|k| k.clone()).unwrap_or(None)
    }

    /// Whether a key is set.
    pub fn is_set(&self) -> bool {
        self.get().is_some()
    }

    /// Replaces the key (none removes it). Login cookies made with the old key stop working.
    pub fn set(&self, key: Option<String>) {
        if let Ok(mut k) = self.0.write() {
            *k = key.filter(|k| !k.is_empty());
        }
    }

    /// Sets a freshly generated key and returns it.
    pub fn rotate(&self) -> String {
        let key = generate_key();
        self.set(Some(key.clone()));
        key
    }

    /// Whether `candidate` is the key (false when no key is set).
    pub fn matches(&self, candidate: &str) -> bool {
        self.get().is_some_and(|k| keys_equal(&k, candidate))
    }

    /// The login cookie's value for the current key: a digest, so the key itself never sits
    /// in a cookie jar, and rotating the key logs every browser out.
    pub fn session_value(&self) -> Option<String> {
        self.get().map(|k| session_for(&k))
    }

    /// Whether a cookie value is a valid session.
    pub fn session_matches(&self, candidate: &str) -> bool {
        self.session_value()
            .is_some_and(|v| keys_equal(&v, candidate))
    }
}

fn session_for(key: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"smollm3-bot session v1\0");
    h.update(key.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What the guard allows.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// The port the server listens on; a `Host` naming another port is refused.
    pub port: u16,
    /// LAN mode: the machine's network names are allowed and every request needs the key.
    pub lan: bool,
    /// Extra host names or addresses (no port) accepted in the `Host` header; in LAN mode the
    /// machine's own names and addresses go here (see [`lan_host_names`]).
    pub extra_hosts: Vec<String>,
    /// The key; when set, it is needed even on loopback.
    pub keys: KeyStore,
    /// Origins (`scheme://host[:port]`) allowed to call from other sites; empty: CORS off.
    pub cors_origins: Vec<String>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Wrong keys a client may send in a row before it has to wait, and how fast that
    /// allowance comes back.
    pub key_attempts: AttemptLimits,
}

impl GuardConfig {
    /// Loopback only, no key, no CORS, default body limit.
    pub fn local(port: u16) -> Self {
        Self {
            port,
            lan: false,
            extra_hosts: Vec::new(),
            keys: KeyStore::default(),
            cors_origins: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            key_attempts: AttemptLimits::default(),
        }
    }

    /// Whether requests must carry the key.
    pub fn key_required(&self) -> bool {
        self.lan || self.keys.is_set()
    }
}

/// How many wrong keys a client may send (see [`Attempts`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttemptLimits {
    /// Wrong keys in a row before the client must wait.
    pub burst: u32,
    /// One more attempt comes back every this long.
    pub refill: Duration,
}

impl Default for AttemptLimits {
    /// Ten wrong keys, then one more every six seconds (ten a minute): plenty for a person
    /// mistyping, nothing for a guesser.
    fn default() -> Self {
        Self {
            burst: 10,
            refill: Duration::from_secs(6),
        }
    }
}

/// Wrong keys per client address, as token buckets: each wrong key takes a token, tokens
/// come back over time, and a client with none left is refused (429) before its key is even
/// looked at, so guessing stalls whatever the guesses are. Right keys cost nothing.
///
/// Written here rather than taken from a rate-limiting crate because it counts failures only
/// and must say whether a client is out *before* the attempt is judged, which the usual
/// "take a token per request" limiters do not offer; it is a few lines over a map. The map is
/// bounded: past [`MAX_TRACKED`] addresses, those whose bucket has refilled are forgotten.
#[derive(Debug)]
pub struct Attempts {
    limits: AttemptLimits,
    buckets: Mutex<HashMap<Option<IpAddr>, (f64, Instant)>>,
}

/// Most client addresses [`Attempts`] remembers at once.
const MAX_TRACKED: usize = 4096;

impl Attempts {
    /// Buckets with these limits.
    pub fn new(limits: AttemptLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        let per_s = 1.0 / self.limits.refill.as_secs_f64().max(1e-3);
        (tokens + now.duration_since(since).as_secs_f64() * per_s).min(self.limits.burst as f64)
    }

    /// Seconds `client` must wait before its next attempt, if it has none left.
    pub fn wait_s(&self, client: Option<IpAddr>) -> Option<u64> {
        let now = Instant::now();
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let &(tokens, at) = buckets.get(&client)?;
        let tokens = self.refilled(tokens, at, now);
        (tokens < 1.0).then(|| {
            let missing = 1.0 - tokens;
            (missing * self.limits.refill.as_secs_f64()).ceil().max(1.0) as u64
        })
    }

    /// Records a wrong key from `client`.
    pub fn failed(&self, client: Option<IpAddr>) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&client) {
            let full = self.limits.burst as f64;
            buckets.retain(|_, (t, at)| self.refilled(*t, *at, now) < full);
        }
        let (tokens, at) = buckets
            .get(&client)
            .copied()
            .unwrap_or((self.limits.burst as f64, now));
        let tokens = (self.refilled(tokens, at, now) - 1.0).max(0.0);
        buckets.insert(client, (tokens, now));
    }
}

/// The guard, cheap to clone; wear it with [`Guard::protect`].
#[derive(Debug, Clone)]
pub struct Guard(Arc<GuardState>);

#[derive(Debug)]
struct GuardState {
    config: GuardConfig,
    attempts: Attempts,
}

impl Guard {
    /// A guard with these settings.
    pub fn new(config: GuardConfig) -> Self {
        let attempts = Attempts::new(config.key_attempts);
        Self(Arc::new(GuardState { config, attempts }))
    }

    /// The settings.
    pub fn config(&self) -> &GuardConfig {
        &self.0.config
    }

    /// Puts `router` behind the guard and adds the login page (`GET/POST /login`).
    pub fn protect(&self, router: Router) -> Router {
        let login = Router::new()
            .route("/login", get(login_page).post(login_submit))
            .with_state(self.clone());
        router
            .merge(login)
            .layer(axum::middleware::from_fn_with_state(self.clone(), check))
    }

    fn host_allowed(&self, host: &str, port: u16) -> bool {
        if port != self.config().port {
            return false;
        }
        let host = host.trim_end_matches('.');
        matches!(host, "localhost" | "127.0.0.1" | "::1")
            || self
                .config()
                .extra_hosts
                .iter()
                .any(|h| h.trim_matches(['[', ']']).eq_ignore_ascii_case(host))
    }

    fn cors_allowed(&self, origin: &str) -> bool {
        self.config()
            .cors_origins
            .iter()
            .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }
}

/// The machine's names and addresses a LAN client may use in `Host`: its host name (and
/// `NAME.local`), the address it reaches the network from, and `bound` when that is a
/// specific address.
pub fn lan_host_names(bound: std::net::IpAddr) -> Vec<String> {
    let mut out = Vec::new();
    if !bound.is_unspecified() && !bound.is_loopback() {
        out.push(bound.to_string());
    }
    if let Some(name) = host_name() {
        out.push(format!("{name}.local"));
        out.push(name);
    }
    // Connecting a UDP socket sends nothing; it only asks the OS which local address routes
    // outwards.
    for probe in ["192.0.2.1:9", "[2001:db8::1]:9"] {
        let any = if probe.starts_with('[') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        if let Ok(sock) = std::net::UdpSocket::bind(any) {
            if sock.connect(probe).is_ok() {
                if let Ok(addr) = sock.local_addr() {
                    out.push(addr.ip().to_string());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn host_name() -> Option<String> {
    let from_file = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok();
    from_file
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
}

/// Splits a `Host` value (or an origin's authority) into host and port; the port defaults to
/// `default_port`. IPv6 brackets are removed.
pub fn split_host(value: &str, default_port: u16) -> Option<(String, u16)> {
    let value = value.trim();
    if value.is_empty() || value.contains(['/', '@', ' ']) {
        return None;
    }
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after {
            "" => default_port,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (h.to_string(), port)
    } else {
        match value.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (value.to_string(), default_port),
        }
    };
    (!host.is_empty()).then(|| (host.to_ascii_lowercase(), port))
}

/// Whether `origin` (`scheme://authority`) names the same host and port as the `Host` header.
fn same_origin(origin: &str, host_header: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    match (split_host(authority, default), split_host(host_header, 80)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// An error in the OpenAI JSON shape, used for every refusal.
pub fn error_response(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    (status, axum::Json(body)).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The value of the cookie `name`, if the request carries it.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn state_changing(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

fn wants_html(req: &Request) -> bool {
    req.method() == Method::GET
        && !req.uri().path().starts_with("/v1/")
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"))
}

/// The middleware: every check of the module docs, then the inner service.
/// Whether a path is the API's, the only routes CORS may open to other sites.
fn api_path(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// The client's address, when the server put it in the request (tests in-process have none).
fn client_ip(req: &Request) -> Option<IpAddr> {
    address_in(req.extensions())
}

fn address_in(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Extractor: the client's address, when the server knows it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(address_in(&parts.extensions)))
    }
}

fn too_many_attempts(wait_s: u64, html: bool) -> Response {
    let mut resp = if html {
        (
            StatusCode::TOO_MANY_REQUESTS,
            axum::response::Html(login_html(
                "/",
                Some(&format!(
                    "Too many wrong keys from this computer. Try again in {wait_s} s."
                )),
            )),
        )
            .into_response()
    } else {
        error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "invalid_request_error",
            "too_many_attempts",
            &format!("too many wrong API keys from this address; try again in {wait_s} s"),
        )
    };
    if let Ok(v) = HeaderValue::from_str(&wait_s.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// The middleware: every check of the module docs, then the inner service.
async fn check(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    let cfg = guard.config();
    // Two Host headers leave it to each layer to pick one; a proxy and this server could
    // disagree on which site a request is for.
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "bad_host",
            "the request has more than one Host header",
        );
    }
    // HTTP/1.1 sends Host; HTTP/2 puts the authority in the URI.
    let host_value = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let host_ok = host_value
        .as_deref()
        .and_then(|h| split_host(h, 80))
        .is_some_and(|(h, p)| guard.host_allowed(&h, p));
    if !host_ok {
        tracing::warn!(host = ?host_value, "refused a request for another host");
        return error_response(
            StatusCode::MISDIRECTED_REQUEST,
            "invalid_request_error",
            "host_not_allowed",
            "this server does not answer for that host name (DNS rebinding protection); use \
             http://localhost or http://127.0.0.1, or turn LAN mode on",
        );
    }
    let host_value = host_value.unwrap_or_default();
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // CORS opens the API to the configured sites, never the browser UI: its pages and
    // settings stay same-origin whatever `--cors-origin` says.
    let cors_origin = origin
        .as_deref()
        .filter(|o| {
            api_path(req.uri().path()) && !same_origin(o, &host_value) && guard.cors_allowed(o)
        })
        .map(str::to_string);

    if req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return match &cors_origin {
            Some(o) => preflight(o),
            None => error_response(
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                "cors_not_allowed",
                "cross-origin requests are not allowed from this origin",
            ),
        };
    }

    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cfg.max_body_bytes as u64) {
        return too_large(cfg.max_body_bytes);
    }

    let headers = req.headers();
    let good_bearer = bearer(headers).is_some_and(|k| cfg.keys.matches(k));
    let good_cookie = cookie(headers, SESSION_COOKIE).is_some_and(|c| cfg.keys.session_matches(c));

    if state_changing(req.method()) && !good_bearer {
        let cross = match origin.as_deref() {
            None => false,
            Some(o) => !same_origin(o, &host_value) && cors_origin.is_none(),
        };
        if cross {
            tracing::warn!(origin = ?origin, "refused a cross-origin request");
            return error_response(
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                "cross_origin",
                "cross-origin requests that change state are refused; send the API key to \
                 call from another site",
            );
        }
    }

    let path = req.uri().path();
    let client = client_ip(&req);
    let sends_key = bearer(headers).is_some() || (path == "/login" && req.method() == Method::POST);
    if sends_key {
        if let Some(wait_s) = guard.0.attempts.wait_s(client) {
            tracing::warn!(client = ?client, "refused a key attempt: too many wrong keys");
            return too_many_attempts(wait_s, path == "/login");
        }
    }
    if bearer(headers).is_some() && !good_bearer && cfg.keys.is_set() {
        guard.0.attempts.failed(client);
    }
    // The sign-in page and its stylesheet are the only things a visitor without the key sees.
    let open_to_all = path == "/login" || path == "/app.css";
    if cfg.key_required() && !good_bearer && !good_cookie && !open_to_all {
        if wants_html(&req) {
            let next = req
                .uri()
                .path_and_query()
                .map_or("/".to_string(), |p| p.to_string());
            let to = format!("/login?next={}", url_encode(&next));
            return (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
        }
        let message = if bearer(headers).is_some() {
            "the API key is wrong"
        } else {
            "this server needs an API key: send `Authorization: Bearer KEY`"
        };
        let mut resp = error_response(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            message,
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }

    let limit = cfg.max_body_bytes;
    let req = req.map(|b| Body::new(http_body_util::Limited::new(b, limit)));
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let is_html = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_html {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_POLICY),
        );
    }
    if let Some(o) = cors_origin.and_then(|o| HeaderValue::from_str(&o).ok()) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

/// What a page from this server may load and do: only files from this origin, no inline
/// script or style (the templates have none), no framing, forms that post back here.
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn preflight(origin: &str) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    if let Ok(o) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

fn too_large(limit: usize) -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "request_too_large",
        &format!("the request body is larger than the server accepts ({limit} bytes)"),
    )
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Only paths on this server: an absolute path, not protocol-relative (`//host`), with no
/// backslash (`/\\host` is `//host` to browsers) and nothing but visible ASCII (browsers drop
/// tabs and newlines from URLs, so `/\t/host` would become `//host` too).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    key: String,
    next: Option<String>,
}

/// The sign-in page, with `message` (a wrong key, too many tries) above the form.
fn login_html(next: &str, message: Option<&str>) -> String {
    crate::view::render("login.html", minijinja::context! { next, message })
}

async fn login_page(
    State(_guard): State<Guard>,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::response::Html(login_html(&next, None)),
    )
        .into_response()
}

async fn login_submit(
    State(guard): State<Guard>,
    ClientAddr(client): ClientAddr,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let keys = &guard.config().keys;
    if !keys.matches(form.key.trim()) {
        // The guard refuses a client with no attempts left before it gets here.
        guard.0.attempts.failed(client);
        return (
            StatusCode::UNAUTHORIZED,
            axum::response::Html(login_html(&next, Some("That key is not right."))),
        )
            .into_response();
    }
    let Some(session) = keys.session_value() else {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, next)]).into_response();
    };
    let cookie = format!(
        "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_MAX_AGE_S}"
    );
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, next), (header::SET_COOKIE, cookie)],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_split_with_and_without_ports() {
        assert_eq!(
            split_host("localhost:3000", 80),
            Some(("localhost".into(), 3000))
        );
        assert_eq!(split_host("[::1]:8080", 80), Some(("::1".into(), 8080)));
        assert_eq!(split_host("[::1]", 80), Some(("::1".into(), 80)));
        assert_eq!(
            split_host("Example.COM", 443),
            Some(("example.com".into(), 443))
        );
        assert_eq!(split_host("a:b", 80), None);
        assert_eq!(split_host("evil.com/x", 80), None);
        assert_eq!(split_host("", 80), None);
    }

    #[test]
    fn same_origin_needs_scheme_host_and_port_to_agree() {
        assert!(same_origin("http://127.0.0.1:3000", "127.0.0.1:3000"));
        assert!(same_origin("http://localhost", "localhost"));
        assert!(!same_origin("http://localhost:3001", "localhost:3000"));
        assert!(!same_origin("http://evil.example", "127.0.0.1:3000"));
        assert!(!same_origin("null", "127.0.0.1:3000"));
        assert!(!same_origin("file://", "127.0.0.1:3000"));
    }

    #[test]
    fn keys_are_long_random_and_compared_exactly() {
        let a = generate_key();
        let b = generate_key();
        assert!(a.len() >= 32 && a != b);
        assert!(keys_equal(&a, &a.clone()));
        assert!(!keys_equal(&a, &b));
        assert!(!keys_equal(&a, &a[..a.len() - 1]));
        let store = KeyStore::new(Some(a.clone()));
        let session = store.session_value().unwrap();
        assert!(store.matches(&a) && store.session_matches(&session));
        assert!(!store.matches(&session), "the cookie value is not the key");
        let new = store.rotate();
        assert!(store.matches(&new) && !store.matches(&a));
        assert!(
            !store.session_matches(&session),
            "rotation ends old sessions"
        );
    }

    #[test]
    fn login_redirects_stay_on_this_server() {
        assert_eq!(safe_next(Some("/chat?x=1")), "/chat?x=1");
        assert_eq!(
            safe_next(Some("/conversations/3?q=a%20b")),
            "/conversations/3?q=a%20b"
        );
        for off_site in [
            "//evil.example/",
            "https://evil.example/",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\\evil.example",
            "/\\/evil.example",
            "\\\\evil.example",
            "javascript:alert(1)",
            " /chat",
            "/ch at",
            "/caf\u{e9}",
            "",
        ] {
            assert_eq!(safe_next(Some(off_site)), "/", "{off_site:?}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn lan_keys_need_length_and_variety() {
        assert!(weak_key(&"_".repeat(16)).is_some());
        assert!(weak_key(&"_".repeat(64)).is_some());
        assert!(weak_key("aaaabbbbccccdddd").is_some());
        assert!(weak_key("short-Key-1").is_some());
        let message = weak_key(&"_".repeat(16)).unwrap();
        assert!(
            message.contains("16 characters") && message.contains("64 bits"),
            "{message}"
        );
        assert!(weak_key(&generate_key()).is_none());
        // `openssl rand -hex 24`, as the docs suggest.
        assert!(weak_key("3f9a61c0d27be84415f06a9c2d3b7e58a1046cf29db37e05").is_none());
    }

    #[test]
    fn wrong_keys_use_up_attempts_that_come_back_with_time() {
        let a = Attempts::new(AttemptLimits {
            burst: 3,
            refill: Duration::from_millis(200),
        });
        let me = Some(IpAddr::from([10, 0, 0, 1]));
        let other = Some(IpAddr::from([10, 0, 0, 2]));
        for _ in 0..3 {
            assert_eq!(a.wait_s(me), None);
            a.failed(me);
        }
        assert!(a.wait_s(me).is_some_and(|s| s >= 1));
        assert_eq!(a.wait_s(other), None, "others are not held up");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(a.wait_s(me), None, "an attempt came back");
    }
}
