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
//! | 48 | 16 | reserved, zero |
//! | 64 | 8·(n+1) | token offsets (u64): example `i` is tokens `offsets[i]..offsets[i+1]` |
//! | … | 4·n | labels (i32) |
//! | … | 4·n | untruncated lengths (u32): tokens the text had before truncation |
//! | … | w·t | token ids, unpadded and contiguous |
//!
//! [`Shard::open`] checks the size, magic, version, width, checksum and every offset before
//! handing out a view, so no byte sequence makes a reader panic or read out of bounds.

mod batch;
mod reader;
mod writer;

pub use batch::{pad_batch, Batch};
pub use reader::{Shard, Split};
pub use writer::ShardWriter;

pub const MAGIC: &[u8; 8] = b"FTSHARD\0";
/// Bump when the layout changes; readers refuse other versions.
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;

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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
