//! `smollm3-bot bench --concurrent 1,2,4,8`: N replies decoded at once by the engine's
//! continuous batching, per-stream and aggregate decode speed for each N in one run; then a
//! request arriving while three others decode: its first token against its own prefill alone
//! plus one step of the three.

use super::bench::{min_median_max, summary, BenchArgs};
use crate::engine::core::{EngineOptions, GenerateRequest};
use crate::engine::events::EngineEvent;
use crate::engine::loader::LoadedModel;
use crate::engine::sampler::SamplingParams;
use crate::engine::{Engine, JobHandle};
use candle_core::DType;
use serde_json::json;
use std::time::Instant;

/// A raw prompt of `n` ordinary token ids (different for each `salt`), greedy, exactly
/// `gen` tokens unless the model ends it.
fn request(ids: &[u32], gen: usize) -> GenerateRequest {
    let mut req = GenerateRequest::new(
        None,
        Vec::new(),
        chrono::NaiveDate::from_ymd_opt(2026, 12, 7).expect("a date"),
    );
    req.raw_prompt = Some(ids.to_vec());
    req.params = SamplingParams {
        max_tokens: gen.max(2),
        temperature: 0.0,
        ..SamplingParams::default()
    };
    req
}

/// What one reply measured: seconds from submission to its first token, tokens generated,
/// its decode speed, and when it ended.
struct Measured {
    first_token_s: f64,
    generated: usize,
    decode_tps: f64,
    ended: Instant,
}

/// Reads a reply to its end.
async fn measure(mut h: JobHandle, submitted: Instant) -> anyhow::Result<Measured> {
    let mut first = None;
    while let Some(e) = h.events.recv().await {
        match e {
            EngineEvent::Answer { .. } | EngineEvent::Reasoning { .. } => {
                first.get_or_insert_with(|| submitted.elapsed().as_secs_f64());
            }
            EngineEvent::Done { stats, .. } => {
                return Ok(Measured {
                    first_token_s: first.unwrap_or(stats.ttft_s),
                    generated: stats.generated_tokens,
                    decode_tps: stats.decode_tps,
                    ended: Instant::now(),
                })
            }
            EngineEvent::Error { message } => anyhow::bail!("the reply failed: {message}"),
            _ => {}
        }
    }
    anyhow::bail!("the reply ended without Done")
}

/// Reads every reply at once (so each one's times are its own).
fn measure_all(
    rt: &tokio::runtime::Runtime,
    handles: Vec<JobHandle>,
    submitted: Instant,
) -> anyhow::Result<Vec<Measured>> {
    rt.block_on(futures_util::future::join_all(
        handles.into_iter().map(|h| measure(h, submitted)),
    ))
    .into_iter()
    .collect()
}

/// Runs the concurrent benchmark for each number of streams in `streams`.
pub fn run(a: &BenchArgs, streams: &[usize]) -> anyhow::Result<()> {
    anyhow::ensure!(
        !streams.is_empty(),
        "give the numbers of streams, e.g. 1,2,4,8"
    );
    let max = streams.iter().copied().max().unwrap_or(1).max(4);
    let loaded = LoadedModel::open(&a.model, None)?;
    let vocab = loaded.model.config().vocab;
    let regular = loaded.specials.bos.map_or(vocab, |b| b as usize).min(vocab);
    let ids = |n: usize, salt: usize| -> Vec<u32> {
        (0..n)
            .map(|i| ((i * 7919 + salt * 104_729 + 13) % regular) as u32)
            .collect()
    };
    let prompt_len = a.prompt_tokens.clamp(1, 4096);
    let gen = a.gen_tokens.max(8);
    let engine = Engine::start(
        loaded,
        EngineOptions {
            context_size: a.context_tokens + prompt_len.max(512) + gen + 64,
            kv_dtype: if a.kv_f32 { DType::F32 } else { DType::F16 },
            max_slots: max,
            snapshots: None,
            max_batch: max,
            kv_budget_bytes: 0,
        },
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reps = a.reps.max(1);
    let mut rows = Vec::new();
    if !a.json {
        println!(
            "continuous batching: prompts of {prompt_len} tokens, {gen} generated each, \
             {reps} runs (min / median / max)"
        );
    }
    let mut single = None;
    for &n in streams {
        let (mut per_stream, mut aggregate) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            let submitted = Instant::now();
            let handles: Vec<JobHandle> = (0..n)
                .map(|i| engine.submit(request(&ids(prompt_len, rep * 64 + i), gen)))
                .collect();
            let measured = measure_all(&rt, handles, submitted)?;
            // Decode from the moment every stream has its first token to the last end.
            let all_decoding = measured.iter().map(|m| m.first_token_s).fold(0.0, f64::max);
            let last_end = measured
                .iter()
                .map(|m| m.ended.duration_since(submitted).as_secs_f64())
                .fold(0.0, f64::max);
            let tokens: usize = measured.iter().map(|m| m.generated.saturating_sub(1)).sum();
            aggregate.push(tokens as f64 / (last_end - all_decoding).max(1e-9));
            let mut speeds: Vec<f64> = measured.iter().map(|m| m.decode_tps).collect();
            speeds.sort_by(f64::total_cmp);
            per_stream.push(speeds[speeds.len() / 2]);
        }
        let (per_stream, aggregate) = (summary(per_stream), summary(aggregate));
        let base = *single.get_or_insert(per_stream["median"].as_f64().unwrap_or(0.0));
        let ratio = |v: &serde_json::Value| v["median"].as_f64().unwrap_or(0.0) / base.max(1e-9);
        if !a.json {
            println!(
                "  {n} stream(s): per stream {} tok/s ({:.2}× one alone), aggregate {} tok/s ({:.2}×)",
                min_median_max(&per_stream),
                ratio(&per_stream),
                min_median_max(&aggregate),
                ratio(&aggregate)
            );
        }
        rows.push(json!({
            "streams": n,
            "per_stream_tps": per_stream,
            "aggregate_tps": aggregate,
            "per_stream_vs_single": ratio(&per_stream),
            "aggregate_vs_single": ratio(&aggregate),
        }));
    }

    // A newcomer while three others decode, against a prompt of the same length on an idle
    // engine (another one: a stand-alone request reuses what a cache shares with it).
    let (mut alone, mut beside, mut steps) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let t0 = Instant::now();
        let solo = measure_all(
            &rt,
            vec![engine.submit(request(&ids(prompt_len, 9000 + rep), 2))],
            t0,
        )?;
        alone.push(solo[0].first_token_s);
        let prompt = ids(prompt_len, 9500 + rep);
        let t0 = Instant::now();
        let others: Vec<JobHandle> = (0..3)
            .map(|i| engine.submit(request(&ids(32, 9100 + rep * 8 + i), 4 * gen)))
            .collect();
        // Once they decode: their first tokens are out after a short prompt each.
        let mut others = others;
        let first_tokens = rt.block_on(async {
            let mut firsts = Vec::new();
            for h in others.iter_mut() {
                while let Some(e) = h.events.recv().await {
                    if matches!(e, EngineEvent::Answer { .. }) {
                        firsts.push(t0.elapsed().as_secs_f64());
                        break;
                    }
                }
            }
            firsts
        });
        anyhow::ensure!(first_tokens.len() == 3, "the three replies did not start");
        let submitted = Instant::now();
        let newcomer = measure_all(&rt, vec![engine.submit(request(&prompt, 2))], submitted)?;
        beside.push(newcomer[0].first_token_s);
        let measured = measure_all(&rt, others, t0)?;
        let tps = measured
            .iter()
            .map(|m| m.decode_tps)
            .fold(f64::INFINITY, f64::min);
        steps.push(1.0 / tps.max(1e-9));
    }
    let (alone, beside, steps) = (summary(alone), summary(beside), summary(steps));
    let bound = alone["median"].as_f64().unwrap_or(0.0) + steps["median"].as_f64().unwrap_or(0.0);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "prompt_tokens": prompt_len,
                "gen_tokens": gen,
                "streams": rows,
                "newcomer": {
                    "first_token_beside_three_s": beside,
                    "first_token_alone_s": alone,
                    "step_of_three_s": steps,
                    "bound_s": bound,
                },
            }))?
        );
    } else {
        println!(
            "  a {prompt_len}-token request while 3 decode: first token {} s; alone {} s, \
             one step of the three {} s (bound {:.2} s)",
            min_median_max(&beside),
            min_median_max(&alone),
            min_median_max(&steps),
            bound
        );
    }
    engine.shutdown();
    Ok(())
}
