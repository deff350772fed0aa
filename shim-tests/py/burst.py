#!/usr/bin/env python3
"""A burst after a long idle, for the wisp exact-move tests.

  burst.py HOST PORT BYTES GO_FILE
      Connects to an echo server (rr.py serve), checks one small echo
      ("hello"), prints "idle" and sends nothing until GO_FILE exists.
      Then it sends BYTES random bytes as fast as it can while a second
      thread reads the echo, and half-closes. Prints "progress rx=N tx=M"
      every 100 ms once the burst started, "error TEXT", and "result
      sent=N SHA echoed=M SHA OK|FAIL" (OK: the echo is exactly what was
      sent, then EOF). Exits 0 if OK.
"""

import hashlib
import os
import socket
import sys
import threading
import time


def say(line, _lock=threading.Lock()):
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main():
    host, port, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    data = os.urandom(n)
    s = socket.create_connection((host, port))
    s.sendall(b"hello")
    got = b""
    while len(got) < 5:
        chunk = s.recv(5 - len(got))
        if not chunk:
            break
        got += chunk
    if got != b"hello":
        say(f"error the first echo was {got!r}")
        say("result sent=0 - echoed=0 - FAIL")
        return 1
    say("idle")
    while not os.path.exists(go):
        time.sleep(0.01)
    say("burst")
    echo = bytearray()
    sent = [0]
    err = []

    def reader():
        try:
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    return
                echo.extend(chunk)
        except Exception as e:
            err.append(f"recv: {e!r}")

    def ticker():
        while True:
            say(f"progress rx={len(echo)} tx={sent[0]}")
            time.sleep(0.1)

    t = threading.Thread(target=reader)
    t.start()
    threading.Thread(target=ticker, daemon=True).start()
    try:
        for i in range(0, n, 1 << 16):
            s.sendall(data[i : i + (1 << 16)])
            sent[0] = min(n, i + (1 << 16))
        s.shutdown(socket.SHUT_WR)
    except Exception as e:
        err.append(f"send: {e!r}")
    t.join()
    say(f"progress rx={len(echo)} tx={sent[0]}")
    h1 = hashlib.sha256(data).hexdigest()
    h2 = hashlib.sha256(echo).hexdigest()
    ok = not err and bytes(echo) == data
    for e in err:
        say(f"error {e}")
    if not ok and not err:
        k = next((i for i in range(min(len(echo), n)) if echo[i] != data[i]), min(len(echo), n))
        say(f"error the echo differs from byte {k} on ({len(echo)} of {n} bytes echoed)")
    say(f"result sent={n} {h1} echoed={len(echo)} {h2} {'OK' if ok else 'FAIL'}")
    sys.stdout.flush()
    os._exit(0 if ok else 1)


if __name__ == "__main__":
    sys.exit(main())
