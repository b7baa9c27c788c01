//! The tokenize stage: the dataset artifact's texts, through the model artifact's tokenizer,
//! into token shards (see the `shards` crate). Artifact layout:
//!
//! ```text
//! <split>-NNNNN.shard   token ids (and token types of sentence pairs), labels (class ids,
//!                       label sets or scores), untruncated lengths
//! tokenizer.json        the tokenizer used, with our truncation (none) and padding (none)
//! labels.json           the task and class names, copied from the dataset
//! meta.json             max_length, truncation, special ids, vocabulary size and largest id,
//!                       per-split stats (pipeline::files::TokenizeMeta)
//! ```

pub mod stats;
pub mod tok;

use std::path::Path;

use anyhow::{bail, Context as _};
use pipeline::TokenizeParams;
use polars::prelude::*;
use rayon::prelude::*;
use pipeline::files::{Labels, TokenizeMeta};
use pipeline::{Task, Truncation};

/// Bump when the shard contents or meta.json change meaning (3: meta.json holds no seconds).
pub const SCHEMA_VERSION: u32 = 3;

pub fn stage_def() -> artifact::StageDef {
    artifact::stage_def!("tokenize", SCHEMA_VERSION)
}

pub fn validate(p: &TokenizeParams) -> anyhow::Result<()> {
    pipeline::Params::validate(p).map_err(anyhow::Error::msg)
}

/// A normalized split file: texts, second texts of pairs, and labels.
pub struct SplitRows {
    pub text: Vec<String>,
    pub text_pair: Option<Vec<String>>,
    pub labels: RowLabels,
}

/// Labels as the dataset artifact holds them.
pub enum RowLabels {
    Class(Vec<i64>),
    Sets(Vec<Vec<u32>>),
    Scores(Vec<f64>),
}

/// Rows of a split file read and encoded at a time: the stage holds one chunk (its texts and
/// their ids) and one shard buffer, whatever the split's size. A chunk is one of the row groups
/// the download stage writes.
pub const CHUNK_ROWS: usize = pipeline::files::DATASET_ROW_GROUP;

fn open_parquet(path: &Path) -> anyhow::Result<ParquetReader<std::fs::File>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(ParquetReader::new(f))
}

/// Reads `text`, `text_pair` (when present) and `label` from a normalized split file; the label
/// column must hold what `task` reads.
pub fn read_split(path: &Path, task: Task) -> anyhow::Result<SplitRows> {
    let df = open_parquet(path)?.finish().with_context(|| format!("reading {}", path.display()))?;
    rows_of(&df, path, task)
}

/// A split file read a chunk of rows at a time, in order: each chunk is read from the file on
/// its own (the reader skips the row groups outside it), so no more than a chunk's rows are in
/// memory.
pub struct SplitChunks<'a> {
    path: &'a Path,
    task: Task,
    /// Rows in the file.
    pub rows: usize,
    /// Whether the file has sentence pairs (a `text_pair` column).
    pub pairs: bool,
    chunk: usize,
    at: usize,
}

impl SplitChunks<'_> {
    pub fn open(path: &Path, task: Task, chunk: usize) -> anyhow::Result<SplitChunks<'_>> {
        let mut reader = open_parquet(path)?;
        let rows = reader.num_rows().with_context(|| format!("reading {}", path.display()))?;
        let pairs = reader.schema().with_context(|| format!("reading {}", path.display()))?.contains("text_pair");
        Ok(SplitChunks { path, task, rows, pairs, chunk: chunk.max(1), at: 0 })
    }
}

impl Iterator for SplitChunks<'_> {
    type Item = anyhow::Result<SplitRows>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.rows {
            return None;
        }
        let (at, len) = (self.at, self.chunk.min(self.rows - self.at));
        self.at += len;
        let read = || -> anyhow::Result<SplitRows> {
            let df = open_parquet(self.path)?.with_slice(Some((at, len))).finish().with_context(|| format!("reading {}", self.path.display()))?;
            rows_of(&df, self.path, self.task)
        };
        Some(read())
    }
}

fn rows_of(df: &DataFrame, path: &Path, task: Task) -> anyhow::Result<SplitRows> {
    let strings = |name: &str| -> anyhow::Result<Vec<String>> {
        let c = df.column(name).and_then(|c| c.str().cloned()).with_context(|| format!("{}: no utf8 `{name}` column (rerun the download stage)", path.display()))?;
        Ok(c.into_iter().map(|t| t.unwrap_or_default().to_string()).collect())
    };
    let text = strings("text")?;
    let text_pair = if df.get_column_names().iter().any(|c| c.as_str() == "text_pair") { Some(strings("text_pair")?) } else { None };
    let col = df.column("label").with_context(|| format!("{}: no `label` column (rerun the download stage)", path.display()))?;
    let wrong = || anyhow::anyhow!("{}: the `label` column has type {}, which is not what a {} task reads (rerun the download stage)", path.display(), col.dtype(), task.name());
    let labels = match task {
        Task::SingleLabel => RowLabels::Class(col.i64().map_err(|_| wrong())?.into_iter().map(|l| l.unwrap_or_default()).collect()),
        Task::Regression => RowLabels::Scores(col.f64().map_err(|_| wrong())?.into_iter().map(|l| l.unwrap_or(f64::NAN)).collect()),
        Task::MultiLabel => {
            let lists = col.list().map_err(|_| wrong())?;
            let mut sets = Vec::with_capacity(lists.len());
            for l in lists.into_iter() {
                let ids = match l {
                    Some(s) => s.i64().map_err(|_| wrong())?.into_iter().map(|x| x.unwrap_or_default() as u32).collect(),
                    None => Vec::new(),
                };
                sets.push(ids);
            }
            RowLabels::Sets(sets)
        }
    };
    Ok(SplitRows { text, text_pair, labels })
}

impl RowLabels {
    fn get(&self, i: usize) -> shards::Label<'_> {
        match self {
            RowLabels::Class(v) => shards::Label::Class(v[i] as i32),
            RowLabels::Sets(v) => shards::Label::Set(&v[i]),
            RowLabels::Scores(v) => shards::Label::Score(v[i] as f32),
        }
    }
}

/// The shards' label kind for the dataset's task (multi-label: one bit per class name).
fn label_kind(labels: &Labels) -> shards::LabelKind {
    match labels.task {
        Task::SingleLabel => shards::LabelKind::Class,
        Task::MultiLabel => shards::LabelKind::MultiHot { labels: labels.names.len() as u32 },
        Task::Regression => shards::LabelKind::Score,
    }
}

/// What a run wrote to `meta.json` and what it took: the manifest's summary. The seconds stay
/// out of the artifact's files, whose bytes must depend on the inputs alone (early cutoff).
#[derive(Debug, serde::Serialize)]
pub struct Tokenized {
    #[serde(flatten)]
    pub meta: TokenizeMeta,
    /// Per split: reading the parquet, encoding and writing the shards.
    pub seconds: std::collections::BTreeMap<String, f64>,
}

/// Runs the stage: `download` is the download artifact's directory.
pub fn run(p: &TokenizeParams, download: &Path, out: &Path) -> anyhow::Result<Tokenized> {
    run_chunked(p, download, out, CHUNK_ROWS)
}

/// Every text (and second text) of a chunk encoded in parallel, in order.
fn encode_rows(tk: &tok::Tok, rows: &SplitRows, p: &TokenizeParams) -> Vec<anyhow::Result<tok::Encoded>> {
    match &rows.text_pair {
        Some(second) => rows.text.par_iter().zip(second).map(|(a, b)| tk.encode_pair(a, b, p)).collect(),
        None => rows.text.par_iter().map(|text| tk.encode(text, p).map(|(ids, full)| tok::Encoded { ids, types: None, full })).collect(),
    }
}

/// [`run`], reading and encoding `chunk_rows` rows of a split at a time (tests use tiny chunks).
pub fn run_chunked(p: &TokenizeParams, download: &Path, out: &Path, chunk_rows: usize) -> anyhow::Result<Tokenized> {
    validate(p)?;
    let model_dir = download.join("model");
    let tk = tok::load(&model_dir)?;
    let config = &tk.model_config;
    let vocab = tk.tokenizer.get_vocab_size(true);
    // Added tokens may have ids far beyond the vocabulary's size: the shards' id width and the
    // model's embedding table must hold the largest.
    let max_id = tk.tokenizer.get_vocab(true).values().copied().max().unwrap_or(0).max(vocab.saturating_sub(1) as u32);
    if let Some(model_vocab) = config["vocab_size"].as_u64() {
        if u64::from(max_id) >= model_vocab {
            bail!(
                "the tokenizer in {} produces ids up to {max_id} but the model's config.json says vocab_size {model_vocab}: they do not belong together",
                model_dir.display()
            );
        }
    }
    if let Some(maxpos) = config["max_position_embeddings"].as_u64() {
        if p.max_length as u64 > maxpos {
            bail!("tokenize.max_length {} exceeds the model's max_position_embeddings {maxpos}", p.max_length);
        }
    }
    let ds = download.join("dataset");
    let mut splits: Vec<String> = std::fs::read_dir(&ds)
        .with_context(|| format!("{}: not a download artifact (no dataset/)", download.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".parquet")).map(String::from))
        .collect();
    splits.sort();
    if splits.is_empty() {
        bail!("{}: the dataset has no splits", ds.display());
    }
    let labels: Labels = pipeline::files::read(&ds.join("labels.json"))?;
    let mut pairs = None;
    let (mut split_stats, mut seconds) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
    for split in &splits {
        let t = std::time::Instant::now();
        let path = ds.join(format!("{split}.parquet"));
        let chunks = SplitChunks::open(&path, labels.task, chunk_rows)?;
        let has_pairs = chunks.pairs;
        if *pairs.get_or_insert(has_pairs) != has_pairs {
            bail!("{}: some splits have a text_pair column and some do not (rerun the download stage)", ds.display());
        }
        if has_pairs && p.truncation == Truncation::HeadTail {
            bail!("tokenize.truncation head_tail cuts single texts; this dataset has sentence pairs (download.columns.text_pair), which tokenize.pair_truncation cuts (longest_first, only_first, only_second): remove truncation");
        }
        let mut writer = shards::ShardWriter::new(out, split, max_id, p.shard_mib << 20).labels(label_kind(&labels)).token_types(has_pairs);
        let mut st = stats::Stats::new(tk.unk_id);
        let progress = artifact::Progress::new(&format!("rows of {split}"), chunks.rows as u64, 0);
        let mut row = 0;
        for chunk in chunks {
            let rows = chunk?;
            for (i, e) in encode_rows(&tk, &rows, p).into_iter().enumerate() {
                let e = e.with_context(|| format!("split `{split}`, row {}", row + i))?;
                st.add(&e.ids, e.full as usize, p.max_length);
                writer.push_example(&e.ids, e.types.as_deref(), rows.labels.get(i), e.full)?;
            }
            row += rows.text.len();
            progress.tick(row as u64);
        }
        progress.finish();
        let files = writer.finish()?;
        let s = st.summary(files.len());
        eprintln!("tokenize {split}: {}", stats::describe(&s));
        split_stats.insert(split.clone(), s);
        seconds.insert(split.clone(), t.elapsed().as_secs_f64());
    }
    tk.tokenizer
        .save(out.join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("saving tokenizer.json: {e}"))?;
    std::fs::copy(ds.join("labels.json"), out.join("labels.json")).context("copying labels.json")?;
    let meta = TokenizeMeta {
        max_length: p.max_length,
        truncation: p.truncation,
        head_tokens: p.head_tokens,
        vocab_size: vocab,
        max_id,
        pad_id: tk.pad_id,
        cls_id: tk.cls_id,
        sep_id: tk.sep_id,
        unk_id: tk.unk_id,
        tokenizer_source: tk.source.clone(),
        pair_truncation: pairs.unwrap_or(false).then_some(p.pair_truncation),
        splits: split_stats,
    };
    pipeline::files::write(&out.join("meta.json"), &meta)?;
    Ok(Tokenized { meta, seconds })
}
