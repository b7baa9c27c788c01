//! Exports this stage's code version: its own sources and the shard format's.
fn main() {
    build_support::code_version(&["shards", "pipeline"]);
}
