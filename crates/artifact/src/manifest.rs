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

/// [`InputRef::stage`] of an extra input that is a file hashed by the stage itself (a local
/// source), not an artifact.
pub const FILE_INPUT: &str = "file";

impl InputRef {
    /// Whether this input is a file the stage hashed itself ([`FILE_INPUT`]).
    pub fn is_file(&self) -> bool {
        self.stage == FILE_INPUT
    }
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

impl Manifest {
    /// A manifest for [`crate::Store::publish`], which fills in the files and the content hash;
    /// created now, with no wall time, environment or summary yet.
    pub fn new(stage: &str, key: &str, code_version: &str, params: serde_json::Value, inputs: BTreeMap<String, InputRef>) -> Manifest {
        Manifest {
            format: crate::STORE_FORMAT,
            stage: stage.into(),
            key: key.into(),
            code_version: code_version.into(),
            params,
            inputs,
            files: Vec::new(),
            content_hash: String::new(),
            wall_seconds: 0.0,
            created_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            environment: BTreeMap::new(),
            summary: serde_json::Value::Null,
        }
    }
}
