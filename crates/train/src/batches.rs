//! Which examples go in which batch, epoch by epoch: length-bucketed with dynamic padding
//! (shuffled deterministically by seed), or fixed padding to max_length in random order.

use pipeline::Padding;

/// A deterministic permutation of `0..n`.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    v
}

/// Batching settings.
#[derive(Clone, Debug)]
pub struct Plan {
    pub padding: Padding,
    pub batch_size: usize,
    /// Token budget per batch (rows × padded length); overrides batch_size when set.
    pub batch_tokens: Option<usize>,
    pub max_length: usize,
    /// What dynamic batch lengths are rounded up to (see `shards::pad_batch`): the budget counts
    /// the rounded length, the one the batch really gets.
    pub length_multiple: usize,
    pub seed: u64,
}

/// How many batches are sorted together: large enough for tight buckets, small enough to keep
/// batches random.
const MEGABATCH: usize = 64;

impl Plan {
    /// The batches of one epoch over `pool` (indices into the split) with lengths `len`.
    pub fn epoch(&self, pool: &[usize], len: &[usize], epoch: u64) -> Vec<Vec<usize>> {
        let perm = permutation(pool.len(), self.seed.wrapping_mul(1_000_003).wrapping_add(epoch));
        let order: Vec<usize> = perm.iter().map(|&i| pool[i]).collect();
        if self.padding == Padding::MaxLength {
            let rows = match self.batch_tokens {
                Some(t) => (t / self.max_length).max(1),
                None => self.batch_size,
            };
            return order.chunks(rows.max(1)).map(|c| c.to_vec()).collect();
        }
        let chunk = match self.batch_tokens {
            Some(t) => (t / self.max_length.max(1)).max(1) * MEGABATCH,
            None => self.batch_size * MEGABATCH,
        };
        let mut batches = Vec::new();
        for mega in order.chunks(chunk.max(1)) {
            let mut m = mega.to_vec();
            m.sort_by_key(|&i| std::cmp::Reverse(len[i]));
            match self.batch_tokens {
                None => batches.extend(m.chunks(self.batch_size.max(1)).map(|c| c.to_vec())),
                Some(budget) => {
                    let mut cur: Vec<usize> = Vec::new();
                    let mut longest = 0;
                    let multiple = self.length_multiple.max(1);
                    for i in m {
                        let l = len[i].max(1).div_ceil(multiple) * multiple;
                        let longest_if = longest.max(l);
                        if !cur.is_empty() && longest_if * (cur.len() + 1) > budget {
                            batches.push(std::mem::take(&mut cur));
                            longest = 0;
                        }
                        longest = longest.max(l);
                        cur.push(i);
                    }
                    if !cur.is_empty() {
                        batches.push(cur);
                    }
                }
            }
        }
        // Shuffle the batch order so lengths are not grouped in time.
        let p = permutation(batches.len(), self.seed.wrapping_mul(7_919).wrapping_add(epoch));
        p.into_iter().map(|i| std::mem::take(&mut batches[i])).collect()
    }

    /// Padded length a batch is given.
    pub fn pad_to(&self) -> Option<usize> {
        (self.padding == Padding::MaxLength).then_some(self.max_length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(padding: Padding, tokens: Option<usize>) -> Plan {
        Plan { padding, batch_size: 8, batch_tokens: tokens, max_length: 64, length_multiple: 1, seed: 3 }
    }

    #[test]
    fn every_example_once_and_deterministic() {
        let len: Vec<usize> = (0..1000).map(|i| 5 + (i * 37) % 60).collect();
        let pool: Vec<usize> = (0..1000).collect();
        for p in [plan(Padding::Dynamic, None), plan(Padding::MaxLength, None), plan(Padding::Dynamic, Some(256))] {
            let b = p.epoch(&pool, &len, 0);
            let mut all: Vec<usize> = b.iter().flatten().copied().collect();
            all.sort();
            assert_eq!(all, pool);
            assert_eq!(b, p.epoch(&pool, &len, 0));
            assert_ne!(b, p.epoch(&pool, &len, 1));
        }
    }

    #[test]
    fn buckets_cut_padding_and_respect_budget() {
        let len: Vec<usize> = (0..2000).map(|i| 5 + (i * 37) % 60).collect();
        let pool: Vec<usize> = (0..2000).collect();
        let padded = |b: &Vec<Vec<usize>>| -> usize { b.iter().map(|x| x.len() * x.iter().map(|&i| len[i]).max().unwrap_or(0)).sum() };
        let real: usize = len.iter().sum();
        let dynamic = plan(Padding::Dynamic, None).epoch(&pool, &len, 0);
        let random = plan(Padding::MaxLength, None).epoch(&pool, &len, 0);
        assert!(padded(&dynamic) < real * 105 / 100, "bucketed padding {} vs real {real}", padded(&dynamic));
        assert!(padded(&random) > real * 110 / 100);
        for b in plan(Padding::Dynamic, Some(256)).epoch(&pool, &len, 0) {
            let l = b.iter().map(|&i| len[i]).max().unwrap_or(0);
            assert!(b.len() == 1 || b.len() * l <= 256);
        }
        // With lengths rounded up (to 16 here, as CUDA rounds to 64), the budget holds for the
        // rounded length: a batch of 17-token examples gets 32 positions each.
        let rounded = Plan { length_multiple: 16, ..plan(Padding::Dynamic, Some(256)) };
        let batches = rounded.epoch(&pool, &len, 0);
        for b in &batches {
            let l = b.iter().map(|&i| len[i]).max().unwrap_or(0).div_ceil(16) * 16;
            assert!(b.len() == 1 || b.len() * l <= 256, "{} rows × {l}", b.len());
        }
        assert!(batches.len() > plan(Padding::Dynamic, Some(256)).epoch(&pool, &len, 0).len());
    }
}
