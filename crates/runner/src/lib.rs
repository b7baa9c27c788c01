//! The pipeline runner: runs each stage's binary as a subprocess, in order, passing the upstream
//! artifact directories as inputs. Caching itself lives in the stage binaries (the `artifact`
//! crate), so a stage run alone behaves exactly as under the runner.
//!
//! One shortcut: the runner remembers which key a stage binary computed for given parameters and
//! inputs ([`memo`]), so that a no-change rerun finds artifacts without starting the binaries
//! (train and evaluate load libtorch, about a second each).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _};
use artifact::{Mode, Report};
use pipeline::{Pipeline, Stage};
use serde::Serialize;

/// What to run and how.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Run only this stage; the stages before it must be cached.
    pub only: Option<Stage>,
    /// Rerun this stage and every one after it; the stages before it must be cached.
    pub from: Option<Stage>,
    /// Rerun these stages even if cached.
    pub force: Vec<Stage>,
    /// Resolve the download stage's branches again (same as forcing `download`).
    pub refresh: bool,
    /// Run nothing; say what would run and why.
    pub explain: bool,
    /// Folder holding the `ft-<stage>` binaries.
    pub bin_dir: PathBuf,
    /// Overrides the pipeline's store.
    pub store: Option<PathBuf>,
    /// The remote store the stages pull from and push to ([`remote_config`]); `None`: local only
    /// (the stage binaries get no `FT_REMOTE` then, whatever the caller's environment says).
    pub remote: Option<artifact::remote::Config>,
    /// The stages the remote applies to (empty: all).
    pub remote_stages: Vec<Stage>,
    /// Look every stage up (locally, then on the remote) and compute none: an error names the
    /// first that neither has.
    pub lookup_only: bool,
    /// Train data-parallel with this many ranks on this machine (0 or 1: one process); the
    /// other stages run once. The artifact's key does not depend on it.
    pub nproc_per_node: usize,
}

/// One stage's outcome, as printed with `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct StageOutcome {
    pub stage: String,
    pub key: String,
    pub cached: bool,
    /// Came from the remote store (then `cached` too).
    pub pulled: bool,
    pub seconds: f64,
    pub artifact: Option<PathBuf>,
    /// `--explain` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_run: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// A stage binary failed; the run stopped there.
#[derive(Debug, thiserror::Error)]
#[error("stage `{stage}` failed with exit code {code}; nothing was published for it")]
pub struct StageFailed {
    pub stage: Stage,
    pub code: i32,
}

/// The stages of a pipeline that a run with these options visits, and in which mode.
fn plan(p: &Pipeline, opts: &RunOptions) -> anyhow::Result<Vec<(Stage, Mode, bool)>> {
    for s in opts.only.iter().chain(opts.from.iter()).chain(opts.force.iter()) {
        if p.section(*s).is_none() {
            bail!("stage `{s}` is not in pipeline `{}` (its stages: {})", p.name, names(p));
        }
    }
    let mut out = Vec::new();
    for sec in &p.stages {
        let s = sec.stage;
        let forced = opts.force.contains(&s) || (opts.refresh && s == Stage::Download);
        let (mode, force) = if opts.lookup_only {
            if opts.only.is_some_and(|only| s > only) {
                break;
            }
            (Mode::Lookup, false)
        } else if opts.explain {
            (Mode::Explain, forced || opts.from.is_some_and(|f| s >= f))
        } else if let Some(only) = opts.only {
            if s < only {
                (Mode::Lookup, false)
            } else if s == only {
                (Mode::Run, forced)
            } else {
                break;
            }
        } else if let Some(from) = opts.from {
            if s < from {
                (Mode::Lookup, false)
            } else {
                (Mode::Run, true)
            }
        } else {
            (Mode::Run, forced)
        };
        out.push((s, mode, force));
        if opts.explain && opts.only == Some(s) {
            break;
        }
    }
    Ok(out)
}

fn names(p: &Pipeline) -> String {
    p.stages.iter().map(|s| s.stage.name()).collect::<Vec<_>>().join(", ")
}

/// The remote a run uses: the URL from `flag`, else `FT_REMOTE`, else the pipeline's
/// `store_remote` (none with `no_remote`); the mode from `mode`, else `FT_REMOTE_MODE`, else
/// pull-push; required when `required` or `FT_REMOTE_REQUIRED=1`.
pub fn remote_config(
    p: &Pipeline,
    flag: Option<&str>,
    no_remote: bool,
    mode: Option<artifact::remote::RemoteMode>,
    required: bool,
) -> anyhow::Result<Option<artifact::remote::Config>> {
    if no_remote {
        return Ok(None);
    }
    let env = artifact::remote::Config::from_env()?;
    let url = flag.map(str::to_string).or_else(|| env.map(|c| c.url)).or_else(|| p.store_remote.clone());
    let Some(url) = url.filter(|u| !u.trim().is_empty()) else { return Ok(None) };
    Ok(Some(artifact::remote::Config {
        url,
        mode: match mode {
            Some(m) => m,
            None => artifact::remote::env_mode()?.unwrap_or_default(),
        },
        required: required || artifact::remote::env_required(),
    }))
}

/// The store a pipeline uses under these options.
pub fn store_of(p: &Pipeline, opts: &RunOptions) -> PathBuf {
    opts.store.clone().unwrap_or_else(|| p.store.clone())
}

/// How a stage binary is invoked: its mode, whether forced, and the remote store it is given.
struct How<'a> {
    mode: Mode,
    force: bool,
    remote: Option<&'a artifact::remote::Config>,
    /// Ranks to start for a stage that trains data-parallel (see [`RunOptions::nproc_per_node`]).
    ranks: usize,
}

/// Starts `ranks` copies of the command `make` builds, as torchrun would on one machine (rank
/// 0 serves the rendezvous on a free loopback port), and waits for all: rank 0's exit is the
/// stage's.
fn run_ranks(make: &dyn Fn() -> Command, ranks: usize) -> anyhow::Result<std::process::ExitStatus> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).context("finding a free port for the rendezvous")?.port();
    let mut children = Vec::new();
    for r in 0..ranks {
        let mut cmd = make();
        cmd.env("RANK", r.to_string())
            .env("WORLD_SIZE", ranks.to_string())
            .env("LOCAL_RANK", r.to_string())
            .env("LOCAL_WORLD_SIZE", ranks.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("FT_LAUNCHER", "ft");
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                for c in &mut children {
                    let _ = c.kill();
                }
                return Err(e).with_context(|| format!("starting rank {r}"));
            }
        }
    }
    // Once rank 0 has ended, the others get a moment to end too; then, as torchrun does, they
    // are stopped (a rank whose rank 0 never served the rendezvous would otherwise wait for
    // its whole timeout).
    let grace = std::time::Duration::from_secs(10);
    let mut statuses: Vec<Option<std::process::ExitStatus>> = vec![None; ranks];
    let mut rank0_done: Option<Instant> = None;
    while statuses.iter().any(Option::is_none) {
        for (st, c) in statuses.iter_mut().zip(children.iter_mut()) {
            if st.is_none() {
                *st = c.try_wait().context("waiting for a rank")?;
            }
        }
        if statuses[0].is_some() && rank0_done.get_or_insert_with(Instant::now).elapsed() > grace {
            for (r, (st, c)) in statuses.iter_mut().zip(children.iter_mut()).enumerate() {
                if st.is_none() {
                    eprintln!("warning: stopping rank {r}, still running {} s after rank 0 ended", grace.as_secs());
                    let _ = c.kill();
                    *st = Some(c.wait().context("waiting for a rank")?);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let statuses: Vec<std::process::ExitStatus> = statuses.into_iter().flatten().collect();
    for (r, st) in statuses.iter().enumerate().skip(1) {
        if !st.success() && statuses[0].success() {
            eprintln!("warning: rank {r} exited with {st} after rank 0 finished");
        }
    }
    Ok(statuses[0])
}

/// Invokes one stage binary and reads its report.
fn invoke(store: &Path, bin_dir: &Path, stage: Stage, params: &serde_json::Value, inputs: &BTreeMap<Stage, PathBuf>, how: How) -> anyhow::Result<Report> {
    let How { mode, force, remote, ranks } = how;
    let tmp = store.join(".tmp");
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tag = format!("{}-{}-{n}", stage, std::process::id());
    let params_path = tmp.join(format!("params-{tag}.json"));
    let report_path = tmp.join(format!("report-{tag}.json"));
    std::fs::write(&params_path, serde_json::to_vec_pretty(params)?)
        .with_context(|| format!("writing {}", params_path.display()))?;
    let _ = std::fs::remove_file(&report_path);
    let bin = bin_dir.join(stage.binary());
    let make = || {
        let mut cmd = Command::new(&bin);
        cmd.arg("--params").arg(&params_path).arg("--store").arg(store).arg("--report").arg(&report_path);
        cmd.arg("--mode").arg(match mode {
            Mode::Run => "run",
            Mode::Lookup => "lookup",
            Mode::Explain => "explain",
        });
        if force {
            cmd.arg("--force");
        }
        artifact::remote::Config::to_env(remote, &mut cmd);
        for v in pipeline::LAUNCH_VARS {
            cmd.env_remove(v);
        }
        for up in stage.inputs() {
            if let Some(dir) = inputs.get(up) {
                cmd.arg("--input").arg(format!("{}={}", up, dir.display()));
            }
        }
        cmd
    };
    let status = if ranks > 1 && stage == Stage::Train && mode == Mode::Run {
        run_ranks(&make, ranks)
    } else {
        make().status().map_err(anyhow::Error::from)
    }
    .with_context(|| format!("starting {}", bin.display()))?;
    let _ = std::fs::remove_file(&params_path);
    let not_cached = mode == Mode::Lookup && status.code() == Some(artifact::EXIT_NOT_CACHED);
    if !status.success() && !not_cached {
        let _ = std::fs::remove_file(&report_path);
        return Err(StageFailed { stage, code: status.code().unwrap_or(-1) }.into());
    }
    let text = std::fs::read(&report_path)
        .with_context(|| format!("stage `{stage}` exited 0 but wrote no report at {}", report_path.display()))?;
    let _ = std::fs::remove_file(&report_path);
    serde_json::from_slice(&text).with_context(|| format!("stage `{stage}` wrote an unreadable report"))
}

/// Runs (or explains) a pipeline. `on_stage` is called as each stage finishes.
pub fn run(
    p: &Pipeline,
    opts: &RunOptions,
    mut on_stage: impl FnMut(&StageOutcome),
) -> anyhow::Result<Vec<StageOutcome>> {
    let store = store_of(p, opts);
    let steps = plan(p, opts)?;
    let mut artifacts: BTreeMap<Stage, PathBuf> = BTreeMap::new();
    // Content hashes of the upstream artifacts, from their reports: the memo's inputs.
    let mut hashes: BTreeMap<Stage, String> = BTreeMap::new();
    let memo_store = artifact::Store::open(&store).ok();
    let mut blocked: Option<Stage> = None;
    let mut out = Vec::new();
    for (stage, mode, force) in steps {
        let params = &p.section(stage).context("planned stage without a section")?.params;
        if let Some(up) = blocked {
            // --explain past a stage that would run: this one's key depends on bytes not made yet.
            let o = StageOutcome {
                stage: stage.name().into(),
                key: String::new(),
                cached: false,
                pulled: false,
                seconds: 0.0,
                artifact: None,
                would_run: None,
                reasons: vec![format!(
                    "depends on `{up}`, which would run: cached only if `{up}` writes byte-identical output"
                )],
            };
            on_stage(&o);
            out.push(o);
            continue;
        }
        let t = Instant::now();
        let remote = opts.remote.as_ref().filter(|_| opts.remote_stages.is_empty() || opts.remote_stages.contains(&stage));
        let memo = (mode != Mode::Explain).then(|| memo::id(&opts.bin_dir, stage, params, &hashes)).flatten();
        let recalled = memo.as_deref().filter(|_| !force).zip(memo_store.as_ref()).and_then(|(id, st)| memo::recall(st, stage, id));
        // A remembered artifact the remote may lack goes through its binary, which pushes it.
        // `cargo xtask push`/`pull` (lookup_only) do not trust the on-remote marks: the remote
        // may have been emptied since they were made, and asking it is their whole job.
        let recalled = recalled.filter(|r| !remote.is_some_and(|c| opts.lookup_only || (c.mode.pushes() && !memo_store.as_ref().is_some_and(|st| artifact::remote::is_on_remote(st, c, stage.name(), &r.key)))));
        let r = match recalled {
            Some(r) => r,
            None => {
                let r = invoke(&store, &opts.bin_dir, stage, params, &artifacts, How { mode, force, remote, ranks: opts.nproc_per_node })?;
                if let (Some(id), Some(dir)) = (&memo, &r.artifact) {
                    memo::remember(&store, stage, id, dir, &r.runtime_files);
                }
                r
            }
        };
        if mode == Mode::Lookup && r.artifact.is_none() {
            let remote_too = remote.map(|c| format!(" nor on the remote {}", c.shown())).unwrap_or_default();
            bail!(
                "stage `{stage}` of pipeline `{}` has no artifact in {}{remote_too} for its current parameters and inputs; \
                 run the pipeline{} first",
                p.name,
                store.display(),
                if opts.lookup_only { "" } else { " without --only/--from" }
            );
        }
        let o = StageOutcome {
            stage: stage.name().into(),
            key: r.key.clone(),
            cached: r.cached,
            pulled: r.pulled,
            seconds: t.elapsed().as_secs_f64(),
            artifact: r.artifact.clone(),
            would_run: r.would_run,
            reasons: r.reasons.clone(),
        };
        on_stage(&o);
        if stage == Stage::Download {
            if let Some(dir) = &r.artifact {
                check_against_download(p, dir)?;
            }
        }
        match &r.artifact {
            Some(dir) => {
                artifacts.insert(stage, dir.clone());
                if let Some(h) = &r.content_hash {
                    hashes.insert(stage, h.clone());
                }
            }
            None => blocked = Some(stage),
        }
        out.push(o);
    }
    Ok(out)
}

/// The keys a pipeline currently references, as (stage, key): the stages found cached in
/// order, and the key of the first one that is not (its checkpoints may be resuming). The chain
/// stops there: later keys depend on bytes not made yet.
pub fn referenced(p: &Pipeline, opts: &RunOptions) -> anyhow::Result<artifact::Keep> {
    let store = store_of(p, opts);
    let mut artifacts: BTreeMap<Stage, PathBuf> = BTreeMap::new();
    let mut keep = artifact::Keep::new();
    for sec in &p.stages {
        let r = invoke(&store, &opts.bin_dir, sec.stage, &sec.params, &artifacts, How { mode: Mode::Lookup, force: false, remote: None, ranks: 1 })?;
        keep.insert((sec.stage.name().to_string(), r.key.clone()));
        let Some(dir) = r.artifact else { break };
        artifacts.insert(sec.stage, dir);
    }
    Ok(keep)
}

/// What gc did (or would do) to one store.
#[derive(Debug)]
pub struct GcReport {
    /// The store, canonicalised: two spellings of one directory (`data`, `./data`, a symlink)
    /// are one store.
    pub store: PathBuf,
    pub kept: usize,
    pub reclaimed: Vec<artifact::Reclaimed>,
}

/// Garbage-collects the stores of these pipelines, keeping what any of them references.
pub fn gc(pipelines: &[Pipeline], opts: &RunOptions, dry_run: bool) -> anyhow::Result<Vec<GcReport>> {
    let mut by_store: BTreeMap<PathBuf, artifact::Keep> = BTreeMap::new();
    for p in pipelines {
        let store = store_of(p, opts);
        let Ok(canonical) = std::fs::canonicalize(&store) else { continue };
        let keep = referenced(p, opts)?;
        by_store.entry(canonical).or_default().extend(keep);
    }
    let mut out = Vec::new();
    for (store, keep) in by_store {
        let s = artifact::Store::open(&store)?;
        let reclaimed = s.gc(&keep, dry_run)?;
        out.push(GcReport { store, kept: keep.len(), reclaimed });
    }
    Ok(out)
}

/// Checks, once the download artifact exists (cached or just made) and before any later stage
/// runs, what the pipeline file alone could not: the splits train and evaluate read exist, the
/// positive classes name classes of the dataset, and train's and evaluate's settings fit its task
/// (select_metric, class weights, label smoothing, threshold).
fn check_against_download(p: &Pipeline, download: &Path) -> anyhow::Result<()> {
    let info: pipeline::files::DatasetInfo = pipeline::files::read(&download.join("dataset/info.json"))?;
    let labels: pipeline::files::Labels = pipeline::files::read(&download.join("dataset/labels.json"))?;
    let splits: BTreeSet<String> = info.splits.into_keys().collect();
    let source = format!("the download artifact {}", download.display());
    let fail = |e: String| anyhow::anyhow!("pipeline `{}`: {e} (the download artifact {} holds a {} task with classes {:?})", p.name, download.display(), labels.task.name(), labels.names);
    if let Some(t) = p.typed::<pipeline::TrainParams>(Stage::Train).transpose().map_err(fail)? {
        t.check_task(labels.task, Some(labels.names.len())).map_err(fail)?;
    }
    if let Some(e) = p.typed::<pipeline::EvaluateParams>(Stage::Evaluate).transpose().map_err(fail)? {
        e.check_task(labels.task).map_err(fail)?;
    }
    p.check_reads(Some(&splits), Some(&labels.names), &source).map_err(|(_, e)| anyhow::anyhow!("pipeline `{}`: {e}", p.name))
}

/// The binaries a run of this pipeline needs.
pub fn binaries_needed(p: &Pipeline) -> Vec<Stage> {
    p.stages.iter().map(|s| s.stage).collect()
}

/// The runner's memo: for a stage binary (its path, size and modification time), the raw
/// parameters and the content hashes of the inputs, the key the binary computed. Sound because a
/// key is a function of exactly these (the code version is built into the binary) — except for
/// artifacts with `file` inputs (local dataset or model files, hashed by the stage itself), which
/// are never memoized. A hit still goes through `Store::lookup`, which verifies the artifact.
/// Entries live in `STORE/.memo/`; deleting them is always safe.
mod memo {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::time::UNIX_EPOCH;

    use artifact::{Artifact, Report, Store};
    use pipeline::Stage;

    /// `inputs`: the content hash of each upstream artifact (every one the stage reads must be
    /// there, else no id).
    pub fn id(bin_dir: &Path, stage: Stage, params: &serde_json::Value, inputs: &BTreeMap<Stage, String>) -> Option<String> {
        let bin = bin_dir.join(stage.binary());
        let meta = std::fs::metadata(&bin).ok()?;
        let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_nanos();
        let mut h = blake3::Hasher::new();
        let mut field = |b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(stage.name().as_bytes());
        field(bin.as_os_str().as_encoded_bytes());
        field(format!("{} {mtime}", meta.len()).as_bytes());
        field(serde_json::to_string(params).ok()?.as_bytes());
        // Which libtorch (or other library) a binary loads can change without a rebuild: the
        // loader's search path is part of the id, and the files a stage reported loading are
        // re-checked on recall.
        for var in ["LD_LIBRARY_PATH", "LD_PRELOAD"] {
            field(std::env::var_os(var).unwrap_or_default().as_encoded_bytes());
        }
        for up in stage.inputs() {
            field(up.name().as_bytes());
            field(inputs.get(up)?.as_bytes());
        }
        Some(h.finalize().to_hex().to_string())
    }

    fn path(store: &Path, stage: Stage, id: &str) -> PathBuf {
        store.join(".memo").join(format!("{}-{id}", stage.name()))
    }

    fn has_file_inputs(a: &Artifact) -> bool {
        a.manifest.inputs.values().any(artifact::InputRef::is_file)
    }

    /// A file's identity: path, size and modification time.
    fn identity(p: &Path) -> Option<String> {
        let m = std::fs::metadata(p).ok()?;
        let mtime = m.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_nanos();
        Some(format!("{}\t{}\t{mtime}", p.display(), m.len()))
    }

    /// The cached artifact the memo points to, if it is still there and valid and the run-time
    /// files the stage loaded (libtorch) are the same files.
    pub fn recall(store: &Store, stage: Stage, id: &str) -> Option<Report> {
        let text = std::fs::read_to_string(path(&store.root, stage, id)).ok()?;
        let mut lines = text.lines();
        let key = lines.next()?;
        for recorded in lines {
            let file = recorded.split('\t').next().unwrap_or_default();
            if identity(Path::new(file)).as_deref() != Some(recorded) {
                return None;
            }
        }
        let a = store.lookup(stage.name(), key.trim()).ok()??;
        if has_file_inputs(&a) {
            return None;
        }
        Some(Report {
            stage: stage.name().into(),
            key: a.manifest.key.clone(),
            cached: true,
            content_hash: Some(a.manifest.content_hash.clone()),
            artifact: Some(a.path),
            ..Default::default()
        })
    }

    /// Records the key of a stage's artifact (best effort: a memo that cannot be written only
    /// costs a process start next time).
    pub fn remember(store: &Path, stage: Stage, id: &str, dir: &Path, runtime_files: &[PathBuf]) {
        let Ok(a) = Artifact::open(dir) else { return };
        if has_file_inputs(&a) {
            return;
        }
        let mut text = a.manifest.key.clone();
        for f in runtime_files {
            let Some(line) = identity(f) else { return };
            text.push('\n');
            text.push_str(&line);
        }
        let p = path(store, stage, id);
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let ok = p.parent().is_some_and(|d| std::fs::create_dir_all(d).is_ok()) && std::fs::write(&tmp, text).is_ok();
        if !ok || std::fs::rename(&tmp, &p).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}
