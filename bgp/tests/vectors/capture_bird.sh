#!/bin/bash
# Captures the messages BIRD 2 sends to a peer, for reef's byte vectors.
# Usage (root): capture_bird.sh OUTDIR PEER_AS [--no-four-octet]
# Runs BIRD and tests/vectors/capture_peer.py inside a throwaway namespace, over its loopback;
# everything is removed on exit.
set -euo pipefail
out=$1; peer_as=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
ns=reeft-capture-bird-$$
tmp=$(mktemp -d)
cleanup() {
    [ -f "$tmp/bird.pid" ] && kill "$(cat "$tmp/bird.pid")" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
# BIRD refuses 127/8 neighbours; TEST-NET-1 addresses on the namespace's own loopback.
ip -n "$ns" addr add 192.0.2.1/32 dev lo
ip -n "$ns" addr add 192.0.2.2/32 dev lo
cat > "$tmp/bird.conf" <<CONF
router id 10.0.0.1;
log "$tmp/bird.log" all;
protocol device {}
protocol static s4 {
  ipv4;
  route 10.10.0.0/16 blackhole;
  route 10.20.0.0/24 blackhole;
  route 192.0.2.0/25 blackhole;
}
protocol static s6 {
  ipv6;
  route 2001:db8:10::/48 blackhole;
  route 2001:db8:20::/64 blackhole;
}
filter out4 {
  if net = 10.10.0.0/16 then {
    bgp_community.add((65001, 100));
    bgp_community.add((65535, 65281));
    bgp_large_community.add((65001, 1, 2));
    bgp_med = 50;
  }
  if net = 10.20.0.0/24 then bgp_path.prepend(4200000000);
  accept;
}
protocol bgp peer1 {
  local 192.0.2.1 as 65001;
  neighbor 192.0.2.2 as $peer_as;
  multihop 2;
  hold time 90;
  passive on;
  connect delay time 1; connect retry time 2; error wait time 1, 10;
  ipv4 { import all; export filter out4; next hop self; };
  ipv6 { import all; export all; next hop address 2001:db8::1; };
}
CONF
ip netns exec "$ns" bird -f -c "$tmp/bird.conf" -s "$tmp/bird.sock" -P "$tmp/bird.pid" \
    >"$tmp/bird.out" 2>&1 &
sleep 1
ip netns exec "$ns" python3 "$here/capture_peer.py" --local 192.0.2.2 --remote 192.0.2.1 \
    --asn "$peer_as" --router-id 10.0.0.2 --out "$out" --duration 7 --trigger-after 4 \
    --trigger "birdc -s $tmp/bird.sock disable s4 >/dev/null && birdc -s $tmp/bird.sock disable s6 >/dev/null" "$@"
