//! KV snapshots on disk: a conversation's cache read back after a "restart" (a new engine on
//! the same folder) gives the logits of a cold prefill; damaged, foreign and half-written
//! snapshots are never used; the disk budget evicts; forgetting a conversation deletes its file.

use candle_core::DType;
use chrono::NaiveDate;
use smollm3_bot::engine::core::{EngineCore, EngineOptions, GenerateRequest};
use smollm3_bot::engine::events::{ChatMessage, EngineEvent};
use smollm3_bot::engine::loader::LoadedModel;
use smollm3_bot::engine::sampler::SamplingParams;
use smollm3_bot::engine::snapshot::{Saved, SnapshotOptions, Snapshots};
use smollm3_bot::engine::Engine;
use smollm3_bot::model::synth::{self, Preset, Quant};
use smollm3_bot::model::Logits;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;
use std::time::Duration;

/// Synthetic F32 models shared by the tests of this file, by seed.
fn model_path(seed: u64) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let p = dir.join(format!("tiny-f32-{seed}.gguf"));
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap();
    if !p.exists() {
        synth::write(Preset::Tiny, Quant::F32, seed, &p).unwrap();
    }
    p
}

fn options(dir: Option<&Path>, kv_dtype: DType, budget_bytes: u64) -> EngineOptions {
    EngineOptions {
        context_size: 2048,
        kv_dtype,
        max_slots: 2,
        snapshots: dir.map(|d| SnapshotOptions {
            dir: d.to_path_buf(),
            budget_bytes,
        }),
        ..EngineOptions::default()
    }
}

/// A fresh engine core (as after a restart) on `seed`'s model, saving into `dir`.
fn core(seed: u64, dir: Option<&Path>, kv_dtype: DType) -> EngineCore {
    let loaded = LoadedModel::open(&model_path(seed), None).unwrap();
    EngineCore::new(loaded, options(dir, kv_dtype, 1 << 30)).unwrap()
}

/// A conversation of a few hundred tokens; `extra` more user turns make it longer.
fn messages(extra: usize) -> Vec<ChatMessage> {
    let mut m = vec![ChatMessage::new("system", "You are terse.")];
    for i in 0..3 + extra {
        m.push(ChatMessage::new(
            "user",
            format!("Question {i}: tell me about the river, the hills and the old mill."),
        ));
        m.push(ChatMessage::new(
            "assistant",
            format!("Answer {i}: the river runs past the mill below the hills."),
        ));
    }
    m.push(ChatMessage::new("user", "And the bridge?"));
    m
}

fn request(key: &str, messages: Vec<ChatMessage>) -> GenerateRequest {
    let mut req = GenerateRequest::new(
        Some(key.into()),
        messages,
        NaiveDate::from_ymd_opt(2026, 12, 6).unwrap(),
    );
    req.params = SamplingParams {
        max_tokens: 12,
        temperature: 0.0,
        seed: Some(1),
        ..SamplingParams::default()
    };
    req
}

/// Runs a job; returns (prompt tokens reused, generated ids).
fn run(core: &mut EngineCore, req: &GenerateRequest) -> (usize, Vec<u32>) {
    let mut events = Vec::new();
    core.run(req, &AtomicBool::new(false), &mut |e| events.push(e));
    match events.last() {
        Some(EngineEvent::Done { stats, token_ids }) => (stats.reused_tokens, token_ids.clone()),
        other => panic!("job did not finish: {other:?}"),
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn snapshot_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default()
}

/// Saves conversation `c1` (its first turn run) into `dir`; returns the prompt of the next
/// turn, which the snapshot's tokens begin.
fn save_first_turn(dir: &Path, kv_dtype: DType) -> Vec<u32> {
    let mut a = core(7, Some(dir), kv_dtype);
    let req = request("c1", messages(0));
    run(&mut a, &req);
    assert!(a.has_unsaved());
    a.save_snapshots(&|| true);
    assert!(!a.has_unsaved());
    assert_eq!(snapshot_files(dir, "kv").len(), 1);
    a.build_prompt(&request("c1", messages(1))).unwrap()
}

#[test]
fn logits_after_a_snapshot_equal_a_cold_prefill() {
    let dir = tempfile::tempdir().unwrap();
    let next = save_first_turn(dir.path(), DType::F32);
    // "Restarted": a new engine on the same folder.
    let mut b = core(7, Some(dir.path()), DType::F32);
    let (logits, reused) = b
        .prefill(Some("c1"), &next, &AtomicBool::new(false))
        .unwrap();
    assert!(
        reused > 200,
        "the snapshot's {reused} tokens should cover the first turn"
    );
    let cold = {
        let model = &b.loaded().model;
        let mut cache = model.new_cache(4096, DType::F32);
        model
            .forward(&next, &mut cache, Logits::Last)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let d = max_abs_diff(&logits, &cold);
    assert!(d <= 1e-3, "logits differ by {d}");
}

#[test]
fn a_reply_after_a_restart_reuses_the_snapshot_and_matches_a_cold_one() {
    let dir = tempfile::tempdir().unwrap();
    save_first_turn(dir.path(), DType::F16);
    let req = request("c1", messages(1));
    let (reused, ids) = run(&mut core(7, Some(dir.path()), DType::F16), &req);
    assert!(reused > 200, "only {reused} tokens reused");
    let (cold_reused, cold_ids) = run(&mut core(7, None, DType::F16), &req);
    assert_eq!(cold_reused, 0);
    assert_eq!(ids, cold_ids);
}

/// Each way a snapshot can be unusable: the reply is computed from scratch and is the same.
#[test]
fn damaged_or_foreign_snapshots_are_ignored_and_the_reply_is_still_right() {
    type Damage = Box<dyn Fn(&Path)>;
    let flip = |at: fn(u64) -> u64| {
        move |p: &Path| {
            let mut bytes = std::fs::read(p).unwrap();
            let i = at(bytes.len() as u64) as usize;
            bytes[i] ^= 0x10;
            std::fs::write(p, bytes).unwrap();
        }
    };
    let cases: Vec<(&str, Damage, u64, DType)> = vec![
        (
            "truncated",
            Box::new(|p: &Path| {
                let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(len - 1000).unwrap();
            }),
            7,
            DType::F16,
        ),
        (
            "a bit flipped in the data",
            Box::new(flip(|len| len * 2 / 3)),
            7,
            DType::F16,
        ),
        (
            "a bit flipped in the token ids",
            Box::new(flip(|_| 100)),
            7,
            DType::F16,
        ),
        ("another model", Box::new(|_: &Path| {}), 8, DType::F16),
        (
            "another cache layout",
            Box::new(|_: &Path| {}),
            7,
            DType::F32,
        ),
    ];
    for (what, damage, seed, dtype) in cases {
        let dir = tempfile::tempdir().unwrap();
        save_first_turn(dir.path(), DType::F16);
        damage(&snapshot_files(dir.path(), "kv")[0]);
        let req = request("c1", messages(1));
        let (reused, ids) = run(&mut core(seed, Some(dir.path()), dtype), &req);
        assert_eq!(reused, 0, "{what}: a snapshot was used");
        let (_, cold_ids) = run(&mut core(seed, None, dtype), &req);
        assert_eq!(ids, cold_ids, "{what}: the reply differs");
    }
}

#[test]
fn the_disk_budget_evicts_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = LoadedModel::open(&model_path(7), None).unwrap();
    let model = &loaded.model;
    let snapshots = Snapshots::new(
        SnapshotOptions {
            dir: dir.path().to_path_buf(),
            // Room for two snapshots of 300 tokens, not three.
            budget_bytes: 0,
        },
        loaded.fingerprint,
    );
    let tokens: Vec<u32> = (0..300).map(|i| 20 + i % 900).collect();
    let mut cache = model.new_cache(2048, DType::F16);
    model.forward(&tokens, &mut cache, Logits::Last).unwrap();
    assert_eq!(
        snapshots.save("big", &cache, &|| true).unwrap(),
        Saved::TooLarge
    );
    let one = {
        let probe = tempfile::tempdir().unwrap();
        let s = Snapshots::new(
            SnapshotOptions {
                dir: probe.path().to_path_buf(),
                budget_bytes: u64::MAX,
            },
            loaded.fingerprint,
        );
        match s.save("probe", &cache, &|| true).unwrap() {
            Saved::Written(n) => n,
            other => panic!("{other:?}"),
        }
    };
    let snapshots = Snapshots::new(
        SnapshotOptions {
            dir: dir.path().to_path_buf(),
            budget_bytes: one * 2 + one / 2,
        },
        loaded.fingerprint,
    );
    for key in ["a", "b"] {
        snapshots.save(key, &cache, &|| true).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    // Reading "a" makes it the most recently used, so "b" goes when "c" arrives.
    let mut back = model.new_cache(2048, DType::F16);
    assert_eq!(snapshots.load("a", &tokens, &mut back).unwrap(), 300);
    std::thread::sleep(Duration::from_millis(20));
    snapshots.save("c", &cache, &|| true).unwrap();
    assert!(snapshots.path("a").exists());
    assert!(
        !snapshots.path("b").exists(),
        "the least recently used stays"
    );
    assert!(snapshots.path("c").exists());
    // A write abandoned for other work leaves nothing behind.
    assert_eq!(
        snapshots.save("d", &cache, &|| false).unwrap(),
        Saved::Abandoned
    );
    assert!(!snapshots.path("d").exists());
    assert!(snapshot_files(dir.path(), "tmp").is_empty());
    // Removing the model takes its snapshots along, and only its own.
    let other = Snapshots::new(
        SnapshotOptions {
            dir: dir.path().to_path_buf(),
            budget_bytes: u64::MAX,
        },
        [9; 32],
    );
    other.save("x", &cache, &|| true).unwrap();
    assert_eq!(
        Snapshots::remove_for_model(dir.path(), &loaded.fingerprint),
        2
    );
    assert_eq!(snapshot_files(dir.path(), "kv"), vec![other.path("x")]);
}

#[test]
fn forgetting_a_conversation_deletes_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    save_first_turn(dir.path(), DType::F16);
    let mut b = core(7, Some(dir.path()), DType::F16);
    b.forget("c1");
    assert!(snapshot_files(dir.path(), "kv").is_empty());
}

/// The engine thread saves when it is idle, after the reply's last event, and the next engine
/// on the folder starts from the snapshot.
#[test]
fn the_engine_saves_after_a_reply_and_a_new_engine_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let loaded = LoadedModel::open(&model_path(7), None).unwrap();
        Engine::start(loaded, options(Some(dir.path()), DType::F16, 1 << 30)).unwrap()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reply = |engine: &Engine, req: GenerateRequest| {
        rt.block_on(async {
            let mut job = engine.submit(req);
            let mut reused = None;
            while let Some(e) = job.events.recv().await {
                if let EngineEvent::Done { stats, .. } = e {
                    reused = Some(stats.reused_tokens);
                }
            }
            reused.expect("a Done event")
        })
    };
    let first = start();
    assert_eq!(reply(&first, request("c1", messages(0))), 0);
    // Saved in the background once the reply is over (bounded wait).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while snapshot_files(dir.path(), "kv").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no snapshot written");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.shutdown();
    let second = start();
    assert!(reply(&second, request("c1", messages(1))) > 200);
    second.forget("c1");
    second.shutdown();
    assert!(snapshot_files(dir.path(), "kv").is_empty());
}

/// Closing the engine right after a reply (the app quitting) still leaves the snapshot.
#[test]
fn closing_the_engine_saves_what_is_unsaved() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = LoadedModel::open(&model_path(7), None).unwrap();
    let engine = Engine::start(loaded, options(Some(dir.path()), DType::F16, 1 << 30)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut job = engine.submit(request("c1", messages(0)));
        while job.events.recv().await.is_some() {}
    });
    engine.shutdown();
    assert_eq!(snapshot_files(dir.path(), "kv").len(), 1);
    assert!(snapshot_files(dir.path(), "tmp").is_empty());
}

const CHILD_ENV: &str = "SMOLLM3_TEST_SNAPSHOT_WRITER";
/// The model file the child uses: the parent's own, so the fingerprints agree.
const CHILD_MODEL_ENV: &str = "SMOLLM3_TEST_SNAPSHOT_MODEL";

/// Not a test of its own: the process [`a_kill_while_writing_leaves_nothing_that_gets_used`]
/// starts and kills; it writes one conversation's snapshot over and over.
#[test]
fn snapshot_writer_child() {
    let (Some(dir), Some(model)) = (
        std::env::var_os(CHILD_ENV),
        std::env::var_os(CHILD_MODEL_ENV),
    ) else {
        return;
    };
    let loaded = LoadedModel::open(Path::new(&model), None).unwrap();
    let model = &loaded.model;
    let snapshots = Snapshots::new(
        SnapshotOptions {
            dir: PathBuf::from(dir),
            budget_bytes: u64::MAX,
        },
        loaded.fingerprint,
    );
    let tokens: Vec<u32> = (0..1500).map(|i| 20 + i % 900).collect();
    let mut cache = model.new_cache(2048, DType::F16);
    model.forward(&tokens, &mut cache, Logits::Last).unwrap();
    // Bounded: the parent kills it long before.
    for _ in 0..100_000 {
        snapshots.save("c1", &cache, &|| true).unwrap();
    }
}

#[test]
fn a_kill_while_writing_leaves_nothing_that_gets_used() {
    let loaded = LoadedModel::open(&model_path(7), None).unwrap();
    let model = &loaded.model;
    let tokens: Vec<u32> = (0..1500).map(|i| 20 + i % 900).collect();
    let mut cold = model.new_cache(2048, DType::F16);
    let want = model
        .forward(&tokens, &mut cold, Logits::Last)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut killed_mid_write = 0;
    for (round, delay_ms) in [0u64, 3, 7, 13, 29].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "snapshot_writer_child", "--nocapture"])
            .env(CHILD_ENV, dir.path())
            .env(CHILD_MODEL_ENV, model_path(7))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Once a first snapshot is whole, kill the writer somewhere in a later write.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while snapshot_files(dir.path(), "kv").is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the writer wrote nothing"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        killed_mid_write += usize::from(!snapshot_files(dir.path(), "tmp").is_empty());
        // The next start: the half-written file is removed, the whole one is used and right.
        let snapshots = Snapshots::new(
            SnapshotOptions {
                dir: dir.path().to_path_buf(),
                budget_bytes: u64::MAX,
            },
            loaded.fingerprint,
        );
        assert!(snapshot_files(dir.path(), "tmp").is_empty());
        let mut back = model.new_cache(2048, DType::F16);
        let reused = snapshots.load("c1", &tokens, &mut back).unwrap();
        assert_eq!(reused, tokens.len(), "round {round}");
        back.truncate(tokens.len() - 1);
        let got = model
            .forward(&tokens[tokens.len() - 1..], &mut back, Logits::Last)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-3, "round {round}: logits differ by {d}");
    }
    eprintln!("killed while a snapshot was being written in {killed_mid_write} of 5 rounds");
}
