//! The training objective of each kind of task, through libtorch's own loss functions, so the
//! losses are torch's (and transformers' `*ForSequenceClassification` ones, which call them):
//! cross-entropy for one class per example (with class weights and label smoothing),
//! BCE-with-logits for label sets (with `pos_weight`), MSE for scores.

use tch::{Device, Kind, Reduction, Tensor};

/// What the classifier's outputs are trained for.
pub enum Objective {
    /// One class per example: cross-entropy, optionally weighted by class and label-smoothed.
    SingleLabel { weights: Option<Tensor>, smoothing: f64 },
    /// A set of labels per example: BCE-with-logits per label, optionally with `pos_weight`.
    MultiLabel { pos_weight: Option<Tensor> },
    /// A score per example (one output): mean squared error.
    Regression,
}

impl Objective {
    /// Cross-entropy; `weights` one per class.
    pub fn single_label(weights: Option<&[f64]>, smoothing: f64, device: Device) -> Objective {
        Objective::SingleLabel { weights: weights.map(|w| floats(w, device)), smoothing }
    }

    /// BCE-with-logits; `pos_weight` one per label.
    pub fn multi_label(pos_weight: Option<&[f64]>, device: Device) -> Objective {
        Objective::MultiLabel { pos_weight: pos_weight.map(|w| floats(w, device)) }
    }

    /// The mean loss of `logits` `(rows, outputs)` against `targets` (see [`targets`]).
    pub fn loss(&self, logits: &Tensor, targets: &Tensor) -> Tensor {
        let logits = logits.to_kind(Kind::Float);
        match self {
            Objective::SingleLabel { weights, smoothing } => logits.cross_entropy_loss(targets, weights.as_ref(), Reduction::Mean, -100, *smoothing),
            Objective::MultiLabel { pos_weight } => logits.binary_cross_entropy_with_logits(targets, None::<&Tensor>, pos_weight.as_ref(), Reduction::Mean),
            Objective::Regression => logits.view(-1).mse_loss(targets, Reduction::Mean),
        }
    }

    /// What a prediction reports per output: softmax probabilities, per-label sigmoid
    /// probabilities, or the score itself.
    pub fn outputs(&self, logits: &Tensor) -> Tensor {
        match self {
            Objective::SingleLabel { .. } => logits.softmax(-1, Kind::Float),
            Objective::MultiLabel { .. } => logits.to_kind(Kind::Float).sigmoid(),
            Objective::Regression => logits.to_kind(Kind::Float),
        }
    }
}

fn floats(v: &[f64], device: Device) -> Tensor {
    Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<f32>>()).to_device(device)
}

/// A batch's labels on the device, as the objective reads them: int64 class ids `(rows,)`,
/// float multi-hot rows `(rows, labels)`, or float scores `(rows,)`.
pub fn targets(t: &shards::Targets, device: Device) -> Tensor {
    let host = match t {
        shards::Targets::Class(v) => Tensor::from_slice(v),
        shards::Targets::Multi { labels, hot } => Tensor::from_slice(hot).view([-1, *labels as i64]),
        shards::Targets::Score(v) => Tensor::from_slice(v),
    };
    crate::inputs::to_device(host, device)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // clippy.toml's allow-unwrap-in-tests misses some of these tests
    use super::*;

    fn value(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    #[test]
    fn losses_by_hand() {
        let logits = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let ce = |l: f64, y: usize| -> f64 {
            let row = if l == 0.0 { [2.0f64, 0.0] } else { [0.0, 1.0] };
            let z = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            z - row[y]
        };
        let y = targets(&shards::Targets::Class(vec![0, 1]), Device::Cpu);
        let plain = Objective::single_label(None, 0.0, Device::Cpu).loss(&logits, &y);
        assert!((value(&plain) - (ce(0.0, 0) + ce(1.0, 1)) / 2.0).abs() < 1e-6);
        // Weighted: sum(w_y * loss) / sum(w_y), as torch's mean reduction.
        let weighted = Objective::single_label(Some(&[1.0, 3.0]), 0.0, Device::Cpu).loss(&logits, &y);
        assert!((value(&weighted) - (ce(0.0, 0) + 3.0 * ce(1.0, 1)) / 4.0).abs() < 1e-6);
        let multi = targets(&shards::Targets::Multi { labels: 2, hot: vec![1.0, 0.0, 0.0, 0.0] }, Device::Cpu);
        let bce = |x: f64, t: f64| -> f64 { -(t * (1.0 / (1.0 + (-x).exp())).ln() + (1.0 - t) * (1.0 - 1.0 / (1.0 + (-x).exp())).ln()) };
        let want = (bce(2.0, 1.0) + bce(0.0, 0.0) + bce(0.0, 0.0) + bce(1.0, 0.0)) / 4.0;
        assert!((value(&Objective::multi_label(None, Device::Cpu).loss(&logits, &multi)) - want).abs() < 1e-6);
        let scores = targets(&shards::Targets::Score(vec![1.5, -1.0]), Device::Cpu);
        let one = Tensor::from_slice(&[1.0f32, 0.0]).view([2, 1]);
        assert!((value(&Objective::Regression.loss(&one, &scores)) - (0.25 + 1.0) / 2.0).abs() < 1e-6);
    }
}
