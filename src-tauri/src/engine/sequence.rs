//! One reply as a state machine that advances one forward pass at a time: its prompt goes in
//! (in chunks), then each step samples a token, streams its text and says what to run next.
//! The model itself is run by whoever holds several sequences ([`super::core::EngineCore::run`]
//! for one, the worker for a batch), so replies can decode together in one pass per step.

use super::constraint::Guide;
use super::events::{EngineEvent, FinishReason, GenerationStats};
use super::loader::LoadedModel;
use super::request::{GenerateRequest, JobError};
use super::sampler::Sampler;
use crate::model::KvCache;
use crate::text::detok::Detokenizer;
use crate::text::think::{Delta, ThinkSplitter};
use crate::text::tokenizer;
use std::time::Instant;

/// A conversation's cache (or a stand-alone request's), and whether it is on disk as it is.
pub struct Slot {
    /// The conversation it belongs to; `None` for the slots of stand-alone requests.
    pub(super) key: Option<String>,
    pub(super) cache: KvCache,
    /// Whether the cache changed since it was last saved to (or read from) disk.
    pub(super) unsaved: bool,
}

/// A reply in progress, holding its conversation's cache while it runs.
pub struct Sequence<'m> {
    loaded: &'m LoadedModel,
    pub(super) req: GenerateRequest,
    pub(super) slot: Slot,
    prompt: Vec<u32>,
    /// The assistant turn's opening ids (part of the prompt), kept with the reply's ids.
    prefix: Vec<u32>,
    /// Prompt tokens the cache already held.
    reused: usize,
    /// Prompt tokens in the cache so far.
    fed: usize,
    t0: Instant,
    prefill_s: f64,
    t_decode: Option<Instant>,
    sampler: Sampler,
    detok: Detokenizer<'m>,
    splitter: ThinkSplitter,
    stop: StopMatcher,
    guide: Option<Guide>,
    /// A raw prompt's reply is plain text: no template asked for reasoning.
    plain: bool,
    history: Vec<u32>,
    generated: Vec<u32>,
    reasoning_tokens: usize,
    ttft: Option<f64>,
    /// Tokens chosen but not yet run through the model.
    pending: Vec<u32>,
}

/// What a step left a sequence doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More to run: [`Sequence::next_input`] says what.
    Running,
    /// The reply ended (its `Done` was sent).
    Finished(FinishReason),
}

impl<'m> Sequence<'m> {
    /// A sequence for `req` whose prompt is `prompt` (`prefix` its last part, the assistant
    /// turn's opening), in `slot`, whose cache already holds its first `reused` tokens.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        loaded: &'m LoadedModel,
        req: GenerateRequest,
        slot: Slot,
        prompt: Vec<u32>,
        prefix: Vec<u32>,
        reused: usize,
        guide: Option<Guide>,
        t0: Instant,
    ) -> Result<Self, JobError> {
        let mut splitter = ThinkSplitter::new();
        let mut guide = guide;
        if let Some(text) = req.assistant_prefix.as_deref() {
            // The splitter must know where the prefix leaves the reply (e.g. inside the
            // reasoning); its text is the caller's, so nothing of it is streamed.
            let _ = splitter.push(text);
            if let Some(g) = guide.as_mut() {
                if splitter.in_reasoning() {
                    g.begin_in_reasoning();
                } else {
                    // The prefix's answer is the reply's start: the constraint follows it,
                    // so a prefilled `<tool_call>` or `{` is continued as the grammar says.
                    let closed = text.contains("</think>");
                    let answer = text.rsplit_once("</think>").map_or(text, |(_, a)| a);
                    let ids = tokenizer::encode_plain(&loaded.tokenizer, answer)
                        .map_err(|e| JobError::Model(e.to_string()))?;
                    g.follow_prefix(&ids, closed).map_err(|e| {
                        JobError::Constraint(format!(
                            "the assistant message to continue does not fit the reply's \
                             format: {e}"
                        ))
                    })?;
                }
            }
        }
        Ok(Self {
            loaded,
            sampler: Sampler::new(&req.params),
            detok: Detokenizer::new(&loaded.tokenizer),
            splitter,
            stop: StopMatcher::new(&req.stop),
            guide,
            plain: req.raw_prompt.is_some(),
            history: prompt.clone(),
            generated: Vec::new(),
            reasoning_tokens: 0,
            ttft: None,
            pending: Vec::new(),
            fed: reused,
            reused,
            prefix,
            prompt,
            slot,
            req,
            t0,
            prefill_s: 0.0,
            t_decode: None,
        })
    }

    /// Whether the prompt is all in the cache (the reply is being decoded).
    pub fn decoding(&self) -> bool {
        self.fed == self.prompt.len()
    }

    /// The tokens to run next: up to `chunk` of the prompt, or the chosen token(s).
    pub fn next_input(&self, chunk: usize) -> Vec<u32> {
        if self.decoding() {
            self.pending.clone()
        } else {
            let end = (self.fed + chunk.max(1)).min(self.prompt.len());
            self.prompt[self.fed..end].to_vec()
        }
    }

    /// The cache the next input is appended to.
    pub fn cache_mut(&mut self) -> &mut KvCache {
        &mut self.slot.cache
    }

    /// The cache as it stands.
    pub fn cache(&self) -> &KvCache {
        &self.slot.cache
    }

    /// The prompt tokens whose rows may come from another cache: all but the last, whose
    /// logits this reply needs from its own run. Empty once the prompt is read.
    fn shareable(&self) -> &[u32] {
        if self.decoding() {
            &[]
        } else {
            &self.prompt[..self.prompt.len() - 1]
        }
    }

    /// How far beyond what it has read of its prompt `other`'s cache holds that prompt.
    pub fn ahead_in(&self, other: &KvCache) -> usize {
        other
            .common_prefix(self.shareable())
            .saturating_sub(self.fed)
    }

    /// How far beyond what it has read of its prompt `other`'s prompt runs along with it: rows
    /// `other` will compute that this one could take instead.
    pub fn ahead_in_prompt_of(&self, other: &Sequence<'_>) -> usize {
        let shareable = self.shareable();
        let common = other
            .prompt
            .iter()
            .zip(shareable)
            .take_while(|(a, b)| a == b)
            .count();
        common.saturating_sub(self.fed)
    }

    /// Copies the rows of its prompt that `other` holds beyond what it has read (see
    /// [`KvCache::share_prefix`]), counting them as reused, not computed.
    pub fn take_rows_from(&mut self, other: &KvCache) -> candle_core::Result<()> {
        if self.ahead_in(other) == 0 {
            return Ok(());
        }
        let shareable = self.prompt[..self.prompt.len() - 1].to_vec();
        let held = self.slot.cache.share_prefix(other, &shareable)?;
        if held > self.fed {
            self.reused += held - self.fed;
            self.fed = held;
        }
        Ok(())
    }

    /// Takes the logits of the last of `ran` tokens just run: during the prompt it only counts
    /// them; after it, it samples the next token and streams its text.
    pub fn absorb(
        &mut self,
        logits: Vec<f32>,
        ran: usize,
        cancelled: bool,
        emit: &mut dyn FnMut(EngineEvent),
    ) -> Result<Progress, JobError> {
        if !self.decoding() {
            self.fed += ran;
            if !self.decoding() {
                return Ok(if cancelled {
                    self.finish(FinishReason::Cancelled, emit)
                } else {
                    Progress::Running
                });
            }
            self.prefill_s = self.t0.elapsed().as_secs_f64();
            self.t_decode = Some(Instant::now());
        } else if self.generated.len() >= self.req.params.max_tokens {
            // Even the last token went through the model, so the cache covers the whole reply
            // and the next turn can reuse all of it.
            return Ok(self.finish(FinishReason::Length, emit));
        }
        self.choose(logits, cancelled, emit)
    }

    /// Ends the reply without running anything more (a stop asked before its next step).
    pub fn cancel(&mut self, emit: &mut dyn FnMut(EngineEvent)) -> Progress {
        self.finish(FinishReason::Cancelled, emit)
    }

    /// Samples from `logits` and streams the token; decides whether the reply goes on.
    fn choose(
        &mut self,
        mut logits: Vec<f32>,
        cancelled: bool,
        emit: &mut dyn FnMut(EngineEvent),
    ) -> Result<Progress, JobError> {
        if cancelled {
            return Ok(self.finish(FinishReason::Cancelled, emit));
        }
        let loaded = self.loaded;
        let (specials, tok) = (&loaded.specials, &loaded.tokenizer);
        let req = &self.req;
        // The model's own distribution, before the sampling settings change the logits.
        let raw = req.logprobs.map(|_| logits.clone());
        if let Some(g) = self.guide.as_mut() {
            g.mask(&mut logits)?;
        }
        let next = self.sampler.sample(&mut logits, &self.history);
        self.ttft
            .get_or_insert_with(|| self.t0.elapsed().as_secs_f64());
        if specials.eos.contains(&next) {
            return Ok(self.finish(FinishReason::Stop, emit));
        }
        if let (Some(raw), Some(top)) = (raw, req.logprobs) {
            let (logprob, best) = crate::engine::sampler::log_probs(&raw, next, top);
            let piece = |id: u32| tokenizer::decode(tok, &[id]).unwrap_or_default();
            emit(EngineEvent::Logprob {
                token: piece(next),
                logprob,
                top: best.into_iter().map(|(id, lp)| (piece(id), lp)).collect(),
            });
        }
        self.pending.clear();
        self.pending.push(next);
        if !self.plain && self.splitter.in_reasoning() {
            self.reasoning_tokens += 1;
            if req
                .thinking_budget
                .is_some_and(|b| self.reasoning_tokens >= b)
                && Some(next) != specials.end_think
            {
                // Over budget: close the reasoning ourselves and let the model answer.
                if let Ok(close) = tokenizer::encode(tok, "\n</think>\n") {
                    self.pending.extend(close);
                }
            }
        }
        let mut stopped = false;
        for i in 0..self.pending.len() {
            let id = self.pending[i];
            let text = self
                .detok
                .push(id)
                .map_err(|e| JobError::Model(e.to_string()))?;
            stopped |= if self.plain {
                if !self.stop.done {
                    emit_delta(Delta::Answer(text), &mut self.stop, emit);
                }
                self.stop.done
            } else {
                route(&mut self.splitter, &mut self.stop, &text, emit)
            };
        }
        self.generated.extend_from_slice(&self.pending);
        self.history.extend_from_slice(&self.pending);
        if let Some(g) = self.guide.as_mut() {
            g.advance(&self.pending)?;
            // The constraint is complete and allows nothing more, not even text: the reply
            // is whole.
            stopped |= g.is_finished();
        }
        if stopped {
            return Ok(self.finish(FinishReason::Stop, emit));
        }
        let cache = &self.slot.cache;
        if cache.len() + self.pending.len() >= cache.max_len() {
            return Ok(self.finish(FinishReason::ContextFull, emit));
        }
        Ok(Progress::Running)
    }

    /// Flushes the text held back and sends `Done` with the reply's figures.
    fn finish(&mut self, finish: FinishReason, emit: &mut dyn FnMut(EngineEvent)) -> Progress {
        if !self.decoding() {
            self.prefill_s = self.t0.elapsed().as_secs_f64();
        }
        let tail = self.detok.finish();
        if !tail.is_empty() && self.plain && !self.stop.done {
            emit_delta(Delta::Answer(tail), &mut self.stop, emit);
        } else if !tail.is_empty() {
            route(&mut self.splitter, &mut self.stop, &tail, emit);
        }
        for d in self.splitter.finish() {
            emit_delta(d, &mut self.stop, emit);
        }
        if let Some(rest) = self.stop.flush() {
            emit(EngineEvent::Answer { text: rest });
        }
        let decode_s = self.t_decode.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let computed = self.fed - self.reused;
        let generated = self.generated.len();
        let stats = GenerationStats {
            prompt_tokens: self.prompt.len(),
            reused_tokens: self.reused,
            generated_tokens: generated,
            ttft_s: self.ttft.unwrap_or(self.prefill_s),
            prefill_tps: GenerationStats::prefill_rate(computed, self.prefill_s),
            decode_tps: GenerationStats::decode_rate(generated, decode_s),
            finish_reason: finish,
        };
        // The kept ids are the whole assistant turn, so a later prompt can splice them in.
        let mut token_ids = std::mem::take(&mut self.prefix);
        token_ids.extend(std::mem::take(&mut self.generated));
        emit(EngineEvent::Done { stats, token_ids });
        Progress::Finished(finish)
    }
}

/// Sends text through the think splitter and the stop matcher; true once a stop string matched.
fn route(
    splitter: &mut ThinkSplitter,
    stop: &mut StopMatcher,
    text: &str,
    emit: &mut dyn FnMut(EngineEvent),
) -> bool {
    if stop.done {
        return true;
    }
    for d in splitter.push(text) {
        emit_delta(d, stop, emit);
    }
    stop.done
}

fn emit_delta(d: Delta, stop: &mut StopMatcher, emit: &mut dyn FnMut(EngineEvent)) {
    match d {
        Delta::Reasoning(text) if !text.is_empty() => emit(EngineEvent::Reasoning { text }),
        Delta::Answer(text) => {
            if let Some(text) = stop.push(&text) {
                emit(EngineEvent::Answer { text });
            }
        }
        _ => {}
    }
}

/// Holds back answer text that could be the start of a stop string.
struct StopMatcher {
    stops: Vec<String>,
    held: String,
    done: bool,
}

impl StopMatcher {
    fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            done: false,
        }
    }

    /// Text safe to show now, if any.
    fn push(&mut self, text: &str) -> Option<String> {
        if self.done {
            return None;
        }
        if self.stops.is_empty() {
            return (!text.is_empty()).then(|| text.to_string());
        }
        self.held.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.done = true;
            let out: String = self.held[..at].to_string();
            self.held.clear();
            return (!out.is_empty()).then_some(out);
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&n| s.is_char_boundary(n))
                    .map(move |n| &s[..n])
            })
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out: String = self.held.drain(..cut).collect();
        (!out.is_empty()).then_some(out)
    }

    fn flush(&mut self) -> Option<String> {
        let out = std::mem::take(&mut self.held);
        (!self.done && !out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    #[test]
    fn stop_strings_hold_back_partial_matches() {
        let mut m = StopMatcher::new(&["STOP".to_string()]);
        assert_eq!(m.push("hello S").as_deref(), Some("hello "));
        assert_eq!(m.push("T").as_deref(), None);
        assert_eq!(m.push("x").as_deref(), Some("STx"));
        assert_eq!(m.push(" then STO").as_deref(), Some(" then "));
        assert_eq!(m.push("P and more").as_deref(), None);
        assert!(m.done);
        assert_eq!(m.flush(), None);
    }

    #[test]
    fn no_stop_strings_pass_text_through() {
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.push("abc").as_deref(), Some("abc"));
        assert_eq!(m.flush(), None);
    }
}
