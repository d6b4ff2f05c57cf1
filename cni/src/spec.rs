//! The CNI protocol, pure: spec versions, the `CNI_*` environment, and results in the shape
//! each spec version expects. No I/O here; the binaries feed in the environment and stdin.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};

use crate::error::Error;

/// The spec versions reef speaks, oldest first, as reported by VERSION.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// A CNI spec version reef supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecVersion {
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl SpecVersion {
    pub const LATEST: SpecVersion = SpecVersion::V1_1_0;
    pub const ALL: [SpecVersion; 3] = [
        SpecVersion::V0_4_0,
        SpecVersion::V1_0_0,
        SpecVersion::V1_1_0,
    ];

    /// Parses `cniVersion`; anything else than the supported versions is code 1.
    pub fn parse(field: &'static str, s: &str) -> Result<SpecVersion, Error> {
        match s {
            "0.4.0" => Ok(SpecVersion::V0_4_0),
            "1.0.0" => Ok(SpecVersion::V1_0_0),
            "1.1.0" => Ok(SpecVersion::V1_1_0),
            _ => Err(Error::IncompatibleVersion {
                field,
                version: s.to_string(),
            }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V0_4_0 => "0.4.0",
            SpecVersion::V1_0_0 => "1.0.0",
            SpecVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Whether `command` exists in this version (CHECK since 0.4.0, STATUS and GC since 1.1.0).
    pub fn allows(self, command: Command) -> Result<(), Error> {
        let ok = match command {
            Command::Status | Command::Gc => self >= SpecVersion::V1_1_0,
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::IncompatibleVersion {
                field: "cniVersion (this command needs 1.1.0)",
                version: self.as_str().to_string(),
            })
        }
    }
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Result<Command, Error> {
        match s {
            "ADD" => Ok(Command::Add),
            "DEL" => Ok(Command::Del),
            "CHECK" => Ok(Command::Check),
            "VERSION" => Ok(Command::Version),
            "STATUS" => Ok(Command::Status),
            "GC" => Ok(Command::Gc),
            other => Err(Error::env(
                "CNI_COMMAND",
                format!(
                    "unknown command {other:?}; expected ADD, DEL, CHECK, VERSION, STATUS or GC"
                ),
            )),
        }
    }
}

/// The parameters of one invocation, from the `CNI_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    /// `CNI_CONTAINERID`: required by ADD, DEL and CHECK.
    pub container_id: Option<String>,
    /// `CNI_NETNS`: required by ADD and CHECK, optional for DEL.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`: required by ADD, DEL and CHECK.
    pub ifname: Option<String>,
    /// `CNI_ARGS`, split into key/value pairs.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`: where to find other plugins.
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads the environment through `get` (e.g. `|k| std::env::var(k).ok()`).
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Env, Error> {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let command = Command::parse(
            &nonempty("CNI_COMMAND").ok_or_else(|| Error::env("CNI_COMMAND", "not set"))?,
        )?;
        let attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = nonempty("CNI_CONTAINERID");
        let netns = nonempty("CNI_NETNS").map(PathBuf::from);
        let ifname = nonempty("CNI_IFNAME");
        let path = nonempty("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        if attachment {
            let id = container_id
                .as_deref()
                .ok_or_else(|| Error::env("CNI_CONTAINERID", "not set"))?;
            validate_container_id(id)?;
            let name = ifname
                .as_deref()
                .ok_or_else(|| Error::env("CNI_IFNAME", "not set"))?;
            validate_ifname("CNI_IFNAME", name).map_err(|r| Error::env("CNI_IFNAME", r))?;
        }
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return Err(Error::env("CNI_NETNS", "not set"));
        }
        if let Some(ns) = &netns {
            if !ns.is_absolute() {
                return Err(Error::env(
                    "CNI_NETNS",
                    format!("{} is not an absolute path", ns.display()),
                ));
            }
        }
        if command != Command::Version && get("CNI_PATH").is_none() {
            return Err(Error::env("CNI_PATH", "not set"));
        }
        let args = parse_args(get("CNI_ARGS").as_deref().unwrap_or(""))?;
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }

    /// The container id; only call for commands that require it (checked by `parse`).
    pub fn container_id(&self) -> &str {
        self.container_id.as_deref().unwrap_or_default()
    }

    /// The interface name; only call for commands that require it (checked by `parse`).
    pub fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or_default()
    }
}

/// The spec: a container id is non-empty, starts with an alphanumeric character and holds only
/// alphanumerics, `_`, `.` and `-`.
fn validate_container_id(id: &str) -> Result<(), Error> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(Error::env(
            "CNI_CONTAINERID",
            format!("{id:?} must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"),
        ));
    }
    Ok(())
}

/// Linux interface names: 1–15 bytes, not "." or "..", no '/', ':' or whitespace.
pub fn validate_ifname(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("{what} {name:?} must be 1 to 15 bytes long"));
    }
    if name == "." || name == ".." {
        return Err(format!("{what} {name:?} is not a valid interface name"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{what} {name:?} must not contain '/', ':' or whitespace"
        ));
    }
    Ok(())
}

/// `CNI_ARGS`: `K=V` pairs separated by `;`.
fn parse_args(s: &str) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            Error::env("CNI_ARGS", format!("{pair:?} is not of the form KEY=VALUE"))
        })?;
        if k.is_empty() {
            return Err(Error::env("CNI_ARGS", format!("{pair:?} has an empty key")));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    /// The netns path for interfaces inside the pod; `None` for host interfaces.
    pub sandbox: Option<String>,
    /// 1.1.0 only.
    pub mtu: Option<u32>,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

/// An ADD result, independent of the version it is written in.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    /// The `dns` object, passed through as given.
    pub dns: Option<Value>,
}

impl CniResult {
    /// The result in the shape of `version`: 0.4.0 carries `version` in each IP; 1.1.0 may
    /// carry interface MTUs.
    pub fn to_json(&self, version: SpecVersion) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                if let Some(mac) = &i.mac {
                    o.insert("mac".into(), json!(mac));
                }
                if let Some(sb) = &i.sandbox {
                    o.insert("sandbox".into(), json!(sb));
                }
                if let (Some(mtu), SpecVersion::V1_1_0) = (i.mtu, version) {
                    o.insert("mtu".into(), json!(mtu));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version == SpecVersion::V0_4_0 {
                    o.insert(
                        "version".into(),
                        json!(if ip.address.is_ipv4() { "4" } else { "6" }),
                    );
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        out.insert("ips".into(), Value::Array(ips));
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert("dns".into(), self.dns.clone().unwrap_or_else(|| json!({})));
        Value::Object(out)
    }

    /// Reads a result (a `prevResult`) written in any supported version's shape. `field` names
    /// where it came from in error messages.
    pub fn from_json(field: &str, v: &Value) -> Result<CniResult, Error> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::config(field, "must be an object"))?;
        let mut res = CniResult::default();
        for (i, itf) in array(obj, field, "interfaces")?.iter().enumerate() {
            let f = format!("{field}.interfaces[{i}]");
            let o = itf
                .as_object()
                .ok_or_else(|| Error::config(&f, "must be an object"))?;
            res.interfaces.push(Interface {
                name: string(o, &f, "name")?
                    .ok_or_else(|| Error::config(format!("{f}.name"), "missing"))?,
                mac: string(o, &f, "mac")?,
                sandbox: string(o, &f, "sandbox")?,
                mtu: match o.get("mtu") {
                    None | Some(Value::Null) => None,
                    Some(m) => Some(
                        m.as_u64()
                            .and_then(|m| u32::try_from(m).ok())
                            .ok_or_else(|| Error::config(format!("{f}.mtu"), "must be a number"))?,
                    ),
                },
            });
        }
        for (i, ip) in array(obj, field, "ips")?.iter().enumerate() {
            let f = format!("{field}.ips[{i}]");
            let o = ip
                .as_object()
                .ok_or_else(|| Error::config(&f, "must be an object"))?;
            if string(o, &f, "address")?.is_some_and(|a| !a.contains('/')) {
                return Err(Error::config(
                    format!("{f}.address"),
                    "must be in CIDR notation (address/prefix)",
                ));
            }
            let address: IpNetwork = parse_str(o, &f, "address")?
                .ok_or_else(|| Error::config(format!("{f}.address"), "missing"))?;
            if let Some(ver) = string(o, &f, "version")? {
                let want = if address.is_ipv4() { "4" } else { "6" };
                if ver != want {
                    return Err(Error::config(
                        format!("{f}.version"),
                        format!("{ver:?} does not match address {address}"),
                    ));
                }
            }
            let interface = match o.get("interface") {
                None | Some(Value::Null) => None,
                Some(x) => {
                    let idx = x.as_u64().ok_or_else(|| {
                        Error::config(format!("{f}.interface"), "must be an index")
                    })? as usize;
                    if idx >= res.interfaces.len() {
                        return Err(Error::config(
                            format!("{f}.interface"),
                            format!("index {idx} is out of range"),
                        ));
                    }
                    Some(idx)
                }
            };
            res.ips.push(IpConfig {
                address,
                gateway: parse_str(o, &f, "gateway")?,
                interface,
            });
        }
        for (i, r) in array(obj, field, "routes")?.iter().enumerate() {
            let f = format!("{field}.routes[{i}]");
            let o = r
                .as_object()
                .ok_or_else(|| Error::config(&f, "must be an object"))?;
            res.routes.push(Route {
                dst: parse_str(o, &f, "dst")?
                    .ok_or_else(|| Error::config(format!("{f}.dst"), "missing"))?,
                gw: parse_str(o, &f, "gw")?,
            });
        }
        res.dns = obj.get("dns").cloned().filter(|d| !d.is_null());
        Ok(res)
    }
}

fn array<'a>(o: &'a Map<String, Value>, field: &str, key: &str) -> Result<&'a [Value], Error> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(Error::config(format!("{field}.{key}"), "must be an array")),
    }
}

fn string(o: &Map<String, Value>, field: &str, key: &str) -> Result<Option<String>, Error> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::config(format!("{field}.{key}"), "must be a string")),
    }
}

fn parse_str<T: std::str::FromStr>(
    o: &Map<String, Value>,
    field: &str,
    key: &str,
) -> Result<Option<T>, Error>
where
    T::Err: std::fmt::Display,
{
    match string(o, field, key)? {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|e| Error::config(format!("{field}.{key}"), format!("{s:?}: {e}"))),
    }
}

/// The VERSION answer.
pub fn version_info(config_version: Option<SpecVersion>) -> Value {
    json!({
        "cniVersion": config_version.unwrap_or(SpecVersion::LATEST).as_str(),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn env_of(pairs: &[(&str, &str)]) -> Result<Env, Error> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::parse(|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        (
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;IgnoreUnknown=1",
        ),
    ];

    fn without(key: &str) -> Vec<(&'static str, &'static str)> {
        ADD.iter().copied().filter(|(k, _)| *k != key).collect()
    }

    fn with(key: &'static str, val: &'static str) -> Vec<(&'static str, &'static str)> {
        let mut v = without(key);
        v.push((key, val));
        v
    }

    #[test]
    fn parses_a_full_add_environment() {
        let e = env_of(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id(), "abc123");
        assert_eq!(e.ifname(), "eth0");
        assert_eq!(
            e.netns.as_deref(),
            Some(std::path::Path::new("/run/netns/x"))
        );
        assert_eq!(e.path.len(), 2);
        assert_eq!(e.args["K8S_POD_NAME"], "web-0");
        assert_eq!(e.args["K8S_POD_NAMESPACE"], "default");
    }

    #[test]
    fn missing_or_bad_variables_are_code_4_naming_the_variable() {
        for (vars, var) in [
            (without("CNI_COMMAND"), "CNI_COMMAND"),
            (with("CNI_COMMAND", "FROB"), "CNI_COMMAND"),
            (without("CNI_CONTAINERID"), "CNI_CONTAINERID"),
            (with("CNI_CONTAINERID", "-bad"), "CNI_CONTAINERID"),
            (with("CNI_CONTAINERID", "a/b"), "CNI_CONTAINERID"),
            (without("CNI_NETNS"), "CNI_NETNS"),
            (with("CNI_NETNS", "relative/ns"), "CNI_NETNS"),
            (without("CNI_IFNAME"), "CNI_IFNAME"),
            (
                with("CNI_IFNAME", "a-very-long-interface-name"),
                "CNI_IFNAME",
            ),
            (with("CNI_IFNAME", "et/h0"), "CNI_IFNAME"),
            (without("CNI_PATH"), "CNI_PATH"),
            (with("CNI_ARGS", "K8S_POD_NAME"), "CNI_ARGS"),
            (with("CNI_ARGS", "=x"), "CNI_ARGS"),
        ] {
            let err = env_of(&vars).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidEnvironment, "{var}: {err}");
            assert!(err.to_string().contains(var), "{err} should name {var}");
        }
    }

    #[test]
    fn del_needs_no_netns_and_version_needs_nothing_else() {
        let mut del = without("CNI_NETNS");
        del.retain(|(k, _)| *k != "CNI_COMMAND");
        del.push(("CNI_COMMAND", "DEL"));
        assert_eq!(env_of(&del).unwrap().netns, None);
        assert_eq!(
            env_of(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
        let gc = env_of(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")]).unwrap();
        assert_eq!(gc.command, Command::Gc);
    }

    #[test]
    fn versions_parse_and_gate_commands() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(SpecVersion::parse("cniVersion", v).unwrap().as_str(), v);
        }
        for bad in ["0.3.1", "1.2.0", "", "1.0"] {
            let err = SpecVersion::parse("cniVersion", bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::IncompatibleVersion);
        }
        assert!(SpecVersion::V1_0_0.allows(Command::Gc).is_err());
        assert!(SpecVersion::V1_0_0.allows(Command::Status).is_err());
        assert!(SpecVersion::V1_1_0.allows(Command::Gc).is_ok());
        assert!(SpecVersion::V0_4_0.allows(Command::Check).is_ok());
        assert_eq!(
            version_info(None)["supportedVersions"],
            json!(["0.4.0", "1.0.0", "1.1.0"])
        );
    }

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "reef0123".into(),
                    mac: Some("ee:ee:ee:ee:ee:ee".into()),
                    sandbox: None,
                    mtu: Some(1480),
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    sandbox: Some("/run/netns/x".into()),
                    mtu: Some(1480),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.0.5/32".parse().unwrap(),
                    gateway: Some("169.254.1.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/128".parse().unwrap(),
                    gateway: Some("fe80::ecee:eeff:feee:eeee".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
            }],
            dns: None,
        }
    }

    #[test]
    fn results_take_the_shape_of_their_version() {
        let r = sample();
        let v04 = r.to_json(SpecVersion::V0_4_0);
        assert_eq!(v04["cniVersion"], "0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["ips"][1]["version"], "6");
        assert_eq!(v04["ips"][0]["interface"], 1);
        assert!(v04["interfaces"][0].get("mtu").is_none());
        let v10 = r.to_json(SpecVersion::V1_0_0);
        assert!(v10["ips"][0].get("version").is_none());
        assert!(v10["interfaces"][1].get("mtu").is_none());
        let v11 = r.to_json(SpecVersion::V1_1_0);
        assert_eq!(v11["interfaces"][1]["mtu"], 1480);
        assert_eq!(v11["interfaces"][1]["sandbox"], "/run/netns/x");
        for v in SpecVersion::ALL {
            let back = CniResult::from_json("prevResult", &r.to_json(v)).unwrap();
            assert_eq!(back.ips, r.ips, "{v:?}");
            assert_eq!(back.routes, r.routes);
            assert_eq!(back.interfaces.len(), 2);
        }
    }

    #[test]
    fn bad_prev_results_name_the_field() {
        for (bad, field) in [
            (json!([]), "prevResult"),
            (json!({"ips": {}}), "prevResult.ips"),
            (
                json!({"ips": [{"address": "10.0.0.1"}]}),
                "prevResult.ips[0].address",
            ),
            (
                json!({"ips": [{"address": "10.0.0.1/32", "version": "6"}]}),
                "prevResult.ips[0].version",
            ),
            (
                json!({"ips": [{"address": "10.0.0.1/32", "interface": 3}]}),
                "prevResult.ips[0].interface",
            ),
            (
                json!({"routes": [{"gw": "10.0.0.1"}]}),
                "prevResult.routes[0].dst",
            ),
            (
                json!({"interfaces": [{"mac": "x"}]}),
                "prevResult.interfaces[0].name",
            ),
        ] {
            let err = CniResult::from_json("prevResult", &bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidConfig);
            assert!(err.to_string().contains(field), "{err} should name {field}");
        }
    }
}
