//! RoBERTa and XLM-RoBERTa (`model_type: roberta | xlm-roberta`); mirrors transformers'
//! `configuration_roberta.py` and `modeling_roberta.py` (`xlm_roberta` is the same model under
//! other class names).
//!
//! BERT's encoder ([`crate::bert::Encoder`]) under `roberta.`, with two differences: position ids
//! count real tokens from `pad_token_id + 1` (fairseq's `make_positions`), and the head is
//! RobertaClassificationHead on `<s>` — dropout, `classifier.dense`, tanh, dropout,
//! `classifier.out_proj` — with no pooler.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::bert::{BertConfig, Encoder, Positions};
use crate::dropout::dropout;
use crate::inputs::Inputs;
use crate::nn::{Builder, Init, Linear, Network, Weights};
use crate::params::Prefix;
use crate::Family;

/// RoBERTa's config.json: BERT's fields, with RoBERTa's defaults where they differ
/// (`vocab_size` 50265, `pad_token_id` 1).
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct RobertaConfig(pub BertConfig);

impl<'de> Deserialize<'de> for RobertaConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RobertaConfig, D::Error> {
        let mut m = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        m.entry("vocab_size").or_insert(50265.into());
        m.entry("pad_token_id").or_insert(1.into());
        BertConfig::deserialize(serde_json::Value::Object(m)).map(RobertaConfig).map_err(serde::de::Error::custom)
    }
}

impl Family for RobertaConfig {
    fn check(&self) -> anyhow::Result<()> {
        self.0.check_sizes()?;
        if self.max_length() < 1 {
            anyhow::bail!(
                "max_position_embeddings {} leaves no position after pad_token_id {} (RoBERTa's positions start at pad_token_id + 1)",
                self.0.max_position_embeddings,
                self.0.pad_token_id
            );
        }
        Ok(())
    }

    fn build(&self, b: &mut Builder, num_labels: i64) -> Box<dyn Network> {
        let c = &self.0;
        let embeddings = c.embeddings(b, "roberta", Positions::AfterPadding, false);
        let encoder = Encoder::build(b, embeddings, "roberta.encoder.layer", &crate::bert::BERT_LAYER, &c.dims());
        b.head();
        let (h, std) = (c.hidden_size, Init::Normal(c.initializer_range));
        let dense = b.linear("classifier.dense", h, h, true, std);
        let out_proj = b.linear("classifier.out_proj", h, num_labels, true, std);
        Box::new(Roberta { encoder, dense, out_proj, dropout: c.classifier_dropout() })
    }

    fn vocab_size(&self) -> i64 {
        self.0.vocab_size
    }

    /// Positions `pad_token_id + 1 ..` of the table: 512 of roberta-base's 514.
    fn max_length(&self) -> i64 {
        self.0.max_position_embeddings - self.0.pad_token_id - 1
    }

    fn architecture(&self) -> &'static str {
        match self.0.model_type.as_deref() {
            Some("xlm-roberta") => "XLMRobertaForSequenceClassification",
            _ => "RobertaForSequenceClassification",
        }
    }

    fn prefix(&self) -> Prefix {
        Prefix { base: "roberta", roots: &["embeddings", "encoder", "pooler"] }
    }

    fn flops_per_token(&self, seq: f64) -> f64 {
        self.0.flops_per_token(seq)
    }

    fn tokenizer_class(&self) -> &'static str {
        match self.0.model_type.as_deref() {
            Some("xlm-roberta") => "XLMRobertaTokenizer",
            _ => "RobertaTokenizer",
        }
    }

    fn lora_targets(&self) -> &'static [&'static str] {
        &["query", "value"]
    }

    fn to_json(&self) -> serde_json::Value {
        self.0.to_json()
    }
}

/// RobertaForSequenceClassification.
struct Roberta {
    encoder: Encoder,
    dense: Linear,
    out_proj: Linear,
    dropout: f64,
}

impl Network for Roberta {
    fn forward(&self, w: &Weights, x: &Inputs, train: bool) -> Tensor {
        let s = dropout(&self.encoder.first(w, x, train), self.dropout, train);
        let s = dropout(&w.linear(&self.dense, &s).tanh(), self.dropout, train);
        w.linear(&self.out_proj, &s).to_kind(Kind::Float)
    }
}
