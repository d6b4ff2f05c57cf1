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
            let v = match (check_ref(&name, &key), self) {
                (Err(e), _) => Err(e),
                (Ok(()), Secrets::Files(dir)) => read_file(dir, &name, &key),
                (Ok(()), Secrets::Kubernetes { api, namespace }) => {
                    read_api(api, namespace, &name, &key).await
                }
            };
            out.insert((name, key), v);
        }
        out
    }
}

/// The longest Secret name and key Kubernetes accepts.
const MAX_NAME: usize = 253;

/// Checks a BGPPeer's Secret reference the way the Kubernetes API does, so that in files mode
/// `<dir>/<name>/<key>` stays inside `<dir>` (a name `../../etc` would read any file root can).
/// The name is a DNS-1123 subdomain; the key is `[-._a-zA-Z0-9]+` other than `.` and `..`.
pub fn check_ref(name: &str, key: &str) -> Result<(), String> {
    let subdomain = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        });
    if !subdomain {
        return Err(format!(
            "spec.password.name {name:?} is not a Secret name (lowercase letters, digits, '-' \
             and '.', starting and ending with a letter or digit, at most {MAX_NAME} \
             characters); name the Secret as `kubectl get secret` shows it"
        ));
    }
    let key_ok = !key.is_empty()
        && key.len() <= MAX_NAME
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !key_ok {
        return Err(format!(
            "spec.password.key {key:?} is not a Secret key (letters, digits, '-', '_' and \
             '.', not \".\" or \"..\", at most {MAX_NAME} characters); name a key of \
             Secret {name}"
        ));
    }
    Ok(())
}

/// A password file; trailing newlines are not part of the password.
pub fn read_file(dir: &Path, name: &str, key: &str) -> Result<String, String> {
    check_ref(name, key)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_a_secret_reference_cannot_leave_the_secrets_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("secrets");
        std::fs::create_dir_all(dir.join("mesh")).unwrap();
        std::fs::write(dir.join("mesh/password"), "s3cret\n").unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/shadow"), "root:hash\n").unwrap();

        assert_eq!(read_file(&dir, "mesh", "password"), Ok("s3cret".into()));
        let e = read_file(&dir, "..", "etc/shadow").unwrap_err();
        assert!(
            e.starts_with("spec.password.name \"..\" is not a Secret name"),
            "{e}"
        );
        let e = read_file(&dir, "mesh", "../../etc/shadow").unwrap_err();
        assert!(
            e.starts_with("spec.password.key \"../../etc/shadow\" is not a Secret key"),
            "{e}"
        );
        let e = read_file(&dir, "../etc", "shadow").unwrap_err();
        assert!(e.contains("spec.password.name"), "{e}");
    }

    #[test]
    fn secret_names_and_keys_are_checked_like_kubernetes_does() {
        let long = "a".repeat(254);
        for name in ["bgp", "bgp-secrets", "a.b-c.d1", "0", &"a".repeat(253)] {
            assert_eq!(check_ref(name, "k"), Ok(()), "{name}");
        }
        for name in [
            "", ".", "..", "a..b", ".a", "a.", "-a", "a-", "A", "a/b", "a_b", &long,
        ] {
            let e = check_ref(name, "k").unwrap_err();
            assert!(e.starts_with("spec.password.name "), "{name}: {e}");
        }
        for key in ["password", ".hidden", "a.b", "A_b-9", "..."] {
            assert_eq!(check_ref("s", key), Ok(()), "{key}");
        }
        for key in ["", ".", "..", "a/b", "/etc", "a b", "é", &long] {
            let e = check_ref("s", key).unwrap_err();
            assert!(e.starts_with("spec.password.key "), "{key}: {e}");
        }
    }

    #[tokio::test]
    async fn a_bad_reference_is_a_problem_and_no_file_is_read() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("stolen"), "x").unwrap();
        let dir = root.path().join("secrets");
        std::fs::create_dir(&dir).unwrap();
        let spec: reef_config::crds::BgpPeerSpec = serde_json::from_value(serde_json::json!({
            "peerIP": "192.0.2.1",
            "asNumber": 64512,
            "password": { "name": "..", "key": "stolen" },
        }))
        .unwrap();
        let view = View {
            peers: vec![reef_ipam::Typed::new("rogue", spec)],
            ..Default::default()
        };
        let got = Secrets::Files(dir).read_all(&view).await;
        let e = got[&("..".to_string(), "stolen".to_string())]
            .clone()
            .unwrap_err();
        assert!(e.starts_with("spec.password.name \"..\""), "{e}");
    }
}
