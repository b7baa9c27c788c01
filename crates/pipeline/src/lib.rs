//! Pipeline files (YAML): a name, an optional store, and one section per stage in the fixed
//! order download → tokenize → train → evaluate → export. Every struct a user writes denies
//! unknown fields; errors name the file, the line and the valid keys.

mod check;
pub mod files;
mod params;
mod sweep;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, Visitor};
use serde::Deserialize;

pub use check::{did_you_mean, positive_index, split_exists, Params};
pub use params::*;
pub use sweep::{load_sweep, show_value, Axis, Setting, Sweep};

/// The environment variables that make a stage binary one rank of several: torchrun's,
/// Slurm's and `FT_LAUNCHER`, every one `collective::Launch` reads (its tests hold it to this
/// list). The runner starts its binaries without them, and sets them itself for the ranks it
/// starts, so a run inside a torchrun or Slurm job is still one process per stage.
pub const LAUNCH_VARS: &[&str] = &[
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_NTASKS_PER_NODE",
    "SLURM_TASKS_PER_NODE",
    "FT_LAUNCHER",
];

/// The stages, in pipeline order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Download,
    Tokenize,
    Train,
    Evaluate,
    Export,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Download, Stage::Tokenize, Stage::Train, Stage::Evaluate, Stage::Export];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Download => "download",
            Stage::Tokenize => "tokenize",
            Stage::Train => "train",
            Stage::Evaluate => "evaluate",
            Stage::Export => "export",
        }
    }

    /// The binary that runs this stage.
    pub fn binary(self) -> &'static str {
        match self {
            Stage::Download => "ft-download",
            Stage::Tokenize => "ft-tokenize",
            Stage::Train => "ft-train",
            Stage::Evaluate => "ft-evaluate",
            Stage::Export => "ft-export",
        }
    }

    /// The cargo package that holds the binary.
    pub fn package(self) -> &'static str {
        self.name()
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.name() == s)
    }

    /// The upstream stages whose artifacts this stage reads.
    pub fn inputs(self) -> &'static [Stage] {
        match self {
            Stage::Download => &[],
            Stage::Tokenize => &[Stage::Download],
            Stage::Train => &[Stage::Download, Stage::Tokenize],
            Stage::Evaluate => &[Stage::Tokenize, Stage::Train],
            Stage::Export => &[Stage::Download, Stage::Tokenize, Stage::Train],
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A stage section: the typed parameters (validated) and their JSON form (passed to the binary).
#[derive(Clone, Debug)]
pub struct Section {
    pub stage: Stage,
    pub params: serde_json::Value,
}

/// A parsed pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    pub name: String,
    /// The artifact store, relative to the current directory when not absolute.
    pub store: PathBuf,
    /// `store_remote`: the URL of a remote store shared by runs elsewhere (CI, teammates).
    pub store_remote: Option<String>,
    pub stages: Vec<Section>,
    /// The file's `sweep:` section: keys with several values (see [`load_sweep`]).
    pub sweep: Vec<Axis>,
}

impl Pipeline {
    pub fn section(&self, stage: Stage) -> Option<&Section> {
        self.stages.iter().find(|s| s.stage == stage)
    }
}

/// A pipeline or parameter file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot read: {source} (check the path)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{message}")]
    Parse { path: PathBuf, message: String },
}

const TOP_KEYS: &[&str] = &["name", "store", "store_remote", "download", "tokenize", "train", "evaluate", "export", "sweep"];

/// Parses one stage's parameters (typed, defaults applied, validated) into canonical JSON.
fn typed_section<'de, A: MapAccess<'de>>(stage: Stage, map: &mut A) -> Result<serde_json::Value, A::Error> {
    fn go<'de, A: MapAccess<'de>, T: Params>(map: &mut A) -> Result<serde_json::Value, A::Error> {
        let v: T = map.next_value()?;
        v.validate().map_err(de::Error::custom)?;
        serde_json::to_value(&v).map_err(de::Error::custom)
    }
    match stage {
        Stage::Download => go::<A, DownloadParams>(map),
        Stage::Tokenize => go::<A, TokenizeParams>(map),
        Stage::Train => go::<A, TrainParams>(map),
        Stage::Evaluate => go::<A, EvaluateParams>(map),
        Stage::Export => go::<A, ExportParams>(map),
    }
}

struct PipelineVisitor;

impl<'de> Visitor<'de> for PipelineVisitor {
    type Value = Pipeline;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a pipeline mapping with `name` and stage sections")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pipeline, A::Error> {
        let mut name: Option<String> = None;
        let mut store: Option<PathBuf> = None;
        let mut store_remote: Option<String> = None;
        let mut stages: Vec<Section> = Vec::new();
        let mut sweep: Option<Vec<Axis>> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "sweep" => {
                    if sweep.is_some() {
                        return Err(de::Error::duplicate_field("sweep"));
                    }
                    sweep = Some(sweep::sweep_section(map.next_value()?).map_err(de::Error::custom)?);
                }
                "name" => {
                    if name.is_some() {
                        return Err(de::Error::duplicate_field("name"));
                    }
                    name = Some(map.next_value()?);
                }
                "store" => {
                    if store.is_some() {
                        return Err(de::Error::duplicate_field("store"));
                    }
                    store = Some(map.next_value()?);
                }
                "store_remote" => {
                    if store_remote.is_some() {
                        return Err(de::Error::duplicate_field("store_remote"));
                    }
                    store_remote = Some(map.next_value()?);
                }
                other => {
                    let Some(stage) = Stage::parse(other) else {
                        let hint = did_you_mean(other, TOP_KEYS.iter().copied()).map(|k| format!("; did you mean `{k}`?")).unwrap_or_default();
                        return Err(de::Error::custom(format!(
                            "unknown stage or key `{other}`, expected one of {}{hint}",
                            TOP_KEYS.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                        )));
                    };
                    if let Some(last) = stages.last() {
                        if last.stage == stage {
                            return Err(de::Error::custom(format!("duplicate stage `{stage}`")));
                        }
                        if stages.iter().any(|s| s.stage == stage) {
                            return Err(de::Error::custom(format!("duplicate stage `{stage}`")));
                        }
                        if last.stage > stage {
                            return Err(de::Error::custom(format!(
                                "stage `{stage}` comes after `{}`; stages run in the order {} — move `{stage}` up",
                                last.stage,
                                Stage::ALL.map(|s| s.name()).join(" → ")
                            )));
                        }
                    }
                    let params = typed_section(stage, &mut map)?;
                    stages.push(Section { stage, params });
                }
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
        if stages.is_empty() {
            return Err(de::Error::custom("a pipeline needs at least one stage section"));
        }
        Ok(Pipeline { name, store: store.unwrap_or_else(|| PathBuf::from("data")), store_remote, stages, sweep: sweep.unwrap_or_default() })
    }
}

impl<'de> Deserialize<'de> for Pipeline {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Pipeline, D::Error> {
        d.deserialize_map(PipelineVisitor)
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`" gets "; did you mean `a`?" for a near
/// miss.
fn suggest(text: String) -> String {
    let Some(rest) = text.split("unknown field `").nth(1) else { return text };
    let Some((field, tail)) = rest.split_once('`') else { return text };
    let valid: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    match did_you_mean(field, valid.iter().copied()) {
        Some(k) => {
            // serde_yaml_ng appends the location after the list; the hint goes before it.
            match text.find(" at line ") {
                Some(at) => format!("{}; did you mean `{k}`?{}", &text[..at], &text[at..]),
                None => format!("{text}; did you mean `{k}`?"),
            }
        }
        None => text,
    }
}

/// Formats a YAML error as `LINE:COLUMN: message` (the path is prepended by the caller).
fn yaml_message(e: &serde_yaml_ng::Error) -> String {
    let text = suggest(e.to_string());
    match e.location() {
        // serde_yaml_ng appends " at line L column C" to messages; keep one location, in front.
        Some(loc) => {
            let msg = text.split(" at line ").next().unwrap_or(&text).to_string();
            format!("{}:{}: {msg}", loc.line(), loc.column())
        }
        None => format!(" {text}"),
    }
}

/// The line of the last top-level `key:` in a YAML text (1-based).
fn top_level_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with(':')))
        .map(|(i, _)| i + 1)
        .last()
}

/// What the sections of a pipeline must agree on, knowable from the file alone: the splits that
/// train and evaluate read among those download will produce (when its parameters tell), and a
/// positive class among the class names it was given. Also passes `evaluate.positive_class` to
/// `train` for `select_metric: f1` when train has none, so both pick the same class.
fn cross_check(p: &mut Pipeline) -> Result<(), (Stage, String)> {
    let evaluate: Option<EvaluateParams> = p.typed(Stage::Evaluate).transpose().map_err(|e| (Stage::Evaluate, e))?;
    let export: Option<ExportParams> = p.typed(Stage::Export).transpose().map_err(|e| (Stage::Export, e))?;
    let lora = p.typed::<TrainParams>(Stage::Train).transpose().map_err(|e| (Stage::Train, e))?.is_some_and(|t| t.lora.is_some());
    if let Some(f) = export.map(|e| e.format).filter(|f| *f != ExportFormat::Merged && !lora) {
        let name = if f == ExportFormat::Peft { "peft" } else { "both" };
        return Err((Stage::Export, format!("export.format {name} writes a PEFT adapter, which only a LoRA run has; add train.lora (e.g. `lora: {{}}`) or remove export.format")));
    }
    if let Some(train) = p.stages.iter_mut().find(|s| s.stage == Stage::Train) {
        let f1 = train.params.get("select_metric").and_then(|v| v.as_str()) == Some("f1");
        let unset = train.params.get("positive_class").is_none_or(|v| v.is_null());
        if let (true, true, Some(pc)) = (f1, unset, evaluate.and_then(|e| e.positive_class)) {
            train.params["positive_class"] = serde_json::json!(pc);
        }
    }
    let Some(download) = p.typed::<DownloadParams>(Stage::Download).transpose().map_err(|e| (Stage::Download, e))? else { return Ok(()) };
    if let (Some(col), Some(t)) = (&download.columns.text_pair, p.typed::<TokenizeParams>(Stage::Tokenize).transpose().map_err(|e| (Stage::Tokenize, e))?) {
        if t.truncation == Truncation::HeadTail {
            return Err((Stage::Tokenize, format!("tokenize.truncation head_tail cuts single texts, and download.columns.text_pair `{col}` makes sentence pairs, which tokenize.pair_truncation cuts (longest_first, only_first, only_second); remove truncation")));
        }
    }
    let classes = download.label_names.as_ref().map(|n| n.len());
    if let Some(t) = p.typed::<TrainParams>(Stage::Train).transpose().map_err(|e| (Stage::Train, e))? {
        t.check_task(download.task, classes).map_err(|e| (Stage::Train, e))?;
    }
    if let Some(e) = p.typed::<EvaluateParams>(Stage::Evaluate).transpose().map_err(|e| (Stage::Evaluate, e))? {
        e.check_task(download.task).map_err(|e| (Stage::Evaluate, e))?;
    }
    let splits = download.planned_splits();
    let source = format!(
        "{} (with the splits carved from train)",
        if download.splits.is_empty() { "download.dataset.files" } else { "download.splits" }
    );
    if let Some(splits) = &splits {
        for split in download.max_examples.keys() {
            split_exists(&format!("download.max_examples.{split}: split"), split, splits, &source).map_err(|e| (Stage::Download, e))?;
        }
    }
    p.check_reads(splits.as_ref(), download.label_names.as_deref(), &source)
}

impl Pipeline {
    /// Checks that the splits train and evaluate read are among `splits` and their positive
    /// classes among `names`, where those are known; `source` says where the splits come from.
    /// The error carries the stage whose section is at fault. Used when the file is read (with
    /// what download's parameters tell) and by the runner (with what the download artifact
    /// holds).
    pub fn check_reads(&self, splits: Option<&std::collections::BTreeSet<String>>, names: Option<&[String]>, source: &str) -> Result<(), (Stage, String)> {
        let train = self.typed::<TrainParams>(Stage::Train).transpose().map_err(|e| (Stage::Train, e))?;
        let evaluate = self.typed::<EvaluateParams>(Stage::Evaluate).transpose().map_err(|e| (Stage::Evaluate, e))?;
        let reads = [
            train.map(|t| (Stage::Train, "train.validation_split", t.validation_split, t.positive_class)),
            evaluate.map(|e| (Stage::Evaluate, "evaluate.split", e.split, e.positive_class)),
        ];
        for (stage, split_key, split, positive) in reads.into_iter().flatten() {
            if let Some(splits) = splits {
                split_exists(split_key, &split, splits, source).map_err(|e| (stage, e))?;
            }
            if let Some(names) = names {
                positive_index(&format!("{stage}.positive_class"), positive.as_deref(), names).map_err(|e| (stage, e))?;
            }
        }
        Ok(())
    }

    /// A section's typed parameters (`None` when the pipeline has no such section).
    pub fn typed<T: serde::de::DeserializeOwned>(&self, stage: Stage) -> Option<Result<T, String>> {
        self.section(stage).map(|s| serde_json::from_value(s.params.clone()).map_err(|e| format!("{stage}: {e}")))
    }
}

/// Parses a pipeline from text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Pipeline, Error> {
    let mut p = parse_sections(path, text)?;
    cross_check(&mut p).map_err(|(stage, message)| {
        let line = top_level_line(text, stage.name()).unwrap_or(1);
        Error::Parse { path: path.to_path_buf(), message: format!("{line}:1: {message}") }
    })?;
    Ok(p)
}

fn parse_sections(path: &Path, text: &str) -> Result<Pipeline, Error> {
    serde_yaml_ng::from_str::<Pipeline>(text).map_err(|e| {
        let mut message = yaml_message(&e);
        // Errors raised about whole stage sections (order, duplicates, unknown stages) carry the
        // mapping's start; point at the offending top-level key instead.
        if message.starts_with("1:1: ") {
            let body = &message[5..];
            let key = body.split('`').nth(1).unwrap_or_default();
            if let Some(line) = top_level_line(text, key) {
                message = format!("{line}:1: {body}");
            }
        }
        Error::Parse { path: path.to_path_buf(), message }
    })
}

/// Reads and parses a pipeline file.
pub fn load(path: &Path) -> Result<Pipeline, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
    parse(path, &text)
}

/// Reads one stage's parameter file (YAML or JSON) into its typed form.
pub fn load_params<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
    serde_yaml_ng::from_str::<T>(&text).map_err(|e| Error::Parse { path: path.to_path_buf(), message: yaml_message(&e) })
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)] // clippy.toml's allow-unwrap-in-tests misses some of these tests
    use super::*;

    pub(crate) const ONE_FILE: &str = "name: p
download:
  dataset:
    files:
      train: all.csv
  model: {path: m}
tokenize:
  max_length: 64
train:
  epochs: 1
evaluate:
  split: test
";

    fn err(text: &str) -> String {
        parse(Path::new("p.yaml"), text).unwrap_err().to_string()
    }

    #[test]
    fn a_split_no_stage_will_make_is_refused_at_once_naming_the_splits() {
        let e = err(ONE_FILE);
        assert!(e.starts_with("p.yaml:11:1: evaluate.split `test` will not exist"), "{e}");
        assert!(e.contains("`train`, `validation`") && e.contains("download.test"), "{e}");
        // Carving a test split from train makes it exist.
        let with_test = ONE_FILE.replace("  model: {path: m}", "  model: {path: m}\n  test: {fraction: 0.2}");
        parse(Path::new("p.yaml"), &with_test).unwrap();
        let e = err(&ONE_FILE.replace("epochs: 1", "epochs: 1\n  validation_split: dev").replace("split: test", "split: validation"));
        assert!(e.contains("train.validation_split `dev`"), "{e}");
        // No validation carved (fraction 0): validation does not exist either.
        let e = err(&ONE_FILE.replace("  model: {path: m}", "  model: {path: m}\n  validation: {fraction: 0}").replace("split: test", "split: train"));
        assert!(e.contains("train.validation_split `validation`") && e.contains("gives the splits `train`;"), "{e}");
    }

    #[test]
    fn task_settings_that_do_not_fit_the_task_are_refused_when_the_file_is_read() {
        let ok = ONE_FILE.replace("split: test", "split: validation");
        for (from, to, needle) in [
            ("epochs: 1", "epochs: 1\n  select_metric: pearson", "train.select_metric `pearson` does not apply to a single_label task; use one of accuracy, f1"),
            ("  model: {path: m}", "  model: {path: m}\n  task: regression", ""),
            ("epochs: 1", "epochs: 1\n  label_smoothing: 1.5", "train.label_smoothing must be in [0, 1)"),
            ("epochs: 1", "epochs: 1\n  class_weights: [1, -2]", "train.class_weights[1] must be a non-negative number"),
            ("split: validation", "split: validation\n  threshold: 1.5", "evaluate.threshold must be a probability"),
            ("split: validation", "split: validation\n  threshold: tune", "evaluate.threshold applies to multi-label classification; this is a single_label task"),
            ("max_length: 64", "max_length: 64\n  truncation: head_tail\n  head_tokens: 16", ""),
        ] {
            let text = ok.replace(from, to);
            match needle {
                "" => {
                    parse(Path::new("p.yaml"), &text).unwrap();
                }
                _ => assert!(err(&text).contains(needle), "{to}: {}", err(&text)),
            }
        }
        let regression = ok.replace("  model: {path: m}", "  model: {path: m}\n  task: regression");
        for (from, to, needle) in [
            ("epochs: 1", "epochs: 1\n  label_smoothing: 0.1", "train.label_smoothing applies to single-label classification; this is a regression task"),
            ("epochs: 1", "epochs: 1\n  class_weights: balanced", "train.class_weights apply to classification"),
            ("epochs: 1", "epochs: 1\n  select_metric: f1", "does not apply to a regression task; use one of pearson, spearman, mse, loss"),
        ] {
            assert!(err(&regression.replace(from, to)).contains(needle), "{to}: {}", err(&regression.replace(from, to)));
        }
        let named = ok.replace("  model: {path: m}", "  model: {path: m}\n  label_names: [a, b, c]\n  task: multi_label");
        let e = err(&named.replace("epochs: 1", "epochs: 1\n  class_weights: [1, 2]"));
        assert!(e.contains("train.class_weights lists 2 weights for 3 classes"), "{e}");
        parse(Path::new("p.yaml"), &named.replace("epochs: 1", "epochs: 1\n  class_weights: [1, 2, 3]\n  select_metric: f1_macro").replace("split: validation", "split: validation\n  threshold: tune")).unwrap();
        let pairs = ok.replace("  model: {path: m}", "  model: {path: m}\n  columns: {text: a, text_pair: b}");
        let e = err(&pairs.replace("max_length: 64", "max_length: 64\n  truncation: head_tail\n  head_tokens: 16"));
        assert!(e.contains("head_tail cuts single texts") && e.contains("text_pair `b`") && e.contains("pair_truncation"), "{e}");
    }

    #[test]
    fn ranges_and_positive_classes_are_checked_when_the_file_is_read() {
        for (from, to, needle) in [
            ("epochs: 1", "epochs: 1\n  batch_size: 0", "train.batch_size must be positive"),
            ("epochs: 1", "epochs: 1\n  warmup_ratio: 1.5", "train.warmup_ratio must be in [0, 1)"),
            ("epochs: 1", "epochs: -1", "train.epochs must be positive"),
            ("max_length: 64", "max_length: 2", "tokenize.max_length must be at least 3"),
            ("  model: {path: m}", "  model: {path: m}\n  validation: {fraction: 1.0}", "download.validation.fraction must be in [0, 1)"),
            ("  model: {path: m}", "  model: {path: m}\n  test: {fraction: 0}", "download.test.fraction must be a fraction in (0, 1)"),
            ("  model: {path: m}", "  model: {path: m}\n  test: {fraction: 0.5}\n  validation: {fraction: 0.5}", "leave nothing to train on"),
            ("split: test", "split: train\n  batch_size: 0", "evaluate.batch_size must be positive"),
            ("  model: {path: m}", "  model: {path: m}\n  label_names: [neg, pos]", "evaluate.split `test`"),
            ("  model: {path: m}", "  model: {path: m}\n  max_examples: {dev: 10}", "download.max_examples.dev: split `dev` will not exist"),
        ] {
            let e = err(&ONE_FILE.replace(from, to));
            assert!(e.contains(needle), "{to}: {e}");
        }
        let named = ONE_FILE.replace("  model: {path: m}", "  model: {path: m}\n  label_names: [neg, pos]").replace("split: test", "split: validation");
        parse(Path::new("p.yaml"), &named).unwrap();
        let e = err(&named.replace("split: validation", "split: validation\n  positive_class: good"));
        assert!(e.contains("evaluate.positive_class `good`") && e.contains("neg"), "{e}");
    }

    #[test]
    fn the_remote_store_is_read_and_a_near_miss_of_it_named() {
        let ok = ONE_FILE.replace("split: test", "split: validation");
        let p = parse(Path::new("p.yaml"), &ok.replace("name: p", "name: p\nstore_remote: s3://team/ft")).unwrap();
        assert_eq!(p.store_remote.as_deref(), Some("s3://team/ft"));
        assert_eq!(parse(Path::new("p.yaml"), &ok).unwrap().store_remote, None);
        let e = err(&ONE_FILE.replace("name: p", "name: p\nstore_remot: s3://team/ft"));
        assert!(e.contains("did you mean `store_remote`?"), "{e}");
        let e = err(&ONE_FILE.replace("name: p", "name: p\nstore_remote: a\nstore_remote: b"));
        assert!(e.contains("store_remote"), "{e}");
    }

    #[test]
    fn a_near_miss_key_gets_a_suggestion() {
        let e = err(&ONE_FILE.replace("epochs: 1", "epochs: 1\n  learnig_rate: 1.0e-4"));
        assert!(e.contains("unknown field `learnig_rate`") && e.contains("did you mean `learning_rate`?"), "{e}");
        assert!(e.contains("p.yaml:"), "{e}");
        let e = err(&ONE_FILE.replace("train:", "trian:"));
        assert!(e.contains("did you mean `train`?"), "{e}");
        // Nothing near: no suggestion.
        let e = err(&ONE_FILE.replace("epochs: 1", "epochs: 1\n  zzzzzzzz: 1"));
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn train_selects_by_f1_of_the_class_evaluate_reports() {
        let text = ONE_FILE.replace("epochs: 1", "epochs: 1\n  select_metric: f1").replace("split: test", "split: validation\n  positive_class: neg");
        let p = parse(Path::new("p.yaml"), &text).unwrap();
        let t: TrainParams = p.typed(Stage::Train).unwrap().unwrap();
        assert_eq!(t.positive_class.as_deref(), Some("neg"));
        // Selecting by accuracy, the class does not matter to train: its key stays as it was.
        let p = parse(Path::new("p.yaml"), &text.replace("select_metric: f1", "select_metric: accuracy")).unwrap();
        let t: TrainParams = p.typed(Stage::Train).unwrap().unwrap();
        assert_eq!(t.positive_class, None);
    }
}
