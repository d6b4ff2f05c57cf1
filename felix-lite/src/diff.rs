//! Desired vs kernel: the operations that make the kernel's reef routes equal to the desired
//! ones. Pure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::kernel::{KernelRoute, RouteKey};

/// One change to the kernel's reef routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// No reef route at this key: create it (never replacing anything).
    Add(KernelRoute),
    /// A reef route at this key differs: replace it in place (no delete-then-add gap).
    Replace(KernelRoute),
    /// A reef route nobody wants any more.
    Delete(KernelRoute),
}

impl Op {
    pub fn route(&self) -> &KernelRoute {
        match self {
            Op::Add(r) | Op::Replace(r) | Op::Delete(r) => r,
        }
    }
}

/// The operations turning `kernel` (reef's routes only) into `desired`. Adds and replaces come
/// before deletes, so traffic moving to a new route never meets a gap. Routes equal on both
/// sides produce nothing: a restart over a correct kernel state causes no churn.
pub fn diff(
    desired: &BTreeMap<RouteKey, KernelRoute>,
    kernel: &BTreeMap<RouteKey, KernelRoute>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    for (key, want) in desired {
        match kernel.get(key) {
            None => ops.push(Op::Add(want.clone())),
            Some(have) if have != want => ops.push(Op::Replace(want.clone())),
            Some(_) => {}
        }
    }
    for (key, have) in kernel {
        if !desired.contains_key(key) {
            ops.push(Op::Delete(have.clone()));
        }
    }
    ops
}

/// Holds back the deletion of reef routes seen unwanted for less than `grace`: the CNI plugin
/// writes a new pod's route (with reef's protocol) before the agent hears of the pod, and that
/// route must not be deleted in the meantime. `unwanted_since` remembers when each key was
/// first seen unwanted (the caller forgets keys that became wanted or vanished). Returns the
/// operations to run now and when the earliest held-back delete falls due. Routes in
/// `withdrawn` (the caller wanted them before) are deleted at once.
pub fn hold_back_deletes(
    ops: Vec<Op>,
    withdrawn: &HashSet<RouteKey>,
    unwanted_since: &mut HashMap<RouteKey, Instant>,
    now: Instant,
    grace: Duration,
) -> (Vec<Op>, Option<Instant>) {
    let mut due: Option<Instant> = None;
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let held = matches!(&op, Op::Delete(r) if !withdrawn.contains(&r.key()));
        if let (true, Op::Delete(r)) = (held, &op) {
            let since = *unwanted_since.entry(r.key()).or_insert(now);
            if now.saturating_duration_since(since) < grace {
                let at = since + grace;
                due = Some(due.map_or(at, |d| d.min(at)));
                continue;
            }
        }
        out.push(op);
    }
    (out, due)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{KernelNextHop, KernelTarget};

    fn r(dst: &str, gw: Option<&str>, ifindex: u32) -> KernelRoute {
        KernelRoute {
            destination: dst.parse().unwrap(),
            metric: 0,
            scope: if gw.is_some() { 0 } else { 253 },
            target: KernelTarget::Unicast(vec![KernelNextHop {
                gateway: gw.map(|g| g.parse().unwrap()),
                ifindex,
                onlink: false,
                weight: 0,
            }]),
        }
    }

    fn map(rs: &[KernelRoute]) -> BTreeMap<RouteKey, KernelRoute> {
        rs.iter().map(|r| (r.key(), r.clone())).collect()
    }

    #[test]
    fn equal_states_need_nothing() {
        let a = map(&[
            r("10.0.0.0/26", Some("10.1.0.2"), 2),
            r("10.0.0.5/32", None, 7),
        ]);
        assert!(diff(&a, &a).is_empty());
        assert!(diff(&map(&[]), &map(&[])).is_empty());
    }

    #[test]
    fn add_replace_delete_in_that_order() {
        let desired = map(&[
            r("10.0.0.0/26", Some("10.1.0.3"), 2), // changed gateway
            r("10.0.1.0/26", Some("10.1.0.2"), 2), // new
            r("10.0.2.0/26", Some("10.1.0.2"), 2), // unchanged
        ]);
        let kernel = map(&[
            r("10.0.0.0/26", Some("10.1.0.2"), 2),
            r("10.0.2.0/26", Some("10.1.0.2"), 2),
            r("10.0.9.0/26", Some("10.1.0.2"), 2), // stale
        ]);
        let ops = diff(&desired, &kernel);
        assert_eq!(
            ops,
            vec![
                Op::Replace(r("10.0.0.0/26", Some("10.1.0.3"), 2)),
                Op::Add(r("10.0.1.0/26", Some("10.1.0.2"), 2)),
                Op::Delete(r("10.0.9.0/26", Some("10.1.0.2"), 2)),
            ]
        );
    }

    #[test]
    fn a_different_metric_is_another_route() {
        let mut high = r("10.0.0.0/26", Some("10.1.0.2"), 2);
        high.metric = 100;
        let low = r("10.0.0.0/26", Some("10.1.0.2"), 2);
        let ops = diff(
            &map(std::slice::from_ref(&low)),
            &map(std::slice::from_ref(&high)),
        );
        assert_eq!(ops, vec![Op::Add(low), Op::Delete(high)]);
    }

    #[test]
    fn target_kind_change_is_a_replace() {
        let mut bh = r("10.0.0.0/26", None, 0);
        bh.target = KernelTarget::Blackhole;
        bh.scope = 0;
        let uni = r("10.0.0.0/26", Some("10.1.0.2"), 2);
        assert_eq!(
            diff(&map(&[bh.clone()]), &map(&[uni])),
            vec![Op::Replace(bh)]
        );
    }

    #[test]
    fn deletes_wait_for_the_grace_period() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let stale = r("10.0.9.5/32", None, 9);
        let add = r("10.0.1.0/26", Some("10.1.0.2"), 2);
        let mut seen = HashMap::new();
        let ops = vec![Op::Add(add.clone()), Op::Delete(stale.clone())];
        let (now_ops, due) = hold_back_deletes(ops.clone(), &HashSet::new(), &mut seen, t0, grace);
        assert_eq!(now_ops, vec![Op::Add(add.clone())], "adds never wait");
        assert_eq!(due, Some(t0 + grace));
        let (now_ops, _) = hold_back_deletes(
            ops.clone(),
            &HashSet::new(),
            &mut seen,
            t0 + grace / 2,
            grace,
        );
        assert_eq!(now_ops.len(), 1, "still within the grace period");
        let (now_ops, due) =
            hold_back_deletes(ops.clone(), &HashSet::new(), &mut seen, t0 + grace, grace);
        assert_eq!(now_ops, ops);
        assert_eq!(due, None);
        // A route the caller wanted before (withdrawn) goes at once, whatever the grace.
        let withdrawn: HashSet<RouteKey> = [stale.key()].into_iter().collect();
        let (now_ops, due) =
            hold_back_deletes(ops.clone(), &withdrawn, &mut HashMap::new(), t0, grace);
        assert_eq!((now_ops, due), (ops.clone(), None));
        // No grace: immediate.
        let (now_ops, _) = hold_back_deletes(
            ops.clone(),
            &HashSet::new(),
            &mut HashMap::new(),
            t0,
            Duration::ZERO,
        );
        assert_eq!(now_ops, ops);
    }
}
