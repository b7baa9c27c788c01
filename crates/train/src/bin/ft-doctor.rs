//! `ft-doctor`: what libtorch this build uses and whether CUDA and cuDNN work (run by
//! `cargo xtask doctor`).

fn main() {
    let d = model::device::doctor();
    let deps = artifact::parse_dependencies(env!("FT_DEPS"));
    let loaded = d.libtorch.library.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "not found in /proc/self/maps".into());
    println!("libtorch:       {} ({loaded})", d.libtorch.version);
    println!("built against:  {}", d.built_against);
    println!("tch:            {}", deps.get("tch").map(String::as_str).unwrap_or("?"));
    println!("CUDA available: {}", d.cuda_available);
    if d.cuda_available {
        let cuda = d.libtorch.cuda.as_deref().unwrap_or("? (libtorch's version.py does not say)");
        println!("CUDA runtime:   {cuda} (the version libtorch was built with and ships)");
        println!("cuDNN:          {}", d.cudnn_available);
        println!("CUDA devices:   {}", d.cuda_devices);
    }
    println!("CPU threads:    {}", d.cpu_threads);
    if d.cuda_available {
        let t = tch::Tensor::ones([2, 2], (tch::Kind::Float, tch::Device::Cuda(0)));
        println!("CUDA check:     2x2 ones sum = {}", t.sum(tch::Kind::Float).double_value(&[]));
    } else {
        println!("device:         CPU only");
    }
}
