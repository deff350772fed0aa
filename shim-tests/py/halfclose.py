#!/usr/bin/env python3
"""Half-closed streams for the wisp exact-move tests.

  halfclose.py serve PORT BYTES RATE
      Accepts one connection on 0.0.0.0:PORT and reads it to EOF (the
      client's shutdown(SHUT_WR)), then sends BYTES random bytes paced at
      RATE bytes/s and closes. Prints "listening", "server got-eof N SHA"
      (what it received), "progress rx=0 tx=M" every 100 ms while sending,
      and "server sent N SHA".
  halfclose.py client HOST PORT UP_BYTES GO_FILE
      Sends UP_BYTES random bytes, except its last 64 KiB, then waits for
      GO_FILE ("-": no wait), sends the last 64 KiB and half-closes at once
      (so the tail and the FIN leave together). Then reads to EOF. Prints
      "connected", "shut" after the shutdown, "progress rx=N tx=M" every
      100 ms, "client sent N SHA" and "client received N SHA".
Both print "error TEXT" and exit 1 on any socket error; 0 otherwise (the
test compares the digests).
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


def ticker(rx, tx):
    while True:
        say(f"progress rx={rx[0]} tx={tx[0]}")
        time.sleep(0.1)


def serve(port, n, rate):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(1)
    say("listening")
    c, _ = ls.accept()
    h = hashlib.sha256()
    got = 0
    while True:
        chunk = c.recv(1 << 16)
        if not chunk:
            break
        h.update(chunk)
        got += len(chunk)
    say(f"server got-eof {got} {h.hexdigest()}")
    data = os.urandom(n)
    rx, tx = [0], [0]
    threading.Thread(target=ticker, args=(rx, tx), daemon=True).start()
    start = time.monotonic()
    for i in range(0, n, 1 << 14):
        c.sendall(data[i : i + (1 << 14)])
        tx[0] = min(n, i + (1 << 14))
        ahead = start + tx[0] / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    c.close()
    say(f"progress rx=0 tx={n}")
    say(f"server sent {n} {hashlib.sha256(data).hexdigest()}")


def client(host, port, n, go):
    data = os.urandom(n)
    tail = min(n, 1 << 16)
    s = socket.create_connection((host, port))
    say("connected")
    rx, tx = [0], [0]
    threading.Thread(target=ticker, args=(rx, tx), daemon=True).start()
    s.sendall(data[: n - tail])
    tx[0] = n - tail
    if go != "-":
        while not os.path.exists(go):
            time.sleep(0.001)
    s.sendall(data[n - tail :])
    s.shutdown(socket.SHUT_WR)
    tx[0] = n
    say("shut")
    say(f"client sent {n} {hashlib.sha256(data).hexdigest()}")
    h = hashlib.sha256()
    while True:
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        h.update(chunk)
        rx[0] += len(chunk)
    say(f"progress rx={rx[0]} tx={tx[0]}")
    say(f"client received {rx[0]} {h.hexdigest()}")


def main():
    try:
        if sys.argv[1] == "serve":
            serve(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        else:
            client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    except Exception as e:
        say(f"error {e!r}")
        sys.stdout.flush()
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
