//! The lab on a real kernel with ipip (the Debian kernel under qemu): agents pick kernel
//! IP-in-IP (`tunl0`) and pods on two subnets reach each other through it.

use std::path::PathBuf;
use std::process::Command;

use reef_integration::vm;

fn reef() -> PathBuf {
    if vm::inside() {
        PathBuf::from(vm::GUEST_BIN).join("reef")
    } else {
        PathBuf::from(env!("CARGO_BIN_EXE_reef"))
    }
}

#[test]
fn vm_lab_pods_ping_across_subnets_over_kernel_ipip() {
    if !vm::inside() {
        let cni = reef().with_file_name("reef-cni");
        return vm::rerun_inside(
            "vm_lab_pods_ping_across_subnets_over_kernel_ipip",
            &[reef(), cni],
        )
        .unwrap();
    }
    let up = Command::new(reef())
        .args(["lab", "up", "--nodes", "2", "--subnets", "2", "--pods", "1"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    println!("{text}");
    let ok = up.status.success();
    if !ok {
        for f in ["n0/agent.log", "n1/agent.log", "router/bird.log"] {
            let log = std::fs::read_to_string(format!("/run/reef-lab/{f}")).unwrap_or_default();
            println!("---- {f}\n{log}");
        }
    }
    let result = std::panic::catch_unwind(|| {
        assert!(ok, "lab up failed");
        let st = Command::new(reef())
            .args([
                "--config",
                "/run/reef-lab/n0/node.yaml",
                "-o",
                "json",
                "status",
            ])
            .output()
            .unwrap();
        let s: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        assert_eq!(s["tunnel_mode"], "kernel ipip (tunl0)", "{s}");
        // The pod of node 1 (other subnet) is reached through tunl0.
        let lab = Command::new(reef())
            .args(["-o", "json", "lab", "status"])
            .output()
            .unwrap();
        let lab: serde_json::Value = serde_json::from_slice(&lab.stdout).unwrap();
        let dst = lab["pods"][1]["address"].as_str().unwrap().to_string();
        // The agent keeps reef-filter in step with the ReefNodes: on the kernel tunnel,
        // IP-in-IP is accepted from the other node only (not from n0 itself).
        let n1 = lab["nodes"][1]["address"].as_str().unwrap();
        let n1 = n1.split('/').next().unwrap();
        let set = Command::new("ip")
            .args([
                "netns",
                "exec",
                "reef-lab-n0",
                "nft",
                "list",
                "table",
                "inet",
            ])
            .arg(reef_tunnel::filter::TABLE)
            .output()
            .unwrap();
        let set = String::from_utf8_lossy(&set.stdout).to_string();
        assert!(set.contains(&format!("elements = {{ {n1} }}")), "{set}");
        assert!(set.contains("ip saddr != @nodes"), "{set}");
        // A node joining (or leaving) changes no route on n0, yet its address must enter
        // (leave) the set: the agent syncs the tunnel every round, not only on a new plan.
        // Registered the way an agent registers its node: a ReefNode in the lab's store.
        let store =
            reef_ipam::EmbeddedStore::open(std::path::Path::new("/run/reef-lab/store.db")).unwrap();
        let joining = reef_ipam::Typed::new(
            "vm-joining",
            reef_config::crds::ReefNodeSpec {
                address: "10.20.9.9/24".parse().unwrap(),
                address_v6: None,
                as_number: None,
                tunnel_address: None,
                route_reflector_cluster_id: None,
            },
        );
        use reef_ipam::StoreExt;
        let joining = store.create_typed(&joining).unwrap();
        let filter = || {
            let out = Command::new("ip")
                .args(["netns", "exec", "reef-lab-n0", "nft", "list", "set", "inet"])
                .args([reef_tunnel::filter::TABLE, "nodes"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let wait_for = |present: bool| {
            for _ in 0..100 {
                if filter().contains("10.20.9.9") == present {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            panic!(
                "10.20.9.9 present={} expected in reef-filter:\n{}",
                !present,
                filter()
            );
        };
        wait_for(true);
        store.delete_typed(&joining).unwrap();
        wait_for(false);
        let mut reached = false;
        for _ in 0..20 {
            let p = Command::new("ip")
                .args(["netns", "exec", "reef-lab-p0-0", "ping", "-c1", "-W1", &dst])
                .output()
                .unwrap();
            if p.status.success() {
                reached = true;
                break;
            }
        }
        let routes = Command::new("ip")
            .args(["-n", "reef-lab-n0", "route"])
            .output()
            .unwrap();
        let routes = String::from_utf8_lossy(&routes.stdout).to_string();
        println!("{routes}");
        assert!(reached, "pod on n0 cannot reach {dst} over tunl0");
        assert!(routes.contains("dev tunl0 proto 201 onlink"), "{routes}");

        // A clean restart of n1's agent with kernel ipip loses no ping across the subnets:
        // the kernel forwards on its own while no agent runs, peers keep n1's block (graceful
        // restart) and the new agent starts from the saved best paths.
        let ping = Command::new("ip")
            .args([
                "netns",
                "exec",
                "reef-lab-p0-0",
                "ping",
                "-i",
                "0.1",
                "-q",
                &dst,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_secs(1));
        let restart = Command::new(reef())
            .args(["lab", "restart", "n1"])
            .output()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_secs(1));
        let _ = Command::new("kill")
            .args(["-INT", &ping.id().to_string()])
            .status();
        let out = ping.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        println!("{}{text}", String::from_utf8_lossy(&restart.stdout));
        assert!(
            restart.status.success(),
            "lab restart: {}",
            String::from_utf8_lossy(&restart.stderr)
        );
        assert!(
            text.contains(" 0% packet loss"),
            "pings lost during n1's restart:\n{text}"
        );
    });
    let _ = Command::new(reef()).args(["lab", "down"]).output();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
