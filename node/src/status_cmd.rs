//! `reef status` and `reef routes`: the local agent's view, through its control socket.

use anyhow::Result;
use reef_config::node_config::NodeConfig;

use crate::agent::services::{Kind, ServiceAdverts};
use crate::agent::snapshot::{PeerRow, Snapshot};
use crate::output::{Output, Table};
use crate::{control, Exit};

pub fn status(cfg: &NodeConfig, out: Output) -> Result<Exit> {
    let s = control::query(&cfg.agent_socket)?;
    if out.json {
        out.print_json(&s)?;
    } else {
        print!("{}", render_status(&s));
    }
    Ok(if s.ready && s.problems.is_empty() {
        Exit::Ok
    } else {
        Exit::Problems
    })
}

pub fn render_status(s: &Snapshot) -> String {
    let mut o = format!(
        "reef agent on {} ({}), {}\n\nBGP peers:\n",
        s.node,
        s.address,
        if s.ready { "ready" } else { "not ready" }
    );
    let mut t = Table::new(&["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"]);
    for p in &s.peers {
        let mut info = match (&p.last_error, p.state.as_str()) {
            (_, "Established") => format!(
                "{} received, {} accepted, {} sent",
                p.prefixes_received, p.prefixes_accepted, p.prefixes_sent
            ),
            _ if p.max_prefix_exceeded => "stopped: max-prefix exceeded".to_string(),
            (Some(e), _) => e.clone(),
            (None, _) => String::new(),
        };
        if let Some(r) = refusals(p) {
            if !info.is_empty() {
                info.push_str("; ");
            }
            info.push_str(&r);
        }
        t.row(vec![
            p.address.to_string(),
            p.peer_type.clone(),
            p.state.clone(),
            p.since.clone(),
            info,
        ]);
    }
    o.push_str(&t.render());
    let count = |r: &str| s.routes.iter().filter(|x| x.reason == r).count();
    o.push_str(&format!(
        "\nTunnel: {} (MTU {})\nBlocks: {}\nRoutes: {} programmed of {} desired ({} local pod, {} own block, {} direct, {} ipip, {} userspace ipip)\n",
        s.tunnel_mode,
        s.mtu,
        if s.blocks.is_empty() { "-".to_string() } else { s.blocks.join(", ") },
        s.routes_programmed,
        s.routes_desired,
        count("local pod"),
        count("own block"),
        count("direct"),
        count("ipip"),
        count("userspace ipip"),
    ));
    o.push_str(&render_services(&s.services));
    for p in &s.not_ready {
        o.push_str(&format!("Not ready: {p}\n"));
    }
    for p in s.problems.iter().chain(s.reconcile_errors.iter()) {
        o.push_str(&format!("Problem: {p}\n"));
    }
    o
}

/// The Service routes this node advertises and why, and the addresses it holds back; nothing
/// when Service advertisement was never looked at (an older agent's snapshot).
fn render_services(v: &ServiceAdverts) -> String {
    if let Some(note) = &v.note {
        return format!("Service routes: none: {note}\n");
    }
    if v.routes.is_empty() && v.withheld.is_empty() && v.services_seen == 0 {
        return String::new();
    }
    let mut o = format!(
        "\nService routes (to BGP peers that take them; watching {} Services, {} EndpointSlices):\n",
        v.services_seen, v.slices_seen
    );
    let mut t = Table::new(&["PREFIX", "KIND", "WHY"]);
    for r in &v.routes {
        let kind = match r.kind {
            Kind::ClusterIpRange => "cluster IPs",
            Kind::ExternalIp => "external IP",
            Kind::LoadBalancerIp => "LoadBalancer IP",
        };
        t.row(vec![r.prefix.to_string(), kind.into(), r.why.clone()]);
    }
    o.push_str(&t.render());
    if !v.withheld.is_empty() {
        o.push_str("Not advertised:\n");
        let mut t = Table::new(&["SERVICE", "ADDRESS", "WHY"]);
        for w in &v.withheld {
            t.row(vec![
                w.service.clone(),
                w.address.to_string(),
                w.why.clone(),
            ]);
        }
        o.push_str(&t.render());
    }
    o
}

/// What import refused from a peer: `refused 4: overlaps this node's block 2, next hop is
/// not a node 1, …; last 10.244.0.0/27 via 192.0.2.9 (overlaps this node's block)`; most
/// frequent reason first. `None` when nothing was refused.
fn refusals(p: &PeerRow) -> Option<String> {
    let total: usize = p.prefixes_refused.values().sum();
    let mut parts = Vec::new();
    if total > 0 {
        let mut by: Vec<(&String, &usize)> =
            p.prefixes_refused.iter().filter(|(_, n)| **n > 0).collect();
        by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let list: Vec<String> = by
            .iter()
            .map(|(r, n)| format!("{} {n}", refusal_text(r)))
            .collect();
        parts.push(format!("refused {total}: {}", list.join(", ")));
    }
    if let Some(l) = &p.last_refused {
        let via = l.next_hop.map(|h| format!(" via {h}")).unwrap_or_default();
        parts.push(format!(
            "{} {}{via} ({})",
            if total > 0 { "last" } else { "last refused" },
            l.prefix,
            refusal_text(&l.reason)
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Short words for a refusal reason (the speaker's `Refusal::name`) in a table cell.
pub fn refusal_text(name: &str) -> &str {
    match name {
        "as_loop" => "AS path loop",
        "reflected_loop" => "reflected back to this node",
        "default_route" => "default route",
        "outside_pools" => "outside the pools",
        "policy" => "import policy",
        "bad_next_hop" => "unusable next hop",
        "next_hop_not_node" => "next hop is not a node",
        "not_owner" => "not owned by the next hop's node",
        "overlaps_own_block" => "overlaps this node's block",
        other => other,
    }
}

pub fn routes(cfg: &NodeConfig, out: Output) -> Result<Exit> {
    let s = control::query(&cfg.agent_socket)?;
    if out.json {
        out.print_json(&s.routes)?;
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&["DESTINATION", "ROUTE", "WHY"]);
    for r in &s.routes {
        t.row(vec![
            r.destination.clone(),
            r.target.clone(),
            r.reason.clone(),
        ]);
    }
    print!("{}", t.render());
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::render_status;
    use crate::agent::snapshot::{PeerRow, RefusedRow, RouteRow, Snapshot};

    fn peer(addr: &str, kind: &str, state: &str, err: Option<&str>) -> PeerRow {
        PeerRow {
            address: addr.parse().unwrap(),
            peer_type: kind.into(),
            asn: 64512,
            state: state.into(),
            since: "2026-11-22T12:00:00Z".into(),
            last_error: err.map(String::from),
            prefixes_received: 1,
            prefixes_accepted: 1,
            prefixes_sent: 1,
            max_prefix_exceeded: false,
            prefixes_refused: Default::default(),
            last_refused: None,
        }
    }

    /// A mesh peer whose hijack attempts were refused.
    fn rogue() -> PeerRow {
        let mut p = peer("10.100.2.12", "mesh", "Established", None);
        p.prefixes_received = 5;
        p.prefixes_accepted = 1;
        p.prefixes_refused = [
            ("overlaps_own_block".to_string(), 1),
            ("not_owner".to_string(), 2),
            ("next_hop_not_node".to_string(), 1),
        ]
        .into();
        p.last_refused = Some(RefusedRow {
            prefix: "10.244.59.0/27".into(),
            next_hop: Some("10.100.2.12".parse().unwrap()),
            reason: "overlaps_own_block".into(),
        });
        p
    }

    #[test]
    fn refusals_are_counted_by_reason_with_the_last_one() {
        let p = rogue();
        assert_eq!(
            super::refusals(&p).unwrap(),
            "refused 4: not owned by the next hop's node 2, next hop is not a node 1, overlaps this \
             node's block 1; last 10.244.59.0/27 via 10.100.2.12 (overlaps this node's block)"
        );
        let mut quiet = peer("10.0.0.1", "mesh", "Established", None);
        assert_eq!(super::refusals(&quiet), None);
        // Withdrawn since: the last one is still said, as such.
        quiet.last_refused = Some(RefusedRow {
            prefix: "10.244.0.0/26".into(),
            next_hop: None,
            reason: "something_new".into(),
        });
        assert_eq!(
            super::refusals(&quiet).unwrap(),
            "last refused 10.244.0.0/26 (something_new)"
        );
        let got = render_status(&Snapshot {
            peers: vec![p],
            ..Default::default()
        });
        assert!(
            got.contains("5 received, 1 accepted, 1 sent; refused 4: "),
            "{got}"
        );
    }

    /// `reef status` as a person sees it; regenerate with REEF_UPDATE_GOLDEN=1.
    #[test]
    fn status_table_golden() {
        let s = Snapshot {
            node: "n0".into(),
            address: "10.100.1.10/24".into(),
            ready: true,
            tunnel_mode: "kernel ipip (tunl0)".into(),
            mtu: 1480,
            blocks: vec!["10.244.59.0/26".into()],
            peers: vec![
                peer("10.100.0.1", "global", "Established", None),
                peer("10.100.1.11", "mesh", "Established", None),
                peer(
                    "10.100.2.10",
                    "mesh",
                    "Active",
                    Some("connect: Connection refused"),
                ),
                rogue(),
            ],
            routes: vec![
                RouteRow {
                    destination: "10.244.59.0/26".into(),
                    target: "blackhole".into(),
                    reason: "own block".into(),
                },
                RouteRow {
                    destination: "10.244.59.1/32".into(),
                    target: "dev reef0123456789a scope link".into(),
                    reason: "local pod".into(),
                },
                RouteRow {
                    destination: "10.244.167.192/26".into(),
                    target: "via 10.100.1.11 dev eth0".into(),
                    reason: "direct".into(),
                },
            ],
            routes_desired: 3,
            routes_programmed: 3,
            ..Default::default()
        };
        let got = render_status(&s);
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/status.txt");
        if std::env::var_os("REEF_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &got).unwrap();
        }
        assert_eq!(got, std::fs::read_to_string(&path).unwrap());
    }

    /// The Service routes section; regenerate with REEF_UPDATE_GOLDEN=1.
    #[test]
    fn status_services_golden() {
        use crate::agent::services::{Kind, ServiceAdverts, ServiceRoute, Withheld};
        let route = |p: &str, kind, why: &str| ServiceRoute {
            prefix: p.parse().unwrap(),
            kind,
            why: why.into(),
        };
        let s = Snapshot {
            node: "n0".into(),
            address: "10.100.1.10/24".into(),
            ready: true,
            tunnel_mode: "kernel ipip (tunl0)".into(),
            mtu: 1480,
            services: ServiceAdverts {
                note: None,
                routes: vec![
                    route(
                        "10.96.0.0/12",
                        Kind::ClusterIpRange,
                        "serviceClusterIPs: from every node",
                    ),
                    route(
                        "198.51.100.4/32",
                        Kind::LoadBalancerIp,
                        "LoadBalancer IP of shop/web (Cluster, every node)",
                    ),
                    route(
                        "2001:db8:1b::5/128",
                        Kind::LoadBalancerIp,
                        "LoadBalancer IP of shop/db (Local, ready endpoint here)",
                    ),
                ],
                withheld: vec![Withheld {
                    service: "shop/web".into(),
                    address: "203.0.113.9".parse().unwrap(),
                    why: "external IP outside serviceExternalIPs: ignored".into(),
                }],
                services_seen: 2,
                slices_seen: 3,
            },
            ..Default::default()
        };
        let got = render_status(&s);
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/status-services.txt");
        if std::env::var_os("REEF_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &got).unwrap();
        }
        assert_eq!(got, std::fs::read_to_string(&path).unwrap());
        // JSON carries the same, for scripts.
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["services"]["routes"][1]["kind"], "load-balancer-ip");
        assert_eq!(j["services"]["withheld"][0]["address"], "203.0.113.9");
        // With the embedded datastore: said plainly.
        let e = Snapshot {
            services: ServiceAdverts {
                note: Some("the embedded datastore has no Services: Service advertisement needs the Kubernetes datastore".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(render_status(&e)
            .contains("Service routes: none: the embedded datastore has no Services"));
    }

    #[test]
    fn status_says_why_the_agent_is_not_ready() {
        let s = Snapshot {
            node: "n0".into(),
            ready: false,
            not_ready: vec!["CNI config /host/etc/cni/net.d/10-reef.conflist not installed".into()],
            ..Default::default()
        };
        let got = render_status(&s);
        assert!(got.contains("not ready"), "{got}");
        assert!(
            got.contains(
                "Not ready: CNI config /host/etc/cni/net.d/10-reef.conflist not installed"
            ),
            "{got}"
        );
    }

    #[test]
    fn readiness_waits_for_each_part_and_not_forever_for_a_peer() {
        use crate::agent::snapshot::{readiness, ReadinessInput};
        let mut i = ReadinessInput {
            datastore_read: true,
            reconciler_passes: 1,
            reconciler_errors: 0,
            install_missing: Some(vec![]),
            peers: vec![("10.0.0.1".into(), "Established".into())],
            bgp_grace_over: false,
        };
        assert!(readiness(&i).is_empty());
        i.peers.push(("10.0.0.2".into(), "Active".into()));
        assert_eq!(readiness(&i).len(), 1, "{:?}", readiness(&i));
        assert!(readiness(&i)[0].contains("10.0.0.2 is Active"));
        // A peer that stays down holds readiness only for its first chance.
        i.bgp_grace_over = true;
        assert!(readiness(&i).is_empty());
        i.install_missing = Some(vec!["CNI plugin /b/reef-cni not installed".into()]);
        assert_eq!(readiness(&i), ["CNI plugin /b/reef-cni not installed"]);
        i.install_missing = None;
        i.reconciler_passes = 0;
        i.datastore_read = false;
        assert_eq!(readiness(&i).len(), 2);
    }
}
