//! `wisp status`: real programs under libwisp.so in a lab, asked over
//! their status sockets. Every program and `wisp status` run share one
//! `XDG_RUNTIME_DIR` in the test's directory, so the machine's own
//! `/run/wisp` is never touched; every wait is bounded, and programs and
//! the lab go when the test ends, on a failure too.

use shim_tests::e2e::{libwisp, run, wisp_bin, Bg, Proxy, World};
use shim_tests::lab::{MoveKind, Node};
use shim_tests::TempDir;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The CLI's JSON reader (and the library's writer its tests use).
#[path = "../../preload/src/bin/wisp/json.rs"]
mod json;
#[path = "../../preload/src/status/json.rs"]
#[allow(dead_code)]
mod json_out;

use json::Value;

/// How long anything here may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);

/// An echo server, one thread per connection.
const ECHO: &str = r#"
import socket, sys, threading
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", int(sys.argv[1])))
l.listen(8)
print("serving", flush=True)
def echo(c):
    while True:
        d = c.recv(4096)
        if not d:
            return
        c.sendall(d)
while True:
    c, _ = l.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
"#;

/// Two streams, by two names, kept busy: a ping on each, its echo read
/// back, 20 times a second.
const TWO_STREAMS: &str = r#"
import socket, sys, time
a = socket.create_connection(("bob.wxyz", 7601), timeout=60)
b = socket.create_connection(("fred", 7602), timeout=60)
print("connected", flush=True)
ping_forever((a, b))
"#;

/// Python: a ping on each socket, its echo read back, 20 times a second.
const PING_FOREVER: &str = r#"
import sys, time
def ping_forever(socks):
  n = 0
  while True:
    for s in socks:
        s.sendall(b"ping\n")
        got = b""
        while len(got) < 5:
            d = s.recv(5 - len(got))
            if not d:
                print("eof", flush=True)
                sys.exit(1)
            got += d
    n += 1
    print("progress", n, flush=True)
    time.sleep(0.05)
"#;

/// A Python program: [`PING_FOREVER`] and then `body`.
fn with_ping(body: &str) -> String {
    format!("{PING_FOREVER}\n{body}")
}

/// The runtime directory every process of a test shares.
fn runtime_dir(dir: &TempDir) -> PathBuf {
    let rt = dir.join("rt");
    std::fs::create_dir_all(&rt).unwrap();
    rt
}

/// `wisp status ARGS` in `node`, with the test's runtime directory.
fn status(w: &World, rt: &Path, args: &[&str]) -> String {
    let mut cmd = w.lab.exec_cmd(Node::Mobile, [wisp_bin().as_os_str()]);
    cmd.arg("status").args(args).env("XDG_RUNTIME_DIR", rt);
    let (st, out, err) = run(cmd, WAIT);
    assert!(st.success(), "wisp status {args:?}: {st}\n{out}\n{err}");
    out
}

fn status_json(w: &World, rt: &Path) -> Value {
    let out = status(w, rt, &["--json"]);
    json::parse(&out).unwrap_or_else(|e| panic!("wisp status --json: {e}\n{out}"))
}

/// The entry of process `pid` in a `wisp status --json` document.
fn process(doc: &Value, pid: u32) -> Option<&Value> {
    doc.get("processes")?
        .array()
        .iter()
        .find(|p| p.get("pid").and_then(Value::u64) == Some(u64::from(pid)))
}

fn streams(p: &Value) -> &[Value] {
    p.get("streams").map(Value::array).unwrap_or(&[])
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::str).unwrap_or("")
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k)
        .and_then(Value::u64)
        .unwrap_or_else(|| panic!("{k} is not a count in {v:?}"))
}

/// The IP of an `ip:port` string.
fn ip(addr: &str) -> String {
    addr.parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_default()
}

/// Ask until `ok` holds for the document; panics with the last one after
/// [`WAIT`].
fn wait_status(w: &World, rt: &Path, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + WAIT;
    loop {
        let doc = status_json(w, rt);
        if ok(&doc) {
            return doc;
        }
        if Instant::now() > until {
            panic!("{what}: not seen in {WAIT:?}; last wisp status --json:\n{doc:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pid(bg: &Bg) -> u32 {
    bg.child.id()
}

fn echo_server(w: &World, name: &str, port: u16, tag: &str, rt: &Path) -> Bg {
    let mut cmd = w.wisp_cmd(
        Node::Corr,
        Some(name),
        ["python3", "-u", "-c", ECHO, &port.to_string()],
    );
    cmd.env("XDG_RUNTIME_DIR", rt);
    let mut bg = Bg::spawn(cmd, &w.dir, tag);
    bg.wait_for("serving", WAIT);
    bg
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A program with two streams to two names is listed with both (names,
/// addresses, state); the socket and its directory are private; the text
/// listing names the peers; `--watch --count 2` draws twice; after a move
/// of the mobile host each stream shows the move, its stall and its new
/// address, on both ends.
#[test]
fn lists_streams_and_follows_a_move() {
    let mut w = World::new("status", Proxy::Wisp);
    let rt = runtime_dir(&w.dir);
    let bob = echo_server(&w, "sip:bob@wxyz.com", 7601, "bob", &rt);
    let fred = echo_server(&w, "sip:fred@abcd.com", 7602, "fred", &rt);
    let mut cmd = w.wisp_cmd(
        Node::Mobile,
        None,
        ["python3", "-u", "-c", with_ping(TWO_STREAMS).as_str()],
    );
    cmd.env("XDG_RUNTIME_DIR", &rt);
    let mut client = Bg::spawn(cmd, &w.dir, "client");
    client.wait_for("connected", WAIT);
    let me = pid(&client);

    let doc = wait_status(&w, &rt, "the client with two streams", |d| {
        process(d, me).is_some_and(|p| streams(p).len() == 2)
    });
    let p = process(&doc, me).unwrap();
    assert_eq!(s(p, "program"), "python3", "{p:?}");
    assert!(p.get("name").is_some_and(Value::is_null), "{p:?}");
    let corr = w.lab.corr_ip.to_string();
    let mobile = w.lab.mobile_ip.to_string();
    let mut names: Vec<&str> = streams(p).iter().map(|st| s(st, "peer_name")).collect();
    names.sort();
    assert_eq!(names, ["bob.wxyz", "fred"], "{p:?}");
    for st in streams(p) {
        let (uri, port) = match s(st, "peer_name") {
            "bob.wxyz" => ("sip:bob@wxyz.com", 7601),
            _ => ("sip:fred@abcd.com", 7602),
        };
        assert_eq!(s(st, "peer_uri"), uri, "{st:?}");
        assert_eq!(s(st, "peer"), format!("{corr}:{port}"), "{st:?}");
        assert_eq!(ip(s(st, "local")), mobile, "{st:?}");
        assert_eq!(s(st, "state"), "up", "{st:?}");
        assert_eq!(s(st, "proto"), "tcp", "{st:?}");
        assert_eq!(s(st, "direction"), "out", "{st:?}");
        assert_eq!(st.get("mobile").and_then(Value::bool), Some(true));
        assert_eq!(n(st, "moves"), 0, "{st:?}");
        assert!(
            st.get("last_stall_ms").is_some_and(Value::is_null),
            "{st:?}"
        );
        assert!(n(st, "ring_capacity") > 0, "{st:?}");
        assert!(n(st, "tx_bytes") > 0 && n(st, "rx_bytes") > 0, "{st:?}");
    }

    // Private: the directory 0700, the socket 0600.
    let dir = rt.join("wisp");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(format!("{me}.sock"))), 0o600);

    let text = status(&w, &rt, &[]);
    assert!(
        text.contains(&format!("pid {me}  python3"))
            && text.contains("bob.wxyz <sip:bob@wxyz.com>"),
        "{text}"
    );
    let watched = status(&w, &rt, &["--watch", "0.2", "--count", "2"]);
    assert_eq!(
        watched.matches("wisp status, ").count(),
        2,
        "two frames: {watched}"
    );
    assert_eq!(watched.matches("\x1b[2J").count(), 2, "{watched}");
    assert_eq!(
        watched.matches("bob.wxyz <").count(),
        2,
        "the stream in each frame: {watched}"
    );

    // The mobile host moves: both streams follow, and say so.
    let before = client.stdout().matches("progress").count();
    let new_ip = w.lab.move_mobile(MoveKind::BreakBeforeMake).to_string();
    let doc = wait_status(&w, &rt, "both streams moved once", |d| {
        process(d, me).is_some_and(|p| {
            streams(p).len() == 2
                && streams(p)
                    .iter()
                    .all(|st| n(st, "moves") == 1 && s(st, "state") == "up")
        })
    });
    for st in streams(process(&doc, me).unwrap()) {
        let stall = st.get("last_stall_ms").and_then(Value::f64);
        assert!(stall.is_some_and(|ms| ms >= 0.0), "{st:?}");
        assert!(
            st.get("resent_last").and_then(Value::u64).is_some(),
            "{st:?}"
        );
        assert_eq!(ip(s(st, "local")), new_ip, "{st:?}");
        assert_eq!(ip(s(st, "peer")), corr, "{st:?}");
    }
    eprintln!("after the move:\n{}", status(&w, &rt, &[]));
    // The correspondents saw the same move from the other end.
    for (bg, name) in [(&bob, "bob"), (&fred, "fred")] {
        let p = process(&doc, pid(bg)).unwrap_or_else(|| panic!("{name} not listed: {doc:?}"));
        assert_eq!(streams(p).len(), 1, "{name}: {p:?}");
        let st = &streams(p)[0];
        assert_eq!(s(st, "direction"), "in", "{st:?}");
        assert_eq!(n(st, "moves"), 1, "{st:?}");
        assert_eq!(ip(s(st, "peer")), new_ip, "{st:?}");
    }
    // And the streams still carry bytes.
    let until = Instant::now() + WAIT;
    while client.stdout().matches("progress").count() < before + 10 {
        assert!(
            Instant::now() < until,
            "no progress after the move:\n{}",
            client.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A connection by name that forks: the child's stream gets the child its
/// own socket; a process killed with SIGKILL is not listed and its socket
/// goes with the next `wisp status`; a process that exits removes its own.
#[test]
fn processes_come_and_go() {
    let w = World::new("status-gone", Proxy::Wisp);
    let rt = runtime_dir(&w.dir);
    let bob = echo_server(&w, "sip:bob@wxyz.com", 7601, "bob", &rt);
    let forker = r#"
import os, socket, sys, time
a = socket.create_connection(("bob.wxyz", 7601), timeout=30)
child = os.fork()
if child == 0:
    b = socket.create_connection(("bob", 7601), timeout=30)
    time.sleep(300)
    os._exit(0)
print("child", child, flush=True)
time.sleep(float(sys.argv[1]))
"#;
    let mut cmd = w.wisp_cmd(Node::Mobile, None, ["python3", "-u", "-c", forker, "300"]);
    cmd.env("XDG_RUNTIME_DIR", &rt);
    let mut parent = Bg::spawn(cmd, &w.dir, "forker");
    parent.wait_for("child ", WAIT);
    let child: u32 = parent
        .stdout()
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("the child's pid");
    let me = pid(&parent);
    let doc = wait_status(&w, &rt, "parent and child", |d| {
        process(d, me).is_some() && process(d, child).is_some_and(|p| !streams(p).is_empty())
    });
    let dir = rt.join("wisp");
    assert!(dir.join(format!("{child}.sock")).exists());
    let pp = process(&doc, me).unwrap();
    assert!(
        streams(pp)
            .iter()
            .any(|st| s(st, "peer_name") == "bob.wxyz"),
        "{pp:?}"
    );
    let cp = process(&doc, child).unwrap();
    assert!(
        streams(cp).iter().any(|st| s(st, "peer_name") == "bob"),
        "the child's own stream: {cp:?}"
    );

    // SIGKILL: nothing runs at exit, so the socket stays until asked.
    // SAFETY: a process of this test.
    assert_eq!(unsafe { libc::kill(child as i32, libc::SIGKILL) }, 0);
    let sock = dir.join(format!("{child}.sock"));
    let until = Instant::now() + WAIT;
    while std::path::Path::new(&format!("/proc/{child}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|s| s.contains(") Z"))
    {
        assert!(Instant::now() < until, "child {child} still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
    let doc = status_json(&w, &rt);
    assert!(process(&doc, child).is_none(), "{doc:?}");
    assert!(process(&doc, me).is_some(), "the parent stays: {doc:?}");
    assert!(!sock.exists(), "{} left behind", sock.display());

    parent.child.kill().unwrap();
    parent.child.wait().unwrap();
    let doc = status_json(&w, &rt);
    assert!(process(&doc, me).is_none(), "{doc:?}");
    assert!(!dir.join(format!("{me}.sock")).exists());

    // A program that ends on its own removes its socket itself.
    let quick = r#"
import socket, time
a = socket.create_connection(("bob.wxyz", 7601), timeout=30)
a.sendall(b"x"); a.recv(1)
time.sleep(1)
print("done", flush=True)
"#;
    let mut cmd = w.wisp_cmd(Node::Mobile, None, ["python3", "-u", "-c", quick]);
    cmd.env("XDG_RUNTIME_DIR", &rt);
    let mut q = Bg::spawn(cmd, &w.dir, "quick");
    let qpid = pid(&q);
    let st = q.wait(WAIT);
    assert!(st.success(), "{}", q.stderr());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !left.contains(&format!("{qpid}.sock")),
        "an exiting program keeps its socket: {left:?}"
    );
    // Only the server is left.
    assert_eq!(left, [format!("{}.sock", pid(&bob))], "{left:?}");
}

/// A program that never uses a wisp name makes no socket, no directory
/// and no thread of ours.
#[test]
fn no_wisp_name_no_socket() {
    let dir = TempDir::new("status-none");
    let rt = runtime_dir(&dir);
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, shim_tests::e2e::HOSTS).unwrap();
    let plain = r#"
import os, socket
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
c = socket.create_connection(l.getsockname()); s, _ = l.accept()
c.sendall(b"x"); assert s.recv(1) == b"x"
socket.getaddrinfo("localhost", 80)
print("threads", sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")), flush=True)
"#;
    let out = Command::new("python3")
        .args(["-u", "-c", plain])
        .env("LD_PRELOAD", libwisp())
        .env("WISP_HOSTS", &hosts)
        .env("XDG_RUNTIME_DIR", &rt)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("threads ['python3']"), "{stdout}");
    let made: Vec<_> = std::fs::read_dir(&rt).unwrap().flatten().collect();
    assert!(made.is_empty(), "{made:?}");
}

/// Python's subprocess starts children with vfork, and the child closes
/// every descriptor above 2 (close_range) in the parent's memory before
/// exec: the parent's streams must survive that, listed and still moving.
#[test]
fn a_vfork_child_closing_descriptors_leaves_the_parents_streams() {
    const SPAWNS: &str = r#"
import socket, subprocess, sys, time
a = socket.create_connection(("bob.wxyz", 7603), timeout=60)
for _ in range(3):
    subprocess.run(["true"], check=True)
print("spawned", flush=True)
ping_forever((a,))
"#;
    let mut w = World::new("stvfork", Proxy::Wisp);
    let rt = runtime_dir(&w.dir);
    let _bob = echo_server(&w, "sip:bob@wxyz.com", 7603, "bob", &rt);
    let mut cmd = w.wisp_cmd(
        Node::Mobile,
        None,
        ["python3", "-u", "-c", with_ping(SPAWNS).as_str()],
    );
    cmd.env("XDG_RUNTIME_DIR", &rt);
    let mut client = Bg::spawn(cmd, &w.dir, "client");
    client.wait_for("spawned", WAIT);
    let me = pid(&client);
    wait_status(&w, &rt, "the stream after subprocess.run", |d| {
        process(d, me).is_some_and(|p| streams(p).len() == 1)
    });
    w.lab.move_mobile(MoveKind::BreakBeforeMake);
    wait_status(&w, &rt, "the stream moved after subprocess.run", |d| {
        process(d, me).is_some_and(|p| streams(p).len() == 1 && n(&streams(p)[0], "moves") == 1)
    });
    let before = client.stdout().matches("progress").count();
    let until = Instant::now() + WAIT;
    while client.stdout().matches("progress").count() < before + 5 {
        assert!(Instant::now() < until, "no progress after the move");
        std::thread::sleep(Duration::from_millis(50));
    }
}
