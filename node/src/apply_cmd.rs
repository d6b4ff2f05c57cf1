//! `reef apply -f FILE`, `reef get KIND [NAME]`, `reef delete KIND NAME`: what `kubectl`
//! gives on a cluster, for the embedded datastore (no cluster: the lab, bare metal).
//!
//! `apply` takes the YAML `kubectl apply` takes for reef's resources (apiVersion, kind,
//! metadata, spec; several documents, or a `kind: List`) and is all or nothing: every document
//! is parsed, validated with its spec's `validate()` and checked against the store (the rules
//! IPAM needs, below) before anything is written, and a write that fails half-way (someone
//! changed an object meanwhile) puts back what this run already wrote.
//!
//! Which kinds users write:
//! - IPPool, BGPPeer, BGPConfiguration, IPAMConfig: created, replaced, deleted. The two
//!   cluster-wide configurations are read under the name `default` only.
//! - ReefNode: the node's agent registers it from its node config and IPAM; only
//!   `spec.routeReflectorClusterId` is the user's (the agent keeps it), so apply changes that
//!   field of an existing ReefNode and nothing else; delete says to use `reef ipam
//!   release-node`, which also gives back what the node held.
//! - IPAMBlock, BlockAffinity, IPAMHandle: IPAM's own records, readable, never written here.
//!
//! IPAM's rules (the Kubernetes datastore has no admission webhook, so nothing enforces them
//! there; Calico's API refuses the same changes): a pool's `cidr` and `blockSize` cannot change
//! while blocks of it exist (their addresses would fall outside the pool, or blocks would
//! overlap), pools must not overlap, and a pool with addresses in use cannot be deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::IpNetwork;
use kube::CustomResourceExt;
use reef_config::crds::{
    BgpConfiguration, BgpConfigurationSpec, BgpPeer, BgpPeerSpec, IpPool, IpPoolSpec,
    IpamBlockSpec, IpamConfig, IpamConfigSpec, ReefNode, ReefNodeSpec, DEFAULT_NAME, GROUP,
    VERSION,
};
use reef_config::node_config::{Datastore, NodeConfig};
use reef_ipam::{Kind, Labels, Object, Revision, Store, StoreExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::output::Table;
use crate::{datastore, Exit};

/// `reef apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A YAML or JSON file of reef resources (several documents separated by `---`, or a
    /// `kind: List`); `-` reads standard input. May be given more than once.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
}

/// `reef get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// ippool, bgppeer, bgpconfiguration, ipamconfig, reefnode, ipamblock, blockaffinity,
    /// ipamhandle, loadbalancerippool (singular, plural or short name, as kubectl takes
    /// them).
    pub kind: String,
    /// One object; all of the kind when left out.
    pub name: Option<String>,
}

/// `reef delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// ippool, bgppeer, bgpconfiguration or ipamconfig.
    pub kind: String,
    pub name: String,
}

/// How `reef get` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetFormat {
    Table,
    Json,
    Yaml,
}

const API_VERSION: &str = "reef.dev/v1alpha1";

/// The kind a user names on the command line or in `kind:`.
fn parse_kind(s: &str) -> Result<Kind> {
    let l = s.to_ascii_lowercase();
    let l = l.strip_suffix(".reef.dev").unwrap_or(&l);
    for k in Kind::ALL {
        let singular = k.as_str().to_ascii_lowercase();
        let short = match k {
            Kind::IpPool => "pool",
            Kind::BgpPeer => "peer",
            Kind::ReefNode => "rn",
            _ => "",
        };
        if l == singular || l == k.plural() || (!short.is_empty() && l == short) {
            return Ok(k);
        }
    }
    bail!(
        "unknown kind {s:?}: reef's kinds are {}",
        Kind::ALL.map(|k| k.as_str()).join(", ")
    )
}

/// `ippool.reef.dev/default`, as kubectl names what it changed.
fn object_ref(kind: Kind, name: &str) -> String {
    format!("{}.{GROUP}/{name}", kind.as_str().to_ascii_lowercase())
}

/// Why users do not write (`verb` "written") or delete ("deleted") `kind`; `None` when they
/// may.
fn refused(kind: Kind, verb: &str) -> Option<String> {
    let ipam = |what: &str| {
        format!(
            "{} objects are not {verb} by hand: {what} reef's IPAM writes them as pods come and go, and one written by hand would hand out an address twice or lose one; change IPPools instead, and use `reef ipam release` / `reef ipam gc` for leaked addresses",
            kind.as_str()
        )
    };
    match kind {
        Kind::IpamBlock => Some(ipam("they record which addresses of a block are in use;")),
        Kind::BlockAffinity => Some(ipam("they record which node owns which block;")),
        Kind::IpamHandle => Some(ipam("they index each owner's addresses;")),
        Kind::ReefNode if verb == "deleted" => Some(
            "a ReefNode is not deleted by hand: use `reef ipam release-node NAME` once the node is gone, which also gives back its blocks and addresses".into(),
        ),
        Kind::Node | Kind::Lease => Some(format!("{} is not a reef.dev kind", kind.as_str())),
        _ => None,
    }
}

/// Refuses the Kubernetes datastore, where kubectl does all this (and the API server's rules
/// apply); nothing is opened or written.
fn embedded_only(cfg: &NodeConfig, kubectl: &str) -> Result<()> {
    match cfg.datastore {
        Datastore::Embedded { .. } => Ok(()),
        Datastore::Kubernetes { .. } => bail!("the datastore is Kubernetes: use {kubectl}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading documents

/// One document of the input, located for error messages.
struct Doc {
    /// `FILE: document N` (N counts from 1 in each file).
    origin: String,
    value: Value,
}

/// Reads every document of every file; empty documents (only comments) are skipped and a
/// `kind: List` contributes its items.
fn read_docs(files: &[PathBuf]) -> Result<Vec<Doc>> {
    let mut out = Vec::new();
    for f in files {
        let (name, text) = if f.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading standard input")?;
            ("<stdin>".to_string(), s)
        } else {
            let s = std::fs::read_to_string(f)
                .map_err(|e| anyhow!("cannot read {}: {e}", f.display()))?;
            (f.display().to_string(), s)
        };
        let mut index = 0;
        for de in serde_yaml::Deserializer::from_str(&text) {
            index += 1;
            let origin = format!("{name}: document {index}");
            let value = serde_json::to_value(
                <serde_yaml::Value as serde::Deserialize>::deserialize(de)
                    .map_err(|e| anyhow!("{origin}: not YAML or JSON: {e}"))?,
            )
            .map_err(|e| anyhow!("{origin}: {e}"))?;
            if value.is_null() {
                continue;
            }
            if value["kind"] == "List" {
                let Some(items) = value["items"].as_array() else {
                    bail!("{origin}: a List without items");
                };
                for (i, item) in items.iter().enumerate() {
                    out.push(Doc {
                        origin: format!("{origin}, items[{i}]"),
                        value: item.clone(),
                    });
                }
            } else {
                out.push(Doc { origin, value });
            }
        }
    }
    Ok(out)
}

/// The parts of a document apply uses.
struct Parsed {
    kind: Kind,
    name: String,
    labels: Labels,
    resource_version: Option<String>,
    /// The spec as stored: decoded into its type and encoded again (defaults filled in).
    spec: Value,
}

/// `spec` decoded as `T`, with the path of the field that does not fit. A field `T` does not
/// have is refused here, naming its path and the fields there are: reef's types ignore one
/// (so an older reef reads what a newer one wrote), but in what a user writes it is a typo
/// or a field this reef does not have, and applying without it would silently drop it.
fn decode_spec<T: DeserializeOwned + Serialize, R: CustomResourceExt>(
    spec: &Value,
) -> Result<(T, Value), String> {
    let mut unknown: Vec<Vec<Seg>> = Vec::new();
    let mut note = |p: serde_ignored::Path| unknown.push(segments(&p));
    let t: T = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(spec, &mut note))
        .map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                format!("spec: {}", e.into_inner())
            } else {
                format!("spec.{path}: {}", e.into_inner())
            }
        })?;
    if !unknown.is_empty() {
        let crd = serde_json::to_value(R::crd()).unwrap_or_default();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        return Err(unknown
            .iter()
            .map(|path| unknown_field(schema, path))
            .collect::<Vec<_>>()
            .join("; "));
    }
    let v = serde_json::to_value(&t).map_err(|e| format!("spec: {e}"))?;
    Ok((t, v))
}

/// One step of a path into a spec.
enum Seg {
    Key(String),
    Index(usize),
}

fn segments(p: &serde_ignored::Path) -> Vec<Seg> {
    use serde_ignored::Path;
    let (parent, seg) = match p {
        Path::Root => return Vec::new(),
        Path::Seq { parent, index } => (parent, Some(Seg::Index(*index))),
        Path::Map { parent, key } => (parent, Some(Seg::Key(key.clone()))),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => (parent, None),
    };
    let mut v = segments(parent);
    v.extend(seg);
    v
}

/// `spec.a.b[0].c: unknown field, expected one of ...`, the fields from the CRD's schema.
fn unknown_field(spec_schema: &Value, path: &[Seg]) -> String {
    let mut name = String::from("spec");
    let mut schema = spec_schema;
    for (i, seg) in path.iter().enumerate() {
        match seg {
            Seg::Key(k) => {
                name.push('.');
                name.push_str(k);
                if i + 1 < path.len() {
                    schema = &schema["properties"][k];
                }
            }
            Seg::Index(n) => {
                name.push_str(&format!("[{n}]"));
                schema = &schema["items"];
            }
        }
    }
    match schema["properties"].as_object() {
        Some(props) if !props.is_empty() => format!(
            "{name}: unknown field, expected one of {}",
            props
                .keys()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => format!("{name}: unknown field"),
    }
}

fn problems(e: reef_config::Error) -> String {
    match e.problems() {
        [] => e.to_string(),
        ps => ps
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// Checks one document's shape and its spec's rules (nothing about the store yet).
fn parse_doc(d: &Doc) -> Result<Parsed, String> {
    let v = &d.value;
    let Some(obj) = v.as_object() else {
        return Err("not an object with apiVersion, kind, metadata and spec".into());
    };
    for k in obj.keys() {
        if !["apiVersion", "kind", "metadata", "spec", "status"].contains(&k.as_str()) {
            return Err(format!(
                "{k}: unknown field; a reef resource has apiVersion, kind, metadata and spec"
            ));
        }
    }
    let kind_s = v["kind"]
        .as_str()
        .ok_or("kind: missing; say which resource this is, e.g. kind: IPPool")?;
    let kind = parse_kind(kind_s).map_err(|e| format!("kind: {e}"))?;
    match &v["apiVersion"] {
        Value::String(s) if s == API_VERSION => {}
        Value::Null => {
            return Err(format!(
                "apiVersion: missing; use apiVersion: {GROUP}/{VERSION}"
            ))
        }
        other => {
            return Err(format!(
                "apiVersion: {other} is not reef's API; use apiVersion: {GROUP}/{VERSION}"
            ))
        }
    }
    let meta = &v["metadata"];
    let name = meta["name"]
        .as_str()
        .ok_or("metadata.name: missing; give the object a name")?
        .to_string();
    if !dns_subdomain(&name) {
        return Err(format!(
            "metadata.name: {name:?} is not a valid name; use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
        ));
    }
    let labels: Labels = match &meta["labels"] {
        Value::Null => Labels::new(),
        l => serde_json::from_value(l.clone())
            .map_err(|e| format!("metadata.labels: {e}; labels are string keys and values"))?,
    };
    let resource_version = meta["resourceVersion"].as_str().map(str::to_string);
    if let Some(why) = refused(kind, "written") {
        return Err(why);
    }
    if matches!(kind, Kind::BgpConfiguration | Kind::IpamConfig) && name != DEFAULT_NAME {
        return Err(format!(
            "metadata.name: reef reads only the {} named {DEFAULT_NAME}; name it {DEFAULT_NAME}",
            kind.as_str()
        ));
    }
    let spec = match &v["spec"] {
        Value::Null => json!({}),
        s => s.clone(),
    };
    let spec = match kind {
        Kind::IpPool => {
            let mut spec = spec;
            // An IPv6 pool's ipipMode defaults to Never (IP-in-IP carries IPv4 only); one
            // written out is validated (and refused unless Never).
            if spec["cidr"].as_str().is_some_and(|c| c.contains(':'))
                && spec.get("ipipMode").is_none()
            {
                spec["ipipMode"] = json!("Never");
            }
            let (t, v) = decode_spec::<IpPoolSpec, IpPool>(&spec)?;
            t.validate().map_err(problems)?;
            v
        }
        Kind::BgpPeer => {
            let (t, v) = decode_spec::<BgpPeerSpec, BgpPeer>(&spec)?;
            t.validate().map_err(problems)?;
            v
        }
        Kind::BgpConfiguration => {
            let (t, v) = decode_spec::<BgpConfigurationSpec, BgpConfiguration>(&spec)?;
            t.validate().map_err(problems)?;
            v
        }
        Kind::IpamConfig => decode_spec::<IpamConfigSpec, IpamConfig>(&spec)?.1,
        Kind::ReefNode => {
            let (t, v) = decode_spec::<ReefNodeSpec, ReefNode>(&spec)?;
            t.validate().map_err(problems)?;
            v
        }
        _ => unreachable!("refused above"),
    };
    Ok(Parsed {
        kind,
        name,
        labels,
        resource_version,
        spec,
    })
}

/// A DNS-1123 subdomain, as Kubernetes object names are.
fn dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

// ---------------------------------------------------------------------------------------------
// apply

/// What apply will do with one document.
enum Action {
    Create,
    /// Replace the stored object (kept to put it back if a later write fails).
    Update(Object),
    Unchanged,
}

struct Planned {
    origin: String,
    kind: Kind,
    name: String,
    labels: Labels,
    spec: Value,
    action: Action,
}

/// The stored spec in its normal form (decoded and encoded again) to compare with.
fn normal_spec(kind: Kind, spec: &Value) -> Value {
    fn norm<T: DeserializeOwned + Serialize>(v: &Value) -> Value {
        serde_json::from_value::<T>(v.clone())
            .ok()
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| v.clone())
    }
    match kind {
        Kind::IpPool => norm::<IpPoolSpec>(spec),
        Kind::BgpPeer => norm::<BgpPeerSpec>(spec),
        Kind::BgpConfiguration => norm::<BgpConfigurationSpec>(spec),
        Kind::IpamConfig => norm::<IpamConfigSpec>(spec),
        Kind::ReefNode => norm::<ReefNodeSpec>(spec),
        _ => spec.clone(),
    }
}

/// Blocks inside `cidr` and how many of their addresses are in use.
fn blocks_in(store: &dyn Store, cidr: &IpNetwork) -> Result<Vec<reef_ipam::Typed<IpamBlockSpec>>> {
    Ok(store
        .list_typed::<IpamBlockSpec>(&Labels::new())?
        .into_iter()
        .filter(|b| b.spec.cidr.is_ipv4() == cidr.is_ipv4() && cidr.contains(b.spec.cidr.network()))
        .collect())
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// Decides every document's action and checks IPAM's rules against the store.
fn plan(store: &dyn Store, parsed: Vec<(String, Parsed)>) -> Result<Vec<Planned>, Vec<String>> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let mut seen: BTreeMap<(Kind, String), String> = BTreeMap::new();
    let err = |origin: &str, kind: Kind, name: &str, msg: String| {
        format!("{origin} ({} {name}): {msg}", kind.as_str())
    };
    let stored_pools: Vec<reef_ipam::Typed<IpPoolSpec>> =
        match store.list_typed::<IpPoolSpec>(&Labels::new()) {
            Ok(p) => p,
            Err(e) => return Err(vec![format!("reading the IPPools: {e}")]),
        };
    // The pools as they will be after this apply: stored ones, replaced by the file's.
    let mut pools_after: BTreeMap<String, IpNetwork> = stored_pools
        .iter()
        .map(|p| (p.name.clone(), p.spec.cidr))
        .collect();
    for (_, p) in &parsed {
        if p.kind == Kind::IpPool {
            if let Ok(spec) = serde_json::from_value::<IpPoolSpec>(p.spec.clone()) {
                pools_after.insert(p.name.clone(), spec.cidr);
            }
        }
    }
    for (origin, p) in parsed {
        let key = (p.kind, p.name.clone());
        if let Some(first) = seen.get(&key) {
            errors.push(err(
                &origin,
                p.kind,
                &p.name,
                format!("also in {first}; keep one"),
            ));
            continue;
        }
        seen.insert(key, origin.clone());
        let stored = match store.get(p.kind, &p.name) {
            Ok(s) => s,
            Err(e) => {
                errors.push(err(&origin, p.kind, &p.name, format!("reading it: {e}")));
                continue;
            }
        };
        match (&stored, &p.resource_version) {
            (None, Some(_)) => errors.push(err(
                &origin,
                p.kind,
                &p.name,
                "metadata.resourceVersion: set, but there is no such object to update; remove resourceVersion to create it".into(),
            )),
            (Some(s), Some(rv)) if *rv != s.revision.0 => errors.push(err(
                &origin,
                p.kind,
                &p.name,
                format!(
                    "metadata.resourceVersion: {rv}, but the stored object is at {}: it changed since it was read; get it again, or remove resourceVersion to overwrite it",
                    s.revision
                ),
            )),
            _ => {}
        }
        // Kind-specific rules.
        let rule = match p.kind {
            Kind::IpPool => pool_rules(store, &p, stored.as_ref(), &pools_after),
            Kind::ReefNode => reef_node_rules(&p, stored.as_ref()),
            _ => Ok(()),
        };
        if let Err(msg) = rule {
            errors.push(err(&origin, p.kind, &p.name, msg));
            continue;
        }
        let action = match stored {
            None => Action::Create,
            Some(s) => {
                if normal_spec(p.kind, &s.spec) == p.spec && s.labels == p.labels {
                    Action::Unchanged
                } else {
                    Action::Update(s)
                }
            }
        };
        out.push(Planned {
            origin,
            kind: p.kind,
            name: p.name,
            labels: p.labels,
            spec: p.spec,
            action,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn pool_rules(
    store: &dyn Store,
    p: &Parsed,
    stored: Option<&Object>,
    pools_after: &BTreeMap<String, IpNetwork>,
) -> Result<(), String> {
    let new: IpPoolSpec = serde_json::from_value(p.spec.clone()).map_err(|e| e.to_string())?;
    for (other, cidr) in pools_after {
        if *other != p.name && overlaps(cidr, &new.cidr) {
            return Err(format!(
                "spec.cidr: {} overlaps the IPPool {other} ({cidr}); pools must not overlap (an address would belong to both): pick a cidr outside it",
                new.cidr
            ));
        }
    }
    let Some(stored) = stored else {
        return Ok(());
    };
    let Ok(old) = serde_json::from_value::<IpPoolSpec>(stored.spec.clone()) else {
        return Ok(());
    };
    let (field, what) = if old.cidr != new.cidr {
        ("spec.cidr", format!("{} to {}", old.cidr, new.cidr))
    } else if old.effective_block_size() != new.effective_block_size() {
        (
            "spec.blockSize",
            format!(
                "{} to {}",
                old.effective_block_size(),
                new.effective_block_size()
            ),
        )
    } else {
        return Ok(());
    };
    let blocks = blocks_in(store, &old.cidr).map_err(|e| format!("reading blocks: {e}"))?;
    if blocks.is_empty() {
        return Ok(());
    }
    let in_use: usize = blocks.iter().map(|b| b.spec.allocations.len()).sum();
    Err(format!(
        "{field}: cannot change from {what} while the pool has {} blocks ({in_use} addresses in use): they would fall outside it or overlap; instead create a new IPPool with the new {}, set this one's spec.disabled: true, recreate the pods using it, and delete it once `reef ipam show` shows it empty",
        blocks.len(),
        field.trim_start_matches("spec."),
    ))
}

fn reef_node_rules(p: &Parsed, stored: Option<&Object>) -> Result<(), String> {
    let Some(stored) = stored else {
        return Err("a ReefNode is registered by its node's agent (from the node config and IPAM), not created by hand; start `reef node run` on the node".into());
    };
    let mut mine = normal_spec(Kind::ReefNode, &stored.spec);
    mine["routeReflectorClusterId"] = p.spec["routeReflectorClusterId"].clone();
    if mine
        .as_object()
        .is_some_and(|m| m.get("routeReflectorClusterId").is_some_and(Value::is_null))
    {
        if let Some(m) = mine.as_object_mut() {
            m.remove("routeReflectorClusterId");
        }
    }
    if mine != p.spec {
        let changed = p
            .spec
            .as_object()
            .into_iter()
            .flatten()
            .chain(mine.as_object().into_iter().flatten())
            .map(|(k, _)| k.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|k| p.spec.get(k) != mine.get(k))
            .collect::<Vec<_>>();
        return Err(format!(
            "spec.{}: set by the node's agent (address and AS from its node config, tunnel address from IPAM); only spec.routeReflectorClusterId is changed here: change the node config instead",
            changed.first().map(String::as_str).unwrap_or("?")
        ));
    }
    if p.labels != stored.labels {
        return Err("metadata.labels: the agent sets a ReefNode's labels from its node config's labels; change them there".into());
    }
    Ok(())
}

/// Writes what was planned; on a failure puts back what this run wrote and fails.
fn write(store: &dyn Store, planned: &[Planned]) -> Result<Vec<String>> {
    // (kind, name, what was there before, the revision we wrote)
    let mut done: Vec<(Kind, String, Option<Object>, Revision)> = Vec::new();
    let mut lines = Vec::new();
    for p in planned {
        let obj = Object {
            name: p.name.clone(),
            revision: Revision::default(),
            labels: p.labels.clone(),
            spec: p.spec.clone(),
            status: None,
        };
        let result = match &p.action {
            Action::Unchanged => {
                lines.push(format!("{} unchanged", object_ref(p.kind, &p.name)));
                continue;
            }
            Action::Create => store
                .create(p.kind, &obj)
                .map(|o| (None, o.revision, "created")),
            Action::Update(old) => {
                let obj = Object {
                    revision: old.revision.clone(),
                    status: old.status.clone(),
                    ..obj
                };
                store
                    .update(p.kind, &obj)
                    .map(|o| (Some(old.clone()), o.revision, "configured"))
            }
        };
        match result {
            Ok((before, rev, verb)) => {
                done.push((p.kind, p.name.clone(), before, rev));
                lines.push(format!("{} {verb}", object_ref(p.kind, &p.name)));
            }
            Err(e) => {
                let undo = roll_back(store, done);
                let what = format!(
                    "{} ({} {}): writing it: {e}",
                    p.origin,
                    p.kind.as_str(),
                    p.name
                );
                return Err(match undo {
                    Ok(n) => anyhow!("{what}; nothing was changed (the {n} objects written before it were put back); run apply again"),
                    Err(left) => anyhow!("{what}; putting back what this run wrote failed, these stay as the file says: {}", left.join(", ")),
                });
            }
        }
    }
    Ok(lines)
}

/// Undoes writes in reverse order; the objects it could not put back on error.
fn roll_back(
    store: &dyn Store,
    done: Vec<(Kind, String, Option<Object>, Revision)>,
) -> Result<usize, Vec<String>> {
    let n = done.len();
    let mut left = Vec::new();
    for (kind, name, before, rev) in done.into_iter().rev() {
        let r = match before {
            None => store.delete(kind, &name, Some(&rev)),
            Some(old) => store
                .update(
                    kind,
                    &Object {
                        revision: rev,
                        ..old
                    },
                )
                .map(|_| ()),
        };
        if let Err(e) = r {
            left.push(format!("{} ({e})", object_ref(kind, &name)));
        }
    }
    if left.is_empty() {
        Ok(n)
    } else {
        Err(left)
    }
}

pub fn apply(cfg: &NodeConfig, args: &ApplyArgs) -> Result<Exit> {
    embedded_only(cfg, "kubectl apply -f FILE")?;
    let docs = read_docs(&args.files)?;
    if docs.is_empty() {
        bail!("no objects in the input: nothing to apply");
    }
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for d in &docs {
        match parse_doc(d) {
            Ok(p) => parsed.push((d.origin.clone(), p)),
            Err(msg) => {
                let what = match (
                    d.value["kind"].as_str(),
                    d.value["metadata"]["name"].as_str(),
                ) {
                    (Some(k), Some(n)) => format!(" ({k} {n})"),
                    (Some(k), None) => format!(" ({k})"),
                    _ => String::new(),
                };
                errors.push(format!("{}{what}: {msg}", d.origin));
            }
        }
    }
    if !errors.is_empty() {
        bail!("nothing was applied:\n  {}", errors.join("\n  "));
    }
    let store = datastore::open_store(cfg)?;
    let planned = plan(store.as_ref(), parsed)
        .map_err(|errors| anyhow!("nothing was applied:\n  {}", errors.join("\n  ")))?;
    for line in write(store.as_ref(), &planned)? {
        println!("{line}");
    }
    Ok(Exit::Ok)
}

// ---------------------------------------------------------------------------------------------
// get

/// An object as `kubectl get -o yaml` shows it.
fn manifest(kind: Kind, o: &Object) -> Value {
    let mut meta = json!({"name": o.name, "resourceVersion": o.revision.0});
    if !o.labels.is_empty() {
        meta["labels"] = json!(o.labels);
    }
    let mut v = json!({
        "apiVersion": API_VERSION,
        "kind": kind.as_str(),
        "metadata": meta,
        "spec": normal_spec(kind, &o.spec),
    });
    if let Some(s) = &o.status {
        v["status"] = s.clone();
    }
    v
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "<none>".into(),
        Value::String(s) => s.clone(),
        Value::Object(m) if m.is_empty() => "<none>".into(),
        Value::Array(a) if a.is_empty() => "<none>".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(&v.to_string())))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// The table columns of a kind: header and JSON pointer into the manifest (kubectl's printer
/// columns of the CRDs, with the pool's effective block size and node selectors added).
fn columns(kind: Kind) -> &'static [(&'static str, &'static str)] {
    match kind {
        Kind::IpPool => &[
            ("CIDR", "/spec/cidr"),
            ("BLOCK", "/spec/blockSize"),
            ("IPIP", "/spec/ipipMode"),
            ("NAT", "/spec/natOutgoing"),
            ("DISABLED", "/spec/disabled"),
            ("NODE-SELECTOR", "/spec/nodeSelector"),
        ],
        Kind::BgpPeer => &[
            ("PEER", "/spec/peerIP"),
            ("PEER-SELECTOR", "/spec/peerSelector"),
            ("AS", "/spec/asNumber"),
            ("NODE", "/spec/node"),
            ("NODE-SELECTOR", "/spec/nodeSelector"),
            ("RR-CLIENT", "/spec/routeReflectorClient"),
        ],
        Kind::BgpConfiguration => &[
            ("AS", "/spec/asNumber"),
            ("MESH", "/spec/nodeToNodeMeshEnabled"),
            ("PORT", "/spec/listenPort"),
            ("HOLD", "/spec/holdTimeSeconds"),
            ("RESTART", "/spec/gracefulRestartSeconds"),
        ],
        Kind::IpamConfig => &[
            ("STRICT", "/spec/strictAffinity"),
            ("AUTO", "/spec/autoAllocateBlocks"),
            ("MAX-BLOCKS", "/spec/maxBlocksPerHost"),
        ],
        Kind::ReefNode => &[
            ("ADDRESS", "/spec/address"),
            ("AS", "/spec/asNumber"),
            ("TUNNEL", "/spec/tunnelAddress"),
            ("PEERS-UP", "/status/establishedPeers"),
            ("PEERS", "/status/totalPeers"),
            ("ROUTES", "/status/routesProgrammed"),
        ],
        Kind::IpamBlock => &[
            ("CIDR", "/spec/cidr"),
            ("NODE", "/spec/affinity"),
            ("IN-USE", "/spec/inUse"),
            ("FREE", "/spec/free"),
        ],
        Kind::BlockAffinity => &[
            ("NODE", "/spec/node"),
            ("CIDR", "/spec/cidr"),
            ("STATE", "/spec/state"),
        ],
        Kind::IpamHandle => &[("HANDLE", "/spec/handleId")],
        Kind::Node | Kind::Lease => &[],
    }
}

/// Whether the user names LoadBalancerIPPools (`loadbalancerippool[s]`, the CRD's short name
/// `lbpool`, or `lbpools`).
fn is_lb_pool_kind(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    let l = l.strip_suffix(".reef.dev").unwrap_or(&l);
    matches!(
        l,
        "loadbalancerippool" | "loadbalancerippools" | "lbpool" | "lbpools"
    )
}

/// The table columns of LoadBalancerIPPools (the CRD's printer columns but Age).
const LB_POOL_COLUMNS: &[(&str, &str)] = &[
    ("CIDR", "/spec/cidrs"),
    ("USED", "/status/used"),
    ("FREE", "/status/free"),
    ("AUTO", "/spec/autoAssign"),
    ("PROBLEM", "/status/problem"),
];

/// `reef get loadbalancerippools`: they live in the Kubernetes datastore only (reef assigns
/// LoadBalancer addresses only there), so unlike the other kinds they are read from the API
/// server, the same as `reef ipam check` reads them.
fn get_lb_pools(cfg: &NodeConfig, args: &GetArgs, format: GetFormat) -> Result<Exit> {
    use reef_config::crds::LoadBalancerIpPool;
    let Datastore::Kubernetes { kubeconfig } = &cfg.datastore else {
        bail!("LoadBalancerIPPools exist only in the Kubernetes datastore (reef assigns LoadBalancer addresses only there); this node's datastore is embedded");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the Kubernetes API")?;
    let objects: Vec<LoadBalancerIpPool> = rt.block_on(async {
        let config = reef_ipam::kubernetes::client_config(kubeconfig.as_deref()).await?;
        let client = kube::Client::try_from(config).context("a Kubernetes client")?;
        let api: kube::Api<LoadBalancerIpPool> = kube::Api::all(client);
        match &args.name {
            Some(n) => Ok(vec![api
                .get_opt(n)
                .await
                .with_context(|| format!("reading LoadBalancerIPPool {n}"))?
                .ok_or_else(|| {
                    anyhow!("loadbalancerippool.{GROUP} \"{n}\" not found")
                })?]),
            None => Ok::<_, anyhow::Error>(
                api.list(&Default::default())
                    .await
                    .context("listing LoadBalancerIPPools")?
                    .items,
            ),
        }
    })?;
    let manifests = objects
        .iter()
        .map(|o| {
            let mut m = serde_json::to_value(o)?;
            if let Some(meta) = m["metadata"].as_object_mut() {
                meta.remove("managedFields");
            }
            Ok(m)
        })
        .collect::<Result<Vec<Value>, serde_json::Error>>()?;
    print_got(
        "loadbalancerippools",
        LB_POOL_COLUMNS,
        args.name.is_some(),
        manifests,
        format,
    )
}

pub fn get(cfg: &NodeConfig, args: &GetArgs, format: GetFormat) -> Result<Exit> {
    if is_lb_pool_kind(&args.kind) {
        return get_lb_pools(cfg, args, format);
    }
    let kind = parse_kind(&args.kind)?;
    if matches!(kind, Kind::Node | Kind::Lease) {
        bail!("{kind} is not a reef.dev kind");
    }
    embedded_only(
        cfg,
        &format!("kubectl get {}", kind.as_str().to_ascii_lowercase()),
    )?;
    let store = datastore::open_store(cfg)?;
    let objects = match &args.name {
        Some(n) => vec![store.get(kind, n)?.ok_or_else(|| {
            anyhow!(
                "{} \"{n}\" not found",
                object_ref(kind, "").trim_end_matches('/')
            )
        })?],
        None => store.list(kind, &Labels::new())?.0,
    };
    let mut manifests: Vec<Value> = objects.iter().map(|o| manifest(kind, o)).collect();
    if kind == Kind::IpPool {
        for m in &mut manifests {
            if let Ok(p) = serde_json::from_value::<IpPoolSpec>(m["spec"].clone()) {
                m["spec"]["blockSize"] = json!(p.effective_block_size());
            }
        }
    }
    print_got(
        kind.plural(),
        columns(kind),
        args.name.is_some(),
        manifests,
        format,
    )
}

/// Prints what `reef get` read: one object, or all of a kind as a `List`, as a table of
/// `cols` (header, JSON pointer) or as JSON / YAML.
fn print_got(
    plural: &str,
    cols: &[(&str, &str)],
    one: bool,
    mut manifests: Vec<Value>,
    format: GetFormat,
) -> Result<Exit> {
    let doc = if one {
        manifests.pop().unwrap_or_default()
    } else {
        json!({"apiVersion": "v1", "kind": "List", "items": manifests})
    };
    match format {
        GetFormat::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        GetFormat::Yaml => print!("{}", serde_yaml::to_string(&doc)?),
        GetFormat::Table => {
            let items: Vec<&Value> = match doc["items"].as_array() {
                Some(items) => items.iter().collect(),
                None => vec![&doc],
            };
            if items.is_empty() {
                eprintln!("No {plural} found.");
                return Ok(Exit::Ok);
            }
            let mut header = vec!["NAME"];
            header.extend(cols.iter().map(|c| c.0));
            let mut t = Table::new(&header);
            for m in items {
                let mut row = vec![cell(&m["metadata"]["name"])];
                row.extend(
                    cols.iter()
                        .map(|(_, ptr)| cell(m.pointer(ptr).unwrap_or(&Value::Null))),
                );
                t.row(row);
            }
            print!("{}", t.render());
        }
    }
    Ok(Exit::Ok)
}

// ---------------------------------------------------------------------------------------------
// delete

pub fn delete(cfg: &NodeConfig, args: &DeleteArgs) -> Result<Exit> {
    let kind = parse_kind(&args.kind)?;
    if let Some(why) = refused(kind, "deleted") {
        bail!("{why}");
    }
    embedded_only(
        cfg,
        &format!(
            "kubectl delete {} {}",
            kind.as_str().to_ascii_lowercase(),
            args.name
        ),
    )?;
    let store = datastore::open_store(cfg)?;
    let reference = object_ref(kind, &args.name);
    let Some(obj) = store.get(kind, &args.name)? else {
        bail!("{reference} not found");
    };
    let mut empty_blocks = Vec::new();
    if kind == Kind::IpPool {
        let spec: IpPoolSpec = serde_json::from_value(obj.spec.clone())
            .with_context(|| format!("{reference}: the stored spec does not decode"))?;
        let blocks = blocks_in(store.as_ref(), &spec.cidr)?;
        let in_use: usize = blocks.iter().map(|b| b.spec.allocations.len()).sum();
        if in_use > 0 {
            bail!(
                "{reference} has {in_use} addresses in use in {} blocks: deleting it would leave them outside every pool; set its spec.disabled: true (reef apply) so it hands out no new addresses, recreate the pods using it so they take addresses from another pool (`reef ipam show` lists what is left), then delete it",
                blocks.iter().filter(|b| !b.spec.allocations.is_empty()).count()
            );
        }
        empty_blocks = blocks;
    }
    // At the revision read: a change since then makes this fail instead of deleting blindly.
    store
        .delete(kind, &args.name, Some(&obj.revision))
        .with_context(|| format!("deleting {reference}"))?;
    println!("{reference} deleted");
    // The pool's empty blocks (and their affinities) go with it; the pool is gone, so no node
    // claims a new one meanwhile.
    if !empty_blocks.is_empty() {
        let ipam = reef_ipam::Ipam::new(store);
        for b in empty_blocks {
            let r = match &b.spec.affinity {
                Some(node) => ipam.release_block_affinity(node, &b.spec.cidr),
                None => ipam.store().delete_typed(&b),
            };
            if let Err(e) = r {
                eprintln!(
                    "reef: the empty block {} of the deleted pool was not released ({e}); `reef ipam check` reports it",
                    b.spec.cidr
                );
            }
        }
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_any_name_kubectl_takes() {
        for s in ["IPPool", "ippool", "ippools", "pool", "ippools.reef.dev"] {
            assert_eq!(parse_kind(s).unwrap(), Kind::IpPool, "{s}");
        }
        assert_eq!(parse_kind("peer").unwrap(), Kind::BgpPeer);
        assert_eq!(
            parse_kind("BGPConfiguration").unwrap(),
            Kind::BgpConfiguration
        );
        assert_eq!(parse_kind("rn").unwrap(), Kind::ReefNode);
        let e = parse_kind("pods").unwrap_err().to_string();
        assert!(e.contains("IPPool"), "{e}");
    }

    #[test]
    fn names_are_dns_subdomains() {
        assert!(dns_subdomain("default-ipv4"));
        assert!(dns_subdomain("rack1.tor"));
        for bad in ["", "Default", "-a", "a-", "a..b", "a_b"] {
            assert!(!dns_subdomain(bad), "{bad}");
        }
    }

    /// A store whose create of one name fails as if someone else had written it first.
    #[derive(Debug)]
    struct FailingCreate {
        inner: reef_ipam::EmbeddedStore,
        fail: &'static str,
    }

    impl Store for FailingCreate {
        fn list(
            &self,
            kind: Kind,
            sel: &Labels,
        ) -> Result<(Vec<Object>, Revision), reef_ipam::Error> {
            self.inner.list(kind, sel)
        }
        fn get(&self, kind: Kind, name: &str) -> Result<Option<Object>, reef_ipam::Error> {
            self.inner.get(kind, name)
        }
        fn create(&self, kind: Kind, o: &Object) -> Result<Object, reef_ipam::Error> {
            if o.name == self.fail {
                return Err(reef_ipam::Error::AlreadyExists {
                    kind,
                    name: o.name.clone(),
                });
            }
            self.inner.create(kind, o)
        }
        fn update(&self, kind: Kind, o: &Object) -> Result<Object, reef_ipam::Error> {
            self.inner.update(kind, o)
        }
        fn update_status(&self, kind: Kind, o: &Object) -> Result<Object, reef_ipam::Error> {
            self.inner.update_status(kind, o)
        }
        fn delete(
            &self,
            kind: Kind,
            name: &str,
            rev: Option<&Revision>,
        ) -> Result<(), reef_ipam::Error> {
            self.inner.delete(kind, name, rev)
        }
        fn watch(
            &self,
            kind: Kind,
            since: &Revision,
        ) -> Result<Box<dyn reef_ipam::Watcher>, reef_ipam::Error> {
            self.inner.watch(kind, since)
        }
    }

    fn doc(text: &str) -> (String, Parsed) {
        let value =
            serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(text).unwrap()).unwrap();
        let d = Doc {
            origin: "f: document 1".into(),
            value,
        };
        (d.origin.clone(), parse_doc(&d).unwrap())
    }

    /// reef's types ignore a field they do not have (a newer reef's); what a user applies is
    /// refused on one, at any depth, naming its path and the fields there are.
    #[test]
    fn an_unknown_field_is_refused_with_its_path() {
        let parse = |spec: &str| {
            let text = format!(
                "apiVersion: reef.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: tor}}\nspec: {spec}\n"
            );
            let value =
                serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&text).unwrap())
                    .unwrap();
            parse_doc(&Doc {
                origin: "f".into(),
                value,
            })
        };
        parse("{peerIP: 192.168.1.254, asNumber: 65001, password: {name: s, key: k}}").unwrap();
        let e = parse("{peerIP: 192.168.1.254, asNumber: 65001, keepOrigNextHop: true}")
            .err()
            .unwrap();
        assert!(
            e.starts_with("spec.keepOrigNextHop: unknown field, expected one of ")
                && e.contains("`keepOriginalNextHop`"),
            "{e}"
        );
        let e = parse(
            "{peerIP: 192.168.1.254, asNumber: 65001, password: {name: s, key: k, namespace: x}, ttl: 1}",
        )
        .err()
        .unwrap();
        assert_eq!(
            e,
            "spec.password.namespace: unknown field, expected one of `key`, `name`; \
             spec.ttl: unknown field, expected one of `advertiseServiceRoutes`, `asNumber`, \
             `keepOriginalNextHop`, \
             `maxPrefix`, `node`, `nodeSelector`, `password`, `peerIP`, `peerPort`, \
             `peerSelector`, `routeReflectorClient`, `ttlSecurity`"
        );
    }

    /// A write that fails after others succeeded (a concurrent writer between the checks and
    /// the writes) puts back what this run wrote: an update reverted, a create deleted.
    #[test]
    fn a_failed_write_puts_back_the_writes_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FailingCreate {
            inner: reef_ipam::EmbeddedStore::open(dir.path().join("s.db")).unwrap(),
            fail: "third",
        };
        let pool = |name: &str, cidr: &str, nat: bool| {
            doc(&format!(
                "apiVersion: reef.dev/v1alpha1\nkind: IPPool\nmetadata: {{ name: {name} }}\nspec: {{ cidr: {cidr}, natOutgoing: {nat} }}\n"
            ))
        };
        let first = plan(&store, vec![pool("first", "10.1.0.0/16", false)]).unwrap();
        write(&store, &first).unwrap();
        let before = store.get(Kind::IpPool, "first").unwrap().unwrap();

        let planned = plan(
            &store,
            vec![
                pool("first", "10.1.0.0/16", true),
                pool("second", "10.2.0.0/16", false),
                pool("third", "10.3.0.0/16", false),
            ],
        )
        .unwrap();
        let e = write(&store, &planned).unwrap_err().to_string();
        assert!(e.contains("(IPPool third): writing it"), "{e}");
        assert!(
            e.contains("nothing was changed (the 2 objects written before it were put back)"),
            "{e}"
        );
        assert_eq!(store.names(Kind::IpPool).unwrap(), ["first"]);
        let after = store.get(Kind::IpPool, "first").unwrap().unwrap();
        assert_eq!(after.spec, before.spec);
    }

    #[test]
    fn pools_overlap_only_within_a_family() {
        let n = |s: &str| s.parse::<IpNetwork>().unwrap();
        assert!(overlaps(&n("10.0.0.0/16"), &n("10.0.1.0/24")));
        assert!(overlaps(&n("10.0.1.0/24"), &n("10.0.0.0/16")));
        assert!(!overlaps(&n("10.0.0.0/16"), &n("10.1.0.0/16")));
        assert!(!overlaps(&n("10.0.0.0/8"), &n("fd00::/8")));
    }
}
