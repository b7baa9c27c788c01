//! DistilBERT (`model_type: distilbert`); mirrors transformers' `configuration_distilbert.py` and
//! `modeling_distilbert.py`.
//!
//! BERT's post-norm encoder ([`crate::bert::Encoder`]) under DistilBERT's names (`q_lin`, `k_lin`,
//! `v_lin`, `out_lin`, `sa_layer_norm`, `ffn.lin1`/`lin2`, `output_layer_norm`), with no token
//! types, no dropout after the attention output, LayerNorm eps 1e-12, and its head:
//! `pre_classifier`, ReLU, dropout (`seq_classif_dropout`), `classifier` on `[CLS]`.
//! `sinusoidal_pos_embds` initializes the position table with sines and cosines (a trainable
//! table, as transformers 5 keeps it).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::bert::{heads_divide, positive, Dims, Embeddings, Encoder, LayerNames, Positions};
use crate::dropout::dropout;
use crate::inputs::Inputs;
use crate::nn::{Activation, Builder, Init, Linear, Network, Weights};
use crate::params::Prefix;
use crate::Family;

fn d_vocab() -> i64 {
    30522
}
fn d_pos() -> i64 {
    512
}
fn d_layers() -> i64 {
    6
}
fn d_heads() -> i64 {
    12
}
fn d_dim() -> i64 {
    768
}
fn d_hidden_dim() -> i64 {
    4 * 768
}
fn d_drop() -> f64 {
    0.1
}
fn d_act() -> Activation {
    Activation::Gelu
}
fn d_init() -> f64 {
    0.02
}
fn d_classif_drop() -> f64 {
    0.2
}

/// DistilBERT's config.json (its own names: `dim`, `n_heads`, `n_layers`, `hidden_dim`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DistilBertConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: i64,
    #[serde(default = "d_pos")]
    pub max_position_embeddings: i64,
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    #[serde(default = "d_layers")]
    pub n_layers: i64,
    #[serde(default = "d_heads")]
    pub n_heads: i64,
    #[serde(default = "d_dim")]
    pub dim: i64,
    #[serde(default = "d_hidden_dim")]
    pub hidden_dim: i64,
    #[serde(default = "d_drop")]
    pub dropout: f64,
    #[serde(default = "d_drop")]
    pub attention_dropout: f64,
    #[serde(default = "d_act")]
    pub activation: Activation,
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    #[serde(default = "d_classif_drop")]
    pub seq_classif_dropout: f64,
    #[serde(default)]
    pub pad_token_id: i64,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

const LAYER: LayerNames = LayerNames {
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attention_output: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    intermediate: "ffn.lin1",
    output: "ffn.lin2",
    output_norm: "output_layer_norm",
};

impl Family for DistilBertConfig {
    fn check(&self) -> anyhow::Result<()> {
        positive(&[
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("dim", self.dim),
            ("hidden_dim", self.hidden_dim),
        ])?;
        heads_divide(self.dim, self.n_heads)
    }

    fn build(&self, b: &mut Builder, num_labels: i64) -> Box<dyn Network> {
        let (h, std) = (self.dim, self.initializer_range);
        let pos_init = if self.sinusoidal_pos_embds { Init::Sinusoidal } else { Init::Normal(std) };
        let embeddings = Embeddings {
            word: b.embedding("distilbert.embeddings.word_embeddings", self.vocab_size, h, Init::NormalPadZero(std, self.pad_token_id)),
            position: b.embedding("distilbert.embeddings.position_embeddings", self.max_position_embeddings, h, pos_init),
            token_type: None,
            reads_types: false,
            norm: b.layer_norm("distilbert.embeddings.LayerNorm", h, 1e-12, true),
            positions: Positions::Absolute,
            pad: self.pad_token_id,
            dropout: self.dropout,
        };
        let dims = Dims {
            hidden: h,
            layers: self.n_layers,
            heads: self.n_heads,
            intermediate: self.hidden_dim,
            act: self.activation,
            hidden_dropout: self.dropout,
            attention_dropout: self.attention_dropout,
            attention_output_dropout: 0.0,
            eps: 1e-12,
            init: std,
        };
        let encoder = Encoder::build(b, embeddings, "distilbert.transformer.layer", &LAYER, &dims);
        b.head();
        let pre_classifier = b.linear("pre_classifier", h, h, true, Init::Normal(std));
        let classifier = b.linear("classifier", h, num_labels, true, Init::Normal(std));
        Box::new(DistilBert { encoder, pre_classifier, classifier, dropout: self.seq_classif_dropout })
    }

    fn vocab_size(&self) -> i64 {
        self.vocab_size
    }

    fn max_length(&self) -> i64 {
        self.max_position_embeddings
    }

    fn architecture(&self) -> &'static str {
        "DistilBertForSequenceClassification"
    }

    fn prefix(&self) -> Prefix {
        Prefix { base: "distilbert", roots: &["embeddings", "transformer"] }
    }

    fn flops_per_token(&self, seq: f64) -> f64 {
        crate::bert::flops_per_token(self.n_layers, self.dim, 2.0 * (self.dim * self.hidden_dim) as f64, seq)
    }

    fn tokenizer_class(&self) -> &'static str {
        "DistilBertTokenizer"
    }

    fn lora_targets(&self) -> &'static [&'static str] {
        &["q_lin", "v_lin"]
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// DistilBertForSequenceClassification.
struct DistilBert {
    encoder: Encoder,
    pre_classifier: Linear,
    classifier: Linear,
    dropout: f64,
}

impl Network for DistilBert {
    fn forward(&self, w: &Weights, x: &Inputs, train: bool) -> Tensor {
        let cls = self.encoder.first(w, x, train);
        let pooled = dropout(&w.linear(&self.pre_classifier, &cls).relu(), self.dropout, train);
        w.linear(&self.classifier, &pooled).to_kind(Kind::Float)
    }
}
