//! IPAM operations on the real embedded store.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::TempDir;
use ipnetwork::IpNetwork;
use reef_config::{
    AffinityState, AllocationAttributes, BlockAffinitySpec, IpPoolSpec, IpamBlockSpec,
    IpamConfigSpec,
};
use reef_ipam::block::Block;
use reef_ipam::ipam::{block_name, handle_name};
use reef_ipam::store::{Kind, Labels, Object, Revision, Store, StoreExt, WatchEvent, Watcher};
use reef_ipam::{AutoAssignArgs, EmbeddedStore, Error, HandleId, Ipam, IpamError, Problem};

/// The embedded store, counting the writes that reach it.
#[derive(Debug, Clone)]
struct Counting {
    inner: EmbeddedStore,
    writes: Arc<AtomicU64>,
}

impl Counting {
    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
    fn count<T>(&self, r: Result<T, Error>) -> Result<T, Error> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        r
    }
}

impl Store for Counting {
    fn list(&self, k: Kind, s: &Labels) -> Result<(Vec<Object>, Revision), Error> {
        self.inner.list(k, s)
    }
    fn get(&self, k: Kind, n: &str) -> Result<Option<Object>, Error> {
        self.inner.get(k, n)
    }
    fn create(&self, k: Kind, o: &Object) -> Result<Object, Error> {
        self.count(self.inner.create(k, o))
    }
    fn update(&self, k: Kind, o: &Object) -> Result<Object, Error> {
        self.count(self.inner.update(k, o))
    }
    fn update_status(&self, k: Kind, o: &Object) -> Result<Object, Error> {
        self.count(self.inner.update_status(k, o))
    }
    fn delete(&self, k: Kind, n: &str, r: Option<&Revision>) -> Result<(), Error> {
        self.count(self.inner.delete(k, n, r))
    }
    fn watch(&self, k: Kind, since: &Revision) -> Result<Box<dyn Watcher>, Error> {
        self.inner.watch(k, since)
    }
}

struct Fixture {
    _dir: TempDir,
    path: std::path::PathBuf,
    clock: Arc<AtomicU64>,
    ipam: Ipam<Counting>,
}

fn fixture(pools: &[(&str, &str)]) -> Fixture {
    let dir = TempDir::new("ops");
    let path = dir.path().join("store.db");
    let clock = Arc::new(AtomicU64::new(1_000_000));
    let ipam = open(&path, &clock);
    for (name, cidr) in pools {
        ipam.put_pool(name, IpPoolSpec::new(cidr.parse().unwrap()))
            .unwrap();
    }
    Fixture {
        _dir: dir,
        path,
        clock,
        ipam,
    }
}

fn open(path: &std::path::Path, clock: &Arc<AtomicU64>) -> Ipam<Counting> {
    let c = clock.clone();
    let store = Counting {
        inner: EmbeddedStore::open(path).unwrap(),
        writes: Default::default(),
    };
    Ipam::with_clock(store, Arc::new(move || c.load(Ordering::Relaxed)))
}

fn args(handle: &str, node: &str, v4: usize, v6: usize) -> AutoAssignArgs {
    AutoAssignArgs {
        handle: HandleId(handle.into()),
        num_v4: v4,
        num_v6: v6,
        node: node.into(),
        attributes: AllocationAttributes {
            pod_namespace: Some("default".into()),
            pod_name: Some(handle.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn ipam_err(e: Error) -> IpamError {
    match e {
        Error::Ipam(e) => *e,
        other => panic!("expected an IPAM error, got {other}"),
    }
}

#[test]
fn auto_assign_claims_a_block_then_uses_it_with_two_writes() {
    let f = fixture(&[("v4", "10.244.0.0/16")]);
    let got = f.ipam.auto_assign(&args("pod-a", "node-1", 1, 0)).unwrap();
    assert_eq!(got.v4.len(), 1);
    let blocks = f.ipam.blocks_for_node("node-1").unwrap();
    assert_eq!(blocks, [got.v4[0].block]);
    assert_eq!(blocks[0].prefix(), 26);
    let aff: BlockAffinitySpec = f
        .ipam
        .store()
        .list_typed::<BlockAffinitySpec>(&Labels::new())
        .unwrap()
        .remove(0)
        .spec;
    assert_eq!(aff.state, AffinityState::Confirmed);
    // Steady state: one block write + one handle write per allocation.
    let before = f.ipam.store().writes();
    for i in 0..20 {
        let g = f
            .ipam
            .auto_assign(&args(&format!("pod-{i}"), "node-1", 1, 0))
            .unwrap();
        assert_eq!(g.v4[0].block, blocks[0]);
    }
    assert_eq!(f.ipam.store().writes() - before, 40);
    // Release is two writes as well (block, handle delete).
    let before = f.ipam.store().writes();
    assert_eq!(
        f.ipam
            .release_by_handle(&HandleId("pod-3".into()))
            .unwrap()
            .len(),
        1
    );
    assert_eq!(f.ipam.store().writes() - before, 2);
    assert!(f.ipam.check(None).unwrap().is_clean());
    // The block's attributes say who holds each address.
    let b: IpamBlockSpec = f
        .ipam
        .store()
        .get_typed(&block_name(&blocks[0]))
        .unwrap()
        .unwrap()
        .spec;
    let a = &b.allocations[0];
    assert_eq!(a.handle_id, "pod-a");
    assert_eq!(a.attributes.pod_name.as_deref(), Some("pod-a"));
    assert_eq!(a.attributes.node.as_deref(), Some("node-1"));
    assert_eq!(a.attributes.allocated_at, 1_000_000);
}

#[test]
fn fills_a_block_then_claims_the_next() {
    let f = fixture(&[("v4", "10.10.0.0/24")]);
    let got = f.ipam.auto_assign(&args("big", "n1", 70, 0)).unwrap();
    let addrs: HashSet<IpAddr> = got.v4.iter().map(|a| a.address).collect();
    assert_eq!(addrs.len(), 70);
    assert_eq!(f.ipam.blocks_for_node("n1").unwrap().len(), 2);
    assert_eq!(
        f.ipam.addresses_of(&HandleId("big".into())).unwrap().len(),
        70
    );
    assert!(f.ipam.check(None).unwrap().is_clean());
    assert_eq!(
        f.ipam
            .release_by_handle(&HandleId("big".into()))
            .unwrap()
            .len(),
        70
    );
    // Idempotent: a second release (or an unknown handle) frees nothing and succeeds.
    assert!(f
        .ipam
        .release_by_handle(&HandleId("big".into()))
        .unwrap()
        .is_empty());
    assert!(f
        .ipam
        .release_by_handle(&HandleId("never-seen".into()))
        .unwrap()
        .is_empty());
    assert_eq!(f.ipam.release_empty_blocks("n1").unwrap().len(), 2);
    assert!(f.ipam.blocks_for_node("n1").unwrap().is_empty());
    assert!(f
        .ipam
        .store()
        .list(Kind::IpamBlock, &Labels::new())
        .unwrap()
        .0
        .is_empty());
    assert!(f.ipam.check(None).unwrap().is_clean());
}

#[test]
fn dual_stack_and_rollback() {
    let f = fixture(&[("v4", "10.244.0.0/16"), ("v6", "fd00:244::/56")]);
    let got = f.ipam.auto_assign(&args("ds", "n1", 1, 1)).unwrap();
    assert!(got.v4[0].address.is_ipv4() && got.v6[0].address.is_ipv6());
    assert_eq!(got.v6[0].block.prefix(), 122);
    assert_eq!(
        f.ipam.addresses_of(&HandleId("ds".into())).unwrap().len(),
        2
    );
    // No v6 pool selects node n2: the v4 address it took is given back.
    f.ipam
        .put_pool(
            "v6",
            IpPoolSpec {
                node_selector: [("zone".into(), "b".into())].into(),
                ..IpPoolSpec::new("fd00:244::/56".parse().unwrap())
            },
        )
        .unwrap();
    let e = ipam_err(f.ipam.auto_assign(&args("ds2", "n2", 1, 1)).unwrap_err());
    assert!(matches!(e, IpamError::NoPool { family: "IPv6", .. }), "{e}");
    assert!(f
        .ipam
        .addresses_of(&HandleId("ds2".into()))
        .unwrap()
        .is_empty());
    let r = f.ipam.check(None).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    // With the label, n2 gets both.
    let mut a = args("ds2", "n2", 1, 1);
    a.node_labels = [("zone".into(), "b".into())].into();
    f.ipam.auto_assign(&a).unwrap();
}

#[test]
fn disabled_and_restricted_pools() {
    let f = fixture(&[("a", "10.1.0.0/24"), ("b", "10.2.0.0/24")]);
    f.ipam
        .put_pool(
            "a",
            IpPoolSpec {
                disabled: true,
                ..IpPoolSpec::new("10.1.0.0/24".parse().unwrap())
            },
        )
        .unwrap();
    let got = f.ipam.auto_assign(&args("p", "n1", 3, 0)).unwrap();
    assert!(got.v4.iter().all(|a| "10.2.0.0/24"
        .parse::<IpNetwork>()
        .unwrap()
        .contains(a.address)));
    let mut r = args("q", "n1", 1, 0);
    r.pools = vec!["10.1.0.0/24".parse().unwrap()];
    let e = ipam_err(f.ipam.auto_assign(&r).unwrap_err());
    assert!(e.to_string().contains("among the requested pools"), "{e}");
    // An invalid pool is refused with the field named.
    let e = f
        .ipam
        .put_pool("bad", IpPoolSpec::new("10.3.0.1/24".parse().unwrap()))
        .unwrap_err();
    assert!(e.to_string().contains("spec.cidr"), "{e}");
}

#[test]
fn strict_affinity_max_blocks_and_borrowing() {
    let f = fixture(&[("v4", "10.0.0.0/25")]); // two /26 blocks
    f.ipam
        .set_config(IpamConfigSpec {
            strict_affinity: true,
            auto_allocate_blocks: true,
            max_blocks_per_host: 1,
        })
        .unwrap();
    f.ipam.auto_assign(&args("a", "n1", 60, 0)).unwrap();
    // n1 may hold one block: 4 addresses left there, asking for 10 fails and takes nothing.
    let e = ipam_err(f.ipam.auto_assign(&args("b", "n1", 10, 0)).unwrap_err());
    assert!(
        matches!(
            e,
            IpamError::Exhausted {
                wanted: 10,
                found: 4,
                max_blocks: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(f
        .ipam
        .addresses_of(&HandleId("b".into()))
        .unwrap()
        .is_empty());
    // n2 claims the other block.
    f.ipam.auto_assign(&args("c", "n2", 64, 0)).unwrap();
    // n3 has no block left; strict affinity forbids borrowing.
    assert!(matches!(
        ipam_err(f.ipam.auto_assign(&args("d", "n3", 1, 0)).unwrap_err()),
        IpamError::Exhausted { .. }
    ));
    // Without strict affinity n3 borrows from n1's block.
    f.ipam
        .set_config(IpamConfigSpec {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 1,
        })
        .unwrap();
    let got = f.ipam.auto_assign(&args("d", "n3", 2, 0)).unwrap();
    let n1_block = f.ipam.blocks_for_node("n1").unwrap()[0];
    assert!(got.v4.iter().all(|a| a.block == n1_block));
    let show = f.ipam.show().unwrap();
    assert_eq!(show.len(), 1);
    assert_eq!(show[0].in_use, 126);
    let b = show[0].blocks.iter().find(|b| b.cidr == n1_block).unwrap();
    assert_eq!(b.borrowed.len(), 2);
    assert!(b.borrowed.iter().all(|(_, n)| n == "n3"));
    assert!(f.ipam.check(None).unwrap().is_clean());
    // autoAllocateBlocks off: a new node gets nothing of its own, but may still borrow.
    f.ipam
        .set_config(IpamConfigSpec {
            strict_affinity: false,
            auto_allocate_blocks: false,
            max_blocks_per_host: 0,
        })
        .unwrap();
    f.ipam.auto_assign(&args("e", "n4", 1, 0)).unwrap();
    assert!(f.ipam.blocks_for_node("n4").unwrap().is_empty());
}

#[test]
fn assign_specific_address() {
    let f = fixture(&[("v4", "10.0.0.0/24")]);
    let a: IpAddr = "10.0.0.77".parse().unwrap();
    let h = HandleId("static".into());
    let got = f
        .ipam
        .assign_ip(a, &h, &AllocationAttributes::default(), "n1")
        .unwrap();
    assert_eq!(got.block.to_string(), "10.0.0.64/26");
    assert_eq!(f.ipam.blocks_for_node("n1").unwrap(), [got.block]);
    let e = ipam_err(
        f.ipam
            .assign_ip(
                a,
                &HandleId("x".into()),
                &AllocationAttributes::default(),
                "n1",
            )
            .unwrap_err(),
    );
    assert_eq!(
        e.to_string(),
        "10.0.0.77 is already allocated to handle static"
    );
    let e = ipam_err(
        f.ipam
            .assign_ip(
                "192.168.0.1".parse().unwrap(),
                &h,
                &AllocationAttributes::default(),
                "n1",
            )
            .unwrap_err(),
    );
    assert!(matches!(e, IpamError::NotInPool { .. }));
    // Another node's block: refused only under strict affinity.
    f.ipam
        .assign_ip(
            "10.0.0.78".parse().unwrap(),
            &h,
            &AllocationAttributes::default(),
            "n2",
        )
        .unwrap();
    f.ipam
        .set_config(IpamConfigSpec {
            strict_affinity: true,
            ..Default::default()
        })
        .unwrap();
    let e = ipam_err(
        f.ipam
            .assign_ip(
                "10.0.0.79".parse().unwrap(),
                &h,
                &AllocationAttributes::default(),
                "n2",
            )
            .unwrap_err(),
    );
    assert!(matches!(e, IpamError::NotAffine { .. }), "{e}");
    // Release by address keeps the handle record exact.
    assert_eq!(
        f.ipam
            .release_addresses(&[a, "10.0.0.1".parse().unwrap()])
            .unwrap(),
        [a]
    );
    assert_eq!(f.ipam.addresses_of(&h).unwrap().len(), 1);
    assert!(f.ipam.check(None).unwrap().is_clean());
    // A block that holds addresses is not given up.
    let e = ipam_err(f.ipam.release_block_affinity("n1", &got.block).unwrap_err());
    assert!(
        matches!(e, IpamError::BlockNotEmpty { in_use: 1, .. }),
        "{e}"
    );
}

#[test]
fn tunnel_address_is_stable_under_its_own_handle() {
    let f = fixture(&[("v4", "10.244.0.0/16")]);
    let t = f
        .ipam
        .ensure_tunnel_address("n1", &Labels::new(), true)
        .unwrap();
    assert_eq!(
        f.ipam
            .ensure_tunnel_address("n1", &Labels::new(), true)
            .unwrap(),
        t
    );
    let held = f
        .ipam
        .addresses_of(&Ipam::<EmbeddedStore>::tunnel_handle("n1", true))
        .unwrap();
    assert_eq!(held.len(), 1);
    assert!(f.ipam.blocks_for_node("n1").unwrap()[0].contains(t));
    // Tunnel addresses are not leaks even when no pod handle is live.
    let live = HashSet::new();
    assert!(f.ipam.check(Some(&live)).unwrap().is_clean());
}

#[test]
fn check_and_gc_after_crashes_between_writes() {
    let f = fixture(&[("v4", "10.0.0.0/24")]);
    f.ipam.auto_assign(&args("ok", "n1", 1, 0)).unwrap();
    let cidr = f.ipam.blocks_for_node("n1").unwrap()[0];
    // A process that died after writing the block but before the handle.
    let s = f.ipam.store();
    let mut t = s
        .get_typed::<IpamBlockSpec>(&block_name(&cidr))
        .unwrap()
        .unwrap();
    let mut b = Block::from_spec(t.spec.clone());
    let attrs = AllocationAttributes {
        node: Some("n1".into()),
        allocated_at: 1_000_000,
        ..Default::default()
    };
    let leaked = b.allocate(1, &HandleId("crashed".into()), &attrs)[0];
    t.spec = b.spec;
    s.update_typed(&t).unwrap();
    // A process that died after releasing in the block but before deleting the handle.
    let mut t = s
        .get_typed::<IpamBlockSpec>(&block_name(&cidr))
        .unwrap()
        .unwrap();
    let mut b = Block::from_spec(t.spec.clone());
    b.release_handle(&HandleId("ok".into()));
    t.spec = b.spec;
    s.update_typed(&t).unwrap();

    let r = f.ipam.check(None).unwrap();
    assert_eq!(r.leaks().count(), 1);
    assert!(r.problems.iter().any(|p| matches!(p, Problem::Leaked { addr, handle, .. } if *addr == leaked && handle == "crashed")));
    assert!(r.problems.iter().any(|p| matches!(p, Problem::HandleCountTooHigh { handle, recorded: 1, actual: 0, .. } if handle == "ok")));
    assert!(r
        .problems
        .iter()
        .any(|p| matches!(p, Problem::HandleWithoutAddresses { handle } if handle == "ok")));

    // Within the grace period the leak is kept (its allocator may still be running).
    f.clock.store(1_000_030, Ordering::Relaxed);
    let g = f.ipam.gc(60, None).unwrap();
    assert!(g.released.is_empty());
    assert_eq!(g.kept, 1);
    assert_eq!(g.handles_fixed, ["ok"]);
    f.clock.store(1_000_061, Ordering::Relaxed);
    let g = f.ipam.gc(60, None).unwrap();
    assert_eq!(g.released, [leaked]);
    let r = f.ipam.check(None).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);

    // Owners gone: with a live set, allocations of dead handles are leaks too.
    f.ipam.auto_assign(&args("pod-live", "n1", 1, 0)).unwrap();
    f.ipam.auto_assign(&args("pod-dead", "n1", 1, 0)).unwrap();
    let live: HashSet<HandleId> = [HandleId("pod-live".into())].into();
    let r = f.ipam.check(Some(&live)).unwrap();
    assert_eq!(r.leaks().count(), 1);
    let g = f.ipam.gc(0, Some(&live)).unwrap();
    assert_eq!(g.released.len(), 1);
    assert!(f
        .ipam
        .addresses_of(&HandleId("pod-dead".into()))
        .unwrap()
        .is_empty());
    assert!(f.ipam.check(Some(&live)).unwrap().is_clean());
}

#[test]
fn check_reports_broken_and_outside_blocks() {
    let f = fixture(&[("v4", "10.0.0.0/24")]);
    f.ipam.auto_assign(&args("a", "n1", 1, 0)).unwrap();
    let s = f.ipam.store();
    let cidr = f.ipam.blocks_for_node("n1").unwrap()[0];
    let mut t = s
        .get_typed::<IpamBlockSpec>(&block_name(&cidr))
        .unwrap()
        .unwrap();
    t.spec.unallocated.push(t.spec.allocations[0].ordinal);
    s.update_typed(&t).unwrap();
    let orphan = Block::new("172.16.0.0/26".parse().unwrap(), None).unwrap();
    s.create_typed(&reef_ipam::Typed::new(
        block_name(&orphan.cidr()),
        orphan.spec,
    ))
    .unwrap();
    let r = f.ipam.check(None).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| matches!(p, Problem::BrokenBlock { .. })),
        "{:?}",
        r.problems
    );
    assert!(r
        .problems
        .iter()
        .any(|p| matches!(p, Problem::BlockOutsidePools { .. })));
    // A broken block is an error for allocation, not silently reused.
    let e = ipam_err(f.ipam.auto_assign(&args("b", "n1", 1, 0)).unwrap_err());
    assert!(e.to_string().contains("both free and allocated"), "{e}");
}

/// Two nodes race for the only block of a pool, each through its own connection to the
/// store file: exactly one owns it, the other ends without a block and without error
/// (strict affinity: exhausted; otherwise it borrows).
#[test]
fn concurrent_claims_resolve_to_one_owner() {
    for round in 0..15 {
        let f = fixture(&[("one", "10.9.0.0/26")]);
        let strict = round % 2 == 0;
        f.ipam
            .set_config(IpamConfigSpec {
                strict_affinity: strict,
                ..Default::default()
            })
            .unwrap();
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<Result<reef_ipam::AutoAssigned, Error>> = std::thread::scope(|sc| {
            let hs: Vec<_> = ["na", "nb"]
                .into_iter()
                .map(|node| {
                    let ipam = open(&f.path, &f.clock);
                    let barrier = &barrier;
                    sc.spawn(move || {
                        barrier.wait();
                        ipam.auto_assign(&args(&format!("pod-{node}"), node, 1, 0))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let owners: Vec<_> = ["na", "nb"]
            .iter()
            .filter(|n| !f.ipam.blocks_for_node(n).unwrap().is_empty())
            .collect();
        assert_eq!(owners.len(), 1, "round {round}: {owners:?}");
        let ok = results.iter().filter(|r| r.is_ok()).count();
        if strict {
            assert_eq!(ok, 1, "round {round}: {results:?}");
            let err = results.into_iter().find_map(|r| r.err()).unwrap();
            assert!(matches!(ipam_err(err), IpamError::Exhausted { .. }));
        } else {
            assert_eq!(ok, 2, "round {round}: {results:?}");
        }
        let r = f.ipam.check(None).unwrap();
        assert!(r.is_clean(), "round {round}: {:?}", r.problems);
    }
}

#[test]
fn handle_names_are_valid_and_distinct() {
    let a = handle_name(&HandleId("reef.0123abcd".into()));
    assert_eq!(a, "reef.0123abcd");
    let b = handle_name(&HandleId("Reef/ABC_def".into()));
    let c = handle_name(&HandleId("reef-abc-def".into()));
    assert_ne!(b, c);
    assert!(
        b.bytes()
            .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == b'-' || x == b'.'),
        "{b}"
    );
    let long = handle_name(&HandleId("x".repeat(400)));
    assert!(long.len() <= 253);
}

#[test]
fn agent_can_watch_its_blocks_appear() {
    let f = fixture(&[("v4", "10.0.0.0/24")]);
    let (_, rev) = f
        .ipam
        .store()
        .list(Kind::BlockAffinity, &Labels::new())
        .unwrap();
    let mut w = f.ipam.store().watch(Kind::BlockAffinity, &rev).unwrap();
    f.ipam.auto_assign(&args("a", "n1", 1, 0)).unwrap();
    let mut last = None;
    while let Some(WatchEvent::Put(o)) = w.next(std::time::Duration::from_millis(200)).unwrap() {
        last = Some(serde_json::from_value::<BlockAffinitySpec>(o.spec).unwrap());
    }
    assert_eq!(last.unwrap().state, AffinityState::Confirmed);
}

/// A block broken outside reef (an edited IPAMBlock, a damaged store) with an ordinal beyond
/// its size made release panic (`Block::address` expects a valid ordinal), so CNI DEL died
/// with no answer. Every read of a block is checked first: operations that use it fail with
/// an error naming the block and the field; check reports it; show does not panic.
#[test]
fn security_a_broken_block_from_the_store_is_an_error_naming_it_not_a_panic() {
    let f = fixture(&[("v4", "10.244.0.0/16")]);
    let h = HandleId("pod-broken".into());
    let got = f.ipam.auto_assign(&args(&h.0, "node-1", 1, 0)).unwrap();
    let cidr = got.v4[0].block;
    let mut t = f
        .ipam
        .store()
        .get_typed::<IpamBlockSpec>(&block_name(&cidr))
        .unwrap()
        .unwrap();
    t.spec.allocations[0].ordinal = 999;
    f.ipam.store().update_typed(&t).unwrap();

    let named = |e: Error, what: &str| {
        let msg = e.to_string();
        assert!(
            msg.contains(&cidr.to_string()) && msg.contains("allocations") && msg.contains("999"),
            "{what}: the error names the block, the field and the value: {msg}"
        );
        assert!(
            matches!(ipam_err(e), IpamError::BrokenBlock { .. }),
            "{what}"
        );
    };
    named(
        f.ipam.release_by_handle(&h).unwrap_err(),
        "release_by_handle",
    );
    named(f.ipam.addresses_of(&h).unwrap_err(), "addresses_of");
    let addr = got.v4[0].address;
    named(
        f.ipam
            .assign_ip(
                addr,
                &HandleId("other".into()),
                &Default::default(),
                "node-1",
            )
            .unwrap_err(),
        "assign_ip",
    );
    // Nothing was written back: the block is as broken as it was, not "repaired" by a release.
    let after = f
        .ipam
        .store()
        .get_typed::<IpamBlockSpec>(&block_name(&cidr))
        .unwrap()
        .unwrap();
    assert_eq!(after.spec, t.spec);
    // check names it; show and gc do not panic.
    let report = f.ipam.check(None).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| matches!(p, Problem::BrokenBlock { cidr: c, .. } if *c == cidr)),
        "{:?}",
        report.problems
    );
    f.ipam.show().unwrap();
    f.ipam.gc(0, None).unwrap();
    // A free-list entry out of range is caught the same way.
    t = after;
    t.spec.allocations[0].ordinal = 0;
    t.spec.unallocated.push(4000);
    f.ipam.store().update_typed(&t).unwrap();
    named_unallocated(f.ipam.release_by_handle(&h).unwrap_err());
}

fn named_unallocated(e: Error) {
    let msg = e.to_string();
    assert!(
        msg.contains("unallocated") && msg.contains("4000"),
        "the error names the field and the value: {msg}"
    );
}
