//! The status task: writes the node resource's status off the agent loop. The loop hands it
//! the latest status on a watch channel (newer replaces older: coalesced); the task writes
//! only when it differs from what it last wrote, at most once per `every`, and retries a
//! failed write after `every`. A slow or hung API server delays only this task.

use std::time::{Duration, SystemTime};

use ipnetwork::IpNetwork;
use reef_config::crds::{ReefNodeSpec, ReefNodeStatus};
use reef_ipam::{Store, StoreExt};
use tokio::sync::watch;

use super::snapshot;

/// What the status says, as the loop last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub peers: Vec<reef_bgp::speaker::PeerStatus>,
    pub blocks: Vec<IpNetwork>,
    pub routes_desired: usize,
    pub routes_programmed: usize,
}

impl Input {
    /// The status resource for this input (without `lastUpdated`, set at write time).
    fn status(&self) -> ReefNodeStatus {
        let mut s = ReefNodeStatus {
            blocks: self.blocks.clone(),
            routes_desired: u32::try_from(self.routes_desired).unwrap_or(u32::MAX),
            routes_programmed: u32::try_from(self.routes_programmed).unwrap_or(u32::MAX),
            ..Default::default()
        };
        s.set_peers(self.peers.iter().map(snapshot::crd_peer_status).collect());
        s
    }
}

/// Starts the task writing node `node`'s status; it ends when the sender is dropped.
pub fn spawn(
    ipam: super::SharedIpam,
    node: String,
    every: Duration,
) -> watch::Sender<Option<Input>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(run(ipam, node, every, rx));
    tx
}

async fn run(
    ipam: super::SharedIpam,
    node: String,
    every: Duration,
    mut rx: watch::Receiver<Option<Input>>,
) {
    let mut written: Option<ReefNodeStatus> = None;
    loop {
        let want = rx.borrow_and_update().as_ref().map(Input::status);
        if let Some(status) = want.filter(|s| Some(s) != written.as_ref()) {
            let (ipam, node2, s) = (ipam.clone(), node.clone(), status.clone());
            let result = tokio::task::spawn_blocking(move || write(ipam.store(), &node2, s)).await;
            match result {
                Ok(Ok(())) => written = Some(status),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "writing the node status");
                    tokio::time::sleep(every).await;
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "writing the node status"),
            }
        }
        // Rate limit: whatever arrives meanwhile is coalesced into one write.
        tokio::time::sleep(every).await;
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn write<S: Store + ?Sized>(
    s: &S,
    node: &str,
    mut status: ReefNodeStatus,
) -> Result<(), reef_ipam::Error> {
    status.last_updated = Some(snapshot::rfc3339(SystemTime::now()));
    let value = serde_json::to_value(&status).map_err(|e| reef_ipam::Error::Backend {
        context: "encoding the node status".into(),
        source: Box::new(e),
    })?;
    for _ in 0..3 {
        let Some(mut obj) = s.get_typed::<ReefNodeSpec>(node)? else {
            return Ok(());
        };
        obj.status = Some(value.clone());
        match s.update_status_typed(&obj) {
            Ok(_) => return Ok(()),
            Err(reef_ipam::Error::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reef_ipam::Typed;

    fn store() -> (tempfile::TempDir, super::super::SharedIpam) {
        let dir = tempfile::tempdir().unwrap();
        let s = reef_ipam::EmbeddedStore::open(dir.path().join("store.db")).unwrap();
        let s: Box<dyn Store> = Box::new(s);
        (dir, std::sync::Arc::new(reef_ipam::Ipam::new(s)))
    }

    fn input(blocks: &[&str]) -> Input {
        Input {
            peers: Vec::new(),
            blocks: blocks.iter().map(|b| b.parse().unwrap()).collect(),
            routes_desired: 1,
            routes_programmed: 1,
        }
    }

    /// Writes are coalesced and made only on a change: many sends, few writes, the last wins.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_writes_are_coalesced_and_only_on_change() {
        let (_dir, ipam) = store();
        let s = ipam.store();
        let node: ReefNodeSpec =
            serde_json::from_value(serde_json::json!({"address": "10.100.1.10/24"})).unwrap();
        let rev = |s: &dyn Store| -> u64 {
            let o = s.get_typed::<ReefNodeSpec>("n0").unwrap().unwrap();
            o.revision.0.parse().unwrap()
        };
        s.create_typed(&Typed::new("n0", node)).unwrap();
        // The embedded store's revisions count its writes, and only this object is written.
        let before = rev(s.as_ref());
        let every = Duration::from_millis(500);
        let tx = spawn(ipam.clone(), "n0".into(), every);
        let writes = |n: u64| async move {
            let until = tokio::time::Instant::now() + Duration::from_secs(10);
            while rev(s.as_ref()) - before < n && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            rev(s.as_ref()) - before
        };
        // The same status ten times: one write.
        for _ in 0..10 {
            tx.send_replace(Some(input(&["10.244.0.0/26"])));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(every * 2).await;
        assert_eq!(rev(s.as_ref()) - before, 1, "one write for the same status");
        // A change is written at once; what arrives while the task then waits out its rate
        // limit (a third status, then the last one ten times) becomes one more write. The
        // sends start right after the write is seen, so they all fall inside that wait.
        tx.send_replace(Some(input(&["10.244.1.0/26"])));
        assert_eq!(writes(2).await, 2, "a change was not written");
        let seen = tokio::time::Instant::now();
        tx.send_replace(Some(input(&["10.244.2.0/26"])));
        for _ in 0..10 {
            tx.send_replace(Some(input(&["10.244.0.0/26", "10.244.0.64/26"])));
        }
        assert!(
            seen.elapsed() < every / 2,
            "the machine is too slow for this test's timing"
        );
        tokio::time::sleep(every * 3).await;
        assert_eq!(
            rev(s.as_ref()) - before,
            3,
            "changes coalesced into one write"
        );
        // The same again: no write.
        tx.send_replace(Some(input(&["10.244.0.0/26", "10.244.0.64/26"])));
        tokio::time::sleep(every * 2).await;
        assert_eq!(
            rev(s.as_ref()) - before,
            3,
            "an unchanged status was written"
        );
        let o = s.get_typed::<ReefNodeSpec>("n0").unwrap().unwrap();
        assert_eq!(
            o.status.unwrap()["blocks"],
            serde_json::json!(["10.244.0.0/26", "10.244.0.64/26"]),
            "the latest status"
        );
    }
}
