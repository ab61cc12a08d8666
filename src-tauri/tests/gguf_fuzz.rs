//! A bounded fuzz run of the GGUF header and metadata parser, and of the checks that read the
//! metadata (configuration, tensor list, tokenizer): a real synthetic model with random edits
//! in its header — bytes flipped, counts and lengths replaced by extreme values, the file cut
//! or padded — must always give a model or an error, never a panic, and never an allocation
//! sized by a claim instead of by the file (the parser's counts are checked against the bytes
//! left, so a run under the default test limits stays small).
//!
//! No nightly toolchain is needed (cargo-fuzz needs one); the run is a fixed number of
//! proptest cases with a fixed seed, a few seconds in CI.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use smollm3_bot::model::gguf::GgufFile;
use smollm3_bot::model::synth::{self, Preset, Quant};
use smollm3_bot::model::Config as ModelConfig;
use smollm3_bot::text::tokenizer;
use std::sync::OnceLock;

/// One change to the file.
#[derive(Debug, Clone)]
enum Edit {
    /// Replace the byte at (a fraction of the header) with a value.
    Byte(f64, u8),
    /// Write a little-endian u64 there: where a count or a length sits, it becomes that claim.
    Word(f64, u64),
    /// Write a u32 there (types, dimension counts).
    Half(f64, u32),
    /// Cut the file there.
    Cut(f64),
    /// Insert bytes there, shifting everything after.
    Insert(f64, Vec<u8>),
}

/// Values that break parsers: zero, one, the edges of the integer widths, the file's size.
fn claim() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u32::MAX as u64),
        Just(1 << 31),
        Just(4_194_304),
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(1 << 40),
        any::<u64>(),
        0u64..4096,
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = 0.0f64..1.0;
    prop_oneof![
        (at.clone(), any::<u8>()).prop_map(|(a, b)| Edit::Byte(a, b)),
        (at.clone(), claim()).prop_map(|(a, v)| Edit::Word(a, v)),
        (
            at.clone(),
            prop_oneof![Just(0u32), Just(9), Just(13), Just(u32::MAX), 0u32..16]
        )
            .prop_map(|(a, v)| Edit::Half(a, v)),
        at.clone().prop_map(Edit::Cut),
        (at, proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(a, b)| Edit::Insert(a, b)),
    ]
}

/// The base file and where its header ends (edits land there: past it is tensor data, which
/// the parser never interprets).
fn base() -> &'static (Vec<u8>, usize) {
    static BASE: OnceLock<(Vec<u8>, usize)> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        synth::write(Preset::Tiny, Quant::Q8_0, 9, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header = GgufFile::from_bytes("tiny.gguf", &bytes)
            .unwrap()
            .data_offset();
        (bytes, header)
    })
}

fn apply(bytes: &mut Vec<u8>, header: usize, edit: &Edit) {
    let at = |f: f64| ((header as f64 * f) as usize).min(bytes.len().saturating_sub(1));
    match edit {
        Edit::Byte(f, b) => {
            let i = at(*f);
            bytes[i] = *b;
        }
        Edit::Word(f, v) => {
            let i = at(*f).min(bytes.len().saturating_sub(8));
            bytes[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        Edit::Half(f, v) => {
            let i = at(*f).min(bytes.len().saturating_sub(4));
            bytes[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
        Edit::Cut(f) => bytes.truncate(at(*f)),
        Edit::Insert(f, b) => {
            let i = at(*f);
            bytes.splice(i..i, b.iter().copied());
        }
    }
}

/// Everything that reads metadata, as loading a model does (without mapping weights).
fn read_all(bytes: &[u8]) {
    let Ok(g) = GgufFile::from_bytes("fuzz.gguf", bytes) else {
        return;
    };
    if let Ok(cfg) = ModelConfig::from_gguf(&g) {
        let _ = cfg.validate_tensors(&g);
        let _ = cfg.nope_layers();
    }
    let _ = tokenizer::from_gguf(&g);
}

#[test]
fn random_header_edits_give_errors_not_panics() {
    let (bytes, header) = base();
    // The untouched file reads in full.
    let g = GgufFile::from_bytes("tiny.gguf", bytes).unwrap();
    ModelConfig::from_gguf(&g)
        .unwrap()
        .validate_tensors(&g)
        .unwrap();

    let config = Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    };
    let seed = [0x5e; 32];
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let started = std::time::Instant::now();
    runner
        .run(&proptest::collection::vec(edit(), 1..6), |edits| {
            let mut b = bytes.clone();
            for e in &edits {
                if b.is_empty() {
                    break;
                }
                apply(&mut b, *header, e);
            }
            read_all(&b);
            Ok(())
        })
        .unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(120),
        "the bounded run stays short: {:?}",
        started.elapsed()
    );
}
