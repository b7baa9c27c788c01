//! Compiles the two C++ shims: `src/cpp/store.cc` (c10d's TCPStore, against libtorch's headers,
//! linked into the crate) and `src/cpp/gloo.cc` (against Debian's libgloo-dev, built as its own
//! shared library `libft_gloo.so`, loaded at run time with RTLD_DEEPBIND because libtorch_cpu
//! exports another Gloo under the same symbol names). Its path is exported as `FT_GLOO_SHIM`.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/cpp");
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=GLOO_LIB");
    // The package has no binaries; this reaches its unit tests too (they use the store).
    build_support::link_libtorch();
    let Some(lib) = build_support::libtorch_lib_dir() else {
        panic!("libtorch not found: run `cargo xtask setup` (it creates .venv with torch 2.11.0)");
    };
    let include = lib.parent().map(|p| p.join("include")).unwrap_or_default();
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-Wno-unused-parameter")
        .file("src/cpp/store.cc")
        .compile("ft_store");
    // libtorch_cpu and c10, which the TCPStore lives in, are linked by torch-sys after this
    // crate's static library. Naming them here too would move them before libtorch_cuda in the
    // binaries' load order, which costs BERT training 3-5% on CPU (measured with ft-bench).

    let gloo_include = std::env::var("GLOO_INCLUDE").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("/usr/include"));
    if !gloo_include.join("gloo/allreduce.h").exists() {
        panic!(
            "Gloo's headers are not in {} (gloo/allreduce.h): the CPU backend of data-parallel training needs Debian's libgloo-dev. \
             Run `cargo xtask setup` as root (it installs it), or `sudo apt-get install libgloo-dev`, or set GLOO_INCLUDE and GLOO_LIB",
            gloo_include.display()
        );
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("libft_gloo.so");
    let compiler = cc::Build::new().cpp(true).get_compiler();
    let mut cmd = compiler.to_command();
    cmd.args(["-std=c++17", "-O2", "-fPIC", "-shared", "-Wl,-z,defs"]).arg("-I").arg(&gloo_include).arg("src/cpp/gloo.cc").arg("-o").arg(&out);
    if let Ok(dir) = std::env::var("GLOO_LIB") {
        cmd.arg(format!("-L{dir}")).arg(format!("-Wl,-rpath,{dir}"));
    }
    cmd.arg("-lgloo");
    let status = cmd.status().expect("the C++ compiler runs");
    if !status.success() {
        panic!("building libft_gloo.so failed: {cmd:?}");
    }
    println!("cargo:rustc-env=FT_GLOO_SHIM={}", out.display());
}
