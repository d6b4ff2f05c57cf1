//! A 1,000-node full mesh (issue 14, benchmark 3; run as root:
//! `cargo bench -p reef --bench mesh`, under a minute once built). One real `reef node run`
//! peers with 1,000 simulated nodes: one BGP speaker in this process answering on 1,000
//! addresses, each advertising its node's block. Figures printed, not a timed test.
//!
//! ```text
//!  ┌ reeft-…-ms-n ─────────┐  veth   ┌ reeft-…-ms-s ────────────────────────────────────┐
//!  │ reef node run         │ eth0 ── │ br0: 10.212.3.254/22 (API-server stand-in)        │
//!  │ eth0 10.212.0.1/22    │         │      10.212.0.2 … /32, one address per sim node   │
//!  │ routes 10.128.x/26    │         │ simulator: one listener on *:179, one task per    │
//!  │   via 10.212.y.z      │         │   session (current-thread tokio on a thread that  │
//!  └───────────────────────┘         │   entered the namespace)                          │
//!                                    └───────────────────────────────────────────────────┘
//! ```
//!
//! - The stand-in (`reef_integration::apiserver`) holds the agent's ReefNode and the N
//!   simulated nodes' (address in the agent's /22, the mesh's AS 64512), a confirmed block
//!   affinity and an empty /26 block for each (10.128.0.0/16, `ipipMode: Never`: the next hops
//!   are on-link, so each route is a direct `via`), BGPConfiguration with the node-to-node mesh
//!   on. The agent's mesh (`view::desired_peers`) is one iBGP session per other ReefNode,
//!   connected out from its own address; by default every session is the agent's connect.
//! - The simulator is passive by default (as BIRD's `passive on`): it accepts, sends its OPEN
//!   (4-octet AS, multiprotocol IPv4 unicast, route refresh, graceful restart),
//!   answers the agent's OPEN with a KEEPALIVE, and once the agent's KEEPALIVE arrives
//!   (Established on both sides) sends one UPDATE (its block, NEXT_HOP = its address,
//!   LOCAL_PREF 100) and End-of-RIB; then KEEPALIVEs at a third of the hold time. Messages
//!   are encoded and decoded with reef_bgp's codec. With `REEF_MESH_ACTIVE=MS` the simulated
//!   nodes also connect to the agent (from their own addresses, every MS milliseconds until
//!   up, the first tries spread over MS), as mesh peers that are not passive do: both sides
//!   then resolve connection collisions (RFC 4271 §6.8; the simulated nodes' identifiers are
//!   higher, so their connections win).
//! - Figures, from the agent's spawn: all N sessions Established (the simulator's side: the
//!   agent's KEEPALIVE in OpenConfirm), all N block routes in the agent namespace's kernel
//!   table (`ip -4 route show proto 201`, polled every 25 ms), the agent's peak RSS (VmHWM)
//!   and CPU until then and in an idle window after; the agent's own `reef status` counts its
//!   Established peers at the end.
//!
//! Knobs: `REEF_MESH_N` (simulated nodes, default 1000, at most 1021), `REEF_BIN` (the agent
//! binary; default this build's `reef`), `REEF_MESH_IDLE` (idle window in seconds, default 5),
//! `REEF_MESH_ACTIVE` (see above; default passive).
//! A quick first try in a debug build: `REEF_MESH_N=50 cargo test -p reef --bench mesh`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnetwork::{IpNetwork, Ipv4Network};
use reef_bgp::attrs::{NextHop, PathAttributes};
use reef_bgp::packet::{
    frame, AfiSafi, Capability, DecodeCxt, EncodeCxt, Families, Family, GrFamily, GracefulRestart,
    Message, Notification, Open, PeerKind, Update,
};
use reef_bgp::Asn;
use reef_integration::agent::{Agent, AgentSpec};
use reef_integration::apiserver::{seed, StandIn};
use reef_integration::procfs::{cpu_time, peak_rss_kib};
use reef_integration::{lan, Netns};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const AS: u32 = 64512;
/// The agent's address; simulated node `i` is `SIM_BASE + i`, all in 10.212.0.0/22.
const AGENT_IP: Ipv4Addr = Ipv4Addr::new(10, 212, 0, 1);
const SIM_BASE: Ipv4Addr = Ipv4Addr::new(10, 212, 0, 2);
/// The "router" end of the link, where the API-server stand-in listens.
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 212, 3, 254);
const MAX_NODES: usize = 1021;
const ROUTE_PROTOCOL: &str = "201";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn sim_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(SIM_BASE) + i as u32)
}

fn sim_name(i: usize) -> String {
    format!("sim{i:04}")
}

/// Block `i` of 10.128.0.0/16 (a /26 each); the agent's own is block `n`.
fn block_cidr(i: usize) -> Ipv4Network {
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i as u32 * 64;
    Ipv4Network::new(Ipv4Addr::from(base), 26).expect("a /26")
}

/// A node's ReefNode, confirmed affinity and empty block.
fn node_objects(name: &str, address: Ipv4Addr, cidr: Ipv4Network) -> Vec<(String, Value)> {
    let cidr = IpNetwork::V4(cidr);
    let c = cidr.to_string();
    vec![
        seed::reef_node(name, &format!("{address}/22")),
        seed::affinity(&reef_ipam::ipam::affinity_name(name, &cidr), name, &c),
        seed::block(&reef_ipam::ipam::block_name(&cidr), name, &c, 64, 0),
    ]
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// The agent connected to the simulated node.
    Incoming,
    /// The simulated node connected to the agent (`REEF_MESH_ACTIVE`).
    Outgoing,
}

/// One simulated node's connections, for collision resolution.
#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// Its own connection to the agent is open (OPEN sent).
    outgoing: bool,
    /// A session is Established.
    up: bool,
    /// It was Established once (counted in `established`).
    ever_up: bool,
}

type Slots = Arc<Mutex<Vec<Slot>>>;

/// What the simulator saw, shared with the measuring thread.
#[derive(Default)]
struct SimStats {
    accepted: AtomicUsize,
    established: AtomicUsize,
    /// Nanoseconds since the simulator's epoch of the last session Established.
    last_established_ns: AtomicU64,
    updates_received: AtomicUsize,
    /// Connections closed by collision resolution (RFC 4271 §6.8), by either side.
    collisions: AtomicUsize,
    /// Connections the agent closed before Established without a NOTIFICATION: before its
    /// OPEN came, and after.
    closed_before_open: AtomicUsize,
    closed_after_open: AtomicUsize,
    /// Connections reset (RST) by the agent before Established.
    reset_before: AtomicUsize,
    /// Established sessions that went down again.
    dropped: AtomicUsize,
    /// Sessions that failed otherwise, and why (the first few).
    failed: AtomicUsize,
    failures: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl SimStats {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(what);
        }
    }
}

/// Simulated nodes speaking BGP in namespace `ns`: a thread that entered it runs a
/// current-thread tokio runtime with one listener on `*:179` (its local address says which
/// node a connection is for) and one task per session.
struct Simulator {
    stats: Arc<SimStats>,
    epoch: Instant,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Simulator {
    fn start(ns: &Netns, n: usize, active: Option<Duration>) -> Simulator {
        let stats = Arc::new(SimStats::default());
        let epoch = Instant::now();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let name = ns.name().to_string();
        let st = stats.clone();
        let thread = std::thread::spawn(move || {
            // The namespace is the thread's (setns through the lab library's one safe entry,
            // which runs its closure on a fresh thread: this whole simulator runs in there).
            let ns = Netns::adopt(&name);
            let r = ns.in_ns(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(serve(n, active, st, epoch, ready_tx))
            });
            // Not ours to delete: the bench's guard removes the namespace.
            ns.persist();
            if let Err(e) = r {
                eprintln!("simulator: {e}");
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the simulator listens");
        Simulator {
            stats,
            epoch,
            thread: Some(thread),
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stats.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    n: usize,
    active: Option<Duration>,
    stats: Arc<SimStats>,
    epoch: Instant,
    ready: std::sync::mpsc::Sender<()>,
) -> std::io::Result<()> {
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 179))?;
    // A backlog for every session at once (the kernel caps it at somaxconn, 4096): the agent
    // connects to all peers in the same instant.
    let listener = sock.listen(4096)?;
    let slots: Slots = Arc::new(Mutex::new(vec![Slot::default(); n]));
    if let Some(retry) = active {
        for i in 0..n {
            tokio::spawn(connect_out(
                i,
                n,
                retry,
                stats.clone(),
                slots.clone(),
                epoch,
            ));
        }
    }
    let _ = ready.send(());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (stream, _) = r?;
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                let (st, sl) = (stats.clone(), slots.clone());
                tokio::spawn(async move {
                    let local = stream.local_addr().map(|a| a.ip());
                    if let Err(e) = session(stream, Dir::Incoming, n, &st, &sl, epoch).await {
                        if !st.stop.load(Ordering::Relaxed) {
                            st.fail(format!("{local:?} (agent's connection): {e}"));
                        }
                    }
                });
            }
            _ = tick.tick() => {
                if stats.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
        }
    }
}

/// Simulated node `i` connecting to the agent, as a mesh peer that is not passive: every
/// `retry` (the first try spread over it) until a session is up.
async fn connect_out(
    i: usize,
    n: usize,
    retry: Duration,
    stats: Arc<SimStats>,
    slots: Slots,
    epoch: Instant,
) {
    tokio::time::sleep(retry * i as u32 / n as u32).await;
    let agent = SocketAddr::new(AGENT_IP.into(), 179);
    while !stats.stop.load(Ordering::Relaxed) {
        if !slots.lock().unwrap()[i].up {
            let conn = async {
                let sock = TcpSocket::new_v4()?;
                sock.bind(SocketAddr::new(sim_ip(i).into(), 0))?;
                sock.connect(agent).await
            };
            if let Ok(Ok(stream)) = tokio::time::timeout(retry, conn).await {
                let mine = {
                    let mut s = slots.lock().unwrap();
                    // Up meanwhile on the agent's connection: a new connection now would be
                    // a restart to a graceful-restart speaker (RFC 4724 §4.2). Close it
                    // before any OPEN.
                    let free = !s[i].up;
                    s[i].outgoing = free;
                    free
                };
                if mine {
                    let r = session(stream, Dir::Outgoing, n, &stats, &slots, epoch).await;
                    slots.lock().unwrap()[i].outgoing = false;
                    if let Err(e) = r {
                        if !stats.stop.load(Ordering::Relaxed) {
                            stats.fail(format!("{} (own connection): {e}", sim_ip(i)));
                        }
                    }
                }
            }
        }
        tokio::time::sleep(retry).await;
    }
}

fn encode(m: &Message, cxt: &EncodeCxt) -> std::io::Result<Vec<u8>> {
    // The codec writes into a `bytes::BytesMut` (inferred: this crate does not name `bytes`).
    let mut buf = Default::default();
    m.encode(cxt, &mut buf).map_err(io)?;
    Ok(buf.to_vec())
}

/// One simulated node's session with the agent.
async fn session(
    mut s: TcpStream,
    dir: Dir,
    n: usize,
    stats: &SimStats,
    slots: &Slots,
    epoch: Instant,
) -> std::io::Result<()> {
    let mut established = false;
    let r = exchange(&mut s, dir, n, stats, slots, epoch, &mut established).await;
    // Before Established, a reset is how a speaker refuses a connection it does not want
    // (e.g. while its session is between attempts, RFC 4271 §8.2.2).
    if let Err(e) = &r {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
        if !established && matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe) {
            stats.reset_before.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
    }
    if established {
        let i = node_index(&s).unwrap_or(usize::MAX);
        if let Some(slot) = slots.lock().unwrap().get_mut(i) {
            slot.up = false;
        }
        if !stats.stop.load(Ordering::Relaxed) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    r
}

/// Which simulated node a connection belongs to (its local address).
fn node_index(s: &TcpStream) -> Option<usize> {
    let IpAddr::V4(me) = s.local_addr().ok()?.ip() else {
        return None;
    };
    Some(u32::from(me).wrapping_sub(u32::from(SIM_BASE)) as usize)
}

/// The session's messages, from our OPEN on.
async fn exchange(
    s: &mut TcpStream,
    dir: Dir,
    n: usize,
    stats: &SimStats,
    slots: &Slots,
    epoch: Instant,
    established: &mut bool,
) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let IpAddr::V4(me) = s.local_addr()?.ip() else {
        return Err(io("not IPv4"));
    };
    let i = u32::from(me).wrapping_sub(u32::from(SIM_BASE)) as usize;
    if i >= n {
        return Err(io(format!("{me} is no simulated node")));
    }
    let hold: u16 = 90;
    let open = Open::new(
        Asn(AS),
        hold,
        me,
        vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::RouteRefresh,
            Capability::GracefulRestart(GracefulRestart {
                restart_state: false,
                notification: false,
                restart_time: 120,
                families: vec![GrFamily {
                    afi_safi: AfiSafi::IPV4_UNICAST,
                    forwarding_preserved: false,
                }],
            }),
            Capability::FourOctetAs(Asn(AS)),
        ],
    );
    s.write_all(&encode(&Message::Open(open), &EncodeCxt::default())?)
        .await?;
    let mut cxt = DecodeCxt::default();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut open_seen = false;
    let mut keepalive = tokio::time::interval(Duration::from_secs(u64::from(hold / 3)));
    keepalive.tick().await;
    loop {
        // Whole messages first.
        while let Some(len) = frame(&buf).map_err(io)? {
            let (m, _) = Message::decode(&buf[..len], &cxt).map_err(io)?;
            buf.drain(..len);
            match m {
                Message::Open(o) if !open_seen => {
                    if o.asn() != Asn(AS) {
                        return Err(io(format!("the agent's OPEN says AS {}", o.asn().0)));
                    }
                    // Collision resolution (RFC 4271 §6.8), for the connection this OPEN
                    // came on: with another connection of this node open, the one initiated
                    // by the higher BGP identifier stays. The simulated nodes' identifiers (their
                    // addresses) are all above the agent's, so their own connection wins unless
                    // the agent's is already Established. The agent resolves the same way and
                    // closes the loser from its side too.
                    let lost = {
                        let sl = slots.lock().unwrap();
                        let ours_higher = u32::from(me) > u32::from(o.router_id);
                        match dir {
                            Dir::Incoming => sl[i].outgoing && ours_higher,
                            Dir::Outgoing => sl[i].up,
                        }
                    };
                    if lost {
                        stats.collisions.fetch_add(1, Ordering::Relaxed);
                        let cease = Notification::new(6, 7);
                        s.write_all(&encode(&Message::Notification(cease), &cxt.into())?)
                            .await?;
                        return Ok(());
                    }
                    open_seen = true;
                    let hold = hold.min(o.hold_time);
                    if hold > 0 {
                        keepalive =
                            tokio::time::interval(Duration::from_secs(u64::from(hold / 3).max(1)));
                        keepalive.tick().await;
                    }
                    cxt = DecodeCxt {
                        four_octet_as: o.four_octet_as().is_some(),
                        peer: PeerKind::Internal,
                        families: if o.families().contains(Family::Ipv4Unicast) {
                            Families::IPV4
                        } else {
                            Families::NONE
                        },
                    };
                    s.write_all(&encode(&Message::Keepalive, &cxt.into())?)
                        .await?;
                }
                Message::Keepalive if open_seen && !*established => {
                    *established = true;
                    let first = {
                        let mut sl = slots.lock().unwrap();
                        sl[i].up = true;
                        !std::mem::replace(&mut sl[i].ever_up, true)
                    };
                    if first {
                        stats.established.fetch_add(1, Ordering::Relaxed);
                        stats
                            .last_established_ns
                            .fetch_max(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                    let attrs = PathAttributes {
                        next_hop: Some(NextHop {
                            address: me.into(),
                            link_local: None,
                        }),
                        local_pref: Some(100),
                        ..Default::default()
                    };
                    let update = Update {
                        attrs: Some(attrs),
                        nlri: vec![block_cidr(i)],
                        ..Default::default()
                    };
                    let ecxt: EncodeCxt = cxt.into();
                    let mut out = encode(&Message::Update(Box::new(update)), &ecxt)?;
                    out.extend(encode(
                        &Message::Update(Box::new(Update::end_of_rib(Family::Ipv4Unicast))),
                        &ecxt,
                    )?);
                    s.write_all(&out).await?;
                }
                Message::Keepalive => {}
                Message::Update(_) => {
                    stats.updates_received.fetch_add(1, Ordering::Relaxed);
                }
                // Cease / Connection Collision Resolution: the agent closed the loser.
                Message::Notification(no) if no.code == 6 && no.subcode == 7 => {
                    stats.collisions.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Message::Notification(no) => {
                    return Err(io(format!("NOTIFICATION from the agent: {no}")));
                }
                Message::RouteRefresh(_) | Message::Open(_) => {}
            }
        }
        let mut chunk = [0u8; 4096];
        tokio::select! {
            r = s.read(&mut chunk) => {
                let got = r?;
                if got == 0 {
                    // Before Established, a quiet close is how a speaker drops a connection it
                    // does not want (one of two racing ones); after, the session is lost.
                    if *established {
                        return Err(io("the agent closed the connection"));
                    }
                    let c = if open_seen { &stats.closed_after_open } else { &stats.closed_before_open };
                    c.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..got]);
            }
            _ = keepalive.tick(), if open_seen => {
                s.write_all(&encode(&Message::Keepalive, &cxt.into())?).await?;
            }
        }
    }
}

/// The simulated nodes' block routes in the agent's kernel table.
fn routes_in_kernel(ns: &Netns, blocks: &HashSet<String>) -> usize {
    ns.ip(["-4", "route", "show", "proto", ROUTE_PROTOCOL])
        .map(|out| {
            out.lines()
                .filter(|l| {
                    l.split_whitespace()
                        .next()
                        .is_some_and(|d| blocks.contains(d))
                })
                .count()
        })
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let reef = std::env::var("REEF_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_reef").into());
    let n = (env_num("REEF_MESH_N", 1000) as usize).clamp(1, MAX_NODES);
    let idle_secs = env_num("REEF_MESH_IDLE", 5);
    let active = std::env::var("REEF_MESH_ACTIVE")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    println!("agent binary: {reef}");
    println!(
        "{n}-node full mesh: one agent, {n} simulated nodes ({})",
        match active {
            Some(r) => format!("both sides connect, the simulated nodes every {r:?}"),
            None => "passive: the agent connects".into(),
        }
    );

    let sim_ns = lan::router("ms-s", &format!("{ROUTER_IP}/22")).unwrap();
    let api = sim_ns
        .in_ns(|| StandIn::start_on(SocketAddr::new(ROUTER_IP.into(), 0)).map_err(io))
        .unwrap();
    let t = Instant::now();
    let agent_name = "agent";
    let mut objects = vec![
        seed::custom(
            "ippools",
            "default",
            json!({}),
            json!({"cidr": "10.128.0.0/16", "blockSize": 26, "ipipMode": "Never"}),
        ),
        seed::custom(
            "bgpconfigurations",
            "default",
            json!({}),
            json!({"asNumber": AS, "nodeToNodeMeshEnabled": true}),
        ),
    ];
    api.put_node(agent_name, &[], &[&AGENT_IP.to_string()]);
    objects.extend(node_objects(agent_name, AGENT_IP, block_cidr(n)));
    for i in 0..n {
        api.put_node(&sim_name(i), &[], &[&sim_ip(i).to_string()]);
        objects.extend(node_objects(&sim_name(i), sim_ip(i), block_cidr(i)));
    }
    api.put_custom_resources(objects).unwrap();
    // The cluster-wide Leases are another node's: the agent measured does a node's work only.
    for name in [reef_ipam::cleaner::LEASE_NAME, "reef-loadbalancer"] {
        api.put_lease("reef-system", name, &sim_name(0), 3600);
    }
    // The simulated nodes' addresses, in one `ip -batch`.
    let batch: String = (0..n)
        .map(|i| format!("address add {}/32 dev br0\n", sim_ip(i)))
        .collect();
    let mut c = std::process::Command::new("ip");
    c.args(["-n", sim_ns.name(), "-batch", "-"])
        .stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(batch.as_bytes())
            .unwrap();
    }
    assert!(child.wait().unwrap().success(), "ip -batch failed");
    println!(
        "  seeded {n} simulated nodes (ReefNodes, Nodes, affinities, blocks) and their addresses in {:.1?}",
        t.elapsed()
    );

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api
        .write_token_kubeconfig(dir.path(), "reef-system", "reef-node")
        .unwrap();
    let node_ns = lan::node(&sim_ns, "ms-n", agent_name, &format!("{AGENT_IP}/22")).unwrap();
    let blocks: HashSet<String> = (0..n).map(|i| block_cidr(i).to_string()).collect();
    let address = format!("{AGENT_IP}/22");
    let d = dir.path().join("agent");
    let spec = AgentSpec::new(&reef, agent_name, &address, &kubeconfig, &d);
    let sim = Simulator::start(&sim_ns, n, active);

    let t0 = Instant::now();
    let since_epoch = t0.duration_since(sim.epoch);
    let agent = Agent::spawn(&node_ns, &spec).unwrap();
    let pid = *node_ns.pids().first().expect("the agent's pid");
    let mut all_up = None;
    let mut first_up = None;
    let mut first_route = None;
    let all_routes = loop {
        let up = sim.stats.established.load(Ordering::Relaxed);
        if up > 0 && first_up.is_none() {
            first_up = Some(t0.elapsed());
        }
        if up == n && all_up.is_none() {
            let at = Duration::from_nanos(sim.stats.last_established_ns.load(Ordering::Relaxed));
            all_up = Some(at.saturating_sub(since_epoch));
        }
        let r = routes_in_kernel(&node_ns, &blocks);
        if r > 0 && first_route.is_none() {
            first_route = Some(t0.elapsed());
        }
        if r == n {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "after 300 s: {up} of {n} sessions Established, {r} of {n} routes in the kernel, {} accepted; \
             simulator failures: {:?}\n{}",
            sim.stats.accepted.load(Ordering::Relaxed),
            sim.stats.failures.lock().unwrap(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    };
    let cpu_converge = cpu_time(pid);
    let hwm_converge = peak_rss_kib(pid).unwrap_or(0);
    // All routes in implies all sessions up; the last Established may not have been polled.
    let all_up = all_up.unwrap_or_else(|| {
        let at = Duration::from_nanos(sim.stats.last_established_ns.load(Ordering::Relaxed));
        at.saturating_sub(since_epoch)
    });

    // Idle: keepalives only.
    std::thread::sleep(Duration::from_secs(1));
    let c0 = cpu_time(pid);
    let ti = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let idle_cpu = (cpu_time(pid) - c0).as_secs_f64() / ti.elapsed().as_secs_f64();
    let status = agent.status();
    let agent_established = status["peers"].as_array().map_or(0, |ps| {
        ps.iter()
            .filter(|p| p["state"].as_str() == Some("Established"))
            .count()
    });
    let hwm = peak_rss_kib(pid).unwrap_or(0);
    let failures = sim.stats.failures.lock().unwrap().clone();

    let f = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{d:.2?}"));
    let rows: Vec<(String, String, &str)> = vec![
        ("start → first session Established".into(), f(first_up), ""),
        (
            format!("start → all {n} sessions Established"),
            format!("{all_up:.2?}"),
            "",
        ),
        (
            "start → first block route in the kernel".into(),
            f(first_route),
            "",
        ),
        (
            format!("start → all {n} block routes in the kernel"),
            format!("{all_routes:.2?}"),
            "< 10 s (Calico/BIRD: ~4 min at 800 nodes, calico#9976)",
        ),
        (
            "agent CPU until then".into(),
            format!("{:.2?}", cpu_converge),
            "",
        ),
        (
            "agent peak RSS (VmHWM) at convergence / end".into(),
            format!(
                "{:.1} MB / {:.1} MB",
                hwm_converge as f64 / 1024.0,
                hwm as f64 / 1024.0
            ),
            "< 100 MB",
        ),
        (
            format!("agent CPU idle ({idle_secs} s, {n} sessions)"),
            format!("{:.2} % of a core", idle_cpu * 100.0),
            "",
        ),
        (
            "agent's reef status: peers Established".into(),
            format!("{agent_established} of {n}"),
            "",
        ),
    ];
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let v = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    println!();
    println!("{:w$}  {:v$}  target", "figure", "value");
    for (what, value, target) in &rows {
        println!("{what:w$}  {value:v$}  {target}");
    }
    let c = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    let st = &sim.stats;
    println!(
        "simulator: {} connections accepted, {} closed by collision resolution (Cease 6/7), \
         {} closed quietly by the agent before Established ({} before its OPEN, {} after), \
         {} reset by the agent before Established, {} UPDATEs from the agent, \
         {} Established sessions dropped, {} failed otherwise",
        c(&st.accepted),
        c(&st.collisions),
        c(&st.closed_before_open) + c(&st.closed_after_open),
        c(&st.closed_before_open),
        c(&st.closed_after_open),
        c(&st.reset_before),
        c(&st.updates_received),
        c(&st.dropped),
        c(&st.failed)
    );
    if !failures.is_empty() {
        println!(
            "simulator failures (first {}): {failures:?}",
            failures.len()
        );
    }
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average: {}", l.trim());
    }
    // The agent first: the simulator then sees its sessions end.
    drop(agent);
    drop(sim);
    drop(node_ns);
    drop(api);
    drop(sim_ns);
}
