//! The building blocks every family's network is made of: a [`Builder`] that declares parameters
//! (the layout [`crate::Params`] allocates) and hands back typed modules holding their indices,
//! and [`Weights`], the parameters as one forward pass reads them (the bf16 working copy).
//!
//! A family builds its modules once, when the model is made: the forward pass holds [`Linear`],
//! [`LayerNorm`] and [`Fused`] values and never looks a name up.

use tch::{Device, Kind, Tensor};

use crate::dropout::dropout;
use crate::{Model, Params};

/// How a fresh parameter is initialized (HF's `_init_weights` of each family).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Normal with this standard deviation.
    Normal(f64),
    /// Normal, with the row of this padding id zeroed (`nn.Embedding(padding_idx=…)`).
    NormalPadZero(f64, i64),
    /// Normal truncated to ±`cutoff`·std (torch's `trunc_normal_`).
    TruncNormal { std: f64, cutoff: f64 },
    /// DistilBERT's sinusoidal position table (`sinusoidal_pos_embds`; trained on from there, as
    /// in transformers 5).
    Sinusoidal,
    /// Uniform in ±bound (LoRA's `lora_A`: PEFT's Kaiming-uniform, bound 1/√in).
    Uniform(f64),
    Zeros,
    Ones,
}

/// One parameter of the layout.
#[derive(Clone, Debug)]
pub struct Slot {
    /// The Hugging Face name.
    pub name: String,
    pub shape: Vec<i64>,
    pub init: Init,
    /// Read by a matrix product (runs in the compute dtype; embeddings and norms stay fp32).
    pub linear: bool,
    /// Gets weight decay (HF Trainer: not biases, not LayerNorm weights).
    pub decay: bool,
    /// Part of the classification head: may be missing from a pretrained checkpoint.
    pub head: bool,
    /// Trained (has a gradient and optimizer state); with LoRA only the adapters, the head and
    /// `modules_to_save` are, the rest is the frozen base.
    pub trainable: bool,
}

/// A linear layer: parameter indices of its weight `(out, in)` and bias, and its LoRA adapter
/// (an index into [`Layout::adapters`]) when it has one.
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub weight: usize,
    pub bias: Option<usize>,
    pub lora: Option<usize>,
}

/// A LoRA update beside a linear layer: `dropout(x)·Aᵀ·Bᵀ·scale` is added to its output.
#[derive(Clone, Copy, Debug)]
pub struct Adapter {
    /// The adapted layer's weight.
    pub weight: usize,
    /// `lora_A` `(r, in)` and `lora_B` `(out, r)`.
    pub a: usize,
    pub b: usize,
    /// `alpha / r`.
    pub scale: f64,
    pub dropout: f64,
}

/// A LayerNorm over the last dimension (bias-free in ModernBERT).
#[derive(Clone, Copy, Debug)]
pub struct LayerNorm {
    pub weight: usize,
    pub bias: Option<usize>,
    pub dim: i64,
    pub eps: f64,
}

/// Linear layers with the same input whose weights the bf16 working copy lays side by side, so
/// that their products can run as one (query, key and value): an index into [`Layout::fused`].
#[derive(Clone, Copy, Debug)]
pub struct Fused(pub usize);

/// Activation functions by their `ACT2FN` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    #[serde(rename = "gelu")]
    Gelu,
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    #[serde(rename = "tanh")]
    Tanh,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
            Activation::Tanh => x.tanh(),
        }
    }
}

/// What a family declares: every parameter in order, and the fused groups.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub slots: Vec<Slot>,
    /// Groups of linear layers (each with or without bias, all alike) fused in the working copy.
    pub fused: Vec<Vec<Linear>>,
    /// LoRA adapters, by the number [`Linear::lora`] holds.
    pub adapters: Vec<Adapter>,
}

/// Declares parameters as a family builds its modules (candle's `VarBuilder`, without the
/// tensors: [`crate::Params`] allocates them from the finished [`Layout`]).
#[derive(Default)]
pub struct Builder {
    layout: Layout,
    head: bool,
    lora: Option<crate::lora::Plan>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    /// A builder that gives the linear layers `plan` targets a LoRA adapter.
    pub fn with_lora(plan: crate::lora::Plan) -> Builder {
        Builder { lora: Some(plan), ..Builder::default() }
    }

    /// Declares the parameters that follow as part of the classification head (they may be
    /// missing from a pretrained checkpoint and are then initialized fresh).
    pub fn head(&mut self) {
        self.head = true;
    }

    /// The finished layout; with LoRA, the adapters' parameters appended and what trains marked
    /// (`base`: the encoder's attribute, which head module names leave out), and what the LoRA
    /// settings resolved to.
    pub fn finish(self, base: &str) -> anyhow::Result<(Layout, Option<crate::lora::Resolved>)> {
        let mut layout = self.layout;
        match self.lora {
            None => Ok((layout, None)),
            Some(plan) => {
                let resolved = plan.finish(&mut layout, base)?;
                Ok((layout, Some(resolved)))
            }
        }
    }

    /// Declares one parameter; returns its index.
    fn param(&mut self, name: &str, shape: &[i64], init: Init, linear: bool, decay: bool) -> usize {
        let head = self.head;
        self.layout.slots.push(Slot { name: name.to_string(), shape: shape.to_vec(), init, linear, decay, head, trainable: true });
        self.layout.slots.len() - 1
    }

    /// An embedding table `(rows, dim)`, decayed like any weight.
    pub fn embedding(&mut self, name: &str, rows: i64, dim: i64, init: Init) -> usize {
        self.param(&format!("{name}.weight"), &[rows, dim], init, false, true)
    }

    /// `nn.Linear(inp, out, bias)` named `name` (`name.weight`, `name.bias`).
    pub fn linear(&mut self, name: &str, inp: i64, out: i64, bias: bool, init: Init) -> Linear {
        let weight = self.param(&format!("{name}.weight"), &[out, inp], init, true, true);
        let bias = bias.then(|| self.param(&format!("{name}.bias"), &[out], Init::Zeros, true, false));
        let head = self.head;
        let lora = self.lora.as_mut().and_then(|p| p.declare(name, inp, out, weight, head));
        Linear { weight, bias, lora }
    }

    /// `nn.LayerNorm(dim, eps, bias)` named `name`.
    pub fn layer_norm(&mut self, name: &str, dim: i64, eps: f64, bias: bool) -> LayerNorm {
        let weight = self.param(&format!("{name}.weight"), &[dim], Init::Ones, false, false);
        let bias = bias.then(|| self.param(&format!("{name}.bias"), &[dim], Init::Zeros, false, false));
        LayerNorm { weight, bias, dim, eps }
    }

    /// Groups linear layers of one input for a fused product in the working copy.
    pub fn fuse(&mut self, parts: &[Linear]) -> Fused {
        self.layout.fused.push(parts.to_vec());
        Fused(self.layout.fused.len() - 1)
    }
}

/// A family's network, built once from the layout's indices: logits from a batch.
pub trait Network: Send + Sync {
    /// Logits `(rows, num_labels)` in fp32. Hidden states are token-wise `(n, hidden)` matrices:
    /// every position of the batch, or only the real tokens when `x` is packed.
    fn forward(&self, w: &Weights, x: &crate::Inputs, train: bool) -> Tensor;
}

/// Rows `start..start + n` of `t` (`None`: `t` itself, with no slice in the graph).
fn some_rows(t: Tensor, rows: Option<(i64, i64)>) -> Tensor {
    match rows {
        Some((start, n)) => t.narrow(0, start, n),
        None => t,
    }
}

/// The parameters as one forward pass reads them, in `model.compute`.
///
/// In fp32, the master parameters themselves. In bf16, one working copy per pass: the linear
/// layers' masters concatenated and cast (two kernels), then split back into views; backward
/// casts the working copy's gradient to fp32 once and hands each master its slice. Values and
/// gradients are those of a cast at each use, which costs a cast kernel per weight forward and
/// another backward (~300 launches a step at bert-base's shape). Frozen linear parameters (the
/// base under LoRA) are not part of that copy: they are cast once, outside autograd, and kept
/// with the parameters ([`Params::frozen_copy`]), so backward computes no gradient for them.
///
/// The copy lays each [`Fused`] group's weights side by side (then their biases), so the fused
/// product (query, key and value: `(3 hidden, hidden)`) is one more view of it: one matrix
/// product instead of three, and ~20 fewer kernels forward and backward.
pub struct Weights<'a> {
    pub(crate) m: &'a Model,
    /// The working copy of parameter `i`; `None`: the master (fp32) or cast at use.
    cast: Vec<Option<Tensor>>,
    /// Per fused group, its weight and bias as one; `None`: the parts run one by one.
    fused: Vec<Option<(Tensor, Option<Tensor>)>>,
    /// Training mode, in which LoRA's dropout applies ([`Weights::training`]).
    train: bool,
}

impl<'a> Weights<'a> {
    pub fn new(m: &'a Model) -> Weights<'a> {
        let p = &m.params;
        let mut w = Weights { m, cast: (0..p.len()).map(|_| None).collect(), fused: (0..p.fused().len()).map(|_| None).collect(), train: false };
        if m.compute == Kind::Float {
            return w;
        }
        // Params keeps the linear parameters in the order this copy needs (see Params::linear);
        // the trainable ones are cast in this pass's graph, the frozen ones come cast already.
        let (trained, frozen): (Vec<usize>, Vec<usize>) = p.linear().iter().partition(|&&i| p.trainable(i));
        let mut place = vec![(0usize, 0i64); p.len()];
        let copies = [p.cast(&trained, m.compute), p.frozen_copy(&frozen, m.compute)];
        for (buffer, (order, copy)) in [&trained, &frozen].into_iter().zip(&copies).enumerate() {
            let sizes: Vec<i64> = order.iter().map(|&i| p.tensors[i].numel() as i64).collect();
            let mut at = 0;
            for ((&i, part), n) in order.iter().zip(copy.split_with_sizes(sizes.as_slice(), 0)).zip(&sizes) {
                w.cast[i] = Some(part.view(p.tensors[i].size().as_slice()));
                place[i] = (buffer, at);
                at += n;
            }
        }
        // Each group's weights are contiguous in one copy, and so are its biases, when the whole
        // group trains or none of it does; otherwise its parts run one by one.
        for (slot, group) in w.fused.iter_mut().zip(p.fused()) {
            let members: Vec<usize> = group.iter().flat_map(|l| std::iter::once(l.weight).chain(l.bias)).collect();
            let buffer = place[group[0].weight].0;
            if members.iter().any(|&i| place[i].0 != buffer) {
                continue;
            }
            let copy = &copies[buffer];
            let rows: i64 = group.iter().map(|l| p.tensors[l.weight].size()[0]).sum();
            let inp = p.tensors[group[0].weight].size()[1];
            let weight = copy.narrow(0, place[group[0].weight].1, rows * inp).view([rows, inp]);
            let bias = group[0].bias.map(|b| copy.narrow(0, place[b].1, rows));
            *slot = Some((weight, bias));
        }
        w
    }

    /// These weights in training mode (LoRA's dropout applies) or not.
    pub fn training(mut self, train: bool) -> Weights<'a> {
        self.train = train;
        self
    }

    /// Every weight cast at its use, the fused groups concatenated from those casts (the
    /// working copy's reference, for tests).
    #[cfg(test)]
    pub(crate) fn cast_at_use(m: &'a Model) -> Weights<'a> {
        let mut w = Weights { m, cast: (0..m.params.len()).map(|_| None).collect(), fused: Vec::new(), train: false };
        w.fused = m
            .params
            .fused()
            .iter()
            .map(|g| {
                let weight = Tensor::cat(&g.iter().map(|l| w.get(l.weight)).collect::<Vec<_>>(), 0);
                let bias = g[0].bias.map(|_| Tensor::cat(&g.iter().filter_map(|l| l.bias.map(|b| w.get(b))).collect::<Vec<_>>(), 0));
                Some((weight, bias))
            })
            .collect();
        w
    }

    /// How many parameters the working copy holds.
    #[cfg(test)]
    pub(crate) fn copied(&self) -> usize {
        self.cast.iter().flatten().count()
    }

    pub fn model(&self) -> &'a Model {
        self.m
    }

    pub fn compute(&self) -> Kind {
        self.m.compute
    }

    /// Parameter `i` in the compute dtype.
    pub fn get(&self, i: usize) -> Tensor {
        match &self.cast[i] {
            Some(t) => t.shallow_clone(),
            None => self.m.params.tensors[i].to_kind(self.m.compute),
        }
    }

    /// Parameter `i`'s fp32 master (embeddings, norms).
    pub fn master(&self, i: usize) -> &Tensor {
        &self.m.params.tensors[i]
    }

    /// `x · Wᵀ + b` in the compute dtype, plus the layer's LoRA update when it has one.
    pub fn linear(&self, l: &Linear, x: &Tensor) -> Tensor {
        self.linear_part(l, x, None)
    }

    /// [`Weights::linear`]'s output features `start..start + n` alone: the product with those
    /// rows of the weight (and of LoRA's up-projection), so the other features cost nothing.
    pub fn linear_rows(&self, l: &Linear, x: &Tensor, start: i64, n: i64) -> Tensor {
        self.linear_part(l, x, Some((start, n)))
    }

    /// Whether [`Weights::linear_rows`] over two parts of `l`'s input (one row's first
    /// position, every position) equals one product over all of it: true unless LoRA's dropout
    /// is live on `l`, where PEFT draws one mask for the whole input.
    pub fn rows_split_exact(&self, l: &Linear) -> bool {
        l.lora.is_none_or(|k| !self.train || self.m.params.adapters()[k].dropout <= 0.0)
    }

    /// [`Weights::linear`] over the weight's rows `rows` (`None`: all of them, with no slice
    /// in the graph, whose backward would cost a zero-filled copy of the weight's gradient).
    fn linear_part(&self, l: &Linear, x: &Tensor, rows: Option<(i64, i64)>) -> Tensor {
        let b = l.bias.map(|b| some_rows(self.get(b), rows));
        let x = x.to_kind(self.m.compute);
        let y = x.linear(&some_rows(self.get(l.weight), rows), b.as_ref());
        match l.lora {
            Some(k) => y + self.lora(k, &x, rows),
            None => y,
        }
    }

    /// Adapter `k`'s update for the input `x` (in the compute dtype), for the output features
    /// `rows` (`None`: all): `dropout(x)·Aᵀ·Bᵀ·scale`, as PEFT's
    /// `lora_B(lora_A(dropout(x))) * scaling`.
    fn lora(&self, k: usize, x: &Tensor, rows: Option<(i64, i64)>) -> Tensor {
        let a = &self.m.params.adapters()[k];
        let down = dropout(x, a.dropout, self.train).linear::<&Tensor>(&self.get(a.a), None);
        down.linear::<&Tensor>(&some_rows(self.get(a.b), rows), None) * a.scale
    }

    /// A fused group's product over `x` for its parts from `from` on (0: all of them; 1: the
    /// key and value of a query/key/value group), as one matrix product over a view of the
    /// working copy, with the parts' LoRA updates beside their columns. `None` where the
    /// parts run one by one (fp32, where the masters are not contiguous per group).
    pub fn fused(&self, f: Fused, x: &Tensor, from: usize) -> Option<Tensor> {
        let (wt, b) = self.fused[f.0].as_ref()?;
        let group = &self.m.params.fused()[f.0];
        let rows: Vec<i64> = group.iter().map(|l| self.m.params.tensors[l.weight].size()[0]).collect();
        let (start, n): (i64, i64) = (rows[..from].iter().sum(), rows[from..].iter().sum());
        let x = x.to_kind(self.m.compute);
        let y = x.linear(&wt.narrow(0, start, n), b.as_ref().map(|b| b.narrow(0, start, n)).as_ref());
        let parts = &group[from..];
        if parts.iter().all(|l| l.lora.is_none()) {
            return Some(y);
        }
        let updates: Vec<Tensor> = parts
            .iter()
            .zip(&rows[from..])
            .map(|(l, &r)| match l.lora {
                Some(k) => self.lora(k, &x, None),
                None => Tensor::zeros([x.size()[0], r], (x.kind(), x.device())),
            })
            .collect();
        Some(y + Tensor::cat(&updates, 1))
    }

    /// LayerNorm in fp32 over fp32 masters, as under autocast.
    pub fn layer_norm(&self, n: &LayerNorm, x: &Tensor) -> Tensor {
        let b = n.bias.map(|b| self.master(b));
        x.to_kind(Kind::Float).layer_norm([n.dim], Some(self.master(n.weight)), b, n.eps, true)
    }
}

impl Params {
    /// Indices of the linear layers' weights and biases, ordered for the bf16 working copy
    /// ([`Weights`]): each fused group's weights, then its biases, then every other linear
    /// parameter in layout order.
    pub(crate) fn linear_order(layout: &Layout) -> Vec<usize> {
        let mut order = Vec::new();
        for g in &layout.fused {
            order.extend(g.iter().map(|l| l.weight));
            order.extend(g.iter().filter_map(|l| l.bias));
        }
        let seen: std::collections::HashSet<usize> = order.iter().copied().collect();
        order.extend((0..layout.slots.len()).filter(|i| layout.slots[*i].linear && !seen.contains(i)));
        order
    }
}

/// Scaled dot-product attention over `(batch, heads, len, head_dim)` with a boolean mask
/// (`true`: attend) and dropout `p` on the probabilities. SDPA (a fused kernel that never
/// materialises the scores where the shapes allow), except when dropping out on CPU: libtorch's
/// CPU SDPA then falls back to its math path with libtorch's slow dropout, so this runs the
/// same math (scores, softmax, dropout, weighted sum) with the cheap mask.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, p: f64) -> Tensor {
    if p <= 0.0 || q.device() != Device::Cpu {
        return Tensor::scaled_dot_product_attention(q, k, v, mask, p, false, None, false);
    }
    attention_math(q, k, v, mask, p)
}

/// [`attention`] written out, as libtorch's math path computes it.
pub fn attention_math(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, p: f64) -> Tensor {
    let scale = 1.0 / (*q.size().last().unwrap_or(&1) as f64).sqrt();
    let mut scores = q.matmul(&k.transpose(-2, -1)) * scale;
    if let Some(mk) = mask {
        scores = scores.masked_fill(&mk.logical_not(), f64::NEG_INFINITY);
    }
    let probs = scores.softmax(-1, scores.kind());
    dropout(&probs, p, p > 0.0).matmul(v)
}
