//! Checks that need no data: each section's numeric ranges and required combinations, and what a
//! pipeline can know before any stage runs (the splits download will produce, the class names it
//! was given). Messages name the key (`train.batch_size`), the value and the fix.

use std::collections::BTreeSet;

use crate::params::*;

fn fraction_open(key: &str, v: f64) -> Result<(), String> {
    if v > 0.0 && v < 1.0 {
        Ok(())
    } else {
        Err(format!("{key} must be a fraction in (0, 1), got {v}"))
    }
}

fn positive(key: &str, v: u64) -> Result<(), String> {
    if v > 0 {
        Ok(())
    } else {
        Err(format!("{key} must be positive, got 0"))
    }
}

/// A stage's typed parameters: what a section must satisfy before anything runs.
pub trait Params: serde::de::DeserializeOwned + serde::Serialize {
    /// Ranges and combinations; the message names the key, the value and the fix.
    fn validate(&self) -> Result<(), String>;
}

impl Params for DownloadParams {
    fn validate(&self) -> Result<(), String> {
        match (&self.dataset.repo, &self.dataset.files) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err("download.dataset: give exactly one of `repo` (a Hub dataset such as stanfordnlp/imdb) or `files` (split -> local path or glob)".into()),
        }
        match (&self.model.repo, &self.model.path) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err("download.model: give exactly one of `repo` (a Hub model such as google-bert/bert-base-uncased) or `path` (a local directory in Hub layout)".into()),
        }
        if !(0.0..1.0).contains(&self.validation.fraction) {
            return Err(format!("download.validation.fraction must be in [0, 1) (0 turns carving off), got {}", self.validation.fraction));
        }
        if let Some(t) = &self.test {
            fraction_open("download.test.fraction", t.fraction)?;
            if t.fraction + self.validation.fraction >= 1.0 {
                return Err(format!(
                    "download.test.fraction {} and download.validation.fraction {} leave nothing to train on; lower one of them",
                    t.fraction, self.validation.fraction
                ));
            }
        }
        if let Some(d) = self.dataset.delimiter {
            if d == '\n' || d == '\r' || d == '"' || !d.is_ascii() {
                return Err(format!("download.dataset.delimiter must be one ASCII character other than a quote or newline, got {d:?}"));
            }
        }
        for (split, n) in &self.max_examples {
            positive(&format!("download.max_examples.{split}"), *n as u64)?;
        }
        if let (Some(names), Some(map)) = (&self.label_names, &self.label_map) {
            if let Some((k, v)) = map.iter().find(|(_, v)| **v < 0 || **v as usize >= names.len()) {
                return Err(format!("download.label_map.{k}: class id {v} is outside label_names (0..{})", names.len()));
            }
        }
        Ok(())
    }
}

impl DownloadParams {
    /// The splits the download stage will produce, when the parameters alone tell: explicit
    /// `splits`, or local `files`. `None` for a Hub dataset without `splits` (its card decides).
    pub fn planned_splits(&self) -> Option<BTreeSet<String>> {
        let mut out: BTreeSet<String> = if !self.splits.is_empty() {
            self.splits.keys().cloned().collect()
        } else if let Some(files) = &self.dataset.files {
            files.keys().filter(|s| ["train", "validation", "test"].contains(&s.as_str())).cloned().collect()
        } else {
            return None;
        };
        // The splits carved from train, as download carves them.
        if out.contains("train") {
            if self.test.is_some() {
                out.insert("test".into());
            }
            if self.validation.fraction > 0.0 {
                out.insert("validation".into());
            }
        }
        Some(out)
    }
}

impl Params for TokenizeParams {
    fn validate(&self) -> Result<(), String> {
        if self.max_length < 3 {
            return Err(format!("tokenize.max_length must be at least 3 (room for [CLS], a token and [SEP]), got {}", self.max_length));
        }
        if self.truncation == Truncation::HeadTail && self.head_tokens + 2 >= self.max_length {
            return Err(format!(
                "tokenize.head_tokens ({}) leaves no room for a tail within max_length {}; lower head_tokens",
                self.head_tokens, self.max_length
            ));
        }
        positive("tokenize.shard_mib", self.shard_mib)
    }
}

impl Params for TrainParams {
    fn validate(&self) -> Result<(), String> {
        positive("train.batch_size", self.batch_size as u64)?;
        positive("train.grad_accum", self.grad_accum as u64)?;
        positive("train.log_every_steps", self.log_every_steps)?;
        if let Some(t) = self.batch_tokens {
            positive("train.batch_tokens", t as u64)?;
        }
        if let Some(e) = self.eval_every_steps {
            positive("train.eval_every_steps", e)?;
        }
        if let Some(n) = self.max_steps {
            positive("train.max_steps", n)?;
        }
        if let Some(n) = self.max_validation_examples {
            positive("train.max_validation_examples", n as u64)?;
        }
        if let Some(n) = self.max_train_examples {
            positive("train.max_train_examples", n as u64)?;
        }
        if self.early_stopping_patience == Some(0) {
            return Err("train.early_stopping_patience must be positive (leave it out to never stop early)".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(format!("train.learning_rate must be a positive number, got {}", self.learning_rate));
        }
        if !(self.epochs > 0.0 && self.epochs.is_finite()) && self.max_steps.is_none() {
            return Err(format!("train.epochs must be positive (or set max_steps), got {}", self.epochs));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(format!("train.warmup_ratio must be in [0, 1), got {}", self.warmup_ratio));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(format!("train.weight_decay must be a non-negative number, got {}", self.weight_decay));
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return Err(format!("train.max_grad_norm must be a non-negative number (0 turns clipping off), got {}", self.max_grad_norm));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(format!("train.label_smoothing must be in [0, 1), got {}", self.label_smoothing));
        }
        if let Some(ClassWeights::List(w)) = &self.class_weights {
            if let Some((i, x)) = w.iter().enumerate().find(|(_, x)| !(**x >= 0.0 && x.is_finite())) {
                return Err(format!("train.class_weights[{i}] must be a non-negative number, got {x}"));
            }
            if w.iter().all(|x| *x == 0.0) {
                return Err("train.class_weights are all 0: nothing would be learnt".into());
            }
        }
        if let Some(l) = &self.lora {
            l.validate()?;
        }
        if let Some(d) = &self.distributed {
            if let Some(t) = d.timeout_s {
                positive("train.distributed.timeout_s", t)?;
            }
        }
        Ok(())
    }
}

impl LoraParams {
    fn validate(&self) -> Result<(), String> {
        positive("train.lora.r", u64::from(self.r))?;
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err(format!("train.lora.alpha must be a positive number (the update is scaled by alpha / r), got {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("train.lora.dropout must be in [0, 1), got {}", self.dropout));
        }
        if let Some(TargetModules::List(names)) = &self.target_modules {
            if names.is_empty() {
                return Err("train.lora.target_modules is empty: name the linear layers to adapt (or leave it out for the family's default, or `all-linear`)".into());
            }
        }
        let names = match &self.target_modules {
            Some(TargetModules::List(n)) => n.iter().chain(&self.modules_to_save).collect::<Vec<_>>(),
            _ => self.modules_to_save.iter().collect(),
        };
        if names.iter().any(|n| n.trim().is_empty()) {
            return Err("train.lora: a module name in target_modules or modules_to_save is empty".into());
        }
        Ok(())
    }
}

impl TrainParams {
    /// What the task decides about these settings: `select_metric` among the task's metrics,
    /// class weights for classification only (one per class when listed), label smoothing for
    /// single-label only. `classes` is the number of classes when known.
    pub fn check_task(&self, task: Task, classes: Option<usize>) -> Result<Metric, String> {
        let metric = task.select(self.select_metric)?;
        if self.positive_class.is_some() && task != Task::SingleLabel {
            return Err(format!("train.positive_class picks the class of a two-class F1; this is a {} task (remove it)", task.name()));
        }
        if self.label_smoothing > 0.0 && task != Task::SingleLabel {
            return Err(format!("train.label_smoothing applies to single-label classification; this is a {} task (remove it)", task.name()));
        }
        match (&self.class_weights, task) {
            (Some(_), Task::Regression) => return Err("train.class_weights apply to classification; this is a regression task (remove them)".into()),
            (Some(ClassWeights::List(w)), _) => {
                if let Some(n) = classes.filter(|&n| n != w.len()) {
                    return Err(format!("train.class_weights lists {} weights for {n} classes; give one per class, in label_names order", w.len()));
                }
            }
            _ => {}
        }
        Ok(metric)
    }
}

impl Params for EvaluateParams {
    fn validate(&self) -> Result<(), String> {
        if let Threshold::Value(t) = self.threshold {
            if !(t > 0.0 && t < 1.0) {
                return Err(format!("evaluate.threshold must be a probability in (0, 1) or `tune`, got {t}"));
            }
        }
        positive("evaluate.batch_size", self.batch_size as u64)
    }
}

impl EvaluateParams {
    /// A threshold is for multi-label predictions only.
    pub fn check_task(&self, task: Task) -> Result<(), String> {
        if self.positive_class.is_some() && task != Task::SingleLabel {
            return Err(format!("evaluate.positive_class picks the class of a two-class F1; this is a {} task (remove it)", task.name()));
        }
        if task != Task::MultiLabel && self.threshold != Threshold::default() {
            return Err(format!("evaluate.threshold applies to multi-label classification; this is a {} task (remove it)", task.name()));
        }
        Ok(())
    }
}

/// The class a `positive_class` setting (a name or an id) picks, default 1; `key` names the
/// setting in the error.
pub fn positive_index(key: &str, setting: Option<&str>, names: &[String]) -> Result<usize, String> {
    let Some(s) = setting else { return Ok(1.min(names.len().saturating_sub(1))) };
    if let Some(i) = names.iter().position(|n| n == s) {
        return Ok(i);
    }
    match s.parse::<usize>() {
        Ok(i) if i < names.len() => Ok(i),
        _ => Err(format!("{key} `{s}` is neither a class name nor an id; classes: {names:?}")),
    }
}

/// Checks that `split` (the value of `key`) is one of the splits that will exist.
pub fn split_exists(key: &str, split: &str, splits: &BTreeSet<String>, source: &str) -> Result<(), String> {
    if splits.contains(split) {
        return Ok(());
    }
    Err(format!(
        "{key} `{split}` will not exist: {source} gives the splits {}; pick one of them, or add the split (download.splits, download.test to carve a test split from train)",
        splits.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
    ))
}

/// The nearest of `valid` to a misspelt `key`, if one is close enough to be a typo.
pub fn did_you_mean<'a>(key: &str, valid: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    valid
        .into_iter()
        .map(|v| (strsim::damerau_levenshtein(key, v), v))
        .filter(|(d, v)| *d <= 2.max(v.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

impl Params for ExportParams {
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
