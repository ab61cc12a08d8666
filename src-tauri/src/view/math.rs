//! LaTeX in replies, as MathML the browser lays out itself (WebKitGTK and Chromium both do):
//! `$…$` and `$$…$$` through comrak's dollar-math extension, and `\(…\)` and `\[…\]` (which
//! SmolLM3 writes as often) rewritten to those first, outside code. pulldown-latex turns the
//! LaTeX into MathML; the sanitizer then sees the MathML like any other markup and keeps only
//! the MathML elements and layout attributes it allows (no styles, no links).
//!
//! A formula still streaming (no closing delimiter yet) stays text until it closes; one that
//! does not parse is shown as its source.

use std::borrow::Cow;

use pulldown_latex::config::DisplayMode;
use pulldown_latex::{mathml::push_mathml, Parser, RenderConfig, Storage};

use super::templates::push_escaped;

/// MathML elements the sanitizer keeps.
pub const TAGS: [&str; 27] = [
    "math",
    "semantics",
    "mrow",
    "mi",
    "mn",
    "mo",
    "ms",
    "mtext",
    "mspace",
    "msup",
    "msub",
    "msubsup",
    "mfrac",
    "msqrt",
    "mroot",
    "mover",
    "munder",
    "munderover",
    "mtable",
    "mtr",
    "mtd",
    "mstyle",
    "mpadded",
    "mphantom",
    "menclose",
    "merror",
    "mmultiscripts",
];

/// Layout attributes the sanitizer keeps on them.
pub const ATTRIBUTES: [&str; 22] = [
    "display",
    "mathvariant",
    "stretchy",
    "fence",
    "separator",
    "largeop",
    "movablelimits",
    "accent",
    "accentunder",
    "lspace",
    "rspace",
    "minsize",
    "maxsize",
    "symmetric",
    "displaystyle",
    "scriptlevel",
    "linethickness",
    "columnalign",
    "rowalign",
    "columnspacing",
    "rowspacing",
    "notation",
];

/// Rewrites `\(…\)` as `$…$` and `\[…\]` as `$$…$$` outside fenced code and code spans, so
/// the dollar-math extension sees every formula. An opening delimiter without its closing one
/// (a reply still streaming) is left as it is.
pub fn normalize_delimiters(md: &str) -> Cow<'_, str> {
    if !md.contains("\\(") && !md.contains("\\[") {
        return Cow::Borrowed(md);
    }
    let mut out = String::with_capacity(md.len() + 8);
    let mut rest = md;
    let mut fence: Option<(u8, usize)> = None;
    while !rest.is_empty() {
        let line_end = rest.find('\n').map_or(rest.len(), |i| i + 1);
        let line = &rest[..line_end];
        let trimmed = line.trim_start_matches(' ');
        if line.len() - trimmed.len() <= 3 {
            if let Some((c, n)) = fence_marker(trimmed) {
                fence = match fence {
                    None => Some((c, n)),
                    Some((open, len))
                        if open == c && n >= len && trimmed[n..].trim().is_empty() =>
                    {
                        None
                    }
                    f => f,
                };
                out.push_str(line);
                rest = &rest[line_end..];
                continue;
            }
        }
        let used = if fence.is_some() {
            out.push_str(line);
            line_end
        } else {
            rewrite_line(&mut out, rest, line_end)
        };
        rest = &rest[used..];
    }
    Cow::Owned(out)
}

/// A fence opening or closing a code block: its character and length.
fn fence_marker(line: &str) -> Option<(u8, usize)> {
    let c = *line.as_bytes().first()?;
    if c != b'`' && c != b'~' {
        return None;
    }
    let n = line.bytes().take_while(|&b| b == c).count();
    (n >= 3).then_some((c, n))
}

/// Copies the line at the start of `text` (`line_end` bytes) with its delimiters rewritten;
/// a display formula may end on a later line. Returns the bytes consumed.
fn rewrite_line(out: &mut String, text: &str, line_end: usize) -> usize {
    let mut i = 0;
    while i < line_end {
        let rest = &text[i..];
        if rest.starts_with('`') {
            // A code span: copied as is up to the same run of backticks on this line.
            let n = rest.bytes().take_while(|&b| b == b'`').count();
            let ticks = &rest[..n];
            let line_rest = &text[i + n..line_end];
            let close = line_rest.find(ticks).map_or(line_rest.len(), |p| p + n);
            out.push_str(&text[i..i + n + close]);
            i += n + close;
            continue;
        }
        if let Some(inner) = rest.strip_prefix("\\(") {
            let line_inner = &inner[..line_end - i - 2];
            if let Some(end) = line_inner.find("\\)") {
                push_formula(out, "$", &inner[..end]);
                i += 2 + end + 2;
                continue;
            }
        }
        if let Some(inner) = rest.strip_prefix("\\[") {
            if let Some(end) = inner.find("\\]") {
                push_formula(out, "$$", &inner[..end]);
                i += 2 + end + 2;
                continue;
            }
        }
        let ch = rest.chars().next().expect("not at the end");
        out.push(ch);
        i += ch.len_utf8();
    }
    i
}

fn push_formula(out: &mut String, delimiter: &str, latex: &str) {
    let latex = latex.trim();
    if latex.is_empty() {
        return;
    }
    out.push_str(delimiter);
    out.push_str(latex);
    out.push_str(delimiter);
}

/// Replaces the formulas comrak rendered (`<span data-math-style="inline|display">` around
/// the escaped LaTeX) with MathML. Model text never produces that markup itself: comrak
/// escapes every `<` of it.
pub fn formulas_to_mathml(html: &str) -> Cow<'_, str> {
    const OPEN: &str = "<span data-math-style=\"";
    if !html.contains(OPEN) {
        return Cow::Borrowed(html);
    }
    let mut out = String::with_capacity(html.len() * 2);
    let mut rest = html;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        let parsed = after.split_once("\">").and_then(|(style, body)| {
            let (latex, tail) = body.split_once("</span>")?;
            Some((style == "display", latex, tail))
        });
        let Some((display, escaped, tail)) = parsed else {
            out.push_str(&rest[at..]);
            return Cow::Owned(out);
        };
        let latex = unescape(escaped);
        match to_mathml(&latex, display) {
            Some(mathml) => out.push_str(&mathml),
            None => {
                let d = if display { "$$" } else { "$" };
                out.push_str(d);
                push_escaped(&mut out, &latex);
                out.push_str(d);
            }
        }
        rest = tail;
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Undoes comrak's escaping of text.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// LaTeX as a `<math>` element; `None` when it does not parse.
pub fn to_mathml(latex: &str, display: bool) -> Option<String> {
    let storage = Storage::new();
    let events: Vec<_> = Parser::new(latex, &storage).collect();
    if events.iter().any(Result::is_err) {
        return None;
    }
    let config = RenderConfig {
        display_mode: if display {
            DisplayMode::Block
        } else {
            DisplayMode::Inline
        },
        ..RenderConfig::default()
    };
    let mut mathml = String::new();
    push_mathml(&mut mathml, events.into_iter(), config).ok()?;
    Some(escape_text(&mathml))
}

/// pulldown-latex writes text as it is (`<mo><</mo>` for `a < b`): every `<` that does not
/// open or close one of its elements, and every `&` that starts no entity, is escaped here,
/// so the browser (and the sanitizer after this) reads the text as text.
fn escape_text(mathml: &str) -> String {
    let mut out = String::with_capacity(mathml.len() + 16);
    let mut rest = mathml;
    while let Some(at) = rest.find(['<', '&']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let keep = if let Some(after) = tail.strip_prefix('<') {
            let name = after.strip_prefix('/').unwrap_or(after);
            let len = name.bytes().take_while(u8::is_ascii_alphabetic).count();
            len > 0
                && matches!(name.as_bytes().get(len), Some(b' ' | b'>' | b'/'))
                && (name[..len] == *"annotation" || TAGS.contains(&&name[..len]))
        } else {
            let len = tail[1..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'#')
                .count();
            len > 0 && tail.as_bytes().get(1 + len) == Some(&b';')
        };
        match (keep, tail.as_bytes()[0]) {
            (true, _) => out.push(tail.as_bytes()[0] as char),
            (false, b'<') => out.push_str("&lt;"),
            (false, _) => out.push_str("&amp;"),
        }
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parenthesis_and_bracket_delimiters_become_dollars() {
        assert_eq!(
            normalize_delimiters(r"so \( e^{i\pi} + 1 = 0 \) holds"),
            r"so $e^{i\pi} + 1 = 0$ holds"
        );
        assert_eq!(
            normalize_delimiters("then\n\\[\n\\int_0^1 x\\,dx\n\\]\nend"),
            "then\n$$\\int_0^1 x\\,dx$$\nend"
        );
        // Unclosed (still streaming): left alone.
        assert_eq!(normalize_delimiters(r"a \( x + "), r"a \( x + ");
    }

    #[test]
    fn code_keeps_its_backslashes() {
        let md = "`\\(x\\)` and\n```\nre = \\(a\\)\n```\n\\(y\\)";
        assert_eq!(
            normalize_delimiters(md),
            "`\\(x\\)` and\n```\nre = \\(a\\)\n```\n$y$"
        );
    }

    #[test]
    fn formulas_become_mathml_and_bad_ones_stay_source() {
        let html = formulas_to_mathml(
            "<p>x <span data-math-style=\"inline\">a &lt; b</span> and \
             <span data-math-style=\"display\">\\frac{1}{2</span></p>",
        );
        assert!(html.contains("<math"), "{html}");
        assert!(html.contains("<mo>&lt;</mo>"), "{html}");
        assert!(
            html.contains("$$\\frac{1}{2$$"),
            "unparsable shown as source: {html}"
        );
    }

    #[test]
    fn text_in_formulas_is_text() {
        let m = to_mathml(r"\text{<script>alert(1)</script> & <b>x</b>} a<b", false).unwrap();
        assert!(!m.contains("<script"), "{m}");
        assert!(!m.contains("<b>"), "{m}");
        assert!(
            m.contains("&lt;script&gt;") || m.contains("&lt;script>"),
            "{m}"
        );
        assert!(m.contains("&amp;"), "{m}");
    }
}
