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

/// Precision, recall and F1 from counts (zero_division=0).
fn scores(tp: usize, predicted: usize, support: usize) -> ClassMetrics {
    let precision = ratio(tp, predicted);
    let recall = ratio(tp, support);
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    ClassMetrics { precision, recall, f1, support }
}

/// Multi-label figures of predicted label sets against true ones, both row-major
/// `rows × labels` booleans: per label, and micro (over every decision) and macro (the mean of
/// the labels') precision, recall and F1, and subset accuracy (rows whose whole set is right),
/// as scikit-learn computes them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MultiLabel {
    pub per_label: Vec<ClassMetrics>,
    pub micro: ClassMetrics,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub subset_accuracy: f64,
}

pub fn multi_label(truth: &[bool], pred: &[bool], labels: usize) -> MultiLabel {
    let rows = truth.len() / labels.max(1);
    let (mut tp, mut predicted, mut support) = (vec![0usize; labels], vec![0usize; labels], vec![0usize; labels]);
    let mut exact = 0;
    for r in 0..rows {
        let (t, p) = (&truth[r * labels..(r + 1) * labels], &pred[r * labels..(r + 1) * labels]);
        exact += usize::from(t == p);
        for j in 0..labels {
            tp[j] += usize::from(t[j] && p[j]);
            predicted[j] += usize::from(p[j]);
            support[j] += usize::from(t[j]);
        }
    }
    let per_label: Vec<ClassMetrics> = (0..labels).map(|j| scores(tp[j], predicted[j], support[j])).collect();
    let micro = scores(tp.iter().sum(), predicted.iter().sum(), support.iter().sum());
    let mean = |f: fn(&ClassMetrics) -> f64| per_label.iter().map(f).sum::<f64>() / labels.max(1) as f64;
    MultiLabel {
        macro_precision: mean(|c| c.precision),
        macro_recall: mean(|c| c.recall),
        macro_f1: mean(|c| c.f1),
        micro,
        per_label,
        subset_accuracy: ratio(exact, rows),
    }
}

/// Mean squared error.
pub fn mse(y: &[f64], p: &[f64]) -> f64 {
    y.iter().zip(p).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / y.len().max(1) as f64
}

/// Mean absolute error.
pub fn mae(y: &[f64], p: &[f64]) -> f64 {
    y.iter().zip(p).map(|(a, b)| (a - b).abs()).sum::<f64>() / y.len().max(1) as f64
}

/// Pearson's correlation; 0 when either side is constant (scipy says NaN: a constant
/// prediction carries no correlation).
pub fn pearson(y: &[f64], p: &[f64]) -> f64 {
    let n = y.len().min(p.len());
    if n < 2 {
        return 0.0;
    }
    let (my, mp) = (y.iter().sum::<f64>() / n as f64, p.iter().sum::<f64>() / n as f64);
    let (mut cov, mut vy, mut vp) = (0.0, 0.0, 0.0);
    for (a, b) in y.iter().zip(p) {
        cov += (a - my) * (b - mp);
        vy += (a - my).powi(2);
        vp += (b - mp).powi(2);
    }
    if vy == 0.0 || vp == 0.0 {
        0.0
    } else {
        cov / (vy * vp).sqrt()
    }
}

/// Ranks from 1, ties sharing their mean rank (scipy's `rankdata`, method `average`).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

/// Spearman's rank correlation: Pearson's over the ranks.
pub fn spearman(y: &[f64], p: &[f64]) -> f64 {
    pearson(&ranks(y), &ranks(p))
}

/// A 95% percentile bootstrap interval of `stat` over resamples of `n` rows; `stat` gets the
/// drawn row indices.
pub fn bootstrap_rows(n: usize, resamples: u32, seed: u64, stat: impl Fn(&[usize]) -> f64) -> Option<(f64, f64)> {
    use rand::{Rng, SeedableRng};
    if resamples == 0 || n == 0 {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut idx = vec![0usize; n];
    let mut vals = Vec::with_capacity(resamples as usize);
    for _ in 0..resamples {
        for k in idx.iter_mut() {
            *k = rng.random_range(0..n);
        }
        vals.push(stat(&idx));
    }
    vals.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| vals[((vals.len() - 1) as f64 * q).round() as usize];
    Some((at(0.025), at(0.975)))
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
    fn multi_label_and_regression_by_hand() {
        // sklearn: y=[[1,0,1],[0,1,0]], p=[[1,0,0],[0,1,1]] -> micro P 2/3 R 2/3; macro F1 (1+1+0)/3.
        let t = [true, false, true, false, true, false];
        let p = [true, false, false, false, true, true];
        let m = multi_label(&t, &p, 3);
        assert!((m.micro.precision - 2.0 / 3.0).abs() < 1e-12 && (m.micro.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.macro_f1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!((m.subset_accuracy, m.per_label[2].support), (0.0, 1));
        let y = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&y, &[2.0, 4.0, 6.0, 8.0]) - 1.0).abs() < 1e-12);
        // scipy.stats.spearmanr([1,2,3,4],[1,3,2,2]) = 0.3162...; ties take their mean rank.
        assert!((spearman(&y, &[1.0, 3.0, 2.0, 2.0]) - 0.316_227_766).abs() < 1e-6);
        assert_eq!((mse(&y, &[1.0, 2.0, 3.0, 6.0]), mae(&y, &[1.0, 2.0, 3.0, 6.0])), (1.0, 0.5));
        assert_eq!(pearson(&y, &[1.0; 4]), 0.0);
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
