//! Where BGP passwords come from. A BGPPeer names a Secret and a key; the agent reads it:
//! - with the Kubernetes datastore, from the API (Secrets in the agent's own namespace —
//!   `POD_NAMESPACE`, else the service account's, else `reef-system` — which deploy/reef.yaml's
//!   Role lets it get, and nothing else);
//! - with the embedded datastore, from files `<dir>/<secret>/<key>` (the layout Kubernetes
//!   uses when it mounts a Secret; /etc/reef/secrets, or `REEF_SECRETS_DIR`).
//!
//! Reading happens before the pure peer computation (`view::desired_peers`), which gets the
//! answers as a lookup table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use reef_config::node_config::{Datastore, NodeConfig};

use super::view::View;

/// (Secret name, key) → the password or why there is none.
pub type Lookup = BTreeMap<(String, String), Result<String, String>>;

const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// A dead API server must not stall the agent loop.
const TIMEOUT: Duration = Duration::from_secs(5);

pub enum Secrets {
    Files(PathBuf),
    Kubernetes {
        api: Box<Api<Secret>>,
        namespace: String,
    },
}

impl Secrets {
    pub async fn open(cfg: &NodeConfig, files: PathBuf) -> Result<Self> {
        let Datastore::Kubernetes { kubeconfig } = &cfg.datastore else {
            return Ok(Secrets::Files(files));
        };
        let config = reef_ipam::kubernetes::client_config(kubeconfig.as_deref()).await?;
        let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
        let namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())
            .or_else(|| {
                std::fs::read_to_string(NAMESPACE_FILE)
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "reef-system".into());
        Ok(Secrets::Kubernetes {
            api: Box::new(Api::namespaced(client, &namespace)),
            namespace,
        })
    }

    /// Reads every password the view's BGPPeers refer to.
    pub async fn read_all(&self, view: &View) -> Lookup {
        let wanted: BTreeSet<(String, String)> = view
            .peers
            .iter()
            .filter_map(|p| p.spec.password.as_ref())
            .map(|r| (r.name.clone(), r.key.clone()))
            .collect();
        let mut out = Lookup::new();
        for (name, key) in wanted {
            let v = match self {
                Secrets::Files(dir) => read_file(dir, &name, &key),
                Secrets::Kubernetes { api, namespace } => {
                    read_api(api, namespace, &name, &key).await
                }
            };
            out.insert((name, key), v);
        }
        out
    }
}

/// A password file; trailing newlines are not part of the password.
pub fn read_file(dir: &Path, name: &str, key: &str) -> Result<String, String> {
    let p = dir.join(name).join(key);
    std::fs::read_to_string(&p)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| {
            format!(
                "cannot read {}: {e} (put the Secret's key there)",
                p.display()
            )
        })
}

async fn read_api(api: &Api<Secret>, ns: &str, name: &str, key: &str) -> Result<String, String> {
    let got = tokio::time::timeout(TIMEOUT, api.get_opt(name))
        .await
        .map_err(|_| anyhow!("timed out after {TIMEOUT:?}"))
        .and_then(|r| r.map_err(anyhow::Error::from));
    let secret = match got {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(format!(
                "Secret {ns}/{name} does not exist (create it in {ns}, where reef may read Secrets)"
            ))
        }
        Err(e) => return Err(format!("reading Secret {ns}/{name}: {e:#}")),
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| format!("Secret {ns}/{name} has no key {key:?}"))?;
    String::from_utf8(bytes)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|_| format!("Secret {ns}/{name} key {key:?} is not UTF-8 text"))
}
