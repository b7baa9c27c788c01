//! Named parameters under Hugging Face names (`bert.encoder.layer.0.attention.self.query.weight`,
//! `classifier.weight`, ...), kept in fp32 as the master copy; HF initialization; safetensors
//! loading (with or without the `bert.` prefix) and saving.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context as _};
use tch::{Device, Kind, Tensor};

use crate::config::BertConfig;
use crate::LoadReport;

/// How a parameter is initialized (transformers' `BertPreTrainedModel._init_weights`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Init {
    Normal,
    NormalPadZero(i64),
    Zeros,
    Ones,
}

/// Parameters in a fixed order (the order HF lists them), each a leaf tensor requiring grad.
///
/// All of them are views of one flat fp32 buffer ([`Params::flat`]), weight-decayed parameters
/// first, so an optimizer updates every parameter with a handful of kernels on the flat buffer
/// instead of a dozen per parameter.
pub struct Params {
    pub names: Vec<String>,
    pub tensors: Vec<Tensor>,
    index: HashMap<String, usize>,
    /// Indices of the linear layers' weights and biases, in the order of [`Params::linear`].
    linear: Vec<usize>,
    flat: Tensor,
    /// Offset of each parameter (by index in `names`) in `flat`.
    offsets: Vec<i64>,
    /// Parameter indices in flat order.
    flat_order: Vec<usize>,
    /// Elements of `flat` that get weight decay (a prefix).
    n_decay: i64,
    /// Holds every parameter only for [`Params::zero_grad`]: libtorch's `Optimizer::zero_grad`
    /// is the one call tch exposes that resets gradients to undefined. Never stepped.
    grad_reset: tch::COptimizer,
}

/// One parameter of the layout: name, shape, initialization, and whether it belongs to a linear
/// layer (those run in the model's compute dtype; embeddings and LayerNorms stay fp32).
type Slot = (String, Vec<i64>, Init, bool);

fn layout(c: &BertConfig, num_labels: i64) -> Vec<Slot> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut v: Vec<Slot> = vec![
        ("bert.embeddings.word_embeddings.weight".into(), vec![c.vocab_size, h], Init::NormalPadZero(c.pad_token_id), false),
        ("bert.embeddings.position_embeddings.weight".into(), vec![c.max_position_embeddings, h], Init::Normal, false),
        ("bert.embeddings.token_type_embeddings.weight".into(), vec![c.type_vocab_size, h], Init::Normal, false),
        ("bert.embeddings.LayerNorm.weight".into(), vec![h], Init::Ones, false),
        ("bert.embeddings.LayerNorm.bias".into(), vec![h], Init::Zeros, false),
    ];
    let linear = |v: &mut Vec<Slot>, name: String, out: i64, inp: i64| {
        v.push((format!("{name}.weight"), vec![out, inp], Init::Normal, true));
        v.push((format!("{name}.bias"), vec![out], Init::Zeros, true));
    };
    let ln = |v: &mut Vec<Slot>, name: String| {
        v.push((format!("{name}.weight"), vec![h], Init::Ones, false));
        v.push((format!("{name}.bias"), vec![h], Init::Zeros, false));
    };
    for l in 0..c.num_hidden_layers {
        let p = format!("bert.encoder.layer.{l}");
        for q in ["query", "key", "value"] {
            linear(&mut v, format!("{p}.attention.self.{q}"), h, h);
        }
        linear(&mut v, format!("{p}.attention.output.dense"), h, h);
        ln(&mut v, format!("{p}.attention.output.LayerNorm"));
        linear(&mut v, format!("{p}.intermediate.dense"), i, h);
        linear(&mut v, format!("{p}.output.dense"), h, i);
        ln(&mut v, format!("{p}.output.LayerNorm"));
    }
    linear(&mut v, "bert.pooler.dense".into(), h, h);
    linear(&mut v, "classifier".into(), num_labels, h);
    v
}

/// `t` as `kind` in host memory, always a copy (on CPU too): it stays as it is while training
/// goes on changing `t`, so a background thread may write it out.
pub fn host_copy(t: &Tensor, kind: Kind) -> Tensor {
    t.to_device_(Device::Cpu, kind, false, true)
}

/// Maps a checkpoint's tensor name to ours: adds the `bert.` prefix that encoder-only files
/// (all-MiniLM-L6-v2) lack, and renames TF-era `gamma`/`beta`.
pub fn canonical_name(name: &str) -> String {
    let n = if ["embeddings.", "encoder.", "pooler."].iter().any(|p| name.starts_with(p)) {
        format!("bert.{name}")
    } else {
        name.to_string()
    };
    if let Some(stem) = n.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = n.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        n
    }
}

impl Params {
    /// Fresh parameters, initialized as HF does, deterministically from `seed` (generated on the
    /// CPU, so every device gets the same values).
    pub fn init(c: &BertConfig, num_labels: i64, device: Device, seed: u64) -> Params {
        tch::manual_seed(seed as i64);
        let mut names = Vec::new();
        let mut shapes = Vec::new();
        let mut values = Vec::new();
        let mut linear = Vec::new();
        tch::no_grad(|| {
            for (name, shape, init, in_linear) in layout(c, num_labels) {
                if in_linear {
                    linear.push(names.len());
                }
                let t = match init {
                    Init::Normal => Tensor::randn(&shape, (Kind::Float, Device::Cpu)) * c.initializer_range,
                    Init::NormalPadZero(pad) => {
                        let t = Tensor::randn(&shape, (Kind::Float, Device::Cpu)) * c.initializer_range;
                        if pad >= 0 && pad < shape[0] {
                            let _ = t.get(pad).fill_(0.0);
                        }
                        t
                    }
                    Init::Zeros => Tensor::zeros(&shape, (Kind::Float, Device::Cpu)),
                    Init::Ones => Tensor::ones(&shape, (Kind::Float, Device::Cpu)),
                };
                names.push(name);
                shapes.push(shape);
                values.push(t);
            }
        });
        // Flat order: decayed parameters first, each group in layout order.
        let mut flat_order: Vec<usize> = (0..names.len()).filter(|&i| Params::decays(&names[i])).collect();
        flat_order.extend((0..names.len()).filter(|&i| !Params::decays(&names[i])));
        let mut offsets = vec![0i64; names.len()];
        let mut at = 0i64;
        let mut n_decay = 0i64;
        for &i in &flat_order {
            offsets[i] = at;
            at += values[i].numel() as i64;
            if Params::decays(&names[i]) {
                n_decay = at;
            }
        }
        let ordered: Vec<Tensor> = flat_order.iter().map(|&i| values[i].view(-1)).collect();
        let flat = Tensor::cat(&ordered, 0).to_device(device);
        let tensors: Vec<Tensor> = (0..names.len())
            .map(|i| {
                let n = values[i].numel() as i64;
                flat.narrow(0, offsets[i], n).view(shapes[i].as_slice()).detach().set_requires_grad(true)
            })
            .collect();
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        let mut grad_reset = tch::COptimizer::sgd(0.0, 0.0, 0.0, 0.0, false).expect("libtorch builds an SGD optimizer");
        for t in &tensors {
            grad_reset.add_parameters(t, 0).expect("libtorch takes a parameter");
        }
        // Per layer the query, key and value weights, then their biases (the layout has them as
        // q.weight, q.bias, k.weight, k.bias, v.weight, v.bias), then the rest in layout order.
        let (qkv, rest): (Vec<usize>, Vec<usize>) = linear.iter().partition(|&&i| names[i].contains(".attention.self."));
        let linear = qkv.chunks(6).flat_map(|l| [l[0], l[2], l[4], l[1], l[3], l[5]]).chain(rest).collect();
        Params { names, tensors, index, linear, flat, offsets, flat_order, n_decay, grad_reset }
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

    /// The gradients, laid out like [`Params::flat`] (zeros where a parameter has none), in fp32.
    pub fn flat_grad(&self) -> Tensor {
        self.flat_grad_of(&self.grads())
    }

    /// [`Params::flat_grad`] from gradients already read with [`Params::grads`].
    pub fn flat_grad_of(&self, grads: &[(i64, Option<Tensor>)]) -> Tensor {
        let parts: Vec<Tensor> = self
            .flat_order
            .iter()
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
    /// working copy (`bert::Weights`): layer `i`'s query, key and value weights at `6i..6i+3`
    /// and their biases at `6i+3..6i+6`, so each triple is one fused projection; then the rest.
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

    /// Copies values into the parameters by name (shapes must match).
    pub fn assign(&self, named: &[(String, Tensor)], origin: &str) -> anyhow::Result<Vec<String>> {
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

    /// Loads a Hugging Face safetensors file. Encoder weights must all be present; the pooler
    /// and classifier may be missing (then they keep their fresh initialization).
    pub fn load_hf(&mut self, path: &Path) -> anyhow::Result<LoadReport> {
        let raw = Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))?;
        let mut named = Vec::with_capacity(raw.len());
        let mut unused = Vec::new();
        for (name, t) in raw {
            let c = canonical_name(&name);
            if self.index.contains_key(&c) {
                named.push((c, t));
            } else {
                unused.push(name);
            }
        }
        let assigned = self.assign(&named, &path.display().to_string())?;
        let got: std::collections::HashSet<&String> = assigned.iter().collect();
        let missing: Vec<String> = self.names.iter().filter(|n| !got.contains(n)).cloned().collect();
        let required: Vec<&String> = missing
            .iter()
            .filter(|n| !n.starts_with("bert.pooler.") && !n.starts_with("classifier."))
            .collect();
        if !required.is_empty() {
            bail!(
                "{}: {} encoder weights are missing (first: {:?}); is this a BERT checkpoint matching config.json?",
                path.display(),
                required.len(),
                &required[..required.len().min(3)]
            );
        }
        unused.sort();
        Ok(LoadReport { initialized: missing, unused })
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

    /// The parameters under HF names as `kind`, copied to host memory (see [`host_copy`]).
    pub fn host_copy(&self, kind: Kind) -> Vec<(String, Tensor)> {
        self.names.iter().zip(&self.tensors).map(|(n, t)| (n.clone(), host_copy(&t.detach(), kind))).collect()
    }

    /// Saves under HF names, as `kind` (fp32, bf16 or fp16).
    pub fn save(&self, path: &Path, kind: Kind) -> anyhow::Result<()> {
        Tensor::write_safetensors(&self.host_copy(kind), path).with_context(|| format!("writing {}", path.display()))
    }

    /// Whether a parameter gets weight decay (HF Trainer: not biases, not LayerNorm weights).
    pub fn decays(name: &str) -> bool {
        !(name.ends_with(".bias") || name.contains("LayerNorm"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_canonicalized() {
        assert_eq!(canonical_name("embeddings.word_embeddings.weight"), "bert.embeddings.word_embeddings.weight");
        assert_eq!(canonical_name("bert.pooler.dense.bias"), "bert.pooler.dense.bias");
        assert_eq!(canonical_name("encoder.layer.0.output.LayerNorm.gamma"), "bert.encoder.layer.0.output.LayerNorm.weight");
        assert_eq!(canonical_name("classifier.weight"), "classifier.weight");
    }

    #[test]
    fn decay_groups() {
        assert!(Params::decays("bert.encoder.layer.0.attention.self.query.weight"));
        assert!(Params::decays("bert.embeddings.word_embeddings.weight"));
        assert!(!Params::decays("bert.encoder.layer.0.attention.self.query.bias"));
        assert!(!Params::decays("bert.embeddings.LayerNorm.weight"));
        assert!(!Params::decays("classifier.bias"));
    }

    #[test]
    fn zero_grad_leaves_no_gradient_and_the_next_one_is_exact() {
        let _rng = crate::torch_rng();
        let p = Params::init(&BertConfig::tiny(20), 2, Device::Cpu, 3);
        let loss = |k: f64| p.tensors.iter().map(|t| (t * k).sum(Kind::Float)).fold(Tensor::from(0f32), |a, b| a + b);
        loss(2.0).backward();
        assert!(p.tensors.iter().all(|t| t.grad().defined()));
        p.zero_grad();
        assert!(p.tensors.iter().all(|t| !t.grad().defined()), "gradients reset to undefined");
        loss(3.0).backward();
        assert!(p.tensors.iter().all(|t| t.grad().equal(&t.ones_like().g_mul_scalar(3.0))), "the new gradient alone");
    }
}
