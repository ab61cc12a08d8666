//! One process per data folder: a second `serve` (or desktop app) started on the folder of a
//! running one is refused with a message that says where the running one is, and the first
//! one's reply streams on untouched (the second used to mark it interrupted when it opened
//! the database, and every later save of it failed).

mod serve_support;

use serve_support::Server;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A browser of the first server: the session cookie it was given.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookie: String,
}

impl Browser {
    async fn open(base: &str) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let resp = client.get(format!("{base}/")).send().await.unwrap();
        let cookie = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("smollm3_client="))
            .and_then(|v| v.split(';').next())
            .expect("a session cookie")
            .to_string();
        Self {
            client,
            base: base.to_string(),
            cookie,
        }
    }

    async fn get(&self, path: &str) -> String {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.text().await.unwrap()
    }

    async fn post(&self, path: &str, form: &str) -> String {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }
}

fn number_after(html: &str, marker: &str) -> i64 {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in {html}"))
        + marker.len();
    html[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_a_data_folder_is_refused_and_the_first_streams_on() {
    let data = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("shared-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let server = Server::start_in("folder-first", &data, &[]);
    let browser = Browser::open(&server.base).await;
    // Greedy decoding on the synthetic model never ends a turn: the reply streams until
    // stopped.
    browser
        .post("/settings", "temperature=0&max_tokens=6000")
        .await;
    let sent = browser
        .post("/messages", "text=Tell+me+a+long+story.")
        .await;
    let conversation = number_after(&sent, "data-conversation-id=\"");
    let at = sent.find("class=\"msg assistant").expect("the reply");
    let reply = number_after(&sent[at..], "id=\"msg-");
    let t0 = Instant::now();
    loop {
        let html = browser.get(&format!("/messages/{reply}")).await;
        assert!(html.contains("streaming"), "the reply ended early: {html}");
        if html.contains("answer live plain\">") && !html.contains("answer live plain\"></div>") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no text streamed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A second server on the same folder.
    let model = serve_support::tiny_model("folder-second");
    let folder = data.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_smollm3-bot"))
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--model"])
            .arg(&model)
            .env("SMOLLM3_BOT_DATA_DIR", &folder)
            .env("SMOLLM3_LOG_DIR", model.parent().unwrap())
            .env_remove("SMOLLM3_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "the second server did not exit: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "already running with this data folder (pid {})",
            server.pid()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("open {} instead", server.base)),
        "{stderr}"
    );
    assert!(stderr.contains("--data-dir"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "the second server must not start"
    );

    // The first one's reply is still streaming and being saved.
    let before = browser.get(&format!("/messages/{reply}")).await;
    assert!(before.contains("streaming"), "{before}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = browser.get(&format!("/messages/{reply}")).await;
    assert!(after.len() > before.len(), "the reply keeps growing");
    browser
        .post(&format!("/conversations/{conversation}/stop"), "")
        .await;
    let t0 = Instant::now();
    let done = loop {
        let html = browser.get(&format!("/messages/{reply}")).await;
        if !html.contains("streaming") {
            break html;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the stop took");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !done.contains("closed before this reply finished"),
        "the reply was marked interrupted: {done}"
    );
}
