//! Tool calls in a reply, shown as blocks instead of raw tags.
//!
//! SmolLM3 calls a tool by writing `<tool_call>{"name": …, "arguments": {…}}</tool_call>`.
//! [`split`] cuts a reply into markdown text and calls; [`push_html`] writes a call as
//!
//! ```html
//! <div class="tool-call"><div class="tool-call-head">Tool call: <span class="tool-call-name">get_weather</span></div>
//! <pre><code>{
//!   "city": "Paris"
//! }</code></pre></div>
//! ```
//!
//! with the name and the pretty-printed arguments escaped (the markdown module sanitizes the
//! whole reply afterwards all the same).
//!
//! What counts as a call: a block outside fenced code whose JSON has a non-empty string `name`
//! and `arguments` that are an object, a JSON string holding one, or absent (the rules the API
//! uses to return `tool_calls`). Anything else between the tags stays in the text, tags and
//! all, where markdown shows it escaped. A block not closed yet whose text could still become a
//! call (empty so far, or starting with `{`) is a reply still streaming, or one cut off by the
//! token limit: it shows as a block marked "incomplete" holding the text so far, so a partial
//! render is never half a tag.

use serde_json::Value;

use super::templates::push_escaped;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// A part of a reply, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece<'a> {
    /// Markdown text (a malformed block included, as written).
    Text(&'a str),
    /// A well-formed call.
    Call {
        /// The function's name.
        name: String,
        /// Its arguments, a JSON object.
        arguments: Value,
    },
    /// A block not closed yet: the text after `<tool_call>`.
    Open(&'a str),
}

/// Cuts `reply` into text and tool calls (see the module documentation).
pub(crate) fn split(reply: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    if !reply.contains(OPEN) {
        pieces.push(Piece::Text(reply));
        return pieces;
    }
    let mut text_start = 0;
    let mut pos = 0;
    // Whether `pos` starts a line (only there can a code fence open or close).
    let mut line_start = true;
    let mut fence: Option<(u8, usize)> = None;
    while pos < reply.len() {
        let line_end = reply[pos..].find('\n').map_or(reply.len(), |i| pos + i + 1);
        let line = &reply[pos..line_end];
        if line_start {
            if let Some(open) = fence {
                if closes_fence(line, open) {
                    fence = None;
                }
                pos = line_end;
                continue;
            }
            if let Some(open) = opens_fence(line) {
                fence = Some(open);
                pos = line_end;
                continue;
            }
        }
        let Some(at) = line.find(OPEN) else {
            pos = line_end;
            line_start = true;
            continue;
        };
        let start = pos + at;
        let body_start = start + OPEN.len();
        match reply[body_start..].find(CLOSE) {
            Some(len) => {
                let end = body_start + len + CLOSE.len();
                if let Some((name, arguments)) = call_from(&reply[body_start..body_start + len]) {
                    push_text(&mut pieces, &reply[text_start..start]);
                    pieces.push(Piece::Call { name, arguments });
                    text_start = end;
                }
                pos = end;
                line_start = false;
            }
            None => {
                let body = &reply[body_start..];
                if body.trim_start().is_empty() || body.trim_start().starts_with('{') {
                    push_text(&mut pieces, &reply[text_start..start]);
                    pieces.push(Piece::Open(body));
                    text_start = reply.len();
                }
                break;
            }
        }
    }
    push_text(&mut pieces, &reply[text_start..]);
    pieces
}

fn push_text<'a>(pieces: &mut Vec<Piece<'a>>, text: &'a str) {
    if !text.trim().is_empty() {
        pieces.push(Piece::Text(text));
    }
}

/// The name and arguments of a block's JSON, when it is a well-formed call.
fn call_from(body: &str) -> Option<(String, Value)> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str().filter(|n| !n.is_empty())?;
    let arguments = match v.get("arguments") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object)?,
        Some(obj @ Value::Object(_)) => obj.clone(),
        Some(_) => return None,
    };
    Some((name.to_owned(), arguments))
}

/// A fence opening on this line (up to three spaces, then three or more backticks or tildes):
/// its character and length.
fn opens_fence(line: &str) -> Option<(u8, usize)> {
    let rest = strip_indent(line)?;
    let ch = *rest.as_bytes().first()?;
    if ch != b'`' && ch != b'~' {
        return None;
    }
    let len = rest.bytes().take_while(|&b| b == ch).count();
    // A backtick fence's info string cannot hold a backtick.
    let bad_info = ch == b'`' && rest[len..].contains('`');
    (len >= 3 && !bad_info).then_some((ch, len))
}

/// Whether `line` closes a fence opened with `open`: at least as many of its character, then
/// only spaces.
fn closes_fence(line: &str, (ch, len): (u8, usize)) -> bool {
    let Some(rest) = strip_indent(line) else {
        return false;
    };
    let run = rest.bytes().take_while(|&b| b == ch).count();
    run >= len && rest[run..].trim().is_empty()
}

/// The line without up to three leading spaces; `None` when indented more (code, not a fence).
fn strip_indent(line: &str) -> Option<&str> {
    let spaces = line.bytes().take_while(|&b| b == b' ').count();
    (spaces <= 3).then(|| &line[spaces..])
}

/// Appends the HTML of a [`Piece::Call`] or [`Piece::Open`]; text pieces are the caller's.
pub(crate) fn push_html(out: &mut String, piece: &Piece<'_>) {
    match piece {
        Piece::Text(_) => {}
        Piece::Call { name, arguments } => {
            out.push_str(r#"<div class="tool-call"><div class="tool-call-head">Tool call: <span class="tool-call-name">"#);
            push_escaped(out, name);
            out.push_str("</span></div><pre><code>");
            let pretty = serde_json::to_string_pretty(arguments).unwrap_or_default();
            push_escaped(out, &pretty);
            out.push_str("</code></pre></div>\n");
        }
        Piece::Open(body) => {
            out.push_str(r#"<div class="tool-call pending"><div class="tool-call-head">Tool call"#);
            if let Some(name) = partial_name(body) {
                out.push_str(r#": <span class="tool-call-name">"#);
                push_escaped(out, name);
                out.push_str("</span>");
            }
            out.push_str(r#" <span class="tool-call-state">(incomplete)</span></div><pre><code>"#);
            push_escaped(out, body.trim());
            out.push_str("</code></pre></div>\n");
        }
    }
}

/// The name in the JSON of a block still being written, once its string is closed (`"name":
/// "get_weather"`); a name with escapes is left out.
fn partial_name(body: &str) -> Option<&str> {
    let after = &body[body.find("\"name\"")? + "\"name\"".len()..];
    let value = after.trim_start().strip_prefix(':')?.trim_start();
    let value = value.strip_prefix('"')?;
    let end = value.find(['"', '\\'])?;
    (value.as_bytes()[end] == b'"' && end > 0).then(|| &value[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn html_of(piece: &Piece<'_>) -> String {
        let mut out = String::new();
        push_html(&mut out, piece);
        out
    }

    #[test]
    fn calls_are_cut_out_of_the_text_in_order() {
        let reply = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\nand <tool_call>{\"name\": \"now\", \"arguments\": \"{}\"}</tool_call> done";
        assert_eq!(
            split(reply),
            [
                Piece::Text("Let me check.\n"),
                Piece::Call {
                    name: "get_weather".into(),
                    arguments: json!({"city": "Paris"})
                },
                Piece::Text("\nand "),
                Piece::Call {
                    name: "now".into(),
                    arguments: json!({})
                },
                Piece::Text(" done"),
            ]
        );
    }

    #[test]
    fn malformed_blocks_stay_in_the_text() {
        for reply in [
            "a <tool_call>not json</tool_call> b",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"\"}</tool_call>",
            "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
            "<tool_call>{\"name\": \"f\", \"arguments\": \"[1]\"}</tool_call>",
            "I would use <tool_call> tags here, but",
        ] {
            assert_eq!(split(reply), [Piece::Text(reply)], "{reply}");
        }
        // A good call after a bad one is still a call.
        let pieces = split("<tool_call>oops</tool_call>\n<tool_call>{\"name\": \"f\"}</tool_call>");
        assert_eq!(pieces[0], Piece::Text("<tool_call>oops</tool_call>\n"));
        assert!(matches!(&pieces[1], Piece::Call { name, .. } if name == "f"));
    }

    #[test]
    fn tags_inside_fenced_code_are_code() {
        let reply = "Format:\n\n```xml\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\n```\n\n~~~~\n<tool_call>{\n~~~~\nafter <tool_call>{\"name\": \"g\"}</tool_call>";
        let pieces = split(reply);
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert!(matches!(&pieces[0], Piece::Text(t) if t.ends_with("after ")));
        assert!(matches!(&pieces[1], Piece::Call { name, .. } if name == "g"));
    }

    #[test]
    fn an_unclosed_block_is_open_while_it_can_still_be_a_call() {
        assert_eq!(
            split("Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"argu"),
            [
                Piece::Text("Sure.\n"),
                Piece::Open("\n{\"name\": \"get_weather\", \"argu")
            ]
        );
        assert_eq!(split("<tool_call>"), [Piece::Open("")]);
        let html = html_of(&Piece::Open("\n{\"name\": \"get_weather\", \"argu"));
        assert!(
            html.starts_with(r#"<div class="tool-call pending">"#),
            "{html}"
        );
        assert!(
            html.contains(r#"Tool call: <span class="tool-call-name">get_weather</span> <span class="tool-call-state">(incomplete)</span>"#),
            "{html}"
        );
        assert!(
            html.contains("<code>{&quot;name&quot;: &quot;get_weather&quot;, &quot;argu</code>"),
            "{html}"
        );
        let html = html_of(&Piece::Open("{\"name\": \"get_wea"));
        assert!(
            html.contains(">Tool call <span class=\"tool-call-state\">"),
            "{html}"
        );
    }

    #[test]
    fn a_call_is_a_block_with_escaped_name_and_pretty_arguments() {
        let html = html_of(&Piece::Call {
            name: "<img src=x onerror=alert(1)>".into(),
            arguments: json!({"city": "<b>Paris</b> & \"co\"", "days": [1, 2]}),
        });
        assert_eq!(
            html,
            "<div class=\"tool-call\"><div class=\"tool-call-head\">Tool call: <span class=\"tool-call-name\">\
             &lt;img src=x onerror=alert(1)&gt;</span></div><pre><code>{\n  &quot;city&quot;: \
             &quot;&lt;b&gt;Paris&lt;/b&gt; &amp; \\&quot;co\\&quot;&quot;,\n  &quot;days&quot;: [\n    1,\n    2\n  ]\n}\
             </code></pre></div>\n"
        );
    }

    #[test]
    fn partial_names() {
        assert_eq!(partial_name("{\"name\": \"f_1\","), Some("f_1"));
        assert_eq!(partial_name("{\"name\":\"f"), None);
        assert_eq!(partial_name("{\"name\": \"a\\\"b\"}"), None);
        assert_eq!(partial_name("{\"arguments\": {}"), None);
    }
}
