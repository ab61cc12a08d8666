//! One process per data folder.
//!
//! The database is shared by every part of the app that opens the data folder (the desktop
//! app, `serve`'s browser UI), and opening it recovers from a crash by marking replies left
//! `streaming` as `interrupted`. With two processes on one folder, the second would mark the
//! first one's live reply interrupted, and every later save of that reply would fail. So the
//! folder is owned by one process at a time, through an OS lock on a file beside the database
//! (released by the OS when the process ends, however it ends). The file also says who holds
//! it (process id, and the address a server answers on) so the second process can tell the
//! user where the running one is.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::StoreError;

/// Name of the lock file inside the data folder.
pub const LOCK_FILE: &str = "smollm3-bot.lock";

/// Who holds a data folder, as its lock file says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    /// The holding process.
    pub pid: Option<u32>,
    /// Where it serves the browser UI, when it does.
    pub url: Option<String>,
}

impl Holder {
    fn parse(text: &str) -> Self {
        let mut h = Holder::default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("pid", v)) => h.pid = v.trim().parse().ok(),
                Some(("url", v)) => h.url = Some(v.trim().to_string()).filter(|u| !u.is_empty()),
                _ => {}
            }
        }
        h
    }

    fn render(&self) -> String {
        let mut out = String::new();
        if let Some(pid) = self.pid {
            out.push_str(&format!("pid {pid}\n"));
        }
        if let Some(url) = &self.url {
            out.push_str(&format!("url {url}\n"));
        }
        out
    }
}

/// The held lock on a data folder; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct DataLock {
    file: File,
    path: PathBuf,
}

impl DataLock {
    /// Takes the data folder `dir` for this process, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                // The holder writes these few bytes right after locking; a read that races
                // with it just names no process.
                let _ = file.read_to_string(&mut text);
                return Err(StoreError::Locked {
                    dir: dir.to_path_buf(),
                    holder: Holder::parse(&text),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let lock = Self { file, path };
        lock.write(&Holder {
            pid: Some(std::process::id()),
            url: None,
        })?;
        Ok(lock)
    }

    /// Records where this process serves the browser UI, for a second process to point to.
    pub fn advertise(&self, url: &str) -> Result<(), StoreError> {
        self.write(&Holder {
            pid: Some(std::process::id()),
            url: Some(url.to_string()),
        })
    }

    fn write(&self, holder: &Holder) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = &self.file;
        f.set_len(0).map_err(io)?;
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        f.write_all(holder.render().as_bytes()).map_err(io)?;
        f.flush().map_err(io)
    }
}

impl Drop for DataLock {
    fn drop(&mut self) {
        // The OS releases the lock with the file; emptying it first keeps a stale pid from
        // being reported by a reader that finds it unlocked but not yet rewritten.
        let _ = self.file.set_len(0);
    }
}

/// The message for a data folder that another process holds.
pub fn locked_message(dir: &Path, holder: &Holder) -> String {
    let who = match holder.pid {
        Some(pid) => format!("SmolLM3 Bot is already running with this data folder (pid {pid})"),
        None => "SmolLM3 Bot is already running with this data folder".to_string(),
    };
    let instead = match &holder.url {
        Some(url) => format!("open {url} instead, or "),
        None => "use that one, or ".to_string(),
    };
    format!(
        "{who}: {}. Two processes on one data folder would cut each other's replies short; \
         {instead}give this one its own folder with --data-dir DIR (or SMOLLM3_BOT_DATA_DIR)",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_folder_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataLock::acquire(dir.path()).unwrap();
        first.advertise("http://127.0.0.1:3000").unwrap();
        match DataLock::acquire(dir.path()) {
            Err(StoreError::Locked { holder, .. }) => {
                assert_eq!(holder.pid, Some(std::process::id()));
                assert_eq!(holder.url.as_deref(), Some("http://127.0.0.1:3000"));
                let m = locked_message(dir.path(), &holder);
                assert!(
                    m.contains("already running")
                        && m.contains("open http://127.0.0.1:3000 instead"),
                    "{m}"
                );
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        let again = DataLock::acquire(dir.path()).unwrap();
        drop(again);
    }
}
