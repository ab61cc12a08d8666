//! User settings: one typed [`Settings`] value, stored as one JSON value per key so that
//! adding a setting needs no migration and an unknown or unreadable key falls back to its
//! default instead of losing the others.

use std::path::PathBuf;

use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Result, Store, StoreError};

/// Colour scheme of the interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Theme {
    /// Light colours.
    Light,
    /// Dark colours.
    Dark,
    /// Follow the operating system.
    #[default]
    System,
}

/// Everything the user can set. Missing keys take the values of [`Settings::default`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// System prompt for new conversations.
    pub system_prompt: String,
    /// Sampling temperature; 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass (1 disables it).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 disables it).
    pub top_k: usize,
    /// Drop tokens below this fraction of the top probability (0 disables it).
    pub min_p: f32,
    /// Penalty on tokens already generated (1 disables it).
    pub repeat_penalty: f32,
    /// Most tokens one reply may generate.
    pub max_tokens: usize,
    /// Context window in tokens (prompt and reply together).
    pub context_size: usize,
    /// Compute threads; `None` picks from the machine.
    pub threads: Option<usize>,
    /// Reasoning mode for new conversations.
    pub thinking: bool,
    /// Most tokens of reasoning before the answer is forced; `None` for no limit.
    pub thinking_budget: Option<usize>,
    /// Colour scheme.
    pub theme: Theme,
    /// GGUF model file; `None` uses the managed download.
    pub model_path: Option<PathBuf>,
    /// `tokenizer.json`; `None` uses the one next to the model or builds it from the GGUF.
    pub tokenizer_path: Option<PathBuf>,
    /// Whether the HTTP server (web UI and OpenAI-compatible API) runs.
    pub server_enabled: bool,
    /// Port of the HTTP server.
    pub server_port: u16,
    /// Listen on all interfaces instead of 127.0.0.1 only.
    pub allow_lan: bool,
    /// Bearer token required by the HTTP API; `None` for no check.
    pub api_key: Option<String>,
}

impl Default for Settings {
    /// SmolLM3's recommended sampling (temperature 0.6, top-p 0.95); reasoning off by default
    /// because on a CPU it can take minutes before the answer starts.
    fn default() -> Self {
        Self {
            system_prompt: String::new(),
            temperature: 0.6,
            top_p: 0.95,
            top_k: 20,
            min_p: 0.0,
            repeat_penalty: 1.0,
            max_tokens: 2048,
            context_size: 8192,
            threads: None,
            thinking: false,
            thinking_budget: None,
            theme: Theme::System,
            model_path: None,
            tokenizer_path: None,
            server_enabled: false,
            server_port: 8737,
            allow_lan: false,
            api_key: None,
        }
    }
}

/// A setting outside its allowed range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SettingsError {
    /// The setting's key.
    pub field: &'static str,
    /// What is allowed.
    pub reason: &'static str,
}

impl Settings {
    /// Checks ranges, so a form can report a bad value before it reaches the sampler.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let check = |ok: bool, field, reason| {
            if ok {
                Ok(())
            } else {
                Err(SettingsError { field, reason })
            }
        };
        check(
            self.temperature.is_finite() && (0.0..=5.0).contains(&self.temperature),
            "temperature",
            "between 0 and 5",
        )?;
        check(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p",
            "above 0, at most 1",
        )?;
        check(
            (0.0..=1.0).contains(&self.min_p),
            "min_p",
            "between 0 and 1",
        )?;
        check(
            self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0,
            "repeat_penalty",
            "above 0",
        )?;
        check(self.max_tokens > 0, "max_tokens", "at least 1")?;
        check(
            (256..=65_536).contains(&self.context_size),
            "context_size",
            "between 256 and 65536",
        )?;
        check(self.threads != Some(0), "threads", "at least 1")?;
        check(self.server_port != 0, "server_port", "between 1 and 65535")?;
        check(
            self.api_key.as_deref().is_none_or(|k| !k.trim().is_empty()),
            "api_key",
            "not blank",
        )?;
        Ok(())
    }
}

impl Store {
    /// Reads the settings; keys never saved, unknown or unreadable take their defaults.
    pub fn load_settings(&self) -> Result<Settings> {
        let stored: Vec<(String, String)> = {
            let conn = self.conn();
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
        serde_json::from_value(Value::Object(merged))
            .map_err(|e| StoreError::Corrupt(e.to_string()))
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

fn to_json(settings: &Settings) -> Result<Value> {
    serde_json::to_value(settings).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::temp_store;

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
            temperature: 0.0,
            top_p: 0.8,
            top_k: 0,
            min_p: 0.05,
            repeat_penalty: 1.1,
            max_tokens: 512,
            context_size: 4096,
            threads: Some(6),
            thinking: true,
            thinking_budget: Some(256),
            theme: Theme::Dark,
            model_path: Some("/models/SmolLM3-Q4_K_M.gguf".into()),
            tokenizer_path: Some("/models/tokenizer.json".into()),
            server_enabled: true,
            server_port: 9000,
            allow_lan: true,
            api_key: Some("sk-local".into()),
        };
        Store::open(&path).unwrap().save_settings(&custom).unwrap();
        assert_eq!(Store::open(&path).unwrap().load_settings().unwrap(), custom);

        // Saving again overwrites rather than duplicating.
        let store = Store::open(&path).unwrap();
        let back = Settings {
            theme: Theme::Light,
            api_key: None,
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
                     ('max_tokens', 'not json');"#,
            )
            .unwrap();
        let s = store.load_settings().unwrap();
        assert_eq!(s.temperature, Settings::default().temperature);
        assert_eq!(s.max_tokens, Settings::default().max_tokens);
        assert_eq!(s.top_k, 40);
        assert_eq!(s.theme, Theme::Dark);
    }

    #[test]
    fn validate_rejects_out_of_range_values() {
        let bad = |s: Settings| s.validate().unwrap_err().field;
        assert_eq!(
            bad(Settings {
                temperature: -1.0,
                ..Default::default()
            }),
            "temperature"
        );
        assert_eq!(
            bad(Settings {
                top_p: 0.0,
                ..Default::default()
            }),
            "top_p"
        );
        assert_eq!(
            bad(Settings {
                context_size: 10,
                ..Default::default()
            }),
            "context_size"
        );
        assert_eq!(
            bad(Settings {
                threads: Some(0),
                ..Default::default()
            }),
            "threads"
        );
        assert_eq!(
            bad(Settings {
                api_key: Some("  ".into()),
                ..Default::default()
            }),
            "api_key"
        );
    }
}
