//! Pipeline files: every shipped pipeline parses; bad ones fail with one clear error.

use std::path::{Path, PathBuf};

use tests::repo;

#[test]
fn every_shipped_pipeline_parses() {
    let mut n = 0;
    for e in std::fs::read_dir(repo().join("pipelines")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let parsed = pipeline::load(&p).unwrap_or_else(|e| panic!("{e}"));
            assert!(!parsed.stages.is_empty());
            n += 1;
        }
    }
    assert!(n >= 1, "no pipelines found");
    let imdb = pipeline::load(&repo().join("pipelines/imdb.yaml")).unwrap();
    let names: Vec<_> = imdb.stages.iter().map(|s| s.stage.name()).collect();
    assert_eq!(names, ["download", "tokenize", "train", "evaluate", "export"]);
    let train = &imdb.section(pipeline::Stage::Train).unwrap().params;
    assert_eq!(train["learning_rate"], 2e-5);
    assert_eq!(train["epochs"], 3.0);
}

const GOOD: &str = "name: t
download:
  dataset: {repo: a/b}
  model: {repo: c/d}
tokenize:
  max_length: 64
";

#[track_caller]
fn check_error(text: &str, expected: &[&str]) {
    let err = pipeline::parse(Path::new("p.yaml"), text).expect_err("should fail").to_string();
    for e in expected {
        assert!(err.contains(e), "error `{err}` lacks `{e}`");
    }
    assert!(err.starts_with("p.yaml:"), "error `{err}` does not name the file");
}

#[test]
fn good_pipeline_fills_defaults() {
    let p = pipeline::parse(Path::new("p.yaml"), GOOD).unwrap();
    assert_eq!(p.store, PathBuf::from("data"));
    let tok = &p.section(pipeline::Stage::Tokenize).unwrap().params;
    assert_eq!(tok["truncation"], "head");
    assert_eq!(tok["max_length"], 64);
}

#[test]
fn unknown_key_names_line_and_valid_keys() {
    let text = GOOD.replace("max_length: 64", "max_length: 64\n  max_lenght: 3");
    check_error(&text, &["7:", "max_lenght", "max_length", "truncation"]);
}

#[test]
fn wrong_type_is_named() {
    check_error(&GOOD.replace("max_length: 64", "max_length: lots"), &["6:", "max_length", "invalid"]);
}

#[test]
fn unknown_stage_lists_stages() {
    check_error(&format!("{GOOD}finetune:\n  x: 1\n"), &["finetune", "`train`", "`evaluate`"]);
}

#[test]
fn duplicate_stage() {
    check_error(&format!("{GOOD}tokenize:\n  max_length: 32\n"), &["duplicate", "tokenize"]);
}

#[test]
fn wrong_order() {
    let text = "name: t\ntokenize:\n  max_length: 64\ndownload:\n  dataset: {repo: a/b}\n  model: {repo: c/d}\n";
    check_error(text, &["4:", "`download` comes after `tokenize`"]);
}

#[test]
fn missing_required_field() {
    check_error("name: t\ntokenize:\n  truncation: head\n", &["max_length"]);
}

#[test]
fn missing_file_is_named() {
    let err = pipeline::load(Path::new("pipelines/nope.yaml")).unwrap_err().to_string();
    assert!(err.contains("pipelines/nope.yaml"), "{err}");
}

/// `train.lora` fills PEFT's defaults and takes `all-linear`; bad values and an adapter export
/// without LoRA are refused when the file is read, naming the key.
#[test]
fn lora_settings_are_read_and_checked() {
    let with = |train: &str, export: &str| format!("{GOOD}train:\n  device: cpu\n{train}{export}");
    let p = pipeline::parse(Path::new("p.yaml"), &with("  lora: {}\n", "export:\n  format: both\n")).unwrap();
    let t: pipeline::TrainParams = p.typed(pipeline::Stage::Train).unwrap().unwrap();
    let l = t.lora.unwrap();
    assert_eq!((l.r, l.alpha, l.dropout, l.target_modules, l.modules_to_save.len()), (8, 16.0, 0.1, None, 0));
    let p = pipeline::parse(Path::new("p.yaml"), &with("  lora: {target_modules: all-linear, r: 4}\n", "")).unwrap();
    let t: pipeline::TrainParams = p.typed(pipeline::Stage::Train).unwrap().unwrap();
    assert_eq!(t.lora.unwrap().target_modules, Some(pipeline::TargetModules::Rule(pipeline::TargetRule::AllLinear)));
    check_error(&with("", "export:\n  format: peft\n"), &["export.format peft", "train.lora"]);
    check_error(&with("  lora: {r: 0}\n", ""), &["train.lora.r must be positive"]);
    check_error(&with("  lora: {dropout: 1.5}\n", ""), &["train.lora.dropout", "1.5"]);
    check_error(&with("  lora: {target_modules: []}\n", ""), &["train.lora.target_modules is empty"]);
    check_error(&with("  lora: {rank: 8}\n", ""), &["unknown field `rank`", "`r`"]);
}
