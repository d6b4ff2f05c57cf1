//! Forwarding state kept across a clean agent restart (RFC 4724's "forwarding state
//! preserved", done by the agent): on SIGTERM the agent writes its BGP best paths to a file;
//! the next agent starts from them, so the route plan, the kernel routes and the userspace
//! tunnel's map are what they were, and sweeps the ones BGP does not confirm once every peer
//! has sent End-of-RIB (or the deferral time is up).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;

pub type Routes = BTreeMap<IpNetwork, Vec<IpAddr>>;

/// Writes `routes` atomically (a crash leaves the old file or the new one, never half).
pub fn save(path: &Path, routes: &Routes) -> Result<()> {
    let list: Vec<(String, &Vec<IpAddr>)> =
        routes.iter().map(|(p, nh)| (p.to_string(), nh)).collect();
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&list)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Reads and removes the file the previous agent left, when it is younger than `window`
/// (after that the peers have dropped our routes, and we start fresh). Anything unreadable
/// is a fresh start too, logged.
pub fn load(path: &Path, window: Duration) -> Option<Routes> {
    let age = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())?;
    let text = std::fs::read(path);
    let _ = std::fs::remove_file(path);
    if age > window {
        tracing::info!(file = %path.display(), age_s = age.as_secs(), "forwarding state too old; starting fresh");
        return None;
    }
    let parsed = text
        .map_err(anyhow::Error::from)
        .and_then(|t| Ok(serde_json::from_slice::<Vec<(String, Vec<IpAddr>)>>(&t)?))
        .and_then(|l| {
            l.into_iter()
                .map(|(p, nh)| Ok((p.parse::<IpNetwork>()?, nh)))
                .collect::<Result<Routes>>()
        });
    match parsed {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "unreadable forwarding state; starting fresh");
            None
        }
    }
}

/// What a restarted agent still waits for.
#[derive(Debug)]
pub struct Deferral {
    /// Kept prefixes BGP has not sent again yet.
    stale: BTreeSet<IpNetwork>,
    /// Peers whose IPv4 End-of-RIB has not come yet.
    waiting: BTreeSet<IpAddr>,
    pub deadline: Instant,
}

impl Deferral {
    pub fn new(stale: BTreeSet<IpNetwork>, deadline: Instant) -> Self {
        Deferral {
            stale,
            waiting: BTreeSet::new(),
            deadline,
        }
    }

    /// The peers configured at start: the deferral ends when each has sent End-of-RIB.
    pub fn expect_from(&mut self, peers: impl IntoIterator<Item = IpAddr>) {
        self.waiting.extend(peers);
    }

    /// BGP sent a best path (or its withdrawal) for `prefix`: it is no longer ours to sweep.
    pub fn confirmed(&mut self, prefix: &IpNetwork) {
        self.stale.remove(prefix);
    }

    /// `peer` sent End-of-RIB; true when no peer is left to wait for.
    pub fn end_of_rib(&mut self, peer: IpAddr) -> bool {
        self.waiting.remove(&peer);
        self.waiting.is_empty()
    }

    /// The kept prefixes nobody confirmed.
    pub fn into_stale(self) -> BTreeSet<IpNetwork> {
        self.stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn save_then_load_round_trips_and_consumes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forwarding-state.json");
        let mut routes = Routes::new();
        routes.insert(net("10.244.1.0/26"), vec!["10.100.1.11".parse().unwrap()]);
        routes.insert(
            net("fd00:244::/122"),
            vec!["fd00::1".parse().unwrap(), "fd00::2".parse().unwrap()],
        );
        save(&path, &routes).unwrap();
        assert_eq!(load(&path, Duration::from_secs(60)), Some(routes));
        assert!(!path.exists(), "a second restart must not reuse old state");
        assert_eq!(load(&path, Duration::from_secs(60)), None);
    }

    #[test]
    fn old_or_garbled_state_is_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forwarding-state.json");
        save(&path, &Routes::new()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(load(&path, Duration::from_millis(1)), None);
        std::fs::write(&path, b"[[\"10.0.0.0/33\", []]]").unwrap();
        assert_eq!(load(&path, Duration::from_secs(60)), None);
        std::fs::write(&path, b"{").unwrap();
        assert_eq!(load(&path, Duration::from_secs(60)), None);
    }

    #[test]
    fn deferral_ends_when_every_peer_sent_end_of_rib_and_sweeps_the_unconfirmed() {
        let a: IpAddr = "10.100.1.10".parse().unwrap();
        let b: IpAddr = "10.100.2.10".parse().unwrap();
        let mut d = Deferral::new(
            [net("10.244.1.0/26"), net("10.244.2.0/26")].into(),
            Instant::now(),
        );
        d.expect_from([a, b]);
        d.confirmed(&net("10.244.1.0/26"));
        assert!(!d.end_of_rib(a));
        assert!(!d.end_of_rib(a), "the same peer twice is not every peer");
        assert!(d.end_of_rib(b));
        assert_eq!(d.into_stale(), [net("10.244.2.0/26")].into());
    }
}
