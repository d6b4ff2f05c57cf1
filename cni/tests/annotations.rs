//! Pod annotations (`reef.dev/ipv4pools`, `reef.dev/ipv6pools`, `reef.dev/ipAddrs`) read from
//! the Kubernetes API, with reef-cni run the way a runtime runs it.
//!
//! The API server here is a STAND-IN (`reef_integration::apiserver`, in process): no real
//! Kubernetes API server can run on this machine. It serves Pods (GET) and reef's custom
//! resources the way the real one does for what reef uses. It listens on 127.0.0.1 *inside the
//! test's host namespace*, where the plugins run (a socket belongs to the namespace it was
//! made in). The IPAM datastore is the embedded one, except in the last test, where the node
//! config's Kubernetes datastore puts pools, blocks and handles in the stand-in as well.

mod common;

use std::fs::File;
use std::net::IpAddr;
use std::path::PathBuf;

use common::*;
use reef_config::IpPoolSpec;
use reef_integration::apiserver::StandIn;
use reef_ipam::kubernetes::KubeStore;
use serde_json::{json, Value};

/// The stand-in, started and stopped inside `host` (its Drop wakes its accept loop by
/// connecting to 127.0.0.1:PORT, which only reaches it from that namespace).
struct Api {
    api: Option<StandIn>,
    ns: File,
}

impl Api {
    fn start(host: &Netns) -> Api {
        let ns = File::open(host.path()).expect("open host netns");
        let api = reef_cni::sys::in_netns(&ns, StandIn::start)
            .expect("enter host netns")
            .expect("start the API-server stand-in");
        Api { api: Some(api), ns }
    }

    /// Runs `f` on reef's IPAM over the stand-in's custom resources, from inside the host
    /// namespace (the store's runtime threads are spawned there, so its sockets are too).
    fn kube_ipam<T: Send>(&self, f: impl FnOnce(&reef_ipam::Ipam<KubeStore>) -> T + Send) -> T {
        let url = self.url();
        std::thread::scope(|s| {
            s.spawn(|| {
                reef_cni::sys::in_netns(&self.ns, || {
                    let store = KubeStore::connect_url(&url).expect("connect to the stand-in");
                    f(&reef_ipam::Ipam::new(store))
                })
                .expect("enter host netns")
            })
            .join()
            .expect("kube_ipam thread")
        })
    }
}

impl std::ops::Deref for Api {
    type Target = StandIn;
    fn deref(&self) -> &StandIn {
        self.api.as_ref().expect("running")
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(api) = self.api.take() {
            let _ = reef_cni::sys::in_netns(&self.ns, move || drop(api));
        }
    }
}

fn pool(cidr: &str, disabled: bool) -> IpPoolSpec {
    let mut spec = IpPoolSpec::new(cidr.parse().unwrap());
    spec.block_size = Some(if cidr.contains(':') { 122 } else { 28 });
    spec.disabled = disabled;
    spec
}

fn net(s: &str) -> ipnetwork::IpNetwork {
    s.parse().unwrap()
}

/// A node (embedded datastore) with pools `default` 10.93.0.0/24, `pool-a` 10.94.0.0/24 and
/// the disabled `off` 10.95.0.0/24; the stand-in in its host namespace; a kubeconfig for it.
struct Fixture {
    // Dropped first: the stand-in's guard needs only its namespace file, not the namespace.
    api: Api,
    node: Node,
    kubeconfig: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        Self::with(Node::new("10.93.0.0/24"))
    }

    fn with(node: Node) -> Fixture {
        let ipam = node.ipam();
        ipam.put_pool("pool-a", pool("10.94.0.0/24", false))
            .unwrap();
        ipam.put_pool("off", pool("10.95.0.0/24", true)).unwrap();
        let api = Api::start(&node.host);
        let kubeconfig = api.write_kubeconfig(&node.dir.0).unwrap();
        Fixture {
            api,
            node,
            kubeconfig,
        }
    }

    /// reef-cni's config with Kubernetes access through the stand-in.
    fn conf(&self) -> Value {
        let mut c = self.node.reef_conf("1.0.0", "k8s");
        c["kubernetes"] = json!({ "kubeconfig": self.kubeconfig });
        c
    }

    /// Puts pod `default/<cid>` (the harness's CNI_ARGS name the pod after its container)
    /// and runs ADD for it.
    fn add(&self, cid: &str, pod: &Netns, annotations: &[(&str, &str)], conf: &Value) -> Outcome {
        self.api.put_pod("default", cid, annotations);
        Call::new(reef_cni(), "ADD", cid, &pod.path(), conf).run(&self.node.host)
    }

    fn del(&self, cid: &str, pod: &Netns, conf: &Value) {
        Call::new(reef_cni(), "DEL", cid, &pod.path(), conf)
            .run(&self.node.host)
            .expect_ok(&format!("DEL {cid}"));
    }
}

/// A pod's annotations as the stand-in takes them.
type Annotations<'a> = &'a [(&'a str, &'a str)];

fn only_ip(r: &Value) -> IpAddr {
    let ips = result_ips(r);
    assert_eq!(ips.len(), 1, "{r}");
    ips[0]
}

#[test]
fn pools_by_name_and_by_cidr_are_honoured() {
    let f = Fixture::new();
    let conf = f.conf();
    let (p1, p2) = (Netns::new("pod"), Netns::new("pod"));
    let r1 = f
        .add("a1", &p1, &[("reef.dev/ipv4pools", r#"["pool-a"]"#)], &conf)
        .expect_ok("ADD a1")
        .json();
    let ip1 = only_ip(&r1);
    assert!(net("10.94.0.0/24").contains(ip1), "{r1}");
    let r2 = f
        .add(
            "a2",
            &p2,
            &[("reef.dev/ipv4pools", r#"["10.93.0.0/24"]"#)],
            &conf,
        )
        .expect_ok("ADD a2")
        .json();
    assert!(net("10.93.0.0/24").contains(only_ip(&r2)), "{r2}");
    assert!(f.api.requests() >= 2, "the pods were not read from the API");
    // The pod is wired as usual, and the allocation records the pod.
    assert!(p1.ping(f.node.host_addr));
    assert_eq!(f.node.held("k8s.a1"), vec![ip1]);
    Call::new(
        reef_cni(),
        "CHECK",
        "a1",
        &p1.path(),
        &with_prev(&conf, &r1),
    )
    .run(&f.node.host)
    .expect_ok("CHECK a1");
    f.del("a1", &p1, &conf);
    f.del("a2", &p2, &conf);
    f.node.assert_clean("after DEL");
}

#[test]
fn without_kubernetes_access_or_pod_name_no_client_is_built() {
    let f = Fixture::new();
    let pod = Netns::new("pod");
    // The pod asks for pool-a, but the config gives no Kubernetes access (and the node's
    // datastore is embedded): nothing is read, so it gets the first pool that fits.
    f.api.put_pod(
        "default",
        "n1",
        &[("reef.dev/ipAddrs", r#"["10.94.0.99"]"#)],
    );
    let plain = f.node.reef_conf("1.0.0", "k8s");
    let r = Call::new(reef_cni(), "ADD", "n1", &pod.path(), &plain)
        .run(&f.node.host)
        .expect_ok("ADD without access")
        .json();
    assert_ne!(only_ip(&r), "10.94.0.99".parse::<IpAddr>().unwrap());
    assert_eq!(f.api.requests(), 0, "a client talked to the API server");
    f.del("n1", &pod, &plain);
    // Access, but a runtime that names no pod (CNI_ARGS without K8S_POD_NAME).
    let conf = f.conf();
    Call::new(reef_cni(), "ADD", "n2", &pod.path(), &conf)
        .set("CNI_ARGS", "IgnoreUnknown=1")
        .run(&f.node.host)
        .expect_ok("ADD without pod name");
    assert_eq!(f.api.requests(), 0, "a client talked to the API server");
    f.del("n2", &pod, &conf);
    f.node.assert_clean("after DEL");
}

#[test]
fn a_fixed_address_is_given_and_a_taken_one_refused() {
    let f = Fixture::new();
    let conf = f.conf();
    let (p1, p2) = (Netns::new("pod"), Netns::new("pod"));
    let want = r#"["10.94.0.77"]"#;
    let r = f
        .add("f1", &p1, &[("reef.dev/ipAddrs", want)], &conf)
        .expect_ok("ADD f1")
        .json();
    let ip: IpAddr = "10.94.0.77".parse().unwrap();
    assert_eq!(only_ip(&r), ip);
    assert_eq!(f.node.held("k8s.f1"), vec![ip]);
    assert!(p1.ping(f.node.host_addr));
    // A second pod asking for the same address.
    let out = f.add("f2", &p2, &[("reef.dev/ipAddrs", want)], &conf);
    assert_eq!(out.code(), 109, "{}", out.stdout);
    let msg = out.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("10.94.0.77") && msg.contains("k8s.f1"),
        "should name the address and its holder: {msg}"
    );
    assert!(f.node.held("k8s.f2").is_empty());
    assert!(!p2.try_ip(&["link", "show", "eth0"]), "f2 got an eth0");
    assert_eq!(f.node.host.links("reef").len(), 1, "f2's veth left");
    assert_eq!(f.node.held("k8s.f1"), vec![ip], "f1 lost its address");
    f.del("f2", &p2, &conf);
    f.del("f1", &p1, &conf);
    f.node.assert_clean("after DEL");
}

#[test]
fn fixed_addresses_are_all_or_nothing_in_dual_stack() {
    let f = Fixture::with(Node::dual("10.93.0.0/24", "fd00:93::/64"));
    let mut conf = f.conf();
    conf["ipam"] = json!({ "assignIpv4": true, "assignIpv6": true });
    let (p1, p2) = (Netns::new("pod"), Netns::new("pod"));
    // Only an IPv6 address asked for: the pod gets only that, and only the IPv6 default route.
    let r = f
        .add(
            "d1",
            &p1,
            &[("reef.dev/ipAddrs", r#"["fd00:93::10"]"#)],
            &conf,
        )
        .expect_ok("ADD d1")
        .json();
    assert_eq!(only_ip(&r), "fd00:93::10".parse::<IpAddr>().unwrap());
    assert_eq!(
        r["routes"],
        json!([{ "dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee" }])
    );
    Call::new(reef_cni(), "CHECK", "d1", &p1.path(), &with_prev(&conf, &r))
        .run(&f.node.host)
        .expect_ok("CHECK d1");
    // Both families, the IPv6 one taken: the IPv4 one it got first is given back.
    let out = f.add(
        "d2",
        &p2,
        &[("reef.dev/ipAddrs", r#"["10.93.0.9", "fd00:93::10"]"#)],
        &conf,
    );
    assert_eq!(out.code(), 109, "{}", out.stdout);
    assert!(f.node.held("k8s.d2").is_empty(), "d2 kept an address");
    let all: Vec<IpAddr> = f
        .node
        .handles()
        .iter()
        .flat_map(|h| f.node.held(h))
        .collect();
    assert!(
        !all.contains(&"10.93.0.9".parse().unwrap()),
        "10.93.0.9 still allocated: {all:?}"
    );
    f.del("d2", &p2, &conf);
    f.del("d1", &p1, &conf);
    f.node.assert_clean("after DEL");
}

#[test]
fn bad_annotations_are_refused_naming_the_annotation_and_leave_nothing() {
    let f = Fixture::new();
    let conf = f.conf();
    let pod = Netns::new("pod");
    // (annotations, the annotation the message names, what it says)
    let cases: &[(Annotations, &str, &str)] = &[
        (
            &[("reef.dev/ipv4pools", "pool-a")],
            "reef.dev/ipv4pools",
            "not a JSON list",
        ),
        (
            &[("reef.dev/ipv4pools", r#"["pool-a""#)],
            "reef.dev/ipv4pools",
            "not a JSON list",
        ),
        (
            &[("reef.dev/ipv4pools", r#"["nope"]"#)],
            "reef.dev/ipv4pools",
            "no IP pool named \"nope\"",
        ),
        (
            &[("reef.dev/ipv4pools", r#"["off"]"#)],
            "reef.dev/ipv4pools",
            "is disabled",
        ),
        (
            &[("reef.dev/ipv4pools", r#"["10.99.0.0/24"]"#)],
            "reef.dev/ipv4pools",
            "no IP pool with CIDR 10.99.0.0/24",
        ),
        (
            &[("reef.dev/ipv4pools", r#"["fd00::/64"]"#)],
            "reef.dev/ipv4pools",
            "not an IPv4 CIDR",
        ),
        (
            &[("reef.dev/ipv6pools", r#"["v6"]"#)],
            "reef.dev/ipv6pools",
            "assigns no IPv6 address",
        ),
        (
            &[("reef.dev/ipAddrs", r#"["10.99.0.1"]"#)],
            "reef.dev/ipAddrs",
            "10.99.0.1 is in no IP pool",
        ),
        (
            &[("reef.dev/ipAddrs", r#"["banana"]"#)],
            "reef.dev/ipAddrs",
            "\"banana\" is not an IP address",
        ),
        (
            &[("reef.dev/ipAddrs", r#"["10.94.0.5", "10.94.0.6"]"#)],
            "reef.dev/ipAddrs",
            "at most one address per family",
        ),
        (
            &[
                ("reef.dev/ipAddrs", r#"["10.94.0.5"]"#),
                ("reef.dev/ipv4pools", r#"["pool-a"]"#),
            ],
            "reef.dev/ipAddrs",
            "cannot be combined",
        ),
    ];
    for (i, (annotations, key, why)) in cases.iter().enumerate() {
        let cid = format!("bad{i}");
        let out = f.add(&cid, &pod, annotations, &conf);
        assert_eq!(out.code(), 108, "{annotations:?}: {}", out.stdout);
        let msg = out.json()["msg"].as_str().unwrap().to_string();
        assert!(
            msg.contains(key) && msg.contains(why),
            "{annotations:?}: {msg:?} should name {key} and say {why:?}"
        );
        assert!(
            !pod.try_ip(&["link", "show", "eth0"]),
            "{annotations:?}: eth0 left"
        );
        f.node.assert_clean(&format!("{annotations:?}"));
    }
}

#[test]
fn missing_pod_unreachable_api_and_bad_kubeconfig_get_their_codes() {
    let f = Fixture::new();
    let pod = Netns::new("pod");
    // No such pod: not transient (110), names the pod.
    let out = Call::new(reef_cni(), "ADD", "ghost", &pod.path(), &f.conf()).run(&f.node.host);
    assert_eq!(out.code(), 110, "{}", out.stdout);
    let msg = out.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("default/ghost") && msg.contains("not found"),
        "{msg}"
    );
    f.node.assert_clean("no pod");

    // Nothing listens on port 1 of the host namespace: try again later (11).
    let dead = f.node.dir.0.join("dead-kubeconfig");
    std::fs::write(
        &dead,
        f.api
            .kubeconfig()
            .replace(&f.api.url(), "http://127.0.0.1:1"),
    )
    .unwrap();
    let mut conf = f.conf();
    conf["kubernetes"] = json!({ "kubeconfig": dead });
    f.api.put_pod("default", "p1", &[]);
    let out = Call::new(reef_cni(), "ADD", "p1", &pod.path(), &conf).run(&f.node.host);
    assert_eq!(out.code(), 11, "{}", out.stdout);
    let msg = out.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("unreachable") && msg.contains("127.0.0.1:1"),
        "{msg}"
    );
    f.node.assert_clean("API unreachable");

    // A kubeconfig that is not there, or not a kubeconfig: invalid config (7) naming the field.
    for (what, path) in [
        ("missing", f.node.dir.0.join("no-such-kubeconfig")),
        ("not YAML", f.node.dir.0.join("bad-kubeconfig")),
    ] {
        if what == "not YAML" {
            std::fs::write(&path, "{{{ not: [yaml").unwrap();
        }
        conf["kubernetes"] = json!({ "kubeconfig": path });
        let out = Call::new(reef_cni(), "ADD", "p1", &pod.path(), &conf).run(&f.node.host);
        assert_eq!(out.code(), 7, "{what}: {}", out.stdout);
        let msg = out.json()["msg"].as_str().unwrap().to_string();
        assert!(msg.contains("kubernetes.kubeconfig"), "{what}: {msg}");
        f.node.assert_clean(what);
    }
}

/// Points the node config's datastore at the Kubernetes API through `kubeconfig`.
fn kubernetes_node_config(node: &Node, kubeconfig: &std::path::Path) {
    std::fs::write(
        &node.node_config,
        format!(
            "nodeName: node-1\naddress: 192.168.250.1/24\nrouteProtocol: {PROTO}\nmtuFile: {}\n\
             datastore:\n  kubernetes:\n    kubeconfig: {}\n",
            node.dir.0.join("mtu").display(),
            kubeconfig.display()
        ),
    )
    .unwrap();
}

#[test]
fn kubernetes_datastore_serves_pools_blocks_and_the_pod() {
    let f = Fixture::new();
    // The node config's datastore is the stand-in; the network config has no `kubernetes`
    // key, so the pod is read with the node config's access too.
    kubernetes_node_config(&f.node, &f.kubeconfig);
    f.api.kube_ipam(|ipam| {
        ipam.put_pool("k-default", pool("10.97.0.0/24", false))
            .unwrap();
        ipam.put_pool("k-pool", pool("10.98.0.0/24", false))
            .unwrap();
    });
    let conf = f.node.reef_conf("1.1.0", "k8s");
    let pod = Netns::new("pod");
    let r = f
        .add(
            "k1",
            &pod,
            &[("reef.dev/ipv4pools", r#"["k-pool"]"#)],
            &conf,
        )
        .expect_ok("ADD k1")
        .json();
    let ip = only_ip(&r);
    assert!(net("10.98.0.0/24").contains(ip), "{r}");
    assert!(pod.ping(f.node.host_addr));
    let (held, blocks) = f.api.kube_ipam(|ipam| {
        let h = reef_ipam::HandleId("k8s.k1".into());
        let held: Vec<IpAddr> = ipam
            .addresses_of(&h)
            .unwrap()
            .into_iter()
            .map(|a| a.address)
            .collect();
        (held, ipam.blocks_for_node("node-1").unwrap())
    });
    assert_eq!(held, vec![ip], "the stand-in's IPAM handle");
    assert!(
        blocks.iter().any(|b| b.contains(ip)),
        "no block of node-1 holds {ip}: {blocks:?}"
    );
    Call::new(
        reef_cni(),
        "CHECK",
        "k1",
        &pod.path(),
        &with_prev(&conf, &r),
    )
    .run(&f.node.host)
    .expect_ok("CHECK k1");
    Call::new(reef_cni(), "STATUS", "", "", &conf)
        .unset("CNI_CONTAINERID")
        .unset("CNI_NETNS")
        .unset("CNI_IFNAME")
        .run(&f.node.host)
        .expect_ok("STATUS");
    f.del("k1", &pod, &conf);
    let held = f.api.kube_ipam(|ipam| {
        ipam.addresses_of(&reef_ipam::HandleId("k8s.k1".into()))
            .unwrap()
    });
    assert!(held.is_empty(), "k1 still holds {held:?}");
    f.node.assert_clean("after DEL");
}

#[test]
fn reef_ipam_behind_ptp_honours_the_annotations_too() {
    let f = Fixture::new();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "ptpk8s", "type": "ptp", "ipMasq": false, "mtu": 1480,
        "ipam": { "type": "reef-ipam", "nodeConfig": f.node.node_config,
                  "gateways": ["169.254.1.1"], "kubernetes": { "kubeconfig": f.kubeconfig } },
    });
    let ptp = "/usr/lib/cni/ptp";
    let (p1, p2) = (Netns::new("pod"), Netns::new("pod"));
    f.api.put_pod(
        "default",
        "i1",
        &[("reef.dev/ipAddrs", r#"["10.94.0.42"]"#)],
    );
    let r = Call::new(ptp, "ADD", "i1", &p1.path(), &conf)
        .run(&f.node.host)
        .expect_ok("ptp ADD i1")
        .json();
    let ip: IpAddr = "10.94.0.42".parse().unwrap();
    assert_eq!(only_ip(&r), ip);
    assert_eq!(f.node.held("ptpk8s.i1"), vec![ip]);
    f.api
        .put_pod("default", "i2", &[("reef.dev/ipv4pools", r#"["nope"]"#)]);
    let out = Call::new(ptp, "ADD", "i2", &p2.path(), &conf).run(&f.node.host);
    // ptp passes reef-ipam's code and message on (its error JSON has no cniVersion).
    assert!(!out.ok);
    assert_eq!(out.json()["code"], 108, "{}", out.stdout);
    assert!(out.stdout.contains("reef.dev/ipv4pools"), "{}", out.stdout);
    for (id, pod) in [("i1", &p1), ("i2", &p2)] {
        Call::new(ptp, "DEL", id, &pod.path(), &conf)
            .run(&f.node.host)
            .expect_ok("ptp DEL");
    }
    assert!(
        f.node.handles().iter().all(|h| f.node.held(h).is_empty()),
        "addresses left allocated"
    );
}

/// A FAKE API server for answers the stand-in never gives (it is always healthy): every
/// connection gets `response` after its request was read, or (`None`) no answer for 6 s. It
/// listens inside `host`; stops when dropped.
struct FakeApi {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeApi {
    fn start(host: &Netns, response: Option<String>) -> FakeApi {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let ns = File::open(host.path()).unwrap();
        let listener = reef_cni::sys::in_netns(&ns, || std::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !st.load(Ordering::Relaxed) {
                let Ok((mut c, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                match &response {
                    Some(r) => {
                        let _ = c.write_all(r.as_bytes());
                    }
                    // Keep the connection open and silent until the test ends.
                    None => held.push(c),
                }
            }
        });
        FakeApi {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// An HTTP answer with a Kubernetes `Status` body.
    fn status(code: u16, reason: &str, message: &str) -> String {
        let body =
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": message, "reason": reason, "code": code})
            .to_string();
        format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn overloaded_refusing_or_silent_api_servers_get_their_codes() {
    let f = Fixture::new();
    let pod = Netns::new("pod");
    let cases = [
        (
            Some(FakeApi::status(503, "ServiceUnavailable", "etcd is down")),
            11,
            "503",
        ),
        (
            Some(FakeApi::status(429, "TooManyRequests", "slow down")),
            11,
            "429",
        ),
        (
            Some(FakeApi::status(403, "Forbidden", "pods is forbidden")),
            110,
            "refused access (403",
        ),
        // No answer: the 5 s request timeout ends the ADD (try again later), it does not hang.
        (None, 11, "unreachable"),
    ];
    for (response, code, says) in cases {
        let fake = FakeApi::start(&f.node.host, response);
        let kubeconfig = f.node.dir.0.join(format!("fake-{}", fake.addr.port()));
        std::fs::write(
            &kubeconfig,
            f.api
                .kubeconfig()
                .replace(&f.api.url(), &format!("http://{}", fake.addr)),
        )
        .unwrap();
        let mut conf = f.conf();
        conf["kubernetes"] = json!({ "kubeconfig": kubeconfig });
        let t0 = std::time::Instant::now();
        let out = Call::new(reef_cni(), "ADD", "p1", &pod.path(), &conf).run(&f.node.host);
        // Not a speed check: kube's own retries of 429/503 (back-off to minutes) are off,
        // and nothing waits much beyond the 5 s request timeout.
        let took = t0.elapsed();
        assert!(
            took < std::time::Duration::from_secs(30),
            "{says}: ADD took {took:?}"
        );
        assert_eq!(out.code(), code, "{says}: {}", out.stdout);
        let msg = out.json()["msg"].as_str().unwrap().to_string();
        assert!(
            msg.contains(says) && msg.contains("default/p1"),
            "{says}: {msg}"
        );
        f.node.assert_clean(says);
    }
}

#[test]
fn kubernetes_datastore_missing_kubeconfig_or_unreachable_api() {
    let f = Fixture::new();
    let pod = Netns::new("pod");
    let conf = f.node.reef_conf("1.0.0", "k8s");
    // A runtime that names no pod: the pod is not read, the IPAM datastore is what fails.
    let add = || {
        Call::new(reef_cni(), "ADD", "s1", &pod.path(), &conf)
            .set("CNI_ARGS", "IgnoreUnknown=1")
            .run(&f.node.host)
    };
    kubernetes_node_config(&f.node, &f.node.dir.0.join("no-such-kubeconfig"));
    let out = add();
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert!(
        out.stdout.contains("datastore.kubernetes"),
        "{}",
        out.stdout
    );
    f.node.assert_clean("missing kubeconfig");
    let dead = f.node.dir.0.join("dead-kubeconfig");
    std::fs::write(
        &dead,
        f.api
            .kubeconfig()
            .replace(&f.api.url(), "http://127.0.0.1:1"),
    )
    .unwrap();
    kubernetes_node_config(&f.node, &dead);
    let out = add();
    assert_eq!(out.code(), 11, "{}", out.stdout);
    assert!(!pod.try_ip(&["link", "show", "eth0"]), "eth0 left");
    f.node.assert_clean("API unreachable");
}
