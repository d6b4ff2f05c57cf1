//! reef's CNI plugins, CNI spec 0.4.0 – 1.1.0.
//!
//! `reef-cni` gives a pod an address from reef's IPAM and wires it to the node with a veth
//! pair and a /32 route (no bridge, no NAT); `reef-ipam` is the same IPAM for other plugins.
//!
//! This crate owns what a plugin does for one attachment: the pod's veth pair, its addresses and
//! routes, the host-side /32 route, and the allocation under the attachment's handle. It must
//! not touch other interfaces or other programs' routes, and nothing may outlive a failed ADD.

/// The error codes of the CNI specification, plus reef's own (≥ 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidConfig = 4,
    IoFailure = 5,
    DecodeFailure = 6,
    InvalidEnvironment = 7,
    TryAgainLater = 11,
    NotReady = 50,
}
