//! `ft-tokenize`: the tokenize stage as a command, and `ft-tokenize inspect` to look inside.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Tokenize a dataset artifact into memory-mapped token shards")]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    args: Option<artifact::StageArgs>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print examples as JSON Lines (index, label, ids, tokens), then the split's stats.
    Inspect {
        /// A tokenize artifact directory.
        artifact: PathBuf,
        #[arg(long, default_value = "train")]
        split: String,
        /// One example.
        #[arg(long, conflicts_with = "head")]
        index: Option<usize>,
        /// The first N examples.
        #[arg(long, default_value_t = 5)]
        head: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    let r = match (cli.cmd, cli.args) {
        (Some(Cmd::Inspect { artifact, split, index, head }), _) => inspect(&artifact, &split, index, head),
        (None, Some(args)) => artifact::exit(&args, stage(&args)),
        (None, None) => Err(anyhow::anyhow!("give the stage arguments (--params ...) or a subcommand; see --help")),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn stage(args: &artifact::StageArgs) -> anyhow::Result<artifact::Report> {
    let params: pipeline::TokenizeParams = pipeline::load_params(&args.params)?;
    tokenize::validate(&params)?;
    artifact::execute(&tokenize::stage_def(), args, &params, Default::default(), |ctx| {
        let download = ctx.input("download")?.dir.clone();
        ctx.summary = serde_json::to_value(tokenize::run(&params, &download, &ctx.out)?)?;
        Ok(())
    })
}

fn inspect(dir: &std::path::Path, split: &str, index: Option<usize>, head: usize) -> anyhow::Result<()> {
    let s = shards::Split::open(dir, split)?;
    let tk = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("tokenizer.json").display()))?;
    let range: Vec<usize> = match index {
        Some(i) if i >= s.len() => anyhow::bail!("--index {i}: split `{split}` has {} examples", s.len()),
        Some(i) => vec![i],
        None => (0..head.min(s.len())).collect(),
    };
    for i in range {
        let ids = s.ids(i);
        let tokens: Vec<String> = ids.iter().map(|&id| tk.id_to_token(id).unwrap_or_else(|| format!("<{id}>"))).collect();
        println!("{}", serde_json::json!({"index": i, "label": s.label(i), "ids": ids, "tokens": tokens}));
    }
    let meta: pipeline::files::TokenizeMeta = pipeline::files::read(&dir.join("meta.json"))?;
    println!("{}", serde_json::json!({"split": split, "stats": meta.splits.get(split)}));
    Ok(())
}
