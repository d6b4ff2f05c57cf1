//! The allocation side of a plugin, behind a small trait so reef-cni and reef-ipam share it
//! and the data plane can be tested on its own.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::error::Error;
use crate::pod::AddressRequest;

/// Who an allocation is for; recorded with it in the datastore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocRequest<'a> {
    /// network name + "." + container id.
    pub handle: &'a str,
    pub ipv4: bool,
    pub ipv6: bool,
    pub container_id: &'a str,
    pub ifname: &'a str,
    /// From `CNI_ARGS` (K8S_POD_NAMESPACE / K8S_POD_NAME) when the runtime passes them.
    pub pod_namespace: Option<&'a str>,
    pub pod_name: Option<&'a str>,
    /// Pools or fixed addresses the pod's annotations ask for (default: any pool).
    pub addresses: &'a AddressRequest,
    /// The pod gets its block's prefix length, not a /32 (/128) (reef-ipam behind bridge or
    /// ptp): a block's network address, IPv4 broadcast address and IPv6 Subnet-Router anycast
    /// address must not be handed out.
    pub block_prefix: bool,
}

/// One address handed out, with the block it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub address: IpAddr,
    pub block: IpNetwork,
}

/// reef's IPAM as a plugin uses it. Implementations map their failures onto the plugin's
/// errors: no free address → [`Error::PoolExhausted`]; datastore unreachable or busy →
/// [`Error::TryAgainLater`]; a requested pool or address that is unknown or in no pool →
/// [`Error::InvalidAnnotation`]; a requested address someone else holds →
/// [`Error::AddressInUse`]; anything else → [`Error::Ipam`].
pub trait Ipam {
    /// Allocates one address per requested family under `req.handle` (or exactly the
    /// addresses of [`AddressRequest::Fixed`]), all or nothing. If the handle already holds
    /// addresses (a retried ADD), those are returned instead of new ones.
    fn allocate(&mut self, req: &AllocRequest<'_>) -> Result<Vec<Allocated>, Error>;
    /// Releases everything held by `handle`; an unknown handle is success.
    fn release(&mut self, handle: &str) -> Result<(), Error>;
    /// The addresses `handle` holds (CHECK).
    fn addresses(&mut self, handle: &str) -> Result<Vec<IpAddr>, Error>;
    /// Every handle that starts with `prefix` (GC: this network's attachments).
    fn handles(&mut self, prefix: &str) -> Result<Vec<String>, Error>;
    /// Ok when the datastore answers and this node may allocate (STATUS).
    fn ready(&mut self) -> Result<(), Error>;
}
