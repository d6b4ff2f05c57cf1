//! A local pod's /32 route follows its veth's appearance through rtnetlink link events, not a
//! 1 s poll (issue 14). A real `reef node run` on the Kubernetes datastore (the in-process
//! API-server STAND-IN, `reef_integration::apiserver`; no real API server runs here) in a
//! namespace of the test's own; 20 pods are allocated on the node as its CNI plugin would,
//! then their host-side veths are created one by one with `ip link add` (and set up), and the time from
//! each veth's creation to its /32 route in the node's kernel table is measured. The figures
//! (p50, p99, max) are printed; the only assertion on time is a generous bound on the
//! median (500 ms; measured ~50 ms, and ~1 s with the old 1 s poll).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use reef_config::crds::IpPoolSpec;
use reef_integration::agent::{Agent, AgentSpec};
use reef_integration::apiserver::StandIn;
use reef_integration::{wait_for, Netns};
use reef_ipam::kubernetes::KubeStore;
use reef_ipam::{AutoAssignArgs, HandleId, Ipam, StoreExt, Typed};
use serde_json::json;

const REEF: &str = env!("CARGO_BIN_EXE_reef");
const NODE_IP: &str = "10.208.0.2";
const PODS: usize = 20;

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[test]
fn a_pods_route_follows_its_veth_by_link_event() {
    let ns = Netns::new("aglinks").unwrap();
    ns.ip(["link", "set", "lo", "up"]).unwrap();
    ns.ip([
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ])
    .unwrap();
    ns.ip(["addr", "add", &format!("{NODE_IP}/24"), "dev", "eth0"])
        .unwrap();
    ns.ip(["link", "set", "eth0", "up"]).unwrap();
    ns.ip(["link", "set", "eth0p", "up"]).unwrap();
    let api = ns.in_ns(|| StandIn::start().map_err(io)).unwrap();
    let url = api.url();
    api.put_node("links-1", &[], &[NODE_IP]);
    {
        let url = url.clone();
        ns.in_ns(move || {
            let s = KubeStore::connect_url(&url).map_err(io)?;
            let pool: IpPoolSpec =
                serde_json::from_value(json!({"cidr": "10.244.0.0/16", "blockSize": 26})).unwrap();
            s.create_typed(&Typed::new("default", pool)).map_err(io)?;
            Ok(())
        })
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path()).unwrap();
    let address = format!("{NODE_IP}/24");
    let agent = Agent::spawn(
        &ns,
        &AgentSpec::new(REEF, "links-1", &address, &kubeconfig, dir.path()),
    )
    .unwrap();
    wait_for("the agent is ready", Duration::from_secs(30), |last| {
        let s = agent.status();
        *last = s.to_string();
        (s["ready"] == true).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    // The pods, allocated as the CNI plugin allocates them (handle `reef.<container id>`).
    let pods: Vec<(String, IpAddr)> = {
        let url = url.clone();
        ns.in_ns(move || {
            let ipam = Ipam::new(KubeStore::connect_url(&url).map_err(io)?);
            let mut out = Vec::new();
            for i in 0..PODS {
                let cid = format!("linkspod{i:03}");
                let got = ipam
                    .auto_assign(&AutoAssignArgs {
                        handle: HandleId(format!("reef.{cid}")),
                        num_v4: 1,
                        node: "links-1".into(),
                        ..Default::default()
                    })
                    .map_err(io)?;
                out.push((cid, got.v4[0].address));
            }
            Ok(out)
        })
        .unwrap()
    };
    // Let the allocations reach the agent before the veths come.
    std::thread::sleep(Duration::from_secs(2));

    let mut took = Vec::new();
    let mut with_commands = Vec::new();
    for (i, (cid, addr)) in pods.iter().enumerate() {
        let veth = reef_cni::dataplane::host_veth_name(cid, "eth0");
        let t_add = Instant::now();
        ns.ip([
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            &format!("lkp{i}"),
        ])
        .unwrap();
        // Up, as the CNI plugin leaves it (the kernel takes no route via a link that is down).
        ns.ip(["link", "set", &veth, "up"]).unwrap();
        let t0 = Instant::now();
        let IpAddr::V4(a) = addr else {
            panic!("{addr} is not IPv4")
        };
        // /proc/net/route's destination: the address's bytes as a little-endian hex word.
        let dest = format!("{:08X}", u32::from_le_bytes(a.octets()));
        let found = ns
            .in_ns(move || loop {
                let t = std::fs::read_to_string("/proc/thread-self/net/route")?;
                if t.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 7 && f[0] == veth && f[1] == dest && f[7] == "FFFFFFFF"
                }) {
                    return Ok(true);
                }
                if t0.elapsed() > Duration::from_secs(10) {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(1));
            })
            .unwrap();
        assert!(
            found,
            "no /32 route for {addr} 10 s after its veth came up\n{}",
            agent.log()
        );
        took.push(t0.elapsed());
        with_commands.push(t_add.elapsed());
    }
    with_commands.sort();
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "veth up -> its /32 route in the kernel, {PODS} pods: p50 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms (route table read every 1 ms; from before `ip link add`, the two `ip` \
         commands included: p50 {:.1} ms; load {})",
        ms(p(0.5)),
        ms(p(0.99)),
        ms(took[took.len() - 1]),
        ms(with_commands[with_commands.len() / 2]),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    // Generous (measured here: ~50 ms, felix-lite's link resync delay; with the 1 s poll
    // before the links task: ~1 s), but one the poll could not meet.
    assert!(
        p(0.5) < Duration::from_millis(500),
        "median {:?}: the route waited for something other than the link event",
        p(0.5)
    );
}
