//! A stand-in for the Hugging Face hub on 127.0.0.1, for tests and local end-to-end runs.
//!
//! It answers `HEAD` and `GET` on `/{repo}/resolve/{revision}/{file}` the way the hub does:
//! LFS files get a 302 to `/cdn/{sha256}` carrying `X-Linked-Etag` (the sha256, quoted),
//! `X-Linked-Size` and `X-Repo-Commit`; files kept in git get a 200 whose `ETag` is the git
//! blob sha1. Content answers honour `Range: bytes=N-` with 206 and `Content-Range`.
//!
//! Faults can be injected to test what a real network does to a download: a connection
//! dropped at a byte offset, a stall, a corrupted byte, an error status, a server ignoring
//! `Range`, a throttled link. Every request is recorded so tests can check what was asked.
//!
//! One thread per connection, `Connection: close` on every answer: simple, and enough for
//! files of a few megabytes.

#![allow(dead_code)] // each test file uses a different part of it

use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A way to misbehave.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Close the connection once the body reaches this byte of the file.
    DropAt(u64),
    /// Send nothing more after this byte of the file for a while, then close.
    StallAt(u64, Duration),
    /// Answer with this HTTP status.
    Status(u16),
    /// Serve this byte of the file flipped.
    CorruptByte(u64),
    /// Answer 200 with the whole file even when a range is asked for.
    IgnoreRange,
}

/// One request as the mock saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET` or `HEAD`.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// Whether file bytes were (or began to be) sent in answer.
    pub content: bool,
}

impl Request {
    /// The first byte asked for by `Range: bytes=N-`.
    pub fn range_start(&self) -> Option<u64> {
        self.range
            .as_deref()?
            .strip_prefix("bytes=")?
            .split('-')
            .next()?
            .parse()
            .ok()
    }
    /// Whether this request fetched file content (not a redirect, an error or a `HEAD`).
    pub fn is_content_get(&self) -> bool {
        self.method == "GET" && self.content
    }
}

struct StoredFile {
    content: Vec<u8>,
    sha256: String,
    git_sha1: String,
    lfs: bool,
}

#[derive(Default)]
struct State {
    /// `repo/revision/file` → file.
    files: HashMap<String, Arc<StoredFile>>,
    /// sha256 → file, for the CDN.
    blobs: HashMap<String, Arc<StoredFile>>,
    next_faults: VecDeque<Fault>,
    always: Vec<Fault>,
    token: Option<String>,
    bytes_per_sec: Option<u64>,
    answer_delay: Option<Duration>,
    requests: Vec<Request>,
}

/// The running mock; it stops when dropped.
pub struct MockHub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl MockHub {
    /// Starts on a free port of 127.0.0.1.
    pub fn start() -> Self {
        Self::start_on(0).expect("bind 127.0.0.1")
    }

    /// Starts on `port` of 127.0.0.1 (0: any free port).
    pub fn start_on(port: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &st);
                });
            }
        });
        Ok(Self { addr, state, stop })
    }

    /// Base URL to use as the hub endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port listened on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Publishes a file stored with LFS (served through the CDN redirect); returns its sha256.
    pub fn add_lfs_file(&self, repo: &str, revision: &str, file: &str, content: Vec<u8>) -> String {
        self.add(repo, revision, file, content, true)
    }

    /// Publishes a small file kept in git (served directly, `ETag` = blob sha1).
    pub fn add_git_file(&self, repo: &str, revision: &str, file: &str, content: Vec<u8>) -> String {
        self.add(repo, revision, file, content, false)
    }

    fn add(&self, repo: &str, revision: &str, file: &str, content: Vec<u8>, lfs: bool) -> String {
        let sha256 = hex(&Sha256::digest(&content));
        let mut sha1 = Sha1::new();
        sha1.update(format!("blob {}\0", content.len()).as_bytes());
        sha1.update(&content);
        let git_sha1 = hex(&sha1.finalize());
        let stored = Arc::new(StoredFile {
            content,
            sha256: sha256.clone(),
            git_sha1,
            lfs,
        });
        let mut s = self.state.lock().unwrap();
        s.files
            .insert(format!("{repo}/{revision}/{file}"), stored.clone());
        s.blobs.insert(sha256.clone(), stored);
        sha256
    }

    /// Applies `fault` to the next content request only (queued in order).
    pub fn fail_next(&self, fault: Fault) {
        self.state.lock().unwrap().next_faults.push_back(fault);
    }

    /// Applies `fault` to every request from now on (`Status` to `HEAD` too).
    pub fn fail_always(&self, fault: Fault) {
        self.state.lock().unwrap().always.push(fault);
    }

    /// Removes all faults.
    pub fn clear_faults(&self) {
        let mut s = self.state.lock().unwrap();
        s.always.clear();
        s.next_faults.clear();
    }

    /// Answers 401 to requests without `Authorization: Bearer {token}`.
    pub fn require_token(&self, token: &str) {
        self.state.lock().unwrap().token = Some(token.to_owned());
    }

    /// Limits the content rate, so a transfer takes a while.
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.state.lock().unwrap().bytes_per_sec = Some(bytes_per_sec);
    }

    /// Waits this long before answering each request, like a slow network or a far server.
    pub fn delay_answers(&self, delay: Duration) {
        self.state.lock().unwrap().answer_delay = Some(delay);
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Content requests so far (the ones that carry bytes of a file).
    pub fn content_requests(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(Request::is_content_get)
            .collect()
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn serve(mut stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    let method = method.to_owned();
    let delay = state.lock().unwrap().answer_delay;
    if let Some(delay) = delay {
        std::thread::sleep(delay);
    }
    // As a proxy it is asked for absolute URLs; the hub behind it sees only the path.
    let path = match path.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]).to_owned(),
        None => path.to_owned(),
    };
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let request = Request {
        method: method.clone(),
        path: path.clone(),
        range: headers.get("range").cloned(),
        authorization: headers.get("authorization").cloned(),
        content: false,
    };
    let head = method == "HEAD";

    let mut s = state.lock().unwrap();
    let index = s.requests.len();
    s.requests.push(request.clone());
    if let Some(status) = s.always.iter().find_map(|f| match f {
        Fault::Status(code) => Some(*code),
        _ => None,
    }) {
        drop(s);
        return respond(&mut stream, status, &[], b"fault", head);
    }
    if let Some(token) = &s.token {
        if request.authorization.as_deref() != Some(format!("Bearer {token}").as_str()) {
            drop(s);
            let headers = [("X-Error-Code", "GatedRepo".to_owned())];
            return respond(
                &mut stream,
                401,
                &headers,
                b"Access to this model is restricted",
                head,
            );
        }
    }

    // `/cdn/{sha256}`: the content of an LFS file.
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let sha = sha.split('?').next().unwrap_or(sha);
        let Some(file) = s.blobs.get(sha).cloned() else {
            drop(s);
            return respond(&mut stream, 404, &[], b"no such blob", head);
        };
        let faults = take_faults(&mut s, head);
        let rate = s.bytes_per_sec;
        mark_content(&mut s, index, head, &faults);
        drop(s);
        return send_content(
            &mut stream,
            &file,
            &request,
            &faults,
            rate,
            head,
            &file.sha256,
        );
    }

    // `/{owner}/{name}/resolve/{revision}/{file...}`
    let key = resolve_key(&path).unwrap_or_default();
    let Some(file) = s.files.get(&key).cloned() else {
        drop(s);
        return respond(
            &mut stream,
            404,
            &[("X-Error-Code", "EntryNotFound".into())],
            b"Entry not found",
            head,
        );
    };
    let commit = "0123456789abcdef0123456789abcdef01234567".to_owned();
    if file.lfs {
        drop(s);
        let headers = [
            ("Location", format!("/cdn/{}?signature=test", file.sha256)),
            ("X-Linked-Etag", format!("\"{}\"", file.sha256)),
            ("X-Linked-Size", file.content.len().to_string()),
            ("ETag", format!("\"{}\"", file.sha256)),
            ("X-Repo-Commit", commit),
        ];
        return respond(&mut stream, 302, &headers, b"Found", head);
    }
    let faults = take_faults(&mut s, head);
    let rate = s.bytes_per_sec;
    mark_content(&mut s, index, head, &faults);
    drop(s);
    send_content(
        &mut stream,
        &file,
        &request,
        &faults,
        rate,
        head,
        &file.git_sha1,
    )
}

/// Records that request `index` gets file bytes (a GET not answered by a status fault).
fn mark_content(s: &mut State, index: usize, head: bool, faults: &[Fault]) {
    let failed = faults.iter().any(|f| matches!(f, Fault::Status(_)));
    if !head && !failed {
        s.requests[index].content = true;
    }
}

/// `repo/revision/file` of a resolve path.
fn resolve_key(path: &str) -> Option<String> {
    let path = path.split('?').next()?.strip_prefix('/')?;
    let (repo_and_rest, file_and_rev) = path.split_once("/resolve/")?;
    let (revision, file) = file_and_rev.split_once('/')?;
    let revision = revision.replace("%2F", "/");
    Some(format!("{repo_and_rest}/{revision}/{file}"))
}

/// The faults for one content request: the next one-shot fault plus the standing ones.
fn take_faults(s: &mut State, head: bool) -> Vec<Fault> {
    let mut faults = s.always.clone();
    if !head {
        faults.extend(s.next_faults.pop_front());
    }
    faults
}

fn send_content(
    stream: &mut TcpStream,
    file: &StoredFile,
    request: &Request,
    faults: &[Fault],
    rate: Option<u64>,
    head: bool,
    etag: &str,
) -> std::io::Result<()> {
    if let Some(status) = faults.iter().find_map(|f| match f {
        Fault::Status(code) => Some(*code),
        _ => None,
    }) {
        return respond(stream, status, &[], b"fault", head);
    }
    let len = file.content.len() as u64;
    let ignore_range = faults.contains(&Fault::IgnoreRange);
    let start = if ignore_range {
        None
    } else {
        request.range_start()
    };
    let mut headers = vec![
        ("Accept-Ranges", "bytes".to_owned()),
        ("ETag", format!("\"{etag}\"")),
        ("Content-Type", "application/octet-stream".to_owned()),
    ];
    let (status, start) = match start {
        Some(start) if start >= len => {
            headers.push(("Content-Range", format!("bytes */{len}")));
            return respond(stream, 416, &headers, b"", head);
        }
        Some(start) => {
            headers.push(("Content-Range", format!("bytes {start}-{}/{len}", len - 1)));
            (206, start)
        }
        None => (200, 0),
    };
    headers.push(("Content-Length", (len - start).to_string()));
    write_head(stream, status, &headers)?;
    if head {
        return Ok(());
    }
    let mut body = file.content[start as usize..].to_vec();
    for f in faults {
        if let Fault::CorruptByte(at) = f {
            if *at >= start && *at < len {
                body[(*at - start) as usize] ^= 0xff;
            }
        }
    }
    // Where to stop early, as an offset into the file.
    let cut = faults.iter().find_map(|f| match f {
        Fault::DropAt(at) => Some((*at, None)),
        Fault::StallAt(at, pause) => Some((*at, Some(*pause))),
        _ => None,
    });
    let chunk = 4096usize;
    let mut pos = start;
    for piece in body.chunks(chunk) {
        let mut piece = piece;
        let mut stop_after = None;
        if let Some((at, pause)) = cut {
            if at < pos + piece.len() as u64 && at >= pos {
                piece = &piece[..(at - pos) as usize];
                stop_after = Some(pause);
            }
        }
        stream.write_all(piece)?;
        pos += piece.len() as u64;
        if let Some(pause) = stop_after {
            stream.flush()?;
            if let Some(pause) = pause {
                std::thread::sleep(pause);
            }
            let _ = stream.shutdown(Shutdown::Both);
            return Ok(());
        }
        if let Some(rate) = rate {
            std::thread::sleep(Duration::from_secs_f64(
                piece.len() as f64 / rate.max(1) as f64,
            ));
        }
    }
    stream.flush()
}

fn write_head(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    let mut all = headers.to_vec();
    all.push(("Content-Length", body.len().to_string()));
    write_head(stream, status, &all)?;
    if !head {
        stream.write_all(body)?;
    }
    stream.flush()
}
