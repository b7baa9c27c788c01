//! Loading the model's tokenizer and encoding one text with our truncation.

use std::path::Path;

use anyhow::{bail, Context as _};
use pipeline::{TokenizeParams, Truncation};
use tokenizers::{Encoding, PostProcessor, Tokenizer, TruncationDirection};

/// A tokenizer with the ids the stage needs.
pub struct Tok {
    pub tokenizer: Tokenizer,
    pub pad_id: u32,
    pub cls_id: Option<u32>,
    pub sep_id: Option<u32>,
    pub unk_id: Option<u32>,
    /// `tokenizer.json`, or `vocab.txt` when built from it.
    pub source: String,
}

/// Loads `tokenizer.json`, or builds the BERT WordPiece tokenizer from `vocab.txt` and
/// `tokenizer_config.json`. Truncation and padding in the file are switched off: the pipeline's
/// `max_length` and truncation apply instead.
pub fn load(model_dir: &Path) -> anyhow::Result<Tok> {
    let json = model_dir.join("tokenizer.json");
    let (mut tokenizer, source) = if json.exists() {
        let t = Tokenizer::from_file(&json).map_err(|e| anyhow::anyhow!("{}: not a valid tokenizer file: {e}", json.display()))?;
        (t, "tokenizer.json")
    } else {
        (from_vocab(model_dir)?, "vocab.txt")
    };
    tokenizer.with_truncation(None).map_err(|e| anyhow::anyhow!("{e}"))?;
    tokenizer.with_padding(None);
    let id = |t: &str| tokenizer.token_to_id(t);
    let pad_id = id("[PAD]").or_else(|| id("<pad>")).unwrap_or(0);
    let cls_id = id("[CLS]").or_else(|| id("<s>"));
    let sep_id = id("[SEP]").or_else(|| id("</s>"));
    let unk_id = id("[UNK]").or_else(|| id("<unk>"));
    Ok(Tok { pad_id, cls_id, sep_id, unk_id, tokenizer, source: source.into() })
}

fn from_vocab(model_dir: &Path) -> anyhow::Result<Tokenizer> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    let vocab = model_dir.join("vocab.txt");
    if !vocab.exists() {
        bail!("{}: no tokenizer.json and no vocab.txt", model_dir.display());
    }
    let cfg_path = model_dir.join("tokenizer_config.json");
    let cfg: serde_json::Value = match std::fs::read(&cfg_path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{}: not JSON", cfg_path.display()))?,
        Err(_) => serde_json::json!({}),
    };
    let lower = cfg["do_lower_case"].as_bool().unwrap_or(true);
    let strip = cfg["strip_accents"].as_bool();
    let chinese = cfg["tokenize_chinese_chars"].as_bool().unwrap_or(true);
    let tok = |k: &str, d: &str| cfg[k].as_str().unwrap_or(d).to_string();
    let (unk, cls, sep) = (tok("unk_token", "[UNK]"), tok("cls_token", "[CLS]"), tok("sep_token", "[SEP]"));
    let wp = WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token(unk)
        .build()
        .map_err(|e| anyhow::anyhow!("{}: not a WordPiece vocabulary: {e}", vocab.display()))?;
    let mut t = Tokenizer::new(wp);
    let cls_id = t.token_to_id(&cls).with_context(|| format!("{}: no {cls} token", vocab.display()))?;
    let sep_id = t.token_to_id(&sep).with_context(|| format!("{}: no {sep} token", vocab.display()))?;
    t.with_normalizer(Some(BertNormalizer::new(true, chinese, strip, lower)));
    t.with_pre_tokenizer(Some(BertPreTokenizer));
    t.with_post_processor(Some(BertProcessing::new((sep, sep_id), (cls, cls_id))));
    Ok(t)
}

impl Tok {
    /// Encodes one text: ids with special tokens, truncated to `max_length` by the pipeline's
    /// rule, and the length the text would have had untruncated (special tokens included).
    pub fn encode(&self, text: &str, p: &TokenizeParams) -> anyhow::Result<(Vec<u32>, u32)> {
        let enc = self.tokenizer.encode_fast(text, false).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        let specials = self.tokenizer.get_post_processor().map(|pp| pp.added_tokens(false)).unwrap_or(0);
        let budget = p.max_length.saturating_sub(specials);
        let full = enc.len() + specials;
        let body: Encoding = if enc.len() <= budget {
            enc
        } else {
            match p.truncation {
                Truncation::Head => {
                    let mut e = enc;
                    e.truncate(budget, 0, TruncationDirection::Right);
                    e
                }
                Truncation::HeadTail => {
                    let head_n = p.head_tokens.min(budget);
                    let mut head = enc.clone();
                    head.truncate(head_n, 0, TruncationDirection::Right);
                    let mut tail = enc;
                    tail.truncate(budget - head_n, 0, TruncationDirection::Left);
                    head.merge_with(tail, false);
                    head
                }
            }
        };
        let done = self.tokenizer.post_process(body, None, true).map_err(|e| anyhow::anyhow!("adding special tokens: {e}"))?;
        Ok((done.get_ids().to_vec(), full as u32))
    }
}
