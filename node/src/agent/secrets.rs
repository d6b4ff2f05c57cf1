//! Where BGP passwords come from, kept by a task of their own so that the agent loop never
//! waits on the API for them. A BGPPeer (`spec.password`) or BGPConfiguration
//! (`spec.nodeToNodeMeshPassword`) names a Secret and a key; the loop hands the task the
//! references its view holds ([`wanted`], on a `watch`), and reads the task's answers, a
//! [`Passwords`] on another `watch`, when it configures peers:
//! - with the Kubernetes datastore, the task list+watches each Secret named, one by one, with
//!   the field selector `metadata.name=<name>` (the shared loop in `reflector`), in the
//!   agent's own namespace (`POD_NAMESPACE`, else the service account's, else `reef-system`).
//!   A Role that names Secrets (`resourceNames`) allows list and watch only with that field
//!   selector, so deploy/reef.yaml's Role lets the agent get, list and watch the Secrets it
//!   names and nothing else. A Secret's change reaches the agent as a watch event: no request
//!   per datastore change, none per peer sync. A name no longer referred to stops its watch;
//! - with the embedded datastore, from files `<dir>/<secret>/<key>` (the layout Kubernetes
//!   uses when it mounts a Secret; /etc/reef/secrets, or `REEF_SECRETS_DIR`), read when the
//!   references change and every [`FILES_EVERY`].
//!
//! ```text
//!  agent loop ──watch<Wanted> (name, key → field)──▶ secrets task ──one reflector per name──▶ API
//!      ▲                                               │ cache: name → data | missing | why not
//!      └──────watch<Passwords> (name, key → password | why not)┘
//! ```
//!
//! deploy/reef.yaml's Role names the Secrets the agent may read (`resourceNames`: the mesh's
//! `reef-bgp-mesh`); a BGPPeer's Secret must be added there by the operator, as Calico asks.
//! A 403 from the API says exactly that ([`forbidden`]). A failed request after a good
//! reading keeps the password last read (a blip of the API server does not drop sessions).
//!
//! The pure peer computation (`view::desired_peers`) gets the answers as a lookup table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use reef_config::node_config::{Datastore, NodeConfig};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::reflector::{reflect_selected, Change, Selector};
use super::view::View;

/// (Secret name, key) → the password or why there is none.
pub type Lookup = BTreeMap<(String, String), Result<String, String>>;

/// The Secret references a view holds: (name, key) → the field that refers to it first (for
/// error messages).
pub type Wanted = BTreeMap<(String, String), &'static str>;

const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// How long a Secret newly referred to may stay unread before its references count as failed
/// (the agent defers peer changes until then; a hung API server must not hold them longer).
pub const FIRST_READ: Duration = Duration::from_secs(5);
/// The wait after a failed list or watch of a Secret.
const RETRY: Duration = Duration::from_secs(5);
/// How often password files are read again (embedded datastore).
pub const FILES_EVERY: Duration = Duration::from_secs(5);

/// The secrets task's answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Passwords {
    pub lookup: Lookup,
    /// References whose Secret has not been read yet (at most [`FIRST_READ`] each).
    pub waiting: usize,
}

impl Passwords {
    /// Whether these answers cover `wanted`: every reference has one and none is waiting.
    pub fn ready_for(&self, wanted: &Wanted) -> bool {
        self.waiting == 0 && wanted.keys().all(|k| self.lookup.contains_key(k))
    }
}

/// Every password the view refers to: the BGPPeers' and the mesh's.
pub fn wanted(view: &View) -> Wanted {
    let mut wanted = Wanted::new();
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
    wanted
}

/// Where the task reads passwords from.
pub enum Source {
    Files(PathBuf),
    Kubernetes {
        api: Box<Api<Secret>>,
        namespace: String,
    },
}

impl Source {
    pub async fn open(cfg: &NodeConfig, files: PathBuf) -> Result<Self> {
        let Datastore::Kubernetes { kubeconfig } = &cfg.datastore else {
            return Ok(Source::Files(files));
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
        Ok(Source::Kubernetes {
            api: Box::new(Api::namespaced(client, &namespace)),
            namespace,
        })
    }
}

/// Starts the secrets task: it follows `wanted` and publishes the passwords. It ends (with
/// its watches) when `wanted`'s sender is dropped.
pub fn spawn(source: Source, wanted: watch::Receiver<Wanted>) -> watch::Receiver<Passwords> {
    let (tx, rx) = watch::channel(Passwords::default());
    match source {
        Source::Files(dir) => tokio::spawn(files(dir, wanted, tx)),
        Source::Kubernetes { api, namespace } => {
            tokio::spawn(kubernetes(*api, namespace, wanted, tx))
        }
    };
    rx
}

fn publish(tx: &watch::Sender<Passwords>, p: Passwords) {
    tx.send_if_modified(|old| {
        let changed = *old != p;
        *old = p;
        changed
    });
}

/// Files mode: every reference read again when they change and every [`FILES_EVERY`].
async fn files(dir: PathBuf, mut wanted: watch::Receiver<Wanted>, tx: watch::Sender<Passwords>) {
    loop {
        let want = wanted.borrow_and_update().clone();
        let lookup = want
            .into_iter()
            .map(|((name, key), field)| {
                let v = check_ref(field, &name, &key).and_then(|()| read_file(&dir, &name, &key));
                ((name, key), v)
            })
            .collect();
        publish(&tx, Passwords { lookup, waiting: 0 });
        tokio::select! {
            r = wanted.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(FILES_EVERY) => {}
        }
    }
}

/// What the watch of one Secret last said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Its keys and their values.
    Data(BTreeMap<String, Vec<u8>>),
    Missing,
    /// Why it cannot be read (a 403 says which Role to change).
    Failed(String),
}

/// One Secret watched: its reflector task and what it last said (None: nothing yet).
struct Watched {
    task: tokio::task::JoinHandle<()>,
    /// Tells this watch's reports from those of an earlier watch of the same name.
    generation: u64,
    seen: Option<Seen>,
    /// When an unread Secret counts as failed.
    give_up: Instant,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Kubernetes mode: one list+watch per Secret name, the cache, the answers.
async fn kubernetes(
    api: Api<Secret>,
    ns: String,
    mut wanted: watch::Receiver<Wanted>,
    tx: watch::Sender<Passwords>,
) {
    let (seen_tx, mut seen_rx) = mpsc::channel::<(String, u64, Seen)>(64);
    let mut watched: BTreeMap<String, Watched> = BTreeMap::new();
    let mut generation = 0u64;
    loop {
        let want = wanted.borrow().clone();
        // Start and stop watches as names come and go (a bad reference is never asked for).
        let names: BTreeSet<&str> = want
            .iter()
            .filter(|((n, k), f)| check_ref(f, n, k).is_ok())
            .map(|((n, _), _)| n.as_str())
            .collect();
        watched.retain(|n, _| names.contains(n.as_str()));
        for name in names {
            if watched.contains_key(name) {
                continue;
            }
            generation += 1;
            let task = tokio::spawn(watch_one(
                api.clone(),
                ns.clone(),
                name.to_string(),
                generation,
                seen_tx.clone(),
            ));
            tracing::debug!(secret = %name, "watching a BGP password Secret");
            watched.insert(
                name.to_string(),
                Watched {
                    task,
                    generation,
                    seen: None,
                    give_up: Instant::now() + FIRST_READ,
                },
            );
        }
        publish(&tx, answers(&ns, &want, &watched));
        let give_up = watched
            .values()
            .filter(|w| w.seen.is_none())
            .map(|w| w.give_up)
            .min();
        tokio::select! {
            r = wanted.changed() => if r.is_err() { return },
            Some((name, g, seen)) = seen_rx.recv() => {
                if let Some(w) = watched.get_mut(&name).filter(|w| w.generation == g) {
                    let keep = matches!(seen, Seen::Failed(_))
                        && matches!(w.seen, Some(Seen::Data(_) | Seen::Missing));
                    if let (true, Seen::Failed(why)) = (keep, &seen) {
                        tracing::warn!(secret = %name, error = %why, "BGP password Secret: keeping what was read");
                    } else {
                        w.seen = Some(seen);
                    }
                }
            }
            _ = tokio::time::sleep_until(give_up.unwrap_or_else(Instant::now)), if give_up.is_some() => {
                let now = Instant::now();
                for (name, w) in watched.iter_mut().filter(|(_, w)| w.seen.is_none() && w.give_up <= now) {
                    w.seen = Some(Seen::Failed(format!(
                        "Secret {ns}/{name}: no answer from the API server within {FIRST_READ:?}"
                    )));
                }
            }
        }
    }
}

/// The list+watch of Secret `ns/name` (field selector `metadata.name=<name>`), reporting
/// each change (and each failed request) to the task.
async fn watch_one(
    api: Api<Secret>,
    ns: String,
    name: String,
    generation: u64,
    tx: mpsc::Sender<(String, u64, Seen)>,
) {
    let fields = format!("metadata.name={name}");
    let sel = Selector {
        labels: "",
        fields: &fields,
    };
    let (n, t) = (name.clone(), tx.clone());
    let sink = move |c: Change<Secret>| {
        let (name, tx) = (n.clone(), t.clone());
        async move {
            let seen = match c {
                // The server sends only that Secret; the name is checked all the same.
                Change::Listed(list) => list
                    .iter()
                    .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
                    .map_or(Seen::Missing, data_of),
                Change::Applied(s) => data_of(&s),
                Change::Deleted(_) => Seen::Missing,
            };
            tx.send((name, generation, seen)).await.is_ok()
        }
    };
    let failed = |e: &kube::Error| {
        let denied = matches!(e, kube::Error::Api(s) if s.code == 403);
        let why = if denied {
            forbidden(&ns, &name)
        } else {
            format!("reading Secret {ns}/{name}: {e}")
        };
        // A full queue loses this report; the next retry makes another.
        let _ = tx.try_send((name.clone(), generation, Seen::Failed(why)));
    };
    reflect_selected(api, sel, "BGP password", RETRY, sink, failed).await;
}

fn data_of(s: &Secret) -> Seen {
    let mut data: BTreeMap<String, Vec<u8>> = s
        .string_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    data.extend(
        s.data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone())),
    );
    Seen::Data(data)
}

/// The answers for `want` from what the watches have seen.
fn answers(ns: &str, want: &Wanted, watched: &BTreeMap<String, Watched>) -> Passwords {
    let mut p = Passwords::default();
    for ((name, key), field) in want {
        let v = check_ref(field, name, key).and_then(|()| {
            match watched.get(name).and_then(|w| w.seen.as_ref()) {
                None => {
                    p.waiting += 1;
                    Err(format!("Secret {ns}/{name} has not been read yet"))
                }
                Some(Seen::Missing) => Err(format!(
                    "Secret {ns}/{name} does not exist (create it in {ns}, where reef may read Secrets)"
                )),
                Some(Seen::Failed(why)) => Err(why.clone()),
                Some(Seen::Data(d)) => {
                    let bytes = d
                        .get(key)
                        .ok_or_else(|| format!("Secret {ns}/{name} has no key {key:?}"))?;
                    String::from_utf8(bytes.clone())
                        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                        .map_err(|_| format!("Secret {ns}/{name} key {key:?} is not UTF-8 text"))
                }
            }
        });
        p.lookup.insert((name.clone(), key.clone()), v);
    }
    p
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

    /// Runs the task on `source` for `view`'s references until it answers them all.
    async fn read_all(source: Source, view: &View) -> Lookup {
        let (_wanted_tx, wanted_rx) = watch::channel(wanted(view));
        let want = wanted(view);
        let mut rx = spawn(source, wanted_rx);
        let p = tokio::time::timeout(FIRST_READ * 2, rx.wait_for(|p| p.ready_for(&want)))
            .await
            .expect("the secrets task answers")
            .expect("the secrets task runs")
            .clone();
        p.lookup
    }

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
        let got = read_all(Source::Files(dir), &view).await;
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
        let got = read_all(Source::Files(dir.clone()), &view).await;
        assert_eq!(
            got[&(MESH_SECRET.to_string(), "password".to_string())],
            Ok("m3sh".to_string())
        );
        view.bgp.as_mut().unwrap().node_to_node_mesh_password =
            Some(reef_config::crds::SecretKeyRef {
                name: "../x".into(),
                key: "password".into(),
            });
        let got = read_all(Source::Files(dir), &view).await;
        let e = got[&("../x".to_string(), "password".to_string())]
            .clone()
            .unwrap_err();
        assert!(
            e.starts_with("spec.nodeToNodeMeshPassword.name \"../x\" is not a Secret name"),
            "{e}"
        );
    }

    /// Waits (10 s at most) for the answer for `key` to be `want` (an error: one containing
    /// it); returns the answers then.
    async fn answer(
        rx: &mut watch::Receiver<Passwords>,
        key: &(String, String),
        want: Result<&str, &str>,
    ) -> Passwords {
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|p| match (p.lookup.get(key), want) {
                (Some(Ok(have)), Ok(w)) => have == w,
                (Some(Err(have)), Err(w)) => have.contains(w),
                _ => false,
            }),
        )
        .await
        .map(|r| r.map(|p| p.clone()));
        match got {
            Ok(Ok(p)) => p,
            _ => panic!("waited for {want:?}; have {:?}", rx.borrow().clone()),
        }
    }

    /// Against the API-server STAND-IN (reef_integration::apiserver; it honours the
    /// metadata.name field selector): a Secret's changes, deletion and return reach the
    /// answers through its watch alone — one list, no GET, whatever happens to it.
    #[tokio::test]
    async fn a_watched_secret_follows_its_changes_without_reading_again() {
        let api = reef_integration::apiserver::StandIn::start().unwrap();
        api.put_secret("reef-system", "bgp", &[("router", "one\n")]);
        let config = kube::Config::new(api.url().parse().unwrap());
        let source = Source::Kubernetes {
            api: Box::new(Api::namespaced(
                kube::Client::try_from(config).unwrap(),
                "reef-system",
            )),
            namespace: "reef-system".into(),
        };
        let key = ("bgp".to_string(), "router".to_string());
        let mut want = Wanted::new();
        want.insert(key.clone(), PEER_FIELD);
        want.insert(("bgp".into(), "nokey".into()), PEER_FIELD);
        let (wanted_tx, wanted_rx) = watch::channel(want.clone());
        let mut rx = spawn(source, wanted_rx);
        let p = answer(&mut rx, &key, Ok("one")).await;
        assert_eq!(
            p.lookup[&("bgp".to_string(), "nokey".to_string())],
            Err("Secret reef-system/bgp has no key \"nokey\"".to_string())
        );
        api.put_secret("reef-system", "bgp", &[("router", "two")]);
        answer(&mut rx, &key, Ok("two")).await;
        api.delete_secret("reef-system", "bgp");
        answer(&mut rx, &key, Err("Secret reef-system/bgp does not exist")).await;
        api.put_secret("reef-system", "bgp", &[("router", "three")]);
        answer(&mut rx, &key, Ok("three")).await;
        let reads: Vec<_> = api
            .request_counts()
            .into_iter()
            .filter(|(k, _)| k.resource == "secrets" && k.verb != "watch")
            .collect();
        assert_eq!(reads.len(), 1, "{reads:?}");
        assert_eq!(
            (reads[0].0.verb.as_str(), reads[0].1),
            ("list", 1),
            "{reads:?}"
        );
        // No longer referred to: out of the answers.
        wanted_tx.send(Wanted::new()).unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|p| p.lookup.is_empty()),
        )
        .await
        .unwrap()
        .unwrap();
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

    /// An API server that answers 403 to the Secret's list, as Kubernetes does when the Role
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
        let source = Source::Kubernetes {
            api: Box::new(Api::namespaced(client, "reef-system")),
            namespace: "reef-system".into(),
        };
        let spec: reef_config::crds::BgpPeerSpec = serde_json::from_value(serde_json::json!({
            "peerIP": "192.0.2.1",
            "asNumber": 64512,
            "password": { "name": "tor-password", "key": "password" },
        }))
        .unwrap();
        let view = View {
            peers: vec![reef_ipam::Typed::new("tor", spec)],
            ..Default::default()
        };
        let got = read_all(source, &view).await;
        let e = got[&("tor-password".to_string(), "password".to_string())]
            .clone()
            .unwrap_err();
        server.abort();
        assert_eq!(e, forbidden("reef-system", "tor-password"));
    }
}
