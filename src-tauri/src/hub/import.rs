//! Bringing a `.gguf` the user already has into the models folder.
//!
//! The file is validated first by a function the caller passes in (the model code knows what
//! a usable SmolLM3 file is; this module only moves bytes), then copied, or linked to save the
//! space. Copies are hashed as they are written and land under their final name only once
//! complete, like downloads.

use super::error::{human_bytes, HubError};
use super::local::hex;
use super::local::{self, FilePaths, LocalModel};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

/// How an imported file gets into the models folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImportMode {
    /// An independent copy: the original may be deleted afterwards.
    #[default]
    Copy,
    /// A hard link when on the same file system, else a symbolic link: no extra space, but the
    /// original must stay where it is.
    Link,
}

/// Validates `path` with `validate`, then copies or links it into `dir` and records its
/// sha256. A `tokenizer.json` beside the file is copied too when the folder has none.
pub fn import(
    path: &Path,
    dir: &Path,
    mode: ImportMode,
    validate: &dyn Fn(&Path) -> anyhow::Result<()>,
) -> Result<LocalModel, HubError> {
    let meta = std::fs::metadata(path).map_err(|e| HubError::io("cannot read", path, e))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.to_ascii_lowercase().ends_with(".gguf") && meta.is_file())
        .ok_or_else(|| HubError::InvalidModel {
            path: path.to_path_buf(),
            reason: "expected a .gguf file".into(),
        })?
        .to_owned();
    validate(path).map_err(|e| HubError::InvalidModel {
        path: path.to_path_buf(),
        reason: format!("{e:#}"),
    })?;
    std::fs::create_dir_all(dir)
        .map_err(|e| HubError::io("cannot create the models folder", dir, e))?;
    let paths = FilePaths::new(dir, &name);
    if std::fs::symlink_metadata(&paths.file).is_ok() {
        return Err(HubError::InvalidInput(format!(
            "a model named {name} is already in {}; remove it first (`smollm3-bot models rm {name}`)",
            dir.display()
        )));
    }
    let source = std::fs::canonicalize(path).map_err(|e| HubError::io("cannot read", path, e))?;

    let sha256 = match mode {
        ImportMode::Copy => copy_verified(&source, &paths, meta.len())?,
        ImportMode::Link => {
            if std::fs::hard_link(&source, &paths.file).is_err() {
                symlink(&source, &paths.file)
                    .map_err(|e| HubError::io("cannot link to", &paths.file, e))?;
            }
            local::sha256_file(&paths.file)?
        }
    };
    local::write_sidecar(&paths.sidecar, &sha256, &name)?;
    local::sync_dir(dir);

    if let Some(tokenizer) = path.parent().map(|p| p.join("tokenizer.json")) {
        let target = dir.join("tokenizer.json");
        if tokenizer.is_file() && !target.exists() {
            std::fs::copy(&tokenizer, &target)
                .map_err(|e| HubError::io("cannot copy", &tokenizer, e))?;
        }
    }
    Ok(LocalModel {
        name,
        path: paths.file,
        size: meta.len(),
        sha256: Some(sha256),
    })
}

/// Copies through `NAME.part`, hashing as it goes; returns the sha256.
fn copy_verified(source: &Path, paths: &FilePaths, len: u64) -> Result<String, HubError> {
    let dir = paths.file.parent().unwrap_or(Path::new("."));
    if let Ok(available) = fs4::available_space(dir) {
        if available < len {
            return Err(HubError::InsufficientSpace {
                dir: dir.to_path_buf(),
                needed: human_bytes(len),
                available: human_bytes(available),
            });
        }
    }
    let mut from =
        std::fs::File::open(source).map_err(|e| HubError::io("cannot open", source, e))?;
    let mut to = std::fs::File::create(&paths.part)
        .map_err(|e| HubError::io("cannot create", &paths.part, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let copied = (|| {
        loop {
            let n = from
                .read(&mut buf)
                .map_err(|e| HubError::io("cannot read", source, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            to.write_all(&buf[..n])
                .map_err(|e| HubError::io("cannot write", &paths.part, e))?;
        }
        to.sync_all()
            .map_err(|e| HubError::io("cannot flush", &paths.part, e))
    })();
    if let Err(e) = copied {
        drop(to);
        let _ = std::fs::remove_file(&paths.part);
        return Err(e);
    }
    drop(to);
    std::fs::rename(&paths.part, &paths.file)
        .map_err(|e| HubError::io("cannot move the copy to", &paths.file, e))?;
    Ok(hex(&hasher.finalize()))
}

#[cfg(unix)]
fn symlink(source: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(source, link)
}

#[cfg(windows)]
fn symlink(source: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_file(source, link)
}

/// A minimal validator: the file starts with the GGUF magic and a known version. The model
/// code provides the full check (architecture, tokenizer); this one serves where it is not
/// wired in.
pub fn check_gguf_header(path: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut header = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .with_context(|| format!("cannot read the header of {}", path.display()))?;
    anyhow::ensure!(&header[..4] == b"GGUF", "not a GGUF file (bad magic)");
    let version = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    anyhow::ensure!(
        (2..=3).contains(&version),
        "unsupported GGUF version {version}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gguf(dir: &Path, name: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&[7u8; 100]);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn copy_import_lists_and_records_digest() {
        let src = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let file = gguf(src.path(), "mine.gguf");
        std::fs::write(src.path().join("tokenizer.json"), b"{}").unwrap();
        let m = import(&file, models.path(), ImportMode::Copy, &check_gguf_header).unwrap();
        assert_eq!(
            m.sha256.as_deref(),
            Some(local::sha256_file(&file).unwrap().as_str())
        );
        assert_eq!(local::list(models.path()).unwrap(), vec![m]);
        assert!(models.path().join("tokenizer.json").is_file());
        assert!(
            local::verify(models.path(), "mine.gguf")
                .unwrap()
                .had_record
        );
        // A second import of the same name is refused rather than overwriting.
        assert!(import(&file, models.path(), ImportMode::Copy, &|_| Ok(())).is_err());
    }

    #[test]
    fn link_import_takes_no_copy() {
        let src = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let file = gguf(src.path(), "linked.gguf");
        let m = import(&file, models.path(), ImportMode::Link, &|_| Ok(())).unwrap();
        assert_eq!(
            std::fs::read(&m.path).unwrap(),
            std::fs::read(&file).unwrap()
        );
    }

    #[test]
    fn rejected_files_are_not_imported() {
        let src = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let file = gguf(src.path(), "llama.gguf");
        let err = import(&file, models.path(), ImportMode::Copy, &|_| {
            anyhow::bail!("architecture is llama, not smollm3")
        })
        .unwrap_err();
        assert!(err.to_string().contains("not smollm3"), "{err}");
        assert!(local::list(models.path()).unwrap().is_empty());

        let text = src.path().join("notes.gguf");
        std::fs::write(&text, b"hello world").unwrap();
        assert!(import(&text, models.path(), ImportMode::Copy, &check_gguf_header).is_err());
        let other = src.path().join("model.bin");
        std::fs::write(&other, b"GGUF\x03\0\0\0").unwrap();
        assert!(import(&other, models.path(), ImportMode::Copy, &|_| Ok(())).is_err());
    }
}
