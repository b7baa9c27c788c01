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
    /// After training, time the model's own matrix products and report the ceiling they put on
    /// samples/s (`matmul_flops_per_s`, `ceiling_samples_per_s`).
    #[arg(long)]
    ceiling: bool,
}

/// The process's peak resident memory in MiB (Linux: VmHWM), for the benchmark table.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The rate, in FLOP/s, of the model's own matrix products at one fixed-padding batch's shape
/// (`tokens` rows), in the compute dtype on `device`: each encoder linear layer's three training
/// products (forward `x·Wᵀ`, input gradient `dy·W`, weight gradient `dyᵀ·x`), the fastest of a
/// few repetitions after a warm-up, weighted by how many layers have that shape. The head's products,
/// over one row per sample, are left out.
fn matmul_rate(config: &model::Config, num_labels: i64, tokens: i64, kind: tch::Kind, device: tch::Device) -> f64 {
    let (layout, _) = config.layout(num_labels);
    let mut shapes: std::collections::BTreeMap<(i64, i64), usize> = Default::default();
    for s in layout.slots.iter().filter(|s| s.linear && !s.head && s.shape.len() == 2) {
        *shapes.entry((s.shape[0], s.shape[1])).or_default() += 1;
    }
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let (mut flops, mut secs) = (0.0, 0.0);
    tch::no_grad(|| {
        for (&(out, inp), &count) in &shapes {
            let x = tch::Tensor::randn([tokens, inp], (kind, device));
            let w = tch::Tensor::randn([out, inp], (kind, device));
            let dy = tch::Tensor::randn([tokens, out], (kind, device));
            let products = || {
                let _ = (x.matmul(&w.tr()), dy.matmul(&w), dy.tr().matmul(&x));
            };
            products();
            sync();
            // The fastest of a few repetitions: other load on the machine only slows them.
            let best = (0..5)
                .map(|_| {
                    let t = std::time::Instant::now();
                    products();
                    sync();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min);
            flops += count as f64 * 3.0 * 2.0 * (tokens * inp * out) as f64;
            secs += count as f64 * best;
        }
    });
    flops / secs.max(1e-12)
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
    // What the model's FLOPs would allow at its own matrix products' rate on this machine, if
    // nothing else took time: the most samples/s any implementation of the same math reaches here
    // (a full fine-tune's math: LoRA skips the frozen weights' gradient products).
    let device = model::device::resolve(&params.device)?;
    let kind = train::compute_kind(params.precision, device);
    let config = model::Config::from_file(&cli.out.join("config.json"))?;
    let labels = train::labels(&cli.tokens)?;
    let meta: pipeline::files::TokenizeMeta = pipeline::files::read(&cli.tokens.join("meta.json"))?;
    let mut out = serde_json::json!({
        "train": summary,
        "wall_seconds": wall,
        "steady_samples_per_s": samples_per_s,
        "steady_tokens_per_s": tokens_per_s,
        "train_peak_rss_mb": train_peak,
    });
    if cli.ceiling {
        let len = meta.max_length as f64;
        let rate = matmul_rate(&config, labels.outputs() as i64, (params.batch_size * meta.max_length) as i64, kind, device);
        out["matmul_flops_per_s"] = serde_json::json!(rate);
        out["ceiling_samples_per_s"] = serde_json::json!(rate / (3.0 * len * config.family().flops_per_token(len)));
    }
    if let Some(split) = &cli.eval_split {
        let mut m = model::Model::random(config, labels.outputs() as i64, device, 0)?;
        m.compute = kind;
        m.params.load_exact(&cli.out.join(format!("{}.safetensors", cli.eval_weights)))?;
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
