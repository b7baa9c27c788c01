//! Progress of a stage's long loop (training steps, evaluation batches) for the person running it.
//!
//! On a terminal it is an indicatif bar with log lines above it. Anywhere else — a log file,
//! CI, a batch scheduler, `TERM` unset — indicatif draws nothing and drops the lines printed
//! above its bar too, so a job run under `nohup` would say nothing between "training …" and
//! its summary. There the same facts go out as plain lines on stderr instead: one per
//! [`Progress::report`] (with the position, the elapsed time and an ETA), every
//! [`Progress::println`], and for [`Progress::tick`] a line at the end and at each tenth of the
//! way reached at least [`TICK_GAP`] after the previous line (a fast loop says only that it ended).

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The least time between two lines of [`Progress::tick`] before the end.
pub const TICK_GAP: Duration = Duration::from_secs(5);

/// A bar on a terminal, plain lines elsewhere, or nothing (hidden).
pub struct Progress(Out);

enum Out {
    Hidden,
    Bar(ProgressBar),
    Lines(Lines),
}

/// Progress as plain lines.
struct Lines {
    what: String,
    total: u64,
    /// Positions are bytes (of a file named `what`), else counts of `what`.
    bytes: bool,
    sink: Mutex<Box<dyn std::io::Write + Send>>,
    /// The ETA counts from `since`, when the position was `from`.
    since: Instant,
    from: u64,
    /// When the last line was written.
    last: Mutex<Instant>,
    /// Tenths of the way reported by [`Progress::tick`] so far.
    tenths: AtomicU64,
    /// The least time between two lines of [`Progress::tick`] before the end.
    gap: Duration,
}

impl Progress {
    /// Progress of `what` ("steps", "examples") from position `at` (a resumed run's start) to
    /// `total`: a bar if stderr is a terminal indicatif draws on, else lines on stderr.
    pub fn new(what: &str, total: u64, at: u64) -> Progress {
        Progress::on_stderr(what, total, at, false)
    }

    /// Progress of the transfer of a file described by `what`, `total` bytes.
    pub fn bytes(what: &str, total: u64) -> Progress {
        Progress::on_stderr(what, total, 0, true)
    }

    fn on_stderr(what: &str, total: u64, at: u64, bytes: bool) -> Progress {
        let target = ProgressDrawTarget::stderr();
        if target.is_hidden() {
            return Progress::lines(what, total, at, bytes, Box::new(std::io::stderr()), TICK_GAP);
        }
        let bar = ProgressBar::with_draw_target(Some(total), target);
        let template = if bytes {
            "{msg} [{bar:25}] {bytes}/{total_bytes} {bytes_per_sec}, ETA {eta}".to_string()
        } else {
            format!("{{msg}} [{{bar:25}}] {{pos}}/{{len}} {what}, {{per_sec}}, ETA {{eta}}")
        };
        if let Ok(s) = ProgressStyle::with_template(&template) {
            bar.set_style(s);
        }
        if bytes {
            bar.set_message(what.to_string());
        }
        bar.set_position(at);
        bar.reset_eta();
        Progress(Out::Bar(bar))
    }

    /// Progress written as plain lines to `sink` (what [`Progress::new`] and
    /// [`Progress::bytes`] do off a terminal, with `gap` [`TICK_GAP`]).
    fn lines(what: &str, total: u64, at: u64, bytes: bool, sink: Box<dyn std::io::Write + Send>, gap: Duration) -> Progress {
        let now = Instant::now();
        Progress(Out::Lines(Lines {
            what: what.into(),
            total,
            bytes,
            sink: Mutex::new(sink),
            since: now,
            from: at,
            last: Mutex::new(now),
            tenths: AtomicU64::new(0),
            gap,
        }))
    }

    /// Shows nothing.
    pub fn hidden() -> Progress {
        Progress(Out::Hidden)
    }

    /// Moves the bar (lines: nothing, until the next report).
    pub fn set_position(&self, pos: u64) {
        if let Out::Bar(b) = &self.0 {
            b.set_position(pos);
        }
    }

    /// Moves the bar; off a terminal, reports the end, and each tenth of the way reached at
    /// least [`TICK_GAP`] after the previous line (for loops without a natural log point, such as
    /// evaluation batches or a download).
    pub fn tick(&self, pos: u64) {
        self.set_position(pos);
        let Out::Lines(l) = &self.0 else { return };
        let tenth = (pos * 10).checked_div(l.total).unwrap_or(10).min(10);
        let due = pos >= l.total || l.last.lock().map(|t| t.elapsed() >= l.gap).unwrap_or(true);
        if due && tenth > l.tenths.fetch_max(tenth, Ordering::Relaxed) {
            l.write(pos, "");
        }
    }

    /// The state at `pos`, described by `msg` (may be empty): the bar's message, or a line
    /// `"{pos}/{total} {what}: {msg}; {elapsed} elapsed, {rate}/s, ETA {eta}"` (bytes: `"{what}:
    /// {pos}/{total}; …"` in KiB, MiB, GiB), at the end `"…; done in {elapsed} ({rate}/s)"`.
    pub fn report(&self, pos: u64, msg: &str) {
        match &self.0 {
            Out::Hidden => {}
            Out::Bar(b) => {
                b.set_position(pos);
                b.set_message(msg.to_string());
            }
            Out::Lines(l) => l.write(pos, msg),
        }
    }

    /// Runs `f` with `msg` as the bar's message ("validating 2,500 examples"), so a bar that
    /// stops moving says why; the message before comes back afterwards. Off a terminal, `f` alone.
    pub fn during<T>(&self, msg: &str, f: impl FnOnce() -> T) -> T {
        let Out::Bar(b) = &self.0 else { return f() };
        let before = b.message();
        b.set_message(msg.to_string());
        let out = f();
        b.set_message(before);
        out
    }

    /// A line of its own (a validation result): above the bar, or as is.
    pub fn println(&self, line: &str) {
        match &self.0 {
            Out::Hidden => {}
            Out::Bar(b) => b.println(line),
            Out::Lines(l) => l.line(line),
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Out::Bar(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

impl Lines {
    /// The line of [`Progress::report`].
    fn write(&self, pos: u64, msg: &str) {
        let elapsed = self.since.elapsed();
        let at = if self.bytes {
            format!("{}: {}/{}", self.what, HumanBytes(pos), HumanBytes(self.total))
        } else {
            format!("{pos}/{} {}", self.total, self.what)
        };
        let sep = if msg.is_empty() { "" } else { ": " };
        let done = pos.saturating_sub(self.from);
        let per_s = done as f64 / elapsed.as_secs_f64().max(1e-9);
        let rate = match (self.bytes, per_s) {
            (true, _) => format!("{}/s", HumanBytes(per_s as u64)),
            (false, r) if r >= 100.0 => format!("{r:.0}/s"),
            (false, r) if r >= 1.0 => format!("{r:.1}/s"),
            (false, r) => format!("{r:.3}/s"),
        };
        let line = if pos >= self.total {
            format!("{at}{sep}{msg}; done in {} ({rate})", HumanDuration(elapsed))
        } else {
            let eta = if done == 0 {
                "?".to_string()
            } else {
                let left = elapsed.as_secs_f64() * (self.total - pos) as f64 / done as f64;
                HumanDuration(Duration::from_secs_f64(left)).to_string()
            };
            format!("{at}{sep}{msg}; {} elapsed, {rate}, ETA {eta}", HumanDuration(elapsed))
        };
        self.line(&line);
    }

    fn line(&self, line: &str) {
        if let Ok(mut w) = self.sink.lock() {
            // Progress is for a person: a closed stderr must not fail the stage.
            let _ = writeln!(w, "{line}");
            let _ = w.flush();
        }
        if let Ok(mut t) = self.last.lock() {
            *t = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text(sink: &Shared) -> String {
        String::from_utf8(sink.0.lock().map(|v| v.clone()).unwrap_or_default()).unwrap_or_default()
    }

    #[test]
    fn a_fast_loop_of_ticks_reports_its_end_only() {
        let sink = Shared::default();
        let p = Progress::lines("examples", 250, 0, false, Box::new(sink.clone()), TICK_GAP);
        for pos in (0..=250).step_by(16).chain([250, 250]) {
            p.tick(pos);
        }
        let text = text(&sink);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("250/250 examples; "), "{text}");
    }

    #[test]
    fn slow_ticks_report_each_tenth_once() {
        let sink = Shared::default();
        let p = Progress::lines("examples", 250, 0, false, Box::new(sink.clone()), Duration::ZERO);
        for pos in (0..=250).step_by(16).chain([250]) {
            p.tick(pos);
        }
        let text = text(&sink);
        let firsts: Vec<&str> = text.lines().filter_map(|l| l.split(' ').next()).collect();
        // The first position at or past each tenth (25, 50, ...), and the end once.
        assert_eq!(firsts, ["32/250", "64/250", "80/250", "112/250", "128/250", "160/250", "176/250", "208/250", "240/250", "250/250"], "{text}");
    }

    #[test]
    fn during_shows_its_message_on_the_bar_then_gives_the_old_one_back() {
        let p = Progress(Out::Bar(ProgressBar::hidden()));
        p.report(3, "epoch 1/3 loss 0.5");
        let Out::Bar(b) = &p.0 else { unreachable!() };
        let seen = p.during("validating 200 examples", || b.message());
        assert_eq!(seen, "validating 200 examples");
        assert_eq!(b.message(), "epoch 1/3 loss 0.5");
    }

    #[test]
    fn byte_progress_names_the_file_and_counts_in_binary_units() {
        let sink = Shared::default();
        let p = Progress::lines("org/model/model.safetensors", 3 << 20, 0, true, Box::new(sink.clone()), Duration::ZERO);
        p.tick(1 << 19);
        p.tick(3 << 20);
        let text = text(&sink);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("org/model/model.safetensors: 512.00 KiB/3.00 MiB; "), "{text}");
        assert!(lines[1].starts_with("org/model/model.safetensors: 3.00 MiB/3.00 MiB; "), "{text}");
    }

    #[test]
    fn off_a_terminal_reports_and_lines_are_written_out() {
        let sink = Shared::default();
        let p = Progress::lines("steps", 100, 20, false, Box::new(sink.clone()), TICK_GAP);
        p.report(20, "loss 0.7");
        p.set_position(30);
        std::thread::sleep(Duration::from_millis(30));
        p.report(60, "loss 0.5");
        p.println("validation accuracy 0.9");
        p.report(100, "");
        p.finish();
        let text = text(&sink);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        // Nothing done yet since the start (a resumed run's step 20): no ETA to give.
        assert!(lines[0].starts_with("20/100 steps: loss 0.7; ") && lines[0].ends_with("ETA ?"), "{text}");
        // 40 steps done, 40 left: the ETA is about the time taken so far, not a whole run's.
        assert!(lines[1].starts_with("60/100 steps: loss 0.5; ") && !lines[1].ends_with("ETA ?"), "{text}");
        assert_eq!(lines[2], "validation accuracy 0.9");
        assert!(lines[3].starts_with("100/100 steps; done in ") && lines[3].ends_with("/s)"), "{text}");
        assert!(lines[1].contains(" elapsed, ") && lines[1].contains("/s, ETA "), "the rate since the start: {text}");
    }
}
