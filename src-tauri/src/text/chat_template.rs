//! The chat template: turns a conversation into the exact prompt text the model was trained on.
//!
//! Templates are the Jinja sources that ship with Hugging Face models (in `tokenizer_config.json`
//! or the GGUF key `tokenizer.chat_template`), rendered with minijinja the way `transformers`
//! renders them: `trim_blocks` and `lstrip_blocks` on, Python string methods available
//! (`.replace`, `.rstrip`, …), `raise_exception` and `strftime_now` defined, and the
//! `{% generation %}` markers (used by `transformers` to locate assistant tokens) removed.
//! Values print as Python's `str()` would (`True`, `None`, `{'name': 'f'}`), because templates
//! such as SmolLM3's write tool definitions with `tool | string` and the model was trained on
//! that form.
//!
//! `strftime_now` formats the date passed in [`RenderOptions::today`], never the clock: a
//! conversation keeps the date it started with, so its rendered prefix stays byte-identical from
//! one turn to the next and the KV cache can be reused.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use minijinja::value::ValueKind;
use minijinja::{Environment, ErrorKind, Value};

use super::ChatMessage;

/// The SmolLM3 chat template, used when neither the model file nor a tokenizer config has one.
pub const SMOLLM3_TEMPLATE: &str = include_str!("../../assets/smollm3.jinja");

/// The name the template is registered under inside its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// Why a template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template source is not valid Jinja.
    #[error("the chat template does not parse: {0}")]
    Syntax(#[source] minijinja::Error),
    /// Rendering failed (a `raise_exception`, a type error, …).
    #[error("the chat template failed to render: {0}")]
    Render(#[source] minijinja::Error),
    /// A tokenizer config could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tokenizer config is not the JSON we expect.
    #[error("{} is not a valid tokenizer config: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Options for one rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// End the prompt with the header of a new assistant turn (what generation needs).
    pub add_generation_prompt: bool,
    /// The date `strftime_now` formats; fixed per conversation.
    pub today: NaiveDate,
    /// Further template variables, e.g. `enable_thinking`, `xml_tools`, `python_tools`.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for RenderOptions {
    /// A generation prompt, no extras, and today's date (a new conversation should store it
    /// and pass it back on later turns).
    fn default() -> Self {
        Self {
            add_generation_prompt: true,
            today: chrono::Local::now().date_naive(),
            extra: serde_json::Map::new(),
        }
    }
}

impl RenderOptions {
    /// Options for a conversation started on `today`, with a generation prompt and no extras.
    pub fn for_date(today: NaiveDate) -> Self {
        Self {
            today,
            ..Self::default()
        }
    }

    /// Sets the template variable `enable_thinking` (SmolLM3's reasoning switch).
    pub fn with_thinking(mut self, enabled: bool) -> Self {
        self.extra
            .insert("enable_thinking".into(), serde_json::Value::Bool(enabled));
        self
    }
}

/// A compiled chat template, cheap to render many times.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles a template from its Jinja source.
    pub fn new(source: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // transformers renders with these two on; without them whitespace differs.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("string", |v: Value| py_str(&v));
        env.set_formatter(|out, _state, value| {
            match value.as_str() {
                Some(s) => out.write_str(s),
                None => out.write_str(&py_str(value)),
            }
            .map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "cannot write output"))
        });
        env.add_template_owned(TEMPLATE_NAME, strip_generation_tags(source))
            .map_err(TemplateError::Syntax)?;
        Ok(Self { env })
    }

    /// The SmolLM3 template bundled with the app.
    pub fn builtin() -> Self {
        Self::new(SMOLLM3_TEMPLATE).expect("the bundled SmolLM3 template compiles")
    }

    /// Picks the template a model should use: the one in its GGUF file, else the
    /// `chat_template` of a `tokenizer_config.json`, else the bundled SmolLM3 one.
    pub fn from_sources(
        gguf_template: Option<&str>,
        tokenizer_config_json: Option<&Path>,
    ) -> Result<Self, TemplateError> {
        if let Some(source) = gguf_template.filter(|s| !s.trim().is_empty()) {
            return Self::new(source);
        }
        if let Some(path) = tokenizer_config_json {
            if let Some(source) = template_from_tokenizer_config(path)? {
                return Self::new(&source);
            }
        }
        Ok(Self::builtin())
    }

    /// Renders a conversation into prompt text.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        opts: &RenderOptions,
    ) -> Result<String, TemplateError> {
        let mut ctx: BTreeMap<String, Value> = opts
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), Value::from_serialize(v)))
            .collect();
        // Only role and content: token ids are the engine's business, not the template's.
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut map = BTreeMap::new();
                map.insert("role", Value::from(m.role.as_str()));
                map.insert("content", Value::from(m.content.as_str()));
                Value::from_iter(map)
            })
            .collect();
        ctx.insert("messages".into(), Value::from(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(opts.add_generation_prompt),
        );
        let today = opts.today;
        ctx.insert(
            "strftime_now".into(),
            Value::from_function(move |fmt: &str| strftime(today, fmt)),
        );
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(TemplateError::Render)?;
        template
            .render(Value::from_iter(ctx))
            .map_err(TemplateError::Render)
    }
}

/// `raise_exception(msg)`: how HF templates reject a conversation they cannot render.
fn raise_exception(msg: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// Formats `today` (at midnight) with a strftime pattern, as Python's `strftime` would.
fn strftime(today: NaiveDate, fmt: &str) -> Result<String, minijinja::Error> {
    let moment = today.and_time(chrono::NaiveTime::MIN);
    let mut out = String::new();
    // chrono reports a bad pattern through fmt::Error rather than a panic only via `write!`.
    write!(out, "{}", moment.format(fmt)).map_err(|_| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {fmt:?}"),
        )
    })?;
    Ok(out)
}

/// Python's `str(value)`: strings as they are, everything else as `repr` would write it.
fn py_str(value: &Value) -> String {
    if value.is_undefined() {
        return String::new();
    }
    if let Some(s) = value.as_str() {
        return s.to_owned();
    }
    let mut out = String::new();
    py_repr(value, &mut out);
    out
}

/// Appends Python's `repr(value)`.
fn py_repr(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
        ValueKind::Number => match f64::try_from(value.clone()) {
            Ok(x) => out.push_str(&py_float(x)),
            Err(_) => out.push_str(&value.to_string()),
        },
        ValueKind::String => py_quote(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(items) = value.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&item, out);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(keys) = value.try_iter() {
                for (i, key) in keys.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&key, out);
                    out.push_str(": ");
                    py_repr(&value.get_item(&key).unwrap_or_default(), out);
                }
            }
            out.push('}');
        }
        _ => out.push_str(&value.to_string()),
    }
}

/// Python's `repr(float)`: shortest round-trip digits, positional between 1e-4 and 1e16,
/// scientific with a signed two-digit exponent outside.
fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if x == 0.0 || (-4..16).contains(&exp) {
        let s = x.to_string();
        if s.contains('.') {
            s
        } else {
            s + ".0"
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`; escapes for
/// backslash, the quote, `\n`, `\r`, `\t`, and every character Python does not print
/// ([`py_printable`]) as `\xNN`, `\uNNNN` or `\UNNNNNNNN`; all else (accents, CJK, emoji) as is.
fn py_quote(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !py_printable(c) => {
                let _ = match c as u32 {
                    n @ ..=0xff => write!(out, "\\x{n:02x}"),
                    n @ ..=0xffff => write!(out, "\\u{n:04x}"),
                    n => write!(out, "\\U{n:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// The assigned characters Python's `str.isprintable()` rejects (and so `repr` escapes): the
/// categories Cc, Cf, Co, Zl, Zp and Zs but the ASCII space, from Unicode 14 (CPython 3.11).
/// Unassigned code points (Cn), which Python escapes too, are printed: which ones they are
/// depends on the Python version, and a tool description has none.
const PY_UNPRINTABLE: &[(u32, u32)] = &[
    (0x0000, 0x001f),
    (0x007f, 0x00a0),
    (0x00ad, 0x00ad),
    (0x0600, 0x0605),
    (0x061c, 0x061c),
    (0x06dd, 0x06dd),
    (0x070f, 0x070f),
    (0x0890, 0x0891),
    (0x08e2, 0x08e2),
    (0x1680, 0x1680),
    (0x180e, 0x180e),
    (0x2000, 0x200f),
    (0x2028, 0x202f),
    (0x205f, 0x2064),
    (0x2066, 0x206f),
    (0x3000, 0x3000),
    (0xd800, 0xf8ff),
    (0xfeff, 0xfeff),
    (0xfff9, 0xfffb),
    (0x110bd, 0x110bd),
    (0x110cd, 0x110cd),
    (0x13430, 0x13438),
    (0x1bca0, 0x1bca3),
    (0x1d173, 0x1d17a),
    (0xe0001, 0xe0001),
    (0xe0020, 0xe007f),
    (0xf0000, 0xffffd),
    (0x100000, 0x10fffd),
];

/// Whether Python prints `c` as it is in a `repr` (see [`PY_UNPRINTABLE`]).
fn py_printable(c: char) -> bool {
    let c = c as u32;
    let i = PY_UNPRINTABLE.partition_point(|&(_, hi)| hi < c);
    PY_UNPRINTABLE.get(i).is_none_or(|&(lo, _)| c < lo)
}

/// Reads `chat_template` from a `tokenizer_config.json`; `None` when the file has none.
///
/// The key is either a string or, in newer configs, a list of `{name, template}` of which the
/// one named `default` is the chat template.
fn template_from_tokenizer_config(path: &Path) -> Result<Option<String>, TemplateError> {
    let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Io {
        path: path.to_owned(),
        source,
    })?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| TemplateError::Config {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => Ok(list
            .iter()
            .find(|entry| entry.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|entry| entry.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_owned)),
        Some(_) => Err(TemplateError::Config {
            path: path.to_owned(),
            reason: "`chat_template` is neither a string nor a list of templates".into(),
        }),
    }
}

/// Replaces `{% generation %}` / `{% endgeneration %}` with a no-op block that keeps their
/// whitespace-control markers, so trimming around them works as in `transformers`.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        match parse_generation_tag(tag) {
            Some((len, open_mark, keyword, close_mark)) => {
                let replacement = if keyword == "generation" {
                    "if true"
                } else {
                    "endif"
                };
                out.push_str("{%");
                out.push_str(open_mark);
                out.push(' ');
                out.push_str(replacement);
                out.push(' ');
                out.push_str(close_mark);
                out.push_str("%}");
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// If `tag` starts with a `generation`/`endgeneration` block tag, returns its length, its
/// whitespace-control markers and the keyword.
fn parse_generation_tag(tag: &str) -> Option<(usize, &str, &str, &str)> {
    let body = tag.strip_prefix("{%")?;
    let open_mark = marker(body);
    let inner = body[open_mark.len()..].trim_start();
    let keyword = ["endgeneration", "generation"]
        .into_iter()
        .find(|k| inner.starts_with(k))?;
    let after = inner[keyword.len()..].trim_start();
    let (close_mark, end) = if let Some(r) = after.strip_prefix("-%}") {
        ("-", r)
    } else if let Some(r) = after.strip_prefix("+%}") {
        ("+", r)
    } else {
        ("", after.strip_prefix("%}")?)
    };
    Some((tag.len() - end.len(), open_mark, keyword, close_mark))
}

/// The whitespace-control marker (`-`, `+` or none) at the start of a block tag's body.
fn marker(body: &str) -> &str {
    match body.as_bytes().first() {
        Some(b'-') => "-",
        Some(b'+') => "+",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date() -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 7, 4).unwrap()
    }

    fn user(text: &str) -> ChatMessage {
        ChatMessage::new("user", text)
    }

    fn render(messages: &[ChatMessage], opts: &RenderOptions) -> String {
        ChatTemplate::builtin().render(messages, opts).unwrap()
    }

    #[test]
    fn thinking_is_on_by_default() {
        let out = render(&[user("Hi")], &RenderOptions::for_date(date()));
        assert!(out.contains("Reasoning Mode: /think\n"), "{out}");
        assert!(out.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
    }

    #[test]
    fn enable_thinking_false_prefills_an_empty_think_block() {
        let out = render(
            &[user("Hi")],
            &RenderOptions::for_date(date()).with_thinking(false),
        );
        assert!(out.contains("Reasoning Mode: /no_think\n"), "{out}");
        assert!(
            out.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n"),
            "{out}"
        );
    }

    #[test]
    fn no_think_flag_in_system_message_wins_and_is_removed() {
        let msgs = [
            ChatMessage::new("system", "Be brief. /no_think"),
            user("Hi"),
        ];
        let out = render(&msgs, &RenderOptions::for_date(date()).with_thinking(true));
        assert!(out.contains("Reasoning Mode: /no_think\n"));
        assert!(
            out.contains("## Custom Instructions\n\nBe brief.\n\n"),
            "{out}"
        );
        assert!(!out.contains("Be brief. /no_think"));
    }

    #[test]
    fn think_flag_in_system_message_overrides_kwarg() {
        let msgs = [ChatMessage::new("system", "/think Careful."), user("Hi")];
        let out = render(&msgs, &RenderOptions::for_date(date()).with_thinking(false));
        assert!(out.contains("Reasoning Mode: /think\n"));
        assert!(out.ends_with("<|im_start|>assistant\n"));
    }

    #[test]
    fn system_override_replaces_the_whole_header() {
        let msgs = [
            ChatMessage::new("system", "You are a cat./system_override"),
            user("Hi"),
        ];
        let out = render(&msgs, &RenderOptions::for_date(date()));
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a cat.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn today_comes_from_the_options_not_the_clock() {
        let out = render(&[user("Hi")], &RenderOptions::for_date(date()));
        assert!(out.contains("Today Date: 04 July 2025\n"), "{out}");
    }

    #[test]
    fn history_turns_keep_their_content_and_generation_prompt_is_optional() {
        let msgs = [user("a"), ChatMessage::new("assistant", "\n\nb"), user("c")];
        let mut opts = RenderOptions::for_date(date()).with_thinking(false);
        opts.add_generation_prompt = false;
        let out = render(&msgs, &opts);
        assert!(out.ends_with(
            "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\nb<|im_end|>\n\
             <|im_start|>user\nc<|im_end|>\n"
        ));
    }

    #[test]
    fn xml_tools_are_listed() {
        let mut opts = RenderOptions::for_date(date());
        opts.extra.insert(
            "xml_tools".into(),
            serde_json::json!([{"name": "get_weather", "description": "Weather for a city"}]),
        );
        let out = render(&[user("Weather?")], &opts);
        assert!(out.contains("### Tools\n\n"), "{out}");
        assert!(out.contains("get_weather"));
        assert!(out.contains("</tools>\n\nFor each function call"));
        assert!(
            out.contains("</tool_call>\n\n<|im_end|>\n<|im_start|>user\n"),
            "{out}"
        );
    }

    #[test]
    fn generation_tags_are_stripped_with_their_whitespace_control() {
        let src = "{%- for m in messages -%}\n  {% generation %}\n[{{ m.content }}]\n  {%- endgeneration -%}\n{% endfor %}";
        let t = ChatTemplate::new(src).unwrap();
        let out = t
            .render(&[user("x"), user("y")], &RenderOptions::for_date(date()))
            .unwrap();
        assert_eq!(out, "[x][y]");
        assert_eq!(
            strip_generation_tags("a{%- generation %}b{%endgeneration-%}c{% if x %}"),
            "a{%- if true %}b{% endif -%}c{% if x %}"
        );
    }

    #[test]
    fn values_print_like_python() {
        // Expected strings are what CPython's str() gives for the same data; keys keep the
        // order they were written in, as Python dicts do.
        let t = ChatTemplate::new(
            "{{ tools | string }}|{{ flags }}|{{ none }}|{{ 2.0 }}|{{ [1e20, 1e-7, -0.5, 0.0001] }}",
        )
        .unwrap();
        let mut opts = RenderOptions::for_date(date());
        opts.extra.insert(
            "tools".into(),
            serde_json::json!([{"name": "f", "d": "It's \"x\"\n", "p": {"ok": true, "n": null, "x": 1.5, "l": []}},
                "a'b", "c\"d", "e\\f", "\u{1}\u{7f}\t", "ü😀\u{a0}", 1]),
        );
        opts.extra.insert(
            "flags".into(),
            serde_json::json!({"on": true, "off": false}),
        );
        let out = t.render(&[], &opts).unwrap();
        assert_eq!(
            out,
            "[{'name': 'f', 'd': 'It\\'s \"x\"\\n', 'p': {'ok': True, 'n': None, 'x': 1.5, 'l': []}}, \
             \"a'b\", 'c\"d', 'e\\\\f', '\\x01\\x7f\\t', 'ü😀\\xa0', 1]\
             |{'on': True, 'off': False}|None|2.0|[1e+20, 1e-07, -0.5, 0.0001]"
        );
    }

    #[test]
    fn strings_escape_what_python_does_not_print() {
        // Expected strings are CPython 3.11's repr() of the same text.
        let repr = |s: &str| {
            let mut out = String::new();
            py_quote(s, &mut out);
            out
        };
        assert_eq!(
            repr("tag\u{e0041} pua\u{e000}"),
            "'tag\\U000e0041 pua\\ue000'"
        );
        assert_eq!(
            repr("\u{61c}\u{180e}\u{2066}\u{fffa}\u{1d173}\u{10fffd}"),
            "'\\u061c\\u180e\\u2066\\ufffa\\U0001d173\\U0010fffd'"
        );
        assert_eq!(
            repr("👨\u{200d}👩 bom\u{feff} nel\u{85} é日本🌦\u{fe0f}"),
            "'👨\\u200d👩 bom\\ufeff nel\\x85 é日本🌦\u{fe0f}'"
        );
        assert_eq!(repr("It's"), "\"It's\"");
        assert_eq!(repr("It's \"x\""), "'It\\'s \"x\"'");
        // Edges of the table.
        assert!(py_printable(' ') && py_printable('~') && py_printable('\u{a1}'));
        assert!(!py_printable('\u{1f}') && !py_printable('\u{a0}') && !py_printable('\u{7f}'));
        assert!(py_printable('\u{2070}') && py_printable('\u{1d17b}') && py_printable('\u{e0100}'));
        assert!(py_printable('\u{205e}') && !py_printable('\u{205f}'));
    }

    #[test]
    fn raise_exception_becomes_a_render_error() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}").unwrap();
        let err = t.render(&[], &RenderOptions::for_date(date())).unwrap_err();
        assert!(matches!(err, TemplateError::Render(_)));
        assert!(err.to_string().contains("roles must alternate"), "{err}");
    }

    #[test]
    fn bad_syntax_is_reported_on_load() {
        let err = ChatTemplate::new("{% if %}").unwrap_err();
        assert!(matches!(err, TemplateError::Syntax(_)));
    }

    #[test]
    fn strftime_supports_python_patterns_and_rejects_bad_ones() {
        assert_eq!(
            strftime(date(), "%Y-%m-%d %A").unwrap(),
            "2025-07-04 Friday"
        );
        assert_eq!(strftime(date(), "%d %b %H:%M").unwrap(), "04 Jul 00:00");
        assert!(strftime(date(), "%Q").is_err());
    }

    #[test]
    fn sources_are_picked_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("tokenizer_config.json");
        std::fs::write(
            &cfg,
            r#"{"chat_template": "from-config {{ messages|length }}"}"#,
        )
        .unwrap();
        let opts = RenderOptions::for_date(date());
        let msgs = [user("x")];

        let t = ChatTemplate::from_sources(Some("from-gguf"), Some(&cfg)).unwrap();
        assert_eq!(t.render(&msgs, &opts).unwrap(), "from-gguf");
        let t = ChatTemplate::from_sources(None, Some(&cfg)).unwrap();
        assert_eq!(t.render(&msgs, &opts).unwrap(), "from-config 1");
        let t = ChatTemplate::from_sources(None, None).unwrap();
        assert!(t
            .render(&msgs, &opts)
            .unwrap()
            .starts_with("<|im_start|>system\n"));

        std::fs::write(
            &cfg,
            r#"{"chat_template": [{"name": "tool_use", "template": "t"}, {"name": "default", "template": "d"}]}"#,
        )
        .unwrap();
        let t = ChatTemplate::from_sources(None, Some(&cfg)).unwrap();
        assert_eq!(t.render(&msgs, &opts).unwrap(), "d");

        std::fs::write(&cfg, r#"{"model_max_length": 10}"#).unwrap();
        let t = ChatTemplate::from_sources(Some("  "), Some(&cfg)).unwrap();
        assert!(t.render(&msgs, &opts).unwrap().contains("SmolLM"));

        std::fs::write(&cfg, "not json").unwrap();
        let err = ChatTemplate::from_sources(None, Some(&cfg)).unwrap_err();
        assert!(matches!(err, TemplateError::Config { .. }));
        let err = ChatTemplate::from_sources(None, Some(&dir.path().join("missing.json")));
        assert!(matches!(err, Err(TemplateError::Io { .. })));
    }
}
