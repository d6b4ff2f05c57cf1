#!/bin/bash
# Captures the messages FRR's bgpd sends to a peer, for reef's byte vectors.
# Usage (root): capture_frr.sh OUTDIR PEER_AS [--no-four-octet]
# Runs bgpd (without zebra) and tests/vectors/capture_peer.py inside a throwaway namespace,
# over its loopback; everything is removed on exit.
set -euo pipefail
out=$1; peer_as=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
ns=reeft-capture-frr-$$
tmp=$(mktemp -d)
cleanup() {
    [ -f "$tmp/bgpd.pid" ] && kill "$(cat "$tmp/bgpd.pid")" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" addr add 192.0.2.1/32 dev lo
ip -n "$ns" addr add 192.0.2.2/32 dev lo
cat > "$tmp/bgpd.conf" <<CONF
route-map SETC permit 10
 set community 65001:100 65001:200
 set large-community 65001:1:2
 set metric 50
exit
route-map PREP permit 10
 set as-path prepend 4200000000
exit
router bgp 65001
 bgp router-id 10.0.0.1
 no bgp ebgp-requires-policy
 no bgp network import-check
 no bgp default ipv4-unicast
 neighbor 192.0.2.2 remote-as $peer_as
 neighbor 192.0.2.2 update-source 192.0.2.1
 neighbor 192.0.2.2 ebgp-multihop 2
 neighbor 192.0.2.2 passive
 neighbor 192.0.2.2 timers 30 90
 address-family ipv4 unicast
  network 10.10.0.0/16 route-map SETC
  network 10.20.0.0/24 route-map PREP
  network 192.0.2.0/25
  neighbor 192.0.2.2 activate
 exit-address-family
 address-family ipv6 unicast
  network 2001:db8:10::/48
  network 2001:db8:20::/64
  neighbor 192.0.2.2 activate
 exit-address-family
exit
CONF
chown -R frr:frr "$tmp"
ip netns exec "$ns" /usr/lib/frr/bgpd -Z -f "$tmp/bgpd.conf" -i "$tmp/bgpd.pid" \
    -z "$tmp/zserv.api" --vty_socket "$tmp" -P 0 --log "file:$tmp/bgpd.log" \
    >"$tmp/bgpd.out" 2>&1 &
sleep 2
vty="vtysh --vty_socket $tmp -d bgpd"
ip netns exec "$ns" python3 "$here/capture_peer.py" --local 192.0.2.2 --remote 192.0.2.1 \
    --asn "$peer_as" --router-id 10.0.0.2 --out "$out" --duration 8 --trigger-after 4 \
    --trigger "$vty -c 'conf t' -c 'router bgp 65001' -c 'address-family ipv4 unicast' -c 'no network 10.20.0.0/24' -c 'exit-address-family' -c 'address-family ipv6 unicast' -c 'no network 2001:db8:20::/64' >/dev/null" "$@"
