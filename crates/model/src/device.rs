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

/// What `cargo xtask doctor` prints.
pub fn doctor() -> serde_json::Value {
    serde_json::json!({
        "libtorch_lib": option_env!("FT_LIBTORCH_LIB").unwrap_or("(unknown)"),
        "cuda_available": tch::Cuda::is_available(),
        "cudnn_available": tch::Cuda::cudnn_is_available(),
        "cuda_devices": tch::Cuda::device_count(),
        "cpu_threads": tch::get_num_threads(),
    })
}
