//! A bad model file gets a clear error naming the problem, never a panic.

use smollm3_bot::engine::loader::{validate_file, LoadedModel};
use smollm3_bot::model::gguf::{GgmlType, GgufWriter, Value};
use smollm3_bot::model::synth::{self, Preset, Quant};
use smollm3_bot::model::{GgufError, GgufFile, Model};
use std::path::{Path, PathBuf};
use std::process::Command;

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
            Value::String(arch.into())
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

/// Copies `src` to `dst` with one metadata value replaced.
fn with_meta(src: &Path, dst: &Path, key: &str, value: Value) {
    let g = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.meta(k, if k == key { value.clone() } else { v.clone() });
    }
    for t in g.tensors() {
        w.tensor(&t.name, &t.dims, t.ty, g.tensor_data(t).to_vec());
    }
    let mut f = std::fs::File::create(dst).unwrap();
    w.write_to(&mut f).unwrap();
}

/// Runs the binary with its address space limited to `limit` bytes: an allocation sized by a
/// number in the file, rather than by the file, fails there instead of swapping the machine.
fn run_limited(args: &[&std::ffi::OsStr], limit: u64) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smollm3-bot"));
    cmd.args(args).env("SMOLLM3_PREPARED", "off");
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("the binary runs")
}

/// Address space the commands below may use: far more than a 3 MB model needs, far less than
/// a list sized by millions of layers.
const ADDRESS_SPACE: u64 = 1536 << 20;

#[test]
fn a_huge_block_count_is_refused_before_anything_is_sized_by_it() {
    let d = tempfile::tempdir().unwrap();
    let src = tiny(d.path());
    let layers = smollm3_bot::model::Config::from_gguf(&GgufFile::open(&src).unwrap())
        .unwrap()
        .n_layer;
    for count in [4_194_304u64, 1 << 31] {
        let p = d.path().join(format!("layers-{count}.gguf"));
        with_meta(&src, &p, "smollm3.block_count", Value::U64(count));
        let e = open_err(&p);
        assert!(
            e.contains("block_count")
                && e.contains(&count.to_string())
                && e.contains(&format!("only {layers} layers")),
            "{e}"
        );
        let model = p.as_os_str();
        for args in [
            vec!["inspect".as_ref(), model],
            vec![
                "logits".as_ref(),
                "--model".as_ref(),
                model,
                "--tokens".as_ref(),
                "1,2".as_ref(),
            ],
        ] {
            let out = run_limited(&args, ADDRESS_SPACE);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{args:?} must fail cleanly (not abort): {:?}\n{stderr}",
                out.status
            );
            assert!(stderr.contains("block_count"), "{args:?}: {stderr}");
        }
    }
}

#[test]
fn inspect_fails_for_an_unusable_model_and_passes_a_good_one() {
    let d = tempfile::tempdir().unwrap();
    let good = tiny(d.path());
    let out = run_limited(&["inspect".as_ref(), good.as_os_str()], ADDRESS_SPACE);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("validation: ok"));

    let bad = d.path().join("missing.gguf");
    rewrite(
        &good,
        &bad,
        |name, _, _| name != "blk.3.attn_k.weight",
        "smollm3",
    );
    for json in [false, true] {
        let mut args = vec!["inspect".as_ref(), bad.as_os_str()];
        if json {
            args.push("--json".as_ref());
        }
        let out = run_limited(&args, ADDRESS_SPACE);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        // The report still comes, and says what is wrong.
        assert!(stdout.contains("blk.3.attn_k.weight"), "{stdout}");
        assert!(stderr.contains("not a usable SmolLM3 model"), "{stderr}");
    }
}

#[test]
fn metadata_counts_are_bounded_by_the_file() {
    let d = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(tiny(d.path())).unwrap();
    // Header: magic, version, tensor count, metadata count; then the first key and its type.
    let mut lie = bytes.clone();
    lie[8..16].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let e = GgufFile::from_bytes("lie.gguf", &lie)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than the file can hold"), "{e}");
    let mut lie = bytes.clone();
    lie[16..24].copy_from_slice(&((bytes.len() as u64) / 4).to_le_bytes());
    assert!(GgufFile::from_bytes("lie.gguf", &lie).is_err());

    // An array of u64 whose count fits the file in bytes but not in eight-byte items.
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("smollm3".into()));
    w.meta("big", Value::Array(vec![Value::U64(7); 4]));
    let mut file = Vec::new();
    w.write_to(&mut file).unwrap();
    let count_at = find(&file, &4u64.to_le_bytes()).expect("the array count");
    let room = (file.len() - count_at - 8) as u64;
    file[count_at..count_at + 8].copy_from_slice(&(room / 2).to_le_bytes());
    let e = GgufFile::from_bytes("arr.gguf", &file)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than the file can hold"), "{e}");
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The models screen names a file's quantization from its header, and from its tensors when
/// the header does not say.
#[test]
fn quantization_is_named_from_the_header_or_the_tensors() {
    let d = tempfile::tempdir().unwrap();
    let p = tiny(d.path());
    assert_eq!(GgufFile::open(&p).unwrap().quantization(), "Q4_K_M");
    let q8 = d.path().join("q8.gguf");
    synth::write(Preset::Tiny, Quant::Q8_0, 3, &q8).unwrap();
    assert_eq!(GgufFile::open(&q8).unwrap().quantization(), "Q8_0");
    // A number llama.cpp does not define: the type with most bytes (Q8_0 for every matrix).
    let odd = d.path().join("odd.gguf");
    with_meta(&q8, &odd, "general.file_type", Value::U32(999));
    assert_eq!(GgufFile::open(&odd).unwrap().quantization(), "mostly Q8_0");
}
