//! The export stage: a directory that `transformers.AutoModelForSequenceClassification` and
//! `AutoTokenizer` load with `from_pretrained(dir)`, no warnings about weights:
//!
//! ```text
//! model.safetensors        HF tensor names (classifier included), fp32, bf16 or fp16
//! config.json              the family's *ForSequenceClassification, num_labels, id2label, label2id, dtype
//! tokenizer.json           the tokenizer used for training (no baked-in truncation or padding)
//! tokenizer_config.json    with model_max_length = the pipeline's max_length
//! special_tokens_map.json, vocab.txt (when the base model has them)
//! README.md                model card: metrics, data and base-model revisions, hyper-parameters, lineage
//! ```
//!
//! With `format: peft` (a LoRA run) the directory is PEFT's adapter instead, which
//! `PeftModel.from_pretrained(base, dir)` loads over the base model:
//!
//! ```text
//! adapter_model.safetensors  lora_A / lora_B of every adapted layer and the head, base_model.model.* names
//! adapter_config.json        peft_type LORA, task_type SEQ_CLS, r, lora_alpha, lora_dropout, target_modules,
//!                            modules_to_save, base_model_name_or_path (and revision: the base's commit)
//! tokenizer files, README.md as above
//! ```
//!
//! `format: both` writes the two side by side, in `merged/` and `adapter/`.

use std::path::Path;

use anyhow::{bail, Context as _};
use pipeline::files::{ClassifierLabels, DatasetInfo, Hparams, Lora, Origin, TokenizeMeta, TrainSummary};
use pipeline::{Dtype, ExportFormat, ExportParams, Task, Weights};
use safetensors::{Dtype as StDtype, SafeTensors};
use serde_json::json;

/// Bump when the exported layout changes.
pub const SCHEMA_VERSION: u32 = 3;

/// The stage's identity, with the rules that its three inputs are one lineage: the weights were
/// trained on the tokenize input, whose tokenizer came from the download input.
pub fn stage_def() -> artifact::StageDef {
    artifact::stage_def!("export", SCHEMA_VERSION).with_lineage(&[
        artifact::Lineage { input: "train", made_from: "tokenize" },
        artifact::Lineage { input: "tokenize", made_from: "download" },
        artifact::Lineage { input: "train", made_from: "download" },
    ])
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("{}: not JSON", path.display()))
}

/// Rewrites fp32 safetensors as `dtype` (other tensors are copied as they are).
pub fn convert_weights(src: &Path, dst: &Path, dtype: Dtype) -> anyhow::Result<usize> {
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let st = SafeTensors::deserialize(&bytes).with_context(|| format!("{}: not safetensors", src.display()))?;
    let mut owned: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let (dt, data) = match (view.dtype(), dtype) {
            (StDtype::F32, Dtype::Bf16) => (StDtype::BF16, convert(view.data(), |x| half::bf16::from_f32(x).to_le_bytes())),
            (StDtype::F32, Dtype::Fp16) => (StDtype::F16, convert(view.data(), |x| half::f16::from_f32(x).to_le_bytes())),
            (d, _) => (d, view.data().to_vec()),
        };
        owned.push((name, dt, view.shape().to_vec(), data));
    }
    owned.sort_by(|a, b| a.0.cmp(&b.0));
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| safetensors::tensor::TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<_, _>>()
        .context("building tensors")?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(meta), dst).with_context(|| format!("writing {}", dst.display()))?;
    Ok(owned.len())
}

fn convert(data: &[u8], f: impl Fn(f32) -> [u8; 2]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2);
    for c in data.chunks_exact(4) {
        out.extend_from_slice(&f(f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    }
    out
}

/// The export's inputs, opened.
struct Inputs<'a> {
    p: &'a ExportParams,
    download: &'a artifact::Artifact,
    tokenize: &'a artifact::Artifact,
    train: &'a artifact::Artifact,
    hp: Hparams,
    meta: TokenizeMeta,
    labels: Vec<String>,
    /// The weights file's stem in the train artifact (`best`, `final`).
    which: &'static str,
}

/// What a directory of the export holds: a whole model, or PEFT's adapter over the base.
#[derive(Clone, Copy, PartialEq)]
enum Kind<'a> {
    Model,
    Adapter(&'a Lora),
}

/// Runs the stage.
pub fn run(p: &ExportParams, download: &artifact::Artifact, tokenize: &artifact::Artifact, train: &artifact::Artifact, out: &Path) -> anyhow::Result<serde_json::Value> {
    let hp: Hparams = pipeline::files::read(&train.dir.join("hparams.json"))?;
    let config_path = train.dir.join("config.json");
    let config = read_json(&config_path)?;
    let labels = serde_json::from_value::<ClassifierLabels>(config)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?
        .names(&config_path)
        .map_err(anyhow::Error::msg)?;
    let meta: TokenizeMeta = pipeline::files::read(&tokenize.dir.join("meta.json"))?;
    let which = match p.weights {
        Weights::Best => "best",
        Weights::Final => "final",
    };
    let lora = hp.lora.clone();
    let x = Inputs { p, download, tokenize, train, hp, meta, labels, which };
    let adapter = match (p.format, &lora) {
        (ExportFormat::Merged, _) => None,
        (_, Some(l)) => Some(l),
        (_, None) => bail!("export.format peft and both write a PEFT adapter, but train {} was a full fine-tune (no train.lora); use format: merged", train.manifest.key),
    };
    let summary = match (p.format, adapter) {
        (ExportFormat::Both, Some(l)) => {
            let (merged, adapter) = (out.join("merged"), out.join("adapter"));
            for d in [&merged, &adapter] {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            }
            json!({"merged": write_dir(&x, Kind::Model, &merged)?, "adapter": write_dir(&x, Kind::Adapter(l), &adapter)?})
        }
        (_, Some(l)) => write_dir(&x, Kind::Adapter(l), out)?,
        (_, None) => write_dir(&x, Kind::Model, out)?,
    };
    Ok(summary)
}

/// Writes one loadable directory: the weights (a whole model with its config, or the adapter
/// with `adapter_config.json`), the tokenizer and the model card.
fn write_dir(x: &Inputs, kind: Kind, out: &Path) -> anyhow::Result<serde_json::Value> {
    let dtype_name = match x.p.dtype {
        Dtype::Fp32 => "float32",
        Dtype::Bf16 => "bfloat16",
        Dtype::Fp16 => "float16",
    };
    let n = match kind {
        Kind::Model => {
            let n = convert_weights(&x.train.dir.join(format!("{}.safetensors", x.which)), &out.join("model.safetensors"), x.p.dtype)?;
            let mut config = read_json(&x.train.dir.join("config.json"))?;
            config["dtype"] = json!(dtype_name);
            std::fs::write(out.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
            n
        }
        Kind::Adapter(lora) => {
            let src = x.train.dir.join(format!("{}.adapter.safetensors", x.which));
            let n = convert_weights(&src, &out.join("adapter_model.safetensors"), x.p.dtype)?;
            let origin: Origin = pipeline::files::read(&x.download.dir.join("model-source.json"))?;
            std::fs::write(out.join("adapter_config.json"), serde_json::to_vec_pretty(&adapter_config(lora, &origin))?)?;
            n
        }
    };
    copy_tokenizer(x, kind, out)?;
    std::fs::write(out.join("README.md"), model_card(x, kind, dtype_name)?)?;
    let what = if kind == Kind::Model { "model" } else { "PEFT adapter" };
    eprintln!("exported the {what} to {}: {n} tensors ({dtype_name}) with config and tokenizer", out.display());
    Ok(json!({"tensors": n, "dtype": dtype_name, "max_length": x.meta.max_length}))
}

/// PEFT's `adapter_config.json` for a LoRA run over the base `origin` names (the Hub repository
/// at its commit, or the local directory).
fn adapter_config(l: &Lora, origin: &Origin) -> serde_json::Value {
    json!({
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": origin.repo.clone().or_else(|| origin.path.clone()),
        "revision": origin.commit,
        "r": l.r,
        "lora_alpha": l.alpha,
        "lora_dropout": l.dropout,
        "target_modules": l.target_modules,
        "modules_to_save": l.modules_to_save,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "use_rslora": false,
        "use_dora": false,
        "rank_pattern": {},
        "alpha_pattern": {},
    })
}

/// The tokenizer used for training, with `model_max_length` the pipeline's max_length.
fn copy_tokenizer(x: &Inputs, kind: Kind, out: &Path) -> anyhow::Result<()> {
    std::fs::copy(x.tokenize.dir.join("tokenizer.json"), out.join("tokenizer.json")).context("copying tokenizer.json")?;
    let model_dir = x.download.dir.join("model");
    let mut tok_cfg = read_json(&model_dir.join("tokenizer_config.json")).unwrap_or_else(|_| json!({}));
    tok_cfg["model_max_length"] = json!(x.meta.max_length);
    // A PEFT adapter's directory has no config.json whose model_type tells AutoTokenizer the
    // class: name it.
    if let (Kind::Adapter(_), Some(class)) = (kind, &x.hp.tokenizer_class) {
        if tok_cfg.get("tokenizer_class").is_none_or(serde_json::Value::is_null) {
            tok_cfg["tokenizer_class"] = json!(class);
        }
    }
    if let Some(o) = tok_cfg.as_object_mut() {
        o.remove("name_or_path");
    }
    std::fs::write(out.join("tokenizer_config.json"), serde_json::to_vec_pretty(&tok_cfg)?)?;
    for extra in ["special_tokens_map.json", "vocab.txt"] {
        let src = model_dir.join(extra);
        if src.exists() {
            std::fs::copy(&src, out.join(extra)).with_context(|| format!("copying {extra}"))?;
        }
    }
    Ok(())
}

fn model_card(x: &Inputs, kind: Kind, dtype: &str) -> anyhow::Result<String> {
    let model_src: Origin = pipeline::files::read(&x.download.dir.join("model-source.json"))?;
    let info: DatasetInfo = pipeline::files::read(&x.download.dir.join("dataset/info.json"))?;
    let data_src = &info.source;
    let base = model_src.name();
    let dataset = data_src.name();
    let tsum: TrainSummary = pipeline::files::read(&x.train.dir.join("summary.json"))?;
    let (hp, meta, labels) = (&x.hp, &x.meta, &x.labels);
    let max_length = meta.max_length;
    let mut s = String::new();
    let library = if kind == Kind::Model { "transformers" } else { "peft" };
    s.push_str(&format!("---\nlibrary_name: {library}\npipeline_tag: text-classification\nbase_model: {base}\n"));
    if data_src.repo.is_some() {
        s.push_str(&format!("datasets:\n- {dataset}\n"));
    }
    s.push_str("---\n\n");
    s.push_str(&format!("# {base} fine-tuned on {dataset}\n\n"));
    let pairs = meta.pair_truncation.is_some();
    let what = match hp.task {
        Task::SingleLabel => format!("Sequence classification ({} classes: {})", labels.len(), labels.join(", ")),
        Task::MultiLabel => format!("Multi-label classification ({} labels, any number per text: {})", labels.len(), labels.join(", ")),
        Task::Regression => format!("Regression (one score, `{}`)", labels.join("")),
    };
    s.push_str(&format!(
        "{what}{}, fine-tuned from [{base}] on {dataset}. Task: `{}` (`problem_type: {}`).\n\n",
        if pairs { " of sentence pairs" } else { "" },
        hp.task.name(),
        hp.task.problem_type()
    ));
    if let (Some(l), Kind::Model) = (&hp.lora, kind) {
        s.push_str(&format!("Trained with LoRA (r {}, alpha {}, on {}); the adapters are merged into these weights.\n\n", l.r, l.alpha, l.target_modules.join(", ")));
    }
    s.push_str(&usage(kind, &base, labels, hp.task, pairs, max_length));
    s.push_str(&validation_section(x.p.weights, &tsum, hp));
    s.push_str("Test-set metrics are in the pipeline's evaluate artifact (`metrics.json`, `report.md`).\n\n");
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    s.push_str(&format!(
        "## Sources\n\n| | |\n|---|---|\n| base model | `{base}` revision `{}` commit `{}` |\n| dataset | `{dataset}` revision `{}` commit `{}` |\n| max_length | {max_length} ({}) |\n| weights dtype | {dtype} |\n\n",
        or_dash(&model_src.revision),
        or_dash(&model_src.commit),
        or_dash(&data_src.revision),
        or_dash(&data_src.commit),
        serde_json::to_value(meta.truncation).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
    ));
    s.push_str(&format!("## Hyper-parameters\n\n```json\n{}\n```\n\n", serde_json::to_string_pretty(&hp.params)?));
    s.push_str(&format!(
        "Training: {} steps, {:.1} s, {:.1} samples/s on {} ({}); {} of {} parameters trained.\n\n",
        tsum.steps, tsum.train_seconds, tsum.samples_per_second, hp.device, hp.precision, tsum.trainable_parameters, tsum.parameters
    ));
    s.push_str(&format!(
        "## Lineage (artifact keys)\n\n- download `{}`\n- tokenize `{}`\n- train `{}`\n",
        x.download.manifest.key, x.tokenize.manifest.key, x.train.manifest.key
    ));
    Ok(s)
}

/// The model card's Python snippet: load the directory (a whole model, or the adapter over its
/// base with the head's labels) and classify a text.
fn usage(kind: Kind, base: &str, labels: &[String], task: Task, pairs: bool, max_length: usize) -> String {
    let mut s = String::from("```python\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n");
    s.push_str("tok = AutoTokenizer.from_pretrained(\"path/to/this/dir\")\n");
    match kind {
        Kind::Model => s.push_str("model = AutoModelForSequenceClassification.from_pretrained(\"path/to/this/dir\")\n"),
        Kind::Adapter(_) => {
            let id2label: Vec<String> = labels.iter().enumerate().map(|(i, n)| format!("{i}: {n:?}")).collect();
            s.push_str("from peft import PeftModel\n");
            s.push_str(&format!(
                "base = AutoModelForSequenceClassification.from_pretrained(\"{base}\", num_labels={}, id2label={{{}}}, problem_type=\"{}\")\n",
                labels.len(),
                id2label.join(", "),
                task.problem_type()
            ));
            s.push_str("model = PeftModel.from_pretrained(base, \"path/to/this/dir\")  # or .merge_and_unload()\n");
        }
    }
    let texts = if pairs { "[\"a first text\"], [\"its second text\"]" } else { "[\"a great film\"]" };
    s.push_str(&format!("logits = model(**tok({texts}, truncation=True, max_length={max_length}, return_tensors=\"pt\")).logits\n"));
    s.push_str(match task {
        Task::SingleLabel => "label = model.config.id2label[logits.argmax(-1).item()]\n```\n\n",
        Task::MultiLabel => "labels = [model.config.id2label[i] for i, p in enumerate(logits.sigmoid()[0]) if p > 0.5]\n```\n\n",
        Task::Regression => "score = logits[0, 0].item()\n```\n\n",
    });
    s
}

/// The model card's validation table: the metrics of the weights exported (`best`: the selected
/// checkpoint's; `final`: the last validation's, which ran at the end of training).
fn validation_section(weights: Weights, tsum: &TrainSummary, hp: &Hparams) -> String {
    let (what, val) = match weights {
        Weights::Best => (format!("the selected weights (`best`, step {})", tsum.best_step.map(|s| s.to_string()).unwrap_or_else(|| "-".into())), &tsum.best_validation),
        Weights::Final => (format!("the final weights (step {})", tsum.steps), &tsum.last_validation),
    };
    let Some(v) = val else {
        return format!("## Validation metrics\n\nNo validation ran for {what}.\n\n");
    };
    let mut s = format!("## Validation metrics (split `{}`, {what}; selected by `{}`)\n\n| metric | value |\n|---|---|\n", hp.params.validation_split, hp.select_metric.name());
    for (name, value) in v.figures() {
        let name = match (name, &v.positive_class, hp.task) {
            ("f1", Some(pc), _) => format!("f1 (positive class `{pc}`)"),
            ("accuracy", _, Task::MultiLabel) => "subset accuracy".into(),
            _ => name.to_string(),
        };
        s.push_str(&format!("| {name} | {value:.4} |\n"));
    }
    s.push_str(&format!("| examples | {} |\n\n", v.examples));
    s
}

/// Marks a directory as written by ft-export, so a later export may replace its files.
pub const MARKER: &str = ".ft-export";

/// Copies an export artifact into `dir` (created if missing). A non-empty `dir` that was not
/// written by us is refused unless `force`.
pub fn copy_to(src: &Path, dir: &Path, force: bool) -> anyhow::Result<()> {
    if dir.exists() {
        let ours = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !ours && !empty && !force {
            bail!("{} exists and was not written by ft-export; choose another --to or pass --force-to to replace its files", dir.display());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))?.flatten() {
        let name = e.file_name();
        if name == "manifest.json" {
            continue;
        }
        copy_tree(&e.path(), &dir.join(&name))?;
    }
    std::fs::write(dir.join(MARKER), src.display().to_string()).with_context(|| format!("writing {}", dir.join(MARKER).display()))?;
    eprintln!("copied the export to {}", dir.display());
    Ok(())
}

/// Copies a file, or a directory with everything in it (`format: both` has two).
fn copy_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    if src.is_dir() {
        std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
        for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))?.flatten() {
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        return Ok(());
    }
    std::fs::copy(src, dst).map(|_| ()).with_context(|| format!("copying {} to {}", src.display(), dst.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // clippy.toml's allow-unwrap-in-tests misses some of these tests
    use super::*;

    #[test]
    fn copy_to_refuses_foreign_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("art");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("config.json"), "{}").unwrap();
        std::fs::write(src.join("manifest.json"), "{}").unwrap();
        let dst = tmp.path().join("mine");
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(dst.join("notes.txt"), "keep me").unwrap();
        let e = copy_to(&src, &dst, false).unwrap_err().to_string();
        assert!(e.contains("not written by ft-export") && e.contains("--force-to"), "{e}");
        assert!(!dst.join("config.json").exists(), "nothing copied");
        copy_to(&src, &dst, true).unwrap();
        assert!(dst.join("config.json").exists() && !dst.join("manifest.json").exists());
        // Ours now: a second export replaces it without --force-to; a new directory is fine.
        copy_to(&src, &dst, false).unwrap();
        copy_to(&src, &tmp.path().join("new"), false).unwrap();
    }

    #[test]
    fn bf16_and_fp16_conversion() {
        let tmp = tempfile::tempdir().unwrap();
        let vals: Vec<f32> = vec![1.0, -2.5, 0.1, 65504.0];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let v = safetensors::tensor::TensorView::new(StDtype::F32, vec![2, 2], &bytes).unwrap();
        let src = tmp.path().join("a.safetensors");
        safetensors::tensor::serialize_to_file(vec![("w".to_string(), v)], None, &src).unwrap();
        for (d, sd) in [(Dtype::Bf16, StDtype::BF16), (Dtype::Fp16, StDtype::F16), (Dtype::Fp32, StDtype::F32)] {
            let dst = tmp.path().join("b.safetensors");
            convert_weights(&src, &dst, d).unwrap();
            let b = std::fs::read(&dst).unwrap();
            let st = SafeTensors::deserialize(&b).unwrap();
            let t = st.tensor("w").unwrap();
            assert_eq!(t.dtype(), sd);
            assert_eq!(t.shape(), &[2, 2]);
            if d == Dtype::Bf16 {
                let back: Vec<f32> = t.data().chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
                assert_eq!(back[0], 1.0);
                assert_eq!(back[1], -2.5);
                assert!((back[2] - 0.1).abs() < 1e-3);
            }
        }
    }
}
