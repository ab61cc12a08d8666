//! The HTML fragments of the chat UI, rendered from the view's templates
//! (`src/view/templates/`), which escape every value; model output goes through [`markdown`],
//! which returns safe HTML, and fragments nest as safe HTML.

use minijinja::context;
use minijinja::value::Value;

use crate::view::{render, safe};

use super::local_server::{ServerStatus, ServerWish};
use crate::app::repo::{Conversation, Message, MessageStatus, Role};
use crate::app::service::{ConversationView, EngineState, MessageView, Serving};
use crate::engine::events::FinishReason;
use crate::store::{InvalidSetting, Settings, Theme};

/// Model output as safe HTML: markdown rendered and sanitized by `view::markdown`.
pub fn markdown(text: &str) -> String {
    crate::view::markdown::render_markdown(text)
}

/// The whole app: sidebar, chat pane, overlay slot and status bar.
pub fn layout(conversations: &[Conversation], chat: &str, status: &str, theme: Theme) -> String {
    render(
        "layout.html",
        context! {
            list => safe(conversation_list(conversations, None)),
            chat => safe(chat.to_string()),
            status => safe(status.to_string()),
            theme => safe(theme_state(theme, false)),
        },
    )
}

/// A hidden marker the glue script reads to apply the theme.
pub fn theme_state(theme: Theme, oob: bool) -> String {
    render(
        "theme_state.html",
        context! { theme => theme.as_str(), oob },
    )
}

/// The sidebar's list of conversations; `toast` adds a message (HTML, such as an undo offer).
pub fn conversation_list(conversations: &[Conversation], toast: Option<&str>) -> String {
    let items: Vec<Value> = conversations
        .iter()
        .map(|c| safe(conversation_item(c)))
        .collect();
    render(
        "conversation_list.html",
        context! {
            conversations => items,
            toast => toast.map(|t| safe(t.to_string())),
        },
    )
}

/// The sidebar's list as an out-of-band swap, for responses aimed elsewhere.
pub fn conversation_list_oob(conversations: &[Conversation]) -> String {
    render(
        "conversation_list_oob.html",
        context! { list => safe(conversation_list(conversations, None)) },
    )
}

/// What a search that found nothing shows in the sidebar.
pub fn no_match(query: &str) -> String {
    render("no_match.html", context! { query })
}

/// The chat pane's content as an out-of-band swap.
pub fn chat_slot_oob(chat: &str) -> String {
    render(
        "chat_slot_oob.html",
        context! { chat => safe(chat.to_string()) },
    )
}

/// One row of the sidebar.
pub fn conversation_item(c: &Conversation) -> String {
    render(
        "conversation_item.html",
        context! { id => c.id.0, title => &c.title },
    )
}

/// The inline rename form that replaces a sidebar row.
pub fn rename_form(c: &Conversation) -> String {
    render(
        "rename_form.html",
        context! { id => c.id.0, title => &c.title },
    )
}

/// The undo offer shown after a delete.
pub fn undo_toast(c: &Conversation) -> String {
    render(
        "undo_toast.html",
        context! { id => c.id.0, title => &c.title },
    )
}

fn composer(conversation_id: Option<i64>) -> String {
    render("composer.html", context! { id => conversation_id })
}

/// What the chat pane shows before a conversation is chosen.
pub fn empty_chat() -> String {
    render(
        "empty_chat.html",
        context! { composer => safe(composer(None)) },
    )
}

/// The head of a conversation: title and the reasoning toggle.
pub fn chat_head(c: &Conversation, oob: bool) -> String {
    render(
        "chat_head.html",
        context! {
            id => c.id.0,
            oob,
            title => safe(chat_title(c, false)),
            thinking => c.thinking,
            system_prompt => c.system_prompt.trim(),
        },
    )
}

/// A conversation's own system prompt, with the presets and the settings' default to start
/// from; `saved` after a save, `error` when one was refused.
pub fn system_prompt_form(
    c: &Conversation,
    default: &str,
    saved: bool,
    error: Option<&str>,
) -> String {
    let mut presets: Vec<Value> = crate::app::service::SYSTEM_PRESETS
        .iter()
        .map(|(name, text)| context! { name, text })
        .collect();
    if !default.trim().is_empty() {
        presets.insert(
            1,
            context! { name => "Settings' default", text => default.trim() },
        );
    }
    render(
        "system_prompt_form.html",
        context! {
            id => c.id.0,
            prompt => &c.system_prompt,
            presets,
            saved,
            error,
            max => crate::app::service::MAX_SYSTEM_PROMPT,
        },
    )
}

/// A conversation's title; as an out-of-band swap it only lands where that conversation is open.
pub fn chat_title(c: &Conversation, oob: bool) -> String {
    render(
        "chat_title.html",
        context! { id => c.id.0, oob, title => &c.title },
    )
}

/// A conversation: head, messages (then `extra`, HTML such as a notice) and the message box.
pub fn chat(view: &ConversationView, extra: &str) -> String {
    let c = &view.conversation;
    render(
        "chat.html",
        context! {
            id => c.id.0,
            head => safe(chat_head(c, false)),
            empty => view.messages.is_empty(),
            messages => safe(messages(view)),
            extra => safe(extra.to_string()),
            composer => safe(composer(Some(c.id.0))),
        },
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
    render(
        "branch_nav.html",
        context! {
            pos,
            total,
            buttons => vec![
                context! { target => prev, label => "‹", name => "Previous version" },
                context! { target => next, label => "›", name => "Next version" },
            ],
        },
    )
}

/// Figures under a reply: tokens, speed, time to first token, why it ended, and which model
/// wrote it where.
pub fn stats_line(m: &Message) -> String {
    let mut parts = Vec::new();
    if let Some(s) = &m.stats {
        parts.push(format!("{} tokens", s.generated_tokens));
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
    }
    // Which model wrote it, and where (shown once the reply is no longer streaming).
    if m.status != MessageStatus::Streaming {
        if let Some(by) = m.answered_by.as_deref().filter(|b| !b.is_empty()) {
            parts.push(by.to_string());
        }
    }
    parts.join(" · ")
}

/// One message. A streaming reply carries `data-seq` so the client can skip events it has.
pub fn message(m: &MessageView) -> String {
    let msg = &m.message;
    match msg.role {
        Role::User | Role::System => render(
            "user_message.html",
            context! { id => msg.id.0, text => &msg.content, nav => safe(branch_nav(m)) },
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
    // Finished replies are shown as markdown; a streaming one as plain text, which the client
    // extends with each delta (the reasoning block stays open while only reasoning arrived).
    let (reasoning_html, content_html) = if streaming {
        (String::new(), String::new())
    } else {
        (markdown(&msg.reasoning), markdown(&msg.content))
    };
    let error = (msg.status == MessageStatus::Error).then(|| {
        msg.error
            .as_deref()
            .unwrap_or("The reply failed.")
            .to_string()
    });
    render(
        "assistant_message.html",
        context! {
            id => msg.id.0,
            seq => m.seq,
            streaming,
            queued,
            queue_text => queued.map(queue_text).unwrap_or_default(),
            reasoning => &msg.reasoning,
            content => &msg.content,
            reasoning_html => safe(reasoning_html),
            content_html => safe(content_html),
            error,
            interrupted => msg.status == MessageStatus::Interrupted,
            // Why it was cut short, when something said (a server lost mid-reply).
            cut_short => (msg.status == MessageStatus::Interrupted)
                .then(|| msg.error.clone())
                .flatten(),
            stats => stats_line(msg),
            nav => safe(if streaming { String::new() } else { branch_nav(m) }),
        },
    )
}

/// The inline editor that replaces a user message.
pub fn edit_form(m: &Message) -> String {
    render(
        "edit_form.html",
        context! { id => m.id.0, text => &m.content },
    )
}

/// A line from the app (a command's result) shown in the message list; not saved.
pub fn notice(text: &str) -> String {
    render("notice.html", context! { text })
}

/// A human error message, shown in the toast area.
pub fn error_toast(text: &str) -> String {
    render("error_toast.html", context! { text })
}

/// The status bar: model, context used, engine state; it refreshes itself every two seconds.
/// `oob` makes it an out-of-band swap.
pub fn status_bar(
    oob: bool,
    engine: &EngineState,
    busy: bool,
    conversation: Option<i64>,
    used: Option<usize>,
    context: usize,
    serving: Option<&Serving>,
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
    render(
        "status_bar.html",
        context! {
            oob,
            conversation,
            class,
            title,
            model,
            used => used.unwrap_or(0),
            context,
            state => if busy { "Generating" } else { "Idle" },
            // Only the desktop app's bar shows the server switch; its model name opens the
            // models screen, which is the desktop's too.
            desktop => serving.is_some(),
            serving => serving.map(|s| match s {
                Serving::On { url, browsers } => context! { url, browsers },
                Serving::Failed(problem) => context! { problem },
                Serving::Off => context! { off => true },
            }),
        },
    )
}

/// The desktop's "Engine" dialog: this computer or a saved server, which is in use
/// (`current`: the saved server's id, none for this computer), the form to add a server, and
/// where keys are kept. `notice`/`error` say what the last action did.
pub fn engine_panel(
    local_model: &str,
    servers: &[crate::app::engines::ServerEntry],
    current: Option<i64>,
    key_place: &str,
    notice: Option<&str>,
    error: Option<&str>,
) -> String {
    let servers: Vec<Value> = servers
        .iter()
        .map(|e| {
            Value::from_serialize(context! {
                id => e.server.id,
                name => &e.server.name,
                model => &e.server.model,
                base_url => &e.server.base_url,
                has_key => e.has_key,
            })
        })
        .collect();
    render(
        "engine_panel.html",
        context! { local_model, servers, current, key_place, notice, error },
    )
}

/// The models a server offers, to choose one and save the server; or why they could not be
/// listed.
pub fn engine_models(models: &[String], host: &str, error: Option<&str>) -> String {
    render("engine_models.html", context! { models, host, error })
}

/// The "Browser & API access" dialog of the desktop app: the switch, the port, other devices,
/// and while it runs the addresses (with copy buttons), the key and a QR code of the sign-in
/// address for a phone (`qr`: an image URL). `error` is a form value that was refused.
pub fn server_panel(
    wish: ServerWish,
    status: &ServerStatus,
    error: Option<&str>,
    qr: Option<&str>,
) -> String {
    let running = status.running.as_ref().map(|r| {
        let lan_urls = r.lan_urls();
        context! {
            url => r.url(),
            api_url => format!("{}/v1", r.url()),
            lan => r.lan,
            lan_urls,
            key => r.key,
        }
    });
    let free_port = match &status.problem {
        Some(super::local_server::ServerProblem::PortInUse { free, .. }) => *free,
        _ => None,
    };
    render(
        "server_panel.html",
        context! {
            enabled => wish.enabled,
            port => wish.port,
            lan => wish.lan,
            running,
            browsers => status.browsers,
            problem => status.problem.as_ref().map(|p| p.to_string()),
            free_port,
            error,
            qr,
        },
    )
}

/// A form field: label, the input (HTML), help text and the error for `name`, if any.
fn field(label: &str, name: &str, input: String, errors: &[InvalidSetting], help: &str) -> String {
    render(
        "field.html",
        context! {
            label,
            name,
            input => safe(input),
            help,
            error => errors.iter().find(|e| e.field == name).map(|e| e.message.clone()),
        },
    )
}

/// An input of the settings form (`kind` is `number`, `textarea`, `checkbox`, `select`, or
/// an `<input>` type).
fn input(kind: &str, name: &str, value: Value, extra: Value) -> String {
    render("input.html", context! { kind, name, value, ..extra })
}

fn number(name: &str, value: String, step: &str) -> String {
    input("number", name, Value::from(value), context! { step })
}

fn text_input(kind: &str, name: &str, value: &str, placeholder: &str) -> String {
    input(kind, name, Value::from(value), context! { placeholder })
}

/// The whole window when the app cannot run (its data folder is in use by another process,
/// or cannot be opened): what happened and what to do.
pub fn unavailable(message: &str) -> String {
    render("unavailable.html", context! { message })
}

/// The settings panel; `errors` marks fields that were out of range, `saved` confirms a save.
/// `machine` adds the fields only the desktop's owner may change (model file, tokenizer,
/// download mirror).
pub fn settings_panel(
    s: &Settings,
    errors: &[InvalidSetting],
    saved: bool,
    machine: bool,
) -> String {
    let sp = &s.sampling;
    let themes: Vec<Value> = [Theme::System, Theme::Light, Theme::Dark]
        .iter()
        .map(|t| {
            let label = match t {
                Theme::System => "Same as the system",
                Theme::Light => "Light",
                Theme::Dark => "Dark",
            };
            context! { value => t.as_str(), label }
        })
        .collect();
    let mut fields = vec![
        field(
            "System prompt",
            "system_prompt",
            input(
                "textarea",
                "system_prompt",
                Value::from(s.system_prompt.as_str()),
                context! {},
            ),
            errors,
            "The default for new conversations; each conversation can have its own (System prompt, above the chat).",
        ),
        field(
            "Temperature",
            "temperature",
            number("temperature", sp.temperature.to_string(), "0.05"),
            errors,
            "0 picks the likeliest token every time.",
        ),
        field(
            "Top-p",
            "top_p",
            number("top_p", sp.top_p.to_string(), "0.01"),
            errors,
            "",
        ),
        field(
            "Top-k",
            "top_k",
            number("top_k", sp.top_k.to_string(), "1"),
            errors,
            "0 turns it off.",
        ),
        field(
            "Min-p",
            "min_p",
            number("min_p", sp.min_p.to_string(), "0.01"),
            errors,
            "",
        ),
        field(
            "Repeat penalty",
            "repeat_penalty",
            number("repeat_penalty", sp.repeat_penalty.to_string(), "0.05"),
            errors,
            "1 turns it off.",
        ),
        field(
            "Max tokens per reply",
            "max_tokens",
            number("max_tokens", sp.max_tokens.to_string(), "1"),
            errors,
            "",
        ),
        field(
            "Context size",
            "context_size",
            number("context_size", s.context_size.to_string(), "512"),
            errors,
            "Applies when the model is next loaded.",
        ),
        field(
            "Threads",
            "threads",
            number("threads", s.threads.to_string(), "1"),
            errors,
            "0 uses every core; applies when the app next starts.",
        ),
        field(
            "Reasoning in new conversations",
            "thinking_default",
            input(
                "checkbox",
                "thinking_default",
                Value::from(s.thinking_default),
                context! {},
            ),
            errors,
            "",
        ),
        field(
            "Reasoning budget (tokens)",
            "thinking_budget",
            number("thinking_budget", s.thinking_budget.to_string(), "1"),
            errors,
            "0 means no limit.",
        ),
        field(
            "Theme",
            "theme",
            input(
                "select",
                "theme",
                Value::from(s.theme.as_str()),
                context! { options => themes },
            ),
            errors,
            "",
        ),
    ];
    if machine {
        fields.extend([
            field(
                "Model file (GGUF)",
                "model_path",
                input(
                    "text",
                    "model_path",
                    Value::from(s.model_path.as_str()),
                    context! { pick => "model" },
                ),
                errors,
                "Loads when saved; MODEL_PATH overrides it.",
            ),
            field(
                "Tokenizer file",
                "tokenizer_path",
                input(
                    "text",
                    "tokenizer_path",
                    Value::from(s.tokenizer_path.as_str()),
                    context! { pick => "tokenizer" },
                ),
                errors,
                "Optional; read from the GGUF when empty.",
            ),
            field(
                "Download mirror",
                "hub_mirror",
                text_input("url", "hub_mirror", &s.hub_mirror, "https://huggingface.co"),
                errors,
                "Optional; your Hugging Face token is never sent to a mirror.",
            ),
            field(
                "Saved chat state on disk (MB)",
                "snapshot_budget_mb",
                number(
                    "snapshot_budget_mb",
                    s.snapshot_budget_mb.to_string(),
                    "1",
                ),
                errors,
                "Long conversations reopen without re-reading them after a restart; 0 keeps none. Applies when the model is next loaded.",
            ),
            field(
                "Replies written at once",
                "batch_size",
                number("batch_size", s.batch_size.to_string(), "1"),
                errors,
                "For several conversations, browsers or API clients at the same time: each is a little slower, all together much faster. Applies when the model is next loaded.",
            ),
            field(
                "Memory for replies being written (MB)",
                "kv_budget_mb",
                number("kv_budget_mb", s.kv_budget_mb.to_string(), "1"),
                errors,
                "What the replies written at once may hold of the conversations' model state (each counted at its prompt plus its length limit); a reply that would not fit waits its turn. 0 sets no bound. Applies when the model is next loaded.",
            ),
        ]);
    }
    render(
        "settings.html",
        context! {
            saved,
            invalid => !errors.is_empty(),
            fields => safe(fields.concat()),
            theme => safe(theme_state(s.theme, true)),
            machine,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_shows_raw_html_as_text() {
        let html = markdown("<script>alert(1)</script>");
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
    }
}
