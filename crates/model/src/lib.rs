//! Transformer encoders for sequence classification in tch, numerically matching Hugging Face
//! `*ForSequenceClassification`, with weights under Hugging Face names.
//!
//! * [`Config`]: `config.json`, parsed into its family's typed config; [`Config::from_json`]
//!   is the one place a family is chosen.
//! * [`Family`]: what the generic parts (trainer, inference, optimizer, export) ask of a family.
//!   One file per family, its config struct beside its network: [`bert`], [`roberta`] (RoBERTa
//!   and XLM-RoBERTa), [`distilbert`], [`modernbert`].
//! * [`nn`]: the building blocks: a [`nn::Builder`] that declares parameters and hands back
//!   typed modules, the bf16 working copy ([`nn::Weights`]), attention.
//! * [`params`]: the named parameters (fp32 master copies in one flat buffer), loading and
//!   saving safetensors.
//! * [`inputs`]: a batch on the device; padded batches run on their real tokens only.
//! * [`infer`]: batched, length-sorted inference over a token split.
//! * [`device`]: resolving `auto|cpu|cuda|cuda:N`, and what libtorch can do here.

pub mod bert;
pub mod device;
pub mod distilbert;
pub mod dropout;
pub mod infer;
pub mod inputs;
pub mod lora;
pub mod loss;
pub mod modernbert;
pub mod nn;
pub mod params;
pub mod roberta;

/// Held by unit tests that seed libtorch's global generator (test threads share it).
#[cfg(test)]
pub(crate) fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
pub use bert::BertConfig;
pub use distilbert::DistilBertConfig;
pub use inputs::Inputs;
pub use modernbert::ModernBertConfig;
pub use params::Params;
pub use roberta::RobertaConfig;
use serde_json::{json, Value};
use tch::{Kind, Tensor};

/// What the rest of the workspace needs of an encoder family, implemented by its typed config.
pub trait Family: Send + Sync + std::fmt::Debug {
    /// Refuses values the family cannot run (sizes below one, unknown options), naming the key.
    fn check(&self) -> anyhow::Result<()>;
    /// Declares the parameters of `*ForSequenceClassification` with `num_labels` classes, in HF
    /// order, and builds the network over them (once, at load).
    fn build(&self, b: &mut nn::Builder, num_labels: i64) -> Box<dyn nn::Network>;
    fn vocab_size(&self) -> i64;
    /// The longest input, special tokens included, the model's positions allow.
    fn max_length(&self) -> i64;
    /// The `architectures` entry of a trained model's config.json.
    fn architecture(&self) -> &'static str;
    /// Where the encoder sits in the classifier's names (for encoder-only checkpoints).
    fn prefix(&self) -> params::Prefix;
    /// Forward matrix-product FLOPs per token at sequence length `seq` (for MFU).
    fn flops_per_token(&self, seq: f64) -> f64;
    /// The linear layers LoRA adapts by default (PEFT's defaults where it has them).
    fn lora_targets(&self) -> &'static [&'static str];
    /// The tokenizer class `AutoTokenizer` picks for the family from `config.json`'s
    /// `model_type` (a directory without that config, a PEFT adapter's, must name it).
    fn tokenizer_class(&self) -> &'static str;
    /// The typed config as JSON, defaults filled in.
    fn to_json(&self) -> Value;
}

/// The families we build, by `model_type`.
pub const SUPPORTED: &str = "bert, roberta, xlm-roberta, distilbert, modernbert";

/// A model's `config.json`: its family's typed config, and the file's own fields (written back
/// on export).
#[derive(Clone, Debug)]
pub struct Config {
    pub model_type: String,
    family: Arc<dyn Family>,
    raw: serde_json::Map<String, Value>,
}

fn typed<T: Family + serde::de::DeserializeOwned + 'static>(v: &Value) -> anyhow::Result<Arc<dyn Family>> {
    let c = T::deserialize(v)?;
    c.check()?;
    Ok(Arc::new(c))
}

impl Config {
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", path.display()))?;
        Config::from_json(v).with_context(|| format!("{}", path.display()))
    }

    /// Parses a config by its `model_type`. A file without one is read as BERT (older BERT
    /// checkpoints omit it). Adding a family is one new file and one arm here.
    pub fn from_json(v: Value) -> anyhow::Result<Config> {
        // Refused before the family is chosen, so the message is this one and not serde's.
        if !v.is_object() {
            bail!("config.json must be an object");
        }
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("bert").to_string();
        let family = match model_type.as_str() {
            "bert" => typed::<BertConfig>(&v)?,
            "roberta" | "xlm-roberta" => typed::<RobertaConfig>(&v)?,
            "distilbert" => typed::<DistilBertConfig>(&v)?,
            "modernbert" => typed::<ModernBertConfig>(&v)?,
            t if t.starts_with("deberta") => bail!(
                "model_type `{t}` (DeBERTa) is not supported: its Hub repositories ship a SentencePiece spm.model, which the tokenizers library cannot load; supported: {SUPPORTED}"
            ),
            t => bail!("model_type `{t}` is not supported; supported: {SUPPORTED}"),
        };
        let Value::Object(raw) = v else { bail!("config.json must be an object") };
        Ok(Config { model_type, family, raw })
    }

    pub fn family(&self) -> &dyn Family {
        &*self.family
    }

    /// The parameter layout and network of a classifier with `num_labels` classes.
    pub fn layout(&self, num_labels: i64) -> (nn::Layout, Box<dyn nn::Network>) {
        let mut b = nn::Builder::new();
        let net = self.family.build(&mut b, num_labels);
        let (layout, _) = b.finish(self.family.prefix().base).expect("a layout without LoRA always finishes");
        (layout, net)
    }

    /// [`Config::layout`] with LoRA adapters as `lora` asks (and what it resolved to); a
    /// target or module that names nothing in this family is an error naming it.
    pub fn layout_lora(&self, num_labels: i64, lora: &lora::Spec) -> anyhow::Result<(nn::Layout, Box<dyn nn::Network>, lora::Resolved)> {
        let mut b = nn::Builder::with_lora(lora::Plan::new(lora, self.family.lora_targets()));
        let net = self.family.build(&mut b, num_labels);
        let (layout, resolved) = b.finish(self.family.prefix().base)?;
        let resolved = resolved.ok_or_else(|| anyhow::anyhow!("the layout lost its LoRA plan"))?;
        Ok((layout, net, resolved))
    }

    /// The config.json shipped with trained weights: the base config (its own fields, then the
    /// typed defaults it left out) plus the classification head.
    pub fn classifier_json(&self, names: &[String], problem_type: &str) -> Value {
        let mut v = self.family.to_json();
        if let Some(o) = v.as_object_mut() {
            for (k, x) in &self.raw {
                o.insert(k.clone(), x.clone());
            }
            o.remove("_name_or_path");
            o.remove("gradient_checkpointing");
        }
        let id2label: serde_json::Map<String, Value> = names.iter().enumerate().map(|(i, n)| (i.to_string(), json!(n))).collect();
        let label2id: serde_json::Map<String, Value> = names.iter().enumerate().map(|(i, n)| (n.clone(), json!(i))).collect();
        v["architectures"] = json!([self.family.architecture()]);
        v["model_type"] = json!(self.model_type);
        v["num_labels"] = json!(names.len());
        v["problem_type"] = json!(problem_type);
        v["id2label"] = json!(id2label);
        v["label2id"] = json!(label2id);
        v
    }
}

impl From<BertConfig> for Config {
    fn from(c: BertConfig) -> Config {
        let raw = match serde_json::to_value(&c) {
            Ok(Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        Config { model_type: "bert".into(), family: Arc::new(c), raw }
    }
}

/// A classifier: config, parameters, the network over them, and the dtype matrix products run in.
pub struct Model {
    pub config: Config,
    pub num_labels: i64,
    pub params: Params,
    /// `Kind::Float` (fp32) or `Kind::BFloat16` (bf16 compute over fp32 master weights).
    pub compute: Kind,
    /// What `train.lora` resolved to; `None`: a full fine-tune (every parameter trains).
    pub lora: Option<lora::Resolved>,
    net: Box<dyn nn::Network>,
}

/// See [`Model::frozen`].
pub struct Frozen<'a> {
    weights: nn::Weights<'a>,
}

impl Frozen<'_> {
    /// Logits `(rows, num_labels)` in fp32, as [`Model::forward`] without training.
    pub fn forward(&self, x: &Inputs) -> Tensor {
        self.weights.model().net.forward(&self.weights, x, false)
    }
}

/// What loading weights found.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Initialized fresh (not in the file): the head of an encoder-only file.
    pub initialized: Vec<String>,
    /// In the file but not used (MLM heads, buffers such as `position_ids`).
    pub unused: Vec<String>,
}

impl Model {
    /// Logits `(rows, num_labels)` in fp32.
    pub fn forward(&self, x: &Inputs, train: bool) -> Tensor {
        self.net.forward(&nn::Weights::new(self).training(train), x, train)
    }

    /// The model for a run of inference passes while its weights stay put (use it under
    /// `tch::no_grad`): in bf16 the working copy of the weights is cast once for the whole run
    /// instead of once per batch.
    pub fn frozen(&self) -> Frozen<'_> {
        Frozen { weights: nn::Weights::new(self) }
    }

    /// What dynamic batch lengths are rounded up to (when `limit`, the longest allowed length,
    /// is a multiple of it). On CUDA, 64: attention kernels are planned per shape (cuDNN builds
    /// an execution plan for each new one, tens of milliseconds), so lengths are kept to a few
    /// buckets. On CPU, 8.
    pub fn length_multiple(&self, limit: usize) -> usize {
        let cuda = matches!(self.params.flat().device(), tch::Device::Cuda(_));
        [if cuda { 64 } else { 8 }, 8, 1].into_iter().find(|m| limit.is_multiple_of(*m)).unwrap_or(1)
    }

    /// The longest input the model takes.
    pub fn max_length(&self) -> usize {
        self.config.family().max_length().max(1) as usize
    }

    /// A model with random weights (HF's initialization), from a config alone.
    pub fn random(config: impl Into<Config>, num_labels: i64, device: tch::Device, seed: u64) -> anyhow::Result<Model> {
        Model::new(config.into(), num_labels, None, device, seed)
    }

    /// A model with random weights and, when `lora` is given, LoRA adapters over a frozen base
    /// (the adapters' `B` is zero, so it computes what the base computes).
    pub fn new(config: Config, num_labels: i64, lora: Option<&lora::Spec>, device: tch::Device, seed: u64) -> anyhow::Result<Model> {
        config.family().check()?;
        let (layout, net, lora) = match lora {
            Some(spec) => {
                let (layout, net, resolved) = config.layout_lora(num_labels, spec)?;
                (layout, net, Some(resolved))
            }
            None => {
                let (layout, net) = config.layout(num_labels);
                (layout, net, None)
            }
        };
        let params = Params::init(&layout, device, seed);
        Ok(Model { config, num_labels, params, compute: Kind::Float, lora, net })
    }

    /// A model from a Hugging Face safetensors file; missing head weights are initialized as
    /// HF does and reported.
    pub fn load(config: impl Into<Config>, num_labels: i64, weights: &Path, device: tch::Device, seed: u64) -> anyhow::Result<(Model, LoadReport)> {
        Model::load_with(config.into(), num_labels, None, weights, device, seed)
    }

    /// [`Model::load`], with LoRA adapters over the loaded weights when `lora` is given.
    pub fn load_with(config: Config, num_labels: i64, lora: Option<&lora::Spec>, weights: &Path, device: tch::Device, seed: u64) -> anyhow::Result<(Model, LoadReport)> {
        let mut m = Model::new(config, num_labels, lora, device, seed)?;
        let report = m.params.load_hf(weights, m.config.family().prefix())?;
        Ok((m, report))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // clippy.toml's allow-unwrap-in-tests misses some of these tests
    use super::*;
    use crate::nn::Weights;
    use tch::Device;

    /// A tiny config of each family, without dropout so that two passes can match exactly.
    /// ModernBERT's window (4 positions each way) is shorter than the batches below.
    fn tiny_configs() -> Vec<Config> {
        let common = json!({"vocab_size": 50, "max_position_embeddings": 40});
        let family = [
            json!({"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                   "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}),
            json!({"model_type": "roberta", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                   "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "type_vocab_size": 1}),
            json!({"model_type": "distilbert", "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "dropout": 0.0,
                   "attention_dropout": 0.0, "seq_classif_dropout": 0.0}),
            json!({"model_type": "modernbert", "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 48,
                   "local_attention": 8, "global_attn_every_n_layers": 2, "pad_token_id": 0}),
            json!({"model_type": "modernbert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 48,
                   "local_attention": 8, "layer_types": ["sliding_attention", "full_attention"], "classifier_pooling": "mean", "pad_token_id": 0}),
        ];
        family
            .into_iter()
            .map(|mut f| {
                f.as_object_mut().unwrap().extend(common.as_object().unwrap().clone());
                Config::from_json(f).unwrap()
            })
            .collect()
    }

    /// Logits and the flat master gradient of one training-mode pass over `x` with weights `w`.
    fn pass(w: &Weights, x: &Inputs) -> (Tensor, Tensor) {
        w.model().params.zero_grad();
        let logits = w.model().net.forward(w, x, true);
        logits.sum(Kind::Float).backward();
        (logits.detach(), w.model().params.flat_grad())
    }

    /// Right-padded rows of 12 positions (longer than ModernBERT's window), as ids and mask.
    fn batch() -> (Vec<i64>, Vec<i64>) {
        let lens = [12, 5, 9];
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for (r, &n) in lens.iter().enumerate() {
            for c in 0..12 {
                ids.push(if c < n { 2 + ((7 * r + 3 * c) % 45) as i64 } else { 1 });
                mask.push(i64::from(c < n));
            }
        }
        (ids, mask)
    }

    #[track_caller]
    fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
        let d = (a - b).abs().max().double_value(&[]);
        assert!(d < tol, "{what}: differ by {d}");
    }

    /// A right-padded batch runs packed; the same batch kept in its padded layout (as a
    /// left-padded one would be) gives the same logits and gradients, in every family.
    #[test]
    fn packed_and_padded_layouts_agree() {
        let _rng = torch_rng();
        let (ids, mask) = batch();
        for c in tiny_configs() {
            let m = Model::random(c.clone(), 3, Device::Cpu, 7).unwrap();
            // Sentence pairs: the second half of each row is type 1 (BERT reads it; the others do not).
            let types: Vec<i64> = (0..36).map(|i| i64::from(i % 12 >= 5 && mask[i] == 1)).collect();
            let packed = inputs::upload(3, 12, &ids, Some(&types), Some(&mask), Device::Cpu);
            assert!(packed.packed().is_some());
            let padded = Inputs {
                rows: 3,
                len: 12,
                ids: Tensor::from_slice(&ids),
                types: Some(Tensor::from_slice(&types)),
                padding: Some(inputs::Padding { mask: Tensor::from_slice(&mask).to_kind(Kind::Bool).view([3, 1, 1, 12]), packed: None }),
            };
            let ((la, ga), (lb, gb)) = (pass(&Weights::new(&m), &packed), pass(&Weights::new(&m), &padded));
            assert_close(&la, &lb, 1e-5, &format!("{} logits", c.model_type));
            assert_close(&ga, &gb, 1e-5, &format!("{} gradients", c.model_type));
            assert!(ga.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        }
    }

    /// Padding does not change a row's logits: each row alone, unpadded, gives what it gives
    /// inside the padded batch (the windowed masks and RoBERTa's positions see real tokens only).
    #[test]
    fn a_row_alone_equals_the_row_in_a_padded_batch() {
        let _rng = torch_rng();
        let (ids, mask) = batch();
        for c in tiny_configs() {
            let m = Model::random(c.clone(), 3, Device::Cpu, 5).unwrap();
            let all = tch::no_grad(|| m.forward(&inputs::upload(3, 12, &ids, None, Some(&mask), Device::Cpu), false));
            for r in 0..3 {
                let n = mask[r * 12..(r + 1) * 12].iter().sum::<i64>() as usize;
                let alone = tch::no_grad(|| m.forward(&inputs::upload(1, n, &ids[r * 12..r * 12 + n], None, None, Device::Cpu), false));
                assert_close(&alone.get(0), &all.get(r as i64), 1e-5, &format!("{} row {r}", c.model_type));
            }
        }
    }

    /// bf16: the per-pass working copy gives the logits and master gradients of a cast at each
    /// use, bit for bit, in every family; inference's one copy for many batches gives the
    /// logits of a copy per pass.
    #[test]
    fn bf16_working_copy_equals_casting_at_each_use() {
        let _rng = torch_rng();
        let (ids, mask) = batch();
        let x = inputs::upload(3, 12, &ids, None, Some(&mask), Device::Cpu);
        for c in tiny_configs() {
            let mut m = Model::random(c.clone(), 3, Device::Cpu, 11).unwrap();
            m.compute = Kind::BFloat16;
            let copy = Weights::new(&m);
            let linear = (0..m.params.len()).filter(|&i| m.params.linear().contains(&i)).count();
            assert_eq!(copy.copied(), linear, "{}: every linear parameter is in the copy", c.model_type);
            let (la, ga) = pass(&copy, &x);
            let (lb, gb) = pass(&Weights::cast_at_use(&m), &x);
            assert!(la.equal(&lb), "{}: logits differ", c.model_type);
            assert!(ga.equal(&gb), "{}: gradients differ", c.model_type);
            assert_eq!(ga.kind(), Kind::Float);
            assert!(m.params.grads().iter().all(|(_, g)| g.is_some()), "{}: a parameter got no gradient", c.model_type);
            let frozen = tch::no_grad(|| m.frozen().forward(&x));
            let per_pass = tch::no_grad(|| m.forward(&x, false));
            assert!(frozen.equal(&per_pass), "{}: frozen logits differ", c.model_type);
        }
    }

    /// The fused query/key/value product (one matrix of three) gives the logits and gradients
    /// of three products, packed and unpadded (fp32: the fusion is the only difference).
    #[test]
    fn fused_qkv_equals_three_products() {
        let _rng = torch_rng();
        let (ids, mask) = batch();
        let packed = inputs::upload(3, 12, &ids, None, Some(&mask), Device::Cpu);
        let full = inputs::upload(1, 12, &ids[..12], None, None, Device::Cpu);
        for c in tiny_configs().into_iter().filter(|c| c.model_type != "modernbert") {
            let m = Model::random(c.clone(), 3, Device::Cpu, 13).unwrap();
            assert!(!m.params.fused().is_empty());
            for x in [&packed, &full] {
                let (la, ga) = pass(&Weights::new(&m), x);
                let (lb, gb) = pass(&Weights::cast_at_use(&m), x);
                assert_close(&la, &lb, 1e-5, &format!("{} logits", c.model_type));
                assert_close(&ga, &gb, 1e-5, &format!("{} gradients", c.model_type));
            }
        }
    }

    fn lora(dropout: f64) -> lora::Spec {
        lora::Spec { r: 4, alpha: 8.0, dropout, target_modules: None, modules_to_save: Vec::new() }
    }

    /// Gives every adapter's `B` (zero at init) random values, so the update is not zero.
    fn perturb_adapters(m: &Model) {
        tch::no_grad(|| {
            for a in m.params.adapters() {
                let mut b = m.params.tensors[a.b].shallow_clone();
                b.copy_(&b.randn_like());
            }
        });
    }

    /// LoRA starts at the base (B = 0, and the base and head values are those of a full
    /// fine-tune with the seed; equal up to summation order, the weights sitting at other
    /// offsets of the flat buffer); once B moves, the adapted model computes what the merged
    /// weights compute, in every family, packed and unpadded.
    #[test]
    fn lora_starts_at_the_base_and_equals_its_merged_weights() {
        let _rng = torch_rng();
        let (ids, mask) = batch();
        let packed = inputs::upload(3, 12, &ids, None, Some(&mask), Device::Cpu);
        let full = inputs::upload(1, 12, &ids[..12], None, None, Device::Cpu);
        for c in tiny_configs() {
            let base = Model::random(c.clone(), 3, Device::Cpu, 9).unwrap();
            let m = Model::new(c.clone(), 3, Some(&lora(0.0)), Device::Cpu, 9).unwrap();
            let adapted = m.lora.as_ref().unwrap().adapted.len();
            assert_eq!(adapted, m.params.adapters().len());
            assert!(adapted >= 2, "{}: {adapted} adapters", c.model_type);
            for x in [&packed, &full] {
                let (a, b) = tch::no_grad(|| (base.forward(x, false), m.forward(x, false)));
                assert_close(&a, &b, 1e-6, &format!("{}: B = 0 must give the base logits", c.model_type));
            }
            perturb_adapters(&m);
            let merged = Model::random(c.clone(), 3, Device::Cpu, 1).unwrap();
            let assigned = merged.params.assign(&m.params.merged(), "merged").unwrap();
            assert_eq!(assigned.len(), merged.params.len(), "{}: the merged weights are a plain model", c.model_type);
            for x in [&packed, &full] {
                let (a, b, o) = tch::no_grad(|| (m.forward(x, false), merged.forward(x, false), base.forward(x, false)));
                assert_close(&a, &b, 1e-5, &format!("{} LoRA vs merged", c.model_type));
                assert!((&a - &o).abs().max().double_value(&[]) > 1e-4, "{}: the update changes the logits", c.model_type);
            }
        }
    }

    /// Under LoRA only the adapters and the head get gradients (the base has none, in fp32 and
    /// in bf16, whose frozen working copy is cast outside autograd); the trainable parameters
    /// are a prefix of the flat buffer; a training pass with dropout differs from an eval pass.
    #[test]
    fn lora_gradients_reach_only_adapters_and_head() {
        let _rng = torch_rng();
        let (ids, mask) = batch();
        let x = inputs::upload(3, 12, &ids, None, Some(&mask), Device::Cpu);
        for c in tiny_configs() {
            for kind in [Kind::Float, Kind::BFloat16] {
                let mut m = Model::new(c.clone(), 3, Some(&lora(0.0)), Device::Cpu, 3).unwrap();
                m.compute = kind;
                perturb_adapters(&m);
                let (_, g) = pass(&Weights::new(&m).training(true), &x);
                assert_eq!(g.numel() as i64, m.params.n_trainable());
                let p = &m.params;
                let trained: i64 = (0..p.len()).filter(|&i| p.trainable(i)).map(|i| p.tensors[i].numel() as i64).sum();
                assert_eq!(trained, p.n_trainable());
                assert!(trained * 4 < p.numel(), "{}: LoRA trains a small part", c.model_type);
                for (i, (_, grad)) in p.grads().iter().enumerate() {
                    let n = &p.names[i];
                    assert_eq!(grad.is_some(), p.trainable(i), "{} {kind:?}: {n}", c.model_type);
                    let head_or_lora = p.slots_head(i) || n.contains(".lora_");
                    assert_eq!(p.trainable(i), head_or_lora, "{}: {n}", c.model_type);
                }
            }
            let m = Model::new(c.clone(), 3, Some(&lora(0.5)), Device::Cpu, 3).unwrap();
            perturb_adapters(&m);
            let (train, eval) = tch::no_grad(|| (m.forward(&x, true), m.forward(&x, false)));
            assert!(!train.equal(&eval), "{}: LoRA dropout applies in training", c.model_type);
        }
    }

    /// bf16's fused query/key/value product adds each part's LoRA update to its own columns:
    /// it equals the three products with their updates, for the whole group and for the keys
    /// and values alone (the [CLS]-only last layer).
    #[test]
    fn fused_product_carries_lora_updates_on_their_parts() {
        let _rng = torch_rng();
        let c = tiny_configs().remove(0);
        let mut m = Model::new(c, 3, Some(&lora(0.0)), Device::Cpu, 4).unwrap();
        m.compute = Kind::BFloat16;
        perturb_adapters(&m);
        let w = Weights::new(&m);
        let x = Tensor::randn([7, 32], (Kind::Float, Device::Cpu));
        let group = m.params.fused()[0].clone();
        assert!(group[0].lora.is_some() && group[1].lora.is_none() && group[2].lora.is_some());
        for from in [0, 1] {
            let fused = w.fused(nn::Fused(0), &x, from).unwrap().to_kind(Kind::Float);
            let parts = Tensor::cat(&group[from..].iter().map(|l| w.linear(l, &x)).collect::<Vec<_>>(), 1).to_kind(Kind::Float);
            assert_close(&fused, &parts, 2e-2, &format!("fused from part {from}"));
        }
    }

    /// Targets and modules that name nothing are refused with the names that exist; a module
    /// both adapted and saved is refused; `all-linear` adapts every encoder layer, never the head.
    #[test]
    fn lora_settings_are_checked_against_the_family() {
        let c = tiny_configs().remove(0);
        let with = |targets, save: &[&str]| {
            let spec = lora::Spec { target_modules: targets, modules_to_save: save.iter().map(|s| s.to_string()).collect(), ..lora(0.1) };
            c.layout_lora(2, &spec).map(|(_, _, r)| r)
        };
        let e = with(Some(pipeline::TargetModules::List(vec!["q_proj".into()])), &[]).err().unwrap().to_string();
        assert!(e.contains("`q_proj`") && e.contains("`query`") && e.contains("target_modules"), "{e}");
        let e = with(None, &["poolr"]).err().unwrap().to_string();
        assert!(e.contains("`poolr`") && e.contains("pooler, classifier"), "{e}");
        let e = with(Some(pipeline::TargetModules::List(vec!["query".into()])), &["layer.0.attention"]).err().unwrap().to_string();
        assert!(e.contains("both adapted"), "{e}");
        let all = with(Some(pipeline::TargetModules::Rule(pipeline::TargetRule::AllLinear)), &[]).unwrap();
        assert_eq!(all.adapted.len(), 2 * 6, "q, k, v, attention output, intermediate, output per layer");
        assert!(all.adapted.iter().all(|m| !m.contains("pooler") && m != "classifier"));
        let r = with(None, &["LayerNorm"]).unwrap();
        assert_eq!(r.modules_to_save, ["pooler", "classifier", "LayerNorm"]);
        assert_eq!(r.target_modules, ["query", "value"]);
        // `dense` would also match the pooler's layer for PEFT: the adapted paths are written.
        let d = with(Some(pipeline::TargetModules::List(vec!["output.dense".into()])), &[]).unwrap();
        assert_eq!(d.target_modules, ["output.dense"]);
        let d = with(Some(pipeline::TargetModules::List(vec!["dense".into()])), &[]).unwrap();
        assert_eq!(d.target_modules, d.adapted);
        assert_eq!(d.adapted.len(), 2 * 3);
    }

    #[test]
    fn unsupported_families_are_refused_by_name() {
        let e = Config::from_json(json!({"model_type": "deberta-v2"})).unwrap_err().to_string();
        assert!(e.contains("spm.model") && e.contains(SUPPORTED), "{e}");
        let e = Config::from_json(json!({"model_type": "gpt2"})).unwrap_err().to_string();
        assert!(e.contains("`gpt2`") && e.contains(SUPPORTED), "{e}");
        let e = Config::from_json(json!({"model_type": "bert", "hidden_act": "mish"})).unwrap_err().to_string();
        assert!(e.contains("mish"), "{e}");
        for key in ["num_attention_heads", "num_hidden_layers", "hidden_size"] {
            let e = Config::from_json(json!({"model_type": "bert", key: 0})).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("at least 1"), "{e}");
        }
    }

    /// ModernBERT's two config spellings give the same layers and thetas.
    #[test]
    fn modernbert_reads_both_config_spellings() {
        let hub: ModernBertConfig = serde_json::from_value(json!({"num_hidden_layers": 4, "global_attn_every_n_layers": 3,
            "global_rope_theta": 160000.0, "local_rope_theta": 10000.0})).unwrap();
        let v5: ModernBertConfig = serde_json::from_value(json!({"num_hidden_layers": 4,
            "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
            "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 160000.0},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}})).unwrap();
        for c in [&hub, &v5] {
            use modernbert::LayerType::*;
            assert_eq!(c.layer_types(), [FullAttention, SlidingAttention, SlidingAttention, FullAttention]);
            assert_eq!((c.rope_theta(FullAttention), c.rope_theta(SlidingAttention)), (160000.0, 10000.0));
        }
        let e = Config::from_json(json!({"model_type": "modernbert", "rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1.0}}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("yarn"), "{e}");
    }

    /// The config shipped with trained weights keeps the file's fields and names the family's
    /// classifier; RoBERTa's positions leave pad_token_id + 1 of the table unused.
    #[test]
    fn classifier_json_names_the_family() {
        let c = Config::from_json(json!({"model_type": "xlm-roberta", "max_position_embeddings": 514, "pad_token_id": 1, "custom": 7})).unwrap();
        let v = c.classifier_json(&["neg".into(), "pos".into()], "single_label_classification");
        assert_eq!(v["architectures"], json!(["XLMRobertaForSequenceClassification"]));
        assert_eq!((v["model_type"].clone(), v["custom"].clone(), v["num_labels"].clone()), (json!("xlm-roberta"), json!(7), json!(2)));
        assert_eq!(c.family().max_length(), 512);
        let d = Config::from_json(json!({"model_type": "distilbert"})).unwrap();
        assert_eq!(d.classifier_json(&["a".into(), "b".into()], "regression")["architectures"], json!(["DistilBertForSequenceClassification"]));
    }
}
