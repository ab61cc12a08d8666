//! What the in-process API tests share: the tiny synthetic model, an API state over it, and
//! requests sent through a router with bounded waits.
#![allow(dead_code)] // each test file uses a different part

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use smollm3_bot::engine::core::EngineOptions;
use smollm3_bot::engine::loader::LoadedModel;
use smollm3_bot::engine::worker::Engine;
use smollm3_bot::model::synth::{self, Preset, Quant};
use smollm3_bot::shell::openai::{ApiConfig, ApiState};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use tower::ServiceExt;

pub const PORT: u16 = 3000;
pub const HOST: &str = "127.0.0.1:3000";
pub const MODEL_ID: &str = "tiny-q4";

/// The tiny synthetic model (random weights, the real layout), written once per process.
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("smollm3-api-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("{MODEL_ID}.gguf"));
        synth::write(Preset::Tiny, Quant::Q4KM, 11, &p).unwrap();
        p
    })
    .clone()
}

/// The API over a fresh engine on the tiny model: `context` tokens, `max_queue` waiting.
pub fn api(context: usize, max_queue: usize) -> ApiState {
    let loaded = LoadedModel::open(&model_path(), None).unwrap();
    let engine = Engine::start(
        loaded,
        EngineOptions {
            context_size: context,
            max_slots: 2,
            // One reply at a time, so the queue's places are counted as the tests expect
            // (replies batched through the API: tests/load.rs and tests/batching.rs).
            max_batch: 1,
            kv_budget_bytes: 0,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let mut cfg = ApiConfig::new(MODEL_ID);
    cfg.max_queue = max_queue;
    cfg.max_body_bytes = 64 * 1024;
    ApiState::new(engine, cfg)
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header(header::HOST, HOST)
        .body(Body::empty())
        .unwrap()
}

pub fn post_json(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header(header::HOST, HOST)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// One request through `app`: status, headers and body, each awaited at most two minutes.
pub async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = tokio::time::timeout(Duration::from_secs(120), app.clone().oneshot(req))
        .await
        .expect("the server answered in time")
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(120), resp.into_body().collect())
        .await
        .expect("the body ended in time")
        .unwrap()
        .to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

pub fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}
