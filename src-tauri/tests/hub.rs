//! The model manager against a mock hub: downloads that survive drops, stalls, kills and
//! servers that ignore `Range`, and never leave an unverified file under its final name.

mod support;

use rand::{rngs::StdRng, Rng, SeedableRng};
use sha2::{Digest, Sha256};
use smollm3_bot::hub::{
    self, Credential, DownloadControl, DownloadEvent, DownloadOptions, DownloadOutcome,
    DownloadSpec, Downloader, HubConfig, HubError, RemoteFile, RetryPolicy,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::content;
use support::mock_hub::{Fault, MockHub};

const REPO: &str = "ggml-org/SmolLM3-3B-GGUF";
const FILE: &str = "SmolLM3-Q4_K_M.gguf";

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fast_options() -> DownloadOptions {
    DownloadOptions {
        retry: RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            stall_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_secs(5),
            unreachable_after: Duration::from_secs(60),
        },
        space_margin: 0,
        ..DownloadOptions::default()
    }
}

fn downloader(hub: &MockHub, options: DownloadOptions) -> Downloader {
    let config = HubConfig {
        endpoint: hub.url(),
        ..HubConfig::default()
    };
    Downloader::new(config, options).unwrap()
}

fn spec(dir: &Path, file: &str) -> DownloadSpec {
    DownloadSpec {
        remote: RemoteFile::new(REPO, file, "main").unwrap(),
        dir: dir.to_path_buf(),
        sha256: None,
        size: None,
    }
}

/// Runs one download and collects its events.
async fn pull(
    d: &Downloader,
    spec: &DownloadSpec,
    control: &DownloadControl,
) -> (Result<DownloadOutcome, HubError>, Vec<DownloadEvent>) {
    let events = Mutex::new(Vec::new());
    let result = d
        .download(spec, control, &|e| events.lock().unwrap().push(e))
        .await;
    (result, events.into_inner().unwrap())
}

/// A hub with one LFS file of `len` bytes; returns the hub, the bytes and their sha256.
fn hub_with(len: usize) -> (MockHub, Vec<u8>, String) {
    let hub = MockHub::start();
    let bytes = content(len, len as u64);
    let sha = hub.add_lfs_file(REPO, "main", FILE, bytes.clone());
    (hub, bytes, sha)
}

fn assert_verified(dir: &Path, bytes: &[u8]) {
    let file = dir.join(FILE);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bytes,
        "final file has the published bytes"
    );
    assert!(
        !dir.join(format!("{FILE}.part")).exists(),
        "no partial left"
    );
    assert!(
        !dir.join(format!("{FILE}.part.json")).exists(),
        "no download record left"
    );
    let listed = hub::list(dir).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sha256.as_deref(), Some(sha256(bytes).as_str()));
}

#[tokio::test]
async fn happy_path_uses_the_lfs_redirect_and_verifies() {
    let (hub, bytes, sha) = hub_with(300_000);
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, fast_options());
    let (result, events) = pull(&d, &spec(dir.path(), FILE), &DownloadControl::new()).await;
    match result.unwrap() {
        DownloadOutcome::Completed {
            sha256,
            size,
            resumed_from,
            ..
        } => {
            assert_eq!(
                (sha256.as_str(), size, resumed_from),
                (sha.as_str(), 300_000, 0)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_verified(dir.path(), &bytes);

    assert!(
        matches!(&events[0], DownloadEvent::Resolved { total: Some(300_000), sha256: Some(s), .. } if *s == sha)
    );
    let last_progress = events.iter().rev().find_map(|e| match e {
        DownloadEvent::Progress(p) => Some(p.clone()),
        _ => None,
    });
    assert_eq!(
        last_progress.map(|p| (p.done, p.total)),
        Some((300_000, Some(300_000)))
    );
    assert!(matches!(
        events.last(),
        Some(DownloadEvent::Finished { .. })
    ));
    let verifying = events
        .iter()
        .position(|e| *e == DownloadEvent::Verifying)
        .unwrap();
    assert_eq!(
        verifying,
        events.len() - 2,
        "verification comes just before the file is final"
    );

    let reqs = hub.requests();
    assert_eq!(reqs[0].method, "HEAD");
    assert_eq!(reqs[0].path, format!("/{REPO}/resolve/main/{FILE}"));
    let content = hub.content_requests();
    assert_eq!(content.len(), 1);
    assert!(
        content[0].path.starts_with("/cdn/"),
        "followed the redirect to the CDN"
    );
    assert_eq!(content[0].range, None);

    // A second pull finds it in place and transfers nothing.
    let (again, _) = pull(&d, &spec(dir.path(), FILE), &DownloadControl::new()).await;
    assert!(matches!(again.unwrap(), DownloadOutcome::Completed { .. }));
    assert_eq!(hub.content_requests().len(), 1);
}

#[tokio::test]
async fn drops_at_several_offsets_resume_with_the_right_range() {
    let (hub, bytes, sha) = hub_with(400_000);
    let offsets = [1, 50_000, 123_457, 399_999];
    for at in offsets {
        hub.fail_next(Fault::DropAt(at));
    }
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, fast_options());
    let (result, events) = pull(&d, &spec(dir.path(), FILE), &DownloadControl::new()).await;
    assert!(matches!(result.unwrap(), DownloadOutcome::Completed { sha256, .. } if sha256 == sha));
    assert_verified(dir.path(), &bytes);

    let starts: Vec<Option<u64>> = hub
        .content_requests()
        .iter()
        .map(|r| r.range_start())
        .collect();
    assert_eq!(
        starts,
        [None, Some(1), Some(50_000), Some(123_457), Some(399_999)]
    );
    let retries = events
        .iter()
        .filter(|e| matches!(e, DownloadEvent::Retrying { .. }))
        .count();
    assert_eq!(retries, offsets.len());
}

#[tokio::test]
async fn a_corrupted_byte_is_caught_quarantined_and_never_listed() {
    let (hub, _bytes, sha) = hub_with(200_000);
    hub.fail_always(Fault::CorruptByte(77_777));
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, fast_options());
    let (result, _) = pull(&d, &spec(dir.path(), FILE), &DownloadControl::new()).await;
    let err = result.unwrap_err();
    match &err {
        HubError::ChecksumMismatch {
            expected,
            quarantined,
            ..
        } => {
            assert!(expected.contains(&sha));
            assert_eq!(*quarantined, dir.path().join(format!("{FILE}.corrupt")));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(!dir.path().join(FILE).exists());
    assert!(dir.path().join(format!("{FILE}.corrupt")).exists());
    assert!(hub::list(dir.path()).unwrap().is_empty());
    assert!(hub::partials(dir.path()).unwrap().is_empty());

    // Once the server is healthy again, the next pull succeeds from scratch.
    hub.clear_faults();
    let (result, _) = pull(&d, &spec(dir.path(), FILE), &DownloadControl::new()).await;
    assert!(matches!(
        result.unwrap(),
        DownloadOutcome::Completed {
            resumed_from: 0,
            ..
        }
    ));
}

#[tokio::test]
async fn files_kept_in_git_are_checked_against_their_blob_sha1() {
    let hub = MockHub::start();
    let tokenizer = br#"{"version":"1.0","model":{"type":"BPE"}}"#.repeat(500);
    hub.add_git_file(
        "HuggingFaceTB/SmolLM3-3B",
        "main",
        "tokenizer.json",
        tokenizer.clone(),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, fast_options());
    let mut s = spec(dir.path(), "tokenizer.json");
    s.remote = RemoteFile::new("HuggingFaceTB/SmolLM3-3B", "tokenizer.json", "main").unwrap();
    hub.fail_next(Fault::CorruptByte(10));
    let (result, _) = pull(&d, &s, &DownloadControl::new()).await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, HubError::ChecksumMismatch { ref expected, .. } if expected.starts_with("git sha1")),
        "{err}"
    );
    let (result, _) = pull(&d, &s, &DownloadControl::new()).await;
    result.unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("tokenizer.json")).unwrap(),
        tokenizer
    );
    // Already in place: recognised by its blob id, not fetched again.
    let fetched = hub.content_requests().len();
    let (result, _) = pull(&d, &s, &DownloadControl::new()).await;
    result.unwrap();
    assert_eq!(hub.content_requests().len(), fetched);
}

#[tokio::test]
async fn two_downloads_of_one_file_do_not_interleave() {
    let (hub, bytes, _) = hub_with(200_000);
    hub.throttle(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, fast_options());
    let s = spec(dir.path(), FILE);
    let (first, second) = (DownloadControl::new(), DownloadControl::new());
    let (a, b) = tokio::join!(pull(&d, &s, &first), pull(&d, &s, &second));
    let results = [a.0, b.0];
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(HubError::AlreadyRunning { .. })))
        .count();
    let done = results
        .iter()
        .filter(|r| matches!(r, Ok(DownloadOutcome::Completed { .. })))
        .count();
    assert_eq!((busy, done), (1, 1), "{results:?}");
    assert_verified(dir.path(), &bytes);
}

#[tokio::test]
async fn unauthorized_explains_how_to_set_hf_token() {
    let (hub, _, _) = hub_with(10_000);
    hub.require_token("hf_secret");
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, fast_options());
    let (result, _) = pull(&d, &spec(dir.path(), FILE), &DownloadControl::new()).await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, HubError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("HF_TOKEN"), "{err}");
    assert_eq!(hub.requests().len(), 1, "no retries on 401");

    // A token bound to the hub (HTTPS) is never sent to this plain-HTTP server, even when it
    // would open the file: the request stays unauthorized.
    let config = HubConfig {
        endpoint: hub.url(),
        credential: Credential::for_hub("hf_secret", "https://huggingface.co"),
        ..HubConfig::default()
    };
    let d = Downloader::new(config, fast_options()).unwrap();
    let (result, _) = pull(&d, &spec(dir.path(), FILE), &DownloadControl::new()).await;
    assert!(
        matches!(result, Err(HubError::Unauthorized { .. })),
        "{result:?}"
    );
    assert!(hub.requests().iter().all(|r| r.authorization.is_none()));
    assert!(!dir.path().join(FILE).exists());
}

#[tokio::test]
async fn missing_file_is_a_clear_404() {
    let (hub, _, _) = hub_with(1000);
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, fast_options());
    let (result, _) = pull(
        &d,
        &spec(dir.path(), "SmolLM3-Q2_K.gguf"),
        &DownloadControl::new(),
    )
    .await;
    let err = result.unwrap_err();
    assert!(matches!(err, HubError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("404"), "{err}");
    assert_eq!(hub.requests().len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    let (hub, bytes, _) = hub_with(50_000);
    hub.fail_always(Fault::Status(500));
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, fast_options());
    let (result, _) = pull(&d, &spec(dir.path(), FILE), &DownloadControl::new()).await;
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            HubError::Http {
                status: 500,
                attempts: 4,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(hub.requests().len(), 4, "one request and three retries");

    // Transient 500s on the transfer itself are ridden out.
    hub.clear_faults();
    hub.fail_next(Fault::Status(500));
    hub.fail_next(Fault::Status(503));
    let (result, events) = pull(&d, &spec(dir.path(), FILE), &DownloadControl::new()).await;
    result.unwrap();
    assert_verified(dir.path(), &bytes);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, DownloadEvent::Retrying { .. }))
            .count(),
        2
    );
}

#[tokio::test]
async fn a_stalled_transfer_is_retried_without_waiting_for_the_server() {
    let (hub, bytes, _) = hub_with(200_000);
    hub.fail_next(Fault::StallAt(100_000, Duration::from_secs(5)));
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, fast_options());
    let started = Instant::now();
    let (result, events) = pull(&d, &spec(dir.path(), FILE), &DownloadControl::new()).await;
    result.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_verified(dir.path(), &bytes);
    let starts: Vec<_> = hub
        .content_requests()
        .iter()
        .map(|r| r.range_start())
        .collect();
    assert_eq!(starts, [None, Some(100_000)]);
    assert!(events.iter().any(
        |e| matches!(e, DownloadEvent::Retrying { reason, .. } if reason.contains("no data"))
    ));
}

#[tokio::test]
async fn a_server_ignoring_range_makes_it_start_over_safely() {
    let (hub, bytes, _) = hub_with(300_000);
    hub.fail_next(Fault::DropAt(120_000));
    hub.fail_always(Fault::IgnoreRange);
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, fast_options());
    let (result, events) = pull(&d, &spec(dir.path(), FILE), &DownloadControl::new()).await;
    assert!(matches!(
        result.unwrap(),
        DownloadOutcome::Completed {
            resumed_from: 0,
            ..
        }
    ));
    assert_verified(dir.path(), &bytes);
    let starts: Vec<_> = hub
        .content_requests()
        .iter()
        .map(|r| r.range_start())
        .collect();
    assert_eq!(
        starts,
        [None, Some(120_000)],
        "asked to resume, got the whole file"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, DownloadEvent::Restarted { .. })));
}

#[tokio::test]
async fn pause_keeps_the_partial_file_and_the_next_run_resumes_it() {
    let (hub, bytes, _) = hub_with(400_000);
    hub.throttle(400_000);
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, fast_options());
    let control = DownloadControl::new();
    let pauser = control.clone();
    let result = d
        .download(&spec(dir.path(), FILE), &control, &move |e| {
            if matches!(e, DownloadEvent::Progress(ref p) if p.done >= 60_000) {
                pauser.pause();
            }
        })
        .await;
    let kept = match result.unwrap() {
        DownloadOutcome::Paused { part, bytes } => {
            assert_eq!(std::fs::metadata(&part).unwrap().len(), bytes);
            bytes
        }
        other => panic!("unexpected {other:?}"),
    };
    assert!((60_000..400_000).contains(&kept), "kept {kept}");
    assert!(
        hub::list(dir.path()).unwrap().is_empty(),
        "a partial file is never listed"
    );
    let partials = hub::partials(dir.path()).unwrap();
    assert_eq!(
        (partials[0].bytes, partials[0].total),
        (kept, Some(400_000))
    );

    let (result, events) = pull(&d, &spec(dir.path(), FILE), &DownloadControl::new()).await;
    assert!(
        matches!(result.unwrap(), DownloadOutcome::Completed { resumed_from, .. } if resumed_from == kept)
    );
    assert_verified(dir.path(), &bytes);
    assert_eq!(
        hub.content_requests().last().unwrap().range_start(),
        Some(kept)
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, DownloadEvent::CheckingPartial { done, .. } if *done == kept)));
}

#[tokio::test]
async fn cancel_removes_the_partial_file() {
    let (hub, _, _) = hub_with(400_000);
    hub.throttle(400_000);
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, fast_options());
    let control = DownloadControl::new();
    let canceller = control.clone();
    let result = d
        .download(&spec(dir.path(), FILE), &control, &move |e| {
            if matches!(e, DownloadEvent::Progress(ref p) if p.done >= 40_000) {
                canceller.cancel();
            }
        })
        .await;
    assert_eq!(result.unwrap(), DownloadOutcome::Cancelled);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_partial_file_of_unknown_origin_is_not_trusted() {
    let (hub, bytes, _) = hub_with(100_000);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{FILE}.part")), vec![0u8; 5000]).unwrap();
    let d = downloader(&hub, fast_options());
    let (result, _) = pull(&d, &spec(dir.path(), FILE), &DownloadControl::new()).await;
    assert!(matches!(
        result.unwrap(),
        DownloadOutcome::Completed {
            resumed_from: 0,
            ..
        }
    ));
    assert_verified(dir.path(), &bytes);
    assert_eq!(hub.content_requests()[0].range, None);
}

#[tokio::test]
async fn a_pinned_checksum_is_enforced() {
    let (hub, _, sha) = hub_with(1000);
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, fast_options());
    let mut s = spec(dir.path(), FILE);
    s.sha256 = Some("0".repeat(64));
    let (result, _) = pull(&d, &s, &DownloadControl::new()).await;
    assert!(matches!(result.unwrap_err(), HubError::RemoteChanged { remote, .. } if remote == sha));
    s.sha256 = Some("xyz".into());
    let (result, _) = pull(&d, &s, &DownloadControl::new()).await;
    assert!(matches!(result.unwrap_err(), HubError::InvalidInput(_)));
    assert!(hub.content_requests().is_empty());
}

/// Leaves a partial download of `kept` bytes, as a dropped connection with no retries would.
async fn leave_partial(hub: &MockHub, dir: &Path, kept: u64) {
    hub.fail_next(Fault::DropAt(kept));
    let mut options = fast_options();
    options.retry.max_retries = 0;
    let (result, _) = pull(
        &downloader(hub, options),
        &spec(dir, FILE),
        &DownloadControl::new(),
    )
    .await;
    assert!(matches!(result.unwrap_err(), HubError::Interrupted { .. }));
    assert_eq!(
        std::fs::metadata(dir.join(format!("{FILE}.part")))
            .unwrap()
            .len(),
        kept
    );
}

#[tokio::test]
async fn too_little_free_space_is_refused_before_starting_and_the_partial_kept() {
    let (hub, bytes, _) = hub_with(200_000);
    let dir = tempfile::tempdir().unwrap();
    leave_partial(&hub, dir.path(), 80_000).await;
    let requests_before = hub.requests().len();

    let mut options = fast_options();
    // Enough for the 120 kB still missing would be fine; 100 kB is not.
    options.space_probe = Arc::new(|_: &Path| Ok(100_000));
    let (result, _) = pull(
        &downloader(&hub, options),
        &spec(dir.path(), FILE),
        &DownloadControl::new(),
    )
    .await;
    let err = result.unwrap_err();
    assert!(matches!(err, HubError::InsufficientSpace { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("not enough free disk space") && message.contains("120.00 kB"),
        "{message}"
    );
    assert_eq!(
        hub.requests().len(),
        requests_before + 1,
        "only the HEAD was sent"
    );
    assert_eq!(
        std::fs::metadata(dir.path().join(format!("{FILE}.part")))
            .unwrap()
            .len(),
        80_000
    );

    let mut options = fast_options();
    options.space_probe = Arc::new(|_: &Path| Ok(120_000));
    let (result, _) = pull(
        &downloader(&hub, options),
        &spec(dir.path(), FILE),
        &DownloadControl::new(),
    )
    .await;
    assert!(matches!(
        result.unwrap(),
        DownloadOutcome::Completed {
            resumed_from: 80_000,
            ..
        }
    ));
    assert_verified(dir.path(), &bytes);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_full_disk_while_writing_is_a_clear_error_and_the_partial_is_kept() {
    let (hub, _, _) = hub_with(100_000);
    let dir = tempfile::tempdir().unwrap();
    leave_partial(&hub, dir.path(), 0).await;
    // Writes to /dev/full fail with ENOSPC: the kernel's own disk-full error, no root needed.
    let part = dir.path().join(format!("{FILE}.part"));
    std::fs::remove_file(&part).unwrap();
    std::os::unix::fs::symlink("/dev/full", &part).unwrap();
    let (result, _) = pull(
        &downloader(&hub, fast_options()),
        &spec(dir.path(), FILE),
        &DownloadControl::new(),
    )
    .await;
    let err = result.unwrap_err();
    assert!(matches!(err, HubError::DiskFull { .. }), "{err:?}");
    assert!(
        err.to_string().contains("disk is full") && err.to_string().contains("kept"),
        "{err}"
    );
    assert!(
        std::fs::symlink_metadata(&part).is_ok(),
        "the partial file is kept"
    );
    assert!(
        dir.path().join(format!("{FILE}.part.json")).exists(),
        "and so is its record"
    );
    assert!(!dir.path().join(FILE).exists());
}

#[tokio::test]
async fn no_network_is_reported_as_such() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = HubConfig {
        endpoint: format!("http://127.0.0.1:{port}"),
        ..HubConfig::default()
    };
    let d = Downloader::new(config, fast_options()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (result, _) = pull(&d, &spec(dir.path(), FILE), &DownloadControl::new()).await;
    let err = result.unwrap_err();
    assert!(matches!(err, HubError::Network { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot reach 127.0.0.1"), "{err}");
}

// ---- The command line, as a separate process that can be killed. ----

fn cli(hub: &MockHub, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smollm3-bot"));
    cmd.args([
        "models",
        "pull",
        "--repo",
        REPO,
        "--file",
        FILE,
        "--endpoint",
    ])
    .arg(hub.url())
    .arg("--dir")
    .arg(dir)
    .env_remove("HF_TOKEN")
    .env_remove("HF_ENDPOINT")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

fn part_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(format!("{FILE}.part")))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Kills the CLI once its partial file holds at least `min` bytes (bounded wait).
fn run_and_kill_after(hub: &MockHub, dir: &Path, min: u64) -> u64 {
    let mut child = cli(hub, dir).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while part_len(dir) < min && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    part_len(dir)
}

#[test]
fn cli_killed_mid_download_resumes_on_the_next_run() {
    let (hub, bytes, sha) = hub_with(1_000_000);
    hub.throttle(2_000_000);
    let dir = tempfile::tempdir().unwrap();
    let kept = run_and_kill_after(&hub, dir.path(), 200_000);
    assert!((200_000..1_000_000).contains(&kept), "kept {kept}");
    assert!(
        !dir.path().join(FILE).exists(),
        "nothing under the final name"
    );

    let out = cli(&hub, dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&sha));
    assert_verified(dir.path(), &bytes);
    let last = hub
        .content_requests()
        .last()
        .unwrap()
        .range_start()
        .unwrap();
    assert!(
        last >= kept.min(200_000),
        "resumed from {last}, {kept} were kept"
    );
}

#[test]
fn cli_survives_twenty_random_kills() {
    let (hub, bytes, _) = hub_with(160_000);
    hub.throttle(1_600_000);
    let dir = tempfile::tempdir().unwrap();
    let final_path = dir.path().join(FILE);
    let mut rng = StdRng::seed_from_u64(7);
    let part = dir.path().join(format!("{FILE}.part"));
    for round in 0..20 {
        let mut child = cli(&hub, dir.path()).spawn().unwrap();
        // Every other round is killed once bytes arrive (a loaded machine may take longer
        // than any fixed delay to start the program), the others at any moment.
        if round % 2 == 1 {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let arrived = || std::fs::metadata(&part).is_ok_and(|m| m.len() > 0);
            while !arrived() && !final_path.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..150)));
        let _ = child.kill();
        child.wait().unwrap();
        // Whatever the kill point, a file under its final name is the verified one.
        if final_path.exists() {
            assert_eq!(std::fs::read(&final_path).unwrap(), bytes, "round {round}");
        }
    }
    let out = cli(&hub, dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_verified(dir.path(), &bytes);
    let resumed = hub
        .content_requests()
        .iter()
        .filter(|r| r.range_start().is_some())
        .count();
    assert!(resumed > 0, "at least one run resumed a partial file");
}

#[test]
fn cli_failures_exit_non_zero_with_a_message() {
    let (hub, _, _) = hub_with(1000);
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&hub, dir.path())
        .args(["--sha256", &"0".repeat(64)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("changed on the hub"));

    hub.require_token("hf_x");
    let out = cli(&hub, dir.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HF_TOKEN"), "{stderr}");

    // HF_TOKEN belongs to the hub (HTTPS); a mirror named with --endpoint over plain HTTP
    // never sees it.
    let mut cmd = cli(&hub, dir.path());
    cmd.env("HF_TOKEN", "hf_x");
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HF_TOKEN"));
    assert!(hub.requests().iter().all(|r| r.authorization.is_none()));

    let (hub, _, _) = hub_with(1000);
    let out = cli(&hub, dir.path())
        .args(["--revision", "v9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    assert!(hub::list(dir.path()).unwrap().is_empty());
}

#[test]
fn cli_lists_verifies_and_removes() {
    let (hub, _, sha) = hub_with(5000);
    let dir = tempfile::tempdir().unwrap();
    assert!(cli(&hub, dir.path()).status().unwrap().success());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_smollm3-bot"))
            .arg("models")
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    // The folder can also come from the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_smollm3-bot"))
        .args(["models", "list"])
        .env("SMOLLM3_MODELS_DIR", dir.path())
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains(FILE), "{listing}");
    let out = run(&["list"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains(FILE) && listing.contains(&sha[..12]),
        "{listing}"
    );
    assert!(
        listing.contains("q4_k_m"),
        "the catalogue is shown: {listing}"
    );
    assert!(run(&["verify"]).status.success());

    // Bytes changed behind our back: verify fails and quarantines.
    let path: PathBuf = dir.path().join(FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let out = run(&["verify", FILE]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"));
    assert!(hub::list(dir.path()).unwrap().is_empty());

    // HF_ENDPOINT names the hub when --endpoint is not given.
    let out = Command::new(env!("CARGO_BIN_EXE_smollm3-bot"))
        .args(["models", "pull", "--repo", REPO, "--file", FILE, "--dir"])
        .arg(dir.path())
        .env("HF_ENDPOINT", hub.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run(&["rm", FILE]).status.success());
    assert!(hub::list(dir.path()).unwrap().is_empty());
    assert!(!run(&["rm", FILE]).status.success());
}

#[test]
fn cli_first_run_pulls_the_recommended_model_and_its_tokenizer() {
    let hub = MockHub::start();
    let model = content(70_000, 3);
    let tokenizer = br#"{"model":{"type":"BPE"}}"#.to_vec();
    hub.add_lfs_file(REPO, "main", FILE, model.clone());
    hub.add_git_file(
        "HuggingFaceTB/SmolLM3-3B",
        "main",
        "tokenizer.json",
        tokenizer.clone(),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smollm3-bot"))
        .args(["models", "pull", "--endpoint"])
        .arg(hub.url())
        .arg("--dir")
        .arg(dir.path())
        .env_remove("HF_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_verified(dir.path(), &model);
    assert_eq!(
        std::fs::read(dir.path().join("tokenizer.json")).unwrap(),
        tokenizer
    );
}

#[test]
fn cli_goes_through_the_proxy_from_the_environment() {
    let (hub, bytes, _) = hub_with(20_000);
    let dir = tempfile::tempdir().unwrap();
    // The hub's name does not resolve: only the proxy can reach it.
    let out = Command::new(env!("CARGO_BIN_EXE_smollm3-bot"))
        .args(["models", "pull", "--repo", REPO, "--file", FILE])
        .args(["--endpoint", "http://hub.invalid", "--dir"])
        .arg(dir.path())
        .env("HTTP_PROXY", hub.url())
        .env("http_proxy", hub.url())
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("HF_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_verified(dir.path(), &bytes);
    assert_eq!(hub.content_requests().len(), 1);
}

#[tokio::test]
async fn catalogue_values_not_pinned_come_from_the_hub() {
    let (hub, bytes, sha) = hub_with(4321);
    let d = downloader(&hub, fast_options());
    let entry = hub::default_entry();
    let resolved = hub::catalogue::resolve(&d, &entry.model).await.unwrap();
    assert_eq!(resolved.size, Some(bytes.len() as u64));
    assert_eq!(resolved.sha256, Some(sha));
}
