//! The terminal chat driven through a real terminal (tmux) on a synthetic model: a reply
//! streams and ends with its figures, `/no_think` and `/status` work, Ctrl-C stops a long
//! reply and brings the prompt back without leaving, one Ctrl-C at an empty prompt only says
//! how to leave, and `/quit`, Ctrl-C twice and Ctrl-D at an empty prompt end the program
//! cleanly. Pane captures are saved under `target/chat-tmux/`.

use smollm3_bot::model::synth::{self, Preset, Quant};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long any one expected screen may take to appear (the machine may be busy).
const WAIT: Duration = Duration::from_secs(90);

fn tmux_available() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_smollm3-bot"))
}

/// `target/chat-tmux`, beside the binary's profile directory.
fn capture_dir() -> PathBuf {
    let bin = binary();
    let target = bin
        .parent()
        .and_then(Path::parent)
        .expect("the binary lies in target/<profile>/");
    let dir = target.join("chat-tmux");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One synthetic model shared by the tests of this file.
fn model() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        // Under target/, so runs do not pile up in the system's temporary folder.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("smollm3-chat-tmux-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tiny.gguf");
        synth::write(Preset::Tiny, Quant::Q4KM, 3, &p).unwrap();
        p
    })
    .clone()
}

/// What the wrapper shell prints when the chat ends: `[chat exited: CODE]`.
const EXIT_MARK: &str = "[chat exited: ";

/// Quotes one word for a POSIX shell.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// One program running in its own tmux server (a private socket, so nothing else is touched).
///
/// The chat runs under a small shell that waits for it and prints its exit status into the
/// pane, because tmux cannot be trusted to report it: when a pane's terminal closes, tmux
/// (built with libutempter, as Debian's is) runs the utmp helper with `SIGCHLD` at its default
/// action and waits for that helper alone, so a program that exits in that window is never
/// reaped and `#{pane_dead_status}` stays empty for good. On a busy machine the gap between
/// the program closing its terminal and becoming a zombie is wide enough to hit it. The
/// shell's `trap : INT` keeps the shell alive through Ctrl-C (a trapped signal is reset for the
/// program it starts, so the chat sees Ctrl-C exactly as it would from a terminal).
struct Pane {
    socket: String,
    name: &'static str,
}

impl Pane {
    fn start(name: &'static str, args: &[&str]) -> Self {
        let socket = format!("smollm3-chat-test-{}-{name}", std::process::id());
        let mut cmd = vec![
            shell_quote(&binary().display().to_string()),
            "chat".to_string(),
        ];
        cmd.extend(args.iter().map(|s| shell_quote(s)));
        let script = format!("trap : INT; {}; echo \"{EXIT_MARK}$?]\"", cmd.join(" "));
        let status = Command::new("tmux")
            .args(["-L", &socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", "200", "-y", "60", "-s", "chat"])
            // The real environment, minus anything that would turn colour off.
            .env_remove("NO_COLOR")
            .arg(script)
            .args([";", "set-option", "-g", "remain-on-exit", "on"])
            .status()
            .expect("tmux runs");
        assert!(status.success(), "tmux could not start the chat");
        Self { socket, name }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The whole pane, scrollback included.
    fn capture(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", "chat"])
    }

    fn save(&self, step: &str) -> String {
        let text = self.capture();
        let path = capture_dir().join(format!("{}-{step}.txt", self.name));
        std::fs::write(&path, &text).unwrap();
        text
    }

    fn type_line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "chat", "-l", text]);
        self.tmux(&["send-keys", "-t", "chat", "Enter"]);
    }

    fn ctrl_c(&self) {
        self.tmux(&["send-keys", "-t", "chat", "C-c"]);
    }

    /// Whether the program has ended.
    fn dead(&self) -> bool {
        self.exit_status().is_some()
    }

    /// The program's exit status, once the wrapper shell has printed it.
    fn exit_status(&self) -> Option<i32> {
        let text = self.capture();
        let at = text.rfind(EXIT_MARK)?;
        let rest = &text[at + EXIT_MARK.len()..];
        rest[..rest.find(']')?].trim().parse().ok()
    }

    /// Where the chat's threads are waiting, from /proc, for a failure message (the pane's
    /// process is the wrapper shell; the chat is its child).
    fn diagnose(&self) -> String {
        let shell = self.tmux(&["display-message", "-p", "-t", "chat", "#{pane_pid}"]);
        let shell = shell.trim();
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .unwrap_or_default();
        let mut out = format!("wrapper shell {shell}; its children: [{}]", children.trim());
        for pid in children.split_whitespace() {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
            for task in tasks.into_iter().flatten().flatten() {
                let dir = task.path();
                let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                out.push_str(&format!(
                    "\n  thread {} ({}): state {}, waiting in {}",
                    task.file_name().to_string_lossy(),
                    read("comm").trim(),
                    read("stat")
                        .rsplit(')')
                        .next()
                        .and_then(|rest| rest.split_whitespace().next())
                        .unwrap_or("?"),
                    read("wchan").trim(),
                ));
            }
        }
        out
    }

    /// Waits (bounded) until `ok` holds for the pane's text; saves the capture either way.
    fn wait_for(&self, step: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let text = self.capture();
            if ok(&text) {
                return self.save(step);
            }
            if t0.elapsed() > WAIT || self.dead() && !ok(&self.capture()) {
                let text = self.save(step);
                let diag = self.diagnose();
                panic!(
                    "{}: gave up waiting for {what}; the pane shows:\n{text}\n{diag}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_exit(&self, step: &str) -> i32 {
        let t0 = Instant::now();
        loop {
            if let Some(code) = self.exit_status() {
                self.save(step);
                return code;
            }
            if t0.elapsed() > WAIT {
                let text = self.save(step);
                let diag = self.diagnose();
                panic!(
                    "{}: the program did not exit; the pane shows:\n{text}\n{diag}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        // tmux leaves its socket file behind after kill-server.
        let socket_path = self.tmux(&["display-message", "-p", "#{socket_path}"]);
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
        let socket_path = socket_path.trim();
        if !socket_path.is_empty() {
            let _ = std::fs::remove_file(socket_path);
        }
    }
}

/// Lines that are the stats line printed after a reply.
fn stats_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('[') && l.contains(" tokens · prompt ") && l.contains(" tok/s"))
        .collect()
}

/// `(prompt tokens, cached tokens)` from a stats line.
fn prompt_and_cached(stats: &str) -> (usize, usize) {
    let after = stats
        .split(" · prompt ")
        .nth(1)
        .unwrap_or_else(|| panic!("no prompt figure in {stats}"));
    let mut nums = after
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|n| n.parse::<usize>().unwrap());
    (nums.next().unwrap(), nums.next().unwrap())
}

/// The prompt is waiting for input: the last non-empty line is a bare prompt.
fn at_prompt(text: &str) -> bool {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::trim_end)
        == Some(">")
}

/// The tmux sessions run one at a time: two chats at once on two cores make the timing-based
/// waits unreliable.
static TMUX_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn skip_without_tmux() -> bool {
    if tmux_available() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "tmux is required for the terminal chat tests (apt-get install tmux)"
    );
    eprintln!("tmux is not installed; skipping the terminal chat test");
    true
}

#[test]
fn tmux_session_replies_and_commands() {
    let _one_at_a_time = TMUX_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if skip_without_tmux() {
        return;
    }
    let model = model();
    let pane = Pane::start(
        "basic",
        &[
            "--model",
            &model.display().to_string(),
            "--max-tokens",
            "24",
            "--seed",
            "5",
            "--context",
            "2048",
        ],
    );
    pane.wait_for("1-start", "the first prompt", |t| {
        at_prompt(t) && t.contains("/help for commands")
    });

    pane.type_line("Hello, who are you?");
    let text = pane.wait_for("2-reply", "a reply and its stats line", |t| {
        stats_lines(t).len() == 1 && at_prompt(t)
    });
    let stats = stats_lines(&text)[0];
    assert!(stats.contains("prompt "), "{stats}");
    assert!(
        stats.contains("(0 cached)"),
        "a first turn reuses nothing: {stats}"
    );
    let tokens: usize = stats[1..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no token count in {stats}"));
    assert!((1..=24).contains(&tokens), "{stats}");
    // Something was streamed between the typed message and the stats line.
    let after = text.split("Hello, who are you?").nth(1).unwrap();
    let reply: String = after
        .split(stats)
        .next()
        .unwrap()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    assert!(!reply.is_empty(), "no reply text streamed:\n{text}");

    pane.type_line("/no_think");
    pane.wait_for("3-no-think", "the mode change", |t| {
        t.contains("thinking off for the following turns") && at_prompt(t)
    });

    pane.type_line("And now?");
    let text = pane.wait_for("4-second-reply", "a second reply", |t| {
        stats_lines(t).len() == 2 && at_prompt(t)
    });
    let (second_prompt, _) = prompt_and_cached(stats_lines(&text)[1]);

    // A turn in the same mode reuses the whole previous prompt and reply from the cache,
    // which holds only if the reply's token ids were kept with it.
    pane.type_line("Go on.");
    let text = pane.wait_for("4b-third-reply", "a third reply", |t| {
        stats_lines(t).len() == 3 && at_prompt(t)
    });
    let third = stats_lines(&text)[2];
    let (third_prompt, third_cached) = prompt_and_cached(third);
    assert!(
        third_cached >= second_prompt && third_prompt > third_cached,
        "the third turn should reuse at least the {second_prompt} tokens of the second prompt: {third}"
    );

    pane.type_line("/status");
    let text = pane.wait_for("5-status", "the status", |t| {
        t.contains("last reply:") && at_prompt(t)
    });
    assert!(text.contains("model: tiny.gguf"), "{text}");
    assert!(text.contains("thinking: off"), "{text}");
    assert!(text.contains("messages: 6"), "{text}");
    assert!(text.contains("/ 2048 tokens used"), "{text}");
    assert!(text.contains("max tokens 24"), "{text}");
    let used: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("context: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a context line");
    assert!(used > 0, "the context holds the conversation:\n{text}");

    pane.type_line("/bogus");
    pane.wait_for("6-bogus", "an unknown-command message", |t| {
        t.contains("Unknown command /bogus") && at_prompt(t)
    });

    pane.type_line("/clear");
    pane.wait_for("7-clear", "a new conversation", |t| {
        t.contains("new conversation") && at_prompt(t)
    });
    pane.type_line("/status");
    let text = pane.wait_for("8-status-after-clear", "the status after /clear", |t| {
        t.matches("last reply:").count() == 2 && at_prompt(t)
    });
    assert!(text.contains("context: 0 / 2048 tokens used"), "{text}");
    assert!(text.contains("last reply: none yet"), "{text}");

    pane.type_line("/quit");
    assert_eq!(pane.wait_exit("9-quit"), 0, "/quit exits with success");
}

#[test]
fn tmux_session_ctrl_c_stops_a_reply() {
    let _one_at_a_time = TMUX_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if skip_without_tmux() {
        return;
    }
    let model = model();
    // Greedy decoding on this synthetic model never picks the end-of-turn token, so without
    // Ctrl-C the reply would run until the context is full.
    let pane = Pane::start(
        "cancel",
        &[
            "--model",
            &model.display().to_string(),
            "--max-tokens",
            "100000",
            "--temperature",
            "0",
            "--context",
            "65536",
        ],
    );
    pane.wait_for("1-start", "the first prompt", at_prompt);
    pane.type_line("Tell me a very long story.");
    // Wait until the reply is streaming: text after the message, no stats yet.
    let text = pane.wait_for("2-streaming", "streamed text", |t| {
        t.split("Tell me a very long story.")
            .nth(1)
            .is_some_and(|after| after.chars().filter(|c| !c.is_whitespace()).count() > 40)
    });
    assert!(
        stats_lines(&text).is_empty(),
        "the reply ended by itself:\n{text}"
    );
    pane.ctrl_c();
    let text = pane.wait_for("3-cancelled", "the prompt after Ctrl-C", |t| {
        stats_lines(t).len() == 1 && at_prompt(t)
    });
    let stats = stats_lines(&text)[0];
    assert!(stats.ends_with("finish: cancelled]"), "{stats}");
    assert!(
        !pane.dead(),
        "Ctrl-C during a reply must not end the program"
    );

    // The conversation goes on: the stopped reply is part of it.
    pane.type_line("/status");
    let text = pane.wait_for("4-status", "the status", |t| {
        t.contains("last reply:") && at_prompt(t)
    });
    assert!(text.contains("messages: 2"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("last reply: [") && l.contains("finish: cancelled")),
        "{text}"
    );

    // Ctrl-C with text on the line clears it; at an empty prompt it says how to leave, and
    // only a second one right after leaves: a late Ctrl-C meant for a reply that had already
    // ended must not end the session.
    pane.tmux(&["send-keys", "-t", "chat", "-l", "half a thought"]);
    pane.wait_for("5-typed", "the typed text", |t| {
        t.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.starts_with("> half a thought"))
    });
    pane.ctrl_c();
    pane.wait_for("6-cleared", "the cleared line", at_prompt);
    assert!(
        !pane.dead(),
        "Ctrl-C on a typed line must not end the program"
    );
    pane.ctrl_c();
    pane.wait_for("7-hint", "the hint after one Ctrl-C", |t| {
        t.contains("Ctrl-C again leaves") && at_prompt(t)
    });
    // Longer than the window in which a second press leaves.
    std::thread::sleep(Duration::from_millis(2000));
    assert!(
        !pane.dead(),
        "one Ctrl-C at an empty prompt must not end the program"
    );
    pane.ctrl_c();
    pane.ctrl_c();
    assert_eq!(
        pane.wait_exit("8-exit"),
        0,
        "Ctrl-C twice at an empty prompt exits cleanly"
    );
}

#[test]
fn tmux_session_ctrl_d_leaves() {
    let _one_at_a_time = TMUX_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if skip_without_tmux() {
        return;
    }
    let model = model();
    let pane = Pane::start("ctrl-d", &["--model", &model.display().to_string()]);
    pane.wait_for("1-start", "the first prompt", at_prompt);
    pane.tmux(&["send-keys", "-t", "chat", "C-d"]);
    assert_eq!(
        pane.wait_exit("2-exit"),
        0,
        "Ctrl-D at an empty prompt exits cleanly"
    );
}

/// Runs the chat with stdin and stdout piped (no terminal), returning (exit code, stdout, stderr).
fn piped(args: &[&str], input: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(binary())
        .arg("chat")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env_remove("NO_COLOR")
        .spawn()
        .expect("the binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn piped_output_is_plain_and_errors_do_not_end_the_conversation() {
    let model = model();
    // The think-mode prompt alone is longer than 300 tokens; the no-think one is not.
    let (code, out, err) = piped(
        &[
            "--model",
            &model.display().to_string(),
            "--context",
            "300",
            "--max-tokens",
            "8",
            "--seed",
            "1",
        ],
        "Hello\n/status\n/no_think\nHello\n/status\n",
    );
    std::fs::write(capture_dir().join("piped-stdout.txt"), &out).unwrap();
    assert_eq!(code, 0, "end of input leaves cleanly; stderr: {err}");
    assert!(
        !out.contains('\x1b'),
        "no ANSI styles when stdout is not a terminal:\n{out}"
    );
    assert!(
        out.contains("error: the conversation is too long"),
        "a full context is reported:\n{out}"
    );
    assert!(
        out.contains("messages: 0"),
        "the failed turn is not kept:\n{out}"
    );
    assert_eq!(stats_lines(&out).len(), 1, "the next turn runs:\n{out}");
    assert!(out.contains("messages: 2"), "{out}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_missing_model_is_a_clear_error() {
    let (code, out, err) = piped(&["--model", "/nonexistent/model.gguf"], "");
    assert_eq!(code, 1, "stdout: {out}");
    assert!(
        err.contains("error: cannot load /nonexistent/model.gguf"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
