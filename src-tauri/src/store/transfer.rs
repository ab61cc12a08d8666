//! Conversations out of and into the database as a lossless JSON file: every branch, the
//! reasoning, each reply's status, error and figures, and the conversation's settings.
//!
//! An import always makes new conversations (nothing is overwritten) and trusts nothing in
//! the file: the message tree is checked (each parent an earlier message of the same
//! conversation, so there is no cycle), and token ids are never read from it — they are the
//! model's own cache of a reply's text, and ids from a file could smuggle control tokens
//! into a prompt. Imported replies are tokenized from their text like typed messages.

use rusqlite::params;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use super::{now_ms, ConversationId, MessageId, MessageStatus, Result, Role, Store, StoreError};
use crate::engine::events::GenerationStats;

/// The `format` field of an export file.
pub const EXPORT_FORMAT: &str = "smollm3-bot.conversations";
/// The version of the export format this build writes and reads.
pub const EXPORT_VERSION: u32 = 1;

/// An export file: one or more conversations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportFile {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// [`EXPORT_VERSION`] when written by this build.
    pub version: u32,
    /// When the file was written, Unix milliseconds.
    pub exported_at_ms: i64,
    /// The conversations.
    pub conversations: Vec<ExportedConversation>,
}

/// One conversation with all its branches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedConversation {
    /// Its title.
    pub title: String,
    /// When it was created, Unix milliseconds.
    pub created_at_ms: i64,
    /// When it last changed, Unix milliseconds.
    pub updated_at_ms: i64,
    /// The date the template shows as "Today Date".
    pub today: String,
    /// Reasoning mode.
    pub thinking: bool,
    /// The conversation's system prompt.
    pub system_prompt: String,
    /// The `id` of the message at the end of the branch on screen.
    pub leaf: Option<i64>,
    /// Every message, parents before their children.
    pub messages: Vec<ExportedMessage>,
}

/// One message. `id` and `parent` only link the messages of this file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedMessage {
    /// Its number in the file.
    pub id: i64,
    /// The message it follows, an earlier `id`; `None` for a first message.
    pub parent: Option<i64>,
    /// Who wrote it.
    pub role: Role,
    /// The visible text.
    pub content: String,
    /// A reply's reasoning.
    #[serde(default)]
    pub reasoning: String,
    /// Where the message was in its life.
    pub status: MessageStatus,
    /// Why a reply failed.
    #[serde(default)]
    pub error: Option<String>,
    /// A finished reply's figures.
    #[serde(default)]
    pub stats: Option<GenerationStats>,
    /// When it was written, Unix milliseconds.
    pub created_at_ms: i64,
    /// For a reply, the model and engine that wrote it (absent in files from before it was
    /// recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
}

/// Why an export file cannot be imported.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ImportError {
    /// Not JSON, or not this format's fields.
    #[error("not a SmolLM3 Bot conversations file: {0}")]
    NotExport(String),
    /// A newer (or unknown) version of the format.
    #[error(
        "export format version {0} is not one this app reads (it reads version {EXPORT_VERSION})"
    )]
    Version(u32),
    /// The messages do not form a tree.
    #[error("conversation {conversation} (\"{title}\"): {problem}")]
    BadTree {
        /// Its position in the file, from 1.
        conversation: usize,
        /// Its title.
        title: String,
        /// What is wrong.
        problem: String,
    },
}

impl ExportFile {
    /// Reads and checks an export file's text.
    pub fn parse(text: &str) -> std::result::Result<Self, ImportError> {
        // The format and version first, so a newer file says so instead of naming a field.
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<u32>,
        }
        let header: Header =
            serde_json::from_str(text).map_err(|e| ImportError::NotExport(e.to_string()))?;
        if header.format.as_deref() != Some(EXPORT_FORMAT) {
            return Err(ImportError::NotExport(format!(
                "its \"format\" is not \"{EXPORT_FORMAT}\""
            )));
        }
        match header.version {
            Some(EXPORT_VERSION) => {}
            Some(v) => return Err(ImportError::Version(v)),
            None => return Err(ImportError::NotExport("it has no \"version\"".into())),
        }
        let file: ExportFile =
            serde_json::from_str(text).map_err(|e| ImportError::NotExport(e.to_string()))?;
        for (i, c) in file.conversations.iter().enumerate() {
            c.check_tree().map_err(|problem| ImportError::BadTree {
                conversation: i + 1,
                title: c.title.chars().take(60).collect(),
                problem,
            })?;
        }
        Ok(file)
    }

    /// The file's text (pretty-printed JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("export types always serialize")
    }
}

impl ExportedConversation {
    /// Every parent is an earlier message of this conversation (so the messages form a tree
    /// with no cycle), ids are unique, and the leaf is one of them.
    fn check_tree(&self) -> std::result::Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for m in &self.messages {
            if let Some(p) = m.parent {
                if !seen.contains(&p) {
                    return Err(format!(
                        "message {} follows message {p}, which does not come before it",
                        m.id
                    ));
                }
            }
            if !seen.insert(m.id) {
                return Err(format!("two messages have the id {}", m.id));
            }
        }
        match self.leaf {
            Some(leaf) if !seen.contains(&leaf) => {
                Err(format!("the leaf {leaf} is not one of its messages"))
            }
            None if !self.messages.is_empty() => Err("it has messages but no leaf".into()),
            _ => Ok(()),
        }
    }

    /// The branch on screen: from the first message to the leaf.
    pub fn active_branch(&self) -> Vec<&ExportedMessage> {
        let by_id: HashMap<i64, &ExportedMessage> =
            self.messages.iter().map(|m| (m.id, m)).collect();
        let mut branch = Vec::new();
        let mut at = self.leaf;
        while let Some(m) = at.and_then(|id| by_id.get(&id)) {
            branch.push(*m);
            at = m.parent;
            if branch.len() > self.messages.len() {
                break; // Only a file that skipped `check_tree` could loop.
            }
        }
        branch.reverse();
        branch
    }
}

impl Store {
    /// A conversation with every branch, as an export file holds it.
    pub fn export_conversation(&self, id: ConversationId) -> Result<ExportedConversation> {
        let c = self.conversation(id)?;
        let messages = self.all_messages(id)?;
        Ok(ExportedConversation {
            title: c.title,
            created_at_ms: c.created_at_ms,
            updated_at_ms: c.updated_at_ms,
            today: c.today,
            thinking: c.thinking,
            system_prompt: c.system_prompt,
            leaf: c.leaf_id.map(|l| l.0),
            messages: messages
                .into_iter()
                .map(|m| ExportedMessage {
                    id: m.id.0,
                    parent: m.parent_id.map(|p| p.0),
                    role: m.role,
                    content: m.content,
                    reasoning: m.reasoning,
                    status: m.status,
                    error: m.error,
                    stats: m.stats,
                    created_at_ms: m.created_at_ms,
                    answered_by: m.answered_by,
                })
                .collect(),
        })
    }

    /// Imports one conversation as a new one owned by `owner`, in one transaction (a failure
    /// leaves nothing behind). A reply the file has as still streaming is imported as
    /// interrupted. The file must have passed [`ExportFile::parse`].
    pub fn import_conversation(
        &self,
        c: &ExportedConversation,
        owner: &str,
    ) -> Result<ConversationId> {
        c.check_tree().map_err(StoreError::Corrupt)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO conversations (title, created_at, updated_at, today, thinking, system_prompt, owner)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![c.title, c.created_at_ms, c.updated_at_ms.max(c.created_at_ms), c.today, c.thinking, c.system_prompt, owner],
        )?;
        let conversation = ConversationId(tx.last_insert_rowid());
        let mut ids: HashMap<i64, MessageId> = HashMap::new();
        for m in &c.messages {
            let status = match m.status {
                MessageStatus::Streaming => MessageStatus::Interrupted,
                s => s,
            };
            let stats = m
                .stats
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "INSERT INTO messages (conversation_id, parent_id, role, content, reasoning, status, error, stats, created_at, answered_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    conversation,
                    m.parent.and_then(|p| ids.get(&p).copied()),
                    m.role,
                    m.content,
                    m.reasoning,
                    status,
                    m.error,
                    stats,
                    m.created_at_ms,
                    m.answered_by
                ],
            )?;
            ids.insert(m.id, MessageId(tx.last_insert_rowid()));
        }
        let leaf = c.leaf.and_then(|l| ids.get(&l).copied());
        tx.execute(
            "UPDATE conversations SET leaf_id = ?2 WHERE id = ?1",
            params![conversation, leaf],
        )?;
        tx.commit()?;
        Ok(conversation)
    }

    /// Every message of a conversation, every branch, oldest first (parents come before
    /// their children: ids grow with insertion).
    fn all_messages(&self, id: ConversationId) -> Result<Vec<super::Message>> {
        let mut out = Vec::new();
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT id FROM messages WHERE conversation_id = ?1 ORDER BY id")?;
        let ids = stmt
            .query_map([id], |row| row.get::<_, MessageId>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        drop(stmt);
        drop(conn);
        for m in ids {
            out.push(self.message(m)?);
        }
        Ok(out)
    }
}

/// A new export file holding `conversations`, stamped now.
pub fn export_file(conversations: Vec<ExportedConversation>) -> ExportFile {
    ExportFile {
        format: EXPORT_FORMAT.into(),
        version: EXPORT_VERSION,
        exported_at_ms: now_ms(),
        conversations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::temp_store;
    use crate::store::{NewConversation, DESKTOP_OWNER};

    /// A conversation with an edited first message (two branches) and a reasoning reply.
    fn branched(store: &Store) -> ConversationId {
        let c = store
            .create_conversation(&NewConversation::new("Trip", true, "Be brief."))
            .unwrap();
        let q1 = store
            .add_message(c.id, None, Role::User, "Where to?")
            .unwrap();
        let r1 = store.begin_reply(c.id, q1, "").unwrap();
        store
            .append_reply(r1, "Paris <script>x</script>", "Think of cities.")
            .unwrap();
        store
            .finish_reply(r1, &GenerationStats::default(), &[1, 2, 3])
            .unwrap();
        // An edit of the question starts a second branch; its reply was interrupted.
        let q2 = store
            .add_message(c.id, None, Role::User, "Where to, cheaply?")
            .unwrap();
        let r2 = store.begin_reply(c.id, q2, "").unwrap();
        store.append_reply(r2, "Lisb", "").unwrap();
        c.id
    }

    #[test]
    fn export_then_import_keeps_every_message_and_branch() {
        let (_dir, store) = temp_store();
        let id = branched(&store);
        let exported = store.export_conversation(id).unwrap();
        assert_eq!(exported.messages.len(), 4);
        let text = export_file(vec![exported.clone()]).to_json();
        let file = ExportFile::parse(&text).unwrap();
        let new = store
            .import_conversation(&file.conversations[0], DESKTOP_OWNER)
            .unwrap();
        assert_ne!(new, id, "an import is a new conversation");
        let again = store.export_conversation(new).unwrap();
        // The same tree, texts, reasoning and settings; ids are renumbered, and the reply that
        // was streaming is interrupted.
        assert_eq!(again.title, "Trip");
        assert_eq!(again.system_prompt, "Be brief.");
        assert!(again.thinking);
        let shape = |c: &ExportedConversation| {
            let pos: HashMap<i64, usize> = c
                .messages
                .iter()
                .enumerate()
                .map(|(i, m)| (m.id, i))
                .collect();
            c.messages
                .iter()
                .map(|m| {
                    (
                        m.parent.map(|p| pos[&p]),
                        m.role,
                        m.content.clone(),
                        m.reasoning.clone(),
                        m.stats.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(&again), shape(&exported));
        assert_eq!(again.messages[3].status, MessageStatus::Interrupted);
        let texts = |c: &ExportedConversation| {
            c.active_branch()
                .iter()
                .map(|m| m.content.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(texts(&again), texts(&exported));
        // Token ids never travel.
        let path = store.active_path(new).unwrap();
        assert!(path.iter().all(|m| m.token_ids.is_none()));
    }

    #[test]
    fn broken_files_are_refused_clearly() {
        let (_dir, store) = temp_store();
        let exported = store.export_conversation(branched(&store)).unwrap();
        let good = export_file(vec![exported]);
        assert!(matches!(
            ExportFile::parse("{not json"),
            Err(ImportError::NotExport(_))
        ));
        let mut newer = serde_json::to_value(&good).unwrap();
        newer["version"] = 2.into();
        assert_eq!(
            ExportFile::parse(&newer.to_string()),
            Err(ImportError::Version(2))
        );
        let mut cycle = good.clone();
        cycle.conversations[0].messages[0].parent = Some(cycle.conversations[0].messages[1].id);
        let e = ExportFile::parse(&cycle.to_json()).unwrap_err().to_string();
        assert!(e.contains("does not come before it"), "{e}");
        let mut leaf = good.clone();
        leaf.conversations[0].leaf = Some(999);
        assert!(ExportFile::parse(&leaf.to_json()).is_err());
        let mut role = serde_json::to_value(&good).unwrap();
        role["conversations"][0]["messages"][0]["role"] = "tool".into();
        assert!(ExportFile::parse(&role.to_string()).is_err());
        let mut extra = serde_json::to_value(&good).unwrap();
        extra["conversations"][0]["messages"][0]["token_ids"] = serde_json::json!([1, 2]);
        assert!(
            ExportFile::parse(&extra.to_string()).is_err(),
            "token ids are not a field of the format"
        );
        // Nothing was imported by the refusals.
        assert_eq!(store.list_conversations(None).unwrap().len(), 1);
    }
}
