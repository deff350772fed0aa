//! The delayed lab: `scripts/lab up --rtt MS [--loss PCT] [--rate-mbit N]`,
//! `wisp-netem` relays on every host link (`Lab::up_with`). Real namespaces,
//! root needed. Every lab is a `Lab` value, so it is torn down (relays
//! included) when the test ends, also by a panic.
//!
//! Times are only checked against bounds the relays guarantee (a frame is
//! never early, so a round trip is never under the RTT) and very generous
//! upper ones. The link model itself (due times, buffer, loss) is
//! unit-tested without sockets in `src/netem.rs` (`cargo test -p shim-tests
//! --lib netem`).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use shim_tests::lab::{script, Lab, LabOptions, MoveKind, Node};
use shim_tests::netem::SplitMix64;

const PORT: u16 = 5001;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn lab_with(rtt: Duration, loss: f64, rate_mbit: Option<u32>) -> Lab {
    Lab::up_with(LabOptions {
        rtt,
        loss,
        rate_mbit,
    })
}

/// Time of a TCP handshake from `from` to `to` (one round trip): connected,
/// or refused by the peer's kernel (a RST), both count.
fn handshake(lab: &Lab, from: Node, to: SocketAddr) -> Duration {
    lab.in_node(from, move || {
        let t = Instant::now();
        match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => panic!("connect to {to}: {e}"),
        }
        t.elapsed()
    })
}

/// The shortest of `n` handshakes (the first one also resolves the
/// router's MAC, so it is the longest).
fn min_handshake(lab: &Lab, from: Node, to: impl Into<IpAddr>, port: u16, n: usize) -> Duration {
    let to = SocketAddr::new(to.into(), port);
    let times: Vec<Duration> = (0..n).map(|_| handshake(lab, from, to)).collect();
    let max = *times.iter().max().unwrap();
    assert!(
        max < Duration::from_secs(1),
        "{from:?} -> {to}: {times:?}\n{}",
        lab.status()
    );
    let min = *times.iter().min().unwrap();
    eprintln!("{from:?} -> {to}: shortest handshake {min:?} of {times:?}");
    min
}

/// A listener on [::]:PORT (both families) in the mobile host.
fn listen_mobile(lab: &Lab) -> TcpListener {
    lab.in_node(Node::Mobile, || {
        TcpListener::bind(("::", PORT)).expect("bind in mobile")
    })
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Sends `bytes` from corr to mobile over one TCP connection; returns what
/// arrived and how long it took (connect to end of data).
fn transfer(lab: &Lab, bytes: Vec<u8>) -> (Vec<u8>, Duration) {
    let listener = listen_mobile(lab);
    let receiver = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        got
    });
    let to = SocketAddr::new(lab.mobile_ip.into(), PORT);
    let took = lab.in_node(Node::Corr, move || {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(&bytes).expect("write");
        s.shutdown(Shutdown::Write).unwrap();
        // The receiver closes once it has read everything.
        let _ = s.read(&mut [0u8; 1]);
        t.elapsed()
    });
    (receiver.join().expect("receiver"), took)
}

fn assert_same(got: &[u8], sent: &[u8]) {
    if got != sent {
        let at = got.iter().zip(sent).position(|(a, b)| a != b);
        panic!(
            "received {} bytes of {}, first difference at {at:?}",
            got.len(),
            sent.len()
        );
    }
}

/// A counter of the Tcp line of /proc/net/snmp in the node's namespace.
fn tcp_counter(lab: &Lab, node: Node, name: &'static str) -> u64 {
    let snmp = lab.in_node(node, || {
        std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap()
    });
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

#[test]
fn rtt_holds_between_hosts_and_across_moves() {
    let rtt = ms(40);
    let mut lab = lab_with(rtt, 0.0, None);
    let log = lab.relay_log().unwrap_or_default();
    assert_eq!(
        log.matches(" <-> ").count(),
        6,
        "one relay per host link:\n{log}"
    );
    let _listener = listen_mobile(&lab);

    let t = min_handshake(&lab, Node::Corr, lab.mobile_ip, PORT, 5);
    assert!(t >= rtt, "corr -> mobile {t:?}");
    let t = min_handshake(&lab, Node::Corr, lab.mobile_ip6, PORT, 3);
    assert!(t >= rtt, "corr -> mobile IPv6 {t:?}");
    // The registrar is as far as the correspondent; the router half as far.
    let t = min_handshake(&lab, Node::Mobile, lab.reg_ip, 9, 3);
    assert!(t >= rtt, "mobile -> reg {t:?}");
    let t = min_handshake(&lab, Node::Router, lab.mobile_ip, PORT, 3);
    assert!(t >= rtt / 2, "router -> mobile {t:?}");

    // Moves: the other links are delayed as much.
    let old = lab.mobile_ip;
    let new = lab.move_mobile(MoveKind::BreakBeforeMake);
    assert_ne!(new, old);
    let t = min_handshake(&lab, Node::Corr, new, PORT, 3);
    assert!(t >= rtt, "corr -> mobile after its move {t:?}");
    lab.move_corr();
    let t = min_handshake(&lab, Node::Mobile, lab.corr_ip, 9, 3);
    assert!(t >= rtt, "mobile -> corr after its move {t:?}");
    lab.move_mobile(MoveKind::MakeBeforeBreak(ms(100)));
    let t = min_handshake(&lab, Node::Corr, lab.mobile_ip, PORT, 3);
    assert!(t >= rtt, "corr -> mobile after a make-before-break {t:?}");
}

#[test]
fn twenty_megabytes_arrive_intact_over_a_delayed_path() {
    let lab = lab_with(ms(40), 0.0, None);
    let sent = data(20 << 20, 1);
    let (got, took) = transfer(&lab, sent.clone());
    assert_same(&got, &sent);
    eprintln!("20 MiB over 40 ms RTT: {took:?}");
}

#[test]
fn five_percent_loss_still_delivers_intact() {
    let lab = lab_with(ms(10), 0.05, None);
    let before = tcp_counter(&lab, Node::Corr, "RetransSegs");
    let sent = data(2 << 20, 2);
    let (got, took) = transfer(&lab, sent.clone());
    assert_same(&got, &sent);
    let retrans = tcp_counter(&lab, Node::Corr, "RetransSegs") - before;
    // ~1450 segments, 5 % of them (and of the ACKs) lost: some must have
    // been sent again.
    eprintln!("2 MiB with 5 % loss: {took:?}, {retrans} segments sent again");
    assert!(retrans > 10, "only {retrans} retransmissions");
}

#[test]
fn rate_limit_is_a_bottleneck() {
    let lab = lab_with(Duration::ZERO, 0.0, Some(20));
    let sent = data(4 << 20, 3);
    let (got, took) = transfer(&lab, sent.clone());
    assert_same(&got, &sent);
    eprintln!("4 MiB through 20 Mbit/s: {took:?}");
    // 4 MiB at 20 Mbit/s is 1.68 s of payload alone.
    assert!(took >= ms(1600), "4 MiB through 20 Mbit/s in {took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn relays_end_with_the_lab() {
    let lab = lab_with(ms(4), 0.0, None);
    let id = lab.id.clone();
    let out = Command::new("ip")
        .args(["netns", "pids", &lab.ns_router])
        .output()
        .unwrap();
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 6, "the relays in the router namespace");
    drop(lab);
    let gone = |pid: u32| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Ended; it may wait a moment for init to reap it.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .starts_with('Z'),
        Err(_) => true,
    };
    for pid in pids {
        assert!(gone(pid), "relay {pid} still running");
    }
    for node in Node::ALL {
        let ns = format!("/run/netns/wisp-{id}-{}", node.as_str());
        assert!(!Path::new(&ns).exists(), "{ns} left");
    }
    assert!(!Path::new(&format!("/run/wisp-lab/{id}.netem.log")).exists());
}

#[test]
fn up_without_the_relay_binary_fails_and_leaves_nothing() {
    let id = format!("nx{}", std::process::id());
    let out = Command::new(script())
        .args(["up", "--id", &id, "--rtt", "10"])
        .env("WISP_NETEM", "/nonexistent/wisp-netem")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("/nonexistent/wisp-netem"), "{err}");
    assert!(!Path::new(&format!("/run/netns/wisp-{id}-router")).exists());
    assert!(!Path::new(&format!("/run/wisp-lab/{id}.env")).exists());
}
