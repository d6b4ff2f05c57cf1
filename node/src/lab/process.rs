//! Running programs for the lab (detached in a namespace, or checked), waiting on a condition,
//! and waiting for an agent's BGP sessions with its log in the error.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::status::snapshot_of;
use super::{LabNode, LabState, STATE};

/// The last lines of every agent's log, for an error message (the lab is torn down after it).
pub(super) fn log_tails(st: &LabState) -> String {
    let mut out = String::new();
    for n in &st.nodes {
        let log = std::fs::read_to_string(n.config.with_file_name("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        out.push_str(&format!("--- {} agent log (last lines):\n", n.name));
        for l in &lines[lines.len().saturating_sub(15)..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

pub(super) fn wait<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> Result<T> {
    wait_every(what, timeout, Duration::from_millis(200), f)
}

pub(super) fn wait_every<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if t0.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what} (agent logs in {STATE}/<node>/agent.log)");
        }
        std::thread::sleep(every);
    }
}

/// Waits until `n` has a session with every other node and the lab router; returns how many.
pub(super) fn wait_sessions(st: &LabState, n: &LabNode) -> Result<usize> {
    let want = st.nodes.len() - 1 + usize::from(st.router);
    wait(
        &format!("{}'s BGP sessions", n.name),
        Duration::from_secs(60),
        || {
            let s = snapshot_of(n).ok()?;
            (s.established() >= want).then_some(())
        },
    )
    .map_err(|e| anyhow!("{e}\n{}", log_tails(st)))?;
    Ok(want)
}

/// Starts `program args…` inside `ns` in its own session (it survives this command), output to
/// `log`; returns its pid (`ip netns exec` execs the program, so the pid is the program's).
pub(super) fn spawn_detached(ns: &str, program: &Path, args: &[&str], log: &Path) -> Result<u32> {
    // Appended to: a restarted agent keeps the log of its earlier run.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    // An absolute path: busybox's setsid would run its own `ip` applet (no netns support).
    let ip = find_program("ip").ok_or_else(|| anyhow!("iproute2's ip is not installed"))?;
    let child = Command::new("setsid")
        .arg(ip)
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("starting {} in {ns}", program.display()))?;
    Ok(child.id())
}

pub(super) fn run_ok(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.exists())
}

pub(super) fn which(program: &str) -> bool {
    find_program(program).is_some()
}

pub(super) fn path(p: &Path) -> String {
    p.display().to_string()
}
