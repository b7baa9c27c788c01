//! Devices: `auto|cpu|cuda|cuda:N`, and a report of what this libtorch can do.

use anyhow::bail;
use tch::Device;

/// Resolves a device string; `cuda` without a usable GPU is an error, `auto` falls back to CPU.
pub fn resolve(spec: &str) -> anyhow::Result<Device> {
    let n = tch::Cuda::device_count();
    match spec {
        "auto" => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !tch::Cuda::is_available() {
                bail!("device `cuda` asked for, but libtorch sees no usable GPU ({}); use `device: auto` or `cpu`", why_no_cuda());
            }
            Ok(Device::Cuda(0))
        }
        s if s.starts_with("cuda:") => {
            let i: usize = s[5..].parse().map_err(|_| anyhow::anyhow!("device `{s}`: expected cuda:N with N a number"))?;
            if i as i64 >= n {
                bail!("device `{s}`: there are {n} GPUs ({})", why_no_cuda());
            }
            Ok(Device::Cuda(i))
        }
        other => bail!("unknown device `{other}`; use auto, cpu, cuda or cuda:N"),
    }
}

/// Keeps the host memory that libtorch frees for the process's next tensors. The train stage
/// calls it once, before the model loads.
///
/// By default glibc serves blocks over its mmap threshold (128 KiB at first, rising to the
/// largest block freed so far, at most 32 MiB) with a fresh mapping that `free` unmaps, and it
/// gives the heap's top back to the kernel once more than twice that threshold is free there.
/// A training step frees its activations and gradients at the end, so the next step faults the
/// same memory in again and the kernel zeroes it again: on ModernBERT-base at 128 tokens,
/// batch 16, 12% of the time went to the kernel's page clearing, and 10 steps took 2.98M page
/// faults at 1.59–1.62 samples/s; with the settings below, 2.10M at 1.69–1.79 (peak RSS 5523
/// against 5568 MiB; BENCHMARKS.md). With the threshold fixed at its maximum and the top never
/// trimmed, freed blocks up to 32 MiB go back to malloc's free lists and are reused; larger ones
/// are still unmapped. A `MALLOC_*_` variable or `glibc.malloc` tunable of the user's own is left to
/// rule, and any other libc alone.
pub fn keep_freed_host_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let own = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"].iter().any(|v| std::env::var_os(v).is_some())
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
        if !own {
            // SAFETY: mallopt only changes malloc's parameters; both values are in range (the
            // threshold's maximum is HEAP_MAX_SIZE / 2, 32 MiB on 64-bit).
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            }
        }
    }
}

fn why_no_cuda() -> String {
    if tch::Cuda::device_count() > 0 {
        "CUDA devices exist but are not usable".into()
    } else {
        "no CUDA device found by this libtorch build".into()
    }
}

/// Human and machine-readable description of the runtime.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

/// The libtorch this process loaded.
#[derive(Clone, Debug, Default)]
pub struct Libtorch {
    /// `libtorch_cpu.so` as mapped into the process (from `/proc/self/maps`).
    pub library: Option<std::path::PathBuf>,
    /// `2.11.0+cu130`: torch's `version.py` beside a wheel's `lib/`, or the `build-version` file
    /// of a libtorch archive; `unknown` when neither is there.
    pub version: String,
    /// The CUDA version libtorch was built with (`13.0`), when it was built with one.
    pub cuda: Option<String>,
}

impl Libtorch {
    /// What enters a stage's key (`libtorch` -> version), and the file the runner's memo
    /// re-checks.
    pub fn key_facts(&self) -> (std::collections::BTreeMap<String, String>, Vec<std::path::PathBuf>) {
        ([("libtorch".to_string(), self.version.clone())].into(), self.library.iter().cloned().collect())
    }
}

/// Finds the loaded libtorch and reads its version. Train and evaluate key their artifacts on
/// it: another torch can change the numbers without a rebuild of ours.
pub fn libtorch() -> Libtorch {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let library = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .map(std::path::PathBuf::from);
    let root = library.as_deref().and_then(|l| l.parent()).and_then(|lib| lib.parent()).map(std::path::Path::to_path_buf);
    let mut out = Libtorch { library, version: "unknown".into(), cuda: None };
    let Some(root) = root else { return out };
    if let Ok(py) = std::fs::read_to_string(root.join("version.py")) {
        let quoted = |key: &str| {
            py.lines()
                .find(|l| l.starts_with(key) && l[key.len()..].trim_start().starts_with([':', '=']))
                .and_then(|l| l.split(['\'', '"']).nth(1))
                .map(String::from)
        };
        out.version = quoted("__version__").unwrap_or(out.version);
        out.cuda = quoted("cuda");
    } else if let Ok(v) = std::fs::read_to_string(root.join("build-version")) {
        out.version = v.trim().to_string();
    }
    out
}

/// What `cargo xtask doctor` prints.
#[derive(Clone, Debug)]
pub struct Doctor {
    pub libtorch: Libtorch,
    /// The libtorch `lib/` this build linked against (its rpath).
    pub built_against: String,
    pub cuda_available: bool,
    pub cudnn_available: bool,
    pub cuda_devices: i64,
    pub cpu_threads: i32,
}

pub fn doctor() -> Doctor {
    Doctor {
        libtorch: libtorch(),
        built_against: option_env!("FT_LIBTORCH_LIB").unwrap_or("(unknown)").to_string(),
        cuda_available: tch::Cuda::is_available(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        cuda_devices: tch::Cuda::device_count(),
        cpu_threads: tch::get_num_threads(),
    }
}

/// A batch that libtorch failed on (tch reports libtorch errors as panics).
#[derive(Debug)]
pub struct BatchError {
    pub rows: usize,
    pub len: usize,
    pub device: Device,
    /// libtorch's message.
    pub message: String,
}

impl BatchError {
    /// Whether the device ran out of memory: CUDA's caching allocator says "out of memory",
    /// the CPU allocator "can't allocate memory".
    pub fn out_of_memory(&self) -> bool {
        ["out of memory", "can't allocate memory", "not enough memory"].iter().any(|s| self.message.contains(s))
    }

    /// The error a user sees: for running out of memory, the batch that did not fit and
    /// `lower`, the settings that shrink it; otherwise libtorch's message.
    pub fn explain(&self, what: &str, lower: &str) -> anyhow::Error {
        let (rows, len, on) = (self.rows, self.len, describe(self.device));
        if self.out_of_memory() {
            anyhow::anyhow!("out of memory in {what} at a batch of {rows} examples × {len} tokens on {on}: lower {lower}")
        } else {
            anyhow::anyhow!("{what} failed at a batch of {rows} examples × {len} tokens on {on}: {}", self.message)
        }
    }
}

/// Runs `f` on a batch of `rows` × `len` on `device`, turning a libtorch error into a
/// [`BatchError`].
pub fn guard<T>(rows: usize, len: usize, device: Device, f: impl FnOnce() -> T) -> Result<T, BatchError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| BatchError {
        rows,
        len,
        device,
        message: e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // clippy.toml's allow-unwrap-in-tests misses some of these tests
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn an_allocation_that_cannot_succeed_is_out_of_memory() {
        // 2^50 floats: more than any address space, so it fails whatever the overcommit policy.
        let e = guard(4096, 512, Device::Cpu, || Tensor::empty([1i64 << 50], (Kind::Float, Device::Cpu))).unwrap_err();
        assert!(e.out_of_memory(), "libtorch said: {}", e.message);
        let msg = e.explain("training", "train.batch_size").to_string();
        assert!(msg.starts_with("out of memory in training at a batch of 4096 examples × 512 tokens on cpu"), "{msg}");
        assert!(msg.ends_with("lower train.batch_size"), "{msg}");
    }

    #[test]
    fn other_libtorch_errors_keep_their_message() {
        let a = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        let e = guard(2, 3, Device::Cpu, || a.matmul(&a)).unwrap_err();
        assert!(!e.out_of_memory());
        let msg = e.explain("evaluation", "evaluate.batch_size").to_string();
        assert!(msg.starts_with("evaluation failed at a batch of 2 examples × 3 tokens on cpu"), "{msg}");
        assert!(msg.contains("cannot be multiplied"), "{msg}");
    }
}
