//! Pod annotations that steer a pod's addresses (Calico-style), pure: parsing the annotation
//! values and resolving pool names against the datastore's pools. Reading the pod is
//! [`crate::k8s`]'s; allocating is the [`crate::ipam::Ipam`] backend's.
//!
//! - `reef.dev/ipv4pools`, `reef.dev/ipv6pools`: a JSON list of pool names or pool CIDRs; the
//!   family's address comes only from those pools. A family without its annotation may use
//!   every pool, as without annotations.
//! - `reef.dev/ipAddrs`: a JSON list of addresses, at most one per family, each of a family
//!   the network assigns; the pod gets exactly these (no automatic address for a family left
//!   out). It cannot be combined with the pool annotations.
//!
//! An empty list is the same as no annotation. Anything else wrong is
//! [`Error::InvalidAnnotation`] naming the annotation and the value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::config::Families;
use crate::error::Error;

pub const IPV4_POOLS: &str = "reef.dev/ipv4pools";
pub const IPV6_POOLS: &str = "reef.dev/ipv6pools";
pub const IP_ADDRS: &str = "reef.dev/ipAddrs";

/// A pool as an annotation names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolRef {
    Name(String),
    Cidr(IpNetwork),
}

impl fmt::Display for PoolRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolRef::Name(n) => write!(f, "{n:?}"),
            PoolRef::Cidr(c) => write!(f, "{c}"),
        }
    }
}

/// What the pod asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressRequest {
    /// One address per assigned family, from these pools (empty: any pool that selects the
    /// node).
    Auto {
        ipv4_pools: Vec<PoolRef>,
        ipv6_pools: Vec<PoolRef>,
    },
    /// Exactly these addresses (at most one per family).
    Fixed(Vec<IpAddr>),
}

impl Default for AddressRequest {
    fn default() -> Self {
        AddressRequest::Auto {
            ipv4_pools: Vec::new(),
            ipv6_pools: Vec::new(),
        }
    }
}

fn bad(annotation: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidAnnotation {
        annotation,
        reason: reason.into(),
    }
}

/// The annotation's value as a list of strings; `None` when absent or `[]`.
fn string_list(
    annotations: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Option<Vec<String>>, Error> {
    let Some(raw) = annotations.get(key) else {
        return Ok(None);
    };
    let list: Vec<String> = serde_json::from_str(raw).map_err(|e| {
        bad(
            key,
            format!("{raw:?} is not a JSON list of strings ({e}); e.g. [\"pool-a\"]"),
        )
    })?;
    Ok((!list.is_empty()).then_some(list))
}

fn pools(
    annotations: &BTreeMap<String, String>,
    key: &'static str,
    v4: bool,
    assigned: bool,
) -> Result<Vec<PoolRef>, Error> {
    let Some(list) = string_list(annotations, key)? else {
        return Ok(Vec::new());
    };
    let family = if v4 { "IPv4" } else { "IPv6" };
    if !assigned {
        return Err(bad(
            key,
            format!(
                "this network assigns no {family} address (ipam.assign{})",
                if v4 { "Ipv4" } else { "Ipv6" }
            ),
        ));
    }
    let mut out: Vec<PoolRef> = Vec::with_capacity(list.len());
    for item in list {
        let r = if item.contains('/') {
            let cidr: IpNetwork = item
                .parse()
                .map_err(|e| bad(key, format!("{item:?} is not a CIDR: {e}")))?;
            if cidr.is_ipv4() != v4 {
                return Err(bad(key, format!("{cidr} is not an {family} CIDR")));
            }
            PoolRef::Cidr(cidr)
        } else if item.is_empty() || item.parse::<IpAddr>().is_ok() {
            return Err(bad(
                key,
                format!("{item:?} is neither a pool name nor a CIDR"),
            ));
        } else {
            PoolRef::Name(item)
        };
        if !out.contains(&r) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Reads the address annotations of a pod. `families` are the ones the network assigns.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    families: &Families,
) -> Result<AddressRequest, Error> {
    let ipv4_pools = pools(annotations, IPV4_POOLS, true, families.ipv4)?;
    let ipv6_pools = pools(annotations, IPV6_POOLS, false, families.ipv6)?;
    let Some(addrs) = string_list(annotations, IP_ADDRS)? else {
        return Ok(AddressRequest::Auto {
            ipv4_pools,
            ipv6_pools,
        });
    };
    if !ipv4_pools.is_empty() || !ipv6_pools.is_empty() {
        return Err(bad(
            IP_ADDRS,
            format!("cannot be combined with {IPV4_POOLS} or {IPV6_POOLS}; use one or the other"),
        ));
    }
    let mut out: Vec<IpAddr> = Vec::with_capacity(addrs.len());
    for a in addrs {
        let ip: IpAddr = a
            .parse()
            .map_err(|_| bad(IP_ADDRS, format!("{a:?} is not an IP address")))?;
        let (assigned, key) = if ip.is_ipv4() {
            (families.ipv4, "Ipv4")
        } else {
            (families.ipv6, "Ipv6")
        };
        if !assigned {
            return Err(bad(
                IP_ADDRS,
                format!("{ip}: this network assigns no such address (ipam.assign{key})"),
            ));
        }
        if out.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
            return Err(bad(
                IP_ADDRS,
                "at most one address per family (a pod has one IPv4 and one IPv6 address)",
            ));
        }
        out.push(ip);
    }
    Ok(AddressRequest::Fixed(out))
}

/// A pool of the datastore, as [`resolve_pools`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPool {
    pub name: String,
    pub cidr: IpNetwork,
    pub disabled: bool,
}

fn resolve_family(
    refs: &[PoolRef],
    key: &'static str,
    v4: bool,
    known: &[KnownPool],
) -> Result<Vec<IpNetwork>, Error> {
    let family = if v4 { "IPv4" } else { "IPv6" };
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        let pool = known
            .iter()
            .find(|p| match r {
                PoolRef::Name(n) => p.name == *n,
                PoolRef::Cidr(c) => p.cidr == *c,
            })
            .ok_or_else(|| {
                let names: Vec<&str> = known
                    .iter()
                    .filter(|p| p.cidr.is_ipv4() == v4)
                    .map(|p| p.name.as_str())
                    .collect();
                bad(
                    key,
                    format!(
                        "no IP pool {} {r}; {family} pools: {}",
                        if matches!(r, PoolRef::Name(_)) {
                            "named"
                        } else {
                            "with CIDR"
                        },
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                )
            })?;
        if pool.cidr.is_ipv4() != v4 {
            return Err(bad(
                key,
                format!(
                    "pool {:?} ({}) is not an {family} pool",
                    pool.name, pool.cidr
                ),
            ));
        }
        if pool.disabled {
            return Err(bad(
                key,
                format!("pool {:?} ({}) is disabled", pool.name, pool.cidr),
            ));
        }
        out.push(pool.cidr);
    }
    Ok(out)
}

/// The pools an automatic assignment may use: the requested ones of each family, and for a
/// family the pod did not restrict, all of that family's pools (so restricting IPv4 does not
/// take IPv6 away). Empty when nothing is restricted (any pool). Unknown, disabled or
/// wrong-family pools are errors naming the annotation.
pub fn resolve_pools(
    ipv4_pools: &[PoolRef],
    ipv6_pools: &[PoolRef],
    known: &[KnownPool],
) -> Result<Vec<IpNetwork>, Error> {
    if ipv4_pools.is_empty() && ipv6_pools.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = resolve_family(ipv4_pools, IPV4_POOLS, true, known)?;
    out.extend(resolve_family(ipv6_pools, IPV6_POOLS, false, known)?);
    for (restricted, v4) in [
        (!ipv4_pools.is_empty(), true),
        (!ipv6_pools.is_empty(), false),
    ] {
        if !restricted {
            out.extend(
                known
                    .iter()
                    .filter(|p| p.cidr.is_ipv4() == v4)
                    .map(|p| p.cidr),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const V4: Families = Families {
        ipv4: true,
        ipv6: false,
    };
    const DUAL: Families = Families {
        ipv4: true,
        ipv6: true,
    };

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn no_annotations_is_any_pool() {
        let other = ann(&[("cni.projectcalico.org/ipv4pools", "[\"x\"]"), ("a", "b")]);
        assert_eq!(parse(&other, &V4).unwrap(), AddressRequest::default());
        let empty = ann(&[(IPV4_POOLS, "[]"), (IP_ADDRS, " [ ] ")]);
        assert_eq!(parse(&empty, &V4).unwrap(), AddressRequest::default());
    }

    #[test]
    fn pools_by_name_and_cidr() {
        let a = ann(&[
            (IPV4_POOLS, r#"["pool-a", "10.9.0.0/16", "pool-a"]"#),
            (IPV6_POOLS, r#"["fd00:9::/64"]"#),
        ]);
        assert_eq!(
            parse(&a, &DUAL).unwrap(),
            AddressRequest::Auto {
                ipv4_pools: vec![
                    PoolRef::Name("pool-a".into()),
                    PoolRef::Cidr(net("10.9.0.0/16"))
                ],
                ipv6_pools: vec![PoolRef::Cidr(net("fd00:9::/64"))],
            }
        );
    }

    #[test]
    fn fixed_addresses() {
        let a = ann(&[(IP_ADDRS, r#"["10.9.0.7", "fd00:9::7"]"#)]);
        assert_eq!(
            parse(&a, &DUAL).unwrap(),
            AddressRequest::Fixed(vec![
                "10.9.0.7".parse().unwrap(),
                "fd00:9::7".parse().unwrap()
            ])
        );
        // A dual-stack network may give a pod only the address it asks for.
        let a = ann(&[(IP_ADDRS, r#"["10.9.0.7"]"#)]);
        assert_eq!(
            parse(&a, &DUAL).unwrap(),
            AddressRequest::Fixed(vec!["10.9.0.7".parse().unwrap()])
        );
    }

    #[test]
    fn bad_annotations_name_the_annotation_and_the_value() {
        let cases: &[(&str, &str, Families, &str)] = &[
            (IPV4_POOLS, "pool-a", V4, "not a JSON list"),
            (IPV4_POOLS, r#"["a""#, V4, "not a JSON list"),
            (IPV4_POOLS, r#"{"a":1}"#, V4, "not a JSON list"),
            (IPV4_POOLS, "[1]", V4, "not a JSON list"),
            (IPV4_POOLS, r#"["10.9.0.0/33"]"#, V4, "not a CIDR"),
            (IPV4_POOLS, r#"["fd00::/64"]"#, DUAL, "not an IPv4 CIDR"),
            (
                IPV4_POOLS,
                r#"["10.9.0.1"]"#,
                V4,
                "neither a pool name nor a CIDR",
            ),
            (IPV4_POOLS, r#"[""]"#, V4, "neither a pool name nor a CIDR"),
            (IPV6_POOLS, r#"["10.9.0.0/16"]"#, DUAL, "not an IPv6 CIDR"),
            (
                IPV6_POOLS,
                r#"["p6"]"#,
                V4,
                "assigns no IPv6 address (ipam.assignIpv6)",
            ),
            (IP_ADDRS, "10.9.0.7", V4, "not a JSON list"),
            (
                IP_ADDRS,
                r#"["10.9.0.300"]"#,
                V4,
                "\"10.9.0.300\" is not an IP address",
            ),
            (IP_ADDRS, r#"["10.9.0.0/24"]"#, V4, "not an IP address"),
            (
                IP_ADDRS,
                r#"["10.9.0.7","10.9.0.8"]"#,
                V4,
                "at most one address per family",
            ),
            (
                IP_ADDRS,
                r#"["fd00::7"]"#,
                V4,
                "fd00::7: this network assigns no such address (ipam.assignIpv6)",
            ),
        ];
        for (key, value, families, why) in cases {
            let err = parse(&ann(&[(key, value)]), families).unwrap_err();
            assert_eq!(
                err.code(),
                ErrorCode::InvalidAnnotation,
                "{key}={value}: {err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(key), "{msg} should name {key}");
            assert!(msg.contains(why), "{key}={value}: {msg} should say {why:?}");
        }
        let both = ann(&[(IPV4_POOLS, r#"["a"]"#), (IP_ADDRS, r#"["10.9.0.7"]"#)]);
        let msg = parse(&both, &V4).unwrap_err().to_string();
        assert!(
            msg.contains(IP_ADDRS) && msg.contains("cannot be combined"),
            "{msg}"
        );
    }

    fn known() -> Vec<KnownPool> {
        let p = |name: &str, cidr: &str, disabled| KnownPool {
            name: name.into(),
            cidr: net(cidr),
            disabled,
        };
        vec![
            p("default", "10.1.0.0/16", false),
            p("pool-a", "10.9.0.0/16", false),
            p("off", "10.8.0.0/16", true),
            p("v6", "fd00:1::/64", false),
            p("v6-b", "fd00:9::/64", false),
        ]
    }

    #[test]
    fn resolving_keeps_the_other_family_whole() {
        assert_eq!(resolve_pools(&[], &[], &known()).unwrap(), Vec::new());
        let got = resolve_pools(&[PoolRef::Name("pool-a".into())], &[], &known()).unwrap();
        assert_eq!(
            got,
            vec![net("10.9.0.0/16"), net("fd00:1::/64"), net("fd00:9::/64")]
        );
        let got = resolve_pools(&[], &[PoolRef::Cidr(net("fd00:9::/64"))], &known()).unwrap();
        assert_eq!(
            got,
            vec![
                net("fd00:9::/64"),
                net("10.1.0.0/16"),
                net("10.9.0.0/16"),
                net("10.8.0.0/16")
            ]
        );
    }

    #[test]
    fn unknown_disabled_and_wrong_family_pools_are_refused() {
        let cases: &[(&[PoolRef], &[PoolRef], &str, &str)] = &[
            (
                &[PoolRef::Name("nope".into())],
                &[],
                IPV4_POOLS,
                "no IP pool named \"nope\"; IPv4 pools: default, pool-a, off",
            ),
            (
                &[PoolRef::Cidr(net("10.7.0.0/16"))],
                &[],
                IPV4_POOLS,
                "no IP pool with CIDR 10.7.0.0/16",
            ),
            (
                &[PoolRef::Name("off".into())],
                &[],
                IPV4_POOLS,
                "pool \"off\" (10.8.0.0/16) is disabled",
            ),
            (
                &[PoolRef::Name("v6".into())],
                &[],
                IPV4_POOLS,
                "pool \"v6\" (fd00:1::/64) is not an IPv4 pool",
            ),
            (
                &[],
                &[PoolRef::Name("default".into())],
                IPV6_POOLS,
                "is not an IPv6 pool",
            ),
        ];
        for (v4, v6, key, why) in cases {
            let err = resolve_pools(v4, v6, &known()).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidAnnotation);
            let msg = err.to_string();
            assert!(
                msg.contains(key) && msg.contains(why),
                "{msg} should say {key}: {why}"
            );
        }
    }
}
