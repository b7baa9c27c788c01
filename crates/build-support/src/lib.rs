//! Helpers called from build scripts.
//!
//! * [`code_version`]: hashes the sources that decide a stage's output (its own `src/` and
//!   `Cargo.toml`, plus those of the shared crates it names) and exports the hash to the crate as
//!   `FT_CODE_HASH`. Tests, benches, docs and other stages are not hashed, so changing them
//!   never invalidates this stage's artifacts.
//! * [`link_libtorch`]: makes binaries that use tch link `libtorch_cuda` despite the linker's
//!   `--as-needed` (otherwise CUDA is silently unavailable) and find libtorch at run time (rpath).

use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The files whose content defines a crate's code version: `Cargo.toml` and everything under
/// `src/`, in a stable order.
pub fn source_files(crate_dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![crate_dir.join("Cargo.toml")];
    walk(&crate_dir.join("src"), &mut files);
    files.sort();
    files
}

/// blake3 over the relative paths and contents of the source files of the given crates.
pub fn hash_crates(crate_dirs: &[PathBuf]) -> String {
    let mut h = blake3::Hasher::new();
    for dir in crate_dirs {
        for f in source_files(dir) {
            let rel = f.strip_prefix(dir).unwrap_or(&f);
            h.update(rel.to_string_lossy().as_bytes());
            h.update(b"\0");
            if let Ok(bytes) = std::fs::read(&f) {
                h.update(&bytes);
            }
            h.update(b"\0");
        }
    }
    h.finalize().to_hex()[..16].to_string()
}

/// Call from a stage's build.rs: exports `FT_CODE_HASH` covering this crate and the sibling crates
/// named in `shared` (directory names under `crates/`, e.g. `["shards", "model"]`).
pub fn code_version(shared: &[&str]) {
    let own = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let mut dirs = vec![own.clone()];
    for s in shared {
        dirs.push(own.join("..").join(s));
    }
    for d in &dirs {
        println!("cargo:rerun-if-changed={}", d.join("src").display());
        println!("cargo:rerun-if-changed={}", d.join("Cargo.toml").display());
    }
    println!("cargo:rustc-env=FT_CODE_HASH={}", hash_crates(&dirs));
}

/// The `lib` folder of the libtorch tch builds against: `$LIBTORCH/lib`, or torch's from the
/// python that `PYTHON_SYS_EXECUTABLE` names (the project venv, set in .cargo/config.toml).
pub fn libtorch_lib_dir() -> Option<PathBuf> {
    if let Ok(lt) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(lt).join("lib"));
    }
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args(["-c", "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Call from the build.rs of every package whose binaries or tests use tch.
pub fn link_libtorch() {
    link_libtorch_as("rustc-link-arg");
}

/// Like [`link_libtorch`], for the package's test targets only (its binaries stay free of
/// libtorch, so they start in milliseconds).
pub fn link_libtorch_for_tests() {
    link_libtorch_as("rustc-link-arg-tests");
}

fn link_libtorch_as(directive: &str) {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=PYTHON_SYS_EXECUTABLE");
    let Some(lib) = libtorch_lib_dir() else {
        println!("cargo:warning=libtorch not found: run `cargo xtask setup`");
        return;
    };
    println!("cargo:{directive}=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-env=FT_LIBTORCH_LIB={}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:{directive}=-Wl,--no-as-needed");
        println!("cargo:{directive}=-L{}", lib.display());
        println!("cargo:{directive}=-ltorch_cuda");
        println!("cargo:{directive}=-Wl,--as-needed");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // clippy.toml's allow-unwrap-in-tests misses some of these tests
    use super::*;

    #[test]
    fn only_sources_change_the_code_version() {
        let tmp = tempfile::tempdir().unwrap();
        let c = tmp.path().join("stage");
        std::fs::create_dir_all(c.join("src")).unwrap();
        std::fs::create_dir_all(c.join("tests")).unwrap();
        std::fs::write(c.join("Cargo.toml"), "[package]\nname = \"stage\"\n").unwrap();
        std::fs::write(c.join("src/lib.rs"), "pub fn f() -> u32 { 1 }\n").unwrap();
        std::fs::write(c.join("tests/t.rs"), "#[test] fn t() {}\n").unwrap();
        std::fs::write(c.join("README.md"), "docs\n").unwrap();
        let other = tmp.path().join("other");
        std::fs::create_dir_all(other.join("src")).unwrap();
        std::fs::write(other.join("src/lib.rs"), "x").unwrap();
        let v0 = hash_crates(std::slice::from_ref(&c));
        // Docs, tests and other crates do not count.
        std::fs::write(c.join("README.md"), "more docs\n").unwrap();
        std::fs::write(c.join("tests/t.rs"), "#[test] fn t2() {}\n").unwrap();
        std::fs::write(other.join("src/lib.rs"), "y").unwrap();
        assert_eq!(v0, hash_crates(std::slice::from_ref(&c)));
        // Source and manifest changes do.
        std::fs::write(c.join("src/lib.rs"), "pub fn f() -> u32 { 2 }\n").unwrap();
        let v1 = hash_crates(std::slice::from_ref(&c));
        assert_ne!(v0, v1);
        std::fs::write(c.join("Cargo.toml"), "[package]\nname = \"stage\"\n[dependencies]\n").unwrap();
        assert_ne!(v1, hash_crates(std::slice::from_ref(&c)));
        // A shared crate named by the stage counts.
        let v2 = hash_crates(&[c.clone(), other.clone()]);
        std::fs::write(other.join("src/lib.rs"), "z").unwrap();
        assert_ne!(v2, hash_crates(&[c, other]));
    }
}
