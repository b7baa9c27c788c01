//! The rendezvous store: c10d's TCPStore from libtorch_cpu (the one `torchrun` uses), through
//! `src/cpp/store.cc`. Rank 0 serves it at `MASTER_ADDR:MASTER_PORT`; every rank is a client.

use std::ffi::{c_char, c_int, c_void, CString};
use std::time::Duration;

use anyhow::bail;

const ERR_LEN: usize = 1024;

extern "C" {
    fn ft_store_new(host: *const c_char, port: u16, is_server: c_int, world: usize, timeout_ms: i64, err: *mut c_char, errlen: usize) -> *mut c_void;
    fn ft_store_free(s: *mut c_void);
    fn ft_store_set(s: *mut c_void, key: *const c_char, data: *const u8, len: usize, err: *mut c_char, errlen: usize) -> c_int;
    fn ft_store_get(s: *mut c_void, key: *const c_char, data: *mut *mut u8, len: *mut usize, err: *mut c_char, errlen: usize) -> c_int;
    fn ft_store_wait(s: *mut c_void, key: *const c_char, timeout_ms: i64, err: *mut c_char, errlen: usize) -> c_int;
    fn ft_store_check(s: *mut c_void, key: *const c_char, present: *mut c_int, err: *mut c_char, errlen: usize) -> c_int;
}

/// A message written by the C++ side into `buf`.
pub(crate) fn message(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).trim().to_string()
}

pub(crate) fn c_string(s: &str) -> anyhow::Result<CString> {
    CString::new(s).map_err(|_| anyhow::anyhow!("`{s}` holds a NUL byte"))
}

/// A client of the store (and, on rank 0, its server).
pub struct Store {
    ptr: *mut c_void,
    /// Where it is served, for messages.
    pub address: String,
}

// The C++ TCPStore client serializes its operations behind its own lock.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    /// Connects to the store at `host:port` (serving it when `server`), retrying until `timeout`.
    pub fn connect(host: &str, port: u16, server: bool, world: usize, timeout: Duration) -> anyhow::Result<Store> {
        let h = c_string(host)?;
        let mut err = [0 as c_char; ERR_LEN];
        // SAFETY: the strings outlive the call; the error buffer's length is passed.
        let ptr = unsafe { ft_store_new(h.as_ptr(), port, c_int::from(server), world, millis(timeout), err.as_mut_ptr(), ERR_LEN) };
        let address = format!("{host}:{port}");
        if ptr.is_null() {
            let what = if server { "serving" } else { "reaching" };
            bail!("{what} the rendezvous store at {address} failed: {}", message(&err));
        }
        Ok(Store { ptr, address })
    }

    fn call(&self, what: &str, key: &str, f: impl FnOnce(*mut c_void, *const c_char, *mut c_char) -> c_int) -> anyhow::Result<()> {
        let k = c_string(key)?;
        let mut err = [0 as c_char; ERR_LEN];
        if f(self.ptr, k.as_ptr(), err.as_mut_ptr()) != 0 {
            bail!("{what} `{key}` in the rendezvous store at {}: {}", self.address, message(&err));
        }
        Ok(())
    }

    pub fn set(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        // SAFETY: pointer and length describe `value`, the key and error buffer outlive the call.
        self.call("setting", key, |s, k, e| unsafe { ft_store_set(s, k, value.as_ptr(), value.len(), e, ERR_LEN) })
    }

    /// The value of `key`, waiting for it up to the store's timeout.
    pub fn get(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        let (mut data, mut len) = (std::ptr::null_mut::<u8>(), 0usize);
        // SAFETY: the out pointers are valid for writes; on success `data` holds `len` malloc'd bytes.
        self.call("reading", key, |s, k, e| unsafe { ft_store_get(s, k, &mut data, &mut len, e, ERR_LEN) })?;
        // SAFETY: see above; the bytes are copied, then freed with the allocator that made them.
        let out = unsafe { std::slice::from_raw_parts(data, len).to_vec() };
        unsafe { libc::free(data.cast()) };
        Ok(out)
    }

    /// Waits up to `timeout` for `key` to be set.
    pub fn wait(&self, key: &str, timeout: Duration) -> anyhow::Result<()> {
        // SAFETY: the key and error buffer outlive the call.
        self.call("waiting for", key, |s, k, e| unsafe { ft_store_wait(s, k, millis(timeout), e, ERR_LEN) })
    }

    /// Whether `key` is set, without waiting.
    pub fn check(&self, key: &str) -> anyhow::Result<bool> {
        let mut present: c_int = 0;
        // SAFETY: `present` is valid for a write; the key and error buffer outlive the call.
        self.call("looking up", key, |s, k, e| unsafe { ft_store_check(s, k, &mut present, e, ERR_LEN) })?;
        Ok(present != 0)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: made by ft_store_new, freed once.
        unsafe { ft_store_free(self.ptr) }
    }
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
