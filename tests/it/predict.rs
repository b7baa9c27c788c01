//! `ft-predict` on new files: its probabilities are the evaluate stage's for the same texts and
//! weights (every task kind; the smoke and task tests call [`equals_evaluate`] on the artifacts
//! they made), its labels are transformers' `pipeline("text-classification")`'s on the export,
//! and bad input fails with a clear message and no output file.

use std::path::Path;
use std::process::Output;

use polars::prelude::*;
use tests::{fixtures, release_bin, repo};

fn predict(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = std::process::Command::new(release_bin("ft-predict"));
    for a in args {
        cmd.arg(a);
    }
    cmd.args(["--device", "cpu"]).output().unwrap()
}

#[track_caller]
fn succeeded(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "ft-predict failed: {err}");
    err
}

#[track_caller]
fn failed(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "ft-predict should have failed: {err}");
    err
}

fn read_parquet(path: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(path).unwrap()).finish().unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn floats(df: &DataFrame, name: &str) -> Vec<f64> {
    let c = df.column(name).unwrap_or_else(|_| panic!("no column {name} in {:?}", df.get_column_names()));
    c.cast(&DataType::Float64).unwrap().f64().unwrap().into_iter().map(|v| v.unwrap()).collect()
}

fn strings(df: &DataFrame, name: &str) -> Vec<String> {
    df.column(name).unwrap().str().unwrap().into_iter().map(|v| v.unwrap().to_string()).collect()
}

fn string_lists(df: &DataFrame, name: &str) -> Vec<Vec<String>> {
    let lists = df.column(name).unwrap().list().unwrap().clone();
    lists.into_iter().map(|l| l.unwrap().str().unwrap().into_iter().map(|v| v.unwrap().to_string()).collect()).collect()
}

/// Predicts `input` (a dataset split as the download stage wrote it: `text`, maybe `text_pair`,
/// `label`) with the train artifact `train` and checks the output against the evaluate stage's
/// `predictions.parquet` for the same split: every row in order, the input's columns kept, the
/// probabilities (or scores) to 1e-5 and the same decisions (multi-label: at the `threshold`
/// evaluate used, which predict finds by itself when evaluate tuned it).
pub(crate) fn equals_evaluate(train: &Path, input: &Path, predictions: &Path, threshold: f64, tmp: &Path) {
    let input_df = read_parquet(input);
    let pairs = input_df.get_column_names().iter().any(|c| c.as_str() == "text_pair");
    let out = tmp.join("predicted.parquet");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&train, &input, &"--out", &out, &"--json"];
    if pairs {
        args.extend([&"--pair-column" as &dyn AsRef<std::ffi::OsStr>, &"text_pair"]);
    }
    let run = predict(&args);
    succeeded(&run);
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let ours = read_parquet(&out);
    if ours.get_column_names().iter().any(|c| c.as_str() == "predicted_labels") {
        assert_eq!(summary["threshold"].as_f64(), Some(threshold), "the tuned threshold: {summary}");
    }
    let theirs = read_parquet(predictions);
    assert_eq!(ours.height(), input_df.height());
    assert_eq!(strings(&ours, "text"), strings(&input_df, "text"), "the input's rows, in order");
    let probs: Vec<String> = theirs.get_column_names().iter().map(|c| c.to_string()).filter(|c| c.starts_with("prob_")).collect();
    let names: Vec<String> = probs.iter().map(|c| c["prob_".len()..].to_string()).collect();
    for c in probs.iter().chain(theirs.get_column_names().iter().any(|c| c.as_str() == "score").then(|| "score".to_string()).iter()) {
        for (i, (a, b)) in floats(&ours, c).iter().zip(floats(&theirs, c)).enumerate() {
            assert!((a - b).abs() < 1e-5, "{c} of row {i}: predict {a}, evaluate {b}");
        }
    }
    if ours.get_column_names().iter().any(|c| c.as_str() == "predicted_label") {
        let classes: Vec<String> = theirs.column("prediction").unwrap().i64().unwrap().into_iter().map(|p| names[p.unwrap() as usize].clone()).collect();
        assert_eq!(strings(&ours, "predicted_label"), classes);
        let best: Vec<f64> = (0..ours.height()).map(|i| probs.iter().map(|c| floats(&ours, c)[i]).fold(f64::MIN, f64::max)).collect();
        assert!(floats(&ours, "score").iter().zip(&best).all(|(a, b)| (a - b).abs() < 1e-7), "score is the predicted class's probability");
    } else if ours.get_column_names().iter().any(|c| c.as_str() == "predicted_labels") {
        assert_eq!(string_lists(&ours, "predicted_labels"), string_lists(&theirs, "prediction"));
    }
}

/// The smoke test's texts as a CSV file of new data (an `id` column first, commas and quotes in
/// the texts), predicted by train key prefix and from the export directory: the same labels as
/// evaluate, and as transformers' `pipeline("text-classification")` on the export.
pub(crate) fn labels_a_csv_as_transformers_does(train: &Path, export: &Path, predictions: &Path, store: &Path, tmp: &Path) {
    let lines = std::fs::read_to_string(fixtures().join("smoke/test.jsonl")).unwrap();
    let texts: Vec<String> = lines.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_string()).collect();
    let mut csv = String::from("id,text\n");
    for (i, t) in texts.iter().enumerate() {
        let t = if i % 7 == 0 { format!("{t}, \"quoted\"") } else { t.clone() };
        csv.push_str(&format!("{i},\"{}\"\n", t.replace('"', "\"\"")));
    }
    let input = tmp.join("new.csv");
    std::fs::write(&input, csv).unwrap();
    let key = train.file_name().unwrap().to_str().unwrap();
    let by_key = tmp.join("by-key.parquet");
    let err = succeeded(&predict(&[&&key[..12], &input, &"--out", &by_key, &"--store", &store]));
    assert!(err.contains(&format!("predicted {} rows with train artifact {key} (best.safetensors) (max_length 64)", texts.len())), "{err}");
    let ours = read_parquet(&by_key);
    let ids: Vec<i64> = ours.column("id").unwrap().i64().unwrap().into_iter().map(|v| v.unwrap()).collect();
    assert_eq!(ids, (0..texts.len() as i64).collect::<Vec<_>>());
    // Rows with `, "quoted"` appended are new texts; the others are the evaluate stage's.
    let theirs = read_parquet(predictions);
    let names = ["neg", "pos"];
    let (labels, prob) = (strings(&ours, "predicted_label"), floats(&ours, "prob_pos"));
    let (classes, their_prob) = (theirs.column("prediction").unwrap().i64().unwrap().clone(), floats(&theirs, "prob_pos"));
    for i in (0..texts.len()).filter(|i| i % 7 != 0) {
        assert_eq!(labels[i], names[classes.get(i).unwrap() as usize], "row {i}");
        assert!((prob[i] - their_prob[i]).abs() < 1e-5, "row {i}: predict {}, evaluate {}", prob[i], their_prob[i]);
    }

    let by_export = tmp.join("by-export.csv");
    succeeded(&predict(&[&export, &input, &"--out", &by_export]));
    // Read, predicted and written a few rows at a time (200-byte pieces of the CSV): the same
    // rows in the same order with the same predictions, under the real name only at the end.
    let chunked = tmp.join("chunked.csv");
    let o = predict::Options {
        model: export.display().to_string(),
        input: input.clone(),
        out: chunked.clone(),
        column: "text".into(),
        pair_column: None,
        delimiter: None,
        store: store.to_path_buf(),
        weights: pipeline::Weights::Best,
        batch_size: 4,
        device: "cpu".into(),
        precision: pipeline::Precision::Fp32,
        max_length: None,
        threshold: None,
    };
    let summary = predict::run_chunked(&o, download::chunks::Chunking { rows: 3, bytes: 200 }).unwrap();
    assert_eq!(summary.rows, texts.len());
    let (whole, pieces) = (download::dataset::read_table(&by_export, None).unwrap(), download::dataset::read_table(&chunked, None).unwrap());
    assert_eq!(whole.get_column_names(), pieces.get_column_names());
    assert_eq!(strings(&whole, "text"), strings(&pieces, "text"));
    assert_eq!(strings(&whole, "predicted_label"), strings(&pieces, "predicted_label"));
    assert!(floats(&whole, "prob_pos").iter().zip(floats(&pieces, "prob_pos")).all(|(a, b)| (a - b).abs() < 1e-5));
    assert!(std::fs::read_dir(tmp).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().contains(".tmp-")), "no temporary file is left");
    let Some(python) = tests::venv_python_with("transformers") else {
        return tests::skip("ft-predict against transformers' text-classification pipeline", "the venv cannot import transformers", true);
    };
    let out = std::process::Command::new(&python).arg(repo().join("tests/fixtures/predict_check.py")).args([export, &input, &by_export]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hf: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hf["same_texts"], true, "the output's rows are the input's, in order");
    let (ours, theirs) = (hf["ours"].as_array().unwrap(), hf["theirs"].as_array().unwrap());
    assert_eq!(ours.len(), texts.len());
    assert_eq!(ours.len(), theirs.len());
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(a["label"], b["label"], "row {i}: ours {a}, the pipeline's {b}");
        assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-4, "row {i}: ours {a}, the pipeline's {b}");
    }
}

/// A missing column, a null text, a model without a classification head, an unknown key, an
/// output extension we cannot write, a column predict would overwrite: each one clear error
/// naming what is wrong, and no output file, partial or temporary.
#[test]
fn bad_input_is_one_clear_error_and_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let good = dir.join("good.jsonl");
    std::fs::write(&good, "{\"text\": \"a fine film\"}\n{\"text\": \"dull\"}\n").unwrap();
    let nulls = dir.join("nulls.jsonl");
    std::fs::write(&nulls, "{\"text\": \"a fine film\"}\n{\"text\": null}\n").unwrap();
    let clash = dir.join("clash.jsonl");
    std::fs::write(&clash, "{\"text\": \"a fine film\", \"score\": 3}\n").unwrap();
    let out = dir.join("out.parquet");
    let encoder = fixtures().join("tiny-bert");
    let e = failed(&predict(&[&encoder, &good, &"--out", &out]));
    assert!(e.contains("no classification head") && e.contains("classifier.weight") && e.contains("fine-tune it"), "{e}");
    let e = failed(&predict(&[&encoder, &good, &"--out", &out, &"--column", &"body"]));
    assert!(e.contains("no column `body` (--column)") && e.contains("[\"text\"]"), "{e}");
    let e = failed(&predict(&[&encoder, &nulls, &"--out", &out]));
    assert!(e.contains("nulls.jsonl") && e.contains("null in rows 1"), "{e}");
    let e = failed(&predict(&[&encoder, &clash, &"--out", &out]));
    assert!(e.contains("[\"score\"]") && e.contains("rename or drop"), "{e}");
    let e = failed(&predict(&[&encoder, &good, &"--out", &dir.join("out.xlsx")]));
    assert!(e.contains("unsupported extension `.xlsx`"), "{e}");
    let e = failed(&predict(&[&"0abc", &good, &"--out", &out, &"--store", &dir]));
    assert!(e.contains("no train or export artifact") && e.contains("`0abc`"), "{e}");
    let e = failed(&predict(&[&"no-such-model", &good, &"--out", &out]));
    assert!(e.contains("neither a directory nor an artifact key"), "{e}");
    let left: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).filter(|n| n.starts_with("out") || n.contains(".tmp-")).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
