//! One integration-test binary for the workspace (keeps link times down).

mod download;
mod model_parity;
mod pipelines;
mod runner_cache;
mod smoke;
mod tokenize;
mod tools;
mod train;
