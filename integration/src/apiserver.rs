//! A STAND-IN for the Kubernetes API server, in process, on 127.0.0.1: no real API server runs
//! here (nor can one on this machine). Tests that talk to "Kubernetes" talk to this, and say so.
//!
//! It serves what reef uses, the way the real one does, and nothing more:
//! - the `reef.dev/v1alpha1` custom resources (cluster-scoped): get, list with label
//!   selectors, create, replace and delete with resourceVersion preconditions (409 on
//!   mismatch, 409 AlreadyExists on create), the status subresource, and chunked watch
//!   streams (`?watch=true&resourceVersion=N`);
//! - core/v1 Pods, read-only for clients: `GET /api/v1/namespaces/{ns}/pods/{name}` (404 when
//!   absent); tests put them with [`StandIn::put_pod`];
//! - core/v1 Secrets (`/api/v1/namespaces/{ns}/secrets[/{name}]`, values base64 as the real one
//!   sends them): get, and list and watch with selectors — a client that may read only some
//!   Secrets by name (a Role's `resourceNames`) lists and watches each with the field selector
//!   `metadata.name=<name>`, which is honoured (only that Secret is sent); tests put and delete
//!   them with [`StandIn::put_secret`] and [`StandIn::delete_secret`], seen by watches;
//! - core/v1 ServiceAccounts the same way (`.../serviceaccounts/{name}`; tests create them with
//!   [`StandIn::put_service_account`]) and their `token` subresource: an
//!   authentication.k8s.io/v1 TokenRequest (`POST .../serviceaccounts/{name}/token`) answers
//!   201 with `status.token` and `status.expirationTimestamp`, `spec.expirationSeconds`
//!   defaulted to 3600 and refused below 600 (422), audiences defaulted to the API's, and 404
//!   when the service account does not exist. The tokens are opaque strings, not signed JWTs;
//!   [`StandIn::cap_token_seconds`] shortens their lifetime as kube-apiserver's
//!   `--service-account-max-token-expiration` would (the real flag allows no less than an
//!   hour; tests want seconds);
//! - core/v1 Nodes (cluster-scoped, `/api/v1/nodes`) and coordination.k8s.io/v1 Leases
//!   (namespaced, `/apis/coordination.k8s.io/v1/namespaces/{ns}/leases`) with the same verbs
//!   as the custom resources (Nodes with their status subresource; Leases have none); tests
//!   register and delete Nodes as the kubelet and `kubectl delete node` would with
//!   [`StandIn::put_node`] and [`StandIn::delete_node`];
//! - core/v1 Services (`/api/v1/namespaces/{ns}/services[/{name}[/status]]`, and
//!   `/api/v1/services` to list and watch across namespaces) with the same verbs and the
//!   status subresource: `status` in a create or a main-resource replace is ignored, as the
//!   real server does, so `status.loadBalancer.ingress` is written through `/status` (as a
//!   LoadBalancer controller does). No cluster IP is allocated and no field is defaulted:
//!   tests give `spec.clusterIP`;
//! - discovery.k8s.io/v1 EndpointSlices (`/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices`
//!   and `/apis/discovery.k8s.io/v1/endpointslices`), no status subresource; selected by their
//!   `kubernetes.io/service-name` label as the real ones are. Nothing writes them for the test
//!   (no endpoint controller runs): [`StandIn::put_endpoint_slice`] plays that part;
//! - core/v1 Events (`/api/v1/namespaces/{ns}/events[/{name}]`, `/api/v1/events` across
//!   namespaces) and events.k8s.io/v1 Events (`/apis/events.k8s.io/v1/namespaces/{ns}/events`,
//!   stored apart as on the server), with the same verbs (`metadata.generateName` honoured on
//!   create); [`StandIn::events`] lists both for assertions.
//!
//! Lists and watches take label selectors (`k=v`, `k!=v`, `k`, `!k`) and the field selectors
//! every resource has (`metadata.name`, `metadata.namespace`); a watch started without a
//! resourceVersion first sends the current objects as ADDED; a watch with a selector sees an
//! object that starts matching as ADDED and one that stops matching as DELETED, as from the
//! real server. resourceVersion is one counter across every kind, increasing with each write.
//!
//! No schema validation, no authorization, no pruning, no history compaction (so no 410 Gone).
//! Authentication only as far as tokens go: a request without credentials is served (as if
//! anonymous were allowed everything); one with a bearer token the stand-in did not issue, or
//! issued and expired, gets 401 Unauthorized as from the real server; requests per issued
//! token are counted ([`StandIn::requests_with_token`]). It can inject conflicts: the next N
//! replaces of an object find it changed by "someone else" and get a 409. It can hang
//! ([`StandIn::hang`]): connections are accepted and requests read, but nothing is answered and
//! open watch streams send nothing until it is released, as from a server stuck behind etcd.
//! Large clusters are seeded in one go with [`StandIn::put_custom_resources`], from objects
//! the [`seed`] helpers make (ReefNodes, block affinities, blocks with allocations).
//!
//! ```no_run
//! use reef_integration::apiserver::StandIn;
//! let api = StandIn::start()?;                      // stops when dropped
//! api.put_pod("default", "web-1", &[("reef.dev/ipv4pools", "[\"pool-a\"]")]);
//! let url = api.url();                              // http://127.0.0.1:PORT, no credentials
//! let dir = tempfile::tempdir().unwrap();
//! let kubeconfig = api.write_kubeconfig(dir.path())?; // for clients that read a kubeconfig
//! # Ok::<(), reef_integration::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::Error;

/// Where reef's custom resources live.
const CRD_PREFIX: &str = "/apis/reef.dev/v1alpha1/";
/// Where core/v1 namespaced resources live.
const CORE_PREFIX: &str = "/api/v1/namespaces/";
/// Where discovery.k8s.io/v1 EndpointSlices live.
const DISCOVERY_PREFIX: &str = "/apis/discovery.k8s.io/v1/";
/// Where events.k8s.io/v1 Events live (core/v1 Events under `/api/v1/`).
const EVENTS_PREFIX: &str = "/apis/events.k8s.io/v1/";
/// Where coordination.k8s.io/v1 Leases live (then `{namespace}/leases[/{name}]`).
const LEASE_PREFIX: &str = "/apis/coordination.k8s.io/v1/namespaces/";
/// Request bodies larger than this are refused (413): a test's objects are small.
const MAX_BODY: usize = 16 << 20;

/// A resource key: (plural, name) for cluster-scoped resources, (plural, "ns/name") for
/// namespaced ones (Pods, Secrets, Leases).
type Key = (String, String);

/// One change, as watches report it.
struct Event {
    rev: u64,
    key: Key,
    /// ADDED, MODIFIED or DELETED.
    kind: &'static str,
    object: Value,
    /// The object before a MODIFIED (a selector watch turns it into ADDED or DELETED when
    /// the change makes the object start or stop matching).
    prev: Option<Value>,
}

#[derive(Default)]
struct Inner {
    rev: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Event>,
    conflicts: HashMap<Key, u32>,
    /// Tokens issued by TokenRequest.
    tokens: HashMap<String, Issued>,
    /// Longest token lifetime granted, in seconds (kube-apiserver's
    /// `--service-account-max-token-expiration`); none: as asked.
    max_token_seconds: Option<u64>,
}

/// A token the stand-in issued.
struct Issued {
    expires: SystemTime,
    /// Requests that presented it.
    uses: u64,
}

impl Inner {
    /// Stores `obj` under `key` as a write would: a new resourceVersion, ADDED or MODIFIED for
    /// watches, uid and creation time kept across replaces. Returns the new resourceVersion.
    fn put(&mut self, key: Key, api_version: &str, kind: &str, mut obj: Value) -> u64 {
        self.rev += 1;
        let rev = self.rev;
        let prev = self.objects.get(&key).cloned();
        let (ns, name) = key.1.split_once('/').unwrap_or(("", &key.1));
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        obj["metadata"]["name"] = json!(name);
        if !ns.is_empty() {
            obj["metadata"]["namespace"] = json!(ns);
        }
        obj["metadata"]["resourceVersion"] = json!(rev.to_string());
        obj["metadata"]["uid"] = prev
            .as_ref()
            .map(|p| p["metadata"]["uid"].clone())
            .unwrap_or_else(|| json!(format!("uid-{rev}")));
        obj["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        self.objects.insert(key.clone(), obj.clone());
        let t = if prev.is_some() { "MODIFIED" } else { "ADDED" };
        self.record(rev, key, t, obj, prev);
        rev
    }

    fn record(
        &mut self,
        rev: u64,
        key: Key,
        kind: &'static str,
        object: Value,
        prev: Option<Value>,
    ) {
        self.log.push(Event {
            rev,
            key,
            kind,
            object,
            prev,
        });
    }
}

#[derive(Default)]
struct State {
    inner: Mutex<Inner>,
    changed: Condvar,
    stop: AtomicBool,
    conflicts_sent: AtomicU64,
    /// Answer nothing (see [`StandIn::hang`]).
    hung: AtomicBool,
    requests: AtomicU64,
    /// Requests per (verb, resource, labelSelector, bearer token or not).
    by_kind: Mutex<BTreeMap<RequestKey, u64>>,
}

/// What [`StandIn::request_counts`] counts requests by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestKey {
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete` (as the API server's
    /// audit log names them).
    pub verb: String,
    /// The resource's plural, with `/status` (or another subresource) when addressed.
    pub resource: String,
    /// The `labelSelector` query value, decoded; empty when none.
    pub label_selector: String,
    /// Whether the request presented a bearer token (tests tell clients apart this way: the
    /// stand-in's kubeconfig has none).
    pub with_token: bool,
}

impl RequestKey {
    fn of(req: &Request) -> RequestKey {
        // /api/v1/[namespaces/NS/]PLURAL[/NAME[/SUB]] or /apis/G/V/[namespaces/NS/]PLURAL...
        let rest = req
            .path
            .strip_prefix("/api/v1/")
            .or_else(|| {
                let r = req.path.strip_prefix("/apis/")?;
                r.splitn(3, '/').nth(2)
            })
            .unwrap_or(&req.path);
        let mut seg: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        if seg.len() >= 3 && seg[0] == "namespaces" {
            seg.drain(..2);
        }
        let named = seg.len() >= 2;
        let verb = match req.method.as_str() {
            "GET"
                if req
                    .query
                    .get("watch")
                    .is_some_and(|w| w == "true" || w == "1") =>
            {
                "watch"
            }
            "GET" if named => "get",
            "GET" => "list",
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            other => other,
        };
        let mut resource = seg.first().copied().unwrap_or("").to_string();
        if let Some(sub) = seg.get(2) {
            resource = format!("{resource}/{sub}");
        }
        RequestKey {
            verb: verb.to_lowercase(),
            resource,
            label_selector: req.query.get("labelSelector").cloned().unwrap_or_default(),
            with_token: req.bearer.is_some(),
        }
    }
}

impl State {
    /// The state, also after a serving thread panicked while holding it (the data is plain
    /// values; a half-done request is no worse than a lost one).
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once the server is not hung (or is stopping).
    fn wait_while_hung(&self) {
        while self.hung.load(Ordering::Relaxed) && !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The running stand-in; stops (and joins its accept thread) when dropped.
#[derive(Debug)]
pub struct StandIn {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl StandIn {
    /// Listens on a free port of 127.0.0.1 and serves until dropped.
    pub fn start() -> Result<StandIn, Error> {
        StandIn::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Listens on `bind` (port 0: a free one), e.g. a lab router's address that every node
    /// namespace reaches, and serves until dropped.
    pub fn start_on(bind: SocketAddr) -> Result<StandIn, Error> {
        let listener = TcpListener::bind(bind)
            .map_err(|e| Error::Other(format!("API-server stand-in: bind {bind}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Other(format!("API-server stand-in: local address: {e}")))?;
        // Polled rather than woken by a connection at drop: a stand-in started inside a test's
        // network namespace cannot be reached from the thread that drops it.
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::Other(format!("API-server stand-in: nonblocking: {e}")))?;
        let state = Arc::new(State::default());
        let st = state.clone();
        let accept = std::thread::Builder::new()
            .name("apiserver-standin".into())
            .spawn(move || {
                while !st.stop.load(Ordering::Relaxed) {
                    let conn = match listener.accept() {
                        Ok((c, _)) => c,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    if conn.set_nonblocking(false).is_err() {
                        continue;
                    }
                    let st = st.clone();
                    let _ = std::thread::Builder::new()
                        .name("apiserver-standin-conn".into())
                        .spawn(move || serve(conn, &st));
                }
            })
            .map_err(|e| Error::Other(format!("API-server stand-in: spawn: {e}")))?;
        Ok(StandIn {
            addr,
            state,
            accept: Some(accept),
        })
    }

    /// The base URL clients use: `http://127.0.0.1:PORT` (plain HTTP, no credentials).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig (YAML) whose current context points at the stand-in, without credentials.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: reef-standin\n  cluster:\n    server: {}\n\
             users:\n- name: reef-standin\n  user: {{}}\ncontexts:\n- name: reef-standin\n  context:\n    \
             cluster: reef-standin\n    user: reef-standin\ncurrent-context: reef-standin\n",
            self.url()
        )
    }

    /// Writes [`StandIn::kubeconfig`] to `dir/kubeconfig` and returns that path.
    pub fn write_kubeconfig(&self, dir: &Path) -> Result<PathBuf, Error> {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig()).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }

    /// [`StandIn::kubeconfig`] presenting `token` (one [`StandIn::issue_token`] gave): the
    /// stand-in counts that client's requests apart from the others'.
    pub fn kubeconfig_with_token(&self, token: &str) -> String {
        self.kubeconfig()
            .replace("user: {}", &format!("user: {{token: {token}}}"))
    }

    /// Issues a token for the service account `namespace/name` and writes a kubeconfig that
    /// presents it to `dir/kubeconfig`; returns that path.
    pub fn write_token_kubeconfig(
        &self,
        dir: &Path,
        namespace: &str,
        name: &str,
    ) -> Result<PathBuf, Error> {
        let token = self.issue_token(namespace, name)?;
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig_with_token(&token))
            .map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }

    /// Creates or replaces the Pod `namespace/name` with these annotations (as the kubelet's
    /// view of a pod the runtime is about to wire up). Clients read it with
    /// `GET /api/v1/namespaces/{namespace}/pods/{name}`.
    pub fn put_pod(&self, namespace: &str, name: &str, annotations: &[(&str, &str)]) {
        let mut inner = self.state.lock();
        inner.rev += 1;
        let rev = inner.rev;
        let annotations: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": format!("uid-{rev}"),
                "resourceVersion": rev.to_string(),
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "annotations": annotations,
            },
            "spec": {"containers": [{"name": "main", "image": "pause"}]},
            "status": {"phase": "Pending"},
        });
        inner
            .objects
            .insert(("pods".into(), format!("{namespace}/{name}")), pod);
    }

    /// Creates or replaces the Secret `namespace/name` with these keys and values (an Opaque
    /// Secret; clients get the values base64-encoded in `data`, as from the real API server).
    pub fn put_secret(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        use base64::Engine as _;
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| {
                let b64 = base64::engine::general_purpose::STANDARD.encode(v);
                (k.to_string(), Value::String(b64))
            })
            .collect();
        let secret = json!({"metadata": {}, "type": "Opaque", "data": data});
        let key = ("secrets".to_string(), format!("{namespace}/{name}"));
        self.put_object(key, "v1", "Secret", secret);
    }

    /// Deletes the Secret `namespace/name` (watches see it DELETED); false when absent.
    pub fn delete_secret(&self, namespace: &str, name: &str) -> bool {
        self.delete_object(("secrets".to_string(), format!("{namespace}/{name}")))
    }

    /// Creates the ServiceAccount `namespace/name` (as `kubectl create serviceaccount`), so
    /// TokenRequests for it succeed.
    pub fn put_service_account(&self, namespace: &str, name: &str) {
        let mut inner = self.state.lock();
        inner.rev += 1;
        let rev = inner.rev;
        let sa = json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": format!("uid-{rev}"),
                "resourceVersion": rev.to_string(),
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
        });
        inner.objects.insert(
            ("serviceaccounts".into(), format!("{namespace}/{name}")),
            sa,
        );
    }

    /// Grants tokens at most `secs` seconds of life from now on, whatever a TokenRequest asks
    /// (as `--service-account-max-token-expiration`, but shorter than the real server allows,
    /// so a test can see a token expire).
    pub fn cap_token_seconds(&self, secs: u64) {
        self.state.lock().max_token_seconds = Some(secs);
    }

    /// A day-long token for service account `namespace/name` (created if absent), issued as a
    /// TokenRequest would issue it but without a request: a client that presents it is told
    /// apart in [`StandIn::request_counts`] from one that does not.
    pub fn issue_token(&self, namespace: &str, name: &str) -> Result<String, Error> {
        self.put_service_account(namespace, name);
        let (code, body) = token_request(
            &self.state,
            namespace,
            name,
            &json!({"spec": {"expirationSeconds": 86_400}}),
        );
        match body["status"]["token"].as_str() {
            Some(t) if code == 201 => Ok(t.to_string()),
            _ => Err(Error::Other(format!(
                "API-server stand-in: token for {namespace}/{name}: {code} {body}"
            ))),
        }
    }

    /// The tokens issued so far, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        let inner = self.state.lock();
        let mut t: Vec<(&SystemTime, &String)> =
            inner.tokens.iter().map(|(k, v)| (&v.expires, k)).collect();
        t.sort();
        t.into_iter().map(|(_, k)| k.clone()).collect()
    }

    /// How many requests presented `token` (an issued one; 0 for any other).
    pub fn requests_with_token(&self, token: &str) -> u64 {
        self.state.lock().tokens.get(token).map_or(0, |t| t.uses)
    }

    /// Creates or replaces the Node `name` with these labels and InternalIP addresses, as the
    /// kubelet registers (and re-labels) its Node; watches see ADDED or MODIFIED.
    pub fn put_node(&self, name: &str, labels: &[(&str, &str)], addresses: &[&str]) {
        let mut inner = self.state.lock();
        inner.rev += 1;
        let rev = inner.rev;
        let key = ("nodes".to_string(), name.to_string());
        let prev = inner.objects.get(&key).cloned();
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let addresses: Vec<Value> = addresses
            .iter()
            .map(|a| json!({"type": "InternalIP", "address": a}))
            .collect();
        let uid = prev
            .as_ref()
            .map(|p| p["metadata"]["uid"].clone())
            .unwrap_or_else(|| json!(format!("uid-{rev}")));
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "uid": uid,
                "resourceVersion": rev.to_string(),
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": labels,
            },
            "spec": {},
            "status": {"addresses": addresses},
        });
        inner.objects.insert(key.clone(), node.clone());
        let kind = if prev.is_some() { "MODIFIED" } else { "ADDED" };
        inner.record(rev, key, kind, node, prev);
        self.state.changed.notify_all();
    }

    /// Deletes the Node `name` (as `kubectl delete node`); false when it was absent.
    pub fn delete_node(&self, name: &str) -> bool {
        let mut inner = self.state.lock();
        let key = ("nodes".to_string(), name.to_string());
        let Some(mut o) = inner.objects.remove(&key) else {
            return false;
        };
        inner.rev += 1;
        let rev = inner.rev;
        o["metadata"]["resourceVersion"] = json!(rev.to_string());
        inner.record(rev, key, "DELETED", o, None);
        self.state.changed.notify_all();
        true
    }

    /// Stores `obj` under `key` as a write would: a new resourceVersion, ADDED or MODIFIED for
    /// watches, uid and creation time kept across replaces. Returns the new resourceVersion.
    fn put_object(&self, key: Key, api_version: &str, kind: &str, obj: Value) -> u64 {
        let rev = self.state.lock().put(key, api_version, kind, obj);
        self.state.changed.notify_all();
        rev
    }

    /// Creates or replaces many `reef.dev` custom resources at once, as that many writes
    /// would (one resourceVersion each, ADDED or MODIFIED for watches) but under one lock and
    /// without HTTP: for seeding a large simulated cluster. Each item is the plural (e.g.
    /// `ipamblocks`) and the object, which needs `metadata.name` and may carry
    /// `metadata.labels`, `spec` and `status`. Checked before anything is stored: an unknown
    /// plural or a missing name is an error naming the item, and nothing is stored. Returns
    /// the last resourceVersion written.
    pub fn put_custom_resources(
        &self,
        objects: impl IntoIterator<Item = (String, Value)>,
    ) -> Result<u64, Error> {
        let mut checked = Vec::new();
        for (i, (plural, obj)) in objects.into_iter().enumerate() {
            let Some(kind) = kind_of(&plural) else {
                return Err(Error::Other(format!(
                    "API-server stand-in: item {i}: {plural:?} is no reef.dev resource"
                )));
            };
            let Some(name) = obj["metadata"]["name"].as_str().filter(|n| !n.is_empty()) else {
                return Err(Error::Other(format!(
                    "API-server stand-in: item {i} ({plural}): metadata.name missing"
                )));
            };
            checked.push(((plural.clone(), name.to_string()), kind, obj));
        }
        let mut inner = self.state.lock();
        for (key, kind, obj) in checked {
            inner.put(key, "reef.dev/v1alpha1", kind, obj);
        }
        let rev = inner.rev;
        drop(inner);
        self.state.changed.notify_all();
        Ok(rev)
    }

    /// While `on`, the server answers nothing: it accepts connections and reads requests,
    /// but holds them (no response, connection kept open) and its open watch streams send
    /// nothing, as a server stuck behind its storage. `hang(false)` serves what waited.
    pub fn hang(&self, on: bool) {
        self.state.hung.store(on, Ordering::Relaxed);
        self.state.changed.notify_all();
    }

    fn delete_object(&self, key: Key) -> bool {
        let mut inner = self.state.lock();
        let Some(mut o) = inner.objects.remove(&key) else {
            return false;
        };
        inner.rev += 1;
        let rev = inner.rev;
        o["metadata"]["resourceVersion"] = json!(rev.to_string());
        inner.record(rev, key, "DELETED", o, None);
        self.state.changed.notify_all();
        true
    }

    /// Creates or replaces the Service `ns/name` with this `spec` (as `kubectl apply`; its
    /// status is kept). Returns the resourceVersion written.
    pub fn put_service(&self, ns: &str, name: &str, spec: Value) -> u64 {
        let key = ("services".to_string(), format!("{ns}/{name}"));
        let status = self
            .state
            .lock()
            .objects
            .get(&key)
            .map(|o| o["status"].clone())
            .unwrap_or_else(|| json!({"loadBalancer": {}}));
        self.put_object(
            key,
            "v1",
            "Service",
            json!({"metadata": {}, "spec": spec, "status": status}),
        )
    }

    /// Writes the Service's `status.loadBalancer.ingress` IPs, as a LoadBalancer controller
    /// does through the status subresource; false when the Service does not exist.
    pub fn set_load_balancer_ips(&self, ns: &str, name: &str, ips: &[&str]) -> bool {
        let key = ("services".to_string(), format!("{ns}/{name}"));
        let Some(mut o) = self.state.lock().objects.get(&key).cloned() else {
            return false;
        };
        let ingress: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        o["status"] = json!({"loadBalancer": {"ingress": ingress}});
        self.put_object(key, "v1", "Service", o);
        true
    }

    /// Creates or replaces the Lease `namespace/name` as held by `holder` for `duration_secs`,
    /// acquired and renewed now: a leader elected elsewhere (e.g. another node running the
    /// cluster-wide jobs, so the agent under test does not).
    pub fn put_lease(&self, namespace: &str, name: &str, holder: &str, duration_secs: u32) -> u64 {
        let now = reef_config::time::rfc3339_micros(SystemTime::now());
        self.put_object(
            ("leases".to_string(), format!("{namespace}/{name}")),
            "coordination.k8s.io/v1",
            "Lease",
            json!({"metadata": {}, "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": duration_secs,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            }}),
        )
    }

    /// Creates or replaces the LoadBalancerIPPool `name` with this `spec` (as `kubectl apply`;
    /// its status, which holds the allocations, is kept). Returns the resourceVersion written.
    pub fn put_load_balancer_pool(&self, name: &str, spec: Value) -> u64 {
        let key = ("loadbalancerippools".to_string(), name.to_string());
        let status = self
            .state
            .lock()
            .objects
            .get(&key)
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null);
        let mut obj = json!({"metadata": {}, "spec": spec});
        if !status.is_null() {
            obj["status"] = status;
        }
        self.put_object(key, "reef.dev/v1alpha1", "LoadBalancerIPPool", obj)
    }

    /// Deletes the Service `ns/name`; false when it was absent.
    pub fn delete_service(&self, ns: &str, name: &str) -> bool {
        self.delete_object(("services".to_string(), format!("{ns}/{name}")))
    }

    /// Creates or replaces the EndpointSlice `ns/name` of Service `service`, as the endpoint
    /// slice controller does: `endpoints` are (address, nodeName, ready).
    pub fn put_endpoint_slice(
        &self,
        ns: &str,
        name: &str,
        service: &str,
        endpoints: &[(&str, &str, bool)],
    ) -> u64 {
        let family = match endpoints.first() {
            Some((a, _, _)) if a.contains(':') => "IPv6",
            _ => "IPv4",
        };
        let eps: Vec<Value> = endpoints
            .iter()
            .map(|(a, node, ready)| {
                json!({"addresses": [a], "nodeName": node,
                       "conditions": {"ready": ready, "serving": ready, "terminating": false}})
            })
            .collect();
        self.put_object(
            ("endpointslices".to_string(), format!("{ns}/{name}")),
            "discovery.k8s.io/v1",
            "EndpointSlice",
            json!({
                "metadata": {"labels": {
                    "kubernetes.io/service-name": service,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                }},
                "addressType": family,
                "endpoints": eps,
                "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
            }),
        )
    }

    /// Deletes the EndpointSlice `ns/name`; false when it was absent.
    pub fn delete_endpoint_slice(&self, ns: &str, name: &str) -> bool {
        self.delete_object(("endpointslices".to_string(), format!("{ns}/{name}")))
    }

    /// Every Event stored, core/v1 and events.k8s.io/v1, in key order (as `kubectl get events
    /// -A` would list them).
    pub fn events(&self) -> Vec<Value> {
        self.state
            .lock()
            .objects
            .iter()
            .filter(|(k, _)| k.0 == "events" || k.0 == "events.k8s.io")
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// The stored object `plural/name` (`name` is `namespace/name` for namespaced kinds), as
    /// a client would GET it; for tests' assertions.
    pub fn object(&self, plural: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .objects
            .get(&(plural.to_string(), name.to_string()))
            .cloned()
    }

    /// Removes the Pod `namespace/name` (a GET then answers 404); false when it was absent.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        self.state
            .lock()
            .objects
            .remove(&("pods".into(), format!("{namespace}/{name}")))
            .is_some()
    }

    /// The next `n` replaces (spec or status) of `plural/name` get a 409 after a simulated
    /// concurrent write bumps the object's resourceVersion; `n = 0` stops injecting.
    pub fn inject_conflicts(&self, plural: &str, name: &str, n: u32) {
        self.state
            .lock()
            .conflicts
            .insert((plural.into(), name.into()), n);
    }

    /// Requests served so far, per verb, resource, label selector and whether a token came
    /// with them (a test's own client can use a token to be told apart from the agent's).
    pub fn request_counts(&self) -> BTreeMap<RequestKey, u64> {
        self.state
            .by_kind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many injected conflicts were answered so far.
    pub fn conflicts_sent(&self) -> u64 {
        self.state.conflicts_sent.load(Ordering::Relaxed)
    }

    /// How many requests were served so far (watch streams count once).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        self.state.changed.notify_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn not_found(what: &str, name: &str) -> Value {
    let mut s = status(404, "NotFound", &format!("{what} \"{name}\" not found"));
    s["details"] = json!({"name": name, "kind": what});
    s
}

fn conflict() -> Value {
    status(
        409,
        "Conflict",
        "the object has been modified; please apply your changes to the latest version and try again",
    )
}

fn respond(s: &mut TcpStream, code: u16, body: &Value) {
    let text = body.to_string();
    let _ = write!(
        s,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

/// Percent-decoding of a query value (label selectors arrive encoded).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 3 <= b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(h) = h {
                    out.push(h);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `obj`'s labels satisfy a label selector: comma-separated `key=value`,
/// `key==value`, `key!=value`, `key` (exists) and `!key` (absent) terms.
fn selects(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels[k.trim()].as_str() == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                labels[k.trim()].is_null()
            } else {
                !labels[term].is_null()
            }
        })
}

/// Whether `obj` satisfies a field selector. Like the real API server for most resources,
/// only `metadata.name` and `metadata.namespace` (with `=`, `==` or `!=`).
fn fields_select(obj: &Value, selector: &str) -> Result<bool, String> {
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (k, v, eq) = if let Some((k, v)) = term.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (k, v, true)
        } else {
            return Err(format!("invalid field selector term {term:?}"));
        };
        let have = match k.trim() {
            "metadata.name" => obj["metadata"]["name"].as_str(),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
            other => return Err(format!("field label not supported: {other}")),
        };
        if (have == Some(v.trim())) != eq {
            return Ok(false);
        }
    }
    Ok(true)
}

fn kind_of(plural: &str) -> Option<&'static str> {
    Some(match plural {
        "ippools" => "IPPool",
        "ipamblocks" => "IPAMBlock",
        "blockaffinities" => "BlockAffinity",
        "ipamhandles" => "IPAMHandle",
        "ipamconfigs" => "IPAMConfig",
        "bgpconfigurations" => "BGPConfiguration",
        "bgppeers" => "BGPPeer",
        "reefnodes" => "ReefNode",
        "loadbalancerippools" => "LoadBalancerIPPool",
        _ => return None,
    })
}

/// The collection a request addresses, and how that resource behaves.
#[derive(Debug, Clone)]
struct Resource {
    plural: String,
    /// For namespaced resources (Leases).
    namespace: Option<String>,
    name: Option<String>,
    /// The request is for the `status` subresource.
    status: bool,
    api_version: &'static str,
    kind: &'static str,
    /// The resource has a status subresource: a main-resource PUT leaves `status` alone.
    has_status: bool,
    /// A namespaced kind addressed across every namespace (`/api/v1/services`).
    all_namespaces: bool,
}

impl Resource {
    fn key(&self, name: &str) -> Key {
        match &self.namespace {
            Some(ns) => (self.plural.clone(), format!("{ns}/{name}")),
            None => (self.plural.clone(), name.to_string()),
        }
    }

    /// Whether a stored object belongs to this collection (for a namespaced one, to the
    /// request's namespace).
    fn holds(&self, key: &Key) -> bool {
        key.0 == self.plural
            && match &self.namespace {
                Some(ns) => key.1.split_once('/').is_some_and(|(n, _)| n == ns),
                None => true,
            }
    }
}

/// Maps a path to the resource it names; `None`: the server does not serve it (404).
fn route(path: &str) -> Option<Resource> {
    // [plural, name?, "status"?]
    fn tail(
        seg: &[&str],
        plural: &str,
        api_version: &'static str,
        kind: &'static str,
        has_status: bool,
        namespace: Option<String>,
    ) -> Option<Resource> {
        let (name, status) = match seg {
            [p] if *p == plural => (None, false),
            [p, n] if *p == plural && !n.is_empty() => (Some(n.to_string()), false),
            [p, n, "status"] if *p == plural && !n.is_empty() && has_status => {
                (Some(n.to_string()), true)
            }
            _ => return None,
        };
        Some(Resource {
            plural: plural.to_string(),
            namespace,
            name,
            status,
            api_version,
            kind,
            has_status,
            all_namespaces: false,
        })
    }
    if let Some(rest) = path.strip_prefix(CRD_PREFIX) {
        let seg: Vec<&str> = rest.split('/').collect();
        let kind = kind_of(seg[0])?;
        return tail(&seg, seg[0], "reef.dev/v1alpha1", kind, true, None);
    }
    if let Some(rest) = path.strip_prefix("/api/v1/") {
        let seg: Vec<&str> = rest.split('/').collect();
        return tail(&seg, "nodes", "v1", "Node", true, None);
    }
    if let Some(rest) = path.strip_prefix(LEASE_PREFIX) {
        let seg: Vec<&str> = rest.split('/').collect();
        let (ns, seg) = seg.split_first()?;
        if ns.is_empty() {
            return None;
        }
        return tail(
            seg,
            "leases",
            "coordination.k8s.io/v1",
            "Lease",
            false,
            Some(ns.to_string()),
        );
    }
    None
}

/// Services, EndpointSlices, Events and Secrets: namespaced, and listed or watched across
/// namespaces too.
fn route_namespaced(path: &str) -> Option<Resource> {
    let is_secrets = path.strip_prefix("/api/v1/").is_some_and(|r| {
        let seg: Vec<&str> = r.split('/').collect();
        matches!(
            seg.as_slice(),
            ["secrets", ..] | ["namespaces", _, "secrets", ..]
        )
    });
    let is_events = path.strip_prefix("/api/v1/").is_some_and(|r| {
        let seg: Vec<&str> = r.split('/').collect();
        matches!(
            seg.as_slice(),
            ["events", ..] | ["namespaces", _, "events", ..]
        )
    });
    let (rest, plural, api_version, kind, has_status) =
        if let Some(r) = path.strip_prefix(EVENTS_PREFIX) {
            (r, "events.k8s.io", "events.k8s.io/v1", "Event", false)
        } else if let Some(r) = path.strip_prefix("/api/v1/").filter(|_| is_events) {
            (r, "events", "v1", "Event", false)
        } else if let Some(r) = path.strip_prefix("/api/v1/").filter(|_| is_secrets) {
            (r, "secrets", "v1", "Secret", false)
        } else if let Some(r) = path.strip_prefix("/api/v1/") {
            (r, "services", "v1", "Service", true)
        } else if let Some(r) = path.strip_prefix(DISCOVERY_PREFIX) {
            (
                r,
                "endpointslices",
                "discovery.k8s.io/v1",
                "EndpointSlice",
                false,
            )
        } else {
            return None;
        };
    let seg: Vec<&str> = rest.split('/').collect();
    // events.k8s.io Events are stored apart from core/v1 ones (two kinds, as on the server).
    let in_path = if plural == "events.k8s.io" {
        "events"
    } else {
        plural
    };
    let (namespace, tail) = match seg.as_slice() {
        [p] if *p == in_path => (None, &seg[..]),
        ["namespaces", ns, t @ ..] if !ns.is_empty() && t.first() == Some(&in_path) => {
            (Some(ns.to_string()), t)
        }
        _ => return None,
    };
    let (name, status) = match tail {
        [_] => (None, false),
        [_, n] if !n.is_empty() => (Some(n.to_string()), false),
        [_, n, "status"] if !n.is_empty() && has_status => (Some(n.to_string()), true),
        _ => return None,
    };
    Some(Resource {
        plural: plural.to_string(),
        all_namespaces: namespace.is_none(),
        namespace,
        name,
        status,
        api_version,
        kind,
        has_status,
    })
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    body: Value,
    /// The token of an `Authorization: Bearer` header.
    bearer: Option<String>,
}

/// Reads one HTTP/1.1 request; None when the peer sent nothing usable.
fn read_request(s: &TcpStream) -> Option<Result<Request, (u16, Value)>> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut len = 0usize;
    let mut bearer = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            } else if k.eq_ignore_ascii_case("authorization") {
                bearer = v
                    .trim()
                    .strip_prefix("Bearer ")
                    .map(|t| t.trim().to_string());
            }
        }
    }
    if len > MAX_BODY {
        return Some(Err((
            413,
            status(413, "RequestEntityTooLarge", "request body too large"),
        )));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let body = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return Some(Err((
                    400,
                    status(400, "BadRequest", &format!("body is not JSON: {e}")),
                )))
            }
        }
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect();
    Some(Ok(Request {
        method,
        path: path.to_string(),
        query,
        body,
        bearer,
    }))
}

fn serve(mut s: TcpStream, st: &State) {
    // A client that sends less than it announced must not hold a thread for ever.
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let read = read_request(&s);
    // A hung server has read the request and answers nothing until released.
    st.wait_while_hung();
    let req = match read {
        None => return,
        Some(Err((code, body))) => return respond(&mut s, code, &body),
        Some(Ok(r)) => r,
    };
    st.requests.fetch_add(1, Ordering::Relaxed);
    *st.by_kind
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(RequestKey::of(&req))
        .or_default() += 1;
    if let Some(token) = &req.bearer {
        let mut inner = st.lock();
        let valid = match inner.tokens.get_mut(token) {
            Some(t) if t.expires > SystemTime::now() => {
                t.uses += 1;
                true
            }
            _ => false,
        };
        drop(inner);
        if !valid {
            return respond(&mut s, 401, &status(401, "Unauthorized", "Unauthorized"));
        }
    }
    if let Some(res) = route_namespaced(&req.path) {
        // A collection across namespaces is read-only (list and watch), as on the real server.
        if res.all_namespaces && req.method != "GET" {
            return respond(
                &mut s,
                405,
                &status(
                    405,
                    "MethodNotAllowed",
                    &format!("{} {}", req.method, req.path),
                ),
            );
        }
        return serve_object(s, st, req, res);
    }
    if let Some(rest) = req.path.strip_prefix(CORE_PREFIX) {
        return serve_core(s, st, &req, rest);
    }
    match route(&req.path) {
        Some(res) => serve_object(s, st, req, res),
        None => respond(
            &mut s,
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        ),
    }
}

/// core/v1 namespaced: GET of one Pod or ServiceAccount; a ServiceAccount's TokenRequest.
fn serve_core(mut s: TcpStream, st: &State, req: &Request, rest: &str) {
    let seg: Vec<&str> = rest.split('/').collect();
    match (req.method.as_str(), seg.as_slice()) {
        ("POST", [ns, "serviceaccounts", name, "token"]) if !ns.is_empty() && !name.is_empty() => {
            let (code, body) = token_request(st, ns, name, &req.body);
            respond(&mut s, code, &body)
        }
        ("GET", [ns, kind @ ("pods" | "serviceaccounts"), name])
            if !ns.is_empty() && !name.is_empty() =>
        {
            let got = st
                .lock()
                .objects
                .get(&(kind.to_string(), format!("{ns}/{name}")))
                .cloned();
            match got {
                Some(obj) => respond(&mut s, 200, &obj),
                None => respond(&mut s, 404, &not_found(kind, name)),
            }
        }
        _ => respond(
            &mut s,
            405,
            &status(
                405,
                "MethodNotAllowed",
                &format!(
                    "{} {}: the stand-in serves only GET of one Pod or ServiceAccount, and TokenRequests",
                    req.method, req.path
                ),
            ),
        ),
    }
}

/// The audiences a token gets when the request names none (the API server's own, as with
/// kube-apiserver's default `--api-audiences`).
const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// An authentication.k8s.io/v1 TokenRequest for the ServiceAccount `ns/name`: (code, body).
fn token_request(st: &State, ns: &str, name: &str, body: &Value) -> (u16, Value) {
    const GV: &str = "authentication.k8s.io/v1";
    for (field, want) in [("apiVersion", GV), ("kind", "TokenRequest")] {
        if let Some(have) = body[field].as_str() {
            if have != want {
                let msg =
                    format!("{field} {have:?}: the token subresource takes a {GV} TokenRequest");
                return (400, status(400, "BadRequest", &msg));
            }
        }
    }
    let invalid = |msg: String| {
        let mut s = status(
            422,
            "Invalid",
            &format!("TokenRequest.authentication.k8s.io \"{name}\" is invalid: {msg}"),
        );
        s["details"] =
            json!({"name": name, "group": "authentication.k8s.io", "kind": "TokenRequest"});
        (422, s)
    };
    let asked = match &body["spec"]["expirationSeconds"] {
        Value::Null => 3600,
        v => match v.as_i64() {
            Some(n) => n,
            None => {
                return invalid(format!(
                    "spec.expirationSeconds: Invalid value: {v}: must be an integer"
                ))
            }
        },
    };
    // The real server's validation (pkg/apis/authentication/validation).
    if asked < 600 {
        return invalid(format!(
            "spec.expirationSeconds: Invalid value: {asked}: may not specify a duration less than 10 minutes"
        ));
    }
    if asked > 1 << 32 {
        return invalid(format!(
            "spec.expirationSeconds: Invalid value: {asked}: may not specify a duration larger than 2^32 seconds"
        ));
    }
    let mut audiences: Vec<Value> = body["spec"]["audiences"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences.push(json!(API_AUDIENCE));
    }
    let mut inner = st.lock();
    if !inner
        .objects
        .contains_key(&("serviceaccounts".to_string(), format!("{ns}/{name}")))
    {
        return (404, not_found("serviceaccounts", name));
    }
    let secs = inner
        .max_token_seconds
        .map_or(asked as u64, |m| m.min(asked as u64));
    inner.rev += 1;
    let rev = inner.rev;
    let token = format!("reef-standin-token.{ns}.{name}.{rev}");
    let now = SystemTime::now();
    let expires = now + Duration::from_secs(secs);
    inner
        .tokens
        .insert(token.clone(), Issued { expires, uses: 0 });
    let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    (
        201,
        json!({
            "kind": "TokenRequest",
            "apiVersion": GV,
            "metadata": {
                "name": name,
                "namespace": ns,
                "creationTimestamp": reef_config::time::rfc3339_secs(since_epoch(now)),
            },
            "spec": {
                "audiences": audiences,
                "expirationSeconds": secs,
                "boundObjectRef": body["spec"]["boundObjectRef"].clone(),
            },
            "status": {
                "token": token,
                "expirationTimestamp": reef_config::time::rfc3339_secs(since_epoch(expires)),
            },
        }),
    )
}

/// Label and field selectors of a list or watch.
struct Selectors {
    labels: String,
    fields: String,
}

impl Selectors {
    fn of(q: &HashMap<String, String>) -> Result<Selectors, Value> {
        let sel = Selectors {
            labels: q.get("labelSelector").cloned().unwrap_or_default(),
            fields: q.get("fieldSelector").cloned().unwrap_or_default(),
        };
        // Reject an unsupported field selector before answering anything (as the real one).
        fields_select(&json!({"metadata": {}}), &sel.fields)
            .map_err(|e| status(400, "BadRequest", &e))?;
        Ok(sel)
    }

    fn matches(&self, o: &Value) -> bool {
        selects(o, &self.labels) && fields_select(o, &self.fields).unwrap_or(false)
    }
}

fn serve_object(mut s: TcpStream, st: &State, mut req: Request, res: Resource) {
    let q = &req.query;
    let name = res.name.clone().unwrap_or_default();
    let mut inner = st.lock();
    match (req.method.as_str(), res.name.is_some()) {
        ("GET", false) => {
            let sel = match Selectors::of(q) {
                Ok(s) => s,
                Err(body) => return respond(&mut s, 400, &body),
            };
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                drop(inner);
                return watch(s, st, &res, &sel, q);
            }
            let items: Vec<Value> = inner
                .objects
                .iter()
                .filter(|(k, o)| res.holds(k) && sel.matches(o))
                .map(|(_, o)| o.clone())
                .collect();
            let rev = inner.rev.to_string();
            respond(
                &mut s,
                200,
                &json!({"apiVersion": res.api_version, "kind": format!("{}List", res.kind),
                        "metadata": {"resourceVersion": rev}, "items": items}),
            );
        }
        ("GET", true) => match inner.objects.get(&res.key(&name)) {
            Some(o) => respond(&mut s, 200, o),
            None => respond(&mut s, 404, &not_found(&res.plural, &name)),
        },
        ("POST", false) => {
            let mut name = req.body["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if let Some(prefix) = req.body["metadata"]["generateName"]
                .as_str()
                .filter(|_| name.is_empty())
            {
                // The real server appends five random characters; the counter is unique too.
                name = format!("{prefix}{:05x}", inner.rev + 1);
            }
            req.body["metadata"]["name"] = json!(name);
            if name.is_empty() {
                return respond(
                    &mut s,
                    422,
                    &status(422, "Invalid", "metadata.name: Required value"),
                );
            }
            let key = res.key(&name);
            if inner.objects.contains_key(&key) {
                let mut body = status(
                    409,
                    "AlreadyExists",
                    &format!("{} \"{name}\" already exists", res.plural),
                );
                body["details"] = json!({"name": name, "kind": res.plural});
                return respond(&mut s, 409, &body);
            }
            inner.rev += 1;
            let rev = inner.rev;
            let mut o = req.body;
            o["apiVersion"] = json!(res.api_version);
            o["kind"] = json!(res.kind);
            if res.plural == "services" {
                // The real server resets a new Service's status (its strategy does).
                o["status"] = json!({"loadBalancer": {}});
            }
            if let Some(ns) = &res.namespace {
                o["metadata"]["namespace"] = json!(ns);
            }
            o["metadata"]["resourceVersion"] = json!(rev.to_string());
            o["metadata"]["uid"] = json!(format!("uid-{rev}"));
            o["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            inner.objects.insert(key.clone(), o.clone());
            inner.record(rev, key, "ADDED", o.clone(), None);
            st.changed.notify_all();
            respond(&mut s, 201, &o);
        }
        ("PUT", true) => {
            let key = res.key(&name);
            let Some(cur) = inner.objects.get(&key).cloned() else {
                return respond(&mut s, 404, &not_found(&res.plural, &name));
            };
            let injected = (res.plural.clone(), name.clone());
            if let Some(n) = inner.conflicts.get_mut(&injected).filter(|n| **n > 0) {
                *n -= 1;
                // Someone else writes the object first.
                inner.rev += 1;
                let rev = inner.rev;
                let mut o = cur.clone();
                o["metadata"]["resourceVersion"] = json!(rev.to_string());
                inner.objects.insert(key.clone(), o.clone());
                inner.record(rev, key, "MODIFIED", o, Some(cur));
                st.conflicts_sent.fetch_add(1, Ordering::Relaxed);
                st.changed.notify_all();
                return respond(&mut s, 409, &conflict());
            }
            if req.body["metadata"]["resourceVersion"] != cur["metadata"]["resourceVersion"] {
                return respond(&mut s, 409, &conflict());
            }
            inner.rev += 1;
            let rev = inner.rev;
            let mut o = if res.status {
                let mut o = cur.clone();
                o["status"] = req.body["status"].clone();
                o
            } else {
                let mut o = req.body;
                o["apiVersion"] = json!(res.api_version);
                o["kind"] = json!(res.kind);
                // A main-resource PUT leaves the status subresource alone.
                if res.has_status {
                    match cur.get("status") {
                        Some(st) => o["status"] = st.clone(),
                        None => {
                            if let Some(m) = o.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                for f in ["uid", "creationTimestamp", "name", "namespace"] {
                    if let Some(v) = cur["metadata"].get(f) {
                        o["metadata"][f] = v.clone();
                    }
                }
                o
            };
            o["metadata"]["resourceVersion"] = json!(rev.to_string());
            inner.objects.insert(key.clone(), o.clone());
            inner.record(rev, key, "MODIFIED", o.clone(), Some(cur));
            st.changed.notify_all();
            respond(&mut s, 200, &o);
        }
        ("DELETE", true) => {
            let key = res.key(&name);
            let Some(cur) = inner.objects.get(&key).cloned() else {
                return respond(&mut s, 404, &not_found(&res.plural, &name));
            };
            if let Some(want) = req.body["preconditions"]["resourceVersion"].as_str() {
                if cur["metadata"]["resourceVersion"].as_str() != Some(want) {
                    return respond(
                        &mut s,
                        409,
                        &status(409, "Conflict", "precondition failed: resourceVersion"),
                    );
                }
            }
            inner.objects.remove(&key);
            inner.rev += 1;
            let rev = inner.rev;
            let mut o = cur;
            o["metadata"]["resourceVersion"] = json!(rev.to_string());
            inner.record(rev, key, "DELETED", o.clone(), None);
            st.changed.notify_all();
            respond(&mut s, 200, &o);
        }
        _ => respond(
            &mut s,
            405,
            &status(
                405,
                "MethodNotAllowed",
                &format!("{} {}", req.method, req.path),
            ),
        ),
    }
}

/// What a watch sends for one logged change, seen through its selectors (as the real API
/// server: an object that starts matching is ADDED, one that stops matching is DELETED).
fn seen_through(sel: &Selectors, e: &Event) -> Option<&'static str> {
    let now = sel.matches(&e.object);
    match e.kind {
        "MODIFIED" => match (e.prev.as_ref().map(|p| sel.matches(p)), now) {
            (Some(true), true) => Some("MODIFIED"),
            (Some(false) | None, true) => Some("ADDED"),
            (Some(true), false) => Some("DELETED"),
            _ => None,
        },
        k => now.then_some(k),
    }
}

fn watch(
    mut s: TcpStream,
    st: &State,
    res: &Resource,
    sel: &Selectors,
    q: &HashMap<String, String>,
) {
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(30);
    let end = Instant::now() + Duration::from_secs(timeout);
    if s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .is_err()
    {
        return;
    }
    let send = |s: &mut TcpStream, t: &str, o: &Value| {
        let line = format!("{}\n", json!({"type": t, "object": o}));
        write!(s, "{:x}\r\n{line}\r\n", line.len()).is_ok()
    };
    let mut inner = st.lock();
    // No resourceVersion (or "0"): the current state as ADDED events, then what follows.
    let mut from: u64 = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => {
            let now: Vec<Value> = inner
                .objects
                .iter()
                .filter(|(k, o)| res.holds(k) && sel.matches(o))
                .map(|(_, o)| o.clone())
                .collect();
            let rev = inner.rev;
            drop(inner);
            for o in &now {
                if !send(&mut s, "ADDED", o) {
                    return;
                }
            }
            inner = st.lock();
            rev
        }
        Some(r) => match r.parse() {
            Ok(r) => r,
            Err(_) => {
                drop(inner);
                let body = status(400, "BadRequest", &format!("invalid resourceVersion {r:?}"));
                let _ = send(&mut s, "ERROR", &body);
                let _ = s.write_all(b"0\r\n\r\n");
                return;
            }
        },
    };
    while Instant::now() < end && !st.stop.load(Ordering::Relaxed) {
        if st.hung.load(Ordering::Relaxed) {
            drop(inner);
            st.wait_while_hung();
            inner = st.lock();
            continue;
        }
        // The log is in revision order: skip what this stream has sent without scanning it
        // (a seeded cluster's log holds hundreds of thousands of events).
        let start = inner.log.partition_point(|e| e.rev <= from);
        let events: Vec<(u64, &'static str, Value)> = inner.log[start..]
            .iter()
            .filter(|e| res.holds(&e.key))
            .filter_map(|e| seen_through(sel, e).map(|t| (e.rev, t, e.object.clone())))
            .collect();
        from = inner.rev.max(from);
        drop(inner);
        for (_, t, o) in events {
            if !send(&mut s, t, &o) {
                return;
            }
        }
        let _ = s.flush();
        inner = st.lock();
        if inner.rev > from {
            continue;
        }
        inner = st
            .changed
            .wait_timeout(inner, Duration::from_millis(100))
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
    drop(inner);
    // Even the end of a stream is an answer.
    st.wait_while_hung();
    let _ = s.write_all(b"0\r\n\r\n");
}

/// Objects for [`StandIn::put_custom_resources`] when seeding a simulated cluster: a node's
/// ReefNode, its block affinity and its block with allocations, written as reef-ipam writes
/// them. Object names of affinities and blocks are the caller's (reef-ipam's `affinity_name`
/// and `block_name`: this crate does not link reef-ipam).
pub mod seed {
    use reef_config::crds::{
        AffinityState, Allocation, AllocationAttributes, BlockAffinitySpec, IpamBlockSpec,
        ReefNodeSpec,
    };
    use serde_json::{json, Value};

    /// A custom resource: the plural and `{metadata: {name, labels}, spec}`.
    pub fn custom(
        plural: &str,
        name: &str,
        labels: Value,
        spec: impl serde::Serialize,
    ) -> (String, Value) {
        // reef's specs are structs with string keys: they always serialize.
        let spec = serde_json::to_value(spec).expect("a spec serializes");
        (
            plural.to_string(),
            json!({"metadata": {"name": name, "labels": labels}, "spec": spec}),
        )
    }

    /// Node `name`'s ReefNode with `address` (with its prefix length, e.g. `10.0.0.2/24`).
    pub fn reef_node(name: &str, address: &str) -> (String, Value) {
        let spec: ReefNodeSpec =
            serde_json::from_value(json!({ "address": address })).expect("a node address");
        custom("reefnodes", name, json!({}), spec)
    }

    /// `node`'s Confirmed affinity for block `cidr`, named `name`.
    pub fn affinity(name: &str, node: &str, cidr: &str) -> (String, Value) {
        let block = block_spec(cidr);
        let spec = BlockAffinitySpec {
            node: node.to_string(),
            cidr: block.cidr,
            state: AffinityState::Confirmed,
        };
        custom(
            "blockaffinities",
            name,
            json!({"reef.dev/node": node}),
            spec,
        )
    }

    /// Block `cidr` of `size` addresses, affine to `node`, named `name`, with `pods`
    /// allocations (ordinals `0..pods`, handles `reef.<node>-pod<o>`, pods
    /// `bench/<node>-pod<o>`), labelled by node and free space as reef-ipam labels blocks.
    pub fn block(name: &str, node: &str, cidr: &str, size: u32, pods: u32) -> (String, Value) {
        let mut spec = block_spec(cidr);
        spec.affinity = Some(node.to_string());
        spec.allocations = (0..pods)
            .map(|o| Allocation {
                ordinal: o,
                handle_id: format!("reef.{node}-pod{o}"),
                sequence: u64::from(o) + 1,
                attributes: AllocationAttributes {
                    pod_namespace: Some("bench".into()),
                    pod_name: Some(format!("{node}-pod{o}")),
                    node: Some(node.to_string()),
                    purpose: None,
                    allocated_at: 1_767_225_600,
                },
            })
            .collect();
        spec.unallocated = (pods..size).collect();
        spec.sequence_number = u64::from(pods);
        spec.in_use = pods;
        spec.free = size - pods;
        let has_free = if pods < size { "true" } else { "false" };
        let labels = json!({"reef.dev/node": node, "reef.dev/has-free": has_free});
        custom("ipamblocks", name, labels, spec)
    }

    fn block_spec(cidr: &str) -> IpamBlockSpec {
        serde_json::from_value(json!({ "cidr": cidr })).expect("a block CIDR")
    }
}

#[cfg(test)]
mod tests {
    //! The stand-in's own behaviour, over raw HTTP (the reef.dev resources are exercised by
    //! reef-ipam's store conformance suite through kube-rs).
    use super::*;

    /// One HTTP/1.1 request; returns (status code, JSON body).
    fn call(api: &StandIn, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut s = TcpStream::connect(api.addr()).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out[9..12].parse().unwrap();
        let (_, text) = out.split_once("\r\n\r\n").unwrap();
        (code, serde_json::from_str(text).unwrap())
    }

    #[test]
    fn secrets_are_served_base64_and_404_when_absent() {
        let api = StandIn::start().unwrap();
        let (code, _) = call(
            &api,
            "GET",
            "/api/v1/namespaces/reef-system/secrets/bgp",
            None,
        );
        assert_eq!(code, 404);
        api.put_secret("reef-system", "bgp", &[("router", "s3cret")]);
        let (code, secret) = call(
            &api,
            "GET",
            "/api/v1/namespaces/reef-system/secrets/bgp",
            None,
        );
        assert_eq!(code, 200);
        assert_eq!(secret["kind"], "Secret");
        assert_eq!(secret["data"]["router"], "czNjcmV0");
        let (code, _) = call(&api, "GET", "/api/v1/namespaces/default/secrets/bgp", None);
        assert_eq!(code, 404, "Secrets are namespaced");
    }

    /// A client allowed only some Secrets by name lists and watches each with the field
    /// selector `metadata.name=<name>`: it gets that Secret and nothing of the others.
    #[test]
    fn secrets_listed_and_watched_by_name_show_only_that_secret() {
        let api = StandIn::start().unwrap();
        api.put_secret("reef-system", "bgp", &[("router", "one")]);
        api.put_secret("reef-system", "other", &[("k", "v")]);
        api.put_secret("default", "bgp", &[("router", "elsewhere")]);
        let base = "/api/v1/namespaces/reef-system/secrets";
        let (code, list) = call(
            &api,
            "GET",
            &format!("{base}?fieldSelector=metadata.name%3Dbgp"),
            None,
        );
        assert_eq!(code, 200, "{list}");
        assert_eq!(list["kind"], "SecretList");
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{list}");
        assert_eq!(
            (&items[0]["metadata"]["name"], &items[0]["data"]["router"]),
            (&json!("bgp"), &json!("b25l"))
        );
        let rev = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        // Changes of other Secrets are not sent; the named one's are, and its deletion.
        api.put_secret("reef-system", "other", &[("k", "w")]);
        api.put_secret("reef-system", "bgp", &[("router", "two")]);
        api.put_secret("default", "bgp", &[("router", "x")]);
        assert!(api.delete_secret("reef-system", "bgp"));
        assert!(!api.delete_secret("reef-system", "bgp"));
        let seen = watch_events(
            &api,
            &format!(
                "{base}?watch=true&resourceVersion={rev}&fieldSelector=metadata.name%3Dbgp&timeoutSeconds=1"
            ),
            3,
        );
        assert_eq!(
            seen,
            [
                ("MODIFIED".into(), "bgp".into()),
                ("DELETED".into(), "bgp".into())
            ]
        );
    }

    #[test]
    fn pods_are_served_with_their_annotations_and_404_when_absent() {
        let api = StandIn::start().unwrap();
        let (code, body) = call(&api, "GET", "/api/v1/namespaces/default/pods/web-1", None);
        assert_eq!(code, 404);
        assert_eq!(body["reason"], "NotFound");
        assert_eq!(body["code"], 404);

        api.put_pod(
            "default",
            "web-1",
            &[("reef.dev/ipAddrs", "[\"10.0.0.7\"]")],
        );
        let (code, pod) = call(&api, "GET", "/api/v1/namespaces/default/pods/web-1", None);
        assert_eq!(code, 200);
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["metadata"]["namespace"], "default");
        assert_eq!(
            pod["metadata"]["annotations"]["reef.dev/ipAddrs"],
            "[\"10.0.0.7\"]"
        );
        // Namespaces are separate.
        let (code, _) = call(&api, "GET", "/api/v1/namespaces/other/pods/web-1", None);
        assert_eq!(code, 404);
        // Pods are read-only for clients.
        let (code, _) = call(
            &api,
            "DELETE",
            "/api/v1/namespaces/default/pods/web-1",
            None,
        );
        assert_eq!(code, 405);
        assert!(api.delete_pod("default", "web-1"));
        assert!(!api.delete_pod("default", "web-1"));
        let (code, _) = call(&api, "GET", "/api/v1/namespaces/default/pods/web-1", None);
        assert_eq!(code, 404);
    }

    #[test]
    fn custom_resources_compare_and_swap_and_conflicts_can_be_injected() {
        let api = StandIn::start().unwrap();
        let p = "/apis/reef.dev/v1alpha1/ippools";
        let obj = json!({"metadata": {"name": "a"}, "spec": {"cidr": "10.0.0.0/16"}});
        let (code, a) = call(&api, "POST", p, Some(&obj));
        assert_eq!(code, 201);
        assert_eq!(call(&api, "POST", p, Some(&obj)).0, 409);
        let mut b = a.clone();
        b["spec"]["cidr"] = json!("10.1.0.0/16");
        let (code, b) = call(&api, "PUT", &format!("{p}/a"), Some(&b));
        assert_eq!(code, 200);
        // A write from the old version loses.
        assert_eq!(call(&api, "PUT", &format!("{p}/a"), Some(&a)).0, 409);
        api.inject_conflicts("ippools", "a", 1);
        assert_eq!(call(&api, "PUT", &format!("{p}/a"), Some(&b)).0, 409);
        assert_eq!(api.conflicts_sent(), 1);
        let (_, list) = call(&api, "GET", p, None);
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(
            call(&api, "GET", "/apis/reef.dev/v1alpha1/ippools/zz", None).0,
            404
        );
        // Malformed input is an error answer, not a crash of the stand-in.
        let mut s = TcpStream::connect(api.addr()).unwrap();
        write!(s, "POST {p} HTTP/1.1\r\nContent-Length: 3\r\n\r\n{{x}}").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    }

    /// Reads a watch stream until `n` events arrived (or the stream ended).
    fn watch_events(api: &StandIn, path: &str, n: usize) -> Vec<(String, String)> {
        let mut s = TcpStream::connect(api.addr()).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut out = Vec::new();
        let mut line = String::new();
        while out.len() < n && r.read_line(&mut line).unwrap_or(0) > 0 {
            // Chunk-size lines are hex; all-decimal ones ("145") also parse as JSON.
            if let Some(v) = serde_json::from_str::<Value>(line.trim())
                .ok()
                .filter(|v| v.get("type").is_some())
            {
                let name = v["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                out.push((v["type"].as_str().unwrap_or("").to_string(), name));
            }
            line.clear();
        }
        out
    }

    #[test]
    fn nodes_and_leases_behave_like_the_real_api() {
        let api = StandIn::start().unwrap();
        api.put_node("n1", &[("zone", "a")], &["192.168.1.1"]);
        api.put_node("n2", &[("zone", "b")], &["192.168.1.2"]);
        let (code, list) = call(&api, "GET", "/api/v1/nodes?labelSelector=zone%3Da", None);
        assert_eq!(code, 200);
        assert_eq!(list["kind"], "NodeList");
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        let (_, list) = call(
            &api,
            "GET",
            "/api/v1/nodes?fieldSelector=metadata.name%3Dn2",
            None,
        );
        assert_eq!(list["items"][0]["metadata"]["name"], "n2");
        let (code, body) = call(&api, "GET", "/api/v1/nodes?fieldSelector=spec.x%3D1", None);
        assert_eq!((code, body["kind"].as_str()), (400, Some("Status")));
        let rev: u64 = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        // A watch on one node by name: n2's changes never show; n1 relabelled, then deleted.
        api.put_node("n2", &[("zone", "c")], &["192.168.1.2"]);
        api.put_node("n1", &[("zone", "b")], &["192.168.1.1"]);
        assert!(api.delete_node("n1"));
        let ev = watch_events(
            &api,
            &format!("/api/v1/nodes?watch=true&resourceVersion={rev}&fieldSelector=metadata.name%3Dn1&timeoutSeconds=1"),
            2,
        );
        assert_eq!(
            ev,
            [
                ("MODIFIED".into(), "n1".into()),
                ("DELETED".into(), "n1".into())
            ]
        );
        // A label-selector watch sees an object stop matching as DELETED.
        let ev = watch_events(
            &api,
            &format!("/api/v1/nodes?watch=true&resourceVersion={rev}&labelSelector=zone%3Db&timeoutSeconds=1"),
            3,
        );
        assert_eq!(ev[0], ("DELETED".into(), "n2".into()), "{ev:?}");
        // No resourceVersion: the current objects first, as ADDED.
        let ev = watch_events(&api, "/api/v1/nodes?watch=true&timeoutSeconds=1", 1);
        assert_eq!(ev, [("ADDED".into(), "n2".into())]);

        // Leases: namespaced, compare-and-swap, 409 as a Status.
        let p = "/apis/coordination.k8s.io/v1/namespaces/reef-system/leases";
        let lease = json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}});
        let (code, a) = call(&api, "POST", p, Some(&lease));
        assert_eq!(code, 201);
        assert_eq!(a["metadata"]["namespace"], "reef-system");
        let (code, body) = call(&api, "POST", p, Some(&lease));
        assert_eq!(
            (code, body["reason"].as_str()),
            (409, Some("AlreadyExists"))
        );
        let mut b = a.clone();
        b["spec"]["holderIdentity"] = json!("b");
        assert_eq!(call(&api, "PUT", &format!("{p}/l"), Some(&b)).0, 200);
        let (code, body) = call(&api, "PUT", &format!("{p}/l"), Some(&a));
        assert_eq!((code, body["kind"].as_str()), (409, Some("Status")));
        let other = "/apis/coordination.k8s.io/v1/namespaces/default/leases/l";
        assert_eq!(call(&api, "GET", other, None).0, 404);
        assert_eq!(call(&api, "GET", &format!("{p}/l/status"), None).0, 404);
    }

    /// `call` with an `Authorization: Bearer` header.
    fn call_as(api: &StandIn, token: &str, path: &str) -> u16 {
        let mut s = TcpStream::connect(api.addr()).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out[9..12].parse().unwrap()
    }

    #[test]
    fn token_requests_behave_like_the_real_api_and_tokens_authenticate() {
        let api = StandIn::start().unwrap();
        let p = "/api/v1/namespaces/reef-system/serviceaccounts/reef-cni/token";
        let req = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                         "spec": {"audiences": []}});
        let (code, body) = call(&api, "POST", p, Some(&req));
        assert_eq!((code, body["reason"].as_str()), (404, Some("NotFound")));
        assert!(api.issued_tokens().is_empty());

        api.put_service_account("reef-system", "reef-cni");
        let (code, sa) = call(
            &api,
            "GET",
            "/api/v1/namespaces/reef-system/serviceaccounts/reef-cni",
            None,
        );
        assert_eq!((code, sa["kind"].as_str()), (200, Some("ServiceAccount")));
        let (code, tr) = call(&api, "POST", p, Some(&req));
        assert_eq!(code, 201, "{tr}");
        assert_eq!(tr["kind"], "TokenRequest");
        assert_eq!(tr["spec"]["expirationSeconds"], 3600);
        assert_eq!(tr["spec"]["audiences"], json!([API_AUDIENCE]));
        let token = tr["status"]["token"].as_str().unwrap().to_string();
        assert_eq!(api.issued_tokens(), std::slice::from_ref(&token));
        // RFC 3339, about an hour from now.
        let exp = tr["status"]["expirationTimestamp"].as_str().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            [3599, 3600, 3601]
                .iter()
                .any(|d| reef_config::time::rfc3339_secs(now + d) == exp),
            "{exp}"
        );
        // Below ten minutes is invalid, as on the real server; another kind is a bad request.
        let short = json!({"spec": {"expirationSeconds": 599}});
        let (code, body) = call(&api, "POST", p, Some(&short));
        assert_eq!(code, 422);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("less than 10 minutes"),
            "{body}"
        );
        let (code, _) = call(&api, "POST", p, Some(&json!({"kind": "Pod"})));
        assert_eq!(code, 400);

        // The issued token authenticates; any other token does not; no token is anonymous.
        let nodes = "/api/v1/nodes";
        assert_eq!(call_as(&api, &token, nodes), 200);
        assert_eq!(call_as(&api, &token, nodes), 200);
        assert_eq!(api.requests_with_token(&token), 2);
        assert_eq!(call_as(&api, "forged", nodes), 401);
        assert_eq!(call(&api, "GET", nodes, None).0, 200);

        // A capped lifetime: the token the response names expires then, and is refused after.
        api.cap_token_seconds(1);
        let (code, tr) = call(&api, "POST", p, Some(&req));
        assert_eq!(
            (code, tr["spec"]["expirationSeconds"].as_u64()),
            (201, Some(1))
        );
        let short_lived = tr["status"]["token"].as_str().unwrap();
        assert_eq!(call_as(&api, short_lived, nodes), 200);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(call_as(&api, short_lived, nodes), 401);
        assert_eq!(call_as(&api, &token, nodes), 200);
    }

    #[test]
    fn kubeconfig_points_at_the_stand_in() {
        let api = StandIn::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = api.write_kubeconfig(dir.path()).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains(&format!("server: {}", api.url())), "{text}");
        assert!(text.contains("current-context: reef-standin"));
    }

    /// Reads what `s` has sent within `wait` (nothing: empty).
    fn read_for(s: &mut TcpStream, wait: Duration) -> String {
        s.set_read_timeout(Some(wait)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let until = Instant::now() + wait;
        while Instant::now() < until {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    fn reef_node(name: &str) -> (String, Value) {
        (
            "reefnodes".to_string(),
            json!({"metadata": {"name": name, "labels": {"k": "v"}},
                   "spec": {"address": "10.0.0.1/24"}}),
        )
    }

    #[test]
    fn a_hung_server_answers_nothing_until_released_then_serves_what_waited() {
        let api = StandIn::start().unwrap();
        let rev = api.put_custom_resources([reef_node("n1")]).unwrap();
        let mut watch = TcpStream::connect(api.addr()).unwrap();
        write!(
            watch,
            "GET /apis/reef.dev/v1alpha1/reefnodes?watch=true&resourceVersion={rev} HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        assert!(read_for(&mut watch, Duration::from_millis(300)).starts_with("HTTP/1.1 200"));

        api.hang(true);
        // Accepted and read, never answered.
        let mut get = TcpStream::connect(api.addr()).unwrap();
        write!(
            get,
            "GET /apis/reef.dev/v1alpha1/reefnodes/n1 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        api.put_custom_resources([reef_node("n2")]).unwrap();
        assert_eq!(read_for(&mut get, Duration::from_millis(500)), "");
        // The open watch sends nothing either.
        assert_eq!(read_for(&mut watch, Duration::from_millis(300)), "");

        api.hang(false);
        let answer = read_for(&mut get, Duration::from_secs(3));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"name\":\"n1\""), "{answer}");
        let events = read_for(&mut watch, Duration::from_millis(500));
        assert!(events.contains("\"name\":\"n2\""), "{events}");
    }

    #[test]
    fn a_put_lease_is_served_as_held() {
        let api = StandIn::start().unwrap();
        let path = "/apis/coordination.k8s.io/v1/namespaces/reef-system/leases/reef-cleaner";
        assert_eq!(call(&api, "GET", path, None).0, 404);
        api.put_lease("reef-system", "reef-cleaner", "c", 3600);
        let (code, l) = call(&api, "GET", path, None);
        assert_eq!(code, 200, "{l}");
        assert_eq!(l["kind"], "Lease");
        assert_eq!(l["metadata"]["namespace"], "reef-system");
        assert_eq!(l["spec"]["holderIdentity"], "c");
        assert_eq!(l["spec"]["leaseDurationSeconds"], 3600);
        assert_eq!(l["spec"]["acquireTime"], l["spec"]["renewTime"]);
        assert!(
            l["spec"]["renewTime"].as_str().unwrap().contains('.'),
            "{l}"
        );
    }

    /// The seed helpers' objects are stored as given and carry what reef-ipam writes: a
    /// block's free list and counts follow its allocations, the has-free label its space.
    #[test]
    fn seeded_nodes_blocks_and_affinities_are_stored_as_reef_ipam_writes_them() {
        let api = StandIn::start().unwrap();
        api.put_custom_resources([
            super::seed::reef_node("n1", "10.0.0.2/24"),
            super::seed::affinity("n1-10-1-0-0-30", "n1", "10.1.0.0/30"),
            super::seed::block("b-full", "n1", "10.1.0.0/30", 4, 4),
            super::seed::block("b-some", "n1", "10.1.0.4/30", 4, 1),
        ])
        .unwrap();
        let node = api.object("reefnodes", "n1").unwrap();
        assert_eq!(node["spec"]["address"], "10.0.0.2/24");
        let aff = api.object("blockaffinities", "n1-10-1-0-0-30").unwrap();
        assert_eq!(aff["spec"]["state"], "confirmed");
        assert_eq!(aff["metadata"]["labels"]["reef.dev/node"], "n1");
        let full = api.object("ipamblocks", "b-full").unwrap();
        assert_eq!(full["metadata"]["labels"]["reef.dev/has-free"], "false");
        assert_eq!(full["spec"]["inUse"], 4);
        assert_eq!(full["spec"]["unallocated"], json!([]));
        let some = api.object("ipamblocks", "b-some").unwrap();
        assert_eq!(some["metadata"]["labels"]["reef.dev/has-free"], "true");
        assert_eq!(some["spec"]["unallocated"], json!([1, 2, 3]));
        assert_eq!(some["spec"]["free"], 3);
        let a = &some["spec"]["allocations"][0];
        assert_eq!(a["handleId"], "reef.n1-pod0");
        assert_eq!(a["attributes"]["podName"], "n1-pod0");
    }

    #[test]
    fn bulk_seeding_stores_all_or_nothing() {
        let api = StandIn::start().unwrap();
        let rev = api
            .put_custom_resources((0..100).map(|i| reef_node(&format!("n{i}"))))
            .unwrap();
        assert_eq!(rev, 100);
        let (_, l) = call(
            &api,
            "GET",
            "/apis/reef.dev/v1alpha1/reefnodes?labelSelector=k%3Dv",
            None,
        );
        assert_eq!(l["items"].as_array().unwrap().len(), 100);
        assert_eq!(l["items"][0]["kind"], "ReefNode");
        let err = api
            .put_custom_resources([
                reef_node("x"),
                ("pods".to_string(), json!({"metadata": {"name": "p"}})),
            ])
            .unwrap_err();
        assert!(err.to_string().contains("item 1: \"pods\""), "{err}");
        let err = api
            .put_custom_resources([
                reef_node("y"),
                ("reefnodes".to_string(), json!({"spec": {}})),
            ])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("item 1 (reefnodes): metadata.name"),
            "{err}"
        );
        assert!(api.object("reefnodes", "x").is_none() && api.object("reefnodes", "y").is_none());
        let t = api.issue_token("reef-system", "bench").unwrap();
        assert_eq!(
            call_as(&api, &t, "/apis/reef.dev/v1alpha1/reefnodes/n1"),
            200
        );
        assert_eq!(api.requests_with_token(&t), 1);
    }

    #[test]
    fn services_and_endpoint_slices_behave_like_the_real_api() {
        let api = StandIn::start().unwrap();
        let p = "/api/v1/namespaces/shop/services";
        let svc = json!({"metadata": {"name": "web", "labels": {"app": "web"}},
                         "spec": {"clusterIP": "10.96.0.10", "type": "LoadBalancer",
                                  "externalTrafficPolicy": "Local"},
                         "status": {"loadBalancer": {"ingress": [{"ip": "6.6.6.6"}]}}});
        let (code, created) = call(&api, "POST", p, Some(&svc));
        assert_eq!(code, 201, "{created}");
        // Status in a create is ignored, as the real server's strategy does.
        assert_eq!(created["status"], json!({"loadBalancer": {}}));
        assert_eq!(created["metadata"]["namespace"], "shop");
        let rev: u64 = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        // The status subresource writes status only; a main PUT leaves it alone.
        let mut st = created.clone();
        st["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.4"}]}});
        st["spec"]["clusterIP"] = json!("10.96.0.99");
        let (code, after) = call(&api, "PUT", &format!("{p}/web/status"), Some(&st));
        assert_eq!(code, 200, "{after}");
        assert_eq!(
            after["status"]["loadBalancer"]["ingress"][0]["ip"],
            "198.51.100.4"
        );
        assert_eq!(after["spec"]["clusterIP"], "10.96.0.10");
        let mut main = after.clone();
        main["status"] = json!({});
        main["spec"]["externalTrafficPolicy"] = json!("Cluster");
        let (code, after2) = call(&api, "PUT", &format!("{p}/web"), Some(&main));
        assert_eq!(code, 200, "{after2}");
        assert_eq!(
            after2["status"]["loadBalancer"]["ingress"][0]["ip"],
            "198.51.100.4"
        );
        // A stale resourceVersion conflicts.
        assert_eq!(call(&api, "PUT", &format!("{p}/web"), Some(&main)).0, 409);
        // Listed in its namespace and across namespaces, not in another namespace.
        api.put_service("other", "db", json!({"clusterIP": "10.96.0.11"}));
        let names = |path: &str| -> Vec<String> {
            let (code, l) = call(&api, "GET", path, None);
            assert_eq!(code, 200, "{l}");
            l["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| {
                    format!(
                        "{}/{}",
                        o["metadata"]["namespace"].as_str().unwrap(),
                        o["metadata"]["name"].as_str().unwrap()
                    )
                })
                .collect()
        };
        assert_eq!(names(p), ["shop/web"]);
        assert_eq!(names("/api/v1/services"), ["other/db", "shop/web"]);
        assert_eq!(
            names("/api/v1/services?labelSelector=app%3Dweb"),
            ["shop/web"]
        );
        // Across namespaces is read-only.
        assert_eq!(call(&api, "POST", "/api/v1/services", Some(&svc)).0, 405);
        // A watch from the create's version sees the status write, the replace, the other
        // Service and the deletion, in order.
        assert!(api.delete_service("shop", "web"));
        let ev = watch_events(
            &api,
            &format!("/api/v1/services?watch=true&resourceVersion={rev}&timeoutSeconds=1"),
            4,
        );
        assert_eq!(
            ev,
            [
                ("MODIFIED".to_string(), "web".to_string()),
                ("MODIFIED".into(), "web".into()),
                ("ADDED".into(), "db".into()),
                ("DELETED".into(), "web".into()),
            ]
        );
        // EndpointSlices: selected by their Service's name label; no status subresource.
        let r0 = api.put_endpoint_slice("shop", "web-a", "web", &[("10.244.0.5", "n1", true)]);
        api.put_endpoint_slice("shop", "db-a", "db", &[("10.244.1.5", "n2", true)]);
        let es = "/apis/discovery.k8s.io/v1/endpointslices";
        let (_, l) = call(
            &api,
            "GET",
            &format!("{es}?labelSelector=kubernetes.io%2Fservice-name%3Dweb"),
            None,
        );
        assert_eq!(l["kind"], "EndpointSliceList");
        assert_eq!(l["items"].as_array().unwrap().len(), 1);
        assert_eq!(l["items"][0]["endpoints"][0]["nodeName"], "n1");
        assert_eq!(
            call(
                &api,
                "GET",
                "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/web-a/status",
                None
            )
            .0,
            404
        );
        // The endpoint moves to n2: one MODIFIED for a watch from the first version.
        api.put_endpoint_slice("shop", "web-a", "web", &[("10.244.1.6", "n2", true)]);
        assert!(api.delete_endpoint_slice("shop", "db-a"));
        let ev = watch_events(
            &api,
            &format!("{es}?watch=true&resourceVersion={r0}&labelSelector=kubernetes.io%2Fservice-name&timeoutSeconds=1"),
            3,
        );
        assert_eq!(
            ev,
            [
                ("ADDED".to_string(), "db-a".to_string()),
                ("MODIFIED".into(), "web-a".into()),
                ("DELETED".into(), "db-a".into()),
            ]
        );
    }

    #[test]
    fn events_are_created_listed_and_kept_apart_by_api_group() {
        let api = StandIn::start().unwrap();
        let p = "/api/v1/namespaces/shop/events";
        let ev = json!({"metadata": {"name": "web.reef-1"},
                        "involvedObject": {"kind": "Service", "namespace": "shop", "name": "web"},
                        "reason": "AddressNotAdvertised", "type": "Warning", "count": 1});
        let (code, o) = call(&api, "POST", p, Some(&ev));
        assert_eq!(code, 201, "{o}");
        assert_eq!(o["kind"], "Event");
        assert_eq!(o["apiVersion"], "v1");
        assert_eq!(o["metadata"]["namespace"], "shop");
        // The same name again: 409 AlreadyExists (how an emitter dedupes by name).
        let (code, o) = call(&api, "POST", p, Some(&ev));
        assert_eq!(code, 409, "{o}");
        assert_eq!(o["reason"], "AlreadyExists");
        // generateName gives a fresh name each time.
        let gen = json!({"metadata": {"generateName": "web."}, "reason": "Other"});
        let (code, a) = call(&api, "POST", p, Some(&gen));
        assert_eq!(code, 201, "{a}");
        let (_, b) = call(&api, "POST", p, Some(&gen));
        let (na, nb) = (
            a["metadata"]["name"].as_str().unwrap(),
            b["metadata"]["name"].as_str().unwrap(),
        );
        assert!(na.starts_with("web.") && na != nb, "{na} {nb}");
        // A count bump is a replace with the resourceVersion read.
        let (_, mut cur) = call(&api, "GET", &format!("{p}/web.reef-1"), None);
        cur["count"] = json!(2);
        assert_eq!(
            call(&api, "PUT", &format!("{p}/web.reef-1"), Some(&cur)).0,
            200
        );
        // events.k8s.io/v1 Events are a kind of their own.
        let (code, o) = call(
            &api,
            "POST",
            "/apis/events.k8s.io/v1/namespaces/shop/events",
            Some(&json!({"metadata": {"name": "x"}, "reason": "R", "regarding": {"name": "web"}})),
        );
        assert_eq!(code, 201, "{o}");
        assert_eq!(o["apiVersion"], "events.k8s.io/v1");
        let (_, l) = call(&api, "GET", "/api/v1/events", None);
        assert_eq!(l["kind"], "EventList");
        assert_eq!(l["items"].as_array().unwrap().len(), 3);
        let (_, l) = call(&api, "GET", "/apis/events.k8s.io/v1/events", None);
        assert_eq!(l["items"].as_array().unwrap().len(), 1);
        let all = api.events();
        assert_eq!(all.len(), 4);
        let web = all
            .iter()
            .find(|e| e["metadata"]["name"] == "web.reef-1")
            .unwrap();
        assert_eq!(web["count"], 2);
        // A Service in a namespace called "events" is still a Service.
        api.put_service("events", "svc", json!({"clusterIP": "10.96.0.1"}));
        let (code, o) = call(&api, "GET", "/api/v1/namespaces/events/services/svc", None);
        assert_eq!((code, o["kind"].as_str()), (200, Some("Service")), "{o}");
        // Across namespaces is read-only, as for Services.
        assert_eq!(call(&api, "POST", "/api/v1/events", Some(&ev)).0, 405);
    }
}
