//! Named parameters under Hugging Face names (`bert.encoder.layer.0.attention.self.query.weight`,
//! `classifier.weight`, ...), kept in fp32 as the master copy; HF initialization from a family's
//! [`Layout`]; safetensors loading (encoder-only checkpoints renamed by the family) and saving.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context as _};
use tch::{Device, Kind, Tensor};

use crate::nn::{Adapter, Init, Layout, Linear, Slot};
use crate::LoadReport;

/// Parameters in a fixed order (the order HF lists them), each a leaf tensor requiring grad.
///
/// All of them are views of one flat fp32 buffer ([`Params::flat`]): the trainable parameters
/// first (weight-decayed ones first among them), then the frozen ones (the base under LoRA), so
/// an optimizer updates every trainable parameter with a handful of kernels on a prefix of the
/// flat buffer instead of a dozen per parameter, and holds state for that prefix only.
pub struct Params {
    pub names: Vec<String>,
    pub tensors: Vec<Tensor>,
    index: HashMap<String, usize>,
    /// The layout's slots (decay, head, linear flags), by index.
    slots: Vec<Slot>,
    /// Fused groups of linear layers (see [`crate::nn::Fused`]).
    fused: Vec<Vec<Linear>>,
    /// LoRA adapters (see [`crate::lora`]).
    adapters: Vec<Adapter>,
    /// Indices of the linear layers' weights and biases, in the order of [`Params::linear`].
    linear: Vec<usize>,
    flat: Tensor,
    /// Offset of each parameter (by index in `names`) in `flat`.
    offsets: Vec<i64>,
    /// Parameter indices in flat order.
    flat_order: Vec<usize>,
    /// Elements of `flat` that get weight decay (a prefix).
    n_decay: i64,
    /// Elements of `flat` that train (a prefix; all of them without LoRA).
    n_trainable: i64,
    /// The frozen linear parameters cast for the compute dtype once (see
    /// [`Params::frozen_copy`]); cleared when values are assigned.
    frozen_cast: std::sync::Mutex<Option<(Kind, Tensor)>>,
    /// Holds every parameter only for [`Params::zero_grad`]: libtorch's `Optimizer::zero_grad`
    /// is the one call tch exposes that resets gradients to undefined. Never stepped.
    grad_reset: tch::COptimizer,
}

/// A fresh value for one slot, on the CPU (so every device gets the same values).
fn init_value(slot: &Slot) -> Tensor {
    let shape = slot.shape.as_slice();
    let cpu = (Kind::Float, Device::Cpu);
    match slot.init {
        Init::Normal(std) => Tensor::randn(shape, cpu) * std,
        Init::NormalPadZero(std, pad) => {
            let t = Tensor::randn(shape, cpu) * std;
            if pad >= 0 && pad < shape[0] {
                let _ = t.get(pad).fill_(0.0);
            }
            t
        }
        Init::TruncNormal { std, cutoff } => {
            // torch's trunc_normal_: uniform between the normal CDF at the bounds, then the
            // inverse CDF (via erfinv), clamped to the bounds.
            let cdf = |x: f64| 0.5 * (1.0 + Tensor::from(x / std::f64::consts::SQRT_2).erf().double_value(&[]));
            let (lo, hi) = (cdf(-cutoff), cdf(cutoff));
            let u = Tensor::rand(shape, cpu) * (2.0 * (hi - lo)) + (2.0 * lo - 1.0);
            (u.erfinv() * (std * std::f64::consts::SQRT_2)).clamp(-cutoff * std, cutoff * std)
        }
        Init::Sinusoidal => {
            // HF's create_sinusoidal_embeddings: angle pos / 10000^(2⌊j/2⌋/dim); sine at even
            // columns, cosine at odd ones.
            let (n, dim) = (shape[0], shape[1]);
            let pos = Tensor::arange(n, cpu).unsqueeze(1);
            let j = Tensor::arange(dim, cpu);
            let exponent = (j.floor_divide_scalar(2) * 2.0) / dim as f64;
            let angle = pos / Tensor::from(10000.0f64).to_kind(Kind::Float).pow(&exponent).unsqueeze(0);
            let even = Tensor::arange(dim, (Kind::Int64, Device::Cpu)).remainder(2).eq(0);
            angle.sin().where_self(&even.unsqueeze(0), &angle.cos())
        }
        Init::Uniform(bound) => Tensor::rand(shape, cpu) * (2.0 * bound) - bound,
        Init::Zeros => Tensor::zeros(shape, cpu),
        Init::Ones => Tensor::ones(shape, cpu),
    }
}

/// `t` as `kind` in host memory, always a copy (on CPU too): it stays as it is while training
/// goes on changing `t`, so a background thread may write it out.
pub fn host_copy(t: &Tensor, kind: Kind) -> Tensor {
    t.to_device_(Device::Cpu, kind, false, true)
}

/// Where a family's encoder sits in its `*ForSequenceClassification` names: the base model's
/// attribute (`bert`, `roberta`, `distilbert`, `model`) and the base model's top-level modules,
/// which encoder-only checkpoints (all-MiniLM-L6-v2, a bare `BertModel`) write without it.
#[derive(Clone, Copy, Debug)]
pub struct Prefix {
    pub base: &'static str,
    pub roots: &'static [&'static str],
}

/// Maps a checkpoint's tensor name to ours: adds the base model's prefix that encoder-only files
/// lack, and renames TF-era `gamma`/`beta`.
pub fn canonical_name(name: &str, prefix: Prefix) -> String {
    let bare = prefix.roots.iter().any(|r| name.strip_prefix(r).is_some_and(|rest| rest.starts_with('.')));
    let n = if bare { format!("{}.{name}", prefix.base) } else { name.to_string() };
    if let Some(stem) = n.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = n.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        n
    }
}

impl Params {
    /// Fresh parameters for `layout`, initialized as HF does, deterministically from `seed`
    /// (generated on the CPU, so every device gets the same values).
    pub fn init(layout: &Layout, device: Device, seed: u64) -> Params {
        tch::manual_seed(seed as i64);
        let slots = layout.slots.clone();
        let names: Vec<String> = slots.iter().map(|s| s.name.clone()).collect();
        let values: Vec<Tensor> = tch::no_grad(|| slots.iter().map(init_value).collect());
        // Flat order: trainable decayed, trainable not decayed, frozen; each in layout order.
        let group = |i: usize| match (slots[i].trainable, slots[i].decay) {
            (true, true) => 0,
            (true, false) => 1,
            (false, _) => 2,
        };
        let mut flat_order: Vec<usize> = (0..names.len()).collect();
        flat_order.sort_by_key(|&i| group(i));
        let mut offsets = vec![0i64; names.len()];
        let (mut at, mut n_decay, mut n_trainable) = (0i64, 0i64, 0i64);
        for &i in &flat_order {
            offsets[i] = at;
            at += values[i].numel() as i64;
            if group(i) == 0 {
                n_decay = at;
            }
            if group(i) < 2 {
                n_trainable = at;
            }
        }
        let ordered: Vec<Tensor> = flat_order.iter().map(|&i| values[i].view(-1)).collect();
        let flat = Tensor::cat(&ordered, 0).to_device(device);
        let tensors: Vec<Tensor> = (0..names.len())
            .map(|i| {
                let n = values[i].numel() as i64;
                flat.narrow(0, offsets[i], n).view(slots[i].shape.as_slice()).detach().set_requires_grad(slots[i].trainable)
            })
            .collect();
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        let mut grad_reset = tch::COptimizer::sgd(0.0, 0.0, 0.0, 0.0, false).expect("libtorch builds an SGD optimizer");
        for t in &tensors {
            grad_reset.add_parameters(t, 0).expect("libtorch takes a parameter");
        }
        let linear = Params::linear_order(layout);
        Params {
            names,
            tensors,
            index,
            slots,
            fused: layout.fused.clone(),
            adapters: layout.adapters.clone(),
            linear,
            flat,
            offsets,
            flat_order,
            n_decay,
            n_trainable,
            frozen_cast: std::sync::Mutex::new(None),
            grad_reset,
        }
    }

    /// The flat fp32 buffer every parameter is a view of.
    pub fn flat(&self) -> &Tensor {
        &self.flat
    }

    /// Elements at the start of [`Params::flat`] that get weight decay.
    pub fn n_decay(&self) -> i64 {
        self.n_decay
    }

    /// A view of `buffer` (shaped like [`Params::flat`]) for parameter `i`.
    pub fn view_of(&self, buffer: &Tensor, i: usize) -> Tensor {
        let t = &self.tensors[i];
        buffer.narrow(0, self.offsets[i], t.numel() as i64).view(t.size().as_slice())
    }

    /// Elements at the start of [`Params::flat`] that train (every element without LoRA).
    pub fn n_trainable(&self) -> i64 {
        self.n_trainable
    }

    /// Whether parameter `i` belongs to the classification head.
    pub fn slots_head(&self, i: usize) -> bool {
        self.slots[i].head
    }

    /// Whether parameter `i` trains.
    pub fn trainable(&self, i: usize) -> bool {
        self.slots[i].trainable
    }

    /// The LoRA adapters (empty for a full fine-tune).
    pub fn adapters(&self) -> &[Adapter] {
        &self.adapters
    }

    /// The trainable parameters' gradients, laid out like the first [`Params::n_trainable`]
    /// elements of [`Params::flat`] (zeros where a parameter has none), in fp32.
    pub fn flat_grad(&self) -> Tensor {
        self.flat_grad_of(&self.grads())
    }

    /// [`Params::flat_grad`] from gradients already read with [`Params::grads`].
    pub fn flat_grad_of(&self, grads: &[(i64, Option<Tensor>)]) -> Tensor {
        let parts: Vec<Tensor> = self
            .flat_order
            .iter()
            .filter(|&&i| self.slots[i].trainable)
            .map(|&i| match &grads[i].1 {
                Some(g) => g.to_kind(Kind::Float).view(-1),
                None => Tensor::zeros([self.tensors[i].numel() as i64], (Kind::Float, self.tensors[i].device())),
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// Each parameter's offset in [`Params::flat`] and its gradient, if it has one.
    pub fn grads(&self) -> Vec<(i64, Option<Tensor>)> {
        self.tensors
            .iter()
            .zip(&self.offsets)
            .map(|(t, &off)| {
                let g = t.grad();
                (off, g.defined().then_some(g))
            })
            .collect()
    }

    /// Clears every parameter's gradient: resets it to undefined, as PyTorch's
    /// `zero_grad(set_to_none=True)`. The next backward pass then hands each parameter its new
    /// gradient instead of adding it to zeros — a zeroing pass and an adding pass over the whole
    /// model saved per step, same values.
    pub fn zero_grad(&self) {
        if let Err(e) = self.grad_reset.zero_grad() {
            panic!("libtorch could not reset the gradients: {e}");
        }
    }

    pub fn get(&self, name: &str) -> &Tensor {
        &self.tensors[self.index_of(name)]
    }

    /// Indices (in [`Params::names`]) of the linear layers' weights and biases: the parameters
    /// matrix products read, which run in the model's compute dtype. Ordered for the bf16
    /// working copy ([`crate::nn::Weights`]): each fused group's weights, then its biases, then
    /// the rest.
    pub fn linear(&self) -> &[usize] {
        &self.linear
    }

    /// The index of parameter `name` in [`Params::names`].
    pub fn index_of(&self, name: &str) -> usize {
        match self.index.get(name) {
            Some(&i) => i,
            None => panic!("no parameter {name}: the layout and the forward pass disagree"),
        }
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn numel(&self) -> i64 {
        self.tensors.iter().map(|t| t.numel() as i64).sum()
    }

    /// Parameters `order` concatenated and cast to `kind`, in the graph (the trainable part of
    /// the bf16 working copy).
    pub(crate) fn cast(&self, order: &[usize], kind: Kind) -> Tensor {
        match order {
            [] => Tensor::zeros([0], (kind, self.flat.device())),
            _ => Tensor::cat(&order.iter().map(|&i| self.tensors[i].view(-1)).collect::<Vec<_>>(), 0).to_kind(kind),
        }
    }

    /// Frozen parameters `order` concatenated and cast to `kind` outside autograd, made once and
    /// kept until values are next assigned: the frozen base's part of the bf16 working copy.
    pub(crate) fn frozen_copy(&self, order: &[usize], kind: Kind) -> Tensor {
        let mut cache = self.frozen_cast.lock().unwrap_or_else(|e| e.into_inner());
        match &*cache {
            Some((k, t)) if *k == kind && t.numel() as i64 == order.iter().map(|&i| self.tensors[i].numel() as i64).sum::<i64>() => t.shallow_clone(),
            _ => {
                let t = tch::no_grad(|| self.cast(order, kind));
                *cache = Some((kind, t.shallow_clone()));
                t
            }
        }
    }

    /// Copies values into the parameters by name (shapes must match).
    pub fn assign(&self, named: &[(String, Tensor)], origin: &str) -> anyhow::Result<Vec<String>> {
        *self.frozen_cast.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut assigned = Vec::new();
        tch::no_grad(|| -> anyhow::Result<()> {
            for (name, t) in named {
                let Some(&i) = self.index.get(name) else { continue };
                let dst = &self.tensors[i];
                if dst.size() != t.size() {
                    bail!(
                        "{origin}: tensor {name} has shape {:?}, the model expects {:?}: config.json does not match these weights",
                        t.size(),
                        dst.size()
                    );
                }
                let mut d = dst.shallow_clone();
                d.copy_(&t.to_kind(Kind::Float).to_device(dst.device()));
                assigned.push(name.clone());
            }
            Ok(())
        })?;
        Ok(assigned)
    }

    /// Loads a Hugging Face safetensors file, names mapped by [`canonical_name`]. Encoder
    /// weights must all be present; the head's may be missing (then they keep their fresh
    /// initialization, as `from_pretrained` does).
    pub fn load_hf(&mut self, path: &Path, prefix: Prefix) -> anyhow::Result<LoadReport> {
        let raw = Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))?;
        let mut named = Vec::with_capacity(raw.len());
        let mut unused = Vec::new();
        for (name, t) in raw {
            let c = canonical_name(&name, prefix);
            if self.index.contains_key(&c) {
                named.push((c, t));
            } else {
                unused.push(name);
            }
        }
        let assigned = self.assign(&named, &path.display().to_string())?;
        let got: std::collections::HashSet<&String> = assigned.iter().collect();
        // LoRA's adapters are never in a pretrained file: they start fresh, unreported.
        let adapter: std::collections::HashSet<usize> = self.adapters.iter().flat_map(|a| [a.a, a.b]).collect();
        let missing: Vec<usize> = (0..self.len()).filter(|&i| !got.contains(&self.names[i]) && !adapter.contains(&i)).collect();
        let required: Vec<&String> = missing.iter().filter(|&&i| !self.slots[i].head).map(|&i| &self.names[i]).collect();
        if !required.is_empty() {
            bail!(
                "{}: {} encoder weights are missing (first: {:?}); does config.json's model_type match this checkpoint?",
                path.display(),
                required.len(),
                &required[..required.len().min(3)]
            );
        }
        unused.sort();
        Ok(LoadReport { initialized: missing.iter().map(|&i| self.names[i].clone()).collect(), unused })
    }

    /// Loads our own safetensors (exact names, all required).
    pub fn load_exact(&self, path: &Path) -> anyhow::Result<()> {
        let raw = Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))?;
        let assigned = self.assign(&raw, &path.display().to_string())?;
        if assigned.len() != self.len() {
            bail!("{}: has {} of the model's {} tensors", path.display(), assigned.len(), self.len());
        }
        Ok(())
    }

    /// Loads the trainable parameters from our own safetensors (a checkpoint's or best weights:
    /// exact names, every trainable parameter required; the frozen base is not in them).
    pub fn load_trainable(&self, path: &Path) -> anyhow::Result<()> {
        let raw = Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))?;
        let trained: Vec<(String, Tensor)> = raw.into_iter().filter(|(n, _)| self.index.get(n).is_some_and(|&i| self.slots[i].trainable)).collect();
        let assigned = self.assign(&trained, &path.display().to_string())?;
        let wanted = self.slots.iter().filter(|s| s.trainable).count();
        if assigned.len() != wanted {
            bail!("{}: has {} of the model's {wanted} trainable tensors", path.display(), assigned.len());
        }
        Ok(())
    }

    /// The parameters under HF names as `kind`, copied to host memory (see [`host_copy`]).
    pub fn host_copy(&self, kind: Kind) -> Vec<(String, Tensor)> {
        self.names.iter().zip(&self.tensors).map(|(n, t)| (n.clone(), host_copy(&t.detach(), kind))).collect()
    }

    /// [`Params::host_copy`] of the trainable parameters only (what a checkpoint holds).
    pub fn host_copy_trainable(&self, kind: Kind) -> Vec<(String, Tensor)> {
        (0..self.len()).filter(|&i| self.slots[i].trainable).map(|i| (self.names[i].clone(), host_copy(&self.tensors[i].detach(), kind))).collect()
    }

    /// Saves under HF names, as `kind` (fp32, bf16 or fp16).
    pub fn save(&self, path: &Path, kind: Kind) -> anyhow::Result<()> {
        Tensor::write_safetensors(&self.host_copy(kind), path).with_context(|| format!("writing {}", path.display()))
    }

    /// Whether parameter `i` gets weight decay (HF Trainer: not biases, not LayerNorm weights).
    pub fn decays(&self, i: usize) -> bool {
        self.slots[i].decay
    }

    /// The fused groups of linear layers (see [`crate::nn::Fused`]).
    pub fn fused(&self) -> &[Vec<Linear>] {
        &self.fused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BERT: Prefix = Prefix { base: "bert", roots: &["embeddings", "encoder", "pooler"] };

    #[test]
    fn names_are_canonicalized() {
        assert_eq!(canonical_name("embeddings.word_embeddings.weight", BERT), "bert.embeddings.word_embeddings.weight");
        assert_eq!(canonical_name("bert.pooler.dense.bias", BERT), "bert.pooler.dense.bias");
        assert_eq!(canonical_name("encoder.layer.0.output.LayerNorm.gamma", BERT), "bert.encoder.layer.0.output.LayerNorm.weight");
        assert_eq!(canonical_name("classifier.weight", BERT), "classifier.weight");
        assert_eq!(canonical_name("encoderless.weight", BERT), "encoderless.weight", "a root matches a whole module name");
    }

    fn tiny() -> Params {
        let c = crate::Config::from(crate::BertConfig::tiny(20));
        Params::init(&c.layout(2).0, Device::Cpu, 3)
    }

    #[test]
    fn decay_groups() {
        let p = tiny();
        let decays = |n: &str| p.decays(p.index_of(n));
        assert!(decays("bert.encoder.layer.0.attention.self.query.weight"));
        assert!(decays("bert.embeddings.word_embeddings.weight"));
        assert!(!decays("bert.encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("bert.embeddings.LayerNorm.weight"));
        assert!(!decays("classifier.bias"));
        // The decayed parameters are a prefix of the flat buffer.
        let n: i64 = (0..p.len()).filter(|&i| p.decays(i)).map(|i| p.tensors[i].numel() as i64).sum();
        assert_eq!(n, p.n_decay());
    }

    #[test]
    fn truncated_normal_and_sinusoidal_inits() {
        let _rng = crate::torch_rng();
        tch::manual_seed(5);
        let slot = |init| Slot { name: "x".into(), shape: vec![200, 50], init, linear: false, decay: false, head: false, trainable: true };
        let t = init_value(&slot(Init::TruncNormal { std: 0.1, cutoff: 2.0 }));
        assert!(t.abs().max().double_value(&[]) <= 0.2 + 1e-7);
        let sd = t.std(true).double_value(&[]);
        // A normal truncated at ±2σ has standard deviation 0.880σ.
        assert!((sd - 0.088).abs() < 0.003, "std {sd}");
        let s = init_value(&slot(Init::Sinusoidal));
        let at = |p: i64, j: i64| s.double_value(&[p, j]);
        assert!((at(3, 0) - 3f64.sin()).abs() < 1e-6 && (at(3, 1) - 3f64.cos()).abs() < 1e-6);
        let angle = 7.0 / 10000f64.powf(4.0 / 50.0);
        assert!((at(7, 4) - angle.sin()).abs() < 1e-6 && (at(7, 5) - angle.cos()).abs() < 1e-6);
    }

    #[test]
    fn zero_grad_leaves_no_gradient_and_the_next_one_is_exact() {
        let _rng = crate::torch_rng();
        let p = tiny();
        let loss = |k: f64| p.tensors.iter().map(|t| (t * k).sum(Kind::Float)).fold(Tensor::from(0f32), |a, b| a + b);
        loss(2.0).backward();
        assert!(p.tensors.iter().all(|t| t.grad().defined()));
        p.zero_grad();
        assert!(p.tensors.iter().all(|t| !t.grad().defined()), "gradients reset to undefined");
        loss(3.0).backward();
        assert!(p.tensors.iter().all(|t| t.grad().equal(&t.ones_like().g_mul_scalar(3.0))), "the new gradient alone");
    }
}
