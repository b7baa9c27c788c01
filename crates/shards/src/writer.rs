//! Writing shards: examples are buffered and a shard is written whenever the size cap is reached.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, LabelKind, Result, HEADER_LEN, MAGIC, TOKEN_TYPES, VERSION};

/// One example's label, of the writer's [`LabelKind`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Label<'a> {
    Class(i32),
    /// The ids of the labels the example carries (any order, repeats allowed).
    Set(&'a [u32]),
    Score(f32),
}

/// Writes one split as a sequence of shards.
pub struct ShardWriter {
    dir: PathBuf,
    split: String,
    width: usize,
    max_id: u32,
    max_bytes: u64,
    kind: LabelKind,
    token_types: bool,
    offsets: Vec<u64>,
    labels: Vec<u32>,
    full_lengths: Vec<u32>,
    ids: Vec<u8>,
    types: Vec<u8>,
    written: Vec<PathBuf>,
}

impl ShardWriter {
    /// `max_id`, the largest id the tokenizer can produce (added tokens included, which may lie
    /// far beyond the vocabulary's size), picks the id width; an id above it is refused, never
    /// truncated. `max_bytes` caps each shard file (at least one example goes in every shard).
    /// Labels are class ids and there are no token types unless [`ShardWriter::labels`] and
    /// [`ShardWriter::token_types`] say otherwise.
    pub fn new(dir: &Path, split: &str, max_id: u32, max_bytes: u64) -> ShardWriter {
        ShardWriter {
            dir: dir.to_path_buf(),
            split: split.to_string(),
            width: if max_id <= u32::from(u16::MAX) { 2 } else { 4 },
            max_id,
            max_bytes,
            kind: LabelKind::Class,
            token_types: false,
            offsets: vec![0],
            labels: Vec::new(),
            full_lengths: Vec::new(),
            ids: Vec::new(),
            types: Vec::new(),
            written: Vec::new(),
        }
    }

    /// What the labels are.
    pub fn labels(mut self, kind: LabelKind) -> ShardWriter {
        self.kind = kind;
        self
    }

    /// Every example carries token types (sentence pairs).
    pub fn token_types(mut self, on: bool) -> ShardWriter {
        self.token_types = on;
        self
    }

    fn examples(&self) -> usize {
        self.full_lengths.len()
    }

    fn pending_bytes(&self) -> u64 {
        (HEADER_LEN + self.offsets.len() * 8 + self.labels.len() * 4 + self.full_lengths.len() * 4 + self.ids.len() + self.types.len()) as u64
    }

    /// Appends a single-label example: its (truncated) ids, class id and untruncated length.
    pub fn push(&mut self, ids: &[u32], label: i32, full_length: u32) -> Result<()> {
        self.push_example(ids, None, Label::Class(label), full_length)
    }

    /// Appends an example: ids, token types (exactly when the writer has them, one per id), a
    /// label of the writer's kind, and the untruncated length.
    pub fn push_example(&mut self, ids: &[u32], types: Option<&[u32]>, label: Label, full_length: u32) -> Result<()> {
        let bad = |why: String| Error::Example { path: self.dir.join(&self.split), why };
        if let Some(&id) = ids.iter().find(|&&id| id > self.max_id) {
            return Err(Error::IdTooLarge { id, max_id: self.max_id, width: self.width });
        }
        match (types, self.token_types) {
            (Some(t), true) if t.len() == ids.len() && t.iter().all(|&x| x <= 1) => {}
            (Some(t), true) => return Err(bad(format!("{} token types (values {:?}) for {} ids; expected one 0 or 1 per id", t.len(), t.iter().max(), ids.len()))),
            (None, false) => {}
            (Some(_), false) => return Err(bad("token types given to a writer without them".into())),
            (None, true) => return Err(bad("an example without token types in a split of sentence pairs".into())),
        }
        let mut words = vec![0u32; self.kind.words()];
        match (label, self.kind) {
            (Label::Class(c), LabelKind::Class) => words[0] = c as u32,
            (Label::Score(x), LabelKind::Score) if x.is_finite() => words[0] = x.to_bits(),
            (Label::Set(set), LabelKind::MultiHot { labels }) => {
                for &j in set {
                    if j >= labels {
                        return Err(bad(format!("label {j} of a set of {labels} labels")));
                    }
                    words[j as usize / 32] |= 1 << (j % 32);
                }
            }
            (l, k) => return Err(bad(format!("label {l:?} in a split of {k:?} labels"))),
        }
        let add = (ids.len() * self.width + 8 + 4 * words.len() + if self.token_types { ids.len() } else { 0 }) as u64;
        if self.examples() > 0 && self.pending_bytes() + add > self.max_bytes {
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
        if let Some(t) = types {
            self.types.extend(t.iter().map(|&x| x as u8));
        }
        let last = *self.offsets.last().unwrap_or(&0);
        self.offsets.push(last + ids.len() as u64);
        self.labels.extend_from_slice(&words);
        self.full_lengths.push(full_length);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let n = self.examples();
        let t = *self.offsets.last().unwrap_or(&0);
        // The body is the per-example sections, then ids and types, written as they are (no copy
        // of the ids, the shard's bulk) and hashed in the same order.
        let mut per_example = Vec::with_capacity(self.offsets.len() * 8 + (self.labels.len() + self.full_lengths.len()) * 4);
        for o in &self.offsets {
            per_example.extend_from_slice(&o.to_le_bytes());
        }
        for l in self.labels.iter().chain(&self.full_lengths) {
            per_example.extend_from_slice(&l.to_le_bytes());
        }
        let body: [&[u8]; 3] = [&per_example, &self.ids, &self.types];
        let mut hasher = blake3::Hasher::new();
        for part in body {
            hasher.update(part);
        }
        let (kind, labels) = self.kind.code();
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(self.width as u32).to_le_bytes());
        header.extend_from_slice(&(n as u64).to_le_bytes());
        header.extend_from_slice(&t.to_le_bytes());
        header.extend_from_slice(&hasher.finalize().as_bytes()[..16]);
        header.extend_from_slice(&kind.to_le_bytes());
        header.extend_from_slice(&labels.to_le_bytes());
        header.extend_from_slice(&(if self.token_types { TOKEN_TYPES } else { 0 }).to_le_bytes());
        header.resize(HEADER_LEN, 0);
        let path = self.dir.join(format!("{}-{:05}.shard", self.split, self.written.len()));
        let io = |source| Error::Io { path: path.clone(), source };
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
        f.write_all(&header).map_err(io)?;
        for part in body {
            f.write_all(part).map_err(io)?;
        }
        f.flush().map_err(io)?;
        self.written.push(path);
        self.offsets = vec![0];
        self.labels.clear();
        self.full_lengths.clear();
        self.ids.clear();
        self.types.clear();
        Ok(())
    }

    /// Writes what is pending and returns the shard files, in order. An empty split still gets
    /// one (empty) shard so readers can tell it exists.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        if self.examples() > 0 || self.written.is_empty() {
            self.flush()?;
        }
        Ok(self.written)
    }
}
