//! The HTML fragments of the chat UI. Every piece of text that did not come from this file is
//! escaped with [`esc`]; model output goes through [`markdown`], which returns safe HTML.

use std::fmt::Write;

use crate::app::repo::{Conversation, Message, MessageStatus, Role};
use crate::app::service::{ConversationView, EngineState, MessageView};
use crate::app::settings::{InvalidSetting, Settings, Theme};
use crate::engine::events::FinishReason;

/// Escapes text for use in HTML content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Model output as safe HTML: markdown rendered and sanitized by `view::markdown`.
pub fn markdown(text: &str) -> String {
    crate::view::markdown::render_markdown(text)
}

/// The document around the app: stylesheet, htmx and the glue script, all from this origin.
pub fn page(body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\" data-theme=\"system\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>SmolLM3 Bot</title><link rel=\"stylesheet\" href=\"/assets/app.css\">\
<script src=\"/assets/app.js\" defer></script><script src=\"/assets/vendor/htmx.min.js\" defer></script>\
</head><body>{body}</body></html>"
    )
}

/// The whole app: sidebar, chat pane, overlay slot and status bar.
pub fn layout(conversations: &[Conversation], chat: &str, status: &str, theme: Theme) -> String {
    format!(
        "<div id=\"app\" class=\"app\">\
<aside id=\"sidebar\" class=\"sidebar\" aria-label=\"Conversations\">\
<div class=\"sidebar-head\">\
<button type=\"button\" class=\"btn primary\" id=\"new-chat\" hx-post=\"/conversations\" hx-target=\"#chat\">+ New chat</button>\
<button type=\"button\" class=\"btn icon\" id=\"open-settings\" hx-get=\"/settings\" hx-target=\"#overlay\" title=\"Settings\" aria-label=\"Settings\">⚙</button>\
</div>\
<input type=\"search\" id=\"search\" name=\"q\" placeholder=\"Search conversations\" aria-label=\"Search conversations\" autocomplete=\"off\" \
hx-get=\"/conversations\" hx-trigger=\"input changed delay:250ms, search\" hx-target=\"#conversation-list\">\
<nav id=\"conversation-list\" class=\"conversation-list\">{list}</nav>\
<div id=\"toast\" class=\"toast\" role=\"status\" aria-live=\"polite\"></div>\
</aside>\
<main id=\"chat\" class=\"chat-slot\">{chat}</main>\
<div id=\"overlay\"></div>\
{status}{theme}</div>",
        list = conversation_list(conversations, None),
        theme = theme_state(theme, false),
    )
}

/// A hidden marker the glue script reads to apply the theme.
pub fn theme_state(theme: Theme, oob: bool) -> String {
    format!(
        "<div id=\"theme-state\" data-theme=\"{}\" hidden{}></div>",
        theme.as_str(),
        if oob { " hx-swap-oob=\"true\"" } else { "" }
    )
}

/// The sidebar's list of conversations; `toast` adds a message (such as an undo offer).
pub fn conversation_list(conversations: &[Conversation], toast: Option<&str>) -> String {
    let mut out = String::new();
    if conversations.is_empty() {
        out.push_str("<p class=\"muted empty-list\">No conversations yet.</p>");
    }
    for c in conversations {
        out.push_str(&conversation_item(c));
    }
    if let Some(t) = toast {
        let _ = write!(out, "<div id=\"toast\" class=\"toast\" role=\"status\" aria-live=\"polite\" hx-swap-oob=\"true\">{t}</div>");
    }
    out
}

/// One row of the sidebar.
pub fn conversation_item(c: &Conversation) -> String {
    format!(
        "<div class=\"conv\" id=\"conv-{id}\" data-conversation-id=\"{id}\">\
<a href=\"#\" class=\"conv-title\" hx-get=\"/conversations/{id}\" hx-target=\"#chat\" title=\"{t}\">{t}</a>\
<button type=\"button\" class=\"btn icon small\" hx-get=\"/conversations/{id}/rename\" hx-target=\"#conv-{id}\" hx-swap=\"outerHTML\" title=\"Rename\" aria-label=\"Rename {t}\">✎</button>\
<button type=\"button\" class=\"btn icon small js-delete\" hx-post=\"/conversations/{id}/delete\" hx-target=\"#conversation-list\" title=\"Delete\" aria-label=\"Delete {t}\">✕</button>\
</div>",
        id = c.id,
        t = esc(&c.title)
    )
}

/// The inline rename form that replaces a sidebar row.
pub fn rename_form(c: &Conversation) -> String {
    format!(
        "<form class=\"conv rename\" id=\"conv-{id}\" hx-post=\"/conversations/{id}/rename\" hx-target=\"#conversation-list\">\
<input name=\"title\" value=\"{t}\" aria-label=\"New title\" maxlength=\"200\" required autofocus>\
<button type=\"submit\" class=\"btn small\">Save</button>\
<button type=\"button\" class=\"btn small\" hx-get=\"/conversations\" hx-target=\"#conversation-list\">Cancel</button>\
</form>",
        id = c.id,
        t = esc(&c.title)
    )
}

/// The undo offer shown after a delete.
pub fn undo_toast(c: &Conversation) -> String {
    format!(
        "Deleted “{t}”. <button type=\"button\" class=\"btn small\" id=\"undo-delete\" hx-post=\"/conversations/{id}/undo\" hx-target=\"#conversation-list\">Undo</button>",
        t = esc(&c.title),
        id = c.id
    )
}

fn composer(conversation_id: Option<i64>) -> String {
    let (action, stop) = match conversation_id {
        Some(id) => (
            format!("/conversations/{id}/messages"),
            format!("/conversations/{id}/stop"),
        ),
        None => ("/messages".to_string(), String::new()),
    };
    let stop_button = if stop.is_empty() {
        String::new()
    } else {
        format!("<button type=\"button\" class=\"btn\" id=\"stop\" hx-post=\"{stop}\" hx-swap=\"none\" title=\"Stop (Esc)\">Stop</button>")
    };
    format!(
        "<form id=\"composer\" class=\"composer\" hx-post=\"{action}\" hx-target=\"#messages\" hx-swap=\"beforeend\">\
<textarea id=\"prompt\" name=\"text\" rows=\"2\" aria-label=\"Message\" \
placeholder=\"Message SmolLM3 — Enter to send, Shift+Enter for a new line, /help for commands\"></textarea>\
<div class=\"composer-buttons\"><button type=\"submit\" class=\"btn primary\" id=\"send\">Send</button>{stop_button}</div>\
</form>"
    )
}

/// What the chat pane shows before a conversation is chosen.
pub fn empty_chat() -> String {
    format!(
        "<section class=\"chat\" id=\"chat-pane\">\
<header class=\"chat-head\"><h1 class=\"chat-title\">SmolLM3 Bot</h1></header>\
<div id=\"messages\" class=\"messages\" role=\"log\" aria-live=\"polite\">\
<div class=\"empty-state\" id=\"empty-state\"><h2>Start a conversation</h2>\
<p>Everything runs on this computer: nothing you type leaves it.</p>\
<p class=\"muted\">Try <code>/quote</code> to see a reply stream without a model, or <code>/help</code> for all commands.</p></div>\
</div>{}</section>",
        composer(None)
    )
}

/// The head of a conversation: title and the reasoning toggle.
pub fn chat_head(c: &Conversation, oob: bool) -> String {
    format!(
        "<header class=\"chat-head\" id=\"chat-head\"{oob}>{title}\
<form class=\"thinking-toggle\" hx-post=\"/conversations/{id}/thinking\" hx-trigger=\"change\" hx-target=\"#chat-head\" hx-swap=\"outerHTML\">\
<label title=\"Let the model reason before it answers\"><input type=\"checkbox\" id=\"thinking\" name=\"enabled\"{checked}> Reasoning</label>\
</form></header>",
        oob = if oob { " hx-swap-oob=\"true\"" } else { "" },
        title = chat_title(c, false),
        id = c.id,
        checked = if c.thinking { " checked" } else { "" }
    )
}

/// A conversation's title; as an out-of-band swap it only lands where that conversation is open.
pub fn chat_title(c: &Conversation, oob: bool) -> String {
    format!(
        "<h1 class=\"chat-title\" id=\"chat-title-{id}\"{oob}>{t}</h1>",
        id = c.id,
        oob = if oob { " hx-swap-oob=\"true\"" } else { "" },
        t = esc(&c.title)
    )
}

/// A conversation: head, messages (then `extra`, such as a notice) and the message box.
pub fn chat(view: &ConversationView, extra: &str) -> String {
    let c = &view.conversation;
    let empty = if view.messages.is_empty() {
        "<div class=\"empty-state\" id=\"empty-state\"><h2>Say hello</h2><p class=\"muted\">Type a message below.</p></div>"
    } else {
        ""
    };
    format!(
        "<section class=\"chat\" id=\"chat-pane\" data-conversation-id=\"{id}\">{head}\
<div id=\"messages\" class=\"messages\" role=\"log\" aria-live=\"polite\">{empty}{msgs}{extra}</div>{composer}</section>",
        id = c.id,
        head = chat_head(c, false),
        msgs = messages(view),
        composer = composer(Some(c.id))
    )
}

/// The messages of the branch on screen.
pub fn messages(view: &ConversationView) -> String {
    view.messages.iter().map(message).collect()
}

fn branch_nav(m: &MessageView) -> String {
    let (pos, total) = m.branch;
    if total < 2 {
        return String::new();
    }
    let prev = m.siblings.get(pos.wrapping_sub(2)).copied();
    let next = m.siblings.get(pos).copied();
    let link = |target: Option<i64>, label: &str, name: &str| {
        match target {
        Some(id) => format!(
            "<button type=\"button\" class=\"btn icon small\" hx-post=\"/messages/{id}/select\" hx-target=\"#messages\" aria-label=\"{name}\">{label}</button>"
        ),
        None => format!("<button type=\"button\" class=\"btn icon small\" disabled aria-label=\"{name}\">{label}</button>"),
    }
    };
    format!(
        "<span class=\"branch-nav\">{}<span class=\"muted\">{pos}/{total}</span>{}</span>",
        link(prev, "‹", "Previous version"),
        link(next, "›", "Next version")
    )
}

/// Figures under a reply: tokens, speed, time to first token, why it ended.
pub fn stats_line(m: &Message) -> String {
    let Some(s) = &m.stats else {
        return String::new();
    };
    let mut parts = vec![format!("{} tokens", s.generated_tokens)];
    if s.decode_tps > 0.0 {
        parts.push(format!("{:.1} tok/s", s.decode_tps));
    }
    parts.push(format!("TTFT {:.2} s", s.ttft_s));
    match s.finish_reason {
        FinishReason::Stop => {}
        FinishReason::Length => parts.push("stopped at max tokens".into()),
        FinishReason::ContextFull => parts.push("context full".into()),
        FinishReason::Cancelled => parts.push("stopped".into()),
    }
    parts.join(" · ")
}

/// One message. A streaming reply carries `data-seq` so the client can skip events it has.
pub fn message(m: &MessageView) -> String {
    let msg = &m.message;
    match msg.role {
        Role::User | Role::System => format!(
            "<article class=\"msg user\" id=\"msg-{id}\" data-id=\"{id}\">\
<div class=\"bubble\"><div class=\"plain\">{text}</div></div>\
<div class=\"msg-actions\">{nav}<button type=\"button\" class=\"btn small\" hx-get=\"/messages/{id}/edit\" hx-target=\"#msg-{id}\" hx-swap=\"outerHTML\">Edit</button></div>\
</article>",
            id = msg.id,
            text = esc(&msg.content),
            nav = branch_nav(m)
        ),
        Role::Assistant => assistant_message(m),
    }
}

/// What a reply waiting for the model shows in its place.
pub fn queue_text(position: usize) -> String {
    format!("Waiting — position {position} in queue")
}

fn assistant_message(m: &MessageView) -> String {
    let msg = &m.message;
    let streaming = msg.status == MessageStatus::Streaming;
    let queued = if streaming { m.queue_position } else { None };
    // Always present while streaming, so the client can show it when the reply is queued.
    let queue_note = if streaming {
        format!(
            "<div class=\"queue-note\" role=\"status\"{hidden}>{text}</div>",
            hidden = if queued.is_none() { " hidden" } else { "" },
            text = esc(&queued.map(queue_text).unwrap_or_default())
        )
    } else {
        String::new()
    };
    let reasoning = if streaming {
        // Open while only reasoning has arrived; the client closes it when the answer starts.
        format!(
            "<details class=\"reasoning\"{hidden}{open}><summary>Reasoning</summary><div class=\"reasoning-body plain\">{r}</div></details>",
            hidden = if msg.reasoning.is_empty() { " hidden" } else { "" },
            open = if msg.content.is_empty() { " open" } else { "" },
            r = esc(&msg.reasoning)
        )
    } else if msg.reasoning.is_empty() {
        String::new()
    } else {
        format!(
            "<details class=\"reasoning\"><summary>Reasoning</summary><div class=\"reasoning-body\">{}</div></details>",
            markdown(&msg.reasoning)
        )
    };
    let answer = if streaming {
        format!(
            "<div class=\"answer live plain\">{}</div>",
            esc(&msg.content)
        )
    } else {
        format!("<div class=\"answer md\">{}</div>", markdown(&msg.content))
    };
    let note = match msg.status {
        MessageStatus::Error => format!(
            "<div class=\"error\" role=\"alert\">{}</div>",
            esc(msg.error.as_deref().unwrap_or("The reply failed."))
        ),
        MessageStatus::Interrupted => {
            "<div class=\"error\">The app closed before this reply finished.</div>".into()
        }
        _ => String::new(),
    };
    let actions = if streaming {
        String::new()
    } else {
        format!(
            "<div class=\"msg-actions\">{nav}<button type=\"button\" class=\"btn small js-copy-message\">Copy</button>\
<button type=\"button\" class=\"btn small\" hx-post=\"/messages/{id}/regenerate\" hx-target=\"#messages\">Regenerate</button></div>",
            id = msg.id,
            nav = branch_nav(m)
        )
    };
    format!(
        "<article class=\"msg assistant{cls}{queued}\" id=\"msg-{id}\" data-id=\"{id}\" data-seq=\"{seq}\">\
{queue_note}{reasoning}{answer}{note}<footer class=\"msg-meta muted\">{stats}</footer>{actions}</article>",
        cls = if streaming { " streaming" } else { "" },
        queued = if queued.is_some() { " queued" } else { "" },
        id = msg.id,
        seq = m.seq,
        stats = esc(&stats_line(msg))
    )
}

/// The inline editor that replaces a user message.
pub fn edit_form(m: &Message) -> String {
    format!(
        "<form class=\"msg user editing\" id=\"msg-{id}\" hx-post=\"/messages/{id}/edit\" hx-target=\"#messages\">\
<textarea name=\"text\" rows=\"3\" aria-label=\"Edit message\" autofocus>{text}</textarea>\
<div class=\"msg-actions\"><button type=\"submit\" class=\"btn small primary\">Send</button>\
<button type=\"button\" class=\"btn small\" hx-get=\"/messages/{id}\" hx-target=\"#msg-{id}\" hx-swap=\"outerHTML\">Cancel</button>\
<span class=\"muted\">The current version stays available with ‹ ›.</span></div></form>",
        id = m.id,
        text = esc(&m.content)
    )
}

/// A line from the app (a command's result) shown in the message list; not saved.
pub fn notice(text: &str) -> String {
    format!("<div class=\"notice\" role=\"status\">{}</div>", esc(text))
}

/// A human error message, shown in the toast area.
pub fn error_toast(text: &str) -> String {
    format!(
        "<div class=\"toast-error\" role=\"alert\">{}</div>",
        esc(text)
    )
}

/// The status bar: model, context used, engine state; it refreshes itself every two seconds.
pub fn status_bar(
    engine: &EngineState,
    busy: bool,
    conversation: Option<i64>,
    used: Option<usize>,
    context: usize,
) -> String {
    let (class, model) = match engine {
        EngineState::NoModel { .. } => ("off", "No model".to_string()),
        EngineState::Loading { model, progress } => (
            "loading",
            format!("Loading {model} {:.0}%", progress * 100.0),
        ),
        EngineState::Ready { model } => ("ready", model.clone()),
        EngineState::Failed { .. } => ("failed", "Model failed to load".to_string()),
        // Still usable, but the change the user asked for did not happen: say so in view.
        EngineState::Kept { model, .. } => ("kept", format!("{model} (new model not loaded)")),
    };
    let title = match engine {
        EngineState::NoModel { reason } => reason.clone(),
        EngineState::Failed { message } | EngineState::Kept { message, .. } => message.clone(),
        _ => String::new(),
    };
    let state = if busy { "Generating" } else { "Idle" };
    let query = conversation.map(|c| format!("?c={c}")).unwrap_or_default();
    format!(
        "<footer id=\"statusbar\" class=\"statusbar\" hx-get=\"/status{query}\" hx-trigger=\"every 2s\" hx-swap=\"outerHTML\">\
<span class=\"engine {class}\" title=\"{title}\"><span class=\"dot\"></span>{model}</span>\
<span class=\"context\">Context {used} / {context}</span><span class=\"state\">{state}</span></footer>",
        title = esc(&title),
        model = esc(&model),
        used = used.unwrap_or(0),
    )
}

fn field(label: &str, name: &str, input: String, errors: &[InvalidSetting], help: &str) -> String {
    let err = errors
        .iter()
        .find(|e| e.field == name)
        .map(|e| {
            format!(
                "<span class=\"field-error\" role=\"alert\">{}</span>",
                esc(&e.message)
            )
        })
        .unwrap_or_default();
    let help = if help.is_empty() {
        String::new()
    } else {
        format!("<span class=\"muted help\">{}</span>", esc(help))
    };
    format!(
        "<label class=\"field\" for=\"set-{name}\"><span>{label}</span>{input}{help}{err}</label>",
        label = esc(label)
    )
}

fn number(name: &str, value: String, step: &str) -> String {
    format!("<input type=\"number\" id=\"set-{name}\" name=\"{name}\" value=\"{value}\" step=\"{step}\">", value = esc(&value))
}

/// The settings panel; `errors` marks fields that were out of range, `saved` confirms a save.
pub fn settings_panel(s: &Settings, errors: &[InvalidSetting], saved: bool) -> String {
    let sp = &s.sampling;
    let theme_opts: String = [Theme::System, Theme::Light, Theme::Dark]
        .iter()
        .map(|t| {
            format!(
                "<option value=\"{v}\"{sel}>{label}</option>",
                v = t.as_str(),
                sel = if *t == s.theme { " selected" } else { "" },
                label = match t {
                    Theme::System => "Same as the system",
                    Theme::Light => "Light",
                    Theme::Dark => "Dark",
                }
            )
        })
        .collect();
    let banner = if saved {
        "<p class=\"saved\" role=\"status\">Settings saved.</p>".to_string()
    } else if !errors.is_empty() {
        "<p class=\"field-error\" role=\"alert\">Some values are out of range; nothing was saved.</p>".to_string()
    } else {
        String::new()
    };
    let fields = [
        field("System prompt", "system_prompt", format!("<textarea id=\"set-system_prompt\" name=\"system_prompt\" rows=\"3\">{}</textarea>", esc(&s.system_prompt)), errors, "Sent before every conversation."),
        field("Temperature", "temperature", number("temperature", sp.temperature.to_string(), "0.05"), errors, "0 picks the likeliest token every time."),
        field("Top-p", "top_p", number("top_p", sp.top_p.to_string(), "0.01"), errors, ""),
        field("Top-k", "top_k", number("top_k", sp.top_k.to_string(), "1"), errors, "0 turns it off."),
        field("Min-p", "min_p", number("min_p", sp.min_p.to_string(), "0.01"), errors, ""),
        field("Repeat penalty", "repeat_penalty", number("repeat_penalty", sp.repeat_penalty.to_string(), "0.05"), errors, "1 turns it off."),
        field("Max tokens per reply", "max_tokens", number("max_tokens", sp.max_tokens.to_string(), "1"), errors, ""),
        field("Context size", "context_size", number("context_size", s.context_size.to_string(), "512"), errors, "Applies when the model is next loaded."),
        field("Threads", "threads", number("threads", s.threads.to_string(), "1"), errors, "0 uses every core."),
        field("Reasoning in new conversations", "thinking_default", format!("<input type=\"checkbox\" id=\"set-thinking_default\" name=\"thinking_default\"{}>", if s.thinking_default { " checked" } else { "" }), errors, ""),
        field("Reasoning budget (tokens)", "thinking_budget", number("thinking_budget", s.thinking_budget.to_string(), "1"), errors, "0 means no limit."),
        field("Theme", "theme", format!("<select id=\"set-theme\" name=\"theme\">{theme_opts}</select>"), errors, ""),
        field("Model file (GGUF)", "model_path", format!("<input type=\"text\" id=\"set-model_path\" name=\"model_path\" value=\"{}\" spellcheck=\"false\">", esc(&s.model_path)), errors, "Loads when saved; MODEL_PATH overrides it."),
        field("Tokenizer file", "tokenizer_path", format!("<input type=\"text\" id=\"set-tokenizer_path\" name=\"tokenizer_path\" value=\"{}\" spellcheck=\"false\">", esc(&s.tokenizer_path)), errors, "Optional; read from the GGUF when empty."),
    ]
    .concat();
    format!(
        "<div class=\"overlay-backdrop\"><form class=\"settings\" id=\"settings\" hx-post=\"/settings\" hx-target=\"#overlay\" role=\"dialog\" aria-label=\"Settings\">\
<header class=\"settings-head\"><h2>Settings</h2><button type=\"button\" class=\"btn icon js-close-overlay\" aria-label=\"Close settings\">✕</button></header>\
{banner}<div class=\"settings-fields\">{fields}</div>\
<footer class=\"settings-foot\"><button type=\"submit\" class=\"btn primary\" id=\"save-settings\">Save</button>\
<button type=\"button\" class=\"btn js-close-overlay\">Close</button></footer></form></div>{theme}",
        theme = theme_state(s.theme, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esc_neutralises_markup_and_quotes() {
        assert_eq!(
            esc("<img src=x onerror=\"a('b')\">&"),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
    }

    #[test]
    fn markdown_shows_raw_html_as_text() {
        let html = markdown("<script>alert(1)</script>");
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
    }
}
