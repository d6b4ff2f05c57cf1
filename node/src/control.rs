//! The agent's control socket: `reef status` and `reef routes` connect, send one request line
//! and read one JSON answer. A unix socket that is mode 0600 from the moment it appears at its
//! path, so only root on the node can ask; served by the same bounded loop as HTTP (`bounded`).

pub mod bounded;

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::bounded::{Limits, Request};
use crate::agent::snapshot::Snapshot;

/// The one request the socket answers: the agent's current snapshot.
const REQUEST: &str = "snapshot";
/// Who may connect: root only.
const MODE: u32 = 0o600;
/// One short line in; the CLI waits 5 s for the answer.
const LIMITS: Limits = Limits {
    max_connections: 16,
    deadline: Duration::from_secs(5),
    max_request: 1024,
    terminators: &[b"\n"],
};

/// Listens on `path` (replacing a stale socket of a previous run) and answers with the latest
/// snapshot.
pub async fn serve(path: PathBuf, snap: watch::Receiver<Snapshot>) -> Result<JoinHandle<()>> {
    let listener = bind_private(&path, MODE)?;
    Ok(bounded::spawn("control", listener, LIMITS, move |req| {
        answer(req, &snap.borrow())
    }))
}

fn answer(req: Request<'_>, snap: &Snapshot) -> Vec<u8> {
    let line = match req {
        Request::Complete(line) => String::from_utf8_lossy(line),
        Request::TooLarge(_) => {
            let e = format!(
                "request longer than {} bytes; send \"{REQUEST}\"",
                LIMITS.max_request
            );
            return reply(&serde_json::json!({ "error": e }));
        }
    };
    let line = line.trim();
    if line == REQUEST {
        match serde_json::to_value(snap) {
            Ok(v) => reply(&v),
            Err(e) => reply(&serde_json::json!({ "error": format!("encoding the snapshot: {e}") })),
        }
    } else {
        reply(
            &serde_json::json!({ "error": format!("unknown request {line:?}; send \"{REQUEST}\"") }),
        )
    }
}

fn reply(v: &serde_json::Value) -> Vec<u8> {
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    out
}

/// Binds a unix socket at `path` that has `mode` from the moment it can be found there.
///
/// bind(2) creates the socket file with 0777 minus the umask, and the umask is per process, so
/// bind-then-chmod leaves a moment where anyone may connect, and setting the umask around bind
/// changes it for every thread. Instead: bind in a fresh directory only we can enter (0700),
/// chmod there, and rename(2) the socket into place, which also replaces a stale socket of an
/// earlier run atomically (no moment without a socket either).
fn bind_private(path: &Path, mode: u32) -> Result<UnixListener> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let name = path.file_name().ok_or_else(|| {
        anyhow!(
            "agentSocket {}: names a directory, not a socket file",
            path.display()
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    // A directory of that name is left from a killed agent that had our pid.
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let inner = tmp.join(name);
    let made = (|| {
        let listener =
            UnixListener::bind(&inner).with_context(|| format!("binding {}", inner.display()))?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", inner.display()))?;
        std::fs::rename(&inner, path)
            .with_context(|| format!("moving the socket to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    made
}

/// Asks the agent at `path` for its snapshot (blocking; for the CLI).
pub fn query(path: &Path) -> Result<Snapshot> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        anyhow::anyhow!(
            "the reef agent is not running on this node (cannot connect to {}: {e}); \
             start it with `reef node run`",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    writeln!(s, "{REQUEST}")?;
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line)?;
    serde_json::from_str(&line).with_context(|| format!("the agent answered {:?}", line.trim()))
}

#[cfg(test)]
mod security_tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;
    use std::time::Instant;

    /// Stats `path` as fast as it can until it appears; its mode at first sight.
    fn first_sight(path: PathBuf) -> std::thread::JoinHandle<Option<u32>> {
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if let Ok(m) = std::fs::symlink_metadata(&path) {
                    return Some(m.permissions().mode() & 0o7777);
                }
            }
            None
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn security_the_control_socket_is_private_from_the_moment_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        // bind-then-chmod shows 0777 minus the umask for a few microseconds: with a second
        // thread watching, some of 200 tries see it.
        for i in 0..200 {
            let path = dir.path().join(format!("run/agent{i}.sock"));
            let watcher = first_sight(path.clone());
            let l = bind_private(&path, MODE).unwrap();
            let seen = watcher.join().unwrap();
            assert_eq!(
                seen,
                Some(0o600),
                "try {i}: first seen as {:o} (0: never)",
                seen.unwrap_or(0)
            );
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert!(meta.file_type().is_socket());
            drop(l);
        }
        // Nothing left beside the sockets.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("run"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".sock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_socket_is_replaced_and_the_cli_gets_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        let snap = Snapshot {
            node: "n1".into(),
            ..Default::default()
        };
        let (_tx, rx) = watch::channel(snap);
        let task = serve(path.clone(), rx).await.unwrap();
        let got = tokio::task::spawn_blocking(move || query(&path))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.node, "n1");
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn security_a_long_request_gets_an_error_not_memory() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let (_tx, rx) = watch::channel(Snapshot::default());
        let task = serve(path.clone(), rx).await.unwrap();
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        // Writing may fail once the agent has closed; the answer is already there.
        let _ = s.write_all(&vec![b's'; 1 << 20]).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["error"],
            "request longer than 1024 bytes; send \"snapshot\""
        );
        task.abort();
    }
}
