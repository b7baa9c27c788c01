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

/// A tiny config of `family` with every dropout off, as both sides load it.
fn without_dropout(family: &str) -> serde_json::Value {
    let layers = serde_json::json!({"vocab_size": 64, "max_position_embeddings": 40, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0});
    let mut c = match family {
        "bert" => serde_json::json!({"model_type": "bert", "type_vocab_size": 2}),
        "roberta" => serde_json::json!({"model_type": "roberta", "type_vocab_size": 1, "pad_token_id": 1}),
        "distilbert" => {
            return serde_json::json!({"model_type": "distilbert", "vocab_size": 64, "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64,
                "max_position_embeddings": 40, "dropout": 0.0, "attention_dropout": 0.0, "seq_classif_dropout": 0.0})
        }
        // A window of 2 positions each way, shorter than the rows; every ModernBERT dropout is 0 by default.
        _ => {
            return serde_json::json!({"model_type": "modernbert", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 3,
                "num_attention_heads": 2, "intermediate_size": 48, "local_attention": 4, "global_attn_every_n_layers": 2, "pad_token_id": 0})
        }
    };
    c.as_object_mut().unwrap().extend(layers.as_object().unwrap().clone());
    c
}

/// Our LoRA training takes the steps peft's takes under HF Trainer. From the same start (our base,
/// head and `lora_A`; `lora_B` zero), with dropout off and the whole split as every step's batch
/// (so that no sampling or batch order can differ), 10 AdamW steps with weight decay, clipping and
/// the linear schedule end at the same adapters and head, and the same loss at every step, for
/// every family. What is left between the two sides in a real run is then their random draws
/// (dropout masks, the head's and `lora_A`'s initial values, the batch order).
#[test]
fn lora_training_follows_peft_under_hf_trainer() {
    let Some(python) = tests::venv_python_with("peft") else {
        return tests::skip("LoRA training against peft's under HF Trainer", "the venv cannot import peft", true);
    };
    let _rng = tests::torch_rng();
    let (tmp, train_s, _) = crate::train::task(24);
    let n = train_s.len();
    let steps = 10;
    let p = crate::train::params(&format!(
        "device: cpu\nepochs: {steps}\nlearning_rate: 1.0e-2\nweight_decay: 0.3\nmax_grad_norm: 1.0\nbatch_size: {n}\nlog_every_steps: 1\nlora: {{dropout: 0.0}}\n"
    ));
    for family in ["bert", "roberta", "distilbert", "modernbert"] {
        let dir = tmp.path().join(family);
        std::fs::create_dir_all(&dir).unwrap();
        let json = without_dropout(family);
        std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
        let config = model::Config::from_file(&dir.join("config.json")).unwrap();
        let mut m = model::Model::new(config, 2, p.lora.as_ref(), tch::Device::Cpu, 5).unwrap();
        let start = m.params.host_copy(tch::Kind::Float);
        let (adapters, base): (Vec<_>, Vec<_>) = start.into_iter().partition(|(name, _)| name.contains(".lora_"));
        tch::Tensor::write_safetensors(&base, dir.join("model.safetensors")).unwrap();
        tch::Tensor::write_safetensors(&adapters, dir.join("lora_init.safetensors")).unwrap();
        let pad = json["pad_token_id"].as_i64().unwrap_or(0);
        let width = (0..n).map(|i| train_s.length(i)).max().unwrap();
        let rows: Vec<Vec<i64>> = (0..n).map(|i| train_s.ids(i).into_iter().map(i64::from).collect()).collect();
        let padded = |f: &dyn Fn(&[i64]) -> Vec<i64>| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
        let lora = m.lora.clone().unwrap();
        let case = serde_json::json!({
            "input_ids": padded(&|r| r.iter().copied().chain(std::iter::repeat(pad)).take(width).collect()),
            "attention_mask": padded(&|r| (0..width).map(|j| i64::from(j < r.len())).collect()),
            "labels": (0..n).map(|i| train_s.label(i)).collect::<Vec<_>>(),
            "r": lora.r, "alpha": lora.alpha, "target_modules": lora.target_modules, "modules_to_save": lora.modules_to_save,
            "steps": steps, "learning_rate": p.learning_rate, "weight_decay": p.weight_decay, "max_grad_norm": p.max_grad_norm,
        });
        std::fs::write(dir.join("case.json"), case.to_string()).unwrap();

        let mut j = crate::train::job(&p, &mut m, &train_s, &train_s, &dir.join("work"), None);
        j.pad_id = pad as u32;
        let out = train::trainer::run(j).unwrap();
        assert_eq!(out.state.step, steps, "{family}: one step per epoch");
        let log = std::fs::read_to_string(dir.join("work/log.jsonl")).unwrap();
        let ours_losses: Vec<f64> = log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64()).collect();

        let run = std::process::Command::new(&python).arg(repo().join("tests/fixtures/lora_train_check.py")).arg(&dir).output().unwrap();
        assert!(run.status.success(), "{family}: {}", String::from_utf8_lossy(&run.stderr));
        let hf: serde_json::Value = serde_json::from_slice(run.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
        let hf_losses: Vec<f64> = hf["losses"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(ours_losses.len(), hf_losses.len(), "{family}: a loss per step; ours {ours_losses:?}, HF {hf_losses:?}");
        for (a, b) in ours_losses.iter().zip(&hf_losses) {
            assert!((a - b).abs() < 1e-5, "{family}: losses per step, ours {ours_losses:?}, HF {hf_losses:?}");
        }
        // (A frozen random encoder learns slowly: the loss moves, it need not fall within 10 steps.)
        let spread = ours_losses.iter().fold(f64::MIN, |a, &b| a.max(b)) - ours_losses.iter().fold(f64::MAX, |a, &b| a.min(b));
        assert!(spread > 1e-3, "{family}: the steps did not move the loss: {ours_losses:?}");

        let theirs: std::collections::BTreeMap<String, tch::Tensor> = tch::Tensor::read_safetensors(dir.join("peft_trained.safetensors")).unwrap().into_iter().collect();
        let trained = m.params.host_copy_trainable(tch::Kind::Float);
        let mut names: Vec<&String> = trained.iter().map(|(n, _)| n).collect();
        names.sort();
        assert_eq!(names, theirs.keys().collect::<Vec<_>>(), "{family}: the same tensors train on both sides");
        // Adam divides by each element's gradient scale, so an element whose gradient is near zero
        // turns float noise into a visible step: compare each tensor's distance between the two
        // sides with how far it moved. A misplaced step of the schedule, a clip or a decay group
        // (the decay is large here so that it shows) is a percent or more; noise is ~1e-4.
        let mut worst = (0.0, String::new());
        for (name, t) in &trained {
            let moved = (t - &adapters_or_base(name, &adapters, &base)).norm().double_value(&[]);
            assert!(moved > 1e-3, "{family}: {name} did not train (moved {moved:e})");
            let apart = (t - &theirs[name]).norm().double_value(&[]) / moved;
            if apart > worst.0 {
                worst = (apart, name.clone());
            }
        }
        eprintln!("{family}: after {steps} steps ours and peft's differ by at most {:.1e} of how far a tensor moved ({}); losses {ours_losses:.4?}", worst.0, worst.1);
        assert!(worst.0 < 1e-3, "{family}: {} ends {:.1e} of its update away from peft's after {steps} steps", worst.1, worst.0);
    }
}

/// A tensor's starting value, from the adapters' or the base's list.
fn adapters_or_base(name: &str, adapters: &[(String, tch::Tensor)], base: &[(String, tch::Tensor)]) -> tch::Tensor {
    adapters.iter().chain(base).find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone()).unwrap()
}
