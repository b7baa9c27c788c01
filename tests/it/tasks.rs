//! Task kinds end to end — sentence pairs, multi-label, regression — through the runner and the
//! real stage binaries on the committed fixtures (the `pipelines/smoke-*.yaml` files themselves):
//! each learns its synthetic task well above chance and exports a model whose predictions in
//! transformers are ours. Also: our losses against torch's and transformers', and pairs tokenized
//! as Python's tokenizers does.

use std::path::Path;

use pipeline::files::{EvalMetrics, TaskScores};
use tests::repo;

use crate::run_pipeline as run;

#[test]
fn every_task_kind_learns_its_task_and_exports_what_transformers_predicts_alike() {
    let _rng = tests::torch_rng();
    let tmp = tempfile::tempdir().unwrap();
    for (file, problem_type) in [
        ("smoke-pairs.yaml", "single_label_classification"),
        ("smoke-multilabel.yaml", "multi_label_classification"),
        ("smoke-regression.yaml", "regression"),
    ] {
        let out = run(&tests::repo_pipeline(file, &tmp.path().join("store")));
        let eval = out[3].artifact.clone().unwrap();
        let m: EvalMetrics = pipeline::files::read(&eval.join("metrics.json")).unwrap();
        let threshold = match &m.scores {
            TaskScores::SingleLabel(s) => {
                assert!(s.accuracy >= 0.8, "{file}: test accuracy {} (chance 0.5)", s.accuracy);
                0.5
            }
            TaskScores::MultiLabel(s) => {
                assert!(s.micro.f1 >= 0.8, "{file}: micro F1 {} ({s:?})", s.micro.f1);
                assert_eq!(s.threshold_tuned_on.as_deref(), Some("validation"), "threshold: tune");
                assert!(s.f1_micro_ci95.is_some() && s.per_label.len() == 4);
                s.threshold
            }
            TaskScores::Regression(s) => {
                assert!(s.pearson >= 0.8, "{file}: Pearson {} ({s:?})", s.pearson);
                assert!(s.pearson_ci95.is_some() && (s.rmse - s.mse.sqrt()).abs() < 1e-12);
                assert!(eval.join("scatter.png").exists());
                0.5
            }
        };
        let report = std::fs::read_to_string(eval.join("report.md")).unwrap();
        assert!(report.contains(&m.task.name().replace('_', "-")), "{report}");
        let export = out[4].artifact.clone().unwrap();
        let config: serde_json::Value = serde_json::from_slice(&std::fs::read(export.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["problem_type"], problem_type, "{file}");
        let card = std::fs::read_to_string(export.join("README.md")).unwrap();
        assert!(card.contains(&format!("`problem_type: {problem_type}`")), "{card}");
        let test_split = out[0].artifact.clone().unwrap().join("dataset/test.parquet");
        transformers_predicts_as_ours(&export, &test_split, &eval.join("predictions.parquet"), threshold, &m.task);
        crate::predict::equals_evaluate(&out[2].artifact.clone().unwrap(), &test_split, &eval.join("predictions.parquet"), threshold, tmp.path());
    }
}

/// transformers' predictions for the test split (pairs tokenized as pairs) through the export
/// equal ours: the class, the label set at the threshold, the score to 1e-4.
fn transformers_predicts_as_ours(export: &Path, split: &Path, predictions: &Path, threshold: f64, task: &pipeline::Task) {
    let Some(python) = tests::venv_python_with("transformers") else {
        return tests::skip("the task export's transformers round trip", "the venv cannot import transformers", true);
    };
    let out = std::process::Command::new(&python)
        .arg(repo().join("tests/fixtures/tasks/predict_check.py"))
        .args([export, split, predictions])
        .arg(threshold.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hf: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for w in hf["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_lowercase()) {
        assert!(!(w.contains("missing") || w.contains("unexpected") || w.contains("newly initialized")), "transformers warned: {w}");
    }
    let (ours, theirs) = (hf["ours"].as_array().unwrap(), hf["theirs"].as_array().unwrap());
    assert_eq!(ours.len(), theirs.len());
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        match task {
            pipeline::Task::Regression => assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4, "row {i}: ours {a}, transformers {b}"),
            _ => assert_eq!(a, b, "row {i}: ours {a}, transformers {b}"),
        }
    }
}

/// Our loss of each kind equals torch's loss functions on the same logits and labels (class
/// weights, pos_weight and label smoothing included), and transformers'
/// `BertForSequenceClassification` loss for each `problem_type` equals ours on its logits.
#[test]
fn losses_equal_torch_and_transformers() {
    let Some(python) = tests::venv_python_with("transformers") else {
        return tests::skip("loss parity with torch and transformers", "the venv cannot import transformers", true);
    };
    let (rows, classes) = (6usize, 3usize);
    let logits: Vec<f32> = (0..rows * classes).map(|i| ((i * 37 % 11) as f32 - 5.0) / 2.0).collect();
    let class: Vec<i64> = vec![0, 2, 1, 1, 0, 2];
    let hot: Vec<f32> = (0..rows * classes).map(|i| if i % 4 == 0 || i % 5 == 1 { 1.0 } else { 0.0 }).collect();
    let scores: Vec<f32> = vec![0.5, -1.25, 2.0, 0.0, 3.5, -0.75];
    let weights = [0.5, 2.0, 1.25];
    let case = serde_json::json!({
        "model": tests::fixtures().join("tiny-bert"), "rows": rows, "classes": classes, "logits": logits,
        "class": class, "hot": hot, "scores": scores, "weights": weights, "smoothing": 0.1,
    });
    let mut child = std::process::Command::new(&python)
        .arg(repo().join("tests/fixtures/tasks/loss_check.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(case.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let torch: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cpu = tch::Device::Cpu;
    let l = tch::Tensor::from_slice(&logits).view([rows as i64, classes as i64]);
    let (y, h, s) = (
        model::loss::targets(&shards::Targets::Class(class.clone()), cpu),
        model::loss::targets(&shards::Targets::Multi { labels: classes, hot: hot.clone() }, cpu),
        model::loss::targets(&shards::Targets::Score(scores.clone()), cpu),
    );
    use model::loss::Objective;
    let ours = [
        ("cross_entropy", Objective::single_label(None, 0.0, cpu).loss(&l, &y)),
        ("cross_entropy_weighted_smoothed", Objective::single_label(Some(&weights), 0.1, cpu).loss(&l, &y)),
        ("bce", Objective::multi_label(None, cpu).loss(&l, &h)),
        ("bce_pos_weight", Objective::multi_label(Some(&weights), cpu).loss(&l, &h)),
        ("mse", Objective::Regression.loss(&l.narrow(1, 0, 1), &s)),
    ];
    for (name, loss) in ours {
        let (a, b) = (loss.double_value(&[]), torch[name].as_f64().unwrap());
        assert!((a - b).abs() < 1e-6, "{name}: ours {a}, torch {b}");
    }
    // transformers' own loss for each problem_type, on its own logits.
    for (kind, objective, targets) in [
        ("single_label_classification", Objective::single_label(None, 0.0, cpu), &y),
        ("multi_label_classification", Objective::multi_label(None, cpu), &h),
        ("regression", Objective::Regression, &s),
    ] {
        let hf = &torch["transformers"][kind];
        let hf_logits: Vec<f32> = hf["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let width = hf_logits.len() as i64 / rows as i64;
        let ours = objective.loss(&tch::Tensor::from_slice(&hf_logits).view([rows as i64, width]), targets).double_value(&[]);
        assert!((ours - hf["loss"].as_f64().unwrap()).abs() < 1e-5, "{kind}: ours {ours}, transformers {}", hf["loss"]);
    }
}

/// Pairs are encoded as Python's `tokenizers` encodes `encode(a, b)` with truncation by each
/// strategy: ids and token types, for a WordPiece (BERT: `[CLS] a [SEP] b [SEP]`, types 0/1) and a
/// byte-level BPE tokenizer (RoBERTa: `<s> a </s></s> b </s>`), on pairs short and long, ASCII or
/// not.
#[test]
fn pairs_encode_as_python_tokenizers_does() {
    let Some(python) = tests::venv_python_with("tokenizers") else {
        return tests::skip("pair encoding against Python tokenizers", "the venv cannot import tokenizers", true);
    };
    let tmp = tempfile::tempdir().unwrap();
    let long = "the movie was great and the acting was wonderful ".repeat(6);
    let pairs = [
        ("the movie was great", "frankly the plot was boring"),
        (long.as_str(), "ok"),
        ("ok", long.as_str()),
        (long.as_str(), long.as_str()),
        ("Café naïve — très bien", "the sequel, again!"),
    ];
    for dir in ["tiny-bert", "families/roberta"] {
        let tk = tokenize::tok::load(&tests::fixtures().join(dir)).unwrap();
        let file = tmp.path().join(format!("{}.json", dir.replace('/', "-")));
        tk.tokenizer.save(&file, false).unwrap();
        for strategy in ["longest_first", "only_first", "only_second"] {
            let p: pipeline::TokenizeParams = serde_json::from_value(serde_json::json!({"max_length": 24, "pair_truncation": strategy})).unwrap();
            let case = serde_json::json!({"tokenizer": file, "max_length": 24, "strategy": strategy, "pairs": pairs});
            let out = std::process::Command::new(&python).arg(repo().join("tests/fixtures/tasks/pair_check.py")).arg(case.to_string()).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let py: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
            for ((a, b), want) in pairs.iter().zip(&py) {
                let ours = tk.encode_pair(a, b, &p);
                match want.get("error") {
                    Some(_) => assert!(ours.is_err(), "{dir} {strategy}: Python refuses {a:?} + {b:?}, we gave {:?}", ours.map(|e| e.ids)),
                    None => {
                        let e = ours.unwrap_or_else(|e| panic!("{dir} {strategy}: {e:#}"));
                        assert_eq!(serde_json::json!(e.ids), want["ids"], "{dir} {strategy}: ids of {a:?} + {b:?}");
                        assert_eq!(serde_json::json!(e.types.unwrap()), want["type_ids"], "{dir} {strategy}: types of {a:?} + {b:?}");
                    }
                }
            }
        }
    }
}

/// Every family takes every task: the STS-B-shaped pipeline (sentence pairs, a score) on each
/// family's tiny model, two epochs, and its export predicts our scores in transformers — pairs
/// tokenized by each family's own tokenizer (RoBERTa's `</s></s>`, no token types but BERT's).
#[test]
fn every_family_regresses_on_sentence_pairs_as_transformers_does() {
    let _rng = tests::torch_rng();
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(repo().join("pipelines/smoke-regression.yaml")).unwrap();
    for family in ["roberta", "xlm-roberta", "distilbert", "modernbert"] {
        let file = format!("regression-{family}.yaml");
        let text = base
            .replace("tests/fixtures/tiny-bert", &format!("tests/fixtures/families/{family}"))
            .replace("epochs: 12", "epochs: 2")
            .replace("tests/fixtures", &tests::fixtures().display().to_string())
            .replace("name: smoke-regression", &format!("name: {family}\nstore: {}", tmp.path().join("store").display()));
        let out = run(&pipeline::parse(Path::new(&file), &text).unwrap_or_else(|e| panic!("{e}")));
        let eval = out[3].artifact.clone().unwrap();
        let m: EvalMetrics = pipeline::files::read(&eval.join("metrics.json")).unwrap();
        assert!(matches!(m.scores, TaskScores::Regression(_)), "{family}");
        let test_split = out[0].artifact.clone().unwrap().join("dataset/test.parquet");
        transformers_predicts_as_ours(&out[4].artifact.clone().unwrap(), &test_split, &eval.join("predictions.parquet"), 0.5, &m.task);
    }
}
