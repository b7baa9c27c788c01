//! The BERT forward pass; mirrors transformers' `modeling_bert.py` (BertEmbeddings,
//! BertSelfAttention with SDPA, BertSelfOutput, BertIntermediate, BertOutput, BertPooler, and the
//! classification head of BertForSequenceClassification).
//!
//! Mixed precision: matrix products run in `model.compute` (bf16 on CUDA) on a working copy of
//! the linear layers' weights cast from the fp32 masters once per pass ([`Weights`]), so
//! gradients land on the fp32 masters; LayerNorm, residual sums and the logits stay fp32, as under
//! PyTorch autocast.

use tch::{Device, Kind, Tensor};

use crate::dropout::dropout;
use crate::inputs::Inputs;
use crate::Model;

/// The linear layers' weights and biases as one forward pass reads them, in `model.compute`.
///
/// In fp32 they are the master parameters themselves. In bf16 they come from one working copy
/// per pass: the masters concatenated and cast (two kernels), then split back into views;
/// backward casts the working copy's gradient to fp32 once and hands each master its slice.
/// Values and gradients are those of a cast at each use, which cost a cast kernel per weight
/// forward and another backward (~300 launches a step at bert-base's shape, ~150 at MiniLM's).
///
/// The working copy lays each layer's query, key and value weights side by side (and their
/// biases), so the fused `(3 hidden, hidden)` projection is one more view of it: one matrix
/// product per layer instead of three, and ~20 fewer kernels forward and backward.
pub struct Weights<'a> {
    m: &'a Model,
    /// The working copy of parameter `i` (by index in `params.names`); `None`: cast at use.
    cast: Vec<Option<Tensor>>,
    /// Per encoder layer, the fused query/key/value weight and bias; `None`: three products.
    qkv: Vec<Option<(Tensor, Tensor)>>,
}

/// The names of layer `i`'s query, key and value parameters (`weight` or `bias`).
#[cfg(test)]
fn qkv_names(i: i64, what: &str) -> [String; 3] {
    ["query", "key", "value"].map(|q| format!("bert.encoder.layer.{i}.attention.self.{q}.{what}"))
}

impl<'a> Weights<'a> {
    pub fn new(m: &'a Model) -> Weights<'a> {
        let p = &m.params;
        let layers = m.config.num_hidden_layers;
        let mut w = Weights { m, cast: (0..p.len()).map(|_| None).collect(), qkv: (0..layers).map(|_| None).collect() };
        if m.compute == Kind::Float {
            return w;
        }
        // Params keeps the linear parameters in the order this copy needs (see Params::linear).
        let order = p.linear();
        let flat: Vec<Tensor> = order.iter().map(|&i| p.tensors[i].view(-1)).collect();
        let sizes: Vec<i64> = order.iter().map(|&i| p.tensors[i].numel() as i64).collect();
        let copy = Tensor::cat(&flat, 0).to_kind(m.compute);
        for (&i, part) in order.iter().zip(copy.split_with_sizes(sizes.as_slice(), 0)) {
            w.cast[i] = Some(part.view(p.tensors[i].size().as_slice()));
        }
        // The fused projections: each triple is contiguous in `copy`; layer i's weights are
        // `order[6i..6i+3]`, its biases `order[6i+3..6i+6]` (Params::linear).
        let offsets: Vec<i64> = sizes.iter().scan(0, |at, n| Some(std::mem::replace(at, *at + n))).collect();
        let h = m.config.hidden_size;
        for (i, slot) in w.qkv.iter_mut().enumerate() {
            let (wt, b) = (offsets[6 * i], offsets[6 * i + 3]);
            *slot = Some((copy.narrow(0, wt, 3 * h * h).view([3 * h, h]), copy.narrow(0, b, 3 * h)));
        }
        w
    }

    /// Every weight cast at its use (the working copy's reference, for tests), the fused
    /// projections concatenated from those casts.
    #[cfg(test)]
    fn cast_at_use(m: &'a Model) -> Weights<'a> {
        let mut w = Weights { m, cast: (0..m.params.len()).map(|_| None).collect(), qkv: Vec::new() };
        w.qkv = (0..m.config.num_hidden_layers)
            .map(|i| {
                let cat = |what| Tensor::cat(&qkv_names(i, what).map(|n| w.get(&n)), 0);
                Some((cat("weight"), cat("bias")))
            })
            .collect();
        w
    }

    fn get(&self, name: &str) -> Tensor {
        let i = self.m.params.index_of(name);
        match &self.cast[i] {
            Some(t) => t.shallow_clone(),
            None => self.m.params.tensors[i].to_kind(self.m.compute),
        }
    }

    fn linear(&self, x: &Tensor, name: &str) -> Tensor {
        let w = self.get(&format!("{name}.weight"));
        let b = self.get(&format!("{name}.bias"));
        x.to_kind(self.m.compute).linear(&w, Some(&b))
    }
}

fn layer_norm(m: &Model, x: &Tensor, name: &str) -> Tensor {
    let p = &m.params;
    x.to_kind(Kind::Float).layer_norm(
        [m.config.hidden_size],
        Some(p.get(&format!("{name}.weight"))),
        Some(p.get(&format!("{name}.bias"))),
        m.config.layer_norm_eps,
        true,
    )
}

fn act(m: &Model, x: &Tensor) -> Tensor {
    match m.config.hidden_act.as_str() {
        "relu" => x.relu(),
        "gelu_new" | "gelu_pytorch_tanh" => x.gelu("tanh"),
        _ => x.gelu("none"),
    }
}

/// Logits `(rows, num_labels)` in fp32.
///
/// Hidden states are token-wise `(n, hidden)` matrices: every position of the batch, or only
/// the real tokens when `x` is packed (see [`crate::inputs`]).
pub fn forward(m: &Model, x: &Inputs, train: bool) -> Tensor {
    forward_with(&Weights::new(m), x, train)
}

pub(crate) fn forward_with(w: &Weights, x: &Inputs, train: bool) -> Tensor {
    let m = w.m;
    let c = &m.config;
    let p = &m.params;
    let word = p.get("bert.embeddings.word_embeddings.weight");
    let pos = p.get("bert.embeddings.position_embeddings.weight");
    let typ = p.get("bert.embeddings.token_type_embeddings.weight").get(0);
    let emb = match x.packed() {
        Some(pk) => Tensor::embedding(word, &x.ids, c.pad_token_id, false, false) + pos.index_select(0, &pk.column),
        None => {
            let words = Tensor::embedding(word, &x.ids.view([x.rows, x.len]), c.pad_token_id, false, false);
            (words + pos.narrow(0, 0, x.len)).view([x.rows * x.len, c.hidden_size])
        }
    };
    let mut h = dropout(&layer_norm(m, &(emb + typ), "bert.embeddings.LayerNorm"), c.hidden_dropout_prob, train);
    let last = c.num_hidden_layers - 1;
    for i in 0..last {
        h = layer(w, i, &h, false, &h, x, train);
    }
    // Only [CLS] goes on to the pooler, so the last layer computes its output for that position
    // alone (keys and values still come from every token): the same logits, with about 5/6 of
    // the last layer's work left out.
    let cls = layer(w, last, &x.first(&h), true, &h, x, train);
    let pooled = w.linear(&cls, "bert.pooler.dense").tanh();
    let pooled = dropout(&pooled, c.classifier_dropout(), train);
    w.linear(&pooled, "classifier").to_kind(Kind::Float)
}

/// Encoder layer `i` over token-wise hidden states `h`, for the query rows `hq`: `h` itself, or
/// (`first_only`) each row's first position, `(rows, hidden)`. Attention looks at every position.
fn layer(w: &Weights, i: i64, hq: &Tensor, first_only: bool, h: &Tensor, x: &Inputs, train: bool) -> Tensor {
    let m = w.m;
    let c = &m.config;
    let nh = c.num_attention_heads;
    let pre = format!("bert.encoder.layer.{i}");
    let hs = c.hidden_size;
    let (q, k, v) = match &w.qkv[i as usize] {
        // One product for all three; `heads` splits it after scattering it once.
        Some((wt, b)) if !first_only => {
            let [q, k, v] = x.heads_fused::<3>(&h.to_kind(m.compute).linear(wt, Some(b)), nh);
            (q, k, v)
        }
        // The query of [CLS] rows alone, then keys and values fused.
        Some((wt, b)) => {
            let q = w.linear(hq, &format!("{pre}.attention.self.query")).view([x.rows, 1, nh, -1]).transpose(1, 2);
            let [k, v] = x.heads_fused::<2>(&h.to_kind(m.compute).linear(&wt.narrow(0, hs, 2 * hs), Some(&b.narrow(0, hs, 2 * hs))), nh);
            (q, k, v)
        }
        None => {
            let q = w.linear(hq, &format!("{pre}.attention.self.query"));
            let q = if first_only { q.view([x.rows, 1, nh, -1]).transpose(1, 2) } else { x.heads(&q, nh) };
            let k = x.heads(&w.linear(h, &format!("{pre}.attention.self.key")), nh);
            let v = x.heads(&w.linear(h, &format!("{pre}.attention.self.value")), nh);
            (q, k, v)
        }
    };
    let attn_drop = if train { c.attention_probs_dropout_prob } else { 0.0 };
    let ctx = attention(&q, &k, &v, x.mask(), attn_drop);
    let ctx = if first_only { ctx.transpose(1, 2).reshape([x.rows, c.hidden_size]) } else { x.tokens(&ctx) };
    let a = dropout(&w.linear(&ctx, &format!("{pre}.attention.output.dense")), c.hidden_dropout_prob, train);
    let a = layer_norm(m, &(a.to_kind(Kind::Float) + hq), &format!("{pre}.attention.output.LayerNorm"));
    let inter = act(m, &w.linear(&a, &format!("{pre}.intermediate.dense")));
    let o = dropout(&w.linear(&inter, &format!("{pre}.output.dense")), c.hidden_dropout_prob, train);
    layer_norm(m, &(o.to_kind(Kind::Float) + &a), &format!("{pre}.output.LayerNorm"))
}

/// Scaled dot-product attention over `(batch, heads, len, head_dim)` with a boolean key mask
/// (`true`: attend) and dropout `p` on the probabilities. SDPA, except when dropping out on CPU:
/// libtorch's CPU SDPA then falls back to its math path with libtorch's slow dropout, so this
/// runs the same math (scores, softmax, dropout, weighted sum) with the cheap mask.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // clippy.toml's allow-unwrap-in-tests misses some of these tests
    use super::*;

    /// A tiny random model without dropout, so that two passes can match exactly.
    fn model(seed: u64) -> crate::Model {
        let mut config = crate::BertConfig::tiny(50);
        (config.hidden_dropout_prob, config.attention_probs_dropout_prob) = (0.0, 0.0);
        crate::Model::random(config, 3, Device::Cpu, seed).unwrap()
    }

    /// Logits and the flat master gradient of one training-mode pass over `x` with weights `w`.
    fn pass(w: &Weights, x: &Inputs) -> (Tensor, Tensor) {
        w.m.params.zero_grad();
        let logits = forward_with(w, x, true);
        logits.sum(Kind::Float).backward();
        (logits.detach(), w.m.params.flat_grad())
    }

    /// A right-padded batch runs packed; the same batch kept in its padded layout (as a
    /// left-padded one would be) gives the same logits and the same gradients.
    #[test]
    fn packed_and_padded_layouts_agree() {
        let _rng = crate::torch_rng();
        let m = model(7);
        let (rows, len) = (3, 6);
        let ids = [2, 11, 12, 13, 14, 3, 2, 15, 3, 0, 0, 0, 2, 16, 17, 18, 3, 0];
        let mask = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0];
        let (packed, _) = crate::inputs::upload(rows, len, &ids, Some(&mask), &[], Device::Cpu);
        assert!(packed.packed().is_some());
        let padded = Inputs {
            rows: rows as i64,
            len: len as i64,
            ids: Tensor::from_slice(&ids),
            padding: Some(crate::inputs::Padding { mask: Tensor::from_slice(&mask).to_kind(Kind::Bool).view([3, 1, 1, 6]), packed: None }),
        };
        let ((la, ga), (lb, gb)) = (pass(&Weights::new(&m), &packed), pass(&Weights::new(&m), &padded));
        let dl = (&la - &lb).abs().max().double_value(&[]);
        let dg = (&ga - &gb).abs().max().double_value(&[]);
        assert!(dl < 1e-5 && dg < 1e-5, "logits differ by {dl}, gradients by {dg}");
        assert!(ga.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    /// bf16: the per-pass working copy gives the logits and master gradients of a cast at each
    /// use, bit for bit.
    #[test]
    fn bf16_working_copy_equals_casting_at_each_use() {
        let _rng = crate::torch_rng();
        let mut m = model(11);
        m.compute = Kind::BFloat16;
        let ids = [2, 11, 12, 13, 14, 3, 2, 15, 3, 0, 0, 0];
        let mask = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0];
        let (x, _) = crate::inputs::upload(2, 6, &ids, Some(&mask), &[], Device::Cpu);
        let copy = Weights::new(&m);
        // Six linear layers per encoder layer, the pooler and the classifier, weight and bias each.
        assert_eq!(copy.cast.iter().flatten().count() as i64, 2 * (6 * m.config.num_hidden_layers + 2));
        let (la, ga) = pass(&copy, &x);
        let (lb, gb) = pass(&Weights::cast_at_use(&m), &x);
        assert!(la.equal(&lb), "logits differ");
        assert!(ga.equal(&gb), "gradients differ");
        assert_eq!(ga.kind(), Kind::Float);
        // Every parameter got a gradient (none is left behind the working copy).
        assert!(m.params.grads().iter().all(|(_, g)| g.is_some()));
        assert!(ga.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        // Inference keeps one working copy for many batches (`Model::frozen`): same logits as
        // a copy per pass.
        let frozen = tch::no_grad(|| m.frozen().forward(&x));
        let per_pass = tch::no_grad(|| m.forward(&x, false));
        assert!(frozen.equal(&per_pass), "frozen logits differ");
        assert!(matches!(m.frozen(), crate::Frozen::Bert(w) if w.cast.iter().flatten().count() == copy.cast.iter().flatten().count()));
    }

    /// The fused query/key/value product (one matrix of three) gives the logits and gradients
    /// of three products, on a packed batch and on one with no padding (fp32: the fusion is
    /// the only difference between the two runs).
    #[test]
    fn fused_qkv_equals_three_products() {
        let _rng = crate::torch_rng();
        let m = model(13);
        let packed = crate::inputs::upload(2, 6, &[2, 11, 12, 13, 14, 3, 2, 15, 3, 0, 0, 0], Some(&[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]), &[], Device::Cpu).0;
        let full = crate::inputs::upload(2, 4, &[2, 11, 12, 3, 2, 15, 16, 3], None, &[], Device::Cpu).0;
        assert!(packed.packed().is_some() && full.packed().is_none());
        for x in [&packed, &full] {
            let three = Weights::new(&m);
            assert!(three.qkv.iter().all(Option::is_none), "fp32 runs three products");
            let fused = Weights::cast_at_use(&m);
            assert!(fused.qkv.iter().all(Option::is_some));
            let ((la, ga), (lb, gb)) = (pass(&three, x), pass(&fused, x));
            let dl = (&la - &lb).abs().max().double_value(&[]);
            let dg = (&ga - &gb).abs().max().double_value(&[]);
            assert!(dl < 1e-5 && dg < 1e-5, "logits differ by {dl}, gradients by {dg}");
            // Every query, key and value parameter got its gradient through the fused product.
            for i in 0..m.config.num_hidden_layers {
                for n in qkv_names(i, "weight").iter().chain(&qkv_names(i, "bias")) {
                    assert!(m.params.get(n).grad().abs().sum(Kind::Float).double_value(&[]) > 0.0, "no gradient for {n}");
                }
            }
        }
    }

    #[test]
    fn written_out_attention_equals_sdpa() {
        let _rng = crate::torch_rng();
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        let (q, k, v) = (Tensor::randn([2, 3, 5, 4], opts), Tensor::randn([2, 3, 5, 4], opts), Tensor::randn([2, 3, 5, 4], opts));
        let mask = Tensor::from_slice(&[true, true, true, false, false, true, true, true, true, true]).view([2, 1, 1, 5]);
        let want = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.0, false, None, false);
        let got = attention_math(&q, &k, &v, Some(&mask), 0.0);
        let diff = (&want - &got).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "max difference {diff}");
        // With dropout: reproducible under the torch seed, and not the plain result.
        tch::manual_seed(5);
        let a = attention(&q, &k, &v, Some(&mask), 0.5);
        tch::manual_seed(5);
        let b = attention(&q, &k, &v, Some(&mask), 0.5);
        assert!(a.equal(&b));
        assert!((&a - &want).abs().max().double_value(&[]) > 1e-3);
    }
}
