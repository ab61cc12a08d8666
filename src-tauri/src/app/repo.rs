//! Where the chat service keeps conversations, messages and settings: a small store that lives
//! in memory and, when given a file, writes itself there as JSON after every change.
//!
//! It has the shape of the SQLite store (`Store`) the app moves to: conversations hold a tree
//! of messages (an edit adds a sibling, so old branches stay), a leaf pointer picks the branch
//! on screen, deletes are soft so they can be undone, and replies left streaming by a crash
//! come back `interrupted`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::settings::Settings;
use crate::engine::events::GenerationStats;

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
    /// The file could not be read or written.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file holds something else than a saved repository.
    #[error("{path} is not a valid chat file: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// Result type of the repository.
pub type Result<T, E = RepoError> = std::result::Result<T, E>;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The name the chat template uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The date the conversation started (`YYYY-MM-DD`), fixed so the prompt prefix is stable.
    pub today: String,
    /// Reasoning mode for this conversation.
    pub thinking: bool,
    /// The newest message of the branch on screen.
    pub leaf_id: Option<i64>,
    /// Set by a delete, cleared by undo.
    pub deleted_at: Option<i64>,
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

#[derive(Debug, Default, Serialize, Deserialize)]
struct Data {
    next_id: i64,
    conversations: BTreeMap<i64, Conversation>,
    messages: BTreeMap<i64, Message>,
    settings: Settings,
}

/// The repository. Not synchronised: the chat service holds it behind a mutex.
#[derive(Debug)]
pub struct Repo {
    data: Data,
    path: Option<PathBuf>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Repo {
    /// A repository that forgets everything when dropped.
    pub fn in_memory() -> Self {
        Self {
            data: Data {
                next_id: 1,
                ..Data::default()
            },
            path: None,
        }
    }

    /// Opens the repository saved at `path` (an empty one if the file does not exist yet),
    /// marking replies an earlier run left streaming as interrupted.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut data = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<Data>(&bytes).map_err(|source| RepoError::Corrupt {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Data {
                next_id: 1,
                ..Data::default()
            },
            Err(source) => return Err(RepoError::Io { path, source }),
        };
        for m in data.messages.values_mut() {
            if m.status == MessageStatus::Streaming {
                m.status = MessageStatus::Interrupted;
            }
        }
        data.next_id = data.next_id.max(1);
        Ok(Self {
            data,
            path: Some(path),
        })
    }

    /// Writes the repository to its file (no-op in memory). Writes a temporary file and renames
    /// it over the old one, so a crash leaves either the old or the new state.
    pub fn save(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| RepoError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(&self.data).map_err(|source| RepoError::Corrupt {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    fn next_id(&mut self) -> i64 {
        let id = self.data.next_id;
        self.data.next_id += 1;
        id
    }

    /// The saved settings.
    pub fn settings(&self) -> &Settings {
        &self.data.settings
    }

    /// Replaces the settings.
    pub fn set_settings(&mut self, settings: Settings) {
        self.data.settings = settings;
    }

    /// Starts a conversation.
    pub fn create_conversation(
        &mut self,
        title: &str,
        today: &str,
        thinking: bool,
    ) -> Conversation {
        let id = self.next_id();
        let now = now_ms();
        let conv = Conversation {
            id,
            title: title.to_string(),
            created_at: now,
            updated_at: now,
            today: today.to_string(),
            thinking,
            leaf_id: None,
            deleted_at: None,
        };
        self.data.conversations.insert(id, conv.clone());
        conv
    }

    /// Conversations not deleted, newest first; with a query, only those whose title or any
    /// message contains it (case-insensitive).
    pub fn list_conversations(&self, query: Option<&str>) -> Vec<Conversation> {
        let needle = query
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_lowercase);
        let mut out: Vec<Conversation> = self
            .data
            .conversations
            .values()
            .filter(|c| c.deleted_at.is_none())
            .filter(|c| match &needle {
                None => true,
                Some(n) => {
                    c.title.to_lowercase().contains(n)
                        || self.data.messages.values().any(|m| {
                            m.conversation_id == c.id && m.content.to_lowercase().contains(n)
                        })
                }
            })
            .cloned()
            .collect();
        out.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(b.id.cmp(&a.id)));
        out
    }

    /// A conversation that is not deleted.
    pub fn conversation(&self, id: i64) -> Result<&Conversation> {
        self.data
            .conversations
            .get(&id)
            .filter(|c| c.deleted_at.is_none())
            .ok_or(RepoError::NotFound {
                what: "conversation",
                id,
            })
    }

    fn conversation_mut(&mut self, id: i64) -> Result<&mut Conversation> {
        self.data
            .conversations
            .get_mut(&id)
            .filter(|c| c.deleted_at.is_none())
            .ok_or(RepoError::NotFound {
                what: "conversation",
                id,
            })
    }

    /// Renames a conversation.
    pub fn rename(&mut self, id: i64, title: &str) -> Result<()> {
        self.conversation_mut(id)?.title = title.to_string();
        Ok(())
    }

    /// Turns reasoning on or off for a conversation.
    pub fn set_thinking(&mut self, id: i64, on: bool) -> Result<()> {
        self.conversation_mut(id)?.thinking = on;
        Ok(())
    }

    /// Hides a conversation; [`Repo::undo_delete`] brings it back.
    pub fn delete(&mut self, id: i64) -> Result<()> {
        self.conversation_mut(id)?.deleted_at = Some(now_ms());
        Ok(())
    }

    /// Brings back a deleted conversation.
    pub fn undo_delete(&mut self, id: i64) -> Result<()> {
        let conv = self
            .data
            .conversations
            .get_mut(&id)
            .ok_or(RepoError::NotFound {
                what: "conversation",
                id,
            })?;
        conv.deleted_at = None;
        Ok(())
    }

    /// Removes every message of a conversation.
    pub fn clear(&mut self, id: i64) -> Result<()> {
        self.conversation_mut(id)?.leaf_id = None;
        self.data.messages.retain(|_, m| m.conversation_id != id);
        Ok(())
    }

    /// Adds a message under `parent` and makes it the conversation's leaf.
    pub fn add_message(
        &mut self,
        conversation_id: i64,
        parent_id: Option<i64>,
        role: Role,
        content: &str,
        status: MessageStatus,
    ) -> Result<Message> {
        self.conversation(conversation_id)?;
        let id = self.next_id();
        let now = now_ms();
        let msg = Message {
            id,
            conversation_id,
            parent_id,
            role,
            content: content.to_string(),
            reasoning: String::new(),
            token_ids: None,
            status,
            error: None,
            stats: None,
            created_at: now,
        };
        self.data.messages.insert(id, msg.clone());
        let conv = self.conversation_mut(conversation_id)?;
        conv.leaf_id = Some(id);
        conv.updated_at = now;
        Ok(msg)
    }

    /// A message by id (in a conversation that is not deleted).
    pub fn message(&self, id: i64) -> Result<&Message> {
        let m = self.data.messages.get(&id).ok_or(RepoError::NotFound {
            what: "message",
            id,
        })?;
        self.conversation(m.conversation_id)?;
        Ok(m)
    }

    fn message_mut(&mut self, id: i64) -> Result<&mut Message> {
        self.data.messages.get_mut(&id).ok_or(RepoError::NotFound {
            what: "message",
            id,
        })
    }

    /// Appends streamed text to a reply.
    pub fn append(&mut self, id: i64, reasoning: &str, answer: &str) -> Result<()> {
        let m = self.message_mut(id)?;
        m.reasoning.push_str(reasoning);
        m.content.push_str(answer);
        Ok(())
    }

    /// Marks a reply complete with its figures.
    pub fn finish(&mut self, id: i64, stats: GenerationStats, token_ids: Vec<u32>) -> Result<()> {
        let m = self.message_mut(id)?;
        m.status = MessageStatus::Complete;
        m.stats = Some(stats);
        m.token_ids = (!token_ids.is_empty()).then_some(token_ids);
        Ok(())
    }

    /// Marks a reply failed, keeping any partial text.
    pub fn fail(&mut self, id: i64, error: &str) -> Result<()> {
        let m = self.message_mut(id)?;
        m.status = MessageStatus::Error;
        m.error = Some(error.to_string());
        Ok(())
    }

    /// The branch on screen: messages from the first to the conversation's leaf.
    pub fn branch(&self, conversation_id: i64) -> Result<Vec<Message>> {
        let conv = self.conversation(conversation_id)?;
        let mut out = Vec::new();
        let mut cur = conv.leaf_id;
        // Bounded by the number of messages, so a corrupt cycle cannot hang the app.
        for _ in 0..=self.data.messages.len() {
            let Some(id) = cur else { break };
            let Some(m) = self.data.messages.get(&id) else {
                break;
            };
            out.push(m.clone());
            cur = m.parent_id;
        }
        out.reverse();
        Ok(out)
    }

    /// Ids of a message and its siblings (same parent, same role), oldest first.
    pub fn siblings(&self, id: i64) -> Result<Vec<i64>> {
        let m = self.message(id)?;
        Ok(self
            .data
            .messages
            .values()
            .filter(|o| {
                o.conversation_id == m.conversation_id
                    && o.parent_id == m.parent_id
                    && o.role == m.role
            })
            .map(|o| o.id)
            .collect())
    }

    /// Shows the branch through `id`: the leaf becomes the newest message below it, following
    /// the newest child at each step.
    pub fn select_branch(&mut self, id: i64) -> Result<()> {
        let conversation_id = self.message(id)?.conversation_id;
        let mut leaf = id;
        for _ in 0..=self.data.messages.len() {
            let child = self
                .data
                .messages
                .values()
                .filter(|m| m.parent_id == Some(leaf))
                .map(|m| m.id)
                .max();
            match child {
                Some(c) => leaf = c,
                None => break,
            }
        }
        self.conversation_mut(conversation_id)?.leaf_id = Some(leaf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_follows_the_leaf_and_edits_keep_the_old_branch() {
        let mut r = Repo::in_memory();
        let c = r.create_conversation("t", "2026-01-02", false);
        let u1 = r
            .add_message(c.id, None, Role::User, "hi", MessageStatus::Complete)
            .unwrap();
        let a1 = r
            .add_message(
                c.id,
                Some(u1.id),
                Role::Assistant,
                "hello",
                MessageStatus::Complete,
            )
            .unwrap();
        let u2 = r
            .add_message(c.id, None, Role::User, "hi again", MessageStatus::Complete)
            .unwrap();
        let ids: Vec<i64> = r.branch(c.id).unwrap().iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![u2.id]);
        assert_eq!(r.siblings(u2.id).unwrap(), vec![u1.id, u2.id]);
        r.select_branch(u1.id).unwrap();
        let ids: Vec<i64> = r.branch(c.id).unwrap().iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![u1.id, a1.id]);
    }

    #[test]
    fn delete_hides_and_undo_restores() {
        let mut r = Repo::in_memory();
        let c = r.create_conversation("keep me", "2026-01-02", false);
        r.delete(c.id).unwrap();
        assert!(r.list_conversations(None).is_empty());
        assert!(r.conversation(c.id).is_err());
        r.undo_delete(c.id).unwrap();
        assert_eq!(r.list_conversations(None).len(), 1);
    }

    #[test]
    fn search_matches_titles_and_messages() {
        let mut r = Repo::in_memory();
        let a = r.create_conversation("Rust questions", "2026-01-02", false);
        let b = r.create_conversation("Cooking", "2026-01-02", false);
        r.add_message(
            b.id,
            None,
            Role::User,
            "How long to boil an EGG?",
            MessageStatus::Complete,
        )
        .unwrap();
        let found = |q| {
            r.list_conversations(Some(q))
                .iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(found("rust"), vec![a.id]);
        assert_eq!(found("egg"), vec![b.id]);
        assert!(found("nothing like this").is_empty());
    }

    #[test]
    fn saved_file_reopens_with_streaming_marked_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chats.json");
        let mut r = Repo::open(&path).unwrap();
        let c = r.create_conversation("saved", "2026-01-02", true);
        let m = r
            .add_message(
                c.id,
                None,
                Role::Assistant,
                "partial",
                MessageStatus::Streaming,
            )
            .unwrap();
        r.save().unwrap();
        let r2 = Repo::open(&path).unwrap();
        assert_eq!(r2.conversation(c.id).unwrap().title, "saved");
        assert_eq!(r2.message(m.id).unwrap().status, MessageStatus::Interrupted);
        assert_eq!(r2.message(m.id).unwrap().content, "partial");
    }
}
