//! LoadBalancer IP assignment, the pure part: given the LoadBalancerIPPools (with the
//! allocations in their status) and the Services, what to write. No I/O: the agent's
//! controller (`reef node run`, `agent/loadbalancer.rs`) lists, calls [`plan`], and writes the
//! result with compare-and-swap; `reef ipam check` calls [`check`].
//!
//! Invariants (what [`plan`] keeps and [`check`] verifies):
//! - an address is allocated at most once, across every pool (pools that overlap hand out
//!   nothing, so one pool's compare-and-swap covers each address);
//! - every allocation names an existing Service (namespace/name and UID) of type
//!   LoadBalancer that is reef's (no `spec.loadBalancerClass`, or `reef.dev/lb`);
//! - a Service shows (in `status.loadBalancer.ingress`) exactly the addresses allocated to it,
//!   at most one per family.
//!
//! Write order, so no two Services ever show one address: addresses a Service loses leave its
//! status first ([`ServiceChange::shrink`]), then the pools are written, then the Services
//! gain their new addresses ([`ServiceChange::grow`]). An address released in one pass is
//! not handed out again in the same pass.

use std::collections::BTreeMap;
use std::net::IpAddr;

use reef_config::crds::{
    selects, LbRange, LoadBalancerAllocation, LoadBalancerIpPoolSpec, LoadBalancerIpPoolStatus,
};

use crate::Labels;

/// An address family, as `spec.ipFamilies` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// A LoadBalancerIPPool as read, with its resourceVersion's status.
#[derive(Debug, Clone, PartialEq)]
pub struct LbPool {
    pub name: String,
    pub spec: LoadBalancerIpPoolSpec,
    pub status: LoadBalancerIpPoolStatus,
}

/// What a Service asks of reef.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Type LoadBalancer, reef's class: one address per family, the requested ones when
    /// `requested` is not empty (`by` says where they were asked for).
    Addresses {
        families: Vec<Family>,
        requested: Vec<IpAddr>,
        by: String,
    },
    /// Not of type LoadBalancer (or no longer): holds nothing, shows no pool address.
    Nothing,
    /// Another implementation's `spec.loadBalancerClass`: left alone.
    NotOurs,
    /// Reef's, but asks for something impossible (the reason); keeps what it holds.
    Refused(String),
}

/// A Service as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbService {
    /// `namespace/name`.
    pub key: String,
    pub uid: String,
    pub labels: Labels,
    pub want: Want,
    /// The addresses in its `status.loadBalancer.ingress`.
    pub shows: Vec<IpAddr>,
}

/// How a Service's shown addresses change: first `shrink` (addresses it loses), then, after
/// the pools are written, `grow`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceChange {
    pub shrink: Option<Vec<IpAddr>>,
    pub grow: Option<Vec<IpAddr>>,
}

/// What one pass writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Pools whose status changes (allocations, counts, problem): name → new status.
    pub pools: BTreeMap<String, LoadBalancerIpPoolStatus>,
    pub services: BTreeMap<String, ServiceChange>,
    /// Services that get no (new) address, and why.
    pub refused: BTreeMap<String, String>,
    /// Addresses handed out in this pass: Service → (address, pool).
    pub assigned: BTreeMap<String, Vec<(IpAddr, String)>>,
    /// Addresses released in this pass: (address, pool, former holder).
    pub released: Vec<(IpAddr, String, String)>,
}

/// Each pool's ranges, or why it hands nothing out (bad entry, overlap with another pool).
pub fn pool_ranges(pools: &[LbPool]) -> Vec<Result<Vec<LbRange>, String>> {
    let mut out: Vec<Result<Vec<LbRange>, String>> = pools
        .iter()
        .map(|p| p.spec.ranges().map_err(|e| e.to_string()))
        .collect();
    let mut overlap: Vec<Option<String>> = vec![None; pools.len()];
    for i in 0..pools.len() {
        for j in i + 1..pools.len() {
            let (Ok(a), Ok(b)) = (&out[i], &out[j]) else {
                continue;
            };
            if let Some((ra, rb)) = a
                .iter()
                .flat_map(|ra| b.iter().map(move |rb| (ra, rb)))
                .find(|(ra, rb)| ra.overlaps(rb))
            {
                for (k, other, mine, theirs) in [(i, j, ra, rb), (j, i, rb, ra)] {
                    overlap[k].get_or_insert_with(|| {
                        format!(
                            "overlaps LoadBalancerIPPool {} ({mine} and {theirs}); neither hands \
                             out addresses until one is changed",
                            pools[other].name
                        )
                    });
                }
            }
        }
    }
    for (o, why) in out.iter_mut().zip(overlap) {
        if let Some(why) = why {
            *o = Err(why);
        }
    }
    out
}

/// The pass: releases what no Service may hold any more, hands out what Services need.
pub fn plan(pools: &[LbPool], services: &[LbService], now: u64) -> Plan {
    let mut plan = Plan::default();
    let ranges = pool_ranges(pools);
    let by_key: BTreeMap<&str, &LbService> = services.iter().map(|s| (s.key.as_str(), s)).collect();

    // Current allocations, released ones dropped.
    let mut allocs: Vec<Vec<LoadBalancerAllocation>> = Vec::with_capacity(pools.len());
    // Every address allocated before this pass (released ones stay taken until the next).
    let mut taken: BTreeMap<IpAddr, String> = BTreeMap::new();
    // Service → (family → address) it keeps.
    let mut held: BTreeMap<String, BTreeMap<Family, IpAddr>> = BTreeMap::new();
    for (pi, p) in pools.iter().enumerate() {
        let mut keep = Vec::new();
        for a in &p.status.allocations {
            let dup = taken.insert(a.ip, a.service.clone()).is_some();
            let svc = by_key.get(a.service.as_str()).filter(|s| s.uid == a.uid);
            let fam = Family::of(a.ip);
            let in_pool = match &ranges[pi] {
                Ok(rs) => rs.iter().any(|r| r.contains(a.ip)),
                // A pool with problems keeps its allocations as they are.
                Err(_) => true,
            };
            let keeps = !dup
                && in_pool
                && match svc.map(|s| &s.want) {
                    Some(Want::Addresses {
                        families,
                        requested,
                        ..
                    }) => {
                        (if requested.is_empty() {
                            families.contains(&fam)
                        } else {
                            requested.contains(&a.ip)
                        }) && !held.get(&a.service).is_some_and(|h| h.contains_key(&fam))
                    }
                    Some(Want::Refused(_)) => true,
                    _ => false,
                };
            if keeps {
                held.entry(a.service.clone()).or_default().insert(fam, a.ip);
                keep.push(a.clone());
            } else {
                plan.released
                    .push((a.ip, p.name.clone(), a.service.clone()));
            }
        }
        allocs.push(keep);
    }

    // In key order: the same inputs give the same addresses on every agent.
    for s in by_key.values().copied() {
        let mine: BTreeMap<Family, IpAddr> = held.get(&s.key).cloned().unwrap_or_default();
        let last: Vec<IpAddr> = match &s.want {
            Want::NotOurs => continue,
            Want::Refused(why) => {
                plan.refused.insert(s.key.clone(), why.clone());
                continue;
            }
            Want::Nothing => {
                // Keep what it shows from elsewhere; drop reef's pool addresses.
                let ours = |ip: &IpAddr| {
                    taken.contains_key(ip)
                        || ranges
                            .iter()
                            .flatten()
                            .any(|rs| rs.iter().any(|r| r.contains(*ip)))
                };
                let last: Vec<IpAddr> = s.shows.iter().copied().filter(|ip| !ours(ip)).collect();
                if last != s.shows {
                    plan.services.insert(
                        s.key.clone(),
                        ServiceChange {
                            shrink: Some(last),
                            grow: None,
                        },
                    );
                }
                continue;
            }
            Want::Addresses {
                families,
                requested,
                by,
            } => {
                let mut new: Vec<(IpAddr, usize)> = Vec::new();
                let mut why: Vec<String> = Vec::new();
                if !requested.is_empty() {
                    for &ip in requested
                        .iter()
                        .filter(|ip| !mine.values().any(|m| m == *ip))
                    {
                        match take_requested(pools, &ranges, s, ip, &taken) {
                            Ok(pi) => new.push((ip, pi)),
                            Err(e) => why.push(format!("{ip} ({by}) {e}")),
                        }
                    }
                } else {
                    for fam in families.iter().filter(|f| !mine.contains_key(f)) {
                        match take_free(pools, &ranges, &allocs, s, *fam, &taken) {
                            Ok((ip, pi)) => {
                                // Taken for the rest of this pass (the next family, Service).
                                taken.insert(ip, s.key.clone());
                                new.push((ip, pi));
                            }
                            Err(e) => why.push(e),
                        }
                    }
                }
                if !why.is_empty() {
                    // All or nothing: a Service never gets half of what it asked for.
                    for (ip, _) in &new {
                        taken.remove(ip);
                    }
                    plan.refused.insert(s.key.clone(), why.join("; "));
                    new.clear();
                }
                for &(ip, pi) in &new {
                    taken.insert(ip, s.key.clone());
                    allocs[pi].push(LoadBalancerAllocation {
                        ip,
                        service: s.key.clone(),
                        uid: s.uid.clone(),
                        allocated_at: now,
                    });
                    plan.assigned
                        .entry(s.key.clone())
                        .or_default()
                        .push((ip, pools[pi].name.clone()));
                }
                let mut last: Vec<IpAddr> = mine
                    .values()
                    .copied()
                    .chain(new.iter().map(|n| n.0))
                    .collect();
                last.sort_by_key(|ip| (Family::of(*ip), *ip));
                last
            }
        };
        let shrink: Vec<IpAddr> = s
            .shows
            .iter()
            .copied()
            .filter(|ip| last.contains(ip))
            .collect();
        let mut change = ServiceChange::default();
        if shrink != s.shows {
            change.shrink = Some(shrink.clone());
        }
        if last != shrink {
            change.grow = Some(last);
        }
        if change != ServiceChange::default() {
            plan.services.insert(s.key.clone(), change);
        }
    }

    for (pi, p) in pools.iter().enumerate() {
        let mut a = std::mem::take(&mut allocs[pi]);
        a.sort_by_key(|x| (Family::of(x.ip), x.ip));
        let size: u128 = match &ranges[pi] {
            Ok(rs) => rs.iter().map(LbRange::size).sum(),
            Err(_) => 0,
        };
        let status = LoadBalancerIpPoolStatus {
            used: a.len() as u64,
            free: u64::try_from(size.saturating_sub(a.len() as u128)).unwrap_or(u64::MAX),
            problem: ranges[pi].as_ref().err().cloned(),
            allocations: a,
        };
        if status != p.status {
            plan.pools.insert(p.name.clone(), status);
        }
    }
    plan
}

/// The pool a requested address may come from, or why none.
fn take_requested(
    pools: &[LbPool],
    ranges: &[Result<Vec<LbRange>, String>],
    s: &LbService,
    ip: IpAddr,
    taken: &BTreeMap<IpAddr, String>,
) -> Result<usize, String> {
    if let Some(other) = taken.get(&ip) {
        return Err(format!("is already assigned to Service {other}"));
    }
    let mut why = Vec::new();
    for (pi, p) in pools.iter().enumerate() {
        match &ranges[pi] {
            Ok(rs) if rs.iter().any(|r| r.contains(ip)) => {
                if selects(&p.spec.service_selector, &s.labels) {
                    return Ok(pi);
                }
                why.push(format!(
                    "is in LoadBalancerIPPool {}, whose serviceSelector does not select this Service",
                    p.name
                ));
            }
            Err(e)
                if p.spec
                    .cidrs
                    .iter()
                    .filter_map(|c| LbRange::parse(c).ok())
                    .any(|r| r.contains(ip)) =>
            {
                why.push(format!(
                    "is in LoadBalancerIPPool {}, which hands out nothing: {e}",
                    p.name
                ));
            }
            _ => {}
        }
    }
    if why.is_empty() {
        Err("is in no LoadBalancerIPPool".to_string())
    } else {
        Err(why.join(", "))
    }
}

/// The lowest free address of `fam` in the first pool (by name) that may give one.
fn take_free(
    pools: &[LbPool],
    ranges: &[Result<Vec<LbRange>, String>],
    allocs: &[Vec<LoadBalancerAllocation>],
    s: &LbService,
    fam: Family,
    taken: &BTreeMap<IpAddr, String>,
) -> Result<(IpAddr, usize), String> {
    let mut order: Vec<usize> = (0..pools.len()).collect();
    order.sort_by(|a, b| pools[*a].name.cmp(&pools[*b].name));
    let mut full = Vec::new();
    let mut broken = Vec::new();
    for pi in order {
        let p = &pools[pi];
        if !p.spec.auto_assign || !selects(&p.spec.service_selector, &s.labels) {
            continue;
        }
        let rs = match &ranges[pi] {
            Ok(rs) => rs,
            Err(e) => {
                broken.push(format!("{} hands out nothing: {e}", p.name));
                continue;
            }
        };
        let mut size = 0u128;
        for r in rs.iter().filter(|r| Family::of(r.first) == fam) {
            size += r.size();
            // At most one step per taken address before a free one.
            let mut k = 0u128;
            while let Some(ip) = r.nth(k) {
                if !taken.contains_key(&ip) {
                    return Ok((ip, pi));
                }
                k += 1;
            }
        }
        if size > 0 {
            let used = allocs[pi]
                .iter()
                .filter(|a| Family::of(a.ip) == fam)
                .count();
            full.push(format!("{} ({used} of {size} used)", p.name));
        }
    }
    let mut msg = if full.is_empty() {
        format!(
            "no LoadBalancerIPPool with autoAssign selects this Service for {}",
            fam.name()
        )
    } else {
        format!(
            "no free {} address: {} exhausted",
            fam.name(),
            full.join(", ")
        )
    };
    if !broken.is_empty() {
        msg.push_str(&format!(" ({})", broken.join("; ")));
    }
    Err(msg)
}

/// What `reef ipam check` reports about LoadBalancer addresses; empty when all is well.
pub fn check(pools: &[LbPool], services: &[LbService]) -> Vec<String> {
    let mut problems = Vec::new();
    let by_key: BTreeMap<&str, &LbService> = services.iter().map(|s| (s.key.as_str(), s)).collect();
    let mut seen: BTreeMap<IpAddr, (&str, &str)> = BTreeMap::new();
    for (p, r) in pools.iter().zip(pool_ranges(pools)) {
        if let Err(e) = r {
            problems.push(format!("LoadBalancerIPPool {}: {e}", p.name));
        }
        for a in &p.status.allocations {
            if let Some((op, os)) = seen.insert(a.ip, (&p.name, &a.service)) {
                problems.push(format!(
                    "{} is allocated twice: in pool {op} to Service {os} and in pool {} to Service {}",
                    a.ip, p.name, a.service
                ));
            }
            let why = match by_key.get(a.service.as_str()) {
                None => Some("which does not exist".to_string()),
                Some(s) if s.uid != a.uid => {
                    Some(format!("UID {}, which is gone (now {})", a.uid, s.uid))
                }
                Some(s) => match &s.want {
                    Want::Nothing => Some("which is not of type LoadBalancer".to_string()),
                    Want::NotOurs => Some("which has another loadBalancerClass".to_string()),
                    _ if !s.shows.contains(&a.ip) => {
                        Some("which does not show it in status.loadBalancer.ingress".into())
                    }
                    _ => None,
                },
            };
            if let Some(why) = why {
                problems.push(format!(
                    "{} (pool {}) is allocated to Service {}, {why}",
                    a.ip, p.name, a.service
                ));
            }
        }
    }
    let mut shown: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for s in services {
        if s.want == Want::NotOurs {
            continue;
        }
        for ip in &s.shows {
            if let Some(o) = shown.insert(*ip, &s.key) {
                problems.push(format!("{ip} is shown by two Services: {o} and {}", s.key));
            }
            let allocated = seen.get(ip).is_some_and(|(_, holder)| *holder == s.key);
            if !allocated
                && (matches!(s.want, Want::Addresses { .. } | Want::Refused(_))
                    || seen.contains_key(ip))
            {
                problems.push(format!(
                    "Service {} shows {ip} without an allocation in any LoadBalancerIPPool",
                    s.key
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn pool(name: &str, cidrs: &[&str]) -> LbPool {
        LbPool {
            name: name.into(),
            spec: LoadBalancerIpPoolSpec {
                cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
                service_selector: Default::default(),
                auto_assign: true,
            },
            status: Default::default(),
        }
    }
    fn svc(key: &str, fams: &[Family], requested: &[&str]) -> LbService {
        LbService {
            key: key.into(),
            uid: format!("uid-{key}"),
            labels: Default::default(),
            want: Want::Addresses {
                families: fams.to_vec(),
                requested: requested.iter().map(|s| s.parse().unwrap()).collect(),
                by: "spec.loadBalancerIP".into(),
            },
            shows: Vec::new(),
        }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    /// Writes a plan back into pools and services as the controller would.
    fn apply(pools: &mut [LbPool], services: &mut [LbService], p: &Plan) {
        for pl in pools.iter_mut() {
            if let Some(st) = p.pools.get(&pl.name) {
                pl.status = st.clone();
            }
        }
        for s in services.iter_mut() {
            if let Some(c) = p.services.get(&s.key) {
                if let Some(l) = c.grow.as_ref().or(c.shrink.as_ref()) {
                    s.shows = l.clone();
                }
            }
        }
    }

    #[test]
    fn assigns_lowest_free_per_family_and_is_stable() {
        let mut pools = vec![
            pool("b", &["fd00::10-fd00::11"]),
            pool("a", &["198.51.100.0/31"]),
        ];
        let mut svcs = vec![
            svc("ns/web", &[Family::V4, Family::V6], &[]),
            svc("ns/api", &[Family::V4], &[]),
        ];
        let p = plan(&pools, &svcs, 7);
        assert!(p.refused.is_empty(), "{:?}", p.refused);
        assert_eq!(p.services["ns/api"].grow, Some(vec![ip("198.51.100.0")]));
        assert_eq!(
            p.services["ns/web"].grow,
            Some(vec![ip("198.51.100.1"), ip("fd00::10")])
        );
        assert_eq!(p.pools["a"].used, 2);
        assert_eq!(p.pools["a"].free, 0);
        assert_eq!(p.pools["b"].free, 1);
        apply(&mut pools, &mut svcs, &p);
        assert!(
            check(&pools, &svcs).is_empty(),
            "{:?}",
            check(&pools, &svcs)
        );
        // Nothing more to do: a second pass writes nothing.
        assert_eq!(plan(&pools, &svcs, 8), Plan::default());
    }

    #[test]
    fn exhausted_pool_refuses_and_changes_nothing_else() {
        let mut pools = vec![pool("a", &["198.51.100.7"])];
        let mut svcs = vec![svc("ns/one", &[Family::V4], &[])];
        let p = plan(&pools, &svcs, 1);
        apply(&mut pools, &mut svcs, &p);
        svcs.push(svc("ns/two", &[Family::V4], &[]));
        let p = plan(&pools, &svcs, 2);
        assert!(p.pools.is_empty() && p.services.is_empty(), "{p:?}");
        assert_eq!(
            p.refused["ns/two"],
            "no free IPv4 address: a (1 of 1 used) exhausted"
        );
        // Dual stack with no IPv6 pool: neither family given (all or nothing).
        let p = plan(&pools, &[svc("ns/ds", &[Family::V4, Family::V6], &[])], 3);
        assert!(p.refused["ns/ds"].contains("for IPv6"), "{p:?}");
        assert!(p.assigned.is_empty());
    }

    #[test]
    fn requested_addresses_outside_taken_or_unselected_are_refused() {
        let mut pools = vec![
            pool("a", &["198.51.100.0/29"]),
            pool("b", &["203.0.113.0/30"]),
        ];
        pools[1]
            .spec
            .service_selector
            .insert("tier".into(), "edge".into());
        pools[0].spec.auto_assign = false;
        let mut svcs = vec![svc("ns/x", &[Family::V4], &["198.51.100.5"])];
        let p = plan(&pools, &svcs, 1);
        assert_eq!(p.services["ns/x"].grow, Some(vec![ip("198.51.100.5")]));
        apply(&mut pools, &mut svcs, &p);
        for (req, why) in [
            ("198.51.100.5", "is already assigned to Service ns/x"),
            ("192.0.2.1", "is in no LoadBalancerIPPool"),
            ("203.0.113.1", "serviceSelector does not select"),
        ] {
            let p = plan(
                &pools,
                &[svcs[0].clone(), svc("ns/y", &[Family::V4], &[req])],
                2,
            );
            assert!(p.refused["ns/y"].contains(why), "{req}: {p:?}");
            assert!(p.pools.is_empty() && p.services.is_empty(), "{p:?}");
        }
        // autoAssign false: nothing for a Service that asks for no address.
        let p = plan(&pools, &[svc("ns/z", &[Family::V4], &[])], 3);
        assert!(p.refused["ns/z"].contains("no LoadBalancerIPPool with autoAssign"));
        // The request changes: the old address leaves the status before the new one comes.
        svcs[0] = svc("ns/x", &[Family::V4], &["198.51.100.6"]);
        svcs[0].shows = vec![ip("198.51.100.5")];
        let p = plan(&pools, &svcs, 4);
        assert_eq!(
            p.services["ns/x"],
            ServiceChange {
                shrink: Some(vec![]),
                grow: Some(vec![ip("198.51.100.6")])
            }
        );
        assert_eq!(
            p.released,
            vec![(ip("198.51.100.5"), "a".into(), "ns/x".into())]
        );
    }

    #[test]
    fn overlapping_pools_hand_out_nothing_and_keep_their_allocations() {
        let mut pools = vec![pool("a", &["198.51.100.0/30"])];
        let mut svcs = vec![svc("ns/x", &[Family::V4], &[])];
        let p = plan(&pools, &svcs, 1);
        apply(&mut pools, &mut svcs, &p);
        pools.push(pool("b", &["198.51.100.2-198.51.100.9"]));
        svcs.push(svc("ns/y", &[Family::V4], &[]));
        let p = plan(&pools, &svcs, 2);
        assert!(
            p.refused["ns/y"].contains("overlaps LoadBalancerIPPool b"),
            "{p:?}"
        );
        assert!(!p.services.contains_key("ns/x"));
        assert_eq!(p.pools["a"].allocations, pools[0].status.allocations);
        assert!(p.pools["a"]
            .problem
            .as_deref()
            .unwrap()
            .contains("overlaps"));
        assert!(check(&pools, &svcs[..1])
            .iter()
            .any(|c| c.contains("overlaps")));
    }

    #[test]
    fn released_when_the_service_goes_changes_type_or_is_recreated() {
        let mut pools = vec![pool("a", &["198.51.100.0/30"])];
        let mut svcs = vec![
            svc("ns/gone", &[Family::V4], &[]),
            svc("ns/type", &[Family::V4], &[]),
            svc("ns/new", &[Family::V4], &[]),
        ];
        let p = plan(&pools, &svcs, 1);
        apply(&mut pools, &mut svcs, &p);
        svcs.remove(0);
        svcs[0].want = Want::Nothing;
        svcs[1].uid = "another".into();
        let p = plan(&pools, &svcs, 2);
        assert_eq!(p.released.len(), 3, "{p:?}");
        // Type changed: the address leaves the status (and is not reused in this pass).
        assert_eq!(p.services["ns/type"].shrink, Some(vec![]));
        assert_eq!(p.services["ns/new"].shrink, Some(vec![]));
        assert_eq!(p.services["ns/new"].grow, Some(vec![ip("198.51.100.3")]));
        apply(&mut pools, &mut svcs, &p);
        assert!(
            check(&pools, &svcs).is_empty(),
            "{:?}",
            check(&pools, &svcs)
        );
        assert_eq!(pools[0].status.used, 1);
    }

    #[test]
    fn other_class_is_left_alone_and_check_reports_what_is_wrong() {
        let mut pools = vec![pool("a", &["198.51.100.0/30"])];
        let mut other = svc("ns/other", &[Family::V4], &[]);
        other.want = Want::NotOurs;
        other.shows = vec![ip("198.51.100.0")];
        let p = plan(&pools, std::slice::from_ref(&other), 1);
        assert_eq!(p.pools["a"].used, 0);
        assert!(p.services.is_empty() && p.assigned.is_empty());
        // An allocation twice, one for a gone Service, a Service showing an unallocated one.
        let a = |ip: &str, s: &str| LoadBalancerAllocation {
            ip: ip.parse().unwrap(),
            service: s.into(),
            uid: format!("uid-{s}"),
            allocated_at: 0,
        };
        pools[0].status.allocations = vec![a("198.51.100.1", "ns/x"), a("198.51.100.1", "ns/y")];
        let mut x = svc("ns/x", &[Family::V4], &[]);
        x.shows = vec![ip("198.51.100.1"), ip("198.51.100.2")];
        let c = check(&pools, &[x.clone()]).join("\n");
        assert!(c.contains("198.51.100.1 is allocated twice"), "{c}");
        assert!(c.contains("Service ns/y, which does not exist"), "{c}");
        assert!(
            c.contains("ns/x shows 198.51.100.2 without an allocation"),
            "{c}"
        );
        // The plan repairs it: the duplicate released, the stray address dropped.
        let mut svcs = vec![x];
        let p = plan(&pools, &svcs, 2);
        apply(&mut pools, &mut svcs, &p);
        assert!(
            check(&pools, &svcs).is_empty(),
            "{:?}",
            check(&pools, &svcs)
        );
    }

    #[test]
    fn services_racing_in_one_pass_never_share_an_address() {
        let pools = vec![pool("a", &["10.9.0.0/26"])];
        let svcs: Vec<LbService> = (0..80)
            .map(|i| svc(&format!("ns/s{i}"), &[Family::V4], &[]))
            .collect();
        let p = plan(&pools, &svcs, 1);
        let given: BTreeSet<IpAddr> = p.assigned.values().flatten().map(|a| a.0).collect();
        assert_eq!(given.len(), 64);
        assert_eq!(p.refused.len(), 16);
    }
}
