//! The store conformance suite: written once, run against every backend. Each function takes
//! a fresh, empty store.

use std::time::Duration;

use reef_ipam::store::{Kind, Labels, Object, Revision, Store, StoreExt, Typed, WatchEvent};
use reef_ipam::Error;
use serde_json::json;

fn obj(name: &str, spec: serde_json::Value) -> Object {
    Object {
        name: name.into(),
        revision: Revision(String::new()),
        labels: Labels::new(),
        spec,
        status: None,
    }
}

pub fn create_get_list(s: &dyn Store) {
    assert!(s.get(Kind::IpPool, "a").unwrap().is_none());
    let a = s
        .create(Kind::IpPool, &obj("a", json!({"cidr": "10.0.0.0/16"})))
        .unwrap();
    assert!(!a.revision.0.is_empty());
    let got = s.get(Kind::IpPool, "a").unwrap().unwrap();
    assert_eq!(got, a);
    assert_eq!(got.spec, json!({"cidr": "10.0.0.0/16"}));
    match s.create(Kind::IpPool, &obj("a", json!({}))) {
        Err(Error::AlreadyExists {
            kind: Kind::IpPool,
            name,
        }) => assert_eq!(name, "a"),
        other => panic!("duplicate create: {other:?}"),
    }
    // Kinds are separate name spaces.
    s.create(Kind::IpamBlock, &obj("a", json!({"x": 1})))
        .unwrap();
    s.create(Kind::IpPool, &obj("b", json!({"cidr": "10.1.0.0/16"})))
        .unwrap();
    let (pools, _) = s.list(Kind::IpPool, &Labels::new()).unwrap();
    let names: Vec<_> = pools.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(s.list(Kind::IpamBlock, &Labels::new()).unwrap().0.len(), 1);
    assert!(s.list(Kind::BgpPeer, &Labels::new()).unwrap().0.is_empty());
}

pub fn compare_and_swap(s: &dyn Store) {
    let a = s
        .create(Kind::IpamHandle, &obj("h", json!({"n": 0})))
        .unwrap();
    let mut b = a.clone();
    b.spec = json!({"n": 1});
    let b = s.update(Kind::IpamHandle, &b).unwrap();
    assert_ne!(b.revision, a.revision);
    assert_eq!(
        s.get(Kind::IpamHandle, "h").unwrap().unwrap().spec,
        json!({"n": 1})
    );
    // A write based on the old revision loses.
    let mut stale = a.clone();
    stale.spec = json!({"n": 99});
    assert!(matches!(
        s.update(Kind::IpamHandle, &stale),
        Err(Error::Conflict { .. })
    ));
    assert_eq!(
        s.get(Kind::IpamHandle, "h").unwrap().unwrap().spec,
        json!({"n": 1})
    );
    let mut ghost = a.clone();
    ghost.name = "nobody".into();
    assert!(matches!(
        s.update(Kind::IpamHandle, &ghost),
        Err(Error::NotFound { .. })
    ));
    // Delete on a revision: stale loses, current wins, a second delete finds nothing.
    assert!(matches!(
        s.delete(Kind::IpamHandle, "h", Some(&a.revision)),
        Err(Error::Conflict { .. })
    ));
    s.delete(Kind::IpamHandle, "h", Some(&b.revision)).unwrap();
    assert!(s.get(Kind::IpamHandle, "h").unwrap().is_none());
    assert!(matches!(
        s.delete(Kind::IpamHandle, "h", None),
        Err(Error::NotFound { .. })
    ));
    // Unconditional delete.
    s.create(Kind::IpamHandle, &obj("h2", json!({}))).unwrap();
    s.delete(Kind::IpamHandle, "h2", None).unwrap();
    // Recreated objects start over.
    let again = s
        .create(Kind::IpamHandle, &obj("h", json!({"n": 5})))
        .unwrap();
    assert_ne!(again.revision, b.revision);
}

pub fn labels_select(s: &dyn Store) {
    let mut a = obj("n1-x", json!({}));
    a.labels.insert("reef.dev/node".into(), "n1".into());
    a.labels.insert("zone".into(), "a".into());
    let mut b = obj("n2-x", json!({}));
    b.labels.insert("reef.dev/node".into(), "n2".into());
    s.create(Kind::BlockAffinity, &a).unwrap();
    s.create(Kind::BlockAffinity, &b).unwrap();
    s.create(Kind::BlockAffinity, &obj("none", json!({})))
        .unwrap();
    let sel = |pairs: &[(&str, &str)]| -> Vec<String> {
        let l: Labels = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s.list(Kind::BlockAffinity, &l)
            .unwrap()
            .0
            .into_iter()
            .map(|o| o.name)
            .collect()
    };
    assert_eq!(sel(&[("reef.dev/node", "n1")]), ["n1-x"]);
    assert_eq!(sel(&[("reef.dev/node", "n2")]), ["n2-x"]);
    assert_eq!(sel(&[("reef.dev/node", "n1"), ("zone", "a")]), ["n1-x"]);
    assert!(sel(&[("reef.dev/node", "n1"), ("zone", "b")]).is_empty());
    assert_eq!(sel(&[]).len(), 3);
    // Labels are replaced by update.
    let mut got = s.get(Kind::BlockAffinity, "n1-x").unwrap().unwrap();
    got.labels.insert("reef.dev/node".into(), "n3".into());
    s.update(Kind::BlockAffinity, &got).unwrap();
    assert!(sel(&[("reef.dev/node", "n1")]).is_empty());
    assert_eq!(sel(&[("reef.dev/node", "n3")]), ["n1-x"]);
}

pub fn status_is_separate(s: &dyn Store) {
    let a = s
        .create(
            Kind::ReefNode,
            &obj("n1", json!({"address": "10.0.0.1/24"})),
        )
        .unwrap();
    let mut st = a.clone();
    st.status = Some(json!({"totalPeers": 2}));
    st.spec = json!({"ignored": true});
    let b = s.update_status(Kind::ReefNode, &st).unwrap();
    let got = s.get(Kind::ReefNode, "n1").unwrap().unwrap();
    assert_eq!(
        got.spec,
        json!({"address": "10.0.0.1/24"}),
        "update_status must not change the spec"
    );
    assert_eq!(got.status, Some(json!({"totalPeers": 2})));
    assert_eq!(got.revision, b.revision);
    let mut sp = got.clone();
    sp.spec = json!({"address": "10.0.0.2/24"});
    sp.status = None;
    s.update(Kind::ReefNode, &sp).unwrap();
    let got = s.get(Kind::ReefNode, "n1").unwrap().unwrap();
    assert_eq!(
        got.status,
        Some(json!({"totalPeers": 2})),
        "update must not change the status"
    );
    assert!(matches!(
        s.update_status(Kind::ReefNode, &st),
        Err(Error::Conflict { .. })
    ));
}

pub fn typed_round_trip(s: &dyn Store) {
    let pool = reef_config::IpPoolSpec::new("10.244.0.0/16".parse().unwrap());
    let t = s
        .create_typed(&Typed::new("default-v4", pool.clone()).with_label("k", "v"))
        .unwrap();
    let got: Typed<reef_config::IpPoolSpec> = s.get_typed("default-v4").unwrap().unwrap();
    assert_eq!(got.spec, pool);
    assert_eq!(got.labels.get("k").map(String::as_str), Some("v"));
    let mut upd = t.clone();
    upd.spec.disabled = true;
    s.update_typed(&upd).unwrap();
    assert!(matches!(s.update_typed(&upd), Err(Error::Conflict { .. })));
    let all: Vec<Typed<reef_config::IpPoolSpec>> = s.list_typed(&Labels::new()).unwrap();
    assert!(all[0].spec.disabled);
    // A stored value of the wrong shape is a decode error naming the object, not a panic.
    s.create(Kind::IpPool, &obj("junk", json!({"cidr": "not a cidr"})))
        .unwrap();
    match s.get_typed::<reef_config::IpPoolSpec>("junk") {
        Err(e @ Error::Decode { .. }) => assert!(e.to_string().contains("IPPool junk"), "{e}"),
        other => panic!("{other:?}"),
    }
}

pub fn watch_sees_changes_in_order(s: &dyn Store) {
    s.create(Kind::IpamBlock, &obj("before", json!({})))
        .unwrap();
    let (_, rev) = s.list(Kind::IpamBlock, &Labels::new()).unwrap();
    let mut w = s.watch(Kind::IpamBlock, &rev).unwrap();
    assert!(
        w.next(Duration::from_millis(50)).unwrap().is_none(),
        "nothing changed since the list"
    );
    let a = s
        .create(Kind::IpamBlock, &obj("a", json!({"v": 1})))
        .unwrap();
    s.create(Kind::IpPool, &obj("other-kind", json!({})))
        .unwrap();
    s.delete(Kind::IpamBlock, "before", None).unwrap();
    let e1 = w.next(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(e1, WatchEvent::Put(a.clone()));
    match w.next(Duration::from_secs(5)).unwrap().unwrap() {
        WatchEvent::Deleted { name, .. } => assert_eq!(name, "before"),
        other => panic!("{other:?}"),
    }
    let mut b = a.clone();
    b.spec = json!({"v": 2});
    let b = s.update(Kind::IpamBlock, &b).unwrap();
    match w.next(Duration::from_secs(5)).unwrap().unwrap() {
        WatchEvent::Put(o) => {
            assert_eq!(o.spec, json!({"v": 2}));
            assert_eq!(o.revision, b.revision);
        }
        other => panic!("{other:?}"),
    }
    assert!(w.next(Duration::from_millis(50)).unwrap().is_none());
}

/// Many writers doing read-modify-write with retry on conflict lose no update.
pub fn concurrent_cas_loses_nothing(s: &(dyn Store + Sync), threads: usize, per_thread: usize) {
    s.create(Kind::IpamHandle, &obj("counter", json!({"n": 0})))
        .unwrap();
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                for _ in 0..per_thread {
                    loop {
                        let mut o = s.get(Kind::IpamHandle, "counter").unwrap().unwrap();
                        let n = o.spec["n"].as_u64().unwrap();
                        o.spec = json!({"n": n + 1});
                        match s.update(Kind::IpamHandle, &o) {
                            Ok(_) => break,
                            Err(Error::Conflict { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    let o = s.get(Kind::IpamHandle, "counter").unwrap().unwrap();
    assert_eq!(o.spec["n"].as_u64().unwrap(), (threads * per_thread) as u64);
}

/// Runs every check, each on a fresh store from `make`.
/// `names` answers what `list` would, in name order, per kind, without the objects.
pub fn names_match_list(s: &dyn Store) {
    assert!(s.names(Kind::IpamBlock).unwrap().is_empty());
    for n in ["b", "a", "c"] {
        s.create(Kind::IpamBlock, &obj(n, json!({"big": [1, 2, 3]})))
            .unwrap();
    }
    s.create(Kind::IpPool, &obj("z", json!({}))).unwrap();
    s.delete(Kind::IpamBlock, "c", None).unwrap();
    assert_eq!(s.names(Kind::IpamBlock).unwrap(), ["a", "b"]);
    assert_eq!(s.names(Kind::IpPool).unwrap(), ["z"]);
}

pub fn run_all<S: Store + Sync>(make: impl Fn() -> S) {
    create_get_list(&make());
    names_match_list(&make());
    compare_and_swap(&make());
    labels_select(&make());
    status_is_separate(&make());
    typed_round_trip(&make());
    watch_sees_changes_in_order(&make());
    concurrent_cas_loses_nothing(&make(), 4, 50);
}
