#!/usr/bin/env python3
"""Interactive keystrokes (an ssh-like echo) for the wisp exact-move tests.

  keys.py HOST PORT STOP_FILE [INTERVAL_MS]
      Connects to an echo server (rr.py serve) and writes one keystroke
      every INTERVAL_MS (default 100): keystroke I is the bytes "I;" (2 to
      5 bytes), written alone with TCP_NODELAY, without waiting for echoes.
      A reader thread checks that the echo is exactly what was written,
      byte for byte, and times each keystroke's echo. Once STOP_FILE
      exists it stops typing, waits up to 5 s for the last echoes,
      half-closes and reads to EOF. Prints "connected", "progress rx=N
      tx=M" (bytes) every 100 ms, "error TEXT", and "result keystrokes=N
      sent=B echoed=B max_echo_ms=X slowest=I OK|FAIL". Exits 0 if OK.
"""

import socket
import sys
import threading
import time
import os

lock = threading.Lock()


def say(line):
    with lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main():
    host, port, stop_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    interval = (float(sys.argv[4]) if len(sys.argv) > 4 else 100.0) / 1000.0
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    say("connected")
    sent = bytearray()
    ends = []  # (offset just past keystroke I, time it was written)
    echoed = bytearray()
    state = {"error": None, "eof": False, "max": 0.0, "slowest": -1}

    def reader():
        k = 0
        try:
            while True:
                chunk = s.recv(4096)
                now = time.monotonic()
                if not chunk:
                    state["eof"] = True
                    return
                with lock:
                    start = len(echoed)
                    echoed.extend(chunk)
                    want = bytes(sent[start : len(echoed)])
                    while k < len(ends) and ends[k][0] <= len(echoed):
                        ms = (now - ends[k][1]) * 1000
                        if ms > state["max"]:
                            state["max"], state["slowest"] = ms, k
                        k += 1
                if chunk != want:
                    state["error"] = f"echo at byte {start}: got {chunk!r}, sent {want!r}"
                    return
        except Exception as e:
            state["error"] = f"recv: {e!r}"

    t = threading.Thread(target=reader, daemon=True)
    t.start()

    def ticker():
        while True:
            say(f"progress rx={len(echoed)} tx={len(sent)}")
            time.sleep(0.1)

    threading.Thread(target=ticker, daemon=True).start()
    i = 0
    next_at = time.monotonic()
    try:
        while not os.path.exists(stop_file) and state["error"] is None:
            key = f"{i};".encode()
            with lock:
                sent.extend(key)
                ends.append((len(sent), time.monotonic()))
            s.sendall(key)
            i += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        until = time.monotonic() + 5
        while len(echoed) < len(sent) and state["error"] is None and time.monotonic() < until:
            time.sleep(0.01)
        s.shutdown(socket.SHUT_WR)
        t.join(5)
    except Exception as e:
        state["error"] = state["error"] or f"send: {e!r}"
    ok = state["error"] is None and state["eof"] and bytes(echoed) == bytes(sent)
    if state["error"]:
        say(f"error {state['error']}")
    elif not ok:
        say(f"error echoed {len(echoed)} of {len(sent)} bytes, eof={state['eof']}, last echoed {bytes(echoed[-16:])!r}")
    say(
        f"result keystrokes={i} sent={len(sent)} echoed={len(echoed)} "
        f"max_echo_ms={state['max']:.1f} slowest={state['slowest']} {'OK' if ok else 'FAIL'}"
    )
    sys.stdout.flush()
    os._exit(0 if ok else 1)


if __name__ == "__main__":
    main()
