//! Batched inference over examples (a token split, or texts encoded in memory): sorted by
//! length so padding is minimal, gradients off, results returned in the examples' order.

use tch::{Device, Kind, Tensor};

use crate::device::{guard, BatchError};
use crate::loss::Objective;
use crate::{Inputs, Model};

/// The outputs per example (split order) and the mean loss.
pub struct Predictions {
    /// Per example: softmax probabilities (single-label), per-label sigmoid probabilities
    /// (multi-label), or the score (regression); see [`Objective::outputs`].
    pub probs: Vec<Vec<f32>>,
    /// The mean loss; `None` when the examples carry no labels.
    pub loss: Option<f64>,
    /// The mean's denominator (see [`Objective::loss_parts`]), which weighs this loss when it is
    /// joined with another part's.
    pub loss_weight: f64,
    /// Real tokens processed.
    pub tokens: usize,
}

impl Predictions {
    pub fn argmax(&self) -> Vec<i64> {
        self.probs
            .iter()
            .map(|p| p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as i64).unwrap_or(0))
            .collect()
    }
}

/// Moves a padded batch's model inputs to the device (see [`crate::inputs::upload`]; its labels
/// go by [`crate::loss::targets`]).
pub fn to_device(b: &shards::Batch, device: Device) -> Inputs {
    crate::inputs::upload(b.rows, b.len, &b.ids, b.types.as_deref(), Some(&b.mask), device)
}

/// Runs the model over `examples` in batches of `batch_size` (sorted by length, longest first,
/// so a batch too large for the device fails at once), with the mean loss when the examples
/// have labels. `done` hears how many examples have gone through after each batch (for a
/// progress bar; on a GPU, queued).
pub fn predict<E: shards::Examples + ?Sized>(
    model: &Model,
    objective: &Objective,
    examples: &E,
    batch_size: usize,
    pad_id: u32,
    device: Device,
    done: &mut dyn FnMut(usize),
) -> Result<Predictions, BatchError> {
    let n = examples.len();
    let lengths: Vec<usize> = (0..n).map(|i| examples.length(i)).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    // Logits and the loss stay on the device until the end: reading them back per batch would
    // make the host wait for each batch before queuing the next.
    let mut logits = Vec::new();
    let (mut loss_sum, mut loss_weight) = (Tensor::zeros([], (Kind::Float, device)), Tensor::zeros([], (Kind::Float, device)));
    let mut labelled = false;
    let mut tokens = 0;
    let mut finished = 0;
    tch::no_grad(|| {
        // Made in the first batch's guard: in bf16 it allocates the weights' working copy.
        let mut frozen = None;
        for chunk in order.chunks(batch_size.max(1)) {
            let b = shards::pad_batch(examples, chunk, pad_id, None, model.length_multiple(model.max_length()));
            tokens += b.tokens;
            let l = guard(b.rows, b.len, device, || {
                let x = to_device(&b, device);
                let l = frozen.get_or_insert_with(|| model.frozen()).forward(&x);
                if let Some(t) = &b.targets {
                    let (sum, weight) = objective.loss_parts(&l, &crate::loss::targets(t, device));
                    loss_sum += sum;
                    loss_weight += weight;
                    labelled = true;
                }
                l
            })?;
            logits.push(l);
            finished += chunk.len();
            done(finished);
        }
        Ok::<(), BatchError>(())
    })?;
    let mut probs = vec![Vec::new(); n];
    if n > 0 {
        let p = objective.outputs(&Tensor::cat(&logits, 0)).to_device(Device::Cpu);
        let flat: Vec<f32> = Vec::try_from(p.flatten(0, -1)).unwrap_or_default();
        let c = model.num_labels as usize;
        for (r, &i) in order.iter().enumerate() {
            probs[i] = flat[r * c..(r + 1) * c].to_vec();
        }
    }
    let loss_weight = loss_weight.double_value(&[]);
    let loss = labelled.then(|| loss_sum.double_value(&[]) / loss_weight);
    Ok(Predictions { probs, loss, loss_weight, tokens })
}
