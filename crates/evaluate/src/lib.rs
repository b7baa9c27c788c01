//! The evaluate stage: a train artifact's weights on a split of the tokenize artifact. Artifact:
//!
//! ```text
//! metrics.json          pipeline::files::EvalMetrics: accuracy, precision, recall, f1, log_loss,
//!                       n, confusion_matrix, per_class, ci95, positive_class, weights (and the
//!                       file they came from), split, accuracy by text length
//! predictions.parquet   row, label, prediction, prob_<class> per class
//! report.md             the metrics, the plots and where they came from
//! confusion.png, curves.png, length.png
//! ```

pub mod plots;

use std::path::Path;

use anyhow::{bail, Context as _};
use pipeline::files::{Averages, ClassScores, EvalMetrics, Intervals, LogLine, Scores, TokenizeMeta};
use pipeline::{EvaluateParams, Weights};
use polars::prelude::*;

/// Bump when metrics.json or the outputs change meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// The stage's identity: code, dependencies, the libtorch loaded, and the rule that the train
/// input was trained on the tokenize input.
pub fn stage_def() -> artifact::StageDef {
    artifact::stage_def!("evaluate", SCHEMA_VERSION)
        .with_runtime(model::device::libtorch().key_facts().into())
        .with_lineage(&[artifact::Lineage { input: "train", made_from: "tokenize" }])
}

/// The positive class index for binary metrics: a name or an id, default 1.
pub fn positive_index(p: &EvaluateParams, names: &[String]) -> anyhow::Result<usize> {
    pipeline::positive_index("evaluate.positive_class", p.positive_class.as_deref(), names).map_err(anyhow::Error::msg)
}

/// All metrics for labels, predictions and probabilities.
pub fn compute_metrics(labels: &[i64], preds: &[i64], probs: &[Vec<f64>], names: &[String], positive: usize, bootstrap: u32, seed: u64) -> Scores {
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
    let per_class = names
        .iter()
        .zip(&pc)
        .map(|(nm, c)| (nm.clone(), ClassScores { precision: c.precision, recall: c.recall, f1: c.f1, support: c.support }))
        .collect();
    let mean = |f: fn(&metrics::ClassMetrics) -> f64| pc.iter().map(f).sum::<f64>() / n as f64;
    Scores {
        n: labels.len(),
        accuracy: acc,
        precision,
        recall,
        f1,
        averaging,
        log_loss: metrics::log_loss(labels, probs),
        confusion_matrix: conf.iter().map(|r| r.iter().map(|&c| c as u64).collect()).collect(),
        per_class,
        macro_avg: Averages { precision: mean(|c| c.precision), recall: mean(|c| c.recall), f1: mean(|c| c.f1) },
        weighted: Averages { precision: weighted(|c| c.precision), recall: weighted(|c| c.recall), f1: weighted(|c| c.f1) },
        ci95: Intervals {
            accuracy: metrics::bootstrap(labels, preds, bootstrap, seed, metrics::accuracy),
            f1: metrics::bootstrap(labels, preds, bootstrap, seed, |y, p| metrics::f1(y, p, n, positive)),
            bootstrap_resamples: bootstrap,
        },
    }
}

/// Runs the stage.
pub fn run(p: &EvaluateParams, tokenize: &artifact::Artifact, train: &artifact::Artifact, out: &Path) -> anyhow::Result<EvalMetrics> {
    let names = train_names(&train.dir)?;
    let positive = positive_index(p, &names)?;
    let config = model::Config::from_file(&train.dir.join("config.json"))?;
    let meta: TokenizeMeta = pipeline::files::read(&tokenize.dir.join("meta.json"))?;
    let split = match shards::Split::open(&tokenize.dir, &p.split) {
        Ok(s) => s,
        Err(shards::Error::NoSplit { present, .. }) => bail!("evaluate.split `{}` is not in the tokenize artifact; splits present: {present:?}", p.split),
        Err(e) => return Err(e.into()),
    };
    let device = model::device::resolve(&p.device)?;
    let mut m = model::Model::random(config, names.len() as i64, device, 0)?;
    m.compute = match (p.precision, device) {
        (pipeline::Precision::Bf16, _) | (pipeline::Precision::Auto, tch::Device::Cuda(_)) => tch::Kind::BFloat16,
        _ => tch::Kind::Float,
    };
    let weights_file = match p.weights {
        Weights::Best => "best.safetensors",
        Weights::Final => "final.safetensors",
    };
    m.params.load_exact(&train.dir.join(weights_file))?;
    let t = std::time::Instant::now();
    let progress = artifact::Progress::new("examples", split.len() as u64, 0);
    let pred = model::infer::predict(&m, &split, p.batch_size, meta.pad_id, device, &mut |n| progress.tick(n as u64))
        .map_err(|e| e.explain("evaluation", "evaluate.batch_size"))?;
    progress.finish();
    let secs = t.elapsed().as_secs_f64();
    let labels: Vec<i64> = split.labels().into_iter().map(i64::from).collect();
    let preds = pred.argmax();
    let probs: Vec<Vec<f64>> = pred.probs.iter().map(|r| r.iter().map(|&x| x as f64).collect()).collect();
    let sc = compute_metrics(&labels, &preds, &probs, &names, positive, p.bootstrap, p.seed);
    write_predictions(&out.join("predictions.parquet"), &labels, &preds, &pred.probs, &names)?;
    let full: Vec<u32> = (0..split.len()).map(|i| split.full_length(i)).collect();
    plots::confusion(&out.join("confusion.png"), &sc.confusion_matrix, &names)?;
    let log_path = train.dir.join("log.jsonl");
    let log = std::fs::read_to_string(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    plots::curves(&out.join("curves.png"), &LogLine::parse_all(&log_path, &log)?)?;
    let accuracy_by_length = plots::accuracy_by_length(&out.join("length.png"), &labels, &preds, &full)?;
    let metrics = EvalMetrics {
        scores: sc,
        labels: names.clone(),
        split: p.split.clone(),
        weights: p.weights,
        weights_file: weights_file.into(),
        positive_class: names[positive].clone(),
        examples_per_second: labels.len() as f64 / secs.max(1e-9),
        seconds: secs,
        device: model::device::describe(device),
        accuracy_by_length,
    };
    pipeline::files::write(&out.join("metrics.json"), &metrics)?;
    std::fs::write(out.join("report.md"), report(&metrics, train, tokenize))?;
    eprintln!(
        "evaluate {}: accuracy {:.4} (95% CI {}), f1 {:.4}, {} examples at {:.0} examples/s",
        p.split,
        metrics.scores.accuracy,
        ci(metrics.scores.ci95.accuracy),
        metrics.scores.f1,
        labels.len(),
        metrics.examples_per_second
    );
    Ok(metrics)
}

fn ci(v: Option<(f64, f64)>) -> String {
    match v {
        Some((lo, hi)) => format!("{lo:.4}–{hi:.4}"),
        None => "n/a".into(),
    }
}

/// Class names from a train artifact's config.json (`id2label`, one per `num_labels`).
pub fn train_names(train: &Path) -> anyhow::Result<Vec<String>> {
    pipeline::files::ClassifierLabels::read_names(&train.join("config.json")).map_err(anyhow::Error::msg)
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

fn report(metrics: &EvalMetrics, train: &artifact::Artifact, tokenize: &artifact::Artifact) -> String {
    let (m, sc) = (metrics, &metrics.scores);
    let mut s = String::new();
    s.push_str(&format!("# Evaluation on `{}`\n\n", m.split));
    s.push_str("| metric | value | 95% CI |\n|---|---|---|\n");
    s.push_str(&format!("| accuracy | {:.4} | {} |\n", sc.accuracy, ci(sc.ci95.accuracy)));
    s.push_str(&format!("| F1 ({}) | {:.4} | {} |\n", sc.averaging, sc.f1, ci(sc.ci95.f1)));
    s.push_str(&format!("| precision | {:.4} | |\n| recall | {:.4} | |\n| log-loss | {:.4} | |\n| examples | {} | |\n\n", sc.precision, sc.recall, sc.log_loss, sc.n));
    s.push_str("## Per class\n\n| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n");
    for (n, c) in m.labels.iter().filter_map(|n| sc.per_class.get(n).map(|c| (n, c))) {
        s.push_str(&format!("| {n} | {:.4} | {:.4} | {:.4} | {} |\n", c.precision, c.recall, c.f1, c.support));
    }
    s.push_str("\n## Confusion matrix (rows: true, columns: predicted)\n\n![confusion](confusion.png)\n\n");
    s.push_str(&format!("| | {} |\n|---|{}\n", m.labels.join(" | "), "---|".repeat(m.labels.len())));
    for (n, r) in m.labels.iter().zip(&sc.confusion_matrix) {
        let cells: Vec<String> = r.iter().map(|x| x.to_string()).collect();
        s.push_str(&format!("| **{n}** | {} |\n", cells.join(" | ")));
    }
    s.push_str("\n## Training curves\n\n![curves](curves.png)\n\n## Accuracy by text length (tokens before truncation)\n\n![length](length.png)\n\n");
    s.push_str(&format!(
        "## Lineage\n\n- weights: `{}` (`{}` of train artifact `{}`, {})\n- tokens: tokenize artifact `{}`\n- throughput: {:.0} examples/s on {}\n",
        serde_json::to_value(m.weights).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        m.weights_file,
        artifact::short(&train.manifest.key),
        train.path.join(&m.weights_file).display(),
        artifact::short(&tokenize.manifest.key),
        m.examples_per_second,
        m.device
    ));
    s
}
