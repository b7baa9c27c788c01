//! Exports this stage's code version (see build-support).
fn main() {
    build_support::code_version(&["pipeline"]);
}
