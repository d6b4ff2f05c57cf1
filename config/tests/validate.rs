//! validate() and the node config file: bad values get errors that name the field and the fix.

use reef_config::*;

fn fields(e: &Error) -> Vec<&str> {
    e.problems().iter().map(|p| p.field.as_str()).collect()
}

#[test]
fn pool_defaults_and_block_size_rules() {
    let p = IpPoolSpec::new("10.244.0.0/16".parse().unwrap());
    p.validate().unwrap();
    assert_eq!(p.effective_block_size(), 26);
    assert_eq!(
        IpPoolSpec::new("fd00:244::/56".parse().unwrap()).effective_block_size(),
        122
    );

    let mut bad = IpPoolSpec::new("10.244.0.1/16".parse().unwrap());
    bad.block_size = Some(8);
    let e = bad.validate().unwrap_err();
    assert_eq!(fields(&e), ["spec.cidr", "spec.blockSize"]);
    let msg = e.to_string();
    assert!(msg.contains("use 10.244.0.0/16"), "{msg}");
    assert!(msg.contains("between 16 and 32"), "{msg}");

    bad.cidr = "10.0.0.0/8".parse().unwrap();
    bad.block_size = Some(33);
    assert_eq!(fields(&bad.validate().unwrap_err()), ["spec.blockSize"]);
    bad.block_size = Some(12);
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("at least /16"));
}

#[test]
fn pool_yaml_ignores_unknown_fields_and_rejects_bad_enums() {
    let ok: IpPoolSpec =
        serde_yaml::from_str("cidr: 10.0.0.0/16\nipipMode: Always\nnodeSelector: {zone: a}\n")
            .unwrap();
    assert_eq!(ok.ipip_mode, IpipMode::Always);
    assert!(ok.selects_node(&[("zone".into(), "a".into())].into()));
    assert!(!ok.selects_node(&Default::default()));
    // A field this reef does not know is a newer reef's: ignored here (`reef apply` refuses
    // one a user writes, see node/tests/apply.rs).
    let p = serde_yaml::from_str::<IpPoolSpec>("cidr: 10.0.0.0/16\nipipmode: Always\n").unwrap();
    assert_eq!(p.ipip_mode, IpPoolSpec::new(p.cidr).ipip_mode);
    let e =
        serde_yaml::from_str::<IpPoolSpec>("cidr: 10.0.0.0/16\nipipMode: Sometimes\n").unwrap_err();
    assert!(e.to_string().contains("Sometimes"), "{e}");
    assert!(serde_yaml::from_str::<IpPoolSpec>("cidr: 10.0.0.0/33\n").is_err());
}

#[test]
fn bgp_peer_rules() {
    let mut p: BgpPeerSpec =
        serde_yaml::from_str("peerIP: 192.168.1.1\nasNumber: 65001\n").unwrap();
    p.validate().unwrap();
    assert_eq!(p.port(), 179);
    assert_eq!(p.peer_type(), PeerType::Global);
    assert!(p.applies_to("n1", &Default::default()));
    p.node = Some("n2".into());
    assert_eq!(p.peer_type(), PeerType::Node);
    assert!(!p.applies_to("n1", &Default::default()));

    let p: BgpPeerSpec =
        serde_yaml::from_str("node: Bad_Name\npeerPort: 0\nttlSecurity: 0\nasNumber: 23456\n")
            .unwrap();
    let e = p.validate().unwrap_err();
    assert_eq!(
        fields(&e),
        [
            "spec.peerIP",
            "spec.asNumber",
            "spec.node",
            "spec.peerPort",
            "spec.ttlSecurity"
        ]
    );
    let p: BgpPeerSpec = serde_yaml::from_str("peerIP: 10.0.0.1\n").unwrap();
    assert!(p
        .validate()
        .unwrap_err()
        .to_string()
        .contains("spec.asNumber: missing"));
    let p: BgpPeerSpec =
        serde_yaml::from_str("peerIP: 10.0.0.1\nasNumber: 65000\npassword: {name: s, key: ''}\n")
            .unwrap();
    assert_eq!(fields(&p.validate().unwrap_err()), ["spec.password.key"]);
}

#[test]
fn node_status_counts() {
    let mut s = ReefNodeStatus::default();
    let peer = |state| PeerStatus {
        address: "10.0.0.1".parse().unwrap(),
        peer_type: PeerType::Mesh,
        state,
        since: None,
        last_error: None,
        prefixes_received: 0,
        prefixes_accepted: 0,
        prefixes_sent: 0,
    };
    s.set_peers(vec![
        peer(BgpSessionState::Established),
        peer(BgpSessionState::Active),
    ]);
    assert_eq!((s.established_peers, s.total_peers), (1, 2));
    let n = ReefNodeSpec {
        address: "10.0.0.1/24".parse().unwrap(),
        address_v6: Some("10.0.0.2/24".parse().unwrap()),
        as_number: None,
        tunnel_address: None,
        route_reflector_cluster_id: None,
    };
    assert_eq!(fields(&n.validate().unwrap_err()), ["spec.addressV6"]);
}

#[test]
fn node_config_minimal_gets_defaults() {
    // With nothing in the environment that names a cluster (see the test below for the rest).
    let c = NodeConfig::from_yaml_in(
        "nodeName: node-1\naddress: 192.168.1.10/24\n",
        "node.yaml",
        &DatastoreEnv::default(),
    )
    .unwrap();
    assert_eq!(
        c,
        NodeConfig::new("node-1", "192.168.1.10/24".parse().unwrap())
    );
    assert_eq!(
        c.datastore,
        Datastore::Embedded {
            path: "/var/lib/reef/store.db".into()
        }
    );
    assert_eq!(c.pod_mtu(Some(1500)), 1480);
    assert_eq!(c.pod_mtu(None), 1480);
}

#[test]
fn node_config_full() {
    let text = "\
nodeName: node-1
datastore:
  kubernetes: { kubeconfig: /root/.kube/config }
address: 192.168.1.10/24
addressV6: fd00::10/64
asNumber: 65010
interface: eth0
mtu: 1440
agentSocket: /tmp/a.sock
metricsAddress: 127.0.0.1:9100
labels: { zone: a }
";
    let c = NodeConfig::from_yaml(text, "node.yaml").unwrap();
    assert_eq!(
        c.datastore,
        Datastore::Kubernetes {
            kubeconfig: Some("/root/.kube/config".into())
        }
    );
    assert_eq!(c.pod_mtu(Some(9000)), 1440);
    let c = NodeConfig::from_yaml(
        "nodeName: n\naddress: 10.0.0.1/8\ndatastore: {embedded: {}}\n",
        "x",
    )
    .unwrap();
    assert_eq!(c.datastore, Datastore::default());
}

#[test]
fn node_config_errors_name_field_and_position() {
    let e = NodeConfig::from_yaml(
        "nodeName: node-1\naddress: 192.168.1.10/24\nmtuu: 1400\n",
        "node.yaml",
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("node.yaml:3:1:"), "{msg}");
    assert!(msg.contains("unknown field `mtuu`"), "{msg}");

    let e = NodeConfig::from_yaml("nodeName: node-1\naddress: 192.168.1.300/24\n", "node.yaml")
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("address: invalid address: 192.168.1.300/24"),
        "{e}"
    );
    let e = NodeConfig::from_yaml(
        "nodeName: n\naddress: 10.0.0.1/8\ndatastore: {embedded: {}, kubernetes: {}}\n",
        "x",
    )
    .unwrap_err();
    assert!(e.to_string().contains("datastore: set exactly one"), "{e}");

    let e = NodeConfig::from_yaml("address: 192.168.1.1/24\n", "node.yaml").unwrap_err();
    assert!(e.to_string().contains("missing field `nodeName`"), "{e}");

    let e = NodeConfig::from_yaml(
        "nodeName: Node_1\naddress: fd00::1/64\nmtu: 100\nrouteProtocol: 2\ninterface: a/b\ndatastore: {embedded: {path: ''}}\n",
        "node.yaml",
    )
    .unwrap_err();
    assert_eq!(
        fields(&e),
        [
            "nodeName",
            "address",
            "interface",
            "mtu",
            "routeProtocol",
            "datastore.embedded.path"
        ]
    );
    assert!(
        e.to_string()
            .contains("mtu: 100 is out of range; use a value between 576 and 65515"),
        "{e}"
    );
}

/// A datastore the file leaves out is chosen from the environment; one the file names is
/// kept whatever the environment says.
#[test]
fn datastore_left_out_is_chosen_from_the_environment() {
    let minimal = "nodeName: n\naddress: 10.0.0.1/8\n";
    let load = |text: &str, env: &DatastoreEnv| NodeConfig::from_yaml_in(text, "node.yaml", env);
    let kubeconfig = |paths: &[(&str, bool)]| DatastoreEnv {
        kubeconfig: paths.iter().map(|(p, e)| (p.into(), *e)).collect(),
        ..Default::default()
    };
    let in_pod = DatastoreEnv {
        service_host: true,
        service_account_token: true,
        ..Default::default()
    };

    // Nothing → the embedded file.
    let c = load(minimal, &DatastoreEnv::default()).unwrap();
    assert_eq!(c.datastore, Datastore::default());
    // KUBECONFIG with one file → Kubernetes with that file.
    let env = kubeconfig(&[("/etc/kc", true)]);
    assert_eq!(
        load(minimal, &env).unwrap().datastore,
        Datastore::Kubernetes {
            kubeconfig: Some("/etc/kc".into())
        }
    );
    // Several files → the client merges them (as kubectl does).
    let env = kubeconfig(&[("/a", true), ("/b", true)]);
    assert_eq!(
        load(minimal, &env).unwrap().datastore,
        Datastore::Kubernetes { kubeconfig: None }
    );
    // KUBECONFIG wins over the service account.
    let env = DatastoreEnv {
        kubeconfig: vec![("/etc/kc".into(), true)],
        ..in_pod.clone()
    };
    assert_eq!(
        load(minimal, &env).unwrap().datastore,
        Datastore::Kubernetes {
            kubeconfig: Some("/etc/kc".into())
        }
    );
    // In a pod with its token → in-cluster.
    assert_eq!(
        load(minimal, &in_pod).unwrap().datastore,
        Datastore::Kubernetes { kubeconfig: None }
    );

    // Half-present choices are errors naming the field and the fix, never a silent fallback.
    let e = load(minimal, &kubeconfig(&[("/a", true), ("/gone", false)])).unwrap_err();
    assert_eq!(fields(&e), ["datastore"]);
    let msg = e.to_string();
    assert!(
        msg.contains("KUBECONFIG names /gone, which does not exist"),
        "{msg}"
    );
    assert!(msg.contains("name the store in the node config"), "{msg}");
    let env = DatastoreEnv {
        service_account_token: false,
        ..in_pod.clone()
    };
    let e = load(minimal, &env).unwrap_err();
    assert_eq!(fields(&e), ["datastore"]);
    assert!(
        e.to_string().contains(
            "KUBERNETES_SERVICE_HOST is set and the service account token \
             /var/run/secrets/kubernetes.io/serviceaccount/token is missing"
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("automountServiceAccountToken"),
        "{e}"
    );

    // An explicit choice is kept, whatever the environment.
    let embedded = "nodeName: n\naddress: 10.0.0.1/8\ndatastore: {embedded: {path: /tmp/s.db}}\n";
    assert_eq!(
        load(embedded, &in_pod).unwrap().datastore,
        Datastore::Embedded {
            path: "/tmp/s.db".into()
        }
    );
    let kube = "nodeName: n\naddress: 10.0.0.1/8\ndatastore:\n  kubernetes: {}\n";
    assert_eq!(
        load(kube, &kubeconfig(&[("/gone", false)]))
            .unwrap()
            .datastore,
        Datastore::Kubernetes { kubeconfig: None }
    );
}

#[test]
fn load_names_missing_file() {
    let e = NodeConfig::load(std::path::Path::new("/nonexistent/reef/node.yaml")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/reef/node.yaml"), "{e}");
}
