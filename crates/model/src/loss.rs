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

    /// The loss of `logits` against `targets` as its two sums: the numerator and the
    /// denominator of [`Objective::loss`]'s mean (the rows; with class weights, the rows' class
    /// weights; rows × labels for label sets and scores). Summed over batches or ranks and
    /// divided, they give the mean loss of all the rows as one batch, whatever the batches.
    pub fn loss_parts(&self, logits: &Tensor, targets: &Tensor) -> (Tensor, Tensor) {
        let logits = logits.to_kind(Kind::Float);
        // Made on the device (a fill, no host-to-device copy per batch).
        let count = || Tensor::full([0i64; 0], targets.numel() as f64, (Kind::Float, logits.device()));
        match self {
            Objective::SingleLabel { weights, smoothing } => {
                let sum = logits.cross_entropy_loss(targets, weights.as_ref(), Reduction::Sum, -100, *smoothing);
                let denominator = weights.as_ref().map_or_else(count, |w| w.index_select(0, targets).sum(Kind::Float));
                (sum, denominator)
            }
            Objective::MultiLabel { pos_weight } => (logits.binary_cross_entropy_with_logits(targets, None::<&Tensor>, pos_weight.as_ref(), Reduction::Sum), count()),
            Objective::Regression => (logits.view(-1).mse_loss(targets, Reduction::Sum), count()),
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

    /// Split into parts of any sizes, the loss's sums give the whole batch's mean: with class
    /// weights (and smoothing) too, where a rows-weighted mean of the parts' means does not.
    #[test]
    fn loss_parts_join_into_the_whole_batch_mean() {
        let logits = Tensor::from_slice(&[2.0f32, 0.0, -1.0, 0.5, 1.0, 0.0, 0.0, 3.0, -0.5, 1.5, 0.2, -2.0]).view([4, 3]);
        let classes = targets(&shards::Targets::Class(vec![0, 2, 2, 1]), Device::Cpu);
        let multi = targets(&shards::Targets::Multi { labels: 3, hot: vec![1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0] }, Device::Cpu);
        let cases = [
            (Objective::single_label(None, 0.0, Device::Cpu), &classes),
            (Objective::single_label(Some(&[1.0, 3.0, 0.5]), 0.1, Device::Cpu), &classes),
            (Objective::multi_label(Some(&[2.0, 1.0, 0.5]), Device::Cpu), &multi),
        ];
        for (i, (objective, y)) in cases.iter().enumerate() {
            let whole = value(&objective.loss(&logits, y));
            let (s, d) = objective.loss_parts(&logits, y);
            assert!((value(&s) / value(&d) - whole).abs() < 1e-6, "case {i}: one part");
            let (a, b) = (objective.loss_parts(&logits.narrow(0, 0, 1), &y.narrow(0, 0, 1)), objective.loss_parts(&logits.narrow(0, 1, 3), &y.narrow(0, 1, 3)));
            let joined = (value(&a.0) + value(&b.0)) / (value(&a.1) + value(&b.1));
            assert!((joined - whole).abs() < 1e-6, "case {i}: parts of 1 and 3 rows give {joined}, the batch {whole}");
        }
        let scores = targets(&shards::Targets::Score(vec![1.5, -1.0, 0.0, 2.0]), Device::Cpu);
        let (s, d) = Objective::Regression.loss_parts(&logits.narrow(1, 0, 1), &scores);
        assert!((value(&s) / value(&d) - value(&Objective::Regression.loss(&logits.narrow(1, 0, 1), &scores))).abs() < 1e-6);
        // The rows-weighted mean of the parts' means, as validation joined them before, misses.
        let weighted = &cases[1].0;
        let part = |r: i64, n: i64| value(&weighted.loss(&logits.narrow(0, r, n), &classes.narrow(0, r, n)));
        let by_rows = (part(0, 1) + 3.0 * part(1, 3)) / 4.0;
        assert!((by_rows - value(&weighted.loss(&logits, &classes))).abs() > 1e-3);
    }
}
