//! `reef-bgp --config speaker.yaml`: reef's BGP speaker on its own, to try a router before
//! deploying reef, and for the interop tests.
//!
//! Prints one JSON object per line on stdout:
//! - `{"event":"ready","listen":"0.0.0.0:179"}` once the listener is bound;
//! - `{"event":"peer","address":…,"peer_type":…,"state":"Established","reason":…}` on every
//!   session state change;
//! - `{"event":"route","prefix":"10.244.1.0/26","next_hops":["10.100.1.2"]}` on every
//!   best-path change (no next hops: withdrawn, or the best path is our own);
//! - `{"event":"status","peers":[…]}` every `--status-interval` milliseconds, if given;
//! - `{"event":"stopped"}` on the way out.
//!
//! SIGHUP reloads the configuration: prefixes to originate and peers are brought in line
//! with the file without restarting (`{"event":"reloaded"}`, or `{"event":"reload_failed"}`
//! with the error); the speaker-wide settings need a restart.
//!
//! SIGTERM and SIGINT stop it the graceful restart way: the sessions close without a
//! NOTIFICATION, so peers keep its routes until it comes back (start it again with
//! `--restarting`) and sends End-of-RIB. Logs go to stderr (`RUST_LOG`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use reef_bgp::config::SpeakerConfig;
use reef_bgp::speaker::{state_name, Shutdown, Speaker, SpeakerEvent, SpeakerHandle};
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Parser)]
#[command(name = "reef-bgp", about = "reef's BGP speaker, standalone")]
struct Args {
    /// The speaker configuration (YAML).
    #[arg(long)]
    config: PathBuf,
    /// This is a restart: tell peers (graceful restart R and F bits) that our forwarding
    /// state was kept, so they hold our routes until our End-of-RIB.
    #[arg(long)]
    restarting: bool,
    /// Do not print route events (for very large tables).
    #[arg(long)]
    no_routes: bool,
    /// Print a status line every this many milliseconds.
    #[arg(long)]
    status_interval: Option<u64>,
    /// Stop with Cease / Administrative Shutdown instead of the graceful way.
    #[arg(long)]
    hard_stop: bool,
}

fn main() -> ExitCode {
    // Before the runtime's threads exist.
    reef_bgp::tune_allocator();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cfg = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("reef-bgp: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("reef-bgp: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reef-bgp: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &Args) -> anyhow::Result<SpeakerConfig> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let mut cfg = SpeakerConfig::from_yaml(&text)
        .with_context(|| format!("{}: invalid configuration", args.config.display()))?;
    if args.restarting {
        cfg.graceful_restart.restarting = true;
    }
    Ok(cfg)
}

fn print(out: &mut impl Write, v: serde_json::Value) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, &v)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Brings originated prefixes and peers in line with a new configuration.
async fn reload(
    handle: &SpeakerHandle,
    old: &SpeakerConfig,
    new: &SpeakerConfig,
) -> anyhow::Result<()> {
    let gone: Vec<_> = old
        .originate
        .iter()
        .filter(|p| !new.originate.contains(p))
        .copied()
        .collect();
    let added: Vec<_> = new
        .originate
        .iter()
        .filter(|p| !old.originate.contains(p))
        .copied()
        .collect();
    handle.withdraw(gone).await?;
    handle.originate(added).await?;
    for p in &old.peers {
        if !new.peers.iter().any(|q| q.address == p.address) {
            handle.remove_peer(p.address).await?;
        }
    }
    for p in &new.peers {
        match old.peers.iter().find(|q| q.address == p.address) {
            None => handle.add_peer(p.clone()).await?,
            Some(q) if q != p => handle.update_peer(p.clone()).await?,
            Some(_) => {}
        }
    }
    Ok(())
}

async fn run(args: Args, mut cfg: SpeakerConfig) -> anyhow::Result<()> {
    let listen = format!(
        "{}",
        std::net::SocketAddr::new(cfg.listen_address, cfg.listen_port)
    );
    let (handle, mut events) = Speaker::start(cfg.clone()).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    print(&mut out, json!({"event": "ready", "listen": listen}))?;
    out.flush()?;
    let mut tick = tokio::time::interval(Duration::from_millis(
        args.status_interval.unwrap_or(3_600_000).max(10),
    ));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let r = match load(&args) {
                    Ok(new) => reload(&handle, &cfg, &new).await.map(|()| new),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(new) => {
                        cfg = new;
                        print(&mut out, json!({"event": "reloaded"}))?;
                    }
                    Err(e) => print(&mut out, json!({"event": "reload_failed", "error": format!("{e:#}")}))?,
                }
                out.flush()?;
            }
            _ = tick.tick(), if args.status_interval.is_some() => {
                let peers = handle.status().await?;
                let loc_rib = handle.loc_rib_len().await?;
                print(&mut out, json!({"event": "status", "loc_rib": loc_rib, "peers": peers}))?;
                out.flush()?;
            }
            ev = events.recv() => {
                let Some(mut ev) = ev else { break };
                // Write everything already queued, then flush once.
                loop {
                    match ev {
                        SpeakerEvent::BestPaths(bs) => {
                            if !args.no_routes {
                                for b in bs {
                                    print(&mut out, json!({"event": "route", "prefix": b.prefix.to_string(), "next_hops": b.next_hops}))?;
                                }
                            }
                        }
                        SpeakerEvent::EndOfRib { address, family } => {
                            print(&mut out, json!({"event": "end-of-rib", "address": address, "family": format!("{family:?}")}))?;
                        }
                        SpeakerEvent::SelectionDeferralEnded { why } => {
                            print(&mut out, json!({"event": "selection-deferral-ended", "why": why.to_string()}))?;
                        }
                        SpeakerEvent::PeerState { address, peer_type, state, reason } => {
                            print(&mut out, json!({"event": "peer", "address": address, "peer_type": peer_type, "state": state_name(state), "reason": reason}))?;
                        }
                    }
                    match events.try_recv() {
                        Ok(e) => ev = e,
                        Err(_) => break,
                    }
                }
                out.flush()?;
            }
        }
    }
    let how = if args.hard_stop {
        Shutdown::Hard
    } else {
        Shutdown::Graceful
    };
    handle.shutdown(how).await?;
    print(&mut out, json!({"event": "stopped"}))?;
    out.flush()?;
    Ok(())
}
