//! Desired vs kernel: the operations that make the kernel's reef routes equal to the desired
//! ones. Pure.

use std::collections::BTreeMap;

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
}
