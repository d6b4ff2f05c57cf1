//! A node's datastore work does not grow with other nodes' activity (issue 14): one real
//! agent (node a) on the Kubernetes datastore — the in-process API-server STAND-IN
//! (`reef_integration::apiserver`; no real API server runs on this machine), which counts
//! requests by verb, resource, label selector and whether a bearer token was presented —
//! idles while 200 pods are allocated on node b through `reef_ipam`, as b's CNI plugin would.
//! The agent authenticates with a token the stand-in issued (TokenRequest), the test's
//! client without one, so the counts tell them apart. Checked: while b's pods come, the agent
//! makes no LIST request and no request for IPAMBlocks (it follows only its own and lent
//! blocks); an agent that re-read the cluster on every change (as before the sync task) makes
//! one list per kind per change.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use reef_config::crds::IpPoolSpec;
use reef_integration::agent::{Agent, AgentSpec};
use reef_integration::apiserver::{RequestKey, StandIn};
use reef_integration::{wait_for, Netns};
use reef_ipam::kubernetes::KubeStore;
use reef_ipam::{AutoAssignArgs, HandleId, Ipam, StoreExt, Typed};
use serde_json::{json, Value};

const REEF: &str = env!("CARGO_BIN_EXE_reef");
const NODE_IP: &str = "10.206.0.11";
const PODS: usize = 200;

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// A token for service account `reef-system/name`, asked with a plain HTTP TokenRequest (as
/// `reef install` asks the real API server), from inside `ns`.
fn issue_token(ns: &Netns, api: &StandIn, name: &str) -> String {
    api.put_service_account("reef-system", name);
    let addr = api.addr();
    let path = format!("/api/v1/namespaces/reef-system/serviceaccounts/{name}/token");
    ns.in_ns(move || {
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                          "spec": {"expirationSeconds": 3600}})
        .to_string();
        let mut s = std::net::TcpStream::connect(addr)?;
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let json_at = resp.find("\r\n\r\n").map_or(0, |i| i + 4);
        let j: Value = serde_json::from_str(&resp[json_at..]).map_err(io)?;
        j["status"]["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| io(format!("no token in {resp}")))
    })
    .unwrap()
}

/// Requests an idle agent makes on a timer, whatever other nodes do: Lease reads (it checks
/// whether the holder is alive), watches renewed when the server ends them, its status.
fn periodic(k: &RequestKey) -> bool {
    k.resource == "leases" || k.verb == "watch" || k.resource.ends_with("/status")
}

/// The agent's requests (those with a token), by key.
fn agent_requests(api: &StandIn) -> BTreeMap<RequestKey, u64> {
    api.request_counts()
        .into_iter()
        .filter(|(k, _)| k.with_token)
        .collect()
}

#[test]
fn another_nodes_pod_starts_cost_the_agent_no_list_and_no_block_request() {
    let ns = Netns::new("ascale").unwrap();
    // No dummy driver in every kernel: a veth pair with both ends here.
    ns.ip([
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ])
    .unwrap();
    ns.ip(["link", "set", "eth0p", "up"]).unwrap();
    ns.ip(["addr", "add", &format!("{NODE_IP}/24"), "dev", "eth0"])
        .unwrap();
    ns.ip(["link", "set", "eth0", "up"]).unwrap();
    let api = ns
        .in_ns(|| StandIn::start_on(format!("{NODE_IP}:0").parse().unwrap()).map_err(io))
        .unwrap();
    api.put_node("a", &[], &[NODE_IP]);
    api.put_node("b", &[], &["10.206.0.12"]);
    let url = api.url();
    {
        let url = url.clone();
        ns.in_ns(move || {
            let s = KubeStore::connect_url(&url).map_err(io)?;
            let pool: IpPoolSpec = serde_json::from_value(
                json!({"cidr": "10.244.0.0/16", "blockSize": 28, "ipipMode": "Never"}),
            )
            .unwrap();
            s.create_typed(&Typed::new("default", pool)).map_err(io)?;
            Ok(())
        })
        .unwrap();
    }
    // The cluster-wide jobs (the cleaner, LoadBalancer assignment) are another node's: one
    // agent of the cluster does them, and it is not the one measured.
    for name in [reef_ipam::cleaner::LEASE_NAME, "reef-loadbalancer"] {
        api.put_lease("reef-system", name, "c", 3600);
    }
    let token = issue_token(&ns, &api, "reef-node");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig_with_token(&token)).unwrap();
    let d = dir.path().join("a");
    let address = format!("{NODE_IP}/24");
    let agent = Agent::spawn(&ns, &AgentSpec::new(REEF, "a", &address, &kubeconfig, &d)).unwrap();

    // Settled: registered (its ReefNode exists) and no new request for 3 s.
    wait_for("agent a registers", Duration::from_secs(30), |_| {
        api.object("reefnodes", "a").map(|_| ())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let mut last = agent_requests(&api);
    wait_for("agent a settles", Duration::from_secs(30), |seen| {
        std::thread::sleep(Duration::from_secs(3));
        let now = agent_requests(&api);
        let settled = now
            .iter()
            .all(|(k, n)| periodic(k) || last.get(k) == Some(n));
        *seen = format!("{now:?}");
        last = now;
        settled.then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert!(
        last.keys().any(|k| k.verb == "list"),
        "the agent lists at start: {last:?}"
    );
    let before = last;

    // Node b's CNI plugin allocates 200 pods (about 13 blocks of 16 claimed, 200 block writes).
    {
        let url = url.clone();
        ns.in_ns(move || {
            let ipam = Ipam::new(KubeStore::connect_url(&url).map_err(io)?);
            for i in 0..PODS {
                ipam.auto_assign(&AutoAssignArgs {
                    handle: HandleId(format!("reef.b-pod{i}")),
                    num_v4: 1,
                    node: "b".into(),
                    ..Default::default()
                })
                .map_err(io)?;
            }
            Ok(())
        })
        .unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = agent_requests(&api);
    let grew: Vec<(&RequestKey, u64)> = after
        .iter()
        .filter_map(|(k, n)| {
            let d = n - before.get(k).copied().unwrap_or(0);
            (d > 0).then_some((k, d))
        })
        .collect();
    eprintln!("agent a's requests while node b allocated {PODS} pods: {grew:?}");
    let lists: Vec<_> = grew.iter().filter(|(k, _)| k.verb == "list").collect();
    assert!(
        lists.is_empty(),
        "the agent listed again: {lists:?}\n{}",
        agent.log()
    );
    let blocks: Vec<_> = grew
        .iter()
        .filter(|(k, _)| k.resource.starts_with("ipamblocks"))
        .collect();
    assert!(blocks.is_empty(), "the agent asked for blocks: {blocks:?}");
    assert!(
        grew.iter()
            .filter(|(k, _)| !periodic(k))
            .map(|(_, d)| d)
            .sum::<u64>()
            <= 5,
        "the agent's work grew with node b's pods: {grew:?}"
    );
}
