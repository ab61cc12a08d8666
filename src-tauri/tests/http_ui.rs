//! The chat UI's router, driven in-process with `oneshot`: pages, fragments, actions, the
//! reply stream, escaping, and human error messages.

mod support;
use support::router::{assistant_id, call_with_headers as call, enc, wait_done};

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use smollm3_bot::app::ChatService;
use smollm3_bot::shell::http::{router, stream_payload};
use tower::ServiceExt;

fn app() -> (ChatService, Router) {
    let service = ChatService::in_memory().with_quote_delay(Duration::from_millis(2));
    (service.clone(), router(service))
}

async fn new_conversation(app: &Router) -> i64 {
    let (status, _, body) = call(app, "POST", "/conversations", None).await;
    assert_eq!(status, StatusCode::OK);
    let start = body
        .find("data-conversation-id=\"")
        .expect("conversation id")
        + 22;
    body[start..]
        .split('"')
        .next()
        .expect("id")
        .parse()
        .expect("numeric")
}

#[tokio::test]
async fn full_page_shows_the_empty_state_and_loads_only_local_scripts() {
    let (service, app) = app();
    // Without a model the page opens on the first-run wizard; skipping it shows the chat.
    service.wizard().dismiss();
    let (status, headers, body) = call(&app, "GET", "/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    // The browser gets the desktop window's own page, which asks for the layout.
    assert_eq!(body, include_str!("../../ui/index.html"));
    assert!(body.contains("hx-get=\"/layout\""));
    // Every script is a file from this origin: no inline code, nothing remote.
    let mut scripts = Vec::new();
    for part in body.split("<script").skip(1) {
        let src = part
            .strip_prefix(" src=\"")
            .and_then(|p| p.split('"').next())
            .unwrap_or_else(|| panic!("unexpected script: {part:.60}"));
        assert!(!src.contains(':') && !src.starts_with("//"), "{src}");
        assert!(part.contains("></script>"));
        scripts.push(format!("/{src}"));
    }
    assert_eq!(scripts, ["/app.js", "/vendor/htmx.min.js"]);
    for asset in scripts.iter().map(String::as_str).chain(["/app.css"]) {
        let (status, _, body) = call(&app, "GET", asset, None).await;
        assert_eq!(status, StatusCode::OK, "{asset}");
        assert!(!body.is_empty());
    }
    let (status, _, layout) = call(&app, "GET", "/layout", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(layout.contains("Start a conversation"));
    assert!(layout.contains("No conversations yet"));
}

#[tokio::test]
async fn quote_streams_into_the_store_and_renders_escaped() {
    let (_, app) = app();
    let text = "/quote hello <script>alert(1)</script> <img src=x onerror=alert(2)> done";
    let (status, headers, body) = call(
        &app,
        "POST",
        "/messages",
        Some(&format!("text={}", enc(text))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // A new conversation replaces the whole chat pane.
    assert_eq!(headers["hx-retarget"], "#chat");
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "user text escaped"
    );
    assert!(!body.contains("<script>alert"));
    assert!(!body.contains("<img src=x"));
    let id = assistant_id(&body);
    let done = wait_done(&app, id).await;
    assert!(
        done.contains(
            "hello &lt;script&gt;alert(1)&lt;/script&gt; &lt;img src=x onerror=alert(2)&gt; done"
        ),
        "{done}"
    );
    assert!(!done.contains("<script") && !done.contains("<img"));
    assert!(done.contains("tokens"), "stats under the reply: {done}");
    assert!(done.contains("Regenerate"));
}

#[tokio::test]
async fn stream_events_carry_deltas_then_the_final_html() {
    let (service, app) = app();
    let mut rx = service.subscribe();
    let (_, _, body) = call(
        &app,
        "POST",
        "/messages",
        Some("text=%2Fquote+one+two+three"),
    )
    .await;
    let id = assistant_id(&body);
    let mut text = String::new();
    let mut last_seq = 0;
    let mut final_html = None;
    for _ in 0..100 {
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("event in time")
            .expect("open");
        assert_eq!(ev.message_id, id);
        assert!(ev.seq > last_seq, "sequence numbers grow");
        last_seq = ev.seq;
        let p = stream_payload(&service, &ev);
        match p["type"].as_str().unwrap() {
            "answer" => text.push_str(p["text"].as_str().unwrap()),
            "done" => {
                final_html = Some(p["html"].as_str().unwrap().to_string());
                break;
            }
            "started" => {}
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(text, "one two three");
    let html = final_html.expect("a done event");
    assert!(html.contains(&format!("id=\"msg-{id}\"")));
    assert!(!html.contains("streaming"));
}

#[tokio::test]
async fn stop_cuts_a_reply_short() {
    let service = ChatService::in_memory().with_quote_delay(Duration::from_millis(30));
    let app = router(service);
    let c = new_conversation(&app).await;
    let long = "word ".repeat(200);
    let (_, _, body) = call(
        &app,
        "POST",
        &format!("/conversations/{c}/messages"),
        Some(&format!("text={}", enc(&format!("/quote {long}")))),
    )
    .await;
    let id = assistant_id(&body);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, _) = call(&app, "POST", &format!("/conversations/{c}/stop"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let done = wait_done(&app, id).await;
    assert!(done.contains("stopped"), "{done}");
    let words = done.matches("word").count();
    assert!(words > 0 && words < 200, "partial text kept: {words} words");
}

#[tokio::test]
async fn a_second_message_while_streaming_is_refused_with_a_reason() {
    let service = ChatService::in_memory().with_quote_delay(Duration::from_millis(50));
    let app = router(service);
    let c = new_conversation(&app).await;
    call(
        &app,
        "POST",
        &format!("/conversations/{c}/messages"),
        Some("text=%2Fquote"),
    )
    .await;
    let (status, headers, body) = call(
        &app,
        "POST",
        &format!("/conversations/{c}/messages"),
        Some("text=hi"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(headers["hx-retarget"], "#toast");
    assert!(body.contains("still being written"));
    call(&app, "POST", &format!("/conversations/{c}/stop"), None).await;
}

#[tokio::test]
async fn without_a_model_a_message_fails_with_a_human_error() {
    let (_, app) = app();
    let c = new_conversation(&app).await;
    let (_, _, body) = call(
        &app,
        "POST",
        &format!("/conversations/{c}/messages"),
        Some("text=Hello+there"),
    )
    .await;
    let done = wait_done(&app, assistant_id(&body)).await;
    assert!(done.contains("role=\"alert\""));
    assert!(done.contains("No model is loaded"));
}

#[tokio::test]
async fn sidebar_rename_delete_undo_and_search() {
    let (_, app) = app();
    let a = new_conversation(&app).await;
    let b = new_conversation(&app).await;
    let (_, _, list) = call(
        &app,
        "POST",
        &format!("/conversations/{a}/rename"),
        Some("title=Rust+%3Cquestions%3E"),
    )
    .await;
    assert!(list.contains("Rust &lt;questions&gt;"));
    assert!(
        list.contains(&format!("id=\"chat-title-{a}\"")),
        "title swaps into an open pane"
    );
    let (status, headers, _) = call(
        &app,
        "POST",
        &format!("/conversations/{a}/rename"),
        Some("title=+++"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(headers["hx-retarget"], "#toast");

    let (_, _, found) = call(&app, "GET", "/conversations?q=rust", None).await;
    assert!(found.contains(&format!("conv-{a}\"")) && !found.contains(&format!("conv-{b}\"")));
    let (_, _, none) = call(&app, "GET", "/conversations?q=zebra", None).await;
    assert!(none.contains("Nothing matches"));

    let (_, _, after_delete) =
        call(&app, "POST", &format!("/conversations/{a}/delete"), None).await;
    assert!(!after_delete.contains(&format!("conv-{a}\"")));
    assert!(
        after_delete.contains(&format!("/conversations/{a}/undo")),
        "undo offered"
    );
    let (status, _, _) = call(&app, "GET", &format!("/conversations/{a}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, restored) = call(&app, "POST", &format!("/conversations/{a}/undo"), None).await;
    assert!(restored.contains(&format!("conv-{a}\"")));
}

#[tokio::test]
async fn slash_commands_toggle_reasoning_and_explain_mistakes() {
    let (service, app) = app();
    let c = new_conversation(&app).await;
    let (_, headers, body) = call(
        &app,
        "POST",
        &format!("/conversations/{c}/messages"),
        Some("text=%2Fthink"),
    )
    .await;
    assert_eq!(headers["hx-retarget"], "#messages");
    assert!(body.contains("Reasoning is on"));
    assert!(body.contains("name=\"enabled\" checked"));
    assert!(service.conversation(c).unwrap().conversation.thinking);

    // With reasoning on, /quote streams reasoning first; the finished reply keeps it collapsed.
    let (_, _, body) = call(
        &app,
        "POST",
        &format!("/conversations/{c}/messages"),
        Some("text=%2Fquote"),
    )
    .await;
    let done = wait_done(&app, assistant_id(&body)).await;
    assert!(
        done.contains("<details class=\"reasoning\"><summary>Reasoning</summary>"),
        "{done}"
    );

    let (_, _, body) = call(
        &app,
        "POST",
        &format!("/conversations/{c}/thinking"),
        Some(""),
    )
    .await;
    assert!(!body.contains("checked"));

    let (_, _, help) = call(
        &app,
        "POST",
        &format!("/conversations/{c}/messages"),
        Some("text=%2Fhelp"),
    )
    .await;
    assert!(help.contains("/no_think") && help.contains("/quote"));
    assert!(
        help.contains("Ctrl+Shift+O") && help.contains("Ctrl+K") && help.contains("regenerate"),
        "the keyboard shortcuts are listed: {help}"
    );
    let (status, _, bad) = call(
        &app,
        "POST",
        &format!("/conversations/{c}/messages"),
        Some("text=%2Fthnik"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.contains("Unknown command /thnik") && bad.contains("/help"));

    // /clear starts over in a fresh conversation; the old one stays listed.
    let (_, headers, cleared) = call(
        &app,
        "POST",
        &format!("/conversations/{c}/messages"),
        Some("text=%2Fclear"),
    )
    .await;
    assert_eq!(headers["hx-retarget"], "#chat");
    assert!(cleared.contains("Cleared: this is a new conversation"));
    assert!(
        !cleared.contains("class=\"msg "),
        "the new pane has no messages"
    );
    assert!(
        service.conversation(c).is_ok(),
        "the old conversation is kept"
    );
    assert_eq!(service.conversations(None).unwrap().len(), 2);
}

#[tokio::test]
async fn streaming_markdown_renders_sanitized() {
    let (_, app) = app();
    let (status, _, html) = call(
        &app,
        "POST",
        "/render",
        Some("text=**bold**+%3Cscript%3Ealert(1)%3C%2Fscript%3E%0A%0A%60%60%60rust%0Alet+x+%3D+1%3B%0A"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("<strong>bold</strong>"), "{html}");
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("class=\"code-block\""),
        "unterminated fence still a code block: {html}"
    );
}

#[tokio::test]
async fn regenerate_and_edit_keep_the_old_branch() {
    let (_, app) = app();
    let c = new_conversation(&app).await;
    let (_, _, body) = call(
        &app,
        "POST",
        &format!("/conversations/{c}/messages"),
        Some("text=%2Fquote+first"),
    )
    .await;
    let first = assistant_id(&body);
    wait_done(&app, first).await;

    let (_, _, body) = call(&app, "POST", &format!("/messages/{first}/regenerate"), None).await;
    let second = assistant_id(&body);
    assert_ne!(first, second);
    wait_done(&app, second).await;
    let (_, _, view) = call(&app, "GET", &format!("/conversations/{c}"), None).await;
    assert!(view.contains("2/2"), "branch switcher shown");
    let (_, _, back) = call(&app, "POST", &format!("/messages/{first}/select"), None).await;
    assert!(back.contains(&format!("id=\"msg-{first}\"")) && back.contains("1/2"));

    let user_id: i64 = {
        let at = view.find("class=\"msg user\" id=\"msg-").unwrap() + 25;
        view[at..].split('"').next().unwrap().parse().unwrap()
    };
    let (_, _, form) = call(&app, "GET", &format!("/messages/{user_id}/edit"), None).await;
    assert!(form.contains("/quote first"));
    let (_, _, edited) = call(
        &app,
        "POST",
        &format!("/messages/{user_id}/edit"),
        Some("text=%2Fquote+second"),
    )
    .await;
    assert!(
        edited.contains("/quote second") && !edited.contains("plain\">/quote first"),
        "{edited}"
    );
    assert!(edited.contains("2/2"), "edited message has a sibling");
    wait_done(&app, assistant_id(&edited)).await;
}

#[tokio::test]
async fn settings_validate_and_save() {
    let (service, app) = app();
    let (_, _, panel) = call(&app, "GET", "/settings", None).await;
    for field in [
        "system_prompt",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repeat_penalty",
        "max_tokens",
        "context_size",
        "threads",
        "thinking_default",
        "thinking_budget",
        "theme",
    ] {
        assert!(
            panel.contains(&format!("name=\"{field}\"")),
            "{field} in the panel"
        );
    }
    let (status, _, bad) = call(
        &app,
        "POST",
        "/settings",
        Some("temperature=9&top_k=abc&theme=dark"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.contains("“abc” is not a number"));
    assert_eq!(
        service.settings().theme,
        smollm3_bot::store::Theme::System,
        "nothing saved"
    );
    let (status, _, bad) = call(&app, "POST", "/settings", Some("temperature=9&theme=dark")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.contains("must be between 0 and 2"));

    let form = "system_prompt=Be+brief.&temperature=0.2&top_k=40&theme=dark&thinking_default=on";
    let (status, _, ok) = call(&app, "POST", "/settings", Some(form)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ok.contains("Settings saved"));
    assert!(ok.contains("data-theme=\"dark\""));
    let s = service.settings();
    assert_eq!(s.system_prompt, "Be brief.");
    assert_eq!(s.sampling.top_k, 40);
    assert!(s.thinking_default);
    // New conversations take the reasoning default.
    let c = new_conversation(&app).await;
    assert!(service.conversation(c).unwrap().conversation.thinking);
}

#[tokio::test]
async fn status_bar_reports_engine_and_context() {
    let (_, app) = app();
    let (_, _, bar) = call(&app, "GET", "/status", None).await;
    assert!(bar.contains("No model") && bar.contains("Context 0 / 8192") && bar.contains("Idle"));
    assert!(bar.contains("hx-trigger=\"every 2s\""));
}

#[tokio::test]
async fn sse_stream_sends_reply_events() {
    let (_, app) = app();
    let resp = app
        .clone()
        .oneshot(Request::get("/events").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    call(&app, "POST", "/messages", Some("text=%2Fquote+hi")).await;
    let mut seen = String::new();
    for _ in 0..50 {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("frame in time");
        let Some(Ok(frame)) = frame else { break };
        if let Some(data) = frame.data_ref() {
            seen.push_str(&String::from_utf8_lossy(data));
        }
        if seen.contains("\"type\":\"done\"") {
            break;
        }
    }
    assert!(seen.contains("event: chat-stream"));
    assert!(seen.contains("\"type\":\"answer\""));
    assert!(seen.contains("\"type\":\"done\""));
}

#[tokio::test]
async fn unknown_things_get_a_human_404() {
    let (_, app) = app();
    let (status, _, body) = call(&app, "GET", "/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("nothing at this address"));
    let (status, _, body) = call(&app, "GET", "/conversations/999", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no longer exists"));
}

#[tokio::test]
async fn deleting_the_open_conversation_clears_the_pane() {
    let (_, app) = app();
    let open = new_conversation(&app).await;
    let other = new_conversation(&app).await;
    let delete = |id: i64| {
        Request::post(format!("/conversations/{id}/delete"))
            .header("x-open-conversation", open.to_string())
            .body(Body::empty())
            .unwrap()
    };
    let resp = app.clone().oneshot(delete(other)).await.unwrap();
    let body = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        !body.contains("<main id=\"chat\""),
        "another conversation's pane stays"
    );
    let resp = app.clone().oneshot(delete(open)).await.unwrap();
    let body = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(body.contains("<main id=\"chat\" class=\"chat-slot\" hx-swap-oob=\"true\">"));
    assert!(body.contains("Start a conversation"));
}

#[tokio::test]
async fn a_conversation_exports_as_files_and_imports_back() {
    let (service, app) = app();
    let text = "/quote look <script>alert(1)</script> here";
    let (_, _, body) = call(
        &app,
        "POST",
        "/messages",
        Some(&format!("text={}", enc(text))),
    )
    .await;
    wait_done(&app, assistant_id(&body)).await;
    let id = service.conversations(None).unwrap()[0].id.0;

    let (status, headers, md) =
        call(&app, "GET", &format!("/conversations/{id}/export/md"), None).await;
    assert_eq!(status, StatusCode::OK, "{md}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/markdown"));
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\""),
        "{disposition}"
    );
    assert!(
        md.contains("## User") && md.contains("## Assistant"),
        "{md}"
    );
    assert!(
        md.contains("look &lt;script>alert(1)&lt;/script> here"),
        "{md}"
    );
    assert!(!md.contains("<script"), "HTML in a reply stays text: {md}");

    let (status, _, json) = call(
        &app,
        "GET",
        &format!("/conversations/{id}/export/json"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, list) = call(
        &app,
        "POST",
        "/conversations/import",
        Some(&format!("text={}", enc(&json))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert!(list.contains("Imported 1 conversation."), "{list}");
    assert_eq!(list.matches("data-conversation-id=").count(), 2, "{list}");
    let copy = service.conversations(None).unwrap()[0].id.0;
    assert_ne!(copy, id);
    let (_, _, md2) = call(
        &app,
        "GET",
        &format!("/conversations/{copy}/export/md"),
        None,
    )
    .await;
    assert_eq!(md2, md, "the copy reads as the original");

    let (status, _, refused) = call(
        &app,
        "POST",
        "/conversations/import",
        Some(&format!("text={}", enc("{\"format\": \"other\"}"))),
    )
    .await;
    assert!(status.is_client_error(), "{status}: {refused}");
    assert!(refused.contains("Nothing was imported"), "{refused}");
    assert_eq!(service.conversations(None).unwrap().len(), 2);
    let (status, _, _) = call(
        &app,
        "GET",
        &format!("/conversations/{id}/export/exe"),
        None,
    )
    .await;
    assert!(status.is_client_error());
    let (status, _, _) = call(&app, "GET", "/conversations/999/export/md", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // All of them at once: both conversations in one file.
    let (status, headers, all) = call(&app, "GET", "/conversations/export/json", None).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert!(headers["content-disposition"]
        .to_str()
        .unwrap()
        .contains("conversations.json"));
    let v: serde_json::Value = serde_json::from_str(&all).unwrap();
    assert_eq!(v["conversations"].as_array().unwrap().len(), 2);
    let (_, _, lines) = call(&app, "GET", "/conversations/export/jsonl", None).await;
    assert_eq!(lines.lines().count(), 2, "{lines}");
}

/// Records the requests it is given and answers each with an empty reply at once.
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<smollm3_bot::engine::GenerateRequest>>>);

impl smollm3_bot::engine::Generator for Capture {
    fn submit(&self, req: smollm3_bot::engine::GenerateRequest) -> smollm3_bot::engine::JobHandle {
        use smollm3_bot::engine::{CancelToken, EngineEvent, GenerationStats, JobHandle};
        self.0.lock().unwrap().push(req);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = tx.send(EngineEvent::Done {
            stats: GenerationStats::default(),
            token_ids: Vec::new(),
        });
        JobHandle {
            id: 0,
            events: rx,
            cancel: CancelToken::new(),
        }
    }
}

#[tokio::test]
async fn a_conversation_has_its_own_system_prompt() {
    use smollm3_bot::app::service::EngineState;
    let (service, app) = app();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    service.set_generator(
        std::sync::Arc::new(Capture(seen.clone())),
        EngineState::Ready {
            model: "capture".into(),
        },
    );
    let mut settings = service.settings();
    settings.system_prompt = "Default for new chats.".into();
    service.update_settings(settings).unwrap();
    let c = new_conversation(&app).await;

    let (status, _, form) = call(&app, "GET", &format!("/conversations/{c}/system"), None).await;
    assert_eq!(status, StatusCode::OK);
    for preset in ["Concise", "Programmer", "Settings&#39; default"] {
        assert!(form.contains(preset), "{preset} offered: {form}");
    }
    assert!(
        form.contains(">Default for new chats.</textarea>"),
        "a new conversation starts with the settings' prompt: {form}"
    );

    let (status, _, saved) = call(
        &app,
        "POST",
        &format!("/conversations/{c}/system"),
        Some("system_prompt=Speak+like+a+%3Cb%3Epirate%3C%2Fb%3E."),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(saved.contains("Saved"), "{saved}");
    assert!(saved.contains("&lt;b&gt;pirate"), "escaped: {saved}");
    assert!(
        saved.contains("id=\"chat-head\" hx-swap-oob=\"true\"")
            && saved.contains("System prompt ✓"),
        "the head marks it: {saved}"
    );

    let (status, _, _) = call(
        &app,
        "POST",
        &format!("/conversations/{c}/messages"),
        Some("text=hello"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..200 {
        if !seen.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = seen.lock().unwrap()[0].messages[0].clone();
    assert_eq!(
        (first.role.as_str(), first.content.as_str()),
        ("system", "Speak like a <b>pirate</b>.")
    );

    let long = "x".repeat(8001);
    let (status, _, refused) = call(
        &app,
        "POST",
        &format!("/conversations/{c}/system"),
        Some(&format!("system_prompt={long}")),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(refused.contains("at most 8000 characters"), "{refused}");
    assert_eq!(
        service.conversation(c).unwrap().conversation.system_prompt,
        "Speak like a <b>pirate</b>.",
        "a refused prompt changes nothing"
    );
    let (status, _, _) = call(&app, "GET", "/conversations/999999/system", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
