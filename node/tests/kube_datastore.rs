//! The real `reef` binary on a Kubernetes datastore. The API server is a STAND-IN
//! (`reef_integration::apiserver`, in this process on 127.0.0.1): no real API server runs
//! here. The datastore's contents are those of `cli_golden.rs`, so `reef ipam show` and
//! `reef ipam check` must print exactly the golden files the embedded store prints: the two
//! backends are indistinguishable to the CLI.

use std::path::{Path, PathBuf};
use std::process::Command;

use reef_config::crds::{AllocationAttributes, IpPoolSpec, IpamHandleSpec};
use reef_integration::apiserver::StandIn;
use reef_ipam::kubernetes::KubeStore;
use reef_ipam::{AutoAssignArgs, HandleId, Ipam, StoreExt, Typed};

const REEF: &str = env!("CARGO_BIN_EXE_reef");

fn golden(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `reef --config <config> <args>` with `KUBECONFIG` set as given (and no in-cluster
/// variables); returns (exit code, stdout, stderr).
fn reef(config: &Path, kubeconfig_env: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(REEF);
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST");
    if let Some(k) = kubeconfig_env {
        cmd.env("KUBECONFIG", k);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The stand-in with `cli_golden.rs`'s contents: one /24 pool, node-a with 3 pods, node-b 1.
fn populated(dir: &Path) -> (StandIn, PathBuf, Ipam<KubeStore>) {
    let api = StandIn::start().unwrap();
    let kubeconfig = api.write_kubeconfig(dir).unwrap();
    let ipam = Ipam::new(KubeStore::connect(Some(&kubeconfig)).unwrap());
    ipam.put_pool(
        "default-ipv4",
        IpPoolSpec::new("10.244.0.0/24".parse().unwrap()),
    )
    .unwrap();
    for (node, pods) in [("node-a", 3), ("node-b", 1)] {
        for i in 0..pods {
            ipam.auto_assign(&AutoAssignArgs {
                handle: HandleId(format!("reef.{node}-pod{i}")),
                num_v4: 1,
                node: node.into(),
                attributes: AllocationAttributes {
                    pod_namespace: Some("default".into()),
                    pod_name: Some(format!("pod{i}")),
                    ..Default::default()
                },
                ..Default::default()
            })
            .unwrap();
        }
    }
    // The nodes exist, as on a cluster: their Node objects and their ReefNodes (else `check`
    // reports what they hold as held by gone nodes).
    for (node, addr) in [("node-a", "10.0.0.1"), ("node-b", "10.0.0.2")] {
        api.put_node(node, &[], &[addr]);
        let spec = reef_config::crds::ReefNodeSpec {
            address: format!("{addr}/24").parse().unwrap(),
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
    (api, kubeconfig, ipam)
}

#[test]
fn ipam_show_and_check_with_a_kubeconfig_in_the_node_config() {
    let dir = tempfile::tempdir().unwrap();
    let (api, kubeconfig, ipam) = populated(dir.path());
    let config = dir.path().join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "nodeName: node-a\ndatastore:\n  kubernetes: {{ kubeconfig: {} }}\naddress: 10.0.0.1/24\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    let before = api.requests();
    let (code, show, err) = reef(&config, None, &["ipam", "show", "--blocks"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(show, golden("ipam-show-blocks.txt"));
    assert!(api.requests() > before, "reef did not ask the stand-in");
    let (code, check, err) = reef(&config, None, &["ipam", "check"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(check, golden("ipam-check-clean.txt"));

    // The same breakage as the embedded golden test → the same report, exit 1.
    ipam.release_addresses(&["10.244.0.64".parse().unwrap()])
        .unwrap();
    let h = IpamHandleSpec {
        handle_id: "reef.ghost".into(),
        blocks: [("10.244.0.0-26".to_string(), 1)].into_iter().collect(),
    };
    ipam.store()
        .create_typed(&Typed::new(
            reef_ipam::ipam::handle_name(&HandleId("reef.ghost".into())),
            h,
        ))
        .unwrap();
    let (code, check, err) = reef(&config, None, &["ipam", "check"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(check, golden("ipam-check-problems.txt"));
}

/// No `datastore` in the node config: `KUBECONFIG` chooses the Kubernetes store; without it
/// the embedded file is used.
#[test]
fn datastore_left_out_follows_kubeconfig_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (_api, kubeconfig, _ipam) = populated(dir.path());
    let config = dir.path().join("node.yaml");
    std::fs::write(&config, "nodeName: node-a\naddress: 10.0.0.1/24\n").unwrap();
    let (code, show, err) = reef(&config, Some(&kubeconfig), &["ipam", "show", "--blocks"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(show, golden("ipam-show-blocks.txt"));

    // KUBECONFIG naming a missing file: exit 3 with an error naming the field and the fix.
    let (code, _, err) = reef(
        &config,
        Some(&dir.path().join("missing")),
        &["ipam", "check"],
    );
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("datastore: left out, so chosen from the environment, but KUBECONFIG names"),
        "{err}"
    );
    assert!(err.contains("name the store in the node config"), "{err}");
}

/// An API server that does not answer: the command cannot run (exit 3), and says which
/// request failed.
#[test]
fn unreachable_api_server_is_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let api = StandIn::start().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path()).unwrap();
    drop(api);
    let config = dir.path().join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "nodeName: node-a\ndatastore:\n  kubernetes: {{ kubeconfig: {} }}\naddress: 10.0.0.1/24\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    let (code, _, err) = reef(&config, None, &["ipam", "show"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("kubernetes: list IPAMBlock"), "{err}");
    assert!(err.contains("Connection refused"), "{err}");
}
