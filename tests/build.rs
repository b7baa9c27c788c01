//! The integration tests use tch (parity, round trips): link libtorch with an rpath. The test
//! stage executable must start fast (the runner tests time cached runs), so it does not.
fn main() {
    build_support::link_libtorch_for_tests();
}
