//! Forwarding state kept across a clean agent restart (RFC 4724's "forwarding state
//! preserved", done by the agent): on SIGTERM the agent writes its BGP best paths to a file;
//! the next agent starts from them, so the route plan, the kernel routes and the userspace
//! tunnel's map are what they were, and sweeps the ones BGP does not confirm once the
//! speaker's selection deferral ends (every peer sent End-of-RIB, or its timer ran out).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use reef_bgp::speaker::SpeakerEvent;

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

/// The remote best paths route programming holds, and after a clean restart the routes the
/// previous agent left that BGP has not sent again yet. The speaker defers route selection
/// until its peers have resent their routes (RFC 4724 §4.1, `reef_bgp::speaker`), so during
/// that time no best path comes and the kept routes stand unchanged; when the speaker says
/// selection runs, the full table has come and the kept routes it did not confirm go.
#[derive(Debug, Default)]
pub struct Remote {
    /// Prefix → next hops.
    pub routes: Routes,
    /// Kept prefixes BGP has not sent (or withdrawn) since the start; `None` once the
    /// speaker's selection deferral ended (or with nothing kept).
    unconfirmed: Option<BTreeSet<IpNetwork>>,
}

impl Remote {
    /// Starts from what the previous agent left (`None`: a fresh start).
    pub fn new(kept: Option<Routes>) -> Self {
        match kept {
            Some(routes) => Remote {
                unconfirmed: Some(routes.keys().copied().collect()),
                routes,
            },
            None => Remote::default(),
        }
    }

    /// Whether kept routes still wait for the speaker's selection deferral to end.
    #[cfg(test)]
    fn deferring(&self) -> bool {
        self.unconfirmed.is_some()
    }

    /// Takes a speaker event; returns whether the routes changed.
    pub fn apply(&mut self, ev: &SpeakerEvent) -> bool {
        match ev {
            SpeakerEvent::BestPaths(cs) => {
                let mut changed = false;
                for c in cs {
                    if let Some(u) = &mut self.unconfirmed {
                        u.remove(&c.prefix);
                    }
                    changed |= if c.next_hops.is_empty() {
                        self.routes.remove(&c.prefix).is_some()
                    } else if self.routes.get(&c.prefix).map(Vec::as_slice)
                        == Some(&c.next_hops[..])
                    {
                        false
                    } else {
                        self.routes.insert(c.prefix, c.next_hops.to_vec());
                        true
                    };
                }
                changed
            }
            SpeakerEvent::SelectionDeferralEnded { why } => {
                let Some(stale) = self.unconfirmed.take() else {
                    return false;
                };
                let mut swept = 0;
                for p in &stale {
                    swept += usize::from(self.routes.remove(p).is_some());
                }
                tracing::info!(%why, swept, "restart complete: kept routes BGP did not send again removed");
                swept > 0
            }
            SpeakerEvent::EndOfRib { .. } | SpeakerEvent::PeerState { .. } => false,
        }
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
    fn kept_routes_stand_until_the_deferral_ends_and_the_unconfirmed_are_swept() {
        use reef_bgp::speaker::DeferralEnd;
        use reef_bgp::BestPathChange;
        let (a, b): (IpAddr, IpAddr) = (
            "10.100.1.10".parse().unwrap(),
            "10.100.2.10".parse().unwrap(),
        );
        let best = |p: &str, nh: &[IpAddr]| BestPathChange {
            prefix: net(p),
            next_hops: nh.to_vec().into(),
        };
        let kept: Routes = [
            (net("10.244.1.0/26"), vec![a]),
            (net("10.244.2.0/26"), vec![b]),
            (net("10.244.3.0/26"), vec![b]),
        ]
        .into();
        let mut r = Remote::new(Some(kept.clone()));
        assert!(r.deferring());
        // End-of-RIB markers and session changes touch nothing; the kept routes stand.
        assert!(!r.apply(&SpeakerEvent::EndOfRib {
            address: a,
            family: reef_bgp::packet::Family::Ipv4Unicast,
        }));
        assert!(!r.apply(&SpeakerEvent::PeerState {
            address: b,
            peer_type: reef_bgp::PeerType::Mesh,
            state: reef_bgp::SessionState::Established,
            reason: None,
        }));
        assert_eq!(r.routes, kept);
        // The table at the deferral's end: .1 again (unchanged), .3 via a now, and a new one.
        let table = SpeakerEvent::BestPaths(vec![
            best("10.244.1.0/26", &[a]),
            best("10.244.3.0/26", &[a]),
            best("10.244.4.0/26", &[b]),
        ]);
        assert!(r.apply(&table));
        assert_eq!(
            r.routes.len(),
            4,
            "nothing swept before the end: {:?}",
            r.routes
        );
        assert!(r.apply(&SpeakerEvent::SelectionDeferralEnded {
            why: DeferralEnd::EndOfRib
        }));
        assert!(!r.deferring());
        assert_eq!(
            r.routes,
            [
                (net("10.244.1.0/26"), vec![a]),
                (net("10.244.3.0/26"), vec![a]),
                (net("10.244.4.0/26"), vec![b]),
            ]
            .into()
        );
        // Once over, a withdrawal removes and nothing else is swept.
        assert!(!r.apply(&SpeakerEvent::SelectionDeferralEnded {
            why: DeferralEnd::Timer
        }));
        assert!(r.apply(&SpeakerEvent::BestPaths(vec![best("10.244.4.0/26", &[])])));
        assert_eq!(r.routes.len(), 2);
    }

    #[test]
    fn a_fresh_start_keeps_nothing_and_waits_for_nothing() {
        let mut r = Remote::new(None);
        assert!(!r.deferring());
        assert!(!r.apply(&SpeakerEvent::SelectionDeferralEnded {
            why: reef_bgp::speaker::DeferralEnd::NotRestarting
        }));
        assert!(r.routes.is_empty());
    }
}
