//! The bench's remote section: a pipeline computed into an empty store, pushed to an
//! S3-compatible server on 127.0.0.1 (moto's, from the project venv), and pulled into another
//! empty store, as a fresh CI runner would: seconds to compute against seconds to pull, and the
//! bytes moved. Each side runs `repeats` times (every pull into a store emptied first).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::{python, Plan, Row, Runs};

/// moto's server, killed on drop.
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts moto on a free port, makes bucket `bench` and points the `AWS_*` variables (which the
/// stage binaries inherit) at it.
fn start(logs: &Path) -> anyhow::Result<Moto> {
    let server = crate::root().join(".venv/bin/moto_server");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = std::fs::File::create(logs.join("moto.log"))?;
    let child = Command::new(&server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} (run `cargo xtask setup`)", server.display()))?;
    let moto = Moto(child);
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("moto_server did not listen on port {port} in 30 s; see {}", logs.join("moto.log").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    for (k, v) in [("AWS_ENDPOINT_URL", endpoint.as_str()), ("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"), ("AWS_REGION", "us-east-1"), ("AWS_ALLOW_HTTP", "true")] {
        std::env::set_var(k, v);
    }
    let st = Command::new(python())
        .args(["-c", "import boto3, os; boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL']).create_bucket(Bucket='bench')"])
        .status()?;
    if !st.success() {
        bail!("creating the bench bucket on moto failed");
    }
    Ok(moto)
}

fn bytes_of(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten().map(|e| e.path()).map(|p| if p.is_dir() { bytes_of(&p) } else { std::fs::metadata(&p).map_or(0, |m| m.len()) }).sum()
}

/// The section's rows for the smoke pipeline and `imdb-minilm-cpu` (against the bench's Hub).
pub(super) fn rows(plan: &Plan, bins: &Path, logs: &Path) -> anyhow::Result<Vec<Row>> {
    eprintln!("== remote: compute into an empty store, push to S3 (moto on 127.0.0.1), pull into an empty store ({} runs)", plan.repeats);
    let _moto = start(logs)?;
    let mut rows = Vec::new();
    for file in ["smoke.yaml", "imdb-minilm-cpu.yaml"] {
        let path = crate::root().join("pipelines").join(file);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let fixtures = crate::root().join("tests/fixtures");
        let p = pipeline::parse(&path, &text.replace("tests/fixtures", &fixtures.display().to_string()))?;
        let (mut compute, mut push, mut pull, mut bytes) = (Runs::default(), Runs::default(), Runs::default(), 0.0);
        for r in 0..plan.repeats {
            let url = format!("s3://bench/{}-{}-{r}", p.name, std::process::id());
            let remote = artifact::remote::Config { url, mode: artifact::remote::RemoteMode::PullPush, required: true };
            let dir = plan.out.join("remote").join(&p.name);
            let _ = std::fs::remove_dir_all(&dir);
            let base = runner::RunOptions { bin_dir: bins.to_path_buf(), ..Default::default() };
            let run = |store: &str, opts: runner::RunOptions| -> anyhow::Result<(f64, Vec<runner::StageOutcome>)> {
                let t = Instant::now();
                let o = runner::run(&p, &runner::RunOptions { store: Some(dir.join(store)), ..opts }, |o| eprintln!("  {} {} {:.1} s", o.stage, if o.pulled { "pulled" } else if o.cached { "cached" } else { "ran" }, o.seconds))?;
                Ok((t.elapsed().as_secs_f64(), o))
            };
            compute.0.push(run("computed", base.clone())?.0);
            push.0.push(run("computed", runner::RunOptions { remote: Some(remote.clone()), lookup_only: true, ..base.clone() })?.0);
            let (secs, o) = run("pulled", runner::RunOptions { remote: Some(remote), lookup_only: true, ..base.clone() })?;
            if !o.iter().all(|o| o.pulled) {
                bail!("pulling {} into an empty store did not pull every stage", p.name);
            }
            pull.0.push(secs);
            bytes = bytes_of(&dir.join("pulled").join(".versions")) as f64 / f64::from(1 << 20);
        }
        let section = "remote";
        let figure = |what: &str| format!("`pipelines/{file}`: {what} ({bytes:.1} MiB of artifacts)");
        rows.push(Row {
            section,
            figure: figure("seconds to fill an empty store, pulled from S3 vs computed"),
            unit: "s",
            ours: pull,
            reference_name: "computing every stage".into(),
            reference: compute.clone(),
            higher_is_better: false,
            target: String::new(),
        });
        rows.push(Row {
            section,
            figure: figure("seconds to push a computed run to S3"),
            unit: "s",
            ours: push,
            reference_name: "computing every stage".into(),
            reference: compute,
            higher_is_better: false,
            target: String::new(),
        });
    }
    Ok(rows)
}
