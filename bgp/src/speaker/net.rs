//! Sockets: the listener (with an MD5 key per configured peer), outgoing connections (source
//! address, MD5, TTL, GTSM) and the options an accepted connection gets once its peer is
//! known.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use socket2::SockRef;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::config::PeerConfig;
use crate::sys;

/// Binds the listening socket.
pub(crate) fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        // "::" takes IPv4 peers too (as v4-mapped addresses).
        SockRef::from(&sock).set_only_v6(false)?;
    }
    // The SYN-ACK leaves with the listener's TTL: 255, so a peer using GTSM (which drops
    // anything below 255 from one hop away) accepts it. Accepted connections then get each
    // peer's own TTL (set_ttl).
    {
        let s = SockRef::from(&sock);
        if addr.is_ipv6() {
            s.set_unicast_hops_v6(255)?;
        }
        // On an IPv6 socket this is the TTL of v4-mapped connections.
        let _ = s.set_ttl_v4(255);
    }
    sock.bind(addr)?;
    sock.listen(1024)
}

/// The address a peer has on `listener`'s socket family (v4-mapped on an IPv6 listener).
fn on_listener(listener: &TcpListener, peer: IpAddr) -> Option<IpAddr> {
    let v6 = listener.local_addr().ok()?.is_ipv6();
    match (v6, peer) {
        (false, IpAddr::V4(_)) | (true, IpAddr::V6(_)) => Some(peer),
        (true, IpAddr::V4(a)) => Some(IpAddr::V6(a.to_ipv6_mapped())),
        (false, IpAddr::V6(_)) => None,
    }
}

/// GTSM on the listener (RFC 5082 §3): segments with a TTL (hop limit) below `min` are dropped
/// by the kernel before a handshake completes, SYNs included; 0 lets every TTL in. On an
/// IPv6 listener both options are set, as it also carries IPv4 (v4-mapped) connections.
pub(crate) fn listener_min_ttl(listener: &TcpListener, min: u8) -> io::Result<()> {
    if listener.local_addr()?.is_ipv6() {
        sys::set_min_ttl(listener, true, min)?;
        // Best effort: an IPv6-only socket may refuse the IPv4 option.
        let _ = sys::set_min_ttl(listener, false, min);
        Ok(())
    } else {
        sys::set_min_ttl(listener, false, min)
    }
}

/// Installs (or with `None` removes) a peer's MD5 key on the listener, so its signed SYNs
/// are accepted.
pub(crate) fn listener_md5(
    listener: &TcpListener,
    peer: IpAddr,
    key: Option<&str>,
) -> io::Result<()> {
    match on_listener(listener, peer) {
        Some(a) => sys::set_md5_key(listener, a, key.map(str::as_bytes)),
        None => Ok(()),
    }
}

/// The peer's address as the application knows it (v4-mapped addresses unmapped).
pub(crate) fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        a => a,
    }
}

/// TTL and GTSM for a connection to or from `peer`.
pub(crate) fn set_ttl(stream: &TcpStream, peer: &PeerConfig, local_as: u32) -> io::Result<()> {
    let v6 = stream.local_addr()?.is_ipv6();
    let ttl = u32::from(peer.outgoing_ttl(local_as));
    let s = SockRef::from(stream);
    if v6 {
        s.set_unicast_hops_v6(ttl)?;
        // An IPv6 socket carrying IPv4 (v4-mapped) uses the IPv4 TTL.
        let _ = s.set_ttl_v4(ttl);
    } else {
        s.set_ttl_v4(ttl)?;
    }
    if let Some(min) = peer.min_ttl() {
        sys::set_min_ttl(stream, v6 && !is_mapped(stream), min)?;
    }
    s.set_tcp_nodelay(true)?;
    Ok(())
}

fn is_mapped(stream: &TcpStream) -> bool {
    matches!(stream.local_addr(), Ok(SocketAddr::V6(a)) if a.ip().to_ipv4_mapped().is_some())
}

/// Opens a connection to the peer with its source address, MD5 key and TTL.
pub(crate) async fn connect(peer: &PeerConfig, local_as: u32) -> io::Result<TcpStream> {
    let remote = SocketAddr::new(peer.address, peer.port);
    let sock = if remote.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(pw) = &peer.password {
        sys::set_md5_key(&sock, peer.address, Some(pw.as_bytes()))?;
    }
    let ttl = u32::from(peer.outgoing_ttl(local_as));
    {
        let s = SockRef::from(&sock);
        if remote.is_ipv4() {
            s.set_ttl_v4(ttl)?;
        } else {
            s.set_unicast_hops_v6(ttl)?;
        }
        if let Some(min) = peer.min_ttl() {
            sys::set_min_ttl(&sock, remote.is_ipv6(), min)?;
        }
    }
    if let Some(src) = peer.source_address {
        sock.bind(SocketAddr::new(src, 0))?;
    }
    let stream = sock.connect(remote).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The local address of a connection, unmapped.
pub(crate) fn local_ip(stream: &TcpStream) -> Option<IpAddr> {
    stream.local_addr().ok().map(|a| canonical(a.ip()))
}

/// A link-local-free IPv6 address is what we can offer as an IPv6 next hop.
pub(crate) fn usable_v6(a: Ipv6Addr) -> bool {
    !a.is_unspecified() && !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80
}
