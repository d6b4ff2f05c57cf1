//! `reef status` and `reef routes`: the local agent's view, through its control socket.

use anyhow::Result;
use reef_config::node_config::NodeConfig;

use crate::agent::snapshot::Snapshot;
use crate::output::{Output, Table};
use crate::{control, Exit};

pub fn status(cfg: &NodeConfig, out: Output) -> Result<Exit> {
    let s = control::query(&cfg.agent_socket)?;
    if out.json {
        out.print_json(&s)?;
    } else {
        print!("{}", render_status(&s));
    }
    Ok(if s.ready && s.problems.is_empty() {
        Exit::Ok
    } else {
        Exit::Problems
    })
}

pub fn render_status(s: &Snapshot) -> String {
    let mut o = format!(
        "reef agent on {} ({}), {}\n\nBGP peers:\n",
        s.node,
        s.address,
        if s.ready { "ready" } else { "starting" }
    );
    let mut t = Table::new(&["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"]);
    for p in &s.peers {
        let info = match (&p.last_error, p.state.as_str()) {
            (_, "Established") => format!(
                "{} received, {} accepted, {} sent",
                p.prefixes_received, p.prefixes_accepted, p.prefixes_sent
            ),
            _ if p.max_prefix_exceeded => "stopped: max-prefix exceeded".to_string(),
            (Some(e), _) => e.clone(),
            (None, _) => String::new(),
        };
        t.row(vec![
            p.address.to_string(),
            p.peer_type.clone(),
            p.state.clone(),
            p.since.clone(),
            info,
        ]);
    }
    o.push_str(&t.render());
    let count = |r: &str| s.routes.iter().filter(|x| x.reason == r).count();
    o.push_str(&format!(
        "\nTunnel: {} (MTU {})\nBlocks: {}\nRoutes: {} programmed of {} desired ({} local pod, {} own block, {} direct, {} ipip, {} userspace ipip)\n",
        s.tunnel_mode,
        s.mtu,
        if s.blocks.is_empty() { "-".to_string() } else { s.blocks.join(", ") },
        s.routes_programmed,
        s.routes_desired,
        count("local pod"),
        count("own block"),
        count("direct"),
        count("ipip"),
        count("userspace ipip"),
    ));
    for p in s.problems.iter().chain(s.reconcile_errors.iter()) {
        o.push_str(&format!("Problem: {p}\n"));
    }
    o
}

pub fn routes(cfg: &NodeConfig, out: Output) -> Result<Exit> {
    let s = control::query(&cfg.agent_socket)?;
    if out.json {
        out.print_json(&s.routes)?;
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&["DESTINATION", "ROUTE", "WHY"]);
    for r in &s.routes {
        t.row(vec![
            r.destination.clone(),
            r.target.clone(),
            r.reason.clone(),
        ]);
    }
    print!("{}", t.render());
    Ok(Exit::Ok)
}
