//! Where the model's integration tests find the shared fixtures.
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared fixtures: `$SMOLLM3_FIXTURES`, else `../shared/fixtures` beside the repository.
pub fn fixtures() -> PathBuf {
    if let Ok(p) = std::env::var("SMOLLM3_FIXTURES") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

/// A reference file (GGUF, or llama.cpp's outputs for it) by name.
pub fn reference(name: &str) -> PathBuf {
    let p = fixtures().join("reference").join(name);
    assert!(
        p.exists(),
        "fixture {} not found (set SMOLLM3_FIXTURES)",
        p.display()
    );
    p
}

/// Reads a JSON file.
pub fn json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}
