//! Predictions on new data: a trained classifier ([`source`]) over the texts of a parquet, CSV,
//! TSV or JSON Lines file, written as the input's rows plus the prediction columns
//! ([`table`]):
//!
//! ```text
//! single-label   predicted_label (the class name), score (its probability), prob_<class> per class
//! multi-label    predicted_labels (the labels whose probability exceeds the threshold: the one an
//!                evaluation of these weights tuned, else 0.5), prob_<label>
//! regression     score
//! ```
//!
//! Rows stay in input order. Texts are tokenized as the model's training texts were (the
//! tokenize artifact's max_length, truncation and pair rule, when the model's lineage is in the
//! store; else the tokenizer's `model_max_length`, cut at the end), then run through the same
//! length-sorted batched inference as the evaluate stage, so the two give the same
//! probabilities for the same texts and weights.
//!
//! The input is read, predicted and written a chunk at a time (download's reader), so its size
//! does not bound memory. Predict makes no artifact: it sits above the stages and uses their
//! libraries (download's table reader, tokenize's encoder), and nothing depends on it.

pub mod source;
pub mod table;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use model::loss::Objective;
use pipeline::{PairTruncation, Precision, Task, TokenizeParams, Truncation, Weights};
use polars::prelude::*;
use rayon::prelude::*;

/// What to predict with, on what, and where to write it.
#[derive(Clone, Debug)]
pub struct Options {
    /// See [`source::resolve`].
    pub model: String,
    pub input: PathBuf,
    pub out: PathBuf,
    pub column: String,
    pub pair_column: Option<String>,
    /// CSV field separator (default `,`).
    pub delimiter: Option<char>,
    /// Where artifact keys are looked up.
    pub store: PathBuf,
    /// A train artifact's weights file.
    pub weights: Weights,
    pub batch_size: usize,
    pub device: String,
    pub precision: Precision,
    /// Overrides the tokenize settings' (or the tokenizer's) max_length.
    pub max_length: Option<usize>,
    /// Multi-label: a label is predicted when its probability exceeds this (default: the
    /// threshold an evaluation of the weights tuned, else 0.5).
    pub threshold: Option<f64>,
}

/// What a run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub model: String,
    pub rows: usize,
    pub tokens: usize,
    /// Tokenizing the texts.
    pub tokenize_seconds: f64,
    /// Inference.
    pub seconds: f64,
    /// Rows per second of tokenization and inference (loading and writing left out).
    pub examples_per_second: f64,
    /// Multi-label: the threshold applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    pub device: String,
    pub max_length: usize,
    pub out: PathBuf,
}

/// Predicts every row of the input and writes the output file, a chunk of the input at a time
/// (download's reader: 65,536 parquet rows, 16 MiB of text), so a file of millions of rows needs
/// no more memory than one chunk and its predictions.
pub fn run(o: &Options) -> anyhow::Result<Summary> {
    run_chunked(o, download::chunks::Chunking::default())
}

/// [`run`], reading the input `chunking` at a time (tests make it tiny).
pub fn run_chunked(o: &Options, chunking: download::chunks::Chunking) -> anyhow::Result<Summary> {
    if o.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if let Some(t) = o.threshold.filter(|t| !(*t > 0.0 && *t < 1.0)) {
        bail!("--threshold {t} must lie strictly between 0 and 1");
    }
    let format = table::check_destination(&o.out, &o.input)?;
    let src = source::resolve(&o.model, &o.store, o.weights)?;
    let file = o.input.display().to_string();
    let mut chunks = download::chunks::TableChunks::open(&o.input, o.delimiter, chunking)?;
    // The first chunk's columns are checked before the model is loaded.
    let Some(head) = chunks.next() else { bail!("{file}: has no rows and no columns") };
    let (first, df) = head?;
    download::dataset::text_column_from(&df, &file, first, &o.column, "--column")?;
    if let Some(c) = &o.pair_column {
        download::dataset::text_column_from(&df, &file, first, c, "--pair-column")?;
    }
    check_pairs(&src, o.pair_column.is_some())?;
    table::check_names(&df, &o.input, &added_columns(src.task, &src.names))?;
    let mut pending = Some((first, df));
    let p = Predictor::load(o, &src, file)?;
    let rows_total = chunks.parquet_rows();
    let progress = match rows_total {
        Some(n) => artifact::Progress::new("examples", n as u64, 0),
        None => artifact::Progress::bytes(&format!("reading {}", p.file), chunks.bytes),
    };
    let mut out = table::Writer::create(&o.out, format)?;
    let mut totals = Totals::default();
    loop {
        let (first, mut df) = match pending.take() {
            Some(c) => c,
            None => match chunks.next() {
                Some(c) => c?,
                None => break,
            },
        };
        let before = totals.rows;
        p.chunk(first, &mut df, &mut totals, &mut |n| {
            if rows_total.is_some() {
                progress.tick((before + n) as u64);
            }
        })?;
        out.write(&mut df)?;
        if rows_total.is_none() {
            progress.tick(chunks.bytes_read);
        }
    }
    progress.finish();
    out.finish()?;
    let Totals { rows, tokens, tokenize_seconds, seconds } = totals;
    Ok(Summary {
        model: src.what.clone(),
        rows,
        tokens,
        tokenize_seconds,
        seconds,
        examples_per_second: rows as f64 / (tokenize_seconds + seconds).max(1e-9),
        device: model::device::describe(p.device),
        threshold: (src.task == Task::MultiLabel).then_some(p.threshold),
        max_length: p.params.max_length,
        out: o.out.clone(),
    })
}

/// What predicting a chunk needs: the model, its tokenizer and tokenize settings, the
/// objective whose outputs are read, the multi-label threshold, and the options.
struct Predictor<'a> {
    o: &'a Options,
    src: &'a source::Source,
    /// The input's name, for errors.
    file: String,
    device: tch::Device,
    m: model::Model,
    tk: tokenize::tok::Tok,
    params: TokenizeParams,
    pad_id: u32,
    objective: Objective,
    threshold: f64,
}

/// What the chunks predicted so far add up to.
#[derive(Default)]
struct Totals {
    rows: usize,
    tokens: usize,
    tokenize_seconds: f64,
    seconds: f64,
}

impl<'a> Predictor<'a> {
    /// Loads the model and its tokenizer, and settles how texts are tokenized and, for
    /// multi-label, the threshold (saying which when an evaluation tuned it).
    fn load(o: &'a Options, src: &'a source::Source, file: String) -> anyhow::Result<Predictor<'a>> {
        let device = model::device::resolve(&o.device)?;
        let m = load_model(src, o.precision, device)?;
        let tk = tokenize::tok::load(&src.tokenizer_dir)?;
        check_vocabulary(&tk, &m, src)?;
        let params = settings(src, o.max_length, m.max_length())?;
        let pad_id = src.tokenize.as_ref().map_or(tk.pad_id, |t| t.pad_id);
        let objective = match src.task {
            Task::SingleLabel => Objective::single_label(None, 0.0, device),
            Task::MultiLabel => Objective::multi_label(None, device),
            Task::Regression => Objective::Regression,
        };
        let threshold = match (o.threshold, &src.tuned_threshold) {
            (Some(t), _) => t,
            (None, Some((t, how))) if src.task == Task::MultiLabel => {
                eprintln!("multi-label threshold {t} ({how}; --threshold to choose another)");
                *t
            }
            _ => 0.5,
        };
        Ok(Predictor { o, src, file, device, m, tk, params, pad_id, objective, threshold })
    }

    /// Predicts a chunk (its first row is the file's row `first`) and adds the prediction
    /// columns to it; `done(n)` follows the chunk's inference.
    fn chunk(&self, first: usize, df: &mut DataFrame, totals: &mut Totals, done: &mut dyn FnMut(usize)) -> anyhow::Result<()> {
        let o = self.o;
        let texts = download::dataset::text_column_from(df, &self.file, first, &o.column, "--column")?;
        let pairs = match &o.pair_column {
            Some(c) => Some(download::dataset::text_column_from(df, &self.file, first, c, "--pair-column")?),
            None => None,
        };
        let t = Instant::now();
        let examples = encode(&self.tk, &texts, pairs.as_deref(), &self.params, first)?;
        totals.tokenize_seconds += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let pred = model::infer::predict(&self.m, &self.objective, &examples, o.batch_size, self.pad_id, self.device, done)
            .map_err(|e| e.explain("prediction", "--batch-size"))?;
        totals.seconds += t.elapsed().as_secs_f64();
        for c in output_columns(self.src.task, &self.src.names, &pred, self.threshold) {
            df.with_column(c).context("adding the prediction columns")?;
        }
        totals.rows += texts.len();
        totals.tokens += pred.tokens;
        Ok(())
    }
}

/// A model trained on pairs needs a second text, one trained on single texts refuses it.
fn check_pairs(src: &source::Source, given: bool) -> anyhow::Result<()> {
    let Some(meta) = &src.tokenize else { return Ok(()) };
    match (meta.pair_truncation.is_some(), given) {
        (true, false) => bail!("{} was trained on sentence pairs: name the second text's column with --pair-column", src.what),
        (false, true) => bail!("{} was trained on single texts: drop --pair-column", src.what),
        _ => Ok(()),
    }
}

/// The model with its weights. A Hugging Face checkpoint must hold the classification head:
/// an encoder alone would predict with a random one.
fn load_model(src: &source::Source, precision: Precision, device: tch::Device) -> anyhow::Result<model::Model> {
    let n = src.names.len() as i64;
    let mut m = if src.exact {
        let m = model::Model::random(src.config.clone(), n, device, 0)?;
        m.params.load_exact(&src.weights)?;
        m
    } else {
        let (m, report) = model::Model::load(src.config.clone(), n, &src.weights, device, 0)?;
        if !report.initialized.is_empty() {
            bail!(
                "{}: holds no classification head ({} missing): it is an encoder, not a fine-tuned classifier; fine-tune it with a pipeline first (cargo xtask run)",
                src.weights.display(),
                report.initialized.join(", ")
            );
        }
        m
    };
    m.compute = match (precision, device) {
        (Precision::Bf16, _) | (Precision::Auto, tch::Device::Cuda(_)) => tch::Kind::BFloat16,
        _ => tch::Kind::Float,
    };
    Ok(m)
}

/// The tokenizer's ids must index the model's embedding table.
fn check_vocabulary(tk: &tokenize::tok::Tok, m: &model::Model, src: &source::Source) -> anyhow::Result<()> {
    let vocab = tk.tokenizer.get_vocab_size(true);
    let max_id = tk.tokenizer.get_vocab(true).values().copied().max().unwrap_or(0).max(vocab.saturating_sub(1) as u32);
    let table = m.config.family().vocab_size();
    if i64::from(max_id) >= table {
        bail!(
            "the tokenizer in {} produces ids up to {max_id} but {}'s config.json says vocab_size {table}: they do not belong together",
            src.tokenizer_dir.display(),
            src.what
        );
    }
    Ok(())
}

/// How new texts are tokenized: as the training texts were when that is known, else the
/// tokenizer's `model_max_length` (or the model's longest input), cut at the end.
fn settings(src: &source::Source, max_length: Option<usize>, model_max: usize) -> anyhow::Result<TokenizeParams> {
    let mut p = TokenizeParams { max_length: model_max, truncation: Truncation::Head, head_tokens: 0, shard_mib: 1, pair_truncation: PairTruncation::LongestFirst };
    match &src.tokenize {
        Some(t) => {
            p.max_length = t.max_length;
            p.truncation = t.truncation;
            p.head_tokens = t.head_tokens;
            p.pair_truncation = t.pair_truncation.unwrap_or_default();
        }
        None => {
            if let Some(n) = tokenizer_max_length(&src.tokenizer_dir)? {
                p.max_length = n.min(model_max);
            }
        }
    }
    if let Some(n) = max_length {
        if n < 2 || n > model_max {
            bail!("--max-length {n}: the model takes 2 to {model_max} tokens");
        }
        p.max_length = n;
        if p.truncation == Truncation::HeadTail && p.head_tokens + 2 > n {
            bail!("--max-length {n} leaves no room for the {} head tokens the model was trained with (truncation head_tail)", p.head_tokens);
        }
    }
    Ok(p)
}

/// `tokenizer_config.json`'s `model_max_length`, unless absent or transformers' "no limit"
/// sentinel (1e30).
fn tokenizer_max_length(dir: &Path) -> anyhow::Result<Option<usize>> {
    let path = dir.join("tokenizer_config.json");
    let Ok(bytes) = std::fs::read(&path) else { return Ok(None) };
    let v: serde_json::Value = serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", path.display()))?;
    Ok(v.get("model_max_length").and_then(serde_json::Value::as_u64).filter(|&n| n < 1 << 24).map(|n| n as usize))
}

/// Every text (and its second text) tokenized in parallel; a failure names the row (the chunk's
/// first row is the file's row `first`).
fn encode(tk: &tokenize::tok::Tok, texts: &[String], pairs: Option<&[String]>, p: &TokenizeParams, first: usize) -> anyhow::Result<shards::Unlabelled> {
    let encoded: Vec<anyhow::Result<tokenize::tok::Encoded>> = match pairs {
        Some(second) => texts.par_iter().zip(second).map(|(a, b)| tk.encode_pair(a, b, p)).collect(),
        None => texts.par_iter().map(|t| tk.encode(t, p).map(|(ids, full)| tokenize::tok::Encoded { ids, types: None, full })).collect(),
    };
    let mut out = shards::Unlabelled::new(pairs.is_some());
    for (row, e) in encoded.into_iter().enumerate() {
        let e = e.with_context(|| format!("row {}", first + row))?;
        out.push(&e.ids, e.types.as_deref());
    }
    Ok(out)
}

/// The names of the columns predict adds for a task.
pub fn added_columns(task: Task, names: &[String]) -> Vec<String> {
    let probs = names.iter().map(|n| format!("prob_{n}"));
    match task {
        Task::SingleLabel => ["predicted_label".to_string(), "score".into()].into_iter().chain(probs).collect(),
        Task::MultiLabel => std::iter::once("predicted_labels".to_string()).chain(probs).collect(),
        Task::Regression => vec!["score".into()],
    }
}

/// The prediction columns (see the crate docs) of `pred` (per row: softmax probabilities,
/// per-label sigmoid probabilities, or the score).
fn output_columns(task: Task, names: &[String], pred: &model::infer::Predictions, threshold: f64) -> Vec<Column> {
    let probs = &pred.probs;
    let prob_columns = || names.iter().enumerate().map(|(c, n)| Column::new(format!("prob_{n}").into(), probs.iter().map(|r| r[c]).collect::<Vec<f32>>()));
    match task {
        Task::SingleLabel => {
            // The evaluate stage's choice of class, ties included.
            let best: Vec<usize> = pred.argmax().into_iter().map(|i| i as usize).collect();
            let label: Vec<&str> = best.iter().map(|&i| names[i].as_str()).collect();
            let score: Vec<f32> = best.iter().zip(probs).map(|(&i, r)| r[i]).collect();
            [Column::new("predicted_label".into(), label), Column::new("score".into(), score)].into_iter().chain(prob_columns()).collect()
        }
        Task::MultiLabel => {
            let sets: Vec<Series> = probs
                .iter()
                .map(|r| Series::new("".into(), names.iter().zip(r).filter(|(_, &p)| f64::from(p) > threshold).map(|(n, _)| n.as_str()).collect::<Vec<&str>>()))
                .collect();
            let mut list = Series::new("predicted_labels".into(), sets);
            if list.is_empty() {
                list = Series::new_empty("predicted_labels".into(), &DataType::List(Box::new(DataType::String)));
            }
            std::iter::once(list.into()).chain(prob_columns()).collect()
        }
        Task::Regression => vec![Column::new("score".into(), probs.iter().map(|r| r[0]).collect::<Vec<f32>>())],
    }
}
