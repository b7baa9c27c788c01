//! The CPU backend: Gloo from Debian's libgloo-dev, through `src/cpp/gloo.cc` built as
//! `libft_gloo.so`. It is loaded with `RTLD_DEEPBIND | RTLD_LOCAL`: libtorch_cpu exports its own,
//! newer Gloo under the same C++ names, and without deep binding the shim's calls (and
//! libgloo's own) would land in torch's copy, whose classes have another layout.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::store::{c_string, message, millis, Store};

const ERR_LEN: usize = 2048;

#[repr(C)]
struct Callbacks {
    user: *mut c_void,
    set: extern "C" fn(*mut c_void, *const c_char, *const u8, usize) -> c_int,
    get: extern "C" fn(*mut c_void, *const c_char, *mut *mut u8, *mut usize) -> c_int,
    wait: extern "C" fn(*mut c_void, *const c_char, i64) -> c_int,
}

type NewFn = unsafe extern "C" fn(c_int, c_int, i64, Callbacks, *const c_char, *const c_char, *mut c_char, usize) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type AllreduceFn = unsafe extern "C" fn(*mut c_void, *mut f32, usize, *mut c_char, usize) -> c_int;
type BroadcastFn = unsafe extern "C" fn(*mut c_void, *mut u8, usize, c_int, *mut c_char, usize) -> c_int;
type BarrierFn = unsafe extern "C" fn(*mut c_void, *mut c_char, usize) -> c_int;

/// The shim's entry points.
struct Shim {
    new: NewFn,
    free: FreeFn,
    allreduce: AllreduceFn,
    broadcast: BroadcastFn,
    barrier: BarrierFn,
}

fn key_of(key: *const c_char) -> String {
    // SAFETY: Gloo passes a NUL-terminated key.
    format!("gloo/{}", unsafe { CStr::from_ptr(key) }.to_string_lossy())
}

fn store_of<'a>(user: *mut c_void) -> &'a Store {
    // SAFETY: `user` is the Store passed to `Gloo::connect`, alive for the whole rendezvous.
    unsafe { &*(user as *const Store) }
}

extern "C" fn cb_set(user: *mut c_void, key: *const c_char, data: *const u8, len: usize) -> c_int {
    // SAFETY: Gloo passes `len` readable bytes at `data`.
    let value = unsafe { std::slice::from_raw_parts(data, len) };
    c_int::from(store_of(user).set(&key_of(key), value).is_err())
}

extern "C" fn cb_get(user: *mut c_void, key: *const c_char, data: *mut *mut u8, len: *mut usize) -> c_int {
    let Ok(value) = store_of(user).get(&key_of(key)) else { return 1 };
    // SAFETY: malloc'd here, freed by the shim; the out pointers are valid for writes.
    unsafe {
        let buf = libc::malloc(value.len().max(1)).cast::<u8>();
        if buf.is_null() {
            return 1;
        }
        std::ptr::copy_nonoverlapping(value.as_ptr(), buf, value.len());
        *data = buf;
        *len = value.len();
    }
    0
}

extern "C" fn cb_wait(user: *mut c_void, key: *const c_char, timeout_ms: i64) -> c_int {
    let timeout = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0));
    c_int::from(store_of(user).wait(&key_of(key), timeout).is_err())
}

/// Where the shim is: `FT_GLOO_SHIM` at run time, else where the build put it.
fn shim_path() -> String {
    std::env::var("FT_GLOO_SHIM").unwrap_or_else(|_| env!("FT_GLOO_SHIM").to_string())
}

fn load() -> anyhow::Result<Shim> {
    let path = shim_path();
    // RTLD_DEEPBIND keeps the shim's Gloo apart from torch's.
    let lib = crate::dl::Library::open(&path, libc::RTLD_NOW | libc::RTLD_LOCAL | libc::RTLD_DEEPBIND)
        .with_context(|| format!("loading the Gloo backend {path} (is libgloo-dev installed? `cargo xtask setup` installs it)"))?;
    let sym = |name: &str| lib.sym(name).context("rebuild it (cargo build)");
    // SAFETY: the symbols are the shim's extern "C" functions with these signatures.
    unsafe {
        Ok(Shim {
            new: std::mem::transmute::<*mut c_void, NewFn>(sym("ft_gloo_new")?),
            free: std::mem::transmute::<*mut c_void, FreeFn>(sym("ft_gloo_free")?),
            allreduce: std::mem::transmute::<*mut c_void, AllreduceFn>(sym("ft_gloo_allreduce_sum_f32")?),
            broadcast: std::mem::transmute::<*mut c_void, BroadcastFn>(sym("ft_gloo_broadcast")?),
            barrier: std::mem::transmute::<*mut c_void, BarrierFn>(sym("ft_gloo_barrier")?),
        })
    }
}

/// A connected Gloo context (a full TCP mesh between the ranks).
pub struct Gloo {
    shim: Shim,
    ctx: *mut c_void,
}

// Used from one thread at a time (the training loop's).
unsafe impl Send for Gloo {}

impl Gloo {
    /// Connects rank `rank` of `size` through `store`, listening on `host` (or on the network
    /// interface `iface`); every operation fails after `timeout`.
    pub fn connect(store: &Store, rank: usize, size: usize, host: &str, iface: Option<&str>, timeout: Duration) -> anyhow::Result<Gloo> {
        let shim = load()?;
        let (h, i) = (c_string(host)?, c_string(iface.unwrap_or(""))?);
        let cb = Callbacks { user: store as *const Store as *mut c_void, set: cb_set, get: cb_get, wait: cb_wait };
        let mut err = [0 as c_char; ERR_LEN];
        let (rank, size) = (c_int::try_from(rank).context("rank")?, c_int::try_from(size).context("world size")?);
        // SAFETY: the store outlives the call (the rendezvous finishes inside it).
        let ctx = unsafe { (shim.new)(rank, size, millis(timeout), cb, h.as_ptr(), i.as_ptr(), err.as_mut_ptr(), ERR_LEN) };
        if ctx.is_null() {
            bail!("connecting the Gloo mesh: {}", message(&err));
        }
        Ok(Gloo { shim, ctx })
    }

    fn check(rc: c_int, err: &[c_char]) -> anyhow::Result<()> {
        if rc != 0 {
            bail!("{}", message(err));
        }
        Ok(())
    }

    pub fn all_reduce_sum(&self, data: &mut [f32]) -> anyhow::Result<()> {
        let mut err = [0 as c_char; ERR_LEN];
        // SAFETY: `data` is valid for reads and writes of its length during the call.
        let rc = unsafe { (self.shim.allreduce)(self.ctx, data.as_mut_ptr(), data.len(), err.as_mut_ptr(), ERR_LEN) };
        Self::check(rc, &err)
    }

    pub fn broadcast(&self, data: &mut [u8], root: usize) -> anyhow::Result<()> {
        let mut err = [0 as c_char; ERR_LEN];
        let root = c_int::try_from(root).context("root rank")?;
        // SAFETY: as above.
        let rc = unsafe { (self.shim.broadcast)(self.ctx, data.as_mut_ptr(), data.len(), root, err.as_mut_ptr(), ERR_LEN) };
        Self::check(rc, &err)
    }

    pub fn barrier(&self) -> anyhow::Result<()> {
        let mut err = [0 as c_char; ERR_LEN];
        // SAFETY: the context is alive.
        let rc = unsafe { (self.shim.barrier)(self.ctx, err.as_mut_ptr(), ERR_LEN) };
        Self::check(rc, &err)
    }
}

impl Drop for Gloo {
    fn drop(&mut self) {
        // SAFETY: made by ft_gloo_new, freed once. The library stays loaded.
        unsafe { (self.shim.free)(self.ctx) }
    }
}
