//! Per-split token statistics: length percentiles, truncation, unknown-token rate.

use pipeline::files::{Percentiles, SplitStats};

pub struct Stats {
    unk: Option<u32>,
    full: Vec<usize>,
    kept_tokens: usize,
    unk_tokens: usize,
    truncated: usize,
}

impl Stats {
    pub fn new(unk: Option<u32>) -> Stats {
        Stats { unk, full: Vec::new(), kept_tokens: 0, unk_tokens: 0, truncated: 0 }
    }

    pub fn add(&mut self, ids: &[u32], full: usize, max_length: usize) {
        self.full.push(full);
        self.kept_tokens += ids.len();
        if let Some(u) = self.unk {
            self.unk_tokens += ids.iter().filter(|&&i| i == u).count();
        }
        if full > max_length {
            self.truncated += 1;
        }
    }

    /// The split's statistics, with the shard count and time its caller measured.
    pub fn summary(&self, shards: usize, seconds: f64) -> SplitStats {
        let mut v = self.full.clone();
        v.sort_unstable();
        let n = v.len();
        let pct = |q: f64| if n == 0 { 0 } else { v[((n - 1) as f64 * q).round() as usize] };
        SplitStats {
            examples: n,
            tokens: self.kept_tokens,
            mean_tokens: if n == 0 { 0.0 } else { self.kept_tokens as f64 / n as f64 },
            untruncated_length: Percentiles { p50: pct(0.5), p90: pct(0.9), p95: pct(0.95), p99: pct(0.99), max: v.last().copied().unwrap_or(0) },
            fraction_truncated: if n == 0 { 0.0 } else { self.truncated as f64 / n as f64 },
            unk_rate: if self.kept_tokens == 0 { 0.0 } else { self.unk_tokens as f64 / self.kept_tokens as f64 },
            shards,
            seconds,
        }
    }
}

/// One line for people.
pub fn describe(s: &SplitStats) -> String {
    let l = &s.untruncated_length;
    format!(
        "{} examples, mean {:.0} tokens kept; untruncated p50 {} p90 {} p99 {} max {}; {:.1}% truncated; unk {:.3}%",
        s.examples,
        s.mean_tokens,
        l.p50,
        l.p90,
        l.p99,
        l.max,
        100.0 * s.fraction_truncated,
        100.0 * s.unk_rate
    )
}
