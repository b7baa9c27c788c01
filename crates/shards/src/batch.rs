//! Batching helpers: gather examples and pad at load time.

use crate::Split;

/// A padded batch, row-major `rows × len`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub len: usize,
    pub ids: Vec<i64>,
    /// 1 for real tokens, 0 for padding.
    pub mask: Vec<i64>,
    /// Token types (0 at padding), when the split has them (sentence pairs).
    pub types: Option<Vec<i64>>,
    pub targets: Targets,
    /// The examples' indices in the split.
    pub index: Vec<usize>,
    /// Real (unpadded) tokens in the batch.
    pub tokens: usize,
}

/// The labels of some examples, by the split's [`crate::LabelKind`].
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    Class(Vec<i64>),
    /// Row-major `rows × labels`, 1.0 where the example carries the label.
    Multi { labels: usize, hot: Vec<f32> },
    Score(Vec<f32>),
}

impl Targets {
    pub fn len(&self) -> usize {
        match self {
            Targets::Class(v) => v.len(),
            Targets::Multi { labels, hot } => hot.len() / (*labels).max(1),
            Targets::Score(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Gathers `index` from a split and pads with `pad_id` to `pad_to` when given (and longer), else
/// to the longest example rounded up to a multiple of `multiple_of` (GPU kernels, flash and
/// memory-efficient attention among them, want lengths that are multiples of 8).
pub fn pad_batch(split: &Split, index: &[usize], pad_id: u32, pad_to: Option<usize>, multiple_of: usize) -> Batch {
    let longest = index.iter().map(|&i| split.length(i)).max().unwrap_or(0);
    let m = multiple_of.max(1);
    let len = pad_to.map_or(longest.div_ceil(m) * m, |p| p.max(longest)).max(1);
    let rows = index.len();
    let mut ids = vec![pad_id as i64; rows * len];
    let mut mask = vec![0i64; rows * len];
    let mut types = split.has_token_types().then(|| vec![0i64; rows * len]);
    let mut buf = Vec::with_capacity(len);
    let mut tokens = 0;
    for (r, &i) in index.iter().enumerate() {
        buf.clear();
        split.ids_into(i, &mut buf);
        tokens += buf.len();
        for (c, &id) in buf.iter().enumerate() {
            ids[r * len + c] = id as i64;
            mask[r * len + c] = 1;
        }
        if let Some(t) = types.as_mut() {
            buf.clear();
            split.types_into(i, &mut buf);
            for (c, &x) in buf.iter().enumerate() {
                t[r * len + c] = i64::from(x);
            }
        }
    }
    Batch { rows, len, ids, mask, types, targets: split.targets(index), index: index.to_vec(), tokens }
}
