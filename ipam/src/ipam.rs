//! IPAM operations on a [`Store`]: auto-assign, assign, release, block affinity, tunnel
//! address, `check`, `gc` and `show`. The write order and the invariants they keep are in
//! `ipam/DESIGN.md`; every write is a compare-and-swap retried a bounded number of times.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use reef_config::{
    AffinityState, AllocationAttributes, BlockAffinitySpec, IpPoolSpec, IpamBlockSpec,
    IpamConfigSpec, IpamHandleSpec, DEFAULT_NAME,
};

use crate::block::{self, Block, Violation};
use crate::store::{Kind, Labels, Store, StoreExt, Typed, NODE_LABEL};
use crate::{Assignment, Error, HandleId};

mod nodes;
pub use nodes::{GoneNodeProblem, NodeRelease, PodAllocation};

/// Attempts at one compare-and-swap write before giving up.
const MAX_ATTEMPTS: u32 = 64;
/// Most candidate blocks one claim looks at in a pool (keeps a full pool's scan bounded).
const MAX_CLAIM_SCAN: u128 = 1 << 20;
/// `purpose` attribute of tunnel addresses.
pub const TUNNEL_PURPOSE: &str = "tunnel";

/// The store object name of a block.
pub fn block_name(cidr: &IpNetwork) -> String {
    cidr.to_string().replace(['.', ':', '/'], "-")
}

/// The store object name of a node's affinity to a block.
pub fn affinity_name(node: &str, cidr: &IpNetwork) -> String {
    format!("{node}.{}", block_name(cidr))
}

/// The store object name of a handle: Kubernetes names allow lower-case letters, digits, '-'
/// and '.'; anything else (or a long id) gets a hash suffix so names stay unique.
pub fn handle_name(handle: &HandleId) -> String {
    let clean: String = handle
        .0
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '.' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let plain = clean == handle.0
        && clean.len() <= 253
        && clean.starts_with(|c: char| c.is_ascii_alphanumeric())
        && clean.ends_with(|c: char| c.is_ascii_alphanumeric());
    if plain {
        return clean;
    }
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in handle.0.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let stem: String = clean.trim_matches(['-', '.']).chars().take(200).collect();
    format!(
        "{}{}h{h:016x}",
        stem,
        if stem.is_empty() { "" } else { "-" }
    )
}

/// Label on blocks saying whether they have a free address ("true" / "false"), so a node
/// finds a block to allocate from with one list instead of reading each of its blocks.
pub const FREE_LABEL: &str = "reef.dev/has-free";

/// Label (`"true"`) on blocks holding an address allocated to a node other than the block's
/// affine node: what each agent needs of other nodes' blocks (see `with_block_labels`).
pub const LENT_LABEL: &str = "reef.dev/lent";

/// A block object with its index labels (owner node, has-free) set from its spec; every
/// block write goes through here so the labels never disagree with the spec.
fn with_block_labels(mut t: Typed<IpamBlockSpec>) -> Typed<IpamBlockSpec> {
    t.labels.remove(NODE_LABEL);
    if let Some(n) = &t.spec.affinity {
        t.labels.insert(NODE_LABEL.to_string(), n.clone());
    }
    let free = if t.spec.unallocated.is_empty() {
        "false"
    } else {
        "true"
    };
    t.labels.insert(FREE_LABEL.to_string(), free.to_string());
    // Lent: some address is held by a node other than the block's (borrowed, or left in a
    // released block). Every agent follows these blocks (their /32s are other nodes' routes)
    // besides its own, and no one else's: another node's pod start costs it nothing.
    let lent = t.spec.allocations.iter().any(|a| {
        a.attributes
            .node
            .as_ref()
            .is_some_and(|n| Some(n) != t.spec.affinity.as_ref())
    });
    if lent {
        t.labels.insert(LENT_LABEL.to_string(), "true".to_string());
    } else {
        t.labels.remove(LENT_LABEL);
    }
    t
}

/// A block read from the store, checked before use: a value broken outside reef (an edited
/// resource, a damaged store) gives an error naming the block and what is wrong in it, never
/// a panic, nor a write that spreads the damage.
fn checked_block(t: Typed<IpamBlockSpec>) -> Result<Typed<IpamBlockSpec>, Error> {
    let b = Block::from_spec(t.spec);
    let violations = b.check();
    if !violations.is_empty() {
        return Err(IpamError::BrokenBlock {
            cidr: b.spec.cidr,
            violations,
        }
        .into());
    }
    Ok(Typed { spec: b.spec, ..t })
}

fn node_labels(node: &str) -> Labels {
    Labels::from([(NODE_LABEL.to_string(), node.to_string())])
}

fn family(v4: bool) -> &'static str {
    if v4 {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// What [`Ipam`] operations fail with beyond store errors.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no enabled {family} pool selects node {node}{}", if *.restricted { " among the requested pools" } else { "" })]
    NoPool {
        family: &'static str,
        node: String,
        restricted: bool,
    },
    #[error("{family} pools are exhausted for node {node}: wanted {wanted}, found {found} (strictAffinity={strict}, maxBlocksPerHost={max_blocks})")]
    Exhausted {
        family: &'static str,
        node: String,
        wanted: usize,
        found: usize,
        strict: bool,
        max_blocks: u32,
    },
    #[error("{addr} is in no pool")]
    NotInPool { addr: IpAddr },
    #[error("{addr} is already allocated to handle {handle}")]
    InUse { addr: IpAddr, handle: String },
    #[error("block {cidr} is affine to {owner}, not {node}, and strictAffinity forbids borrowing")]
    NotAffine {
        cidr: IpNetwork,
        owner: String,
        node: String,
    },
    #[error("block {cidr} still holds {in_use} addresses")]
    BlockNotEmpty { cidr: IpNetwork, in_use: u32 },
    #[error("block {cidr} is broken: {}", violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; "))]
    BrokenBlock {
        cidr: IpNetwork,
        violations: Vec<Violation>,
    },
    #[error("invalid pool {name}: {source}")]
    InvalidPool {
        name: String,
        source: reef_config::Error,
    },
}

impl From<IpamError> for Error {
    fn from(e: IpamError) -> Self {
        Error::Ipam(Box::new(e))
    }
}

/// A request for addresses.
#[derive(Debug, Clone, Default)]
pub struct AutoAssignArgs {
    pub handle: HandleId,
    pub num_v4: usize,
    pub num_v6: usize,
    /// The node the addresses are for (its blocks are tried first).
    pub node: String,
    /// The node's labels, matched against pools' node selectors.
    pub node_labels: Labels,
    /// Pod namespace / name and the like; `node` and `allocated_at` are filled in.
    pub attributes: AllocationAttributes,
    /// Use only these pools (empty: every pool that selects the node).
    pub pools: Vec<IpNetwork>,
    /// Leave out each block's first and (IPv4) last address ([`Block::is_prefix_reserved`]):
    /// for callers that give the pod its block's prefix length (reef-ipam behind bridge or
    /// ptp), where those are the network and broadcast addresses.
    pub avoid_block_ends: bool,
}

/// What [`Ipam::auto_assign`] handed out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoAssigned {
    pub v4: Vec<Assignment>,
    pub v6: Vec<Assignment>,
}

/// One thing `check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    BrokenBlock {
        cidr: IpNetwork,
        violations: Vec<Violation>,
    },
    /// The same address allocated in two blocks (overlapping blocks).
    Duplicate {
        addr: IpAddr,
    },
    BlockOutsidePools {
        cidr: IpNetwork,
    },
    /// An allocation no handle accounts for, or whose owner is not live: freed by `gc` once
    /// older than the grace period, if its sequence number is unchanged.
    Leaked {
        addr: IpAddr,
        block: IpNetwork,
        handle: String,
        sequence: u64,
        allocated_at: u64,
    },
    /// A handle record counting more addresses in a block than the block holds.
    HandleCountTooHigh {
        handle: String,
        block: String,
        recorded: u32,
        actual: u32,
    },
    /// A handle record that accounts for no address at all.
    HandleWithoutAddresses {
        handle: String,
    },
    /// A block affine to a node with no confirmed affinity record.
    BlockWithoutAffinity {
        cidr: IpNetwork,
        node: String,
    },
    /// An affinity record whose block is missing or belongs to another node.
    AffinityWithoutBlock {
        node: String,
        cidr: IpNetwork,
        state: AffinityState,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::BrokenBlock { cidr, violations } => {
                write!(f, "broken block {cidr}: ")?;
                let v: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
                f.write_str(&v.join("; "))
            }
            Problem::Duplicate { addr } => write!(f, "duplicate allocation of {addr}"),
            Problem::BlockOutsidePools { cidr } => write!(f, "block {cidr} is outside every pool"),
            Problem::Leaked { addr, block, handle, sequence, allocated_at } => write!(
                f,
                "leaked {addr} in {block} (handle {handle}, sequence {sequence}, allocated at {allocated_at})"
            ),
            Problem::HandleCountTooHigh { handle, block, recorded, actual } => write!(
                f,
                "handle {handle} records {recorded} addresses in {block}, the block holds {actual}"
            ),
            Problem::HandleWithoutAddresses { handle } => {
                write!(f, "handle {handle} holds no address")
            }
            Problem::BlockWithoutAffinity { cidr, node } => {
                write!(f, "block {cidr} is affine to {node} without a confirmed affinity")
            }
            Problem::AffinityWithoutBlock { node, cidr, state } => {
                write!(f, "{state:?} affinity of {node} to {cidr} has no block of that node")
            }
        }
    }
}

/// The outcome of `check`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub problems: Vec<Problem>,
    pub blocks: usize,
    pub allocations: usize,
    pub handles: usize,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn leaks(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| matches!(p, Problem::Leaked { .. }))
    }
}

/// The outcome of `gc`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Leaked addresses freed.
    pub released: Vec<IpAddr>,
    /// Leaks left alone: younger than the grace period, or reused since `check` saw them.
    pub kept: usize,
    /// Handle records rewritten (or deleted) to match the blocks.
    pub handles_fixed: Vec<String>,
    /// Affinities of interrupted claims, confirmed or removed: (node, block).
    pub affinities_fixed: Vec<(String, IpNetwork)>,
}

/// Utilisation of one block, for `show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockUsage {
    pub cidr: IpNetwork,
    pub affinity: Option<String>,
    pub size: u32,
    pub in_use: u32,
    /// Addresses allocated for a node other than the block's (address, node).
    pub borrowed: Vec<(IpAddr, String)>,
}

/// Utilisation of one pool, for `show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    pub name: String,
    pub cidr: IpNetwork,
    pub disabled: bool,
    pub size: u128,
    pub in_use: u64,
    pub blocks: Vec<BlockUsage>,
}

/// Reads the time, in seconds since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

fn system_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Block IPAM on a store.
pub struct Ipam<S> {
    store: S,
    clock: Clock,
}

impl<S: fmt::Debug> fmt::Debug for Ipam<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ipam")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Ipam<S> {
    pub fn new(store: S) -> Self {
        Ipam {
            store,
            clock: Arc::new(system_clock),
        }
    }

    /// With a clock of the caller's (tests move time for `gc`).
    pub fn with_clock(store: S, clock: Clock) -> Self {
        Ipam { store, clock }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    // -----------------------------------------------------------------------------------
    // configuration

    /// The IPAMConfig in force (defaults when none is stored).
    pub fn config(&self) -> Result<IpamConfigSpec, Error> {
        Ok(self
            .store
            .get_typed::<IpamConfigSpec>(DEFAULT_NAME)?
            .map(|t| t.spec)
            .unwrap_or_default())
    }

    /// Stores the IPAMConfig.
    pub fn set_config(&self, spec: IpamConfigSpec) -> Result<(), Error> {
        self.retry("set IPAMConfig", || {
            match self.store.get_typed::<IpamConfigSpec>(DEFAULT_NAME)? {
                None => self
                    .store
                    .create_typed(&Typed::new(DEFAULT_NAME, spec.clone()))
                    .map(|_| ()),
                Some(mut t) => {
                    t.spec = spec.clone();
                    self.store.update_typed(&t).map(|_| ())
                }
            }
        })
    }

    /// Creates or replaces pool `name` after validating it.
    pub fn put_pool(&self, name: &str, spec: IpPoolSpec) -> Result<(), Error> {
        spec.validate().map_err(|source| IpamError::InvalidPool {
            name: name.to_string(),
            source,
        })?;
        self.retry("put IPPool", || {
            match self.store.get_typed::<IpPoolSpec>(name)? {
                None => self
                    .store
                    .create_typed(&Typed::new(name, spec.clone()))
                    .map(|_| ()),
                Some(mut t) => {
                    t.spec = spec.clone();
                    self.store.update_typed(&t).map(|_| ())
                }
            }
        })
    }

    /// Runs `f` until it does not conflict, at most [`MAX_ATTEMPTS`] times.
    fn retry<T>(&self, what: &str, mut f: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
        for _ in 0..MAX_ATTEMPTS {
            match f() {
                Err(Error::Conflict { .. }) | Err(Error::AlreadyExists { .. }) => continue,
                other => return other,
            }
        }
        Err(Error::TooManyConflicts {
            what: what.to_string(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// The block `name`, checked ([`checked_block`]).
    fn get_block(&self, name: &str) -> Result<Option<Typed<IpamBlockSpec>>, Error> {
        self.store
            .get_typed::<IpamBlockSpec>(name)?
            .map(checked_block)
            .transpose()
    }

    fn pools(&self) -> Result<Vec<Typed<IpPoolSpec>>, Error> {
        self.store.list_typed(&Labels::new())
    }

    /// Enabled pools of a family that select the node, in name order.
    fn usable_pools(&self, v4: bool, args: &AutoAssignArgs) -> Result<Vec<IpPoolSpec>, Error> {
        Ok(self
            .pools()?
            .into_iter()
            .map(|t| t.spec)
            .filter(|p| p.cidr.is_ipv4() == v4 && !p.disabled)
            .filter(|p| p.selects_node(&args.node_labels))
            .filter(|p| args.pools.is_empty() || args.pools.contains(&p.cidr))
            .collect())
    }

    // -----------------------------------------------------------------------------------
    // allocation

    /// Hands out `num_v4` IPv4 and `num_v6` IPv6 addresses to `args.handle` on `args.node`.
    /// All or nothing: if a family cannot be satisfied, what was taken is given back.
    pub fn auto_assign(&self, args: &AutoAssignArgs) -> Result<AutoAssigned, Error> {
        let cfg = self.config()?;
        let mut attrs = args.attributes.clone();
        attrs.node = Some(args.node.clone());
        attrs.allocated_at = (self.clock)();
        let v4 = self.assign_family(true, args.num_v4, args, &attrs, &cfg)?;
        let v6 = match self.assign_family(false, args.num_v6, args, &attrs, &cfg) {
            Ok(v6) => v6,
            Err(e) => {
                let taken: Vec<IpAddr> = v4.iter().map(|a| a.address).collect();
                self.release_addresses(&taken)?;
                return Err(e);
            }
        };
        Ok(AutoAssigned { v4, v6 })
    }

    fn assign_family(
        &self,
        v4: bool,
        want: usize,
        args: &AutoAssignArgs,
        attrs: &AllocationAttributes,
        cfg: &IpamConfigSpec,
    ) -> Result<Vec<Assignment>, Error> {
        if want == 0 {
            return Ok(Vec::new());
        }
        let pools = self.usable_pools(v4, args)?;
        if pools.is_empty() {
            return Err(IpamError::NoPool {
                family: family(v4),
                node: args.node.clone(),
                restricted: !args.pools.is_empty(),
            }
            .into());
        }
        let in_pools = |c: &IpNetwork| pools.iter().any(|p| p.cidr.contains(c.network()));
        let mut got: Vec<Assignment> = Vec::new();

        // 1. Blocks affine to the node that have a free address: one indexed list.
        let mut sel = node_labels(&args.node);
        sel.insert(FREE_LABEL.to_string(), "true".to_string());
        let affine = self
            .store
            .list_typed::<IpamBlockSpec>(&sel)?
            .into_iter()
            .filter(|b| b.spec.affinity.as_deref() == Some(args.node.as_str()))
            .filter(|b| b.spec.cidr.is_ipv4() == v4 && in_pools(&b.spec.cidr));
        for block in affine {
            let need = want - got.len();
            let cidr = block.spec.cidr;
            // The listed block is the first attempt's read (no second read of the same row);
            // a conflict re-reads it.
            got.extend(self.take_from_block(
                &cidr,
                need,
                args,
                attrs,
                Some(&args.node),
                Some(block),
            )?);
            if got.len() == want {
                return Ok(got);
            }
        }
        // Counted only when a claim is considered (rare): every confirmed affinity.
        let mut affine_count: Option<u32> = None;

        // 2. New blocks, claimed for the node.
        while got.len() < want && cfg.auto_allocate_blocks {
            if cfg.max_blocks_per_host > 0 {
                let count = match affine_count {
                    Some(c) => c,
                    None => self
                        .store
                        .list_typed::<BlockAffinitySpec>(&node_labels(&args.node))?
                        .iter()
                        .filter(|a| a.spec.node == args.node && a.spec.cidr.is_ipv4() == v4)
                        .filter(|a| a.spec.state == AffinityState::Confirmed)
                        .count() as u32,
                };
                if count >= cfg.max_blocks_per_host {
                    break;
                }
                affine_count = Some(count);
            }
            let Some(cidr) = self.claim_block(&pools, &args.node)? else {
                break;
            };
            affine_count = affine_count.map(|c| c + 1);
            let need = want - got.len();
            got.extend(self.take_from_block(&cidr, need, args, attrs, Some(&args.node), None)?);
        }

        // 3. Borrow from other nodes' blocks, last resort.
        if got.len() < want && !cfg.strict_affinity {
            let blocks = self.store.list_typed::<IpamBlockSpec>(&Labels::new())?;
            for b in blocks {
                let c = b.spec.cidr;
                if c.is_ipv4() != v4 || !in_pools(&c) || b.spec.unallocated.is_empty() {
                    continue;
                }
                let need = want - got.len();
                got.extend(self.take_from_block(&c, need, args, attrs, None, Some(b))?);
                if got.len() == want {
                    break;
                }
            }
        }

        if got.len() < want {
            let found = got.len();
            let taken: Vec<IpAddr> = got.iter().map(|a| a.address).collect();
            self.release_addresses(&taken)?;
            return Err(IpamError::Exhausted {
                family: family(v4),
                node: args.node.clone(),
                wanted: want,
                found,
                strict: cfg.strict_affinity,
                max_blocks: cfg.max_blocks_per_host,
            }
            .into());
        }
        Ok(got)
    }

    /// Takes up to `n` addresses from block `cidr` (write 1: the block), then records them
    /// under the handle (write 2). With `owner`, only while the block is still that node's.
    /// `read` is the block as the caller just listed it (saves reading it again); a conflict
    /// re-reads it from the store.
    fn take_from_block(
        &self,
        cidr: &IpNetwork,
        n: usize,
        args: &AutoAssignArgs,
        attrs: &AllocationAttributes,
        owner: Option<&str>,
        read: Option<Typed<IpamBlockSpec>>,
    ) -> Result<Vec<Assignment>, Error> {
        let handle = &args.handle;
        let name = block_name(cidr);
        let mut read = read;
        let written = self.retry(&format!("allocate from block {cidr}"), || {
            let t = match read.take() {
                Some(t) => t,
                None => match self.store.get_typed::<IpamBlockSpec>(&name)? {
                    Some(t) => t,
                    None => return Ok(None),
                },
            };
            if owner.is_some_and(|o| t.spec.affinity.as_deref() != Some(o)) {
                return Ok(None);
            }
            let mut b = Block::from_spec(t.spec);
            let violations = b.check();
            if !violations.is_empty() {
                return Err(IpamError::BrokenBlock {
                    cidr: *cidr,
                    violations,
                }
                .into());
            }
            let addrs = b.allocate_where(n, handle, attrs, |o| {
                !args.avoid_block_ends || !block::prefix_reserved(cidr, o)
            });
            if addrs.is_empty() {
                return Ok(None);
            }
            let upd = with_block_labels(Typed { spec: b.spec, ..t });
            self.store.update_typed(&upd)?;
            Ok(Some((addrs, Block::from_spec(upd.spec))))
        })?;
        let Some((addrs, b)) = written else {
            return Ok(Vec::new());
        };
        let count = b
            .handle_counts()
            .get(handle.0.as_str())
            .copied()
            .unwrap_or(0);
        self.set_handle_count(handle, cidr, count)?;
        Ok(addrs
            .into_iter()
            .map(|address| Assignment {
                address,
                block: *cidr,
            })
            .collect())
    }

    /// Records that `handle` holds `count` addresses in block `cidr` (0: none). Setting rather
    /// than adding makes a retried or repeated write harmless.
    fn set_handle_count(
        &self,
        handle: &HandleId,
        cidr: &IpNetwork,
        count: u32,
    ) -> Result<(), Error> {
        let name = handle_name(handle);
        let key = cidr.to_string();
        self.retry(&format!("record handle {handle}"), || match self
            .store
            .get_typed::<IpamHandleSpec>(&name)?
        {
            None if count == 0 => Ok(()),
            None => {
                let spec = IpamHandleSpec {
                    handle_id: handle.0.clone(),
                    blocks: BTreeMap::from([(key.clone(), count)]),
                };
                self.store
                    .create_typed(&Typed::new(name.clone(), spec))
                    .map(|_| ())
            }
            Some(mut t) => {
                let before = t.spec.blocks.clone();
                if count == 0 {
                    t.spec.blocks.remove(&key);
                } else {
                    t.spec.blocks.insert(key.clone(), count);
                }
                if t.spec.blocks.is_empty() {
                    match self.store.delete_typed(&t) {
                        Err(Error::NotFound { .. }) => Ok(()),
                        other => other,
                    }
                } else if t.spec.blocks == before {
                    Ok(())
                } else {
                    self.store.update_typed(&t).map(|_| ())
                }
            }
        })
    }

    /// Claims a free block of one of `pools` for `node` (two-phase: pending affinity, block,
    /// confirmed affinity). `None` when every block of the pools exists.
    fn claim_block(&self, pools: &[IpPoolSpec], node: &str) -> Result<Option<IpNetwork>, Error> {
        // Finish a claim this node started and did not confirm (it crashed, or lost a race).
        for a in self
            .store
            .list_typed::<BlockAffinitySpec>(&node_labels(node))?
        {
            if a.spec.state != AffinityState::Pending
                || !pools.iter().any(|p| p.cidr.contains(a.spec.cidr.network()))
            {
                continue;
            }
            match self
                .store
                .get_typed::<IpamBlockSpec>(&block_name(&a.spec.cidr))?
            {
                Some(b) if b.spec.affinity.as_deref() == Some(node) => {
                    self.set_affinity_state(node, &a.spec.cidr, AffinityState::Confirmed)?;
                    return Ok(Some(a.spec.cidr));
                }
                Some(_) => self.delete_affinity(node, &a.spec.cidr)?,
                None => {
                    if let Some(c) = self.try_claim(node, a.spec.cidr)? {
                        return Ok(Some(c));
                    }
                }
            }
        }
        // Names only: decoding every block of a full pool made claims slow.
        let mut existing: HashSet<String> =
            self.store.names(Kind::IpamBlock)?.into_iter().collect();
        // Start each node at its own place in the pool so nodes rarely race for one block.
        let seed = handle_name(&HandleId(format!("#{node}")));
        let seed = u128::from_str_radix(&seed[seed.len() - 16..], 16).unwrap_or(0);
        for pool in pools {
            let bs = pool.effective_block_size();
            let count = block::block_count(&pool.cidr, bs);
            let start = seed % count;
            for i in 0..count.min(MAX_CLAIM_SCAN) {
                let idx = (start + i) % count;
                let Some(cidr) = block::nth_block(&pool.cidr, bs, idx) else {
                    continue;
                };
                let name = block_name(&cidr);
                if existing.contains(&name) {
                    continue;
                }
                if let Some(c) = self.try_claim(node, cidr)? {
                    return Ok(Some(c));
                }
                existing.insert(name);
            }
        }
        Ok(None)
    }

    /// One claim attempt on `cidr`; `None` when another node owns it.
    fn try_claim(&self, node: &str, cidr: IpNetwork) -> Result<Option<IpNetwork>, Error> {
        let aff = Typed::new(
            affinity_name(node, &cidr),
            BlockAffinitySpec {
                node: node.to_string(),
                cidr,
                state: AffinityState::Pending,
            },
        )
        .with_label(NODE_LABEL, node);
        match self.store.create_typed(&aff) {
            Ok(_) | Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        let blk = Block::new(cidr, Some(node.to_string())).map_err(|v| IpamError::BrokenBlock {
            cidr,
            violations: vec![v],
        })?;
        let won = match self
            .store
            .create_typed(&with_block_labels(Typed::new(block_name(&cidr), blk.spec)))
        {
            Ok(_) => true,
            Err(Error::AlreadyExists { .. }) => self
                .store
                .get_typed::<IpamBlockSpec>(&block_name(&cidr))?
                .is_some_and(|b| b.spec.affinity.as_deref() == Some(node)),
            Err(e) => return Err(e),
        };
        if won {
            self.set_affinity_state(node, &cidr, AffinityState::Confirmed)?;
            Ok(Some(cidr))
        } else {
            self.delete_affinity(node, &cidr)?;
            Ok(None)
        }
    }

    fn set_affinity_state(
        &self,
        node: &str,
        cidr: &IpNetwork,
        state: AffinityState,
    ) -> Result<(), Error> {
        let name = affinity_name(node, cidr);
        self.retry(&format!("set affinity {name}"), || match self
            .store
            .get_typed::<BlockAffinitySpec>(&name)?
        {
            Some(mut a) if a.spec.state != state => {
                a.spec.state = state;
                self.store.update_typed(&a).map(|_| ())
            }
            Some(_) => Ok(()),
            None => {
                let spec = BlockAffinitySpec {
                    node: node.to_string(),
                    cidr: *cidr,
                    state,
                };
                self.store
                    .create_typed(&Typed::new(name.clone(), spec).with_label(NODE_LABEL, node))
                    .map(|_| ())
            }
        })
    }

    fn delete_affinity(&self, node: &str, cidr: &IpNetwork) -> Result<(), Error> {
        match self
            .store
            .delete(crate::Kind::BlockAffinity, &affinity_name(node, cidr), None)
        {
            Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Gives `addr` to `handle`. The block is created (affine to `node`) if it does not
    /// exist yet; with strictAffinity, only addresses of the node's own blocks.
    pub fn assign_ip(
        &self,
        addr: IpAddr,
        handle: &HandleId,
        attributes: &AllocationAttributes,
        node: &str,
    ) -> Result<Assignment, Error> {
        let pool = self
            .pools()?
            .into_iter()
            .map(|t| t.spec)
            .find(|p| p.cidr.contains(addr) && p.cidr.is_ipv4() == addr.is_ipv4())
            .ok_or(IpamError::NotInPool { addr })?;
        let cidr = block::block_of(addr, pool.effective_block_size())
            .ok_or(IpamError::NotInPool { addr })?;
        let cfg = self.config()?;
        let mut attrs = attributes.clone();
        attrs.node = Some(node.to_string());
        attrs.allocated_at = (self.clock)();
        let name = block_name(&cidr);
        let b = self.retry(&format!("assign {addr}"), || {
            let t = match self.get_block(&name)? {
                Some(t) => t,
                None => {
                    // Claim it for the node; if another node won, read theirs.
                    self.try_claim(node, cidr)?;
                    return Err(Error::Conflict {
                        kind: crate::Kind::IpamBlock,
                        name: name.clone(),
                    });
                }
            };
            if let Some(owner) = t.spec.affinity.as_deref().filter(|o| *o != node) {
                if cfg.strict_affinity {
                    return Err(IpamError::NotAffine {
                        cidr,
                        owner: owner.to_string(),
                        node: node.to_string(),
                    }
                    .into());
                }
            }
            let mut b = Block::from_spec(t.spec);
            b.assign(addr, handle, &attrs).map_err(|e| match e {
                block::AssignError::InUse { addr, handle } => IpamError::InUse { addr, handle },
                block::AssignError::NotInBlock { addr, .. } => IpamError::NotInPool { addr },
            })?;
            let upd = with_block_labels(Typed { spec: b.spec, ..t });
            self.store.update_typed(&upd)?;
            Ok(Block::from_spec(upd.spec))
        })?;
        let count = b
            .handle_counts()
            .get(handle.0.as_str())
            .copied()
            .unwrap_or(0);
        self.set_handle_count(handle, &cidr, count)?;
        Ok(Assignment {
            address: addr,
            block: cidr,
        })
    }

    // -----------------------------------------------------------------------------------
    // release

    /// Frees every address of `handle`. Idempotent: an unknown handle is success (nothing
    /// freed). Returns the freed addresses.
    pub fn release_by_handle(&self, handle: &HandleId) -> Result<Vec<IpAddr>, Error> {
        let name = handle_name(handle);
        let Some(h) = self.store.get_typed::<IpamHandleSpec>(&name)? else {
            return Ok(Vec::new());
        };
        let mut freed = Vec::new();
        for key in h.spec.blocks.keys() {
            let Ok(cidr) = key.parse::<IpNetwork>() else {
                continue;
            };
            let bname = block_name(&cidr);
            let got = self.retry(&format!("release {handle} from {cidr}"), || {
                let Some(t) = self.get_block(&bname)? else {
                    return Ok(Vec::new());
                };
                let mut b = Block::from_spec(t.spec);
                let addrs = b.release_handle(handle);
                if !addrs.is_empty() {
                    self.store
                        .update_typed(&with_block_labels(Typed { spec: b.spec, ..t }))?;
                }
                Ok(addrs)
            })?;
            freed.extend(got);
        }
        match self.store.delete_typed(&h) {
            Ok(()) | Err(Error::NotFound { .. }) => {}
            // Changed meanwhile (a concurrent assign under the same handle): keep what it
            // recorded, minus the blocks we emptied.
            Err(Error::Conflict { .. }) => {
                for key in h.spec.blocks.keys() {
                    if let Ok(cidr) = key.parse::<IpNetwork>() {
                        let left = self
                            .store
                            .get_typed::<IpamBlockSpec>(&block_name(&cidr))?
                            .map(|t| {
                                t.spec
                                    .allocations
                                    .iter()
                                    .filter(|a| a.handle_id == handle.0)
                                    .count() as u32
                            })
                            .unwrap_or(0);
                        self.set_handle_count(handle, &cidr, left)?;
                    }
                }
            }
            Err(e) => return Err(e),
        }
        Ok(freed)
    }

    /// Frees `addrs` whoever holds them; returns those that were allocated.
    pub fn release_addresses(&self, addrs: &[IpAddr]) -> Result<Vec<IpAddr>, Error> {
        if addrs.is_empty() {
            return Ok(Vec::new());
        }
        let blocks = self.store.list_typed::<IpamBlockSpec>(&Labels::new())?;
        let mut by_block: BTreeMap<IpNetwork, Vec<IpAddr>> = BTreeMap::new();
        for &a in addrs {
            if let Some(b) = blocks
                .iter()
                .find(|b| b.spec.cidr.contains(a) && b.spec.cidr.is_ipv4() == a.is_ipv4())
            {
                by_block.entry(b.spec.cidr).or_default().push(a);
            }
        }
        let mut freed = Vec::new();
        for (cidr, list) in by_block {
            let bname = block_name(&cidr);
            let (gone, b) = self.retry(&format!("release from {cidr}"), || {
                let Some(t) = self.get_block(&bname)? else {
                    return Ok((Vec::new(), None));
                };
                let mut b = Block::from_spec(t.spec);
                let gone = b.release(&list);
                if gone.is_empty() {
                    return Ok((gone, None));
                }
                let upd = with_block_labels(Typed { spec: b.spec, ..t });
                self.store.update_typed(&upd)?;
                Ok((gone, Some(Block::from_spec(upd.spec))))
            })?;
            let Some(b) = b else { continue };
            let handles: BTreeSet<String> = gone.iter().map(|a| a.handle_id.clone()).collect();
            let counts = b.handle_counts();
            for h in handles {
                let c = counts.get(h.as_str()).copied().unwrap_or(0);
                self.set_handle_count(&HandleId(h), &cidr, c)?;
            }
            freed.extend(gone.iter().map(|a| b.address(a.ordinal)));
        }
        Ok(freed)
    }

    /// The addresses `handle` holds.
    pub fn addresses_of(&self, handle: &HandleId) -> Result<Vec<Assignment>, Error> {
        let Some(h) = self
            .store
            .get_typed::<IpamHandleSpec>(&handle_name(handle))?
        else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for key in h.spec.blocks.keys() {
            let Ok(cidr) = key.parse::<IpNetwork>() else {
                continue;
            };
            if let Some(t) = self.get_block(&block_name(&cidr))? {
                let b = Block::from_spec(t.spec);
                out.extend(
                    b.addresses_of(handle)
                        .into_iter()
                        .map(|address| Assignment {
                            address,
                            block: cidr,
                        }),
                );
            }
        }
        Ok(out)
    }

    /// Gives up `node`'s affinity to the empty block `cidr` (and deletes the block).
    /// Succeeds when the node has no such affinity.
    pub fn release_block_affinity(&self, node: &str, cidr: &IpNetwork) -> Result<(), Error> {
        let aname = affinity_name(node, cidr);
        if self.store.get_typed::<BlockAffinitySpec>(&aname)?.is_none() {
            return Ok(());
        }
        let bname = block_name(cidr);
        self.retry(&format!("release block {cidr}"), || {
            let Some(t) = self.store.get_typed::<IpamBlockSpec>(&bname)? else {
                return Ok(());
            };
            if t.spec.affinity.as_deref() != Some(node) {
                return Ok(());
            }
            if !t.spec.allocations.is_empty() {
                return Err(IpamError::BlockNotEmpty {
                    cidr: *cidr,
                    in_use: t.spec.allocations.len() as u32,
                }
                .into());
            }
            self.set_affinity_state(node, cidr, AffinityState::PendingDeletion)?;
            // On the block's revision: an allocation since the read makes this conflict.
            match self.store.delete_typed(&t) {
                Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
                Err(e) => {
                    self.set_affinity_state(node, cidr, AffinityState::Confirmed)?;
                    Err(e)
                }
            }
        })?;
        self.delete_affinity(node, cidr)
    }

    /// Releases every empty block affine to `node`; returns them.
    pub fn release_empty_blocks(&self, node: &str) -> Result<Vec<IpNetwork>, Error> {
        let mut out = Vec::new();
        for a in self
            .store
            .list_typed::<BlockAffinitySpec>(&node_labels(node))?
        {
            let empty = self
                .store
                .get_typed::<IpamBlockSpec>(&block_name(&a.spec.cidr))?
                .is_none_or(|b| b.spec.allocations.is_empty());
            if empty {
                match self.release_block_affinity(node, &a.spec.cidr) {
                    Ok(()) => out.push(a.spec.cidr),
                    Err(Error::Ipam(e)) if matches!(*e, IpamError::BlockNotEmpty { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    /// The handle of a node's tunnel address.
    pub fn tunnel_handle(node: &str, v4: bool) -> HandleId {
        HandleId(format!(
            "reef-tunnel-{}.{node}",
            if v4 { "v4" } else { "v6" }
        ))
    }

    /// The node's tunnel address, allocated on first use under its own handle.
    pub fn ensure_tunnel_address(
        &self,
        node: &str,
        node_labels: &Labels,
        v4: bool,
    ) -> Result<IpAddr, Error> {
        let handle = Self::tunnel_handle(node, v4);
        if let Some(a) = self
            .addresses_of(&handle)?
            .into_iter()
            .find(|a| a.address.is_ipv4() == v4)
        {
            return Ok(a.address);
        }
        let args = AutoAssignArgs {
            handle,
            num_v4: usize::from(v4),
            num_v6: usize::from(!v4),
            node: node.to_string(),
            node_labels: node_labels.clone(),
            attributes: AllocationAttributes {
                purpose: Some(TUNNEL_PURPOSE.into()),
                ..Default::default()
            },
            pools: Vec::new(),
            avoid_block_ends: false,
        };
        let got = self.auto_assign(&args)?;
        Ok(got
            .v4
            .into_iter()
            .chain(got.v6)
            .next()
            .expect("auto_assign returned what was asked")
            .address)
    }

    /// Every handle that holds addresses (for CNI GC: release those whose attachment is
    /// gone).
    pub fn handles(&self) -> Result<Vec<HandleId>, Error> {
        Ok(self
            .store
            .list_typed::<IpamHandleSpec>(&Labels::new())?
            .into_iter()
            .map(|t| HandleId(t.spec.handle_id))
            .collect())
    }

    /// Blocks affine to `node` (confirmed), for the agent's BGP export and blackhole routes.
    pub fn blocks_for_node(&self, node: &str) -> Result<Vec<IpNetwork>, Error> {
        let mut v: Vec<IpNetwork> = self
            .store
            .list_typed::<BlockAffinitySpec>(&node_labels(node))?
            .into_iter()
            .filter(|a| a.spec.node == node && a.spec.state == AffinityState::Confirmed)
            .map(|a| a.spec.cidr)
            .collect();
        v.sort();
        Ok(v)
    }

    // -----------------------------------------------------------------------------------
    // check, gc, show

    /// Checks every record against the others (see `ipam/DESIGN.md`). With `live`, an
    /// allocation whose handle is not in it is a leak too (its owner is gone); tunnel
    /// addresses are never judged by `live`.
    pub fn check(&self, live: Option<&HashSet<HandleId>>) -> Result<CheckReport, Error> {
        let pools = self.pools()?;
        let blocks = self.store.list_typed::<IpamBlockSpec>(&Labels::new())?;
        let affinities = self.store.list_typed::<BlockAffinitySpec>(&Labels::new())?;
        let handles = self.store.list_typed::<IpamHandleSpec>(&Labels::new())?;
        let mut r = CheckReport {
            blocks: blocks.len(),
            handles: handles.len(),
            ..Default::default()
        };
        let recorded: HashMap<&str, &IpamHandleSpec> = handles
            .iter()
            .map(|h| (h.spec.handle_id.as_str(), &h.spec))
            .collect();
        let confirmed: HashSet<(&str, IpNetwork)> = affinities
            .iter()
            .filter(|a| a.spec.state == AffinityState::Confirmed)
            .map(|a| (a.spec.node.as_str(), a.spec.cidr))
            .collect();
        let mut seen: HashSet<IpAddr> = HashSet::new();
        // handle -> block cidr string -> addresses in that block
        let mut actual: HashMap<String, HashMap<String, u32>> = HashMap::new();
        for t in &blocks {
            let b = Block::from_spec(t.spec.clone());
            let cidr = b.cidr();
            let violations = b.check();
            if !violations.is_empty() {
                r.problems.push(Problem::BrokenBlock { cidr, violations });
                continue;
            }
            if !pools.iter().any(|p| {
                p.spec.cidr.is_ipv4() == cidr.is_ipv4() && p.spec.cidr.contains(cidr.network())
            }) {
                r.problems.push(Problem::BlockOutsidePools { cidr });
            }
            if let Some(node) = &b.spec.affinity {
                if !confirmed.contains(&(node.as_str(), cidr)) {
                    r.problems.push(Problem::BlockWithoutAffinity {
                        cidr,
                        node: node.clone(),
                    });
                }
            }
            let key = cidr.to_string();
            let mut per_handle: HashMap<&str, Vec<&reef_config::Allocation>> = HashMap::new();
            for a in &b.spec.allocations {
                r.allocations += 1;
                let addr = b.address(a.ordinal);
                if !seen.insert(addr) {
                    r.problems.push(Problem::Duplicate { addr });
                }
                per_handle.entry(a.handle_id.as_str()).or_default().push(a);
            }
            for (h, mut allocs) in per_handle {
                let n = allocs.len() as u32;
                *actual
                    .entry(h.to_string())
                    .or_default()
                    .entry(key.clone())
                    .or_default() += n;
                let rec = recorded
                    .get(h)
                    .and_then(|s| s.blocks.get(&key))
                    .copied()
                    .unwrap_or(0);
                let is_tunnel = allocs
                    .iter()
                    .all(|a| a.attributes.purpose.as_deref() == Some(TUNNEL_PURPOSE));
                let dead =
                    !is_tunnel && live.is_some_and(|l| !l.contains(&HandleId(h.to_string())));
                // Unaccounted allocations: the newest ones (the record predates them).
                allocs.sort_by_key(|a| a.sequence);
                let leaked = if dead {
                    allocs.len()
                } else {
                    n.saturating_sub(rec) as usize
                };
                for a in allocs.iter().rev().take(leaked) {
                    r.problems.push(Problem::Leaked {
                        addr: b.address(a.ordinal),
                        block: cidr,
                        handle: h.to_string(),
                        sequence: a.sequence,
                        allocated_at: a.attributes.allocated_at,
                    });
                }
            }
        }
        for a in &affinities {
            let ok = blocks.iter().any(|b| {
                b.spec.cidr == a.spec.cidr
                    && b.spec.affinity.as_deref() == Some(a.spec.node.as_str())
            });
            if !ok || a.spec.state != AffinityState::Confirmed {
                r.problems.push(Problem::AffinityWithoutBlock {
                    node: a.spec.node.clone(),
                    cidr: a.spec.cidr,
                    state: a.spec.state,
                });
            }
        }
        for h in &handles {
            let act = actual.get(&h.spec.handle_id);
            let mut total = 0;
            for (key, &rec) in &h.spec.blocks {
                let a = act.and_then(|m| m.get(key)).copied().unwrap_or(0);
                total += a;
                if rec > a {
                    r.problems.push(Problem::HandleCountTooHigh {
                        handle: h.spec.handle_id.clone(),
                        block: key.clone(),
                        recorded: rec,
                        actual: a,
                    });
                }
            }
            if total == 0 {
                r.problems.push(Problem::HandleWithoutAddresses {
                    handle: h.spec.handle_id.clone(),
                });
            }
        }
        Ok(r)
    }

    /// Frees leaked addresses older than `grace_secs` (each only if its sequence number is
    /// unchanged, so an address released and reused since the check is never freed) and
    /// rewrites handle records that count more than the blocks hold.
    pub fn gc(&self, grace_secs: u64, live: Option<&HashSet<HandleId>>) -> Result<GcReport, Error> {
        let report = self.check(live)?;
        let now = (self.clock)();
        let mut out = GcReport::default();
        let mut touched: BTreeMap<String, BTreeSet<IpNetwork>> = BTreeMap::new();
        for p in &report.problems {
            match p {
                Problem::Leaked {
                    addr,
                    block,
                    handle,
                    sequence,
                    allocated_at,
                } => {
                    if now.saturating_sub(*allocated_at) < grace_secs {
                        out.kept += 1;
                        continue;
                    }
                    let bname = block_name(block);
                    let freed = self.retry(&format!("gc {addr}"), || {
                        let Some(t) = self.get_block(&bname)? else {
                            return Ok(false);
                        };
                        let mut b = Block::from_spec(t.spec);
                        if !b.release_if_sequence(*addr, *sequence) {
                            return Ok(false);
                        }
                        self.store
                            .update_typed(&with_block_labels(Typed { spec: b.spec, ..t }))?;
                        Ok(true)
                    })?;
                    if freed {
                        out.released.push(*addr);
                        touched.entry(handle.clone()).or_default().insert(*block);
                    } else {
                        out.kept += 1;
                    }
                }
                Problem::HandleCountTooHigh { handle, block, .. } => {
                    if let Ok(c) = block.parse() {
                        touched.entry(handle.clone()).or_default().insert(c);
                    }
                }
                Problem::HandleWithoutAddresses { handle } => {
                    touched.entry(handle.clone()).or_default();
                }
                // An interrupted claim: the block exists for the node → confirm; otherwise
                // the claim lost or never got that far → drop the affinity. A claim still
                // running re-creates its affinity when it confirms.
                Problem::AffinityWithoutBlock { node, cidr, .. }
                | Problem::BlockWithoutAffinity { cidr, node } => {
                    let owner = self
                        .store
                        .get_typed::<IpamBlockSpec>(&block_name(cidr))?
                        .and_then(|b| b.spec.affinity);
                    if owner.as_deref() == Some(node.as_str()) {
                        self.set_affinity_state(node, cidr, AffinityState::Confirmed)?;
                    } else {
                        self.delete_affinity(node, cidr)?;
                    }
                    out.affinities_fixed.push((node.clone(), *cidr));
                }
                _ => {}
            }
        }
        for (handle, blocks) in touched {
            let h = HandleId(handle.clone());
            let mut blocks = blocks;
            if let Some(t) = self.store.get_typed::<IpamHandleSpec>(&handle_name(&h))? {
                blocks.extend(
                    t.spec
                        .blocks
                        .keys()
                        .filter_map(|k| k.parse::<IpNetwork>().ok()),
                );
            }
            let mut changed = false;
            for cidr in blocks {
                let n = self
                    .store
                    .get_typed::<IpamBlockSpec>(&block_name(&cidr))?
                    .map(|t| {
                        t.spec
                            .allocations
                            .iter()
                            .filter(|a| a.handle_id == handle)
                            .count() as u32
                    })
                    .unwrap_or(0);
                let before = self.store.get_typed::<IpamHandleSpec>(&handle_name(&h))?;
                let rec = before
                    .as_ref()
                    .and_then(|t| t.spec.blocks.get(&cidr.to_string()).copied());
                if rec != Some(n) && !(rec.is_none() && n == 0) {
                    self.set_handle_count(&h, &cidr, n)?;
                    changed = true;
                }
            }
            if let Some(t) = self.store.get_typed::<IpamHandleSpec>(&handle_name(&h))? {
                if t.spec.blocks.values().all(|&c| c == 0) {
                    match self.store.delete_typed(&t) {
                        Ok(()) | Err(Error::NotFound { .. }) | Err(Error::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                    changed = true;
                }
            }
            if changed {
                out.handles_fixed.push(handle);
            }
        }
        Ok(out)
    }

    /// Utilisation per pool and per block, with borrowed addresses.
    pub fn show(&self) -> Result<Vec<PoolUsage>, Error> {
        let blocks = self.store.list_typed::<IpamBlockSpec>(&Labels::new())?;
        let mut out = Vec::new();
        for p in self.pools()? {
            let mut u = PoolUsage {
                name: p.name.clone(),
                cidr: p.spec.cidr,
                disabled: p.spec.disabled,
                size: block::net_size(&p.spec.cidr),
                in_use: 0,
                blocks: Vec::new(),
            };
            for t in &blocks {
                let c = t.spec.cidr;
                if c.is_ipv4() != p.spec.cidr.is_ipv4() || !p.spec.cidr.contains(c.network()) {
                    continue;
                }
                let b = Block::from_spec(t.spec.clone());
                let borrowed = b
                    .spec
                    .allocations
                    .iter()
                    .filter_map(|a| {
                        let n = a.attributes.node.as_deref()?;
                        if b.spec.affinity.as_deref() == Some(n) {
                            return None;
                        }
                        // A broken block (`check` names it) may hold ordinals outside it.
                        let addr = block::nth_address(&b.spec.cidr, u128::from(a.ordinal))?;
                        Some((addr, n.to_string()))
                    })
                    .collect();
                u.in_use += b.spec.allocations.len() as u64;
                u.blocks.push(BlockUsage {
                    cidr: c,
                    affinity: b.spec.affinity.clone(),
                    size: b.size(),
                    in_use: b.spec.allocations.len() as u32,
                    borrowed,
                });
            }
            out.push(u);
        }
        Ok(out)
    }
}
