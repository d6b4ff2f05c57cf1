//! `reef node run`: the node agent.
//!
//! ```text
//!  datastore (Kubernetes API or embedded SQLite)
//!    │ list once, then watch from its revision (re-list only when a watch expires or fails):
//!    │  cluster-wide  BGPConfiguration, ReefNodes, BGPPeers, IPPools, BlockAffinities
//!    │  IPAMBlocks    only reef.dev/node=<this node> and reef.dev/lent=true
//!    ▼ one thread per stream ──mpsc<(stream, Delta)>──▶ sync task (owns the cache)
//!                                                          │ watch<Reading> (View, problems;
//!                                                          ▼  spec/label changes only)
//!   ┌────────────────┐ start: the first view's peers ┌────────────────────┐
//!   │  agent loop    │ then add/update/remove peers, │ speaker (reef_bgp, │ SIGTERM / SIGINT:
//!   │  (this task;   │──originate/withdraw,────────▶ │ owns the RIB; after│ graceful restart,
//!   │  never waits   │  ownership, pools, policies   │ a restart defers   │ kernel routes stay,
//!   │  on the API)   │◀──BestPaths / PeerState /─────│ selection until    │ best paths saved
//!   └────────────────┘   SelectionDeferralEnded      │ every peer's End-  │ for the next agent
//!     │  ▲               (SpeakerEvent)              │ of-RIB, ≤ 60 s)    │ (forwarding.rs)
//!     │  │                                           └────────────────────┘
//!     │  └─ watch<Passwords> ◀── secrets task ◀── list+watch of each Secret the view names
//!     ├──── watch<Wanted> ───▶  (secrets.rs)      (fieldSelector metadata.name=<name>), or
//!     │    (Secret name, key)                       <dir>/<secret>/<key> (embedded store)
//!     │ remote routes (forwarding::Remote): after a restart the saved ones stand until
//!     │ SelectionDeferralEnded, then those BGP did not send again go
//!     │◀── watch<Links> (interface names) ◀── links task (links.rs) ◀── rtnetlink link events
//!     │ plan (pure; on a view, best-path or link change; a timer only retries a failed sync)
//!     │   ├─▶ tunnel.sync (tunl0 or userspace ipip, MTU file, nat table)
//!     │   └─▶ watch<Vec<Route>> ─▶ felix-lite reconciler task ─▶ rtnetlink
//!     ├─▶ watch<Option<status::Input>> ─▶ status task ─▶ ReefNode status (coalesced,
//!     │                                   written only when changed, at most every 5 s)
//!     ├─▶ watch<Snapshot> ─▶ control socket (reef status / routes) and HTTP (/healthz,
//!     │                      /readyz, /metrics)
//!     │◀── watch<Labels> ◀── Node labels follower (cleanup.rs; a watch on this Node)
//!     │                        └─▶ relabel task (register.rs) ─▶ ReefNode labels (the
//!     │                             latest labels; a failed write retried with backoff)
//!     └◀── watch<cni::Report> ◀── cni task (cni.rs; --install only): CNI files checked,
//!                                 plugin token renewed (TokenRequest)
//! ```
//!
//! The loop is the single owner of the agent's state; everything else gets snapshots. It
//! never awaits the API server: its datastore reads are the sync task's cached view, its BGP
//! passwords the secrets task's cache (a Secret's change re-syncs the peers; a datastore
//! change costs no Secret request), and every write — the ReefNode's status, its labels after
//! the Node's changed, the CNI install and token renewal — is a task's, which the loop hands
//! the latest wanted state on a watch. What it awaits is the speaker, the tunnel (netlink)
//! and the nft table. Only start-up reads and writes the datastore itself (opening it, the
//! Node's labels, registration: the first plan needs the tunnel address).
//!
//! One runtime: the Kubernetes store's requests run as tasks on the agent's own runtime
//! (`datastore::open_store_on`). Its `Store` API is blocking, so it is called only from
//! threads that drive none of those tasks — the stream, label, cleaner and LoadBalancer Lease
//! threads, and `spawn_blocking` for start-up and the status and label writes; on an async
//! thread it panics rather than let a worker wait for a request that needs it.

mod cleanup;
mod cni;
mod forwarding;
mod http;
mod links;
pub mod loadbalancer;
mod reflector;
mod register;
mod secrets;
pub mod services;
pub mod snapshot;
mod status;
mod sync;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context, Result};
use ipnetwork::IpNetwork;
use reef_bgp::speaker::{
    PeerConfig, Shutdown, Speaker, SpeakerConfig, SpeakerEvent, SpeakerHandle,
};
use reef_config::node_config::NodeConfig;
use reef_ipam::{Ipam, Store};
use tokio::sync::watch;

use self::snapshot::{PeerRow, RouteRow, Snapshot};
use self::view::View;

/// Where BGP passwords are read from when the datastore is embedded (see `secrets`).
const SECRETS_DIR: &str = "/etc/reef/secrets";
/// How often the loop refreshes its snapshot (heartbeat, sessions, readiness) when nothing
/// happens; no replan (pods' veths come from link events, see `links`).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How soon a failed tunnel or natOutgoing sync is tried again.
const RETRY_SYNC: Duration = Duration::from_secs(5);
/// How long start-up waits for the first complete datastore reading.
const FIRST_READING: Duration = Duration::from_secs(30);
/// How often at most the node resource's status is written (only when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How long BGP sessions get to come up before a peer that stays down no longer holds the
/// node's readiness (a router being down must not keep every node unready).
const BGP_FIRST_CHANCE: Duration = Duration::from_secs(30);

type SharedIpam = Arc<Ipam<Box<dyn Store>>>;

/// Runs the agent until SIGTERM / SIGINT.
pub async fn run(mut cfg: NodeConfig, install: Option<crate::install::InstallArgs>) -> Result<()> {
    let started = Instant::now();
    // The Kubernetes store's requests run on this runtime; its blocking calls (this one, the
    // `blocking` ones below, the watch, label and cleaner threads) are made off its async
    // threads, where they would panic.
    let ipam: SharedIpam = {
        let cfg = cfg.clone();
        let handle = tokio::runtime::Handle::current();
        blocking(move || {
            let store = crate::datastore::open_store_on(&cfg, handle)?;
            Ok(Arc::new(Ipam::new(store)))
        })
        .await?
    };
    let secrets_dir = std::env::var_os("REEF_SECRETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SECRETS_DIR));
    let secrets_source = secrets::Source::open(&cfg, secrets_dir)
        .await
        .context("opening the Kubernetes API for BGP passwords")?;

    // Node selectors match the Node's labels with the Kubernetes datastore (the node
    // config's with the embedded store), followed from here on.
    cfg.labels = {
        let ipam = ipam.clone();
        let cfg = cfg.clone();
        blocking(move || {
            reef_ipam::store::effective_node_labels(ipam.store(), &cfg.node_name, &cfg.labels)
                .context("reading the Node's labels")
        })
        .await?
    };
    let mut labels_rx = cleanup::follow_labels(ipam.clone(), &cfg);

    // 1. Register: the tunnel address (which claims this node's first block) and the node
    //    resource the other nodes build their mesh from.
    let tunnel_addr = {
        let ipam = ipam.clone();
        let cfg = cfg.clone();
        blocking(move || register::register(&ipam, &cfg)).await?
    };
    tracing::info!(node = %cfg.node_name, address = %cfg.address, tunnel = %tunnel_addr, "registered");
    // From here on the relabel task keeps the ReefNode's labels the Node's (see the diagram).
    let relabel = register::spawn_relabel(ipam.clone(), cfg.clone(), labels_rx.clone());
    // The datastore from here on: the sync task's cache (see the diagram).
    let mut readings = sync::spawn(ipam.clone(), sync::streams(&cfg.node_name));
    let first = first_reading(&mut readings).await?;
    let view = View::clone(&first.view);
    // BGP passwords: the secrets task watches the Secrets the view names (see the diagram).
    let (wanted_secrets, wanted_rx) = watch::channel(secrets::wanted(&view));
    let mut passwords = secrets::spawn(secrets_source, wanted_rx);
    let first_passwords = first_passwords(&mut passwords, &secrets::wanted(&view)).await;
    // One agent of the cluster (the Lease holder) releases what deleted nodes and vanished
    // pods held (Kubernetes datastore only).
    let cleaner = {
        let ipam = ipam.clone();
        let cfg = cfg.clone();
        blocking(move || cleanup::spawn(ipam, &cfg).context("starting the cleaner")).await?
    };
    // LoadBalancer IP assignment by the holder of its Lease (Kubernetes datastore only).
    let _load_balancer = service_client(&cfg)
        .await
        .map(|c| loadbalancer::spawn(c, ipam.clone(), cfg.node_name.clone()));

    // 2. The data plane: tunnel device (kernel ipip, or the userspace fallback) and the
    //    route reconciler.
    let parent = match &cfg.interface {
        Some(i) => i.clone(),
        None => {
            crate::install::interface_with(cfg.address.ip())
                .context("finding the node's interface (or set `interface` in the node config)")?
                .0
        }
    };
    let mut tcfg = reef_tunnel::TunnelConfig::new(
        &parent,
        view::v4(cfg.address.ip())
            .ok_or_else(|| anyhow!("address: the node address must be IPv4"))?,
    );
    tcfg.tunnel_address = view::v4(tunnel_addr);
    tcfg.mtu = cfg.mtu.map(|m| m + reef_tunnel::device::IPIP_OVERHEAD);
    // A restarted agent finds the userspace device and its routes where it left them.
    tcfg.keep_userspace_device = true;
    let mut tunnel = reef_tunnel::Tunnel::new(tcfg)
        .await
        .context("setting up the tunnel")?;
    let mtu = cfg.mtu.unwrap_or_else(|| tunnel.mtu());
    reef_tunnel::device::write_mtu_file(&cfg.mtu_file, mtu).context("writing the MTU file")?;
    tracing::info!(mode = %describe_tunnel(tunnel.mode()), mtu, parent = %parent, "tunnel");

    let nl = felix_lite::RtNetlink::connect(None)
        .await
        .context("opening rtnetlink")?;
    let rcfg = felix_lite::ReconcilerConfig {
        protocol: felix_lite::RouteProtocol(cfg.route_protocol),
        ..Default::default()
    };
    let reconciler = felix_lite::Reconciler::new(nl, rcfg);
    let (desired_tx, desired_rx) = watch::channel(Vec::new());
    let (rstatus_tx, rstatus_rx) = watch::channel(felix_lite::ReconcilerStatus::default());
    let reconcile_task = tokio::spawn(reconciler.run(desired_rx, Some(rstatus_tx)));
    // The namespace's interfaces, from link events (a pod's veth appears after its allocation).
    let links = links::spawn().await?;

    // 3. The BGP speaker, originating this node's blocks; graceful restart so peers keep our
    //    routes while the agent restarts.
    let mut scfg = SpeakerConfig::new(
        view::node_as(&cfg, &view),
        view::v4(cfg.address.ip()).unwrap_or([0, 0, 0, 0].into()),
    );
    scfg.graceful_restart.enabled = true;
    // IPv6 blocks ride the IPv4 sessions (MP-BGP) with the node's IPv6 address as next hop.
    scfg.next_hop_v6 = cfg.address_v6.and_then(|a| view::v6(a.ip()));
    scfg.cluster_pools = view.pools.iter().map(|p| p.spec.cidr).collect();
    if let Some(b) = &view.bgp {
        scfg.listen_port = b.listen_port;
        scfg.hold_time = b.hold_time_seconds;
        scfg.graceful_restart.restart_time = b.graceful_restart_seconds;
    }
    scfg.cluster_id = view
        .nodes
        .iter()
        .find(|n| n.name == cfg.node_name)
        .and_then(|n| n.spec.route_reflector_cluster_id);
    let own: BTreeSet<IpNetwork> = view::own_blocks(&cfg, &view);
    scfg.originate = own.iter().copied().collect();
    // A clean restart: the previous agent left its BGP best paths and kept its kernel routes.
    // Start from them (stale) so nothing changes in the kernel or the tunnel, tell the peers
    // we restarted with forwarding state kept, and sweep what they do not send again once
    // the speaker's selection deferral ends (every peer sent End-of-RIB, or its timer —
    // the restart time, at most 60 s — ran out).
    let state_file = forwarding_state_path(&cfg);
    let restart_window = Duration::from_secs(u64::from(scfg.graceful_restart.restart_time));
    let kept = forwarding::load(&state_file, restart_window);
    scfg.graceful_restart.restarting = kept.is_some();
    let scfg_pools = scfg.cluster_pools.clone();
    // Both Service export policies exist from the start, so a peer may name either at any time.
    scfg.policy = services::policies(&services::Ranges::default(), None);
    let scfg_policies = scfg.policy.clone();
    // The peers of the first reading start with the speaker, so that a restart's selection
    // deferral waits for each of them. One the speaker would refuse is left to `sync_peers`,
    // which reports it as for a peer added later.
    let svc_client = service_client(&cfg).await;
    let mut initial = {
        let (ranges, _) = services::ranges(view.bgp.as_ref(), &scfg.cluster_pools);
        let services_on = svc_client.is_some() && !ranges.is_empty();
        wanted_peers(&cfg, &view, &first_passwords.lookup, services_on).0
    };
    initial.retain(|a, p| p.validate(&format!("peer {a}"), &scfg).is_ok());
    scfg.peers = initial.values().cloned().collect();
    let (speaker, mut events) = Speaker::start(scfg)
        .await
        .context("starting the BGP speaker")?;
    // Mesh routes are accepted only from the node that owns them. The sessions started with
    // the speaker have not exchanged a route yet (that takes a connection and an OPEN each
    // way); what came before this would be judged again.
    let ownership = view::ownership(&cfg, &view);
    speaker
        .set_ownership(Some(ownership.clone()))
        .await
        .context("giving the BGP speaker the cluster's ownership")?;

    // 4. Status for the CLI and for HTTP.
    let (snap_tx, snap_rx) = watch::channel(Snapshot::starting(&cfg));
    let control = crate::control::serve(cfg.agent_socket.clone(), snap_rx.clone())
        .await
        .context("opening the control socket")?;
    let http = http::serve(cfg.metrics_address, snap_rx.clone())
        .await
        .context("opening the metrics address")?;

    if let Some(k) = &kept {
        tracing::info!(
            routes = k.len(),
            peers = initial.len(),
            "restart: keeping the previous agent's routes until the speaker's selection deferral ends"
        );
    }
    let mut st = AgentState {
        cluster_pools: scfg_pools,
        ownership,
        cfg: cfg.clone(),
        parent: parent.clone(),
        passwords,
        wanted_secrets,
        links,
        view,
        own: own.clone(),
        peers: initial,
        remote: forwarding::Remote::new(kept),
        tunnel_mode: describe_tunnel(tunnel.mode()),
        started: SystemTime::now(),
        last_plan: None,
        problems: Vec::new(),
        mtu,
        nat: None,
        install: install.map(|args| InstallState {
            report: cni::spawn(args.clone()),
            args,
        }),
        datastore_read: true,
        datastore_problems: first.problems.clone(),
        first_chance: started + BGP_FIRST_CHANCE,
        svc: ServiceState {
            client: svc_client,
            ranges: watch::channel(services::Ranges::default()).0,
            adverts: None,
            policies: scfg_policies,
            originated: BTreeSet::new(),
            shown: services::ServiceAdverts::default(),
        },
    };
    st.sync_services(&speaker).await;
    st.sync_peers(&speaker).await;
    st.replan(&mut tunnel, &desired_tx).await;

    let status_tx = status::spawn(ipam.clone(), st.cfg.node_name.clone(), STATUS_EVERY);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut dirty = false;
    let mut replanned = Instant::now();
    loop {
        let retry_sync = st
            .problems
            .iter()
            .any(|p| p.starts_with("tunnel:") || p.starts_with("natOutgoing"));
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                if st.on_event(ev) {
                    dirty = true;
                }
                // Drain what is already queued before replanning once.
                while let Ok(ev) = events.try_recv() {
                    dirty |= st.on_event(ev);
                }
            }
            Ok(()) = labels_rx.changed() => {
                let labels = labels_rx.borrow_and_update().clone();
                tracing::info!(?labels, "node labels changed");
                st.cfg.labels = labels;
                // BGPPeers select by them. The relabel task writes them to the ReefNode (for
                // the other nodes' peer selectors); the sync task brings it back.
                st.sync_peers(&speaker).await;
                dirty = true;
            }
            Ok(()) = st.passwords.changed() => {
                // A watched Secret changed (or was first read): the peers take it.
                st.sync_peers(&speaker).await;
            }
            Some(adverts) = service_adverts(&mut st.svc.adverts) => {
                st.apply_service_adverts(adverts, &speaker).await;
            }
            Ok(()) = readings.changed() => {
                let r = readings.borrow_and_update().clone();
                tracing::debug!(problems = r.problems.len(), "datastore changed");
                dirty |= st.on_reading(r, &speaker).await;
            }
            Ok(()) = st.links.changed() => {
                // An interface came or went (a pod's veth): local pods' routes follow.
                dirty = true;
            }
            Some(report) = install_report(&mut st.install) => {
                // The CNI install task's outcome: readiness and problems (the snapshot).
                st.problems.retain(|p| !p.starts_with("CNI install"));
                st.problems.extend(report.problem);
            }
            _ = heartbeat.tick() => {
                // A failed tunnel or natOutgoing sync is tried again (the plan is the same).
                dirty |= retry_sync && replanned.elapsed() >= RETRY_SYNC;
            }
        }
        if dirty {
            dirty = false;
            st.replan(&mut tunnel, &desired_tx).await;
            replanned = Instant::now();
        }
        let peers = speaker.status().await.unwrap_or_default();
        let rs = rstatus_rx.borrow().clone();
        let _ = snap_tx.send(st.snapshot(&peers, &rs, tunnel.stats()));
        let input = status::Input {
            peers,
            blocks: st.own.iter().copied().collect(),
            routes_desired: rs.desired,
            routes_programmed: rs.programmed,
        };
        status_tx.send_if_modified(|s| {
            let changed = s.as_ref() != Some(&input);
            *s = Some(input);
            changed
        });
    }

    tracing::info!("shutting down: graceful restart, kernel routes kept");
    let _ = speaker.shutdown(Shutdown::Graceful).await;
    if let Err(e) = forwarding::save(&state_file, &st.remote.routes) {
        tracing::warn!(error = %e, file = %state_file.display(), "saving the forwarding state");
    }
    drop(desired_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), reconcile_task).await;
    control.abort();
    http.abort();
    let _ = std::fs::remove_file(&cfg.agent_socket);
    relabel.abort();
    // Off the async threads: the cleaner joins its thread and hands its Lease over (a store
    // request), and an embedded store joins its checkpointer (which may be in an fsync).
    let _ = tokio::task::spawn_blocking(move || {
        drop(cleaner);
        drop(ipam)
    })
    .await;
    Ok(())
}

/// The agent loop's state.
struct AgentState {
    /// The pools the speaker judges mesh routes by (followed from the IPPools).
    cluster_pools: Vec<IpNetwork>,
    /// Who owns which blocks and addresses, as the speaker last took it (followed from the
    /// ReefNodes and blocks).
    ownership: reef_bgp::speaker::Ownership,
    cfg: NodeConfig,
    /// The interface carrying the node address, found once at start-up.
    parent: String,
    /// The secrets task's answers, and the references it is to answer (see `secrets`).
    passwords: watch::Receiver<secrets::Passwords>,
    wanted_secrets: watch::Sender<secrets::Wanted>,
    /// The namespace's interface names (the links task's; pods' veths among them).
    links: watch::Receiver<links::Links>,
    view: View,
    own: BTreeSet<IpNetwork>,
    /// Sessions configured on the speaker.
    peers: BTreeMap<IpAddr, PeerConfig>,
    /// Best paths from BGP, and after a clean restart the kept routes until the speaker's
    /// selection deferral ends.
    remote: forwarding::Remote,
    tunnel_mode: String,
    started: SystemTime,
    last_plan: Option<reef_tunnel::Plan>,
    problems: Vec<String>,
    mtu: u32,
    /// The pools natOutgoing was last applied for (None: not yet, or it failed).
    nat: Option<Vec<reef_tunnel::Pool>>,
    /// Install mode (`reef node run --install`): the CNI install this agent keeps true.
    install: Option<InstallState>,
    /// The datastore has been read (readiness).
    datastore_read: bool,
    /// The sync task's problems (failed lists, records that do not decode).
    datastore_problems: Vec<String>,
    /// Until then a BGP session that is not up holds readiness.
    first_chance: Instant,
    /// Service advertisement (see `services`).
    svc: ServiceState,
}

/// The agent loop's side of Service advertisement: the ranges it hands the watch task, the
/// export policies it gave the speaker, and the Service routes it originates.
struct ServiceState {
    /// The Kubernetes client (Kubernetes datastore only; the watch starts when first needed).
    client: Option<kube::Client>,
    ranges: watch::Sender<services::Ranges>,
    adverts: Option<watch::Receiver<services::ServiceAdverts>>,
    policies: reef_bgp::policy::PolicySet,
    originated: BTreeSet<IpNetwork>,
    shown: services::ServiceAdverts,
}

/// The CNI install the agent keeps (the cni task installs, checks and renews the token).
struct InstallState {
    args: crate::install::InstallArgs,
    report: watch::Receiver<cni::Report>,
}

impl AgentState {
    /// Takes a speaker event; returns whether the plan's inputs changed.
    fn on_event(&mut self, ev: SpeakerEvent) -> bool {
        if let SpeakerEvent::PeerState {
            address,
            state,
            reason,
            ..
        } = &ev
        {
            tracing::info!(peer = %address, state = ?state, reason = ?reason, "BGP session");
        }
        self.remote.apply(&ev)
    }

    /// Takes the sync task's latest reading; returns whether the plan's inputs changed.
    async fn on_reading(&mut self, r: sync::Reading, speaker: &SpeakerHandle) -> bool {
        if r.problems != self.datastore_problems {
            for p in r
                .problems
                .iter()
                .filter(|p| !self.datastore_problems.contains(p))
            {
                tracing::warn!(problem = %p, "reading the datastore");
            }
            self.datastore_problems = r.problems.clone();
        }
        self.problems.retain(|p| !p.starts_with("datastore"));
        self.problems.extend(r.problems);
        if !r.complete {
            return false;
        }
        self.datastore_read = true;
        self.on_view(View::clone(&r.view), speaker).await
    }

    /// Takes a new datastore reading; returns whether the plan's inputs changed.
    async fn on_view(&mut self, v: View, speaker: &SpeakerHandle) -> bool {
        self.view = v;
        let own = view::own_blocks(&self.cfg, &self.view);
        let added: Vec<IpNetwork> = own.difference(&self.own).copied().collect();
        let removed: Vec<IpNetwork> = self.own.difference(&own).copied().collect();
        if !added.is_empty() {
            if let Err(e) = speaker.originate(added).await {
                tracing::warn!(error = %e, "originating blocks");
            }
        }
        if !removed.is_empty() {
            if let Err(e) = speaker.withdraw(removed).await {
                tracing::warn!(error = %e, "withdrawing blocks");
            }
        }
        self.own = own;
        let pools: Vec<IpNetwork> = self.view.pools.iter().map(|p| p.spec.cidr).collect();
        if pools != self.cluster_pools {
            match speaker.set_cluster_pools(pools.clone()).await {
                Ok(()) => {
                    tracing::info!(?pools, "cluster pools changed");
                    self.cluster_pools = pools;
                }
                Err(e) => tracing::warn!(error = %e, "updating the cluster pools"),
            }
        }
        let ownership = view::ownership(&self.cfg, &self.view);
        if ownership != self.ownership {
            match speaker.set_ownership(Some(ownership.clone())).await {
                Ok(()) => self.ownership = ownership,
                Err(e) => tracing::warn!(error = %e, "updating the ownership of blocks"),
            }
        }
        self.sync_services(speaker).await;
        self.sync_peers(speaker).await;
        // Pods come and go between readings; the plan compares itself to the last one.
        true
    }

    /// Service advertisement follows BGPConfiguration and the pools: the ranges go to the
    /// watch task (started when first needed), the export policies to the speaker.
    async fn sync_services(&mut self, speaker: &SpeakerHandle) {
        let pools: Vec<IpNetwork> = self.view.pools.iter().map(|p| p.spec.cidr).collect();
        let (ranges, problems) = services::ranges(self.view.bgp.as_ref(), &pools);
        self.problems.retain(|p| !p.starts_with("services:"));
        self.problems.extend(problems);
        let policies = services::policies(&ranges, self.view.bgp.as_ref());
        if policies != self.svc.policies {
            match speaker.set_policies(policies.clone()).await {
                Ok(()) => self.svc.policies = policies,
                Err(e) => {
                    tracing::warn!(error = %e, "Service route export policies");
                    self.problems
                        .push(format!("services: export policies: {e}"));
                }
            }
        }
        if ranges.is_empty() {
            self.svc.shown.note = Some(
                "not configured (BGPConfiguration serviceClusterIPs, serviceExternalIPs, \
                 serviceLoadBalancerIPs)"
                    .into(),
            );
        } else if self.svc.client.is_none() {
            let note = "the embedded datastore has no Services: Service advertisement needs \
                        the Kubernetes datastore";
            self.svc.shown.note = Some(note.into());
            self.problems.push(format!("services: {note}"));
        } else {
            self.svc.shown.note = None;
            if self.svc.adverts.is_none() {
                if let Some(c) = &self.svc.client {
                    self.svc.adverts = Some(services::spawn(
                        c.clone(),
                        self.cfg.node_name.clone(),
                        self.svc.ranges.subscribe(),
                    ));
                }
            }
        }
        let active = if self.svc.client.is_some() {
            ranges.clone()
        } else {
            services::Ranges::default()
        };
        self.svc.ranges.send_if_modified(|r| {
            let changed = *r != active;
            *r = active;
            changed
        });
    }

    /// The watch task published new Service routes: originate and withdraw the difference.
    async fn apply_service_adverts(
        &mut self,
        adverts: services::ServiceAdverts,
        speaker: &SpeakerHandle,
    ) {
        let want = adverts.prefixes();
        let gone: Vec<IpNetwork> = self.svc.originated.difference(&want).copied().collect();
        let new: Vec<IpNetwork> = want.difference(&self.svc.originated).copied().collect();
        if !gone.is_empty() {
            match speaker.withdraw(gone.clone()).await {
                Ok(()) => {
                    tracing::info!(routes = ?gone, "Service routes withdrawn");
                    for p in &gone {
                        self.svc.originated.remove(p);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "withdrawing Service routes"),
            }
        }
        if !new.is_empty() {
            match speaker.originate(new.clone()).await {
                Ok(()) => {
                    tracing::info!(routes = ?new, "Service routes originated");
                    self.svc.originated.extend(new);
                }
                Err(e) => tracing::warn!(error = %e, "originating Service routes"),
            }
        }
        let note = self.svc.shown.note.take();
        self.svc.shown = adverts;
        self.svc.shown.note = note;
    }

    async fn sync_peers(&mut self, speaker: &SpeakerHandle) {
        let services_on = !self.svc.ranges.borrow().is_empty();
        let secrets = secrets::wanted(&self.view);
        self.wanted_secrets.send_if_modified(|w| {
            let changed = *w != secrets;
            *w = secrets.clone();
            changed
        });
        let passwords = self.passwords.borrow_and_update().clone();
        if !passwords.ready_for(&secrets) {
            // A Secret newly named has not been read: the secrets task answers within
            // secrets::FIRST_READ, and its answer syncs the peers (the loop's passwords arm).
            return;
        }
        let (want, problems) = wanted_peers(&self.cfg, &self.view, &passwords.lookup, services_on);
        self.problems.retain(|p| !view::is_peer_problem(p));
        self.problems.extend(problems);
        for addr in self.peers.keys().copied().collect::<Vec<_>>() {
            if !want.contains_key(&addr) {
                match speaker.remove_peer(addr).await {
                    Ok(()) => {
                        self.peers.remove(&addr);
                        tracing::info!(peer = %addr, "peer removed");
                    }
                    Err(e) => tracing::warn!(peer = %addr, error = %e, "removing peer"),
                }
            }
        }
        for (addr, p) in want {
            let result = match self.peers.get(&addr) {
                None => speaker.add_peer(p.clone()).await,
                Some(old) if *old != p => speaker.update_peer(p.clone()).await,
                Some(_) => continue,
            };
            match result {
                Ok(()) => {
                    tracing::info!(peer = %addr, kind = ?p.peer_type, "peer configured");
                    self.peers.insert(addr, p);
                }
                Err(e) => tracing::warn!(peer = %addr, error = %e, "configuring peer"),
            }
        }
    }

    async fn replan(
        &mut self,
        tunnel: &mut reef_tunnel::Tunnel,
        desired: &watch::Sender<Vec<felix_lite::Route>>,
    ) {
        let input = reef_tunnel::PlanInput {
            node_addresses: std::iter::once(self.cfg.address)
                .chain(self.cfg.address_v6)
                .collect(),
            parent_interface: self.parent.clone(),
            own_blocks: self.own.iter().copied().collect(),
            local_pods: {
                let links = self.links.borrow_and_update().clone();
                view::local_pods(&self.cfg, &self.view, |l| links.contains(l))
            },
            pools: view::plan_pools(&self.view),
            remote_routes: self
                .remote
                .routes
                .iter()
                .map(|(p, nh)| reef_tunnel::RemoteRoute {
                    prefix: *p,
                    next_hops: nh.clone(),
                })
                .collect(),
            tunnel: tunnel.mode().clone(),
        };
        self.sync_nat(&input.pools).await;
        let plan = reef_tunnel::plan(&input);
        // Every round, not only when the plan changed: reef-filter's node set follows the
        // ReefNodes (a node joining changes no route here), and a failed sync is retried.
        // The tunnel does nothing when nothing changed.
        let nodes: Vec<IpAddr> = self
            .view
            .nodes
            .iter()
            .map(|n| n.spec.address.ip())
            .collect();
        let synced = tunnel.sync(&plan, nodes).await;
        let had_problem = self.problems.iter().any(|p| p.starts_with("tunnel:"));
        self.problems.retain(|p| !p.starts_with("tunnel:"));
        if let Err(e) = synced {
            if !had_problem {
                tracing::warn!(error = %e, "tunnel");
            }
            self.problems.push(format!("tunnel: {e}"));
        }
        if self.last_plan.as_ref() == Some(&plan) {
            return;
        }
        for p in &plan.problems {
            tracing::warn!(problem = ?p, "route plan");
        }
        let _ = desired.send(plan.desired_routes());
        self.last_plan = Some(plan);
    }

    /// natOutgoing: reef's nft table follows the pools (removed when no pool asks for it).
    /// A failure is a problem and is retried at the next plan.
    async fn sync_nat(&mut self, pools: &[reef_tunnel::Pool]) {
        if self.nat.as_deref() == Some(pools) {
            return;
        }
        let p = pools.to_vec();
        let result = tokio::task::spawn_blocking(move || reef_tunnel::nat::apply(None, &p))
            .await
            .map_err(|e| anyhow!("{e}"))
            .and_then(|r| r.map_err(anyhow::Error::from));
        self.problems.retain(|p| !p.starts_with("natOutgoing"));
        match result {
            Ok(()) => {
                let nat: Vec<String> = pools
                    .iter()
                    .filter(|p| p.nat_outgoing)
                    .map(|p| p.cidr.to_string())
                    .collect();
                tracing::info!(?nat, "natOutgoing applied");
                self.nat = Some(pools.to_vec());
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "natOutgoing");
                self.problems.push(format!("natOutgoing: {e:#}"));
                self.nat = None;
            }
        }
    }

    fn snapshot(
        &self,
        peers: &[reef_bgp::speaker::PeerStatus],
        rs: &felix_lite::ReconcilerStatus,
        tstats: Option<reef_tunnel::userspace::TunnelStats>,
    ) -> Snapshot {
        let not_ready = snapshot::readiness(&snapshot::ReadinessInput {
            datastore_read: self.datastore_read,
            reconciler_passes: if self.last_plan.is_some() {
                rs.durations.count
            } else {
                0
            },
            reconciler_errors: rs.errors.len(),
            install_missing: self.install.as_ref().map(|i| {
                let mut m = crate::install::missing(&i.args);
                if !i.report.borrow().done && m.is_empty() {
                    m.push("CNI install has not succeeded yet".into());
                }
                m
            }),
            peers: peers
                .iter()
                .map(|p| {
                    (
                        p.address.to_string(),
                        reef_bgp::speaker::state_name(p.state).to_string(),
                    )
                })
                .collect(),
            bgp_grace_over: Instant::now() >= self.first_chance,
        });
        Snapshot {
            node: self.cfg.node_name.clone(),
            address: self.cfg.address.to_string(),
            ready: not_ready.is_empty(),
            not_ready,
            heartbeat: SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            since: snapshot::rfc3339(self.started),
            tunnel_mode: self.tunnel_mode.clone(),
            mtu: self.mtu,
            blocks: self.own.iter().map(ToString::to_string).collect(),
            peers: peers.iter().map(PeerRow::from_status).collect(),
            routes: self
                .last_plan
                .as_ref()
                .map(|p| p.routes.iter().map(RouteRow::from_planned).collect())
                .unwrap_or_default(),
            routes_desired: rs.desired,
            routes_programmed: rs.programmed,
            reconcile_resyncs: rs.resyncs,
            reconcile_errors: rs.errors.clone(),
            reconcile_buckets: rs.durations.buckets.to_vec(),
            reconcile_passes: rs.durations.count,
            reconcile_seconds_sum: rs.durations.sum_micros as f64 / 1e6,
            reconcile_failed_passes: rs.failed_passes,
            problems: self.problems.clone(),
            services: self.svc.shown.clone(),
            userspace_tunnel: tstats.map(|s| snapshot::TunnelCounters {
                tx: s.tx,
                rx: s.rx,
                dropped: s.dropped(),
            }),
        }
    }
}

/// The next Service routes the watch task publishes; never when it does not run.
async fn service_adverts(
    rx: &mut Option<watch::Receiver<services::ServiceAdverts>>,
) -> Option<services::ServiceAdverts> {
    match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The CNI install task's next report; never without install mode.
async fn install_report(install: &mut Option<InstallState>) -> Option<cni::Report> {
    match install {
        Some(i) => match i.report.changed().await {
            Ok(()) => Some(i.report.borrow_and_update().clone()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// A Kubernetes client for the Services watch (Kubernetes datastore only).
async fn service_client(cfg: &NodeConfig) -> Option<kube::Client> {
    let reef_config::node_config::Datastore::Kubernetes { kubeconfig } = &cfg.datastore else {
        return None;
    };
    let config = match reef_ipam::kubernetes::client_config(kubeconfig.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "Kubernetes client for Services");
            return None;
        }
    };
    kube::Client::try_from(config)
        .map_err(|e| tracing::warn!(error = %e, "Kubernetes client for Services"))
        .ok()
}

/// The peers the view asks for, with their passwords (and the Service export policies when
/// Service advertisement is on), and the problems found on the way.
fn wanted_peers(
    cfg: &NodeConfig,
    view: &View,
    passwords: &secrets::Lookup,
    services_on: bool,
) -> (BTreeMap<IpAddr, PeerConfig>, Vec<String>) {
    let (mut want, problems) = view::desired_peers(cfg, view, passwords);
    if services_on {
        services::attach_policies(&mut want, &view.peers);
    }
    (want, problems)
}

/// Where the agent leaves its best paths for the next agent on a clean shutdown: beside its
/// control socket (a runtime directory, gone after a reboot like the kernel routes).
fn forwarding_state_path(cfg: &NodeConfig) -> PathBuf {
    cfg.agent_socket
        .parent()
        .unwrap_or(std::path::Path::new("/run/reef"))
        .join("forwarding-state.json")
}

/// How `reef status` names the tunnel mode.
fn describe_tunnel(m: &reef_tunnel::TunnelMode) -> String {
    match m {
        reef_tunnel::TunnelMode::Kernel { device } => format!("kernel ipip ({device})"),
        reef_tunnel::TunnelMode::Userspace { device } => format!("userspace ipip ({device})"),
        reef_tunnel::TunnelMode::Unavailable => {
            "unavailable (no ipip in the kernel, no TUN)".into()
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("datastore task failed: {e}"))?
}

/// The secrets task's first answers for `wanted` (the peers started with the speaker carry
/// their passwords). The task gives every Secret [`secrets::FIRST_READ`]; what is there
/// after a little more is taken as it is (its problems say what is missing).
async fn first_passwords(
    rx: &mut watch::Receiver<secrets::Passwords>,
    wanted: &secrets::Wanted,
) -> secrets::Passwords {
    let wait = rx.wait_for(|p| p.ready_for(wanted));
    let got = match tokio::time::timeout(secrets::FIRST_READ + Duration::from_secs(1), wait).await {
        Ok(Ok(p)) => Some(p.clone()),
        _ => None,
    };
    got.unwrap_or_else(|| rx.borrow().clone())
}

/// The sync task's first complete reading (start-up cannot plan without one).
async fn first_reading(rx: &mut watch::Receiver<sync::Reading>) -> Result<sync::Reading> {
    let wait = async {
        loop {
            {
                let r = rx.borrow_and_update();
                if r.complete {
                    return Ok(r.clone());
                }
            }
            if rx.changed().await.is_err() {
                return Err(anyhow!("the datastore sync task ended"));
            }
        }
    };
    match tokio::time::timeout(FIRST_READING, wait).await {
        Ok(r) => r,
        Err(_) => {
            let problems = rx.borrow().problems.join("; ");
            Err(anyhow!(
                "reading the datastore: no complete reading within {FIRST_READING:?}: {problems}"
            ))
        }
    }
}
