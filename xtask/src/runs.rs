//! `cargo xtask runs`: every train artifact of a store with the evaluate artifacts made from it,
//! read from their manifests and files, and `--compare`, what differs between two runs.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context as _};
use artifact::{Artifact, Store};
use pipeline::files::{EvalMetrics, Hparams, TrainSummary};
use pipeline::Stage;
use serde_json::{json, Value};

/// One train artifact and what was made from it.
struct Run {
    train: Artifact,
    /// The pipelines (of those named) whose parameters made it.
    pipelines: Vec<String>,
    /// Its parameters and its upstream stages', flattened to `stage.key` → value.
    params: BTreeMap<String, Value>,
    summary: Option<TrainSummary>,
    device: Option<String>,
    evaluations: Vec<(Artifact, Option<EvalMetrics>)>,
}

/// `stage.key.sub` → value for every leaf of a stage's canonical parameters.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => m.iter().for_each(|(k, v)| flatten(&format!("{prefix}.{k}"), v, out)),
        leaf => {
            out.insert(prefix.to_string(), leaf.clone());
        }
    }
}

/// The canonical parameters of the store's artifacts, each manifest read once however many
/// runs share it.
#[derive(Default)]
struct ParamsCache(BTreeMap<(String, String), Option<Lineage>>);

/// An artifact's parameters and its inputs.
type Lineage = (Value, BTreeMap<String, artifact::InputRef>);

impl ParamsCache {
    fn get(&mut self, store: &Store, stage: &str, key: &str) -> Option<&Lineage> {
        self.0
            .entry((stage.to_string(), key.to_string()))
            .or_insert_with(|| Artifact::open(&store.root.join(stage).join(key)).ok().map(|a| (a.manifest.params, a.manifest.inputs)))
            .as_ref()
    }
}

/// The train artifact's parameters and those of the artifacts it was made from (tokenize and,
/// through it and directly, download), as far as the store still holds them.
fn lineage_params(store: &Store, cache: &mut ParamsCache, train: &Artifact) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    flatten("train", &train.manifest.params, &mut out);
    let mut pending: Vec<(String, artifact::InputRef)> = train.manifest.inputs.iter().map(|(n, i)| (n.clone(), i.clone())).collect();
    while let Some((name, input)) = pending.pop() {
        if input.key.is_empty() || out.keys().any(|k| k.starts_with(&format!("{name}."))) {
            continue;
        }
        if let Some((params, inputs)) = cache.get(store, &input.stage, &input.key) {
            flatten(&name, params, &mut out);
            pending.extend(inputs.iter().map(|(n, i)| (n.clone(), i.clone())));
        }
    }
    out
}

/// The names of the pipelines whose download, tokenize and train parameters are all in `params`
/// with the same values.
fn made_by(params: &BTreeMap<String, Value>, pipelines: &[pipeline::Pipeline]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in pipelines {
        let mut want = BTreeMap::new();
        for s in p.stages.iter().filter(|s| matches!(s.stage, Stage::Download | Stage::Tokenize | Stage::Train)) {
            flatten(s.stage.name(), &s.params, &mut want);
        }
        if want.iter().all(|(k, v)| params.get(k) == Some(v)) && !names.contains(&p.name) {
            names.push(p.name.clone());
        }
    }
    names
}

fn load_runs(store: &Store, pipelines: &[pipeline::Pipeline]) -> Vec<Run> {
    // Each evaluation under the train key it was made from.
    let mut by_train: BTreeMap<String, Vec<Artifact>> = BTreeMap::new();
    for e in store.list("evaluate") {
        if let Some(i) = e.manifest.inputs.get("train") {
            by_train.entry(i.key.clone()).or_default().push(e);
        }
    }
    let mut cache = ParamsCache::default();
    store
        .list("train")
        .into_iter()
        .map(|train| {
            let evaluations = by_train
                .remove(&train.manifest.key)
                .unwrap_or_default()
                .into_iter()
                .map(|e| {
                    let m = pipeline::files::read::<EvalMetrics>(&e.dir.join("metrics.json")).ok();
                    (e, m)
                })
                .collect();
            let params = lineage_params(store, &mut cache, &train);
            Run {
                pipelines: made_by(&params, pipelines),
                params,
                summary: pipeline::files::read(&train.dir.join("summary.json")).ok(),
                device: pipeline::files::read::<Hparams>(&train.dir.join("hparams.json")).ok().map(|h| h.device),
                evaluations,
                train,
            }
        })
        .collect()
}

/// The keys whose values are not the same in every run listed (a key one run lacks differs).
fn differing(runs: &[&Run]) -> Vec<String> {
    let keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.params.keys()).collect();
    keys.into_iter().filter(|k| runs.windows(2).any(|w| w[0].params.get(*k) != w[1].params.get(*k))).cloned().collect()
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "—".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// `YYYY-MM-DD HH:MM` UTC of a Unix time (the civil-from-days algorithm).
fn utc(t: u64) -> String {
    let (days, secs) = ((t / 86_400) as i64, t % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", secs / 3600, secs % 3600 / 60)
}

fn validation(r: &Run) -> Option<(pipeline::Metric, f64)> {
    r.summary.as_ref()?.selected()
}

fn validation_json(r: &Run) -> Value {
    json!(validation(r).map(|(m, v)| json!({"metric": m.name(), "value": v})))
}

fn evaluations_json(r: &Run) -> Value {
    r.evaluations
        .iter()
        .map(|(e, m)| {
            json!({
                "key": e.manifest.key,
                "split": m.as_ref().map(|m| m.split.clone()),
                "metric": m.as_ref().map(|m| m.headline().0.name()),
                "value": m.as_ref().map(|m| m.headline().1),
            })
        })
        .collect()
}

fn run_json(r: &Run, diff: &[String]) -> Value {
    json!({
        "pipelines": r.pipelines,
        "created_unix": r.train.manifest.created_unix,
        "date": utc(r.train.manifest.created_unix),
        "params": diff.iter().map(|k| (k.clone(), r.params.get(k).cloned().unwrap_or(Value::Null))).collect::<serde_json::Map<_, _>>(),
        "validation": validation_json(r),
        "train_wall_seconds": r.train.manifest.wall_seconds,
        "device": r.device,
        "train_key": r.train.manifest.key,
        "evaluations": evaluations_json(r),
    })
}

/// The table: newest run first, one row per evaluation (a run never evaluated has one row).
fn table(runs: &[&Run], diff: &[String]) -> String {
    let mut t = format!("| pipeline | date (UTC) | {} | validation | evaluate | train s | device | train key | evaluate key |\n", diff.join(" | "));
    t.push_str(&format!("|{}\n", "---|".repeat(diff.len() + 8)));
    for r in runs {
        let val = validation(r).map(|(m, v)| format!("{} {v:.4}", m.name())).unwrap_or_else(|| "—".into());
        let cells: Vec<String> = diff.iter().map(|k| show(r.params.get(k))).collect();
        let name = if r.pipelines.is_empty() { "—".into() } else { r.pipelines.join(", ") };
        let evals: Vec<(String, String)> = if r.evaluations.is_empty() {
            vec![("—".into(), "—".into())]
        } else {
            r.evaluations
                .iter()
                .map(|(e, m)| {
                    let what = m.as_ref().map(|m| format!("{} {} {:.4}", m.split, m.headline().0.name(), m.headline().1)).unwrap_or_else(|| "—".into());
                    (what, artifact::short(&e.manifest.key).to_string())
                })
                .collect()
        };
        for (what, key) in evals {
            t.push_str(&format!(
                "| {name} | {} | {} | {val} | {what} | {:.1} | {} | {} | {key} |\n",
                utc(r.train.manifest.created_unix),
                cells.join(" | "),
                r.train.manifest.wall_seconds,
                r.device.as_deref().unwrap_or("—"),
                artifact::short(&r.train.manifest.key),
            ));
        }
    }
    t
}

/// The run whose train key starts with `prefix`; an ambiguous or unknown prefix is an error.
fn resolve<'a>(runs: &'a [Run], prefix: &str) -> anyhow::Result<&'a Run> {
    let hits: Vec<&Run> = runs.iter().filter(|r| r.train.manifest.key.starts_with(prefix)).collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => bail!("no train artifact's key starts with `{prefix}` ({} train artifacts in the store; `cargo xtask runs` lists them)", runs.len()),
        many => bail!("`{prefix}` is ambiguous: it starts the train keys {}; give more of the key", many.iter().map(|r| r.train.manifest.key.as_str()).collect::<Vec<_>>().join(", ")),
    }
}

fn compare(a: &Run, b: &Run, json_out: bool) -> String {
    let params = differing(&[a, b]);
    let inputs: Vec<(String, String, String)> = a
        .train
        .manifest
        .inputs
        .keys()
        .chain(b.train.manifest.inputs.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter_map(|k| {
            let (x, y) = (a.train.manifest.inputs.get(k).map(|i| i.key.clone()), b.train.manifest.inputs.get(k).map(|i| i.key.clone()));
            (x != y).then(|| (k.clone(), x.unwrap_or_default(), y.unwrap_or_default()))
        })
        .collect();
    let metric = |r: &Run| validation(r).map(|(m, v)| format!("{} {v:.4}", m.name())).unwrap_or_else(|| "—".into());
    let tests = |r: &Run| r.evaluations.iter().filter_map(|(_, m)| m.as_ref().map(|m| format!("{} {} {:.4}", m.split, m.headline().0.name(), m.headline().1))).collect::<Vec<_>>().join("; ");
    if json_out {
        return json!({
            "a": a.train.manifest.key, "b": b.train.manifest.key,
            "params": params.iter().map(|k| json!({"key": k, "a": a.params.get(k), "b": b.params.get(k)})).collect::<Vec<_>>(),
            "inputs": inputs.iter().map(|(k, x, y)| json!({"input": k, "a": x, "b": y})).collect::<Vec<_>>(),
            "validation": {"a": validation_json(a), "b": validation_json(b)},
            "evaluations": {"a": evaluations_json(a), "b": evaluations_json(b)},
        })
        .to_string();
    }
    let (ka, kb) = (artifact::short(&a.train.manifest.key), artifact::short(&b.train.manifest.key));
    let mut t = format!("| | {ka} | {kb} |\n|---|---|---|\n");
    for k in &params {
        t.push_str(&format!("| {k} | {} | {} |\n", show(a.params.get(k)), show(b.params.get(k))));
    }
    for (k, x, y) in &inputs {
        t.push_str(&format!("| input {k} | {} | {} |\n", artifact::short(x), artifact::short(y)));
    }
    t.push_str(&format!("| validation | {} | {} |\n| evaluations | {} | {} |\n", metric(a), metric(b), tests(a), tests(b)));
    if params.is_empty() && inputs.is_empty() {
        t.push_str("\nSame parameters and inputs: the runs differ only in code or environment (see their manifests).\n");
    }
    t
}

/// `cargo xtask runs`: every run of the store, or only those of `pipelines` when given.
pub fn runs(store: &std::path::Path, pipelines: Option<&[pipeline::Pipeline]>, compare_keys: Option<&[String]>, json_out: bool) -> anyhow::Result<()> {
    if !store.is_dir() {
        bail!("{}: no artifact store there (give --store, or run a pipeline first)", store.display());
    }
    let store = Store::open(store).with_context(|| format!("opening the store {}", store.display()))?;
    let all = load_runs(&store, pipelines.unwrap_or_default());
    if let Some([a, b]) = compare_keys {
        println!("{}", compare(resolve(&all, a)?, resolve(&all, b)?, json_out));
        return Ok(());
    }
    let listed: Vec<&Run> = if pipelines.is_some() { all.iter().filter(|r| !r.pipelines.is_empty()).collect() } else { all.iter().collect() };
    let diff = differing(&listed);
    if json_out {
        println!("{}", json!({"runs": listed.iter().map(|r| run_json(r, &diff)).collect::<Vec<_>>(), "differing": diff}));
    } else if listed.is_empty() {
        println!("no train artifacts in {}{}", store.root.display(), if pipelines.is_some() { " made by the pipelines named" } else { "" });
    } else {
        print!("{}", table(&listed, &diff));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00");
        assert_eq!(super::utc(1_796_232_400), "2026-12-02 17:26");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00");
    }
}
