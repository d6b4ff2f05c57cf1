//! Where BGP passwords come from. A BGPPeer names a Secret and a key; the agent reads it:
//! - with the Kubernetes datastore, from the API (Secrets in the agent's own namespace —
//!   `POD_NAMESPACE`, else the service account's, else `reef-system` — which deploy/reef.yaml's
//!   Role lets it get, and nothing else);
//! - with the embedded datastore, from files `<dir>/<secret>/<key>` (the layout Kubernetes
//!   uses when it mounts a Secret; /etc/reef/secrets, or `REEF_SECRETS_DIR`).
//!
//! BGPConfiguration's `nodeToNodeMeshPassword` is read the same way.
//!
//! deploy/reef.yaml's Role names the Secrets the agent may get (`resourceNames`: the mesh's
//! `reef-bgp-mesh`); a BGPPeer's Secret must be added there by the operator, as Calico asks.
//! A 403 from the API says exactly that ([`forbidden`]).
//!
//! Reading happens before the pure peer computation (`view::desired_peers`), which gets the
//! answers as a lookup table.

use std::collections::BTreeMap;
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

    /// Reads every password the view refers to: the BGPPeers' and the mesh's.
    pub async fn read_all(&self, view: &View) -> Lookup {
        // (name, key) → the field that refers to it first, for error messages.
        let mut wanted: BTreeMap<(String, String), &str> = BTreeMap::new();
        if let Some(r) = view
            .bgp
            .as_ref()
            .and_then(|b| b.node_to_node_mesh_password.as_ref())
        {
            wanted.insert((r.name.clone(), r.key.clone()), MESH_FIELD);
        }
        for r in view.peers.iter().filter_map(|p| p.spec.password.as_ref()) {
            wanted
                .entry((r.name.clone(), r.key.clone()))
                .or_insert(PEER_FIELD);
        }
        let mut out = Lookup::new();
        for ((name, key), field) in wanted {
            let v = match (check_ref(field, &name, &key), self) {
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
/// Where Secret references sit, for error messages.
const PEER_FIELD: &str = "spec.password";
const MESH_FIELD: &str = "spec.nodeToNodeMeshPassword";
/// The Role in deploy/reef.yaml that lists the Secrets the agent may read.
pub const ROLE: &str = "reef-node";

/// Checks a Secret reference (at `field`, e.g. `spec.password`) the way the Kubernetes API
/// does, so that in files mode `<dir>/<name>/<key>` stays inside `<dir>` (a name `../../etc`
/// would read any file root can). The name is a DNS-1123 subdomain; the key is
/// `[-._a-zA-Z0-9]+` other than `.` and `..`.
pub fn check_ref(field: &str, name: &str, key: &str) -> Result<(), String> {
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
            "{field}.name {name:?} is not a Secret name (lowercase letters, digits, '-' \
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
            "{field}.key {key:?} is not a Secret key (letters, digits, '-', '_' and \
             '.', not \".\" or \"..\", at most {MAX_NAME} characters); name a key of \
             Secret {name}"
        ));
    }
    Ok(())
}

/// A password file; trailing newlines are not part of the password.
pub fn read_file(dir: &Path, name: &str, key: &str) -> Result<String, String> {
    check_ref(PEER_FIELD, name, key)?;
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
        Err(e) => {
            let denied = matches!(
                e.downcast_ref::<kube::Error>(),
                Some(kube::Error::Api(s)) if s.code == 403
            );
            return Err(if denied {
                forbidden(ns, name)
            } else {
                format!("reading Secret {ns}/{name}: {}", crate::causes(&e))
            });
        }
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

/// What the agent says when the API refuses to let it read a Secret (HTTP 403): the Role
/// names the Secrets it may read, and the operator adds this one.
pub fn forbidden(ns: &str, name: &str) -> String {
    format!(
        "Secret {ns}/{name}: reef may not read it (403 Forbidden); reef reads only the Secrets \
         named in Role {ROLE} in {ns}: add \"{name}\" to that Role's resourceNames for \
         secrets (deploy/reef.yaml), e.g. `kubectl -n {ns} patch role {ROLE} --type=json -p \
         '[{{\"op\":\"add\",\"path\":\"/rules/0/resourceNames/-\",\"value\":\"{name}\"}}]'`"
    )
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
            assert_eq!(check_ref(PEER_FIELD, name, "k"), Ok(()), "{name}");
        }
        for name in [
            "", ".", "..", "a..b", ".a", "a.", "-a", "a-", "A", "a/b", "a_b", &long,
        ] {
            let e = check_ref(PEER_FIELD, name, "k").unwrap_err();
            assert!(e.starts_with("spec.password.name "), "{name}: {e}");
        }
        for key in ["password", ".hidden", "a.b", "A_b-9", "..."] {
            assert_eq!(check_ref(PEER_FIELD, "s", key), Ok(()), "{key}");
        }
        for key in ["", ".", "..", "a/b", "/etc", "a b", "é", &long] {
            let e = check_ref(PEER_FIELD, "s", key).unwrap_err();
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

    /// The mesh's Secret is read like a BGPPeer's, and a bad reference names the mesh field.
    #[tokio::test]
    async fn the_mesh_password_is_read_and_its_field_named() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("secrets");
        // The name deploy/reef.yaml's Role lets the agent read.
        const MESH_SECRET: &str = "reef-bgp-mesh";
        std::fs::create_dir_all(dir.join(MESH_SECRET)).unwrap();
        std::fs::write(dir.join(MESH_SECRET).join("password"), "m3sh\n").unwrap();
        let mut view = View {
            bgp: Some(reef_config::crds::BgpConfigurationSpec {
                node_to_node_mesh_password: Some(reef_config::crds::SecretKeyRef {
                    name: MESH_SECRET.into(),
                    key: "password".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = Secrets::Files(dir.clone()).read_all(&view).await;
        assert_eq!(
            got[&(MESH_SECRET.to_string(), "password".to_string())],
            Ok("m3sh".to_string())
        );
        view.bgp.as_mut().unwrap().node_to_node_mesh_password =
            Some(reef_config::crds::SecretKeyRef {
                name: "../x".into(),
                key: "password".into(),
            });
        let got = Secrets::Files(dir).read_all(&view).await;
        let e = got[&("../x".to_string(), "password".to_string())]
            .clone()
            .unwrap_err();
        assert!(
            e.starts_with("spec.nodeToNodeMeshPassword.name \"../x\" is not a Secret name"),
            "{e}"
        );
    }

    #[test]
    fn a_forbidden_secret_says_to_add_it_to_the_role() {
        let m = forbidden("reef-system", "tor-password");
        assert!(
            m.starts_with("Secret reef-system/tor-password: reef may not read it (403 Forbidden)"),
            "{m}"
        );
        assert!(
            m.contains(
                "add \"tor-password\" to that Role's resourceNames for secrets (deploy/reef.yaml)"
            ) && m.contains("Role reef-node in reef-system"),
            "{m}"
        );
        // The kubectl command given is one that works: valid JSON patch on the secrets rule.
        let patch = m
            .split_once("-p '")
            .and_then(|(_, rest)| rest.split_once("'`"))
            .unwrap()
            .0;
        let v: serde_json::Value = serde_json::from_str(patch).unwrap();
        assert_eq!(v[0]["path"], "/rules/0/resourceNames/-");
        assert_eq!(v[0]["value"], "tor-password");
    }

    /// An API server that answers 403 to the Secret's GET, as Kubernetes does when the Role
    /// does not name it: the agent's problem is the message above.
    #[tokio::test]
    async fn a_403_from_the_api_is_reported_with_the_role_to_change() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"secrets \"tor-password\" is forbidden: User \"system:serviceaccount:reef-system:reef-node\" cannot get resource \"secrets\" in API group \"\" in the namespace \"reef-system\"","reason":"Forbidden","details":{"name":"tor-password","kind":"secrets"},"code":403}"#;
                let resp = format!(
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let api: Api<Secret> = Api::namespaced(client, "reef-system");
        let e = read_api(&api, "reef-system", "tor-password", "password")
            .await
            .unwrap_err();
        server.abort();
        assert_eq!(e, forbidden("reef-system", "tor-password"));
    }
}
