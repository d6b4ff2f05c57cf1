//! The image archive writer (src/image.rs): deterministic bytes, the layout `ctr`, `podman`
//! and `docker` read, checked inputs — and a real containerd importing reef's image and
//! running `reef --version` and `nft` from it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use reef_integration::cmd::{self, Process};
use reef_integration::image::{reef_image, reef_image_name, Image, Layer, ReefInputs};
use reef_integration::workspace_bin;

/// A few small host files standing in for binaries.
fn fake_inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let a = dir.join("a.bin");
    let b = dir.join("b.conf");
    std::fs::write(&a, b"\x7fELF pretend binary").unwrap();
    std::fs::write(&b, b"key = 1\n").unwrap();
    (a, b)
}

fn small_image(a: &Path, b: &Path) -> Image {
    Image::new("example.invalid/reef-test:v1")
        .layer(
            Layer::new()
                .file(a, "/usr/local/bin/a", 0o755)
                .file(b, "/etc/a/b.conf", 0o644)
                .dir("/tmp", 0o1777)
                .symlink("/bin/a", "/usr/local/bin/a")
                .bytes(
                    "root:x:0:0:root:/root:/sbin/nologin\n",
                    "/etc/passwd",
                    0o644,
                ),
        )
        .entrypoint(["/usr/local/bin/a"])
        .label("org.opencontainers.image.title", "test")
}

/// The outer archive's files by name.
fn unpack(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(name, data);
    }
    out
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn same_inputs_give_the_same_archive_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = fake_inputs(dir.path());
    let (first, w1) = small_image(&a, &b).archive_bytes().unwrap();
    // Same files, added in another order, with fresh mtimes on the host files.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&a, b"\x7fELF pretend binary").unwrap();
    let mut shuffled = small_image(&a, &b);
    shuffled.layers[0].entries.reverse();
    let (second, w2) = shuffled.archive_bytes().unwrap();
    assert_eq!(w1.manifest_digest, w2.manifest_digest);
    assert!(first == second, "archives differ byte for byte");

    // Written to disk: the same bytes.
    let out = dir.path().join("out/img.tar");
    let w3 = small_image(&a, &b).write_archive(&out).unwrap();
    assert_eq!(w3.manifest_digest, w1.manifest_digest);
    assert!(std::fs::read(&out).unwrap() == first);

    // One byte of one input changes the digest; so does the mtime.
    std::fs::write(&b, b"key = 2\n").unwrap();
    let (_, w4) = small_image(&a, &b).archive_bytes().unwrap();
    assert_ne!(w4.manifest_digest, w1.manifest_digest);
    std::fs::write(&b, b"key = 1\n").unwrap();
    let (_, w5) = small_image(&a, &b)
        .mtime(1_700_000_000)
        .archive_bytes()
        .unwrap();
    assert_ne!(w5.manifest_digest, w1.manifest_digest);
}

#[test]
fn the_archive_is_an_oci_layout_and_a_docker_archive_with_the_same_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = fake_inputs(dir.path());
    let (bytes, w) = small_image(&a, &b)
        .mtime(1_700_000_000)
        .archive_bytes()
        .unwrap();
    let files = unpack(&bytes);

    // Outer entries sorted, so the archive is the same whatever the order of the work.
    let names: Vec<&String> = files.keys().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);

    assert_eq!(
        json(&files["oci-layout"]),
        serde_json::json!({"imageLayoutVersion": "1.0.0"})
    );
    // Every blob's name is its content's sha256.
    for (name, data) in &files {
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            if !hex.is_empty() {
                assert_eq!(sha256_hex(data), hex, "{name}");
            }
        }
    }
    let index = json(&files["index.json"]);
    let m = &index["manifests"][0];
    assert_eq!(m["digest"], w.manifest_digest.as_str());
    assert_eq!(
        m["annotations"]["io.containerd.image.name"],
        "example.invalid/reef-test:v1"
    );
    assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "v1");
    assert_eq!(m["platform"]["os"], "linux");

    let manifest = json(&files[&format!("blobs/sha256/{}", w.manifest_digest.hex())]);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    assert_eq!(config_digest, w.config_digest.as_str());
    let layer_digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );

    // docker's manifest.json points at the same blobs.
    let docker = json(&files["manifest.json"]);
    assert_eq!(docker[0]["RepoTags"][0], "example.invalid/reef-test:v1");
    assert_eq!(
        docker[0]["Config"],
        format!("blobs/sha256/{}", &config_digest["sha256:".len()..])
    );
    assert_eq!(
        docker[0]["Layers"][0],
        format!("blobs/sha256/{}", &layer_digest["sha256:".len()..])
    );

    let config = json(&files[&format!("blobs/sha256/{}", w.config_digest.hex())]);
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    assert_eq!(config["config"]["User"], "root");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/a"])
    );
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.title"],
        "test"
    );

    // The layer: gzip with no timestamp, its diff_id the sha256 of the tar inside.
    let gz = &files[&format!("blobs/sha256/{}", &layer_digest["sha256:".len()..])];
    assert_eq!(&gz[..2], &[0x1f, 0x8b]);
    assert_eq!(&gz[4..8], &[0, 0, 0, 0], "gzip header mtime must be 0");
    let mut layer_tar = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut layer_tar)
        .unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        format!("sha256:{}", sha256_hex(&layer_tar))
    );

    let mut entries = Vec::new();
    let mut ar = tar::Archive::new(layer_tar.as_slice());
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!(h.uid().unwrap(), 0);
        assert_eq!(h.gid().unwrap(), 0);
        assert_eq!(h.mtime().unwrap(), 1_700_000_000);
        assert_eq!(h.username().unwrap(), Some(""));
        let link = e
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned());
        entries.push((
            e.path().unwrap().to_string_lossy().into_owned(),
            h.mode().unwrap(),
            link,
        ));
    }
    let got: Vec<(&str, u32, Option<&str>)> = entries
        .iter()
        .map(|(p, m, l)| (p.as_str(), *m, l.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("bin/", 0o755, None),
            ("bin/a", 0o777, Some("/usr/local/bin/a")),
            ("etc/", 0o755, None),
            ("etc/a/", 0o755, None),
            ("etc/a/b.conf", 0o644, None),
            ("etc/passwd", 0o644, None),
            ("tmp/", 0o1777, None),
            ("usr/", 0o755, None),
            ("usr/local/", 0o755, None),
            ("usr/local/bin/", 0o755, None),
            ("usr/local/bin/a", 0o755, None),
        ]
    );
}

#[test]
fn bad_entries_are_refused_naming_the_path_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = fake_inputs(dir.path());
    let out = dir.path().join("img.tar");
    let cases: Vec<(Layer, &str)> = vec![
        (Layer::new().file(&a, "usr/bin/a", 0o755), "usr/bin/a"),
        (Layer::new().file(&a, "/usr/../a", 0o755), "/usr/../a"),
        (
            Layer::new().file(&a, "/a", 0o755).bytes("x", "/a", 0o644),
            "/a` is given twice",
        ),
        (
            Layer::new().file(&a, "/x", 0o755).file(&a, "/x/y", 0o755),
            "parent `/x` is not a directory",
        ),
        (
            Layer::new().file(dir.path().join("missing"), "/m", 0o755),
            "missing",
        ),
        (
            Layer::new().file(dir.path(), "/d", 0o755),
            "not a regular file",
        ),
    ];
    for (layer, want) in cases {
        let err = Image::new("example.invalid/x:v1")
            .layer(layer)
            .write_archive(&out)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err:?} should name {want:?}");
        assert!(!out.exists(), "a failed write left {}", out.display());
    }
    let err = Image::new("no-tag")
        .archive_bytes()
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-tag"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "no stray temp files"
    );
}

#[test]
fn reef_image_name_comes_from_the_workspace_version() {
    let name = reef_image_name();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(name, format!("ghcr.io/reef-net/reef:v{version}"));
    // The workspace's version, which the reef binary reports too.
    let ws =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml")).unwrap();
    assert!(ws.contains(&format!("version = \"{version}\"")), "{ws}");
}

// ---- A throwaway containerd: its own root, state, socket and config under a temp dir. ----

/// containerd + its directories; on drop (also on panic) every container and task it ran is
/// killed and deleted, containerd stopped, leftover mounts under its dirs unmounted and the
/// dirs removed. Nothing outside the temp dir is touched.
struct Containerd {
    dir: Option<tempfile::TempDir>,
    sock: PathBuf,
    daemon: Option<Process>,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("reeft-containerd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let sock = d.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = sock.display(),
            opt = d.join("opt").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let mut c = Command::new("containerd");
        c.arg("--config")
            .arg(d.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log);
        let mut me = Containerd {
            sock,
            daemon: Some(Process::spawn("containerd", c).unwrap()),
            dir: Some(dir),
        };
        let up =
            reef_integration::wait_for("containerd to answer", Duration::from_secs(20), |last| {
                me.ctr(["version"]).map_err(|e| *last = e.to_string()).ok()
            });
        if let Err(e) = up {
            panic!("{e}\ncontainerd log:\n{}", me.log());
        }
        assert!(me.daemon.as_mut().unwrap().is_running(), "{}", me.log());
        me
    }

    fn ctr<I, S>(&self, args: I) -> Result<String, reef_integration::Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(&self.sock)
            .args(["-n", "k8s.io"])
            .args(args);
        cmd::output(c)
    }

    fn log(&self) -> String {
        let d = self.dir.as_ref().unwrap().path();
        std::fs::read_to_string(d.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(tasks) = self.ctr(["tasks", "ls", "-q"]) {
            for t in tasks.lines().filter(|l| !l.is_empty()) {
                let _ = self.ctr(["tasks", "kill", "-s", "KILL", t]);
                let _ = self.ctr(["tasks", "rm", "-f", t]);
            }
        }
        if let Ok(cs) = self.ctr(["containers", "ls", "-q"]) {
            for c in cs.lines().filter(|l| !l.is_empty()) {
                let _ = self.ctr(["containers", "rm", c]);
            }
        }
        if let Some(p) = self.daemon.take() {
            p.stop(Duration::from_secs(10));
        }
        if let Some(dir) = self.dir.take() {
            // Deepest first: rootfs and snapshot mounts left by a crash.
            let root = dir.path().to_string_lossy().into_owned();
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let mut under: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| m.starts_with(&root))
                .collect();
            under.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in under {
                let _ = cmd::run("umount", ["-l", m]);
            }
            let _ = dir.close();
        }
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// reef's image layout built from this build's `reef` binaries (the host build, dynamically
/// linked: the layout brings their libraries, as it does nft's), imported into a real
/// containerd, listed under its name, and run: `reef --version` and `nft` inside it.
#[test]
fn containerd_imports_reef_image_and_runs_reef_and_nft_from_it() {
    if !(have("containerd") && have("ctr") && have("runc")) {
        println!("SKIPPED: containerd, ctr or runc is not installed (Debian: containerd runc)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut inputs = ReefInputs::from_bin_dir(Path::new("/nonexistent"));
    inputs.reef = workspace_bin("reef").unwrap();
    inputs.reef_cni = workspace_bin("reef-cni").unwrap();
    inputs.reef_ipam = workspace_bin("reef-ipam").unwrap();
    let name = reef_image_name();
    let archive = work.path().join("reef.tar");
    let written = reef_image(&inputs, &name, 0)
        .unwrap()
        .write_archive(&archive)
        .unwrap();

    let c = Containerd::start();
    let out = c
        .ctr(["images".as_ref(), "import".as_ref(), archive.as_os_str()])
        .unwrap();
    assert!(out.contains(&name), "import said: {out}");
    let ls = c.ctr(["images", "ls"]).unwrap();
    let line = ls
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{name} not in `ctr images ls`:\n{ls}"));
    assert!(
        line.contains(written.manifest_digest.as_str()),
        "ctr lists another digest than the writer's {}:\n{line}",
        written.manifest_digest
    );

    let id = format!("reeft-image-{}", std::process::id());
    // Its own cgroup under the root, removed by runc when the container goes.
    let cgroup = format!("/{id}");
    let version = c
        .ctr([
            "run",
            "--rm",
            "--cgroup",
            &cgroup,
            &name,
            &id,
            "/usr/local/bin/reef",
            "--version",
        ])
        .unwrap_or_else(|e| panic!("{e}\ncontainerd log:\n{}", c.log()));
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "reef --version said {version:?}"
    );
    // nft with its libraries works in the container's own network namespace (new for each
    // `ctr run` without --net-host, so nothing of the host's is touched).
    let nft = c
        .ctr([
            "run",
            "--rm",
            "--privileged",
            "--cgroup",
            &cgroup,
            &name,
            &id,
            "/usr/sbin/nft",
            "add",
            "table",
            "ip",
            "reeft_image",
        ])
        .unwrap_or_else(|e| panic!("{e}\ncontainerd log:\n{}", c.log()));
    assert_eq!(nft.trim(), "");
    let listed = c
        .ctr([
            "run",
            "--rm",
            "--privileged",
            "--cgroup",
            &cgroup,
            &name,
            &id,
            "/usr/sbin/nft",
            "list",
            "ruleset",
        ])
        .unwrap();
    assert_eq!(listed.trim(), "", "a fresh namespace has no tables");
    // The CNI binaries are where `reef install` copies them from. portmap and loopback with
    // no CNI_COMMAND print their version and exit 0; reef-cni and reef-ipam would wait for a
    // config on stdin (which `ctr run` never closes), so the loader resolves their libraries
    // instead (it fails naming any that is missing).
    for plugin in ["portmap", "loopback"] {
        let path = format!("/opt/reef/cni-bin/{plugin}");
        // (The version goes to stderr; a missing library would fail the run.)
        c.ctr(["run", "--rm", "--cgroup", &cgroup, &name, &id, &path])
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    for bin in ["reef-cni", "reef-ipam"] {
        let path = format!("/opt/reef/cni-bin/{bin}");
        c.ctr([
            "run",
            "--rm",
            "--cgroup",
            &cgroup,
            &name,
            &id,
            "/lib64/ld-linux-x86-64.so.2",
            "--list",
            &path,
        ])
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    drop(c);
    assert!(
        !Path::new(&format!("/sys/fs/cgroup/{id}")).exists(),
        "cgroup /{id} left behind"
    );
}
