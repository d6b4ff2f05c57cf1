//! A node's own containerd, as a Kubernetes node runs it: the CRI plugin calls the CNI plugin
//! in the node's network namespace, and containers with hostPath mounts see the node's
//! `/etc/cni/net.d`, `/opt/cni/bin`, `/etc/reef` and `/run/reef` — per-node directories here.
//!
//! ```text
//!   host mount ns ─ unshare -m (private) ─▶ instance mount ns, held by a `sleep` (the holder)
//!        │                                   /run         ← DIR/run   (netns pins, shim sockets,
//!        │                                                            runc state, /run/reef)
//!        │                                   /etc/cni     ← DIR/etc-cni   (net.d/)
//!        │                                   /opt/cni     ← DIR/opt-cni   (bin/)
//!        │                                   /etc/reef    ← DIR/etc-reef
//!        │                                   /var/lib/cni ← DIR/var-lib-cni (host-local leases,
//!        │                                                            libcni's result cache)
//!        └─ nsenter --net=/run/netns/NODE ──▶ containerd --root DIR/root --state DIR/state
//!                                                      --address DIR/containerd.sock
//!                                            (restarted with nsenter -t HOLDER -m -n)
//! ```
//!
//! - [`Containerd::start`] starts it inside a node's namespace (`nsenter --net`, never `ip
//!   netns exec`: that remounts /sys and runc then finds no cgroup mount) with its own root,
//!   state, socket and config, and imports the pause image ([`pause_image`]).
//! - [`Containerd::cri`] gives a [`Cri`] client whose pods go under the instance's cgroup
//!   parent ([`Containerd::cgroup_parent`], `/reeft-…`, cgroupfs driver).
//! - [`Containerd::import`] imports an OCI archive into the `k8s.io` namespace (what the CRI
//!   plugin sees); [`Containerd::import_image`] builds one first ([`test_image`]: busybox).
//! - Per-node directories as seen from the host: [`Containerd::cni_conf_dir`],
//!   [`Containerd::cni_bin_dir`], [`Containerd::etc_reef`], [`Containerd::run_reef`],
//!   [`Containerd::var_lib_cni`].
//! - [`Containerd::restart`] stops containerd (its shims and containers keep running) and
//!   starts it again in the same mount namespace, as a node's containerd restarts.
//! - Dropping the guard (also on panic) stops containerd, kills its shims and every process
//!   of its mount namespace, `runc delete -f`s what is left under its runc root, kills what is
//!   left in its cgroups and removes them, and removes its directory. The mount namespace
//!   (with the pods' netns pins and container rootfs mounts) goes with its last process.
//!   [`Residue::leftovers`] checks afterwards that nothing is left.
//!
//! Nothing is made in the host's `/run/containerd`, `/etc/cni/net.d` or `/opt/cni/bin`; the
//! only host change is an empty mount-point directory (`/etc/cni`, `/etc/reef`, `/opt/cni`,
//! `/var/lib/cni`) created when missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{self, Process};
use crate::cri::Cri;
use crate::netns::{unique_name, Netns};
use crate::{wait_for, Error};

/// The sandbox (pause) image every instance imports and names as `sandbox_image`.
pub const PAUSE_IMAGE: &str = "reef.test/lab-pause:1";
/// The busybox test image ([`test_image`]).
pub const TEST_IMAGE: &str = "reef.test/lab-busybox:1";

/// busybox-static, as Debian installs it.
const BUSYBOX: &str = "/bin/busybox";

/// Host directories bind-mounted over inside the instance's mount namespace: (path on the
/// host, subdirectory of the instance dir).
const BINDS: &[(&str, &str)] = &[
    ("/run", "run"),
    ("/etc/cni", "etc-cni"),
    ("/opt/cni", "opt-cni"),
    ("/etc/reef", "etc-reef"),
    ("/var/lib/cni", "var-lib-cni"),
];

/// A shell loop that exits on TERM even as PID 1 (which ignores signals it has no handler for).
const SLEEP_UNTIL_TERM: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/// A small image made of host files and literal files, written as a docker archive (one
/// uncompressed layer; `tar` and `sha256sum` do the work). A stand-in until the lab's OCI
/// archive writer (`reef_integration::image`) lands; then [`pause_image`] and [`test_image`]
/// move onto it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabImage {
    /// The full reference, e.g. `reef.test/lab-busybox:1`.
    pub name: String,
    /// (file on the host, absolute path in the image, mode).
    pub files: Vec<(PathBuf, String, u32)>,
    /// (content, absolute path in the image, mode).
    pub bytes: Vec<(Vec<u8>, String, u32)>,
    /// (absolute path in the image, mode).
    pub dirs: Vec<(String, u32)>,
    /// (absolute path in the image, target).
    pub symlinks: Vec<(String, String)>,
    pub entrypoint: Vec<String>,
}

impl LabImage {
    /// Writes the docker archive to `out` (a scratch directory beside it is removed after).
    pub fn write_archive(&self, out: &Path) -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt;
        let parent = out.parent().unwrap_or(Path::new("."));
        let work = tempfile::tempdir_in(parent).map_err(Error::TempDir)?;
        let root = work.path().join("rootfs");
        let inside = |p: &str| root.join(p.trim_start_matches('/'));
        let mkparent = |p: &Path| -> Result<(), Error> {
            let d = p.parent().unwrap_or(p);
            fs::create_dir_all(d).map_err(|e| Error::io(d, e))
        };
        let chmod = |p: &Path, mode: u32| {
            fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(|e| Error::io(p, e))
        };
        fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        for (path, mode) in &self.dirs {
            let p = inside(path);
            fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
            chmod(&p, *mode)?;
        }
        for (host, path, mode) in &self.files {
            let p = inside(path);
            mkparent(&p)?;
            fs::copy(host, &p).map_err(|e| Error::io(host, e))?;
            chmod(&p, *mode)?;
        }
        for (content, path, mode) in &self.bytes {
            let p = inside(path);
            mkparent(&p)?;
            fs::write(&p, content).map_err(|e| Error::io(&p, e))?;
            chmod(&p, *mode)?;
        }
        for (path, target) in &self.symlinks {
            let p = inside(path);
            mkparent(&p)?;
            std::os::unix::fs::symlink(target, &p).map_err(|e| Error::io(&p, e))?;
        }
        let w = work.path();
        let layer = w.join("layer.tar");
        let mut tar = Command::new("tar");
        tar.args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
        ])
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&layer)
        .arg(".");
        cmd::output(tar)?;
        let diff_id = sha256_file(&layer)?;
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": self.entrypoint,
                "Env": ["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "User": "root",
                "WorkingDir": "/",
            },
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        });
        let config_tmp = w.join("config.json");
        fs::write(&config_tmp, config.to_string()).map_err(|e| Error::io(&config_tmp, e))?;
        let config_name = format!("{}.json", sha256_file(&config_tmp)?);
        let config_file = w.join(&config_name);
        fs::rename(&config_tmp, &config_file).map_err(|e| Error::io(&config_file, e))?;
        let manifest = serde_json::json!([{
            "Config": config_name,
            "RepoTags": [self.name],
            "Layers": ["layer.tar"],
        }]);
        let mf = w.join("manifest.json");
        fs::write(&mf, manifest.to_string()).map_err(|e| Error::io(&mf, e))?;
        let mut tar = Command::new("tar");
        tar.args(["--owner=0", "--group=0", "--numeric-owner", "--mtime=@0"])
            .arg("-C")
            .arg(w)
            .arg("-cf")
            .arg(out)
            .args(["manifest.json", &config_name, "layer.tar"]);
        cmd::output(tar)?;
        Ok(())
    }
}

fn sha256_file(p: &Path) -> Result<String, Error> {
    let out = cmd::run("sha256sum", [p])?;
    out.split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .map(str::to_string)
        .ok_or_else(|| Error::Parse {
            what: "sha256sum output".into(),
            text: out.clone(),
        })
}

/// busybox and the files containerd reads to resolve the image's user (`root`).
fn busybox_image(name: &str, applets: &[&str]) -> LabImage {
    LabImage {
        name: name.to_string(),
        files: vec![(BUSYBOX.into(), "/bin/busybox".into(), 0o755)],
        bytes: vec![
            (
                b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
                "/etc/passwd".into(),
                0o644,
            ),
            (b"root:x:0:\n".to_vec(), "/etc/group".into(), 0o644),
        ],
        dirs: vec![("/root".into(), 0o700), ("/tmp".into(), 0o1777)],
        symlinks: applets
            .iter()
            .map(|a| (format!("/bin/{a}"), "busybox".to_string()))
            .collect(),
        entrypoint: ["/bin/sh", "-c", SLEEP_UNTIL_TERM]
            .map(str::to_string)
            .to_vec(),
    }
}

/// The pause image: busybox `sh` waiting for TERM.
pub fn pause_image() -> LabImage {
    busybox_image(PAUSE_IMAGE, &["sh", "sleep"])
}

/// The test image: busybox-static with `sh`, `ping`, `ip`, `nc` and friends; its default
/// command waits for TERM.
pub fn test_image() -> LabImage {
    busybox_image(
        TEST_IMAGE,
        &[
            "sh", "ping", "ping6", "ip", "nc", "sleep", "cat", "echo", "ls", "hostname",
            "ifconfig", "route", "wget", "ps", "kill", "true", "false", "env", "grep", "mount",
        ],
    )
}

/// What a dropped instance could leave behind, to check after the drop
/// ([`Residue::leftovers`]).
#[derive(Clone, Debug)]
pub struct Residue {
    pub dir: PathBuf,
    /// `mnt:[inode]` of the instance's mount namespace.
    pub mount_ns: String,
    pub cgroup_parent: String,
    pub socket: PathBuf,
}

impl Residue {
    /// Everything still there: processes in the mount namespace or naming the socket, cgroup
    /// directories, mounts under the instance directory in this process's mountinfo, the
    /// directory itself. Empty when the instance is fully gone.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for pid in pids_of(&self.mount_ns, &self.socket, &self.dir) {
            out.push(format!("process {pid} ({})", comm(pid)));
        }
        for cg in cgroup_dirs(&self.cgroup_parent) {
            out.push(format!("cgroup {}", cg.display()));
        }
        let dir = self.dir.to_string_lossy().into_owned();
        if let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") {
            for l in mi.lines().filter(|l| l.contains(&dir)) {
                out.push(format!("mount {l}"));
            }
        }
        if self.dir.exists() {
            out.push(format!("directory {dir}"));
        }
        out
    }
}

/// A containerd running in a node's network namespace and its own mount namespace; stopped
/// and cleaned up on drop.
#[derive(Debug)]
pub struct Containerd {
    name: String,
    dir: PathBuf,
    holder: Option<Process>,
    mount_ns: String,
    daemon: Option<Process>,
    cgroup_parent: String,
}

impl Containerd {
    /// Starts containerd in `netns` with everything of its own under `base/<unique name>/`,
    /// waits until its CRI answers, and imports the pause image.
    pub fn start(netns: &Netns, base: &Path) -> Result<Containerd, Error> {
        Containerd::start_in(&netns.path(), base)
    }

    /// [`Containerd::start`] for a namespace given by its path (`/run/netns/NAME`).
    pub fn start_in(netns_path: &str, base: &Path) -> Result<Containerd, Error> {
        let name = unique_name("ctrd");
        let dir = base.join(&name);
        let mut c = Containerd {
            cgroup_parent: format!("/{name}"),
            name,
            dir: dir.clone(),
            holder: None,
            mount_ns: String::new(),
            daemon: None,
        };
        // From here on, a failure drops `c`, which removes whatever was made.
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for sub in [
            "root",
            "state",
            "images",
            "pods",
            "run/netns",
            "run/containerd",
            "run/reef",
            "etc-cni/net.d",
            "opt-cni/bin",
            "etc-reef",
            "var-lib-cni",
        ] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        for (host, _) in BINDS {
            let p = Path::new(host);
            if !p.exists() {
                fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
            }
        }
        c.write_config()?;
        c.start_holder(netns_path)?;
        c.start_daemon()?;
        c.import_image(&pause_image())?;
        Ok(c)
    }

    /// The unique instance name (`reeft-…-ctrd`), also its cgroup parent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance directory on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's gRPC socket (CRI and containerd's own API).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The node's `/etc/cni/net.d`, as a host path.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("etc-cni/net.d")
    }

    /// The node's `/opt/cni/bin`, as a host path (containerd's CNI `bin_dir`).
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.join("opt-cni/bin")
    }

    /// The node's `/etc/reef`, as a host path.
    pub fn etc_reef(&self) -> PathBuf {
        self.dir.join("etc-reef")
    }

    /// The node's `/run/reef`, as a host path.
    pub fn run_reef(&self) -> PathBuf {
        self.dir.join("run/reef")
    }

    /// The node's `/var/lib/cni` (host-local keeps its leases in `networks/<name>/`).
    pub fn var_lib_cni(&self) -> PathBuf {
        self.dir.join("var-lib-cni")
    }

    /// A directory for pods' logs (`PodSpec::log_directory`).
    pub fn pod_log_dir(&self, pod: &str) -> PathBuf {
        self.dir.join("pods").join(pod)
    }

    /// The cgroup (cgroupfs path) every pod of this instance goes under.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// A CRI client for this instance; its pods go under [`Containerd::cgroup_parent`].
    pub fn cri(&self) -> Result<Cri, Error> {
        let mut cri = Cri::connect(&self.socket())?;
        cri.cgroup_parent = self.cgroup_parent.clone();
        Ok(cri)
    }

    /// A command that runs `program` where containerd runs: the node's network namespace and
    /// the instance's mount namespace (so `/etc/cni/net.d` is the node's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder_pid().to_string())
            .args(["-m", "-n", "--"])
            .arg(program);
        c
    }

    /// What to check after dropping this instance.
    pub fn residue(&self) -> Residue {
        Residue {
            dir: self.dir.clone(),
            mount_ns: self.mount_ns.clone(),
            cgroup_parent: self.cgroup_parent.clone(),
            socket: self.socket(),
        }
    }

    /// Imports an OCI / docker archive into the `k8s.io` namespace.
    pub fn import(&self, archive: &Path) -> Result<(), Error> {
        let sock = self.socket();
        cmd::run(
            "ctr",
            [
                "-a".as_ref(),
                sock.as_os_str(),
                "-n".as_ref(),
                "k8s.io".as_ref(),
                "image".as_ref(),
                "import".as_ref(),
                archive.as_os_str(),
            ],
        )
        .map(|_| ())
    }

    /// Writes `image` as an archive in the instance directory and imports it.
    pub fn import_image(&self, image: &LabImage) -> Result<(), Error> {
        let file = self
            .dir
            .join("images")
            .join(format!("{}.tar", image.name.replace(['/', ':'], "_")));
        image.write_archive(&file)?;
        self.import(&file)
    }

    /// Stops containerd (TERM; its shims and containers keep running) and starts it again in
    /// the same namespaces, waiting until its CRI answers.
    pub fn restart(&mut self) -> Result<(), Error> {
        if let Some(d) = self.daemon.take() {
            d.stop(Duration::from_secs(10));
        }
        self.start_daemon()
    }

    fn holder_pid(&self) -> u32 {
        self.holder.as_ref().map(|h| h.pid()).unwrap_or(0)
    }

    fn write_config(&self) -> Result<(), Error> {
        let d = self.dir.display();
        // Version 2 config; every path the instance writes is its own. Streaming (exec/attach
        // over HTTP) listens on an ephemeral port on loopback of the node namespace.
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE_IMAGE}"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    disable_apparmor = true
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/opt/cni/bin"
      conf_dir = "/etc/cni/net.d"
"#
        );
        let p = self.dir.join("config.toml");
        fs::write(&p, config).map_err(|e| Error::io(&p, e))
    }

    /// The holder: a `sleep` in a new private mount namespace (entered from the node's
    /// network namespace) where the per-node directories are bind-mounted.
    fn start_holder(&mut self, netns_path: &str) -> Result<(), Error> {
        let ready = self.dir.join("holder.ready");
        let mut script = String::from("set -e; d=\"$1\"\n");
        for (host, sub) in BINDS {
            script.push_str(&format!("mount --bind \"$d/{sub}\" {host}\n"));
        }
        script.push_str("touch \"$d/holder.ready\"\nexec sleep infinity\n");
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={netns_path}"))
            .args(["--", "unshare", "--mount", "--propagation", "private", "--"])
            .args(["sh", "-c", &script, "sh"])
            .arg(&self.dir);
        let log = self.dir.join("holder.log");
        let f = fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        let f2 = f.try_clone().map_err(|e| Error::io(&log, e))?;
        c.stdout(f).stderr(f2);
        self.holder = Some(Process::spawn("containerd mount namespace", c)?);
        let holder = self.holder.as_mut().expect("just set");
        wait_for(
            "the containerd mount namespace",
            Duration::from_secs(10),
            |_| {
                if ready.exists() {
                    return Some(Ok(()));
                }
                if !holder.is_running() {
                    let out = fs::read_to_string(&log).unwrap_or_default();
                    return Some(Err(Error::Other(format!(
                        "containerd's mount namespace in {netns_path}: {}",
                        out.trim()
                    ))));
                }
                None
            },
        )??;
        let pid = self.holder_pid();
        self.mount_ns = fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .map_err(|e| Error::Other(format!("mount namespace of {pid}: {e}")))?
            .to_string_lossy()
            .into_owned();
        Ok(())
    }

    fn start_daemon(&mut self) -> Result<(), Error> {
        let sock = self.socket();
        let _ = fs::remove_file(&sock);
        let mut c = self.command("containerd");
        c.arg("--config").arg(self.dir.join("config.toml"));
        let log = self.dir.join("containerd.log");
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::io(&log, e))?;
        let f2 = f.try_clone().map_err(|e| Error::io(&log, e))?;
        c.stdout(f).stderr(f2);
        self.daemon = Some(Process::spawn(format!("containerd {}", self.name), c)?);
        let daemon = self.daemon.as_mut().expect("just set");
        wait_for(
            "containerd's CRI to answer",
            Duration::from_secs(30),
            |last| {
                if !daemon.is_running() {
                    return Some(Err(Error::Other("containerd exited".into())));
                }
                if !sock.exists() {
                    *last = "no socket yet".into();
                    return None;
                }
                match Cri::connect(&sock).and_then(|mut c| c.version()) {
                    Ok(v) => Some(Ok(v)),
                    Err(e) => {
                        *last = e.to_string();
                        None
                    }
                }
            },
        )
        .and_then(|r| r)
        .map_err(|e| Error::Other(format!("{e}\ncontainerd log: {}", tail(&log))))?;
        Ok(())
    }

    fn cleanup(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop(Duration::from_secs(5));
        }
        let sock = self.socket();
        // Shims first (they would restart nothing, but keep runc state busy), then what runc
        // still knows about, then whatever is left in the cgroups and the mount namespace.
        for pid in pids_of(&self.mount_ns, &sock, &self.dir) {
            if comm(pid).starts_with("containerd-shim") {
                kill9(pid);
            }
        }
        let runc_root = self.dir.join("run/containerd/runc");
        if let Ok(nss) = fs::read_dir(&runc_root) {
            for ns in nss.flatten() {
                for ctr in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                    let mut c = self.command("runc");
                    c.arg("--root")
                        .arg(ns.path())
                        .args(["delete", "-f"])
                        .arg(ctr.file_name())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null());
                    let _ = c.status();
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut busy = false;
            for cg in cgroup_dirs(&self.cgroup_parent) {
                for pid in fs::read_to_string(cg.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.parse().ok())
                {
                    kill9(pid);
                    busy = true;
                }
            }
            let holder = self.holder_pid();
            for pid in pids_of(&self.mount_ns, &sock, &self.dir) {
                if pid != holder {
                    kill9(pid);
                    busy = true;
                }
            }
            if !busy || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(h) = self.holder.take() {
            h.kill();
        }
        // Deepest first; a cgroup whose last process is still exiting refuses rmdir briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let dirs = cgroup_dirs(&self.cgroup_parent);
            let mut left = false;
            // cgroup_dirs lists parents before their children.
            for d in dirs.iter().rev() {
                if fs::remove_dir(d).is_err() {
                    left = true;
                }
            }
            if !left || Instant::now() > deadline {
                if left {
                    eprintln!("lab: containerd {}: cgroups left: {dirs:?}", self.name);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The mount namespace's mounts (overlay rootfs, netns pins) go with its last process;
        // until then a removal could fail on a busy mount point, so retry briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.dir.exists() {
            match fs::remove_dir_all(&self.dir) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("lab: could not remove {}: {e}", self.dir.display());
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Processes in the instance's mount namespace `mount_ns` (`mnt:[…]`) or whose command line
/// names `socket` (containerd's shims are started with `-address SOCKET`).
///
/// A namespace's inode number is reused once the namespace is gone, so after the drop another
/// program's fresh mount namespace (another test's containerd or pod) can carry the same
/// `mnt:[…]`. An inode match counts only when the process also sees the instance's bind
/// mounts: its mountinfo names the instance directory `dir` (a unique name).
fn pids_of(mount_ns: &str, socket: &Path, dir: &Path) -> Vec<u32> {
    let sock = socket.to_string_lossy();
    let marker = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let me = std::process::id();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let in_ns = !mount_ns.is_empty()
            && fs::read_link(e.path().join("ns/mnt"))
                .map(|l| l.to_string_lossy() == mount_ns)
                .unwrap_or(false)
            && !marker.is_empty()
            && fs::read_to_string(e.path().join("mountinfo"))
                .map(|m| m.contains(&marker))
                .unwrap_or(false);
        let names_sock = fs::read(e.path().join("cmdline"))
            .map(|c| c.split(|b| *b == 0).any(|a| a == sock.as_bytes()))
            .unwrap_or(false);
        if in_ns || names_sock {
            out.push(pid);
        }
    }
    out
}

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn kill9(pid: u32) {
    let _ = cmd::run("kill", ["-9".to_string(), pid.to_string()]);
}

/// The directories of cgroup `parent` (e.g. `/reeft-…`) and everything below it, in every
/// mounted cgroup hierarchy (v1 controllers and the unified one).
fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") {
        for l in mi.lines() {
            let Some((pre, post)) = l.split_once(" - ") else {
                continue;
            };
            let fstype = post.split_whitespace().next().unwrap_or("");
            if fstype != "cgroup" && fstype != "cgroup2" {
                continue;
            }
            if let Some(mp) = pre.split_whitespace().nth(4) {
                let p = PathBuf::from(mp);
                if !roots.contains(&p) {
                    roots.push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    for r in roots {
        let top = r.join(parent.trim_start_matches('/'));
        if top.is_dir() {
            collect_dirs(&top, &mut out);
        }
    }
    out
}

fn collect_dirs(d: &Path, out: &mut Vec<PathBuf>) {
    out.push(d.to_path_buf());
    for e in fs::read_dir(d).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_dirs(&e.path(), out);
        }
    }
}

/// The last lines of a log file, for error messages.
fn tail(p: &Path) -> String {
    let s = fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `unshare --mount` running `script` (after `d=DIR`), and its `mnt:[…]` once `DIR/ready`
    /// exists.
    fn in_new_mount_ns(dir: &Path, script: &str) -> (Process, String) {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(format!(
                "set -e; d=\"$1\"; {script}; touch \"$d/ready\"; exec sleep 60"
            ))
            .arg("sh")
            .arg(dir);
        let p = Process::spawn("mount namespace", c).unwrap();
        wait_for("the namespace", Duration::from_secs(10), |_| {
            dir.join("ready").exists().then_some(())
        })
        .unwrap();
        let ns = fs::read_link(format!("/proc/{}/ns/mnt", p.pid())).unwrap();
        (p, ns.to_string_lossy().into_owned())
    }

    /// The CI failure of stop 19: after a clean drop the leftover check reported another
    /// test's pod (`sh`, `sleep`) whose fresh mount namespace had been given the freed
    /// namespace's inode number. A process counts only when it also sees the instance's mounts.
    #[test]
    fn a_reused_mount_namespace_inode_is_not_the_instance() {
        let base = tempfile::tempdir().unwrap();
        let ours = base.path().join(unique_name("ctrd"));
        fs::create_dir_all(ours.join("a")).unwrap();
        fs::create_dir_all(ours.join("b")).unwrap();
        let foreign = base.path().join("foreign");
        fs::create_dir_all(&foreign).unwrap();

        // Someone else's namespace with the instance's inode number (as after reuse).
        let (other, other_ns) = in_new_mount_ns(&foreign, "true");
        let r = Residue {
            dir: ours.clone(),
            mount_ns: other_ns,
            cgroup_parent: format!("/{}", unique_name("reeft-none")),
            socket: ours.join("containerd.sock"),
        };
        let left = r.leftovers();
        assert!(
            !left
                .iter()
                .any(|l| l.starts_with(&format!("process {} ", other.pid()))),
            "{left:#?}"
        );
        other.kill();

        // The instance's own namespace (it bind-mounts from the instance directory) is found.
        let (mine, my_ns) = in_new_mount_ns(&ours, "mount --bind \"$d/a\" \"$d/b\"");
        let r = Residue {
            mount_ns: my_ns,
            ..r
        };
        let left = r.leftovers();
        assert!(
            left.iter()
                .any(|l| l.starts_with(&format!("process {} ", mine.pid()))),
            "{left:#?}"
        );
        mine.kill();
    }
}
