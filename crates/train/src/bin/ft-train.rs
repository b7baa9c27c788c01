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
    artifact::exit(&cli.args, real_main(&cli.args))
}

fn real_main(args: &artifact::StageArgs) -> anyhow::Result<artifact::Report> {
    let params: pipeline::TrainParams = pipeline::load_params(&args.params)?;
    train::validate(&params)?;
    artifact::execute(&train::stage_def(), args, &params, Default::default(), |ctx| {
        let download = ctx.input("download")?.dir.clone();
        let tokenize = ctx.input("tokenize")?.dir.clone();
        let work = ctx.store.join(".checkpoints").join(format!("train-{}", ctx.key));
        ctx.environment.insert("libtorch_lib".into(), option_env!("FT_LIBTORCH_LIB").unwrap_or("?").into());
        ctx.summary = serde_json::to_value(train::run(&params, &download.join("model"), &tokenize, &ctx.out, &work)?)?;
        let _ = std::fs::remove_dir_all(&work);
        Ok(())
    })
}
