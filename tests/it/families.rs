//! Every encoder family against transformers: logits to 1e-4 in fp32 on padded batches (packed
//! and in the padded layout), bf16 within transformers' own bf16-autocast distance, one
//! training step's loss and gradients to 1e-4 (also under config variants: ModernBERT's [CLS]
//! pooling with a global and a local last layer), ModernBERT at 8,192 tokens, and token ids equal
//! to Python `tokenizers`' at head and head_tail truncation. Golden values are committed from
//! `fixtures/families/make_families.py`; the live test recomputes them with transformers.

use tch::{Device, Kind, Tensor};

use tests::fixtures;

const FAMILIES: [&str; 4] = ["roberta", "xlm-roberta", "distilbert", "modernbert"];

fn golden() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("families/golden.json")).unwrap()).unwrap()
}

/// The parity classifier, its config changed by `overrides` (an object, or null for none).
fn classifier(family: &str, overrides: &serde_json::Value) -> model::Model {
    let dir = fixtures().join("parity").join(family);
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    json.as_object_mut().unwrap().extend(overrides.as_object().cloned().unwrap_or_default());
    let config = model::Config::from_json(json).unwrap();
    assert_eq!(config.model_type, family);
    let (m, report) = model::Model::load(config, 2, &dir.join("model.safetensors"), Device::Cpu, 0).unwrap();
    assert!(report.initialized.is_empty(), "{family}: {:?}", report.initialized);
    m
}

fn matrix(v: &serde_json::Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
}

fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap())).collect()
}

/// The case's batch, packed (as training runs it) or kept in the padded layout.
fn inputs(case: &serde_json::Value, packed: bool) -> model::Inputs {
    let rows = case["ids"].as_array().unwrap().len();
    let (ids, mask) = (ints(&case["ids"]), ints(&case["mask"]));
    let len = ids.len() / rows;
    let mut x = model::inputs::upload(rows, len, &ids, None, Some(&mask), Device::Cpu);
    assert!(x.packed().is_some(), "the golden batches are right-padded");
    if !packed {
        x = model::Inputs {
            rows: rows as i64,
            len: len as i64,
            ids: Tensor::from_slice(&ids),
            types: None,
            padding: Some(model::inputs::Padding { mask: Tensor::from_slice(&mask).to_kind(Kind::Bool).view([rows as i64, 1, 1, len as i64]), packed: None }),
        };
    }
    x
}

fn rows_of(t: &Tensor) -> Vec<Vec<f64>> {
    let (r, c) = t.size2().unwrap();
    let flat: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap();
    (0..r as usize).map(|i| flat[i * c as usize..(i + 1) * c as usize].iter().map(|&x| x as f64).collect()).collect()
}

fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// fp32 logits `want` for the batch of `g`, in both layouts.
fn check_fp32_logits(family: &str, m: &model::Model, g: &serde_json::Value, want: &serde_json::Value) {
    let want = matrix(want);
    for packed in [true, false] {
        let got = rows_of(&tch::no_grad(|| m.forward(&inputs(g, packed), false)));
        let d = max_diff(&got, &want);
        assert!(d < 1e-4, "{family} (packed: {packed}): ours {got:?} vs transformers {want:?}");
    }
}

/// fp32 logits, both layouts; bf16 within twice transformers' own bf16 distance from fp32.
fn check_logits(family: &str, m: &mut model::Model, g: &serde_json::Value) {
    check_fp32_logits(family, m, g, &g["logits"]);
    let want = matrix(&g["logits"]);
    let hf_bf16 = max_diff(&matrix(&g["bf16_logits"]), &want);
    m.compute = Kind::BFloat16;
    let ours_bf16 = max_diff(&rows_of(&tch::no_grad(|| m.forward(&inputs(g, true), false))), &want);
    m.compute = Kind::Float;
    assert!(ours_bf16 <= 2.0 * hf_bf16 + 0.02, "{family}: bf16 is {ours_bf16} from fp32, transformers' bf16 autocast {hf_bf16}");
}

/// The loss for the golden labels and the first elements of every parameter's gradient, for
/// the batch of `g` and the values of `want` (`g` itself or one of its variants).
fn check_gradients(family: &str, m: &model::Model, g: &serde_json::Value, want: &serde_json::Value) {
    let labels = Tensor::from_slice(&g["labels"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect::<Vec<_>>());
    m.params.zero_grad();
    let loss = m.forward(&inputs(g, true), false).cross_entropy_for_logits(&labels);
    loss.backward();
    let (ours, theirs) = (loss.double_value(&[]), want["loss"].as_f64().unwrap());
    assert!((ours - theirs).abs() < 1e-4, "{family}: loss {ours} vs {theirs}");
    let grads = want["grads"].as_object().unwrap();
    assert_eq!(grads.len(), m.params.len(), "{family}: transformers has a gradient for every parameter");
    for (name, want) in grads {
        let got: Vec<f32> = Vec::try_from(m.params.get(name).grad().flatten(0, -1).narrow(0, 0, want.as_array().unwrap().len() as i64)).unwrap();
        for (a, b) in got.iter().zip(want.as_array().unwrap()) {
            let b = b.as_f64().unwrap();
            assert!((*a as f64 - b).abs() < 1e-4 * b.abs().max(1.0), "{family}: gradient of {name}: ours {got:?} vs {want}");
        }
    }
    m.params.zero_grad();
}

/// Token ids at each truncation, on the fast path where it applies and on the general one.
fn check_tokens(family: &str, texts: &[String], g: &serde_json::Value) {
    let tk = tokenize::tok::load(&fixtures().join("families").join(family)).unwrap();
    assert_eq!(tk.fast.is_some(), family == "distilbert", "{family}: the ASCII fast path is for BERT WordPiece only");
    for case in g["tokens"].as_array().unwrap() {
        let head = case["head_tokens"].as_u64();
        let p = pipeline::TokenizeParams {
            max_length: case["max_length"].as_u64().unwrap() as usize,
            truncation: if head.is_some() { pipeline::Truncation::HeadTail } else { pipeline::Truncation::Head },
            head_tokens: head.unwrap_or(0) as usize,
            shard_mib: 1,
            pair_truncation: Default::default(),
        };
        for (text, want) in texts.iter().zip(case["ids"].as_array().unwrap()) {
            let want: Vec<u32> = want.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(tk.encode(text, &p).unwrap().0, want, "{family}: {text:?} at {case:?}");
            assert_eq!(tk.encode_general(text, &p).unwrap().0, want, "{family}: {text:?} (general path)");
        }
    }
}

fn check_family(family: &str, all: &serde_json::Value) {
    let g = &all[family];
    let mut m = classifier(family, &serde_json::Value::Null);
    check_logits(family, &mut m, g);
    check_gradients(family, &m, g, g);
    // Config changes on the same weights (ModernBERT's [CLS] pooling, whose last layer runs for
    // the first position alone).
    for v in g["variants"].as_array().unwrap() {
        let what = format!("{family} with {}", v["config"]);
        let m = classifier(family, &v["config"]);
        check_fp32_logits(&what, &m, g, &v["logits"]);
        check_gradients(&what, &m, g, v);
    }
    let texts: Vec<String> = all["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().into()).collect();
    check_tokens(family, &texts, g);
    if let Some(long) = g.get("long") {
        let ids: Vec<i64> = long["ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        let x = model::inputs::upload(1, ids.len(), &ids, None, None, Device::Cpu);
        let got = rows_of(&tch::no_grad(|| m.forward(&x, false)));
        let d = max_diff(&got, &matrix(&long["logits"]));
        assert!(d < 1e-4, "{family} at {} tokens: ours {got:?} vs transformers {}", ids.len(), long["logits"]);
    }
}

#[test]
fn every_family_matches_golden_transformers() {
    let _rng = tests::torch_rng();
    let g = golden();
    for family in FAMILIES {
        check_family(family, &g);
    }
}

#[test]
fn every_family_matches_live_transformers() {
    let _rng = tests::torch_rng();
    let Some(python) = tests::venv_python_with("transformers") else {
        return tests::skip("every_family_matches_live_transformers", "the venv cannot import transformers", true);
    };
    let out = std::process::Command::new(&python).arg(fixtures().join("families/make_families.py")).arg("--check").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let live: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for family in FAMILIES {
        check_family(family, &live);
    }
}

/// The bare encoders load under the classifier's names (the head initialized fresh and said so);
/// a checkpoint of another family is refused naming what is missing.
#[test]
fn encoder_only_checkpoints_load_and_a_mismatch_is_named() {
    let _rng = tests::torch_rng();
    let heads = [
        ("roberta", vec!["classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"]),
        ("distilbert", vec!["pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"]),
        ("modernbert", vec!["head.dense.weight", "head.norm.weight", "classifier.weight", "classifier.bias"]),
    ];
    for (family, head) in heads {
        let dir = fixtures().join("families").join(family);
        let config = model::Config::from_file(&dir.join("config.json")).unwrap();
        let (_, report) = model::Model::load(config, 2, &dir.join("model.safetensors"), Device::Cpu, 0).unwrap();
        assert_eq!(report.initialized, head, "{family}");
    }
    let roberta = || model::Config::from_file(&fixtures().join("families/roberta/config.json")).unwrap();
    let e = model::Model::load(roberta(), 2, &fixtures().join("families/modernbert/model.safetensors"), Device::Cpu, 0).err().unwrap().to_string();
    assert!(e.contains("encoder weights are missing") && e.contains("roberta.embeddings") && e.contains("model_type"), "{e}");
    // Where the names agree but the shapes do not, the tensor is named.
    let e = model::Model::load(roberta(), 2, &fixtures().join("families/distilbert/model.safetensors"), Device::Cpu, 0).err().unwrap().to_string();
    assert!(e.contains("tensor roberta.embeddings.") && e.contains(" has shape [") && e.contains("the model expects ["), "{e}");
}
