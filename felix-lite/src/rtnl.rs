//! [`Netlink`] over rtnetlink (tokio), optionally inside another network namespace.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHop,
    RouteNextHopFlags, RouteProtocol as NlProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{AsyncSocket, AsyncSocketExt, TokioSocket};
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::diff::Op;
use crate::kernel::{KernelNextHop, KernelRoute, KernelTarget, TABLE_MAIN};
use crate::netlink::{Netlink, RouteEvent};
use crate::{netns, Error};

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

/// The monitor socket's receive buffer: large enough that a burst of 10,000 route changes
/// rarely overflows it (an overflow still only costs a resync).
const MONITOR_RCVBUF: usize = 8 << 20;

/// The batch socket's receive buffer asked for (the kernel caps it at `rmem_max`): room for
/// the error answers of a whole batch.
const BATCH_RCVBUF: usize = 1 << 20;
/// Largest write to the batch socket; the kernel refuses one above its send buffer.
const BATCH_MAX_BYTES: usize = 64 << 10;

/// rtnetlink connection to one namespace's routing tables.
#[derive(Debug, Clone)]
pub struct RtNetlink {
    handle: Handle,
    netns: Option<PathBuf>,
    /// A second socket in the same namespace for writing many routes at once (see
    /// [`Netlink::apply_ops`]); one batch at a time.
    batch: Arc<tokio::sync::Mutex<Batcher>>,
}

/// Writes route requests many to a `send`, without an ACK for each: the kernel answers only
/// the requests that fail, and the last request of each write asks for an ACK, which (the
/// kernel handling one socket's requests in order) means every earlier one is done.
struct Batcher {
    socket: TokioSocket,
    /// Next sequence number; answers with a number outside the current write are stale.
    seq: u32,
    tx: Vec<u8>,
    rx: Vec<u8>,
}

impl RtNetlink {
    /// Connects to the namespace at `netns` (e.g. `/run/netns/NAME`), or to the caller's own
    /// when `None`. Must be called inside a tokio runtime; the connection task is spawned on it.
    pub async fn connect(netns: Option<&Path>) -> Result<Self, Error> {
        let rt = tokio::runtime::Handle::current();
        let ((conn, handle, _), socket) = netns::maybe_in(netns, move || {
            // The sockets are created (and registered with the runtime) here, in the namespace.
            let _guard = rt.enter();
            let conn = rtnetlink::new_connection_with_strict_check()?;
            let mut socket = TokioSocket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
            let s = socket.socket_mut();
            s.bind_auto()?;
            s.connect(&netlink_sys::SocketAddr::new(0, 0))?;
            s.set_rx_buf_sz(BATCH_RCVBUF)?;
            // Error answers carry only the failed request's header, not the whole request.
            s.set_cap_ack(true)?;
            Ok::<_, std::io::Error>((conn, socket))
        })?
        .map_err(|e| Error::Io {
            op: "open netlink socket",
            reason: e.to_string(),
        })?;
        tokio::spawn(conn);
        Ok(RtNetlink {
            handle,
            netns: netns.map(Path::to_path_buf),
            batch: Arc::new(tokio::sync::Mutex::new(Batcher {
                socket,
                seq: 1,
                tx: Vec::with_capacity(BATCH_MAX_BYTES),
                rx: Vec::with_capacity(64 << 10),
            })),
        })
    }

    /// The underlying handle, for link and address work in the same namespace.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("seq", &self.seq).finish()
    }
}

impl Batcher {
    /// Applies `ops` in order, `batch` requests (at most [`BATCH_MAX_BYTES`]) per write.
    async fn apply(&mut self, ops: &[Op], protocol: u8, batch: usize) -> Vec<Result<(), Error>> {
        let mut out: Vec<Result<(), Error>> = Vec::with_capacity(ops.len());
        let mut start = 0;
        while start < ops.len() {
            let first_seq = self.seq;
            self.tx.clear();
            let mut end = start;
            let mut last_at = 0;
            while end < ops.len() && end - start < batch {
                let (kind, flags, msg): (fn(RouteMessage) -> RouteNetlinkMessage, u16, _) =
                    match &ops[end] {
                        Op::Add(r) => (
                            RouteNetlinkMessage::NewRoute,
                            NLM_F_CREATE | NLM_F_EXCL,
                            message(r, protocol, true),
                        ),
                        Op::Replace(r) => (
                            RouteNetlinkMessage::NewRoute,
                            NLM_F_CREATE | NLM_F_REPLACE,
                            message(r, protocol, true),
                        ),
                        Op::Delete(r) => (
                            RouteNetlinkMessage::DelRoute,
                            0,
                            message(r, protocol, false),
                        ),
                    };
                let mut header = NetlinkHeader::default();
                header.flags = NLM_F_REQUEST | flags;
                header.sequence_number = first_seq.wrapping_add((end - start) as u32);
                let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(kind(msg)));
                m.finalize();
                let len = m.buffer_len();
                if end > start && self.tx.len() + len > BATCH_MAX_BYTES {
                    break;
                }
                let at = self.tx.len();
                self.tx.resize(at + len, 0);
                m.serialize(&mut self.tx[at..]);
                last_at = at;
                end += 1;
            }
            // The last request of the write asks for an ACK: the barrier for the whole write.
            let flags_at = last_at + 6;
            let flags = u16::from_ne_bytes([self.tx[flags_at], self.tx[flags_at + 1]]) | NLM_F_ACK;
            self.tx[flags_at..flags_at + 2].copy_from_slice(&flags.to_ne_bytes());
            let n = end - start;
            self.seq = first_seq.wrapping_add(n as u32);
            let mut codes: Vec<Option<i32>> = vec![None; n];
            let outcome = self.exchange(first_seq, n, &mut codes).await;
            for (i, code) in codes.into_iter().enumerate() {
                let route = ops[start + i].route();
                let op = match ops[start + i] {
                    Op::Add(_) => "add",
                    Op::Replace(_) => "replace",
                    Op::Delete(_) => "delete",
                };
                out.push(match (code, &outcome) {
                    // No answer before the barrier: done.
                    (None, Ok(())) | (Some(0), _) => Ok(()),
                    (Some(e), _)
                        if matches!(ops[start + i], Op::Delete(_))
                            && (e == ESRCH || e == ENOENT) =>
                    {
                        Ok(())
                    }
                    (Some(e), _) => Err(Error::Netlink {
                        op,
                        route: route.to_string(),
                        errno: e,
                        reason: std::io::Error::from_raw_os_error(e).to_string(),
                    }),
                    // The write failed, or its answers were lost: the outcome is unknown.
                    (None, Err(reason)) => Err(Error::Netlink {
                        op,
                        route: route.to_string(),
                        errno: 0,
                        reason: reason.clone(),
                    }),
                });
            }
            start = end;
        }
        out
    }

    /// Sends the prepared write and reads answers until the ACK of its last request. Fills
    /// `codes[i]` with the errno answered for request `first_seq + i` (0 for an ACK).
    async fn exchange(
        &mut self,
        first_seq: u32,
        n: usize,
        codes: &mut [Option<i32>],
    ) -> Result<(), String> {
        match self.socket.send(&self.tx).await {
            Ok(sent) if sent == self.tx.len() => {}
            Ok(sent) => return Err(format!("short netlink write ({sent} of {})", self.tx.len())),
            Err(e) => return Err(format!("netlink write: {e}")),
        }
        loop {
            self.rx.clear();
            if let Err(e) = self.socket.recv(&mut self.rx).await {
                // ENOBUFS: answers were lost; which requests failed is unknown.
                return Err(format!("netlink read: {e}"));
            }
            let mut at = 0;
            while at + NLMSG_HDRLEN <= self.rx.len() {
                let b = &self.rx[at..];
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                if len < NLMSG_HDRLEN || len > b.len() {
                    return Err(format!("malformed netlink answer (length {len})"));
                }
                let kind = u16::from_ne_bytes([b[4], b[5]]);
                let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                let i = seq.wrapping_sub(first_seq) as usize;
                if kind == NLMSG_ERROR && i < n && len >= NLMSG_HDRLEN + 4 {
                    let code = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
                    codes[i] = Some(-code);
                    if i == n - 1 {
                        return Ok(());
                    }
                }
                // Anything else (a stale answer of an abandoned write) is skipped.
                at += (len + 3) & !3;
            }
        }
    }
}

fn nl_err(op: &'static str, route: &KernelRoute, e: rtnetlink::Error) -> Error {
    let errno = match &e {
        rtnetlink::Error::NetlinkError(m) => -m.raw_code(),
        _ => 0,
    };
    Error::Netlink {
        op,
        route: route.to_string(),
        errno,
        reason: e.to_string(),
    }
}

fn family(n: &IpNetwork) -> AddressFamily {
    if n.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// The netlink message for a route reef writes or deletes.
fn message(route: &KernelRoute, protocol: u8, with_target: bool) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(&route.destination);
    m.header.destination_prefix_length = route.destination.prefix();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = NlProtocol::from(protocol);
    m.header.scope = RouteScope::from(route.scope);
    m.header.kind = match route.target {
        KernelTarget::Unicast(_) => RouteType::Unicast,
        KernelTarget::Blackhole => RouteType::BlackHole,
        KernelTarget::Unreachable => RouteType::Unreachable,
    };
    m.attributes.push(RouteAttribute::Destination(
        route.destination.network().into(),
    ));
    if route.metric != 0 {
        m.attributes.push(RouteAttribute::Priority(route.metric));
    }
    if !with_target {
        return m;
    }
    if let KernelTarget::Unicast(hops) = &route.target {
        if let [hop] = hops.as_slice() {
            if let Some(g) = hop.gateway {
                m.attributes.push(RouteAttribute::Gateway(g.into()));
            }
            m.attributes.push(RouteAttribute::Oif(hop.ifindex));
            if hop.onlink {
                m.header.flags |= RouteFlags::Onlink;
            }
        } else {
            let nhs = hops
                .iter()
                .map(|h| {
                    let mut nh = RouteNextHop::default();
                    nh.interface_index = h.ifindex;
                    nh.hops = h.weight;
                    if h.onlink {
                        nh.flags |= RouteNextHopFlags::Onlink;
                    }
                    if let Some(g) = h.gateway {
                        nh.attributes.push(RouteAttribute::Gateway(g.into()));
                    }
                    nh
                })
                .collect();
            m.attributes.push(RouteAttribute::MultiPath(nhs));
        }
    }
    m
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A kernel route message as a [`KernelRoute`] with its protocol, when it is a main-table
/// unicast / blackhole / unreachable route (anything else reef never owns).
pub fn parse(m: &RouteMessage) -> Option<(u8, KernelRoute)> {
    let mut table = u32::from(m.header.table);
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = 0;
    let mut multipath = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = addr(d),
            RouteAttribute::Gateway(g) => gateway = addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::MultiPath(nhs) => multipath = Some(nhs),
            _ => {}
        }
    }
    if table != TABLE_MAIN {
        return None;
    }
    let dst = match (dst, m.header.address_family) {
        (Some(d), _) => d,
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let destination = IpNetwork::new(dst, m.header.destination_prefix_length).ok()?;
    let target = match m.header.kind {
        RouteType::BlackHole => KernelTarget::Blackhole,
        RouteType::Unreachable => KernelTarget::Unreachable,
        RouteType::Unicast => {
            let hops = match multipath {
                Some(nhs) => nhs
                    .iter()
                    .map(|nh| KernelNextHop {
                        gateway: nh.attributes.iter().find_map(|a| match a {
                            RouteAttribute::Gateway(g) => addr(g),
                            _ => None,
                        }),
                        ifindex: nh.interface_index,
                        onlink: nh.flags.contains(RouteNextHopFlags::Onlink),
                        weight: nh.hops,
                    })
                    .collect(),
                None => vec![KernelNextHop {
                    gateway,
                    ifindex: oif.unwrap_or(0),
                    onlink: m.header.flags.contains(RouteFlags::Onlink),
                    weight: 0,
                }],
            };
            KernelTarget::Unicast(hops)
        }
        _ => return None,
    };
    let route = KernelRoute {
        destination,
        metric,
        scope: u8::from(m.header.scope),
        target,
    }
    .normalised();
    Some((u8::from(m.header.protocol), route))
}

impl Netlink for RtNetlink {
    async fn list_routes(&self, protocol: u8) -> Result<Vec<KernelRoute>, Error> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            // With strict checking the kernel filters the dump by table and protocol itself.
            let mut filter = RouteMessage::default();
            filter.header.address_family = fam;
            filter.header.table = RouteHeader::RT_TABLE_MAIN;
            filter.header.protocol = NlProtocol::from(protocol);
            filter.header.scope = RouteScope::Universe;
            filter.header.kind = RouteType::Unspec;
            let mut s = self.handle.route().get(filter).execute();
            while let Some(m) = s.try_next().await.map_err(|e| Error::Io {
                op: "dump routes",
                reason: e.to_string(),
            })? {
                if let Some((p, r)) = parse(&m) {
                    if p == protocol {
                        out.push(r);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn add_route(
        &self,
        route: &KernelRoute,
        protocol: u8,
        replace: bool,
    ) -> Result<(), Error> {
        let req = self.handle.route().add(message(route, protocol, true));
        let req = if replace { req.replace() } else { req };
        req.execute()
            .await
            .map_err(|e| nl_err(if replace { "replace" } else { "add" }, route, e))
    }

    async fn delete_route(&self, route: &KernelRoute, protocol: u8) -> Result<(), Error> {
        // The protocol in the request makes the kernel match only reef's route at this key.
        match self
            .handle
            .route()
            .del(message(route, protocol, false))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => match nl_err("delete", route, e) {
                Error::Netlink { errno, .. } if errno == ESRCH || errno == ENOENT => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn apply_ops(&self, ops: &[Op], protocol: u8, batch: usize) -> Vec<Result<(), Error>> {
        self.batch
            .lock()
            .await
            .apply(ops, protocol, batch.max(1))
            .await
    }

    async fn links(&self) -> Result<HashMap<String, u32>, Error> {
        let mut out = HashMap::new();
        let mut s = self.handle.link().get().execute();
        while let Some(l) = s.try_next().await.map_err(|e| Error::Io {
            op: "dump links",
            reason: e.to_string(),
        })? {
            for a in &l.attributes {
                if let LinkAttribute::IfName(n) = a {
                    out.insert(n.clone(), l.header.index);
                }
            }
        }
        Ok(out)
    }

    async fn subscribe(&self) -> Result<UnboundedReceiver<RouteEvent>, Error> {
        let rt = tokio::runtime::Handle::current();
        let (conn, _handle, mut messages) = netns::maybe_in(self.netns.as_deref(), move || {
            let _guard = rt.enter();
            let mut c = rtnetlink::new_multicast_connection(&[
                MulticastGroup::Ipv4Route,
                MulticastGroup::Ipv6Route,
                MulticastGroup::Link,
            ])?;
            netlink_sys::AsyncSocket::socket_mut(c.0.socket_mut()).set_rx_buf_sz(MONITOR_RCVBUF)?;
            Ok::<_, std::io::Error>(c)
        })?
        .map_err(|e| Error::Io {
            op: "open netlink monitor",
            reason: e.to_string(),
        })?;
        tokio::spawn(conn);
        let (tx, rx) = unbounded_channel();
        tokio::spawn(async move {
            while let Some((msg, _)) = messages.next().await {
                let ev = match msg {
                    NetlinkMessage {
                        payload: NetlinkPayload::Overrun(_),
                        ..
                    } => Some(RouteEvent::Overrun),
                    NetlinkMessage {
                        payload: NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(m)),
                        ..
                    } => parse(&m).map(|(protocol, route)| RouteEvent::New { protocol, route }),
                    NetlinkMessage {
                        payload: NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(m)),
                        ..
                    } => parse(&m).map(|(protocol, route)| RouteEvent::Deleted { protocol, route }),
                    NetlinkMessage {
                        payload:
                            NetlinkPayload::InnerMessage(
                                RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_),
                            ),
                        ..
                    } => Some(RouteEvent::LinkChanged),
                    _ => None,
                };
                if let Some(ev) = ev {
                    if tx.send(ev).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(rx)
    }
}
