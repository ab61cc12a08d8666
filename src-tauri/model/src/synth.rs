//! Synthetic SmolLM3 models: random weights in the real tensor layout and quantization mix,
//! a working byte-level BPE tokenizer and the SmolLM3 chat template in the metadata.
//!
//! The real weights cannot be fetched everywhere the project is built and tested; speed does
//! not depend on weight values, and correctness is checked against llama.cpp on the same
//! files. The same seed always gives the same bytes.

use super::gguf::{GgmlType, GgufWriter, Value};
use candle_core::quantized::k_quants::{BlockQ4K, BlockQ6K, BlockQ8_0};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;

/// Model sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Preset {
    /// 8 layers, hidden 256, vocab 1000: seconds to make, milliseconds per token.
    Tiny,
    /// Tiny's vocabulary with 12 wider layers: a second, bigger model for tests that switch
    /// models.
    Small,
    /// The real SmolLM3-3B dimensions (36 layers, hidden 2048, vocab 128256).
    #[cfg_attr(feature = "clap", value(name = "3b"))]
    ThreeB,
}

/// Weight encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Quant {
    /// Every weight F32.
    F32,
    /// Every matrix Q8_0.
    #[cfg_attr(feature = "clap", value(name = "q8_0"))]
    Q8_0,
    /// llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for the embedding and for `attn_v`/`ffn_down`
    /// on the layers llama.cpp gives more bits.
    #[cfg_attr(feature = "clap", value(name = "q4_k_m"))]
    Q4KM,
}

/// Dimensions of a preset.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    /// Layers.
    pub n_layer: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP size.
    pub ffn: usize,
    /// Query heads.
    pub n_head: usize,
    /// KV heads.
    pub n_kv_head: usize,
    /// Vocabulary (including 16 or 256 special tokens at the end).
    pub vocab: usize,
    /// Special tokens at the end of the vocabulary.
    pub n_special: usize,
}

impl Preset {
    /// The dimensions.
    pub fn dims(self) -> Dims {
        match self {
            Preset::Tiny => Dims {
                n_layer: 8,
                hidden: 256,
                ffn: 512,
                n_head: 4,
                n_kv_head: 2,
                vocab: 1000,
                n_special: 16,
            },
            Preset::Small => Dims {
                n_layer: 12,
                hidden: 512,
                ffn: 1024,
                n_head: 8,
                n_kv_head: 2,
                vocab: 1000,
                n_special: 16,
            },
            Preset::ThreeB => Dims {
                n_layer: 36,
                hidden: 2048,
                ffn: 11008,
                n_head: 16,
                n_kv_head: 4,
                vocab: 128256,
                n_special: 256,
            },
        }
    }
}

/// llama.cpp's rule for which layers get more bits in the `_M` mixes.
pub fn more_bits(il: usize, n_layer: usize) -> bool {
    let first = n_layer / 8;
    il < first || il >= 7 * n_layer / 8 || (il - first) % 3 == 2
}

/// The special tokens laid out as SmolLM3 lays them out, by offset from the first special id.
fn special_name(offset: usize) -> String {
    match offset {
        0 => "<|begin_of_text|>".into(),
        1 => "<|end_of_text|>".into(),
        2 => "<think>".into(),
        3 => "</think>".into(),
        4 => "<|finetune_right_pad_id|>".into(),
        11 => "<|im_start|>".into(),
        12 => "<|im_end|>".into(),
        n => format!("<|reserved_special_token_{n}|>"),
    }
}

/// GPT-2's byte → printable character mapping used by byte-level BPE vocabularies.
pub fn byte_to_char() -> [char; 256] {
    let printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut map = ['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        if printable.contains(&b) {
            map[b as usize] = char::from_u32(b).unwrap();
        } else {
            map[b as usize] = char::from_u32(256 + extra).unwrap();
            extra += 1;
        }
    }
    map
}

/// Text the tokenizer's first merges are learnt from, so common words and the chat markup
/// become single tokens as in a real vocabulary.
const CORPUS: &str = "The quick brown fox jumps over the lazy dog. Hello world! \
You are a helpful assistant. The user asks a question and the assistant answers it. \
Today Date: Reasoning Mode: Knowledge Cutoff Date: June 2025 system user assistant think \
Let me think about this step by step. First, we need to find the answer. Then we check it. \
This is a test of the tokenizer, with numbers like 1234 and 2025, and punctuation: yes, no; maybe? \
In the beginning was the word, and the word was with the model, and the model was small and fast. \
Python code: def main(): print(\"hello\") return 0 # comment \n\n The end.";

/// Builds the vocabulary (without specials) and merges: 256 byte tokens, merges learnt on the
/// corpus, then deterministic merges of existing tokens until the vocabulary is full.
fn build_bpe(n_regular: usize) -> (Vec<String>, Vec<String>) {
    let b2c = byte_to_char();
    let enc = |s: &str| -> Vec<String> { s.bytes().map(|b| b2c[b as usize].to_string()).collect() };
    let mut vocab: Vec<String> = (0..256).map(|b| b2c[b].to_string()).collect();
    let mut known: HashSet<String> = vocab.iter().cloned().collect();
    let mut merges = Vec::new();
    // Words as the Llama-3 splitter would see them: a leading space stays with the word.
    let mut words: Vec<Vec<String>> = Vec::new();
    let mut cur = String::new();
    for ch in CORPUS.chars() {
        if ch == ' ' && !cur.is_empty() {
            words.push(enc(&cur));
            cur.clear();
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        words.push(enc(&cur));
    }
    while vocab.len() < n_regular {
        let mut counts: HashMap<(String, String), usize> = HashMap::new();
        for w in &words {
            for p in w.windows(2) {
                *counts.entry((p[0].clone(), p[1].clone())).or_default() += 1;
            }
        }
        // Highest count first; ties broken by the pair itself so the order is deterministic.
        let Some(((a, b), n)) = counts
            .into_iter()
            .max_by(|x, y| x.1.cmp(&y.1).then_with(|| y.0.cmp(&x.0)))
        else {
            break;
        };
        if n < 2 {
            break;
        }
        let joined = format!("{a}{b}");
        for w in words.iter_mut() {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == a && w[i + 1] == b {
                    w[i] = joined.clone();
                    w.remove(i + 1);
                }
                i += 1;
            }
        }
        if known.insert(joined.clone()) {
            vocab.push(joined);
            merges.push(format!("{a} {b}"));
        }
    }
    // Fill the rest with merges of a space or a letter with lowercase letters, then of
    // existing multi-character tokens with letters, breadth first.
    let letters: Vec<String> = ('a'..='z').map(|c| c.to_string()).collect();
    let mut firsts: Vec<String> = std::iter::once("Ġ".to_string())
        .chain(letters.iter().cloned())
        .collect();
    let mut start = 0;
    'outer: while vocab.len() < n_regular {
        let end = firsts.len();
        let mut next = Vec::new();
        for a in &firsts[start..end] {
            for b in &letters {
                if vocab.len() >= n_regular {
                    break 'outer;
                }
                let joined = format!("{a}{b}");
                if known.insert(joined.clone()) {
                    vocab.push(joined.clone());
                    merges.push(format!("{a} {b}"));
                    next.push(joined);
                }
            }
        }
        start = end;
        firsts.extend(next);
        if start == firsts.len() {
            break;
        }
    }
    (vocab, merges)
}

/// Tokenizer metadata for a vocabulary of `vocab` ids with `n_special` specials at the end.
fn tokenizer_metadata(w: &mut GgufWriter, vocab: usize, n_special: usize) {
    let n_regular = vocab - n_special;
    let (mut tokens, merges) = build_bpe(n_regular);
    assert_eq!(tokens.len(), n_regular, "vocabulary generation fell short");
    let mut types = vec![1i32; n_regular];
    for off in 0..n_special {
        let name = special_name(off);
        types.push(if name == "<think>" || name == "</think>" {
            4
        } else {
            3
        });
        tokens.push(name);
    }
    let first = n_regular as u32;
    w.meta("tokenizer.ggml.model", Value::String("gpt2".into()))
        .meta("tokenizer.ggml.pre", Value::String("llama-bpe".into()))
        .meta(
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        )
        .meta(
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        )
        .meta(
            "tokenizer.ggml.merges",
            Value::Array(merges.into_iter().map(Value::String).collect()),
        )
        .meta("tokenizer.ggml.bos_token_id", Value::U32(first))
        .meta("tokenizer.ggml.eos_token_id", Value::U32(first + 12))
        .meta("tokenizer.ggml.padding_token_id", Value::U32(first + 4))
        .meta("tokenizer.ggml.add_bos_token", Value::Bool(false))
        .meta(
            "tokenizer.chat_template",
            // The file `text::chat_template` bundles; read here too so the model layer needs no text.
            Value::String(include_str!("../../assets/smollm3.jinja").into()),
        );
}

/// Encodes `xs` as `ty`.
fn encode(xs: &[f32], ty: GgmlType) -> Vec<u8> {
    fn blocks<T: candle_core::quantized::GgmlType>(xs: &[f32]) -> Vec<u8> {
        let mut out = vec![T::zeros(); xs.len() / T::BLCK_SIZE];
        T::from_float(xs, &mut out);
        let n = std::mem::size_of_val(out.as_slice());
        // SAFETY: block types are plain old data; we copy their bytes out.
        unsafe { std::slice::from_raw_parts(out.as_ptr() as *const u8, n) }.to_vec()
    }
    match ty {
        GgmlType::F32 => xs.iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlType::Q8_0 => blocks::<BlockQ8_0>(xs),
        GgmlType::Q4K => blocks::<BlockQ4K>(xs),
        GgmlType::Q6K => blocks::<BlockQ6K>(xs),
        other => unreachable!("synth does not write {other}"),
    }
}

/// One tensor to make: name, ggml dims, type, and whether it is a norm (values around 1).
struct Spec {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    norm: bool,
}

fn specs(d: &Dims, quant: Quant) -> Vec<Spec> {
    let (h, f) = (d.hidden as u64, d.ffn as u64);
    let hd = d.hidden / d.n_head;
    let kv = (d.n_kv_head * hd) as u64;
    let matrix = |name: &str, il: Option<usize>| -> GgmlType {
        match quant {
            Quant::F32 => GgmlType::F32,
            Quant::Q8_0 => GgmlType::Q8_0,
            Quant::Q4KM => match (name, il) {
                ("token_embd", _) => GgmlType::Q6K,
                ("attn_v" | "ffn_down", Some(il)) if more_bits(il, d.n_layer) => GgmlType::Q6K,
                _ => GgmlType::Q4K,
            },
        }
    };
    let mut out = vec![
        Spec {
            name: "token_embd.weight".into(),
            dims: vec![h, d.vocab as u64],
            ty: matrix("token_embd", None),
            norm: false,
        },
        Spec {
            name: "output_norm.weight".into(),
            dims: vec![h],
            ty: GgmlType::F32,
            norm: true,
        },
    ];
    for il in 0..d.n_layer {
        let t = |n: &str, dims: Vec<u64>| Spec {
            name: format!("blk.{il}.{n}.weight"),
            ty: if dims.len() == 1 {
                GgmlType::F32
            } else {
                matrix(n, Some(il))
            },
            norm: dims.len() == 1,
            dims,
        };
        out.extend([
            t("attn_norm", vec![h]),
            t("attn_q", vec![h, h]),
            t("attn_k", vec![h, kv]),
            t("attn_v", vec![h, kv]),
            t("attn_output", vec![h, h]),
            t("ffn_norm", vec![h]),
            t("ffn_gate", vec![h, f]),
            t("ffn_up", vec![h, f]),
            t("ffn_down", vec![f, h]),
        ]);
    }
    out
}

fn make_tensor(spec: &Spec, seed: u64, index: usize, std: f32) -> Vec<u8> {
    // One generator per tensor, keyed by its index, so tensors can be made in parallel and
    // the bytes never depend on scheduling.
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64);
    let n: u64 = spec.dims.iter().product();
    let xs: Vec<f32> = if spec.norm {
        (0..n)
            .map(|_| 1.0 + (rng.gen::<f32>() - 0.5) * 0.2)
            .collect()
    } else {
        let dist = Normal::new(0.0f32, std).expect("valid std");
        (0..n).map(|_| dist.sample(&mut rng)).collect()
    };
    encode(&xs, spec.ty)
}

/// Writes a synthetic model to `out` (through a temporary file renamed at the end).
pub fn write(preset: Preset, quant: Quant, seed: u64, out: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let d = preset.dims();
    let mut w = GgufWriter::new();
    let name = format!("SmolLM3 synthetic {preset:?} {quant:?} seed {seed}");
    w.meta("general.architecture", Value::String("smollm3".into()))
        .meta("general.type", Value::String("model".into()))
        .meta("general.name", Value::String(name))
        .meta("smollm3.context_length", Value::U32(65536))
        .meta("smollm3.embedding_length", Value::U32(d.hidden as u32))
        .meta("smollm3.block_count", Value::U32(d.n_layer as u32))
        .meta("smollm3.feed_forward_length", Value::U32(d.ffn as u32))
        .meta("smollm3.attention.head_count", Value::U32(d.n_head as u32))
        .meta(
            "smollm3.attention.head_count_kv",
            Value::U32(d.n_kv_head as u32),
        )
        .meta("smollm3.rope.freq_base", Value::F32(5_000_000.0))
        .meta("smollm3.attention.layer_norm_rms_epsilon", Value::F32(1e-6))
        .meta("smollm3.vocab_size", Value::U32(d.vocab as u32))
        .meta(
            "smollm3.rope.dimension_count",
            Value::U32((d.hidden / d.n_head) as u32),
        )
        .meta("general.quantization_version", Value::U32(2))
        .meta(
            "general.file_type",
            Value::U32(match quant {
                Quant::F32 => 0,
                Quant::Q8_0 => 7,
                Quant::Q4KM => 15,
            }),
        );
    tokenizer_metadata(&mut w, d.vocab, d.n_special);
    let specs = specs(&d, quant);
    let std = 1.0 / (d.hidden as f32).sqrt();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(8);
    let mut data: Vec<Option<Vec<u8>>> = vec![None; specs.len()];
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(&mut data);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= specs.len() {
                    break;
                }
                let bytes = make_tensor(&specs[i], seed, i, std);
                results.lock().unwrap()[i] = Some(bytes);
            });
        }
    });
    for (spec, bytes) in specs.iter().zip(data) {
        w.tensor(
            &spec.name,
            &spec.dims,
            spec.ty,
            bytes.expect("every tensor made"),
        );
    }
    let tmp = out.with_extension("gguf.part");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut bw = std::io::BufWriter::with_capacity(1 << 20, file);
    w.write_to(&mut bw)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    bw.flush()?;
    bw.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot rename to {}", out.display()))?;
    Ok(())
}
