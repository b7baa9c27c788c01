//! `ft-evaluate`: the evaluate stage as a command.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Evaluate trained weights on a split: metrics, predictions, a report with plots")]
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
    let params: pipeline::EvaluateParams = pipeline::load_params(&args.params)?;
    let report = artifact::execute(&evaluate::stage_def(), args, &params, Default::default(), |ctx| {
        let tokenize = ctx.input("tokenize")?.clone();
        let train = ctx.input("train")?.clone();
        ctx.summary = evaluate::run(&params, &tokenize, &train, &ctx.out)?;
        Ok(())
    })?;
    if args.mode == artifact::Mode::Lookup && report.artifact.is_none() {
        std::process::exit(artifact::EXIT_NOT_CACHED);
    }
    Ok(())
}
