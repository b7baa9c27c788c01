//! Content-addressed artifact store: keys, manifests, atomic publishing, verification and the
//! shared command line every stage binary speaks (and the progress it shows: [`Progress`]).
//!
//! An artifact is a directory `STORE/<stage>/<key>/` holding the stage's files and a
//! `manifest.json` (see [`Manifest`]). The key is computed by [`compute_key`] from the stage name,
//! its code version, its canonical parameters and the *content hashes* of its inputs, so a stage
//! whose rerun writes identical bytes leaves every downstream key unchanged (early cutoff).

mod hash;
mod manifest;
mod progress;
pub mod remote;
mod stage;
mod store;

pub use hash::{canonical_json, compute_key, content_hash, hash_file, short};
pub use manifest::{FileEntry, InputRef, Manifest, FILE_INPUT};
pub use progress::{Progress, TICK_GAP};
pub use stage::{check_lineage, execute, exit, parse_dependencies, parse_inputs, Ctx, Lineage, Mode, Report, Runtime, StageArgs, StageDef, EXIT_NOT_CACHED};
pub use store::{Artifact, Keep, KeyLock, Reclaimed, Staging, Store, VerifyError};

/// Version of the store layout and manifest format. It is part of every key: bumping it
/// invalidates every artifact of every stage (also bump it when [`compute_key`] changes).
/// 2: versioned artifact directories behind symlinks; dependency versions in the key.
pub const STORE_FORMAT: u32 = 2;

/// Errors of the store. Messages name the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("{path}: invalid manifest: {source}")]
    Manifest { path: std::path::PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::Io { path: path.to_path_buf(), source })
    }
}
