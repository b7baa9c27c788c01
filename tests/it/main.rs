//! One integration-test binary for the workspace (keeps link times down).

mod pipelines;
mod runner_cache;
