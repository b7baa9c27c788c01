//! `config.json` of a BERT model; mirrors transformers' `configuration_bert.py`
//! (https://github.com/huggingface/transformers/blob/main/src/transformers/models/bert/configuration_bert.py).

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

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
fn d_act() -> String {
    "gelu".into()
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

/// The fields we use; everything else in the file is kept in `extra` and written back on export.
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
    pub hidden_act: String,
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
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<BertConfig> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let c: BertConfig = serde_json::from_slice(&bytes).with_context(|| format!("{}: not a BERT config", path.display()))?;
        c.check().with_context(|| format!("{}", path.display()))?;
        Ok(c)
    }

    /// A tiny configuration (2 layers, hidden 32) for tests and fixtures.
    pub fn tiny(vocab_size: i64) -> BertConfig {
        let v = serde_json::json!({
            "model_type": "bert", "vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128,
        });
        serde_json::from_value(v).expect("a valid tiny config")
    }

    /// Refuses configurations we cannot run.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(t) = &self.model_type {
            if t != "bert" {
                bail!("model_type `{t}` is not supported yet (only `bert`: BERT, MiniLM and other BertModel checkpoints)");
            }
        }
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v < 1 {
                bail!("config.json: {key} must be at least 1, got {v}");
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            bail!("hidden_size {} is not a multiple of num_attention_heads {}", self.hidden_size, self.num_attention_heads);
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "relu" | "gelu_new" | "gelu_pytorch_tanh") {
            bail!("hidden_act `{}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)", self.hidden_act);
        }
        if let Some(p) = self.extra.get("position_embedding_type").and_then(|v| v.as_str()) {
            if p != "absolute" {
                bail!("position_embedding_type `{p}` is not supported (only absolute)");
            }
        }
        Ok(())
    }

    /// The dropout before the classifier (HF: classifier_dropout, else hidden_dropout_prob).
    pub fn classifier_dropout(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// Parameters, for FLOP estimates.
    pub fn encoder_flops_per_token(&self, seq: i64) -> f64 {
        let (h, i, l) = (self.hidden_size as f64, self.intermediate_size as f64, self.num_hidden_layers as f64);
        // Matrix products per token per layer: QKV + output (4h²) and the MLP (2hi), 2 FLOPs each,
        // plus attention scores and mixing (2·2·seq·h).
        l * (2.0 * (4.0 * h * h + 2.0 * h * i) + 4.0 * seq as f64 * h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_below_one_are_refused_by_name() {
        assert!(BertConfig::tiny(100).check().is_ok());
        for key in ["num_attention_heads", "num_hidden_layers", "hidden_size"] {
            let mut v = serde_json::to_value(BertConfig::tiny(100)).expect("serializes");
            v[key] = serde_json::json!(0);
            let c: BertConfig = serde_json::from_value(v).expect("parses");
            let e = c.check().expect_err("refused").to_string();
            assert!(e.contains(key) && e.contains("at least 1"), "{e}");
        }
    }
}
