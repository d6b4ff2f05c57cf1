//! `reef lab status`: each node's agent queried over its socket, as a table or JSON; the node
//! row is shared with the containerd lab.

use anyhow::Result;

use super::{load, LabNode};
use crate::agent::snapshot::Snapshot;
use crate::output::{Output, Table};
use crate::Exit;

pub(super) fn snapshot_of(n: &LabNode) -> Result<Snapshot> {
    crate::control::query(&n.config.with_file_name("agent.sock"))
}

pub(super) fn status(out: Output) -> Result<Exit> {
    let st = load()?;
    let snaps: Vec<(LabNode, Result<Snapshot>)> = st
        .nodes
        .iter()
        .map(|n| (n.clone(), snapshot_of(n)))
        .collect();
    if out.json {
        let v: Vec<serde_json::Value> = snaps
            .iter()
            .map(|(n, s)| match s {
                Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                Err(e) => serde_json::json!({ "node": n.name, "error": e.to_string() }),
            })
            .collect();
        let pods: Vec<serde_json::Value> = st
            .pods
            .iter()
            .map(|p| serde_json::json!({"name": p.name, "node": p.node, "address": p.address, "address6": p.address6}))
            .collect();
        out.print_json(&serde_json::json!({ "nodes": v, "pods": pods, "outside": st.outside.as_ref().map(|o| serde_json::json!({"namespace": o.ns, "address": o.address, "address6": o.address6})) }))?;
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&NODE_COLUMNS);
    let mut ok = true;
    for (n, s) in &snaps {
        ok &= s.is_ok();
        t.row(node_row(&n.name, &n.address.to_string(), s));
    }
    print!("{}", t.render());
    let mut p = Table::new(&["POD", "NODE", "ADDRESS", "IPV6"]);
    for pod in &st.pods {
        p.row(vec![
            pod.name.clone(),
            pod.node.clone(),
            pod.address.to_string(),
            pod.address6.map(|a| a.to_string()).unwrap_or_default(),
        ]);
    }
    println!();
    print!("{}", p.render());
    if let Some(o) = &st.outside {
        println!(
            "\noutside host (not a node, behind the router): {} {}{}",
            o.ns,
            o.address,
            o.address6.map(|a| format!(" {a}")).unwrap_or_default()
        );
    }
    Ok(if ok { Exit::Ok } else { Exit::Problems })
}

/// The columns of a lab status's node table ([`node_row`]).
pub const NODE_COLUMNS: [&str; 6] = ["NODE", "ADDRESS", "PEERS UP", "TUNNEL", "BLOCKS", "ROUTES"];

/// A node's row of a lab status: its agent's sessions, tunnel, blocks and routes, or why the
/// agent did not answer.
pub fn node_row(name: &str, address: &str, snap: &Result<Snapshot>) -> Vec<String> {
    match snap {
        Ok(s) => vec![
            name.to_string(),
            address.to_string(),
            format!("{}/{}", s.established(), s.peers.len()),
            s.tunnel_mode.clone(),
            s.blocks.join(" "),
            format!("{}/{}", s.routes_programmed, s.routes_desired),
        ],
        Err(e) => {
            let mut row = vec![name.to_string(), address.to_string()];
            row.push(format!("agent down: {e}"));
            row.resize(NODE_COLUMNS.len(), String::new());
            row
        }
    }
}
