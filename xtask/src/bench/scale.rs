//! The bench's scale section: the pipeline on synthetic datasets of growing size (IMDB's train
//! split repeated with a copy-number prefix, `bench/scale_data.py`), each stage run on its own
//! with its wall seconds, rows/s and peak RSS, so that memory that grows with the rows or
//! throughput that falls with them shows in one table.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};
use pipeline::Stage;
use serde_json::{json, Value};

use super::{json_of, python, write_pipeline, Args, Data, Plan, Row, Runs};

/// What one stage took at one size.
struct Measured {
    seconds: f64,
    /// Peak resident memory of the stage process: all of it, and the anonymous part alone (what
    /// the process allocated, without the pages of files it maps: the shards' and libraries').
    peak_rss_mib: f64,
    peak_anon_mib: f64,
}

/// Runs `cargo xtask run PIPELINE --only STAGE --force STAGE` as a child and measures it: the
/// stage's seconds as the runner reports them; the peak RSS of the child and the stage process
/// it waits for (`wait4`'s `ru_maxrss` covers the reaped descendants); and the peak anonymous
/// RSS of the stage process, sampled from /proc every 50 ms.
fn measure(pipeline: &Path, stage: Stage, bins: &Path, store: &Path, log: &Path) -> anyhow::Result<Measured> {
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let out_path = log.with_extension("json");
    let out = std::fs::File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
    let child = Command::new(std::env::current_exe()?)
        .arg("run")
        .arg(pipeline)
        .args(["--only", stage.name(), "--force", stage.name(), "--json", "--bin-dir"])
        .arg(bins)
        .arg("--store")
        .arg(store)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .context("starting cargo xtask run")?;
    let mut anon_kib = 0;
    let (status, maxrss_kib) = loop {
        if let Some(done) = try_wait_with_rusage(child.id())? {
            break done;
        }
        anon_kib = anon_kib.max(descendants(child.id()).iter().map(|&pid| anon_rss_kib(pid)).sum());
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    if status != 0 {
        bail!("the {stage} stage of {} failed (exit status {status}); see {}", pipeline.display(), log.display());
    }
    let text = std::fs::read_to_string(&out_path)?;
    let line: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["stage"] == stage.name())
        .with_context(|| format!("no outcome of the {stage} stage in {}", out_path.display()))?;
    let seconds = line["seconds"].as_f64().context("the stage outcome has no seconds")?;
    Ok(Measured { seconds, peak_rss_mib: maxrss_kib as f64 / 1024.0, peak_anon_mib: anon_kib as f64 / 1024.0 })
}

/// The child `pid`'s exit status and the peak resident set (KiB) of it and its reaped
/// descendants, once it has exited; None while it runs.
fn try_wait_with_rusage(pid: u32) -> anyhow::Result<Option<(i32, i64)>> {
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill; pid is our own child, not yet
    // reaped (its `Child` handle is never waited on).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, libc::WNOHANG, &mut usage) };
    if r < 0 {
        bail!("waiting for the stage run: {}", std::io::Error::last_os_error());
    }
    if r == 0 {
        return Ok(None);
    }
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    Ok(Some((code, usage.ru_maxrss)))
}

/// The processes below `root` (children, their children, ...), from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // `pid (comm) state ppid ...`: the fields after the last `)`.
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Some(ppid) = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok()) else { continue };
        parent_of.push((pid, ppid));
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent_of.iter().filter(|&&(_, pp)| pp == p).map(|&(c, _)| c));
        i += 1;
    }
    out
}

/// A process's anonymous resident memory (KiB), or 0 when it is gone.
fn anon_rss_kib(pid: u32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("RssAnon:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

/// The synthetic train split of `rows` rows, made once per size under `dir`.
fn dataset(source_train: &Path, dir: &Path, rows: usize, logs: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("train-{rows}.parquet"));
    if !path.exists() {
        std::fs::create_dir_all(dir)?;
        let made = json_of(
            Command::new(python()).arg(crate::root().join("bench/scale_data.py")).arg(source_train).arg(&path).arg(rows.to_string()),
            &logs.join(format!("scale-data-{rows}.log")),
        )?;
        eprintln!("   made {}: {made}", path.display());
    }
    Ok(path)
}

/// The stages measured, and the rows each one's rows/s counts: download reads every source row,
/// tokenize encodes every split (train, the carved validation and the test subset), train's
/// figure is its memory (a few steps), evaluate's the test subset.
const STAGES: [Stage; 4] = [Stage::Download, Stage::Tokenize, Stage::Train, Stage::Evaluate];

/// The scale rows of the bench table (see the module docs); `whole` is the IMDB download
/// artifact (its train split is repeated, its test split is the test source).
pub fn rows(a: &Args, plan: &Plan, bins: &Path, whole: &Path, logs: &Path) -> anyhow::Result<Vec<Row>> {
    let sizes = &a.scale_rows;
    if sizes.is_empty() {
        bail!("--scale-rows: give at least one size");
    }
    let dir = plan.out.join("scale");
    let mut measured: Vec<(usize, Vec<Measured>)> = Vec::new();
    for &n in sizes {
        eprintln!("== scale: {n} rows");
        let train = dataset(&whole.join("dataset/train.parquet"), &dir, n, logs)?;
        let name = format!("bench-scale-{n}");
        write_pipeline(a, plan, &name, Data::Scale { train: &train, test: &whole.join("dataset/test.parquet") })?;
        let yaml = plan.out.join(format!("{name}.yaml"));
        let mut per_stage = Vec::new();
        for stage in STAGES {
            let m = measure(&yaml, stage, bins, &plan.out.join("store"), &logs.join(format!("scale-{n}-{stage}.log")))?;
            eprintln!("   {stage}: {:.1} s, peak RSS {:.0} MiB ({:.0} MiB anonymous)", m.seconds, m.peak_rss_mib, m.peak_anon_mib);
            per_stage.push(m);
        }
        measured.push((n, per_stage));
    }
    let (base_n, base) = &measured[0];
    let mut out = Vec::new();
    for (n, per_stage) in &measured {
        for (i, stage) in STAGES.iter().enumerate() {
            let (m, b) = (&per_stage[i], &base[i]);
            let vs = |what: &str| if n == base_n { "—".to_string() } else { format!("{what} at {base_n} rows") };
            if matches!(stage, Stage::Download | Stage::Tokenize) {
                out.push(Row {
                    section: "scale",
                    figure: format!("{stage}: rows/s at {n} rows"),
                    unit: "rows/s",
                    ours: Runs(vec![*n as f64 / m.seconds.max(1e-9)]),
                    reference_name: vs("ours"),
                    reference: Runs(if n == base_n { vec![] } else { vec![*base_n as f64 / b.seconds.max(1e-9)] }),
                    higher_is_better: true,
                    target: "≥ 0.85x".into(),
                });
            }
            // The targets: download and tokenize all of their memory; train and evaluate
            // what they allocate (the shards' mapped pages, which the kernel maps a large page
            // cache folio at a time, are not theirs to bound).
            let (figure, ours, reference, target) = match stage {
                Stage::Download | Stage::Tokenize => ("peak RSS MiB", m.peak_rss_mib, b.peak_rss_mib, "≤ 1024 MiB".to_string()),
                _ => ("peak anonymous RSS MiB", m.peak_anon_mib, b.peak_anon_mib, format!("≤ {:.0} MiB ({base_n} rows + 200)", b.peak_anon_mib + 200.0)),
            };
            out.push(Row {
                section: "scale",
                figure: format!("{stage}: {figure} at {n} rows ({:.0} s; all RSS {:.0} MiB)", m.seconds, m.peak_rss_mib),
                unit: "MiB",
                ours: Runs(vec![ours]),
                reference_name: vs("ours"),
                reference: Runs(if n == base_n { vec![] } else { vec![reference] }),
                higher_is_better: false,
                target,
            });
        }
    }
    let summary: Vec<Value> = measured
        .iter()
        .map(|(n, ms)| json!({"rows": n, "stages": STAGES.iter().zip(ms).map(|(s, m)| json!({"stage": s.name(), "seconds": m.seconds, "peak_rss_mib": m.peak_rss_mib, "peak_anon_rss_mib": m.peak_anon_mib})).collect::<Vec<_>>()}))
        .collect();
    std::fs::write(plan.out.join("scale.json"), serde_json::to_vec_pretty(&summary)?)?;
    Ok(out)
}
