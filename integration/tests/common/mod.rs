//! What the containerd lab tests share: reef's image archive (built when stale) and CRI
//! container logs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use reef_integration::workspace_bin;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// What deploy/image/build.sh needs that this machine lacks (empty: it can build).
pub fn missing_build_tools() -> Vec<String> {
    let mut out = Vec::new();
    for f in [
        "/usr/sbin/nft",
        "/usr/lib/cni/portmap",
        "/usr/lib/cni/loopback",
    ] {
        if !Path::new(f).exists() {
            out.push(f.to_string());
        }
    }
    for tool in ["cargo", "strip", "file"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            out.push(format!("{tool} (not on PATH)"));
        }
    }
    out
}

/// reef's image archive, built when missing or older than the workspace's reef binaries;
/// `Err(why)` when this machine cannot build it. A build that starts and fails panics: that
/// is a broken image, not a missing tool.
pub fn reef_image_archive() -> Result<(PathBuf, Option<Duration>), String> {
    let root = workspace_root();
    let archive = root
        .join("target/image")
        .join(format!("reef-{}.tar", env!("CARGO_PKG_VERSION")));
    let newest_bin = ["reef", "reef-cni", "reef-ipam"]
        .iter()
        .filter_map(|b| workspace_bin(b).ok())
        .filter_map(|p| mtime(&p))
        .max();
    let fresh = match (mtime(&archive), newest_bin) {
        (Some(a), Some(b)) => a >= b,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if fresh {
        return Ok((archive, None));
    }
    let missing = missing_build_tools();
    if !missing.is_empty() {
        return Err(format!(
            "deploy/image/build.sh cannot run here: missing {}",
            missing.join(", ")
        ));
    }
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(root.join("deploy/image/build.sh"))
        .args(["--profile", "dev"])
        .current_dir(&root)
        .output()
        .map_err(|e| format!("running deploy/image/build.sh: {e}"))?;
    assert!(
        out.status.success(),
        "deploy/image/build.sh --profile dev failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        archive.is_file(),
        "build.sh succeeded but wrote no {}",
        archive.display()
    );
    Ok((archive, Some(started.elapsed())))
}

/// The last lines of a CRI container log (`TIMESTAMP STREAM TAG message` lines).
pub fn cri_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}
