//! Export to peers: peers treated alike share an export class and its memo; what a best
//! path looks like when sent to a peer (split horizon, reflection, safe defaults, policy,
//! eBGP/iBGP rewrite).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::dest::{Path, LOCAL};
use super::{Family, Memo, Peer, Prefix4, Prefix6, PrefixKey, Rib, RibConfig, Shared};
use crate::attrs::{AsSegment, NextHop, PathAttributes};
use crate::policy::{
    CompiledPolicy, Modifications, Verdict, NO_ADVERTISE, NO_EXPORT, NO_EXPORT_SUBCONFED,
};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ExportKey {
    attrs: usize,
    source: u32,
    family: Family,
    mods: Modifications,
}

/// What decides how a route looks when exported to a peer, apart from the peer itself (a
/// client's own routes are not reflected back to it): peers with equal keys get the same
/// attributes for the same best path, so they share one export memo. Wire encoding (4-octet
/// AS, ADD-PATH, extended next hop) is the session's business, after the RIB, and does not
/// enter here.
#[derive(Debug, Clone, PartialEq)]
struct ClassKey {
    ebgp: bool,
    rr_client: bool,
    next_hop_self: bool,
    export_learned: bool,
    send_default_route: bool,
    /// Compared by value: peers configured with equal policies share a class.
    export_policy: Option<Arc<CompiledPolicy>>,
    local_v4: Option<Ipv4Addr>,
    local_v6: Option<Ipv6Addr>,
    ipv4: bool,
    ipv6: bool,
}

impl ClassKey {
    fn of(p: &Peer) -> Option<Self> {
        let s = p.session?;
        Some(Self {
            ebgp: p.ebgp,
            rr_client: p.cfg.rr_client,
            next_hop_self: p.cfg.next_hop_self,
            export_learned: p.cfg.export_learned,
            send_default_route: p.cfg.send_default_route,
            export_policy: p.cfg.export_policy.clone(),
            local_v4: s.local_v4,
            local_v6: s.local_v6,
            ipv4: s.ipv4,
            ipv6: s.ipv6,
        })
    }
}

impl ClassKey {
    fn has(&self, family: Family) -> bool {
        match family {
            Family::Ipv4 => self.ipv4,
            Family::Ipv6 => self.ipv6,
        }
    }
}

/// Peers with one [`ClassKey`] and what they share: the export memo and the Adj-RIB-Out
/// (`FamilyRib::adj_out`, by class index). With 500 route-reflector clients of one kind,
/// that is one memo and one table instead of 500 copies of them.
#[derive(Debug)]
pub(super) struct ExportClass {
    key: ClassKey,
    /// The peer slots in the class, each with its session up.
    pub(super) members: Vec<u32>,
    /// (best path's attrs, source, family, export modifications) → attrs as sent (`None`:
    /// not sent). Holds the input `Arc` so the pointer key stays valid.
    memo: Memo<ExportKey, (Arc<PathAttributes>, Option<Arc<PathAttributes>>)>,
}

impl Rib {
    pub(super) fn clear_memos(&mut self) {
        for p in self.peers.iter_mut().flatten() {
            p.import_memo.clear();
        }
        for c in self.classes.iter_mut().flatten() {
            c.memo.clear();
        }
    }

    /// Puts the peer in the export class its configuration and session say (none without a
    /// session), leaving the one it was in. A peer that moves with its session up is queued
    /// the difference between what its old class was sent and what its new one is; a peer
    /// that joins on coming up, the new class's whole table. Returns the class joined.
    pub(super) fn regroup(&mut self, slot: u32) -> Option<usize> {
        let i = slot as usize;
        let p = self.peers[i].as_ref()?;
        let key = ClassKey::of(p);
        let old = p.class.map(|c| c as usize);
        if let (Some(c), Some(k)) = (old, &key) {
            if self.classes[c].as_ref().is_some_and(|c| c.key == *k) {
                return Some(c);
            }
        }
        // What the peer was sent, if it moves with its session up.
        let was = match (old, &key) {
            (Some(c), Some(_)) => Some((self.v4.sent_to(c, slot), self.v6.sent_to(c, slot))),
            _ => None,
        };
        if let Some(c) = old {
            let class = self.classes[c].as_mut().expect("a peer's class exists");
            class.members.retain(|&m| m != slot);
            if class.members.is_empty() {
                self.classes[c] = None;
                self.v4.reset_class(c);
                self.v6.reset_class(c);
            }
            if let Some(p) = self.peers[i].as_mut() {
                p.class = None;
            }
        }
        let key = key?;
        let found = self
            .classes
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.key == key));
        let c = match found {
            Some(c) => c,
            None => {
                let class = Some(ExportClass {
                    key,
                    members: Vec::new(),
                    memo: Memo::default(),
                });
                let c = match self.classes.iter().position(Option::is_none) {
                    Some(free) => {
                        self.classes[free] = class;
                        free
                    }
                    None => {
                        self.classes.push(class);
                        self.classes.len() - 1
                    }
                };
                // A new class's table is filled before anyone is in it: nothing queued.
                self.v4.reset_class(c);
                self.v6.reset_class(c);
                self.export_full::<Prefix4>(c);
                self.export_full::<Prefix6>(c);
                c
            }
        };
        self.classes[c]
            .as_mut()
            .expect("just found or made")
            .members
            .push(slot);
        if let Some(p) = self.peers[i].as_mut() {
            p.class = Some(c as u32);
        }
        let (was4, was6) = was.unwrap_or_default();
        self.v4.join(c, slot, was4);
        self.v6.join(c, slot, was6);
        Some(c)
    }
}

/// What `best` looks like when sent to the peers of class `c`, or `None` when it must not
/// be sent. Split horizon (a peer is not sent its own route back) is the caller's business:
/// it is the one thing that differs between the members.
pub(super) fn export<K: PrefixKey>(
    sh: &mut Shared<'_>,
    c: usize,
    key: K,
    best: &Path,
) -> Option<Arc<PathAttributes>> {
    let cfg = sh.cfg;
    let ExportClass { key: ck, memo, .. } = sh.classes.get_mut(c)?.as_mut()?;
    if !ck.has(K::FAMILY) {
        return None;
    }
    let mut reflect_from = None;
    if best.source != LOCAL {
        let sp = sh
            .peers
            .get(best.source as usize)
            .and_then(Option::as_ref)?;
        if !sp.ebgp && !ck.ebgp {
            // iBGP split horizon, lifted by route reflection (RFC 4456 §6).
            if sp.cfg.rr_client || ck.rr_client {
                reflect_from = Some(sp.router_id);
            } else {
                return None;
            }
        }
        if reflect_from.is_none() && !ck.export_learned {
            // Safe default: only what this node originates.
            return None;
        }
    }
    if key.is_default() && !ck.send_default_route {
        return None;
    }
    let attrs = &best.attrs;
    if attrs.communities.contains(&NO_ADVERTISE)
        || (ck.ebgp
            && (attrs.communities.contains(&NO_EXPORT)
                || attrs.communities.contains(&NO_EXPORT_SUBCONFED)))
    {
        return None;
    }
    let mods = match &ck.export_policy {
        None => Modifications::default(),
        Some(p) => match p.evaluate(&key.to_net(), attrs) {
            Verdict::Reject => return None,
            Verdict::Accept(m) => m,
        },
    };
    let memo_key = ExportKey {
        attrs: Arc::as_ptr(attrs) as usize,
        source: best.source,
        family: K::FAMILY,
        mods,
    };
    if let Some((_, out)) = memo.get(&memo_key) {
        return out.clone();
    }
    let self_nh = match K::FAMILY {
        Family::Ipv4 => ck.local_v4.map(IpAddr::V4),
        Family::Ipv6 => ck.local_v6.map(IpAddr::V6),
    };
    let out = rewrite(
        cfg,
        ck,
        best.source == LOCAL,
        reflect_from,
        attrs,
        &memo_key.mods,
        self_nh,
    )
    .map(|a| sh.interner.intern(a));
    memo.insert(memo_key, (Arc::clone(attrs), out.clone()));
    out
}

fn rewrite(
    cfg: &RibConfig,
    target: &ClassKey,
    local: bool,
    reflect_from: Option<Ipv4Addr>,
    attrs: &PathAttributes,
    mods: &Modifications,
    self_nh: Option<IpAddr>,
) -> Option<PathAttributes> {
    let mut a = attrs.clone();
    mods.apply(&mut a);
    let self_hop = |addr: IpAddr| NextHop {
        address: addr,
        link_local: None,
    };
    if target.ebgp {
        match a.as_path.first_mut() {
            Some(AsSegment::Sequence(v)) if v.len() < 255 => v.insert(0, cfg.local_as),
            _ => a.as_path.insert(0, AsSegment::Sequence(vec![cfg.local_as])),
        }
        a.local_pref = None;
        a.originator_id = None;
        a.cluster_list.clear();
        if !local {
            // A MED learned from one AS means nothing to another (RFC 4271 §5.1.4).
            a.med = None;
        }
        a.next_hop = Some(self_hop(self_nh?));
    } else {
        if a.local_pref.is_none() {
            a.local_pref = Some(cfg.default_local_pref);
        }
        if local || mods.next_hop_self || target.next_hop_self || a.next_hop.is_none() {
            a.next_hop = Some(self_hop(self_nh?));
        }
        if let Some(originator) = reflect_from {
            if a.originator_id.is_none() {
                a.originator_id = Some(originator);
            }
            a.cluster_list.insert(0, cfg.cluster_id());
        }
    }
    Some(a)
}

#[cfg(test)]
mod tests {
    use ipnetwork::IpNetwork;

    use super::*;
    use crate::attrs::NextHop;
    use crate::policy::{Direction, PolicySet};
    use crate::rib::{PeerConfig, PeerId, PeerSession, RibOutput};
    use crate::{Asn, PeerType};

    const AS: u32 = 64_500;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn peer_cfg(addr: &str, rr_client: bool) -> PeerConfig {
        let mut c = PeerConfig::new(addr.parse().unwrap(), Asn(AS), PeerType::Node);
        c.rr_client = rr_client;
        c
    }

    fn up(rib: &mut Rib, cfg: PeerConfig) -> PeerId {
        let router_id = match cfg.address {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => unreachable!("IPv4 peers here"),
        };
        let id = rib.add_peer(cfg).unwrap();
        rib.peer_up(id, session(router_id)).unwrap();
        id
    }

    /// An IPv4 session with `router_id`, from 10.0.0.1.
    fn session(router_id: Ipv4Addr) -> PeerSession {
        PeerSession {
            router_id,
            local_v4: Some(Ipv4Addr::new(10, 0, 0, 1)),
            local_v6: None,
            ipv4: true,
            ipv6: false,
        }
    }

    fn from(addr: &str) -> PathAttributes {
        PathAttributes {
            next_hop: Some(NextHop {
                address: addr.parse().unwrap(),
                link_local: None,
            }),
            ..PathAttributes::default()
        }
    }

    fn class_of(rib: &Rib, id: PeerId) -> usize {
        rib.peers[id.0 as usize].as_ref().unwrap().class.unwrap() as usize
    }

    fn class(rib: &Rib, id: PeerId) -> &ExportClass {
        rib.classes[class_of(rib, id)].as_ref().unwrap()
    }

    fn sent(out: &RibOutput, id: PeerId) -> Option<Arc<PathAttributes>> {
        let u = out.update_for(id)?;
        assert_eq!(u.announce.len(), 1, "{u:?}");
        Some(Arc::clone(&u.announce[0].attrs))
    }

    #[test]
    fn peers_treated_alike_share_one_export_memo() {
        let mut rib = Rib::new(RibConfig::new(Asn(AS), Ipv4Addr::new(10, 0, 0, 1))).unwrap();
        let c1 = up(&mut rib, peer_cfg("10.0.2.1", true));
        let c2 = up(&mut rib, peer_cfg("10.0.2.2", true));
        let c3 = up(&mut rib, peer_cfg("10.0.2.3", true));
        let mut nhs = peer_cfg("10.0.2.4", true);
        nhs.next_hop_self = true;
        let nhs = up(&mut rib, nhs);
        let n1 = up(&mut rib, peer_cfg("10.0.3.1", false));

        assert_eq!(class_of(&rib, c1), class_of(&rib, c2));
        assert_eq!(class_of(&rib, c1), class_of(&rib, c3));
        assert_ne!(
            class_of(&rib, c1),
            class_of(&rib, nhs),
            "next-hop-self differs"
        );
        assert_ne!(class_of(&rib, c1), class_of(&rib, n1), "non-client differs");
        assert_eq!(class(&rib, c1).members.len(), 3);
        assert_eq!(rib.classes.iter().flatten().count(), 3);

        let out = rib
            .announce(c1, &[net("10.244.1.0/26")], from("10.0.2.1"))
            .unwrap();
        assert!(
            out.update_for(c1).is_none(),
            "a client's own route is not sent back"
        );
        let (a2, a3) = (sent(&out, c2).unwrap(), sent(&out, c3).unwrap());
        assert!(Arc::ptr_eq(&a2, &a3), "one attribute set for the class");
        assert_eq!(a2.originator_id, Some(Ipv4Addr::new(10, 0, 2, 1)));
        assert_eq!(
            class(&rib, c1).memo.len(),
            1,
            "c2 and c3 share one memo entry"
        );
        let a_nhs = sent(&out, nhs).unwrap();
        assert_eq!(
            a_nhs.next_hop.unwrap().address,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            "the other class gets its own rewrite"
        );
        assert_eq!(class(&rib, nhs).memo.len(), 1);
        assert_eq!(class(&rib, n1).memo.len(), 1);
        assert!(
            sent(&out, n1).is_some(),
            "client routes go to non-clients too"
        );
        assert!(rib.adj_rib_out(c1).unwrap().is_empty());
        assert_eq!(rib.adj_rib_out(c2).unwrap().len(), 1);

        // A member's session going leaves the class to the others; the last one frees it.
        rib.peer_down(nhs).unwrap();
        assert_eq!(rib.classes.iter().flatten().count(), 2);
        rib.peer_down(c3).unwrap();
        assert_eq!(class(&rib, c1).members.len(), 2);
    }

    fn prefixes(rib: &Rib, id: PeerId) -> Vec<IpNetwork> {
        rib.adj_rib_out(id)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    fn announced(out: &RibOutput, id: PeerId) -> Vec<IpNetwork> {
        let mut v: Vec<IpNetwork> = out
            .update_for(id)
            .map(|u| {
                u.announce
                    .iter()
                    .flat_map(|a| a.prefixes.iter().copied())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn withdrawn(out: &RibOutput, id: PeerId) -> Vec<IpNetwork> {
        out.update_for(id)
            .map(|u| u.withdraw.clone())
            .unwrap_or_default()
    }

    /// One Adj-RIB-Out table per class: each member sees it less its own routes, a member
    /// that comes up late is sent all of it, one that goes is no longer counted, and one that
    /// moves to another class is sent the difference, never its own route.
    #[test]
    fn a_class_shares_one_table_that_each_member_sees_less_its_own_routes() {
        let (a, b) = (net("10.244.1.0/26"), net("10.244.2.0/26"));
        let mut rib = Rib::new(RibConfig::new(Asn(AS), Ipv4Addr::new(10, 0, 0, 1))).unwrap();
        let c1 = up(&mut rib, peer_cfg("10.0.2.1", true));
        let c2 = up(&mut rib, peer_cfg("10.0.2.2", true));
        rib.announce(c1, &[a], from("10.0.2.1")).unwrap();
        let out = rib.announce(c2, &[b], from("10.0.2.2")).unwrap();
        assert_eq!(announced(&out, c1), vec![b]);
        assert!(
            out.update_for(c2).is_none(),
            "its own route is not sent back"
        );
        let c = class_of(&rib, c1);
        assert_eq!(rib.v4.adj_out[c].len(), 2, "one table for the class");
        assert_eq!(prefixes(&rib, c1), vec![b]);
        assert_eq!(prefixes(&rib, c2), vec![a]);
        assert_eq!(rib.counters(c1).unwrap().sent, 1);

        // A client coming up late gets the class's whole table in its peer_up output.
        let id = rib.add_peer(peer_cfg("10.0.2.3", true)).unwrap();
        let out = rib
            .peer_up(id, session(Ipv4Addr::new(10, 0, 2, 3)))
            .unwrap();
        let c3 = id;
        assert_eq!(class_of(&rib, c3), c);
        assert_eq!(announced(&out, c3), vec![a, b]);
        assert_eq!(
            out.updates.len(),
            1,
            "the others were sent all of it already"
        );

        // c2 moves to a class of its own (next-hop-self) with its session up: it is sent
        // what differs (a's next hop), still not its own route.
        let mut nhs = peer_cfg("10.0.2.2", true);
        nhs.next_hop_self = true;
        let out = rib.set_peer_config(c2, nhs).unwrap();
        assert_ne!(class_of(&rib, c2), c);
        assert_eq!(announced(&out, c2), vec![a]);
        assert!(withdrawn(&out, c2).is_empty());
        assert_eq!(prefixes(&rib, c2), vec![a]);
        assert_eq!(
            rib.adj_rib_out(c2).unwrap()[0].1.next_hop.unwrap().address,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(prefixes(&rib, c1), vec![b], "the others are unchanged");
        assert_eq!(prefixes(&rib, c3), vec![a, b]);

        // c1's session goes: its route is withdrawn from the others, and c1 is sent nothing.
        let out = rib.peer_down(c1).unwrap();
        assert!(out.update_for(c1).is_none());
        assert_eq!(withdrawn(&out, c2), vec![a]);
        assert_eq!(withdrawn(&out, c3), vec![a]);
        assert!(rib.adj_rib_out(c1).unwrap().is_empty());
        assert_eq!(rib.counters(c1).unwrap().sent, 0);
        assert_eq!(class(&rib, c3).members, vec![c3.0]);

        // And back: the class (now c3 alone) holds b, which c1 gets; c1 announces again.
        let out = rib
            .peer_up(c1, session(Ipv4Addr::new(10, 0, 2, 1)))
            .unwrap();
        assert_eq!(announced(&out, c1), vec![b]);
        let out = rib.announce(c1, &[a], from("10.0.2.1")).unwrap();
        assert!(out.update_for(c1).is_none());
        assert_eq!(announced(&out, c3), vec![a]);
        assert_eq!(announced(&out, c2), vec![a]);
    }

    #[test]
    fn equal_export_policies_share_a_class_different_ones_do_not() {
        let set: PolicySet = serde_yaml::from_str(
            r#"
policies:
  a:
    rules:
      - match: { prefixes: [ { prefix: 10.244.0.0/16, le: 32 } ] }
        actions: [ { add_community: "65000:7" }, accept ]
    default: reject
  b:
    rules:
      - match: { prefixes: [ { prefix: 10.244.0.0/16, le: 32 } ] }
        actions: [ { add_community: "65000:8" }, accept ]
    default: reject
"#,
        )
        .unwrap();
        let with = |addr: &str, name: &str| {
            let mut c = peer_cfg(addr, true);
            // Compiled per peer, as the speaker's configuration does: equal, not one `Arc`.
            c.export_policy = Some(set.compile(name, Direction::Export).unwrap());
            c
        };
        let mut rib = Rib::new(RibConfig::new(Asn(AS), Ipv4Addr::new(10, 0, 0, 1))).unwrap();
        let p1 = up(&mut rib, with("10.0.2.1", "a"));
        let p2 = up(&mut rib, with("10.0.2.2", "a"));
        let p3 = up(&mut rib, with("10.0.2.3", "b"));
        assert_eq!(class_of(&rib, p1), class_of(&rib, p2));
        assert_ne!(class_of(&rib, p1), class_of(&rib, p3));

        // A new policy moves the peer to the class it now belongs to.
        rib.set_peer_config(p3, with("10.0.2.3", "a")).unwrap();
        assert_eq!(class_of(&rib, p1), class_of(&rib, p3));
        assert_eq!(rib.classes.iter().flatten().count(), 1);
    }
}
