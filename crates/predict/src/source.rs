//! Where the model to predict with comes from, and what it was trained on: a train or export
//! artifact (by its directory or by its key or a prefix of the key, in a store), or any local
//! Hugging Face directory of a supported family whose weights hold a classification head.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use artifact::{Artifact, Store};
use pipeline::files::TokenizeMeta;
use pipeline::{Task, Weights};
use serde_json::Value;

/// A classifier ready to load, with its tokenizer and, when known, how its training texts were
/// tokenized.
pub struct Source {
    /// For messages: `train artifact <key>`, `export directory <path>`, ...
    pub what: String,
    pub config: model::Config,
    pub weights: PathBuf,
    /// Our own weights file (exact names, all required) rather than a Hugging Face one.
    pub exact: bool,
    /// Where `tokenizer.json` (or `vocab.txt`) is.
    pub tokenizer_dir: PathBuf,
    /// The tokenize artifact's meta.json of the training data, when the model's lineage is in
    /// the store: its max_length, truncation and pair rule are applied to new texts too.
    pub tokenize: Option<TokenizeMeta>,
    pub task: Task,
    /// Class (or label) names in output order; regression: the score's name.
    pub names: Vec<String>,
    /// Multi-label: the threshold an evaluation of these weights tuned, and where it was tuned.
    pub tuned_threshold: Option<(f64, String)>,
    /// The artifacts read (their reader locks keep them from being collected meanwhile).
    _held: Vec<Artifact>,
}

/// Finds `model`: a directory (an artifact, an export copy or a Hugging Face model; for an
/// export made with `format: both`, its `merged/` model), else a train or export artifact key
/// (or the key's first characters) in `store`. `weights` picks a train artifact's file.
pub fn resolve(model: &str, store: &Path, weights: Weights) -> anyhow::Result<Source> {
    let path = Path::new(model);
    if path.is_dir() {
        if path.join("manifest.json").exists() {
            let a = Artifact::open(path).with_context(|| format!("opening the artifact {}", path.display()))?;
            let Some(own) = store_of(&a) else {
                a.verify().map_err(|e| anyhow::anyhow!("{e}: the artifact is damaged; rerun the stage that made it"))?;
                return from_artifact(a, store, weights);
            };
            // Through its store, which verifies it (and finds a version by its key).
            let (stage, key) = (a.manifest.stage.clone(), a.manifest.key.clone());
            let a = Store::open(&own)?.lookup(&stage, &key)?.with_context(|| format!("{stage} artifact {key} failed verification and was removed; rerun its pipeline"))?;
            return from_artifact(a, &own, weights);
        }
        if !path.join("config.json").exists() && path.join("merged/config.json").exists() {
            return from_directory(&path.join("merged"));
        }
        let mut s = from_directory(path)?;
        if let Some((a, tok)) = copied_from(path)? {
            s.what = format!("export copy {} (of export artifact {})", path.display(), a.manifest.key);
            s.tokenize = Some(pipeline::files::read(&tok.dir.join("meta.json"))?);
            s._held = vec![a, tok];
        }
        return Ok(s);
    }
    if !model.is_empty() && model.chars().all(|c| c.is_ascii_hexdigit()) {
        return from_key(model, store, weights);
    }
    bail!(
        "MODEL `{model}` is neither a directory nor an artifact key: give an export directory, a train or export artifact key (or its first characters; --store {} is searched), or a Hugging Face model directory",
        store.display()
    )
}

/// For a copy `ft-export --to` made (its marker file names the export artifact), that artifact
/// and the tokenize artifact it was exported with, when the store still has both: the copy's
/// training settings.
fn copied_from(dir: &Path) -> anyhow::Result<Option<(Artifact, Artifact)>> {
    let Ok(text) = std::fs::read_to_string(dir.join(export::MARKER)) else { return Ok(None) };
    let Ok(a) = Artifact::open(Path::new(text.trim())) else { return Ok(None) };
    let Some(store) = store_of(&a) else { return Ok(None) };
    if a.manifest.stage != "export" {
        return Ok(None);
    }
    Ok(upstream(&a, &store, "tokenize")?.map(|t| (a, t)))
}

/// The store an artifact lies in, when it was opened as `STORE/<stage>/<key>` or as one of its
/// versions, `STORE/.versions/<stage>/<key>/<version>`.
fn store_of(a: &Artifact) -> Option<PathBuf> {
    let name = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(String::from);
    let up = |p: &Path, n: usize| p.ancestors().nth(n).map(Path::to_path_buf);
    let stage_dir = up(&a.path, 1)?;
    if name(&stage_dir)? == a.manifest.stage {
        return up(&a.path, 2);
    }
    let versions = up(&a.path, 3)?;
    (name(&versions)? == ".versions" && name(&up(&a.path, 2)?)? == a.manifest.stage).then(|| up(&a.path, 4)).flatten()
}

/// The one train or export artifact whose key starts with `prefix`.
fn from_key(prefix: &str, store_dir: &Path, weights: Weights) -> anyhow::Result<Source> {
    if !store_dir.is_dir() {
        bail!("`{prefix}` looks like an artifact key, but the store {} does not exist (pass --store DIR, or give a directory)", store_dir.display());
    }
    let store = Store::open(store_dir)?;
    let mut hits: Vec<(String, String)> = Vec::new();
    for stage in ["train", "export"] {
        hits.extend(store.list(stage).into_iter().filter(|a| a.manifest.key.starts_with(prefix)).map(|a| (stage.to_string(), a.manifest.key.clone())));
    }
    let (stage, key) = match hits.as_slice() {
        [one] => one.clone(),
        [] => bail!("no train or export artifact in {} has a key starting with `{prefix}` (`cargo xtask runs` lists the runs)", store_dir.display()),
        many => bail!(
            "`{prefix}` is ambiguous in {}: it starts {}; give more of the key",
            store_dir.display(),
            many.iter().map(|(s, k)| format!("{s} {k}")).collect::<Vec<_>>().join(", ")
        ),
    };
    let a = store.lookup(&stage, &key)?.with_context(|| format!("{stage} artifact {key} failed verification and was removed; rerun its pipeline"))?;
    from_artifact(a, store_dir, weights)
}

fn from_artifact(a: Artifact, store: &Path, weights: Weights) -> anyhow::Result<Source> {
    let key = a.manifest.key.clone();
    let tokenize = upstream(&a, store, "tokenize")?;
    match a.manifest.stage.as_str() {
        "train" => {
            let Some(tok) = tokenize else {
                bail!(
                    "train artifact {key} was trained on a tokenize artifact that is not in the store {} (collected?): rerun its pipeline, or predict with its export directory",
                    store.display()
                )
            };
            let file = match weights {
                Weights::Best => "best.safetensors",
                Weights::Final => "final.safetensors",
            };
            let meta: TokenizeMeta = pipeline::files::read(&tok.dir.join("meta.json"))?;
            let (config, task, names) = read_config(&a.dir.join("config.json"))?;
            Ok(Source {
                what: format!("train artifact {key} ({file})"),
                config,
                weights: a.dir.join(file),
                exact: true,
                tokenizer_dir: tok.dir.clone(),
                tokenize: Some(meta),
                task,
                names,
                tuned_threshold: tuned_threshold(store, &key, weights)?,
                _held: vec![a, tok],
            })
        }
        "export" => {
            let meta = match &tokenize {
                Some(t) => Some(pipeline::files::read::<TokenizeMeta>(&t.dir.join("meta.json"))?),
                None => None,
            };
            // `format: both` holds the model in `merged/`; `format: peft` holds no model.
            let merged = a.dir.join("merged");
            let mut s = from_directory(if merged.join("config.json").exists() { &merged } else { &a.dir })?;
            s.what = format!("export artifact {key}");
            s.tokenize = meta;
            if let (Some(train), Ok(w)) = (a.manifest.inputs.get("train"), serde_json::from_value::<Weights>(a.manifest.params["weights"].clone())) {
                s.tuned_threshold = tuned_threshold(store, &train.key, w)?;
            }
            s._held = std::iter::once(a).chain(tokenize).collect();
            Ok(s)
        }
        other => bail!("{} is a {other} artifact; predict reads a train or an export artifact", a.path.display()),
    }
}

/// The artifact `a` read as its input `name`, when the store still has it.
fn upstream(a: &Artifact, store: &Path, name: &str) -> anyhow::Result<Option<Artifact>> {
    let Some(input) = a.manifest.inputs.get(name) else { return Ok(None) };
    if !store.is_dir() {
        return Ok(None);
    }
    Ok(Store::open(store)?.lookup(&input.stage, &input.key)?)
}

/// A Hugging Face model directory (or an export copied out of the store).
fn from_directory(dir: &Path) -> anyhow::Result<Source> {
    let config_path = dir.join("config.json");
    if !config_path.exists() && dir.join("adapter_config.json").exists() {
        bail!("{}: a PEFT adapter (export.format peft), not a model; predict with the train artifact it was exported from, or an export with format merged or both", dir.display());
    }
    if !config_path.exists() {
        bail!("{}: no config.json; MODEL must be a model directory (an export, or a Hugging Face model saved with save_pretrained)", dir.display());
    }
    let weights = dir.join("model.safetensors");
    if !weights.exists() {
        let why = if dir.join("model.safetensors.index.json").exists() {
            "its weights are sharded (model.safetensors.index.json), which predict does not read yet; save them as one file (save_pretrained with a max_shard_size above the model's size)"
        } else if dir.join("pytorch_model.bin").exists() {
            "only pytorch_model.bin is there; predict reads safetensors: save the model with save_pretrained(dir, safe_serialization=True)"
        } else {
            "no model.safetensors"
        };
        bail!("{}: {why}", dir.display());
    }
    let (config, task, names) = read_config(&config_path)?;
    Ok(Source {
        what: format!("model directory {}", dir.display()),
        config,
        weights,
        exact: false,
        tokenizer_dir: dir.to_path_buf(),
        tokenize: None,
        task,
        names,
        tuned_threshold: None,
        _held: Vec::new(),
    })
}

/// The threshold the newest evaluation of train artifact `train`'s `weights` tuned
/// (`evaluate.threshold: tune`), if the store has one.
fn tuned_threshold(store: &Path, train: &str, weights: Weights) -> anyhow::Result<Option<(f64, String)>> {
    if !store.is_dir() {
        return Ok(None);
    }
    for e in Store::open(store)?.list("evaluate") {
        if e.manifest.inputs.get("train").is_none_or(|t| t.key != train) {
            continue;
        }
        let Ok(m) = pipeline::files::read::<pipeline::files::EvalMetrics>(&e.dir.join("metrics.json")) else { continue };
        if let (pipeline::files::TaskScores::MultiLabel(s), true) = (&m.scores, m.weights == weights) {
            if let Some(split) = &s.threshold_tuned_on {
                return Ok(Some((s.threshold, format!("tuned on split `{split}` by evaluate artifact {}", e.manifest.key))));
            }
        }
    }
    Ok(None)
}

/// The model's config, and the head's task and label names as transformers reads them:
/// `problem_type` (absent: one label is regression, more are single-label classes),
/// `num_labels` (absent: `id2label`'s size, else 2) and `id2label` (absent: `LABEL_<i>`).
pub fn read_config(path: &Path) -> anyhow::Result<(model::Config, Task, Vec<String>)> {
    let config = model::Config::from_file(path)?;
    let v: Value = serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("{}: not JSON", path.display()))?;
    let id2label = v.get("id2label").and_then(Value::as_object);
    let n = match v.get("num_labels") {
        Some(x) => x.as_u64().filter(|&n| n > 0).with_context(|| format!("{}: num_labels {x} is not a positive integer", path.display()))? as usize,
        None => id2label.map_or(2, |m| m.len().max(1)),
    };
    let names = (0..n)
        .map(|i| id2label.and_then(|m| m.get(&i.to_string())).and_then(Value::as_str).map_or_else(|| format!("LABEL_{i}"), String::from))
        .collect();
    let task = match v.get("problem_type").and_then(Value::as_str) {
        Some("single_label_classification") => Task::SingleLabel,
        Some("multi_label_classification") => Task::MultiLabel,
        Some("regression") => Task::Regression,
        Some(other) => bail!("{}: problem_type `{other}` is not one of single_label_classification, multi_label_classification, regression", path.display()),
        None if n == 1 => Task::Regression,
        None => Task::SingleLabel,
    };
    if task == Task::Regression && n != 1 {
        bail!("{}: problem_type regression with num_labels {n}: predict reads one score per text", path.display());
    }
    Ok((config, task, names))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // clippy.toml's allow-unwrap-in-tests misses some of these tests
    use super::*;

    fn config(dir: &Path, extra: Value) -> PathBuf {
        let mut v = serde_json::json!({"model_type": "bert", "vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let p = dir.join("config.json");
        std::fs::write(&p, v.to_string()).unwrap();
        p
    }

    /// The head as transformers reads it, defaults included.
    #[test]
    fn head_task_and_names_follow_transformers() {
        let tmp = tempfile::tempdir().unwrap();
        let read = |extra: Value| read_config(&config(tmp.path(), extra)).map(|(_, t, n)| (t, n));
        assert_eq!(read(serde_json::json!({})).unwrap(), (Task::SingleLabel, vec!["LABEL_0".to_string(), "LABEL_1".into()]));
        let (t, n) = read(serde_json::json!({"id2label": {"0": "neg", "1": "neu", "2": "pos"}})).unwrap();
        assert_eq!((t, n.join(",")), (Task::SingleLabel, "neg,neu,pos".into()));
        assert_eq!(read(serde_json::json!({"num_labels": 1})).unwrap().0, Task::Regression);
        let (t, n) = read(serde_json::json!({"problem_type": "multi_label_classification", "num_labels": 2, "id2label": {"0": "a", "1": "b"}})).unwrap();
        assert_eq!((t, n.len()), (Task::MultiLabel, 2));
        let e = read(serde_json::json!({"problem_type": "ranking"})).unwrap_err().to_string();
        assert!(e.contains("problem_type `ranking`"), "{e}");
        let e = read(serde_json::json!({"problem_type": "regression", "num_labels": 3})).unwrap_err().to_string();
        assert!(e.contains("one score per text"), "{e}");
    }

    /// A directory without safetensors weights says what to do about it.
    #[test]
    fn directories_without_safetensors_are_explained() {
        let tmp = tempfile::tempdir().unwrap();
        config(tmp.path(), serde_json::json!({}));
        std::fs::write(tmp.path().join("pytorch_model.bin"), b"").unwrap();
        let e = resolve(tmp.path().to_str().unwrap(), tmp.path(), Weights::Best).err().unwrap().to_string();
        assert!(e.contains("safe_serialization=True"), "{e}");
        let e = resolve("deadbeef", &tmp.path().join("none"), Weights::Best).err().unwrap().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
