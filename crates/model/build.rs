//! Links libtorch so that CUDA is available and the test binaries find it at run time.
fn main() {
    build_support::link_libtorch();
}
