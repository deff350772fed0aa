//! WISP_MOVE_TIMEOUT: when no move can complete in time, the program sees
//! ETIMEDOUT, never a hang.

use shim_tests::e2e::{Bg, Proxy, World};
use shim_tests::lab::{MoveKind, Node};
use std::time::Duration;

const BLOCKED_READER: &str = r#"
import socket, sys
s = socket.create_connection(("fred.abcd", 7400), timeout=30)
s.settimeout(None)
s.sendall(b"hello")
print("connected", flush=True)
try:
    data = s.recv(100)
    print("read", len(data), flush=True)
except OSError as e:
    print("error", e.errno, type(e).__name__, flush=True)
"#;

/// The mobile host goes offline for longer than WISP_MOVE_TIMEOUT: no move
/// can complete, and the program blocked in recv() gets ETIMEDOUT then
/// (not before the move timeout, and not never).
#[test]
fn a_move_that_cannot_complete_ends_in_etimedout() {
    let w = World::new("movetimeout", Proxy::Wisp);
    // A quiet server on corr that reads and never answers.
    let server = "import socket\nl = socket.socket()\nl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\nl.bind(('0.0.0.0', 7400))\nl.listen(1)\nprint('serving', flush=True)\nc, _ = l.accept()\nimport time\ntime.sleep(60)\n";
    let mut srv = Bg::spawn(
        w.wisp_cmd(
            Node::Corr,
            Some("sip:fred@abcd.com"),
            ["python3", "-u", "-c", server],
        ),
        &w.dir,
        "quiet-server",
    );
    srv.wait_for("serving", Duration::from_secs(20));
    let mut cmd = w.wisp_cmd(Node::Mobile, None, ["python3", "-u", "-c", BLOCKED_READER]);
    cmd.env("WISP_MOVE_TIMEOUT", "2");
    let mut reader = Bg::spawn(cmd, &w.dir, "blocked-reader");
    reader.wait_for("connected", Duration::from_secs(20));
    // Offline for 8 s: the old address goes at once, the new one comes late.
    let mut mover = Bg::spawn(
        w.lab.move_cmd(
            Node::Mobile,
            None,
            MoveKind::BreakBeforeMakeGap(Duration::from_secs(8)),
        ),
        &w.dir,
        "move",
    );
    let st = reader.wait(Duration::from_secs(60));
    let _ = mover.wait(Duration::from_secs(30));
    assert!(st.success(), "{}", reader.stderr());
    assert!(
        reader.stdout().contains("error 110 TimeoutError"),
        "the blocked recv() should end in ETIMEDOUT: {}\n{}",
        reader.stdout(),
        reader.stderr()
    );
    assert!(
        reader.stderr().contains("WISP_MOVE_TIMEOUT"),
        "{}",
        reader.stderr()
    );
}

/// The side that did not move is bounded too: its peer goes offline and
/// never comes back, and the correspondent's program, blocked in recv()
/// on an idle stream, gets ETIMEDOUT after about WISP_MOVE_TIMEOUT (plus
/// three keepalive probes), not never.
#[test]
fn the_side_that_did_not_move_times_out_too() {
    let w = World::new("stayertimeout", Proxy::Wisp);
    let server = r#"
import socket
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 7401))
l.listen(1)
print("serving", flush=True)
c, _ = l.accept()
print("hello", c.recv(5), flush=True)
try:
    print("read", len(c.recv(100)), flush=True)
except OSError as e:
    print("error", e.errno, type(e).__name__, flush=True)
"#;
    let mut cmd = w.wisp_cmd(
        Node::Corr,
        Some("sip:fred@abcd.com"),
        ["python3", "-u", "-c", server],
    );
    cmd.env("WISP_MOVE_TIMEOUT", "2");
    let mut srv = Bg::spawn(cmd, &w.dir, "idle-server");
    srv.wait_for("serving", Duration::from_secs(20));
    let client = "import socket, time\ns = socket.create_connection(('fred.abcd', 7401), timeout=30)\ns.sendall(b'hello')\nprint('connected', flush=True)\ntime.sleep(120)\n";
    let mut cli = Bg::spawn(
        w.wisp_cmd(Node::Mobile, None, ["python3", "-u", "-c", client]),
        &w.dir,
        "client",
    );
    cli.wait_for("connected", Duration::from_secs(20));
    srv.wait_for("hello", Duration::from_secs(20));
    // The mobile host goes offline and stays away past the test.
    let _mover = Bg::spawn(
        w.lab.move_cmd(
            Node::Mobile,
            None,
            MoveKind::BreakBeforeMakeGap(Duration::from_secs(120)),
        ),
        &w.dir,
        "move",
    );
    let st = srv.wait(Duration::from_secs(60));
    assert!(st.success(), "{}", srv.stderr());
    assert!(
        srv.stdout().contains("error 110 TimeoutError"),
        "the idle correspondent's recv() should end in ETIMEDOUT: {}\n{}",
        srv.stdout(),
        srv.stderr()
    );
}
