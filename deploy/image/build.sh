#!/bin/bash
# Builds reef's container image with no container daemon:
#   1. reef, reef-cni and reef-ipam as static binaries (glibc, +crt-static: static-pie, no
#      extra toolchain);
#   2. `reef-image` (integration/src/bin/reef-image.rs) lays them out with nft (and every
#      library it loads), portmap and loopback, and writes one archive that
#      `ctr -n k8s.io image import`, `kind load image-archive`, `podman load` and
#      `docker load` accept:  target/image/reef-<version>.tar
#
# usage: deploy/image/build.sh [--profile PROFILE]
#   PROFILE: cargo profile of the static build (default: release; REEF_IMAGE_PROFILE also
#            sets it). `--profile dev` is faster to build, slower and larger.
#   SOURCE_DATE_EPOCH: file mtimes in the image (default 0); the same sources, profile and
#            SOURCE_DATE_EPOCH give the same image digest.
# Needs: cargo, nftables, containernetworking-plugins, binutils (strip), file (Debian).
set -euo pipefail
cd "$(dirname "$0")/../.."

profile="${REEF_IMAGE_PROFILE:-release}"
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) [ $# -ge 2 ] || { echo "build.sh: --profile needs a value" >&2; exit 2; }
               profile="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

for need in /usr/sbin/nft /usr/lib/cni/portmap /usr/lib/cni/loopback; do
  [ -x "$need" ] || { echo "build.sh: $need is missing: apt-get install nftables containernetworking-plugins" >&2; exit 1; }
done

triple="$(uname -m)-unknown-linux-gnu"
case "$profile" in dev|test) dir=debug ;; *) dir="$profile" ;; esac
bins="target/$triple/$dir"
version=$(awk '/^\[workspace.package\]/{p=1; next} /^\[/{p=0} p && $1=="version"{gsub(/"/,"",$3); print $3; exit}' Cargo.toml)
[ -n "$version" ] || { echo "build.sh: no version in Cargo.toml's [workspace.package]" >&2; exit 1; }
out="target/image/reef-$version.tar"

echo "== static binaries ($profile, $triple)"
start=$(date +%s)
# With an explicit --target, RUSTFLAGS apply to reef's binaries only, not to build scripts
# and proc-macros (those stay dynamic host programs). Without default features: the image's
# reef has no containerd lab (`reef lab --runtime containerd` and its CRI client); reef-cni
# has no features.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --profile "$profile" --target "$triple" -p reef -p reef-cni --bins \
  --no-default-features
echo "   built in $(( $(date +%s) - start )) s"
# The shipped agent must not carry the test lab's library (node's `lab` feature).
if cargo tree -q -p reef --no-default-features -e normal --prefix none | grep -q '^reef-integration '; then
  echo "build.sh: the image's reef links reef-integration: check node/Cargo.toml's features" >&2; exit 1
fi
for b in reef reef-cni reef-ipam; do
  if ! file -L "$bins/$b" | grep -Eq 'static-pie linked|statically linked'; then
    echo "build.sh: $bins/$b is not static: $(file -L "$bins/$b")" >&2; exit 1
  fi
done

# The profile keeps line tables for backtraces (94 MB reef); the image gets stripped copies
# (19 MB): strip's output depends only on its input, so the digest stays reproducible.
stage="target/image/bin-$dir"
mkdir -p "$stage"
for b in reef reef-cni reef-ipam; do strip -o "$stage/$b" "$bins/$b"; done

echo "== image"
cargo run -q -p reef-integration --bin reef-image -- --bin-dir "$stage" --out "$out"
