//! Where the conversations and settings live, shared by the desktop app and `serve`.

use anyhow::Context;
use std::path::PathBuf;

/// Environment variable naming the folder for the app's data (overrides the platform default).
pub const DATA_DIR_ENV: &str = "SMOLLM3_BOT_DATA_DIR";

/// The database of conversations and settings: in `dir` when given, else in
/// `SMOLLM3_BOT_DATA_DIR` when set, else in the platform's data folder (shared with the
/// command line).
pub fn database_path(dir: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty()) {
        return Ok(dir.join(crate::store::DATABASE_FILE));
    }
    if let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join(crate::store::DATABASE_FILE));
    }
    crate::store::Store::default_path().context("no data folder is known for this platform")
}

/// A folder this version keeps somewhere else than earlier versions did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relocation {
    /// Where an earlier version put it.
    pub from: PathBuf,
    /// Where it belongs now.
    pub to: PathBuf,
}

/// The folders that moved, for this platform: models (and their prepared weights) to the
/// local data folder, not the roaming one Windows syncs with the user's account (2–6 GB);
/// logs to the state folder on Linux (`~/.local/state/smollm3-bot/logs`). Where old and new
/// are the same folder (models on Linux and macOS) there is nothing to move.
pub fn relocations() -> Vec<Relocation> {
    let Some(dirs) = directories::ProjectDirs::from("", "", "smollm3-bot") else {
        return Vec::new();
    };
    let mut moved = vec![Relocation {
        from: dirs.data_dir().join("models"),
        to: dirs.data_local_dir().join("models"),
    }];
    if let Some(state) = dirs.state_dir() {
        moved.push(Relocation {
            from: dirs.data_local_dir().join("logs"),
            to: state.join("logs"),
        });
    }
    moved.retain(|r| r.from != r.to);
    moved
}

/// Moves each folder still where an earlier version put it, once: a folder already at its new
/// place is left alone (and so is the old one, for the person to look at). Returns the moves
/// tried and how each went (it runs before logging starts, which may write into a moved
/// folder, so the caller logs them); after a failed one (another volume, a file in use) the
/// app goes on with the new, empty folder.
pub fn move_once(relocations: &[Relocation]) -> Vec<(Relocation, std::io::Result<()>)> {
    relocations
        .iter()
        .filter(|r| r.from.is_dir() && !r.to.exists())
        .map(|r| {
            let moved =
                r.to.parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|_| std::fs::rename(&r.from, &r.to));
            (r.clone(), moved)
        })
        .collect()
}

/// Logs what [`move_once`] did.
pub fn log_moves(moves: &[(Relocation, std::io::Result<()>)]) {
    for (r, result) in moves {
        match result {
            Ok(()) => {
                tracing::info!(from = %r.from.display(), to = %r.to.display(), "folder moved")
            }
            Err(e) => tracing::warn!(
                from = %r.from.display(),
                to = %r.to.display(),
                error = %e,
                "could not move the folder; it stays where it was"
            ),
        }
    }
}

/// The relocations as (from, to) pairs, for the settings that name files inside them.
pub fn moved_pairs() -> Vec<(PathBuf, PathBuf)> {
    relocations().into_iter().map(|r| (r.from, r.to)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_moves_once_and_an_existing_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let r = Relocation {
            from: dir.path().join("Roaming/smollm3-bot/models"),
            to: dir.path().join("Local/smollm3-bot/models"),
        };
        std::fs::create_dir_all(&r.from).unwrap();
        std::fs::write(r.from.join("m.gguf"), b"GGUF").unwrap();
        let moves = move_once(std::slice::from_ref(&r));
        assert_eq!(moves.len(), 1);
        assert!(moves[0].1.is_ok() && moves[0].0 == r);
        assert_eq!(std::fs::read(r.to.join("m.gguf")).unwrap(), b"GGUF");
        assert!(!r.from.exists());
        // Again: nothing to move. An old folder that reappears beside a new one stays.
        assert!(move_once(std::slice::from_ref(&r)).is_empty());
        std::fs::create_dir_all(&r.from).unwrap();
        assert!(move_once(std::slice::from_ref(&r)).is_empty());
        assert!(r.from.exists() && r.to.join("m.gguf").exists());
    }

    #[test]
    fn on_linux_logs_go_to_the_state_folder_and_models_stay() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let r = relocations();
        assert!(r.iter().all(|r| !r.from.ends_with("models")), "{r:?}");
        if let Some(logs) = r.iter().find(|r| r.to.ends_with("logs")) {
            assert!(logs.to.to_string_lossy().contains("state"), "{logs:?}");
        }
    }
}
