//! A blocking rtnetlink client: one socket, one request at a time, bound to the network
//! namespace it was created in. Just the requests the plugin needs, no runtime.

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The main routing table.
const RT_TABLE_MAIN: u8 = 254;

/// A route as the plugin writes and reads it (main table, unicast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    /// Link scope for on-link routes without gateway.
    pub link_scope: bool,
    pub protocol: u8,
}

/// An interface as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub kind: Option<String>,
    /// The peer's index (veth: IFLA_LINK), meaningful in the peer's namespace.
    pub link: Option<u32>,
}

/// An address as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix: u8,
}

#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's current network namespace.
    pub fn new() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends one request and collects the replies until the ACK (or DONE for dumps).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut out = vec![0; nl.buffer_len()];
        nl.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink message of length 0",
                    ));
                }
                off += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies),
                        Some(code) => return Err(errno(-code.get())),
                    },
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump {
                            // A plain GET answers with one message and no ACK when the
                            // request did not ask for one.
                            if flags & NLM_F_ACK == 0 {
                                return Ok(replies);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The link called `name`, if any.
    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(r) => Ok(r.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a veth pair: `host` here (with `host_mac`, up if `up`) and `peer` in the
    /// namespace `peer_netns` (down: the kernel cannot open a veth before both ends exist, so
    /// the peer is brought up with [`Netlink::set_up`]), both with `mtu`. EEXIST if `host`
    /// exists.
    #[allow(clippy::too_many_arguments)] // One netlink request; the fields are its attributes.
    pub fn add_veth(
        &mut self,
        host: &str,
        host_mac: [u8; 6],
        up: bool,
        peer: &str,
        peer_netns: RawFd,
        mtu: u32,
    ) -> io::Result<()> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes.push(LinkAttribute::Mtu(mtu));
        p.attributes.push(LinkAttribute::NetNsFd(peer_netns));
        let mut m = LinkMessage::default();
        if up {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        }
        m.attributes.push(LinkAttribute::IfName(host.to_string()));
        m.attributes.push(LinkAttribute::Mtu(mtu));
        m.attributes.push(LinkAttribute::Address(host_mac.to_vec()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Brings the link with `index` up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)?;
        Ok(())
    }

    /// Deletes the link with `index`; `Ok(false)` if it was already gone.
    pub fn del_link(&mut self, index: u32) -> io::Result<bool> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.request(RouteNetlinkMessage::DelLink(m), NLM_F_ACK) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the link called `name`; `Ok(false)` if there is none.
    pub fn del_link_by_name(&mut self, name: &str) -> io::Result<bool> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::DelLink(m), NLM_F_ACK) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds `addr/prefix` on `index`; IPv6 without duplicate address detection (the address
    /// is reef's to give, and DAD would delay the pod by a second).
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.header.prefix_len = prefix;
        m.header.family = family(addr);
        m.attributes.push(AddressAttribute::Local(addr));
        m.attributes.push(AddressAttribute::Address(addr));
        if addr.is_ipv6() {
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// All addresses of `index`.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<Addr>> {
        Ok(self
            .all_addresses()?
            .into_iter()
            .filter(|a| a.index == index)
            .collect())
    }

    /// Every address of every interface in this namespace.
    pub fn all_addresses(&mut self) -> io::Result<Vec<Addr>> {
        let m = AddressMessage::default();
        let r = self.request(RouteNetlinkMessage::GetAddress(m), NLM_F_DUMP)?;
        Ok(r.into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => {
                    let addr = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let addr = addr.or_else(|| {
                        a.attributes.iter().find_map(|x| match x {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    })?;
                    Some(Addr {
                        index: a.header.index,
                        addr,
                        prefix: a.header.prefix_len,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// The interface holding `ip` and the address's prefix length (a node finds the link and
    /// subnet of its node address this way), if any interface holds it.
    pub fn interface_with(&mut self, ip: IpAddr) -> io::Result<Option<(String, u8)>> {
        let Some(a) = self.all_addresses()?.into_iter().find(|a| a.addr == ip) else {
            return Ok(None);
        };
        let mut msg = LinkMessage::default();
        msg.header.index = a.index;
        let name = self
            .request(RouteNetlinkMessage::GetLink(msg), 0)?
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l).name),
                _ => None,
            });
        Ok(name.map(|n| (n, a.prefix)))
    }

    /// Adds a route; EEXIST if one with the same destination exists.
    pub fn add_route(&mut self, r: &RouteSpec) -> io::Result<()> {
        self.request(
            RouteNetlinkMessage::NewRoute(route_msg(r)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Deletes a route; `Ok(false)` if there was none.
    pub fn del_route(&mut self, r: &RouteSpec) -> io::Result<bool> {
        match self.request(RouteNetlinkMessage::DelRoute(route_msg(r)), NLM_F_ACK) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The main table's unicast routes of one family.
    pub fn routes(&mut self, v6: bool) -> io::Result<Vec<RouteSpec>> {
        let mut m = RouteMessage::default();
        m.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let r = self.request(RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)?;
        Ok(r.into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => spec_of(&r),
                _ => None,
            })
            .collect())
    }
}

fn family(a: IpAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_addr(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(v) => RouteAddress::Inet(v),
        IpAddr::V6(v) => RouteAddress::Inet6(v),
    }
}

fn route_msg(r: &RouteSpec) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(r.dst.ip());
    m.header.destination_prefix_length = r.dst.prefix();
    m.header.table = RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::from(r.protocol);
    m.header.scope = if r.link_scope {
        RouteScope::Link
    } else {
        RouteScope::Universe
    };
    m.header.kind = RouteType::Unicast;
    if r.dst.prefix() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(route_addr(r.dst.network())));
    }
    if let Some(gw) = r.gateway {
        m.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
    }
    m.attributes.push(RouteAttribute::Oif(r.oif));
    m
}

fn spec_of(m: &RouteMessage) -> Option<RouteSpec> {
    if m.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(m.header.table);
    let mut dst = None;
    let mut gateway = None;
    let mut oif = 0;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(v)) => dst = Some(IpAddr::V4(*v)),
            RouteAttribute::Destination(RouteAddress::Inet6(v)) => dst = Some(IpAddr::V6(*v)),
            RouteAttribute::Gateway(RouteAddress::Inet(v)) => gateway = Some(IpAddr::V4(*v)),
            RouteAttribute::Gateway(RouteAddress::Inet6(v)) => gateway = Some(IpAddr::V6(*v)),
            RouteAttribute::Oif(i) => oif = *i,
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    if table != u32::from(RT_TABLE_MAIN) {
        return None;
    }
    let v6 = m.header.address_family == AddressFamily::Inet6;
    let dst = dst.unwrap_or(if v6 {
        IpAddr::V6(0.into())
    } else {
        IpAddr::V4(0.into())
    });
    Some(RouteSpec {
        dst: IpNetwork::new(dst, m.header.destination_prefix_length).ok()?,
        gateway,
        oif,
        link_scope: m.header.scope == RouteScope::Link,
        protocol: u8::from(m.header.protocol),
    })
}

fn link_of(l: &LinkMessage) -> Link {
    let mut out = Link {
        index: l.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: l.header.flags.contains(LinkFlags::Up),
        kind: None,
        link: None,
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => out.name = n.clone(),
            LinkAttribute::Address(m) if m.len() == 6 => {
                let mut mac = [0; 6];
                mac.copy_from_slice(m);
                out.mac = Some(mac);
            }
            LinkAttribute::Mtu(m) => out.mtu = Some(*m),
            LinkAttribute::Link(i) => out.link = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        out.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    out
}
