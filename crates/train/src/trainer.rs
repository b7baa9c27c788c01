//! The training loop: batches from the shards, forward/backward, AdamW, schedule, clipping,
//! validation with best-checkpoint selection, early stopping, logs, checkpoints and resume.
//!
//! Exact resume: data order is a function of (seed, epoch), dropout is reseeded from (seed,
//! micro-batch number) before every forward pass, and checkpoints are taken at optimizer-step
//! boundaries with the weights, both Adam moments and the position; so a resumed run replays
//! bit for bit what the uninterrupted run would have done (on the same device and threads).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use model::device::BatchError;
use pipeline::files::{LogLine, Validation};
use pipeline::{Metric, TrainParams};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::batches::Plan;
use model::loss::Objective;
use crate::optim::{lr_lambda, AdamW};

/// Where the loop stands; saved in `state.json` with each checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub step: u64,
    pub epoch: u64,
    /// Next batch index within `epoch`.
    pub batch: usize,
    /// Micro-batches run so far (dropout seeds derive from it).
    pub micro: u64,
    pub best_step: Option<u64>,
    pub evals_without_improvement: u32,
    /// The validation of the best weights so far.
    pub best_eval: Option<Validation>,
    pub samples: u64,
    pub tokens: u64,
    pub train_seconds: f64,
    /// Of which validation and checkpoint writing.
    pub eval_seconds: f64,
    pub done: bool,
    /// Ranks of the data-parallel run that took this state (absent: one process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<usize>,
}

/// The figure of a validation that `m` (the resolved `select_metric`) selects by; a metric the
/// validation lacks counts as the worst.
pub fn metric(ev: &Validation, m: Metric) -> f64 {
    ev.get(m).unwrap_or(if m.higher_is_better() { f64::NEG_INFINITY } else { f64::INFINITY })
}

impl State {
    /// The best validation's figure by `m` (the one selection compares against).
    pub fn best_metric(&self, m: Metric) -> Option<f64> {
        self.best_eval.as_ref().map(|e| metric(e, m))
    }
}

/// Everything a run needs.
pub struct Job<'a> {
    pub params: &'a TrainParams,
    pub model: &'a mut model::Model,
    pub train: &'a shards::Split,
    pub val: Option<&'a dyn shards::Examples>,
    pub pad_id: u32,
    pub max_length: usize,
    pub device: Device,
    /// Holds checkpoints, the log and the best weights while training; survives interruption.
    pub work: PathBuf,
    /// Stop (after checkpointing) once this many optimizer steps are done; for interruption tests.
    pub stop_after: Option<u64>,
    /// Single-label with two classes: the class validation F1 is of.
    pub positive_class: Option<usize>,
    /// Class names, in id order.
    pub names: Vec<String>,
    pub progress: bool,
    /// The loss.
    pub objective: &'a Objective,
    /// What weights are selected by (`select_metric` resolved for the task, see
    /// [`pipeline::Task::select`]).
    pub select: Metric,
    /// The other ranks of a data-parallel run (see [`crate::distributed`]); only rank 0 writes
    /// to `work`.
    pub group: Option<&'a collective::Group>,
}

impl Job<'_> {
    /// Whether this process writes the log, checkpoints and best weights: one process, or rank 0.
    pub fn leads(&self) -> bool {
        self.group.is_none_or(|g| g.rank() == 0)
    }
}

/// How a run ended.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub state: State,
    pub interrupted: bool,
    /// The step of the checkpoint this run resumed from.
    pub resumed_from: Option<u64>,
    pub total_steps: u64,
    pub last_eval: Option<Validation>,
    pub samples_per_second: f64,
    pub tokens_per_second: f64,
    /// Bytes of the optimizer's state ([`AdamW::state_bytes`]).
    pub optimizer_state_bytes: u64,
}

/// The loss and the task's metrics on `split`: single-label accuracy, F1 (of class `positive`,
/// id and name, for two classes; macro otherwise), micro and macro F1; multi-label subset accuracy and micro
/// and macro F1 at threshold 0.5; regression Pearson, Spearman and MSE. The caller explains a
/// failed batch (it knows which setting sets the batch size).
pub fn evaluate<E: shards::Examples + ?Sized>(m: &model::Model, objective: &Objective, split: &E, batch: usize, pad: u32, device: Device, positive: Option<(usize, &str)>) -> Result<Validation, BatchError> {
    let pred = model::infer::predict(m, objective, split, batch, pad, device, &mut |_| {})?;
    Ok(validation(m, &pred, split, positive))
}

/// Validation figures of predictions `pred` of `split` (see [`evaluate`]).
pub fn validation<E: shards::Examples + ?Sized>(m: &model::Model, pred: &model::infer::Predictions, split: &E, positive: Option<(usize, &str)>) -> Validation {
    // A split's examples always carry labels; only an empty split has no loss.
    let base = Validation { loss: pred.loss.unwrap_or(0.0), examples: split.len(), ..Default::default() };
    let Some(targets) = split.every_target() else { return base };
    match targets {
        shards::Targets::Class(labels) => {
            let p = pred.argmax();
            let n = m.num_labels as usize;
            let index = positive.map_or(1, |(i, _)| i).min(n.saturating_sub(1));
            let per_class = metrics::per_class(&metrics::confusion(&labels, &p, n));
            Validation {
                accuracy: Some(metrics::accuracy(&labels, &p)),
                f1: Some(metrics::f1(&labels, &p, n, index)),
                positive_class: positive.filter(|_| n == 2).map(|(_, name)| name.to_string()),
                f1_micro: Some(metrics::accuracy(&labels, &p)),
                f1_macro: Some(per_class.iter().map(|c| c.f1).sum::<f64>() / n.max(1) as f64),
                ..base
            }
        }
        shards::Targets::Multi { labels, hot } => {
            let truth: Vec<bool> = hot.iter().map(|&x| x > 0.5).collect();
            let predicted: Vec<bool> = pred.probs.iter().flatten().map(|&p| p > 0.5).collect();
            let ml = metrics::multi_label(&truth, &predicted, labels);
            Validation { accuracy: Some(ml.subset_accuracy), f1_micro: Some(ml.micro.f1), f1_macro: Some(ml.macro_f1), ..base }
        }
        shards::Targets::Score(y) => {
            let y: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
            let p: Vec<f64> = pred.probs.iter().map(|r| f64::from(r[0])).collect();
            Validation { pearson: Some(metrics::pearson(&y, &p)), spearman: Some(metrics::spearman(&y, &p)), mse: Some(metrics::mse(&y, &p)), ..base }
        }
    }
}

/// [`evaluate`] for a job: across the ranks of a data-parallel run, each predicting its
/// contiguous part of `val` and every rank computing the figures of all the parts gathered.
fn evaluate_job(job: &Job, val: &dyn shards::Examples) -> anyhow::Result<Validation> {
    let p = job.params;
    let positive = job.positive_class.map(|i| (i, job.names[i].as_str()));
    let explain = |e: BatchError| e.explain("validation", "train.batch_size (validation batches hold max(32, batch_size) examples) or tokenize.max_length");
    let batch = p.batch_size.max(32);
    let Some(group) = job.group else {
        return evaluate(job.model, job.objective, val, batch, job.pad_id, job.device, positive).map_err(explain);
    };
    let part = crate::distributed::Part { inner: val, range: crate::distributed::share(val.len(), group.rank(), group.size()) };
    let mine = if part.range.is_empty() {
        model::infer::Predictions { probs: Vec::new(), loss: None, loss_weight: 0.0, tokens: 0 }
    } else {
        model::infer::predict(job.model, job.objective, &part, batch, job.pad_id, job.device, &mut |_| {}).map_err(explain)?
    };
    let all = crate::distributed::gather(group, &mine, part.range.len())?;
    Ok(validation(job.model, &all, val, positive))
}

/// Writes checkpoints and best weights on a background thread, one write at a time. The tensors
/// are copied to host memory first, so training goes on while the files are written (on a GPU,
/// writing four copies of the model at each validation takes as long as a small model's epoch).
/// Each file is written under a temporary name and renamed into place. A failed write is
/// reported by the next [`Writer::start`] or [`Writer::wait`]; dropping the writer waits for it.
#[derive(Default)]
struct Writer(Option<std::thread::JoinHandle<anyhow::Result<()>>>);

impl Writer {
    /// Waits for the write in flight, if any, and returns its outcome.
    fn wait(&mut self) -> anyhow::Result<()> {
        match self.0.take() {
            Some(h) => h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the checkpoint writer panicked"))),
            None => Ok(()),
        }
    }

    fn start(&mut self, write: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> anyhow::Result<()> {
        self.wait()?;
        self.0 = Some(std::thread::spawn(write));
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.wait();
    }
}

/// Starts writing the checkpoint for `st` (the weights that train, their Adam moments, state)
/// and, when `best`, the best weights, which are the same weights. Under LoRA that is the
/// adapters and the head: the frozen base comes from the pretrained file again on resume.
fn save_checkpoint(job: &Job, opt: &AdamW, st: &State, best: bool, writer: &mut Writer) -> anyhow::Result<()> {
    let weights = job.model.params.host_copy_trainable(Kind::Float);
    let moments = opt.named_state(&job.model.params);
    let state = serde_json::to_vec_pretty(st)?;
    let dir = job.work.clone();
    writer.start(move || {
        if best {
            let tmp = dir.join("best.safetensors.tmp");
            Tensor::write_safetensors(&weights, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, dir.join("best.safetensors")).context("publishing best.safetensors")?;
        }
        let tmp = dir.join("checkpoint.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Tensor::write_safetensors(&weights, tmp.join("weights.safetensors")).context("writing the checkpoint weights")?;
        Tensor::write_safetensors(&moments, tmp.join("optimizer.safetensors")).context("writing the optimizer state")?;
        std::fs::write(tmp.join("state.json"), state)?;
        // The previous checkpoint stays on disk until the new one is in place: a run killed
        // between the two renames resumes from it (see load_checkpoint).
        let (fin, old) = (dir.join("checkpoint"), dir.join("checkpoint.old"));
        let _ = std::fs::remove_dir_all(&old);
        if fin.exists() {
            std::fs::rename(&fin, &old).with_context(|| format!("moving {} aside", fin.display()))?;
        }
        std::fs::rename(&tmp, &fin).with_context(|| format!("publishing checkpoint {}", fin.display()))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    })
}

/// Loads the checkpoint in `work`, if any: `checkpoint/`, or the previous one, `checkpoint.old/`,
/// when a run stopped while replacing it.
fn load_checkpoint(job: &mut Job, opt: &mut AdamW) -> anyhow::Result<Option<State>> {
    let Some(dir) = ["checkpoint", "checkpoint.old"].map(|d| job.work.join(d)).into_iter().find(|d| d.join("state.json").exists()) else {
        return Ok(None);
    };
    let st: State = serde_json::from_slice(&std::fs::read(dir.join("state.json"))?).context("reading checkpoint state.json")?;
    job.model.params.load_trainable(&dir.join("weights.safetensors"))?;
    let named = Tensor::read_safetensors(dir.join("optimizer.safetensors")).context("reading the optimizer state")?;
    opt.load_state(&job.model.params, named, st.step)?;
    Ok(Some(st))
}

/// Keeps only log lines up to `step` (a resumed run rewrites what came after its checkpoint).
fn trim_log(path: &Path, step: u64) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<LogLine>(l).is_ok_and(|v| v.step() <= step))
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out)?;
    Ok(())
}

/// One micro-batch (`global`, the batch's examples across all ranks): this rank's share through
/// forward and backward, the gradient scaled for accumulation over `accum` micro-batches and,
/// across ranks, by the share's part of the batch's loss. Returns the (weighted) loss as a
/// device scalar, and the global batch's rows and real tokens.
fn forward_backward(job: &Job, plan: &Plan, st: &State, global: &[usize], accum: usize) -> anyhow::Result<(Tensor, usize, usize)> {
    let p = job.params;
    // Each rank draws its own dropout masks; rank 0's are the one-process masks.
    let rank = job.group.map_or(0, |g| g.rank() as u64);
    tch::manual_seed((p.seed.wrapping_mul(0x9E37_79B9).wrapping_add(st.micro).wrapping_add(rank << 40)) as i64);
    let (idx, share) = match job.group {
        None => (global.to_vec(), 1.0),
        Some(g) => crate::distributed::local_rows(job.objective, job.train, global, g)?,
    };
    let b = shards::pad_batch(job.train, &idx, job.pad_id, plan.pad_to(), plan.length_multiple);
    let tokens = if job.group.is_some() { global.iter().map(|&i| job.train.length(i)).sum() } else { b.tokens };
    let Some(targets) = &b.targets else { bail!("the training split has no labels") };
    let loss = model::device::guard(b.rows, b.len, job.device, || {
        let x = model::infer::to_device(&b, job.device);
        let labels = model::loss::targets(targets, job.device);
        let logits = job.model.forward(&x, true);
        let loss = job.objective.loss(&logits, &labels);
        let loss = if share == 1.0 { loss } else { loss * share };
        (&loss / accum as f64).backward();
        loss.detach()
    })
    .map_err(|e| e.explain(&format!("training step {}", st.step + 1), "train.batch_size (or set train.batch_tokens), or tokenize.max_length"))?;
    Ok((loss, global.len(), tokens))
}

/// Runs (or resumes) training.
pub fn run(mut job: Job) -> anyhow::Result<Outcome> {
    let p = job.params;
    if job.leads() {
        std::fs::create_dir_all(&job.work).with_context(|| format!("creating {}", job.work.display()))?;
    }
    let n_train = job.train.len();
    if u32::try_from(n_train).is_err() {
        bail!("the train split has {n_train} examples; at most {} can be trained on (set train.max_train_examples)", u32::MAX);
    }
    let lengths = job.train.lengths();
    let pool = match p.max_train_examples {
        Some(n) if n < n_train => {
            let mut pick = crate::batches::permutation_u32(n_train, p.seed);
            pick.truncate(n);
            pick.sort_unstable();
            crate::batches::Pool::Some(pick)
        }
        _ => crate::batches::Pool::All(n_train),
    };
    if pool.is_empty() {
        bail!("the train split is empty");
    }
    let plan = Plan {
        padding: p.padding,
        batch_size: p.batch_size,
        batch_tokens: p.batch_tokens,
        max_length: job.max_length,
        length_multiple: job.model.length_multiple(job.max_length),
        seed: p.seed,
    };
    let whole_epochs = p.epochs.ceil().max(1.0) as u64;
    let epoch_plans: Vec<usize> = (0..whole_epochs).map(|e| plan.epoch(&pool, &lengths, e).len()).collect();
    let accum = p.grad_accum.max(1);
    let steps_per_epoch: Vec<u64> = epoch_plans.iter().map(|&b| b.div_ceil(accum) as u64).collect();
    let total_steps = match p.max_steps {
        Some(s) => s,
        None => {
            let full: u64 = steps_per_epoch.iter().take(p.epochs.floor() as usize).sum();
            let frac = p.epochs - p.epochs.floor();
            let part = steps_per_epoch.get(p.epochs.floor() as usize).map(|&s| (s as f64 * frac).round() as u64).unwrap_or(0);
            (full + part).max(1)
        }
    };
    // The epochs the run will reach, for the progress display: max_steps overrides `epochs`.
    let shown_epochs = match p.max_steps {
        Some(s) => s.div_ceil(steps_per_epoch[0].max(1)).max(1),
        None => whole_epochs,
    };
    let warmup = p.warmup_steps.unwrap_or_else(|| (p.warmup_ratio * total_steps as f64).ceil() as u64);
    let mut opt = AdamW::new(&job.model.params, p.weight_decay);
    let mut st = if job.leads() { load_checkpoint(&mut job, &mut opt)?.unwrap_or_default() } else { State::default() };
    let world = job.group.map_or(1, |g| g.size());
    let taken_by = st.world_size.unwrap_or(1);
    if let Some(group) = job.group {
        crate::distributed::start_together(group, &job.model.params, &mut opt, &mut st)?;
    }
    if st.step > 0 && taken_by != world && job.leads() {
        eprintln!("the checkpoint was taken by {taken_by} rank(s); {world} go on with the same global batches (results differ in summation order only)");
    }
    st.world_size = (world > 1).then_some(world);
    let resumed_from = (st.step > 0).then_some(st.step);
    let log_path = job.work.join("log.jsonl");
    let mut log: Box<dyn Write> = if job.leads() {
        if st.step > 0 {
            eprintln!("resuming from the checkpoint at step {} (epoch {}, batch {})", st.step, st.epoch + 1, st.batch);
            trim_log(&log_path, st.step)?;
        } else {
            let _ = std::fs::remove_file(&log_path);
        }
        Box::new(std::fs::OpenOptions::new().create(true).append(true).open(&log_path).context("opening log.jsonl")?)
    } else {
        Box::new(std::io::sink())
    };
    let progress = if job.progress && job.leads() { artifact::Progress::new("steps", total_steps, st.step) } else { artifact::Progress::hidden() };
    let mut last_eval = None;
    let higher = job.select.higher_is_better();
    // Pending per-step losses (device scalars), checked for NaN at each log point.
    let mut pending: Vec<(u64, Tensor)> = Vec::new();
    let mut window = (Instant::now(), 0u64, 0u64, st.step);
    let t_start = Instant::now();
    let base_seconds = st.train_seconds;
    let mut interrupted = false;
    let mut writer = Writer::default();
    let validate_and_checkpoint = |job: &Job,
                                   st: &mut State,
                                   opt: &AdamW,
                                   log: &mut dyn Write,
                                   last_eval: &mut Option<Validation>,
                                   writer: &mut Writer|
     -> anyhow::Result<bool> {
        let mut stop = false;
        let mut best = false;
        let t_eval = Instant::now();
        if let Some(val) = job.val {
            let ev = progress.during(&format!("validating {} examples", val.len()), || evaluate_job(job, val))?;
            let m = metric(&ev, job.select);
            let better = match st.best_metric(job.select) {
                None => true,
                Some(b) => (higher && m > b) || (!higher && m < b),
            };
            if better {
                st.best_step = Some(st.step);
                st.best_eval = Some(ev.clone());
                st.evals_without_improvement = 0;
                best = true;
            } else {
                st.evals_without_improvement += 1;
                if p.early_stopping_patience.is_some_and(|pat| st.evals_without_improvement >= pat) {
                    stop = true;
                }
            }
            let line = LogLine::Eval { step: st.step, epoch: st.epoch, eval: ev.clone(), best: better };
            writeln!(log, "{}", serde_json::to_string(&line)?)?;
            let figures: Vec<String> = ev.figures().iter().map(|(name, v)| format!("{name} {v:.4}")).collect();
            progress.println(&format!("step {}: validation {}{}", st.step, figures.join(", "), if better { " (best)" } else { "" }));
            *last_eval = Some(ev);
        }
        if job.leads() {
            save_checkpoint(job, opt, st, best, writer)?;
        }
        st.eval_seconds += t_eval.elapsed().as_secs_f64();
        st.train_seconds = base_seconds + t_start.elapsed().as_secs_f64();
        Ok(stop)
    };

    'outer: while !st.done && st.step < total_steps {
        let batches = plan.epoch(&pool, &lengths, st.epoch);
        let n_batches = batches.len();
        let mut micro_in_step = 0usize;
        while st.batch < n_batches {
            let global: Vec<usize> = batches[st.batch].iter().map(|&i| i as usize).collect();
            let (loss, rows, tokens) = forward_backward(&job, &plan, &st, &global, accum)?;
            st.micro += 1;
            st.batch += 1;
            st.samples += rows as u64;
            st.tokens += tokens as u64;
            window.1 += rows as u64;
            window.2 += tokens as u64;
            micro_in_step += 1;
            if micro_in_step < accum && st.batch < n_batches {
                continue;
            }
            micro_in_step = 0;
            let lr = p.learning_rate * lr_lambda(st.step, warmup, total_steps);
            let grads = match job.group {
                Some(g) => crate::distributed::all_reduce_grads(g, &job.model.params)?,
                None => job.model.params.grads(),
            };
            let norm = opt.step(&job.model.params, grads, lr, p.max_grad_norm);
            job.model.params.zero_grad();
            st.step += 1;
            pending.push((st.step, loss));
            progress.set_position(st.step);
            let at_log = st.step % p.log_every_steps.max(1) == 0 || st.step == total_steps;
            if at_log {
                let losses: Vec<f64> = match job.group {
                    None => pending.iter().map(|(_, l)| l.double_value(&[])).collect(),
                    Some(g) => crate::distributed::sum_losses(g, &pending.iter().map(|(_, l)| l.shallow_clone()).collect::<Vec<_>>(), job.device)?,
                };
                if let Some(i) = losses.iter().position(|l| !l.is_finite()) {
                    bail!(
                        "loss became {} at step {} (lr {lr:.3e}); nothing was published. Lower train.learning_rate or use precision: fp32",
                        losses[i],
                        pending[i].0
                    );
                }
                let mean = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
                let secs = window.0.elapsed().as_secs_f64().max(1e-9);
                let (sps, tps) = (window.1 as f64 / secs, window.2 as f64 / secs);
                let gn = norm.double_value(&[]);
                let line = LogLine::Train { step: st.step, epoch: st.epoch, loss: mean, lr, grad_norm: gn, samples: window.1, samples_per_s: sps, tokens_per_s: tps };
                writeln!(log, "{}", serde_json::to_string(&line)?)?;
                progress.report(st.step, &format!("epoch {}/{} loss {mean:.4} lr {lr:.2e} grad-norm {gn:.3} {sps:.0} samples/s", st.epoch + 1, shown_epochs));
                pending.clear();
                window = (Instant::now(), 0, 0, st.step);
            }
            if p.eval_every_steps.is_some_and(|e| st.step % e == 0) && st.step < total_steps && validate_and_checkpoint(&job, &mut st, &opt, &mut *log, &mut last_eval, &mut writer)? {
                st.done = true;
                break 'outer;
            }
            if st.step >= total_steps {
                break;
            }
            if job.stop_after == Some(st.step) {
                st.train_seconds = base_seconds + t_start.elapsed().as_secs_f64();
                if job.leads() {
                    save_checkpoint(&job, &opt, &st, false, &mut writer)?;
                }
                interrupted = true;
                break 'outer;
            }
        }
        let finished = st.step >= total_steps;
        if st.batch >= n_batches {
            st.epoch += 1;
            st.batch = 0;
        }
        if finished {
            st.done = true;
        }
        let epoch_end = p.eval_every_steps.is_none() || finished;
        if epoch_end && validate_and_checkpoint(&job, &mut st, &opt, &mut *log, &mut last_eval, &mut writer)? {
            st.done = true;
        }
    }
    progress.finish();
    let t_wait = Instant::now();
    writer.wait()?;
    if let Some(g) = job.group {
        // No rank leaves (rank 0 would take the rendezvous store with it) before all are done.
        g.barrier()?;
    }
    st.eval_seconds += t_wait.elapsed().as_secs_f64();
    st.train_seconds = base_seconds + t_start.elapsed().as_secs_f64();
    // Throughput counts the training loop only, not validation and checkpoints.
    let secs = (st.train_seconds - st.eval_seconds).max(1e-9);
    Ok(Outcome {
        samples_per_second: st.samples as f64 / secs,
        tokens_per_second: st.tokens as f64 / secs,
        optimizer_state_bytes: opt.state_bytes(),
        state: st,
        interrupted,
        resumed_from,
        total_steps,
        last_eval,
    })
}
