//! Links libtorch (CUDA despite --as-needed, rpath). Predict makes no artifact, so it has no
//! code version.
fn main() {
    build_support::link_libtorch();
}
