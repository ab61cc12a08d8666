//! User settings: one typed [`Settings`] value, stored as one JSON value per key so that
//! adding a setting needs no migration and an unknown or unreadable key falls back to its
//! default instead of losing the others.

use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Result, Store, StoreError};
use crate::engine::SamplingParams;

/// Colour scheme of the interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Theme {
    /// Follow the operating system.
    #[default]
    System,
    /// Always light.
    Light,
    /// Always dark.
    Dark,
}

impl Theme {
    /// The name used in forms and CSS.
    pub fn as_str(self) -> &'static str {
        match self {
            Theme::System => "system",
            Theme::Light => "light",
            Theme::Dark => "dark",
        }
    }

    /// Parses a name from a form; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "system" => Some(Theme::System),
            "light" => Some(Theme::Light),
            "dark" => Some(Theme::Dark),
            _ => None,
        }
    }
}

/// Everything the user can set. Missing keys take the values of [`Settings::default`]; the
/// sampling fields are stored flat, one key each (`temperature`, `top_p`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Prepended to every conversation (empty: the chat template's default).
    pub system_prompt: String,
    /// Sampling for new replies.
    #[serde(flatten)]
    pub sampling: SamplingParams,
    /// Context window in tokens (prompt and reply together).
    pub context_size: usize,
    /// CPU threads for inference (0: one per core); read once when the app starts.
    pub threads: usize,
    /// Whether new conversations start with reasoning on.
    #[serde(rename = "thinking")]
    pub thinking_default: bool,
    /// Most reasoning tokens per reply (0: no limit).
    pub thinking_budget: usize,
    /// Colour scheme.
    pub theme: Theme,
    /// The GGUF model file (empty: none chosen; `MODEL_PATH` overrides).
    pub model_path: String,
    /// A `tokenizer.json` for the model (empty: read it from the GGUF; `TOKENIZER_PATH`
    /// overrides).
    pub tokenizer_path: String,
    /// A mirror of the Hugging Face hub for model downloads (empty: the hub, or `HF_ENDPOINT`).
    /// The Hugging Face token is never sent to it.
    pub hub_mirror: String,
    /// Whether the desktop app serves the browser UI and the API (off until switched on).
    pub server_enabled: bool,
    /// The port the desktop app's server listens on.
    pub server_port: u16,
    /// Whether other devices may reach the desktop app's server (every request then needs
    /// the key).
    pub server_lan: bool,
    /// Disk space for conversations' saved model state (KV snapshots), in MB: the least
    /// recently used go first; 0 keeps none.
    pub snapshot_budget_mb: u64,
    /// Replies the model writes at once (for several conversations, browsers or API clients);
    /// more wait their turn.
    pub batch_size: usize,
    /// Memory the caches of the replies being written may take together, in MB; a reply
    /// that would not fit waits its turn (unless nothing else runs). 0: no bound.
    pub kv_budget_mb: u64,
    /// The saved server (`store::servers`) replies come from; none: the model on this
    /// computer.
    pub engine_server: Option<i64>,
}

/// The port the built-in server takes unless told otherwise.
pub const DEFAULT_SERVER_PORT: u16 = 3000;

/// Disk space for KV snapshots unless told otherwise (about seven 4,000-token conversations
/// of SmolLM3-3B).
pub const DEFAULT_SNAPSHOT_BUDGET_MB: u64 = 2048;

/// The most the settings accept for KV snapshots (1 TB).
pub const MAX_SNAPSHOT_BUDGET_MB: u64 = 1_000_000;

/// Replies written at once unless told otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 4;

/// Memory for the caches of replies being written unless told otherwise: four replies of
/// SmolLM3-3B at an 8,192-token context need 2.4 GB with the F16 cache.
pub const DEFAULT_KV_BUDGET_MB: u64 = 4096;

/// The most the settings accept for the caches of replies being written (1 TB).
pub const MAX_KV_BUDGET_MB: u64 = 1_000_000;

/// The most replies the settings let the model write at once.
pub const MAX_BATCH_SIZE: usize = 16;

/// The lowest port the settings accept: lower ones need an administrator on most systems.
pub const MIN_SERVER_PORT: u16 = 1024;

impl Default for Settings {
    /// SmolLM3's recommended sampling (temperature 0.6, top-p 0.95, top-k 20); reasoning off
    /// by default because on a CPU it can take minutes before the answer starts.
    fn default() -> Self {
        Self {
            system_prompt: String::new(),
            sampling: SamplingParams {
                top_k: 20,
                ..SamplingParams::default()
            },
            context_size: 8192,
            threads: 0,
            thinking_default: false,
            thinking_budget: 0,
            theme: Theme::System,
            model_path: String::new(),
            tokenizer_path: String::new(),
            hub_mirror: String::new(),
            server_enabled: false,
            server_port: DEFAULT_SERVER_PORT,
            server_lan: false,
            snapshot_budget_mb: DEFAULT_SNAPSHOT_BUDGET_MB,
            batch_size: DEFAULT_BATCH_SIZE,
            kv_budget_mb: DEFAULT_KV_BUDGET_MB,
            engine_server: None,
        }
    }
}

/// A setting out of range: which field, and a sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSetting {
    /// The form field name.
    pub field: &'static str,
    /// What is wrong, for a person to read.
    pub message: String,
}

/// The largest context SmolLM3 was trained for (with YaRN).
pub const MAX_CONTEXT: usize = 131_072;

/// The smallest context the settings accept.
pub const MIN_CONTEXT: usize = 512;

impl Settings {
    /// Checks every value (the sampling ranges are the engine's, see
    /// [`SamplingParams::problems`]); returns all problems at once so a form can show them
    /// together.
    pub fn validate(&self) -> Result<(), Vec<InvalidSetting>> {
        let mut bad: Vec<InvalidSetting> = self
            .sampling
            .problems()
            .into_iter()
            .map(|(field, message)| InvalidSetting { field, message })
            .collect();
        let mut check = |ok: bool, field: &'static str, message: &str| {
            if !ok {
                bad.push(InvalidSetting {
                    field,
                    message: message.to_string(),
                });
            }
        };
        check(
            self.sampling.max_tokens <= self.context_size,
            "max_tokens",
            "must fit in the context size",
        );
        check(
            (MIN_CONTEXT..=MAX_CONTEXT).contains(&self.context_size),
            "context_size",
            "must be between 512 and 131072",
        );
        check(
            self.threads <= 256,
            "threads",
            "must be at most 256 (0 uses every core)",
        );
        check(
            self.thinking_budget <= self.context_size,
            "thinking_budget",
            "must fit in the context size (0 means no limit)",
        );
        check(
            valid_mirror(&self.hub_mirror),
            "hub_mirror",
            "must be an http:// or https:// address, or empty for the hub",
        );
        check(
            self.snapshot_budget_mb <= MAX_SNAPSHOT_BUDGET_MB,
            "snapshot_budget_mb",
            "must be at most 1000000 MB (0 keeps none)",
        );
        check(
            (1..=MAX_BATCH_SIZE).contains(&self.batch_size),
            "batch_size",
            "must be from 1 to 16",
        );
        check(
            self.kv_budget_mb <= MAX_KV_BUDGET_MB,
            "kv_budget_mb",
            "must be at most 1000000 MB (0 sets no bound)",
        );
        check(
            self.server_port >= MIN_SERVER_PORT,
            "server_port",
            "must be between 1024 and 65535",
        );
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad)
        }
    }
}

/// Whether `mirror` is empty or an http(s) address with a host and nothing a base URL would
/// not have (credentials, a query or a fragment).
fn valid_mirror(mirror: &str) -> bool {
    let mirror = mirror.trim();
    if mirror.is_empty() {
        return true;
    }
    match reqwest::Url::parse(mirror) {
        Ok(u) => {
            matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some()
                && u.username().is_empty()
                && u.password().is_none()
                && u.query().is_none()
                && u.fragment().is_none()
        }
        Err(_) => false,
    }
}

impl Store {
    /// Reads the settings; keys never saved, unknown or unreadable take their defaults.
    pub fn load_settings(&self) -> Result<Settings> {
        read_settings(&self.conn())
    }

    /// The settings saved in the database at `path`, read without opening the store (no
    /// lock, no recovery): for the one value needed before anything starts (the thread
    /// count). Defaults when there is no database yet.
    pub fn peek_settings(path: &std::path::Path) -> Result<Settings> {
        if !path.is_file() {
            return Ok(Settings::default());
        }
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        read_settings(&conn)
    }

    /// Saves every setting in one transaction.
    pub fn save_settings(&self, settings: &Settings) -> Result<()> {
        let Value::Object(map) = to_json(settings)? else {
            return Err(StoreError::Corrupt("settings are not a JSON object".into()));
        };
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?;
            for (key, value) in &map {
                stmt.execute(params![key, value.to_string()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl Store {
    /// The 32-byte secret `name`, made from the OS's random generator the first time it is
    /// asked for and kept from then on.
    pub fn secret(&self, name: &str) -> Result<[u8; 32]> {
        use rand::RngCore;
        let read = |conn: &rusqlite::Connection| -> Result<Option<Vec<u8>>> {
            use rusqlite::OptionalExtension;
            Ok(conn
                .query_row("SELECT value FROM secrets WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()?)
        };
        let conn = self.conn();
        let value = match read(&conn)? {
            Some(v) => v,
            None => {
                let mut fresh = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut fresh);
                conn.execute(
                    "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)",
                    params![name, fresh.as_slice()],
                )?;
                read(&conn)?.unwrap_or_default()
            }
        };
        value
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("secret {name} is not 32 bytes")))
    }
}

impl Store {
    /// Replaces the secret `name` with a fresh one and returns it (whatever the old one
    /// signed or opened stops working).
    pub fn rotate_secret(&self, name: &str) -> Result<[u8; 32]> {
        self.conn()
            .execute("DELETE FROM secrets WHERE name = ?1", [name])?;
        self.secret(name)
    }
}

/// Stored keys over the defaults, one key at a time.
fn read_settings(conn: &rusqlite::Connection) -> Result<Settings> {
    let stored: Vec<(String, String)> = {
        let mut stmt = conn.prepare_cached("SELECT key, value FROM settings")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        rows
    };

    let Value::Object(mut merged) = to_json(&Settings::default())? else {
        return Err(StoreError::Corrupt("settings are not a JSON object".into()));
    };
    for (key, text) in stored {
        if !merged.contains_key(&key) {
            continue;
        }
        let Ok(value) = serde_json::from_str::<Value>(&text) else {
            tracing::warn!(key, "ignoring unreadable setting");
            continue;
        };
        // Apply one key at a time so a value of the wrong type costs only that key.
        let mut trial = merged.clone();
        trial.insert(key.clone(), value);
        if serde_json::from_value::<Settings>(Value::Object(trial.clone())).is_ok() {
            merged = trial;
        } else {
            tracing::warn!(key, "ignoring setting of the wrong type");
        }
    }
    serde_json::from_value(Value::Object(merged)).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn to_json(settings: &Settings) -> Result<Value> {
    serde_json::to_value(settings).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::temp_store;

    #[test]
    fn secrets_are_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let (a, b) = {
            let store = Store::open(&path).unwrap();
            (store.secret("one").unwrap(), store.secret("two").unwrap())
        };
        assert_ne!(a, b);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.secret("one").unwrap(), a);
    }

    #[test]
    fn a_rotated_secret_is_new_and_kept() {
        let (_dir, store) = temp_store();
        let old = store.secret("k").unwrap();
        let new = store.rotate_secret("k").unwrap();
        assert_ne!(old, new);
        assert_eq!(store.secret("k").unwrap(), new);
    }

    #[test]
    fn fresh_database_gives_defaults() {
        let (_dir, store) = temp_store();
        let s = store.load_settings().unwrap();
        assert_eq!(s, Settings::default());
        assert!(s.validate().is_ok());
    }

    #[test]
    fn settings_round_trip_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let custom = Settings {
            system_prompt: "You are terse.".into(),
            sampling: SamplingParams {
                temperature: 0.0,
                top_p: 0.8,
                top_k: 0,
                min_p: 0.05,
                repeat_penalty: 1.1,
                max_tokens: 512,
                ..SamplingParams::default()
            },
            context_size: 4096,
            threads: 6,
            thinking_default: true,
            thinking_budget: 256,
            theme: Theme::Dark,
            model_path: "/models/SmolLM3-Q4_K_M.gguf".into(),
            tokenizer_path: "/models/tokenizer.json".into(),
            hub_mirror: "https://hf-mirror.example".into(),
            server_enabled: true,
            server_port: 8123,
            server_lan: true,
            snapshot_budget_mb: 512,
            batch_size: 2,
            kv_budget_mb: 1500,
            engine_server: Some(3),
        };
        Store::open(&path).unwrap().save_settings(&custom).unwrap();
        assert_eq!(Store::open(&path).unwrap().load_settings().unwrap(), custom);

        // Saving again overwrites rather than duplicating.
        let store = Store::open(&path).unwrap();
        let back = Settings {
            theme: Theme::Light,
            ..custom
        };
        store.save_settings(&back).unwrap();
        assert_eq!(store.load_settings().unwrap(), back);
    }

    #[test]
    fn bad_or_unknown_keys_fall_back_per_key() {
        let (_dir, store) = temp_store();
        store
            .conn()
            .execute_batch(
                r#"INSERT INTO settings (key, value) VALUES
                     ('temperature', '"hot"'),
                     ('top_k', '40'),
                     ('theme', '"dark"'),
                     ('retired_setting', 'true'),
                     ('threads', 'null'),
                     ('thinking', 'true'),
                     ('max_tokens', 'not json');"#,
            )
            .unwrap();
        let s = store.load_settings().unwrap();
        let d = Settings::default();
        assert_eq!(s.sampling.temperature, d.sampling.temperature);
        assert_eq!(s.sampling.max_tokens, d.sampling.max_tokens);
        assert_eq!(s.sampling.top_k, 40);
        assert_eq!(s.theme, Theme::Dark);
        assert_eq!(
            s.threads, 0,
            "a value stored as null by older versions means the default"
        );
        assert!(s.thinking_default);
    }

    #[test]
    fn every_bad_field_is_reported() {
        let mut s = Settings::default();
        s.sampling.temperature = 5.0;
        s.sampling.top_p = 0.0;
        s.context_size = 10;
        s.server_port = 80;
        s.snapshot_budget_mb = MAX_SNAPSHOT_BUDGET_MB + 1;
        let fields: Vec<&str> = s.validate().unwrap_err().iter().map(|e| e.field).collect();
        for f in [
            "temperature",
            "top_p",
            "context_size",
            "max_tokens",
            "server_port",
            "snapshot_budget_mb",
        ] {
            assert!(fields.contains(&f), "{f} in {fields:?}");
        }
    }

    #[test]
    fn the_mirror_is_empty_or_a_web_address() {
        for ok in ["", "https://hf-mirror.com", "http://10.0.0.2:8080/hf/"] {
            assert!(valid_mirror(ok), "{ok}");
        }
        for bad in [
            "ftp://x",
            "file:///etc",
            "hf-mirror.com",
            "https://u:p@h",
            "https://h/?a=1",
        ] {
            assert!(!valid_mirror(bad), "{bad}");
        }
    }

    #[test]
    fn theme_names_round_trip() {
        for t in [Theme::System, Theme::Light, Theme::Dark] {
            assert_eq!(Theme::parse(t.as_str()), Some(t));
        }
        assert_eq!(Theme::parse("purple"), None);
    }
}
