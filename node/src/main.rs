//! The `reef` command: the node agent, the CLI that looks at it, and the local lab.
//!
//! Only this crate parses flags, sets up logging and decides exit codes; the libraries it
//! wires together (bgp, ipam, tunnel, felix-lite, cni, config) expose types and functions.

use clap::Parser;

/// reef: a Kubernetes pod network that routes pod traffic with BGP and IP-in-IP.
#[derive(Debug, Parser)]
#[command(name = "reef", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
