//! Round trips, and damaged files rejected without panics.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in #[test] functions only).
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use shards::{pad_batch, Examples as _, Shard, ShardWriter, Split, Unlabelled};

fn write(dir: &std::path::Path, examples: &[(Vec<u32>, i32)], vocab: usize, cap: u64) -> Vec<std::path::PathBuf> {
    let mut w = ShardWriter::new(dir, "train", vocab as u32 - 1, cap);
    for (ids, l) in examples {
        w.push(ids, *l, ids.len() as u32 + 1).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn round_trip_across_shards_and_widths() {
    for vocab in [30522, 100_000] {
        let tmp = tempfile::tempdir().unwrap();
        let ex: Vec<(Vec<u32>, i32)> =
            (0..50u32).map(|i| ((0..i % 7).map(|j| (i * 31 + j * 1000) % vocab as u32).collect(), (i % 3) as i32)).collect();
        let files = write(tmp.path(), &ex, vocab, 300);
        assert!(files.len() > 1, "cap should split the split into several shards");
        let s = Split::open(tmp.path(), "train").unwrap();
        assert_eq!(s.len(), 50);
        for (i, (ids, l)) in ex.iter().enumerate() {
            assert_eq!(&s.ids(i), ids);
            assert_eq!(s.label(i), *l);
            assert_eq!(s.length(i), ids.len());
            assert_eq!(s.full_length(i), ids.len() as u32 + 1);
        }
        let b = pad_batch(&s, &[3, 5], 0, None, 1);
        assert_eq!((b.rows, b.len), (2, 5));
        assert_eq!(&b.ids[..5], &[93 % vocab as i64, 1093, 2093, 0, 0][..]);
        assert_eq!(&b.mask[5..], &[1, 1, 1, 1, 1][..]);
        assert_eq!(b.tokens, 8);
        let p = pad_batch(&s, &[3], 0, Some(16), 1);
        assert_eq!(p.len, 16);
        let r = pad_batch(&s, &[3, 5], 0, None, 8);
        assert_eq!((r.len, r.tokens), (8, 8));
    }
}

#[test]
fn missing_split_lists_present() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), &[(vec![1, 2], 0)], 100, 1 << 20);
    let e = Split::open(tmp.path(), "test").err().unwrap().to_string();
    assert!(e.contains("`test`") && e.contains("train"), "{e}");
    let e = Split::open_setting(tmp.path(), "test", "evaluate.split").err().unwrap().to_string();
    assert!(e.contains("evaluate.split `test` is not in the tokenize artifact") && e.contains("[\"train\"]"), "{e}");
}

#[test]
fn every_truncation_and_byte_flip_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let files = write(tmp.path(), &[(vec![1, 2, 3], 0), (vec![4], 1), (vec![], 1)], 100, 1 << 20);
    let good = std::fs::read(&files[0]).unwrap();
    let p = tmp.path().join("bad.shard");
    for cut in 0..good.len() {
        std::fs::write(&p, &good[..cut]).unwrap();
        let e = Shard::open(&p).err().expect("truncated shard accepted").to_string();
        assert!(e.contains("bad.shard"), "{e}");
    }
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x41;
        std::fs::write(&p, &b).unwrap();
        assert!(Shard::open(&p).is_err(), "flip at byte {i} accepted");
    }
}

#[test]
fn ids_beyond_u16_widen_the_shard_and_are_never_truncated() {
    // A small vocabulary whose added token has id 70,000: the width follows the largest id.
    let tmp = tempfile::tempdir().unwrap();
    let ex = [(vec![5, 70_000, 7], 1)];
    let mut w = ShardWriter::new(tmp.path(), "train", 70_000, 1 << 20);
    w.push(&ex[0].0, 1, 3).unwrap();
    w.finish().unwrap();
    let s = Split::open(tmp.path(), "train").unwrap();
    assert_eq!(s.ids(0), vec![5, 70_000, 7]);
    // A writer told a smaller largest id refuses the id instead of wrapping it to 4,464.
    let mut w = ShardWriter::new(tmp.path(), "small", 30_521, 1 << 20);
    let e = w.push(&[5, 70_000], 0, 2).unwrap_err().to_string();
    assert!(e.contains("70000") && e.contains("largest id"), "{e}");
}

#[test]
fn pairs_label_sets_and_scores_round_trip() {
    use shards::{Label, LabelKind, Targets};
    let tmp = tempfile::tempdir().unwrap();
    // 40 labels: a set spans two words.
    let mut w = ShardWriter::new(tmp.path(), "multi", 99, 200).labels(LabelKind::MultiHot { labels: 40 }).token_types(true);
    let sets: Vec<Vec<u32>> = (0..20u32).map(|i| if i % 5 == 0 { vec![] } else { vec![i % 40, (i * 7 + 33) % 40, i % 40] }).collect();
    for (i, set) in sets.iter().enumerate() {
        let ids: Vec<u32> = (0..(i as u32 % 6 + 1)).collect();
        let types: Vec<u32> = ids.iter().map(|&k| u32::from(k >= 2)).collect();
        w.push_example(&ids, Some(&types), Label::Set(set), ids.len() as u32).unwrap();
    }
    assert!(w.finish().unwrap().len() > 1);
    let s = Split::open(tmp.path(), "multi").unwrap();
    assert_eq!((s.kind(), s.has_token_types()), (LabelKind::MultiHot { labels: 40 }, true));
    for (i, set) in sets.iter().enumerate() {
        for j in 0..40 {
            assert_eq!(s.has_label(i, j), set.contains(&(j as u32)), "example {i} label {j}");
        }
        let mut t = Vec::new();
        s.types_into(i, &mut t);
        assert_eq!(t, (0..s.length(i) as u32).map(|k| u32::from(k >= 2)).collect::<Vec<_>>());
    }
    let b = pad_batch(&s, &[5, 1], 0, None, 1);
    assert_eq!(b.types.as_deref(), Some(&[0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0][..]));
    let Some(Targets::Multi { labels: 40, hot }) = b.targets else { panic!("multi-hot targets") };
    assert_eq!(hot.iter().sum::<f32>(), 0.0 + 2.0, "example 5 has no label, example 1 two");

    let mut w = ShardWriter::new(tmp.path(), "reg", 99, 1 << 20).labels(LabelKind::Score);
    w.push_example(&[1, 2], None, Label::Score(-0.25), 2).unwrap();
    w.push_example(&[3], None, Label::Score(4.5), 1).unwrap();
    let e = w.push_example(&[3], None, Label::Class(1), 1).unwrap_err().to_string();
    assert!(e.contains("Class(1)") && e.contains("Score"), "{e}");
    let e = w.push_example(&[3], Some(&[0]), Label::Score(1.0), 1).unwrap_err().to_string();
    assert!(e.contains("token types"), "{e}");
    w.finish().unwrap();
    let s = Split::open(tmp.path(), "reg").unwrap();
    assert_eq!(s.all_targets(), Targets::Score(vec![-0.25, 4.5]));
    assert!(pad_batch(&s, &[0], 0, None, 1).types.is_none());
}

#[test]
fn a_version_1_shard_is_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let files = write(tmp.path(), &[(vec![1, 2], 0)], 100, 1 << 20);
    let mut b = std::fs::read(&files[0]).unwrap();
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&files[0], &b).unwrap();
    let e = Split::open(tmp.path(), "train").err().unwrap().to_string();
    assert!(e.contains("format version 1") && e.contains("rerun the tokenize stage"), "{e}");
}

/// Replaces a shard's checksum with the right one for its (modified) body.
fn reseal(b: &mut [u8]) {
    if b.len() >= shards::HEADER_LEN {
        let sum = blake3::hash(&b[shards::HEADER_LEN..]);
        b[32..48].copy_from_slice(&sum.as_bytes()[..16]);
    }
}

#[test]
fn corrupt_offsets_and_counts_behind_a_valid_checksum_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let files = write(tmp.path(), &[(vec![1, 2, 3], 0), (vec![4], 1), (vec![], 1)], 100, 1 << 20);
    let good = std::fs::read(&files[0]).unwrap();
    let p = tmp.path().join("resealed.shard");
    let n = 3usize;
    // The example count, the token count and each offset, made larger than the data.
    let fields: Vec<std::ops::Range<usize>> = [16..24, 24..32].into_iter().chain((0..=n).map(|i| 64 + 8 * i..72 + 8 * i)).collect();
    for f in fields {
        for v in [u64::MAX, 1 << 40, 9] {
            let mut b = good.clone();
            b[f.clone()].copy_from_slice(&v.to_le_bytes());
            reseal(&mut b);
            std::fs::write(&p, &b).unwrap();
            assert!(Shard::open(&p).is_err(), "field at {f:?} = {v} accepted behind a valid checksum");
        }
    }
    // Offsets that go backwards.
    let mut b = good.clone();
    b[72..80].copy_from_slice(&3u64.to_le_bytes());
    b[80..88].copy_from_slice(&1u64.to_le_bytes());
    reseal(&mut b);
    std::fs::write(&p, &b).unwrap();
    assert!(Shard::open(&p).is_err(), "decreasing offsets accepted");
}

proptest! {
    /// Random bodies behind a valid header and checksum: the offset, count and length checks
    /// run (a random checksum would stop every case before them).
    #[test]
    fn resealed_random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400), n in 0u64..6, t in 0u64..40, width in prop_oneof![Just(2u32), Just(4u32), any::<u32>()]) {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.shard");
        let mut b = vec![0u8; shards::HEADER_LEN];
        b[..8].copy_from_slice(shards::MAGIC);
        b[8..12].copy_from_slice(&shards::VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&width.to_le_bytes());
        b[16..24].copy_from_slice(&n.to_le_bytes());
        b[24..32].copy_from_slice(&t.to_le_bytes());
        b.extend_from_slice(&body);
        reseal(&mut b);
        std::fs::write(&p, &b).unwrap();
        if let Ok(s) = Shard::open(&p) {
            for i in 0..s.len() {
                let ids = s.ids(i);
                prop_assert!(ids.len() as u64 <= t);
                let _ = s.label(i);
                let _ = s.full_length(i);
            }
        }
    }

    /// A valid shard with one byte of its body changed and the checksum recomputed: a reader
    /// either refuses it or reads in bounds.
    #[test]
    fn resealed_byte_flips_never_panic(at in 64usize..200, x in 1u8..=255) {
        let tmp = tempfile::tempdir().unwrap();
        let files = write(tmp.path(), &[(vec![1, 2, 3], 0), (vec![4], 1), (vec![], 1), (vec![9, 9, 9, 9], 0)], 100, 1 << 20);
        let mut b = std::fs::read(&files[0]).unwrap();
        let at = at % b.len();
        b[at] ^= x;
        reseal(&mut b);
        let p = tmp.path().join("flip.shard");
        std::fs::write(&p, &b).unwrap();
        if let Ok(s) = Shard::open(&p) {
            for i in 0..s.len() {
                let _ = s.ids(i);
                let _ = s.label(i);
            }
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), header in any::<bool>()) {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.shard");
        let mut b = bytes;
        if header && b.len() >= 16 {
            b[..8].copy_from_slice(shards::MAGIC);
            b[8..12].copy_from_slice(&shards::VERSION.to_le_bytes());
            b[12..16].copy_from_slice(&2u32.to_le_bytes());
        }
        std::fs::write(&p, &b).unwrap();
        if let Ok(s) = Shard::open(&p) {
            for i in 0..s.len() {
                let _ = s.ids(i);
                let _ = s.label(i);
            }
        }
    }
}

#[test]
fn unlabelled_examples_pad_like_a_split() {
    let mut u = Unlabelled::new(true);
    u.push(&[5, 6, 7], Some(&[0, 1, 1]));
    u.push(&[8], Some(&[0]));
    assert_eq!((u.len(), u.length(0), u.length(1)), (2, 3, 1));
    let b = pad_batch(&u, &[1, 0], 0, None, 4);
    assert_eq!((b.rows, b.len, b.tokens), (2, 4, 4));
    assert_eq!(b.ids, vec![8, 0, 0, 0, 5, 6, 7, 0]);
    assert_eq!(b.mask, vec![1, 0, 0, 0, 1, 1, 1, 0]);
    assert_eq!(b.types.as_deref(), Some(&[0, 0, 0, 0, 0, 1, 1, 0][..]));
    assert!(b.targets.is_none(), "new data has no labels");
    let mut single = Unlabelled::new(false);
    single.push(&[1, 2], None);
    assert!(pad_batch(&single, &[0], 0, None, 1).types.is_none());
}
