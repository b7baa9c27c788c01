//! The remote store: the runner and the test stage against a `file://` remote (every case, fast),
//! and the smoke pipeline against a real S3-compatible server (moto's, from the project venv).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use artifact::remote::{Config, RemoteMode};
use pipeline::Stage;

use crate::runner_cache::{ran, World};

fn file_remote(dir: &Path, mode: RemoteMode, required: bool) -> Config {
    Config { url: format!("file://{}", dir.display()), mode, required }
}

fn pulled(out: &[runner::StageOutcome]) -> Vec<&str> {
    out.iter().filter(|o| o.pulled).map(|o| o.stage.as_str()).collect()
}

/// Every file of every artifact of a run (its blake3), by stage and relative path.
fn contents(out: &[runner::StageOutcome]) -> Vec<(String, String, String)> {
    files_of(out.iter().map(|o| (o.stage.clone(), o.artifact.clone().unwrap())))
}

/// Every file of the artifacts (stage, directory) and its blake3, by stage and relative path.
fn files_of(arts: impl Iterator<Item = (String, PathBuf)>) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for (stage, path) in arts {
        let dir = std::fs::canonicalize(path).unwrap();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    v.push((stage.clone(), p.strip_prefix(&dir).unwrap().display().to_string(), artifact::hash_file(&p).unwrap().1));
                }
            }
        }
    }
    v.sort();
    v
}

/// A world whose stages log each real run to `log`.
fn logged_world() -> World {
    let w = World::new();
    w.control(&format!("FAKE_LOG={}\n", w.dir.path().join("log").display()));
    w
}

#[test]
fn a_fresh_store_pulls_every_stage_byte_identical_and_computes_none() {
    let remote_dir = tempfile::tempdir().unwrap();
    let remote = file_remote(remote_dir.path(), RemoteMode::PullPush, false);
    let a = logged_world();
    let first = a.run_with(&runner::RunOptions { remote: Some(remote.clone()), ..a.opts() }).unwrap();
    assert_eq!(ran(&first).len(), 5);
    for s in Stage::ALL {
        let o = first.iter().find(|o| o.stage == s.name()).unwrap();
        assert!(remote_dir.path().join(s.name()).join(&o.key).join("manifest.json").exists(), "{s} was not pushed");
    }
    let b = logged_world();
    let second = b.run_with(&runner::RunOptions { remote: Some(remote.clone()), ..b.opts() }).unwrap();
    assert_eq!(pulled(&second), ["download", "tokenize", "train", "evaluate", "export"]);
    assert!(b.runs_logged().is_empty(), "computed {:?}", b.runs_logged());
    assert!(second.iter().all(|o| o.cached));
    assert_eq!(contents(&first), contents(&second), "the pulled artifacts differ from the pushed ones");
    // The next run answers from the local store: nothing pulled, no binary started.
    let calls = b.dir.path().join("calls");
    std::fs::write(b.dir.path().join("fake.env"), format!("FAKE_CALLS={}\n", calls.display())).unwrap();
    let third = b.run_with(&runner::RunOptions { remote: Some(remote), ..b.opts() }).unwrap();
    assert!(pulled(&third).is_empty() && ran(&third).is_empty());
    assert!(!calls.exists(), "a no-change rerun with a remote started {:?}", std::fs::read_to_string(&calls));
}

#[test]
fn a_corrupted_remote_file_is_not_used_and_its_stage_runs_here() {
    let remote_dir = tempfile::tempdir().unwrap();
    let remote = file_remote(remote_dir.path(), RemoteMode::PullPush, false);
    let a = World::new();
    let first = a.run_with(&runner::RunOptions { remote: Some(remote.clone()), ..a.opts() }).unwrap();
    // Corrupt the blob of train's output.
    let train = artifact::Artifact::open(first[2].artifact.as_ref().unwrap()).unwrap();
    let f = train.manifest.files.iter().find(|f| f.path == "out.txt").unwrap();
    let blob = remote_dir.path().join("blobs").join(&f.blake3);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&blob, bytes).unwrap();
    let b = logged_world();
    let second = b.run_with(&runner::RunOptions { remote: Some(remote), ..b.opts() }).unwrap();
    assert_eq!(ran(&second), ["train"]);
    assert_eq!(b.runs_logged(), ["train"]);
    // The stage made the same bytes here, so what follows it came from the remote.
    assert_eq!(pulled(&second), ["download", "tokenize", "evaluate", "export"]);
    assert!(artifact::Artifact::open(second[2].artifact.as_ref().unwrap()).unwrap().verify().is_ok());
}

#[test]
fn a_push_cut_before_its_manifest_is_neither_used_nor_in_the_way() {
    let remote_dir = tempfile::tempdir().unwrap();
    let remote = file_remote(remote_dir.path(), RemoteMode::PullPush, false);
    let a = World::new();
    let first = a.run_with(&runner::RunOptions { remote: Some(remote.clone()), ..a.opts() }).unwrap();
    // What a push killed after its files leaves: the blobs, no manifest.
    let manifest = remote_dir.path().join("evaluate").join(&first[3].key).join("manifest.json");
    std::fs::remove_file(&manifest).unwrap();
    let b = logged_world();
    let second = b.run_with(&runner::RunOptions { remote: Some(remote), ..b.opts() }).unwrap();
    assert_eq!(b.runs_logged(), ["evaluate"]);
    assert_eq!(pulled(&second), ["download", "tokenize", "train", "export"]);
    assert!(manifest.exists(), "the stage that ran here was not pushed again");
}

#[test]
fn pull_mode_never_writes_and_push_mode_never_reads() {
    let remote_dir = tempfile::tempdir().unwrap();
    let a = logged_world();
    a.run_with(&runner::RunOptions { remote: Some(file_remote(remote_dir.path(), RemoteMode::Pull, false)), ..a.opts() }).unwrap();
    assert!(!remote_dir.path().join("train").exists(), "a pull-mode run pushed");
    a.run_with(&runner::RunOptions { remote: Some(file_remote(remote_dir.path(), RemoteMode::Push, false)), ..a.opts() }).unwrap();
    assert!(remote_dir.path().join("train").exists(), "a push-mode run of cached stages pushed nothing");
    let b = logged_world();
    let out = b.run_with(&runner::RunOptions { remote: Some(file_remote(remote_dir.path(), RemoteMode::Push, false)), ..b.opts() }).unwrap();
    assert!(pulled(&out).is_empty() && b.runs_logged().len() == 5, "a push-mode run pulled");
}

#[test]
fn lookup_only_pulls_or_names_the_missing_stage() {
    let remote_dir = tempfile::tempdir().unwrap();
    let a = World::new();
    let b = World::new();
    let lookup = |w: &World, remote: Config| w.run_with(&runner::RunOptions { remote: Some(remote), lookup_only: true, ..w.opts() });
    let e = lookup(&b, file_remote(remote_dir.path(), RemoteMode::Pull, true)).unwrap_err();
    assert!(format!("{e:#}").contains("stage `download`") && format!("{e:#}").contains("nor on the remote"), "{e:#}");
    // `cargo xtask push` of a run's artifacts, then `pull` into a fresh store.
    a.run();
    lookup(&a, file_remote(remote_dir.path(), RemoteMode::Push, true)).unwrap();
    let out = lookup(&b, file_remote(remote_dir.path(), RemoteMode::Pull, true)).unwrap();
    assert_eq!(pulled(&out).len(), 5);
}

#[test]
fn push_fills_a_remote_emptied_since_the_last_push() {
    let remote_dir = tempfile::tempdir().unwrap();
    let a = World::new();
    a.run();
    let push = || a.run_with(&runner::RunOptions { remote: Some(file_remote(remote_dir.path(), RemoteMode::Push, true)), lookup_only: true, ..a.opts() }).unwrap();
    let first = push();
    // The bucket is wiped (a lifecycle rule, a new bucket under the same name); the local
    // store still marks every artifact as on the remote.
    std::fs::remove_dir_all(remote_dir.path()).unwrap();
    std::fs::create_dir_all(remote_dir.path()).unwrap();
    push();
    for o in &first {
        assert!(remote_dir.path().join(&o.stage).join(&o.key).join("manifest.json").exists(), "{} was not pushed again", o.stage);
    }
    let b = World::new();
    let out = b.run_with(&runner::RunOptions { remote: Some(file_remote(remote_dir.path(), RemoteMode::Pull, true)), lookup_only: true, ..b.opts() }).unwrap();
    assert_eq!(pulled(&out).len(), 5);
}

#[test]
fn an_unreachable_remote_warns_and_runs_locally_unless_required() {
    // A remote directory that cannot be created stands for a remote that refuses.
    let bad = Path::new("/proc/ft-no-such-remote");
    let a = World::new();
    let out = a.run_with(&runner::RunOptions { remote: Some(file_remote(bad, RemoteMode::PullPush, false)), ..a.opts() }).unwrap();
    assert_eq!(ran(&out).len(), 5);
    let b = World::new();
    let e = b.run_with(&runner::RunOptions { remote: Some(file_remote(bad, RemoteMode::PullPush, true)), ..b.opts() }).unwrap_err();
    assert!(e.downcast_ref::<runner::StageFailed>().is_some_and(|f| f.stage == Stage::Download), "{e:#}");
}

/// moto's S3 server on a free port of 127.0.0.1, killed on drop.
struct Moto(Child, u16);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto() -> Option<Moto> {
    let server = tests::repo().join(".venv/bin/moto_server");
    if !server.exists() {
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&server).args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let m = Moto(child, port);
    let t = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed().as_secs() < 30, "moto_server did not listen on {port} in 30 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Some(m)
}

/// `cargo xtask run pipelines/smoke.yaml --json` (the built xtask binary) into `store` with the
/// S3 remote; the outcomes it printed.
fn xtask_run(store: &Path, env: &[(&str, String)], extra: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(tests::release_bin("xtask"))
        .current_dir(tests::repo())
        .args(["run", "pipelines/smoke.yaml", "--json", "--bin-dir"])
        .arg(tests::release_dir())
        .arg("--store")
        .arg(store)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("FT_REMOTE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "xtask run failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn the_smoke_pipeline_round_trips_through_an_s3_server() {
    let Some(server) = moto() else {
        tests::skip("the_smoke_pipeline_round_trips_through_an_s3_server", "moto_server is not in .venv", true);
        return;
    };
    let endpoint = format!("http://127.0.0.1:{}", server.1);
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
    ];
    let made = Command::new(tests::repo().join(".venv/bin/python"))
        .args(["-c", "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing').create_bucket(Bucket='ft-test')", &endpoint])
        .status()
        .unwrap();
    assert!(made.success(), "creating the bucket failed");
    let tmp = tempfile::tempdir().unwrap();
    let remote = ["--remote", "s3://ft-test/ci"];
    let first = xtask_run(&tmp.path().join("a"), &env, &remote);
    assert!(first.iter().all(|o| o["pulled"] == false), "{first:?}");
    let second = xtask_run(&tmp.path().join("b"), &env, &remote);
    assert_eq!(second.len(), 5);
    assert!(second.iter().all(|o| o["pulled"] == true && o["cached"] == true), "not every stage was pulled: {second:?}");
    let arts = |v: &[serde_json::Value]| files_of(v.iter().map(|o| (o["stage"].as_str().unwrap().to_string(), PathBuf::from(o["artifact"].as_str().unwrap()))));
    assert_eq!(arts(&first), arts(&second), "the pulled artifacts differ from the pushed ones");
    // A no-change rerun needs no network: with the server gone it answers from the local store.
    drop(server);
    let t = std::time::Instant::now();
    let third = xtask_run(&tmp.path().join("b"), &env, &remote);
    assert!(third.iter().all(|o| o["cached"] == true && o["pulled"] == false), "{third:?}");
    assert!(t.elapsed().as_secs_f64() < 5.0, "the rerun took {:?}", t.elapsed());
    // An empty store with the server gone: a warning, and every stage computed here; required,
    // the run fails naming the remote.
    let fourth = xtask_run(&tmp.path().join("c"), &env, &remote);
    assert!(fourth.iter().all(|o| o["cached"] == false), "{fourth:?}");
    let out = Command::new(tests::release_bin("xtask"))
        .current_dir(tests::repo())
        .args(["run", "pipelines/smoke.yaml", "--bin-dir"])
        .arg(tests::release_dir())
        .arg("--store")
        .arg(tmp.path().join("d"))
        .args(remote)
        .arg("--remote-required")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("remote s3://ft-test/ci is required"), "{err}");
}
