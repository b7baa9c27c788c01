//! `ft-predict`: a trained classifier over a file of new texts.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
enum WeightsArg {
    Best,
    Final,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    Auto,
    Fp32,
    Bf16,
}

#[derive(Parser)]
#[command(about = "Label new texts with a trained classifier: an export directory, a train or export artifact key, or a Hugging Face model directory")]
struct Cli {
    /// An export directory (its `merged/` model for `format: both`), a train or export artifact
    /// (its directory, key or the key's first characters), or a local Hugging Face model
    /// directory whose weights hold a classification head.
    model: String,
    /// The texts: a .parquet, .csv, .tsv or .jsonl file.
    input: PathBuf,
    /// Where to write the input's rows with the predictions: .parquet, .csv, .tsv or .jsonl.
    #[arg(long)]
    out: PathBuf,
    /// The column holding the texts.
    #[arg(long, default_value = "text")]
    column: String,
    /// The column holding the second texts, for a model trained on sentence pairs.
    #[arg(long)]
    pair_column: Option<String>,
    /// CSV field separator.
    #[arg(long)]
    delimiter: Option<char>,
    /// The store in which artifact keys are looked up.
    #[arg(long, default_value = "data")]
    store: PathBuf,
    /// A train artifact's weights: the selected checkpoint or the last.
    #[arg(long, value_enum, default_value = "best")]
    weights: WeightsArg,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// auto: bf16 on CUDA, fp32 on CPU.
    #[arg(long, value_enum, default_value = "auto")]
    precision: PrecisionArg,
    /// Longest input in tokens (default: the training data's max_length, else the tokenizer's).
    #[arg(long)]
    max_length: Option<usize>,
    /// Multi-label: predict a label when its probability exceeds this (default: the threshold an
    /// evaluation of these weights tuned, `evaluate.threshold: tune`, else 0.5).
    #[arg(long)]
    threshold: Option<f64>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    let o = predict::Options {
        model: cli.model,
        input: cli.input,
        out: cli.out,
        column: cli.column,
        pair_column: cli.pair_column,
        delimiter: cli.delimiter,
        store: cli.store,
        weights: match cli.weights {
            WeightsArg::Best => pipeline::Weights::Best,
            WeightsArg::Final => pipeline::Weights::Final,
        },
        batch_size: cli.batch_size,
        device: cli.device,
        precision: match cli.precision {
            PrecisionArg::Auto => pipeline::Precision::Auto,
            PrecisionArg::Fp32 => pipeline::Precision::Fp32,
            PrecisionArg::Bf16 => pipeline::Precision::Bf16,
        },
        max_length: cli.max_length,
        threshold: cli.threshold,
    };
    match predict::run(&o) {
        Ok(s) => {
            eprintln!(
                "predicted {} rows with {} (max_length {}) in {:.2} s (tokenize {:.2} s), {:.0} examples/s on {}; wrote {}",
                s.rows,
                s.model,
                s.max_length,
                s.tokenize_seconds + s.seconds,
                s.tokenize_seconds,
                s.examples_per_second,
                s.device,
                s.out.display()
            );
            if cli.json {
                println!("{}", serde_json::to_string(&s).unwrap_or_default());
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
