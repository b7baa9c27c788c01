//! The command line and life cycle every stage binary shares: compute the key, reuse a verified
//! artifact or run the stage into a staging directory under the key's lock, publish, report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::hash::{compute_key, short};
use crate::manifest::{InputRef, Manifest};
use crate::remote::{Corrupt, Pushed, Remote};
use crate::store::{Artifact, KeyLock, Store};

/// Exit code of `--mode lookup` when the artifact is not in the store.
pub const EXIT_NOT_CACHED: i32 = 3;

/// What a stage invocation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Reuse the artifact if it exists and verifies, else compute and publish it.
    Run,
    /// Only report the artifact if it exists (exit code 3 if not); never compute.
    Lookup,
    /// Run nothing: say whether the stage would run and what differs from the nearest artifact.
    Explain,
}

/// Arguments shared by every `ft-<stage>` binary.
#[derive(clap::Args, Clone, Debug)]
pub struct StageArgs {
    /// The stage's parameters: a YAML (or JSON) file holding the stage's section of a pipeline.
    #[arg(long, value_name = "FILE")]
    pub params: PathBuf,
    /// An input artifact directory, as NAME=DIR (NAME is the upstream stage). Repeatable.
    #[arg(long = "input", value_name = "NAME=DIR")]
    pub inputs: Vec<String>,
    /// The artifact store.
    #[arg(long, default_value = "data", value_name = "DIR")]
    pub store: PathBuf,
    /// Write the JSON report here instead of printing it on stdout.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Recompute even if a valid artifact exists (it is replaced atomically).
    #[arg(long)]
    pub force: bool,
    #[arg(long, value_enum, default_value_t = Mode::Run)]
    pub mode: Mode,
}

/// A stage's identity: its name and code version (schema version plus source hash), the versions
/// of what it links and loads, and which of its inputs must come from one another.
#[derive(Clone, Debug)]
pub struct StageDef {
    pub name: &'static str,
    pub code_version: String,
    /// The stage crate's version, recorded in the manifest's environment.
    pub tool_version: &'static str,
    /// The external crates the stage links, name -> version as resolved in Cargo.lock at build
    /// time, plus `crates` -> a fingerprint of every crate in their dependency closure. In the
    /// key and, readable, in the manifest's environment.
    pub dependencies: BTreeMap<String, String>,
    /// What the process loaded at run time that can change numbers without a rebuild.
    pub runtime: Runtime,
    /// Input pairs that must belong together, checked before any work.
    pub lineage: &'static [Lineage],
}

/// Run-time facts in the key (e.g. `libtorch` -> `2.11.0+cu130`), and the files they were read
/// from, whose identity (path, size, modification time) the runner's memo re-checks.
#[derive(Clone, Debug, Default)]
pub struct Runtime {
    pub facts: BTreeMap<String, String>,
    pub files: Vec<PathBuf>,
}

impl From<(BTreeMap<String, String>, Vec<PathBuf>)> for Runtime {
    fn from((facts, files): (BTreeMap<String, String>, Vec<PathBuf>)) -> Runtime {
        Runtime { facts, files }
    }
}

/// `input` must have been made from the very artifact given as input `made_from`: the content
/// hash `input`'s manifest records for its own input `made_from` equals the given one's.
#[derive(Clone, Copy, Debug)]
pub struct Lineage {
    pub input: &'static str,
    pub made_from: &'static str,
}

impl StageDef {
    /// A stage with no recorded dependencies, run-time facts or lineage rules.
    pub fn new(name: &'static str, code_version: String, tool_version: &'static str) -> StageDef {
        StageDef { name, code_version, tool_version, dependencies: BTreeMap::new(), runtime: Runtime::default(), lineage: &[] }
    }

    pub fn with_runtime(mut self, runtime: Runtime) -> StageDef {
        self.runtime = runtime;
        self
    }

    pub fn with_lineage(mut self, lineage: &'static [Lineage]) -> StageDef {
        self.lineage = lineage;
        self
    }

    /// Everything besides code, parameters and inputs that the key covers: dependencies and
    /// run-time facts.
    pub fn toolchain(&self) -> BTreeMap<String, String> {
        let mut t = self.dependencies.clone();
        t.extend(self.runtime.facts.clone());
        t
    }
}

/// Parses build-support's `FT_DEPS` (`name=version;...`).
pub fn parse_dependencies(text: &str) -> BTreeMap<String, String> {
    text.split(';').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Checks a stage's lineage rules on its inputs; the error names both artifacts and the fix.
pub fn check_lineage(stage: &str, rules: &[Lineage], inputs: &BTreeMap<String, Artifact>) -> anyhow::Result<()> {
    for r in rules {
        let (Some(a), Some(b)) = (inputs.get(r.input), inputs.get(r.made_from)) else { continue };
        let Some(recorded) = a.manifest.inputs.get(r.made_from) else {
            bail!("{stage}: input `{}` ({}) is not a {} artifact: it records no `{}` input", r.input, a.path.display(), r.input, r.made_from);
        };
        if recorded.content_hash != b.manifest.content_hash {
            bail!(
                "{stage}: the inputs do not belong together: the {} artifact {} was made from {} artifact {} (content {}), \
                 but the {} input given is {} (key {}, content {}). Give the {} artifact it was made from, or rerun the pipeline so both come from one run",
                r.input,
                a.path.display(),
                r.made_from,
                short(&recorded.key),
                short(&recorded.content_hash),
                r.made_from,
                b.path.display(),
                short(&b.manifest.key),
                short(&b.manifest.content_hash),
                r.made_from,
            );
        }
    }
    Ok(())
}

/// What one invocation did; printed as one JSON line.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub stage: String,
    pub key: String,
    pub cached: bool,
    pub seconds: f64,
    /// The artifact directory; absent when `lookup` found nothing or `explain` would run.
    pub artifact: Option<PathBuf>,
    pub content_hash: Option<String>,
    /// `explain` only: whether it would run, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_run: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// Files the stage loaded at run time whose change must invalidate the runner's memo
    /// ([`Runtime::files`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime_files: Vec<PathBuf>,
    /// The artifact came from the remote (pulled, verified and published locally).
    #[serde(default)]
    pub pulled: bool,
}

/// What a stage body gets: where to write, its inputs, and places to report into.
pub struct Ctx {
    /// The staging directory: write every output file under it.
    pub out: PathBuf,
    pub inputs: BTreeMap<String, Artifact>,
    /// Extra environment facts for the manifest (libtorch version, device...).
    pub environment: BTreeMap<String, String>,
    /// Stage figures for the manifest's `summary`.
    pub summary: serde_json::Value,
    /// This artifact's key, and the store it goes to (for state that must outlive a crashed
    /// run, such as training checkpoints under `STORE/.checkpoints/`).
    pub key: String,
    pub store: PathBuf,
}

impl Ctx {
    /// An input by name, or an error saying which inputs were given.
    pub fn input(&self, name: &str) -> anyhow::Result<&Artifact> {
        self.inputs.get(name).with_context(|| {
            format!(
                "missing input `{name}` (pass --input {name}=DIR); given: {:?}",
                self.inputs.keys().collect::<Vec<_>>()
            )
        })
    }
}

/// The artifacts `--input NAME=DIR` names, opened read-only: what a stage reads without taking
/// part in the store's life cycle (a data-parallel rank other than 0 does that).
pub fn parse_inputs(specs: &[String]) -> anyhow::Result<BTreeMap<String, Artifact>> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let Some((name, dir)) = spec.split_once('=') else {
            bail!("--input `{spec}`: expected NAME=DIR, for example --input download=data/download/<key>")
        };
        let art = Artifact::open(Path::new(dir))
            .with_context(|| format!("--input {name}: {dir} is not an artifact directory"))?;
        out.insert(name.to_string(), art);
    }
    Ok(out)
}

/// Flattens a JSON value into dotted paths, for explaining parameter differences.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&p, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Differences between what this invocation would key on and an existing manifest.
fn differences(
    code_version: &str,
    toolchain: &BTreeMap<String, String>,
    params: &serde_json::Value,
    inputs: &BTreeMap<String, String>,
    m: &Manifest,
) -> Vec<String> {
    let mut out = Vec::new();
    if m.code_version != code_version {
        out.push(format!("code version {} -> {}", m.code_version, code_version));
    }
    for (k, v) in toolchain {
        let old = m.environment.get(k);
        if old != Some(v) {
            out.push(format!("dependency {k}: {} -> {v}", old.map(String::as_str).unwrap_or("(absent)")));
        }
    }
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &m.params, &mut a);
    flatten("", params, &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x != y {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(absent)".into());
            out.push(format!("parameter {k}: {} -> {}", show(x), show(y)));
        }
    }
    let names: std::collections::BTreeSet<&String> = m.inputs.keys().chain(inputs.keys()).collect();
    for n in names {
        let old = m.inputs.get(n).map(|i| i.content_hash.as_str());
        let new = inputs.get(n).map(|s| s.as_str());
        if old != new {
            out.push(format!(
                "input {n}: {} -> {}",
                old.map(short).unwrap_or("(absent)"),
                new.map(short).unwrap_or("(absent)")
            ));
        }
    }
    out
}

/// What a stage invocation keys on.
struct Keyed {
    key: String,
    toolchain: BTreeMap<String, String>,
    params: serde_json::Value,
    /// Input name -> content hash (artifacts and extra inputs).
    hashes: BTreeMap<String, String>,
    refs: BTreeMap<String, InputRef>,
}

impl Keyed {
    fn new(def: &StageDef, params: serde_json::Value, inputs: &BTreeMap<String, Artifact>, extra_inputs: BTreeMap<String, String>) -> Keyed {
        let mut refs: BTreeMap<String, InputRef> = inputs
            .iter()
            .map(|(n, a)| (n.clone(), InputRef { content_hash: a.manifest.content_hash.clone(), key: a.manifest.key.clone(), stage: a.manifest.stage.clone() }))
            .collect();
        for (n, h) in extra_inputs {
            refs.insert(n, InputRef { content_hash: h, key: String::new(), stage: crate::manifest::FILE_INPUT.into() });
        }
        let hashes: BTreeMap<String, String> = refs.iter().map(|(n, r)| (n.clone(), r.content_hash.clone())).collect();
        let toolchain = def.toolchain();
        let key = compute_key(def.name, &def.code_version, &toolchain, &params, &hashes);
        Keyed { key, toolchain, params, hashes, refs }
    }
}

impl Report {
    /// Reports `a` as the (cached) artifact.
    fn found(&mut self, a: &Artifact) {
        self.cached = true;
        self.content_hash = Some(a.manifest.content_hash.clone());
        self.artifact = Some(a.path.clone());
    }
}

/// `--mode explain`: whether the stage would run, and what differs from the nearest artifact.
fn explain(def: &StageDef, store: &Store, k: &Keyed, force: bool, report: &mut Report) {
    let dir = store.artifact_dir(def.name, &k.key);
    let valid = Artifact::open(&dir).ok().filter(|a| a.verify().is_ok());
    if let Some(a) = valid.filter(|_| !force) {
        report.found(&a);
        report.would_run = Some(false);
        return;
    }
    report.would_run = Some(true);
    if force {
        report.reasons.push("forced".into());
    }
    let nearest = store
        .list(def.name)
        .into_iter()
        .map(|a| differences(&def.code_version, &k.toolchain, &k.params, &k.hashes, &a.manifest))
        .min_by_key(|d| d.len());
    match nearest {
        Some(d) if d.is_empty() => report.reasons.push("its artifact is missing or failed verification".into()),
        Some(d) => report.reasons.extend(d),
        None => report.reasons.push(format!("no {} artifact in the store yet", def.name)),
    }
}

/// The remote the environment configures ([`crate::remote::Config::from_env`]), opened; one
/// that cannot be opened is a warning (an error when required) and the run goes on locally.
fn open_remote() -> anyhow::Result<Option<Remote>> {
    let Some(config) = crate::remote::Config::from_env()? else { return Ok(None) };
    match Remote::open(&config) {
        Ok(r) => Ok(Some(r)),
        Err(e) => unavailable(&config, e).map(|()| None),
    }
}

/// A remote that could not be reached or refused: an error when it is required, else a warning
/// naming it, and the invocation goes on with the local store only.
fn unavailable(config: &crate::remote::Config, e: anyhow::Error) -> anyhow::Result<()> {
    if config.required {
        return Err(e.context(format!("remote {} is required (--remote-required / FT_REMOTE_REQUIRED)", config.shown())));
    }
    // Every remote error names the remote already.
    eprintln!("warning: {e:#}; going on with the local store only");
    Ok(())
}

/// A remote that failed: dropped for the rest of the invocation ([`unavailable`]).
fn drop_remote(remote: &mut Option<Remote>, e: anyhow::Error) -> anyhow::Result<()> {
    match remote.take() {
        Some(r) => unavailable(&r.config, e),
        None => Err(e),
    }
}

/// [`pull_locked`] under the key's lock, looking locally once more first (another process may
/// have published it meanwhile); the artifact, and whether it came from the remote.
fn pull(remote: &mut Option<Remote>, store: &Store, stage: &str, key: &str) -> anyhow::Result<Option<(Artifact, bool)>> {
    if !remote.as_ref().is_some_and(|r| r.config.mode.pulls()) {
        return Ok(None);
    }
    let lock = store.lock(stage, key)?;
    if let Some(a) = store.lookup_locked(stage, key, &lock)? {
        return Ok(Some((a, false)));
    }
    Ok(pull_locked(remote, store, stage, key, &lock)?.map(|a| (a, true)))
}

/// The artifact pulled from the remote when it has the key and every file verifies. A copy that
/// does not verify is not used: a warning names the file and the stage computes it. A remote
/// that fails is dropped for the rest of the invocation ([`unavailable`]).
fn pull_locked(remote: &mut Option<Remote>, store: &Store, stage: &str, key: &str, lock: &KeyLock) -> anyhow::Result<Option<Artifact>> {
    let Some(r) = remote.as_ref().filter(|r| r.config.mode.pulls()) else { return Ok(None) };
    match r.pull(store, stage, key, lock) {
        Ok(Some(a)) => {
            eprintln!("pulled {stage} {} from {}", short(key), r.config.shown());
            crate::remote::mark_on_remote(store, &r.config, stage, key);
            Ok(Some(a))
        }
        Ok(None) => Ok(None),
        Err(e) if e.downcast_ref::<Corrupt>().is_some() => {
            eprintln!("warning: not using the remote's {stage} {}: {e:#}; computing it here", short(key));
            Ok(None)
        }
        Err(e) => drop_remote(remote, e).map(|()| None),
    }
}

/// Pushes a local artifact when the remote takes pushes and lacks it, then marks it pushed
/// ([`crate::remote::mark_on_remote`]) so the runner's memo can answer for it next time.
fn push(remote: &mut Option<Remote>, store: &Store, art: &Artifact) -> anyhow::Result<()> {
    let Some(r) = remote.as_ref().filter(|r| r.config.mode.pushes()) else { return Ok(()) };
    match r.push(art) {
        Ok(pushed) => {
            if let Pushed::Uploaded { blobs, bytes } = pushed {
                eprintln!("pushed {} {} to {}: {blobs} new files, {}", art.manifest.stage, short(&art.manifest.key), r.config.shown(), indicatif::HumanBytes(bytes));
            }
            crate::remote::mark_on_remote(store, &r.config, &art.manifest.stage, &art.manifest.key);
            Ok(())
        }
        Err(e) => drop_remote(remote, e),
    }
}

/// Runs one stage invocation. `extra_inputs` names content that the key must cover beyond the
/// input artifacts (local source files: name -> blake3). `body` writes the outputs into
/// `ctx.out`; it runs only when the artifact must be computed, under the key's lock.
pub fn execute<P: Serialize>(
    def: &StageDef,
    args: &StageArgs,
    params: &P,
    extra_inputs: BTreeMap<String, String>,
    body: impl FnOnce(&mut Ctx) -> anyhow::Result<()>,
) -> anyhow::Result<Report> {
    let start = Instant::now();
    let params = serde_json::to_value(params).context("serializing parameters")?;
    let inputs = parse_inputs(&args.inputs)?;
    check_lineage(def.name, def.lineage, &inputs)?;
    let k = Keyed::new(def, params, &inputs, extra_inputs);
    let store = Store::open(&args.store)?;
    let mut report = Report { stage: def.name.to_string(), key: k.key.clone(), runtime_files: def.runtime.files.clone(), ..Default::default() };

    let finish = |mut report: Report| -> anyhow::Result<Report> {
        report.seconds = start.elapsed().as_secs_f64();
        let line = serde_json::to_string(&report)?;
        match &args.report {
            Some(p) => std::fs::write(p, line).with_context(|| format!("writing report {}", p.display()))?,
            None => println!("{line}"),
        }
        Ok(report)
    };

    // The remote takes part in runs and lookups, never in explanations.
    let mut remote = if args.mode == Mode::Explain { None } else { open_remote()? };
    match args.mode {
        Mode::Explain => {
            explain(def, &store, &k, args.force, &mut report);
            return finish(report);
        }
        Mode::Lookup => {
            if let Some(a) = store.lookup(def.name, &k.key)? {
                report.found(&a);
                push(&mut remote, &store, &a)?;
            } else if let Some((a, pulled)) = pull(&mut remote, &store, def.name, &k.key)? {
                report.found(&a);
                report.pulled = pulled;
            }
            return finish(report);
        }
        Mode::Run => {}
    }

    if !args.force {
        if let Some(a) = store.lookup(def.name, &k.key)? {
            report.found(&a);
            push(&mut remote, &store, &a)?;
            return finish(report);
        }
    }
    let lock = store.lock(def.name, &k.key)?;
    if !args.force {
        // Another process may have published it while we waited for the lock.
        if let Some(a) = store.lookup_locked(def.name, &k.key, &lock)? {
            report.found(&a);
            return finish(report);
        }
        if let Some(a) = pull_locked(&mut remote, &store, def.name, &k.key, &lock)? {
            report.found(&a);
            report.pulled = true;
            return finish(report);
        }
    }
    for (name, a) in &inputs {
        a.verify().with_context(|| format!("input {name} failed verification; rerun its stage"))?;
    }
    let staging = store.stage_dir(def.name)?;
    let mut environment = BTreeMap::new();
    environment.insert(format!("ft-{}", def.name), def.tool_version.to_string());
    environment.insert("os".into(), format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH));
    environment.extend(k.toolchain.clone());
    let mut ctx = Ctx { out: staging.dir.clone(), inputs, environment, summary: serde_json::Value::Null, key: k.key.clone(), store: store.root.clone() };
    let work = Instant::now();
    body(&mut ctx)?;
    let manifest = Manifest {
        wall_seconds: work.elapsed().as_secs_f64(),
        environment: ctx.environment,
        summary: ctx.summary,
        ..Manifest::new(def.name, &k.key, &def.code_version, k.params, k.refs)
    };
    let art = store.publish(staging, manifest)?;
    drop(lock);
    push(&mut remote, &store, &art)?;
    report.content_hash = Some(art.manifest.content_hash.clone());
    report.artifact = Some(art.path.clone());
    finish(report)
}

/// A stage's [`StageDef`], from the calling crate's `FT_CODE_HASH` and `FT_DEPS` (set by its
/// build script through `build_support::code_version`) and version:
/// `stage_def!("train", SCHEMA_VERSION)`.
#[macro_export]
macro_rules! stage_def {
    ($name:expr, $schema:expr) => {
        $crate::StageDef {
            dependencies: $crate::parse_dependencies(env!("FT_DEPS")),
            ..$crate::StageDef::new($name, format!("{}-{}", $schema, env!("FT_CODE_HASH")), env!("CARGO_PKG_VERSION"))
        }
    };
}

/// Ends a stage binary: on error prints `error: ...` (with its causes) and exits 1; in lookup
/// mode exits [`EXIT_NOT_CACHED`] when the artifact is absent; else exits 0.
pub fn exit(args: &StageArgs, result: anyhow::Result<Report>) -> ! {
    match result {
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1)
        }
        Ok(r) if args.mode == Mode::Lookup && r.artifact.is_none() => std::process::exit(EXIT_NOT_CACHED),
        Ok(_) => std::process::exit(0),
    }
}
