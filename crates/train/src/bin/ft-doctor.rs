//! `ft-doctor`: what libtorch this build uses and whether CUDA and cuDNN work (run by
//! `cargo xtask doctor`).

fn main() {
    let d = model::device::doctor();
    let deps = artifact::parse_dependencies(env!("FT_DEPS"));
    let s = |k: &str| d[k].as_str().unwrap_or("?").to_string();
    println!("libtorch:       {} ({})", s("libtorch_version"), s("libtorch_loaded"));
    println!("built against:  {}", s("libtorch_lib"));
    println!("tch:            {}", deps.get("tch").map(String::as_str).unwrap_or("?"));
    println!("CUDA available: {}", d["cuda_available"]);
    if d["cuda_available"].as_bool() == Some(true) {
        println!("CUDA runtime:   {} (the version libtorch was built with and ships)", s("libtorch_cuda_build"));
        println!("cuDNN:          {}", d["cudnn_available"]);
        println!("CUDA devices:   {}", d["cuda_devices"]);
    }
    println!("CPU threads:    {}", d["cpu_threads"]);
    if d["cuda_available"].as_bool() == Some(true) {
        let t = tch::Tensor::ones([2, 2], (tch::Kind::Float, tch::Device::Cuda(0)));
        println!("CUDA check:     2x2 ones sum = {}", t.sum(tch::Kind::Float).double_value(&[]));
    } else {
        println!("device:         CPU only");
    }
}
