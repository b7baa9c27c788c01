//! A batch on the device, in the form the forward pass takes it.
//!
//! When some row is padded, only the real tokens go through the token-wise work (embeddings,
//! every linear layer, GELU, LayerNorm, dropout: nearly all of a step's FLOPs): they are packed
//! row after row into a `(tokens, hidden)` matrix, and scattered into a zero-padded
//! `(rows, heads, len, head_dim)` layout only for attention, which needs it. A batch padded to
//! max_length 512 on IMDB is about half padding; a length-bucketed one, a few percent. The
//! packing is computed on the host from the batch's mask and uploaded with the ids, so the
//! device never has to report how many tokens there are (which would make the host wait).

use tch::{Device, Kind, Tensor};

/// A batch of `rows` sequences of `len` positions on one device.
pub struct Inputs {
    pub rows: i64,
    pub len: i64,
    /// `(rows * len,)` token ids when nothing is packed, else `(tokens,)`: the real tokens, row
    /// after row.
    pub ids: Tensor,
    /// The token types of sentence pairs, laid out as `ids` (`None`: every token is type 0).
    pub types: Option<Tensor>,
    /// Set when some row is padded.
    pub padding: Option<Padding>,
}

/// Where a padded batch's real tokens are.
pub struct Padding {
    /// `(rows, 1, 1, len)` bool key mask for attention (`true`: a real token).
    pub mask: Tensor,
    /// Set when the real tokens are packed (every row's first position is real, as in the
    /// right-padded batches of our shards); otherwise the batch runs padded, under the mask.
    pub packed: Option<Packed>,
}

/// Packed real tokens: `(tokens,)` int64 vectors, and one per row.
pub struct Packed {
    /// Each real token's position in the padded batch, `row * len + column`.
    pub flat: Tensor,
    /// Each real token's column: its position id.
    pub column: Tensor,
    /// `(rows,)`: where each row's first token ([CLS]) is among the real tokens.
    pub first: Tensor,
}

impl Inputs {
    /// From tensors on any device: `ids` `(rows, len)`, `mask` `(rows, len)` with 1 for real
    /// tokens (`None`: nothing padded). Reads both back to the host to plan the packing; the
    /// training and inference loops use [`upload`], which plans it before the upload.
    pub fn new(ids: &Tensor, mask: Option<&Tensor>) -> Inputs {
        let (rows, len) = ids.size2().expect("ids must be (rows, len)");
        let host = |t: &Tensor| Vec::<i64>::try_from(t.to_kind(Kind::Int64).to_device(Device::Cpu).flatten(0, -1)).expect("an int64 vector");
        let mask = mask.map(host);
        upload(rows as usize, len as usize, &host(ids), None, mask.as_deref(), ids.device())
    }

    /// The packing, when the token-wise tensors hold the real tokens only (else they hold all
    /// `rows * len` positions).
    pub fn packed(&self) -> Option<&Packed> {
        self.padding.as_ref().and_then(|p| p.packed.as_ref())
    }

    /// The attention key mask, when some row is padded.
    pub fn mask(&self) -> Option<&Tensor> {
        self.padding.as_ref().map(|p| &p.mask)
    }

    /// Token-wise `(n, hidden)` → `(rows, heads, len, hidden / heads)` for attention; padded
    /// positions of a packed batch are zeros.
    pub fn heads(&self, t: &Tensor, heads: i64) -> Tensor {
        let h = t.size()[1];
        self.dense(t).view([self.rows, self.len, heads, h / heads]).transpose(1, 2)
    }

    /// [`Inputs::heads`] for `N` projections side by side in one `(n, N × hidden)` matrix (a
    /// fused query/key/value product): scattered into the padded layout once, then split.
    pub fn heads_fused<const N: usize>(&self, t: &Tensor, heads: i64) -> [Tensor; N] {
        let h = t.size()[1] / N as i64;
        // unbind's backward is one stack: the split costs no kernel either way.
        let mut parts = self.dense(t).view([self.rows, self.len, N as i64, heads, h / heads]).unbind(2).into_iter();
        std::array::from_fn(|_| parts.next().expect("unbind gives N parts").transpose(1, 2))
    }

    /// Token-wise `(n, width)` in the padded layout `(rows × len, width)`: as is when nothing is
    /// packed, else scattered with zeros at padded positions.
    fn dense(&self, t: &Tensor) -> Tensor {
        match self.packed() {
            Some(p) => Tensor::zeros([self.rows * self.len, t.size()[1]], (t.kind(), t.device())).index_copy(0, &p.flat, t),
            None => t.shallow_clone(),
        }
    }

    /// Attention output `(rows, heads, len, head_dim)` → token-wise `(n, hidden)`.
    pub fn tokens(&self, ctx: &Tensor) -> Tensor {
        let (_, heads, _, hd) = ctx.size4().expect("attention output must be 4-d");
        let dense = ctx.transpose(1, 2).reshape([self.rows * self.len, heads * hd]);
        match self.packed() {
            Some(p) => dense.index_select(0, &p.flat),
            None => dense,
        }
    }

    /// Each row's first position ([CLS]) from token-wise `(n, hidden)`: `(rows, hidden)`.
    pub fn first(&self, t: &Tensor) -> Tensor {
        match self.packed() {
            Some(p) => t.index_select(0, &p.first),
            None => t.view([self.rows, self.len, -1]).select(1, 0),
        }
    }
}

impl Inputs {
    /// Position ids counted over real tokens from `pad + 1` (RoBERTa's, from `padding_idx`),
    /// `pad` at padded positions: token-wise `(n,)`.
    pub fn positions_after(&self, pad: i64) -> Tensor {
        match (&self.padding, self.packed()) {
            (_, Some(p)) => &p.column + (pad + 1),
            (Some(p), None) => {
                let m = p.mask.view([self.rows, self.len]).to_kind(Kind::Int64);
                (m.cumsum(1, Kind::Int64) * &m + pad).view(-1)
            }
            (None, None) => {
                let cols = Tensor::arange(self.len, (Kind::Int64, self.ids.device())) + (pad + 1);
                cols.repeat([self.rows])
            }
        }
    }

    /// The mean of token-wise `(n, width)` over each row's real tokens: `(rows, width)`.
    pub fn mean(&self, t: &Tensor) -> Tensor {
        let width = t.size()[1];
        match (&self.padding, self.packed()) {
            (Some(pad), Some(p)) => {
                let row = p.flat.floor_divide_scalar(self.len);
                let sums = Tensor::zeros([self.rows, width], (t.kind(), t.device())).index_add(0, &row, t);
                sums / pad.mask.view([self.rows, 1, self.len]).sum_dim_intlist(2, false, t.kind())
            }
            (Some(pad), None) => {
                let m = pad.mask.view([self.rows, self.len, 1]).to_kind(t.kind());
                (t.view([self.rows, self.len, width]) * &m).sum_dim_intlist(1, false, t.kind()) / m.sum_dim_intlist(1, false, t.kind())
            }
            (None, _) => t.view([self.rows, self.len, width]).mean_dim(1, false, t.kind()),
        }
    }

    /// The attention mask of a bidirectional sliding window: a query attends to keys at most
    /// `half` positions away (and not to padding). For every query row `(rows, 1, len, len)`,
    /// or (`first_only`) for each row's first position `(rows, 1, 1, len)`. A query may always
    /// attend to itself, so that no row of scores is all masked (the padded queries' outputs are
    /// never read). `None` where nothing is masked.
    pub fn window_mask(&self, half: i64, first_only: bool) -> Option<Tensor> {
        if self.len - 1 <= half {
            return self.mask().map(|m| m.shallow_clone());
        }
        let dev = self.ids.device();
        let cols = Tensor::arange(self.len, (Kind::Int64, dev));
        let rows = if first_only { Tensor::zeros([1], (Kind::Int64, dev)) } else { cols.shallow_clone() };
        let (q, k) = (rows.view([-1, 1]), cols.view([1, -1]));
        let band = (&q - &k).abs().le(half);
        let mask = match self.mask() {
            Some(keys) => band.logical_and(&keys.logical_or(&q.eq_tensor(&k))),
            None => band.view([1, 1, q.size()[0], self.len]),
        };
        Some(mask)
    }
}

/// Moves a batch to `device` in one host-to-device copy. `ids`, `types` (sentence pairs) and
/// `mask` are row-major `rows × len`; `mask` 1 for real tokens, `None` when nothing is padded.
///
/// On CUDA the copy is non-blocking from page-locked memory (see [`to_device`]).
pub fn upload(rows: usize, len: usize, ids: &[i64], types: Option<&[i64]>, mask: Option<&[i64]>, device: Device) -> Inputs {
    let mask = mask.filter(|m| m.contains(&0));
    // Packable when every row starts with a real token: then [CLS] is among the packed tokens.
    let packable = mask.is_some_and(|m| (0..rows).all(|r| m[r * len] != 0));
    let mut host: Vec<i64> = Vec::with_capacity(5 * ids.len() + rows);
    let mut tokens = rows * len;
    match mask {
        Some(m) if packable => {
            let real: Vec<usize> = (0..rows * len).filter(|&i| m[i] != 0).collect();
            tokens = real.len();
            host.extend(real.iter().map(|&i| ids[i]));
            if let Some(t) = types {
                host.extend(real.iter().map(|&i| t[i]));
            }
            host.extend(real.iter().map(|&i| i as i64));
            host.extend(real.iter().map(|&i| (i % len) as i64));
            // Each row's first position is real (packable), so it is where column 0 comes.
            host.extend(real.iter().enumerate().filter(|(_, &i)| i % len == 0).map(|(k, _)| k as i64));
            host.extend_from_slice(m);
        }
        Some(m) => {
            host.extend_from_slice(ids);
            host.extend_from_slice(types.unwrap_or_default());
            host.extend_from_slice(m);
        }
        None => {
            host.extend_from_slice(ids);
            host.extend_from_slice(types.unwrap_or_default());
        }
    }
    let all = to_device(Tensor::from_slice(&host), device);
    let mut at = 0i64;
    let mut next = |n: usize| {
        let t = all.narrow(0, at, n as i64);
        at += n as i64;
        t
    };
    let (r, l) = (rows as i64, len as i64);
    let ids = next(tokens);
    let types = types.map(|_| next(tokens));
    let padding = match mask {
        Some(_) if packable => {
            let (flat, column, first) = (next(tokens), next(tokens), next(rows));
            let mask = next(rows * len).to_kind(Kind::Bool).view([r, 1, 1, l]);
            Some(Padding { mask, packed: Some(Packed { flat, column, first }) })
        }
        Some(_) => Some(Padding { mask: next(rows * len).to_kind(Kind::Bool).view([r, 1, 1, l]), packed: None }),
        None => None,
    };
    Inputs { rows: r, len: l, ids, types, padding }
}

/// A host tensor on `device`. On CUDA the copy is non-blocking from page-locked memory: a
/// blocking copy synchronizes the stream, so the host would wait for the step in flight and the
/// GPU would then idle while the host queues the next step's kernels (and from pageable memory
/// the driver may synchronize too). The page-locked buffer comes from libtorch's pinned-memory
/// cache, which reuses it only once the copy is done; if pinning fails, the copy goes from
/// pageable memory.
pub fn to_device(t: Tensor, device: Device) -> Tensor {
    match device {
        Device::Cpu => t,
        _ => {
            let kind = t.kind();
            t.f_internal_pin_memory(device).unwrap_or(t).to_device_(device, kind, true, false)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // clippy.toml's allow-unwrap-in-tests misses some of these tests
    use super::*;

    fn ints(t: &Tensor) -> Vec<i64> {
        Vec::try_from(t.flatten(0, -1).to_kind(Kind::Int64)).unwrap()
    }

    #[test]
    fn a_right_padded_batch_packs_its_real_tokens() {
        let ids = [101, 7, 8, 102, 101, 9, 102, 0, 101, 102, 0, 0];
        let mask = [1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0];
        let x = upload(3, 4, &ids, None, Some(&mask), Device::Cpu);
        let p = x.padding.as_ref().unwrap().packed.as_ref().unwrap();
        assert_eq!(ints(&x.ids), [101, 7, 8, 102, 101, 9, 102, 101, 102]);
        assert_eq!(ints(&p.flat), [0, 1, 2, 3, 4, 5, 6, 8, 9]);
        assert_eq!(ints(&p.column), [0, 1, 2, 3, 0, 1, 2, 0, 1]);
        assert_eq!(ints(&p.first), [0, 4, 7]);
        assert_eq!(ints(&x.mask().unwrap().to_kind(Kind::Int64)), mask);
        let types = [0, 0, 1, 1, 0, 1, 1, 0, 0, 1, 0, 0];
        let t = upload(3, 4, &ids, Some(&types), Some(&mask), Device::Cpu);
        assert_eq!(ints(t.types.as_ref().unwrap()), [0, 0, 1, 1, 0, 1, 1, 0, 1]);
        assert_eq!(ints(&t.ids), ints(&x.ids));
        // The same plan from tensors.
        let y = Inputs::new(&Tensor::from_slice(&ids).view([3, 4]), Some(&Tensor::from_slice(&mask).view([3, 4])));
        assert_eq!(ints(&y.ids), ints(&x.ids));
        assert_eq!(ints(&y.padding.unwrap().packed.unwrap().first), [0, 4, 7]);
    }

    #[test]
    fn unpadded_and_left_padded_batches_are_not_packed() {
        let ids = [101, 7, 102, 101, 8, 102];
        let x = upload(2, 3, &ids, None, Some(&[1; 6]), Device::Cpu);
        assert!(x.padding.is_none(), "an all-ones mask is no padding");
        assert_eq!(ints(&x.ids), ids);
        let x = upload(2, 3, &[101, 7, 102, 0, 101, 102], None, Some(&[1, 1, 1, 0, 1, 1]), Device::Cpu);
        let p = x.padding.unwrap();
        assert!(p.packed.is_none(), "a row whose first position is padding keeps the padded layout");
        assert_eq!(ints(&p.mask.to_kind(Kind::Int64)), [1, 1, 1, 0, 1, 1]);
    }

    #[test]
    fn heads_and_tokens_are_inverse_on_real_tokens() {
        let x = upload(2, 3, &[1, 2, 3, 4, 5, 0], None, Some(&[1, 1, 1, 1, 1, 0]), Device::Cpu);
        let t = Tensor::arange(5 * 4, (Kind::Float, Device::Cpu)).view([5, 4]);
        let h = x.heads(&t, 2);
        assert_eq!(h.size(), [2, 2, 3, 2]);
        assert!(x.tokens(&h).equal(&t));
        // The padded position is zeros; [CLS] rows are tokens 0 and 3.
        assert_eq!(h.transpose(1, 2).reshape([6, 4]).get(5).abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert!(x.first(&t).equal(&t.index_select(0, &Tensor::from_slice(&[0i64, 3]))));
    }
}
