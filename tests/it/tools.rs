//! `cargo xtask setup` is idempotent and `doctor` reports what libtorch can do here; stage
//! binaries refuse mismatched inputs and foreign export directories.

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
    if !tch::Cuda::is_available() {
        assert!(text.contains("CUDA available: false") && text.contains("CPU only"), "{text}");
    }
}

#[test]
fn evaluate_refuses_a_train_artifact_from_other_tokens_and_unknown_splits() {
    let _rng = tests::torch_rng();
    let tmp = tempfile::tempdir().unwrap();
    let store = artifact::Store::open(tmp.path()).unwrap();
    // Two tokenize artifacts (content differs) and a train artifact that points at the first.
    let mk = |stage: &str, key: &str, file: &str, text: &str, inputs: Vec<(&str, &artifact::Artifact)>| {
        let st = store.stage_dir(stage).unwrap();
        std::fs::write(st.dir.join(file), text).unwrap();
        let inputs = inputs
            .into_iter()
            .map(|(n, a)| (n.to_string(), artifact::InputRef { content_hash: a.manifest.content_hash.clone(), key: a.manifest.key.clone(), stage: n.into() }))
            .collect();
        let m = artifact::Manifest::new(stage, key, "t", serde_json::json!({}), inputs);
        store.publish(st, m).unwrap()
    };
    let tok_a = mk("tokenize", "a", "meta.json", "{}", vec![]);
    let tok_b = mk("tokenize", "b", "meta.json", "{\"other\": 1}", vec![]);
    let train = mk("train", "t", "config.json", "{}", vec![("tokenize", &tok_a)]);
    let p: pipeline::EvaluateParams = serde_yaml_ng::from_str("split: test").unwrap();
    let e = format!("{:#}", evaluate::run(&p, &tok_b, &train, tmp.path()).unwrap_err());
    assert!(e.contains("trained on tokenize output") && e.contains("different tokenizer"), "{e}");
    let e = format!("{:#}", export::run(&pipeline::ExportParams { dtype: pipeline::Dtype::Fp32, weights: pipeline::Weights::Best }, &tok_a, &tok_b, &train, tmp.path()).unwrap_err());
    assert!(e.contains("not trained on the given tokenize artifact"), "{e}");
}
