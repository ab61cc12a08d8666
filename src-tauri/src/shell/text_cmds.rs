//! `render`: prints the prompt a conversation renders to, for checking chat templates;
//! `tokenize`: prints the token ids (and pieces) a text becomes with a model's tokenizer.

use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};

use crate::engine::events::ChatMessage;
use crate::text::chat_template::{ChatTemplate, RenderOptions};

/// Arguments of `render`.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["model", "template"]))]
pub struct RenderArgs {
    /// JSON file with the conversation: a list of `{"role", "content"}`.
    #[arg(long, value_name = "M.json")]
    pub messages: PathBuf,
    /// JSON object of template variables (`enable_thinking`, `xml_tools`,
    /// `add_generation_prompt`, …).
    #[arg(long, value_name = "K.json")]
    pub kwargs: Option<PathBuf>,
    /// The date the template sees (default: today).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub today: Option<chrono::NaiveDate>,
    /// Take the chat template from this GGUF model file.
    #[arg(long, value_name = "F.gguf")]
    pub model: Option<PathBuf>,
    /// Take the chat template from this Jinja file.
    #[arg(long, value_name = "T")]
    pub template: Option<PathBuf>,
}

/// `render`: prints the rendered prompt and nothing else.
pub fn render(args: RenderArgs) -> anyhow::Result<()> {
    let messages: Vec<ChatMessage> = read_json(&args.messages)?;
    let mut extra: serde_json::Map<String, serde_json::Value> = match &args.kwargs {
        Some(path) => read_json(path)?,
        None => serde_json::Map::new(),
    };
    let add_generation_prompt = match extra.remove("add_generation_prompt") {
        None => true,
        Some(serde_json::Value::Bool(b)) => b,
        Some(other) => anyhow::bail!("add_generation_prompt must be true or false, not {other}"),
    };
    let template = match (&args.template, &args.model) {
        (Some(path), _) => {
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            ChatTemplate::new(&source).with_context(|| format!("in {}", path.display()))?
        }
        (None, Some(path)) => {
            let source = template_from_gguf(path)
                .with_context(|| format!("cannot read the chat template of {}", path.display()))?;
            ChatTemplate::from_sources(source.as_deref(), None)?
        }
        (None, None) => anyhow::bail!("give --model or --template"),
    };
    let opts = RenderOptions {
        add_generation_prompt,
        today: args
            .today
            .unwrap_or_else(|| chrono::Local::now().date_naive()),
        extra,
    };
    print!("{}", template.render(&messages, &opts)?);
    Ok(())
}

/// Arguments of `tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// The GGUF model whose tokenizer is used (a `tokenizer.json` beside it wins).
    #[arg(long, value_name = "F.gguf")]
    pub model: PathBuf,
    /// The text to tokenize.
    #[arg(long)]
    pub text: String,
    /// Read control-token text (`<|im_start|>`) as plain characters, as message text is.
    #[arg(long)]
    pub plain: bool,
    /// Print each token's text beside its id.
    #[arg(long)]
    pub pieces: bool,
}

/// `tokenize`: one line of JSON, the ids (`[9906, 0]`) or, with `--pieces`,
/// `[{"id": 9906, "piece": "Hello"}, …]`, the shapes of the server's `/tokenize`.
pub fn tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    use crate::text::tokenizer;
    let gguf = crate::model::GgufFile::open(&args.model)?;
    let beside = crate::engine::loader::tokenizer_path(&args.model, None);
    let tok = tokenizer::load(&gguf, beside.as_deref())?;
    let ids = if args.plain {
        tokenizer::encode_plain(&tok, &args.text)?
    } else {
        tokenizer::encode(&tok, &args.text)?
    };
    let out: Vec<serde_json::Value> = ids
        .iter()
        .map(|&id| {
            if args.pieces {
                let piece = tokenizer::decode(&tok, &[id]).unwrap_or_default();
                serde_json::json!({ "id": id, "piece": piece })
            } else {
                serde_json::json!(id)
            }
        })
        .collect();
    println!("{}", serde_json::Value::Array(out));
    Ok(())
}

/// The chat template stored in a GGUF file, if it has one.
fn template_from_gguf(path: &Path) -> anyhow::Result<Option<String>> {
    let g = crate::model::GgufFile::open(path)?;
    Ok(g.get_str("tokenizer.chat_template").map(str::to_string))
}

/// Reads and parses a JSON file, naming the file in errors.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not the JSON expected", path.display()))
}
