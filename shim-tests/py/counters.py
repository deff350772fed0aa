#!/usr/bin/env python3
"""Self-checking counter streams for the wisp mobility tests.

Each direction of one TCP connection carries 8-byte big-endian counters
0, 1, 2, ... and the receiver checks that it gets exactly that sequence:
no gap, no duplicate, no reordering. The client ends the run when the
stop file appears: it sends the end marker (2**64 - 1) after its last
counter and half-closes; the server, on that marker, does the same; each
side reads to EOF, then prints its tally.

usage:
  counters.py serve PORT [options]       listen on 0.0.0.0:PORT, one connection
  counters.py connect HOST PORT [options]
options:
  --dir both|down|up  who sends counters: both sides, the server only
                      ("down") or the client only ("up"); default both
  --rate BYTES        pace each sender to BYTES per second (0: unpaced)
  --stop FILE         (client) end the run when FILE exists
  --gap-ms MS         report every pause between two receives longer than MS

stdout, one line each:
  listening | connected
  progress rx=N tx=M           counters received / sent, every 100 ms
  gap END_EPOCH MS             a pause between receives that ended at END
  error TEXT                   what went wrong (at most 20 are printed)
  result sent=N received=M errors=E OK|FAIL
Exit status 0 if OK.
"""

import argparse
import os
import socket
import sys
import threading
import time
from array import array

MARK = 2**64 - 1
BATCH = 8192  # counters per send: 64 KiB
LITTLE = sys.byteorder == "little"

_out = threading.Lock()


def say(line):
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Tally:
    def __init__(self):
        self.sent = 0
        self.received = 0
        self.errors = 0
        self.marked = False
        self.stop = threading.Event()
        self.done = threading.Event()
        self.lock = threading.Lock()

    def error(self, text):
        with self.lock:
            self.errors += 1
            n = self.errors
        if n <= 20:
            say("error " + text)


def wire(values):
    a = array("Q", values)
    if LITTLE:
        a.byteswap()
    return a.tobytes()


def sender(sock, t, counters, rate):
    n = 0
    start = time.monotonic()
    try:
        while counters and not t.stop.is_set():
            sock.sendall(wire(range(n, n + BATCH)))
            n += BATCH
            t.sent = n
            if rate:
                ahead = start + n * 8 / rate - time.monotonic()
                if ahead > 0:
                    t.stop.wait(ahead)
        t.stop.wait()
        sock.sendall(wire([MARK]))
        sock.shutdown(socket.SHUT_WR)
    except OSError as e:
        t.error(f"send failed after {n} counters: {e!r}")


def receiver(sock, t, gap_ms, on_mark):
    expected = 0
    rest = b""
    last = None
    try:
        while True:
            data = sock.recv(1 << 16)
            now = time.monotonic()
            if not data:
                break
            if last is not None and (now - last) * 1000 > gap_ms:
                say(f"gap {time.time():.3f} {(now - last) * 1000:.1f}")
            last = now
            if t.marked:
                t.error(f"{len(data)} bytes after the end marker")
                continue
            rest += data
            k = len(rest) // 8
            if not k:
                continue
            a = array("Q")
            a.frombytes(rest[: k * 8])
            rest = rest[k * 8 :]
            if LITTLE:
                a.byteswap()
            try:
                end = a.index(MARK)
            except ValueError:
                end = len(a)
            body = a[:end]
            if body == array("Q", range(expected, expected + len(body))):
                expected += len(body)
            else:
                for v in body:
                    if v != expected:
                        kind = "gap" if v > expected else "duplicate or reordered"
                        t.error(f"{kind}: got {v}, expected {expected}")
                        expected = v
                    expected += 1
            t.received += len(body)
            if end < len(a):
                t.marked = True
                if end + 1 < len(a) or rest:
                    t.error("data after the end marker")
                on_mark()
    except OSError as e:
        t.error(f"recv failed after {t.received} counters: {e!r}")
    if rest:
        t.error(f"{len(rest)} stray bytes at the end")
    if not t.marked:
        t.error(f"stream ended without the end marker after {t.received} counters")


def progress(t):
    while not t.done.wait(0.1):
        say(f"progress rx={t.received} tx={t.sent}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["serve", "connect"])
    p.add_argument("where", nargs="+")
    p.add_argument("--dir", choices=["both", "down", "up"], default="both")
    p.add_argument("--rate", type=float, default=8e6)
    p.add_argument("--stop")
    p.add_argument("--gap-ms", type=float, default=20.0)
    a = p.parse_args()
    t = Tally()
    if a.role == "serve":
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("0.0.0.0", int(a.where[0])))
        ls.listen(1)
        say("listening")
        sock, _ = ls.accept()
        counters = a.dir in ("both", "down")
    else:
        sock = socket.create_connection((a.where[0], int(a.where[1])), timeout=30)
        sock.settimeout(None)
        counters = a.dir in ("both", "up")
    say("connected")

    if a.role == "connect":

        def watch():
            while not os.path.exists(a.stop):
                time.sleep(0.05)
            t.stop.set()

        threading.Thread(target=watch, daemon=True).start()
        on_mark = lambda: None  # noqa: E731
    else:
        on_mark = t.stop.set
    threads = [
        threading.Thread(target=sender, args=(sock, t, counters, a.rate)),
        threading.Thread(target=receiver, args=(sock, t, a.gap_ms, on_mark)),
    ]
    for th in threads:
        th.start()
    threading.Thread(target=progress, args=(t,), daemon=True).start()
    # A receiver that failed ends the run on this side too.
    threads[1].join()
    t.stop.set()
    threads[0].join()
    t.done.set()
    sock.close()
    ok = t.errors == 0
    say(f"progress rx={t.received} tx={t.sent}")
    say(f"result sent={t.sent} received={t.received} errors={t.errors} {'OK' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
