//! A Hugging Face Hub client that shares Python's cache: revision resolution, verified and
//! resumable downloads, retries with backoff, offline mode.
//!
//! Protocol notes are in `../shared/hub/PROTOCOL.md`. We read the standard environment
//! (`HF_ENDPOINT`, `HF_TOKEN`, the token file, `HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`) and
//! write the standard cache layout (`<type>s--org--name/{blobs,snapshots,refs}`), so Python's
//! `huggingface_hub` and this client reuse each other's downloads. Unlike `hf-hub` and Python,
//! every downloaded byte is checked against the Hub's hash (sha256 `X-Linked-Etag` for LFS files,
//! git blob sha1 `ETag` for regular files) while streaming.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use sha2::Digest;

/// Model or dataset repositories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoType {
    Model,
    Dataset,
}

impl RepoType {
    fn api(self) -> &'static str {
        match self {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
        }
    }
    fn url_prefix(self) -> &'static str {
        match self {
            RepoType::Model => "",
            RepoType::Dataset => "datasets/",
        }
    }
    fn noun(self) -> &'static str {
        match self {
            RepoType::Model => "model",
            RepoType::Dataset => "dataset",
        }
    }
}

/// A resolved revision: its commit and file list.
#[derive(Clone, Debug)]
pub struct RepoInfo {
    pub sha: String,
    pub files: Vec<String>,
    /// True when the Hub could not be reached and the cache answered.
    pub from_cache: bool,
}

/// Hub client settings, read from the environment by [`Hub::from_env`].
#[derive(Clone, Debug)]
pub struct Hub {
    pub endpoint: String,
    pub token: Option<String>,
    pub cache: PathBuf,
    pub offline: bool,
    /// Attempts per request (transient failures are retried with exponential backoff).
    pub attempts: u32,
    pub backoff: Duration,
    pub progress: bool,
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true")
}

fn is_sha(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Percent-encodes one URL path segment (everything but unreserved characters).
fn quote_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn quote_path(p: &str) -> String {
    p.split('/').map(quote_segment).collect::<Vec<_>>().join("/")
}

/// Refuses Hub file names that would escape the snapshot directory.
pub fn check_repo_path(path: &str) -> anyhow::Result<()> {
    let p = Path::new(path);
    let bad = path.is_empty()
        || path.contains('\\')
        || p.is_absolute()
        || p.components().any(|c| !matches!(c, Component::Normal(_)));
    if bad {
        bail!("refusing file name `{path}` from the Hub listing: absolute or contains `..` (path traversal)");
    }
    Ok(())
}

/// Hub error codes mapped to messages a user can act on.
fn hub_error(status: u16, code: Option<&str>, what: &str, endpoint: &str) -> anyhow::Error {
    match code {
        Some("RepoNotFound") => anyhow::anyhow!(
            "repository not found: {what} does not exist on {endpoint} (or it is private: set HF_TOKEN to a token that can read it)"
        ),
        Some("RevisionNotFound") => anyhow::anyhow!("revision not found: {what}; use a branch, tag or full commit sha that exists"),
        Some("EntryNotFound") => anyhow::anyhow!("file not found: {what}"),
        Some("GatedRepo") if status == 401 => anyhow::anyhow!(
            "{what} is gated: accept its terms on the Hub, then pass a token with HF_TOKEN=hf_... (or put it in $HF_HOME/token)"
        ),
        Some("GatedRepo") => anyhow::anyhow!(
            "{what} is gated and the token in use has no access: request access on the Hub, or set HF_TOKEN to a token that has it"
        ),
        _ => anyhow::anyhow!("{what}: the Hub answered HTTP {status}{}", code.map(|c| format!(" ({c})")).unwrap_or_default()),
    }
}

fn transient(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Outcome of one attempt: retry or stop.
enum Attempt<T> {
    Done(T),
    Retry(anyhow::Error),
}

/// Retries ran out on transient failures (connection errors, 5xx, broken transfers): the Hub is
/// unavailable right now, as opposed to having answered with an error. The context of the last
/// failure, so callers can tell the two apart with `downcast_ref`.
#[derive(Debug, thiserror::Error)]
#[error("{what} failed after {attempts} attempts")]
struct GaveUp {
    what: String,
    attempts: u32,
}

impl Hub {
    /// Settings from the standard `HF_*` environment.
    pub fn from_env() -> Hub {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let base = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(var("HOME").unwrap_or_else(|| ".".into())).join(".cache"));
            base.join("huggingface")
        });
        let cache = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")).map(PathBuf::from).unwrap_or_else(|| home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            let path = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| home.join("token"));
            std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE").or_else(|| var("TRANSFORMERS_OFFLINE")).is_some_and(|v| truthy(&v));
        Hub {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()).trim_end_matches('/').to_string(),
            token,
            cache,
            offline,
            attempts: 5,
            backoff: Duration::from_millis(500),
            progress: true,
        }
    }

    fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .timeout_recv_body(Some(Duration::from_secs(300)))
            .user_agent(concat!("ft-download/", env!("CARGO_PKG_VERSION")))
            .build()
            .into()
    }

    fn repo_dir(&self, t: RepoType, repo: &str) -> PathBuf {
        self.cache.join(format!("{}--{}", t.api(), repo.replace('/', "--")))
    }

    fn same_origin(&self, url: &str) -> bool {
        url.starts_with(&self.endpoint)
    }

    fn with_auth<B>(&self, req: ureq::RequestBuilder<B>, url: &str) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) if self.same_origin(url) => req.header("Authorization", format!("Bearer {t}")),
            _ => req,
        }
    }

    /// Runs `f` up to `attempts` times with exponential backoff while it asks to retry.
    fn retrying<T>(&self, what: &str, mut f: impl FnMut(u32) -> anyhow::Result<Attempt<T>>) -> anyhow::Result<T> {
        let mut last = None;
        for i in 0..self.attempts {
            if i > 0 {
                let wait = self.backoff * 2u32.pow(i - 1);
                eprintln!("retrying {what} in {:.1} s (attempt {}/{}): {:#}", wait.as_secs_f64(), i + 1, self.attempts, last.as_ref().unwrap_or(&anyhow::anyhow!("")));
                std::thread::sleep(wait);
            }
            match f(i)? {
                Attempt::Done(v) => return Ok(v),
                Attempt::Retry(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")).context(GaveUp { what: what.to_string(), attempts: self.attempts }))
    }

    /// Resolves a revision (branch, tag or sha) to a commit and lists its files. Offline, or when
    /// the Hub cannot be reached, the cache answers if it can.
    pub fn resolve(&self, t: RepoType, repo: &str, rev: &str) -> anyhow::Result<RepoInfo> {
        if self.offline {
            return self.resolve_cached(t, repo, rev).with_context(|| {
                format!("HF_HUB_OFFLINE is set and {} {repo}@{rev} is not in the cache at {}: run once online or unset HF_HUB_OFFLINE", t.noun(), self.cache.display())
            });
        }
        let url = format!("{}/api/{}/{}/revision/{}?blobs=true", self.endpoint, t.api(), repo, quote_segment(rev));
        let agent = self.agent();
        let what = format!("{} {repo}@{rev}", t.noun());
        let online = self.retrying(&format!("resolving {what}"), |_| {
            let resp = match self.with_auth(agent.get(&url), &url).call() {
                Ok(r) => r,
                Err(e) => return Ok(Attempt::Retry(anyhow::anyhow!("cannot reach {}: {e}", self.endpoint))),
            };
            let status = resp.status().as_u16();
            if status == 200 {
                let body = resp.into_body().read_to_string().context("reading the repo info")?;
                return Ok(Attempt::Done(body));
            }
            if transient(status) {
                return Ok(Attempt::Retry(anyhow::anyhow!("HTTP {status}")));
            }
            let code = resp.headers().get("x-error-code").and_then(|v| v.to_str().ok()).map(String::from);
            Err(hub_error(status, code.as_deref(), &what, &self.endpoint))
        });
        let body = match online {
            Ok(b) => b,
            Err(e) if e.downcast_ref::<GaveUp>().is_some() => {
                return match self.resolve_cached(t, repo, rev) {
                    Ok(info) => {
                        eprintln!("warning: {:#}; using the cached {what}", e);
                        Ok(info)
                    }
                    Err(_) => Err(e.context(format!("and {what} is not in the cache at {}", self.cache.display()))),
                };
            }
            Err(e) => return Err(e),
        };
        let v: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("{what}: the Hub's repo info is not JSON"))?;
        let sha = v["sha"].as_str().filter(|s| is_sha(s)).with_context(|| format!("{what}: repo info has no commit sha"))?.to_string();
        let files: Vec<String> = v["siblings"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["rfilename"].as_str().map(String::from)).collect())
            .unwrap_or_default();
        if !is_sha(rev) {
            let refs = self.repo_dir(t, repo).join("refs").join(rev);
            if let Some(p) = refs.parent() {
                std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
            }
            std::fs::write(&refs, &sha).with_context(|| format!("writing {}", refs.display()))?;
        }
        Ok(RepoInfo { sha, files, from_cache: false })
    }

    fn resolve_cached(&self, t: RepoType, repo: &str, rev: &str) -> anyhow::Result<RepoInfo> {
        let dir = self.repo_dir(t, repo);
        let sha = if is_sha(rev) {
            rev.to_string()
        } else {
            let refs = dir.join("refs").join(rev);
            std::fs::read_to_string(&refs).with_context(|| format!("no cached ref {}", refs.display()))?.trim().to_string()
        };
        let snap = dir.join("snapshots").join(&sha);
        if !snap.is_dir() {
            bail!("no cached snapshot {}", snap.display());
        }
        let mut files = Vec::new();
        walk_rel(&snap, &snap, &mut files);
        files.sort();
        Ok(RepoInfo { sha, files, from_cache: true })
    }

    /// The local path of `path` at commit `sha`, downloading (and verifying) it if not cached.
    pub fn file(&self, t: RepoType, repo: &str, sha: &str, path: &str) -> anyhow::Result<PathBuf> {
        check_repo_path(path)?;
        let dir = self.repo_dir(t, repo);
        let snap = dir.join("snapshots").join(sha).join(path);
        if snap.exists() {
            return Ok(snap);
        }
        if self.offline {
            bail!("HF_HUB_OFFLINE is set and {path} of {repo}@{sha} is not in the cache (expected at {})", snap.display());
        }
        let what = format!("{path} of {} {repo}@{}", t.noun(), &sha[..sha.len().min(12)]);
        let agent = self.agent();
        let url = format!("{}/{}{}/resolve/{}/{}", self.endpoint, t.url_prefix(), repo, sha, quote_path(path));
        let meta = self.retrying(&format!("looking up {what}"), |_| self.metadata(&agent, &url, &what))?;
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        let blob = blobs.join(&meta.etag);
        if !blob.exists() {
            let lock_dir = self.cache.join(".locks").join(dir.file_name().unwrap_or_default());
            std::fs::create_dir_all(&lock_dir).with_context(|| format!("creating {}", lock_dir.display()))?;
            let lock_path = lock_dir.join(format!("{}.lock", meta.etag));
            let lock = std::fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
            lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
            if !blob.exists() {
                self.download_blob(&agent, &meta, &blob, &what)?;
            }
        }
        if let Some(p) = snap.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        let depth = path.split('/').count() + 1;
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(&meta.etag);
        match std::os::unix::fs::symlink(&target, &snap) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("linking {}", snap.display())),
        }
        Ok(snap)
    }

    /// HEAD the resolve URL (following same-origin redirects that carry no LFS metadata).
    fn metadata(&self, agent: &ureq::Agent, url: &str, what: &str) -> anyhow::Result<Attempt<Meta>> {
        let mut url = url.to_string();
        for _ in 0..5 {
            let resp = match self.with_auth(agent.head(&url).header("Accept-Encoding", "identity"), &url).call() {
                Ok(r) => r,
                Err(e) => return Ok(Attempt::Retry(anyhow::anyhow!("cannot reach {}: {e}", self.endpoint))),
            };
            let status = resp.status().as_u16();
            let h = |k: &str| resp.headers().get(k).and_then(|v| v.to_str().ok()).map(|s| s.to_string());
            let clean = |s: String| s.trim_start_matches("W/").trim_matches('"').to_string();
            if transient(status) {
                return Ok(Attempt::Retry(anyhow::anyhow!("HTTP {status}")));
            }
            if (300..400).contains(&status) {
                let loc = h("location").context("redirect without Location")?;
                let next = if loc.starts_with("http://") || loc.starts_with("https://") {
                    loc
                } else {
                    let origin = origin_of(&url);
                    format!("{origin}{loc}")
                };
                if let Some(etag) = h("x-linked-etag") {
                    let size = h("x-linked-size").and_then(|s| s.parse().ok()).context("LFS redirect without X-Linked-Size")?;
                    return Ok(Attempt::Done(Meta { etag: clean(etag), size, url: next, lfs: true }));
                }
                url = next;
                continue;
            }
            if status == 200 {
                let etag = h("x-linked-etag").or_else(|| h("etag")).with_context(|| format!("{what}: no ETag from the Hub"))?;
                let size = h("x-linked-size").or_else(|| h("content-length")).and_then(|s| s.parse().ok()).unwrap_or(0);
                let etag = clean(etag);
                let lfs = etag.len() == 64;
                return Ok(Attempt::Done(Meta { etag, size, url, lfs }));
            }
            let code = h("x-error-code");
            return Err(hub_error(status, code.as_deref(), what, &self.endpoint));
        }
        bail!("{what}: too many redirects")
    }

    /// Streams a blob into `<blob>.incomplete`, hashing as it goes (no second read), resuming
    /// with Range after a broken transfer, then checks size and hash and renames it into place.
    fn download_blob(&self, agent: &ureq::Agent, meta: &Meta, blob: &Path, what: &str) -> anyhow::Result<()> {
        let part = blob.with_extension("incomplete");
        let kind = if meta.lfs { "sha256" } else { "git sha1" };
        for round in 0..2 {
            let bar = if self.progress { artifact::Progress::bytes(what, meta.size) } else { artifact::Progress::hidden() };
            // The hasher always covers exactly `hashed` bytes of `part`.
            let mut hasher = StreamHash::new(meta);
            let mut hashed = 0u64;
            let got = self.retrying(&format!("downloading {what}"), |_| {
                let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
                if have != hashed {
                    // A partial file from an earlier process: hash its bytes once, then resume.
                    hasher = StreamHash::new(meta);
                    hashed = hasher.update_from_file(&part)?;
                }
                if have >= meta.size && meta.size > 0 {
                    return Ok(Attempt::Done(have));
                }
                let mut req = self.with_auth(agent.get(&meta.url), &meta.url);
                if have > 0 {
                    req = req.header("Range", format!("bytes={have}-"));
                }
                let resp = match req.call() {
                    Ok(r) => r,
                    Err(e) => return Ok(Attempt::Retry(anyhow::anyhow!("{e}"))),
                };
                let status = resp.status().as_u16();
                if transient(status) {
                    return Ok(Attempt::Retry(anyhow::anyhow!("HTTP {status}")));
                }
                let append = status == 206 && have > 0;
                if status != 200 && !append {
                    let code = resp.headers().get("x-error-code").and_then(|v| v.to_str().ok()).map(String::from);
                    return Err(hub_error(status, code.as_deref(), what, &self.endpoint));
                }
                if !append {
                    hasher = StreamHash::new(meta);
                    hashed = 0;
                }
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(append)
                    .truncate(!append)
                    .open(&part)
                    .with_context(|| format!("opening {}", part.display()))?;
                let mut reader = resp.into_body().into_reader();
                let mut buf = vec![0u8; 1 << 20];
                bar.tick(hashed);
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            file.write_all(&buf[..n]).with_context(|| format!("writing {}", part.display()))?;
                            hasher.update(&buf[..n]);
                            hashed += n as u64;
                            bar.tick(hashed);
                        }
                        Err(e) => {
                            file.flush().with_context(|| format!("writing {}", part.display()))?;
                            return Ok(Attempt::Retry(anyhow::anyhow!("transfer broke after {hashed} of {} bytes: {e}", meta.size)));
                        }
                    }
                }
                file.sync_all().with_context(|| format!("syncing {}", part.display()))?;
                if hashed < meta.size {
                    return Ok(Attempt::Retry(anyhow::anyhow!("transfer stayed truncated: {hashed} of {} bytes", meta.size)));
                }
                Ok(Attempt::Done(hashed))
            })?;
            let actual = hasher.finish();
            if got == meta.size && actual == meta.etag {
                std::fs::rename(&part, blob).with_context(|| format!("moving {} into place", part.display()))?;
                bar.finish();
                return Ok(());
            }
            let _ = std::fs::remove_file(&part);
            if round == 0 {
                eprintln!("warning: {what}: {kind} mismatch (expected {}, got {actual}); downloading it again", meta.etag);
            } else {
                bar.finish();
                bail!(
                    "{what}: {kind} mismatch after a second download: expected {} (from the Hub), got {actual}; the file is corrupted in transit or at the source",
                    meta.etag
                );
            }
        }
        unreachable!("the loop returns or bails on its second round")
    }
}

/// The hash a blob's etag is computed with: sha256 for LFS files, git blob sha1 for the rest.
enum StreamHash {
    Sha256(sha2::Sha256),
    GitSha1(sha1::Sha1),
}

impl StreamHash {
    fn new(meta: &Meta) -> StreamHash {
        if meta.lfs {
            StreamHash::Sha256(sha2::Sha256::new())
        } else {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {}\0", meta.size).as_bytes());
            StreamHash::GitSha1(h)
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            StreamHash::Sha256(h) => h.update(b),
            StreamHash::GitSha1(h) => h.update(b),
        }
    }

    fn update_from_file(&mut self, path: &Path) -> anyhow::Result<u64> {
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(_) => return Ok(0),
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut n_total = 0;
        loop {
            let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                return Ok(n_total);
            }
            self.update(&buf[..n]);
            n_total += n as u64;
        }
    }

    fn finish(self) -> String {
        match self {
            StreamHash::Sha256(h) => hex::encode(h.finalize()),
            StreamHash::GitSha1(h) => hex::encode(h.finalize()),
        }
    }
}

/// What a resolve HEAD says about a file.
struct Meta {
    etag: String,
    size: u64,
    url: String,
    lfs: bool,
}

fn origin_of(url: &str) -> String {
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after..].find('/') {
        Some(j) => url[..after + j].to_string(),
        None => url.to_string(),
    }
}

fn walk_rel(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk_rel(base, &p, out);
        } else if let Ok(rel) = p.strip_prefix(base) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_traversal_is_refused() {
        for bad in ["../x", "/etc/passwd", "a/../../b", "a\\b", "", "./a"] {
            assert!(check_repo_path(bad).is_err(), "{bad}");
        }
        for ok in ["config.json", "plain_text/train-00000-of-00001.parquet"] {
            assert!(check_repo_path(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(quote_path("a b/c.json"), "a%20b/c.json");
        assert_eq!(origin_of("http://127.0.0.1:5/x/y"), "http://127.0.0.1:5");
    }
}
