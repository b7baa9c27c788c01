//! Links libtorch and exports this stage's code version (its sources, the model, shard and
//! metrics crates).
fn main() {
    build_support::link_libtorch();
    build_support::code_version(&["model", "shards", "metrics", "pipeline"]);
}
