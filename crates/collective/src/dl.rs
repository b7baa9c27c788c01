//! `dlopen` and `dlsym` for the backends loaded at run time (the Gloo shim, NCCL, the CUDA
//! runtime), with dlerror's reason in the error.

use std::ffi::{c_int, c_void, CStr};

use anyhow::bail;

use crate::store::c_string;

/// A library handle; the library stays loaded for the process's life.
pub(crate) struct Library {
    handle: *mut c_void,
    /// What it was opened as, for messages.
    name: String,
}

impl Library {
    /// Opens `path` (a path or a soname) with `flags` (`RTLD_*`).
    pub(crate) fn open(path: &str, flags: c_int) -> anyhow::Result<Library> {
        let c = c_string(path)?;
        // SAFETY: dlopen of a library by name or path; it is never closed.
        let handle = unsafe { libc::dlopen(c.as_ptr(), flags) };
        if handle.is_null() {
            // SAFETY: dlerror returns a NUL-terminated message or null.
            let why = unsafe { libc::dlerror() };
            let why = if why.is_null() { "unknown".into() } else { unsafe { CStr::from_ptr(why) }.to_string_lossy().to_string() };
            bail!("{why}");
        }
        Ok(Library { handle, name: path.to_string() })
    }

    /// The address of symbol `name`.
    pub(crate) fn sym(&self, name: &str) -> anyhow::Result<*mut c_void> {
        let n = c_string(name)?;
        // SAFETY: looking up a symbol of an open library.
        let p = unsafe { libc::dlsym(self.handle, n.as_ptr()) };
        if p.is_null() {
            bail!("{} lacks {name}", self.name);
        }
        Ok(p)
    }
}
