//! A deleted node is cleaned up by the running agents, end to end: real `reef node run` agents
//! on the Kubernetes datastore in node namespaces behind the lab router, the API server played
//! by the stand-in (no kube-apiserver runs here; `reef_integration::apiserver` keeps Nodes,
//! Leases, resourceVersions, watches and 409s as the real one does), listening on the router's
//! address so every node reaches it.
//!
//! ```text
//!   n0 10.100.1.10 ──┐                       n1 is switched off (its agent killed), then its
//!   n1 10.100.1.11 ──┼── br0 [router: API]   Node deleted, as an autoscaler does; n2 joins
//!   n2 10.100.1.12 ──┘                       after and gets the block n1 held.
//! ```
//!
//! Checked within 30 s of the Node's deletion: its ReefNode, block affinity, block, tunnel
//! address and pod addresses are gone; the surviving node dropped it from the mesh and its
//! route to the dead node's block — long before graceful restart (120 s) would have let the
//! stale route go. Then a new node claims the block and is routed.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use reef_config::crds::{AllocationAttributes, IpPoolSpec, ReefNodeSpec};
use reef_integration::agent::{Agent, AgentSpec};
use reef_integration::apiserver::StandIn;
use reef_integration::topo::Node;
use reef_integration::{wait_for, Netns, Topology};
use reef_ipam::kubernetes::KubeStore;
use reef_ipam::{AutoAssignArgs, HandleId, Ipam, Labels, StoreExt};

const REEF: &str = env!("CARGO_BIN_EXE_reef");

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Runs `f` with an IPAM client inside `ns` (where the stand-in is reachable).
fn with_ipam<T: Send + 'static>(
    ns: &Netns,
    url: &str,
    f: impl FnOnce(&Ipam<KubeStore>) -> Result<T, reef_ipam::Error> + Send + 'static,
) -> T {
    let url = url.to_string();
    ns.in_ns(move || {
        let ipam = Ipam::new(KubeStore::connect_url(&url).map_err(io)?);
        f(&ipam).map_err(io)
    })
    .unwrap()
}

/// Registers node `n`'s Node (as its kubelet would) and starts its agent.
fn start_agent(api: &StandIn, dir: &Path, n: &Node) -> Agent {
    let name = format!("n{}", n.index);
    api.put_node(&name, &[], &[&n.addr.to_string()]);
    let d = dir.join(&name);
    std::fs::create_dir_all(&d).unwrap();
    let kubeconfig = api.write_kubeconfig(&d).unwrap();
    let address = format!("{}/{}", n.addr, n.prefix_len);
    let spec = AgentSpec::new(REEF, &name, &address, &kubeconfig, &d);
    Agent::spawn(&n.ns, &spec).unwrap()
}

fn has_route(n: &Node, dst: &str) -> bool {
    n.ns.routes().unwrap().iter().any(|r| r.dst == dst)
}

#[test]
fn a_deleted_node_is_cleaned_up_by_the_agents_and_its_block_reused() {
    let topo = Topology::builder()
        .named("ndel")
        .nodes(3)
        .subnets(1)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bind = SocketAddr::new(IpAddr::V4(topo.nodes[0].gateway), 0);
    let api = topo
        .router
        .in_ns(move || StandIn::start_on(bind).map_err(io))
        .unwrap();
    let url = api.url();
    // Two /26 blocks: one per node, so a node that joins later gets only what a deleted one
    // gave back.
    with_ipam(&topo.router, &url, |ipam| {
        let mut pool = IpPoolSpec::new("10.244.0.0/25".parse().unwrap());
        pool.block_size = Some(26);
        ipam.put_pool("default", pool)
    });

    // n0 first, so its cleaner holds the Lease (the deleted node is not the leader: the
    // takeover after a leader's death adds the Lease's 15 s).
    let (n0, n1, n2) = (&topo.nodes[0], &topo.nodes[1], &topo.nodes[2]);
    let mut a0 = start_agent(&api, dir.path(), n0);
    wait_for(
        "n0 to hold the cleanup Lease",
        Duration::from_secs(20),
        |_| {
            api.object("leases", "reef-system/reef-cleanup")
                .filter(|l| l["spec"]["holderIdentity"] == "n0")
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nn0's log:\n{}", a0.log()));
    let mut a1 = start_agent(&api, dir.path(), n1);
    let n1_addr = n1.addr.to_string();
    wait_for("n0's mesh session with n1", Duration::from_secs(30), |_| {
        a0.peers()
            .contains(&(n1_addr.clone(), "Established".to_string()))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\nn0:\n{}\nn1:\n{}", a0.log(), a1.log()));
    // A pod of n1's: an address from n1's block.
    let (n1_block, pod) = with_ipam(&topo.router, &url, |ipam| {
        let got = ipam.auto_assign(&AutoAssignArgs {
            handle: HandleId("net.pod-on-n1".into()),
            num_v4: 1,
            num_v6: 0,
            node: "n1".into(),
            node_labels: Labels::new(),
            attributes: AllocationAttributes {
                pod_namespace: Some("default".into()),
                pod_name: Some("web".into()),
                ..Default::default()
            },
            pools: Vec::new(),
            avoid_block_ends: false,
        })?;
        Ok((ipam.blocks_for_node("n1")?[0], got.v4[0].address))
    });
    assert!(n1_block.contains(pod));
    let n1_dst = n1_block.to_string();
    wait_for("n0's route to n1's block", Duration::from_secs(30), |_| {
        has_route(n0, &n1_dst).then_some(())
    })
    .unwrap();

    // n1 is switched off (no clean shutdown: its peers keep its routes as stale under
    // graceful restart), then its Node is deleted.
    a1.kill();
    let t = Instant::now();
    assert!(api.delete_node("n1"));
    // When each part went, for the figures.
    let (mut released_at, mut unpeered_at, mut unrouted_at) = (None, None, None);
    let cleaned = wait_for(
        "everything of n1 released, and n0 without its peer and route",
        Duration::from_secs(30),
        |last| {
            let (reefnode, blocks, tunnel, pods, gone) = with_ipam(&topo.router, &url, |ipam| {
                Ok((
                    ipam.store().get_typed::<ReefNodeSpec>("n1")?.is_some(),
                    ipam.blocks_for_node("n1")?,
                    ipam.addresses_of(&Ipam::<KubeStore>::tunnel_handle("n1", true))?,
                    ipam.addresses_of(&HandleId("net.pod-on-n1".into()))?,
                    ipam.gone_nodes()?,
                ))
            });
            let peered = a0.peers().iter().any(|(a, _)| *a == n1_addr);
            let routed = has_route(n0, &n1_dst);
            let released = !reefnode
                && blocks.is_empty()
                && tunnel.is_empty()
                && pods.is_empty()
                && gone.is_empty();
            for (went, at) in [
                (released, &mut released_at),
                (!peered, &mut unpeered_at),
                (!routed, &mut unrouted_at),
            ] {
                if went && at.is_none() {
                    *at = Some(t.elapsed());
                }
            }
            *last = format!(
                "ReefNode {reefnode}, blocks {blocks:?}, tunnel {tunnel:?}, pods {pods:?}, \
                 gone {gone:?}, n0 peers n1 {peered}, n0 routes {n1_dst} {routed}"
            );
            (released && !peered && !routed).then(|| t.elapsed())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nn0's log:\n{}", a0.log()));
    eprintln!(
        "n1's Node deleted → released {released_at:?}, n0 unpeered {unpeered_at:?}, \
         n0's route gone {unrouted_at:?}; all done {cleaned:?} (node grace 10 s)"
    );
    // The route went with the node, not a reconciler grace period (10 s) or graceful restart
    // (120 s) later.
    let (released_at, unrouted_at) = (released_at.unwrap(), unrouted_at.unwrap());
    assert!(
        unrouted_at <= released_at + Duration::from_secs(2),
        "n0 kept the route to n1's block {:?} after n1 was released",
        unrouted_at - released_at
    );
    // The block itself is gone (it was empty once n1's addresses went), and the check is clean.
    let check = with_ipam(&topo.router, &url, |ipam| ipam.check(None));
    assert!(check.is_clean(), "{check:?}");

    // A new node gets the block n1 held, and n0 routes it to the new node.
    let mut a2 = start_agent(&api, dir.path(), n2);
    let n2_blocks = wait_for("n2's block", Duration::from_secs(30), |_| {
        let b = with_ipam(&topo.router, &url, |ipam| ipam.blocks_for_node("n2"));
        (!b.is_empty()).then_some(b)
    })
    .unwrap_or_else(|e| panic!("{e}\nn2's log:\n{}", a2.log()));
    assert_eq!(n2_blocks, vec![n1_block], "n2 did not get n1's old block");
    let n2_addr = n2.addr.to_string();
    wait_for(
        "n0's route to n1's old block via n2",
        Duration::from_secs(30),
        |_| {
            n0.ns
                .routes()
                .unwrap()
                .iter()
                .any(|r| r.dst == n1_dst && r.gateway.as_deref() == Some(n2_addr.as_str()))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nn0:\n{}\nn2:\n{}", a0.log(), a2.log()));

    a0.kill();
    a2.kill();
    drop(api);
}
