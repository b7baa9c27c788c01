//! The CUDA backend: NCCL, the libnccl.so.2 that libtorch_cuda itself loads (the torch wheel's
//! `nvidia/nccl`), reached through its C API with `dlopen` (no CUDA headers at build time).
//! Collectives run on the legacy default stream, the one tch's kernels run on, so they are
//! ordered after the backward pass that made the gradients without a host sync; each call then
//! waits for the stream, aborting the communicator when the group's timeout passes (a peer that
//! died or hung never completes its side of the ring).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::dl::Library;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId(pub [u8; 128]);

type GetUniqueId = unsafe extern "C" fn(*mut UniqueId) -> c_int;
type CommInitRank = unsafe extern "C" fn(*mut *mut c_void, c_int, UniqueId, c_int) -> c_int;
type AllReduce = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, *mut c_void, *mut c_void) -> c_int;
type Broadcast = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, *mut c_void, *mut c_void) -> c_int;
type CommAsyncError = unsafe extern "C" fn(*mut c_void, *mut c_int) -> c_int;
type CommFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type ErrorString = unsafe extern "C" fn(c_int) -> *const c_char;
type SetDevice = unsafe extern "C" fn(c_int) -> c_int;
type StreamQuery = unsafe extern "C" fn(*mut c_void) -> c_int;

const NCCL_UINT8: c_int = 1;
const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;
const NCCL_IN_PROGRESS: c_int = 7;
const CUDA_ERROR_NOT_READY: c_int = 600;

struct Api {
    get_unique_id: GetUniqueId,
    init_rank: CommInitRank,
    all_reduce: AllReduce,
    broadcast: Broadcast,
    async_error: CommAsyncError,
    abort: CommFn,
    destroy: CommFn,
    error_string: ErrorString,
    set_device: SetDevice,
    stream_query: StreamQuery,
}

/// Opens a library by soname (already loaded with libtorch_cuda), else from the torch wheel's
/// `nvidia/` directory beside torch's `lib/`.
fn open(soname: &str, wheel_dir: &str) -> anyhow::Result<Library> {
    let mut tried = vec![soname.to_string()];
    if let Some(lib) = option_env!("FT_LIBTORCH_LIB") {
        tried.push(format!("{lib}/../../nvidia/{wheel_dir}/{soname}"));
    }
    let mut why = Vec::new();
    for path in &tried {
        match Library::open(path, libc::RTLD_NOW | libc::RTLD_LOCAL) {
            Ok(l) => return Ok(l),
            Err(e) => why.push(e.to_string()),
        }
    }
    bail!("cannot load {soname} ({}): the NCCL backend needs libtorch's CUDA build (the torch wheel ships it)", why.join("; "))
}

fn load() -> anyhow::Result<Api> {
    let nccl = open("libnccl.so.2", "nccl/lib")?;
    let cudart = open("libcudart.so.13", "cu13/lib").or_else(|_| open("libcudart.so.12", "cuda_runtime/lib"))?;
    let n = |name| nccl.sym(name);
    let c = |name| cudart.sym(name);
    // SAFETY: the symbols are NCCL's and the CUDA runtime's C functions with these signatures
    // (nccl.h 2.x, cuda_runtime_api.h).
    unsafe {
        Ok(Api {
            get_unique_id: std::mem::transmute::<*mut c_void, GetUniqueId>(n("ncclGetUniqueId")?),
            init_rank: std::mem::transmute::<*mut c_void, CommInitRank>(n("ncclCommInitRank")?),
            all_reduce: std::mem::transmute::<*mut c_void, AllReduce>(n("ncclAllReduce")?),
            broadcast: std::mem::transmute::<*mut c_void, Broadcast>(n("ncclBroadcast")?),
            async_error: std::mem::transmute::<*mut c_void, CommAsyncError>(n("ncclCommGetAsyncError")?),
            abort: std::mem::transmute::<*mut c_void, CommFn>(n("ncclCommAbort")?),
            destroy: std::mem::transmute::<*mut c_void, CommFn>(n("ncclCommDestroy")?),
            error_string: std::mem::transmute::<*mut c_void, ErrorString>(n("ncclGetErrorString")?),
            set_device: std::mem::transmute::<*mut c_void, SetDevice>(c("cudaSetDevice")?),
            stream_query: std::mem::transmute::<*mut c_void, StreamQuery>(c("cudaStreamQuery")?),
        })
    }
}

/// A communicator over the ranks' GPUs.
pub struct Nccl {
    api: Api,
    comm: *mut c_void,
    /// This rank's CUDA device index.
    pub device: usize,
    timeout: Duration,
    aborted: bool,
}

// Used from one thread at a time (the training loop's).
unsafe impl Send for Nccl {}

impl Nccl {
    fn explain(&self, rc: c_int) -> String {
        // SAFETY: NCCL returns a static string for any result code.
        let s = unsafe { (self.api.error_string)(rc) };
        if s.is_null() {
            format!("NCCL error {rc}")
        } else {
            // SAFETY: see above.
            unsafe { CStr::from_ptr(s) }.to_string_lossy().to_string()
        }
    }

    /// A fresh unique id (rank 0 makes it; the others receive it through the store).
    pub fn unique_id() -> anyhow::Result<UniqueId> {
        let api = load()?;
        let mut id = UniqueId([0; 128]);
        // SAFETY: `id` is valid for a write of its 128 bytes.
        let rc = unsafe { (api.get_unique_id)(&mut id) };
        if rc != 0 {
            bail!("ncclGetUniqueId failed with code {rc}");
        }
        Ok(id)
    }

    /// Joins the communicator `id` as `rank` of `size` on CUDA device `device`.
    pub fn connect(id: UniqueId, rank: usize, size: usize, device: usize, timeout: Duration) -> anyhow::Result<Nccl> {
        let api = load()?;
        let dev = c_int::try_from(device).context("device index")?;
        // SAFETY: plain CUDA runtime call.
        let rc = unsafe { (api.set_device)(dev) };
        if rc != 0 {
            bail!("cudaSetDevice({device}) failed with CUDA error {rc}");
        }
        let mut comm = std::ptr::null_mut();
        let (r, s) = (c_int::try_from(rank).context("rank")?, c_int::try_from(size).context("world size")?);
        // SAFETY: `comm` is valid for a write; the id is passed by value as NCCL takes it.
        let rc = unsafe { (api.init_rank)(&mut comm, s, id, r) };
        let n = Nccl { api, comm, device, timeout, aborted: false };
        if rc != 0 {
            bail!("ncclCommInitRank (rank {rank} of {size}, cuda:{device}): {}", n.explain(rc));
        }
        Ok(n)
    }

    /// Waits for the default stream (the collective just queued and what preceded it), polling
    /// the communicator for asynchronous errors; aborts it past the timeout.
    fn finish(&mut self, what: &str, rc: c_int) -> anyhow::Result<()> {
        if rc != 0 && rc != NCCL_IN_PROGRESS {
            bail!("{what}: {}", self.explain(rc));
        }
        let start = Instant::now();
        loop {
            // SAFETY: querying the legacy default stream.
            match unsafe { (self.api.stream_query)(std::ptr::null_mut()) } {
                0 => return Ok(()),
                CUDA_ERROR_NOT_READY => {}
                e => bail!("{what}: CUDA error {e} while waiting for the stream"),
            }
            let mut state: c_int = 0;
            // SAFETY: the communicator is alive; `state` is valid for a write.
            unsafe { (self.api.async_error)(self.comm, &mut state) };
            if state != 0 && state != NCCL_IN_PROGRESS {
                bail!("{what}: {}", self.explain(state));
            }
            if start.elapsed() > self.timeout {
                // SAFETY: aborting a live communicator once; it is not used again.
                unsafe { (self.api.abort)(self.comm) };
                self.aborted = true;
                bail!("{what} did not complete within {:?}: a rank died or hung", self.timeout);
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Sums a contiguous fp32 tensor on this rank's device across the ranks, in place (the
    /// caller checks contiguity, kind and device).
    pub fn all_reduce_sum(&mut self, t: &tch::Tensor) -> anyhow::Result<()> {
        let (ptr, n) = (t.data_ptr(), t.numel());
        // SAFETY: `ptr` holds `n` fp32 values on this rank's device (the caller's tensor).
        let rc = unsafe { (self.api.all_reduce)(ptr, ptr, n, NCCL_FLOAT32, NCCL_SUM, self.comm, std::ptr::null_mut()) };
        self.finish("NCCL all-reduce", rc)
    }

    /// Broadcasts a contiguous tensor on this rank's device from `root`, in place.
    pub fn broadcast(&mut self, t: &tch::Tensor, root: usize) -> anyhow::Result<()> {
        let (ptr, n) = (t.data_ptr(), t.numel() * t.kind().elt_size_in_bytes());
        let root = c_int::try_from(root).context("root rank")?;
        // SAFETY: `ptr` holds `n` bytes on this rank's device.
        let rc = unsafe { (self.api.broadcast)(ptr, ptr, n, NCCL_UINT8, root, self.comm, std::ptr::null_mut()) };
        self.finish("NCCL broadcast", rc)
    }
}

impl Nccl {
    /// Tears the communicator down without waiting for the peers (after a failure, when
    /// `ncclCommDestroy` could wait on a dead rank forever).
    pub fn abort(mut self) {
        if !self.aborted && !self.comm.is_null() {
            // SAFETY: a live communicator, aborted once; Drop then leaves it alone.
            unsafe { (self.api.abort)(self.comm) };
            self.aborted = true;
        }
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        if !self.aborted && !self.comm.is_null() {
            // SAFETY: a live communicator, destroyed once.
            unsafe { (self.api.destroy)(self.comm) };
        }
    }
}
