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

/// The rows of `key` in the batch file, flattened, with their count and common length.
fn rows(batch: &serde_json::Value, key: &str, file: &std::path::Path) -> anyhow::Result<(Vec<i64>, i64, i64)> {
    let bad = || format!("{}: `{key}` must be a list of equally long lists of integers", file.display());
    let rows = batch[key].as_array().with_context(bad)?;
    let mut flat = Vec::new();
    let mut len = None;
    for r in rows {
        let r = r.as_array().with_context(bad)?;
        if *len.get_or_insert(r.len()) != r.len() {
            bail!(bad());
        }
        for x in r {
            flat.push(x.as_i64().with_context(bad)?);
        }
    }
    Ok((flat, rows.len() as i64, len.unwrap_or(0) as i64))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let device = model::device::resolve(&cli.device)?;
    let config = model::BertConfig::from_file(&cli.model.join("config.json"))?;
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
    let batch: serde_json::Value = serde_json::from_slice(&text).with_context(|| format!("parsing {}", cli.batch.display()))?;
    let (ids, n, len) = rows(&batch, "ids", &cli.batch)?;
    let (mask, mn, mlen) = rows(&batch, "mask", &cli.batch)?;
    if (n, len) != (mn, mlen) {
        bail!("{}: `ids` is {n} × {len} but `mask` is {mn} × {mlen}", cli.batch.display());
    }
    let (x, _) = model::inputs::upload(n as usize, len as usize, &ids, Some(&mask), &[], device);
    let logits = tch::no_grad(|| m.forward(&x, false)).to_device(tch::Device::Cpu);
    let flat: Vec<f32> = Vec::try_from(logits.flatten(0, -1)).context("reading the logits back")?;
    let out: Vec<&[f32]> = flat.chunks(cli.num_labels.max(1) as usize).collect();
    println!("{}", serde_json::json!({"logits": out, "device": format!("{device:?}"), "precision": if m.compute == tch::Kind::BFloat16 { "bf16" } else { "fp32" }}));
    Ok(())
}
