//! `reef install` as the DaemonSet's init container runs it: into directories standing in for
//! the host's (/opt/cni/bin, /etc/cni/net.d, /etc/reef), in a network namespace standing in
//! for the host network (the node address is found on its interface).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use reef_integration::agent::{Agent, AgentSpec};
use reef_integration::apiserver::StandIn;
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
        let mut cmd = self.install_cmd();
        cmd.env("REEF_HOST_ETC_DIR", "/etc/reef")
            .env("REEF_EMBEDDED_STORE", "/var/lib/reef/store.db");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        run(cmd)
    }

    /// `reef install` with the Kubernetes datastore, against `api` with its stand-in
    /// kubeconfig (as the init container with its pod's service account). The "host" sees
    /// the etc dir where the test does, so the paths written into files resolve here too.
    fn install_kubernetes(&self, api: &StandIn) -> (i32, String) {
        let kubeconfig = api.write_kubeconfig(self.dir.path()).unwrap();
        let mut cmd = self.install_cmd();
        cmd.env("REEF_HOST_ETC_DIR", self.p("etc"))
            .env("REEF_INSTALL_KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", "reef-system");
        run(cmd)
    }

    fn install_cmd(&self) -> Command {
        let mut cmd = self.ns.command(REEF);
        cmd.arg("install")
            .env_clear()
            .env("NODE_NAME", "node-a")
            .env("HOST_IP", "192.0.2.10")
            .env("REEF_CNI_BIN_DIR", self.p("bin"))
            .env("REEF_CNI_CONF_DIR", self.p("net.d"))
            .env("REEF_ETC_DIR", self.p("etc"))
            .env("REEF_CNI_SOURCE_DIR", self.p("src"));
        cmd
    }

    /// The API-server stand-in on the host namespace's loopback, with this host's Node.
    fn api(&self) -> StandIn {
        let api = self
            .ns
            .in_ns(|| StandIn::start().map_err(std::io::Error::other))
            .unwrap();
        api.put_node("node-a", &[], &["192.0.2.10"]);
        api
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

/// The Kubernetes path: install asks the API server (the stand-in: no real one runs here) for
/// a token of the reef-cni service account and writes it and a kubeconfig for the host-side
/// plugin; the plugin's datastore, opened from the node config as reef-cni opens it,
/// authenticates with that token.
#[test]
fn install_writes_the_plugins_token_and_a_kubeconfig_that_authenticates() {
    let h = Host::new("inst-kube");
    let api = h.api();
    api.put_service_account("reef-system", "reef-cni");
    let (code, out) = h.install_kubernetes(&api);
    assert_eq!(code, 0, "{out}");

    let issued = api.issued_tokens();
    assert_eq!(issued.len(), 1, "{out}");
    let token_path = h.p("etc/cni.token");
    assert_eq!(fs::read_to_string(&token_path).unwrap(), issued[0]);
    assert_eq!(mode(&token_path), 0o600);
    let kc_path = h.p("etc/cni.kubeconfig");
    assert_eq!(mode(&kc_path), 0o600);
    let kc = fs::read_to_string(&kc_path).unwrap();
    assert!(kc.contains(&format!("server: {}\n", api.url())), "{kc}");
    assert!(
        kc.contains(&format!("tokenFile: {}\n", token_path.display())),
        "{kc}"
    );
    // The stand-in speaks plain HTTP: there is no CA to pass on (with TLS the install
    // client's CA goes in as certificate-authority-data).
    assert!(!kc.contains("certificate-authority"), "{kc}");
    let node = fs::read_to_string(h.p("etc/node.yaml")).unwrap();
    assert!(
        node.contains(&format!(
            "kubernetes: {{ kubeconfig: {} }}",
            kc_path.display()
        )),
        "{node}"
    );
    assert!(h.p("net.d/10-reef.conflist").is_file());

    // The node config the plugin reads reaches the API server with the issued token.
    let ipam_show = || {
        let mut cmd = h.ns.command(REEF);
        cmd.env_clear()
            .arg("--config")
            .arg(h.p("etc/node.yaml"))
            .args(["ipam", "show"]);
        run(cmd)
    };
    let (code, out) = ipam_show();
    assert_eq!(code, 0, "{out}");
    assert!(api.requests_with_token(&issued[0]) > 0);
    // And only with it: a token the API server did not issue is refused.
    fs::write(&token_path, "forged").unwrap();
    let (code, out) = ipam_show();
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("401") || out.contains("Unauthorized"), "{out}");

    // Run again (the agent does at every start): a new token replaces the file.
    let (code, out) = h.install_kubernetes(&api);
    assert_eq!(code, 0, "{out}");
    let issued = api.issued_tokens();
    assert_eq!(issued.len(), 2);
    assert_eq!(fs::read_to_string(&token_path).unwrap(), issued[1]);
}

#[test]
fn without_the_plugins_service_account_install_fails_before_the_conflist() {
    let h = Host::new("inst-nosa");
    let api = h.api();
    let (code, out) = h.install_kubernetes(&api);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("asking for a token of the service account reef-system/reef-cni"),
        "{out}"
    );
    // The API server's answer is said once (kube's error repeats its message, reason and
    // the whole Status in its Display).
    assert_eq!(out.matches("not found").count(), 1, "{out}");
    assert!(!out.contains("ErrorResponse"), "{out}");
    assert!(!h.p("net.d/10-reef.conflist").exists());
    assert!(!h.p("etc/cni.token").exists());
    assert!(!h.p("etc/cni.kubeconfig").exists());
}

/// The agent (`reef node run --install`, as the DaemonSet's agent container runs it) renews the
/// plugin's token before it expires. The API-server stand-in grants 10 s tokens here (its
/// `--service-account-max-token-expiration` knob; a real API server grants no less than 10
/// minutes), so renewals are seen within seconds: each new token is in the file before the
/// previous one expires, and it authenticates.
#[test]
fn the_agent_renews_the_plugins_token_before_it_expires() {
    let h = Host::new("inst-renew");
    let api = h.api();
    api.put_service_account("reef-system", "reef-cni");
    api.cap_token_seconds(10);
    let url = api.url();
    h.ns.in_ns(move || {
        use reef_ipam::StoreExt as _;
        let store =
            reef_ipam::kubernetes::KubeStore::connect_url(&url).map_err(std::io::Error::other)?;
        let pool = reef_config::crds::IpPoolSpec::new("10.244.0.0/16".parse().unwrap());
        store
            .create_typed(&reef_ipam::Typed::new("default", pool))
            .map_err(std::io::Error::other)
    })
    .unwrap();
    let kubeconfig = api.write_kubeconfig(h.dir.path()).unwrap();
    // The agent's own node config (what the DaemonSet's node.yaml says, with this test's
    // socket and files instead of /run/reef), and the install's environment.
    let env = vec![
        "NODE_NAME=node-a".to_string(),
        "HOST_IP=192.0.2.10".to_string(),
        format!("REEF_CNI_BIN_DIR={}", h.p("bin").display()),
        format!("REEF_CNI_CONF_DIR={}", h.p("net.d").display()),
        format!("REEF_ETC_DIR={}", h.p("etc").display()),
        format!("REEF_HOST_ETC_DIR={}", h.p("etc").display()),
        format!("REEF_CNI_SOURCE_DIR={}", h.p("src").display()),
        format!("REEF_INSTALL_KUBECONFIG={}", kubeconfig.display()),
    ];
    let agent_dir = h.p("agent");
    let agent = Agent::spawn(
        &h.ns,
        &AgentSpec {
            interface: "ens3",
            env,
            args: vec!["--install"],
            ..AgentSpec::new(REEF, "node-a", "192.0.2.10/24", &kubeconfig, &agent_dir)
        },
    )
    .unwrap();
    let agent_log = || agent.log();

    // The install at start, then a renewal at 80 % of each 10 s lifetime: three tokens within
    // 25 s (with a floor of a minute, as before, there was one).
    let token_path = h.p("etc/cni.token");
    let t0 = std::time::Instant::now();
    let mut seen: Vec<(String, std::time::Duration)> = Vec::new();
    while seen.len() < 3 && t0.elapsed() < std::time::Duration::from_secs(25) {
        if let Ok(t) = fs::read_to_string(&token_path) {
            if seen.last().map(|(s, _)| s) != Some(&t) {
                seen.push((t, t0.elapsed()));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let times: Vec<_> = seen.iter().map(|(_, at)| *at).collect();
    assert!(
        seen.len() >= 3,
        "token file changed {} times in 25 s ({times:?})\nagent log:\n{}",
        seen.len(),
        agent_log()
    );
    // Each token replaced its predecessor before that one's 10 s ran out.
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] < std::time::Duration::from_secs(10),
            "a renewal came late: {times:?}"
        );
    }
    let issued = api.issued_tokens();
    let latest = &seen.last().unwrap().0;
    assert_eq!(
        issued.last(),
        Some(latest),
        "the file holds the newest token"
    );
    assert!(
        agent_log().contains("renewed the plugin's token"),
        "{}",
        agent_log()
    );
    // The plugin's kubeconfig authenticates with what is in the file now.
    let mut cmd = h.ns.command(REEF);
    cmd.env_clear()
        .arg("--config")
        .arg(h.p("etc/node.yaml"))
        .args(["ipam", "show"]);
    let before = api.requests_with_token(latest);
    let (code, out) = run(cmd);
    assert_eq!(code, 0, "{out}");
    assert!(api.requests_with_token(latest) > before);
}
