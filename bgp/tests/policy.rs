//! Policies as data: YAML shapes, validation errors that name the field, and matching edges
//! (ge/le bounds, IPv6, AS paths, communities, rule flow).

use ipnetwork::IpNetwork;
use reef_bgp::attrs::{AsSegment, PathAttributes};
use reef_bgp::policy::{
    contains, is_default_route, within_pools, Community, Direction, Modifications, PolicySet,
    PrefixMatch, Verdict, NO_EXPORT,
};
use reef_bgp::Asn;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn entry(prefix: &str, ge: Option<u8>, le: Option<u8>) -> PrefixMatch {
    PrefixMatch {
        prefix: net(prefix),
        ge,
        le,
    }
}

fn set(yaml: &str) -> PolicySet {
    serde_yaml::from_str(yaml).unwrap()
}

fn attrs(path: &[u32], communities: &[u32]) -> PathAttributes {
    PathAttributes {
        as_path: vec![AsSegment::Sequence(path.iter().map(|&a| Asn(a)).collect())],
        communities: communities.to_vec(),
        ..PathAttributes::default()
    }
}

#[test]
fn prefix_match_length_edges() {
    // (entry, candidate, matches)
    let cases = [
        (entry("10.0.0.0/16", None, None), "10.0.0.0/16", true),
        (entry("10.0.0.0/16", None, None), "10.0.1.0/24", false),
        (entry("10.0.0.0/16", Some(24), None), "10.0.1.0/24", true),
        (entry("10.0.0.0/16", Some(24), None), "10.0.1.0/23", false),
        (entry("10.0.0.0/16", Some(24), None), "10.0.1.1/32", true),
        (entry("10.0.0.0/16", None, Some(24)), "10.0.0.0/16", true),
        (entry("10.0.0.0/16", None, Some(24)), "10.0.1.0/24", true),
        (entry("10.0.0.0/16", None, Some(24)), "10.0.1.0/25", false),
        (
            entry("10.0.0.0/16", Some(20), Some(24)),
            "10.0.16.0/20",
            true,
        ),
        (
            entry("10.0.0.0/16", Some(20), Some(24)),
            "10.0.0.0/19",
            false,
        ),
        (
            entry("10.0.0.0/16", Some(20), Some(24)),
            "10.0.0.0/25",
            false,
        ),
        (
            entry("10.0.0.0/16", Some(20), Some(24)),
            "10.1.0.0/24",
            false,
        ),
        (
            entry("10.0.0.0/16", Some(24), Some(24)),
            "10.0.255.0/24",
            true,
        ),
        (entry("0.0.0.0/0", None, None), "0.0.0.0/0", true),
        (entry("0.0.0.0/0", None, None), "10.0.0.0/8", false),
        (entry("0.0.0.0/0", None, Some(32)), "10.0.0.0/8", true),
        (entry("0.0.0.0/0", None, Some(32)), "2001:db8::/32", false),
        (
            entry("2001:db8::/32", Some(48), Some(64)),
            "2001:db8:1::/48",
            true,
        ),
        (
            entry("2001:db8::/32", Some(48), Some(64)),
            "2001:db8:1:2::/64",
            true,
        ),
        (
            entry("2001:db8::/32", Some(48), Some(64)),
            "2001:db8:1:2::/65",
            false,
        ),
        (
            entry("2001:db8::/32", Some(48), Some(64)),
            "2001:db9::/48",
            false,
        ),
        (entry("2001:db8::/32", None, None), "10.0.0.0/32", false),
        (entry("fd00::/8", Some(128), None), "fd12::1/128", true),
    ];
    for (e, candidate, want) in cases {
        assert_eq!(e.matches(&net(candidate)), want, "{e:?} vs {candidate}");
    }
}

#[test]
fn pool_and_default_helpers() {
    let pools = [net("10.244.0.0/16"), net("fd00:244::/48")];
    assert!(within_pools(&net("10.244.3.0/26"), &pools));
    assert!(within_pools(&net("10.244.0.0/16"), &pools));
    assert!(
        !within_pools(&net("10.0.0.0/8"), &pools),
        "a covering prefix is not inside"
    );
    assert!(!within_pools(&net("10.245.0.0/26"), &pools));
    assert!(within_pools(&net("fd00:244:0:1::/122"), &pools));
    assert!(!within_pools(&net("fd00:245::/122"), &pools));
    assert!(!contains(&net("10.0.0.0/8"), &net("fd00::/128")));
    assert!(is_default_route(&net("0.0.0.0/0")));
    assert!(is_default_route(&net("::/0")));
    assert!(!is_default_route(&net("0.0.0.0/1")));
}

#[test]
fn communities_parse_in_every_written_form() {
    assert_eq!(
        Community::parse("65000:100").unwrap().0,
        (65000 << 16) | 100
    );
    assert_eq!(Community::parse("no-export").unwrap().0, NO_EXPORT);
    assert_eq!(Community::parse("4259840100").unwrap().0, 4_259_840_100);
    assert_eq!(
        Community::parse("65000:100").unwrap().to_string(),
        "65000:100"
    );
    let err = Community::parse("65536:1").unwrap_err();
    assert!(err.contains("AS part"), "{err}");
    assert!(Community::parse("a:b").is_err());
    assert!(Community::parse("").is_err());
    let err = serde_yaml::from_str::<Community>("4294967296").unwrap_err();
    assert!(err.to_string().contains("32 bits"), "{err}");
}

#[test]
fn rules_run_in_order_and_accumulate_until_accept_or_reject() {
    let s = set(r#"
policies:
  p:
    rules:
      - name: tag everything
        actions: [ { add_community: "65000:1" } ]
      - match: { community: { any: ["65001:9"] } }
        actions: [ reject ]
      - match: { as_path: { contains: 65002 } }
        actions: [ { set_local_pref: 50 }, { add_community: "65000:1" }, { add_community: "65000:2" }, accept ]
      - match: { as_path: { length: { min: 3 } } }
        actions: [ accept ]
    default: reject
"#);
    s.validate().unwrap();
    let p = s.compile("p", Direction::Import).unwrap();
    let x = net("192.0.2.0/24");
    assert_eq!(
        p.evaluate(&x, &attrs(&[65001], &[(65001 << 16) | 9])),
        Verdict::Reject
    );
    assert_eq!(
        p.evaluate(&x, &attrs(&[65001, 65002], &[])),
        Verdict::Accept(Modifications {
            next_hop_self: false,
            local_pref: Some(50),
            add_communities: vec![(65000 << 16) | 1, (65000 << 16) | 2],
        })
    );
    match p.evaluate(&x, &attrs(&[1, 2, 3], &[])) {
        Verdict::Accept(m) => assert_eq!(m.add_communities, vec![(65000 << 16) | 1]),
        v => panic!("{v:?}"),
    }
    assert_eq!(
        p.evaluate(&x, &attrs(&[1], &[])),
        Verdict::Reject,
        "default"
    );
}

#[test]
fn as_path_and_community_conditions() {
    let s = set(r#"
policies:
  origin:
    rules: [ { match: { as_path: { originates_from: 65010 } }, actions: [accept] } ]
  length:
    rules: [ { match: { as_path: { length: { min: 2, max: 3 } } }, actions: [accept] } ]
  all:
    rules: [ { match: { community: { all: ["65000:1", "no-export"] } }, actions: [accept] } ]
"#);
    let x = net("192.0.2.0/24");
    let accepts = |name: &str, a: &PathAttributes| {
        matches!(
            s.compile(name, Direction::Export).unwrap().evaluate(&x, a),
            Verdict::Accept(_)
        )
    };
    assert!(accepts("origin", &attrs(&[65001, 65010], &[])));
    assert!(!accepts("origin", &attrs(&[65010, 65001], &[])));
    let mut set_end = attrs(&[65001], &[]);
    set_end
        .as_path
        .push(AsSegment::Set(vec![Asn(65009), Asn(65010)]));
    assert!(accepts("origin", &set_end));
    assert!(
        !accepts("origin", &PathAttributes::default()),
        "local routes originate nowhere"
    );
    assert!(!accepts("length", &attrs(&[1], &[])));
    assert!(accepts("length", &attrs(&[1, 2], &[])));
    assert!(accepts("length", &attrs(&[1, 2, 3], &[])));
    assert!(!accepts("length", &attrs(&[1, 2, 3, 4], &[])));
    assert!(accepts("length", &set_end), "an AS_SET counts once");
    assert!(accepts(
        "all",
        &attrs(&[1], &[NO_EXPORT, (65000 << 16) | 1, 7])
    ));
    assert!(!accepts("all", &attrs(&[1], &[(65000 << 16) | 1])));
}

#[test]
fn ipv6_prefix_lists() {
    let s = set(r#"
prefix_lists:
  v6: [ { prefix: "fd00:244::/48", ge: 64, le: 122 } ]
policies:
  p:
    rules: [ { match: { prefix_list: v6 }, actions: [accept] } ]
"#);
    let p = s.compile("p", Direction::Import).unwrap();
    let a = PathAttributes::default();
    assert!(matches!(
        p.evaluate(&net("fd00:244:0:1::/122"), &a),
        Verdict::Accept(_)
    ));
    assert_eq!(p.evaluate(&net("fd00:244::/48"), &a), Verdict::Reject);
    assert_eq!(p.evaluate(&net("fd00:244::/128"), &a), Verdict::Reject);
    assert_eq!(p.evaluate(&net("10.0.0.0/24"), &a), Verdict::Reject);
}

#[test]
fn validation_names_the_field() {
    let cases = [
        (
            "prefix_lists: { l: [ { prefix: 10.0.0.1/16 } ] }",
            "prefix_lists.l[0].prefix",
        ),
        (
            "prefix_lists: { l: [ { prefix: 10.0.0.0/16, ge: 8 } ] }",
            "prefix_lists.l[0].ge",
        ),
        (
            "prefix_lists: { l: [ { prefix: 10.0.0.0/16, le: 33 } ] }",
            "prefix_lists.l[0].le",
        ),
        (
            "prefix_lists: { l: [ { prefix: 10.0.0.0/16, ge: 26, le: 24 } ] }",
            "prefix_lists.l[0].ge",
        ),
        (
            "policies: { p: { rules: [ { match: { prefix_list: nope }, actions: [accept] } ] } }",
            "policies.p.rules[0].match.prefix_list",
        ),
        (
            "policies: { p: { rules: [ { actions: [] } ] } }",
            "policies.p.rules[0].actions",
        ),
        (
            "policies: { p: { rules: [ { actions: [accept, reject] } ] } }",
            "policies.p.rules[0].actions[1]",
        ),
        (
            "policies: { p: { rules: [ { actions: [accept] }, { match: { as_path: { length: { min: 5, max: 2 } } }, actions: [accept] } ] } }",
            "policies.p.rules[1].match.as_path.length",
        ),
        (
            "policies: { p: { rules: [ { match: { prefixes: [ { prefix: \"2001:db8::/32\", le: 129 } ] }, actions: [accept] } ] } }",
            "policies.p.rules[0].match.prefixes[0].le",
        ),
    ];
    for (yaml, field) in cases {
        let s: PolicySet = match serde_yaml::from_str(yaml) {
            Ok(s) => s,
            Err(e) => panic!("{yaml}: {e}"),
        };
        let err = s.validate().unwrap_err();
        assert_eq!(err.field, field, "{yaml}: {err}");
    }
    let s = set("policies: { p: { rules: [ { actions: [next_hop_self, accept] } ] } }");
    s.validate().unwrap();
    let err = s.compile("p", Direction::Import).unwrap_err();
    assert_eq!(err.field, "policies.p.rules[0].actions[0]");
    assert!(s
        .compile("q", Direction::Export)
        .unwrap_err()
        .problem
        .contains("\"q\""));
}

#[test]
fn unknown_fields_and_bad_values_are_refused() {
    for yaml in [
        "policies: { p: { rulez: [] } }",
        "policies: { p: { rules: [ { actions: [ jump ] } ] } }",
        "policies: { p: { rules: [ { actions: [ { set_local_pref: -1 } ] } ] } }",
        "policies: { p: { rules: [ { actions: [ { add_community: \"1:2:3\" } ] } ] } }",
        "prefix_lists: { l: [ { prefix: 10.0.0.0/33 } ] }",
        "prefix_lists: { l: [ { prefix: 10.0.0.0/8, gt: 9 } ] }",
    ] {
        assert!(serde_yaml::from_str::<PolicySet>(yaml).is_err(), "{yaml}");
    }
}
