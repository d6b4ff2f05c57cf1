#!/bin/bash
# Runs reef's whole test suite: installs what it needs, checks formatting and lints, builds,
# runs every test (unit, lab namespaces, real BGP daemons, the real-kernel VM), then checks
# that nothing the tests created is left behind. Needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")"
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root: the tests build network namespaces" >&2; exit 1; }
bash .ci/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

# A full disk shows up as a linker killed by SIGBUS, far from its cause: say how much room
# there is before building and how much the build took.
room() { df -h --output=avail,used . | tail -1 | awk '{print "disk: " $1 " free"}'; du -sh target 2>/dev/null | sed 's/^/target: /' || true; }
room
need_gb=12
free_gb=$(df --output=avail -BG . | tail -1 | tr -dc 0-9)
if [ "$free_gb" -lt "$need_gb" ] && [ ! -d target/debug ]; then
  echo "test.sh: warning: ${free_gb} GB free; a cold build and the tests need about ${need_gb} GB" >&2
fi

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings

echo "== build"
cargo build --workspace --all-targets -q

echo "== image"
# The containerd lab tests import reef's image; built once here (dev profile: the quickest),
# not inside a test where it would compete with the timing-sensitive ones.
deploy/image/build.sh --profile dev
# CI: the tests need the image archive, not the static build behind it (1.5 GB).
[ -z "${REEF_CI_DROP_IMAGE_BUILD:-}" ] || rm -rf "target/$(uname -m)-unknown-linux-gnu"
room

echo "== tests"
status=0
# Arguments select tests (e.g. `-p reef-integration`, or a test name filter); none = all.
sel=("$@"); [ ${#sel[@]} -gt 0 ] || sel=(--workspace)
if command -v cargo-nextest >/dev/null; then
  cargo nextest run "${sel[@]}" --no-fail-fast --failure-output final || status=$?
else
  cargo test "${sel[@]}" --no-fail-fast || status=$?
fi

echo "== fuzz corpus"
# The decoders' fuzz targets (bgp/fuzz, their own workspace): every committed seed, then a
# short deterministic run of the stable driver. A crash input is saved under bgp/fuzz/artifacts.
# Dev profile (debug assertions and overflow checks on) without debug info: a release build
# would compile the whole dependency tree (reef-config's kube types) once more, optimised.
CARGO_PROFILE_DEV_DEBUG=false cargo run -q --no-default-features \
  --manifest-path bgp/fuzz/Cargo.toml --target-dir target/fuzz \
  --bin stable-fuzz -- --runs 2000000 --seed 1 || status=$?

room
echo "== leftovers"
# The lab's containerd instances live under reeft-* directories and cgroups.
left=$(ip netns list | grep -oE '^(reeft-|reef-lab-)[^ ]*' || true)
procs=$(pgrep -a -f 'reeft-(bird|frr|vm)-' || true; pgrep -a -f '^qemu-system-x86_64' || true
       pgrep -a -f '^(/usr/bin/)?containerd(-shim-runc-v2)? .*reeft-' || true)
if [ -n "$left" ] || [ -n "$procs" ]; then
  echo "FAIL: the tests left things behind:"; echo "$left"; echo "$procs"
  for n in $left; do ip netns pids "$n" 2>/dev/null | xargs -r kill -9; ip netns del "$n"; done
  status=1
else
  echo "no namespace, daemon or qemu process left behind"
fi
exit $status
