//! OCI image archives written without a container daemon: reef's own image and the lab's
//! small images (a pause image, a busybox test image) are built from files on this machine.
//!
//! ```text
//!   Layer { entries: path in image → file | bytes | dir | symlink }
//!      │  sorted, parents implied, uid/gid 0, one fixed mtime
//!      ▼
//!   layer.tar ──sha256──▶ diff_id (config.rootfs)
//!      │ gzip (no name, mtime 0)
//!      ▼
//!   layer.tar.gz ──sha256──▶ layer digest (manifest)
//!
//!   archive.tar = oci-layout + index.json + blobs/sha256/{config, manifest, layers…}
//!                 + manifest.json (docker-archive form, pointing at the same blobs)
//! ```
//!
//! The archive has the combined shape `docker save` writes: an OCI image layout (read by
//! `ctr image import`, `kind load image-archive`, `podman load`, skopeo `oci-archive:`) that
//! is also a docker archive (`docker load`, skopeo `docker-archive:`). `index.json` names the
//! image with `io.containerd.image.name` (the full reference, what containerd imports it as)
//! and `org.opencontainers.image.ref.name` (the tag, as the OCI layout spec has it).
//!
//! Determinism: the same inputs give byte-identical archives, so the same manifest digest —
//! entries are sorted, owners are 0/0 with no user or group names, every mtime is
//! [`Image::mtime`] (callers pass 0 or `SOURCE_DATE_EPOCH`), gzip carries no timestamp or file
//! name, and the JSON documents are serialised from structs (fixed key order).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::Error;

const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A content digest, `sha256:<64 hex digits>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    fn of(hasher: Sha256) -> Digest {
        let mut s = String::from("sha256:");
        for b in hasher.finalize() {
            s.push_str(&format!("{b:02x}"));
        }
        Digest(s)
    }

    fn of_bytes(bytes: &[u8]) -> Digest {
        let mut h = Sha256::new();
        h.update(bytes);
        Digest::of(h)
    }

    /// The 64 hex digits, without `sha256:` (the blob's file name in an OCI layout).
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// `sha256:…`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a file's content comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A file on this machine (read when the archive is written).
    Host(PathBuf),
    /// Literal content (small generated files: `/etc/passwd`, configs).
    Bytes(Vec<u8>),
}

/// One thing in a layer, at an absolute path inside the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    File {
        path: String,
        source: Source,
        mode: u32,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::File { path, .. } | Entry::Dir { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

/// One filesystem layer. Parent directories of every entry are added (mode 0755) unless the
/// layer names them itself; entries are written sorted by path whatever order they were added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layer {
    pub entries: Vec<Entry>,
}

impl Layer {
    pub fn new() -> Layer {
        Layer::default()
    }

    /// The host file `host` at `path` in the image, with permission bits `mode` (e.g. 0o755).
    pub fn file(mut self, host: impl Into<PathBuf>, path: &str, mode: u32) -> Layer {
        self.entries.push(Entry::File {
            path: path.to_string(),
            source: Source::Host(host.into()),
            mode,
        });
        self
    }

    /// A file with literal content.
    pub fn bytes(mut self, content: impl Into<Vec<u8>>, path: &str, mode: u32) -> Layer {
        self.entries.push(Entry::File {
            path: path.to_string(),
            source: Source::Bytes(content.into()),
            mode,
        });
        self
    }

    /// A directory (e.g. `/tmp` with 0o1777).
    pub fn dir(mut self, path: &str, mode: u32) -> Layer {
        self.entries.push(Entry::Dir {
            path: path.to_string(),
            mode,
        });
        self
    }

    /// A symbolic link at `path` pointing to `target` (stored as given).
    pub fn symlink(mut self, path: &str, target: &str) -> Layer {
        self.entries.push(Entry::Symlink {
            path: path.to_string(),
            target: target.to_string(),
        });
        self
    }

    /// A dynamically linked host executable at `path`, plus every shared library `ldd` lists
    /// for it and the dynamic loader, each at its host path (so the binary runs unchanged in
    /// the image). A static binary adds only itself. Libraries already in the layer are not
    /// added twice.
    pub fn executable_with_libs(self, host: impl AsRef<Path>, path: &str) -> Result<Layer, Error> {
        let host = host.as_ref();
        let libs = shared_libraries(host)?;
        let mut layer = self.file(host, path, 0o755);
        for lib in libs {
            let p = lib.to_string_lossy().into_owned();
            if !layer.entries.iter().any(|e| e.path() == p) {
                layer = layer.file(&lib, &p, 0o755);
            }
        }
        Ok(layer)
    }
}

/// The shared libraries and the dynamic loader `ldd` says `binary` needs, at the paths the
/// loader finds them on this machine (e.g. `/lib/x86_64-linux-gnu/libc.so.6`). A layer stores
/// the file each path resolves to under that same path. Empty for a static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, Error> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| Error::Spawn {
            command: format!("ldd {}", binary.display()),
            source: e,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    // glibc's ldd exits 1 for a static binary and prints "not a dynamic executable" (on
    // stderr) or "statically linked" (static-pie, on stdout).
    if !out.status.success() || text.contains("statically linked") {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        return Err(Error::Command {
            command: format!("ldd {}", binary.display()),
            status: out.status.to_string(),
            stderr: err.trim().to_string(),
            stdout: text.trim().to_string(),
        });
    }
    parse_ldd(&text).map_err(|line| Error::Parse {
        what: format!("ldd {} output", binary.display()),
        text: line,
    })
}

/// `ldd` lines: `libx.so.1 => /lib/…/libx.so.1 (0x…)`, `/lib64/ld-linux-x86-64.so.2 (0x…)`,
/// `linux-vdso.so.1 (0x…)` (in the kernel: skipped). A `not found` is an error naming the line.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            return Err(line.to_string());
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            // linux-vdso.so.1 and friends: provided by the kernel.
            Some(_) => {}
            None => return Err(line.to_string()),
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// An image: its layers and the runtime configuration (`config` in the OCI image config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The full reference it is imported as, e.g. `ghcr.io/reef-net/reef:v0.1.0`.
    pub name: String,
    pub layers: Vec<Layer>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
    /// Seconds since the epoch for every file's mtime and the config's `created`.
    pub mtime: u64,
    /// OCI architecture name (`amd64`, `arm64`); defaults to this machine's.
    pub architecture: String,
}

impl Image {
    /// An empty image named `name` (a full reference with a tag), user root, working dir `/`,
    /// `PATH` set to the usual directories, mtime 0.
    pub fn new(name: &str) -> Image {
        Image {
            name: name.to_string(),
            layers: Vec::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: vec!["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()],
            user: "root".to_string(),
            working_dir: "/".to_string(),
            labels: BTreeMap::new(),
            mtime: 0,
            architecture: host_architecture().to_string(),
        }
    }

    pub fn layer(mut self, layer: Layer) -> Image {
        self.layers.push(layer);
        self
    }

    pub fn entrypoint<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Image {
        self.entrypoint = argv.into_iter().map(Into::into).collect();
        self
    }

    pub fn cmd<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Image {
        self.cmd = argv.into_iter().map(Into::into).collect();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Image {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub fn mtime(mut self, secs: u64) -> Image {
        self.mtime = secs;
        self
    }

    /// Writes the archive to `out` (through a temporary file in the same directory, renamed
    /// into place, so a failed write leaves no partial archive). Returns the manifest digest —
    /// what `ctr image ls` shows as the image's digest — and sizes.
    pub fn write_archive(&self, out: &Path) -> Result<Written, Error> {
        let (bytes, written) = self.archive_bytes()?;
        let dir = out
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
        tmp.write_all(&bytes)
            .map_err(|e| Error::io(tmp.path(), e))?;
        tmp.persist(out).map_err(|e| Error::io(out, e.error))?;
        Ok(written)
    }

    /// The archive in memory (what [`Image::write_archive`] writes).
    pub fn archive_bytes(&self) -> Result<(Vec<u8>, Written), Error> {
        if self.name.is_empty() || !self.name.contains(':') {
            return Err(Error::Other(format!(
                "image name `{}`: give a full reference with a tag, e.g. example.org/x:v1",
                self.name
            )));
        }
        let mut layers = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            layers.push(build_layer(l, self.mtime).map_err(|e| match e {
                Error::Other(m) => Error::Other(format!("layer {i}: {m}")),
                e => e,
            })?);
        }

        let config = ConfigDoc {
            created: rfc3339(self.mtime),
            architecture: &self.architecture,
            os: "linux",
            config: RuntimeConfig {
                user: &self.user,
                env: &self.env,
                entrypoint: &self.entrypoint,
                cmd: &self.cmd,
                working_dir: &self.working_dir,
                labels: &self.labels,
            },
            rootfs: RootFs {
                kind: "layers",
                diff_ids: layers.iter().map(|l| l.diff_id.to_string()).collect(),
            },
        };
        let config_json = to_json(&config)?;
        let config_digest = Digest::of_bytes(&config_json);

        let manifest = ManifestDoc {
            schema_version: 2,
            media_type: MT_MANIFEST,
            config: Descriptor {
                media_type: MT_CONFIG,
                digest: config_digest.to_string(),
                size: config_json.len() as u64,
                platform: None,
                annotations: None,
            },
            layers: layers
                .iter()
                .map(|l| Descriptor {
                    media_type: MT_LAYER_GZIP,
                    digest: l.digest.to_string(),
                    size: l.gz.len() as u64,
                    platform: None,
                    annotations: None,
                })
                .collect(),
        };
        let manifest_json = to_json(&manifest)?;
        let manifest_digest = Digest::of_bytes(&manifest_json);

        let tag = self
            .name
            .rsplit_once(':')
            .map(|(_, t)| t)
            .unwrap_or("latest");
        let mut annotations = BTreeMap::new();
        annotations.insert("io.containerd.image.name", self.name.as_str());
        annotations.insert("org.opencontainers.image.ref.name", tag);
        let index = IndexDoc {
            schema_version: 2,
            media_type: MT_INDEX,
            manifests: vec![Descriptor {
                media_type: MT_MANIFEST,
                digest: manifest_digest.to_string(),
                size: manifest_json.len() as u64,
                platform: Some(Platform {
                    architecture: &self.architecture,
                    os: "linux",
                }),
                annotations: Some(annotations),
            }],
        };
        let index_json = to_json(&index)?;
        let docker_manifest = vec![DockerManifest {
            config: format!("blobs/sha256/{}", config_digest.hex()),
            repo_tags: vec![self.name.as_str()],
            layers: layers
                .iter()
                .map(|l| format!("blobs/sha256/{}", l.digest.hex()))
                .collect(),
        }];
        let docker_json = to_json(&docker_manifest)?;

        // The outer tar, entries sorted by name (BTreeMap); blobs shared by two layers once.
        let mut files: BTreeMap<String, &[u8]> = BTreeMap::new();
        files.insert("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
        files.insert("index.json".into(), &index_json);
        files.insert("manifest.json".into(), &docker_json);
        files.insert(
            format!("blobs/sha256/{}", config_digest.hex()),
            &config_json,
        );
        files.insert(
            format!("blobs/sha256/{}", manifest_digest.hex()),
            &manifest_json,
        );
        for l in &layers {
            files.insert(format!("blobs/sha256/{}", l.digest.hex()), &l.gz);
        }
        let mut outer = tar::Builder::new(Vec::new());
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = header(tar::EntryType::Directory, 0o755, 0, self.mtime);
            outer
                .append_data(&mut h, dir, io::empty())
                .map_err(|e| Error::Other(format!("archive: {e}")))?;
        }
        for (name, data) in &files {
            let mut h = header(
                tar::EntryType::Regular,
                0o644,
                data.len() as u64,
                self.mtime,
            );
            outer
                .append_data(&mut h, name, *data)
                .map_err(|e| Error::Other(format!("archive: {name}: {e}")))?;
        }
        let bytes = outer
            .into_inner()
            .map_err(|e| Error::Other(format!("archive: {e}")))?;
        let written = Written {
            name: self.name.clone(),
            manifest_digest,
            config_digest,
            layers_compressed: layers.iter().map(|l| l.gz.len() as u64).sum(),
            layers_uncompressed: layers.iter().map(|l| l.tar_len).sum(),
            archive_size: bytes.len() as u64,
        };
        Ok((bytes, written))
    }
}

/// reef's image name for this workspace version: `ghcr.io/reef-net/reef:v<version>`
/// (the workspace's `version`, which every crate inherits).
pub fn reef_image_name() -> String {
    format!("ghcr.io/reef-net/reef:v{}", env!("CARGO_PKG_VERSION"))
}

/// What goes into reef's image: reef's static binaries plus the host programs it chains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReefInputs {
    /// The `reef` binary (agent, CLI, `reef install`).
    pub reef: PathBuf,
    pub reef_cni: PathBuf,
    pub reef_ipam: PathBuf,
    /// The reference CNI plugins `portmap` and `loopback` (Debian: `/usr/lib/cni`).
    pub cni_plugins: PathBuf,
    /// `nft` for natOutgoing (Debian: `/usr/sbin/nft`), with its shared libraries.
    pub nft: PathBuf,
}

impl ReefInputs {
    /// reef's binaries from `bin_dir` (e.g. `target/x86_64-unknown-linux-gnu/release`) and
    /// the Debian packages' paths for the rest.
    pub fn from_bin_dir(bin_dir: &Path) -> ReefInputs {
        ReefInputs {
            reef: bin_dir.join("reef"),
            reef_cni: bin_dir.join("reef-cni"),
            reef_ipam: bin_dir.join("reef-ipam"),
            cni_plugins: PathBuf::from("/usr/lib/cni"),
            nft: PathBuf::from("/usr/sbin/nft"),
        }
    }
}

/// Where things are in reef's image. `reef install` and deploy/reef.yaml rely on these.
pub mod reef_paths {
    pub const REEF: &str = "/usr/local/bin/reef";
    /// reef-cni, reef-ipam, portmap and loopback, copied to the host's CNI bin dir.
    pub const CNI_BIN: &str = "/opt/reef/cni-bin";
    pub const NFT: &str = "/usr/sbin/nft";
}

/// reef's image, named `name`: one layer with
/// `/usr/local/bin/reef`, `/opt/reef/cni-bin/{reef-cni,reef-ipam,portmap,loopback}`,
/// `/usr/sbin/nft` with every library it loads and the dynamic loader, `/tmp` (1777) and a
/// root-only `/etc/passwd` and `/etc/group`; entry point `reef`, no shell.
///
/// Binaries that are dynamically linked (a host build of reef in tests, Debian's cgo-built
/// CNI plugins) bring their libraries along, so everything runs inside the image. Note that
/// `portmap` and `loopback` run on the *host* once installed: they need the host's glibc.
pub fn reef_image(inputs: &ReefInputs, name: &str, mtime: u64) -> Result<Image, Error> {
    let cni = reef_paths::CNI_BIN;
    let mut layer = Layer::new()
        .dir("/tmp", 0o1777)
        .bytes(
            "root:x:0:0:root:/root:/sbin/nologin\n",
            "/etc/passwd",
            0o644,
        )
        .bytes("root:x:0:\n", "/etc/group", 0o644)
        .executable_with_libs(&inputs.reef, reef_paths::REEF)?
        .executable_with_libs(&inputs.reef_cni, &format!("{cni}/reef-cni"))?
        .executable_with_libs(&inputs.reef_ipam, &format!("{cni}/reef-ipam"))?
        .executable_with_libs(&inputs.nft, reef_paths::NFT)?;
    for plugin in ["portmap", "loopback"] {
        layer = layer
            .executable_with_libs(inputs.cni_plugins.join(plugin), &format!("{cni}/{plugin}"))?;
    }
    Ok(Image::new(name)
        .layer(layer)
        .entrypoint([reef_paths::REEF])
        .label("org.opencontainers.image.title", "reef")
        .label(
            "org.opencontainers.image.version",
            env!("CARGO_PKG_VERSION"),
        )
        .label(
            "org.opencontainers.image.source",
            "https://github.com/reef-net/reef",
        )
        .mtime(mtime))
}

/// What [`Image::write_archive`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub name: String,
    /// The image's digest as registries and `ctr image ls` show it.
    pub manifest_digest: Digest,
    /// The image ID as docker and podman show it (first 12 hex digits).
    pub config_digest: Digest,
    /// Sum of the gzip-compressed layers: the download size from a registry.
    pub layers_compressed: u64,
    pub layers_uncompressed: u64,
    /// The archive file's size.
    pub archive_size: u64,
}

struct BuiltLayer {
    gz: Vec<u8>,
    digest: Digest,
    diff_id: Digest,
    tar_len: u64,
}

/// A tar header with everything that varies between machines fixed.
fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// A path inside the image, checked: absolute, no `.`/`..`/empty components, no trailing
/// slash. Returned without the leading `/` (tar entries are relative).
fn image_path(p: &str) -> Result<String, Error> {
    let bad = |why: &str| Error::Other(format!("image path `{p}`: {why}"));
    let rel = p
        .strip_prefix('/')
        .ok_or_else(|| bad("must be absolute (start with /)"))?;
    if rel.is_empty() {
        return Err(bad(
            "the root directory is implied; name something inside it",
        ));
    }
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("has an empty, `.` or `..` component"));
    }
    Ok(rel.to_string())
}

enum Item<'a> {
    Dir(u32),
    File(&'a Source, u32),
    Symlink(&'a str),
}

fn build_layer(layer: &Layer, mtime: u64) -> Result<BuiltLayer, Error> {
    // path (relative) → item; parents implied.
    let mut items: BTreeMap<String, Item<'_>> = BTreeMap::new();
    for e in &layer.entries {
        let rel = image_path(e.path())?;
        let item = match e {
            Entry::File { source, mode, .. } => Item::File(source, *mode),
            Entry::Dir { mode, .. } => Item::Dir(*mode),
            Entry::Symlink { target, .. } => {
                if target.is_empty() {
                    return Err(Error::Other(format!(
                        "symlink `{}`: empty target",
                        e.path()
                    )));
                }
                Item::Symlink(target)
            }
        };
        if items.insert(rel, item).is_some() {
            return Err(Error::Other(format!(
                "image path `{}` is given twice",
                e.path()
            )));
        }
    }
    let explicit: Vec<String> = items.keys().cloned().collect();
    for rel in explicit {
        let mut parent = rel.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            match items.get(p) {
                Some(Item::Dir(_)) => {}
                Some(_) => {
                    return Err(Error::Other(format!(
                        "image path `/{rel}`: its parent `/{p}` is not a directory"
                    )))
                }
                None => {
                    items.insert(p.to_string(), Item::Dir(0o755));
                }
            }
            parent = p;
        }
    }

    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(HashingWriter::new(Vec::new()), flate2::Compression::best());
    let mut tar = tar::Builder::new(HashingWriter::new(gz));
    for (rel, item) in &items {
        match item {
            Item::Dir(mode) => {
                let mut h = header(tar::EntryType::Directory, *mode, 0, mtime);
                tar.append_data(&mut h, format!("{rel}/"), io::empty())
                    .map_err(|e| Error::Other(format!("/{rel}: {e}")))?;
            }
            Item::Symlink(target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, mtime);
                tar.append_link(&mut h, rel, target)
                    .map_err(|e| Error::Other(format!("/{rel} -> {target}: {e}")))?;
            }
            Item::File(Source::Bytes(b), mode) => {
                let mut h = header(tar::EntryType::Regular, *mode, b.len() as u64, mtime);
                tar.append_data(&mut h, rel, b.as_slice())
                    .map_err(|e| Error::Other(format!("/{rel}: {e}")))?;
            }
            Item::File(Source::Host(host), mode) => {
                // Follows symlinks: a library named by its soname is stored as the real file.
                let mut f = std::fs::File::open(host).map_err(|e| Error::io(host, e))?;
                let meta = f.metadata().map_err(|e| Error::io(host, e))?;
                if !meta.is_file() {
                    return Err(Error::Other(format!(
                        "/{rel}: host path {} is not a regular file",
                        host.display()
                    )));
                }
                let mut h = header(tar::EntryType::Regular, *mode, meta.len(), mtime);
                // `take` guards against a file growing while it is read: the header's size wins.
                let mut reader = (&mut f).take(meta.len());
                tar.append_data(&mut h, rel, &mut reader)
                    .map_err(|e| Error::io(host, e))?;
            }
        }
    }
    let hashed_tar = tar
        .into_inner()
        .map_err(|e| Error::Other(format!("layer tar: {e}")))?;
    let (gz, tar_hash, tar_len) = hashed_tar.finish();
    let hashed_gz = gz
        .finish()
        .map_err(|e| Error::Other(format!("layer gzip: {e}")))?;
    let (gz_bytes, gz_hash, _) = hashed_gz.finish();
    Ok(BuiltLayer {
        gz: gz_bytes,
        digest: Digest::of(gz_hash),
        diff_id: Digest::of(tar_hash),
        tar_len,
    })
}

/// Passes bytes through while hashing and counting them.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }

    fn finish(self) -> (W, Sha256, u64) {
        (self.inner, self.hash, self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::Other(format!("image JSON: {e}")))
}

/// OCI's name for this machine's architecture.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

use reef_config::time::rfc3339_secs as rfc3339;

// The documents, as structs so key order is fixed whatever serde_json features are on.

#[derive(Serialize)]
struct ConfigDoc<'a> {
    created: String,
    architecture: &'a str,
    os: &'static str,
    config: RuntimeConfig<'a>,
    rootfs: RootFs,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RuntimeConfig<'a> {
    user: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    env: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    entrypoint: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    cmd: &'a [String],
    working_dir: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'static str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<&'static str, &'a str>>,
}

#[derive(Serialize)]
struct Platform<'a> {
    architecture: &'a str,
    os: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc<'a> {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc<'a> {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest<'a> {
    config: String,
    repo_tags: Vec<&'a str>,
    layers: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn ldd_lines() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                    \tlibnftables.so.1 => /lib/x86_64-linux-gnu/libnftables.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libnftables.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        let missing = "\tlibfoo.so.1 => not found\n";
        assert_eq!(parse_ldd(missing).unwrap_err(), "libfoo.so.1 => not found");
    }

    #[test]
    fn image_paths_are_checked() {
        assert_eq!(image_path("/usr/bin/x").unwrap(), "usr/bin/x");
        for bad in ["usr/bin/x", "/", "/usr//x", "/usr/../etc", "/usr/bin/"] {
            let e = image_path(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
