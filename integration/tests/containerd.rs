//! A node's own containerd driven through CRI the way kubelet drives it, with the CNI
//! reference plugins (bridge + host-local from containernetworking-plugins) behind a wrapper
//! that logs what the runtime passed. reef-cni is wired to the same path by the lab.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use reef_integration::containerd::{test_image, Containerd, TEST_IMAGE};
use reef_integration::cri::{ContainerSpec, Cri, PodSpec, Sandbox};
use reef_integration::{wait_for, Netns};

const NET: &str = "lab";
const SUBNET: &str = "10.88.7.0/24";

/// bridge, host-local and loopback (containerd's CRI always sets up `lo` with it) into the
/// node's /opt/cni/bin; `logbridge` records each call's command, netns and CNI_ARGS, then
/// runs bridge; the conflist goes in last, as an installer writes it.
fn install_reference_cni(c: &Containerd) -> std::path::PathBuf {
    let bin = c.cni_bin_dir();
    for p in ["bridge", "host-local", "loopback"] {
        std::fs::copy(Path::new("/usr/lib/cni").join(p), bin.join(p)).unwrap();
    }
    let calls = c.dir().join("cni-calls.log");
    let wrapper = format!(
        "#!/bin/sh\necho \"$CNI_COMMAND netns=$CNI_NETNS args=$CNI_ARGS\" >> {}\nexec /opt/cni/bin/bridge \"$@\"\n",
        calls.display()
    );
    let w = bin.join("logbridge");
    std::fs::write(&w, wrapper).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"{NET}","plugins":[{{"type":"logbridge","bridge":"cni0","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{SUBNET}"}}]]}}}}]}}"#
    );
    std::fs::write(c.cni_conf_dir().join("10-lab.conflist"), conf).unwrap();
    calls
}

/// A pod with one busybox container, as kubelet makes it: RunPodSandbox, then
/// CreateContainer + StartContainer.
fn pod_with_busybox(cri: &mut Cri, c: &Containerd, name: &str) -> (Sandbox, String) {
    let mut spec = PodSpec::new("lab-ns", name);
    spec.log_directory = c.pod_log_dir(name).to_string_lossy().into_owned();
    let pod = cri.run_pod(&spec).unwrap();
    let mut ctr = ContainerSpec::new("main", TEST_IMAGE);
    ctr.log_path = "main.log".into();
    let id = cri.run_container(&pod, &ctr).unwrap();
    (pod, id)
}

/// Whether a logged call's `CNI_ARGS` (`K=V;K=V`, in no fixed order) holds exactly `kv`.
fn has_arg(line: &str, kv: &str) -> bool {
    line.split_once("args=")
        .is_some_and(|(_, args)| args.split(';').any(|a| a == kv))
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

#[test]
fn cri_pods_get_cni_addresses_ping_each_other_and_survive_a_containerd_restart() {
    let started = Instant::now();
    let node = Netns::new("ctrd").unwrap();
    let base = tempfile::tempdir().unwrap();
    let residue;
    {
        let mut c = Containerd::start(&node, base.path()).unwrap();
        residue = c.residue();
        let up = started.elapsed();
        let calls = install_reference_cni(&c);
        c.import_image(&test_image()).unwrap();
        let mut cri = c.cri().unwrap();
        let v = cri.version().unwrap();
        assert_eq!(v.runtime_name, "containerd");
        wait_for("NetworkReady", Duration::from_secs(15), |last| {
            let r = cri.network_ready();
            *last = format!("{r:?}");
            r.ok().filter(|r| *r)
        })
        .unwrap();

        let (pa, ca) = pod_with_busybox(&mut cri, &c, "pod-a");
        let (pb, cb) = pod_with_busybox(&mut cri, &c, "pod-b");
        let ip_a = cri.pod_ips(&pa.id).unwrap()[0];
        let ip_b = cri.pod_ips(&pb.id).unwrap()[0];
        assert_ne!(ip_a, ip_b);
        for ip in [ip_a, ip_b] {
            assert!(ip.to_string().starts_with("10.88.7."), "{ip}");
        }
        let pods_up = started.elapsed();

        // RunPodSandbox made containerd call ADD with kubelet's CNI_ARGS.
        let log = std::fs::read_to_string(&calls).unwrap();
        for name in ["pod-a", "pod-b"] {
            assert!(
                log.lines()
                    .any(|l| l.starts_with("ADD netns=/var/run/netns/cni-")
                        && has_arg(l, "K8S_POD_NAMESPACE=lab-ns")
                        && has_arg(l, &format!("K8S_POD_NAME={name}"))
                        && l.contains("K8S_POD_INFRA_CONTAINER_ID=")),
                "no ADD for {name}: {log}"
            );
        }
        let leases = c.var_lib_cni().join("networks").join(NET);
        assert!(leases.join(ip_b.to_string()).exists());

        // The pods reach each other through the node's bridge.
        ping(&mut cri, &ca, ip_b).unwrap();
        ping(&mut cri, &cb, ip_a).unwrap();
        // ...and the address is the pod's own: `ip` inside shows it on eth0.
        let addrs = cri
            .exec_sync(
                &ca,
                &["ip", "-4", "addr", "show", "eth0"],
                Duration::from_secs(5),
            )
            .unwrap()
            .success("ip addr")
            .unwrap();
        assert!(addrs.contains(&ip_a.to_string()), "{addrs}");

        // containerd restarts (its shims keep the pods running); pods stay reachable and the
        // restarted containerd still knows them.
        c.restart().unwrap();
        let mut cri = c.cri().unwrap();
        let ready: Vec<String> = cri
            .list_pods()
            .unwrap()
            .into_iter()
            .filter(|p| p.state == 0)
            .map(|p| p.id)
            .collect();
        assert!(
            ready.contains(&pa.id) && ready.contains(&pb.id),
            "{ready:?}"
        );
        ping(&mut cri, &ca, ip_b).unwrap();
        assert_eq!(cri.pod_ips(&pb.id).unwrap(), vec![ip_b]);
        let restarted = started.elapsed();

        // StopPodSandbox → DEL; host-local's lease goes; RemovePodSandbox forgets the pod.
        cri.stop_pod(&pb.id).unwrap();
        let log = std::fs::read_to_string(&calls).unwrap();
        assert!(
            log.lines()
                .any(|l| l.starts_with("DEL ") && has_arg(l, "K8S_POD_NAME=pod-b")),
            "no DEL for pod-b: {log}"
        );
        assert!(!leases.join(ip_b.to_string()).exists());
        assert!(leases.join(ip_a.to_string()).exists());
        cri.remove_pod(&pb.id).unwrap();
        let left: Vec<String> = cri.list_pods().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(left, vec![pa.id.clone()]);
        // pod-b's address no longer answers.
        assert!(ping(&mut cri, &ca, ip_b).is_err());
        eprintln!(
            "containerd up {up:?}, two CRI pods pinging {pods_up:?}, after restart {restarted:?}"
        );
        // pod-a is still running: the drop has to clean it up. The leftover check sees it now
        // (containerd, its shim, the instance's cgroups and directory).
        let live = c.residue().leftovers();
        for what in ["process", "cgroup", "directory"] {
            assert!(
                live.iter().any(|l| l.starts_with(what)),
                "{what}: {live:#?}"
            );
        }
    }
    let gone = started.elapsed();
    let left = residue.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert_eq!(
        node.pids(),
        Vec::<u32>::new(),
        "processes left in the node namespace"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let b = base.path().to_string_lossy();
    assert!(!mounts.contains(b.as_ref()), "{mounts}");
    eprintln!("whole test incl. cleanup {gone:?}");
}

#[test]
fn start_in_a_missing_namespace_fails_and_leaves_nothing() {
    let base = tempfile::tempdir().unwrap();
    let e = Containerd::start_in("/run/netns/reeft-no-such-namespace", base.path()).unwrap_err();
    assert!(
        e.to_string().contains("reeft-no-such-namespace"),
        "error does not name the namespace: {e}"
    );
    let left: Vec<_> = std::fs::read_dir(base.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}
