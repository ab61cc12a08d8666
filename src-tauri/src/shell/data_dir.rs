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
