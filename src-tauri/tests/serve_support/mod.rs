//! Starts the real `smollm3-bot serve` binary on 127.0.0.1 with a free port and a tiny
//! synthetic model, for tests that talk to it over TCP.
#![allow(dead_code)]

use smollm3_bot::model::synth::{self, Preset, Quant};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running server; stopped (SIGTERM, then kill) when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Where the model file lies.
    pub dir: PathBuf,
}

/// A tiny synthetic model in a fresh folder under the test's temporary directory.
pub fn tiny_model(tag: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny-q4.gguf");
    synth::write(Preset::Tiny, Quant::Q4KM, 5, &path).unwrap();
    path
}

impl Server {
    /// Starts `serve` on 127.0.0.1:0 with `extra` arguments and waits for its address. Its
    /// data folder is a fresh one beside the model.
    pub fn start(tag: &str, extra: &[&str]) -> Self {
        let model = tiny_model(tag);
        let data = model.parent().unwrap().join("data");
        Self::start_with(model, &data, extra)
    }

    /// Starts `serve` like [`Server::start`] on the data folder `data`.
    pub fn start_in(tag: &str, data: &std::path::Path, extra: &[&str]) -> Self {
        Self::start_with(tiny_model(tag), data, extra)
    }

    fn start_with(model: PathBuf, data: &std::path::Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_smollm3-bot"))
            .arg("serve")
            .arg("--model")
            .arg(&model)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(extra)
            .env_remove("SMOLLM3_API_KEY")
            .env_remove("HOST")
            .env_remove("PORT")
            .env("SMOLLM3_LOG_DIR", model.parent().unwrap())
            .env("SMOLLM3_BOT_DATA_DIR", data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the smollm3-bot binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("listening on ") {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not report its address within 120 s");
            }
        };
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        Self {
            child,
            base,
            dir: model.parent().unwrap().to_path_buf(),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server in KiB, from /proc (Linux only).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Asks the server to stop (SIGTERM, as Ctrl-C would) and waits up to `limit`.
    pub fn stop(&mut self, limit: Duration) -> Option<ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.stop(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
