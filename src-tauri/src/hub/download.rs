//! The downloader: one remote file into the models folder, never leaving an unverified file
//! under its final name.
//!
//! Why not `hf-hub`: it follows the hub's conventions we also follow (`HF_ENDPOINT`,
//! `HF_TOKEN`, `resolve/{revision}` URLs, the LFS ETag as sha256), but its download neither
//! resumes a partial file with a `Range` request nor verifies the sha256, it writes into its
//! own blob/snapshot cache rather than a folder the user chose, and it brings a second HTTP and
//! TLS stack plus the Xet client. A 1.9 GB first download over a flaky link needs exactly the
//! resume and verification it lacks, so the transfer is written here on `reqwest` (rustls) and
//! tokio.
//!
//! The life of a download of `NAME`:
//! 1. `HEAD` tells the size and sha256 (unless pinned) and the free space is checked.
//! 2. Bytes go to `NAME.part`; `NAME.part.json` records which file they belong to, so a later
//!    run resumes only the same file. On resume the partial bytes are hashed first, then a
//!    `Range: bytes=N-` request fetches the rest. A dropped connection or a stall (no bytes for
//!    a while) is retried with backoff, a bounded number of times in a row; a server that
//!    ignores `Range` makes the download start over from byte 0.
//! 3. The sha256, computed as the bytes arrive, is compared with the published one. On a match
//!    the file is fsynced, its digest written to `NAME.sha256`, and `NAME.part` renamed to
//!    `NAME` atomically. On a mismatch it becomes `NAME.corrupt` and is never listed.

use super::error::{human_bytes, HubError};
use super::local::{self, hex};
use super::remote::{self, HubConfig, RemoteFile, RemoteMeta};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How hard to try before giving up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Failed attempts in a row (without any new byte) before giving up.
    pub max_retries: u32,
    /// Wait before the first retry; doubled each time.
    pub initial_backoff: Duration,
    /// Upper bound of the wait.
    pub max_backoff: Duration,
    /// No byte for this long counts as a dropped connection.
    pub stall_timeout: Duration,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// How long a host that cannot be reached at all (no connection was ever made) is tried
    /// before the download ends with an error that says so.
    pub unreachable_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(30),
            // A person waits for the first sign of life: a host that cannot be reached is said
            // within fifteen seconds, a slow one still gets ten to answer each try.
            connect_timeout: Duration::from_secs(10),
            unreachable_after: Duration::from_secs(15),
        }
    }
}

/// Tells the free bytes of the file system holding a folder.
pub type SpaceProbe = Arc<dyn Fn(&Path) -> std::io::Result<u64> + Send + Sync>;

/// Settings of a [`Downloader`].
#[derive(Clone)]
pub struct DownloadOptions {
    /// Retries, backoff and stall detection.
    pub retry: RetryPolicy,
    /// Free-space probe; the default asks the operating system. Replaceable to simulate a
    /// nearly full disk.
    pub space_probe: SpaceProbe,
    /// Bytes kept free beyond the file itself, so a download never fills the disk to the brim.
    pub space_margin: u64,
    /// Least time between two progress events.
    pub progress_interval: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            space_probe: Arc::new(|p: &Path| fs4::available_space(p)),
            space_margin: 64 * 1024 * 1024,
            progress_interval: Duration::from_millis(100),
        }
    }
}

/// What to download and what it must hash to.
#[derive(Debug, Clone)]
pub struct DownloadSpec {
    /// The file on the hub.
    pub remote: RemoteFile,
    /// The models folder.
    pub dir: PathBuf,
    /// Pinned sha256 (hex); when absent the hub's `X-Linked-Etag` is used.
    pub sha256: Option<String>,
    /// Pinned size; when absent the hub's announced size is used.
    pub size: Option<u64>,
}

/// A snapshot of a transfer, for a progress bar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes of the file now on disk.
    pub done: u64,
    /// Size of the file, when known.
    pub total: Option<u64>,
    /// Recent transfer rate.
    pub bytes_per_sec: f64,
    /// Estimated seconds left, when the size and a rate are known.
    pub eta_secs: Option<f64>,
}

/// Events of one download, in order: `Resolved`, maybe `CheckingPartial`, `Progress` (with
/// `Retrying`/`Restarted` in between when the network misbehaves), `Verifying`, `Finished`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DownloadEvent {
    /// The hub answered: what will be downloaded and what it should hash to.
    Resolved {
        /// Local file name.
        name: String,
        /// Size, when known.
        total: Option<u64>,
        /// Expected sha256, when known.
        sha256: Option<String>,
        /// Bytes already on disk from an earlier attempt.
        resume_from: u64,
    },
    /// Hashing the bytes kept from an earlier attempt before resuming.
    CheckingPartial {
        /// Bytes hashed so far.
        done: u64,
        /// Bytes to hash.
        total: u64,
    },
    /// Bytes are arriving.
    Progress(Progress),
    /// A request failed; another will follow after `delay_ms`.
    Retrying {
        /// Which retry this is (1-based).
        attempt: u32,
        /// Retries allowed in a row.
        max_retries: u32,
        /// Wait before it.
        delay_ms: u64,
        /// What went wrong.
        reason: String,
    },
    /// The partial bytes were dropped and the download starts from byte 0.
    Restarted {
        /// Why.
        reason: String,
    },
    /// All bytes are there; checking the digest.
    Verifying,
    /// The file is verified and in place.
    Finished {
        /// The verified file.
        path: PathBuf,
        /// Its sha256.
        sha256: String,
        /// Its size.
        size: u64,
    },
}

/// How a download ended when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadOutcome {
    /// The file is verified and under its final name.
    Completed {
        /// The file.
        path: PathBuf,
        /// Its sha256.
        sha256: String,
        /// Its size.
        size: u64,
        /// Bytes reused from an earlier attempt (0 for a fresh download).
        resumed_from: u64,
    },
    /// Paused: the partial file is kept for a later resume.
    Paused {
        /// The partial file.
        part: PathBuf,
        /// Bytes in it.
        bytes: u64,
    },
    /// Cancelled: the partial file was removed.
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Run,
    Pause,
    Cancel,
}

/// Pause or cancel a running download from another task or thread (a UI button, Ctrl-C).
///
/// A pause is a cancel that keeps the partial file.
#[derive(Clone)]
pub struct DownloadControl {
    tx: Arc<watch::Sender<Signal>>,
}

impl Default for DownloadControl {
    fn default() -> Self {
        Self::new()
    }
}

impl DownloadControl {
    /// A control in the running state.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(Signal::Run).0),
        }
    }
    /// Stops the download and keeps the partial file.
    pub fn pause(&self) {
        self.tx.send_replace(Signal::Pause);
    }
    /// Stops the download and removes the partial file.
    pub fn cancel(&self) {
        self.tx.send_replace(Signal::Cancel);
    }
}

/// What `NAME.part.json` records, so that only the same file is ever resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartInfo {
    repo: String,
    file: String,
    revision: String,
    size: Option<u64>,
    sha256: Option<String>,
    git_sha1: Option<String>,
}

/// What the bytes must match once complete.
#[derive(Debug, Clone)]
struct Expected {
    size: Option<u64>,
    sha256: Option<String>,
    git_sha1: Option<String>,
}

/// The running digests of the bytes written so far.
struct Hashes {
    sha256: Sha256,
    git_sha1: Option<Sha1>,
}

impl Hashes {
    fn new(expected: &Expected) -> Self {
        // A git blob id hashes a `blob {len}\0` header first, so it needs the size up front.
        let git_sha1 = match (&expected.git_sha1, expected.size) {
            (Some(_), Some(size)) => {
                let mut h = Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                Some(h)
            }
            _ => None,
        };
        Self {
            sha256: Sha256::new(),
            git_sha1,
        }
    }
    fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(h) = &mut self.git_sha1 {
            h.update(bytes);
        }
    }
}

/// Why one attempt at the transfer stopped.
enum AttemptEnd {
    /// All bytes are on disk.
    Complete,
    /// Paused or cancelled by the user.
    Stopped(Signal),
    /// Worth retrying: dropped connection, stall, 5xx.
    Retry { reason: String, status: Option<u16> },
}

/// Downloads files from the hub; one per call, many calls may share it.
#[derive(Clone)]
pub struct Downloader {
    client: reqwest::Client,
    head_client: reqwest::Client,
    config: HubConfig,
    options: DownloadOptions,
}

impl Downloader {
    /// A downloader for `config`; proxies come from the environment (`HTTPS_PROXY`, `NO_PROXY`).
    pub fn new(config: HubConfig, options: DownloadOptions) -> Result<Self, HubError> {
        let setup = |e: reqwest::Error| HubError::Protocol {
            url: config.endpoint.clone(),
            detail: format!("cannot set up HTTP: {e}"),
        };
        let mut roots = Vec::new();
        for der in &config.extra_roots {
            roots.push(reqwest::Certificate::from_der(der).map_err(setup)?);
        }
        let build = |redirects: reqwest::redirect::Policy| {
            let mut b = reqwest::Client::builder()
                .user_agent(concat!("smollm3-bot/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(options.retry.connect_timeout)
                .redirect(redirects);
            for cert in &roots {
                b = b.add_root_certificate(cert.clone());
            }
            b.build().map_err(setup)
        };
        let client = build(reqwest::redirect::Policy::limited(10))?;
        // The LFS headers sit on the redirect itself, so `HEAD` must not follow it.
        let head_client = build(reqwest::redirect::Policy::none())?;
        Ok(Self {
            client,
            head_client,
            config,
            options,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Asks the hub for a file's size and digest, retrying server and network trouble.
    pub async fn head(&self, remote: &RemoteFile) -> Result<RemoteMeta, HubError> {
        self.head_reporting(remote, &|_| {}).await
    }

    /// [`Downloader::head`], telling `on_event` of each retry (`DownloadEvent::Retrying`). A
    /// host never reached is given up on after [`RetryPolicy::unreachable_after`].
    async fn head_reporting(
        &self,
        remote: &RemoteFile,
        on_event: &(dyn Fn(DownloadEvent) + Send + Sync),
    ) -> Result<RemoteMeta, HubError> {
        let policy = &self.options.retry;
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            let reason = match remote::head(&self.head_client, &self.config, remote).await {
                Ok(meta) => return Ok(meta),
                Err(HubError::Http { status, .. })
                    if remote::is_retryable_status(status) && attempt < policy.max_retries =>
                {
                    format!("the server answered HTTP {status}")
                }
                Err(e @ HubError::Network { .. }) => {
                    // Another try only if it could still end within the budget.
                    let next =
                        started.elapsed() + backoff(policy, attempt + 1) + policy.connect_timeout;
                    if attempt >= policy.max_retries || next > policy.unreachable_after {
                        return Err(e);
                    }
                    "cannot connect".to_owned()
                }
                Err(HubError::Http { url, status, .. }) => {
                    return Err(HubError::Http {
                        url,
                        status,
                        attempts: attempt + 1,
                    })
                }
                Err(e) => return Err(e),
            };
            attempt += 1;
            let delay = backoff(policy, attempt);
            on_event(DownloadEvent::Retrying {
                attempt,
                max_retries: policy.max_retries,
                delay_ms: delay.as_millis() as u64,
                reason,
            });
            tokio::time::sleep(delay).await;
        }
    }

    /// Downloads `spec` into its folder, resuming a partial file of the same content, and
    /// verifies it. `on_event` is called from the downloading task; keep it quick (send to a
    /// channel, update a bar).
    pub async fn download(
        &self,
        spec: &DownloadSpec,
        control: &DownloadControl,
        on_event: &(dyn Fn(DownloadEvent) + Send + Sync),
    ) -> Result<DownloadOutcome, HubError> {
        let mut signals = control.tx.subscribe();
        let name = spec.remote.local_name().to_owned();
        let paths = local::FilePaths::new(&spec.dir, &name);
        std::fs::create_dir_all(&spec.dir)
            .map_err(|e| HubError::io("cannot create the models folder", &spec.dir, e))?;

        let pinned_sha = match &spec.sha256 {
            Some(s) if remote::is_hex(s.trim(), 64) => Some(s.trim().to_ascii_lowercase()),
            Some(s) => {
                return Err(HubError::InvalidInput(format!(
                    "a sha256 is 64 hex digits, got {s:?}"
                )))
            }
            None => None,
        };
        let meta = self.head_reporting(&spec.remote, on_event).await?;
        if let (Some(pinned), Some(remote_sha)) = (&pinned_sha, &meta.sha256) {
            if pinned != remote_sha {
                return Err(HubError::RemoteChanged {
                    file: name,
                    pinned: pinned.clone(),
                    remote: remote_sha.clone(),
                });
            }
        }
        let expected = Expected {
            size: spec.size.or(meta.size),
            sha256: pinned_sha.or(meta.sha256.clone()),
            git_sha1: meta.git_sha1.clone(),
        };

        // Already here and recorded with the same digest: nothing to do.
        if let (Some(sha), Ok(found)) = (&expected.sha256, std::fs::metadata(&paths.file)) {
            if local::read_sidecar(&paths.sidecar).as_deref() == Some(sha.as_str())
                && expected.size.is_none_or(|size| size == found.len())
            {
                on_event(DownloadEvent::Finished {
                    path: paths.file.clone(),
                    sha256: sha.clone(),
                    size: found.len(),
                });
                return Ok(DownloadOutcome::Completed {
                    path: paths.file,
                    sha256: sha.clone(),
                    size: found.len(),
                    resumed_from: found.len(),
                });
            }
        }

        // A small file kept in git has no sidecar digest; its blob id is cheap to check.
        if let (Some(want), Some(size)) = (&expected.git_sha1, expected.size) {
            if std::fs::metadata(&paths.file).is_ok_and(|m| m.len() == size)
                && git_blob_sha1(&paths.file).as_deref() == Some(want.as_str())
            {
                let sha256 = local::sha256_file(&paths.file)?;
                on_event(DownloadEvent::Finished {
                    path: paths.file.clone(),
                    sha256: sha256.clone(),
                    size,
                });
                return Ok(DownloadOutcome::Completed {
                    path: paths.file,
                    sha256,
                    size,
                    resumed_from: size,
                });
            }
        }

        let info = PartInfo {
            repo: spec.remote.repo.clone(),
            file: spec.remote.file.clone(),
            revision: spec.remote.revision.clone(),
            size: expected.size,
            sha256: expected.sha256.clone(),
            git_sha1: expected.git_sha1.clone(),
        };
        let mut part = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&paths.part)
            .map_err(|e| HubError::io("cannot open", &paths.part, e))?;
        // Two downloads of one file (a double click, a second window) would interleave bytes.
        if let Err(std::fs::TryLockError::WouldBlock) = part.try_lock() {
            return Err(HubError::AlreadyRunning { name });
        }
        let existing = self.usable_partial(&paths, &part, &info)?;

        if let Some(size) = expected.size {
            let needed = size.saturating_sub(existing);
            let available = (self.options.space_probe)(&spec.dir)
                .map_err(|e| HubError::io("cannot read the free space of", &spec.dir, e))?;
            if available < needed.saturating_add(self.options.space_margin) {
                return Err(HubError::InsufficientSpace {
                    dir: spec.dir.clone(),
                    needed: human_bytes(needed.saturating_add(self.options.space_margin)),
                    available: human_bytes(available),
                });
            }
        }
        write_part_info(&paths.part_info, &info)?;

        on_event(DownloadEvent::Resolved {
            name: name.clone(),
            total: expected.size,
            sha256: expected.sha256.clone(),
            resume_from: existing,
        });

        let mut hashes = Hashes::new(&expected);
        let hashed = hash_existing(
            &mut part,
            &paths.part,
            existing,
            &mut hashes,
            &signals,
            on_event,
        )
        .await?;
        let Some(mut offset) = hashed else {
            let signal = *signals.borrow();
            return self.stop(signal, &paths, part, existing);
        };
        let resumed_from = offset;

        let url = spec.remote.url(&self.config.endpoint);
        let policy = &self.options.retry;
        let mut failures: u32 = 0;
        let mut attempts: u32 = 0;
        loop {
            if expected.size == Some(offset) && offset > 0 {
                break;
            }
            attempts += 1;
            let before = offset;
            let end = self
                .attempt(
                    &url,
                    &paths,
                    &mut part,
                    &mut offset,
                    &mut hashes,
                    &expected,
                    &mut signals,
                    on_event,
                )
                .await?;
            match end {
                AttemptEnd::Complete => break,
                AttemptEnd::Stopped(signal) => {
                    return self.stop(signal, &paths, part, offset);
                }
                AttemptEnd::Retry { reason, status } => {
                    // Progress earns a fresh set of retries: only failures in a row count.
                    if offset > before {
                        failures = 0;
                    }
                    failures += 1;
                    if failures > policy.max_retries {
                        let _ = part.sync_data();
                        return Err(match status {
                            Some(status) if offset == before => HubError::Http {
                                url,
                                status,
                                attempts,
                            },
                            _ => HubError::Interrupted {
                                file: name,
                                attempts,
                                reason,
                            },
                        });
                    }
                    let delay = backoff(policy, failures);
                    tracing::warn!(file = %name, %reason, attempt = failures, "download retry");
                    on_event(DownloadEvent::Retrying {
                        attempt: failures,
                        max_retries: policy.max_retries,
                        delay_ms: delay.as_millis() as u64,
                        reason,
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = wait_for_stop(&mut signals) => {
                            let signal = *signals.borrow();
                            return self.stop(signal, &paths, part, offset);
                        }
                    }
                }
            }
        }

        on_event(DownloadEvent::Verifying);
        finish(
            &paths,
            part,
            offset,
            hashes,
            &expected,
            &name,
            resumed_from,
            on_event,
        )
    }

    /// Bytes of a partial file that may be resumed: 0 when there is none or it belongs to
    /// another file (then it is removed).
    fn usable_partial(
        &self,
        paths: &local::FilePaths,
        part: &File,
        info: &PartInfo,
    ) -> Result<u64, HubError> {
        let len = part
            .metadata()
            .map_err(|e| HubError::io("cannot read", &paths.part, e))?
            .len();
        if len == 0 {
            return Ok(0);
        }
        let recorded: Option<PartInfo> = std::fs::read(&paths.part_info)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let same = recorded.as_ref() == Some(info);
        let fits = info.size.is_none_or(|size| len <= size);
        if same && fits {
            return Ok(len);
        }
        tracing::info!(part = %paths.part.display(), "discarding a partial file of other content");
        part.set_len(0)
            .map_err(|e| HubError::io("cannot empty the stale partial file", &paths.part, e))?;
        Ok(0)
    }

    /// Ends a paused or cancelled download.
    fn stop(
        &self,
        signal: Signal,
        paths: &local::FilePaths,
        part: File,
        offset: u64,
    ) -> Result<DownloadOutcome, HubError> {
        if signal == Signal::Cancel {
            drop(part);
            let _ = std::fs::remove_file(&paths.part);
            let _ = std::fs::remove_file(&paths.part_info);
            return Ok(DownloadOutcome::Cancelled);
        }
        part.sync_data()
            .map_err(|e| HubError::io("cannot flush", &paths.part, e))?;
        Ok(DownloadOutcome::Paused {
            part: paths.part.clone(),
            bytes: offset,
        })
    }

    /// One request and as much of its body as arrives.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        url: &str,
        paths: &local::FilePaths,
        part: &mut File,
        offset: &mut u64,
        hashes: &mut Hashes,
        expected: &Expected,
        signals: &mut watch::Receiver<Signal>,
        on_event: &(dyn Fn(DownloadEvent) + Send + Sync),
    ) -> Result<AttemptEnd, HubError> {
        let policy = &self.options.retry;
        let mut req = self.client.get(url);
        if let Some(token) = self.config.token_for(url) {
            req = req.bearer_auth(token);
        }
        if *offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={}-", *offset));
        }
        let sent = tokio::select! {
            r = tokio::time::timeout(policy.connect_timeout + policy.stall_timeout, req.send()) => r,
            _ = wait_for_stop(signals) => return Ok(AttemptEnd::Stopped(*signals.borrow())),
        };
        let mut resp = match sent {
            Err(_) => return Ok(retry("no answer from the server in time", None)),
            Ok(Err(e)) => return Ok(retry(&transfer_reason(&e), None)),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status().as_u16();
        match status {
            206 => {
                let start = content_range_start(resp.headers());
                if start != Some(*offset) {
                    self.restart(
                        paths,
                        part,
                        offset,
                        hashes,
                        expected,
                        on_event,
                        "the server sent another byte range",
                    )?;
                    return Ok(retry("the server sent another byte range", None));
                }
            }
            200 if *offset > 0 => {
                self.restart(
                    paths,
                    part,
                    offset,
                    hashes,
                    expected,
                    on_event,
                    "the server does not support resuming",
                )?;
            }
            200 => {}
            416 if expected.size == Some(*offset) => return Ok(AttemptEnd::Complete),
            416 => {
                self.restart(
                    paths,
                    part,
                    offset,
                    hashes,
                    expected,
                    on_event,
                    "the partial file is longer than the server's",
                )?;
                return Ok(retry("range not satisfiable", Some(416)));
            }
            s if remote::is_retryable_status(s) => {
                return Ok(retry(&format!("HTTP {s}"), Some(s)));
            }
            s => {
                remote::check_status(s, url, 1)?;
                return Err(HubError::Protocol {
                    url: url.to_owned(),
                    detail: format!("HTTP {s}"),
                });
            }
        }

        let mut rate = RateMeter::new(*offset);
        // The first chunk gets an event at once.
        let mut last_event = Instant::now()
            .checked_sub(self.options.progress_interval)
            .unwrap_or_else(Instant::now);
        loop {
            let chunk = tokio::select! {
                biased;
                _ = wait_for_stop(signals) => return Ok(AttemptEnd::Stopped(*signals.borrow())),
                r = tokio::time::timeout(policy.stall_timeout, resp.chunk()) => r,
            };
            let chunk = match chunk {
                Err(_) => {
                    return Ok(retry(
                        &format!("no data for {} s", policy.stall_timeout.as_secs_f32()),
                        None,
                    ))
                }
                Ok(Err(e)) => return Ok(retry(&transfer_reason(&e), None)),
                Ok(Ok(None)) => {
                    return Ok(match expected.size {
                        Some(size) if *offset < size => retry("the connection closed early", None),
                        _ => AttemptEnd::Complete,
                    })
                }
                Ok(Ok(Some(chunk))) => chunk,
            };
            if let Some(size) = expected.size {
                if *offset + chunk.len() as u64 > size {
                    return Err(HubError::Protocol {
                        url: url.to_owned(),
                        detail: format!("more bytes than the announced {size}"),
                    });
                }
            }
            part.write_all(&chunk)
                .map_err(|e| HubError::io("cannot write", &paths.part, e))?;
            hashes.update(&chunk);
            *offset += chunk.len() as u64;
            let now = Instant::now();
            rate.record(now, *offset);
            let complete = expected.size == Some(*offset);
            if complete || now.duration_since(last_event) >= self.options.progress_interval {
                last_event = now;
                on_event(DownloadEvent::Progress(
                    rate.progress(*offset, expected.size),
                ));
            }
        }
    }

    /// Drops the partial bytes and starts over from byte 0.
    #[allow(clippy::too_many_arguments)]
    fn restart(
        &self,
        paths: &local::FilePaths,
        part: &mut File,
        offset: &mut u64,
        hashes: &mut Hashes,
        expected: &Expected,
        on_event: &(dyn Fn(DownloadEvent) + Send + Sync),
        reason: &str,
    ) -> Result<(), HubError> {
        tracing::warn!(part = %paths.part.display(), reason, "restarting download from byte 0");
        part.set_len(0)
            .map_err(|e| HubError::io("cannot truncate", &paths.part, e))?;
        part.seek(SeekFrom::Start(0))
            .map_err(|e| HubError::io("cannot seek", &paths.part, e))?;
        *offset = 0;
        *hashes = Hashes::new(expected);
        on_event(DownloadEvent::Restarted {
            reason: reason.to_owned(),
        });
        Ok(())
    }
}

/// A short reason for a failed transfer, for people; the full chain goes to the log.
fn transfer_reason(e: &reqwest::Error) -> String {
    tracing::debug!(error = %remote::error_chain(e), "transfer failed");
    if e.is_connect() {
        format!("cannot connect ({})", remote::error_chain(e))
    } else if e.is_timeout() {
        "the server did not answer in time".to_owned()
    } else if e.is_body() || e.is_decode() {
        "the connection dropped".to_owned()
    } else {
        remote::error_chain(e)
    }
}

fn retry(reason: &str, status: Option<u16>) -> AttemptEnd {
    AttemptEnd::Retry {
        reason: reason.to_owned(),
        status,
    }
}

/// Exponential backoff: `initial * 2^(n-1)`, capped.
fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1).min(16))
        .unwrap_or(u32::MAX);
    policy
        .initial_backoff
        .saturating_mul(factor)
        .min(policy.max_backoff)
}

/// Resolves when the control leaves the running state; never when it stays running.
async fn wait_for_stop(signals: &mut watch::Receiver<Signal>) {
    loop {
        if *signals.borrow_and_update() != Signal::Run {
            return;
        }
        if signals.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` answer.
fn content_range_start(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let value = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes")?.trim();
    range.split('-').next()?.trim().parse().ok()
}

/// Hashes the first `len` bytes kept from an earlier attempt and leaves the cursor after them.
/// Returns `None` when paused or cancelled meanwhile.
///
/// Hashing 2 GB takes seconds, so it yields to the runtime between 1 MiB chunks rather than
/// holding a worker thread for the whole file.
async fn hash_existing(
    part: &mut File,
    path: &Path,
    len: u64,
    hashes: &mut Hashes,
    signals: &watch::Receiver<Signal>,
    on_event: &(dyn Fn(DownloadEvent) + Send + Sync),
) -> Result<Option<u64>, HubError> {
    part.seek(SeekFrom::Start(0))
        .map_err(|e| HubError::io("cannot read", path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let mut last_event = Instant::now();
    while done < len {
        if *signals.borrow() != Signal::Run {
            return Ok(None);
        }
        let want = buf.len().min((len - done) as usize);
        let n = part
            .read(&mut buf[..want])
            .map_err(|e| HubError::io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        hashes.update(&buf[..n]);
        done += n as u64;
        if last_event.elapsed() >= Duration::from_millis(100) || done == len {
            last_event = Instant::now();
            on_event(DownloadEvent::CheckingPartial { done, total: len });
        }
        tokio::task::yield_now().await;
    }
    part.seek(SeekFrom::Start(done))
        .map_err(|e| HubError::io("cannot seek", path, e))?;
    Ok(Some(done))
}

/// The git blob id of a file (`git hash-object`), or `None` when it cannot be read.
fn git_blob_sha1(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(&bytes);
    Some(hex(&h.finalize()))
}

/// Verifies the complete partial file and moves it into place, or quarantines it.
#[allow(clippy::too_many_arguments)]
fn finish(
    paths: &local::FilePaths,
    part: File,
    size: u64,
    hashes: Hashes,
    expected: &Expected,
    name: &str,
    resumed_from: u64,
    on_event: &(dyn Fn(DownloadEvent) + Send + Sync),
) -> Result<DownloadOutcome, HubError> {
    part.sync_all()
        .map_err(|e| HubError::io("cannot flush", &paths.part, e))?;
    drop(part);
    let sha256 = hex(&hashes.sha256.finalize());
    let git_sha1 = hashes.git_sha1.map(|h| hex(&h.finalize()));
    let mismatch = if let Some(want) = &expected.sha256 {
        (want != &sha256).then(|| (format!("sha256 {want}"), format!("sha256 {sha256}")))
    } else if let (Some(want), Some(got)) = (&expected.git_sha1, &git_sha1) {
        (want != got).then(|| (format!("git sha1 {want}"), format!("git sha1 {got}")))
    } else {
        None
    };
    let size_mismatch = expected.size.filter(|&s| s != size);
    if mismatch.is_some() || size_mismatch.is_some() {
        let quarantined = local::quarantine(&paths.part, &paths.corrupt)?;
        let _ = std::fs::remove_file(&paths.part_info);
        let (expected, actual) = mismatch.unwrap_or_else(|| {
            (
                format!("{} bytes", expected.size.unwrap_or(0)),
                format!("{size} bytes"),
            )
        });
        return Err(HubError::ChecksumMismatch {
            file: name.to_owned(),
            expected,
            actual,
            quarantined,
        });
    }
    local::write_sidecar(&paths.sidecar, &sha256, name)?;
    std::fs::rename(&paths.part, &paths.file)
        .map_err(|e| HubError::io("cannot move the verified file to", &paths.file, e))?;
    local::sync_dir(paths.file.parent().unwrap_or(Path::new(".")));
    let _ = std::fs::remove_file(&paths.part_info);
    on_event(DownloadEvent::Finished {
        path: paths.file.clone(),
        sha256: sha256.clone(),
        size,
    });
    Ok(DownloadOutcome::Completed {
        path: paths.file.clone(),
        sha256,
        size,
        resumed_from,
    })
}

fn write_part_info(path: &Path, info: &PartInfo) -> Result<(), HubError> {
    let json = serde_json::to_vec_pretty(info).map_err(|e| HubError::Protocol {
        url: String::new(),
        detail: format!("cannot encode the download record: {e}"),
    })?;
    std::fs::write(path, json).map_err(|e| HubError::io("cannot write", path, e))
}

/// Transfer rate over the last few seconds, so the ETA follows the link as it is now.
struct RateMeter {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl RateMeter {
    const WINDOW: Duration = Duration::from_secs(5);

    fn new(offset: u64) -> Self {
        let mut samples = std::collections::VecDeque::new();
        samples.push_back((Instant::now(), offset));
        Self { samples }
    }

    fn record(&mut self, now: Instant, done: u64) {
        self.samples.push_back((now, done));
        while self.samples.len() > 2 && now.duration_since(self.samples[0].0) > Self::WINDOW {
            self.samples.pop_front();
        }
    }

    fn progress(&self, done: u64, total: Option<u64>) -> Progress {
        let (first, last) = (self.samples.front(), self.samples.back());
        let bytes_per_sec = match (first, last) {
            (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => {
                (b1 - b0) as f64 / t1.duration_since(t0).as_secs_f64()
            }
            _ => 0.0,
        };
        let eta_secs = match total {
            Some(total) if bytes_per_sec > 0.0 => {
                Some(total.saturating_sub(done) as f64 / bytes_per_sec)
            }
            _ => None,
        };
        Progress {
            done,
            total,
            bytes_per_sec,
            eta_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..RetryPolicy::default()
        };
        assert_eq!(backoff(&p, 1), Duration::from_millis(100));
        assert_eq!(backoff(&p, 2), Duration::from_millis(200));
        assert_eq!(backoff(&p, 3), Duration::from_millis(400));
        assert_eq!(backoff(&p, 4), Duration::from_millis(500));
        assert_eq!(backoff(&p, 100), Duration::from_millis(500));
    }

    #[test]
    fn content_range_is_parsed() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("content-range", "bytes 100-199/200".parse().unwrap());
        assert_eq!(content_range_start(&h), Some(100));
    }

    #[test]
    fn git_blob_sha1_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        let expected = Expected {
            size: Some(6),
            sha256: None,
            git_sha1: Some(String::new()),
        };
        let mut h = Hashes::new(&expected);
        h.update(b"hello\n");
        assert_eq!(
            hex(&h.git_sha1.unwrap().finalize()),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }

    #[test]
    fn rate_and_eta() {
        let mut m = RateMeter::new(0);
        let t0 = m.samples[0].0;
        m.record(t0 + Duration::from_secs(2), 2000);
        let p = m.progress(2000, Some(10_000));
        assert!((p.bytes_per_sec - 1000.0).abs() < 1.0);
        assert!((p.eta_secs.unwrap() - 8.0).abs() < 0.01);
    }
}
