//! One attachment at a time: ADD, DEL and CHECK of the same container and interface hold an
//! exclusive lock on a file of their own for the whole command.
//!
//! The spec says runtimes must not run them concurrently, but when one does, an ADD racing a
//! DEL could leave the pod wired while its address was released (the DEL released after the
//! ADD allocated, but removed the veth before the ADD created it), and the address would be
//! handed out twice. Commands of different attachments never wait for each other.
//!
//! The file is `<lockDir>/<host veth name>.lock` (the veth name is a stable hash of container
//! id and interface name, so any id fits a file name). A successful DEL removes it while
//! still holding the lock; a command that was waiting on the removed file sees that the file
//! at the path is no longer the one it locked, and locks the new one.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::Error;

/// How long a command waits for the attachment's lock before answering "try again later".
pub const WAIT: Duration = Duration::from_secs(20);
/// How often a waiting command tries the lock again.
const POLL: Duration = Duration::from_millis(5);

/// The lock of one attachment; released when dropped.
#[derive(Debug)]
pub struct AttachmentLock {
    file: File,
    path: PathBuf,
}

impl AttachmentLock {
    /// Takes the lock of the attachment whose host veth is `host_name`, waiting up to `wait`.
    pub fn take(dir: &Path, host_name: &str, wait: Duration) -> Result<AttachmentLock, Error> {
        let io = |what: String| move |source| Error::Io { what, source };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("lock directory {}", dir.display())))?;
        let path = dir.join(format!("{host_name}.lock"));
        let deadline = Instant::now() + wait;
        loop {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(io(format!("lock file {}", path.display())))?;
            loop {
                if crate::sys::try_flock_exclusive(&file)
                    .map_err(io(format!("lock {}", path.display())))?
                {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(Error::TryAgainLater(format!(
                        "another ADD, DEL or CHECK of this container and interface has held {} for over {} s",
                        path.display(),
                        wait.as_secs()
                    )));
                }
                std::thread::sleep(POLL);
            }
            // A DEL that held the lock before us may have removed the file: then ours is
            // an orphan no one else will lock; take the one at the path now.
            let held = file
                .metadata()
                .map_err(io(format!("lock file {}", path.display())))?;
            match std::fs::metadata(&path) {
                Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => {
                    return Ok(AttachmentLock { file, path });
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("lock file {}", path.display()))(e)),
            }
        }
    }

    /// Removes the lock file (the attachment is gone) and releases the lock.
    pub fn remove(self) -> Result<(), Error> {
        let r = std::fs::remove_file(&self.path);
        drop(self.file);
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                what: format!("remove lock file {}", self.path.display()),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("reeft-lock-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_second_taker_waits_and_then_times_out_with_11() {
        let d = dir("wait");
        let a = AttachmentLock::take(&d, "reef0123456789a", WAIT).unwrap();
        // flock is per open file description: a second open in this process conflicts too.
        let t = Instant::now();
        let e =
            AttachmentLock::take(&d, "reef0123456789a", Duration::from_millis(100)).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert_eq!(e.code(), crate::ErrorCode::TryAgainLater, "{e}");
        assert!(e.to_string().contains("reef0123456789a.lock"), "{e}");
        // Another attachment does not wait.
        let other = AttachmentLock::take(&d, "reefaaaaaaaaaaa", Duration::ZERO).unwrap();
        drop(a);
        let b = AttachmentLock::take(&d, "reef0123456789a", Duration::ZERO).unwrap();
        b.remove().unwrap();
        assert!(!d.join("reef0123456789a.lock").exists());
        other.remove().unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_waiter_on_a_removed_file_takes_the_new_one() {
        let d = dir("removed");
        let a = AttachmentLock::take(&d, "reefbbbbbbbbbbb", WAIT).unwrap();
        let d2 = d.clone();
        let waiter = std::thread::spawn(move || {
            AttachmentLock::take(&d2, "reefbbbbbbbbbbb", Duration::from_secs(5)).unwrap()
        });
        std::thread::sleep(Duration::from_millis(50));
        a.remove().unwrap();
        let w = waiter.join().unwrap();
        // The waiter holds the file now at the path, so a third taker must wait.
        assert!(d.join("reefbbbbbbbbbbb.lock").exists());
        assert!(AttachmentLock::take(&d, "reefbbbbbbbbbbb", Duration::from_millis(20)).is_err());
        drop(w);
        let _ = std::fs::remove_dir_all(&d);
    }
}
