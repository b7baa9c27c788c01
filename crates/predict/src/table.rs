//! The output file: the input's rows and columns, then the prediction columns, written under a
//! temporary name beside the destination and renamed into place, so a failed run leaves no
//! partial file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use polars::prelude::*;

/// The formats an output file may have, by its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Csv,
    Tsv,
    JsonLines,
}

impl Format {
    /// The format `path`'s extension names; anything else is an error naming the choices.
    pub fn of(path: &Path) -> anyhow::Result<Format> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
        Ok(match ext.as_str() {
            "parquet" => Format::Parquet,
            "csv" => Format::Csv,
            "tsv" => Format::Tsv,
            "jsonl" | "json" => Format::JsonLines,
            _ => bail!("--out {}: unsupported extension `.{ext}`; use .parquet, .csv, .tsv or .jsonl", path.display()),
        })
    }
}

/// Checks up front what would make writing fail after the work is done: a missing directory, an
/// output that is the input.
pub fn check_destination(out: &Path, input: &Path) -> anyhow::Result<Format> {
    let format = Format::of(out)?;
    let parent = parent_dir(out);
    if !parent.is_dir() {
        bail!("--out {}: the directory {} does not exist", out.display(), parent.display());
    }
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(out), std::fs::canonicalize(input)) {
        if a == b {
            bail!("--out {} is the input file; write the predictions to another file", out.display());
        }
    }
    Ok(format)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Refuses an input that already has a column the predictions would add.
pub fn check_names(df: &DataFrame, input: &Path, added: &[String]) -> anyhow::Result<()> {
    let clash: Vec<&String> = added.iter().filter(|n| df.get_column_names().iter().any(|c| c.as_str() == n.as_str())).collect();
    if !clash.is_empty() {
        bail!("{}: already has the column(s) {clash:?} that predict writes; rename or drop them", input.display());
    }
    Ok(())
}

/// Writes `df` to `out` in `format` (what [`Writer`] does with one chunk).
pub fn write(df: &mut DataFrame, out: &Path, format: Format) -> anyhow::Result<()> {
    let mut w = Writer::create(out, format)?;
    w.write(df)?;
    w.finish()
}

/// The output file written a chunk of rows at a time, under a temporary name in `out`'s
/// directory (`.NAME.tmp-PID`) that [`Writer::finish`] renames to `out`: a run that fails or is
/// killed leaves no partial output under the real name (and a failed one removes its temporary
/// file).
pub struct Writer {
    out: PathBuf,
    tmp: PathBuf,
    format: Format,
    file: Option<std::fs::File>,
    parquet: Option<polars::io::parquet::write::BatchedWriter<std::fs::File>>,
    chunks: usize,
    finished: bool,
}

impl Writer {
    pub fn create(out: &Path, format: Format) -> anyhow::Result<Writer> {
        let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let tmp = parent_dir(out).join(format!(".{name}.tmp-{}", std::process::id()));
        let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Writer { out: out.to_path_buf(), tmp, format, file: Some(file), parquet: None, chunks: 0, finished: false })
    }

    /// Appends a chunk of rows (every chunk with the same columns). CSV and TSV cannot hold
    /// lists, so list columns (the label sets of multi-label predictions) are written there as
    /// JSON arrays (`["a","b"]`).
    pub fn write(&mut self, df: &mut DataFrame) -> anyhow::Result<()> {
        let what = || format!("writing {}", self.tmp.display());
        let Some(f) = self.file.as_mut() else { bail!("{}: written after it was finished", self.out.display()) };
        match self.format {
            Format::Parquet => {
                if self.parquet.is_none() {
                    let handle = f.try_clone().with_context(what)?;
                    self.parquet = Some(ParquetWriter::new(handle).batched(df.schema()).with_context(what)?);
                }
                if let Some(w) = self.parquet.as_mut() {
                    df.as_single_chunk();
                    w.write_batch(df).with_context(what)?;
                }
            }
            Format::JsonLines => JsonWriter::new(&mut *f).with_json_format(JsonFormat::JsonLines).finish(df).with_context(what)?,
            Format::Csv | Format::Tsv => {
                let mut flat = lists_as_json(df)?;
                let sep = if self.format == Format::Csv { b',' } else { b'\t' };
                CsvWriter::new(&mut *f).include_header(self.chunks == 0).with_separator(sep).finish(&mut flat).with_context(what)?;
            }
        }
        self.chunks += 1;
        Ok(())
    }

    /// Completes the file and gives it its name.
    pub fn finish(mut self) -> anyhow::Result<()> {
        let what = format!("writing {}", self.tmp.display());
        if let Some(w) = self.parquet.take() {
            w.finish().with_context(|| what.clone())?;
        }
        if let Some(f) = self.file.take() {
            f.sync_all().with_context(|| what.clone())?;
        }
        std::fs::rename(&self.tmp, &self.out).with_context(|| format!("renaming {} to {}", self.tmp.display(), self.out.display()))?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// `df` with every list-of-strings column as a JSON-array text column; other nested columns are
/// an error naming them (CSV has no place for them).
fn lists_as_json(df: &DataFrame) -> anyhow::Result<DataFrame> {
    let mut cols = Vec::with_capacity(df.width());
    for c in df.get_columns() {
        match c.dtype() {
            DataType::List(inner) if **inner == DataType::String => {
                let lists = c.list()?;
                let text: Vec<Option<String>> = lists
                    .into_iter()
                    .map(|l| l.map(|s| serde_json::to_string(&s.str().map(|x| x.into_iter().map(|v| v.unwrap_or_default().to_string()).collect::<Vec<_>>()).unwrap_or_default()).unwrap_or_default()))
                    .collect();
                cols.push(Column::new(c.name().clone(), text));
            }
            dt if dt.is_nested() => {
                bail!("the input's column `{}` has type {}, which a CSV or TSV file cannot hold; write .parquet or .jsonl", c.name(), c.dtype())
            }
            _ => cols.push(c.clone()),
        }
    }
    Ok(DataFrame::new(cols)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // clippy.toml's allow-unwrap-in-tests misses some of these tests
    use super::*;

    fn frame() -> DataFrame {
        let sets = [vec!["acting", "story"], vec![], vec!["funny"]];
        let list = Series::new("predicted_labels".into(), sets.iter().map(|s| Series::new("".into(), s.clone())).collect::<Vec<Series>>());
        DataFrame::new(vec![Column::new("text".into(), ["a, \"b\"", "c", "d"]), list.into()]).unwrap()
    }

    /// Label sets go to CSV as JSON arrays, to JSON Lines as arrays; the file appears whole,
    /// with no temporary left beside it.
    #[test]
    fn label_sets_in_every_format() {
        let tmp = tempfile::tempdir().unwrap();
        let csv = tmp.path().join("o.csv");
        write(&mut frame(), &csv, Format::of(&csv).unwrap()).unwrap();
        let text = std::fs::read_to_string(&csv).unwrap();
        assert_eq!(text, "text,predicted_labels\n\"a, \"\"b\"\"\",\"[\"\"acting\"\",\"\"story\"\"]\"\nc,[]\nd,\"[\"\"funny\"\"]\"\n");
        let jsonl = tmp.path().join("o.jsonl");
        write(&mut frame(), &jsonl, Format::JsonLines).unwrap();
        let first: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&jsonl).unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(first["predicted_labels"], serde_json::json!(["acting", "story"]));
        let pq = tmp.path().join("o.parquet");
        write(&mut frame(), &pq, Format::Parquet).unwrap();
        let back = ParquetReader::new(std::fs::File::open(&pq).unwrap()).finish().unwrap();
        assert_eq!(back.shape(), (3, 2));
        let names: Vec<String> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    }

    #[test]
    fn destinations_are_checked_before_any_work() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in.csv");
        std::fs::write(&input, "text\na\n").unwrap();
        let e = check_destination(&input, &input).unwrap_err().to_string();
        assert!(e.contains("is the input file"), "{e}");
        let e = check_destination(&tmp.path().join("no/such/dir/o.csv"), &input).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = check_destination(&tmp.path().join("o.xlsx"), &input).unwrap_err().to_string();
        assert!(e.contains("`.xlsx`") && e.contains(".parquet, .csv, .tsv or .jsonl"), "{e}");
        assert_eq!(check_destination(&tmp.path().join("o.TSV"), &input).unwrap(), Format::Tsv);
    }
}
