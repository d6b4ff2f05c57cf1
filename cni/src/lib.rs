//! reef's CNI plugins, CNI spec 0.4.0 – 1.1.0.
//!
//! `reef-cni` gives a pod an address from reef's IPAM and wires it to the node with a veth
//! pair and a /32 route (no bridge, no NAT); `reef-ipam` is the same IPAM for other plugins.
//!
//! This crate owns what a plugin does for one attachment: the pod's veth pair, its addresses and
//! routes, the host-side /32 route, and the allocation under the attachment's handle. It must
//! not touch other interfaces or other programs' routes, and nothing may outlive a failed ADD.
//!
//! ```text
//! CNI_* env + stdin ─▶ spec / config (pure parse) ─▶ plugin (ADD/DEL/CHECK/GC/STATUS)
//!                                                     ├─▶ k8s: pod annotations ─▶ pod (pure parse)
//!                                                     │   (ADD, only with Kubernetes access)
//!                                                     ├─▶ ipam::Ipam (allocate / release)
//!                                                     └─▶ dataplane ─▶ netlink (host + pod netns)
//! result JSON ◀─ stdout only; logs ─▶ stderr or the configured file
//! ```

pub mod backend;
pub mod config;
pub mod dataplane;
pub mod error;
pub mod ipam;
pub mod k8s;
pub mod lock;
pub mod log;
pub mod netlink;
pub mod plugin;
pub mod pod;
#[cfg(test)]
mod proptests;
pub mod spec;
pub mod sys;

pub use error::{Error, ErrorCode};
