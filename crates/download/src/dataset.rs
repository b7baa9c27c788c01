//! Datasets: find the files of each split (Hub repo or local globs), read them with polars, and
//! normalize to `text` (utf8) + `label` (int64, 0..n_classes-1).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use pipeline::DownloadParams;
use polars::prelude::*;

/// One normalized split.
#[derive(Clone, Debug, Default)]
pub struct SplitData {
    pub text: Vec<String>,
    pub label: Vec<i64>,
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
    let name = path.display().to_string();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    let df = match ext.as_str() {
        "parquet" => {
            let f = std::fs::File::open(path).with_context(|| format!("opening {name}"))?;
            ParquetReader::new(f).finish().map_err(|e| anyhow::anyhow!("{name}: not a readable parquet file: {e}"))?
        }
        "csv" => {
            let sep = delimiter.unwrap_or(',');
            CsvReadOptions::default()
                .with_has_header(true)
                .map_parse_options(|o| o.with_separator(sep as u8))
                .try_into_reader_with_file_path(Some(path.to_path_buf()))
                .and_then(|r| r.finish())
                .map_err(|e| anyhow::anyhow!("{name}: not a readable CSV file (UTF-8, a header row, fields separated by {sep:?}; set download.dataset.delimiter for another): {e}"))?
        }
        // GLUE's format: a header row, tabs, and no quoting (a `"` is an ordinary character).
        "tsv" => CsvReadOptions::default()
            .with_has_header(true)
            .map_parse_options(|o| o.with_separator(b'\t').with_quote_char(None))
            .try_into_reader_with_file_path(Some(path.to_path_buf()))
            .and_then(|r| r.finish())
            .map_err(|e| anyhow::anyhow!("{name}: not a readable TSV file (UTF-8, a header row, tab-separated, no quoting): {e}"))?,
        "jsonl" | "json" => {
            let f = std::fs::File::open(path).with_context(|| format!("opening {name}"))?;
            JsonLineReader::new(f).finish().map_err(|e| anyhow::anyhow!("{name}: not readable JSON Lines: {e}"))?
        }
        other => bail!("{name}: unsupported extension `.{other}`; use .parquet, .csv, .tsv or .jsonl"),
    };
    Ok(df)
}

fn show_rows(rows: &[usize]) -> String {
    let shown: Vec<String> = rows.iter().take(5).map(|r| r.to_string()).collect();
    let more = if rows.len() > 5 { format!(" and {} more", rows.len() - 5) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

/// Extracts text and raw labels from one file's frame. Labels stay as strings or integers until
/// every file has been read, so class names can be resolved once.
pub fn extract(df: &DataFrame, file: &str, p: &DownloadParams) -> anyhow::Result<(Vec<String>, RawLabels)> {
    let cols: Vec<String> = df.get_column_names().iter().map(|c| c.to_string()).collect();
    let col = |name: &str, role: &str| {
        df.column(name).map_err(|_| {
            anyhow::anyhow!("{file}: no {role} column `{name}`; columns present: {cols:?} (set download.columns.{role} in the pipeline)")
        })
    };
    let text_col = col(&p.columns.text, "text")?;
    let text_ca = text_col
        .str()
        .map_err(|_| anyhow::anyhow!("{file}: column `{}` has type {}, expected text (utf8)", p.columns.text, text_col.dtype()))?;
    let nulls: Vec<usize> = text_ca.iter().enumerate().filter(|(_, t)| t.is_none()).map(|(i, _)| i).collect();
    if !nulls.is_empty() {
        bail!("{file}: column `{}` is null in rows {}; drop or fill those rows", p.columns.text, show_rows(&nulls));
    }
    let text: Vec<String> = text_ca.iter().map(|t| t.unwrap_or_default().to_string()).collect();
    let label_col = col(&p.columns.label, "label")?;
    let labels = match label_col.dtype() {
        DataType::String => {
            let ca = label_col.str().map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            let nulls: Vec<usize> = ca.iter().enumerate().filter(|(_, t)| t.is_none()).map(|(i, _)| i).collect();
            if !nulls.is_empty() {
                bail!("{file}: label column `{}` is null in rows {}", p.columns.label, show_rows(&nulls));
            }
            RawLabels::Str(ca.iter().map(|t| t.unwrap_or_default().to_string()).collect())
        }
        dt if dt.is_integer() => {
            let cast = label_col.cast(&DataType::Int64).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            let ca = cast.i64().map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            let nulls: Vec<usize> = ca.iter().enumerate().filter(|(_, t)| t.is_none()).map(|(i, _)| i).collect();
            if !nulls.is_empty() {
                bail!("{file}: label column `{}` is null in rows {}", p.columns.label, show_rows(&nulls));
            }
            RawLabels::Int(ca.iter().map(|t| t.unwrap_or_default()).collect())
        }
        dt => bail!("{file}: label column `{}` has type {dt}; expected integers or strings", p.columns.label),
    };
    Ok((text, labels))
}

/// Labels as read, before mapping to class ids.
#[derive(Clone, Debug)]
pub enum RawLabels {
    Int(Vec<i64>),
    Str(Vec<String>),
}

/// Maps raw labels to ids `0..n_classes`, checking the range.
pub fn map_labels(raw: RawLabels, split: &str, p: &DownloadParams, names: &[String]) -> anyhow::Result<Vec<i64>> {
    let n = names.len() as i64;
    match raw {
        RawLabels::Int(v) => {
            let bad: Vec<(usize, i64)> = v.iter().copied().enumerate().filter(|(_, l)| *l < 0 || *l >= n).collect();
            if !bad.is_empty() {
                let shown: Vec<String> = bad.iter().take(5).map(|(r, l)| format!("row {r}: {l}")).collect();
                bail!(
                    "split `{split}`: {} labels outside 0..{} ({n} classes: {names:?}): {}; fix the data or set download.label_names",
                    bad.len(),
                    n - 1,
                    shown.join(", ")
                );
            }
            Ok(v)
        }
        RawLabels::Str(v) => {
            let mut out = Vec::with_capacity(v.len());
            let mut unmapped: Vec<(usize, String)> = Vec::new();
            for (r, s) in v.iter().enumerate() {
                let id = match &p.label_map {
                    Some(m) => m.get(s).copied(),
                    None => names.iter().position(|n| n == s).map(|i| i as i64),
                };
                match id {
                    Some(i) if i >= 0 && i < n => out.push(i),
                    _ => unmapped.push((r, s.clone())),
                }
            }
            if !unmapped.is_empty() {
                let mut distinct: Vec<&String> = unmapped.iter().map(|(_, s)| s).collect();
                distinct.sort();
                distinct.dedup();
                let shown: Vec<String> = distinct.iter().take(5).map(|s| format!("{s:?}")).collect();
                bail!(
                    "split `{split}`: {} string labels are not mapped to a class ({}); add them to download.label_map (label -> id) or download.label_names",
                    unmapped.len(),
                    shown.join(", ")
                );
            }
            Ok(out)
        }
    }
}

/// Class names: the pipeline's, else the card's, else sorted distinct strings (with a
/// label_map: ordered by id), else `LABEL_i` for `0..=max`.
pub fn class_names(p: &DownloadParams, card: Option<&[String]>, raws: &[&RawLabels]) -> Vec<String> {
    if let Some(n) = &p.label_names {
        return n.clone();
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
        .filter_map(|r| match r {
            RawLabels::Str(v) => Some(v.iter()),
            RawLabels::Int(_) => None,
        })
        .flatten()
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
            RawLabels::Str(_) => None,
        })
        .max()
        .unwrap_or(0)
        .max(1);
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
        SplitData { text: idx.iter().map(|&i| self.text[i].clone()).collect(), label: idx.iter().map(|&i| self.label[i]).collect() }
    }

    pub fn len(&self) -> usize {
        self.label.len()
    }

    pub fn is_empty(&self) -> bool {
        self.label.is_empty()
    }

    /// Writes `text`/`label` parquet.
    pub fn write_parquet(&self, path: &Path) -> anyhow::Result<()> {
        let mut df = DataFrame::new(vec![
            Column::new("text".into(), &self.text),
            Column::new("label".into(), &self.label),
        ])?;
        let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        // LZ4: a third of zstd's write time here, for files that live one pipeline long.
        ParquetWriter::new(f)
            .with_compression(ParquetCompression::Lz4Raw)
            .finish(&mut df)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
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
