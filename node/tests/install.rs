//! `reef install` as the DaemonSet's init container runs it: into directories standing in for
//! the host's (/opt/cni/bin, /etc/cni/net.d, /etc/reef), in a network namespace standing in
//! for the host network (the node address is found on its interface).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use reef_integration::Netns;

const REEF: &str = env!("CARGO_BIN_EXE_reef");

/// A "host": a namespace with the node address on eth0-like link, and its directories.
struct Host {
    ns: Netns,
    dir: tempfile::TempDir,
}

impl Host {
    fn new(tag: &str) -> Host {
        let ns = Netns::new(tag).unwrap();
        ns.ip([
            "link", "add", "ens3", "type", "veth", "peer", "name", "ens3p",
        ])
        .unwrap();
        ns.ip(["addr", "add", "192.0.2.10/24", "dev", "ens3"])
            .unwrap();
        ns.ip(["link", "set", "ens3", "up"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for d in ["bin", "net.d", "etc", "src"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        for p in ["reef-cni", "reef-ipam", "portmap", "loopback"] {
            fs::write(dir.path().join("src").join(p), format!("#!/bin/true {p}\n")).unwrap();
        }
        Host { ns, dir }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs `reef install` for the embedded store in the host namespace.
    fn install(&self, extra: &[(&str, &str)]) -> (i32, String) {
        let mut cmd = self.ns.command(REEF);
        cmd.arg("install")
            .env_clear()
            .env("NODE_NAME", "node-a")
            .env("HOST_IP", "192.0.2.10")
            .env("REEF_CNI_BIN_DIR", self.p("bin"))
            .env("REEF_CNI_CONF_DIR", self.p("net.d"))
            .env("REEF_ETC_DIR", self.p("etc"))
            .env("REEF_HOST_ETC_DIR", "/etc/reef")
            .env("REEF_CNI_SOURCE_DIR", self.p("src"))
            .env("REEF_EMBEDDED_STORE", "/var/lib/reef/store.db");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        run(cmd)
    }
}

fn run(mut cmd: Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn install_writes_binaries_node_config_and_conflist() {
    let h = Host::new("inst-ok");
    let (code, out) = h.install(&[]);
    assert_eq!(code, 0, "{out}");
    for b in ["reef-cni", "reef-ipam", "portmap", "loopback"] {
        let p = h.p("bin").join(b);
        assert_eq!(
            fs::read(&p).unwrap(),
            fs::read(h.p("src").join(b)).unwrap(),
            "{b}"
        );
        assert_eq!(mode(&p), 0o755, "{b}");
    }
    let conf = fs::read_to_string(h.p("net.d/10-reef.conflist")).unwrap();
    assert!(
        conf.contains(r#""nodeConfig": "/etc/reef/node.yaml""#),
        "{conf}"
    );
    let node = fs::read_to_string(h.p("etc/node.yaml")).unwrap();
    // The address with its prefix length and the interface, found over netlink.
    assert!(node.contains("address: 192.0.2.10/24"), "{node}");
    assert!(node.contains("interface: ens3"), "{node}");
    assert!(node.contains("nodeName: node-a"), "{node}");
    assert!(node.contains("/var/lib/reef/store.db"), "{node}");
    // No temporary files are left in any directory.
    for d in ["bin", "net.d", "etc"] {
        for e in fs::read_dir(h.p(d)).unwrap() {
            let n = e.unwrap().file_name().into_string().unwrap();
            assert!(!n.starts_with('.'), "left behind: {d}/{n}");
        }
    }
    // Twice is the same as once, and writes nothing the second time.
    let (code, out) = h.install(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(0 files changed)"), "{out}");
}

#[test]
fn the_nodes_own_reference_plugins_are_kept_and_reefs_are_updated() {
    let h = Host::new("inst-keep");
    fs::write(h.p("bin/portmap"), "node's own portmap").unwrap();
    fs::write(h.p("bin/reef-cni"), "old reef-cni").unwrap();
    let (code, out) = h.install(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        fs::read_to_string(h.p("bin/portmap")).unwrap(),
        "node's own portmap"
    );
    assert_eq!(
        fs::read(h.p("bin/reef-cni")).unwrap(),
        fs::read(h.p("src/reef-cni")).unwrap()
    );
}

#[test]
fn a_missing_mount_fails_with_one_sentence_and_no_conflist() {
    let h = Host::new("inst-nodir");
    fs::remove_dir(h.p("bin")).unwrap();
    let (code, out) = h.install(&[]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("the CNI bin dir"), "{out}");
    assert!(
        out.contains("does not exist: mount the host's /opt/cni/bin"),
        "{out}"
    );
    assert!(!h.p("net.d/10-reef.conflist").exists());
    assert!(!h.p("etc/node.yaml").exists());
}

#[test]
fn a_plugin_the_conflist_chains_but_nobody_has_fails_before_the_conflist() {
    let h = Host::new("inst-noplug");
    fs::remove_file(h.p("src/portmap")).unwrap();
    let (code, out) = h.install(&[]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("needs the CNI plugin portmap"), "{out}");
    assert!(
        !h.p("net.d/10-reef.conflist").exists(),
        "conflist written before its plugins"
    );
}

#[test]
fn an_address_no_interface_holds_is_refused_naming_it() {
    let h = Host::new("inst-noaddr");
    let (code, out) = h.install(&[("HOST_IP", "198.51.100.7")]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("198.51.100.7"), "{out}");
    assert!(!h.p("net.d/10-reef.conflist").exists());
}

#[test]
fn an_unwritable_cni_dir_fails_naming_it() {
    let h = Host::new("inst-ro");
    // Root ignores file modes: make the directory a read-only mount in a private mount
    // namespace of the command alone.
    let script = format!(
        "mount --bind {bin} {bin} && mount -o remount,bind,ro {bin} && exec \"$@\"",
        bin = h.p("bin").display()
    );
    let mut cmd = h.ns.command("unshare");
    cmd.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
        REEF,
        "install",
    ])
    .env_clear()
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    .env("NODE_NAME", "node-a")
    .env("HOST_IP", "192.0.2.10")
    .env("REEF_CNI_BIN_DIR", h.p("bin"))
    .env("REEF_CNI_CONF_DIR", h.p("net.d"))
    .env("REEF_ETC_DIR", h.p("etc"))
    .env("REEF_CNI_SOURCE_DIR", h.p("src"))
    .env("REEF_EMBEDDED_STORE", "/var/lib/reef/store.db");
    let (code, out) = run(cmd);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("cannot write to the CNI bin dir"), "{out}");
    assert!(out.contains("mount it read-write"), "{out}");
    assert!(!h.p("net.d/10-reef.conflist").exists());
}

#[test]
fn status_without_a_node_config_names_the_cause_once() {
    let out = Command::new(REEF)
        .args(["--config", "/nonexistent/reef/node.yaml", "status"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}
