//! One integration-test binary for the workspace (keeps link times down).

// Test code: a failed unwrap is a failed test (clippy.toml allows it in #[test] functions only).
#![allow(clippy::unwrap_used)]

mod distributed;
mod download;
mod families;
mod lora;
mod model_parity;
mod pipelines;
mod predict;
mod remote;
mod runner_cache;
mod smoke;
mod sweep;
mod tasks;
mod tokenize;
mod tools;
mod train;

/// Runs a pipeline through the runner with the stage binaries `cargo xtask test` built.
fn run_pipeline(p: &pipeline::Pipeline) -> Vec<runner::StageOutcome> {
    let opts = runner::RunOptions { bin_dir: tests::release_dir(), ..Default::default() };
    runner::run(p, &opts, |_| {}).unwrap_or_else(|e| panic!("{e:#}"))
}
