//! `ft-doctor`: what libtorch this build uses and whether CUDA and cuDNN work (run by
//! `cargo xtask doctor`).

fn main() {
    let d = model::device::doctor();
    println!("libtorch:       {}", d["libtorch_lib"].as_str().unwrap_or("?"));
    println!("CUDA available: {}", d["cuda_available"]);
    println!("cuDNN:          {}", d["cudnn_available"]);
    println!("CUDA devices:   {}", d["cuda_devices"]);
    println!("CPU threads:    {}", d["cpu_threads"]);
    if d["cuda_available"].as_bool() == Some(true) {
        let t = tch::Tensor::ones([2, 2], (tch::Kind::Float, tch::Device::Cuda(0)));
        println!("CUDA check:     2x2 ones sum = {}", t.sum(tch::Kind::Float).double_value(&[]));
    } else {
        println!("device:         CPU only");
    }
}
