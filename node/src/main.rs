//! The `reef` command: the node agent, the CLI that looks at it, and the local lab.
//!
//! Only this crate parses flags, sets up logging and decides exit codes; the libraries it
//! wires together (bgp, ipam, tunnel, felix-lite, cni, config) expose types and functions.

mod datastore;
mod ipam_cmd;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use reef_config::node_config::{defaults, NodeConfig};

use crate::output::Output;

/// reef: a Kubernetes pod network that routes pod traffic with BGP and IP-in-IP.
#[derive(Debug, Parser)]
#[command(
    name = "reef",
    version,
    about,
    after_help = "Exit codes: 0 success; 1 the command ran and found problems (e.g. `ipam check`); \
                  2 bad usage; 3 the command could not run (bad config, datastore or agent unreachable)."
)]
struct Cli {
    /// The node config file.
    #[arg(long, global = true, env = "REEF_CONFIG", default_value = defaults::CONFIG_PATH)]
    config: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// IP address management: pools, blocks, leaks.
    #[command(subcommand)]
    Ipam(ipam_cmd::IpamCmd),
}

/// What a command's outcome means to a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Problems = 1,
    Failed = 3,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output {
        json: cli.output == Format::Json,
    };
    let result = NodeConfig::load(&cli.config)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| match cli.command {
            Command::Ipam(cmd) => ipam_cmd::run(&cfg, cmd, out),
        });
    match result {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(e) => {
            eprintln!("reef: {e:#}");
            ExitCode::from(Exit::Failed as u8)
        }
    }
}
