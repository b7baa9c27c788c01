//! The tokenize stage: the dataset artifact's texts, through the model artifact's tokenizer,
//! into token shards (see the `shards` crate). Artifact layout:
//!
//! ```text
//! <split>-NNNNN.shard   token ids, labels, untruncated lengths
//! tokenizer.json        the tokenizer used, with our truncation (none) and padding (none)
//! labels.json           class names, copied from the dataset
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
use pipeline::files::TokenizeMeta;

/// Bump when the shard contents or meta.json change meaning.
pub const SCHEMA_VERSION: u32 = 1;

pub fn stage_def() -> artifact::StageDef {
    artifact::stage_def!("tokenize", SCHEMA_VERSION)
}

pub fn validate(p: &TokenizeParams) -> anyhow::Result<()> {
    pipeline::Params::validate(p).map_err(anyhow::Error::msg)
}

/// Reads `text` and `label` from a normalized split file.
pub fn read_split(path: &Path) -> anyhow::Result<(Vec<String>, Vec<i64>)> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let df = ParquetReader::new(f).finish().with_context(|| format!("reading {}", path.display()))?;
    let text = df.column("text").and_then(|c| c.str().cloned()).with_context(|| format!("{}: no utf8 `text` column", path.display()))?;
    let label = df.column("label").and_then(|c| c.i64().cloned()).with_context(|| format!("{}: no int64 `label` column", path.display()))?;
    Ok((
        text.into_iter().map(|t| t.unwrap_or_default().to_string()).collect(),
        label.into_iter().map(|l| l.unwrap_or_default()).collect(),
    ))
}

/// Runs the stage: `download` is the download artifact's directory.
pub fn run(p: &TokenizeParams, download: &Path, out: &Path) -> anyhow::Result<TokenizeMeta> {
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
    let mut split_stats = std::collections::BTreeMap::new();
    for split in &splits {
        let t = std::time::Instant::now();
        let (texts, labels) = read_split(&ds.join(format!("{split}.parquet")))?;
        let encoded: Vec<anyhow::Result<(Vec<u32>, u32)>> =
            texts.par_iter().map(|text| tk.encode(text, p)).collect();
        let mut writer = shards::ShardWriter::new(out, split, max_id, p.shard_mib << 20);
        let mut st = stats::Stats::new(tk.unk_id);
        for (i, (e, label)) in encoded.into_iter().zip(&labels).enumerate() {
            let (ids, full) = e.with_context(|| format!("split `{split}`, row {i}"))?;
            st.add(&ids, full as usize, p.max_length);
            writer.push(&ids, *label as i32, full)?;
        }
        let files = writer.finish()?;
        let s = st.summary(files.len(), t.elapsed().as_secs_f64());
        eprintln!("tokenize {split}: {}", stats::describe(&s));
        split_stats.insert(split.clone(), s);
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
        splits: split_stats,
    };
    pipeline::files::write(&out.join("meta.json"), &meta)?;
    Ok(meta)
}
