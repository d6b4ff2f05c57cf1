//! The reconciler against the fault-injecting netlink ([`felix_lite::fake`]): failures and
//! monitor overflows cannot be provoked on demand in a real kernel. Real-kernel behaviour is
//! tested in `tests/netns.rs`.

use std::time::Duration;

use felix_lite::fake::FakeNetlink;
use felix_lite::kernel::{resolve, KernelRoute};
use felix_lite::{NextHop, Reconciler, ReconcilerConfig, Route, RouteTarget};
use tokio::sync::watch;

/// Deletes at once: these tests are about what gets deleted, not when (the grace period for
/// routes the CNI plugin writes first has its own test).
fn no_grace() -> ReconcilerConfig {
    ReconcilerConfig {
        stale_grace: Duration::ZERO,
        ..ReconcilerConfig::default()
    }
}

const OURS: u8 = 201;
const STATIC: u8 = 4;

fn via(dst: &str, gw: &str, dev: &str) -> Route {
    Route {
        destination: dst.parse().unwrap(),
        target: RouteTarget::Unicast(vec![NextHop {
            gateway: Some(gw.parse().unwrap()),
            interface: dev.into(),
            onlink: false,
        }]),
    }
}

fn blackhole(dst: &str) -> Route {
    Route {
        destination: dst.parse().unwrap(),
        target: RouteTarget::Blackhole,
    }
}

fn fake() -> FakeNetlink {
    let f = FakeNetlink::new();
    f.add_link("eth0", 2);
    f.add_link("cali1", 7);
    f
}

fn kernel(r: &Route) -> KernelRoute {
    let links = [("eth0".to_string(), 2), ("cali1".to_string(), 7)].into();
    resolve(r, 0, &links).unwrap()
}

fn ours(f: &FakeNetlink) -> Vec<KernelRoute> {
    f.routes()
        .into_iter()
        .filter(|(p, _)| *p == OURS)
        .map(|(_, r)| r)
        .collect()
}

fn desired() -> Vec<Route> {
    vec![
        via("10.244.2.0/26", "10.20.1.11", "eth0"),
        via("10.244.3.0/26", "10.20.1.12", "eth0"),
        blackhole("10.244.1.0/26"),
    ]
}

#[tokio::test]
async fn installs_then_a_second_pass_changes_nothing() {
    let f = fake();
    let mut r = Reconciler::new(f.clone(), no_grace());
    r.set_desired(desired());
    let rep = r.apply().await.unwrap();
    assert_eq!((rep.added, rep.replaced, rep.deleted), (3, 0, 0));
    assert_eq!(ours(&f).len(), 3);
    let before = f.counts();
    let rep = r.resync().await.unwrap();
    assert_eq!(rep.changes(), 0);
    let after = f.counts();
    assert_eq!(
        (after.adds, after.replaces, after.deletes),
        (before.adds, before.replaces, before.deletes)
    );
}

#[tokio::test]
async fn a_failed_add_is_retried_once() {
    let f = fake();
    f.fail_next_adds(1);
    let mut r = Reconciler::new(f.clone(), no_grace());
    r.set_desired(desired());
    let rep = r.apply().await.unwrap();
    assert!(rep.failed.is_empty(), "{:?}", rep.failed);
    assert_eq!(rep.added, 3);
    assert_eq!(f.counts().failed, 1);
    assert!(!r.resync_due());
}

#[tokio::test]
async fn failing_twice_schedules_a_resync_that_repairs() {
    let f = fake();
    let mut r = Reconciler::new(f.clone(), no_grace());
    r.set_desired(vec![via("10.244.2.0/26", "10.20.1.11", "eth0")]);
    r.resync().await.unwrap();
    r.set_desired(desired());
    // Both adds' first attempts (they are in flight together) and the first retry fail.
    f.fail_next_adds(3);
    let rep = r.apply().await.unwrap();
    assert_eq!(rep.failed.len(), 1, "{:?}", rep.failed);
    assert!(r.resync_due());
    assert_eq!(r.status().errors.len(), 1);
    assert_eq!(ours(&f).len(), 2);
    let lists = f.counts().lists;
    let rep = r.apply().await.unwrap(); // due → full resync
    assert_eq!(f.counts().lists, lists + 1);
    assert_eq!(rep.added, 1);
    assert!(!r.resync_due());
    assert_eq!(ours(&f).len(), 3);
    assert!(r.status().errors.is_empty());
}

#[tokio::test]
async fn start_up_adopts_deletes_stale_and_never_touches_foreign() {
    let f = fake();
    let d = desired();
    // A previous run left two correct routes, one outdated and one stale route; others own
    // two routes, one of them at a key reef wants.
    f.external_put(OURS, kernel(&d[0]));
    f.external_put(OURS, kernel(&d[2]));
    f.external_put(OURS, kernel(&via("10.244.3.0/26", "10.20.1.99", "eth0")));
    f.external_put(OURS, kernel(&via("10.244.9.0/26", "10.20.1.11", "eth0")));
    let foreign = kernel(&via("10.99.0.0/24", "10.20.1.1", "eth0"));
    f.external_put(STATIC, foreign.clone());
    let clash = kernel(&via("10.244.4.0/26", "10.20.1.1", "eth0"));
    f.external_put(STATIC, clash.clone());

    let mut want = d.clone();
    want.push(via("10.244.4.0/26", "10.20.1.13", "eth0"));
    let mut r = Reconciler::new(f.clone(), no_grace());
    r.set_desired(want);
    let rep = r.resync().await.unwrap();
    // Correct routes adopted as they are, the outdated one replaced in place (no delete +
    // add), the stale one deleted.
    assert_eq!((rep.added, rep.replaced, rep.deleted), (0, 1, 1));
    // The clash is reported, not resolved by overwriting the foreign route.
    assert_eq!(rep.failed.len(), 1);
    assert!(rep.failed[0].to_string().contains("10.244.4.0/26"));
    let all = f.routes();
    assert!(all.contains(&(STATIC, foreign)));
    assert!(all.contains(&(STATIC, clash)));
    let mut got = ours(&f);
    got.sort();
    let mut expect: Vec<KernelRoute> = d.iter().map(kernel).collect();
    expect.sort();
    assert_eq!(got, expect);
}

#[tokio::test]
async fn unknown_interface_waits_until_it_exists() {
    let f = fake();
    let mut r = Reconciler::new(f.clone(), no_grace());
    let pod = Route {
        destination: "10.244.1.9/32".parse().unwrap(),
        target: RouteTarget::Unicast(vec![NextHop {
            gateway: None,
            interface: "cali9".into(),
            onlink: false,
        }]),
    };
    r.set_desired(vec![pod.clone()]);
    let rep = r.apply().await.unwrap();
    assert_eq!(rep.unresolved.len(), 1);
    assert!(rep.unresolved[0].to_string().contains("cali9"));
    assert!(ours(&f).is_empty());
    f.add_link("cali9", 9);
    let rep = r.apply().await.unwrap();
    assert_eq!(rep.added, 1);
    assert!(rep.unresolved.is_empty());
    assert_eq!(
        ours(&f)[0].scope,
        253,
        "a route without gateway is scope link"
    );
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    // Generous: the machines running the suite are shared and often overloaded.
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn run_loop_repairs_external_deletes_and_resyncs_on_overrun() {
    let f = fake();
    let cfg = ReconcilerConfig {
        resync_interval: Duration::from_secs(3600), // only events and overruns act here
        ..no_grace()
    };
    let (tx, rx) = watch::channel(desired());
    let (stx, srx) = watch::channel(Default::default());
    let task = tokio::spawn(Reconciler::new(f.clone(), cfg).run(rx, Some(stx)));
    eventually("initial install", || ours(&f).len() == 3).await;

    // Someone deletes a reef route: put back.
    let victim = kernel(&desired()[0]);
    assert!(f.external_delete(victim.key()));
    eventually("route restored", || ours(&f).contains(&victim)).await;

    // Someone deletes a foreign route: nothing happens to it (and no reef route appears).
    let foreign = kernel(&via("10.99.0.0/24", "10.20.1.1", "eth0"));
    f.external_put(STATIC, foreign.clone());
    assert!(f.external_delete(foreign.key()));

    // A lost event (silent delete) is found by the resync an overrun triggers.
    let lost = kernel(&desired()[1]);
    f.silent_delete(lost.key());
    f.overrun();
    eventually("resync after overrun", || ours(&f).contains(&lost)).await;
    assert!(srx.borrow().resyncs >= 2);

    // Desired state changes are applied.
    tx.send_replace(vec![blackhole("10.244.1.0/26")]);
    eventually("shrunk to one route", || ours(&f).len() == 1).await;
    assert!(!f.routes().iter().any(|(_, r)| *r == foreign));

    drop(tx);
    let r = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run returns when the desired channel closes")
        .unwrap()
        .unwrap();
    assert_eq!(r.status().programmed, 1);
}

#[tokio::test]
async fn a_reef_route_changed_by_hand_is_set_back() {
    let f = fake();
    let mut r = Reconciler::new(f.clone(), no_grace());
    r.set_desired(desired());
    r.apply().await.unwrap();
    let mut events = {
        use felix_lite::Netlink;
        f.subscribe().await.unwrap()
    };
    let tampered = kernel(&via("10.244.2.0/26", "10.20.1.66", "eth0"));
    f.external_put(OURS, tampered);
    let ev = events.recv().await.unwrap();
    let rep = r.handle_event(ev).await.unwrap();
    assert_eq!(rep.replaced, 1);
    assert!(ours(&f).contains(&kernel(&desired()[0])));
}

#[tokio::test]
async fn a_vanished_interface_is_noticed_and_its_route_restored() {
    let f = fake();
    let cfg = ReconcilerConfig {
        resync_interval: Duration::from_secs(3600),
        ..no_grace()
    };
    let pod = Route {
        destination: "10.244.1.5/32".parse().unwrap(),
        target: RouteTarget::Unicast(vec![NextHop {
            gateway: None,
            interface: "cali1".into(),
            onlink: false,
        }]),
    };
    let (tx, rx) = watch::channel(vec![pod.clone()]);
    let (stx, srx) = watch::channel(Default::default());
    let task = tokio::spawn(Reconciler::new(f.clone(), cfg).run(rx, Some(stx)));
    eventually("installed", || ours(&f).len() == 1).await;
    f.remove_link("cali1");
    assert!(ours(&f).is_empty());
    eventually("reported", || {
        srx.borrow().errors.iter().any(|e| e.contains("cali1"))
    })
    .await;
    f.add_link("cali1", 42);
    f.link_changed();
    eventually("restored on the new index", || {
        ours(&f).iter().any(
            |r| matches!(&r.target, felix_lite::KernelTarget::Unicast(h) if h[0].ifindex == 42),
        )
    })
    .await;
    drop(tx);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_route_the_cni_plugin_wrote_first_is_left_alone_for_the_grace_period() {
    let f = fake();
    let cfg = ReconcilerConfig {
        stale_grace: Duration::from_millis(1500),
        resync_interval: Duration::from_secs(3600),
        ..ReconcilerConfig::default()
    };
    let (tx, rx) = watch::channel(desired());
    let task = tokio::spawn(Reconciler::new(f.clone(), cfg).run(rx, None));
    eventually("installed", || ours(&f).len() == 3).await;
    let counts = f.counts();

    // The CNI plugin writes two pods' routes with reef's protocol before the agent knows.
    let pod = |a: &str| Route {
        destination: a.parse().unwrap(),
        target: RouteTarget::Unicast(vec![NextHop {
            gateway: None,
            interface: "cali1".into(),
            onlink: false,
        }]),
    };
    let (known, unknown) = (pod("10.244.1.7/32"), pod("10.244.1.8/32"));
    f.external_put(OURS, kernel(&known));
    f.external_put(OURS, kernel(&unknown));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(ours(&f).len(), 5, "nothing deleted within the grace period");
    // The agent learns of one of them: adopted as it is.
    let mut d = desired();
    d.push(known.clone());
    tx.send_replace(d);
    // The other one was never wanted: deleted once the grace period is over.
    eventually("unknown pod route deleted", || {
        !ours(&f).contains(&kernel(&unknown))
    })
    .await;
    assert!(ours(&f).contains(&kernel(&known)));
    let after = f.counts();
    assert_eq!(
        after.adds, counts.adds,
        "the known pod's route was adopted, not re-added"
    );
    assert_eq!(after.replaces, counts.replaces);
    assert_eq!(after.deletes, counts.deletes + 1);
    drop(tx);
    task.await.unwrap().unwrap();
}

/// A route the agent wanted and no longer does (a BGP withdraw, a deleted node's block) goes at
/// once: the grace period is for routes it never wanted (the CNI plugin's, above). Before, every
/// delete waited the grace (10 s by default), so a withdrawn route stayed in the kernel 10 s.
#[tokio::test]
async fn a_route_no_longer_wanted_is_deleted_at_once_not_after_the_grace() {
    let f = fake();
    let cfg = ReconcilerConfig {
        stale_grace: Duration::from_secs(3600),
        resync_interval: Duration::from_secs(3600),
        ..ReconcilerConfig::default()
    };
    let (tx, rx) = watch::channel(desired());
    let task = tokio::spawn(Reconciler::new(f.clone(), cfg).run(rx, None));
    eventually("installed", || ours(&f).len() == 3).await;
    let mut d = desired();
    let withdrawn = d.pop().unwrap();
    tx.send_replace(d);
    eventually("the withdrawn route deleted", || {
        ours(&f).len() == 2 && !ours(&f).contains(&kernel(&withdrawn))
    })
    .await;
    drop(tx);
    task.await.unwrap().unwrap();
}
