//! The userspace IP-in-IP fallback for kernels without `ipip.ko`.
//!
//! ```text
//!   pod ─▶ route "dev reeftun0" ─▶ TUN ─▶ [tx thread] lookup dst → node ─▶ raw socket sendto
//!                                          (kernel adds the outer header, protocol 4)
//!   wire ─▶ raw IPPROTO_IPIP socket ─▶ [rx thread] from a node? for us? strip outer ─▶ TUN ─▶ pod
//! ```
//!
//! The wire format is the kernel's (RFC 2003 outer IPv4 header, protocol 4), so a userspace
//! node and a kernel-ipip node interoperate. The route into the TUN device carries no gateway,
//! so the encapsulator keeps its own map from destination block to node addresses, built from
//! the route plan ([`EncapTable::from_plan`]). A received packet is decapsulated only when its
//! outer source is another cluster node (never a next hop some peer announced, never this
//! node's own address) and its inner destination is this node's: one of its blocks, a local
//! pod, or its tunnel address. Anything else is dropped and counted by reason, so the tunnel
//! can neither be used to inject packets into the pod network nor to bounce them elsewhere.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use ipnetwork::IpNetwork;

use crate::plan::Plan;
use crate::{sys, TunnelError};

/// Destination block → node addresses, with longest-prefix match; the nodes whose
/// encapsulated packets are accepted; and the inner destinations they may be for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncapTable {
    /// Per prefix length (longest first): masked network → node addresses.
    by_len: Vec<(u8, HashMap<u32, Vec<Ipv4Addr>>)>,
    peers: HashSet<Ipv4Addr>,
    /// This node's destinations, per prefix length (longest first): masked networks.
    local: Vec<(u8, HashSet<u32>)>,
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl EncapTable {
    /// From the plan: where to send comes from [`Plan::encap`]; packets are accepted from
    /// `cluster_nodes` (every ReefNode address, as the datastore lists them) except
    /// `this_node`, and only for [`Plan::local_destinations`] and `also_local` (the tunnel
    /// address). IPv6 entries are ignored: IP-in-IP carries IPv4.
    pub fn from_plan(
        plan: &Plan,
        cluster_nodes: impl IntoIterator<Item = IpAddr>,
        this_node: Ipv4Addr,
        also_local: impl IntoIterator<Item = Ipv4Addr>,
    ) -> Self {
        let mut lens: BTreeMap<u8, HashMap<u32, Vec<Ipv4Addr>>> = BTreeMap::new();
        for (prefix, nodes) in &plan.encap {
            let IpNetwork::V4(p) = prefix else { continue };
            let v4: Vec<Ipv4Addr> = nodes
                .iter()
                .filter_map(|n| match n {
                    IpAddr::V4(a) => Some(*a),
                    IpAddr::V6(_) => None,
                })
                .collect();
            if v4.is_empty() {
                continue;
            }
            lens.entry(p.prefix())
                .or_default()
                .insert(u32::from(p.network()) & mask(p.prefix()), v4);
        }
        let peers = cluster_nodes
            .into_iter()
            .filter_map(|a| match a {
                IpAddr::V4(a) if a != this_node => Some(a),
                _ => None,
            })
            .collect();
        let mut local: BTreeMap<u8, HashSet<u32>> = BTreeMap::new();
        let v4_local = plan
            .local_destinations
            .iter()
            .filter_map(|n| match n {
                IpNetwork::V4(p) => Some((p.network(), p.prefix())),
                IpNetwork::V6(_) => None,
            })
            .chain(also_local.into_iter().map(|a| (a, 32)));
        for (net, len) in v4_local {
            local
                .entry(len)
                .or_default()
                .insert(u32::from(net) & mask(len));
        }
        EncapTable {
            by_len: lens.into_iter().rev().collect(),
            peers,
            local: local.into_iter().rev().collect(),
        }
    }

    /// The node to encapsulate a packet for `dst` to; `flow` spreads flows over several nodes
    /// advertising the same block (one flow always takes the same node).
    pub fn lookup(&self, dst: Ipv4Addr, flow: u32) -> Option<Ipv4Addr> {
        let d = u32::from(dst);
        self.by_len.iter().find_map(|(len, nets)| {
            nets.get(&(d & mask(*len)))
                .map(|nodes| nodes[flow as usize % nodes.len()])
        })
    }

    /// Whether encapsulated packets from `src` are accepted: another cluster node.
    pub fn accepts(&self, src: Ipv4Addr) -> bool {
        self.peers.contains(&src)
    }

    /// Whether `dst` (an inner destination) is this node's: in one of its blocks, a local
    /// pod, or its tunnel address.
    pub fn is_local(&self, dst: Ipv4Addr) -> bool {
        let d = u32::from(dst);
        self.local
            .iter()
            .any(|(len, nets)| nets.contains(&(d & mask(*len))))
    }
}

/// Why a received packet was not decapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    TooShort,
    NotIpv4,
    NotIpip,
    BadHeaderLength,
    InnerNotIpv4,
}

/// The inner packet of a whole outer IPv4 packet as a raw socket returns it: validates the
/// outer header (version 4, protocol 4, sane IHL) and that the inner one is IPv4.
pub fn inner_packet(outer: &[u8]) -> Result<&[u8], Malformed> {
    if outer.len() < 20 {
        return Err(Malformed::TooShort);
    }
    if outer[0] >> 4 != 4 {
        return Err(Malformed::NotIpv4);
    }
    if outer[9] != 4 {
        return Err(Malformed::NotIpip);
    }
    let ihl = usize::from(outer[0] & 0x0f) * 4;
    if ihl < 20 || ihl > outer.len() {
        return Err(Malformed::BadHeaderLength);
    }
    let inner = &outer[ihl..];
    if inner.len() < 20 {
        return Err(Malformed::TooShort);
    }
    if inner[0] >> 4 != 4 {
        return Err(Malformed::InnerNotIpv4);
    }
    Ok(inner)
}

/// The destination of an inner IPv4 packet and a hash of its flow (addresses and protocol).
pub fn destination_and_flow(inner: &[u8]) -> Option<(Ipv4Addr, u32)> {
    if inner.len() < 20 || inner[0] >> 4 != 4 {
        return None;
    }
    let src = u32::from_be_bytes([inner[12], inner[13], inner[14], inner[15]]);
    let dst = u32::from_be_bytes([inner[16], inner[17], inner[18], inner[19]]);
    let flow = (src ^ dst.rotate_left(16) ^ u32::from(inner[9])).wrapping_mul(0x9E37_79B1);
    Some((Ipv4Addr::from(dst), flow >> 8))
}

/// Packet counters of the userspace tunnel.
#[derive(Debug, Default)]
pub struct Counters {
    pub tx: AtomicU64,
    pub rx: AtomicU64,
    pub drop_no_route: AtomicU64,
    pub drop_unknown_peer: AtomicU64,
    pub drop_malformed: AtomicU64,
    pub drop_foreign_destination: AtomicU64,
    pub errors: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelStats {
    pub tx: u64,
    pub rx: u64,
    /// Outgoing: no node for the destination.
    pub drop_no_route: u64,
    /// Incoming: the outer source is not another cluster node (a stranger, a next hop only a
    /// peer announced, or this node's own address).
    pub drop_unknown_peer: u64,
    pub drop_malformed: u64,
    /// Incoming from a node, but the inner destination is not this node's.
    pub drop_foreign_destination: u64,
    pub errors: u64,
}

impl TunnelStats {
    /// Every packet dropped, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.drop_no_route
            + self.drop_unknown_peer
            + self.drop_malformed
            + self.drop_foreign_destination
    }
}

/// The running encapsulator: a TUN device and a raw IPIP socket served by two OS threads.
/// Dropping it stops the threads; the TUN device goes with them unless it was started
/// persistent (then it stays, with its routes, for the next agent: see [`Self::remove`]).
#[derive(Debug)]
pub struct UserspaceTunnel {
    device: String,
    table: Arc<RwLock<Arc<EncapTable>>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// A handle on the device for [`Self::remove`] (the threads own the others).
    control: File,
}

/// How long the threads block before checking whether to stop.
const POLL_MS: i32 = 100;
/// Raw socket buffers: room for bursts of a fast TCP flow.
const SOCKET_BUFFER: i32 = 4 << 20;

impl UserspaceTunnel {
    /// Creates TUN device `device` (or attaches to it when a persistent one is left from an
    /// earlier run) and the raw socket (bound to `local`, the outer source) in the namespace
    /// at `netns` (the caller's own when `None`), and starts the threads. The device still has
    /// to be configured (MTU, address, up): see [`crate::device`]. `persist`: the device
    /// outlives this process, so an agent restart keeps its routes (the kernel only drops the
    /// packets that arrive while no agent serves it).
    pub fn start(
        netns: Option<&Path>,
        device: &str,
        local: Ipv4Addr,
        persist: bool,
    ) -> Result<Self, TunnelError> {
        let name = device.to_string();
        let (tun, raw) = felix_lite::netns::maybe_in(netns, move || {
            let tun = sys::open_tun(&name)?;
            sys::set_tun_persist(&tun, persist)?;
            let raw = sys::raw_ipip_socket(local)?;
            sys::set_nonblocking(&tun)?;
            sys::set_nonblocking(&raw)?;
            sys::set_buffers(&raw, SOCKET_BUFFER);
            Ok::<_, std::io::Error>((tun, raw))
        })
        .map_err(|e| TunnelError::Io {
            what: format!("enter namespace for {device}"),
            reason: e.to_string(),
        })?
        .map_err(|e| TunnelError::Io {
            what: format!("create TUN device {device} and raw IPIP socket"),
            reason: e.to_string(),
        })?;
        let raw = Arc::new(raw);
        let dup = |f: &File| {
            f.try_clone().map_err(|e| TunnelError::Io {
                what: format!("dup TUN fd of {device}"),
                reason: e.to_string(),
            })
        };
        let tun_rx = dup(&tun)?;
        let control = dup(&tun)?;
        let table = Arc::new(RwLock::new(Arc::new(EncapTable::default())));
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (raw, table, counters, stop) =
                (raw.clone(), table.clone(), counters.clone(), stop.clone());
            threads.push(spawn(format!("{device}-tx"), move || {
                encap_loop(tun, &raw, &table, &counters, &stop)
            })?);
        }
        {
            let (table, counters, stop) = (table.clone(), counters.clone(), stop.clone());
            threads.push(spawn(format!("{device}-rx"), move || {
                decap_loop(&raw, tun_rx, &table, &counters, &stop)
            })?);
        }
        tracing::info!(device, %local, "userspace IP-in-IP started (kernel has no ipip)");
        Ok(UserspaceTunnel {
            device: device.to_string(),
            table,
            counters,
            stop,
            threads,
            control,
        })
    }

    /// Stops the threads and deletes the device, persistent or not (the plan no longer needs
    /// a tunnel).
    pub fn remove(self) -> Result<(), TunnelError> {
        sys::set_tun_persist(&self.control, false).map_err(|e| TunnelError::Io {
            what: format!("make {} non-persistent", self.device),
            reason: e.to_string(),
        })
        // Dropping `self` closes the last fds: the kernel deletes the device.
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    /// Swaps in a new destination map (packets in flight use the old or the new one whole).
    pub fn set_table(&self, table: EncapTable) {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        *t = Arc::new(table);
    }

    pub fn stats(&self) -> TunnelStats {
        let c = &self.counters;
        TunnelStats {
            tx: c.tx.load(Ordering::Relaxed),
            rx: c.rx.load(Ordering::Relaxed),
            drop_no_route: c.drop_no_route.load(Ordering::Relaxed),
            drop_unknown_peer: c.drop_unknown_peer.load(Ordering::Relaxed),
            drop_malformed: c.drop_malformed.load(Ordering::Relaxed),
            drop_foreign_destination: c.drop_foreign_destination.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        }
    }
}

impl Drop for UserspaceTunnel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, TunnelError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|e| TunnelError::Io {
            what: format!("spawn thread {name}"),
            reason: e.to_string(),
        })
}

fn current(table: &RwLock<Arc<EncapTable>>) -> Arc<EncapTable> {
    table.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn encap_loop(
    mut tun: File,
    raw: &OwnedFd,
    table: &RwLock<Arc<EncapTable>>,
    c: &Counters,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        // Non-blocking: drain what is queued, poll only when empty.
        let n = match tun.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if sys::wait_readable(&tun, POLL_MS).is_err() {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            Err(_) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let pkt = &buf[..n];
        // IPv6 (router solicitations on the TUN) and garbage are not ours to carry.
        let Some((dst, flow)) = destination_and_flow(pkt) else {
            c.drop_malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(node) = current(table).lookup(dst, flow) else {
            c.drop_no_route.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match sys::send_to(raw, pkt, node) {
            Ok(_) => c.tx.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn decap_loop(
    raw: &OwnedFd,
    mut tun: File,
    table: &RwLock<Arc<EncapTable>>,
    c: &Counters,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let (n, src) = match sys::recv_from(raw, &mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if sys::wait_readable(raw, POLL_MS).is_err() {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            Err(_) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let t = current(table);
        if !t.accepts(src) {
            c.drop_unknown_peer.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let inner = match inner_packet(&buf[..n]) {
            Ok(inner) => inner,
            Err(_) => {
                c.drop_malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        // inner_packet checked the inner header's version and length.
        let dst = Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
        if !t.is_local(dst) {
            c.drop_foreign_destination.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // A TUN write takes one whole packet or fails.
        match tun.write(inner) {
            Ok(n) if n == inner.len() => c.rx.fetch_add(1, Ordering::Relaxed),
            _ => c.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// This node is 10.20.1.10, owning 10.244.1.0/26 with a borrowed pod 10.244.9.3 and tunnel
    /// address 10.244.8.1; the cluster nodes are itself, 10.20.2.10 and 10.20.9.9.
    fn table(entries: &[(&str, &[&str])]) -> EncapTable {
        let plan = Plan {
            encap: entries
                .iter()
                .map(|(p, ns)| {
                    (
                        p.parse().unwrap(),
                        ns.iter().map(|n| n.parse().unwrap()).collect(),
                    )
                })
                .collect(),
            local_destinations: ["10.244.1.0/26", "10.244.9.3/32", "fd00:244::5/128"]
                .iter()
                .map(|n| n.parse().unwrap())
                .collect(),
            ..Default::default()
        };
        let nodes: Vec<IpAddr> = ["10.20.1.10", "10.20.2.10", "10.20.9.9", "fd00::9"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        EncapTable::from_plan(&plan, nodes, a("10.20.1.10"), [a("10.244.8.1")])
    }

    #[test]
    fn accepts_only_other_cluster_nodes_for_local_destinations() {
        let t = table(&[("10.244.3.0/26", &["10.20.2.10", "10.20.2.66"])]);
        assert!(t.accepts(a("10.20.2.10")), "a node");
        assert!(t.accepts(a("10.20.9.9")), "a node with no block yet");
        assert!(
            !t.accepts(a("10.20.2.66")),
            "a next hop a peer announced is not a node"
        );
        assert!(
            !t.accepts(a("10.20.1.10")),
            "this node's own address is forged"
        );
        assert!(!t.accepts(a("10.20.6.6")), "a stranger");
        for local in ["10.244.1.0", "10.244.1.63", "10.244.9.3", "10.244.8.1"] {
            assert!(t.is_local(a(local)), "{local}");
        }
        for foreign in [
            "10.244.1.64",
            "10.244.3.5",
            "10.244.9.4",
            "8.8.8.8",
            "10.20.1.10",
        ] {
            assert!(!t.is_local(a(foreign)), "{foreign}");
        }
    }

    #[test]
    fn longest_prefix_wins_and_flows_stick() {
        let t = table(&[
            ("10.244.0.0/16", &["10.20.2.1"]),
            ("10.244.3.0/26", &["10.20.2.10", "10.20.2.11"]),
            ("fd00::/64", &["fd00::1"]),
        ]);
        assert_eq!(
            t.lookup("10.244.7.1".parse().unwrap(), 0),
            Some("10.20.2.1".parse().unwrap())
        );
        let a = t.lookup("10.244.3.5".parse().unwrap(), 0).unwrap();
        let b = t.lookup("10.244.3.5".parse().unwrap(), 1).unwrap();
        assert_ne!(a, b, "two nodes share the block's flows");
        assert_eq!(t.lookup("10.244.3.5".parse().unwrap(), 2), Some(a));
        assert_eq!(t.lookup("10.245.0.1".parse().unwrap(), 0), None);
    }

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        p.extend(src);
        p.extend(dst);
        let len = (p.len() + payload.len()) as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p.extend(payload);
        p
    }

    #[test]
    fn decapsulation_validates_both_headers() {
        let inner = ipv4(1, [10, 244, 1, 1], [10, 244, 2, 1], b"ping");
        let outer = ipv4(4, [10, 20, 1, 10], [10, 20, 2, 10], &inner);
        assert_eq!(inner_packet(&outer), Ok(&inner[..]));
        assert_eq!(inner_packet(&outer[..10]), Err(Malformed::TooShort));
        let mut udp = outer.clone();
        udp[9] = 17;
        assert_eq!(inner_packet(&udp), Err(Malformed::NotIpip));
        let mut v6 = outer.clone();
        v6[0] = 0x65;
        assert_eq!(inner_packet(&v6), Err(Malformed::NotIpv4));
        let mut ihl = outer.clone();
        ihl[0] = 0x4f; // 60-byte header but only 44 bytes present
        assert_eq!(inner_packet(&ihl[..44]), Err(Malformed::BadHeaderLength));
        let mut inner6 = outer.clone();
        inner6[20] = 0x60;
        assert_eq!(inner_packet(&inner6), Err(Malformed::InnerNotIpv4));
        assert_eq!(
            destination_and_flow(&inner).map(|(d, _)| d),
            Some(Ipv4Addr::new(10, 244, 2, 1))
        );
        assert_eq!(destination_and_flow(&[0x60; 40]), None);
    }
}
