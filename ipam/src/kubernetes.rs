//! The Kubernetes datastore: reef's custom resources through the API server (kube-rs).
//!
//! Every write is a compare-and-swap on `metadata.resourceVersion`: a 409 from `replace` or
//! `delete` is [`Error::Conflict`], which [`crate::Ipam`] answers by re-reading and retrying a
//! bounded number of times; a 409 from `create` is [`Error::AlreadyExists`]; a 404 is
//! [`Error::NotFound`]; a 410 on watch is [`Error::Expired`]. Everything else surfaces as
//! [`Error::Backend`] naming the operation and object.
//!
//! The [`Store`] API is blocking (the CNI plugin is a short-lived process). Its requests run
//! as tasks on a tokio runtime while the calling thread waits for the answer:
//! - [`KubeStore::connect`] / [`KubeStore::connect_url`] start a small runtime of the store's
//!   own (the CNI plugins, the CLI), so the store can be called from any thread;
//! - [`KubeStore::connect_on`] runs them on the caller's runtime (the agent: no second
//!   runtime). Its methods must then be called from threads that do not drive that runtime's
//!   tasks (`spawn_blocking`, threads of their own): a waiting worker could hold up the very
//!   request it waits for. They panic on an async thread (`Handle::block_on`).

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions, WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind, TypeMeta};

use crate::store::{Kind, Labels, Lease, Object, Revision, Store, WatchEvent, Watcher};
use crate::Error;

/// Connecting to the API server (a TCP + TLS handshake) takes far less.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request (not a watch) from sending to the whole answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The Kubernetes store.
pub struct KubeStore {
    client: kube::Client,
    /// Where requests run: `rt`'s handle, or the caller's runtime ([`KubeStore::connect_on`]).
    handle: tokio::runtime::Handle,
    /// The store's own runtime (None on the caller's). Taken by `Drop`: dropping a runtime
    /// inside another runtime's context panics.
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore").finish_non_exhaustive()
    }
}

fn backend(context: String) -> impl FnOnce(kube::Error) -> Error {
    move |e| Error::Backend {
        context,
        source: Box::new(e),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("reef-kube-store")
        .enable_all()
        .build()
        .map_err(|e| Error::Backend {
            context: "kubernetes: start runtime".into(),
            source: Box::new(e),
        })
}

/// The client configuration of a kubeconfig file, or (None) the usual inference:
/// `KUBECONFIG`, `~/.kube/config`, then the in-cluster service account. For other clients of
/// the same cluster (the agent's Secret reads) as much as for the store.
pub async fn client_config(kubeconfig: Option<&Path>) -> Result<kube::Config, Error> {
    match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p).map_err(|e| Error::Backend {
                context: format!("kubernetes: read kubeconfig {}", p.display()),
                source: Box::new(e),
            })?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| Error::Backend {
                    context: format!("kubernetes: kubeconfig {}", p.display()),
                    source: Box::new(e),
                })
        }
        None => kube::Config::infer().await.map_err(|e| Error::Backend {
            context: "kubernetes: find a kubeconfig or in-cluster service account".into(),
            source: Box::new(e),
        }),
    }
}

impl KubeStore {
    /// Connects with a kubeconfig file, or (None) the usual inference: `KUBECONFIG`,
    /// `~/.kube/config`, then the in-cluster service account.
    pub fn connect(kubeconfig: Option<&Path>) -> Result<Self, Error> {
        let rt = runtime()?;
        let config = rt.block_on(client_config(kubeconfig))?;
        let handle = rt.handle().clone();
        Self::with_config(config, handle, Some(rt))
    }

    /// As [`KubeStore::connect`], with the requests running on the runtime of `handle` (the
    /// caller's) instead of a runtime of the store's own. Call it, and the store's methods,
    /// from a thread that drives none of that runtime's tasks (see the module's comment); it
    /// panics on an async thread.
    pub fn connect_on(
        kubeconfig: Option<&Path>,
        handle: tokio::runtime::Handle,
    ) -> Result<Self, Error> {
        let config = handle.block_on(client_config(kubeconfig))?;
        Self::with_config(config, handle, None)
    }

    /// Connects to the API server at `url` without credentials (tests and local proxies).
    pub fn connect_url(url: &str) -> Result<Self, Error> {
        let uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| Error::Backend {
                context: format!("kubernetes: API server URL {url:?}"),
                source: Box::new(e),
            })?;
        let rt = runtime()?;
        let handle = rt.handle().clone();
        Self::with_config(kube::Config::new(uri), handle, Some(rt))
    }

    fn with_config(
        mut config: kube::Config,
        handle: tokio::runtime::Handle,
        rt: Option<tokio::runtime::Runtime>,
    ) -> Result<Self, Error> {
        // A dead or overloaded API server must fail an operation, not hang it: kube's own
        // retry of 429/503/504 backs off to minutes (a CNI ADD would outlive the runtime's
        // timeout), so it is off — callers retry conflicts themselves, and the agent and the
        // container runtime retry the rest — and every request is bounded (see `run`).
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.default_retry = false;
        // The client spawns its connection tasks: build it inside the runtime.
        let client = {
            let _guard = handle.enter();
            kube::Client::try_from(config).map_err(backend("kubernetes: build client".into()))?
        };
        Ok(KubeStore { client, handle, rt })
    }

    fn api(&self, kind: Kind) -> (Api<DynamicObject>, ApiResource) {
        let gvk = GroupVersionKind::gvk(reef_config::GROUP, reef_config::VERSION, kind.as_str());
        let ar = ApiResource::from_gvk_with_plural(&gvk, kind.plural());
        (Api::all_with(self.client.clone(), &ar), ar)
    }

    /// Runs `fut` as a task on the store's runtime and waits for it: from any thread with a
    /// runtime of the store's own; on the caller's runtime ([`KubeStore::connect_on`]) only
    /// from a thread that drives none of its tasks — `Handle::block_on` panics on an async
    /// thread rather than let a worker wait for a request that may need that worker.
    fn run<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = mpsc::sync_channel(1);
        let task = self.handle.spawn(async move {
            let _ = tx.send(tokio::time::timeout(REQUEST_TIMEOUT, fut).await);
        });
        if self.rt.is_none() {
            // The task sends before it ends; its end (or cancellation) is all we wait for.
            let _ = self.handle.block_on(task);
        }
        match rx.recv() {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(Error::Backend {
                context: "kubernetes: request".into(),
                source: format!("no answer from the API server within {REQUEST_TIMEOUT:?}").into(),
            }),
            Err(_) => Err(Error::Backend {
                context: "kubernetes: request task ended without an answer".into(),
                source: "runtime shut down".into(),
            }),
        }
    }
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn to_object(d: DynamicObject) -> Object {
    let spec = d
        .data
        .get("spec")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let status = d.data.get("status").cloned().filter(|s| !s.is_null());
    Object {
        name: d.metadata.name.unwrap_or_default(),
        revision: Revision(d.metadata.resource_version.unwrap_or_default()),
        labels: d.metadata.labels.unwrap_or_default(),
        spec,
        status,
    }
}

fn to_dynamic(kind: Kind, o: &Object, with_revision: bool) -> DynamicObject {
    let mut data = serde_json::json!({ "spec": o.spec });
    if let Some(s) = &o.status {
        data["status"] = s.clone();
    }
    DynamicObject {
        types: Some(TypeMeta {
            api_version: format!("{}/{}", reef_config::GROUP, reef_config::VERSION),
            kind: kind.as_str().to_string(),
        }),
        metadata: ObjectMeta {
            name: Some(o.name.clone()),
            labels: (!o.labels.is_empty()).then(|| o.labels.clone()),
            resource_version: (with_revision && !o.revision.0.is_empty())
                .then(|| o.revision.0.clone()),
            ..Default::default()
        },
        data,
    }
}

fn selector(labels: &Labels) -> Option<String> {
    (!labels.is_empty()).then(|| {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

impl Store for KubeStore {
    /// GET /api/v1/namespaces/{namespace}/pods/{name}; a 404 is `None`.
    fn pod_annotations(&self, namespace: &str, name: &str) -> Result<Option<Labels>, Error> {
        let ar = ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "Pod".into(),
            plural: "pods".into(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &ar);
        let n = name.to_string();
        let got = self
            .run(async move { api.get_opt(&n).await })?
            .map_err(backend(format!("kubernetes: get Pod {namespace}/{name}")))?;
        Ok(got.map(|p| p.metadata.annotations.unwrap_or_default()))
    }

    fn list(&self, kind: Kind, sel: &Labels) -> Result<(Vec<Object>, Revision), Error> {
        let (api, _) = self.api(kind);
        let mut lp = ListParams::default();
        if let Some(s) = selector(sel) {
            lp = lp.labels(&s);
        }
        let list = self
            .run(async move { api.list(&lp).await })?
            .map_err(backend(format!("kubernetes: list {kind}")))?;
        let rev = Revision(list.metadata.resource_version.clone().unwrap_or_default());
        let mut items: Vec<Object> = list.items.into_iter().map(to_object).collect();
        items.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((items, rev))
    }

    fn get(&self, kind: Kind, name: &str) -> Result<Option<Object>, Error> {
        let (api, _) = self.api(kind);
        let n = name.to_string();
        let got = self
            .run(async move { api.get_opt(&n).await })?
            .map_err(backend(format!("kubernetes: get {kind} {name}")))?;
        Ok(got.map(to_object))
    }

    fn create(&self, kind: Kind, object: &Object) -> Result<Object, Error> {
        let (api, _) = self.api(kind);
        let d = to_dynamic(kind, object, false);
        match self.run(async move { api.create(&PostParams::default(), &d).await })? {
            Ok(d) => Ok(to_object(d)),
            Err(e) if status_code(&e) == Some(409) => Err(Error::AlreadyExists {
                kind,
                name: object.name.clone(),
            }),
            Err(e) => Err(backend(format!(
                "kubernetes: create {kind} {}",
                object.name
            ))(e)),
        }
    }

    fn update(&self, kind: Kind, object: &Object) -> Result<Object, Error> {
        let (api, _) = self.api(kind);
        // Status changes go through the status subresource only; send the stored one back
        // unchanged by omitting it (the API server ignores status on a main-resource PUT of a
        // resource with a status subresource).
        let d = to_dynamic(
            kind,
            &Object {
                status: None,
                ..object.clone()
            },
            true,
        );
        let n = object.name.clone();
        match self.run(async move { api.replace(&n, &PostParams::default(), &d).await })? {
            Ok(d) => Ok(to_object(d)),
            Err(e) => Err(write_error(kind, &object.name, "update", e)),
        }
    }

    fn update_status(&self, kind: Kind, object: &Object) -> Result<Object, Error> {
        let (api, _) = self.api(kind);
        let d = to_dynamic(kind, object, true);
        let n = object.name.clone();
        match self.run(async move { api.replace_status(&n, &PostParams::default(), &d).await })? {
            Ok(d) => Ok(to_object(d)),
            Err(e) => Err(write_error(kind, &object.name, "update status of", e)),
        }
    }

    fn delete(&self, kind: Kind, name: &str, revision: Option<&Revision>) -> Result<(), Error> {
        let (api, _) = self.api(kind);
        let dp = DeleteParams {
            preconditions: revision.map(|r| Preconditions {
                resource_version: Some(r.0.clone()),
                uid: None,
            }),
            ..Default::default()
        };
        let n = name.to_string();
        match self.run(async move { api.delete(&n, &dp).await })? {
            Ok(_) => Ok(()),
            Err(e) => Err(write_error(kind, name, "delete", e)),
        }
    }

    fn watch(&self, kind: Kind, since: &Revision) -> Result<Box<dyn Watcher>, Error> {
        let (api, _) = self.api(kind);
        Ok(self.spawn_watch(api, WatchParams::default(), kind, since))
    }

    /// The selector goes to the API server: changes to other objects cost nothing here.
    fn watch_selected(
        &self,
        kind: Kind,
        sel: &Labels,
        since: &Revision,
    ) -> Result<Box<dyn Watcher>, Error> {
        let (api, _) = self.api(kind);
        let mut wp = WatchParams::default();
        if let Some(s) = selector(sel) {
            wp = wp.labels(&s);
        }
        Ok(self.spawn_watch(api, wp, kind, since))
    }

    fn has_nodes(&self) -> bool {
        true
    }

    /// GET /api/v1/nodes/{name}; a 404 is `None`.
    fn node_labels(&self, name: &str) -> Result<Option<Labels>, Error> {
        let api = self.nodes();
        let n = name.to_string();
        let got = self
            .run(async move { api.get_opt(&n).await })?
            .map_err(backend(format!("kubernetes: get Node {name}")))?;
        Ok(got.map(|d| d.metadata.labels.unwrap_or_default()))
    }

    fn list_nodes(&self, name: Option<&str>) -> Result<(Vec<Object>, Revision), Error> {
        let api = self.nodes();
        let mut lp = ListParams::default();
        if let Some(n) = name {
            lp = lp.fields(&format!("metadata.name={n}"));
        }
        let list = self
            .run(async move { api.list_metadata(&lp).await })?
            .map_err(backend("kubernetes: list Nodes".into()))?;
        let rev = Revision(list.metadata.resource_version.clone().unwrap_or_default());
        let mut items: Vec<Object> = list
            .items
            .into_iter()
            .map(|m| Object {
                name: m.metadata.name.unwrap_or_default(),
                revision: Revision(m.metadata.resource_version.unwrap_or_default()),
                labels: m.metadata.labels.unwrap_or_default(),
                spec: serde_json::Value::Null,
                status: None,
            })
            .collect();
        items.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((items, rev))
    }

    fn watch_nodes(&self, name: Option<&str>, since: &Revision) -> Result<Box<dyn Watcher>, Error> {
        let mut wp = WatchParams::default();
        if let Some(n) = name {
            wp = wp.fields(&format!("metadata.name={n}"));
        }
        Ok(self.spawn_watch(self.nodes(), wp, Kind::Node, since))
    }

    fn lease(&self, namespace: &str, name: &str) -> Result<Option<Lease>, Error> {
        let api = self.leases(namespace);
        let n = name.to_string();
        let got = self
            .run(async move { api.get_opt(&n).await })?
            .map_err(backend(format!("kubernetes: get Lease {namespace}/{name}")))?;
        Ok(got.map(to_lease))
    }

    fn create_lease(&self, lease: &Lease) -> Result<Lease, Error> {
        let api = self.leases(&lease.namespace);
        let d = from_lease(lease, false);
        match self.run(async move { api.create(&PostParams::default(), &d).await })? {
            Ok(d) => Ok(to_lease(d)),
            Err(e) if status_code(&e) == Some(409) => Err(Error::AlreadyExists {
                kind: Kind::Lease,
                name: lease.name.clone(),
            }),
            Err(e) => Err(backend(format!(
                "kubernetes: create Lease {}/{}",
                lease.namespace, lease.name
            ))(e)),
        }
    }

    fn update_lease(&self, lease: &Lease) -> Result<Lease, Error> {
        let api = self.leases(&lease.namespace);
        let d = from_lease(lease, true);
        let n = lease.name.clone();
        match self.run(async move { api.replace(&n, &PostParams::default(), &d).await })? {
            Ok(d) => Ok(to_lease(d)),
            Err(e) => Err(write_error(Kind::Lease, &lease.name, "update", e)),
        }
    }
}

fn to_lease(d: DynamicObject) -> Lease {
    let spec = d.data.get("spec").cloned().unwrap_or_default();
    let text = |k: &str| spec.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let num = |k: &str| {
        spec.get(k)
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0)
    };
    Lease {
        namespace: d.metadata.namespace.unwrap_or_default(),
        name: d.metadata.name.unwrap_or_default(),
        revision: Revision(d.metadata.resource_version.unwrap_or_default()),
        holder: text("holderIdentity"),
        duration_secs: num("leaseDurationSeconds"),
        acquire_time: text("acquireTime"),
        renew_time: text("renewTime"),
        transitions: num("leaseTransitions"),
    }
}

fn from_lease(l: &Lease, with_revision: bool) -> DynamicObject {
    let mut spec = serde_json::json!({
        "leaseDurationSeconds": l.duration_secs,
        "leaseTransitions": l.transitions,
    });
    for (k, v) in [
        ("holderIdentity", &l.holder),
        ("acquireTime", &l.acquire_time),
        ("renewTime", &l.renew_time),
    ] {
        if let Some(v) = v {
            spec[k] = serde_json::json!(v);
        }
    }
    DynamicObject {
        types: Some(TypeMeta {
            api_version: "coordination.k8s.io/v1".into(),
            kind: "Lease".into(),
        }),
        metadata: ObjectMeta {
            name: Some(l.name.clone()),
            namespace: Some(l.namespace.clone()),
            resource_version: (with_revision && !l.revision.0.is_empty())
                .then(|| l.revision.0.clone()),
            ..Default::default()
        },
        data: serde_json::json!({ "spec": spec }),
    }
}

impl KubeStore {
    fn nodes(&self) -> Api<DynamicObject> {
        let ar = ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "Node".into(),
            plural: "nodes".into(),
        };
        Api::all_with(self.client.clone(), &ar)
    }

    fn leases(&self, namespace: &str) -> Api<DynamicObject> {
        let ar = ApiResource {
            group: "coordination.k8s.io".into(),
            version: "v1".into(),
            api_version: "coordination.k8s.io/v1".into(),
            kind: "Lease".into(),
            plural: "leases".into(),
        };
        Api::namespaced_with(self.client.clone(), namespace, &ar)
    }

    /// Watches `api` from `since`, resuming after each watch request's timeout.
    fn spawn_watch(
        &self,
        api: Api<DynamicObject>,
        params: WatchParams,
        kind: Kind,
        since: &Revision,
    ) -> Box<dyn Watcher> {
        let (tx, rx) = mpsc::channel();
        let mut from = since.0.clone();
        let task = self.handle.spawn(async move {
            // A watch request ends after its timeout; start the next from the last revision.
            loop {
                let stream = match api.watch(&params.clone().timeout(290), &from).await {
                    Ok(s) => s,
                    Err(e) => {
                        let err = if status_code(&e) == Some(410) {
                            Error::Expired {
                                kind,
                                revision: Revision(from.clone()),
                            }
                        } else {
                            backend(format!("kubernetes: watch {kind}"))(e)
                        };
                        let _ = tx.send(Err(err));
                        return;
                    }
                };
                let mut stream = std::pin::pin!(stream);
                while let Some(ev) = stream.next().await {
                    let out = match ev {
                        Ok(kube::core::WatchEvent::Added(d))
                        | Ok(kube::core::WatchEvent::Modified(d)) => {
                            let o = to_object(d);
                            from = o.revision.0.clone();
                            Ok(WatchEvent::Put(o))
                        }
                        Ok(kube::core::WatchEvent::Deleted(d)) => {
                            let o = to_object(d);
                            from = o.revision.0.clone();
                            Ok(WatchEvent::Deleted {
                                name: o.name,
                                revision: o.revision,
                            })
                        }
                        Ok(kube::core::WatchEvent::Bookmark(b)) => {
                            from = b.metadata.resource_version;
                            continue;
                        }
                        Ok(kube::core::WatchEvent::Error(s)) if s.code == 410 => {
                            let _ = tx.send(Err(Error::Expired {
                                kind,
                                revision: Revision(from.clone()),
                            }));
                            return;
                        }
                        Ok(kube::core::WatchEvent::Error(s)) => Err(Error::Backend {
                            context: format!("kubernetes: watch {kind}"),
                            source: Box::new(*s),
                        }),
                        Err(e) => Err(backend(format!("kubernetes: watch {kind}"))(e)),
                    };
                    let failed = out.is_err();
                    if tx.send(out).is_err() || failed {
                        return;
                    }
                }
            }
        });
        Box::new(KubeWatcher { rx, task })
    }
}

fn write_error(kind: Kind, name: &str, what: &str, e: kube::Error) -> Error {
    match status_code(&e) {
        Some(409) => Error::Conflict {
            kind,
            name: name.to_string(),
        },
        Some(404) => Error::NotFound {
            kind,
            name: name.to_string(),
        },
        _ => backend(format!("kubernetes: {what} {kind} {name}"))(e),
    }
}

struct KubeWatcher {
    rx: mpsc::Receiver<Result<WatchEvent, Error>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for KubeWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeWatcher").finish_non_exhaustive()
    }
}

impl Drop for KubeWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher for KubeWatcher {
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchEvent>, Error> {
        match self.rx.recv_timeout(timeout) {
            Ok(ev) => ev.map(Some),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::Backend {
                context: "kubernetes: watch ended".into(),
                source: "the watch task stopped".into(),
            }),
        }
    }
}
