//! Network configuration (stdin), pure: the keys every plugin shares, reef-cni's own keys and
//! the `ipam` section reef-ipam reads. Defaults live in [`defaults`]; errors name the field.
//!
//! Codes: malformed JSON is 6; an unknown key is 2 (message has key and value); a wrong type
//! or value is 7 naming the field; an unsupported `cniVersion` is 1.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::spec::{CniResult, Route, SpecVersion};

/// Defaults, in one place. The MTU file and the route protocol default to the node config's
/// values (shared with the agent), so they are not repeated here.
pub mod defaults {
    /// The MTU when neither the configs nor the agent's file give one (1500 − 20 for IP-in-IP).
    pub const MTU: u32 = 1480;
    /// The node config file the agent and the plugins share.
    pub const NODE_CONFIG: &str = reef_config::node_config::defaults::CONFIG_PATH;
    /// Where reef-cni keeps one lock file per attachment (see `crate::lock`).
    pub const LOCK_DIR: &str = "/run/reef/cni";
}

/// Keys the runtime may put in any network config (spec "Network configuration format").
const COMMON_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "args",
    "runtimeConfig",
    "capabilities",
    "prevResult",
    "dns",
    "cni.dev/valid-attachments",
];

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The part of a network config every plugin understands.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: SpecVersion,
    pub name: String,
    pub plugin_type: String,
    pub prev_result: Option<CniResult>,
    pub dns: Option<Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Parses the config and the keys common to all plugins; returns the whole object too, for the
/// plugin-specific part.
pub fn parse_common(bytes: &[u8]) -> Result<(NetConf, Map<String, Value>), Error> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| Error::Decode {
        what: "network config (stdin)",
        reason: e.to_string(),
    })?;
    let Value::Object(obj) = v else {
        return Err(Error::Decode {
            what: "network config (stdin)",
            reason: "not a JSON object".into(),
        });
    };
    let version = match obj.get("cniVersion") {
        Some(Value::String(s)) => SpecVersion::parse("cniVersion", s)?,
        None => return Err(Error::config("cniVersion", "missing")),
        Some(other) => {
            return Err(Error::config(
                "cniVersion",
                format!("must be a string, got {other}"),
            ))
        }
    };
    let name = match obj.get("name") {
        Some(Value::String(s)) => s.clone(),
        None => return Err(Error::config("name", "missing")),
        Some(other) => {
            return Err(Error::config(
                "name",
                format!("must be a string, got {other}"),
            ))
        }
    };
    let name_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !name_ok {
        return Err(Error::config(
            "name",
            format!("{name:?} must start with a letter or digit and hold only letters, digits, '_', '.', '-'"),
        ));
    }
    let plugin_type = match obj.get("type") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None => return Err(Error::config("type", "missing")),
        Some(other) => {
            return Err(Error::config(
                "type",
                format!("must be a non-empty string, got {other}"),
            ))
        }
    };
    let prev_result = match obj.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(p) => Some(CniResult::from_json("prevResult", p)?),
    };
    let valid_attachments = match obj.get("cni.dev/valid-attachments") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            serde_path_to_error::deserialize::<_, Vec<Attachment>>(v.clone()).map_err(|e| {
                Error::config(
                    format!("cni.dev/valid-attachments{}", path_suffix(e.path())),
                    e.inner().to_string(),
                )
            })?,
        ),
    };
    let dns = obj.get("dns").cloned().filter(|d| !d.is_null());
    let conf = NetConf {
        cni_version: version,
        name,
        plugin_type,
        prev_result,
        dns,
        valid_attachments,
    };
    Ok((conf, obj))
}

fn path_suffix(p: &serde_path_to_error::Path) -> String {
    let s = p.to_string();
    if s == "." {
        String::new()
    } else {
        format!(".{s}")
    }
}

/// Rejects keys outside `allowed` with code 2, naming key and value.
fn check_keys(obj: &Map<String, Value>, prefix: &str, allowed: &[&[&str]]) -> Result<(), Error> {
    for (k, v) in obj {
        if !allowed.iter().any(|set| set.contains(&k.as_str())) {
            let mut value = v.to_string();
            if value.chars().count() > 80 {
                // By characters: a byte index can fall inside a multibyte one (and panic).
                value = value.chars().take(77).collect();
                value.push_str("...");
            }
            return Err(Error::UnsupportedField {
                field: format!("{prefix}{k}"),
                value,
            });
        }
    }
    Ok(())
}

/// Deserializes `v` and reports a type error with the full path of the field (code 7).
fn typed<T: for<'de> Deserialize<'de>>(prefix: &str, v: Value) -> Result<T, Error> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            prefix.trim_end_matches('.').to_string()
        } else {
            format!("{prefix}{path}")
        };
        Error::config(field, e.inner().to_string())
    })
}

/// How much the plugin logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    #[default]
    Warn,
    Info,
    Debug,
}

/// Where logs go (never stdout: that is the result's).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogConf {
    /// Append to this file; stderr when `None`.
    pub file: Option<PathBuf>,
    pub level: LogLevel,
}

/// Which families to assign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Families {
    pub ipv4: bool,
    pub ipv6: bool,
}

/// Kubernetes API access for reading the pod's annotations (`"kubernetes": {...}`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KubernetesConf {
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, then the in-cluster service
    /// account.
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Deserialize)]
struct KubernetesRaw {
    kubeconfig: Option<PathBuf>,
}

const KUBERNETES_KEYS: &[&str] = &["kubeconfig"];

/// Parses a `kubernetes` object found under `field` (e.g. `kubernetes`, `ipam.kubernetes`).
fn kubernetes(field: &str, v: Option<Value>) -> Result<Option<KubernetesConf>, Error> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(Error::config(
                field,
                format!("must be an object like {{\"kubeconfig\": \"/etc/cni/net.d/reef-kubeconfig\"}}, got {other}"),
            ))
        }
    };
    let prefix = format!("{field}.");
    check_keys(&obj, &prefix, &[KUBERNETES_KEYS])?;
    let raw: KubernetesRaw = typed(&prefix, Value::Object(obj))?;
    if raw
        .kubeconfig
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return Err(Error::config(
            format!("{prefix}kubeconfig"),
            "is empty; give a path or leave it out (in-cluster)",
        ));
    }
    Ok(Some(KubernetesConf {
        kubeconfig: raw.kubeconfig,
    }))
}

/// reef-cni's config: the common part plus its own keys.
#[derive(Debug, Clone, PartialEq)]
pub struct ReefConf {
    pub net: NetConf,
    /// The MTU given in the config, if any (else the node config's, else the agent's file,
    /// else [`defaults::MTU`]).
    pub mtu: Option<u32>,
    /// Overrides the node config's `mtuFile`.
    pub mtu_file: Option<PathBuf>,
    /// Overrides the node config's `routeProtocol`.
    pub route_protocol: Option<u8>,
    pub node_config: PathBuf,
    /// Directory of the per-attachment lock files.
    pub lock_dir: PathBuf,
    pub log: LogConf,
    pub families: Families,
    /// Where to read the pod from; else the node config's Kubernetes datastore, if any.
    pub kubernetes: Option<KubernetesConf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReefRaw {
    mtu: Option<u32>,
    mtu_file: Option<PathBuf>,
    route_protocol: Option<u8>,
    node_config: Option<PathBuf>,
    lock_dir: Option<PathBuf>,
    log_file: Option<PathBuf>,
    log_level: Option<LogLevel>,
    ipam: Option<Map<String, Value>>,
    /// Checked by [`kubernetes`].
    #[serde(rename = "kubernetes")]
    _kubernetes: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CniIpamRaw {
    #[serde(rename = "type")]
    kind: Option<String>,
    assign_ipv4: Option<bool>,
    assign_ipv6: Option<bool>,
}

const REEF_KEYS: &[&str] = &[
    "mtu",
    "mtuFile",
    "routeProtocol",
    "nodeConfig",
    "lockDir",
    "logFile",
    "logLevel",
    "ipam",
    "kubernetes",
];
const CNI_IPAM_KEYS: &[&str] = &["type", "assignIpv4", "assignIpv6"];

impl ReefConf {
    /// Parses stdin for reef-cni.
    pub fn parse(bytes: &[u8]) -> Result<ReefConf, Error> {
        let (net, obj) = parse_common(bytes)?;
        check_keys(&obj, "", &[COMMON_KEYS, REEF_KEYS])?;
        let kubernetes = kubernetes("kubernetes", obj.get("kubernetes").cloned())?;
        let raw: ReefRaw = typed("", Value::Object(obj))?;
        if let Some(mtu) = raw.mtu {
            validate_mtu("mtu", mtu)?;
        }
        if raw.lock_dir.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(Error::config(
                "lockDir",
                "must be an absolute path (e.g. /run/reef/cni)",
            ));
        }
        // 0–4 are the kernel's own (unspec, redirect, kernel, boot, static).
        if let Some(p @ 0..=4) = raw.route_protocol {
            return Err(Error::config(
                "routeProtocol",
                format!(
                    "{p} is reserved by the kernel; use 5..=255 or leave it to the node config"
                ),
            ));
        }
        let families = match raw.ipam {
            None => Families {
                ipv4: true,
                ipv6: false,
            },
            Some(ipam) => {
                check_keys(&ipam, "ipam.", &[CNI_IPAM_KEYS])?;
                let ipam: CniIpamRaw = typed("ipam.", Value::Object(ipam))?;
                if let Some(k) = ipam.kind.as_deref().filter(|k| *k != "reef-ipam") {
                    return Err(Error::UnsupportedField {
                        field: "ipam.type".into(),
                        value: format!("{k:?} (reef-cni allocates from reef's IPAM; omit ipam.type or use \"reef-ipam\")"),
                    });
                }
                families(ipam.assign_ipv4, ipam.assign_ipv6, "ipam.")?
            }
        };
        Ok(ReefConf {
            net,
            mtu: raw.mtu,
            mtu_file: raw.mtu_file,
            route_protocol: raw.route_protocol,
            node_config: raw
                .node_config
                .unwrap_or_else(|| defaults::NODE_CONFIG.into()),
            lock_dir: raw.lock_dir.unwrap_or_else(|| defaults::LOCK_DIR.into()),
            log: LogConf {
                file: raw.log_file,
                level: raw.log_level.unwrap_or_default(),
            },
            families,
            kubernetes,
        })
    }
}

fn families(v4: Option<bool>, v6: Option<bool>, prefix: &str) -> Result<Families, Error> {
    let f = Families {
        ipv4: v4.unwrap_or(true),
        ipv6: v6.unwrap_or(false),
    };
    if !f.ipv4 && !f.ipv6 {
        return Err(Error::config(
            format!("{prefix}assignIpv4"),
            "assignIpv4 and assignIpv6 are both false; nothing to assign",
        ));
    }
    Ok(f)
}

/// 68 is IPv4's minimum; IPv6 needs 1280 but a v4-only pod may go lower.
pub fn validate_mtu(field: &str, mtu: u32) -> Result<(), Error> {
    if !(68..=65535).contains(&mtu) {
        return Err(Error::config(field, format!("{mtu} is outside 68..=65535")));
    }
    Ok(())
}

/// reef-ipam's config: the `ipam` section of another plugin's config (bridge, ptp, …). The
/// rest of that config belongs to the other plugin and is not checked here.
#[derive(Debug, Clone, PartialEq)]
pub struct IpamPluginConf {
    pub net: NetConf,
    pub node_config: PathBuf,
    pub families: Families,
    /// Routes returned with every ADD result (like host-local's `routes`).
    pub routes: Vec<Route>,
    /// Gateways returned with the addresses of each family (e.g. 169.254.1.1 behind ptp).
    pub gateways: Vec<IpAddr>,
    pub log: LogConf,
    /// Where to read the pod from (`ipam.kubernetes`); else the node config's datastore.
    pub kubernetes: Option<KubernetesConf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IpamPluginRaw {
    #[serde(rename = "type")]
    _kind: String,
    node_config: Option<PathBuf>,
    assign_ipv4: Option<bool>,
    assign_ipv6: Option<bool>,
    #[serde(default)]
    routes: Vec<RouteRaw>,
    #[serde(default)]
    gateways: Vec<IpAddr>,
    log_file: Option<PathBuf>,
    log_level: Option<LogLevel>,
    /// Checked by [`kubernetes`].
    #[serde(rename = "kubernetes")]
    _kubernetes: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteRaw {
    dst: ipnetwork::IpNetwork,
    gw: Option<IpAddr>,
}

const IPAM_PLUGIN_KEYS: &[&str] = &[
    "type",
    "nodeConfig",
    "assignIpv4",
    "assignIpv6",
    "routes",
    "gateways",
    "logFile",
    "logLevel",
    "kubernetes",
];

impl IpamPluginConf {
    pub fn parse(bytes: &[u8]) -> Result<IpamPluginConf, Error> {
        let (net, obj) = parse_common(bytes)?;
        let ipam = match obj.get("ipam") {
            Some(Value::Object(o)) => o.clone(),
            None => return Err(Error::config("ipam", "missing")),
            Some(other) => {
                return Err(Error::config(
                    "ipam",
                    format!("must be an object, got {other}"),
                ))
            }
        };
        check_keys(&ipam, "ipam.", &[IPAM_PLUGIN_KEYS])?;
        let kubernetes = kubernetes("ipam.kubernetes", ipam.get("kubernetes").cloned())?;
        let raw: IpamPluginRaw = typed("ipam.", Value::Object(ipam))?;
        let families = families(raw.assign_ipv4, raw.assign_ipv6, "ipam.")?;
        for (i, gw) in raw.gateways.iter().enumerate() {
            if raw.gateways[..i]
                .iter()
                .any(|g| g.is_ipv4() == gw.is_ipv4())
            {
                return Err(Error::config(
                    format!("ipam.gateways[{i}]"),
                    "at most one gateway per family",
                ));
            }
        }
        Ok(IpamPluginConf {
            net,
            node_config: raw
                .node_config
                .unwrap_or_else(|| defaults::NODE_CONFIG.into()),
            families,
            routes: raw
                .routes
                .into_iter()
                .map(|r| Route {
                    dst: r.dst,
                    gw: r.gw,
                })
                .collect(),
            gateways: raw.gateways,
            log: LogConf {
                file: raw.log_file,
                level: raw.log_level.unwrap_or_default(),
            },
            kubernetes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn reef(s: &str) -> Result<ReefConf, Error> {
        ReefConf::parse(s.as_bytes())
    }

    #[test]
    fn minimal_config_takes_the_defaults() {
        let c =
            reef(r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"reef-cni"}"#).unwrap();
        assert_eq!(c.net.cni_version, SpecVersion::V1_0_0);
        assert_eq!(c.net.name, "k8s-pod-network");
        assert_eq!(c.mtu, None);
        assert_eq!(c.mtu_file, None);
        assert_eq!(c.route_protocol, None);
        assert_eq!(c.node_config, PathBuf::from(defaults::NODE_CONFIG));
        assert_eq!(c.lock_dir, PathBuf::from(defaults::LOCK_DIR));
        assert_eq!(
            c.families,
            Families {
                ipv4: true,
                ipv6: false
            }
        );
        assert_eq!(c.log.level, LogLevel::Warn);
        assert_eq!(c.kubernetes, None);
    }

    #[test]
    fn full_config_with_runtime_keys_parses() {
        let c = reef(
            r#"{"cniVersion":"1.1.0","name":"n","type":"reef-cni","mtu":1400,"mtuFile":"/tmp/m",
                "routeProtocol":77,"nodeConfig":"/tmp/node.yaml","logFile":"/tmp/l","logLevel":"debug",
                "lockDir":"/tmp/locks",
                "ipam":{"type":"reef-ipam","assignIpv6":true},"capabilities":{"portMappings":true},
                "kubernetes":{"kubeconfig":"/etc/cni/net.d/reef-kubeconfig"},
                "runtimeConfig":{"portMappings":[]},"args":{},"dns":{"nameservers":["10.96.0.10"]},
                "prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.1/32"}]},
                "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.lock_dir, PathBuf::from("/tmp/locks"));
        assert_eq!(c.route_protocol, Some(77));
        assert_eq!(
            c.families,
            Families {
                ipv4: true,
                ipv6: true
            }
        );
        assert_eq!(c.net.prev_result.unwrap().ips.len(), 1);
        assert_eq!(c.net.valid_attachments.unwrap()[0].container_id, "c1");
        assert!(c.net.dns.is_some());
        assert_eq!(
            c.kubernetes,
            Some(KubernetesConf {
                kubeconfig: Some("/etc/cni/net.d/reef-kubeconfig".into())
            })
        );
        let inferred =
            reef(r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","kubernetes":{}}"#);
        assert_eq!(
            inferred.unwrap().kubernetes,
            Some(KubernetesConf::default())
        );
    }

    #[test]
    fn bad_configs_get_the_right_code_and_name_the_field() {
        let cases: &[(&str, ErrorCode, &str)] = &[
            ("{", ErrorCode::DecodeFailure, "network config"),
            ("[1]", ErrorCode::DecodeFailure, "network config"),
            (
                r#"{"name":"n","type":"reef-cni"}"#,
                ErrorCode::InvalidConfig,
                "cniVersion",
            ),
            (
                r#"{"cniVersion":1,"name":"n","type":"reef-cni"}"#,
                ErrorCode::InvalidConfig,
                "cniVersion",
            ),
            (
                r#"{"cniVersion":"0.3.1","name":"n","type":"reef-cni"}"#,
                ErrorCode::IncompatibleVersion,
                "0.3.1",
            ),
            (
                r#"{"cniVersion":"1.0.0","type":"reef-cni"}"#,
                ErrorCode::InvalidConfig,
                "name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"-x","type":"reef-cni"}"#,
                ErrorCode::InvalidConfig,
                "name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
                ErrorCode::InvalidConfig,
                "type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","mtu":"big"}"#,
                ErrorCode::InvalidConfig,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","mtu":20}"#,
                ErrorCode::InvalidConfig,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","routeProtocol":2}"#,
                ErrorCode::InvalidConfig,
                "routeProtocol",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","routeProtocol":300}"#,
                ErrorCode::InvalidConfig,
                "routeProtocol",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","lockDir":"run/locks"}"#,
                ErrorCode::InvalidConfig,
                "lockDir",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","logLevel":"loud"}"#,
                ErrorCode::InvalidConfig,
                "logLevel",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","colour":"blue"}"#,
                ErrorCode::UnsupportedField,
                "colour = \"blue\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","ipam":{"type":"host-local"}}"#,
                ErrorCode::UnsupportedField,
                "ipam.type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","ipam":{"subnet":"10.0.0.0/8"}}"#,
                ErrorCode::UnsupportedField,
                "ipam.subnet",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","ipam":{"assignIpv4":"yes"}}"#,
                ErrorCode::InvalidConfig,
                "ipam.assignIpv4",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","ipam":{"assignIpv4":false}}"#,
                ErrorCode::InvalidConfig,
                "ipam.assignIpv4",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","prevResult":{"ips":[{"address":"x"}]}}"#,
                ErrorCode::InvalidConfig,
                "prevResult.ips[0].address",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","kubernetes":"/etc/kubeconfig"}"#,
                ErrorCode::InvalidConfig,
                "kubernetes: must be an object",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","kubernetes":{"kubeconfig":7}}"#,
                ErrorCode::InvalidConfig,
                "kubernetes.kubeconfig",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","kubernetes":{"kubeconfig":""}}"#,
                ErrorCode::InvalidConfig,
                "kubernetes.kubeconfig",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"reef-cni","kubernetes":{"server":"x"}}"#,
                ErrorCode::UnsupportedField,
                "kubernetes.server",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"reef-cni","cni.dev/valid-attachments":[{"containerID":"c"}]}"#,
                ErrorCode::InvalidConfig,
                "cni.dev/valid-attachments",
            ),
        ];
        for (input, code, field) in cases {
            let err = reef(input).unwrap_err();
            assert_eq!(err.code(), *code, "{input}: {err}");
            assert!(
                err.to_string().contains(field),
                "{input}: {err} should name {field}"
            );
        }
    }

    #[test]
    fn security_long_multibyte_unknown_values_are_shortened_without_panicking() {
        // 'é' is two bytes: byte 77 falls inside one of them.
        for value in [
            "é".repeat(100),
            format!("x{}", "é".repeat(100)),
            "日本".repeat(60),
        ] {
            let input = format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"reef-cni","colour":"{value}"}}"#
            );
            let err = reef(&input).unwrap_err();
            assert_eq!(err.code(), ErrorCode::UnsupportedField, "{err}");
            let Error::UnsupportedField {
                field,
                value: shown,
            } = &err
            else {
                panic!("{err:?}");
            };
            assert_eq!(field, "colour");
            assert!(shown.ends_with("..."), "{shown}");
            assert_eq!(shown.chars().count(), 80, "{shown}");
            assert!(value.starts_with(&shown[1..shown.len() - 3]), "{shown}");
        }
    }

    #[test]
    fn ipam_plugin_config_reads_only_the_ipam_section() {
        let c = IpamPluginConf::parse(
            br#"{"cniVersion":"1.0.0","name":"br","type":"bridge","bridge":"cni0","isGateway":true,
                "ipam":{"type":"reef-ipam","nodeConfig":"/tmp/n.yaml","routes":[{"dst":"0.0.0.0/0"}],
                        "gateways":["169.254.1.1"]}}"#,
        )
        .unwrap();
        assert_eq!(c.node_config, PathBuf::from("/tmp/n.yaml"));
        assert_eq!(c.routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(c.gateways.len(), 1);
        assert_eq!(c.kubernetes, None);
        let c = IpamPluginConf::parse(
            br#"{"cniVersion":"1.0.0","name":"br","type":"bridge",
                "ipam":{"type":"reef-ipam","kubernetes":{"kubeconfig":"/k"}}}"#,
        )
        .unwrap();
        assert_eq!(c.kubernetes.unwrap().kubeconfig, Some("/k".into()));
        for (input, code, field) in [
            (
                r#"{"cniVersion":"1.0.0","name":"br","type":"bridge"}"#,
                ErrorCode::InvalidConfig,
                "ipam",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"br","type":"bridge","ipam":{"type":"reef-ipam","ranges":[]}}"#,
                ErrorCode::UnsupportedField,
                "ipam.ranges",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"br","type":"bridge","ipam":{"type":"reef-ipam","routes":[{"dst":"nope"}]}}"#,
                ErrorCode::InvalidConfig,
                "ipam.routes[0].dst",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"br","type":"bridge","ipam":{"type":"reef-ipam","gateways":["1.1.1.1","2.2.2.2"]}}"#,
                ErrorCode::InvalidConfig,
                "ipam.gateways[1]",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"br","type":"bridge","ipam":{"type":"reef-ipam","kubernetes":{"token":"t"}}}"#,
                ErrorCode::UnsupportedField,
                "ipam.kubernetes.token",
            ),
        ] {
            let err = IpamPluginConf::parse(input.as_bytes()).unwrap_err();
            assert_eq!(err.code(), code, "{input}: {err}");
            assert!(
                err.to_string().contains(field),
                "{input}: {err} should name {field}"
            );
        }
    }
}
