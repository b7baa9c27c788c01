//! `ft-bench`: training throughput and time-to-accuracy without the artifact store, for the
//! benchmark scripts (bench/) and GPU machines that have no Rust toolchain: train from a model
//! directory and a tokenize artifact, then evaluate a split, and print one JSON object.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Train from a model dir and token shards, evaluate, print JSON figures")]
struct Cli {
    /// A directory with config.json (and model.safetensors unless init: random).
    #[arg(long)]
    model: PathBuf,
    /// A tokenize artifact directory (shards, meta.json, labels.json).
    #[arg(long)]
    tokens: PathBuf,
    /// Train parameters (a pipeline's train section).
    #[arg(long)]
    params: PathBuf,
    /// Where to write the train outputs (weights, log).
    #[arg(long)]
    out: PathBuf,
    /// Split to evaluate after training (left out: no evaluation).
    #[arg(long)]
    eval_split: Option<String>,
    /// The weights evaluated: `best` (validation's pick) or `final` (the last step's).
    #[arg(long, default_value = "best", value_parser = ["best", "final"])]
    eval_weights: String,
    /// Log windows to skip as warm-up when reporting steady-state throughput.
    #[arg(long, default_value_t = 1)]
    warmup_windows: usize,
}

/// The process's peak resident memory in MiB (Linux: VmHWM), for the benchmark table.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let params: pipeline::TrainParams = pipeline::load_params(&cli.params)?;
    train::validate(&params)?;
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let work = cli.out.join("work");
    let _ = std::fs::remove_dir_all(&work);
    // Started with torchrun's variables (bench/gpu/run.sh's NCCL row: one rank), it trains as a
    // rank; ranks other than 0 write nothing and print no figures.
    let group = match collective::Launch::from_env()? {
        Some(l) => Some(train::join(&params, &l)?),
        None => None,
    };
    let t = std::time::Instant::now();
    let summary = train::run(&params, &cli.model, &cli.tokens, &cli.out, &work, group.as_ref())?;
    if group.as_ref().is_some_and(|g| g.rank() > 0) {
        return Ok(());
    }
    let wall = t.elapsed().as_secs_f64();
    // Before evaluation, whose batches of 256 can set a higher peak than training's.
    let train_peak = peak_rss_mb();
    let log_path = cli.out.join("log.jsonl");
    let log = std::fs::read_to_string(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    let rates = pipeline::files::LogLine::steady_rates(&pipeline::files::LogLine::parse_all(&log_path, &log)?, cli.warmup_windows);
    let (samples_per_s, tokens_per_s) = (rates.map(|r| r.0), rates.map(|r| r.1));
    let mut out = serde_json::json!({
        "train": summary,
        "wall_seconds": wall,
        "steady_samples_per_s": samples_per_s,
        "steady_tokens_per_s": tokens_per_s,
        "train_peak_rss_mb": train_peak,
    });
    if let Some(split) = &cli.eval_split {
        let device = model::device::resolve(&params.device)?;
        let labels = train::labels(&cli.tokens)?;
        let config = model::Config::from_file(&cli.out.join("config.json"))?;
        let mut m = model::Model::random(config, labels.outputs() as i64, device, 0)?;
        m.compute = train::compute_kind(params.precision, device);
        m.params.load_exact(&cli.out.join(format!("{}.safetensors", cli.eval_weights)))?;
        let meta: pipeline::files::TokenizeMeta = pipeline::files::read(&cli.tokens.join("meta.json"))?;
        let s = shards::Split::open(&cli.tokens, split)?;
        let t = std::time::Instant::now();
        let positive = train::positive_class(&params, &labels)?;
        let hp: pipeline::files::Hparams = pipeline::files::read(&cli.out.join("hparams.json"))?;
        let objective = train::objective(&params, labels.task, hp.class_weights.as_deref(), device);
        let ev = train::trainer::evaluate(&m, &objective, &s, 256, meta.pad_id, device, positive.map(|i| (i, labels.names[i].as_str())))
            .map_err(|e| e.explain(&format!("evaluating `{split}`"), "the batch of 256 (fixed in ft-bench) or tokenize.max_length"))?;
        let secs = t.elapsed().as_secs_f64();
        out["eval"] = serde_json::to_value(&ev)?;
        out["eval"]["split"] = serde_json::json!(split);
        out["eval"]["weights"] = serde_json::json!(cli.eval_weights);
        out["eval"]["seconds"] = serde_json::json!(secs);
        out["eval"]["examples_per_s"] = serde_json::json!(s.len() as f64 / secs);
    }
    out["peak_rss_mb"] = serde_json::json!(peak_rss_mb());
    println!("{out}");
    Ok(())
}
