//! `cargo xtask run --set/--grid` on the smoke pipeline with the real stage binaries: every
//! combination runs, shared stages come from cache, a failing combination is reported in the
//! table without stopping the others, and the run fails at the end.

use std::process::Command;

use tests::{fixtures, release_bin, release_dir, repo};

/// `cargo xtask run FILE ARGS` with the stage binaries the tests use.
fn run(file: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(release_bin("xtask")).current_dir(repo()).arg("run").arg(file).args(args).arg("--bin-dir").arg(release_dir()).output().unwrap()
}

#[test]
fn a_grid_runs_every_combination_caches_shared_stages_and_tables_the_results() {
    let _rng = tests::torch_rng();
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("pipelines/smoke.yaml"))
        .unwrap()
        .replace("tests/fixtures", &fixtures().display().to_string())
        .replace("name: smoke", &format!("name: smoke-sweep\nstore: {}", tmp.path().join("store").display()));
    // The file's own sweep section gives two learning rates; --grid adds a max_length that the
    // tiny model (128 positions) refuses in tokenize, so two of the four combinations fail there.
    let file = tmp.path().join("sweep.yaml");
    std::fs::write(&file, format!("{text}sweep:\n  train.learning_rate: [1.0e-3, 3.0e-3]\n")).unwrap();
    let out = run(&file, &["--set", "train.epochs=10", "--grid", "tokenize.max_length=64,200", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a sweep with failing combinations must fail at the end\n{stderr}");
    assert!(stderr.contains("2 of 4 combinations failed"), "{stderr}");
    assert!(stderr.contains("== combination 4/4: train.learning_rate=0.003 tokenize.max_length=200"), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (table, stages) = lines.split_last().unwrap();
    // Download runs once; tokenize once (the other max_length fails); train and later once per
    // good combination.
    let ran = |stage: &str| stages.iter().filter(|o| o["stage"] == stage && o["cached"] == false).count();
    assert_eq!((ran("download"), ran("tokenize"), ran("train"), ran("export")), (1, 1, 2, 2), "{stdout}");
    assert!(stages.iter().all(|o| o["values"]["train.learning_rate"].is_number() && o["values"]["tokenize.max_length"].is_number()));
    let rows = table["table"].as_array().unwrap();
    assert_eq!(table["axes"], serde_json::json!(["train.learning_rate", "tokenize.max_length"]));
    assert_eq!(rows.len(), 4);
    // Sorted by validation accuracy, best first; the failed ones last, with their error.
    let good: Vec<f64> = rows[..2].iter().map(|r| r["validation"]["value"].as_f64().unwrap()).collect();
    assert!(good[0] >= good[1], "{rows:?}");
    for r in &rows[..2] {
        assert_eq!(r["validation"]["metric"], "accuracy");
        assert_eq!(r["test"]["split"], "test");
        assert!(r["test"]["value"].as_f64().unwrap() > 0.6, "{r}");
        assert_eq!(r["values"]["tokenize.max_length"], 64);
        assert!(r["error"].is_null() && r["keys"]["train"].is_string() && r["train_seconds"].as_f64().unwrap() > 0.0);
    }
    for r in &rows[2..] {
        assert_eq!(r["values"]["tokenize.max_length"], 200);
        let e = r["error"].as_str().unwrap();
        assert!(e.contains("stage `tokenize` failed"), "{e}");
    }
    assert!(stderr.contains("tokenize.max_length 200 exceeds the model's max_position_embeddings 128"), "{stderr}");

    // --fail-fast stops at the first failure; a second run of the good combinations is cached.
    let out = run(&file, &["--set", "train.epochs=10", "--grid", "tokenize.max_length=200,64", "--fail-fast"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--fail-fast stopped the sweep") && !stderr.contains("combination 2/4"), "{stderr}");
    let out = run(&file, &["--set", "train.epochs=10", "--set", "tokenize.max_length=64"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| train.learning_rate | validation accuracy | test accuracy |"), "{stdout}");
    assert!(stdout.lines().filter(|l| l.contains(" cached ")).count() == 10, "both combinations come from cache:\n{stdout}");

    runs_lists_the_store_and_compares_two_runs(&tmp.path().join("store"), &file);

    // A bad setting fails before anything runs, naming it.
    let out = run(&file, &["--set", "train.epochs=two"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("with --set train.epochs=two: train.epochs: invalid type"), "{stderr}");
}

/// `cargo xtask runs` over the sweep's store: the two trained combinations, the one parameter
/// that differs between them, their metrics and keys; `--compare` by key prefix.
fn runs_lists_the_store_and_compares_two_runs(store: &std::path::Path, file: &std::path::Path) {
    let xtask = |args: &[&str]| {
        let out = Command::new(release_bin("xtask")).current_dir(repo()).arg("runs").args(args).arg("--store").arg(store).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, stdout, stderr) = xtask(&["--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["differing"], serde_json::json!(["train.learning_rate"]), "{v}");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let mut lrs: Vec<f64> = runs.iter().map(|r| r["params"]["train.learning_rate"].as_f64().unwrap()).collect();
    lrs.sort_by(f64::total_cmp);
    assert_eq!(lrs, [1e-3, 3e-3]);
    for r in runs {
        assert_eq!(r["validation"]["metric"], "accuracy");
        assert_eq!(r["evaluations"][0]["split"], "test");
        assert!(r["evaluations"][0]["value"].as_f64().unwrap() > 0.6 && r["device"].as_str().unwrap().starts_with("cpu"), "{r}");
    }
    // The file's own values (epochs 8) made neither run (they trained with --set epochs=10).
    let (ok, stdout, _) = xtask(&[file.to_str().unwrap()]);
    assert!(ok && stdout.contains("no train artifacts") && stdout.contains("made by the pipelines named"), "{stdout}");
    let keys: Vec<&str> = runs.iter().map(|r| r["train_key"].as_str().unwrap()).collect();
    let (ok, stdout, stderr) = xtask(&["--compare", &keys[0][..6], &keys[1][..6], "--json"]);
    assert!(ok, "{stderr}");
    let c: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(c["params"].as_array().unwrap().len(), 1, "{c}");
    assert_eq!(c["params"][0]["key"], "train.learning_rate");
    assert!(c["inputs"].as_array().unwrap().is_empty(), "same download and tokenize: {c}");
    let (ok, _, stderr) = xtask(&["--compare", "", &keys[1][..6]]);
    assert!(!ok && stderr.contains("is ambiguous") && stderr.contains(keys[0]), "{stderr}");
    let (ok, _, stderr) = xtask(&["--compare", "zzzz", &keys[1][..6]]);
    assert!(!ok && stderr.contains("no train artifact's key starts with `zzzz`"), "{stderr}");
}
