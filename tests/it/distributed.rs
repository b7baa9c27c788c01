//! Data-parallel training on the CPU backend (Gloo over 127.0.0.1): two ranks train what one
//! process trains, under the same key (also with class weights, LoRA, gradient accumulation, and
//! ModernBERT in token-budget batches); a killed rank fails the run, nothing is published, and a
//! rerun resumes from the last checkpoint.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::repo;

/// The tiny BERT with its dropouts at 0, so two ranks (which draw their own masks) and one
/// process compute the same function.
fn model_without_dropout(dir: &Path) -> PathBuf {
    let dst = model_copy(dir, "tiny-bert");
    let config = std::fs::read_to_string(dst.join("config.json")).unwrap();
    let config = config.replace("\"hidden_dropout_prob\": 0.1", "\"hidden_dropout_prob\": 0.0").replace("\"attention_probs_dropout_prob\": 0.1", "\"attention_probs_dropout_prob\": 0.0");
    assert!(config.contains("\"hidden_dropout_prob\": 0.0") && config.contains("\"attention_probs_dropout_prob\": 0.0"), "{config}");
    std::fs::write(dst.join("config.json"), config).unwrap();
    dst
}

/// A copy of fixture model `name` (`tiny-bert`, `families/modernbert`) in `dir` (the
/// pipelines below name it by a path outside fixtures).
fn model_copy(dir: &Path, name: &str) -> PathBuf {
    let src = tests::fixtures().join(name);
    let dst = dir.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

/// The smoke pipeline on `model`, with an odd batch (15: ranks of 7 and 8 rows, and a last
/// batch of another size), validation every 4 steps, and `train_extra` appended to `train:`.
fn pipeline(store: &Path, model: &Path, epochs: u32, train_extra: &str) -> pipeline::Pipeline {
    pipeline_from("smoke.yaml", store, model, epochs, train_extra)
}

/// [`pipeline`] from `pipelines/<file>` (a smoke pipeline on the tiny BERT).
fn pipeline_from(file: &str, store: &Path, model: &Path, epochs: u32, train_extra: &str) -> pipeline::Pipeline {
    let text = std::fs::read_to_string(repo().join("pipelines").join(file)).unwrap();
    let text: String = text
        .replace("tests/fixtures/tiny-bert", &model.display().to_string())
        .replace("tests/fixtures", &tests::fixtures().display().to_string())
        .lines()
        .map(|l| match l {
            _ if l.starts_with("name: ") => format!("name: ddp\nstore: {}\n", store.display()),
            _ if l.starts_with("  epochs: ") => format!("  epochs: {epochs}\n  eval_every_steps: 4\n{train_extra}"),
            _ if l.starts_with("  batch_size: ") => "  batch_size: 15\n".into(),
            _ => format!("{l}\n"),
        })
        .collect();
    assert!(text.contains("batch_size: 15") && text.contains("eval_every_steps: 4") && text.contains("store: "), "{file} changed: {text}");
    pipeline::parse(Path::new("ddp.yaml"), &text).unwrap_or_else(|e| panic!("{e}"))
}

fn run(p: &pipeline::Pipeline, ranks: usize) -> Vec<runner::StageOutcome> {
    let opts = runner::RunOptions { bin_dir: tests::release_dir(), nproc_per_node: ranks, ..Default::default() };
    runner::run(p, &opts, |_| {}).unwrap_or_else(|e| panic!("{e:#}"))
}

fn tensors(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut t = tch::Tensor::read_safetensors(path).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

fn losses(train: &Path) -> Vec<f64> {
    std::fs::read_to_string(train.join("log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<pipeline::files::LogLine>(l).ok())
        .filter_map(|l| match l {
            pipeline::files::LogLine::Train { loss, .. } => Some(loss),
            _ => None,
        })
        .collect()
}

/// Asserts that train artifacts `a` (one process) and `b` (two ranks) hold the same weights,
/// logged losses, steps and best validation; returns their summaries.
fn assert_trained_alike(a: &Path, b: &Path, what: &str) -> (pipeline::files::TrainSummary, pipeline::files::TrainSummary) {
    let (ta, tb) = (tensors(&a.join("final.safetensors")), tensors(&b.join("final.safetensors")));
    assert_eq!(ta.len(), tb.len());
    let mut worst = 0f64;
    for ((na, xa), (nb, xb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        worst = worst.max(f64::try_from((xa - xb).abs().max()).unwrap());
    }
    eprintln!("{what}: largest |weight difference|, 1 process vs 2 ranks: {worst:.3e}");
    assert!(worst < 1e-5, "{what}: weights differ by {worst}");
    let (la, lb) = (losses(a), losses(b));
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() < 1e-5, "{what}: logged losses {la:?} vs {lb:?}");
    }
    let (sa, sb): (pipeline::files::TrainSummary, pipeline::files::TrainSummary) = (pipeline::files::read(&a.join("summary.json")).unwrap(), pipeline::files::read(&b.join("summary.json")).unwrap());
    assert_eq!((sa.steps, sa.samples, sa.best_step), (sb.steps, sb.samples, sb.best_step));
    let (va, vb) = (sa.best_validation.clone().unwrap(), sb.best_validation.clone().unwrap());
    assert_eq!((va.examples, va.accuracy), (vb.examples, vb.accuracy));
    assert!((va.loss - vb.loss).abs() < 1e-5, "{what}: validation loss {} vs {}", va.loss, vb.loss);
    (sa, sb)
}

#[test]
fn two_cpu_ranks_train_what_one_process_trains_under_the_same_key() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_without_dropout(tmp.path());
    let (one_store, two_store) = (tmp.path().join("one"), tmp.path().join("two"));
    let one = run(&pipeline(&one_store, &model, 2, ""), 1);
    let two = run(&pipeline(&two_store, &model, 2, ""), 2);
    let (a, b) = (one[2].artifact.clone().unwrap(), two[2].artifact.clone().unwrap());
    let (sa, sb) = assert_trained_alike(&a, &b, "2 epochs (56 steps)");
    assert_eq!(sa.distributed, None);
    let d = sb.distributed.unwrap();
    assert_eq!((d.world_size, d.backend.as_str(), d.launcher.as_str()), (2, "gloo", "ft"));
    // The key does not depend on the number of ranks: two ranks find one process's artifact.
    let again = run(&pipeline(&one_store, &model, 2, ""), 2);
    assert!(again[2].cached, "train reran with 2 ranks: {:?}", again[2]);
    assert_eq!(again[2].key, one[2].key);
}

/// With class weights a mean loss divides by the batch's summed weights, not its rows: each
/// rank's share of the loss is its rows' weight over the whole batch's, which differs from its
/// share of the rows wherever the ranks' halves hold other mixes of the classes.
#[test]
fn two_cpu_ranks_with_class_weights_train_what_one_process_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_without_dropout(tmp.path());
    let weights = "  class_weights: [1.0, 4.0]\n";
    let one = run(&pipeline(&tmp.path().join("one"), &model, 1, weights), 1);
    let two = run(&pipeline(&tmp.path().join("two"), &model, 1, weights), 2);
    assert_trained_alike(&one[2].artifact.clone().unwrap(), &two[2].artifact.clone().unwrap(), "class weights [1, 4], 1 epoch");
}

/// LoRA (the frozen base out of the all-reduce), gradient accumulation, another family
/// (ModernBERT, its rows packed), batches by a token budget, and the other task kinds (their
/// loss denominators: rows × labels, scores), each on two ranks as in one process.
#[test]
fn two_cpu_ranks_train_lora_modernbert_token_budgets_and_other_tasks_as_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let bert = model_without_dropout(tmp.path());
    // Its fixture has every dropout at 0.
    let modernbert = model_copy(tmp.path(), "families/modernbert");
    let cases = [
        ("LoRA, grad_accum 2", "smoke.yaml", &bert, "  lora:\n    dropout: 0.0\n  grad_accum: 2\n"),
        ("ModernBERT, batch_tokens 200", "smoke.yaml", &modernbert, "  batch_tokens: 200\n"),
        ("multi-label, balanced pos_weight", "smoke-multilabel.yaml", &bert, ""),
        ("regression of pairs", "smoke-regression.yaml", &bert, ""),
    ];
    for (i, (what, file, model, extra)) in cases.into_iter().enumerate() {
        let one = run(&pipeline_from(file, &tmp.path().join(format!("one-{i}")), model, 1, extra), 1);
        let two = run(&pipeline_from(file, &tmp.path().join(format!("two-{i}")), model, 1, extra), 2);
        let (a, b) = (one[2].artifact.clone().unwrap(), two[2].artifact.clone().unwrap());
        assert_trained_alike(&a, &b, what);
        if i == 0 {
            // final.safetensors is the merged model; the adapters are beside it.
            assert!(b.join("final.adapter.safetensors").exists(), "{what}: no adapters in {}", b.display());
        }
    }
}

/// Starts `ft-train` as rank `rank` of 2 on the stage's inputs, as a launcher would.
fn rank(rank: usize, port: u16, params: &Path, store: &Path, inputs: &[String]) -> std::process::Child {
    let mut cmd = Command::new(tests::release_bin("ft-train"));
    cmd.arg("--params").arg(params).arg("--store").arg(store).arg("--report").arg(store.join(format!("report-{rank}.json")));
    for i in inputs {
        cmd.arg("--input").arg(i);
    }
    cmd.env("RANK", rank.to_string()).env("WORLD_SIZE", "2").env("MASTER_ADDR", "127.0.0.1").env("MASTER_PORT", port.to_string());
    cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_killed_rank_fails_every_rank_publishes_nothing_and_a_rerun_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let model = model_without_dropout(tmp.path());
    // Download and tokenize through the runner; train by hand, two ranks started as torchrun would.
    let p = pipeline(&store, &model, 40, "  distributed:\n    timeout_s: 20\n");
    let upstream = pipeline::Pipeline { stages: p.stages.iter().filter(|s| matches!(s.stage, pipeline::Stage::Download | pipeline::Stage::Tokenize)).cloned().collect(), ..p.clone() };
    let up = run(&upstream, 1);
    let inputs = vec![format!("download={}", up[0].artifact.clone().unwrap().display()), format!("tokenize={}", up[1].artifact.clone().unwrap().display())];
    let params = tmp.path().join("train.json");
    std::fs::write(&params, serde_json::to_vec(&p.section(pipeline::Stage::Train).unwrap().params).unwrap()).unwrap();
    let port = free_port();
    let mut r0 = rank(0, port, &params, &store, &inputs);
    let mut r1 = rank(1, port, &params, &store, &inputs);
    // Kill rank 1 once rank 0 has written a checkpoint.
    let t0 = Instant::now();
    let checkpoint = loop {
        let found = std::fs::read_dir(store.join(".checkpoints")).ok().and_then(|d| d.flatten().map(|e| e.path().join("checkpoint")).find(|c| c.join("state.json").exists()));
        if let Some(c) = found {
            break c;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint after 2 minutes");
        assert!(r0.try_wait().unwrap().is_none(), "rank 0 ended before its first checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    };
    r1.kill().unwrap();
    let _ = r1.wait();
    let killed = Instant::now();
    let out = r0.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "rank 0 succeeded without rank 1:\n{err}");
    assert!(killed.elapsed() < Duration::from_secs(20 + 10), "rank 0 took {:?} to fail", killed.elapsed());
    assert!(err.contains("rank 1 stopped answering"), "rank 0 should name rank 1:\n{err}");
    assert!(!store.join("train").exists() || std::fs::read_dir(store.join("train")).unwrap().next().is_none(), "a train artifact was published");
    assert!(checkpoint.join("state.json").exists(), "the checkpoint is kept for the rerun");
    // A rerun with both ranks resumes and finishes.
    let port = free_port();
    let (r0, r1) = (rank(0, port, &params, &store, &inputs), rank(1, port, &params, &store, &inputs));
    let (o0, o1) = (r0.wait_with_output().unwrap(), r1.wait_with_output().unwrap());
    let err0 = String::from_utf8_lossy(&o0.stderr).to_string();
    assert!(o0.status.success() && o1.status.success(), "rerun failed:\n{err0}\n{}", String::from_utf8_lossy(&o1.stderr));
    assert!(err0.contains("resuming from the checkpoint at step"), "{err0}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(store.join("report-0.json")).unwrap()).unwrap();
    let art = PathBuf::from(report["artifact"].as_str().unwrap());
    let s: pipeline::files::TrainSummary = pipeline::files::read(&art.join("summary.json")).unwrap();
    assert!(s.resumed_from_step.is_some_and(|r| r > 0), "{:?}", s.resumed_from_step);
    assert_eq!(s.distributed.map(|d| d.world_size), Some(2));
    assert!(!store.join("report-1.json").exists(), "rank 1 writes no report");
}

#[test]
fn with_dropout_a_two_rank_run_is_reproducible() {
    // Each rank draws its own masks, from (seed, micro-batch, rank): the same run twice gives
    // the same bytes.
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path(), "tiny-bert");
    let weights = |store: &str| {
        let o = run(&pipeline(&tmp.path().join(store), &model, 1, ""), 2);
        std::fs::read(o[2].artifact.clone().unwrap().join("final.safetensors")).unwrap()
    };
    let (a, b) = (weights("a"), weights("b"));
    assert!(a == b, "two runs of the same two-rank training differ");
    let one = run(&pipeline(&tmp.path().join("c"), &model, 1, ""), 1);
    let c = std::fs::read(one[2].artifact.clone().unwrap().join("final.safetensors")).unwrap();
    assert!(a != c, "with dropout, two ranks draw other masks than one process: the weights cannot be equal");
}
