//! Durable storage for conversations, messages and settings, on SQLite.
//!
//! One database file in the platform data directory holds everything the user would miss
//! after a restart. The schema and its numbered migrations live in [`schema`]. Replies are
//! written while they stream (see [`ReplyWriter`]), so a crash loses at most the last
//! flush interval of text, and rows a crash left `streaming` are marked `interrupted` the
//! next time the database is opened.
//!
//! The API is synchronous and every method takes `&self`: a [`Store`] is a cheap handle to
//! one connection behind a mutex, meant to be cloned into `spawn_blocking` closures.

mod conversations;
pub mod keys;
pub mod lock;
mod messages;
pub mod readable;
mod reply;
pub mod schema;
pub mod servers;
mod settings;
pub mod transfer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

pub use conversations::{Conversation, NewConversation};
pub use messages::Message;
pub use reply::{ReplyWriter, FLUSH_INTERVAL};
pub use settings::{
    InvalidSetting, Settings, Theme, DEFAULT_KV_BUDGET_MB, DEFAULT_SERVER_PORT, MAX_CONTEXT,
    MIN_CONTEXT, MIN_SERVER_PORT,
};

/// Name of the database file inside the data directory.
pub const DATABASE_FILE: &str = "smollm3-bot.sqlite3";

/// Owner of the desktop app's conversations (and of every conversation written before
/// conversations had owners).
pub const DESKTOP_OWNER: &str = "desktop";

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No data directory is known for this platform (no home directory).
    #[error("no data directory is known for this platform")]
    NoDataDir,
    /// Another process holds the data folder (see [`lock`]).
    #[error("{}", lock::locked_message(dir, holder))]
    Locked {
        /// The data folder.
        dir: PathBuf,
        /// Who holds it.
        holder: lock::Holder,
    },
    /// The database was written by a newer version of the app.
    #[error("database schema version {found} is newer than this app understands ({supported})")]
    TooNew {
        /// The schema version in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A conversation or message does not exist (or was purged).
    #[error("{what} {id} not found")]
    NotFound {
        /// `conversation` or `message`.
        what: &'static str,
        /// The id looked up.
        id: i64,
    },
    /// A message named as parent belongs to another conversation.
    #[error("message {parent} is not in conversation {conversation}")]
    ForeignParent {
        /// The parent given.
        parent: MessageId,
        /// The conversation the new message was meant for.
        conversation: ConversationId,
    },
    /// A reply was finished or failed twice, or a message that is not streaming was written to.
    #[error("message {0} is not streaming")]
    NotStreaming(MessageId),
    /// A stored value could not be decoded or encoded.
    #[error("bad stored value: {0}")]
    Corrupt(String),
}

/// Result type of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(self.0.into())
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                i64::column_result(value).map(Self)
            }
        }

        // Shells and forms carry ids as plain numbers.
        impl From<i64> for $name {
            fn from(id: i64) -> Self {
                Self(id)
            }
        }

        impl From<$name> for i64 {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl PartialEq<i64> for $name {
            fn eq(&self, other: &i64) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for i64 {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

id_type!(
    /// Identifies a conversation.
    ConversationId
);
id_type!(
    /// Identifies a message.
    MessageId
);

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The person chatting.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The name used in the database and the chat template.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Written in full.
    Complete,
    /// A reply still being generated.
    Streaming,
    /// A reply cut short by a crash or shutdown; its partial text is kept.
    Interrupted,
    /// A reply that failed; see the message's `error`.
    Error,
}

impl MessageStatus {
    /// The name used in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Complete => "complete",
            MessageStatus::Streaming => "streaming",
            MessageStatus::Interrupted => "interrupted",
            MessageStatus::Error => "error",
        }
    }
}

macro_rules! text_enum_sql {
    ($name:ident { $($text:literal => $variant:ident),+ $(,)? }) => {
        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                match value.as_str()? {
                    $($text => Ok($name::$variant),)+
                    other => Err(FromSqlError::Other(
                        format!("unknown {} {other:?}", stringify!($name)).into(),
                    )),
                }
            }
        }
    };
}

text_enum_sql!(Role { "system" => System, "user" => User, "assistant" => Assistant });
text_enum_sql!(MessageStatus {
    "complete" => Complete,
    "streaming" => Streaming,
    "interrupted" => Interrupted,
    "error" => Error,
});

/// Milliseconds since the Unix epoch, the unit of every timestamp in the store.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A handle to the database. Clones share one connection, and the lock on the data folder
/// (held until the last clone is dropped).
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    lock: Option<Arc<lock::DataLock>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Where the database lives by default: the platform data directory for "smollm3-bot"
    /// (for example `~/.local/share/smollm3-bot/` on Linux).
    pub fn default_path() -> Result<PathBuf> {
        let dirs =
            directories::ProjectDirs::from("", "", "smollm3-bot").ok_or(StoreError::NoDataDir)?;
        Ok(dirs.data_dir().join(DATABASE_FILE))
    }

    /// The platform's local (never roaming) data folder for "smollm3-bot", for large files kept
    /// with the default database (the same folder except on Windows).
    pub fn default_local_dir() -> Result<PathBuf> {
        let dirs =
            directories::ProjectDirs::from("", "", "smollm3-bot").ok_or(StoreError::NoDataDir)?;
        Ok(dirs.data_local_dir().to_path_buf())
    }

    /// Opens (creating if needed) the database at `path`, brings its schema up to date, and
    /// marks replies a crash left streaming as interrupted.
    ///
    /// The data folder (the file's folder) is taken for this process first (see [`lock`]): a
    /// folder another process holds is refused with [`StoreError::Locked`], so the recovery
    /// never touches rows a live process is writing. `:memory:` takes no folder.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut lock = None;
        if path.as_os_str() != ":memory:" {
            let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
                Some(d) => d.to_path_buf(),
                None => PathBuf::from("."),
            };
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })?;
            lock = Some(Arc::new(lock::DataLock::acquire(&dir)?));
        }
        let mut conn = Connection::open(&path)?;
        configure(&conn)?;
        schema::migrate(&mut conn)?;
        let store = Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
            lock,
        };
        let interrupted = store.mark_interrupted()?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "replies left streaming by an earlier run marked interrupted"
            );
        }
        Ok(store)
    }

    /// Opens the database at [`Store::default_path`].
    pub fn open_default() -> Result<Self> {
        Self::open(Self::default_path()?)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records in the data folder's lock where this process serves the browser UI, so a second
    /// process started on the folder can send the user there.
    pub fn advertise(&self, url: &str) -> Result<()> {
        match &self.lock {
            Some(lock) => lock.advertise(url),
            None => Ok(()),
        }
    }

    /// Marks every reply still `streaming` as `interrupted`, keeping its partial text; returns
    /// how many rows changed. [`Store::open`] runs it once it holds the data folder, when no
    /// reply can be live.
    pub fn mark_interrupted(&self) -> Result<usize> {
        let n = self.conn().execute(
            "UPDATE messages SET status = 'interrupted' WHERE status = 'streaming'",
            [],
        )?;
        Ok(n)
    }

    /// Locks the connection. A panic while holding the lock cannot leave SQLite inconsistent
    /// (every multi-statement change runs in a transaction), so a poisoned lock is reused.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Per-connection settings: WAL so readers never block the streaming writer and a commit is
/// one append; `synchronous = NORMAL` is durable against process crashes (the case that
/// matters while streaming) and only risks the last commits on power loss.
fn configure(conn: &Connection) -> Result<()> {
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "SQLite refused WAL mode");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::Store;

    /// A store in a fresh temporary directory (kept alive by the returned guard).
    pub fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path().join("test.sqlite3")).expect("open store");
        (dir, store)
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::temp_store;
    use super::*;

    #[test]
    fn open_sets_wal_and_foreign_keys() {
        let (_dir, store) = temp_store();
        let conn = store.conn();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(fk, 1);
    }

    #[test]
    fn handles_cross_threads() {
        // The store is shared with spawn_blocking closures; a writer moves into one.
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Store>();
        send::<ReplyWriter>();
        let (_dir, store) = temp_store();
        let c = store
            .create_conversation(&NewConversation::new("t", false, ""))
            .unwrap()
            .id;
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    store
                        .add_message(c, None, Role::User, &format!("m{i}"))
                        .unwrap()
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let ids = store
            .siblings(store.conversation(c).unwrap().leaf_id.unwrap())
            .unwrap();
        assert_eq!(ids.len(), 4);
    }

    #[test]
    fn open_creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/db.sqlite3");
        Store::open(&path).unwrap();
        assert!(path.exists());
    }

    #[test]
    fn default_path_is_in_a_smollm3_bot_directory() {
        if let Ok(path) = Store::default_path() {
            assert!(
                path.ends_with(Path::new("smollm3-bot").join(DATABASE_FILE)),
                "{path:?}"
            );
        }
    }
}
