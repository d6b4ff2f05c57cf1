//! Pods made the way a container runtime makes them: `reef-cni` called in the node's
//! namespace with `CNI_*` variables and the network config on stdin.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use reef_integration::agent::CniCall;

use super::process::run_ok;
use super::{LabNode, LabPod, PREFIX};

/// Calls `reef-cni` for `command` in the node's namespace, the way a container runtime does:
/// `CNI_*` variables, the network config on stdin.
pub(super) fn cni_call(
    cni: &Path,
    n: &LabNode,
    command: &str,
    container_id: &str,
    pod_ns: &str,
    cni_args: &str,
) -> Result<std::process::Output> {
    Ok(call(
        cni,
        n,
        container_id,
        &format!("/run/netns/{pod_ns}"),
        cni_args,
    )
    .run(command)?)
}

fn call<'a>(
    cni: &'a Path,
    n: &'a LabNode,
    container_id: &'a str,
    pod_netns: &'a str,
    cni_args: &'a str,
) -> CniCall<'a> {
    CniCall {
        cni,
        node_ns: &n.ns,
        node_config: &n.config,
        lock_dir: None,
        container_id,
        pod_netns,
        cni_args,
    }
}

/// Runs `reef-cni ADD` in the node's namespace, the way a container runtime does.
pub(super) fn add_pod(cni: &Path, n: &LabNode, i: usize, j: usize) -> Result<LabPod> {
    let ns = format!("{PREFIX}p{i}-{j}");
    run_ok("ip", &["netns", "add", &ns])?;
    let container_id = format!("lab{i}x{j}");
    let pod_netns = format!("/run/netns/{ns}");
    let cni_args = format!("K8S_POD_NAMESPACE=lab;K8S_POD_NAME=pod-{i}-{j}");
    let added = call(cni, n, &container_id, &pod_netns, &cni_args)
        .add()
        .with_context(|| format!("reef-cni ADD for pod {i}-{j} failed"))?;
    let address: IpAddr = added
        .addr
        .ok_or_else(|| anyhow!("reef-cni returned no IPv4 address: {}", added.result))?;
    Ok(LabPod {
        name: format!("pod-{i}-{j}"),
        ns,
        node: n.name.clone(),
        address,
        address6: added.addr6,
        container_id,
    })
}
