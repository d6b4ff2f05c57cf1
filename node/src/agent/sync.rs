//! Datastore sync: the agent's cache of what it plans with, kept by list + watch.
//!
//! One thread per stream (a kind, seen through a label selector) lists once, then watches
//! from the list's revision and sends each change as a [`Delta`]; only an expired or failed
//! watch lists again. The sync task owns the cache, applies the deltas and publishes the
//! [`View`] on a watch channel when something the agent plans with (spec or labels) changed:
//! status writes, which every agent makes, change nothing here.
//!
//! What a node follows: cluster-wide the small objects (BGPConfiguration, ReefNodes, BGPPeers,
//! IPPools, BlockAffinities: an affinity changes only when a block is claimed or released),
//! and of the IPAMBlocks, which carry the allocations and change on every pod start, only its
//! own (`reef.dev/node=<this node>`) and the lent ones (`reef.dev/lent=true`: an address held
//! by another node than the block's, whose /32 is a route someone announces). Another node's
//! pod start in its own block costs this node no request and no work.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reef_config::crds::{
    BgpConfigurationSpec, BgpPeerSpec, BlockAffinitySpec, IpPoolSpec, IpamBlockSpec, ReefNodeSpec,
    DEFAULT_NAME,
};
use reef_ipam::store::{Kind, Object, Spec, WatchEvent, NODE_LABEL};
use reef_ipam::{Labels, Store, Typed};
use tokio::sync::{mpsc, watch};

use super::view::View;

/// How long a watch waits before checking whether the sync task still listens.
const WAIT: Duration = Duration::from_secs(1);
/// After a failed list or watch, before listing again.
const RETRY: Duration = Duration::from_secs(1);
/// Changes that come together (a claim's affinity and block) are published once.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// One list + watch: a kind through a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub kind: Kind,
    pub selector: Labels,
}

/// The streams node `node` follows (see the module doc).
pub fn streams(node: &str) -> Vec<Stream> {
    let all = |kind| Stream {
        kind,
        selector: Labels::new(),
    };
    let blocks = |k: &str, v: &str| Stream {
        kind: Kind::IpamBlock,
        selector: Labels::from([(k.to_string(), v.to_string())]),
    };
    vec![
        all(Kind::BgpConfiguration),
        all(Kind::ReefNode),
        all(Kind::BgpPeer),
        all(Kind::IpPool),
        all(Kind::BlockAffinity),
        blocks(NODE_LABEL, node),
        blocks(reef_ipam::ipam::LENT_LABEL, "true"),
    ]
}

/// A change one stream saw.
#[derive(Debug)]
enum Delta {
    /// A (re-)list: the stream's objects now.
    Reset(Vec<Object>),
    Put(Object),
    Deleted(String),
    /// A list failed (retried); the cache keeps what it had.
    Failed(String),
}

/// What the sync task publishes.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub view: Arc<View>,
    /// Every stream has been listed at least once.
    pub complete: bool,
    /// Failed lists and records that do not decode (each `datastore: ...`).
    pub problems: Vec<String>,
}

/// Starts the stream threads and the sync task. The receiver sees the first complete reading
/// once every stream was listed, then a new one after each change the agent plans with. The
/// threads and the task stop when the receiver is gone.
pub fn spawn(ipam: super::SharedIpam, streams: Vec<Stream>) -> watch::Receiver<Reading> {
    let (out, rx) = watch::channel(Reading::default());
    let (tx, deltas) = mpsc::channel(1024);
    for (i, s) in streams.iter().enumerate() {
        let (ipam, s, tx) = (ipam.clone(), s.clone(), tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("sync-{}", i))
            .spawn(move || follow(ipam.store(), &s, i, &tx));
        if let Err(e) = spawned {
            tracing::warn!(stream = i, error = %e, "cannot start a datastore stream");
        }
    }
    tokio::spawn(run(streams, deltas, out));
    rx
}

/// The cache: per stream, the objects by name, and whether it was listed.
struct Cache {
    streams: Vec<Stream>,
    objects: Vec<BTreeMap<String, Object>>,
    listed: Vec<bool>,
    failed: Vec<Option<String>>,
}

impl Cache {
    /// Applies `d` to stream `i`; returns whether anything the agent plans with changed.
    fn apply(&mut self, i: usize, d: Delta) -> bool {
        let m = &mut self.objects[i];
        match d {
            Delta::Reset(objects) => {
                let new: BTreeMap<String, Object> =
                    objects.into_iter().map(|o| (o.name.clone(), o)).collect();
                let same = new.len() == m.len()
                    && new
                        .iter()
                        .zip(m.iter())
                        .all(|((n1, a), (n2, b))| n1 == n2 && planned_same(a, b));
                *m = new;
                let first = !self.listed[i];
                self.listed[i] = true;
                let cleared = self.failed[i].take().is_some();
                first || cleared || !same
            }
            Delta::Put(o) => {
                let changed = m.get(&o.name).is_none_or(|old| !planned_same(old, &o));
                m.insert(o.name.clone(), o);
                changed
            }
            Delta::Deleted(name) => m.remove(&name).is_some(),
            Delta::Failed(e) => {
                let new = Some(e);
                let changed = self.failed[i] != new;
                self.failed[i] = new;
                changed
            }
        }
    }

    fn reading(&self) -> Reading {
        let mut problems: Vec<String> = self
            .failed
            .iter()
            .zip(&self.streams)
            .filter_map(|(f, s)| f.as_ref().map(|e| format!("datastore: {}: {e}", s.kind)))
            .collect();
        let mut view = View::default();
        for (s, m) in self.streams.iter().zip(&self.objects) {
            match s.kind {
                Kind::BgpConfiguration => {
                    view.bgp = decode::<BgpConfigurationSpec>(m, &mut problems)
                        .into_iter()
                        .find(|t| t.name == DEFAULT_NAME)
                        .map(|t| t.spec);
                }
                Kind::ReefNode => view.nodes = decode::<ReefNodeSpec>(m, &mut problems),
                Kind::BgpPeer => view.peers = decode::<BgpPeerSpec>(m, &mut problems),
                Kind::IpPool => view.pools = decode::<IpPoolSpec>(m, &mut problems),
                Kind::BlockAffinity => {
                    view.affinities = decode::<BlockAffinitySpec>(m, &mut problems)
                }
                Kind::IpamBlock => {
                    for b in decode::<IpamBlockSpec>(m, &mut problems) {
                        // A block of this node's that is also lent comes from both streams.
                        if !view.blocks.iter().any(|x| x.name == b.name) {
                            view.blocks.push(b);
                        }
                    }
                }
                _ => {}
            }
        }
        view.blocks.sort_by(|a, b| a.name.cmp(&b.name));
        Reading {
            view: Arc::new(view),
            complete: self.listed.iter().all(|l| *l),
            problems,
        }
    }
}

/// Whether two versions of an object are the same to the agent: spec and labels (not the
/// status, nor the revision a status write bumps).
fn planned_same(a: &Object, b: &Object) -> bool {
    a.spec == b.spec && a.labels == b.labels
}

fn decode<T: Spec>(m: &BTreeMap<String, Object>, problems: &mut Vec<String>) -> Vec<Typed<T>> {
    m.values()
        .filter_map(|o| match Typed::<T>::decode(o.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(format!("datastore: {e}"));
                None
            }
        })
        .collect()
}

/// The sync task: applies deltas, publishes readings.
async fn run(
    streams: Vec<Stream>,
    mut deltas: mpsc::Receiver<(usize, Delta)>,
    out: watch::Sender<Reading>,
) {
    let n = streams.len();
    let mut cache = Cache {
        streams,
        objects: vec![BTreeMap::new(); n],
        listed: vec![false; n],
        failed: vec![None; n],
    };
    while let Some((i, d)) = deltas.recv().await {
        let mut changed = cache.apply(i, d);
        tokio::time::sleep(DEBOUNCE).await;
        while let Ok((i, d)) = deltas.try_recv() {
            changed |= cache.apply(i, d);
        }
        if !changed {
            continue;
        }
        let r = cache.reading();
        if !r.complete && r.problems.is_empty() {
            continue;
        }
        if out.send(r).is_err() {
            return;
        }
    }
}

/// One stream's thread: list, then watch from there; list again only when the watch expired
/// or failed. Stops when the sync task is gone.
fn follow<S: Store + ?Sized>(store: &S, s: &Stream, i: usize, tx: &mpsc::Sender<(usize, Delta)>) {
    while !tx.is_closed() {
        let started = store.list(s.kind, &s.selector).and_then(|(objects, rev)| {
            Ok((objects, store.watch_selected(s.kind, &s.selector, &rev)?))
        });
        let (objects, mut watcher) = match started {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(kind = %s.kind, error = %e, "sync: list failed; retrying");
                if tx.blocking_send((i, Delta::Failed(e.to_string()))).is_err() {
                    return;
                }
                std::thread::sleep(RETRY);
                continue;
            }
        };
        if tx.blocking_send((i, Delta::Reset(objects))).is_err() {
            return;
        }
        while !tx.is_closed() {
            let d = match watcher.next(WAIT) {
                Ok(None) => continue,
                Ok(Some(WatchEvent::Put(o))) => Delta::Put(o),
                Ok(Some(WatchEvent::Deleted { name, .. })) => Delta::Deleted(name),
                Err(reef_ipam::Error::Expired { .. }) => {
                    tracing::debug!(kind = %s.kind, "sync: watch expired; listing again");
                    break;
                }
                Err(e) => {
                    tracing::debug!(kind = %s.kind, error = %e, "sync: watch ended; listing again");
                    std::thread::sleep(RETRY);
                    break;
                }
            };
            if tx.blocking_send((i, d)).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reef_config::crds::{AllocationAttributes, IpPoolSpec, ReefNodeSpec};
    use reef_ipam::{AutoAssignArgs, HandleId, Ipam, StoreExt};

    fn store() -> (tempfile::TempDir, super::super::SharedIpam) {
        let dir = tempfile::tempdir().unwrap();
        let s = reef_ipam::embedded::EmbeddedStore::open(dir.path().join("store.db")).unwrap();
        (dir, Arc::new(Ipam::new(Box::new(s) as Box<dyn Store>)))
    }

    /// The next reading, or None when none comes within a second and a half.
    async fn next(rx: &mut watch::Receiver<Reading>) -> Option<Reading> {
        tokio::time::timeout(Duration::from_millis(1500), rx.changed())
            .await
            .ok()?
            .ok()?;
        Some(rx.borrow_and_update().clone())
    }

    fn allocate(ipam: &super::super::SharedIpam, node: &str, handle: &str) {
        let args = AutoAssignArgs {
            handle: HandleId(handle.into()),
            num_v4: 1,
            node: node.into(),
            attributes: AllocationAttributes::default(),
            ..Default::default()
        };
        ipam.auto_assign(&args).unwrap();
    }

    /// Against the real embedded store: the first reading once everything was listed; spec
    /// changes, this node's blocks and other nodes' claims publish a new reading; status
    /// writes and other nodes' pods in their own blocks do not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readings_follow_what_this_node_plans_with_and_nothing_else() {
        let (_dir, ipam) = store();
        let s = ipam.store();
        let node: ReefNodeSpec =
            serde_json::from_value(serde_json::json!({"address": "10.100.1.10/24"})).unwrap();
        let created = s.create_typed(&Typed::new("n0", node)).unwrap();
        let pool: IpPoolSpec =
            serde_json::from_value(serde_json::json!({"cidr": "10.244.0.0/16"})).unwrap();
        s.create_typed(&Typed::new("default", pool)).unwrap();
        // n1 already has a block with a pod in it.
        tokio::task::block_in_place(|| allocate(&ipam, "n1", "net.a"));

        let mut rx = spawn(ipam.clone(), streams("n0"));
        let first = next(&mut rx).await.expect("a first reading");
        assert!(first.complete && first.problems.is_empty(), "{first:?}");
        assert_eq!(first.view.nodes.len(), 1);
        assert_eq!(first.view.pools.len(), 1);
        assert!(
            first.view.blocks.is_empty(),
            "n1's block is not n0's business"
        );
        assert_eq!(first.view.affinities.len(), 1, "but its claim is");

        let mut obj = created.clone();
        obj.status = Some(serde_json::json!({"lastUpdated": "now"}));
        s.update_status_typed(&obj).unwrap();
        assert!(
            next(&mut rx).await.is_none(),
            "a status write published a reading"
        );

        // Pods of n1 in its block: nothing.
        tokio::task::block_in_place(|| {
            for i in 0..5 {
                allocate(&ipam, "n1", &format!("net.b{i}"));
            }
        });
        assert!(
            next(&mut rx).await.is_none(),
            "n1's pods published a reading"
        );

        // n0's first pod claims a block: its block and its affinity arrive.
        tokio::task::block_in_place(|| allocate(&ipam, "n0", "net.c"));
        let mut r = next(&mut rx).await.expect("n0's claim");
        while r.view.blocks.is_empty() || r.view.affinities.len() < 2 {
            r = next(&mut rx).await.expect("n0's block");
        }
        assert_eq!(r.view.blocks.len(), 1);
        assert_eq!(r.view.blocks[0].spec.affinity.as_deref(), Some("n0"));
        assert_eq!(r.view.blocks[0].spec.allocations.len(), 1);

        let mut n0 = s.get_typed::<ReefNodeSpec>("n0").unwrap().unwrap();
        n0.labels.insert("rack".into(), "r1".into());
        s.update_typed(&n0).unwrap();
        let r = next(&mut rx).await.expect("a label change");
        assert_eq!(
            r.view.nodes[0].labels.get("rack").map(String::as_str),
            Some("r1")
        );

        s.delete(Kind::ReefNode, "n0", None).unwrap();
        let r = next(&mut rx).await.expect("a deletion");
        assert!(r.view.nodes.is_empty());
    }
}
