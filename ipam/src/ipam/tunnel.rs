//! A node's tunnel address: one address per family under a handle named after the node,
//! allocated on first use and marked with [`TUNNEL_PURPOSE`].

use std::net::IpAddr;

use reef_config::AllocationAttributes;

use super::{AutoAssignArgs, Ipam};
use crate::store::{Labels, Store};
use crate::{Error, HandleId};

/// `purpose` attribute of tunnel addresses.
pub const TUNNEL_PURPOSE: &str = "tunnel";

impl<S: Store> Ipam<S> {
    /// The handle of a node's tunnel address.
    pub fn tunnel_handle(node: &str, v4: bool) -> HandleId {
        HandleId(format!(
            "reef-tunnel-{}.{node}",
            if v4 { "v4" } else { "v6" }
        ))
    }

    /// The node's tunnel address, allocated on first use under its own handle.
    pub fn ensure_tunnel_address(
        &self,
        node: &str,
        node_labels: &Labels,
        v4: bool,
    ) -> Result<IpAddr, Error> {
        let handle = Self::tunnel_handle(node, v4);
        if let Some(a) = self
            .addresses_of(&handle)?
            .into_iter()
            .find(|a| a.address.is_ipv4() == v4)
        {
            return Ok(a.address);
        }
        let args = AutoAssignArgs {
            handle,
            num_v4: usize::from(v4),
            num_v6: usize::from(!v4),
            node: node.to_string(),
            node_labels: node_labels.clone(),
            attributes: AllocationAttributes {
                purpose: Some(TUNNEL_PURPOSE.into()),
                ..Default::default()
            },
            pools: Vec::new(),
            avoid_block_ends: false,
        };
        let got = self.auto_assign(&args)?;
        Ok(got
            .v4
            .into_iter()
            .chain(got.v6)
            .next()
            .expect("auto_assign returned what was asked")
            .address)
    }
}
