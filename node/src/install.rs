//! `reef install`: puts reef's CNI plugin on a node so the container runtime can use it. The
//! DaemonSet's init container runs it; the agent runs it again at start and keeps it true
//! (`reef node run --install`): the plugin's token is renewed before it expires and a file
//! someone removed comes back.
//!
//! Order matters. A runtime (containerd, CRI-O) takes the first conflist in its conf dir, and
//! the kubelet reports the node Ready once one is there, so everything the conflist needs
//! comes first — the plugin binaries and every plugin it chains, the node config, the
//! plugin's credentials — and the conflist last. Every file is written under a temporary name
//! in its own directory and renamed into place: the runtime may be executing the old binary or
//! reading the directory while we write.
//!
//! The host-side plugin is started by the runtime, outside any pod: it has no service account
//! of its own. Install asks the API server for a token of the `reef-cni` service account
//! (TokenRequest: bound to the service account, not to this pod, so it outlives the agent's
//! pod during an upgrade; 24 h) and writes a kubeconfig whose `tokenFile` names it; the agent
//! asks for a new one when 80 % of its lifetime has passed.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use ipnetwork::IpNetwork;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, PostParams};
use reef_config::node_config::{DatastoreEnv, NodeConfig};

/// The conflist reef installs unless told otherwise: reef-cni for the pod's interface and
/// address, portmap for `hostPort`s. `@NODE_CONFIG@` becomes the node config's host path.
pub const DEFAULT_CONFLIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "reef",
  "plugins": [
    { "type": "reef-cni", "nodeConfig": "@NODE_CONFIG@" },
    { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }
  ]
}
"#;

/// Plugins a runtime calls besides the conflist's: containerd brings up each pod's `lo` with
/// the `loopback` plugin.
const RUNTIME_PLUGINS: &[&str] = &["loopback"];
/// Plugins that are reef's own: always installed from the image (updated when they differ).
const OWN_PLUGINS: &[&str] = &["reef-cni", "reef-ipam"];
/// The lifetime asked of the plugin's token.
const TOKEN_SECONDS: i64 = 24 * 3600;
/// A dead API server must not hang the init container or the agent.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `reef install` reads and writes. Paths are as this process sees them (in the init
/// container the host's directories are mounted under /host); `host_etc_dir` is the same
/// directory as the host — and the plugin — sees it, written into the files that point at it.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// The node's CNI plugin directory (the host's /opt/cni/bin, mounted here).
    #[arg(long, env = "REEF_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The node's CNI config directory (the host's /etc/cni/net.d, mounted here).
    #[arg(long, env = "REEF_CNI_CONF_DIR", default_value = "/host/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The file name of reef's conflist in the CNI config directory.
    #[arg(long, env = "REEF_CONFLIST_NAME", default_value = "10-reef.conflist")]
    pub conflist_name: String,
    /// A conflist to install instead of the built-in one (reef-cni → portmap); `@NODE_CONFIG@`
    /// in it becomes the node config's path.
    #[arg(long, env = "REEF_CONFLIST")]
    pub conflist: Option<PathBuf>,
    /// Where the node config, the plugin's kubeconfig and its token go, as mounted here.
    #[arg(long, env = "REEF_ETC_DIR", default_value = "/host/etc/reef")]
    pub etc_dir: PathBuf,
    /// The same directory as the host sees it.
    #[arg(long, env = "REEF_HOST_ETC_DIR", default_value = "/etc/reef")]
    pub host_etc_dir: PathBuf,
    /// The plugin binaries this image carries.
    #[arg(long, env = "REEF_CNI_SOURCE_DIR", default_value = "/opt/reef/cni-bin")]
    pub source_dir: PathBuf,
    /// This node's name (the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The node's IP (the DaemonSet passes status.hostIP); the interface holding it gives the
    /// prefix length. Left out: the Node object's InternalIP.
    #[arg(long, env = "HOST_IP")]
    pub host_ip: Option<IpAddr>,
    /// The node address with prefix length, instead of finding it from the host IP.
    #[arg(long, env = "REEF_NODE_ADDRESS")]
    pub address: Option<IpNetwork>,
    /// Use this embedded store file instead of the Kubernetes API (clusters without one, the
    /// lab): no kubeconfig or token is written.
    #[arg(long, env = "REEF_EMBEDDED_STORE")]
    pub embedded_store: Option<PathBuf>,
    /// The kubeconfig install itself uses (default: the pod's service account).
    #[arg(long, env = "REEF_INSTALL_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The service account whose token the host-side plugin gets.
    #[arg(long, env = "REEF_CNI_SERVICE_ACCOUNT", default_value = "reef-cni")]
    pub cni_service_account: String,
    /// The namespace of that service account (default: this pod's).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
}

/// What one install did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// Files written (unchanged files are left alone).
    pub written: Vec<PathBuf>,
    /// When the plugin's token should be renewed (Kubernetes only).
    pub renew_at: Option<SystemTime>,
}

const NODE_CONFIG: &str = "node.yaml";
const KUBECONFIG: &str = "cni.kubeconfig";
const TOKEN: &str = "cni.token";

impl InstallArgs {
    fn node_config_host_path(&self) -> PathBuf {
        self.host_etc_dir.join(NODE_CONFIG)
    }

    /// The conflist's text with the node config path filled in.
    fn conflist_text(&self) -> Result<String> {
        let template = match &self.conflist {
            Some(p) => fs::read_to_string(p).with_context(|| {
                format!(
                    "reading the conflist {} (REEF_CONFLIST): give an existing file",
                    p.display()
                )
            })?,
            None => DEFAULT_CONFLIST.to_string(),
        };
        let path = self.node_config_host_path();
        let text = template.replace("@NODE_CONFIG@", &path.display().to_string());
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| anyhow!("the conflist is not valid JSON ({e}): fix REEF_CONFLIST"))?;
        Ok(text)
    }

    /// Checks the directories before anything is written: a missing mount is the usual
    /// mistake, and it must not leave half an install.
    fn check_dirs(&self) -> Result<()> {
        for (dir, what, host) in [
            (&self.cni_bin_dir, "CNI bin dir", "/opt/cni/bin"),
            (&self.cni_conf_dir, "CNI config dir", "/etc/cni/net.d"),
        ] {
            if !dir.is_dir() {
                bail!(
                    "the {what} {} does not exist: mount the host's {host} there (a hostPath volume) or set --{}",
                    dir.display(),
                    if what.contains("bin") { "cni-bin-dir" } else { "cni-conf-dir" }
                );
            }
            writable(dir, what)?;
        }
        fs::create_dir_all(&self.etc_dir).with_context(|| {
            format!(
                "creating {} for the node config: mount the host's {} there read-write",
                self.etc_dir.display(),
                self.host_etc_dir.display()
            )
        })?;
        writable(&self.etc_dir, "reef config dir")?;
        Ok(())
    }
}

/// Fails with a sentence naming `dir` when a file cannot be created in it.
fn writable(dir: &Path, what: &str) -> Result<()> {
    let probe = dir.join(format!(".reef-write-test.{}", std::process::id()));
    match fs::File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!(
            "cannot write to the {what} {}: {e}; mount it read-write",
            dir.display()
        ),
    }
}

/// Writes `bytes` to `dir/name` with `mode` unless it already holds exactly that: a temporary
/// file in the same directory, flushed, then renamed over the old one (atomic for readers,
/// safe while the old binary runs). Returns whether it wrote.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<bool> {
    let path = dir.join(name);
    if let Ok(old) = fs::read(&path) {
        let old_mode = fs::metadata(&path).map(|m| m.permissions().mode() & 0o7777);
        if old == bytes && old_mode.ok() == Some(mode) {
            return Ok(false);
        }
    }
    let tmp = dir.join(format!(".{name}.reef-new"));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given at open is masked by the umask; say it again.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(true)
}

/// The plugin types a conflist names (chained plugins and their IPAM plugins).
fn plugin_types(conflist: &str) -> BTreeSet<String> {
    let v: serde_json::Value = serde_json::from_str(conflist).unwrap_or_default();
    let mut out = BTreeSet::new();
    for p in v["plugins"].as_array().into_iter().flatten() {
        for t in [&p["type"], &p["ipam"]["type"]] {
            if let Some(t) = t.as_str() {
                out.insert(t.to_string());
            }
        }
    }
    out
}

/// Installs the binaries the conflist chains: reef's own always (when they differ), others
/// only when the node lacks them (the node's own copy wins, as with other network plugins).
fn install_binaries(a: &InstallArgs, conflist: &str, done: &mut Vec<PathBuf>) -> Result<()> {
    let mut want = plugin_types(conflist);
    want.extend(RUNTIME_PLUGINS.iter().map(|s| s.to_string()));
    want.extend(OWN_PLUGINS.iter().map(|s| s.to_string()));
    for name in want {
        let own = OWN_PLUGINS.contains(&name.as_str());
        let on_node = a.cni_bin_dir.join(&name);
        if !own && on_node.is_file() {
            continue;
        }
        let src = a.source_dir.join(&name);
        let bytes = fs::read(&src).map_err(|e| {
            anyhow!(
                "the conflist needs the CNI plugin {name}, which the node's {} lacks and this image does not carry ({}: {e}); install it on the node or fix the conflist",
                a.cni_bin_dir.display(),
                src.display()
            )
        })?;
        if write_atomic(&a.cni_bin_dir, &name, &bytes, 0o755)? {
            done.push(on_node);
        }
    }
    Ok(())
}

/// The node config text: name, address, interface, datastore.
fn node_config_text(
    name: &str,
    address: IpNetwork,
    interface: &str,
    address_v6: Option<IpNetwork>,
    datastore: &str,
) -> String {
    let mut s = format!(
        "# Written by `reef install`; rewritten at every start of the agent.\n\
         nodeName: {name}\naddress: {address}\ninterface: {interface}\n"
    );
    if let Some(v6) = address_v6 {
        s += &format!("addressV6: {v6}\n");
    }
    s += &format!("datastore: {datastore}\n");
    s
}

/// The interface holding `ip` in this network namespace and its prefix length.
pub fn interface_with(ip: IpAddr) -> Result<(String, u8)> {
    let mut nl = reef_cni::netlink::Netlink::new().context("opening rtnetlink")?;
    nl.interface_with(ip)
        .context("listing addresses")?
        .ok_or_else(|| anyhow!("no interface of this host has {ip}"))
}

/// The Kubernetes side of an install: the API client and what it reads and asks for.
struct Kube {
    client: kube::Client,
    config: kube::Config,
}

impl Kube {
    async fn connect(kubeconfig: Option<&Path>) -> Result<Kube> {
        let mut config = reef_ipam::kubernetes::client_config(kubeconfig).await?;
        config.connect_timeout = Some(API_TIMEOUT);
        config.read_timeout = Some(API_TIMEOUT);
        let client =
            kube::Client::try_from(config.clone()).context("building the Kubernetes client")?;
        Ok(Kube { client, config })
    }

    /// The node's addresses from its Node object: (IPv4, IPv6) InternalIPs, else ExternalIPs.
    async fn node_addresses(&self, node: &str) -> Result<(Option<IpAddr>, Option<IpAddr>)> {
        let n = Api::<Node>::all(self.client.clone())
            .get(node)
            .await
            .with_context(|| format!("reading the Node {node}"))?;
        let addrs = n.status.and_then(|s| s.addresses).unwrap_or_default();
        let pick = |v6: bool| {
            ["InternalIP", "ExternalIP"].iter().find_map(|kind| {
                addrs
                    .iter()
                    .filter(|a| a.type_ == *kind)
                    .filter_map(|a| a.address.parse::<IpAddr>().ok())
                    .find(|ip| ip.is_ipv6() == v6)
            })
        };
        Ok((pick(false), pick(true)))
    }

    /// A token for the plugin's service account and when to renew it.
    async fn plugin_token(&self, ns: &str, sa: &str) -> Result<(String, SystemTime)> {
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(TOKEN_SECONDS),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<ServiceAccount>::namespaced(self.client.clone(), ns)
            .create_token_request(sa, &PostParams::default(), &req)
            .await
            .with_context(|| {
                format!(
                    "asking for a token of the service account {ns}/{sa} (TokenRequest): does it exist, and may reef-node create serviceaccounts/token for it?"
                )
            })?;
        let status = answer
            .status
            .ok_or_else(|| anyhow!("the TokenRequest for {ns}/{sa} came back without a token"))?;
        let now = SystemTime::now();
        let expires: SystemTime = status.expiration_timestamp.0.into();
        let life = expires.duration_since(now).unwrap_or_default();
        // Renew at 80 % of the lifetime the API server granted (it may grant less than asked:
        // `--service-account-max-token-expiration`). A floor longer than the lifetime would
        // leave the plugin with an expired token; 1 s only keeps a server that grants nothing
        // from being asked in a loop.
        let renew = now + (life * 4 / 5).max(Duration::from_secs(1));
        Ok((status.token, renew))
    }

    /// The plugin's kubeconfig: this client's server and CA, the token from `token_path`.
    fn kubeconfig_text(&self, token_path: &Path) -> String {
        let server = self.config.cluster_url.to_string();
        let server = server.trim_end_matches('/');
        let ca = self
            .config
            .root_cert
            .as_ref()
            .map(|certs| {
                let pem: String = certs.iter().map(|der| pem_certificate(der)).collect();
                base64::engine::general_purpose::STANDARD.encode(pem)
            })
            .map(|b| format!("\n    certificate-authority-data: {b}"))
            .unwrap_or_default();
        format!(
            "# Written by `reef install` for the reef CNI plugin; the agent renews the token.\n\
             apiVersion: v1\nkind: Config\n\
             clusters:\n- name: cluster\n  cluster:\n    server: {server}{ca}\n\
             users:\n- name: reef-cni\n  user:\n    tokenFile: {}\n\
             contexts:\n- name: reef-cni\n  context:\n    cluster: cluster\n    user: reef-cni\n\
             current-context: reef-cni\n",
            token_path.display()
        )
    }
}

/// One DER certificate as PEM.
fn pem_certificate(der: &[u8]) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b.as_bytes().chunks(64) {
        s += std::str::from_utf8(chunk).unwrap_or_default();
        s.push('\n');
    }
    s + "-----END CERTIFICATE-----\n"
}

/// The namespace this pod runs in.
fn own_namespace(a: &InstallArgs) -> String {
    a.namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "reef-system".into())
}

/// Runs the install: checks, node config, credentials, binaries, and the conflist last.
pub async fn install(a: &InstallArgs) -> Result<Installed> {
    let node = a
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "no node name: set NODE_NAME (the DaemonSet passes spec.nodeName) or --node-name"
            )
        })?;
    a.check_dirs()?;
    let conflist = a.conflist_text()?;
    let mut done = Installed::default();

    let kube = match &a.embedded_store {
        Some(_) => None,
        None => Some(Kube::connect(a.kubeconfig.as_deref()).await?),
    };

    // The node's address: given, or the interface holding the host IP (from the downward
    // API, else the Node object).
    let (host_v4, host_v6) = match (&kube, a.host_ip) {
        (Some(k), None) if a.address.is_none() => k.node_addresses(&node).await?,
        (Some(k), Some(ip)) => {
            let v6 = k.node_addresses(&node).await.ok().and_then(|a| a.1);
            if ip.is_ipv4() {
                (Some(ip), v6)
            } else {
                (None, Some(ip))
            }
        }
        (_, ip) => (ip.filter(IpAddr::is_ipv4), ip.filter(IpAddr::is_ipv6)),
    };
    let (address, interface) = match a.address {
        Some(addr) => {
            let (ifname, _) = interface_with(addr.ip())?;
            (addr, ifname)
        }
        None => {
            let ip = host_v4.ok_or_else(|| {
                anyhow!(
                    "the node {node} has no IPv4 address: HOST_IP is not set (or not IPv4) and the Node's status.addresses has no IPv4 InternalIP or ExternalIP; reef needs one (set REEF_NODE_ADDRESS to give it)"
                )
            })?;
            let (ifname, prefix) = interface_with(ip).with_context(|| {
                format!("finding the interface of the node address {ip} (is this pod on the host network?)")
            })?;
            (IpNetwork::new(ip, prefix)?, ifname)
        }
    };
    let address_v6 = match host_v6 {
        Some(ip) => interface_with(ip)
            .ok()
            .map(|(_, prefix)| IpNetwork::new(ip, prefix))
            .transpose()?,
        None => None,
    };

    let datastore = match (&a.embedded_store, &kube) {
        (Some(p), _) => format!("{{ embedded: {{ path: {} }} }}", p.display()),
        _ => format!(
            "{{ kubernetes: {{ kubeconfig: {} }} }}",
            a.host_etc_dir.join(KUBECONFIG).display()
        ),
    };
    let text = node_config_text(&node, address, &interface, address_v6, &datastore);
    // The file must be one the agent and the plugin accept.
    NodeConfig::from_yaml_in(
        &text,
        "the node config reef install writes",
        &DatastoreEnv::default(),
    )
    .map_err(|e| anyhow!("{e}"))?;

    if let Some(k) = &kube {
        let ns = own_namespace(a);
        let (token, renew) = k.plugin_token(&ns, &a.cni_service_account).await?;
        if write_atomic(&a.etc_dir, TOKEN, token.as_bytes(), 0o600)? {
            done.written.push(a.etc_dir.join(TOKEN));
        }
        let kc = k.kubeconfig_text(&a.host_etc_dir.join(TOKEN));
        if write_atomic(&a.etc_dir, KUBECONFIG, kc.as_bytes(), 0o600)? {
            done.written.push(a.etc_dir.join(KUBECONFIG));
        }
        done.renew_at = Some(renew);
    }
    if write_atomic(&a.etc_dir, NODE_CONFIG, text.as_bytes(), 0o644)? {
        done.written.push(a.etc_dir.join(NODE_CONFIG));
    }
    install_binaries(a, &conflist, &mut done.written)?;
    // Last: from here on the runtime may use the plugin.
    if write_atomic(
        &a.cni_conf_dir,
        &a.conflist_name,
        conflist.as_bytes(),
        0o644,
    )? {
        done.written.push(a.cni_conf_dir.join(&a.conflist_name));
    }
    Ok(done)
}

/// Renews only the plugin's token (the agent, when it is due).
pub async fn renew_token(a: &InstallArgs) -> Result<SystemTime> {
    let k = Kube::connect(a.kubeconfig.as_deref()).await?;
    let (token, renew) = k
        .plugin_token(&own_namespace(a), &a.cni_service_account)
        .await?;
    write_atomic(&a.etc_dir, TOKEN, token.as_bytes(), 0o600)?;
    Ok(renew)
}

/// What is missing from an install (empty when complete): the agent's readiness.
pub fn missing(a: &InstallArgs) -> Vec<String> {
    let mut out = Vec::new();
    let conf = a.cni_conf_dir.join(&a.conflist_name);
    if !conf.is_file() {
        out.push(format!("CNI config {} not installed", conf.display()));
    }
    for name in OWN_PLUGINS {
        let p = a.cni_bin_dir.join(name);
        if !p.is_file() {
            out.push(format!("CNI plugin {} not installed", p.display()));
        }
    }
    if !a.etc_dir.join(NODE_CONFIG).is_file() {
        out.push(format!(
            "node config {} not written",
            a.etc_dir.join(NODE_CONFIG).display()
        ));
    }
    out
}

/// `reef install`: one install, for the init container.
pub fn run(a: &InstallArgs) -> Result<crate::Exit> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = rt.block_on(install(a))?;
    for p in &done.written {
        eprintln!("reef install: wrote {}", p.display());
    }
    eprintln!(
        "reef install: CNI plugin installed ({} files changed)",
        done.written.len()
    );
    Ok(crate::Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_types_include_chained_and_ipam_plugins() {
        let c = r#"{"plugins":[{"type":"bridge","ipam":{"type":"reef-ipam"}},{"type":"portmap"}]}"#;
        let t: Vec<String> = plugin_types(c).into_iter().collect();
        assert_eq!(t, ["bridge", "portmap", "reef-ipam"]);
    }

    #[test]
    fn write_atomic_replaces_and_skips_identical_content() {
        let d = tempfile::tempdir().unwrap();
        assert!(write_atomic(d.path(), "f", b"one", 0o600).unwrap());
        assert!(!write_atomic(d.path(), "f", b"one", 0o600).unwrap());
        assert!(write_atomic(d.path(), "f", b"two", 0o600).unwrap());
        assert_eq!(fs::read(d.path().join("f")).unwrap(), b"two");
        let mode = fs::metadata(d.path().join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary file is left.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_default_conflist_names_the_node_config() {
        let a = InstallArgs {
            cni_bin_dir: "/b".into(),
            cni_conf_dir: "/c".into(),
            conflist_name: "10-reef.conflist".into(),
            conflist: None,
            etc_dir: "/host/etc/reef".into(),
            host_etc_dir: "/etc/reef".into(),
            source_dir: "/s".into(),
            node_name: None,
            host_ip: None,
            address: None,
            embedded_store: None,
            kubeconfig: None,
            cni_service_account: "reef-cni".into(),
            namespace: None,
        };
        let c = a.conflist_text().unwrap();
        assert!(c.contains(r#""nodeConfig": "/etc/reef/node.yaml""#), "{c}");
        assert_eq!(
            plugin_types(&c).into_iter().collect::<Vec<_>>(),
            ["portmap", "reef-cni"]
        );
    }
}
