//! The BERT forward pass; mirrors transformers' `modeling_bert.py` (BertEmbeddings,
//! BertSelfAttention with SDPA, BertSelfOutput, BertIntermediate, BertOutput, BertPooler, and the
//! classification head of BertForSequenceClassification).
//!
//! Mixed precision: matrix products run in `model.compute` (bf16 on CUDA) on working copies cast
//! from the fp32 master weights at each use, so gradients land on the fp32 masters; LayerNorm,
//! residual sums and the logits stay fp32, as under PyTorch autocast.

use tch::{Device, Kind, Tensor};

use crate::dropout::dropout;
use crate::Model;

fn linear(m: &Model, x: &Tensor, name: &str) -> Tensor {
    let p = &m.params;
    let w = p.get(&format!("{name}.weight")).to_kind(m.compute);
    let b = p.get(&format!("{name}.bias")).to_kind(m.compute);
    x.to_kind(m.compute).linear(&w, Some(&b))
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

/// Logits `(batch, num_labels)` in fp32. `mask` is `(batch, len)` with 1 for real tokens; pass
/// `None` for a batch without padding (lets CUDA use flash attention).
pub fn forward(m: &Model, ids: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
    let c = &m.config;
    let p = &m.params;
    let (b, l) = ids.size2().expect("ids must be (batch, len)");
    let word = Tensor::embedding(p.get("bert.embeddings.word_embeddings.weight"), ids, c.pad_token_id, false, false);
    let pos = p.get("bert.embeddings.position_embeddings.weight").narrow(0, 0, l);
    let typ = p.get("bert.embeddings.token_type_embeddings.weight").get(0);
    let mut x = dropout(&layer_norm(m, &(word + pos + typ), "bert.embeddings.LayerNorm"), c.hidden_dropout_prob, train);
    let attn_mask = mask.map(|mk| mk.to_kind(Kind::Bool).view([b, 1, 1, l]));
    let last = c.num_hidden_layers - 1;
    for i in 0..last {
        x = layer(m, i, &x, &x, attn_mask.as_ref(), train);
    }
    // Only [CLS] goes on to the pooler, so the last layer computes its output for that position
    // alone (keys and values still come from every token): the same logits, with about 5/6 of
    // the last layer's work left out.
    let x = layer(m, last, &x.narrow(1, 0, 1), &x, attn_mask.as_ref(), train);
    let cls = x.select(1, 0);
    let pooled = linear(m, &cls, "bert.pooler.dense").tanh();
    let pooled = dropout(&pooled, c.classifier_dropout(), train);
    linear(m, &pooled, "classifier").to_kind(Kind::Float)
}

/// Encoder layer `i` for the positions of `xq` (`(batch, lq, hidden)`), attending over all
/// positions of `x` (`(batch, l, hidden)`); `xq` is `x` itself or a prefix of its positions.
fn layer(m: &Model, i: i64, xq: &Tensor, x: &Tensor, attn_mask: Option<&Tensor>, train: bool) -> Tensor {
    let c = &m.config;
    let (h, nh) = (c.hidden_size, c.num_attention_heads);
    let hd = h / nh;
    let (b, lq, _) = xq.size3().expect("hidden states must be (batch, len, hidden)");
    let pre = format!("bert.encoder.layer.{i}");
    let heads = |t: Tensor| t.view([b, -1, nh, hd]).transpose(1, 2);
    let q = heads(linear(m, xq, &format!("{pre}.attention.self.query")));
    let k = heads(linear(m, x, &format!("{pre}.attention.self.key")));
    let v = heads(linear(m, x, &format!("{pre}.attention.self.value")));
    let attn_drop = if train { c.attention_probs_dropout_prob } else { 0.0 };
    let ctx = attention(&q, &k, &v, attn_mask, attn_drop);
    let ctx = ctx.transpose(1, 2).reshape([b, lq, h]);
    let a = dropout(&linear(m, &ctx, &format!("{pre}.attention.output.dense")), c.hidden_dropout_prob, train);
    let a = layer_norm(m, &(a.to_kind(Kind::Float) + xq), &format!("{pre}.attention.output.LayerNorm"));
    let inter = act(m, &linear(m, &a, &format!("{pre}.intermediate.dense")));
    let o = dropout(&linear(m, &inter, &format!("{pre}.output.dense")), c.hidden_dropout_prob, train);
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
    use super::*;

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
