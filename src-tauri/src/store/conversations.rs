//! Conversations: create, list and search, rename, soft delete with undo, purge.

use std::time::Duration;

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::{now_ms, ConversationId, MessageId, Result, Store, StoreError};

/// A conversation's header (its messages are read separately).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// Its id.
    pub id: ConversationId,
    /// Shown in the list.
    pub title: String,
    /// When it was created, Unix milliseconds.
    pub created_at_ms: i64,
    /// When it last changed, Unix milliseconds.
    pub updated_at_ms: i64,
    /// The date the chat template shows as "Today Date", fixed when the conversation started.
    pub today: String,
    /// Whether the model reasons before answering.
    pub thinking: bool,
    /// The system prompt for this conversation.
    pub system_prompt: String,
    /// The newest message of the branch on screen, if any message exists.
    pub leaf_id: Option<MessageId>,
    /// Set while the conversation sits in the bin, Unix milliseconds.
    pub deleted_at_ms: Option<i64>,
    /// Who may see it: [`DESKTOP_OWNER`](super::DESKTOP_OWNER) for the desktop app, or one
    /// browser's session for the built-in server.
    pub owner: String,
}

/// What a new conversation starts with.
#[derive(Debug, Clone, PartialEq)]
pub struct NewConversation {
    /// Shown in the list.
    pub title: String,
    /// The template's "Today Date"; [`NewConversation::new`] fills in the local date.
    pub today: String,
    /// Reasoning mode.
    pub thinking: bool,
    /// The system prompt.
    pub system_prompt: String,
    /// Who may see it; [`NewConversation::new`] gives it to the desktop.
    pub owner: String,
}

impl NewConversation {
    /// A conversation dated today, in the `%d %B %Y` form the SmolLM3 template prints
    /// (for example `27 November 2026`).
    pub fn new(title: impl Into<String>, thinking: bool, system_prompt: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            today: chrono::Local::now().format("%d %B %Y").to_string(),
            thinking,
            system_prompt: system_prompt.into(),
            owner: super::DESKTOP_OWNER.to_string(),
        }
    }

    /// The same conversation, owned by `owner` instead.
    pub fn owned_by(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }
}

const COLUMNS: &str =
    "c.id, c.title, c.created_at, c.updated_at, c.today, c.thinking, c.system_prompt, c.leaf_id, c.deleted_at, c.owner";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Conversation> {
    Ok(Conversation {
        id: row.get(0)?,
        title: row.get(1)?,
        created_at_ms: row.get(2)?,
        updated_at_ms: row.get(3)?,
        today: row.get(4)?,
        thinking: row.get(5)?,
        system_prompt: row.get(6)?,
        leaf_id: row.get(7)?,
        deleted_at_ms: row.get(8)?,
        owner: row.get(9)?,
    })
}

/// Turns what a person typed into an FTS5 query: every word must appear, as a word or a
/// word prefix. Quoting each word keeps FTS5 operators and punctuation from being parsed.
fn fts_query(search: &str) -> Option<String> {
    let terms: Vec<String> = search
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| format!("\"{w}\"*"))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

/// Escapes `%`, `_` and the escape character itself for a `LIKE … ESCAPE '\'` pattern.
fn like_pattern(search: &str) -> String {
    let mut out = String::with_capacity(search.len() + 2);
    out.push('%');
    for c in search.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

impl Store {
    /// Creates a conversation.
    pub fn create_conversation(&self, new: &NewConversation) -> Result<Conversation> {
        let now = now_ms();
        let conn = self.conn();
        conn.execute(
            "INSERT INTO conversations (title, created_at, updated_at, today, thinking, system_prompt, owner)
             VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6)",
            params![new.title, now, new.today, new.thinking, new.system_prompt, new.owner],
        )?;
        let id = ConversationId(conn.last_insert_rowid());
        drop(conn);
        self.conversation(id)
    }

    /// Reads one conversation, deleted or not.
    pub fn conversation(&self, id: ConversationId) -> Result<Conversation> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM conversations c WHERE c.id = ?1"),
                [id],
                from_row,
            )
            .optional()?
            .ok_or(StoreError::NotFound {
                what: "conversation",
                id: id.0,
            })
    }

    /// Conversations not in the bin, of every owner, most recently active first. With
    /// `search`, only those whose title contains it or whose messages contain all of its words
    /// (as words or word prefixes, ignoring case and accents).
    pub fn list_conversations(&self, search: Option<&str>) -> Result<Vec<Conversation>> {
        self.list(None, search)
    }

    /// Whether `owner` has any conversation (deleted ones included).
    pub fn owns_any(&self, owner: &str) -> Result<bool> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM conversations WHERE owner = ?1)",
            [owner],
            |r| r.get(0),
        )?)
    }

    /// Like [`Store::list_conversations`], but only the conversations `owner` may see.
    pub fn list_conversations_of(
        &self,
        owner: &str,
        search: Option<&str>,
    ) -> Result<Vec<Conversation>> {
        self.list(Some(owner), search)
    }

    fn list(&self, owner: Option<&str>, search: Option<&str>) -> Result<Vec<Conversation>> {
        let conn = self.conn();
        let search = search.map(str::trim).filter(|s| !s.is_empty());
        // A NULL owner lists every owner's conversations.
        let rows = match search {
            None => {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM conversations c
                     WHERE c.deleted_at IS NULL AND (?1 IS NULL OR c.owner = ?1)
                     ORDER BY c.updated_at DESC, c.id DESC"
                ))?;
                let rows = stmt
                    .query_map(params![owner], from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                rows
            }
            Some(text) => {
                let words = fts_query(text);
                // A search of punctuation alone has no words: match titles only.
                let in_messages = if words.is_some() {
                    "OR c.id IN (SELECT m.conversation_id FROM messages_fts
                                 JOIN messages m ON m.id = messages_fts.rowid
                                 WHERE messages_fts MATCH ?2)"
                } else {
                    "OR ?2 IS NOT NULL AND 0"
                };
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM conversations c
                     WHERE c.deleted_at IS NULL AND (?3 IS NULL OR c.owner = ?3)
                       AND (c.title LIKE ?1 ESCAPE '\\' {in_messages})
                     ORDER BY c.updated_at DESC, c.id DESC"
                ))?;
                let rows = stmt
                    .query_map(params![like_pattern(text), words, owner], from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                rows
            }
        };
        Ok(rows)
    }

    /// Conversations in the bin, most recently deleted first.
    pub fn list_deleted(&self) -> Result<Vec<Conversation>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM conversations c WHERE c.deleted_at IS NOT NULL
             ORDER BY c.deleted_at DESC, c.id DESC"
        ))?;
        let rows = stmt
            .query_map([], from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Renames a conversation.
    pub fn rename_conversation(&self, id: ConversationId, title: &str) -> Result<()> {
        self.update_one(
            id,
            "UPDATE conversations SET title = ?2, updated_at = ?3 WHERE id = ?1",
            title,
        )
    }

    /// Changes the system prompt of a conversation (its cached prompt prefix changes with it).
    pub fn set_system_prompt(&self, id: ConversationId, system_prompt: &str) -> Result<()> {
        self.update_one(
            id,
            "UPDATE conversations SET system_prompt = ?2, updated_at = ?3 WHERE id = ?1",
            system_prompt,
        )
    }

    /// Turns reasoning mode on or off for a conversation.
    pub fn set_thinking(&self, id: ConversationId, thinking: bool) -> Result<()> {
        self.update_one(
            id,
            "UPDATE conversations SET thinking = ?2, updated_at = ?3 WHERE id = ?1",
            thinking,
        )
    }

    /// Moves a conversation to the bin; [`Store::restore_conversation`] undoes it.
    pub fn delete_conversation(&self, id: ConversationId) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE conversations SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
            params![id, now_ms()],
        )?;
        if n == 0 {
            // Deleting twice is harmless; deleting what does not exist is reported.
            self.conversation(id)?;
        }
        Ok(())
    }

    /// Takes a conversation out of the bin.
    pub fn restore_conversation(&self, id: ConversationId) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE conversations SET deleted_at = NULL WHERE id = ?1",
            [id],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "conversation",
                id: id.0,
            });
        }
        Ok(())
    }

    /// Deletes for good the conversations (and their messages) that went to the bin at least
    /// `older_than` ago; returns how many.
    pub fn purge_deleted(&self, older_than: Duration) -> Result<usize> {
        let age = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(age);
        let n = self.conn().execute(
            "DELETE FROM conversations WHERE deleted_at IS NOT NULL AND deleted_at <= ?1",
            [cutoff],
        )?;
        Ok(n)
    }

    fn update_one(&self, id: ConversationId, sql: &str, value: impl rusqlite::ToSql) -> Result<()> {
        let n = self.conn().execute(sql, params![id, value, now_ms()])?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "conversation",
                id: id.0,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::temp_store;
    use crate::store::Role;

    fn new(title: &str) -> NewConversation {
        NewConversation {
            title: title.into(),
            today: "27 November 2026".into(),
            thinking: true,
            system_prompt: "Be brief.".into(),
            owner: crate::store::DESKTOP_OWNER.into(),
        }
    }

    #[test]
    fn create_read_rename_and_list_newest_first() {
        let (_dir, store) = temp_store();
        let a = store.create_conversation(&new("first")).unwrap();
        assert_eq!(a.title, "first");
        assert_eq!(a.today, "27 November 2026");
        assert!(a.thinking);
        assert_eq!(a.system_prompt, "Be brief.");
        assert_eq!(a.leaf_id, None);
        let b = store.create_conversation(&new("second")).unwrap();
        let titles = |s: &Store| {
            s.list_conversations(None)
                .unwrap()
                .into_iter()
                .map(|c| c.title)
                .collect::<Vec<_>>()
        };
        assert_eq!(titles(&store), ["second", "first"]);

        // A new message makes a conversation the most recent.
        std::thread::sleep(Duration::from_millis(5));
        store.add_message(a.id, None, Role::User, "hello").unwrap();
        assert_eq!(titles(&store), ["first", "second"]);

        store.rename_conversation(b.id, "renamed").unwrap();
        assert_eq!(store.conversation(b.id).unwrap().title, "renamed");
        store.set_thinking(b.id, false).unwrap();
        store.set_system_prompt(b.id, "Be kind.").unwrap();
        let b = store.conversation(b.id).unwrap();
        assert!(!b.thinking);
        assert_eq!(b.system_prompt, "Be kind.");

        assert!(matches!(
            store.rename_conversation(ConversationId(999), "x"),
            Err(StoreError::NotFound {
                what: "conversation",
                id: 999
            })
        ));
    }

    #[test]
    fn soft_delete_restore_and_purge() {
        let (_dir, store) = temp_store();
        let a = store.create_conversation(&new("keep")).unwrap();
        let b = store.create_conversation(&new("bin")).unwrap();
        let m = store
            .add_message(b.id, None, Role::User, "unique-word zanzibar")
            .unwrap();

        store.delete_conversation(b.id).unwrap();
        let listed: Vec<_> = store
            .list_conversations(None)
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(listed, [a.id]);
        assert!(store
            .list_conversations(Some("zanzibar"))
            .unwrap()
            .is_empty());
        assert_eq!(store.list_deleted().unwrap()[0].id, b.id);

        store.restore_conversation(b.id).unwrap();
        assert_eq!(
            store.list_conversations(Some("zanzibar")).unwrap()[0].id,
            b.id
        );

        store.delete_conversation(b.id).unwrap();
        // Too recent to purge with a one-hour grace period.
        assert_eq!(store.purge_deleted(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(store.purge_deleted(Duration::ZERO).unwrap(), 1);
        assert!(matches!(
            store.conversation(b.id),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(store.message(m), Err(StoreError::NotFound { .. })));
        // The search index forgot the purged text too.
        let hits: i64 = store
            .conn()
            .query_row(
                "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'zanzibar'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(hits, 0);
        assert_eq!(store.conversation(a.id).unwrap().title, "keep");
    }

    #[test]
    fn search_matches_titles_and_message_words() {
        let (_dir, store) = temp_store();
        let recipes = store.create_conversation(&new("Pancake recipes")).unwrap();
        let rust = store.create_conversation(&new("Borrow checker")).unwrap();
        let odd = store.create_conversation(&new("100% sure_thing")).unwrap();
        store
            .add_message(recipes.id, None, Role::User, "How much flour for crêpes?")
            .unwrap();
        let q = store
            .add_message(
                rust.id,
                None,
                Role::User,
                "Why does the compiler reject this?",
            )
            .unwrap();
        store
            .add_message(
                rust.id,
                Some(q),
                Role::Assistant,
                "Lifetimes: the reference outlives its owner.",
            )
            .unwrap();

        let ids = |q: &str| {
            store
                .list_conversations(Some(q))
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("pancake"), [recipes.id], "title, any case");
        assert_eq!(ids("crepes"), [recipes.id], "accents ignored");
        assert_eq!(ids("lifetime"), [rust.id], "word prefix in a reply");
        assert_eq!(
            ids("reference OUTLIVES"),
            [rust.id],
            "all words of one message"
        );
        assert!(
            ids("compiler flour").is_empty(),
            "words must all be in one message"
        );
        assert_eq!(ids("100%"), [odd.id], "LIKE wildcards are literal");
        assert_eq!(ids("_"), [odd.id], "underscore is literal");
        assert!(ids("\"OR*(").is_empty(), "FTS syntax is not interpreted");
        assert_eq!(ids("   ").len(), 3, "blank search lists everything");
    }

    #[test]
    fn owners_see_only_their_own_conversations_in_lists_and_searches() {
        let (_dir, store) = temp_store();
        let mine = store
            .create_conversation(&new("Mine about otters").owned_by("web:a"))
            .unwrap();
        let theirs = store
            .create_conversation(&new("Theirs about otters").owned_by("web:b"))
            .unwrap();
        let desk = store.create_conversation(&new("Desktop otters")).unwrap();
        assert_eq!(desk.owner, crate::store::DESKTOP_OWNER);
        assert_eq!(mine.owner, "web:a");
        let ids = |owner: &str, q: Option<&str>| {
            store
                .list_conversations_of(owner, q)
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("web:a", None), [mine.id]);
        assert_eq!(ids("web:a", Some("otters")), [mine.id]);
        assert_eq!(ids("web:b", Some("otters")), [theirs.id]);
        assert_eq!(ids(crate::store::DESKTOP_OWNER, Some("otters")), [desk.id]);
        assert!(ids("web:nobody", Some("otters")).is_empty());
        assert_eq!(store.list_conversations(Some("otters")).unwrap().len(), 3);
    }
}
