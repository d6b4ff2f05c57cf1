//! Golden outputs of `reef ipam show --blocks` and `reef ipam check` on a datastore with known
//! contents, and of `reef get loadbalancerippools` (table, JSON, YAML) on the Kubernetes
//! datastore (the in-process API-server STAND-IN, `reef_integration::apiserver`; no real API
//! server runs here). Regenerate with `REEF_UPDATE_GOLDEN=1 cargo test -p reef --test
//! cli_golden`.

use std::path::Path;
use std::process::Command;

use reef_config::crds::{AllocationAttributes, IpPoolSpec};
use reef_ipam::{AutoAssignArgs, EmbeddedStore, HandleId, Ipam};

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

fn reef(config: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(REEF)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn ipam_show_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let ipam = Ipam::new(EmbeddedStore::open(&db).unwrap());
    ipam.put_pool(
        "default-ipv4",
        IpPoolSpec::new("10.244.0.0/24".parse().unwrap()),
    )
    .unwrap();
    for (node, pods) in [("node-a", 3), ("node-b", 1)] {
        for i in 0..pods {
            let args = AutoAssignArgs {
                handle: HandleId(format!("reef.{node}-pod{i}")),
                num_v4: 1,
                node: node.into(),
                attributes: AllocationAttributes {
                    pod_namespace: Some("default".into()),
                    pod_name: Some(format!("pod{i}")),
                    ..Default::default()
                },
                ..Default::default()
            };
            ipam.auto_assign(&args).unwrap();
        }
    }
    // The nodes are registered (else `check` reports what they hold as held by gone nodes).
    for (node, addr) in [("node-a", "10.0.0.1/24"), ("node-b", "10.0.0.2/24")] {
        let spec = reef_config::crds::ReefNodeSpec {
            address: addr.parse().unwrap(),
            address_v6: None,
            as_number: None,
            tunnel_address: None,
            route_reflector_cluster_id: None,
        };
        use reef_ipam::StoreExt;
        ipam.store()
            .create_typed(&reef_ipam::Typed::new(node, spec))
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

    let (code, show) = reef(&config, &["ipam", "show", "--blocks"]);
    assert_eq!(code, 0);
    golden("ipam-show-blocks.txt", &show);
    let (code, check) = reef(&config, &["ipam", "check"]);
    assert_eq!(code, 0, "{check}");
    golden("ipam-check-clean.txt", &check);

    // Break it: a handle record pointing at nothing → check reports it and exits 1.
    ipam.release_addresses(&["10.244.0.64".parse().unwrap()])
        .unwrap();
    let store = ipam.store();
    use reef_ipam::StoreExt;
    let h = reef_config::crds::IpamHandleSpec {
        handle_id: "reef.ghost".into(),
        blocks: [("10.244.0.0-26".to_string(), 1)].into_iter().collect(),
    };
    store
        .create_typed(&reef_ipam::Typed::new(
            reef_ipam::ipam::handle_name(&HandleId("reef.ghost".into())),
            h,
        ))
        .unwrap();
    let (code, check) = reef(&config, &["ipam", "check"]);
    assert_eq!(code, 1, "{check}");
    golden("ipam-check-problems.txt", &check);
}

#[test]
fn get_load_balancer_pools() {
    use reef_integration::apiserver::StandIn;
    use serde_json::json;

    let api = StandIn::start().unwrap();
    api.put_custom_resources([
        (
            "loadbalancerippools".to_string(),
            json!({"metadata": {"name": "lb"},
                   "spec": {"cidrs": ["198.51.100.64/26", "198.51.100.200-198.51.100.203"],
                            "autoAssign": true},
                   "status": {"allocations": [
                       {"ip": "198.51.100.64", "service": "default/web", "uid": "uid-w",
                        "allocatedAt": 1767225600},
                       {"ip": "198.51.100.65", "service": "shop/cart", "uid": "uid-c",
                        "allocatedAt": 1767225600}],
                              "used": 2, "free": 66}}),
        ),
        (
            "loadbalancerippools".to_string(),
            json!({"metadata": {"name": "lb-over"},
                   "spec": {"cidrs": ["198.51.100.96/28"], "autoAssign": false},
                   "status": {"allocations": [], "used": 0, "free": 0,
                              "problem": "overlaps LoadBalancerIPPool lb (198.51.100.96/28 with 198.51.100.64/26)"}}),
        ),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path()).unwrap();
    let config = dir.path().join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "nodeName: node-a\ndatastore:\n  kubernetes: {{ kubeconfig: {} }}\naddress: 10.0.0.1/24\n",
            kubeconfig.display()
        ),
    )
    .unwrap();

    let (code, table) = reef(&config, &["get", "loadbalancerippools"]);
    assert_eq!(code, 0, "{table}");
    golden("get-lbpools.txt", &table);
    // The CRD's short name, and the plural of it, name the same kind.
    for short in ["lbpool", "lbpools", "LoadBalancerIPPool"] {
        assert_eq!(
            reef(&config, &["get", short]),
            (0, table.clone()),
            "{short}"
        );
    }
    let (code, json) = reef(&config, &["-o", "json", "get", "lbpool", "lb"]);
    assert_eq!(code, 0, "{json}");
    golden("get-lbpool-lb.json", &json);
    let (code, yaml) = reef(&config, &["-o", "yaml", "get", "lbpools"]);
    assert_eq!(code, 0, "{yaml}");
    golden("get-lbpools.yaml", &yaml);
    let (code, out) = reef(&config, &["get", "lbpool", "nope"]);
    assert!(
        code != 0 && out.is_empty(),
        "a missing pool is an error: {code} {out}"
    );
}
