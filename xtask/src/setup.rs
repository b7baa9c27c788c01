//! `cargo xtask setup`: a project-local venv (.venv) with the PyTorch whose libtorch tch 0.24
//! builds against, plus the Python packages the parity tests compare with. Idempotent: a stamp
//! file records what was installed.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _};

/// PyTorch version that tch 0.24 pairs with. Bump together with `tch` in Cargo.toml.
pub const TORCH: &str = "torch==2.11.0";
/// Reference packages for parity tests and benchmarks (tokenizers, transformers, safetensors,
/// peft), and moto's S3 server for the remote store's tests and CI.
pub const EXTRAS: &[&str] = &["transformers==5.24.0", "tokenizers==0.23.3", "safetensors==0.8.0", "pyarrow==26.0.1", "accelerate==1.15.0", "tensorboard==2.21.0", "peft==0.21.2", "moto[server]==5.2.5"];

fn venv() -> PathBuf {
    super::root().join(".venv")
}

fn stamp_text() -> String {
    let mut s = String::from(TORCH);
    for e in EXTRAS {
        s.push(' ');
        s.push_str(e);
    }
    s
}

fn stamp() -> PathBuf {
    venv().join(".ft-setup")
}

/// The libtorch link that .cargo/config.toml points `LIBTORCH` at.
fn link() -> PathBuf {
    venv().join("libtorch")
}

/// A `LIBTORCH` the user set themselves (not the project's own link from .cargo/config.toml).
fn user_libtorch() -> Option<PathBuf> {
    let lt = PathBuf::from(std::env::var_os("LIBTORCH")?);
    let ours = lt.ends_with(".venv/libtorch") && lt.starts_with(super::root());
    (!ours).then_some(lt)
}

/// Whether setup is complete for the current requirements.
pub fn is_done() -> bool {
    user_libtorch().is_some()
        || (link().join("lib").exists() && std::fs::read_to_string(stamp()).map(|s| s == stamp_text()).unwrap_or(false))
}

/// What the venv takes once installed (~5.2 GB), with some room to spare.
const VENV_BYTES: u64 = 6 << 30;
/// The wheels pip downloads into the temporary folder while it installs them (~3 GB).
const WHEELS_BYTES: u64 = 3 << 30;

/// Fails before pip starts when the disk cannot hold the install: pip would otherwise stop
/// minutes in with "No space left on device" and a half-filled venv.
fn check_free_space(venv: &std::path::Path) -> anyhow::Result<()> {
    let free = |p: &std::path::Path| fs4::available_space(p).with_context(|| format!("reading the free space under {}", p.display()));
    let tmp = std::env::temp_dir();
    let dev = |p: &std::path::Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::dev(&m)).ok();
    let same_disk = dev(venv).is_some() && dev(venv) == dev(&tmp);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let need = VENV_BYTES + if same_disk { WHEELS_BYTES } else { 0 };
    let at_venv = free(venv)?;
    if at_venv < need {
        bail!(
            "setup needs about {:.0} GiB free for {} but the disk has {:.1} GiB: free some space (old `target/` folders, \
             `cargo xtask gc`, stale bench outputs) and rerun `cargo xtask setup`",
            gib(need),
            venv.display(),
            gib(at_venv)
        );
    }
    if !same_disk {
        let at_tmp = free(&tmp)?;
        if at_tmp < WHEELS_BYTES {
            bail!(
                "setup downloads about {:.0} GiB of wheels into {} but it has {:.1} GiB free: set TMPDIR to a folder on a disk with room and rerun `cargo xtask setup`",
                gib(WHEELS_BYTES),
                tmp.display(),
                gib(at_tmp)
            );
        }
    }
    Ok(())
}

/// Debian packages the build needs: Gloo's headers and library for the CPU backend of
/// data-parallel training (crates/collective). Bump with the header check below.
pub const SYSTEM_PACKAGES: &[&str] = &["libgloo-dev"];

fn gloo_present() -> bool {
    let include = std::env::var_os("GLOO_INCLUDE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/include"));
    include.join("gloo/allreduce.h").exists()
}

/// Installs [`SYSTEM_PACKAGES`] with apt-get when they are missing and this runs as root;
/// otherwise says the one command to run.
fn ensure_system_packages() -> anyhow::Result<()> {
    if gloo_present() {
        return Ok(());
    }
    let list = SYSTEM_PACKAGES.join(" ");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let apt = Command::new("apt-get").arg("--version").stdout(std::process::Stdio::null()).status().is_ok_and(|s| s.success());
    if !(root && apt) {
        bail!("the build needs Gloo's headers and library (data-parallel training on CPU): run `sudo apt-get install -y {list}` (Debian/Ubuntu), then `cargo xtask setup` again; or set GLOO_INCLUDE and GLOO_LIB to a Gloo build");
    }
    eprintln!("setup: installing {list} with apt-get");
    let install = || Command::new("apt-get").args(["install", "-y", "--no-install-recommends"]).args(SYSTEM_PACKAGES).env("DEBIAN_FRONTEND", "noninteractive").status();
    let mut ok = install().is_ok_and(|s| s.success());
    if !ok {
        // A fresh machine may have no package lists yet.
        let _ = Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive").status();
        ok = install().is_ok_and(|s| s.success());
    }
    if !ok || !gloo_present() {
        bail!("apt-get install -y {list} failed (see above)");
    }
    Ok(())
}

/// Runs setup unless it is already done.
pub fn ensure() -> anyhow::Result<()> {
    ensure_system_packages()?;
    if is_done() {
        return Ok(());
    }
    setup()
}

pub fn setup() -> anyhow::Result<()> {
    ensure_system_packages()?;
    if let Some(lt) = user_libtorch() {
        eprintln!("LIBTORCH is set ({}): using it, no venv needed", lt.display());
        return Ok(());
    }
    let venv = venv();
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!("setup: creating {}", venv.display());
        let st = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().context("running python3 -m venv")?;
        if !st.success() {
            bail!("python3 -m venv {} failed: install Python 3.9+ with the venv module", venv.display());
        }
    }
    if is_done() {
        eprintln!("setup: {} is up to date ({})", venv.display(), stamp_text());
        return Ok(());
    }
    check_free_space(&venv)?;
    eprintln!("setup: installing {} into {} (about 5 GB the first time)", stamp_text(), venv.display());
    // No pip cache: it would hold a second copy of the ~3 GB of wheels on the same disk.
    let st = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir", TORCH])
        .args(EXTRAS)
        .status()
        .context("running pip")?;
    if !st.success() {
        bail!("pip install into {} failed (see above); rerun `cargo xtask setup`", venv.display());
    }
    let check = Command::new(&python)
        .args(["-c", "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.11.0') else 1)"])
        .status()
        .context("checking torch")?;
    if !check.success() {
        bail!("{} does not import torch 2.11.0 after install", python.display());
    }
    let out = Command::new(&python)
        .args(["-c", "import os, torch; print(os.path.dirname(torch.__file__))"])
        .output()
        .context("locating torch")?;
    let torch_dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let _ = std::fs::remove_file(link());
    std::os::unix::fs::symlink(&torch_dir, link()).with_context(|| format!("linking {}", link().display()))?;
    std::fs::write(stamp(), stamp_text()).context("writing the setup stamp")?;
    eprintln!("setup: done");
    Ok(())
}

/// What `cargo xtask bench` needs beyond setup: HF `datasets` for the seed's `datasets.map`.
pub const BENCH_EXTRAS: &[&str] = &["datasets==5.2.0"];

/// Installs [`BENCH_EXTRAS`] into the project venv unless they import already.
pub fn ensure_bench() -> anyhow::Result<()> {
    if user_libtorch().is_some() && !venv().join("bin/python").exists() {
        bail!("cargo xtask bench runs the Python reference from the project venv; run `cargo xtask setup` without LIBTORCH set first");
    }
    let python = venv().join("bin/python");
    let ok = Command::new(&python).args(["-c", "import datasets"]).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success());
    if ok {
        return Ok(());
    }
    eprintln!("bench: installing {} into {}", BENCH_EXTRAS.join(" "), venv().display());
    let st = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(BENCH_EXTRAS)
        .status()
        .context("running pip")?;
    if !st.success() {
        bail!("pip install {} into {} failed (see above)", BENCH_EXTRAS.join(" "), venv().display());
    }
    Ok(())
}
