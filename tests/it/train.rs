//! Training on CPU: a tiny random BERT learns a separable task; interrupted and resumed runs end
//! bit-identical to uninterrupted ones; bf16 compute works; bad settings are refused.

use std::path::Path;

use pipeline::TrainParams;
use shards::ShardWriter;

/// A separable task: label 1 iff the text has token 10, else token 11 (plus noise tokens).
fn synthetic(dir: &Path, n: usize) {
    for (split, count) in [("train", n), ("validation", n / 4)] {
        let mut w = ShardWriter::new(dir, split, 63, 1 << 20);
        for i in 0..count {
            let label = (i % 2) as i32;
            let mut ids = vec![2u32];
            for j in 0..(4 + i % 7) {
                ids.push(20 + ((i * 7 + j * 13) % 40) as u32);
            }
            ids.insert(1 + (i % 3), if label == 1 { 10 } else { 11 });
            ids.push(3);
            w.push(&ids, label, ids.len() as u32).unwrap();
        }
        w.finish().unwrap();
    }
    std::fs::write(dir.join("labels.json"), r#"{"task": "single_label", "names": ["neg", "pos"]}"#).unwrap();

}

/// The synthetic task with `n` train examples in a fresh directory: (directory, train, validation).
pub(crate) fn task(n: usize) -> (tempfile::TempDir, shards::Split, shards::Split) {
    let tmp = tempfile::tempdir().unwrap();
    synthetic(tmp.path(), n);
    let train = shards::Split::open(tmp.path(), "train").unwrap();
    let val = shards::Split::open(tmp.path(), "validation").unwrap();
    (tmp, train, val)
}

pub(crate) fn params(yaml: &str) -> TrainParams {
    serde_yaml_ng::from_str(yaml).unwrap()
}

pub(crate) fn job<'a>(p: &'a TrainParams, m: &'a mut model::Model, train: &'a shards::Split, val: &'a shards::Split, work: &Path, stop: Option<u64>) -> train::trainer::Job<'a> {
    train::trainer::Job {
        params: p,
        model: m,
        train,
        val: Some(val),
        pad_id: 0,
        max_length: 16,
        device: tch::Device::Cpu,
        work: work.to_path_buf(),
        stop_after: stop,
        positive_class: Some(1),
        names: vec!["neg".into(), "pos".into()],
        progress: false,
        objective: cross_entropy(),
        select: p.check_task(pipeline::Task::SingleLabel, Some(2)).unwrap(),
        group: None,
    }
}

/// Unweighted cross-entropy, as the train stage builds it for single-label tasks.
fn cross_entropy() -> &'static model::loss::Objective {
    Box::leak(Box::new(model::loss::Objective::single_label(None, 0.0, tch::Device::Cpu)))
}

#[test]
fn tiny_bert_learns_a_separable_task() {
    let _rng = tests::torch_rng();
    let (tmp, train_s, val) = task(400);
    let p = params("device: cpu\nepochs: 6\nlearning_rate: 2.0e-3\nbatch_size: 16\nwarmup_ratio: 0.1\nlog_every_steps: 5\n");
    let mut m = model::Model::random(model::BertConfig::tiny(64), 2, tch::Device::Cpu, 1).unwrap();
    let t = std::time::Instant::now();
    let out = train::trainer::run(job(&p, &mut m, &train_s, &val, &tmp.path().join("w"), None)).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let ev = train::trainer::evaluate(&m, cross_entropy(), &train_s, 64, 0, tch::Device::Cpu, Some((1, "pos"))).unwrap();
    assert!(ev.accuracy.unwrap() >= 0.99, "train accuracy {ev:?}");
    assert!(out.last_eval.unwrap().accuracy.unwrap() >= 0.99);
    // The loss went down: the last logged mean is far below the first.
    let log = std::fs::read_to_string(tmp.path().join("w/log.jsonl")).unwrap();
    let losses: Vec<f64> = log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64()).collect();
    assert!(losses.len() > 5 && losses.last().unwrap() < &(losses[0] * 0.2), "{losses:?}");
    assert!(secs < 60.0, "took {secs:.1} s");
}

#[test]
fn resumed_run_is_bit_identical() {
    resumes_bit_identically(|_| {}, model::BertConfig::tiny(64).into(), None);
}

#[test]
fn a_run_killed_while_replacing_its_checkpoint_resumes_from_the_previous_one() {
    // Between the two renames of save_checkpoint only `checkpoint.old` exists.
    resumes_bit_identically(|work| std::fs::rename(work.join("checkpoint"), work.join("checkpoint.old")).unwrap(), model::BertConfig::tiny(64).into(), None);
}

/// A tiny random model of another family for the synthetic task (vocabulary 64, dropout on;
/// ModernBERT with a window of 2 positions each way, shorter than the texts).
fn family(model_type: &str) -> model::Config {
    let c = match model_type {
        "roberta" => serde_json::json!({"model_type": "roberta", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 40, "type_vocab_size": 1}),
        "distilbert" => serde_json::json!({"model_type": "distilbert", "vocab_size": 64, "dim": 32, "n_layers": 2, "n_heads": 2,
            "hidden_dim": 64, "max_position_embeddings": 40}),
        _ => serde_json::json!({"model_type": "modernbert", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 3,
            "num_attention_heads": 2, "intermediate_size": 48, "local_attention": 4, "global_attn_every_n_layers": 2,
            "pad_token_id": 0, "attention_dropout": 0.1, "mlp_dropout": 0.1, "embedding_dropout": 0.1}),
    };
    model::Config::from_json(c).unwrap()
}

/// Every family learns the separable task (train accuracy at least 99%) and resumes bit for bit.
#[test]
fn every_family_learns_and_resumes_bit_identically() {
    for name in ["roberta", "distilbert", "modernbert"] {
        {
            let _rng = tests::torch_rng();
            let (tmp, train_s, val) = task(400);
            let p = params("device: cpu\nepochs: 6\nlearning_rate: 2.0e-3\nbatch_size: 16\nwarmup_ratio: 0.1\nlog_every_steps: 5\n");
            let mut m = model::Model::random(family(name), 2, tch::Device::Cpu, 1).unwrap();
            let out = train::trainer::run(job(&p, &mut m, &train_s, &val, &tmp.path().join("w"), None)).unwrap();
            let ev = train::trainer::evaluate(&m, cross_entropy(), &train_s, 64, 0, tch::Device::Cpu, Some((1, "pos"))).unwrap();
            assert!(ev.accuracy.unwrap() >= 0.99, "{name}: train accuracy {ev:?}");
            assert!(out.last_eval.unwrap().accuracy.unwrap() >= 0.99, "{name}");
        }
        resumes_bit_identically(|_| {}, family(name), None);
    }
}

/// LoRA: every family resumes bit for bit from a checkpoint that holds only the adapters, the
/// head and their moments (the frozen base comes from the model again), and the base is
/// bit-identical after training.
#[test]
fn every_family_resumes_bit_identically_with_lora() {
    let lora: pipeline::LoraParams = serde_yaml_ng::from_str("{r: 4, dropout: 0.1}").unwrap();
    for name in ["bert", "roberta", "distilbert", "modernbert"] {
        let config = if name == "bert" { model::BertConfig::tiny(64).into() } else { family(name) };
        resumes_bit_identically(|_| {}, config, Some(&lora));
    }
}

/// A run interrupted after 5 steps, its work directory then changed by `cut`, and resumed in a new
/// process ends as the uninterrupted run does: the same weights bit for bit, the same log.
fn resumes_bit_identically(cut: impl Fn(&Path), config: model::Config, lora: Option<&pipeline::LoraParams>) {
    let _rng = tests::torch_rng();
    let (tmp, train_s, val) = task(200);
    let p = params("device: cpu\nepochs: 3\nlearning_rate: 1.0e-3\nbatch_size: 16\nwarmup_ratio: 0.2\nlog_every_steps: 4\ngrad_accum: 2\n");
    let fresh = || model::Model::new(config.clone(), 2, lora, tch::Device::Cpu, 7).unwrap();
    let mut a = fresh();
    let full = train::trainer::run(job(&p, &mut a, &train_s, &val, &tmp.path().join("a"), None)).unwrap();
    let mut b = fresh();
    let part = train::trainer::run(job(&p, &mut b, &train_s, &val, &tmp.path().join("b"), Some(5))).unwrap();
    assert!(part.interrupted && part.state.step == 5);
    cut(&tmp.path().join("b"));
    // A new process would start from fresh weights and find the checkpoint.
    let mut c = fresh();
    let rest = train::trainer::run(job(&p, &mut c, &train_s, &val, &tmp.path().join("b"), None)).unwrap();
    assert_eq!(rest.resumed_from, Some(5), "a run from scratch would end with the same weights too");
    assert_eq!(full.resumed_from, None);
    assert_eq!(rest.state.step, full.state.step);
    assert!(full.state.step > 5);
    for (x, y) in a.params.tensors.iter().zip(&c.params.tensors) {
        assert!(x.equal(y), "{}: weights differ after resume", config.model_type);
    }
    if lora.is_some() {
        let checkpoint = tch::Tensor::read_safetensors(tmp.path().join("a/checkpoint/weights.safetensors")).unwrap();
        assert_eq!(checkpoint.len(), (0..a.params.len()).filter(|&i| a.params.trainable(i)).count(), "the checkpoint holds what trains");
        let start = fresh();
        for i in 0..a.params.len() {
            let same = a.params.tensors[i].equal(&start.params.tensors[i]);
            assert_eq!(same, !a.params.trainable(i), "{}: {} frozen iff unchanged", config.model_type, a.params.names[i]);
        }
    }
    let strip = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p).unwrap().lines().map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            // Window means of the loss depend on where a window started; per-step figures do not.
            for k in ["samples", "samples_per_s", "tokens_per_s", "loss"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        }).collect()
    };
    assert_eq!(strip(&tmp.path().join("a/log.jsonl")), strip(&tmp.path().join("b/log.jsonl")), "the log replays too");
}

#[test]
fn checkpoint_copies_stay_as_they_were_taken() {
    // Checkpoints are written on a background thread while training goes on: what it writes must
    // be a copy, also on CPU, where moving a tensor to the host would share its memory.
    let _rng = tests::torch_rng();
    let m = model::Model::random(model::BertConfig::tiny(64), 2, tch::Device::Cpu, 1).unwrap();
    let opt = train::optim::AdamW::new(&m.params, 0.01);
    let weights = m.params.host_copy(tch::Kind::Float);
    let moments = opt.named_state(&m.params);
    tch::no_grad(|| {
        let _ = m.params.flat().shallow_clone().fill_(5.0);
        let _ = opt.m.shallow_clone().fill_(5.0);
        let _ = opt.v.shallow_clone().fill_(5.0);
    });
    assert_eq!(weights.len(), m.params.len());
    assert!(weights.iter().all(|(_, t)| t.max().double_value(&[]) < 5.0), "a weight copy followed the parameters");
    assert!(moments.iter().all(|(_, t)| t.abs().max().double_value(&[]) == 0.0), "a moment copy followed the optimizer");
}

#[test]
fn a_failed_checkpoint_write_fails_the_run() {
    let _rng = tests::torch_rng();
    let (tmp, train_s, val) = task(64);
    let p = params("device: cpu\nepochs: 2\nlearning_rate: 1.0e-3\nbatch_size: 16\n");
    let work = tmp.path().join("w");
    std::fs::create_dir_all(&work).unwrap();
    // A file where the writer's temporary checkpoint directory goes.
    std::fs::write(work.join("checkpoint.tmp"), b"in the way").unwrap();
    let mut m = model::Model::random(model::BertConfig::tiny(64), 2, tch::Device::Cpu, 1).unwrap();
    let e = format!("{:#}", train::trainer::run(job(&p, &mut m, &train_s, &val, &work, None)).unwrap_err());
    assert!(e.contains("checkpoint.tmp"), "{e}");
    assert!(!work.join("checkpoint").exists(), "no checkpoint was published");
}

#[test]
fn bf16_compute_trains_on_cpu() {
    let _rng = tests::torch_rng();
    let (tmp, train_s, val) = task(200);
    let p = params("device: cpu\nprecision: bf16\nepochs: 6\nlearning_rate: 2.0e-3\nbatch_size: 16\n");
    let mut m = model::Model::random(model::BertConfig::tiny(64), 2, tch::Device::Cpu, 1).unwrap();
    m.compute = train::compute_kind(p.precision, tch::Device::Cpu);
    assert_eq!(m.compute, tch::Kind::BFloat16);
    train::trainer::run(job(&p, &mut m, &train_s, &val, &tmp.path().join("w"), None)).unwrap();
    assert_eq!(m.params.tensors[0].kind(), tch::Kind::Float, "master weights stay fp32");
    let ev = train::trainer::evaluate(&m, cross_entropy(), &val, 64, 0, tch::Device::Cpu, Some((1, "pos"))).unwrap();
    assert!(ev.accuracy.unwrap() >= 0.95, "{ev:?}");
}

/// The error of a run that must fail: `yaml` on the synthetic task of 100 examples, with a tiny
/// random model of `vocab` tokens.
fn failed_run(yaml: &str, vocab: i64) -> String {
    let (tmp, train_s, val) = task(100);
    let p = params(yaml);
    let mut m = model::Model::random(model::BertConfig::tiny(vocab), 2, tch::Device::Cpu, 1).unwrap();
    format!("{:#}", train::trainer::run(job(&p, &mut m, &train_s, &val, &tmp.path().join("w"), None)).unwrap_err())
}

#[test]
fn a_diverging_run_stops_and_names_the_step() {
    let _rng = tests::torch_rng();
    let e = failed_run("device: cpu\nepochs: 2\nlearning_rate: 1.0e+30\nmax_grad_norm: 0\nbatch_size: 16\nlog_every_steps: 1\n", 64);
    assert!(e.contains("loss became") && e.contains("at step"), "{e}");
}

/// A libtorch error inside a step (here: token ids beyond the model's vocabulary) ends the run
/// with the step, the batch shape and libtorch's message, instead of a panic.
#[test]
fn a_failing_step_is_an_error_naming_the_step_and_batch() {
    let _rng = tests::torch_rng();
    let e = failed_run("device: cpu\nepochs: 1\nbatch_size: 16\n", 32);
    assert!(e.starts_with("training step 1 failed at a batch of 16 examples ×"), "{e}");
    assert!(e.contains("index out of range"), "{e}");
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error() {
    if tch::Cuda::is_available() {
        return tests::skip("cuda_without_a_gpu_is_a_clear_error", "this machine has a GPU", false);
    }
    let e = model::device::resolve("cuda").unwrap_err().to_string();
    assert!(e.contains("no usable GPU") && e.contains("auto"), "{e}");
    assert!(model::device::resolve("tpu").is_err());
    assert_eq!(model::device::resolve("auto").unwrap(), tch::Device::Cpu);
}

#[test]
fn early_stopping_ends_training_when_validation_stalls() {
    let _rng = tests::torch_rng();
    let (tmp, train_s, val) = task(100);
    // A learning rate this small never changes validation accuracy: no improvement after the
    // first evaluation, so patience 1 stops after the second epoch of ten.
    let p = params("device: cpu\nepochs: 10\nlearning_rate: 1.0e-12\nbatch_size: 16\nearly_stopping_patience: 1\n");
    let mut m = model::Model::random(model::BertConfig::tiny(64), 2, tch::Device::Cpu, 1).unwrap();
    let out = train::trainer::run(job(&p, &mut m, &train_s, &val, &tmp.path().join("w"), None)).unwrap();
    assert!(out.state.done);
    assert_eq!(out.state.epoch, 2, "stopped after two validations");
    assert!(out.state.step < out.total_steps);
    assert_eq!(out.state.best_step, Some(out.state.step / 2));
}

/// What the train stage reads, for the synthetic task of 64 examples (16 to validate on): the
/// tokenize artifact (shards and meta.json) and a model directory with a tiny BERT's config;
/// (directory, model directory, output directory).
fn stage_inputs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let (tmp, _, _) = task(64);
    let meta = pipeline::files::TokenizeMeta {
        max_length: 16,
        truncation: pipeline::Truncation::Head,
        head_tokens: 0,
        vocab_size: 64,
        max_id: 63,
        pad_id: 0,
        cls_id: Some(2),
        sep_id: Some(3),
        unk_id: None,
        tokenizer_source: "synthetic".into(),
        pair_truncation: None,
        splits: Default::default(),
    };
    pipeline::files::write(&tmp.path().join("meta.json"), &meta).unwrap();
    let model_dir = tmp.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("config.json"), serde_json::to_vec(&model::BertConfig::tiny(64)).unwrap()).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    (tmp, model_dir, out)
}

#[test]
fn the_train_stage_selects_by_f1_of_the_configured_positive_class() {
    let _rng = tests::torch_rng();
    let (tmp, model_dir, out) = stage_inputs();
    let tokens = tmp.path();
    let p = params("device: cpu\ninit: random\nmax_steps: 2\nbatch_size: 16\nselect_metric: f1\npositive_class: neg\n");
    let summary = train::run(&p, &model_dir, tokens, &out, &tmp.path().join("work"), None).unwrap();
    let best = summary.best_validation.unwrap();
    assert_eq!(best.positive_class.as_deref(), Some("neg"), "F1 of the class the pipeline names, not class 1");
    let hp: pipeline::files::Hparams = pipeline::files::read(&out.join("hparams.json")).unwrap();
    assert_eq!(hp.positive_class.as_deref(), Some("neg"));
    let e = format!("{:#}", train::run(&params("device: cpu\ninit: random\nmax_steps: 2\npositive_class: maybe\n"), &model_dir, tokens, &out, &tmp.path().join("w2"), None).unwrap_err());
    assert!(e.contains("train.positive_class `maybe`") && e.contains("neg"), "{e}");
}

#[test]
fn max_validation_examples_validates_on_a_seeded_subset() {
    let _rng = tests::torch_rng();
    let (tmp, model_dir, out) = stage_inputs();
    let run = |extra: &str, work: &str| {
        let p = params(&format!("device: cpu\ninit: random\nmax_steps: 2\nbatch_size: 16\n{extra}"));
        train::run(&p, &model_dir, tmp.path(), &out, &tmp.path().join(work), None).unwrap().best_validation.unwrap()
    };
    let (a, b) = (run("max_validation_examples: 5\nseed: 1\n", "a"), run("max_validation_examples: 5\nseed: 1\n", "b"));
    assert_eq!(a.examples, 5);
    assert_eq!((a.loss, a.accuracy), (b.loss, b.accuracy), "the same subset and weights, the same figures");
    assert_eq!(run("max_validation_examples: 100\n", "c").examples, 16, "a limit above the split's size validates on all of it");
    let e = format!("{:#}", train::validate(&params("max_validation_examples: 0\n")).unwrap_err());
    assert!(e.contains("train.max_validation_examples"), "{e}");
}

/// RoBERTa's positions start after pad_token_id: a max_length that fits max_position_embeddings
/// but not the positions after the pad is refused before any training, naming the limit.
#[test]
fn a_max_length_beyond_the_familys_positions_is_refused_before_training() {
    let _rng = tests::torch_rng();
    let (tmp, _, _) = task(16);
    let meta = pipeline::files::TokenizeMeta {
        max_length: 64,
        truncation: pipeline::Truncation::Head,
        head_tokens: 0,
        vocab_size: 64,
        max_id: 63,
        pad_id: 1,
        cls_id: Some(0),
        sep_id: Some(2),
        unk_id: None,
        tokenizer_source: "synthetic".into(),
        pair_truncation: None,
        splits: Default::default(),
    };
    pipeline::files::write(&tmp.path().join("meta.json"), &meta).unwrap();
    let model_dir = tmp.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    let config = serde_json::json!({"model_type": "roberta", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64, "pad_token_id": 1});
    std::fs::write(model_dir.join("config.json"), config.to_string()).unwrap();
    let p = params("device: cpu\ninit: random\nmax_steps: 2\n");
    let e = format!("{:#}", train::run(&p, &model_dir, tmp.path(), &tmp.path().join("out"), &tmp.path().join("work"), None).unwrap_err());
    assert!(e.contains("tokenize.max_length 64 exceeds the 62 positions of roberta") && e.contains("config.json"), "{e}");
    assert!(!tmp.path().join("work").exists(), "nothing ran");
}

/// `class_weights: balanced` is scikit-learn's `n / (classes × count)` for single-label and
/// `negatives / positives` per label for multi-label; a class train never has is named.
#[test]
fn balanced_class_weights_follow_scikit_learn_and_name_an_absent_class() {
    use pipeline::files::Labels;
    use pipeline::Task;
    let tmp = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::new(tmp.path(), "single", 63, 1 << 20);
    for l in [0, 0, 0, 1] {
        w.push(&[2, 5, 3], l, 3).unwrap();
    }
    w.finish().unwrap();
    let mut w = ShardWriter::new(tmp.path(), "multi", 63, 1 << 20).labels(shards::LabelKind::MultiHot { labels: 2 });
    for set in [&[0u32][..], &[0, 1], &[], &[0]] {
        w.push_example(&[2, 5, 3], None, shards::Label::Set(set), 3).unwrap();
    }
    w.finish().unwrap();
    let p = params("class_weights: balanced");
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let single = shards::Split::open(tmp.path(), "single").unwrap();
    let two = Labels { task: Task::SingleLabel, names: names(&["a", "b"]) };
    assert_eq!(train::class_weights(&p, &two, &single).unwrap(), Some(vec![4.0 / 6.0, 2.0]));
    let three = Labels { task: Task::SingleLabel, names: names(&["a", "b", "c"]) };
    let e = train::class_weights(&p, &three, &single).unwrap_err().to_string();
    assert!(e.contains("class `c` never occurs in the 4 train examples") && e.contains("list the weights"), "{e}");
    let multi = shards::Split::open(tmp.path(), "multi").unwrap();
    let labels = Labels { task: Task::MultiLabel, names: names(&["x", "y"]) };
    assert_eq!(train::class_weights(&p, &labels, &multi).unwrap(), Some(vec![1.0 / 3.0, 3.0]));
    assert_eq!(train::class_weights(&params("class_weights: [1.0, 2.5]"), &labels, &multi).unwrap(), Some(vec![1.0, 2.5]));
}
