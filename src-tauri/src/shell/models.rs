//! `smollm3-bot models …`: list, download, import, verify and remove models from a terminal.

use crate::hub::{
    self, catalogue, error::human_bytes, DownloadControl, DownloadEvent, DownloadOptions,
    DownloadOutcome, DownloadSpec, Downloader, HubConfig, ImportMode, RemoteFile,
};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `models`.
#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// Models folder (default: $SMOLLM3_MODELS_DIR, else the platform data folder).
    #[arg(long, global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ModelsCommand,
}

/// What to do with models.
#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// List installed models, paused downloads and the catalogue.
    List,
    /// Download a model (resumes a paused or interrupted download, verifies the sha256).
    Pull(PullArgs),
    /// Copy (or link) a local .gguf file into the models folder after checking it.
    Import {
        /// The .gguf file.
        path: PathBuf,
        /// Link instead of copying (saves space; keep the original where it is).
        #[arg(long)]
        link: bool,
    },
    /// Re-hash installed models against their recorded sha256.
    Verify {
        /// One model's file name; all models when omitted.
        name: Option<String>,
    },
    /// Remove an installed model.
    Rm {
        /// The model's file name, as `models list` shows it.
        name: String,
    },
}

/// Arguments of `models pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// Catalogue id (see `models list`); the recommended model when neither this nor --repo is
    /// given. Catalogue models come with their tokenizer.json.
    #[arg(conflicts_with_all = ["repo", "file"])]
    pub model: Option<String>,
    /// Repository on the hub, OWNER/NAME.
    #[arg(long, requires = "file")]
    pub repo: Option<String>,
    /// File inside the repository.
    #[arg(long, requires = "repo")]
    pub file: Option<String>,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Hub or mirror URL (default: $HF_ENDPOINT, else https://huggingface.co).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Expected sha256 (hex); by default the hub's published digest is used.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
}

/// Deletes the conversations' KV snapshots made with the model at `path` (they could never
/// be used again: a model downloaded anew has another fingerprint).
fn forget_snapshots_of(path: &Path) {
    let Some(dir) = super::data_dir::database_path(None)
        .ok()
        .and_then(|db| crate::app::repo::snapshot_dir_for(&db))
    else {
        return;
    };
    let n = crate::engine::snapshot::Snapshots::remove_for_model_file(&dir, path);
    if n > 0 {
        println!("removed {n} saved conversation state(s) made with it");
    }
}

/// Runs a `models` subcommand; errors are printed for people and give a non-zero exit.
pub fn run(args: ModelsArgs) -> ExitCode {
    match dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: ModelsArgs) -> Result<ExitCode> {
    let dir = hub::models_dir(args.dir.as_deref())?;
    match args.command {
        ModelsCommand::List => list(&dir).map(|_| ExitCode::SUCCESS),
        ModelsCommand::Pull(pull_args) => pull(&dir, pull_args),
        ModelsCommand::Import { path, link } => {
            let mode = if link {
                ImportMode::Link
            } else {
                ImportMode::Copy
            };
            // The header check stands in until the model code supplies its full validator.
            let model = hub::import(&path, &dir, mode, &crate::engine::loader::validate_file)?;
            println!("imported {} ({})", model.name, human_bytes(model.size));
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::Verify { name } => verify(&dir, name.as_deref()).map(|_| ExitCode::SUCCESS),
        ModelsCommand::Rm { name } => {
            forget_snapshots_of(&dir.join(&name));
            hub::remove(&dir, &name)?;
            println!("removed {name}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list(dir: &Path) -> Result<()> {
    let models = hub::list(dir)?;
    println!("Models in {}:", dir.display());
    if models.is_empty() {
        println!("  (none yet: `smollm3-bot models pull` downloads the recommended one)");
    }
    for m in &models {
        let digest = m
            .sha256
            .as_deref()
            .map(|s| &s[..12])
            .unwrap_or("not recorded");
        println!(
            "  {:<28} {:>10}  sha256 {digest}",
            m.name,
            human_bytes(m.size)
        );
    }
    let partials = hub::partials(dir)?;
    if !partials.is_empty() {
        println!("Paused downloads (run `models pull` again to resume):");
        for p in partials {
            let of = p
                .total
                .map(|t| format!(" of {}", human_bytes(t)))
                .unwrap_or_default();
            println!("  {:<28} {}{of}", p.name, human_bytes(p.bytes));
        }
    }
    println!("Catalogue (`smollm3-bot models pull ID`):");
    for e in catalogue::catalogue() {
        let installed = models.iter().any(|m| m.name == e.model.file);
        println!(
            "  {:<8} ~{}, needs ~{} RAM{}{}  {}",
            e.id,
            human_bytes(e.approx_size),
            human_bytes(e.ram_needed),
            if e.default { ", recommended" } else { "" },
            if installed { ", installed" } else { "" },
            e.description
        );
    }
    Ok(())
}

fn verify(dir: &Path, name: Option<&str>) -> Result<()> {
    let names: Vec<String> = match name {
        Some(n) => vec![n.to_owned()],
        None => hub::list(dir)?.into_iter().map(|m| m.name).collect(),
    };
    if names.is_empty() {
        println!("no models in {}", dir.display());
    }
    let mut failed = 0;
    for name in names {
        match hub::verify(dir, &name) {
            Ok(r) if r.had_record => println!("ok       {name}  sha256 {}", r.sha256),
            Ok(r) => println!("recorded {name}  sha256 {} (no earlier record)", r.sha256),
            Err(e) => {
                eprintln!("FAILED   {name}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} model(s) failed verification");
    }
    Ok(())
}

fn pull(dir: &Path, args: PullArgs) -> Result<ExitCode> {
    let specs = match (&args.repo, &args.file) {
        (Some(repo), Some(file)) => vec![DownloadSpec {
            remote: RemoteFile::new(repo.as_str(), file.as_str(), args.revision.as_str())?,
            dir: dir.to_path_buf(),
            sha256: args.sha256.clone(),
            size: None,
        }],
        _ => {
            let entry = match &args.model {
                Some(id) => catalogue::find(id).with_context(|| {
                    format!("no catalogue model {id:?}; `smollm3-bot models list` shows them")
                })?,
                None => catalogue::default_entry(),
            };
            let mut specs = entry.download_specs(dir);
            if let Some(sha256) = &args.sha256 {
                specs[0].sha256 = Some(sha256.clone());
            }
            specs
        }
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let downloader = Downloader::new(
            HubConfig::from_env(args.endpoint.as_deref()),
            DownloadOptions::default(),
        )?;
        let control = DownloadControl::new();
        let on_ctrl_c = control.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_ctrl_c.pause();
            }
        });
        for spec in &specs {
            match pull_one(&downloader, spec, &control).await? {
                DownloadOutcome::Completed { path, sha256, .. } => {
                    println!("{}  sha256 {sha256}", path.display());
                }
                DownloadOutcome::Paused { part, bytes } => {
                    eprintln!(
                        "paused: {} kept in {}; run the same command to resume",
                        human_bytes(bytes),
                        part.display()
                    );
                    return Ok(ExitCode::from(130));
                }
                DownloadOutcome::Cancelled => return Ok(ExitCode::from(130)),
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn pull_one(
    downloader: &Downloader,
    spec: &DownloadSpec,
    control: &DownloadControl,
) -> Result<DownloadOutcome> {
    // Hidden until the hub has told the size, so no empty bar flashes first.
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:24!} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let name = spec.remote.local_name().to_owned();
    bar.set_message(name.clone());
    let events_bar = bar.clone();
    let on_event = move |event: DownloadEvent| match event {
        DownloadEvent::Resolved {
            total, resume_from, ..
        } => {
            events_bar.set_length(total.unwrap_or(0));
            events_bar.set_position(resume_from);
            events_bar.set_draw_target(ProgressDrawTarget::stderr());
            if resume_from > 0 {
                events_bar.println(format!("resuming {name} from {}", human_bytes(resume_from)));
            }
        }
        DownloadEvent::CheckingPartial { done, total } => {
            events_bar.set_message(format!("checking {}%", done * 100 / total.max(1)));
        }
        DownloadEvent::Progress(p) => {
            events_bar.set_message(name.clone());
            events_bar.set_position(p.done);
        }
        DownloadEvent::Retrying {
            attempt,
            max_retries,
            delay_ms,
            reason,
        } => {
            events_bar.println(format!(
                "{reason}; retry {attempt}/{max_retries} in {:.1} s",
                delay_ms as f64 / 1000.0
            ));
        }
        DownloadEvent::Restarted { reason } => {
            events_bar.println(format!("{reason}: starting {name} over"));
            events_bar.set_position(0);
        }
        DownloadEvent::Verifying => events_bar.set_message("verifying sha256"),
        DownloadEvent::Finished { .. } => events_bar.finish_and_clear(),
    };
    let outcome = downloader.download(spec, control, &on_event).await;
    if !bar.is_finished() {
        bar.abandon();
    }
    outcome.map_err(Into::into)
}
