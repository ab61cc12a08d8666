//! The headless command line (`smollm3-bot <subcommand>`), built with clap.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Command-line arguments.
#[derive(Parser, Debug)]
#[command(name = "smollm3-bot", version, about = "Chat with SmolLM3-3B on your own machine")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands; with none the desktop app opens.
#[derive(Subcommand, Debug)]
pub enum Command {}

/// Entry point shared by the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => match super::desktop::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
