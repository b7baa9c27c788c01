//! The download stage: a dataset and a pretrained model, from the Hugging Face Hub or local
//! files, into one artifact:
//!
//! ```text
//! dataset/<split>.parquet   text (utf8), text_pair (utf8, for sentence pairs), label: int64
//!                           class id (single_label), list of int64 class ids (multi_label),
//!                           float64 (regression)
//! dataset/labels.json       {"task": ..., "names": [...]}
//! dataset/info.json         source, commit, files (sha256), split sizes and class counts, the
//!                           splits carved from train (pipeline::files::DatasetInfo)
//! model/                    config.json, model.safetensors, tokenizer files (as on the Hub)
//! model-source.json         repo, revision, commit, sha256 of every model file
//! ```

pub mod chunks;
pub mod dataset;
pub mod hub;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use pipeline::files::{Carved, DatasetInfo, Labels, Origin, SplitInfo};
use pipeline::{DatasetSource, DownloadParams, ModelSource};
use serde_json::json;
use sha2::Digest;

use dataset::{RawLabels, SplitData};
use hub::{Hub, RepoType};

/// Bump when the artifact's layout or normalization rules change.
/// 3: a `max_examples` subset keeps its split's row order (it was in the draw's order).
pub const SCHEMA_VERSION: u32 = 3;

pub fn stage_def() -> artifact::StageDef {
    artifact::stage_def!("download", SCHEMA_VERSION)
}

/// Checks the parameters before anything runs (the pipeline's own checks).
pub fn validate(p: &DownloadParams) -> anyhow::Result<()> {
    pipeline::Params::validate(p).map_err(anyhow::Error::msg)
}

/// Content the key must cover beyond parameters: the bytes of local source files.
pub fn local_inputs(p: &DownloadParams) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if let Some(files) = &p.dataset.files {
        for pattern in files.values() {
            for f in dataset::expand_local(pattern)? {
                let h = artifact::hash_file(&f)?.1;
                out.insert(format!("file:{}", f.display()), h);
            }
        }
    }
    if let Some(dir) = &p.model.path {
        for f in model_files(&local_listing(Path::new(dir))?, dir)? {
            let path = Path::new(dir).join(&f);
            out.insert(format!("file:{}", path.display()), artifact::hash_file(&path)?.1);
        }
    }
    Ok(out)
}

fn local_listing(dir: &Path) -> anyhow::Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("model path {}: not a readable directory", dir.display()))?;
    let mut v: Vec<String> = rd.flatten().filter(|e| e.path().is_file()).map(|e| e.file_name().to_string_lossy().to_string()).collect();
    v.sort();
    Ok(v)
}

/// The model files we take from a listing, or why the repo cannot be used.
pub fn model_files(listing: &[String], what: &str) -> anyhow::Result<Vec<String>> {
    let has = |f: &str| listing.iter().any(|x| x == f);
    if !has("config.json") {
        bail!("{what}: no config.json; is this a transformers model repository?");
    }
    if !has("model.safetensors") {
        if has("model.safetensors.index.json") {
            bail!("{what}: sharded safetensors checkpoints (model.safetensors.index.json) are not supported yet; save it as one model.safetensors");
        }
        if has("pytorch_model.bin") {
            bail!(
                "{what}: has only pytorch_model.bin; we do not load pickle files (they can run arbitrary code). \
                 Convert it once in Python: `AutoModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)`, then point download.model.path at dir"
            );
        }
        bail!("{what}: no model.safetensors");
    }
    let mut out = vec!["config.json".to_string(), "model.safetensors".to_string()];
    if has("tokenizer.json") {
        out.push("tokenizer.json".into());
    } else if has("vocab.txt") {
        out.push("vocab.txt".into());
    } else {
        let spm = has("spm.model") || has("sentencepiece.bpe.model");
        bail!(
            "{what}: no tokenizer (neither tokenizer.json nor vocab.txt){}; save one with transformers              (`AutoTokenizer.from_pretrained(...).save_pretrained(dir)` writes tokenizer.json) and use that directory as download.model.path",
            if spm { ": a SentencePiece model alone (DeBERTa's spm.model) cannot be read by the tokenizers library" } else { "" }
        );
    }
    for extra in ["tokenizer_config.json", "special_tokens_map.json", "vocab.txt"] {
        if has(extra) && !out.iter().any(|o| o == extra) {
            out.push(extra.into());
        }
    }
    Ok(out)
}

/// Copies a file into the artifact, returning its sha256 (computed while copying).
fn copy_hashed(src: &Path, dst: &Path) -> anyhow::Result<String> {
    let mut r = std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut w = std::io::BufWriter::new(std::fs::File::create(dst).with_context(|| format!("creating {}", dst.display()))?);
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).with_context(|| format!("reading {}", src.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        w.write_all(&buf[..n]).with_context(|| format!("writing {}", dst.display()))?;
    }
    w.flush().with_context(|| format!("writing {}", dst.display()))?;
    Ok(hex::encode(h.finalize()))
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut r = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut r, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// Each split's source files: split -> (display name, path).
type SplitFiles = BTreeMap<String, Vec<(String, PathBuf)>>;

/// Source files of each split, downloaded or local; the class names the dataset card gives, if
/// any; and where the files came from (for the artifact's provenance).
fn dataset_files(hub: &Hub, src: &DatasetSource, label_column: &str) -> anyhow::Result<(SplitFiles, Option<Vec<String>>, Origin)> {
    let mut out = SplitFiles::new();
    if let Some(files) = &src.files {
        for (split, pattern) in files {
            for f in dataset::expand_local(pattern)? {
                out.entry(split.clone()).or_default().push((f.display().to_string(), f));
            }
        }
        return Ok((out, None, Origin { local: Some(files.clone()), ..Default::default() }));
    }
    let repo = src.repo.as_deref().unwrap_or_default();
    let info = hub.resolve(RepoType::Dataset, repo, &src.revision)?;
    for f in &info.files {
        hub::check_repo_path(f).with_context(|| format!("dataset {repo}"))?;
    }
    let mut card = dataset::Card::default();
    if info.files.iter().any(|f| f == "README.md") {
        let readme = hub.file(RepoType::Dataset, repo, &info.sha, "README.md")?;
        let text = std::fs::read_to_string(&readme).unwrap_or_default();
        card = dataset::parse_card(&text, label_column);
    }
    let mapping = if card.data_files.is_empty() {
        dataset::guess_data_files(&info.files)
    } else {
        card.data_files.iter().map(|(s, pats)| (s.clone(), dataset::match_patterns(&info.files, pats))).collect()
    };
    if mapping.values().all(|v| v.is_empty()) {
        bail!("dataset {repo}@{}: found no data files (parquet, csv, jsonl) for any split; files: {:?}", info.sha, info.files);
    }
    let mut sha256 = BTreeMap::new();
    for (split, files) in mapping {
        for f in files {
            let path = hub.file(RepoType::Dataset, repo, &info.sha, &f)?;
            sha256.insert(f.clone(), sha256_file(&path)?);
            out.entry(split.clone()).or_default().push((f, path));
        }
    }
    let source = Origin {
        repo: Some(repo.to_string()),
        revision: Some(src.revision.clone()),
        commit: Some(info.sha.clone()),
        from_cache: Some(info.from_cache),
        files_sha256: sha256,
        ..Default::default()
    };
    Ok((out, card.class_names, source))
}

/// Runs the stage into `out`. Returns the summary for the manifest.
pub fn run(p: &DownloadParams, hub: &Hub, out: &Path) -> anyhow::Result<serde_json::Value> {
    run_chunked(p, hub, out, chunks::Chunking::default())
}

/// [`run`], reading source files `chunking` at a time. Memory holds the labels of every row (a
/// few bytes each), a chunk of the source and a row group of each split being written, however
/// many rows the dataset has: the sources are read twice, first for their labels (checking every
/// row), which decide the carved splits and subsets, then for their texts, written as they come.
pub fn run_chunked(p: &DownloadParams, hub: &Hub, out: &Path, chunking: chunks::Chunking) -> anyhow::Result<serde_json::Value> {
    validate(p)?;
    let t0 = std::time::Instant::now();
    // Model first: it is small to check and its errors are the commonest.
    let model_dir = out.join("model");
    std::fs::create_dir_all(&model_dir).with_context(|| format!("creating {}", model_dir.display()))?;
    let model_source = fetch_model(hub, &p.model, &model_dir)?;
    pipeline::files::write(&out.join("model-source.json"), &model_source)?;
    let t_model = t0.elapsed().as_secs_f64();

    let (files, card_names, source) = dataset_files(hub, &p.dataset, &p.columns.label)?;
    let t_fetch = t0.elapsed().as_secs_f64();
    // Output split -> source split.
    let mapping: BTreeMap<String, String> = if p.splits.is_empty() {
        files.keys().filter(|s| ["train", "validation", "test"].contains(&s.as_str())).map(|s| (s.clone(), s.clone())).collect()
    } else {
        p.splits.clone()
    };
    if mapping.is_empty() {
        bail!("the dataset has no train, validation or test split (it has {:?}); map yours with download.splits", files.keys().collect::<Vec<_>>());
    }
    // Pass 1: every row checked and every label read; only the labels are kept.
    let mut raw: BTreeMap<String, Vec<Option<RawLabels>>> = BTreeMap::new();
    for (out_split, src_split) in &mapping {
        let Some(list) = files.get(src_split) else {
            bail!("download.splits.{out_split}: the source has no split `{src_split}`; it has {:?}", files.keys().collect::<Vec<_>>());
        };
        let mut read = Vec::new();
        for (name, path) in list {
            read.push(file_labels(path, name, p, chunking).with_context(|| format!("split `{src_split}`"))?);
        }
        raw.insert(out_split.clone(), read);
    }
    let all_raw: Vec<&RawLabels> = raw.values().flatten().flatten().collect();
    let names = dataset::class_names(p, card_names.as_deref(), &all_raw);
    check_names(p, &names)?;
    let mut parts: BTreeMap<String, Part> = BTreeMap::new();
    for (split, read) in raw {
        let mut label: Option<dataset::Labels> = None;
        for l in read.into_iter().flatten() {
            let more = dataset::map_labels(l, &split, p, &names)?;
            match label.as_mut() {
                Some(a) => a.extend(more),
                None => label = Some(more),
            }
        }
        match label {
            Some(label) if !label.is_empty() => parts.insert(split.clone(), Part { source: split, rows: (0..label.len()).collect(), label }),
            _ => bail!("split `{split}` is empty; check download.dataset and download.splits"),
        };
    }
    let (test_carved, validation_carved) = choose_rows(&mut parts, p)?;
    // Pass 2: each source split read again, its rows written to the splits that take them.
    let ds_dir = out.join("dataset");
    std::fs::create_dir_all(&ds_dir).with_context(|| format!("creating {}", ds_dir.display()))?;
    for (split, src_split) in &mapping {
        write_parts(split, &files[src_split], &parts, &ds_dir, p, chunking)?;
    }
    let split_info = parts
        .iter()
        .map(|(split, part)| (split.clone(), SplitInfo { rows: part.rows.len(), class_counts: part.label.counts(names.len()), scores: part.label.score_stats() }))
        .collect();
    pipeline::files::write(&ds_dir.join("labels.json"), &Labels { task: p.task, names: names.clone() })?;
    let info = DatasetInfo { task: p.task, source, splits: split_info, validation_carved, test_carved, columns: p.columns.clone(), split_map: mapping };
    pipeline::files::write(&ds_dir.join("info.json"), &info)?;
    let t_total = t0.elapsed().as_secs_f64();
    Ok(json!({
        "dataset": info,
        "labels": names,
        "model": model_source,
        "seconds": {"model": t_model, "dataset_fetch": t_fetch - t_model, "normalize": t_total - t_fetch},
    }))
}

/// What the task needs of its class names: two classes for single-label, one label for
/// multi-label, one name for regression.
fn check_names(p: &DownloadParams, names: &[String]) -> anyhow::Result<()> {
    let (least, most) = match p.task {
        pipeline::Task::SingleLabel => (2, usize::MAX),
        pipeline::Task::MultiLabel => (1, usize::MAX),
        pipeline::Task::Regression => (1, 1),
    };
    if names.len() < least || names.len() > most {
        bail!(
            "download: a {} task needs {} class names; it has {names:?}{}",
            p.task.name(),
            match p.task {
                pipeline::Task::SingleLabel => "at least two",
                pipeline::Task::MultiLabel => "at least one",
                pipeline::Task::Regression => "exactly one (the score's)",
            },
            if p.label_names.is_some() { " (download.label_names)" } else { "" }
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(d) = names.iter().find(|n| !seen.insert(n.as_str())) {
        bail!("download: the class name {d:?} appears twice in {names:?}; class names must be distinct");
    }
    Ok(())
}

/// An output split before it is written: the rows of the source split `source` it takes (in
/// their order there) and their labels.
struct Part {
    source: String,
    rows: Vec<usize>,
    label: dataset::Labels,
}

impl Part {
    fn take(&self, idx: &[usize]) -> Part {
        Part { source: self.source.clone(), rows: idx.iter().map(|&i| self.rows[i]).collect(), label: self.label.take(idx) }
    }

    fn len(&self) -> usize {
        self.rows.len()
    }
}

/// One source file's labels, read a chunk at a time (every row of every chunk is checked); None
/// for a file without rows.
fn file_labels(path: &Path, name: &str, p: &DownloadParams, chunking: chunks::Chunking) -> anyhow::Result<Option<RawLabels>> {
    let mut chunks = chunks::TableChunks::open(path, p.dataset.delimiter, chunking)?;
    let progress = match chunks.parquet_rows() {
        Some(rows) => artifact::Progress::new(&format!("rows of {name} read"), rows as u64, 0),
        None => artifact::Progress::bytes(&format!("reading {name}"), chunks.bytes),
    };
    let mut out: Option<RawLabels> = None;
    while let Some(chunk) = chunks.next() {
        let (first, df) = chunk?;
        let l = dataset::read_labels(&df, name, first, p)?;
        match out.as_mut() {
            Some(o) => o.append(l, name)?,
            None => out = Some(l),
        }
        progress.tick(if chunks.parquet_rows().is_some() { (first + df.height()) as u64 } else { chunks.bytes_read });
    }
    progress.finish();
    Ok(out)
}

/// Carves the test and validation splits from train where the source has none, then draws the
/// `max_examples` subsets: which rows each output split takes. Every choice depends on the
/// labels alone, so it is made before any text is read again.
fn choose_rows(parts: &mut BTreeMap<String, Part>, p: &DownloadParams) -> anyhow::Result<(Option<Carved>, Option<Carved>)> {
    let test_carved = match &p.test {
        Some(t) => carve(parts, "test", t.fraction, t.seed)?,
        None => None,
    };
    // As before `download.test` existed: no train split, no validation carved (an
    // evaluation-only dataset).
    let validation_carved = match p.validation.fraction > 0.0 && parts.contains_key("train") {
        true => carve(parts, "validation", p.validation.fraction, p.validation.seed)?,
        false => None,
    };
    for (split, n) in &p.max_examples {
        let Some(part) = parts.get(split) else {
            bail!("download.max_examples.{split}: no such split (splits: {:?})", parts.keys().collect::<Vec<_>>());
        };
        if *n < part.len() {
            // The seeded draw of `n` rows, kept in the split's order.
            let mut pick = dataset::permutation(part.len(), p.validation.seed.wrapping_add(1));
            pick.truncate(*n);
            pick.sort_unstable();
            let sub = part.take(&pick);
            parts.insert(split.clone(), sub);
        }
    }
    if let Some((split, _)) = parts.iter().find(|(_, part)| part.len() == 0) {
        bail!("split `{split}` is empty after subsetting");
    }
    Ok((test_carved, validation_carved))
}

/// Moves a `fraction` of train into a new split `name`, when the source has none: stratified
/// by class for single-label, a seeded random draw otherwise.
fn carve(parts: &mut BTreeMap<String, Part>, name: &str, fraction: f64, seed: u64) -> anyhow::Result<Option<Carved>> {
    if parts.contains_key(name) {
        return Ok(None);
    }
    let Some(train) = parts.get("train") else {
        bail!("download: carving a `{name}` split needs a `train` split to carve it from; the splits are {:?}", parts.keys().collect::<Vec<_>>());
    };
    let (kept, part) = match &train.label {
        dataset::Labels::Class(l) => dataset::stratified_split(l, fraction, seed),
        _ => dataset::random_split(train.len(), fraction, seed),
    };
    let stratified = matches!(train.label, dataset::Labels::Class(_));
    if part.is_empty() || kept.is_empty() {
        bail!("download: a `{name}` fraction of {fraction} of {} train rows leaves one side empty; change the fraction", train.len());
    }
    let (t, v) = (train.take(&kept), train.take(&part));
    let rows = v.len();
    parts.insert("train".into(), t);
    parts.insert(name.into(), v);
    Ok(Some(Carved { from: "train".into(), fraction, seed, stratified, rows }))
}

/// Reads the source split `source`'s files again, a chunk at a time, and writes each row to the
/// output split that takes it.
fn write_parts(source: &str, files: &[(String, PathBuf)], parts: &BTreeMap<String, Part>, dir: &Path, p: &DownloadParams, chunking: chunks::Chunking) -> anyhow::Result<()> {
    let mut outs = Vec::new();
    for (split, part) in parts.iter().filter(|(_, part)| part.source == source) {
        outs.push((part, dataset::SplitWriter::create(&dir.join(format!("{split}.parquet")))?, 0usize));
    }
    let total: usize = outs.iter().map(|(part, _, _)| part.len()).sum();
    let progress = artifact::Progress::new(&format!("rows of {source} written"), total as u64, 0);
    // The split's row number of each file's first row.
    let mut base = 0;
    for (name, path) in files {
        let mut rows_in_file = 0;
        for chunk in chunks::TableChunks::open(path, p.dataset.delimiter, chunking)? {
            let (first, df) = chunk?;
            let (text, pair) = dataset::texts(&df, name, first, p)?;
            let (from, to) = (base + first, base + first + text.len());
            for (part, writer, pos) in &mut outs {
                let k = part.rows[*pos..].iter().take_while(|&&r| r < to).count();
                let local: Vec<usize> = part.rows[*pos..*pos + k].iter().map(|&r| r - from).collect();
                let pick = |v: &Vec<String>| local.iter().map(|&i| v[i].clone()).collect();
                let label = part.label.take(&(*pos..*pos + k).collect::<Vec<_>>());
                writer.push(SplitData { text: pick(&text), text_pair: pair.as_ref().map(pick), label })?;
                *pos += k;
            }
            rows_in_file = first + text.len();
            progress.tick(outs.iter().map(|(_, _, pos)| *pos as u64).sum());
        }
        base += rows_in_file;
    }
    progress.finish();
    for (part, writer, pos) in outs {
        if pos != part.len() {
            bail!("split `{source}` changed while it was read ({} rows were expected, {pos} found); rerun", part.len());
        }
        writer.finish()?;
    }
    Ok(())
}

fn fetch_model(hub: &Hub, src: &ModelSource, dir: &Path) -> anyhow::Result<Origin> {
    let mut sha256 = BTreeMap::new();
    if let Some(local) = &src.path {
        let listing = local_listing(Path::new(local))?;
        for f in model_files(&listing, local)? {
            sha256.insert(f.clone(), copy_hashed(&Path::new(local).join(&f), &dir.join(&f))?);
        }
        return Ok(Origin { path: Some(local.clone()), files_sha256: sha256, ..Default::default() });
    }
    let repo = src.repo.as_deref().unwrap_or_default();
    let info = hub.resolve(RepoType::Model, repo, &src.revision)?;
    for f in &info.files {
        hub::check_repo_path(f).with_context(|| format!("model {repo}"))?;
    }
    let what = format!("model {repo}@{}", src.revision);
    for f in model_files(&info.files, &what)? {
        let path = hub.file(RepoType::Model, repo, &info.sha, &f)?;
        sha256.insert(f.clone(), copy_hashed(&path, &dir.join(&f))?);
    }
    Ok(Origin {
        repo: Some(repo.to_string()),
        revision: Some(src.revision.clone()),
        commit: Some(info.sha),
        from_cache: Some(info.from_cache),
        files_sha256: sha256,
        ..Default::default()
    })
}
