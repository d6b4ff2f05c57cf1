//! Work inside another network namespace without moving a tokio worker there.
//!
//! A namespace belongs to an OS thread. Sockets keep the namespace they were created in, so a
//! short-lived std thread enters the namespace, creates the sockets (netlink, TUN, raw) and
//! hands them back; the runtime's workers never change namespace. `nix::sched::setns` is a
//! safe wrapper, so no unsafe code is needed here.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::Error;

/// Where `ip netns add NAME` puts a namespace.
pub fn named(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Runs `f` on a fresh OS thread inside the namespace at `path` and returns its result. The
/// thread ends afterwards, so nothing else ever runs in the wrong namespace.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let file = File::open(path).map_err(|e| Error::Netns {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let path_for_err = path.to_path_buf();
    std::thread::Builder::new()
        .name("reef-netns".into())
        .spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
                path: path_for_err,
                reason: format!("setns: {e}"),
            })?;
            Ok(f())
        })
        .map_err(|e| Error::Netns {
            path: path.to_path_buf(),
            reason: format!("spawn thread: {e}"),
        })?
        .join()
        .map_err(|_| Error::Netns {
            path: path.to_path_buf(),
            reason: "the namespace thread panicked".into(),
        })?
}

/// Runs `f` in the namespace at `path`, or on the calling thread when `path` is `None`.
pub fn maybe_in<T, F>(path: Option<&Path>, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match path {
        Some(p) => run_in(p, f),
        None => Ok(f()),
    }
}
