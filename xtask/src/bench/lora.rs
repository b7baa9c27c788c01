//! The bench's LoRA section: on the subset's token ids, per seed, a full fine-tune and a LoRA
//! fine-tune of ours (`ft-bench`, `train.lora: {}` with PEFT's defaults) and HF Trainer with
//! peft's LoRA on the same adapted and saved modules (`bench/hf_train.py imdb --lora`). Every
//! run trains `--epochs` and is scored on the test split with its final weights, so the quality
//! rows compare samples of the same procedure. Two tables' worth of rows: LoRA against a full
//! fine-tune (test accuracy, training samples/s, peak RSS, trainable parameters, optimizer state
//! and checkpoint size), and ours against peft on the same figures.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};
use serde_json::Value;

use super::{json_of, noise_verdict, num, Plan, Row, Runs};

/// One side's figures over its runs.
#[derive(Default)]
struct Side {
    accuracy: Runs,
    samples_per_s: Runs,
    peak_rss_mib: Runs,
    trainable: Runs,
    optimizer_mib: Runs,
    checkpoint_mib: Runs,
}

const MIB: f64 = (1 << 20) as f64;

impl Side {
    /// Adds an `ft-bench` result (train summary, evaluation, peak RSS).
    fn push_ours(&mut self, v: &Value) -> anyhow::Result<()> {
        self.accuracy.0.push(num(v, &["eval", "accuracy"])?);
        self.samples_per_s.0.push(num(v, &["train", "samples_per_second"])?);
        self.peak_rss_mib.0.push(num(v, &["train_peak_rss_mb"])?);
        self.trainable.0.push(num(v, &["train", "trainable_parameters"])?);
        self.optimizer_mib.0.push(num(v, &["train", "optimizer_state_bytes"])? / MIB);
        self.checkpoint_mib.0.push(num(v, &["train", "checkpoint_bytes"])? / MIB);
        Ok(())
    }

    /// Adds a `bench/hf_train.py imdb` result.
    fn push_hf(&mut self, v: &Value) -> anyhow::Result<()> {
        self.accuracy.0.push(num(v, &["test_accuracy"])?);
        self.samples_per_s.0.push(num(v, &["samples_per_s"])?);
        self.peak_rss_mib.0.push(num(v, &["train_peak_rss_mb"])?);
        self.trainable.0.push(num(v, &["trainable_parameters"])?);
        self.optimizer_mib.0.push(num(v, &["optimizer_state_bytes"])? / MIB);
        self.checkpoint_mib.0.push(num(v, &["checkpoint_bytes"])? / MIB);
        Ok(())
    }
}

/// The learning rate of the LoRA runs (both sides): `--lora-learning-rate`, else 5e-4, within
/// the 1e-4–1e-3 that LoRA fine-tunes of encoders use (adapters start at zero and need a
/// larger step than a full fine-tune's 5e-5).
pub(super) fn learning_rate(given: Option<f64>) -> f64 {
    given.unwrap_or(5e-4)
}

/// Our fine-tune through `ft-bench`: the bench's settings, seed `seed`, LoRA with PEFT's
/// defaults when `lora`; evaluated on test with its final weights.
fn ours(plan: &Plan, model_dir: &Path, tokens: &Path, lr: f64, lora: bool, seed: u64, logs: &Path) -> anyhow::Result<Value> {
    let name = format!("lora-ours-{}-seed{seed}", if lora { "lora" } else { "full" });
    let params = plan.out.join(format!("{name}.yaml"));
    std::fs::write(
        &params,
        format!(
            "device: {}\nprecision: {}\nepochs: {}\nlearning_rate: {lr:e}\nweight_decay: 0.01\nbatch_size: {}\nlog_every_steps: 50\nseed: {seed}\n{}",
            plan.device(),
            plan.precision(),
            plan.epochs,
            plan.batch,
            if lora { "lora: {}\n" } else { "" }
        ),
    )
    .with_context(|| format!("writing {}", params.display()))?;
    json_of(
        Command::new(crate::target_dir().join("release/ft-bench"))
            .arg("--model")
            .arg(model_dir)
            .arg("--tokens")
            .arg(tokens)
            .arg("--params")
            .arg(&params)
            .arg("--out")
            .arg(plan.out.join(&name))
            .arg("--eval-split")
            .arg("test")
            .arg("--eval-weights")
            .arg("final"),
        &logs.join(format!("{name}.log")),
    )
}

/// peft's LoRA under HF Trainer on the modules ours adapted and saved (read from our run's
/// `hparams.json`), so that both sides train the same parameters.
fn hf(plan: &Plan, model_dir: &Path, tokens: &Path, lr: f64, ours_out: &Path, seed: u64, logs: &Path) -> anyhow::Result<Value> {
    let hp: pipeline::files::Hparams = pipeline::files::read(&ours_out.join("hparams.json"))?;
    let lora = hp.lora.context("our LoRA run's hparams.json has no lora section")?;
    let mut cmd = super::hf_command(plan, model_dir, tokens, lr, seed);
    cmd.arg("--eval-repeats")
        .arg("1")
        .arg("--lora")
        .arg("--lora-r")
        .arg(lora.r.to_string())
        .arg("--lora-alpha")
        .arg(lora.alpha.to_string())
        .arg("--lora-dropout")
        .arg(lora.dropout.to_string())
        .arg("--lora-targets")
        .arg(lora.target_modules.join(","))
        .arg("--lora-save")
        .arg(lora.modules_to_save.join(","));
    json_of(&mut cmd, &logs.join(format!("lora-hf-seed{seed}.log")))
}

/// The section's rows (see the module docs); `tokens` is the subset's tokenize artifact.
pub(super) fn rows(plan: &Plan, seed: u64, lora_lr: f64, model_dir: &Path, tokens: &Path, logs: &Path) -> anyhow::Result<Vec<Row>> {
    eprintln!(
        "== lora: full fine-tune (lr {}) and LoRA (lr {lora_lr}) of ours, and HF Trainer + peft LoRA, {} epochs, {} runs per side",
        plan.lr, plan.epochs, plan.full_runs
    );
    let (mut full, mut lora, mut peft) = (Side::default(), Side::default(), Side::default());
    for r in 0..plan.full_runs {
        let s = seed + r as u64;
        full.push_ours(&ours(plan, model_dir, tokens, plan.lr, false, s, logs)?)?;
        lora.push_ours(&ours(plan, model_dir, tokens, lora_lr, true, s, logs)?)?;
        let out = plan.out.join(format!("lora-ours-lora-seed{s}"));
        peft.push_hf(&hf(plan, model_dir, tokens, lora_lr, &out, s, logs)?)?;
    }
    if lora.trainable.median() != peft.trainable.median() {
        bail!(
            "ours and peft train different parameter counts ({:?} vs {:?}): the comparison would not be of the same adapters; see {}",
            lora.trainable.0,
            peft.trainable.0,
            logs.display()
        );
    }
    let mut rows = compare("LoRA vs full", &lora, &full, "ours, full fine-tune", "");
    let hf_name = format!("HF Trainer + peft LoRA, {}, padding {}", plan.precision(), if plan.hf_dynamic() { "dynamic" } else { "max_length" });
    rows.extend(compare("LoRA vs peft", &lora, &peft, &hf_name, if plan.cuda { "" } else { "≥ 1.3x" }));
    Ok(rows)
}

/// The rows of `ours` against `reference`; `rate_target` is the samples/s row's target.
fn compare(section: &'static str, ours: &Side, reference: &Side, name: &str, rate_target: &str) -> Vec<Row> {
    let row = |figure: &str, unit: &'static str, o: &Runs, r: &Runs, higher_is_better: bool, target: String| Row {
        section,
        figure: figure.into(),
        unit,
        ours: o.clone(),
        reference_name: name.into(),
        reference: r.clone(),
        higher_is_better,
        target,
    };
    vec![
        row("test accuracy (final weights)", "%", &ours.accuracy, &reference.accuracy, true, format!("within noise: {}", noise_verdict(&ours.accuracy, &reference.accuracy))),
        row("training samples/s over the whole run", "samples/s", &ours.samples_per_s, &reference.samples_per_s, true, rate_target.into()),
        row("peak RSS MiB of the process while training", "MiB", &ours.peak_rss_mib, &reference.peak_rss_mib, false, String::new()),
        row("trainable parameters", "", &ours.trainable, &reference.trainable, false, String::new()),
        row("optimizer state MiB (every tensor AdamW keeps)", "MiB", &ours.optimizer_mib, &reference.optimizer_mib, false, String::new()),
        row("checkpoint MiB (what trains + optimizer state)", "MiB", &ours.checkpoint_mib, &reference.checkpoint_mib, false, String::new()),
    ]
}
