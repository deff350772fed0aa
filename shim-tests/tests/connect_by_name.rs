//! Unmodified programs reach each other by name across the lab's
//! namespaces, set up through a registrar: curl and python's http.server,
//! socat, asyncio, iperf3; programs that use no name see no difference;
//! failures are the errors a program expects.

use shim_tests::e2e::{run, sha256, Bg, Proxy, World};
use shim_tests::lab::Node;
use std::time::Duration;

const BOB: &str = "sip:bob@wxyz.com";

fn http_server(w: &World, dir: &std::path::Path) -> Bg {
    let mut cmd = w.wisp_cmd(
        Node::Mobile,
        Some(BOB),
        ["python3", "-u", "-m", "http.server", "8080"],
    );
    cmd.arg("--directory").arg(dir);
    let mut srv = Bg::spawn(cmd, &w.dir, "http-server");
    srv.wait_for("Serving HTTP", Duration::from_secs(20));
    srv
}

fn curl_by_name(proxy: Proxy, size: usize) {
    let w = World::new("curl", proxy);
    let (_, hash) = w.random_file("big.bin", size);
    let _srv = http_server(&w, w.dir.path());
    let got = w.dir.join("got.bin");
    let mut cmd = w.wisp_cmd(Node::Corr, None, ["curl", "-sS", "--max-time", "120", "-o"]);
    cmd.arg(&got).arg("http://bob.wxyz:8080/big.bin");
    let (st, _, err) = run(cmd, Duration::from_secs(150));
    assert!(st.success(), "curl failed: {st}\n{err}");
    assert_eq!(sha256(&got), hash, "downloaded bytes differ");
}

#[test]
fn curl_downloads_100mb_by_name_from_python_http_server() {
    curl_by_name(Proxy::Wisp, 100 << 20);
}

#[test]
fn curl_by_name_through_kamailio() {
    curl_by_name(Proxy::Kamailio, 20 << 20);
}

/// One end of a duplex transfer under socat's EXEC: send a file to stdout
/// while saving stdin to another, then half-close (socat gives the child a
/// socketpair, so closing stdout alone would not end the direction). It
/// ignores SIGTERM: socat signals its child as it exits, which could be
/// before the child has written out the last bytes it read.
const DUPLEX: &str = r#"
import os, signal, socket, sys, threading
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
send, recv = sys.argv[1], sys.argv[2]
def reader():
    with open(recv + ".part", "wb") as f:
        while True:
            b = os.read(0, 65536)
            if not b:
                break
            f.write(b)
    os.rename(recv + ".part", recv)
t = threading.Thread(target=reader)
t.start()
with open(send, "rb") as f:
    while True:
        b = f.read(65536)
        if not b:
            break
        mv = memoryview(b)
        while mv:
            mv = mv[os.write(1, mv):]
try:
    s = socket.socket(fileno=os.dup(1))
    s.shutdown(socket.SHUT_WR)
    s.close()
except OSError:
    os.close(1)
t.join()
"#;

#[test]
fn socat_both_ways_by_name() {
    let w = World::new("socat", Proxy::Wisp);
    let (m_send, m_hash) = w.random_file("mobile-send.bin", 8 << 20);
    let (c_send, c_hash) = w.random_file("corr-send.bin", 8 << 20);
    let m_recv = w.dir.join("mobile-recv.bin");
    let c_recv = w.dir.join("corr-recv.bin");
    let duplex = w.dir.join("duplex.py");
    std::fs::write(&duplex, DUPLEX).unwrap();
    let exec = |send: &std::path::Path, recv: &std::path::Path| {
        format!(
            "EXEC:python3 {} {} {}",
            duplex.display(),
            send.display(),
            recv.display()
        )
    };
    let _srv = Bg::spawn(
        w.wisp_cmd(
            Node::Mobile,
            Some(BOB),
            [
                "socat",
                "-t",
                "60",
                "TCP-LISTEN:7000,reuseaddr",
                &exec(&m_send, &m_recv),
            ],
        ),
        &w.dir,
        "socat-server",
    );
    w.wait_listening(Node::Mobile, 7000);
    let (st, _, err) = run(
        w.wisp_cmd(
            Node::Corr,
            None,
            [
                "socat",
                "-t",
                "60",
                "TCP:bob.wxyz:7000",
                &exec(&c_send, &c_recv),
            ],
        ),
        Duration::from_secs(90),
    );
    assert!(st.success(), "client socat failed: {st}\n{err}");
    // Each receiver renames its file when its direction has ended.
    for p in [&m_recv, &c_recv] {
        for _ in 0..1500 {
            if p.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(sha256(&c_recv), m_hash, "mobile → corr bytes differ");
    assert_eq!(sha256(&m_recv), c_hash, "corr → mobile bytes differ");
}

const ASYNCIO: &str = r#"
import asyncio, hashlib, os, sys

async def serve(port):
    async def handle(reader, writer):
        h = hashlib.sha256()
        while True:
            data = await reader.read(65536)
            if not data:
                break
            h.update(data)
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()
        print("server-hash", h.hexdigest(), flush=True)
    server = await asyncio.start_server(handle, "0.0.0.0", port)
    print("serving", flush=True)
    async with server:
        await server.serve_forever()

async def client(host, port, n):
    reader, writer = await asyncio.open_connection(host, port)
    data = os.urandom(n)
    async def send():
        for i in range(0, n, 65536):
            writer.write(data[i:i + 65536])
            await writer.drain()
        writer.write_eof()
    async def recv():
        got = bytearray()
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            got += chunk
        return bytes(got)
    _, echoed = await asyncio.gather(send(), recv())
    writer.close()
    ok = hashlib.sha256(echoed).hexdigest() == hashlib.sha256(data).hexdigest()
    print("client", "ok" if ok else "MISMATCH", len(echoed), hashlib.sha256(data).hexdigest(), flush=True)
    sys.exit(0 if ok else 1)

if sys.argv[1] == "serve":
    asyncio.run(serve(int(sys.argv[2])))
else:
    asyncio.run(client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"#;

#[test]
fn asyncio_client_and_server_by_name() {
    let w = World::new("asyncio", Proxy::Wisp);
    let script = w.dir.join("echo.py");
    std::fs::write(&script, ASYNCIO).unwrap();
    let script = script.to_str().unwrap().to_string();
    let mut srv = Bg::spawn(
        w.wisp_cmd(
            Node::Mobile,
            Some(BOB),
            ["python3", &script, "serve", "7100"],
        ),
        &w.dir,
        "asyncio-server",
    );
    srv.wait_for("serving", Duration::from_secs(20));
    let (st, out, err) = run(
        w.wisp_cmd(
            Node::Corr,
            None,
            ["python3", &script, "client", "bob.wxyz", "7100", "4000000"],
        ),
        Duration::from_secs(60),
    );
    assert!(st.success(), "asyncio client failed: {st}\n{out}\n{err}");
    assert!(out.contains("client ok 4000000"), "{out}");
    let digest = out.split_whitespace().last().unwrap().to_string();
    srv.wait_for(&format!("server-hash {digest}"), Duration::from_secs(20));
}

#[test]
fn iperf3_by_name_runs_to_completion() {
    let w = World::new("iperf", Proxy::Wisp);
    let mut srv = Bg::spawn(
        w.wisp_cmd(
            Node::Mobile,
            Some(BOB),
            ["iperf3", "-s", "-1", "-p", "5201"],
        ),
        &w.dir,
        "iperf3-server",
    );
    w.wait_listening(Node::Mobile, 5201);
    let (st, out, err) = run(
        w.wisp_cmd(
            Node::Corr,
            None,
            ["iperf3", "-c", "bob.wxyz", "-p", "5201", "-t", "2", "-J"],
        ),
        Duration::from_secs(60),
    );
    assert!(st.success(), "iperf3 client failed: {st}\n{out}\n{err}");
    assert!(out.contains("\"sum_received\""), "{out}");
    let st = srv.wait(Duration::from_secs(20));
    assert!(st.success(), "iperf3 server failed: {st}\n{}", srv.stderr());
}

#[test]
fn programs_without_names_see_no_difference() {
    let w = World::new("plain", Proxy::Wisp);
    let (_, hash) = w.random_file("plain.bin", 1 << 20);
    // A plain server without the library, reached by address.
    let mut cmd = w.lab.exec_cmd(
        Node::Mobile,
        ["python3", "-u", "-m", "http.server", "8081", "--directory"],
    );
    cmd.arg(w.dir.path());
    let mut srv = Bg::spawn(cmd, &w.dir, "plain-server");
    srv.wait_for("Serving HTTP", Duration::from_secs(20));
    let got = w.dir.join("plain-got.bin");
    let url = format!("http://{}:8081/plain.bin", w.lab.mobile_ip);
    let mut cmd = w.wisp_cmd(Node::Corr, None, ["curl", "-sS", "-o"]);
    cmd.arg(&got).arg(&url);
    let (st, _, err) = run(cmd, Duration::from_secs(60));
    assert!(st.success(), "{err}");
    assert_eq!(sha256(&got), hash);
    // Same output with and without the library, and nothing on stderr.
    let py = "import socket\na, b = socket.socketpair()\nfor i in range(1, 1000):\n    a.sendall(b'x' * i)\n    assert b.recv(4096) == b'x' * i\nprint('socketpair ok')";
    for args in [vec!["git", "--version"], vec!["python3", "-c", py]] {
        let (st0, out0, err0) = run(w.lab.exec_cmd(Node::Corr, &args), Duration::from_secs(30));
        let (st1, out1, err1) = run(w.wisp_cmd(Node::Corr, None, &args), Duration::from_secs(30));
        assert!(st0.success() && st1.success(), "{args:?}: {err0} / {err1}");
        assert_eq!(out0, out1, "{args:?}");
        assert_eq!(err1, err0, "{args:?} wrote to stderr under the library");
    }
}

#[test]
fn failures_are_the_errors_programs_expect() {
    let mut w = World::new("fail", Proxy::Wisp);
    // Not in the name map: the real resolver says no.
    let (st, _, err) = run(
        w.wisp_cmd(
            Node::Corr,
            None,
            ["curl", "-sS", "http://unknown.wxyz:8080/"],
        ),
        Duration::from_secs(30),
    );
    assert_eq!(st.code(), Some(6), "{err}");
    assert!(err.contains("resolve"), "{err}");
    // In the map, registered by nobody: the registrar says 404, and the
    // program's connect() fails with ECONNREFUSED, as for a TCP reset.
    let (st, _, err) = run(
        w.wisp_cmd(
            Node::Corr,
            None,
            ["curl", "-sS", "http://nobody.wxyz:8080/"],
        ),
        Duration::from_secs(30),
    );
    assert_eq!(st.code(), Some(7), "{err}");
    let py = "import socket\ntry:\n    socket.create_connection(('nobody.wxyz', 8080), timeout=20)\nexcept ConnectionRefusedError:\n    print('refused')";
    let (st, out, err) = run(
        w.wisp_cmd(Node::Corr, None, ["python3", "-c", py]),
        Duration::from_secs(30),
    );
    assert!(st.success() && out.contains("refused"), "{out}\n{err}");
    assert!(err.contains("404"), "the log says why: {err}");
    // Registrar down: the configured timeout, then a timeout error.
    w.stop_registrar();
    let mut cmd = w.wisp_cmd(Node::Corr, None, ["curl", "-sS", "http://bob.wxyz:8080/"]);
    cmd.env("WISP_CONNECT_TIMEOUT", "2");
    let (st, _, err) = run(cmd, Duration::from_secs(60));
    // curl's "operation timed out" (28); connect() said ETIMEDOUT.
    assert_eq!(st.code(), Some(28), "{err}");
    assert!(
        err.contains("WISP_CONNECT_TIMEOUT"),
        "the log names the setting: {err}"
    );
}

const FORK_DUP: &str = r#"
import hashlib, os, socket, sys

def fetch(path):
    s = socket.create_connection(("bob.wxyz", 8080), timeout=30)
    # Work through a duplicate and close the original: the stream must
    # survive as long as one descriptor refers to it.
    s2 = socket.socket(fileno=os.dup(s.fileno()))
    s2.settimeout(30)
    s.close()
    s2.sendall(("GET /%s HTTP/1.0\r\n\r\n" % path).encode())
    data = b""
    while True:
        chunk = s2.recv(65536)
        if not chunk:
            break
        data += chunk
    s2.close()
    return hashlib.sha256(data.split(b"\r\n\r\n", 1)[1]).hexdigest()

print("parent", fetch(sys.argv[1]), flush=True)
pid = os.fork()
if pid == 0:
    # The child has no SIP thread of its own yet: using a name starts one.
    print("child", fetch(sys.argv[1]), flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

#[test]
fn fork_and_dup_keep_working() {
    let w = World::new("fork", Proxy::Wisp);
    let (_, hash) = w.random_file("small.bin", 300_000);
    let _srv = http_server(&w, w.dir.path());
    let script = w.dir.join("forkdup.py");
    std::fs::write(&script, FORK_DUP).unwrap();
    let (st, out, err) = run(
        w.wisp_cmd(
            Node::Corr,
            None,
            ["python3", script.to_str().unwrap(), "small.bin"],
        ),
        Duration::from_secs(60),
    );
    assert!(st.success(), "{st}\n{out}\n{err}");
    assert!(out.contains(&format!("parent {hash}")), "{out}");
    assert!(out.contains(&format!("child {hash}")), "{out}");
    // Two SIP threads: the parent's and the child's.
    assert_eq!(err.matches("SIP thread up").count(), 2, "{err}");
}
