//! The datastore behind IPAM (and behind the agent's view of pools, peers and nodes): named
//! objects of a few kinds, each write a compare-and-swap on the object's revision.
//!
//! Two backends implement [`Store`]: [`crate::embedded::EmbeddedStore`] (one SQLite file
//! shared by every reef process on a machine) and the Kubernetes API. The API is blocking:
//! the CNI plugin is a short-lived process that does one allocation and exits; async callers
//! run it on a blocking thread.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// The kinds of objects a store holds: the `reef.dev` resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    IpPool,
    IpamBlock,
    BlockAffinity,
    IpamHandle,
    IpamConfig,
    BgpConfiguration,
    BgpPeer,
    ReefNode,
    /// A core/v1 Node: only through [`Store::node_labels`], [`Store::list_nodes`] and
    /// [`Store::watch_nodes`] (and named in their errors), never the generic object methods.
    Node,
    /// A coordination.k8s.io/v1 Lease: only through the lease methods of [`Store`].
    Lease,
}

impl Kind {
    /// The `reef.dev` kinds (what the generic object methods take).
    pub const ALL: [Kind; 8] = [
        Kind::IpPool,
        Kind::IpamBlock,
        Kind::BlockAffinity,
        Kind::IpamHandle,
        Kind::IpamConfig,
        Kind::BgpConfiguration,
        Kind::BgpPeer,
        Kind::ReefNode,
    ];

    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::IpPool => "IPPool",
            Kind::IpamBlock => "IPAMBlock",
            Kind::BlockAffinity => "BlockAffinity",
            Kind::IpamHandle => "IPAMHandle",
            Kind::IpamConfig => "IPAMConfig",
            Kind::BgpConfiguration => "BGPConfiguration",
            Kind::BgpPeer => "BGPPeer",
            Kind::ReefNode => "ReefNode",
            Kind::Node => "Node",
            Kind::Lease => "Lease",
        }
    }
}

impl Kind {
    /// The resource's plural name (its API path segment).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::IpPool => "ippools",
            Kind::IpamBlock => "ipamblocks",
            Kind::BlockAffinity => "blockaffinities",
            Kind::IpamHandle => "ipamhandles",
            Kind::IpamConfig => "ipamconfigs",
            Kind::BgpConfiguration => "bgpconfigurations",
            Kind::BgpPeer => "bgppeers",
            Kind::ReefNode => "reefnodes",
            Kind::Node => "nodes",
            Kind::Lease => "leases",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object's version. Opaque to callers (Kubernetes' resourceVersion); compare only for
/// equality.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Revision(pub String);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Labels = BTreeMap<String, String>;

/// Label carrying the node a BlockAffinity belongs to, so a node lists only its own.
pub const NODE_LABEL: &str = "reef.dev/node";

/// One stored object, untyped.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub name: String,
    pub revision: Revision,
    pub labels: Labels,
    pub spec: serde_json::Value,
    pub status: Option<serde_json::Value>,
}

/// What a watch reports, in revision order.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// Created or changed.
    Put(Object),
    Deleted {
        name: String,
        revision: Revision,
    },
}

/// A stream of changes to one kind. Level-based, as Kubernetes watches are: a watcher that
/// falls behind may see only an object's latest state, not every intermediate one.
pub trait Watcher: Send + fmt::Debug {
    /// The next change, waiting up to `timeout`; `None` when nothing changed in that time.
    /// [`Error::Expired`] means changes were missed: list again and watch from there.
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchEvent>, Error>;
}

/// A store of named objects with compare-and-swap writes.
pub trait Store: Send + Sync + fmt::Debug {
    /// Objects of `kind` whose labels include all of `selector`, and the store's revision at
    /// the time of the list (watch from it to see every later change).
    fn list(&self, kind: Kind, selector: &Labels) -> Result<(Vec<Object>, Revision), Error>;
    fn get(&self, kind: Kind, name: &str) -> Result<Option<Object>, Error>;
    /// Creates `object` (its revision is ignored); [`Error::AlreadyExists`] if the name is taken.
    fn create(&self, kind: Kind, object: &Object) -> Result<Object, Error>;
    /// Replaces spec and labels if the stored revision is still `object.revision`;
    /// [`Error::Conflict`] otherwise, [`Error::NotFound`] when gone.
    fn update(&self, kind: Kind, object: &Object) -> Result<Object, Error>;
    /// Replaces the status, with the same compare-and-swap rule as [`Store::update`].
    fn update_status(&self, kind: Kind, object: &Object) -> Result<Object, Error>;
    /// Deletes `name`, only at `revision` when given. [`Error::NotFound`] when absent.
    fn delete(&self, kind: Kind, name: &str, revision: Option<&Revision>) -> Result<(), Error>;
    /// Changes to `kind` after `since` (a revision from [`Store::list`]).
    fn watch(&self, kind: Kind, since: &Revision) -> Result<Box<dyn Watcher>, Error>;

    /// Changes after `since` to the objects of `kind` whose labels include all of `selector`
    /// (a revision from [`Store::list`] with the same selector). As a Kubernetes selector
    /// watch: an object that stops matching is reported `Deleted`. A backend that can filter
    /// at the source overrides it (the API server then sends nothing for other objects); this
    /// default filters [`Store::watch`]'s events, reporting every non-matching change as
    /// `Deleted` (a cache holding only matching objects removes the name or finds it absent).
    fn watch_selected(
        &self,
        kind: Kind,
        selector: &Labels,
        since: &Revision,
    ) -> Result<Box<dyn Watcher>, Error> {
        let inner = self.watch(kind, since)?;
        if selector.is_empty() {
            return Ok(inner);
        }
        Ok(Box::new(Selected {
            inner,
            selector: selector.clone(),
        }))
    }

    /// The names of every object of `kind`, in name order. A backend that can answer without
    /// reading (and decoding) the objects overrides it: a block claim asks for every block's
    /// name, and a full pool has thousands of large blocks.
    fn names(&self, kind: Kind) -> Result<Vec<String>, Error> {
        Ok(self
            .list(kind, &Labels::new())?
            .0
            .into_iter()
            .map(|o| o.name)
            .collect())
    }

    /// The annotations of the Pod `namespace/name` (the CNI plugin reads per-pod IPAM requests
    /// from them). `None` when there is no such Pod, and always for a store without Pods (the
    /// embedded one): with no cluster there are no annotations to honour.
    fn pod_annotations(&self, namespace: &str, name: &str) -> Result<Option<Labels>, Error> {
        let _ = (namespace, name);
        Ok(None)
    }

    /// Whether the store has Node and Pod objects (a Kubernetes cluster's): then Node labels
    /// drive node selectors, and a node or pod that is not there is gone. The embedded store
    /// has neither.
    fn has_nodes(&self) -> bool {
        false
    }

    /// The labels of Node `name`; `None` when there is no such Node (and always for a store
    /// without Node objects).
    fn node_labels(&self, name: &str) -> Result<Option<Labels>, Error> {
        let _ = name;
        Ok(None)
    }

    /// Nodes (all, or only `name`: a field selector) as objects with name and labels, and
    /// the revision to watch from. Empty for a store without Node objects.
    fn list_nodes(&self, name: Option<&str>) -> Result<(Vec<Object>, Revision), Error> {
        let _ = name;
        Ok((Vec::new(), Revision("0".into())))
    }

    /// Changes to Nodes (all, or only `name`) after `since`.
    fn watch_nodes(&self, name: Option<&str>, since: &Revision) -> Result<Box<dyn Watcher>, Error> {
        let _ = (name, since);
        Err(no_cluster("watch Nodes"))
    }

    /// The Lease `namespace/name`; `None` when absent.
    fn lease(&self, namespace: &str, name: &str) -> Result<Option<Lease>, Error> {
        let _ = (namespace, name);
        Err(no_cluster("read a Lease"))
    }

    /// Creates a Lease; [`Error::AlreadyExists`] if someone else did first.
    fn create_lease(&self, lease: &Lease) -> Result<Lease, Error> {
        let _ = lease;
        Err(no_cluster("create a Lease"))
    }

    /// Replaces a Lease if it is still at `lease.revision`; [`Error::Conflict`] otherwise.
    fn update_lease(&self, lease: &Lease) -> Result<Lease, Error> {
        let _ = lease;
        Err(no_cluster("update a Lease"))
    }
}

/// [`Store::watch_selected`]'s default: a whole-kind watch seen through a label selector.
#[derive(Debug)]
struct Selected {
    inner: Box<dyn Watcher>,
    selector: Labels,
}

impl Watcher for Selected {
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchEvent>, Error> {
        Ok(match self.inner.next(timeout)? {
            Some(WatchEvent::Put(o)) if !matches(&o.labels, &self.selector) => {
                Some(WatchEvent::Deleted {
                    name: o.name,
                    revision: o.revision,
                })
            }
            other => other,
        })
    }
}

/// Whether `labels` include all of `selector`.
pub fn matches(labels: &Labels, selector: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn no_cluster(what: &str) -> Error {
    Error::Backend {
        context: what.to_string(),
        source: "this datastore has no Kubernetes objects (Nodes, Pods, Leases)".into(),
    }
}

/// A coordination.k8s.io/v1 Lease: who holds a cluster-wide role, and since when. Holders
/// judge expiry by their own clock (how long the record stayed unchanged), never by comparing
/// `renew_time` with their clock, so clock skew between nodes does not matter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lease {
    pub namespace: String,
    pub name: String,
    /// Empty for a lease not stored yet.
    pub revision: Revision,
    pub holder: Option<String>,
    pub duration_secs: u32,
    /// RFC 3339 with microseconds (the API's MicroTime).
    pub acquire_time: Option<String>,
    pub renew_time: Option<String>,
    pub transitions: u32,
}

/// `SystemTime` as the API's MicroTime: RFC 3339, UTC, microseconds.
pub use reef_config::time::rfc3339_micros as micro_time;

/// The labels IPPool and BGPPeer node selectors match for node `name`: with a store that has
/// Node objects (Kubernetes), the Node's labels (none when the Node does not exist); otherwise
/// (the embedded store) `configured`, the node config's.
pub fn effective_node_labels<S: Store + ?Sized>(
    store: &S,
    name: &str,
    configured: &Labels,
) -> Result<Labels, Error> {
    if store.has_nodes() {
        Ok(store.node_labels(name)?.unwrap_or_default())
    } else {
        Ok(configured.clone())
    }
}

/// Follows node `name`'s labels (see [`effective_node_labels`]): calls `changed` with the
/// labels now and after each change, until it returns false. With Node objects it watches
/// that one Node (a field selector on its name: other nodes' changes cost nothing) and lists
/// again after a lost watch; without, it reports `configured` once and returns. Errors are
/// retried after `retry`; `changed` is not called for them.
pub fn follow_node_labels<S: Store + ?Sized>(
    store: &S,
    name: &str,
    configured: &Labels,
    retry: Duration,
    mut changed: impl FnMut(Labels) -> bool,
) {
    if !store.has_nodes() {
        changed(configured.clone());
        return;
    }
    let mut last: Option<Labels> = None;
    let mut report = |labels: Labels, last: &mut Option<Labels>| -> bool {
        if last.as_ref() == Some(&labels) {
            return true;
        }
        *last = Some(labels.clone());
        changed(labels)
    };
    loop {
        let started = store
            .list_nodes(Some(name))
            .and_then(|(nodes, rev)| Ok((nodes, store.watch_nodes(Some(name), &rev)?)));
        let (nodes, mut watcher) = match started {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(node = name, error = %e, "node labels: list failed; retrying");
                std::thread::sleep(retry);
                continue;
            }
        };
        let now = nodes
            .into_iter()
            .find(|n| n.name == name)
            .map(|n| n.labels)
            .unwrap_or_default();
        if !report(now, &mut last) {
            return;
        }
        loop {
            match watcher.next(retry) {
                Ok(None) => continue,
                Ok(Some(WatchEvent::Put(o))) if o.name == name => {
                    if !report(o.labels, &mut last) {
                        return;
                    }
                }
                Ok(Some(WatchEvent::Deleted { name: n, .. })) if n == name => {
                    if !report(Labels::new(), &mut last) {
                        return;
                    }
                }
                Ok(Some(_)) => {}
                Err(e) => {
                    tracing::debug!(node = name, error = %e, "node labels: watch ended; listing again");
                    break;
                }
            }
        }
    }
}

/// A spec type stored under a kind.
pub trait Spec: Serialize + DeserializeOwned + Clone {
    const KIND: Kind;
}

macro_rules! spec_kind {
    ($($t:ty => $k:ident),* $(,)?) => {
        $(impl Spec for $t { const KIND: Kind = Kind::$k; })*
    };
}

spec_kind! {
    reef_config::IpPoolSpec => IpPool,
    reef_config::IpamBlockSpec => IpamBlock,
    reef_config::BlockAffinitySpec => BlockAffinity,
    reef_config::IpamHandleSpec => IpamHandle,
    reef_config::IpamConfigSpec => IpamConfig,
    reef_config::BgpConfigurationSpec => BgpConfiguration,
    reef_config::BgpPeerSpec => BgpPeer,
    reef_config::ReefNodeSpec => ReefNode,
}

/// A stored object with its spec decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Typed<T> {
    pub name: String,
    pub revision: Revision,
    pub labels: Labels,
    pub spec: T,
    pub status: Option<serde_json::Value>,
}

impl<T: Spec> Typed<T> {
    /// A new object to create (the revision is assigned by the store).
    pub fn new(name: impl Into<String>, spec: T) -> Self {
        Typed {
            name: name.into(),
            revision: Revision(String::new()),
            labels: Labels::new(),
            spec,
            status: None,
        }
    }

    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Decodes a stored object's spec (a watch event's, or a cached list's).
    pub fn decode(o: Object) -> Result<Self, Error> {
        let spec = serde_json::from_value(o.spec).map_err(|e| Error::Decode {
            kind: T::KIND,
            name: o.name.clone(),
            source: e,
        })?;
        Ok(Typed {
            name: o.name,
            revision: o.revision,
            labels: o.labels,
            spec,
            status: o.status,
        })
    }

    fn encode(&self) -> Result<Object, Error> {
        let spec = serde_json::to_value(&self.spec).map_err(|e| Error::Decode {
            kind: T::KIND,
            name: self.name.clone(),
            source: e,
        })?;
        Ok(Object {
            name: self.name.clone(),
            revision: self.revision.clone(),
            labels: self.labels.clone(),
            spec,
            status: self.status.clone(),
        })
    }
}

/// Typed access on any store.
pub trait StoreExt: Store {
    fn get_typed<T: Spec>(&self, name: &str) -> Result<Option<Typed<T>>, Error> {
        self.get(T::KIND, name)?.map(Typed::decode).transpose()
    }

    fn list_typed<T: Spec>(&self, selector: &Labels) -> Result<Vec<Typed<T>>, Error> {
        self.list(T::KIND, selector)?
            .0
            .into_iter()
            .map(Typed::decode)
            .collect()
    }

    fn create_typed<T: Spec>(&self, object: &Typed<T>) -> Result<Typed<T>, Error> {
        Typed::decode(self.create(T::KIND, &object.encode()?)?)
    }

    fn update_typed<T: Spec>(&self, object: &Typed<T>) -> Result<Typed<T>, Error> {
        Typed::decode(self.update(T::KIND, &object.encode()?)?)
    }

    fn update_status_typed<T: Spec>(&self, object: &Typed<T>) -> Result<Typed<T>, Error> {
        Typed::decode(self.update_status(T::KIND, &object.encode()?)?)
    }

    fn delete_typed<T: Spec>(&self, object: &Typed<T>) -> Result<(), Error> {
        self.delete(T::KIND, &object.name, Some(&object.revision))
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

macro_rules! forward_store {
    ($($ptr:ident),*) => {$(
        /// A shared or boxed store is a store (e.g. `Ipam<Box<dyn Store>>` from [`open`]).
        impl<S: Store + ?Sized> Store for ptr::$ptr<S> {
            fn list(&self, kind: Kind, selector: &Labels) -> Result<(Vec<Object>, Revision), Error> {
                (**self).list(kind, selector)
            }
            fn get(&self, kind: Kind, name: &str) -> Result<Option<Object>, Error> {
                (**self).get(kind, name)
            }
            fn create(&self, kind: Kind, object: &Object) -> Result<Object, Error> {
                (**self).create(kind, object)
            }
            fn update(&self, kind: Kind, object: &Object) -> Result<Object, Error> {
                (**self).update(kind, object)
            }
            fn update_status(&self, kind: Kind, object: &Object) -> Result<Object, Error> {
                (**self).update_status(kind, object)
            }
            fn delete(&self, kind: Kind, name: &str, revision: Option<&Revision>) -> Result<(), Error> {
                (**self).delete(kind, name, revision)
            }
            fn watch(&self, kind: Kind, since: &Revision) -> Result<Box<dyn Watcher>, Error> {
                (**self).watch(kind, since)
            }
            fn watch_selected(&self, kind: Kind, selector: &Labels, since: &Revision) -> Result<Box<dyn Watcher>, Error> {
                (**self).watch_selected(kind, selector, since)
            }
            fn names(&self, kind: Kind) -> Result<Vec<String>, Error> {
                (**self).names(kind)
            }
            fn pod_annotations(&self, namespace: &str, name: &str) -> Result<Option<Labels>, Error> {
                (**self).pod_annotations(namespace, name)
            }
            fn has_nodes(&self) -> bool {
                (**self).has_nodes()
            }
            fn node_labels(&self, name: &str) -> Result<Option<Labels>, Error> {
                (**self).node_labels(name)
            }
            fn list_nodes(&self, name: Option<&str>) -> Result<(Vec<Object>, Revision), Error> {
                (**self).list_nodes(name)
            }
            fn watch_nodes(&self, name: Option<&str>, since: &Revision) -> Result<Box<dyn Watcher>, Error> {
                (**self).watch_nodes(name, since)
            }
            fn lease(&self, namespace: &str, name: &str) -> Result<Option<Lease>, Error> {
                (**self).lease(namespace, name)
            }
            fn create_lease(&self, lease: &Lease) -> Result<Lease, Error> {
                (**self).create_lease(lease)
            }
            fn update_lease(&self, lease: &Lease) -> Result<Lease, Error> {
                (**self).update_lease(lease)
            }
        }
    )*};
}

mod ptr {
    pub use std::boxed::Box;
    pub use std::sync::Arc;
}

forward_store!(Box, Arc);

/// Opens the store the node config names. The Kubernetes datastore needs reef-ipam's
/// `kubernetes` feature (on by default). Opening a Kubernetes store reads its kubeconfig but
/// does not talk to the API server yet; errors name the config field and the fix.
pub fn open(datastore: &reef_config::Datastore) -> Result<Box<dyn Store>, Error> {
    open_with(datastore, open_kubernetes)
}

/// As [`open`], with a Kubernetes store's requests running on the runtime of `handle` (the
/// caller's; see [`crate::kubernetes::KubeStore::connect_on`]) instead of a runtime of the
/// store's own. Call it, and the store, from a thread that drives none of that runtime's
/// tasks (`spawn_blocking`, a thread of its own).
#[cfg(feature = "kubernetes")]
pub fn open_on(
    datastore: &reef_config::Datastore,
    handle: tokio::runtime::Handle,
) -> Result<Box<dyn Store>, Error> {
    open_with(datastore, |kubeconfig| {
        Ok(Box::new(crate::kubernetes::KubeStore::connect_on(
            kubeconfig, handle,
        )?))
    })
}

fn open_with(
    datastore: &reef_config::Datastore,
    open_kubernetes: impl FnOnce(Option<&std::path::Path>) -> Result<Box<dyn Store>, Error>,
) -> Result<Box<dyn Store>, Error> {
    match datastore {
        reef_config::Datastore::Embedded { path } => {
            Ok(Box::new(crate::embedded::EmbeddedStore::open(path)?))
        }
        reef_config::Datastore::Kubernetes { kubeconfig } => {
            open_kubernetes(kubeconfig.as_deref()).map_err(|e| match e {
                Error::Backend { context, source } => Error::Backend {
                    context: match kubeconfig {
                        Some(p) => format!(
                            "datastore.kubernetes.kubeconfig ({}): {context} (fix: give a readable kubeconfig for the cluster)",
                            p.display()
                        ),
                        None => format!(
                            "datastore.kubernetes: {context} (fix: set KUBECONFIG or datastore.kubernetes.kubeconfig, or run in a pod with its service account)"
                        ),
                    },
                    source,
                },
                other => other,
            })
        }
    }
}

#[cfg(feature = "kubernetes")]
fn open_kubernetes(kubeconfig: Option<&std::path::Path>) -> Result<Box<dyn Store>, Error> {
    Ok(Box::new(crate::kubernetes::KubeStore::connect(kubeconfig)?))
}

#[cfg(not(feature = "kubernetes"))]
fn open_kubernetes(_: Option<&std::path::Path>) -> Result<Box<dyn Store>, Error> {
    Err(Error::Backend {
        context: "this reef was built without reef-ipam's kubernetes feature".into(),
        source: "use datastore.embedded, or build with the feature (it is on by default)".into(),
    })
}
