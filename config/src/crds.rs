//! The custom resources of the `reef.dev/v1alpha1` API group. All are cluster-scoped: pools,
//! blocks and peers belong to the cluster's network, not to a namespace.
//!
//! IPAM state (IPAMBlock, BlockAffinity, IPAMHandle) is written by reef only; users read it
//! with `kubectl get` and change pools, peers and configuration.
//!
//! None of these types denies unknown fields: they are what every agent, CNI plugin and IPAM
//! reads from the datastore, and during an upgrade an older reef reads objects a newer one
//! wrote. A field it does not know is ignored (as Kubernetes clients do), where denying it
//! would make every list and watch of that kind fail on the old agent. What a user writes is
//! still checked strictly: `reef apply -f` refuses a field these types would ignore, naming
//! its path. The node config file (`node_config`) is the operator's own and stays strict.

// kube's derive takes one `#[kube(printcolumn(...))]` per column; clippy mistakes the
// repeated `type_ = "string"` for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{self, Problems};
use crate::{Error, IpipMode, PeerType};

/// The API group of every reef resource.
pub const GROUP: &str = "reef.dev";
/// The version of the API group these types describe.
pub const VERSION: &str = "v1alpha1";

/// Default block prefix length for IPv4 pools: 64 addresses per block.
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Default block prefix length for IPv6 pools: 64 addresses per block.
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;
/// Default AS number of the cluster (private range, as Calico's).
pub const DEFAULT_AS_NUMBER: u32 = 64512;
/// Default BGP port.
pub const DEFAULT_BGP_PORT: u16 = 179;
/// Name of the singleton IPAMConfig and BGPConfiguration resources.
pub const DEFAULT_NAME: &str = "default";

/// Label selector: every key must be present with the given value. Empty selects everything.
pub type LabelSelector = BTreeMap<String, String>;

/// Whether `selector` selects an object carrying `labels`.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// ---------------------------------------------------------------------------------------------
// IPPool

/// A range of pod addresses, cut into blocks that nodes claim.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1alpha1",
    kind = "IPPool",
    root = "IpPool"
)]
#[kube(plural = "ippools", shortname = "pool", category = "reef")]
#[kube(printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"))]
#[kube(printcolumn(name = "Block", type_ = "integer", json_path = ".spec.blockSize"))]
#[kube(printcolumn(name = "IPIP", type_ = "string", json_path = ".spec.ipipMode"))]
#[kube(printcolumn(name = "NAT", type_ = "boolean", json_path = ".spec.natOutgoing"))]
#[kube(printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disabled"))]
#[kube(printcolumn(
    name = "Age",
    type_ = "date",
    json_path = ".metadata.creationTimestamp"
))]
#[serde(rename_all = "camelCase")]
pub struct IpPoolSpec {
    /// The pool's prefix.
    #[schemars(schema_with = "schema::cidr")]
    pub cidr: IpNetwork,
    /// Prefix length of the blocks the pool is cut into (default 26 for IPv4, 122 for IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 128))]
    pub block_size: Option<u8>,
    /// When traffic to the pool's addresses on other nodes is encapsulated.
    #[serde(default)]
    pub ipip_mode: IpipMode,
    /// Masquerade traffic from pods in this pool to destinations outside every pool.
    #[serde(default)]
    pub nat_outgoing: bool,
    /// A disabled pool hands out no new addresses; existing ones stay.
    #[serde(default)]
    pub disabled: bool,
    /// Only nodes whose labels match all of these take blocks from the pool (empty: all).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: LabelSelector,
}

impl IpPoolSpec {
    /// A pool of `cidr` with the default block size and settings (an IPv6 pool's ipipMode
    /// is Never: IP-in-IP carries IPv4 only).
    pub fn new(cidr: IpNetwork) -> Self {
        IpPoolSpec {
            cidr,
            block_size: None,
            ipip_mode: if cidr.is_ipv6() {
                IpipMode::Never
            } else {
                IpipMode::default()
            },
            nat_outgoing: false,
            disabled: false,
            node_selector: LabelSelector::new(),
        }
    }

    /// The block prefix length in force (explicit or the family's default).
    pub fn effective_block_size(&self) -> u8 {
        self.block_size.unwrap_or(match self.cidr {
            IpNetwork::V4(_) => DEFAULT_BLOCK_SIZE_V4,
            IpNetwork::V6(_) => DEFAULT_BLOCK_SIZE_V6,
        })
    }

    /// Whether a node with these labels may take blocks from this pool.
    pub fn selects_node(&self, labels: &BTreeMap<String, String>) -> bool {
        selects(&self.node_selector, labels)
    }

    pub fn validate(&self) -> Result<(), Error> {
        let mut p = Problems::default();
        p.network("spec.cidr", &self.cidr);
        let max = match self.cidr {
            IpNetwork::V4(_) => 32,
            IpNetwork::V6(_) => 128,
        };
        let bs = self.effective_block_size();
        if bs > max {
            p.add(
                "spec.blockSize",
                format!("{bs} is longer than an address of the pool's family ({max} bits)"),
                format!("use a value between {} and {max}", self.cidr.prefix()),
            );
        } else if bs < self.cidr.prefix() {
            p.add(
                "spec.blockSize",
                format!("blocks of /{bs} are larger than the pool {}", self.cidr),
                format!("use a value between {} and {max}", self.cidr.prefix()),
            );
        } else if max - bs > 16 {
            // A block's allocation list has one entry per address; keep it a small object.
            p.add(
                "spec.blockSize",
                format!("/{bs} blocks hold {} addresses", 1u128 << (max - bs)),
                format!(
                    "use a prefix of at least /{} (at most 65536 addresses per block)",
                    max - 16
                ),
            );
        }
        if self.cidr.is_ipv6() && self.ipip_mode != IpipMode::Never {
            // The tunnel would only report every remote IPv6 block as unroutable.
            p.add(
                "spec.ipipMode",
                format!(
                    "{:?} on an IPv6 pool: IP-in-IP carries IPv4 only",
                    self.ipip_mode
                ),
                "set ipipMode: Never (IPv6 pods on other subnets are reached through BGP-learned \
                 routes, or directly on one subnet)"
                    .to_string(),
            );
        }
        p.finish("IPPool")
    }
}

// ---------------------------------------------------------------------------------------------
// IPAMBlock

/// One handed-out address of a block and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// Offset of the address from the block's first address.
    pub ordinal: u32,
    /// The handle that owns the address (release by handle frees it).
    pub handle_id: String,
    /// The block's sequence number when this address was handed out; garbage collection
    /// frees an address only if it still carries the number it saw, so an address released and
    /// reused meanwhile is never freed by mistake.
    pub sequence: u64,
    #[serde(default)]
    pub attributes: AllocationAttributes,
}

/// Who an address was handed to, recorded for `check` and for people reading the block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocationAttributes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The node the address was allocated on (may differ from the block's affinity when
    /// borrowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What the address is for when it is not a pod's (e.g. `tunnel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Seconds since the Unix epoch when the address was handed out.
    #[serde(default)]
    pub allocated_at: u64,
}

/// A block of addresses cut from a pool, with its allocations. Written by reef's IPAM only.
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1alpha1",
    kind = "IPAMBlock",
    root = "IpamBlock"
)]
#[kube(plural = "ipamblocks", category = "reef")]
#[kube(printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"))]
#[kube(printcolumn(name = "Node", type_ = "string", json_path = ".spec.affinity"))]
#[kube(printcolumn(name = "In-Use", type_ = "integer", json_path = ".spec.inUse"))]
#[kube(printcolumn(name = "Free", type_ = "integer", json_path = ".spec.free"))]
#[kube(printcolumn(
    name = "Age",
    type_ = "date",
    json_path = ".metadata.creationTimestamp"
))]
#[serde(rename_all = "camelCase")]
pub struct IpamBlockSpec {
    #[schemars(schema_with = "schema::cidr")]
    pub cidr: IpNetwork,
    /// The node the block is affine to; none once the node released it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// Handed-out addresses, sorted by ordinal.
    #[serde(default)]
    pub allocations: Vec<Allocation>,
    /// Free ordinals in the order they are handed out (released ones go to the back).
    #[serde(default)]
    pub unallocated: Vec<u32>,
    /// Incremented on every allocation; see [`Allocation::sequence`].
    #[serde(default)]
    pub sequence_number: u64,
    /// Number of allocations (kept for `kubectl get`; always `allocations` length).
    #[serde(default)]
    pub in_use: u32,
    /// Number of free addresses (kept for `kubectl get`; always `unallocated` length).
    #[serde(default)]
    pub free: u32,
}

// ---------------------------------------------------------------------------------------------
// BlockAffinity

/// Where a node's claim on a block stands. A claim is written `Pending`, the block is created
/// or taken over, then the claim is `Confirmed`; releasing goes through `PendingDeletion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AffinityState {
    Pending,
    Confirmed,
    PendingDeletion,
}

/// A node's claim on a block.
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(group = "reef.dev", version = "v1alpha1", kind = "BlockAffinity")]
#[kube(plural = "blockaffinities", category = "reef")]
#[kube(printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"))]
#[kube(printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"))]
#[kube(printcolumn(name = "State", type_ = "string", json_path = ".spec.state"))]
#[kube(printcolumn(
    name = "Age",
    type_ = "date",
    json_path = ".metadata.creationTimestamp"
))]
#[serde(rename_all = "camelCase")]
pub struct BlockAffinitySpec {
    pub node: String,
    #[schemars(schema_with = "schema::cidr")]
    pub cidr: IpNetwork,
    pub state: AffinityState,
}

// ---------------------------------------------------------------------------------------------
// IPAMHandle

/// One owner's addresses, counted per block, so release by handle visits only those blocks.
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1alpha1",
    kind = "IPAMHandle",
    root = "IpamHandle"
)]
#[kube(plural = "ipamhandles", category = "reef")]
#[kube(printcolumn(name = "Handle", type_ = "string", json_path = ".spec.handleId"))]
#[kube(printcolumn(
    name = "Age",
    type_ = "date",
    json_path = ".metadata.creationTimestamp"
))]
#[serde(rename_all = "camelCase")]
pub struct IpamHandleSpec {
    /// The handle as callers know it (the object name is a sanitised form of it).
    pub handle_id: String,
    /// Block CIDR → number of the handle's addresses in that block.
    #[serde(default)]
    pub blocks: BTreeMap<String, u32>,
}

// ---------------------------------------------------------------------------------------------
// IPAMConfig

/// Cluster-wide IPAM settings (one object, named `default`).
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1alpha1",
    kind = "IPAMConfig",
    root = "IpamConfig"
)]
#[kube(plural = "ipamconfigs", category = "reef")]
#[kube(printcolumn(name = "Strict", type_ = "boolean", json_path = ".spec.strictAffinity"))]
#[kube(printcolumn(
    name = "Auto",
    type_ = "boolean",
    json_path = ".spec.autoAllocateBlocks"
))]
#[kube(printcolumn(
    name = "Max-Blocks",
    type_ = "integer",
    json_path = ".spec.maxBlocksPerHost"
))]
#[serde(rename_all = "camelCase")]
pub struct IpamConfigSpec {
    /// Never hand out addresses from a block affine to another node.
    #[serde(default)]
    pub strict_affinity: bool,
    /// Let nodes claim new blocks when theirs are full.
    #[serde(default = "default_true")]
    pub auto_allocate_blocks: bool,
    /// Most blocks one node may claim (0: no limit).
    #[serde(default)]
    pub max_blocks_per_host: u32,
}

impl Default for IpamConfigSpec {
    fn default() -> Self {
        IpamConfigSpec {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 0,
        }
    }
}

fn default_true() -> bool {
    true
}

// ---------------------------------------------------------------------------------------------
// BGPConfiguration

/// Cluster-wide BGP settings (one object, named `default`).
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1alpha1",
    kind = "BGPConfiguration",
    root = "BgpConfiguration"
)]
#[kube(plural = "bgpconfigurations", category = "reef")]
#[kube(printcolumn(name = "AS", type_ = "integer", json_path = ".spec.asNumber"))]
#[kube(printcolumn(
    name = "Mesh",
    type_ = "boolean",
    json_path = ".spec.nodeToNodeMeshEnabled"
))]
#[kube(printcolumn(name = "Port", type_ = "integer", json_path = ".spec.listenPort"))]
#[serde(rename_all = "camelCase")]
pub struct BgpConfigurationSpec {
    /// AS of nodes that do not set their own.
    #[serde(default = "default_as")]
    pub as_number: u32,
    /// Every node peers with every other node (turn off when route reflectors are used).
    #[serde(default = "default_true")]
    pub node_to_node_mesh_enabled: bool,
    /// TCP port the nodes listen on and mesh peers connect to.
    #[serde(default = "default_port")]
    pub listen_port: u16,
    /// Hold time offered in OPEN, in seconds (0 or 3..=65535).
    #[serde(default = "default_hold_time")]
    pub hold_time_seconds: u16,
    /// How long peers keep our routes while we restart (graceful restart), in seconds.
    #[serde(default = "default_restart_time")]
    pub graceful_restart_seconds: u16,
    /// Extra prefixes every node advertises (e.g. service CIDRs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::cidr_list")]
    pub advertise_cidrs: Vec<IpNetwork>,
    /// TCP MD5 password (RFC 2385) of every node-to-node mesh session, from a Secret in reef's
    /// namespace (deploy/reef.yaml lets the agent read `reef-bgp-mesh`). When it cannot be
    /// read the mesh peers are not configured (a problem in `reef status`), never left
    /// unauthenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_password: Option<SecretKeyRef>,
    /// GTSM (RFC 5082) on mesh sessions: accept packets only from nodes at most this many
    /// hops away (1 on one subnet, more across routers).
    #[serde(
        default,
        rename = "nodeToNodeMeshTTLSecurity",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 254))]
    pub node_to_node_mesh_ttl_security: Option<u8>,
    /// The most prefixes one mesh peer may send before its session is stopped. Default:
    /// derived from the pools (every block of every pool, plus borrowed-address headroom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub node_to_node_mesh_max_prefix: Option<u32>,
    /// The Services' cluster IP range(s) (the API server's `--service-cluster-ip-range`):
    /// every node advertises each CIDR whole to the BGP peers that take Service routes, so
    /// routers spread cluster-IP traffic over the nodes (ECMP). Kubernetes datastore only.
    #[serde(
        default,
        rename = "serviceClusterIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_cluster_ips: Vec<ServiceCidr>,
    /// Where Services' `spec.externalIPs` may lie: each such address inside one of these is
    /// advertised as a /32 (/128); one outside all of them is ignored and shown in
    /// `reef status`.
    #[serde(
        default,
        rename = "serviceExternalIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_external_ips: Vec<ServiceCidr>,
    /// Where LoadBalancer addresses (`status.loadBalancer.ingress[].ip`) may lie, advertised
    /// as for `serviceExternalIPs`.
    #[serde(
        default,
        rename = "serviceLoadBalancerIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_load_balancer_ips: Vec<ServiceCidr>,
    /// BGP communities (RFC 1997) added to Service routes, per kind of address.
    #[serde(default, skip_serializing_if = "ServiceCommunities::is_empty")]
    pub service_communities: ServiceCommunities,
}

/// One CIDR of Service addresses (the shape Calico's BGPConfiguration uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceCidr {
    #[schemars(schema_with = "schema::cidr")]
    pub cidr: IpNetwork,
}

/// Communities for each kind of Service route, written `"ASN:value"` (e.g. `"65000:100"`),
/// `no-export`, `no-advertise`, `no-export-subconfed` or a 32-bit number.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceCommunities {
    /// On the cluster IP CIDRs.
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<String>,
    /// On the /32 (/128) routes of external IPs.
    #[serde(default, rename = "externalIPs", skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<String>,
    /// On the /32 (/128) routes of LoadBalancer addresses.
    #[serde(
        default,
        rename = "loadBalancerIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub load_balancer_ips: Vec<String>,
}

impl ServiceCommunities {
    pub fn is_empty(&self) -> bool {
        self.cluster_ips.is_empty()
            && self.external_ips.is_empty()
            && self.load_balancer_ips.is_empty()
    }
}

/// Parses a community as [`ServiceCommunities`] writes it (the same forms as reef-bgp's
/// policy files).
pub fn parse_community(s: &str) -> Result<u32, String> {
    match s.trim() {
        "no-export" => return Ok(0xFFFF_FF01),
        "no-advertise" => return Ok(0xFFFF_FF02),
        "no-export-subconfed" => return Ok(0xFFFF_FF03),
        _ => {}
    }
    let s = s.trim();
    if let Some((hi, lo)) = s.split_once(':') {
        let part = |p: &str, what: &str| {
            p.parse::<u16>().map_err(|_| {
                format!("community {s:?}: the {what} part must be a number from 0 to 65535")
            })
        };
        return Ok((u32::from(part(hi, "AS")?) << 16) | u32::from(part(lo, "value")?));
    }
    s.parse::<u32>().map_err(|_| {
        format!("community {s:?} is not \"ASN:value\", a well-known name or a 32-bit number")
    })
}

impl BgpConfigurationSpec {
    /// Whether any Service address is to be advertised.
    pub fn advertises_services(&self) -> bool {
        !(self.service_cluster_ips.is_empty()
            && self.service_external_ips.is_empty()
            && self.service_load_balancer_ips.is_empty())
    }
}

fn default_as() -> u32 {
    DEFAULT_AS_NUMBER
}
fn default_port() -> u16 {
    DEFAULT_BGP_PORT
}
fn default_hold_time() -> u16 {
    90
}
fn default_restart_time() -> u16 {
    120
}

impl Default for BgpConfigurationSpec {
    fn default() -> Self {
        BgpConfigurationSpec {
            as_number: DEFAULT_AS_NUMBER,
            node_to_node_mesh_enabled: true,
            listen_port: DEFAULT_BGP_PORT,
            hold_time_seconds: default_hold_time(),
            graceful_restart_seconds: default_restart_time(),
            advertise_cidrs: Vec::new(),
            node_to_node_mesh_password: None,
            node_to_node_mesh_ttl_security: None,
            node_to_node_mesh_max_prefix: None,
            service_cluster_ips: Vec::new(),
            service_external_ips: Vec::new(),
            service_load_balancer_ips: Vec::new(),
            service_communities: ServiceCommunities::default(),
        }
    }
}

impl BgpConfigurationSpec {
    pub fn validate(&self) -> Result<(), Error> {
        let mut p = Problems::default();
        check_as(&mut p, "spec.asNumber", self.as_number);
        if self.listen_port == 0 {
            p.add(
                "spec.listenPort",
                "port 0",
                "use 179 or another port above 0",
            );
        }
        if matches!(self.hold_time_seconds, 1 | 2) {
            p.add(
                "spec.holdTimeSeconds",
                format!("{} s is not allowed by RFC 4271", self.hold_time_seconds),
                "use 0 (no keepalives) or at least 3",
            );
        }
        for (i, c) in self.advertise_cidrs.iter().enumerate() {
            p.network(&format!("spec.advertiseCidrs[{i}]"), c);
        }
        if let Some(s) = &self.node_to_node_mesh_password {
            s.check(&mut p, "spec.nodeToNodeMeshPassword");
        }
        if let Some(h) = self.node_to_node_mesh_ttl_security {
            if !(1..=254).contains(&h) {
                p.add(
                    "spec.nodeToNodeMeshTTLSecurity",
                    format!("{h} hops"),
                    "use 1 when every node is on one subnet, else the most routers between \
                     two nodes plus one (at most 254)",
                );
            }
        }
        if self.node_to_node_mesh_max_prefix == Some(0) {
            p.add(
                "spec.nodeToNodeMeshMaxPrefix",
                "0 prefixes would stop every mesh session at its first route",
                "leave it unset for the default derived from the pools, or set the most \
                 prefixes one node may send",
            );
        }
        self.check_services(&mut p);
        p.finish("BGPConfiguration")
    }

    fn check_services(&self, p: &mut Problems) {
        let lists = [
            ("spec.serviceClusterIPs", &self.service_cluster_ips),
            ("spec.serviceExternalIPs", &self.service_external_ips),
            (
                "spec.serviceLoadBalancerIPs",
                &self.service_load_balancer_ips,
            ),
        ];
        let mut seen: Vec<(String, IpNetwork)> = Vec::new();
        for (field, list) in lists {
            for (i, c) in list.iter().enumerate() {
                let f = format!("{field}[{i}].cidr");
                p.network(&f, &c.cidr);
                if c.cidr.prefix() == 0 {
                    p.add(
                        &f,
                        format!("{} would advertise a default route", c.cidr),
                        "give the Service range itself, e.g. 10.96.0.0/12",
                    );
                }
                if let Some((other, o)) = seen
                    .iter()
                    .find(|(_, o)| o.contains(c.cidr.network()) || c.cidr.contains(o.network()))
                {
                    p.add(
                        &f,
                        format!("{} overlaps {o} of {other}", c.cidr),
                        "give each Service address range once, under the kind of address it holds",
                    );
                }
                seen.push((f, c.cidr));
            }
        }
        let c = &self.service_communities;
        for (field, list) in [
            ("spec.serviceCommunities.clusterIPs", &c.cluster_ips),
            ("spec.serviceCommunities.externalIPs", &c.external_ips),
            (
                "spec.serviceCommunities.loadBalancerIPs",
                &c.load_balancer_ips,
            ),
        ] {
            for (i, s) in list.iter().enumerate() {
                if let Err(e) = parse_community(s) {
                    p.add(
                        format!("{field}[{i}]"),
                        e,
                        "write it as \"ASN:value\" with both parts 0-65535 (e.g. \"65000:100\"), \
                         or no-export / no-advertise / no-export-subconfed",
                    );
                }
            }
        }
    }
}

fn check_as(p: &mut Problems, field: &str, asn: u32) {
    // 0 and 65535 / 4294967295 are reserved (RFC 7300); 23456 is AS_TRANS (RFC 6793).
    if matches!(asn, 0 | 23456 | 65535 | u32::MAX) {
        p.add(
            field,
            format!("AS {asn} is reserved"),
            "use a private AS such as 64512-65534 or 4200000000-4294967294",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// BGPPeer

/// Where to find a BGP session password: a key of a Secret in the namespace the agent runs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

impl SecretKeyRef {
    /// Both parts are set (`field` is where the reference sits, e.g. `spec.password`).
    fn check(&self, p: &mut Problems, field: &str) {
        if self.name.is_empty() {
            p.add(
                format!("{field}.name"),
                "empty",
                "name the Secret holding the password",
            );
        }
        if self.key.is_empty() {
            p.add(
                format!("{field}.key"),
                "empty",
                "name the key of the Secret holding the password",
            );
        }
    }
}

/// A BGP speaker outside the mesh (a lab router, a top-of-rack switch, a route reflector), or
/// a set of reef nodes to peer with (route-reflector topologies).
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1alpha1",
    kind = "BGPPeer",
    root = "BgpPeer"
)]
#[kube(plural = "bgppeers", shortname = "peer", category = "reef")]
#[kube(printcolumn(name = "Peer", type_ = "string", json_path = ".spec.peerIP"))]
#[kube(printcolumn(name = "AS", type_ = "integer", json_path = ".spec.asNumber"))]
#[kube(printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"))]
#[kube(printcolumn(
    name = "RR-Client",
    type_ = "boolean",
    json_path = ".spec.routeReflectorClient"
))]
#[kube(printcolumn(
    name = "Age",
    type_ = "date",
    json_path = ".metadata.creationTimestamp"
))]
#[serde(rename_all = "camelCase")]
pub struct BgpPeerSpec {
    /// Address of the peer. Either this or `peerSelector`.
    #[serde(default, rename = "peerIP", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::ip")]
    pub peer_ip: Option<IpAddr>,
    /// Peer with every reef node whose labels match (e.g. the route reflectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<LabelSelector>,
    /// TCP port of the peer (default 179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
    /// The peer's AS. Required with `peerIP`; with `peerSelector` defaults to the nodes' AS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Only this node peers. Neither `node` nor `nodeSelector`: every node peers (global).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Only nodes whose labels match peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// TCP MD5 password (RFC 2385) from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretKeyRef>,
    /// GTSM (RFC 5082): accept packets only from at most this many hops away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 255))]
    pub ttl_security: Option<u8>,
    /// Stop the session when the peer sends more prefixes than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefix: Option<u32>,
    /// The peer is a route-reflector client of the selected nodes (they reflect its routes).
    #[serde(default)]
    pub route_reflector_client: bool,
    /// Keep the next hop the peer sent rather than the node's own when re-advertising.
    #[serde(default)]
    pub keep_original_next_hop: bool,
    /// Send this peer the Service routes BGPConfiguration asks for (cluster IP CIDRs,
    /// external and LoadBalancer addresses). Default: yes for a peer given by `peerIP` (a
    /// router); `false` keeps them from it. Never for `peerSelector` peers (reef nodes need
    /// no Service routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_service_routes: Option<bool>,
}

impl BgpPeerSpec {
    /// The mesh of why this peer applies, for status output.
    pub fn peer_type(&self) -> PeerType {
        if self.route_reflector_client {
            PeerType::RouteReflector
        } else if self.node.is_some() || self.node_selector.is_some() {
            PeerType::Node
        } else {
            PeerType::Global
        }
    }

    /// Whether the node `name` with `labels` sets up this peering.
    pub fn applies_to(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        match (&self.node, &self.node_selector) {
            (Some(n), _) => n == name,
            (None, Some(sel)) => selects(sel, labels),
            (None, None) => true,
        }
    }

    /// Whether this peer gets Service routes.
    pub fn takes_service_routes(&self) -> bool {
        self.peer_ip.is_some() && self.advertise_service_routes.unwrap_or(true)
    }

    /// The peer's port in force.
    pub fn port(&self) -> u16 {
        self.peer_port.unwrap_or(DEFAULT_BGP_PORT)
    }

    pub fn validate(&self) -> Result<(), Error> {
        let mut p = Problems::default();
        match (&self.peer_ip, &self.peer_selector) {
            (None, None) => p.add(
                "spec.peerIP",
                "neither peerIP nor peerSelector is set",
                "set the peer's address in peerIP, or peerSelector to peer with reef nodes",
            ),
            (Some(_), Some(_)) => p.add(
                "spec.peerSelector",
                "both peerIP and peerSelector are set",
                "keep one of them",
            ),
            (Some(_), None) if self.as_number.is_none() => p.add(
                "spec.asNumber",
                "missing for a peer given by peerIP",
                "set the peer's AS number",
            ),
            _ => {}
        }
        if let Some(asn) = self.as_number {
            check_as(&mut p, "spec.asNumber", asn);
        }
        if self.node.is_some() && self.node_selector.is_some() {
            p.add(
                "spec.nodeSelector",
                "both node and nodeSelector are set",
                "keep one of them",
            );
        }
        if let Some(n) = &self.node {
            p.dns_label("spec.node", n);
        }
        if self.peer_port == Some(0) {
            p.add("spec.peerPort", "port 0", "use 179 or another port above 0");
        }
        if self.ttl_security == Some(0) {
            p.add(
                "spec.ttlSecurity",
                "0 hops",
                "use 1 for a directly connected peer, or more for multihop",
            );
        }
        if let Some(s) = &self.password {
            s.check(&mut p, "spec.password");
        }
        if self.max_prefix == Some(0) {
            p.add(
                "spec.maxPrefix",
                "0 prefixes would stop the session at the first route",
                "leave it unset for no limit, or set the most prefixes the peer may send",
            );
        }
        if self.peer_selector.is_some() && self.advertise_service_routes == Some(true) {
            p.add(
                "spec.advertiseServiceRoutes",
                "Service routes go to routers outside the cluster, not to reef nodes (peerSelector)",
                "remove advertiseServiceRoutes, or give the router's address in peerIP",
            );
        }
        p.finish("BGPPeer")
    }
}

// ---------------------------------------------------------------------------------------------
// ReefNode

/// What the mesh needs to know about one node; the agent registers it and fills its status.
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(group = "reef.dev", version = "v1alpha1", kind = "ReefNode")]
#[kube(plural = "reefnodes", shortname = "rn", category = "reef")]
#[kube(status = "ReefNodeStatus")]
#[kube(printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"))]
#[kube(printcolumn(name = "AS", type_ = "integer", json_path = ".spec.asNumber"))]
#[kube(printcolumn(name = "Tunnel", type_ = "string", json_path = ".spec.tunnelAddress"))]
#[kube(printcolumn(
    name = "Peers-Up",
    type_ = "integer",
    json_path = ".status.establishedPeers"
))]
#[kube(printcolumn(name = "Peers", type_ = "integer", json_path = ".status.totalPeers"))]
#[kube(printcolumn(
    name = "Routes",
    type_ = "integer",
    json_path = ".status.routesProgrammed"
))]
#[kube(printcolumn(
    name = "Age",
    type_ = "date",
    json_path = ".metadata.creationTimestamp"
))]
#[serde(rename_all = "camelCase")]
pub struct ReefNodeSpec {
    /// The node's IPv4 address with its subnet's prefix length, e.g. 192.168.1.10/24.
    #[schemars(schema_with = "schema::interface_address")]
    pub address: IpNetwork,
    /// The node's IPv6 address with prefix length, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::interface_address")]
    pub address_v6: Option<IpNetwork>,
    /// The node's AS (default: BGPConfiguration's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Address of the node's IP-in-IP tunnel device, from IPAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::ip")]
    pub tunnel_address: Option<IpAddr>,
    /// Makes the node a route reflector with this cluster ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::ip")]
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
}

impl ReefNodeSpec {
    pub fn validate(&self) -> Result<(), Error> {
        let mut p = Problems::default();
        if !self.address.is_ipv4() {
            p.add(
                "spec.address",
                format!("{} is not IPv4", self.address),
                "put the IPv4 address here and the IPv6 one in addressV6",
            );
        }
        if let Some(a) = &self.address_v6 {
            if !a.is_ipv6() {
                p.add(
                    "spec.addressV6",
                    format!("{a} is not IPv6"),
                    "put an IPv6 address with prefix length, e.g. fd00::10/64",
                );
            }
        }
        if let Some(asn) = self.as_number {
            check_as(&mut p, "spec.asNumber", asn);
        }
        p.finish("ReefNode")
    }
}

/// A BGP session's state (RFC 4271 §8.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum BgpSessionState {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

/// One of the node's BGP sessions as the agent last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    #[schemars(schema_with = "schema::ip")]
    pub address: IpAddr,
    pub peer_type: PeerType,
    pub state: BgpSessionState,
    /// RFC 3339 time the session entered `state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default)]
    pub prefixes_received: u32,
    #[serde(default)]
    pub prefixes_accepted: u32,
    #[serde(default)]
    pub prefixes_sent: u32,
}

/// What the agent reports about its node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReefNodeStatus {
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
    /// Number of `peers` in state Established (for `kubectl get`).
    #[serde(default)]
    pub established_peers: u32,
    #[serde(default)]
    pub total_peers: u32,
    /// Blocks the node advertises.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::cidr_list")]
    pub blocks: Vec<IpNetwork>,
    /// Routes the node's plan wants in the kernel (pods, own blocks, other nodes' blocks).
    #[serde(default)]
    pub routes_desired: u32,
    /// Of those, the ones in the kernel now (fewer: `reef status` on the node says why).
    #[serde(default)]
    pub routes_programmed: u32,
    /// RFC 3339 time of the last update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
}

impl ReefNodeStatus {
    /// Sets `peers` and the counts derived from them.
    pub fn set_peers(&mut self, peers: Vec<PeerStatus>) {
        self.established_peers = peers
            .iter()
            .filter(|p| p.state == BgpSessionState::Established)
            .count() as u32;
        self.total_peers = peers.len() as u32;
        self.peers = peers;
    }
}

// ---------------------------------------------------------------------------------------------
// LoadBalancerIPPool

/// The `spec.loadBalancerClass` reef's LoadBalancer IP assignment answers to. Services without
/// a class are reef's too; any other class belongs to another implementation and is left alone.
pub const LOAD_BALANCER_CLASS: &str = "reef.dev/lb";
/// Service annotation requesting specific LoadBalancer addresses (comma-separated, one per
/// family), the dual-stack form of `spec.loadBalancerIP`.
pub const LOAD_BALANCER_IPS_ANNOTATION: &str = "reef.dev/loadBalancerIPs";

/// Addresses reef hands to Services of type LoadBalancer. The allocations live in the pool's
/// status, written with a compare-and-swap on its resourceVersion (see
/// `reef_ipam::loadbalancer`).
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1alpha1",
    kind = "LoadBalancerIPPool",
    root = "LoadBalancerIpPool"
)]
#[kube(
    plural = "loadbalancerippools",
    shortname = "lbpool",
    category = "reef"
)]
#[kube(status = "LoadBalancerIpPoolStatus")]
#[kube(printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidrs"))]
#[kube(printcolumn(name = "Used", type_ = "integer", json_path = ".status.used"))]
#[kube(printcolumn(name = "Free", type_ = "integer", json_path = ".status.free"))]
#[kube(printcolumn(name = "Auto", type_ = "boolean", json_path = ".spec.autoAssign"))]
#[kube(printcolumn(name = "Problem", type_ = "string", json_path = ".status.problem"))]
#[kube(printcolumn(
    name = "Age",
    type_ = "date",
    json_path = ".metadata.creationTimestamp"
))]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIpPoolSpec {
    /// IPv4 and IPv6 prefixes (`198.51.100.0/28`) and inclusive ranges
    /// (`198.51.100.10-198.51.100.20`) the pool hands out.
    pub cidrs: Vec<String>,
    /// The Services (by label) that may get addresses from the pool; empty: all.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_selector: LabelSelector,
    /// Whether Services that request no address get one from this pool (default true);
    /// false: only `spec.loadBalancerIP` / the annotation can take its addresses.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
}

/// What reef records and reports about a LoadBalancer pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIpPoolStatus {
    /// Every address handed out, with its Service (the compare-and-swap on the pool guards it).
    #[serde(default)]
    pub allocations: Vec<LoadBalancerAllocation>,
    /// Addresses handed out.
    #[serde(default)]
    pub used: u64,
    /// Addresses left (saturating at 2^64-1 for large IPv6 pools).
    #[serde(default)]
    pub free: u64,
    /// Why the pool hands nothing out (bad entry, overlap with another pool); none when usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One LoadBalancer address and the Service holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerAllocation {
    #[schemars(schema_with = "schema::ip")]
    pub ip: IpAddr,
    /// `namespace/name` of the Service.
    pub service: String,
    /// The Service's UID: a Service deleted and created again under the same name is another.
    pub uid: String,
    /// Seconds since the Unix epoch when the address was handed out.
    #[serde(default)]
    pub allocated_at: u64,
}

/// One entry of a LoadBalancer pool's `spec.cidrs`: the inclusive range of addresses it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LbRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl LbRange {
    /// Parses `a.b.c.d/n`, `x::/n` or `first-last` (same family, first ≤ last). A prefix with
    /// host bits set is refused (almost always a typo).
    pub fn parse(s: &str) -> Result<LbRange, String> {
        let s = s.trim();
        if let Some((a, b)) = s.split_once('-') {
            let first: IpAddr = a
                .trim()
                .parse()
                .map_err(|_| format!("{:?} is not an IP address", a.trim()))?;
            let last: IpAddr = b
                .trim()
                .parse()
                .map_err(|_| format!("{:?} is not an IP address", b.trim()))?;
            if first.is_ipv4() != last.is_ipv4() {
                return Err(format!("{s}: the two ends are of different families"));
            }
            if ip_bits(first) > ip_bits(last) {
                return Err(format!("{s}: the first address is after the last"));
            }
            return Ok(LbRange { first, last });
        }
        let net: IpNetwork = s.parse().map_err(|_| {
            format!("{s:?} is neither a CIDR (10.0.0.0/24) nor a range (10.0.0.1-10.0.0.9)")
        })?;
        if !s.contains('/') {
            // A lone address is a /32 (/128): accept it as a range of one.
            return Ok(LbRange {
                first: net.ip(),
                last: net.ip(),
            });
        }
        if net.network() != net.ip() {
            return Err(format!(
                "{net} has host bits set (use {}/{})",
                net.network(),
                net.prefix()
            ));
        }
        Ok(LbRange {
            first: net.network(),
            last: net.broadcast(),
        })
    }

    pub fn is_ipv4(&self) -> bool {
        self.first.is_ipv4()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4()
            && (ip_bits(self.first)..=ip_bits(self.last)).contains(&ip_bits(ip))
    }

    pub fn overlaps(&self, o: &LbRange) -> bool {
        self.is_ipv4() == o.is_ipv4()
            && ip_bits(self.first) <= ip_bits(o.last)
            && ip_bits(o.first) <= ip_bits(self.last)
    }

    /// Number of addresses (saturating for a whole IPv6 space).
    pub fn size(&self) -> u128 {
        (ip_bits(self.last) - ip_bits(self.first)).saturating_add(1)
    }

    /// The address `offset` after `first` (None past `last`).
    pub fn nth(&self, offset: u128) -> Option<IpAddr> {
        let v = ip_bits(self.first).checked_add(offset)?;
        if v > ip_bits(self.last) {
            return None;
        }
        Some(match self.first {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(v)),
        })
    }

    /// Offset of `ip` from `first` (only meaningful when `contains(ip)`).
    pub fn offset(&self, ip: IpAddr) -> u128 {
        ip_bits(ip).wrapping_sub(ip_bits(self.first))
    }
}

impl std::fmt::Display for LbRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl LoadBalancerIpPoolSpec {
    /// The pool's entries, parsed; the first problem names its field.
    pub fn ranges(&self) -> Result<Vec<LbRange>, Error> {
        self.validate()?;
        Ok(self
            .cidrs
            .iter()
            .filter_map(|c| LbRange::parse(c).ok())
            .collect())
    }

    pub fn validate(&self) -> Result<(), Error> {
        let mut p = Problems::default();
        if self.cidrs.is_empty() {
            p.add(
                "spec.cidrs",
                "no addresses",
                "give at least one CIDR (198.51.100.0/28) or range (198.51.100.10-198.51.100.20)",
            );
        }
        let mut seen: Vec<(usize, LbRange)> = Vec::new();
        for (i, c) in self.cidrs.iter().enumerate() {
            match LbRange::parse(c) {
                Ok(r) => {
                    if let Some((j, o)) = seen.iter().find(|(_, o)| o.overlaps(&r)) {
                        p.add(
                            format!("spec.cidrs[{i}]"),
                            format!("{c} overlaps spec.cidrs[{j}] ({o})"),
                            "give each address once",
                        );
                    }
                    seen.push((i, r));
                }
                Err(e) => p.add(
                    format!("spec.cidrs[{i}]"),
                    e,
                    "use a CIDR (198.51.100.0/28, fd00:lb::/120) or a range first-last of one family",
                ),
            }
        }
        p.finish("LoadBalancerIPPool")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(e: &Error) -> Vec<&str> {
        e.problems().iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn bgp_configuration_mesh_hardening_fields() {
        let c: BgpConfigurationSpec = serde_yaml::from_str(
            "nodeToNodeMeshPassword: {name: reef-bgp-mesh, key: password}\n\
             nodeToNodeMeshTTLSecurity: 2\nnodeToNodeMeshMaxPrefix: 5000\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.node_to_node_mesh_password,
            Some(SecretKeyRef {
                name: "reef-bgp-mesh".into(),
                key: "password".into()
            })
        );
        assert_eq!(c.node_to_node_mesh_ttl_security, Some(2));
        assert_eq!(c.node_to_node_mesh_max_prefix, Some(5000));
        // Left out: no password, no GTSM, the derived max-prefix.
        let d: BgpConfigurationSpec = serde_yaml::from_str("asNumber: 64512\n").unwrap();
        assert_eq!(d, BgpConfigurationSpec::default());

        let bad: BgpConfigurationSpec = serde_yaml::from_str(
            "nodeToNodeMeshPassword: {name: '', key: ''}\n\
             nodeToNodeMeshTTLSecurity: 0\nnodeToNodeMeshMaxPrefix: 0\n",
        )
        .unwrap();
        let e = bad.validate().unwrap_err();
        assert_eq!(
            fields(&e),
            [
                "spec.nodeToNodeMeshPassword.name",
                "spec.nodeToNodeMeshPassword.key",
                "spec.nodeToNodeMeshTTLSecurity",
                "spec.nodeToNodeMeshMaxPrefix",
            ]
        );
        let mut c = BgpConfigurationSpec {
            node_to_node_mesh_ttl_security: Some(255),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("spec.nodeToNodeMeshTTLSecurity: 255 hops") && e.contains("at most 254"),
            "{e}"
        );
        c.node_to_node_mesh_ttl_security = Some(254);
        c.validate().unwrap();
        // The Kubernetes spelling is TTL, as Calico's; a camel-cased `Ttl` is not the field
        // (ignored as a newer reef's would be; `reef apply` refuses it as unknown).
        let c =
            serde_yaml::from_str::<BgpConfigurationSpec>("nodeToNodeMeshTtlSecurity: 1\n").unwrap();
        assert_eq!(c.node_to_node_mesh_ttl_security, None);
    }

    #[test]
    fn bgp_configuration_service_fields() {
        let c: BgpConfigurationSpec = serde_yaml::from_str(
            "serviceClusterIPs: [{cidr: 10.96.0.0/12}, {cidr: 'fd00:96::/108'}]\n\
             serviceExternalIPs: [{cidr: 192.0.2.0/24}]\n\
             serviceLoadBalancerIPs: [{cidr: 198.51.100.0/24}]\n\
             serviceCommunities: {clusterIPs: ['65000:100'], loadBalancerIPs: [no-export, '7']}\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.advertises_services());
        assert_eq!(c.service_cluster_ips[1].cidr.to_string(), "fd00:96::/108");
        assert_eq!(parse_community("65000:100"), Ok((65000 << 16) | 100));
        assert_eq!(parse_community("no-export"), Ok(0xFFFF_FF01));
        assert!(!BgpConfigurationSpec::default().advertises_services());

        let bad: BgpConfigurationSpec = serde_yaml::from_str(
            "serviceClusterIPs: [{cidr: 10.96.0.1/12}, {cidr: '::/0'}]\n\
             serviceExternalIPs: [{cidr: 192.0.2.0/24}]\n\
             serviceLoadBalancerIPs: [{cidr: 192.0.2.128/25}]\n\
             serviceCommunities: {externalIPs: ['65000:70000'], loadBalancerIPs: [bogus]}\n",
        )
        .unwrap();
        let e = bad.validate().unwrap_err();
        assert_eq!(
            fields(&e),
            [
                "spec.serviceClusterIPs[0].cidr",
                "spec.serviceClusterIPs[1].cidr",
                "spec.serviceLoadBalancerIPs[0].cidr",
                "spec.serviceCommunities.externalIPs[0]",
                "spec.serviceCommunities.loadBalancerIPs[0]",
            ]
        );
        let text = e.to_string();
        assert!(text.contains("use 10.96.0.0/12"), "{text}");
        assert!(
            text.contains("overlaps 192.0.2.0/24 of spec.serviceExternalIPs[0].cidr"),
            "{text}"
        );
        assert!(
            text.contains("the value part must be a number from 0 to 65535"),
            "{text}"
        );
    }

    #[test]
    fn bgp_peer_service_route_switch() {
        let router: BgpPeerSpec =
            serde_yaml::from_str("peerIP: 192.168.1.1\nasNumber: 65000\n").unwrap();
        assert!(router.takes_service_routes());
        let off: BgpPeerSpec = serde_yaml::from_str(
            "peerIP: 192.168.1.1\nasNumber: 65000\nadvertiseServiceRoutes: false\n",
        )
        .unwrap();
        off.validate().unwrap();
        assert!(!off.takes_service_routes());
        let rr: BgpPeerSpec = serde_yaml::from_str("peerSelector: {rr: 'true'}\n").unwrap();
        assert!(!rr.takes_service_routes());
        let bad: BgpPeerSpec =
            serde_yaml::from_str("peerSelector: {rr: 'true'}\nadvertiseServiceRoutes: true\n")
                .unwrap();
        let e = bad.validate().unwrap_err();
        assert_eq!(fields(&e), ["spec.advertiseServiceRoutes"]);
    }
}

#[cfg(test)]
mod lb_tests {
    use super::*;

    fn pool(cidrs: &[&str]) -> LoadBalancerIpPoolSpec {
        LoadBalancerIpPoolSpec {
            cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            service_selector: LabelSelector::new(),
            auto_assign: true,
        }
    }

    #[test]
    fn load_balancer_pool_entries_parse_as_cidrs_ranges_and_addresses() {
        let r = LbRange::parse("198.51.100.0/30").unwrap();
        assert_eq!(r.size(), 4);
        assert_eq!(r.nth(3), Some("198.51.100.3".parse().unwrap()));
        assert_eq!(r.nth(4), None);
        let r = LbRange::parse("198.51.100.10 - 198.51.100.12").unwrap();
        assert_eq!(r.size(), 3);
        assert!(r.contains("198.51.100.12".parse().unwrap()));
        assert!(!r.contains("198.51.100.13".parse().unwrap()));
        assert!(!r.contains("::1".parse().unwrap()));
        let r = LbRange::parse("fd00:1b::/120").unwrap();
        assert_eq!(r.size(), 256);
        assert_eq!(LbRange::parse("192.0.2.7").unwrap().size(), 1);
        assert!(LbRange::parse("10.0.0.0/8")
            .unwrap()
            .overlaps(&LbRange::parse("10.1.0.0-10.1.0.4").unwrap()));
        assert!(!LbRange::parse("10.0.0.0/8")
            .unwrap()
            .overlaps(&LbRange::parse("::/0").unwrap()));
    }

    #[test]
    fn load_balancer_pool_validation_names_the_entry() {
        assert!(pool(&["198.51.100.0/28", "fd00::/120"]).validate().is_ok());
        let e = pool(&[]).validate().unwrap_err();
        assert_eq!(e.problems()[0].field, "spec.cidrs");
        let e = pool(&[
            "198.51.100.0/28",
            "198.51.100.1/28",
            "nonsense",
            "10.0.0.9-10.0.0.1",
        ])
        .validate()
        .unwrap_err();
        let fields: Vec<&str> = e.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["spec.cidrs[1]", "spec.cidrs[2]", "spec.cidrs[3]"]);
        assert!(e.to_string().contains("host bits"), "{e}");
        let e = pool(&["10.0.0.0/24", "10.0.0.5-10.0.0.9"])
            .validate()
            .unwrap_err();
        assert!(
            e.problems()[0].problem.contains("overlaps spec.cidrs[0]"),
            "{e}"
        );
        let e = pool(&["10.0.0.1-fd00::1"]).validate().unwrap_err();
        assert!(
            e.problems()[0].problem.contains("different families"),
            "{e}"
        );
    }
}
