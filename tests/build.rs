//! The integration tests use tch (parity, round trips): link libtorch with an rpath.
fn main() {
    build_support::link_libtorch();
}
