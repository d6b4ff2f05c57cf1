//! The speaker's configuration: what the agent builds in code and what `reef-bgp --config
//! speaker.yaml` reads. Defaults live here, in one place; [`SpeakerConfig::validate`] names
//! the field that is wrong and says how to fix it.
//!
//! ```yaml
//! router_id: 10.100.1.2
//! as: 64512
//! listen_address: 0.0.0.0     # default; "::" listens on both families
//! listen_port: 179            # default; 0 disables the listener (active peers only)
//! hold_time: 90               # default; 0 or >= 3
//! connect_retry: 5            # seconds between connection attempts (default 5)
//! graceful_restart: { enabled: true, restart_time: 120, restarting: false }
//!                             # selection_deferral: seconds; default restart_time, at most 60
//! originate: [10.244.1.0/26, fd00:244::/122]
//! next_hop_v6: fd00:100:1::2  # IPv6 next hop on IPv4 sessions (and next_hop_v4 the reverse)
//! peers:
//!   - address: 10.100.1.1
//!     as: 64512
//!     port: 179
//!     password: s3cret           # TCP MD5 (RFC 2385)
//!     multihop: true             # TTL 255; otherwise eBGP peers get TTL 1
//!     ttl_security: 1            # GTSM (RFC 5082): the peer is at most this many hops away
//!     passive: false             # only wait for the peer to connect
//!     rr_client: false
//!     max_prefix: 10000
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::policy::PolicySet;
use crate::sys::MD5_MAX_KEY_LEN;
use crate::{Asn, PeerType};

/// A configuration value that cannot be used: the field (a path such as `peers[2].password`)
/// and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

fn bad<T>(field: impl Into<String>, problem: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        field: field.into(),
        problem: problem.into(),
    })
}

/// The whole speaker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeakerConfig {
    /// The BGP identifier (RFC 4271 §4.2); usually the node's IPv4 address.
    pub router_id: Ipv4Addr,
    #[serde(rename = "as")]
    pub asn: u32,
    #[serde(default = "defaults::listen_address")]
    pub listen_address: IpAddr,
    /// 0 disables the listener: only active peers then.
    #[serde(default = "defaults::port")]
    pub listen_port: u16,
    /// Proposed hold time in seconds (0 or at least 3); keepalives every third of the
    /// negotiated one.
    #[serde(default = "defaults::hold_time")]
    pub hold_time: u16,
    /// Seconds between connection attempts to an active peer.
    #[serde(default = "defaults::connect_retry")]
    pub connect_retry: u16,
    #[serde(default)]
    pub graceful_restart: GracefulRestartConfig,
    /// RFC 4456 cluster id when reflecting; the router id when unset.
    #[serde(default)]
    pub cluster_id: Option<Ipv4Addr>,
    /// Largest ECMP set (1 disables multipath).
    #[serde(default = "defaults::max_paths")]
    pub max_paths: usize,
    /// The cluster's IP pools: the only prefixes accepted from mesh and route-reflector peers.
    #[serde(default)]
    pub cluster_pools: Vec<IpNetwork>,
    /// Next hop for IPv4 routes on sessions that run over IPv6 (otherwise the session's own
    /// address is used).
    #[serde(default)]
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Next hop for IPv6 routes on sessions that run over IPv4.
    #[serde(default)]
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Named prefix lists and policies peers refer to.
    #[serde(default)]
    pub policy: PolicySet,
    /// Prefixes this speaker originates from the start.
    #[serde(default)]
    pub originate: Vec<IpNetwork>,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
}

/// Graceful restart (RFC 4724), both roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GracefulRestartConfig {
    /// Advertise the capability: peers keep our routes while we restart, and we keep theirs.
    /// With its N bit (RFC 8538): also across a NOTIFICATION, except a Hard Reset, which reef
    /// sends when the routes must go (peer removed, hard shutdown, max-prefix).
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Seconds peers should keep our routes after our sessions drop (at most 4095).
    #[serde(default = "defaults::restart_time")]
    pub restart_time: u16,
    /// This process is a restart of one whose routes the peers kept: the first OPEN to each
    /// peer carries the Restart State bit and forwarding-state-preserved for every family.
    #[serde(default)]
    pub restarting: bool,
    /// When restarting: the longest wait for the peers' End-of-RIB before best paths are
    /// chosen, advertised and handed to route programming (RFC 4724 §4.1 Selection_Deferral
    /// timer), in seconds. Default: `restart_time` (as long as peers keep our routes), at most
    /// 60 s, so a peer that does not come back holds selection (and the removal of what a
    /// restarted agent kept in the kernel) no longer than a minute.
    #[serde(default)]
    pub selection_deferral: Option<u16>,
}

impl GracefulRestartConfig {
    /// The selection deferral timer.
    pub fn selection_deferral(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.selection_deferral
                .unwrap_or(self.restart_time.min(defaults::SELECTION_DEFERRAL_CAP)),
        ))
    }
}

impl Default for GracefulRestartConfig {
    fn default() -> Self {
        GracefulRestartConfig {
            enabled: true,
            restart_time: defaults::restart_time(),
            restarting: false,
            selection_deferral: None,
        }
    }
}

/// One BGP neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub address: IpAddr,
    #[serde(rename = "as")]
    pub asn: u32,
    /// The peer's TCP port for active connections.
    #[serde(default = "defaults::port")]
    pub port: u16,
    /// Why reef peers with it (shown in status; mesh and route-reflector peers only give
    /// prefixes inside the cluster pools).
    #[serde(default = "defaults::peer_type")]
    pub peer_type: PeerType,
    /// Local address to connect from (and to use as next hop); the kernel picks when unset.
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    /// TCP MD5 signature key (RFC 2385), at most 80 octets.
    #[serde(default)]
    pub password: Option<String>,
    /// The peer is not directly connected: send with TTL 255. Directly connected eBGP
    /// peers otherwise get TTL 1.
    #[serde(default)]
    pub multihop: bool,
    /// GTSM (RFC 5082): send with TTL 255 and drop segments that crossed more than this many
    /// hops (IP_MINTTL = 256 - hops).
    #[serde(default)]
    pub ttl_security: Option<u8>,
    /// Never connect; wait for the peer.
    #[serde(default)]
    pub passive: bool,
    /// Reflect routes to and from this iBGP peer (RFC 4456 client).
    #[serde(default)]
    pub rr_client: bool,
    /// Stop the session when the peer sends more prefixes than this.
    #[serde(default)]
    pub max_prefix: Option<u32>,
    /// Proposed hold time for this peer (the speaker's when unset).
    #[serde(default)]
    pub hold_time: Option<u16>,
    /// Send our address as next hop to this iBGP peer (always so for eBGP).
    #[serde(default)]
    pub next_hop_self: bool,
    /// Also export routes learned from other peers (by default only originated prefixes).
    #[serde(default)]
    pub export_learned: bool,
    #[serde(default)]
    pub accept_default_route: bool,
    #[serde(default)]
    pub send_default_route: bool,
    /// Names of policies in [`SpeakerConfig::policy`].
    #[serde(default)]
    pub import_policy: Option<String>,
    #[serde(default)]
    pub export_policy: Option<String>,
}

mod defaults {
    use std::net::{IpAddr, Ipv4Addr};

    use crate::PeerType;

    /// The longest default selection deferral, in seconds (see
    /// `GracefulRestartConfig::selection_deferral`).
    pub const SELECTION_DEFERRAL_CAP: u16 = 60;

    pub fn listen_address() -> IpAddr {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
    pub fn port() -> u16 {
        179
    }
    pub fn hold_time() -> u16 {
        90
    }
    pub fn connect_retry() -> u16 {
        5
    }
    pub fn max_paths() -> usize {
        8
    }
    pub fn restart_time() -> u16 {
        120
    }
    pub fn yes() -> bool {
        true
    }
    pub fn peer_type() -> PeerType {
        PeerType::Global
    }
}

impl SpeakerConfig {
    /// A speaker with every default and no peers.
    pub fn new(asn: u32, router_id: Ipv4Addr) -> SpeakerConfig {
        SpeakerConfig {
            router_id,
            asn,
            listen_address: defaults::listen_address(),
            listen_port: defaults::port(),
            hold_time: defaults::hold_time(),
            connect_retry: defaults::connect_retry(),
            graceful_restart: GracefulRestartConfig::default(),
            cluster_id: None,
            max_paths: defaults::max_paths(),
            cluster_pools: Vec::new(),
            next_hop_v4: None,
            next_hop_v6: None,
            policy: PolicySet::default(),
            originate: Vec::new(),
            peers: Vec::new(),
        }
    }

    pub fn local_as(&self) -> Asn {
        Asn(self.asn)
    }

    pub fn connect_retry(&self) -> Duration {
        Duration::from_secs(u64::from(self.connect_retry.max(1)))
    }

    /// Parses YAML (unknown fields are errors) and validates.
    pub fn from_yaml(text: &str) -> Result<SpeakerConfig, ConfigError> {
        let cfg: SpeakerConfig = serde_yaml::from_str(text).map_err(|e| ConfigError {
            field: e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "document".into()),
            problem: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every rule a usable configuration obeys; the first broken one is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.asn == 0 {
            return bad("as", "AS 0 is reserved (RFC 7607); use your AS number");
        }
        if self.router_id.is_unspecified() || self.router_id.is_multicast() {
            return bad(
                "router_id",
                format!(
                    "{} is not a usable BGP identifier; use the node's IPv4 address",
                    self.router_id
                ),
            );
        }
        check_hold("hold_time", self.hold_time)?;
        if self.connect_retry == 0 {
            return bad("connect_retry", "must be at least 1 second");
        }
        if self.graceful_restart.restart_time > 4095 {
            return bad(
                "graceful_restart.restart_time",
                "at most 4095 seconds (12 bits in the capability)",
            );
        }
        if self.max_paths == 0 {
            return bad("max_paths", "must be at least 1 (1 disables ECMP)");
        }
        for (i, p) in self.cluster_pools.iter().enumerate() {
            check_network(&format!("cluster_pools[{i}]"), p)?;
        }
        for (i, p) in self.originate.iter().enumerate() {
            check_network(&format!("originate[{i}]"), p)?;
        }
        self.policy.validate().map_err(|e| ConfigError {
            field: format!("policy.{}", e.field),
            problem: e.problem,
        })?;
        for (i, p) in self.peers.iter().enumerate() {
            p.validate(&format!("peers[{i}]"), self)?;
            if let Some(j) = self.peers[..i].iter().position(|q| q.address == p.address) {
                return bad(
                    format!("peers[{i}].address"),
                    format!(
                        "{} is already peers[{j}]; one session per address",
                        p.address
                    ),
                );
            }
        }
        Ok(())
    }
}

fn check_hold(field: &str, hold: u16) -> Result<(), ConfigError> {
    if hold == 1 || hold == 2 {
        return bad(
            field,
            "must be 0 (no keepalives) or at least 3 seconds (RFC 4271)",
        );
    }
    Ok(())
}

fn check_network(field: &str, p: &IpNetwork) -> Result<(), ConfigError> {
    if p.ip() != p.network() {
        return bad(
            field,
            format!(
                "{p} has host bits set; write {}/{}",
                p.network(),
                p.prefix()
            ),
        );
    }
    Ok(())
}

impl PeerConfig {
    /// A peer with every default.
    pub fn new(address: IpAddr, asn: u32) -> PeerConfig {
        PeerConfig {
            address,
            asn,
            port: defaults::port(),
            peer_type: defaults::peer_type(),
            source_address: None,
            password: None,
            multihop: false,
            ttl_security: None,
            passive: false,
            rr_client: false,
            max_prefix: None,
            hold_time: None,
            next_hop_self: false,
            export_learned: false,
            accept_default_route: false,
            send_default_route: false,
            import_policy: None,
            export_policy: None,
        }
    }

    /// Checks this peer against the speaker it belongs to; `field` is its path (`peers[3]`).
    pub fn validate(&self, field: &str, speaker: &SpeakerConfig) -> Result<(), ConfigError> {
        let a = self.address;
        if a.is_unspecified() || a.is_multicast() {
            return bad(
                format!("{field}.address"),
                format!("{a} is not a unicast address"),
            );
        }
        if self.asn == 0 {
            return bad(format!("{field}.as"), "AS 0 is reserved (RFC 7607)");
        }
        if self.port == 0 {
            return bad(format!("{field}.port"), "must not be 0");
        }
        if let Some(s) = self.source_address {
            if s.is_ipv4() != a.is_ipv4() {
                return bad(
                    format!("{field}.source_address"),
                    format!("{s} is not of the family of the peer address {a}"),
                );
            }
        }
        if let Some(pw) = &self.password {
            if pw.is_empty() || pw.len() > MD5_MAX_KEY_LEN {
                return bad(
                    format!("{field}.password"),
                    format!("must be 1 to {MD5_MAX_KEY_LEN} octets (TCP MD5 key)"),
                );
            }
        }
        if let Some(h) = self.ttl_security {
            if h == 0 {
                return bad(
                    format!("{field}.ttl_security"),
                    "hop count must be at least 1 (1 = directly connected)",
                );
            }
        }
        if let Some(h) = self.hold_time {
            check_hold(&format!("{field}.hold_time"), h)?;
        }
        if self.max_prefix == Some(0) {
            return bad(
                format!("{field}.max_prefix"),
                "must be at least 1 (leave it out for no limit)",
            );
        }
        if self.rr_client && self.asn != speaker.asn {
            return bad(
                format!("{field}.rr_client"),
                "route reflection is for iBGP peers; the peer's AS differs from ours",
            );
        }
        for (name, which) in [
            (&self.import_policy, "import_policy"),
            (&self.export_policy, "export_policy"),
        ] {
            if let Some(n) = name {
                if !speaker.policy.policies.contains_key(n) {
                    return bad(
                        format!("{field}.{which}"),
                        format!("no policy named {n:?} under policy.policies"),
                    );
                }
            }
        }
        Ok(())
    }

    pub fn is_ibgp(&self, local_as: u32) -> bool {
        self.asn == local_as
    }

    /// The TTL of outgoing segments: 255 for GTSM, multihop and iBGP; 1 for directly
    /// connected eBGP.
    pub fn outgoing_ttl(&self, local_as: u32) -> u8 {
        if self.ttl_security.is_some() || self.multihop || self.is_ibgp(local_as) {
            255
        } else {
            1
        }
    }

    /// IP_MINTTL for GTSM: 256 - hops.
    pub fn min_ttl(&self) -> Option<u8> {
        self.ttl_security.map(|h| (256 - u16::from(h)) as u8)
    }
}
