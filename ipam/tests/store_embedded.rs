//! The store conformance suite against the embedded (SQLite) store, plus what only the
//! embedded store promises: several processes' worth of handles on one file, reopening.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::{conformance, TempDir};
use reef_ipam::store::{Kind, Labels, Object, Revision, Store};
use reef_ipam::{EmbeddedStore, Error};
use serde_json::json;

#[test]
fn conformance_suite() {
    let dir = TempDir::new("conf");
    let n = AtomicU32::new(0);
    conformance::run_all(|| {
        EmbeddedStore::open(
            dir.path()
                .join(format!("s{}.db", n.fetch_add(1, Ordering::Relaxed))),
        )
        .unwrap()
    });
}

/// Two handles on one file (as two processes have) see each other's writes and conflict
/// properly; data survives reopening.
#[test]
fn two_connections_one_file_and_reopen() {
    let dir = TempDir::new("two");
    let path = dir.path().join("nested/dir/store.db");
    let a = EmbeddedStore::open(&path).unwrap();
    let b = EmbeddedStore::open(&path).unwrap();
    let o = Object {
        name: "x".into(),
        revision: Revision(String::new()),
        labels: Labels::new(),
        spec: json!({"n": 1}),
        status: None,
    };
    let created = a.create(Kind::IpamBlock, &o).unwrap();
    assert_eq!(b.get(Kind::IpamBlock, "x").unwrap().unwrap(), created);
    let mut via_b = created.clone();
    via_b.spec = json!({"n": 2});
    b.update(Kind::IpamBlock, &via_b).unwrap();
    assert!(matches!(
        a.update(Kind::IpamBlock, &created),
        Err(Error::Conflict { .. })
    ));
    // Both handles write concurrently without losing updates.
    conformance::concurrent_cas_loses_nothing(&a, 2, 50);
    drop((a, b));
    let c = EmbeddedStore::open(&path).unwrap();
    assert_eq!(
        c.get(Kind::IpamBlock, "x").unwrap().unwrap().spec,
        json!({"n": 2})
    );
    assert_eq!(
        c.get(Kind::IpamHandle, "counter").unwrap().unwrap().spec,
        json!({"n": 100})
    );
}

#[test]
fn watch_from_pruned_revision_expires() {
    let dir = TempDir::new("prune");
    let s = EmbeddedStore::open(dir.path().join("s.db")).unwrap();
    let (_, start) = s.list(Kind::IpamHandle, &Labels::new()).unwrap();
    let mut w = s.watch(Kind::IpamHandle, &start).unwrap();
    let mut o = s
        .create(
            Kind::IpamHandle,
            &Object {
                name: "h".into(),
                revision: Revision(String::new()),
                labels: Labels::new(),
                spec: json!(0),
                status: None,
            },
        )
        .unwrap();
    // Enough writes to prune the change log past the watcher's position.
    for i in 1..22_600 {
        o.spec = json!(i);
        o = s.update(Kind::IpamHandle, &o).unwrap();
    }
    assert!(matches!(
        w.next(std::time::Duration::from_millis(10)),
        Err(Error::Expired { .. })
    ));
    // A fresh list + watch works.
    let (_, now) = s.list(Kind::IpamHandle, &Labels::new()).unwrap();
    let mut w = s.watch(Kind::IpamHandle, &now).unwrap();
    assert!(w
        .next(std::time::Duration::from_millis(10))
        .unwrap()
        .is_none());
}

#[test]
fn open_reports_unusable_path() {
    let dir = TempDir::new("bad");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = EmbeddedStore::open(file.join("store.db")).unwrap_err();
    assert!(e.to_string().contains("embedded store"), "{e}");
    // A file that is not a database is an error, not a panic.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x55u8; 8192]).unwrap();
    let e = EmbeddedStore::open(&junk).unwrap_err();
    assert!(e.to_string().contains("junk.db"), "{e}");
}

/// A file that is not a database is a permanent fault (not "busy, try again"), and the error
/// says what to do; so is a store whose pages were damaged after it was written.
#[test]
fn security_garbage_and_damaged_stores_are_unusable_not_busy() {
    let dir = TempDir::new("garbage");
    let junk = dir.path().join("junk.db");
    std::fs::write(
        &junk,
        b"this is not a database, just some text\n".repeat(200),
    )
    .unwrap();
    match EmbeddedStore::open(&junk) {
        Err(e @ Error::Unusable { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("junk.db"), "{msg}");
            assert!(msg.contains("move"), "says what to do: {msg}");
        }
        other => panic!("expected Error::Unusable, got {other:?}"),
    }

    // A real store whose pages after the header are overwritten: open may still work, but
    // reading the objects must fail as unusable too.
    let path = dir.path().join("damaged.db");
    {
        let s = EmbeddedStore::open(&path).unwrap();
        for i in 0..200 {
            let o = Object {
                name: format!("o{i}"),
                revision: Revision(String::new()),
                labels: Labels::new(),
                spec: json!({"pad": "x".repeat(500)}),
                status: None,
            };
            s.create(Kind::IpamHandle, &o).unwrap();
        }
        // Fold the WAL into the file, so the damage below is what a reader sees.
        let c = EmbeddedStore::open(&path).unwrap();
        c.start_checkpointer().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let _ = std::fs::remove_file(dir.path().join("damaged.db-wal"));
    let _ = std::fs::remove_file(dir.path().join("damaged.db-shm"));
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes.len() > 8192,
        "store too small to damage: {}",
        bytes.len()
    );
    for b in &mut bytes[4096..] {
        *b = 0xa5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let got = EmbeddedStore::open(&path).and_then(|s| s.list(Kind::IpamHandle, &Labels::new()));
    assert!(
        matches!(got, Err(Error::Unusable { .. })),
        "a damaged store must be unusable: {got:?}"
    );
}

/// The store holds every pod's name and address: its directory is 0700, the database and its
/// WAL and shared-memory files 0600; a store an older reef left world-readable is tightened.
#[test]
fn security_store_directory_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("modes");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let path = dir.path().join("reef/store.db");
    let s = EmbeddedStore::open(&path).unwrap();
    s.create(
        Kind::IpamHandle,
        &Object {
            name: "h".into(),
            revision: Revision(String::new()),
            labels: Labels::new(),
            spec: json!(1),
            status: None,
        },
    )
    .unwrap();
    assert_eq!(mode(&dir.path().join("reef")), 0o700, "store directory");
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        let p = dir.path().join("reef").join(f);
        assert!(p.exists(), "{f} should exist while the store is open");
        assert_eq!(mode(&p), 0o600, "{f}");
    }
    drop(s);

    let old = dir.path().join("old.db");
    drop(EmbeddedStore::open(&old).unwrap());
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = EmbeddedStore::open(&old).unwrap();
    assert_eq!(mode(&old), 0o600, "an existing world-readable store");
    drop(s);
}

/// The node config's datastore choice opens the right backend.
#[test]
fn open_from_node_config() {
    let dir = TempDir::new("cfg");
    let ds = reef_config::Datastore::Embedded {
        path: dir.path().join("x/store.db"),
    };
    let s = reef_ipam::store::open(&ds).unwrap();
    assert!(s.list(Kind::IpPool, &Labels::new()).unwrap().0.is_empty());
    let ipam = reef_ipam::Ipam::new(s);
    assert!(ipam.blocks_for_node("n").unwrap().is_empty());
    assert!(dir.path().join("x/store.db").exists());
}

/// The background checkpointer copies the write-ahead log into the database file by itself
/// (so writers need not); without it, writes below the autocheckpoint size stay in the WAL.
#[test]
fn background_checkpointer_moves_the_wal_into_the_database() {
    let dir = TempDir::new("ckpt");
    let db_size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    let write_some = |s: &EmbeddedStore| {
        for i in 0..50 {
            let o = Object {
                name: format!("o{i}"),
                revision: Revision(String::new()),
                labels: Labels::new(),
                spec: json!({"pad": "x".repeat(3000)}),
                status: None,
            };
            s.create(Kind::IpamHandle, &o).unwrap();
        }
    };

    let without = dir.path().join("without.db");
    let s = EmbeddedStore::open(&without).unwrap();
    let before = db_size(&without);
    write_some(&s);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(db_size(&without), before, "no one should have checkpointed");

    let with = dir.path().join("with.db");
    let s = EmbeddedStore::open(&with).unwrap();
    s.start_checkpointer().unwrap();
    s.start_checkpointer().unwrap(); // idempotent
    let before = db_size(&with);
    write_some(&s);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db_size(&with) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpointer did not copy the WAL into {}",
            with.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Every object is still there, read through a fresh connection.
    drop(s);
    let again = EmbeddedStore::open(&with).unwrap();
    assert_eq!(again.names(Kind::IpamHandle).unwrap().len(), 50);
}

/// The embedded store knows no Pods: no annotations, and no error.
#[test]
fn no_pods_without_a_cluster() {
    let dir = TempDir::new("pods");
    let s = EmbeddedStore::open(dir.path().join("s.db")).unwrap();
    assert_eq!(s.pod_annotations("default", "web-1").unwrap(), None);
}
