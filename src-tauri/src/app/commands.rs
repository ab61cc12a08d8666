//! Slash commands typed in the message box (`/think`, `/quote`, …), parsed apart from the
//! service so the parsing can be tested on its own.

/// A parsed slash command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlashCommand {
    /// Turn reasoning on for this conversation.
    Think,
    /// Turn reasoning off for this conversation.
    NoThink,
    /// Start over in a new conversation; the current one stays in the sidebar.
    Clear,
    /// Show the engine's state.
    Status,
    /// List the commands.
    Help,
    /// Stream a quotation (or the given text) word by word, as a model reply would arrive.
    Quote(String),
}

/// Why a line starting with `/` is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The word after `/` names no command.
    #[error("Unknown command /{0}. Type /help to see the commands.")]
    Unknown(String),
    /// The command takes no argument but got one.
    #[error("/{0} takes no argument.")]
    UnexpectedArgument(&'static str),
}

/// One line of help per command, in the order `/help` shows them.
pub const HELP: &[(&str, &str)] = &[
    ("/think", "turn reasoning on for this conversation"),
    ("/no_think", "turn reasoning off for this conversation"),
    (
        "/clear",
        "start over in a new conversation (this one stays in the sidebar)",
    ),
    ("/status", "show the model and engine state"),
    (
        "/quote [text]",
        "stream a quotation (or your text) word by word, without a model",
    ),
    ("/help", "show this list"),
];

/// Keyboard shortcuts of the window and the browser page (`ui/app.js`), listed by `/help`;
/// ⌘ stands for Ctrl on macOS.
pub const SHORTCUTS: &[(&str, &str)] = &[
    ("Ctrl+Shift+O", "new chat"),
    ("Ctrl+K", "search conversations"),
    ("Ctrl+,", "settings"),
    ("Shift+Esc or /", "focus the message box"),
    ("Ctrl+Shift+C", "copy the last reply"),
    ("Ctrl+Shift+Enter", "regenerate the last reply"),
    ("Esc", "stop the reply, or close a panel"),
    ("Enter / Shift+Enter", "send / new line"),
];

/// Parses `input`: `None` when it is an ordinary message (does not start with `/`, or starts
/// with `//`, which sends a literal `/`).
pub fn parse(input: &str) -> Option<Result<SlashCommand, CommandError>> {
    let line = input.trim_start();
    let rest = line.strip_prefix('/')?;
    if rest.starts_with('/') || rest.is_empty() || rest.starts_with(char::is_whitespace) {
        return None;
    }
    let (name, arg) = match rest.find(char::is_whitespace) {
        Some(i) => (&rest[..i], rest[i..].trim()),
        None => (rest, ""),
    };
    let bare = |cmd: SlashCommand, name: &'static str| {
        if arg.is_empty() {
            Ok(cmd)
        } else {
            Err(CommandError::UnexpectedArgument(name))
        }
    };
    Some(match name {
        "think" => bare(SlashCommand::Think, "think"),
        "no_think" => bare(SlashCommand::NoThink, "no_think"),
        "clear" => bare(SlashCommand::Clear, "clear"),
        "status" => bare(SlashCommand::Status, "status"),
        "help" => bare(SlashCommand::Help, "help"),
        "quote" => Ok(SlashCommand::Quote(arg.to_string())),
        other => Err(CommandError::Unknown(other.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_not_a_command() {
        assert_eq!(parse("hello /think"), None);
        assert_eq!(parse("//think"), None);
        assert_eq!(parse("/ spaced"), None);
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse("/think"), Some(Ok(SlashCommand::Think)));
        assert_eq!(parse("  /no_think  "), Some(Ok(SlashCommand::NoThink)));
        assert_eq!(
            parse("/quote"),
            Some(Ok(SlashCommand::Quote(String::new())))
        );
        assert_eq!(
            parse("/quote <b>hi</b> there"),
            Some(Ok(SlashCommand::Quote("<b>hi</b> there".into())))
        );
    }

    #[test]
    fn mistakes_are_explained() {
        assert_eq!(
            parse("/thnk"),
            Some(Err(CommandError::Unknown("thnk".into())))
        );
        assert_eq!(
            parse("/clear now"),
            Some(Err(CommandError::UnexpectedArgument("clear")))
        );
        let msg = CommandError::Unknown("x".into()).to_string();
        assert!(msg.contains("/help"));
    }
}
