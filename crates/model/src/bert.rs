//! BERT (`model_type: bert`: BERT, MiniLM and every other `BertModel` checkpoint); mirrors
//! transformers' `configuration_bert.py` and `modeling_bert.py` (BertEmbeddings, BertSelfAttention
//! with SDPA, BertSelfOutput, BertIntermediate, BertOutput, BertPooler, and the head of
//! BertForSequenceClassification).
//!
//! The post-norm encoder here ([`Embeddings`], [`Layer`], [`Encoder`]) is also RoBERTa's and
//! DistilBERT's: they differ in names, position ids, token types and head, which their files
//! give.
//!
//! Mixed precision: matrix products run in `model.compute` (bf16 on CUDA) on the working copy
//! of [`Weights`]; LayerNorm, residual sums and the logits stay fp32, as under PyTorch autocast.

use anyhow::bail;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::dropout::dropout;
use crate::inputs::Inputs;
use crate::nn::{attention, Activation, Builder, Fused, Init, LayerNorm, Linear, Network, Weights};
use crate::params::Prefix;
use crate::Family;

fn d_vocab() -> i64 {
    30522
}
fn d_hidden() -> i64 {
    768
}
fn d_layers() -> i64 {
    12
}
fn d_heads() -> i64 {
    12
}
fn d_inter() -> i64 {
    3072
}
fn d_act() -> Activation {
    Activation::Gelu
}
fn d_drop() -> f64 {
    0.1
}
fn d_pos() -> i64 {
    512
}
fn d_types() -> i64 {
    2
}
fn d_init() -> f64 {
    0.02
}
fn d_eps() -> f64 {
    1e-12
}

/// `config.json` of a BERT model: the fields we use, everything else kept in `extra` (and so
/// written back on export).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BertConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: i64,
    #[serde(default = "d_hidden")]
    pub hidden_size: i64,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d_inter")]
    pub intermediate_size: i64,
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
    #[serde(default = "d_drop")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d_drop")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d_pos")]
    pub max_position_embeddings: i64,
    #[serde(default = "d_types")]
    pub type_vocab_size: i64,
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: i64,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl BertConfig {
    /// A tiny configuration (2 layers, hidden 32) for tests.
    pub fn tiny(vocab_size: i64) -> BertConfig {
        let v = serde_json::json!({
            "model_type": "bert", "vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128,
        });
        serde_json::from_value(v).expect("a valid tiny config")
    }

    /// The dropout before the classifier (HF: classifier_dropout, else hidden_dropout_prob).
    pub fn classifier_dropout(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// The encoder's shape, shared with RoBERTa.
    pub(crate) fn dims(&self) -> Dims {
        Dims {
            hidden: self.hidden_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
            act: self.hidden_act,
            hidden_dropout: self.hidden_dropout_prob,
            attention_dropout: self.attention_probs_dropout_prob,
            attention_output_dropout: self.hidden_dropout_prob,
            eps: self.layer_norm_eps,
            init: self.initializer_range,
        }
    }

    /// The checks every BERT-style config passes (`what` names the family in messages).
    pub(crate) fn check_sizes(&self) -> anyhow::Result<()> {
        positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ])?;
        heads_divide(self.hidden_size, self.num_attention_heads)?;
        if let Some(p) = self.extra.get("position_embedding_type").and_then(|v| v.as_str()) {
            if p != "absolute" {
                bail!("position_embedding_type `{p}` is not supported (only absolute)");
            }
        }
        Ok(())
    }

    /// The embeddings of a BERT-style model under `prefix` (`bert`, `roberta`). `reads_types`:
    /// the token types of sentence pairs select rows of the token type table (BERT); else row 0
    /// serves every token (RoBERTa, whose tokenizers hand the model no token types).
    pub(crate) fn embeddings(&self, b: &mut Builder, prefix: &str, positions: Positions, reads_types: bool) -> Embeddings {
        let (h, std) = (self.hidden_size, self.initializer_range);
        let e = format!("{prefix}.embeddings");
        let pos_init = match positions {
            Positions::Absolute => Init::Normal(std),
            Positions::AfterPadding => Init::NormalPadZero(std, self.pad_token_id),
        };
        Embeddings {
            word: b.embedding(&format!("{e}.word_embeddings"), self.vocab_size, h, Init::NormalPadZero(std, self.pad_token_id)),
            position: b.embedding(&format!("{e}.position_embeddings"), self.max_position_embeddings, h, pos_init),
            token_type: Some(b.embedding(&format!("{e}.token_type_embeddings"), self.type_vocab_size, h, Init::Normal(std))),
            norm: b.layer_norm(&format!("{e}.LayerNorm"), h, self.layer_norm_eps, true),
            reads_types: reads_types && self.type_vocab_size > 1,
            positions,
            pad: self.pad_token_id,
            dropout: self.hidden_dropout_prob,
        }
    }
}

/// Refuses sizes below one, naming the key.
pub(crate) fn positive(sizes: &[(&str, i64)]) -> anyhow::Result<()> {
    for (key, v) in sizes {
        if *v < 1 {
            bail!("{key} must be at least 1, got {v}");
        }
    }
    Ok(())
}

pub(crate) fn heads_divide(hidden: i64, heads: i64) -> anyhow::Result<()> {
    if hidden % heads != 0 {
        bail!("the hidden size {hidden} is not a multiple of the number of attention heads {heads}");
    }
    Ok(())
}

/// Matrix-product FLOPs per token of a forward pass through `layers` layers of width `h` with an
/// MLP of `mlp` multiply-accumulates per token, at sequence length `seq`: QKV and output (4h²)
/// and the MLP, 2 FLOPs each, plus attention scores and mixing (2·2·seq·h).
pub(crate) fn flops_per_token(layers: i64, h: i64, mlp: f64, seq: f64) -> f64 {
    let (h, l) = (h as f64, layers as f64);
    l * (2.0 * (4.0 * h * h + mlp) + 4.0 * seq * h)
}

impl Family for BertConfig {
    fn check(&self) -> anyhow::Result<()> {
        self.check_sizes()
    }

    fn build(&self, b: &mut Builder, num_labels: i64) -> Box<dyn Network> {
        let embeddings = self.embeddings(b, "bert", Positions::Absolute, true);
        let encoder = Encoder::build(b, embeddings, "bert.encoder.layer", &BERT_LAYER, &self.dims());
        b.head();
        let h = self.hidden_size;
        let std = Init::Normal(self.initializer_range);
        let pooler = b.linear("bert.pooler.dense", h, h, true, std);
        let classifier = b.linear("classifier", h, num_labels, true, std);
        Box::new(Bert { encoder, pooler, classifier, dropout: self.classifier_dropout() })
    }

    fn vocab_size(&self) -> i64 {
        self.vocab_size
    }

    fn max_length(&self) -> i64 {
        self.max_position_embeddings
    }

    fn architecture(&self) -> &'static str {
        "BertForSequenceClassification"
    }

    fn prefix(&self) -> Prefix {
        Prefix { base: "bert", roots: &["embeddings", "encoder", "pooler"] }
    }

    fn flops_per_token(&self, seq: f64) -> f64 {
        flops_per_token(self.num_hidden_layers, self.hidden_size, 2.0 * (self.hidden_size * self.intermediate_size) as f64, seq)
    }

    fn tokenizer_class(&self) -> &'static str {
        "BertTokenizer"
    }

    fn lora_targets(&self) -> &'static [&'static str] {
        &["query", "value"]
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// The shape and regularization of a post-norm encoder.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub hidden: i64,
    pub layers: i64,
    pub heads: i64,
    pub intermediate: i64,
    pub act: Activation,
    pub hidden_dropout: f64,
    pub attention_dropout: f64,
    /// Dropout on the attention block's output (BERT: hidden_dropout_prob; DistilBERT: none).
    pub attention_output_dropout: f64,
    pub eps: f64,
    pub init: f64,
}

/// Where position ids come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Positions {
    /// The column (BERT, DistilBERT).
    Absolute,
    /// Counted over real tokens from `pad_token_id + 1` (RoBERTa's `padding_idx`); padding
    /// positions get `pad_token_id`.
    AfterPadding,
}

/// Word + position (+ token type) embeddings, LayerNorm, dropout.
pub(crate) struct Embeddings {
    pub word: usize,
    pub position: usize,
    pub token_type: Option<usize>,
    /// Whether the batch's token types pick the token type rows (else row 0 for every token).
    pub reads_types: bool,
    pub norm: LayerNorm,
    pub positions: Positions,
    pub pad: i64,
    pub dropout: f64,
}

impl Embeddings {
    /// Token-wise `(n, hidden)` embeddings of the batch.
    pub fn forward(&self, w: &Weights, x: &Inputs, train: bool) -> Tensor {
        let (word, pos) = (w.master(self.word), w.master(self.position));
        let hidden = word.size()[1];
        let emb = match (x.packed(), self.positions) {
            (Some(pk), Positions::Absolute) => Tensor::embedding(word, &x.ids, self.pad, false, false) + pos.index_select(0, &pk.column),
            (None, Positions::Absolute) => {
                let words = Tensor::embedding(word, &x.ids.view([x.rows, x.len]), self.pad, false, false);
                (words + pos.narrow(0, 0, x.len)).view([x.rows * x.len, hidden])
            }
            (_, Positions::AfterPadding) => {
                let words = Tensor::embedding(word, &x.ids, self.pad, false, false);
                words + Tensor::embedding(pos, &x.positions_after(self.pad), self.pad, false, false)
            }
        };
        let emb = match (self.token_type, &x.types) {
            (Some(t), Some(types)) if self.reads_types => emb + Tensor::embedding(w.master(t), types, -1, false, false),
            (Some(t), _) => emb + w.master(t).get(0),
            (None, _) => emb,
        };
        dropout(&w.layer_norm(&self.norm, &emb), self.dropout, train)
    }
}

/// The module names inside one post-norm layer.
pub(crate) struct LayerNames {
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attention_output: &'static str,
    pub attention_norm: &'static str,
    pub intermediate: &'static str,
    pub output: &'static str,
    pub output_norm: &'static str,
}

pub(crate) const BERT_LAYER: LayerNames = LayerNames {
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_output: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
};

/// One post-norm encoder layer: self-attention, add & norm, MLP, add & norm.
pub(crate) struct Layer {
    qkv: [Linear; 3],
    fused: Fused,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    d: Dims,
}

impl Layer {
    fn build(b: &mut Builder, prefix: &str, n: &LayerNames, d: &Dims) -> Layer {
        let (h, std) = (d.hidden, Init::Normal(d.init));
        let lin = |b: &mut Builder, name: &str, inp, out| b.linear(&format!("{prefix}.{name}"), inp, out, true, std);
        let qkv = [lin(b, n.query, h, h), lin(b, n.key, h, h), lin(b, n.value, h, h)];
        let fused = b.fuse(&qkv);
        let attention_output = lin(b, n.attention_output, h, h);
        let attention_norm = b.layer_norm(&format!("{prefix}.{}", n.attention_norm), h, d.eps, true);
        let intermediate = lin(b, n.intermediate, h, d.intermediate);
        let output = lin(b, n.output, d.intermediate, h);
        let output_norm = b.layer_norm(&format!("{prefix}.{}", n.output_norm), h, d.eps, true);
        Layer { qkv, fused, attention_output, attention_norm, intermediate, output, output_norm, d: *d }
    }

    /// The layer over token-wise hidden states `h`, for the query rows `hq`: `h` itself, or
    /// (`first_only`) each row's first position, `(rows, hidden)`. Attention looks at every
    /// position.
    fn forward(&self, w: &Weights, hq: &Tensor, first_only: bool, h: &Tensor, x: &Inputs, train: bool) -> Tensor {
        let (nh, d) = (self.d.heads, &self.d);
        let [wq, wk, wv] = &self.qkv;
        // One product for all three (the keys and values alone when the query is [CLS]'s), which
        // `heads_fused` splits after scattering it once; in fp32 the parts run one by one.
        let (q, k, v) = match w.fused(self.fused, h, usize::from(first_only)) {
            Some(qkv) if !first_only => {
                let [q, k, v] = x.heads_fused::<3>(&qkv, nh);
                (q, k, v)
            }
            Some(kv) => {
                let q = w.linear(wq, hq).view([x.rows, 1, nh, -1]).transpose(1, 2);
                let [k, v] = x.heads_fused::<2>(&kv, nh);
                (q, k, v)
            }
            None => {
                let q = w.linear(wq, hq);
                let q = if first_only { q.view([x.rows, 1, nh, -1]).transpose(1, 2) } else { x.heads(&q, nh) };
                (q, x.heads(&w.linear(wk, h), nh), x.heads(&w.linear(wv, h), nh))
            }
        };
        let ctx = attention(&q, &k, &v, x.mask(), if train { d.attention_dropout } else { 0.0 });
        let ctx = if first_only { ctx.transpose(1, 2).reshape([x.rows, d.hidden]) } else { x.tokens(&ctx) };
        let a = dropout(&w.linear(&self.attention_output, &ctx), d.attention_output_dropout, train);
        let a = w.layer_norm(&self.attention_norm, &(a.to_kind(Kind::Float) + hq));
        let inter = d.act.apply(&w.linear(&self.intermediate, &a));
        let o = dropout(&w.linear(&self.output, &inter), d.hidden_dropout, train);
        w.layer_norm(&self.output_norm, &(o.to_kind(Kind::Float) + &a))
    }
}

/// Embeddings and a stack of post-norm layers.
pub(crate) struct Encoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl Encoder {
    pub fn build(b: &mut Builder, embeddings: Embeddings, layer_prefix: &str, names: &LayerNames, d: &Dims) -> Encoder {
        let layers = (0..d.layers).map(|i| Layer::build(b, &format!("{layer_prefix}.{i}"), names, d)).collect();
        Encoder { embeddings, layers }
    }

    /// The last layer's hidden state at each row's first position, `(rows, hidden)` in fp32.
    ///
    /// Only that position goes on to the head, so the last layer computes its output for it
    /// alone (keys and values still come from every token): the same logits, with about 5/6 of
    /// the last layer's work left out.
    pub fn first(&self, w: &Weights, x: &Inputs, train: bool) -> Tensor {
        let mut h = self.embeddings.forward(w, x, train);
        let Some((last, rest)) = self.layers.split_last() else { return x.first(&h) };
        for layer in rest {
            h = layer.forward(w, &h, false, &h, x, train);
        }
        last.forward(w, &x.first(&h), true, &h, x, train)
    }
}

/// BertForSequenceClassification: the pooler (dense, tanh) over [CLS], dropout, classifier.
struct Bert {
    encoder: Encoder,
    pooler: Linear,
    classifier: Linear,
    dropout: f64,
}

impl Network for Bert {
    fn forward(&self, w: &Weights, x: &Inputs, train: bool) -> Tensor {
        let cls = self.encoder.first(w, x, train);
        let pooled = dropout(&w.linear(&self.pooler, &cls).tanh(), self.dropout, train);
        w.linear(&self.classifier, &pooled).to_kind(Kind::Float)
    }
}
