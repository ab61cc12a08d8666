//! `POST /v1/responses` (OpenAI's Responses API), driven in-process like `tests/api.rs`
//! against a tiny synthetic model with random weights: the shapes, the translation into the
//! chat pipeline (same prompt as the equivalent chat request), forced calls and JSON schemas
//! that always parse, the refusals, and the typed event stream.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use smollm3_bot::shell::guard::{Guard, GuardConfig};
use smollm3_bot::shell::openai::{parse_request, parse_responses_request, ApiState};
use smollm3_bot::shell::serve::app_router;
use std::time::{Duration, Instant};
use tower::ServiceExt;

mod api_support;
use api_support::{api, json_of, post_json, send, HOST, MODEL_ID, PORT};

fn router(api: ApiState) -> Router {
    Guard::new(GuardConfig {
        max_body_bytes: 64 * 1024,
        ..GuardConfig::local(PORT)
    })
    .protect(app_router(api, None))
}

fn app() -> Router {
    router(api(2048, 4))
}

/// A Responses request: `extra`'s fields over a short greedy one.
fn req(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL_ID,
        "input": "Hello there",
        "max_output_tokens": 8,
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Posts a Responses request and returns the 200 response object.
async fn respond(app: &Router, body: &Value) -> Value {
    let (s, h, b) = send(app, post_json("/v1/responses", body)).await;
    assert_eq!(s, StatusCode::OK, "{body}: {b}");
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    json_of(&b)
}

/// The SSE events of a body: (event name, data), each data's `type` the event's name.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut name = None;
    for line in body.lines() {
        if let Some(n) = line.strip_prefix("event:") {
            name = Some(n.trim().to_string());
        } else if let Some(d) = line.strip_prefix("data:") {
            let data = json_of(d.trim_start());
            let n = name.take().expect("every data line has its event line");
            assert_eq!(data["type"], n.as_str(), "{body}");
            out.push((n, data));
        }
    }
    out
}

fn weather_tool() -> Value {
    json!({"type": "function", "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
            "required": ["city"], "additionalProperties": false},
        "strict": true})
}

/// The response object's fields every reply has, checked.
fn check_response(v: &Value) {
    assert_eq!(v["object"], "response", "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("resp_"), "{v}");
    assert!(v["created_at"].is_i64(), "{v}");
    assert_eq!(v["model"], MODEL_ID);
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(v["store"], false);
    assert!(v["parallel_tool_calls"].is_boolean());
    assert!(v["tools"].is_array() && v["metadata"].is_object(), "{v}");
    let status = v["status"].as_str().unwrap();
    match status {
        "completed" => assert!(v["incomplete_details"].is_null(), "{v}"),
        "incomplete" => assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens"),
        other => panic!("status {other}: {v}"),
    }
    let u = &v["usage"];
    let (i, o) = (
        u["input_tokens"].as_u64().unwrap(),
        u["output_tokens"].as_u64().unwrap(),
    );
    assert!(i > 5, "{u}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), i + o, "{u}");
    assert!(u["input_tokens_details"]["cached_tokens"].is_u64(), "{u}");
    assert!(
        u["output_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            <= o,
        "{u}"
    );
    let mut text = String::new();
    for item in v["output"].as_array().unwrap() {
        match item["type"].as_str().unwrap() {
            "message" => {
                assert!(item["id"].as_str().unwrap().starts_with("msg_"), "{item}");
                assert_eq!(item["role"], "assistant");
                assert_eq!(item["status"], status);
                let part = &item["content"][0];
                assert_eq!(part["type"], "output_text", "{item}");
                assert_eq!(part["annotations"], json!([]));
                text.push_str(part["text"].as_str().unwrap());
            }
            "function_call" => {
                assert!(item["id"].as_str().unwrap().starts_with("fc_"), "{item}");
                assert!(item["call_id"].as_str().unwrap().starts_with("call_"));
                assert_eq!(item["status"], "completed");
                let args: Value =
                    serde_json::from_str(item["arguments"].as_str().unwrap()).unwrap();
                assert!(args.is_object(), "{item}");
            }
            "reasoning" => {
                assert!(item["id"].as_str().unwrap().starts_with("rs_"), "{item}");
                assert_eq!(item["summary"], json!([]));
                assert_eq!(item["content"][0]["type"], "reasoning_text");
            }
            other => panic!("item type {other}: {v}"),
        }
    }
    assert_eq!(v["output_text"], text.as_str(), "{v}");
}

#[tokio::test]
async fn a_text_reply_has_the_responses_shape() {
    let app = app();
    let v = respond(
        &app,
        &req(
            json!({"instructions": "Be brief.", "metadata": {"k": "v"}, "user": "u-1",
            "truncation": "disabled", "store": false, "top_p": 0.9}),
        ),
    )
    .await;
    check_response(&v);
    let output = v["output"].as_array().unwrap();
    assert_eq!(output.len(), 1, "one message: {v}");
    assert_eq!(output[0]["type"], "message");
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() <= 8);
    // The request's settings come back.
    assert_eq!(v["instructions"], "Be brief.");
    assert_eq!(v["metadata"], json!({"k": "v"}));
    assert_eq!(v["max_output_tokens"], 8);
    assert_eq!(
        (v["temperature"].as_f64(), v["top_p"].as_f64()),
        (Some(0.0), Some(0.9))
    );
    assert_eq!(v["tool_choice"], "auto");
    assert_eq!(v["text"]["format"]["type"], "text");
    assert_eq!(v["user"], "u-1");

    // Cut by the length limit: incomplete, with the reason (a JSON object cannot end in one
    // token).
    let v = respond(
        &app,
        &req(json!({"max_output_tokens": 1, "text": {"format": {"type": "json_object"}}})),
    )
    .await;
    check_response(&v);
    assert_eq!(v["status"], "incomplete", "{v}");
    assert_eq!(v["usage"]["output_tokens"], 1);

    // Without the /v1 prefix, the same route; an item list with typed parts reads the same as
    // the plain string.
    let (s, _, b) = send(
        &app,
        post_json(
            "/responses",
            &req(json!({"input": [{"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Hello "}, {"type": "input_text", "text": "there"}]}]})),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let items = json_of(&b);
    let plain = respond(&app, &req(json!({}))).await;
    assert_eq!(
        items["output_text"], plain["output_text"],
        "greedy: same prompt, same text"
    );
    assert_eq!(
        items["usage"]["input_tokens"],
        plain["usage"]["input_tokens"]
    );

    // GET is not the route's method.
    let (s, _, _) = send(
        &app,
        Request::get("/v1/responses")
            .header(header::HOST, HOST)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn items_become_the_same_prompt_as_the_chat_request() {
    let api = api(2048, 4);
    let engine = api.engine().clone();
    let app = router(api);
    let responses = req(json!({
        "instructions": "You answer about weather.",
        "input": [
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
                "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
                "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
            {"type": "function_call_output", "call_id": "call_1", "output": "18 C and sunny"},
            {"role": "developer", "content": "Answer in one line."},
            {"role": "user", "content": [{"type": "input_text", "text": "And tomorrow?"}]}
        ],
        "tools": [weather_tool()],
        "reasoning": {"effort": "low", "summary": "auto"},
        "max_output_tokens": 6
    }));
    let chat = json!({
        "model": MODEL_ID,
        "messages": [
            {"role": "system", "content": "You answer about weather."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [{"id": "call_1",
                "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"},
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": "And tomorrow?"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "description": "Weather in a city", "parameters": weather_tool()["parameters"]}}],
        "reasoning_effort": "low",
        "max_tokens": 6,
        "temperature": 0
    });
    let from_responses = parse_responses_request(responses.to_string().as_bytes(), 2048).unwrap();
    let from_chat = parse_request(chat.to_string().as_bytes(), 2048).unwrap();
    let ids = engine.prompt(&from_responses.request).unwrap();
    assert_eq!(ids, engine.prompt(&from_chat.request).unwrap());
    assert_eq!(
        from_responses.request.thinking_budget,
        from_chat.request.thinking_budget
    );
    assert!(from_responses.request.enable_thinking);
    let prompt = engine.prompter().detokenize(&ids).unwrap();
    assert!(prompt.contains("You answer about weather."), "{prompt}");
    assert!(prompt.contains("Let me look.\n<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call>"), "{prompt}");
    assert!(
        prompt.contains("<|im_start|>user\n18 C and sunny<|im_end|>"),
        "{prompt}"
    );

    // And over HTTP: the round trip is answered, reasoning first when there is any.
    let v = respond(&app, &responses).await;
    check_response(&v);
    assert_eq!(v["reasoning"]["effort"], "low");
    assert_eq!(v["tools"][0]["name"], "get_weather");
    assert_eq!(v["tools"][0]["type"], "function");
    let kinds: Vec<&str> = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.iter().rposition(|k| *k == "reasoning")
            <= kinds.iter().position(|k| *k != "reasoning"),
        "reasoning comes first: {kinds:?}"
    );
}

#[tokio::test]
async fn forced_calls_are_function_call_items_whose_arguments_parse() {
    let app = app();
    let time_tool = json!({"type": "function", "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["utc", "local"]}},
            "required": ["zone"], "additionalProperties": false}});
    for seed in 0..3 {
        let v = respond(
            &app,
            &req(
                json!({"tools": [weather_tool(), time_tool], "tool_choice": "required",
                "parallel_tool_calls": false, "max_output_tokens": 200, "seed": seed,
                "temperature": 1.0}),
            ),
        )
        .await;
        check_response(&v);
        assert_eq!(v["status"], "completed", "{v}");
        let calls: Vec<&Value> = v["output"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["type"] == "function_call")
            .collect();
        assert_eq!(calls.len(), 1, "{v}");
        assert!(
            v["output"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["type"] != "message"),
            "a call alone: {v}"
        );
        let args: Value = serde_json::from_str(calls[0]["arguments"].as_str().unwrap()).unwrap();
        match calls[0]["name"].as_str().unwrap() {
            "get_weather" => assert!(args["city"].as_str().unwrap().chars().count() <= 8),
            "get_time" => assert!(args["zone"] == "utc" || args["zone"] == "local"),
            other => panic!("called {other}"),
        }
        assert_eq!(v["tool_choice"], "required");
        assert_eq!(v["parallel_tool_calls"], false);
    }
    // A named function is the one called.
    let v = respond(
        &app,
        &req(json!({"tools": [weather_tool(), time_tool],
            "tool_choice": {"type": "function", "name": "get_time"}, "max_output_tokens": 200})),
    )
    .await;
    let call = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .cloned()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(call["name"], "get_time");
    assert_eq!(
        v["tool_choice"],
        json!({"type": "function", "name": "get_time"})
    );
}

#[tokio::test]
async fn a_json_schema_format_gives_valid_json() {
    let app = app();
    let format = json!({"type": "json_schema", "name": "answer", "strict": true, "schema": {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["ok", "n"], "additionalProperties": false}});
    for seed in 0..3 {
        let v = respond(
            &app,
            &req(
                json!({"text": {"format": format, "verbosity": "low"}, "max_output_tokens": 100,
                "seed": seed, "temperature": 1.0}),
            ),
        )
        .await;
        check_response(&v);
        assert_eq!(v["status"], "completed", "{v}");
        let parsed: Value = serde_json::from_str(v["output_text"].as_str().unwrap()).unwrap();
        assert!(parsed["ok"].is_boolean(), "{parsed}");
        assert!((0..=9).contains(&parsed["n"].as_i64().unwrap()), "{parsed}");
        assert_eq!(v["text"]["format"], format);
    }
}

#[tokio::test]
async fn what_cannot_be_served_is_refused_by_name() {
    let app = app();
    let image = json!([{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]);
    let tool = weather_tool();
    for (extra, param) in [
        (
            json!({"previous_response_id": "resp_123"}),
            "previous_response_id",
        ),
        (json!({"conversation": "conv_1"}), "conversation"),
        (json!({"store": true}), "store"),
        (json!({"background": true}), "background"),
        (json!({"modalities": ["text"]}), "modalities"),
        (json!({"prompt": {"id": "pmpt_1"}}), "prompt"),
        (json!({"tools": [{"type": "web_search"}]}), "tools[0].type"),
        (
            json!({"tools": [tool, {"type": "file_search", "vector_store_ids": []}]}),
            "tools[1].type",
        ),
        (json!({"input": image}), "input[0].content[0]"),
        (
            json!({"input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input[0].type",
        ),
        (
            json!({"input": [{"role": "user", "content": "x"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]}),
            "input[1].arguments",
        ),
        (
            json!({"input": [{"role": "robot", "content": "x"}]}),
            "input[0].role",
        ),
        (json!({"input": null}), "input"),
        (json!({"max_output_tokens": 0}), "max_output_tokens"),
        (json!({"temperature": 3}), "temperature"),
        (json!({"truncation": "auto"}), "truncation"),
        (json!({"include": ["file_search_call.results"]}), "include"),
        (json!({"max_tool_calls": 2}), "max_tool_calls"),
        (json!({"text": {"format": {"type": "xml"}}}), "text.format"),
        (
            json!({"text": {"format": {"type": "json_schema", "name": "x", "schema": 3}}}),
            "text.format",
        ),
        (
            json!({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object",
            "properties": {"a": {"type": "string", "format": "no-such-format"}}}}}}),
            "text.format",
        ),
        (json!({"text": {"color": "red"}}), "text.color"),
        (
            json!({"reasoning": {"effort": "extreme"}}),
            "reasoning.effort",
        ),
        (
            json!({"tools": [weather_tool()], "tool_choice": {"type": "function", "name": "get_time"}}),
            "tool_choice",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (
            json!({"tools": [weather_tool()], "tool_choice": "required",
            "text": {"format": {"type": "json_object"}}}),
            "text.format",
        ),
        (
            json!({"tools": [{"type": "function", "name": "bad name!"}]}),
            "tools[0]",
        ),
    ] {
        let body = req(extra);
        let (s, _, b) = send(&app, post_json("/v1/responses", &body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {b}");
        let e = &json_of(&b)["error"];
        assert_eq!(e["param"], param, "{body}: {b}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{b}");
        assert_eq!(e["type"], "invalid_request_error", "{b}");
    }
    // The messages name the Responses field, not the chat one it maps to.
    let (_, _, b) = send(
        &app,
        post_json("/v1/responses", &req(json!({"max_output_tokens": 0}))),
    )
    .await;
    let m = json_of(&b)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        m.contains("max_output_tokens") && !m.contains("max_tokens"),
        "{m}"
    );
    // An over-long input is the chat side's context error.
    let long = "tell me about the weather today ".repeat(400);
    let (s, _, b) = send(
        &app,
        post_json("/v1/responses", &req(json!({"input": long}))),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(json_of(&b)["error"]["code"], "context_length_exceeded");
    assert_eq!(json_of(&b)["error"]["param"], "input");
    // Labels and settings without effect are taken; explicit nulls are defaults.
    let v = respond(
        &app,
        &req(
            json!({"previous_response_id": null, "conversation": null, "background": false,
            "include": ["reasoning.encrypted_content"], "safety_identifier": "s",
            "prompt_cache_key": "k", "stream_options": null, "text": {"verbosity": "medium"},
            "reasoning": {"effort": "none"}, "service_tier": "auto", "tool_choice": "none",
            "tools": [weather_tool()], "max_tool_calls": null, "instructions": null}),
        ),
    )
    .await;
    check_response(&v);
}

#[tokio::test]
async fn the_stream_sends_typed_events_in_order() {
    let app = app();
    let plain = respond(
        &app,
        &req(json!({"include": ["message.output_text.logprobs"]})),
    )
    .await;
    let body = req(json!({"stream": true, "include": ["message.output_text.logprobs"]}));
    let (s, h, b) = send(&app, post_json("/v1/responses", &body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(&b);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    for (i, (_, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], i as u64, "{b}");
    }
    let last = *names.last().unwrap();
    assert!(
        last == "response.completed" || last == "response.incomplete",
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| n.starts_with("response.output_text.delta")).count() + 8,
        names.len(),
        "created, in_progress, item and part added, deltas, text done, part done, item done, end: {names:?}"
    );
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        names[names.len() - 4..names.len() - 1],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done"
        ]
    );
    let id = &events[0].1["response"]["id"];
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    let item_id = events[2].1["item"]["id"].clone();
    let mut text = String::new();
    let mut logprobs = 0;
    for (n, d) in &events {
        if n == "response.output_text.delta" {
            assert_eq!(d["item_id"], item_id);
            assert_eq!(
                (d["output_index"].as_u64(), d["content_index"].as_u64()),
                (Some(0), Some(0))
            );
            text.push_str(d["delta"].as_str().unwrap());
            logprobs += d["logprobs"].as_array().unwrap().len();
        }
    }
    let done = &events[events.len() - 4].1;
    assert_eq!(done["text"], text.as_str());
    let last = &events.last().unwrap().1["response"];
    assert_eq!(&last["id"], id, "one id for the whole stream");
    check_response(last);
    assert_eq!(last["output"][0]["id"], item_id);
    assert_eq!(last["output_text"], text.as_str());
    // Greedy: the stream says what the plain reply says, with a logprob per token.
    assert_eq!(plain["output_text"], text.as_str());
    assert_eq!(plain["status"], last["status"]);
    // One entry per token in the finished text (deltas carry those of the text they bring;
    // a last token without text, the end of turn, has its entry only there).
    let tokens = last["usage"]["output_tokens"].as_u64().unwrap() as usize;
    assert_eq!(done["logprobs"].as_array().unwrap().len(), tokens, "{b}");
    assert!(logprobs <= tokens && logprobs + 1 >= tokens, "{b}");
    assert_eq!(
        plain["output"][0]["content"][0]["logprobs"],
        done["logprobs"]
    );

    // A forced call streams as a function_call item with its arguments.
    let body = req(
        json!({"stream": true, "tools": [weather_tool()], "tool_choice": "required",
        "parallel_tool_calls": false, "max_output_tokens": 200}),
    );
    let (s, _, b) = send(&app, post_json("/v1/responses", &body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let events = sse_events(&b);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let at = names
        .iter()
        .position(|n| *n == "response.function_call_arguments.delta")
        .unwrap_or_else(|| panic!("{names:?} {b}"));
    assert_eq!(names[at - 1], "response.output_item.added");
    assert_eq!(names[at + 1], "response.function_call_arguments.done");
    assert_eq!(names[at + 2], "response.output_item.done");
    assert_eq!(*names.last().unwrap(), "response.completed");
    let arguments = events[at + 1].1["arguments"].as_str().unwrap();
    assert_eq!(events[at].1["delta"], arguments);
    let item = &events[at + 2].1["item"];
    assert_eq!(item["type"], "function_call");
    assert_eq!(item["arguments"], arguments);
    assert_eq!(item["id"], events[at - 1].1["item"]["id"]);
    let final_response = &events.last().unwrap().1["response"];
    check_response(final_response);
    assert_eq!(
        final_response["output"][events[at].1["output_index"].as_u64().unwrap() as usize],
        *item
    );

    // With reasoning on, any reasoning comes as its own item before the message.
    let body =
        req(json!({"stream": true, "reasoning": {"effort": "high"}, "max_output_tokens": 12}));
    let (s, _, b) = send(&app, post_json("/v1/responses", &body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let events = sse_events(&b);
    let reasoning: String = events
        .iter()
        .filter(|(n, _)| n == "response.reasoning_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_string())
        .collect();
    let last = &events.last().unwrap().1["response"];
    check_response(last);
    if !reasoning.is_empty() {
        assert_eq!(last["output"][0]["type"], "reasoning");
        assert_eq!(last["output"][0]["content"][0]["text"], reasoning.as_str());
        assert!(events
            .iter()
            .any(|(n, d)| n == "response.reasoning_text.done" && d["text"] == reasoning.as_str()));
    }
    assert!(
        last["usage"]["output_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
            || reasoning.is_empty()
    );
}

#[tokio::test]
async fn a_client_that_leaves_a_stream_cancels_its_job() {
    let api = api(2048, 4);
    let app = router(api.clone());
    let long = req(json!({"stream": true, "max_output_tokens": 2000}));
    let resp = app
        .clone()
        .oneshot(post_json("/v1/responses", &long))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let t0 = Instant::now();
    while !api.engine().status().busy && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(api.engine().status().busy, "the job started");
    drop(resp);
    let t0 = Instant::now();
    while api.engine().status().busy && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !api.engine().status().busy,
        "the job stopped when its client left"
    );
}
