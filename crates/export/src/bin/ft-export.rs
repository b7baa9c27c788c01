//! `ft-export`: the export stage as a command, with `--to DIR` to copy the result where users want it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Export trained weights as a directory transformers loads with from_pretrained")]
struct Cli {
    #[command(flatten)]
    args: artifact::StageArgs,
    /// Also copy the exported model into DIR (created if missing).
    #[arg(long, value_name = "DIR")]
    to: Option<PathBuf>,
    /// Overwrite DIR even if it exists and was not written by ft-export.
    #[arg(long)]
    force_to: bool,
}

/// Marks a directory as written by ft-export, so a later export may replace it.
const MARKER: &str = ".ft-export";

fn main() {
    let cli = Cli::parse();
    artifact::exit(&cli.args, real_main(&cli))
}

fn copy_to(src: &Path, dir: &Path, force: bool) -> anyhow::Result<()> {
    if dir.exists() {
        let ours = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !ours && !empty && !force {
            bail!("{} exists and was not written by ft-export; choose another --to or pass --force-to to replace its files", dir.display());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))?.flatten() {
        let name = e.file_name();
        if name == "manifest.json" {
            continue;
        }
        std::fs::copy(e.path(), dir.join(&name)).with_context(|| format!("copying {}", name.to_string_lossy()))?;
    }
    std::fs::write(dir.join(MARKER), src.display().to_string())?;
    eprintln!("copied the export to {}", dir.display());
    Ok(())
}

fn real_main(cli: &Cli) -> anyhow::Result<artifact::Report> {
    let args = &cli.args;
    let params: pipeline::ExportParams = pipeline::load_params(&args.params)?;
    let report = artifact::execute(&export::stage_def(), args, &params, Default::default(), |ctx| {
        let download = ctx.input("download")?.clone();
        let tokenize = ctx.input("tokenize")?.clone();
        let train = ctx.input("train")?.clone();
        ctx.summary = export::run(&params, &download, &tokenize, &train, &ctx.out)?;
        Ok(())
    })?;
    if let (Some(dir), Some(art)) = (&cli.to, &report.artifact) {
        if args.mode == artifact::Mode::Run {
            copy_to(art, dir, cli.force_to)?;
        }
    }
    Ok(report)
}
