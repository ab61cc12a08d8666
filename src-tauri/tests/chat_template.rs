//! Renders every case of the shared chat-template fixture and compares bytes with the
//! reference output (produced by `transformers`' `apply_chat_template`).

use std::path::PathBuf;

use chrono::NaiveDate;
use serde::Deserialize;
use smollm3_bot::engine::events::ChatMessage;
use smollm3_bot::text::chat_template::{ChatTemplate, RenderOptions};

#[derive(Deserialize)]
struct Fixture {
    template: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    kwargs: serde_json::Map<String, serde_json::Value>,
    #[serde(default = "yes")]
    add_generation_prompt: bool,
    today: String,
    expected: String,
}

fn yes() -> bool {
    true
}

fn fixtures_dir() -> PathBuf {
    match std::env::var_os("SMOLLM3_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"),
    }
}

fn load() -> (PathBuf, Fixture) {
    let dir = fixtures_dir().join("chat_template");
    let path = dir.join("cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let fixture = serde_json::from_str(&text).expect("cases.json parses");
    (dir, fixture)
}

fn check_all(template: &ChatTemplate, fixture: &Fixture) {
    assert_eq!(fixture.cases.len(), 10, "the fixture has ten cases");
    let mut failures = Vec::new();
    for case in &fixture.cases {
        let opts = RenderOptions {
            add_generation_prompt: case.add_generation_prompt,
            today: NaiveDate::parse_from_str(&case.today, "%Y-%m-%d")
                .unwrap_or_else(|e| panic!("{}: bad date {:?}: {e}", case.name, case.today)),
            extra: case.kwargs.clone(),
        };
        match template.render(&case.messages, &opts) {
            Ok(out) if out == case.expected => {}
            Ok(out) => failures.push(format!(
                "{}:\n--- expected\n{:?}\n--- got\n{:?}",
                case.name, case.expected, out
            )),
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn builtin_template_matches_reference_renderings() {
    let (_, fixture) = load();
    check_all(&ChatTemplate::builtin(), &fixture);
}

#[test]
fn fixture_template_file_matches_reference_renderings() {
    let (dir, fixture) = load();
    let source = std::fs::read_to_string(dir.join(&fixture.template)).expect("template readable");
    check_all(
        &ChatTemplate::new(&source).expect("template compiles"),
        &fixture,
    );
}

#[test]
fn cli_render_prints_exactly_the_prompt() {
    let (dir, fixture) = load();
    let case = fixture
        .cases
        .iter()
        .find(|c| !c.add_generation_prompt)
        .expect("a case without generation prompt");
    let tmp = tempfile::tempdir().unwrap();
    let messages = tmp.path().join("m.json");
    let kwargs = tmp.path().join("k.json");
    std::fs::write(&messages, serde_json::to_string(&case.messages).unwrap()).unwrap();
    let mut k = case.kwargs.clone();
    k.insert("add_generation_prompt".into(), false.into());
    std::fs::write(&kwargs, serde_json::Value::Object(k).to_string()).unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smollm3-bot"))
        .arg("render")
        .arg("--messages")
        .arg(&messages)
        .arg("--kwargs")
        .arg(&kwargs)
        .args(["--today", &case.today])
        .arg("--template")
        .arg(dir.join(&fixture.template))
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), case.expected);
}
