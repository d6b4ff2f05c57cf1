//! `reef ipam show | check | gc | release | release-node`: IPAM state straight from the
//! datastore.

use std::net::IpAddr;

use anyhow::Result;
use clap::Subcommand;
use ipnetwork::IpNetwork;
use reef_ipam::{HandleId, Problem, Store};
use serde::Serialize;

use crate::output::{Output, Table};
use crate::{datastore, Exit};
use reef_config::node_config::NodeConfig;

#[derive(Debug, Subcommand)]
pub enum IpamCmd {
    /// Pools and their utilisation; blocks with --blocks; borrowed addresses with --borrowed.
    Show {
        #[arg(long)]
        blocks: bool,
        #[arg(long)]
        borrowed: bool,
    },
    /// Look for leaks, duplicates, addresses outside pools and inconsistent records.
    /// Exits 1 when it finds a problem.
    Check,
    /// Release leaked addresses older than the grace period (never one reused meanwhile).
    Gc {
        /// Seconds an allocation must be old before gc frees it.
        #[arg(long, default_value_t = 600)]
        grace: u64,
    },
    /// Release everything a deleted node held: its addresses (pods' and tunnel), its blocks
    /// (those with other nodes' addresses lose their affinity and go when empty), affinities
    /// and its ReefNode. The Kubernetes datastore's cleaner does this by itself; refused while
    /// the node's Node object exists.
    ReleaseNode { name: String },
    /// Release one address or every address of a handle.
    Release {
        #[arg(long, conflicts_with = "handle", required_unless_present = "handle")]
        ip: Option<IpAddr>,
        #[arg(long)]
        handle: Option<String>,
    },
}

#[derive(Serialize)]
struct PoolJson {
    name: String,
    cidr: IpNetwork,
    disabled: bool,
    size: String,
    in_use: u64,
    blocks: Vec<BlockJson>,
}

#[derive(Serialize)]
struct BlockJson {
    cidr: IpNetwork,
    affinity: Option<String>,
    size: u32,
    in_use: u32,
    borrowed: Vec<BorrowedJson>,
}

#[derive(Serialize)]
struct BorrowedJson {
    address: IpAddr,
    node: String,
}

#[derive(Serialize)]
struct CheckJson {
    clean: bool,
    blocks: usize,
    allocations: usize,
    handles: usize,
    leaked: usize,
    /// LoadBalancer addresses allocated in LoadBalancerIPPools (absent without any pool).
    #[serde(skip_serializing_if = "Option::is_none")]
    load_balancer_addresses: Option<usize>,
    problems: Vec<String>,
}

#[derive(Serialize)]
struct GcJson {
    released: Vec<IpAddr>,
    kept: usize,
    handles_fixed: Vec<String>,
    affinities_fixed: Vec<String>,
}

#[derive(Serialize)]
struct ReleaseNodeJson {
    node: String,
    addresses: Vec<IpAddr>,
    blocks_released: Vec<IpNetwork>,
    blocks_orphaned: Vec<IpNetwork>,
    affinities_deleted: usize,
    reef_node_deleted: bool,
}

#[derive(Serialize)]
struct ReleaseJson {
    released: Vec<IpAddr>,
}

pub fn run(cfg: &NodeConfig, cmd: IpamCmd, out: Output) -> Result<Exit> {
    let ipam = datastore::open_ipam(cfg)?;
    match cmd {
        IpamCmd::Show { blocks, borrowed } => {
            let pools: Vec<PoolJson> = ipam
                .show()?
                .into_iter()
                .map(|p| PoolJson {
                    name: p.name,
                    cidr: p.cidr,
                    disabled: p.disabled,
                    size: p.size.to_string(),
                    in_use: p.in_use,
                    blocks: p
                        .blocks
                        .into_iter()
                        .map(|b| BlockJson {
                            cidr: b.cidr,
                            affinity: b.affinity,
                            size: b.size,
                            in_use: b.in_use,
                            borrowed: b
                                .borrowed
                                .into_iter()
                                .map(|(address, node)| BorrowedJson { address, node })
                                .collect(),
                        })
                        .collect(),
                })
                .collect();
            if out.json {
                out.print_json(&pools)?;
                return Ok(Exit::Ok);
            }
            let mut t = Table::new(&["POOL", "CIDR", "IN USE", "SIZE", "UTILISATION", "DISABLED"]);
            for p in &pools {
                let size: f64 = p.size.parse().unwrap_or(0.0);
                t.row(vec![
                    p.name.clone(),
                    p.cidr.to_string(),
                    p.in_use.to_string(),
                    p.size.clone(),
                    percent(p.in_use as f64, size),
                    p.disabled.to_string(),
                ]);
            }
            print!("{}", t.render());
            if blocks {
                let mut t = Table::new(&["BLOCK", "POOL", "NODE", "IN USE", "SIZE", "UTILISATION"]);
                for p in &pools {
                    for b in &p.blocks {
                        t.row(vec![
                            b.cidr.to_string(),
                            p.name.clone(),
                            b.affinity.clone().unwrap_or_else(|| "-".into()),
                            b.in_use.to_string(),
                            b.size.to_string(),
                            percent(b.in_use as f64, b.size as f64),
                        ]);
                    }
                }
                println!();
                print!("{}", t.render());
            }
            if borrowed {
                let mut t = Table::new(&["ADDRESS", "BLOCK", "BLOCK NODE", "USED BY NODE"]);
                for p in &pools {
                    for b in &p.blocks {
                        for br in &b.borrowed {
                            t.row(vec![
                                br.address.to_string(),
                                b.cidr.to_string(),
                                b.affinity.clone().unwrap_or_else(|| "-".into()),
                                br.node.clone(),
                            ]);
                        }
                    }
                }
                println!();
                print!("{}", t.render());
            }
            Ok(Exit::Ok)
        }
        IpamCmd::Check => {
            let mut r = ipam.check(None)?;
            // What nodes that no longer exist still hold (ReefNode gone; with the Kubernetes
            // datastore, Node gone).
            let gone = ipam.gone_nodes()?;
            let leaked = r
                .problems
                .iter()
                .filter(|p| matches!(p, Problem::Leaked { .. }))
                .count();
            let (lb_addresses, lb_problems) = check_load_balancer(cfg)?;
            let clean = r.is_clean() && gone.is_empty() && lb_problems.is_empty();
            let mut problems: Vec<String> = r.problems.drain(..).map(|p| p.to_string()).collect();
            problems.extend(gone.iter().map(ToString::to_string));
            problems.extend(lb_problems);
            let j = CheckJson {
                clean,
                blocks: r.blocks,
                allocations: r.allocations,
                handles: r.handles,
                leaked,
                load_balancer_addresses: lb_addresses,
                problems,
            };
            if out.json {
                out.print_json(&j)?;
            } else {
                let lb = j
                    .load_balancer_addresses
                    .map(|n| format!(", {n} LoadBalancer addresses"))
                    .unwrap_or_default();
                println!(
                    "checked {} blocks, {} allocations, {} handles{lb}: {}",
                    j.blocks,
                    j.allocations,
                    j.handles,
                    if j.clean {
                        "no problems"
                    } else {
                        "PROBLEMS FOUND"
                    }
                );
                for p in &j.problems {
                    println!("  - {p}");
                }
            }
            Ok(if j.clean { Exit::Ok } else { Exit::Problems })
        }
        IpamCmd::Gc { grace } => {
            let r = ipam.gc(grace, None)?;
            let j = GcJson {
                released: r.released,
                kept: r.kept,
                handles_fixed: r.handles_fixed,
                affinities_fixed: r
                    .affinities_fixed
                    .into_iter()
                    .map(|(n, c)| format!("{n}/{c}"))
                    .collect(),
            };
            if out.json {
                out.print_json(&j)?;
            } else {
                println!(
                    "released {} leaked addresses; kept {} younger than {grace}s; fixed {} handles and {} affinities",
                    j.released.len(),
                    j.kept,
                    j.handles_fixed.len(),
                    j.affinities_fixed.len()
                );
                for a in &j.released {
                    println!("  released {a}");
                }
            }
            Ok(Exit::Ok)
        }
        IpamCmd::ReleaseNode { name } => {
            if ipam.store().has_nodes() && ipam.store().node_labels(&name)?.is_some() {
                anyhow::bail!(
                    "node {name}: its Node object exists; delete the Node first (kubectl delete node {name}), or leave it to the agents' cleaner"
                );
            }
            if !ipam.store().has_nodes() && name == cfg.node_name {
                anyhow::bail!("node {name} is this node (nodeName in the node config); run release-node for another node");
            }
            let r = ipam.release_node(&name)?;
            let j = ReleaseNodeJson {
                node: name.clone(),
                addresses: r.addresses,
                blocks_released: r.blocks_released,
                blocks_orphaned: r.blocks_orphaned,
                affinities_deleted: r.affinities_deleted.len(),
                reef_node_deleted: r.reef_node_deleted,
            };
            if out.json {
                out.print_json(&j)?;
            } else {
                println!(
                    "node {name}: released {} addresses, {} blocks ({} with other nodes' addresses left without owner), {} affinities; ReefNode {}",
                    j.addresses.len(),
                    j.blocks_released.len(),
                    j.blocks_orphaned.len(),
                    j.affinities_deleted,
                    if j.reef_node_deleted { "deleted" } else { "already gone" }
                );
            }
            Ok(Exit::Ok)
        }
        IpamCmd::Release { ip, handle } => {
            let released = match (ip, handle) {
                (Some(ip), None) => ipam.release_addresses(&[ip])?,
                (None, Some(h)) => ipam.release_by_handle(&HandleId(h))?,
                _ => anyhow::bail!("give exactly one of --ip ADDRESS and --handle ID"),
            };
            if out.json {
                out.print_json(&ReleaseJson {
                    released: released.clone(),
                })?;
            } else if released.is_empty() {
                println!("nothing to release");
            } else {
                for a in &released {
                    println!("released {a}");
                }
            }
            Ok(Exit::Ok)
        }
    }
}

fn percent(used: f64, size: f64) -> String {
    if size <= 0.0 {
        return "-".into();
    }
    format!("{:.1}%", used * 100.0 / size)
}

/// LoadBalancer addresses (Kubernetes datastore only): every allocation in a LoadBalancerIPPool
/// belongs to an existing LoadBalancer Service that shows it, no Service shows an address reef
/// did not allocate, no address is allocated twice ([`reef_ipam::loadbalancer::check`]).
/// Returns the number of allocations and the problems; nothing to check (None, none) with the
/// embedded datastore, without the LoadBalancerIPPool CRD or without any pool.
fn check_load_balancer(cfg: &NodeConfig) -> Result<(Option<usize>, Vec<String>)> {
    use anyhow::Context;
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, ListParams};
    use reef_config::crds::LoadBalancerIpPool;
    use reef_config::node_config::Datastore;
    use reef_ipam::loadbalancer::{check, LbPool};

    let Datastore::Kubernetes { kubeconfig } = &cfg.datastore else {
        return Ok((None, Vec::new()));
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the Kubernetes API")?;
    rt.block_on(async {
        let config = reef_ipam::kubernetes::client_config(kubeconfig.as_deref()).await?;
        let client = kube::Client::try_from(config).context("a Kubernetes client")?;
        let pools: Api<LoadBalancerIpPool> = Api::all(client.clone());
        let pools = match pools.list(&ListParams::default()).await {
            Ok(l) => l.items,
            // The CRD is not installed: reef hands out no LoadBalancer addresses.
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok((None, Vec::new())),
            Err(e) => return Err(e).context("listing LoadBalancerIPPools"),
        };
        if pools.is_empty() {
            return Ok((None, Vec::new()));
        }
        let services: Api<Service> = Api::all(client);
        let services = services
            .list(&ListParams::default())
            .await
            .context("listing Services")?
            .items;
        let pools: Vec<LbPool> = pools
            .iter()
            .map(crate::agent::loadbalancer::pool_of)
            .collect();
        let services: Vec<_> = services
            .iter()
            .map(crate::agent::loadbalancer::service_of)
            .collect();
        let n = pools.iter().map(|p| p.status.allocations.len()).sum();
        Ok((Some(n), check(&pools, &services)))
    })
}
