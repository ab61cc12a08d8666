//! Code blocks highlighted on the server: syntect parses the code with the grammar of the
//! fence's language and each token gets one of a few classes (`hl-keyword`, `hl-string`, …)
//! that the stylesheet colours for the light and the dark theme.
//!
//! Classes, not syntect's inline colours: the page's content security policy allows no
//! inline styles, and a short fixed list of classes is what the sanitizer can allow. The code
//! is escaped here, token by token, with the view's one escaper.

use std::sync::OnceLock;
use syntect::parsing::{
    BasicScopeStackOp, ParseState, Scope, ScopeStack, SyntaxReference, SyntaxSet,
};
use syntect::util::LinesWithEndings;

use super::templates::push_escaped;

/// Longest code highlighted; longer blocks are shown plain (a reply re-renders its last block
/// while it streams, and the regex engine is linear but not free).
const MAX_HIGHLIGHTED: usize = 64 * 1024;

/// The classes a token may get (what the sanitizer allows on `<span>`).
pub const CLASSES: [&str; 8] = [
    "hl-comment",
    "hl-string",
    "hl-number",
    "hl-constant",
    "hl-keyword",
    "hl-function",
    "hl-type",
    "hl-attr",
];

fn syntaxes() -> &'static SyntaxSet {
    static SET: OnceLock<SyntaxSet> = OnceLock::new();
    SET.get_or_init(SyntaxSet::load_defaults_newlines)
}

/// Scope prefixes in the order they are tried, innermost scope first, with their class.
fn rules() -> &'static [(Scope, &'static str)] {
    static RULES: OnceLock<Vec<(Scope, &'static str)>> = OnceLock::new();
    RULES.get_or_init(|| {
        [
            ("comment", "hl-comment"),
            ("string", "hl-string"),
            ("constant.numeric", "hl-number"),
            ("constant.character.escape", "hl-string"),
            ("constant", "hl-constant"),
            ("keyword", "hl-keyword"),
            ("storage", "hl-keyword"),
            ("entity.name.function", "hl-function"),
            ("support.function", "hl-function"),
            ("variable.function", "hl-function"),
            ("entity.name.tag", "hl-keyword"),
            ("entity.other.attribute-name", "hl-attr"),
            ("entity.name", "hl-type"),
            ("support.type", "hl-type"),
            ("support.class", "hl-type"),
            ("entity.other.inherited-class", "hl-type"),
            ("markup.heading", "hl-keyword"),
        ]
        .into_iter()
        .filter_map(|(s, c)| Scope::new(s).ok().map(|s| (s, c)))
        .collect()
    })
}

/// The grammar for a fence's language (`rust`, `py`, `sh`, …), if there is one.
fn syntax_for(lang: &str) -> Option<&'static SyntaxReference> {
    let set = syntaxes();
    let lang = lang.trim();
    if lang.is_empty() || lang.eq_ignore_ascii_case("text") {
        return None;
    }
    set.find_syntax_by_token(lang)
        .or_else(|| set.find_syntax_by_token(&lang.to_ascii_lowercase()))
}

fn class_of(stack: &ScopeStack) -> Option<&'static str> {
    stack.as_slice().iter().rev().find_map(|scope| {
        rules()
            .iter()
            .find(|(prefix, _)| prefix.is_prefix_of(*scope))
            .map(|(_, class)| *class)
    })
}

/// Appends `code` as escaped HTML, its tokens wrapped in `<span class="hl-…">` when the
/// language is known; plain escaped text otherwise (or when the grammar fails).
pub fn push_code(out: &mut String, lang: Option<&str>, code: &str) {
    let syntax = lang.and_then(syntax_for);
    match syntax {
        Some(s) if code.len() <= MAX_HIGHLIGHTED => {
            let mut html = String::with_capacity(code.len() * 2);
            if highlight(&mut html, s, code).is_some() {
                out.push_str(&html);
                return;
            }
        }
        _ => {}
    }
    push_escaped(out, code);
}

fn highlight(out: &mut String, syntax: &SyntaxReference, code: &str) -> Option<()> {
    let set = syntaxes();
    let mut state = ParseState::new(syntax);
    let mut stack = ScopeStack::new();
    for line in LinesWithEndings::from(code) {
        let ops = state.parse_line(line, set).ok()?;
        let mut at = 0;
        for (pos, op) in ops {
            push_token(out, &line[at..pos], class_of(&stack));
            at = pos;
            stack
                .apply_with_hook(&op, |_: BasicScopeStackOp, _: &[Scope]| {})
                .ok()?;
        }
        push_token(out, &line[at..], class_of(&stack));
    }
    Some(())
}

fn push_token(out: &mut String, text: &str, class: Option<&str>) {
    if text.is_empty() {
        return;
    }
    match class {
        // Whitespace needs no colour; leaving it bare keeps the markup small.
        Some(class) if !text.trim().is_empty() => {
            out.push_str("<span class=\"");
            out.push_str(class);
            out.push_str("\">");
            push_escaped(out, text);
            out.push_str("</span>");
        }
        _ => push_escaped(out, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(lang: &str, src: &str) -> String {
        let mut s = String::new();
        push_code(&mut s, Some(lang), src);
        s
    }

    #[test]
    fn rust_gets_keywords_strings_and_comments() {
        let html = code(
            "rust",
            "// hi\nfn main() { let x = \"<b>\"; println!(\"{}\", 42); }\n",
        );
        assert!(html.contains(r#"<span class="hl-comment"> hi"#), "{html}");
        assert!(
            html.contains(r#"<span class="hl-keyword">fn</span>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<span class="hl-number">42</span>"#),
            "{html}"
        );
        assert!(html.contains("&lt;b&gt;"), "escaped: {html}");
        assert!(!html.contains("<b>"), "{html}");
    }

    #[test]
    fn python_and_short_names_are_found() {
        for lang in [
            "python", "py", "Python", "sh", "bash", "json", "js", "c", "cpp",
        ] {
            assert!(syntax_for(lang).is_some(), "{lang}");
        }
        assert!(syntax_for("text").is_none());
        assert!(syntax_for("no-such-language").is_none());
    }

    #[test]
    fn unknown_languages_and_huge_blocks_stay_plain_and_escaped() {
        assert_eq!(code("klingon", "a < b"), "a &lt; b");
        let big = "x = 1\n".repeat(MAX_HIGHLIGHTED / 6 + 10);
        assert!(!code("python", &big).contains("<span"));
    }

    #[test]
    fn an_unfinished_block_highlights_what_is_there() {
        let html = code("python", "def f(x):\n    return \"unterminated");
        assert!(
            html.contains(r#"<span class="hl-keyword">def</span>"#),
            "{html}"
        );
        assert!(html.contains("unterminated"), "{html}");
    }
}
