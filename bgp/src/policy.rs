//! Routing policy as data: prefix lists, AS-path and community matches, and ordered rules
//! with actions, read from YAML or JSON and checked by [`PolicySet::validate`] before use.
//!
//! ```yaml
//! prefix_lists:
//!   pods:
//!     - prefix: 10.244.0.0/16
//!       ge: 24
//!       le: 32
//! policies:
//!   from-tor:
//!     default: reject
//!     rules:
//!       - match:
//!           prefix_list: pods
//!           as_path: { originates_from: 65010, length: { max: 4 } }
//!           community: { any: ["65000:100"] }
//!         actions:
//!           - set_local_pref: 200
//!           - add_community: "65000:1"
//!           - accept
//! ```
//!
//! Rules are tried in order. A rule whose conditions all hold applies its actions in order;
//! `accept` or `reject` ends the evaluation, the other actions accumulate and evaluation goes
//! on with the next rule. When no rule ends it, `default` decides. Conditions always see the
//! route as received: an earlier rule's `add_community` does not change what a later rule
//! matches.
//!
//! The safe defaults reef applies on its own, whatever the user's policy says (see
//! [`crate::rib`]): export only prefixes the node originates, import from mesh peers only
//! prefixes inside the cluster's pools, and never accept or send a default route unless the
//! peer is configured to. The helpers for them live at the end of this file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::attrs::{AsSegment, PathAttributes};

/// RFC 1997 well-known communities.
pub const NO_EXPORT: u32 = 0xFFFF_FF01;
pub const NO_ADVERTISE: u32 = 0xFFFF_FF02;
pub const NO_EXPORT_SUBCONFED: u32 = 0xFFFF_FF03;

/// A policy or prefix list that cannot be used; `field` is the path to the offending value,
/// e.g. `policies.from-tor.rules[1].match.prefix_list`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PolicyError {
    pub field: String,
    pub problem: String,
}

impl PolicyError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A community (RFC 1997) written as `"ASN:value"`, as one of the well-known names
/// `no-export`, `no-advertise`, `no-export-subconfed`, or as a plain 32-bit number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Community(pub u32);

impl Community {
    /// Parses the textual forms described on the type.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "no-export" => return Ok(Self(NO_EXPORT)),
            "no-advertise" => return Ok(Self(NO_ADVERTISE)),
            "no-export-subconfed" => return Ok(Self(NO_EXPORT_SUBCONFED)),
            _ => {}
        }
        if let Some((hi, lo)) = s.split_once(':') {
            let part = |p: &str, what: &str| {
                p.parse::<u16>().map_err(|_| {
                    format!("community {s:?}: the {what} part must be a number from 0 to 65535")
                })
            };
            let hi = part(hi, "AS")?;
            let lo = part(lo, "value")?;
            return Ok(Self((u32::from(hi) << 16) | u32::from(lo)));
        }
        s.parse::<u32>().map(Self).map_err(|_| {
            format!("community {s:?}: write it as \"ASN:value\" (e.g. \"65000:100\"), a well-known name or a 32-bit number")
        })
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0 >> 16, self.0 & 0xFFFF)
    }
}

impl<'de> Deserialize<'de> for Community {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Community;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a community such as \"65000:100\", \"no-export\" or a 32-bit number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Community, E> {
                Community::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Community, E> {
                u32::try_from(v)
                    .map(Community)
                    .map_err(|_| E::custom(format!("community {v} does not fit in 32 bits")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Community, E> {
                u32::try_from(v)
                    .map(Community)
                    .map_err(|_| E::custom(format!("community {v} does not fit in 32 bits")))
            }
        }
        d.deserialize_any(V)
    }
}

/// One prefix-list entry. Without `ge`/`le` it matches exactly `prefix`; with them it matches
/// any prefix inside `prefix` whose length is in `[ge, le]` (`ge` defaults to the entry's
/// length, `le` to the family's maximum when only `ge` is given, else to the entry's length).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixMatch {
    pub prefix: IpNetwork,
    #[serde(default)]
    pub ge: Option<u8>,
    #[serde(default)]
    pub le: Option<u8>,
}

impl PrefixMatch {
    /// The range of lengths this entry accepts.
    fn lengths(&self) -> (u8, u8) {
        let len = self.prefix.prefix();
        let max = max_len(&self.prefix);
        match (self.ge, self.le) {
            (None, None) => (len, len),
            (Some(ge), None) => (ge, max),
            (None, Some(le)) => (len, le),
            (Some(ge), Some(le)) => (ge, le),
        }
    }

    /// Whether `candidate` is matched by this entry.
    pub fn matches(&self, candidate: &IpNetwork) -> bool {
        let (lo, hi) = self.lengths();
        let len = candidate.prefix();
        len >= lo && len <= hi && contains(&self.prefix, candidate)
    }

    fn validate(&self, field: &str) -> Result<(), PolicyError> {
        let len = self.prefix.prefix();
        let max = max_len(&self.prefix);
        if self.prefix.ip() != self.prefix.network() {
            return Err(PolicyError::new(
                format!("{field}.prefix"),
                format!(
                    "{} has host bits set; write the network address {}/{}",
                    self.prefix,
                    self.prefix.network(),
                    len
                ),
            ));
        }
        for (name, v) in [("ge", self.ge), ("le", self.le)] {
            if let Some(v) = v {
                if v < len || v > max {
                    return Err(PolicyError::new(
                        format!("{field}.{name}"),
                        format!("{v} must lie between the prefix length {len} and {max}"),
                    ));
                }
            }
        }
        if let (Some(ge), Some(le)) = (self.ge, self.le) {
            if ge > le {
                return Err(PolicyError::new(
                    format!("{field}.ge"),
                    format!("ge {ge} is greater than le {le}"),
                ));
            }
        }
        Ok(())
    }
}

/// An inclusive AS-path length range (path length as the decision process counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LengthRange {
    #[serde(default)]
    pub min: Option<u32>,
    #[serde(default)]
    pub max: Option<u32>,
}

/// AS-path conditions; all that are given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AsPathMatch {
    /// The path contains this AS anywhere (sequence, set or confederation segment).
    #[serde(default)]
    pub contains: Option<u32>,
    /// The route originates from this AS: the last AS of the path (or a member of a final
    /// AS_SET). A locally originated route (empty path) originates from no AS.
    #[serde(default)]
    pub originates_from: Option<u32>,
    #[serde(default)]
    pub length: Option<LengthRange>,
}

impl AsPathMatch {
    pub fn matches(&self, attrs: &PathAttributes) -> bool {
        if let Some(asn) = self.contains {
            let found = attrs
                .as_path
                .iter()
                .any(|seg| segment_asns(seg).iter().any(|a| a.0 == asn));
            if !found {
                return false;
            }
        }
        if let Some(asn) = self.originates_from {
            let origin = match attrs.as_path.last() {
                Some(AsSegment::Sequence(v)) => v.last().is_some_and(|a| a.0 == asn),
                Some(AsSegment::Set(v)) => v.iter().any(|a| a.0 == asn),
                _ => false,
            };
            if !origin {
                return false;
            }
        }
        if let Some(range) = self.length {
            let len = attrs.as_path_len() as u64;
            if range.min.is_some_and(|m| len < u64::from(m))
                || range.max.is_some_and(|m| len > u64::from(m))
            {
                return false;
            }
        }
        true
    }
}

fn segment_asns(seg: &AsSegment) -> &[crate::Asn] {
    match seg {
        AsSegment::Set(v)
        | AsSegment::Sequence(v)
        | AsSegment::ConfedSequence(v)
        | AsSegment::ConfedSet(v) => v,
    }
}

/// Community conditions: at least one of `any` (when given) and every one of `all`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CommunityMatch {
    #[serde(default)]
    pub any: Vec<Community>,
    #[serde(default)]
    pub all: Vec<Community>,
}

impl CommunityMatch {
    pub fn matches(&self, attrs: &PathAttributes) -> bool {
        let has = |c: &Community| attrs.communities.contains(&c.0);
        (self.any.is_empty() || self.any.iter().any(has)) && self.all.iter().all(has)
    }
}

/// The conditions of a rule; all that are given must hold. An empty match matches every route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// The name of an entry of [`PolicySet::prefix_lists`]; the prefix must match one entry.
    #[serde(default)]
    pub prefix_list: Option<String>,
    /// Prefix entries written in place; the prefix must match one entry.
    #[serde(default)]
    pub prefixes: Option<Vec<PrefixMatch>>,
    #[serde(default)]
    pub as_path: Option<AsPathMatch>,
    #[serde(default)]
    pub community: Option<CommunityMatch>,
}

/// What a matching rule does. Written as a word (`accept`, `reject`, `next_hop_self`) or a
/// one-key map (`{ add_community: "65000:1" }`, `{ set_local_pref: 200 }`), in YAML and JSON
/// alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Accept the route now (with the modifications so far).
    Accept,
    /// Reject the route now.
    Reject,
    /// Export only: use this node's session address as the next hop.
    NextHopSelf,
    /// Add a community (kept once).
    AddCommunity(Community),
    /// Set LOCAL_PREF. On import it feeds the decision process; on export it is sent to
    /// iBGP peers only (LOCAL_PREF is never sent to eBGP peers).
    SetLocalPref(u32),
}

const ACTIONS: &[&str] = &[
    "accept",
    "reject",
    "next_hop_self",
    "add_community",
    "set_local_pref",
];

impl<'de> Deserialize<'de> for Action {
    // By hand: serde_yaml 0.9 would want `!set_local_pref 200` tags for the derived form.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Action;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an action: accept, reject, next_hop_self, { add_community: \"ASN:value\" } or { set_local_pref: N }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Action, E> {
                match v {
                    "accept" => Ok(Action::Accept),
                    "reject" => Ok(Action::Reject),
                    "next_hop_self" => Ok(Action::NextHopSelf),
                    "add_community" | "set_local_pref" => {
                        Err(E::custom(format!("{v} needs a value, e.g. {{ {v}: ... }}")))
                    }
                    other => Err(E::unknown_variant(other, ACTIONS)),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Action, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("empty action; write e.g. accept"));
                };
                let action = match key.as_str() {
                    "add_community" => Action::AddCommunity(map.next_value()?),
                    "set_local_pref" => Action::SetLocalPref(map.next_value()?),
                    "accept" | "reject" | "next_hop_self" => {
                        return Err(de::Error::custom(format!(
                            "{key} takes no value; write it as a plain word"
                        )))
                    }
                    other => return Err(de::Error::unknown_variant(other, ACTIONS)),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom(
                        "one action per list item; split them into separate items",
                    ));
                }
                Ok(action)
            }
        }
        d.deserialize_any(V)
    }
}

/// What happens to a route no rule accepted or rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    Accept,
    #[default]
    Reject,
}

/// One ordered rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Shown in errors; optional.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub conditions: Match,
    pub actions: Vec<Action>,
}

/// A named policy: ordered rules and a default action (reject unless said otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub default: DefaultAction,
}

/// All prefix lists and policies of a configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicySet {
    #[serde(default)]
    pub prefix_lists: BTreeMap<String, Vec<PrefixMatch>>,
    #[serde(default)]
    pub policies: BTreeMap<String, Policy>,
}

/// Where a policy is attached; some actions only make sense one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Import,
    Export,
}

impl PolicySet {
    /// Checks every prefix list and every policy as if used for export (the direction that
    /// allows every action); [`PolicySet::compile`] checks the direction of actual use.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (name, entries) in &self.prefix_lists {
            for (i, e) in entries.iter().enumerate() {
                e.validate(&format!("prefix_lists.{name}[{i}]"))?;
            }
        }
        for name in self.policies.keys() {
            self.compile(name, Direction::Export)?;
        }
        Ok(())
    }

    /// Resolves the named policy into a form ready to evaluate, checking it on the way.
    pub fn compile(
        &self,
        name: &str,
        direction: Direction,
    ) -> Result<Arc<CompiledPolicy>, PolicyError> {
        let policy = self.policies.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.policies.keys().map(String::as_str).collect();
            PolicyError::new(
                "policies",
                format!("no policy named {name:?} (known: {known:?})"),
            )
        })?;
        let mut rules = Vec::with_capacity(policy.rules.len());
        for (i, rule) in policy.rules.iter().enumerate() {
            let field = format!("policies.{name}.rules[{i}]");
            let mut prefix_sets = Vec::new();
            if let Some(list) = &rule.conditions.prefix_list {
                let entries = self.prefix_lists.get(list).ok_or_else(|| {
                    PolicyError::new(
                        format!("{field}.match.prefix_list"),
                        format!("no prefix list named {list:?}; add it under prefix_lists"),
                    )
                })?;
                for (j, e) in entries.iter().enumerate() {
                    e.validate(&format!("prefix_lists.{list}[{j}]"))?;
                }
                prefix_sets.push(entries.clone());
            }
            if let Some(entries) = &rule.conditions.prefixes {
                for (j, e) in entries.iter().enumerate() {
                    e.validate(&format!("{field}.match.prefixes[{j}]"))?;
                }
                prefix_sets.push(entries.clone());
            }
            if let Some(LengthRange {
                min: Some(min),
                max: Some(max),
            }) = rule.conditions.as_path.as_ref().and_then(|m| m.length)
            {
                if min > max {
                    return Err(PolicyError::new(
                        format!("{field}.match.as_path.length"),
                        format!("min {min} is greater than max {max}"),
                    ));
                }
            }
            if rule.actions.is_empty() {
                return Err(PolicyError::new(
                    format!("{field}.actions"),
                    "a rule needs at least one action (accept, reject, next_hop_self, add_community, set_local_pref)",
                ));
            }
            for (j, action) in rule.actions.iter().enumerate() {
                if direction == Direction::Import && *action == Action::NextHopSelf {
                    return Err(PolicyError::new(
                        format!("{field}.actions[{j}]"),
                        "next_hop_self only applies to export policies",
                    ));
                }
                let terminal = matches!(action, Action::Accept | Action::Reject);
                if terminal && j + 1 != rule.actions.len() {
                    return Err(PolicyError::new(
                        format!("{field}.actions[{}]", j + 1),
                        "nothing runs after accept or reject; move it before",
                    ));
                }
            }
            rules.push(CompiledRule {
                prefix_sets,
                as_path: rule.conditions.as_path.clone(),
                community: rule.conditions.community.clone(),
                actions: rule.actions.clone(),
            });
        }
        Ok(Arc::new(CompiledPolicy {
            name: name.to_owned(),
            rules,
            default: policy.default,
        }))
    }
}

/// Route modifications a policy asked for. Equal modifications on equal attributes give equal
/// results, so the RIB memoises by (attributes, modifications).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Modifications {
    pub next_hop_self: bool,
    pub local_pref: Option<u32>,
    pub add_communities: Vec<u32>,
}

impl Modifications {
    pub fn is_empty(&self) -> bool {
        !self.next_hop_self && self.local_pref.is_none() && self.add_communities.is_empty()
    }

    /// Applies the attribute changes (next-hop-self needs the session address, which only the
    /// RIB knows, so it is left to the caller).
    pub fn apply(&self, attrs: &mut PathAttributes) {
        if let Some(lp) = self.local_pref {
            attrs.local_pref = Some(lp);
        }
        for c in &self.add_communities {
            if !attrs.communities.contains(c) {
                attrs.communities.push(*c);
            }
        }
    }
}

/// The outcome of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept(Modifications),
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct CompiledRule {
    /// Each set must have a matching entry (a rule may name a list and inline entries).
    prefix_sets: Vec<Vec<PrefixMatch>>,
    as_path: Option<AsPathMatch>,
    community: Option<CommunityMatch>,
    actions: Vec<Action>,
}

impl CompiledRule {
    fn matches(&self, prefix: &IpNetwork, attrs: &PathAttributes) -> bool {
        self.prefix_sets
            .iter()
            .all(|set| set.iter().any(|e| e.matches(prefix)))
            && self.as_path.as_ref().is_none_or(|m| m.matches(attrs))
            && self.community.as_ref().is_none_or(|m| m.matches(attrs))
    }
}

/// A validated policy with its prefix lists resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    name: String,
    rules: Vec<CompiledRule>,
    default: DefaultAction,
}

impl CompiledPolicy {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the rules on one route.
    pub fn evaluate(&self, prefix: &IpNetwork, attrs: &PathAttributes) -> Verdict {
        let mut mods = Modifications::default();
        for rule in &self.rules {
            if !rule.matches(prefix, attrs) {
                continue;
            }
            for action in &rule.actions {
                match action {
                    Action::Accept => return Verdict::Accept(mods),
                    Action::Reject => return Verdict::Reject,
                    Action::NextHopSelf => mods.next_hop_self = true,
                    Action::AddCommunity(c) => {
                        if !mods.add_communities.contains(&c.0) {
                            mods.add_communities.push(c.0);
                        }
                    }
                    Action::SetLocalPref(v) => mods.local_pref = Some(*v),
                }
            }
        }
        match self.default {
            DefaultAction::Accept => Verdict::Accept(mods),
            DefaultAction::Reject => Verdict::Reject,
        }
    }
}

// ---- Safe defaults -------------------------------------------------------------------------

/// 0.0.0.0/0 or ::/0.
pub fn is_default_route(prefix: &IpNetwork) -> bool {
    prefix.prefix() == 0
}

/// Whether `prefix` lies inside one of `pools` (same family, at least as long, same bits).
pub fn within_pools(prefix: &IpNetwork, pools: &[IpNetwork]) -> bool {
    pools.iter().any(|pool| contains(pool, prefix))
}

/// Whether `inner` is `outer` or a more specific prefix inside it.
pub fn contains(outer: &IpNetwork, inner: &IpNetwork) -> bool {
    if inner.prefix() < outer.prefix() {
        return false;
    }
    match (outer.network(), inner.ip()) {
        (IpAddr::V4(o), IpAddr::V4(i)) => {
            let mask = mask32(outer.prefix());
            u32::from(o) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(o), IpAddr::V6(i)) => {
            let mask = mask128(outer.prefix());
            u128::from(o) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

fn max_len(p: &IpNetwork) -> u8 {
    match p {
        IpNetwork::V4(_) => 32,
        IpNetwork::V6(_) => 128,
    }
}

pub(crate) fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

pub(crate) fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}
