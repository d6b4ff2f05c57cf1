//! The DaemonSet's path on a node whose runtime is containerd, driven the way kubelet drives
//! it: reef's image imported into the node's own containerd, `reef install` run from it as the
//! init container runs (a host-network, privileged CRI pod with hostPath mounts of the node's
//! `/opt/cni/bin`, `/etc/cni/net.d` and `/etc/reef`), then ordinary CRI pods getting reef
//! addresses from the reef-cni it installed, pinging each other, and giving their address back
//! when their sandbox is stopped and removed.
//!
//! The image is deploy/image/build.sh's archive (`target/image/reef-<version>.tar`); the test
//! builds it (`--profile dev`, the quickest) when it is missing or older than the workspace's
//! binaries, and is skipped only when this machine lacks what the build needs.

use reef_integration::containerd_lab::{cri_log, reef_image_archive};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use reef_config::crds::IpPoolSpec;
use reef_integration::containerd::{test_image, Containerd, TEST_IMAGE};
use reef_integration::cri::api::ContainerState;
use reef_integration::cri::{ContainerSpec, Cri, PodSpec, Sandbox};
use reef_integration::image::reef_image_name;
use reef_integration::{wait_for, Netns};
use reef_ipam::{EmbeddedStore, HandleId, Ipam};

const NODE: &str = "node-1";
const NODE_IP: &str = "10.100.1.10";
const POOL: &str = "10.244.0.0/16";
/// The node's embedded store, as the node (and reef-cni on it) sees it.
const STORE: &str = "/etc/reef/store.db";

/// The init container: `reef install` from reef's image in a host-network, privileged pod
/// with the node's directories mounted as deploy/reef.yaml mounts them. Returns once it has
/// exited 0, with what it printed.
fn run_install(cri: &mut Cri, c: &Containerd) -> String {
    let mut spec = PodSpec::new("reef-system", "reef-node-x7k2p");
    spec.host_network = true;
    spec.privileged = true;
    spec.log_directory = c
        .pod_log_dir("reef-node-x7k2p")
        .to_string_lossy()
        .into_owned();
    let pod = cri.run_pod(&spec).unwrap();
    let mut ctr = ContainerSpec::new("install", &reef_image_name());
    ctr.command = vec!["/usr/local/bin/reef".into(), "install".into()];
    ctr.env = vec![
        ("NODE_NAME".into(), NODE.into()),
        ("HOST_IP".into(), NODE_IP.into()),
        ("REEF_EMBEDDED_STORE".into(), STORE.into()),
    ];
    // hostPath → mountPath, as containerd (in the node's mount namespace) resolves them.
    ctr.mounts = vec![
        ("/opt/cni/bin".into(), "/host/opt/cni/bin".into(), false),
        ("/etc/cni/net.d".into(), "/host/etc/cni/net.d".into(), false),
        ("/etc/reef".into(), "/host/etc/reef".into(), false),
    ];
    ctr.privileged = true;
    ctr.log_path = "install.log".into();
    let id = cri.run_container(&pod, &ctr).unwrap();
    let log = Path::new(&spec.log_directory).join("install.log");
    let st = wait_for(
        "the install container to exit",
        Duration::from_secs(60),
        |last| {
            let st = cri.container_status(&id).ok()?;
            *last = format!("state {} ({})", st.state, cri_log(&log));
            (st.state == ContainerState::ContainerExited as i32).then_some(st)
        },
    )
    .unwrap();
    let printed = cri_log(&log);
    assert_eq!(
        st.exit_code, 0,
        "reef install exited {} ({}): {printed}",
        st.exit_code, st.reason
    );
    // kubelet keeps an exited init container until the pod goes; this pod's job is done.
    cri.stop_pod(&pod.id).unwrap();
    cri.remove_pod(&pod.id).unwrap();
    printed
}

/// A pod on reef's network with one busybox container, as kubelet makes it.
fn pod_with_busybox(cri: &mut Cri, c: &Containerd, name: &str) -> (Sandbox, String) {
    let mut spec = PodSpec::new("default", name);
    spec.log_directory = c.pod_log_dir(name).to_string_lossy().into_owned();
    let pod = cri.run_pod(&spec).unwrap();
    let mut ctr = ContainerSpec::new("main", TEST_IMAGE);
    ctr.log_path = "main.log".into();
    let id = cri.run_container(&pod, &ctr).unwrap();
    (pod, id)
}

fn ping(cri: &mut Cri, ctr: &str, dst: IpAddr) -> Result<String, reef_integration::Error> {
    let d = dst.to_string();
    cri.exec_sync(
        ctr,
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", &d],
        Duration::from_secs(10),
    )?
    .success(&format!("ping {d}"))
}

/// reef-cni's handle for a sandbox's addresses (`<network>.<container id>`).
fn handle(sandbox: &str) -> HandleId {
    HandleId(format!("reef.{sandbox}"))
}

fn in_use(ipam: &Ipam<EmbeddedStore>) -> u64 {
    ipam.show().unwrap().iter().map(|p| p.in_use).sum()
}

#[test]
fn reef_image_installs_through_cri_and_cri_pods_get_reef_addresses() {
    let started = Instant::now();
    let (archive, built) = match reef_image_archive().unwrap() {
        Ok(a) => a,
        Err(why) => {
            eprintln!("SKIPPED: reef's image cannot be built on this machine: {why}");
            return;
        }
    };
    let t0 = Instant::now();
    eprintln!("image {} (build: {built:?})", archive.display());

    let node = Netns::new("crf").unwrap();
    node.ip([
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ])
    .unwrap();
    node.ip(["addr", "add", &format!("{NODE_IP}/24"), "dev", "eth0"])
        .unwrap();
    for l in ["eth0", "eth0p", "lo"] {
        node.ip(["link", "set", l, "up"]).unwrap();
    }
    // A node has a default route; Calico-style wiring needs one: the host veth answers the
    // pod's ARP for 169.254.1.1 by proxy only when the host can route that address.
    node.ip([
        "route",
        "add",
        "default",
        "via",
        "10.100.1.1",
        "dev",
        "eth0",
    ])
    .unwrap();
    let base = tempfile::tempdir().unwrap();
    let residue;
    let (up, installed, pinging);
    {
        let c = Containerd::start(&node, base.path()).unwrap();
        residue = c.residue();
        c.import(&archive).unwrap();
        c.import_image(&test_image()).unwrap();
        up = t0.elapsed();

        // The operator's pool, in the store the node config will name (the host path of the
        // node's /etc/reef/store.db).
        let store_path = c.etc_reef().join(Path::new(STORE).file_name().unwrap());
        let ipam = Ipam::new(EmbeddedStore::open(&store_path).unwrap());
        ipam.put_pool("default-ipv4", IpPoolSpec::new(POOL.parse().unwrap()))
            .unwrap();

        let mut cri = c.cri().unwrap();
        assert!(
            !cri.network_ready().unwrap(),
            "NetworkReady before any conflist"
        );
        let printed = run_install(&mut cri, &c);
        installed = t0.elapsed();

        // What the init container left on the node.
        let conflist = std::fs::read_to_string(c.cni_conf_dir().join("10-reef.conflist"))
            .unwrap_or_else(|e| panic!("no conflist ({e}); install said: {printed}"));
        let v: serde_json::Value = serde_json::from_str(&conflist).unwrap();
        assert_eq!(v["plugins"][0]["type"], "reef-cni", "{conflist}");
        assert_eq!(v["plugins"][0]["nodeConfig"], "/etc/reef/node.yaml");
        let node_yaml = std::fs::read_to_string(c.etc_reef().join("node.yaml")).unwrap();
        for want in [
            format!("nodeName: {NODE}"),
            format!("address: {NODE_IP}/24"),
            "interface: eth0".to_string(),
            format!("embedded: {{ path: {STORE} }}"),
        ] {
            assert!(node_yaml.contains(&want), "{want:?} not in {node_yaml}");
        }
        for b in ["reef-cni", "reef-ipam", "portmap", "loopback"] {
            let p = c.cni_bin_dir().join(b);
            let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(m.len() > 0 && m.permissions().mode() & 0o111 != 0, "{p:?}");
        }
        let leftovers: Vec<_> = std::fs::read_dir(c.cni_bin_dir())
            .unwrap()
            .chain(std::fs::read_dir(c.cni_conf_dir()).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

        // containerd picks the conflist up by itself, as it does on a real node.
        wait_for("NetworkReady", Duration::from_secs(15), |last| {
            let r = cri.network_ready();
            *last = format!("{r:?}");
            r.ok().filter(|r| *r)
        })
        .unwrap();

        // Ordinary pods: RunPodSandbox → containerd → reef-cni ADD on the node.
        let (pa, ca) = pod_with_busybox(&mut cri, &c, "pod-a");
        let (pb, cb) = pod_with_busybox(&mut cri, &c, "pod-b");
        let ip_a = cri.pod_ips(&pa.id).unwrap()[0];
        let ip_b = cri.pod_ips(&pb.id).unwrap()[0];
        assert_ne!(ip_a, ip_b);
        for ip in [ip_a, ip_b] {
            assert!(ip.to_string().starts_with("10.244."), "{ip} not in {POOL}");
        }
        let held = |ipam: &Ipam<EmbeddedStore>, sandbox: &str| -> Vec<IpAddr> {
            ipam.addresses_of(&handle(sandbox))
                .unwrap()
                .iter()
                .map(|a| a.address)
                .collect()
        };
        assert_eq!(held(&ipam, &pa.id), vec![ip_a]);
        assert_eq!(held(&ipam, &pb.id), vec![ip_b]);
        assert_eq!(in_use(&ipam), 2);
        let blocks = ipam.blocks_for_node(NODE).unwrap();
        assert!(!blocks.is_empty(), "{NODE} holds no block");

        ping(&mut cri, &ca, ip_b).unwrap();
        ping(&mut cri, &cb, ip_a).unwrap();
        let addrs = cri
            .exec_sync(
                &ca,
                &["ip", "-4", "addr", "show", "eth0"],
                Duration::from_secs(5),
            )
            .unwrap()
            .success("ip addr")
            .unwrap();
        assert!(addrs.contains(&format!("{ip_a}/32")), "{addrs}");
        pinging = t0.elapsed();

        // StopPodSandbox → DEL releases the address; RemovePodSandbox forgets the pod.
        cri.stop_pod(&pb.id).unwrap();
        assert_eq!(held(&ipam, &pb.id), Vec::<IpAddr>::new());
        assert_eq!(in_use(&ipam), 1);
        cri.remove_pod(&pb.id).unwrap();
        assert!(ping(&mut cri, &ca, ip_b).is_err(), "{ip_b} still answers");
        assert_eq!(held(&ipam, &pa.id), vec![ip_a]);
        // The released address is handed out again.
        let (pc, _) = pod_with_busybox(&mut cri, &c, "pod-c");
        assert_eq!(in_use(&ipam), 2);
        cri.stop_pod(&pc.id).unwrap();
        cri.remove_pod(&pc.id).unwrap();
        assert_eq!(in_use(&ipam), 1);
        let check = ipam.check(None).unwrap();
        assert!(check.is_clean(), "{check:?}");
        // pod-a is still running: the drop has to clean it up.
        drop(ipam);
    }
    let left = residue.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert_eq!(
        node.pids(),
        Vec::<u32>::new(),
        "processes left in the node namespace"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let b = base.path().to_string_lossy();
    assert!(!mounts.contains(b.as_ref()), "mounts left under {b}");
    eprintln!(
        "image build {built:?}; containerd up + images imported {up:?}, install done {installed:?}, \
         two reef pods pinging {pinging:?}, whole test without the build {:?}, with it {:?}",
        t0.elapsed(),
        started.elapsed()
    );
}
