//! `smollm3-bot bench --restart-tokens N`: a conversation of N tokens, the app "restarted"
//! (the model loaded anew, the engine's memory gone), then the next message — its first token
//! timed with the conversation's KV snapshot read from disk, against prefilling the whole
//! conversation again as an app without snapshots must.

use super::bench::{min_median_max, summary, BenchArgs};
use crate::engine::core::{EngineCore, EngineOptions, GenerateRequest};
use crate::engine::events::{ChatMessage, EngineEvent};
use crate::engine::loader::LoadedModel;
use crate::engine::sampler::SamplingParams;
use crate::engine::snapshot::Snapshots;
use crate::engine::SnapshotOptions;
use candle_core::DType;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

const KEY: &str = "restart-bench";

/// Text for the conversation's turns (the content does not matter to the timing).
const TURN: &str = "The mill stood by the river for two hundred years; its wheel turned the \
stones that ground the valley's wheat, and the miller kept a ledger of every sack, every \
flood and every price, which the village still reads aloud at the harvest fair.";

struct Timed {
    /// Seconds from the job's start to its first token (the snapshot read and the prefill
    /// included).
    ttft_s: f64,
    /// Prompt tokens taken from the cache (the snapshot).
    reused: usize,
    prompt: usize,
    reply_ids: Vec<u32>,
    /// The reply's text (the app stores it with the ids).
    answer: String,
}

fn request(messages: Vec<ChatMessage>, gen_tokens: usize) -> GenerateRequest {
    let mut req = GenerateRequest::new(
        Some(KEY.into()),
        messages,
        chrono::NaiveDate::from_ymd_opt(2026, 12, 6).expect("a date"),
    );
    req.params = SamplingParams {
        max_tokens: gen_tokens.max(1),
        temperature: 0.0,
        ..SamplingParams::default()
    };
    req
}

fn reply(core: &mut EngineCore, req: &GenerateRequest) -> anyhow::Result<Timed> {
    let mut done = None;
    let mut error = None;
    let mut answer = String::new();
    core.run(req, &AtomicBool::new(false), &mut |e| match e {
        EngineEvent::Answer { text } => answer.push_str(&text),
        EngineEvent::Done { stats, token_ids } => done = Some((stats, token_ids)),
        EngineEvent::Error { message } => error = Some(message),
        _ => {}
    });
    if let Some(e) = error {
        anyhow::bail!("the reply failed: {e}");
    }
    let (stats, reply_ids) = done.ok_or_else(|| anyhow::anyhow!("the reply never ended"))?;
    Ok(Timed {
        ttft_s: stats.ttft_s,
        reused: stats.reused_tokens,
        prompt: stats.prompt_tokens,
        reply_ids,
        answer,
    })
}

/// Writes the file's pages out and asks the kernel to drop them from memory, so the next
/// read comes from the disk as after a reboot (Linux; elsewhere it stays in memory).
fn drop_from_page_cache(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    if f.sync_all().is_err() {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid descriptor; the call only gives the kernel advice.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Runs the restart benchmark.
pub fn run(a: &BenchArgs, tokens: usize) -> anyhow::Result<()> {
    let reps = a.reps.max(1);
    let kv_dtype = if a.kv_f32 { DType::F32 } else { DType::F16 };
    let dir: PathBuf =
        std::env::temp_dir().join(format!("smollm3-restart-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let options = |snapshots: bool| EngineOptions {
        context_size: tokens + a.gen_tokens + 1024,
        kv_dtype,
        max_slots: 2,
        snapshots: snapshots.then(|| SnapshotOptions {
            dir: dir.clone(),
            budget_bytes: u64::MAX,
        }),
        ..EngineOptions::default()
    };
    let start = |snapshots: bool| -> anyhow::Result<(EngineCore, f64)> {
        let t0 = Instant::now();
        let loaded = LoadedModel::open(&a.model, None)?;
        let core = EngineCore::new(loaded, options(snapshots))?;
        Ok((core, t0.elapsed().as_secs_f64()))
    };
    let result = (|| -> anyhow::Result<serde_json::Value> {
        // The conversation: turns added until its prompt holds `tokens`.
        let (mut first, _) = start(true)?;
        let mut messages = vec![ChatMessage::new("system", "You are a patient historian.")];
        let question = ChatMessage::new("user", "What did the ledger say about the flood?");
        loop {
            let mut probe = messages.clone();
            probe.push(question.clone());
            if first.build_prompt(&request(probe, 1))?.len() >= tokens {
                break;
            }
            messages.push(ChatMessage::new("user", TURN));
            messages.push(ChatMessage::new("assistant", TURN));
        }
        messages.push(question);
        eprintln!("prefilling a conversation of {tokens}+ tokens …");
        let turn = reply(&mut first, &request(messages.clone(), a.gen_tokens))?;
        let t0 = Instant::now();
        first.save_snapshots(&|| true);
        let write_s = t0.elapsed().as_secs_f64();
        drop(first);
        let file = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "kv"))
            .ok_or_else(|| anyhow::anyhow!("no snapshot was written"))?;
        let file_mb = std::fs::metadata(&file)?.len() as f64 / 1e6;
        // The next message, as the app builds it: the reply's own ids spliced in.
        messages.push(ChatMessage {
            role: "assistant".into(),
            content: turn.answer.clone(),
            token_ids: Some(turn.reply_ids.clone()),
        });
        messages.push(ChatMessage::new(
            "user",
            "And the price of wheat that year?",
        ));
        let next = request(messages, a.gen_tokens);
        let (mut restarts, mut loads, mut from_disk) = (Vec::new(), Vec::new(), true);
        let mut after = None;
        for _ in 0..reps {
            from_disk &= drop_from_page_cache(&file);
            let (mut core, load_s) = start(true)?;
            let t = reply(&mut core, &next)?;
            restarts.push(t.ttft_s);
            loads.push(load_s);
            after = Some(t);
        }
        let after = after.expect("one rep at least");
        eprintln!("prefilling it again without the snapshot …");
        let (mut cold_core, _) = start(false)?;
        let cold = reply(&mut cold_core, &next)?;
        // The snapshot read alone (from the disk again), the part of the first token that
        // replaces the re-prefill; then the new message's own prefill alone on top of it.
        let (read_s, own_s) = {
            drop_from_page_cache(&file);
            let loaded = cold_core.loaded();
            let snapshots = Snapshots::new(
                SnapshotOptions {
                    dir: dir.clone(),
                    budget_bytes: u64::MAX,
                },
                loaded.fingerprint,
            );
            let prompt = cold_core.build_prompt(&next)?;
            let mut cache = loaded.model.new_cache(prompt.len() + 1, kv_dtype);
            let t0 = Instant::now();
            let reused = snapshots.load(KEY, &prompt, &mut cache)?;
            let read_s = t0.elapsed().as_secs_f64();
            let mut own = Vec::new();
            for _ in 0..reps {
                cache.truncate(reused);
                let t0 = Instant::now();
                crate::engine::generate::prefill(&loaded.model, &prompt[reused..], &mut cache)?;
                own.push(t0.elapsed().as_secs_f64());
            }
            own.sort_by(f64::total_cmp);
            (read_s, own[own.len() / 2])
        };
        let beyond: Vec<f64> = restarts.iter().map(|t| t - own_s).collect();
        Ok(json!({
            "model": a.model.display().to_string(),
            "kernels": cold_core.loaded().model.kernels().isa().name(),
            "threads": a.threads.unwrap_or_else(candle_core::utils::get_num_threads),
            "conversation_tokens": turn.prompt + turn.reply_ids.len(),
            "next_prompt_tokens": after.prompt,
            "reused_from_snapshot": after.reused,
            "own_prefill_tokens": after.prompt - after.reused,
            "snapshot_mb": file_mb,
            "snapshot_write_s": write_s,
            "snapshot_read_s": read_s,
            "own_prefill_s_median": own_s,
            "ttft_after_restart_beyond_own_prefill_s": summary(beyond),
            "snapshot_read_from_disk": from_disk,
            "model_load_s": summary(loads),
            "ttft_after_restart_s": summary(restarts),
            "ttft_reprefill_s": cold.ttft_s,
            "first_turn_ttft_s": turn.ttft_s,
        }))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let f = |k: &str| report[k].as_f64().unwrap_or(0.0);
    let s = |k: &str| min_median_max(&report[k]);
    println!("model              {}", a.model.display());
    println!(
        "kernels            {}",
        report["kernels"].as_str().unwrap_or("")
    );
    println!(
        "conversation       {} tokens; next message {} tokens, {} from the snapshot, {} its own",
        report["conversation_tokens"],
        report["next_prompt_tokens"],
        report["reused_from_snapshot"],
        report["own_prefill_tokens"]
    );
    println!(
        "snapshot           {:.0} MB, written in {:.2} s after the reply ({})",
        f("snapshot_mb"),
        f("snapshot_write_s"),
        if report["snapshot_read_from_disk"] == true {
            "read back from the disk, dropped from the page cache"
        } else {
            "read back from the page cache"
        }
    );
    println!("snapshot read s    {:.2}", f("snapshot_read_s"));
    println!(
        "model load s       {} (min / median / max)",
        s("model_load_s")
    );
    println!(
        "first token after a restart  {} s (min / median / max)",
        s("ttft_after_restart_s")
    );
    println!(
        "  beyond the message's own prefill ({:.2} s, median)  {} s",
        f("own_prefill_s_median"),
        s("ttft_after_restart_beyond_own_prefill_s")
    );
    println!(
        "first token re-prefilling    {:.2} s (the whole conversation again)",
        f("ttft_reprefill_s")
    );
    Ok(())
}
