//! A worker process for the IPAM storm test and the allocation benchmark: one "node"
//! allocating (and randomly releasing) addresses on a shared embedded store.
//!
//! ```text
//! reef-ipam-storm --store PATH --node NAME [--count N] [--release-percent P] [--seed S]
//!                 [--v6] [--latencies]
//! ```
//!
//! Prints one line per event, so a parent that kills the process with SIGKILL knows what was
//! in flight: `start H`, `done H ADDR...`, `rel-start H`, `rel-done H`; at the end
//! `held H...` (the handles it still holds) and, with `--latencies`, `lat-us N...`.
//! `--count 0` allocates until killed.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use reef_config::AllocationAttributes;
use reef_ipam::{AutoAssignArgs, EmbeddedStore, HandleId, Ipam};

struct Args {
    store: String,
    node: String,
    count: u64,
    release_percent: u64,
    seed: u64,
    v6: bool,
    latencies: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        store: String::new(),
        node: String::new(),
        count: 250,
        release_percent: 0,
        seed: 1,
        v6: false,
        latencies: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--store" => a.store = val("--store")?,
            "--node" => a.node = val("--node")?,
            "--count" => {
                a.count = val("--count")?
                    .parse()
                    .map_err(|e| format!("--count: {e}"))?
            }
            "--release-percent" => {
                a.release_percent = val("--release-percent")?
                    .parse()
                    .map_err(|e| format!("--release-percent: {e}"))?
            }
            "--seed" => a.seed = val("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--v6" => a.v6 = true,
            "--latencies" => a.latencies = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.store.is_empty() || a.node.is_empty() {
        return Err("--store and --node are required".into());
    }
    Ok(a)
}

/// xorshift64*: reproducible from --seed, no dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn run(a: Args) -> Result<(), String> {
    let store = EmbeddedStore::open(&a.store).map_err(|e| e.to_string())?;
    // Each worker stands for a node's agent, which checkpoints off the allocation path.
    store.start_checkpointer().map_err(|e| e.to_string())?;
    let ipam = Ipam::new(store);
    let mut rng = a.seed.max(1);
    let mut held: Vec<HandleId> = Vec::new();
    let mut lat = Vec::new();
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut i = 0u64;
    while a.count == 0 || i < a.count {
        let handle = HandleId(format!("{}.{}.{i}", a.node, a.seed));
        writeln!(out, "start {handle}").map_err(|e| e.to_string())?;
        let t = Instant::now();
        let got = ipam
            .auto_assign(&AutoAssignArgs {
                handle: handle.clone(),
                num_v4: 1,
                num_v6: usize::from(a.v6),
                node: a.node.clone(),
                attributes: AllocationAttributes {
                    pod_namespace: Some("storm".into()),
                    pod_name: Some(handle.0.clone()),
                    ..Default::default()
                },
                ..Default::default()
            })
            .map_err(|e| format!("allocate {handle}: {e}"))?;
        lat.push(t.elapsed().as_micros() as u64);
        let addrs: Vec<String> = got
            .v4
            .iter()
            .chain(&got.v6)
            .map(|x| x.address.to_string())
            .collect();
        writeln!(out, "done {handle} {}", addrs.join(" ")).map_err(|e| e.to_string())?;
        held.push(handle);
        if a.release_percent > 0 && next(&mut rng) % 100 < a.release_percent {
            let victim = held.swap_remove((next(&mut rng) % held.len() as u64) as usize);
            writeln!(out, "rel-start {victim}").map_err(|e| e.to_string())?;
            ipam.release_by_handle(&victim)
                .map_err(|e| format!("release {victim}: {e}"))?;
            writeln!(out, "rel-done {victim}").map_err(|e| e.to_string())?;
        }
        i += 1;
    }
    let names: Vec<&str> = held.iter().map(|h| h.0.as_str()).collect();
    writeln!(out, "held {}", names.join(" ")).map_err(|e| e.to_string())?;
    if a.latencies {
        let l: Vec<String> = lat.iter().map(|x| x.to_string()).collect();
        writeln!(out, "lat-us {}", l.join(" ")).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match parse().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reef-ipam-storm: {e}");
            ExitCode::FAILURE
        }
    }
}
