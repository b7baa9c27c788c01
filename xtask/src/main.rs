//! `cargo xtask`: the project's commands. It stays light (no tch, no polars): stage work happens
//! in the `ft-<stage>` binaries, which this builds and runs.

mod bench;
mod runs;
mod setup;
mod sweep;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use pipeline::Stage;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Fine-tuning pipelines: run, runs, test, bench, setup, doctor, gc, verify")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where a run's remote store is and how it is used (flag > environment > pipeline file).
#[derive(clap::Args)]
struct RemoteArgs {
    /// The remote store's URL (s3://bucket/prefix, gs://, az://, file:///path); default:
    /// FT_REMOTE, else the pipeline's `store_remote`.
    #[arg(long, value_name = "URL")]
    remote: Option<String>,
    /// Use no remote store, whatever FT_REMOTE or the pipeline say.
    #[arg(long, conflicts_with = "remote")]
    no_remote: bool,
    /// pull-push (default): pull what is missing, push what was made; pull: never write to it
    /// (pull requests' CI); push: never read from it. Default: FT_REMOTE_MODE, else pull-push.
    #[arg(long, value_enum)]
    remote_mode: Option<artifact::remote::RemoteMode>,
    /// Fail when the remote cannot be reached (default: warn and go on locally).
    #[arg(long)]
    remote_required: bool,
}

/// What `cargo xtask push` and `pull` move, and between which stores.
#[derive(clap::Args)]
struct TransferArgs {
    pipeline: PathBuf,
    /// push: only these stages' artifacts; pull: up to the last of them, with the stages before
    /// it (their artifacts are its inputs). Repeatable; default: every stage.
    #[arg(long, value_parser = parse_stage)]
    stage: Vec<Stage>,
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    #[arg(long)]
    store: Option<PathBuf>,
    /// The remote (default: FT_REMOTE, else the pipeline's `store_remote`).
    #[arg(long, value_name = "URL")]
    remote: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline: each stage reuses its artifact when nothing it depends on changed.
    Run {
        pipeline: PathBuf,
        /// Run only this stage (the stages before it must be cached).
        #[arg(long, value_parser = parse_stage)]
        only: Option<Stage>,
        /// Rerun this stage and all after it (the stages before it must be cached).
        #[arg(long, value_parser = parse_stage)]
        from: Option<Stage>,
        /// Rerun this stage even if cached (repeatable).
        #[arg(long, value_parser = parse_stage)]
        force: Vec<Stage>,
        /// Resolve Hub branches (e.g. `main`) again; later stages rerun only if bytes changed.
        #[arg(long)]
        refresh: bool,
        /// Run nothing: say per stage whether it would run and what changed.
        #[arg(long)]
        explain: bool,
        /// One JSON object per stage on stdout.
        #[arg(long)]
        json: bool,
        /// Use prebuilt stage binaries from this folder instead of building them.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Use this artifact store instead of the pipeline's.
        #[arg(long)]
        store: Option<PathBuf>,
        /// Set a key of the pipeline, checked as the file is: `--set train.learning_rate=3e-5`
        /// (repeatable; the value is YAML).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = pipeline::Setting::parse)]
        set: Vec<pipeline::Setting>,
        /// Sweep a key over values: `--grid train.learning_rate=1e-5,3e-5` (repeatable; every
        /// combination runs, with the file's `sweep:` section, and a table ends the run).
        #[arg(long, value_name = "KEY=V1,V2,...", value_parser = pipeline::Axis::parse)]
        grid: Vec<pipeline::Axis>,
        /// Stop a sweep at its first failing combination (default: record it and go on).
        #[arg(long)]
        fail_fast: bool,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Train data-parallel with N ranks on this machine, as `torchrun --nproc-per-node N`
        /// (one per GPU on CUDA; on CPU they share the cores). The artifact's key does not
        /// depend on N: a run with another N finds it cached.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        nproc_per_node: u16,
    },
    /// Upload a pipeline's artifacts (those in the local store for its current parameters) to
    /// the remote store; computes nothing.
    Push(TransferArgs),
    /// Download a pipeline's artifacts from the remote store into the local one, each verified
    /// file by file; computes nothing.
    Pull(TransferArgs),
    /// Run the test suite (sets up libtorch first when needed).
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Label new texts with a trained model: `cargo xtask predict MODEL INPUT --out FILE`
    /// (MODEL: an export directory, a train or export artifact key, or a Hugging Face model
    /// directory; `--help` lists the options of ft-predict).
    Predict {
        /// ft-predict's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Our stages and the Python reference side by side on the same data: one table of figures
    /// and ratios (median over repeats), also written as JSON.
    Bench(bench::Args),
    /// Create the project venv (.venv) with torch==2.11.0 for tch, unless LIBTORCH is set.
    Setup,
    /// Print the libtorch in use and whether CUDA and cuDNN work.
    Doctor,
    /// Every train artifact of a store with the evaluations made from it: pipeline, date, the
    /// parameters that differ between the rows, validation and evaluate metrics, wall time,
    /// device, keys.
    Runs {
        /// List only the runs of these pipelines (and of their sweeps' combinations): train
        /// artifacts whose parameters, and their download's and tokenize's, are the pipeline's
        /// (whatever code version made them).
        pipelines: Vec<PathBuf>,
        /// The store (default: the first pipeline's, else `data`).
        #[arg(long)]
        store: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// The parameter, input and metric differences of two runs (train keys or unique
        /// prefixes).
        #[arg(long, num_args = 2, value_names = ["KEY1", "KEY2"])]
        compare: Option<Vec<String>>,
    },
    /// Re-hash every artifact in a store and report the bad ones.
    Verify {
        #[arg(long, default_value = "data")]
        store: PathBuf,
    },
    /// Remove what no pipeline references: artifacts, replaced versions, checkpoints, memo and
    /// lock entries, leftovers of dead runs (never what a running stage holds).
    Gc {
        /// Pipelines whose artifacts to keep (default: every file in pipelines/).
        pipelines: Vec<PathBuf>,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        store: Option<PathBuf>,
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    Stage::parse(s).ok_or_else(|| {
        format!("unknown stage `{s}`, expected one of {}", Stage::ALL.map(|s| s.name()).join(", "))
    })
}

/// The workspace root: the nearest folder above the current one that holds `xtask/Cargo.toml`
/// (cargo runs aliases from where the user is), else the one this binary was built from. Not the
/// build-time path first: a target folder shared by two checkouts holds one `xtask` binary.
fn root() -> PathBuf {
    let here = std::env::current_dir().ok();
    let found = here.as_deref().and_then(|d| d.ancestors().find(|a| a.join("xtask/Cargo.toml").is_file() && a.join("Cargo.toml").is_file()));
    match found {
        Some(d) => d.to_path_buf(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default(),
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// Builds the binaries of these stages (release profile, like tests) and returns their folder.
fn build_stages(stages: &[Stage]) -> anyhow::Result<PathBuf> {
    let needs_torch = stages.iter().any(|s| matches!(s, Stage::Train | Stage::Evaluate | Stage::Export));
    if needs_torch {
        setup::ensure()?;
    }
    let t = Instant::now();
    let mut args = vec![];
    for s in stages {
        args.extend(["-p", s.package(), "--bin", s.binary()]);
    }
    cargo_build(&args)?;
    eprintln!("built {} stage binaries in {:.1} s", stages.len(), t.elapsed().as_secs_f64());
    Ok(target_dir().join("release"))
}

/// `cargo build --release --quiet ARGS` in the workspace.
fn cargo_build(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new(cargo())
        .current_dir(root())
        .args(["build", "--release", "--quiet"])
        .args(args)
        .status()
        .context("running cargo build")?;
    if !st.success() {
        bail!("cargo build {} failed (see cargo's output above)", args.join(" "));
    }
    Ok(())
}

fn main() {
    if let Err(e) = real_main() {
        if let Some(f) = e.downcast_ref::<runner::StageFailed>() {
            eprintln!("error: {f}");
            std::process::exit(if f.code > 0 { f.code } else { 1 });
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run { pipeline, only, from, force, refresh, explain, json, bin_dir, store, set, grid, fail_fast, remote, nproc_per_node } => {
            let s = pipeline::load_sweep(&pipeline, &set, &grid)?;
            if only.is_some() && from.is_some() {
                bail!("--only and --from cannot be combined");
            }
            let p = &s.base;
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => build_stages(&runner::binaries_needed(p))?,
            };
            let remote = runner::remote_config(p, remote.remote.as_deref(), remote.no_remote, remote.remote_mode, remote.remote_required)?;
            let nproc_per_node = usize::from(nproc_per_node);
            let opts = runner::RunOptions { only, from, force, refresh, explain, bin_dir, store, remote, nproc_per_node, ..Default::default() };
            let t = Instant::now();
            if s.combinations.is_empty() {
                runner::run(p, &opts, |o| {
                    if json {
                        println!("{}", serde_json::to_string(o).unwrap_or_default());
                    } else {
                        print_outcome(o, explain);
                    }
                })?;
            } else {
                sweep::run(&s, &opts, json, fail_fast, |o| print_outcome(o, explain))?;
            }
            eprintln!("pipeline `{}`: {:.2} s", p.name, t.elapsed().as_secs_f64());
            Ok(())
        }
        Cmd::Push(t) => transfer(t, artifact::remote::RemoteMode::Push),
        Cmd::Pull(t) => transfer(t, artifact::remote::RemoteMode::Pull),
        Cmd::Test { args } => {
            setup::ensure()?;
            // The end-to-end tests run the stage binaries, which `cargo test` does not build.
            let st = Command::new(cargo())
                .current_dir(root())
                .args(["build", "--release", "--workspace", "--bins"])
                .status()
                .context("running cargo build")?;
            if !st.success() {
                std::process::exit(st.code().unwrap_or(1));
            }
            let st = Command::new(cargo())
                .current_dir(root())
                .args(["test", "--release", "--workspace"])
                .args(&args)
                .status()
                .context("running cargo test")?;
            if !st.success() {
                std::process::exit(st.code().unwrap_or(1));
            }
            Ok(())
        }
        Cmd::Predict { args } => {
            setup::ensure()?;
            cargo_build(&["-p", "predict", "--bin", "ft-predict"])?;
            let st = Command::new(target_dir().join("release/ft-predict")).args(&args).status().context("running ft-predict")?;
            if !st.success() {
                std::process::exit(st.code().unwrap_or(1));
            }
            Ok(())
        }
        Cmd::Bench(a) => bench::bench(a),
        Cmd::Setup => setup::setup(),
        Cmd::Doctor => {
            setup::ensure()?;
            let st = Command::new(cargo())
                .current_dir(root())
                .args(["run", "--release", "--quiet", "-p", "train", "--bin", "ft-doctor"])
                .status()
                .context("running ft-doctor")?;
            if !st.success() {
                bail!("ft-doctor failed");
            }
            Ok(())
        }
        Cmd::Runs { pipelines, store, json, compare } => {
            let parsed: Vec<pipeline::Pipeline> = pipelines.iter().map(|f| sweep::expand(f)).collect::<anyhow::Result<Vec<_>>>()?.into_iter().flatten().collect();
            let store = store.or_else(|| parsed.first().map(|p| p.store.clone())).unwrap_or_else(|| PathBuf::from("data"));
            runs::runs(&store, (!pipelines.is_empty()).then_some(parsed.as_slice()), compare.as_deref(), json)
        }
        Cmd::Verify { store } => {
            let s = artifact::Store::open(&store)?;
            let mut bad = 0;
            let all = s.all_dirs();
            for (stage, key, dir) in &all {
                match artifact::Artifact::open(dir).map_err(|e| e.to_string()).and_then(|a| a.verify().map_err(|e| e.to_string())) {
                    Ok(()) => println!("ok   {stage:<9} {}", artifact::short(key)),
                    Err(e) => {
                        bad += 1;
                        println!("BAD  {stage:<9} {}: {e}", artifact::short(key));
                    }
                }
            }
            println!("{} artifacts, {bad} bad", all.len());
            if bad > 0 {
                bail!("{bad} artifacts failed verification; `cargo xtask gc` or a rerun replaces them");
            }
            Ok(())
        }
        Cmd::Gc { pipelines, dry_run, store, bin_dir } => {
            let files = if pipelines.is_empty() {
                let dir = root().join("pipelines");
                let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .with_context(|| format!("reading {}", dir.display()))?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                    .collect();
                v.sort();
                v
            } else {
                pipelines
            };
            // A file with a sweep references every combination's artifacts.
            let parsed: Vec<pipeline::Pipeline> = files.iter().map(|f| sweep::expand(f)).collect::<anyhow::Result<Vec<_>>>()?.into_iter().flatten().collect();
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => {
                    let stages: BTreeSet<Stage> = parsed.iter().flat_map(runner::binaries_needed).collect();
                    build_stages(&stages.into_iter().collect::<Vec<_>>())?
                }
            };
            let opts = runner::RunOptions { bin_dir, store, ..Default::default() };
            let verb = if dry_run { "would remove" } else { "removed" };
            for r in runner::gc(&parsed, &opts, dry_run)? {
                let mut total = 0;
                for g in &r.reclaimed {
                    total += g.bytes;
                    println!("{verb} {:<12} {:>10}  {}", g.kind, human_bytes(g.bytes), g.path.display());
                }
                println!("{}: kept {} keys, {verb} {} entries ({})", r.store.display(), r.kept, r.reclaimed.len(), human_bytes(total));
            }
            Ok(())
        }
    }
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// `cargo xtask push` / `pull`: every stage looked up (locally, then on the remote for a pull),
/// the remote required, and `stages` (all when empty) moved one way.
fn transfer(t: TransferArgs, mode: artifact::remote::RemoteMode) -> anyhow::Result<()> {
    let TransferArgs { pipeline, stage: stages, bin_dir, store, remote } = t;
    let p = pipeline::load(&pipeline)?;
    let Some(remote) = runner::remote_config(&p, remote.as_deref(), false, Some(mode), true)? else {
        bail!("no remote store: pass --remote URL, set FT_REMOTE, or give the pipeline `store_remote: URL`");
    };
    for s in &stages {
        if p.section(*s).is_none() {
            bail!("--stage {s}: pipeline `{}` has no such stage", p.name);
        }
    }
    let bin_dir = match bin_dir {
        Some(d) => d,
        None => build_stages(&runner::binaries_needed(&p))?,
    };
    let shown = remote.shown();
    let only = stages.iter().max().copied();
    // A pull brings the stages before the last one asked for too: their artifacts are the
    // inputs its key is made from. A push moves only the stages asked for.
    let remote_stages = if mode.pulls() { Vec::new() } else { stages.to_vec() };
    let opts = runner::RunOptions { only, bin_dir, store, remote: Some(remote), remote_stages, lookup_only: true, ..Default::default() };
    runner::run(&p, &opts, |o| print_outcome(o, false))?;
    eprintln!("pipeline `{}`: {} {shown} done", p.name, if mode == artifact::remote::RemoteMode::Push { "push to" } else { "pull from" });
    Ok(())
}

fn print_outcome(o: &runner::StageOutcome, explain: bool) {
    let path = o.artifact.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    if explain {
        let verdict = match o.would_run {
            Some(true) => "would run",
            Some(false) => "cached",
            None => "depends",
        };
        println!("{:<9} {:<9} {:<8} {}", o.stage, verdict, artifact::short(&o.key), path);
        for r in &o.reasons {
            println!("            - {r}");
        }
    } else {
        let verdict = if o.pulled {
            "pulled"
        } else if o.cached {
            "cached"
        } else {
            "ran"
        };
        println!("{:<9} {:<6} {:<8} {:>8.2} s  {}", o.stage, verdict, artifact::short(&o.key), o.seconds, path);
    }
}
