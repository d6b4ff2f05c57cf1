//! Interop: the real `reef-bgp` binary against BIRD 2 and FRR 8 in lab namespaces (and a raw
//! test peer on loopback for malformed UPDATEs). Run as root; see integration/README.md.
//!
//! Each test builds its own topology (nodes on two subnets behind a router namespace); every
//! namespace, daemon and file is removed when the guards drop, also on failure.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ipnetwork::Ipv4Network;
use reef_bgp::attrs::{AsSegment, NextHop, PathAttributes};
use reef_bgp::packet::{
    frame, AfiSafi, Capability, EncodeCxt, Families, Message, Open, PeerKind, Update,
};
use reef_bgp::Asn;
use reef_integration::bird::{Bird, BirdConfig, BirdPeer};
use reef_integration::cmd::Process;
use reef_integration::frr::Frr;
use reef_integration::{wait_for, Netns, Topology};
use serde_json::Value;

const AS: u32 = 64512;

/// A running `reef-bgp`: config and output in a temp dir; killed on drop.
struct Reef {
    proc: Option<Process>,
    dir: tempfile::TempDir,
}

fn reef_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_reef-bgp"))
}

impl Reef {
    /// Starts reef-bgp with `config` (YAML) inside `ns` (or in this namespace with `None`).
    fn start(ns: Option<&Netns>, config: &str, extra: &[&str]) -> Reef {
        let dir = tempfile::Builder::new()
            .prefix("reeft-reef-bgp-")
            .tempdir()
            .unwrap();
        Self::start_in(ns, config, extra, dir)
    }

    fn start_in(ns: Option<&Netns>, config: &str, extra: &[&str], dir: tempfile::TempDir) -> Reef {
        let conf = dir.path().join("speaker.yaml");
        std::fs::write(&conf, config).unwrap();
        let mut cmd = match ns {
            Some(ns) => ns.command(reef_bin()),
            None => std::process::Command::new(reef_bin()),
        };
        cmd.arg("--config").arg(&conf).args(extra);
        cmd.env("RUST_LOG", "reef_bgp=debug");
        let out = std::fs::File::create(dir.path().join("out.jsonl")).unwrap();
        let err = std::fs::File::create(dir.path().join("err.log")).unwrap();
        cmd.stdout(out).stderr(err);
        let proc = Process::spawn("reef-bgp", cmd).unwrap();
        let r = Reef {
            proc: Some(proc),
            dir,
        };
        r.wait_event("ready", 10, |e| e["event"] == "ready");
        r
    }

    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("out.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("err.log")).unwrap_or_default()
    }

    fn wait_event(&self, what: &str, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        let r = wait_for(what, Duration::from_secs(secs), |_| {
            self.events().into_iter().find(|e| f(e))
        });
        r.unwrap_or_else(|e| {
            panic!(
                "{e}\nreef-bgp stdout: {:?}\nreef-bgp log:\n{}",
                self.events(),
                self.log()
            )
        })
    }

    /// The last route event of `prefix`: its next hops (empty = withdrawn).
    fn route(&self, prefix: &str) -> Option<Vec<String>> {
        self.events()
            .into_iter()
            .rfind(|e| e["event"] == "route" && e["prefix"] == prefix)
            .map(|e| {
                e["next_hops"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            })
    }

    fn wait_route(&self, prefix: &str, via: &str, secs: u64) {
        let r = wait_for(
            &format!("reef route {prefix} via {via}"),
            Duration::from_secs(secs),
            |_| (self.route(prefix)? == vec![via.to_string()]).then_some(()),
        );
        r.unwrap_or_else(|e| {
            panic!(
                "{e}\nreef-bgp stdout: {:?}\nreef-bgp log:\n{}",
                self.events(),
                self.log()
            )
        });
    }

    fn wait_no_route(&self, prefix: &str, secs: u64) {
        let r = wait_for(
            &format!("reef route {prefix} withdrawn"),
            Duration::from_secs(secs),
            |_| self.route(prefix)?.is_empty().then_some(()),
        );
        r.unwrap_or_else(|e| {
            panic!(
                "{e}\nreef-bgp stdout: {:?}\nreef-bgp log:\n{}",
                self.events(),
                self.log()
            )
        });
    }

    fn wait_peer(&self, addr: &str, state: &str, secs: u64) {
        self.wait_event(&format!("peer {addr} {state}"), secs, |e| {
            e["event"] == "peer" && e["address"] == addr && e["state"] == state
        });
    }

    /// Rewrites the config and reloads it (SIGHUP).
    fn reload(&self, config: &str) {
        std::fs::write(self.dir.path().join("speaker.yaml"), config).unwrap();
        let n = self
            .events()
            .iter()
            .filter(|e| e["event"] == "reloaded")
            .count();
        self.proc.as_ref().unwrap().signal(libc::SIGHUP).unwrap();
        self.wait_event("reloaded", 10, |_| {
            self.events()
                .iter()
                .filter(|e| e["event"] == "reloaded")
                .count()
                > n
        });
    }

    /// SIGTERM (graceful restart semantics); returns the temp dir for a restart.
    fn stop(mut self) -> tempfile::TempDir {
        let p = self.proc.take().unwrap();
        let status = p.stop(Duration::from_secs(10));
        assert!(
            status.contains("exit status: 0"),
            "reef-bgp exit: {status}\n{}",
            self.log()
        );
        assert!(self.events().iter().any(|e| e["event"] == "stopped"));
        let dir = tempfile::Builder::new()
            .prefix("reeft-reef-bgp-")
            .tempdir()
            .unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

fn bird_peer(name: &str, local_as: u32, neighbor: IpAddr, neighbor_as: u32) -> BirdPeer {
    let mut p = BirdPeer::new(name, local_as, neighbor, neighbor_as);
    p.multihop = true;
    p
}

/// The BGP next hops BIRD has for `prefix` (the `BGP.next_hop` attribute: `show route`'s
/// `via` is the resolved gateway for multihop iBGP).
fn bird_routes(bird: &Bird, prefix: &str) -> Vec<String> {
    let out = bird
        .cli(&format!("show route {prefix} all"))
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("BGP.next_hop:"))
        .filter_map(|v| v.split_whitespace().next().map(String::from))
        .collect()
}

fn wait_bird_route(bird: &Bird, prefix: &str, via: &str, secs: u64) {
    wait_for(
        &format!("BIRD route {prefix} via {via}"),
        Duration::from_secs(secs),
        |last| {
            let r = bird_routes(bird, prefix);
            *last = format!("{r:?}");
            r.iter().any(|g| g == via).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nBIRD log:\n{}", bird.log()));
}

fn wait_bird_no_route(bird: &Bird, prefix: &str, secs: u64) {
    wait_for(
        &format!("BIRD route {prefix} gone"),
        Duration::from_secs(secs),
        |last| {
            let r = bird_routes(bird, prefix);
            *last = format!("{r:?}");
            r.is_empty().then_some(())
        },
    )
    .unwrap();
}

/// A reef-bgp config for node `addr` with these peers (YAML list items) and prefixes.
fn reef_config(
    asn: u32,
    addr: Ipv4Addr,
    extra: &str,
    peers: &[String],
    originate: &[&str],
) -> String {
    let mut s = format!(
        "router_id: {addr}\nas: {asn}\nlisten_address: \"::\"\nhold_time: 9\nconnect_retry: 1\n{extra}originate: [{}]\npeers:\n",
        originate.join(", ")
    );
    for p in peers {
        s.push_str(p);
    }
    s
}

fn peer_yaml(addr: impl std::fmt::Display, asn: u32, extra: &str) -> String {
    format!("  - address: {addr}\n    as: {asn}\n    multihop: true\n{extra}")
}

#[test]
fn ibgp_across_the_router_with_bird_ipv4_and_ipv6_both_ways() {
    let topo = Topology::builder()
        .nodes(2)
        .subnets(2)
        .ipv6(true)
        .build()
        .unwrap();
    let (n0, n1) = (&topo.nodes[0], &topo.nodes[1]);
    let (a6, b6) = (n0.addr6.unwrap(), n1.addr6.unwrap());
    let mut bc = BirdConfig::new(n1.addr);
    bc.static_routes = vec!["10.244.2.0/26".into(), "fd00:244:2::/122".into()];
    bc.peers
        .push(bird_peer("reef4", AS, IpAddr::V4(n0.addr), AS));
    let mut p6 = bird_peer("reef6", AS, IpAddr::V6(a6), AS);
    p6.ipv4 = None;
    p6.ipv6 = Some((
        "all".into(),
        "where source ~ [ RTS_STATIC, RTS_BGP ]".into(),
    ));
    bc.peers.push(p6);
    let bird = Bird::start(&n1.ns, &bc).unwrap();
    let cfg = reef_config(
        AS,
        n0.addr,
        "",
        &[peer_yaml(n1.addr, AS, ""), peer_yaml(b6, AS, "")],
        &["10.244.1.0/26", "fd00:244:1::/122"],
    );
    let reef = Reef::start(Some(&n0.ns), &cfg, &[]);
    bird.wait_established("reef4", Duration::from_secs(20))
        .unwrap();
    bird.wait_established("reef6", Duration::from_secs(20))
        .unwrap();
    reef.wait_peer(&n1.addr.to_string(), "Established", 10);
    // reef → BIRD, both families, reef's session address as next hop.
    wait_bird_route(&bird, "10.244.1.0/26", &n0.addr.to_string(), 15);
    wait_bird_route(&bird, "fd00:244:1::/122", &a6.to_string(), 15);
    // BIRD → reef.
    reef.wait_route("10.244.2.0/26", &n1.addr.to_string(), 15);
    reef.wait_route("fd00:244:2::/122", &b6.to_string(), 15);
    // Withdraw, reef → BIRD (config reload) ...
    let cfg2 = reef_config(
        AS,
        n0.addr,
        "",
        &[peer_yaml(n1.addr, AS, ""), peer_yaml(b6, AS, "")],
        &["fd00:244:1::/122"],
    );
    reef.reload(&cfg2);
    wait_bird_no_route(&bird, "10.244.1.0/26", 10);
    assert_eq!(bird_routes(&bird, "fd00:244:1::/122"), vec![a6.to_string()]);
    // ... and BIRD → reef.
    bird.cli("disable static_ipv6").unwrap();
    reef.wait_no_route("fd00:244:2::/122", 10);
    assert_eq!(reef.route("10.244.2.0/26"), Some(vec![n1.addr.to_string()]));
}

#[test]
fn ebgp_with_frr_advertise_and_withdraw() {
    let topo = Topology::builder().nodes(2).subnets(2).build().unwrap();
    let (n0, n1) = (&topo.nodes[0], &topo.nodes[1]);
    let frr_conf = format!(
        "frr defaults traditional\n\
         router bgp 65002\n bgp router-id {id}\n no bgp ebgp-requires-policy\n\
         no bgp network import-check\n timers bgp 3 9\n\
         neighbor {peer} remote-as 65001\n neighbor {peer} ebgp-multihop 255\n neighbor {peer} timers connect 2\n\
         address-family ipv4 unicast\n  network 10.244.2.0/26\n exit-address-family\n",
        id = n1.addr,
        peer = n0.addr
    );
    let frr = Frr::start(&n1.ns, &frr_conf).unwrap();
    let cfg = reef_config(
        65001,
        n0.addr,
        "",
        &[peer_yaml(n1.addr, 65002, "")],
        &["10.244.1.0/26"],
    );
    let reef = Reef::start(Some(&n0.ns), &cfg, &[]);
    frr.wait_established(IpAddr::V4(n0.addr), Duration::from_secs(20))
        .unwrap();
    reef.wait_route("10.244.2.0/26", &n1.addr.to_string(), 15);
    let r = wait_for("10.244.1.0/26 in FRR", Duration::from_secs(10), |last| {
        let routes = frr.routes("ipv4").ok()?;
        *last = format!("{routes:?}");
        routes.into_iter().find(|r| r.prefix == "10.244.1.0/26")
    })
    .unwrap();
    assert_eq!(r.next_hops, vec![n0.addr.to_string()]);
    // FRR withdraws its block.
    frr.vtysh("configure terminal\nrouter bgp 65002\naddress-family ipv4 unicast\nno network 10.244.2.0/26")
        .unwrap();
    reef.wait_no_route("10.244.2.0/26", 10);
    // reef withdraws its block.
    reef.reload(&reef_config(
        65001,
        n0.addr,
        "",
        &[peer_yaml(n1.addr, 65002, "")],
        &[],
    ));
    wait_for(
        "10.244.1.0/26 gone from FRR",
        Duration::from_secs(10),
        |last| {
            let routes = frr.routes("ipv4").ok()?;
            *last = format!("{routes:?}");
            (!routes.iter().any(|r| r.prefix == "10.244.1.0/26")).then_some(())
        },
    )
    .unwrap();
}

/// FRR's bgpd.conf for an eBGP speaker (AS 65002 + `index`) peering with reef (AS 65001) at
/// `reef_addr`; `afi` is `ipv4` or `ipv6`, `extra` goes into the neighbour section.
fn frr_ebgp_conf(
    router_id: Ipv4Addr,
    reef_addr: IpAddr,
    afi: &str,
    network: &str,
    extra: &str,
) -> String {
    format!(
        "frr defaults traditional\n\
         router bgp 65002\n bgp router-id {router_id}\n no bgp ebgp-requires-policy\n\
         no bgp network import-check\n no bgp default ipv4-unicast\n timers bgp 3 9\n\
         neighbor {reef_addr} remote-as 65001\n neighbor {reef_addr} ebgp-multihop 255\n\
         neighbor {reef_addr} timers connect 2\n{extra}\
         address-family {afi} unicast\n  neighbor {reef_addr} activate\n  network {network}\n exit-address-family\n"
    )
}

/// `routes` of FRR for `afi` with prefix `prefix`: the next hops of its paths.
fn frr_next_hops(frr: &Frr, afi: &str, prefix: &str) -> Option<Vec<String>> {
    let routes = frr.routes(afi).ok()?;
    let hops: Vec<String> = routes
        .into_iter()
        .filter(|r| r.prefix == prefix)
        .flat_map(|r| r.next_hops)
        .collect();
    (!hops.is_empty()).then_some(hops)
}

#[test]
fn ebgp_with_frr_over_ipv6_advertise_and_withdraw_both_ways() {
    let topo = Topology::builder()
        .nodes(2)
        .subnets(2)
        .ipv6(true)
        .build()
        .unwrap();
    let (n0, n1) = (&topo.nodes[0], &topo.nodes[1]);
    let (a6, b6) = (n0.addr6.unwrap(), n1.addr6.unwrap());
    let frr = Frr::start(
        &n1.ns,
        &frr_ebgp_conf(n1.addr, IpAddr::V6(a6), "ipv6", "fd00:244:2::/122", ""),
    )
    .unwrap();
    let cfg = |originate: &[&str]| {
        reef_config(65001, n0.addr, "", &[peer_yaml(b6, 65002, "")], originate)
    };
    let reef = Reef::start(Some(&n0.ns), &cfg(&["fd00:244:1::/122"]), &[]);
    frr.wait_established(IpAddr::V6(a6), Duration::from_secs(20))
        .unwrap();
    // FRR → reef, FRR's global address as next hop.
    reef.wait_route("fd00:244:2::/122", &b6.to_string(), 15);
    // reef → FRR, reef's session address as next hop.
    let hops = wait_for("fd00:244:1::/122 in FRR", Duration::from_secs(10), |last| {
        let h = frr_next_hops(&frr, "ipv6", "fd00:244:1::/122");
        *last = format!("{h:?}");
        h
    })
    .unwrap();
    assert!(hops.contains(&a6.to_string()), "{hops:?}");
    // Withdraw both ways.
    frr.vtysh(
        "configure terminal\nrouter bgp 65002\naddress-family ipv6 unicast\nno network fd00:244:2::/122",
    )
    .unwrap();
    reef.wait_no_route("fd00:244:2::/122", 10);
    reef.reload(&cfg(&[]));
    wait_for(
        "fd00:244:1::/122 gone from FRR",
        Duration::from_secs(10),
        |last| {
            let h = frr_next_hops(&frr, "ipv6", "fd00:244:1::/122");
            *last = format!("{h:?}");
            h.is_none().then_some(())
        },
    )
    .unwrap();
}

#[test]
fn frr_keeps_routes_after_a_notification_with_the_n_bit_and_drops_them_on_hard_reset() {
    // RFC 8538 with FRR (graceful restart on): reef changes the session's password, which
    // sends Cease / Other Configuration Change and keeps the session down (the keys differ).
    // With the N bit that is a graceful restart: FRR keeps reef's route (stale), reef keeps
    // FRR's. Removing the peer sends a Hard Reset: FRR drops the route at once.
    let topo = Topology::builder().nodes(2).subnets(2).build().unwrap();
    let (n0, n1) = (&topo.nodes[0], &topo.nodes[1]);
    let gr = " bgp graceful-restart\n bgp graceful-restart restart-time 60\n";
    let frr = Frr::start(
        &n1.ns,
        &frr_ebgp_conf(n1.addr, IpAddr::V4(n0.addr), "ipv4", "10.244.2.0/26", gr),
    )
    .unwrap();
    let cfg = |peer_extra: &str, with_peer: bool| {
        let peers = if with_peer {
            vec![peer_yaml(n1.addr, 65002, peer_extra)]
        } else {
            vec![]
        };
        reef_config(
            65001,
            n0.addr,
            "graceful_restart: { enabled: true, restart_time: 60 }\n",
            &peers,
            &["10.244.1.0/26"],
        )
    };
    let reef = Reef::start(Some(&n0.ns), &cfg("", true), &[]);
    frr.wait_established(IpAddr::V4(n0.addr), Duration::from_secs(20))
        .unwrap();
    reef.wait_route("10.244.2.0/26", &n1.addr.to_string(), 15);
    let in_frr = || frr_next_hops(&frr, "ipv4", "10.244.1.0/26");
    wait_for("10.244.1.0/26 in FRR", Duration::from_secs(10), |_| {
        in_frr()
    })
    .unwrap();
    let n_bit = frr
        .vtysh(&format!("show bgp neighbors {} json", n0.addr))
        .unwrap();
    reef.reload(&cfg("    password: not-what-frr-has\n", true));
    wait_for("the session down at FRR", Duration::from_secs(10), |last| {
        let p = frr.peers().ok()?;
        *last = format!("{p:?}");
        p.iter().all(|p| p.state != "Established").then_some(())
    })
    .unwrap();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        assert_eq!(
            in_frr(),
            Some(vec![n0.addr.to_string()]),
            "FRR dropped reef's route after a non-Hard-Reset NOTIFICATION; FRR's view: {n_bit}"
        );
        assert_eq!(reef.route("10.244.2.0/26"), Some(vec![n1.addr.to_string()]));
        std::thread::sleep(Duration::from_millis(300));
    }
    let table = frr.vtysh("show bgp ipv4 unicast 10.244.1.0/26").unwrap();
    assert!(table.to_lowercase().contains("stale"), "{table}");
    // Back with the right (no) password, then the peer removed: a Hard Reset.
    reef.reload(&cfg("", true));
    frr.wait_established(IpAddr::V4(n0.addr), Duration::from_secs(20))
        .unwrap();
    reef.reload(&cfg("", false));
    wait_for(
        "10.244.1.0/26 gone from FRR",
        Duration::from_secs(3),
        |last| {
            let h = in_frr();
            *last = format!("{h:?}");
            h.is_none().then_some(())
        },
    )
    .unwrap();
}

#[test]
fn md5_with_frr_right_password_peers_and_wrong_one_does_not() {
    let topo = Topology::builder().nodes(3).subnets(2).build().unwrap();
    let (n0, n1, n2) = (&topo.nodes[0], &topo.nodes[1], &topo.nodes[2]);
    let mut frrs = Vec::new();
    for (n, pw) in [(n1, "reef-md5-ok"), (n2, "not-the-password")] {
        let net = format!("10.244.{}.0/26", n.index + 1);
        let extra = format!(" neighbor {} password {pw}\n", n0.addr);
        frrs.push(
            Frr::start(
                &n.ns,
                &frr_ebgp_conf(n.addr, IpAddr::V4(n0.addr), "ipv4", &net, &extra),
            )
            .unwrap(),
        );
    }
    let pw = "    password: reef-md5-ok\n";
    let cfg = reef_config(
        65001,
        n0.addr,
        "",
        &[peer_yaml(n1.addr, 65002, pw), peer_yaml(n2.addr, 65002, pw)],
        &["10.244.1.0/26"],
    );
    let reef = Reef::start(Some(&n0.ns), &cfg, &[]);
    frrs[0]
        .wait_established(IpAddr::V4(n0.addr), Duration::from_secs(20))
        .unwrap();
    reef.wait_route("10.244.2.0/26", &n1.addr.to_string(), 15);
    // The wrong key never gets a session: the kernels drop the badly signed segments.
    std::thread::sleep(Duration::from_secs(6));
    let peers = frrs[1].peers().unwrap();
    assert!(
        !peers.iter().any(|p| p.state == "Established"),
        "wrong password got a session: {peers:?}"
    );
    assert!(reef.route("10.244.3.0/26").is_none());
    assert!(!reef.events().iter().any(|e| e["event"] == "peer"
        && e["address"] == n2.addr.to_string()
        && e["state"] == "Established"));
    assert!(frr_next_hops(&frrs[1], "ipv4", "10.244.1.0/26").is_none());
}

#[test]
fn gtsm_with_bird_right_hop_count_peers_and_too_far_does_not() {
    // n0 (reef) and n1 share a subnet: BIRD on n1 is one hop away. n2 is behind the router:
    // two hops, its packets arrive with TTL 254. Both BIRDs use `ttl security on`.
    let topo = Topology::builder().nodes(3).subnets(2).build().unwrap();
    let (n0, n1, n2) = (&topo.nodes[0], &topo.nodes[1], &topo.nodes[2]);
    assert_eq!((n0.subnet, n1.subnet), (0, 0));
    assert_eq!(n2.subnet, 1);
    let mut birds = Vec::new();
    for (n, asn) in [(n1, 65002), (n2, 65003)] {
        let mut bc = BirdConfig::new(n.addr);
        bc.static_routes = vec![format!("10.244.{}.0/26", n.index + 1)];
        let mut p = BirdPeer::new("reef", asn, IpAddr::V4(n0.addr), 65001);
        // Direct for the neighbour on the subnet; the other one is two hops away.
        p.multihop = n.subnet != n0.subnet;
        p.extra = "  ttl security on;\n".into();
        bc.peers.push(p);
        birds.push(Bird::start(&n.ns, &bc).unwrap());
    }
    let cfg = |far_hops: u8| {
        reef_config(
            65001,
            n0.addr,
            "",
            &[
                peer_yaml(n1.addr, 65002, "    ttl_security: 1\n"),
                peer_yaml(n2.addr, 65003, &format!("    ttl_security: {far_hops}\n")),
            ],
            &[],
        )
    };
    // Both configured as one hop away: n1 is, n2 is not.
    let reef = Reef::start(Some(&n0.ns), &cfg(1), &[]);
    reef.wait_peer(&n1.addr.to_string(), "Established", 20);
    reef.wait_route("10.244.2.0/26", &n1.addr.to_string(), 15);
    std::thread::sleep(Duration::from_secs(6));
    let far_up = |r: &Reef| {
        r.events().iter().any(|e| {
            e["event"] == "peer"
                && e["address"] == n2.addr.to_string()
                && e["state"] == "Established"
        })
    };
    assert!(
        !far_up(&reef),
        "a peer two hops away passed GTSM for one hop"
    );
    assert!(reef.route("10.244.3.0/26").is_none());
    // With the right hop count (2) the session comes up.
    reef.reload(&cfg(2));
    reef.wait_peer(&n2.addr.to_string(), "Established", 20);
    reef.wait_route("10.244.3.0/26", &n2.addr.to_string(), 15);
}

#[test]
fn md5_right_password_peers_and_wrong_one_does_not() {
    let topo = Topology::builder().nodes(3).subnets(2).build().unwrap();
    let (n0, n1, n2) = (&topo.nodes[0], &topo.nodes[1], &topo.nodes[2]);
    let mut birds = Vec::new();
    for (n, pw) in [(n1, "reef-md5-ok"), (n2, "not-the-password")] {
        let mut bc = BirdConfig::new(n.addr);
        bc.static_routes = vec![format!("10.244.{}.0/26", n.index + 1)];
        let mut p = bird_peer("reef", AS, IpAddr::V4(n0.addr), AS);
        p.password = Some(pw.into());
        bc.peers.push(p);
        birds.push(Bird::start(&n.ns, &bc).unwrap());
    }
    let pw = "    password: reef-md5-ok\n";
    let cfg = reef_config(
        AS,
        n0.addr,
        "",
        &[peer_yaml(n1.addr, AS, pw), peer_yaml(n2.addr, AS, pw)],
        &[],
    );
    let reef = Reef::start(Some(&n0.ns), &cfg, &[]);
    birds[0]
        .wait_established("reef", Duration::from_secs(20))
        .unwrap();
    reef.wait_route("10.244.2.0/26", &n1.addr.to_string(), 15);
    // The wrong key never gets a session (the kernel drops the unsigned/badly signed SYNs).
    std::thread::sleep(Duration::from_secs(6));
    let st = birds[1].bgp_state("reef").unwrap().unwrap_or_default();
    assert!(
        !st.starts_with("Established"),
        "wrong password got a session: {st}"
    );
    assert!(reef.route("10.244.3.0/26").is_none());
    assert!(!reef.events().iter().any(|e| e["event"] == "peer"
        && e["address"] == n2.addr.to_string()
        && e["state"] == "Established"));
}

#[test]
fn graceful_restart_of_reef_bird_keeps_routes_until_end_of_rib() {
    let topo = Topology::builder().nodes(2).subnets(2).build().unwrap();
    let (n0, n1) = (&topo.nodes[0], &topo.nodes[1]);
    let mut bc = BirdConfig::new(n1.addr);
    let mut p = bird_peer("reef", AS, IpAddr::V4(n0.addr), AS);
    p.extra = "  graceful restart on;\n".into();
    bc.peers.push(p);
    let bird = Bird::start(&n1.ns, &bc).unwrap();
    let gr = "graceful_restart: { enabled: true, restart_time: 60 }\n";
    let cfg = reef_config(
        AS,
        n0.addr,
        gr,
        &[peer_yaml(n1.addr, AS, "")],
        &["10.244.1.0/26", "10.244.1.64/26"],
    );
    let reef = Reef::start(Some(&n0.ns), &cfg, &[]);
    bird.wait_established("reef", Duration::from_secs(20))
        .unwrap();
    wait_bird_route(&bird, "10.244.1.0/26", &n0.addr.to_string(), 15);
    wait_bird_route(&bird, "10.244.1.64/26", &n0.addr.to_string(), 15);
    // SIGTERM: sessions close without a NOTIFICATION; BIRD keeps the routes (stale) for
    // longer than its hold time (9 s) while reef is away.
    let dir = reef.stop();
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        assert_eq!(
            bird_routes(&bird, "10.244.1.0/26"),
            vec![n0.addr.to_string()],
            "BIRD dropped the route during the restart"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let st = bird.bgp_state("reef").unwrap().unwrap_or_default();
    assert!(
        !st.starts_with("Established"),
        "session should be down while reef is away: {st}"
    );
    // reef comes back (R bit), now originating only one of the two: after its End-of-RIB
    // BIRD keeps that one and drops the stale other.
    let cfg2 = reef_config(
        AS,
        n0.addr,
        gr,
        &[peer_yaml(n1.addr, AS, "")],
        &["10.244.1.0/26"],
    );
    let reef = Reef::start_in(Some(&n0.ns), &cfg2, &["--restarting"], dir);
    bird.wait_established("reef", Duration::from_secs(20))
        .unwrap();
    wait_bird_no_route(&bird, "10.244.1.64/26", 15);
    assert_eq!(
        bird_routes(&bird, "10.244.1.0/26"),
        vec![n0.addr.to_string()]
    );
    drop(reef);
}

#[test]
fn restarting_reef_defers_selection_until_end_of_rib_or_the_deferral_timer() {
    // reef (n0) peers with BIRD (n1, graceful restart helper) and n2, where nothing runs.
    // After its restart reef learns BIRD's routes and BIRD's End-of-RIB at once, but n2
    // never comes up: RFC 4724 §4.1 has reef wait for the selection deferral timer (10 s)
    // before it chooses and advertises. Meanwhile BIRD keeps reef's old routes (stale: no
    // End-of-RIB from reef yet) and reef hands no best path to route programming.
    let topo = Topology::builder().nodes(3).subnets(2).build().unwrap();
    let (n0, n1, n2) = (&topo.nodes[0], &topo.nodes[1], &topo.nodes[2]);
    let mut bc = BirdConfig::new(n1.addr);
    bc.static_routes = vec!["10.244.2.0/26".into()];
    let mut p = bird_peer("reef", AS, IpAddr::V4(n0.addr), AS);
    p.extra = "  graceful restart on;\n".into();
    bc.peers.push(p);
    let bird = Bird::start(&n1.ns, &bc).unwrap();
    let gr = "graceful_restart: { enabled: true, restart_time: 60, selection_deferral: 10 }\n";
    let peers = [peer_yaml(n1.addr, AS, ""), peer_yaml(n2.addr, AS, "")];
    let cfg = reef_config(
        AS,
        n0.addr,
        gr,
        &peers,
        &["10.244.1.0/26", "10.244.1.64/26"],
    );
    let reef = Reef::start(Some(&n0.ns), &cfg, &[]);
    wait_bird_route(&bird, "10.244.1.64/26", &n0.addr.to_string(), 20);
    reef.wait_route("10.244.2.0/26", &n1.addr.to_string(), 15);
    let dir = reef.stop();
    // Back with the R bit, now without 10.244.1.64/26.
    let cfg2 = reef_config(AS, n0.addr, gr, &peers, &["10.244.1.0/26"]);
    let started = Instant::now();
    let reef = Reef::start_in(Some(&n0.ns), &cfg2, &["--restarting"], dir);
    bird.wait_established("reef", Duration::from_secs(20))
        .unwrap();
    let up = started.elapsed();
    assert!(up < Duration::from_secs(6), "session took {up:?}");
    while started.elapsed() < Duration::from_secs(8) {
        assert_eq!(
            bird_routes(&bird, "10.244.1.64/26"),
            vec![n0.addr.to_string()],
            "BIRD dropped reef's stale route: reef sent End-of-RIB before the deferral ended"
        );
        assert_eq!(
            reef.route("10.244.2.0/26"),
            None,
            "reef chose a best path during the deferral"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The timer ends it: best paths out, reef's table and End-of-RIB to BIRD.
    reef.wait_route("10.244.2.0/26", &n1.addr.to_string(), 10);
    // BIRD's End-of-RIB (held back during the deferral) is reported after the best paths.
    let ev = reef.events();
    let pos = |f: &dyn Fn(&Value) -> bool| ev.iter().position(f);
    let route = pos(&|e| e["event"] == "route" && e["prefix"] == "10.244.2.0/26");
    let eor = pos(&|e| e["event"] == "end-of-rib" && e["address"] == n1.addr.to_string());
    assert!(
        matches!((route, eor), (Some(r), Some(e)) if r < e),
        "route then end-of-rib: {ev:?}"
    );
    wait_bird_no_route(&bird, "10.244.1.64/26", 10);
    assert!(started.elapsed() >= Duration::from_secs(9));
    assert_eq!(
        bird_routes(&bird, "10.244.1.0/26"),
        vec![n0.addr.to_string()]
    );
}

#[test]
fn reef_reflects_routes_between_bird_clients() {
    let topo = Topology::builder().nodes(3).subnets(2).build().unwrap();
    let n0 = &topo.nodes[0];
    let mut birds = Vec::new();
    let mut peers = Vec::new();
    for n in &topo.nodes[1..] {
        let mut bc = BirdConfig::new(n.addr);
        bc.static_routes = vec![format!("10.244.{}.0/26", n.index + 1)];
        bc.peers
            .push(bird_peer("reefrr", AS, IpAddr::V4(n0.addr), AS));
        birds.push(Bird::start(&n.ns, &bc).unwrap());
        peers.push(peer_yaml(n.addr, AS, "    rr_client: true\n"));
    }
    let reef = Reef::start(
        Some(&n0.ns),
        &reef_config(AS, n0.addr, "", &peers, &[]),
        &[],
    );
    for b in &birds {
        b.wait_established("reefrr", Duration::from_secs(20))
            .unwrap();
    }
    let (n1, n2) = (&topo.nodes[1], &topo.nodes[2]);
    // Each client learns the other's block with the originating client as next hop.
    wait_bird_route(&birds[1], "10.244.2.0/26", &n1.addr.to_string(), 15);
    wait_bird_route(&birds[0], "10.244.3.0/26", &n2.addr.to_string(), 15);
    // RFC 4456 attributes are there.
    let all = birds[1].cli("show route 10.244.2.0/26 all").unwrap();
    assert!(
        all.contains("BGP.originator_id") && all.contains("BGP.cluster_list"),
        "{all}"
    );
    reef.wait_route("10.244.2.0/26", &n1.addr.to_string(), 5);
}

#[test]
fn killed_peer_routes_go_at_once_and_frozen_peer_routes_after_the_hold_time() {
    let topo = Topology::builder().nodes(3).subnets(2).build().unwrap();
    let n0 = &topo.nodes[0];
    let mut birds = Vec::new();
    let mut peers = Vec::new();
    for n in &topo.nodes[1..] {
        let mut bc = BirdConfig::new(n.addr);
        bc.static_routes = vec![format!("10.244.{}.0/26", n.index + 1)];
        let mut p = bird_peer("reef", AS, IpAddr::V4(n0.addr), AS);
        // Without graceful restart: with it, reef (as helper) would rightly keep the routes
        // of a vanished peer for its restart time (the loopback tests cover that).
        p.extra = "  graceful restart off;\n".into();
        bc.peers.push(p);
        birds.push(Bird::start(&n.ns, &bc).unwrap());
        peers.push(peer_yaml(n.addr, AS, ""));
    }
    let reef = Reef::start(
        Some(&n0.ns),
        &reef_config(AS, n0.addr, "", &peers, &[]),
        &[],
    );
    let (n1, n2) = (&topo.nodes[1], &topo.nodes[2]);
    reef.wait_route("10.244.2.0/26", &n1.addr.to_string(), 20);
    reef.wait_route("10.244.3.0/26", &n2.addr.to_string(), 20);
    // SIGKILL: the kernel closes BIRD's socket; reef sees the connection go and withdraws
    // at once, well within the hold time.
    let pids: Vec<u32> = n1.ns.pids();
    for p in &pids {
        let _ = std::process::Command::new("kill")
            .args(["-9", &p.to_string()])
            .status();
    }
    let t = Instant::now();
    reef.wait_no_route("10.244.2.0/26", 9);
    assert!(t.elapsed() < Duration::from_secs(9));
    // SIGSTOP: the connection stays open but silent; only the hold timer (9 s) notices.
    let t = Instant::now();
    for p in n2.ns.pids() {
        let _ = std::process::Command::new("kill")
            .args(["-STOP", &p.to_string()])
            .status();
    }
    reef.wait_no_route("10.244.3.0/26", 20);
    let took = t.elapsed();
    for p in n2.ns.pids() {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &p.to_string()])
            .status();
    }
    assert!(
        took >= Duration::from_secs(5),
        "withdrawn after {took:?}: before the hold time could expire"
    );
    assert!(reef.events().iter().any(|e| e["event"] == "peer"
        && e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("hold timer expired"))));
}

// ---- a raw test peer on loopback --------------------------------------------------------------

fn loopback_block() -> [u8; 2] {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = std::process::id()
        .wrapping_mul(7)
        .wrapping_add(N.fetch_add(1, Ordering::Relaxed));
    [(n % 250 + 2) as u8, ((n / 250) % 250 + 1) as u8]
}

fn read_msg(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Message> {
    loop {
        if let Some(len) = frame(buf).unwrap() {
            let m = Message::decode(&buf[..len], &cxt().into()).unwrap().0;
            buf.drain(..len);
            return Some(m);
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn cxt() -> EncodeCxt {
    EncodeCxt {
        four_octet_as: true,
        peer: PeerKind::External,
        families: Families::IPV4,
    }
}

fn update_bytes(prefix: &str, next_hop: Ipv4Addr) -> Vec<u8> {
    let p: Ipv4Network = prefix.parse().unwrap();
    let u = Update {
        attrs: Some(PathAttributes {
            as_path: vec![AsSegment::Sequence(vec![Asn(65010)])],
            next_hop: Some(NextHop {
                address: IpAddr::V4(next_hop),
                link_local: None,
            }),
            ..PathAttributes::default()
        }),
        nlri: vec![p],
        ..Update::default()
    };
    let mut b = BytesMut::new();
    Message::Update(Box::new(u)).encode(&cxt(), &mut b).unwrap();
    b.to_vec()
}

#[test]
fn malformed_updates_from_a_raw_peer_get_the_rfc7606_outcome() {
    let [x, y] = loopback_block();
    let (reef_ip, peer_ip) = (Ipv4Addr::new(127, x, y, 1), Ipv4Addr::new(127, x, y, 2));
    let port = std::net::TcpListener::bind((reef_ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = format!(
        "router_id: {reef_ip}\nas: {AS}\nlisten_address: {reef_ip}\nlisten_port: {port}\nhold_time: 9\n\
         peers:\n  - address: {peer_ip}\n    as: 65010\n    passive: true\n"
    );
    let reef = Reef::start(None, &cfg, &[]);
    // The raw peer: connect from its address, OPEN, KEEPALIVE.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(IpAddr::V4(peer_ip), 0).into())
        .unwrap();
    sock.connect(&SocketAddr::new(IpAddr::V4(reef_ip), port).into())
        .unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let open = Open::new(
        Asn(65010),
        9,
        peer_ip,
        vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::FourOctetAs(Asn(65010)),
        ],
    );
    let mut b = BytesMut::new();
    Message::Open(open).encode(&cxt(), &mut b).unwrap();
    Message::Keepalive.encode(&cxt(), &mut b).unwrap();
    s.write_all(&b).unwrap();
    let mut buf = Vec::new();
    assert!(matches!(read_msg(&mut s, &mut buf), Some(Message::Open(_))));
    assert!(matches!(
        read_msg(&mut s, &mut buf),
        Some(Message::Keepalive)
    ));
    reef.wait_peer(&peer_ip.to_string(), "Established", 10);
    // A good announcement.
    s.write_all(&update_bytes("10.9.0.0/24", peer_ip)).unwrap();
    reef.wait_route("10.9.0.0/24", &peer_ip.to_string(), 10);
    // The same prefix with an invalid ORIGIN value: RFC 7606 §7.1 treat-as-withdraw. The
    // route goes, the session stays.
    let mut bad = update_bytes("10.9.0.0/24", peer_ip);
    let at = bad
        .windows(4)
        .position(|w| w == [0x40, 0x01, 0x01, 0x00])
        .expect("ORIGIN attribute");
    bad[at + 3] = 7;
    s.write_all(&bad).unwrap();
    reef.wait_no_route("10.9.0.0/24", 10);
    s.write_all(&update_bytes("10.9.1.0/24", peer_ip)).unwrap();
    reef.wait_route("10.9.1.0/24", &peer_ip.to_string(), 10);
    let last = reef
        .events()
        .into_iter()
        .rfind(|e| e["event"] == "peer")
        .unwrap();
    assert_eq!(
        last["state"], "Established",
        "the session survives treat-as-withdraw"
    );
    // A broken header (marker not all ones): NOTIFICATION 1/1 (Connection Not Synchronized),
    // the session is reset and the peer's routes are withdrawn.
    let mut hdr = update_bytes("10.9.2.0/24", peer_ip);
    hdr[3] = 0;
    s.write_all(&hdr).unwrap();
    let n = loop {
        match read_msg(&mut s, &mut buf) {
            Some(Message::Notification(n)) => break n,
            Some(_) => continue,
            None => panic!("connection closed without a NOTIFICATION"),
        }
    };
    assert_eq!((n.code, n.subcode), (1, 1), "{n}");
    assert!(
        read_msg(&mut s, &mut buf).is_none(),
        "reef closes the connection after the NOTIFICATION"
    );
    reef.wait_no_route("10.9.1.0/24", 10);
}
