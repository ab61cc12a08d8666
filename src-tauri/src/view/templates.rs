//! The interface's HTML, as minijinja templates (`templates/*.html`) with auto-escaping: every
//! value a template prints is escaped with [`escape`] unless it is already safe HTML (a
//! fragment rendered by another template, or sanitized markdown, passed with [`safe`]).

use std::sync::OnceLock;

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment};
use serde::Serialize;

/// Escapes text for HTML content and quoted attribute values: the one escaper of the interface.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    push_escaped(&mut out, text);
    out
}

/// Appends `text` escaped to `out`.
pub(crate) fn push_escaped(out: &mut impl std::fmt::Write, text: &str) {
    let mut rest = text;
    while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
        let (plain, tail) = rest.split_at(at);
        let _ = out.write_str(plain);
        let entity = match tail.as_bytes()[0] {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            _ => "&#39;",
        };
        let _ = out.write_str(entity);
        rest = &tail[1..];
    }
    let _ = out.write_str(rest);
}

/// HTML that a template prints as it is.
pub fn safe(html: String) -> Value {
    Value::from_safe_string(html)
}

macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("templates/", $name)))),*]
    };
}

const TEMPLATES: &[(&str, &str)] = templates!(
    "layout.html",
    "login.html",
    "theme_state.html",
    "conversation_list.html",
    "conversation_item.html",
    "rename_form.html",
    "system_prompt_form.html",
    "undo_toast.html",
    "composer.html",
    "empty_chat.html",
    "chat_head.html",
    "chat_title.html",
    "chat.html",
    "branch_nav.html",
    "user_message.html",
    "assistant_message.html",
    "edit_form.html",
    "notice.html",
    "error_toast.html",
    "status_bar.html",
    "field.html",
    "input.html",
    "unavailable.html",
    "settings.html",
    "server_panel.html",
    "engine_panel.html",
    "engine_models.html",
    "models_panel.html",
    "no_match.html",
    "conversation_list_oob.html",
    "chat_slot_oob.html",
    "wizard_app.html",
    "wizard_main.html",
    "wizard_welcome.html",
    "wizard_error.html",
    "wizard_choose.html",
    "download_bar.html",
    "download_panel.html",
);

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        // minijinja's own HTML escaping also rewrites `/`; ours leaves text as people typed it.
        env.set_formatter(|out, state, value| {
            if state.auto_escape() == AutoEscape::None || value.is_safe() || value.is_none() {
                if !value.is_none() {
                    write!(out, "{value}").map_err(minijinja::Error::from)?;
                }
                return Ok(());
            }
            match value.as_str() {
                Some(s) => push_escaped(out, s),
                None => push_escaped(out, &value.to_string()),
            }
            Ok(())
        });
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("template {name} does not compile: {e}"));
        }
        env
    })
}

/// Renders the template `name` with `context`. The templates are part of the program and
/// checked by the tests, so a failure is a bug: it is logged and renders as nothing.
pub fn render(name: &str, context: impl Serialize) -> String {
    let result = environment()
        .get_template(name)
        .and_then(|t| t.render(context));
    match result {
        Ok(html) => html,
        Err(e) => {
            tracing::error!(template = name, error = %e, "template failed");
            debug_assert!(false, "template {name} failed: {e}");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup_and_quotes() {
        assert_eq!(
            escape("<img src=x onerror=\"a('b')\">&"),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
        assert_eq!(escape("plain ünïcode / slash"), "plain ünïcode / slash");
    }

    #[test]
    fn every_template_compiles_and_values_are_escaped() {
        for (name, _) in TEMPLATES {
            assert!(environment().get_template(name).is_ok(), "{name}");
        }
        let html = render("notice.html", minijinja::context! { text => "<b>/x</b>" });
        assert_eq!(
            html,
            "<div class=\"notice\" role=\"status\">&lt;b&gt;/x&lt;/b&gt;</div>"
        );
        let html = render(
            "notice.html",
            minijinja::context! { text => safe("<b>x</b>".into()) },
        );
        assert!(html.contains("<b>x</b>"));
    }
}
