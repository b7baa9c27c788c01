//! TensorBoard event files from train's log: `tb/events.out.tfevents.<time>.ft` in the artifact,
//! so that `tensorboard --logdir data/train` shows every run side by side (each key directory is
//! a run). Scalars: `train/loss`, `train/learning_rate`, `train/grad_norm`,
//! `train/samples_per_second`, `train/tokens_per_second` per log window, and
//! `validation/<metric>` for every figure of every validation.
//!
//! The file is TensorFlow's record format: per record, the payload length (u64 LE), its masked
//! CRC-32C, the payload, and the payload's masked CRC-32C. Each payload is an `Event` protocol
//! buffer (tensorflow/core/util/event.proto), encoded here by hand: the first carries
//! `file_version: "brain.Event:2"`, the others a `Summary` of scalar values.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use pipeline::files::LogLine;

/// CRC-32C as TensorFlow masks it (so that a CRC of data holding CRCs stays well spread).
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn record(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// `Event { wall_time = 1 (double); step = 2 (int64); file_version = 3 | summary = 5 }`.
fn event(wall_time: f64, step: u64, what: (u64, &[u8])) -> Vec<u8> {
    let mut e = vec![0x09];
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(0x10);
    varint(&mut e, step);
    bytes_field(&mut e, what.0, what.1);
    e
}

/// `Summary { repeated Value value = 1 }`, `Value { tag = 1; simple_value = 2 (float) }`.
fn summary(scalars: &[(String, f64)]) -> Vec<u8> {
    let mut s = Vec::new();
    for (tag, v) in scalars {
        let mut value = Vec::new();
        bytes_field(&mut value, 1, tag.as_bytes());
        value.push(0x15);
        value.extend_from_slice(&(*v as f32).to_le_bytes());
        bytes_field(&mut s, 1, &value);
    }
    s
}

/// The scalars of one log line, at its step.
fn scalars(line: &LogLine) -> (u64, Vec<(String, f64)>) {
    match line {
        LogLine::Train { step, loss, lr, grad_norm, samples_per_s, tokens_per_s, .. } => (
            *step,
            vec![
                ("train/loss".into(), *loss),
                ("train/learning_rate".into(), *lr),
                ("train/grad_norm".into(), *grad_norm),
                ("train/samples_per_second".into(), *samples_per_s),
                ("train/tokens_per_second".into(), *tokens_per_s),
            ],
        ),
        LogLine::Eval { step, eval, .. } => (*step, eval.figures().into_iter().map(|(m, v)| (format!("validation/{m}"), v)).collect()),
    }
}

/// The event file's bytes for a log. Wall times are rebuilt from the log: the run ends at
/// `end_unix`, and each training window lasted its samples over its rate, so TensorBoard's
/// relative-time axis shows training time (validations and checkpoints left out).
pub fn events(lines: &[LogLine], end_unix: f64) -> Vec<u8> {
    let durations: Vec<f64> = lines
        .iter()
        .map(|l| match l {
            LogLine::Train { samples, samples_per_s, .. } if *samples_per_s > 0.0 => *samples as f64 / samples_per_s,
            _ => 0.0,
        })
        .collect();
    let mut t = end_unix - durations.iter().sum::<f64>();
    let mut out = Vec::new();
    record(&mut out, &event(t, 0, (3, b"brain.Event:2")));
    for (line, d) in lines.iter().zip(durations) {
        t += d;
        let (step, values) = scalars(line);
        record(&mut out, &event(t, step, (5, &summary(&values))));
    }
    out
}

/// Writes `out/tb/events.out.tfevents.<end>.ft` from the run's `log.jsonl`; returns its path.
pub fn write(log: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let lines = LogLine::parse_all(log, &text)?;
    let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let dir = out.join("tb");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("events.out.tfevents.{}.ft", end as u64));
    std::fs::write(&path, events(&lines, end)).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Splits a record file back into payloads, checking both CRCs of each record.
    fn read_records(mut b: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let len = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), masked_crc(&b[..8]));
            let payload = &b[12..12 + len];
            assert_eq!(u32::from_le_bytes(b[12 + len..16 + len].try_into().unwrap()), masked_crc(payload));
            out.push(payload.to_vec());
            b = &b[16 + len..];
        }
        out
    }

    #[test]
    fn masked_crc_matches_tensorflow() {
        // CRC-32C of "123456789" is 0xE3069283 (the standard check value); TensorFlow's mask
        // rotates it right by 15 bits and adds 0xa282ead8.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn a_log_becomes_one_record_per_line_after_the_version() {
        let lines = vec![
            LogLine::Train { step: 10, epoch: 0, loss: 0.5, lr: 1e-4, grad_norm: 2.0, samples: 160, samples_per_s: 16.0, tokens_per_s: 1600.0 },
            LogLine::Eval {
                step: 10,
                epoch: 0,
                eval: serde_json::from_value(serde_json::json!({"accuracy": 0.75, "loss": 0.4, "examples": 4})).unwrap(),
                best: true,
            },
        ];
        let bytes = events(&lines, 1000.0);
        let records = read_records(&bytes);
        assert_eq!(records.len(), 3);
        // The version event: wall time 990 (one 10 s window before the end), step 0.
        assert_eq!(&records[0][..9], &[&[0x09u8][..], &990.0f64.to_le_bytes()].concat()[..]);
        assert!(records[0].ends_with(b"brain.Event:2"));
        let has = |r: &[u8], s: &str| r.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(has(&records[1], "train/loss") && has(&records[1], "train/learning_rate") && has(&records[1], "train/samples_per_second"));
        assert!(records[1].windows(4).any(|w| w == 0.5f32.to_le_bytes()), "the loss as a float");
        assert!(has(&records[2], "validation/accuracy") && has(&records[2], "validation/loss"));
        assert_eq!(records[2][10], 10, "step 10");
    }
}
