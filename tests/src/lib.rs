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
