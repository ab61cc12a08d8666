//! Tool-calling conversations rendered with the bundled SmolLM3 template, compared byte for byte
//! with `transformers`' own renderer (`tests/fixtures/template_tools/cases.json`, made by
//! `make_cases.py` beside it: tools as `xml_tools`/`python_tools` written with Python's
//! `str(dict)`, quotes, escapes, non-ASCII and invisible characters, every kind of JSON value,
//! assistant turns with `<tool_call>` blocks and tool results, as our API hands them over).

use std::path::PathBuf;

use chrono::NaiveDate;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use smollm3_bot::engine::events::ChatMessage;
use smollm3_bot::text::chat_template::{ChatTemplate, RenderOptions, SMOLLM3_TEMPLATE};

#[derive(Deserialize)]
struct Fixture {
    template_sha256: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Vec<ChatMessage>,
    kwargs: serde_json::Map<String, serde_json::Value>,
    add_generation_prompt: bool,
    today: String,
    expected: String,
}

fn load() -> Fixture {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/template_tools/cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("cases.json parses")
}

/// Where two renderings part: the first differing line of each, with a line of context before,
/// written with Rust's escapes so invisible characters show.
fn diff(expected: &str, got: &str) -> String {
    let at = expected
        .char_indices()
        .zip(got.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or(expected.len().min(got.len()));
    let line_start = expected[..at].rfind('\n').map_or(0, |i| i + 1);
    let context_start = expected[..line_start.saturating_sub(1)]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line_no = expected[..line_start].matches('\n').count() + 1;
    let line_of = |s: &str| {
        let rest = s.get(line_start..).unwrap_or("");
        rest[..rest.find('\n').unwrap_or(rest.len())].to_owned()
    };
    format!(
        "first difference at byte {at} (line {line_no}, column {col}); lengths {} expected, {} got\n\
         context : {:?}\n\
         expected: {:?}\n\
         got     : {:?}",
        expected.len(),
        got.len(),
        &expected[context_start..line_start.saturating_sub(1).max(context_start)],
        line_of(expected),
        line_of(got),
        col = expected[line_start..at].chars().count() + 1,
    )
}

#[test]
fn fixture_was_made_from_the_bundled_template() {
    let fixture = load();
    let sha: String = Sha256::digest(SMOLLM3_TEMPLATE.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        fixture.template_sha256, sha,
        "the bundled template changed: rerun tests/fixtures/template_tools/make_cases.py"
    );
}

#[test]
fn tool_conversations_render_as_transformers_renders_them() {
    let fixture = load();
    assert!(fixture.cases.len() >= 8, "the fixture has its cases");
    let template = ChatTemplate::builtin();
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
            Ok(out) => failures.push(format!("{}: {}", case.name, diff(&case.expected, &out))),
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn diff_points_at_the_first_difference() {
    let d = diff("a\nb\nc'd\n", "a\nb\nc\"d\n");
    assert!(d.contains("line 3, column 2"), "{d}");
    assert!(d.contains("context : \"b\""), "{d}");
    assert!(d.contains("expected: \"c'd\""), "{d}");
    assert!(d.contains("got     : \"c\\\"d\""), "{d}");
}
