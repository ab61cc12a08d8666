//! OpenAI-compatible servers saved as engines: where they are and which of their models to
//! use. Their API keys are kept apart, in the system's secret store (see [`super::keys`]).

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::{now_ms, Result, Store, StoreError};

/// A server replies can come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedServer {
    /// Its id in the database.
    pub id: i64,
    /// What the user calls it (the host when left empty).
    pub name: String,
    /// Where its API is, e.g. `http://gpu-box:8080` (with or without `/v1`).
    pub base_url: String,
    /// The model of its `GET /v1/models` list that answers.
    pub model: String,
}

impl SavedServer {
    /// The name under which the server's secret-store entry is kept.
    pub fn key_name(&self) -> String {
        key_name(self.id)
    }
}

/// The secret-store entry of server `id`'s API key.
pub fn key_name(id: i64) -> String {
    format!("server-{id}")
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<SavedServer> {
    Ok(SavedServer {
        id: row.get(0)?,
        name: row.get(1)?,
        base_url: row.get(2)?,
        model: row.get(3)?,
    })
}

impl Store {
    /// Saves a server and returns it with its id.
    pub fn add_server(&self, name: &str, base_url: &str, model: &str) -> Result<SavedServer> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO servers (name, base_url, model, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, base_url, model, now_ms()],
        )?;
        Ok(SavedServer {
            id: conn.last_insert_rowid(),
            name: name.into(),
            base_url: base_url.into(),
            model: model.into(),
        })
    }

    /// The saved servers, oldest first.
    pub fn servers(&self) -> Result<Vec<SavedServer>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT id, name, base_url, model FROM servers ORDER BY id")?;
        let rows = stmt.query_map([], from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One saved server.
    pub fn server(&self, id: i64) -> Result<SavedServer> {
        self.conn()
            .query_row(
                "SELECT id, name, base_url, model FROM servers WHERE id = ?1",
                [id],
                from_row,
            )
            .optional()?
            .ok_or(StoreError::NotFound { what: "server", id })
    }

    /// Forgets a saved server (its key is the caller's to delete from the secret store).
    pub fn remove_server(&self, id: i64) -> Result<()> {
        match self
            .conn()
            .execute("DELETE FROM servers WHERE id = ?1", [id])?
        {
            0 => Err(StoreError::NotFound { what: "server", id }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_saved_listed_and_removed() {
        let store = Store::open(":memory:").unwrap();
        assert!(store.servers().unwrap().is_empty());
        let a = store
            .add_server("GPU box", "http://gpu-box:8080/v1", "llama-3.3-70b")
            .unwrap();
        let b = store
            .add_server("", "http://127.0.0.1:11434", "qwen3")
            .unwrap();
        assert_eq!(store.servers().unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(store.server(a.id).unwrap(), a);
        assert_ne!(a.key_name(), b.key_name());
        store.remove_server(a.id).unwrap();
        assert_eq!(store.servers().unwrap(), vec![b]);
        assert!(matches!(
            store.server(a.id),
            Err(StoreError::NotFound { what: "server", .. })
        ));
        assert!(store.remove_server(a.id).is_err());
    }
}
