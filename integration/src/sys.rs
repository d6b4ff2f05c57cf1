//! The one place in this crate that calls into libc directly: entering a network namespace.
//!
//! `setns(2)` moves only the calling OS thread, so callers run it on a thread of their own that
//! ends when the work is done; it is never called on a shared or async-runtime thread.
#![allow(unsafe_code)] // setns has no safe wrapper in std; the fd is owned and valid for the call.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Moves the calling thread into the network namespace opened as `ns`.
pub(crate) fn enter_netns(ns: &File) -> io::Result<()> {
    // SAFETY: `ns` is an open file for the duration of the call; setns does not keep the fd.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
