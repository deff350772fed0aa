#!/usr/bin/env python3
"""HTTP/1.1 keep-alive for the wisp exact-move tests.

  httpka.py serve PORT
      python's http.server (HTTPServer, protocol_version HTTP/1.1, so a
      connection serves request after request) on 0.0.0.0:PORT. GET /r/I
      answers body(I) with a Content-Length. Prints "listening", then
      "connection N from ADDR" for each connection it accepts, and "served
      N" every 100 requests.
  httpka.py client HOST PORT REQUESTS GAP_MS
      http.client on ONE HTTPConnection: GET /r/0 .. /r/REQUESTS-1, GAP_MS
      apart, each answer checked (status 200, body exactly body(I)). The
      connection must never be reopened (http.client would reopen a closed
      one silently: its socket object is watched). Prints "progress rx=I
      tx=I" after every answer checked, "error TEXT" on the first failure,
      and "result requests=N OK|FAIL". Exits 0 if OK.

body(I): "I:" and the hex SHA-256 of "wisp I", repeated 1 + I % 7 times,
then a newline, so that answers differ in content and length.
"""

import hashlib
import http.client
import http.server
import sys
import time


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def body(i):
    return (f"{i}:" + hashlib.sha256(f"wisp {i}".encode()).hexdigest() * (1 + i % 7) + "\n").encode()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # http.server writes the headers and the body apart: with Nagle's
    # algorithm on, each answer's body waits for the peer's delayed ACK of
    # its headers (about 40 ms, with or without wisp), and 1000 answers
    # would take 40 s.
    disable_nagle_algorithm = True
    served = 0
    connections = 0

    def setup(self):
        super().setup()
        Handler.connections += 1
        say(f"connection {Handler.connections} from {self.client_address}")

    def do_GET(self):
        try:
            i = int(self.path.rsplit("/", 1)[1])
        except ValueError:
            self.send_error(404)
            return
        b = body(i)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
        Handler.served += 1
        if Handler.served % 100 == 0:
            say(f"served {Handler.served}")

    def log_message(self, *args):
        pass


def serve(port):
    srv = http.server.HTTPServer(("0.0.0.0", port), Handler)
    say("listening")
    srv.serve_forever()


def client(host, port, n, gap):
    conn = http.client.HTTPConnection(host, port, timeout=60)
    sock = None
    for i in range(n):
        try:
            conn.request("GET", f"/r/{i}")
            if sock is None:
                sock = conn.sock
            elif conn.sock is not sock:
                raise RuntimeError("the connection was reopened")
            r = conn.getresponse()
            got = r.read()
        except Exception as e:
            say(f"error request {i}: {e!r}")
            say(f"result requests={i} FAIL")
            return 1
        want = body(i)
        if r.status != 200 or got != want:
            say(f"error request {i}: status {r.status}, body {got[:80]!r} ({len(got)} bytes), want {want[:80]!r} ({len(want)} bytes)")
            say(f"result requests={i} FAIL")
            return 1
        say(f"progress rx={i + 1} tx={i + 1}")
        time.sleep(gap)
    conn.close()
    say(f"result requests={n} OK")
    return 0


def main():
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        host, port, n, gap = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        sys.exit(client(host, port, n, gap / 1000.0))


if __name__ == "__main__":
    main()
