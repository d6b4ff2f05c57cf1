//! The CRD manifests of [`crate::crds`], as committed under `deploy/crds/`.

use kube::core::CustomResourceExt;

use crate::crds::*;

/// `(file name, YAML)` of every CRD, in a stable order.
pub fn manifests() -> Vec<(String, String)> {
    let crds = [
        IpPool::crd(),
        IpamBlock::crd(),
        BlockAffinity::crd(),
        IpamHandle::crd(),
        IpamConfig::crd(),
        BgpConfiguration::crd(),
        BgpPeer::crd(),
        ReefNode::crd(),
        LoadBalancerIpPool::crd(),
    ];
    crds.into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = serde_yaml::to_string(&crd).expect("a CRD always serialises to YAML");
            (
                format!("{name}.yaml"),
                format!("# Generated from reef-config's types; regenerate with REEF_UPDATE_GOLDEN=1 cargo test -p reef-config --test crd_golden\n{yaml}"),
            )
        })
        .collect()
}
