//! A bounded load test of the real server: 16 concurrent clients against a small queue.
//! Every request must be answered 200 or refused 503 (never hang, never fail otherwise), and
//! the server's memory must stay flat from one round to the next.

mod serve_support;

use serve_support::Server;
use std::time::{Duration, Instant};

const CLIENTS: usize = 16;
const REQUESTS_PER_CLIENT: usize = 4;
const MAX_QUEUE: &str = "2";

#[derive(Debug, Default)]
struct Round {
    ok: usize,
    busy: usize,
    latencies_ms: Vec<u64>,
}

async fn one_request(client: &reqwest::Client, url: &str, i: usize) -> (u16, u64) {
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": format!("Request number {i}: say something.")}],
        "max_tokens": 16,
        "stream": i.is_multiple_of(2),
        "seed": i,
    });
    let t0 = Instant::now();
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("the server answered");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("the body arrived");
    if status == 200 && i.is_multiple_of(2) {
        assert!(
            text.trim_end().ends_with("data: [DONE]"),
            "stream ended: {text}"
        );
    } else if status == 200 {
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON reply");
        assert!(v["choices"][0]["message"]["content"].is_string(), "{text}");
    } else {
        assert!(text.contains("queue_full"), "{status}: {text}");
    }
    (status, t0.elapsed().as_millis() as u64)
}

async fn round(base: &str) -> Round {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let url = format!("{base}/v1/chat/completions");
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for r in 0..REQUESTS_PER_CLIENT {
                out.push(one_request(&client, &url, c * REQUESTS_PER_CLIENT + r).await);
            }
            out
        }));
    }
    let mut round = Round::default();
    for t in tasks {
        for (status, ms) in t.await.expect("a client task panicked") {
            match status {
                200 => {
                    round.ok += 1;
                    round.latencies_ms.push(ms);
                }
                503 => round.busy += 1,
                other => panic!("unexpected status {other}"),
            }
        }
    }
    round
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_clients_get_answers_or_503_and_memory_stays_flat() {
    let server = Server::start("load", &["--context", "512", "--max-queue", MAX_QUEUE]);
    let base = server.base.clone();
    let run = async {
        // Warm up: the first requests grow the KV caches to their working size.
        let warm = round(&base).await;
        let rss_before = server.rss_kib().unwrap_or(0);
        let t0 = Instant::now();
        let a = round(&base).await;
        let b = round(&base).await;
        let wall = t0.elapsed();
        let rss_after = server.rss_kib().unwrap_or(0);
        (warm, a, b, rss_before, rss_after, wall)
    };
    let (warm, a, b, rss_before, rss_after, wall) =
        tokio::time::timeout(Duration::from_secs(600), run)
            .await
            .expect("no deadlock: the load finished within 10 minutes");

    let requests = 2 * CLIENTS * REQUESTS_PER_CLIENT;
    let ok = a.ok + b.ok;
    let busy = a.busy + b.busy;
    let mut lat: Vec<u64> = a
        .latencies_ms
        .iter()
        .chain(&b.latencies_ms)
        .copied()
        .collect();
    lat.sort_unstable();
    println!(
        "load: {requests} requests from {CLIENTS} clients (queue {MAX_QUEUE}) in {:.1} s: \
         {ok} × 200, {busy} × 503; latency of 200s p50 {} ms, p95 {} ms; \
         RSS {} MiB before, {} MiB after (warm-up: {} × 200, {} × 503)",
        wall.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.95),
        rss_before / 1024,
        rss_after / 1024,
        warm.ok,
        warm.busy,
    );
    assert_eq!(ok + busy, requests, "every request was answered");
    assert!(ok > 0, "some requests were served");
    assert!(
        busy > 0,
        "a queue of {MAX_QUEUE} under {CLIENTS} clients refuses some"
    );
    if rss_before > 0 {
        // Flat: two more rounds may not add more than 32 MiB (allocator slack included).
        assert!(
            rss_after < rss_before + 32 * 1024,
            "memory grew from {rss_before} KiB to {rss_after} KiB"
        );
    }
    drop(server);
}
