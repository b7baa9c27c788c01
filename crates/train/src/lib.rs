//! The train stage: fine-tunes the download artifact's pretrained encoder on the tokenize
//! artifact's shards. Artifact layout:
//!
//! ```text
//! best.safetensors    weights with the best validation metric (HF names)
//! final.safetensors   weights at the end of training
//! best.adapter.safetensors, final.adapter.safetensors
//!                     LoRA runs: the same weights as PEFT's adapter_model.safetensors (adapters
//!                     and the head under base_model.model.*); the two above are the merged model
//! config.json         the base config plus num_labels, id2label, label2id, architectures
//! hparams.json        the resolved hyper-parameters (schedule length, warmup, device, precision)
//! log.jsonl           one line per log step (loss, lr, grad_norm, samples/s, tokens/s) and eval
//! summary.json        throughput, best step and metric, final validation metrics
//! tb/events.out.tfevents.<time>.ft   the log's scalars for TensorBoard (tensorboard.rs)
//! ```
//!
//! While it runs, checkpoints live in `STORE/.checkpoints/train-<key>/`; a rerun after a crash or
//! Ctrl-C resumes from there.

pub mod batches;
pub mod distributed;
pub mod optim;
pub mod tensorboard;
pub mod trainer;

use std::path::Path;

use anyhow::{bail, Context as _};
use pipeline::files::{Hparams, Labels, Mfu, TokenizeMeta, TrainSummary};
use pipeline::{ClassWeights, Precision, Task, TrainParams, WeightRule};
use shards::Examples as _;
use tch::Kind;

/// Bump when the artifact's layout or the training algorithm's meaning changes.
pub const SCHEMA_VERSION: u32 = 3;

/// The stage's identity: code, dependencies, the libtorch loaded, and the rule that the tokenize
/// input was made from the download input (the model it trains).
pub fn stage_def() -> artifact::StageDef {
    artifact::stage_def!("train", SCHEMA_VERSION)
        .with_runtime(model::device::libtorch().key_facts().into())
        .with_lineage(&[artifact::Lineage { input: "tokenize", made_from: "download" }])
}

pub fn validate(p: &TrainParams) -> anyhow::Result<()> {
    pipeline::Params::validate(p).map_err(anyhow::Error::msg)
}

/// The compute dtype for a precision setting on a device.
pub fn compute_kind(p: Precision, device: tch::Device) -> Kind {
    match (p, device) {
        (Precision::Fp32, _) => Kind::Float,
        (Precision::Bf16, _) => Kind::BFloat16,
        (Precision::Auto, tch::Device::Cuda(_)) => Kind::BFloat16,
        (Precision::Auto, _) => Kind::Float,
    }
}

/// Single-label with two classes: the class whose F1 validation reports (and `select_metric:
/// f1` selects by).
pub fn positive_class(p: &TrainParams, labels: &Labels) -> anyhow::Result<Option<usize>> {
    if labels.task != Task::SingleLabel || labels.names.len() != 2 {
        return Ok(None);
    }
    pipeline::positive_index("train.positive_class", p.positive_class.as_deref(), &labels.names).map(Some).map_err(anyhow::Error::msg)
}

/// The task and class names of a tokenize artifact.
pub fn labels(tokenize: &Path) -> anyhow::Result<Labels> {
    let path = tokenize.join("labels.json");
    let labels: Labels = pipeline::files::read(&path)?;
    let least = if labels.task == Task::SingleLabel { 2 } else { 1 };
    if labels.names.len() < least {
        bail!("{}: a {} task needs at least {least} class names, found {:?}", path.display(), labels.task.name(), labels.names);
    }
    Ok(labels)
}

/// `class_weights` resolved on `train`: the listed weights, or `balanced` — single-label
/// `n / (classes × count)` per class (scikit-learn's), multi-label `negatives / positives` per
/// label (BCE's `pos_weight`). A class absent from train cannot be balanced: the error names it.
pub fn class_weights(p: &TrainParams, labels: &Labels, train: &shards::Split) -> anyhow::Result<Option<Vec<f64>>> {
    let rule = match &p.class_weights {
        None => return Ok(None),
        Some(ClassWeights::List(w)) => return Ok(Some(w.clone())),
        Some(ClassWeights::Rule(r)) => *r,
    };
    let WeightRule::Balanced = rule;
    let n = train.len() as f64;
    let counts: Vec<f64> = match train.all_targets() {
        shards::Targets::Class(y) => {
            let mut c = vec![0.0; labels.names.len()];
            y.iter().for_each(|&l| c[l as usize] += 1.0);
            c
        }
        shards::Targets::Multi { labels: l, hot } => (0..l).map(|j| hot.iter().skip(j).step_by(l).sum::<f32>() as f64).collect(),
        shards::Targets::Score(_) => bail!("train.class_weights apply to classification; this is a regression task"),
    };
    if let Some(j) = counts.iter().position(|&c| c == 0.0 || (labels.task == Task::MultiLabel && c == n)) {
        bail!(
            "train.class_weights: balanced: class `{}` {} in the {} train examples, so it has no balancing weight; list the weights instead (train.class_weights: [..])",
            labels.names[j],
            if counts[j] == 0.0 { "never occurs" } else { "occurs in every one" },
            train.len()
        );
    }
    Ok(Some(match labels.task {
        Task::MultiLabel => counts.iter().map(|&c| (n - c) / c).collect(),
        _ => counts.iter().map(|&c| n / (counts.len() as f64 * c)).collect(),
    }))
}

/// The loss for the task.
pub fn objective(p: &TrainParams, task: Task, weights: Option<&[f64]>, device: tch::Device) -> model::loss::Objective {
    match task {
        Task::SingleLabel => model::loss::Objective::single_label(weights, p.label_smoothing, device),
        Task::MultiLabel => model::loss::Objective::multi_label(weights, device),
        Task::Regression => model::loss::Objective::Regression,
    }
}

/// Peak dense bf16 FLOP/s of known GPUs, for model FLOP utilisation.
fn peak_flops() -> Option<(String, f64)> {
    let out = std::process::Command::new("nvidia-smi").args(["--query-gpu=name", "--format=csv,noheader"]).output().ok()?;
    let name = String::from_utf8_lossy(&out.stdout).lines().next()?.trim().to_string();
    let peak = if name.contains("H100") || name.contains("H200") {
        989e12
    } else if name.contains("A100") {
        312e12
    } else if name.contains("L4") {
        121e12
    } else {
        return Some((name, f64::NAN));
    };
    Some((name, peak))
}

/// The model's config.json, checked against the tokenize artifact: every id has an embedding row
/// and max_length fits the family's positions.
fn checked_config(model_dir: &Path, meta: &TokenizeMeta) -> anyhow::Result<model::Config> {
    let config_path = model_dir.join("config.json");
    let config = model::Config::from_file(&config_path)?;
    let family = config.family();
    if i64::from(meta.max_id) >= family.vocab_size() {
        bail!(
            "the tokenizer produces ids up to {} but the model's vocab_size is {}: tokenize and model do not match",
            meta.max_id,
            family.vocab_size()
        );
    }
    if meta.max_length as i64 > family.max_length() {
        bail!(
            "tokenize.max_length {} exceeds the {} positions of {} ({}); lower tokenize.max_length",
            meta.max_length,
            family.max_length(),
            config.model_type,
            config_path.display()
        );
    }
    Ok(config)
}

/// The pretrained weights with a new head of `outputs` (or random weights, `init: random`), and
/// LoRA adapters over them when `train.lora` asks, saying (when `says`: one process, or rank 0)
/// which parameters the checkpoint lacked or had to spare.
fn load_model(p: &TrainParams, config: &model::Config, outputs: i64, model_dir: &Path, device: tch::Device, says: bool) -> anyhow::Result<(model::Model, model::LoadReport)> {
    let lora = p.lora.as_ref();
    let (m, report) = match p.init {
        pipeline::Init::Pretrained => model::Model::load_with(config.clone(), outputs, lora, &model_dir.join("model.safetensors"), device, p.seed)?,
        pipeline::Init::Random => (model::Model::new(config.clone(), outputs, lora, device, p.seed)?, model::LoadReport::default()),
    };
    if says && !report.initialized.is_empty() {
        eprintln!("initialized (not in the checkpoint): {}", report.initialized.join(", "));
    }
    if says && !report.unused.is_empty() {
        eprintln!("not used from the checkpoint: {}", report.unused.join(", "));
    }
    Ok((m, report))
}

/// Runs the stage: `model_dir` holds config.json and model.safetensors (the download artifact's
/// `model/`), `tokenize` is the tokenize artifact, `work` the checkpoint directory. In a
/// data-parallel run every rank calls it with the `group`; ranks other than 0 write nothing
/// (`out` and `work` are not touched) and return the same summary.
pub fn run(p: &TrainParams, model_dir: &Path, tokenize: &Path, out: &Path, work: &Path, group: Option<&collective::Group>) -> anyhow::Result<TrainSummary> {
    validate(p)?;
    model::device::keep_freed_host_memory();
    let meta: TokenizeMeta = pipeline::files::read(&tokenize.join("meta.json"))?;
    let (pad_id, max_length) = (meta.pad_id, meta.max_length);
    let labels = labels(tokenize)?;
    let names = labels.names.clone();
    let select = p.check_task(labels.task, Some(names.len())).map_err(anyhow::Error::msg)?;
    let positive = positive_class(p, &labels)?;
    let config = checked_config(model_dir, &meta)?;
    let train = shards::Split::open(tokenize, "train")?;
    let val_split = shards::Split::open_setting(tokenize, &p.validation_split, "train.validation_split")?;
    let val = validation_subset(&val_split, p);
    // Before the model is loaded: a class that cannot be balanced fails at once.
    let weights = class_weights(p, &labels, &train)?;
    let device = match group {
        None => model::device::resolve(&p.device)?,
        Some(g) => rank_device(&p.device, &g.launch)?,
    };
    let kind = compute_kind(p.precision, device);
    let leads = group.is_none_or(|g| g.rank() == 0);
    let (mut m, report) = load_model(p, &config, labels.outputs() as i64, model_dir, device, leads)?;
    m.compute = kind;
    let objective = objective(p, labels.task, weights.as_deref(), device);
    if let (Some(l), true) = (&m.lora, leads) {
        eprintln!(
            "LoRA r={} alpha={} dropout={} on {} layers (target_modules {}); trained in full: {}",
            l.r,
            l.alpha,
            l.dropout,
            l.adapted.len(),
            l.target_modules.join(", "),
            l.modules_to_save.join(", ")
        );
    }
    if leads {
        eprintln!(
            "training {} of {} parameters ({:.2}%; optimizer state {:.2} MiB) on {} ({}), {} train / {} validation examples",
            m.params.n_trainable(),
            m.params.numel(),
            100.0 * m.params.n_trainable() as f64 / m.params.numel().max(1) as f64,
            optim::AdamW::state_bytes_for(m.params.n_trainable() as u64) as f64 / (1 << 20) as f64,
            match group {
                Some(g) => format!("{} ranks over {}, each on {}", g.size(), g.backend.name(), model::device::describe(device)),
                None => model::device::describe(device),
            },
            if kind == Kind::BFloat16 { "bf16" } else { "fp32" },
            p.max_train_examples.map_or(train.len(), |n| n.min(train.len())),
            val.len()
        );
    }
    let job = trainer::Job {
        params: p,
        model: &mut m,
        train: &train,
        val: Some(&val as &dyn shards::Examples),
        pad_id,
        max_length,
        device,
        work: work.to_path_buf(),
        stop_after: None,
        positive_class: positive,
        names: names.clone(),
        progress: true,
        objective: &objective,
        select,
        group,
    };
    let outcome = trainer::run(job)?;
    let sizes = Sizes { trainable: m.params.n_trainable() as u64, parameters: m.params.numel() as u64, checkpoint_bytes: dir_bytes(&work.join("checkpoint")) };
    let mut summary = summarize(select, &outcome, &config, device, sizes);
    if let Some(g) = group {
        summary.distributed = Some(pipeline::files::DistributedRun { world_size: g.size(), backend: g.backend.name().into(), launcher: g.launch.launcher.clone() });
        // The model FLOPs are the whole run's; the peak is one GPU's.
        if let Some(m) = &mut summary.flop_utilisation {
            m.mfu /= g.size() as f64;
        }
    }
    if !leads {
        return Ok(summary);
    }
    save_weights(&m, work, out)?;
    std::fs::copy(work.join("log.jsonl"), out.join("log.jsonl")).context("copying the log")?;
    tensorboard::write(&out.join("log.jsonl"), out)?;
    std::fs::write(out.join("config.json"), serde_json::to_vec_pretty(&config.classifier_json(&names, labels.task.problem_type()))?)?;
    let hparams = Hparams {
        params: p.clone(),
        task: labels.task,
        select_metric: select,
        class_weights: weights,
        total_steps: outcome.total_steps,
        device: model::device::describe(device),
        precision: if kind == Kind::BFloat16 { "bf16" } else { "fp32" }.into(),
        max_length,
        labels: names.clone(),
        positive_class: positive.map(|i| names[i].clone()),
        initialized: report.initialized.clone(),
        lora: m.lora.clone(),
        tokenizer_class: Some(config.family().tokenizer_class().to_string()),
    };
    pipeline::files::write(&out.join("hparams.json"), &hparams)?;
    pipeline::files::write(&out.join("summary.json"), &summary)?;
    let st = &outcome.state;
    eprintln!(
        "trained {} steps in {:.1} s: {:.1} samples/s, {:.0} tokens/s{}; best validation {} {} at step {}",
        st.step,
        st.train_seconds,
        outcome.samples_per_second,
        outcome.tokens_per_second,
        summary.flop_utilisation.as_ref().map(|m| format!(", MFU {:.1}%", 100.0 * m.mfu)).unwrap_or_default(),
        select.name(),
        st.best_metric(select).map(|m| format!("{m:.4}")).unwrap_or_else(|| "-".into()),
        st.best_step.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
    );
    Ok(summary)
}

/// This rank's device for `train.device`: its own GPU (by local rank) where the setting allows
/// CUDA and one is there, else the CPU.
pub fn rank_device(spec: &str, launch: &collective::Launch) -> anyhow::Result<tch::Device> {
    let local = launch.local_rank;
    match spec {
        "cpu" => Ok(tch::Device::Cpu),
        "auto" if !tch::Cuda::is_available() => Ok(tch::Device::Cpu),
        "auto" | "cuda" => model::device::resolve(&format!("cuda:{local}")).map_err(|e| {
            e.context(format!("rank {} runs as local rank {local}, on GPU {local}: start at most as many ranks per machine as it has GPUs", launch.rank))
        }),
        one if launch.local_world_size > 1 => bail!(
            "train.device `{one}` names one device, but {} ranks run on this machine: use `auto` or `cuda` (each rank takes the GPU of its local rank)",
            launch.local_world_size
        ),
        one => model::device::resolve(one),
    }
}

/// Joins the other ranks of `launch` on this rank's device, with `train.distributed`'s backend
/// and timeout, after giving this rank its share of the machine's cores.
pub fn join(p: &TrainParams, launch: &collective::Launch) -> anyhow::Result<collective::Group> {
    let dist = p.distributed.clone().unwrap_or_default();
    let device = rank_device(&p.device, launch)?;
    let backend = backend(dist.backend, device)?;
    share_cores(launch, device);
    collective::Group::join(launch, backend, dist.timeout(), device)
}

/// The engine for `train.distributed.backend` on `device`.
pub fn backend(setting: pipeline::DistributedBackend, device: tch::Device) -> anyhow::Result<collective::Backend> {
    use pipeline::DistributedBackend as B;
    let cuda = matches!(device, tch::Device::Cuda(_));
    match (setting, cuda) {
        (B::Auto, _) => Ok(collective::Backend::for_device(device)),
        (B::Nccl, true) | (B::Cpu, false) => Ok(if cuda { collective::Backend::Nccl } else { collective::Backend::Gloo }),
        (B::Nccl, false) => bail!("train.distributed.backend is nccl, which moves CUDA tensors, but this rank trains on the CPU: use backend cpu or auto"),
        (B::Cpu, true) => bail!("train.distributed.backend is cpu (Gloo), which moves CPU tensors, but this rank trains on {device:?}: use backend nccl or auto"),
    }
}

/// On the CPU, ranks on one machine share its cores: each takes cores / local ranks threads
/// (unless `OMP_NUM_THREADS` says otherwise), so they do not fight over them.
pub fn share_cores(launch: &collective::Launch, device: tch::Device) {
    if device != tch::Device::Cpu || launch.local_world_size < 2 || std::env::var_os("OMP_NUM_THREADS").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    tch::set_num_threads((cores / launch.local_world_size).max(1) as i32);
}

/// Writes `final.safetensors` (the weights now) and `best.safetensors` (the trainable weights
/// the trainer kept in `work` at the best validation, over the same frozen base; the final ones
/// when no validation ran). Under LoRA each is the merged model, and `*.adapter.safetensors`
/// beside it holds the adapters and the head under PEFT's names.
fn save_weights(m: &model::Model, work: &Path, out: &Path) -> anyhow::Result<()> {
    let write = |named: Vec<(String, tch::Tensor)>, name: &str| -> anyhow::Result<()> {
        let path = out.join(name);
        tch::Tensor::write_safetensors(&named, &path).with_context(|| format!("writing {}", path.display()))
    };
    let best = work.join("best.safetensors");
    if m.lora.is_none() {
        write(m.params.host_copy(Kind::Float), "final.safetensors")?;
        let from = if best.exists() { best } else { out.join("final.safetensors") };
        std::fs::copy(&from, out.join("best.safetensors")).with_context(|| format!("copying {}", from.display()))?;
        return Ok(());
    }
    let save = |which: &str| -> anyhow::Result<()> {
        write(m.params.merged(), &format!("{which}.safetensors"))?;
        write(m.params.peft_state(), &format!("{which}.adapter.safetensors"))
    };
    save("final")?;
    if best.exists() {
        m.params.load_trainable(&best)?;
    }
    save("best")
}

/// The bytes of the files directly in `dir` (0 when it is missing).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()).unwrap_or(0)
}

/// What a run's model and checkpoint weigh, for its summary.
struct Sizes {
    trainable: u64,
    parameters: u64,
    checkpoint_bytes: u64,
}

/// `summary.json`: what a run did, and on a GPU its model FLOP utilisation.
fn summarize(select: pipeline::Metric, outcome: &trainer::Outcome, config: &model::Config, device: tch::Device, sizes: Sizes) -> TrainSummary {
    let st = &outcome.state;
    let avg_len = st.tokens as f64 / st.samples.max(1) as f64;
    let flops = 3.0 * st.tokens as f64 * config.family().flops_per_token(avg_len);
    let loop_secs = (st.train_seconds - st.eval_seconds).max(1e-9);
    let mfu = match device {
        tch::Device::Cuda(_) => peak_flops().map(|(gpu, peak)| Mfu { gpu, model_tflops_per_s: flops / loop_secs / 1e12, mfu: flops / loop_secs / peak }),
        _ => None,
    };
    TrainSummary {
        steps: st.step,
        resumed_from_step: outcome.resumed_from,
        epochs_completed: st.epoch,
        samples: st.samples,
        tokens: st.tokens,
        train_seconds: st.train_seconds,
        eval_and_checkpoint_seconds: st.eval_seconds,
        samples_per_second: outcome.samples_per_second,
        tokens_per_second: outcome.tokens_per_second,
        best_step: st.best_step,
        best_metric: st.best_metric(select),
        select_metric: select,
        best_validation: st.best_eval.clone(),
        last_validation: outcome.last_eval.clone(),
        flop_utilisation: mfu,
        trainable_parameters: sizes.trainable,
        parameters: sizes.parameters,
        optimizer_state_bytes: outcome.optimizer_state_bytes,
        checkpoint_bytes: sizes.checkpoint_bytes,
        distributed: None,
    }
}

/// The examples validation runs on: the whole split, or `train.max_validation_examples` of them
/// drawn with a fixed seed (not the training seed: every run of a sweep is validated on the same
/// rows), in the split's order.
fn validation_subset<'a>(val: &'a shards::Split, p: &TrainParams) -> shards::Subset<'a> {
    let n = val.len();
    let index = match p.max_validation_examples {
        Some(k) if k < n => {
            let mut pick = batches::permutation(n, VALIDATION_SUBSET_SEED);
            pick.truncate(k);
            pick.sort_unstable();
            pick
        }
        _ => (0..n).collect(),
    };
    shards::Subset::new(val, index)
}

/// The seed of the `train.max_validation_examples` draw.
const VALIDATION_SUBSET_SEED: u64 = 0x5641_4C49_4441_5445;
