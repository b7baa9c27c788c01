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

/// [`permutation`] as 32-bit indices (the same order: a shuffle's swaps depend on the length
/// alone), half the memory for the millions of examples an epoch orders.
pub fn permutation_u32(n: usize, seed: u64) -> Vec<u32> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut v: Vec<u32> = (0..n as u32).collect();
    v.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    v
}

/// The examples an epoch draws from: every example of the split, or some of them.
#[derive(Clone, Debug)]
pub enum Pool {
    All(usize),
    /// Example indices, ascending (`train.max_train_examples`).
    Some(Vec<u32>),
}

impl Pool {
    pub fn len(&self) -> usize {
        match self {
            Pool::All(n) => *n,
            Pool::Some(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    /// The batches of one epoch over `pool` with lengths `len` (of every example of the split):
    /// example indices as 32 bits, so a plan of ten million examples takes some 40 MB.
    pub fn epoch(&self, pool: &Pool, len: &[u32], epoch: u64) -> Vec<Vec<u32>> {
        let mut order = permutation_u32(pool.len(), self.seed.wrapping_mul(1_000_003).wrapping_add(epoch));
        if let Pool::Some(v) = pool {
            order.iter_mut().for_each(|i| *i = v[*i as usize]);
        }
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
            m.sort_by_key(|&i| std::cmp::Reverse(len[i as usize]));
            match self.batch_tokens {
                None => batches.extend(m.chunks(self.batch_size.max(1)).map(|c| c.to_vec())),
                Some(budget) => {
                    let mut cur: Vec<u32> = Vec::new();
                    let mut longest = 0;
                    let multiple = self.length_multiple.max(1);
                    for i in m {
                        let l = (len[i as usize] as usize).max(1).div_ceil(multiple) * multiple;
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

    #[test]
    fn a_subset_pool_draws_only_its_examples_and_u32_orders_equal_usize_ones() {
        let len: Vec<u32> = (0..500).map(|i| 1 + i % 50).collect();
        let some: Vec<u32> = (0..500).filter(|i| i % 3 == 0).collect();
        let b = plan(Padding::Dynamic, None).epoch(&Pool::Some(some.clone()), &len, 2);
        let mut all: Vec<u32> = b.into_iter().flatten().collect();
        all.sort();
        assert_eq!(all, some);
        let wide: Vec<u32> = permutation(1000, 9).into_iter().map(|i| i as u32).collect();
        assert_eq!(permutation_u32(1000, 9), wide);
    }

    fn plan(padding: Padding, tokens: Option<usize>) -> Plan {
        Plan { padding, batch_size: 8, batch_tokens: tokens, max_length: 64, length_multiple: 1, seed: 3 }
    }

    #[test]
    fn every_example_once_and_deterministic() {
        let len: Vec<u32> = (0..1000).map(|i| 5 + (i * 37) % 60).collect();
        let pool = Pool::All(1000);
        for p in [plan(Padding::Dynamic, None), plan(Padding::MaxLength, None), plan(Padding::Dynamic, Some(256))] {
            let b = p.epoch(&pool, &len, 0);
            let mut all: Vec<u32> = b.iter().flatten().copied().collect();
            all.sort();
            assert_eq!(all, (0..1000).collect::<Vec<u32>>());
            assert_eq!(b, p.epoch(&pool, &len, 0));
            assert_ne!(b, p.epoch(&pool, &len, 1));
        }
    }

    #[test]
    fn buckets_cut_padding_and_respect_budget() {
        let len: Vec<u32> = (0..2000).map(|i| 5 + (i * 37) % 60).collect();
        let pool = Pool::All(2000);
        let padded = |b: &Vec<Vec<u32>>| -> usize { b.iter().map(|x| x.len() * x.iter().map(|&i| len[i as usize] as usize).max().unwrap_or(0)).sum() };
        let real: usize = len.iter().map(|&l| l as usize).sum();
        let dynamic = plan(Padding::Dynamic, None).epoch(&pool, &len, 0);
        let random = plan(Padding::MaxLength, None).epoch(&pool, &len, 0);
        assert!(padded(&dynamic) < real * 105 / 100, "bucketed padding {} vs real {real}", padded(&dynamic));
        assert!(padded(&random) > real * 110 / 100);
        for b in plan(Padding::Dynamic, Some(256)).epoch(&pool, &len, 0) {
            let l = b.iter().map(|&i| len[i as usize] as usize).max().unwrap_or(0);
            assert!(b.len() == 1 || b.len() * l <= 256);
        }
        // With lengths rounded up (to 16 here, as CUDA rounds to 64), the budget holds for the
        // rounded length: a batch of 17-token examples gets 32 positions each.
        let rounded = Plan { length_multiple: 16, ..plan(Padding::Dynamic, Some(256)) };
        let batches = rounded.epoch(&pool, &len, 0);
        for b in &batches {
            let l = (b.iter().map(|&i| len[i as usize]).max().unwrap_or(0) as usize).div_ceil(16) * 16;
            assert!(b.len() == 1 || b.len() * l <= 256, "{} rows × {l}", b.len());
        }
        assert!(batches.len() > plan(Padding::Dynamic, Some(256)).epoch(&pool, &len, 0).len());
    }
}
