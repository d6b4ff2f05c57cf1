//! Running programs for the lab (detached in a namespace, or checked), waiting on a condition,
//! and waiting for an agent's BGP sessions with the logs in the error. Starting programs in a
//! namespace and the session wait are reef-integration's (`agent`), shared with the tests'
//! `Topology::start_agents`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use reef_integration::agent::{self, NodeFiles};

use super::{LabNode, LabState, STATE};

/// The last lines of the agent logs of every node but `except`, for an error message (the lab
/// is torn down after it).
fn log_tails(st: &LabState, except: &str) -> String {
    let mut out = String::new();
    for n in st.nodes.iter().filter(|n| n.name != except) {
        let log = NodeFiles::of_config(&n.config).log();
        out.push_str(&format!(
            "--- {} agent log (last lines):\n{}\n",
            n.name,
            agent::log_tail(&log, 15)
        ));
    }
    out
}

pub(super) fn wait<T>(
    what: &str,
    timeout: Duration,
    check: impl FnMut(&mut String) -> Option<T>,
) -> Result<T> {
    wait_every(what, timeout, Duration::from_millis(200), check)
}

/// The integration library's wait, its error pointing at the agents' logs.
pub(super) fn wait_every<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    check: impl FnMut(&mut String) -> Option<T>,
) -> Result<T> {
    reef_integration::wait::wait_every(what, timeout, every, check)
        .map_err(|e| anyhow!("{e} (agent logs in {STATE}/<node>/agent.log)"))
}

/// Waits until `n` has a session with every other node and the lab router; returns how many.
pub(super) fn wait_sessions(st: &LabState, n: &LabNode) -> Result<usize> {
    let want = st.nodes.len() - 1 + usize::from(st.router);
    let files = NodeFiles::of_config(&n.config);
    agent::wait_sessions(&n.name, &files, want, Duration::from_secs(60))
        .map_err(|e| anyhow!("{e}\n{}", log_tails(st, &n.name)))?;
    Ok(want)
}

/// Starts `program args…` inside `ns` in its own session (it survives this command), output
/// appended to `log`; returns its pid (`ip netns exec` execs the program, so the pid is the
/// program's).
pub(super) fn spawn_detached<S: AsRef<std::ffi::OsStr>>(
    ns: &str,
    program: &Path,
    args: &[S],
    log: &Path,
) -> Result<u32> {
    let child = agent::ns_command(ns, program, args, log, true)?
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

pub(super) fn which(program: &str) -> bool {
    agent::find_program(program).is_some()
}

pub(super) fn path(p: &Path) -> String {
    p.display().to_string()
}
