//! `smollm3-bot conversations …`: list, export and import conversations from a terminal.

use crate::store::readable::{to_markdown, to_openai_line};
use crate::store::transfer::{export_file, ExportFile};
use crate::store::{ConversationId, Store, DESKTOP_OWNER};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;

/// The largest file `import` reads: far above any real chat history, low enough that a wrong
/// file cannot exhaust memory.
const MAX_IMPORT_BYTES: u64 = 256 * 1024 * 1024;

/// Arguments of `conversations`.
#[derive(Args, Debug)]
pub struct ConversationsArgs {
    /// The app's data folder (default: $SMOLLM3_BOT_DATA_DIR, else the platform data folder).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ConversationsCommand,
}

/// What to do with conversations.
#[derive(Subcommand, Debug)]
pub enum ConversationsCommand {
    /// List conversations (id, last change, messages, title), most recent first.
    List,
    /// Write conversations to a file (or standard output).
    Export(ExportArgs),
    /// Read conversations from an export file (JSON) as new conversations.
    Import {
        /// The file `conversations export --format json` (or the app) wrote.
        path: PathBuf,
    },
}

/// Arguments of `conversations export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Ids of the conversations to export (see `conversations list`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub ids: Vec<i64>,
    /// Export every conversation.
    #[arg(long)]
    pub all: bool,
    /// `json`: lossless, every branch, imports back; `md`: the branch on screen, readable;
    /// `jsonl`: the branch on screen as `{"messages": […]}` lines, for datasets.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// The file to write (default: standard output).
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Lossless JSON.
    Json,
    /// Markdown.
    Md,
    /// OpenAI-style messages, one conversation per line.
    Jsonl,
}

/// Runs a `conversations` subcommand.
pub fn run(args: ConversationsArgs) -> Result<()> {
    let path = super::data_dir::database_path(args.data_dir.as_deref())?;
    let store = Store::open(&path)
        .with_context(|| format!("cannot open the conversations in {}", path.display()))?;
    match args.command {
        ConversationsCommand::List => list(&store),
        ConversationsCommand::Export(a) => export(&store, a),
        ConversationsCommand::Import { path } => import(&store, &path),
    }
}

fn list(store: &Store) -> Result<()> {
    for c in store.list_conversations(None)? {
        let messages = store.export_conversation(c.id)?.messages.len();
        let when = chrono::DateTime::from_timestamp_millis(c.updated_at_ms)
            .map(|t| {
                t.with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M")
                    .to_string()
            })
            .unwrap_or_default();
        println!("{:>6}  {when}  {messages:>4} messages  {}", c.id.0, c.title);
    }
    Ok(())
}

fn export(store: &Store, a: ExportArgs) -> Result<()> {
    let ids: Vec<ConversationId> = if a.all {
        store
            .list_conversations(None)?
            .into_iter()
            .map(|c| c.id)
            .collect()
    } else {
        a.ids.iter().map(|&i| ConversationId(i)).collect()
    };
    let mut conversations = Vec::with_capacity(ids.len());
    for id in ids {
        conversations.push(
            store
                .export_conversation(id)
                .with_context(|| format!("conversation {}", id.0))?,
        );
    }
    let text = match a.format {
        Format::Json => export_file(conversations).to_json() + "\n",
        Format::Md => conversations
            .iter()
            .map(to_markdown)
            .collect::<Vec<_>>()
            .join("\n---\n\n"),
        Format::Jsonl => conversations
            .iter()
            .map(|c| to_openai_line(c) + "\n")
            .collect(),
    };
    match a.out {
        Some(path) => {
            write_whole(&path, text.as_bytes())?;
            eprintln!("exported to {}", path.display());
        }
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(())
}

/// Writes `bytes` to a temporary file beside `path`, then renames it: an existing file is
/// never left half written.
fn write_whole(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.part", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

fn import(store: &Store, path: &std::path::Path) -> Result<()> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if size > MAX_IMPORT_BYTES {
        bail!(
            "{} is {size} bytes, more than an export file can be ({MAX_IMPORT_BYTES})",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {} as text", path.display()))?;
    let file = ExportFile::parse(&text).with_context(|| format!("{}", path.display()))?;
    for c in &file.conversations {
        let id = store.import_conversation(c, DESKTOP_OWNER)?;
        println!(
            "imported conversation {} ({} messages): {}",
            id.0,
            c.messages.len(),
            c.title
        );
    }
    Ok(())
}
