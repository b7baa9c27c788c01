//! BERT-family encoders for sequence classification in tch, numerically matching Hugging Face
//! `BertForSequenceClassification`, with weights under Hugging Face names.
//!
//! * [`config`]: `config.json` as a serde struct.
//! * [`params`]: the named parameters (fp32 master copies), loading and saving safetensors.
//! * [`bert`]: the forward pass (embeddings, encoder layers with SDPA, pooler, classifier).
//! * [`inputs`]: a batch on the device; padded batches run on their real tokens only.
//! * [`infer`]: batched, length-sorted inference over a token split.
//! * [`device`]: resolving `auto|cpu|cuda|cuda:N`, and what libtorch can do here.
//!
//! New architectures (DistilBERT, RoBERTa) add a module beside `bert` and a variant of
//! [`Arch`]; the training loop only sees [`Model::forward`].

pub mod bert;
pub mod config;
pub mod device;
pub mod dropout;

/// Held by unit tests that seed libtorch's global generator (test threads share it).
#[cfg(test)]
pub(crate) fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

pub mod infer;
pub mod inputs;
pub mod params;

pub use config::BertConfig;
pub use inputs::Inputs;
pub use params::Params;

use tch::{Kind, Tensor};

/// The architectures we can build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Bert,
}

/// A classifier: config, parameters, and the dtype matrix products run in.
pub struct Model {
    pub arch: Arch,
    pub config: BertConfig,
    pub num_labels: i64,
    pub params: Params,
    /// `Kind::Float` (fp32) or `Kind::BFloat16` (bf16 compute over fp32 master weights).
    pub compute: Kind,
}

/// See [`Model::frozen`].
pub enum Frozen<'a> {
    Bert(bert::Weights<'a>),
}

impl Frozen<'_> {
    /// Logits `(rows, num_labels)` in fp32, as [`Model::forward`] without training.
    pub fn forward(&self, x: &Inputs) -> Tensor {
        match self {
            Frozen::Bert(w) => bert::forward_with(w, x, false),
        }
    }
}

/// What loading weights found.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Initialized fresh (not in the file): the pooler and classifier of an encoder-only file.
    pub initialized: Vec<String>,
    /// In the file but not used (MLM heads, buffers such as `position_ids`).
    pub unused: Vec<String>,
}

impl Model {
    /// Logits `(rows, num_labels)` in fp32.
    pub fn forward(&self, x: &Inputs, train: bool) -> Tensor {
        match self.arch {
            Arch::Bert => bert::forward(self, x, train),
        }
    }

    /// The model for a run of inference passes while its weights stay put (use it under
    /// `tch::no_grad`): in bf16 the working copy of the weights is cast once for the whole run
    /// instead of once per batch.
    pub fn frozen(&self) -> Frozen<'_> {
        match self.arch {
            Arch::Bert => Frozen::Bert(bert::Weights::new(self)),
        }
    }

    /// What dynamic batch lengths are rounded up to (when `limit`, the longest allowed length,
    /// is a multiple of it). On CUDA, 64: attention kernels are planned per shape (cuDNN builds
    /// an execution plan for each new one, tens of milliseconds), so lengths are kept to a few
    /// buckets. On CPU, 8.
    pub fn length_multiple(&self, limit: usize) -> usize {
        let cuda = matches!(self.params.flat().device(), tch::Device::Cuda(_));
        [if cuda { 64 } else { 8 }, 8, 1].into_iter().find(|m| limit.is_multiple_of(*m)).unwrap_or(1)
    }

    /// A model with random weights (HF's initialization), from a config alone.
    pub fn random(config: BertConfig, num_labels: i64, device: tch::Device, seed: u64) -> anyhow::Result<Model> {
        config.check()?;
        let params = Params::init(&config, num_labels, device, seed);
        Ok(Model { arch: Arch::Bert, config, num_labels, params, compute: Kind::Float })
    }

    /// A model from a Hugging Face safetensors file; missing pooler/classifier weights are
    /// initialized as HF does and reported.
    pub fn load(
        config: BertConfig,
        num_labels: i64,
        weights: &std::path::Path,
        device: tch::Device,
        seed: u64,
    ) -> anyhow::Result<(Model, LoadReport)> {
        config.check()?;
        let mut params = Params::init(&config, num_labels, device, seed);
        let report = params.load_hf(weights)?;
        Ok((Model { arch: Arch::Bert, config, num_labels, params, compute: Kind::Float }, report))
    }
}
