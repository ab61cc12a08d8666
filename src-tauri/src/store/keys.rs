//! API keys of saved servers, kept out of the database: in the system's secret store (Secret
//! Service on Linux, the Keychain on macOS, the Credential Manager on Windows) when the build
//! has one (the desktop build) and it answers, else in a file only the user may read, beside
//! the database. A database copied or exported never carries a key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The service name the system store files the keys under.
#[cfg(feature = "keyring")]
const SERVICE: &str = "smollm3-bot";

/// The file the keys go to where there is no system store.
pub const KEYS_FILE: &str = "server-keys.json";

/// Where keys are kept.
#[derive(Debug)]
enum Backend {
    /// The system's secret store.
    #[cfg(feature = "keyring")]
    System,
    /// A JSON map in a file readable by the user alone.
    File(PathBuf),
    /// Nowhere lasting (a database in memory: tests and throwaway services).
    Memory(Mutex<BTreeMap<String, String>>),
}

/// The keys of saved servers.
#[derive(Debug)]
pub struct KeyStore {
    backend: Backend,
}

impl KeyStore {
    /// The system's store if it answers, else the file [`KEYS_FILE`] in `dir`.
    pub fn open(dir: &Path) -> Self {
        #[cfg(feature = "keyring")]
        match system_store_answers() {
            Ok(()) => {
                return Self {
                    backend: Backend::System,
                }
            }
            Err(why) => tracing::info!(
                "no system secret store ({why}); server keys go to a private file in {}",
                dir.display()
            ),
        }
        Self::file(dir.join(KEYS_FILE))
    }

    /// Keys in the file at `path` (created on the first key, readable by the user alone).
    pub fn file(path: PathBuf) -> Self {
        Self {
            backend: Backend::File(path),
        }
    }

    /// Keys kept in memory only.
    pub fn memory() -> Self {
        Self {
            backend: Backend::Memory(Mutex::default()),
        }
    }

    /// Whether the keys are in the system's secret store (not a file or memory).
    pub fn is_system(&self) -> bool {
        match &self.backend {
            #[cfg(feature = "keyring")]
            Backend::System => true,
            _ => false,
        }
    }

    /// Where the keys are, for a person to read ("the system keyring", "a private file …").
    pub fn place(&self) -> String {
        match &self.backend {
            #[cfg(feature = "keyring")]
            Backend::System => "the system's secret store".into(),
            Backend::File(path) => format!(
                "a file only you can read ({}; no system secret store answered)",
                path.display()
            ),
            Backend::Memory(_) => "memory only (until the app closes)".into(),
        }
    }

    /// The key saved as `name`, if any.
    pub fn get(&self, name: &str) -> Result<Option<String>, String> {
        match &self.backend {
            #[cfg(feature = "keyring")]
            Backend::System => match entry(name)?.get_password() {
                Ok(key) => Ok(Some(key)),
                Err(keyring::Error::NoEntry) => Ok(None),
                Err(e) => Err(format!("cannot read the key from the secret store: {e}")),
            },
            Backend::File(path) => Ok(read_file(path)?.remove(name)),
            Backend::Memory(map) => Ok(lock(map).get(name).cloned()),
        }
    }

    /// Saves `key` as `name`, replacing what was there.
    pub fn set(&self, name: &str, key: &str) -> Result<(), String> {
        match &self.backend {
            #[cfg(feature = "keyring")]
            Backend::System => entry(name)?
                .set_password(key)
                .map_err(|e| format!("cannot save the key in the secret store: {e}")),
            Backend::File(path) => {
                let mut keys = read_file(path)?;
                keys.insert(name.into(), key.into());
                write_file(path, &keys)
            }
            Backend::Memory(map) => {
                lock(map).insert(name.into(), key.into());
                Ok(())
            }
        }
    }

    /// Deletes the key saved as `name`; nothing saved is not an error.
    pub fn delete(&self, name: &str) -> Result<(), String> {
        match &self.backend {
            #[cfg(feature = "keyring")]
            Backend::System => match entry(name)?.delete_credential() {
                Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
                Err(e) => Err(format!("cannot delete the key from the secret store: {e}")),
            },
            Backend::File(path) => {
                let mut keys = read_file(path)?;
                if keys.remove(name).is_some() {
                    write_file(path, &keys)?;
                }
                Ok(())
            }
            Backend::Memory(map) => {
                lock(map).remove(name);
                Ok(())
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(feature = "keyring")]
fn entry(name: &str) -> Result<keyring::Entry, String> {
    keyring::Entry::new(SERVICE, name).map_err(|e| format!("the secret store refused: {e}"))
}

/// Whether the system store can be read (an absent entry counts as an answer).
#[cfg(feature = "keyring")]
fn system_store_answers() -> Result<(), String> {
    match entry("probe")?.get_password() {
        Ok(_) | Err(keyring::Error::NoEntry) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn read_file(path: &Path) -> Result<BTreeMap<String, String>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a keys file: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes the map to a temporary file made readable by the user alone, then renames it over
/// the old one, so a crash leaves either file whole.
fn write_file(path: &Path, keys: &BTreeMap<String, String>) -> Result<(), String> {
    use std::io::Write;
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(fail)?;
    let json = serde_json::to_vec_pretty(keys).map_err(|e| e.to_string())?;
    file.write_all(&json).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_store_keeps_keys_private_and_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEYS_FILE);
        let keys = KeyStore::file(path.clone());
        assert_eq!(keys.get("server-1").unwrap(), None);
        keys.set("server-1", "sk-one").unwrap();
        keys.set("server-2", "sk-two").unwrap();
        keys.set("server-1", "sk-one-again").unwrap();
        let again = KeyStore::file(path.clone());
        assert_eq!(
            again.get("server-1").unwrap().as_deref(),
            Some("sk-one-again")
        );
        again.delete("server-1").unwrap();
        again.delete("server-9").unwrap();
        assert_eq!(keys.get("server-1").unwrap(), None);
        assert_eq!(keys.get("server-2").unwrap().as_deref(), Some("sk-two"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "keys file mode {mode:o}");
        }
        std::fs::write(&path, b"not json").unwrap();
        assert!(keys
            .get("server-2")
            .unwrap_err()
            .contains("not a keys file"));
    }

    #[test]
    fn a_memory_store_forgets_on_delete() {
        let keys = KeyStore::memory();
        keys.set("a", "1").unwrap();
        assert_eq!(keys.get("a").unwrap().as_deref(), Some("1"));
        keys.delete("a").unwrap();
        assert_eq!(keys.get("a").unwrap(), None);
    }
}
