#!/usr/bin/env python3
"""A minimal BGP peer that records the messages a real daemon sends, for reef's byte vectors.

It connects from --local to --remote:179, sends an OPEN (4-octet AS capability optional),
answers KEEPALIVEs, and writes every message it receives, whole and unchanged, to
OUT/NN-<type>.bin. After --trigger-after seconds it runs --trigger (e.g. a birdc command that
withdraws routes), then keeps recording until --duration is over, and sends a Cease.
"""
import argparse
import os
import socket
import struct
import subprocess
import time

TYPES = {1: "open", 2: "update", 3: "notification", 4: "keepalive", 5: "route-refresh"}


def message(mtype, body):
    return b"\xff" * 16 + struct.pack("!HB", 19 + len(body), mtype) + body


def open_msg(asn, router_id, hold, four_octet):
    caps = b""
    caps += bytes([1, 4]) + struct.pack("!HBB", 1, 0, 1)  # MP IPv4 unicast
    caps += bytes([1, 4]) + struct.pack("!HBB", 2, 0, 1)  # MP IPv6 unicast
    caps += bytes([2, 0])  # route refresh
    # graceful restart, restart time 120, both families (so the daemon sends End-of-RIB)
    caps += bytes([64, 10]) + struct.pack("!H", 120) + struct.pack("!HBB", 1, 1, 0) + struct.pack("!HBB", 2, 1, 0)
    if four_octet:
        caps += bytes([65, 4]) + struct.pack("!I", asn)
    my_as = asn if asn < 65536 else 23456
    params = bytes([2, len(caps)]) + caps
    body = struct.pack("!BHH", 4, my_as, hold) + socket.inet_aton(router_id) + bytes([len(params)]) + params
    return message(1, body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--local", required=True)
    ap.add_argument("--remote", required=True)
    ap.add_argument("--port", type=int, default=179)
    ap.add_argument("--asn", type=int, required=True)
    ap.add_argument("--router-id", required=True)
    ap.add_argument("--no-four-octet", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--trigger", default="")
    ap.add_argument("--trigger-after", type=float, default=4)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)

    s = None
    deadline = time.time() + 20
    while s is None:
        try:
            c = socket.socket()
            c.bind((a.local, 0))
            c.connect((a.remote, a.port))
            s = c
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)
    s.sendall(open_msg(a.asn, a.router_id, 90, not a.no_four_octet))
    s.settimeout(0.2)
    buf = b""
    n = 0
    start = time.time()
    triggered = False
    while time.time() - start < a.duration:
        if a.trigger and not triggered and time.time() - start > a.trigger_after:
            subprocess.run(a.trigger, shell=True, check=True)
            triggered = True
        try:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        except socket.timeout:
            pass
        while len(buf) >= 19:
            length = struct.unpack("!H", buf[16:18])[0]
            if len(buf) < length:
                break
            msg, buf = buf[:length], buf[length:]
            mtype = msg[18]
            n += 1
            with open(os.path.join(a.out, "%02d-%s.bin" % (n, TYPES.get(mtype, "type%d" % mtype))), "wb") as f:
                f.write(msg)
            if mtype in (1, 4):
                s.sendall(message(4, b""))
    # Cease / administrative shutdown
    s.sendall(message(3, bytes([6, 2])))
    time.sleep(0.2)
    s.close()
    print("captured %d messages into %s" % (n, a.out))


if __name__ == "__main__":
    main()
