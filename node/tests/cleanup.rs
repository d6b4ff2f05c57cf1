//! `reef ipam check` reports what nodes that no longer exist hold, and `reef ipam
//! release-node` gives it back by hand (the embedded datastore has no Node objects, so no
//! cleaner runs there). Golden output regenerates with
//! `REEF_UPDATE_GOLDEN=1 cargo test -p reef --test cleanup`.

use std::path::Path;
use std::process::Command;

use reef_config::crds::{AllocationAttributes, IpPoolSpec, ReefNodeSpec};
use reef_ipam::{AutoAssignArgs, EmbeddedStore, HandleId, Ipam, Labels, Store, StoreExt, Typed};

const REEF: &str = env!("CARGO_BIN_EXE_reef");

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("REEF_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        actual, want,
        "{name} differs from the golden file (REEF_UPDATE_GOLDEN=1 to accept)"
    );
}

fn reef(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(REEF)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_reports_a_gone_node_and_release_node_gives_everything_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let ipam = Ipam::new(EmbeddedStore::open(&db).unwrap());
    let mut pool = IpPoolSpec::new("10.245.0.0/25".parse().unwrap());
    pool.block_size = Some(26);
    ipam.put_pool("default-ipv4", pool).unwrap();
    for (node, addr) in [("node-a", "10.0.0.1/24"), ("node-b", "10.0.0.2/24")] {
        let tunnel = ipam
            .ensure_tunnel_address(node, &Labels::new(), true)
            .unwrap();
        let spec = ReefNodeSpec {
            address: addr.parse().unwrap(),
            address_v6: None,
            as_number: None,
            tunnel_address: Some(tunnel),
            route_reflector_cluster_id: None,
        };
        ipam.store().create_typed(&Typed::new(node, spec)).unwrap();
        ipam.auto_assign(&AutoAssignArgs {
            handle: HandleId(format!("reef.{node}-pod0")),
            num_v4: 1,
            node: node.into(),
            attributes: AllocationAttributes {
                pod_namespace: Some("default".into()),
                pod_name: Some(format!("{node}-pod0")),
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
    }
    let config = dir.path().join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "nodeName: node-a\ndatastore:\n  embedded: {{ path: {} }}\naddress: 10.0.0.1/24\n",
            db.display()
        ),
    )
    .unwrap();
    let (code, out, _) = reef(&config, &["ipam", "check"]);
    assert_eq!(code, 0, "{out}");

    // node-b goes away without cleaning up (its ReefNode deleted by hand).
    ipam.store()
        .delete(reef_ipam::Kind::ReefNode, "node-b", None)
        .unwrap();
    let (code, out, _) = reef(&config, &["ipam", "check"]);
    assert_eq!(code, 1, "{out}");
    golden("ipam-check-gone-node.txt", &out);

    // This node cannot be released from itself.
    let (code, _, err) = reef(&config, &["ipam", "release-node", "node-a"]);
    assert_ne!(code, 0);
    assert!(err.contains("this node"), "{err}");

    let (code, out, err) = reef(&config, &["ipam", "release-node", "node-b"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("released 2 addresses, 1 blocks (0 with other nodes' addresses left without owner), 1 affinities; ReefNode already gone"),
        "{out}"
    );
    let (code, out, _) = reef(&config, &["ipam", "check"]);
    assert_eq!(code, 0, "{out}");
    // Its block is free for a new node.
    let got = ipam
        .auto_assign(&AutoAssignArgs {
            handle: HandleId("reef.node-c-pod0".into()),
            num_v4: 1,
            node: "node-c".into(),
            ..Default::default()
        })
        .unwrap();
    assert!("10.245.0.0/25"
        .parse::<ipnetwork::IpNetwork>()
        .unwrap()
        .contains(got.v4[0].address));
}
