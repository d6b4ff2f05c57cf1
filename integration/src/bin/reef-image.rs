//! `reef-image`: writes reef's container image as an OCI/docker archive, with no container
//! daemon. deploy/image/build.sh builds the static binaries and runs this.
//!
//! ```text
//! reef-image --bin-dir target/x86_64-unknown-linux-gnu/release --out target/image/reef-0.1.0.tar
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use reef_integration::image::{reef_image, reef_image_name, ReefInputs};

const USAGE: &str = "\
usage: reef-image --bin-dir DIR --out FILE [--name REF] [--cni-plugins DIR] [--nft PATH]

Writes reef's image archive (OCI layout + docker manifest.json, gzip layers) to FILE.
  --bin-dir DIR      where reef, reef-cni and reef-ipam are (static builds)
  --out FILE         the archive to write
  --name REF         image reference (default: ghcr.io/reef-net/reef:v<workspace version>)
  --cni-plugins DIR  portmap and loopback (default: /usr/lib/cni)
  --nft PATH         nft (default: /usr/sbin/nft)
File mtimes are SOURCE_DATE_EPOCH when set, else 0.";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reef-image: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut bin_dir = None;
    let mut out = None;
    let mut name = reef_image_name();
    let mut cni_plugins = None;
    let mut nft = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            return Ok(());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--bin-dir" => bin_dir = Some(PathBuf::from(value)),
            "--out" => out = Some(PathBuf::from(value)),
            "--name" => name = value,
            "--cni-plugins" => cni_plugins = Some(PathBuf::from(value)),
            "--nft" => nft = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    let bin_dir = bin_dir.ok_or_else(|| format!("--bin-dir is required\n{USAGE}"))?;
    let out = out.ok_or_else(|| format!("--out is required\n{USAGE}"))?;
    let mtime = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("SOURCE_DATE_EPOCH={v:?}: give whole seconds since 1970"))?,
        Err(_) => 0,
    };

    let mut inputs = ReefInputs::from_bin_dir(&bin_dir);
    if let Some(d) = cni_plugins {
        inputs.cni_plugins = d;
    }
    if let Some(p) = nft {
        inputs.nft = p;
    }
    let image = reef_image(&inputs, &name, mtime).map_err(|e| e.to_string())?;
    let w = image.write_archive(&out).map_err(|e| e.to_string())?;
    println!("image:      {}", w.name);
    println!("digest:     {}", w.manifest_digest);
    println!("image id:   {}", w.config_digest);
    println!(
        "compressed: {:.1} MB (layers; {:.1} MB uncompressed)",
        w.layers_compressed as f64 / 1e6,
        w.layers_uncompressed as f64 / 1e6
    );
    println!(
        "archive:    {} ({:.1} MB)",
        out.display(),
        w.archive_size as f64 / 1e6
    );
    Ok(())
}
