//! IP-in-IP carries IPv4 only: an IPv6 pool that asks for it is refused, naming the field.

use reef_config::crds::IpPoolSpec;
use reef_config::IpipMode;

#[test]
fn an_ipv6_pool_with_ip_in_ip_is_refused_naming_the_field() {
    for mode in ["Always", "CrossSubnet"] {
        let p: IpPoolSpec =
            serde_yaml::from_str(&format!("cidr: fd00:244::/48\nipipMode: {mode}\n")).unwrap();
        let e = p.validate().unwrap_err();
        let fields: Vec<&str> = e.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["spec.ipipMode"], "{e}");
        let msg = e.to_string();
        assert!(msg.contains(mode) && msg.contains("IPv4 only"), "{msg}");
        assert!(msg.contains("ipipMode: Never"), "the fix is named: {msg}");
    }
    let never: IpPoolSpec = serde_yaml::from_str("cidr: fd00:244::/48\nipipMode: Never\n").unwrap();
    never.validate().unwrap();
    // IPv4 pools keep every mode.
    for mode in ["Always", "CrossSubnet", "Never"] {
        let p: IpPoolSpec =
            serde_yaml::from_str(&format!("cidr: 10.244.0.0/16\nipipMode: {mode}\n")).unwrap();
        p.validate().unwrap();
    }
    // A pool made in code takes its family's default: Never for IPv6.
    let v6 = IpPoolSpec::new("fd00:244::/48".parse().unwrap());
    assert_eq!(v6.ipip_mode, IpipMode::Never);
    v6.validate().unwrap();
    let v4 = IpPoolSpec::new("10.244.0.0/16".parse().unwrap());
    assert_eq!(v4.ipip_mode, IpipMode::CrossSubnet);
}
