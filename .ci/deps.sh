#!/bin/bash
# Installs everything reef's tests need on a fresh Debian bookworm machine (as root).
# Idempotent and quick when everything is already there.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "deps: run as root (apt-get, network namespaces)" >&2; exit 1; }

PKGS="iproute2 iputils-ping bird2 frr containernetworking-plugins nftables qemu-system-x86
      busybox-static cpio kmod procps psmisc file bc tcpdump sqlite3 ca-certificates curl
      containerd runc gobgpd"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
fi
if [ -n "$missing" ]; then
  echo "deps: installing$missing"
  # Daemons must not start as services: tests start their own instances in namespaces.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# The packaged daemons may have been started by the package's scripts anyway; tests need none.
for svc in bird frr containerd gobgpd; do
  command -v systemctl >/dev/null && systemctl stop "$svc" >/dev/null 2>&1 || true
done
pkill -x bird 2>/dev/null || true

# Rust toolchain: the machine's own (rustup) when present.
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
  echo "deps: installing the Rust toolchain with rustup"
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
  export PATH="$HOME/.cargo/bin:$PATH"
fi

# The Debian kernel the VM lab boots (it has ipip); cached outside the clone.
"$(dirname "$0")/../integration/vm/fetch-kernel.sh"
