//! Splits a streamed reply into reasoning (`<think>…</think>`) and answer text.
//!
//! Text arrives in arbitrary pieces, so a tag may be cut anywhere (`<thi` + `nk>`); the splitter
//! holds back only the few characters that could still turn out to be a tag and lets everything
//! else through at once. A `<` that does not become a tag is ordinary text.
//!
//! What counts as a tag: `<think>` only at the very start of the reply (after blank lines), as
//! SmolLM3 writes it; `</think>` only inside the reasoning. Anywhere else both are literal text,
//! so an answer that talks about the tags shows them.
//!
//! Newlines around the tags, trimmed the way chat UIs show a reply:
//! - the newline right after `<think>` is dropped (the model always writes `<think>\n`);
//! - newlines right before `</think>` are dropped, so the reasoning does not end blank;
//! - all newlines right after `</think>`, and at the start of a reply without reasoning, are
//!   dropped, so the answer starts with its first visible line.
//!
//! Spaces and all other text are kept as written.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// A piece of the reply, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// Text inside `<think>…</think>`.
    Reasoning(String),
    /// Text of the answer.
    Answer(String),
}

/// Where the splitter is in the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing seen but newlines: `<think>` may still come.
    Start,
    /// Just after `<think>`: one newline to drop.
    ReasoningOpened,
    /// Inside the reasoning.
    Reasoning,
    /// After the reasoning (or at the start of a reply without): newlines to drop.
    AnswerStart,
    /// In the answer; tags are text from here on.
    Answer,
    /// The reasoning was cut short; the `</think>` fed to the model next is not text.
    AwaitingClose,
}

/// Streaming splitter for one reply.
#[derive(Debug, Clone)]
pub struct ThinkSplitter {
    state: State,
    /// Text received but not yet emitted: at most a partial tag and the newlines before it.
    pending: String,
}

impl Default for ThinkSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl ThinkSplitter {
    /// A splitter at the start of a reply.
    pub fn new() -> Self {
        Self {
            state: State::Start,
            pending: String::new(),
        }
    }

    /// Whether the reply is inside its reasoning now (a thinking budget counts these tokens).
    pub fn in_reasoning(&self) -> bool {
        matches!(self.state, State::ReasoningOpened | State::Reasoning)
    }

    /// Feeds the next piece of text and returns what can be shown of it.
    pub fn push(&mut self, text: &str) -> Vec<Delta> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        self.process(&mut out);
        out
    }

    /// Ends the reply: whatever was held back is emitted as text (a cut tag is just text).
    /// The splitter is then ready for a new reply.
    pub fn finish(&mut self) -> Vec<Delta> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.pending);
        match self.state {
            State::Start => emit(&mut out, Delta::Answer(rest)),
            State::ReasoningOpened | State::Reasoning => emit(
                &mut out,
                Delta::Reasoning(rest.trim_end_matches('\n').to_owned()),
            ),
            State::AwaitingClose if CLOSE.starts_with(rest.trim_start_matches('\n')) => {}
            State::AwaitingClose => emit(
                &mut out,
                Delta::Answer(rest.trim_start_matches('\n').to_owned()),
            ),
            State::AnswerStart | State::Answer => {}
        }
        self.state = State::Start;
        out
    }

    /// Ends the reasoning early (a thinking budget ran out). Returns the reasoning text held
    /// back; the next `</think>` pushed (the engine feeds one to the model) is swallowed and
    /// everything after it is answer. Does nothing outside the reasoning.
    pub fn force_close(&mut self) -> Vec<Delta> {
        let mut out = Vec::new();
        if self.in_reasoning() {
            let rest = std::mem::take(&mut self.pending);
            emit(
                &mut out,
                Delta::Reasoning(rest.trim_end_matches('\n').to_owned()),
            );
            self.state = State::AwaitingClose;
        }
        out
    }

    fn process(&mut self, out: &mut Vec<Delta>) {
        loop {
            match self.state {
                State::Start => {
                    self.drop_leading_newlines();
                    if self.pending.is_empty() || is_proper_prefix(&self.pending, OPEN) {
                        return;
                    }
                    if self.pending.starts_with(OPEN) {
                        self.pending.drain(..OPEN.len());
                        self.state = State::ReasoningOpened;
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::ReasoningOpened => {
                    if self.pending.is_empty() {
                        return;
                    }
                    if self.pending.starts_with('\n') {
                        self.pending.drain(..1);
                    }
                    self.state = State::Reasoning;
                }
                State::Reasoning => {
                    if let Some(at) = self.pending.find(CLOSE) {
                        let text = self.pending[..at].trim_end_matches('\n').to_owned();
                        emit(out, Delta::Reasoning(text));
                        self.pending.drain(..at + CLOSE.len());
                        self.state = State::AnswerStart;
                    } else {
                        let keep = held_tail_start(&self.pending);
                        let text: String = self.pending.drain(..keep).collect();
                        emit(out, Delta::Reasoning(text));
                        return;
                    }
                }
                State::AnswerStart => {
                    self.drop_leading_newlines();
                    if self.pending.is_empty() {
                        return;
                    }
                    self.state = State::Answer;
                }
                State::Answer => {
                    let text = std::mem::take(&mut self.pending);
                    emit(out, Delta::Answer(text));
                    return;
                }
                State::AwaitingClose => {
                    self.drop_leading_newlines();
                    if self.pending.is_empty() || is_proper_prefix(&self.pending, CLOSE) {
                        return;
                    }
                    if self.pending.starts_with(CLOSE) {
                        self.pending.drain(..CLOSE.len());
                    }
                    self.state = State::AnswerStart;
                }
            }
        }
    }

    fn drop_leading_newlines(&mut self) {
        let n = self.pending.len() - self.pending.trim_start_matches('\n').len();
        self.pending.drain(..n);
    }
}

/// Appends a delta, merging it into the previous one of the same kind; empty text is dropped.
fn emit(out: &mut Vec<Delta>, delta: Delta) {
    match (out.last_mut(), delta) {
        (_, Delta::Reasoning(t) | Delta::Answer(t)) if t.is_empty() => {}
        (Some(Delta::Reasoning(prev)), Delta::Reasoning(t)) => prev.push_str(&t),
        (Some(Delta::Answer(prev)), Delta::Answer(t)) => prev.push_str(&t),
        (_, delta) => out.push(delta),
    }
}

/// `text` is a strict beginning of `tag` (more may complete it).
fn is_proper_prefix(text: &str, tag: &str) -> bool {
    text.len() < tag.len() && tag.starts_with(text)
}

/// Where the reasoning text that must wait begins: a trailing partial `</think>` and the
/// newlines before it (dropped if the tag completes).
fn held_tail_start(text: &str) -> usize {
    let partial = (1..CLOSE.len())
        .rev()
        .find(|&k| text.ends_with(&CLOSE[..k]))
        .unwrap_or(0);
    let before = &text[..text.len() - partial];
    before.trim_end_matches('\n').len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Delta {
        Delta::Reasoning(s.into())
    }

    fn a(s: &str) -> Delta {
        Delta::Answer(s.into())
    }

    /// Feeds the pieces, then finishes, merging adjacent deltas of the same kind.
    fn split(pieces: &[&str]) -> Vec<Delta> {
        let mut s = ThinkSplitter::new();
        let mut out = Vec::new();
        for p in pieces {
            for d in s.push(p) {
                emit(&mut out, d);
            }
        }
        for d in s.finish() {
            emit(&mut out, d);
        }
        out
    }

    const REPLIES: [&str; 9] = [
        "<think>\nLet me see: 2 < 3.\n</think>\n\nThe answer is <b>3</b>.",
        "<think>\n\n</think>\nHi!",
        "Plain answer, no reasoning.",
        "\n\n<think>\nwhy\n\n</think>ok",
        "<think>\nnot closed\n",
        "<thinking> is not a tag",
        "<think>\na </thin air </ think> b\n</think>\nx <think>y</think>",
        "<think>\n😀 中文\n</think>\n\n\n  indented answer\n",
        "<",
    ];

    #[test]
    fn whole_replies_split_as_documented() {
        let want: [Vec<Delta>; 9] = [
            vec![r("Let me see: 2 < 3."), a("The answer is <b>3</b>.")],
            vec![a("Hi!")],
            vec![a("Plain answer, no reasoning.")],
            vec![r("why"), a("ok")],
            vec![r("not closed")],
            vec![a("<thinking> is not a tag")],
            vec![r("a </thin air </ think> b"), a("x <think>y</think>")],
            vec![r("😀 中文"), a("  indented answer\n")],
            vec![a("<")],
        ];
        for (reply, want) in REPLIES.iter().zip(want) {
            assert_eq!(split(&[reply]), want, "{reply:?}");
        }
    }

    #[test]
    fn any_chunking_gives_the_same_split() {
        for reply in REPLIES {
            let whole = split(&[reply]);
            let chars: Vec<(usize, char)> = reply.char_indices().collect();
            // Every single cut point.
            for &(i, _) in &chars {
                assert_eq!(
                    split(&[&reply[..i], &reply[i..]]),
                    whole,
                    "{reply:?} cut at {i}"
                );
            }
            // One character at a time.
            let pieces: Vec<String> = reply.chars().map(String::from).collect();
            let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
            assert_eq!(split(&pieces), whole, "{reply:?} char by char");
        }
    }

    #[test]
    fn text_flows_without_waiting_for_the_tag() {
        let mut s = ThinkSplitter::new();
        assert_eq!(s.push("<thi"), vec![]);
        assert!(!s.in_reasoning());
        assert_eq!(s.push("nk>\nStep one"), vec![r("Step one")]);
        assert!(s.in_reasoning());
        // A `<` is held only while it could still be `</think>`.
        assert_eq!(s.push(". <"), vec![r(". ")]);
        assert_eq!(s.push("/th"), vec![]);
        assert_eq!(s.push("ere"), vec![r("</there")]);
        assert_eq!(s.push("\n"), vec![]);
        assert_eq!(s.push("more"), vec![r("\nmore")]);
        assert_eq!(s.push("\n</think>"), vec![]);
        assert!(!s.in_reasoning());
        assert_eq!(s.push("\n\n"), vec![]);
        assert_eq!(s.push("Done"), vec![a("Done")]);
        assert_eq!(s.finish(), vec![]);
    }

    #[test]
    fn an_answer_starts_immediately_without_reasoning() {
        let mut s = ThinkSplitter::new();
        assert_eq!(s.push("Hello"), vec![a("Hello")]);
        assert_eq!(s.push(" <think>"), vec![a(" <think>")]);
        assert!(!s.in_reasoning());
    }

    #[test]
    fn finish_emits_what_was_held() {
        let mut s = ThinkSplitter::new();
        s.push("<thi");
        assert_eq!(s.finish(), vec![a("<thi")]);
        let mut s = ThinkSplitter::new();
        assert_eq!(s.push("<think>\nhmm </thi"), vec![r("hmm ")]);
        assert_eq!(s.finish(), vec![r("</thi")]);
        // Ready for a new reply.
        assert_eq!(s.push("<think>x</think>y"), vec![r("x"), a("y")]);
    }

    #[test]
    fn force_close_ends_reasoning_and_swallows_the_fed_tag() {
        let mut s = ThinkSplitter::new();
        assert_eq!(s.push("<think>\nstill going\n"), vec![r("still going")]);
        assert_eq!(s.force_close(), vec![]);
        assert!(!s.in_reasoning());
        assert_eq!(s.push("\n</thi"), vec![]);
        assert_eq!(s.push("nk>\n\n"), vec![]);
        assert_eq!(s.push("Answer."), vec![a("Answer.")]);

        // Held partial tag is reasoning text; then the model answers without a tag.
        let mut s = ThinkSplitter::new();
        assert_eq!(s.push("<think>\nab </th"), vec![r("ab ")]);
        assert_eq!(s.force_close(), vec![r("</th")]);
        assert_eq!(s.push("Sure"), vec![a("Sure")]);
        assert_eq!(s.finish(), vec![]);

        // Cut off right after forcing: the partial tag is not shown.
        let mut s = ThinkSplitter::new();
        s.push("<think>\nx");
        s.force_close();
        s.push("</th");
        assert_eq!(s.finish(), vec![]);
    }

    #[test]
    fn force_close_outside_reasoning_does_nothing() {
        let mut s = ThinkSplitter::new();
        assert_eq!(s.push("Hi"), vec![a("Hi")]);
        assert_eq!(s.force_close(), vec![]);
        assert_eq!(s.push(" </think> there"), vec![a(" </think> there")]);
    }
}
