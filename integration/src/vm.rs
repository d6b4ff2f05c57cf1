//! A real IP-in-IP kernel for tests: the Debian kernel booted under qemu (TCG) with the ipip,
//! veth, bridge, tun and nftables modules, busybox, iproute2, nft, BIRD and the test's own
//! binaries inside.
//!
//! A test written with the lab library runs unchanged in the VM: the test binary reruns itself
//! inside the guest with `--exact <name>`, and the guest's output and exit code come back on the
//! serial console.
//!
//! ```no_run
//! # use reef_integration::vm;
//! #[test]
//! fn pods_ping_over_kernel_ipip() {
//!     if !vm::inside() {
//!         return vm::rerun_inside("pods_ping_over_kernel_ipip", &[]).unwrap();
//!     }
//!     // … the test body, using Topology, Bird, … on the VM's kernel …
//! }
//! ```
//!
//! The kernel is fetched once per machine by `integration/vm/fetch-kernel.sh` into
//! `/var/cache/reef/vm` (or `$REEF_VM_DIR`), outside any clone.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cmd;
use crate::Error;

/// Where `VmRun::binaries` land in the guest (not under /tmp or /run: the guest mounts tmpfs
/// there). A test binary finds its sibling binaries here with `workspace_bin`.
pub const GUEST_BIN: &str = "/reef/bin";

/// The environment variable set inside the guest.
pub const INSIDE_ENV: &str = "REEF_IN_VM";

/// Modules loaded in the guest, in this order of request (dependencies resolved by modprobe).
const MODULES: &[&str] = &[
    "ipip",
    "veth",
    "bridge",
    "tun",
    "9p",
    "9pnet_virtio",
    "virtio_pci",
    "nf_tables",
    // reef's own tables: reef-filter's strict reverse-path rule, reef-nat's masquerade (the
    // guest has no modules.dep, so nft cannot have them loaded on demand).
    "nft_fib_inet",
    "nft_chain_nat",
    "nft_masq",
];

/// Programs from the host copied into the guest, with the libraries they link.
const HOST_PROGRAMS: &[&str] = &[
    "/usr/sbin/ip",
    "/usr/sbin/bird",
    "/usr/sbin/birdcl",
    "/usr/sbin/nft",
];

/// Whether this process runs inside the lab VM.
pub fn inside() -> bool {
    std::env::var_os(INSIDE_ENV).is_some()
}

/// Where the kernel lives and which version it is.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub dir: PathBuf,
    pub version: String,
}

impl Kernel {
    /// Finds the kernel fetched by `integration/vm/fetch-kernel.sh`.
    pub fn find() -> Result<Kernel, Error> {
        let dir = std::env::var_os("REEF_VM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/reef/vm"));
        let version = std::fs::read_to_string(dir.join("KVER"))
            .map(|s| s.trim().to_string())
            .map_err(|_| {
                Error::Other(format!(
                    "no lab kernel in {}: run integration/vm/fetch-kernel.sh (as root) first",
                    dir.display()
                ))
            })?;
        Ok(Kernel { dir, version })
    }

    fn root(&self) -> PathBuf {
        self.dir.join("kx")
    }

    fn vmlinuz(&self) -> PathBuf {
        self.root().join(format!("boot/vmlinuz-{}", self.version))
    }
}

/// What to run in the guest.
#[derive(Debug, Clone)]
pub struct VmRun {
    /// Host binaries to copy into the guest's [`GUEST_BIN`] directory (under their file
    /// names), with the libraries they link.
    pub binaries: Vec<PathBuf>,
    /// A busybox `sh` script run as the guest's job; its exit code is the run's.
    pub script: String,
    /// Wall-clock limit for the whole boot + run.
    pub timeout: Duration,
    /// Guest memory in MiB.
    pub memory_mib: u32,
}

/// What came back from the guest.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    /// Everything the guest printed on its serial console.
    pub serial: String,
    /// The script's exit code; `None` if the guest never reported one (crash, timeout).
    pub exit_code: Option<i32>,
    pub wall: Duration,
}

impl VmRun {
    pub fn new(script: impl Into<String>) -> VmRun {
        VmRun {
            binaries: Vec::new(),
            script: script.into(),
            timeout: Duration::from_secs(120),
            memory_mib: 1024,
        }
    }
}

/// Boots the kernel with an initramfs holding busybox, iproute2, nft, BIRD, the modules and
/// `run.binaries`, runs `run.script`, and returns the outcome. Nothing of it outlives the call:
/// qemu is killed at the timeout and the work directory is removed.
pub fn boot(kernel: &Kernel, run: &VmRun) -> Result<VmOutcome, Error> {
    let work = tempfile::Builder::new()
        .prefix("reeft-vm-")
        .tempdir()
        .map_err(Error::TempDir)?;
    let root = work.path().join("root");
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "lib/modules",
        "etc",
    ] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| Error::io(&root, e))?;
    }
    // busybox for the shell and basic tools; iproute2's ip instead of busybox's (no netns).
    copy_file(Path::new("/bin/busybox"), &root.join("bin/busybox"))?;
    let applets = cmd::run("/bin/busybox", ["--list"])?;
    for a in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && *a != "ip")
    {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(a));
    }
    let mut files: BTreeSet<PathBuf> = HOST_PROGRAMS.iter().map(PathBuf::from).collect();
    for p in HOST_PROGRAMS {
        files.extend(shared_libraries(Path::new(p))?);
    }
    for b in &run.binaries {
        let name = b
            .file_name()
            .ok_or_else(|| Error::Other(format!("binary path {} has no file name", b.display())))?;
        copy_file(b, &root.join(GUEST_BIN.trim_start_matches('/')).join(name))?;
        files.extend(shared_libraries(b)?);
    }
    for f in &files {
        let dst = root.join(f.strip_prefix("/").unwrap_or(f));
        copy_file(f, &dst)?;
    }
    // BIRD wants its run directory.
    std::fs::create_dir_all(root.join("run/bird")).map_err(|e| Error::io(&root, e))?;
    let load = module_load_order(kernel, &root)?;
    std::fs::write(root.join("modules.load"), load).map_err(|e| Error::io(&root, e))?;
    let job = root.join("job.sh");
    std::fs::write(&job, &run.script).map_err(|e| Error::io(&job, e))?;
    let init = root.join("init");
    std::fs::write(&init, INIT).map_err(|e| Error::io(&init, e))?;
    cmd::run(
        "chmod",
        [
            "+x",
            init.to_str().unwrap_or_default(),
            job.to_str().unwrap_or_default(),
        ],
    )?;
    let initrd = work.path().join("initrd.cpio");
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
        root.display(),
        initrd.display()
    ));
    cmd::output(c)?;

    let serial_log = work.path().join("serial.log");
    let start = Instant::now();
    let mut q = Command::new("timeout");
    q.arg("--kill-after=5")
        .arg(run.timeout.as_secs().to_string())
        .arg("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            &run.memory_mib.to_string(),
            "-smp",
            "1",
        ])
        .args(["-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 loglevel=3"])
        .arg("-serial")
        .arg(format!("file:{}", serial_log.display()))
        .args(["-monitor", "none", "-display", "none"]);
    let status = q
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| Error::Spawn {
            command: "qemu-system-x86_64".into(),
            source: e,
        })?;
    let wall = start.elapsed();
    if std::env::var_os("REEF_VM_KEEP").is_some() {
        eprintln!("vm: keeping the guest's files in {}", work.keep().display());
    }
    let serial =
        String::from_utf8_lossy(&std::fs::read(&serial_log).unwrap_or_default()).replace('\r', "");
    if !status.status.success() && !serial.contains(EXIT_MARKER) {
        return Err(Error::Other(format!(
            "qemu failed ({}) after {:.1}s: {}\nserial console:\n{serial}",
            status.status,
            wall.as_secs_f64(),
            String::from_utf8_lossy(&status.stderr)
        )));
    }
    let exit_code = serial
        .lines()
        .find_map(|l| l.trim().strip_prefix(EXIT_MARKER))
        .and_then(|c| c.trim().parse().ok());
    Ok(VmOutcome {
        serial,
        exit_code,
        wall,
    })
}

/// Reruns test `name` of the current test binary inside the VM and fails (with the guest's
/// output) unless it passes there. `extra_binaries` are other host binaries the test runs.
pub fn rerun_inside(name: &str, extra_binaries: &[PathBuf]) -> Result<(), Error> {
    let kernel = Kernel::find()?;
    let exe = std::env::current_exe().map_err(|e| Error::Other(format!("current_exe: {e}")))?;
    let exe_name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Other("test binary has no file name".into()))?;
    let mut run = VmRun::new(format!(
        "export {INSIDE_ENV}=1 RUST_BACKTRACE=1\ncd /tmp\n'{GUEST_BIN}/{exe_name}' --exact '{name}' --nocapture --test-threads 1\n"
    ));
    run.binaries.push(exe);
    run.binaries.extend(extra_binaries.iter().cloned());
    // Software emulation on a busy 2-core machine: a multi-node test may need minutes.
    run.timeout = Duration::from_secs(
        std::env::var("REEF_VM_TIMEOUT")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(300),
    );
    let out = boot(&kernel, &run)?;
    println!(
        "---- guest serial console ({:.1}s) ----\n{}",
        out.wall.as_secs_f64(),
        out.serial
    );
    match out.exit_code {
        Some(0) if out.serial.contains("1 passed") => Ok(()),
        Some(0) => Err(Error::Other(format!(
            "test {name} did not run inside the VM (filter matched nothing)"
        ))),
        code => Err(Error::Other(format!(
            "test {name} failed inside the VM (exit {code:?})"
        ))),
    }
}

const EXIT_MARKER: &str = "REEF-VM-EXIT ";

/// The guest's /init: mount, load modules, run the job, report its exit code, power off.
const INIT: &str = r#"#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs run /run; mount -t tmpfs tmp /tmp; mkdir -p /run/netns /run/bird
while read -r m args; do insmod "/lib/modules/$m" $args 2>/dev/null || echo "init: insmod $m failed"; done </modules.load
ip link set lo up
echo "init: kernel $(uname -r) up at $(cut -d' ' -f1 /proc/uptime)s"
sh /job.sh
echo "REEF-VM-EXIT $?"
poweroff -f
"#;

fn copy_file(src: &Path, dst: &Path) -> Result<(), Error> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    // Follow symlinks: the guest gets the file's content under the link's name.
    std::fs::copy(src, dst).map_err(|e| Error::io(src, e))?;
    Ok(())
}

/// The libraries `ldd` lists for a dynamically linked binary (none for a static one).
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>, Error> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| Error::Spawn {
            command: "ldd".into(),
            source: e,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .filter(|t| t.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// Copies the modules (and their dependencies, from `modprobe --show-depends`) into the
/// guest root and returns the insmod list in dependency order.
fn module_load_order(kernel: &Kernel, root: &Path) -> Result<String, Error> {
    let mut seen = BTreeSet::new();
    let mut list = String::new();
    let kroot = kernel.root();
    let prefix = format!("/lib/modules/{}/", kernel.version);
    for m in MODULES {
        let out = cmd::run(
            "modprobe",
            [
                "-d",
                kroot.to_str().unwrap_or_default(),
                "-S",
                &kernel.version,
                "--show-depends",
                m,
            ],
        )?;
        for line in out.lines() {
            // "insmod /path/to/mod.ko args" or "builtin name"
            let mut it = line.split_whitespace();
            if it.next() != Some("insmod") {
                continue;
            }
            let Some(path) = it.next() else { continue };
            if !seen.insert(path.to_string()) {
                continue;
            }
            let rel = path
                .split_once(&prefix)
                .map(|(_, r)| r)
                .unwrap_or(path)
                .to_string();
            copy_file(Path::new(path), &root.join("lib/modules").join(&rel))?;
            let args: Vec<&str> = it.collect();
            let _ = writeln!(list, "{rel} {}", args.join(" "));
        }
    }
    Ok(list)
}
