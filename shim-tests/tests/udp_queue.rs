//! A UDP sender on the moving host: while the host has no address its
//! datagrams wait in the library's bounded queue instead of failing, go
//! out once it has one, and none arrives twice.

use shim_tests::e2e::{Bg, Proxy, World};
use shim_tests::lab::{MoveKind, Node};
use std::time::Duration;

const RECEIVER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9100))
s.settimeout(3)
print("ready", flush=True)
seen, dups = set(), 0
try:
    while True:
        d, _ = s.recvfrom(100)
        n = int(d)
        if n in seen:
            dups += 1
        seen.add(n)
except socket.timeout:
    pass
print("received", len(seen), "dups", dups, "max", max(seen) if seen else -1, flush=True)
"#;

const SENDER: &str = r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("fred.abcd", 9100))
print("connected", flush=True)
errors = 0
for i in range(800):
    try:
        s.send(b"%d" % i)
    except OSError as e:
        errors += 1
    time.sleep(0.005)
print("sent 800 errors", errors, flush=True)
"#;

/// Datagrams the library may lose per move when the sending host is the one
/// moving: what does not fit its queue (`datagrams::QUEUE`, 64) while the
/// host has no address. 0.5 s offline at one datagram per 5 ms is ~100.
const LOSS_BOUND: usize = 100;

#[test]
fn datagrams_sent_while_offline_wait_and_are_not_duplicated() {
    let w = World::new("udpqueue", Proxy::Wisp);
    let mut rx = Bg::spawn(
        w.wisp_cmd(
            Node::Corr,
            Some("sip:fred@abcd.com"),
            ["python3", "-u", "-c", RECEIVER],
        ),
        &w.dir,
        "udp-receiver",
    );
    rx.wait_for("ready", Duration::from_secs(20));
    let mut tx = Bg::spawn(
        w.wisp_cmd(Node::Mobile, None, ["python3", "-u", "-c", SENDER]),
        &w.dir,
        "udp-sender",
    );
    tx.wait_for("connected", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    let mut mv = Bg::spawn(
        w.lab.move_cmd(
            Node::Mobile,
            None,
            MoveKind::BreakBeforeMakeGap(Duration::from_millis(500)),
        ),
        &w.dir,
        "move",
    );
    let _ = mv.wait(Duration::from_secs(30));
    tx.wait(Duration::from_secs(60));
    rx.wait(Duration::from_secs(60));
    let sent = tx.stdout();
    let got = rx.stdout();
    assert!(
        sent.contains("sent 800 errors 0"),
        "the program saw send errors during the move: {sent}\n{}",
        tx.stderr()
    );
    let fields: Vec<&str> = got.split_whitespace().collect();
    let at = fields
        .iter()
        .position(|f| *f == "received")
        .expect("receiver report");
    let received: usize = fields[at + 1].parse().unwrap();
    let dups: usize = fields[at + 3].parse().unwrap();
    eprintln!("udp queue: received {received} of 800, {dups} duplicates");
    assert_eq!(dups, 0, "{got}");
    assert!(
        800 - received <= LOSS_BOUND,
        "lost {} > {LOSS_BOUND}: {got}\n{}\n{}",
        800 - received,
        tx.stderr(),
        rx.stderr()
    );
}
