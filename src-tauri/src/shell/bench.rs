//! `smollm3-bot bench`: load time, prefill and decode speed, peak memory — printed as figures
//! (min/median/max over repetitions), never asserted.

use crate::engine::generate::{argmax, prefill};
use crate::engine::loader::LoadedModel;
use crate::model::Logits;
use candle_core::DType;
use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// `bench` arguments.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The GGUF model file.
    #[arg(long, env = "MODEL_PATH")]
    pub model: PathBuf,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens generated for the decode measurement.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Context already in the cache before decoding is timed (0 = right after the prompt).
    #[arg(long, default_value_t = 0)]
    pub context_tokens: usize,
    /// Matmul threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Store the KV cache in F32 instead of the app's F16.
    #[arg(long)]
    pub kv_f32: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Instead (see `restart_bench`): time the first token of the next message in a conversation of this many
    /// tokens after a restart, its KV snapshot read from disk, against prefilling it again.
    #[arg(long, value_name = "TOKENS")]
    pub restart_tokens: Option<usize>,
    /// Instead (see `concurrent_bench`): decode this many replies at once, for each number
    /// given (e.g. `1,2,4,8`), printing per-stream and aggregate speed.
    #[arg(long, value_name = "N,N,…", value_delimiter = ',')]
    pub concurrent: Vec<usize>,
}

/// min, median, max.
pub(super) fn summary(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.total_cmp(b));
    let median = if v.is_empty() { 0.0 } else { v[v.len() / 2] };
    json!({"min": v.first().copied().unwrap_or(0.0), "median": median, "max": v.last().copied().unwrap_or(0.0), "runs": v})
}

/// A [`summary`] as "min / median / max" with two decimals.
pub(super) fn min_median_max(v: &serde_json::Value) -> String {
    format!(
        "{:.2} / {:.2} / {:.2}",
        v["min"].as_f64().unwrap_or(0.0),
        v["median"].as_f64().unwrap_or(0.0),
        v["max"].as_f64().unwrap_or(0.0)
    )
}

/// Peak resident memory of this process in MB (Linux; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs the benchmark.
pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let reps = a.reps.max(1);
    let kv = if a.kv_f32 { DType::F32 } else { DType::F16 };
    let mut loads = Vec::new();
    let mut loaded = None;
    for _ in 0..reps {
        drop(loaded.take());
        let t0 = Instant::now();
        let m = LoadedModel::open(&a.model, None)?;
        loads.push(t0.elapsed().as_secs_f64());
        loaded = Some(m);
    }
    let m = loaded.expect("loaded at least once");
    let cfg = m.model.config().clone();
    // Ordinary (non-special) ids spread over the vocabulary.
    let n_regular = m
        .specials
        .bos
        .map_or(cfg.vocab, |b| b as usize)
        .min(cfg.vocab);
    let ids = |n: usize, salt: usize| -> Vec<u32> {
        (0..n)
            .map(|i| ((i * 7919 + salt * 104729 + 13) % n_regular) as u32)
            .collect()
    };
    let ctx = a.context_tokens + a.prompt_tokens + a.gen_tokens + 1;
    anyhow::ensure!(
        ctx <= cfg.context_length,
        "{ctx} tokens exceed the model's context of {}",
        cfg.context_length
    );
    let mut first_prefill = None;
    let (mut prefills, mut decodes) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let mut cache = m.model.new_cache(ctx, kv);
        if a.context_tokens > 0 {
            prefill(&m.model, &ids(a.context_tokens, rep + 100), &mut cache)?;
        }
        let prompt = ids(a.prompt_tokens.max(1), rep);
        let t0 = Instant::now();
        let logits = prefill(&m.model, &prompt, &mut cache)?;
        let tps = prompt.len() as f64 / t0.elapsed().as_secs_f64();
        first_prefill.get_or_insert(tps);
        prefills.push(tps);
        let mut next = argmax(&logits);
        let t0 = Instant::now();
        for _ in 0..a.gen_tokens {
            let l: Vec<f32> = m
                .model
                .forward(&[next], &mut cache, Logits::Last)?
                .to_vec1()?;
            next = argmax(&l);
        }
        if a.gen_tokens > 0 {
            decodes.push(a.gen_tokens as f64 / t0.elapsed().as_secs_f64());
        }
    }
    let report = json!({
        "model": a.model.display().to_string(),
        "file_mb": m.gguf.file_size() as f64 / 1e6,
        "threads": a.threads.unwrap_or_else(candle_core::utils::get_num_threads),
        "prompt_tokens": a.prompt_tokens,
        "gen_tokens": a.gen_tokens,
        "context_tokens": a.context_tokens,
        "kv_cache": if a.kv_f32 { "f32" } else { "f16" },
        "kernels": m.model.kernels().isa().name(),
        "interleaved_weights": m.model.interleaved_weights(),
        "load_s": summary(loads),
        "first_prefill_tps": first_prefill,
        "prefill_tps": summary(prefills),
        "decode_tps": summary(decodes),
        "peak_rss_mb": peak_rss_mb(),
    });
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let f = |k: &str| min_median_max(&report[k]);
        println!(
            "model      {} ({:.0} MB)",
            a.model.display(),
            report["file_mb"].as_f64().unwrap_or(0.0)
        );
        println!(
            "kernels    {} ({} matrices interleaved)",
            m.model.kernels().isa(),
            m.model.interleaved_weights()
        );
        println!("load s     {} (min / median / max)", f("load_s"));
        println!(
            "prefill    {} tok/s ({} tokens; first run {:.2})",
            f("prefill_tps"),
            a.prompt_tokens,
            first_prefill.unwrap_or(0.0)
        );
        println!(
            "decode     {} tok/s ({} tokens after {} of context)",
            f("decode_tps"),
            a.gen_tokens,
            a.context_tokens + a.prompt_tokens
        );
        println!(
            "peak RSS   {:.0} MB",
            report["peak_rss_mb"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
