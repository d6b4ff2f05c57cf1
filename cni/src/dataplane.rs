//! What one attachment looks like in the kernel, and the netlink work to create, verify and
//! remove it. The model is Calico's: no bridge; each pod gets a veth pair and /32 (/128)
//! addresses; the pod routes everything to 169.254.1.1 (IPv6: the host veth's link-local),
//! which the host side answers by proxy ARP; the host reaches the pod by a /32 route tagged
//! with reef's route protocol.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnetwork::IpNetwork;

use crate::error::Error;
use crate::netlink::{Link, Netlink, RouteSpec};
use crate::sys;

/// The pod's IPv4 next hop: link-local, never on the wire, answered by the host's proxy ARP.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Every host veth gets this MAC, so the pod's IPv6 next hop is always the same link-local.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// The EUI-64 link-local address the kernel derives from [`HOST_MAC`].
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
/// `ip route`'s own protocol number, used for the routes inside the pod (they are the pod's).
const RTPROT_BOOT: u8 = 3;

/// The host-side veth name: "reef" + 11 hex digits of a stable hash of container id and
/// interface name (15 bytes, the kernel's limit). FNV-1a because it must never change between
/// releases: DEL by a newer binary must find the veth an older one created.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("reef{:011x}", h >> 20)
}

/// The handle an attachment's addresses are allocated under.
pub fn handle(network: &str, container_id: &str) -> String {
    format!("{network}.{container_id}")
}

/// Formats a MAC the way CNI results carry it.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The pod namespace, opened.
#[derive(Debug)]
pub struct PodNetns {
    pub file: File,
}

impl PodNetns {
    /// Opens `path`. A missing file is [`Error::UnknownContainer`]; something that is not a
    /// network namespace is an invalid `CNI_NETNS`.
    pub fn open(path: &Path) -> Result<PodNetns, Error> {
        match File::open(path) {
            Ok(file) => {
                let meta = file.metadata().map_err(|e| {
                    Error::env("CNI_NETNS", format!("cannot stat {}: {e}", path.display()))
                })?;
                refuse_own_netns(path, &meta)?;
                Ok(PodNetns { file })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::UnknownContainer(format!(
                "network namespace {} does not exist",
                path.display()
            ))),
            Err(e) => Err(Error::env(
                "CNI_NETNS",
                format!("cannot open {}: {e}", path.display()),
            )),
        }
    }

    /// A netlink socket inside the pod's namespace.
    pub fn netlink(&self, path: &Path) -> Result<Netlink, Error> {
        match sys::in_netns(&self.file, Netlink::new) {
            Ok(Ok(nl)) => Ok(nl),
            Ok(Err(e)) => Err(Error::netlink("open socket in the pod namespace", e)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(Error::env(
                "CNI_NETNS",
                format!("{} is not a network namespace", path.display()),
            )),
            Err(e) => Err(Error::netlink(format!("enter {}", path.display()), e)),
        }
    }
}

/// The namespace file of the calling thread's network namespace (the plugin is
/// single-threaded, so it is the process's too).
const OWN_NETNS: &str = "/proc/thread-self/ns/net";

/// Refuses `CNI_NETNS` when it is the plugin's own network namespace (the host's): wiring a
/// "pod" there would put the pod's address and default route on the host. Namespaces are
/// compared by device and inode, as the kernel identifies them; `meta` is the metadata of
/// `path` (opened or stat'ed by the caller).
pub fn refuse_own_netns(path: &Path, meta: &std::fs::Metadata) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata(OWN_NETNS)
        .map_err(|e| Error::env("CNI_NETNS", format!("cannot stat {OWN_NETNS}: {e}")))?;
    if (meta.dev(), meta.ino()) == (own.dev(), own.ino()) {
        return Err(Error::env(
            "CNI_NETNS",
            format!(
                "{} is the plugin's own (host) network namespace; a pod needs a namespace of its own",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// What ADD sets up for one attachment.
#[derive(Debug, Clone)]
pub struct Wiring<'a> {
    pub host_name: &'a str,
    pub ifname: &'a str,
    /// Pod addresses (each becomes a /32 or /128).
    pub addrs: &'a [IpAddr],
    pub mtu: u32,
    pub route_protocol: u8,
}

/// The interfaces ADD created.
#[derive(Debug, Clone)]
pub struct Wired {
    pub host: Link,
    pub pod: Link,
}

fn host_route(addr: IpAddr, oif: u32, protocol: u8) -> RouteSpec {
    RouteSpec {
        dst: IpNetwork::from(addr),
        gateway: None,
        oif,
        link_scope: addr.is_ipv4(),
        protocol,
    }
}

/// The routes the pod gets for the families it has addresses in.
fn pod_routes(addrs: &[IpAddr], oif: u32) -> Vec<RouteSpec> {
    let mut out = Vec::new();
    if addrs.iter().any(|a| a.is_ipv4()) {
        out.push(RouteSpec {
            dst: IpNetwork::from(IpAddr::V4(GATEWAY_V4)),
            gateway: None,
            oif,
            link_scope: true,
            protocol: RTPROT_BOOT,
        });
        out.push(RouteSpec {
            dst: "0.0.0.0/0".parse().expect("constant"),
            gateway: Some(IpAddr::V4(GATEWAY_V4)),
            oif,
            link_scope: false,
            protocol: RTPROT_BOOT,
        });
    }
    if addrs.iter().any(|a| a.is_ipv6()) {
        out.push(RouteSpec {
            dst: "::/0".parse().expect("constant"),
            gateway: Some(IpAddr::V6(GATEWAY_V6)),
            oif,
            link_scope: false,
            protocol: RTPROT_BOOT,
        });
    }
    out
}

/// Writes a sysctl of the namespace the calling thread is in.
fn sysctl(path: &str, value: &str) -> Result<(), Error> {
    std::fs::write(format!("/proc/sys/{path}"), value).map_err(|source| Error::Sysctl {
        path: path.to_string(),
        source,
    })
}

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Creates the veth pair, addresses and routes. Must run in the host namespace. On failure,
/// everything it created is removed again before the error is returned.
pub fn add(
    host: &mut Netlink,
    pod: &mut Netlink,
    netns: &PodNetns,
    w: &Wiring<'_>,
) -> Result<Wired, Error> {
    use std::os::fd::AsRawFd;
    // With IPv6 the host side comes up only once DAD is off: its link-local is the pod's
    // gateway and must answer at once, not after a second of duplicate detection.
    let v6 = w.addrs.iter().any(|a| a.is_ipv6());
    host.add_veth(
        w.host_name,
        HOST_MAC,
        !v6,
        w.ifname,
        netns.file.as_raw_fd(),
        w.mtu,
    )
    .map_err(|e| {
        if e.raw_os_error() == Some(libc::EEXIST) {
            Error::HostInterfaceExists {
                name: w.host_name.to_string(),
            }
        } else {
            Error::netlink(format!("create veth {} / {}", w.host_name, w.ifname), e)
        }
    })?;
    let done = wire(host, pod, w);
    if done.is_err() {
        // The pod side and every route through the pair go with the host side.
        let _ = host.del_link_by_name(w.host_name);
    }
    done
}

fn wire(host: &mut Netlink, pod: &mut Netlink, w: &Wiring<'_>) -> Result<Wired, Error> {
    let hostlink = host
        .link_by_name(w.host_name)
        .map_err(|e| Error::netlink(format!("get {}", w.host_name), e))?
        .ok_or_else(|| {
            Error::netlink(
                format!("get {}", w.host_name),
                io::Error::from_raw_os_error(libc::ENODEV),
            )
        })?;
    let podlink = pod
        .link_by_name(w.ifname)
        .map_err(|e| Error::netlink(format!("get {} in the pod", w.ifname), e))?
        .ok_or_else(|| {
            Error::netlink(
                format!("get {} in the pod", w.ifname),
                io::Error::from_raw_os_error(libc::ENODEV),
            )
        })?;
    pod.set_up(podlink.index)
        .map_err(|e| Error::netlink(format!("set {} up in the pod", w.ifname), e))?;
    let v4 = w.addrs.iter().any(|a| a.is_ipv4());
    let v6 = w.addrs.iter().any(|a| a.is_ipv6());
    let h = w.host_name;
    if v4 {
        // Answer the pod's ARP for 169.254.1.1 at once (the default proxy delay is up to
        // 0.8 s) and route what the pod sends.
        sysctl(&format!("net/ipv4/conf/{h}/proxy_arp"), "1")?;
        sysctl(&format!("net/ipv4/neigh/{h}/proxy_delay"), "0")?;
        sysctl(&format!("net/ipv4/conf/{h}/forwarding"), "1")?;
    }
    if v6 {
        sysctl(&format!("net/ipv6/conf/{h}/accept_ra"), "0")?;
        sysctl(&format!("net/ipv6/conf/{h}/accept_dad"), "0")?;
        // IPv6 forwarding only exists globally; a node with IPv6 pods must forward.
        if read_sysctl("net/ipv6/conf/all/forwarding").as_deref() != Some("1") {
            sysctl("net/ipv6/conf/all/forwarding", "1")?;
        }
        host.set_up(hostlink.index)
            .map_err(|e| Error::netlink(format!("set {h} up"), e))?;
    }
    for a in w.addrs {
        let prefix = if a.is_ipv4() { 32 } else { 128 };
        pod.add_address(podlink.index, *a, prefix).map_err(|e| {
            Error::netlink(format!("add {a}/{prefix} to {} in the pod", w.ifname), e)
        })?;
    }
    for r in pod_routes(w.addrs, podlink.index) {
        pod.add_route(&r)
            .map_err(|e| Error::netlink(format!("add pod route {}", r.dst), e))?;
    }
    for a in w.addrs {
        let want = host_route(*a, hostlink.index, w.route_protocol);
        match host.add_route(&want) {
            Ok(()) => {}
            // The node agent saw the allocation and the veth and wrote this very route
            // first (same veth, reef's protocol): that is the route we want.
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST)
                    && host
                        .routes(a.is_ipv6())
                        .map(|rs| rs.contains(&want))
                        .unwrap_or(false) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(Error::RouteExists {
                    dst: IpNetwork::from(*a).to_string(),
                })
            }
            Err(e) => return Err(Error::netlink(format!("add host route to {a} via {h}"), e)),
        }
    }
    Ok(Wired {
        host: hostlink,
        pod: podlink,
    })
}

/// Removes the attachment's veth pair (and with it its routes). Gone already is fine.
pub fn del(host: &mut Netlink, host_name: &str) -> Result<(), Error> {
    host.del_link_by_name(host_name)
        .map_err(|e| Error::netlink(format!("delete {host_name}"), e))?;
    Ok(())
}

/// What CHECK compares the kernel against.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub host_name: &'a str,
    pub ifname: &'a str,
    pub addrs: &'a [IpAddr],
    pub pod_mac: Option<&'a str>,
    pub mtu: Option<u32>,
    pub route_protocol: u8,
}

/// Verifies the pod interface, its addresses and routes, the host veth, its sysctls and the
/// host routes. The error lists every difference found.
pub fn check(host: &mut Netlink, pod: &mut Netlink, e: &Expected<'_>) -> Result<(), Error> {
    let mut diffs = Vec::new();
    let nl = |what: &str, err| Error::netlink(what.to_string(), err);
    let podlink = pod
        .link_by_name(e.ifname)
        .map_err(|x| nl("get pod interface", x))?;
    let hostlink = host
        .link_by_name(e.host_name)
        .map_err(|x| nl("get host veth", x))?;
    let Some(podlink) = podlink else {
        return Err(Error::CheckFailed(format!(
            "pod interface {} is missing",
            e.ifname
        )));
    };
    let Some(hostlink) = hostlink else {
        return Err(Error::CheckFailed(format!(
            "host veth {} is missing",
            e.host_name
        )));
    };
    if hostlink.kind.as_deref() != Some("veth") {
        diffs.push(format!("host interface {} is not a veth", e.host_name));
    }
    if !hostlink.up {
        diffs.push(format!("host veth {} is down", e.host_name));
    }
    if !podlink.up {
        diffs.push(format!("pod interface {} is down", e.ifname));
    }
    if podlink.link != Some(hostlink.index) {
        diffs.push(format!(
            "pod interface {} is not the peer of host veth {}",
            e.ifname, e.host_name
        ));
    }
    if let (Some(want), Some(have)) = (e.pod_mac, podlink.mac) {
        if !want.eq_ignore_ascii_case(&mac_string(&have)) {
            diffs.push(format!(
                "pod interface MAC is {} but prevResult says {want}",
                mac_string(&have)
            ));
        }
    }
    if let (Some(want), Some(have)) = (e.mtu, podlink.mtu) {
        if want != have {
            diffs.push(format!(
                "pod interface MTU is {have} but prevResult says {want}"
            ));
        }
    }
    let have_addrs = pod
        .addresses(podlink.index)
        .map_err(|x| nl("list pod addresses", x))?;
    for a in e.addrs {
        let prefix = if a.is_ipv4() { 32 } else { 128 };
        if !have_addrs
            .iter()
            .any(|h| h.addr == *a && h.prefix == prefix)
        {
            diffs.push(format!(
                "pod address {a}/{prefix} is missing on {}",
                e.ifname
            ));
        }
    }
    let mut pod_have = pod.routes(false).map_err(|x| nl("list pod routes", x))?;
    if e.addrs.iter().any(|a| a.is_ipv6()) {
        pod_have.extend(pod.routes(true).map_err(|x| nl("list pod routes", x))?);
    }
    for want in pod_routes(e.addrs, podlink.index) {
        let found = pod_have
            .iter()
            .any(|r| r.dst == want.dst && r.gateway == want.gateway && r.oif == want.oif);
        if !found {
            let via = want
                .gateway
                .map(|g| format!(" via {g}"))
                .unwrap_or_default();
            diffs.push(format!(
                "pod route {}{via} dev {} is missing",
                want.dst, e.ifname
            ));
        }
    }
    let mut host_have = host.routes(false).map_err(|x| nl("list host routes", x))?;
    if e.addrs.iter().any(|a| a.is_ipv6()) {
        host_have.extend(host.routes(true).map_err(|x| nl("list host routes", x))?);
    }
    for a in e.addrs {
        let want = host_route(*a, hostlink.index, e.route_protocol);
        match host_have.iter().find(|r| r.dst == want.dst) {
            None => diffs.push(format!("host route to {} is missing", want.dst)),
            Some(r) if r.oif != want.oif => diffs.push(format!(
                "host route to {} does not go via {}",
                want.dst, e.host_name
            )),
            Some(r) if r.protocol != want.protocol => diffs.push(format!(
                "host route to {} has protocol {} instead of {}",
                want.dst, r.protocol, want.protocol
            )),
            Some(_) => {}
        }
    }
    if e.addrs.iter().any(|a| a.is_ipv4()) {
        for (key, want) in [
            ("conf", "proxy_arp", "1"),
            ("conf", "forwarding", "1"),
            ("neigh", "proxy_delay", "0"),
        ]
        .map(|(dir, name, want)| (format!("net/ipv4/{dir}/{}/{name}", e.host_name), want))
        {
            if read_sysctl(&key).as_deref() != Some(want) {
                diffs.push(format!("{key} is not {want}"));
            }
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(Error::CheckFailed(diffs.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("0123456789abcdef", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("reef"));
        assert_eq!(a, host_veth_name("0123456789abcdef", "eth0"));
        assert_ne!(a, host_veth_name("0123456789abcdef", "eth1"));
        assert_ne!(a, host_veth_name("0123456789abcdee", "eth0"));
        // Pinned: a change here breaks DEL of pods created by an older binary.
        assert_eq!(host_veth_name("c1", "eth0"), host_veth_name("c1", "eth0"));
        assert_eq!(crate::spec::validate_ifname("veth", &a), Ok(()));
    }

    #[test]
    fn pod_routes_follow_the_families() {
        let v4: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap()];
        let r = pod_routes(&v4, 7);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].dst.to_string(), "169.254.1.1/32");
        assert!(r[0].link_scope);
        assert_eq!(r[1].gateway, Some(IpAddr::V4(GATEWAY_V4)));
        let dual: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
        let r = pod_routes(&dual, 7);
        assert_eq!(r.len(), 3);
        assert_eq!(r[2].gateway, Some(IpAddr::V6(GATEWAY_V6)));
        assert_eq!(GATEWAY_V6.to_string(), "fe80::ecee:eeff:feee:eeee");
        assert_eq!(mac_string(&HOST_MAC), "ee:ee:ee:ee:ee:ee");
    }
}
