//! `cargo xtask run` over a sweep: every combination of the swept values is one pipeline run
//! through the ordinary runner, so stages whose parameters and inputs coincide across
//! combinations are cached after their first run. A table (one row per combination, sorted by
//! the train stage's validation metric) ends the run.

use std::path::Path;

use anyhow::bail;
use pipeline::files::{EvalMetrics, TrainSummary};
use pipeline::{Metric, Setting, Stage, Sweep};
use serde_json::{json, Value};

/// One combination's outcome.
struct Row {
    values: Vec<Setting>,
    outcomes: Vec<runner::StageOutcome>,
    /// The train stage's select metric and its best value on validation.
    validation: Option<(Metric, f64)>,
    /// The evaluate stage's headline metric on its split.
    test: Option<(Metric, String, f64)>,
    train_seconds: Option<f64>,
    error: Option<String>,
}

impl Row {
    fn key(&self, stage: Stage) -> Option<&str> {
        self.outcomes.iter().find(|o| o.stage == stage.name()).map(|o| o.key.as_str())
    }

    fn json(&self) -> Value {
        json!({
            "values": values_json(&self.values),
            "validation": self.validation.map(|(m, v)| json!({"metric": m.name(), "value": v})),
            "test": self.test.as_ref().map(|(m, split, v)| json!({"metric": m.name(), "split": split, "value": v})),
            "train_seconds": self.train_seconds,
            "keys": self.outcomes.iter().map(|o| (o.stage.clone(), json!(o.key))).collect::<serde_json::Map<_, _>>(),
            "cached": self.outcomes.iter().map(|o| (o.stage.clone(), json!(o.cached))).collect::<serde_json::Map<_, _>>(),
            "error": self.error,
        })
    }
}

fn values_json(values: &[Setting]) -> Value {
    let m: serde_json::Map<String, Value> = values.iter().map(|s| (s.key.clone(), serde_json::to_value(&s.value).unwrap_or(Value::Null))).collect();
    Value::Object(m)
}

/// What one finished combination's artifacts say.
fn read_row(values: &[Setting], outcomes: Vec<runner::StageOutcome>, error: Option<String>) -> Row {
    let dir = |stage: Stage| outcomes.iter().find(|o| o.stage == stage.name()).and_then(|o| o.artifact.clone());
    let summary: Option<TrainSummary> = dir(Stage::Train).and_then(|d| pipeline::files::read(&d.join("summary.json")).ok());
    let metrics: Option<EvalMetrics> = dir(Stage::Evaluate).and_then(|d| pipeline::files::read(&d.join("metrics.json")).ok());
    let validation = summary.as_ref().and_then(TrainSummary::selected);
    let test = metrics.map(|m| {
        let (metric, value) = m.headline();
        (metric, m.split.clone(), value)
    });
    Row { values: values.to_vec(), outcomes, validation, test, train_seconds: summary.map(|s| s.train_seconds), error }
}

/// Runs every combination; a failing one is recorded and the others go on unless `fail_fast`.
/// Returns an error when any failed, after the table.
pub fn run(sweep: &Sweep, opts: &runner::RunOptions, json_out: bool, fail_fast: bool, print: impl Fn(&runner::StageOutcome)) -> anyhow::Result<()> {
    let n = sweep.combinations.len();
    let mut rows = Vec::new();
    for (i, (values, p)) in sweep.combinations.iter().enumerate() {
        let label = values.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ");
        eprintln!("== combination {}/{n}: {label}", i + 1);
        let mut seen = Vec::new();
        let result = runner::run(p, opts, |o| {
            if json_out {
                let mut v = serde_json::to_value(o).unwrap_or_default();
                v["values"] = values_json(values);
                println!("{v}");
            } else {
                print(o);
            }
            seen.push(o.clone());
        });
        let error = match result {
            Ok(_) => None,
            Err(e) if fail_fast => {
                eprintln!("== combination {}/{n} failed; --fail-fast stopped the sweep", i + 1);
                return Err(e);
            }
            Err(e) => {
                eprintln!("== combination {}/{n} failed: {e:#}", i + 1);
                Some(format!("{e:#}"))
            }
        };
        rows.push(read_row(values, seen, error));
    }
    if opts.explain {
        return Ok(());
    }
    sort(&mut rows);
    if json_out {
        println!("{}", json!({"table": rows.iter().map(Row::json).collect::<Vec<_>>(), "axes": sweep.axes}));
    } else {
        print!("{}", table(&sweep.axes, &rows));
    }
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        bail!("{failed} of {n} combinations failed (their errors are in the table and above)");
    }
    Ok(())
}

/// Best validation first (in the direction of the select metric); rows without one (failed or
/// not trained) last, in their run order.
fn sort(rows: &mut [Row]) {
    rows.sort_by(|a, b| match (a.validation, b.validation) {
        (Some((m, x)), Some((_, y))) => if m.higher_is_better() { y.total_cmp(&x) } else { x.total_cmp(&y) },
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
}

fn table(axes: &[String], rows: &[Row]) -> String {
    let metric = |r: &Row| r.validation.map(|(m, _)| m.name());
    let val_name = rows.iter().find_map(metric).unwrap_or("select metric");
    let test_name = rows.iter().find_map(|r| r.test.as_ref().map(|(m, s, _)| format!("{s} {}", m.name()))).unwrap_or_else(|| "test".into());
    let mut t = format!("\n| {} | validation {val_name} | {test_name} | train s | train key | evaluate key |\n", axes.join(" | "));
    t.push_str(&format!("|{}\n", "---|".repeat(axes.len() + 5)));
    for r in rows {
        let cells: Vec<String> = r.values.iter().map(|s| pipeline::show_value(&s.value)).collect();
        let short = |s: Stage| r.key(s).map(|k| artifact::short(k).to_string()).unwrap_or_else(|| "—".into());
        let (val, test) = match &r.error {
            Some(e) => (format!("failed: {}", first_line(e)), "—".into()),
            None => (
                r.validation.map(|(_, v)| format!("{v:.4}")).unwrap_or_else(|| "—".into()),
                r.test.as_ref().map(|(_, _, v)| format!("{v:.4}")).unwrap_or_else(|| "—".into()),
            ),
        };
        let secs = r.train_seconds.map(|s| format!("{s:.1}")).unwrap_or_else(|| "—".into());
        t.push_str(&format!("| {} | {val} | {test} | {secs} | {} | {} |\n", cells.join(" | "), short(Stage::Train), short(Stage::Evaluate)));
    }
    t
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// The pipeline files a `gc` keeps: each file's every sweep combination (the artifacts of a
/// sweep are all referenced by its file).
pub fn expand(path: &Path) -> anyhow::Result<Vec<pipeline::Pipeline>> {
    let s = pipeline::load_sweep(path, &[], &[])?;
    Ok(if s.combinations.is_empty() { vec![s.base] } else { s.combinations.into_iter().map(|(_, p)| p).collect() })
}
