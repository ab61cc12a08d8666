//! The headless command line (`smollm3-bot <subcommand>`), built with clap.

use super::{bench, concurrent_bench, model_cmds, restart_bench, text_cmds};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Command-line arguments.
#[derive(Parser, Debug)]
#[command(
    name = "smollm3-bot",
    version,
    about = "Chat with SmolLM3-3B on your own machine"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands; with none the desktop app opens.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a synthetic SmolLM3 GGUF (random weights, real layout, working tokenizer).
    Synth(model_cmds::SynthArgs),
    /// Describe a GGUF file: metadata, tensors, types, memory needs, NoPE layers.
    Inspect(model_cmds::InspectArgs),
    /// Print the model's logits for a token sequence as JSON.
    Logits(model_cmds::LogitsArgs),
    /// Continue a prompt or token sequence (raw completion, no chat template).
    Generate(model_cmds::GenerateArgs),
    /// Print the prompt a conversation renders to with the chat template.
    Render(text_cmds::RenderArgs),
    /// Print the token ids (and pieces) a text becomes with a model's tokenizer.
    Tokenize(text_cmds::TokenizeArgs),
    /// Measure load time, prefill and decode speed, and peak memory.
    Bench(bench::BenchArgs),
    /// Manage models: list, pull, import, verify, rm.
    Models(super::models::ModelsArgs),
    /// Serve the OpenAI-compatible API (and the browser UI) over HTTP; 127.0.0.1 by default.
    Serve(super::serve::ServeArgs),
    /// Chat with a model in the terminal.
    Chat(super::chat::ChatArgs),
    /// Conversations: list, export (JSON, Markdown, JSONL), import.
    Conversations(super::conversations::ConversationsArgs),
}

/// Entry point shared by the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = select_kernels() {
        eprintln!("error: SMOLLM3_KERNELS: {e}");
        return ExitCode::from(2);
    }
    // The model layer reads no environment: its options are read here, once.
    let _ = crate::model::options::set(model_options());
    // Before any thread starts: candle's pool reads its size from the environment once.
    set_threads(threads_for(&cli.command));
    // Likewise the window's web process reads how to draw from the environment.
    #[cfg(feature = "desktop")]
    let rendering = cli
        .command
        .is_none()
        .then(super::desktop::choose_webview_rendering);
    // Folders an earlier version kept elsewhere move before anything opens them (once).
    let moves = super::data_dir::move_once(&super::data_dir::relocations());
    // The long-running desktop app and server also log to a file; the guard lives until exit.
    let log = match cli.command {
        None | Some(Command::Serve(_)) => super::logging::init_with_file(),
        Some(_) => super::logging::init_stderr(),
    };
    super::data_dir::log_moves(&moves);
    #[cfg(feature = "desktop")]
    if let Some(rendering) = rendering {
        tracing::info!(?rendering, "web view rendering");
    }
    let result = match cli.command {
        // Model management has its own exit codes (130 when a download is paused).
        Some(Command::Models(args)) => return super::models::run(args),
        #[cfg(feature = "desktop")]
        None => super::desktop::run(log),
        #[cfg(not(feature = "desktop"))]
        None => {
            drop(log);
            Err(anyhow::anyhow!(
                "this build has no desktop window (built without the `desktop` feature); \
                 use a subcommand such as `serve` or `chat` (see --help)"
            ))
        }
        Some(Command::Synth(a)) => model_cmds::synth(a),
        Some(Command::Inspect(a)) => model_cmds::inspect(a),
        Some(Command::Logits(a)) => model_cmds::logits(a),
        Some(Command::Generate(a)) => model_cmds::generate(a),
        Some(Command::Render(a)) => text_cmds::render(a),
        Some(Command::Tokenize(a)) => text_cmds::tokenize(a),
        Some(Command::Bench(a)) => match a.restart_tokens {
            Some(tokens) => restart_bench::run(&a, tokens),
            None if !a.concurrent.is_empty() => concurrent_bench::run(&a, &a.concurrent),
            None => bench::bench(a),
        },
        Some(Command::Serve(a)) => super::serve::serve(a),
        Some(Command::Chat(a)) => super::chat::run(a),
        Some(Command::Conversations(a)) => super::conversations::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Chooses the process-wide kernel path from `SMOLLM3_KERNELS` (`avx512`, `avx2`, `neon`,
/// `generic`, or `auto`/unset for the best this CPU has); a path the CPU lacks is an error, not
/// a silent fallback, so a benchmark or test never measures another path than it names.
fn select_kernels() -> Result<(), crate::model::kernels::SelectError> {
    use crate::model::kernels::{self, Kernels};
    let setting = std::env::var(KERNELS_ENV).ok();
    let chosen = Kernels::from_setting(setting.as_deref())?;
    // Only `main` sets it, once, before anything computes.
    let _ = kernels::set_default(chosen);
    Ok(())
}

/// The model layer's options from `SMOLLM3_PREPARED` (`off` or `0` keeps the GGUF layout),
/// `SMOLLM3_PREPARED_DIR` (where prepared files go) and `SMOLLM3_HEAP_DEFAULT` (glibc's heap
/// defaults).
fn model_options() -> crate::model::options::ModelOptions {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    crate::model::options::ModelOptions {
        no_prepared: var("SMOLLM3_PREPARED")
            .is_some_and(|v| v.eq_ignore_ascii_case("off") || v == "0"),
        prepared_dir: var("SMOLLM3_PREPARED_DIR").map(std::path::PathBuf::from),
        default_heap: std::env::var_os("SMOLLM3_HEAP_DEFAULT").is_some(),
    }
}

/// Environment variable that forces a kernel path.
pub const KERNELS_ENV: &str = "SMOLLM3_KERNELS";

/// The matmul thread count a command asks for: its `--threads`, or for the desktop app the
/// saved setting (0 and absent mean one per core).
fn threads_for(command: &Option<Command>) -> Option<usize> {
    match command {
        Some(Command::Serve(a)) => a.threads,
        Some(Command::Chat(a)) => a.threads,
        Some(Command::Bench(a)) => a.threads,
        Some(Command::Logits(a)) => a.model.threads,
        Some(Command::Generate(a)) => a.model.threads,
        None => super::data_dir::database_path(None)
            .ok()
            .and_then(|p| crate::store::Store::peek_settings(&p).ok())
            .map(|s| s.threads),
        Some(_) => None,
    }
}

/// Sets the matmul thread count, once, in `main` before any thread starts.
fn set_threads(threads: Option<usize>) {
    if let Some(n) = threads.filter(|&n| n > 0) {
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    }
}
