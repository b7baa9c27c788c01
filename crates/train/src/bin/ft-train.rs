//! `ft-train`: the train stage as a command.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Fine-tune a pretrained encoder for sequence classification on token shards")]
struct Cli {
    #[command(flatten)]
    args: artifact::StageArgs,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = real_main(&cli.args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(args: &artifact::StageArgs) -> anyhow::Result<()> {
    let params: pipeline::TrainParams = pipeline::load_params(&args.params)?;
    train::validate(&params)?;
    let report = artifact::execute(&train::stage_def(), args, &params, Default::default(), |ctx| {
        let download = ctx.input("download")?.dir.clone();
        let tokenize = ctx.input("tokenize")?.dir.clone();
        let work = ctx.store.join(".checkpoints").join(format!("train-{}", ctx.key));
        ctx.environment.insert("libtorch".into(), option_env!("FT_LIBTORCH_LIB").unwrap_or("?").into());
        ctx.summary = train::run(&params, &download.join("model"), &tokenize, &ctx.out, &work)?;
        let _ = std::fs::remove_dir_all(&work);
        Ok(())
    })?;
    if args.mode == artifact::Mode::Lookup && report.artifact.is_none() {
        std::process::exit(artifact::EXIT_NOT_CACHED);
    }
    Ok(())
}
