//! The node config file the agent and the CNI plugin read (YAML, by default
//! `/etc/reef/node.yaml`).
//!
//! ```yaml
//! nodeName: node-1
//! datastore:
//!   embedded: { path: /var/lib/reef/store.db }   # or: kubernetes: { kubeconfig: ~/.kube/config }
//! address: 192.168.1.10/24
//! asNumber: 64512
//! ```
//!
//! Every default lives in [`defaults`]; a field left out takes it. A `datastore` left out is
//! chosen from the environment when the file is read ([`Datastore::detect`]): a kubeconfig
//! named by `KUBECONFIG`, or the in-cluster service account, means Kubernetes; otherwise the
//! embedded file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::schema::Problems;
use crate::Error;

/// The defaults of the node config file, in one place.
pub mod defaults {
    /// Where the agent and the CNI plugin look for the node config file.
    pub const CONFIG_PATH: &str = "/etc/reef/node.yaml";
    /// The embedded datastore's file.
    pub const EMBEDDED_PATH: &str = "/var/lib/reef/store.db";
    /// The agent's control socket (the CLI talks to the agent through it).
    pub const AGENT_SOCKET: &str = "/run/reef/agent.sock";
    /// Health, readiness and Prometheus metrics.
    pub const METRICS_ADDRESS: &str = "127.0.0.1:9099";
    /// The file the agent writes the pod MTU to and the CNI plugin reads.
    pub const MTU_FILE: &str = "/run/reef/mtu";
    /// MTU of the parent interface when it cannot be read.
    pub const PARENT_MTU: u32 = 1500;
    /// Bytes an IP-in-IP header takes.
    pub const IPIP_OVERHEAD: u32 = 20;
    /// Route protocol number on every route reef writes (rtnetlink `rtm_protocol`); unassigned
    /// in iproute2's rt_protos and not used by the kernel, BIRD (12), FRR (11, 186-192), Calico
    /// (80) nor other common daemons. The same as felix-lite's own default.
    pub const ROUTE_PROTOCOL: u8 = 201;
    /// Name of the IP-in-IP device.
    pub const TUNNEL_DEVICE: &str = "tunl0";
    /// Log filter (tracing-subscriber EnvFilter syntax).
    pub const LOG_LEVEL: &str = "info";
    /// CNI network name reef allocates under (part of every pod's handle).
    pub const CNI_NETWORK: &str = "reef";
    /// The service account token the kubelet mounts into a pod; with `KUBERNETES_SERVICE_HOST`
    /// it means reef runs in a cluster.
    pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
}

/// Where reef keeps its state. In YAML, a map with exactly one of the keys `kubernetes` and
/// `embedded`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    try_from = "DatastoreRepr"
)]
pub enum Datastore {
    /// The Kubernetes API: a kubeconfig file, or the in-cluster service account when none.
    Kubernetes {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kubeconfig: Option<PathBuf>,
    },
    /// One file on this machine, shared by every reef process on it.
    Embedded {
        #[serde(default = "default_embedded_path")]
        path: PathBuf,
    },
}

/// serde_yaml spells enums as YAML tags (`!embedded`); people write a one-key map.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DatastoreRepr {
    kubernetes: Option<KubernetesRepr>,
    embedded: Option<EmbeddedRepr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KubernetesRepr {
    #[serde(default)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddedRepr {
    #[serde(default = "default_embedded_path")]
    path: PathBuf,
}

impl TryFrom<DatastoreRepr> for Datastore {
    type Error = &'static str;
    fn try_from(r: DatastoreRepr) -> Result<Self, Self::Error> {
        match (r.kubernetes, r.embedded) {
            (Some(k), None) => Ok(Datastore::Kubernetes {
                kubeconfig: k.kubeconfig,
            }),
            (None, Some(e)) => Ok(Datastore::Embedded { path: e.path }),
            _ => Err("set exactly one of `kubernetes` and `embedded`"),
        }
    }
}

fn default_embedded_path() -> PathBuf {
    PathBuf::from(defaults::EMBEDDED_PATH)
}

/// What the automatic datastore choice looks at, read once from the process
/// ([`DatastoreEnv::from_process`]) or given by a test.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatastoreEnv {
    /// The files `KUBECONFIG` names (`:`-separated, empty entries skipped), each with whether
    /// it exists.
    pub kubeconfig: Vec<(PathBuf, bool)>,
    /// `KUBERNETES_SERVICE_HOST` is set (the kubelet sets it in every pod).
    pub service_host: bool,
    /// The service account token ([`defaults::SERVICE_ACCOUNT_TOKEN`]) exists.
    pub service_account_token: bool,
}

impl DatastoreEnv {
    /// Reads `KUBECONFIG`, `KUBERNETES_SERVICE_HOST` and whether the token file exists.
    pub fn from_process() -> Self {
        let kubeconfig = std::env::var_os("KUBECONFIG")
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(|p| {
                        let exists = p.is_file();
                        (p, exists)
                    })
                    .collect()
            })
            .unwrap_or_default();
        DatastoreEnv {
            kubeconfig,
            service_host: std::env::var_os("KUBERNETES_SERVICE_HOST")
                .is_some_and(|h| !h.is_empty()),
            service_account_token: Path::new(defaults::SERVICE_ACCOUNT_TOKEN).is_file(),
        }
    }
}

impl Datastore {
    /// The datastore for a node config that names none: a kubeconfig from `KUBECONFIG` →
    /// Kubernetes with it; else in a pod (`KUBERNETES_SERVICE_HOST` and the service account
    /// token) → Kubernetes in-cluster; else the embedded file at its default path.
    /// `~/.kube/config` alone does not count: a developer's kubeconfig for some other cluster
    /// must not silently become reef's store. A half-present choice (a `KUBECONFIG` file that
    /// does not exist, a pod without its token) is an error rather than a silent fallback to
    /// another store.
    pub fn detect(env: &DatastoreEnv) -> Result<Datastore, crate::FieldError> {
        let problem = |problem: String, fix: &str| {
            crate::FieldError {
            field: "datastore".into(),
            problem: format!("left out, so chosen from the environment, but {problem}"),
            fix: format!(
                "{fix}, or name the store in the node config (datastore: {{embedded: {{path: ...}}}} or {{kubernetes: {{kubeconfig: ...}}}})"
            ),
        }
        };
        if !env.kubeconfig.is_empty() {
            if let Some((p, _)) = env.kubeconfig.iter().find(|(_, exists)| !exists) {
                return Err(problem(
                    format!("KUBECONFIG names {}, which does not exist", p.display()),
                    "point KUBECONFIG at an existing kubeconfig, unset it to use the embedded store",
                ));
            }
            return Ok(Datastore::Kubernetes {
                // Several files are merged the way kubectl does (by the client's inference).
                kubeconfig: match env.kubeconfig.as_slice() {
                    [(one, _)] => Some(one.clone()),
                    _ => None,
                },
            });
        }
        if env.service_host {
            if !env.service_account_token {
                return Err(problem(
                    format!(
                        "KUBERNETES_SERVICE_HOST is set and the service account token {} is missing",
                        defaults::SERVICE_ACCOUNT_TOKEN
                    ),
                    "mount the token (automountServiceAccountToken: true)",
                ));
            }
            return Ok(Datastore::Kubernetes { kubeconfig: None });
        }
        Ok(Datastore::default())
    }
}

impl Default for Datastore {
    fn default() -> Self {
        Datastore::Embedded {
            path: default_embedded_path(),
        }
    }
}

/// The node config file.
///
/// Unknown fields are refused (here and in `Datastore`), unlike the datastore's types in
/// `crds`: this file is written by the operator for this node's own reef, so a field this
/// reef does not know is a typo (`mtuu`), and silently running without it would be worse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name (the Kubernetes node name).
    pub node_name: String,
    /// Left out: chosen from the environment when the file is read ([`Datastore::detect`]).
    #[serde(default)]
    pub datastore: Datastore,
    /// The node's IPv4 address with its subnet's prefix length, e.g. 192.168.1.10/24.
    pub address: IpNetwork,
    /// The node's IPv6 address with prefix length, for dual-stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_v6: Option<IpNetwork>,
    /// The node's AS (default: the cluster's, from BGPConfiguration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// The interface that carries `address` (default: found from the address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Pod MTU (default: the parent interface's MTU less the IP-in-IP header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default = "d_mtu_file")]
    pub mtu_file: PathBuf,
    #[serde(default = "d_agent_socket")]
    pub agent_socket: PathBuf,
    #[serde(default = "d_metrics")]
    pub metrics_address: SocketAddr,
    #[serde(default = "d_route_protocol")]
    pub route_protocol: u8,
    #[serde(default = "d_tunnel_device")]
    pub tunnel_device: String,
    /// Labels of the node (embedded datastore; with Kubernetes the Node object's labels are
    /// used), matched by pool and peer node selectors.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default = "d_cni_network")]
    pub cni_network: String,
    #[serde(default = "d_log_level")]
    pub log_level: String,
}

/// Whether the (already parsed) YAML has a top-level `datastore` key: serde's default cannot
/// tell "left out" from "given as the default".
fn names_datastore(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Keys {
        datastore: Option<serde::de::IgnoredAny>,
    }
    serde_yaml::from_str::<Keys>(text).is_ok_and(|k| k.datastore.is_some())
}

fn d_mtu_file() -> PathBuf {
    PathBuf::from(defaults::MTU_FILE)
}
fn d_agent_socket() -> PathBuf {
    PathBuf::from(defaults::AGENT_SOCKET)
}
fn d_metrics() -> SocketAddr {
    defaults::METRICS_ADDRESS
        .parse()
        .expect("the default metrics address is valid")
}
fn d_route_protocol() -> u8 {
    defaults::ROUTE_PROTOCOL
}
fn d_tunnel_device() -> String {
    defaults::TUNNEL_DEVICE.to_string()
}
fn d_cni_network() -> String {
    defaults::CNI_NETWORK.to_string()
}
fn d_log_level() -> String {
    defaults::LOG_LEVEL.to_string()
}

impl NodeConfig {
    /// A config with every default and the two fields that have none.
    pub fn new(node_name: impl Into<String>, address: IpNetwork) -> Self {
        NodeConfig {
            node_name: node_name.into(),
            datastore: Datastore::default(),
            address,
            address_v6: None,
            as_number: None,
            interface: None,
            mtu: None,
            mtu_file: d_mtu_file(),
            agent_socket: d_agent_socket(),
            metrics_address: d_metrics(),
            route_protocol: d_route_protocol(),
            tunnel_device: d_tunnel_device(),
            labels: Default::default(),
            cni_network: d_cni_network(),
            log_level: d_log_level(),
        }
    }

    /// Parses and validates YAML; `origin` (usually the file's path) is named in errors. A
    /// datastore left out is chosen from this process's environment.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, Error> {
        Self::from_yaml_in(text, origin, &DatastoreEnv::from_process())
    }

    /// [`NodeConfig::from_yaml`] with the environment given (tests).
    pub fn from_yaml_in(text: &str, origin: &str, env: &DatastoreEnv) -> Result<Self, Error> {
        let mut cfg: NodeConfig = serde_path_to_error::deserialize(
            serde_yaml::Deserializer::from_str(text),
        )
        .map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let (line, column) = inner
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            // Errors raised by a value's own parser (an address) carry no field; add it.
            let message = if path == "." || inner.to_string().starts_with(&format!("{path}:")) {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            };
            Error::Parse {
                origin: origin.to_string(),
                line,
                column,
                message,
            }
        })?;
        if !names_datastore(text) {
            cfg.datastore = Datastore::detect(env).map_err(|e| Error::Invalid {
                what: format!("node config {origin}"),
                problems: vec![e],
            })?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Read {
            path: path.to_path_buf(),
            cause: e,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// The pod MTU in force given the parent interface's MTU.
    pub fn pod_mtu(&self, parent_mtu: Option<u32>) -> u32 {
        self.mtu
            .unwrap_or(parent_mtu.unwrap_or(defaults::PARENT_MTU) - defaults::IPIP_OVERHEAD)
    }

    pub fn validate(&self) -> Result<(), Error> {
        let mut p = Problems::default();
        p.dns_label("nodeName", &self.node_name);
        if !self.address.is_ipv4() {
            p.add("address", format!("{} is not IPv4", self.address), "give the node's IPv4 address with prefix length, e.g. 192.168.1.10/24; IPv6 goes in addressV6");
        }
        if let Some(a) = &self.address_v6 {
            if !a.is_ipv6() {
                p.add(
                    "addressV6",
                    format!("{a} is not IPv6"),
                    "give an IPv6 address with prefix length, e.g. fd00::10/64",
                );
            }
        }
        if let Some(asn) = self.as_number {
            if matches!(asn, 0 | 23456 | 65535 | u32::MAX) {
                p.add(
                    "asNumber",
                    format!("AS {asn} is reserved"),
                    "use a private AS such as 64512-65534",
                );
            }
        }
        if let Some(i) = &self.interface {
            if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) {
                p.add("interface", format!("{i:?} is not an interface name"), "use the kernel's name of the interface (at most 15 characters, no '/' or spaces)");
            }
        }
        if let Some(m) = self.mtu {
            if !(576..=65515).contains(&m) {
                p.add("mtu", format!("{m} is out of range"), "use a value between 576 and 65515, or leave it out to derive it from the interface");
            }
        }
        if self.tunnel_device.is_empty() || self.tunnel_device.len() > 15 {
            p.add(
                "tunnelDevice",
                format!("{:?} is not an interface name", self.tunnel_device),
                "use at most 15 characters, e.g. tunl0",
            );
        }
        if self.route_protocol <= 4 {
            p.add(
                "routeProtocol",
                format!("{} is reserved for the kernel", self.route_protocol),
                "use a number above 4 that no other routing daemon on the node uses",
            );
        }
        if self.cni_network.is_empty() {
            p.add("cniNetwork", "empty", "name the CNI network, e.g. reef");
        }
        match &self.datastore {
            Datastore::Embedded { path } if path.as_os_str().is_empty() => p.add(
                "datastore.embedded.path",
                "empty",
                format!(
                    "give the store file's path, e.g. {}",
                    defaults::EMBEDDED_PATH
                ),
            ),
            Datastore::Kubernetes {
                kubeconfig: Some(k),
            } if k.as_os_str().is_empty() => p.add(
                "datastore.kubernetes.kubeconfig",
                "empty",
                "give a kubeconfig path, or leave it out to use the in-cluster service account",
            ),
            _ => {}
        }
        p.finish("node config")
    }
}
