//! The store on disk: lookup with verification, per-key locks, staging and atomic publication.
//!
//! Layout: `ROOT/<stage>/<key>/` are published artifacts; `ROOT/.tmp/` holds staging directories
//! of runs in progress; `ROOT/.locks/` holds one lock file per key; `ROOT/.trash/` holds
//! artifacts being replaced or removed. Only a directory under `ROOT/<stage>/` whose manifest
//! names its key and whose files verify is ever used.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::hash::{content_hash, hash_file};
use crate::manifest::{FileEntry, Manifest};
use crate::{Error, IoContext, Result};

/// Why an artifact failed verification.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{dir}: no manifest.json (a half-written artifact?)")]
    NoManifest { dir: PathBuf },
    #[error("{dir}: manifest names key {found}, not the directory's {expected}")]
    WrongKey { dir: PathBuf, expected: String, found: String },
    #[error("{path}: missing")]
    Missing { path: PathBuf },
    #[error("{path}: size {found}, manifest says {expected}")]
    Size { path: PathBuf, expected: u64, found: u64 },
    #[error("{path}: blake3 {found}, manifest says {expected} (the file was modified or corrupted)")]
    Hash { path: PathBuf, expected: String, found: String },
    #[error("{dir}: content hash does not match its file list")]
    Content { dir: PathBuf },
}

/// A published artifact.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Artifact {
    /// Reads the manifest of an artifact directory without re-hashing its files.
    pub fn open(dir: &Path) -> Result<Artifact> {
        let path = dir.join("manifest.json");
        let text = fs::read(&path).at(&path)?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|source| Error::Manifest { path, source })?;
        Ok(Artifact { dir: dir.to_path_buf(), manifest })
    }

    /// Path of one of the artifact's files.
    pub fn file(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Re-hashes every file and checks it against the manifest.
    pub fn verify(&self) -> Result<(), VerifyError> {
        let dir = &self.dir;
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name != self.manifest.key {
            return Err(VerifyError::WrongKey {
                dir: dir.clone(),
                expected: name.to_string(),
                found: self.manifest.key.clone(),
            });
        }
        if content_hash(&self.manifest.files) != self.manifest.content_hash {
            return Err(VerifyError::Content { dir: dir.clone() });
        }
        for f in &self.manifest.files {
            let path = dir.join(&f.path);
            let (size, hash) = match hash_file(&path) {
                Ok(x) => x,
                Err(_) => return Err(VerifyError::Missing { path }),
            };
            if size != f.size {
                return Err(VerifyError::Size { path, expected: f.size, found: size });
            }
            if hash != f.blake3 {
                return Err(VerifyError::Hash { path, expected: f.blake3.clone(), found: hash });
            }
        }
        Ok(())
    }
}

/// A held per-key lock; released on drop (and by the OS if the process dies).
pub struct KeyLock {
    _file: File,
}

/// A staging directory for an artifact being written. Dropped without [`Store::publish`], it is
/// removed; after a crash it stays under `.tmp/` and is never mistaken for an artifact.
pub struct Staging {
    pub dir: PathBuf,
    published: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The artifact store rooted at a directory.
#[derive(Clone, Debug)]
pub struct Store {
    pub root: PathBuf,
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

impl Store {
    /// Opens (creating if needed) a store.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for sub in [".tmp", ".locks", ".trash"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).at(&p)?;
        }
        Ok(Store { root })
    }

    pub fn artifact_dir(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(stage).join(key)
    }

    /// The artifact with this key if it exists and verifies. A directory that exists but fails
    /// verification is moved to `.trash/` and reported as absent, so it gets rebuilt.
    pub fn lookup(&self, stage: &str, key: &str) -> Result<Option<Artifact>> {
        let dir = self.artifact_dir(stage, key);
        if !dir.exists() {
            return Ok(None);
        }
        let verdict = match Artifact::open(&dir) {
            Ok(a) => a.verify().map(|()| a).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match verdict {
            Ok(a) => Ok(Some(a)),
            Err(why) => {
                eprintln!("warning: discarding invalid artifact: {why}");
                self.discard(&dir)?;
                Ok(None)
            }
        }
    }

    /// Moves a directory out of the way into `.trash/` and deletes it.
    fn discard(&self, dir: &Path) -> Result<()> {
        let trash = self.root.join(".trash").join(unique_suffix());
        match fs::rename(dir, &trash) {
            Ok(()) => {
                let _ = fs::remove_dir_all(&trash);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at(dir),
        }
    }

    /// Takes the exclusive lock of a key, waiting for another process that holds it.
    pub fn lock(&self, stage: &str, key: &str) -> Result<KeyLock> {
        let path = self.root.join(".locks").join(format!("{stage}-{key}.lock"));
        let file = File::options().create(true).truncate(false).write(true).open(&path).at(&path)?;
        file.lock().at(&path)?;
        Ok(KeyLock { _file: file })
    }

    /// A fresh staging directory for a run of `stage`.
    pub fn stage_dir(&self, stage: &str) -> Result<Staging> {
        let dir = self.root.join(".tmp").join(format!("{stage}-{}", unique_suffix()));
        fs::create_dir_all(&dir).at(&dir)?;
        Ok(Staging { dir, published: false })
    }

    /// Hashes and fsyncs the staged files, writes the manifest and renames the directory into
    /// place atomically, replacing an artifact of the same key if there is one. `manifest.files`
    /// and `manifest.content_hash` are filled in here.
    pub fn publish(&self, mut staging: Staging, mut manifest: Manifest) -> Result<Artifact> {
        let mut files = Vec::new();
        collect_files(&staging.dir, &staging.dir, &mut files)?;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        manifest.files = files;
        manifest.content_hash = content_hash(&manifest.files);
        let mpath = staging.dir.join("manifest.json");
        let text = serde_json::to_vec_pretty(&manifest).map_err(|source| Error::Manifest { path: mpath.clone(), source })?;
        {
            use std::io::Write;
            let mut f = File::create(&mpath).at(&mpath)?;
            f.write_all(&text).at(&mpath)?;
            f.sync_all().at(&mpath)?;
        }
        sync_tree(&staging.dir)?;
        let parent = self.root.join(&manifest.stage);
        fs::create_dir_all(&parent).at(&parent)?;
        let dest = parent.join(&manifest.key);
        if dest.exists() {
            self.discard(&dest)?;
        }
        fs::rename(&staging.dir, &dest).at(&dest)?;
        staging.published = true;
        fsync_dir(&parent)?;
        Ok(Artifact { dir: dest, manifest })
    }

    /// Every artifact directory of a stage with a readable manifest (not verified).
    pub fn list(&self, stage: &str) -> Vec<Artifact> {
        let Ok(rd) = fs::read_dir(self.root.join(stage)) else { return Vec::new() };
        let mut out: Vec<Artifact> = rd.flatten().filter_map(|e| Artifact::open(&e.path()).ok()).collect();
        out.sort_by_key(|a| std::cmp::Reverse(a.manifest.created_unix));
        out
    }

    /// Every published artifact directory, as (stage, key, dir).
    pub fn all_dirs(&self) -> Vec<(String, String, PathBuf)> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&self.root) else { return out };
        for stage in rd.flatten() {
            let name = stage.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || !stage.path().is_dir() {
                continue;
            }
            if let Ok(keys) = fs::read_dir(stage.path()) {
                for k in keys.flatten() {
                    out.push((name.clone(), k.file_name().to_string_lossy().to_string(), k.path()));
                }
            }
        }
        out.sort();
        out
    }

    /// Removes every artifact not in `keep` (directories), and leftovers of dead runs under
    /// `.tmp/` and `.trash/`. Returns what was (or, with `dry_run`, would be) removed.
    pub fn gc(&self, keep: &BTreeSet<PathBuf>, dry_run: bool) -> Result<Vec<PathBuf>> {
        let mut doomed: Vec<PathBuf> = self
            .all_dirs()
            .into_iter()
            .map(|(_, _, dir)| dir)
            .filter(|d| !keep.contains(d))
            .collect();
        for sub in [".tmp", ".trash"] {
            if let Ok(rd) = fs::read_dir(self.root.join(sub)) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    if !owner_alive(&name) {
                        doomed.push(e.path());
                    }
                }
            }
        }
        if !dry_run {
            for d in &doomed {
                fs::remove_dir_all(d).at(d)?;
            }
        }
        Ok(doomed)
    }
}

/// Whether the process that made a staging directory `<stage>-<pid>-<nanos>` still runs.
fn owner_alive(name: &str) -> bool {
    let mut parts = name.rsplit('-');
    let _nanos = parts.next();
    match parts.next().and_then(|p| p.parse::<u32>().ok()) {
        Some(pid) => pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

fn collect_files(base: &Path, dir: &Path, out: &mut Vec<FileEntry>) -> Result<()> {
    for e in fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let path = e.path();
        let ft = e.file_type().at(&path)?;
        if ft.is_dir() {
            collect_files(base, &path, out)?;
        } else {
            let rel = path.strip_prefix(base).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            if rel == "manifest.json" {
                continue;
            }
            let (size, blake3) = hash_file(&path)?;
            out.push(FileEntry { path: rel, size, blake3 });
        }
    }
    Ok(())
}

fn sync_tree(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).at(dir)? {
        let path = e.at(dir)?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path).and_then(|f| f.sync_all()).at(&path)?;
        }
    }
    fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // clippy.toml's allow-unwrap-in-tests misses some of these tests
    use super::*;

    fn manifest(stage: &str, key: &str) -> Manifest {
        Manifest::new(stage, key, "1", serde_json::json!({}), Default::default())
    }

    #[test]
    fn publish_lookup_and_detect_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let st = store.stage_dir("s").unwrap();
        fs::create_dir_all(st.dir.join("sub")).unwrap();
        fs::write(st.dir.join("sub/a.txt"), b"hello").unwrap();
        let art = store.publish(st, manifest("s", "k1")).unwrap();
        assert_eq!(art.manifest.files.len(), 1);
        assert_eq!(art.manifest.files[0].path, "sub/a.txt");
        assert!(store.lookup("s", "k1").unwrap().is_some());
        // Flip a byte: detected, discarded, reported absent.
        fs::write(art.dir.join("sub/a.txt"), b"hellp").unwrap();
        assert!(matches!(Artifact::open(&art.dir).unwrap().verify(), Err(VerifyError::Hash { .. })));
        assert!(store.lookup("s", "k1").unwrap().is_none());
        assert!(!art.dir.exists());
    }

    #[test]
    fn half_written_directory_is_never_used() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let dir = store.artifact_dir("s", "k2");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a.txt"), b"partial").unwrap();
        assert!(store.lookup("s", "k2").unwrap().is_none());
        // A dropped staging directory is cleaned up.
        let st = store.stage_dir("s").unwrap();
        let p = st.dir.clone();
        drop(st);
        assert!(!p.exists());
    }
}
