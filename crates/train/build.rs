//! Links libtorch (CUDA despite --as-needed, rpath) and exports this stage's code version: its
//! own sources plus the model and shard crates it trains with, and the collectives of
//! data-parallel runs.
fn main() {
    build_support::link_libtorch();
    build_support::code_version(&["model", "shards", "metrics", "pipeline", "collective"]);
}
