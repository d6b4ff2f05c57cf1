//! Random allocate / assign / release sequences against a plain model of the block: the
//! invariants hold after every step and the block agrees with the model (FIFO order included).

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;

use proptest::prelude::*;
use reef_config::AllocationAttributes;
use reef_ipam::block::Block;
use reef_ipam::HandleId;

#[derive(Debug, Clone)]
enum Op {
    Allocate { count: usize, handle: u8 },
    Assign { ordinal: u32, handle: u8 },
    Release { pick: usize },
    ReleaseHandle { handle: u8 },
    GcGuarded { pick: usize, stale: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1usize..6, 0u8..5).prop_map(|(count, handle)| Op::Allocate { count, handle }),
        (0u32..70, 0u8..5).prop_map(|(ordinal, handle)| Op::Assign { ordinal, handle }),
        any::<usize>().prop_map(|pick| Op::Release { pick }),
        (0u8..5).prop_map(|handle| Op::ReleaseHandle { handle }),
        (any::<usize>(), any::<bool>()).prop_map(|(pick, stale)| Op::GcGuarded { pick, stale }),
    ]
}

fn run(cidr: &str, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut b = Block::new(cidr.parse().unwrap(), Some("n".into())).unwrap();
    let size = b.size();
    // Model: free queue of ordinals and ordinal -> handle.
    let mut free: VecDeque<u32> = (0..size).collect();
    let mut held: BTreeMap<u32, u8> = BTreeMap::new();
    let attrs = AllocationAttributes {
        node: Some("n".into()),
        ..Default::default()
    };
    let hid = |h: u8| HandleId(format!("h{h}"));
    for op in ops {
        match op {
            Op::Allocate { count, handle } => {
                let got = b.allocate(count, &hid(handle), &attrs);
                let want: Vec<u32> = (0..count.min(free.len()))
                    .map(|_| free.pop_front().unwrap())
                    .collect();
                let got_ords: Vec<u32> = got.iter().map(|a| b.ordinal(*a).unwrap()).collect();
                prop_assert_eq!(&got_ords, &want);
                for o in want {
                    held.insert(o, handle);
                }
            }
            Op::Assign { ordinal, handle } => {
                let Some(addr) = reef_ipam::block::nth_address(&b.cidr(), ordinal.into()) else {
                    continue;
                };
                let r = b.assign(addr, &hid(handle), &attrs);
                if ordinal >= size {
                    prop_assert!(r.is_err());
                } else if let std::collections::btree_map::Entry::Vacant(e) = held.entry(ordinal) {
                    prop_assert!(r.is_ok());
                    free.retain(|&o| o != ordinal);
                    e.insert(handle);
                } else {
                    prop_assert!(r.is_err());
                }
            }
            Op::Release { pick } => {
                if held.is_empty() {
                    continue;
                }
                let ord = *held.keys().nth(pick % held.len()).unwrap();
                let freed = b.release(&[b.address(ord)]);
                prop_assert_eq!(freed.len(), 1);
                held.remove(&ord);
                free.push_back(ord);
                // Releasing again is a no-op.
                prop_assert!(b.release(&[b.address(ord)]).is_empty());
            }
            Op::ReleaseHandle { handle } => {
                let mut addrs = b.release_handle(&hid(handle));
                addrs.sort();
                let mut want: Vec<IpAddr> = held
                    .iter()
                    .filter(|(_, h)| **h == handle)
                    .map(|(o, _)| b.address(*o))
                    .collect();
                want.sort();
                prop_assert_eq!(addrs, want);
                let ords: Vec<u32> = held
                    .iter()
                    .filter(|(_, h)| **h == handle)
                    .map(|(o, _)| *o)
                    .collect();
                for o in ords {
                    held.remove(&o);
                    free.push_back(o);
                }
            }
            Op::GcGuarded { pick, stale } => {
                if held.is_empty() {
                    continue;
                }
                let ord = *held.keys().nth(pick % held.len()).unwrap();
                let addr = b.address(ord);
                let seq = b.allocation(addr).unwrap().sequence;
                let freed = b.release_if_sequence(addr, if stale { seq - 1 } else { seq });
                prop_assert_eq!(freed, !stale);
                if freed {
                    held.remove(&ord);
                    free.push_back(ord);
                }
            }
        }
        prop_assert_eq!(b.check(), vec![]);
        prop_assert_eq!(
            b.spec.unallocated.iter().copied().collect::<VecDeque<_>>(),
            free.clone()
        );
        let model_counts: BTreeMap<String, u32> =
            held.values().fold(BTreeMap::new(), |mut m, h| {
                *m.entry(format!("h{h}")).or_insert(0) += 1;
                m
            });
        let counts: BTreeMap<String, u32> = b
            .handle_counts()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        prop_assert_eq!(counts, model_counts);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn v4_block_keeps_invariants(ops in proptest::collection::vec(op(), 1..120)) {
        run("10.244.3.64/26", ops)?;
    }

    #[test]
    fn v6_block_keeps_invariants(ops in proptest::collection::vec(op(), 1..120)) {
        run("fd00:244::40/122", ops)?;
    }

    #[test]
    fn small_block_exhausts_cleanly(ops in proptest::collection::vec(op(), 1..60)) {
        run("192.168.0.0/29", ops)?;
    }
}
