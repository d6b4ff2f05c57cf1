//! Soft reconfiguration: new node-wide settings, a peer's new configuration, new pools or
//! ownership, and running import and the decision again over what is held.

use ipnetwork::IpNetwork;

use super::change::{settle, Out, Snapshot};
use super::dest::{Dest, Path, STALE};
use super::import::{import_path, pool_bound};
use super::ingest::count_path;
use super::trust::Trust;
use super::{
    Fam, FamilyRib, Ownership, PeerConfig, PeerId, Prefix4, Prefix6, Rib, RibConfig, RibError,
    RibOutput,
};

impl Rib {
    /// Replaces a peer's configuration (policies, reflection, limits) and re-evaluates its
    /// routes and everything exported, as a soft reconfiguration. The address must not change
    /// (that is another peer: remove this one and add it).
    pub fn set_peer_config(&mut self, id: PeerId, cfg: PeerConfig) -> Result<RibOutput, RibError> {
        let local_as = self.cfg.local_as;
        let p = self.peer_mut(id)?;
        if p.cfg.address != cfg.address {
            return Err(RibError::InvalidConfig {
                field: "address".into(),
                problem: format!(
                    "cannot change a peer's address ({} → {}); remove the peer and add it again",
                    p.cfg.address, cfg.address
                ),
            });
        }
        p.ebgp = cfg.remote_as != local_as;
        p.cfg = cfg;
        self.regroup(id.0);
        self.clear_memos();
        self.reimport::<Prefix4>(id.0);
        self.reimport::<Prefix6>(id.0);
        self.reexport_all();
        Ok(self.finish())
    }

    /// Replaces the node-wide settings (ECMP width, MED rule, cluster id, pools, ...) and
    /// re-evaluates everything: import, the decision for every prefix, and every export.
    pub fn set_config(&mut self, cfg: RibConfig) -> Result<RibOutput, RibError> {
        cfg.validate()?;
        self.cfg = cfg;
        let local_as = self.cfg.local_as;
        for p in self.peers.iter_mut().flatten() {
            p.ebgp = p.cfg.remote_as != local_as;
        }
        for id in self.peer_ids() {
            self.regroup(id.0);
        }
        self.clear_memos();
        for id in self.peer_ids() {
            self.reimport::<Prefix4>(id.0);
            self.reimport::<Prefix6>(id.0);
        }
        self.reselect_all::<Prefix4>();
        self.reselect_all::<Prefix6>();
        self.reexport_all();
        Ok(self.finish())
    }

    /// Replaces the cluster's pools and re-evaluates the routes of mesh and route-reflector
    /// peers.
    pub fn set_cluster_pools(&mut self, pools: Vec<IpNetwork>) -> Result<RibOutput, RibError> {
        let mut cfg = self.cfg.clone();
        cfg.cluster_pools = pools;
        cfg.validate()?;
        self.cfg = cfg;
        self.reimport_pool_bound()
    }

    /// Replaces what the datastore says about ownership and re-evaluates the routes of mesh
    /// and route-reflector peers (refused routes stay in the Adj-RIB-In, so a block whose
    /// affinity shows up after its route is accepted then). `None` checks those routes
    /// against the pools only. Setting what is already set changes nothing. A block with host
    /// bits set is refused, naming it, and nothing changes.
    pub fn set_ownership(&mut self, ownership: Option<Ownership>) -> Result<RibOutput, RibError> {
        if ownership == self.ownership {
            return Ok(self.finish());
        }
        self.trust = ownership.as_ref().map(Trust::new).transpose()?;
        self.ownership = ownership;
        self.reimport_pool_bound()
    }

    /// Runs import again over what mesh and route-reflector peers sent, after the pools or
    /// the ownership they are judged by changed.
    fn reimport_pool_bound(&mut self) -> Result<RibOutput, RibError> {
        for id in self.peer_ids() {
            let p = self.peer(id)?;
            if pool_bound(p.cfg.peer_type) {
                self.reimport::<Prefix4>(id.0);
                self.reimport::<Prefix6>(id.0);
            }
        }
        Ok(self.finish())
    }

    /// The ownership set with [`Rib::set_ownership`].
    pub fn ownership(&self) -> Option<&Ownership> {
        self.ownership.as_ref()
    }

    /// Runs import again on every route the peer sent (policy or pools changed).
    fn reimport<K: Fam>(&mut self, slot: u32) {
        let (fam, mut sh) = K::split(self);
        let i = slot as usize;
        for (key, attrs) in fam.adj_in(slot) {
            let FamilyRib {
                routes,
                loc_len,
                received,
                adj_out,
                pending,
            } = &mut *fam;
            let Some(d) = routes.get_mut(&key) else {
                continue;
            };
            let before = Snapshot::of(d, sh.peers);
            let (flags, stored) = import_path(&mut sh, slot, key, &attrs, &mut received[i]);
            let Some(p) = d.find_mut(slot) else { continue };
            let old = p.flags;
            let stale = p.flags & STALE;
            *p = Path {
                source: slot,
                flags: flags | stale,
                lo: key.low_bytes(),
                attrs: stored,
            };
            count_path(&mut sh, slot, old, -1);
            count_path(&mut sh, slot, flags, 1);
            d.reselect(sh.cfg, sh.peers, sh.scratch);
            let mut out = Out {
                adj_out,
                pending,
                loc_len,
            };
            settle(&mut out, &mut sh, key, &before, d.multipath());
        }
    }

    /// Runs the decision again where the peer has routes (its router id changed).
    pub(super) fn reselect_peer<K: Fam>(&mut self, slot: u32) {
        let (fam, mut sh) = K::split(self);
        for key in fam.keys_of(slot, false) {
            let FamilyRib {
                routes,
                loc_len,
                adj_out,
                pending,
                ..
            } = &mut *fam;
            let Some(d) = routes.get_mut(&key) else {
                continue;
            };
            if !matches!(d, Dest::Many(_)) {
                continue;
            }
            let before = Snapshot::of(d, sh.peers);
            d.reselect(sh.cfg, sh.peers, sh.scratch);
            let mut out = Out {
                adj_out,
                pending,
                loc_len,
            };
            settle(&mut out, &mut sh, key, &before, d.multipath());
        }
    }

    /// Runs the decision again for every prefix with more than one route.
    fn reselect_all<K: Fam>(&mut self) {
        let (fam, mut sh) = K::split(self);
        let FamilyRib {
            routes,
            loc_len,
            adj_out,
            pending,
            ..
        } = fam;
        let mut out = Out {
            adj_out,
            pending,
            loc_len,
        };
        for (key, d) in routes.iter_mut() {
            if !matches!(d, Dest::Many(_)) {
                continue;
            }
            let before = Snapshot::of(d, sh.peers);
            d.reselect(sh.cfg, sh.peers, sh.scratch);
            settle(&mut out, &mut sh, key, &before, d.multipath());
        }
    }
}
