//! Where the program's `tracing` output goes. Every command logs to stderr; the desktop app and
//! `serve`, which run for a long time without a terminal anyone watches, also write a log file
//! that rotates daily and keeps the last week. `RUST_LOG` sets the level (info by default for
//! those two, warnings for the short commands).

use std::path::PathBuf;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Environment variable naming the folder for log files (overrides the platform default).
pub const LOG_DIR_ENV: &str = "SMOLLM3_LOG_DIR";
/// Log file names start with this and end with the date, e.g. `smollm3-bot.2026-11-27.log`.
pub const LOG_FILE_PREFIX: &str = "smollm3-bot";
/// Log file names end with this.
pub const LOG_FILE_SUFFIX: &str = "log";
/// Daily files kept; older ones are deleted as new ones start.
pub const KEEP_FILES: usize = 7;

/// Keeps the file writer's thread alive; dropping it writes out what is still buffered.
/// Hold it for as long as the program runs.
#[must_use = "dropping the guard stops the log file"]
pub struct LogGuard {
    _file: Option<WorkerGuard>,
}

/// The log folder: `SMOLLM3_LOG_DIR` when set, else `~/Library/Logs/smollm3-bot` on macOS, the
/// state folder on Linux (`~/.local/state/smollm3-bot/logs`), and a `logs` folder in the local
/// data folder on Windows.
pub fn log_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(LOG_DIR_ENV).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if cfg!(target_os = "macos") {
        let home = directories::BaseDirs::new()?.home_dir().to_path_buf();
        return Some(home.join("Library/Logs/smollm3-bot"));
    }
    let dirs = directories::ProjectDirs::from("", "", "smollm3-bot")?;
    Some(
        dirs.state_dir()
            .unwrap_or_else(|| dirs.data_local_dir())
            .join("logs"),
    )
}

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Logs to stderr only, warnings and worse unless `RUST_LOG` says otherwise.
pub fn init_stderr() -> LogGuard {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter("warn"))
        .with_writer(std::io::stderr)
        .try_init();
    LogGuard { _file: None }
}

/// Logs to stderr and to the rotating file in [`log_dir`], info and worse unless `RUST_LOG`
/// says otherwise. When the folder cannot be used, says so on stderr and logs there alone.
pub fn init_with_file() -> LogGuard {
    let appender = log_dir()
        .ok_or_else(|| "no log folder is known for this platform".to_string())
        .and_then(|dir| {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            RollingFileAppender::builder()
                .rotation(Rotation::DAILY)
                .filename_prefix(LOG_FILE_PREFIX)
                .filename_suffix(LOG_FILE_SUFFIX)
                .max_log_files(KEEP_FILES)
                .build(&dir)
                .map(|a| (a, dir.clone()))
                .map_err(|e| format!("cannot write logs in {}: {e}", dir.display()))
        });
    let stderr = fmt::layer().with_writer(std::io::stderr);
    match appender {
        Ok((appender, dir)) => {
            // A slow disk must never hold up the engine or the window: lines go through a
            // queue to a writer thread.
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let file = fmt::layer().with_ansi(false).with_writer(writer);
            let installed = tracing_subscriber::registry()
                .with(stderr.and_then(file).with_filter(filter("info")))
                .try_init()
                .is_ok();
            if installed {
                tracing::info!(
                    version = env!("CARGO_PKG_VERSION"),
                    logs = %dir.display(),
                    "smollm3-bot started"
                );
            }
            LogGuard { _file: Some(guard) }
        }
        Err(why) => {
            let _ = tracing_subscriber::registry()
                .with(stderr.with_filter(filter("info")))
                .try_init();
            tracing::warn!("no log file: {why}");
            LogGuard { _file: None }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_folder_is_the_apps_own() {
        // The variable is read at call time; without it the platform folder is used.
        if std::env::var_os(LOG_DIR_ENV).is_none() {
            if let Some(dir) = log_dir() {
                assert!(
                    dir.components()
                        .any(|c| c.as_os_str() == std::ffi::OsStr::new("smollm3-bot")),
                    "{dir:?}"
                );
            }
        }
    }
}
