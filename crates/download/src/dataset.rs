//! Datasets: find the files of each split (Hub repo or local globs), read them with polars, and
//! normalize to `text` (utf8) + `label` (int64, 0..n_classes-1).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use pipeline::{DownloadParams, Task};
use polars::prelude::*;

/// One normalized split.
#[derive(Clone, Debug)]
pub struct SplitData {
    pub text: Vec<String>,
    /// The second texts of sentence pairs.
    pub text_pair: Option<Vec<String>>,
    pub label: Labels,
}

/// What the dataset card says.
#[derive(Clone, Debug, Default)]
pub struct Card {
    /// Split -> glob patterns, from the default config's `data_files`.
    pub data_files: BTreeMap<String, Vec<String>>,
    /// Class names from a `class_label` feature.
    pub class_names: Option<Vec<String>>,
}

/// Parses the YAML front matter of a dataset card (README.md).
pub fn parse_card(text: &str, label_column: &str) -> Card {
    let mut card = Card::default();
    let Some(rest) = text.strip_prefix("---") else { return card };
    let Some(end) = rest.find("\n---") else { return card };
    let Ok(v) = serde_yaml_ng::from_str::<serde_json::Value>(&rest[..end]) else { return card };
    let configs = v["configs"].as_array().cloned().unwrap_or_default();
    let chosen = configs.iter().find(|c| c["default"].as_bool() == Some(true)).or(configs.first());
    if let Some(c) = chosen {
        match &c["data_files"] {
            serde_json::Value::Array(items) => {
                for it in items {
                    let split = it["split"].as_str().unwrap_or("train").to_string();
                    let paths: Vec<String> = match &it["path"] {
                        serde_json::Value::String(s) => vec![s.clone()],
                        serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
                        _ => vec![],
                    };
                    card.data_files.entry(split).or_default().extend(paths);
                }
            }
            serde_json::Value::String(s) => {
                card.data_files.insert("train".into(), vec![s.clone()]);
            }
            _ => {}
        }
    }
    let infos = match &v["dataset_info"] {
        serde_json::Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    for info in infos {
        for f in info["features"].as_array().cloned().unwrap_or_default() {
            if f["name"].as_str() != Some(label_column) {
                continue;
            }
            let names = &f["dtype"]["class_label"]["names"];
            let list: Option<Vec<String>> = match names {
                serde_json::Value::Object(m) => {
                    let mut pairs: Vec<(usize, String)> = m
                        .iter()
                        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
                        .collect();
                    pairs.sort();
                    Some(pairs.into_iter().map(|(_, n)| n).collect())
                }
                serde_json::Value::Array(a) => Some(a.iter().filter_map(|x| x.as_str().map(String::from)).collect()),
                _ => None,
            };
            if list.as_ref().is_some_and(|l| !l.is_empty()) {
                card.class_names = list;
            }
        }
    }
    card
}

/// The repo files of each split when the card has no `configs`: `<split>-*.parquet` and the like.
pub fn guess_data_files(files: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in files {
        let name = f.rsplit('/').next().unwrap_or(f);
        if !is_data_file(name) {
            continue;
        }
        for split in ["train", "validation", "test"] {
            if name.starts_with(&format!("{split}-")) || name.starts_with(&format!("{split}.")) {
                out.entry(split.to_string()).or_default().push(f.clone());
            }
        }
    }
    out
}

fn is_data_file(name: &str) -> bool {
    [".parquet", ".csv", ".tsv", ".jsonl", ".json"].iter().any(|e| name.ends_with(e))
}

/// Repo files matching a card's glob patterns.
pub fn match_patterns(files: &[String], patterns: &[String]) -> Vec<String> {
    let mut out: Vec<String> = files
        .iter()
        .filter(|f| patterns.iter().any(|p| glob::Pattern::new(p).map(|g| g.matches(f)).unwrap_or(false) || *f == p))
        .cloned()
        .collect();
    out.sort();
    out
}

/// Local files of a split: a path or a glob, sorted.
pub fn expand_local(pattern: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = glob::glob(pattern)
        .with_context(|| format!("bad glob `{pattern}`"))?
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    if out.is_empty() {
        bail!("no file matches `{pattern}` (relative to {})", std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default());
    }
    Ok(out)
}

/// Reads a parquet, CSV (`delimiter`, default `,`), TSV or JSON Lines file into a DataFrame; the
/// error names the file.
pub fn read_table(path: &Path, delimiter: Option<char>) -> anyhow::Result<DataFrame> {
    crate::chunks::read_all(path, delimiter)
}

fn show_rows(rows: &[usize]) -> String {
    let shown: Vec<String> = rows.iter().take(5).map(|r| r.to_string()).collect();
    let more = if rows.len() > 5 { format!(" and {} more", rows.len() - 5) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

/// A frame's column names, for errors (built only when one is made: every chunk is checked).
fn column_names(df: &DataFrame) -> Vec<String> {
    df.get_column_names().iter().map(|c| c.to_string()).collect()
}

/// The row numbers where a column is null, counting from `first` (the chunk's first row in its
/// file).
fn null_rows<T>(values: impl Iterator<Item = Option<T>>, first: usize) -> Vec<usize> {
    values.enumerate().filter(|(_, v)| v.is_none()).map(|(i, _)| first + i).collect()
}

/// A text column, checked: a missing column, another type or a null is an error naming the file,
/// the column, the rows (counting from `first`) and `setting`, what chooses the column
/// (`download.columns.text`, `--column`).
fn checked_text<'a>(df: &'a DataFrame, file: &str, first: usize, name: &str, setting: &str) -> anyhow::Result<&'a StringChunked> {
    let col = df.column(name).map_err(|_| anyhow::anyhow!("{file}: no column `{name}` ({setting}); columns present: {:?} (set {setting} to one of them)", column_names(df)))?;
    let ca = col.str().map_err(|_| anyhow::anyhow!("{file}: column `{name}` ({setting}) has type {}, expected text (utf8)", col.dtype()))?;
    let nulls = null_rows(ca.iter(), first);
    if !nulls.is_empty() {
        bail!("{file}: column `{name}` ({setting}) is null in rows {}; drop or fill those rows", show_rows(&nulls));
    }
    Ok(ca)
}

/// A text column as strings, checked as [`checked_text`] does.
pub fn text_column(df: &DataFrame, file: &str, name: &str, setting: &str) -> anyhow::Result<Vec<String>> {
    text_column_from(df, file, 0, name, setting)
}

/// [`text_column`] of a chunk whose first row is the file's row `first`.
pub fn text_column_from(df: &DataFrame, file: &str, first: usize, name: &str, setting: &str) -> anyhow::Result<Vec<String>> {
    Ok(checked_text(df, file, first, name, setting)?.iter().map(|t| t.unwrap_or_default().to_string()).collect())
}

/// A chunk's texts and second texts of pairs (checked by [`read_labels`] before).
pub fn texts(df: &DataFrame, file: &str, first: usize, p: &DownloadParams) -> anyhow::Result<(Vec<String>, Option<Vec<String>>)> {
    let text = text_column_from(df, file, first, &p.columns.text, "download.columns.text")?;
    let pair = match &p.columns.text_pair {
        Some(c) => Some(text_column_from(df, file, first, c, "download.columns.text_pair")?),
        None => None,
    };
    Ok((text, pair))
}

/// Checks a chunk's text columns and reads its raw labels (the chunk's first row is the file's
/// row `first`, for errors). Labels stay as read until every file has been read, so class names
/// can be resolved once.
pub fn read_labels(df: &DataFrame, file: &str, first: usize, p: &DownloadParams) -> anyhow::Result<RawLabels> {
    checked_text(df, file, first, &p.columns.text, "download.columns.text")?;
    if let Some(c) = &p.columns.text_pair {
        checked_text(df, file, first, c, "download.columns.text_pair")?;
    }
    let name = &p.columns.label;
    let label_col = df
        .column(name)
        .map_err(|_| anyhow::anyhow!("{file}: no label column `{name}`; columns present: {:?} (set download.columns.label in the pipeline)", column_names(df)))?;
    let nulls = null_rows((0..label_col.len()).map(|i| label_col.get(i).ok().filter(|v| !v.is_null())), first);
    if !nulls.is_empty() {
        bail!("{file}: label column `{name}` is null in rows {}; drop or fill those rows", show_rows(&nulls));
    }
    match p.task {
        Task::SingleLabel => single_labels(label_col, file, name),
        Task::MultiLabel => label_sets(label_col, file, first, name),
        Task::Regression => scores(label_col, file, first, name),
    }
}

fn single_labels(col: &Column, file: &str, name: &str) -> anyhow::Result<RawLabels> {
    let e = |e: PolarsError| anyhow::anyhow!("{file}: label column `{name}`: {e}");
    Ok(match col.dtype() {
        DataType::String => {
            let mut dict = Dict::default();
            let codes = col.str().map_err(e)?.iter().map(|t| dict.code(t.unwrap_or_default())).collect();
            RawLabels::Str(dict, codes)
        }
        dt if dt.is_integer() => RawLabels::Int(col.cast(&DataType::Int64).map_err(e)?.i64().map_err(e)?.iter().map(|t| t.unwrap_or_default()).collect()),
        DataType::List(_) => bail!("{file}: label column `{name}` holds lists (several labels per row); set download.task: multi_label"),
        dt if dt.is_float() => bail!("{file}: label column `{name}` holds numbers with fractions ({dt}); set download.task: regression for scores, or give class ids or names"),
        dt => bail!("{file}: label column `{name}` has type {dt}; expected class ids (integers) or names (strings)"),
    })
}

fn label_sets(col: &Column, file: &str, first: usize, name: &str) -> anyhow::Result<RawLabels> {
    let e = |e: PolarsError| anyhow::anyhow!("{file}: label column `{name}`: {e}");
    let DataType::List(inner) = col.dtype() else {
        bail!(
            "{file}: label column `{name}` has type {} but download.task is multi_label, which reads a list of class names or ids per row (`[\"toxic\", \"insult\"]`, `[0, 3]`, `[]`); use parquet or JSON Lines lists, or set download.task: single_label",
            col.dtype()
        );
    };
    let list = col.list().map_err(e)?;
    let rows: Vec<Series> = list.into_iter().map(|s| s.unwrap_or_else(|| Series::new_empty("".into(), inner))).collect();
    let null_in = |rows: &[Series]| -> Vec<usize> { rows.iter().enumerate().filter(|(_, s)| s.null_count() > 0).map(|(i, _)| first + i).collect() };
    let bad = null_in(&rows);
    if !bad.is_empty() {
        bail!("{file}: label column `{name}` has null entries inside the lists of rows {}; drop them", show_rows(&bad));
    }
    Ok(match inner.as_ref() {
        DataType::String => {
            let mut dict = Dict::default();
            let sets = rows.iter().map(|s| Ok(s.str()?.iter().map(|t| dict.code(t.unwrap_or_default())).collect())).collect::<PolarsResult<_>>().map_err(e)?;
            RawLabels::StrSets(dict, sets)
        }
        dt if dt.is_integer() => RawLabels::IntSets(
            rows.iter().map(|s| Ok(s.cast(&DataType::Int64)?.i64()?.iter().map(|t| t.unwrap_or_default()).collect())).collect::<PolarsResult<_>>().map_err(e)?,
        ),
        dt => bail!("{file}: label column `{name}` holds lists of {dt}; expected lists of class names (strings) or ids (integers)"),
    })
}

fn scores(col: &Column, file: &str, first: usize, name: &str) -> anyhow::Result<RawLabels> {
    let e = |e: PolarsError| anyhow::anyhow!("{file}: label column `{name}`: {e}");
    let dt = col.dtype();
    if !(dt.is_float() || dt.is_integer()) {
        let example = match dt {
            DataType::String => col.str().ok().and_then(|c| c.iter().flatten().find(|v| v.trim().parse::<f64>().is_err()).map(|v| format!(" (such as {v:?})"))).unwrap_or_default(),
            _ => String::new(),
        };
        bail!("{file}: label column `{name}` has type {dt}{example} but download.task is regression, which reads a number per row; fix the column or set download.task");
    }
    let v: Vec<f64> = col.cast(&DataType::Float64).map_err(e)?.f64().map_err(e)?.iter().map(|t| t.unwrap_or(f64::NAN)).collect();
    let bad: Vec<usize> = v.iter().enumerate().filter(|(_, x)| !x.is_finite()).map(|(i, _)| first + i).collect();
    if !bad.is_empty() {
        bail!("{file}: label column `{name}` is NaN or infinite in rows {}; drop or fix those rows", show_rows(&bad));
    }
    Ok(RawLabels::Float(v))
}

/// Labels as read, before mapping to class ids: strings as codes into a [`Dict`], so a file's
/// labels take a few bytes per row however many rows it has.
#[derive(Clone, Debug)]
pub enum RawLabels {
    Int(Vec<i64>),
    Str(Dict, Vec<u32>),
    IntSets(Vec<Vec<i64>>),
    StrSets(Dict, Vec<Vec<u32>>),
    Float(Vec<f64>),
}

/// Distinct label strings in first-seen order, each one's code its position.
#[derive(Clone, Debug, Default)]
pub struct Dict {
    pub values: Vec<String>,
    index: std::collections::HashMap<String, u32>,
}

impl Dict {
    fn code(&mut self, s: &str) -> u32 {
        if let Some(&c) = self.index.get(s) {
            return c;
        }
        let c = self.values.len() as u32;
        self.values.push(s.to_string());
        self.index.insert(s.to_string(), c);
        c
    }

    /// Codes of `other` as codes of this dictionary (adding its new strings).
    fn merge(&mut self, other: &Dict) -> Vec<u32> {
        other.values.iter().map(|v| self.code(v)).collect()
    }
}

impl RawLabels {
    /// Appends the labels of the file's next chunk; `file` names it when the label column's
    /// type changed between chunks.
    pub fn append(&mut self, more: RawLabels, file: &str) -> anyhow::Result<()> {
        match (self, more) {
            (RawLabels::Int(a), RawLabels::Int(b)) => a.extend(b),
            (RawLabels::Float(a), RawLabels::Float(b)) => a.extend(b),
            (RawLabels::IntSets(a), RawLabels::IntSets(b)) => a.extend(b),
            (RawLabels::Str(d, a), RawLabels::Str(e, b)) => {
                let map = d.merge(&e);
                a.extend(b.into_iter().map(|c| map[c as usize]));
            }
            (RawLabels::StrSets(d, a), RawLabels::StrSets(e, b)) => {
                let map = d.merge(&e);
                a.extend(b.into_iter().map(|s| s.into_iter().map(|c| map[c as usize]).collect()));
            }
            _ => bail!("{file}: the label column changes type part way through the file (numbers in some rows, names in others); give every row the same kind of label"),
        }
        Ok(())
    }
}

/// Normalized labels of a split.
#[derive(Clone, Debug, PartialEq)]
pub enum Labels {
    /// A class id per row.
    Class(Vec<i64>),
    /// The sorted, distinct class ids of each row.
    Sets(Vec<Vec<i64>>),
    Scores(Vec<f64>),
}

impl Labels {
    pub fn len(&self) -> usize {
        match self {
            Labels::Class(v) => v.len(),
            Labels::Sets(v) => v.len(),
            Labels::Scores(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn take(&self, idx: &[usize]) -> Labels {
        match self {
            Labels::Class(v) => Labels::Class(idx.iter().map(|&i| v[i]).collect()),
            Labels::Sets(v) => Labels::Sets(idx.iter().map(|&i| v[i].clone()).collect()),
            Labels::Scores(v) => Labels::Scores(idx.iter().map(|&i| v[i]).collect()),
        }
    }

    fn split_off(&mut self, at: usize) -> Labels {
        match self {
            Labels::Class(v) => Labels::Class(v.split_off(at)),
            Labels::Sets(v) => Labels::Sets(v.split_off(at)),
            Labels::Scores(v) => Labels::Scores(v.split_off(at)),
        }
    }

    pub fn extend(&mut self, more: Labels) {
        match (self, more) {
            (Labels::Class(a), Labels::Class(b)) => a.extend(b),
            (Labels::Sets(a), Labels::Sets(b)) => a.extend(b),
            (Labels::Scores(a), Labels::Scores(b)) => a.extend(b),
            _ => unreachable!("one task per dataset"),
        }
    }

    /// Examples per class (single-label) or carrying each label (multi-label); empty for scores.
    pub fn counts(&self, classes: usize) -> Vec<usize> {
        let mut c = vec![0usize; classes];
        match self {
            Labels::Class(v) => v.iter().for_each(|&l| c[l as usize] += 1),
            Labels::Sets(v) => v.iter().flatten().for_each(|&l| c[l as usize] += 1),
            Labels::Scores(_) => c.clear(),
        }
        c
    }

    /// Regression: mean, standard deviation, minimum and maximum of the scores.
    pub fn score_stats(&self) -> Option<pipeline::files::ScoreStats> {
        let Labels::Scores(v) = self else { return None };
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(pipeline::files::ScoreStats { mean, std, min, max })
    }
}

/// A class name or id of a row's label (a list entry for multi-label) mapped to an id.
fn class_id(s: &str, p: &DownloadParams, names: &[String]) -> Option<i64> {
    match &p.label_map {
        Some(m) => m.get(s).copied(),
        None => names.iter().position(|n| n == s).map(|i| i as i64),
    }
}

/// The distinct offending values, quoted, at most five.
fn show_values<T: std::fmt::Debug + Ord>(mut v: Vec<T>) -> String {
    v.sort();
    v.dedup();
    let shown: Vec<String> = v.iter().take(5).map(|s| format!("{s:?}")).collect();
    let more = if v.len() > 5 { format!(" and {} more", v.len() - 5) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

/// Maps raw labels to ids `0..n_classes` (multi-label: per list entry), checking the range.
pub fn map_labels(raw: RawLabels, split: &str, p: &DownloadParams, names: &[String]) -> anyhow::Result<Labels> {
    let n = names.len() as i64;
    let out_of_range = |bad: Vec<(usize, i64)>| {
        let shown: Vec<String> = bad.iter().take(5).map(|(r, l)| format!("row {r}: {l}")).collect();
        anyhow::anyhow!(
            "split `{split}`: {} labels outside 0..{} ({n} classes: {names:?}): {}; fix the data or set download.label_names",
            bad.len(),
            n - 1,
            shown.join(", ")
        )
    };
    let unmapped = |count: usize, bad: Vec<String>, what: &str| {
        anyhow::anyhow!(
            "split `{split}`: {count} {what} not a known class ({}); classes: {names:?}; add them to download.label_names (or download.label_map: label -> id)",
            show_values(bad)
        )
    };
    // Each distinct string's class id, or None where it names no class.
    let dict_ids = |dict: &Dict| -> Vec<Option<i64>> { dict.values.iter().map(|s| class_id(s, p, names).filter(|i| (0..n).contains(i))).collect() };
    let unknown = |dict: &Dict, ids: &[Option<i64>]| -> Vec<String> { dict.values.iter().zip(ids).filter(|(_, i)| i.is_none()).map(|(s, _)| s.clone()).collect() };
    match raw {
        RawLabels::Int(v) => {
            let bad: Vec<(usize, i64)> = v.iter().copied().enumerate().filter(|(_, l)| *l < 0 || *l >= n).collect();
            if !bad.is_empty() {
                return Err(out_of_range(bad));
            }
            Ok(Labels::Class(v))
        }
        RawLabels::Str(dict, codes) => {
            let ids = dict_ids(&dict);
            let bad = codes.iter().filter(|&&c| ids[c as usize].is_none()).count();
            if bad > 0 {
                return Err(unmapped(bad, unknown(&dict, &ids), "string labels are"));
            }
            Ok(Labels::Class(codes.iter().filter_map(|&c| ids[c as usize]).collect()))
        }
        RawLabels::IntSets(v) => {
            let bad: Vec<(usize, i64)> = v.iter().enumerate().flat_map(|(r, l)| l.iter().filter(|&&x| x < 0 || x >= n).map(move |&x| (r, x))).collect();
            if !bad.is_empty() {
                return Err(out_of_range(bad));
            }
            Ok(Labels::Sets(v.into_iter().map(sorted_set).collect()))
        }
        RawLabels::StrSets(dict, sets) => {
            let ids = dict_ids(&dict);
            let bad = sets.iter().flatten().filter(|&&c| ids[c as usize].is_none()).count();
            if bad > 0 {
                return Err(unmapped(bad, unknown(&dict, &ids), "list entries name"));
            }
            Ok(Labels::Sets(sets.iter().map(|l| sorted_set(l.iter().filter_map(|&c| ids[c as usize]).collect())).collect()))
        }
        RawLabels::Float(v) => Ok(Labels::Scores(v)),
    }
}

fn sorted_set(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v.dedup();
    v
}

/// Class names: the pipeline's, else the card's, else sorted distinct strings (with a
/// label_map: ordered by id), else `LABEL_i` for `0..=max`. Regression: the pipeline's one
/// name, else the label column's.
pub fn class_names(p: &DownloadParams, card: Option<&[String]>, raws: &[&RawLabels]) -> Vec<String> {
    if let Some(n) = &p.label_names {
        return n.clone();
    }
    if p.task == Task::Regression {
        return vec![p.columns.label.clone()];
    }
    if let Some(m) = &p.label_map {
        let mut pairs: Vec<(i64, &String)> = m.iter().map(|(k, v)| (*v, k)).collect();
        pairs.sort();
        pairs.dedup_by_key(|(id, _)| *id);
        return pairs.into_iter().map(|(_, k)| k.clone()).collect();
    }
    if let Some(c) = card {
        return c.to_vec();
    }
    let strings: Vec<&String> = raws
        .iter()
        .flat_map(|r| -> Box<dyn Iterator<Item = &String>> {
            match r {
                RawLabels::Str(d, _) | RawLabels::StrSets(d, _) => Box::new(d.values.iter()),
                _ => Box::new(std::iter::empty()),
            }
        })
        .collect();
    if !strings.is_empty() {
        let mut s: Vec<String> = strings.into_iter().cloned().collect();
        s.sort();
        s.dedup();
        return s;
    }
    let max = raws
        .iter()
        .filter_map(|r| match r {
            RawLabels::Int(v) => v.iter().copied().max(),
            RawLabels::IntSets(v) => v.iter().flatten().copied().max(),
            _ => None,
        })
        .max()
        .unwrap_or(0)
        .max(if p.task == Task::MultiLabel { 0 } else { 1 });
    (0..=max).map(|i| format!("LABEL_{i}")).collect()
}

/// A deterministic permutation of `0..n` from a seed.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    v
}

/// Splits `labels` into (kept, carved) index lists: `fraction` of each class goes to the carved
/// part, chosen by a seeded shuffle; both keep the original order.
pub fn stratified_split(labels: &[i64], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut by_class: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by_class.entry(l).or_default().push(i);
    }
    let mut carved = Vec::new();
    for (c, idx) in by_class {
        let perm = permutation(idx.len(), seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let take = (idx.len() as f64 * fraction).round() as usize;
        carved.extend(perm[..take.min(idx.len())].iter().map(|&j| idx[j]));
    }
    carved.sort_unstable();
    let mut is_carved = vec![false; labels.len()];
    for &i in &carved {
        is_carved[i] = true;
    }
    let kept = (0..labels.len()).filter(|&i| !is_carved[i]).collect();
    (kept, carved)
}

impl SplitData {
    pub fn take(&self, idx: &[usize]) -> SplitData {
        let pick = |v: &Vec<String>| idx.iter().map(|&i| v[i].clone()).collect();
        SplitData { text: pick(&self.text), text_pair: self.text_pair.as_ref().map(pick), label: self.label.take(idx) }
    }

    /// Appends another file's rows.
    pub fn extend(&mut self, more: SplitData) {
        self.text.extend(more.text);
        if let (Some(a), Some(b)) = (self.text_pair.as_mut(), more.text_pair) {
            a.extend(b);
        }
        self.label.extend(more.label);
    }

    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The split as a frame: `text` (and `text_pair`) and `label`: int64 class ids, lists of
    /// int64 class ids, or float64 scores.
    fn frame(&self) -> anyhow::Result<DataFrame> {
        let mut cols = vec![Column::new("text".into(), &self.text)];
        if let Some(pair) = &self.text_pair {
            cols.push(Column::new("text_pair".into(), pair));
        }
        cols.push(match &self.label {
            Labels::Class(v) => Column::new("label".into(), v),
            Labels::Scores(v) => Column::new("label".into(), v),
            Labels::Sets(v) => {
                let rows: Vec<Series> = v.iter().map(|s| Series::new("".into(), s)).collect();
                Column::new("label".into(), rows)
            }
        });
        Ok(DataFrame::new(cols)?)
    }

    /// The rows from `at` on, leaving the first `at`.
    fn split_off(&mut self, at: usize) -> SplitData {
        SplitData { text: self.text.split_off(at), text_pair: self.text_pair.as_mut().map(|p| p.split_off(at)), label: self.label.split_off(at) }
    }

    /// Writes the split as one parquet file (what [`SplitWriter`] writes).
    pub fn write_parquet(&self, path: &Path) -> anyhow::Result<()> {
        let mut w = SplitWriter::create(path)?;
        w.push(self.clone())?;
        w.finish()
    }
}

/// A split's parquet file written as its rows arrive, a row group of
/// [`pipeline::files::DATASET_ROW_GROUP`] rows at a time: it holds at most one row group's rows.
pub struct SplitWriter {
    path: PathBuf,
    file: Option<std::fs::File>,
    writer: Option<polars::io::parquet::write::BatchedWriter<std::fs::File>>,
    buffer: Option<SplitData>,
    pub rows: usize,
}

impl SplitWriter {
    pub fn create(path: &Path) -> anyhow::Result<SplitWriter> {
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(SplitWriter { path: path.to_path_buf(), file: Some(file), writer: None, buffer: None, rows: 0 })
    }

    /// Appends rows, writing each row group as it fills.
    pub fn push(&mut self, part: SplitData) -> anyhow::Result<()> {
        self.rows += part.len();
        match self.buffer.as_mut() {
            Some(b) => b.extend(part),
            None => self.buffer = Some(part),
        }
        let group = pipeline::files::DATASET_ROW_GROUP;
        while let Some(b) = self.buffer.as_mut().filter(|b| b.len() >= group) {
            let rest = b.split_off(group);
            let full = self.buffer.replace(rest).unwrap_or_else(|| unreachable!());
            self.write(&full)?;
        }
        Ok(())
    }

    fn write(&mut self, data: &SplitData) -> anyhow::Result<()> {
        let df = data.frame()?;
        let w = match self.writer.as_mut() {
            Some(w) => w,
            None => {
                let f = self.file.take().with_context(|| format!("{}: written after it was finished", self.path.display()))?;
                // LZ4: a third of zstd's write time here, for files that live one pipeline long.
                let w = ParquetWriter::new(f).with_compression(ParquetCompression::Lz4Raw).batched(df.schema()).with_context(|| format!("writing {}", self.path.display()))?;
                self.writer.insert(w)
            }
        };
        w.write_batch(&df).with_context(|| format!("writing {}", self.path.display()))
    }

    /// Writes the last row group and the file's footer.
    pub fn finish(mut self) -> anyhow::Result<()> {
        if let Some(rest) = self.buffer.take().filter(|b| !b.is_empty()) {
            self.write(&rest)?;
        }
        let Some(w) = self.writer.take() else { bail!("{}: no rows to write", self.path.display()) };
        w.finish().with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }
}

/// Splits `n` rows into (kept, carved) index lists: a seeded random `fraction` goes to the
/// carved part; both keep the original order (multi-label and regression, which have no single
/// class to stratify by).
pub fn random_split(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let perm = permutation(n, seed);
    let take = ((n as f64 * fraction).round() as usize).min(n);
    let mut is_carved = vec![false; n];
    for &i in &perm[..take] {
        is_carved[i] = true;
    }
    ((0..n).filter(|&i| !is_carved[i]).collect(), (0..n).filter(|&i| is_carved[i]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_of_imdb() {
        let text = "---\ndataset_info:\n  config_name: plain_text\n  features:\n  - name: text\n    dtype: string\n  - name: label\n    dtype:\n      class_label:\n        names:\n          '0': neg\n          '1': pos\nconfigs:\n- config_name: plain_text\n  data_files:\n  - split: train\n    path: plain_text/train-*\n  - split: test\n    path: plain_text/test-*\n  default: true\n---\n# x\n";
        let c = parse_card(text, "label");
        assert_eq!(c.class_names, Some(vec!["neg".into(), "pos".into()]));
        assert_eq!(c.data_files["train"], vec!["plain_text/train-*".to_string()]);
        let files = vec!["plain_text/train-00000-of-00001.parquet".to_string(), "plain_text/test-00000-of-00001.parquet".into(), "README.md".into()];
        assert_eq!(match_patterns(&files, &c.data_files["train"]), vec![files[0].clone()]);
    }

    #[test]
    fn split_writer_writes_row_groups_of_the_set_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.parquet");
        let group = pipeline::files::DATASET_ROW_GROUP;
        let n = group * 2 + group / 2;
        let mut w = SplitWriter::create(&path).unwrap();
        // Parts of odd sizes: the writer regroups them and holds less than a group between writes.
        let mut at = 0;
        while at < n {
            let k = 10_007.min(n - at);
            w.push(SplitData { text: (at..at + k).map(|i| i.to_string()).collect(), text_pair: None, label: Labels::Class(vec![0; k]) }).unwrap();
            assert!(w.buffer.as_ref().map_or(0, SplitData::len) < group);
            at += k;
        }
        w.finish().unwrap();
        let mut r = ParquetReader::new(std::fs::File::open(&path).unwrap());
        let groups: Vec<usize> = r.get_metadata().unwrap().row_groups.iter().map(|g| g.num_rows()).collect();
        assert_eq!(groups, [group, group, group / 2]);
        let df = r.finish().unwrap();
        assert_eq!(df.column("text").unwrap().str().unwrap().get(n - 1), Some((n - 1).to_string().as_str()));
    }

    #[test]
    fn stratified_split_is_deterministic_and_balanced() {
        let labels: Vec<i64> = (0..1000).map(|i| if i < 700 { 0 } else { 1 }).collect();
        let (kept, carved) = stratified_split(&labels, 0.1, 42);
        assert_eq!(carved.len(), 100);
        assert_eq!(carved.iter().filter(|&&i| labels[i] == 1).count(), 30);
        assert_eq!(kept.len() + carved.len(), 1000);
        assert_eq!(stratified_split(&labels, 0.1, 42), (kept, carved.clone()));
        assert_ne!(stratified_split(&labels, 0.1, 7).1, carved);
    }
}
