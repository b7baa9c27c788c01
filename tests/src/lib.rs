//! Test support shared by the integration tests in `it/`: a mock Hugging Face Hub. The test stage
//! executable they drive is `src/bin/ft-fake-stage.rs`.

pub mod mock_hub;

/// libtorch has one global random generator per process (dropout and initialization draw from
/// it), and tests run in parallel threads: tests that use it hold this lock so their draws are
/// not interleaved (training reproducibility is per process; each stage is its own process).
pub static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`TORCH_RNG`], also after another test panicked while holding it.
pub fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// The repository root.
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(std::path::Path::to_path_buf).unwrap_or_default()
}

/// `tests/fixtures`.
pub fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Where `cargo xtask test` builds the stage binaries (release profile).
pub fn release_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| repo().join("target")).join("release")
}

/// A binary of the workspace as `cargo xtask test` builds it (it builds them all first).
pub fn release_bin(name: &str) -> std::path::PathBuf {
    let p = release_dir().join(name);
    assert!(p.exists(), "{} is not built: run the tests with `cargo xtask test`", p.display());
    p
}

/// `pipelines/smoke.yaml` with absolute fixture paths and its store at `store`.
pub fn smoke_pipeline(store: &std::path::Path) -> pipeline::Pipeline {
    let path = repo().join("pipelines/smoke.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("tests/fixtures", &fixtures().display().to_string())
        .replace("name: smoke", &format!("name: smoke\nstore: {}", store.display()));
    pipeline::parse(std::path::Path::new("smoke.yaml"), &text).unwrap_or_else(|e| panic!("{e}"))
}

/// A pipeline of `pipelines/` (`smoke-pairs.yaml`, …) with its fixture paths made absolute and
/// its store at `store`.
pub fn repo_pipeline(file: &str, store: &std::path::Path) -> pipeline::Pipeline {
    let path = repo().join("pipelines").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = text.lines().find(|l| l.starts_with("name:")).unwrap_or("name: x").to_string();
    let text = text.replace("tests/fixtures", &fixtures().display().to_string()).replacen(&name, &format!("{name}\nstore: {}", store.display()), 1);
    pipeline::parse(std::path::Path::new(file), &text).unwrap_or_else(|e| panic!("{e}"))
}

/// The smoke pipeline on the tiny `family` model of `fixtures/families/` (named `smoke-<family>`),
/// evaluated on its train split.
pub fn family_pipeline(store: &std::path::Path, family: &str) -> pipeline::Pipeline {
    let path = repo().join("pipelines/smoke.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("tests/fixtures/tiny-bert", &format!("tests/fixtures/families/{family}"))
        .replace("tests/fixtures", &fixtures().display().to_string())
        .replace("name: smoke", &format!("name: smoke-{family}\nstore: {}", store.display()))
        .replace("  split: test", "  split: train");
    pipeline::parse(std::path::Path::new("smoke.yaml"), &text).unwrap_or_else(|e| panic!("{e}"))
}

/// Says that a test cannot run here and why, in the test output itself: libtest swallows what a
/// passing test prints with `eprintln!`, so this writes to the process's stderr directly, and a
/// skipped test shows as `SKIPPED` beside its `ok`. A missing `installable` dependency (a
/// reference package `cargo xtask setup` installs) fails the test instead when `FT_REQUIRE_ALL`
/// is set, as `.ci/run` sets it: there every such test must run. The caller returns after it.
pub fn skip(test: &str, why: &str, installable: bool) {
    if installable && std::env::var_os("FT_REQUIRE_ALL").is_some_and(|v| v != "0") {
        panic!("{test} cannot run: {why}; FT_REQUIRE_ALL is set, so this is a failure (run `cargo xtask setup`)");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}

/// `.venv/bin/python`, if it imports `module`.
pub fn venv_python_with(module: &str) -> Option<std::path::PathBuf> {
    let python = repo().join(".venv/bin/python");
    let ok = std::process::Command::new(&python).args(["-c", &format!("import {module}")]).output().map(|o| o.status.success()).unwrap_or(false);
    ok.then_some(python)
}
