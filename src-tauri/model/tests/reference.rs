//! Our SmolLM3 against llama.cpp's numbers on the same GGUF files and tokens, on every kernel
//! path this CPU can run (each named in the output: `cargo test --test reference --
//! --nocapture`).

mod common;

use candle_core::DType;
use smollm3_model::kernels::Kernels;
use smollm3_model::{prepared, Config, GgufFile, Logits, Model};

struct Reference {
    tokens: Vec<u32>,
    last_logits: Vec<f32>,
    top1: Vec<u32>,
    greedy: Vec<u32>,
}

fn reference(json_name: &str) -> Reference {
    let j = common::json(&common::reference(json_name));
    let ids = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect::<Vec<_>>()
    };
    Reference {
        tokens: ids(&j["tokens"]),
        last_logits: j["last_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect(),
        top1: j["per_position_top10"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0][0].as_u64().unwrap() as u32)
            .collect(),
        greedy: ids(&j["greedy"]),
    }
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

struct Run {
    last: Vec<f32>,
    top1: Vec<u32>,
    greedy: Vec<u32>,
}

fn run(model: &Model, tokens: &[u32], n_greedy: usize) -> Run {
    run_kv(model, tokens, n_greedy, DType::F32)
}

fn run_kv(model: &Model, tokens: &[u32], n_greedy: usize, kv: DType) -> Run {
    let mut cache = model.new_cache(256, kv);
    let all = model.forward(tokens, &mut cache, Logits::All).unwrap();
    let rows: Vec<Vec<f32>> = all.to_vec2().unwrap();
    let top1 = rows.iter().map(|r| argmax(r)).collect();
    let last = rows.last().unwrap().clone();
    let mut greedy = Vec::new();
    let mut next = argmax(&last);
    for _ in 0..n_greedy {
        greedy.push(next);
        let l: Vec<f32> = model
            .forward(&[next], &mut cache, Logits::Last)
            .unwrap()
            .to_vec1()
            .unwrap();
        next = argmax(&l);
    }
    Run { last, top1, greedy }
}

/// The model of `g` on `kernels`.
fn load(g: &GgufFile, kernels: Kernels) -> Model {
    Model::load_with(g, Config::from_gguf(g).unwrap(), kernels).unwrap()
}

#[test]
fn f32_model_matches_llama_cpp() {
    let g = GgufFile::open(common::reference("tiny-smollm3-f32.gguf")).unwrap();
    let r = reference("tiny-smollm3-f32.llama-cpp.kvf32.json");
    for kernels in Kernels::available() {
        let model = load(&g, kernels);
        let ours = run(&model, &r.tokens, r.greedy.len());
        let d = max_abs_diff(&ours.last, &r.last_logits);
        let isa = kernels.isa();
        eprintln!("f32, {isa} kernels: max |Δ logit| = {d:e}");
        assert!(d <= 1e-3, "{isa}: max |Δ| {d} > 1e-3");
        assert_eq!(
            ours.top1, r.top1,
            "{isa}: top-1 differs at some teacher-forced position"
        );
        assert_eq!(ours.greedy, r.greedy, "{isa}: greedy continuation differs");
    }
}

#[test]
fn q4_k_m_model_matches_llama_cpp() {
    let g = GgufFile::open(common::reference("tiny-smollm3-q4_k_m.gguf")).unwrap();
    for kernels in Kernels::available() {
        check_q4_k_m(&load(&g, kernels), "gguf layout");
    }
}

/// The same check with the Q4_K matrices in the interleaved layout, on every path that
/// computes on it (every NEON variant included).
#[test]
fn q4_k_m_interleaved_matches_llama_cpp() {
    let g = GgufFile::open(common::reference("tiny-smollm3-q4_k_m.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some(p) = prepared::open_or_build_at(&g, &[dir.path().join("q.x8")]).unwrap() else {
        eprintln!("skipped: prepared files are switched off (SMOLLM3_PREPARED)");
        return;
    };
    let paths: Vec<Kernels> = Kernels::variants()
        .into_iter()
        .filter(|k| k.interleaved())
        .collect();
    if paths.is_empty() {
        eprintln!("skipped: no kernel path here computes on the interleaved layout");
    }
    for kernels in paths {
        let mut model = load(&g, kernels);
        assert!(model.attach_interleaved(&p) >= 40);
        check_q4_k_m(&model, "interleaved");
    }
}

fn check_q4_k_m(model: &Model, what: &str) {
    // The path's name, with its variant where it has several (`neon+i8mm`).
    let isa = model.kernels();
    let r = reference("tiny-smollm3-q4_k_m.llama-cpp.kvf32.json");
    let ours = run(model, &r.tokens, 0);
    let d = max_abs_diff(&ours.last, &r.last_logits);
    let agree = ours
        .top1
        .iter()
        .zip(&r.top1)
        .filter(|(a, b)| a == b)
        .count();
    eprintln!(
        "q4_k_m ({what}), {isa} kernels: max |Δ logit| = {d:e}, top-1 agreement {agree}/{}",
        r.top1.len()
    );
    assert!(d <= 0.2, "{isa}: max |Δ| {d} > 0.2");
    assert!(
        agree >= 30,
        "{isa}: top-1 agrees at only {agree} of 32 positions"
    );
}

#[test]
fn nope_layers_matter() {
    let g = GgufFile::open(common::reference("tiny-smollm3-f32.gguf")).unwrap();
    let r = reference("tiny-smollm3-f32.llama-cpp.kvf32.json");
    let model = Model::load(&g).unwrap();
    assert_eq!(model.config().nope_layers(), vec![3, 7]);
    let mut cfg = model.config().clone();
    cfg.nope_interval = 0; // RoPE on every layer
    let all_rope = Model::load_with_config(&g, cfg).unwrap();
    let with_nope = run(&model, &r.tokens, 0).last;
    let without = run(&all_rope, &r.tokens, 0).last;
    let d = max_abs_diff(&with_nope, &without);
    eprintln!("RoPE on every layer moves the logits by {d}");
    assert!(d > 0.05, "NoPE made no difference ({d})");
    assert!(max_abs_diff(&without, &r.last_logits) > 0.05);
}

#[test]
fn f16_kv_cache_matches_llama_cpp_f16_kv() {
    let g = GgufFile::open(common::reference("tiny-smollm3-f32.gguf")).unwrap();
    let r = reference("tiny-smollm3-f32.llama-cpp.kvf16.json");
    for kernels in Kernels::available() {
        let model = load(&g, kernels);
        let ours = run_kv(&model, &r.tokens, r.greedy.len(), DType::F16);
        let d = max_abs_diff(&ours.last, &r.last_logits);
        let isa = kernels.isa();
        eprintln!("f32 weights, f16 KV, {isa} kernels: max |Δ logit| = {d:e}");
        assert!(d <= 5e-3, "{isa}: max |Δ| {d} > 5e-3");
        assert_eq!(ours.greedy, r.greedy, "{isa}: greedy continuation differs");
    }
}
