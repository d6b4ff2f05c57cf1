//! Import of one received route: loop and next-hop checks, safe defaults, ownership, the
//! peer's import policy.

use std::sync::Arc;

use super::dest::{rejected_flags, MODIFIED};
use super::peers::peer_of;
use super::{trust, PrefixKey, Refusal, RefusedRoute, Shared, Table};
use crate::attrs::{AsSegment, PathAttributes};
use crate::policy::{self, Modifications, Verdict};
use crate::PeerType;

pub(super) fn pool_bound(t: PeerType) -> bool {
    // Other reef nodes, directly or through a reflector: they may only carry pool prefixes.
    matches!(t, PeerType::Mesh | PeerType::RouteReflector)
}

/// Import of one received route into its stored form: flags and the attributes to keep.
/// Keeps `side` (the received attributes of modified routes) in step.
pub(super) fn import_path<K: PrefixKey>(
    sh: &mut Shared<'_>,
    slot: u32,
    key: K,
    attrs: &Arc<PathAttributes>,
    side: &mut Table<K, Arc<PathAttributes>>,
) -> (u8, Arc<PathAttributes>) {
    match import(sh, slot, key, attrs) {
        Ok(effective) if Arc::ptr_eq(&effective, attrs) => {
            if !side.is_empty() {
                side.remove(&key);
            }
            (0, effective)
        }
        Ok(effective) => {
            side.insert(key, Arc::clone(attrs));
            (MODIFIED, effective)
        }
        Err(reason) => {
            if !side.is_empty() {
                side.remove(&key);
            }
            peer_of(sh, slot).last_refused = Some(RefusedRoute {
                prefix: key.to_net(),
                next_hop: attrs.next_hop.map(|n| n.address),
                reason,
            });
            (rejected_flags(reason), Arc::clone(attrs))
        }
    }
}

/// Import of one received route: loop checks, next-hop sanity, safe defaults, ownership
/// (mesh and route-reflector peers), the peer's policy, eBGP LOCAL_PREF removal. `Err` says
/// why it was refused (it stays in the Adj-RIB-In).
fn import<K: PrefixKey>(
    sh: &mut Shared<'_>,
    slot: u32,
    key: K,
    attrs: &Arc<PathAttributes>,
) -> Result<Arc<PathAttributes>, Refusal> {
    let cfg = sh.cfg;
    let trust = sh.trust;
    let peer = sh.peers[slot as usize]
        .as_mut()
        .expect("routes only exist for known peers");
    // RFC 4271 §9.1.2: a path containing our own AS is a loop.
    let own_as = cfg.local_as;
    if attrs.as_path.iter().any(|s| match s {
        AsSegment::Sequence(v) | AsSegment::Set(v) => v.contains(&own_as),
        _ => false,
    }) {
        return Err(Refusal::AsLoop);
    }
    // RFC 4456 §8: our own reflected routes coming back.
    if attrs.originator_id == Some(cfg.router_id) || attrs.cluster_list.contains(&cfg.cluster_id())
    {
        return Err(Refusal::ReflectedLoop);
    }
    // The address route programming would use (`next_hop_of`): NEXT_HOP, or the MP_REACH
    // global address, else the peer's.
    let next_hop = attrs.next_hop.map_or(peer.cfg.address, |n| n.address);
    // RFC 4271 §6.3: a next hop that is no neighbour's unicast address makes the route
    // unusable; it is ignored, the session stays (RFC 7606 §7.3).
    if trust::bad_next_hop(next_hop, peer.cfg.address.is_loopback()) {
        return Err(Refusal::BadNextHop);
    }
    if key.is_default() && !peer.cfg.accept_default_route {
        return Err(Refusal::DefaultRoute);
    }
    let pools = pool_bound(peer.cfg.peer_type);
    let mods = if pools || peer.cfg.import_policy.is_some() {
        let net = key.to_net();
        if pools {
            // First, so a hijack of one of our blocks is named as such.
            if trust.is_some_and(|t| t.overlaps_own(&net)) {
                return Err(Refusal::OverlapsOwnBlock);
            }
            if !policy::within_pools(&net, &cfg.cluster_pools) {
                return Err(Refusal::OutsidePools);
            }
            if let Some(t) = trust {
                t.check_owner(&net, next_hop)?;
            }
        }
        match &peer.cfg.import_policy {
            None => Modifications::default(),
            Some(p) => match p.evaluate(&net, attrs) {
                Verdict::Reject => return Err(Refusal::Policy),
                Verdict::Accept(m) => m,
            },
        }
    } else {
        Modifications::default()
    };
    // LOCAL_PREF from an eBGP peer is ignored (RFC 4271 §5.1.5).
    let strip_lp = peer.ebgp && attrs.local_pref.is_some();
    if mods.is_empty() && !strip_lp {
        return Ok(Arc::clone(attrs));
    }
    let memo_key = (Arc::as_ptr(attrs) as usize, mods);
    if let Some((_, out)) = peer.import_memo.get(&memo_key) {
        return Ok(Arc::clone(out));
    }
    let mut a = PathAttributes::clone(attrs);
    if strip_lp {
        a.local_pref = None;
    }
    memo_key.1.apply(&mut a);
    let out = sh.interner.intern(a);
    peer.import_memo
        .insert(memo_key, (Arc::clone(attrs), Arc::clone(&out)));
    Ok(out)
}
