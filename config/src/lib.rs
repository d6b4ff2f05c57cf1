//! reef's API: the custom resources users see with `kubectl`, the node config file the
//! agent and the CNI plugin read, and their validation.
//!
//! This crate owns the *shape* of reef's state and the rules a valid value obeys. It does no
//! I/O beyond reading the node config file (and, for a datastore the file leaves out, the
//! environment variables and token file that choose one): it never talks to the API server or touches the
//! network. Errors name the field that is wrong and say what to change.
//!
//! - [`crds`]: the `reef.dev/v1alpha1` resources (IPPool, IPAMBlock, BlockAffinity,
//!   IPAMHandle, IPAMConfig, BGPConfiguration, BGPPeer, ReefNode).
//! - [`crdgen`]: the CRD manifests generated from those types (`deploy/crds/`).
//! - [`node_config`]: the node config file.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod crdgen;
pub mod crds;
pub mod node_config;
mod schema;
pub mod time;

pub use crds::*;
pub use node_config::{Datastore, DatastoreEnv, NodeConfig};
pub use schema::FieldError;

/// When traffic to a pool's addresses is encapsulated in IP-in-IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, JsonSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
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

/// What can be wrong with reef's configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The YAML does not parse into the expected shape (unknown field, wrong type ...).
    #[error("{origin}:{line}:{column}: {message}")]
    Parse {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    // The cause is part of the message and deliberately not a `source`: an error chain
    // printer (anyhow's `{:#}`) would print it twice.
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The value parses but breaks a rule; every broken rule is listed.
    #[error("invalid {what}: {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid {
        what: String,
        problems: Vec<FieldError>,
    },
}

impl Error {
    /// The problems of an [`Error::Invalid`] (empty for other errors).
    pub fn problems(&self) -> &[FieldError] {
        match self {
            Error::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}
