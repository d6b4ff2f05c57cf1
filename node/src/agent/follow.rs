//! Following the datastore: one thread per kind the agent reads watches it and wakes the
//! agent loop when something it plans with changed. Only spec and labels count: the status
//! every agent writes every few seconds would otherwise wake every node. The loop then reads
//! the whole view again (watch to learn *that*, list to learn *what*: no event can be
//! misapplied, and a lost watch costs one re-list).

use std::collections::HashMap;
use std::time::Duration;

use reef_ipam::store::{Kind, Object, WatchEvent};
use reef_ipam::{Labels, Store};
use tokio::sync::mpsc;

/// The kinds the agent's view is made of (see `read_view`).
pub const KINDS: [Kind; 5] = [
    Kind::BgpConfiguration,
    Kind::ReefNode,
    Kind::BgpPeer,
    Kind::IpPool,
    Kind::IpamBlock,
];

/// How long a watch waits before checking whether the agent still listens.
const WAIT: Duration = Duration::from_secs(1);
/// After a failed list or watch, before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// Starts the watchers; each sends `kind` on `tx` when it saw a change, and stops when the
/// receiver is gone.
pub fn start(ipam: super::SharedIpam, tx: mpsc::Sender<Kind>) {
    for kind in KINDS {
        let ipam = ipam.clone();
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("watch-{kind:?}"))
            .spawn(move || follow(ipam.store(), kind, &tx));
        if let Err(e) = spawned {
            tracing::warn!(?kind, error = %e, "cannot start a datastore watcher; the periodic read covers it");
        }
    }
}

fn follow<S: Store + ?Sized>(store: &S, kind: Kind, tx: &mpsc::Sender<Kind>) {
    // What the agent plans with, per object: a change elsewhere (status) wakes nobody.
    let mut seen: HashMap<String, (Labels, serde_json::Value)> = HashMap::new();
    while !tx.is_closed() {
        let watcher = store.list(kind, &Labels::new()).and_then(|(objects, rev)| {
            seen = objects.into_iter().map(key).collect();
            store.watch(kind, &rev)
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(?kind, error = %e, "watch: listing failed; retrying");
                std::thread::sleep(RETRY);
                continue;
            }
        };
        // Whatever changed while no watch ran is found by the loop's read.
        let _ = tx.try_send(kind);
        while !tx.is_closed() {
            let changed = match watcher.next(WAIT) {
                Ok(None) => continue,
                Ok(Some(WatchEvent::Put(o))) => {
                    let (name, v) = key(o);
                    seen.insert(name, v.clone()) != Some(v)
                }
                Ok(Some(WatchEvent::Deleted { name, .. })) => seen.remove(&name).is_some(),
                Err(e) => {
                    tracing::debug!(?kind, error = %e, "watch ended; listing again");
                    break;
                }
            };
            if changed {
                // A full channel already holds a wake-up: the loop reads everything anyway.
                let _ = tx.try_send(kind);
            }
        }
    }
}

fn key(o: Object) -> (String, (Labels, serde_json::Value)) {
    (o.name, (o.labels, o.spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reef_config::crds::{IpPoolSpec, ReefNodeSpec};
    use reef_ipam::{Ipam, StoreExt, Typed};
    use std::sync::Arc;

    fn store() -> (tempfile::TempDir, super::super::SharedIpam) {
        let dir = tempfile::tempdir().unwrap();
        let s = reef_ipam::embedded::EmbeddedStore::open(dir.path().join("store.db")).unwrap();
        (dir, Arc::new(Ipam::new(Box::new(s) as Box<dyn Store>)))
    }

    async fn next(rx: &mut mpsc::Receiver<Kind>) -> Option<Kind> {
        tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Against the real embedded store: spec changes wake the agent, status writes do not.
    #[tokio::test]
    async fn spec_changes_wake_the_loop_and_status_writes_do_not() {
        let (_dir, ipam) = store();
        let s = ipam.store();
        let node: ReefNodeSpec = serde_json::from_value(serde_json::json!({
            "address": "10.100.1.10/24"
        }))
        .unwrap();
        let created = s.create_typed(&Typed::new("n0", node)).unwrap();
        // Room for every wake-up: with the agent's capacity of 1 a full channel drops the
        // extra ones (by design), and the start-up count below would race.
        let (tx, mut rx) = mpsc::channel(16);
        start(ipam.clone(), tx);
        // One wake-up per watcher as it starts.
        let mut started = Vec::new();
        for _ in KINDS {
            started.push(next(&mut rx).await.expect("a start-up wake-up"));
        }
        assert_eq!(started.len(), KINDS.len());

        let mut obj = created.clone();
        obj.status = Some(serde_json::json!({"lastUpdated": "now"}));
        s.update_status_typed(&obj).unwrap();
        assert_eq!(next(&mut rx).await, None, "a status write woke the loop");

        let pool: IpPoolSpec = serde_json::from_value(serde_json::json!({
            "cidr": "10.244.0.0/16"
        }))
        .unwrap();
        s.create_typed(&Typed::new("default", pool)).unwrap();
        assert_eq!(next(&mut rx).await, Some(Kind::IpPool));

        let mut n0 = s.get_typed::<ReefNodeSpec>("n0").unwrap().unwrap();
        n0.labels.insert("rack".into(), "r1".into());
        s.update_typed(&n0).unwrap();
        assert_eq!(next(&mut rx).await, Some(Kind::ReefNode));

        s.delete(Kind::ReefNode, "n0", None).unwrap();
        assert_eq!(next(&mut rx).await, Some(Kind::ReefNode));
    }
}
