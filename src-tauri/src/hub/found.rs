//! Models already on this computer: `.gguf` files other tools downloaded, in the places those
//! tools keep them, offered by the first-run wizard so nobody downloads 1.9 GB twice.
//!
//! The places: the Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`), LM Studio's models folders (`~/.lmstudio/models`, and the older
//! `~/.cache/lm-studio/models`), and llama.cpp's cache (`LLAMA_CACHE`, else the platform cache
//! folder's `llama.cpp`). Files are used where they are (no copy, no link): they belong to the
//! tool that put them there. The walk is bounded in depth and in entries, so a huge or looping
//! folder costs a fraction of a second, and symbolic links are followed only to files (the
//! Hugging Face cache's snapshots are links into its blobs).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// One of the standard places other tools keep models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The tool's name, as a person knows it ("Hugging Face cache").
    pub tool: &'static str,
    /// The folder.
    pub dir: PathBuf,
}

/// A usable model found in one of the places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundModel {
    /// Where it is (the path a person would recognise; for the Hugging Face cache the
    /// snapshot's link, not the blob it points to).
    pub path: PathBuf,
    /// The tool whose folder holds it.
    pub tool: &'static str,
    /// A short name: the file name, with the repository it came from when the layout says so.
    pub label: String,
    /// Size in bytes.
    pub size: u64,
}

/// Folders deeper than this under a place are not looked into (the Hugging Face cache needs
/// four: `models--o--n/snapshots/REV/sub/file`).
const MAX_DEPTH: usize = 5;
/// At most this many directory entries are read per place.
const MAX_ENTRIES: usize = 20_000;

/// The standard places on this machine, from the environment and the home folder; folders
/// that do not exist are left out.
pub fn standard_places() -> Vec<Place> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = directories::BaseDirs::new();
    let home = base.as_ref().map(|b| b.home_dir().to_path_buf());
    let cache = base.as_ref().map(|b| b.cache_dir().to_path_buf());
    places_from(&env, home.as_deref(), cache.as_deref())
}

/// The places given how to read the environment, the home folder and the platform's cache
/// folder (separate from [`standard_places`] so tests can give their own).
pub fn places_from(
    env: &dyn Fn(&str) -> Option<PathBuf>,
    home: Option<&Path>,
    cache: Option<&Path>,
) -> Vec<Place> {
    let mut places = Vec::new();
    let hf = env("HF_HUB_CACHE")
        .or_else(|| env("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| home.map(|h| h.join(".cache/huggingface/hub")));
    places.extend(hf.map(|dir| Place {
        tool: "Hugging Face cache",
        dir,
    }));
    if let Some(home) = home {
        for dir in [".lmstudio/models", ".cache/lm-studio/models"] {
            places.push(Place {
                tool: "LM Studio",
                dir: home.join(dir),
            });
        }
    }
    let llama = env("LLAMA_CACHE").or_else(|| cache.map(|c| c.join("llama.cpp")));
    places.extend(llama.map(|dir| Place {
        tool: "llama.cpp cache",
        dir,
    }));
    places.retain(|p| p.dir.is_dir());
    places
}

/// The `.gguf` files in `places` that `usable` accepts (the model code knows what a usable
/// SmolLM3 file is), each file once even when several links lead to it.
pub fn find(places: &[Place], usable: &dyn Fn(&Path) -> anyhow::Result<()>) -> Vec<FoundModel> {
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for place in places {
        for path in gguf_files(&place.dir) {
            let Ok(real) = std::fs::canonicalize(&path) else {
                continue;
            };
            if !seen.insert(real.clone()) {
                continue;
            }
            match usable(&path) {
                Ok(()) => found.push(FoundModel {
                    label: label(&place.dir, &path),
                    size: std::fs::metadata(&real).map(|m| m.len()).unwrap_or(0),
                    tool: place.tool,
                    path,
                }),
                Err(e) => tracing::debug!(path = %path.display(), error = %e, "not offered"),
            }
        }
    }
    found
}

/// The `.gguf` files under `root`, breadth first, within the depth and entry bounds.
fn gguf_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut queue = std::collections::VecDeque::from([(root.to_path_buf(), 0usize)]);
    let mut entries = 0;
    while let Some((dir, depth)) = queue.pop_front() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in read.flatten() {
            entries += 1;
            if entries > MAX_ENTRIES {
                tracing::debug!(root = %root.display(), "stopped looking: too many entries");
                return files;
            }
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            // Links are followed to files only: a linked folder could lead in a circle.
            if kind.is_dir() {
                if depth + 1 < MAX_DEPTH {
                    queue.push_back((path, depth + 1));
                }
            } else if name.to_ascii_lowercase().ends_with(".gguf") && path.is_file() {
                files.push(path);
            }
        }
    }
    files
}

/// `owner/name · FILE` for a file in the Hugging Face cache or LM Studio's folders (both keep
/// the repository in the path), else the file name.
fn label(place: &Path, path: &Path) -> String {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rel: Vec<String> = path
        .strip_prefix(place)
        .map(|r| {
            r.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let hf_repo = rel.first().and_then(|f| f.strip_prefix("models--"));
    let repo = match hf_repo {
        Some(name) => Some(name.replacen("--", "/", 1)),
        // LM Studio: PUBLISHER/REPO/FILE.
        None if rel.len() == 3 => Some(format!("{}/{}", rel[0], rel[1])),
        None => None,
    };
    match repo {
        Some(repo) => format!("{repo} · {file}"),
        None => file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn places_follow_the_environment_then_the_home_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let cache = tmp.path().join("cache");
        for d in [
            "home/.cache/huggingface/hub",
            "home/.lmstudio/models",
            "cache/llama.cpp",
            "hf-home/hub",
            "hub-cache",
        ] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        let dirs = |env: &dyn Fn(&str) -> Option<PathBuf>| -> Vec<PathBuf> {
            places_from(env, Some(&home), Some(&cache))
                .into_iter()
                .map(|p| p.dir)
                .collect()
        };
        assert_eq!(
            dirs(&|_| None),
            [
                home.join(".cache/huggingface/hub"),
                home.join(".lmstudio/models"),
                cache.join("llama.cpp"),
            ]
        );
        let hf_home = tmp.path().join("hf-home");
        assert_eq!(
            dirs(&|n| (n == "HF_HOME").then(|| hf_home.clone()))[0],
            hf_home.join("hub")
        );
        let hub_cache = tmp.path().join("hub-cache");
        let both = |n: &str| match n {
            "HF_HUB_CACHE" => Some(hub_cache.clone()),
            "HF_HOME" => Some(hf_home.clone()),
            _ => None,
        };
        assert_eq!(dirs(&both)[0], hub_cache);
        // A place that does not exist is not listed.
        let missing = tmp.path().join("nowhere");
        assert!(!dirs(&|n| (n == "LLAMA_CACHE").then(|| missing.clone())).contains(&missing));
    }

    #[cfg(unix)]
    #[test]
    fn the_hugging_face_layout_is_found_once_with_its_repository() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = tmp.path().join("hub");
        let repo = hub.join("models--ggml-org--SmolLM3-3B-GGUF");
        touch(&repo.join("blobs/abc123"), b"GGUF good");
        let snap = repo.join("snapshots/0123abcd");
        std::fs::create_dir_all(&snap).unwrap();
        std::os::unix::fs::symlink("../../blobs/abc123", snap.join("SmolLM3-Q4_K_M.gguf")).unwrap();
        touch(
            &hub.join("models--x--y/snapshots/r/other.gguf"),
            b"GGUF bad",
        );
        touch(
            &hub.join("models--x--y/snapshots/r/notes.txt"),
            b"GGUF good",
        );
        // A second snapshot linking the same blob is the same model.
        let snap2 = repo.join("snapshots/4567");
        std::fs::create_dir_all(&snap2).unwrap();
        std::os::unix::fs::symlink("../../blobs/abc123", snap2.join("SmolLM3-Q4_K_M.gguf"))
            .unwrap();
        let places = [Place {
            tool: "Hugging Face cache",
            dir: hub.clone(),
        }];
        let usable = |p: &Path| {
            let bytes = std::fs::read(p)?;
            anyhow::ensure!(bytes.ends_with(b"good"), "not SmolLM3");
            Ok(())
        };
        let found = find(&places, &usable);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].label,
            "ggml-org/SmolLM3-3B-GGUF · SmolLM3-Q4_K_M.gguf"
        );
        assert_eq!(found[0].tool, "Hugging Face cache");
        assert_eq!(found[0].size, 9);
        assert!(found[0].path.starts_with(repo.join("snapshots")));
    }

    #[cfg(unix)]
    #[test]
    fn the_walk_is_bounded_and_does_not_follow_folder_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("models");
        // A link back to the root would loop forever if followed.
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(&root, root.join("loop")).unwrap();
        touch(&root.join("a/b/c/d/deep.gguf"), b"x");
        touch(&root.join("a/b/c/d/e/f/too-deep.gguf"), b"x");
        touch(&root.join("pub/repo/m.GGUF"), b"x");
        let files = gguf_files(&root);
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"deep.gguf".to_owned()), "{names:?}");
        assert!(names.contains(&"m.GGUF".to_owned()), "{names:?}");
        assert!(!names.contains(&"too-deep.gguf".to_owned()), "{names:?}");
        assert_eq!(
            label(&root, &root.join("pub/repo/m.GGUF")),
            "pub/repo · m.GGUF"
        );
        assert_eq!(label(&root, &root.join("a/x.gguf")), "x.gguf");
    }
}
