//! Our BERT against Hugging Face transformers: logits to 1e-4 in fp32, with padding; golden values
//! committed from `fixtures/parity/make_golden.py`, and a live comparison when the project venv
//! has transformers.

use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use tests::fixtures;

fn mirror() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/hub-mirror/models/sentence-transformers/all-MiniLM-L6-v2")
}

fn ours(m: &model::Model, case: &serde_json::Value) -> Vec<Vec<f64>> {
    let rows = |k: &str| -> Vec<i64> { case[k].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap())).collect() };
    let b = case["ids"].as_array().unwrap().len() as i64;
    let ids = Tensor::from_slice(&rows("ids")).view([b, -1]);
    let mask = Tensor::from_slice(&rows("mask")).view([b, -1]);
    let logits = tch::no_grad(|| m.forward(&model::Inputs::new(&ids, Some(&mask)), false));
    let flat: Vec<f32> = Vec::try_from(logits.flatten(0, -1)).unwrap();
    flat.chunks(m.num_labels as usize).map(|c| c.iter().map(|&x| x as f64).collect()).collect()
}

#[track_caller]
fn assert_close(got: &[Vec<f64>], want: &serde_json::Value, what: &str) {
    let want: Vec<Vec<f64>> = want.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() < 1e-4, "{what}: ours {g:?} vs transformers {w:?}");
        }
    }
}

fn tiny() -> model::Model {
    let dir = fixtures().join("parity/tiny-cls");
    let config = model::Config::from_file(&dir.join("config.json")).unwrap();
    let (m, report) = model::Model::load(config, 2, &dir.join("model.safetensors"), Device::Cpu, 0).unwrap();
    assert!(report.initialized.is_empty(), "{:?}", report.initialized);
    m
}

fn minilm() -> Option<model::Model> {
    if !mirror().exists() {
        tests::skip("the all-MiniLM-L6-v2 parity check", &format!("{} is absent", mirror().display()), false);
        return None;
    }
    let config = model::Config::from_file(&mirror().join("config.json")).unwrap();
    let (m, report) = model::Model::load(config, 2, &mirror().join("model.safetensors"), Device::Cpu, 0).unwrap();
    assert_eq!(report.initialized, ["classifier.weight", "classifier.bias"], "the pooler is in the file, the head is not");
    assert_eq!(report.unused, ["embeddings.position_ids"]);
    let head = Tensor::read_safetensors(fixtures().join("parity/minilm-classifier.safetensors")).unwrap();
    assert_eq!(m.params.assign(&head, "head").unwrap().len(), 2);
    Some(m)
}

fn golden() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("parity/golden.json")).unwrap()).unwrap()
}

#[test]
fn tiny_random_bert_matches_golden_logits() {
    let _rng = tests::torch_rng();
    assert_close(&ours(&tiny(), &golden()["tiny"]), &golden()["tiny"]["logits"], "tiny");
}

#[test]
fn minilm_matches_golden_logits() {
    let _rng = tests::torch_rng();
    if let Some(m) = minilm() {
        assert_close(&ours(&m, &golden()["minilm"]), &golden()["minilm"]["logits"], "minilm");
    }
}

#[test]
fn padding_does_not_change_real_rows() {
    let _rng = tests::torch_rng();
    let m = tiny();
    let g = golden();
    let mut case = g["tiny"].clone();
    // The padded rows alone, unpadded, give the same logits as inside the padded batch.
    case["ids"] = serde_json::json!([[2, 50, 3]]);
    case["mask"] = serde_json::json!([[1, 1, 1]]);
    let alone = ours(&m, &case);
    assert_close(&alone, &serde_json::json!([g["tiny"]["logits"][1]]), "unpadded row");
}

#[test]
fn live_comparison_with_transformers() {
    let _rng = tests::torch_rng();
    let Some(python) = tests::venv_python_with("transformers") else {
        return tests::skip("live_comparison_with_transformers", "the venv cannot import transformers", true);
    };
    let out = std::process::Command::new(&python)
        .arg(fixtures().join("parity/make_golden.py"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let live: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_close(&ours(&tiny(), &live["tiny"]), &live["tiny"]["logits"], "tiny (live)");
    if let Some(m) = minilm() {
        assert_close(&ours(&m, &live["minilm"]), &live["minilm"]["logits"], "minilm (live)");
    }
}

/// `ft-logits` (the GPU script's parity probe) prints the golden logits, and names the file and
/// key of a malformed batch.
#[test]
fn ft_logits_prints_the_golden_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let g = golden();
    let run = |batch: &serde_json::Value, precision: &str| {
        let f = tmp.path().join("batch.json");
        std::fs::write(&f, batch.to_string()).unwrap();
        std::process::Command::new(tests::release_bin("ft-logits"))
            .args(["--model".as_ref(), fixtures().join("parity/tiny-cls").as_os_str()])
            .args(["--batch".as_ref(), f.as_os_str()])
            .args(["--device", "cpu", "--precision", precision])
            .output()
            .unwrap()
    };
    let case = serde_json::json!({"ids": g["tiny"]["ids"], "mask": g["tiny"]["mask"]});
    let out = run(&case, "fp32");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["precision"], "fp32");
    let logits: Vec<Vec<f64>> = serde_json::from_value(got["logits"].clone()).unwrap();
    assert_close(&logits, &g["tiny"]["logits"], "ft-logits");
    let out = run(&case, "bf16");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["precision"], "bf16");
    let out = run(&serde_json::json!({"ids": [[2, 40], [2]], "mask": [[1, 1], [1]]}), "fp32");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("batch.json: `ids` must be a list of equally long lists"), "{err}");
}
