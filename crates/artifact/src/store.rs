//! The store on disk: lookup with verification, per-key locks, staging, atomic publication and
//! replacement, reader locks and garbage collection.
//!
//! Layout (see ARCHITECTURE.md, "The store under concurrency"):
//!
//! ```text
//! ROOT/<stage>/<key>                       symlink -> ../.versions/<stage>/<key>/<version>
//! ROOT/.versions/<stage>/<key>/<version>/  the artifact's files and manifest.json
//! ROOT/.versions/<stage>/<key>/<version>.lock   shared by readers, exclusive to removers
//! ROOT/.locks/<stage>-<key>.lock           the key lock: producers, discarders and gc
//! ROOT/.tmp/  staging directories of runs in progress     ROOT/.trash/  being deleted
//! ROOT/.remote/<url hash>/<stage>-<key>    known to be on that remote store (remote.rs)
//! ```
//!
//! A key's path always names a whole, verified version: publishing renames a complete version
//! into `.versions/` and then swaps the symlink with one `rename`, so there is no instant without
//! an artifact. A version is deleted only by a process holding its lock exclusively, which no
//! reader (a stage using it as an input, a lookup verifying it) does while it reads; an
//! artifact that fails verification is deleted only by the process that found it bad, under the
//! key lock, after checking again that the key still points at the bad version.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

/// A published artifact, held open: while any clone of it lives, its version is not deleted
/// (the process holds the version's reader lock).
#[derive(Clone, Debug)]
pub struct Artifact {
    /// Where its files are: the version directory the key pointed at when it was opened (the
    /// same directory for as long as this value lives, even if the key is republished).
    pub dir: PathBuf,
    /// The path users and later stages name it by: `STORE/<stage>/<key>` (or the directory
    /// given, for an artifact outside a store).
    pub path: PathBuf,
    pub manifest: Manifest,
    _reading: Option<Arc<File>>,
}

/// The reader lock file of a version directory.
fn version_lock(version: &Path) -> PathBuf {
    let name = version.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    version.with_file_name(format!("{name}.lock"))
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("manifest.json");
    let text = fs::read(&path).at(&path)?;
    serde_json::from_slice(&text).map_err(|source| Error::Manifest { path, source })
}

impl Artifact {
    /// Opens an artifact by its path (a key's symlink, or a plain directory) without re-hashing
    /// its files, and takes its version's reader lock.
    pub fn open(path: &Path) -> Result<Artifact> {
        // A republish may swap the link and delete the old version between our reading the link
        // and locking it; then the version is gone once we hold the lock, and we look again.
        for attempt in 0..100 {
            let link = fs::symlink_metadata(path).at(path)?.file_type().is_symlink();
            if !link {
                return Ok(Artifact { dir: path.to_path_buf(), path: path.to_path_buf(), manifest: read_manifest(path)?, _reading: None });
            }
            let dir = match fs::canonicalize(path) {
                Ok(d) => d,
                // The link names a version that is gone: swapped and deleted since we read it
                // (then the next look finds the new one), or dangling for good.
                Err(e) if attempt >= 3 => return Err(Error::Io { path: path.to_path_buf(), source: e }),
                Err(_) => continue,
            };
            let lock_path = version_lock(&dir);
            let Ok(lock) = File::options().create(true).truncate(false).write(true).open(&lock_path) else { continue };
            lock.lock_shared().at(&lock_path)?;
            if !dir.join("manifest.json").exists() {
                continue;
            }
            let manifest = read_manifest(&dir)?;
            return Ok(Artifact { dir, path: path.to_path_buf(), manifest, _reading: Some(Arc::new(lock)) });
        }
        Err(Error::Io { path: path.to_path_buf(), source: std::io::Error::other("it kept being replaced while being opened") })
    }

    /// Path of one of the artifact's files.
    pub fn file(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Re-hashes every file and checks it against the manifest.
    pub fn verify(&self) -> Result<(), VerifyError> {
        let dir = &self.dir;
        let name = self.path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name != self.manifest.key {
            return Err(VerifyError::WrongKey { dir: self.path.clone(), expected: name.to_string(), found: self.manifest.key.clone() });
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

/// What [`Store::gc`] removes (or would), with its size on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reclaimed {
    pub path: PathBuf,
    pub bytes: u64,
    /// `artifact`, `old version`, `checkpoint`, `memo`, `lock`, `staging` or `trash`.
    pub kind: &'static str,
}

impl Reclaimed {
    fn of(path: PathBuf, kind: &'static str) -> Reclaimed {
        Reclaimed { bytes: size_of(&path), path, kind }
    }
}

/// What gc keeps: the keys pipelines reference, as (stage, key), including keys not built yet
/// (their training checkpoints stay).
pub type Keep = BTreeSet<(String, String)>;

/// Whether an exclusive lock on `path` can be had right now (the file is not created).
fn try_exclusive(path: &Path) -> Option<File> {
    let f = File::options().write(true).open(path).ok()?;
    f.try_lock().ok()?;
    Some(f)
}

/// Whether a reader holds a version (its lock file exists and is locked).
fn being_read(version: &Path) -> bool {
    let lock = version_lock(version);
    lock.exists() && try_exclusive(&lock).is_none()
}

fn size_of(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path).map(|rd| rd.flatten().map(|e| size_of(&e.path())).sum()).unwrap_or(0)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect()).unwrap_or_default();
    v.sort();
    v
}

impl Store {
    /// Opens (creating if needed) a store.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for sub in [".tmp", ".locks", ".trash", ".versions"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).at(&p)?;
        }
        Ok(Store { root })
    }

    pub fn artifact_dir(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(stage).join(key)
    }

    fn versions_of(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(".versions").join(stage).join(key)
    }

    /// The artifact with this key if it exists and verifies. One that fails verification is
    /// deleted (and reported absent, so it gets rebuilt) only if, under the key's lock, the key
    /// still points at a version that fails: a version replaced meanwhile is not ours to judge.
    pub fn lookup(&self, stage: &str, key: &str) -> Result<Option<Artifact>> {
        let path = self.artifact_dir(stage, key);
        if fs::symlink_metadata(&path).is_err() {
            return Ok(None);
        }
        if let Ok(a) = Self::verified(&path) {
            return Ok(Some(a));
        }
        let lock = self.lock(stage, key)?;
        self.lookup_locked(stage, key, &lock)
    }

    /// [`Store::lookup`] for a caller that holds the key's lock already.
    pub fn lookup_locked(&self, stage: &str, key: &str, _held: &KeyLock) -> Result<Option<Artifact>> {
        let path = self.artifact_dir(stage, key);
        if fs::symlink_metadata(&path).is_err() {
            return Ok(None);
        }
        match Self::verified(&path) {
            Ok(a) => Ok(Some(a)),
            Err(why) => {
                eprintln!("warning: discarding invalid artifact: {why}");
                self.discard_key(stage, key)?;
                Ok(None)
            }
        }
    }

    fn verified(path: &Path) -> std::result::Result<Artifact, String> {
        let a = Artifact::open(path).map_err(|e| e.to_string())?;
        a.verify().map_err(|e| e.to_string())?;
        Ok(a)
    }

    /// Removes a key's path and every version of it no reader holds. Call under the key lock.
    fn discard_key(&self, stage: &str, key: &str) -> Result<()> {
        let path = self.artifact_dir(stage, key);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => fs::remove_file(&path).at(&path)?,
            Ok(_) => self.discard(&path)?,
            Err(_) => {}
        }
        for v in self.versions(stage, key) {
            self.remove_version(&v);
        }
        Ok(())
    }

    /// The version directories of a key.
    fn versions(&self, stage: &str, key: &str) -> Vec<PathBuf> {
        let dir = self.versions_of(stage, key);
        names(&dir).into_iter().filter(|n| !n.ends_with(".lock")).map(|n| dir.join(n)).collect()
    }

    /// Deletes a version unless a reader holds it; returns whether it is gone.
    fn remove_version(&self, version: &Path) -> bool {
        let lock_path = version_lock(version);
        let guard = match File::options().create(true).truncate(false).write(true).open(&lock_path) {
            Ok(f) if f.try_lock().is_ok() => f,
            _ => return false,
        };
        let gone = self.discard(version).is_ok();
        let _ = fs::remove_file(&lock_path);
        drop(guard);
        gone
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

    fn lock_path(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(".locks").join(format!("{stage}-{key}.lock"))
    }

    /// Takes the exclusive lock of a key, waiting for another process that holds it.
    pub fn lock(&self, stage: &str, key: &str) -> Result<KeyLock> {
        let path = self.lock_path(stage, key);
        loop {
            let file = File::options().create(true).truncate(false).write(true).open(&path).at(&path)?;
            file.lock().at(&path)?;
            // gc removes unused lock files (holding them); a lock taken on a file that was
            // removed meanwhile is no lock at all, so take it again on the file now there.
            if same_file(&file, &path) {
                return Ok(KeyLock { _file: file });
            }
        }
    }

    /// The key lock if nobody holds it now.
    fn try_lock(&self, stage: &str, key: &str) -> Option<KeyLock> {
        let path = self.lock_path(stage, key);
        let file = File::options().create(true).truncate(false).write(true).open(&path).ok()?;
        file.try_lock().ok()?;
        same_file(&file, &path).then_some(KeyLock { _file: file })
    }

    /// A fresh staging directory for a run of `stage`.
    pub fn stage_dir(&self, stage: &str) -> Result<Staging> {
        let dir = self.root.join(".tmp").join(format!("{stage}-{}", unique_suffix()));
        fs::create_dir_all(&dir).at(&dir)?;
        Ok(Staging { dir, published: false })
    }

    /// Hashes and fsyncs the staged files, writes the manifest, moves the directory in as a new
    /// version of its key and points the key at it with one atomic rename of a symlink, so a
    /// reader finds the old artifact or the new one, never none. The replaced version is
    /// deleted unless a reader holds it (gc reclaims it later). `manifest.files` and
    /// `manifest.content_hash` are filled in here. Call under the key's lock.
    pub fn publish(&self, staging: Staging, manifest: Manifest) -> Result<Artifact> {
        self.publish_as(staging, manifest, None)
    }

    /// [`Store::publish`] of an artifact made elsewhere (pulled from a remote store), with its
    /// manifest's own bytes, `text` (parsed: `manifest`), so that the copy is byte-identical:
    /// fails, publishing nothing, unless the staged files hash to the manifest's content hash.
    pub fn publish_copy(&self, staging: Staging, manifest: Manifest, text: Vec<u8>) -> Result<Artifact> {
        self.publish_as(staging, manifest, Some(text))
    }

    fn publish_as(&self, mut staging: Staging, mut manifest: Manifest, text: Option<Vec<u8>>) -> Result<Artifact> {
        let mut files = Vec::new();
        collect_files(&staging.dir, &staging.dir, &mut files)?;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mpath = staging.dir.join("manifest.json");
        let text = match text {
            Some(t) => {
                if content_hash(&files) != manifest.content_hash || files != manifest.files {
                    return Err(VerifyError::Content { dir: staging.dir.clone() }.into());
                }
                t
            }
            None => {
                manifest.files = files;
                manifest.content_hash = content_hash(&manifest.files);
                serde_json::to_vec_pretty(&manifest).map_err(|source| Error::Manifest { path: mpath.clone(), source })?
            }
        };
        {
            use std::io::Write;
            let mut f = File::create(&mpath).at(&mpath)?;
            f.write_all(&text).at(&mpath)?;
            f.sync_all().at(&mpath)?;
        }
        sync_tree(&staging.dir)?;
        let (stage, key) = (manifest.stage.clone(), manifest.key.clone());
        let versions = self.versions_of(&stage, &key);
        fs::create_dir_all(&versions).at(&versions)?;
        let id = unique_suffix();
        let version = versions.join(&id);
        fs::rename(&staging.dir, &version).at(&version)?;
        staging.published = true;
        fsync_dir(&versions)?;
        // The caller reads what it published: hold the new version as a reader from the start.
        let lock_path = version_lock(&version);
        let reading = File::options().create(true).truncate(false).write(true).open(&lock_path).at(&lock_path)?;
        reading.lock_shared().at(&lock_path)?;
        let parent = self.root.join(&stage);
        fs::create_dir_all(&parent).at(&parent)?;
        let dest = parent.join(&key);
        let previous = fs::canonicalize(&dest).ok().filter(|_| is_link(&dest));
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
            // A plain directory at the key's path is not ours (the store only makes links):
            // there is no valid artifact to keep available.
            self.discard(&dest)?;
        }
        let link = parent.join(format!(".{key}.{id}"));
        let target = Path::new("..").join(".versions").join(&stage).join(&key).join(&id);
        std::os::unix::fs::symlink(&target, &link).at(&link)?;
        fs::rename(&link, &dest).at(&dest)?;
        fsync_dir(&parent)?;
        if let Some(old) = previous {
            self.remove_version(&old);
        }
        Ok(Artifact { dir: version, path: dest, manifest, _reading: Some(Arc::new(reading)) })
    }

    /// Every artifact of a stage with a readable manifest (not verified).
    pub fn list(&self, stage: &str) -> Vec<Artifact> {
        let dir = self.root.join(stage);
        let mut out: Vec<Artifact> = names(&dir).into_iter().filter(|n| !n.starts_with('.')).filter_map(|n| Artifact::open(&dir.join(n)).ok()).collect();
        out.sort_by_key(|a| std::cmp::Reverse(a.manifest.created_unix));
        out
    }

    /// Every published artifact path, as (stage, key, path).
    pub fn all_dirs(&self) -> Vec<(String, String, PathBuf)> {
        let mut out = Vec::new();
        for stage in names(&self.root) {
            let dir = self.root.join(&stage);
            if stage.starts_with('.') || !dir.is_dir() {
                continue;
            }
            for k in names(&dir).into_iter().filter(|k| !k.starts_with('.')) {
                out.push((stage.clone(), k.clone(), dir.join(k)));
            }
        }
        out
    }

    /// Reclaims everything no key in `keep` needs: artifacts (and their versions) of other
    /// keys, replaced versions, checkpoints, memo entries and lock files of keys not kept, and
    /// leftovers of dead runs under `.tmp/` and `.trash/`. A key whose lock is held (a stage is
    /// producing it) and a version a reader holds are left alone. Returns what was (or, with
    /// `dry_run`, would be) removed.
    pub fn gc(&self, keep: &Keep, dry_run: bool) -> Result<Vec<Reclaimed>> {
        let mut out = Vec::new();
        let kept = |stage: &str, key: &str| keep.contains(&(stage.to_string(), key.to_string()));
        // Artifacts of keys not kept, and old versions of every key.
        for stage in names(&self.root.join(".versions")) {
            for key in names(&self.root.join(".versions").join(&stage)) {
                let Some(_lock) = self.try_lock(&stage, &key) else { continue };
                let path = self.artifact_dir(&stage, &key);
                let current = fs::canonicalize(&path).ok();
                let drop_key = !kept(&stage, &key);
                let doomed: Vec<PathBuf> =
                    self.versions(&stage, &key).into_iter().filter(|v| (drop_key || current.as_deref() != Some(v.as_path())) && !being_read(v)).collect();
                if drop_key && is_link(&path) {
                    // One line per artifact, its size that of the versions going with it.
                    out.push(Reclaimed { bytes: doomed.iter().map(|v| size_of(v)).sum(), path: path.clone(), kind: "artifact" });
                    if !dry_run {
                        fs::remove_file(&path).at(&path)?;
                    }
                } else {
                    for v in &doomed {
                        out.push(Reclaimed::of(v.clone(), "old version"));
                    }
                }
                if !dry_run {
                    for v in &doomed {
                        self.remove_version(v);
                    }
                }
                let vdir = self.versions_of(&stage, &key);
                for n in names(&vdir).into_iter().filter(|n| n.ends_with(".lock")) {
                    let lock = vdir.join(&n);
                    let orphan = !vdir.join(n.trim_end_matches(".lock")).exists();
                    if orphan && try_exclusive(&lock).is_some() && !dry_run {
                        let _ = fs::remove_file(&lock);
                    }
                }
                if !dry_run && names(&vdir).is_empty() {
                    let _ = fs::remove_dir(&vdir);
                }
            }
        }
        // Plain directories at key paths (not made by this store) and links to versions that
        // are gone, of keys not kept.
        for (stage, key, path) in self.all_dirs() {
            let plain = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            let dangling = is_link(&path) && fs::metadata(&path).is_err();
            if (plain || dangling) && !kept(&stage, &key) {
                if let Some(_lock) = self.try_lock(&stage, &key) {
                    out.push(Reclaimed::of(path.clone(), "artifact"));
                    if !dry_run && plain {
                        self.discard(&path)?;
                    } else if !dry_run {
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        self.gc_side_files(&kept, dry_run, &mut out)?;
        Ok(out)
    }

    /// gc of checkpoints, memo entries, lock files, staging and trash.
    fn gc_side_files(
        &self,
        kept: &dyn Fn(&str, &str) -> bool,
        dry_run: bool,
        out: &mut Vec<Reclaimed>,
    ) -> Result<()> {
        let ckpt = self.root.join(".checkpoints");
        for n in names(&ckpt) {
            let Some((stage, key)) = n.split_once('-') else { continue };
            if kept(stage, key) {
                continue;
            }
            let Some(_lock) = self.try_lock(stage, key) else { continue };
            out.push(Reclaimed::of(ckpt.join(&n), "checkpoint"));
            if !dry_run {
                let p = ckpt.join(&n);
                fs::remove_dir_all(&p).at(&p)?;
            }
        }
        // Marks of artifacts known to be on a remote (remote.rs), of keys not kept.
        let remote = self.root.join(".remote");
        for url in names(&remote) {
            for n in names(&remote.join(&url)) {
                let Some((stage, key)) = n.split_once('-') else { continue };
                if !kept(stage, key) {
                    let p = remote.join(&url).join(&n);
                    out.push(Reclaimed::of(p.clone(), "remote mark"));
                    if !dry_run {
                        let _ = fs::remove_file(&p);
                    }
                }
            }
        }
        let memo = self.root.join(".memo");
        for n in names(&memo) {
            let p = memo.join(&n);
            let stage = n.split('-').next().unwrap_or_default();
            let key = fs::read_to_string(&p).ok().and_then(|t| t.lines().next().map(|l| l.trim().to_string())).unwrap_or_default();
            if !kept(stage, &key) {
                out.push(Reclaimed::of(p.clone(), "memo"));
                if !dry_run {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        let locks = self.root.join(".locks");
        for n in names(&locks) {
            let Some((stage, key)) = n.trim_end_matches(".lock").split_once('-') else { continue };
            // A key not kept loses its artifact in this same pass (or is busy, and then its lock
            // is held and stays).
            if kept(stage, key) {
                continue;
            }
            let p = locks.join(&n);
            if let Some(_held) = try_exclusive(&p) {
                out.push(Reclaimed::of(p.clone(), "lock"));
                if !dry_run {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        for (sub, kind) in [(".tmp", "staging"), (".trash", "trash")] {
            for n in names(&self.root.join(sub)) {
                if !owner_alive(&n) {
                    let p = self.root.join(sub).join(&n);
                    out.push(Reclaimed::of(p.clone(), kind));
                    if !dry_run {
                        if p.is_dir() {
                            fs::remove_dir_all(&p).at(&p)?;
                        } else {
                            let _ = fs::remove_file(&p);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn is_link(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Whether an open file is still the one at `path` (not removed or replaced).
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Whether the process that made a staging entry `<stage>-<pid>-<nanos>` (or the runner's
/// `params-<stage>-<pid>-<n>.json`) still runs.
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
        let art_path = art.path.clone();
        assert_eq!(art.manifest.files.len(), 1);
        assert_eq!(art.manifest.files[0].path, "sub/a.txt");
        assert!(store.lookup("s", "k1").unwrap().is_some());
        // Flip a byte: detected, discarded, reported absent.
        fs::write(art_path.join("sub/a.txt"), b"hellp").unwrap();
        assert!(matches!(Artifact::open(&art_path).unwrap().verify(), Err(VerifyError::Hash { .. })));
        assert!(store.lookup("s", "k1").unwrap().is_none());
        assert!(fs::symlink_metadata(store.artifact_dir("s", "k1")).is_err(), "the key's path is gone");
        // `art` still holds its version (a reader); once it is dropped the version can go.
        assert!(art.dir.exists());
        drop(art);
        let gone = store.gc(&Keep::new(), false).unwrap();
        assert!(gone.iter().any(|r| r.kind == "old version"), "{gone:?}");
        assert!(fs::read_dir(store.root.join(".versions/s")).map(|d| d.count()).unwrap_or(0) == 0);
    }

    fn publish_text(store: &Store, key: &str, text: &str) -> Artifact {
        let st = store.stage_dir("s").unwrap();
        fs::write(st.dir.join("a.txt"), text).unwrap();
        let _lock = store.lock("s", key).unwrap();
        store.publish(st, manifest("s", key)).unwrap()
    }

    #[test]
    fn republishing_swaps_versions_and_keeps_one_a_reader_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let first = publish_text(&store, "k", "one");
        let path = store.artifact_dir("s", "k");
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(path.join("a.txt")).unwrap(), "one", "files sit directly under the key's path");
        // `first` reads version one while it is replaced: it keeps its files.
        drop(publish_text(&store, "k", "two"));
        assert_eq!(fs::read_to_string(first.dir.join("a.txt")).unwrap(), "one");
        assert_eq!(fs::read_to_string(path.join("a.txt")).unwrap(), "two");
        assert_eq!(store.versions("s", "k").len(), 2, "the version a reader holds stays");
        // gc leaves it while read, reclaims it after.
        let keep: Keep = [("s".to_string(), "k".to_string())].into();
        assert!(store.gc(&keep, false).unwrap().is_empty());
        drop(first);
        let gone = store.gc(&keep, false).unwrap();
        assert_eq!(gone.iter().map(|r| r.kind).collect::<Vec<_>>(), vec!["old version"]);
        assert_eq!(store.versions("s", "k").len(), 1);
        assert!(store.lookup("s", "k").unwrap().is_some());
        // With no reader, a republish deletes the version it replaces at once.
        drop(publish_text(&store, "k", "three"));
        assert_eq!(store.versions("s", "k").len(), 1);
    }

    #[test]
    fn gc_leaves_a_key_being_produced_and_reclaims_side_files() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        drop(publish_text(&store, "busy", "x"));
        drop(publish_text(&store, "idle", "y"));
        for k in ["busy", "idle", "gone"] {
            fs::create_dir_all(store.root.join(".checkpoints").join(format!("s-{k}"))).unwrap();
        }
        fs::create_dir_all(store.root.join(".memo")).unwrap();
        fs::write(store.root.join(".memo/s-abc"), "idle").unwrap();
        // A key whose versions were deleted by hand: its link dangles.
        std::os::unix::fs::symlink("../.versions/s/ghost/1-1", store.artifact_dir("s", "ghost")).unwrap();
        let held = store.lock("s", "busy").unwrap();
        let dry = store.gc(&Keep::new(), true).unwrap();
        assert!(dry.iter().any(|r| r.path.ends_with("s/ghost")), "{dry:?}");
        let kinds: Vec<&str> = dry.iter().map(|r| r.kind).collect();
        assert!(dry.iter().all(|r| !r.path.to_string_lossy().contains("busy")), "{dry:?}");
        for k in ["artifact", "checkpoint", "memo", "lock"] {
            assert!(kinds.contains(&k), "{kinds:?}");
        }
        assert!(dry.iter().any(|r| r.kind == "artifact" && r.bytes > 0), "sizes are listed: {dry:?}");
        assert!(store.lookup("s", "idle").unwrap().is_some(), "a dry run removes nothing");
        let gone = store.gc(&Keep::new(), false).unwrap();
        assert_eq!(gone.len(), dry.len());
        assert!(store.lookup("s", "idle").unwrap().is_none());
        assert!(fs::symlink_metadata(store.artifact_dir("s", "ghost")).is_err());
        assert!(store.root.join(".checkpoints/s-busy").exists());
        drop(held);
        assert!(store.lookup("s", "busy").unwrap().is_some());
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
