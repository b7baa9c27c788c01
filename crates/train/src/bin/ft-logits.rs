//! `ft-logits`: our logits for given token ids on a device and precision, as JSON, so that a
//! script can hold them against Hugging Face transformers' on the same machine (the GPU parity
//! check of bench/gpu/run.sh; the tests check parity on CPU).

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Print our logits for a batch of token ids (JSON in, JSON out)")]
struct Cli {
    /// A directory with config.json and model.safetensors.
    #[arg(long)]
    model: PathBuf,
    /// A safetensors file of weights to put over the model's (such as a seeded classifier head).
    #[arg(long)]
    head: Option<PathBuf>,
    /// JSON `{"ids": [[...], ...], "mask": [[...], ...]}`: rows of equal length, mask 1 on real tokens.
    #[arg(long)]
    batch: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// fp32 or bf16 (matrix products in bf16 over fp32 weights, as training runs them).
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "bf16"])]
    precision: String,
    #[arg(long, default_value_t = 2)]
    num_labels: i64,
}

/// The batch file: token ids and attention mask, `rows × len` each.
#[derive(serde::Deserialize)]
struct Batch {
    ids: Vec<Vec<i64>>,
    mask: Vec<Vec<i64>>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let device = model::device::resolve(&cli.device)?;
    let config = model::Config::from_file(&cli.model.join("config.json"))?;
    let (mut m, _) = model::Model::load(config, cli.num_labels, &cli.model.join("model.safetensors"), device, 0)?;
    if let Some(head) = &cli.head {
        let named = tch::Tensor::read_safetensors(head).with_context(|| format!("reading {}", head.display()))?;
        if m.params.assign(&named, &head.display().to_string())?.len() != named.len() {
            bail!("{}: not every tensor in it is a parameter of this model", head.display());
        }
    }
    let precision = if cli.precision == "bf16" { pipeline::Precision::Bf16 } else { pipeline::Precision::Fp32 };
    m.compute = train::compute_kind(precision, device);
    let text = std::fs::read(&cli.batch).with_context(|| format!("reading {}", cli.batch.display()))?;
    let b: Batch = serde_json::from_slice(&text).with_context(|| format!("parsing {} (want {{\"ids\": [[..]], \"mask\": [[..]]}})", cli.batch.display()))?;
    let (n, len) = (b.ids.len(), b.ids.first().map_or(0, Vec::len));
    if n == 0 || len == 0 || b.ids.iter().chain(&b.mask).any(|r| r.len() != len) || b.mask.len() != n {
        bail!("{}: `ids` must be a list of equally long lists of integers, and `mask` of the same shape", cli.batch.display());
    }
    let (ids, mask) = (b.ids.concat(), b.mask.concat());
    let x = model::inputs::upload(n, len, &ids, None, Some(&mask), device);
    let logits = tch::no_grad(|| m.forward(&x, false)).to_device(tch::Device::Cpu);
    let flat: Vec<f32> = Vec::try_from(logits.flatten(0, -1)).context("reading the logits back")?;
    let out: Vec<&[f32]> = flat.chunks(cli.num_labels.max(1) as usize).collect();
    println!("{}", serde_json::json!({"logits": out, "device": format!("{device:?}"), "precision": if m.compute == tch::Kind::BFloat16 { "bf16" } else { "fp32" }}));
    Ok(())
}
