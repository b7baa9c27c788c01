//! The download stage against a mock Hub and local files: protocol, cache, faults, bad input.

use std::path::{Path, PathBuf};

use download::dataset::SplitData;
use download::hub::Hub;
use serde_json::json;
use tests::mock_hub::{Faults, MockHub};

use tests::fixtures;

const CARD: &str = "---\ndataset_info:\n  features:\n  - name: text\n    dtype: string\n  - name: label\n    dtype:\n      class_label:\n        names:\n          '0': neg\n          '1': pos\nconfigs:\n- config_name: plain_text\n  data_files:\n  - split: train\n    path: plain_text/train-*\n  - split: test\n    path: plain_text/test-*\n  default: true\n---\n# tiny imdb\n";

fn parquet_bytes(dir: &Path, n: usize, offset: usize) -> Vec<u8> {
    let data = SplitData {
        text: (0..n).map(|i| format!("review number {} is {}", i + offset, if i % 2 == 0 { "bad" } else { "good" })).collect(),
        text_pair: None,
        label: download::dataset::Labels::Class((0..n).map(|i| (i % 2) as i64).collect()),
    };
    let p = dir.join(format!("t{offset}.parquet"));
    data.write_parquet(&p).unwrap();
    std::fs::read(p).unwrap()
}

struct Env {
    tmp: tempfile::TempDir,
    mock: MockHub,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let mock = MockHub::start();
        mock.add("datasets", "org/tiny-imdb", "README.md", CARD.as_bytes());
        mock.add("datasets", "org/tiny-imdb", "plain_text/train-00000-of-00001.parquet", &parquet_bytes(tmp.path(), 200, 0));
        mock.add("datasets", "org/tiny-imdb", "plain_text/test-00000-of-00001.parquet", &parquet_bytes(tmp.path(), 60, 1000));
        for f in ["config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"] {
            mock.add("models", "org/tiny-bert", f, &std::fs::read(fixtures().join("tiny-bert").join(f)).unwrap());
        }
        Env { tmp, mock }
    }
    fn hub(&self) -> Hub {
        Hub {
            endpoint: self.mock.endpoint.clone(),
            token: None,
            cache: self.tmp.path().join("hf-cache"),
            offline: false,
            attempts: 3,
            backoff: std::time::Duration::from_millis(10),
            progress: false,
        }
    }
    fn out(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

fn params(v: serde_json::Value) -> pipeline::DownloadParams {
    serde_json::from_value(v).unwrap()
}

fn hub_params() -> pipeline::DownloadParams {
    params(json!({"dataset": {"repo": "org/tiny-imdb"}, "model": {"repo": "org/tiny-bert"}}))
}

fn err_of(r: anyhow::Result<serde_json::Value>) -> String {
    format!("{:#}", r.expect_err("should fail"))
}

#[test]
fn hub_download_normalizes_and_caches() {
    let e = Env::new();
    let out = e.out("a");
    let s = download::run(&hub_params(), &e.hub(), &out).unwrap();
    assert_eq!(s["labels"], json!(["neg", "pos"]), "class names come from the card");
    let splits = &s["dataset"]["splits"];
    assert_eq!(splits["train"]["rows"], 180);
    assert_eq!(splits["validation"]["rows"], 20);
    assert_eq!(splits["validation"]["class_counts"], json!([10, 10]), "stratified");
    assert_eq!(splits["test"]["rows"], 60);
    assert_eq!(s["model"]["commit"], json!(e.mock.commit("models", "org/tiny-bert")));
    for f in ["model/config.json", "model/model.safetensors", "model/vocab.txt", "dataset/train.parquet", "dataset/labels.json"] {
        assert!(out.join(f).exists(), "{f}");
    }
    assert_eq!(std::fs::read(out.join("model/model.safetensors")).unwrap(), std::fs::read(fixtures().join("tiny-bert/model.safetensors")).unwrap());
    // The standard cache layout, visible to Python.
    let repo = e.tmp.path().join("hf-cache/models--org--tiny-bert");
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), e.mock.commit("models", "org/tiny-bert"));
    let link = repo.join("snapshots").join(e.mock.commit("models", "org/tiny-bert")).join("model.safetensors");
    assert!(std::fs::read_link(&link).unwrap().starts_with("../../blobs"));
    let log = e.mock.take_log();
    assert!(log.iter().any(|l| l.starts_with("GET cdn:/lfs/")), "LFS files come from the CDN: {log:?}");
    // A second run downloads nothing: only the two revision lookups.
    let out2 = e.out("b");
    download::run(&hub_params(), &e.hub(), &out2).unwrap();
    let log = e.mock.take_log();
    assert!(log.iter().all(|l| l.contains("/api/")), "{log:?}");
    assert_eq!(std::fs::read(out.join("dataset/train.parquet")).unwrap(), std::fs::read(out2.join("dataset/train.parquet")).unwrap());
}

#[test]
fn offline_uses_the_cache_and_fails_clearly_without_it() {
    let e = Env::new();
    let mut hub = e.hub();
    hub.offline = true;
    let msg = err_of(download::run(&hub_params(), &hub, &e.out("a")));
    assert!(msg.contains("HF_HUB_OFFLINE") && msg.contains("org/tiny-bert"), "{msg}");
    download::run(&hub_params(), &e.hub(), &e.out("b")).unwrap();
    e.mock.take_log();
    download::run(&hub_params(), &hub, &e.out("c")).unwrap();
    assert!(e.mock.take_log().is_empty(), "offline sends no request");
}

#[test]
fn a_prefilled_standard_cache_is_reused() {
    let e = Env::new();
    // Fill the cache the way huggingface_hub lays it out: blobs, snapshot links, refs.
    let commit = e.mock.commit("models", "org/tiny-bert");
    let repo = e.tmp.path().join("hf-cache/models--org--tiny-bert");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(&commit)).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), &commit).unwrap();
    for f in ["config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(fixtures().join("tiny-bert").join(f), repo.join("blobs").join(format!("blob-{f}"))).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob-{f}"), repo.join("snapshots").join(&commit).join(f)).unwrap();
    }
    download::run(&hub_params(), &e.hub(), &e.out("a")).unwrap();
    let log = e.mock.take_log();
    assert!(!log.iter().any(|l| l.contains("tiny-bert/resolve") || l.contains("lfs/models")), "model bytes were downloaded again: {log:?}");
}

#[test]
fn transient_failures_are_retried() {
    let e = Env::new();
    e.mock.set_faults(Faults { fail_first: 2, ..Default::default() });
    download::run(&hub_params(), &e.hub(), &e.out("a")).unwrap();
}

#[test]
fn broken_transfer_resumes_with_range() {
    let e = Env::new();
    e.mock.set_faults(Faults { truncate_after: Some((5000, 1)), ..Default::default() });
    download::run(&hub_params(), &e.hub(), &e.out("a")).unwrap();
    let log = e.mock.take_log();
    assert!(log.iter().any(|l| l.contains("[bytes=5000-]")), "{log:?}");
    let got = std::fs::read(e.tmp.path().join("a/model/model.safetensors")).unwrap();
    assert_eq!(got, std::fs::read(fixtures().join("tiny-bert/model.safetensors")).unwrap());
}

#[test]
fn transfer_that_stays_truncated_fails() {
    let e = Env::new();
    e.mock.set_faults(Faults { truncate_after: Some((5000, 100)), ..Default::default() });
    let msg = err_of(download::run(&hub_params(), &e.hub(), &e.out("a")));
    assert!(msg.contains("model.safetensors") && msg.contains("failed after 3 attempts") && msg.contains("5000"), "{msg}");
}

#[test]
fn corruption_is_caught_redownloaded_once_then_fatal() {
    let e = Env::new();
    e.mock.set_faults(Faults { corrupt: 1, ..Default::default() });
    download::run(&hub_params(), &e.hub(), &e.out("a")).unwrap();
    let e = Env::new();
    e.mock.set_faults(Faults { corrupt: 100, ..Default::default() });
    let msg = err_of(download::run(&hub_params(), &e.hub(), &e.out("a")));
    assert!(msg.contains("sha256 mismatch") && msg.contains("expected") && msg.contains("got"), "{msg}");
}

#[test]
fn hub_errors_are_named() {
    let e = Env::new();
    let msg = err_of(download::run(&params(json!({"dataset": {"repo": "org/tiny-imdb"}, "model": {"repo": "org/nope"}})), &e.hub(), &e.out("a")));
    assert!(msg.contains("repository not found") && msg.contains("org/nope"), "{msg}");
    let msg = err_of(download::run(&params(json!({"dataset": {"repo": "org/tiny-imdb"}, "model": {"repo": "org/tiny-bert", "revision": "v9"}})), &e.hub(), &e.out("b")));
    assert!(msg.contains("revision not found") && msg.contains("v9"), "{msg}");
    e.mock.set_faults(Faults { token: Some("hf_secret".into()), ..Default::default() });
    let msg = err_of(download::run(&hub_params(), &e.hub(), &e.out("c")));
    assert!(msg.contains("gated") && msg.contains("HF_TOKEN"), "{msg}");
    let mut hub = e.hub();
    hub.token = Some("hf_wrong".into());
    let msg = err_of(download::run(&hub_params(), &hub, &e.out("d")));
    assert!(msg.contains("no access"), "{msg}");
    hub.token = Some("hf_secret".into());
    download::run(&hub_params(), &hub, &e.out("e")).unwrap();
}

#[test]
fn network_down_and_nothing_cached() {
    let e = Env::new();
    let mut hub = e.hub();
    hub.endpoint = "http://127.0.0.1:9".into();
    let msg = err_of(download::run(&hub_params(), &hub, &e.out("a")));
    assert!(msg.contains("cannot reach") && msg.contains("not in the cache"), "{msg}");
}

#[test]
fn an_unavailable_hub_falls_back_to_the_cache() {
    let e = Env::new();
    let first = download::run(&hub_params(), &e.hub(), &e.out("a")).unwrap();
    assert_eq!(first["model"]["from_cache"], false);
    // Nothing listening: retries run out, and the cache answers.
    let mut down = e.hub();
    down.endpoint = "http://127.0.0.1:9".into();
    let s = download::run(&hub_params(), &down, &e.out("b")).unwrap();
    assert_eq!((&s["model"]["from_cache"], &s["dataset"]["source"]["from_cache"]), (&json!(true), &json!(true)));
    assert_eq!(s["model"]["commit"], first["model"]["commit"]);
}

#[test]
fn unsafe_or_unusable_repos_are_refused() {
    let e = Env::new();
    e.mock.add("models", "org/pickle", "config.json", b"{}");
    e.mock.add("models", "org/pickle", "pytorch_model.bin", b"not really");
    let msg = err_of(download::run(&params(json!({"dataset": {"repo": "org/tiny-imdb"}, "model": {"repo": "org/pickle"}})), &e.hub(), &e.out("a")));
    assert!(msg.contains("pytorch_model.bin") && msg.contains("pickle") && msg.contains("safe_serialization"), "{msg}");
    e.mock.add("models", "org/evil", "../../etc/passwd", b"x");
    let msg = err_of(download::run(&params(json!({"dataset": {"repo": "org/tiny-imdb"}, "model": {"repo": "org/evil"}})), &e.hub(), &e.out("b")));
    assert!(msg.contains("path traversal"), "{msg}");
    // DeBERTa-v3 ships a SentencePiece model and no tokenizer.json: refused before the weights
    // are fetched, saying why and what to do.
    for f in ["config.json", "model.safetensors", "spm.model", "tokenizer_config.json"] {
        e.mock.add("models", "org/deberta", f, b"{}");
    }
    let msg = err_of(download::run(&params(json!({"dataset": {"repo": "org/tiny-imdb"}, "model": {"repo": "org/deberta"}})), &e.hub(), &e.out("c")));
    assert!(msg.contains("no tokenizer") && msg.contains("spm.model") && msg.contains("save_pretrained"), "{msg}");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn local(e: &Env, files: serde_json::Value, extra: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let mut v = json!({"dataset": {"files": files}, "model": {"path": fixtures().join("tiny-bert").display().to_string()}});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    download::run(&params(v), &e.hub(), &e.out(&format!("o{}", rand_name())))
}

fn rand_name() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

#[test]
fn local_csv_jsonl_parquet_with_mapping() {
    let e = Env::new();
    let d = e.tmp.path();
    let csv = write(d, "train.csv", "review,sentiment\n\"a fine film, really\",positive\nawful,negative\nok,positive\nbad,negative\n");
    let jsonl = write(d, "test.jsonl", "{\"review\": \"great\", \"sentiment\": \"positive\"}\n{\"review\": \"meh\", \"sentiment\": \"negative\"}\n");
    let s = local(&e, json!({"train": csv, "test": jsonl}), json!({"columns": {"text": "review", "label": "sentiment"}, "label_map": {"negative": 0, "positive": 1}, "validation": {"fraction": 0.5, "seed": 1}})).unwrap();
    assert_eq!(s["labels"], json!(["negative", "positive"]));
    assert_eq!(s["dataset"]["splits"]["validation"]["class_counts"], json!([1, 1]));
    let pq = d.join("p.parquet");
    std::fs::write(&pq, parquet_bytes(d, 10, 0)).unwrap();
    let s = local(&e, json!({"train": pq.display().to_string()}), json!({"validation": {"fraction": 0.0, "seed": 1}})).unwrap();
    assert_eq!(s["labels"], json!(["LABEL_0", "LABEL_1"]));
    assert_eq!(s["dataset"]["splits"]["train"]["rows"], 10);
}

#[test]
fn tsv_as_glue_writes_it_and_csv_with_a_delimiter() {
    let e = Env::new();
    let d = e.tmp.path();
    // GLUE's SST-2 format: header, tabs, no quoting; a `"` is part of the text.
    let tsv = write(d, "train.tsv", "sentence\tlabel\nit 's a \"charming\" film , really\t1\na dull , lifeless mess\t0\n\"unquoted start\t1\n");
    let p = json!({"dataset": {"files": {"train": tsv}}, "model": {"path": fixtures().join("tiny-bert").display().to_string()}, "columns": {"text": "sentence", "label": "label"}, "validation": {"fraction": 0.0}});
    let out = e.out("tsv");
    let s = download::run(&params(p), &e.hub(), &out).unwrap();
    assert_eq!(s["dataset"]["splits"]["train"]["rows"], 3);
    assert_eq!(s["labels"], json!(["LABEL_0", "LABEL_1"]), "numeric labels are class ids, as in CSV and JSON Lines");
    let rows = tokenize::read_split(&out.join("dataset/train.parquet"), pipeline::Task::SingleLabel).unwrap();
    assert_eq!(rows.text, ["it 's a \"charming\" film , really", "a dull , lifeless mess", "\"unquoted start"]);
    assert!(matches!(rows.labels, tokenize::RowLabels::Class(ref l) if l == &[1, 0, 1]));
    let csv = write(d, "semi.csv", "text;label\n\"a; quoted\";1\nplain;0\n");
    let p = json!({"dataset": {"files": {"train": csv}, "delimiter": ";"}, "model": {"path": fixtures().join("tiny-bert").display().to_string()}, "validation": {"fraction": 0.0}});
    let s = download::run(&params(p), &e.hub(), &e.out("semi")).unwrap();
    assert_eq!(s["dataset"]["splits"]["train"]["class_counts"], json!([1, 1]));
    // Without the delimiter, the file has one column and the error names it and the setting.
    let msg = format!("{:#}", local(&e, json!({"train": csv}), json!({})).unwrap_err());
    assert!(msg.contains("text;label") && msg.contains("semi.csv"), "{msg}");
}

#[test]
fn one_labelled_file_gets_test_and_validation_splits_carved_from_it() {
    let e = Env::new();
    let d = e.tmp.path();
    let rows: String = (0..100).map(|i| format!("{{\"text\": \"row {i}\", \"label\": {}}}\n", usize::from(i % 4 == 0))).collect();
    let f = write(d, "all.jsonl", &rows);
    let carve = json!({"test": {"fraction": 0.2, "seed": 3}, "validation": {"fraction": 0.1, "seed": 3}});
    let s = local(&e, json!({"train": f}), carve.clone()).unwrap();
    let splits = &s["dataset"]["splits"];
    assert_eq!(splits["test"]["rows"], 20);
    assert_eq!(splits["test"]["class_counts"], json!([15, 5]), "stratified: a quarter are class 1");
    assert_eq!(splits["validation"]["rows"], 8, "a tenth of what the test split left");
    assert_eq!(splits["train"]["rows"], 72);
    assert_eq!(s["dataset"]["test_carved"]["fraction"], json!(0.2));
    // Seeded: the same rows again; a source that has a test split keeps its own.
    assert_eq!(local(&e, json!({"train": f}), carve.clone()).unwrap()["dataset"], s["dataset"]);
    let t = write(d, "t.jsonl", "{\"text\": \"x\", \"label\": 0}\n{\"text\": \"y\", \"label\": 1}\n");
    let s = local(&e, json!({"train": f, "test": t}), carve).unwrap();
    assert_eq!(s["dataset"]["splits"]["test"]["rows"], 2);
    assert!(s["dataset"]["test_carved"].is_null());
}

#[test]
fn bad_data_is_named() {
    let e = Env::new();
    let d = e.tmp.path();
    let f = write(d, "a.jsonl", "{\"txt\": \"x\", \"label\": 0}\n");
    let msg = format!("{:#}", local(&e, json!({"train": f}), json!({})).unwrap_err());
    assert!(msg.contains("`text`") && msg.contains("txt") && msg.contains("a.jsonl"), "{msg}");
    let f = write(d, "b.jsonl", "{\"text\": \"x\", \"label\": 0}\n{\"text\": \"y\", \"label\": 7}\n");
    let msg = format!("{:#}", local(&e, json!({"train": f}), json!({"label_names": ["a", "b"]})).unwrap_err());
    assert!(msg.contains("outside 0..1") && msg.contains("row 1: 7"), "{msg}");
    let f = write(d, "c.jsonl", "{\"text\": \"x\", \"label\": \"maybe\"}\n");
    let msg = format!("{:#}", local(&e, json!({"train": f}), json!({"label_map": {"yes": 1, "no": 0}})).unwrap_err());
    assert!(msg.contains("\"maybe\"") && msg.contains("label_map"), "{msg}");
    let f = write(d, "e.jsonl", "{\"text\": null, \"label\": 0}\n{\"text\": \"ok\", \"label\": 1}\n");
    let msg = format!("{:#}", local(&e, json!({"train": f}), json!({})).unwrap_err());
    assert!(msg.contains("null in rows 0"), "{msg}");
    let f = write(d, "fake.parquet", "this is not parquet");
    let msg = format!("{:#}", local(&e, json!({"train": f}), json!({})).unwrap_err());
    assert!(msg.contains("fake.parquet") && msg.contains("not a readable parquet"), "{msg}");
    let f = write(d, "empty.jsonl", "");
    let msg = format!("{:#}", local(&e, json!({"train": f}), json!({})).unwrap_err());
    assert!(msg.contains("empty.jsonl") || msg.contains("empty"), "{msg}");
    let msg = format!("{:#}", local(&e, json!({"train": d.join("nope-*.csv").display().to_string()}), json!({})).unwrap_err());
    assert!(msg.contains("no file matches"), "{msg}");
}

#[test]
fn missing_file_and_non_utf8_text_are_named() {
    let e = Env::new();
    let hub = e.hub();
    let sha = e.mock.commit("models", "org/tiny-bert");
    let msg = format!("{:#}", hub.file(download::hub::RepoType::Model, "org/tiny-bert", &sha, "nope.json").unwrap_err());
    assert!(msg.contains("file not found") && msg.contains("nope.json"), "{msg}");
    let p = e.tmp.path().join("bad.csv");
    std::fs::write(&p, b"text,label\n\"caf\xe9 bad bytes\",0\nok,1\n").unwrap();
    let msg = format!("{:#}", local(&e, json!({"train": p.display().to_string()}), json!({})).unwrap_err());
    assert!(msg.contains("bad.csv") && msg.contains("UTF-8"), "{msg}");
}

#[test]
fn pairs_label_sets_and_scores_are_normalized() {
    let e = Env::new();
    let d = e.tmp.path();
    // MRPC's layout: the pair's texts in two columns.
    let tsv = write(d, "mrpc.tsv", "Quality\t#1 String\t#2 String\n1\tthe cat sat\ta cat sat\n0\tit rains\tstocks fell\n1\tsame\tsame\n0\tup\tdown\n");
    let out = e.out("pairs");
    let p = json!({"dataset": {"files": {"train": tsv}}, "model": {"path": fixtures().join("tiny-bert").display().to_string()},
                   "columns": {"text": "#1 String", "text_pair": "#2 String", "label": "Quality"}, "validation": {"fraction": 0.0}});
    download::run(&params(p), &e.hub(), &out).unwrap();
    let rows = tokenize::read_split(&out.join("dataset/train.parquet"), pipeline::Task::SingleLabel).unwrap();
    assert_eq!(rows.text_pair.unwrap(), ["a cat sat", "stocks fell", "same", "down"]);

    // Toxic comments' shape: lists of names, empty lists allowed; names sorted when not given.
    let rows: String = (0..40).map(|i| format!("{{\"text\": \"c{i}\", \"labels\": {}}}\n", ["[]", "[\"toxic\"]", "[\"toxic\", \"insult\", \"toxic\"]", "[\"obscene\"]"][i % 4])).collect();
    let f = write(d, "toxic.jsonl", &rows);
    let multi = json!({"task": "multi_label", "columns": {"label": "labels"}, "validation": {"fraction": 0.25, "seed": 1}});
    let s = local(&e, json!({"train": f}), multi.clone()).unwrap();
    assert_eq!(s["labels"], json!(["insult", "obscene", "toxic"]));
    assert_eq!(s["dataset"]["splits"]["train"]["rows"], 30);
    assert_eq!(s["dataset"]["validation_carved"]["stratified"], json!(false), "a seeded random split, and the manifest says so");
    let counts = |split: &str| s["dataset"]["splits"][split]["class_counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(counts("train").iter().zip(counts("validation")).map(|(a, b)| a + b).collect::<Vec<_>>(), [10, 10, 20], "repeats count once");
    // Ids with label_names; an unknown name or id is named.
    let f = write(d, "ids.jsonl", "{\"text\": \"a\", \"labels\": [0, 2]}\n{\"text\": \"b\", \"labels\": []}\n");
    let s = local(&e, json!({"train": f}), json!({"task": "multi_label", "columns": {"label": "labels"}, "label_names": ["x", "y", "z"], "validation": {"fraction": 0.0}})).unwrap();
    assert_eq!(s["dataset"]["splits"]["train"]["class_counts"], json!([1, 0, 1]));
    let f = write(d, "unknown.jsonl", "{\"text\": \"a\", \"labels\": [\"toxic\", \"spam\"]}\n");
    let msg = format!("{:#}", local(&e, json!({"train": f}), json!({"task": "multi_label", "columns": {"label": "labels"}, "label_names": ["toxic", "insult"], "validation": {"fraction": 0.0}})).unwrap_err());
    assert!(msg.contains("\"spam\"") && msg.contains("not a known class") && msg.contains("label_names"), "{msg}");

    // STS-B's shape: a float score; stats in the manifest.
    let tsv = write(d, "sts.tsv", "sentence1\tsentence2\tscore\na\tb\t4.5\nc\td\t0.25\ne\tf\t2\n");
    let s = local(&e, json!({"train": tsv}), json!({"task": "regression", "columns": {"text": "sentence1", "text_pair": "sentence2", "label": "score"}, "validation": {"fraction": 0.0}})).unwrap();
    assert_eq!(s["labels"], json!(["score"]));
    assert_eq!(s["dataset"]["splits"]["train"]["scores"]["max"], json!(4.5));
}

#[test]
fn task_and_label_column_mismatches_are_one_clear_error_each() {
    let e = Env::new();
    let d = e.tmp.path();
    let model = fixtures().join("tiny-bert").display().to_string();
    let err = |files: serde_json::Value, extra: serde_json::Value| -> (String, PathBuf) {
        let out = e.out(&format!("bad{}", rand_name()));
        let mut v = json!({"dataset": {"files": files}, "model": {"path": model}, "validation": {"fraction": 0.0}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        (format!("{:#}", download::run(&params(v), &e.hub(), &out).unwrap_err()), out)
    };
    let pairs = write(d, "p.jsonl", "{\"a\": \"x\", \"b\": \"y\", \"label\": 0}\n{\"a\": \"z\", \"b\": null, \"label\": 1}\n");
    let (msg, out) = err(json!({"train": pairs}), json!({"columns": {"text": "a", "text_pair": "b"}}));
    assert!(msg.contains("p.jsonl") && msg.contains("`b`") && msg.contains("text_pair") && msg.contains("null in rows 1"), "{msg}");
    assert!(!out.join("dataset/train.parquet").exists(), "nothing written");
    let lists = write(d, "l.jsonl", "{\"text\": \"x\", \"label\": [\"a\"]}\n{\"text\": \"y\", \"label\": [\"b\"]}\n");
    let (msg, _) = err(json!({"train": lists}), json!({}));
    assert!(msg.contains("holds lists") && msg.contains("task: multi_label"), "{msg}");
    let (msg, _) = err(json!({"train": lists}), json!({"task": "regression"}));
    assert!(msg.contains("regression") && msg.contains("a number per row"), "{msg}");
    let words = write(d, "w.csv", "text,label\nx,high\ny,3.5\n");
    let (msg, _) = err(json!({"train": words}), json!({"task": "regression"}));
    assert!(msg.contains("w.csv") && msg.contains("\"high\"") && msg.contains("a number per row"), "{msg}");
    let floats = write(d, "f.csv", "text,label\nx,0.5\ny,3.5\n");
    let (msg, _) = err(json!({"train": floats}), json!({}));
    assert!(msg.contains("task: regression"), "{msg}");
    let (msg, _) = err(json!({"train": floats}), json!({"task": "multi_label"}));
    assert!(msg.contains("multi_label") && msg.contains("list of class names or ids"), "{msg}");
}

/// Rows of every source format, read in tiny chunks: the same split files, byte for byte, as
/// read whole; no chunk holds more rows than asked; a `max_examples` subset keeps the split's
/// order.
#[test]
fn chunked_download_reads_bounded_chunks_and_writes_the_same_splits() {
    let e = Env::new();
    let d = e.tmp.path();
    let classes = ["neg", "pos", "mixed"];
    // CSV records with quoted commas, doubled quotes and newlines inside quotes.
    let csv: String = std::iter::once("text,label\n".to_string())
        .chain((0..300).map(|i| format!("\"train row {i:03}, said \"\"so\"\"\nand went on\",{}\n", classes[i % 3])))
        .collect();
    write(d, "train.csv", &csv);
    let pq = d.join("train-more.parquet");
    let more = SplitData {
        text: (0..40).map(|i| format!("train row {}", 300 + i)).collect(),
        text_pair: None,
        label: download::dataset::Labels::Class((0..40).map(|i| i % 3).collect()),
    };
    more.write_parquet(&pq).unwrap();
    let jsonl: String = (0..50).map(|i| format!("{{\"text\": \"test row {i:03}\", \"label\": \"{}\"}}\n", classes[i % 3])).collect();
    let jsonl = write(d, "test.jsonl", &jsonl);
    // The parquet file's labels are ids: the label names come from the pipeline.
    let v = json!({
        "dataset": {"files": {"train": format!("{}/train*", d.display()), "test": jsonl}},
        "model": {"path": fixtures().join("tiny-bert").display().to_string()},
        "label_map": {"neg": 0, "pos": 1, "mixed": 2},
        "validation": {"fraction": 0.1, "seed": 5},
        "max_examples": {"test": 20},
    });
    let p = params(v);
    let (whole, tiny) = (e.out("whole"), e.out("tiny"));
    let a = download::run(&p, &e.hub(), &whole).unwrap();
    let b = download::run_chunked(&p, &e.hub(), &tiny, download::chunks::Chunking { rows: 7, bytes: 64 }).unwrap();
    assert_eq!(a["dataset"], b["dataset"]);
    assert_eq!(a["dataset"]["splits"]["train"]["rows"].as_u64().unwrap() + a["dataset"]["splits"]["validation"]["rows"].as_u64().unwrap(), 340);
    for split in ["train", "validation", "test"] {
        let f = format!("dataset/{split}.parquet");
        assert_eq!(std::fs::read(whole.join(&f)).unwrap(), std::fs::read(tiny.join(&f)).unwrap(), "{f}");
    }
    let test = tokenize::read_split(&whole.join("dataset/test.parquet"), pipeline::Task::SingleLabel).unwrap();
    assert_eq!(test.text.len(), 20);
    assert!(test.text.windows(2).all(|w| w[0] < w[1]), "the subset keeps the split's order: {:?}", test.text);
    let train = tokenize::read_split(&whole.join("dataset/train.parquet"), pipeline::Task::SingleLabel).unwrap();
    assert!(train.text.iter().any(|t| t.contains(", said \"so\"\nand went on")), "quoted fields come through whole");
    // The readers hand out what they were asked for at most.
    let chunking = download::chunks::Chunking { rows: 7, bytes: 64 };
    let heights: Vec<usize> = download::chunks::TableChunks::open(&pq, None, chunking).unwrap().map(|c| c.unwrap().1.height()).collect();
    assert_eq!((heights.iter().sum::<usize>(), heights.iter().max().copied()), (40, Some(7)), "{heights:?}");
    let csv_chunks: Vec<(usize, usize)> = download::chunks::TableChunks::open(&d.join("train.csv"), None, chunking).unwrap().map(|c| c.map(|(first, df)| (first, df.height())).unwrap()).collect();
    assert!(csv_chunks.len() >= 100 && csv_chunks.iter().all(|&(_, h)| h <= 2), "{csv_chunks:?}");
    assert!(csv_chunks.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0), "first rows count on: {csv_chunks:?}");
}
