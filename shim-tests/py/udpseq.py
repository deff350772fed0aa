#!/usr/bin/env python3
"""Numbered UDP datagrams across moves.

  udpseq.py recv PORT STOP_FILE
      Bound to 0.0.0.0:PORT; counts distinct, duplicate and reordered
      sequence numbers until the sender's end datagram or STOP_FILE.
      Prints "ready", "progress rx=N tx=0" every 100 ms, then
      "result received=N max=M duplicates=D reordered=R".
  udpseq.py send HOST PORT INTERVAL_MS STOP_FILE
      connect()s a datagram socket to HOST:PORT and sends datagrams
      numbered 0, 1, 2, ... (8-byte big-endian number, 92 bytes of
      padding) every INTERVAL_MS until STOP_FILE exists, then the end
      datagram ten times. A send that fails is counted and skipped.
      Prints "progress rx=0 tx=N", then "result sent=N send_errors=E".
"""

import os
import socket
import struct
import sys
import time

END = 2**64 - 1
PAD = b"\x5a" * 92


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def recv(port, stop):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.settimeout(0.1)
    say("ready")
    seen = set()
    dups = reordered = 0
    top = -1
    last_report = 0.0
    while True:
        now = time.monotonic()
        if now - last_report >= 0.1:
            say(f"progress rx={len(seen)} tx=0")
            last_report = now
        try:
            data = s.recv(2048)
        except socket.timeout:
            if os.path.exists(stop):
                break
            continue
        if len(data) < 8:
            continue
        (n,) = struct.unpack(">Q", data[:8])
        if n == END:
            break
        if n in seen:
            dups += 1
        else:
            if n < top:
                reordered += 1
            seen.add(n)
            top = max(top, n)
    say(f"progress rx={len(seen)} tx=0")
    say(f"result received={len(seen)} max={top} duplicates={dups} reordered={reordered}")


def send(host, port, interval, stop):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, port))
    say("connected")
    n = errors = 0
    start = time.monotonic()
    while not os.path.exists(stop):
        try:
            s.send(struct.pack(">Q", n) + PAD)
        except OSError:
            errors += 1
        n += 1
        if n % 20 == 0:
            say(f"progress rx=0 tx={n}")
        ahead = start + n * interval - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    for _ in range(10):
        try:
            s.send(struct.pack(">Q", END))
        except OSError:
            pass
        time.sleep(0.01)
    say(f"progress rx=0 tx={n}")
    say(f"result sent={n} send_errors={errors}")


def main():
    if sys.argv[1] == "recv":
        recv(int(sys.argv[2]), sys.argv[3])
    else:
        send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) / 1000, sys.argv[5])


if __name__ == "__main__":
    main()
