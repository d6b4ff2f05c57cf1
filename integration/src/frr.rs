//! FRR (zebra + bgpd) run by a test inside a namespace, without systemd: private config, pid,
//! zserv and vty paths per instance; state read back as JSON through `vtysh`.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::cmd::{self, Process};
use crate::netns::Netns;
use crate::wait::wait_for;
use crate::Error;

/// bgpd's configuration for a router that peers with a reef cluster and routes to its pods, as
/// `deploy/PEERING.md` shows it: one eBGP session per node from the router's loopback
/// `router_id` (multihop), IPv4 and IPv6 unicast over it, everything from the nodes accepted and
/// nothing sent back (route-maps, as RFC 8212 asks of eBGP). zebra installs the best paths in
/// the kernel, their next hops (the nodes) resolved through the connected subnets.
pub fn cluster_router_config(
    router_id: Ipv4Addr,
    router_as: u32,
    cluster_as: u32,
    nodes: &[IpAddr],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "frr defaults traditional");
    let _ = writeln!(s, "route-map reef-in permit 10");
    let _ = writeln!(s, "route-map reef-out deny 10");
    let _ = writeln!(s, "router bgp {router_as}");
    let _ = writeln!(s, " bgp router-id {router_id}");
    let _ = writeln!(s, " timers bgp 3 9");
    for n in nodes {
        let _ = writeln!(s, " neighbor {n} remote-as {cluster_as}");
        let _ = writeln!(s, " neighbor {n} ebgp-multihop 255");
        let _ = writeln!(s, " neighbor {n} update-source {router_id}");
        let _ = writeln!(s, " neighbor {n} timers connect 2");
    }
    for afi in ["ipv4", "ipv6"] {
        let _ = writeln!(s, " address-family {afi} unicast");
        for n in nodes {
            let _ = writeln!(s, "  neighbor {n} activate");
            let _ = writeln!(s, "  neighbor {n} route-map reef-in in");
            let _ = writeln!(s, "  neighbor {n} route-map reef-out out");
        }
        let _ = writeln!(s, " exit-address-family");
    }
    s
}

/// A running FRR instance (zebra + bgpd); both are killed when dropped.
#[derive(Debug)]
pub struct Frr {
    // Field order is drop order: daemons before their directory.
    bgpd: Process,
    zebra: Process,
    dir: tempfile::TempDir,
}

/// A neighbour as `show bgp summary json` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrrPeer {
    pub address: String,
    /// `Established`, `Active`, `Connect`, `Idle`, …
    pub state: String,
    /// Prefixes received (accepted after inbound policy).
    pub prefixes_received: u64,
}

/// One path of `show bgp <afi> unicast json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrrRoute {
    pub prefix: String,
    pub best: bool,
    pub next_hops: Vec<String>,
}

impl Frr {
    /// Starts zebra and bgpd inside `ns` with `bgpd_conf` (FRR syntax). zebra gets
    /// `ip nht resolve-via-default` so iBGP next hops on another subnet resolve.
    pub fn start(ns: &Netns, bgpd_conf: &str) -> Result<Frr, Error> {
        let dir = tempfile::Builder::new()
            .prefix("reeft-frr-")
            .tempdir()
            .map_err(Error::TempDir)?;
        let d = dir.path();
        let zebra_conf = d.join("zebra.conf");
        std::fs::write(
            &zebra_conf,
            "ip nht resolve-via-default\nipv6 nht resolve-via-default\n",
        )
        .map_err(|e| Error::io(&zebra_conf, e))?;
        let bgpd = d.join("bgpd.conf");
        std::fs::write(&bgpd, bgpd_conf).map_err(|e| Error::io(&bgpd, e))?;
        // The daemons drop privileges to user frr; the directory must be theirs.
        cmd::run("chown", ["-R", "frr:frr", s(d)?])?;
        cmd::run("chmod", ["755", s(d)?])?;
        let zserv = d.join("zserv.api");
        let daemon = |name: &str, conf: &Path| -> Result<Process, Error> {
            let args = [
                "-f",
                s(conf)?,
                "-i",
                &format!("{}/{name}.pid", s(d)?),
                "-z",
                s(&zserv)?,
                "--vty_socket",
                s(d)?,
                "-P",
                "0",
                "--log",
                &format!("file:{}/{name}.log", s(d)?),
            ];
            let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
            ns.spawn(
                name,
                &format!("/usr/lib/frr/{name}"),
                &args,
                Some(&d.join(format!("{name}.out"))),
            )
        };
        let zebra = daemon("zebra", &zebra_conf)?;
        wait_for("zebra zserv socket", Duration::from_secs(10), |_| {
            zserv.exists().then_some(())
        })?;
        let bgpd = daemon("bgpd", &bgpd)?;
        let frr = Frr { bgpd, zebra, dir };
        wait_for("bgpd vty", Duration::from_secs(10), |last| {
            match frr.vtysh("show bgp summary json") {
                Ok(_) => Some(()),
                Err(e) => {
                    *last = e.to_string();
                    None
                }
            }
        })
        .map_err(|e| Error::Other(format!("{e}; bgpd log: {}", frr.log("bgpd"))))?;
        Ok(frr)
    }

    /// Runs one `vtysh -c` command against this instance.
    pub fn vtysh(&self, command: &str) -> Result<String, Error> {
        cmd::run(
            "vtysh",
            ["--vty_socket", s(self.dir.path())?, "-c", command],
        )
    }

    /// A daemon's log (`zebra` or `bgpd`), for failure messages.
    pub fn log(&self, daemon: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{daemon}.log"))).unwrap_or_default()
    }

    /// The neighbours of the IPv4 and IPv6 unicast families.
    pub fn peers(&self) -> Result<Vec<FrrPeer>, Error> {
        #[derive(Deserialize)]
        struct Family {
            #[serde(default)]
            peers: std::collections::BTreeMap<String, Peer>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Peer {
            state: String,
            #[serde(default)]
            pfx_rcd: u64,
        }
        let out = self.vtysh("show bgp summary json")?;
        let v: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&out).map_err(|e| Error::Parse {
                what: format!("show bgp summary json: {e}"),
                text: out.clone(),
            })?;
        let mut peers = Vec::new();
        for (fam, val) in v {
            if !fam.ends_with("Unicast") {
                continue;
            }
            let f: Family = serde_json::from_value(val).map_err(|e| Error::Parse {
                what: format!("{fam}: {e}"),
                text: out.clone(),
            })?;
            for (address, p) in f.peers {
                peers.push(FrrPeer {
                    address,
                    state: p.state,
                    prefixes_received: p.pfx_rcd,
                });
            }
        }
        Ok(peers)
    }

    /// Waits until neighbour `addr` is Established.
    pub fn wait_established(&self, addr: IpAddr, timeout: Duration) -> Result<(), Error> {
        let a = addr.to_string();
        wait_for(
            &format!("FRR neighbour {a} Established"),
            timeout,
            |last| match self.peers() {
                Ok(p) if p.iter().any(|p| p.address == a && p.state == "Established") => Some(()),
                Ok(p) => {
                    *last = format!("{p:?}");
                    None
                }
                Err(e) => {
                    *last = e.to_string();
                    None
                }
            },
        )
    }

    /// The BGP table of `afi` (`ipv4` or `ipv6`).
    pub fn routes(&self, afi: &str) -> Result<Vec<FrrRoute>, Error> {
        #[derive(Deserialize)]
        struct Table {
            #[serde(default)]
            routes: std::collections::BTreeMap<String, Vec<BgpPath>>,
        }
        #[derive(Deserialize)]
        struct BgpPath {
            #[serde(default)]
            bestpath: bool,
            #[serde(default)]
            nexthops: Vec<Nh>,
        }
        #[derive(Deserialize)]
        struct Nh {
            #[serde(default)]
            ip: String,
        }
        let out = self.vtysh(&format!("show bgp {afi} unicast json"))?;
        let t: Table = serde_json::from_str(&out).map_err(|e| Error::Parse {
            what: format!("show bgp {afi} unicast json: {e}"),
            text: out.clone(),
        })?;
        let mut v = Vec::new();
        for (prefix, paths) in t.routes {
            for p in paths {
                v.push(FrrRoute {
                    prefix: prefix.clone(),
                    best: p.bestpath,
                    next_hops: p.nexthops.into_iter().map(|n| n.ip).collect(),
                });
            }
        }
        Ok(v)
    }

    /// Stops both daemons.
    pub fn stop(self) {
        let Frr { bgpd, zebra, dir } = self;
        bgpd.stop(Duration::from_secs(2));
        zebra.stop(Duration::from_secs(2));
        drop(dir);
    }
}

fn s(p: &Path) -> Result<&str, Error> {
    p.to_str()
        .ok_or_else(|| Error::Other(format!("non-UTF-8 path {}", p.display())))
}
