//! Constrained decoding: a reply held, token by token, to a JSON Schema or to a forced tool
//! call, by llguidance (the grammar engine llama.cpp and vLLM use).
//!
//! A [`Constraint`] says what the reply must be; [`Constrainer`] compiles it against the
//! model's vocabulary into a [`Guide`], which masks the logits before each draw and follows
//! the tokens that go into the reply. With reasoning on, the model may think first: the
//! constraint then starts after `</think>`, so the reasoning stays free text.

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use super::request::{CallsOr, Constraint, JobError};
use crate::text::detok::{vocabulary_bytes, TokenBytes};
use crate::text::tokenizer::{self, SpecialTokens};

/// Whitespace the JSON may hold between two of its tokens: at most one line break and a
/// short indent, or a space. Bounded so that a model cannot fill its reply with blanks (the
/// unbounded JSON rule lets a weak model loop on spaces until `max_tokens`).
const JSON_WHITESPACE: &str = r"(?:[ ]|\n[ \t]{0,16})";

/// The most calls one reply may make: a weak model held to calls could otherwise call again
/// and again until `max_tokens`.
pub const MAX_CALLS: usize = 8;

/// The constraint as an llguidance grammar (its Lark form).
fn grammar_of(constraint: &Constraint) -> TopLevelGrammar {
    // A reply may open with a line break (after `</think>`, the model writes one).
    let lark = match constraint {
        Constraint::JsonObject => json_start(&json!({"type": "object"})),
        Constraint::JsonSchema { schema } => json_start(schema),
        Constraint::ToolCalls {
            functions,
            parallel,
            instead,
        } => calls_grammar(functions, *parallel, instead.as_ref()),
    };
    TopLevelGrammar::from_lark(lark)
}

/// Calls of `functions` as SmolLM3 writes them: `<tool_call>`, a line break, the call's
/// JSON, a line break, `</tool_call>`; or, when the model calls nothing, the answer
/// `instead` allows.
///
/// With text allowed, the text is one of two lexemes: `before_call`, which ends lazily at
/// the first `<tool_call>` (the opening is part of it, so a token may carry both text and
/// the opening), or `TEXT`, which never contains the opening and may end the reply. Until
/// the model writes the opening both stay possible and nothing is masked; from then on the
/// call's JSON is held to the functions' schemas.
fn calls_grammar(functions: &[Value], parallel: bool, instead: Option<&CallsOr>) -> String {
    let calls: Vec<Value> = functions.iter().map(call_schema).collect();
    let body = if calls.len() == 1 {
        calls[0].clone()
    } else {
        json!({ "anyOf": calls })
    };
    let max = if parallel { MAX_CALLS } else { 1 };
    let more = if max > 1 {
        format!("(NL? \"<tool_call>\" call_rest){{0,{}}}", max - 1)
    } else {
        String::new()
    };
    let only_calls = format!("NL? \"<tool_call>\" call_rest {more}");
    let start = match instead {
        None => format!("start: {only_calls}"),
        Some(CallsOr::Text) => format!("start: TEXT | (before_call call_rest){{1,{max}}} TEXT"),
        Some(CallsOr::Json { schema }) => {
            format!(
                "start: NL? answer | {only_calls}\nanswer: {}",
                json_rule(schema)
            )
        }
    };
    format!(
        "{start}\n\
         call_rest: NL? {} NL? \"</tool_call>\"\n\
         before_call[suffix=\"<tool_call>\"]: /(.|\\n)*/\n\
         TEXT: /(.|\\n)*/ & ~/(.|\\n)*<tool_call>(.|\\n)*/\n\
         NL: /[ \\n]{{1,2}}/\n",
        json_rule(&body)
    )
}

/// A grammar whose start is JSON valid against `schema`.
fn json_start(schema: &Value) -> String {
    format!(
        "start: NL? body\nbody: {}\nNL: /[ \\n]{{1,2}}/\n",
        json_rule(schema)
    )
}

/// A `%json` rule for `schema`, with the bounded whitespace (unless the schema sets its own
/// llguidance options).
fn json_rule(schema: &Value) -> String {
    let mut schema = schema.clone();
    if let Value::Object(map) = &mut schema {
        map.entry("x-guidance").or_insert_with(|| {
            json!({"whitespace_pattern": JSON_WHITESPACE, "item_separator": ",", "key_separator": ":"})
        });
    }
    format!("%json {schema}")
}

/// The JSON of one call to `function`: its name, and arguments valid against its parameters
/// (any object when it has none), in the order SmolLM3 writes them.
fn call_schema(function: &Value) -> Value {
    let name = function.get("name").cloned().unwrap_or(Value::Null);
    let arguments = function
        .get("parameters")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}));
    json!({
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

/// llguidance's reason without the grammar listing it appends (our wrapper, not the
/// caller's schema) or the position in it: its first line, from "failed" on when present.
fn reason_of(error: &str) -> String {
    let first = error.lines().next().unwrap_or(error);
    match first.find("failed") {
        Some(at) => first[at..].to_string(),
        None => first.to_string(),
    }
}

/// The vocabulary as llguidance sees it: each token's bytes, control tokens marked as such.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Text as the tokenizer splits it (control-token text stays text); bytes that are not
    /// UTF-8 are split greedily along the vocabulary.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => tokenizer::encode_plain(&self.tokenizer, text)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// Compiles constraints for one model; the vocabulary tables are built on first use (about
/// a second for a 128k vocabulary) and shared by every job after.
pub struct Constrainer {
    tokenizer: Tokenizer,
    specials: SpecialTokens,
    n_vocab: usize,
    factory: OnceLock<Result<Arc<ParserFactory>, String>>,
}

impl std::fmt::Debug for Constrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constrainer")
            .field("n_vocab", &self.n_vocab)
            .finish_non_exhaustive()
    }
}

impl Constrainer {
    /// A compiler for a model with this tokenizer, end tokens and `n_vocab` logits.
    pub fn new(tokenizer: Tokenizer, specials: SpecialTokens, n_vocab: usize) -> Self {
        Self {
            tokenizer,
            specials,
            n_vocab,
            factory: OnceLock::new(),
        }
    }

    fn factory(&self) -> Result<Arc<ParserFactory>, JobError> {
        self.factory
            .get_or_init(|| self.build_factory().map_err(|e| e.to_string()))
            .clone()
            .map_err(JobError::Constraint)
    }

    fn build_factory(&self) -> anyhow::Result<Arc<ParserFactory>> {
        let words: Vec<Vec<u8>> = vocabulary_bytes(&self.tokenizer, self.n_vocab)
            .into_iter()
            .map(|t| match t {
                TokenBytes::Text(bytes) => bytes,
                TokenBytes::Control(name) => {
                    let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    marked.extend_from_slice(name.as_bytes());
                    marked
                }
            })
            .collect();
        let eos = &self.specials.eos;
        let first_eos = self.specials.im_end.or(eos.first().copied()).unwrap_or(0);
        let info = TokRxInfo::new(self.n_vocab as u32, first_eos);
        let mut trie = TokTrie::from(&info, &words);
        if eos.len() > 1 {
            trie = trie.with_eos_tokens(eos);
        }
        let env: TokEnv = Arc::new(Vocabulary {
            trie,
            tokenizer: self.tokenizer.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env)?;
        factory.quiet();
        Ok(Arc::new(factory))
    }

    /// Compiles `constraint`; an error says what in it cannot be used (for the caller to
    /// show as a bad request).
    fn matcher(&self, constraint: &Constraint) -> Result<Matcher, JobError> {
        let factory = self.factory()?;
        let parser = factory
            .create_parser(grammar_of(constraint))
            .map_err(|e| JobError::Constraint(reason_of(&e.to_string())))?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(e) => Err(JobError::Constraint(reason_of(&e))),
            None => Ok(matcher),
        }
    }

    /// Checks that `constraint` compiles, without a job.
    pub fn check(&self, constraint: &Constraint) -> Result<(), JobError> {
        self.matcher(constraint).map(drop)
    }

    /// A guide for one reply. With `may_think`, the reply may open with `<think>`: the
    /// constraint then starts after `</think>`.
    pub fn guide(&self, constraint: &Constraint, may_think: bool) -> Result<Guide, JobError> {
        Ok(Guide {
            matcher: self.matcher(constraint)?,
            phase: Phase::Start,
            think: self.specials.think.filter(|_| may_think),
            end_think: self.specials.end_think,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing generated yet: the constraint's first token, or `<think>`.
    Start,
    /// Inside the reasoning: anything goes until `</think>`.
    Reasoning,
    /// Every token is the constraint's.
    Held,
}

/// One reply's constraint as it goes.
pub struct Guide {
    matcher: Matcher,
    phase: Phase,
    think: Option<u32>,
    end_think: Option<u32>,
}

impl Guide {
    /// The reply starts inside the reasoning (its assistant prefix opened it): the
    /// constraint waits for `</think>`.
    pub fn begin_in_reasoning(&mut self) {
        self.phase = Phase::Reasoning;
    }

    /// Follows the answer text of the assistant message the reply continues (`ids`, its
    /// tokens), after a reasoning it `closed` or with none: the constraint holds from the
    /// reply's true start, the prefix included.
    pub fn follow_prefix(&mut self, ids: &[u32], closed: bool) -> Result<(), JobError> {
        if closed || !ids.is_empty() {
            self.phase = Phase::Held;
        }
        self.matcher
            .consume_tokens(ids)
            .map(|_| ())
            .map_err(|e| JobError::Constraint(reason_of(&e.to_string())))
    }

    /// Sets the logit of every token the constraint does not allow next to −∞.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), JobError> {
        if self.phase == Phase::Reasoning {
            return Ok(());
        }
        let allowed = self
            .matcher
            .compute_mask()
            .map_err(|e| JobError::Constraint(e.to_string()))?;
        let think = self.think.filter(|_| self.phase == Phase::Start);
        allowed.iter_unset_entries(|id| {
            if Some(id as u32) != think {
                if let Some(l) = logits.get_mut(id) {
                    *l = f32::NEG_INFINITY;
                }
            }
        });
        // Rows past the vocabulary the grammar knows are never allowed.
        for l in logits.iter_mut().skip(allowed.len()) {
            *l = f32::NEG_INFINITY;
        }
        Ok(())
    }

    /// Follows the tokens that went into the reply (sampled, or added by the engine such as
    /// the close of an over-budget reasoning).
    pub fn advance(&mut self, ids: &[u32]) -> Result<(), JobError> {
        for &id in ids {
            match self.phase {
                Phase::Start if Some(id) == self.think => self.phase = Phase::Reasoning,
                Phase::Reasoning => {
                    if Some(id) == self.end_think {
                        self.phase = Phase::Held;
                    }
                }
                Phase::Start | Phase::Held => {
                    self.phase = Phase::Held;
                    self.matcher
                        .consume_token(id)
                        .map_err(|e| JobError::Constraint(e.to_string()))?;
                }
            }
        }
        Ok(())
    }

    /// Whether the constraint is complete and allows nothing more: the reply ends here.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Held && self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::GgufFile;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::path::Path;

    /// The tokenizer and end tokens of a GGUF file.
    fn vocabulary(path: &Path) -> (Tokenizer, SpecialTokens) {
        let g = GgufFile::open(path).expect("fixture GGUF");
        let tok = tokenizer::from_gguf(&g).expect("tokenizer");
        let specials = tokenizer::special_tokens(&g, &tok);
        (tok, specials)
    }

    fn tiny() -> Constrainer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/reference/tiny-smollm3-f32.gguf");
        let (tok, specials) = vocabulary(&path);
        let n = tok.get_vocab_size(true);
        Constrainer::new(tok, specials, n)
    }

    /// Draws allowed tokens at random until the guide is finished or the end is allowed
    /// and drawn; returns the text (`None` when `limit` tokens did not finish it).
    fn random_reply(c: &Constrainer, g: &mut Guide, seed: u64, limit: usize) -> Option<String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ids = Vec::new();
        for _ in 0..limit {
            let mut logits: Vec<f32> = (0..c.n_vocab).map(|_| rng.gen_range(-1.0..1.0)).collect();
            g.mask(&mut logits).expect("mask");
            let allowed: Vec<usize> = (0..logits.len())
                .filter(|&i| logits[i].is_finite())
                .collect();
            assert!(!allowed.is_empty(), "the mask allows nothing");
            let next = allowed[rng.gen_range(0..allowed.len())] as u32;
            if c.specials.eos.contains(&next) {
                break;
            }
            ids.push(next);
            g.advance(&[next]).expect("an allowed token is accepted");
            if g.is_finished() {
                break;
            }
        }
        let text = tokenizer::decode(&c.tokenizer, &ids).expect("decode");
        (g.is_finished() || g.matcher.is_accepting().unwrap_or(false)).then_some(text)
    }

    #[test]
    fn random_tokens_through_the_mask_make_schema_valid_json() {
        let c = tiny();
        let schema = json!({
            "type": "object",
            "properties": {
                "n": {"type": "integer", "minimum": 0, "maximum": 9},
                "k": {"enum": ["x", "y"]},
                "s": {"type": "string", "maxLength": 4}
            },
            "required": ["n", "k", "s"],
            "additionalProperties": false
        });
        let constraint = Constraint::JsonSchema { schema };
        let mut finished = 0;
        for seed in 0..20 {
            let mut g = c.guide(&constraint, false).expect("compiles");
            let Some(text) = random_reply(&c, &mut g, seed, 400) else {
                continue;
            };
            finished += 1;
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            let n = v["n"].as_i64().expect("n is an integer");
            assert!((0..=9).contains(&n), "{text}");
            assert!(matches!(v["k"].as_str(), Some("x" | "y")), "{text}");
            assert!(
                v["s"].as_str().is_some_and(|s| s.chars().count() <= 4),
                "{text}"
            );
            assert_eq!(v.as_object().map(|o| o.len()), Some(3), "{text}");
        }
        assert!(
            finished >= 15,
            "only {finished} of 20 random replies finished"
        );
    }

    #[test]
    fn reasoning_is_free_then_the_constraint_holds() {
        let c = tiny();
        let think = c.specials.think.expect("fixture has <think>");
        let end_think = c.specials.end_think.expect("fixture has </think>");
        let mut g = c.guide(&Constraint::JsonObject, true).expect("compiles");
        let mut logits = vec![0.0f32; c.n_vocab];
        g.mask(&mut logits).expect("mask");
        assert!(
            logits[think as usize].is_finite(),
            "<think> may open the reply"
        );
        let letter = tokenizer::encode_plain(&c.tokenizer, "a").expect("encode")[0];
        assert!(
            !logits[letter as usize].is_finite(),
            "text may not start a JSON reply"
        );
        g.advance(&[think, letter, letter])
            .expect("reasoning is free");
        let mut logits = vec![0.0f32; c.n_vocab];
        g.mask(&mut logits).expect("mask");
        assert!(
            logits.iter().all(|l| l.is_finite()),
            "nothing is masked while reasoning"
        );
        g.advance(&[end_think]).expect("the reasoning ends");
        let mut logits = vec![0.0f32; c.n_vocab];
        g.mask(&mut logits).expect("mask");
        assert!(
            !logits[letter as usize].is_finite(),
            "after </think> the JSON begins"
        );
        assert!(
            g.advance(&[letter]).is_err(),
            "a token the mask forbids is refused"
        );

        // Without reasoning, <think> is not allowed first.
        let mut g = c.guide(&Constraint::JsonObject, false).expect("compiles");
        let mut logits = vec![0.0f32; c.n_vocab];
        g.mask(&mut logits).expect("mask");
        assert!(!logits[think as usize].is_finite());
    }

    #[test]
    fn forced_calls_name_a_given_function_with_valid_arguments() {
        let c = tiny();
        let functions = vec![
            json!({"name": "get_w", "parameters": {"type": "object",
                "properties": {"d": {"type": "integer", "minimum": 1, "maximum": 7}},
                "required": ["d"], "additionalProperties": false}}),
            json!({"name": "now"}),
        ];
        let constraint = Constraint::ToolCalls {
            functions,
            parallel: false,
            instead: None,
        };
        let mut finished = 0;
        for seed in 0..10 {
            let mut g = c.guide(&constraint, false).expect("compiles");
            let Some(text) = random_reply(&c, &mut g, seed, 400) else {
                continue;
            };
            finished += 1;
            let body = text
                .trim()
                .strip_prefix("<tool_call>")
                .and_then(|t| t.strip_suffix("</tool_call>"))
                .unwrap_or_else(|| panic!("not one call: {text:?}"));
            let v: Value = serde_json::from_str(body).expect("the call is JSON");
            match v["name"].as_str() {
                Some("get_w") => assert!(v["arguments"]["d"]
                    .as_i64()
                    .is_some_and(|d| (1..=7).contains(&d))),
                Some("now") => assert!(v["arguments"].is_object()),
                other => panic!("unknown function {other:?} in {text}"),
            }
        }
        assert!(finished >= 7, "only {finished} of 10 random calls finished");
    }

    fn weather_functions() -> Vec<Value> {
        vec![json!({"name": "get_w", "parameters": {"type": "object",
            "properties": {"d": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["d"], "additionalProperties": false}})]
    }

    /// Draws allowed tokens at random until the reply holds `until`; returns the text.
    fn draw_until(c: &Constrainer, g: &mut Guide, seed: u64, until: &str) -> String {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ids = Vec::new();
        for _ in 0..400 {
            let mut logits: Vec<f32> = (0..c.n_vocab).map(|_| rng.gen_range(-1.0..1.0)).collect();
            g.mask(&mut logits).expect("mask");
            let allowed: Vec<usize> = (0..logits.len())
                .filter(|&i| logits[i].is_finite() && !c.specials.eos.contains(&(i as u32)))
                .collect();
            let next = allowed[rng.gen_range(0..allowed.len())] as u32;
            ids.push(next);
            g.advance(&[next]).expect("an allowed token is accepted");
            let text = tokenizer::decode(&c.tokenizer, &ids).expect("decode");
            if text.contains(until) {
                return text;
            }
        }
        panic!("no {until:?} in 400 tokens")
    }

    #[test]
    fn with_text_only_the_calls_the_model_opens_are_held() {
        let c = tiny();
        let constraint = Constraint::ToolCalls {
            functions: weather_functions(),
            parallel: false,
            instead: Some(CallsOr::Text),
        };
        let plain = |t: &str| tokenizer::encode_plain(&c.tokenizer, t).expect("encode");
        let letter = plain("a")[0];
        for seed in 0..5 {
            let mut g = c.guide(&constraint, false).expect("compiles");
            // Free text: nothing is masked but the end-of-reply tokens' neighbours.
            let mut logits = vec![0.0f32; c.n_vocab];
            g.mask(&mut logits).expect("mask");
            assert!(
                logits[letter as usize].is_finite(),
                "text may start the reply"
            );
            // The opening arrives glued to text and to the JSON's first byte in one piece
            // of text, split wherever the tokenizer splits it.
            g.advance(&plain("Let me look.<tool_call>\n{"))
                .expect("text, then the opening, then JSON");
            let mut logits = vec![0.0f32; c.n_vocab];
            g.mask(&mut logits).expect("mask");
            assert!(
                !logits[letter as usize].is_finite(),
                "inside the call only JSON"
            );
            let rest = draw_until(&c, &mut g, seed, "</tool_call>");
            let json_text = format!("{{{}", rest.split("</tool_call>").next().unwrap());
            let v: Value = serde_json::from_str(json_text.trim())
                .unwrap_or_else(|e| panic!("{e}: {json_text:?}"));
            assert_eq!(v["name"], "get_w", "{json_text}");
            let d = v["arguments"]["d"].as_i64().expect("d is an integer");
            assert!((1..=7).contains(&d), "{json_text}");
            // After the call the text is free again, but a second call may not open.
            let mut logits = vec![0.0f32; c.n_vocab];
            g.mask(&mut logits).expect("mask");
            assert!(logits[letter as usize].is_finite(), "text after the call");
            let opening = plain(" <tool_call>");
            assert!(
                g.advance(&opening).is_err(),
                "one call only without parallel calls"
            );
        }
    }

    #[test]
    fn parallel_calls_are_capped() {
        let c = tiny();
        let plain = |t: &str| tokenizer::encode_plain(&c.tokenizer, t).expect("encode");
        let call = "<tool_call>\n{\"name\": \"get_w\", \"arguments\": {\"d\": 2}}\n</tool_call>";
        for instead in [None, Some(CallsOr::Text)] {
            let with_text = instead.is_some();
            let constraint = Constraint::ToolCalls {
                functions: weather_functions(),
                parallel: true,
                instead,
            };
            let mut g = c.guide(&constraint, false).expect("compiles");
            for n in 0..MAX_CALLS {
                g.advance(&plain(&format!("\n{call}")))
                    .unwrap_or_else(|e| panic!("call {n} refused: {e}"));
            }
            assert!(
                g.advance(&plain(&format!("\n{call}"))).is_err(),
                "call {} refused (with text: {with_text})",
                MAX_CALLS + 1
            );
        }
    }

    #[test]
    fn beside_a_json_answer_the_reply_is_that_json_or_calls() {
        let c = tiny();
        let constraint = Constraint::ToolCalls {
            functions: weather_functions(),
            parallel: false,
            instead: Some(CallsOr::Json {
                schema: json!({"type": "object", "properties": {"ok": {"type": "boolean"}},
                    "required": ["ok"], "additionalProperties": false}),
            }),
        };
        let plain = |t: &str| tokenizer::encode_plain(&c.tokenizer, t).expect("encode");
        let mut g = c.guide(&constraint, false).expect("compiles");
        assert!(g.advance(&plain("Sure")).is_err(), "no free text");
        let mut g = c.guide(&constraint, false).expect("compiles");
        g.advance(&plain("{\"ok\": true}")).expect("the answer");
        let mut g = c.guide(&constraint, false).expect("compiles");
        g.advance(&plain(
            "<tool_call>\n{\"name\": \"get_w\", \"arguments\": {\"d\": 3}}",
        ))
        .expect("a call");
        let (mut answers, mut calls) = (0, 0);
        for seed in 0..20 {
            let mut g = c.guide(&constraint, false).expect("compiles");
            let Some(text) = random_reply(&c, &mut g, seed, 400) else {
                continue;
            };
            let text = text.trim();
            if let Some(call) = text.strip_prefix("<tool_call>") {
                let call = call.strip_suffix("</tool_call>").expect("a closed call");
                let v: Value = serde_json::from_str(call).expect("the call is JSON");
                assert_eq!(v["name"], "get_w", "{text}");
                calls += 1;
            } else {
                let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
                assert!(v["ok"].is_boolean(), "{text}");
                answers += 1;
            }
        }
        assert!(
            answers + calls >= 14,
            "{answers} answers and {calls} calls of 20"
        );
    }

    #[test]
    fn an_unusable_schema_is_a_clear_error() {
        let c = tiny();
        let bad = Constraint::JsonSchema {
            schema: json!({"type": "string", "format": "no-such-format"}),
        };
        let err = c.check(&bad).expect_err("refused").to_string();
        assert!(err.contains("no-such-format"), "{err}");
    }
}
