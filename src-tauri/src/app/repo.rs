//! The chat service's view of storage: conversations and messages with plain `i64` ids, and
//! the app's settings, kept in the SQLite [`Store`].
//!
//! Conversations hold a tree of messages (an edit adds a sibling, so old branches stay), a leaf
//! pointer picks the branch on screen, deletes are soft so they can be undone, and replies a
//! crash left streaming come back `interrupted`. Reply text is written with every delta, so
//! whatever a view renders from here is never behind the stream events it has seen.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::settings::{Settings, Theme};
use crate::engine::events::GenerationStats;
use crate::store::{self, ConversationId, MessageId, NewConversation, Store, StoreError};
pub use crate::store::{MessageStatus, Role};

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

/// Result type of the repository.
pub type Result<T, E = RepoError> = std::result::Result<T, E>;

/// A conversation's header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// Identifier.
    pub id: i64,
    /// Shown in the sidebar.
    pub title: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds of the last change; lists sort by it.
    pub updated_at: i64,
    /// The date the conversation started, as the chat template prints it; fixed so the prompt
    /// prefix stays the same.
    pub today: String,
    /// Reasoning mode for this conversation.
    pub thinking: bool,
    /// The newest message of the branch on screen.
    pub leaf_id: Option<i64>,
    /// Set by a delete, cleared by undo.
    pub deleted_at: Option<i64>,
    /// Who may see it (see `store::DESKTOP_OWNER`).
    pub owner: String,
}

/// One message of a conversation's tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Identifier; grows with insertion order.
    pub id: i64,
    /// The conversation it belongs to.
    pub conversation_id: i64,
    /// The message it answers or follows; `None` for a first message.
    pub parent_id: Option<i64>,
    /// Who wrote it.
    pub role: Role,
    /// The visible text.
    pub content: String,
    /// The model's reasoning (text inside `<think>`).
    pub reasoning: String,
    /// Generated token ids, kept so later prompts reuse the same ids.
    pub token_ids: Option<Vec<u32>>,
    /// Where it is in its life.
    pub status: MessageStatus,
    /// Why a reply failed, for a person to read.
    pub error: Option<String>,
    /// Figures of a finished reply.
    pub stats: Option<GenerationStats>,
    /// Unix milliseconds.
    pub created_at: i64,
}

impl From<store::Conversation> for Conversation {
    fn from(c: store::Conversation) -> Self {
        Self {
            id: c.id.0,
            title: c.title,
            created_at: c.created_at_ms,
            updated_at: c.updated_at_ms,
            today: c.today,
            thinking: c.thinking,
            leaf_id: c.leaf_id.map(|m| m.0),
            deleted_at: c.deleted_at_ms,
            owner: c.owner,
        }
    }
}

impl From<store::Message> for Message {
    fn from(m: store::Message) -> Self {
        Self {
            id: m.id.0,
            conversation_id: m.conversation_id.0,
            parent_id: m.parent_id.map(|p| p.0),
            role: m.role,
            content: m.content,
            reasoning: m.reasoning,
            token_ids: m.token_ids,
            status: m.status,
            error: m.error,
            stats: m.stats,
            created_at: m.created_at_ms,
        }
    }
}

/// The app's settings as the store keeps them (the store's extra fields are left as they are).
fn to_store(s: &Settings, mut base: store::Settings) -> store::Settings {
    base.system_prompt = s.system_prompt.clone();
    base.temperature = s.sampling.temperature;
    base.top_p = s.sampling.top_p;
    base.top_k = s.sampling.top_k;
    base.min_p = s.sampling.min_p;
    base.repeat_penalty = s.sampling.repeat_penalty;
    base.max_tokens = s.sampling.max_tokens;
    base.context_size = s.context_size;
    base.threads = (s.threads > 0).then_some(s.threads);
    base.thinking = s.thinking_default;
    base.thinking_budget = (s.thinking_budget > 0).then_some(s.thinking_budget);
    base.theme = match s.theme {
        Theme::System => store::Theme::System,
        Theme::Light => store::Theme::Light,
        Theme::Dark => store::Theme::Dark,
    };
    base.model_path = (!s.model_path.is_empty()).then(|| PathBuf::from(&s.model_path));
    base.tokenizer_path = (!s.tokenizer_path.is_empty()).then(|| PathBuf::from(&s.tokenizer_path));
    base
}

fn from_store(s: &store::Settings) -> Settings {
    let mut out = Settings {
        system_prompt: s.system_prompt.clone(),
        ..Settings::default()
    };
    out.sampling.temperature = s.temperature;
    out.sampling.top_p = s.top_p;
    out.sampling.top_k = s.top_k;
    out.sampling.min_p = s.min_p;
    out.sampling.repeat_penalty = s.repeat_penalty;
    out.sampling.max_tokens = s.max_tokens;
    out.context_size = s.context_size;
    out.threads = s.threads.unwrap_or(0);
    out.thinking_default = s.thinking;
    out.thinking_budget = s.thinking_budget.unwrap_or(0);
    out.theme = match s.theme {
        store::Theme::System => Theme::System,
        store::Theme::Light => Theme::Light,
        store::Theme::Dark => Theme::Dark,
    };
    out.model_path = s
        .model_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    out.tokenizer_path = s
        .tokenizer_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    out
}

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
        let settings = from_store(&store.load_settings()?);
        Ok(Self { store, settings })
    }

    /// The saved settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Saves new settings.
    pub fn set_settings(&mut self, settings: Settings) -> Result<()> {
        let base = self.store.load_settings()?;
        self.store.save_settings(&to_store(&settings, base))?;
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
        Ok(self.store.create_conversation(&new)?.into())
    }

    /// `owner`'s conversations not deleted, newest first; a query keeps those whose title or
    /// messages contain it.
    pub fn list_conversations(
        &self,
        owner: &str,
        query: Option<&str>,
    ) -> Result<Vec<Conversation>> {
        let q = query.map(str::trim).filter(|q| !q.is_empty());
        Ok(self
            .store
            .list_conversations_of(owner, q)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// A conversation that is not deleted.
    pub fn conversation(&self, id: i64) -> Result<Conversation> {
        let c: Conversation = self.store.conversation(ConversationId(id))?.into();
        if c.deleted_at.is_some() {
            return Err(RepoError::NotFound {
                what: "conversation",
                id,
            });
        }
        Ok(c)
    }

    /// Who owns a conversation, deleted or not.
    pub fn owner_of(&self, id: i64) -> Result<String> {
        Ok(self.store.conversation(ConversationId(id))?.owner)
    }

    /// Renames a conversation.
    pub fn rename(&mut self, id: i64, title: &str) -> Result<()> {
        self.conversation(id)?;
        Ok(self.store.rename_conversation(ConversationId(id), title)?)
    }

    /// Turns reasoning on or off for a conversation.
    pub fn set_thinking(&mut self, id: i64, on: bool) -> Result<()> {
        self.conversation(id)?;
        Ok(self.store.set_thinking(ConversationId(id), on)?)
    }

    /// Hides a conversation; [`Repo::undo_delete`] brings it back.
    pub fn delete(&mut self, id: i64) -> Result<()> {
        self.conversation(id)?;
        Ok(self.store.delete_conversation(ConversationId(id))?)
    }

    /// Brings back a deleted conversation.
    pub fn undo_delete(&mut self, id: i64) -> Result<()> {
        Ok(self.store.restore_conversation(ConversationId(id))?)
    }

    /// Adds a user (or system) message under `parent`; it becomes the conversation's leaf.
    pub fn add_message(
        &mut self,
        conversation_id: i64,
        parent_id: Option<i64>,
        role: Role,
        content: &str,
    ) -> Result<Message> {
        self.conversation(conversation_id)?;
        let id = self.store.add_message(
            ConversationId(conversation_id),
            parent_id.map(MessageId),
            role,
            content,
        )?;
        self.message(id.0)
    }

    /// Adds an empty, streaming reply under `parent`; it becomes the conversation's leaf.
    pub fn begin_reply(&mut self, conversation_id: i64, parent_id: i64) -> Result<Message> {
        let id = self
            .store
            .begin_reply(ConversationId(conversation_id), MessageId(parent_id))?;
        self.message(id.0)
    }

    /// A message by id (in a conversation that is not deleted).
    pub fn message(&self, id: i64) -> Result<Message> {
        let m: Message = self.store.message(MessageId(id))?.into();
        self.conversation(m.conversation_id)?;
        Ok(m)
    }

    /// Appends streamed text to a reply.
    pub fn append(&mut self, id: i64, reasoning: &str, answer: &str) -> Result<()> {
        Ok(self.store.append_reply(MessageId(id), answer, reasoning)?)
    }

    /// Marks a reply complete with its figures.
    pub fn finish(&mut self, id: i64, stats: GenerationStats, token_ids: Vec<u32>) -> Result<()> {
        Ok(self.store.finish_reply(MessageId(id), &stats, &token_ids)?)
    }

    /// Marks a reply interrupted (stopped without a result, e.g. by a model change), keeping
    /// its partial text.
    pub fn interrupt(&mut self, id: i64) -> Result<()> {
        Ok(self.store.interrupt_reply(MessageId(id))?)
    }

    /// Marks a reply failed, keeping any partial text.
    pub fn fail(&mut self, id: i64, error: &str) -> Result<()> {
        Ok(self.store.fail_reply(MessageId(id), error)?)
    }

    /// The branch on screen: messages from the first to the conversation's leaf.
    pub fn branch(&self, conversation_id: i64) -> Result<Vec<Message>> {
        self.conversation(conversation_id)?;
        Ok(self
            .store
            .active_path(ConversationId(conversation_id))?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Messages from the first down to `id`.
    pub fn path_to(&self, id: i64) -> Result<Vec<Message>> {
        Ok(self
            .store
            .path_to(MessageId(id))?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Ids of a message and its siblings (same parent), oldest first.
    pub fn siblings(&self, id: i64) -> Result<Vec<i64>> {
        Ok(self
            .store
            .siblings(MessageId(id))?
            .into_iter()
            .map(|m| m.0)
            .collect())
    }

    /// Shows the branch through `id`, down to its newest descendant.
    pub fn select_branch(&mut self, id: i64) -> Result<()> {
        self.store.select_branch(MessageId(id))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_follows_the_leaf_and_edits_keep_the_old_branch() {
        let mut r = Repo::in_memory();
        let c = r
            .create_conversation(store::DESKTOP_OWNER, "t", false)
            .unwrap();
        let u1 = r.add_message(c.id, None, Role::User, "hi").unwrap();
        let a1 = r.begin_reply(c.id, u1.id).unwrap();
        r.append(a1.id, "", "hello").unwrap();
        let u2 = r.add_message(c.id, None, Role::User, "hi again").unwrap();
        let ids: Vec<i64> = r.branch(c.id).unwrap().iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![u2.id]);
        assert_eq!(r.siblings(u2.id).unwrap(), vec![u1.id, u2.id]);
        r.select_branch(u1.id).unwrap();
        let branch = r.branch(c.id).unwrap();
        assert_eq!(
            branch.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![u1.id, a1.id]
        );
        assert_eq!(branch[1].content, "hello");
        assert_eq!(branch[1].status, MessageStatus::Streaming);
    }

    #[test]
    fn delete_hides_and_undo_restores() {
        let mut r = Repo::in_memory();
        let c = r
            .create_conversation(store::DESKTOP_OWNER, "keep me", false)
            .unwrap();
        r.delete(c.id).unwrap();
        assert!(r
            .list_conversations(store::DESKTOP_OWNER, None)
            .unwrap()
            .is_empty());
        assert!(r.conversation(c.id).is_err());
        r.undo_delete(c.id).unwrap();
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
        let u = r.add_message(c.id, None, Role::User, "q").unwrap();
        let m = r.begin_reply(c.id, u.id).unwrap();
        r.append(m.id, "", "partial").unwrap();
        drop(r);
        let r2 = Repo::open(&path).unwrap();
        assert_eq!(r2.conversation(c.id).unwrap().title, "saved");
        assert_eq!(r2.message(m.id).unwrap().status, MessageStatus::Interrupted);
        assert_eq!(r2.message(m.id).unwrap().content, "partial");
    }
}
