#!/usr/bin/env python3
"""Send a file over TCP at a steady pace, then half-close and wait for the
receiver to close.

  pacedsend.py HOST PORT FILE RATE
Prints "connected", "progress rx=0 tx=N" every 100 ms and "sent N" at the
end; exits 0 once the peer has closed after reading everything.
"""

import socket
import sys
import time


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    host, port, path, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    sock = socket.create_connection((host, port), timeout=30)
    sock.settimeout(None)
    say("connected")
    sent = 0
    start = last = time.monotonic()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 16)
            if not chunk:
                break
            sock.sendall(chunk)
            sent += len(chunk)
            now = time.monotonic()
            if now - last >= 0.1:
                say(f"progress rx=0 tx={sent}")
                last = now
            ahead = start + sent / rate - now
            if ahead > 0:
                time.sleep(ahead)
    sock.shutdown(socket.SHUT_WR)
    say(f"progress rx=0 tx={sent}")
    # The receiver closes once it has everything; anything it sends back
    # would be a protocol error.
    extra = sock.recv(1 << 16)
    sock.close()
    say(f"sent {sent}")
    sys.exit(0 if not extra else 1)


if __name__ == "__main__":
    main()
