//! Saving a reply while it streams: deltas are buffered and written at most every
//! [`FLUSH_INTERVAL`], so a crash loses at most that much text while the database sees a
//! handful of small commits per second rather than one per token.

use std::time::{Duration, Instant};

use super::{MessageId, Result, Store};
use crate::engine::events::{EngineEvent, GenerationStats};

/// The longest time buffered text waits before it is written (checked on every delta).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// Writes one streaming reply. Create it with [`Store::reply_writer`] after
/// [`Store::begin_reply`], push deltas, then call [`ReplyWriter::finish`] or
/// [`ReplyWriter::fail`]. Dropped without either (a cancelled task, a panic), it writes what
/// it holds and marks the reply interrupted.
#[derive(Debug)]
pub struct ReplyWriter {
    store: Store,
    id: MessageId,
    answer: String,
    reasoning: String,
    last_flush: Instant,
    interval: Duration,
    done: bool,
}

impl Store {
    /// A writer for the streaming reply `id`.
    pub fn reply_writer(&self, id: MessageId) -> ReplyWriter {
        ReplyWriter {
            store: self.clone(),
            id,
            answer: String::new(),
            reasoning: String::new(),
            last_flush: Instant::now(),
            interval: FLUSH_INTERVAL,
            done: false,
        }
    }
}

impl ReplyWriter {
    /// The reply being written.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// Uses another flush interval (shorter makes a crash lose less, longer writes less).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Adds answer text.
    pub fn push_answer(&mut self, text: &str) -> Result<()> {
        self.answer.push_str(text);
        self.flush_if_due()
    }

    /// Adds reasoning text.
    pub fn push_reasoning(&mut self, text: &str) -> Result<()> {
        self.reasoning.push_str(text);
        self.flush_if_due()
    }

    /// Writes buffered text if the interval has passed since the last write. Callers whose
    /// deltas can pause for long may call it from a timer.
    pub fn flush_if_due(&mut self) -> Result<()> {
        if self.last_flush.elapsed() >= self.interval {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes buffered text now.
    pub fn flush(&mut self) -> Result<()> {
        if !self.answer.is_empty() || !self.reasoning.is_empty() {
            self.store
                .append_reply(self.id, &self.answer, &self.reasoning)?;
            self.answer.clear();
            self.reasoning.clear();
        }
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Writes the rest of the text and marks the reply complete.
    pub fn finish(mut self, stats: &GenerationStats, token_ids: &[u32]) -> Result<()> {
        self.flush()?;
        self.done = true;
        self.store.finish_reply(self.id, stats, token_ids)
    }

    /// Writes the rest of the text and marks the reply failed with `error`.
    pub fn fail(mut self, error: &str) -> Result<()> {
        self.flush()?;
        self.done = true;
        self.store.fail_reply(self.id, error)
    }

    /// Feeds one engine event: deltas are buffered, `Done` finishes and `Error` fails the
    /// reply. Returns `true` once the reply has ended; other events are ignored.
    pub fn apply(&mut self, event: &EngineEvent) -> Result<bool> {
        match event {
            EngineEvent::Answer { text } => self.push_answer(text).map(|()| false),
            EngineEvent::Reasoning { text } => self.push_reasoning(text).map(|()| false),
            EngineEvent::Done { stats, token_ids } => {
                self.end(|w| w.store.finish_reply(w.id, stats, token_ids))
            }
            EngineEvent::Error { message } => self.end(|w| w.store.fail_reply(w.id, message)),
            EngineEvent::Started { .. }
            | EngineEvent::Queued { .. }
            | EngineEvent::Logprob { .. } => Ok(false),
        }
    }

    fn end(&mut self, mark: impl FnOnce(&Self) -> Result<()>) -> Result<bool> {
        if self.done {
            return Ok(true);
        }
        self.done = true;
        self.flush()?;
        mark(self)?;
        Ok(true)
    }
}

impl Drop for ReplyWriter {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let result = self
            .flush()
            .and_then(|()| self.store.interrupt_reply(self.id));
        if let Err(error) = result {
            tracing::warn!(id = %self.id, %error, "could not save an abandoned reply");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::events::FinishReason;
    use crate::store::test_util::temp_store;
    use crate::store::{MessageStatus, NewConversation, Role};

    fn reply(store: &Store) -> MessageId {
        let c = store
            .create_conversation(&NewConversation::new("t", true, ""))
            .unwrap()
            .id;
        let q = store.add_message(c, None, Role::User, "hi").unwrap();
        store.begin_reply(c, q, "").unwrap()
    }

    #[test]
    fn buffers_until_the_interval_then_writes() {
        let (_dir, store) = temp_store();
        let id = reply(&store);
        let mut w = store
            .reply_writer(id)
            .with_interval(Duration::from_millis(200));
        w.push_reasoning("let me think").unwrap();
        w.push_answer("Hel").unwrap();
        assert_eq!(
            store.message(id).unwrap().content,
            "",
            "nothing written before the interval"
        );
        std::thread::sleep(Duration::from_millis(250));
        w.push_answer("lo").unwrap();
        let m = store.message(id).unwrap();
        assert_eq!(
            (m.content.as_str(), m.reasoning.as_str()),
            ("Hello", "let me think")
        );
        w.push_answer(" world").unwrap();
        w.finish(&GenerationStats::default(), &[1, 2]).unwrap();
        let m = store.message(id).unwrap();
        assert_eq!(
            (m.content.as_str(), m.status),
            ("Hello world", MessageStatus::Complete)
        );
    }

    #[test]
    fn engine_events_drive_the_reply() {
        let (_dir, store) = temp_store();
        let id = reply(&store);
        let mut w = store.reply_writer(id);
        let stats = GenerationStats {
            generated_tokens: 2,
            finish_reason: FinishReason::Length,
            ..Default::default()
        };
        let events = [
            EngineEvent::Started {
                prompt_tokens: 5,
                reused_tokens: 0,
            },
            EngineEvent::Reasoning { text: "hmm".into() },
            EngineEvent::Answer { text: "ok".into() },
            EngineEvent::Done {
                stats: stats.clone(),
                token_ids: vec![7, 8],
            },
        ];
        let ended: Vec<bool> = events.iter().map(|e| w.apply(e).unwrap()).collect();
        assert_eq!(ended, [false, false, false, true]);
        drop(w);
        let m = store.message(id).unwrap();
        assert_eq!(
            m.status,
            MessageStatus::Complete,
            "drop after Done changes nothing"
        );
        assert_eq!((m.content.as_str(), m.reasoning.as_str()), ("ok", "hmm"));
        assert_eq!(m.stats, Some(stats));
        assert_eq!(m.token_ids, Some(vec![7, 8]));

        let id = reply(&store);
        let mut w = store.reply_writer(id);
        w.apply(&EngineEvent::Answer { text: "par".into() })
            .unwrap();
        assert!(w
            .apply(&EngineEvent::Error {
                message: "model crashed".into()
            })
            .unwrap());
        let m = store.message(id).unwrap();
        assert_eq!(
            (m.status, m.content.as_str(), m.error.as_deref()),
            (MessageStatus::Error, "par", Some("model crashed"))
        );
    }

    #[test]
    fn dropping_an_unfinished_writer_saves_text_as_interrupted() {
        let (_dir, store) = temp_store();
        let id = reply(&store);
        let mut w = store.reply_writer(id);
        w.push_answer("cut sh").unwrap();
        drop(w);
        let m = store.message(id).unwrap();
        assert_eq!(
            (m.status, m.content.as_str()),
            (MessageStatus::Interrupted, "cut sh")
        );
    }
}
