//! `ft-train`: the train stage as a command. Started as one of several ranks (`RANK`,
//! `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` as torchrun sets them, or Slurm's `srun`), it
//! trains data-parallel: rank 0 goes through the artifact's life cycle (key lock, staging,
//! checkpoints, publish) and tells the others whether to train; they read the same inputs and
//! write nothing.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Fine-tune a pretrained encoder for sequence classification on token shards")]
struct Cli {
    #[command(flatten)]
    args: artifact::StageArgs,
}

/// What rank 0 tells the others before any work.
const TRAIN: &[u8] = b"train";
const NOTHING_TO_DO: &[u8] = b"nothing to do";
const FAILED: &[u8] = b"failed";

fn main() {
    let cli = Cli::parse();
    // Lookups and explanations are one process's business, whatever the environment says.
    let launch = match (cli.args.mode, collective::Launch::from_env()) {
        (artifact::Mode::Run, Ok(l)) => l,
        (artifact::Mode::Run, Err(e)) => artifact::exit(&cli.args, Err(e)),
        _ => None,
    };
    match launch {
        None => artifact::exit(&cli.args, read_params(&cli.args).and_then(|p| real_main(&cli.args, &p, None))),
        Some(l) => {
            let rank = l.rank;
            let result = ranked(&cli.args, &l);
            match (rank, result) {
                (0, r) => artifact::exit(&cli.args, r.and_then(|r| r.ok_or_else(|| anyhow::anyhow!("rank 0 wrote no report")))),
                (_, Ok(_)) => std::process::exit(0),
                (_, Err(e)) => {
                    eprintln!("error: rank {rank}: {e:#}");
                    std::process::exit(1)
                }
            }
        }
    }
}

/// One rank of a data-parallel run: joins the others, then rank 0 runs the stage and the others
/// follow its word. Returns rank 0's report.
fn ranked(args: &artifact::StageArgs, launch: &collective::Launch) -> anyhow::Result<Option<artifact::Report>> {
    let params = read_params(args)?;
    let group = train::join(&params, launch)?;
    if launch.rank == 0 {
        let mut told = false;
        let result = real_main(args, &params, Some((&group, &mut told)));
        if !told {
            // A cached artifact, or a failure before training: the others stop too.
            let _ = group.broadcast_bytes(if result.is_ok() { NOTHING_TO_DO } else { FAILED });
            let _ = group.barrier();
        }
        return result.map(Some);
    }
    let word = group.broadcast_bytes(&[])?;
    if word != TRAIN {
        group.barrier()?;
        if word == FAILED {
            anyhow::bail!("rank 0 failed before training (see its output)");
        }
        return Ok(None);
    }
    let inputs = artifact::parse_inputs(&args.inputs)?;
    let input = |name: &str| inputs.get(name).map(|a| a.dir.clone()).ok_or_else(|| anyhow::anyhow!("missing input `{name}` (pass --input {name}=DIR)"));
    let (download, tokenize) = (input("download")?, input("tokenize")?);
    let nowhere = std::path::Path::new("");
    train::run(&params, &download.join("model"), &tokenize, nowhere, nowhere, Some(&group))?;
    Ok(None)
}

fn read_params(args: &artifact::StageArgs) -> anyhow::Result<pipeline::TrainParams> {
    let params: pipeline::TrainParams = pipeline::load_params(&args.params)?;
    train::validate(&params)?;
    Ok(params)
}

/// The stage, alone or as rank 0 of `group` (which it tells, once it knows, to train).
fn real_main(args: &artifact::StageArgs, params: &pipeline::TrainParams, group: Option<(&collective::Group, &mut bool)>) -> anyhow::Result<artifact::Report> {
    // The key leaves out how the ranks talk, as it leaves out how many there are.
    artifact::execute(&train::stage_def(), args, &params.for_key(), Default::default(), |ctx| {
        let download = ctx.input("download")?.dir.clone();
        let tokenize = ctx.input("tokenize")?.dir.clone();
        let work = ctx.store.join(".checkpoints").join(format!("train-{}", ctx.key));
        ctx.environment.insert("libtorch_lib".into(), option_env!("FT_LIBTORCH_LIB").unwrap_or("?").into());
        let group = match group {
            Some((g, told)) => {
                g.broadcast_bytes(TRAIN)?;
                *told = true;
                Some(g)
            }
            None => None,
        };
        ctx.summary = serde_json::to_value(train::run(params, &download.join("model"), &tokenize, &ctx.out, &work, group)?)?;
        let _ = std::fs::remove_dir_all(&work);
        Ok(())
    })
}
