//! `reef lab demo`: a lab up, its peers and routes shown, the lab router's routes, and IPv4
//! and IPv6 ping matrices (pod to pod, outside host to pod), then down.

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use super::lifecycle::{up, Teardown};
use super::process::wait;
use super::status::snapshot_of;
use super::{load, LabPod, STATE};
use crate::output::Table;
use crate::Exit;

pub(super) fn demo() -> Result<Exit> {
    let _guard = Teardown;
    up(4, 2, 2)?;
    let st = load()?;
    println!("\n== BGP peers of {} (reef status)", st.nodes[0].name);
    let s0 = snapshot_of(&st.nodes[0])?;
    print!("{}", crate::status_cmd::render_status(&s0));
    // Routes converge within a BGP round after the pods appear; wait for the remote blocks:
    // every other node's IPv4 block (direct or ipip) and the IPv6 blocks of nodes on the same
    // subnet (direct; the others are the router's).
    for n in &st.nodes {
        let same_subnet = st
            .nodes
            .iter()
            .filter(|o| o.subnet == n.subnet && o.name != n.name)
            .count();
        let want_remote = st.nodes.len() - 1 + same_subnet;
        wait(
            &format!("routes on {}", n.name),
            Duration::from_secs(30),
            |last| {
                let s = match snapshot_of(n) {
                    Ok(s) => s,
                    Err(e) => {
                        *last = format!("no status: {e:#}");
                        return None;
                    }
                };
                let remote = s
                    .routes
                    .iter()
                    .filter(|r| matches!(r.reason.as_str(), "direct" | "ipip" | "userspace ipip"))
                    .count();
                let pods = s.routes.iter().filter(|r| r.reason == "local pod").count();
                let want_pods: usize = st
                    .pods
                    .iter()
                    .filter(|p| p.node == n.name)
                    .map(|p| 1 + usize::from(p.address6.is_some()))
                    .sum();
                *last = format!(
                    "{remote} of {want_remote} remote routes, {pods} of {want_pods} pod routes, \
                     {} of {} programmed",
                    s.routes_programmed, s.routes_desired
                );
                (remote >= want_remote
                    && pods == want_pods
                    && s.routes_programmed >= s.routes_desired)
                    .then_some(())
            },
        )?;
    }
    println!("\n== routes of {} (reef routes)", st.nodes[0].name);
    let mut t = Table::new(&["DESTINATION", "ROUTE", "WHY"]);
    for r in snapshot_of(&st.nodes[0])?.routes {
        t.row(vec![r.destination, r.target, r.reason]);
    }
    print!("{}", t.render());
    if st.router {
        // Every node's two blocks (IPv4 and IPv6), resolved through the connected subnets.
        let want = 2 * st.nodes.len();
        let routes = wait(
            "the lab router's routes to every block",
            Duration::from_secs(30),
            |last| {
                let r = match router_routes() {
                    Ok(r) => r,
                    Err(e) => {
                        *last = format!("birdcl: {e:#}");
                        return None;
                    }
                };
                let usable = r
                    .iter()
                    .filter(|r| {
                        r.prefix.starts_with("10.244.") || r.prefix.starts_with("fd00:244:")
                    })
                    .filter(|r| r.kind == "unicast" && r.primary && !r.next_hops.is_empty())
                    .count();
                *last = format!("{usable} of {want} block routes usable");
                (usable >= want).then_some(())
            },
        );
        println!("\n== the BIRD lab router's routes (birdcl show route)");
        let out = Command::new("birdcl")
            .args(["-s", &format!("{STATE}/router/bird.ctl"), "show", "route"])
            .output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        routes?;
    }
    let mut failures = 0;
    let mut pairs = 0;
    for (family, v6) in [("IPv4", false), ("IPv6", true)] {
        println!(
            "\n== {family} ping matrix (ms, one echo each; '-' = no reply{})",
            if st.router {
                ""
            } else {
                ", n/r = needs the lab router"
            }
        );
        let addr = |p: &LabPod| if v6 { p.address6 } else { Some(p.address) };
        let targets: Vec<(&LabPod, IpAddr)> =
            st.pods.iter().filter_map(|p| Some((p, addr(p)?))).collect();
        let mut header = vec!["FROM \\ TO".to_string()];
        header.extend(targets.iter().map(|(_, a)| a.to_string()));
        let hdr: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut m = Table::new(&hdr);
        // (label, namespace, the source pod's node)
        let mut sources: Vec<(String, String, Option<&str>)> = targets
            .iter()
            .map(|(p, a)| (format!("{a} ({})", p.node), p.ns.clone(), Some(&*p.node)))
            .collect();
        // The host behind the router reaches pods only through the router's routes.
        if let (Some(o), true) = (&st.outside, st.router) {
            let from = if v6 {
                o.address6.map(IpAddr::V6)
            } else {
                Some(IpAddr::V4(o.address))
            };
            if let Some(from) = from {
                sources.push((format!("{from} (outside)"), o.ns.clone(), None));
            }
        }
        let subnet = |node: &str| st.nodes.iter().find(|n| n.name == node).map(|n| n.subnet);
        for (label, ns, node) in &sources {
            let mut row = vec![label.clone()];
            for (b, dst) in &targets {
                if b.ns == *ns {
                    row.push("·".into());
                    continue;
                }
                // Without a router nothing carries IPv6 between subnets (IP-in-IP is IPv4).
                if v6 && !st.router && node.and_then(subnet) != subnet(&b.node) {
                    row.push("n/r".into());
                    continue;
                }
                pairs += 1;
                match ping(ns, *dst) {
                    Some(ms) => row.push(format!("{ms:.2}")),
                    None => {
                        failures += 1;
                        row.push("-".into());
                    }
                }
            }
            m.row(row);
        }
        print!("{}", m.render());
    }
    println!(
        "\n{} of {pairs} pairs reachable (pod to pod and outside to pod, IPv4 and IPv6); tearing the lab down",
        pairs - failures
    );
    Ok(if failures == 0 {
        Exit::Ok
    } else {
        Exit::Problems
    })
}

/// The lab router's `show route`, parsed.
fn router_routes() -> Result<Vec<reef_integration::bird::BirdRoute>> {
    let out = Command::new("birdcl")
        .args(["-s", &format!("{STATE}/router/bird.ctl"), "show", "route"])
        .output()?;
    Ok(reef_integration::bird::parse_routes(
        &String::from_utf8_lossy(&out.stdout),
    ))
}

fn ping(ns: &str, dst: IpAddr) -> Option<f64> {
    // One retry: the first packet of a fresh pair may wait for ARP / neighbour resolution.
    for _ in 0..2 {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c1", "-W2", &dst.to_string()])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(t) = text
            .split("time=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        {
            return t.parse().ok();
        }
    }
    None
}
