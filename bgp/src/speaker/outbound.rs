//! What is still to be sent to one peer, merged: one entry per prefix holding its latest
//! state (announce with these attributes, or withdraw), drained by the writer task as the
//! socket takes more.
//!
//! The core never waits on a session, so a peer that reads slowly (or not at all) cannot
//! hold up the RIB; before this queue, every change to such a peer waited as encoded bytes,
//! and a prefix that flapped a thousand times waited a thousand times. Here a newer path
//! replaces the older one queued for the same prefix and a withdraw replaces a queued
//! announce, so the queue never holds more entries than there are distinct prefixes, however
//! much churn there is (the model is rustybgp's `PendingTx`). What the kernel's socket
//! buffers already hold is sent as it was; everything queued after it goes out in its final
//! state. A peer that takes nothing for its hold time is reset by the writer (RFC 9687), so
//! even that bound does not last forever.
//!
//! Announcements are kept grouped by attribute set (the RIB interns them: equal sets share
//! one `Arc`), so a drained chunk packs many prefixes per UPDATE as before.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use ipnetwork::IpNetwork;
use tokio::sync::Notify;
use tracing::warn;

use crate::attrs::PathAttributes;
use crate::packet::{pack_updates, pack_withdrawals, EncodeCxt, Family, Update};
use crate::rib::PeerUpdate;

/// An attribute set's identity in the queue: the address of its interned `Arc`, which the
/// queue holds while any prefix refers to it, so the address is not reused meanwhile.
type AttrKey = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Withdraw,
    Announce(AttrKey),
}

#[derive(Debug)]
struct Group {
    attrs: Arc<PathAttributes>,
    prefixes: HashSet<IpNetwork>,
}

/// The merged changes; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Every queued prefix and what it waits for: the one place a prefix's state lives.
    slots: HashMap<IpNetwork, Slot>,
    withdraw: HashSet<IpNetwork>,
    groups: HashMap<AttrKey, Group>,
    /// End-of-RIB markers to send once everything queued before them went out.
    end_of_rib: Vec<Family>,
}

/// Estimated wire cost, for cutting chunks: a prefix is at most 17 octets (IPv6 /128 with its
/// length octet), and an UPDATE's header and attributes are counted as 128 octets per group.
const PREFIX_COST: usize = 17;
const GROUP_COST: usize = 128;

/// One drained piece: whole UPDATEs of at most about `budget` octets.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    pub withdraw: Vec<IpNetwork>,
    pub announce: Vec<(Arc<PathAttributes>, Vec<IpNetwork>)>,
    pub end_of_rib: Vec<Family>,
}

impl Pending {
    /// Number of queued prefixes (never more than the distinct prefixes pushed).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.end_of_rib.is_empty()
    }

    /// Takes `prefix` out of wherever it is queued.
    fn unlink(&mut self, prefix: &IpNetwork, slot: Slot) {
        match slot {
            Slot::Withdraw => {
                self.withdraw.remove(prefix);
            }
            Slot::Announce(k) => {
                if let Entry::Occupied(mut g) = self.groups.entry(k) {
                    g.get_mut().prefixes.remove(prefix);
                    if g.get().prefixes.is_empty() {
                        g.remove();
                    }
                }
            }
        }
    }

    pub(crate) fn withdraw(&mut self, prefix: IpNetwork) {
        match self.slots.insert(prefix, Slot::Withdraw) {
            Some(Slot::Withdraw) => return,
            Some(old) => self.unlink(&prefix, old),
            None => {}
        }
        self.withdraw.insert(prefix);
    }

    pub(crate) fn announce(&mut self, prefix: IpNetwork, attrs: &Arc<PathAttributes>) {
        let k = Arc::as_ptr(attrs) as AttrKey;
        match self.slots.insert(prefix, Slot::Announce(k)) {
            Some(Slot::Announce(old)) if old == k => return,
            Some(old) => self.unlink(&prefix, old),
            None => {}
        }
        self.groups
            .entry(k)
            .or_insert_with(|| Group {
                attrs: Arc::clone(attrs),
                prefixes: HashSet::new(),
            })
            .prefixes
            .insert(prefix);
    }

    /// Merges an Adj-RIB-Out delta, keeping only the families in `families` (what the session
    /// negotiated): the withdrawals apply before the announcements, as in the delta.
    pub(crate) fn push(&mut self, u: &PeerUpdate, cxt: &EncodeCxt) {
        let ok = |p: &IpNetwork| cxt.families.contains(Family::of(p.ip()));
        for p in u.withdraw.iter().filter(|p| ok(p)) {
            self.withdraw(*p);
        }
        for a in &u.announce {
            for p in a.prefixes.iter().filter(|p| ok(p)) {
                self.announce(*p, &a.attrs);
            }
        }
    }

    pub(crate) fn push_end_of_rib(&mut self, f: Family) {
        self.end_of_rib.push(f);
    }

    /// Gives back the memory of the emptied maps: a hash map keeps the capacity of its
    /// largest size, and every peer's queue fills up at once when a route reflector passes
    /// a burst on (500 clients: ~1,000 prefixes in ~500 groups per peer, about 100 KiB of
    /// map each, held for the session's life).
    fn release(&mut self) {
        debug_assert!(self.slots.is_empty() && self.withdraw.is_empty() && self.groups.is_empty());
        if self.slots.capacity() > 0 {
            self.slots = HashMap::new();
            self.withdraw = HashSet::new();
            self.groups = HashMap::new();
        }
    }

    /// Capacity of the maps (what stays allocated).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.slots.capacity() + self.withdraw.capacity() + self.groups.capacity()
    }

    /// Takes the next piece of at most about `budget` octets: withdrawals first, then whole
    /// attribute groups (a group larger than what is left is split); End-of-RIB only once
    /// nothing else is queued. `None` when empty.
    pub(crate) fn take(&mut self, budget: usize) -> Option<Batch> {
        if self.is_empty() {
            return None;
        }
        let mut b = Batch::default();
        let mut left = budget;
        if !self.withdraw.is_empty() {
            let n = (left / PREFIX_COST).clamp(1, self.withdraw.len());
            b.withdraw = self.withdraw.iter().take(n).copied().collect();
            for p in &b.withdraw {
                self.withdraw.remove(p);
                self.slots.remove(p);
            }
            left = left.saturating_sub(n * PREFIX_COST + GROUP_COST);
        }
        while left > GROUP_COST + PREFIX_COST || b.withdraw.is_empty() && b.announce.is_empty() {
            let Some((&k, g)) = self.groups.iter_mut().next() else {
                break;
            };
            let n = ((left.saturating_sub(GROUP_COST)) / PREFIX_COST).clamp(1, g.prefixes.len());
            let prefixes: Vec<IpNetwork> = if n == g.prefixes.len() {
                g.prefixes.drain().collect()
            } else {
                let v: Vec<IpNetwork> = g.prefixes.iter().take(n).copied().collect();
                for p in &v {
                    g.prefixes.remove(p);
                }
                v
            };
            let attrs = Arc::clone(&g.attrs);
            if g.prefixes.is_empty() {
                self.groups.remove(&k);
            }
            for p in &prefixes {
                self.slots.remove(p);
            }
            left = left.saturating_sub(GROUP_COST + n * PREFIX_COST);
            b.announce.push((attrs, prefixes));
        }
        if self.slots.is_empty() {
            b.end_of_rib = std::mem::take(&mut self.end_of_rib);
            self.release();
        }
        Some(b)
    }
}

impl Batch {
    /// The batch as whole UPDATE messages.
    pub(crate) fn encode(&self, cxt: &EncodeCxt) -> Bytes {
        let prefixes =
            self.withdraw.len() + self.announce.iter().map(|(_, p)| p.len()).sum::<usize>();
        let mut buf =
            BytesMut::with_capacity(64 + PREFIX_COST * prefixes + GROUP_COST * self.announce.len());
        if !self.withdraw.is_empty() {
            if let Err(e) = pack_withdrawals(&self.withdraw, cxt, &mut buf) {
                warn!("cannot encode withdrawals: {e}");
            }
        }
        for (attrs, prefixes) in &self.announce {
            for fam in Family::ALL {
                let of_family: Vec<IpNetwork> = prefixes
                    .iter()
                    .copied()
                    .filter(|p| Family::of(p.ip()) == fam)
                    .collect();
                if of_family.is_empty() {
                    continue;
                }
                if let Err(e) = pack_updates(attrs, &of_family, cxt, &mut buf) {
                    warn!("cannot encode an announcement: {e}");
                }
            }
        }
        for f in &self.end_of_rib {
            if let Err(e) = Update::end_of_rib(*f).encode(cxt, &mut buf) {
                warn!("cannot encode End-of-RIB: {e}");
            }
        }
        buf.freeze()
    }
}

/// A [`Pending`] shared by the session (which merges into it) and its writer (which drains
/// it), with the encoding context of the session it belongs to.
#[derive(Debug, Default)]
pub(crate) struct Outbound {
    inner: Mutex<(Pending, EncodeCxt)>,
    ready: Notify,
}

impl Outbound {
    fn lock(&self) -> MutexGuard<'_, (Pending, EncodeCxt)> {
        // A panic while holding the lock leaves a consistent queue (every method keeps
        // `slots` in step before it can panic); keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn push(&self, u: &PeerUpdate, cxt: EncodeCxt) {
        {
            let mut g = self.lock();
            g.1 = cxt;
            g.0.push(u, &cxt);
        }
        self.ready.notify_one();
    }

    pub(crate) fn end_of_rib(&self, families: impl IntoIterator<Item = Family>, cxt: EncodeCxt) {
        {
            let mut g = self.lock();
            g.1 = cxt;
            for f in families {
                g.0.push_end_of_rib(f);
            }
        }
        self.ready.notify_one();
    }

    /// Queued prefixes.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().0.len()
    }

    /// Waits until something is queued.
    pub(crate) async fn wait(&self) {
        if !self.lock().0.is_empty() {
            return;
        }
        // `notify_one` keeps a permit when nobody waits, so a push between the check and
        // here is not lost.
        self.ready.notified().await;
    }

    /// The next chunk of whole UPDATEs, encoded; `None` when nothing is queued.
    pub(crate) fn next_chunk(&self, budget: usize) -> Option<Bytes> {
        let (batch, cxt) = {
            let mut g = self.lock();
            let cxt = g.1;
            (g.0.take(budget)?, cxt)
        };
        Some(batch.encode(&cxt))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::attrs::NextHop;
    use crate::packet::{DecodeCxt, Families, Message, PeerKind};

    fn attrs(nh: u8) -> Arc<PathAttributes> {
        Arc::new(PathAttributes {
            next_hop: Some(NextHop {
                address: std::net::IpAddr::from([10, 0, 0, nh]),
                link_local: None,
            }),
            local_pref: Some(100),
            ..PathAttributes::default()
        })
    }

    fn v4(i: u32) -> IpNetwork {
        IpNetwork::V4(ipnetwork::Ipv4Network::new((0x0a00_0000 + (i << 8)).into(), 24).unwrap())
    }

    fn cxt() -> EncodeCxt {
        EncodeCxt {
            four_octet_as: true,
            peer: PeerKind::Internal,
            families: Families::BOTH,
        }
    }

    /// Decodes a byte stream of UPDATEs into (prefix, next hop or withdrawn) in wire order,
    /// and the End-of-RIB families.
    pub(crate) fn decode_stream(
        mut bytes: &[u8],
    ) -> (Vec<(IpNetwork, Option<std::net::IpAddr>)>, Vec<Family>) {
        let dc: DecodeCxt = cxt().into();
        let mut out = Vec::new();
        let mut eor = Vec::new();
        while let Some(len) = crate::packet::frame(bytes).unwrap() {
            let Message::Update(u) = Message::decode(&bytes[..len], &dc).unwrap().0 else {
                panic!("only UPDATEs")
            };
            if let Some(f) = u.end_of_rib_family() {
                eor.push(f);
            }
            for p in u.withdrawn_prefixes() {
                out.push((p, None));
            }
            let nh = u.attrs.as_ref().and_then(|a| a.next_hop).map(|n| n.address);
            for p in u.announced_prefixes() {
                out.push((p, nh));
            }
            bytes = &bytes[len..];
        }
        assert!(bytes.is_empty(), "a partial message left over");
        (out, eor)
    }

    #[test]
    fn a_newer_path_replaces_an_older_one_and_a_withdraw_replaces_an_announce() {
        let mut p = Pending::default();
        let (a, b) = (attrs(1), attrs(2));
        p.announce(v4(1), &a);
        p.announce(v4(1), &b);
        p.announce(v4(2), &a);
        p.withdraw(v4(2));
        p.withdraw(v4(3));
        p.announce(v4(3), &a);
        assert_eq!(p.len(), 3);
        // The group of `a` holds only v4(3) now; v4(1) moved to `b`.
        assert_eq!(p.groups.len(), 2);
        let batch = p.take(usize::MAX).unwrap();
        assert_eq!(batch.withdraw, vec![v4(2)]);
        let mut ann: Vec<(u8, Vec<IpNetwork>)> = batch
            .announce
            .iter()
            .map(|(at, ps)| (if Arc::ptr_eq(at, &a) { 1 } else { 2 }, ps.clone()))
            .collect();
        ann.sort();
        assert_eq!(ann, vec![(1, vec![v4(3)]), (2, vec![v4(1)])]);
        assert!(p.is_empty() && p.groups.is_empty() && p.withdraw.is_empty());
        assert_eq!(p.take(usize::MAX), None);
    }

    #[test]
    fn churn_keeps_one_entry_per_prefix_and_drains_to_the_final_state() {
        // 100,000 flaps over 1,000 prefixes between three states, never drained meanwhile.
        let sets = [attrs(1), attrs(2)];
        let mut p = Pending::default();
        let mut last = HashMap::new();
        for i in 0..100_000u32 {
            let prefix = v4(i % 1000);
            let state = (i / 1000 + i % 7) % 3;
            match state {
                0 => p.withdraw(prefix),
                s => p.announce(prefix, &sets[s as usize - 1]),
            }
            last.insert(prefix, state);
            assert!(p.len() <= 1000);
        }
        p.push_end_of_rib(Family::Ipv4Unicast);
        let mut wire = BytesMut::new();
        let mut chunks = 0;
        while let Some(b) = p.take(crate::speaker::writer::BULK_CHUNK) {
            let e = b.encode(&cxt());
            assert!(e.len() <= crate::speaker::writer::BULK_CHUNK, "{}", e.len());
            wire.extend_from_slice(&e);
            chunks += 1;
        }
        let (seen, eor) = decode_stream(&wire);
        // Each prefix exactly once, in its last state, and End-of-RIB after all of them.
        assert_eq!(seen.len(), 1000);
        assert_eq!(eor, vec![Family::Ipv4Unicast]);
        for (prefix, nh) in seen {
            let want = match last[&prefix] {
                0 => None,
                s => Some(std::net::IpAddr::from([10, 0, 0, s as u8])),
            };
            assert_eq!(nh, want, "{prefix}");
        }
        assert!(chunks >= 1);
        assert!(p.groups.is_empty() && p.withdraw.is_empty());
    }

    #[test]
    fn a_big_group_is_cut_into_chunks_of_whole_messages() {
        let a = attrs(1);
        let mut p = Pending::default();
        for i in 0..20_000 {
            p.announce(v4(i), &a);
        }
        let mut n = 0;
        while let Some(b) = p.take(crate::speaker::writer::BULK_CHUNK) {
            let e = b.encode(&cxt());
            assert!(e.len() <= crate::speaker::writer::BULK_CHUNK);
            n += decode_stream(&e).0.len();
        }
        assert_eq!(n, 20_000);
    }

    /// A route reflector's burst: 1,000 prefixes in 500 attribute sets queued for one peer.
    /// Once sent, the queue holds no memory for them (a drained map keeps its capacity).
    #[test]
    fn a_drained_queue_gives_its_memory_back() {
        let sets: Vec<_> = (0..500u32).map(|i| attrs((i % 250) as u8)).collect();
        let mut p = Pending::default();
        for i in 0..1000u32 {
            p.announce(v4(i), &sets[(i / 2) as usize]);
        }
        p.withdraw(v4(5000));
        assert!(p.capacity() >= 1000);
        let mut n = 0;
        while let Some(b) = p.take(crate::speaker::writer::BULK_CHUNK) {
            n += decode_stream(&b.encode(&cxt())).0.len();
        }
        assert_eq!(n, 1001);
        assert_eq!(p.capacity(), 0);
        // And it fills and drains again as before.
        p.announce(v4(1), &sets[0]);
        assert_eq!(p.take(usize::MAX).map(|b| b.announce.len()), Some(1));
        assert_eq!(p.capacity(), 0);
    }
}
