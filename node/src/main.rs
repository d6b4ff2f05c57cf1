//! The `reef` command: the node agent, the CLI that looks at it, and the local lab.
//!
//! Only this crate parses flags, sets up logging and decides exit codes; the libraries it
//! wires together (bgp, ipam, tunnel, felix-lite, cni, config) expose types and functions.

mod agent;
mod apply_cmd;
mod control;
mod datastore;
mod install;
mod ipam_cmd;
#[cfg(feature = "lab")]
mod lab;
#[cfg(feature = "containerd-lab")]
mod lab_containerd;
mod output;
mod status_cmd;
mod sys;

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
    /// `reef get` only.
    Yaml,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The node agent.
    #[command(subcommand)]
    Node(NodeCmd),
    /// This node's BGP peers, tunnel and routes, from the local agent.
    Status,
    /// The routes the agent programs and why.
    Routes,
    /// Install reef's CNI plugin on this node (the DaemonSet's init container): binaries, node
    /// config, the plugin's kubeconfig and token, and the conflist last.
    Install(install::InstallArgs),
    /// IP address management: pools, blocks, leaks.
    #[command(subcommand)]
    Ipam(ipam_cmd::IpamCmd),
    /// The local lab: nodes, a BIRD router and pods in network namespaces on this machine.
    #[cfg(all(feature = "lab", not(feature = "containerd-lab")))]
    #[command(subcommand)]
    Lab(lab::LabCmd),
    /// The local lab: nodes, a BIRD router and pods in network namespaces on this machine
    /// (`--runtime containerd`: each node runs containerd and reef's image, as on a cluster).
    #[cfg(feature = "containerd-lab")]
    Lab(lab_containerd::LabArgs),
    /// Create or update IPPools, BGPPeers, BGPConfiguration and IPAMConfig from YAML, as
    /// `kubectl apply -f` on a cluster (embedded datastore; all documents or none).
    Apply(apply_cmd::ApplyArgs),
    /// Show reef's objects in the embedded datastore (table, `-o yaml` or `-o json`).
    Get(apply_cmd::GetArgs),
    /// Delete an IPPool, BGPPeer, BGPConfiguration or IPAMConfig from the embedded datastore.
    Delete(apply_cmd::DeleteArgs),
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// Run the agent in the foreground until SIGTERM (graceful restart: peers keep routes).
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Run `reef install` at start and keep it true: renew the plugin's token, put back files
    /// that went missing; readiness waits for it (the DaemonSet's agent container).
    #[arg(long)]
    install: bool,
    /// Use this pod's service account for the Kubernetes datastore instead of the node
    /// config's kubeconfig (which is the host-side CNI plugin's).
    #[arg(long)]
    in_cluster: bool,
    #[command(flatten)]
    install_args: install::InstallArgs,
}

/// What a command's outcome means to a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Problems = 1,
    Failed = 3,
}

fn run_agent(mut cfg: NodeConfig, args: RunArgs) -> anyhow::Result<Exit> {
    if args.in_cluster {
        cfg.datastore = reef_config::node_config::Datastore::Kubernetes { kubeconfig: None };
    }
    // The agent holds the BGP tables: a fixed mmap threshold keeps its peak RSS steady
    // (before any thread starts, as glibc wants).
    reef_bgp::tune_allocator();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log_level))
        .map_err(|e| anyhow::anyhow!("logLevel: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: container logs are read as plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let install = args.install.then_some(args.install_args);
    rt.block_on(agent::run(cfg, install))?;
    Ok(Exit::Ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output {
        json: cli.output == Format::Json,
    };
    if !matches!(cli.command, Command::Node(_)) {
        sys::default_sigpipe();
    }
    let config = || NodeConfig::load(&cli.config).map_err(anyhow::Error::from);
    if cli.output == Format::Yaml && !matches!(cli.command, Command::Get(_)) {
        return finish(Err(anyhow::anyhow!(
            "-o yaml is for `reef get`; this command prints a table or -o json"
        )));
    }
    let result = match cli.command {
        Command::Node(NodeCmd::Run(args)) => config().and_then(|c| run_agent(c, args)),
        // The init container writes the node config; it reads none.
        Command::Install(args) => install::run(&args),
        Command::Status => config().and_then(|c| status_cmd::status(&c, out)),
        Command::Routes => config().and_then(|c| status_cmd::routes(&c, out)),
        Command::Ipam(cmd) => config().and_then(|c| ipam_cmd::run(&c, cmd, out)),
        // The lab writes its own node configs; it reads none.
        #[cfg(all(feature = "lab", not(feature = "containerd-lab")))]
        Command::Lab(cmd) => lab::run(cmd, out),
        #[cfg(feature = "containerd-lab")]
        Command::Lab(args) => lab_containerd::run(args, out),
        Command::Apply(args) => config().and_then(|c| apply_cmd::apply(&c, &args)),
        Command::Get(args) => {
            let format = match cli.output {
                Format::Table => apply_cmd::GetFormat::Table,
                Format::Json => apply_cmd::GetFormat::Json,
                Format::Yaml => apply_cmd::GetFormat::Yaml,
            };
            config().and_then(|c| apply_cmd::get(&c, &args, format))
        }
        Command::Delete(args) => config().and_then(|c| apply_cmd::delete(&c, &args)),
    };
    finish(result)
}

fn finish(result: anyhow::Result<Exit>) -> ExitCode {
    match result {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(e) => {
            eprintln!("reef: {}", causes(&e));
            ExitCode::from(Exit::Failed as u8)
        }
    }
}

/// An error and its causes on one line, as `{:#}` prints them, except that an API server's
/// answer is said once: kube's `Error::Api` repeats the message, the reason and the whole
/// `Status` in its Display, and the `Status` again as its source.
pub(crate) fn causes(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        if let Some(kube::Error::Api(s)) = cause.downcast_ref::<kube::Error>() {
            parts.push(format!(
                "the API server answered {} {}: {}",
                s.code, s.reason, s.message
            ));
            break;
        }
        let text = cause.to_string();
        // A wrapper that only repeats its source adds nothing.
        if parts.last() != Some(&text) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
