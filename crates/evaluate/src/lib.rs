//! The evaluate stage: a train artifact's weights on a split of the tokenize artifact. Artifact:
//!
//! ```text
//! metrics.json          stable keys: accuracy, precision, recall, f1, log_loss, n,
//!                       confusion_matrix, per_class, ci95, positive_class, weights, split
//! predictions.parquet   row, label, prediction, prob_<class> per class
//! report.md             the metrics, the plots and where they came from
//! confusion.png, curves.png, length.png
//! ```

pub mod plots;

use std::path::Path;

use anyhow::{bail, Context as _};
use pipeline::{EvaluateParams, Weights};
use polars::prelude::*;
use serde_json::json;

/// Bump when metrics.json or the outputs change meaning.
pub const SCHEMA_VERSION: u32 = 1;

pub fn stage_def() -> artifact::StageDef {
    artifact::stage_def!("evaluate", SCHEMA_VERSION)
}

/// The positive class index for binary metrics: a name or an id, default 1.
pub fn positive_index(p: &EvaluateParams, names: &[String]) -> anyhow::Result<usize> {
    match &p.positive_class {
        None => Ok(1.min(names.len().saturating_sub(1))),
        Some(s) => {
            if let Some(i) = names.iter().position(|n| n == s) {
                return Ok(i);
            }
            match s.parse::<usize>() {
                Ok(i) if i < names.len() => Ok(i),
                _ => bail!("evaluate.positive_class `{s}` is neither a class name nor an id; classes: {names:?}"),
            }
        }
    }
}

/// All metrics for labels, predictions and probabilities.
pub fn compute_metrics(labels: &[i64], preds: &[i64], probs: &[Vec<f64>], names: &[String], positive: usize, bootstrap: u32, seed: u64) -> serde_json::Value {
    let n = names.len();
    let conf = metrics::confusion(labels, preds, n);
    let pc = metrics::per_class(&conf);
    let acc = metrics::accuracy(labels, preds);
    let (precision, recall, f1, averaging) = if n == 2 {
        (pc[positive].precision, pc[positive].recall, pc[positive].f1, format!("binary (positive class `{}`)", names[positive]))
    } else {
        let m = |f: fn(&metrics::ClassMetrics) -> f64| pc.iter().map(f).sum::<f64>() / n as f64;
        (m(|c| c.precision), m(|c| c.recall), m(|c| c.f1), "macro".to_string())
    };
    let total: usize = pc.iter().map(|c| c.support).sum();
    let weighted = |f: fn(&metrics::ClassMetrics) -> f64| if total == 0 { 0.0 } else { pc.iter().map(|c| f(c) * c.support as f64).sum::<f64>() / total as f64 };
    let per_class: serde_json::Map<String, serde_json::Value> = names.iter().zip(&pc).map(|(nm, c)| (nm.clone(), json!(c))).collect();
    let ci_acc = metrics::bootstrap(labels, preds, bootstrap, seed, metrics::accuracy);
    let ci_f1 = metrics::bootstrap(labels, preds, bootstrap, seed, |y, p| metrics::f1(y, p, n, positive));
    json!({
        "n": labels.len(),
        "accuracy": acc,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "averaging": averaging,
        "log_loss": metrics::log_loss(labels, probs),
        "confusion_matrix": conf,
        "labels": names,
        "per_class": per_class,
        "macro": {"precision": pc.iter().map(|c| c.precision).sum::<f64>() / n as f64, "recall": pc.iter().map(|c| c.recall).sum::<f64>() / n as f64, "f1": pc.iter().map(|c| c.f1).sum::<f64>() / n as f64},
        "weighted": {"precision": weighted(|c| c.precision), "recall": weighted(|c| c.recall), "f1": weighted(|c| c.f1)},
        "ci95": {"accuracy": ci_acc, "f1": ci_f1, "bootstrap_resamples": bootstrap},
    })
}

/// Runs the stage.
pub fn run(p: &EvaluateParams, tokenize: &artifact::Artifact, train: &artifact::Artifact, out: &Path) -> anyhow::Result<serde_json::Value> {
    match train.manifest.inputs.get("tokenize") {
        Some(r) if r.content_hash == tokenize.manifest.content_hash => {}
        Some(r) => bail!(
            "the train artifact {} was trained on tokenize output {} but evaluate was given {}: a different tokenizer/model or data; rerun the pipeline so both come from the same tokenize stage",
            train.dir.display(),
            artifact::short(&r.content_hash),
            artifact::short(&tokenize.manifest.content_hash)
        ),
        None => bail!("{} is not a train artifact (no tokenize input)", train.dir.display()),
    }
    let names = train_names(&train.dir)?;
    let positive = positive_index(p, &names)?;
    let config = model::BertConfig::from_file(&train.dir.join("config.json"))?;
    let device = model::device::resolve(&p.device)?;
    let mut m = model::Model::random(config, names.len() as i64, device, 0)?;
    m.compute = match (p.precision, device) {
        (pipeline::Precision::Bf16, _) | (pipeline::Precision::Auto, tch::Device::Cuda(_)) => tch::Kind::BFloat16,
        _ => tch::Kind::Float,
    };
    let weights = match p.weights {
        Weights::Best => train.dir.join("best.safetensors"),
        Weights::Final => train.dir.join("final.safetensors"),
    };
    m.params.load_exact(&weights)?;
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(tokenize.dir.join("meta.json")).context("reading meta.json")?)?;
    let pad = meta["pad_id"].as_u64().unwrap_or(0) as u32;
    let split = match shards::Split::open(&tokenize.dir, &p.split) {
        Ok(s) => s,
        Err(shards::Error::NoSplit { present, .. }) => bail!("evaluate.split `{}` is not in the tokenize artifact; splits present: {present:?}", p.split),
        Err(e) => return Err(e.into()),
    };
    let t = std::time::Instant::now();
    let progress = artifact::Progress::new("examples", split.len() as u64, 0);
    let pred = model::infer::predict(&m, &split, p.batch_size, pad, device, &mut |n| progress.tick(n as u64))
        .map_err(|e| e.explain("evaluation", "evaluate.batch_size"))?;
    progress.finish();
    let secs = t.elapsed().as_secs_f64();
    let labels: Vec<i64> = split.labels().into_iter().map(i64::from).collect();
    let preds = pred.argmax();
    let probs: Vec<Vec<f64>> = pred.probs.iter().map(|r| r.iter().map(|&x| x as f64).collect()).collect();
    let mut metrics = compute_metrics(&labels, &preds, &probs, &names, positive, p.bootstrap, p.seed);
    metrics["split"] = json!(p.split);
    metrics["weights"] = json!(p.weights);
    metrics["positive_class"] = json!(names[positive]);
    metrics["examples_per_second"] = json!(labels.len() as f64 / secs.max(1e-9));
    metrics["seconds"] = json!(secs);
    metrics["device"] = json!(model::device::describe(device));
    std::fs::write(out.join("metrics.json"), serde_json::to_vec_pretty(&metrics)?)?;
    write_predictions(&out.join("predictions.parquet"), &labels, &preds, &pred.probs, &names)?;
    let full: Vec<u32> = (0..split.len()).map(|i| split.full_length(i)).collect();
    plots::confusion(&out.join("confusion.png"), &metrics["confusion_matrix"], &names)?;
    let log = std::fs::read_to_string(train.dir.join("log.jsonl")).unwrap_or_default();
    plots::curves(&out.join("curves.png"), &log)?;
    let by_len = plots::accuracy_by_length(&out.join("length.png"), &labels, &preds, &full)?;
    metrics["accuracy_by_length"] = by_len;
    std::fs::write(out.join("report.md"), report(&metrics, train, tokenize))?;
    eprintln!(
        "evaluate {}: accuracy {:.4} (95% CI {}), f1 {:.4}, {} examples at {:.0} examples/s",
        p.split,
        metrics["accuracy"].as_f64().unwrap_or(0.0),
        ci(&metrics["ci95"]["accuracy"]),
        metrics["f1"].as_f64().unwrap_or(0.0),
        labels.len(),
        labels.len() as f64 / secs.max(1e-9)
    );
    Ok(metrics)
}

fn ci(v: &serde_json::Value) -> String {
    match v.as_array() {
        Some(a) if a.len() == 2 => format!("{:.4}–{:.4}", a[0].as_f64().unwrap_or(0.0), a[1].as_f64().unwrap_or(0.0)),
        _ => "n/a".into(),
    }
}

/// Class names from a train artifact's config.json (`id2label`).
pub fn train_names(train: &Path) -> anyhow::Result<Vec<String>> {
    let path = train.join("config.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)?;
    let n = v["num_labels"].as_u64().with_context(|| format!("{}: no num_labels", path.display()))? as usize;
    Ok((0..n).map(|i| v["id2label"][i.to_string()].as_str().map(String::from).unwrap_or_else(|| format!("LABEL_{i}"))).collect())
}

fn write_predictions(path: &Path, labels: &[i64], preds: &[i64], probs: &[Vec<f32>], names: &[String]) -> anyhow::Result<()> {
    let mut cols = vec![
        Column::new("row".into(), (0..labels.len() as i64).collect::<Vec<i64>>()),
        Column::new("label".into(), labels),
        Column::new("prediction".into(), preds),
    ];
    for (c, name) in names.iter().enumerate() {
        let v: Vec<f32> = probs.iter().map(|r| r.get(c).copied().unwrap_or(f32::NAN)).collect();
        cols.push(Column::new(format!("prob_{name}").into(), v));
    }
    let mut df = DataFrame::new(cols)?;
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    ParquetWriter::new(f).finish(&mut df).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn report(m: &serde_json::Value, train: &artifact::Artifact, tokenize: &artifact::Artifact) -> String {
    let f = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
    let names: Vec<String> = m["labels"].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default();
    let mut s = String::new();
    s.push_str(&format!("# Evaluation on `{}`\n\n", m["split"].as_str().unwrap_or("?")));
    s.push_str("| metric | value | 95% CI |\n|---|---|---|\n");
    s.push_str(&format!("| accuracy | {:.4} | {} |\n", f("accuracy"), ci(&m["ci95"]["accuracy"])));
    s.push_str(&format!("| F1 ({}) | {:.4} | {} |\n", m["averaging"].as_str().unwrap_or(""), f("f1"), ci(&m["ci95"]["f1"])));
    s.push_str(&format!("| precision | {:.4} | |\n| recall | {:.4} | |\n| log-loss | {:.4} | |\n| examples | {} | |\n\n", f("precision"), f("recall"), f("log_loss"), m["n"]));
    s.push_str("## Per class\n\n| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n");
    for n in &names {
        let c = &m["per_class"][n];
        s.push_str(&format!(
            "| {n} | {:.4} | {:.4} | {:.4} | {} |\n",
            c["precision"].as_f64().unwrap_or(0.0),
            c["recall"].as_f64().unwrap_or(0.0),
            c["f1"].as_f64().unwrap_or(0.0),
            c["support"]
        ));
    }
    s.push_str("\n## Confusion matrix (rows: true, columns: predicted)\n\n![confusion](confusion.png)\n\n");
    s.push_str(&format!("| | {} |\n|---|{}\n", names.join(" | "), "---|".repeat(names.len())));
    if let Some(rows) = m["confusion_matrix"].as_array() {
        for (n, r) in names.iter().zip(rows) {
            let cells: Vec<String> = r.as_array().map(|a| a.iter().map(|x| x.to_string()).collect()).unwrap_or_default();
            s.push_str(&format!("| **{n}** | {} |\n", cells.join(" | ")));
        }
    }
    s.push_str("\n## Training curves\n\n![curves](curves.png)\n\n## Accuracy by review length (tokens before truncation)\n\n![length](length.png)\n\n");
    s.push_str(&format!(
        "## Lineage\n\n- weights: `{}` ({}), train artifact `{}`\n- tokens: tokenize artifact `{}`\n- throughput: {:.0} examples/s on {}\n",
        m["weights"].as_str().unwrap_or("?"),
        train.dir.join("best.safetensors").display(),
        artifact::short(&train.manifest.key),
        artifact::short(&tokenize.manifest.key),
        f("examples_per_second"),
        m["device"].as_str().unwrap_or("?")
    ));
    s
}
