#!/bin/bash
# reef's main job on one machine: installs what it needs, builds reef, and runs the local lab
# demo (4 nodes on 2 subnets behind a BIRD router, 2 pods each, every pod pinging every other),
# then removes everything. Needs root (network namespaces). Other lab commands:
#   target/debug/reef lab up | status | down
set -euo pipefail
cd "$(dirname "$0")"
[ "$(id -u)" = 0 ] || { echo "lab.sh: run as root (sudo ./lab.sh): the lab builds network namespaces" >&2; exit 1; }
bash .ci/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build -q -p reef -p reef-cni --bins
exec target/debug/reef lab demo
