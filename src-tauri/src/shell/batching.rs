//! Reply deltas gathered into fewer, larger events for the desktop window.
//!
//! Each event sent to the window is a script the webview parses and runs on its main thread,
//! and on a machine without a GPU the webview's work comes out of the cores the model decodes
//! on. So the window receives at most one event per [`WINDOW_BATCH`] for the text of a reply:
//! consecutive deltas of one message and kind are merged (their text joined, the last
//! sequence number kept, which is what the page compares). Anything else (queued, started,
//! done, error) is sent at once, after what was gathered before it, so the order never changes.

use std::time::Duration;

use crate::app::service::StreamEvent;
use crate::engine::EngineEvent;

/// How long reply text may wait to be sent with what follows it. The page shows text at most
/// five times a second (`ui/app.js`), so waiting less than that delays nothing a person sees.
pub const WINDOW_BATCH: Duration = Duration::from_millis(150);

/// Whether an event is reply text that may wait for more.
pub fn is_text(ev: &StreamEvent) -> bool {
    matches!(
        ev.event,
        EngineEvent::Answer { .. } | EngineEvent::Reasoning { .. }
    )
}

/// Adds `ev` to the events waiting to be sent, merged into the last one when both are text of
/// the same kind for the same message.
pub fn gather(pending: &mut Vec<StreamEvent>, ev: StreamEvent) {
    if let Some(last) = pending.last_mut() {
        if last.message_id == ev.message_id && last.owner == ev.owner {
            let merged = match (&mut last.event, &ev.event) {
                (EngineEvent::Answer { text }, EngineEvent::Answer { text: more })
                | (EngineEvent::Reasoning { text }, EngineEvent::Reasoning { text: more }) => {
                    text.push_str(more);
                    true
                }
                _ => false,
            };
            if merged {
                last.seq = last.seq.max(ev.seq);
                return;
            }
        }
    }
    pending.push(ev);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::service::Owner;

    fn ev(message_id: i64, seq: u64, event: EngineEvent) -> StreamEvent {
        StreamEvent {
            owner: Owner::desktop(),
            conversation_id: 1,
            message_id,
            seq,
            event,
        }
    }

    fn answer(t: &str) -> EngineEvent {
        EngineEvent::Answer { text: t.into() }
    }

    #[test]
    fn text_of_one_message_and_kind_is_joined_and_keeps_the_last_seq() {
        let mut pending = Vec::new();
        gather(
            &mut pending,
            ev(
                7,
                1,
                EngineEvent::Started {
                    prompt_tokens: 3,
                    reused_tokens: 0,
                },
            ),
        );
        gather(
            &mut pending,
            ev(7, 2, EngineEvent::Reasoning { text: "hm".into() }),
        );
        gather(
            &mut pending,
            ev(7, 3, EngineEvent::Reasoning { text: "m".into() }),
        );
        gather(&mut pending, ev(7, 4, answer("Hel")));
        gather(&mut pending, ev(7, 5, answer("lo")));
        gather(&mut pending, ev(8, 1, answer("other")));
        gather(&mut pending, ev(7, 6, answer("!")));
        let got: Vec<_> = pending
            .iter()
            .map(|e| (e.message_id, e.seq, format!("{:?}", e.event)))
            .collect();
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(
            pending[1].event,
            EngineEvent::Reasoning { text: "hmm".into() }
        );
        assert_eq!((pending[2].seq, &pending[2].event), (5, &answer("Hello")));
        assert_eq!(pending[3].message_id, 8);
        // Text after another message's stays apart: the order of events is kept.
        assert_eq!((pending[4].message_id, pending[4].seq), (7, 6));
        assert!(!is_text(&pending[0]) && is_text(&pending[4]));
    }
}
