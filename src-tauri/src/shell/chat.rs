//! The terminal chat (`smollm3-bot chat`): a line-editing prompt that streams the engine's
//! replies, shows the reasoning dimmed and apart from the answer, takes the app's slash commands
//! (`app::commands`, the same the message box takes, plus `/quit`), and
//! stops a reply on Ctrl-C without leaving the program.

use crate::app::commands::{self, SlashCommand};
use crate::engine::loader::LoadedModel;
use crate::engine::{
    ChatMessage, Engine, EngineEvent, EngineOptions, FinishReason, GenerateRequest,
    GenerationStats, Generator, JobHandle, Quote, SamplingParams,
};
use anyhow::Context;
use chrono::NaiveDate;
use clap::Args;
use rustyline::error::ReadlineError;
use rustyline::{Cmd, ConditionalEventHandler, Event, EventContext, EventHandler, KeyEvent};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

/// `chat` arguments.
#[derive(Args, Debug)]
pub struct ChatArgs {
    /// The GGUF model file.
    #[arg(long, env = "MODEL_PATH")]
    pub model: PathBuf,
    /// A tokenizer.json to use instead of the GGUF's vocabulary.
    #[arg(long, env = "TOKENIZER_PATH")]
    pub tokenizer: Option<PathBuf>,
    /// Start with the reasoning mode off (`/think` turns it back on).
    #[arg(long)]
    pub no_think: bool,
    /// A system prompt for the whole conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Sampling temperature; 0 always picks the most likely token.
    #[arg(long, default_value_t = 0.6)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass (1 is off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 is off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// The most tokens one reply may have (reasoning included).
    #[arg(long, default_value_t = 2048)]
    pub max_tokens: usize,
    /// Random seed, for replies that repeat from run to run.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Tokens of context for the conversation (at most the model's own).
    #[arg(long, default_value_t = 8192)]
    pub context: usize,
    /// Matmul threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// After this many reasoning tokens, close the reasoning and answer.
    #[arg(long)]
    pub thinking_budget: Option<usize>,
}

/// What one line typed at the prompt means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Nothing but whitespace.
    Empty,
    /// A message for the model.
    Message(String),
    /// One of the chat's slash commands (the same the app's message box takes).
    Command(SlashCommand),
    /// `/quit` (or `/exit`, `/q`): leave the program, the terminal's own command.
    Quit,
    /// A line that looks like a command but is not one; the text says why, for the user.
    Invalid(String),
}

/// Reads one prompt line. A leading `//` sends the rest, starting with `/`, as a message.
pub fn parse_input(line: &str) -> Input {
    let text = line.trim();
    if text.is_empty() {
        return Input::Empty;
    }
    if let Some(rest) = text.strip_prefix("//") {
        return Input::Message(format!("/{rest}"));
    }
    if matches!(text, "/quit" | "/exit" | "/q") {
        return Input::Quit;
    }
    match commands::parse(text) {
        None if text == "/" => {
            Input::Invalid(commands::CommandError::Unknown(String::new()).to_string())
        }
        None => Input::Message(text.to_string()),
        Some(Ok(command)) => Input::Command(command),
        Some(Err(e)) => {
            Input::Invalid(format!("{e} (start a message with // to send a leading /)"))
        }
    }
}

/// The `/help` text: the chat's commands, then the terminal's own.
pub fn help() -> String {
    let mut out = String::from("commands:\n");
    for (command, what) in commands::HELP {
        out.push_str(&format!("  {command:<14} {what}\n"));
    }
    out.push_str(
        "  /quit          leave (Ctrl-D, or Ctrl-C twice at an empty prompt, too)\n\
         keys: Ctrl-C while a reply streams stops it; //text sends a message starting with /",
    );
    out
}

/// Why a reply ended, in words.
pub fn finish_label(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length (max tokens)",
        FinishReason::ContextFull => "context full",
        FinishReason::Cancelled => "cancelled",
    }
}

fn rate(tps: f64) -> String {
    if !(tps.is_finite() && tps > 0.0) {
        "-".to_string()
    } else if tps >= 100.0 {
        format!("{tps:.0}")
    } else {
        format!("{tps:.1}")
    }
}

fn duration(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else {
        format!("{seconds:.2} s")
    }
}

/// The line printed after each reply.
pub fn format_stats(s: &GenerationStats) -> String {
    format!(
        "[{} tokens · prompt {} ({} cached) · TTFT {} · prefill {} tok/s · decode {} tok/s · finish: {}]",
        s.generated_tokens,
        s.prompt_tokens,
        s.reused_tokens,
        duration(s.ttft_s),
        rate(s.prefill_tps),
        rate(s.decode_tps),
        finish_label(s.finish_reason),
    )
}

/// Whether to write ANSI styles: only to a terminal, and never when `NO_COLOR` is set to
/// something (see no-color.org).
pub fn use_color(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    None,
    Reasoning,
    Answer,
}

/// Writes a streamed reply: reasoning between `[thinking]` and `[/thinking]` (dimmed in colour
/// mode), then the answer after a blank line. Newlines at the start of a section are dropped,
/// because the template puts some after `<think>` and `</think>`.
#[derive(Debug)]
pub struct ReplyPrinter {
    color: bool,
    section: Section,
    /// The last character written, to end the reply on a fresh line.
    last: Option<char>,
}

impl ReplyPrinter {
    /// A printer for one reply.
    pub fn new(color: bool) -> Self {
        Self {
            color,
            section: Section::None,
            last: None,
        }
    }

    fn style<'a>(&self, code: &'a str) -> &'a str {
        if self.color {
            code
        } else {
            ""
        }
    }

    fn newline_if_needed(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        if self.last.is_some_and(|c| c != '\n') {
            out.write_all(b"\n")?;
            self.last = Some('\n');
        }
        Ok(())
    }

    fn close_reasoning(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        if self.section == Section::Reasoning {
            self.newline_if_needed(out)?;
            write!(out, "[/thinking]{}\n\n", self.style(RESET))?;
            self.last = Some('\n');
        }
        Ok(())
    }

    fn text(&mut self, out: &mut dyn Write, text: &str, section: Section) -> std::io::Result<()> {
        let text = terminal_safe(text);
        let text = text.as_ref();
        let text = if self.section == section {
            text
        } else {
            // Hold back leading newlines until the section has real text.
            let trimmed = text.trim_start_matches(['\n', '\r']);
            if trimmed.is_empty() {
                return Ok(());
            }
            self.close_reasoning(out)?;
            if section == Section::Reasoning {
                self.newline_if_needed(out)?;
                writeln!(out, "{}[thinking]", self.style(DIM))?;
            }
            self.section = section;
            trimmed
        };
        out.write_all(text.as_bytes())?;
        if let Some(c) = text.chars().last() {
            self.last = Some(c);
        }
        out.flush()
    }

    /// Reasoning text.
    pub fn reasoning(&mut self, out: &mut dyn Write, text: &str) -> std::io::Result<()> {
        self.text(out, text, Section::Reasoning)
    }

    /// Answer text.
    pub fn answer(&mut self, out: &mut dyn Write, text: &str) -> std::io::Result<()> {
        self.text(out, text, Section::Answer)
    }

    /// Ends the reply: closes the reasoning if it was cut short and ends the line.
    pub fn finish(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        self.close_reasoning(out)?;
        self.newline_if_needed(out)?;
        out.flush()
    }

    /// A dimmed line of figures or notes, on its own line.
    pub fn note(&self, out: &mut dyn Write, text: &str) -> std::io::Result<()> {
        writeln!(out, "{}{text}{}", self.style(DIM), self.style(RESET))
    }

    /// An error, red in colour mode.
    pub fn error(&self, out: &mut dyn Write, text: &str) -> std::io::Result<()> {
        writeln!(out, "{}error: {text}{}", self.style(RED), self.style(RESET))
    }
}

/// Model text as it may reach a terminal: control characters other than newline and tab are
/// dropped. An escape sequence (ESC, CSI), a carriage return or a bell generated by the model
/// could otherwise move the cursor, rewrite what is on screen, change the window title or
/// talk to the terminal itself.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if text.chars().any(unsafe_char) {
        text.chars().filter(|&c| !unsafe_char(c)).collect()
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// A second Ctrl-C at an empty prompt within this time leaves the program; a single one only
/// says how to leave. A Ctrl-C meant for a reply that ended just before it is pressed lands at
/// the prompt, and must not end the session.
const QUIT_WINDOW: Duration = Duration::from_millis(1500);

/// Ctrl-C at the prompt: clear the line when it has text; when it is empty, report it
/// (the loop decides whether that leaves, see [`QUIT_WINDOW`]).
struct CtrlC;

impl ConditionalEventHandler for CtrlC {
    fn handle(
        &self,
        _evt: &Event,
        _n: rustyline::RepeatCount,
        _positive: bool,
        ctx: &EventContext,
    ) -> Option<Cmd> {
        if ctx.line().is_empty() {
            Some(Cmd::Interrupt)
        } else {
            Some(Cmd::Kill(rustyline::Movement::WholeLine))
        }
    }
}

/// Ctrl-C while a reply streams. The handler is installed once, before the first reply, so
/// that SIGINT never takes its default action (ending the program) while the engine runs.
struct Interrupts {
    #[cfg(unix)]
    inner: tokio::signal::unix::Signal,
    #[cfg(windows)]
    inner: tokio::signal::windows::CtrlC,
}

impl Interrupts {
    /// Must run inside the runtime.
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        let inner = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
        #[cfg(windows)]
        let inner = tokio::signal::windows::ctrl_c();
        Ok(Self {
            inner: inner.context("cannot listen for Ctrl-C")?,
        })
    }

    async fn recv(&mut self) {
        self.inner.recv().await;
    }

    /// Drops a Ctrl-C pressed between replies, so it cannot stop the next one.
    async fn drain(&mut self) {
        while let Ok(Some(())) = tokio::time::timeout(Duration::ZERO, self.inner.recv()).await {}
    }
}

/// One terminal conversation and the settings that apply to its next turn.
struct Session {
    engine: Engine,
    model_name: String,
    load_s: f64,
    /// The engine's cache key; a new one after `/clear`.
    key: String,
    cleared: u64,
    system: Option<String>,
    history: Vec<ChatMessage>,
    today: NaiveDate,
    thinking: bool,
    thinking_budget: Option<usize>,
    params: SamplingParams,
    last: Option<GenerationStats>,
    color: bool,
}

impl Session {
    fn request(&self, user: &str) -> GenerateRequest {
        let mut messages = Vec::with_capacity(self.history.len() + 2);
        if let Some(s) = &self.system {
            messages.push(ChatMessage::new("system", s.clone()));
        }
        messages.extend(self.history.iter().cloned());
        messages.push(ChatMessage::new("user", user));
        GenerateRequest {
            params: self.params.clone(),
            enable_thinking: self.thinking,
            thinking_budget: self.thinking_budget,
            ..GenerateRequest::new(Some(self.key.clone()), messages, self.today)
        }
    }

    fn clear(&mut self) {
        self.engine.forget(&self.key);
        self.cleared += 1;
        self.key = format!("terminal-{}", self.cleared);
        self.history.clear();
        self.today = today();
        self.last = None;
    }

    fn status(&self) -> String {
        let p = &self.params;
        let top_k = if p.top_k == 0 {
            "off".to_string()
        } else {
            p.top_k.to_string()
        };
        let seed = p.seed.map_or("random".to_string(), |s| s.to_string());
        let budget = self
            .thinking_budget
            .map_or("none".to_string(), |b| format!("{b} tokens"));
        let system = match &self.system {
            Some(s) if s.chars().count() > 60 => {
                format!("{:?}…", s.chars().take(60).collect::<String>())
            }
            Some(s) => format!("{s:?}"),
            None => "none".to_string(),
        };
        let last = self
            .last
            .as_ref()
            .map_or("none yet".to_string(), format_stats);
        format!(
            "model: {} (loaded in {:.1} s)\n\
             context: {} / {} tokens used\n\
             thinking: {} (budget: {budget})\n\
             sampling: temperature {}, top-p {}, top-k {top_k}, max tokens {}, seed {seed}\n\
             system prompt: {system}\n\
             today: {}\n\
             messages: {}\n\
             last reply: {last}",
            self.model_name,
            self.load_s,
            self.engine.cached_tokens(&self.key),
            self.engine.context_size(),
            if self.thinking { "on" } else { "off" },
            p.temperature,
            p.top_p,
            p.max_tokens,
            self.today,
            self.history.len(),
        )
    }

    /// Streams one reply; Ctrl-C stops it. The exchange joins the history unless it failed.
    async fn reply(
        &mut self,
        user: &str,
        quote: Option<&str>,
        interrupts: &mut Interrupts,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        interrupts.drain().await;
        // `/quote` streams through the same events as a model reply, without the model.
        let JobHandle {
            mut events, cancel, ..
        } = match quote {
            Some(text) => Quote::new(text).submit(self.request(user)),
            None => self.engine.submit(self.request(user)),
        };
        let mut printer = ReplyPrinter::new(self.color);
        let mut answer = String::new();
        let mut stopping = false;
        let ended = loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(EngineEvent::Reasoning { text }) => printer.reasoning(out, &text)?,
                    Some(EngineEvent::Answer { text }) => {
                        answer.push_str(&text);
                        printer.answer(out, &text)?;
                    }
                    Some(EngineEvent::Done { stats, token_ids }) => break Ok((stats, token_ids)),
                    Some(EngineEvent::Error { message }) => break Err(message),
                    Some(
                        EngineEvent::Started { .. }
                        | EngineEvent::Queued { .. }
                        | EngineEvent::Logprob { .. },
                    ) => {}
                    None => break Err("the engine stopped unexpectedly".to_string()),
                },
                _ = interrupts.recv(), if !stopping => {
                    // The engine checks the token before each step; Done follows at once.
                    cancel.cancel();
                    stopping = true;
                }
            }
        };
        printer.finish(out)?;
        match ended {
            Ok((stats, _)) if quote.is_some() => printer.note(out, &format_stats(&stats))?,
            Ok((stats, token_ids)) => {
                self.history.push(ChatMessage::new("user", user));
                self.history.push(ChatMessage {
                    role: "assistant".into(),
                    content: answer,
                    token_ids: Some(token_ids),
                });
                printer.note(out, &format_stats(&stats))?;
                if stats.finish_reason == FinishReason::ContextFull {
                    printer.note(out, "the context is full; /clear starts a new conversation")?;
                }
                self.last = Some(stats);
            }
            Err(message) => {
                printer.error(out, &message)?;
                printer.note(
                    out,
                    "the message was not added to the conversation; /clear starts a new one, --context sets the context size",
                )?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

fn today() -> NaiveDate {
    chrono::Local::now().date_naive()
}

/// Runs the terminal chat until `/quit`, Ctrl-D, or Ctrl-C twice at an empty prompt.
pub fn run(a: ChatArgs) -> anyhow::Result<()> {
    let params = SamplingParams {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        seed: a.seed,
        max_tokens: a.max_tokens,
        ..SamplingParams::default()
    };
    params
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid settings: {e}"))?;
    let color = use_color(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    eprintln!("loading {} …", a.model.display());
    let loaded = LoadedModel::open(&a.model, a.tokenizer.as_deref())?;
    let load_s = loaded.load_s;
    let engine = Engine::start(
        loaded,
        EngineOptions {
            context_size: a.context,
            kv_dtype: EngineOptions::default().kv_dtype,
            max_slots: 1,
            snapshots: None,
            // One person at a terminal: one reply at a time.
            max_batch: 1,
            kv_budget_bytes: 0,
        },
    )
    .context("cannot start the engine")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut interrupts = {
        let _guard = rt.enter();
        Interrupts::install()?
    };
    let mut session = Session {
        model_name: engine.status().model,
        engine: engine.clone(),
        load_s,
        key: "terminal-0".into(),
        cleared: 0,
        system: a.system.filter(|s| !s.trim().is_empty()),
        history: Vec::new(),
        today: today(),
        thinking: !a.no_think,
        thinking_budget: a.thinking_budget,
        params,
        last: None,
        color,
    };
    let mut editor = rustyline::DefaultEditor::new().context("cannot open the terminal")?;
    editor.bind_sequence(
        KeyEvent::ctrl('C'),
        EventHandler::Conditional(Box::new(CtrlC)),
    );
    let mut stdout = std::io::stdout();
    let printer = ReplyPrinter::new(color);
    printer.note(
        &mut stdout,
        &format!(
            "{} loaded in {:.1} s · context {} tokens · thinking {} · /help for commands, Ctrl-C stops a reply, Ctrl-D leaves",
            session.model_name,
            load_s,
            engine.context_size(),
            if session.thinking { "on" } else { "off" }
        ),
    )?;
    let mut interrupted_at: Option<std::time::Instant> = None;
    let result = loop {
        let line = match editor.readline("> ") {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                if interrupted_at.is_some_and(|t| t.elapsed() < QUIT_WINDOW) {
                    break Ok(());
                }
                interrupted_at = Some(std::time::Instant::now());
                printer.note(&mut stdout, "Ctrl-C again leaves (or Ctrl-D, or /quit)")?;
                continue;
            }
            Err(ReadlineError::Eof) => break Ok(()),
            Err(e) => break Err(anyhow::Error::new(e).context("cannot read the prompt")),
        };
        interrupted_at = None;
        match parse_input(&line) {
            Input::Empty => {}
            Input::Invalid(why) => printer.error(&mut stdout, &why)?,
            Input::Message(text) => {
                let _ = editor.add_history_entry(line.trim());
                if let Err(e) =
                    rt.block_on(session.reply(&text, None, &mut interrupts, &mut stdout))
                {
                    // Only a broken stdout gets here; nothing more can be shown.
                    break Err(e);
                }
            }
            Input::Quit => break Ok(()),
            Input::Command(cmd) => {
                let _ = editor.add_history_entry(line.trim());
                match cmd {
                    SlashCommand::Quote(text) => {
                        if let Err(e) = rt.block_on(session.reply(
                            line.trim(),
                            Some(&text),
                            &mut interrupts,
                            &mut stdout,
                        )) {
                            break Err(e);
                        }
                    }
                    SlashCommand::Help => writeln!(stdout, "{}", help())?,
                    SlashCommand::Status => writeln!(stdout, "{}", session.status())?,
                    SlashCommand::Think => {
                        session.thinking = true;
                        printer.note(&mut stdout, "thinking on for the following turns")?;
                    }
                    SlashCommand::NoThink => {
                        session.thinking = false;
                        printer.note(&mut stdout, "thinking off for the following turns")?;
                    }
                    SlashCommand::Clear => {
                        session.clear();
                        printer.note(&mut stdout, "new conversation")?;
                    }
                }
            }
        }
    };
    engine.shutdown();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slash_commands_parse() {
        assert_eq!(parse_input("/think"), Input::Command(SlashCommand::Think));
        assert_eq!(
            parse_input("  /no_think "),
            Input::Command(SlashCommand::NoThink)
        );
        assert_eq!(parse_input("/clear"), Input::Command(SlashCommand::Clear));
        assert_eq!(parse_input("/status"), Input::Command(SlashCommand::Status));
        assert_eq!(parse_input("/help"), Input::Command(SlashCommand::Help));
        assert_eq!(
            parse_input("/quote hi"),
            Input::Command(SlashCommand::Quote("hi".into()))
        );
        assert_eq!(parse_input("/quit"), Input::Quit);
        assert_eq!(parse_input("/exit"), Input::Quit);
        assert!(help().contains("/quote") && help().contains("/quit"));
    }

    #[test]
    fn messages_and_empty_lines() {
        assert_eq!(parse_input(""), Input::Empty);
        assert_eq!(parse_input("   \t "), Input::Empty);
        assert_eq!(
            parse_input("  hello there  "),
            Input::Message("hello there".into())
        );
        // A slash inside a message is text.
        assert_eq!(
            parse_input("what is 1/2?"),
            Input::Message("what is 1/2?".into())
        );
        assert_eq!(
            parse_input("//think is a flag"),
            Input::Message("/think is a flag".into())
        );
    }

    #[test]
    fn bad_commands_say_why() {
        match parse_input("/thnik") {
            Input::Invalid(why) => assert!(why.contains("/thnik") && why.contains("/help")),
            other => panic!("{other:?}"),
        }
        match parse_input("/clear now") {
            Input::Invalid(why) => assert!(why.contains("takes no argument")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_input("/"), Input::Invalid(_)));
    }

    fn stats(finish_reason: FinishReason) -> GenerationStats {
        GenerationStats {
            prompt_tokens: 120,
            reused_tokens: 98,
            generated_tokens: 42,
            ttft_s: 0.2104,
            prefill_tps: 853.27,
            decode_tps: 45.06,
            finish_reason,
        }
    }

    #[test]
    fn stats_line_has_every_figure() {
        assert_eq!(
            format_stats(&stats(FinishReason::Stop)),
            "[42 tokens · prompt 120 (98 cached) · TTFT 210 ms · prefill 853 tok/s · decode 45.1 tok/s · finish: stop]"
        );
    }

    #[test]
    fn stats_line_edge_values() {
        let s = GenerationStats {
            generated_tokens: 1,
            ttft_s: 2.5,
            decode_tps: 0.0,
            prefill_tps: f64::NAN,
            ..stats(FinishReason::Cancelled)
        };
        let line = format_stats(&s);
        assert!(line.contains("TTFT 2.50 s"), "{line}");
        assert!(line.contains("prefill - tok/s"), "{line}");
        assert!(line.contains("decode - tok/s"), "{line}");
        assert!(line.ends_with("finish: cancelled]"), "{line}");
        assert!(format_stats(&stats(FinishReason::ContextFull)).contains("finish: context full"));
        assert!(format_stats(&stats(FinishReason::Length)).contains("finish: length"));
    }

    #[test]
    fn color_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_color(true, None));
        assert!(use_color(true, Some(OsStr::new(""))));
        assert!(!use_color(true, Some(OsStr::new("1"))));
        assert!(!use_color(false, None));
    }

    fn print(color: bool, events: &[(bool, &str)]) -> String {
        let mut out = Vec::new();
        let mut p = ReplyPrinter::new(color);
        for (reasoning, text) in events {
            if *reasoning {
                p.reasoning(&mut out, text).unwrap();
            } else {
                p.answer(&mut out, text).unwrap();
            }
        }
        p.finish(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn reasoning_is_set_apart_from_the_answer() {
        let plain = print(
            false,
            &[
                (true, "\n"),
                (true, "Let me"),
                (true, " think.\n"),
                (false, "\n\n"),
                (false, "Four"),
                (false, "."),
            ],
        );
        assert_eq!(plain, "[thinking]\nLet me think.\n[/thinking]\n\nFour.\n");
        let color = print(true, &[(true, "hmm"), (false, "Yes")]);
        assert_eq!(color, "\x1b[2m[thinking]\nhmm\n[/thinking]\x1b[0m\n\nYes\n");
    }

    #[test]
    fn answer_alone_and_cut_reasoning() {
        assert_eq!(
            print(false, &[(false, "\nHi"), (false, " there")]),
            "Hi there\n"
        );
        // A reply stopped while reasoning still closes the block and resets the style.
        assert_eq!(
            print(true, &[(true, "partial")]),
            "\x1b[2m[thinking]\npartial\n[/thinking]\x1b[0m\n\n"
        );
        assert_eq!(print(false, &[]), "");
    }

    #[test]
    fn control_characters_from_the_model_never_reach_the_terminal() {
        let hostile = "a\x1b]0;owned\x07b\x1b[2J\rc\0d\u{9b}31me\x7f\x08f\n\tg";
        for color in [false, true] {
            let out = print(color, &[(true, hostile), (false, hostile)]);
            // Our own styling is the only escape sequence (in colour mode).
            let ours = out.replace(DIM, "").replace(RESET, "");
            assert!(
                !ours
                    .chars()
                    .any(|c| c.is_control() && c != '\n' && c != '\t'),
                "{out:?}"
            );
            assert!(ours.contains("a]0;ownedb[2Jcd31mef\n\tg"), "{out:?}");
        }
        assert_eq!(terminal_safe("plain\ttext\n"), "plain\ttext\n");
    }
}
