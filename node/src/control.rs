//! The agent's control socket: `reef status` and `reef routes` connect, send one request line
//! and read one JSON answer. A unix socket (mode 0600), so only root on the node can ask.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent::snapshot::Snapshot;

/// The one request the socket answers: the agent's current snapshot.
const REQUEST: &str = "snapshot";

/// Listens on `path` (replacing a stale socket of a previous run) and answers with the latest
/// snapshot.
pub async fn serve(path: PathBuf, snap: watch::Receiver<Snapshot>) -> Result<JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    set_private(&path)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let snap = snap.borrow().clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &snap).await {
                    tracing::debug!(error = %e, "control socket client");
                }
            });
        }
    }))
}

async fn answer(stream: UnixStream, snap: &Snapshot) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let reply = if line.trim() == REQUEST {
        serde_json::to_string(snap)?
    } else {
        serde_json::json!({ "error": format!("unknown request {:?}; send \"{REQUEST}\"", line.trim()) })
            .to_string()
    };
    w.write_all(reply.as_bytes()).await?;
    w.write_all(b"\n").await?;
    Ok(())
}

fn set_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))
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
