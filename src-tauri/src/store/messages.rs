//! Messages and their branches: adding, reading the active path, switching branches, and the
//! row-level steps of a streaming reply (begin, append, finish, fail).

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::{now_ms, ConversationId, MessageId, MessageStatus, Result, Role, Store, StoreError};
use crate::engine::events::{ChatMessage, GenerationStats};

/// One stored message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Its id; ids grow with insertion order.
    pub id: MessageId,
    /// The conversation it belongs to.
    pub conversation_id: ConversationId,
    /// The message it answers or follows; `None` for a first message.
    pub parent_id: Option<MessageId>,
    /// Who wrote it.
    pub role: Role,
    /// The visible text (for a reply, the answer without reasoning).
    pub content: String,
    /// The reasoning of a reply, empty when there was none.
    pub reasoning: String,
    /// The token ids the model generated, kept so later prompts reuse them exactly.
    pub token_ids: Option<Vec<u32>>,
    /// Where it is in its life.
    pub status: MessageStatus,
    /// Why a reply failed.
    pub error: Option<String>,
    /// Figures of a finished reply.
    pub stats: Option<GenerationStats>,
    /// When it was created, Unix milliseconds.
    pub created_at_ms: i64,
    /// For a reply, the model and engine that wrote it, as shown under it.
    pub answered_by: Option<String>,
}

impl Message {
    /// The message as the engine takes it in a prompt.
    pub fn to_chat_message(&self) -> ChatMessage {
        ChatMessage {
            role: self.role.as_str().to_owned(),
            content: self.content.clone(),
            token_ids: self.token_ids.clone(),
        }
    }
}

const COLUMNS: &str = "id, conversation_id, parent_id, role, content, reasoning, token_ids, status, error, stats, created_at, answered_by";

/// Token ids as a BLOB: little-endian u32 each, 4 bytes per token.
pub(crate) fn encode_token_ids(ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_le_bytes()).collect()
}

/// The inverse of [`encode_token_ids`]; `None` when the length is not a multiple of 4.
pub(crate) fn decode_token_ids(bytes: &[u8]) -> Option<Vec<u32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    let id: MessageId = row.get(0)?;
    let corrupt = |what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            format!("message {id}: bad {what}").into(),
        )
    };
    let token_ids = match row.get_ref(6)?.as_blob_or_null()? {
        None => None,
        Some(bytes) => Some(decode_token_ids(bytes).ok_or_else(|| corrupt("token_ids"))?),
    };
    let stats = match row.get_ref(9)?.as_str_or_null()? {
        None => None,
        Some(json) => Some(serde_json::from_str(json).map_err(|_| corrupt("stats"))?),
    };
    Ok(Message {
        id,
        conversation_id: row.get(1)?,
        parent_id: row.get(2)?,
        role: row.get(3)?,
        content: row.get(4)?,
        reasoning: row.get(5)?,
        token_ids,
        status: row.get(7)?,
        error: row.get(8)?,
        stats,
        created_at_ms: row.get(10)?,
        answered_by: row.get(11)?,
    })
}

fn read_message(conn: &Connection, id: MessageId) -> Result<Message> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM messages WHERE id = ?1"))?
        .query_row([id], from_row)
        .optional()?
        .ok_or(StoreError::NotFound {
            what: "message",
            id: id.0,
        })
}

/// Inserts a message as the new leaf of its conversation, checking that the parent is in the
/// same conversation.
fn insert_message(
    conn: &mut Connection,
    conversation: ConversationId,
    parent: Option<MessageId>,
    role: Role,
    content: &str,
    status: MessageStatus,
    answered_by: Option<&str>,
) -> Result<MessageId> {
    let tx = conn.transaction()?;
    let exists: bool = tx
        .query_row(
            "SELECT 1 FROM conversations WHERE id = ?1",
            [conversation],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if !exists {
        return Err(StoreError::NotFound {
            what: "conversation",
            id: conversation.0,
        });
    }
    if let Some(parent) = parent {
        let owner: Option<ConversationId> = tx
            .query_row(
                "SELECT conversation_id FROM messages WHERE id = ?1",
                [parent],
                |r| r.get(0),
            )
            .optional()?;
        match owner {
            None => {
                return Err(StoreError::NotFound {
                    what: "message",
                    id: parent.0,
                })
            }
            Some(owner) if owner != conversation => {
                return Err(StoreError::ForeignParent {
                    parent,
                    conversation,
                });
            }
            Some(_) => {}
        }
    }
    let now = now_ms();
    tx.execute(
        "INSERT INTO messages (conversation_id, parent_id, role, content, status, created_at, answered_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![conversation, parent, role, content, status, now, answered_by],
    )?;
    let id = MessageId(tx.last_insert_rowid());
    tx.execute(
        "UPDATE conversations SET leaf_id = ?2, updated_at = ?3 WHERE id = ?1",
        params![conversation, id, now],
    )?;
    tx.commit()?;
    Ok(id)
}

impl Store {
    /// Adds a complete message under `parent` (`None` for a first message) and makes it the
    /// leaf of the active branch. Adding a second child to a parent is how an edit or a
    /// regenerated reply starts a new branch.
    pub fn add_message(
        &self,
        conversation: ConversationId,
        parent: Option<MessageId>,
        role: Role,
        content: &str,
    ) -> Result<MessageId> {
        insert_message(
            &mut self.conn(),
            conversation,
            parent,
            role,
            content,
            MessageStatus::Complete,
            None,
        )
    }

    /// Reads one message.
    pub fn message(&self, id: MessageId) -> Result<Message> {
        read_message(&self.conn(), id)
    }

    /// The branch from the first message down to `id`, in order.
    pub fn path_to(&self, id: MessageId) -> Result<Vec<Message>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "WITH RECURSIVE branch(id, depth) AS (
                 SELECT ?1, 0
                 UNION ALL
                 SELECT m.parent_id, b.depth + 1 FROM messages m JOIN branch b ON m.id = b.id
                 WHERE m.parent_id IS NOT NULL
             )
             SELECT {COLUMNS} FROM messages JOIN branch USING (id) ORDER BY branch.depth DESC"
        ))?;
        let path = stmt
            .query_map([id], from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if path.is_empty() {
            return Err(StoreError::NotFound {
                what: "message",
                id: id.0,
            });
        }
        Ok(path)
    }

    /// The branch on screen: from the first message to the conversation's leaf (empty for a
    /// conversation without messages).
    pub fn active_path(&self, conversation: ConversationId) -> Result<Vec<Message>> {
        match self.conversation(conversation)?.leaf_id {
            Some(leaf) => self.path_to(leaf),
            None => Ok(Vec::new()),
        }
    }

    /// The ids of a message and its siblings (the alternatives at that point of the tree),
    /// oldest first, for "2 / 3" style navigation.
    pub fn siblings(&self, id: MessageId) -> Result<Vec<MessageId>> {
        let conn = self.conn();
        let message = read_message(&conn, id)?;
        let mut stmt = conn.prepare_cached(
            "SELECT id FROM messages WHERE conversation_id = ?1 AND parent_id IS ?2 ORDER BY id",
        )?;
        let ids = stmt
            .query_map(params![message.conversation_id, message.parent_id], |r| {
                r.get(0)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(ids)
    }

    /// Shows the branch through `id`: the leaf becomes the newest message reached by always
    /// taking the newest child below `id`. Returns the new leaf.
    pub fn select_branch(&self, id: MessageId) -> Result<MessageId> {
        let conn = self.conn();
        let message = read_message(&conn, id)?;
        let leaf: MessageId = conn.query_row(
            "WITH RECURSIVE down(id, depth) AS (
                 SELECT ?1, 0
                 UNION ALL
                 SELECT (SELECT max(c.id) FROM messages c WHERE c.parent_id = down.id), depth + 1
                 FROM down WHERE EXISTS (SELECT 1 FROM messages c WHERE c.parent_id = down.id)
             )
             SELECT id FROM down ORDER BY depth DESC LIMIT 1",
            [id],
            |r| r.get(0),
        )?;
        conn.execute(
            "UPDATE conversations SET leaf_id = ?2 WHERE id = ?1",
            params![message.conversation_id, leaf],
        )?;
        Ok(leaf)
    }

    /// Starts an assistant reply under `parent`: an empty `streaming` message that becomes the
    /// leaf, recording who writes it (`answered_by`, empty for nobody named). Write its text
    /// with a [`super::ReplyWriter`].
    pub fn begin_reply(
        &self,
        conversation: ConversationId,
        parent: MessageId,
        answered_by: &str,
    ) -> Result<MessageId> {
        insert_message(
            &mut self.conn(),
            conversation,
            Some(parent),
            Role::Assistant,
            "",
            MessageStatus::Streaming,
            Some(answered_by).filter(|a| !a.is_empty()),
        )
    }

    /// Appends streamed text to a reply that is still streaming.
    pub fn append_reply(&self, id: MessageId, answer: &str, reasoning: &str) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE messages SET content = content || ?2, reasoning = reasoning || ?3
             WHERE id = ?1 AND status = 'streaming'",
            params![id, answer, reasoning],
        )?;
        self.expect_streaming(id, n)
    }

    /// Marks a streaming reply complete, with its figures and generated token ids.
    pub fn finish_reply(
        &self,
        id: MessageId,
        stats: &GenerationStats,
        token_ids: &[u32],
    ) -> Result<()> {
        let stats = serde_json::to_string(stats).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let n = self.conn().execute(
            "UPDATE messages SET status = 'complete', stats = ?2, token_ids = ?3
             WHERE id = ?1 AND status = 'streaming'",
            params![id, stats, encode_token_ids(token_ids)],
        )?;
        self.expect_streaming(id, n)
    }

    /// Marks a streaming reply failed, keeping the text it had.
    pub fn fail_reply(&self, id: MessageId, error: &str) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE messages SET status = 'error', error = ?2 WHERE id = ?1 AND status = 'streaming'",
            params![id, error],
        )?;
        self.expect_streaming(id, n)
    }

    /// Marks one streaming reply interrupted (stopped without a result), keeping its text.
    pub fn interrupt_reply(&self, id: MessageId) -> Result<()> {
        self.interrupt_reply_because(id, None)
    }

    /// Marks one streaming reply interrupted, keeping its text and why it was cut off (a
    /// server lost mid-reply), which shows under it.
    pub fn interrupt_reply_because(&self, id: MessageId, reason: Option<&str>) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE messages SET status = 'interrupted', error = ?2 WHERE id = ?1 AND status = 'streaming'",
            params![id, reason],
        )?;
        self.expect_streaming(id, n)
    }

    fn expect_streaming(&self, id: MessageId, changed: usize) -> Result<()> {
        if changed == 1 {
            return Ok(());
        }
        self.message(id)?;
        Err(StoreError::NotStreaming(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::events::FinishReason;
    use crate::store::test_util::temp_store;
    use crate::store::NewConversation;

    fn conversation(store: &Store) -> ConversationId {
        store
            .create_conversation(&NewConversation::new("t", false, ""))
            .unwrap()
            .id
    }

    fn contents(path: &[Message]) -> Vec<&str> {
        path.iter().map(|m| m.content.as_str()).collect()
    }

    #[test]
    fn token_ids_round_trip_as_little_endian() {
        let ids = [0, 1, 128_011, u32::MAX];
        let bytes = encode_token_ids(&ids);
        assert_eq!(bytes.len(), 16);
        assert_eq!(&bytes[4..8], &[1, 0, 0, 0]);
        assert_eq!(decode_token_ids(&bytes).unwrap(), ids);
        assert_eq!(decode_token_ids(&bytes[..5]), None);
    }

    #[test]
    fn messages_chain_into_the_active_path() {
        let (_dir, store) = temp_store();
        let c = conversation(&store);
        assert!(store.active_path(c).unwrap().is_empty());
        let q = store.add_message(c, None, Role::User, "hi").unwrap();
        let a = store
            .add_message(c, Some(q), Role::Assistant, "hello")
            .unwrap();
        let q2 = store
            .add_message(c, Some(a), Role::User, "how are you?")
            .unwrap();
        assert_eq!(store.conversation(c).unwrap().leaf_id, Some(q2));
        let path = store.active_path(c).unwrap();
        assert_eq!(contents(&path), ["hi", "hello", "how are you?"]);
        assert_eq!(path[1].parent_id, Some(q));
        assert_eq!(path[1].status, MessageStatus::Complete);
        assert_eq!(contents(&store.path_to(a).unwrap()), ["hi", "hello"]);
        assert_eq!(
            path[2].to_chat_message(),
            ChatMessage::new("user", "how are you?")
        );
    }

    #[test]
    fn edits_branch_and_old_replies_stay_reachable() {
        let (_dir, store) = temp_store();
        let c = conversation(&store);
        let q = store
            .add_message(c, None, Role::User, "capital of France?")
            .unwrap();
        let a = store
            .add_message(c, Some(q), Role::Assistant, "Paris")
            .unwrap();
        let q2 = store
            .add_message(c, Some(a), Role::User, "and Italy?")
            .unwrap();
        let a2 = store
            .add_message(c, Some(q2), Role::Assistant, "Rome")
            .unwrap();

        // Edit the second question: a sibling of q2 with its own reply.
        let q2b = store
            .add_message(c, Some(a), Role::User, "and Spain?")
            .unwrap();
        let a2b = store
            .add_message(c, Some(q2b), Role::Assistant, "Madrid")
            .unwrap();
        assert_eq!(
            contents(&store.active_path(c).unwrap()),
            ["capital of France?", "Paris", "and Spain?", "Madrid"]
        );
        assert_eq!(store.siblings(q2b).unwrap(), [q2, q2b]);
        assert_eq!(store.siblings(q).unwrap(), [q]);

        // Going back to the first version shows its whole old branch.
        assert_eq!(store.select_branch(q2).unwrap(), a2);
        assert_eq!(
            contents(&store.active_path(c).unwrap()),
            ["capital of France?", "Paris", "and Italy?", "Rome"]
        );
        assert_eq!(store.select_branch(q2b).unwrap(), a2b);
        assert_eq!(
            store.select_branch(a).unwrap(),
            a2b,
            "newest child wins below a fork"
        );
    }

    #[test]
    fn parents_must_exist_in_the_same_conversation() {
        let (_dir, store) = temp_store();
        let c1 = conversation(&store);
        let c2 = conversation(&store);
        let m1 = store.add_message(c1, None, Role::User, "x").unwrap();
        assert!(matches!(
            store.add_message(c2, Some(m1), Role::User, "y"),
            Err(StoreError::ForeignParent { .. })
        ));
        assert!(matches!(
            store.add_message(c1, Some(MessageId(999)), Role::User, "y"),
            Err(StoreError::NotFound {
                what: "message",
                ..
            })
        ));
        assert!(matches!(
            store.add_message(ConversationId(999), None, Role::User, "y"),
            Err(StoreError::NotFound {
                what: "conversation",
                ..
            })
        ));
        assert!(matches!(
            store.path_to(MessageId(999)),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn reply_lifecycle_keeps_stats_and_token_ids() {
        let (_dir, store) = temp_store();
        let c = conversation(&store);
        let q = store.add_message(c, None, Role::User, "hi").unwrap();
        let r = store.begin_reply(c, q, "").unwrap();
        assert_eq!(store.message(r).unwrap().status, MessageStatus::Streaming);
        store.append_reply(r, "Hel", "thinking").unwrap();
        store.append_reply(r, "lo", "…").unwrap();
        let stats = GenerationStats {
            prompt_tokens: 12,
            generated_tokens: 3,
            decode_tps: 9.5,
            finish_reason: FinishReason::Stop,
            ..Default::default()
        };
        store.finish_reply(r, &stats, &[9906, 11, 128_012]).unwrap();
        let m = store.message(r).unwrap();
        assert_eq!(
            (m.content.as_str(), m.reasoning.as_str()),
            ("Hello", "thinking…")
        );
        assert_eq!(m.status, MessageStatus::Complete);
        assert_eq!(m.stats, Some(stats.clone()));
        assert_eq!(m.token_ids.as_deref(), Some(&[9906, 11, 128_012][..]));
        assert!(matches!(
            store.append_reply(r, "more", ""),
            Err(StoreError::NotStreaming(_))
        ));
        assert!(matches!(
            store.finish_reply(r, &stats, &[]),
            Err(StoreError::NotStreaming(_))
        ));

        let r2 = store.begin_reply(c, q, "").unwrap();
        store.append_reply(r2, "partial", "").unwrap();
        store.fail_reply(r2, "out of memory").unwrap();
        let m2 = store.message(r2).unwrap();
        assert_eq!(
            (m2.status, m2.error.as_deref(), m2.content.as_str()),
            (MessageStatus::Error, Some("out of memory"), "partial")
        );
    }

    #[test]
    fn reopening_marks_streaming_replies_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let (c, r) = {
            let store = Store::open(&path).unwrap();
            let c = conversation(&store);
            let q = store.add_message(c, None, Role::User, "hi").unwrap();
            let r = store.begin_reply(c, q, "").unwrap();
            store.append_reply(r, "half an ans", "").unwrap();
            (c, r)
        };
        let store = Store::open(&path).unwrap();
        let m = store.message(r).unwrap();
        assert_eq!(m.status, MessageStatus::Interrupted);
        assert_eq!(m.content, "half an ans");
        assert_eq!(store.active_path(c).unwrap().last().unwrap().id, r);
    }
}
