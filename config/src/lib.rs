//! reef's API: the custom resources users see with `kubectl`, the node config file the
//! agent and the CNI plugin read, and their validation.
//!
//! This crate owns the *shape* of reef's state and the rules a valid value obeys. It does no
//! I/O: it never talks to the API server, opens a file or touches the network. Errors name the
//! field that is wrong and say what to change.

use serde::{Deserialize, Serialize};

/// When traffic to a pool's addresses is encapsulated in IP-in-IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum IpipMode {
    /// Always encapsulate traffic to remote blocks of the pool.
    Always,
    /// Encapsulate only when the remote node is on another subnet.
    #[default]
    CrossSubnet,
    /// Never encapsulate; the network between nodes routes pod addresses.
    Never,
}

/// Why reef peers with a BGP speaker; shown in `reef status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerType {
    /// Another reef node in the node-to-node mesh.
    Mesh,
    /// A BGPPeer that applies to every node.
    Global,
    /// A BGPPeer that applies to selected nodes.
    Node,
    /// A route reflector this node is a client of.
    RouteReflector,
}
