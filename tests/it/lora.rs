//! LoRA end to end: `train.lora: {}` on every family's tiny model through the runner and the
//! stage binaries, with `export.format: both`; what trains, what the optimizer and checkpoints
//! hold, PEFT's adapter files, and (when peft is importable) `PeftModel.from_pretrained` over the
//! base giving our logits with the head intact, as the merged export does.

use std::path::Path;

use tests::repo;

use crate::run_pipeline as run;

const TEXTS: [&str; 3] = ["the movie was great and the acting was wonderful", "frankly the plot was boring", "ok"];

/// The smoke pipeline on `family`'s tiny model (`bert`: the tiny BERT) with LoRA's defaults at
/// a LoRA learning rate, evaluated on its train split, exported as both merged model and adapter.
fn lora_pipeline(store: &Path, family: &str) -> pipeline::Pipeline {
    let model = if family == "bert" { "tests/fixtures/tiny-bert".to_string() } else { format!("tests/fixtures/families/{family}") };
    let text = std::fs::read_to_string(repo().join("pipelines/smoke.yaml"))
        .unwrap()
        .replace("tests/fixtures/tiny-bert", &model)
        .replace("tests/fixtures", &tests::fixtures().display().to_string())
        .replace("name: smoke", &format!("name: lora-{family}\nstore: {}", store.display()))
        .replace("  epochs: 8\n  learning_rate: 1.0e-3", "  epochs: 20\n  learning_rate: 5.0e-3\n  lora: {}")
        .replace("  split: test", "  split: train")
        .replace("  dtype: fp32", "  dtype: fp32\n  format: both");
    assert!(text.contains("lora: {}"), "smoke.yaml changed: {text}");
    pipeline::parse(Path::new("lora.yaml"), &text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn lora_trains_every_family_and_peft_loads_the_adapter_with_its_head() {
    let _rng = tests::torch_rng();
    let tmp = tempfile::tempdir().unwrap();
    for (family, targets, head) in [
        ("bert", &["query", "value"][..], &["pooler", "classifier"][..]),
        ("roberta", &["query", "value"], &["classifier"]),
        ("xlm-roberta", &["query", "value"], &["classifier"]),
        ("distilbert", &["q_lin", "v_lin"], &["pre_classifier", "classifier"]),
        ("modernbert", &["Wqkv"], &["head", "classifier"]),
    ] {
        let out = run(&lora_pipeline(&tmp.path().join("store"), family));
        let metrics: pipeline::files::EvalMetrics = pipeline::files::read(&out[3].artifact.clone().unwrap().join("metrics.json")).unwrap();
        let acc = metrics.single().unwrap().accuracy;
        // A frozen random tiny encoder is a hard base: the adapters and head must still learn.
        assert!(acc >= if family == "bert" { 0.85 } else { 0.65 }, "{family}: train accuracy {acc} (chance 0.5)");
        let train = out[2].artifact.clone().unwrap();
        let hp: pipeline::files::Hparams = pipeline::files::read(&train.join("hparams.json")).unwrap();
        let lora = hp.lora.clone().unwrap();
        assert_eq!((lora.r, lora.alpha, lora.dropout), (8, 16.0, 0.1));
        assert_eq!(lora.target_modules, targets, "{family}: PEFT's defaults");
        assert_eq!(lora.modules_to_save, head, "{family}: the head trains in full");
        let s: pipeline::files::TrainSummary = pipeline::files::read(&train.join("summary.json")).unwrap();
        assert!(s.trainable_parameters * 5 < s.parameters, "{family}: {} of {} parameters trained", s.trainable_parameters, s.parameters);
        assert_eq!(s.optimizer_state_bytes, 8 * s.trainable_parameters);
        assert!(s.checkpoint_bytes > s.optimizer_state_bytes && s.checkpoint_bytes < 4 * s.parameters, "{family}: checkpoint {} bytes", s.checkpoint_bytes);
        let export = out[4].artifact.clone().unwrap();
        adapter_is_peft_shaped(&export.join("adapter"), &lora, family);
        let base = out[0].artifact.clone().unwrap().join("model");
        peft_agrees(&base, &export, &train, family);
        // Predict takes the export artifact (its merged model); an adapter alone is named as one.
        let store = tmp.path().join("store");
        let s = predict::source::resolve(export.to_str().unwrap(), &store, pipeline::Weights::Best).unwrap_or_else(|e| panic!("{family}: {e:#}"));
        assert!(s.weights.ends_with("merged/model.safetensors"), "{family}: {}", s.weights.display());
        let e = predict::source::resolve(export.join("adapter").to_str().unwrap(), &store, pipeline::Weights::Best).err().unwrap().to_string();
        assert!(e.contains("a PEFT adapter") && e.contains("train artifact"), "{e}");
    }
}

/// `adapter_config.json` says what PEFT needs; the adapter file holds `lora_A` / `lora_B` of
/// every adapted layer and every head tensor, under `base_model.model.`, and nothing else.
fn adapter_is_peft_shaped(dir: &Path, lora: &pipeline::files::Lora, family: &str) {
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["peft_type"].as_str(), config["task_type"].as_str()), (Some("LORA"), Some("SEQ_CLS")));
    assert_eq!((config["r"].clone(), config["lora_alpha"].clone(), config["lora_dropout"].clone()), (serde_json::json!(8), serde_json::json!(16.0), serde_json::json!(0.1)));
    assert_eq!(config["target_modules"], serde_json::json!(lora.target_modules));
    assert_eq!(config["modules_to_save"], serde_json::json!(lora.modules_to_save));
    assert!(config["base_model_name_or_path"].as_str().unwrap().ends_with(if family == "bert" { "tiny-bert" } else { family }), "{config}");
    let names: Vec<String> = tch::Tensor::read_safetensors(dir.join("adapter_model.safetensors")).unwrap().into_iter().map(|(n, _)| n).collect();
    for m in &lora.adapted {
        for ab in ["lora_A", "lora_B"] {
            assert!(names.contains(&format!("base_model.model.{m}.{ab}.weight")), "{family}: no {ab} for {m} in {names:?}");
        }
    }
    let head: Vec<&String> = names.iter().filter(|n| !n.contains(".lora_")).collect();
    assert!(head.iter().any(|n| n.starts_with("base_model.model.classifier.")), "{family}: {names:?}");
    assert_eq!(head.len() + 2 * lora.adapted.len(), names.len());
    for f in ["tokenizer.json", "tokenizer_config.json", "README.md"] {
        assert!(dir.join(f).exists(), "{family}: {f}");
    }
    let card = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(card.contains("library_name: peft") && card.contains("PeftModel.from_pretrained"), "{card}");
}

/// peft loads the adapter over the base and gives our logits to 1e-4 — ours from our own LoRA
/// model (base + the adapter file, unmerged) — with the trained head in place of the base's
/// random one; peft's merge and our merged export give them too.
fn peft_agrees(base: &Path, export: &Path, train: &Path, family: &str) {
    let Some(python) = tests::venv_python_with("peft") else {
        return tests::skip("the LoRA export's peft round trip", "the venv cannot import peft", true);
    };
    let out = std::process::Command::new(&python).arg(repo().join("tests/fixtures/lora_check.py")).arg(base).arg(export).args(TEXTS).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hf: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hf["head_replaced"], true, "{family}: peft kept the base's random head");
    for w in hf["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_lowercase()) {
        assert!(!(w.contains("unexpected") || w.contains("not used") || w.contains("missing adapter")), "{family}: peft warned: {w}");
    }
    let hp: pipeline::files::Hparams = pipeline::files::read(&train.join("hparams.json")).unwrap();
    let config = model::Config::from_file(&base.join("config.json")).unwrap();
    let (m, _) = model::Model::load_with(config, 2, hp.params.lora.as_ref(), &base.join("model.safetensors"), tch::Device::Cpu, 0).unwrap();
    let adapter: Vec<(String, tch::Tensor)> = tch::Tensor::read_safetensors(export.join("adapter/adapter_model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n.strip_prefix("base_model.model.").unwrap().to_string(), t))
        .collect();
    assert_eq!(m.params.assign(&adapter, "adapter").unwrap().len(), adapter.len());
    let rows = |k: &str| -> Vec<i64> { hf[k].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap())).collect() };
    let b = TEXTS.len() as i64;
    let (ids, mask) = (tch::Tensor::from_slice(&rows("input_ids")).view([b, -1]), tch::Tensor::from_slice(&rows("attention_mask")).view([b, -1]));
    let ours: Vec<f32> = Vec::try_from(tch::no_grad(|| m.forward(&model::Inputs::new(&ids, Some(&mask)), false)).flatten(0, -1)).unwrap();
    for key in ["peft", "peft_merged", "merged"] {
        let theirs: Vec<f64> = hf[key].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap())).collect();
        assert_eq!(theirs.len(), ours.len());
        for (a, t) in ours.iter().zip(&theirs) {
            assert!((*a as f64 - t).abs() < 1e-4, "{family} {key}: ours {ours:?} vs {theirs:?}");
        }
    }
}
