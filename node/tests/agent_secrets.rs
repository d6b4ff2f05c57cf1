//! BGP passwords are watched by name, not read on every datastore change (issue 14). A real
//! `reef node run` on the Kubernetes datastore — the in-process API-server STAND-IN
//! (`reef_integration::apiserver`; no real API server runs on this machine), which counts
//! requests by verb and resource and honours `fieldSelector=metadata.name=<name>` on Secret
//! lists and watches (only that Secret is sent) — peers with a real BIRD over TCP MD5 using a
//! password from a Secret. Checked: the session comes up with the Secret's password; other
//! nodes joining, claiming blocks and changing labels (each a new datastore view for the
//! agent) cost no Secret GET or LIST; the Secret's new value reaches the session without a
//! restart, through the watch (still no GET or LIST). Before the secrets task the agent made
//! one Secret GET per datastore change.

use std::collections::BTreeMap;
use std::time::Duration;

use reef_config::crds::{BgpPeerSpec, IpPoolSpec, ReefNodeSpec};
use reef_integration::agent::{Agent, AgentSpec};
use reef_integration::apiserver::StandIn;
use reef_integration::bird::{Bird, BirdConfig, BirdPeer};
use reef_integration::{lan, wait_for, Netns};
use reef_ipam::kubernetes::KubeStore;
use reef_ipam::{AutoAssignArgs, HandleId, Ipam, StoreExt, Typed};
use serde_json::json;

const REEF: &str = env!("CARGO_BIN_EXE_reef");
const NODE_IP: &str = "10.207.0.2";
const ROUTER_IP: &str = "10.207.0.1";
/// Other nodes of the cluster (no agent runs for them: their ReefNodes are written here).
const OTHERS: [(&str, &str); 2] = [("sec-node-2", "10.207.0.3"), ("sec-node-3", "10.207.0.4")];

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Runs `f` with a store client inside `ns` (the stand-in listens on that namespace's
/// loopback).
fn with_store<T: Send + 'static>(
    ns: &Netns,
    url: &str,
    f: impl FnOnce(&KubeStore) -> Result<T, reef_ipam::Error> + Send + 'static,
) -> T {
    let url = url.to_string();
    ns.in_ns(move || {
        let store = KubeStore::connect_url(&url).map_err(io)?;
        f(&store).map_err(io)
    })
    .unwrap()
}

/// Secret requests so far, by verb (only the agent reads Secrets here).
fn secret_requests(api: &StandIn) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (k, n) in api.request_counts() {
        if k.resource == "secrets" {
            *out.entry(k.verb).or_default() += n;
        }
    }
    out
}

fn gets_and_lists(r: &BTreeMap<String, u64>) -> u64 {
    r.get("get").copied().unwrap_or(0) + r.get("list").copied().unwrap_or(0)
}

fn bird_with(router: &Netns, password: &str) -> Bird {
    let mut cfg = BirdConfig::new(ROUTER_IP.parse().unwrap());
    let mut p = BirdPeer::new("reef", 64513, NODE_IP.parse().unwrap(), 64512);
    p.password = Some(password.into());
    cfg.peers.push(p);
    Bird::start(router, &cfg).unwrap()
}

#[test]
fn bgp_passwords_are_watched_by_name_and_cost_nothing_per_datastore_change() {
    let router = lan::router("agsec-r", &format!("{ROUTER_IP}/24")).unwrap();
    let node = lan::node(&router, "agsec-n", "n", &format!("{NODE_IP}/24")).unwrap();

    let api = node.in_ns(|| StandIn::start().map_err(io)).unwrap();
    let url = api.url();
    api.put_secret("reef-system", "bgp", &[("router", "first-s3cret")]);
    // A Secret the agent is not told about: its changes must not reach it.
    api.put_secret("reef-system", "unrelated", &[("k", "v")]);
    api.put_node("sec-node-1", &[], &[NODE_IP]);
    with_store(&node, &url, |s| {
        let pool: IpPoolSpec =
            serde_json::from_value(json!({"cidr": "10.244.0.0/16", "blockSize": 28})).unwrap();
        s.create_typed(&Typed::new("default", pool))?;
        let peer: BgpPeerSpec = serde_json::from_value(json!({
            "peerIP": ROUTER_IP, "asNumber": 64513,
            "password": {"name": "bgp", "key": "router"}
        }))
        .unwrap();
        s.create_typed(&Typed::new("router", peer)).map(|_| ())
    });
    let bird = bird_with(&router, "first-s3cret");

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path()).unwrap();
    let address = format!("{NODE_IP}/24");
    let agent = Agent::spawn(
        &node,
        &AgentSpec::new(REEF, "sec-node-1", &address, &kubeconfig, dir.path()),
    )
    .unwrap();

    // 1. The MD5 session comes up: the password came from the Secret.
    bird.wait_established("reef", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
    let before = secret_requests(&api);
    eprintln!("Secret requests to get the session up: {before:?}");

    // 2. Datastore changes that are not about the password, each a new view for the agent:
    //    other nodes join (the mesh adds them as peers), claim blocks, change labels; another
    //    Secret in the namespace changes.
    for (name, ip) in OTHERS {
        let spec: ReefNodeSpec =
            serde_json::from_value(json!({"address": format!("{ip}/24")})).unwrap();
        with_store(&node, &url, move |s| {
            s.create_typed(&Typed::new(name, spec)).map(|_| ())
        });
        wait_for(
            &format!("the agent peers with {name} (its view changed)"),
            Duration::from_secs(20),
            |last| {
                let peers = agent.peers();
                *last = format!("{peers:?}");
                peers.iter().any(|(a, _)| a == ip).then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
    }
    {
        let url = url.clone();
        node.in_ns(move || {
            let ipam = Ipam::new(KubeStore::connect_url(&url).map_err(io)?);
            for i in 0..20 {
                ipam.auto_assign(&AutoAssignArgs {
                    handle: HandleId(format!("reef.sec-node-2-pod{i}")),
                    num_v4: 1,
                    node: OTHERS[0].0.into(),
                    ..Default::default()
                })
                .map_err(io)?;
            }
            Ok(())
        })
        .unwrap();
    }
    with_store(&node, &url, |s| {
        let mut n = s
            .get_typed::<ReefNodeSpec>(OTHERS[1].0)?
            .expect("sec-node-3's ReefNode");
        n.labels.insert("rack".into(), "r7".into());
        s.update_typed(&n).map(|_| ())
    });
    api.put_secret("reef-system", "unrelated", &[("k", "w")]);
    // The last change is seen: the mesh drops a node whose ReefNode goes.
    with_store(&node, &url, |s| {
        let n = s.get_typed::<ReefNodeSpec>(OTHERS[1].0)?;
        s.delete_typed(&n.expect("sec-node-3's ReefNode"))
    });
    wait_for(
        "the agent drops sec-node-3 (its view changed)",
        Duration::from_secs(20),
        |last| {
            let peers = agent.peers();
            *last = format!("{peers:?}");
            (!peers.iter().any(|(a, _)| a == OTHERS[1].1)).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
    let after = secret_requests(&api);
    eprintln!("Secret requests after the unrelated changes: {after:?}");
    assert_eq!(
        gets_and_lists(&after),
        gets_and_lists(&before),
        "the agent read Secrets for datastore changes that were not about them: before \
         {before:?}, after {after:?}"
    );
    assert_eq!(
        bird.bgp_state("reef").unwrap().as_deref(),
        Some("Established"),
        "the session stayed up"
    );

    // 3. The Secret changes: the agent takes the new password without a restart (a BIRD with
    //    the new one accepts the session; one with the old would not).
    let configured = || {
        agent
            .log()
            .lines()
            .filter(|l| l.contains("peer configured") && l.contains(ROUTER_IP))
            .count()
    };
    let configured_before = configured();
    api.put_secret("reef-system", "bgp", &[("router", "second-s3cret")]);
    wait_for(
        "the agent reconfigures the peer",
        Duration::from_secs(20),
        |last| {
            let n = configured();
            *last = format!("{n} 'peer configured' lines, {configured_before} before");
            (n > configured_before).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
    bird.stop();
    let bird = bird_with(&router, "second-s3cret");
    bird.wait_established("reef", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
    let end = secret_requests(&api);
    eprintln!("Secret requests at the end: {end:?}");
    assert_eq!(
        gets_and_lists(&end),
        gets_and_lists(&before),
        "the new value came by the watch, not by reading: {end:?}"
    );
    assert!(
        agent.status()["problems"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| !p.to_string().contains("password"))),
        "{}",
        agent.status()
    );
}
