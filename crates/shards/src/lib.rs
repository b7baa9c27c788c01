//! The token-shard format: what `tokenize` writes and `train`/`evaluate` read without copying.
//!
//! A split is one or more shard files `<split>-<NNNNN>.shard`, each at most a size cap, so
//! datasets larger than memory stream through the page cache. A shard is little-endian:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `FTSHARD\0` |
//! | 8 | 4 | format version ([`VERSION`]) |
//! | 12 | 4 | id width in bytes: 2 (u16, every id below 65,536) or 4 (u32) |
//! | 16 | 8 | number of examples `n` |
//! | 24 | 8 | number of tokens `t` |
//! | 32 | 16 | checksum: the first 16 bytes of blake3 over everything after the header |
//! | 48 | 4 | label kind: 0 class id, 1 multi-hot label set, 2 score (see [`LabelKind`]) |
//! | 52 | 4 | labels of a multi-hot set (`L`); 0 otherwise |
//! | 56 | 4 | flags: bit 0 set when token types (segment ids) follow the ids |
//! | 60 | 4 | reserved, zero (room for per-token labels: a label kind of its own) |
//! | 64 | 8·(n+1) | token offsets (u64): example `i` is tokens `offsets[i]..offsets[i+1]` |
//! | … | 4·k·n | labels, `k` u32 words each: a class id (i32, k = 1), a bit set of `L` labels (bit `j` of word `j / 32` for label `j`, k = ⌈L/32⌉, at least 1), or a score (f32, k = 1) |
//! | … | 4·n | untruncated lengths (u32): tokens the text had before truncation |
//! | … | w·t | token ids, unpadded and contiguous |
//! | … | t | token types (u8), when flagged: 0 for the first text of a pair, 1 for the second |
//!
//! [`Shard::open`] checks the size, magic, version, width, label kind, checksum and every
//! offset before handing out a view, so no byte sequence makes a reader panic or read out of
//! bounds. Version 1 (class ids only, no token types) is refused with a message to rerun
//! tokenize.

mod batch;
mod reader;
mod writer;

pub use batch::{pad_batch, Batch, Examples, Subset, Targets, Unlabelled};
pub use reader::{Shard, Split};
pub use writer::{Label, ShardWriter};

pub const MAGIC: &[u8; 8] = b"FTSHARD\0";
/// Bump when the layout changes; readers refuse other versions.
pub const VERSION: u32 = 2;
pub const HEADER_LEN: usize = 64;

/// What a shard's labels are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelKind {
    /// One class id per example (single-label classification).
    Class,
    /// A set of `labels` labels per example, as bits (multi-label classification).
    MultiHot { labels: u32 },
    /// One f32 per example (regression).
    Score,
}

impl LabelKind {
    /// u32 words per example.
    pub fn words(self) -> usize {
        match self {
            LabelKind::MultiHot { labels } => (labels as usize).div_ceil(32).max(1),
            _ => 1,
        }
    }

    fn code(self) -> (u32, u32) {
        match self {
            LabelKind::Class => (0, 0),
            LabelKind::MultiHot { labels } => (1, labels),
            LabelKind::Score => (2, 0),
        }
    }

    fn from_code(kind: u32, labels: u32) -> Option<LabelKind> {
        match (kind, labels) {
            (0, 0) => Some(LabelKind::Class),
            (1, l) if l > 0 => Some(LabelKind::MultiHot { labels: l }),
            (2, 0) => Some(LabelKind::Score),
            _ => None,
        }
    }
}

/// Header flag: token types follow the ids.
const TOKEN_TYPES: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("{path}: not a token shard or damaged: {why} (rerun the tokenize stage)")]
    Invalid { path: std::path::PathBuf, why: String },
    #[error("token id {id} does not fit the shard's {width}-byte ids: the writer was told the largest id is {max_id} (pass the tokenizer's largest id, added tokens included)")]
    IdTooLarge { id: u32, max_id: u32, width: usize },
    #[error("split `{split}` not found in {dir}; splits present: {present:?}")]
    NoSplit { split: String, dir: std::path::PathBuf, present: Vec<String> },
    #[error("{key} `{split}` is not in the tokenize artifact; splits present: {present:?}")]
    NoSetSplit { key: String, split: String, present: Vec<String> },
    #[error("{path}: {why}")]
    Example { path: std::path::PathBuf, why: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
