//! The runner and the store, driven with the test stage executable (`ft-fake-stage`).

use std::path::PathBuf;
use std::time::Instant;

use pipeline::Stage;
use runner::{RunOptions, StageOutcome};

struct World {
    dir: tempfile::TempDir,
}

const PIPELINE: &str = "name: fake
store: STORE
download:
  dataset: {repo: org/data}
  model: {repo: org/model}
tokenize:
  max_length: 64
train:
  epochs: 1
evaluate:
  split: test
export:
  dtype: fp32
";

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let w = World { dir };
        w.build();
        w.write_pipeline(PIPELINE);
        w
    }
    /// Puts fresh copies of the fake stage in `bin/`, as a rebuild would: the runner's memo of
    /// keys is tied to the binaries, and a control change stands for a code change.
    fn build(&self) {
        for s in Stage::ALL {
            let dst = self.dir.path().join("bin").join(s.binary());
            let _ = std::fs::remove_file(&dst);
            std::fs::copy(env!("CARGO_BIN_EXE_ft-fake-stage"), &dst).unwrap();
        }
    }
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    fn write_pipeline(&self, text: &str) {
        let text = text.replace("STORE", &self.store().display().to_string());
        std::fs::write(self.dir.path().join("p.yaml"), text).unwrap();
    }
    fn control(&self, lines: &str) {
        std::fs::write(self.dir.path().join("fake.env"), lines).unwrap();
        self.build();
    }
    fn opts(&self) -> RunOptions {
        RunOptions { bin_dir: self.dir.path().join("bin"), ..Default::default() }
    }
    fn run_with(&self, opts: &RunOptions) -> anyhow::Result<Vec<StageOutcome>> {
        let p = pipeline::load(&self.dir.path().join("p.yaml"))?;
        runner::run(&p, opts, |_| {})
    }
    fn run(&self) -> Vec<StageOutcome> {
        self.run_with(&self.opts()).unwrap()
    }
    fn runs_logged(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default().lines().map(String::from).collect()
    }
}

fn ran(out: &[StageOutcome]) -> Vec<&str> {
    out.iter().filter(|o| !o.cached).map(|o| o.stage.as_str()).collect()
}

#[test]
fn no_change_reuses_everything_in_under_a_second() {
    let w = World::new();
    let first = w.run();
    assert_eq!(ran(&first), ["download", "tokenize", "train", "evaluate", "export"]);
    // Other tests load both cores, so take the best of a few cached runs.
    let mut best = f64::INFINITY;
    let mut second = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        second = w.run();
        best = best.min(t.elapsed().as_secs_f64());
        assert!(ran(&second).is_empty(), "{second:?}");
        if best < 1.0 {
            break;
        }
    }
    assert!(best < 1.0, "cached run took {best:.2} s");
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.key, b.key);
        assert_eq!(a.artifact, b.artifact);
    }
}

#[test]
fn a_no_change_rerun_starts_no_stage_binary() {
    let w = World::new();
    let calls = w.dir.path().join("calls");
    w.control(&format!("FAKE_CALLS={}\n", calls.display()));
    let first = w.run();
    assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 5);
    std::fs::remove_file(&calls).unwrap();
    let second = w.run();
    assert!(ran(&second).is_empty());
    assert!(!calls.exists(), "the runner started {:?} although nothing changed", std::fs::read_to_string(&calls));
    assert_eq!(first.iter().map(|o| &o.key).collect::<Vec<_>>(), second.iter().map(|o| &o.key).collect::<Vec<_>>());
    // A rebuilt binary is asked again (its code version may differ).
    w.build();
    assert!(ran(&w.run()).is_empty());
    assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 5);
}

#[test]
fn local_files_are_hashed_again_on_every_run() {
    let w = World::new();
    let data = w.dir.path().join("data.csv");
    std::fs::write(&data, "text,label\nfine,1\n").unwrap();
    w.control(&format!("FAKE_FILE_INPUT_DOWNLOAD={}\n", data.display()));
    w.run();
    assert!(ran(&w.run()).is_empty());
    std::fs::write(&data, "text,label\nfine,0\n").unwrap();
    // The fake download's output does not depend on the file, so only download reruns.
    assert_eq!(ran(&w.run()), ["download"]);
}

#[test]
fn parameter_change_reruns_that_stage_and_later_ones() {
    let w = World::new();
    w.run();
    w.write_pipeline(&PIPELINE.replace("max_length: 64", "max_length: 128"));
    assert_eq!(ran(&w.run()), ["tokenize", "train", "evaluate", "export"]);
    // An evaluate-only or export-only change reruns only that stage.
    let p = PIPELINE.replace("max_length: 64", "max_length: 128");
    w.write_pipeline(&p.replace("split: test", "split: validation"));
    assert_eq!(ran(&w.run()), ["evaluate"]);
    w.write_pipeline(&p.replace("split: test", "split: validation").replace("dtype: fp32", "dtype: bf16"));
    assert_eq!(ran(&w.run()), ["export"]);
}

#[test]
fn same_bytes_leave_downstream_cached() {
    let w = World::new();
    w.control("FAKE_CONSTANT_TOKENIZE=1\n");
    w.run();
    w.write_pipeline(&PIPELINE.replace("max_length: 64", "max_length: 128"));
    assert_eq!(ran(&w.run()), ["tokenize"]);
}

#[test]
fn code_version_change_reruns_stage_and_dependents_only() {
    let w = World::new();
    w.run();
    w.control("FAKE_CODE_VERSION_TRAIN=2\n");
    assert_eq!(ran(&w.run()), ["train", "evaluate", "export"]);
}

#[test]
fn crash_mid_write_publishes_nothing_and_is_rebuilt() {
    let w = World::new();
    w.control("FAKE_CRASH_TRAIN=1\n");
    let err = w.run_with(&w.opts()).unwrap_err();
    assert!(err.downcast_ref::<runner::StageFailed>().is_some_and(|f| f.stage == Stage::Train), "{err}");
    assert!(!w.store().join("train").exists() || std::fs::read_dir(w.store().join("train")).unwrap().count() == 0);
    w.control("");
    assert_eq!(ran(&w.run()), ["train", "evaluate", "export"]);
}

#[test]
fn corrupted_artifact_is_detected_and_rebuilt() {
    let w = World::new();
    let first = w.run();
    let tok = first[1].artifact.clone().unwrap();
    let f = tok.join("out.txt");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[3] ^= 0x20;
    std::fs::write(&f, bytes).unwrap();
    // Rebuilt with the same bytes, so everything downstream stays cached.
    assert_eq!(ran(&w.run()), ["tokenize"]);
    assert!(artifact::Artifact::open(&tok).unwrap().verify().is_ok());
}

#[test]
fn concurrent_runs_make_one_artifact_per_stage() {
    let w = World::new();
    w.control(&format!("FAKE_SLEEP_MS=300\nFAKE_LOG={}\n", w.dir.path().join("log").display()));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| w.run());
        let b = s.spawn(|| w.run());
        (a.join().unwrap(), b.join().unwrap())
    });
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.artifact, y.artifact);
        assert!(artifact::Artifact::open(x.artifact.as_ref().unwrap()).unwrap().verify().is_ok());
    }
    let mut log = w.runs_logged();
    log.sort();
    assert_eq!(log, ["download", "evaluate", "export", "tokenize", "train"], "each stage ran exactly once");
    for s in Stage::ALL {
        assert_eq!(std::fs::read_dir(w.store().join(s.name())).unwrap().count(), 1);
    }
}

#[test]
fn failing_stage_stops_the_run_with_its_code() {
    let w = World::new();
    w.control("FAKE_FAIL_TOKENIZE=7\n");
    let err = w.run_with(&w.opts()).unwrap_err();
    let f = err.downcast_ref::<runner::StageFailed>().expect("a StageFailed");
    assert_eq!((f.stage, f.code), (Stage::Tokenize, 7));
    assert!(!w.store().join("tokenize").exists());
    assert!(!w.store().join("train").exists());
}

#[test]
fn only_from_force_and_explain() {
    let w = World::new();
    // --only on an empty store: the upstream stage is not cached.
    let err = w.run_with(&RunOptions { only: Some(Stage::Tokenize), ..w.opts() }).unwrap_err();
    assert!(err.to_string().contains("`download`"), "{err}");
    w.run();
    let out = w.run_with(&RunOptions { force: vec![Stage::Train], ..w.opts() }).unwrap();
    assert_eq!(ran(&out), ["train"], "forced rerun writes the same bytes: downstream stays cached");
    let out = w.run_with(&RunOptions { from: Some(Stage::Evaluate), ..w.opts() }).unwrap();
    assert_eq!(ran(&out), ["evaluate", "export"]);
    w.write_pipeline(&PIPELINE.replace("epochs: 1", "epochs: 2"));
    let out = w.run_with(&RunOptions { only: Some(Stage::Train), ..w.opts() }).unwrap();
    assert_eq!(ran(&out), ["train"]);
    assert_eq!(out.len(), 3);
    w.write_pipeline(&PIPELINE.replace("epochs: 1", "epochs: 3"));
    let out = w.run_with(&RunOptions { explain: true, ..w.opts() }).unwrap();
    assert_eq!(out[1].would_run, Some(false));
    assert_eq!(out[2].would_run, Some(true));
    assert!(out[2].reasons.iter().any(|r| r.starts_with("parameter epochs: ") && r.ends_with(" -> 3.0")), "{:?}", out[2].reasons);
    assert_eq!(out[3].would_run, None, "evaluate depends on train's new bytes");
    // Explain ran nothing.
    assert_eq!(ran(&w.run_with(&RunOptions { only: Some(Stage::Train), ..w.opts() }).unwrap()), ["train"]);
}

#[test]
fn gc_keeps_referenced_artifacts() {
    let w = World::new();
    w.run();
    w.write_pipeline(&PIPELINE.replace("epochs: 1", "epochs: 2"));
    w.run();
    let p = pipeline::load(&w.dir.path().join("p.yaml")).unwrap();
    let keep = runner::referenced(&p, &w.opts()).unwrap();
    assert_eq!(keep.len(), 5);
    let store = artifact::Store::open(w.store()).unwrap();
    let dry = store.gc(&keep, true).unwrap();
    assert_eq!(dry.len(), 3, "old train, evaluate, export: {dry:?}");
    assert_eq!(store.all_dirs().len(), 8);
    store.gc(&keep, false).unwrap();
    assert_eq!(store.all_dirs().len(), 5);
    assert!(ran(&w.run()).is_empty());
}

#[test]
fn bad_pipeline_touches_no_store() {
    let w = World::new();
    w.write_pipeline(&PIPELINE.replace("epochs: 1", "epochs: 1\n  epoch: 2"));
    let err = w.run_with(&w.opts()).unwrap_err();
    assert!(err.to_string().contains("epoch"), "{err}");
    assert!(!w.store().exists());
}
