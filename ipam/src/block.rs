//! The pure block allocator: one block's addresses, its free list and who holds what.
//!
//! No I/O and no clock: callers pass the time in. Every mutation keeps the invariants of
//! `ipam/DESIGN.md`; [`Block::check`] verifies them on any value (e.g. one read from a store).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use reef_config::{Allocation, AllocationAttributes, IpamBlockSpec};

use crate::HandleId;

/// Number of addresses in `net`, capped at `u128::MAX` for a whole /0 IPv6 space.
pub fn net_size(net: &IpNetwork) -> u128 {
    let bits = host_bits(net);
    if bits >= 128 {
        u128::MAX
    } else {
        1u128 << bits
    }
}

fn host_bits(net: &IpNetwork) -> u32 {
    match net {
        IpNetwork::V4(n) => 32 - u32::from(n.prefix()),
        IpNetwork::V6(n) => 128 - u32::from(n.prefix()),
    }
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v4: bool, v: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// The `index`-th address of `net`, if `net` has that many.
pub fn nth_address(net: &IpNetwork, index: u128) -> Option<IpAddr> {
    (index < net_size(net)).then(|| from_u128(net.is_ipv4(), to_u128(net.network()) + index))
}

/// Offset of `addr` from the first address of `net`, if `net` contains it.
pub fn offset_of(net: &IpNetwork, addr: IpAddr) -> Option<u128> {
    (net.is_ipv4() == addr.is_ipv4() && net.contains(addr))
        .then(|| to_u128(addr) - to_u128(net.network()))
}

/// How many blocks of prefix length `block_size` a pool holds.
pub fn block_count(pool: &IpNetwork, block_size: u8) -> u128 {
    let bits = u32::from(block_size) - u32::from(pool.prefix());
    if bits >= 128 {
        u128::MAX
    } else {
        1u128 << bits
    }
}

/// The `index`-th block of prefix length `block_size` in `pool`.
pub fn nth_block(pool: &IpNetwork, block_size: u8, index: u128) -> Option<IpNetwork> {
    if index >= block_count(pool, block_size) {
        return None;
    }
    let step_bits = match pool {
        IpNetwork::V4(_) => 32 - u32::from(block_size),
        IpNetwork::V6(_) => 128 - u32::from(block_size),
    };
    let base = to_u128(pool.network()) + (index << step_bits);
    IpNetwork::new(from_u128(pool.is_ipv4(), base), block_size).ok()
}

/// The block of prefix length `block_size` that holds `addr`.
pub fn block_of(addr: IpAddr, block_size: u8) -> Option<IpNetwork> {
    let net = IpNetwork::new(addr, block_size).ok()?;
    IpNetwork::new(net.network(), block_size).ok()
}

/// [`Block::is_prefix_reserved`] for block `cidr`.
pub fn prefix_reserved(cidr: &IpNetwork, ordinal: u32) -> bool {
    let (max, prefix) = match cidr {
        IpNetwork::V4(n) => (31, n.prefix()),
        IpNetwork::V6(n) => (127, n.prefix()),
    };
    prefix < max && (ordinal == 0 || (cidr.is_ipv4() && u128::from(ordinal) + 1 == net_size(cidr)))
}

/// Something wrong with a block value (read from a store, or a bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("block {cidr}: too large for one block object")]
    TooLarge { cidr: IpNetwork },
    #[error("block {cidr}: {field} holds ordinal {ordinal}, outside the block's {size} addresses")]
    OutOfRange {
        cidr: IpNetwork,
        /// `allocations` or `unallocated`.
        field: &'static str,
        ordinal: u32,
        size: u32,
    },
    #[error("block {cidr}: ordinal {ordinal} is both free and allocated")]
    FreeAndAllocated { cidr: IpNetwork, ordinal: u32 },
    #[error("block {cidr}: ordinal {ordinal} appears twice")]
    Duplicate { cidr: IpNetwork, ordinal: u32 },
    #[error("block {cidr}: ordinal {ordinal} is neither free nor allocated")]
    Lost { cidr: IpNetwork, ordinal: u32 },
    #[error("block {cidr}: allocations are not sorted by ordinal")]
    Unsorted { cidr: IpNetwork },
    #[error("block {cidr}: allocation {ordinal} has sequence {sequence} beyond the block's {block_sequence}")]
    FutureSequence {
        cidr: IpNetwork,
        ordinal: u32,
        sequence: u64,
        block_sequence: u64,
    },
    #[error("block {cidr}: allocation {ordinal} has an empty handle")]
    EmptyHandle { cidr: IpNetwork, ordinal: u32 },
    #[error(
        "block {cidr}: inUse/free say {in_use}/{free}, the lists hold {allocated}/{unallocated}"
    )]
    Counts {
        cidr: IpNetwork,
        in_use: u32,
        free: u32,
        allocated: u32,
        unallocated: u32,
    },
}

/// Why a specific address cannot be assigned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error("{addr} is not in block {cidr}")]
    NotInBlock { addr: IpAddr, cidr: IpNetwork },
    #[error("{addr} is already allocated to handle {handle}")]
    InUse { addr: IpAddr, handle: String },
}

/// A block and the operations on it. Wraps the stored [`IpamBlockSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub spec: IpamBlockSpec,
}

/// Largest block the allocator accepts: the allocation list has one entry per address.
pub const MAX_BLOCK_ADDRESSES: u128 = 1 << 16;

impl Block {
    /// A fresh block with every address free, in address order.
    pub fn new(cidr: IpNetwork, affinity: Option<String>) -> Result<Block, Violation> {
        let size = net_size(&cidr);
        if size > MAX_BLOCK_ADDRESSES {
            return Err(Violation::TooLarge { cidr });
        }
        let cidr = IpNetwork::new(cidr.network(), cidr.prefix()).expect("same prefix is valid");
        let size = size as u32;
        Ok(Block {
            spec: IpamBlockSpec {
                cidr,
                affinity,
                allocations: Vec::new(),
                unallocated: (0..size).collect(),
                sequence_number: 0,
                in_use: 0,
                free: size,
            },
        })
    }

    pub fn from_spec(spec: IpamBlockSpec) -> Block {
        Block { spec }
    }

    pub fn cidr(&self) -> IpNetwork {
        self.spec.cidr
    }

    pub fn size(&self) -> u32 {
        net_size(&self.spec.cidr).min(MAX_BLOCK_ADDRESSES) as u32
    }

    pub fn free_count(&self) -> usize {
        self.spec.unallocated.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spec.allocations.is_empty()
    }

    pub fn address(&self, ordinal: u32) -> IpAddr {
        nth_address(&self.spec.cidr, u128::from(ordinal)).expect("ordinal within the block")
    }

    pub fn ordinal(&self, addr: IpAddr) -> Option<u32> {
        offset_of(&self.spec.cidr, addr).map(|o| o as u32)
    }

    /// The allocation holding `addr`, if any.
    pub fn allocation(&self, addr: IpAddr) -> Option<&Allocation> {
        let ord = self.ordinal(addr)?;
        self.find(ord).ok().map(|i| &self.spec.allocations[i])
    }

    fn find(&self, ordinal: u32) -> Result<usize, usize> {
        self.spec
            .allocations
            .binary_search_by_key(&ordinal, |a| a.ordinal)
    }

    fn sync_counts(&mut self) {
        self.spec.in_use = self.spec.allocations.len() as u32;
        self.spec.free = self.spec.unallocated.len() as u32;
    }

    /// Whether `ordinal` is an address a pod must not get when it is given the block's prefix
    /// length rather than a /32 (/128): the first address (IPv4: the network address; IPv6:
    /// the Subnet-Router anycast address, RFC 4291 2.6.1) and IPv4's last (the broadcast
    /// address, which the kernel of every pod on the block treats as broadcast). /31 and /32
    /// (IPv6 /127 and /128) blocks have no such addresses (RFC 3021, RFC 6164).
    pub fn is_prefix_reserved(&self, ordinal: u32) -> bool {
        prefix_reserved(&self.spec.cidr, ordinal)
    }

    /// Hands out up to `count` addresses from the front of the free list to `handle`.
    /// Returns the addresses taken (fewer when the block runs out).
    pub fn allocate(
        &mut self,
        count: usize,
        handle: &HandleId,
        attributes: &AllocationAttributes,
    ) -> Vec<IpAddr> {
        self.allocate_where(count, handle, attributes, |_| true)
    }

    /// [`Block::allocate`], taking only ordinals for which `usable` holds (the others stay
    /// free, in their place in the list, for other callers).
    pub fn allocate_where(
        &mut self,
        count: usize,
        handle: &HandleId,
        attributes: &AllocationAttributes,
        usable: impl Fn(u32) -> bool,
    ) -> Vec<IpAddr> {
        let mut taken = Vec::with_capacity(count.min(self.spec.unallocated.len()));
        let mut i = 0;
        while taken.len() < count && i < self.spec.unallocated.len() {
            if usable(self.spec.unallocated[i]) {
                taken.push(self.spec.unallocated.remove(i));
            } else {
                i += 1;
            }
        }
        let mut out = Vec::with_capacity(taken.len());
        for ord in taken {
            self.spec.sequence_number += 1;
            let a = Allocation {
                ordinal: ord,
                handle_id: handle.0.clone(),
                sequence: self.spec.sequence_number,
                attributes: attributes.clone(),
            };
            let at = self
                .find(ord)
                .expect_err("a free ordinal has no allocation");
            self.spec.allocations.insert(at, a);
            out.push(self.address(ord));
        }
        self.sync_counts();
        out
    }

    /// Gives `addr` to `handle`.
    pub fn assign(
        &mut self,
        addr: IpAddr,
        handle: &HandleId,
        attributes: &AllocationAttributes,
    ) -> Result<(), AssignError> {
        let ord = self.ordinal(addr).ok_or(AssignError::NotInBlock {
            addr,
            cidr: self.spec.cidr,
        })?;
        let at = match self.find(ord) {
            Ok(i) => {
                let handle = self.spec.allocations[i].handle_id.clone();
                return Err(AssignError::InUse { addr, handle });
            }
            Err(at) => at,
        };
        self.spec.unallocated.retain(|&o| o != ord);
        self.spec.sequence_number += 1;
        self.spec.allocations.insert(
            at,
            Allocation {
                ordinal: ord,
                handle_id: handle.0.clone(),
                sequence: self.spec.sequence_number,
                attributes: attributes.clone(),
            },
        );
        self.sync_counts();
        Ok(())
    }

    /// Frees `addrs`; addresses not allocated here are ignored. Returns the freed allocations
    /// (their handles tell the caller which handle records to update).
    pub fn release(&mut self, addrs: &[IpAddr]) -> Vec<Allocation> {
        let mut freed = Vec::new();
        for &addr in addrs {
            let Some(ord) = self.ordinal(addr) else {
                continue;
            };
            if let Ok(i) = self.find(ord) {
                freed.push(self.spec.allocations.remove(i));
                self.spec.unallocated.push(ord);
            }
        }
        self.sync_counts();
        freed
    }

    /// Frees `addr` only if it still carries `sequence`, i.e. it was not released and handed
    /// out again since the caller looked. Returns whether it was freed.
    pub fn release_if_sequence(&mut self, addr: IpAddr, sequence: u64) -> bool {
        match self.allocation(addr) {
            Some(a) if a.sequence == sequence => !self.release(&[addr]).is_empty(),
            _ => false,
        }
    }

    /// Frees every address of `handle`; returns them.
    pub fn release_handle(&mut self, handle: &HandleId) -> Vec<IpAddr> {
        let addrs = self.addresses_of(handle);
        self.release(&addrs);
        addrs
    }

    /// The addresses `handle` holds in this block.
    pub fn addresses_of(&self, handle: &HandleId) -> Vec<IpAddr> {
        self.spec
            .allocations
            .iter()
            .filter(|a| a.handle_id == handle.0)
            .map(|a| self.address(a.ordinal))
            .collect()
    }

    /// Number of addresses per handle in this block.
    pub fn handle_counts(&self) -> BTreeMap<&str, u32> {
        let mut m = BTreeMap::new();
        for a in &self.spec.allocations {
            *m.entry(a.handle_id.as_str()).or_insert(0) += 1;
        }
        m
    }

    /// Every invariant the block breaks (empty when sound).
    pub fn check(&self) -> Vec<Violation> {
        let cidr = self.spec.cidr;
        let mut v = Vec::new();
        if net_size(&cidr) > MAX_BLOCK_ADDRESSES {
            v.push(Violation::TooLarge { cidr });
            return v;
        }
        let size = self.size();
        let mut allocated = HashSet::new();
        let mut last = None;
        for a in &self.spec.allocations {
            if a.ordinal >= size {
                v.push(Violation::OutOfRange {
                    cidr,
                    field: "allocations",
                    ordinal: a.ordinal,
                    size,
                });
            }
            if !allocated.insert(a.ordinal) {
                v.push(Violation::Duplicate {
                    cidr,
                    ordinal: a.ordinal,
                });
            }
            if last.is_some_and(|l| l > a.ordinal) {
                v.push(Violation::Unsorted { cidr });
            }
            last = Some(a.ordinal);
            if a.sequence > self.spec.sequence_number {
                v.push(Violation::FutureSequence {
                    cidr,
                    ordinal: a.ordinal,
                    sequence: a.sequence,
                    block_sequence: self.spec.sequence_number,
                });
            }
            if a.handle_id.is_empty() {
                v.push(Violation::EmptyHandle {
                    cidr,
                    ordinal: a.ordinal,
                });
            }
        }
        let mut free = HashSet::new();
        for &o in &self.spec.unallocated {
            if o >= size {
                v.push(Violation::OutOfRange {
                    cidr,
                    field: "unallocated",
                    ordinal: o,
                    size,
                });
            }
            if allocated.contains(&o) {
                v.push(Violation::FreeAndAllocated { cidr, ordinal: o });
            }
            if !free.insert(o) {
                v.push(Violation::Duplicate { cidr, ordinal: o });
            }
        }
        for o in 0..size {
            if !allocated.contains(&o) && !free.contains(&o) {
                v.push(Violation::Lost { cidr, ordinal: o });
            }
        }
        let (al, un) = (
            self.spec.allocations.len() as u32,
            self.spec.unallocated.len() as u32,
        );
        if self.spec.in_use != al || self.spec.free != un {
            v.push(Violation::Counts {
                cidr,
                in_use: self.spec.in_use,
                free: self.spec.free,
                allocated: al,
                unallocated: un,
            });
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> HandleId {
        HandleId(s.to_string())
    }

    #[test]
    fn arithmetic_v4_and_v6() {
        let pool: IpNetwork = "10.244.0.0/16".parse().unwrap();
        assert_eq!(block_count(&pool, 26), 1024);
        assert_eq!(
            nth_block(&pool, 26, 0).unwrap().to_string(),
            "10.244.0.0/26"
        );
        assert_eq!(
            nth_block(&pool, 26, 5).unwrap().to_string(),
            "10.244.1.64/26"
        );
        assert_eq!(
            nth_block(&pool, 26, 1023).unwrap().to_string(),
            "10.244.255.192/26"
        );
        assert_eq!(nth_block(&pool, 26, 1024), None);
        assert_eq!(
            block_of("10.244.1.77".parse().unwrap(), 26)
                .unwrap()
                .to_string(),
            "10.244.1.64/26"
        );

        let pool6: IpNetwork = "fd00:244::/56".parse().unwrap();
        assert_eq!(block_count(&pool6, 122), 1 << 66);
        assert_eq!(
            nth_block(&pool6, 122, 1).unwrap().to_string(),
            "fd00:244::40/122"
        );
        assert_eq!(
            nth_block(&pool6, 122, (1 << 66) - 1).unwrap().to_string(),
            "fd00:244:0:ff:ffff:ffff:ffff:ffc0/122"
        );
        assert_eq!(
            block_of("fd00:244::7f".parse().unwrap(), 122)
                .unwrap()
                .to_string(),
            "fd00:244::40/122"
        );
        let b6: IpNetwork = "fd00:244::40/122".parse().unwrap();
        assert_eq!(nth_address(&b6, 63).unwrap().to_string(), "fd00:244::7f");
        assert_eq!(nth_address(&b6, 64), None);
        assert_eq!(offset_of(&b6, "fd00:244::41".parse().unwrap()), Some(1));
        assert_eq!(offset_of(&b6, "10.0.0.1".parse().unwrap()), None);
        assert_eq!(net_size(&"::/0".parse().unwrap()), u128::MAX);
    }

    #[test]
    fn fifo_allocation_and_release_to_the_back() {
        let mut b = Block::new("10.0.0.0/30".parse().unwrap(), Some("n1".into())).unwrap();
        let at = AllocationAttributes::default();
        let got = b.allocate(2, &h("a"), &at);
        assert_eq!(
            got,
            [
                "10.0.0.0".parse::<IpAddr>().unwrap(),
                "10.0.0.1".parse().unwrap()
            ]
        );
        b.release(&["10.0.0.0".parse().unwrap()]);
        // The released address goes to the back: the next two are .2 and .3, then .0.
        let got = b.allocate(5, &h("b"), &at);
        let s: Vec<String> = got.iter().map(|a| a.to_string()).collect();
        assert_eq!(s, ["10.0.0.2", "10.0.0.3", "10.0.0.0"]);
        assert_eq!(b.free_count(), 0);
        assert!(b.check().is_empty());
        assert_eq!(b.handle_counts(), BTreeMap::from([("a", 1), ("b", 3)]));
        assert_eq!(b.spec.sequence_number, 5);
    }

    #[test]
    fn assign_specific_and_sequence_guard() {
        let mut b = Block::new("fd00::/126".parse().unwrap(), None).unwrap();
        let at = AllocationAttributes::default();
        let a: IpAddr = "fd00::2".parse().unwrap();
        b.assign(a, &h("x"), &at).unwrap();
        assert_eq!(
            b.assign(a, &h("y"), &at),
            Err(AssignError::InUse {
                addr: a,
                handle: "x".into()
            })
        );
        let out: IpAddr = "fd00::9".parse().unwrap();
        assert!(matches!(
            b.assign(out, &h("y"), &at),
            Err(AssignError::NotInBlock { .. })
        ));
        let seq = b.allocation(a).unwrap().sequence;
        b.release(&[a]);
        b.assign(a, &h("z"), &at).unwrap();
        // A collector that saw the old allocation must not free the new one.
        assert!(!b.release_if_sequence(a, seq));
        let seq2 = b.allocation(a).unwrap().sequence;
        assert!(b.release_if_sequence(a, seq2));
        assert!(b.check().is_empty());
        assert_eq!(b.release_handle(&h("nobody")), Vec::<IpAddr>::new());
    }

    #[test]
    fn prefix_reserved_ends_are_skipped_and_stay_free_for_others() {
        let at = AllocationAttributes::default();
        let mut b = Block::new("10.0.0.0/29".parse().unwrap(), None).unwrap();
        let reserved: Vec<u32> = (0..8).filter(|&o| b.is_prefix_reserved(o)).collect();
        assert_eq!(reserved, [0, 7]);
        let cidr = b.cidr();
        let got = b.allocate_where(10, &h("a"), &at, |o| !prefix_reserved(&cidr, o));
        let s: Vec<String> = got.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            s,
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert_eq!(b.spec.unallocated, [0, 7]);
        // A /32 pod may still have them.
        let rest = b.allocate(2, &h("b"), &at);
        assert_eq!(rest.len(), 2);
        assert!(b.check().is_empty());
        let v6 = Block::new("fd00::/122".parse().unwrap(), None).unwrap();
        assert!(v6.is_prefix_reserved(0) && !v6.is_prefix_reserved(63));
        for tiny in ["10.0.0.0/31", "10.0.0.0/32", "fd00::/127"] {
            let t = Block::new(tiny.parse().unwrap(), None).unwrap();
            assert!(
                !t.is_prefix_reserved(0) && !t.is_prefix_reserved(1),
                "{tiny}"
            );
        }
    }

    #[test]
    fn check_finds_broken_blocks() {
        let mut b = Block::new("10.0.0.0/30".parse().unwrap(), None).unwrap();
        b.allocate(1, &h("a"), &AllocationAttributes::default());
        let mut broken = b.clone();
        broken.spec.unallocated.push(0);
        let v = broken.check();
        assert!(
            v.contains(&Violation::FreeAndAllocated {
                cidr: b.cidr(),
                ordinal: 0
            }),
            "{v:?}"
        );
        let mut lost = b.clone();
        lost.spec.unallocated.pop();
        assert!(lost
            .check()
            .iter()
            .any(|v| matches!(v, Violation::Lost { ordinal: 3, .. })));
        let mut seq = b.clone();
        seq.spec.sequence_number = 0;
        assert!(seq
            .check()
            .iter()
            .any(|v| matches!(v, Violation::FutureSequence { .. })));
        assert!(Block::new("10.0.0.0/8".parse().unwrap(), None).is_err());
    }
}
