//! The files stages exchange through artifacts, one struct each, shared by the writer and every
//! reader, so the two cannot drift apart. Reading checks every required field: a missing or
//! ill-typed one is an error naming the file and the field ([`read`]); nothing silently takes a
//! default. Optional fields are `Option`s because they are optional in meaning (a local model
//! has no Hub commit), never to paper over an old writer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::params::{Columns, Metric, PairTruncation, Task, TrainParams, Truncation};

/// A typed artifact file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: cannot read: {source} (rerun the stage that wrote it)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source} (the file does not match what this version of the stage writes; rerun the stage that wrote it)")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path}, line {line}: {source} (the file does not match what this version of the stage writes; rerun the stage that wrote it)")]
    Line { path: PathBuf, line: usize, source: serde_json::Error },
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Rows per row group of the dataset artifact's split files (`dataset/<split>.parquet`): the
/// download stage writes groups of this size and the tokenize stage reads one group at a time,
/// so that it never holds a whole split in memory.
pub const DATASET_ROW_GROUP: usize = 65_536;

/// Reads a typed JSON file. serde's message names the field (`missing field `pad_id``,
/// `invalid type: string "x", expected u32`) and the line; the path is added here.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let bytes = std::fs::read(path).map_err(|source| FileError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| FileError::Parse { path: path.to_path_buf(), source })
}

/// Writes a typed JSON file (pretty-printed).
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), FileError> {
    let text = serde_json::to_vec_pretty(value).map_err(|source| FileError::Parse { path: path.to_path_buf(), source })?;
    std::fs::write(path, text).map_err(|source| FileError::Write { path: path.to_path_buf(), source })
}

/// `labels.json` (download's `dataset/`, tokenize): the task and its class names in id order
/// (multi-label: the labels in bit order; regression: one name, the score's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Labels {
    pub task: Task,
    pub names: Vec<String>,
}

impl Labels {
    /// The classifier's outputs: one per class or label, one for regression.
    pub fn outputs(&self) -> usize {
        match self.task {
            Task::Regression => 1,
            _ => self.names.len(),
        }
    }
}

/// Where a dataset or model came from: a Hub repository at a commit, or local files.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    /// Hub repository (absent for local sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_cache: Option<bool>,
    /// A local model directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Local dataset files, split -> pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<BTreeMap<String, String>>,
    /// sha256 of every file taken.
    pub files_sha256: BTreeMap<String, String>,
}

impl Origin {
    /// The repository or local path, for people.
    pub fn name(&self) -> String {
        match (&self.repo, &self.path, &self.local) {
            (Some(r), _, _) => r.clone(),
            (None, Some(p), _) => p.clone(),
            _ => "local files".into(),
        }
    }
}

/// Rows and label counts of one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitInfo {
    pub rows: usize,
    /// Examples per class (single-label), examples carrying each label (multi-label), empty
    /// (regression).
    pub class_counts: Vec<usize>,
    /// Regression: the scores' mean, standard deviation, minimum and maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<ScoreStats>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreStats {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

/// A split carved from train.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Carved {
    pub from: String,
    pub fraction: f64,
    pub seed: u64,
    /// By class (single-label); else a seeded random draw (multi-label, regression).
    pub stratified: bool,
    pub rows: usize,
}

/// Download's `dataset/info.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetInfo {
    pub task: Task,
    pub source: Origin,
    pub splits: BTreeMap<String, SplitInfo>,
    pub validation_carved: Option<Carved>,
    pub test_carved: Option<Carved>,
    pub columns: Columns,
    /// Output split -> source split.
    pub split_map: BTreeMap<String, String>,
}

/// Token statistics of one split (tokenize's `meta.json`). Only what the data determines: the
/// time a split took is in the manifest's summary, so a rerun on the same inputs writes the same
/// bytes and leaves later stages cached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitStats {
    pub examples: usize,
    pub tokens: usize,
    pub mean_tokens: f64,
    pub untruncated_length: Percentiles,
    pub fraction_truncated: f64,
    pub unk_rate: f64,
    pub shards: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percentiles {
    pub p50: usize,
    pub p90: usize,
    pub p95: usize,
    pub p99: usize,
    pub max: usize,
}

/// Tokenize's `meta.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeMeta {
    pub max_length: usize,
    pub truncation: Truncation,
    pub head_tokens: usize,
    /// The tokenizer's vocabulary, added tokens included.
    pub vocab_size: usize,
    /// The largest id the tokenizer can produce (added tokens may lie beyond `vocab_size`).
    pub max_id: u32,
    pub pad_id: u32,
    pub cls_id: Option<u32>,
    pub sep_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub tokenizer_source: String,
    /// Sentence pairs: the shards carry token types, and pairs were cut by this rule (`None`:
    /// one text per example).
    pub pair_truncation: Option<PairTruncation>,
    pub splits: BTreeMap<String, SplitStats>,
}

/// The loss and the task's metrics on a validation split. Each metric is there when the task
/// has it (see [`Task::metrics`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validation {
    pub loss: f64,
    pub examples: usize,
    /// Single-label accuracy; multi-label subset accuracy (every label of the example right).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Single-label: F1 of `positive_class` for two classes, macro F1 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
    /// The class `f1` is taken for (two classes), by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1_micro: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1_macro: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pearson: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spearman: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mse: Option<f64>,
}

impl Validation {
    /// The figure of metric `m` (`None` when this validation's task has no such metric).
    pub fn get(&self, m: Metric) -> Option<f64> {
        match m {
            Metric::Accuracy => self.accuracy,
            Metric::F1 => self.f1,
            Metric::F1Micro => self.f1_micro,
            Metric::F1Macro => self.f1_macro,
            Metric::Pearson => self.pearson,
            Metric::Spearman => self.spearman,
            Metric::Mse => self.mse,
            Metric::Loss => Some(self.loss),
        }
    }

    /// Every metric present, as `name value` pairs, the loss first.
    pub fn figures(&self) -> Vec<(&'static str, f64)> {
        [Metric::Loss, Metric::Accuracy, Metric::F1, Metric::F1Micro, Metric::F1Macro, Metric::Pearson, Metric::Spearman, Metric::Mse]
            .into_iter()
            .filter_map(|m| self.get(m).map(|v| (m.name(), v)))
            .collect()
    }
}

/// Train's `hparams.json`: every resolved setting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hparams {
    pub params: TrainParams,
    pub task: Task,
    /// The metric weights were selected by (`select_metric` resolved for the task).
    pub select_metric: Metric,
    pub total_steps: u64,
    pub device: String,
    pub precision: String,
    pub max_length: usize,
    pub labels: Vec<String>,
    /// Single-label with two classes: the class validation F1 is taken for.
    pub positive_class: Option<String>,
    /// The loss's class weights (`class_weights` resolved: `balanced` computed on train).
    pub class_weights: Option<Vec<f64>>,
    pub initialized: Vec<String>,
    /// The tokenizer class `AutoTokenizer` picks for the model's family.
    #[serde(default)]
    pub tokenizer_class: Option<String>,
    /// What `train.lora` resolved to (absent: a full fine-tune).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<Lora>,
}

/// A LoRA run's adapters as resolved for the model: what `adapter_config.json` says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lora {
    pub r: u32,
    pub alpha: f64,
    pub dropout: f64,
    /// As PEFT will match them: the names asked for, or the adapted module paths where those
    /// names would also match a layer without an adapter (a head layer).
    pub target_modules: Vec<String>,
    /// The modules trained in full: the head's, then those asked for.
    pub modules_to_save: Vec<String>,
    /// Every adapted module path, in layout order.
    pub adapted: Vec<String>,
}

/// Model FLOP utilisation on a GPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mfu {
    pub gpu: String,
    pub model_tflops_per_s: f64,
    pub mfu: f64,
}

/// Train's `summary.json` (also the manifest's summary).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSummary {
    pub steps: u64,
    pub resumed_from_step: Option<u64>,
    pub epochs_completed: u64,
    pub samples: u64,
    pub tokens: u64,
    pub train_seconds: f64,
    pub eval_and_checkpoint_seconds: f64,
    pub samples_per_second: f64,
    pub tokens_per_second: f64,
    pub best_step: Option<u64>,
    pub best_metric: Option<f64>,
    pub select_metric: Metric,
    /// The validation of the weights in `best.safetensors`.
    pub best_validation: Option<Validation>,
    /// The last validation (of `final.safetensors` when it ran at the end).
    pub last_validation: Option<Validation>,
    pub flop_utilisation: Option<Mfu>,
    /// Parameters that trained (all of them in a full fine-tune) and of the whole model.
    #[serde(default)]
    pub trainable_parameters: u64,
    #[serde(default)]
    pub parameters: u64,
    /// Bytes of the optimizer's state (AdamW's two fp32 moments per trainable parameter).
    #[serde(default)]
    pub optimizer_state_bytes: u64,
    /// Bytes of the last checkpoint's files (weights that train, moments, state).
    #[serde(default)]
    pub checkpoint_bytes: u64,
    /// How many ranks trained and how they talked; absent for one process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed: Option<DistributedRun>,
}

/// A data-parallel run, as the train summary (and so the manifest) records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistributedRun {
    pub world_size: usize,
    /// `gloo` or `nccl`.
    pub backend: String,
    /// `ft` (`--nproc-per-node`), `torchrun`, `slurm` or `env`.
    pub launcher: String,
}

impl TrainSummary {
    /// The metric that selected the weights and its best value on validation (none without a
    /// validation).
    pub fn selected(&self) -> Option<(Metric, f64)> {
        Some((self.select_metric, self.best_metric?))
    }
}

/// One line of train's `log.jsonl`: a training window or a validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogLine {
    /// `samples`: the real examples of the window since the previous line (with
    /// `batch_tokens`, batches hold varying counts).
    Train { step: u64, epoch: u64, loss: f64, lr: f64, grad_norm: f64, samples: u64, samples_per_s: f64, tokens_per_s: f64 },
    Eval { step: u64, epoch: u64, eval: Validation, best: bool },
}

impl LogLine {
    pub fn step(&self) -> u64 {
        match self {
            LogLine::Train { step, .. } | LogLine::Eval { step, .. } => *step,
        }
    }

    /// Steady-state throughput over the training windows after the first `warmup` ones: total
    /// real samples (and tokens) over total time, so that every step weighs the same. Samples
    /// are the ones the windows record, so `batch_tokens` runs (varying batch counts) count
    /// what their batches really held.
    pub fn steady_rates(lines: &[LogLine], warmup: usize) -> Option<(f64, f64)> {
        let (mut samples, mut tokens, mut secs) = (0.0, 0.0, 0.0);
        let windows = lines.iter().filter_map(|l| match l {
            LogLine::Train { samples, samples_per_s, tokens_per_s, .. } => Some((*samples as f64, *samples_per_s, *tokens_per_s)),
            LogLine::Eval { .. } => None,
        });
        for (n, sps, tps) in windows.skip(warmup) {
            if sps > 0.0 {
                let t = n / sps;
                samples += n;
                tokens += tps * t;
                secs += t;
            }
        }
        (secs > 0.0).then(|| (samples / secs, tokens / secs))
    }

    /// Every line of a log; a line that is not a [`LogLine`] is an error naming its number.
    pub fn parse_all(path: &Path, text: &str) -> Result<Vec<LogLine>, FileError> {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|source| FileError::Line { path: path.to_path_buf(), line: i + 1, source }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // clippy.toml's allow-unwrap-in-tests misses some of these tests
    use super::*;

    fn window(step: u64, samples: u64, secs: f64) -> LogLine {
        LogLine::Train { step, epoch: 0, loss: 1.0, lr: 1e-5, grad_norm: 1.0, samples, samples_per_s: samples as f64 / secs, tokens_per_s: 100.0 * samples as f64 / secs }
    }

    #[test]
    fn steady_rates_count_the_samples_batches_really_held() {
        // batch_tokens: 10 steps of up to 32 examples that held 50 and 150 examples.
        let log = [window(10, 400, 9.0), window(20, 50, 1.0), window(30, 150, 1.0)];
        let (sps, tps) = LogLine::steady_rates(&log, 1).unwrap();
        assert_eq!(sps, 100.0, "200 examples in 2 s (counting batch_size x steps would say 320)");
        assert_eq!(tps, 10_000.0);
        assert!(LogLine::steady_rates(&log[..1], 1).is_none());
    }

    #[test]
    fn a_missing_or_ill_typed_field_names_the_file_and_field() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("meta.json");
        std::fs::write(&p, r#"{"max_length": 64, "truncation": "head", "head_tokens": 0, "vocab_size": 100, "max_id": 99, "cls_id": 1, "sep_id": 2, "unk_id": null, "tokenizer_source": "vocab.txt", "splits": {}}"#).unwrap();
        let e = read::<TokenizeMeta>(&p).unwrap_err().to_string();
        assert!(e.contains("meta.json") && e.contains("missing field `pad_id`"), "{e}");
        std::fs::write(&p, r#"{"names": "neg"}"#).unwrap();
        let e = read::<Labels>(&p).unwrap_err().to_string();
        assert!(e.contains("meta.json") && e.contains("invalid type") && e.contains("sequence"), "{e}");
        let e = read::<Labels>(&tmp.path().join("none.json")).unwrap_err().to_string();
        assert!(e.contains("none.json") && e.contains("rerun the stage"), "{e}");
        std::fs::write(&p, r#"{"num_labels": 3, "id2label": {"0": "a", "1": "b"}}"#).unwrap();
        let e = ClassifierLabels::read_names(&p).unwrap_err();
        assert!(e.contains("no name for class 2"), "{e}");
        let log = format!("{}\n{{\"step\": 2}}\n", serde_json::to_string(&window(1, 16, 1.0)).unwrap());
        let e = LogLine::parse_all(Path::new("log.jsonl"), &log).unwrap_err().to_string();
        assert!(e.contains("log.jsonl, line 2"), "{e}");
    }
}

/// Precision, recall and F1 of one class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Averages {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Bootstrap 95% intervals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intervals {
    pub accuracy: Option<(f64, f64)>,
    pub f1: Option<(f64, f64)>,
    pub bootstrap_resamples: u32,
}

/// Accuracy over one bucket of untruncated text lengths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthBucket {
    pub min_tokens: u32,
    pub max_tokens: u32,
    pub examples: usize,
    pub accuracy: f64,
}

/// Single-label metrics of predictions against labels (evaluate's `metrics.json` holds them at
/// its top level).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub n: usize,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// `binary (positive class `pos`)` or `macro`.
    pub averaging: String,
    pub log_loss: f64,
    pub confusion_matrix: Vec<Vec<u64>>,
    pub per_class: BTreeMap<String, ClassScores>,
    #[serde(rename = "macro")]
    pub macro_avg: Averages,
    pub weighted: Averages,
    pub ci95: Intervals,
}

/// Multi-label metrics: every label is a yes/no decision at `threshold`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultiLabelScores {
    pub n: usize,
    /// Examples whose whole label set is right.
    pub subset_accuracy: f64,
    /// Over every (example, label) decision.
    pub micro: Averages,
    #[serde(rename = "macro")]
    pub macro_avg: Averages,
    pub per_label: BTreeMap<String, ClassScores>,
    /// The probability above which a label is predicted.
    pub threshold: f64,
    /// `tune`: the split the threshold was chosen on (the one maximising micro F1).
    pub threshold_tuned_on: Option<String>,
    /// Bootstrap 95% interval of micro F1.
    pub f1_micro_ci95: Option<(f64, f64)>,
    pub bootstrap_resamples: u32,
}

/// Regression metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegressionScores {
    pub n: usize,
    pub mse: f64,
    pub rmse: f64,
    pub mae: f64,
    pub pearson: f64,
    pub spearman: f64,
    /// Bootstrap 95% interval of Pearson's r.
    pub pearson_ci95: Option<(f64, f64)>,
    pub bootstrap_resamples: u32,
}

/// The metrics of a task (each variant has fields the others lack, so the file tells which).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TaskScores {
    SingleLabel(Scores),
    MultiLabel(MultiLabelScores),
    Regression(RegressionScores),
}

/// Evaluate's `metrics.json`: the scores and what they are of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub task: Task,
    #[serde(flatten)]
    pub scores: TaskScores,
    pub labels: Vec<String>,
    pub split: String,
    /// `best` or `final`, and the file those weights came from.
    pub weights: crate::params::Weights,
    pub weights_file: String,
    /// Single-label with two classes: the class precision, recall and F1 are of.
    pub positive_class: Option<String>,
    pub examples_per_second: f64,
    pub seconds: f64,
    pub device: String,
    /// Classification: accuracy (multi-label: subset accuracy) by untruncated length.
    pub accuracy_by_length: Vec<LengthBucket>,
}

impl EvalMetrics {
    /// The task's headline metric and its value: single-label accuracy, multi-label micro F1,
    /// regression Pearson.
    pub fn headline(&self) -> (crate::params::Metric, f64) {
        let value = match &self.scores {
            TaskScores::SingleLabel(s) => s.accuracy,
            TaskScores::MultiLabel(s) => s.micro.f1,
            TaskScores::Regression(s) => s.pearson,
        };
        (self.task.headline(), value)
    }

    /// The single-label scores, when the task is single-label.
    pub fn single(&self) -> Option<&Scores> {
        match &self.scores {
            TaskScores::SingleLabel(s) => Some(s),
            _ => None,
        }
    }
}

/// The classification head's labels in a trained model's `config.json` (the rest of the file is
/// the model's own configuration, read by the model crate).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierLabels {
    pub num_labels: usize,
    /// Class id (as a string, as transformers writes it) -> name.
    pub id2label: BTreeMap<String, String>,
}

impl ClassifierLabels {
    /// Reads the labels of `config.json`; every id below `num_labels` must have a name.
    pub fn read_names(path: &Path) -> Result<Vec<String>, String> {
        read::<ClassifierLabels>(path).map_err(|e| e.to_string())?.names(path)
    }

    /// The class names in id order; `path` (the file these came from) is for the message.
    pub fn names(&self, path: &Path) -> Result<Vec<String>, String> {
        (0..self.num_labels)
            .map(|i| {
                self.id2label.get(&i.to_string()).cloned().ok_or_else(|| {
                    format!("{}: id2label has no name for class {i} of num_labels {} (rerun the train stage)", path.display(), self.num_labels)
                })
            })
            .collect()
    }
}
