//! The runner and the store, driven with the test stage executable (`ft-fake-stage`).

use std::path::PathBuf;
use std::time::Instant;

use pipeline::Stage;
use runner::{RunOptions, StageOutcome};

pub(crate) struct World {
    pub(crate) dir: tempfile::TempDir,
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
    pub(crate) fn new() -> World {
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
    pub(crate) fn build(&self) {
        for s in Stage::ALL {
            let dst = self.dir.path().join("bin").join(s.binary());
            let _ = std::fs::remove_file(&dst);
            std::fs::copy(env!("CARGO_BIN_EXE_ft-fake-stage"), &dst).unwrap();
        }
    }
    pub(crate) fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    pub(crate) fn write_pipeline(&self, text: &str) {
        let text = text.replace("STORE", &self.store().display().to_string());
        std::fs::write(self.dir.path().join("p.yaml"), text).unwrap();
    }
    pub(crate) fn control(&self, lines: &str) {
        std::fs::write(self.dir.path().join("fake.env"), lines).unwrap();
        self.build();
    }
    pub(crate) fn opts(&self) -> RunOptions {
        RunOptions { bin_dir: self.dir.path().join("bin"), ..Default::default() }
    }
    pub(crate) fn run_with(&self, opts: &RunOptions) -> anyhow::Result<Vec<StageOutcome>> {
        let p = pipeline::load(&self.dir.path().join("p.yaml"))?;
        runner::run(&p, opts, |_| {})
    }
    pub(crate) fn run(&self) -> Vec<StageOutcome> {
        self.run_with(&self.opts()).unwrap()
    }
    pub(crate) fn runs_logged(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default().lines().map(String::from).collect()
    }
}

pub(crate) fn ran(out: &[StageOutcome]) -> Vec<&str> {
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
    let kind = |rs: &[artifact::Reclaimed], k: &str| rs.iter().filter(|r| r.kind == k).count();
    assert_eq!(kind(&dry, "artifact"), 3, "old train, evaluate, export: {dry:?}");
    assert_eq!(kind(&dry, "memo"), 3, "their memo entries: {dry:?}");
    assert_eq!(store.all_dirs().len(), 8);
    store.gc(&keep, false).unwrap();
    assert_eq!(store.all_dirs().len(), 5);
    assert!(ran(&w.run()).is_empty());
}

#[test]
fn gc_over_two_spellings_of_one_store_keeps_what_either_references() {
    let w = World::new();
    w.run();
    // A second pipeline on the same store, spelled through a symlink and with `..`.
    let link = w.dir.path().join("link");
    std::os::unix::fs::symlink(w.store(), &link).unwrap();
    let other = w.dir.path().join("q.yaml");
    let q = PIPELINE.replace("STORE", &link.display().to_string()).replace("max_length: 64", "max_length: 128");
    std::fs::write(&other, &q).unwrap();
    let q = pipeline::load(&other).unwrap();
    assert_eq!(ran(&runner::run(&q, &w.opts(), |_| {}).unwrap()), ["tokenize", "train", "evaluate", "export"]);
    let third = w.dir.path().join("r.yaml");
    std::fs::write(&third, PIPELINE.replace("STORE", &format!("{}/../store", link.display()))).unwrap();
    let p = pipeline::load(&w.dir.path().join("p.yaml")).unwrap();
    let r = pipeline::load(&third).unwrap();
    let reports = runner::gc(&[p, q.clone(), r], &w.opts(), false).unwrap();
    assert_eq!(reports.len(), 1, "one store, however spelled: {reports:?}");
    assert!(reports[0].reclaimed.iter().all(|g| g.kind != "artifact"), "{:?}", reports[0].reclaimed);
    assert!(ran(&w.run()).is_empty());
    assert!(ran(&runner::run(&q, &w.opts(), |_| {}).unwrap()).is_empty());
}

#[test]
fn a_forced_rerun_racing_lookups_never_leaves_the_key_without_a_valid_artifact() {
    let w = World::new();
    w.control("FAKE_SLEEP_MS=20\n");
    let first = w.run();
    let key = first[0].key.clone();
    let params = w.dir.path().join("download.json");
    let p = pipeline::load(&w.dir.path().join("p.yaml")).unwrap();
    std::fs::write(&params, p.section(Stage::Download).unwrap().params.to_string()).unwrap();
    let bin = w.dir.path().join("bin/ft-download");
    let stage = |extra: &[&str]| {
        std::process::Command::new(&bin).arg("--params").arg(&params).arg("--store").arg(w.store()).args(extra).output().unwrap()
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let lookups = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let out = stage(&["--mode", "lookup"]);
                let err = String::from_utf8_lossy(&out.stderr).to_string();
                assert!(out.status.success(), "lookup {n} found no artifact (exit {:?}): {err}", out.status.code());
                assert!(!err.contains("discarding"), "lookup {n} discarded a valid artifact: {err}");
                n += 1;
            }
            n
        });
        for _ in 0..12 {
            let out = stage(&["--force"]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(lookups >= 5, "the lookups raced only {lookups} times");
    let store = artifact::Store::open(w.store()).unwrap();
    assert!(store.lookup("download", &key).unwrap().is_some());
    // A version a lookup held while it was replaced stays until gc; gc leaves the current one.
    let versions = || std::fs::read_dir(w.store().join(".versions/download").join(&key)).unwrap().flatten().filter(|e| e.path().is_dir()).count();
    let left = versions();
    let keep: artifact::Keep = [("download".to_string(), key.clone())].into();
    let gone = store.gc(&keep, false).unwrap();
    assert_eq!(gone.iter().filter(|g| g.kind == "old version").count(), left - 1, "{gone:?}");
    assert_eq!(versions(), 1);
    assert!(store.lookup("download", &key).unwrap().is_some());
}

#[test]
fn a_changed_runtime_library_reruns_its_stage_although_the_memo_knew_the_key() {
    let w = World::new();
    let lib = w.dir.path().join("libtorch_cpu.so");
    std::fs::write(&lib, "version one").unwrap();
    let calls = w.dir.path().join("calls");
    w.control(&format!("FAKE_RUNTIME_FILE_TRAIN={}\nFAKE_CALLS={}\n", lib.display(), calls.display()));
    let first = w.run();
    let _ = std::fs::remove_file(&calls);
    assert!(ran(&w.run()).is_empty());
    assert!(!calls.exists(), "a no-change rerun still starts no binary");
    // Another libtorch in the same place, without a rebuild of the stage.
    std::fs::write(&lib, "version two, longer").unwrap();
    let third = w.run();
    assert_eq!(ran(&third), ["train"], "the fake train's bytes do not depend on the library, so only it reruns");
    assert_ne!(first[2].key, third[2].key);
    let m = artifact::Artifact::open(third[2].artifact.as_ref().unwrap()).unwrap().manifest;
    assert!(m.environment.contains_key("runtime"), "the run-time fact is recorded: {:?}", m.environment);
}

#[test]
fn splits_and_classes_are_checked_against_a_cached_download_before_anything_else_runs() {
    let w = World::new();
    w.control(&format!("FAKE_LOG={}\n", w.dir.path().join("log").display()));
    w.run();
    let before = w.runs_logged().len();
    for (from, to, needle) in [
        ("split: test", "split: dev", "evaluate.split `dev`"),
        ("epochs: 1", "epochs: 1\n  validation_split: dev", "train.validation_split `dev`"),
        ("split: test", "split: test\n  positive_class: good", "evaluate.positive_class `good`"),
    ] {
        w.write_pipeline(&PIPELINE.replace(from, to));
        let t = Instant::now();
        let e = format!("{:#}", w.run_with(&w.opts()).unwrap_err());
        assert!(t.elapsed().as_secs_f64() < 1.0, "took {:?}", t.elapsed());
        assert!(e.contains(needle), "{e}");
        assert!(e.contains("`test`, `train`, `validation`") || e.contains("[\"neg\", \"pos\"]"), "names what exists: {e}");
        assert_eq!(w.runs_logged().len(), before, "nothing ran");
    }
}

#[test]
fn bad_pipeline_touches_no_store() {
    let w = World::new();
    w.write_pipeline(&PIPELINE.replace("epochs: 1", "epochs: 1\n  epoch: 2"));
    let err = w.run_with(&w.opts()).unwrap_err();
    assert!(err.to_string().contains("epoch"), "{err}");
    assert!(!w.store().exists());
}
