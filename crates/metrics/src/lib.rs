//! Classification metrics with scikit-learn's definitions (`zero_division=0`: a class never
//! predicted has precision 0 and F1 0, never NaN).

use serde::Serialize;

/// Per-class figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// `confusion[true][pred]` counts.
pub fn confusion(labels: &[i64], preds: &[i64], n: usize) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0usize; n]; n];
    for (&y, &p) in labels.iter().zip(preds) {
        if (y as usize) < n && (p as usize) < n {
            m[y as usize][p as usize] += 1;
        }
    }
    m
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

pub fn accuracy(labels: &[i64], preds: &[i64]) -> f64 {
    ratio(labels.iter().zip(preds).filter(|(a, b)| a == b).count(), labels.len())
}

/// Precision, recall and F1 of every class from a confusion matrix.
pub fn per_class(conf: &[Vec<usize>]) -> Vec<ClassMetrics> {
    let n = conf.len();
    (0..n)
        .map(|c| {
            let tp = conf[c][c];
            let predicted: usize = (0..n).map(|t| conf[t][c]).sum();
            let support: usize = conf[c].iter().sum();
            let precision = ratio(tp, predicted);
            let recall = ratio(tp, support);
            let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
            ClassMetrics { precision, recall, f1, support }
        })
        .collect()
}

/// The headline F1: binary F1 of `positive` for two classes, macro F1 otherwise.
pub fn f1(labels: &[i64], preds: &[i64], n: usize, positive: usize) -> f64 {
    let pc = per_class(&confusion(labels, preds, n));
    if n == 2 {
        pc[positive].f1
    } else {
        pc.iter().map(|c| c.f1).sum::<f64>() / n as f64
    }
}

/// Mean negative log-likelihood of the true class; probabilities are clipped at 1e-15.
pub fn log_loss(labels: &[i64], probs: &[Vec<f64>]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let s: f64 = labels.iter().zip(probs).map(|(&y, p)| -p[y as usize].clamp(1e-15, 1.0).ln()).sum();
    s / labels.len() as f64
}

/// A 95% percentile bootstrap interval of `stat` over resamples of the rows.
pub fn bootstrap(
    labels: &[i64],
    preds: &[i64],
    resamples: u32,
    seed: u64,
    stat: impl Fn(&[i64], &[i64]) -> f64,
) -> Option<(f64, f64)> {
    use rand::{Rng, SeedableRng};
    let n = labels.len();
    if resamples == 0 || n == 0 {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut vals = Vec::with_capacity(resamples as usize);
    let (mut ys, mut ps) = (vec![0i64; n], vec![0i64; n]);
    for _ in 0..resamples {
        for k in 0..n {
            let i = rng.random_range(0..n);
            ys[k] = labels[i];
            ps[k] = preds[i];
        }
        vals.push(stat(&ys, &ps));
    }
    vals.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| vals[((vals.len() - 1) as f64 * q).round() as usize];
    Some((at(0.025), at(0.975)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // clippy.toml's allow-unwrap-in-tests misses some of these tests
    use super::*;

    #[test]
    fn by_hand() {
        // y: 1 1 1 0 0 ; p: 1 0 1 1 0 -> tp=2 fp=1 fn=1 tn=1.
        let y = [1, 1, 1, 0, 0];
        let p = [1, 0, 1, 1, 0];
        assert_eq!(accuracy(&y, &p), 0.6);
        let c = confusion(&y, &p, 2);
        assert_eq!(c, vec![vec![1, 1], vec![1, 2]]);
        let pc = per_class(&c);
        assert!((pc[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((pc[1].recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((f1(&y, &p, 2, 1) - 2.0 / 3.0).abs() < 1e-12);
        assert!((f1(&y, &p, 2, 0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn never_predicted_class_is_zero_not_nan() {
        let y = [0, 1, 2, 2];
        let p = [0, 0, 2, 2];
        let pc = per_class(&confusion(&y, &p, 3));
        assert_eq!(pc[1], ClassMetrics { precision: 0.0, recall: 0.0, f1: 0.0, support: 1 });
        let macro_f1 = f1(&y, &p, 3, 1);
        // sklearn: f1_score([0,1,2,2],[0,0,2,2],average='macro') = (2/3 + 0 + 1)/3.
        assert!((macro_f1 - (2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
        assert!(f1(&[0, 0], &[0, 0], 2, 1) == 0.0);
    }

    #[test]
    fn log_loss_and_bootstrap() {
        let ll = log_loss(&[1, 0], &[vec![0.2, 0.8], vec![0.6, 0.4]]);
        assert!((ll - (-(0.8f64.ln()) - 0.6f64.ln()) / 2.0).abs() < 1e-12);
        let y: Vec<i64> = (0..200).map(|i| i % 2).collect();
        let p: Vec<i64> = (0..200).map(|i| if i % 10 == 0 { 1 - i % 2 } else { i % 2 }).collect();
        let (lo, hi) = bootstrap(&y, &p, 500, 1, accuracy).unwrap();
        assert!(lo < 0.9 && 0.9 < hi && hi - lo < 0.15, "{lo} {hi}");
        assert_eq!(bootstrap(&y, &p, 500, 1, accuracy), Some((lo, hi)));
    }
}
