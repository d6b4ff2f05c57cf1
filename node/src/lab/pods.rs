//! Pods made the way a container runtime makes them: `reef-cni` called in the node's
//! namespace with `CNI_*` variables and the network config on stdin.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Result};

use super::process::{path, run_ok};
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
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "reef", "type": "reef-cni",
        "nodeConfig": path(&n.config),
        "ipam": {"assignIpv4": true, "assignIpv6": true},
    });
    let mut child = Command::new("ip")
        .args(["netns", "exec", &n.ns])
        .arg(cni)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni.parent().unwrap_or(Path::new("/")))
        .env("CNI_ARGS", cni_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.to_string().as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// Runs `reef-cni ADD` in the node's namespace, the way a container runtime does.
pub(super) fn add_pod(cni: &Path, n: &LabNode, i: usize, j: usize) -> Result<LabPod> {
    let ns = format!("{PREFIX}p{i}-{j}");
    run_ok("ip", &["netns", "add", &ns])?;
    let container_id = format!("lab{i}x{j}");
    let out = cni_call(
        cni,
        n,
        "ADD",
        &container_id,
        &ns,
        &format!("K8S_POD_NAMESPACE=lab;K8S_POD_NAME=pod-{i}-{j}"),
    )?;
    if !out.status.success() {
        bail!(
            "reef-cni ADD for pod {i}-{j} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let res: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let addrs: Vec<IpAddr> = res["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect();
    let address = *addrs
        .iter()
        .find(|a| a.is_ipv4())
        .ok_or_else(|| anyhow!("reef-cni returned no IPv4 address: {res}"))?;
    Ok(LabPod {
        name: format!("pod-{i}-{j}"),
        ns,
        node: n.name.clone(),
        address,
        address6: addrs.iter().copied().find(IpAddr::is_ipv6),
        container_id,
    })
}
