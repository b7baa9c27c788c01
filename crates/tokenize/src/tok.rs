//! Loading the model's tokenizer and encoding one text with our truncation.

use std::path::Path;

use anyhow::{bail, Context as _};
use pipeline::{PairTruncation, TokenizeParams, Truncation};
use tokenizers::{Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// A tokenizer with the ids the stage needs.
pub struct Tok {
    pub tokenizer: Tokenizer,
    pub pad_id: u32,
    pub cls_id: Option<u32>,
    pub sep_id: Option<u32>,
    pub unk_id: Option<u32>,
    /// `tokenizer.json`, or `vocab.txt` when built from it.
    pub source: String,
    /// The ASCII fast path, when the tokenizer is plain BERT WordPiece.
    pub fast: Option<AsciiBert>,
    /// The model's `config.json` (`{}` when absent), read once here for the pad id and kept for
    /// the stage's vocabulary and position checks.
    pub model_config: serde_json::Value,
}

/// Loads `tokenizer.json`, or builds the BERT WordPiece tokenizer from `vocab.txt` and
/// `tokenizer_config.json`. Truncation and padding in the file are switched off: the pipeline's
/// `max_length` and truncation apply instead.
///
/// The special ids come from the tokenizer and the model's files, never from BERT's names: the
/// pad id is `tokenizer_config.json`'s `pad_token`, else `config.json`'s `pad_token_id`, else
/// the padding the tokenizer file asked for, else a token named `[PAD]` or `<pad>`; the
/// first and last ids the post-processor puts around a text are reported as `cls` and `sep`.
pub fn load(model_dir: &Path) -> anyhow::Result<Tok> {
    let json = model_dir.join("tokenizer.json");
    let (mut tokenizer, source) = if json.exists() {
        let t = Tokenizer::from_file(&json).map_err(|e| anyhow::anyhow!("{}: not a valid tokenizer file: {e}", json.display()))?;
        (t, "tokenizer.json")
    } else {
        (from_vocab(model_dir)?, "vocab.txt")
    };
    let file_pad = tokenizer.get_padding().map(|p| p.pad_id);
    tokenizer.with_truncation(None).map_err(|e| anyhow::anyhow!("{e}"))?;
    tokenizer.with_padding(None);
    let tok_cfg = read_json(&model_dir.join("tokenizer_config.json"))?;
    let model_config = read_json(&model_dir.join("config.json"))?;
    let id = |t: &str| tokenizer.token_to_id(t);
    let named = |key: &str| special_token(&tok_cfg, key).and_then(|t| id(&t));
    let config_pad = model_config["pad_token_id"].as_u64().and_then(|p| u32::try_from(p).ok()).filter(|&p| tokenizer.id_to_token(p).is_some());
    let pad_id = named("pad_token").or(config_pad).or(file_pad).or_else(|| id("[PAD]")).or_else(|| id("<pad>")).unwrap_or(0);
    let (prefix, suffix) = wrapping(&tokenizer).unwrap_or_default();
    let unk_id = named("unk_token").or_else(|| id("[UNK]")).or_else(|| id("<unk>"));
    let fast = AsciiBert::new(&tokenizer);
    Ok(Tok { pad_id, cls_id: prefix.first().copied(), sep_id: suffix.last().copied(), unk_id, fast, tokenizer, source: source.into(), model_config })
}

/// A JSON file of the model directory, `{}` when absent.
fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{}: not JSON", path.display())),
        Err(_) => Ok(serde_json::json!({})),
    }
}

/// A special token of `tokenizer_config.json`: a string, or an AddedToken object's `content`.
fn special_token(cfg: &serde_json::Value, key: &str) -> Option<String> {
    let v = &cfg[key];
    v.as_str().or_else(|| v["content"].as_str()).map(String::from)
}

/// The ids the post-processor puts before and after a single sequence, found by running it on
/// a probe of two sentinel ids; `None` when it does something other than wrap the sequence.
pub fn wrapping(t: &Tokenizer) -> Option<(Vec<u32>, Vec<u32>)> {
    let (a, b) = (u32::MAX - 1, u32::MAX);
    let probe = Encoding::new(vec![a, b], vec![0; 2], vec![String::new(); 2], vec![None; 2], vec![(0, 0); 2], vec![0; 2], vec![1; 2], vec![], Default::default());
    let ids = t.post_process(probe, None, true).ok()?.get_ids().to_vec();
    let at = ids.iter().position(|&x| x == a)?;
    if ids.get(at + 1) != Some(&b) || ids.iter().filter(|&&x| x == a || x == b).count() != 2 {
        return None;
    }
    Some((ids[..at].to_vec(), ids[at + 2..].to_vec()))
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
    let cfg = read_json(&model_dir.join("tokenizer_config.json"))?;
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

/// One example's ids, its token types (sentence pairs), and its untruncated length.
pub struct Encoded {
    pub ids: Vec<u32>,
    pub types: Option<Vec<u32>>,
    pub full: u32,
}

/// An encoding of bare ids (no offsets or words), for the post-processor.
fn bare(ids: Vec<u32>) -> Encoding {
    let n = ids.len();
    Encoding::new(ids, vec![0; n], vec![String::new(); n], vec![None; n], vec![(0, 0); n], vec![0; n], vec![1; n], vec![], Default::default())
}

impl Tok {
    /// A text's tokens without special tokens (the fast path's ids when it applies).
    fn body(&self, text: &str) -> anyhow::Result<Encoding> {
        if let Some(ids) = self.fast.as_ref().and_then(|f| f.body(text)) {
            return Ok(bare(ids));
        }
        self.tokenizer.encode_fast(text, false).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))
    }

    /// Encodes a sentence pair as transformers' `tokenizer(a, b, truncation=..., max_length=...)`
    /// does: both texts tokenized alone, cut to `max_length` (special tokens included) by
    /// `pair_truncation` with the tokenizers library's own rule, then joined by the tokenizer's
    /// post-processor (BERT: `[CLS] a [SEP] b [SEP]`, token types 0 then 1; RoBERTa:
    /// `<s> a </s></s> b </s>`).
    pub fn encode_pair(&self, a: &str, b: &str, p: &TokenizeParams) -> anyhow::Result<Encoded> {
        let (ea, eb) = (self.body(a)?, self.body(b)?);
        let specials = self.tokenizer.get_post_processor().map(|pp| pp.added_tokens(true)).unwrap_or(0);
        let full = (ea.len() + eb.len() + specials) as u32;
        let params = TruncationParams {
            max_length: p.max_length.saturating_sub(specials),
            strategy: match p.pair_truncation {
                PairTruncation::LongestFirst => TruncationStrategy::LongestFirst,
                PairTruncation::OnlyFirst => TruncationStrategy::OnlyFirst,
                PairTruncation::OnlySecond => TruncationStrategy::OnlySecond,
            },
            ..Default::default()
        };
        let (la, lb) = (ea.len(), eb.len());
        let (ea, eb) = tokenizers::utils::truncation::truncate_encodings(ea, Some(eb), &params).map_err(|e| {
            anyhow::anyhow!(
                "cannot cut a pair of {la} + {lb} tokens to tokenize.max_length {} by pair_truncation {}: {e}; use pair_truncation: longest_first or a larger max_length",
                p.max_length,
                serde_json::to_value(p.pair_truncation).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            )
        })?;
        let done = self.tokenizer.post_process(ea, eb, true).map_err(|e| anyhow::anyhow!("adding special tokens: {e}"))?;
        Ok(Encoded { ids: done.get_ids().to_vec(), types: Some(done.get_type_ids().to_vec()), full })
    }

    /// Encodes one text: ids with special tokens, truncated to `max_length` by the pipeline's
    /// rule, and the length the text would have had untruncated (special tokens included).
    pub fn encode(&self, text: &str, p: &TokenizeParams) -> anyhow::Result<(Vec<u32>, u32)> {
        if let Some(f) = &self.fast {
            if let Some(body) = f.body(text) {
                return Ok(f.finish(body, p));
            }
        }
        self.encode_general(text, p)
    }

    /// [`Tok::encode`] through the crate's whole pipeline, without the fast path.
    pub fn encode_general(&self, text: &str, p: &TokenizeParams) -> anyhow::Result<(Vec<u32>, u32)> {
        let enc = self.tokenizer.encode_fast(text, false).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        let specials = self.tokenizer.get_post_processor().map(|pp| pp.added_tokens(false)).unwrap_or(0);
        let full = enc.len() + specials;
        let (head_n, tail_n) = kept(enc.len(), p.max_length.saturating_sub(specials), p);
        let body: Encoding = if tail_n == 0 {
            let mut e = enc;
            e.truncate(head_n, 0, TruncationDirection::Right);
            e
        } else {
            let mut head = enc.clone();
            head.truncate(head_n, 0, TruncationDirection::Right);
            let mut tail = enc;
            tail.truncate(tail_n, 0, TruncationDirection::Left);
            head.merge_with(tail, false);
            head
        };
        let done = self.tokenizer.post_process(body, None, true).map_err(|e| anyhow::anyhow!("adding special tokens: {e}"))?;
        Ok((done.get_ids().to_vec(), full as u32))
    }
}

/// The pipeline's truncation rule: of a text's `len` tokens (special tokens aside) with room for
/// `budget`, how many to keep from the start and from the end. All of them when they fit (as
/// the head); else the head (`head`), or `head_tokens` from the start and the rest from the end
/// (`head_tail`).
fn kept(len: usize, budget: usize, p: &TokenizeParams) -> (usize, usize) {
    if len <= budget {
        return (len, 0);
    }
    let head = match p.truncation {
        Truncation::Head => budget,
        Truncation::HeadTail => p.head_tokens.min(budget),
    };
    (head, budget - head)
}

/// The fast path for BERT tokenizers on pure-ASCII text, which is most text in English datasets.
/// There, BERT's normalizer and pre-tokenizer reduce to one pass over the bytes (drop control
/// characters, whitespace to spaces, lower-case, split at whitespace and punctuation), where the
/// crate's general machinery tracks alignments through several passes; and words repeat, so each
/// thread caches word → ids. The WordPiece split itself is still the crate's. Used only when the
/// tokenizer is exactly BertNormalizer + BertPreTokenizer + WordPiece with a post-processor that
/// only wraps the sequence and no added token is matched after normalization; texts with
/// non-ASCII bytes or an added token's text take the general path. Equality with the general path is tested on the fixtures and on random ASCII.
pub struct AsciiBert {
    id: u64,
    wordpiece: tokenizers::models::wordpiece::WordPiece,
    clean_text: bool,
    lowercase: bool,
    /// Added tokens, matched on the raw text (case-sensitive, as the crate does for tokens with
    /// `normalized: false`): a text containing one goes the general way.
    added: Vec<String>,
    /// Special tokens the post-processor puts before and after a sequence.
    prefix: Vec<u32>,
    suffix: Vec<u32>,
}

/// A thread's word cache: the id of the tokenizer that filled it, and word bytes -> token ids.
type WordCache = (u64, std::collections::HashMap<Vec<u8>, Vec<u32>>);

thread_local! {
    static WORDS: std::cell::RefCell<WordCache> = Default::default();
}

/// Words cached per thread before the cache is cleared (bounds memory on odd data).
const MAX_CACHED_WORDS: usize = 1 << 20;

impl AsciiBert {
    /// The fast path for this tokenizer, if it applies.
    pub fn new(t: &Tokenizer) -> Option<AsciiBert> {
        use tokenizers::{ModelWrapper, NormalizerWrapper, PreTokenizerWrapper};
        let Some(NormalizerWrapper::BertNormalizer(n)) = t.get_normalizer() else { return None };
        let Some(PreTokenizerWrapper::BertPreTokenizer(_)) = t.get_pre_tokenizer() else { return None };
        let ModelWrapper::WordPiece(wp) = t.get_model() else { return None };
        let added = t.get_added_tokens_decoder();
        // Tokens matched on the normalized text would need the normalization to look for them.
        if added.values().any(|a| a.normalized) {
            return None;
        }
        let (prefix, suffix) = wrapping(t)?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Some(AsciiBert {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            wordpiece: wp.clone(),
            clean_text: n.clean_text,
            lowercase: n.lowercase,
            added: added.into_values().map(|a| a.content).collect(),
            prefix,
            suffix,
        })
    }

    /// Ids of the text without special tokens, or None when the text needs the general path.
    pub fn body(&self, text: &str) -> Option<Vec<u32>> {
        if !text.is_ascii() {
            return None;
        }
        if self.added.iter().any(|a| text.contains(a.as_str())) {
            return None;
        }
        WORDS.with(|cell| {
            let mut cell = cell.borrow_mut();
            let (owner, cache) = &mut *cell;
            if *owner != self.id || cache.len() > MAX_CACHED_WORDS {
                *owner = self.id;
                cache.clear();
            }
            let mut ids = Vec::with_capacity(text.len() / 4);
            let mut word: Vec<u8> = Vec::with_capacity(32);
            for &byte in text.as_bytes() {
                let mut c = byte;
                if self.clean_text {
                    match c {
                        b'\t' | b'\n' | b'\r' => c = b' ',
                        0x00..=0x1f | 0x7f => continue,
                        _ => {}
                    }
                }
                if self.lowercase {
                    c = c.to_ascii_lowercase();
                }
                if matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
                    self.word(&word, cache, &mut ids)?;
                    word.clear();
                } else if c.is_ascii_punctuation() {
                    self.word(&word, cache, &mut ids)?;
                    word.clear();
                    self.word(&[c], cache, &mut ids)?;
                } else {
                    word.push(c);
                }
            }
            self.word(&word, cache, &mut ids)?;
            Some(ids)
        })
    }

    fn word(&self, word: &[u8], cache: &mut std::collections::HashMap<Vec<u8>, Vec<u32>>, ids: &mut Vec<u32>) -> Option<()> {
        use tokenizers::Model as _;
        if word.is_empty() {
            return Some(());
        }
        if let Some(hit) = cache.get(word) {
            ids.extend_from_slice(hit);
            return Some(());
        }
        let s = std::str::from_utf8(word).ok()?;
        let pieces: Vec<u32> = self.wordpiece.tokenize(s).ok()?.into_iter().map(|t| t.id).collect();
        ids.extend_from_slice(&pieces);
        cache.insert(word.to_vec(), pieces);
        Some(())
    }

    /// Special tokens around `body` cut to `max_length` by the pipeline's rule, and the length
    /// untruncated.
    pub fn finish(&self, body: Vec<u32>, p: &TokenizeParams) -> (Vec<u32>, u32) {
        let specials = self.prefix.len() + self.suffix.len();
        let full = (body.len() + specials) as u32;
        let (head_n, tail_n) = kept(body.len(), p.max_length.saturating_sub(specials), p);
        let mut ids = Vec::with_capacity(head_n + tail_n + specials);
        ids.extend_from_slice(&self.prefix);
        ids.extend_from_slice(&body[..head_n]);
        ids.extend_from_slice(&body[body.len() - tail_n..]);
        ids.extend_from_slice(&self.suffix);
        (ids, full)
    }
}
