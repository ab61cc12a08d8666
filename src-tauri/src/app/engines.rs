//! Where replies come from: the model on this computer, or an OpenAI-compatible server saved
//! by the user (llama.cpp's server, vLLM, Ollama, a hosted API). The choice is a setting
//! (`Settings::engine_server`); servers are rows of the database, their keys live in the
//! system's secret store (`store::keys`), never in the database. Switching stops the replies
//! in progress, as a model change does, and frees the local model while a server answers.

use std::sync::Arc;

use super::repo::SavedServer;
use super::service::{ChatService, EngineState, ServiceError};
use crate::engine::remote::{self, RemoteGenerator, RemoteOptions, RemoteServer};
use crate::store::servers::key_name;

/// The most saved servers (a list a person reads, not a database of hosts).
pub const MAX_SERVERS: usize = 32;

fn text(e: ServiceError) -> String {
    e.to_string()
}

/// A saved server with where its key is, as the engine screen lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    /// The server.
    pub server: SavedServer,
    /// Whether a key is saved for it.
    pub has_key: bool,
}

/// The models a server offers, asked with `key` (empty: none) before it is saved.
pub async fn server_models(base_url: &str, key: &str) -> Result<Vec<String>, String> {
    let key = Some(key.trim()).filter(|k| !k.is_empty());
    remote::list_models(base_url.trim(), key, &RemoteOptions::default()).await
}

impl ChatService {
    /// The saved servers, oldest first, with whether each has a key.
    pub fn servers(&self) -> Result<Vec<ServerEntry>, String> {
        let servers = self
            .with_repo(|r| r.servers())
            .map_err(|e| text(e.into()))?;
        Ok(servers
            .into_iter()
            .map(|server| {
                let has_key = matches!(self.keys().get(&server.key_name()), Ok(Some(_)));
                ServerEntry { server, has_key }
            })
            .collect())
    }

    /// Saves a server: its address is checked, the name defaults to its host, and the key (if
    /// any) goes to the secret store. The caller has listed its models with the key (see
    /// [`server_models`]), so `model` is one it offers.
    pub fn add_server(
        &self,
        name: &str,
        base_url: &str,
        model: &str,
        key: &str,
    ) -> Result<SavedServer, String> {
        let candidate = RemoteServer {
            base_url: base_url.trim().to_string(),
            api_key: None,
            model: model.trim().to_string(),
        };
        candidate.validate()?;
        if candidate.model.is_empty() {
            return Err("Choose one of the server's models.".into());
        }
        if self.servers()?.len() >= MAX_SERVERS {
            return Err(format!(
                "{MAX_SERVERS} servers are saved already; remove one first."
            ));
        }
        let name = match name.trim() {
            "" => candidate.host(),
            n => n.chars().take(80).collect(),
        };
        let saved = self
            .with_repo(|r| r.add_server(&name, &candidate.base_url, &candidate.model))
            .map_err(|e| text(e.into()))?;
        let key = key.trim();
        if !key.is_empty() {
            if let Err(e) = self.keys().set(&saved.key_name(), key) {
                // A server saved without the key it needs would only fail later: undo.
                let _ = self.with_repo(|r| r.remove_server(saved.id));
                return Err(e);
            }
        }
        tracing::info!(server = %candidate.host(), model = %candidate.model, "server saved");
        Ok(saved)
    }

    /// Forgets a saved server and its key; replies come from this computer again if it was
    /// the one in use.
    pub fn remove_server(&self, id: i64) -> Result<(), String> {
        self.with_repo(|r| r.remove_server(id))
            .map_err(|e| text(e.into()))?;
        if let Err(e) = self.keys().delete(&key_name(id)) {
            tracing::warn!("the key of a removed server stays in the secret store: {e}");
        }
        if self.settings().engine_server == Some(id) {
            self.use_this_computer()?;
        }
        Ok(())
    }

    /// The saved server replies come from, if one is chosen.
    pub fn engine_server(&self) -> Option<SavedServer> {
        let id = self.settings().engine_server?;
        self.with_repo(|r| r.server(id)).ok()
    }

    /// Makes saved server `id` answer the replies from now on (saved in the settings). Its
    /// address and key are checked when the generator is made; whether it answers shows with
    /// the first reply (or in the status bar, see [`ChatService::start_engine`]). Blocking.
    pub fn use_server(&self, id: i64) -> Result<(), String> {
        let server = self
            .with_repo(|r| r.server(id))
            .map_err(|e| text(e.into()))?;
        let key = self.keys().get(&server.key_name())?;
        let generator = RemoteGenerator::new(
            RemoteServer {
                base_url: server.base_url.clone(),
                api_key: key,
                model: server.model.clone(),
            },
            RemoteOptions::default(),
        )?;
        let mut settings = self.settings();
        settings.engine_server = Some(id);
        self.store_settings(settings).map_err(text)?;
        let label = crate::engine::Generator::answered_by(&generator);
        self.switch_generator(Arc::new(generator), EngineState::Ready { model: label });
        tracing::info!(server = %server.base_url, model = %server.model, "replies come from a server");
        Ok(())
    }

    /// Makes the model on this computer answer the replies again (saved in the settings) and
    /// loads it. Blocking while it loads.
    pub fn use_this_computer(&self) -> Result<(), String> {
        let mut settings = self.settings();
        settings.engine_server = None;
        self.store_settings(settings).map_err(text)?;
        let (model, tokenizer) = self.model_files();
        match model {
            Some(model) => self.switch_model(&model, tokenizer.as_deref()),
            None => {
                self.switch_generator(
                    Arc::new(crate::engine::NoModel::default()),
                    EngineState::NoModel {
                        reason: "No model is set up on this computer yet.".into(),
                    },
                );
                Ok(())
            }
        }
    }

    /// Whether the settings name a saved server as the engine (then no local model is
    /// needed: the first-run wizard stays away).
    pub fn uses_a_server(&self) -> bool {
        self.settings().engine_server.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_server_becomes_the_engine_and_its_key_stays_out_of_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("chat.sqlite3");
        let s = ChatService::open(&db).unwrap();
        s.set_keys(crate::store::keys::KeyStore::file(
            dir.path().join("keys.json"),
        ));
        let saved = s
            .add_server("", "http://127.0.0.1:9/v1", "big-model", "sk-secret-123")
            .unwrap();
        assert_eq!(saved.name, "127.0.0.1:9");
        let listed = s.servers().unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].has_key);

        s.use_server(saved.id).unwrap();
        assert_eq!(s.settings().engine_server, Some(saved.id));
        assert!(s.uses_a_server());
        assert_eq!(
            s.engine_state(),
            EngineState::Ready {
                model: "big-model on 127.0.0.1:9".into()
            }
        );

        // The key is in the key store (a private file in this test), never in the database.
        let bytes = std::fs::read(&db).unwrap();
        assert!(!bytes.windows(13).any(|w| w == b"sk-secret-123"));
        assert_eq!(
            s.keys().get(&saved.key_name()).unwrap().as_deref(),
            Some("sk-secret-123")
        );

        // Removing the server in use forgets its key and goes back to this computer.
        s.remove_server(saved.id).unwrap();
        assert!(s.servers().unwrap().is_empty());
        assert_eq!(s.keys().get(&saved.key_name()).unwrap(), None);
        assert_eq!(s.settings().engine_server, None);
        assert!(matches!(s.engine_state(), EngineState::NoModel { .. }));
    }

    #[test]
    fn a_server_with_a_bad_address_or_no_model_is_refused() {
        let s = ChatService::in_memory();
        assert!(s.add_server("x", "ftp://host", "m", "").is_err());
        assert!(s.add_server("x", "http://host:8080", " ", "").is_err());
        assert!(s.servers().unwrap().is_empty());
    }
}
