//! The chat service's view of storage: the [`Store`]'s conversations, messages and settings,
//! looked up by plain `i64` ids, with deleted conversations hidden.
//!
//! Conversations hold a tree of messages (an edit adds a sibling, so old branches stay), a leaf
//! pointer picks the branch on screen, deletes are soft so they can be undone, and replies a
//! crash left streaming come back `interrupted`. Reply text is written with every delta, so
//! whatever a view renders from here is never behind the stream events it has seen.

use std::path::{Path, PathBuf};

use crate::engine::events::GenerationStats;
pub use crate::store::servers::SavedServer;
use crate::store::transfer::ExportedConversation;
pub use crate::store::{Conversation, Message, MessageStatus, Role};
use crate::store::{ConversationId, MessageId, NewConversation, Settings, Store, StoreError};

/// The name of the secret the desktop's server key is made from.
const SERVER_SECRET: &str = "server-key";

/// What can go wrong in the repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A conversation or message does not exist (or was deleted).
    #[error("{what} {id} not found")]
    NotFound {
        /// `conversation` or `message`.
        what: &'static str,
        /// The id looked up.
        id: i64,
    },
    /// The database failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for RepoError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, id } => RepoError::NotFound { what, id },
            other => RepoError::Store(other),
        }
    }
}

/// The folder of KV snapshots inside the data folder.
pub const SNAPSHOT_DIR: &str = "kv-snapshots";

/// Result type of the repository.
pub type Result<T, E = RepoError> = std::result::Result<T, E>;

/// The repository: a store handle plus a copy of the settings (read on every reply).
#[derive(Debug)]
pub struct Repo {
    store: Store,
    settings: Settings,
}

impl Repo {
    /// A repository in a private in-memory database, gone when dropped.
    pub fn in_memory() -> Self {
        Self::open(":memory:")
            .unwrap_or_else(|e| panic!("an in-memory SQLite database cannot fail to open: {e}"))
    }

    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let store = Store::open(path)?;
        let settings = store.load_settings()?;
        Ok(Self { store, settings })
    }

    /// The folder for conversations' KV snapshots: beside the database, except that with the
    /// default database they go to the local data folder (on Windows the database's folder
    /// roams with the user's account; gigabytes of snapshots must not). None for a database in
    /// memory.
    pub fn snapshot_dir(&self) -> Option<PathBuf> {
        snapshot_dir_for(self.store.path())
    }

    /// The folder of the database file (none for a database in memory).
    pub fn data_dir(&self) -> Option<PathBuf> {
        let db = self.store.path();
        (db != Path::new(":memory:")).then(|| db.parent().map(Path::to_path_buf))?
    }

    /// The saved servers, oldest first.
    pub fn servers(&self) -> Result<Vec<SavedServer>> {
        Ok(self.store.servers()?)
    }

    /// One saved server.
    pub fn server(&self, id: i64) -> Result<SavedServer> {
        Ok(self.store.server(id)?)
    }

    /// Saves a server.
    pub fn add_server(&self, name: &str, base_url: &str, model: &str) -> Result<SavedServer> {
        Ok(self.store.add_server(name, base_url, model)?)
    }

    /// Forgets a saved server.
    pub fn remove_server(&self, id: i64) -> Result<()> {
        Ok(self.store.remove_server(id)?)
    }

    /// The key that signs browser session ids, kept across restarts.
    pub fn session_secret(&self) -> Result<[u8; 32]> {
        Ok(self.store.secret("browser-sessions")?)
    }

    /// The secret the desktop's server key is made from, kept across restarts.
    pub fn server_secret(&self) -> Result<[u8; 32]> {
        Ok(self.store.secret(SERVER_SECRET)?)
    }

    /// A fresh server secret in place of the old one.
    pub fn rotate_server_secret(&self) -> Result<[u8; 32]> {
        Ok(self.store.rotate_secret(SERVER_SECRET)?)
    }

    /// Whether `owner` has any conversation.
    pub fn owns_any(&self, owner: &str) -> Result<bool> {
        Ok(self.store.owns_any(owner)?)
    }

    /// Records where this process serves the browser UI (see `store::lock`).
    pub fn advertise(&self, url: &str) -> Result<()> {
        Ok(self.store.advertise(url)?)
    }

    /// The saved settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Saves new settings.
    pub fn set_settings(&mut self, settings: Settings) -> Result<()> {
        self.store.save_settings(&settings)?;
        self.settings = settings;
        Ok(())
    }

    /// Starts a conversation for `owner`; its date is fixed now.
    pub fn create_conversation(
        &mut self,
        owner: &str,
        title: &str,
        thinking: bool,
    ) -> Result<Conversation> {
        let new = NewConversation::new(title, thinking, self.settings.system_prompt.clone())
            .owned_by(owner);
        Ok(self.store.create_conversation(&new)?)
    }

    /// `owner`'s conversations not deleted, newest first; a query keeps those whose title or
    /// messages contain it.
    pub fn list_conversations(
        &self,
        owner: &str,
        query: Option<&str>,
    ) -> Result<Vec<Conversation>> {
        let q = query.map(str::trim).filter(|q| !q.is_empty());
        Ok(self.store.list_conversations_of(owner, q)?)
    }

    /// A conversation that is not deleted.
    pub fn conversation(&self, id: impl Into<i64>) -> Result<Conversation> {
        let id: i64 = id.into();
        let c = self.store.conversation(ConversationId(id))?;
        if c.deleted_at_ms.is_some() {
            return Err(RepoError::NotFound {
                what: "conversation",
                id,
            });
        }
        Ok(c)
    }

    /// Who owns a conversation, deleted or not.
    pub fn owner_of(&self, id: impl Into<i64>) -> Result<String> {
        let id: i64 = id.into();
        Ok(self.store.conversation(ConversationId(id))?.owner)
    }

    /// A conversation with all its branches, as an export file holds it.
    pub fn export(&self, id: impl Into<i64>) -> Result<ExportedConversation> {
        let id: i64 = id.into();
        self.conversation(id)?;
        Ok(self.store.export_conversation(ConversationId(id))?)
    }

    /// Adds an exported conversation as a new one of `owner`; its id.
    pub fn import(&mut self, c: &ExportedConversation, owner: &str) -> Result<i64> {
        Ok(self.store.import_conversation(c, owner)?.0)
    }

    /// Renames a conversation.
    pub fn rename(&mut self, id: impl Into<i64>, title: &str) -> Result<()> {
        let id: i64 = id.into();
        self.conversation(id)?;
        Ok(self.store.rename_conversation(ConversationId(id), title)?)
    }

    /// Changes a conversation's own system prompt.
    pub fn set_system_prompt(&mut self, id: impl Into<i64>, prompt: &str) -> Result<()> {
        let id: i64 = id.into();
        self.conversation(id)?;
        Ok(self.store.set_system_prompt(ConversationId(id), prompt)?)
    }

    /// Turns reasoning on or off for a conversation.
    pub fn set_thinking(&mut self, id: impl Into<i64>, on: bool) -> Result<()> {
        let id: i64 = id.into();
        self.conversation(id)?;
        Ok(self.store.set_thinking(ConversationId(id), on)?)
    }

    /// Hides a conversation; [`Repo::undo_delete`] brings it back.
    pub fn delete(&mut self, id: impl Into<i64>) -> Result<()> {
        let id: i64 = id.into();
        self.conversation(id)?;
        Ok(self.store.delete_conversation(ConversationId(id))?)
    }

    /// Brings back a deleted conversation.
    pub fn undo_delete(&mut self, id: impl Into<i64>) -> Result<()> {
        let id: i64 = id.into();
        Ok(self.store.restore_conversation(ConversationId(id))?)
    }

    /// Adds a user (or system) message under `parent`; it becomes the conversation's leaf.
    pub fn add_message(
        &mut self,
        conversation_id: impl Into<i64>,
        parent_id: Option<MessageId>,
        role: Role,
        content: &str,
    ) -> Result<Message> {
        let conversation_id: i64 = conversation_id.into();
        self.conversation(conversation_id)?;
        let id =
            self.store
                .add_message(ConversationId(conversation_id), parent_id, role, content)?;
        self.message(id.0)
    }

    /// Adds an empty, streaming reply under `parent`, written by `answered_by` (the model and
    /// engine, as shown under the reply; empty for none named); it becomes the leaf.
    pub fn begin_reply(
        &mut self,
        conversation_id: impl Into<i64>,
        parent_id: impl Into<i64>,
        answered_by: &str,
    ) -> Result<Message> {
        let conversation_id: i64 = conversation_id.into();
        let parent_id: i64 = parent_id.into();
        let id = self.store.begin_reply(
            ConversationId(conversation_id),
            MessageId(parent_id),
            answered_by,
        )?;
        self.message(id.0)
    }

    /// A message by id (in a conversation that is not deleted).
    pub fn message(&self, id: impl Into<i64>) -> Result<Message> {
        let id: i64 = id.into();
        let m = self.store.message(MessageId(id))?;
        self.conversation(m.conversation_id.0)?;
        Ok(m)
    }

    /// Appends streamed text to a reply.
    pub fn append(&mut self, id: impl Into<i64>, reasoning: &str, answer: &str) -> Result<()> {
        let id: i64 = id.into();
        Ok(self.store.append_reply(MessageId(id), answer, reasoning)?)
    }

    /// Marks a reply complete with its figures.
    pub fn finish(
        &mut self,
        id: impl Into<i64>,
        stats: GenerationStats,
        token_ids: Vec<u32>,
    ) -> Result<()> {
        let id: i64 = id.into();
        Ok(self.store.finish_reply(MessageId(id), &stats, &token_ids)?)
    }

    /// Marks a reply interrupted (stopped without a result, e.g. by a model change), keeping
    /// its partial text.
    pub fn interrupt(&mut self, id: impl Into<i64>) -> Result<()> {
        let id: i64 = id.into();
        Ok(self.store.interrupt_reply(MessageId(id))?)
    }

    /// Marks a reply interrupted part-way, keeping its text and `reason` (shown under it).
    pub fn interrupt_because(&mut self, id: impl Into<i64>, reason: &str) -> Result<()> {
        let id: i64 = id.into();
        Ok(self
            .store
            .interrupt_reply_because(MessageId(id), Some(reason))?)
    }

    /// Marks a reply failed, keeping any partial text.
    pub fn fail(&mut self, id: impl Into<i64>, error: &str) -> Result<()> {
        let id: i64 = id.into();
        Ok(self.store.fail_reply(MessageId(id), error)?)
    }

    /// The branch on screen: messages from the first to the conversation's leaf.
    pub fn branch(&self, conversation_id: impl Into<i64>) -> Result<Vec<Message>> {
        let conversation_id: i64 = conversation_id.into();
        self.conversation(conversation_id)?;
        Ok(self.store.active_path(ConversationId(conversation_id))?)
    }

    /// Messages from the first down to `id`.
    pub fn path_to(&self, id: impl Into<i64>) -> Result<Vec<Message>> {
        let id: i64 = id.into();
        Ok(self.store.path_to(MessageId(id))?)
    }

    /// Ids of a message and its siblings (same parent), oldest first.
    pub fn siblings(&self, id: impl Into<i64>) -> Result<Vec<i64>> {
        let id: i64 = id.into();
        Ok(self
            .store
            .siblings(MessageId(id))?
            .into_iter()
            .map(|m| m.0)
            .collect())
    }

    /// Shows the branch through `id`, down to its newest descendant.
    pub fn select_branch(&mut self, id: impl Into<i64>) -> Result<()> {
        let id: i64 = id.into();
        self.store.select_branch(MessageId(id))?;
        Ok(())
    }
}

/// Where the KV snapshots of the database at `db` go: the local data folder for the default
/// database (never the roaming profile: they are hundreds of MB), else beside the database;
/// none for an in-memory one.
pub fn snapshot_dir_for(db: &Path) -> Option<PathBuf> {
    if db == Path::new(":memory:") {
        return None;
    }
    if Store::default_path().is_ok_and(|d| d == db) {
        return Store::default_local_dir()
            .ok()
            .map(|d| d.join(SNAPSHOT_DIR));
    }
    db.parent().map(|d| d.join(SNAPSHOT_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{self, Theme};

    #[test]
    fn branch_follows_the_leaf_and_edits_keep_the_old_branch() {
        let mut r = Repo::in_memory();
        let c = r
            .create_conversation(store::DESKTOP_OWNER, "t", false)
            .unwrap();
        let u1 = r.add_message(c.id.0, None, Role::User, "hi").unwrap();
        let a1 = r.begin_reply(c.id.0, u1.id.0, "").unwrap();
        r.append(a1.id.0, "", "hello").unwrap();
        let u2 = r.add_message(c.id.0, None, Role::User, "hi again").unwrap();
        let ids: Vec<i64> = r.branch(c.id.0).unwrap().iter().map(|m| m.id.0).collect();
        assert_eq!(ids, vec![u2.id.0]);
        assert_eq!(r.siblings(u2.id.0).unwrap(), vec![u1.id.0, u2.id.0]);
        r.select_branch(u1.id.0).unwrap();
        let branch = r.branch(c.id.0).unwrap();
        assert_eq!(
            branch.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![u1.id, a1.id]
        );
        assert_eq!(branch[1].content, "hello");
        assert_eq!(branch[1].status, MessageStatus::Streaming);
    }

    #[test]
    fn snapshots_live_beside_the_database_and_a_budget_of_zero_keeps_none() {
        assert_eq!(Repo::in_memory().snapshot_dir(), None);
        let dir = tempfile::tempdir().unwrap();
        let r = Repo::open(dir.path().join(store::DATABASE_FILE)).unwrap();
        assert_eq!(r.snapshot_dir(), Some(dir.path().join(SNAPSHOT_DIR)));
        drop(r);
        let service =
            crate::app::service::ChatService::open(dir.path().join(store::DATABASE_FILE)).unwrap();
        let opts = service.snapshot_options().expect("on by default");
        assert_eq!(opts.dir, dir.path().join(SNAPSHOT_DIR));
        assert_eq!(opts.budget_bytes, 2048 * 1_000_000);
        let mut settings = service.settings();
        settings.snapshot_budget_mb = 0;
        service.update_settings(settings).unwrap();
        assert_eq!(service.snapshot_options(), None);
    }

    #[test]
    fn settings_follow_a_models_folder_that_moved() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (
            dir.path().join("Roaming/models"),
            dir.path().join("Local/models"),
        );
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(to.join("m.gguf"), b"GGUF").unwrap();
        let service = crate::app::service::ChatService::in_memory();
        let mut s = service.settings();
        s.model_path = from.join("m.gguf").to_string_lossy().into_owned();
        s.tokenizer_path = "/elsewhere/tokenizer.json".into();
        service.update_settings(s).unwrap();
        assert!(service.follow_moved_files(&[(from.clone(), to.clone())]));
        let s = service.settings();
        assert_eq!(Path::new(&s.model_path), to.join("m.gguf"));
        assert_eq!(
            s.tokenizer_path, "/elsewhere/tokenizer.json",
            "not under a moved folder"
        );
        // Nothing left to follow: no change.
        assert!(!service.follow_moved_files(&[(from, to)]));
    }

    #[test]
    fn delete_hides_and_undo_restores() {
        let mut r = Repo::in_memory();
        let c = r
            .create_conversation(store::DESKTOP_OWNER, "keep me", false)
            .unwrap();
        r.delete(c.id.0).unwrap();
        assert!(r
            .list_conversations(store::DESKTOP_OWNER, None)
            .unwrap()
            .is_empty());
        assert!(r.conversation(c.id.0).is_err());
        r.undo_delete(c.id.0).unwrap();
        assert_eq!(
            r.list_conversations(store::DESKTOP_OWNER, None)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn settings_round_trip_through_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chats.sqlite3");
        let mut r = Repo::open(&path).unwrap();
        let s = Settings {
            theme: Theme::Dark,
            threads: 3,
            thinking_budget: 100,
            model_path: "/models/x.gguf".into(),
            ..Settings::default()
        };
        r.set_settings(s.clone()).unwrap();
        drop(r);
        assert_eq!(Repo::open(&path).unwrap().settings(), &s);
    }

    #[test]
    fn reopened_database_marks_streaming_replies_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chats.sqlite3");
        let mut r = Repo::open(&path).unwrap();
        let c = r
            .create_conversation(store::DESKTOP_OWNER, "saved", true)
            .unwrap();
        let u = r.add_message(c.id.0, None, Role::User, "q").unwrap();
        let m = r.begin_reply(c.id.0, u.id.0, "").unwrap();
        r.append(m.id.0, "", "partial").unwrap();
        drop(r);
        let r2 = Repo::open(&path).unwrap();
        assert_eq!(r2.conversation(c.id.0).unwrap().title, "saved");
        assert_eq!(
            r2.message(m.id.0).unwrap().status,
            MessageStatus::Interrupted
        );
        assert_eq!(r2.message(m.id.0).unwrap().content, "partial");
    }
}
