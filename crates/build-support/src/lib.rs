//! Helpers called from build scripts.
//!
//! * [`code_version`]: hashes the sources that decide a stage's output (its own `src/` and
//!   `Cargo.toml`, plus those of the shared crates it names) and exports the hash to the crate as
//!   `FT_CODE_HASH`. Tests, benches, docs, other stages and the crate's other binaries
//!   (`src/bin/` files other than `ft-<crate>.rs`: ft-bench, ft-logits, ft-doctor) are not
//!   hashed, so changing them never invalidates this stage's artifacts. It also exports
//!   `FT_DEPS`: the versions, resolved in `Cargo.lock`, of the external crates the stage and
//!   those shared crates depend on, plus a fingerprint of their whole dependency closure.
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
/// `src/` except the binaries in `src/bin/` other than the stage's own `ft-<crate>.rs` (tools
/// such as ft-bench cannot change an artifact), in a stable order.
pub fn source_files(crate_dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![crate_dir.join("Cargo.toml")];
    walk(&crate_dir.join("src"), &mut files);
    let name = crate_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let bin = crate_dir.join("src").join("bin");
    let own = bin.join(format!("ft-{name}.rs"));
    files.retain(|f| !f.starts_with(&bin) || *f == own);
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
    let root = own.ancestors().find(|a| a.join("Cargo.lock").is_file()).map(Path::to_path_buf).unwrap_or_else(|| own.join("../.."));
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());
    println!("cargo:rerun-if-changed={}", root.join("Cargo.toml").display());
    match deps::dependencies(&root, &dirs) {
        Ok(d) => println!("cargo:rustc-env=FT_DEPS={}", deps::render(&d)),
        Err(e) => panic!("code_version: reading the dependency versions: {e}"),
    }
}

pub mod deps {
    //! The external crates a stage depends on, read from the manifests and `Cargo.lock`.
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    /// Name -> version of the direct external dependencies (several versions joined by `,`), and
    /// `crates` -> blake3 over (name, version, checksum) of every package in their closure.
    pub fn dependencies(root: &Path, crate_dirs: &[PathBuf]) -> Result<BTreeMap<String, String>, String> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        let toml_of = |p: &Path| -> Result<toml::Table, String> { read(p)?.parse::<toml::Table>().map_err(|e| format!("{}: {e}", p.display())) };
        let workspace = toml_of(&root.join("Cargo.toml"))?;
        let ws_deps = workspace.get("workspace").and_then(|w| w.get("dependencies")).and_then(|d| d.as_table()).cloned().unwrap_or_default();
        let is_path = |name: &str, spec: &toml::Value| {
            spec.get("path").is_some() || (spec.get("workspace").is_some() && ws_deps.get(name).is_some_and(|w| w.get("path").is_some()))
        };
        let lock = toml_of(&root.join("Cargo.lock"))?;
        let mut direct = Vec::new();
        for dir in crate_dirs {
            let manifest = toml_of(&dir.join("Cargo.toml"))?;
            let name = manifest.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()).unwrap_or_default().to_string();
            // Normal dependencies only (the lock lists dev- and build-dependencies too), and not
            // our own path crates (their sources are hashed instead).
            let external: BTreeSet<String> = manifest
                .get("dependencies")
                .and_then(|d| d.as_table())
                .map(|deps| deps.iter().filter(|(n, spec)| !is_path(n, spec)).map(|(n, spec)| spec.get("package").and_then(|p| p.as_str()).unwrap_or(n).to_string()).collect())
                .unwrap_or_default();
            direct.push((name, external));
        }
        closure(&lock, &direct)
    }

    /// The map [`dependencies`] returns, for a lock file and, per workspace package, the names of
    /// its external normal dependencies. Versions come from the package's own entry in the lock
    /// (which names the version where several are locked), so `rand = "0.9"` is the 0.9 release
    /// even when 0.8 is locked for another crate.
    pub fn closure(lock: &toml::Table, direct: &[(String, BTreeSet<String>)]) -> Result<BTreeMap<String, String>, String> {
        let packages = lock.get("package").and_then(|p| p.as_array()).ok_or("Cargo.lock has no [[package]] entries")?;
        let field = |p: &toml::Value, k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        // (name, version) -> (checksum, dependency specs "name" or "name version ...").
        let mut by_id: BTreeMap<(String, String), (String, Vec<String>)> = BTreeMap::new();
        for p in packages {
            let deps = p.get("dependencies").and_then(|d| d.as_array()).map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default();
            by_id.insert((field(p, "name"), field(p, "version")), (field(p, "checksum"), deps));
        }
        let resolve = |spec: &str| -> Vec<(String, String)> {
            let mut parts = spec.split_whitespace();
            let name = parts.next().unwrap_or_default();
            let version = parts.next();
            by_id.keys().filter(|(n, v)| n == name && version.is_none_or(|want| want == v)).cloned().collect()
        };
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut todo: Vec<(String, String)> = Vec::new();
        for (package, names) in direct {
            let specs = by_id.iter().find(|((n, _), _)| n == package).map(|(_, (_, d))| d.clone()).ok_or_else(|| format!("package `{package}` is not in Cargo.lock"))?;
            for name in names {
                let spec = specs.iter().find(|s| s.split_whitespace().next() == Some(name.as_str()));
                let found = spec.map(|s| resolve(s)).unwrap_or_default();
                if found.is_empty() {
                    return Err(format!("dependency `{name}` of `{package}` is not in Cargo.lock; run `cargo update -p {name}`"));
                }
                out.entry(name.clone()).or_default().extend(found.iter().map(|(_, v)| v.clone()));
                todo.extend(found);
            }
        }
        let mut seen = BTreeSet::new();
        while let Some(id) = todo.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some((_, deps)) = by_id.get(&id) {
                for d in deps {
                    todo.extend(resolve(d));
                }
            }
        }
        let mut out: BTreeMap<String, String> = out.into_iter().map(|(k, v)| (k, v.into_iter().collect::<Vec<_>>().join(","))).collect();
        let mut h = blake3::Hasher::new();
        for id in &seen {
            let sum = by_id.get(id).map(|(c, _)| c.as_str()).unwrap_or_default();
            h.update(format!("{} {} {sum}\n", id.0, id.1).as_bytes());
        }
        out.insert("crates".into(), format!("{} ({} crates)", &h.finalize().to_hex()[..16], seen.len()));
        Ok(out)
    }

    /// `name=version;...`, as the stage reads it back with `artifact::parse_dependencies`.
    pub fn render(d: &BTreeMap<String, String>) -> String {
        d.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
    }
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
        assert_ne!(v2, hash_crates(&[c.clone(), other]));
        // The stage's own binary counts; its other binaries (ft-bench and the like) do not.
        std::fs::create_dir_all(c.join("src/bin")).unwrap();
        std::fs::write(c.join("src/bin/ft-stage.rs"), "fn main() {}\n").unwrap();
        std::fs::write(c.join("src/bin/ft-bench.rs"), "fn main() {}\n").unwrap();
        let v3 = hash_crates(std::slice::from_ref(&c));
        std::fs::write(c.join("src/bin/ft-bench.rs"), "fn main() { println!(); }\n").unwrap();
        assert_eq!(v3, hash_crates(std::slice::from_ref(&c)));
        std::fs::write(c.join("src/bin/ft-stage.rs"), "fn main() { println!(); }\n").unwrap();
        assert_ne!(v3, hash_crates(std::slice::from_ref(&c)));
    }

    const LOCK: &str = r#"
version = 4

[[package]]
name = "stage"
version = "0.1.0"
dependencies = ["rand 0.9.2", "shared", "tokenizers", "tempfile"]

[[package]]
name = "shared"
version = "0.1.0"
dependencies = ["serde"]

[[package]]
name = "tokenizers"
version = "0.22.1"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "aa"
dependencies = ["onig"]

[[package]]
name = "onig"
version = "6.5.1"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "bb"

[[package]]
name = "serde"
version = "1.0.228"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "cc"

[[package]]
name = "tempfile"
version = "3.20.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "dd"

[[package]]
name = "rand"
version = "0.8.5"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "ff"

[[package]]
name = "rand"
version = "0.9.2"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "gg"

[[package]]
name = "plotters"
version = "0.3.7"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "ee"
"#;

    /// A workspace with a stage (tokenizers; tempfile only for tests), a shared crate (serde)
    /// and an unrelated crate (plotters) in the lock.
    fn workspace(lock: &str) -> (tempfile::TempDir, Vec<PathBuf>) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("Cargo.toml"), "[workspace]\nmembers = [\"crates/*\"]\n[workspace.dependencies]\nshared = { path = \"crates/shared\" }\nserde = \"1\"\n").unwrap();
        std::fs::write(root.join("Cargo.lock"), lock).unwrap();
        for (name, deps) in [("stage", "shared.workspace = true\ntokenizers = \"0.22\"\nrand = \"0.9\"\n[dev-dependencies]\ntempfile = \"3\"\n"), ("shared", "serde.workspace = true\n")] {
            let d = root.join("crates").join(name);
            std::fs::create_dir_all(d.join("src")).unwrap();
            std::fs::write(d.join("Cargo.toml"), format!("[package]\nname = \"{name}\"\n[dependencies]\n{deps}")).unwrap();
        }
        let dirs = vec![root.join("crates/stage"), root.join("crates/shared")];
        (tmp, dirs)
    }

    #[test]
    fn dependency_versions_follow_the_lock_file_for_linked_crates_only() {
        let (tmp, dirs) = workspace(LOCK);
        let d = deps::dependencies(tmp.path(), &dirs).unwrap();
        assert_eq!(d["tokenizers"], "0.22.1");
        assert_eq!(d["serde"], "1.0.228", "a shared crate's dependencies count");
        assert!(!d.contains_key("tempfile") && !d.contains_key("shared"), "{d:?}");
        assert_eq!(d["rand"], "0.9.2", "the version the stage's own lock entry names, not every rand locked");
        assert!(d["crates"].ends_with("(4 crates)"), "rand, tokenizers, onig (transitive), serde: {d:?}");
        // A linked crate's version (direct or transitive) changes the record.
        for (from, to) in [("0.22.1", "0.22.2"), ("6.5.1", "6.5.2")] {
            let (tmp2, dirs2) = workspace(&LOCK.replace(from, to));
            assert_ne!(deps::dependencies(tmp2.path(), &dirs2).unwrap(), d, "{from} -> {to}");
        }
        // Neither an unrelated crate's nor a dev-dependency's does.
        for (from, to) in [("0.3.7", "0.3.8"), ("3.20.0", "3.21.0"), ("0.8.5", "0.8.6")] {
            let (tmp2, dirs2) = workspace(&LOCK.replace(from, to));
            assert_eq!(deps::dependencies(tmp2.path(), &dirs2).unwrap(), d, "{from} -> {to}");
        }
        let rendered = deps::render(&d);
        assert!(rendered.contains("serde=1.0.228;") && rendered.contains("tokenizers=0.22.1"), "{rendered}");
    }
}
