//! CLI commands that work on a model file directly: synth, inspect, logits, generate.

use crate::engine::loader::LoadedModel;
use crate::model::gguf::Value;
use crate::model::kernels::Kernels;
use crate::model::synth::{self, Preset, Quant};
use crate::model::{Config, GgufFile, Logits};
use crate::text::tokenizer;
use anyhow::{bail, Context};
use candle_core::DType;
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// `synth` arguments.
#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Model size.
    #[arg(long, value_enum, default_value = "tiny")]
    pub preset: Preset,
    /// Weight encoding.
    #[arg(long, value_enum, default_value = "q4_k_m")]
    pub quant: Quant,
    /// Random seed; the same seed gives the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
}

/// Writes a synthetic model.
pub fn synth(a: SynthArgs) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    synth::write(a.preset, a.quant, a.seed, &a.out)?;
    let size = std::fs::metadata(&a.out)?.len();
    eprintln!(
        "wrote {} ({:.1} MB) in {:.1} s",
        a.out.display(),
        size as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `inspect` arguments.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The GGUF file.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn short_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Array(items) if items.len() > 8 => {
            json!(format!(
                "[{} items, first {:?}]",
                items.len(),
                items.first().map(short_value)
            ))
        }
        Value::Array(items) => json!(items.iter().map(short_value).collect::<Vec<_>>()),
        Value::String(s) if s.len() > 120 => json!(format!(
            "{}… ({} bytes)",
            &s[..s.floor_char_boundary(100)],
            s.len()
        )),
        Value::String(s) => json!(s),
        Value::Bool(b) => json!(b),
        Value::F32(f) => json!(f),
        Value::F64(f) => json!(f),
        other => json!(other
            .as_u64()
            .map(|u| u as i64)
            .unwrap_or_else(|| match other {
                Value::I8(x) => *x as i64,
                Value::I16(x) => *x as i64,
                Value::I32(x) => *x as i64,
                Value::I64(x) => *x,
                _ => 0,
            })),
    }
}

/// Why a file that parsed as GGUF still cannot run as a SmolLM3 model: its configuration, its
/// tensors, or (with no `tokenizer.json` beside it) its vocabulary. `None` when it would load.
fn unusable(g: &GgufFile, cfg: &Result<Config, crate::model::GgufError>) -> Option<String> {
    let cfg = match cfg {
        Ok(cfg) => cfg,
        Err(e) => return Some(e.to_string()),
    };
    if let Err(e) = cfg.validate_tensors(g) {
        return Some(e.to_string());
    }
    if crate::engine::loader::tokenizer_path(g.path(), None).is_none() {
        if let Err(e) = tokenizer::from_gguf(g) {
            return Some(e.to_string());
        }
    }
    None
}

/// Describes a GGUF file. The report is printed for any file that parses; the command fails
/// (non-zero exit) when the model could not be loaded, so scripts can rely on its status.
pub fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    let g = GgufFile::open(&a.file)?;
    let mut types: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in g.tensors() {
        let e = types.entry(t.ty.to_string()).or_default();
        e.0 += 1;
        e.1 += t.size;
    }
    let weights: usize = g.tensors().iter().map(|t| t.size).sum();
    let params: u64 = g.tensors().iter().map(|t| t.elem_count()).sum();
    let cfg = Config::from_gguf(&g);
    let problem = unusable(&g, &cfg);
    let meta: Vec<(String, serde_json::Value)> = g
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), short_value(v)))
        .collect();
    let mut report = json!({
        "file": a.file.display().to_string(),
        "file_size": g.file_size(),
        "gguf_version": g.version(),
        "tensor_count": g.tensors().len(),
        "parameters": params,
        "weight_bytes": weights,
        "types": types.iter().map(|(k, (n, b))| (k.clone(), json!({"tensors": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
        "metadata": meta.iter().cloned().collect::<serde_json::Map<_, _>>(),
        "valid": problem.as_deref().unwrap_or("ok"),
        "kernels": Kernels::default().isa().name(),
        "kernels_available": Kernels::available().iter().map(|k| k.isa().name()).collect::<Vec<_>>(),
    });
    if let Ok(cfg) = &cfg {
        let kv4k = cfg.kv_bytes_per_token(4) * 4096;
        report["config"] = serde_json::to_value(cfg)?;
        report["nope_layers"] = json!(cfg.nope_layers());
        report["memory_estimate"] = json!({
            "weights_mapped_bytes": weights,
            "kv_cache_bytes_per_token_f32": cfg.kv_bytes_per_token(4),
            "kv_cache_bytes_per_token_f16": cfg.kv_bytes_per_token(2),
            "total_at_4k_context_f32_kv": weights + kv4k,
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(
            &a,
            &g,
            &meta,
            &types,
            weights,
            params,
            &cfg,
            problem.as_deref(),
        );
    }
    match problem {
        Some(p) => bail!("{} is not a usable SmolLM3 model: {p}", a.file.display()),
        None => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn print_report(
    a: &InspectArgs,
    g: &GgufFile,
    meta: &[(String, serde_json::Value)],
    types: &BTreeMap<String, (usize, usize)>,
    weights: usize,
    params: u64,
    cfg: &Result<Config, crate::model::GgufError>,
    problem: Option<&str>,
) {
    let mb = |b: usize| b as f64 / 1e6;
    println!(
        "{}: GGUF v{}, {:.1} MB",
        a.file.display(),
        g.version(),
        mb(g.file_size())
    );
    println!("\nmetadata ({} keys):", meta.len());
    for (k, v) in meta {
        println!("  {k} = {v}");
    }
    println!(
        "\ntensors: {} ({:.2} B parameters, {:.1} MB)",
        g.tensors().len(),
        params as f64 / 1e9,
        mb(weights)
    );
    for (ty, (n, bytes)) in types {
        println!("  {ty:>6}: {n:>4} tensors, {:>9.1} MB", mb(*bytes));
    }
    let names: Vec<&str> = Kernels::available()
        .iter()
        .map(|k| k.isa().name())
        .collect();
    println!(
        "\nkernels: {} (this CPU can run: {})",
        Kernels::default().isa(),
        names.join(", ")
    );
    if let Ok(cfg) = cfg {
        println!(
            "\nmodel: {} layers, hidden {}, ffn {}, heads {}/{} (head dim {}), vocab {}, context {}, rope theta {}",
            cfg.n_layer, cfg.hidden, cfg.ffn, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.vocab, cfg.context_length, cfg.rope_theta
        );
        println!("NoPE layers (no rotary embedding): {:?}", cfg.nope_layers());
        println!(
            "memory: {:.1} MB of weights (memory-mapped) + KV cache {:.3} MB/token in F32 ({:.1} MB at 4096 tokens; half in F16)",
            mb(weights),
            mb(cfg.kv_bytes_per_token(4)),
            mb(cfg.kv_bytes_per_token(4) * 4096)
        );
    }
    match problem {
        None => println!("validation: ok"),
        Some(p) => println!("\nnot a usable SmolLM3 model: {p}"),
    }
}

/// Options shared by commands that run the model.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// The GGUF model file.
    #[arg(long, env = "MODEL_PATH")]
    pub model: PathBuf,
    /// A tokenizer.json to use instead of the GGUF's vocabulary.
    #[arg(long, env = "TOKENIZER_PATH")]
    pub tokenizer: Option<PathBuf>,
    /// Matmul threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Store the KV cache in F16 (half the memory).
    #[arg(long)]
    pub kv_f16: bool,
}

impl ModelArgs {
    fn load(&self) -> anyhow::Result<LoadedModel> {
        LoadedModel::open(&self.model, self.tokenizer.as_deref())
    }

    fn kv_dtype(&self) -> DType {
        if self.kv_f16 {
            DType::F16
        } else {
            DType::F32
        }
    }
}

fn parse_tokens(s: &str) -> anyhow::Result<Vec<u32>> {
    s.split(',')
        .map(|t| {
            t.trim()
                .parse::<u32>()
                .with_context(|| format!("{t:?} is not a token id"))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .and_then(|v| {
            if v.is_empty() {
                bail!("no tokens given")
            } else {
                Ok(v)
            }
        })
}

/// `logits` arguments.
#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated token ids.
    #[arg(long)]
    pub tokens: String,
    /// Print logits for every position, not just the last.
    #[arg(long)]
    pub all_positions: bool,
}

/// Prints logits as JSON.
pub fn logits(a: LogitsArgs) -> anyhow::Result<()> {
    let m = a.model.load()?;
    let tokens = parse_tokens(&a.tokens)?;
    check_ids(&tokens, m.model.config().vocab)?;
    let mut cache = m.model.new_cache(tokens.len(), a.model.kv_dtype());
    if tokens.len() > cache.max_len() {
        bail!(
            "{} tokens exceed the model's context of {}",
            tokens.len(),
            cache.max_len()
        );
    }
    let which = if a.all_positions {
        Logits::All
    } else {
        Logits::Last
    };
    let out = m.model.forward(&tokens, &mut cache, which)?;
    let logits = if a.all_positions {
        json!(out.to_vec2::<f32>()?)
    } else {
        json!(out.to_vec1::<f32>()?)
    };
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(
        &mut stdout,
        &json!({"n_vocab": m.model.config().vocab, "logits": logits}),
    )?;
    writeln!(stdout)?;
    Ok(())
}

fn check_ids(tokens: &[u32], vocab: usize) -> anyhow::Result<()> {
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        bail!("token id {bad} is outside the vocabulary of {vocab} tokens");
    }
    Ok(())
}

/// `generate` arguments.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated prompt token ids.
    #[arg(long, conflicts_with = "prompt", required_unless_present = "prompt")]
    pub tokens: Option<String>,
    /// Prompt text (tokenized as is, special tokens parsed; no chat template).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Random seed for sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep going past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print `{"tokens":[…],"text":"…"}` instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

/// Continues a prompt.
pub fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let m = a.model.load()?;
    let prompt = match (&a.tokens, &a.prompt) {
        (Some(t), _) => parse_tokens(t)?,
        (None, Some(p)) => tokenizer::encode(&m.tokenizer, p)?,
        (None, None) => bail!("give --tokens or --prompt"),
    };
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    check_ids(&prompt, m.model.config().vocab)?;
    let ctx = m.model.config().context_length;
    if prompt.len() + 1 > ctx {
        bail!(
            "the prompt has {} tokens; the context holds {ctx}",
            prompt.len()
        );
    }
    let mut cache = m
        .model
        .new_cache((prompt.len() + a.max_tokens).min(ctx), a.model.kv_dtype());
    let params = crate::engine::sampler::SamplingParams {
        temperature: a.temperature,
        seed: a.seed,
        max_tokens: a.max_tokens,
        ..Default::default()
    };
    params.validate().map_err(anyhow::Error::msg)?;
    let mut sampler = crate::engine::sampler::Sampler::new(&params);
    let mut detok = crate::text::detok::Detokenizer::new(&m.tokenizer);
    let mut history = prompt.clone();
    let mut out = Vec::new();
    let mut logits = crate::engine::generate::prefill(&m.model, &prompt, &mut cache)?;
    let mut stdout = std::io::stdout().lock();
    while out.len() < a.max_tokens && cache.len() < cache.max_len() {
        let next = sampler.sample(&mut logits, &history);
        if !a.ignore_eos && m.specials.eos.contains(&next) {
            break;
        }
        out.push(next);
        history.push(next);
        if !a.json {
            write!(stdout, "{}", detok.push(next)?)?;
            stdout.flush()?;
        }
        if out.len() == a.max_tokens {
            break;
        }
        logits = m
            .model
            .forward(&[next], &mut cache, Logits::Last)?
            .to_vec1()?;
    }
    if a.json {
        let text = m
            .tokenizer
            .decode(&out, false)
            .map_err(anyhow::Error::msg)?;
        serde_json::to_writer(&mut stdout, &json!({"tokens": out, "text": text}))?;
        writeln!(stdout)?;
    } else {
        writeln!(
            stdout,
            "{}",
            m.tokenizer
                .decode(&out, false)
                .map_err(anyhow::Error::msg)?
        )?;
    }
    Ok(())
}
