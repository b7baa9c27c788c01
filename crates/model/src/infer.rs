//! Batched inference over a token split: examples sorted by length so padding is minimal,
//! gradients off, results returned in the split's order.

use tch::{Device, Kind, Tensor};

use crate::Model;

/// Softmax probabilities per example (split order), and the mean cross-entropy loss.
pub struct Predictions {
    pub probs: Vec<Vec<f32>>,
    pub loss: f64,
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

/// Moves a padded batch to the device: ids, mask (None when nothing is padded), labels.
pub fn to_device(b: &shards::Batch, device: Device) -> (Tensor, Option<Tensor>, Tensor) {
    let shape = [b.rows as i64, b.len as i64];
    let ids = Tensor::from_slice(&b.ids).view(shape).to_device(device);
    let padded = b.tokens < b.rows * b.len;
    let mask = padded.then(|| Tensor::from_slice(&b.mask).view(shape).to_device(device));
    let labels = Tensor::from_slice(&b.labels).to_device(device);
    (ids, mask, labels)
}

/// Runs the model over `split` in batches of `batch_size` (sorted by length).
pub fn predict(model: &Model, split: &shards::Split, batch_size: usize, pad_id: u32, device: Device) -> Predictions {
    let n = split.len();
    let lengths = split.lengths();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut probs = vec![Vec::new(); n];
    let mut loss_sum = 0.0;
    let mut tokens = 0;
    tch::no_grad(|| {
        for chunk in order.chunks(batch_size.max(1)) {
            let b = shards::pad_batch(split, chunk, pad_id, None, model.length_multiple(model.config.max_position_embeddings as usize));
            tokens += b.tokens;
            let (ids, mask, labels) = to_device(&b, device);
            let logits = model.forward(&ids, mask.as_ref(), false);
            let loss = logits.cross_entropy_for_logits(&labels);
            loss_sum += loss.double_value(&[]) * chunk.len() as f64;
            let p = logits.softmax(-1, Kind::Float).to_device(Device::Cpu);
            let flat: Vec<f32> = Vec::try_from(p.flatten(0, -1)).unwrap_or_default();
            let c = model.num_labels as usize;
            for (r, &i) in chunk.iter().enumerate() {
                probs[i] = flat[r * c..(r + 1) * c].to_vec();
            }
        }
    });
    Predictions { probs, loss: if n == 0 { 0.0 } else { loss_sum / n as f64 }, tokens }
}
