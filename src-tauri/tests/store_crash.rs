//! A reply that is streaming when the process is killed keeps its text: a child process
//! streams deltas through `ReplyWriter` and is SIGKILLed mid-reply; reopening the database
//! finds all but the last flush interval of the text, marked interrupted.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use smollm3_bot::store::{MessageStatus, NewConversation, Role, Store, FLUSH_INTERVAL};

/// Set in the child's environment to the database path; selects child mode.
const CHILD_ENV: &str = "SMOLLM3_BOT_CRASH_CHILD_DB";
/// Time between deltas in the child.
const DELTA_PERIOD: Duration = Duration::from_millis(10);

fn delta(i: usize) -> String {
    format!("d{i:05};")
}

/// The child side: runs only when the parent launches this binary with `CHILD_ENV` set.
/// It prints `reply <id>` once the reply exists, then `pushed <i>` after each delta has gone
/// through the writer, and streams until killed (or gives up after a minute).
#[test]
fn crash_child_process() {
    let Ok(db) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(Path::new(&db)).expect("child opens store");
    let conversation = store
        .create_conversation(&NewConversation::new("crash", true, ""))
        .unwrap()
        .id;
    let question = store
        .add_message(conversation, None, Role::User, "count for me")
        .unwrap();
    let reply = store.begin_reply(conversation, question, "").unwrap();
    let mut writer = store.reply_writer(reply);
    let mut out = std::io::stdout().lock();
    writeln!(out, "reply {reply}").unwrap();
    out.flush().unwrap();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(60) {
        writer.push_reasoning("r").unwrap();
        writer.push_answer(&delta(i)).unwrap();
        writeln!(out, "pushed {i}").unwrap();
        out.flush().unwrap();
        i += 1;
        std::thread::sleep(DELTA_PERIOD);
    }
    // Never reached in the test: the parent kills the child well before.
    std::process::exit(3);
}

#[test]
fn sigkill_mid_reply_keeps_partial_text_as_interrupted() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.sqlite3");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");

    // Read the child's progress on a thread so the wait below stays bounded.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Let it stream for about three flush intervals' worth of deltas (and at least 1.5 s).
    let target =
        (FLUSH_INTERVAL.as_millis() as usize * 3 / DELTA_PERIOD.as_millis() as usize).max(150);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reply_id: Option<i64> = None;
    let mut last_pushed: Option<usize> = None;
    while last_pushed.is_none_or(|n| n < target) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                panic!("child stopped reporting ({e:?}); last pushed {last_pushed:?}");
            }
        };
        // The test harness may print its own text before ours on the same line.
        if let Some((_, id)) = line.split_once("reply ") {
            reply_id = Some(id.trim().parse().unwrap());
        } else if let Some((_, i)) = line.split_once("pushed ") {
            last_pushed = Some(i.trim().parse().unwrap());
        }
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "child was killed, not finished: {status:?}"
    );
    // Deltas the child pushed after our last read only make the stored text longer.
    let pushed = last_pushed.unwrap() + 1;

    let store = Store::open(&db).expect("reopen after crash");
    let reply = store
        .message(smollm3_bot::store::MessageId(
            reply_id.expect("child reported its reply"),
        ))
        .unwrap();
    assert_eq!(reply.status, MessageStatus::Interrupted);

    // The stored answer is exactly the first `saved` deltas: nothing torn, nothing reordered.
    assert_eq!(
        reply.content.len() % delta(0).len(),
        0,
        "whole deltas only: {:?}",
        reply.content
    );
    let saved = reply.content.len() / delta(0).len();
    let expected: String = (0..saved).map(delta).collect();
    assert_eq!(reply.content, expected);
    // Each step pushes reasoning then answer, and a flush may fall between the two.
    assert!(
        reply.reasoning.chars().all(|c| c == 'r')
            && (saved..=saved + 1).contains(&reply.reasoning.len()),
        "reasoning kept in step with the answer: {} vs {saved}",
        reply.reasoning.len()
    );

    // At most the last flush interval (plus scheduling slack) may be lost: with one delta per
    // 10 ms that is about 50 deltas; allow a full second, 100 deltas.
    let max_lost = (Duration::from_secs(1).as_millis() / DELTA_PERIOD.as_millis()) as usize;
    assert!(
        saved + max_lost >= pushed,
        "saved {saved} of at least {pushed} deltas"
    );
    assert!(saved > 0);
    eprintln!("killed after {pushed}+ deltas; {saved} saved");

    // The conversation still shows the interrupted reply at the end of its branch.
    let path = store.active_path(reply.conversation_id).unwrap();
    assert_eq!(path.last().map(|m| m.id), Some(reply.id));
}
