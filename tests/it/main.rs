//! One integration-test binary for the workspace (keeps link times down).

// Test code: a failed unwrap is a failed test (clippy.toml allows it in #[test] functions only).
#![allow(clippy::unwrap_used)]

mod download;
mod families;
mod model_parity;
mod pipelines;
mod runner_cache;
mod smoke;
mod tasks;
mod tokenize;
mod tools;
mod train;
