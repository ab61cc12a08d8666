//! Model output (markdown) to HTML that is safe to insert into the page.
//!
//! Two layers: comrak renders GitHub-flavoured markdown with raw HTML shown as text and
//! dangerous link schemes blanked, then ammonia parses the result and keeps only an allow-list
//! of tags, attributes, classes and URL schemes. Nothing in the output can run script or load
//! remote content: images become their alt text, links may only be http, https or mailto and
//! carry `rel="noopener noreferrer nofollow"`, and there are no inline handlers or styles.
//!
//! Fenced code blocks come wrapped for the interface:
//!
//! ```html
//! <div class="code-block"><div class="code-head"><span class="code-lang">rust</span>
//! <button class="copy" type="button" data-copy="">Copy</button></div><pre><code>…</code></pre></div>
//! ```
//!
//! The copy button carries no handler; a script outside the fragment handles clicks on
//! `[data-copy]` (the content security policy forbids inline script).
//!
//! SmolLM3's `<tool_call>` blocks are cut out first and shown as blocks of their own (see
//! `tool_calls`); the text around them is markdown as above.
//!
//! Rendering is linear in the input and takes no locks, so it can be called again on a
//! growing reply while it streams; an unterminated code fence renders as a code block that
//! runs to the end of the text, and an unclosed tool call as a block marked incomplete.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::OnceLock;

use comrak::adapters::SyntaxHighlighterAdapter;
use comrak::nodes::NodeValue;
use comrak::options::Plugins;
use comrak::{format_html_with_plugins, parse_document, Arena, Options};

use super::templates::{escape, push_escaped};
use super::tool_calls::{self, Piece};
use super::{highlight, math};

/// Renders markdown as sanitized HTML (see the module documentation for what survives).
pub fn render_markdown(md: &str) -> String {
    let mut html = String::with_capacity(md.len() * 3 / 2 + 64);
    for piece in tool_calls::split(md) {
        match piece {
            Piece::Text(text) => push_markdown(&mut html, &math::normalize_delimiters(text)),
            call => tool_calls::push_html(&mut html, &call),
        }
    }
    sanitizer().clean(&html).to_string()
}

/// Appends the HTML of markdown `md`, not yet sanitized.
fn push_markdown(html: &mut String, md: &str) {
    let options = comrak_options();
    let arena = Arena::new();
    let root = parse_document(&arena, md, options);

    // Images would load remote content; keep their alt text instead.
    let images: Vec<_> = root
        .descendants()
        .filter(|n| matches!(n.data.borrow().value, NodeValue::Image(_)))
        .collect();
    for image in images {
        let alt = image.collect_text();
        for child in image.children().collect::<Vec<_>>() {
            child.detach();
        }
        image.data.borrow_mut().value = NodeValue::Text(Cow::Owned(alt));
    }

    let mut plugins = Plugins::default();
    plugins.render.codefence_syntax_highlighter = Some(&CodeBlocks);
    let mut out = String::with_capacity(md.len() * 3 / 2 + 64);
    if format_html_with_plugins(root, options, &mut out, &plugins).is_err() {
        // Writing to a String cannot fail; should it ever, show the text rather than nothing.
        html.push_str("<p>");
        push_escaped(html, md);
        html.push_str("</p>");
        return;
    }
    let out = math::formulas_to_mathml(&out);
    // The highlighter opened a wrapper before each <pre>; close it after. Only code blocks
    // produce this sequence: text and raw HTML reach this point escaped.
    html.push_str(&out.replace("</code></pre>", "</code></pre></div>"));
}

fn comrak_options() -> &'static Options<'static> {
    static OPTIONS: OnceLock<Options<'static>> = OnceLock::new();
    OPTIONS.get_or_init(|| {
        let mut o = Options::default();
        o.extension.strikethrough = true;
        o.extension.table = true;
        o.extension.autolink = true;
        o.extension.tasklist = true;
        // `$…$` and `$$…$$` (see `math`).
        o.extension.math_dollars = true;
        // Raw HTML from the model is shown as text, never interpreted.
        o.render.r#unsafe = false;
        o.render.escape = true;
        // Puts the fence's language into the <pre> attributes handed to `CodeBlocks`.
        o.render.github_pre_lang = true;
        o
    })
}

fn sanitizer() -> &'static ammonia::Builder<'static> {
    static SANITIZER: OnceLock<ammonia::Builder<'static>> = OnceLock::new();
    SANITIZER.get_or_init(|| {
        let mut b = ammonia::Builder::default();
        b.rm_tags(["img"])
            .add_tags(["button", "input"])
            .add_tags(math::TAGS)
            .add_generic_attributes(math::ATTRIBUTES)
            .add_tag_attributes("button", ["data-copy"])
            .add_tag_attribute_values("button", "type", ["button"])
            .add_tag_attributes("input", ["checked", "disabled"])
            .add_tag_attribute_values("input", "type", ["checkbox"])
            .allowed_classes(HashMap::from([
                (
                    "div",
                    HashSet::from([
                        "code-block",
                        "code-head",
                        "tool-call",
                        "tool-call-head",
                        "pending",
                    ]),
                ),
                (
                    "span",
                    ["code-lang", "tool-call-name", "tool-call-state"]
                        .into_iter()
                        .chain(highlight::CLASSES)
                        .collect(),
                ),
                ("button", HashSet::from(["copy"])),
            ]))
            .url_schemes(HashSet::from(["http", "https", "mailto"]))
            .url_relative(ammonia::UrlRelative::Deny)
            .link_rel(Some("noopener noreferrer nofollow"));
        b
    })
}

/// Writes the wrapper, label and copy button around each fenced code block.
struct CodeBlocks;

impl SyntaxHighlighterAdapter for CodeBlocks {
    fn write_highlighted(
        &self,
        output: &mut dyn fmt::Write,
        lang: Option<&str>,
        code: &str,
    ) -> fmt::Result {
        let mut html = String::with_capacity(code.len() * 2 + 16);
        highlight::push_code(&mut html, lang, code);
        output.write_str(&html)
    }

    fn write_pre_tag(
        &self,
        output: &mut dyn fmt::Write,
        attributes: HashMap<&'static str, Cow<'_, str>>,
    ) -> fmt::Result {
        let lang = attributes
            .get("lang")
            .map(|l| l.as_ref())
            .filter(|l| !l.is_empty())
            .unwrap_or("text");
        output.write_str(
            r#"<div class="code-block"><div class="code-head"><span class="code-lang">"#,
        )?;
        output.write_str(&escape(lang))?;
        output.write_str(
            r#"</span><button class="copy" type="button" data-copy="">Copy</button></div><pre>"#,
        )
    }

    fn write_code_tag(
        &self,
        output: &mut dyn fmt::Write,
        _attributes: HashMap<&'static str, Cow<'_, str>>,
    ) -> fmt::Result {
        output.write_str("<code>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(haystack: &str, needle: &str) -> usize {
        haystack.matches(needle).count()
    }

    #[test]
    fn escape_text_escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">Tom & Jerry's</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;"
        );
        assert_eq!(escape("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn script_tags_are_shown_as_text_never_run() {
        let html =
            render_markdown("Hi <script>alert(1)</script>\n\n<script>\nalert(2)\n</script>\n");
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
    }

    #[test]
    fn img_with_onerror_cannot_load_or_run() {
        let html = render_markdown(
            "look <img src=x onerror=alert(1)> here\n\n<img src=x onerror=alert(1)>\n",
        );
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("onerror=\""), "{html}");
        assert!(html.contains("look"), "{html}");
    }

    #[test]
    fn javascript_links_lose_their_target() {
        for md in [
            "[x](javascript:alert(1))",
            "[x](JAVASCRIPT:alert(1))",
            "<javascript:alert(1)>",
            "[x](data:text/html,hi)",
        ] {
            let html = render_markdown(md);
            assert!(
                !html.to_ascii_lowercase().contains("href=\"javascript"),
                "{md}: {html}"
            );
            assert!(!html.contains("href=\"data:"), "{md}: {html}");
        }
        let html = render_markdown("[x](/etc/passwd) [y](vbscript:msgbox)");
        assert!(
            !html.contains("href"),
            "relative and unknown schemes dropped: {html}"
        );
    }

    #[test]
    fn raw_iframes_and_handlers_are_inert() {
        let html = render_markdown(
            "<iframe src=\"https://evil.example\"></iframe>\n\n<div onclick=\"steal()\">x</div>\n",
        );
        assert!(!html.contains("<iframe"), "{html}");
        assert!(!html.contains("<div onclick"), "{html}");
        assert!(html.contains("&lt;iframe"), "shown as text: {html}");
    }

    #[test]
    fn images_become_alt_text() {
        let html =
            render_markdown("before ![a *small* cat](https://example.com/cat.png \"t\") after");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("example.com"), "{html}");
        assert!(html.contains("before a small cat after"), "{html}");
    }

    #[test]
    fn links_are_marked_and_only_safe_schemes_survive() {
        let html = render_markdown("[site](https://example.com/a?b=1&c=2) and www.rust-lang.org and <mailto:me@example.com>");
        assert!(
            html.contains(r#"<a href="https://example.com/a?b=1&amp;c=2" rel="noopener noreferrer nofollow">site</a>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"href="http://www.rust-lang.org""#),
            "autolinked: {html}"
        );
        assert!(html.contains(r#"href="mailto:me@example.com""#), "{html}");
        assert_eq!(
            count(&html, "rel=\"noopener noreferrer nofollow\""),
            3,
            "{html}"
        );
    }

    #[test]
    fn html_entities_decode_once_and_stay_text() {
        let html = render_markdown("AT&amp;T &lt;b&gt;bold?&lt;/b&gt; &copy; 1 < 2 & 3 > 2");
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("AT&amp;T"), "{html}");
        assert!(html.contains("&lt;b&gt;bold?&lt;/b&gt;"), "{html}");
        assert!(html.contains('©'), "{html}");
        assert!(html.contains("1 &lt; 2 &amp; 3 &gt; 2"), "{html}");
    }

    #[test]
    fn gfm_tables_strikethrough_and_task_lists() {
        let html = render_markdown("| Name | Score |\n|:-----|------:|\n| Ann  | 10 |\n\n~~old~~ new\n\n- [x] done\n- [ ] todo\n");
        assert!(html.contains("<table>"), "{html}");
        assert!(html.contains(r#"<th align="left">Name</th>"#), "{html}");
        assert!(html.contains(r#"<td align="right">10</td>"#), "{html}");
        assert!(html.contains("<del>old</del>"), "{html}");
        assert_eq!(count(&html, r#"type="checkbox""#), 2, "{html}");
        assert!(html.contains("checked"), "{html}");
    }

    #[test]
    fn fenced_code_gets_label_and_copy_button() {
        let html = render_markdown(
            "Try:\n\n```rust\nfn main() { println!(\"<hi> & bye\"); }\n```\n\nDone.",
        );
        assert!(html.contains(r#"<div class="code-block"><div class="code-head"><span class="code-lang">rust</span>"#), "{html}");
        assert!(
            html.contains(r#"<button class="copy" type="button" data-copy="">Copy</button>"#),
            "{html}"
        );
        assert!(
            html.contains("&lt;hi&gt; &amp; bye"),
            "code escaped once: {html}"
        );
        assert!(
            html.contains(r#"<span class="hl-keyword">fn</span>"#),
            "highlighted: {html}"
        );
        assert!(
            html.contains("</code></pre></div>\n<p>Done.</p>"),
            "wrapper closes before the next block: {html}"
        );
        assert!(!html.contains("onclick"), "{html}");
    }

    #[test]
    fn a_tool_call_renders_as_a_block_between_its_text() {
        let html = render_markdown(
            "Checking **now**.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\nThen:\n<tool_call>{\"name\": \"get_time\"}</tool_call>\nDone.",
        );
        assert!(
            !html.contains("tool_call"),
            "no tags, raw or escaped: {html}"
        );
        let at = |needle: &str| {
            html.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing: {html}"))
        };
        let order = [
            at("<p>Checking <strong>now</strong>.</p>"),
            at("<div class=\"tool-call\"><div class=\"tool-call-head\">Tool call: <span class=\"tool-call-name\">get_weather</span></div><pre><code>{\n  \"city\": \"Paris\"\n}</code></pre></div>"),
            at("<p>Then:</p>"),
            at("Tool call: <span class=\"tool-call-name\">get_time</span></div><pre><code>{}</code></pre></div>"),
            at("<p>Done.</p>"),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}: {html}");
        assert_eq!(count(&html, "<div"), count(&html, "</div>"), "{html}");
    }

    #[test]
    fn html_in_a_tool_call_is_escaped() {
        let html = render_markdown(
            "<tool_call>{\"name\": \"<script>alert(1)</script>\", \"arguments\": {\"q\": \"<img src=x onerror=alert(2)>\", \"<b>k</b>\": \"</code></pre></div><iframe>\"}}</tool_call>",
        );
        assert!(html.contains("class=\"tool-call\""), "{html}");
        for bad in ["<script", "<img", "<b>", "<iframe"] {
            assert!(!html.contains(bad), "{bad}: {html}");
        }
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;</span>"),
            "{html}"
        );
        assert!(
            html.contains("&lt;img src=x onerror=alert(2)&gt;"),
            "{html}"
        );
        assert!(
            html.contains("&lt;/code&gt;&lt;/pre&gt;&lt;/div&gt;&lt;iframe&gt;"),
            "{html}"
        );
        assert_eq!(count(&html, "<div"), count(&html, "</div>"), "{html}");
    }

    #[test]
    fn a_malformed_tool_call_stays_escaped_text() {
        let html = render_markdown("Try <tool_call>not json</tool_call> again.");
        assert!(!html.contains("class=\"tool-call"), "{html}");
        assert!(
            html.contains("<p>Try &lt;tool_call&gt;not json&lt;/tool_call&gt; again.</p>"),
            "{html}"
        );
    }

    #[test]
    fn every_prefix_of_a_reply_with_tool_calls_renders_balanced() {
        let reply = "Let me look.\n\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"q\": \"a <b> & c\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
        for end in (0..=reply.len()).filter(|&i| reply.is_char_boundary(i)) {
            let html = render_markdown(&reply[..end]);
            assert_eq!(
                count(&html, "<div"),
                count(&html, "</div>"),
                "prefix {end}: {html}"
            );
            assert!(!html.contains("<tool_call"), "prefix {end}: {html}");
            assert!(!html.contains("<b>"), "prefix {end}: {html}");
        }
        // Mid-call: a block in progress, named once the name is written.
        let html = render_markdown(&reply[..reply.find("\"arguments").unwrap()]);
        assert!(html.contains("<div class=\"tool-call pending\">"), "{html}");
        assert!(
            html.contains("Tool call: <span class=\"tool-call-name\">search</span> <span class=\"tool-call-state\">(incomplete)</span>"),
            "{html}"
        );
    }

    #[test]
    fn code_without_language_and_hostile_info_strings() {
        let html = render_markdown("```\nplain\n```\n\n```\"><script>alert(1)</script>\nx\n```\n");
        assert!(
            html.contains(r#"<span class="code-lang">text</span>"#),
            "{html}"
        );
        assert!(!html.contains("<script"), "{html}");
        assert_eq!(count(&html, "<div class=\"code-block\">"), 2, "{html}");
    }

    #[test]
    fn unterminated_fence_mid_stream_renders_as_open_code_block() {
        let html =
            render_markdown("Here is the loop:\n\n```python\nfor i in range(3):\n    print(i <");
        assert!(html.contains("<p>Here is the loop:</p>"), "{html}");
        assert!(
            html.contains(r#"<span class="code-lang">python</span>"#),
            "{html}"
        );
        assert!(
            html.contains("(i <span class=\"hl-keyword\">&lt;</span>"),
            "{html}"
        );
        assert!(
            html.contains(r#"<span class="hl-keyword">for</span>"#),
            "highlighted while open: {html}"
        );
        assert_eq!(
            count(&html, "<div"),
            count(&html, "</div>"),
            "balanced: {html}"
        );
        assert!(html.trim_end().ends_with("</code></pre></div>"), "{html}");
    }

    #[test]
    fn latex_renders_as_sanitized_mathml_outside_code() {
        let html = render_markdown(
            "Euler: $e^{i\\pi}+1=0$, also \\(a^2\\) and\n\n$$\\sum_{k=1}^n k$$\n\n\
             `$not math$` costs $5 and $10.\n\n$\\text{<img src=x onerror=alert(1)>}$",
        );
        assert_eq!(count(&html, "<math"), 4, "{html}");
        assert!(html.contains(r#"<math display="block">"#), "{html}");
        assert!(html.contains("<code>$not math$</code>"), "{html}");
        assert!(
            html.contains("costs $5 and $10."),
            "prices stay text: {html}"
        );
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("style="), "no inline styles: {html}");
    }

    #[test]
    fn every_prefix_of_a_streaming_reply_renders_balanced() {
        let reply = "# Title\n\nSome **bold** text and a [link](https://example.com).\n\n```js\nconsole.log('<x>');\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nSo $x^2 < y$ and \\[\\frac{a}{b}\\] end.\n";
        for end in (0..=reply.len()).filter(|&i| reply.is_char_boundary(i)) {
            let html = render_markdown(&reply[..end]);
            assert_eq!(
                count(&html, "<div"),
                count(&html, "</div>"),
                "prefix {end}: {html}"
            );
            assert!(!html.contains("<script"), "prefix {end}: {html}");
            assert_eq!(
                count(&html, "<math"),
                count(&html, "</math>"),
                "prefix {end}: {html}"
            );
        }
    }
}
