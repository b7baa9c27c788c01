//! Every stage's parameters, as users write them in a pipeline's sections. Defaults are filled
//! in here, so the canonical form (and so the key) never depends on whether a default was
//! written out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

fn main_rev() -> String {
    "main".into()
}
fn seed_42() -> u64 {
    42
}

/// `download`: where the dataset and the pretrained model come from, and how to normalize the
/// dataset into `text`/`label` splits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadParams {
    pub dataset: DatasetSource,
    pub model: ModelSource,
    /// Source column names.
    #[serde(default)]
    pub columns: Columns,
    /// Output split name -> source split name. Defaults: train -> train, test -> test, and
    /// validation -> validation when the source has one.
    #[serde(default)]
    pub splits: BTreeMap<String, String>,
    /// Class names, in id order, when the dataset card does not give them.
    #[serde(default)]
    pub label_names: Option<Vec<String>>,
    /// String label -> class id, for datasets whose labels are strings.
    #[serde(default)]
    pub label_map: Option<BTreeMap<String, i64>>,
    /// How to carve a validation split from train when the source has none (from what remains
    /// after `test` is carved).
    #[serde(default)]
    pub validation: ValidationSplit,
    /// Carve a stratified test split from train when the source has none (off unless given).
    #[serde(default)]
    pub test: Option<CarveSplit>,
    /// Keep at most this many examples of a split (a seeded shuffle, then the first N), for
    /// quick runs on a subset.
    #[serde(default)]
    pub max_examples: BTreeMap<String, usize>,
    /// What the label column holds: one class, a set of classes, or a number.
    #[serde(default)]
    pub task: Task,
}

/// The kind of prediction a dataset asks for (transformers' `problem_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One class per example (`label`: a class id or name).
    #[default]
    SingleLabel,
    /// A set of classes per example, possibly empty (`label`: a list of class names or ids).
    MultiLabel,
    /// A number per example (`label`: a float).
    Regression,
}

impl Task {
    /// transformers' `problem_type` for the task.
    pub fn problem_type(self) -> &'static str {
        match self {
            Task::SingleLabel => "single_label_classification",
            Task::MultiLabel => "multi_label_classification",
            Task::Regression => "regression",
        }
    }

    /// The pipeline spelling (`single_label`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Task::SingleLabel => "single_label",
            Task::MultiLabel => "multi_label",
            Task::Regression => "regression",
        }
    }

    /// The metric `select_metric: accuracy` (the default) stands for: the task's headline.
    pub fn headline(self) -> Metric {
        match self {
            Task::SingleLabel => Metric::Accuracy,
            Task::MultiLabel => Metric::F1Micro,
            Task::Regression => Metric::Pearson,
        }
    }

    /// The metrics a validation of this task reports (and `select_metric` may name).
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Task::SingleLabel => &[Metric::Accuracy, Metric::F1, Metric::F1Micro, Metric::F1Macro, Metric::Loss],
            Task::MultiLabel => &[Metric::Accuracy, Metric::F1Micro, Metric::F1Macro, Metric::Loss],
            Task::Regression => &[Metric::Pearson, Metric::Spearman, Metric::Mse, Metric::Loss],
        }
    }

    /// The metric `m` selects by for this task: `accuracy` (the default) is the headline for
    /// multi-label (`f1_micro`) and regression (`pearson`); a metric the task has not is an error
    /// naming the ones it has.
    pub fn select(self, m: Metric) -> Result<Metric, String> {
        let m = match (self, m) {
            (Task::MultiLabel | Task::Regression, Metric::Accuracy) => self.headline(),
            _ => m,
        };
        if self.metrics().contains(&m) {
            return Ok(m);
        }
        let names: Vec<&str> = self.metrics().iter().map(|m| m.name()).collect();
        Err(format!("train.select_metric `{}` does not apply to a {} task; use one of {}", m.name(), self.name(), names.join(", ")))
    }
}

/// A dataset on the Hub (`repo`) or local files (`files`: split -> path or glob).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSource {
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default = "main_rev")]
    pub revision: String,
    /// Local files per split: paths or globs of parquet, CSV (`.csv`), TSV (`.tsv`) or JSON
    /// Lines files.
    #[serde(default)]
    pub files: Option<BTreeMap<String, String>>,
    /// The field separator of `.csv` files (one character; default `,`). `.tsv` files are always
    /// tab-separated with no quoting, as GLUE writes them.
    #[serde(default)]
    pub delimiter: Option<char>,
}

/// A model on the Hub (`repo`) or a local directory in Hub layout (`path`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default = "main_rev")]
    pub revision: String,
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    #[serde(default = "Columns::text_default")]
    pub text: String,
    #[serde(default = "Columns::label_default")]
    pub label: String,
    /// The second text of a sentence pair (absent: one text per example).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_pair: Option<String>,
}

impl Columns {
    fn text_default() -> String {
        "text".into()
    }
    fn label_default() -> String {
        "label".into()
    }
}

impl Default for Columns {
    fn default() -> Self {
        Columns { text: Columns::text_default(), label: Columns::label_default(), text_pair: None }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSplit {
    /// Fraction of train moved to validation (stratified by label); 0 disables.
    #[serde(default = "ValidationSplit::fraction_default")]
    pub fraction: f64,
    #[serde(default = "seed_42")]
    pub seed: u64,
}

impl ValidationSplit {
    fn fraction_default() -> f64 {
        0.1
    }
}

/// A split carved from train by a seeded, stratified draw (`download.test`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarveSplit {
    /// Fraction of train moved to the new split, in (0, 1).
    pub fraction: f64,
    #[serde(default = "seed_42")]
    pub seed: u64,
}

impl Default for ValidationSplit {
    fn default() -> Self {
        ValidationSplit { fraction: ValidationSplit::fraction_default(), seed: 42 }
    }
}

/// `tokenize`: how texts become token ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeParams {
    /// Longest sequence, special tokens included.
    pub max_length: usize,
    #[serde(default)]
    pub truncation: Truncation,
    /// For `head_tail`: tokens kept from the start (the rest of the budget comes from the end).
    #[serde(default = "TokenizeParams::head_default")]
    pub head_tokens: usize,
    /// Largest shard file, in MiB.
    #[serde(default = "TokenizeParams::shard_default")]
    pub shard_mib: u64,
    /// How a sentence pair that is too long is cut (`truncation` applies to single texts).
    #[serde(default)]
    pub pair_truncation: PairTruncation,
}

/// transformers' truncation strategies for a pair of texts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairTruncation {
    /// A token at a time from the longer of the two.
    #[default]
    LongestFirst,
    /// From the first text only.
    OnlyFirst,
    /// From the second text only.
    OnlySecond,
}

impl TokenizeParams {
    fn head_default() -> usize {
        128
    }
    fn shard_default() -> u64 {
        256
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// [CLS] + the first max_length-2 tokens + [SEP].
    #[default]
    Head,
    /// [CLS] + the first `head_tokens` + the last max_length-2-head_tokens + [SEP].
    HeadTail,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 on CUDA, fp32 on CPU.
    #[default]
    Auto,
    Fp32,
    Bf16,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// Length-bucketed batches padded to their longest example.
    #[default]
    Dynamic,
    /// Every batch padded to max_length (reproduces the HF seed for comparisons).
    MaxLength,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// The model artifact's weights.
    #[default]
    Pretrained,
    /// Random weights from config.json alone (benchmarks at a model's shape).
    Random,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// The task's headline: accuracy (single-label), `f1_micro` (multi-label), `pearson`
    /// (regression).
    #[default]
    Accuracy,
    /// Binary F1 of the positive class for two classes, macro F1 otherwise (single-label).
    F1,
    F1Micro,
    F1Macro,
    Pearson,
    Spearman,
    Mse,
    Loss,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::F1Micro => "f1_micro",
            Metric::F1Macro => "f1_macro",
            Metric::Pearson => "pearson",
            Metric::Spearman => "spearman",
            Metric::Mse => "mse",
            Metric::Loss => "loss",
        }
    }

    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::Loss | Metric::Mse)
    }
}

/// `train.class_weights`: a rule or one weight per class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClassWeights {
    Rule(WeightRule),
    /// One weight per class (multi-label: BCE's `pos_weight` per label).
    List(Vec<f64>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightRule {
    /// Single-label: `n / (classes × count)` on train (scikit-learn's `balanced`); multi-label:
    /// `negatives / positives` of each label on train (BCE's `pos_weight`).
    Balanced,
}

/// `train`: fine-tuning hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// `auto`, `cpu`, `cuda` or `cuda:N`. Not part of the result's identity in spirit, but kept
    /// in the key since results differ bitwise between devices.
    #[serde(default = "TrainParams::device_default")]
    pub device: String,
    #[serde(default)]
    pub precision: Precision,
    #[serde(default)]
    pub init: Init,
    #[serde(default = "TrainParams::epochs_default")]
    pub epochs: f64,
    /// Stop after this many optimizer steps (overrides epochs).
    #[serde(default)]
    pub max_steps: Option<u64>,
    #[serde(default = "TrainParams::lr_default")]
    pub learning_rate: f64,
    #[serde(default = "TrainParams::wd_default")]
    pub weight_decay: f64,
    #[serde(default)]
    pub warmup_ratio: f64,
    /// Overrides warmup_ratio.
    #[serde(default)]
    pub warmup_steps: Option<u64>,
    #[serde(default = "TrainParams::bs_default")]
    pub batch_size: usize,
    /// Batch by a token budget (batch_size x padded length) instead of a fixed count.
    #[serde(default)]
    pub batch_tokens: Option<usize>,
    #[serde(default = "TrainParams::one")]
    pub grad_accum: usize,
    #[serde(default = "TrainParams::clip_default")]
    pub max_grad_norm: f64,
    #[serde(default = "seed_42")]
    pub seed: u64,
    #[serde(default)]
    pub padding: Padding,
    /// Validate every N steps (default: at the end of every epoch).
    #[serde(default)]
    pub eval_every_steps: Option<u64>,
    /// Split used for validation and best-checkpoint selection.
    #[serde(default = "TrainParams::val_default")]
    pub validation_split: String,
    #[serde(default)]
    pub select_metric: Metric,
    /// Stop after this many validations without improvement.
    #[serde(default)]
    pub early_stopping_patience: Option<u32>,
    /// Train on at most this many examples of the train split (a seeded subset).
    #[serde(default)]
    pub max_train_examples: Option<usize>,
    /// Validate on at most this many examples of the validation split (a seeded subset, the
    /// same at every validation), so validating on a huge split stays cheap.
    #[serde(default)]
    pub max_validation_examples: Option<usize>,
    /// Log a line every N steps.
    #[serde(default = "TrainParams::log_default")]
    pub log_every_steps: u64,
    /// For two classes and `select_metric: f1`: the class whose F1 selects the weights (name or
    /// id; default 1). A pipeline that sets `evaluate.positive_class` passes it here when this
    /// is not set, so selection and the report agree.
    #[serde(default)]
    pub positive_class: Option<String>,
    /// Weights of the classes in the loss (single-label cross-entropy's `weight`, multi-label
    /// BCE's `pos_weight`); absent: unweighted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weights: Option<ClassWeights>,
    /// Cross-entropy label smoothing (single-label), in [0, 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// LoRA adapters over a frozen encoder (PEFT's `LoraConfig`); absent: a full fine-tune.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraParams>,
    /// How ranks of a data-parallel run talk (read only when this process is one of several
    /// ranks: `--nproc-per-node`, torchrun, Slurm). Not in the artifact's key, which does not
    /// depend on how many ranks trained it either ([`TrainParams::for_key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed: Option<DistributedParams>,
}

impl TrainParams {
    /// The settings that make the artifact's key: all but `distributed`.
    pub fn for_key(&self) -> TrainParams {
        TrainParams { distributed: None, ..self.clone() }
    }
}

/// `train.distributed`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedParams {
    #[serde(default)]
    pub backend: DistributedBackend,
    /// Seconds a collective operation (or the rendezvous) may wait for the other ranks before
    /// every rank fails; default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
}

impl DistributedParams {
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_s.unwrap_or(600))
    }
}

/// `train.distributed.backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistributedBackend {
    /// NCCL on CUDA, the CPU backend (Gloo) otherwise.
    #[default]
    Auto,
    Nccl,
    Cpu,
}

/// `train.lora`: PEFT's LoRA for sequence classification. The update `B·A·(alpha/r)` is added
/// beside each target linear layer (dropout on its input); the base is frozen; the head and
/// `modules_to_save` train in full.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraParams {
    #[serde(default = "LoraParams::r_default")]
    pub r: u32,
    #[serde(default = "LoraParams::alpha_default")]
    pub alpha: f64,
    #[serde(default = "LoraParams::dropout_default")]
    pub dropout: f64,
    /// Module names (matched as PEFT does: the whole path or its last components) or
    /// `all-linear`; absent: the family's default (BERT, RoBERTa: query, value; DistilBERT:
    /// q_lin, v_lin; ModernBERT: Wqkv).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_modules: Option<TargetModules>,
    /// Modules trained in full besides the head's, which always are (matched by suffix, as PEFT
    /// does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules_to_save: Vec<String>,
}

impl LoraParams {
    fn r_default() -> u32 {
        8
    }
    fn alpha_default() -> f64 {
        16.0
    }
    fn dropout_default() -> f64 {
        0.1
    }
}

/// `train.lora.target_modules`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    Rule(TargetRule),
    List(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetRule {
    /// Every linear layer of the encoder (PEFT's `all-linear`).
    AllLinear,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl TrainParams {
    fn device_default() -> String {
        "auto".into()
    }
    fn epochs_default() -> f64 {
        3.0
    }
    fn lr_default() -> f64 {
        2e-5
    }
    fn wd_default() -> f64 {
        0.01
    }
    fn bs_default() -> usize {
        32
    }
    fn one() -> usize {
        1
    }
    fn clip_default() -> f64 {
        1.0
    }
    fn val_default() -> String {
        "validation".into()
    }
    fn log_default() -> u64 {
        50
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weights {
    #[default]
    Best,
    Final,
}

/// `evaluate`: metrics on a split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    #[serde(default = "EvaluateParams::split_default")]
    pub split: String,
    #[serde(default)]
    pub weights: Weights,
    /// For two classes: the class whose precision/recall/F1 are reported (name or id; default 1).
    #[serde(default)]
    pub positive_class: Option<String>,
    /// Bootstrap resamples for 95% confidence intervals (0 disables).
    #[serde(default = "EvaluateParams::bootstrap_default")]
    pub bootstrap: u32,
    #[serde(default = "EvaluateParams::bs_default")]
    pub batch_size: usize,
    #[serde(default = "EvaluateParams::device_default")]
    pub device: String,
    #[serde(default)]
    pub precision: Precision,
    #[serde(default = "seed_42")]
    pub seed: u64,
    /// Multi-label: the probability above which a label is predicted, or `tune` (the threshold
    /// that maximises micro F1 on `train.validation_split`, applied to `split`).
    #[serde(default, skip_serializing_if = "Threshold::is_default")]
    pub threshold: Threshold,
}

/// `evaluate.threshold`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Threshold {
    Value(f64),
    Rule(ThresholdRule),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdRule {
    Tune,
}

impl Default for Threshold {
    fn default() -> Self {
        Threshold::Value(0.5)
    }
}

impl Threshold {
    fn is_default(&self) -> bool {
        *self == Threshold::default()
    }
}

impl EvaluateParams {
    fn split_default() -> String {
        "test".into()
    }
    fn bootstrap_default() -> u32 {
        1000
    }
    fn bs_default() -> usize {
        128
    }
    fn device_default() -> String {
        "auto".into()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    #[default]
    Fp32,
    Bf16,
    Fp16,
}

/// `export`: a directory that `transformers` loads with `from_pretrained`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    #[serde(default)]
    pub dtype: Dtype,
    #[serde(default)]
    pub weights: Weights,
    /// For a LoRA run: the merged model, PEFT's adapter, or both.
    #[serde(default)]
    pub format: ExportFormat,
}

/// `export.format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// A plain model (LoRA's updates folded into the weights).
    #[default]
    Merged,
    /// PEFT's `adapter_config.json` and `adapter_model.safetensors` (a LoRA run only).
    Peft,
    /// `merged/` and `adapter/`.
    Both,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // clippy.toml's allow-unwrap-in-tests misses some of these tests
    use super::*;

    #[test]
    fn defaults_make_one_canonical_form() {
        let a: TrainParams = serde_yaml_ng::from_str("learning_rate: 0.00002").unwrap();
        let b: TrainParams = serde_yaml_ng::from_str("learning_rate: 2.0e-5\nepochs: 3\nweight_decay: 0.01").unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
    }
}
