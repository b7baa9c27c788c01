//! PNG plots for the report, drawn with plotters and the bundled DejaVu Sans font.

use std::path::Path;
use std::sync::Once;

use pipeline::files::{LengthBucket, LogLine};
use plotters::prelude::*;

static FONT: Once = Once::new();

fn font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

fn err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("drawing {}: {e}", path.display())
}

/// A heat map of the confusion matrix with counts.
pub fn confusion(path: &Path, cells: &[Vec<u64>], names: &[String]) -> anyhow::Result<()> {
    font();
    let n = names.len();
    let max = cells.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let root = BitMapBackend::new(path, (520, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Confusion matrix", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..n as f64, 0f64..n as f64)
        .map_err(err(path))?;
    let names_x = names.to_vec();
    let names_y = names.to_vec();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(n * 2 + 1)
        .y_labels(n * 2 + 1)
        .x_label_formatter(&move |v| label_at(&names_x, *v))
        .y_label_formatter(&move |v| label_at(&names_y, n as f64 - *v))
        .x_desc("predicted")
        .y_desc("true")
        .draw()
        .map_err(err(path))?;
    for (t, row) in cells.iter().enumerate() {
        for (p, &c) in row.iter().enumerate() {
            let shade = c as f64 / max;
            let color = RGBColor(255 - (shade * 200.0) as u8, 255 - (shade * 120.0) as u8, 255);
            let y = (n - 1 - t) as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new([(p as f64, y), (p as f64 + 1.0, y + 1.0)], color.filled())))
                .map_err(err(path))?;
            chart
                .draw_series(std::iter::once(Text::new(c.to_string(), (p as f64 + 0.42, y + 0.55), ("sans-serif", 20))))
                .map_err(err(path))?;
        }
    }
    root.present().map_err(err(path))?;
    Ok(())
}

fn label_at(names: &[String], v: f64) -> String {
    let f = v - v.floor();
    if (f - 0.5).abs() < 1e-6 && v >= 0.0 {
        names.get(v.floor() as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

/// Training loss and the validation's first two figures in (-1, 1) against the step, from the
/// train log: accuracy and F1 (single-label), subset accuracy and micro F1 (multi-label),
/// Pearson and Spearman (regression).
pub fn curves(path: &Path, log: &[LogLine]) -> anyhow::Result<()> {
    font();
    let mut loss = Vec::new();
    let mut series: Vec<(&'static str, Vec<(f64, f64)>)> = Vec::new();
    for line in log {
        match line {
            LogLine::Train { step, loss: l, .. } => loss.push((*step as f64, *l)),
            LogLine::Eval { step, eval, .. } => {
                let shown = eval.figures().into_iter().filter(|(name, _)| !matches!(*name, "loss" | "mse")).take(2);
                for (k, (name, v)) in shown.enumerate() {
                    if series.len() <= k {
                        series.push((name, Vec::new()));
                    }
                    series[k].1.push((*step as f64, v));
                }
            }
        }
    }
    let empty = Vec::new();
    let (acc, acc_name) = series.first().map_or((&empty, "accuracy"), |(n, v)| (v, *n));
    let (f1, f1_name) = series.get(1).map_or((&empty, "F1"), |(n, v)| (v, *n));
    let (acc, f1) = (acc.clone(), f1.clone());
    let root = BitMapBackend::new(path, (960, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let (left, right) = root.split_horizontally(480);
    let max_step = loss.iter().chain(&acc).map(|p| p.0).fold(1.0, f64::max);
    let max_loss = loss.iter().map(|p| p.1).fold(0.1, f64::max) * 1.1;
    let mut c1 = ChartBuilder::on(&left)
        .caption("Training loss", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_step, 0f64..max_loss)
        .map_err(err(path))?;
    c1.configure_mesh().x_desc("step").draw().map_err(err(path))?;
    c1.draw_series(LineSeries::new(loss, &BLUE)).map_err(err(path))?;
    let lo = acc.iter().chain(&f1).map(|p| p.1).fold(1.0, f64::min).clamp(-1.0, 0.5);
    let mut c2 = ChartBuilder::on(&right)
        .caption("Validation", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_step, if lo < 0.0 { (lo - 0.02).max(-1.0)..1.0 } else { (lo - 0.02).max(0.0)..1.0 })
        .map_err(err(path))?;
    c2.configure_mesh().x_desc("step").draw().map_err(err(path))?;
    c2.draw_series(LineSeries::new(acc.clone(), &RED)).map_err(err(path))?.label(acc_name).legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
    c2.draw_series(acc.iter().map(|&p| Circle::new(p, 3, RED.filled()))).map_err(err(path))?;
    c2.draw_series(LineSeries::new(f1, &GREEN)).map_err(err(path))?.label(f1_name).legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GREEN));
    c2.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err(path))?;
    root.present().map_err(err(path))?;
    Ok(())
}

/// Accuracy (the share of `correct` predictions) in text-length deciles (untruncated token
/// length); returns the buckets.
pub fn accuracy_by_length(path: &Path, correct: &[bool], full: &[u32]) -> anyhow::Result<Vec<LengthBucket>> {
    font();
    let mut order: Vec<usize> = (0..correct.len()).collect();
    order.sort_by_key(|&i| full[i]);
    let buckets = 10.min(order.len().max(1));
    let mut rows = Vec::new();
    for b in 0..buckets {
        let lo = b * order.len() / buckets;
        let hi = (b + 1) * order.len() / buckets;
        if hi <= lo {
            continue;
        }
        let idx = &order[lo..hi];
        let right = idx.iter().filter(|&&i| correct[i]).count();
        rows.push((full[idx[0]], full[idx[idx.len() - 1]], right as f64 / idx.len() as f64, idx.len()));
    }
    let root = BitMapBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let lo = rows.iter().map(|r| r.2).fold(1.0, f64::min).min(0.5);
    let mut c = ChartBuilder::on(&root)
        .caption("Accuracy by text length decile", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..rows.len().max(1) as f64, (lo - 0.05).max(0.0)..1.0)
        .map_err(err(path))?;
    let labels_x: Vec<String> = rows.iter().map(|r| format!("≤{}", r.1)).collect();
    c.configure_mesh()
        .x_labels(rows.len() * 2 + 1)
        .x_label_formatter(&move |v| label_at(&labels_x, *v))
        .x_desc("tokens (upper bound of decile)")
        .y_desc("accuracy")
        .draw()
        .map_err(err(path))?;
    c.draw_series(rows.iter().enumerate().map(|(i, r)| Rectangle::new([(i as f64 + 0.1, 0.0), (i as f64 + 0.9, r.2)], BLUE.mix(0.6).filled())))
        .map_err(err(path))?;
    root.present().map_err(err(path))?;
    Ok(rows.iter().map(|r| LengthBucket { min_tokens: r.0, max_tokens: r.1, accuracy: r.2, examples: r.3 }).collect())
}

/// Predicted against true scores (regression), with the diagonal.
pub fn scatter(path: &Path, truth: &[f64], pred: &[f64]) -> anyhow::Result<()> {
    font();
    let all = truth.iter().chain(pred);
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi) } else { (lo.min(0.0), lo.max(0.0) + 1.0) };
    let pad = (hi - lo) * 0.05;
    let (lo, hi) = (lo - pad, hi + pad);
    let root = BitMapBackend::new(path, (520, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let mut c = ChartBuilder::on(&root)
        .caption("Predicted against true score", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(lo..hi, lo..hi)
        .map_err(err(path))?;
    c.configure_mesh().x_desc("true").y_desc("predicted").draw().map_err(err(path))?;
    c.draw_series(LineSeries::new([(lo, lo), (hi, hi)], BLACK.mix(0.4))).map_err(err(path))?;
    c.draw_series(truth.iter().zip(pred).map(|(&t, &p)| Circle::new((t, p), 2, BLUE.mix(0.5).filled()))).map_err(err(path))?;
    root.present().map_err(err(path))?;
    Ok(())
}
