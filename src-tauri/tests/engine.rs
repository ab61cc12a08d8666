//! The chat engine end to end on a synthetic model: prompt building, KV prefix reuse with
//! logits equal to a cold prefill, streaming order, stop, queueing, context limits.

use candle_core::DType;
use chrono::NaiveDate;
use smollm3_bot::engine::constraint::Constrainer;
use smollm3_bot::engine::core::{EngineCore, EngineOptions, GenerateRequest};
use smollm3_bot::engine::events::{ChatMessage, EngineEvent, FinishReason, GenerationStats};
use smollm3_bot::engine::loader::LoadedModel;
use smollm3_bot::engine::sampler::SamplingParams;
use smollm3_bot::engine::worker::Engine;
use smollm3_bot::engine::{CallsOr, Constraint};
use smollm3_bot::model::gguf::GgufFile;
use smollm3_bot::model::synth::{self, Preset, Quant};
use smollm3_bot::model::Logits;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

/// One synthetic F32 model shared by the tests of this file.
fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("smollm3-engine-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tiny-f32.gguf");
        synth::write(Preset::Tiny, Quant::F32, 7, &p).unwrap();
        p
    })
    .clone()
}

fn core() -> EngineCore {
    let loaded = LoadedModel::open(&model_path(), None).unwrap();
    EngineCore::new(
        loaded,
        EngineOptions {
            context_size: 2048,
            kv_dtype: DType::F32,
            max_slots: 2,
            snapshots: None,
            ..EngineOptions::default()
        },
    )
    .unwrap()
}

fn request(messages: Vec<ChatMessage>, thinking: bool, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        conversation: Some("c1".into()),
        messages,
        params: SamplingParams {
            max_tokens,
            seed: Some(42),
            ..SamplingParams::default()
        },
        enable_thinking: thinking,
        today: NaiveDate::from_ymd_opt(2026, 11, 27).unwrap(),
        thinking_budget: None,
        stop: Vec::new(),
        assistant_prefix: None,
        logprobs: None,
        tools: Vec::new(),
        raw_prompt: None,
        constraint: None,
    }
}

/// Runs a job on the core and returns its events.
fn run(core: &mut EngineCore, req: &GenerateRequest) -> Vec<EngineEvent> {
    let mut events = Vec::new();
    core.run(req, &AtomicBool::new(false), &mut |e| events.push(e));
    events
}

fn done(events: &[EngineEvent]) -> (GenerationStats, Vec<u32>) {
    match events.last() {
        Some(EngineEvent::Done { stats, token_ids }) => (stats.clone(), token_ids.clone()),
        other => panic!("job did not finish: {other:?}"),
    }
}

fn answer(events: &[EngineEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::Answer { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Logits of the prompt computed from scratch in one pass.
fn cold_logits(core: &EngineCore, prompt: &[u32]) -> Vec<f32> {
    let model = &core.loaded().model;
    let mut cache = model.new_cache(4096, DType::F32);
    model
        .forward(prompt, &mut cache, Logits::Last)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Three turns: each reuses what the cache holds, and the reused prefill's logits equal a
/// cold prefill of the whole prompt.
fn conversation(thinking: bool) {
    let mut core = core();
    let mut messages = vec![
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "Hello there!"),
    ];
    let mut prev_prompt_len = 0;
    let mut prev_reply_len = 0;
    for turn in 0..3 {
        let req = request(messages.clone(), thinking, 12);
        let prompt = core.build_prompt(&req).unwrap();
        let events = run(&mut core, &req);
        assert!(
            matches!(events[0], EngineEvent::Started { .. }),
            "{:?}",
            events[0]
        );
        let (stats, ids) = done(&events);
        assert_eq!(stats.prompt_tokens, prompt.len());
        if turn > 0 {
            let want = if thinking {
                prev_prompt_len
            } else {
                prev_prompt_len + prev_reply_len
            };
            assert!(
                stats.reused_tokens >= want,
                "turn {turn}: reused {} < {want} (thinking {thinking})",
                stats.reused_tokens
            );
        }
        // The cache now holds prompt + reply; compare a reused prefill with a cold one.
        let mut probe = messages.clone();
        probe.push(ChatMessage {
            role: "assistant".into(),
            content: answer(&events),
            token_ids: Some(ids.clone()),
        });
        probe.push(ChatMessage::new("user", "And then?"));
        let probe_req = request(probe, thinking, 1);
        let probe_prompt = core.build_prompt(&probe_req).unwrap();
        let (warm, reused) = core
            .prefill(Some("c1"), &probe_prompt, &AtomicBool::new(false))
            .unwrap();
        assert!(
            reused >= prompt.len(),
            "reused {reused} < first prompt {}",
            prompt.len()
        );
        let cold = cold_logits(&core, &probe_prompt);
        let d = max_abs_diff(&warm, &cold);
        assert!(d <= 1e-3, "turn {turn}: warm vs cold logits differ by {d}");
        prev_prompt_len = prompt.len();
        prev_reply_len = ids.len();
        messages.push(ChatMessage {
            role: "assistant".into(),
            content: answer(&events),
            token_ids: Some(ids),
        });
        messages.push(ChatMessage::new("user", format!("Question number {turn}?")));
    }
}

#[test]
fn no_think_conversation_reuses_prompt_and_reply() {
    conversation(false);
}

#[test]
fn think_conversation_reuses_prompt() {
    conversation(true);
}

#[test]
fn same_seed_same_reply_and_greedy_is_deterministic() {
    let mut a = core();
    let mut b = core();
    let req = request(
        vec![ChatMessage::new("user", "Tell me a story.")],
        false,
        16,
    );
    assert_eq!(done(&run(&mut a, &req)).1, done(&run(&mut b, &req)).1);
}

#[test]
fn context_limit_is_a_clear_error() {
    let loaded = LoadedModel::open(&model_path(), None).unwrap();
    let mut core = EngineCore::new(
        loaded,
        EngineOptions {
            context_size: 256,
            kv_dtype: DType::F32,
            max_slots: 1,
            snapshots: None,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let long = "word ".repeat(400);
    let events = run(
        &mut core,
        &request(vec![ChatMessage::new("user", long)], false, 8),
    );
    match events.last() {
        Some(EngineEvent::Error { message }) => assert!(message.contains("too long"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
    // Generation that reaches the limit ends with ContextFull, not a panic. A random model
    // may emit an end token first, so try a few seeds (bounded).
    let mut full = 0;
    for seed in 0..8 {
        let mut req = request(vec![ChatMessage::new("user", "hi")], false, 1000);
        req.params.seed = Some(seed);
        req.conversation = Some(format!("s{seed}"));
        let (stats, ids) = done(&run(&mut core, &req));
        assert!(stats.prompt_tokens + ids.len() <= 256);
        if stats.finish_reason == FinishReason::ContextFull {
            full += 1;
        } else {
            assert_eq!(stats.finish_reason, FinishReason::Stop);
        }
    }
    assert!(full > 0, "no run reached the context limit");
}

#[test]
fn stop_strings_end_the_answer() {
    let mut core = core();
    let req = request(vec![ChatMessage::new("user", "Go on.")], false, 24);
    let full = answer(&run(&mut core, &req));
    assert!(
        full.chars().count() > 4,
        "reply too short to test: {full:?}"
    );
    let stop: String = full.chars().skip(3).take(2).collect();
    let mut req2 = req.clone();
    req2.stop = vec![stop.clone()];
    req2.conversation = Some("c2".into());
    let events = run(&mut core, &req2);
    let cut = answer(&events);
    assert_eq!(cut, full[..full.find(&stop).unwrap()]);
    assert_eq!(done(&events).0.finish_reason, FinishReason::Stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_streams_queues_and_stops() {
    let loaded = LoadedModel::open(&model_path(), None).unwrap();
    let engine = Engine::start(
        loaded,
        EngineOptions {
            context_size: 2048,
            kv_dtype: DType::F32,
            max_slots: 2,
            snapshots: None,
            // One reply at a time, so the second waits in the queue (batching: tests/batching.rs).
            max_batch: 1,
            kv_budget_bytes: 0,
        },
    )
    .unwrap();
    let mut first = engine.submit(request(
        vec![ChatMessage::new("user", "Write a long essay.")],
        false,
        400,
    ));
    let mut second_req = request(vec![ChatMessage::new("user", "Hi")], false, 5);
    second_req.conversation = Some("c2".into());
    let mut second = engine.submit(second_req);
    // The second job waits behind the first.
    let e = second.events.recv().await.unwrap();
    assert_eq!(e, EngineEvent::Queued { position: 1 });
    // Stop the first after a few answer deltas.
    let mut deltas = 0;
    let mut first_events = Vec::new();
    while let Some(e) = first.events.recv().await {
        if matches!(e, EngineEvent::Answer { .. }) {
            deltas += 1;
            if deltas == 3 {
                first.cancel.cancel();
            }
        }
        first_events.push(e);
    }
    let (stats, ids) = done(&first_events);
    assert_eq!(stats.finish_reason, FinishReason::Cancelled);
    assert!(
        ids.len() <= 5,
        "stop took effect after {} tokens",
        ids.len()
    );
    let mut second_events = Vec::new();
    while let Some(e) = second.events.recv().await {
        if !matches!(e, EngineEvent::Queued { .. }) {
            second_events.push(e);
        }
    }
    assert!(matches!(second_events[0], EngineEvent::Started { .. }));
    assert!(matches!(
        second_events.last(),
        Some(EngineEvent::Done { .. })
    ));
    // The cancelled conversation's cache is still usable: the next turn reuses it.
    let mut msgs = vec![ChatMessage::new("user", "Write a long essay.")];
    msgs.push(ChatMessage {
        role: "assistant".into(),
        content: answer(&first_events),
        token_ids: Some(ids),
    });
    msgs.push(ChatMessage::new("user", "Continue."));
    let mut third = engine.submit(request(msgs, false, 3));
    let mut third_events = Vec::new();
    while let Some(e) = third.events.recv().await {
        third_events.push(e);
    }
    let (stats, _) = done(&third_events);
    assert!(
        stats.reused_tokens > 10,
        "reused only {}",
        stats.reused_tokens
    );
    assert!(engine.cached_tokens("c1") > stats.reused_tokens);
    engine.shutdown();
}

#[test]
fn regenerate_reuses_everything_but_the_reply() {
    let mut core = core();
    let req = request(
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Name a colour."),
        ],
        false,
        6,
    );
    let (first, _) = done(&run(&mut core, &req));
    assert_eq!(first.reused_tokens, 0);
    // Regenerate: same messages again; only the last prompt token is recomputed.
    let (again, _) = done(&run(&mut core, &req));
    assert_eq!(again.reused_tokens, again.prompt_tokens - 1);
    // Edit the user message: the prefix up to the edit is reused.
    let mut edited = req.clone();
    edited.messages[1] = ChatMessage::new("user", "Name a fruit.");
    let system_only = core
        .build_prompt(&GenerateRequest {
            messages: vec![req.messages[0].clone()],
            ..req.clone()
        })
        .unwrap();
    let (third, _) = done(&run(&mut core, &edited));
    assert!(third.reused_tokens > 0 && third.reused_tokens < third.prompt_tokens - 1);
    assert!(
        third.reused_tokens + 12 >= system_only.len(),
        "edit reused {} of the {}-token system prompt",
        third.reused_tokens,
        system_only.len()
    );
}

fn reasoning(events: &[EngineEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::Reasoning { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// A request that starts the assistant turn inside the reasoning, decoded greedily.
fn reasoning_request(max_tokens: usize, budget: Option<usize>) -> GenerateRequest {
    let mut req = request(
        vec![ChatMessage::new("user", "Why is the sky blue?")],
        true,
        max_tokens,
    );
    req.params.temperature = 0.0;
    req.assistant_prefix = Some("<think>\n".into());
    req.thinking_budget = budget;
    req
}

/// The thinking budget through the real engine path: a random model never opens `<think>`
/// itself, so the assistant turn starts inside the reasoning. With budget N the reply is
/// exactly N reasoning tokens (the same ones an unlimited reply starts with), then the closing
/// tag in the kept ids, then answer text; without a budget the reasoning runs on.
#[test]
fn thinking_budget_closes_the_reasoning_after_n_tokens() {
    let mut core = core();
    let tok = core.loaded().tokenizer.clone();
    let end_think = core
        .loaded()
        .specials
        .end_think
        .expect("the vocabulary has </think>");
    let encode = |s: &str| smollm3_bot::text::tokenizer::encode(&tok, s).unwrap();
    let decode = |ids: &[u32]| tok.decode(ids, false).unwrap();
    let prefix = encode("<think>\n");
    let close = encode("\n</think>\n");
    assert!(close.contains(&end_think), "{close:?}");

    // No budget: 40 tokens of reasoning, no answer, and the prefix leads the kept ids.
    let free = run(&mut core, &reasoning_request(40, None));
    let (free_stats, free_ids) = done(&free);
    assert_eq!(free_stats.finish_reason, FinishReason::Length);
    assert_eq!(free_stats.generated_tokens, 40);
    assert_eq!(&free_ids[..prefix.len()], &prefix[..]);
    let free_gen = &free_ids[prefix.len()..];
    assert!(!free_gen.contains(&end_think), "the reasoning went on");
    assert!(answer(&free).is_empty(), "no answer without a budget");
    assert_eq!(reasoning(&free), decode(free_gen).trim_end_matches('\n'));
    assert!(
        !reasoning(&free).contains("<think>"),
        "the prefix is not streamed back"
    );

    for budget in [1, 4, 9] {
        let events = run(&mut core, &reasoning_request(40, Some(budget)));
        let (stats, ids) = done(&events);
        assert_eq!(&ids[..prefix.len()], &prefix[..]);
        let gen = &ids[prefix.len()..];
        assert_eq!(stats.generated_tokens, gen.len());
        // Exactly `budget` reasoning tokens, the ones the model picks without a budget.
        assert_eq!(&gen[..budget], &free_gen[..budget], "budget {budget}");
        assert_eq!(
            &gen[budget..budget + close.len()],
            &close[..],
            "budget {budget}: the closing tag follows the last reasoning token"
        );
        let answer_ids = &gen[budget + close.len()..];
        assert!(!answer_ids.is_empty(), "budget {budget}: the model answers");
        assert_eq!(
            reasoning(&events),
            decode(&gen[..budget]).trim_end_matches('\n'),
            "budget {budget}: the reasoning channel carries exactly those tokens"
        );
        assert_eq!(
            answer(&events),
            decode(answer_ids).trim_start_matches('\n'),
            "budget {budget}: the answer channel carries what follows the tag"
        );
        // Reasoning first, then answer deltas, then the end.
        let first_answer = events
            .iter()
            .position(|e| matches!(e, EngineEvent::Answer { .. }))
            .expect("answer deltas");
        assert!(
            !events[first_answer..]
                .iter()
                .any(|e| matches!(e, EngineEvent::Reasoning { .. })),
            "budget {budget}: no reasoning after the answer began"
        );
    }
}

/// A JSON Schema constraint through the real engine path, after reasoning: the reasoning
/// (opened by the prefix, closed by the budget) stays free text, and the answer is JSON valid
/// against the schema for every seed.
#[test]
fn a_constrained_answer_follows_free_reasoning() {
    let mut core = core();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9},
                       "k": {"enum": ["x", "y"]}},
        "required": ["n", "k"],
        "additionalProperties": false
    });
    for seed in 0..5 {
        let mut req = reasoning_request(120, Some(6));
        req.params = SamplingParams {
            max_tokens: 120,
            seed: Some(seed),
            temperature: 1.0,
            ..SamplingParams::default()
        };
        req.constraint = Some(Constraint::JsonSchema {
            schema: schema.clone(),
        });
        let events = run(&mut core, &req);
        let (stats, _) = done(&events);
        assert_eq!(stats.finish_reason, FinishReason::Stop, "seed {seed}");
        assert!(
            !reasoning(&events).is_empty(),
            "seed {seed}: the reasoning is free"
        );
        let text = answer(&events);
        let v: serde_json::Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?}"));
        assert!(
            v["n"].as_i64().is_some_and(|n| (0..=9).contains(&n)),
            "{text}"
        );
        assert!(matches!(v["k"].as_str(), Some("x" | "y")), "{text}");
    }
}

/// Under `tool_choice: auto` the text is free, but a call the reply opens is held to the
/// tools' schemas; a prefilled `<tool_call>` opens one (the constraint follows the prefix).
/// A prefix the format cannot continue is a clear error, not a reply.
#[test]
fn a_call_the_reply_opens_is_held_to_its_schema() {
    let mut core = core();
    let functions = vec![serde_json::json!({"name": "get_weather", "parameters": {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Oslo"]}, "days": {"type": "integer", "minimum": 1, "maximum": 3}},
        "required": ["city", "days"], "additionalProperties": false}})];
    let auto = Constraint::ToolCalls {
        functions,
        parallel: false,
        instead: Some(CallsOr::Text),
    };
    for seed in 0..5 {
        let mut req = request(vec![ChatMessage::new("user", "Weather?")], false, 250);
        req.params.seed = Some(seed);
        req.params.temperature = 1.0;
        req.assistant_prefix = Some("Let me check.\n<tool_call>\n".into());
        req.constraint = Some(auto.clone());
        let events = run(&mut core, &req);
        let (stats, _) = done(&events);
        let text = answer(&events);
        let call = text.split("</tool_call>").next().unwrap();
        assert_ne!(
            call, text,
            "seed {seed}: the call is closed ({stats:?}): {text:?}"
        );
        let v: serde_json::Value = serde_json::from_str(call.trim())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?}"));
        assert_eq!(v["name"], "get_weather", "{text}");
        assert!(
            matches!(v["arguments"]["city"].as_str(), Some("Paris" | "Oslo")),
            "{text}"
        );
        assert!(
            v["arguments"]["days"]
                .as_i64()
                .is_some_and(|d| (1..=3).contains(&d)),
            "{text}"
        );
    }
    let mut req = request(vec![ChatMessage::new("user", "Weather?")], false, 8);
    req.assistant_prefix = Some("Sure, ".into());
    req.constraint = Some(Constraint::JsonObject);
    let events = run(&mut core, &req);
    let failed = events.iter().any(|e| {
        matches!(e, EngineEvent::Error { message }
        if message.contains("the assistant message to continue does not fit"))
    });
    assert!(failed, "{events:?}");
}

/// An assistant prefix continues a reply: the model goes on from it, and the kept ids cover
/// the prefix too, so the next turn reuses the whole exchange from the cache.
#[test]
fn assistant_prefix_continues_a_reply() {
    let mut core = core();
    let tok = core.loaded().tokenizer.clone();
    let mut req = request(vec![ChatMessage::new("user", "Tell a story.")], false, 6);
    req.assistant_prefix = Some("Once upon a time".into());
    let events = run(&mut core, &req);
    let (stats, ids) = done(&events);
    let prefix = smollm3_bot::text::tokenizer::encode(&tok, "Once upon a time").unwrap();
    assert_eq!(&ids[..prefix.len()], &prefix[..]);
    assert_eq!(stats.generated_tokens, ids.len() - prefix.len());
    assert!(
        !answer(&events).contains("Once upon"),
        "the prefix is not streamed"
    );
    // The prompt ends with the prefix, right after the assistant header.
    let prompt = core.build_prompt(&req).unwrap();
    assert_eq!(stats.prompt_tokens, prompt.len());
    assert!(prompt.ends_with(&prefix));

    let mut next = req.clone();
    next.assistant_prefix = None;
    let content = format!("Once upon a time{}", answer(&events));
    next.messages.push(ChatMessage {
        role: "assistant".into(),
        content,
        token_ids: Some(ids),
    });
    next.messages.push(ChatMessage::new("user", "And then?"));
    let (second, _) = done(&run(&mut core, &next));
    assert!(
        second.reused_tokens >= stats.prompt_tokens + stats.generated_tokens - 1,
        "the continued reply is reused from the cache: {second:?} after {stats:?}"
    );
}

/// Shutting the engine down stops the reply in progress and the queued ones (each still ends
/// with `Done`, cancelled), and a job submitted afterwards fails at once instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_running_and_queued_jobs() {
    let loaded = LoadedModel::open(&model_path(), None).unwrap();
    let engine = Engine::start(loaded, EngineOptions::default()).unwrap();
    let mut long = request(
        vec![ChatMessage::new("user", "Go on forever.")],
        false,
        100_000,
    );
    long.params.temperature = 0.0;
    let mut running = engine.submit(long.clone());
    long.conversation = Some("c2".into());
    let mut queued = engine.submit(long);
    // Wait until the first reply streams.
    loop {
        match running.events.recv().await {
            Some(EngineEvent::Answer { .. } | EngineEvent::Reasoning { .. }) => break,
            Some(_) => {}
            None => panic!("the reply ended before it streamed"),
        }
    }
    let stopper = engine.clone();
    let t0 = std::time::Instant::now();
    tokio::task::spawn_blocking(move || stopper.shutdown())
        .await
        .unwrap();
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(30),
        "shutdown waited for the reply to run its course"
    );
    let mut last = None;
    while let Some(e) = running.events.recv().await {
        last = Some(e);
    }
    match last {
        Some(EngineEvent::Done { stats, .. }) => {
            assert_eq!(stats.finish_reason, FinishReason::Cancelled)
        }
        other => panic!("the running reply ended with {other:?}"),
    }
    let mut queued_events = Vec::new();
    while let Some(e) = queued.events.recv().await {
        queued_events.push(e);
    }
    assert_eq!(
        done(&queued_events).0.finish_reason,
        FinishReason::Cancelled
    );
    let mut late = engine.submit(request(vec![ChatMessage::new("user", "Hi")], false, 4));
    assert!(matches!(
        late.events.recv().await,
        Some(EngineEvent::Error { .. })
    ));
    assert!(late.events.recv().await.is_none());
}

/// The mask's cost per token with a full vocabulary, against the decode step it adds to:
/// `SMOLLM3_MASK_MODEL=target/bench-models/SmolLM3-3B-synth-Q4_K_M.gguf cargo test
/// --test engine mask_speed -- --ignored --nocapture` (llguidance is built optimised
/// in every profile).
#[test]
#[ignore]
fn mask_speed() {
    let path = std::env::var("SMOLLM3_MASK_MODEL").expect("set SMOLLM3_MASK_MODEL");
    let g = GgufFile::open(&path).expect("the model file");
    let tok = smollm3_bot::text::tokenizer::from_gguf(&g).expect("tokenizer");
    let specials = smollm3_bot::text::tokenizer::special_tokens(&g, &tok);
    let n = tok.get_vocab_size(true);
    let t0 = std::time::Instant::now();
    let tok_copy = tok.clone();
    let c = Constrainer::new(tok, specials, n);
    c.check(&Constraint::JsonObject).expect("compiles");
    println!(
        "vocabulary {n}: tables built in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let schema = serde_json::json!({"type": "object", "properties": {
        "city": {"type": "string"}, "rank": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["city", "rank", "tags"], "additionalProperties": false});
    let json_text = r#"{"city": "Paris in the spring", "rank": 12345, "tags": ["old", "river", "bridges and cafes"]}"#;
    // `tool_choice: auto`: free text, a call, free text again; every token is masked.
    let weather = serde_json::json!({"name": "get_weather", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"], "additionalProperties": false}});
    let auto_text = "Sure, I will look that up for you now, one moment please.\n<tool_call>\n\
        {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n\
        </tool_call>\nThe call is made; the answer will follow when the tool replies.";
    let cases = [
        (
            "json_schema",
            Constraint::JsonSchema { schema },
            json_text.to_string(),
        ),
        (
            "tool_choice auto",
            Constraint::ToolCalls {
                functions: vec![weather],
                parallel: true,
                instead: Some(CallsOr::Text),
            },
            auto_text.to_string(),
        ),
    ];
    for (name, constraint, text) in cases {
        let ids = smollm3_bot::text::tokenizer::encode_plain(&tok_copy, &text).expect("encode");
        let mut times = Vec::new();
        for _ in 0..5 {
            let mut g = c.guide(&constraint, false).expect("compiles");
            let mut logits = vec![0.0f32; n];
            for &id in &ids {
                let t = std::time::Instant::now();
                g.mask(&mut logits).expect("mask");
                g.advance(&[id]).expect("the text fits the constraint");
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{name}: mask + advance per token over {} tokens: min {:.3} ms, median {:.3} ms, max {:.3} ms",
            times.len(),
            times[0],
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
}
