//! The desktop bridge under Tauri's mock runtime: the `hx` command runs the router and returns
//! its response, and a streaming reply reaches the window as `chat-stream` events.
#![cfg(feature = "desktop")]

use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use smollm3_bot::app::ChatService;
use smollm3_bot::shell::desktop::{configure, install};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{get_ipc_response, mock_builder, MockRuntime, INVOKE_KEY};
use tauri::webview::InvokeRequest;
use tauri::{App, Listener, WebviewWindow, WebviewWindowBuilder};

fn setup() -> (App<MockRuntime>, WebviewWindow<MockRuntime>, ChatService) {
    let service = ChatService::in_memory().with_quote_delay(Duration::from_millis(5));
    // The app's real context, so its capabilities decide what the window may call.
    let app = configure(mock_builder())
        .build(tauri::generate_context!(test = true))
        .expect("app builds");
    install(app.handle(), service.clone(), None);
    let window = WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .expect("window");
    (app, window, service)
}

fn invoke(window: &WebviewWindow<MockRuntime>, cmd: &str, args: Value) -> Result<Value, Value> {
    let request = InvokeRequest {
        cmd: cmd.into(),
        callback: CallbackFn(0),
        error: CallbackFn(1),
        url: "tauri://localhost".parse().expect("url"),
        body: InvokeBody::Json(args),
        headers: Default::default(),
        invoke_key: INVOKE_KEY.to_string(),
    };
    get_ipc_response(window, request).map(|r| r.deserialize::<Value>().expect("json response"))
}

fn hx(
    window: &WebviewWindow<MockRuntime>,
    method: &str,
    url: &str,
    body: &str,
) -> Result<Value, Value> {
    invoke(
        window,
        "hx",
        json!({ "request": { "method": method, "url": url, "headers": {}, "body": body } }),
    )
}

#[test]
fn the_page_may_ask_for_a_file_dialog_but_not_call_the_dialog_plugin() {
    let (_app, window, _) = setup();
    // The app's own command is granted (and checks what it is asked for)…
    let err = invoke(&window, "pick_file", json!({ "kind": "passwords" }))
        .expect_err("an unknown kind of file");
    assert!(
        err.as_str().unwrap().contains("unknown kind of file"),
        "{err}"
    );
    let err = invoke(
        &window,
        "save_export",
        json!({ "conversation": 1, "format": "exe" }),
    )
    .expect_err("an unknown format");
    assert!(
        err.as_str().unwrap().contains("unknown export format"),
        "{err}"
    );
    // …the plugin's commands are not: the page cannot open or save files through them.
    for cmd in ["plugin:dialog|open", "plugin:dialog|save"] {
        let err = invoke(&window, cmd, json!({ "options": {} })).expect_err("not granted");
        assert!(
            err.as_str().unwrap().contains("not allowed"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn hx_round_trips_through_the_router() {
    let (_app, window, service) = setup();
    // Without a model the page opens on the first-run wizard; skipping it shows the chat.
    service.wizard().dismiss();
    let page = hx(&window, "GET", "/layout", "").expect("layout");
    assert_eq!(page["status"], 200);
    assert!(page["headers"]["content-type"]
        .as_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page["body"]
        .as_str()
        .unwrap()
        .contains("Start a conversation"));

    let created = hx(&window, "POST", "/conversations", "").expect("create");
    assert_eq!(created["status"], 200);
    assert_eq!(
        service.conversations(None).unwrap().len(),
        1,
        "the action reached the service"
    );

    let missing = hx(&window, "GET", "/conversations/424242", "").expect("a response");
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["headers"]["hx-retarget"], "#toast");

    let search = hx(&window, "GET", "/conversations?q=New", "").expect("search");
    assert!(search["body"].as_str().unwrap().contains("New chat"));
}

#[test]
fn the_endless_event_stream_is_refused_not_hung() {
    let (_app, window, _) = setup();
    let err = hx(&window, "GET", "/events", "").expect_err("refused");
    assert!(err.as_str().unwrap().contains("browsers only"));
}

#[test]
fn streaming_quote_emits_window_events() {
    let (app, window, _) = setup();
    let (tx, rx) = mpsc::channel::<Value>();
    app.listen_any("chat-stream", move |e| {
        let _ = tx.send(serde_json::from_str(e.payload()).expect("json payload"));
    });
    let sent = hx(&window, "POST", "/messages", "text=%2Fquote+alpha+beta").expect("send");
    assert_eq!(sent["status"], 200);
    let mut answer = String::new();
    let mut done = None;
    for _ in 0..100 {
        let p = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("an event in time");
        match p["type"].as_str().unwrap() {
            "answer" => answer.push_str(p["text"].as_str().unwrap()),
            "done" => {
                done = Some(p);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(answer, "alpha beta");
    let done = done.expect("done event");
    let id = done["message_id"].as_i64().unwrap();
    assert!(done["html"]
        .as_str()
        .unwrap()
        .contains(&format!("id=\"msg-{id}\"")));
    assert!(
        sent["body"]
            .as_str()
            .unwrap()
            .contains(&format!("id=\"msg-{id}\"")),
        "the event names the message the response rendered"
    );
}

#[test]
fn only_the_main_window_may_call_hx() {
    let (app, _main, _) = setup();
    let other = WebviewWindowBuilder::new(&app, "other", Default::default())
        .build()
        .expect("second window");
    let err = hx(&other, "GET", "/layout", "").expect_err("refused by the capability");
    assert!(err.as_str().unwrap().contains("not allowed"), "{err}");
}
