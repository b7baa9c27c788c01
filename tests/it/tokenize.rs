//! Token ids identical to Python `tokenizers` (golden ids committed, and live when the venv has
//! it); our truncation rules; bad tokenizer files.

use std::path::{Path, PathBuf};

use pipeline::{TokenizeParams, Truncation};

use tests::fixtures;

fn mirror() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/hub-mirror/models/sentence-transformers/all-MiniLM-L6-v2")
}

fn params(max_length: usize, truncation: Truncation, head_tokens: usize) -> TokenizeParams {
    TokenizeParams { max_length, truncation, head_tokens, shard_mib: 256, pair_truncation: Default::default() }
}

fn check_against(golden: &serde_json::Value) {
    let texts: Vec<String> = golden["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let mut checked = 0;
    for case in golden["cases"].as_array().unwrap() {
        let dir = match case["tokenizer"].as_str().unwrap() {
            "tiny-vocab" => fixtures().join("tiny-bert"),
            _ if mirror().exists() => mirror(),
            _ => continue,
        };
        let tk = tokenize::tok::load(&dir).unwrap();
        let p = params(case["max_length"].as_u64().unwrap() as usize, Truncation::Head, 0);
        for (text, want) in texts.iter().zip(case["ids"].as_array().unwrap()) {
            let want: Vec<u32> = want.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let (got, _) = tk.encode(text, &p).unwrap();
            assert_eq!(got, want, "{} max_length {} on {text:?}", case["tokenizer"], p.max_length);
            checked += 1;
        }
    }
    assert!(checked >= 20);
}

#[test]
fn ids_match_python_tokenizers_golden() {
    let g: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures().join("tokenize/golden.json")).unwrap()).unwrap();
    check_against(&g);
}

#[test]
fn ids_match_python_tokenizers_live() {
    let Some(python) = tests::venv_python_with("tokenizers") else {
        return tests::skip("ids_match_python_tokenizers_live", "the venv cannot import tokenizers", true);
    };
    let out = std::process::Command::new(&python).arg(fixtures().join("tokenize/make_golden.py")).arg("--check").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_against(&serde_json::from_slice(&out.stdout).unwrap());
}

#[test]
fn head_tail_keeps_both_ends_and_empty_text_is_cls_sep() {
    let tk = tokenize::tok::load(&fixtures().join("tiny-bert")).unwrap();
    let text = (0..40).map(|i| if i % 2 == 0 { "great" } else { "movie" }).collect::<Vec<_>>().join(" ") + " the end";
    let (full, n) = tk.encode(&text, &params(512, Truncation::Head, 0)).unwrap();
    assert_eq!(n as usize, full.len());
    let (ht, n2) = tk.encode(&text, &params(12, Truncation::HeadTail, 4)).unwrap();
    assert_eq!(n2, n, "the untruncated length is reported");
    assert_eq!(ht.len(), 12);
    assert_eq!(&ht[..5], &full[..5], "[CLS] + 4 head tokens");
    assert_eq!(&ht[5..], &full[full.len() - 7..], "6 tail tokens + [SEP]");
    let (head, _) = tk.encode(&text, &params(12, Truncation::Head, 0)).unwrap();
    assert_eq!(&head[..11], &full[..11]);
    assert_eq!(head[11], *full.last().unwrap());
    let (empty, m) = tk.encode("", &params(12, Truncation::Head, 0)).unwrap();
    assert_eq!(empty, vec![full[0], *full.last().unwrap()]);
    assert_eq!(m, 2);
    let big = "word ".repeat(200_000);
    let (ids, m) = tk.encode(&big, &params(64, Truncation::Head, 0)).unwrap();
    assert_eq!((ids.len(), m as usize > 200_000), (64, true), "a 1 MB text is fine");
}

#[test]
fn minilm_file_truncation_and_padding_do_not_leak() {
    if !mirror().exists() {
        return tests::skip("minilm_file_truncation_and_padding_do_not_leak", &format!("{} is absent", mirror().display()), false);
    }
    let tk = tokenize::tok::load(&mirror()).unwrap();
    let (ids, _) = tk.encode(&"film ".repeat(400), &params(256, Truncation::Head, 0)).unwrap();
    assert_eq!(ids.len(), 256, "the file's truncation at 128 is ignored");
    let (ids, _) = tk.encode("short", &params(256, Truncation::Head, 0)).unwrap();
    assert_eq!(ids.len(), 3, "the file's padding to 128 is ignored");
}

#[test]
fn broken_tokenizer_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("tokenizer.json"), "{not json").unwrap();
    let e = tokenize::tok::load(tmp.path()).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("not a valid tokenizer"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = tokenize::tok::load(empty.path()).err().unwrap().to_string();
    assert!(e.contains("no tokenizer.json and no vocab.txt"), "{e}");
}

/// Random ASCII with what trips tokenizers up: control characters, every kind of whitespace and
/// punctuation, digits, capitals, over-long words, and the text of special tokens.
fn random_ascii(seed: u64, n: usize) -> Vec<String> {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let specials = ["[CLS]", "[mask]", "[SEP]"];
    let pieces = ["<br />", "don't", "U.S.A.", "the", "##ing", "a", "unaffable", "\t", "\r\n", "\x0b", "\x0c", "\x1f", "\x7f", "\x00"];
    (0..n)
        .map(|i| {
            let len = (next() % 300) as usize;
            let mut s = String::new();
            if i % 10 == 0 {
                s.push_str(specials[i / 10 % specials.len()]);
            }
            for _ in 0..len {
                match next() % 10 {
                    0 => s.push_str(pieces[(next() % pieces.len() as u64) as usize]),
                    1 => s.push_str(&"x".repeat(95 + (next() % 10) as usize)),
                    2..=4 => s.push(' '),
                    _ => s.push((next() % 128) as u8 as char),
                }
            }
            s
        })
        .collect()
}

#[test]
fn ascii_fast_path_equals_the_general_path() {
    let mut dirs = vec![fixtures().join("tiny-bert")];
    if mirror().exists() {
        dirs.push(mirror());
    }
    let g: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures().join("tokenize/golden.json")).unwrap()).unwrap();
    let mut texts: Vec<String> = g["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    texts.extend(random_ascii(0x9e3779b97f4a7c15, 400));
    for dir in dirs {
        let tk = tokenize::tok::load(&dir).unwrap();
        let fast = tk.fast.as_ref().unwrap_or_else(|| panic!("{}: a BERT tokenizer should get the fast path", dir.display()));
        let mut taken = 0;
        for text in &texts {
            taken += fast.body(text).is_some() as usize;
            for p in [params(512, Truncation::Head, 0), params(16, Truncation::Head, 0), params(24, Truncation::HeadTail, 8)] {
                assert_eq!(tk.encode(text, &p).unwrap(), tk.encode_general(text, &p).unwrap(), "{} {p:?} on {text:?}", dir.display());
            }
        }
        assert!(taken > 300, "the fast path took only {taken} of {} texts", texts.len());
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_vocabulary_the_model_cannot_embed_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("download/model");
    copy_dir(&fixtures().join("tiny-bert"), &model);
    let cfg = std::fs::read_to_string(model.join("config.json")).unwrap().replace("\"vocab_size\": 145", "\"vocab_size\": 100");
    std::fs::write(model.join("config.json"), cfg).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let e = tokenize::run(&params(64, Truncation::Head, 0), &tmp.path().join("download"), &out).unwrap_err().to_string();
    assert!(e.contains("ids up to 144") && e.contains("vocab_size 100") && e.contains(&model.display().to_string()), "{e}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "nothing may be written");
}

#[test]
fn inspect_prints_examples_and_the_split_stats() {
    let bins = tests::release_dir();
    let tmp = tempfile::tempdir().unwrap();
    let p = tests::smoke_pipeline(&tmp.path().join("store"));
    let opts = runner::RunOptions { only: Some(pipeline::Stage::Tokenize), bin_dir: bins.clone(), ..Default::default() };
    let err = runner::run(&p, &opts, |_| {}).unwrap_err().to_string();
    assert!(err.contains("no artifact") && err.contains("download"), "--only needs download cached first: {err}");
    let opts = runner::RunOptions { only: Some(pipeline::Stage::Download), bin_dir: bins.clone(), ..Default::default() };
    runner::run(&p, &opts, |_| {}).unwrap();
    let opts = runner::RunOptions { only: Some(pipeline::Stage::Tokenize), bin_dir: bins.clone(), ..Default::default() };
    let tok = runner::run(&p, &opts, |_| {}).unwrap()[1].artifact.clone().unwrap();
    let out = std::process::Command::new(bins.join("ft-tokenize")).arg("inspect").arg(&tok).args(["--split", "test", "--head", "3"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    let tk = tokenize::tok::load(&fixtures().join("tiny-bert")).unwrap();
    for (i, ex) in lines[..3].iter().enumerate() {
        assert_eq!(ex["index"], i);
        let ids: Vec<u32> = serde_json::from_value(ex["ids"].clone()).unwrap();
        let tokens: Vec<String> = serde_json::from_value(ex["tokens"].clone()).unwrap();
        assert_eq!(ids.len(), tokens.len());
        assert_eq!((ids[0], tokens[0].as_str()), (tk.cls_id.unwrap(), "[CLS]"));
        assert_eq!(tokens.last().map(String::as_str), Some("[SEP]"));
        assert!(ex["label"] == 0 || ex["label"] == 1);
    }
    assert_eq!(lines[3]["split"], "test");
    assert_eq!(lines[3]["stats"]["examples"], 160);
    let bad = std::process::Command::new(bins.join("ft-tokenize")).arg("inspect").arg(&tok).args(["--split", "test", "--index", "999"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("has 160 examples"), "{}", String::from_utf8_lossy(&bad.stderr));
    let bad = std::process::Command::new(bins.join("ft-tokenize")).arg("inspect").arg(&tok).args(["--split", "dev"]).output().unwrap();
    assert!(!bad.status.success());
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(e.contains("split `dev` not found") && e.contains("\"train\"") && e.contains("\"validation\""), "{e}");
}

/// A five-token vocabulary whose last token has id 70,000 (sparse ids, as an added token can
/// have): the shards get 4-byte ids and the id reads back whole (it was written `as u16`,
/// i.e. 4,464, before), and a model too small to embed it is refused before anything is written.
#[test]
fn an_id_beyond_65535_on_a_small_vocabulary_survives_tokenize() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("download/model");
    std::fs::create_dir_all(&model).unwrap();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"[PAD]": 0, "[UNK]": 1, "good": 2, "bad": 3, "rare": 70000}, "unk_token": "[UNK]"}
    });
    std::fs::write(model.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(model.join("config.json"), r#"{"model_type": "bert", "vocab_size": 70001, "max_position_embeddings": 64}"#).unwrap();
    let ds = tmp.path().join("download/dataset");
    std::fs::create_dir_all(&ds).unwrap();
    download::dataset::SplitData { text: vec!["good rare bad".into(), "rare".into()], text_pair: None, label: download::dataset::Labels::Class(vec![1, 0]) }.write_parquet(&ds.join("train.parquet")).unwrap();
    std::fs::write(ds.join("labels.json"), r#"{"task": "single_label", "names": ["neg", "pos"]}"#).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let meta = tokenize::run(&params(16, Truncation::Head, 0), &tmp.path().join("download"), &out).unwrap().meta;
    assert_eq!((meta.vocab_size, meta.max_id), (5, 70_000));
    let s = shards::Split::open(&out, "train").unwrap();
    assert_eq!(s.ids(0), vec![2, 70_000, 3]);
    assert_eq!(s.ids(1), vec![70_000]);
    // A model whose embedding table ends below the id.
    std::fs::write(model.join("config.json"), r#"{"model_type": "bert", "vocab_size": 30522, "max_position_embeddings": 64}"#).unwrap();
    let out2 = tmp.path().join("out2");
    std::fs::create_dir_all(&out2).unwrap();
    let e = tokenize::run(&params(16, Truncation::Head, 0), &tmp.path().join("download"), &out2).unwrap_err().to_string();
    assert!(e.contains("ids up to 70000") && e.contains("vocab_size 30522"), "{e}");
    assert_eq!(std::fs::read_dir(&out2).unwrap().count(), 0);
}

/// The stage reads and encodes a split a chunk of rows at a time: the chunks never hold more
/// rows than asked, cover the file in order, and shards made 7 rows at a time (pairs, and a
/// split smaller than a chunk) and every other file are byte for byte those made in one chunk.
#[test]
fn chunked_tokenize_reads_bounded_chunks_and_writes_the_same_shards() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tiny-bert"), &tmp.path().join("download/model"));
    let ds = tmp.path().join("download/dataset");
    std::fs::create_dir_all(&ds).unwrap();
    let text: Vec<String> = (0..50).map(|i| format!("the film number {i} was {}", if i % 3 == 0 { "great" } else { "dull and long" })).collect();
    let pair: Vec<String> = (0..50).map(|i| format!("a second text {}", "very ".repeat(i % 9))).collect();
    let data = |n: usize| download::dataset::SplitData { text: text[..n].to_vec(), text_pair: Some(pair[..n].to_vec()), label: download::dataset::Labels::Class((0..n as i64).map(|i| i % 2).collect()) };
    data(50).write_parquet(&ds.join("train.parquet")).unwrap();
    data(5).write_parquet(&ds.join("test.parquet")).unwrap();
    std::fs::write(ds.join("labels.json"), r#"{"task": "single_label", "names": ["neg", "pos"]}"#).unwrap();
    let train = ds.join("train.parquet");
    let chunks = tokenize::SplitChunks::open(&train, pipeline::Task::SingleLabel, 7).unwrap();
    assert!(chunks.pairs && chunks.rows == 50);
    let sizes: Vec<usize> = chunks.map(|c| c.unwrap().text.len()).collect();
    assert_eq!(sizes, vec![7, 7, 7, 7, 7, 7, 7, 1]);
    let p = params(16, Truncation::Head, 0);
    let (whole, small) = (tmp.path().join("whole"), tmp.path().join("small"));
    for (dir, rows) in [(&whole, tokenize::CHUNK_ROWS), (&small, 7)] {
        std::fs::create_dir_all(dir).unwrap();
        let run = tokenize::run_chunked(&p, &tmp.path().join("download"), dir, rows).unwrap();
        assert_eq!(run.seconds.keys().collect::<Vec<_>>(), ["test", "train"], "each split's time goes to the manifest's summary");
    }
    // Every file, meta.json included, is the same: the artifact's bytes depend on its inputs
    // alone (no timings), so a rerun leaves the stages after it cached.
    let files = |dir: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        names.into_iter().map(|n| (n.clone(), std::fs::read(dir.join(n)).unwrap())).collect::<Vec<_>>()
    };
    let (a, b) = (files(&whole), files(&small));
    assert_eq!(a.iter().map(|f| &f.0).collect::<Vec<_>>(), b.iter().map(|f| &f.0).collect::<Vec<_>>());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{name:?} differs between the two runs");
    }
    assert_eq!(shards::Split::open(&small, "train").unwrap().len(), 50);
}
