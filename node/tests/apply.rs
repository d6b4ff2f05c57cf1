//! `reef apply` / `reef get` / `reef delete` on an embedded datastore, run as an operator
//! runs them: the real binary, a node config naming a store in a temporary directory.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use reef_config::crds::{AllocationAttributes, BgpPeerSpec, IpPoolSpec};
use reef_ipam::{AutoAssignArgs, EmbeddedStore, HandleId, Ipam, Kind, Store, StoreExt};

const REEF: &str = env!("CARGO_BIN_EXE_reef");

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
    db: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("store.db");
        let config = dir.path().join("node.yaml");
        std::fs::write(
            &config,
            format!(
                "nodeName: node-a\ndatastore:\n  embedded: {{ path: {} }}\naddress: 10.0.0.1/24\n",
                db.display()
            ),
        )
        .unwrap();
        Env { dir, config, db }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// (exit code, stdout, stderr)
    fn reef(&self, args: &[&str]) -> (i32, String, String) {
        reef_with(&self.config, args, None)
    }

    fn apply(&self, text: &str) -> (i32, String, String) {
        let f = self.file("in.yaml", text);
        self.reef(&["apply", "-f", f.to_str().unwrap()])
    }

    fn store(&self) -> EmbeddedStore {
        EmbeddedStore::open(&self.db).unwrap()
    }

    fn names(&self, kind: Kind) -> Vec<String> {
        self.store().names(kind).unwrap()
    }
}

fn reef_with(config: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(REEF)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const MANIFESTS: &str = "\
# the cluster's pool, a router and the BGP settings
apiVersion: reef.dev/v1alpha1
kind: IPPool
metadata:
  name: default-ipv4
spec:
  cidr: 10.244.0.0/16
  blockSize: 26
  ipipMode: CrossSubnet
  natOutgoing: true
---
apiVersion: reef.dev/v1alpha1
kind: BGPPeer
metadata:
  name: tor
  labels: { rack: r1 }
spec:
  peerIP: 192.168.1.254
  asNumber: 65001
---
apiVersion: reef.dev/v1alpha1
kind: BGPConfiguration
metadata:
  name: default
spec:
  asNumber: 64600
---
apiVersion: reef.dev/v1alpha1
kind: IPAMConfig
metadata:
  name: default
spec:
  strictAffinity: true
";

#[test]
fn apply_get_reapply_and_edit_like_kubectl() {
    let env = Env::new();
    let (code, out, err) = env.apply(MANIFESTS);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "ippool.reef.dev/default-ipv4 created\nbgppeer.reef.dev/tor created\n\
         bgpconfiguration.reef.dev/default created\nipamconfig.reef.dev/default created\n"
    );
    // What the agent and IPAM read is what the file says.
    let store = env.store();
    let pool = store
        .get_typed::<IpPoolSpec>("default-ipv4")
        .unwrap()
        .unwrap();
    assert_eq!(pool.spec.cidr, "10.244.0.0/16".parse().unwrap());
    assert!(pool.spec.nat_outgoing);
    let peer = store.get_typed::<BgpPeerSpec>("tor").unwrap().unwrap();
    assert_eq!(peer.spec.as_number, Some(65001));
    assert_eq!(peer.labels.get("rack").map(String::as_str), Some("r1"));
    assert!(Ipam::new(env.store()).config().unwrap().strict_affinity);

    let (code, out, err) = env.reef(&["get", "ippools"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "NAME          CIDR           BLOCK  IPIP         NAT   DISABLED  NODE-SELECTOR\n\
         default-ipv4  10.244.0.0/16  26     CrossSubnet  true  false     <none>\n"
    );
    let (code, out, _) = env.reef(&["get", "peer", "tor"]);
    assert_eq!(code, 0);
    assert!(out.contains("tor   192.168.1.254"), "{out}");
    let (code, out, _) = env.reef(&["get", "bgpconfiguration", "default", "-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "BGPConfiguration");
    assert_eq!(v["spec"]["asNumber"], 64600);
    // Defaults are filled in as the agent sees them.
    assert_eq!(v["spec"]["listenPort"], 179);

    // Again: nothing changes.
    let (code, out, _) = env.apply(MANIFESTS);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "ippool.reef.dev/default-ipv4 unchanged\nbgppeer.reef.dev/tor unchanged\n\
         bgpconfiguration.reef.dev/default unchanged\nipamconfig.reef.dev/default unchanged\n"
    );
    let rev = store
        .get(Kind::IpPool, "default-ipv4")
        .unwrap()
        .unwrap()
        .revision;

    // An edit: only what changed is written.
    let edited = MANIFESTS.replace("natOutgoing: true", "natOutgoing: false");
    let (code, out, _) = env.apply(&edited);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("ippool.reef.dev/default-ipv4 configured\n"),
        "{out}"
    );
    assert!(out.contains("bgppeer.reef.dev/tor unchanged"), "{out}");
    let pool = store
        .get_typed::<IpPoolSpec>("default-ipv4")
        .unwrap()
        .unwrap();
    assert!(!pool.spec.nat_outgoing);
    assert_ne!(pool.revision, rev);

    // What `get -o yaml` prints applies back unchanged (a List of every pool).
    let (code, yaml, _) = env.reef(&["get", "ippool", "-o", "yaml"]);
    assert_eq!(code, 0);
    assert!(yaml.contains("kind: List"), "{yaml}");
    let (code, out, err) = reef_with(&env.config, &["apply", "-f", "-"], Some(&yaml));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "ippool.reef.dev/default-ipv4 unchanged\n");
    // A copy read before someone else's change is refused, as kubectl's would be (409).
    let (code, _, _) = env.apply(&edited.replace("natOutgoing: false", "natOutgoing: true"));
    assert_eq!(code, 0);
    let (code, out, err) = reef_with(&env.config, &["apply", "-f", "-"], Some(&yaml));
    assert_eq!(code, 3, "{out}");
    assert!(err.contains("metadata.resourceVersion:"), "{err}");
    assert!(err.contains("it changed since it was read"), "{err}");
    assert!(
        store
            .get_typed::<IpPoolSpec>("default-ipv4")
            .unwrap()
            .unwrap()
            .spec
            .nat_outgoing
    );
    // YAML output is get's alone; other commands say so rather than print a table.
    let (code, _, err) = env.reef(&["ipam", "show", "-o", "yaml"]);
    assert_eq!(code, 3);
    assert!(err.contains("-o yaml is for `reef get`"), "{err}");
}

#[test]
fn a_bad_field_in_document_2_writes_nothing_and_names_the_field() {
    let env = Env::new();
    let text = "\
apiVersion: reef.dev/v1alpha1
kind: IPPool
metadata: { name: good }
spec: { cidr: 10.1.0.0/16 }
---
apiVersion: reef.dev/v1alpha1
kind: IPPool
metadata: { name: bad }
spec: { cidr: 10.2.0.0/16, blockSize: 8 }
";
    let (code, out, err) = env.apply(text);
    assert_eq!(code, 3, "{out}");
    assert!(
        err.contains("document 2 (IPPool bad): spec.blockSize"),
        "{err}"
    );
    assert!(err.contains("use a value between 16 and 32"), "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    assert!(env.names(Kind::IpPool).is_empty(), "document 1 was written");

    // A field the type does not have, and a wrong type: the path is named.
    let (code, _, err) = env.apply(&text.replace("blockSize: 8", "blockSise: 26"));
    assert_eq!(code, 3);
    assert!(err.contains("document 2 (IPPool bad): spec"), "{err}");
    assert!(err.contains("blockSise"), "{err}");
    let (code, _, err) = env.apply(&text.replace("blockSize: 8", "blockSize: big"));
    assert_eq!(code, 3);
    assert!(err.contains("spec.blockSize: invalid type"), "{err}");
    // Not reef's API.
    let (code, _, err) = env.apply(&text.replace("reef.dev/v1alpha1", "crd.projectcalico.org/v1"));
    assert_eq!(code, 3);
    assert!(err.contains("apiVersion:"), "{err}");
    assert!(env.names(Kind::IpPool).is_empty());
}

#[test]
fn a_pool_cidr_does_not_change_under_its_blocks_and_pools_do_not_overlap() {
    let env = Env::new();
    let pool = "apiVersion: reef.dev/v1alpha1\nkind: IPPool\nmetadata: { name: p }\nspec: { cidr: 10.1.0.0/16 }\n";
    assert_eq!(env.apply(pool).0, 0);
    // Without blocks the cidr may change.
    let moved = pool.replace("10.1.0.0/16", "10.3.0.0/16");
    let (code, out, err) = env.apply(&moved);
    assert_eq!(
        (code, out.as_str()),
        (0, "ippool.reef.dev/p configured\n"),
        "{err}"
    );
    // With a block (one address in use) neither cidr nor blockSize may.
    let ipam = Ipam::new(env.store());
    ipam.auto_assign(&AutoAssignArgs {
        handle: HandleId("reef.pod1".into()),
        num_v4: 1,
        node: "node-a".into(),
        attributes: AllocationAttributes::default(),
        ..Default::default()
    })
    .unwrap();
    let (code, _, err) = env.apply(pool);
    assert_eq!(code, 3);
    assert!(err.contains("spec.cidr: cannot change from 10.3.0.0/16 to 10.1.0.0/16 while the pool has 1 blocks (1 addresses in use)"), "{err}");
    assert!(err.contains("spec.disabled: true"), "{err}");
    let (code, _, err) = env.apply(&moved.replace("}\n", ", blockSize: 28 }\n"));
    assert_eq!(code, 3);
    assert!(
        err.contains("spec.blockSize: cannot change from 26 to 28"),
        "{err}"
    );
    // Disabling it is fine.
    let (code, out, _) = env.apply(&moved.replace("}\n", ", disabled: true }\n"));
    assert_eq!((code, out.as_str()), (0, "ippool.reef.dev/p configured\n"));

    // A second pool inside the first is refused, and so are two overlapping in one file.
    let (code, _, err) = env.apply(
        "apiVersion: reef.dev/v1alpha1\nkind: IPPool\nmetadata: { name: q }\nspec: { cidr: 10.3.4.0/24 }\n",
    );
    assert_eq!(code, 3);
    assert!(err.contains("overlaps the IPPool p (10.3.0.0/16)"), "{err}");
    let two = "apiVersion: reef.dev/v1alpha1\nkind: IPPool\nmetadata: { name: a }\nspec: { cidr: 10.8.0.0/16 }\n---\n\
               apiVersion: reef.dev/v1alpha1\nkind: IPPool\nmetadata: { name: b }\nspec: { cidr: 10.8.0.0/20 }\n";
    let (code, _, err) = env.apply(two);
    assert_eq!(code, 3);
    assert!(err.contains("document 1 (IPPool a): spec.cidr"), "{err}");
    assert_eq!(env.names(Kind::IpPool), ["p"]);
}

#[test]
fn delete_refuses_a_pool_with_addresses_and_releases_an_empty_ones_blocks() {
    let env = Env::new();
    assert_eq!(env.apply(MANIFESTS).0, 0);
    let ipam = Ipam::new(env.store());
    let args = AutoAssignArgs {
        handle: HandleId("reef.pod1".into()),
        num_v4: 1,
        node: "node-a".into(),
        attributes: AllocationAttributes::default(),
        ..Default::default()
    };
    ipam.auto_assign(&args).unwrap();
    let (code, _, err) = env.reef(&["delete", "ippool", "default-ipv4"]);
    assert_eq!(code, 3);
    assert!(err.contains("has 1 addresses in use in 1 blocks"), "{err}");
    assert!(err.contains("spec.disabled: true"), "{err}");
    assert_eq!(env.names(Kind::IpPool), ["default-ipv4"]);

    // Drained: the pool goes, and its empty block and the node's affinity with it.
    ipam.release_by_handle(&args.handle).unwrap();
    let (code, out, err) = env.reef(&["delete", "ippool", "default-ipv4"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "ippool.reef.dev/default-ipv4 deleted\n"),
        "{err}"
    );
    assert!(env.names(Kind::IpPool).is_empty());
    assert!(env.names(Kind::IpamBlock).is_empty());
    assert!(env.names(Kind::BlockAffinity).is_empty());

    let (code, out, _) = env.reef(&["delete", "bgppeer", "tor"]);
    assert_eq!((code, out.as_str()), (0, "bgppeer.reef.dev/tor deleted\n"));
    let (code, _, err) = env.reef(&["delete", "bgppeer", "tor"]);
    assert_eq!(code, 3);
    assert!(err.contains("bgppeer.reef.dev/tor not found"), "{err}");
    let (code, _, err) = env.reef(&["get", "ippool"]);
    assert_eq!(code, 0);
    assert!(err.contains("No ippools found"), "{err}");
}

#[test]
fn ipam_records_are_read_only_and_a_reef_node_only_takes_its_route_reflector_id() {
    let env = Env::new();
    let (code, _, err) = env.apply(
        "apiVersion: reef.dev/v1alpha1\nkind: IPAMBlock\nmetadata: { name: b }\nspec: { cidr: 10.0.0.0/26 }\n",
    );
    assert_eq!(code, 3);
    assert!(
        err.contains("IPAMBlock objects are not written by hand"),
        "{err}"
    );
    let (code, _, err) = env.reef(&["delete", "blockaffinity", "x"]);
    assert_eq!(code, 3);
    assert!(err.contains("reef's IPAM writes them"), "{err}");
    let (code, _, err) = env.reef(&["delete", "reefnode", "node-a"]);
    assert_eq!(code, 3);
    assert!(err.contains("reef ipam release-node"), "{err}");
    let node = "apiVersion: reef.dev/v1alpha1\nkind: ReefNode\nmetadata: { name: node-a }\nspec: { address: 10.0.0.1/24 }\n";
    let (code, _, err) = env.apply(node);
    assert_eq!(code, 3);
    assert!(err.contains("registered by its node's agent"), "{err}");
    // Registered (as the agent does): the route reflector id may be set, the address not.
    let spec = reef_config::crds::ReefNodeSpec {
        address: "10.0.0.1/24".parse().unwrap(),
        address_v6: None,
        as_number: None,
        tunnel_address: None,
        route_reflector_cluster_id: None,
    };
    env.store()
        .create_typed(&reef_ipam::Typed::new("node-a", spec))
        .unwrap();
    let (code, out, err) =
        env.apply(&node.replace("}\n", ", routeReflectorClusterId: 10.0.0.1 }\n"));
    assert_eq!(
        (code, out.as_str()),
        (0, "reefnode.reef.dev/node-a configured\n"),
        "{err}"
    );
    let (code, _, err) = env.apply(&node.replace("10.0.0.1/24", "10.0.0.9/24"));
    assert_eq!(code, 3);
    assert!(
        err.contains("spec.address: set by the node's agent"),
        "{err}"
    );
    // IPAM's records can be read.
    let (code, _, err) = env.reef(&["get", "ipamblocks"]);
    assert_eq!(code, 0, "{err}");
    // The cluster-wide configurations are read under `default` only.
    let (code, _, err) = env.apply(
        "apiVersion: reef.dev/v1alpha1\nkind: BGPConfiguration\nmetadata: { name: other }\nspec: {}\n",
    );
    assert_eq!(code, 3);
    assert!(
        err.contains("metadata.name: reef reads only the BGPConfiguration named default"),
        "{err}"
    );
}

#[test]
fn with_the_kubernetes_datastore_it_says_to_use_kubectl_and_writes_nothing() {
    let env = Env::new();
    // The kubeconfig does not exist: nothing may even try to read it.
    std::fs::write(
        &env.config,
        "nodeName: node-a\ndatastore:\n  kubernetes: { kubeconfig: /nonexistent/kubeconfig }\naddress: 10.0.0.1/24\n",
    )
    .unwrap();
    let f = env.file("in.yaml", MANIFESTS);
    let (code, out, err) = env.reef(&["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("the datastore is Kubernetes: use kubectl apply -f FILE"),
        "{err}"
    );
    let (code, _, err) = env.reef(&["get", "ippool"]);
    assert_eq!(code, 3);
    assert!(err.contains("use kubectl get ippool"), "{err}");
    let (code, _, err) = env.reef(&["delete", "ippool", "x"]);
    assert_eq!(code, 3);
    assert!(err.contains("use kubectl delete ippool x"), "{err}");
    assert!(!env.db.exists());
}

#[test]
fn an_ipv6_pool_asking_for_ip_in_ip_is_refused_and_one_without_gets_never() {
    let env = Env::new();
    let text = "\
apiVersion: reef.dev/v1alpha1
kind: IPPool
metadata: { name: v4 }
spec: { cidr: 10.1.0.0/16 }
---
apiVersion: reef.dev/v1alpha1
kind: IPPool
metadata: { name: v6 }
spec: { cidr: 'fd00:244::/48', ipipMode: CrossSubnet }
";
    let (code, out, err) = env.apply(text);
    assert_eq!(code, 3, "{out}");
    assert!(
        err.contains("document 2 (IPPool v6): spec.ipipMode"),
        "{err}"
    );
    assert!(
        err.contains("IPv4 only") && err.contains("ipipMode: Never"),
        "{err}"
    );
    assert!(env.names(Kind::IpPool).is_empty(), "nothing is written");
    let (code, _, err) = env.apply(&text.replace("CrossSubnet", "Always"));
    assert_eq!(code, 3);
    assert!(
        err.contains("spec.ipipMode: Always on an IPv6 pool"),
        "{err}"
    );
    // Left out: Never for IPv6, CrossSubnet (the default) for IPv4.
    let (code, out, err) = env.apply(&text.replace(", ipipMode: CrossSubnet", ""));
    assert_eq!(code, 0, "{out}{err}");
    let v6 = env.store().get_typed::<IpPoolSpec>("v6").unwrap().unwrap();
    assert_eq!(v6.spec.ipip_mode, reef_config::IpipMode::Never);
    let v4 = env.store().get_typed::<IpPoolSpec>("v4").unwrap().unwrap();
    assert_eq!(v4.spec.ipip_mode, reef_config::IpipMode::CrossSubnet);
}
