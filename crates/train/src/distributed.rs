//! What a rank of a data-parallel run does differently from one process. The global batch
//! stays `train.batch_size`: every rank builds the same global, length-bucketed order and takes
//! a contiguous share of each micro-batch; its loss is weighted by its share of the batch's
//! loss denominator, so the summed gradients are the one-process gradients up to summation
//! order. The flat gradient is summed with one all-reduce per optimizer step; the step then
//! runs identically on every rank. Validation is split the same way and the predictions are
//! gathered, so every rank computes the same metrics (and takes the same early-stopping
//! decision). Only rank 0 writes: log, checkpoints, best weights, the artifact.

use std::ops::Range;

use anyhow::Context as _;
use collective::Group;
use model::infer::Predictions;
use model::loss::Objective;
use tch::{Kind, Tensor};

use crate::optim::AdamW;
use crate::trainer::State;

/// Rank `rank`'s contiguous share of `n` items among `world` ranks.
pub fn share(n: usize, rank: usize, world: usize) -> Range<usize> {
    n * rank / world..n * (rank + 1) / world
}

/// This rank's rows of the global micro-batch `global`, and the factor its mean loss is
/// multiplied by so that the ranks' losses sum to the global batch's mean. A rank whose share
/// is empty (a last batch smaller than the world) runs one row at factor 0: its gradients then
/// exist, as zeros, like everyone else's.
pub fn local_rows(objective: &Objective, train: &dyn shards::Examples, global: &[usize], group: &Group) -> anyhow::Result<(Vec<usize>, f64)> {
    let range = share(global.len(), group.rank(), group.size());
    if range.is_empty() {
        return Ok((global[..1].to_vec(), 0.0));
    }
    // A mean loss divides by the rows (times the labels, for multi-label BCE: the same
    // share), or with class weights by the rows' weights.
    let weighted = match objective {
        Objective::SingleLabel { weights: Some(w), .. } => train.targets(global).map(|t| (w, t)),
        _ => None,
    };
    let (part, whole) = match weighted {
        Some((w, shards::Targets::Class(y))) => {
            let w: Vec<f64> = Vec::try_from(w.to_kind(Kind::Double).to_device(tch::Device::Cpu)).context("reading the class weights")?;
            let weight = |ys: &[i64]| -> f64 { ys.iter().map(|&c| w.get(c as usize).copied().unwrap_or(0.0)).sum() };
            (weight(&y[range.clone()]), weight(&y))
        }
        _ => (range.len() as f64, global.len() as f64),
    };
    Ok((global[range].to_vec(), if whole > 0.0 { part / whole } else { 0.0 }))
}

/// Sums the trainable parameters' gradients across the ranks with one all-reduce of the flat
/// gradient, and returns them as views of that sum for the optimizer (each parameter's own
/// gradient stays this rank's; a parameter without one here gets none).
pub fn all_reduce_grads(group: &Group, params: &model::Params) -> anyhow::Result<crate::optim::Grads> {
    tch::no_grad(|| {
        let grads = params.grads();
        let flat = params.flat_grad_of(&grads);
        group.all_reduce_sum(&flat)?;
        Ok(grads.into_iter().map(|(off, g)| (off, g.map(|g| flat.narrow(0, off, g.numel() as i64)))).collect())
    })
}

/// Sums device scalars (the ranks' weighted micro-batch losses) across the ranks.
pub fn sum_losses(group: &Group, losses: &[Tensor], device: tch::Device) -> anyhow::Result<Vec<f64>> {
    if losses.is_empty() {
        return Ok(Vec::new());
    }
    // On the device the group's backend moves tensors on (NCCL: the GPU; Gloo: the CPU).
    let t = Tensor::stack(losses, 0).to_kind(Kind::Float).to_device(device).contiguous();
    group.all_reduce_sum(&t)?;
    Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(tch::Device::Cpu)).context("reading the summed losses")
}

/// Makes every rank start where rank 0 starts: its loop state (from its checkpoint, if any),
/// all the weights (the checkpoint's, or the pretrained ones with rank 0's head) and both Adam
/// moments.
pub fn start_together(group: &Group, params: &model::Params, opt: &mut AdamW, st: &mut State) -> anyhow::Result<()> {
    let mine = serde_json::to_vec(st)?;
    let theirs = group.broadcast_bytes(&mine)?;
    *st = serde_json::from_slice(&theirs).context("reading rank 0's training state")?;
    opt.step = st.step;
    for t in [params.flat(), &opt.m, &opt.v] {
        group.broadcast(t, 0)?;
    }
    Ok(())
}

/// A contiguous range of some examples, as examples.
pub struct Part<'a> {
    pub inner: &'a dyn shards::Examples,
    pub range: Range<usize>,
}

impl shards::Examples for Part<'_> {
    fn len(&self) -> usize {
        self.range.len()
    }
    fn length(&self, i: usize) -> usize {
        self.inner.length(self.range.start + i)
    }
    fn has_token_types(&self) -> bool {
        self.inner.has_token_types()
    }
    fn ids_into(&self, i: usize, out: &mut Vec<u32>) {
        self.inner.ids_into(self.range.start + i, out)
    }
    fn types_into(&self, i: usize, out: &mut Vec<u32>) {
        self.inner.types_into(self.range.start + i, out)
    }
    fn targets(&self, index: &[usize]) -> Option<shards::Targets> {
        let shifted: Vec<usize> = index.iter().map(|&i| self.range.start + i).collect();
        self.inner.targets(&shifted)
    }
}

/// The bytes before a prediction message's values: rows, width, loss, its weight, tokens.
const HEAD: usize = 40;

fn encode(p: &Predictions, rows: usize) -> Vec<u8> {
    let width = p.probs.first().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(HEAD + 4 * rows * width);
    out.extend_from_slice(&(rows as u64).to_le_bytes());
    out.extend_from_slice(&(width as u64).to_le_bytes());
    out.extend_from_slice(&p.loss.unwrap_or(f64::NAN).to_le_bytes());
    out.extend_from_slice(&p.loss_weight.to_le_bytes());
    out.extend_from_slice(&(p.tokens as u64).to_le_bytes());
    for v in p.probs.iter().flatten() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn decode(b: &[u8]) -> anyhow::Result<Predictions> {
    let word = |i: usize| -> anyhow::Result<[u8; 8]> { b.get(8 * i..8 * i + 8).and_then(|s| s.try_into().ok()).context("a truncated prediction message") };
    let rows = u64::from_le_bytes(word(0)?) as usize;
    let width = u64::from_le_bytes(word(1)?) as usize;
    let loss = f64::from_le_bytes(word(2)?);
    let loss_weight = f64::from_le_bytes(word(3)?);
    let tokens = u64::from_le_bytes(word(4)?) as usize;
    let floats: Vec<f32> = b[HEAD..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    anyhow::ensure!(floats.len() == rows * width, "a prediction message with {} values for {rows} x {width}", floats.len());
    let probs = if width == 0 { vec![Vec::new(); rows] } else { floats.chunks(width).map(<[f32]>::to_vec).collect() };
    Ok(Predictions { probs, loss: (!loss.is_nan()).then_some(loss), loss_weight, tokens })
}

/// Every rank's predictions of its part, joined in rank order (the split's order), with the
/// mean loss over all of them (each part's weighed by its denominator: rows, or their class
/// weights).
pub fn gather(group: &Group, mine: &Predictions, rows: usize) -> anyhow::Result<Predictions> {
    let all = group.all_gather_bytes(&encode(mine, rows))?;
    let mut out = Predictions { probs: Vec::new(), loss: None, loss_weight: 0.0, tokens: 0 };
    let mut loss_sum = 0.0;
    let mut labelled = false;
    for b in &all {
        let p = decode(b)?;
        if let Some(l) = p.loss {
            loss_sum += l * p.loss_weight;
            out.loss_weight += p.loss_weight;
            labelled = true;
        }
        out.tokens += p.tokens;
        out.probs.extend(p.probs);
    }
    out.loss = labelled.then(|| loss_sum / out.loss_weight);
    Ok(out)
}
