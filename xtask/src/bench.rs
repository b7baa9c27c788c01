//! `cargo xtask bench`: our stages and the Python reference (tokenizers, datasets, HF Trainer) on
//! the same data, on the same machine, in the same run. Prints one table — each figure for both
//! sides as median (min–max) over repeats, and the ratio — and writes it as JSON. No figure is
//! typed in by hand: every number comes from a process this command started.
//!
//! Data comes from a Hub: `HF_ENDPOINT` when set, else the offline mirror next to the checkout
//! (`../shared/hub-mirror`, served by `../shared/hub/serve.py` for the duration of the run).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use pipeline::Stage;
use serde_json::{json, Value};

use crate::{root, setup};

mod lora;
mod distributed;
mod remote;
mod scale;

/// The parts of the benchmark (`--sections`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// encode_batch and datasets.map vs our tokenize stage, whole train split.
    Tokenize,
    /// Training samples/s over fixed steps after warm-up, and peak memory.
    Train,
    /// A full fine-tune per side to test accuracy, training samples/s and wall time (HF pads
    /// each batch to its longest row on CPU, as the train issue's reference does; to max_length
    /// on CUDA, as the GPU reference figures do), and evaluate examples/s.
    Accuracy,
    /// A no-change rerun of the pipeline.
    Cache,
    /// Sentence pairs and multi-label, made from the subset's reviews (bench/tasks_data.py): a
    /// full fine-tune per side, training samples/s and the task's headline.
    Tasks,
    /// `ft-predict` vs transformers' `pipeline("text-classification")` on the first 1,000 test
    /// reviews, one classifier (the model with a seeded head) for both: examples/s, and whether
    /// the labels agree.
    Predict,
    /// Each stage on IMDB's train split repeated to each `--scale-rows` size (bench/scale_data.py):
    /// wall seconds, rows/s and peak RSS. Not in the default set: at 10M rows it takes an hour.
    Scale,
    /// LoRA (`train.lora: {}`) against a full fine-tune of ours, and against HF Trainer + peft
    /// LoRA on the same modules, `--full-runs` seeds each on the subset: test accuracy,
    /// training samples/s, peak RSS, trainable parameters, optimizer state, checkpoint size.
    Lora,
    /// The smoke pipeline and `imdb-minilm-cpu` computed into an empty store, pushed to an S3
    /// server on 127.0.0.1 (moto) and pulled into another empty store: seconds and bytes. Not in
    /// the default set (a few minutes per repeat).
    Remote,
    /// The train stage with one process and with two CPU ranks (`--nproc-per-node 2`, Gloo),
    /// 40 steps at the bench's batch: training samples/s and the stage's wall seconds. Not in
    /// the default set.
    Distributed,
}

#[derive(clap::Args)]
pub struct Args {
    /// Which parts to run (comma-separated; default: all).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Section::Tokenize, Section::Train, Section::Accuracy, Section::Cache, Section::Tasks, Section::Predict, Section::Lora])]
    sections: Vec<Section>,
    /// `cpu` or `cuda` (both sides run there).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The model: a repo on the Hub, a local model directory (Hub layout), or a family name
    /// (bert, roberta, xlm-roberta, distilbert, modernbert) for random weights at that family's
    /// base shape (made by bench/random_model.py; no accuracy section then).
    #[arg(long, default_value = "sentence-transformers/all-MiniLM-L6-v2")]
    model: String,
    /// Dataset repo on the Hub (text/label columns, train and test splits).
    #[arg(long, default_value = "stanfordnlp/imdb")]
    dataset: String,
    /// Train on the first N reviews of `datasets`' `shuffle(seed)` of train (validation: the next
    /// N/10, at least 50; test: the first N/2 of the shuffled test split), the subset a notebook
    /// draws; 0 = the whole dataset with a carved validation split. Default: 1000 on cpu, 0 on
    /// cuda. Tokenization always uses the whole train split.
    #[arg(long)]
    subset: Option<usize>,
    /// Default: 128 on cpu, 256 on cuda.
    #[arg(long)]
    max_length: Option<usize>,
    /// Default: 16 on cpu, 128 on cuda.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Runs of each tokenize, throughput, evaluate and cache figure.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Seed of the data subset and validation carve, and of both sides' training.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Epochs of the full fine-tunes (default: 1 on cpu, 3 on cuda).
    #[arg(long)]
    epochs: Option<f64>,
    /// Learning rate of the full fine-tunes (default: 5e-5 on cpu, 1e-4 on cuda).
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Learning rate of the LoRA section's LoRA runs, both sides (default: 5e-4).
    #[arg(long)]
    lora_learning_rate: Option<f64>,
    /// Full fine-tunes per side for time-to-accuracy.
    #[arg(long, default_value_t = 1)]
    full_runs: usize,
    /// The dataset sizes of the scale section, in rows (the first is the others' reference).
    #[arg(long, value_delimiter = ',', default_values_t = [100_000, 1_000_000])]
    scale_rows: Vec<usize>,
    /// Where the store, pipelines, logs, `bench.json` and `bench.md` go (default: target/bench).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The settings a run uses, after device defaults.
struct Plan {
    cuda: bool,
    subset: usize,
    max_length: usize,
    batch: usize,
    lr: f64,
    epochs: f64,
    warmup_steps: u64,
    measured_steps: u64,
    repeats: usize,
    full_runs: usize,
    out: PathBuf,
    sections: Vec<Section>,
    /// A local model directory (given, or made for a family name); `None`: the Hub repo.
    model_dir: Option<PathBuf>,
}

/// The families `--model` names for random weights at their base shape.
const FAMILIES: [&str; 5] = ["bert", "roberta", "xlm-roberta", "distilbert", "modernbert"];

impl Plan {
    fn new(a: &Args) -> anyhow::Result<Self> {
        let cuda = match a.device.as_str() {
            "cpu" => false,
            "cuda" => true,
            d => bail!("--device {d}: expected cpu or cuda"),
        };
        if a.repeats == 0 || a.full_runs == 0 {
            bail!("--repeats and --full-runs must be at least 1");
        }
        let out = a.out.clone().unwrap_or_else(|| crate::target_dir().join("bench"));
        let out = if out.is_absolute() { out } else { std::env::current_dir()?.join(out) };
        Ok(Plan {
            cuda,
            subset: a.subset.unwrap_or(if cuda { 0 } else { 1000 }),
            max_length: a.max_length.unwrap_or(if cuda { 256 } else { 128 }),
            batch: a.batch_size.unwrap_or(if cuda { 128 } else { 16 }),
            lr: a.learning_rate.unwrap_or(if cuda { 1e-4 } else { 5e-5 }),
            epochs: a.epochs.unwrap_or(if cuda { 3.0 } else { 1.0 }),
            warmup_steps: if cuda { 10 } else { 2 },
            measured_steps: if cuda { 50 } else { 8 },
            repeats: a.repeats,
            full_runs: a.full_runs,
            out,
            sections: a.sections.clone(),
            model_dir: None,
        })
    }

    fn device(&self) -> &'static str {
        if self.cuda { "cuda" } else { "cpu" }
    }

    /// Both sides' precision: bf16 on CUDA, fp32 on CPU.
    fn precision(&self) -> &'static str {
        if self.cuda { "bf16" } else { "fp32" }
    }

    /// Whether the HF fine-tune pads each batch to its longest row: on CPU, as the train issue's
    /// reference run does; on CUDA the reference figures pad to max_length (static shapes).
    fn hf_dynamic(&self) -> bool {
        !self.cuda
    }

    /// Rows per forward pass of the predict section, both sides.
    fn predict_batch(&self) -> usize {
        if self.cuda {
            256
        } else {
            64
        }
    }

    fn has(&self, s: Section) -> bool {
        self.sections.contains(&s)
    }

    /// Resolves `--model`: a family name gets a random model directory (made once per run
    /// folder), a local directory is used as it is, anything else is a Hub repo.
    fn resolve_model(&mut self, a: &Args) -> anyhow::Result<()> {
        if FAMILIES.contains(&a.model.as_str()) {
            let dir = self.out.join("models").join(&a.model);
            if !dir.join("model.safetensors").exists() {
                eprintln!("== random {} at its base shape -> {}", a.model, dir.display());
                let logs = self.out.join("logs");
                std::fs::create_dir_all(&logs)?;
                json_of(Command::new(python()).arg(root().join("bench/random_model.py")).arg(&a.model).arg(&dir), &logs.join("random-model.log"))?;
            }
            if self.has(Section::Accuracy) || self.has(Section::Tasks) || self.has(Section::Lora) {
                eprintln!("== no accuracy, tasks or lora section: random weights (`--model {}`) have nothing to fine-tune from", a.model);
                self.sections.retain(|s| !matches!(s, Section::Accuracy | Section::Tasks | Section::Lora));
            }
            self.model_dir = Some(dir);
        } else if Path::new(&a.model).is_dir() {
            self.model_dir = Some(std::fs::canonicalize(&a.model).with_context(|| format!("--model {}", a.model))?);
        }
        Ok(())
    }
}

/// Figures of one side over repeated runs.
#[derive(Default, Clone)]
struct Runs(Vec<f64>);

impl Runs {
    fn median(&self) -> Option<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }
    /// The mean and the sample variance, from two runs up.
    fn mean_var(&self) -> Option<(f64, f64)> {
        let n = self.0.len();
        if n < 2 {
            return None;
        }
        let mean = self.0.iter().sum::<f64>() / n as f64;
        Some((mean, self.0.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64))
    }
    fn show(&self, unit: &str) -> String {
        let (Some(m), Some(lo), Some(hi)) = (self.median(), self.0.iter().copied().reduce(f64::min), self.0.iter().copied().reduce(f64::max))
        else {
            return "—".into();
        };
        let f = |x: f64| if unit == "%" { format!("{:.2}", 100.0 * x) } else if x >= 100.0 { format!("{x:.0}") } else { format!("{x:.2}") };
        let unit = if unit == "%" { "%" } else { "" };
        if self.0.len() == 1 {
            format!("{}{unit}", f(m))
        } else {
            format!("{}{unit} ({}–{})", f(m), f(lo), f(hi))
        }
    }
}

/// One table row: a figure for both sides. `higher_is_better` orients the ratio so that > 1
/// always means ours is better.
struct Row {
    section: &'static str,
    figure: String,
    unit: &'static str,
    ours: Runs,
    reference_name: String,
    reference: Runs,
    higher_is_better: bool,
    target: String,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        let (o, r) = (self.ours.median()?, self.reference.median()?);
        if o <= 0.0 || r <= 0.0 {
            return None;
        }
        Some(if self.higher_is_better { o / r } else { r / o })
    }
    fn json(&self) -> Value {
        json!({
            "section": self.section, "figure": self.figure, "unit": self.unit,
            "ours": {"median": self.ours.median(), "runs": self.ours.0},
            "reference": {"name": self.reference_name, "median": self.reference.median(), "runs": self.reference.0},
            "ratio": self.ratio(), "higher_is_better": self.higher_is_better, "target": self.target,
        })
    }
}

/// The offline mirror served for the run (killed on drop), or nothing when HF_ENDPOINT is set.
struct Hub(Option<Child>);

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_hub(out: &Path) -> anyhow::Result<Hub> {
    if std::env::var_os("HF_HOME").is_none() {
        std::env::set_var("HF_HOME", out.join("hf-home"));
    }
    if std::env::var_os("HF_ENDPOINT").is_some() {
        return Ok(Hub(None));
    }
    let serve = root().join("../shared/hub/serve.py");
    let mirror = root().join("../shared/hub-mirror");
    if !serve.exists() || !mirror.is_dir() {
        bail!(
            "no Hub to download from: set HF_ENDPOINT (https://huggingface.co, or a mirror served by serve.py); \
             {} and {} are not there",
            serve.display(),
            mirror.display()
        );
    }
    let port_file = out.join("hub.port");
    let _ = std::fs::remove_file(&port_file);
    let log = std::fs::File::create(out.join("hub.log"))?;
    let child = Command::new("python3")
        .arg(&serve)
        .arg(&mirror)
        .arg("--port-file")
        .arg(&port_file)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", serve.display()))?;
    let hub = Hub(Some(child));
    let t = Instant::now();
    loop {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            if !p.trim().is_empty() {
                std::env::set_var("HF_ENDPOINT", format!("http://127.0.0.1:{}", p.trim()));
                return Ok(hub);
            }
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the mirror Hub did not start in 30 s; see {}", out.join("hub.log").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Which data a benchmark pipeline downloads.
enum Data<'a> {
    /// The whole dataset, a validation split carved from train (as the shipped pipeline does).
    Carved,
    /// The source splits as they are, in source order: the input of `bench/subset.py`.
    Source,
    /// The `train`/`validation`/`test` parquet files `bench/subset.py` wrote to `dir`.
    Subset { dir: &'a Path, label_names: &'a Value },
    /// A task-kind dataset of `bench/tasks_data.py` in `dir` (`text`, `text_pair` for pairs,
    /// `label`), of `task`; train with `seed` and evaluate the final weights.
    Task { dir: &'a Path, task: &'a str, pairs: bool, seed: u64 },
    /// The scale section's: a large `train` file (validation carved from it) and the IMDB test
    /// split, of which 2,000 rows are evaluated; a few training steps, validated on 1,000.
    Scale { train: &'a Path, test: &'a Path },
}

/// The benchmark pipeline: the shipped imdb-minilm pipeline with the run's model, dataset,
/// device and hyper-parameters.
fn write_pipeline(a: &Args, plan: &Plan, name: &str, data: Data) -> anyhow::Result<pipeline::Pipeline> {
    let template = root().join("pipelines/imdb-minilm.yaml");
    let text = std::fs::read_to_string(&template).with_context(|| format!("reading {}", template.display()))?;
    let mut v: Value = serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", template.display()))?;
    v["download"]["dataset"]["repo"] = json!(a.dataset);
    v["download"]["model"] = match &plan.model_dir {
        Some(dir) => json!({ "path": dir }),
        None => json!({ "repo": a.model, "revision": "main" }),
    };
    v["download"]["validation"]["seed"] = json!(a.seed);
    let (mut train_seed, mut final_weights) = (a.seed, false);
    match data {
        Data::Carved => {}
        Data::Source => v["download"]["validation"]["fraction"] = json!(0.0),
        Data::Subset { dir, label_names } => {
            let files: serde_json::Map<String, Value> =
                ["train", "validation", "test"].iter().map(|s| (s.to_string(), json!(dir.join(format!("{s}.parquet"))))).collect();
            v["download"]["dataset"] = json!({ "files": files });
            v["download"]["label_names"] = json!(label_names);
        }
        Data::Task { dir, task, pairs, seed } => {
            let files: serde_json::Map<String, Value> =
                ["train", "validation", "test"].iter().map(|s| (s.to_string(), json!(dir.join(format!("{s}.parquet"))))).collect();
            v["download"]["dataset"] = json!({ "files": files });
            v["download"]["task"] = json!(task);
            if pairs {
                v["download"]["columns"] = json!({"text": "text", "text_pair": "text_pair", "label": "label"});
            }
            train_seed = seed;
            // HF Trainer reports its final weights; ours are then the same, not validation's pick.
            final_weights = true;
        }
        Data::Scale { train, test } => {
            v["download"]["dataset"] = json!({ "files": {"train": train, "test": test} });
            v["download"]["label_names"] = json!(["neg", "pos"]);
            v["download"]["validation"]["fraction"] = json!(0.01);
            v["download"]["max_examples"] = json!({"test": 2000});
        }
    }
    v["tokenize"]["max_length"] = json!(plan.max_length);
    v["train"] = json!({
        "device": plan.device(), "precision": plan.precision(), "epochs": plan.epochs,
        "learning_rate": plan.lr, "weight_decay": 0.01, "batch_size": plan.batch, "log_every_steps": 50, "seed": train_seed,
    });
    v["evaluate"] = json!({"split": "test", "device": plan.device(), "bootstrap": 0});
    if final_weights {
        v["evaluate"]["weights"] = json!("final");
    }
    if matches!(data, Data::Scale { .. }) {
        v["train"]["max_steps"] = json!(20);
        v["train"]["max_validation_examples"] = json!(1000);
    }
    if matches!(data, Data::Source) {
        // Only the download of this pipeline runs (for bench/subset.py); the splits the later
        // stages name must still be among the source's, which has no validation split.
        v["train"]["validation_split"] = json!("test");
    }
    let path = plan.out.join(format!("{name}.yaml"));
    // Sections in stage order (a JSON object sorts its keys).
    let mut text = format!("name: {name}\n");
    for st in Stage::ALL {
        text.push_str(&serde_yaml_ng::to_string(&json!({ st.name(): v[st.name()] }))?);
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(pipeline::load(&path)?)
}

fn run_stages(p: &pipeline::Pipeline, plan: &Plan, bins: &Path, only: Option<Stage>, force: &[Stage]) -> anyhow::Result<Vec<runner::StageOutcome>> {
    let opts = runner::RunOptions {
        only,
        force: force.to_vec(),
        bin_dir: bins.to_path_buf(),
        store: Some(plan.out.join("store")),
        ..Default::default()
    };
    runner::run(p, &opts, |o| eprintln!("  {} {} {:.1} s", o.stage, if o.cached { "cached" } else { "ran" }, o.seconds))
}

fn artifact_of(outcomes: &[runner::StageOutcome], stage: Stage) -> anyhow::Result<PathBuf> {
    outcomes
        .iter()
        .find(|o| o.stage == stage.name())
        .and_then(|o| o.artifact.clone())
        .with_context(|| format!("the `{stage}` stage left no artifact"))
}

fn seconds_of(outcomes: &[runner::StageOutcome], stage: Stage) -> f64 {
    outcomes.iter().find(|o| o.stage == stage.name()).map(|o| o.seconds).unwrap_or(0.0)
}

/// Runs a command whose last stdout line is a JSON object; its stderr goes to `log`.
fn json_of(cmd: &mut Command, log: &Path) -> anyhow::Result<Value> {
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let out = cmd.stderr(err).output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}); see {}", out.status, log.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    serde_json::from_str(last).with_context(|| format!("{cmd:?} printed no JSON result; see {}", log.display()))
}

fn python() -> PathBuf {
    root().join(".venv/bin/python")
}

fn num(v: &Value, path: &[&str]) -> anyhow::Result<f64> {
    let mut x = v;
    for k in path {
        x = &x[*k];
    }
    x.as_f64().with_context(|| format!("result has no number at {}: {v}", path.join(".")))
}

fn nums(v: &Value, key: &str) -> Runs {
    Runs(v[key].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default())
}

/// `bench/hf_train.py imdb` on our token ids with the bench's settings, learning rate `lr` and
/// Trainer seed `seed`.
fn hf_command(plan: &Plan, model_dir: &Path, tokens: &Path, lr: f64, seed: u64) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(root().join("bench/hf_train.py"))
        .arg("imdb")
        .arg("--model")
        .arg(model_dir)
        .arg("--tokens")
        .arg(tokens)
        .arg("--batch")
        .arg(plan.batch.to_string())
        .arg("--lr")
        .arg(lr.to_string())
        .arg("--epochs")
        .arg(plan.epochs.to_string())
        .arg("--length")
        .arg(plan.max_length.to_string())
        .arg("--seed")
        .arg(seed.to_string())
        .args(plan.hf_dynamic().then_some("--dynamic"));
    cmd
}

/// HF Trainer's full fine-tune on our token ids (`bench/hf_train.py imdb`): train, then
/// evaluate the test split `evals` times.
fn hf_fine_tune(plan: &Plan, model_dir: &Path, tokens: &Path, evals: usize, seed: u64, log: &Path) -> anyhow::Result<Value> {
    json_of(hf_command(plan, model_dir, tokens, plan.lr, seed).arg("--eval-repeats").arg(evals.to_string()), log)
}

/// The tasks section: a pairs and a multi-label dataset made from the subset's reviews, a full
/// fine-tune per side on the same token ids; training samples/s and the task's headline (test
/// accuracy for pairs, micro F1 at threshold 0.5 for multi-label). Run `r` of `--full-runs`
/// trains both sides with seed `seed + r`, and both report their final weights, so that the
/// quality rows compare two samples of the same procedure and can say whether they differ
/// beyond the spread of seeds.
fn task_rows(a: &Args, plan: &Plan, bins: &Path, subset: &Path, logs: &Path) -> anyhow::Result<Vec<Row>> {
    let dir = plan.out.join("tasks");
    let counts = json_of(Command::new(python()).arg(root().join("bench/tasks_data.py")).arg(subset).arg(&dir).arg(a.seed.to_string()), &logs.join("tasks-data.log"))?;
    eprintln!("== tasks: pairs and multi-label from the subset's reviews {counts} ({} runs per side, seeds {}..)", plan.full_runs, a.seed);
    let mut rows = Vec::new();
    for (kind, task, pairs, headline, hf_key) in [
        ("pairs", "single_label", true, "test accuracy (does the passage hold the quote)", "test_accuracy"),
        ("multilabel", "multi_label", false, "test micro F1 (positive, acting, story, funny)", "test_f1_micro"),
    ] {
        let (mut ours_rate, mut ours_score, mut hf_rate, mut hf_score) = (Runs::default(), Runs::default(), Runs::default(), Runs::default());
        for r in 0..plan.full_runs {
            let seed = a.seed + r as u64;
            let p = write_pipeline(a, plan, &format!("bench-{kind}-seed{seed}"), Data::Task { dir: &dir.join(kind), task, pairs, seed })?;
            let o = run_stages(&p, plan, bins, None, &[Stage::Train, Stage::Evaluate])?;
            let summary: pipeline::files::TrainSummary = pipeline::files::read(&artifact_of(&o, Stage::Train)?.join("summary.json"))?;
            ours_rate.0.push(summary.samples_per_second);
            let m: pipeline::files::EvalMetrics = pipeline::files::read(&artifact_of(&o, Stage::Evaluate)?.join("metrics.json"))?;
            ours_score.0.push(m.headline().1);
            let model_dir = artifact_of(&o, Stage::Download)?.join("model");
            let v = hf_fine_tune(plan, &model_dir, &artifact_of(&o, Stage::Tokenize)?, 1, seed, &logs.join(format!("hf-{kind}-{r}.log")))?;
            hf_rate.0.push(num(&v, &["samples_per_s"])?);
            hf_score.0.push(num(&v, &[hf_key])?);
        }
        let hf_name = format!("HF Trainer, {}, padding {}", plan.precision(), if plan.hf_dynamic() { "dynamic" } else { "max_length" });
        let section = if pairs { "pairs" } else { "multi-label" };
        rows.push(Row {
            section,
            figure: "training samples/s over the whole run".into(),
            unit: "samples/s",
            ours: ours_rate,
            reference_name: hf_name.clone(),
            reference: hf_rate,
            higher_is_better: true,
            target: if plan.cuda { "" } else { "≥ 1.2x" }.into(),
        });
        let target = format!("within noise: {}", noise_verdict(&ours_score, &hf_score));
        rows.push(Row { section, figure: headline.into(), unit: "%", ours: ours_score, reference_name: hf_name, reference: hf_score, higher_is_better: true, target });
    }
    Ok(rows)
}

/// Whether two sides' runs differ by more than their seeds do: the difference of the means
/// against twice its standard error (each side's sample variance over its runs), which is about
/// a 95% two-sided test for a handful of runs.
/// The reviews predict is timed on.
const PREDICT_REVIEWS: usize = 1000;

/// The predict section (see [`Section::Predict`]): each side runs `repeats` times over the same
/// reviews with the same classifier and batch size; ours is tokenization and inference as
/// ft-predict reports them (loading and writing left out, as the pipeline's construction is).
/// At the bench's max_length in fp32 and bf16, and in fp32 at the model's own limit (512 for
/// BERT), which a user's `truncation=True` means.
fn predict_rows(plan: &Plan, bins: &Path, model_dir: &Path, test: &Path, seed: u64, logs: &Path) -> anyhow::Result<Vec<Row>> {
    eprintln!("== predict ({PREDICT_REVIEWS} test reviews, batch {}, {} runs per side)", plan.predict_batch(), plan.repeats);
    let dir = plan.out.join("predict");
    std::fs::create_dir_all(&dir)?;
    let prepared = json_of(
        Command::new(python())
            .arg(root().join("bench/predict_bench.py"))
            .arg("prepare")
            .arg(model_dir)
            .arg(test)
            .arg(PREDICT_REVIEWS.to_string())
            .arg(plan.max_length.to_string())
            .arg(seed.to_string())
            .arg(&dir),
        &logs.join("predict-prepare.log"),
    )?;
    let longest = num(&prepared, &["model_max_length"])? as usize;
    let mut settings = vec![(plan.max_length, "fp32"), (plan.max_length, "bf16")];
    if longest > plan.max_length {
        settings.push((longest, "fp32"));
    }
    let mut rows = Vec::new();
    for (max_length, precision) in settings {
        let (ours, hf) = predict_pair(plan, bins, &dir, max_length, precision, logs)?;
        let (texts, same) = (num(&hf, &["texts"])?, num(&hf, &["same_labels"])?);
        let reference_name = format!("transformers pipeline(\"text-classification\"), {precision}, batch_size {}", plan.predict_batch());
        rows.push(Row {
            section: "predict",
            figure: format!("examples/s over {texts} test reviews @{max_length}, {precision} (tokenize + inference); labels the same as the reference's: {same}"),
            unit: "ex/s",
            ours,
            reference_name,
            reference: nums(&hf, "examples_per_s_runs"),
            higher_is_better: true,
            target: if plan.cuda || precision != "fp32" { "" } else { "≥ 2x" }.into(),
        });
    }
    Ok(rows)
}

/// One setting of the predict section: ours `repeats` times, then the reference, which also
/// counts the labels it shares with our output.
fn predict_pair(plan: &Plan, bins: &Path, dir: &Path, max_length: usize, precision: &str, logs: &Path) -> anyhow::Result<(Runs, Value)> {
    let out = dir.join(format!("ours-{max_length}-{precision}.parquet"));
    let mut ours = Runs::default();
    for r in 0..plan.repeats {
        let v = json_of(
            Command::new(bins.join("ft-predict")).arg(dir.join("classifier")).arg(dir.join("reviews.parquet")).arg("--out").arg(&out).args([
                "--device",
                plan.device(),
                "--precision",
                precision,
                "--max-length",
                &max_length.to_string(),
                "--batch-size",
                &plan.predict_batch().to_string(),
                "--json",
            ]),
            &logs.join(format!("predict-ours-{max_length}-{precision}-{r}.log")),
        )?;
        ours.0.push(num(&v, &["examples_per_second"])?);
    }
    let dtype = if precision == "bf16" { "bfloat16" } else { "float32" };
    let hf = json_of(
        Command::new(python())
            .arg(root().join("bench/predict_bench.py"))
            .arg("time")
            .arg(dir)
            .arg(plan.predict_batch().to_string())
            .arg(plan.repeats.to_string())
            .arg(&out)
            .arg(max_length.to_string())
            .arg(dtype)
            .arg(plan.device()),
        &logs.join(format!("predict-hf-{max_length}-{precision}.log")),
    )?;
    Ok((ours, hf))
}

fn noise_verdict(ours: &Runs, reference: &Runs) -> String {
    let (Some((mo, vo)), Some((mr, vr))) = (ours.mean_var(), reference.mean_var()) else {
        return "no verdict (needs --full-runs 2 or more)".into();
    };
    let diff = mo - mr;
    let bound = 2.0 * (vo / ours.0.len() as f64 + vr / reference.0.len() as f64).sqrt();
    let pts = |x: f64| format!("{:.1}", 100.0 * x);
    format!(
        "{} (mean difference {} pts, 2 standard errors {} pts)",
        if diff.abs() <= bound { "yes" } else { "no" },
        pts(diff),
        pts(bound)
    )
}

/// Machine, versions and settings, for the table's header.
fn context(plan: &Plan, a: &Args) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let cmd_out = |c: &mut Command| c.output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    json!({
        "date": cmd_out(Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC")),
        "commit": cmd_out(Command::new("git").current_dir(root()).args(["rev-parse", "--short", "HEAD"])),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "python": cmd_out(Command::new(python()).args(["-c", "import torch, transformers, tokenizers, datasets; print('torch', torch.__version__, '· transformers', transformers.__version__, '· tokenizers', tokenizers.__version__, '· datasets', datasets.__version__)"])),
        "gpu": if plan.cuda { cmd_out(Command::new("nvidia-smi").args(["--query-gpu=name", "--format=csv,noheader"])) } else { String::new() },
        "device": a.device, "model": a.model, "dataset": a.dataset, "subset": plan.subset, "seed": a.seed, "max_length": plan.max_length,
        "batch_size": plan.batch, "learning_rate": plan.lr, "lora_learning_rate": lora::learning_rate(a.lora_learning_rate), "epochs": plan.epochs, "repeats": plan.repeats,
        "sections": format!("{:?}", plan.sections), "full_runs": plan.full_runs, "throughput_steps": {"warmup": plan.warmup_steps, "measured": plan.measured_steps},
    })
}

pub fn bench(a: Args) -> anyhow::Result<()> {
    let mut plan = Plan::new(&a)?;
    std::fs::create_dir_all(&plan.out).with_context(|| format!("creating {}", plan.out.display()))?;
    setup::ensure()?;
    setup::ensure_bench()?;
    plan.resolve_model(&a)?;
    let bins = crate::build_stages(&Stage::ALL)?;
    crate::cargo_build(&["-p", "train", "--bin", "ft-bench", "-p", "predict", "--bin", "ft-predict"])?;
    let _hub = start_hub(&plan.out)?;
    let logs = plan.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut rows = Vec::new();

    if plan.has(Section::Tokenize) {
        // 1. Tokenize: the whole train split.
        eprintln!("== tokenize (whole train split, {} runs per side)", plan.repeats);
        let full = write_pipeline(&a, &plan, "bench-tokenize", Data::Carved)?;
        let dl = artifact_of(&run_stages(&full, &plan, &bins, Some(Stage::Download), &[])?, Stage::Download)?;
        let mut ours = Runs::default();
        let mut tok = PathBuf::new();
        for _ in 0..plan.repeats {
            let o = run_stages(&full, &plan, &bins, Some(Stage::Tokenize), &[Stage::Tokenize])?;
            tok = artifact_of(&o, Stage::Tokenize)?;
            // The stage does every split; its own timing of train (read parquet, encode, write
            // shards), in the manifest's summary, is the part comparable with the references,
            // which encode train only.
            let summary = artifact::Artifact::open(&tok)?.manifest.summary;
            ours.0.push(summary["seconds"]["train"].as_f64().context("the tokenize manifest's summary has no seconds of the train split")?);
        }
        let py = json_of(
            Command::new(python()).arg(root().join("bench/tokenize_bench.py")).arg(&dl).arg(&tok).arg(plan.max_length.to_string()).arg(plan.repeats.to_string()),
            &logs.join("tokenize.log"),
        )?;
        let texts = num(&py, &["texts"])?;
        let same = num(&py, &["identical_ids"])?;
        if same != texts || num(&py, &["ours_texts"])? != texts {
            bail!("token ids differ from encode_batch on {} of {texts} texts; see {}", texts - same, tok.display());
        }
        let figure = format!("seconds for the {texts} train texts @{} (ours: read parquet + encode + write shards), ids identical", plan.max_length);
        for (name, key, target) in [("tokenizers encode_batch", "encode_batch_s", "≥ 1.0x"), ("datasets.map, padding max_length", "datasets_map_s", "≥ 3x")] {
            rows.push(Row {
                section: "tokenize",
                figure: figure.clone(),
                unit: "s",
                ours: ours.clone(),
                reference_name: name.into(),
                reference: nums(&py, key),
                higher_is_better: false,
                target: target.into(),
            });
        }

    }

    // The subset pipeline, for everything after tokenize.
    let mut subset_dir = None;
    // The whole dataset's download artifact (the subset's source).
    let mut whole = None;
    let sub = if plan.subset > 0 {
        let source = write_pipeline(&a, &plan, "bench-source", Data::Source)?;
        let dl = artifact_of(&run_stages(&source, &plan, &bins, Some(Stage::Download), &[])?, Stage::Download)?;
        whole = Some(dl.clone());
        let dir = plan.out.join("subset");
        let counts = json_of(
            Command::new(python()).arg(root().join("bench/subset.py")).arg(dl.join("dataset")).arg(&dir).arg(plan.subset.to_string()).arg(a.seed.to_string()),
            &logs.join("subset.log"),
        )?;
        eprintln!("== subset (datasets' shuffle(seed={}).select): {counts}", a.seed);
        let labels: pipeline::files::Labels = pipeline::files::read(&dl.join("dataset/labels.json"))?;
        let p = write_pipeline(&a, &plan, "bench", Data::Subset { dir: &dir, label_names: &json!(labels.names) })?;
        subset_dir = Some(dir);
        p
    } else {
        write_pipeline(&a, &plan, "bench", Data::Carved)?
    };
    let o = run_stages(&sub, &plan, &bins, Some(Stage::Download), &[])?;
    let sub_dl = artifact_of(&o, Stage::Download)?;
    let whole = whole.unwrap_or_else(|| sub_dl.clone());
    let o = run_stages(&sub, &plan, &bins, Some(Stage::Tokenize), &[])?;
    let sub_tok = artifact_of(&o, Stage::Tokenize)?;
    let model_dir = sub_dl.join("model");
    if plan.has(Section::Train) {
        // 2. Training throughput on fixed steps after warm-up, same token ids.
        eprintln!("== training throughput ({} + {} steps, batch {}, {} runs per side)", plan.warmup_steps, plan.measured_steps, plan.batch, plan.repeats);
        let steps = plan.warmup_steps + plan.measured_steps;
        // (samples/s, peak RSS, real tokens/s) per side.
        let mut hf = (Runs::default(), Runs::default(), Runs::default());
        let mut fixed = (Runs::default(), Runs::default(), Runs::default());
        let mut bucketed = (Runs::default(), Runs::default(), Runs::default());
        // What the model's FLOPs allow at this machine's rate for its matrix products (ft-bench
        // measures it after each fixed-padding run).
        let mut ceiling = Runs::default();
        let meta: pipeline::files::TokenizeMeta = pipeline::files::read(&sub_tok.join("meta.json"))?;
        let mean_tokens = meta.splits.get("train").context("the tokenize artifact has no train split")?.mean_tokens;
        for r in 0..plan.repeats {
            for (pad, acc) in [("max_length", &mut fixed), ("dynamic", &mut bucketed)] {
                let params = plan.out.join(format!("throughput-{pad}.yaml"));
                std::fs::write(
                    &params,
                    format!(
                        "device: {}\nprecision: {}\ninit: random\nmax_steps: {steps}\nbatch_size: {}\npadding: {pad}\nlog_every_steps: 1\nlearning_rate: 2.0e-5\n",
                        plan.device(),
                        plan.precision(),
                        plan.batch
                    ),
                )?;
                let v = json_of(
                    Command::new(crate::target_dir().join("release/ft-bench"))
                        .arg("--model")
                        .arg(&model_dir)
                        .arg("--tokens")
                        .arg(&sub_tok)
                        .arg("--params")
                        .arg(&params)
                        .arg("--out")
                        .arg(plan.out.join(format!("throughput-{pad}")))
                        .arg("--warmup-windows")
                        .arg(plan.warmup_steps.to_string())
                        .args((pad == "max_length").then_some("--ceiling")),
                    &logs.join(format!("ours-throughput-{pad}-{r}.log")),
                )?;
                acc.0 .0.push(num(&v, &["steady_samples_per_s"])?);
                acc.1 .0.push(num(&v, &["peak_rss_mb"])?);
                acc.2 .0.push(num(&v, &["steady_tokens_per_s"])?);
                if pad == "max_length" {
                    ceiling.0.push(num(&v, &["ceiling_samples_per_s"])?);
                }
            }
            let v = json_of(
                Command::new(python())
                    .arg(root().join("bench/hf_train.py"))
                    .arg("throughput")
                    .arg("--config")
                    .arg(model_dir.join("config.json"))
                    .arg("--tokens")
                    .arg(&sub_tok)
                    .arg("--batch")
                    .arg(plan.batch.to_string())
                    .arg("--length")
                    .arg(plan.max_length.to_string())
                    .arg("--steps")
                    .arg(steps.to_string())
                    .arg("--warmup")
                    .arg(plan.warmup_steps.to_string()),
                &logs.join(format!("hf-throughput-{r}.log")),
            )?;
            hf.0 .0.push(num(&v, &["samples_per_s"])?);
            hf.1 .0.push(num(&v, &["peak_rss_mb"])?);
            // Real (unpadded) tokens: the split's mean kept length per sample.
            hf.2 .0.push(num(&v, &["samples_per_s"])? * mean_tokens);
        }
        let hf_name = format!("HF Trainer, {}, SDPA, padding max_length", plan.precision());
        for (what, side) in [("fixed padding", &fixed), ("length-bucketed", &bucketed)] {
            rows.push(Row {
                section: "train",
                figure: format!("samples/s @{}, batch {}, ours {what}", plan.max_length, plan.batch),
                unit: "samples/s",
                ours: side.0.clone(),
                reference_name: hf_name.clone(),
                reference: hf.0.clone(),
                higher_is_better: true,
                target: if !plan.cuda { "≥ 1.2x" } else if what == "fixed padding" { "≥ 1.3x" } else { "" }.into(),
            });
        }
        // The ratio of this row is the most any implementation of the same math could lead HF
        // by here; how close each side comes to the ceiling goes to the log.
        if let (Some(c), Some(o), Some(h)) = (ceiling.median(), fixed.0.median(), hf.0.median()) {
            eprintln!("  ceiling {c:.2} samples/s: ours (fixed padding) at {:.0}% of it, HF Trainer at {:.0}%", 100.0 * o / c, 100.0 * h / c);
        }
        rows.push(Row {
            section: "train",
            figure: format!("ceiling samples/s @{}: model FLOPs at the measured rate of its matrix products, nothing else costing time", plan.max_length),
            unit: "samples/s",
            ours: ceiling,
            reference_name: hf_name.clone(),
            reference: hf.0.clone(),
            higher_is_better: true,
            target: "".into(),
        });
        rows.push(Row {
            section: "train",
            figure: "real tokens/s, ours length-bucketed (HF: samples/s × mean real length)".into(),
            unit: "tokens/s",
            ours: bucketed.2.clone(),
            reference_name: hf_name.clone(),
            reference: hf.2.clone(),
            higher_is_better: true,
            target: "".into(),
        });
        rows.push(Row {
            section: "train",
            figure: "peak RSS MiB (process), ours fixed padding".into(),
            unit: "MiB",
            ours: fixed.1.clone(),
            reference_name: hf_name.clone(),
            reference: hf.1.clone(),
            higher_is_better: false,
            target: "".into(),
        });
    }

    if plan.has(Section::Accuracy) {
        // 3. Time to accuracy, 4. evaluate, 5. cache.
        eprintln!("== time to accuracy ({} epochs on {} reviews, {} runs per side)", plan.epochs, if plan.subset > 0 { plan.subset.to_string() } else { "all".into() }, plan.full_runs);
        let (mut ours_wall, mut ours_acc, mut ours_eval, mut ours_rate) = (Runs::default(), Runs::default(), Runs::default(), Runs::default());
        let (mut hf_wall, mut hf_acc, mut hf_eval, mut hf_rate) = (Runs::default(), Runs::default(), Runs::default(), Runs::default());
        for r in 0..plan.full_runs {
            let o = run_stages(&sub, &plan, &bins, None, &[Stage::Train, Stage::Evaluate])?;
            ours_wall.0.push(seconds_of(&o, Stage::Train) + seconds_of(&o, Stage::Evaluate));
            let m: pipeline::files::EvalMetrics = pipeline::files::read(&artifact_of(&o, Stage::Evaluate)?.join("metrics.json"))?;
            ours_acc.0.push(m.single().map_or(f64::NAN, |s| s.accuracy));
            ours_eval.0.push(m.examples_per_second);
            let summary: pipeline::files::TrainSummary = pipeline::files::read(&artifact_of(&o, Stage::Train)?.join("summary.json"))?;
            ours_rate.0.push(summary.samples_per_second);
            let v = hf_fine_tune(&plan, &model_dir, &sub_tok, plan.repeats, a.seed, &logs.join(format!("hf-imdb-{r}.log")))?;
            hf_rate.0.push(num(&v, &["samples_per_s"])?);
            hf_wall.0.push(num(&v, &["train_seconds"])? + num(&v, &["eval_seconds"])?);
            hf_acc.0.push(num(&v, &["test_accuracy"])?);
            hf_eval.0.extend(nums(&v, "eval_examples_per_s_runs").0);
        }
        for _ in plan.full_runs..plan.repeats {
            let o = run_stages(&sub, &plan, &bins, Some(Stage::Evaluate), &[Stage::Evaluate])?;
            let m: pipeline::files::EvalMetrics = pipeline::files::read(&artifact_of(&o, Stage::Evaluate)?.join("metrics.json"))?;
            ours_eval.0.push(m.examples_per_second);
        }
        let hf_full = format!("HF Trainer, {}, padding {}", plan.precision(), if plan.hf_dynamic() { "dynamic" } else { "max_length" });
        rows.push(Row {
            section: "time to accuracy",
            figure: "training samples/s over the whole run (ours: train stage, validation and checkpoints left out)".into(),
            unit: "samples/s",
            ours: ours_rate,
            reference_name: hf_full.clone(),
            reference: hf_rate,
            higher_is_better: true,
            target: if plan.cuda { "" } else { "≥ 1.2x" }.into(),
        });
        rows.push(Row {
            section: "time to accuracy",
            figure: "test accuracy".into(),
            unit: "%",
            ours: ours_acc,
            reference_name: hf_full.clone(),
            reference: hf_acc,
            higher_is_better: true,
            target: "".into(),
        });
        rows.push(Row {
            section: "time to accuracy",
            figure: "wall seconds, train + evaluate (ours: the stages, with per-epoch validation and checkpoints)".into(),
            unit: "s",
            ours: ours_wall,
            reference_name: hf_full.clone(),
            reference: hf_wall,
            higher_is_better: false,
            target: if plan.cuda { "≥ 2x" } else { "" }.into(),
        });
        rows.push(Row {
            section: "evaluate",
            figure: "test examples/s (ours: model inference inside the evaluate stage)".into(),
            unit: "ex/s",
            ours: ours_eval,
            reference_name: "HF Trainer.evaluate".into(),
            reference: hf_eval,
            higher_is_better: true,
            target: "".into(),
        });
    }

    if plan.has(Section::Tasks) {
        match &subset_dir {
            Some(dir) => rows.extend(task_rows(&a, &plan, &bins, dir, &logs)?),
            None => eprintln!("== no tasks section: it is made from a subset (--subset N, N > 0)"),
        }
    }

    if plan.has(Section::Lora) {
        if plan.subset > 0 {
            rows.extend(lora::rows(&plan, a.seed, lora::learning_rate(a.lora_learning_rate), &model_dir, &sub_tok, &logs)?);
        } else {
            eprintln!("== no lora section: it runs on a subset (--subset N, N > 0)");
        }
    }

    if plan.has(Section::Predict) {
        rows.extend(predict_rows(&plan, &bins, &model_dir, &whole.join("dataset/test.parquet"), a.seed, &logs)?);
    }

    if plan.has(Section::Remote) {
        rows.extend(remote::rows(&plan, &bins, &logs)?);
    }

    if plan.has(Section::Distributed) {
        rows.extend(distributed::rows(&plan, &sub, &bins)?);
    }

    if plan.has(Section::Scale) {
        rows.extend(scale::rows(&a, &plan, &bins, &whole, &logs)?);
    }

    if plan.has(Section::Cache) {
        run_stages(&sub, &plan, &bins, None, &[])?;
        eprintln!("== cache: no-change rerun of the whole pipeline ({} runs)", plan.repeats);
        let mut cache = Runs::default();
        for _ in 0..plan.repeats {
            let t = Instant::now();
            let out = Command::new(std::env::current_exe()?)
                .arg("run")
                .arg(plan.out.join("bench.yaml"))
                .arg("--bin-dir")
                .arg(&bins)
                .arg("--store")
                .arg(plan.out.join("store"))
                .arg("--json")
                .stderr(Stdio::null())
                .output()?;
            cache.0.push(t.elapsed().as_secs_f64());
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() || text.contains("\"cached\":false") {
                bail!("the no-change rerun was not all cache:\n{text}");
            }
        }
        rows.push(Row {
            section: "cache",
            figure: "no-change rerun of the pipeline, seconds (`cargo xtask run --bin-dir`)".into(),
            unit: "s",
            ours: cache,
            reference_name: "— (a notebook reruns everything)".into(),
            reference: Runs::default(),
            higher_is_better: false,
            target: "< 1 s".into(),
        });

    }

    let ctx = context(&plan, &a);
    let table = render(&ctx, &rows);
    println!("{table}");
    std::fs::write(plan.out.join("bench.md"), &table)?;
    let j = json!({"context": ctx, "rows": rows.iter().map(Row::json).collect::<Vec<_>>()});
    std::fs::write(plan.out.join("bench.json"), serde_json::to_vec_pretty(&j)?)?;
    eprintln!("wrote {} and {}", plan.out.join("bench.md").display(), plan.out.join("bench.json").display());
    Ok(())
}

fn render(ctx: &Value, rows: &[Row]) -> String {
    let s = |k: &str| ctx[k].as_str().unwrap_or("").to_string();
    let mut t = format!(
        "Benchmark {} · commit {} · {} ({} cores){} · {}\n\n{} on {} · train subset {} (datasets shuffle, seed {}; 0: all) · max_length {} · batch {} · {} repeats, median (min–max)\n\n",
        s("date"),
        s("commit"),
        s("cpu"),
        ctx["cores"],
        if s("gpu").is_empty() { String::new() } else { format!(" · {}", s("gpu")) },
        s("python"),
        s("model"),
        s("dataset"),
        ctx["subset"],
        ctx["seed"],
        ctx["max_length"],
        ctx["batch_size"],
        ctx["repeats"],
    );
    t.push_str("| stage | figure | ours | reference | reference side | ratio (>1: ours better) | target |\n|---|---|---|---|---|---|---|\n");
    for r in rows {
        let ratio = r.ratio().map(|x| format!("{x:.2}x")).unwrap_or_else(|| "—".into());
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {ratio} | {} |\n",
            r.section,
            r.figure,
            r.ours.show(r.unit),
            r.reference.show(r.unit),
            r.reference_name,
            r.target
        ));
    }
    t
}
