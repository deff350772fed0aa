#!/usr/bin/env python3
"""Threads blocked in recv() and in send() when a move happens.

  blocked.py serve PORT SEND_BYTES
      Accepts one connection on 0.0.0.0:PORT (blocking socket, no
      timeouts). Thread R calls recv() at once, though the peer sends
      nothing until told to; thread S sends SEND_BYTES random bytes in one
      sendall(), which blocks on the full send buffer while the peer reads
      slowly. Prints "recv-waiting" before R's first recv(), "sendall-start"
      and "sendall-done" around S's call, "progress rx=N tx=0" every 100 ms,
      and at the end "server sent N SHA" and "server received N SHA".
  blocked.py connect HOST PORT READ_RATE SEND_BYTES GO_FILE
      Reads what the server sends, slowly (READ_RATE bytes/s), and once
      GO_FILE exists sends SEND_BYTES random bytes and half-closes. Prints
      "progress rx=N tx=M" every 100 ms, then "client received N SHA" and
      "client sent N SHA".
Both exit 0 when both directions reached EOF without an error.
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


class Side:
    def __init__(self):
        self.rx = 0
        self.tx = 0
        self.failed = False
        self.done = threading.Event()


def progress(s):
    while not s.done.wait(0.1):
        say(f"progress rx={s.rx} tx={s.tx}")


def read_all(sock, s, who, rate=0.0):
    h = hashlib.sha256()
    start = time.monotonic()
    try:
        while True:
            data = sock.recv(1 << 16)
            if not data:
                break
            h.update(data)
            s.rx += len(data)
            if rate:
                ahead = start + s.rx / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
    except OSError as e:
        say(f"error recv after {s.rx} bytes: {e!r}")
        s.failed = True
    say(f"{who} received {s.rx} {h.hexdigest()}")


def send_all(sock, s, who, n):
    data = os.urandom(n)
    try:
        say("sendall-start")
        sock.sendall(data)
        say("sendall-done")
        s.tx = n
        sock.shutdown(socket.SHUT_WR)
    except OSError as e:
        say(f"error send: {e!r}")
        s.failed = True
    say(f"{who} sent {n} {hashlib.sha256(data).hexdigest()}")


def main():
    s = Side()
    if sys.argv[1] == "serve":
        port, n = int(sys.argv[2]), int(sys.argv[3])
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("0.0.0.0", port))
        ls.listen(1)
        say("listening")
        sock, _ = ls.accept()
        say("connected")

        def recv_side():
            say("recv-waiting")
            read_all(sock, s, "server")

        threads = [
            threading.Thread(target=recv_side),
            threading.Thread(target=send_all, args=(sock, s, "server", n)),
        ]
    else:
        host, port, rate, n, go = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
        sock = socket.create_connection((host, port), timeout=30)
        sock.settimeout(None)
        say("connected")

        def send_side():
            while not os.path.exists(go):
                time.sleep(0.05)
            data = os.urandom(n)
            try:
                for i in range(0, n, 1 << 16):
                    sock.sendall(data[i : i + (1 << 16)])
                    s.tx = min(n, i + (1 << 16))
                sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                say(f"error send after {s.tx} bytes: {e!r}")
                s.failed = True
            say(f"client sent {n} {hashlib.sha256(data).hexdigest()}")

        threads = [
            threading.Thread(target=read_all, args=(sock, s, "client", rate)),
            threading.Thread(target=send_side),
        ]
    for t in threads:
        t.start()
    threading.Thread(target=progress, args=(s,), daemon=True).start()
    for t in threads:
        t.join()
    s.done.set()
    say(f"progress rx={s.rx} tx={s.tx}")
    sock.close()
    sys.exit(1 if s.failed else 0)


if __name__ == "__main__":
    main()
