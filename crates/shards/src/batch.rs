//! Batching helpers: gather examples and pad at load time, from a split on disk or from texts
//! encoded in memory (new data to predict on, which has no labels).

use crate::Split;

/// Examples that batches are padded from.
pub trait Examples {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Tokens of example `i`.
    fn length(&self, i: usize) -> usize;
    fn has_token_types(&self) -> bool;
    fn ids_into(&self, i: usize, out: &mut Vec<u32>);
    fn types_into(&self, i: usize, out: &mut Vec<u32>);
    /// The labels of examples `index`, in order; `None` when the examples carry none.
    fn targets(&self, index: &[usize]) -> Option<Targets>;
    /// The labels of every example.
    fn every_target(&self) -> Option<Targets> {
        self.targets(&(0..self.len()).collect::<Vec<_>>())
    }
}

impl Examples for Split {
    fn len(&self) -> usize {
        Split::len(self)
    }
    fn length(&self, i: usize) -> usize {
        Split::length(self, i)
    }
    fn has_token_types(&self) -> bool {
        Split::has_token_types(self)
    }
    fn ids_into(&self, i: usize, out: &mut Vec<u32>) {
        Split::ids_into(self, i, out)
    }
    fn types_into(&self, i: usize, out: &mut Vec<u32>) {
        Split::types_into(self, i, out)
    }
    fn targets(&self, index: &[usize]) -> Option<Targets> {
        Some(Split::targets(self, index))
    }
}

/// Some examples of a split, by index: example `i` is the split's `index[i]` (a seeded subset,
/// such as `train.max_validation_examples` draws).
pub struct Subset<'a> {
    split: &'a Split,
    index: Vec<usize>,
}

impl<'a> Subset<'a> {
    /// The examples `index` of `split`; every index must be below the split's length.
    pub fn new(split: &'a Split, index: Vec<usize>) -> Subset<'a> {
        assert!(index.iter().all(|&i| i < split.len()), "a subset index beyond the split's {} examples", split.len());
        Subset { split, index }
    }
}

impl Examples for Subset<'_> {
    fn len(&self) -> usize {
        self.index.len()
    }
    fn length(&self, i: usize) -> usize {
        self.split.length(self.index[i])
    }
    fn has_token_types(&self) -> bool {
        self.split.has_token_types()
    }
    fn ids_into(&self, i: usize, out: &mut Vec<u32>) {
        self.split.ids_into(self.index[i], out)
    }
    fn types_into(&self, i: usize, out: &mut Vec<u32>) {
        self.split.types_into(self.index[i], out)
    }
    fn targets(&self, index: &[usize]) -> Option<Targets> {
        Some(self.split.targets(&index.iter().map(|&i| self.index[i]).collect::<Vec<_>>()))
    }
}

/// Examples encoded in memory, without labels: texts to predict on.
#[derive(Clone, Debug, Default)]
pub struct Unlabelled {
    /// Example `i` is `ids[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<usize>,
    ids: Vec<u32>,
    /// Token types of sentence pairs, beside `ids`.
    types: Option<Vec<u8>>,
}

impl Unlabelled {
    /// No examples yet; `pairs` when they will carry token types.
    pub fn new(pairs: bool) -> Unlabelled {
        Unlabelled { offsets: vec![0], ids: Vec::new(), types: pairs.then(Vec::new) }
    }

    /// Appends an example. Its token types are required when the examples are pairs, and
    /// ignored otherwise.
    pub fn push(&mut self, ids: &[u32], types: Option<&[u32]>) {
        self.ids.extend_from_slice(ids);
        if let Some(t) = self.types.as_mut() {
            let given = types.unwrap_or_default();
            t.extend((0..ids.len()).map(|k| given.get(k).map_or(0, |&x| x.min(255) as u8)));
        }
        self.offsets.push(self.ids.len());
    }
}

impl Examples for Unlabelled {
    fn len(&self) -> usize {
        self.offsets.len() - 1
    }
    fn length(&self, i: usize) -> usize {
        self.offsets[i + 1] - self.offsets[i]
    }
    fn has_token_types(&self) -> bool {
        self.types.is_some()
    }
    fn ids_into(&self, i: usize, out: &mut Vec<u32>) {
        out.extend_from_slice(&self.ids[self.offsets[i]..self.offsets[i + 1]]);
    }
    fn types_into(&self, i: usize, out: &mut Vec<u32>) {
        if let Some(t) = &self.types {
            out.extend(t[self.offsets[i]..self.offsets[i + 1]].iter().map(|&x| u32::from(x)));
        }
    }
    fn targets(&self, _index: &[usize]) -> Option<Targets> {
        None
    }
}

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
    /// The examples' labels; `None` for examples without any (see [`Examples::targets`]).
    pub targets: Option<Targets>,
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
pub fn pad_batch<E: Examples + ?Sized>(split: &E, index: &[usize], pad_id: u32, pad_to: Option<usize>, multiple_of: usize) -> Batch {
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
