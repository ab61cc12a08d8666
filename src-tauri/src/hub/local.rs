//! The models folder: where it is, what is in it, and keeping what is listed trustworthy.
//!
//! Layout, flat so a person can look inside: `NAME.gguf` (a verified or imported model),
//! `NAME.gguf.sha256` (its digest, in `sha256sum` format), `NAME.gguf.part` and
//! `NAME.gguf.part.json` (a download in progress), `NAME.gguf.corrupt` (quarantined, never
//! listed), and `tokenizer.json` beside the models.

use super::error::HubError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Environment variable that overrides the models folder.
pub const MODELS_DIR_ENV: &str = "SMOLLM3_MODELS_DIR";

/// The models folder: `explicit` (`--dir`, a setting), else `SMOLLM3_MODELS_DIR`, else the
/// platform's local data folder (`~/.local/share/smollm3-bot/models` on Linux, not the roaming
/// profile on Windows: a model is gigabytes).
pub fn models_dir(explicit: Option<&Path>) -> Result<PathBuf, HubError> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os(MODELS_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let dirs = directories::ProjectDirs::from("", "", "smollm3-bot").ok_or(HubError::NoDataDir)?;
    Ok(dirs.data_local_dir().join("models"))
}

/// The files that belong to one model name.
#[derive(Debug, Clone)]
pub(crate) struct FilePaths {
    pub file: PathBuf,
    pub part: PathBuf,
    pub part_info: PathBuf,
    pub sidecar: PathBuf,
    pub corrupt: PathBuf,
}

impl FilePaths {
    pub fn new(dir: &Path, name: &str) -> Self {
        let with = |suffix: &str| dir.join(format!("{name}{suffix}"));
        Self {
            file: dir.join(name),
            part: with(".part"),
            part_info: with(".part.json"),
            sidecar: with(".sha256"),
            corrupt: with(".corrupt"),
        }
    }
}

/// A model in the models folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalModel {
    /// File name, e.g. `SmolLM3-Q4_K_M.gguf`.
    pub name: String,
    /// Full path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// The digest recorded when it was verified or imported.
    pub sha256: Option<String>,
}

/// A download that stopped part way and can be resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialDownload {
    /// The name the file will have.
    pub name: String,
    /// Bytes on disk.
    pub bytes: u64,
    /// Expected size, when recorded.
    pub total: Option<u64>,
    /// `owner/name` it comes from, when recorded.
    pub repo: Option<String>,
}

/// The result of re-hashing a stored model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// File name.
    pub name: String,
    /// The digest computed now.
    pub sha256: String,
    /// Whether a recorded digest existed to compare with (else it has now been recorded).
    pub had_record: bool,
}

/// Models ready to use: `*.gguf` regular files, sorted by name. Partial and quarantined
/// files never appear.
pub fn list(dir: &Path) -> Result<Vec<LocalModel>, HubError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(HubError::io("cannot read", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| HubError::io("cannot read", dir, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !name.to_ascii_lowercase().ends_with(".gguf") {
            continue;
        }
        let path = entry.path();
        // Follows links, so an imported model linked from elsewhere lists with its real size.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let sha256 = read_sidecar(&FilePaths::new(dir, &name).sidecar);
        out.push(LocalModel {
            name,
            path,
            size: meta.len(),
            sha256,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Downloads in progress or paused, sorted by name.
pub fn partials(dir: &Path) -> Result<Vec<PartialDownload>, HubError> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for entry in entries.flatten() {
        let Ok(file_name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(name) = file_name.strip_suffix(".part") else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        let info: Option<serde_json::Value> = std::fs::read(dir.join(format!("{file_name}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let field = |k: &str| info.as_ref().and_then(|i| i.get(k).cloned());
        out.push(PartialDownload {
            name: name.to_owned(),
            bytes: meta.len(),
            total: field("size").and_then(|v| v.as_u64()),
            repo: field("repo").and_then(|v| v.as_str().map(str::to_owned)),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Re-hashes a stored model and compares it with its recorded digest; a mismatch quarantines
/// it. A model without a record gets one.
pub fn verify(dir: &Path, name: &str) -> Result<VerifyReport, HubError> {
    let paths = model_paths(dir, name)?;
    let sha256 = sha256_file(&paths.file)?;
    match read_sidecar(&paths.sidecar) {
        Some(recorded) if recorded == sha256 => Ok(VerifyReport {
            name: name.to_owned(),
            sha256,
            had_record: true,
        }),
        Some(recorded) => {
            let quarantined = quarantine(&paths.file, &paths.corrupt)?;
            let _ = std::fs::remove_file(&paths.sidecar);
            Err(HubError::ChecksumMismatch {
                file: name.to_owned(),
                expected: format!("sha256 {recorded}"),
                actual: format!("sha256 {sha256}"),
                quarantined,
            })
        }
        None => {
            write_sidecar(&paths.sidecar, &sha256, name)?;
            Ok(VerifyReport {
                name: name.to_owned(),
                sha256,
                had_record: false,
            })
        }
    }
}

/// Removes a model with its digest record and any partial or quarantined copy.
pub fn remove(dir: &Path, name: &str) -> Result<(), HubError> {
    let paths = model_paths(dir, name)?;
    // First, while the model's path still resolves to the name the cache file was keyed by.
    crate::model::prepared::remove_for(&paths.file);
    std::fs::remove_file(&paths.file).map_err(|e| HubError::io("cannot remove", &paths.file, e))?;
    for extra in [
        &paths.sidecar,
        &paths.part,
        &paths.part_info,
        &paths.corrupt,
    ] {
        let _ = std::fs::remove_file(extra);
    }
    Ok(())
}

/// Paths of a listed model, refusing names that would leave the folder.
fn model_paths(dir: &Path, name: &str) -> Result<FilePaths, HubError> {
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(HubError::InvalidInput(format!(
            "invalid model name {name:?}"
        )));
    }
    let paths = FilePaths::new(dir, name);
    if !paths.file.is_file() {
        return Err(HubError::NoSuchModel {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
        });
    }
    Ok(paths)
}

/// sha256 of a whole file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, HubError> {
    let mut file = std::fs::File::open(path).map_err(|e| HubError::io("cannot open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| HubError::io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The digest recorded in a `NAME.sha256` file.
pub(crate) fn read_sidecar(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let digest = text.split_whitespace().next()?.to_ascii_lowercase();
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then_some(digest)
}

/// Records a digest in `sha256sum` format, atomically.
pub(crate) fn write_sidecar(path: &Path, sha256: &str, name: &str) -> Result<(), HubError> {
    let tmp = path.with_extension("sha256.tmp");
    std::fs::write(&tmp, format!("{sha256}  {name}\n"))
        .map_err(|e| HubError::io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| HubError::io("cannot write", path, e))
}

/// Moves a bad file aside (replacing an older quarantined copy) and returns where it went.
pub(crate) fn quarantine(from: &Path, to: &Path) -> Result<PathBuf, HubError> {
    std::fs::rename(from, to).map_err(|e| HubError::io("cannot quarantine", from, e))?;
    tracing::warn!(file = %to.display(), "quarantined a file that failed verification");
    Ok(to.to_path_buf())
}

/// Makes a rename durable: fsync of the folder (a no-op where folders cannot be opened).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Lower-case hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_usable_models() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.gguf"), b"GGUF").unwrap();
        std::fs::write(d.join("b.gguf.part"), b"GG").unwrap();
        std::fs::write(d.join("c.gguf.corrupt"), b"XX").unwrap();
        std::fs::write(d.join("tokenizer.json"), b"{}").unwrap();
        let names: Vec<_> = list(d).unwrap().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["a.gguf"]);
        let parts = partials(d).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!((parts[0].name.as_str(), parts[0].bytes), ("b.gguf", 2));
    }

    #[test]
    fn verify_records_then_catches_changes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("m.gguf"), b"GGUF one").unwrap();
        assert!(!verify(d, "m.gguf").unwrap().had_record);
        assert!(verify(d, "m.gguf").unwrap().had_record);
        std::fs::write(d.join("m.gguf"), b"GGUF two").unwrap();
        assert!(matches!(
            verify(d, "m.gguf"),
            Err(HubError::ChecksumMismatch { .. })
        ));
        assert!(list(d).unwrap().is_empty());
        assert!(d.join("m.gguf.corrupt").exists());
    }

    #[test]
    fn remove_takes_the_prepared_weights_along() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("m.gguf"), b"GGUF").unwrap();
        std::fs::write(d.join("m.gguf.x8"), b"SMOLX8").unwrap();
        std::fs::write(d.join("other.gguf.x8"), b"SMOLX8").unwrap();
        remove(d, "m.gguf").unwrap();
        assert!(!d.join("m.gguf").exists());
        assert!(!d.join("m.gguf.x8").exists());
        assert!(d.join("other.gguf.x8").exists());
    }

    #[test]
    fn remove_refuses_paths() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            remove(dir.path(), "../x.gguf"),
            Err(HubError::InvalidInput(_))
        ));
        assert!(matches!(
            remove(dir.path(), "x.gguf"),
            Err(HubError::NoSuchModel { .. })
        ));
    }

    #[test]
    fn explicit_dir_wins() {
        assert_eq!(
            models_dir(Some(Path::new("/m"))).unwrap(),
            PathBuf::from("/m")
        );
    }
}
