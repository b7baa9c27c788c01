//! `manifest.json`: what an artifact is, where it came from and what it holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One file of an artifact, relative to its directory (forward slashes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub blake3: String,
}

/// An input artifact as recorded in a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    /// Its content hash: the part of the key that matters.
    pub content_hash: String,
    /// Its key and stage, for lineage (not part of this artifact's key).
    pub key: String,
    pub stage: String,
}

/// The manifest of an artifact. Keys are stable; new fields are added with defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub stage: String,
    pub key: String,
    pub code_version: String,
    /// Canonical parameters (defaults filled in).
    pub params: serde_json::Value,
    /// Input artifacts by name, and extra keyed inputs such as local source files (with an empty
    /// `key` and `stage: "file"`).
    pub inputs: BTreeMap<String, InputRef>,
    pub files: Vec<FileEntry>,
    pub content_hash: String,
    pub wall_seconds: f64,
    /// Unix time of publication.
    pub created_unix: u64,
    /// Tool versions, libtorch, device and anything else the stage reports.
    pub environment: BTreeMap<String, String>,
    /// Stage-specific figures (statistics, metrics) for people and later stages.
    #[serde(default)]
    pub summary: serde_json::Value,
}
