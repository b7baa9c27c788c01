//! Progress of a stage's long loop (training steps, evaluation batches) for the person running it.
//!
//! On a terminal it is an indicatif bar with log lines above it. Anywhere else — a log file,
//! CI, a batch scheduler, `TERM` unset — indicatif draws nothing and drops the lines printed
//! above its bar too, so a job run under `nohup` would say nothing between "training …" and
//! its summary. There the same facts go out as plain lines on stderr instead: one per
//! [`Progress::report`] (with the position, the elapsed time and an ETA), one at each tenth of
//! the way for [`Progress::tick`], and every [`Progress::println`].

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar on a terminal, plain lines elsewhere, or nothing (hidden).
pub struct Progress {
    what: String,
    total: u64,
    out: Out,
    /// Tenths of the way reported by [`Progress::tick`] so far.
    tenths: AtomicU64,
}

enum Out {
    Hidden,
    Bar(ProgressBar),
    /// Lines written to `sink`; the ETA counts from `since`, when the position was `from`.
    Lines { sink: std::sync::Mutex<Box<dyn std::io::Write + Send>>, since: Instant, from: u64 },
}

impl Progress {
    /// Progress of `what` ("steps", "examples") from position `at` (a resumed run's start) to
    /// `total`: a bar if stderr is a terminal indicatif draws on, else lines on stderr.
    pub fn new(what: &str, total: u64, at: u64) -> Progress {
        let target = ProgressDrawTarget::stderr();
        if target.is_hidden() {
            return Progress::lines(what, total, at, Box::new(std::io::stderr()));
        }
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(s) = ProgressStyle::with_template(&format!("{{msg}} [{{bar:25}}] {{pos}}/{{len}} {what}, ETA {{eta}}")) {
            bar.set_style(s);
        }
        bar.set_position(at);
        bar.reset_eta();
        Progress { what: what.into(), total, out: Out::Bar(bar), tenths: AtomicU64::new(0) }
    }

    /// Progress written as plain lines to `sink` (what [`Progress::new`] does off a terminal).
    pub fn lines(what: &str, total: u64, at: u64, sink: Box<dyn std::io::Write + Send>) -> Progress {
        let out = Out::Lines { sink: std::sync::Mutex::new(sink), since: Instant::now(), from: at };
        Progress { what: what.into(), total, out, tenths: AtomicU64::new(0) }
    }

    /// Shows nothing.
    pub fn hidden() -> Progress {
        Progress { what: String::new(), total: 0, out: Out::Hidden, tenths: AtomicU64::new(0) }
    }

    /// Moves the bar (lines: nothing, until the next report).
    pub fn set_position(&self, pos: u64) {
        if let Out::Bar(b) = &self.out {
            b.set_position(pos);
        }
    }

    /// Moves the bar; off a terminal, reports each tenth of the way (for loops without a
    /// natural log point, such as evaluation batches).
    pub fn tick(&self, pos: u64) {
        self.set_position(pos);
        let tenth = (pos * 10).checked_div(self.total).unwrap_or(10).min(10);
        if matches!(self.out, Out::Lines { .. }) && tenth > self.tenths.fetch_max(tenth, Ordering::Relaxed) {
            self.report(pos, "");
        }
    }

    /// The state at `pos`, described by `msg` (may be empty): the bar's message, or a line
    /// `"{pos}/{total} {what}: {msg}; {elapsed} elapsed, ETA {eta}"`.
    pub fn report(&self, pos: u64, msg: &str) {
        match &self.out {
            Out::Hidden => {}
            Out::Bar(b) => {
                b.set_position(pos);
                b.set_message(msg.to_string());
            }
            Out::Lines { sink, since, from } => {
                let elapsed = since.elapsed();
                let done = pos.saturating_sub(*from);
                let eta = if done == 0 {
                    "?".to_string()
                } else {
                    let left = elapsed.as_secs_f64() * self.total.saturating_sub(pos) as f64 / done as f64;
                    HumanDuration(Duration::from_secs_f64(left)).to_string()
                };
                let sep = if msg.is_empty() { "" } else { ": " };
                let line = format!("{pos}/{} {}{sep}{msg}; {} elapsed, ETA {eta}", self.total, self.what, HumanDuration(elapsed));
                write_line(sink, &line);
            }
        }
    }

    /// A line of its own (a validation result): above the bar, or as is.
    pub fn println(&self, line: &str) {
        match &self.out {
            Out::Hidden => {}
            Out::Bar(b) => b.println(line),
            Out::Lines { sink, .. } => write_line(sink, line),
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Out::Bar(b) = &self.out {
            b.finish_and_clear();
        }
    }
}

fn write_line(sink: &std::sync::Mutex<Box<dyn std::io::Write + Send>>, line: &str) {
    if let Ok(mut w) = sink.lock() {
        // Progress is for a person: a closed stderr must not fail the stage.
        let _ = writeln!(w, "{line}");
        let _ = w.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

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
    fn ticks_report_each_tenth_once() {
        let sink = Shared::default();
        let p = Progress::lines("examples", 250, 0, Box::new(sink.clone()));
        for pos in (0..=250).step_by(16).chain([250]) {
            p.tick(pos);
        }
        let text = text(&sink);
        let firsts: Vec<&str> = text.lines().filter_map(|l| l.split(' ').next()).collect();
        // The first position at or past each tenth (25, 50, ...), and the end once.
        assert_eq!(firsts, ["32/250", "64/250", "80/250", "112/250", "128/250", "160/250", "176/250", "208/250", "240/250", "250/250"], "{text}");
    }

    #[test]
    fn off_a_terminal_reports_and_lines_are_written_out() {
        let sink = Shared::default();
        let p = Progress::lines("steps", 100, 20, Box::new(sink.clone()));
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
        assert!(lines[3].starts_with("100/100 steps; ") && lines[3].ends_with("ETA 0 seconds"), "{text}");
    }
}
