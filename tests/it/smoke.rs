//! End to end: the smoke pipeline through the runner and the real stage binaries (built by
//! `cargo xtask test`), its accuracy, a cached rerun, and the export loaded by transformers.

use std::path::Path;

use tests::{release_dir as bin_dir, repo};

use crate::run_pipeline as run;

#[test]
fn smoke_pipeline_learns_caches_and_exports_a_loadable_model() {
    let _rng = tests::torch_rng();
    for s in pipeline::Stage::ALL {
        assert!(bin_dir().join(s.binary()).exists(), "{} is not built: run the tests with `cargo xtask test`", s.binary());
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = tests::smoke_pipeline(&tmp.path().join("store"));
    let first = run(&p);
    assert!(first.iter().all(|o| !o.cached));
    let eval_dir = first[3].artifact.clone().unwrap();
    let metrics: pipeline::files::EvalMetrics = pipeline::files::read(&eval_dir.join("metrics.json")).unwrap();
    let scores = metrics.single().unwrap();
    let acc = scores.accuracy;
    assert!(acc >= 0.85, "held-out accuracy {acc} is not well above chance (0.5)");
    for f in ["report.md", "confusion.png", "curves.png", "length.png", "predictions.parquet"] {
        assert!(eval_dir.join(f).exists(), "{f}");
    }
    assert_eq!(scores.n, 160);
    assert!(scores.ci95.accuracy.is_some());
    let report = std::fs::read_to_string(eval_dir.join("report.md")).unwrap();
    assert!(report.contains("`best.safetensors` of train artifact") && report.contains("Accuracy by text length"), "{report}");
    model_card_shows_the_selected_weights(&first);
    tensorboard_reads_the_curves(&first[2].artifact.clone().unwrap());
    let second = run(&p);
    assert!(second.iter().all(|o| o.cached), "{second:?}");
    reports_progress_off_a_terminal(&first, tmp.path());

    let export = first[4].artifact.clone().unwrap();
    matches_the_golden_listing(&export);

    transformers_agrees(&export, &["the movie was great and the acting was wonderful", "frankly the plot was boring", "ok"]);

    let train = first[2].artifact.clone().unwrap();
    let test_split = first[0].artifact.clone().unwrap().join("dataset/test.parquet");
    crate::predict::equals_evaluate(&train, &test_split, &eval_dir.join("predictions.parquet"), 0.5, tmp.path());
    crate::predict::labels_a_csv_as_transformers_does(&train, &export, &eval_dir.join("predictions.parquet"), &tmp.path().join("store"), tmp.path());
}

/// Each family's tiny model in a local directory goes through the whole pipeline with nothing
/// else changed: it learns the smoke task (train accuracy at least 99%), and its export loads in
/// transformers with the tokenizer, giving our logits.
#[test]
fn every_family_trains_evaluates_and_exports_from_a_local_directory() {
    let _rng = tests::torch_rng();
    let tmp = tempfile::tempdir().unwrap();
    for family in ["roberta", "xlm-roberta", "distilbert", "modernbert"] {
        let p = tests::family_pipeline(&tmp.path().join("store"), family);
        let out = run(&p);
        let metrics: pipeline::files::EvalMetrics = pipeline::files::read(&out[3].artifact.clone().unwrap().join("metrics.json")).unwrap();
        assert_eq!(metrics.split, "train");
        let acc = metrics.single().unwrap().accuracy;
        assert!(acc >= 0.99, "{family}: train accuracy {acc}");
        let export = out[4].artifact.clone().unwrap();
        let config: serde_json::Value = serde_json::from_slice(&std::fs::read(export.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["model_type"], family);
        transformers_agrees(&export, &["the movie was great and the acting was wonderful", "Frankly, the plot was boring…", "ok"]);
    }
}

/// The export loads in transformers (model and tokenizer) with no warning about weights; its
/// token ids are ours and its logits ours to 1e-4.
fn transformers_agrees(export: &Path, texts: &[&str]) {
    let Some(python) = tests::venv_python_with("transformers") else {
        return tests::skip("the export's transformers round trip", "the venv cannot import transformers", true);
    };
    let out = std::process::Command::new(&python).arg(repo().join("tests/fixtures/export_check.py")).arg(export).args(texts).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hf: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings: Vec<String> = hf["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_lowercase()).collect();
    for w in &warnings {
        assert!(!(w.contains("missing") || w.contains("unexpected") || w.contains("newly initialized") || w.contains("not used")), "transformers warned: {w}");
    }
    assert_eq!(hf["id2label"], serde_json::json!({"0": "neg", "1": "pos"}));
    assert_eq!(hf["model_max_length"], 64);
    let config = model::Config::from_file(&export.join("config.json")).unwrap();
    let (m, report) = model::Model::load(config, 2, &export.join("model.safetensors"), tch::Device::Cpu, 0).unwrap();
    assert!(report.initialized.is_empty());
    let rows = |k: &str| -> Vec<i64> { hf[k].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap())).collect() };
    let tk = tokenize::tok::load(export).unwrap();
    let params = pipeline::TokenizeParams { max_length: 64, truncation: pipeline::Truncation::Head, head_tokens: 0, shard_mib: 1, pair_truncation: Default::default() };
    for (i, t) in texts.iter().enumerate() {
        let (ids, _) = tk.encode(t, &params).unwrap();
        let hf_ids: Vec<i64> = hf["input_ids"][i].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).zip(hf["attention_mask"][i].as_array().unwrap()).filter(|(_, m)| m.as_i64() == Some(1)).map(|(x, _)| x).collect();
        assert_eq!(ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), hf_ids, "token ids of {t:?}");
    }
    let b = texts.len() as i64;
    let ids = tch::Tensor::from_slice(&rows("input_ids")).view([b, -1]);
    let mask = tch::Tensor::from_slice(&rows("attention_mask")).view([b, -1]);
    let ours: Vec<f32> = Vec::try_from(tch::no_grad(|| m.forward(&model::Inputs::new(&ids, Some(&mask)), false)).flatten(0, -1)).unwrap();
    let theirs: Vec<f64> = hf["logits"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap())).collect();
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((*a as f64 - b).abs() < 1e-4, "logits: ours {ours:?} vs transformers {theirs:?}");
    }
}

/// Train and evaluate run with stderr going to a pipe (as under nohup, CI or a scheduler, where
/// no progress bar is drawn) still say how far they are: a line per log point with loss, lr,
/// speed and ETA, the validation results, and where evaluation is.
fn reports_progress_off_a_terminal(first: &[runner::StageOutcome], tmp: &Path) {
    let dir = |i: usize| first[i].artifact.clone().unwrap().display().to_string();
    let stage = |bin: &str, params: &str, inputs: &[(&str, String)]| -> String {
        let file = tmp.join(format!("{bin}.yaml"));
        std::fs::write(&file, params).unwrap();
        let mut cmd = std::process::Command::new(tests::release_bin(bin));
        cmd.arg("--params").arg(&file).arg("--store").arg(tmp.join("progress-store"));
        for (name, d) in inputs {
            cmd.arg("--input").arg(format!("{name}={d}"));
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{bin}: {err}");
        err
    };
    // 420 training examples, 27 steps an epoch: max_steps 40 ends in the second epoch.
    let train = stage("ft-train", "device: cpu\nmax_steps: 40\nbatch_size: 16\nlearning_rate: 1.0e-3\nlog_every_steps: 10\n", &[("download", dir(0)), ("tokenize", dir(1))]);
    let steps: Vec<&str> = train.lines().filter(|l| l.contains(" steps: epoch ")).collect();
    let at = |i: usize, epoch: &str| steps.get(i).is_some_and(|l| l.starts_with(&format!("{}/40 steps: epoch {epoch} loss ", 10 * (i + 1))));
    assert!(steps.len() == 4 && at(0, "1/2") && at(1, "1/2") && at(2, "2/2") && at(3, "2/2"), "a line per log point: {train}");
    assert!(steps.iter().all(|l| l.contains(" lr ") && l.contains(" grad-norm ") && l.contains(" samples/s; ")), "{train}");
    let (last, before) = steps.split_last().unwrap();
    assert!(before.iter().all(|l| l.contains(" elapsed, ") && l.contains("/s, ETA ")) && last.contains("; done in "), "{train}");
    assert!(train.lines().any(|l| l.contains(": validation loss ") && l.contains(" accuracy ")), "{train}");
    let eval = stage("ft-evaluate", "device: cpu\nbatch_size: 32\n", &[("tokenize", dir(1)), ("train", dir(2))]);
    // Evaluation takes well under artifact::TICK_GAP here: a line for its end alone.
    let ticks: Vec<&str> = eval.lines().filter(|l| l.contains("/160 examples; ")).collect();
    assert!(ticks.len() == 1 && ticks[0].starts_with("160/160 examples; "), "{eval}");
}

/// TensorBoard's own event reader finds every scalar of train's log in the artifact's `tb/`,
/// at the log's steps and values (as f32).
fn tensorboard_reads_the_curves(train: &Path) {
    let Some(python) = tests::venv_python_with("tensorboard") else {
        return tests::skip("reading train's event files with TensorBoard", "the venv cannot import tensorboard", true);
    };
    let out = std::process::Command::new(&python).arg(repo().join("tests/fixtures/tb_check.py")).arg(train).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tb: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let log = pipeline::files::LogLine::parse_all(&train.join("log.jsonl"), &std::fs::read_to_string(train.join("log.jsonl")).unwrap()).unwrap();
    let (mut windows, mut evals) = (Vec::new(), Vec::new());
    for l in &log {
        match l {
            pipeline::files::LogLine::Train { step, loss, lr, .. } => windows.push((*step, *loss, *lr)),
            pipeline::files::LogLine::Eval { step, eval, .. } => evals.push((*step, eval.accuracy.unwrap())),
        }
    }
    let series = |tag: &str| -> Vec<(u64, f64)> { tb[tag].as_array().unwrap_or_else(|| panic!("no {tag} in {tb}")).iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap())).collect() };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1e-12) + 1e-7 * a.abs();
    let loss = series("train/loss");
    assert_eq!(loss.len(), windows.len());
    for ((s, v), (step, l, _)) in loss.iter().zip(&windows) {
        assert!(*s == *step && close(*v, *l), "train/loss {s} {v} vs log {step} {l}");
    }
    assert!(series("train/learning_rate").iter().zip(&windows).all(|((s, v), (step, _, lr))| s == step && close(*v, *lr)));
    let acc = series("validation/accuracy");
    assert!(acc.len() == evals.len() && acc.iter().zip(&evals).all(|((s, v), (step, a))| s == step && close(*v, *a)), "{acc:?} vs {evals:?}");
    for tag in ["train/grad_norm", "train/samples_per_second", "train/tokens_per_second", "validation/loss", "validation/f1"] {
        assert!(!series(tag).is_empty(), "{tag}");
    }
}

/// The model card's validation table is the best checkpoint's (not the last validation's), with
/// the class its F1 is of.
fn model_card_shows_the_selected_weights(first: &[runner::StageOutcome]) {
    let train = first[2].artifact.clone().unwrap();
    let summary: pipeline::files::TrainSummary = pipeline::files::read(&train.join("summary.json")).unwrap();
    let best = summary.best_validation.clone().expect("a best validation");
    let card = std::fs::read_to_string(first[4].artifact.clone().unwrap().join("README.md")).unwrap();
    assert!(card.contains(&format!("the selected weights (`best`, step {})", summary.best_step.unwrap())), "{card}");
    assert!(card.contains(&format!("| accuracy | {:.4} |", best.accuracy.unwrap())), "{card}");
    assert!(card.contains(&format!("| f1 (positive class `pos`) | {:.4} |", best.f1.unwrap())), "{card}");
    assert_eq!(best.positive_class.as_deref(), Some("pos"));
    // Validation ran every epoch, so the log holds an earlier, different validation too; the
    // card's numbers are those of the step the weights came from.
    let log = std::fs::read_to_string(train.join("log.jsonl")).unwrap();
    let evals: Vec<pipeline::files::Validation> = pipeline::files::LogLine::parse_all(&train.join("log.jsonl"), &log)
        .unwrap()
        .into_iter()
        .filter_map(|l| match l {
            pipeline::files::LogLine::Eval { step, eval, .. } if Some(step) == summary.best_step => Some(eval),
            _ => None,
        })
        .collect();
    assert_eq!(evals, vec![best]);
}

/// Tensor names and shapes, config and files of an export against what transformers itself writes
/// for this model (tests/fixtures/export/golden.json, from make_golden.py): the check that runs
/// even where transformers is not installed.
fn matches_the_golden_listing(export: &Path) {
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("tests/fixtures/export/golden.json")).unwrap()).unwrap();
    let bytes = std::fs::read(export.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ours: std::collections::BTreeMap<String, Vec<usize>> = st.tensors().into_iter().map(|(k, v)| (k, v.shape().to_vec())).collect();
    let theirs: std::collections::BTreeMap<String, Vec<usize>> = serde_json::from_value(golden["tensors"].clone()).unwrap();
    assert_eq!(ours, theirs, "tensor names and shapes differ from transformers' own save_pretrained");
    let config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(export.join("config.json")).unwrap()).unwrap();
    let golden_config = golden["config"].as_object().unwrap();
    for (k, v) in &config {
        match golden_config.get(k) {
            Some(g) => assert_eq!(v, g, "config.json `{k}`"),
            // Written by us for readers that do not derive them: transformers accepts both.
            None => assert!(k == "num_labels" || k == "dtype", "config.json has `{k}`, which transformers does not write"),
        }
    }
    for k in ["architectures", "model_type", "id2label", "label2id", "problem_type", "vocab_size", "hidden_size", "num_hidden_layers",
              "num_attention_heads", "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
              "pad_token_id", "position_embedding_type"]
    {
        assert!(config.contains_key(k), "config.json lacks `{k}`");
    }
    for f in golden["files"].as_array().unwrap() {
        assert!(export.join(f.as_str().unwrap()).exists(), "the export lacks {f}, which save_pretrained writes");
    }
}
