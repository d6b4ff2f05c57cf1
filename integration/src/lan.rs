//! One LAN for tests with a router: the router's namespace holds a bridge `br0` with the
//! router's address, and each node's namespace is wired to it by a veth (`eth0` in the node,
//! `v-<name>` on the bridge). The services tests, the LoadBalancer test and the services
//! benchmark build their fabric this way.

use crate::{Error, Netns};

/// A new namespace `tag` (made unique) with the bridge `br0` holding `cidr` (e.g.
/// `10.203.0.1/24`), up.
pub fn router(tag: &str, cidr: &str) -> Result<Netns, Error> {
    let router = Netns::new(tag)?;
    router.ip(["link", "add", "br0", "type", "bridge"])?;
    router.ip(["addr", "add", cidr, "dev", "br0"])?;
    router.ip(["link", "set", "br0", "up"])?;
    Ok(router)
}

/// A new namespace `tag` (made unique) whose `eth0` holds `cidr` and is a veth to `router`'s
/// `br0` (its end there named `v-<name>`).
pub fn node(router: &Netns, tag: &str, name: &str, cidr: &str) -> Result<Netns, Error> {
    let ns = Netns::new(tag)?;
    let host_end = format!("v-{name}");
    ns.ip([
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        &host_end,
        "netns",
        router.name(),
    ])?;
    ns.ip(["addr", "add", cidr, "dev", "eth0"])?;
    ns.ip(["link", "set", "eth0", "up"])?;
    router.ip(["link", "set", &host_end, "master", "br0", "up"])?;
    Ok(ns)
}
