//! Property tests of the pure parts: results survive a round trip through every version's
//! shape, and no input, however malformed, makes the parsers panic.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use proptest::prelude::*;

use crate::config::{Families, IpamPluginConf, ReefConf};
use crate::pod::{self, AddressRequest, PoolRef};
use crate::spec::{CniResult, Env, Interface, IpConfig, Route, SpecVersion};

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

fn net() -> impl Strategy<Value = IpNetwork> {
    (addr(), any::<u8>()).prop_map(|(a, p)| {
        let max = if a.is_ipv4() { 32 } else { 128 };
        IpNetwork::new(a, p % (max + 1)).expect("prefix in range")
    })
}

fn result() -> impl Strategy<Value = CniResult> {
    let itf = (
        "[a-z][a-z0-9]{0,14}",
        proptest::option::of(68u32..9000),
        any::<bool>(),
    )
        .prop_map(|(name, mtu, pod)| Interface {
            name,
            mac: Some("02:00:00:00:00:01".into()),
            sandbox: pod.then(|| "/run/netns/x".into()),
            mtu,
        });
    (
        proptest::collection::vec(itf, 0..3),
        proptest::collection::vec((net(), proptest::option::of(addr()), any::<u8>()), 0..4),
        proptest::collection::vec((net(), proptest::option::of(addr())), 0..4),
    )
        .prop_map(|(interfaces, ips, routes)| {
            let n = interfaces.len();
            CniResult {
                ips: ips
                    .into_iter()
                    .map(|(address, gateway, i)| IpConfig {
                        address,
                        gateway,
                        interface: (n > 0).then(|| usize::from(i) % n),
                    })
                    .collect(),
                routes: routes
                    .into_iter()
                    .map(|(dst, gw)| Route { dst, gw })
                    .collect(),
                interfaces,
                dns: None,
            }
        })
}

proptest! {
    #[test]
    fn results_round_trip_in_every_version(r in result()) {
        for v in SpecVersion::ALL {
            let back = CniResult::from_json("prevResult", &r.to_json(v)).expect("own output parses");
            prop_assert_eq!(&back.ips, &r.ips);
            prop_assert_eq!(&back.routes, &r.routes);
            let names: Vec<_> = back.interfaces.iter().map(|i| &i.name).collect();
            let want: Vec<_> = r.interfaces.iter().map(|i| &i.name).collect();
            prop_assert_eq!(names, want);
            // MTUs only exist from 1.1.0 on.
            let mtus: Vec<_> = back.interfaces.iter().map(|i| i.mtu).collect();
            let want: Vec<_> = r.interfaces.iter().map(|i| if v == SpecVersion::V1_1_0 { i.mtu } else { None }).collect();
            prop_assert_eq!(mtus, want);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_config_parsers(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = ReefConf::parse(&bytes);
        let _ = IpamPluginConf::parse(&bytes);
    }

    #[test]
    fn arbitrary_json_values_in_known_fields_never_panic(
        version in prop_oneof![Just("0.4.0"), Just("1.0.0"), Just("1.1.0"), Just("9")],
        field in prop_oneof![Just("mtu"), Just("ipam"), Just("prevResult"), Just("routeProtocol"), Just("cni.dev/valid-attachments"), Just("logLevel"), Just("dns"), Just("kubernetes")],
        value in prop_oneof![
            Just(serde_json::json!(null)), any::<i64>().prop_map(serde_json::Value::from),
            ".{0,20}".prop_map(serde_json::Value::from),
            Just(serde_json::json!({"ips": [{"address": "1.2.3.4/99"}], "interfaces": [{}]})),
            Just(serde_json::json!([{"containerID": 5}])), Just(serde_json::json!({"type": 1, "routes": "x"})),
        ],
    ) {
        let mut c = serde_json::json!({"cniVersion": version, "name": "n", "type": "reef-cni"});
        c[field] = value;
        let bytes = serde_json::to_vec(&c).expect("serialise");
        let _ = ReefConf::parse(&bytes);
        let _ = IpamPluginConf::parse(&bytes);
    }

    #[test]
    fn arbitrary_environments_never_panic(vars in proptest::collection::btree_map(
        prop_oneof![Just("CNI_COMMAND"), Just("CNI_CONTAINERID"), Just("CNI_NETNS"), Just("CNI_IFNAME"), Just("CNI_ARGS"), Just("CNI_PATH")],
        ".{0,24}", 0..6)) {
        let m: BTreeMap<String, String> = vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let _ = Env::parse(|k| m.get(k).cloned());
    }

    #[test]
    fn arbitrary_annotations_never_panic_and_what_parses_is_consistent(
        values in proptest::collection::vec(prop_oneof![
            ".{0,30}",
            proptest::collection::vec(prop_oneof![
                addr().prop_map(|a| a.to_string()),
                net().prop_map(|n| n.to_string()),
                "[a-z0-9/.:-]{0,12}",
            ], 0..4).prop_map(|l| serde_json::to_string(&l).expect("serialise")),
        ], 3),
        present in proptest::collection::vec(any::<bool>(), 3),
        v4 in any::<bool>(),
        v6 in any::<bool>(),
    ) {
        let keys = [pod::IPV4_POOLS, pod::IPV6_POOLS, pod::IP_ADDRS];
        let ann: BTreeMap<String, String> = keys
            .iter()
            .zip(values)
            .zip(present)
            .filter(|(_, p)| *p)
            .map(|((k, v), _)| (k.to_string(), v))
            .collect();
        let families = Families { ipv4: v4, ipv6: v6 };
        match pod::parse(&ann, &families) {
            Ok(AddressRequest::Auto { ipv4_pools, ipv6_pools }) => {
                prop_assert!(ipv4_pools.is_empty() || v4);
                prop_assert!(ipv6_pools.is_empty() || v6);
                for (refs, is_v4) in [(&ipv4_pools, true), (&ipv6_pools, false)] {
                    for r in refs {
                        if let PoolRef::Cidr(c) = r {
                            prop_assert_eq!(c.is_ipv4(), is_v4);
                        }
                    }
                }
            }
            Ok(AddressRequest::Fixed(addrs)) => {
                prop_assert!(!addrs.is_empty());
                prop_assert!(addrs.iter().filter(|a| a.is_ipv4()).count() <= usize::from(v4));
                prop_assert!(addrs.iter().filter(|a| a.is_ipv6()).count() <= usize::from(v6));
            }
            Err(e) => prop_assert_eq!(e.code(), crate::ErrorCode::InvalidAnnotation),
        }
    }
}
