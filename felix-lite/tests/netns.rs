//! The reconciler against a real kernel, in a namespace each test creates (removed on drop,
//! also on panic): foreign routes survive, external deletes are repaired, a restart causes no
//! churn, multipath and blackhole routes round-trip exactly.

use std::path::Path;
use std::time::Duration;

use felix_lite::{NextHop, Reconciler, ReconcilerConfig, Route, RouteTarget, RtNetlink};
use reef_integration::Netns;
use tokio::sync::watch;

/// Deletes at once: these tests are about what gets deleted, not when (the grace period for
/// routes the CNI plugin writes first has its own test).
fn no_grace() -> ReconcilerConfig {
    ReconcilerConfig {
        stale_grace: Duration::ZERO,
        ..ReconcilerConfig::default()
    }
}

/// A namespace standing for a node: `eth0` (one end of a veth pair kept inside) with
/// 10.20.1.10/24 and fd00:20:1::10/64, and a pod-side veth `cali1`.
fn node() -> Netns {
    let ns = Netns::new("fl").unwrap();
    for args in [
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ][..],
        &[
            "link", "add", "cali1", "type", "veth", "peer", "name", "cali1p",
        ],
        &["addr", "add", "10.20.1.10/24", "dev", "eth0"],
        &["addr", "add", "fd00:20:1::10/64", "dev", "eth0", "nodad"],
        &["link", "set", "eth0", "up"],
        &["link", "set", "eth0p", "up"],
        &["link", "set", "cali1", "up"],
        &["link", "set", "cali1p", "up"],
    ] {
        ns.ip(args).unwrap();
    }
    ns
}

fn hop(gw: Option<&str>, dev: &str, onlink: bool) -> NextHop {
    NextHop {
        gateway: gw.map(|g| g.parse().unwrap()),
        interface: dev.into(),
        onlink,
    }
}

fn route(dst: &str, target: RouteTarget) -> Route {
    Route {
        destination: dst.parse().unwrap(),
        target,
    }
}

/// Every shape reef writes: a pod /32 scope link, a blackhole, a direct route, a multipath
/// route, an on-link route, and IPv6 ones.
fn desired() -> Vec<Route> {
    vec![
        route(
            "10.244.1.5/32",
            RouteTarget::Unicast(vec![hop(None, "cali1", false)]),
        ),
        route("10.244.1.0/26", RouteTarget::Blackhole),
        route(
            "10.244.2.0/26",
            RouteTarget::Unicast(vec![hop(Some("10.20.1.11"), "eth0", false)]),
        ),
        route(
            "10.244.3.0/26",
            RouteTarget::Unicast(vec![
                hop(Some("10.20.1.12"), "eth0", false),
                hop(Some("10.20.1.11"), "eth0", false),
            ]),
        ),
        route(
            "10.244.4.0/26",
            RouteTarget::Unicast(vec![hop(Some("10.30.0.7"), "eth0", true)]),
        ),
        route("10.244.5.0/26", RouteTarget::Unreachable),
        route(
            "fd00:244:0:2::/64",
            RouteTarget::Unicast(vec![hop(Some("fd00:20:1::11"), "eth0", false)]),
        ),
        route("fd00:244:0:1::/64", RouteTarget::Blackhole),
        route(
            "fd00:244:0:3::/64",
            RouteTarget::Unicast(vec![
                hop(Some("fd00:20:1::12"), "eth0", false),
                hop(Some("fd00:20:1::11"), "eth0", false),
            ]),
        ),
    ]
}

fn reef_routes(ns: &Netns) -> String {
    let mut s = ns.ip(["route", "show", "proto", "201"]).unwrap();
    s += &ns.ip(["-6", "route", "show", "proto", "201"]).unwrap();
    s
}

async fn connect(ns: &Netns) -> RtNetlink {
    RtNetlink::connect(Some(Path::new(&ns.path())))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_shape_round_trips() {
    let ns = node();
    let mut r = Reconciler::new(connect(&ns).await, no_grace());
    r.set_desired(desired());
    let rep = r.resync().await.unwrap();
    assert!(
        rep.failed.is_empty() && rep.unresolved.is_empty(),
        "{rep:?}"
    );
    assert_eq!(rep.added, 9);
    let shown = reef_routes(&ns);
    for want in [
        "10.244.1.5 dev cali1 scope link",
        "blackhole 10.244.1.0/26",
        "10.244.2.0/26 via 10.20.1.11 dev eth0",
        "10.244.3.0/26 \n\tnexthop via 10.20.1.11 dev eth0 weight 1 \n\tnexthop via 10.20.1.12 dev eth0 weight 1",
        "10.244.4.0/26 via 10.30.0.7 dev eth0 onlink",
        "unreachable 10.244.5.0/26",
        "fd00:244:0:2::/64 via fd00:20:1::11 dev eth0 metric 1024",
        "blackhole fd00:244:0:1::/64 dev lo metric 1024",
        "fd00:244:0:3::/64 metric 1024 pref medium\n\tnexthop via fd00:20:1::11 dev eth0 weight 1 \n\tnexthop via fd00:20:1::12 dev eth0 weight 1",
    ] {
        assert!(shown.contains(want), "missing `{want}` in:\n{shown}");
    }
    // Read back exactly as written: nothing left to do.
    let rep = r.resync().await.unwrap();
    assert_eq!(rep.changes(), 0, "{rep:?}\n{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_routes_survive_a_full_reconcile() {
    let ns = node();
    for (dst, proto) in [
        ("10.50.0.0/24", "static"),
        ("10.51.0.0/24", "boot"),
        ("10.52.0.0/24", "bird"),
        ("10.53.0.0/24", "zebra"),
    ] {
        ns.ip(["route", "add", dst, "via", "10.20.1.1", "proto", proto])
            .unwrap();
    }
    // A stale reef route from a "previous run".
    ns.ip([
        "route",
        "add",
        "10.244.9.0/26",
        "via",
        "10.20.1.1",
        "proto",
        "201",
    ])
    .unwrap();
    let before = ns.ip(["route", "show"]).unwrap();

    let mut r = Reconciler::new(connect(&ns).await, no_grace());
    r.set_desired(desired());
    r.resync().await.unwrap();
    // And with nothing desired at all: every reef route goes, nothing else.
    r.set_desired(vec![]);
    let rep = r.resync().await.unwrap();
    assert_eq!(rep.deleted, 9);

    let after = ns.ip(["route", "show"]).unwrap();
    for line in before.lines().filter(|l| !l.contains("proto 201")) {
        assert!(after.contains(line), "foreign `{line}` gone:\n{after}");
    }
    assert!(!after.contains("10.244.9.0/26"), "stale reef route kept");
    assert!(reef_routes(&ns).trim().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_route_at_a_reef_key_is_not_overwritten() {
    let ns = node();
    ns.ip([
        "route",
        "add",
        "10.244.2.0/26",
        "via",
        "10.20.1.1",
        "proto",
        "static",
    ])
    .unwrap();
    let mut r = Reconciler::new(connect(&ns).await, no_grace());
    r.set_desired(desired());
    let rep = r.resync().await.unwrap();
    assert_eq!(rep.failed.len(), 1, "{rep:?}");
    assert!(rep.failed[0].to_string().contains("10.244.2.0/26"));
    let shown = ns.ip(["route", "show", "10.244.2.0/26"]).unwrap();
    assert!(
        shown.contains("via 10.20.1.1 dev eth0 proto static"),
        "{shown}"
    );
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    // Generous: the machines running the suite are shared and often overloaded.
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_delete_is_repaired() {
    let ns = node();
    let cfg = ReconcilerConfig {
        resync_interval: Duration::from_secs(3600), // the repair must come from the event
        ..no_grace()
    };
    let (tx, rx) = watch::channel(desired());
    let task = tokio::spawn(Reconciler::new(connect(&ns).await, cfg).run(rx, None));
    eventually("installed", || reef_routes(&ns).lines().count() >= 9).await;

    ns.ip(["route", "del", "10.244.2.0/26"]).unwrap();
    ns.ip(["route", "del", "10.244.3.0/26"]).unwrap();
    ns.ip(["route", "del", "blackhole", "10.244.1.0/26"])
        .unwrap();
    eventually("repaired", || {
        let s = reef_routes(&ns);
        s.contains("10.244.2.0/26 via 10.20.1.11")
            && s.contains("10.244.3.0/26")
            && s.contains("blackhole 10.244.1.0/26")
    })
    .await;

    // A foreign route deleted by hand stays deleted: reef never writes it.
    ns.ip([
        "route",
        "add",
        "10.50.0.0/24",
        "via",
        "10.20.1.1",
        "proto",
        "static",
    ])
    .unwrap();
    ns.ip(["route", "del", "10.50.0.0/24"]).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!ns.ip(["route", "show"]).unwrap().contains("10.50.0.0/24"));

    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_causes_no_route_churn() {
    let ns = node();
    {
        let mut first = Reconciler::new(connect(&ns).await, no_grace());
        first.set_desired(desired());
        let rep = first.resync().await.unwrap();
        assert_eq!(rep.added, 9, "{rep:?}");
    }
    let before = reef_routes(&ns);
    let log = std::env::temp_dir().join(format!("reeft-monitor-{}.log", std::process::id()));
    let monitor = ns
        .spawn("ip monitor", "ip", &["monitor", "route"], Some(&log))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The "restarted agent": a new reconciler over the same kernel state.
    let mut second = Reconciler::new(connect(&ns).await, no_grace());
    second.set_desired(desired());
    let rep = second.resync().await.unwrap();
    assert_eq!(rep.changes(), 0, "{rep:?}");
    assert_eq!(second.status().programmed, 9);

    // And the same route set with one route changed: replaced in place, no delete.
    let mut changed = desired();
    changed[2] = route(
        "10.244.2.0/26",
        RouteTarget::Unicast(vec![hop(Some("10.20.1.13"), "eth0", false)]),
    );
    second.set_desired(changed);
    let rep = second.apply().await.unwrap();
    assert_eq!((rep.added, rep.replaced, rep.deleted), (0, 1, 0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    monitor.stop(Duration::from_millis(500));
    let events = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let lines: Vec<&str> = events.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines,
        ["10.244.2.0/26 via 10.20.1.13 dev eth0 proto 201 "],
        "the restart itself must produce no route event; before:\n{before}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_route_returns_with_its_recreated_interface() {
    let ns = node();
    let cfg = ReconcilerConfig {
        // The link events must do it, not the periodic resync.
        resync_interval: Duration::from_secs(3600),
        ..no_grace()
    };
    let (tx, rx) = watch::channel(desired());
    let (stx, srx) = watch::channel(Default::default());
    let task = tokio::spawn(Reconciler::new(connect(&ns).await, cfg).run(rx, Some(stx)));
    eventually("installed", || {
        reef_routes(&ns).contains("10.244.1.5 dev cali1")
    })
    .await;

    // The veth goes (pod deleted and recreated, say): the kernel drops the route with it.
    ns.ip(["link", "del", "cali1"]).unwrap();
    eventually("reported as unresolved", || {
        srx.borrow().errors.iter().any(|e| e.contains("cali1"))
    })
    .await;
    assert!(!reef_routes(&ns).contains("10.244.1.5"));
    ns.ip([
        "link", "add", "cali1", "type", "veth", "peer", "name", "cali1p",
    ])
    .unwrap();
    ns.ip(["link", "set", "cali1", "up"]).unwrap();
    ns.ip(["link", "set", "cali1p", "up"]).unwrap();
    eventually("route back on the new interface", || {
        reef_routes(&ns).contains("10.244.1.5 dev cali1")
    })
    .await;
    eventually("errors cleared", || srx.borrow().errors.is_empty()).await;
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Many requests in one write: each failure is reported for its own request (not its
/// neighbours'), a delete of a route already gone is success, and the requests after a
/// failure still happen, whatever the batch size (one request per write, writes ending in the
/// middle, everything in one write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reports_each_request_on_its_own() {
    use felix_lite::{KernelNextHop, KernelRoute, KernelTarget, Netlink, Op};
    for batch in [1, 3, 128] {
        let ns = node();
        ns.ip([
            "route",
            "add",
            "10.244.11.0/26",
            "via",
            "10.20.1.12",
            "dev",
            "eth0",
            "proto",
            "static",
        ])
        .unwrap();
        let nl = connect(&ns).await;
        let eth0 = nl.links().await.unwrap()["eth0"];
        let via = |dst: &str, gw: &str| KernelRoute {
            destination: dst.parse().unwrap(),
            metric: 0,
            scope: 0,
            target: KernelTarget::Unicast(vec![KernelNextHop {
                gateway: Some(gw.parse().unwrap()),
                ifindex: eth0,
                onlink: false,
                weight: 0,
            }]),
        };
        let ops = [
            Op::Add(via("10.244.10.0/26", "10.20.1.11")),
            // A foreign route holds the key: EEXIST.
            Op::Add(via("10.244.11.0/26", "10.20.1.11")),
            Op::Add(via("10.244.12.0/26", "10.20.1.11")),
            Op::Delete(via("10.244.13.0/26", "10.20.1.11")),
            // The gateway is on no connected subnet: ENETUNREACH.
            Op::Add(via("10.244.14.0/26", "10.99.0.1")),
            Op::Replace(via("10.244.10.0/26", "10.20.1.12")),
            Op::Add(via("10.244.15.0/26", "10.20.1.11")),
        ];
        let res = nl.apply_ops(&ops, 201, batch).await;
        let errnos: Vec<i32> = res
            .iter()
            .map(|r| match r {
                Ok(()) => 0,
                Err(felix_lite::Error::Netlink { errno, .. }) => *errno,
                Err(e) => panic!("batch {batch}: {e}"),
            })
            .collect();
        assert_eq!(errnos, [0, 17, 0, 0, 101, 0, 0], "batch {batch}: {res:?}");
        let shown = reef_routes(&ns);
        assert_eq!(
            shown,
            "10.244.10.0/26 via 10.20.1.12 dev eth0 \n\
             10.244.12.0/26 via 10.20.1.11 dev eth0 \n\
             10.244.15.0/26 via 10.20.1.11 dev eth0 \n",
            "batch {batch}"
        );
        let foreign = ns.ip(["route", "show", "10.244.11.0/26"]).unwrap();
        assert!(
            foreign.contains("via 10.20.1.12 dev eth0 proto static"),
            "{foreign}"
        );
    }
}
