//! natOutgoing: pod traffic leaving the cluster's pools is masqueraded behind the node
//! address. reef owns exactly its `reef-nat` tables (families `ip` and `ip6`); it never
//! touches another.
//!
//! Masquerade only when the source is in a pool with natOutgoing and the destination is in
//! no pool at all: pod-to-pod traffic keeps its source (destination in a pool), and
//! node-to-pod traffic never matches (its source is not a pool address).
//!
//! The ruleset is rendered (pure, golden-tested) and applied with `nft -f` as one
//! transaction that creates, flushes and refills the table, so applying twice is the same as
//! applying once and no packet sees a half-built table.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::plan::Pool;
use crate::TunnelError;

/// The table reef owns.
pub const TABLE: &str = "reef-nat";

/// The nft script for these pools: per address family, reef's table is removed and, when a
/// pool of that family asks for natOutgoing, created anew (`table ip reef-nat`,
/// `table ip6 reef-nat`).
pub fn render(pools: &[Pool]) -> String {
    let mut s = String::new();
    for (family, v6, addr_type, match_kw) in [
        ("ip", false, "ipv4_addr", "ip"),
        ("ip6", true, "ipv6_addr", "ip6"),
    ] {
        let all = cidrs(pools.iter(), v6);
        let nat = cidrs(pools.iter().filter(|p| p.nat_outgoing), v6);
        // "add table" first makes the delete valid when the table does not exist yet.
        s += &format!("add table {family} {TABLE}\ndelete table {family} {TABLE}\n");
        if nat.is_empty() {
            continue;
        }
        s += &format!(
            "table {family} {TABLE} {{\n\
             \tset pools {{\n\t\ttype {addr_type}\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n\
             \tset nat_pools {{\n\t\ttype {addr_type}\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\t{match_kw} saddr @nat_pools {match_kw} daddr != @pools counter masquerade\n\
             \t}}\n\
             }}\n",
            all.join(", "),
            nat.join(", ")
        );
    }
    s
}

fn cidrs<'a>(pools: impl Iterator<Item = &'a Pool>, v6: bool) -> Vec<String> {
    let mut v: Vec<String> = pools
        .filter(|p| p.cidr.is_ipv6() == v6)
        .map(|p| format!("{}/{}", p.cidr.network(), p.cidr.prefix()))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Applies [`render`]`(pools)` in the namespace at `netns` (the caller's when `None`).
pub fn apply(netns: Option<&Path>, pools: &[Pool]) -> Result<(), TunnelError> {
    run_nft(netns, render(pools), &format!("table ip {TABLE}"))
}

/// Removes reef's table (nothing else); fine when it does not exist.
pub fn remove(netns: Option<&Path>) -> Result<(), TunnelError> {
    run_nft(netns, render(&[]), &format!("table ip {TABLE}"))
}

/// Runs `nft -f -` with `script` in the namespace at `netns`; `table` names what the script
/// is about in the error.
pub(crate) fn run_nft(
    netns: Option<&Path>,
    script: String,
    table: &str,
) -> Result<(), TunnelError> {
    let out = felix_lite::netns::maybe_in(netns, move || {
        // A child forked from this thread starts in the thread's namespace.
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(script.as_bytes())?;
        child.wait_with_output()
    })
    .map_err(|e| TunnelError::Io {
        what: format!("enter namespace for nft ({table})"),
        reason: e.to_string(),
    })?
    .map_err(|e| TunnelError::Io {
        what: format!("run nft ({table})"),
        reason: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(TunnelError::Io {
            what: format!("nft -f ({table})"),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IpipMode;

    fn pool(cidr: &str, nat: bool) -> Pool {
        Pool {
            cidr: cidr.parse().unwrap(),
            ipip_mode: IpipMode::CrossSubnet,
            nat_outgoing: nat,
        }
    }

    /// Golden file; `REEF_UPDATE_GOLDEN=1` rewrites it.
    #[test]
    fn ruleset_golden() {
        let got = render(&[
            pool("10.244.0.0/16", true),
            pool("10.96.0.0/20", false),
            pool("fd00:244::/48", true),
        ]);
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/reef-nat.nft");
        if std::env::var_os("REEF_UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path).expect("golden file; REEF_UPDATE_GOLDEN=1");
        assert_eq!(got, want);
    }

    #[test]
    fn no_nat_pool_means_no_table() {
        let s = render(&[pool("10.244.0.0/16", false), pool("fd00::/48", false)]);
        assert_eq!(
            s,
            "add table ip reef-nat\ndelete table ip reef-nat\n\
             add table ip6 reef-nat\ndelete table ip6 reef-nat\n"
        );
    }
}
