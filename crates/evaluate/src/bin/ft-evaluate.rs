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
    artifact::exit(&cli.args, real_main(&cli.args))
}

fn real_main(args: &artifact::StageArgs) -> anyhow::Result<artifact::Report> {
    let params: pipeline::EvaluateParams = pipeline::load_params(&args.params)?;
    pipeline::Params::validate(&params).map_err(anyhow::Error::msg)?;
    artifact::execute(&evaluate::stage_def(), args, &params, Default::default(), |ctx| {
        let tokenize = ctx.input("tokenize")?.clone();
        let train = ctx.input("train")?.clone();
        ctx.summary = serde_json::to_value(evaluate::run(&params, &tokenize, &train, &ctx.out)?)?;
        Ok(())
    })
}
