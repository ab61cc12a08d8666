//! Conversations as people and datasets read them: Markdown (the branch on screen, reasoning
//! in a collapsible block) and OpenAI-style `{"messages": […]}` JSON lines.
//!
//! The Markdown keeps each message's own Markdown (code blocks stay code), but HTML in the
//! text is written so that no Markdown viewer runs it: outside code, `<` becomes `&lt;`, so a
//! reply holding `<script>` shows those characters instead of becoming a tag.

use serde_json::json;

use super::transfer::ExportedConversation;
use super::{MessageStatus, Role};

/// The conversation's branch on screen as a Markdown document.
pub fn to_markdown(c: &ExportedConversation) -> String {
    let mut out = format!("# {}\n\n", inline(&c.title));
    let mode = if c.thinking {
        "reasoning on"
    } else {
        "reasoning off"
    };
    out.push_str(&format!(
        "*SmolLM3 Bot conversation · {} · {mode}*\n\n",
        inline(&c.today)
    ));
    if !c.system_prompt.trim().is_empty() {
        out.push_str("## System\n\n");
        out.push_str(&safe_markdown(&c.system_prompt));
        out.push_str("\n\n");
    }
    for m in c.active_branch() {
        let who = match m.role {
            Role::System => "System",
            Role::User => "User",
            Role::Assistant => "Assistant",
        };
        out.push_str(&format!("## {who}\n\n"));
        if !m.reasoning.trim().is_empty() {
            out.push_str("<details>\n<summary>Reasoning</summary>\n\n");
            out.push_str(&safe_markdown(m.reasoning.trim()));
            out.push_str("\n\n</details>\n\n");
        }
        out.push_str(&safe_markdown(m.content.trim_end()));
        out.push_str("\n\n");
        match m.status {
            MessageStatus::Interrupted | MessageStatus::Streaming => {
                out.push_str("*(reply interrupted)*\n\n")
            }
            MessageStatus::Error => out.push_str(&format!(
                "*(reply failed: {})*\n\n",
                inline(m.error.as_deref().unwrap_or("unknown error"))
            )),
            MessageStatus::Complete => {}
        }
        if let Some(by) = m.answered_by.as_deref().filter(|b| !b.is_empty()) {
            out.push_str(&format!("*— {}*\n\n", inline(by)));
        }
    }
    out
}

/// The branch on screen as one JSON line `{"messages": [{"role", "content"}…]}` (the shape
/// fine-tuning tools read); a reply's reasoning goes in `reasoning_content`, as the API
/// gives it.
pub fn to_openai_line(c: &ExportedConversation) -> String {
    let mut messages = Vec::new();
    if !c.system_prompt.trim().is_empty() {
        messages.push(json!({"role": "system", "content": c.system_prompt}));
    }
    for m in c.active_branch() {
        let mut msg = json!({"role": m.role.as_str(), "content": m.content});
        if !m.reasoning.is_empty() {
            msg["reasoning_content"] = json!(m.reasoning);
        }
        messages.push(msg);
    }
    json!({ "messages": messages }).to_string()
}

/// One line of text (a title, an error) where Markdown and HTML have no effect.
fn inline(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '<' => out.push_str("&lt;"),
            '&' => out.push_str("&amp;"),
            '\n' | '\r' => out.push(' '),
            '\\' | '`' | '*' | '_' | '[' | ']' | '#' | '|' => {
                out.push('\\');
                out.push(ch);
            }
            _ => out.push(ch),
        }
    }
    out
}

/// Markdown text with its HTML made inert: `<` outside fenced code blocks and code spans
/// becomes `&lt;` (inside code it is shown as written anyway).
fn safe_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut fence: Option<(char, usize)> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let run = |c: char| trimmed.chars().take_while(|&x| x == c).count();
        let marker = ['`', '~']
            .into_iter()
            .map(|c| (c, run(c)))
            .find(|&(_, n)| n >= 3);
        match (fence, marker) {
            (None, Some(m)) => {
                fence = Some(m);
                out.push_str(line);
            }
            (Some((c, n)), Some((c2, n2))) if c == c2 && n2 >= n => {
                fence = None;
                out.push_str(line);
            }
            (Some(_), _) => out.push_str(line),
            (None, None) => out.push_str(&outside_code_spans(line)),
        }
    }
    out
}

/// One line outside fenced code: `<` escaped except inside backtick code spans.
fn outside_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '`' {
            let ticks = chars[i..].iter().take_while(|&&c| c == '`').count();
            // The span ends at the next run of exactly as many backticks.
            let mut j = i + ticks;
            let mut end = None;
            while j < chars.len() {
                if chars[j] == '`' {
                    let n = chars[j..].iter().take_while(|&&c| c == '`').count();
                    if n == ticks {
                        end = Some(j + n);
                        break;
                    }
                    j += n;
                } else {
                    j += 1;
                }
            }
            match end {
                Some(e) => {
                    out.extend(&chars[i..e]);
                    i = e;
                }
                None => {
                    out.extend(&chars[i..i + ticks]);
                    i += ticks;
                }
            }
            continue;
        }
        if chars[i] == '<' {
            out.push_str("&lt;");
        } else {
            out.push(chars[i]);
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::transfer::ExportedMessage;

    fn message(id: i64, parent: Option<i64>, role: Role, content: &str) -> ExportedMessage {
        ExportedMessage {
            id,
            parent,
            role,
            content: content.into(),
            reasoning: String::new(),
            status: MessageStatus::Complete,
            error: None,
            stats: None,
            created_at_ms: 0,
            answered_by: None,
        }
    }

    fn conversation() -> ExportedConversation {
        let mut reply = message(
            2,
            Some(1),
            Role::Assistant,
            "Try <script>alert(1)</script> and `<b>`:\n\n```html\n<i>kept</i>\n```\nafter <u>",
        );
        reply.reasoning = "They want <html>.".into();
        ExportedConversation {
            title: "Tags <b>".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
            today: "05 December 2026".into(),
            thinking: true,
            system_prompt: "Be brief.".into(),
            leaf: Some(2),
            messages: vec![
                message(1, None, Role::User, "Show HTML"),
                message(3, None, Role::User, "Another branch"),
                reply,
            ],
        }
    }

    #[test]
    fn markdown_keeps_code_and_makes_html_inert() {
        let md = to_markdown(&conversation());
        assert!(md.starts_with("# Tags &lt;b>\n"), "{md}");
        assert!(md.contains("## System\n\nBe brief."), "{md}");
        assert!(md.contains("## User\n\nShow HTML"), "{md}");
        assert!(
            !md.contains("Another branch"),
            "only the branch on screen: {md}"
        );
        assert!(md.contains("Try &lt;script>alert(1)&lt;/script>"), "{md}");
        assert!(!md.contains("<script"), "{md}");
        assert!(md.contains("`<b>`"), "a code span is kept: {md}");
        assert!(
            md.contains("```html\n<i>kept</i>\n```"),
            "a code block is kept: {md}"
        );
        assert!(md.contains("after &lt;u>"), "{md}");
        assert!(
            md.contains("<details>\n<summary>Reasoning</summary>\n\nThey want &lt;html>."),
            "{md}"
        );
    }

    #[test]
    fn the_openai_line_is_the_branch_on_screen() {
        let line = to_openai_line(&conversation());
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let roles: Vec<&str> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant"]);
        assert_eq!(v["messages"][2]["reasoning_content"], "They want <html>.");
    }
}
