//! Exports this stage's code version.
fn main() {
    build_support::code_version(&["pipeline"]);
}
