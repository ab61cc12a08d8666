//! Tool calls in SmolLM3's own format, read out of a reply: the model answers a call with
//! `<tool_call>{"name": …, "arguments": {…}}</tool_call>` (as its template's `xml_tools`
//! instructions ask), and OpenAI clients expect `tool_calls` objects instead of those tags.
//!
//! A reply whose blocks do not all parse as calls is returned as plain text, tags and all:
//! the model's mistake is shown to the client, never turned into an error.

use serde_json::{json, Value};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// A reply split into the text around its tool calls and the calls, in OpenAI's shape
/// (`{"id", "type": "function", "function": {"name", "arguments": "<json>"}}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// The text outside the calls, trimmed.
    pub content: String,
    /// The calls, in order.
    pub calls: Vec<Value>,
}

/// Reads the tool calls out of a whole reply. With no block, or any block that is not a
/// well-formed call (unclosed, not JSON, no name, arguments not an object), the reply is text.
pub fn split(reply: &str) -> Split {
    let as_text = || Split {
        content: reply.to_owned(),
        calls: Vec::new(),
    };
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = reply;
    while let Some(start) = rest.find(OPEN) {
        content.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else {
            return as_text();
        };
        match call_from(after[..end].trim()) {
            Some(call) => calls.push(call),
            None => return as_text(),
        }
        rest = &after[end + CLOSE.len()..];
    }
    if calls.is_empty() {
        return as_text();
    }
    content.push_str(rest);
    Split {
        content: content.trim().to_owned(),
        calls,
    }
}

/// One call from a block's JSON: `{"name": "f", "arguments": {...}}` (arguments may also be
/// a JSON string holding an object, as some fine-tunes write them).
fn call_from(block: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(block).ok()?;
    let name = v.get("name")?.as_str().filter(|n| !n.is_empty())?;
    let arguments = match v.get("arguments") {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object)?,
        Some(obj @ Value::Object(_)) => obj.clone(),
        Some(_) => return None,
    };
    Some(json!({
        "id": call_id(),
        "type": "function",
        "function": { "name": name, "arguments": arguments.to_string() },
    }))
}

fn call_id() -> String {
    super::wire::random_id("call_")
}

/// The text of an assistant message that made `calls` (OpenAI's `tool_calls`), written back
/// in the model's format so a later turn shows it its own calls.
pub fn render_calls(content: &str, calls: &[Value]) -> Result<String, String> {
    let mut out = content.to_owned();
    for (i, call) in calls.iter().enumerate() {
        let f = call
            .get("function")
            .ok_or_else(|| format!("tool_calls[{i}] has no `function`"))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("tool_calls[{i}].function has no `name`"))?;
        let arguments = match f.get("arguments") {
            Some(Value::String(s)) => serde_json::from_str(s)
                .map_err(|_| format!("tool_calls[{i}].function.arguments is not JSON"))?,
            Some(v) => v.clone(),
            None => json!({}),
        };
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!(
            "{OPEN}\n{}\n{CLOSE}",
            json!({ "name": name, "arguments": arguments })
        ));
    }
    Ok(out)
}

/// Streams a reply's text while holding back anything that may be a tool call, so a client
/// never receives the tags as content: text before the first `<tool_call>` goes out at once
/// (but for an end that could be the start of the tag); from the tag on, everything waits for
/// the end of the reply, where [`ToolStream::finish`] splits it.
#[derive(Debug, Default)]
pub struct ToolStream {
    /// Text not sent yet.
    held: String,
    /// Whether `<tool_call>` was seen: the rest waits for the end.
    in_call: bool,
    /// All the text so far, for the final split.
    whole: String,
}

impl ToolStream {
    /// Adds text; returns what may be sent as content now.
    pub fn push(&mut self, text: &str) -> String {
        self.whole.push_str(text);
        self.held.push_str(text);
        if self.in_call {
            return String::new();
        }
        if let Some(at) = self.held.find(OPEN) {
            self.in_call = true;
            let out = self.held[..at].to_owned();
            self.held.drain(..at);
            return out;
        }
        // Keep back an end that could grow into the tag.
        let keep = (1..OPEN.len())
            .rev()
            .find(|&n| self.held.ends_with(&OPEN[..n]))
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        out
    }

    /// Ends the reply: the content still to send and the calls (none when the held text is
    /// not a well-formed call, which is then content).
    pub fn finish(self) -> (String, Vec<Value>) {
        if !self.in_call {
            return (self.held, Vec::new());
        }
        let whole = split(&self.whole);
        if whole.calls.is_empty() {
            return (self.held, Vec::new());
        }
        // What was already sent is the text before the first call; the rest of the content
        // (text between or after calls) goes now.
        let before = &self.whole[..self.whole.len() - self.held.len()];
        let rest = whole
            .content
            .strip_prefix(before.trim())
            .unwrap_or(&whole.content)
            .trim()
            .to_owned();
        (rest, whole.calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(calls: &[Value]) -> Vec<String> {
        calls
            .iter()
            .map(|c| c["function"]["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn calls_are_read_out_of_the_reply() {
        let reply = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"now\", \"arguments\": \"{}\"}</tool_call>";
        let s = split(reply);
        assert_eq!(s.content, "Let me check.");
        assert_eq!(names(&s.calls), ["get_weather", "now"]);
        let args: Value =
            serde_json::from_str(s.calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        assert!(s.calls[0]["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(s.calls[0]["type"], "function");
    }

    #[test]
    fn a_malformed_call_stays_text() {
        for reply in [
            "no calls here",
            "<tool_call>{\"name\": \"f\"",
            "<tool_call>not json</tool_call>",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
            "<tool_call>{\"name\": \"f\"}</tool_call> and <tool_call>oops</tool_call>",
        ] {
            let s = split(reply);
            assert!(s.calls.is_empty(), "{reply}");
            assert_eq!(s.content, reply);
        }
    }

    #[test]
    fn the_stream_holds_back_what_may_be_a_call() {
        let mut t = ToolStream::default();
        let mut sent = String::new();
        for piece in [
            "Sure",
            ", one moment <tool",
            "_ca",
            "ll>{\"name\": \"f\", ",
            "\"arguments\": {\"x\": 1}}</tool_call>",
        ] {
            sent.push_str(&t.push(piece));
        }
        assert_eq!(sent, "Sure, one moment ");
        let (rest, calls) = t.finish();
        assert_eq!((rest.as_str(), names(&calls)), ("", vec!["f".to_owned()]));

        // A "<" that is not a tag is sent once it cannot be one.
        let mut t = ToolStream::default();
        assert_eq!(t.push("a <"), "a ");
        assert_eq!(t.push("b"), "<b");
        assert_eq!(t.finish(), (String::new(), Vec::new()));

        // A broken call comes out as text at the end.
        let mut t = ToolStream::default();
        assert_eq!(t.push("x <tool_call>{oops"), "x ");
        assert_eq!(t.finish(), ("<tool_call>{oops".to_owned(), Vec::new()));
    }

    #[test]
    fn calls_are_written_back_in_the_models_format() {
        let calls = [json!({"id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": "{\"x\":1}"}})];
        assert_eq!(
            render_calls("", &calls).unwrap(),
            "<tool_call>\n{\"name\":\"f\",\"arguments\":{\"x\":1}}\n</tool_call>"
        );
        assert!(render_calls("", &[json!({"function": {}})]).is_err());
    }
}
