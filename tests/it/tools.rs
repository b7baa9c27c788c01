//! `cargo xtask setup` is idempotent and `doctor` reports what libtorch can do here; stages
//! refuse inputs that do not belong together.

use std::process::Command;

use tests::{release_bin as bin, repo};

#[test]
fn setup_is_idempotent_and_doctor_reports_cpu_only() {
    let xtask = bin("xtask");
    for _ in 0..2 {
        let out = Command::new(&xtask).arg("setup").current_dir(repo()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("up to date") || err.contains("LIBTORCH is set"), "a second setup should do nothing: {err}");
    }
    let out = Command::new(bin("ft-doctor")).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("libtorch:"), "{text}");
    // The version, as torch's version.py gives it (setup installs torch 2.11.0), and tch's.
    assert!(text.contains("libtorch:       2.11.0"), "{text}");
    assert!(text.contains("tch:            0.24.0"), "{text}");
    if !tch::Cuda::is_available() {
        assert!(text.contains("CUDA available: false") && text.contains("CPU only"), "{text}");
    }
}

/// A store holding two download artifacts (A, B), tokenize artifacts made from each, and a
/// train artifact made from A's.
struct Lineages {
    _tmp: tempfile::TempDir,
    download_a: artifact::Artifact,
    download_b: artifact::Artifact,
    tokenize_a: artifact::Artifact,
    tokenize_b: artifact::Artifact,
    train_a: artifact::Artifact,
}

fn lineages() -> Lineages {
    let tmp = tempfile::tempdir().unwrap();
    let store = artifact::Store::open(tmp.path()).unwrap();
    let mk = |stage: &str, key: &str, text: &str, inputs: Vec<(&str, &artifact::Artifact)>| {
        let st = store.stage_dir(stage).unwrap();
        std::fs::write(st.dir.join("f"), text).unwrap();
        let inputs = inputs
            .into_iter()
            .map(|(n, a)| (n.to_string(), artifact::InputRef { content_hash: a.manifest.content_hash.clone(), key: a.manifest.key.clone(), stage: n.into() }))
            .collect();
        let _lock = store.lock(stage, key).unwrap();
        store.publish(st, artifact::Manifest::new(stage, key, "t", serde_json::json!({}), inputs)).unwrap()
    };
    let download_a = mk("download", "da", "a", vec![]);
    let download_b = mk("download", "db", "b", vec![]);
    let tokenize_a = mk("tokenize", "ta", "a", vec![("download", &download_a)]);
    let tokenize_b = mk("tokenize", "tb", "b", vec![("download", &download_b)]);
    let train_a = mk("train", "tra", "a", vec![("download", &download_a), ("tokenize", &tokenize_a)]);
    Lineages { _tmp: tmp, download_a, download_b, tokenize_a, tokenize_b, train_a }
}

fn check(def: artifact::StageDef, inputs: &[(&str, &artifact::Artifact)]) -> Result<(), String> {
    let inputs = inputs.iter().map(|(n, a)| (n.to_string(), (*a).clone())).collect();
    artifact::check_lineage(def.name, def.lineage, &inputs).map_err(|e| format!("{e:#}"))
}

#[test]
fn each_stage_refuses_inputs_of_another_lineage_naming_both() {
    let l = lineages();
    // One lineage: accepted by every stage.
    check(train::stage_def(), &[("download", &l.download_a), ("tokenize", &l.tokenize_a)]).unwrap();
    check(evaluate::stage_def(), &[("tokenize", &l.tokenize_a), ("train", &l.train_a)]).unwrap();
    check(export::stage_def(), &[("download", &l.download_a), ("tokenize", &l.tokenize_a), ("train", &l.train_a)]).unwrap();
    let refused = |def: artifact::StageDef, inputs: &[(&str, &artifact::Artifact)], bad: &artifact::Artifact, given: &artifact::Artifact| {
        let e = check(def, inputs).unwrap_err();
        assert!(e.contains("do not belong together"), "{e}");
        assert!(e.contains(&bad.path.display().to_string()) && e.contains(&given.path.display().to_string()), "names both artifacts: {e}");
    };
    // train: tokens made from another model download.
    refused(train::stage_def(), &[("download", &l.download_b), ("tokenize", &l.tokenize_a)], &l.tokenize_a, &l.download_b);
    // evaluate: weights trained on other tokens.
    refused(evaluate::stage_def(), &[("tokenize", &l.tokenize_b), ("train", &l.train_a)], &l.train_a, &l.tokenize_b);
    // export: other tokens, or the right tokens with another download (tokenizer and config).
    refused(export::stage_def(), &[("download", &l.download_a), ("tokenize", &l.tokenize_b), ("train", &l.train_a)], &l.train_a, &l.tokenize_b);
    refused(export::stage_def(), &[("download", &l.download_b), ("tokenize", &l.tokenize_a), ("train", &l.train_a)], &l.tokenize_a, &l.download_b);
}

#[test]
fn a_stage_binary_refuses_mismatched_inputs_before_any_work() {
    let l = lineages();
    let params = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(params.path(), "device: cpu\n").unwrap();
    let t = std::time::Instant::now();
    let out = Command::new(bin("ft-train"))
        .arg("--params")
        .arg(params.path())
        .arg("--store")
        .arg(l._tmp.path())
        .arg("--input")
        .arg(format!("download={}", l.download_b.path.display()))
        .arg("--input")
        .arg(format!("tokenize={}", l.tokenize_a.path.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("do not belong together"), "{err}");
    assert!(t.elapsed().as_secs_f64() < 10.0, "failed before loading anything");
    assert!(std::fs::read_dir(l._tmp.path().join("train")).unwrap().count() == 1, "nothing published");
}
