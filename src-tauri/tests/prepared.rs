//! The interleaved copy of a model's Q4_K weights: built once beside the model, reused while
//! it matches, rebuilt when it does not, and giving the same logits as the GGUF layout.

use candle_core::DType;
use smollm3_bot::model::prepared::{self, Prepared};
use smollm3_bot::model::synth::{self, Preset, Quant};
use smollm3_bot::model::{GgufFile, Logits, Model};
use std::path::{Path, PathBuf};

const TOKENS: [u32; 12] = [1, 17, 300, 42, 5, 999, 64, 7, 128, 256, 3, 77];

fn logits(model: &Model) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(64, DType::F16);
    model
        .forward(&TOKENS, &mut cache, Logits::All)
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

/// Loads `g` on the GGUF layout and with the prepared file at `at`, and checks they agree.
fn load_both(g: &GgufFile, at: &[PathBuf]) -> (Prepared, Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let plain = Model::load(g).unwrap();
    let mut fast = Model::load(g).unwrap();
    let p = prepared::open_or_build_at(g, at)
        .unwrap()
        .expect("the model has Q4_K matrices");
    let n = fast.attach_interleaved(&p);
    // Every matrix the file holds is used (each layer's, and the output projection where its
    // rows group by sixteen).
    assert_eq!(n, prepared::eligible(g).len(), "matrices attached");
    // Every layer's seven matrices are Q4_K except the Q6_K ones of the "more bits" layers.
    assert!(
        n >= 5 * plain.config().n_layer,
        "only {n} matrices attached"
    );
    (p, logits(&plain), logits(&fast))
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>]) {
    let mut worst = 0f32;
    let mut total = 0f64;
    let mut count = 0usize;
    let mut clear_leads_kept = 0;
    let mut clear_leads = 0;
    for (x, y) in a.iter().zip(b) {
        for (u, v) in x.iter().zip(y) {
            worst = worst.max((u - v).abs());
            total += f64::from((u - v).abs());
            count += 1;
        }
        // Where the reference's best token leads the runner-up by more than the noise bound
        // below, the other layout must pick it too.
        let best = argmax(x);
        let runner_up = x
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != best)
            .fold(f32::MIN, |m, (_, &v)| m.max(v));
        if x[best] - runner_up > 2.0 * MAX_DELTA {
            clear_leads += 1;
            clear_leads_kept += usize::from(argmax(y) == best);
        }
    }
    let mean = total / count as f64;
    eprintln!(
        "interleaved vs GGUF layout: max |Δ logit| {worst:e}, mean {mean:e}, \
         clear top-1 kept {clear_leads_kept}/{clear_leads}"
    );
    // Both layouts compute the same integer sums; only the order of float additions differs
    // (each product agrees with candle's within 1e-5, see the kernel tests). A last-bit
    // difference can move an activation across an 8-bit rounding step in the next matmul's
    // quantization, and a random-weight model amplifies that through its layers, so a near
    // tie between two tokens may flip (on the tiny reference model, whose rows are one or two
    // blocks long, the two agree bit for bit). A wrong kernel moves logits by whole units,
    // everywhere: the bounds below are a tenth of that.
    assert!(worst <= MAX_DELTA, "max |Δ logit| {worst}");
    assert!(mean <= 0.05, "mean |Δ logit| {mean}");
    assert_eq!(clear_leads_kept, clear_leads, "a clear best token changed");
}

/// The largest logit difference float-order noise explains on the small synthetic model.
const MAX_DELTA: f32 = 0.25;

fn skip() -> bool {
    let off = !prepared::enabled();
    if off {
        eprintln!("skipped: this CPU has no SIMD path, or interleaving is switched off");
    }
    off
}

fn model(dir: &Path, seed: u64) -> PathBuf {
    let path = dir.join("m.gguf");
    synth::write(Preset::Small, Quant::Q4KM, seed, &path).unwrap();
    path
}

#[test]
fn built_once_then_reused_with_the_same_logits() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path(), 3);
    let at = [dir.path().join("m.gguf.x8")];
    let g = GgufFile::open(&path).unwrap();
    let (p, plain, fast) = load_both(&g, &at);
    assert!(p.built, "the first load writes the file");
    assert_eq!(p.path(), at[0]);
    assert_close(&plain, &fast);
    // Same size as the matrices it replaces: no second copy of the model.
    let q4k: usize = prepared::eligible(&g).iter().map(|t| t.size).sum();
    let len = std::fs::metadata(&at[0]).unwrap().len() as usize;
    assert!(
        len >= q4k && len < q4k + 4096 * (p.len() + 2),
        "{len} bytes for {q4k}"
    );

    let (again, _, fast2) = load_both(&g, &at);
    assert!(!again.built, "the second load maps the existing file");
    assert_eq!(fast, fast2);
}

#[test]
fn a_file_for_other_weights_or_cut_short_is_rebuilt() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let at = [dir.path().join("m.gguf.x8")];
    let path = model(dir.path(), 1);
    let p = prepared::open_or_build_at(&GgufFile::open(&path).unwrap(), &at)
        .unwrap()
        .unwrap();
    assert!(p.built);
    drop(p);

    // Same name, same header, other weights.
    let path = model(dir.path(), 2);
    let g = GgufFile::open(&path).unwrap();
    let (p, plain, fast) = load_both(&g, &at);
    assert!(p.built, "a prepared file of other weights was used");
    assert_close(&plain, &fast);
    drop((p, g));

    // Cut short.
    let len = std::fs::metadata(&at[0]).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&at[0])
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let g = GgufFile::open(&path).unwrap();
    let (p, plain, fast) = load_both(&g, &at);
    assert!(p.built, "a truncated prepared file was used");
    assert_close(&plain, &fast);
}

#[test]
fn an_unwritable_place_falls_through_to_the_next() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path(), 4);
    let g = GgufFile::open(&path).unwrap();
    // A regular file where a folder should be: nothing can be created under it.
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"x").unwrap();
    let bad = blocker.join("m.gguf.x8");
    let good = dir.path().join("cache").join("m.x8");
    let p = prepared::open_or_build_at(&g, &[bad.clone(), good.clone()])
        .unwrap()
        .unwrap();
    assert_eq!(p.path(), good);

    // Nowhere to write: an error, and the caller keeps the GGUF layout.
    let err = prepared::open_or_build_at(&g, &[bad]).unwrap_err();
    assert!(err.to_string().contains("not-a-folder"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
