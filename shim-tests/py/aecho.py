#!/usr/bin/env python3
"""asyncio echo for the wisp mobility tests.

  aecho.py serve PORT
      An echo server on 0.0.0.0:PORT written on the event loop's socket
      calls (loop.sock_accept / sock_recv / sock_sendall: add_reader and
      add_writer on the epoll selector, the way a hand-written epoll loop
      works). Per connection, when the client half-closes, it prints
      "server-hash HEX BYTES" of what it received (and echoed).
  aecho.py client HOST PORT BYTES RATE
      asyncio streams: sends BYTES random bytes paced at RATE bytes/s while
      reading the echo concurrently; prints "progress rx=N tx=M" every
      100 ms, then "client ok BYTES HEX" (HEX: SHA-256 of what it sent) or
      "client MISMATCH ...", and exits 0 only if the echo is exact.
"""

import asyncio
import hashlib
import os
import socket
import sys
import time


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def serve(port):
    loop = asyncio.get_running_loop()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(8)
    ls.setblocking(False)
    say("listening")

    async def handle(conn):
        h = hashlib.sha256()
        n = 0
        while True:
            data = await loop.sock_recv(conn, 1 << 16)
            if not data:
                break
            h.update(data)
            n += len(data)
            await loop.sock_sendall(conn, data)
        conn.shutdown(socket.SHUT_WR)
        conn.close()
        say(f"server-hash {h.hexdigest()} {n}")

    while True:
        conn, _ = await loop.sock_accept(ls)
        conn.setblocking(False)
        say("connected")
        loop.create_task(handle(conn))


async def client(host, port, n, rate):
    data = os.urandom(n)
    digest = hashlib.sha256(data).hexdigest()
    reader, writer = await asyncio.open_connection(host, port)
    say("connected")
    got = bytearray()
    sent = 0

    async def send():
        nonlocal sent
        start = time.monotonic()
        for i in range(0, n, 1 << 16):
            writer.write(data[i : i + (1 << 16)])
            await writer.drain()
            sent = min(n, i + (1 << 16))
            ahead = start + sent / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        writer.write_eof()

    async def recv():
        while True:
            chunk = await reader.read(1 << 16)
            if not chunk:
                break
            got.extend(chunk)

    async def progress():
        while True:
            say(f"progress rx={len(got)} tx={sent}")
            await asyncio.sleep(0.1)

    ticker = asyncio.get_running_loop().create_task(progress())
    await asyncio.gather(send(), recv())
    ticker.cancel()
    writer.close()
    say(f"progress rx={len(got)} tx={sent}")
    if len(got) == n and hashlib.sha256(got).hexdigest() == digest:
        say(f"client ok {n} {digest}")
        return 0
    say(f"client MISMATCH got {len(got)} bytes, sha256 {hashlib.sha256(got).hexdigest()}; sent {n}, {digest}")
    return 1


def main():
    if sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2])))
    else:
        host, port, n, rate = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        sys.exit(asyncio.run(client(host, port, n, rate)))


if __name__ == "__main__":
    main()
