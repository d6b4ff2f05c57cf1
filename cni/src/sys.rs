//! The one place this crate needs `unsafe`: `setns(2)` and `flock(2)`, which libc exposes only
//! as raw calls (std's `File::try_lock` is newer than the workspace's minimum Rust).
//!
//! A network namespace belongs to a thread. The plugin binaries are single-threaded and never
//! run an async runtime, so entering the pod's namespace for a moment (to open a netlink socket
//! there, which stays bound to that namespace) and coming back is safe; the guard restores the
//! original namespace before anything else runs.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor, which `BorrowedFd` keeps open for the call;
    // CLONE_NEWNET limits it to the network namespace of the calling thread.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Returns the thread to its namespace when dropped, also when `f` panics.
struct Return(File);

impl Drop for Return {
    fn drop(&mut self) {
        if setns(std::os::fd::AsFd::as_fd(&self.0)).is_err() {
            // Carrying on in the wrong namespace would touch the pod's interfaces as if they
            // were the host's.
            eprintln!("reef-cni: cannot return to the original network namespace; aborting");
            std::process::abort();
        }
    }
}

/// Runs `f` with the calling thread inside the network namespace `target`, then returns to
/// the namespace it came from (the process aborts if it cannot).
pub fn in_netns<T>(target: &File, f: impl FnOnce() -> T) -> io::Result<T> {
    let home = File::open("/proc/thread-self/ns/net")?;
    setns(std::os::fd::AsFd::as_fd(target))?;
    let _back = Return(home);
    Ok(f())
}

/// Tries to take an exclusive `flock(2)` on `file` without waiting: `Ok(false)` when another
/// open file description holds it. The lock goes when the file is closed.
pub fn try_flock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}
