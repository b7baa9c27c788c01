//! Writing shards: examples are buffered and a shard is written whenever the size cap is reached.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result, HEADER_LEN, MAGIC, VERSION};

/// Writes one split as a sequence of shards.
pub struct ShardWriter {
    dir: PathBuf,
    split: String,
    width: usize,
    max_id: u32,
    max_bytes: u64,
    offsets: Vec<u64>,
    labels: Vec<i32>,
    full_lengths: Vec<u32>,
    ids: Vec<u8>,
    written: Vec<PathBuf>,
}

impl ShardWriter {
    /// `max_id`, the largest id the tokenizer can produce (added tokens included, which may lie
    /// far beyond the vocabulary's size), picks the id width; an id above it is refused, never
    /// truncated. `max_bytes` caps each shard file (at least one example goes in every shard).
    pub fn new(dir: &Path, split: &str, max_id: u32, max_bytes: u64) -> ShardWriter {
        ShardWriter {
            dir: dir.to_path_buf(),
            split: split.to_string(),
            width: if max_id <= u32::from(u16::MAX) { 2 } else { 4 },
            max_id,
            max_bytes,
            offsets: vec![0],
            labels: Vec::new(),
            full_lengths: Vec::new(),
            ids: Vec::new(),
            written: Vec::new(),
        }
    }

    fn pending_bytes(&self) -> u64 {
        (HEADER_LEN + self.offsets.len() * 8 + self.labels.len() * 8 + self.ids.len()) as u64
    }

    /// Appends an example: its (truncated) ids, label and untruncated length.
    pub fn push(&mut self, ids: &[u32], label: i32, full_length: u32) -> Result<()> {
        if let Some(&id) = ids.iter().find(|&&id| id > self.max_id) {
            return Err(Error::IdTooLarge { id, max_id: self.max_id, width: self.width });
        }
        let add = (ids.len() * self.width + 16) as u64;
        if !self.labels.is_empty() && self.pending_bytes() + add > self.max_bytes {
            self.flush()?;
        }
        for &id in ids {
            if self.width == 2 {
                // Checked above: every id is at most max_id, which fits.
                self.ids.extend_from_slice(&(id as u16).to_le_bytes());
            } else {
                self.ids.extend_from_slice(&id.to_le_bytes());
            }
        }
        let last = *self.offsets.last().unwrap_or(&0);
        self.offsets.push(last + ids.len() as u64);
        self.labels.push(label);
        self.full_lengths.push(full_length);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let n = self.labels.len();
        let t = *self.offsets.last().unwrap_or(&0);
        let mut body = Vec::with_capacity(self.pending_bytes() as usize);
        for o in &self.offsets {
            body.extend_from_slice(&o.to_le_bytes());
        }
        for l in &self.labels {
            body.extend_from_slice(&l.to_le_bytes());
        }
        for l in &self.full_lengths {
            body.extend_from_slice(&l.to_le_bytes());
        }
        body.extend_from_slice(&self.ids);
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(self.width as u32).to_le_bytes());
        header.extend_from_slice(&(n as u64).to_le_bytes());
        header.extend_from_slice(&t.to_le_bytes());
        header.extend_from_slice(&blake3::hash(&body).as_bytes()[..16]);
        header.resize(HEADER_LEN, 0);
        let path = self.dir.join(format!("{}-{:05}.shard", self.split, self.written.len()));
        let io = |source| Error::Io { path: path.clone(), source };
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
        f.write_all(&header).map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.flush().map_err(io)?;
        self.written.push(path);
        self.offsets = vec![0];
        self.labels.clear();
        self.full_lengths.clear();
        self.ids.clear();
        Ok(())
    }

    /// Writes what is pending and returns the shard files, in order. An empty split still gets
    /// one (empty) shard so readers can tell it exists.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        if !self.labels.is_empty() || self.written.is_empty() {
            self.flush()?;
        }
        Ok(self.written)
    }
}
