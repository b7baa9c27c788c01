//! The evaluate stage: a train artifact's weights on a split of the tokenize artifact. Artifact:
//!
//! ```text
//! metrics.json          pipeline::files::EvalMetrics: the task, its scores (single-label:
//!                       accuracy, precision, recall, f1, log_loss, confusion_matrix, per_class,
//!                       ci95; multi-label: subset accuracy, micro/macro/per-label P/R/F1, the
//!                       threshold; regression: mse, rmse, mae, pearson, spearman), positive_class,
//!                       weights (and the file they came from), split, accuracy by text length
//! predictions.parquet   row, label, then single-label: prediction, prob_<class> per class;
//!                       multi-label: label and prediction as lists of names, prob_<label>;
//!                       regression: score
//! report.md             the metrics, the plots and where they came from
//! curves.png; single-label: confusion.png, length.png; multi-label: length.png;
//! regression: scatter.png
//! ```

pub mod plots;

use std::path::Path;

use anyhow::{bail, Context as _};
use model::loss::Objective;
use pipeline::files::{Averages, ClassScores, EvalMetrics, Hparams, Intervals, Labels, LogLine, MultiLabelScores, RegressionScores, Scores, TaskScores, TokenizeMeta};
use pipeline::{EvaluateParams, Task, Threshold, ThresholdRule, Weights};
use polars::prelude::*;

/// Bump when metrics.json or the outputs change meaning.
pub const SCHEMA_VERSION: u32 = 2;

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

/// What a task's evaluation produced: its scores, the predictions file's columns after `row`,
/// and which examples were right (for accuracy by length; `None` for regression).
struct Outcome {
    scores: TaskScores,
    columns: Vec<Column>,
    correct: Option<Vec<bool>>,
}

/// Runs the stage.
pub fn run(p: &EvaluateParams, tokenize: &artifact::Artifact, train: &artifact::Artifact, out: &Path) -> anyhow::Result<EvalMetrics> {
    let names = train_names(&train.dir)?;
    let labels: Labels = pipeline::files::read(&tokenize.dir.join("labels.json"))?;
    p.check_task(labels.task).map_err(anyhow::Error::msg)?;
    let positive = match labels.task {
        Task::SingleLabel if names.len() == 2 => Some(positive_index(p, &names)?),
        _ => None,
    };
    let config = model::Config::from_file(&train.dir.join("config.json"))?;
    let meta: TokenizeMeta = pipeline::files::read(&tokenize.dir.join("meta.json"))?;
    let split = shards::Split::open_setting(&tokenize.dir, &p.split, "evaluate.split")?;
    let device = model::device::resolve(&p.device)?;
    let mut m = model::Model::random(config, labels.outputs() as i64, device, 0)?;
    m.compute = match (p.precision, device) {
        (pipeline::Precision::Bf16, _) | (pipeline::Precision::Auto, tch::Device::Cuda(_)) => tch::Kind::BFloat16,
        _ => tch::Kind::Float,
    };
    let weights_file = match p.weights {
        Weights::Best => "best.safetensors",
        Weights::Final => "final.safetensors",
    };
    m.params.load_exact(&train.dir.join(weights_file))?;
    let objective = match labels.task {
        Task::SingleLabel => Objective::single_label(None, 0.0, device),
        Task::MultiLabel => Objective::multi_label(None, device),
        Task::Regression => Objective::Regression,
    };
    let t = std::time::Instant::now();
    let progress = artifact::Progress::new("examples", split.len() as u64, 0);
    let pred = model::infer::predict(&m, &objective, &split, p.batch_size, meta.pad_id, device, &mut |n| progress.tick(n as u64))
        .map_err(|e| e.explain("evaluation", "evaluate.batch_size"))?;
    progress.finish();
    let secs = t.elapsed().as_secs_f64();
    let outcome = match split.all_targets() {
        shards::Targets::Class(y) => single_label(p, &y, &pred, &names, positive.unwrap_or(0), out)?,
        shards::Targets::Multi { labels: l, hot } => {
            let threshold = match p.threshold {
                Threshold::Value(v) => (v, None),
                Threshold::Rule(ThresholdRule::Tune) => tune_threshold(p, train, &tokenize.dir, &m, &objective, meta.pad_id, device)?,
            };
            multi_label(p, &hot, l, &pred, &names, threshold)
        }
        shards::Targets::Score(y) => regression(p, &y, &pred, out)?,
    };
    write_predictions(&out.join("predictions.parquet"), outcome.columns)?;
    let log_path = train.dir.join("log.jsonl");
    let log = std::fs::read_to_string(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    plots::curves(&out.join("curves.png"), &LogLine::parse_all(&log_path, &log)?)?;
    let accuracy_by_length = match &outcome.correct {
        Some(c) => plots::accuracy_by_length(&out.join("length.png"), c, &(0..split.len()).map(|i| split.full_length(i)).collect::<Vec<u32>>())?,
        None => Vec::new(),
    };
    let metrics = EvalMetrics {
        task: labels.task,
        scores: outcome.scores,
        labels: names.clone(),
        split: p.split.clone(),
        weights: p.weights,
        weights_file: weights_file.into(),
        positive_class: positive.map(|i| names[i].clone()),
        examples_per_second: split.len() as f64 / secs.max(1e-9),
        seconds: secs,
        device: model::device::describe(device),
        accuracy_by_length,
    };
    pipeline::files::write(&out.join("metrics.json"), &metrics)?;
    std::fs::write(out.join("report.md"), report(&metrics, train, tokenize))?;
    let (name, value, interval) = headline(&metrics.scores);
    eprintln!("evaluate {}: {name} {value:.4} (95% CI {}), {} examples at {:.0} examples/s", p.split, ci(interval), split.len(), metrics.examples_per_second);
    Ok(metrics)
}

/// The task's headline metric: its name, value and bootstrap interval.
pub fn headline(s: &TaskScores) -> (&'static str, f64, Option<(f64, f64)>) {
    match s {
        TaskScores::SingleLabel(s) => ("accuracy", s.accuracy, s.ci95.accuracy),
        TaskScores::MultiLabel(s) => ("f1_micro", s.micro.f1, s.f1_micro_ci95),
        TaskScores::Regression(s) => ("pearson", s.pearson, s.pearson_ci95),
    }
}

fn single_label(p: &EvaluateParams, labels: &[i64], pred: &model::infer::Predictions, names: &[String], positive: usize, out: &Path) -> anyhow::Result<Outcome> {
    let preds = pred.argmax();
    let probs: Vec<Vec<f64>> = pred.probs.iter().map(|r| r.iter().map(|&x| x as f64).collect()).collect();
    let sc = compute_metrics(labels, &preds, &probs, names, positive, p.bootstrap, p.seed);
    plots::confusion(&out.join("confusion.png"), &sc.confusion_matrix, names)?;
    let mut columns = vec![Column::new("label".into(), labels), Column::new("prediction".into(), &preds)];
    columns.extend(prob_columns(&pred.probs, names));
    let correct = labels.iter().zip(&preds).map(|(a, b)| a == b).collect();
    Ok(Outcome { scores: TaskScores::SingleLabel(sc), columns, correct: Some(correct) })
}

/// A `prob_<name>` column per class or label.
fn prob_columns(probs: &[Vec<f32>], names: &[String]) -> Vec<Column> {
    names
        .iter()
        .enumerate()
        .map(|(c, name)| Column::new(format!("prob_{name}").into(), probs.iter().map(|r| r.get(c).copied().unwrap_or(f32::NAN)).collect::<Vec<f32>>()))
        .collect()
}

/// Multi-label metrics of `probs` at `threshold` (with the split it was tuned on, if tuned)
/// against multi-hot `hot` (`rows × labels`).
fn multi_label(p: &EvaluateParams, hot: &[f32], labels: usize, pred: &model::infer::Predictions, names: &[String], threshold: (f64, Option<String>)) -> Outcome {
    let truth: Vec<bool> = hot.iter().map(|&x| x > 0.5).collect();
    let decided: Vec<bool> = pred.probs.iter().flatten().map(|&x| f64::from(x) > threshold.0).collect();
    let ml = metrics::multi_label(&truth, &decided, labels);
    let ci = metrics::bootstrap_rows(pred.probs.len(), p.bootstrap, p.seed, |rows| {
        let pick = |v: &[bool]| -> Vec<bool> { rows.iter().flat_map(|&r| v[r * labels..(r + 1) * labels].iter().copied()).collect() };
        metrics::multi_label(&pick(&truth), &pick(&decided), labels).micro.f1
    });
    let sets = |v: &[bool]| -> Vec<Series> {
        v.chunks(labels.max(1)).map(|row| Series::new("".into(), names.iter().zip(row).filter(|(_, &on)| on).map(|(n, _)| n.as_str()).collect::<Vec<&str>>())).collect()
    };
    let mut columns = vec![Column::new("label".into(), sets(&truth)), Column::new("prediction".into(), sets(&decided))];
    columns.extend(prob_columns(&pred.probs, names));
    let correct = truth.chunks(labels.max(1)).zip(decided.chunks(labels.max(1))).map(|(a, b)| a == b).collect();
    let scores = MultiLabelScores {
        n: pred.probs.len(),
        subset_accuracy: ml.subset_accuracy,
        micro: Averages { precision: ml.micro.precision, recall: ml.micro.recall, f1: ml.micro.f1 },
        macro_avg: Averages { precision: ml.macro_precision, recall: ml.macro_recall, f1: ml.macro_f1 },
        per_label: names.iter().zip(&ml.per_label).map(|(n, c)| (n.clone(), ClassScores { precision: c.precision, recall: c.recall, f1: c.f1, support: c.support })).collect(),
        threshold: threshold.0,
        threshold_tuned_on: threshold.1,
        f1_micro_ci95: ci,
        bootstrap_resamples: p.bootstrap,
    };
    Outcome { scores: TaskScores::MultiLabel(scores), columns, correct: Some(correct) }
}

/// `threshold: tune`: the threshold in 0.05, 0.10, …, 0.95 with the best micro F1 on train's
/// validation split (the nearest to 0.5 among equals).
fn tune_threshold(p: &EvaluateParams, train: &artifact::Artifact, tokenize: &Path, m: &model::Model, objective: &Objective, pad: u32, device: tch::Device) -> anyhow::Result<(f64, Option<String>)> {
    let hp: Hparams = pipeline::files::read(&train.dir.join("hparams.json"))?;
    let name = hp.params.validation_split;
    if name == p.split {
        bail!("evaluate.threshold: tune chooses the threshold on train.validation_split `{name}`, which is the split evaluated; evaluate another split or give a threshold");
    }
    let split = shards::Split::open_setting(tokenize, &name, "train.validation_split")?;
    let pred = model::infer::predict(m, objective, &split, p.batch_size, pad, device, &mut |_| {}).map_err(|e| e.explain("tuning the threshold", "evaluate.batch_size"))?;
    let shards::Targets::Multi { labels, hot } = split.all_targets() else { bail!("{}: split `{name}` has no label sets", tokenize.display()) };
    let truth: Vec<bool> = hot.iter().map(|&x| x > 0.5).collect();
    let mut best: (f64, f64) = (0.5, f64::NEG_INFINITY);
    for k in 1..20 {
        let t = k as f64 / 20.0;
        let decided: Vec<bool> = pred.probs.iter().flatten().map(|&x| f64::from(x) > t).collect();
        let f1 = metrics::multi_label(&truth, &decided, labels).micro.f1;
        if f1 > best.1 || (f1 == best.1 && (t - 0.5).abs() < (best.0 - 0.5).abs()) {
            best = (t, f1);
        }
    }
    eprintln!("threshold tuned on `{name}`: {:.2} (micro F1 {:.4} there)", best.0, best.1);
    Ok((best.0, Some(name)))
}

fn regression(p: &EvaluateParams, y: &[f32], pred: &model::infer::Predictions, out: &Path) -> anyhow::Result<Outcome> {
    let y: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
    let s: Vec<f64> = pred.probs.iter().map(|r| f64::from(r[0])).collect();
    plots::scatter(&out.join("scatter.png"), &y, &s)?;
    let mse = metrics::mse(&y, &s);
    let ci = metrics::bootstrap_rows(y.len(), p.bootstrap, p.seed, |rows| {
        let (a, b): (Vec<f64>, Vec<f64>) = rows.iter().map(|&r| (y[r], s[r])).unzip();
        metrics::pearson(&a, &b)
    });
    let scores = RegressionScores {
        n: y.len(),
        mse,
        rmse: mse.sqrt(),
        mae: metrics::mae(&y, &s),
        pearson: metrics::pearson(&y, &s),
        spearman: metrics::spearman(&y, &s),
        pearson_ci95: ci,
        bootstrap_resamples: p.bootstrap,
    };
    let columns = vec![Column::new("label".into(), &y), Column::new("score".into(), &s)];
    Ok(Outcome { scores: TaskScores::Regression(scores), columns, correct: None })
}

fn ci(v: Option<(f64, f64)>) -> String {
    match v {
        Some((lo, hi)) => format!("{lo:.4}–{hi:.4}"),
        None => "n/a".into(),
    }
}

fn single_label_report(s: &mut String, m: &EvalMetrics, sc: &Scores) {
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
    s.push('\n');
}

fn multi_label_report(s: &mut String, sc: &MultiLabelScores, names: &[String]) {
    let tuned = sc.threshold_tuned_on.as_ref().map(|v| format!(", tuned on `{v}` for micro F1")).unwrap_or_default();
    s.push_str(&format!("A label is predicted when its probability exceeds {:.2}{tuned}.\n\n", sc.threshold));
    s.push_str("| metric | value | 95% CI |\n|---|---|---|\n");
    s.push_str(&format!("| F1 (micro) | {:.4} | {} |\n| F1 (macro) | {:.4} | |\n", sc.micro.f1, ci(sc.f1_micro_ci95), sc.macro_avg.f1));
    s.push_str(&format!("| precision (micro) | {:.4} | |\n| recall (micro) | {:.4} | |\n", sc.micro.precision, sc.micro.recall));
    s.push_str(&format!("| subset accuracy | {:.4} | |\n| examples | {} | |\n\n", sc.subset_accuracy, sc.n));
    s.push_str("## Per label\n\n| label | precision | recall | F1 | support |\n|---|---|---|---|---|\n");
    for (n, c) in names.iter().filter_map(|n| sc.per_label.get(n).map(|c| (n, c))) {
        s.push_str(&format!("| {n} | {:.4} | {:.4} | {:.4} | {} |\n", c.precision, c.recall, c.f1, c.support));
    }
    s.push('\n');
}

/// Class names from a train artifact's config.json (`id2label`, one per `num_labels`).
pub fn train_names(train: &Path) -> anyhow::Result<Vec<String>> {
    pipeline::files::ClassifierLabels::read_names(&train.join("config.json")).map_err(anyhow::Error::msg)
}

fn write_predictions(path: &Path, columns: Vec<Column>) -> anyhow::Result<()> {
    let n = columns.first().map_or(0, |c| c.len());
    let mut cols = vec![Column::new("row".into(), (0..n as i64).collect::<Vec<i64>>())];
    cols.extend(columns);
    let mut df = DataFrame::new(cols)?;
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    ParquetWriter::new(f).finish(&mut df).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn report(metrics: &EvalMetrics, train: &artifact::Artifact, tokenize: &artifact::Artifact) -> String {
    let m = metrics;
    let mut s = format!("# Evaluation on `{}` ({})\n\n", m.split, m.task.name().replace('_', "-"));
    match &m.scores {
        TaskScores::SingleLabel(sc) => single_label_report(&mut s, m, sc),
        TaskScores::MultiLabel(sc) => multi_label_report(&mut s, sc, &m.labels),
        TaskScores::Regression(sc) => {
            s.push_str("| metric | value | 95% CI |\n|---|---|---|\n");
            s.push_str(&format!("| Pearson | {:.4} | {} |\n| Spearman | {:.4} | |\n", sc.pearson, ci(sc.pearson_ci95), sc.spearman));
            s.push_str(&format!("| MSE | {:.4} | |\n| RMSE | {:.4} | |\n| MAE | {:.4} | |\n| examples | {} | |\n\n", sc.mse, sc.rmse, sc.mae, sc.n));
            s.push_str("## Predicted against true score\n\n![scatter](scatter.png)\n\n");
        }
    }
    s.push_str("## Training curves\n\n![curves](curves.png)\n\n");
    if !m.accuracy_by_length.is_empty() {
        s.push_str("## Accuracy by text length (tokens before truncation)\n\n![length](length.png)\n\n");
    }
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
