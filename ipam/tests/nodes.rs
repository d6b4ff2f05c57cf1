//! Node objects on the Kubernetes datastore, against a STAND-IN for the API server
//! (`reef_integration::apiserver`; no real API server runs on this machine): Node labels drive
//! pool node selectors, the cleaner's Lease elects one leader, a deleted Node's IPAM state is
//! released, and leaked pod addresses are freed after a grace but never once reused.
#![cfg(feature = "kubernetes")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use reef_config::{AllocationAttributes, IpPoolSpec, ReefNodeSpec};
use reef_integration::apiserver::StandIn;
use reef_ipam::cleaner::{self, CleanerConfig, Elector, Sweeper};
use reef_ipam::kubernetes::KubeStore;
use reef_ipam::store::{effective_node_labels, follow_node_labels, Labels};
use reef_ipam::{AutoAssignArgs, HandleId, Ipam, StoreExt, Typed};

fn ipam(api: &StandIn) -> Ipam<KubeStore> {
    Ipam::new(KubeStore::connect_url(&api.url()).unwrap())
}

fn pool(cidr: &str, selector: &[(&str, &str)]) -> IpPoolSpec {
    let mut p = IpPoolSpec::new(cidr.parse().unwrap());
    p.node_selector = selector
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    p
}

fn alloc(ipam: &Ipam<KubeStore>, handle: &str, node: &str, pod: Option<&str>) -> std::net::IpAddr {
    let labels = effective_node_labels(ipam.store(), node, &Labels::new()).unwrap();
    let a = ipam
        .auto_assign(&AutoAssignArgs {
            handle: HandleId(handle.into()),
            num_v4: 1,
            node: node.into(),
            node_labels: labels,
            attributes: AllocationAttributes {
                pod_namespace: pod.map(|_| "default".to_string()),
                pod_name: pod.map(str::to_string),
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
    a.v4[0].address
}

fn within(net: &str, a: std::net::IpAddr) -> bool {
    net.parse::<IpNetwork>().unwrap().contains(a)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn node_labels_come_from_the_node_object_and_changes_apply_to_new_allocations() {
    let api = StandIn::start().unwrap();
    let ipam = ipam(&api);
    ipam.put_pool("gpu", pool("10.60.0.0/24", &[("gpu", "true")]))
        .unwrap();
    // Pools are tried in name order: "gpu" first when it selects the node.
    ipam.put_pool("z-any", pool("10.61.0.0/24", &[])).unwrap();
    // No Node yet: no labels, and the config's are not used with Node objects.
    let configured = Labels::from([("gpu".to_string(), "true".to_string())]);
    assert_eq!(
        effective_node_labels(ipam.store(), "n1", &configured).unwrap(),
        Labels::new()
    );
    api.put_node("n1", &[("gpu", "true")], &["192.168.1.10"]);
    assert!(within("10.60.0.0/24", alloc(&ipam, "p1", "n1", None)));

    // The follower sees the label go; a new allocation then avoids the gpu pool.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s2, url) = (seen.clone(), api.url());
    let follower = std::thread::spawn(move || {
        let store = KubeStore::connect_url(&url).unwrap();
        follow_node_labels(
            &store,
            "n1",
            &Labels::new(),
            Duration::from_millis(100),
            |l| {
                let mut v = s2.lock().unwrap();
                v.push(l);
                v.len() < 2
            },
        );
    });
    wait_for("the first labels", Duration::from_secs(5), || {
        seen.lock().unwrap().len() == 1
    });
    // Another node's change does not wake the follower (its watch is on n1 only).
    api.put_node("n2", &[("gpu", "true")], &["192.168.1.11"]);
    api.put_node("n1", &[("zone", "a")], &["192.168.1.10"]);
    follower.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].get("gpu").map(String::as_str), Some("true"));
    assert_eq!(
        seen[1],
        Labels::from([("zone".to_string(), "a".to_string())])
    );
    assert!(within("10.61.0.0/24", alloc(&ipam, "p2", "n1", None)));
}

#[test]
fn two_electors_racing_give_exactly_one_leader_and_a_takeover_after_expiry() {
    let api = StandIn::start().unwrap();
    let (a, b) = (
        KubeStore::connect_url(&api.url()).unwrap(),
        KubeStore::connect_url(&api.url()).unwrap(),
    );
    let cfg = |id: &str| {
        let mut c = CleanerConfig::new(id, "reef-system");
        c.lease_duration = Duration::from_secs(1);
        c
    };
    let mut ea = Elector::new(cfg("node-a"));
    let mut eb = Elector::new(cfg("node-b"));
    // Both race for the absent Lease at once, from two threads, many rounds.
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| (0..20).map(|_| ea.step(&a).unwrap()).collect::<Vec<_>>());
        let tb = s.spawn(|| (0..20).map(|_| eb.step(&b).unwrap()).collect::<Vec<_>>());
        (ta.join().unwrap(), tb.join().unwrap())
    });
    // Every round, at most one of them held it.
    assert!(
        ra.iter().zip(&rb).all(|(x, y)| !(*x && *y)),
        "{ra:?} {rb:?}"
    );
    assert!(
        ea.is_leader() ^ eb.is_leader(),
        "exactly one leader: {ra:?} {rb:?}"
    );
    let (leader, follower, fstore, lstore) = if ea.is_leader() {
        (&mut ea, &mut eb, &b, &a)
    } else {
        (&mut eb, &mut ea, &a, &b)
    };
    let lease = api.object("leases", "reef-system/reef-cleanup").unwrap();
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(lease["spec"]["renewTime"].as_str().unwrap().ends_with('Z'));
    // While renewed, the other never takes over.
    for _ in 0..4 {
        assert!(leader.step(lstore).unwrap());
        assert!(!follower.step(fstore).unwrap());
        std::thread::sleep(Duration::from_millis(300));
    }
    // The leader stops renewing: after the lease duration the other takes over.
    let t = Instant::now();
    while !follower.step(fstore).unwrap() {
        std::thread::sleep(Duration::from_millis(100));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    // It last saw the record change just before the final 300 ms sleep.
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    let lease = api.object("leases", "reef-system/reef-cleanup").unwrap();
    assert_ne!(lease["spec"]["holderIdentity"].as_str().unwrap(), holder);
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    // The old leader learns it lost (its renew conflicts or finds another holder).
    assert!(!leader.step(lstore).unwrap());
    // Giving the lease up lets the other take it at once.
    follower.release(fstore).unwrap();
    assert!(leader.step(lstore).unwrap());
}

#[test]
fn running_cleaners_elect_one_and_a_deleted_node_is_released() {
    let api = StandIn::start().unwrap();
    let ipam = Arc::new(ipam(&api));
    // Two /26 blocks: one per node; a third node gets only what the deleted one gave back.
    let mut p = pool("10.70.0.0/25", &[]);
    p.block_size = Some(26);
    ipam.put_pool("p", p).unwrap();
    for (n, a) in [("n1", "192.168.1.1/24"), ("n2", "192.168.1.2/24")] {
        api.put_node(n, &[], &[a.split('/').next().unwrap()]);
        let spec = ReefNodeSpec {
            address: a.parse().unwrap(),
            address_v6: None,
            as_number: None,
            tunnel_address: Some(ipam.ensure_tunnel_address(n, &Labels::new(), true).unwrap()),
            route_reflector_cluster_id: None,
        };
        ipam.store().create_typed(&Typed::new(n, spec)).unwrap();
    }
    let n1_block = ipam.blocks_for_node("n1").unwrap()[0];
    let n2_block = ipam.blocks_for_node("n2").unwrap()[0];
    let p1 = alloc(&ipam, "net.c1", "n1", Some("web-1"));
    let p2 = alloc(&ipam, "net.c2", "n2", Some("web-2"));
    api.put_pod("default", "web-1", &[]);
    api.put_pod("default", "web-2", &[]);
    assert!(n1_block.contains(p1) && n2_block.contains(p2));

    let start = |id: &str| {
        let mut c = CleanerConfig::new(id, "reef-system");
        c.lease_duration = Duration::from_secs(2);
        c.renew_every = Duration::from_millis(300);
        c.node_grace = Duration::from_secs(1);
        let store = KubeStore::connect_url(&api.url()).unwrap();
        cleaner::spawn(Arc::new(Ipam::new(store)), c)
            .unwrap()
            .unwrap()
    };
    let (c1, c2) = (start("n1"), start("n2"));
    wait_for("a leader", Duration::from_secs(5), || {
        c1.is_leader() || c2.is_leader()
    });
    for _ in 0..10 {
        assert!(!(c1.is_leader() && c2.is_leader()), "two leaders");
        std::thread::sleep(Duration::from_millis(100));
    }

    let t = Instant::now();
    assert!(api.delete_node("n1"));
    let gone = || {
        ipam.store()
            .get_typed::<ReefNodeSpec>("n1")
            .unwrap()
            .is_none()
            && ipam.blocks_for_node("n1").unwrap().is_empty()
            && ipam.gone_nodes().unwrap().is_empty()
            && ipam
                .addresses_of(&Ipam::<KubeStore>::tunnel_handle("n1", true))
                .unwrap()
                .is_empty()
            && ipam
                .addresses_of(&HandleId("net.c1".into()))
                .unwrap()
                .is_empty()
    };
    wait_for("n1 released", Duration::from_secs(10), gone);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "released within the grace: {took:?}"
    );
    eprintln!("deleted node released {took:?} after its Node was deleted (grace 1 s)");
    // n1's block is gone, n2 untouched; the check is clean.
    assert!(ipam
        .store()
        .get_typed::<reef_config::IpamBlockSpec>(&reef_ipam::ipam::block_name(&n1_block))
        .unwrap()
        .is_none());
    assert_eq!(ipam.blocks_for_node("n2").unwrap(), vec![n2_block]);
    assert_eq!(
        ipam.addresses_of(&HandleId("net.c2".into())).unwrap()[0].address,
        p2
    );
    assert!(ipam
        .store()
        .get_typed::<ReefNodeSpec>("n2")
        .unwrap()
        .is_some());
    let r = ipam.check(None).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    // A new node claims the freed block.
    api.put_node("n3", &[], &["192.168.1.3"]);
    let p3 = alloc(&ipam, "net.c3", "n3", Some("web-3"));
    assert!(n1_block.contains(p3), "{p3} not in {n1_block}");
    drop(c1);
    drop(c2);
    // Stopping gave the Lease up.
    let lease = api.object("leases", "reef-system/reef-cleanup").unwrap();
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
}

/// n1 allocates one address (claiming its first block), then n2 holds an address of n1's
/// block (as when it borrows); returns n1's address and the block.
fn n2_borrows_from_n1(ipam: &Ipam<KubeStore>) -> (std::net::IpAddr, IpNetwork) {
    let a1 = alloc(ipam, "net.c1", "n1", Some("a"));
    let block = ipam.blocks_for_node("n1").unwrap()[0];
    let borrowed = reef_ipam::block::nth_address(&block, 5).unwrap();
    ipam.assign_ip(
        borrowed,
        &HandleId("net.c2".into()),
        &Default::default(),
        "n2",
    )
    .unwrap();
    (a1, block)
}

/// Nodes n1 and n2 on the stand-in, one pool, n2 holding an address of n1's block (returned).
fn two_nodes_n2_borrowing() -> (StandIn, Ipam<KubeStore>, IpNetwork) {
    let api = StandIn::start().unwrap();
    let ipam = ipam(&api);
    ipam.put_pool("p", pool("10.73.0.0/24", &[])).unwrap();
    api.put_node("n1", &[], &["192.168.1.1"]);
    api.put_node("n2", &[], &["192.168.1.2"]);
    let (_, block) = n2_borrows_from_n1(&ipam);
    (api, ipam, block)
}

#[test]
fn a_deleted_nodes_block_with_borrowed_addresses_is_orphaned_then_deleted_when_empty() {
    let api = StandIn::start().unwrap();
    let ipam = ipam(&api);
    ipam.put_pool("p", pool("10.71.0.0/24", &[])).unwrap();
    api.put_node("n2", &[], &["192.168.1.2"]);
    let (a1, block) = n2_borrows_from_n1(&ipam);
    let r = ipam.release_node("n1").unwrap();
    assert_eq!(r.addresses, vec![a1]);
    assert_eq!(r.blocks_orphaned, vec![block]);
    assert!(ipam.blocks_for_node("n1").unwrap().is_empty());
    assert!(ipam.release_unowned_empty_blocks().unwrap().is_empty());
    ipam.release_by_handle(&HandleId("net.c2".into())).unwrap();
    assert_eq!(ipam.release_unowned_empty_blocks().unwrap(), vec![block]);
    let r = ipam.check(None).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    // Idempotent.
    assert!(ipam.release_node("n1").unwrap().is_empty());
}

#[test]
fn leaked_addresses_are_freed_after_the_grace_but_never_once_reused() {
    let api = StandIn::start().unwrap();
    let ipam = ipam(&api);
    let mut p = pool("10.72.0.0/26", &[]);
    p.block_size = Some(26);
    ipam.put_pool("p", p).unwrap();
    api.put_node("n1", &[], &["192.168.1.1"]);
    api.put_pod("default", "alive", &[]);
    let alive = alloc(&ipam, "net.alive", "n1", Some("alive"));
    let leaked = alloc(&ipam, "net.leaked", "n1", Some("gone-1"));
    let reused = alloc(&ipam, "net.old", "n1", Some("gone-2"));
    let mut cfg = CleanerConfig::new("n1", "reef-system");
    cfg.leak_grace = Duration::from_millis(1500);
    cfg.leak_scan_every = Duration::ZERO;
    cfg.node_grace = Duration::from_secs(1);
    let mut sweeper = Sweeper::default();
    // First sighting: nothing freed yet.
    let r = sweeper.pass(&ipam, &cfg, Duration::ZERO).unwrap();
    assert!(r.leaks_released.is_empty(), "{r:?}");
    // Meanwhile the runtime's DEL frees `reused` and a new sandbox gets the same address
    // (its pod is also missing from the API, the worst case: a new grace starts for it).
    let stale = ipam
        .pod_allocations()
        .unwrap()
        .into_iter()
        .find(|a| a.addr == reused)
        .unwrap();
    ipam.release_by_handle(&HandleId("net.old".into())).unwrap();
    ipam.assign_ip(
        reused,
        &HandleId("net.new".into()),
        &AllocationAttributes {
            pod_namespace: Some("default".into()),
            pod_name: Some("gone-3".into()),
            ..Default::default()
        },
        "n1",
    )
    .unwrap();
    // The stale allocation is never freed, even by a direct call.
    assert!(!ipam.release_if_unchanged(&stale).unwrap());
    std::thread::sleep(Duration::from_millis(1600));
    let r = sweeper.pass(&ipam, &cfg, Duration::ZERO).unwrap();
    let freed: Vec<_> = r.leaks_released.iter().map(|a| a.addr).collect();
    assert_eq!(freed, vec![leaked]);
    let held = |h: &str| -> Vec<_> {
        ipam.addresses_of(&HandleId(h.into()))
            .unwrap()
            .into_iter()
            .map(|a| a.address)
            .collect()
    };
    assert_eq!(held("net.new"), vec![reused]);
    assert_eq!(held("net.alive"), vec![alive]);
    assert!(held("net.leaked").is_empty());
    let r = ipam.check(None).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
}

#[test]
fn the_leader_relabels_blocks_whose_index_labels_disagree_with_their_spec() {
    // As after an upgrade from a reef that had no `reef.dev/lent`: n2 holds an address of
    // n1's block, but the label that makes every agent follow that block is missing.
    let (_api, ipam, block) = two_nodes_n2_borrowing();
    let lent = || -> Vec<IpNetwork> {
        let sel: Labels = [(reef_ipam::ipam::LENT_LABEL.to_string(), "true".to_string())]
            .into_iter()
            .collect();
        ipam.store()
            .list_typed::<reef_config::IpamBlockSpec>(&sel)
            .unwrap()
            .into_iter()
            .map(|t| t.spec.cidr)
            .collect()
    };
    assert_eq!(lent(), vec![block]);
    // The old reef's block: written without the label (straight to the store).
    let name = reef_ipam::ipam::block_name(&block);
    let mut t = ipam
        .store()
        .get_typed::<reef_config::IpamBlockSpec>(&name)
        .unwrap()
        .unwrap();
    t.labels.remove(reef_ipam::ipam::LENT_LABEL);
    ipam.store().update_typed(&t).unwrap();
    assert!(lent().is_empty());

    // The cleaner's first pass as leader puts it back; nothing is left to relabel after.
    let cfg = CleanerConfig::new("n1", "reef-system");
    Sweeper::default()
        .pass(&ipam, &cfg, Duration::ZERO)
        .unwrap();
    assert_eq!(lent(), vec![block]);
    assert!(ipam.relabel_blocks().unwrap().is_empty());
    let r = ipam.check(None).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
}

/// The leader's resync lists the IPAM blocks once for all it does with them: the holders of
/// gone nodes, the unowned empty blocks, the index labels.
#[test]
fn the_leaders_resync_lists_the_blocks_once() {
    let (api, ipam, _) = two_nodes_n2_borrowing();
    let block_lists = || -> u64 {
        api.request_counts()
            .iter()
            .filter(|(k, _)| k.verb == "list" && k.resource == "ipamblocks")
            .map(|(_, n)| n)
            .sum()
    };
    let mut cfg = CleanerConfig::new("n1", "reef-system");
    // Every pass resyncs; only the first scans for leaks (which lists the blocks too).
    cfg.resync_every = Duration::ZERO;
    cfg.leak_scan_every = Duration::from_secs(3600);
    let mut sweeper = Sweeper::default();
    sweeper.pass(&ipam, &cfg, Duration::ZERO).unwrap();
    let before = block_lists();
    sweeper.pass(&ipam, &cfg, Duration::ZERO).unwrap();
    assert_eq!(block_lists() - before, 1, "block lists in one resync");
}
