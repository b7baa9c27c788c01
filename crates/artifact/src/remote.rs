//! A remote copy of the store, shared by CI runners and teammates: artifacts are pushed to an
//! object store (S3 or any S3-compatible service, Google Cloud Storage, Azure Blob Storage, or a
//! shared disk through `file://`) with the `object_store` crate, and pulled into a local store
//! after every file has been verified against its manifest.
//!
//! Layout under the remote's URL:
//!
//! ```text
//! blobs/<blake3>                  a file's bytes, named by their hash (shared by artifacts)
//! <stage>/<key>/manifest.json     the artifact: written last, and only where absent
//! ```
//!
//! An artifact exists on the remote once its manifest does, and the manifest is put only after
//! every blob it names, so a push killed halfway leaves blobs no manifest names and nothing a
//! later run could take for an artifact. Blobs are named by content, so two pushes of one key
//! never overwrite each other's files; of their manifests one is created (a conditional put
//! where the backend has it) and the other push finds it there.
//!
//! Configured by the environment the runner passes to each stage binary ([`Config::from_env`]):
//! `FT_REMOTE` (URL), `FT_REMOTE_MODE` (`pull-push`, `pull`, `push`), `FT_REMOTE_REQUIRED`.
//! Credentials come from each backend's standard variables and chains (`AWS_*`, `GOOGLE_*`,
//! `AZURE_*`); only the URL's scheme, host and path are ever printed.

use std::io::{Read as _, Write as _};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use crate::hash::content_hash;
use crate::manifest::Manifest;
use crate::progress::Progress;
use crate::store::{Artifact, KeyLock, Store};

/// The variables a stage binary reads its remote from (set by the runner).
pub const ENV_URL: &str = "FT_REMOTE";
pub const ENV_MODE: &str = "FT_REMOTE_MODE";
pub const ENV_REQUIRED: &str = "FT_REMOTE_REQUIRED";

/// `FT_REMOTE_MODE`, when set.
pub fn env_mode() -> anyhow::Result<Option<RemoteMode>> {
    match std::env::var(ENV_MODE) {
        Ok(m) if !m.is_empty() => Ok(Some(RemoteMode::parse(&m).with_context(|| format!("{ENV_MODE}={m}: expected pull-push, pull or push"))?)),
        _ => Ok(None),
    }
}

/// Whether `FT_REMOTE_REQUIRED` asks for the remote to be required (`1` or `true`).
pub fn env_required() -> bool {
    matches!(std::env::var(ENV_REQUIRED).as_deref(), Ok("1") | Ok("true"))
}

/// Which way artifacts move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RemoteMode {
    /// Pull what the local store lacks, push what it made (default).
    #[default]
    PullPush,
    /// Pull only (CI of untrusted branches: read the team's artifacts, write none).
    Pull,
    /// Push only.
    Push,
}

impl RemoteMode {
    pub fn name(self) -> &'static str {
        match self {
            RemoteMode::PullPush => "pull-push",
            RemoteMode::Pull => "pull",
            RemoteMode::Push => "push",
        }
    }

    pub fn parse(s: &str) -> Option<RemoteMode> {
        [RemoteMode::PullPush, RemoteMode::Pull, RemoteMode::Push].into_iter().find(|m| m.name() == s)
    }

    pub fn pulls(self) -> bool {
        self != RemoteMode::Push
    }

    pub fn pushes(self) -> bool {
        self != RemoteMode::Pull
    }
}

/// A remote as configured: where, which way, and whether a failure to reach it fails the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub url: String,
    pub mode: RemoteMode,
    pub required: bool,
}

impl Config {
    /// The remote the environment names (`FT_REMOTE`, empty or unset: none).
    pub fn from_env() -> anyhow::Result<Option<Config>> {
        let url = std::env::var(ENV_URL).unwrap_or_default();
        if url.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(Config { url: url.trim().to_string(), mode: env_mode()?.unwrap_or_default(), required: env_required() }))
    }

    /// Sets the variables [`Config::from_env`] reads on a child process (or clears them for none).
    pub fn to_env(remote: Option<&Config>, cmd: &mut std::process::Command) {
        match remote {
            Some(c) => {
                cmd.env(ENV_URL, &c.url).env(ENV_MODE, c.mode.name()).env(ENV_REQUIRED, if c.required { "1" } else { "0" });
            }
            None => {
                cmd.env_remove(ENV_URL).env_remove(ENV_MODE).env_remove(ENV_REQUIRED);
            }
        }
    }

    /// The URL as it may be printed: scheme, host and path, without user, password or query.
    pub fn shown(&self) -> String {
        shown(&self.url)
    }
}

fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!("{}://{}{}", u.scheme(), u.host_str().unwrap_or(""), u.path()),
        Err(_) => "(an unparsable remote URL)".into(),
    }
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Uploaded: the blobs the remote lacked (count and bytes), then the manifest.
    Uploaded { blobs: usize, bytes: u64 },
    /// The remote had the artifact already (another push may have made it meanwhile).
    Present,
}

/// A failure that says the remote's copy is bad (as opposed to the remote being unreachable).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Corrupt(String);

/// An open remote.
pub struct Remote {
    pub config: Config,
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    rt: tokio::runtime::Runtime,
}

/// How long a failing request is retried (with backoff) before the remote counts as
/// unreachable. Timeouts are object_store's (5 s to connect, 30 s per request, a download
/// resuming where it broke off), set from the backend's variables like the rest of its client
/// (`AWS_ALLOW_HTTP`, `AWS_CONNECT_TIMEOUT`...).
const RETRY_BUDGET: Duration = Duration::from_secs(60);

fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig { max_retries: 4, retry_timeout: RETRY_BUDGET, ..Default::default() }
}

impl Remote {
    /// Opens the remote `config` names; fails on a URL no backend takes (naming the schemes).
    pub fn open(config: &Config) -> anyhow::Result<Remote> {
        let url = url::Url::parse(&config.url).with_context(|| format!("remote `{}`: not a URL (expected s3://bucket/prefix, gs://, az:// or file:///path)", config.shown()))?;
        let (store, prefix): (Arc<dyn ObjectStore>, ObjPath) = match url.scheme() {
            "file" => {
                let dir = url.to_file_path().map_err(|_| anyhow::anyhow!("remote `{}`: not a local path", config.shown()))?;
                std::fs::create_dir_all(&dir).with_context(|| format!("remote {}: creating the directory", dir.display()))?;
                (Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dir)?), ObjPath::default())
            }
            "s3" | "s3a" => {
                let b = object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str()).with_retry(retry());
                (Arc::new(b.build().with_context(|| format!("remote `{}`", config.shown()))?), ObjPath::from(url.path()))
            }
            "gs" => {
                let b = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url.as_str()).with_retry(retry());
                (Arc::new(b.build().with_context(|| format!("remote `{}`", config.shown()))?), ObjPath::from(url.path()))
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let b = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url.as_str()).with_retry(retry());
                (Arc::new(b.build().with_context(|| format!("remote `{}`", config.shown()))?), ObjPath::from(url.path()))
            }
            other => bail!("remote `{}`: scheme `{other}` is not supported; use s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///path", config.shown()),
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the remote's I/O runtime")?;
        Ok(Remote { config: config.clone(), store, prefix, rt })
    }

    fn at(&self, rel: &str) -> ObjPath {
        rel.split('/').fold(self.prefix.clone(), |p, part| p.child(part))
    }

    fn manifest_path(&self, stage: &str, key: &str) -> ObjPath {
        self.at(&format!("{stage}/{key}/manifest.json"))
    }

    fn blob_path(&self, blake3: &str) -> ObjPath {
        self.at(&format!("blobs/{blake3}"))
    }

    fn exists(&self, path: &ObjPath) -> anyhow::Result<bool> {
        match self.rt.block_on(self.store.head(path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("remote {}: looking for {path}", self.config.shown())),
        }
    }

    /// Whether the remote has an artifact for this key.
    pub fn has(&self, stage: &str, key: &str) -> anyhow::Result<bool> {
        self.exists(&self.manifest_path(stage, key))
    }

    /// The remote's manifest of `stage`/`key`, checked to be one (its key, stage and file list).
    fn manifest(&self, stage: &str, key: &str) -> anyhow::Result<Option<(Manifest, Vec<u8>)>> {
        let path = self.manifest_path(stage, key);
        let bytes = match self.rt.block_on(async { self.store.get(&path).await?.bytes().await }) {
            Ok(b) => b.to_vec(),
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("remote {}: reading {path}", self.config.shown())),
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| Corrupt(format!("{path} is not a manifest: {e}")))?;
        if m.key != key || m.stage != stage {
            bail!(Corrupt(format!("{path} names {}/{}, not {stage}/{key}", m.stage, m.key)));
        }
        if content_hash(&m.files) != m.content_hash {
            bail!(Corrupt(format!("{path}: its content hash does not match its file list")));
        }
        for f in &m.files {
            safe_relative(&f.path).map_err(|why| Corrupt(format!("{path}: file `{}` {why}", f.path)))?;
        }
        Ok(Some((m, bytes)))
    }

    /// Pulls `stage`/`key` into `store` under the key's `lock`: every file streamed into a
    /// staging directory and hashed on the way, then published through the store's ordinary
    /// atomic publish. A file that does not match the manifest fails the pull with [`Corrupt`]
    /// naming it; nothing is published then. `None`: the remote has no artifact for the key.
    pub fn pull(&self, store: &Store, stage: &str, key: &str, _lock: &KeyLock) -> anyhow::Result<Option<Artifact>> {
        let Some((manifest, text)) = self.manifest(stage, key)? else { return Ok(None) };
        let staging = store.stage_dir(stage)?;
        let total: u64 = manifest.files.iter().map(|f| f.size).sum();
        let progress = Progress::bytes(&format!("pull {stage} {}", crate::short(key)), total);
        let mut done = 0;
        for f in &manifest.files {
            let dst = staging.dir.join(&f.path);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            let blob = self.blob_path(&f.blake3);
            let (size, hash) = self.download(&blob, &dst, &progress, done)?;
            if size != f.size || hash != f.blake3 {
                bail!(Corrupt(format!(
                    "remote {}: file `{}` of {stage}/{} (blob {blob}) has {size} bytes with blake3 {}, the manifest says {} bytes with {}",
                    self.config.shown(),
                    f.path,
                    crate::short(key),
                    crate::short(&hash),
                    f.size,
                    crate::short(&f.blake3)
                )));
            }
            done += size;
        }
        progress.finish();
        // Every file verified, so the staged tree is the manifest's; publish checks it again.
        let art = store.publish_copy(staging, manifest, text).map_err(|e| Corrupt(format!("remote {}: {stage}/{}: {e}", self.config.shown(), crate::short(key))))?;
        Ok(Some(art))
    }

    /// Streams one blob into `dst`, returning its size and blake3.
    fn download(&self, blob: &ObjPath, dst: &Path, progress: &Progress, before: u64) -> anyhow::Result<(u64, String)> {
        self.rt.block_on(async {
            let got = match self.store.get(blob).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => bail!(Corrupt(format!("remote {}: blob {blob} is missing", self.config.shown()))),
                Err(e) => return Err(e).with_context(|| format!("remote {}: reading {blob}", self.config.shown())),
            };
            let mut out = std::io::BufWriter::new(std::fs::File::create(dst).with_context(|| format!("creating {}", dst.display()))?);
            let mut hasher = blake3::Hasher::new();
            let mut size = 0u64;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.with_context(|| format!("remote {}: reading {blob}", self.config.shown()))?;
                hasher.update(&chunk);
                out.write_all(&chunk).with_context(|| format!("writing {}", dst.display()))?;
                size += chunk.len() as u64;
                progress.tick(before + size);
            }
            out.flush().with_context(|| format!("writing {}", dst.display()))?;
            Ok((size, hasher.finalize().to_hex().to_string()))
        })
    }

    /// Pushes a local artifact: the blobs the remote lacks (streamed; multipart when large),
    /// then its manifest, only where absent. Idempotent.
    pub fn push(&self, art: &Artifact) -> anyhow::Result<Pushed> {
        let m = &art.manifest;
        let mpath = self.manifest_path(&m.stage, &m.key);
        if self.exists(&mpath)? {
            return Ok(Pushed::Present);
        }
        let total: u64 = m.files.iter().map(|f| f.size).sum();
        let progress = Progress::bytes(&format!("push {} {}", m.stage, crate::short(&m.key)), total);
        let (mut blobs, mut bytes, mut done) = (0, 0, 0);
        for f in &m.files {
            let blob = self.blob_path(&f.blake3);
            if !self.exists(&blob)? {
                self.upload(&art.file(&f.path), &blob, &progress, done)?;
                blobs += 1;
                bytes += f.size;
            }
            done += f.size;
            progress.set_position(done);
        }
        progress.finish();
        // The manifest's own bytes, as the local store wrote them: a pull publishes the same.
        let text = std::fs::read(art.file("manifest.json")).with_context(|| format!("reading {}", art.file("manifest.json").display()))?;
        let put = self.rt.block_on(self.store.put_opts(&mpath, PutPayload::from(text.clone()), PutOptions::from(PutMode::Create)));
        match put {
            Ok(_) => Ok(Pushed::Uploaded { blobs, bytes }),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Pushed::Present),
            Err(object_store::Error::NotImplemented) => {
                // A backend without conditional puts: the window between the check and the put
                // is all that is lost; both manifests name only blobs that are there.
                if self.exists(&mpath)? {
                    return Ok(Pushed::Present);
                }
                self.rt.block_on(self.store.put(&mpath, PutPayload::from(text))).with_context(|| format!("remote {}: writing {mpath}", self.config.shown()))?;
                Ok(Pushed::Uploaded { blobs, bytes })
            }
            Err(e) => Err(e).with_context(|| format!("remote {}: writing {mpath}", self.config.shown())),
        }
    }

    /// Streams a local file to `blob` (object_store's buffered writer: one put when small,
    /// a multipart upload past its 10 MiB buffer).
    fn upload(&self, src: &Path, blob: &ObjPath, progress: &Progress, before: u64) -> anyhow::Result<()> {
        let mut file = std::fs::File::open(src).with_context(|| format!("reading {}", src.display()))?;
        self.rt.block_on(async {
            let mut w = object_store::buffered::BufWriter::new(Arc::clone(&self.store), blob.clone());
            let mut sent = 0u64;
            loop {
                let mut buf = vec![0u8; 1 << 20];
                let n = file.read(&mut buf).with_context(|| format!("reading {}", src.display()))?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                if let Err(e) = w.put(bytes::Bytes::from(buf)).await {
                    w.abort().await.ok();
                    return Err(e).with_context(|| format!("remote {}: writing {blob}", self.config.shown()));
                }
                sent += n as u64;
                progress.tick(before + sent);
            }
            tokio::io::AsyncWriteExt::shutdown(&mut w).await.with_context(|| format!("remote {}: writing {blob}", self.config.shown()))
        })
    }
}

/// Where the store records that an artifact is on a remote: `STORE/.remote/<url hash>/<stage>-<key>`.
fn on_remote_mark(store: &Store, config: &Config, stage: &str, key: &str) -> PathBuf {
    let url = blake3::hash(config.url.as_bytes()).to_hex();
    store.root.join(".remote").join(&url[..16]).join(format!("{stage}-{key}"))
}

/// Records that `stage`/`key` is on the remote (best effort: without the mark the next run
/// asks the remote again).
pub fn mark_on_remote(store: &Store, config: &Config, stage: &str, key: &str) {
    let m = on_remote_mark(store, config, stage, key);
    if let Some(dir) = m.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&m, b"");
}

/// Whether `stage`/`key` was pushed to (or found on) the remote by this store.
pub fn is_on_remote(store: &Store, config: &Config, stage: &str, key: &str) -> bool {
    on_remote_mark(store, config, stage, key).exists()
}

/// Refuses a manifest path that could leave the staging directory.
fn safe_relative(rel: &str) -> Result<PathBuf, &'static str> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("is not a plain relative path");
    }
    Ok(p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A published artifact of `stage`/`key` holding `files` (path, bytes).
    fn publish(store: &Store, stage: &str, key: &str, files: &[(&str, &[u8])]) -> Artifact {
        let lock = store.lock(stage, key).unwrap();
        let staging = store.stage_dir(stage).unwrap();
        for (rel, bytes) in files {
            let p = staging.dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        let a = store.publish(staging, Manifest::new(stage, key, "1", serde_json::json!({}), Default::default())).unwrap();
        drop(lock);
        a
    }

    fn remote(dir: &Path) -> Remote {
        Remote::open(&Config { url: format!("file://{}", dir.display()), mode: RemoteMode::PullPush, required: false }).unwrap()
    }

    fn pull(r: &Remote, store: &Store, stage: &str, key: &str) -> anyhow::Result<Option<Artifact>> {
        let lock = store.lock(stage, key)?;
        r.pull(store, stage, key, &lock)
    }

    const FILES: &[(&str, &[u8])] = &[("a.txt", b"alpha"), ("sub/b.bin", b"\x00\x01\x02beta"), ("c.txt", b"alpha")];

    #[test]
    fn a_pushed_artifact_is_pulled_byte_identical_and_pushing_again_uploads_nothing() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (Store::open(t.path().join("a")).unwrap(), Store::open(t.path().join("b")).unwrap());
        let r = remote(&t.path().join("remote"));
        let art = publish(&a, "train", "k1", FILES);
        // Two files share their bytes: one blob.
        assert_eq!(r.push(&art).unwrap(), Pushed::Uploaded { blobs: 2, bytes: 5 + 7 });
        assert_eq!(r.push(&art).unwrap(), Pushed::Present);
        assert!(r.has("train", "k1").unwrap() && !r.has("train", "k2").unwrap());
        let got = pull(&r, &b, "train", "k1").unwrap().expect("not pulled");
        got.verify().unwrap();
        for f in ["a.txt", "sub/b.bin", "c.txt", "manifest.json"] {
            assert_eq!(std::fs::read(art.file(f)).unwrap(), std::fs::read(got.file(f)).unwrap(), "{f}");
        }
        assert!(pull(&r, &b, "train", "k2").unwrap().is_none());
    }

    #[test]
    fn a_push_that_fails_between_files_leaves_no_artifact_on_the_remote() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (Store::open(t.path().join("a")).unwrap(), Store::open(t.path().join("b")).unwrap());
        let root = t.path().join("remote");
        let r = remote(&root);
        let art = publish(&a, "train", "k1", FILES);
        // The second file's blob cannot be written (a directory stands where it goes).
        let second = &art.manifest.files.iter().find(|f| f.path == "sub/b.bin").unwrap().blake3;
        std::fs::create_dir_all(root.join("blobs").join(second).join("x")).unwrap();
        assert!(r.push(&art).is_err());
        assert!(!r.has("train", "k1").unwrap(), "a manifest was written although a file was not");
        assert!(pull(&r, &b, "train", "k1").unwrap().is_none());
        // Once the obstacle is gone a push completes it.
        std::fs::remove_dir_all(root.join("blobs").join(second)).unwrap();
        assert!(matches!(r.push(&art).unwrap(), Pushed::Uploaded { blobs: 1, .. }));
        assert!(pull(&r, &b, "train", "k1").unwrap().is_some());
    }

    #[test]
    fn a_corrupted_blob_is_named_and_nothing_is_published() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (Store::open(t.path().join("a")).unwrap(), Store::open(t.path().join("b")).unwrap());
        let root = t.path().join("remote");
        let r = remote(&root);
        let art = publish(&a, "train", "k1", FILES);
        r.push(&art).unwrap();
        let f = art.manifest.files.iter().find(|f| f.path == "sub/b.bin").unwrap();
        std::fs::write(root.join("blobs").join(&f.blake3), b"\x00\x01\x02BETA").unwrap();
        let e = pull(&r, &b, "train", "k1").expect_err("a corrupted blob was used");
        assert!(e.downcast_ref::<Corrupt>().is_some(), "{e:#}");
        assert!(format!("{e}").contains("`sub/b.bin`"), "{e}");
        assert!(b.lookup("train", "k1").unwrap().is_none());
        assert!(std::fs::read_dir(b.root.join(".tmp")).unwrap().next().is_none(), "staging left behind");
        // A missing blob, too.
        std::fs::remove_file(root.join("blobs").join(&f.blake3)).unwrap();
        let e = pull(&r, &b, "train", "k1").err().unwrap();
        assert!(e.downcast_ref::<Corrupt>().is_some() && format!("{e}").contains("missing"), "{e:#}");
    }

    #[test]
    fn a_manifest_that_reaches_outside_its_directory_or_names_another_key_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (Store::open(t.path().join("a")).unwrap(), Store::open(t.path().join("b")).unwrap());
        let root = t.path().join("remote");
        let r = remote(&root);
        let art = publish(&a, "train", "k1", &[("a.txt", b"alpha")]);
        r.push(&art).unwrap();
        let mpath = root.join("train/k1/manifest.json");
        let mut m: Manifest = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
        m.files[0].path = "../../escape.txt".into();
        m.content_hash = content_hash(&m.files);
        std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
        let e = pull(&r, &b, "train", "k1").err().unwrap();
        assert!(e.downcast_ref::<Corrupt>().is_some() && format!("{e}").contains("plain relative path"), "{e:#}");
        std::fs::create_dir_all(root.join("train/k2")).unwrap();
        std::fs::write(root.join("train/k2/manifest.json"), std::fs::read(art.file("manifest.json")).unwrap()).unwrap();
        let e = pull(&r, &b, "train", "k2").err().unwrap();
        assert!(format!("{e}").contains("not train/k2"), "{e:#}");
    }

    #[test]
    fn concurrent_pushes_of_one_key_leave_one_valid_artifact() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("remote");
        // Two stores made the key with different bytes (a nondeterministic stage).
        let arts: Vec<Artifact> = (0..4)
            .map(|i| {
                let s = Store::open(t.path().join(format!("s{i}"))).unwrap();
                let body = format!("run {i} {}", "x".repeat(100_000 * (i + 1)));
                publish(&s, "train", "k1", &[("w.bin", body.as_bytes()), ("log.txt", format!("log {i}").as_bytes())])
            })
            .collect();
        let results: Vec<Pushed> = std::thread::scope(|sc| {
            let hs: Vec<_> = arts.iter().map(|a| sc.spawn(|| remote(&root).push(a).unwrap())).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|p| matches!(p, Pushed::Uploaded { .. })).count(), 1, "{results:?}");
        let fresh = Store::open(t.path().join("fresh")).unwrap();
        let got = pull(&remote(&root), &fresh, "train", "k1").unwrap().expect("not pulled");
        got.verify().unwrap();
        assert!(arts.iter().any(|a| a.manifest.content_hash == got.manifest.content_hash));
    }

    #[test]
    fn urls_are_shown_without_credentials_and_bad_ones_are_explained() {
        let c = Config { url: "s3://AKIA:secret@bucket/team/ft?token=abc".into(), mode: RemoteMode::Pull, required: true };
        assert_eq!(c.shown(), "s3://bucket/team/ft");
        let e = Remote::open(&Config { url: "ftp://host/x".into(), ..c.clone() }).err().unwrap();
        assert!(format!("{e}").contains("scheme `ftp` is not supported"), "{e}");
        let e = Remote::open(&Config { url: "not a url".into(), ..c }).err().unwrap();
        assert!(format!("{e}").contains("not a URL"), "{e}");
    }
}
