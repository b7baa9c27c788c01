//! Source files read a chunk of rows at a time, so the stage's memory is bounded by the chunk
//! and not by the file.
//!
//! - Parquet: each chunk is a row slice read by a reader of its own, which maps the file only
//!   while it reads and decodes only the row groups the slice touches.
//! - CSV, TSV and JSON Lines: the file is read through a buffer and cut at record ends (a newline
//!   outside quotes for CSV; every newline for TSV, which has no quoting, and for JSON Lines,
//!   whose strings cannot hold one); each piece is parsed on its own with the column types the
//!   first piece inferred, as a whole-file read infers them from its first rows.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use polars::prelude::*;

/// Rows read at a time from a parquet source.
pub const CHUNK_ROWS: usize = pipeline::files::DATASET_ROW_GROUP;

/// Bytes of records read at a time from a text source.
pub const CHUNK_BYTES: usize = 16 << 20;

/// How much of a source file is read at a time: `rows` of parquet, `bytes` of text (tests make
/// them tiny).
#[derive(Clone, Copy, Debug)]
pub struct Chunking {
    pub rows: usize,
    pub bytes: usize,
}

impl Default for Chunking {
    fn default() -> Self {
        Chunking { rows: CHUNK_ROWS, bytes: CHUNK_BYTES }
    }
}

/// A source file's rows in order, a chunk at a time: `(first row, frame)`.
pub struct TableChunks {
    name: String,
    /// Rows handed out so far.
    at: usize,
    /// Bytes of a text source consumed so far.
    pub bytes_read: u64,
    /// The file's size.
    pub bytes: u64,
    source: Source,
}

enum Source {
    Parquet { path: PathBuf, rows: usize, chunk: usize, empty_done: bool },
    Text { format: Text, reader: BufReader<std::fs::File>, schema: Option<SchemaRef>, header: Vec<u8>, chunk: usize, done: bool },
}

#[derive(Clone, Copy, PartialEq)]
enum Text {
    Csv(u8),
    Tsv,
    JsonLines,
}

impl TableChunks {
    /// Opens a parquet, CSV (`delimiter`, default `,`), TSV or JSON Lines file, to be read a
    /// chunk at a time; the error names the file.
    pub fn open(path: &Path, delimiter: Option<char>, chunking: Chunking) -> anyhow::Result<TableChunks> {
        let Chunking { rows, bytes } = chunking;
        let name = path.display().to_string();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
        let size = std::fs::metadata(path).with_context(|| format!("opening {name}"))?.len();
        let format = match ext.as_str() {
            "parquet" => {
                let mut r = open_parquet(path)?;
                let n = r.num_rows().map_err(|e| anyhow::anyhow!("{name}: not a readable parquet file: {e}"))?;
                return Ok(TableChunks { name, at: 0, bytes_read: 0, bytes: size, source: Source::Parquet { path: path.to_path_buf(), rows: n, chunk: rows.max(1), empty_done: false } });
            }
            "csv" => Text::Csv(delimiter.unwrap_or(',') as u8),
            "tsv" => Text::Tsv,
            "jsonl" | "json" => Text::JsonLines,
            other => bail!("{name}: unsupported extension `.{other}`; use .parquet, .csv, .tsv or .jsonl"),
        };
        let f = std::fs::File::open(path).with_context(|| format!("opening {name}"))?;
        let mut reader = BufReader::with_capacity(1 << 20, f);
        let mut header = Vec::new();
        if format != Text::JsonLines {
            reader.read_until(b'\n', &mut header).with_context(|| format!("reading {name}"))?;
        }
        let bytes_read = header.len() as u64;
        Ok(TableChunks { name, at: 0, bytes_read, bytes: size, source: Source::Text { format, reader, schema: None, header, chunk: bytes.max(1), done: false } })
    }

    /// The rows of a parquet source (text sources are counted as they are read).
    pub fn parquet_rows(&self) -> Option<usize> {
        match &self.source {
            Source::Parquet { rows, .. } => Some(*rows),
            Source::Text { .. } => None,
        }
    }

    fn next_parquet(&mut self) -> Option<anyhow::Result<DataFrame>> {
        let Source::Parquet { path, rows, chunk, empty_done } = &mut self.source else { return None };
        // A file without rows still gives one (empty) chunk: its columns.
        if self.at >= *rows && (*rows > 0 || std::mem::replace(empty_done, true)) {
            return None;
        }
        let len = (*chunk).min(*rows - self.at);
        let read = open_parquet(path).and_then(|r| {
            r.with_slice(Some((self.at, len))).finish().map_err(|e| anyhow::anyhow!("{}: not a readable parquet file: {e}", self.name))
        });
        Some(read)
    }

    fn next_text(&mut self) -> Option<anyhow::Result<DataFrame>> {
        let Source::Text { format, reader, schema, header, chunk, done } = &mut self.source else { return None };
        if *done {
            return None;
        }
        let mut bytes = Vec::with_capacity((*chunk).min(CHUNK_BYTES) + 4096);
        let quote = matches!(format, Text::Csv(_)).then_some(b'"');
        match read_records(reader, &mut bytes, *chunk, quote) {
            Ok(true) => {}
            Ok(false) => *done = true,
            Err(e) => return Some(Err(anyhow::Error::new(e).context(format!("reading {}", self.name)))),
        }
        self.bytes_read += bytes.len() as u64;
        if bytes.iter().all(|b| b.is_ascii_whitespace()) && !(self.at == 0 && schema.is_none()) {
            return None;
        }
        let df = parse_text(*format, &self.name, header, &bytes, schema.clone());
        if let Ok(df) = &df {
            schema.get_or_insert_with(|| df.schema().clone());
        }
        Some(df)
    }
}

impl Iterator for TableChunks {
    type Item = anyhow::Result<(usize, DataFrame)>;

    fn next(&mut self) -> Option<Self::Item> {
        let df = match self.source {
            Source::Parquet { .. } => self.next_parquet()?,
            Source::Text { .. } => self.next_text()?,
        };
        Some(df.map(|df| {
            let first = self.at;
            self.at += df.height();
            (first, df)
        }))
    }
}

fn open_parquet(path: &Path) -> anyhow::Result<ParquetReader<std::fs::File>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(ParquetReader::new(f))
}

/// Appends whole records to `out` until it holds at least `want` bytes; a newline inside a
/// `quote`d field does not end a record (a doubled quote toggles twice, so it needs no special
/// case). Returns whether the file goes on.
fn read_records(r: &mut impl BufRead, out: &mut Vec<u8>, want: usize, quote: Option<u8>) -> std::io::Result<bool> {
    let mut quoted = false;
    loop {
        let start = out.len();
        if r.read_until(b'\n', out)? == 0 {
            return Ok(false);
        }
        if let Some(q) = quote {
            quoted ^= out[start..].iter().filter(|&&b| b == q).count() % 2 == 1;
        }
        if !quoted && out.len() >= want {
            return Ok(true);
        }
    }
}

/// One piece of a text source as a frame; `schema` is the first piece's.
fn parse_text(format: Text, name: &str, header: &[u8], bytes: &[u8], schema: Option<SchemaRef>) -> anyhow::Result<DataFrame> {
    let mut data = Vec::with_capacity(header.len() + bytes.len());
    let cursor = |data: Vec<u8>| std::io::Cursor::new(data);
    match format {
        Text::JsonLines => {
            data.extend_from_slice(bytes);
            let mut r = JsonLineReader::new(cursor(data));
            if let Some(s) = schema {
                r = r.with_schema(s);
            }
            r.finish().map_err(|e| anyhow::anyhow!("{name}: not readable JSON Lines: {e}"))
        }
        Text::Csv(_) | Text::Tsv => {
            let sep = if let Text::Csv(s) = format { s } else { b'\t' };
            let quote = if format == Text::Tsv { None } else { Some(b'"') };
            data.extend_from_slice(header);
            data.extend_from_slice(bytes);
            let mut opts = CsvReadOptions::default().with_has_header(true).map_parse_options(|o| o.with_separator(sep).with_quote_char(quote));
            if let Some(s) = schema {
                opts = opts.with_schema(Some(s));
            }
            opts.into_reader_with_file_handle(cursor(data)).finish().map_err(|e| match format {
                Text::Tsv => anyhow::anyhow!("{name}: not a readable TSV file (UTF-8, a header row, tab-separated, no quoting): {e}"),
                _ => anyhow::anyhow!(
                    "{name}: not a readable CSV file (UTF-8, a header row, fields separated by {:?}; for another, set download.dataset.delimiter in a pipeline, --delimiter for ft-predict): {e}",
                    sep as char
                ),
            })
        }
    }
}

/// Reads a whole file into one frame (what `ft-predict` labels): its chunks, stacked.
pub fn read_all(path: &Path, delimiter: Option<char>) -> anyhow::Result<DataFrame> {
    let mut out: Option<DataFrame> = None;
    for chunk in TableChunks::open(path, delimiter, Chunking { rows: usize::MAX, bytes: usize::MAX })? {
        let (_, df) = chunk?;
        match out.as_mut() {
            Some(o) => {
                o.vstack_mut(&df).with_context(|| format!("reading {}", path.display()))?;
            }
            None => out = Some(df),
        }
    }
    Ok(out.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_end_at_newlines_outside_quotes() {
        let text = b"\"a\nb\",1\n\"c \"\"q\"\"\",2\nplain,3\n";
        let mut r = std::io::Cursor::new(&text[..]);
        let mut out = Vec::new();
        assert!(read_records(&mut r, &mut out, 1, Some(b'"')).unwrap());
        assert_eq!(out, b"\"a\nb\",1\n", "the quoted newline does not end the record");
        out.clear();
        assert!(read_records(&mut r, &mut out, 1, Some(b'"')).unwrap());
        assert_eq!(out, b"\"c \"\"q\"\"\",2\n");
        out.clear();
        assert!(!read_records(&mut r, &mut out, 100, Some(b'"')).unwrap());
        assert_eq!(out, b"plain,3\n");
        // Without quoting (TSV, JSON Lines) every newline ends one.
        let mut r = std::io::Cursor::new(&b"\"x\ty\n\"z\t1\n"[..]);
        out.clear();
        read_records(&mut r, &mut out, 1, None).unwrap();
        assert_eq!(out, b"\"x\ty\n");
    }

    #[test]
    fn text_pieces_take_the_first_pieces_column_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let rows: String = (0..30).map(|i| format!("{{\"text\": \"r{i}\", \"label\": {i}}}\n")).collect();
        std::fs::write(&path, rows).unwrap();
        let chunks: Vec<DataFrame> = TableChunks::open(&path, None, Chunking { rows: 1, bytes: 40 }).unwrap().map(|c| c.unwrap().1).collect();
        assert!(chunks.len() > 5);
        assert!(chunks.iter().all(|c| c.schema() == chunks[0].schema()));
        let whole = read_all(&path, None).unwrap();
        assert_eq!(whole.height(), 30);
        assert_eq!(whole.column("label").unwrap().i64().unwrap().get(29), Some(29));
    }
}
