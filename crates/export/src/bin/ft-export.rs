//! `ft-export`: the export stage as a command, with `--to DIR` to copy the result where users want it.

use std::path::PathBuf;

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

fn main() {
    let cli = Cli::parse();
    artifact::exit(&cli.args, real_main(&cli))
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
            export::copy_to(art, dir, cli.force_to)?;
        }
    }
    Ok(report)
}
