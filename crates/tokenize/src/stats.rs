//! Per-split token statistics: length percentiles, truncation, unknown-token rate.

use pipeline::files::{Percentiles, SplitStats};

pub struct Stats {
    unk: Option<u32>,
    /// Examples of each untruncated length: the percentiles exactly, in memory that does not
    /// grow with the examples.
    full: std::collections::BTreeMap<usize, usize>,
    examples: usize,
    kept_tokens: usize,
    unk_tokens: usize,
    truncated: usize,
}

impl Stats {
    pub fn new(unk: Option<u32>) -> Stats {
        Stats { unk, full: Default::default(), examples: 0, kept_tokens: 0, unk_tokens: 0, truncated: 0 }
    }

    pub fn add(&mut self, ids: &[u32], full: usize, max_length: usize) {
        *self.full.entry(full).or_default() += 1;
        self.examples += 1;
        self.kept_tokens += ids.len();
        if let Some(u) = self.unk {
            self.unk_tokens += ids.iter().filter(|&&i| i == u).count();
        }
        if full > max_length {
            self.truncated += 1;
        }
    }

    /// The split's statistics, with the shard count its caller knows.
    pub fn summary(&self, shards: usize) -> SplitStats {
        let n = self.examples;
        // The length at rank `(n - 1)·q` of the sorted lengths.
        let pct = |q: f64| {
            let rank = ((n.max(1) - 1) as f64 * q).round() as usize;
            let mut seen = 0;
            self.full.iter().find(|(_, &c)| {
                seen += c;
                seen > rank
            }).map_or(0, |(&l, _)| l)
        };
        SplitStats {
            examples: n,
            tokens: self.kept_tokens,
            mean_tokens: if n == 0 { 0.0 } else { self.kept_tokens as f64 / n as f64 },
            untruncated_length: Percentiles { p50: pct(0.5), p90: pct(0.9), p95: pct(0.95), p99: pct(0.99), max: self.full.keys().next_back().copied().unwrap_or(0) },
            fraction_truncated: if n == 0 { 0.0 } else { self.truncated as f64 / n as f64 },
            unk_rate: if self.kept_tokens == 0 { 0.0 } else { self.unk_tokens as f64 / self.kept_tokens as f64 },
            shards,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_those_of_the_sorted_lengths() {
        let lengths: Vec<usize> = (0..1001).map(|i| (i * 7919) % 613).collect();
        let mut st = Stats::new(None);
        for &l in &lengths {
            st.add(&[], l, 512);
        }
        let mut sorted = lengths.clone();
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        let s = st.summary(1);
        let p = &s.untruncated_length;
        assert_eq!((p.p50, p.p90, p.p95, p.p99, p.max), (at(0.5), at(0.9), at(0.95), at(0.99), 612));
        assert_eq!(s.examples, 1001);
        assert_eq!(s.fraction_truncated, sorted.iter().filter(|&&l| l > 512).count() as f64 / 1001.0);
        assert_eq!(Stats::new(None).summary(0).untruncated_length.max, 0);
    }
}
