//! Serves one file the way the Hugging Face hub does, on 127.0.0.1, for end-to-end runs of
//! the download wizard without a network.
//!
//! ```text
//! cargo run --example mock_hub -- --file SmolLM3-Q4_K_M.gguf --port 8089 \
//!     [--repo ggml-org/SmolLM3-3B-GGUF] [--name SmolLM3-Q4_K_M.gguf] [--revision main] \
//!     [--git] [--throttle BYTES_PER_SEC] [--drop-at BYTE] [--token TOKEN] [--delay-ms MS] \
//!     [--also OTHER.gguf]...
//! HF_ENDPOINT=http://127.0.0.1:8089 smollm3-bot models pull
//! ```

#[path = "../tests/support/mock_hub.rs"]
mod mock_hub;

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;

/// Command-line options.
#[derive(Parser, Debug)]
struct Args {
    /// File whose bytes are served.
    #[arg(long)]
    file: PathBuf,
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Repository it appears in.
    #[arg(long, default_value = "ggml-org/SmolLM3-3B-GGUF")]
    repo: String,
    /// Name in the repository (default: the file's own name).
    #[arg(long)]
    name: Option<String>,
    /// Revision it appears at.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Serve it as a file kept in git (no LFS redirect, ETag = blob sha1).
    #[arg(long)]
    git: bool,
    /// Limit the rate, so progress and pause can be watched.
    #[arg(long, value_name = "BYTES_PER_SEC")]
    throttle: Option<u64>,
    /// Drop the first content connection at this byte.
    #[arg(long, value_name = "BYTE")]
    drop_at: Option<u64>,
    /// Require `Authorization: Bearer TOKEN`.
    #[arg(long)]
    token: Option<String>,
    /// Wait this long before answering each request (a slow network).
    #[arg(long, value_name = "MS")]
    delay_ms: Option<u64>,
    /// More files served beside it in the same repository, under their own names.
    #[arg(long, value_name = "FILE")]
    also: Vec<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let name = match args.name {
        Some(n) => n,
        None => args
            .file
            .file_name()
            .context("the file has no name")?
            .to_string_lossy()
            .into_owned(),
    };
    let hub = mock_hub::MockHub::start_on(args.port).context("cannot listen on 127.0.0.1")?;
    let digest = if args.git {
        hub.add_git_file(&args.repo, &args.revision, &name, bytes)
    } else {
        hub.add_lfs_file(&args.repo, &args.revision, &name, bytes)
    };
    // Said after the address, which the first line of output gives.
    let mut also = Vec::new();
    for other in &args.also {
        let bytes =
            std::fs::read(other).with_context(|| format!("cannot read {}", other.display()))?;
        let name = other
            .file_name()
            .context("the file has no name")?
            .to_string_lossy()
            .into_owned();
        let digest = hub.add_lfs_file(&args.repo, &args.revision, &name, bytes);
        also.push(format!(
            "also {}/resolve/{}/{name} (sha256 {digest})",
            args.repo, args.revision
        ));
    }
    if let Some(rate) = args.throttle {
        hub.throttle(rate);
    }
    if let Some(ms) = args.delay_ms {
        hub.delay_answers(std::time::Duration::from_millis(ms));
    }
    if let Some(at) = args.drop_at {
        hub.fail_next(mock_hub::Fault::DropAt(at));
    }
    if let Some(token) = &args.token {
        hub.require_token(token);
    }
    println!("listening on {}", hub.url());
    println!(
        "serving {}/resolve/{}/{name} (sha256 {digest})",
        args.repo, args.revision
    );
    for line in also {
        println!("{line}");
    }
    loop {
        std::thread::park();
    }
}
