//! The database schema, as numbered migrations applied in order.
//!
//! `PRAGMA user_version` records how many migrations a file has had. Migrations are only ever
//! appended; an applied one is never edited, so every database reaches the same schema.
//!
//! # Tables (current version)
//!
//! `conversations`
//! - `id` INTEGER PRIMARY KEY
//! - `title` TEXT
//! - `created_at`, `updated_at` INTEGER, Unix milliseconds; `updated_at` moves with every new
//!   message, and lists sort by it
//! - `today` TEXT: the date the conversation started, as the chat template prints it. It stays
//!   fixed so the rendered prompt (and so the reusable KV prefix) does not change at midnight.
//! - `thinking` INTEGER (bool): reasoning mode for this conversation
//! - `system_prompt` TEXT
//! - `leaf_id` INTEGER NULL: the newest message of the branch on screen (no foreign key, to
//!   keep the two tables free of a cycle; the store keeps it valid)
//! - `deleted_at` INTEGER NULL: set by a soft delete, so the UI can offer undo; rows deleted
//!   long enough ago are purged for real
//! - `owner` TEXT (version 3): who may see it: `desktop` for the desktop app (and every row
//!   older than the column), or one browser session of the built-in server
//!
//! `messages`: a tree per conversation. Editing a message adds a sibling (same parent), so the
//! old branch and its replies stay reachable.
//! - `id` INTEGER PRIMARY KEY (grows with insertion order)
//! - `conversation_id` → conversations, cascade delete
//! - `parent_id` → messages, NULL for a first message, cascade delete
//! - `role` TEXT: `system` | `user` | `assistant`
//! - `content` TEXT: the visible answer; `reasoning` TEXT: the text inside `<think>`
//! - `token_ids` BLOB NULL: generated token ids, little-endian u32 each
//! - `status` TEXT: `complete` | `streaming` | `interrupted` | `error`; `error` TEXT NULL
//! - `stats` TEXT NULL: JSON of `engine::events::GenerationStats`
//! - `created_at` INTEGER, Unix milliseconds
//! - `answered_by` TEXT NULL (version 5): for a reply, the model and engine that wrote it
//!   ("SmolLM3-3B-Q4_K_M.gguf on this computer", "llama-3.3-70b on gpu-box:8080"); NULL for
//!   other messages and replies older than the column
//!
//! `messages_fts` (version 2): an FTS5 index of `messages.content`, kept in step by triggers.
//!
//! `settings`: `key` TEXT PRIMARY KEY, `value` TEXT (JSON); see `store::Settings`.
//!
//! `secrets` (version 4): `name` TEXT PRIMARY KEY, `value` BLOB: keys the app generates for
//! itself and keeps across restarts (the one that signs browser session ids).
//!
//! `servers` (version 5): OpenAI-compatible servers saved as engines: `id` INTEGER PRIMARY
//! KEY, `name` TEXT, `base_url` TEXT, `model` TEXT, `created_at` INTEGER. Their API keys are
//! not here but in the system's secret store (`store::keys`).

use rusqlite::Connection;

use super::{Result, StoreError};

/// The migrations; entry `i` takes a database from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: base tables.
    r#"
    CREATE TABLE conversations (
        id            INTEGER PRIMARY KEY,
        title         TEXT    NOT NULL,
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL,
        today         TEXT    NOT NULL,
        thinking      INTEGER NOT NULL DEFAULT 0,
        system_prompt TEXT    NOT NULL DEFAULT '',
        leaf_id       INTEGER,
        deleted_at    INTEGER
    );
    CREATE INDEX conversations_updated ON conversations(updated_at DESC);

    CREATE TABLE messages (
        id              INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        parent_id       INTEGER REFERENCES messages(id) ON DELETE CASCADE,
        role            TEXT    NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content         TEXT    NOT NULL DEFAULT '',
        reasoning       TEXT    NOT NULL DEFAULT '',
        token_ids       BLOB,
        status          TEXT    NOT NULL DEFAULT 'complete'
                        CHECK (status IN ('complete', 'streaming', 'interrupted', 'error')),
        error           TEXT,
        stats           TEXT,
        created_at      INTEGER NOT NULL
    );
    CREATE INDEX messages_conversation ON messages(conversation_id, id);
    CREATE INDEX messages_parent ON messages(parent_id);
    CREATE INDEX messages_streaming ON messages(status) WHERE status = 'streaming';

    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 2: full-text search over message text, filled from rows written before it existed.
    r#"
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        content,
        content = 'messages',
        content_rowid = 'id',
        tokenize = 'unicode61 remove_diacritics 2'
    );
    INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');

    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
        INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
    END;
    "#,
    // 3: conversations belong to an owner; everything written so far is the desktop's.
    r#"
    ALTER TABLE conversations ADD COLUMN owner TEXT NOT NULL DEFAULT 'desktop';
    CREATE INDEX conversations_owner ON conversations(owner, updated_at DESC);
    "#,
    // 4: keys the app makes for itself.
    r#"
    CREATE TABLE secrets (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    "#,
    // 5: replies say who wrote them; servers saved as engines.
    r#"
    ALTER TABLE messages ADD COLUMN answered_by TEXT;
    CREATE TABLE servers (
        id         INTEGER PRIMARY KEY,
        name       TEXT    NOT NULL,
        base_url   TEXT    NOT NULL,
        model      TEXT    NOT NULL,
        created_at INTEGER NOT NULL
    );
    "#,
];

/// The schema version this build writes.
pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// The schema version of an open database.
pub fn version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA user_version", [], |row| row.get(0))?)
}

/// Brings the database up to [`latest_version`].
pub fn migrate(conn: &mut Connection) -> Result<()> {
    migrate_to(conn, latest_version())
}

/// Applies migrations until the database is at `target`; each one commits together with its
/// version number, so an interrupted upgrade resumes where it stopped.
pub fn migrate_to(conn: &mut Connection, target: i64) -> Result<()> {
    let found = version(conn)?;
    if found > latest_version() {
        return Err(StoreError::TooNew {
            found,
            supported: latest_version(),
        });
    }
    for (index, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(found as usize)
        .take((target - found).max(0) as usize)
    {
        let next = index as i64 + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", next)?;
        tx.commit()?;
        tracing::info!(version = next, "database schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Role, Store};

    #[test]
    fn version_one_database_is_migrated_and_its_messages_become_searchable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        {
            let mut conn = Connection::open(&path).unwrap();
            migrate_to(&mut conn, 1).unwrap();
            assert_eq!(version(&conn).unwrap(), 1);
            conn.execute_batch(
                "INSERT INTO conversations (id, title, created_at, updated_at, today)
                     VALUES (1, 'Old chat', 1000, 1000, '01 January 2026');
                 INSERT INTO messages (id, conversation_id, parent_id, role, content, created_at)
                     VALUES (1, 1, NULL, 'user', 'tell me about marmosets', 1000),
                            (2, 1, 1, 'assistant', 'Marmosets are small monkeys.', 1001);
                 UPDATE conversations SET leaf_id = 2 WHERE id = 1;",
            )
            .unwrap();
        }

        let store = Store::open(&path).unwrap();
        assert_eq!(version(&store.conn()).unwrap(), latest_version());
        let found = store.list_conversations(Some("marmoset")).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].title, "Old chat");
        let path_msgs = store.active_path(found[0].id).unwrap();
        assert_eq!(
            path_msgs.iter().map(|m| m.role).collect::<Vec<_>>(),
            [Role::User, Role::Assistant]
        );
    }

    #[test]
    fn version_two_conversations_become_the_desktops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.sqlite3");
        {
            let mut conn = Connection::open(&path).unwrap();
            migrate_to(&mut conn, 2).unwrap();
            conn.execute_batch(
                "INSERT INTO conversations (id, title, created_at, updated_at, today)
                     VALUES (1, 'Before owners', 1000, 1000, '01 January 2026');",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let c = store.conversation(crate::store::ConversationId(1)).unwrap();
        assert_eq!(c.owner, crate::store::DESKTOP_OWNER);
        assert_eq!(
            store
                .list_conversations_of(crate::store::DESKTOP_OWNER, None)
                .unwrap()
                .len(),
            1
        );
        assert!(store
            .list_conversations_of("web:someone", None)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.sqlite3");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", latest_version() + 1)
                .unwrap();
        }
        match Store::open(&path) {
            Err(StoreError::TooNew { found, .. }) => assert_eq!(found, latest_version() + 1),
            other => panic!("expected TooNew, got {other:?}"),
        }
    }

    #[test]
    fn migrating_twice_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        drop(Store::open(&path).unwrap());
        let store = Store::open(&path).unwrap();
        assert_eq!(version(&store.conn()).unwrap(), latest_version());
    }
}
