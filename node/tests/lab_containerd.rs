//! `reef lab --runtime containerd`: the lab whose nodes each run containerd and reef's image,
//! the DaemonSet's pod made through the CRI as kubelet makes it (real containerd, runc,
//! reef-cni called by containerd; the embedded datastore instead of an API server). One test:
//! the lab's names (`reef-ctrd-*`, /run/reef-lab-containerd) are fixed, like a user's lab.
//!
//! - `up` on 2 subnets × 2 nodes returns once the keeper has every agent in the full mesh and
//!   a CRI pod on each node; `status` (table and JSON) shows the mesh, the blocks and the pods;
//!   `down` stops the keeper, which removes every containerd, namespace and directory.
//! - `demo`: the same lab built, a ping matrix from every pod to every pod on other nodes
//!   (across the subnets: IP-in-IP) through CRI exec, everything removed.

use std::path::{Path, PathBuf};
use std::process::Command;

use reef_integration::containerd_lab::reef_image_archive;

const REEF: &str = env!("CARGO_BIN_EXE_reef");

fn reef(archive: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(REEF);
    // `-o json` is reef's own option, before `lab`.
    let (global, rest) = match args.first() {
        Some(&"-o") => (&args[..2], &args[2..]),
        _ => (&args[..0], args),
    };
    cmd.args(global)
        .args(["lab", "--runtime", "containerd", "--image"])
        .arg(archive)
        .args(rest);
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a containerd lab leaves behind: its namespaces, state, directories, processes.
fn leftovers() -> Vec<String> {
    let mut left = Vec::new();
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    for l in String::from_utf8_lossy(&ns.stdout).lines() {
        if l.starts_with("reef-ctrd") {
            left.push(format!("namespace {l}"));
        }
    }
    for p in [
        "/run/reef-lab-containerd/state.json",
        "/var/lib/reef-lab-containerd",
    ] {
        if Path::new(p).exists() {
            left.push(p.to_string());
        }
    }
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("/var/lib/reef-lab-containerd")
            || cmdline.contains(" lab --runtime containerd") && cmdline.contains(" keep ")
        {
            left.push(format!(
                "process {}: {cmdline}",
                e.file_name().to_string_lossy()
            ));
        }
    }
    left
}

/// Takes the lab down when the test ends, also when it fails.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = reef(&self.0, &["down"]);
    }
}

#[test]
fn containerd_lab_up_status_down_and_demo() {
    let archive = match reef_image_archive().unwrap() {
        Ok((a, _)) => a,
        Err(why) => {
            eprintln!("SKIPPED: reef's image cannot be built on this machine: {why}");
            return;
        }
    };
    assert_eq!(
        leftovers(),
        Vec::<String>::new(),
        "a containerd lab was already here"
    );
    let down = Down(archive.clone());

    let t = std::time::Instant::now();
    let (code, out, err) = reef(
        &archive,
        &["up", "--nodes", "4", "--subnets", "2", "--pods", "1"],
    );
    assert_eq!(code, 0, "up: {out}\n{err}");
    let up = t.elapsed();
    // Every node: all three others Established, a block, its CRI socket.
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("node-")).collect();
    assert_eq!(rows.len(), 4, "{out}");
    for r in &rows {
        assert!(r.contains(" 3/3 "), "not in the full mesh: {r}\n{out}");
        assert!(r.contains("containerd.sock"), "{r}");
    }
    let pods: Vec<&str> = out.lines().filter(|l| l.starts_with("pod-")).collect();
    assert_eq!(pods.len(), 4, "{out}");

    let (code, json, err) = reef(&archive, &["-o", "json", "status"]);
    assert_eq!(code, 0, "status: {json}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["runtime"], "containerd");
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    for n in nodes {
        let peers = n["agent"]["peers"]
            .as_array()
            .unwrap_or_else(|| panic!("{n}"));
        assert_eq!(peers.len(), 3, "{n}");
        assert!(peers.iter().all(|p| p["state"] == "Established"), "{n}");
        assert!(!n["agent"]["blocks"].as_array().unwrap().is_empty(), "{n}");
    }
    for p in v["pods"].as_array().unwrap() {
        assert!(p["address"].as_str().unwrap().starts_with("10.244."), "{p}");
    }
    // A second lab is refused while this one runs.
    let (code, _, err) = reef(&archive, &["up", "--nodes", "2", "--subnets", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("already running"), "{err}");

    let (code, out, err) = reef(&archive, &["down"]);
    assert_eq!(code, 0, "down: {out}\n{err}");
    assert_eq!(leftovers(), Vec::<String>::new());
    let (code, _, err) = reef(&archive, &["status"]);
    assert_ne!(code, 0);
    assert!(err.contains("no containerd lab is running"), "{err}");

    let t2 = std::time::Instant::now();
    let (code, out, err) = reef(&archive, &["demo"]);
    assert_eq!(code, 0, "demo: {out}\n{err}");
    assert!(out.contains("12 of 12 pairs reachable"), "{out}\n{err}");
    assert_eq!(leftovers(), Vec::<String>::new());
    drop(down);
    eprintln!(
        "containerd lab: up (4 nodes, 2 subnets, 4 CRI pods) {up:.1?}, demo {:.1?}",
        t2.elapsed()
    );
}
