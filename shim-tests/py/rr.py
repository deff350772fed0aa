#!/usr/bin/env python3
"""Request/response over many streams, for the wisp exact-move tests.

  rr.py serve PORT
      An asyncio echo server (asyncio.start_server streams) on
      0.0.0.0:PORT: each connection echoes whatever arrives, as it arrives.
      A connection is named after the stream number in its first request
      when it carries rr.py client requests ("?" otherwise). Prints
      "listening", then "closed stream=S fd=F rx=N tx=M" when a connection ends.
      On SIGUSR1 (and at exit) it prints "open stream=S fd=F rx=N tx=M
      last=HEX idle=SECS" for each open connection: last is the last 16
      bytes it received.
  rr.py client HOST PORT STREAMS STOP_FILE [GAP_MS]
      Opens STREAMS connections to HOST:PORT (asyncio streams); each loops:
      send a 16-byte request (stream u32, sequence u32, 8 bytes of BLAKE2b
      over both), read the 16-byte echo, check that it is exactly the
      request, sleep GAP_MS (default 50). Prints "connected N" once all are
      open, "fds F0 F1 ..." (each stream's descriptor), "counts C0 C1 ..."
      (round trips per stream) every 200 ms and,
      once STOP_FILE exists, lets each stream finish its round trip and
      close. A stream that has not finished 5 s later is reported hung.
      Then, one line each:
        stream S trips=N sent=B received=B
        hung stream=S fd=F trips=N sent=B received=B idle=SECS waiting=HEX partial=HEX last=HEX
        error stream=S TEXT
        result streams=N trips=T hung=H errors=E OK|FAIL
      Exits 0 if OK.
"""

import asyncio
import hashlib
import os
import signal
import struct
import sys
import time

GRACE = 5.0


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def request(stream, seq):
    head = struct.pack(">II", stream, seq)
    return head + hashlib.blake2b(head, digest_size=8).digest()


# ------------------------------------------------------------------ server


class Conn:
    def __init__(self):
        self.stream = "?"
        self.rx = 0
        self.tx = 0
        self.last = b""
        self.at = time.monotonic()
        self.fd = -1

    def line(self, word):
        idle = time.monotonic() - self.at
        return (
            f"{word} stream={self.stream} fd={self.fd} rx={self.rx} tx={self.tx} "
            f"last={self.last.hex()} idle={idle:.1f}"
        )


async def serve(port):
    conns = set()

    async def handle(reader, writer):
        c = Conn()
        c.fd = writer.get_extra_info("socket").fileno()
        conns.add(c)
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                if c.rx == 0 and len(data) >= 16 and data[:16] == request(*struct.unpack(">II", data[:8])):
                    c.stream = struct.unpack(">I", data[:4])[0]
                c.rx += len(data)
                c.last = (c.last + data)[-16:]
                c.at = time.monotonic()
                writer.write(data)
                await writer.drain()
                c.tx += len(data)
        except Exception as e:  # a reset: report it, the test judges
            say(f"error stream={c.stream} {e!r}")
        finally:
            conns.discard(c)
            say(c.line("closed"))
            writer.close()

    def dump():
        for c in sorted(conns, key=lambda c: str(c.stream)):
            say(c.line("open"))
        say(f"dump done open={len(conns)}")

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, dump)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    server = await asyncio.start_server(handle, "0.0.0.0", port, backlog=256)
    say("listening")
    async with server:
        await stop
    dump()


# ------------------------------------------------------------------ client


class Stream:
    def __init__(self, n):
        self.n = n
        self.trips = 0
        self.sent = 0
        self.received = 0
        self.waiting = b""
        self.partial = b""
        self.last = b""
        self.at = time.monotonic()
        self.error = None
        self.done = False
        self.fd = -1
        self.writer = None

    def hung(self):
        idle = time.monotonic() - self.at
        return (
            f"hung stream={self.n} fd={self.fd} trips={self.trips} sent={self.sent} "
            f"received={self.received} idle={idle:.1f} waiting={self.waiting.hex()} "
            f"partial={self.partial.hex()} last={self.last.hex()}"
        )


async def one(s, host, port, stop, gap, opened):
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except Exception as e:
        s.error = f"connect: {e!r}"
        return
    else:
        s.writer = writer
        s.fd = writer.get_extra_info("socket").fileno()
    finally:
        attempts[0] += 1
        if attempts[0] == total[0]:
            opened.set_result(None)
    try:
        seq = 0
        while not stop.is_set():
            req = request(s.n, seq)
            s.waiting = req
            s.partial = b""
            writer.write(req)
            await writer.drain()
            s.sent += len(req)
            while len(s.partial) < 16:
                chunk = await reader.read(16 - len(s.partial))
                if not chunk:
                    s.error = f"EOF after {s.trips} trips, partial={s.partial.hex()}"
                    return
                s.partial += chunk
                s.received += len(chunk)
                s.at = time.monotonic()
            if s.partial != req:
                s.error = f"seq={seq} expected={req.hex()} got={s.partial.hex()}"
                return
            s.last, s.partial, s.waiting = s.partial, b"", b""
            s.trips += 1
            seq += 1
            await asyncio.sleep(gap)
        writer.close()
        try:
            await writer.wait_closed()
        except Exception:
            pass
        s.done = True
    except Exception as e:
        s.error = f"{e!r} after {s.trips} trips"


attempts = [0]
total = [0]


async def client(host, port, n, stop_file, gap):
    loop = asyncio.get_running_loop()
    streams = [Stream(i) for i in range(n)]
    stop = asyncio.Event()
    opened = loop.create_future()
    total[0] = n
    tasks = [loop.create_task(one(s, host, port, stop, gap, opened)) for s in streams]
    await opened
    say(f"connected {sum(s.error is None for s in streams)}")
    say("fds " + " ".join(str(s.fd) for s in streams))
    while not os.path.exists(stop_file):
        say("counts " + " ".join(str(s.trips) for s in streams))
        await asyncio.sleep(0.2)
    say("counts " + " ".join(str(s.trips) for s in streams))
    stop.set()
    _, pending = await asyncio.wait(tasks, timeout=GRACE)
    ok = True
    hung = errors = 0
    for s in streams:
        if s.error is not None:
            errors += 1
            ok = False
            say(f"error stream={s.n} {s.error}")
        elif not s.done:
            hung += 1
            ok = False
            say(s.hung())
        else:
            say(f"stream {s.n} trips={s.trips} sent={s.sent} received={s.received}")
    for t in pending:
        t.cancel()
    trips = sum(s.trips for s in streams)
    say(f"result streams={n} trips={trips} hung={hung} errors={errors} {'OK' if ok else 'FAIL'}")
    # Close what is left (the library logs each stream it closes), without
    # waiting on anything: a broken stream may never finish.
    for s in streams:
        if not s.done and s.writer is not None:
            s.writer.transport.abort()
    await asyncio.sleep(0.3)
    sys.stdout.flush()
    os._exit(0 if ok else 1)


def main():
    if sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2])))
    else:
        host, port, n, stop_file = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        gap = (float(sys.argv[6]) if len(sys.argv) > 6 else 50.0) / 1000.0
        asyncio.run(client(host, port, n, stop_file, gap))


if __name__ == "__main__":
    main()
