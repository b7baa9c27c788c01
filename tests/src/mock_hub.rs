//! A mock Hugging Face Hub on 127.0.0.1 for tests: the resolve protocol (307 for regular files,
//! 302 to a separate "CDN" port for LFS files with X-Linked-Etag/X-Linked-Size), ETag,
//! X-Repo-Commit, Range/206, the revision info endpoint, Hub error codes, gated repos, and fault
//! injection (transient 5xx, disconnect mid-body, corrupted body). It counts requests so tests
//! can assert that a cached run downloads nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha2::Digest;

/// Faults, applied per file path (`repo/path`).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// The first N requests for each file answer 503.
    pub fail_first: u32,
    /// On the first N CDN GETs of each LFS file, send only this many bytes, then close.
    pub truncate_after: Option<(usize, u32)>,
    /// On the first N CDN GETs of each LFS file, flip the middle byte.
    pub corrupt: u32,
    /// Every repo is gated behind this token.
    pub token: Option<String>,
}

#[derive(Default)]
struct State {
    /// (type, repo) -> path -> bytes.
    repos: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
    faults: Faults,
    counts: BTreeMap<String, u32>,
    /// Every request line, e.g. `GET /api/models/org/x/revision/main`, with its Range header.
    pub log: Vec<String>,
}

/// A running mock Hub; stops when dropped.
pub struct MockHub {
    pub endpoint: String,
    cdn: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

fn commit_of(files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut h = sha1::Sha1::new();
    for (p, b) in files {
        h.update(p.as_bytes());
        h.update(git_sha1(b).as_bytes());
    }
    hex::encode(h.finalize())
}

fn git_sha1(b: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    hex::encode(h.finalize())
}

fn sha256(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn is_lfs(path: &str, b: &[u8]) -> bool {
    b.len() >= 1 << 20 || [".safetensors", ".parquet", ".bin"].iter().any(|e| path.ends_with(e))
}

struct Req {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

fn read_req(s: &mut TcpStream) -> Option<Req> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some(Req { method, path, headers })
}

fn respond(s: &mut TcpStream, status: u16, headers: &[(String, String)], body: &[u8], head: bool) {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Error",
    };
    let mut out = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = s.write_all(out.as_bytes());
    if !head {
        let _ = s.write_all(body);
    }
    let _ = s.flush();
}

fn error(s: &mut TcpStream, status: u16, code: &str, head: bool, extra: &[(String, String)]) {
    let mut h = vec![("X-Error-Code".to_string(), code.to_string()), ("X-Error-Message".to_string(), code.to_string())];
    h.extend_from_slice(extra);
    respond(s, status, &h, format!("{{\"error\": \"{code}\"}}").as_bytes(), head);
}

impl MockHub {
    pub fn start() -> MockHub {
        let hub = TcpListener::bind("127.0.0.1:0").expect("bind");
        let cdn = TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("http://{}", hub.local_addr().expect("addr"));
        let cdn_url = format!("http://{}", cdn.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        for (listener, is_cdn) in [(hub, false), (cdn, true)] {
            let state = state.clone();
            let stop = stop.clone();
            let cdn_url = cdn_url.clone();
            listener.set_nonblocking(true).expect("nonblocking");
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let state = state.clone();
                            let cdn_url = cdn_url.clone();
                            std::thread::spawn(move || serve(&mut s, &state, is_cdn, &cdn_url));
                        }
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                    }
                }
            });
        }
        MockHub { endpoint, cdn: cdn_url, state, stop }
    }

    /// Adds (or replaces) a file of a repo; `kind` is "models" or "datasets".
    pub fn add(&self, kind: &str, repo: &str, path: &str, bytes: &[u8]) {
        let mut st = self.state.lock().expect("lock");
        st.repos.entry((kind.into(), repo.into())).or_default().insert(path.into(), bytes.to_vec());
    }

    pub fn set_faults(&self, f: Faults) {
        let mut st = self.state.lock().expect("lock");
        st.faults = f;
        st.counts.clear();
    }

    pub fn commit(&self, kind: &str, repo: &str) -> String {
        let st = self.state.lock().expect("lock");
        commit_of(&st.repos[&(kind.to_string(), repo.to_string())])
    }

    /// The request log so far (and clears it).
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().expect("lock").log)
    }

    pub fn cdn(&self) -> &str {
        &self.cdn
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(s: &mut TcpStream, state: &Mutex<State>, is_cdn: bool, cdn_url: &str) {
    let Some(req) = read_req(s) else { return };
    let head = req.method == "HEAD";
    let range = req.headers.get("range").cloned();
    let mut st = state.lock().expect("lock");
    st.log.push(format!("{} {}{}{}", req.method, if is_cdn { "cdn:" } else { "" }, req.path, range.as_ref().map(|r| format!(" [{r}]")).unwrap_or_default()));
    let path = req.path.split('?').next().unwrap_or_default().to_string();
    if is_cdn {
        // /lfs/<type>/<org>/<name>/<path...>
        let rest = path.trim_start_matches("/lfs/");
        let mut it = rest.splitn(4, '/');
        let (kind, org, name, file) = (it.next().unwrap_or(""), it.next().unwrap_or(""), it.next().unwrap_or(""), it.next().unwrap_or(""));
        let repo = format!("{org}/{name}");
        let Some(bytes) = st.repos.get(&(kind.to_string(), repo.clone())).and_then(|r| r.get(file)).cloned() else {
            return error(s, 404, "EntryNotFound", head, &[]);
        };
        // CDN requests count apart from resolve requests, so "the first N GETs" means GETs.
        let n = st.counts.entry(format!("cdn:{repo}/{file}")).or_insert(0);
        *n += 1;
        let count = *n;
        let faults = st.faults.clone();
        drop(st);
        if count <= faults.fail_first {
            return error(s, 503, "ServiceUnavailable", head, &[]);
        }
        let served = count - faults.fail_first;
        let start = range.as_ref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split('-').next()).and_then(|x| x.parse::<usize>().ok()).unwrap_or(0);
        if start >= bytes.len() && start > 0 {
            return respond(s, 416, &[("Content-Range".into(), format!("bytes */{}", bytes.len()))], b"", head);
        }
        let mut body = bytes[start..].to_vec();
        if served <= faults.corrupt && !body.is_empty() {
            let mid = body.len() / 2;
            body[mid] ^= 0xff;
        }
        let (status, mut headers) = if start > 0 {
            (206, vec![("Content-Range".to_string(), format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len()))])
        } else {
            (200, vec![])
        };
        headers.push(("Accept-Ranges".into(), "bytes".into()));
        if let Some((after, times)) = faults.truncate_after {
            if served <= times && body.len() > after && !head {
                let mut out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in &headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let _ = s.write_all(out.as_bytes());
                let _ = s.write_all(&body[..after]);
                let _ = s.flush();
                let _ = s.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
        return respond(s, status, &headers, &body, head);
    }
    // Hub routes.
    let auth = req.headers.get("authorization").cloned();
    let gated = |st: &State| -> Option<(u16, &'static str)> {
        let t = st.faults.token.as_ref()?;
        match &auth {
            None => Some((401, "GatedRepo")),
            Some(a) if *a == format!("Bearer {t}") => None,
            Some(_) => Some((403, "GatedRepo")),
        }
    };
    if let Some(rest) = path.strip_prefix("/api/") {
        // /api/{models|datasets}/{org}/{name}/revision/{rev}
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() >= 5 && parts[3] == "revision" {
            let (kind, repo, rev) = (parts[0], format!("{}/{}", parts[1], parts[2]), parts[4]);
            let Some(files) = st.repos.get(&(kind.to_string(), repo.clone())) else {
                return error(s, 401, "RepoNotFound", head, &[]);
            };
            let commit = commit_of(files);
            if rev != "main" && rev != commit {
                return error(s, 404, "RevisionNotFound", head, &[]);
            }
            let siblings: Vec<serde_json::Value> = files.keys().map(|p| serde_json::json!({"rfilename": p})).collect();
            let body = serde_json::json!({"id": repo, "sha": commit, "siblings": siblings, "gated": st.faults.token.is_some()});
            return respond(s, 200, &[("Content-Type".into(), "application/json".into())], body.to_string().as_bytes(), head);
        }
        return error(s, 404, "NotFound", head, &[]);
    }
    // /{datasets/}org/name/resolve/{rev}/{path}
    let (kind, rest) = match path.strip_prefix("/datasets/") {
        Some(r) => ("datasets", r.to_string()),
        None => ("models", path.trim_start_matches('/').to_string()),
    };
    let parts: Vec<&str> = rest.splitn(5, '/').collect();
    if parts.len() < 5 || parts[2] != "resolve" {
        return error(s, 404, "NotFound", head, &[]);
    }
    let repo = format!("{}/{}", parts[0], parts[1]);
    let (rev, file) = (parts[3], parts[4].to_string());
    let Some(files) = st.repos.get(&(kind.to_string(), repo.clone())).cloned() else {
        return error(s, 401, "RepoNotFound", head, &[]);
    };
    if let Some((status, code)) = gated(&st) {
        return error(s, status, code, head, &[]);
    }
    let commit = commit_of(&files);
    if rev != "main" && rev != commit {
        return error(s, 404, "RevisionNotFound", head, &[]);
    }
    let commit_h = ("X-Repo-Commit".to_string(), commit.clone());
    let Some(bytes) = files.get(&file).cloned() else {
        return error(s, 404, "EntryNotFound", head, &[commit_h]);
    };
    let key = format!("{repo}/{file}");
    let n = st.counts.entry(key).or_insert(0);
    *n += 1;
    if *n <= st.faults.fail_first {
        return error(s, 503, "ServiceUnavailable", head, &[]);
    }
    drop(st);
    if is_lfs(&file, &bytes) {
        let loc = format!("{cdn_url}/lfs/{kind}/{repo}/{file}?sig=x");
        let h = vec![
            commit_h,
            ("X-Linked-Etag".into(), format!("\"{}\"", sha256(&bytes))),
            ("X-Linked-Size".into(), bytes.len().to_string()),
            ("Location".into(), loc),
        ];
        return respond(s, 302, &h, b"redirect", head);
    }
    let h = vec![commit_h, ("ETag".into(), format!("\"{}\"", git_sha1(&bytes))), ("Accept-Ranges".into(), "bytes".into())];
    let mut body = bytes;
    if let Some(start) = range.as_ref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split('-').next()).and_then(|x| x.parse::<usize>().ok()) {
        body = body[start.min(body.len())..].to_vec();
        return respond(s, 206, &h, &body, head);
    }
    respond(s, 200, &h, &body, head)
}
