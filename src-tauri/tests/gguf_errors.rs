//! A bad model file gets a clear error naming the problem, never a panic.

use smollm3_bot::engine::loader::{validate_file, LoadedModel};
use smollm3_bot::model::gguf::{GgmlType, GgufWriter};
use smollm3_bot::model::synth::{self, Preset, Quant};
use smollm3_bot::model::{GgufError, GgufFile, Model};
use std::path::{Path, PathBuf};

fn tiny(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.gguf");
    synth::write(Preset::Tiny, Quant::Q4KM, 3, &p).unwrap();
    p
}

/// Rewrites `src` to `dst`, letting `edit` change the tensor list and metadata.
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, &mut Vec<u64>, &mut GgmlType) -> bool,
    arch: &str,
) {
    let g = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        let v = if k == "general.architecture" {
            smollm3_bot::model::gguf::Value::String(arch.into())
        } else {
            v.clone()
        };
        let k = k.replacen("smollm3.", &format!("{arch}."), 1);
        w.meta(&k, v);
    }
    for t in g.tensors() {
        let (mut dims, mut ty) = (t.dims.clone(), t.ty);
        if edit(&t.name, &mut dims, &mut ty) {
            w.tensor(&t.name, &dims, ty, g.tensor_data(t).to_vec());
        }
    }
    let mut f = std::fs::File::create(dst).unwrap();
    w.write_to(&mut f).unwrap();
}

fn open_err(p: &Path) -> String {
    let e = match GgufFile::open(p) {
        Err(e) => e,
        Ok(g) => Model::load(&g).expect_err("the bad file loaded"),
    };
    // The loader wraps the same error with the path; both must be readable.
    let loader = LoadedModel::open(p, None).expect_err("the loader accepted a bad file");
    assert!(format!("{loader:#}").contains(&e.to_string()), "{loader:#}");
    assert!(validate_file(p).is_err());
    e.to_string()
}

#[test]
fn not_a_gguf() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.gguf");
    std::fs::write(&p, b"PK\x03\x04 this is a zip file, not a model").unwrap();
    let e = open_err(&p);
    assert!(e.contains("not a GGUF"), "{e}");
    std::fs::write(&p, b"").unwrap();
    assert!(open_err(&p).contains("empty"));
}

#[test]
fn truncated_files() {
    let d = tempfile::tempdir().unwrap();
    let full = std::fs::read(tiny(d.path())).unwrap();
    let p = d.path().join("cut.gguf");
    for cut in [6, 40, 5000, full.len() / 2, full.len() - 1] {
        std::fs::write(&p, &full[..cut]).unwrap();
        let e = open_err(&p);
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
    }
}

#[test]
fn foreign_architecture() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("llama.gguf");
    rewrite(&tiny(d.path()), &p, |_, _, _| true, "llama");
    let e = open_err(&p);
    assert!(e.contains("architecture") && e.contains("llama"), "{e}");
}

#[test]
fn missing_tensor() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("missing.gguf");
    rewrite(
        &tiny(d.path()),
        &p,
        |name, _, _| name != "blk.5.ffn_up.weight",
        "smollm3",
    );
    let e = open_err(&p);
    assert!(
        e.contains("blk.5.ffn_up.weight") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn wrong_shape() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("shape.gguf");
    rewrite(
        &tiny(d.path()),
        &p,
        |name, dims, _| {
            if name == "blk.2.attn_output.weight" {
                // Same number of elements, so only the shape check can catch it.
                *dims = vec![512, 128];
            }
            true
        },
        "smollm3",
    );
    let e = open_err(&p);
    assert!(
        e.contains("blk.2.attn_output.weight") && e.contains("shape"),
        "{e}"
    );
}

#[test]
fn unsupported_type() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("type.gguf");
    rewrite(
        &tiny(d.path()),
        &p,
        |name, _, ty| {
            if name == "blk.0.attn_q.weight" {
                *ty = GgmlType::Other(99);
            }
            true
        },
        "smollm3",
    );
    let e = open_err(&p);
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("not supported"),
        "{e}"
    );
}

#[test]
fn good_file_loads() {
    let d = tempfile::tempdir().unwrap();
    let p = tiny(d.path());
    validate_file(&p).unwrap();
    assert!(matches!(
        GgufFile::open(d.path().join("nope.gguf")),
        Err(GgufError::Io { .. })
    ));
}
