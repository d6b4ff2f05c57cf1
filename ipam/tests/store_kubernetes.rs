//! The Kubernetes store against a STAND-IN for the API server (`reef_integration::apiserver`;
//! no real API server runs on this machine): the same conformance suite as every backend, and
//! IPAM with conflicts injected. Against a real cluster when REEF_TEST_KUBECONFIG names a
//! kubeconfig (with reef's CRDs installed); skipped otherwise.
#![cfg(feature = "kubernetes")]

mod common;

use std::sync::Mutex;

use common::conformance;
use reef_config::{IpPoolSpec, IpamBlockSpec};
use reef_integration::apiserver::StandIn;
use reef_ipam::ipam::block_name;
use reef_ipam::kubernetes::KubeStore;
use reef_ipam::store::{Kind, Labels, Object, Revision, Store, StoreExt};
use reef_ipam::{AutoAssignArgs, Error, HandleId, Ipam};
use serde_json::json;

#[test]
fn conformance_suite_against_the_stand_in() {
    let servers = Mutex::new(Vec::new());
    conformance::run_all(|| {
        let server = StandIn::start().unwrap();
        let store = KubeStore::connect_url(&server.url()).unwrap();
        servers.lock().unwrap().push(server);
        store
    });
}

fn caller_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The same suite with the requests on the caller's runtime (the agent's way: no runtime of
/// the store's own), called from a thread that drives none of its tasks.
#[test]
fn conformance_suite_on_the_callers_runtime() {
    let rt = caller_runtime();
    let dir = common::TempDir::new("on-runtime");
    let servers = Mutex::new(Vec::new());
    conformance::run_all(|| {
        let server = StandIn::start().unwrap();
        let path = server.write_kubeconfig(dir.path()).unwrap();
        let store = KubeStore::connect_on(Some(&path), rt.handle().clone()).unwrap();
        servers.lock().unwrap().push(server);
        store
    });
}

/// On the caller's runtime, a store call from one of its async threads panics: the worker
/// would wait for a request that may need that very worker. From `spawn_blocking` it works.
#[test]
fn a_store_on_the_callers_runtime_refuses_its_async_threads() {
    let rt = caller_runtime();
    let server = StandIn::start().unwrap();
    let dir = common::TempDir::new("on-runtime-async");
    let path = server.write_kubeconfig(dir.path()).unwrap();
    let store =
        std::sync::Arc::new(KubeStore::connect_on(Some(&path), rt.handle().clone()).unwrap());
    let s = store.clone();
    let blocking = rt.block_on(rt.spawn_blocking(move || s.get(Kind::IpPool, "p")));
    assert!(matches!(blocking, Ok(Ok(None))), "{blocking:?}");
    // Without the guard the call deadlocks (its request task waits in the blocked worker's
    // LIFO slot): bounded here, so that fails instead of hanging.
    let s = store.clone();
    let on_worker = rt.block_on(async move {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::spawn(async move { s.get(Kind::IpPool, "p") }),
        )
        .await
    });
    rt.shutdown_background();
    let e = on_worker
        .expect("a store call on an async thread hung")
        .expect_err("a store call on an async thread returned");
    assert!(e.is_panic(), "{e}");
}

fn args(handle: &str, node: &str) -> AutoAssignArgs {
    AutoAssignArgs {
        handle: HandleId(handle.into()),
        num_v4: 1,
        node: node.into(),
        ..Default::default()
    }
}

/// 409s are answered by re-reading and retrying, a bounded number of times.
#[test]
fn ipam_retries_injected_conflicts() {
    let server = StandIn::start().unwrap();
    let ipam = Ipam::new(KubeStore::connect_url(&server.url()).unwrap());
    ipam.put_pool("v4", IpPoolSpec::new("10.50.0.0/16".parse().unwrap()))
        .unwrap();
    let first = ipam.auto_assign(&args("pod-1", "n1")).unwrap();
    let block = first.v4[0].block;
    server.inject_conflicts("ipamblocks", &block_name(&block), 5);
    let second = ipam.auto_assign(&args("pod-2", "n1")).unwrap();
    assert_eq!(second.v4[0].block, block);
    assert_ne!(second.v4[0].address, first.v4[0].address);
    assert_eq!(server.conflicts_sent(), 5);
    let r = ipam.check(None).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    // A writer that always loses gives up with an error saying so, leaving the store sound.
    server.inject_conflicts("ipamblocks", &block_name(&block), 10_000);
    match ipam.auto_assign(&args("pod-3", "n1")) {
        Err(Error::TooManyConflicts { what, attempts }) => {
            assert!(what.contains(&block.to_string()), "{what}");
            assert!(attempts > 1);
        }
        other => panic!("{other:?}"),
    }
    server.inject_conflicts("ipamblocks", &block_name(&block), 0);
    assert!(ipam.check(None).unwrap().is_clean());
    assert_eq!(
        ipam.release_by_handle(&HandleId("pod-1".into())).unwrap(),
        [first.v4[0].address]
    );
    let b: IpamBlockSpec = ipam
        .store()
        .get_typed(&block_name(&block))
        .unwrap()
        .unwrap()
        .spec;
    assert_eq!(b.allocations.len(), 1);
}

/// What the CNI plugin reads: a Pod's annotations, and `None` (not an error) for a Pod the
/// API server does not know.
#[test]
fn pod_annotations_from_the_stand_in() {
    let server = StandIn::start().unwrap();
    let store = KubeStore::connect_url(&server.url()).unwrap();
    assert_eq!(store.pod_annotations("default", "web-1").unwrap(), None);
    server.put_pod(
        "default",
        "web-1",
        &[("reef.dev/ipv4pools", "[\"v4\"]"), ("other", "x")],
    );
    let a = store.pod_annotations("default", "web-1").unwrap().unwrap();
    assert_eq!(a["reef.dev/ipv4pools"], "[\"v4\"]");
    assert_eq!(a.len(), 2);
    assert_eq!(store.pod_annotations("kube-system", "web-1").unwrap(), None);
    // The same through the store the node config opens (a `Box<dyn Store>`).
    let dir = common::TempDir::new("pods");
    let boxed = reef_ipam::store::open(&reef_config::Datastore::Kubernetes {
        kubeconfig: Some(server.write_kubeconfig(dir.path()).unwrap()),
    })
    .unwrap();
    assert_eq!(boxed.pod_annotations("default", "web-1").unwrap(), Some(a));
    server.delete_pod("default", "web-1");
    assert_eq!(boxed.pod_annotations("default", "web-1").unwrap(), None);
}

/// A kubeconfig naming the stand-in is enough to connect (what `datastore: {kubernetes:
/// {kubeconfig: ...}}` and KUBECONFIG lead to).
#[test]
fn connect_with_a_kubeconfig_file() {
    let server = StandIn::start().unwrap();
    let dir = common::TempDir::new("kubeconfig");
    let path = server.write_kubeconfig(dir.path()).unwrap();
    let store = KubeStore::connect(Some(&path)).unwrap();
    store
        .create(
            Kind::IpPool,
            &Object {
                name: "p".into(),
                revision: Revision(String::new()),
                labels: Labels::new(),
                spec: json!({"cidr": "10.0.0.0/16"}),
                status: None,
            },
        )
        .unwrap();
    assert!(store.get(Kind::IpPool, "p").unwrap().is_some());
    assert!(server.requests() >= 2);
    let e = KubeStore::connect(Some(&dir.path().join("missing"))).unwrap_err();
    assert!(e.to_string().contains("read kubeconfig"), "{e}");
}

/// `store::open` on a node config's Kubernetes datastore: the kubeconfig works, a bad one is
/// an error naming the config field and the fix.
#[test]
fn open_from_the_node_config() {
    let server = StandIn::start().unwrap();
    let dir = common::TempDir::new("open");
    let path = server.write_kubeconfig(dir.path()).unwrap();
    let store = reef_ipam::store::open(&reef_config::Datastore::Kubernetes {
        kubeconfig: Some(path),
    })
    .unwrap();
    assert!(store
        .list(Kind::IpPool, &Labels::new())
        .unwrap()
        .0
        .is_empty());
    let missing = dir.path().join("nope");
    let e = reef_ipam::store::open(&reef_config::Datastore::Kubernetes {
        kubeconfig: Some(missing.clone()),
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(&format!(
            "datastore.kubernetes.kubeconfig ({}): ",
            missing.display()
        )),
        "{e}"
    );
    assert!(e.contains("fix: give a readable kubeconfig"), "{e}");
}

/// The store may be dropped inside another tokio runtime (the agent's) without a panic.
#[test]
fn dropped_inside_a_runtime() {
    let server = StandIn::start().unwrap();
    let store = KubeStore::connect_url(&server.url()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        assert!(store.get(Kind::IpPool, "x").unwrap().is_none());
        drop(store);
    });
}

#[test]
fn unreachable_api_server_is_an_error_with_context() {
    let server = StandIn::start().unwrap();
    let url = server.url();
    drop(server);
    let store = KubeStore::connect_url(&url).unwrap();
    let e = store.get(Kind::IpPool, "x").unwrap_err();
    assert!(e.to_string().contains("kubernetes: get IPPool x"), "{e}");
}

/// An API server that takes the connection and never answers (a FAKE, not the stand-in: the
/// stand-in always answers): the operation fails within the request bound instead of hanging
/// the caller (a CNI ADD, the agent's loop).
#[test]
fn silent_api_server_fails_the_request_instead_of_hanging() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        // Accept and hold the connections, reading nothing back.
        let mut conns = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < end {
            if let Ok((c, _)) = listener.accept() {
                conns.push(c);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    let store = KubeStore::connect_url(&url).unwrap();
    let t0 = std::time::Instant::now();
    let e = store.get(Kind::IpPool, "x").unwrap_err();
    let took = t0.elapsed();
    assert!(
        e.to_string().contains("no answer from the API server"),
        "{e}"
    );
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}");
    drop(held);
}

/// Against a real cluster, with reef's CRDs applied (`kubectl apply -f deploy/crds/`) and
/// credentials that may read Pods and write reef.dev resources; skipped unless
/// REEF_TEST_KUBECONFIG names its kubeconfig. It touches only one IPAMHandle of its own
/// (`reeft-conformance-<pid>`), removed also when the test fails.
#[test]
fn real_cluster_when_configured() {
    let Some(path) = std::env::var_os("REEF_TEST_KUBECONFIG") else {
        eprintln!("skipped: REEF_TEST_KUBECONFIG is not set");
        return;
    };
    let store = KubeStore::connect(Some(std::path::Path::new(&path))).unwrap();
    cluster_checks(&store);
}

/// The real-cluster checks run against the stand-in too, so they are known to work before
/// anyone points them at a cluster.
#[test]
fn real_cluster_checks_pass_on_the_stand_in() {
    let server = StandIn::start().unwrap();
    let dir = common::TempDir::new("realcheck");
    let kubeconfig = server.write_kubeconfig(dir.path()).unwrap();
    cluster_checks(&KubeStore::connect(Some(&kubeconfig)).unwrap());
}

fn cluster_checks(store: &KubeStore) {
    let name = format!("reeft-conformance-{}", std::process::id());

    /// Deletes the test's object whatever happens.
    struct Cleanup<'a>(&'a KubeStore, &'a str);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = self.0.delete(Kind::IpamHandle, self.1, None);
        }
    }
    let _cleanup = Cleanup(store, &name);

    let label = Labels::from([("reef.dev/test".to_string(), name.clone())]);
    let (_, since) = store.list(Kind::IpamHandle, &label).unwrap();
    let mut watch = store.watch(Kind::IpamHandle, &since).unwrap();
    let o = Object {
        name: name.clone(),
        revision: Revision(String::new()),
        labels: label.clone(),
        spec: json!({"handleId": name, "blocks": {}}),
        status: None,
    };
    let created = store.create(Kind::IpamHandle, &o).unwrap();
    let (listed, _) = store.list(Kind::IpamHandle, &label).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, name);
    let mut upd = created.clone();
    upd.spec = json!({"handleId": name, "blocks": {"10.0.0.0/26": 1}});
    let upd = store.update(Kind::IpamHandle, &upd).unwrap();
    assert!(matches!(
        store.update(Kind::IpamHandle, &created),
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        store.delete(Kind::IpamHandle, &name, Some(&created.revision)),
        Err(Error::Conflict { .. })
    ));
    // The watch saw the creation (other handles' changes may interleave).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "watch saw no creation"
        );
        match watch.next(std::time::Duration::from_secs(1)).unwrap() {
            Some(reef_ipam::WatchEvent::Put(o)) if o.name == name => break,
            _ => {}
        }
    }
    store
        .delete(Kind::IpamHandle, &name, Some(&upd.revision))
        .unwrap();
    assert!(store.get(Kind::IpamHandle, &name).unwrap().is_none());
    // Pods: an absent one is `None`, not an error (the credentials may read Pods).
    assert_eq!(
        store
            .pod_annotations("default", &format!("reeft-absent-{}", std::process::id()))
            .unwrap(),
        None
    );
}
