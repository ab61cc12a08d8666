//! The HTTP API and its guard, driven in-process (`tower::ServiceExt::oneshot`, no sockets)
//! against a tiny synthetic model: every route, every refusal, plain and streamed replies.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use smollm3_bot::shell::guard::{Guard, GuardConfig, KeyStore, SESSION_COOKIE};
use smollm3_bot::shell::openai::{ApiConfig, ApiState};
use smollm3_bot::shell::serve::app_router;
use std::time::{Duration, Instant};
use tower::ServiceExt;

mod api_support;
use api_support::{api, get, json_of, model_path, post_json, send, HOST, MODEL_ID, PORT};

fn guarded(api: ApiState, cfg: GuardConfig) -> Router {
    Guard::new(cfg).protect(app_router(api, None))
}

fn local_cfg() -> GuardConfig {
    GuardConfig {
        max_body_bytes: 64 * 1024,
        ..GuardConfig::local(PORT)
    }
}

fn app() -> Router {
    guarded(api(512, 4), local_cfg())
}

/// Posts `body` to `path` and asserts a 400 naming `param`.
async fn assert_refused(app: &Router, path: &str, body: &Value, param: &str) {
    let (s, _, b) = send(app, post_json(path, body)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {b}");
    assert_eq!(error_of(&b)["param"], param, "{body}: {b}");
}

/// Asserts OpenAI's error shape and returns the error object.
fn error_of(body: &str) -> Value {
    let v = json_of(body);
    let e = v["error"].clone();
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
    e
}

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 12,
        "temperature": 0,
    });
    if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim_start().to_string())
        .collect()
}

#[tokio::test]
async fn health_and_models_describe_the_served_model() {
    let app = app();
    let (s, _, b) = send(&app, get("/health")).await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&b);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["context_size"], 512);

    let (s, _, b) = send(&app, get("/v1/models")).await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&b);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL_ID);
    assert_eq!(v["data"][0]["object"], "model");

    let (s, _, _) = send(&app, get(&format!("/v1/models/{MODEL_ID}"))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, b) = send(&app, get("/v1/models/gpt-4o")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&b)["code"], "model_not_found");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = app();
    for path in ["/v1/nope", "/nope", "/v1/embeddings"] {
        let (s, _, b) = send(&app, get(path)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        error_of(&b);
    }
    let (s, _, b) = send(&app, get("/v1/chat/completions")).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    error_of(&b);
}

#[tokio::test]
async fn other_hosts_are_misdirected() {
    let app = app();
    for host in [
        Some("evil.example:3000"),
        Some("127.0.0.1:3001"),
        Some("localhost"),
        Some("192.168.1.20:3000"),
        None,
    ] {
        let mut req = Request::get("/health");
        if let Some(h) = host {
            req = req.header(header::HOST, h);
        }
        let (s, _, b) = send(&app, req.body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::MISDIRECTED_REQUEST, "{host:?}");
        assert_eq!(error_of(&b)["code"], "host_not_allowed");
    }
    for host in ["localhost:3000", "[::1]:3000", "LOCALHOST:3000"] {
        let req = Request::get("/health")
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap();
        let (s, _, _) = send(&app, req).await;
        assert_eq!(s, StatusCode::OK, "{host}");
    }
}

#[tokio::test]
async fn cross_origin_posts_are_forbidden_same_origin_ones_pass() {
    let app = app();
    let mut req = post_json("/v1/chat/completions", &chat(json!({"max_tokens": 2})));
    req.headers_mut()
        .insert(header::ORIGIN, "http://evil.example".parse().unwrap());
    let (s, _, b) = send(&app, req).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(error_of(&b)["code"], "cross_origin");

    let mut req = post_json("/v1/chat/completions", &chat(json!({"max_tokens": 2})));
    req.headers_mut()
        .insert(header::ORIGIN, "http://127.0.0.1:3000".parse().unwrap());
    let (s, _, b) = send(&app, req).await;
    assert_eq!(s, StatusCode::OK, "{b}");

    // CORS is off: a preflight from another site is refused and grants nothing.
    let req = Request::options("/v1/chat/completions")
        .header(header::HOST, HOST)
        .header(header::ORIGIN, "http://evil.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .body(Body::empty())
        .unwrap();
    let (s, h, _) = send(&app, req).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}

#[tokio::test]
async fn configured_cors_origins_are_allowed() {
    let cfg = GuardConfig {
        cors_origins: vec!["https://app.example".into()],
        ..local_cfg()
    };
    let app = guarded(api(512, 4), cfg);
    let req = Request::options("/v1/chat/completions")
        .header(header::HOST, HOST)
        .header(header::ORIGIN, "https://app.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .body(Body::empty())
        .unwrap();
    let (s, h, _) = send(&app, req).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example"
    );
    let mut req = post_json("/v1/chat/completions", &chat(json!({"max_tokens": 2})));
    req.headers_mut()
        .insert(header::ORIGIN, "https://app.example".parse().unwrap());
    let (s, h, _) = send(&app, req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example"
    );
}

#[tokio::test]
async fn lan_mode_needs_the_key_by_header_or_login_cookie() {
    let key = "smol-test-key-0123456789abcdefghijklmnop";
    let cfg = GuardConfig {
        lan: true,
        extra_hosts: vec!["192.168.1.20".into(), "mybox.local".into()],
        keys: KeyStore::new(Some(key.into())),
        ..local_cfg()
    };
    let app = guarded(api(512, 4), cfg);
    let lan_get = |path: &str| {
        Request::get(path)
            .header(header::HOST, "192.168.1.20:3000")
            .body(Body::empty())
            .unwrap()
    };

    let (s, h, b) = send(&app, lan_get("/v1/models")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&b)["code"], "invalid_api_key");
    assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");

    let mut req = lan_get("/v1/models");
    req.headers_mut()
        .insert(header::AUTHORIZATION, "Bearer wrong-key".parse().unwrap());
    let (s, _, _) = send(&app, req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let mut req = lan_get("/v1/models");
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    let (s, _, _) = send(&app, req).await;
    assert_eq!(s, StatusCode::OK);

    // The machine's LAN names are hosts it answers for; others still are not.
    let req = Request::get("/health")
        .header(header::HOST, "elsewhere.example:3000")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::MISDIRECTED_REQUEST);

    // A browser is sent to the login page, which sets the cookie.
    let mut req = lan_get("/chat");
    req.headers_mut()
        .insert(header::ACCEPT, "text/html".parse().unwrap());
    let (s, h, _) = send(&app, req).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], "/login?next=/chat");
    let (s, _, page) = send(&app, lan_get("/login?next=/chat")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("type=\"password\""));

    let login = |k: &str| {
        Request::post("/login")
            .header(header::HOST, "mybox.local:3000")
            .header(header::ORIGIN, "http://mybox.local:3000")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("key={k}&next=%2Fchat")))
            .unwrap()
    };
    let (s, h, _) = send(&app, login("nope")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(h.get(header::SET_COOKIE).is_none());
    let (s, h, _) = send(&app, login(key)).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], "/chat");
    let cookie = h[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(!cookie.contains(key), "the cookie does not carry the key");
    let pair = cookie.split(';').next().unwrap().to_string();
    assert!(pair.starts_with(SESSION_COOKIE));
    let mut req = lan_get("/v1/models");
    req.headers_mut()
        .insert(header::COOKIE, pair.parse().unwrap());
    assert_eq!(send(&app, req).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_key_set_on_loopback_is_required_too() {
    let cfg = GuardConfig {
        keys: KeyStore::new(Some("loopback-key-0123456789".into())),
        ..local_cfg()
    };
    let app = guarded(api(512, 4), cfg);
    assert_eq!(
        send(&app, get("/v1/models")).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let app = app();
    let big = "x".repeat(70 * 1024);
    let body = chat(json!({"messages": [{"role": "user", "content": big}]}));
    // Declared length.
    let mut req = post_json("/v1/chat/completions", &body);
    let len = body.to_string().len();
    req.headers_mut().insert(header::CONTENT_LENGTH, len.into());
    let (s, _, b) = send(&app, req).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&b)["code"], "request_too_large");
    // No declared length: cut off while reading.
    let (s, _, b) = send(&app, post_json("/v1/chat/completions", &body)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    error_of(&b);
}

#[tokio::test]
async fn malformed_requests_are_bad_requests() {
    let app = app();
    let req = Request::post("/v1/chat/completions")
        .header(header::HOST, HOST)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"messages\": [oops"))
        .unwrap();
    let (s, _, b) = send(&app, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&b)["type"], "invalid_request_error");

    for (body, param) in [
        (json!({"model": MODEL_ID}), Value::Null),
        (chat(json!({"temperature": -1})), json!("temperature")),
        (chat(json!({"max_tokens": 0})), json!("max_tokens")),
        (
            chat(
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            ),
            json!("messages[0].content"),
        ),
    ] {
        let (s, _, b) = send(&app, post_json("/v1/chat/completions", &body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_of(&b)["param"], param, "{b}");
    }
}

/// An API that answers only to its own model names (as in LAN mode).
fn strict_app() -> Router {
    let api = api(512, 4);
    let cfg = ApiConfig {
        any_model_name: false,
        ..api.config().clone()
    };
    guarded(ApiState::new(api.engine().clone(), cfg), local_cfg())
}

#[tokio::test]
async fn the_names_clients_send_are_served() {
    let app = app();
    let (s, _, b) = send(&app, get("/v1/models")).await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<_> = json_of(&b)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, [MODEL_ID, "smollm3"]);
    let (s, _, b) = send(&app, get("/v1/models/smollm3")).await;
    assert_eq!(
        (s, json_of(&b)["id"].clone()),
        (StatusCode::OK, json!("smollm3"))
    );
    // The alias and a client's default name are both served by the one model here.
    for name in ["smollm3", "SmolLM3", "gpt-4o-mini"] {
        let (s, _, b) = send(
            &app,
            post_json("/v1/chat/completions", &chat(json!({"model": name}))),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{name}: {b}");
        assert_eq!(
            json_of(&b)["model"],
            MODEL_ID,
            "the reply names what answered"
        );
    }
    // Without `/v1` too, and errors there are JSON as well.
    let (s, _, b) = send(&app, post_json("/chat/completions", &chat(json!({})))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(json_of(&b)["object"], "chat.completion");
    let (s, _, b) = send(&app, get("/models")).await;
    assert_eq!(
        (s, json_of(&b)["object"].clone()),
        (StatusCode::OK, json!("list"))
    );
    let (s, _, b) = send(&app, get("/chat/completions")).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    error_of(&b);

    // Strict (LAN mode's default): another name is not this model.
    let strict = strict_app();
    let (s, _, b) = send(
        &strict,
        post_json("/v1/chat/completions", &chat(json!({"model": "gpt-4o"}))),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&b)["code"], "model_not_found");
    let (s, _, b) = send(
        &strict,
        post_json("/v1/chat/completions", &chat(json!({"model": "smollm3"}))),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

#[tokio::test]
async fn no_field_is_silently_ignored() {
    let app = app();
    for (extra, param) in [
        (json!({"modalities": ["text", "audio"]}), "modalities"),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (json!({"top_logprobs": 3}), "top_logprobs"),
        (json!({"store": true}), "store"),
        (json!({"service_tier": "flex"}), "service_tier"),
        (json!({"reasoning_effort": "extreme"}), "reasoning_effort"),
        (json!({"frequency_penalty": 3}), "frequency_penalty"),
        (json!({"logit_bias": {"abc": 1}}), "logit_bias"),
        (json!({"logit_bias": {"5": 300}}), "logit_bias"),
    ] {
        assert_refused(&app, "/v1/chat/completions", &chat(extra), param).await;
    }
    // Labels, penalties, a bias and an effort are taken.
    let (s, _, b) = send(
        &app,
        post_json(
            "/v1/chat/completions",
            &chat(json!({
                "user": "u-1", "metadata": {"k": "v"}, "store": false, "service_tier": "auto",
                "frequency_penalty": 0.5, "presence_penalty": 0.5, "logit_bias": {"5": -100},
                "reasoning_effort": "none", "tool_choice": "none", "parallel_tool_calls": true
            })),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

#[tokio::test]
async fn a_last_assistant_message_is_continued() {
    let app = app();
    let base = chat(json!({"max_tokens": 4}));
    let (_, _, b) = send(&app, post_json("/v1/chat/completions", &base)).await;
    let (base_prompt, _) = prompt_usage(&b);
    let mut prefilled = base.clone();
    prefilled["messages"]
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "assistant", "content": "S"}));
    let (s, _, b) = send(&app, post_json("/v1/chat/completions", &prefilled)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (prompt, _) = prompt_usage(&b);
    // The reply goes on from "S" inside the same turn: the prompt grows by that one token,
    // not by a closed turn and a new one (role, end and start markers: 5 tokens at least).
    assert_eq!(prompt, base_prompt + 1);
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_refused_clearly() {
    let app = guarded(api(128, 4), local_cfg());
    let long = "tell me about the weather today ".repeat(100);
    let body = chat(json!({"messages": [{"role": "user", "content": long}]}));
    let (s, _, b) = send(&app, post_json("/v1/chat/completions", &body)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let e = error_of(&b);
    assert_eq!(e["code"], "context_length_exceeded");
    let m = e["message"].as_str().unwrap();
    assert!(
        m.starts_with("the prompt is too long")
            && m.contains("maximum context length is 128 tokens")
            && m.contains("--context"),
        "{m}"
    );
    // Streaming requests are refused the same way, before any event.
    let body = chat(json!({"messages": [{"role": "user", "content": long}], "stream": true}));
    let (s, _, _) = send(&app, post_json("/v1/chat/completions", &body)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn plain_and_streamed_completions_agree() {
    let app = app();
    let (s, h, b) = send(&app, post_json("/v1/chat/completions", &chat(json!({})))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v = json_of(&b);
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], MODEL_ID);
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap().to_string();
    let finish = choice["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || finish == "length", "{finish}");
    let u = &v["usage"];
    let (p, c) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 5 && (1..=12).contains(&c), "{u}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), p + c);
    if finish == "length" {
        assert_eq!(c, 12);
    }
    assert!(
        choice["message"].get("reasoning_content").is_none(),
        "thinking is off by default"
    );

    let body = chat(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let (s, h, b) = send(&app, post_json("/v1/chat/completions", &body)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let data = sse_data(&b);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{b}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| json_of(d)).collect();
    assert!(chunks.len() >= 3, "{b}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let id = chunks[0]["id"].clone();
    let mut streamed = String::new();
    let mut finish_seen = None;
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id, "one id for the whole stream");
        if let Some(choice) = c["choices"].get(0) {
            assert!(c["usage"].is_null(), "usage only in the last chunk");
            streamed.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if let Some(f) = choice["finish_reason"].as_str() {
                finish_seen = Some(f.to_string());
            }
        }
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"].as_u64(), Some(p));
    assert_eq!(finish_seen.as_deref(), Some(finish));
    assert_eq!(streamed, content, "greedy stream equals the plain reply");

    // Without include_usage there is no usage chunk.
    let (_, _, b) = send(
        &app,
        post_json("/v1/chat/completions", &chat(json!({"stream": true}))),
    )
    .await;
    let data = sse_data(&b);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(data.iter().all(|d| !d.contains("\"usage\"")), "{b}");
}

#[tokio::test]
async fn thinking_is_asked_with_chat_template_kwargs() {
    // The thinking system prompt is long in the synthetic model's small vocabulary.
    let app = guarded(api(2048, 4), local_cfg());
    let off = chat(json!({"max_tokens": 1}));
    let on = chat(json!({"max_tokens": 1, "chat_template_kwargs": {"enable_thinking": true}}));
    let (_, _, b_off) = send(&app, post_json("/v1/chat/completions", &off)).await;
    let (s, _, b_on) = send(&app, post_json("/v1/chat/completions", &on)).await;
    assert_eq!(s, StatusCode::OK, "{b_on}");
    let p_off = json_of(&b_off)["usage"]["prompt_tokens"].as_u64().unwrap();
    let p_on = json_of(&b_on)["usage"]["prompt_tokens"].as_u64().unwrap();
    // SmolLM3's template closes an empty <think></think> block when thinking is off.
    assert_ne!(p_off, p_on, "the flag reaches the chat template");
}

/// The prompt's usage figures: prompt tokens and how many of them came from the cache.
fn prompt_usage(body: &str) -> (u64, u64) {
    let u = &json_of(body)["usage"];
    (
        u["prompt_tokens"].as_u64().unwrap(),
        u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
    )
}

#[tokio::test]
async fn a_continued_conversation_reuses_its_cache() {
    let app = app();
    let first = chat(json!({"max_tokens": 6}));
    let (s, _, b) = send(&app, post_json("/v1/chat/completions", &first)).await;
    assert_eq!(s, StatusCode::OK);
    let reply = json_of(&b)["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let (p1, _) = prompt_usage(&b);
    let second = chat(json!({"max_tokens": 4, "messages": [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And then?"}
    ]}));
    let (s, _, b) = send(&app, post_json("/v1/chat/completions", &second)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (p2, cached) = prompt_usage(&b);
    assert!(p2 > p1);
    // The first prompt ends with the empty reasoning block of the turn it opened, which the
    // history leaves out, so the shared start is a little shorter than the first prompt.
    assert!(
        cached * 2 >= p1,
        "the second turn reused the first one's cache (prompt {p2}, cached {cached}, first prompt {p1})"
    );
}

#[tokio::test]
async fn identical_requests_get_identical_prompts_whatever_came_before() {
    let first = chat(json!({"max_tokens": 6}));
    // What the first exchange replies, so the continued request can quote it.
    let (_, _, b) = send(&app(), post_json("/v1/chat/completions", &first)).await;
    let reply = json_of(&b)["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let continued = chat(json!({"max_tokens": 8, "messages": [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And then?"}
    ]}));

    // The same request on a fresh server, after the exchange it continues, and again.
    let fresh = app();
    let (_, _, alone) = send(&fresh, post_json("/v1/chat/completions", &continued)).await;
    let warm = app();
    send(&warm, post_json("/v1/chat/completions", &first)).await;
    let (_, _, after) = send(&warm, post_json("/v1/chat/completions", &continued)).await;
    let (_, _, again) = send(&warm, post_json("/v1/chat/completions", &continued)).await;
    let answer = |b: &str| json_of(b)["choices"][0]["message"]["content"].clone();
    let (p_alone, c_alone) = prompt_usage(&alone);
    assert_eq!(c_alone, 0, "nothing was cached on the fresh server");
    for b in [&after, &again] {
        assert_eq!(prompt_usage(b).0, p_alone, "{b}");
        assert_eq!(
            answer(b),
            answer(&alone),
            "greedy replies to one prompt agree"
        );
    }
    assert!(prompt_usage(&again).1 > 0, "the repeat reused the cache");

    // The prompt is a function of the request alone: the engine renders the same ids.
    let api = api(512, 4);
    let body = continued.to_string();
    let a = smollm3_bot::shell::openai::parse_request(body.as_bytes(), 512).unwrap();
    let b = smollm3_bot::shell::openai::parse_request(body.as_bytes(), 512).unwrap();
    let ids = api.engine().prompt(&a.request).unwrap();
    assert_eq!(ids, api.engine().prompt(&b.request).unwrap());
    assert_eq!(ids.len() as u64, p_alone);
}

#[tokio::test]
async fn a_full_queue_answers_503_and_a_dropped_stream_frees_its_place() {
    let api = api(2048, 0);
    let app = guarded(api.clone(), local_cfg());
    let long = chat(json!({"stream": true, "max_tokens": 2000, "temperature": 1.0}));
    let resp = app
        .clone()
        .oneshot(post_json("/v1/chat/completions", &long))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The stream is held but not read: its job keeps the only place.
    let (s, h, b) = send(&app, post_json("/v1/chat/completions", &chat(json!({})))).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&b)["code"], "queue_full");
    let retry: u64 = h[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));

    // The client goes away: its job is cancelled and the place frees.
    drop(resp);
    let idle = |s: smollm3_bot::engine::worker::EngineStatus| !s.busy && s.queued == 0;
    let t0 = Instant::now();
    while !idle(api.engine().status()) && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(idle(api.engine().status()), "the engine went idle");
    let (s, _, b) = send(&app, post_json("/v1/chat/completions", &chat(json!({})))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

#[tokio::test]
async fn a_client_that_hangs_up_before_the_reply_cancels_its_job() {
    let api = api(2048, 4);
    let app = guarded(api.clone(), local_cfg());
    // Greedy decoding of 2000 tokens takes far longer than this test waits.
    let long = chat(json!({"max_tokens": 2000}));
    let call = tokio::spawn(
        app.clone()
            .oneshot(post_json("/v1/chat/completions", &long)),
    );
    let t0 = Instant::now();
    while !api.engine().status().busy && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(api.engine().status().busy, "the job started");
    call.abort();
    let t0 = Instant::now();
    while api.engine().status().busy && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !api.engine().status().busy,
        "the job stopped when its client left"
    );
    // The engine is free for the next request.
    let (s, _, b) = send(&app, post_json("/v1/chat/completions", &chat(json!({})))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

/// The server as `serve` composes it: the API and the browser UI (over an in-memory service on
/// the same engine) behind the guard.
fn with_ui(cfg: GuardConfig) -> (Router, smollm3_bot::app::ChatService) {
    let api = api(512, 4);
    let service = smollm3_bot::app::ChatService::in_memory();
    let ui = smollm3_bot::shell::serve::browser_ui(api.engine(), service.clone());
    (Guard::new(cfg).protect(app_router(api, Some(ui))), service)
}

#[tokio::test]
async fn cors_opens_the_api_and_never_the_browser_ui() {
    let cfg = GuardConfig {
        cors_origins: vec!["*".into()],
        ..local_cfg()
    };
    let (app, service) = with_ui(cfg);
    let evil = "https://evil.example";
    // The API is open to other sites, as configured.
    let mut req = post_json("/v1/chat/completions", &chat(json!({"max_tokens": 2})));
    req.headers_mut()
        .insert(header::ORIGIN, evil.parse().unwrap());
    let (s, h, b) = send(&app, req).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], evil);
    // The browser UI's settings are not: no preflight, and a cross-site form post is refused
    // and changes nothing.
    let req = Request::options("/settings")
        .header(header::HOST, HOST)
        .header(header::ORIGIN, evil)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .body(Body::empty())
        .unwrap();
    let (s, h, _) = send(&app, req).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    let req = Request::post("/settings")
        .header(header::HOST, HOST)
        .header(header::ORIGIN, evil)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("system_prompt=pwned&theme=dark"))
        .unwrap();
    let (s, h, b) = send(&app, req).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(error_of(&b)["code"], "cross_origin");
    assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    assert_eq!(service.settings().system_prompt, "");
    // A page's GET gets no CORS grant either, so another site cannot read it.
    let req = Request::get("/conversations")
        .header(header::HOST, HOST)
        .header(header::ORIGIN, evil)
        .body(Body::empty())
        .unwrap();
    let (_, h, _) = send(&app, req).await;
    assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}

#[tokio::test]
async fn two_host_headers_are_a_bad_request() {
    let app = app();
    let req = Request::get("/health")
        .header(header::HOST, HOST)
        .header(header::HOST, "evil.example:3000")
        .body(Body::empty())
        .unwrap();
    let (s, _, b) = send(&app, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&b)["code"], "bad_host");
}

fn lan_cfg(key: &str) -> GuardConfig {
    GuardConfig {
        lan: true,
        extra_hosts: vec!["mybox.local".into()],
        keys: KeyStore::new(Some(key.into())),
        ..local_cfg()
    }
}

fn login(key: &str, next: &str) -> Request<Body> {
    Request::post("/login")
        .header(header::HOST, "mybox.local:3000")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("key={key}&next={next}")))
        .unwrap()
}

#[tokio::test]
async fn login_never_redirects_off_site() {
    let key = "smol-Xy7Qp2LmN8vR4tK9wB3zC6dF1gH5jS0a";
    let app = guarded(api(512, 4), lan_cfg(key));
    for next in [
        "/%09/evil.example",
        "//evil.example",
        "/%5Cevil.example",
        "https%3A%2F%2Fevil.example",
        "/%0A/evil.example",
    ] {
        let req = Request::get(format!("/login?next={next}"))
            .header(header::HOST, "mybox.local:3000")
            .body(Body::empty())
            .unwrap();
        let (s, _, page) = send(&app, req).await;
        assert_eq!(s, StatusCode::OK);
        assert!(page.contains("name=\"next\" value=\"/\""), "{next}: {page}");
        let (s, h, _) = send(&app, login(key, next)).await;
        assert_eq!(s, StatusCode::SEE_OTHER, "{next}");
        assert_eq!(h[header::LOCATION], "/", "{next}");
    }
    let (_, h, _) = send(&app, login(key, "%2Fconversations%2F4")).await;
    assert_eq!(h[header::LOCATION], "/conversations/4");
}

#[tokio::test]
async fn the_sign_in_page_is_a_template_with_a_strict_policy() {
    let key = "smol-Xy7Qp2LmN8vR4tK9wB3zC6dF1gH5jS0a";
    // Two stand-in UI files, to see what the guard lets through.
    let ui = Router::new()
        .route("/app.css", axum::routing::get(|| async { ".login {}" }))
        .route("/app.js", axum::routing::get(|| async { "// glue" }));
    let app = Guard::new(lan_cfg(key)).protect(app_router(api(512, 4), Some(ui)));
    let get = |path: &str| {
        Request::get(path)
            .header(header::HOST, "mybox.local:3000")
            .body(Body::empty())
            .unwrap()
    };
    // A `next` that tries to close the attribute comes back escaped, once.
    let (s, h, page) = send(&app, get("/login?next=/x%22%3E%3Cb%3Ey%26")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("name=\"next\" value=\"/x&quot;&gt;&lt;b&gt;y&amp;\""),
        "{page}"
    );
    assert!(!page.contains("<b>"));
    assert!(
        !page.contains("<style") && !page.contains("style="),
        "no inline style"
    );
    let policy = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    for part in [
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(part), "{policy}");
    }
    // Its stylesheet is open to a visitor without the key; the rest of the UI is not.
    let (s, h, css) = send(&app, get("/app.css")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(css.contains(".login"));
    assert!(
        h.get(header::CONTENT_SECURITY_POLICY).is_none(),
        "only pages"
    );
    assert_eq!(send(&app, get("/app.js")).await.0, StatusCode::UNAUTHORIZED);
    // A wrong key shows the message, escaped by the same template.
    let (s, _, page) = send(&app, login("nope", "%2F")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(page.contains("That key is not right."), "{page}");
}

#[tokio::test]
async fn wrong_keys_are_rate_limited() {
    let key = "smol-Xy7Qp2LmN8vR4tK9wB3zC6dF1gH5jS0a";
    let app = guarded(api(512, 4), lan_cfg(key));
    let models = |k: &str| {
        Request::get("/v1/models")
            .header(header::HOST, "mybox.local:3000")
            .header(header::AUTHORIZATION, format!("Bearer {k}"))
            .body(Body::empty())
            .unwrap()
    };
    // A person mistyping a few times is fine.
    let (s, _, _) = send(&app, models(key)).await;
    assert_eq!(s, StatusCode::OK);
    for i in 0..10 {
        let (s, _, _) = if i % 2 == 0 {
            send(&app, models("guess")).await
        } else {
            send(&app, login("guess", "%2F")).await
        };
        assert_eq!(s, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // Then every attempt waits, the right key included, until attempts come back.
    let (s, h, b) = send(&app, models(key)).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    assert_eq!(error_of(&b)["code"], "too_many_attempts");
    let retry: u64 = h[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let (s, _, page) = send(&app, login(key, "%2F")).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(page.contains("Too many wrong keys"), "{page}");
}

#[tokio::test]
async fn tokenize_and_detokenize_round_trip_in_llama_cpp_shapes() {
    let app = app();
    let text = "Hello world, again";
    let (s, _, b) = send(&app, post_json("/tokenize", &json!({ "content": text }))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let ids = json_of(&b)["tokens"].clone();
    assert!(
        ids.as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_u64)),
        "{b}"
    );
    let (s, _, b) = send(&app, post_json("/detokenize", &json!({ "tokens": ids }))).await;
    assert_eq!(
        (s, json_of(&b)["content"].clone()),
        (StatusCode::OK, json!(text)),
        "{b}"
    );

    // Pieces add up to the text.
    let (_, _, b) = send(
        &app,
        post_json(
            "/tokenize",
            &json!({ "content": text, "with_pieces": true }),
        ),
    )
    .await;
    let pieces: String = json_of(&b)["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["piece"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(pieces, text);

    // A control token's text is that token, unless read as plain text.
    let count = |b: &str| json_of(b)["tokens"].as_array().unwrap().len();
    let (_, _, special) = send(
        &app,
        post_json("/tokenize", &json!({ "content": "<|im_start|>" })),
    )
    .await;
    let (_, _, plain) = send(
        &app,
        post_json(
            "/tokenize",
            &json!({ "content": "<|im_start|>", "parse_special": false }),
        ),
    )
    .await;
    assert_eq!(count(&special), 1, "{special}");
    assert!(count(&plain) > 1, "{plain}");

    // Bad input is a JSON 400; the routes are the API's, without `/v1` as llama.cpp has them.
    let (s, _, b) = send(
        &app,
        post_json("/detokenize", &json!({ "tokens": [4_000_000_000u32] })),
    )
    .await;
    assert_eq!(
        (s, error_of(&b)["param"].clone()),
        (StatusCode::BAD_REQUEST, json!("tokens"))
    );
    let (s, _, b) = send(&app, post_json("/tokenize", &json!({ "text": "x" }))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    error_of(&b);
    let (s, _, b) = send(&app, get("/tokenize")).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    error_of(&b);
}

#[test]
fn the_command_line_tokenizes_like_the_server() {
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_smollm3-bot"))
            .arg("tokenize")
            .arg("--model")
            .arg(model_path())
            .args(["--text", "Hi <|im_end|>"])
            .args(extra)
            .output()
            .expect("the binary runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_of(&String::from_utf8(out.stdout).unwrap())
    };
    let ids = run(&[]);
    let plain = run(&["--plain"]);
    assert!(ids.as_array().unwrap().len() < plain.as_array().unwrap().len());
    let pieces = run(&["--pieces"]);
    let joined: String = pieces
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["piece"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(joined, "Hi <|im_end|>");
}

#[tokio::test]
async fn logprobs_come_with_each_token_plain_and_streamed() {
    let app = app();
    let body = chat(json!({"logprobs": true, "top_logprobs": 3, "max_tokens": 6}));
    let (s, _, b) = send(&app, post_json("/v1/chat/completions", &body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = json_of(&b);
    let entries = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        entries.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap(),
        "one entry per generated token: {b}"
    );
    for e in &entries {
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0, "{e}");
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{e}");
        assert!(top
            .windows(2)
            .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
        // Greedy: the token taken is the likeliest.
        assert_eq!(top[0]["token"], e["token"], "{e}");
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6);
        assert_eq!(
            e["bytes"].as_array().unwrap().len(),
            e["token"].as_str().unwrap().len()
        );
    }

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (s, _, b) = send(&app, post_json("/v1/chat/completions", &streamed)).await;
    assert_eq!(s, StatusCode::OK);
    let tokens: Vec<Value> = sse_data(&b)
        .iter()
        .filter(|d| *d != "[DONE]")
        .flat_map(|d| {
            json_of(d)["choices"][0]["logprobs"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|e| e["token"].clone())
        .collect();
    let plain: Vec<Value> = entries.iter().map(|e| e["token"].clone()).collect();
    assert_eq!(tokens, plain, "the stream carries the same tokens");

    // Without asking, `logprobs` stays null.
    let (_, _, b) = send(&app, post_json("/v1/chat/completions", &chat(json!({})))).await;
    assert!(json_of(&b)["choices"][0]["logprobs"].is_null());
    for bad in [
        json!({"logprobs": true, "top_logprobs": 21}),
        json!({"top_logprobs": 2}),
    ] {
        let (s, _, b) = send(&app, post_json("/v1/chat/completions", &chat(bad.clone()))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_of(&b)["param"], "top_logprobs", "{bad}");
    }
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    }})
}

#[tokio::test]
async fn tools_are_shown_to_the_model_and_calls_and_results_read_back() {
    let api = api(2048, 4);
    let engine = api.engine().clone();
    let app = guarded(api, local_cfg());
    let conversation = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}
    ]);
    let body = chat(json!({"messages": conversation, "tools": [weather_tool()], "max_tokens": 8}));
    let (s, _, b) = send(&app, post_json("/v1/chat/completions", &body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = json_of(&b);
    // A random model makes no call: the reply is text, finished as usual.
    assert!(v["choices"][0]["message"]["content"].is_string(), "{b}");
    assert_ne!(v["choices"][0]["finish_reason"], "tool_calls");

    // What the model saw: the tool in the template's own words, its earlier call as it
    // would have written it, and the result as the next turn.
    let plan =
        smollm3_bot::shell::openai::parse_request(body.to_string().as_bytes(), 2048).unwrap();
    let ids = engine.prompt(&plan.request).unwrap();
    let prompt = engine.prompter().detokenize(&ids).unwrap();
    assert!(
        prompt.contains("<tools>\n{'name': 'get_weather', 'description': 'Weather in a city'"),
        "{prompt}"
    );
    assert!(prompt.contains("<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call>"), "{prompt}");
    assert!(
        prompt.contains("<|im_start|>user\n18 C and sunny<|im_end|>"),
        "{prompt}"
    );

    // tool_choice none hides the tools; a forced call must name a tool that is offered, and
    // is not combined with a JSON response format.
    let none = chat(json!({"tools": [weather_tool()], "tool_choice": "none"}));
    let plan =
        smollm3_bot::shell::openai::parse_request(none.to_string().as_bytes(), 2048).unwrap();
    let prompt = engine
        .prompter()
        .detokenize(&engine.prompt(&plan.request).unwrap())
        .unwrap();
    assert!(!prompt.contains("<tools>"), "{prompt}");
    for (extra, param) in [
        (
            json!({"tools": [weather_tool()], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
            "tool_choice",
        ),
        (
            json!({"tools": [weather_tool()], "tool_choice": {"type": "function"}}),
            "tool_choice",
        ),
        (
            json!({"tools": [weather_tool()], "tool_choice": "required", "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}}),
            "response_format",
        ),
        (json!({"tools": [{"type": "retrieval"}]}), "tools[0]"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}),
            "tools[0].function",
        ),
        (
            json!({"functions": [{"name": "f", "parameters": 3}]}),
            "functions[0]",
        ),
    ] {
        assert_refused(&app, "/v1/chat/completions", &chat(extra), param).await;
    }

    // Streamed with tools offered, the text arrives as content all the same.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (s, _, b) = send(&app, post_json("/v1/chat/completions", &streamed)).await;
    assert_eq!(s, StatusCode::OK);
    let text: String = sse_data(&b)
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| {
            json_of(d)["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        text,
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

#[tokio::test]
async fn text_completions_continue_a_raw_prompt() {
    let app = app();
    let prompt = "Once upon a time";
    let req = json!({"model": "smollm3", "prompt": prompt, "max_tokens": 5, "temperature": 0});
    let (s, _, b) = send(&app, post_json("/v1/completions", &req)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = json_of(&b);
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    let text = v["choices"][0]["text"].as_str().unwrap().to_owned();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert!(v["choices"][0]["logprobs"].is_null());
    // No template: the prompt is exactly its tokens.
    let (_, _, t) = send(&app, post_json("/tokenize", &json!({ "content": prompt }))).await;
    let ids = json_of(&t)["tokens"].clone();
    assert_eq!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        ids.as_array().unwrap().len()
    );

    // The same prompt as token ids, echoed, and without `/v1`.
    let mut by_ids = req.clone();
    by_ids["prompt"] = ids.clone();
    by_ids["echo"] = json!(true);
    let (s, _, b) = send(&app, post_json("/completions", &by_ids)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        json_of(&b)["choices"][0]["text"],
        json!(format!("{prompt}{text}"))
    );

    // Streamed: the same text in pieces, then the end.
    let mut streamed = req.clone();
    streamed["stream"] = json!(true);
    let (s, _, b) = send(&app, post_json("/v1/completions", &streamed)).await;
    assert_eq!(s, StatusCode::OK);
    let data = sse_data(&b);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let joined: String = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            json_of(d)["choices"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(joined, text);

    // Legacy logprobs: parallel lists, one entry per generated token.
    let mut with_lp = req.clone();
    with_lp["logprobs"] = json!(2);
    let (_, _, b) = send(&app, post_json("/v1/completions", &with_lp)).await;
    let v = json_of(&b);
    let lp = &v["choices"][0]["logprobs"];
    let n = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n, "{b}");
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n);
    assert!(lp["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m.as_object().unwrap().len() <= 2));
    assert_eq!(lp["text_offset"][0], 0);

    // Two choices, whole and streamed: the same texts under their indexes.
    let mut two = req.clone();
    two["n"] = json!(2);
    two["seed"] = json!(3);
    two["temperature"] = json!(1.0);
    let (s, _, b) = send(&app, post_json("/v1/completions", &two)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = json_of(&b);
    let texts: Vec<&str> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            assert_eq!(c["index"], i, "{b}");
            c["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(texts.len(), 2, "{b}");
    two["stream"] = json!(true);
    let (_, _, b) = send(&app, post_json("/v1/completions", &two)).await;
    let mut streamed = [String::new(), String::new()];
    for d in sse_data(&b).iter().filter(|d| *d != "[DONE]") {
        let c = &json_of(d)["choices"][0];
        streamed[c["index"].as_u64().unwrap() as usize].push_str(c["text"].as_str().unwrap());
    }
    assert_eq!(
        [streamed[0].as_str(), streamed[1].as_str()],
        [texts[0], texts[1]]
    );

    for (extra, param) in [
        (json!({"suffix": "end"}), "suffix"),
        (json!({"n": 5}), "n"),
        (json!({"prompt": []}), "prompt"),
        (json!({"prompt": [4_000_000_000u32]}), "prompt"),
        (json!({"prompt": ["a", "b"]}), "prompt"),
        (json!({"logprobs": 9}), "logprobs"),
        (json!({"modalities": ["text"]}), "modalities"),
    ] {
        let mut bad = req.clone();
        for (k, val) in extra.as_object().unwrap() {
            bad[k] = val.clone();
        }
        let (s, _, b) = send(&app, post_json("/v1/completions", &bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{extra}: {b}");
        assert_eq!(error_of(&b)["param"], param, "{extra}: {b}");
    }
}

#[tokio::test]
async fn n_choices_are_generated_in_turn_and_share_the_prompt() {
    let app = app();
    let body = chat(json!({"n": 3, "seed": 7, "temperature": 1.0, "max_tokens": 8}));
    let (s, _, b) = send(&app, post_json("/v1/chat/completions", &body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v = json_of(&b);
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{b}");
    let mut generated = 0;
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i, "{b}");
        assert!(c["finish_reason"].is_string(), "{b}");
        assert!(c["message"]["content"].is_string(), "{b}");
        // Choice i is the reply a one-choice request with seed 7 + i gets.
        let one = chat(json!({"seed": 7 + i, "temperature": 1.0, "max_tokens": 8}));
        let (_, _, b1) = send(&app, post_json("/v1/chat/completions", &one)).await;
        let alone = json_of(&b1);
        assert_eq!(
            c["message"], alone["choices"][0]["message"],
            "choice {i} differs from the same seed asked alone"
        );
        generated += alone["usage"]["completion_tokens"].as_u64().unwrap();
    }
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"].as_u64(), Some(generated), "{u}");
    let p = u["prompt_tokens"].as_u64().unwrap();
    assert_eq!(u["total_tokens"].as_u64(), Some(p + generated), "{u}");

    // Streamed: each choice's chunks carry its index, each ends with its finish reason, one
    // usage chunk and one [DONE] end the stream, and the text is the plain reply's.
    let body = chat(
        json!({"n": 2, "seed": 7, "temperature": 1.0, "max_tokens": 8,
        "stream": true, "stream_options": {"include_usage": true}}),
    );
    let (s, _, b) = send(&app, post_json("/v1/chat/completions", &body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let data = sse_data(&b);
    assert_eq!(data.iter().filter(|d| *d == "[DONE]").count(), 1, "{b}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| json_of(d)).collect();
    let mut texts = [String::new(), String::new()];
    let mut finished = [0, 0];
    let mut last_index = 0;
    for c in &chunks[..chunks.len() - 1] {
        let choice = &c["choices"][0];
        let i = choice["index"].as_u64().unwrap() as usize;
        assert!(i >= last_index, "choices stream in turn: {b}");
        last_index = i;
        texts[i].push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        finished[i] += usize::from(choice["finish_reason"].is_string());
    }
    assert_eq!(finished, [1, 1], "{b}");
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(
            Some(text.as_str()),
            choices[i]["message"]["content"].as_str()
        );
    }
    let usage = &chunks.last().unwrap()["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() >= 2, "{usage}");

    for n in [0, 5] {
        assert_refused(&app, "/v1/chat/completions", &chat(json!({ "n": n })), "n").await;
    }
}
