//! The tunnel device: detect kernel IP-in-IP, configure `tunl0` or the userspace TUN device
//! (MTU, tunnel address, up) only while a route needs it, and the MTU file for the CNI plugin.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkIpIp, LinkUnspec};

use crate::filter::{self, FilterSpec};
use crate::plan::{Plan, Pool, TunnelMode, KERNEL_TUNNEL_DEVICE, USERSPACE_TUNNEL_DEVICE};
use crate::userspace::{EncapTable, TunnelStats, UserspaceTunnel};
use crate::{IpipMode, TunnelError};

/// The outer IPv4 header IP-in-IP adds.
pub const IPIP_OVERHEAD: u32 = 20;

fn nl(what: impl Into<String>, e: rtnetlink::Error) -> TunnelError {
    TunnelError::Io {
        what: what.into(),
        reason: e.to_string(),
    }
}

/// The index of interface `name`, if it exists.
pub async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, TunnelError> {
    let mut s = handle.link().get().execute();
    while let Some(l) = s.try_next().await.map_err(|e| nl("list interfaces", e))? {
        if l.attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name))
        {
            return Ok(Some(l.header.index));
        }
    }
    Ok(None)
}

/// The MTU of interface `name`.
pub async fn link_mtu(handle: &Handle, name: &str) -> Result<u32, TunnelError> {
    let mut s = handle.link().get().match_name(name).execute();
    let l = s
        .try_next()
        .await
        .map_err(|e| nl(format!("look up interface {name}"), e))?
        .ok_or_else(|| TunnelError::NoSuchInterface(name.to_string()))?;
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .ok_or_else(|| TunnelError::NoSuchInterface(name.to_string()))
}

/// Whether the kernel has IP-in-IP, without creating anything: `tunl0` exists (the module is
/// loaded), or the module is built in or installed and will load when `tunl0` is first needed.
/// Otherwise the userspace fallback.
pub async fn detect(handle: &Handle) -> Result<TunnelMode, TunnelError> {
    if link_index(handle, KERNEL_TUNNEL_DEVICE).await?.is_some() {
        return Ok(TunnelMode::kernel());
    }
    if ipip_module_available(Path::new("/")) {
        return Ok(TunnelMode::kernel());
    }
    tracing::info!("kernel has no IP-in-IP; using the userspace fallback");
    Ok(TunnelMode::userspace())
}

/// Whether `ipip` is loaded, built in, or installed as a module under `root`'s /lib/modules
/// for the running kernel.
pub fn ipip_module_available(root: &Path) -> bool {
    if root.join("sys/module/ipip").exists() {
        return true;
    }
    let Ok(release) = std::fs::read_to_string(root.join("proc/sys/kernel/osrelease")) else {
        return false;
    };
    let dir = root.join("lib/modules").join(release.trim());
    ["modules.builtin", "modules.dep"].iter().any(|f| {
        std::fs::read_to_string(dir.join(f))
            .map(|s| {
                s.lines().any(|l| {
                    let name = l.split(':').next().unwrap_or("");
                    name.rsplit('/')
                        .next()
                        .is_some_and(|b| b.starts_with("ipip.ko"))
                })
            })
            .unwrap_or(false)
    })
}

/// Makes sure `tunl0` exists: asking for an ipip device loads the module, which creates
/// `tunl0` in every namespace (the request itself then fails with "exists", which is fine).
pub async fn ensure_kernel_device(handle: &Handle) -> Result<(), TunnelError> {
    if link_index(handle, KERNEL_TUNNEL_DEVICE).await?.is_some() {
        return Ok(());
    }
    let added = handle
        .link()
        .add(LinkIpIp::new(KERNEL_TUNNEL_DEVICE).build())
        .execute()
        .await;
    if link_index(handle, KERNEL_TUNNEL_DEVICE).await?.is_some() {
        return Ok(());
    }
    Err(TunnelError::Io {
        what: "create tunl0".into(),
        reason: added
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "tunl0 did not appear".into()),
    })
}

/// Sets MTU, adds `address`/32 (if any, idempotently) and brings `name` up.
pub async fn bring_up(
    handle: &Handle,
    name: &str,
    mtu: u32,
    address: Option<Ipv4Addr>,
) -> Result<(), TunnelError> {
    let index = link_index(handle, name)
        .await?
        .ok_or_else(|| TunnelError::NoSuchInterface(name.to_string()))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(|e| nl(format!("set {name} mtu {mtu} up"), e))?;
    if let Some(a) = address {
        if !has_address(handle, index, a).await? {
            handle
                .address()
                .add(index, IpAddr::V4(a), 32)
                .execute()
                .await
                .map_err(|e| nl(format!("add {a}/32 to {name}"), e))?;
        }
    }
    Ok(())
}

async fn has_address(handle: &Handle, index: u32, a: Ipv4Addr) -> Result<bool, TunnelError> {
    Ok(find_address(handle, index, a, true).await?.is_some())
}

/// The address message of link `index` carrying `a` as its local address (or, with
/// `or_peer`, as its IFA_ADDRESS).
async fn find_address(
    handle: &Handle,
    index: u32,
    a: Ipv4Addr,
    or_peer: bool,
) -> Result<Option<AddressMessage>, TunnelError> {
    let mut s = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(m) = s.try_next().await.map_err(|e| nl("list addresses", e))? {
        let carries = m.attributes.iter().any(|x| match x {
            AddressAttribute::Local(IpAddr::V4(v)) => *v == a,
            AddressAttribute::Address(IpAddr::V4(v)) => or_peer && *v == a,
            _ => false,
        });
        if carries {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// Takes `tunl0` out of use: down, and reef's tunnel address removed. (The device itself is
/// the kernel's fallback device and cannot be deleted.)
pub async fn release_kernel(handle: &Handle, address: Option<Ipv4Addr>) -> Result<(), TunnelError> {
    let Some(index) = link_index(handle, KERNEL_TUNNEL_DEVICE).await? else {
        return Ok(());
    };
    if let Some(a) = address {
        if let Some(m) = find_address(handle, index, a, false).await? {
            handle
                .address()
                .del(m)
                .execute()
                .await
                .map_err(|e| nl(format!("remove {a} from tunl0"), e))?;
        }
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .await
        .map_err(|e| nl("set tunl0 down", e))
}

/// The MTU pods get: the configured one, else the parent's minus the IP-in-IP header when
/// any pool may encapsulate, else the parent's.
pub fn pod_mtu(parent_mtu: u32, pools: &[Pool], configured: Option<u32>) -> u32 {
    if let Some(m) = configured {
        return m;
    }
    if pools.iter().any(|p| p.ipip_mode != IpipMode::Never) {
        parent_mtu.saturating_sub(IPIP_OVERHEAD)
    } else {
        parent_mtu
    }
}

/// Writes the MTU file the CNI plugin reads (decimal, newline), atomically: a plugin never
/// reads a half-written file.
pub fn write_mtu_file(path: &Path, mtu: u32) -> Result<(), TunnelError> {
    let err = |e: std::io::Error| TunnelError::Io {
        what: format!("write MTU file {}", path.display()),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{mtu}\n")).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// What the tunnel manager needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// The namespace to work in (`None`: the caller's).
    pub netns: Option<PathBuf>,
    /// The interface carrying the node address; its MTU sets the tunnel's.
    pub parent_interface: String,
    /// This node's address: the outer source of encapsulated packets.
    pub node_address: Ipv4Addr,
    /// The tunnel address from IPAM, put on the tunnel device (source for node → remote pod).
    pub tunnel_address: Option<Ipv4Addr>,
    /// Tunnel MTU; default parent MTU − 20.
    pub mtu: Option<u32>,
    /// Force the userspace fallback even where the kernel has ipip (tests, interop).
    pub force_userspace: bool,
    pub userspace_device: String,
    /// Keep the userspace TUN device (and so its routes) when this process exits, for the
    /// next agent to attach to: an agent restart then loses only the packets that arrive
    /// while no agent runs, instead of the device and every route through it.
    pub keep_userspace_device: bool,
}

impl TunnelConfig {
    pub fn new(parent_interface: &str, node_address: Ipv4Addr) -> Self {
        TunnelConfig {
            netns: None,
            parent_interface: parent_interface.to_string(),
            node_address,
            tunnel_address: None,
            mtu: None,
            force_userspace: false,
            userspace_device: USERSPACE_TUNNEL_DEVICE.to_string(),
            keep_userspace_device: false,
        }
    }
}

/// Keeps the one tunnel device in shape for the current plan.
#[derive(Debug)]
pub struct Tunnel {
    handle: Handle,
    cfg: TunnelConfig,
    mode: TunnelMode,
    mtu: u32,
    userspace: Option<UserspaceTunnel>,
    kernel_in_use: bool,
    /// Whether a persistent userspace device left by an earlier agent was looked for.
    leftover_checked: bool,
    /// The filter last applied (`inet reef-filter`), so nft runs only when it changes.
    filter: Option<FilterSpec>,
}

impl Tunnel {
    /// Detects the mode (logged) and the MTU; creates nothing until a route needs the tunnel.
    pub async fn new(cfg: TunnelConfig) -> Result<Self, TunnelError> {
        let nl = felix_lite::RtNetlink::connect(cfg.netns.as_deref())
            .await
            .map_err(|e| TunnelError::Io {
                what: "connect to netlink".into(),
                reason: e.to_string(),
            })?;
        let handle = nl.handle().clone();
        let mode = if cfg.force_userspace {
            TunnelMode::Userspace {
                device: cfg.userspace_device.clone(),
            }
        } else {
            match detect(&handle).await? {
                TunnelMode::Userspace { .. } => TunnelMode::Userspace {
                    device: cfg.userspace_device.clone(),
                },
                m => m,
            }
        };
        let mtu = match cfg.mtu {
            Some(m) => m,
            None => link_mtu(&handle, &cfg.parent_interface)
                .await?
                .saturating_sub(IPIP_OVERHEAD),
        };
        tracing::info!(?mode, mtu, "tunnel mode chosen");
        Ok(Tunnel {
            handle,
            cfg,
            mode,
            mtu,
            userspace: None,
            kernel_in_use: false,
            leftover_checked: false,
            filter: None,
        })
    }

    /// The mode the route plan must be computed with (and `reef status` shows).
    pub fn mode(&self) -> &TunnelMode {
        &self.mode
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Whether the tunnel device is currently set up.
    pub fn active(&self) -> bool {
        self.userspace.is_some() || self.kernel_in_use
    }

    /// Userspace counters, when the fallback runs.
    pub fn stats(&self) -> Option<TunnelStats> {
        self.userspace.as_ref().map(UserspaceTunnel::stats)
    }

    /// The filter in place (`inet reef-filter`), once applied.
    pub fn filter(&self) -> Option<&FilterSpec> {
        self.filter.as_ref()
    }

    /// Keeps reef's filter table in step (first: a kernel tunnel is never brought up without
    /// it), brings the device up when `plan` routes through it (before its routes are
    /// written), updates the userspace map, and takes the device out of use when nothing
    /// needs it. `cluster_nodes` are every ReefNode address (this node's own may be among
    /// them): encapsulated packets are accepted only from the others.
    pub async fn sync(
        &mut self,
        plan: &Plan,
        cluster_nodes: impl IntoIterator<Item = IpAddr>,
    ) -> Result<(), TunnelError> {
        let nodes: Vec<IpAddr> = cluster_nodes.into_iter().collect();
        self.sync_filter(&nodes).await?;
        match self.mode.clone() {
            TunnelMode::Kernel { device } => {
                if plan.tunnel_needed && !self.kernel_in_use {
                    ensure_kernel_device(&self.handle).await?;
                    bring_up(&self.handle, &device, self.mtu, self.cfg.tunnel_address).await?;
                    self.kernel_in_use = true;
                } else if !plan.tunnel_needed && self.kernel_in_use {
                    release_kernel(&self.handle, self.cfg.tunnel_address).await?;
                    self.kernel_in_use = false;
                }
            }
            TunnelMode::Userspace { device } => {
                if plan.tunnel_needed {
                    if self.userspace.is_none() {
                        let u = UserspaceTunnel::start(
                            self.cfg.netns.as_deref(),
                            &device,
                            self.cfg.node_address,
                            self.cfg.keep_userspace_device,
                        )?;
                        bring_up(&self.handle, &device, self.mtu, self.cfg.tunnel_address).await?;
                        self.userspace = Some(u);
                    }
                    if let Some(u) = &self.userspace {
                        u.set_table(EncapTable::from_plan(
                            plan,
                            nodes,
                            self.cfg.node_address,
                            self.cfg.tunnel_address,
                        ));
                    }
                } else if let Some(u) = self.userspace.take() {
                    // The device and its routes go with it.
                    u.remove()?;
                } else if !self.leftover_checked {
                    // An earlier agent kept its device for us, but nothing needs it now.
                    if let Some(index) = link_index(&self.handle, &device).await? {
                        self.handle
                            .link()
                            .del(index)
                            .execute()
                            .await
                            .map_err(|e| nl(format!("delete leftover {device}"), e))?;
                    }
                }
                self.leftover_checked = true;
            }
            TunnelMode::Unavailable => {}
        }
        Ok(())
    }

    /// Applies the filter for this mode and these nodes when it differs from the one in place
    /// (on failure nothing is recorded, so the next sync tries again).
    async fn sync_filter(&mut self, nodes: &[IpAddr]) -> Result<(), TunnelError> {
        let spec = match self.mode {
            TunnelMode::Kernel { .. } => FilterSpec::kernel(nodes, self.cfg.node_address),
            _ => FilterSpec::pods_only(),
        };
        if self.filter.as_ref() == Some(&spec) {
            return Ok(());
        }
        let netns = self.cfg.netns.clone();
        let s = spec.clone();
        tokio::task::spawn_blocking(move || filter::apply(netns.as_deref(), &s))
            .await
            .map_err(|e| TunnelError::Io {
                what: format!("apply table inet {}", filter::TABLE),
                reason: e.to_string(),
            })??;
        tracing::info!(?spec, "reef-filter applied");
        self.filter = Some(spec);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake root with the files the detection reads.
    fn root(files: &[(&str, &str)]) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "reeft-root-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        for (path, content) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    #[test]
    fn ipip_detection_from_module_files() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], false),
            (&[("proc/sys/kernel/osrelease", "6.1.0-56-amd64\n")], false),
            (&[("sys/module/ipip/refcnt", "0")], true),
            (
                &[
                    ("proc/sys/kernel/osrelease", "6.1.0-56-amd64\n"),
                    (
                        "lib/modules/6.1.0-56-amd64/modules.dep",
                        "kernel/net/ipv4/ipip.ko: kernel/net/ipv4/tunnel4.ko kernel/net/ipv4/ip_tunnel.ko\n",
                    ),
                ],
                true,
            ),
            (
                &[
                    ("proc/sys/kernel/osrelease", "6.1.0-56-amd64\n"),
                    ("lib/modules/6.1.0-56-amd64/modules.builtin", "kernel/net/ipv4/ipip.ko\n"),
                ],
                true,
            ),
            (
                &[
                    ("proc/sys/kernel/osrelease", "6.1.0-56-amd64\n"),
                    (
                        "lib/modules/6.1.0-56-amd64/modules.dep",
                        "kernel/net/ipv4/gre.ko:\nkernel/net/ipv6/sit.ko: kernel/net/ipv4/ipip.ko\n",
                    ),
                ],
                false, // ipip.ko only as someone's dependency is not a module line of its own
            ),
        ];
        for (files, want) in cases {
            let r = root(files);
            assert_eq!(ipip_module_available(&r), *want, "{files:?}");
            let _ = std::fs::remove_dir_all(&r);
        }
    }
}
