//! Continuous batching: sequences decoded together in one forward pass per step give what
//! each gives alone, for batch sizes 1–8 and mixed lengths; the engine runs several replies at
//! once with each one's own sampler, stops, cancellation and context limit.

use candle_core::DType;
use smollm3_bot::model::synth::{self, Preset, Quant};
use smollm3_bot::model::{BatchItem, GgufFile, KvCache, Logits, Model};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The tiny synthetic model in F32 (weights and cache), shared by the tests of this file.
fn f32_model() -> &'static Model {
    static MODEL: OnceLock<(tempfile::TempDir, Model)> = OnceLock::new();
    &MODEL
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let p: PathBuf = dir.path().join("tiny-f32.gguf");
            synth::write(Preset::Tiny, Quant::F32, 21, &p).unwrap();
            let model = Model::load(&GgufFile::open(&p).unwrap()).unwrap();
            (dir, model)
        })
        .1
}

/// A prompt of `len` ids, different for each `seed`.
fn prompt(len: usize, seed: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 5 + (i * 7 + seed * 13) % 200)
        .collect()
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Greedy decoding of `steps` tokens after `prompt`, alone: the logits at every step.
fn alone(model: &Model, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(512, DType::F32);
    let mut logits: Vec<f32> = model
        .forward(prompt, &mut cache, Logits::Last)
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut out = vec![logits.clone()];
    for _ in 0..steps {
        let next = argmax(&logits);
        logits = model
            .forward(&[next], &mut cache, Logits::Last)
            .unwrap()
            .to_vec1()
            .unwrap();
        out.push(logits.clone());
    }
    out
}

/// The same sequences decoded together: each step one forward pass over all of them. The
/// prompts themselves go through the batch too, in chunks of `chunk` beside the others'
/// decoding, so mixed lengths, prefill beside decode and sequences joining late are covered.
fn together(model: &Model, prompts: &[Vec<u32>], steps: usize, chunk: usize) -> Vec<Vec<Vec<f32>>> {
    let n = prompts.len();
    let mut caches: Vec<KvCache> = (0..n).map(|_| model.new_cache(512, DType::F32)).collect();
    let mut fed = vec![0usize; n];
    let mut out: Vec<Vec<Vec<f32>>> = vec![Vec::new(); n];
    let mut pending: Vec<Option<u32>> = vec![None; n];
    let mut guard = 0;
    while out.iter().any(|o| o.len() < steps + 1) {
        guard += 1;
        assert!(guard < 10_000, "the batch does not advance");
        let inputs: Vec<(usize, Vec<u32>)> = (0..n)
            .filter(|&i| out[i].len() < steps + 1)
            .map(|i| match pending[i] {
                Some(t) => (i, vec![t]),
                None => {
                    let end = (fed[i] + chunk).min(prompts[i].len());
                    (i, prompts[i][fed[i]..end].to_vec())
                }
            })
            .collect();
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let mut chosen: Vec<Option<&mut KvCache>> = refs.drain(..).map(Some).collect();
        let mut batch: Vec<BatchItem<'_>> = inputs
            .iter()
            .map(|(i, t)| BatchItem {
                tokens: t,
                cache: chosen[*i].take().unwrap(),
            })
            .collect();
        let logits = model.forward_batch(&mut batch).unwrap();
        drop(batch);
        for ((i, t), l) in inputs.iter().zip(logits) {
            let l: Vec<f32> = l.to_vec1().unwrap();
            if pending[*i].is_none() {
                fed[*i] += t.len();
                if fed[*i] < prompts[*i].len() {
                    continue; // the prompt is not all in yet
                }
            }
            pending[*i] = Some(argmax(&l));
            out[*i].push(l);
        }
    }
    out
}

#[test]
fn a_sequence_decoded_in_a_batch_gives_what_it_gives_alone() {
    let model = f32_model();
    let steps = 6;
    for n in 1..=8usize {
        // Mixed lengths: 3 to 40-odd tokens.
        let prompts: Vec<Vec<u32>> = (0..n).map(|i| prompt(3 + 6 * i, i as u32)).collect();
        let batched = together(model, &prompts, steps, 16);
        for (i, p) in prompts.iter().enumerate() {
            let solo = alone(model, p, steps);
            assert_eq!(batched[i].len(), solo.len());
            for (step, (b, s)) in batched[i].iter().zip(&solo).enumerate() {
                let d = max_abs_diff(b, s);
                assert!(
                    d <= 1e-3,
                    "batch of {n}, sequence {i}, step {step}: logits differ by {d}"
                );
                assert_eq!(
                    argmax(b),
                    argmax(s),
                    "batch of {n}, sequence {i}, step {step}"
                );
            }
        }
    }
}

mod engine {
    use candle_core::DType;
    use chrono::NaiveDate;
    use smollm3_bot::engine::core::{EngineCore, EngineOptions, GenerateRequest};
    use smollm3_bot::engine::events::{ChatMessage, EngineEvent, FinishReason};
    use smollm3_bot::engine::loader::LoadedModel;
    use smollm3_bot::engine::sampler::SamplingParams;
    use smollm3_bot::engine::Engine;
    use smollm3_bot::model::synth::{self, Preset, Quant};
    use std::path::PathBuf;
    use std::sync::atomic::AtomicBool;
    use std::sync::OnceLock;
    use std::time::Instant;

    pub(super) fn model_path() -> PathBuf {
        static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
        let dir = DIR.get_or_init(|| {
            let d = tempfile::tempdir().unwrap();
            synth::write(Preset::Tiny, Quant::F32, 22, &d.path().join("m.gguf")).unwrap();
            d
        });
        dir.path().join("m.gguf")
    }

    pub(super) fn options(max_batch: usize, context_size: usize) -> EngineOptions {
        EngineOptions {
            context_size,
            kv_dtype: DType::F32,
            max_slots: 8,
            snapshots: None,
            max_batch,
            kv_budget_bytes: 0,
        }
    }

    /// A greedy request of conversation `i`, its own question and length.
    pub(super) fn request(i: usize, max_tokens: usize) -> GenerateRequest {
        let mut req = GenerateRequest::new(
            Some(format!("c{i}")),
            vec![ChatMessage::new(
                "user",
                format!(
                    "Question {i}: {}",
                    "tell me about the sea. ".repeat(1 + i % 4)
                ),
            )],
            NaiveDate::from_ymd_opt(2026, 12, 7).unwrap(),
        );
        req.enable_thinking = false;
        req.params = SamplingParams {
            max_tokens,
            temperature: 0.0,
            seed: Some(3),
            ..SamplingParams::default()
        };
        req
    }

    /// What a request gives alone: its finish reason and token ids.
    pub(super) fn alone(req: &GenerateRequest, context_size: usize) -> (FinishReason, Vec<u32>) {
        let loaded = LoadedModel::open(&model_path(), None).unwrap();
        let mut core = EngineCore::new(loaded, options(1, context_size)).unwrap();
        let mut events = Vec::new();
        core.run(req, &AtomicBool::new(false), &mut |e| events.push(e));
        match events.pop() {
            Some(EngineEvent::Done { stats, token_ids }) => (stats.finish_reason, token_ids),
            other => panic!("no end: {other:?}"),
        }
    }

    /// One reply read to its end: its events and when it started and ended.
    pub(super) struct Reply {
        pub(super) events: Vec<EngineEvent>,
        started: Instant,
        done: Instant,
    }

    impl Reply {
        pub(super) fn end(&self) -> (FinishReason, Vec<u32>) {
            match self.events.last() {
                Some(EngineEvent::Done { stats, token_ids }) => {
                    (stats.finish_reason, token_ids.clone())
                }
                other => panic!("no end: {other:?}"),
            }
        }
        fn queued(&self) -> bool {
            self.events
                .iter()
                .any(|e| matches!(e, EngineEvent::Queued { .. }))
        }
    }

    /// Submits every request at once and reads all replies; `cancel_after` stops reply `i`
    /// after its first answer text.
    pub(super) async fn together(
        engine: &Engine,
        reqs: Vec<GenerateRequest>,
        cancel_after: Option<usize>,
    ) -> Vec<Reply> {
        let handles: Vec<_> = reqs.into_iter().map(|r| engine.submit(r)).collect();
        let tasks: Vec<_> = handles
            .into_iter()
            .enumerate()
            .map(|(i, mut h)| {
                tokio::spawn(async move {
                    let mut events = Vec::new();
                    let mut started = None;
                    while let Some(e) =
                        tokio::time::timeout(std::time::Duration::from_secs(120), h.events.recv())
                            .await
                            .expect("an event within two minutes")
                    {
                        if matches!(e, EngineEvent::Started { .. }) {
                            started = Some(Instant::now());
                        }
                        if cancel_after == Some(i) && matches!(e, EngineEvent::Answer { .. }) {
                            h.cancel.cancel();
                        }
                        events.push(e);
                    }
                    Reply {
                        events,
                        started: started.expect("started"),
                        done: Instant::now(),
                    }
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replies_decoded_together_are_the_replies_decoded_alone() {
        let context = 2048;
        for n in [2usize, 5, 8] {
            let engine = Engine::start(
                LoadedModel::open(&model_path(), None).unwrap(),
                options(8, context),
            )
            .unwrap();
            let reqs: Vec<_> = (0..n).map(|i| request(i, 12 + 3 * i)).collect();
            let replies = together(&engine, reqs.clone(), None).await;
            // They ran together: none waited, and every one started before any ended.
            assert!(replies.iter().all(|r| !r.queued()), "batch of {n}");
            let first_end = replies.iter().map(|r| r.done).min().unwrap();
            assert!(
                replies.iter().all(|r| r.started < first_end),
                "batch of {n}: not all started before the first ended"
            );
            for (i, (req, reply)) in reqs.iter().zip(&replies).enumerate() {
                assert_eq!(reply.end(), alone(req, context), "batch of {n}, reply {i}");
            }
            engine.shutdown();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelling_one_reply_leaves_the_others_as_they_are() {
        let context = 2048;
        let engine = Engine::start(
            LoadedModel::open(&model_path(), None).unwrap(),
            options(4, context),
        )
        .unwrap();
        let reqs: Vec<_> = (0..3).map(|i| request(i, 30)).collect();
        let replies = together(&engine, reqs.clone(), Some(1)).await;
        let (finish, ids) = replies[1].end();
        assert_eq!(finish, FinishReason::Cancelled);
        assert!(ids.len() < 30, "stopped early: {} tokens", ids.len());
        for i in [0, 2] {
            assert_eq!(replies[i].end(), alone(&reqs[i], context), "reply {i}");
        }
        engine.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reply_at_the_context_limit_ends_alone() {
        // The third conversation's prompt leaves it 8 tokens of room; the others have plenty.
        let mut reqs: Vec<_> = (0..3).map(|i| request(i, 20)).collect();
        reqs[2].params.max_tokens = 100;
        reqs[2].messages[0]
            .content
            .push_str(&" and the waves".repeat(12));
        let probe = Engine::start(
            LoadedModel::open(&model_path(), None).unwrap(),
            options(1, 2048),
        )
        .unwrap();
        let context = probe.prompt(&reqs[2]).unwrap().len() + 8;
        for r in &reqs[..2] {
            assert!(probe.prompt(r).unwrap().len() + 21 < context);
        }
        probe.shutdown();
        let engine = Engine::start(
            LoadedModel::open(&model_path(), None).unwrap(),
            options(4, context),
        )
        .unwrap();
        let replies = together(&engine, reqs.clone(), None).await;
        assert_eq!(replies[2].end().0, FinishReason::ContextFull);
        assert_eq!(replies[2].end(), alone(&reqs[2], context));
        for i in [0, 1] {
            assert_eq!(replies[i].end(), alone(&reqs[i], context), "reply {i}");
            assert_eq!(replies[i].end().0, FinishReason::Length);
        }
        engine.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_replies_than_the_batch_wait_their_turn() {
        let context = 2048;
        let engine = Engine::start(
            LoadedModel::open(&model_path(), None).unwrap(),
            options(2, context),
        )
        .unwrap();
        let reqs: Vec<_> = (0..4).map(|i| request(i, 10)).collect();
        let replies = together(&engine, reqs.clone(), None).await;
        let waited: Vec<bool> = replies.iter().map(Reply::queued).collect();
        assert_eq!(waited, [false, false, true, true]);
        assert!(replies[2]
            .events
            .contains(&EngineEvent::Queued { position: 1 }));
        assert!(replies[3]
            .events
            .contains(&EngineEvent::Queued { position: 2 }));
        for (i, (req, reply)) in reqs.iter().zip(&replies).enumerate() {
            assert_eq!(reply.end(), alone(req, context), "reply {i}");
        }
        engine.shutdown();
    }
}

mod shared_starts {
    use super::engine::{alone, model_path, options, request, together, Reply};
    use smollm3_bot::engine::events::{ChatMessage, EngineEvent};
    use smollm3_bot::engine::loader::LoadedModel;
    use smollm3_bot::engine::Engine;

    /// Conversation `i`'s request with a long system prompt every conversation shares.
    fn with_system_prompt(i: usize) -> smollm3_bot::engine::core::GenerateRequest {
        let mut req = request(i, 8);
        req.messages.insert(
            0,
            ChatMessage::new(
                "system",
                "You are a careful assistant who answers about the sea. ".repeat(12),
            ),
        );
        req
    }

    fn reused(reply: &Reply) -> usize {
        match reply.events.last() {
            Some(EngineEvent::Done { stats, .. }) => stats.reused_tokens,
            other => panic!("no end: {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replies_sharing_a_system_prompt_compute_it_once() {
        let context = 2048;
        let engine = Engine::start(
            LoadedModel::open(&model_path(), None).unwrap(),
            options(4, context),
        )
        .unwrap();
        let reqs: Vec<_> = (0..3).map(with_system_prompt).collect();
        let prompts: Vec<Vec<u32>> = reqs.iter().map(|r| engine.prompt(r).unwrap()).collect();
        let common = prompts[0]
            .iter()
            .zip(&prompts[1])
            .take_while(|(a, b)| a == b)
            .count();
        assert!(common > 100, "the system prompt is shared: {common} tokens");
        // Submitted together: the first computes the shared start, the others copy it.
        let replies = together(&engine, reqs.clone(), None).await;
        assert_eq!(reused(&replies[0]), 0);
        for (i, reply) in replies.iter().enumerate().skip(1) {
            assert!(
                reused(reply) >= common - 1,
                "reply {i} reused {} of {common} shared tokens",
                reused(reply)
            );
        }
        for (i, (req, reply)) in reqs.iter().zip(&replies).enumerate() {
            assert_eq!(reply.end(), alone(req, context), "reply {i}");
        }
        // Later, a new conversation with the same system prompt copies it from an idle cache.
        let later = with_system_prompt(7);
        let reply = together(&engine, vec![later.clone()], None).await;
        assert!(reused(&reply[0]) >= common - 1, "{}", reused(&reply[0]));
        assert_eq!(reply[0].end(), alone(&later, context));
        engine.shutdown();
    }
}

mod memory_budget {
    use super::engine::{alone, model_path, options, request, together};
    use candle_core::DType;
    use smollm3_bot::engine::events::EngineEvent;
    use smollm3_bot::engine::loader::LoadedModel;
    use smollm3_bot::engine::Engine;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reply_beyond_the_memory_budget_waits_its_turn() {
        let context = 2048;
        let reqs: Vec<_> = (0..3).map(|i| request(i, 10)).collect();
        let loaded = LoadedModel::open(&model_path(), None).unwrap();
        let probe = loaded.model.new_cache(1, DType::F32);
        let per_token = (probe.bytes_per_layer(1) * probe.n_layers()) as u64;
        let mut opts = options(4, context);
        let engine = Engine::start(loaded, opts.clone()).unwrap();
        let rows: Vec<u64> = reqs
            .iter()
            .map(|r| (engine.prompt(r).unwrap().len() + 10) as u64)
            .collect();
        engine.shutdown();
        // Room for the first two replies' caches, not the third's.
        opts.kv_budget_bytes = (rows[0] + rows[1]) * per_token;
        let engine = Engine::start(LoadedModel::open(&model_path(), None).unwrap(), opts).unwrap();
        let replies = together(&engine, reqs.clone(), None).await;
        let waited = |i: usize| {
            replies[i]
                .events
                .contains(&EngineEvent::Queued { position: 1 })
        };
        assert!(!waited(0) && !waited(1));
        // The batch had room for it: only the memory made it wait.
        assert!(waited(2), "the third reply waited for memory");
        for (i, (req, reply)) in reqs.iter().zip(&replies).enumerate() {
            assert_eq!(reply.end(), alone(req, context), "reply {i}");
        }
        engine.shutdown();
    }
}
