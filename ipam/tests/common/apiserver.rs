//! A STAND-IN for the Kubernetes API server, in process, on 127.0.0.1: no real API server
//! can run on this machine. It serves the `reef.dev/v1alpha1` custom resources the way the
//! real one does for what reef uses — get, list (label selectors), create, replace and
//! delete with resourceVersion preconditions (409 on mismatch), the status subresource, and
//! chunked watch streams — and nothing more: no schema validation, no auth, no pruning.
//! It can inject conflicts: the next N replaces of an object find it changed by "someone
//! else" and get a 409.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const PREFIX: &str = "/apis/reef.dev/v1alpha1/";

#[derive(Default)]
struct Inner {
    rev: u64,
    objects: BTreeMap<(String, String), Value>,
    log: Vec<(u64, String, &'static str, Value)>,
    conflicts: HashMap<(String, String), u32>,
}

#[derive(Default)]
struct State {
    inner: Mutex<Inner>,
    changed: Condvar,
    stop: AtomicBool,
    conflicts_sent: AtomicU64,
}

/// The running stand-in; stops (and joins its threads) when dropped.
pub struct StandIn {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl StandIn {
    pub fn start() -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        StandIn {
            addr,
            state,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `n` replaces (spec or status) of `plural/name` get a 409 after a simulated
    /// concurrent write bumps the object's resourceVersion.
    pub fn inject_conflicts(&self, plural: &str, name: &str, n: u32) {
        self.state
            .inner
            .lock()
            .unwrap()
            .conflicts
            .insert((plural.into(), name.into()), n);
    }

    pub fn conflicts_sent(&self) -> u64 {
        self.state.conflicts_sent.load(Ordering::Relaxed)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        self.state.changed.notify_all();
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(s: &mut TcpStream, code: u16, body: &Value) {
    let text = body.to_string();
    let _ = write!(
        s,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
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

fn serve(mut s: TcpStream, st: &State) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
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
    let mut body = vec![0; len];
    if r.read_exact(&mut body).is_err() {
        return;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let q: HashMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return respond(&mut s, 404, &status(404, "NotFound", "not a reef.dev path"));
    };
    let seg: Vec<&str> = rest.split('/').collect();
    let plural = seg[0].to_string();
    let mut inner = st.inner.lock().unwrap();
    match (method.as_str(), seg.len()) {
        ("GET", 1) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            drop(inner);
            watch(s, st, &plural, &q);
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
            None => respond(
                &mut s,
                404,
                &status(404, "NotFound", &format!("{plural} {} not found", seg[1])),
            ),
        },
        ("POST", 1) => {
            let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
            let key = (plural.clone(), name.clone());
            if inner.objects.contains_key(&key) {
                return respond(
                    &mut s,
                    409,
                    &status(
                        409,
                        "AlreadyExists",
                        &format!("{plural} {name} already exists"),
                    ),
                );
            }
            inner.rev += 1;
            let rev = inner.rev;
            let mut o = body;
            o["metadata"]["resourceVersion"] = json!(rev.to_string());
            o["metadata"]["uid"] = json!(format!("uid-{rev}"));
            o["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            inner.objects.insert(key, o.clone());
            inner.log.push((rev, plural, "ADDED", o.clone()));
            st.changed.notify_all();
            respond(&mut s, 201, &o);
        }
        ("PUT", 2) | ("PUT", 3) => {
            let key = (plural.clone(), seg[1].to_string());
            let Some(cur) = inner.objects.get(&key).cloned() else {
                return respond(
                    &mut s,
                    404,
                    &status(404, "NotFound", &format!("{plural} {} not found", seg[1])),
                );
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
                return respond(&mut s, 409, &status(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again"));
            }
            if body["metadata"]["resourceVersion"] != cur["metadata"]["resourceVersion"] {
                return respond(&mut s, 409, &status(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again"));
            }
            inner.rev += 1;
            let rev = inner.rev;
            let mut o = cur.clone();
            if seg.len() == 3 {
                o["status"] = body["status"].clone();
            } else {
                // A main-resource PUT leaves the status subresource alone.
                o["spec"] = body["spec"].clone();
                o["metadata"]["labels"] = body["metadata"]["labels"].clone();
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
                return respond(
                    &mut s,
                    404,
                    &status(404, "NotFound", &format!("{plural} {} not found", seg[1])),
                );
            };
            if let Some(want) = body["preconditions"]["resourceVersion"].as_str() {
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
            &status(405, "MethodNotAllowed", &format!("{method} {path}")),
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
    let mut inner = st.inner.lock().unwrap();
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
        inner = st.inner.lock().unwrap();
        inner = st
            .changed
            .wait_timeout(inner, Duration::from_millis(100))
            .unwrap()
            .0;
    }
    drop(inner);
    let _ = s.write_all(b"0\r\n\r\n");
}
