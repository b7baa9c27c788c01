//! Collectives for data-parallel training, on existing engines rather than written here: Gloo
//! (Debian's libgloo-dev) for CPU tensors and NCCL (the torch wheel's libnccl) for CUDA ones,
//! with c10d's TCPStore (libtorch_cpu) as the rendezvous store, served by rank 0 at
//! `MASTER_ADDR:MASTER_PORT` as under `torchrun`.
//!
//! [`Launch::from_env`] reads where this process stands (torchrun's or Slurm's variables);
//! [`Group::join`] connects the ranks. A [`Group`] sums and broadcasts tensors (Gloo or NCCL)
//! and exchanges small byte messages through the store. Every operation fails after the
//! group's timeout; a failure names the ranks that did not report one themselves (those that
//! died or hung) — see [`Group`].

mod dl;
pub mod gloo;
pub mod nccl;
pub mod store;

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tch::{Device, Tensor};

pub use store::Store;

/// Where this process stands among the ranks of a data-parallel run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world_size: usize,
    /// Rank among the processes on this machine (its GPU on CUDA).
    pub local_rank: usize,
    pub local_world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// How the ranks were started: `ft` (`cargo xtask run --nproc-per-node`), `torchrun`,
    /// `slurm`, or `env` (the variables set some other way).
    pub launcher: String,
}

fn number<T: std::str::FromStr>(get: &impl Fn(&str) -> Option<String>, name: &str) -> anyhow::Result<Option<T>> {
    match get(name) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| anyhow::anyhow!("environment variable {name}={v:?} is not a number")),
    }
}

/// The leading count of Slurm's `SLURM_NTASKS_PER_NODE` / `SLURM_TASKS_PER_NODE` (`2`, `2(x3)`).
fn slurm_per_node(v: &str) -> Option<usize> {
    let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl Launch {
    /// From torchrun's variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
    /// `MASTER_ADDR`, `MASTER_PORT`), else Slurm's (`SLURM_PROCID`, `SLURM_NTASKS`,
    /// `SLURM_LOCALID`, `SLURM_NTASKS_PER_NODE`, with `MASTER_ADDR` from the job script);
    /// `None` when neither says there is more than this process.
    pub fn from_env() -> anyhow::Result<Option<Launch>> {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Launch>> {
        let torchrun = get("WORLD_SIZE").is_some() || get("RANK").is_some();
        let (rank, world, local, local_world, launcher) = if torchrun {
            let world: usize = number(&get, "WORLD_SIZE")?.context("RANK is set but WORLD_SIZE is not: set both (torchrun sets both)")?;
            let rank: usize = number(&get, "RANK")?.context("WORLD_SIZE is set but RANK is not: set both (torchrun sets both)")?;
            let local = number(&get, "LOCAL_RANK")?.unwrap_or(rank);
            let local_world = number(&get, "LOCAL_WORLD_SIZE")?.unwrap_or(world);
            let launcher = match (get("FT_LAUNCHER"), get("TORCHELASTIC_RUN_ID")) {
                (Some(l), _) => l,
                (None, Some(_)) => "torchrun".to_string(),
                (None, None) => "env".to_string(),
            };
            (rank, world, local, local_world, launcher)
        } else if let Some(world) = number::<usize>(&get, "SLURM_NTASKS")?.filter(|&n| n > 1) {
            let rank: usize = number(&get, "SLURM_PROCID")?.context("SLURM_NTASKS is set but SLURM_PROCID is not (run the ranks with srun)")?;
            let local = number(&get, "SLURM_LOCALID")?.unwrap_or(0);
            let per_node = get("SLURM_NTASKS_PER_NODE").or_else(|| get("SLURM_TASKS_PER_NODE")).and_then(|v| slurm_per_node(&v)).unwrap_or(1);
            (rank, world, local, per_node, "slurm".to_string())
        } else {
            return Ok(None);
        };
        if world == 0 || rank >= world {
            bail!("rank {rank} of a world of {world}: RANK must be below WORLD_SIZE");
        }
        if local >= local_world.max(1) {
            bail!("local rank {local} of {local_world} on this machine: LOCAL_RANK must be below LOCAL_WORLD_SIZE");
        }
        let master_addr = match get("MASTER_ADDR") {
            Some(a) => a,
            None if world == 1 => "127.0.0.1".to_string(),
            None => bail!(
                "{world} ranks but MASTER_ADDR is not set: set it to the address of the machine running rank 0 (torchrun sets it; under Slurm, export it in the job script)"
            ),
        };
        let master_port = number(&get, "MASTER_PORT")?.unwrap_or(29500);
        Ok(Some(Launch { rank, world_size: world, local_rank: local, local_world_size: local_world.max(1), master_addr, master_port, launcher }))
    }

    /// The address this rank's Gloo listens on: the interface `GLOO_SOCKET_IFNAME` names, else
    /// loopback when rank 0 is on loopback, else this machine's hostname.
    fn listen_address(&self) -> (String, Option<String>) {
        if let Ok(iface) = std::env::var("GLOO_SOCKET_IFNAME") {
            return (String::new(), Some(iface));
        }
        let a = self.master_addr.as_str();
        if a == "localhost" || a.starts_with("127.") || a == "::1" {
            return ("127.0.0.1".into(), None);
        }
        (hostname(), None)
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "localhost".into();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// The engine that moves tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Gloo over TCP, for CPU tensors.
    Gloo,
    /// NCCL, for CUDA tensors.
    Nccl,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }

    /// The backend for tensors on `device`.
    pub fn for_device(device: Device) -> Backend {
        match device {
            Device::Cuda(_) => Backend::Nccl,
            _ => Backend::Gloo,
        }
    }
}

enum Comm {
    Gloo(gloo::Gloo),
    Nccl(nccl::Nccl),
}

/// The connected ranks. Operations are collective: every rank makes the same calls in the same
/// order. When one fails (a peer's connection closed, or the timeout passed), this rank marks
/// itself failed in the store and closes its connections, so that the ranks waiting on it fail
/// at once instead of at their timeout; then it waits a moment for the others to mark
/// themselves and names those that did not: they died or hung.
pub struct Group {
    pub launch: Launch,
    pub backend: Backend,
    pub timeout: Duration,
    store: Store,
    /// `None` once an operation failed.
    comm: RefCell<Option<Comm>>,
    /// Messages exchanged through the store so far (their keys' sequence number).
    seq: Cell<u64>,
}

impl Group {
    /// Connects this rank to the others: the store first (rank 0 serves it), then the backend.
    /// `device` is this rank's CUDA device for NCCL.
    pub fn join(launch: &Launch, backend: Backend, timeout: Duration, device: Device) -> anyhow::Result<Group> {
        let l = launch;
        let store = Store::connect(&l.master_addr, l.master_port, l.rank == 0, l.world_size, timeout)
            .with_context(|| format!("rank {} of {}: joining the rendezvous (MASTER_ADDR, MASTER_PORT)", l.rank, l.world_size))?;
        let comm = match backend {
            Backend::Gloo => {
                let (host, iface) = l.listen_address();
                Comm::Gloo(gloo::Gloo::connect(&store, l.rank, l.world_size, &host, iface.as_deref(), timeout).with_context(|| format!("rank {} of {}", l.rank, l.world_size))?)
            }
            Backend::Nccl => {
                let Device::Cuda(index) = device else { bail!("the NCCL backend needs a CUDA device (this rank has {device:?}); use distributed.backend: cpu") };
                let id = if l.rank == 0 {
                    let id = nccl::Nccl::unique_id()?;
                    store.set("nccl/id", &id.0)?;
                    id
                } else {
                    let bytes = store.get("nccl/id")?;
                    let arr: [u8; 128] = bytes.as_slice().try_into().map_err(|_| anyhow::anyhow!("the NCCL id in the store has {} bytes, not 128", bytes.len()))?;
                    nccl::UniqueId(arr)
                };
                Comm::Nccl(nccl::Nccl::connect(id, l.rank, l.world_size, index, timeout)?)
            }
        };
        Ok(Group { launch: l.clone(), backend, timeout, store, comm: RefCell::new(Some(comm)), seq: Cell::new(0) })
    }

    pub fn rank(&self) -> usize {
        self.launch.rank
    }

    pub fn size(&self) -> usize {
        self.launch.world_size
    }

    fn next(&self) -> u64 {
        let s = self.seq.get();
        self.seq.set(s + 1);
        s
    }

    /// Explains a failed operation: which ranks did not report a failure of their own.
    fn failed(&self, op: &str, cause: anyhow::Error) -> anyhow::Error {
        let (me, n) = (self.rank(), self.size());
        let head = format!("{op} failed on rank {me} of {n} ({})", self.backend.name());
        let marked = self.store.set(&format!("failed/{me}"), op.as_bytes());
        match self.comm.borrow_mut().take() {
            Some(Comm::Nccl(c)) => c.abort(),
            Some(Comm::Gloo(g)) => drop(g),
            None => {}
        }
        let store_gone = || {
            format!(
                "{head}: rank 0, which serves the rendezvous store at {}, is gone (it died, failed or was stopped; see its output)",
                self.store.address
            )
        };
        if marked.is_err() {
            return cause.context(store_gone());
        }
        let (silent, gone) = self.unreported(Duration::from_secs(3));
        if gone && silent.contains(&0) {
            return cause.context(store_gone());
        }
        let list: Vec<String> = silent.iter().map(|r| r.to_string()).collect();
        let mut text = if silent.is_empty() {
            format!("{head}; every rank reports a failure")
        } else {
            format!("{head}: rank {} stopped answering (died or hung; see its output)", list.join(", "))
        };
        if gone {
            // Rank 0 closes the store once it has explained its own failure.
            text.push_str("; rank 0 reported its failure and has since closed the rendezvous store");
        }
        cause.context(text)
    }

    /// Waits up to `grace` for every other rank to mark itself failed in the store. Returns
    /// the ranks not seen marked, and whether the store went away meanwhile (which ends the
    /// wait; a rank seen marked before stays counted).
    fn unreported(&self, grace: Duration) -> (Vec<usize>, bool) {
        let me = self.rank();
        let mut seen: Vec<bool> = (0..self.size()).map(|r| r == me).collect();
        let deadline = Instant::now() + grace;
        loop {
            for (r, s) in seen.iter_mut().enumerate().filter(|(_, s)| !**s) {
                match self.store.check(&format!("failed/{r}")) {
                    Ok(marked) => *s = marked,
                    Err(_) => return (Self::unseen(&seen), true),
                }
            }
            if seen.iter().all(|&s| s) || Instant::now() > deadline {
                return (Self::unseen(&seen), false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn unseen(seen: &[bool]) -> Vec<usize> {
        seen.iter().enumerate().filter(|(_, &s)| !s).map(|(r, _)| r).collect()
    }

    fn checked(t: &Tensor, what: &str, device: Device) -> anyhow::Result<()> {
        if !t.is_contiguous() {
            bail!("{what}: the tensor is not contiguous");
        }
        if t.device() != device {
            bail!("{what}: the tensor is on {:?}, the group's backend wants {device:?}", t.device());
        }
        Ok(())
    }

    fn device(&self) -> Device {
        match self.comm.borrow().as_ref() {
            Some(Comm::Nccl(n)) => Device::Cuda(n.device),
            _ => Device::Cpu,
        }
    }

    /// Runs `f` on the backend, explaining a failure (see [`Group`]).
    fn with_comm(&self, op: &str, f: impl FnOnce(&mut Comm) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let r = match self.comm.borrow_mut().as_mut() {
            Some(c) => f(c),
            None => return Err(anyhow::anyhow!("{op}: an earlier operation of this group failed (see above)")),
        };
        r.map_err(|e| self.failed(op, e))
    }

    /// Sums an fp32 tensor across the ranks, in place.
    pub fn all_reduce_sum(&self, t: &Tensor) -> anyhow::Result<()> {
        Self::checked(t, "all-reduce", self.device())?;
        if t.kind() != tch::Kind::Float {
            bail!("all-reduce: the tensor is {:?}, fp32 expected", t.kind());
        }
        let n = t.numel();
        self.with_comm("all-reduce", |c| match c {
            // SAFETY: a contiguous fp32 CPU tensor of `n` elements, not used elsewhere meanwhile.
            Comm::Gloo(g) => g.all_reduce_sum(unsafe { std::slice::from_raw_parts_mut(t.data_ptr().cast::<f32>(), n) }),
            Comm::Nccl(c) => c.all_reduce_sum(t),
        })
    }

    /// Copies rank `root`'s tensor into every rank's (same shape and kind), in place.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> anyhow::Result<()> {
        Self::checked(t, "broadcast", self.device())?;
        let bytes = t.numel() * t.kind().elt_size_in_bytes();
        self.with_comm("broadcast", |c| match c {
            // SAFETY: a contiguous CPU tensor of `bytes` bytes, not used elsewhere meanwhile.
            Comm::Gloo(g) => g.broadcast(unsafe { std::slice::from_raw_parts_mut(t.data_ptr().cast::<u8>(), bytes) }, root),
            Comm::Nccl(c) => c.broadcast(t, root),
        })
    }

    /// Waits until every rank gets here.
    pub fn barrier(&self) -> anyhow::Result<()> {
        if self.backend == Backend::Nccl {
            let one = Tensor::ones([1], (tch::Kind::Float, self.device()));
            return self.all_reduce_sum(&one);
        }
        self.with_comm("barrier", |c| match c {
            Comm::Gloo(g) => g.barrier(),
            Comm::Nccl(_) => Ok(()),
        })
    }

    /// Rank 0's bytes, on every rank (`mine` is read on rank 0 only), through the store.
    pub fn broadcast_bytes(&self, mine: &[u8]) -> anyhow::Result<Vec<u8>> {
        let key = format!("bcast/{}", self.next());
        if self.rank() == 0 {
            self.store.set(&key, mine).map_err(|e| self.failed("sending a message", e))?;
            return Ok(mine.to_vec());
        }
        self.store.get(&key).map_err(|e| self.failed("receiving a message from rank 0", e))
    }

    /// Every rank's bytes, in rank order, on every rank, through the store.
    pub fn all_gather_bytes(&self, mine: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
        let seq = self.next();
        self.store.set(&format!("gather/{seq}/{}", self.rank()), mine).map_err(|e| self.failed("gathering", e))?;
        (0..self.size())
            .map(|r| if r == self.rank() { Ok(mine.to_vec()) } else { self.store.get(&format!("gather/{seq}/{r}")) })
            .collect::<anyhow::Result<_>>()
            .map_err(|e| self.failed("gathering", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: std::collections::BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn launches_are_read_from_torchrun_and_slurm_variables() -> anyhow::Result<()> {
        assert_eq!(Launch::from_vars(vars(&[]))?, None);
        let t = Launch::from_vars(vars(&[("RANK", "3"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2"), ("MASTER_ADDR", "node0"), ("MASTER_PORT", "29400"), ("TORCHELASTIC_RUN_ID", "x")]))?;
        let t = t.context("torchrun launch")?;
        assert_eq!((t.rank, t.world_size, t.local_rank, t.local_world_size, t.master_port), (3, 4, 1, 2, 29400));
        assert_eq!((t.master_addr.as_str(), t.launcher.as_str()), ("node0", "torchrun"));
        let s = Launch::from_vars(vars(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "1"), ("SLURM_NTASKS_PER_NODE", "4(x2)"), ("MASTER_ADDR", "n1")]))?.context("slurm launch")?;
        assert_eq!((s.rank, s.world_size, s.local_rank, s.local_world_size, s.master_port, s.launcher.as_str()), (5, 8, 1, 4, 29500, "slurm"));
        // One Slurm task is not a distributed run.
        assert_eq!(Launch::from_vars(vars(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]))?, None);
        Ok(())
    }

    /// Every variable `from_vars` asks for is one the runner clears for its stage binaries.
    #[test]
    fn every_launch_variable_read_is_one_the_runner_clears() {
        let cases: [&[(&str, &str)]; 4] = [
            &[],
            &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")],
            &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), ("MASTER_ADDR", "h")],
            &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), ("SLURM_TASKS_PER_NODE", "2"), ("MASTER_ADDR", "h")],
        ];
        for case in cases {
            let asked = std::cell::RefCell::new(Vec::new());
            let known = vars(case);
            let _ = Launch::from_vars(|k| {
                asked.borrow_mut().push(k.to_string());
                known(k)
            });
            for k in asked.into_inner() {
                assert!(pipeline::LAUNCH_VARS.contains(&k.as_str()), "{k} is read by Launch::from_vars but not in pipeline::LAUNCH_VARS");
            }
        }
    }

    /// A group of `world` ranks on a store at `port` with no backend (only the store's part of
    /// failure reports is exercised).
    fn store_only(rank: usize, world: usize, port: u16) -> anyhow::Result<Group> {
        let launch = Launch { rank, world_size: world, local_rank: rank, local_world_size: world, master_addr: "127.0.0.1".into(), master_port: port, launcher: "env".into() };
        let store = Store::connect("127.0.0.1", port, rank == 0, world, Duration::from_secs(5))?;
        Ok(Group { launch, backend: Backend::Gloo, timeout: Duration::from_secs(5), store, comm: RefCell::new(None), seq: Cell::new(0) })
    }

    /// Rank 0 ends once it has explained its own failure, closing the store while the others
    /// may still wait for a silent rank: a rank seen reporting is not then named as silent.
    #[test]
    fn the_store_closing_after_rank_zero_reported_names_only_the_silent_rank() -> anyhow::Result<()> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let zero = store_only(0, 3, port)?;
        let one = store_only(1, 3, port)?;
        let e = format!("{:#}", zero.failed("all-reduce", anyhow::anyhow!("peer closed")));
        assert!(e.contains("rank 1, 2 stopped answering"), "{e}");
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(800));
            drop(zero);
        });
        let t0 = Instant::now();
        let e = format!("{:#}", one.failed("all-reduce", anyhow::anyhow!("peer closed")));
        closer.join().map_err(|_| anyhow::anyhow!("the closing thread panicked"))?;
        assert!(e.contains("rank 2 stopped answering") && e.contains("rank 0 reported its failure and has since closed the rendezvous store"), "{e}");
        assert!(t0.elapsed() < Duration::from_millis(2500), "the closed store did not end the wait: {:?}", t0.elapsed());
        // Once the store is gone, reporting a failure says so.
        let e = format!("{:#}", one.failed("broadcast", anyhow::anyhow!("peer closed")));
        assert!(e.contains(&format!("rank 0, which serves the rendezvous store at 127.0.0.1:{port}, is gone")), "{e}");
        Ok(())
    }

    #[test]
    fn a_launch_that_cannot_work_is_explained() {
        let err = |pairs: &[(&str, &str)]| Launch::from_vars(vars(pairs)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(&[("RANK", "0"), ("WORLD_SIZE", "2")]).contains("MASTER_ADDR is not set"));
        assert!(err(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]).contains("RANK must be below WORLD_SIZE"));
        assert!(err(&[("RANK", "0")]).contains("WORLD_SIZE is not"));
        assert!(err(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("RANK=\"x\" is not a number"));
    }
}
