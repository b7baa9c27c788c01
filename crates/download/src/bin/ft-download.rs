//! `ft-download`: the download stage as a command.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Download a dataset and a pretrained model (Hugging Face Hub or local files) into an artifact")]
struct Cli {
    #[command(flatten)]
    args: artifact::StageArgs,
}

fn main() {
    let cli = Cli::parse();
    artifact::exit(&cli.args, real_main(&cli.args))
}

fn real_main(args: &artifact::StageArgs) -> anyhow::Result<artifact::Report> {
    let params: pipeline::DownloadParams = pipeline::load_params(&args.params)?;
    download::validate(&params)?;
    let extra = download::local_inputs(&params)?;
    let hub = download::hub::Hub::from_env();
    artifact::execute(&download::stage_def(), args, &params, extra, |ctx| {
        ctx.summary = download::run(&params, &hub, &ctx.out)?;
        Ok(())
    })
}
