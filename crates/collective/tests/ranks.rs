//! Collectives across real processes on 127.0.0.1 (Gloo, with c10d's TCPStore for
//! rendezvous). Each test starts its ranks as children running this same test binary, filtered
//! to the test's own name, with `FT_TEST_RANKS` set; the children do the rank's part and assert.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use collective::{Backend, Group, Launch};
use tch::{Device, Kind, Tensor};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// In a child: this rank's group, with `timeout`.
fn join(timeout: Duration) -> Group {
    let launch = Launch::from_env().unwrap().expect("the parent sets RANK and WORLD_SIZE");
    Group::join(&launch, Backend::Gloo, timeout, Device::Cpu).unwrap()
}

fn is_child() -> bool {
    std::env::var_os("FT_TEST_RANKS").is_some()
}

/// Starts `world` ranks of test `name`.
fn spawn(name: &str, world: usize) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|r| {
            Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--nocapture", "--test-threads=1"])
                .env("FT_TEST_RANKS", "1")
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// Each rank's exit success and its output.
fn wait(children: Vec<Child>) -> Vec<(bool, String)> {
    children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
        })
        .collect()
}

#[test]
fn all_reduce_sums_and_averages_and_broadcast_and_gather_agree_across_two_and_three_ranks() {
    if is_child() {
        let g = join(Duration::from_secs(30));
        let (r, n) = (g.rank() as f64, g.size() as f64);
        // Rank r holds [r+1, 10(r+1), -(r+1)/2, ...] over 1,000,003 values (more than one
        // Gloo segment, an odd length).
        let len = 1_000_003i64;
        let base = Tensor::arange(len, (Kind::Float, Device::Cpu)).remainder(7.0);
        let t = (&base + 1.0) * (r + 1.0);
        g.all_reduce_sum(&t).unwrap();
        let ranks_sum = n * (n + 1.0) / 2.0;
        let want = (&base + 1.0) * ranks_sum;
        assert_eq!(f64::try_from((&t - &want).abs().max()).unwrap(), 0.0, "sum");
        let mean = &t / n;
        let want_mean = (&base + 1.0) * (ranks_sum / n);
        assert!(f64::try_from((&mean - &want_mean).abs().max()).unwrap() < 1e-5, "average");
        let b = Tensor::full([5], r + 0.5, (Kind::Float, Device::Cpu));
        g.broadcast(&b, 1).unwrap();
        assert_eq!(Vec::<f32>::try_from(&b).unwrap(), vec![1.5f32; 5], "broadcast from rank 1");
        let gathered = g.all_gather_bytes(format!("rank {}", g.rank()).as_bytes()).unwrap();
        let want: Vec<Vec<u8>> = (0..g.size()).map(|i| format!("rank {i}").into_bytes()).collect();
        assert_eq!(gathered, want);
        let word = g.broadcast_bytes(if g.rank() == 0 { b"go" } else { b"" }).unwrap();
        assert_eq!(word, b"go");
        g.barrier().unwrap();
        return;
    }
    for world in [2, 3] {
        for (rank, (ok, out)) in wait(spawn("all_reduce_sums_and_averages_and_broadcast_and_gather_agree_across_two_and_three_ranks", world)).into_iter().enumerate() {
            assert!(ok, "rank {rank} of {world} failed:\n{out}");
        }
    }
}

#[test]
fn a_rank_that_dies_makes_the_others_fail_at_once_naming_it() {
    if is_child() {
        let g = join(Duration::from_secs(60));
        g.barrier().unwrap();
        if g.rank() == 2 {
            // Killed mid-run: no unwinding, no goodbye.
            std::process::abort();
        }
        let t0 = Instant::now();
        let t = Tensor::ones([1000], (Kind::Float, Device::Cpu));
        let e = format!("{:#}", g.all_reduce_sum(&t).unwrap_err());
        eprintln!("rank {} saw: {e}", g.rank());
        // Well before the 60 s timeout: the dead peer's sockets closed.
        assert!(t0.elapsed() < Duration::from_secs(20), "took {:?}", t0.elapsed());
        assert!(e.contains("rank 2 stopped answering") || (g.rank() != 0 && e.contains("rank 0, which serves")), "{e}");
        return;
    }
    let out = wait(spawn("a_rank_that_dies_makes_the_others_fail_at_once_naming_it", 3));
    assert!(!out[2].0, "the aborted rank cannot succeed");
    for (rank, (ok, text)) in out.iter().enumerate().take(2) {
        assert!(ok, "rank {rank} did not fail as expected:\n{text}");
        assert!(text.contains("failed on rank"), "rank {rank}:\n{text}");
    }
    assert!(out[0].1.contains("rank 2 stopped answering"), "{}", out[0].1);
    eprintln!("{}\n{}", out[0].1, out[1].1);
}

#[test]
fn a_rank_that_hangs_makes_the_others_fail_within_the_timeout_naming_it() {
    if is_child() {
        let timeout = Duration::from_secs(3);
        let g = join(timeout);
        g.barrier().unwrap();
        let t = Tensor::ones([10], (Kind::Float, Device::Cpu));
        if g.rank() == 1 {
            std::thread::sleep(Duration::from_secs(9));
            // By now the others gave up; this rank's own call ends within its timeout too.
            let t0 = Instant::now();
            let _ = g.all_reduce_sum(&t);
            assert!(t0.elapsed() < timeout + Duration::from_secs(5), "rank 1 hung on for {:?}", t0.elapsed());
            return;
        }
        let t0 = Instant::now();
        let e = format!("{:#}", g.all_reduce_sum(&t).unwrap_err());
        eprintln!("rank 0 saw: {e}");
        // The timeout, plus the moment given to the others to report.
        assert!(t0.elapsed() < timeout + Duration::from_secs(5), "took {:?}", t0.elapsed());
        assert!(e.contains("rank 1 stopped answering"), "{e}");
        // Stay up (serving the store) until rank 1 has woken and failed.
        std::thread::sleep(Duration::from_secs(7));
        return;
    }
    for (rank, (ok, out)) in wait(spawn("a_rank_that_hangs_makes_the_others_fail_within_the_timeout_naming_it", 2)).into_iter().enumerate() {
        assert!(ok, "rank {rank}:\n{out}");
    }
}

#[test]
fn rank_zero_gone_before_the_rendezvous_is_an_error_naming_the_address() {
    // A lone rank 1 whose rank 0 never comes: the store cannot be reached within the timeout.
    let port = free_port();
    let launch = Launch { rank: 1, world_size: 2, local_rank: 1, local_world_size: 2, master_addr: "127.0.0.1".into(), master_port: port, launcher: "env".into() };
    let t0 = Instant::now();
    let e = format!("{:#}", Group::join(&launch, Backend::Gloo, Duration::from_secs(2), Device::Cpu).err().unwrap());
    eprintln!("{e}");
    assert!(e.contains(&format!("127.0.0.1:{port}")) && e.contains("rank 1 of 2"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
}

#[test]
fn nccl_loads_from_the_torch_wheel_and_makes_a_communicator_id_without_a_gpu() {
    // Joining a communicator needs GPUs (bench/gpu/run.sh runs that); loading NCCL and the CUDA
    // runtime and making rank 0's unique id do not.
    let id = collective::nccl::Nccl::unique_id().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(id.0.iter().any(|&b| b != 0), "an all-zero NCCL id");
}
