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
//! - core/v1 Secrets the same way (`.../secrets/{name}`, values base64 as the real one sends
//!   them); tests put them with [`StandIn::put_secret`].
//!
//! No schema validation, no auth, no pruning, no field selectors. It can inject conflicts: the
//! next N replaces of an object find it changed by "someone else" and get a 409.
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
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::Error;

/// Where reef's custom resources live.
const CRD_PREFIX: &str = "/apis/reef.dev/v1alpha1/";
/// Where core/v1 namespaced resources live.
const CORE_PREFIX: &str = "/api/v1/namespaces/";
/// Request bodies larger than this are refused (413): a test's objects are small.
const MAX_BODY: usize = 16 << 20;

/// A resource key: (plural, name) for custom resources, ("pods", "ns/name") for Pods.
type Key = (String, String);

#[derive(Default)]
struct Inner {
    rev: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<(u64, String, &'static str, Value)>,
    conflicts: HashMap<Key, u32>,
}

#[derive(Default)]
struct State {
    inner: Mutex<Inner>,
    changed: Condvar,
    stop: AtomicBool,
    conflicts_sent: AtomicU64,
    requests: AtomicU64,
}

impl State {
    /// The state, also after a serving thread panicked while holding it (the data is plain
    /// values; a half-done request is no worse than a lost one).
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::Other(format!("API-server stand-in: bind 127.0.0.1:0: {e}")))?;
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
        let mut inner = self.state.lock();
        inner.rev += 1;
        let rev = inner.rev;
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| {
                let b64 = base64::engine::general_purpose::STANDARD.encode(v);
                (k.to_string(), Value::String(b64))
            })
            .collect();
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": format!("uid-{rev}"),
                "resourceVersion": rev.to_string(),
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "type": "Opaque",
            "data": data,
        });
        inner
            .objects
            .insert(("secrets".into(), format!("{namespace}/{name}")), secret);
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

fn selects(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn kind_of(plural: &str) -> &'static str {
    match plural {
        "ippools" => "IPPool",
        "ipamblocks" => "IPAMBlock",
        "blockaffinities" => "BlockAffinity",
        "ipamhandles" => "IPAMHandle",
        "ipamconfigs" => "IPAMConfig",
        "bgpconfigurations" => "BGPConfiguration",
        "bgppeers" => "BGPPeer",
        "reefnodes" => "ReefNode",
        _ => "Unknown",
    }
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    body: Value,
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
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
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
    }))
}

fn serve(mut s: TcpStream, st: &State) {
    // A client that sends less than it announced must not hold a thread for ever.
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = match read_request(&s) {
        None => return,
        Some(Err((code, body))) => return respond(&mut s, code, &body),
        Some(Ok(r)) => r,
    };
    st.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(rest) = req.path.strip_prefix(CORE_PREFIX) {
        return serve_core(s, st, &req, rest);
    }
    let Some(rest) = req.path.strip_prefix(CRD_PREFIX).map(str::to_string) else {
        return respond(
            &mut s,
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    };
    serve_crd(s, st, req, &rest)
}

/// core/v1: only GET of one Pod or Secret.
fn serve_core(mut s: TcpStream, st: &State, req: &Request, rest: &str) {
    let seg: Vec<&str> = rest.split('/').collect();
    match (req.method.as_str(), seg.as_slice()) {
        ("GET", [ns, kind @ ("pods" | "secrets"), name]) if !ns.is_empty() && !name.is_empty() => {
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
                    "{} {}: the stand-in serves only GET of one Pod or Secret",
                    req.method, req.path
                ),
            ),
        ),
    }
}

fn serve_crd(mut s: TcpStream, st: &State, req: Request, rest: &str) {
    let seg: Vec<&str> = rest.split('/').collect();
    let plural = seg[0].to_string();
    let q = &req.query;
    let mut inner = st.lock();
    match (req.method.as_str(), seg.len()) {
        ("GET", 1) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            drop(inner);
            watch(s, st, &plural, q);
        }
        ("GET", 1) => {
            let sel = q.get("labelSelector").cloned().unwrap_or_default();
            let items: Vec<Value> = inner
                .objects
                .iter()
                .filter(|((p, _), o)| *p == plural && selects(o, &sel))
                .map(|(_, o)| o.clone())
                .collect();
            let rev = inner.rev.to_string();
            respond(
                &mut s,
                200,
                &json!({"apiVersion": "reef.dev/v1alpha1", "kind": format!("{}List", kind_of(&plural)),
                        "metadata": {"resourceVersion": rev}, "items": items}),
            );
        }
        ("GET", 2) => match inner.objects.get(&(plural.clone(), seg[1].to_string())) {
            Some(o) => respond(&mut s, 200, o),
            None => respond(&mut s, 404, &not_found(&plural, seg[1])),
        },
        ("POST", 1) => {
            let name = req.body["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if name.is_empty() {
                return respond(
                    &mut s,
                    422,
                    &status(422, "Invalid", "metadata.name: Required value"),
                );
            }
            let key = (plural.clone(), name.clone());
            if inner.objects.contains_key(&key) {
                let mut body = status(
                    409,
                    "AlreadyExists",
                    &format!("{plural} \"{name}\" already exists"),
                );
                body["details"] = json!({"name": name, "kind": plural});
                return respond(&mut s, 409, &body);
            }
            inner.rev += 1;
            let rev = inner.rev;
            let mut o = req.body;
            o["metadata"]["resourceVersion"] = json!(rev.to_string());
            o["metadata"]["uid"] = json!(format!("uid-{rev}"));
            o["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            inner.objects.insert(key, o.clone());
            inner.log.push((rev, plural, "ADDED", o.clone()));
            st.changed.notify_all();
            respond(&mut s, 201, &o);
        }
        ("PUT", 2) | ("PUT", 3) if seg.len() == 2 || seg[2] == "status" => {
            let key = (plural.clone(), seg[1].to_string());
            let Some(cur) = inner.objects.get(&key).cloned() else {
                return respond(&mut s, 404, &not_found(&plural, seg[1]));
            };
            if let Some(n) = inner.conflicts.get_mut(&key).filter(|n| **n > 0) {
                *n -= 1;
                // Someone else writes the object first.
                inner.rev += 1;
                let rev = inner.rev;
                let mut o = cur;
                o["metadata"]["resourceVersion"] = json!(rev.to_string());
                inner.objects.insert(key.clone(), o.clone());
                inner.log.push((rev, plural, "MODIFIED", o));
                st.conflicts_sent.fetch_add(1, Ordering::Relaxed);
                st.changed.notify_all();
                return respond(&mut s, 409, &conflict());
            }
            if req.body["metadata"]["resourceVersion"] != cur["metadata"]["resourceVersion"] {
                return respond(&mut s, 409, &conflict());
            }
            inner.rev += 1;
            let rev = inner.rev;
            let mut o = cur.clone();
            if seg.len() == 3 {
                o["status"] = req.body["status"].clone();
            } else {
                // A main-resource PUT leaves the status subresource alone.
                o["spec"] = req.body["spec"].clone();
                o["metadata"]["labels"] = req.body["metadata"]["labels"].clone();
            }
            o["metadata"]["resourceVersion"] = json!(rev.to_string());
            inner.objects.insert(key, o.clone());
            inner.log.push((rev, plural, "MODIFIED", o.clone()));
            st.changed.notify_all();
            respond(&mut s, 200, &o);
        }
        ("DELETE", 2) => {
            let key = (plural.clone(), seg[1].to_string());
            let Some(cur) = inner.objects.get(&key).cloned() else {
                return respond(&mut s, 404, &not_found(&plural, seg[1]));
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
            inner.log.push((rev, plural, "DELETED", o.clone()));
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

fn watch(mut s: TcpStream, st: &State, plural: &str, q: &HashMap<String, String>) {
    let mut from: u64 = q
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
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
    let mut inner = st.lock();
    while Instant::now() < end && !st.stop.load(Ordering::Relaxed) {
        let events: Vec<(u64, &'static str, Value)> = inner
            .log
            .iter()
            .filter(|(r, p, _, _)| *r > from && p == plural)
            .map(|(r, _, t, o)| (*r, *t, o.clone()))
            .collect();
        drop(inner);
        for (r, t, o) in events {
            let line = format!("{}\n", json!({"type": t, "object": o}));
            if write!(s, "{:x}\r\n{line}\r\n", line.len()).is_err() {
                return;
            }
            from = from.max(r);
        }
        let _ = s.flush();
        inner = st.lock();
        inner = st
            .changed
            .wait_timeout(inner, Duration::from_millis(100))
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
    drop(inner);
    let _ = s.write_all(b"0\r\n\r\n");
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

    #[test]
    fn kubeconfig_points_at_the_stand_in() {
        let api = StandIn::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = api.write_kubeconfig(dir.path()).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains(&format!("server: {}", api.url())), "{text}");
        assert!(text.contains("current-context: reef-standin"));
    }
}
