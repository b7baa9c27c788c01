//! Reading shards: validated memory maps, random access, lengths without touching ids.

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::{Error, LabelKind, Result, HEADER_LEN, MAGIC, TOKEN_TYPES, VERSION};

/// One validated, memory-mapped shard.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    n: usize,
    width: usize,
    kind: LabelKind,
    /// Where the token types start, when the shard has them.
    types_at: Option<usize>,
    offsets_at: usize,
    labels_at: usize,
    full_at: usize,
    ids_at: usize,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

impl Shard {
    /// Maps and validates a shard file.
    pub fn open(path: &Path) -> Result<Shard> {
        let invalid = |why: String| Error::Invalid { path: path.to_path_buf(), why };
        let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        // SAFETY: the file belongs to a published (read-only by convention) artifact; every
        // access below is bounds-checked against the mapped length.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let b: &[u8] = &map;
        if b.len() < HEADER_LEN {
            return Err(invalid(format!("{} bytes, shorter than the {HEADER_LEN}-byte header", b.len())));
        }
        if &b[..8] != MAGIC {
            return Err(invalid("bad magic".into()));
        }
        let version = u32_at(b, 8);
        if version == 1 {
            return Err(invalid(format!("format version 1 (class ids only, from before sentence pairs, multi-label and regression); this build reads version {VERSION}")));
        }
        if version != VERSION {
            return Err(invalid(format!("format version {version}, this build reads {VERSION}")));
        }
        let kind = LabelKind::from_code(u32_at(b, 48), u32_at(b, 52)).ok_or_else(|| invalid(format!("label kind {} with {} labels", u32_at(b, 48), u32_at(b, 52))))?;
        let flags = u32_at(b, 56);
        if flags & !TOKEN_TYPES != 0 {
            return Err(invalid(format!("unknown flags {flags:#x}")));
        }
        let has_types = flags & TOKEN_TYPES != 0;
        if b[60..64] != [0; 4] {
            return Err(invalid("reserved header bytes are not zero".into()));
        }
        let width = u32_at(b, 12) as usize;
        if width != 2 && width != 4 {
            return Err(invalid(format!("id width {width}, expected 2 or 4")));
        }
        let n64 = u64_at(b, 16);
        let t64 = u64_at(b, 24);
        let expected = (|| {
            let n = n64.checked_add(1)?.checked_mul(8)?;
            let per = n64.checked_mul(4 * kind.words() as u64 + 4)?;
            let ids = t64.checked_mul(width as u64)?;
            let types = if has_types { t64 } else { 0 };
            (HEADER_LEN as u64).checked_add(n)?.checked_add(per)?.checked_add(ids)?.checked_add(types)
        })()
        .ok_or_else(|| invalid("counts overflow".into()))?;
        if expected != b.len() as u64 {
            return Err(invalid(format!("{} bytes, header says {expected} (truncated?)", b.len())));
        }
        let n = n64 as usize;
        if blake3::hash(&b[HEADER_LEN..]).as_bytes()[..16] != b[32..48] {
            return Err(invalid("checksum mismatch (corrupted)".into()));
        }
        let offsets_at = HEADER_LEN;
        let labels_at = offsets_at + (n + 1) * 8;
        let full_at = labels_at + n * 4 * kind.words();
        let ids_at = full_at + n * 4;
        let types_at = has_types.then_some(ids_at + t64 as usize * width);
        let mut prev = u64_at(b, offsets_at);
        if prev != 0 {
            return Err(invalid("first offset is not 0".into()));
        }
        for i in 1..=n {
            let o = u64_at(b, offsets_at + i * 8);
            if o < prev || o > t64 {
                return Err(invalid(format!("offset {i} out of order or range")));
            }
            prev = o;
        }
        if prev != t64 {
            return Err(invalid("last offset does not match the token count".into()));
        }
        let shard = Shard { path: path.to_path_buf(), map, n, width, kind, types_at, offsets_at, labels_at, full_at, ids_at };
        if let Some(at) = types_at {
            if shard.map[at..].iter().any(|&x| x > 1) {
                return Err(invalid("a token type other than 0 or 1".into()));
            }
        }
        if kind == LabelKind::Score {
            if let Some(i) = (0..n).find(|&i| !shard.score(i).is_finite()) {
                return Err(invalid(format!("example {i}'s score is not a finite number")));
            }
        }
        // The checks read every page. Hand them back, so an open split holds only the pages a
        // run goes on to touch, not every shard whole: the kernel keeps them cached and maps
        // them again on the next access. A failure only leaves them resident.
        // SAFETY: the map is a read-only view shared with its file, so dropping its pages loses
        // nothing: the next access reads the same bytes from the file (or the page cache).
        let _ = unsafe { shard.map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        // Batches read examples in random order: without this, a page fault on a cold file reads
        // the device's whole readahead window around it (megabytes), for one example's ids.
        let _ = shard.map.advise(memmap2::Advice::Random);
        Ok(shard)
    }

    pub fn kind(&self) -> LabelKind {
        self.kind
    }

    /// Whether the examples carry token types (sentence pairs).
    pub fn has_token_types(&self) -> bool {
        self.types_at.is_some()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn range(&self, i: usize) -> (usize, usize) {
        let b: &[u8] = &self.map;
        (u64_at(b, self.offsets_at + i * 8) as usize, u64_at(b, self.offsets_at + (i + 1) * 8) as usize)
    }

    /// Token count of example `i` (after truncation). Panics if `i >= len()`.
    pub fn length(&self, i: usize) -> usize {
        assert!(i < self.n, "example {i} out of range ({} examples)", self.n);
        let (a, b) = self.range(i);
        b - a
    }

    fn word(&self, i: usize, w: usize) -> u32 {
        assert!(i < self.n, "example {i} out of range ({} examples)", self.n);
        u32_at(&self.map, self.labels_at + (i * self.kind.words() + w) * 4)
    }

    /// The class id of example `i` (the first label word: use with [`LabelKind::Class`]).
    pub fn label(&self, i: usize) -> i32 {
        self.word(i, 0) as i32
    }

    /// The score of example `i` ([`LabelKind::Score`]).
    pub fn score(&self, i: usize) -> f32 {
        f32::from_bits(self.word(i, 0))
    }

    /// Whether example `i` carries label `j` ([`LabelKind::MultiHot`]).
    pub fn has_label(&self, i: usize, j: usize) -> bool {
        j / 32 < self.kind.words() && self.word(i, j / 32) >> (j % 32) & 1 == 1
    }

    /// Appends the token types of example `i` to `out` (zeros when the shard has none).
    pub fn types_into(&self, i: usize, out: &mut Vec<u32>) {
        let (a, b) = self.range(i);
        match self.types_at {
            Some(at) => out.extend(self.map[at + a..at + b].iter().map(|&x| u32::from(x))),
            None => out.extend(std::iter::repeat_n(0, b - a)),
        }
    }

    /// Tokens the text had before truncation.
    pub fn full_length(&self, i: usize) -> u32 {
        assert!(i < self.n, "example {i} out of range ({} examples)", self.n);
        u32_at(&self.map, self.full_at + i * 4)
    }

    /// Appends the ids of example `i` to `out`.
    pub fn ids_into(&self, i: usize, out: &mut Vec<u32>) {
        let (a, b) = self.range(i);
        let bytes = &self.map[self.ids_at + a * self.width..self.ids_at + b * self.width];
        if self.width == 2 {
            out.extend(bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32));
        } else {
            out.extend(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        }
    }

    pub fn ids(&self, i: usize) -> Vec<u32> {
        let mut v = Vec::new();
        self.ids_into(i, &mut v);
        v
    }
}

/// A split: its shards in order, addressed by a global example index.
pub struct Split {
    shards: Vec<Shard>,
    starts: Vec<usize>,
    len: usize,
}

impl Split {
    /// Opens every `<split>-NNNNN.shard` in `dir`.
    pub fn open(dir: &Path, split: &str) -> Result<Split> {
        let rd = std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        let mut files = Vec::new();
        let mut present = std::collections::BTreeSet::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(stem) = name.strip_suffix(".shard") {
                if let Some((s, _)) = stem.rsplit_once('-') {
                    present.insert(s.to_string());
                    if s == split {
                        files.push(e.path());
                    }
                }
            }
        }
        if files.is_empty() {
            return Err(Error::NoSplit { split: split.into(), dir: dir.to_path_buf(), present: present.into_iter().collect() });
        }
        files.sort();
        let shards = files.iter().map(|f| Shard::open(f)).collect::<Result<Vec<_>>>()?;
        if let Some(odd) = shards.iter().find(|s| s.kind != shards[0].kind || s.has_token_types() != shards[0].has_token_types()) {
            return Err(Error::Invalid { path: odd.path.clone(), why: format!("its labels or token types differ from {}'s", shards[0].path.display()) });
        }
        let mut starts = Vec::with_capacity(shards.len());
        let mut len = 0;
        for s in &shards {
            starts.push(len);
            len += s.len();
        }
        Ok(Split { shards, starts, len })
    }

    /// [`Split::open`] for the split a setting names: a missing split is an error naming the
    /// setting `key` and the splits present.
    pub fn open_setting(dir: &Path, split: &str, key: &str) -> Result<Split> {
        Split::open(dir, split).map_err(|e| match e {
            Error::NoSplit { split, present, .. } => Error::NoSetSplit { key: key.to_string(), split, present },
            e => e,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn locate(&self, i: usize) -> (&Shard, usize) {
        assert!(i < self.len, "example {i} out of range ({} examples)", self.len);
        let s = self.starts.partition_point(|&st| st <= i) - 1;
        (&self.shards[s], i - self.starts[s])
    }

    pub fn length(&self, i: usize) -> usize {
        let (s, j) = self.locate(i);
        s.length(j)
    }

    pub fn label(&self, i: usize) -> i32 {
        let (s, j) = self.locate(i);
        s.label(j)
    }

    pub fn score(&self, i: usize) -> f32 {
        let (s, j) = self.locate(i);
        s.score(j)
    }

    pub fn has_label(&self, i: usize, label: usize) -> bool {
        let (s, j) = self.locate(i);
        s.has_label(j, label)
    }

    pub fn types_into(&self, i: usize, out: &mut Vec<u32>) {
        let (s, j) = self.locate(i);
        s.types_into(j, out)
    }

    /// What the labels are (a split's shards agree).
    pub fn kind(&self) -> LabelKind {
        self.shards.first().map_or(LabelKind::Class, |s| s.kind)
    }

    pub fn has_token_types(&self) -> bool {
        self.shards.first().is_some_and(|s| s.has_token_types())
    }

    /// The labels of examples `index`, in order.
    pub fn targets(&self, index: &[usize]) -> crate::Targets {
        use crate::Targets;
        match self.kind() {
            LabelKind::Class => Targets::Class(index.iter().map(|&i| i64::from(self.label(i))).collect()),
            LabelKind::Score => Targets::Score(index.iter().map(|&i| self.score(i)).collect()),
            LabelKind::MultiHot { labels } => {
                let l = labels as usize;
                Targets::Multi { labels: l, hot: index.iter().flat_map(|&i| (0..l).map(move |j| if self.has_label(i, j) { 1.0 } else { 0.0 })).collect() }
            }
        }
    }

    /// The labels of every example.
    pub fn all_targets(&self) -> crate::Targets {
        self.targets(&(0..self.len).collect::<Vec<_>>())
    }

    pub fn full_length(&self, i: usize) -> u32 {
        let (s, j) = self.locate(i);
        s.full_length(j)
    }

    pub fn ids_into(&self, i: usize, out: &mut Vec<u32>) {
        let (s, j) = self.locate(i);
        s.ids_into(j, out)
    }

    pub fn ids(&self, i: usize) -> Vec<u32> {
        let mut v = Vec::new();
        self.ids_into(i, &mut v);
        v
    }

    /// Every example's length, without reading ids (for length bucketing); 32 bits each, so the
    /// length index of ten million examples takes 40 MB.
    pub fn lengths(&self) -> Vec<u32> {
        self.shards.iter().flat_map(|s| (0..s.len()).map(move |j| s.length(j) as u32)).collect()
    }

    pub fn labels(&self) -> Vec<i32> {
        self.shards.iter().flat_map(|s| (0..s.len()).map(move |j| s.label(j))).collect()
    }
}
