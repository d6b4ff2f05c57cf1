//! The commands of both plugins: parse, then drive IPAM and the data plane. The binaries only
//! read the environment and stdin, call [`reef_cni`] / [`reef_ipam`] and print.

use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;
use reef_config::{Datastore, NodeConfig};
use serde_json::Value;

use crate::config::{
    defaults, Attachment, Families, IpamPluginConf, KubernetesConf, NetConf, ReefConf,
};
use crate::dataplane::{self, Expected, PodNetns, Wiring, GATEWAY_V4, GATEWAY_V6};
use crate::error::Error;
use crate::ipam::{AllocRequest, Allocated, Ipam};
use crate::lock::{self, AttachmentLock};
use crate::log::Log;
use crate::netlink::Netlink;
use crate::pod::AddressRequest;
use crate::spec::{self, CniResult, Command, Env, Interface, IpConfig, Route, SpecVersion};

/// Opens the IPAM backend for a node (the binaries pass reef-ipam's; tests may pass others).
pub type OpenIpam<'a> = &'a dyn Fn(&NodeConfig) -> Result<Box<dyn Ipam>, Error>;

/// The `cniVersion` of stdin, if it can be read at all: error replies echo it.
pub fn sniff_version(stdin: &[u8]) -> Option<SpecVersion> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    SpecVersion::parse("cniVersion", v.get("cniVersion")?.as_str()?).ok()
}

/// Loads the node config. Missing means the node is not set up yet (try again later);
/// unreadable or invalid is a configuration error naming the file.
pub fn load_node(path: &Path) -> Result<NodeConfig, Error> {
    if !path.exists() {
        return Err(Error::TryAgainLater(format!(
            "node config {} does not exist yet (is the reef agent installed on this node?)",
            path.display()
        )));
    }
    NodeConfig::load(path).map_err(|e| Error::config("nodeConfig", e.to_string()))
}

/// The MTU: the CNI config's, else the node config's, else the agent's file, else 1480.
fn resolve_mtu(conf: &ReefConf, node: &NodeConfig) -> Result<u32, Error> {
    if let Some(m) = conf.mtu.or(node.mtu) {
        crate::config::validate_mtu("mtu", m)?;
        return Ok(m);
    }
    let file = conf.mtu_file.as_deref().unwrap_or(&node.mtu_file);
    match std::fs::read_to_string(file) {
        Ok(s) => {
            let m: u32 = s.trim().parse().map_err(|_| {
                Error::config(
                    "mtuFile",
                    format!("{} holds {:?}, not an MTU", file.display(), s.trim()),
                )
            })?;
            crate::config::validate_mtu("mtuFile", m)?;
            Ok(m)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(defaults::MTU),
        Err(e) => Err(Error::Io {
            what: file.display().to_string(),
            source: e,
        }),
    }
}

fn host_netlink() -> Result<Netlink, Error> {
    Netlink::new().map_err(|e| Error::netlink("open socket", e))
}

fn netns_path(env: &Env) -> Result<&Path, Error> {
    env.netns
        .as_deref()
        .ok_or_else(|| Error::env("CNI_NETNS", "not set"))
}

fn pod_arg<'a>(env: &'a Env, key: &str) -> Option<&'a str> {
    env.args
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn request<'a>(
    env: &'a Env,
    handle: &'a str,
    families: &Families,
    addresses: &'a AddressRequest,
    block_prefix: bool,
) -> AllocRequest<'a> {
    AllocRequest {
        handle,
        ipv4: families.ipv4,
        ipv6: families.ipv6,
        container_id: env.container_id(),
        ifname: env.ifname(),
        pod_namespace: pod_arg(env, "K8S_POD_NAMESPACE"),
        pod_name: pod_arg(env, "K8S_POD_NAME"),
        addresses,
        block_prefix,
    }
}

/// What the pod's annotations ask for. Kubernetes access comes from the plugin config
/// (`field` names where, e.g. `kubernetes`), else from the node config's Kubernetes datastore;
/// without either, or when `CNI_ARGS` names no pod, no client is built and any pool will do.
fn address_request(
    env: &Env,
    kubernetes: Option<&KubernetesConf>,
    field: &str,
    node: &NodeConfig,
    families: &Families,
    log: &mut Log,
) -> Result<AddressRequest, Error> {
    let (Some(namespace), Some(name)) = (
        pod_arg(env, "K8S_POD_NAMESPACE"),
        pod_arg(env, "K8S_POD_NAME"),
    ) else {
        return Ok(AddressRequest::default());
    };
    let config_field;
    let access = match (kubernetes, &node.datastore) {
        (Some(k), _) => {
            config_field = format!("{field}.kubeconfig");
            crate::k8s::Access {
                kubeconfig: k.kubeconfig.as_deref(),
                field: &config_field,
            }
        }
        (None, Datastore::Kubernetes { kubeconfig }) => crate::k8s::Access {
            kubeconfig: kubeconfig.as_deref(),
            field: "nodeConfig datastore.kubernetes.kubeconfig",
        },
        (None, Datastore::Embedded { .. }) => return Ok(AddressRequest::default()),
    };
    let annotations = crate::k8s::pod_annotations(access, namespace, name)?;
    let req = crate::pod::parse(&annotations, families)?;
    if req != AddressRequest::default() {
        log.info(format_args!("pod {namespace}/{name} asks for {req:?}"));
    }
    Ok(req)
}

/// reef-cni: runs one command. `Ok(Some(json))` goes to stdout.
pub fn reef_cni(
    env: &Env,
    stdin: &[u8],
    open: OpenIpam<'_>,
    log: &mut Log,
) -> Result<Option<Value>, Error> {
    if env.command == Command::Version {
        return Ok(Some(spec::version_info(sniff_version(stdin))));
    }
    let conf = ReefConf::parse(stdin)?;
    log.configure(&conf.log);
    conf.net.cni_version.allows(env.command)?;
    match env.command {
        Command::Add => cni_add(env, &conf, open, log).map(Some),
        Command::Del => cni_del(env, &conf, open, log).map(|()| None),
        Command::Check => cni_check(env, &conf, open).map(|()| None),
        Command::Gc => gc(&conf.net, &conf.node_config, open, log).map(|()| None),
        Command::Status => status(&conf.node_config, open).map(|()| None),
        Command::Version => Ok(Some(spec::version_info(Some(conf.net.cni_version)))),
    }
}

fn cni_add(env: &Env, conf: &ReefConf, open: OpenIpam<'_>, log: &mut Log) -> Result<Value, Error> {
    let ifname = env.ifname();
    let host_name = dataplane::host_veth_name(env.container_id(), ifname);
    let _lock = AttachmentLock::take(&conf.lock_dir, &host_name, lock::WAIT)?;
    let path = netns_path(env)?;
    let netns = PodNetns::open(path)?;
    let mut pod = netns.netlink(path)?;
    let mut host = host_netlink()?;
    if pod
        .link_by_name(ifname)
        .map_err(|e| Error::netlink("get pod interface", e))?
        .is_some()
    {
        return Err(Error::InterfaceExists {
            ifname: ifname.into(),
            netns: path.display().to_string(),
        });
    }
    if host
        .link_by_name(&host_name)
        .map_err(|e| Error::netlink("get host veth", e))?
        .is_some()
    {
        return Err(Error::HostInterfaceExists { name: host_name });
    }
    let node = load_node(&conf.node_config)?;
    let mtu = resolve_mtu(conf, &node)?;
    let route_protocol = conf.route_protocol.unwrap_or(node.route_protocol);
    let wanted = address_request(
        env,
        conf.kubernetes.as_ref(),
        "kubernetes",
        &node,
        &conf.families,
        log,
    )?;
    let mut ipam = open(&node)?;
    let handle = dataplane::handle(&conf.net.name, env.container_id());
    let allocated = ipam.allocate(&request(env, &handle, &conf.families, &wanted, false))?;
    let addrs: Vec<IpAddr> = allocated.iter().map(|a| a.address).collect();
    log.info(format_args!("allocated {addrs:?} to {handle}"));
    let wiring = Wiring {
        host_name: &host_name,
        ifname,
        addrs: &addrs,
        mtu,
        route_protocol,
    };
    let wired = match dataplane::add(&mut host, &mut pod, &netns, &wiring) {
        Ok(w) => w,
        Err(e) => {
            log.warn(format_args!(
                "ADD failed after allocation, rolling back: {e}"
            ));
            if let Err(r) = ipam.release(&handle) {
                log.error(format_args!("rollback: release {handle}: {r}"));
            }
            return Err(e);
        }
    };
    let mut result = CniResult {
        interfaces: vec![
            Interface {
                name: host_name.clone(),
                mac: wired.host.mac.as_ref().map(dataplane::mac_string),
                sandbox: None,
                mtu: Some(mtu),
            },
            Interface {
                name: ifname.to_string(),
                mac: wired.pod.mac.as_ref().map(dataplane::mac_string),
                sandbox: Some(path.display().to_string()),
                mtu: Some(mtu),
            },
        ],
        dns: conf.net.dns.clone(),
        ..CniResult::default()
    };
    for a in &addrs {
        let gateway = if a.is_ipv4() {
            IpAddr::V4(GATEWAY_V4)
        } else {
            IpAddr::V6(GATEWAY_V6)
        };
        result.ips.push(IpConfig {
            address: IpNetwork::from(*a),
            gateway: Some(gateway),
            interface: Some(1),
        });
    }
    // Per family the pod has an address of (`reef.dev/ipAddrs` may leave one out).
    if addrs.iter().any(IpAddr::is_ipv4) {
        result.routes.push(Route {
            dst: "0.0.0.0/0".parse().expect("constant"),
            gw: Some(IpAddr::V4(GATEWAY_V4)),
        });
    }
    if addrs.iter().any(IpAddr::is_ipv6) {
        result.routes.push(Route {
            dst: "::/0".parse().expect("constant"),
            gw: Some(IpAddr::V6(GATEWAY_V6)),
        });
    }
    log.info(format_args!(
        "ADD {handle}: {host_name} <-> {ifname}, mtu {mtu}"
    ));
    Ok(result.to_json(conf.net.cni_version))
}

fn cni_del(env: &Env, conf: &ReefConf, open: OpenIpam<'_>, log: &mut Log) -> Result<(), Error> {
    let host_name = dataplane::host_veth_name(env.container_id(), env.ifname());
    let lock = AttachmentLock::take(&conf.lock_dir, &host_name, lock::WAIT)?;
    let mut host = host_netlink()?;
    dataplane::del(&mut host, &host_name)?;
    let node = load_node(&conf.node_config)?;
    let handle = dataplane::handle(&conf.net.name, env.container_id());
    open(&node)?.release(&handle)?;
    log.info(format_args!(
        "DEL {handle}: {host_name} removed, addresses released"
    ));
    // The attachment is gone; its lock file goes too (a leftover only costs a file).
    if let Err(e) = lock.remove() {
        log.warn(format_args!("{e}"));
    }
    Ok(())
}

fn prev_result(net: &NetConf) -> Result<&CniResult, Error> {
    net.prev_result
        .as_ref()
        .ok_or_else(|| Error::config("prevResult", "CHECK needs the ADD result as prevResult"))
}

fn compare_allocation(handle: &str, have: &mut [IpAddr], want: &mut [IpAddr]) -> Result<(), Error> {
    have.sort();
    want.sort();
    if have != want {
        return Err(Error::CheckFailed(format!(
            "IPAM handle {handle} holds {have:?} but prevResult has {want:?}"
        )));
    }
    Ok(())
}

fn cni_check(env: &Env, conf: &ReefConf, open: OpenIpam<'_>) -> Result<(), Error> {
    let prev = prev_result(&conf.net)?;
    let ifname = env.ifname();
    let host_name = dataplane::host_veth_name(env.container_id(), ifname);
    let _lock = AttachmentLock::take(&conf.lock_dir, &host_name, lock::WAIT)?;
    let path = netns_path(env)?;
    let netns = PodNetns::open(path)?;
    let mut pod = netns.netlink(path)?;
    let mut host = host_netlink()?;
    let pod_itf = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.is_some());
    let mut want: Vec<IpAddr> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == pod_itf)
        .map(|ip| ip.address.ip())
        .collect();
    if want.is_empty() {
        return Err(Error::config(
            "prevResult.ips",
            format!("no address for interface {ifname}"),
        ));
    }
    let node = load_node(&conf.node_config)?;
    let itf = pod_itf.map(|i| &prev.interfaces[i]);
    let expected = Expected {
        host_name: &host_name,
        ifname,
        addrs: &want,
        pod_mac: itf.and_then(|i| i.mac.as_deref()),
        mtu: itf.and_then(|i| i.mtu),
        route_protocol: conf.route_protocol.unwrap_or(node.route_protocol),
    };
    dataplane::check(&mut host, &mut pod, &expected)?;
    let handle = dataplane::handle(&conf.net.name, env.container_id());
    let mut have = open(&node)?.addresses(&handle)?;
    compare_allocation(&handle, &mut have, &mut want)
}

/// GC: releases this network's allocations whose attachment is not listed as valid.
/// Handles are `<network>.<container id>` and both may contain '.', so networks named like
/// `a` and `a.b` on one datastore would see each other's handles: give networks names that
/// are not prefixes of one another.
fn gc(net: &NetConf, node_config: &Path, open: OpenIpam<'_>, log: &mut Log) -> Result<(), Error> {
    // Without the list every allocation of the network would look stale: refuse.
    let valid: &[Attachment] = net.valid_attachments.as_deref().ok_or_else(|| {
        Error::config(
            "cni.dev/valid-attachments",
            "GC needs the list of valid attachments",
        )
    })?;
    let node = load_node(node_config)?;
    let mut ipam = open(&node)?;
    let prefix = format!("{}.", net.name);
    for handle in ipam.handles(&prefix)? {
        let cid = &handle[prefix.len()..];
        if !valid.iter().any(|a| a.container_id == cid) {
            log.info(format_args!("GC: releasing {handle}"));
            ipam.release(&handle)?;
        }
    }
    Ok(())
}

/// STATUS: ready when the node config exists and the datastore answers.
fn status(node_config: &Path, open: OpenIpam<'_>) -> Result<(), Error> {
    let not_ready = |e: Error| Error::NotReady(e.to_string());
    let node = load_node(node_config).map_err(not_ready)?;
    open(&node).and_then(|mut i| i.ready()).map_err(not_ready)
}

/// reef-ipam: runs one command of the IPAM plugin protocol.
pub fn reef_ipam(
    env: &Env,
    stdin: &[u8],
    open: OpenIpam<'_>,
    log: &mut Log,
) -> Result<Option<Value>, Error> {
    if env.command == Command::Version {
        return Ok(Some(spec::version_info(sniff_version(stdin))));
    }
    let conf = IpamPluginConf::parse(stdin)?;
    log.configure(&conf.log);
    conf.net.cni_version.allows(env.command)?;
    match env.command {
        Command::Add => {
            // The IPAM plugin never enters the namespace (it may not even exist yet for some
            // runtimes), but an ADD for the host's own namespace is a runtime bug that must
            // not cost an address.
            if let Some(path) = env.netns.as_deref() {
                if let Ok(meta) = std::fs::metadata(path) {
                    dataplane::refuse_own_netns(path, &meta)?;
                }
            }
            let node = load_node(&conf.node_config)?;
            let wanted = address_request(
                env,
                conf.kubernetes.as_ref(),
                "ipam.kubernetes",
                &node,
                &conf.families,
                log,
            )?;
            let handle = dataplane::handle(&conf.net.name, env.container_id());
            let allocated =
                open(&node)?.allocate(&request(env, &handle, &conf.families, &wanted, true))?;
            log.info(format_args!("allocated {allocated:?} to {handle}"));
            Ok(Some(
                ipam_result(&conf, &allocated).to_json(conf.net.cni_version),
            ))
        }
        Command::Del => {
            let node = load_node(&conf.node_config)?;
            let handle = dataplane::handle(&conf.net.name, env.container_id());
            open(&node)?.release(&handle)?;
            Ok(None)
        }
        Command::Check => {
            let prev = prev_result(&conf.net)?;
            let node = load_node(&conf.node_config)?;
            let handle = dataplane::handle(&conf.net.name, env.container_id());
            let mut have = open(&node)?.addresses(&handle)?;
            let mut want: Vec<IpAddr> = prev.ips.iter().map(|i| i.address.ip()).collect();
            compare_allocation(&handle, &mut have, &mut want).map(|()| None)
        }
        Command::Gc => gc(&conf.net, &conf.node_config, open, log).map(|()| None),
        Command::Status => status(&conf.node_config, open).map(|()| None),
        Command::Version => Ok(Some(spec::version_info(Some(conf.net.cni_version)))),
    }
}

/// An IPAM plugin's result: addresses with their block's prefix length (so a bridge sees the
/// block as on-link), the configured gateways and routes, no interfaces.
fn ipam_result(conf: &IpamPluginConf, allocated: &[Allocated]) -> CniResult {
    let ips = allocated
        .iter()
        .map(|a| IpConfig {
            address: IpNetwork::new(a.address, a.block.prefix())
                .unwrap_or_else(|_| IpNetwork::from(a.address)),
            gateway: conf
                .gateways
                .iter()
                .copied()
                .find(|g| g.is_ipv4() == a.address.is_ipv4()),
            interface: None,
        })
        .collect();
    CniResult {
        interfaces: Vec::new(),
        ips,
        routes: conf.routes.clone(),
        dns: conf.net.dns.clone(),
    }
}

/// What a plugin binary runs: [`reef_cni`] or [`reef_ipam`].
pub type Plugin = fn(&Env, &[u8], OpenIpam<'_>, &mut Log) -> Result<Option<Value>, Error>;

/// The whole of a plugin binary's `main`: reads `CNI_*` and stdin, runs `plugin` against reef's
/// IPAM, writes the result (or the error JSON) on stdout and logs on stderr; exit status 0 on
/// success, 1 on error.
pub fn main(name: &str, plugin: Plugin) -> std::process::ExitCode {
    use std::io::{Read, Write};
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let env = Env::parse(|k| std::env::var(k).ok());
    let context = format!(
        "{name} {} {}",
        std::env::var("CNI_COMMAND").unwrap_or_default(),
        std::env::var("CNI_CONTAINERID").unwrap_or_default()
    );
    let mut log = Log::stderr(context);
    let outcome = read
        .map_err(|source| Error::Io {
            what: "stdin".into(),
            source,
        })
        .and(env)
        .and_then(|env| plugin(&env, &stdin, &crate::backend::open, &mut log));
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            std::process::ExitCode::SUCCESS
        }
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log.error(format_args!("{e}"));
            let _ = writeln!(out, "{}", e.to_json(sniff_version(&stdin)));
            std::process::ExitCode::FAILURE
        }
    }
}
