//! Reading shards: validated memory maps, random access, lengths without touching ids.

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::{Error, Result, HEADER_LEN, MAGIC, VERSION};

/// One validated, memory-mapped shard.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    n: usize,
    width: usize,
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
        if version != VERSION {
            return Err(invalid(format!("format version {version}, this build reads {VERSION}")));
        }
        let width = u32_at(b, 12) as usize;
        if width != 2 && width != 4 {
            return Err(invalid(format!("id width {width}, expected 2 or 4")));
        }
        let n64 = u64_at(b, 16);
        let t64 = u64_at(b, 24);
        let expected = (|| {
            let n = n64.checked_add(1)?.checked_mul(8)?;
            let per = n64.checked_mul(8)?;
            let ids = t64.checked_mul(width as u64)?;
            (HEADER_LEN as u64).checked_add(n)?.checked_add(per)?.checked_add(ids)
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
        let full_at = labels_at + n * 4;
        let ids_at = full_at + n * 4;
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
        Ok(Shard { path: path.to_path_buf(), map, n, width, offsets_at, labels_at, full_at, ids_at })
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

    pub fn label(&self, i: usize) -> i32 {
        assert!(i < self.n, "example {i} out of range ({} examples)", self.n);
        u32_at(&self.map, self.labels_at + i * 4) as i32
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
        let mut starts = Vec::with_capacity(shards.len());
        let mut len = 0;
        for s in &shards {
            starts.push(len);
            len += s.len();
        }
        Ok(Split { shards, starts, len })
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

    /// Every example's length, without reading ids (for length bucketing).
    pub fn lengths(&self) -> Vec<usize> {
        self.shards.iter().flat_map(|s| (0..s.len()).map(move |j| s.length(j))).collect()
    }

    pub fn labels(&self) -> Vec<i32> {
        self.shards.iter().flat_map(|s| (0..s.len()).map(move |j| s.label(j))).collect()
    }
}
