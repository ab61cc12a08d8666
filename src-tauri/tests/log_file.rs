//! The log file, through the real binary: `serve` writes its log to a dated file in
//! `SMOLLM3_LOG_DIR` as well as to stderr, at info level unless `RUST_LOG` says otherwise;
//! short commands write no file.

use smollm3_bot::model::synth::{self, Preset, Quant};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A fresh folder under the test's temporary directory.
fn fresh_dir(tag: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    synth::write(Preset::Tiny, Quant::Q4KM, 5, &path).unwrap();
    path
}

/// `serve` on 127.0.0.1 with a free port, logging into `logs`; stderr is collected in a file.
fn serve(model: &Path, logs: &Path, data: &Path, rust_log: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smollm3-bot"));
    cmd.arg("serve")
        .arg("--model")
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", "0"])
        .env("SMOLLM3_LOG_DIR", logs)
        .env("SMOLLM3_BOT_DATA_DIR", data)
        .env_remove("RUST_LOG")
        .env_remove("SMOLLM3_API_KEY")
        .env_remove("HOST")
        .env_remove("PORT")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(data.join("stderr.txt")).unwrap());
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    cmd.spawn().expect("the smollm3-bot binary starts")
}

/// The log files in `dir`: (name, text).
fn log_files(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits (bounded) until a log file in `dir` holds `needle`; returns (name, text).
fn wait_for_line(dir: &Path, needle: &str) -> (String, String) {
    let t0 = Instant::now();
    loop {
        if let Some(found) = log_files(dir).into_iter().find(|(_, t)| t.contains(needle)) {
            return found;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no log line with {needle:?} in {}: {:?}",
            dir.display(),
            log_files(dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn serve_writes_a_dated_log_file_and_stderr() {
    let dir = fresh_dir("log-file");
    let model = tiny_model(&dir);
    let logs = dir.join("logs");
    let child = serve(&model, &logs, &dir, None);
    let (name, text) = wait_for_line(&logs, "smollm3-bot started");
    stop(child);

    // smollm3-bot.YYYY-MM-DD.log
    let date = name
        .strip_prefix("smollm3-bot.")
        .and_then(|n| n.strip_suffix(".log"))
        .unwrap_or_else(|| panic!("unexpected log file name {name}"));
    assert!(
        chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok(),
        "{name}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("smollm3-bot started"))
        .unwrap();
    assert!(line.contains("INFO"), "{line}");
    assert!(
        line.contains(&format!("logs={}", logs.display())),
        "the first line says where the logs are: {line}"
    );
    assert!(!text.contains('\x1b'), "no terminal colours in the file");
    let stderr = std::fs::read_to_string(dir.join("stderr.txt")).unwrap();
    assert!(
        stderr.contains("smollm3-bot started"),
        "stderr gets the same lines: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rust_log_sets_the_level_of_the_file() {
    let dir = fresh_dir("log-level");
    let model = tiny_model(&dir);
    let logs = dir.join("logs");
    let child = serve(&model, &logs, &dir, Some("warn"));
    // The file exists once logging is set up; give the server time to log at info if it would.
    let t0 = Instant::now();
    while log_files(&logs).is_empty() && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop(child);
    let files = log_files(&logs);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        !files[0].1.contains("INFO"),
        "RUST_LOG=warn leaves info lines out: {}",
        files[0].1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn short_commands_write_no_log_file() {
    let dir = fresh_dir("log-none");
    let model = tiny_model(&dir);
    let logs = dir.join("logs");
    let status = Command::new(env!("CARGO_BIN_EXE_smollm3-bot"))
        .arg("inspect")
        .arg(&model)
        .env("SMOLLM3_LOG_DIR", &logs)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        !logs.exists(),
        "inspect made a log folder: {:?}",
        log_files(&logs)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
