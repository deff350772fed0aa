//! Exact moves under the traffic shapes real programs make: many
//! request/response streams, HTTP keep-alive, keystrokes, a burst after an
//! idle stretch, half-closed streams, both hosts moving, moves in quick
//! succession. Every test is exact: each side reads every byte the other
//! wrote, in order, once, checked by content (sequence-numbered requests,
//! hashed bursts, numbered keystrokes, numbered HTTP bodies).
//!
//! Nothing waits without a bound. A stream that stops making progress
//! fails its test with what each program saw (for request/response: which
//! streams stalled, the request they wait for, the bytes they read, the
//! server's view of the same connection), the moves made, the library
//! logs' move lines and `stream closed` lines (see `shim_tests::moves`).
//! The Python programs are in `shim-tests/py/`.
//!
//! Moves are break-before-make, as `scripts/lab move` makes them by
//! default. Run the tests one at a time (`--test-threads=1`).

use shim_tests::e2e::{Bg, Proxy};
use shim_tests::lab::{MoveKind, Node};
use shim_tests::moves::{field, line_with, progress, tails, Mob, BOB, FINISH, FRED};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BBM: MoveKind = MoveKind::BreakBeforeMake;

/// How long every request/response stream gets to make its round trips
/// after a move (a move should cost well under a second).
const RR_STALL: Duration = Duration::from_secs(15);

/// Round trips each stream must complete before a step counts as done.
const RR_STEP: u64 = 3;

// ------------------------------------------------------------ rr fixture

/// One run of py/rr.py: an asyncio echo server and a client with `n`
/// request/response streams to it.
struct Rr {
    srv: Bg,
    cli: Bg,
    stop: PathBuf,
    n: usize,
}

impl Rr {
    /// The server on `server_on` under `server_name`, the client on
    /// `client_on` dialling `host`.
    fn start(
        m: &mut Mob,
        (server_on, server_name): (Node, &str),
        (client_on, host): (Node, &str),
        port: u16,
        n: usize,
    ) -> Rr {
        let port = port.to_string();
        let mut srv = m.python(
            server_on,
            Some(server_name),
            "rr-server",
            "rr.py",
            &["serve", &port],
            &[],
        );
        srv.wait_for("listening", Duration::from_secs(20));
        let stop = m.w.dir.join("rr.stop");
        let streams = n.to_string();
        let mut cli = m.python(
            client_on,
            None,
            "rr-client",
            "rr.py",
            &["client", host, &port, &streams, stop.to_str().unwrap()],
            &[],
        );
        cli.wait_for("connected ", Duration::from_secs(60));
        let want = format!("connected {n}");
        m.check(
            line_with(&cli.stdout(), "connected ") == Some(want.as_str()),
            format_args!("not every stream connected\n{}", tails(&cli)),
        );
        Rr { srv, cli, stop, n }
    }

    /// Round trips per stream, from the client's last complete `counts`
    /// line.
    fn counts(&self) -> Vec<u64> {
        let out = self.cli.stdout();
        out.lines()
            .rev()
            .filter_map(|l| l.strip_prefix("counts "))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect()
            })
            .find(|v: &Vec<u64>| v.len() == self.n)
            .unwrap_or_else(|| vec![0; self.n])
    }

    /// Waits until every stream made [`RR_STEP`] more round trips; fails,
    /// with a diagnosis of the streams that did not, after [`RR_STALL`].
    fn wait_all(&mut self, m: &Mob, when: &str) {
        let base = self.counts();
        let until = Instant::now() + RR_STALL;
        loop {
            let now = self.counts();
            let behind: Vec<usize> = (0..self.n)
                .filter(|&i| now[i] < base[i] + RR_STEP)
                .collect();
            if behind.is_empty() {
                return;
            }
            if let Ok(Some(st)) = self.cli.child.try_wait() {
                m.fail(format_args!(
                    "{when}: the client exited ({st})\n{}",
                    tails(&self.cli)
                ));
            }
            if Instant::now() > until {
                let stuck: Vec<String> = behind
                    .iter()
                    .map(|&i| format!("{i}:{}->{}", base[i], now[i]))
                    .collect();
                let head = format!(
                    "{when}: {} of {} streams made fewer than {RR_STEP} round trips in \
                     {RR_STALL:?} (stream:trips before->now): {}",
                    behind.len(),
                    self.n,
                    stuck.join(" ")
                );
                self.diagnose(m, &head, &behind);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails with every view of the `stuck` streams: the server's (its
    /// open connections, on SIGUSR1), both libraries' (`wisp status`:
    /// state, moves, bytes counted), then the client's once stopped (the
    /// request each waits for, the bytes it read).
    fn diagnose(&mut self, m: &Mob, head: &str, stuck: &[usize]) -> ! {
        const SHOWN: usize = 8;
        let shown = &stuck[..stuck.len().min(SHOWN)];
        // The libraries first: a signal to the server wakes its event loop.
        let cli_fds: Vec<u64> = line_with(&self.cli.stdout(), "fds ")
            .map(|l| {
                l[4..]
                    .split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let pick: Vec<u64> = shown
            .iter()
            .filter_map(|&i| cli_fds.get(i).copied())
            .collect();
        let cli_lib = shim_tests::moves::lib_streams(self.cli.child.id(), &pick);
        let ids: Vec<&str> = cli_lib
            .lines()
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("id=")))
            .collect();
        let srv_lib: String = shim_tests::moves::lib_streams(self.srv.child.id(), &[])
            .lines()
            .filter(|l| ids.iter().any(|id| l.contains(&format!("id={id}"))))
            .map(|l| format!("{l}\n"))
            .collect();
        let before = self.counts();
        self.srv.signal("USR1");
        let until = Instant::now() + Duration::from_secs(3);
        while !self.srv.stdout().contains("dump done") && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_secs(1));
        let after = self.counts();
        let woken = stuck.iter().filter(|&&i| after[i] > before[i]).count();
        std::fs::write(&self.stop, b"").unwrap();
        let st = m.try_wait_exit(&mut self.cli, Duration::from_secs(15));
        let cli = self.cli.stdout();
        let srv = self.srv.stdout();
        let about = |text: &str, i: usize| -> Vec<String> {
            text.lines()
                .filter(|l| {
                    (l.starts_with("hung ")
                        || l.starts_with("error ")
                        || l.starts_with("open ")
                        || l.starts_with("closed "))
                        && l.split_whitespace().any(|w| w == format!("stream={i}"))
                })
                .map(str::to_string)
                .collect()
        };
        let mut s = format!("{head}\n");
        for &i in shown {
            s += &format!("  stream {i}:\n");
            for l in about(&cli, i) {
                s += &format!("    client: {l}\n");
            }
            for l in about(&srv, i) {
                s += &format!("    server: {l}\n");
            }
        }
        if stuck.len() > SHOWN {
            s += &format!("  ({} more stuck streams not shown)\n", stuck.len() - SHOWN);
        }
        s += &format!(
            "the client's library on those streams (wisp status, before the stop):\n{cli_lib}\n\
             the server's library on them (same ids):\n{srv_lib}\n\
             {woken} of the {} stuck streams made round trips in the second after the server \
             got a SIGUSR1 (which wakes its event loop)\n\
             client: {} ({})\n",
            stuck.len(),
            line_with(&cli, "result ").unwrap_or("(no result line)"),
            match st {
                Some(st) => format!("exited {st}"),
                None => "still running 15 s after the stop".to_string(),
            }
        );
        m.fail(s)
    }

    /// Stops the client and checks the run: every stream closed after its
    /// last round trip, each echo exact (the client compares every echo
    /// with its request), and the server echoed exactly what each stream
    /// sent. Returns the round trips per stream.
    fn finish(mut self, m: &Mob) -> Vec<u64> {
        std::fs::write(&self.stop, b"").unwrap();
        let st = m.wait_exit(&mut self.cli, FINISH);
        let out = self.cli.stdout();
        let result = line_with(&out, "result ").unwrap_or("(no result line)");
        if !(st.success() && result.ends_with(" OK")) {
            let stuck: Vec<usize> = out
                .lines()
                .filter(|l| l.starts_with("hung ") || l.starts_with("error "))
                .filter_map(|l| field(l, "stream"))
                .map(|i| i as usize)
                .collect();
            let head = format!("the client failed ({st}): {result}");
            self.diagnose(m, &head, &stuck);
        }
        let trips: Vec<u64> = (0..self.n)
            .map(|i| {
                out.lines()
                    .find(|l| l.starts_with(&format!("stream {i} ")))
                    .and_then(|l| field(l, "trips"))
                    .unwrap_or(0)
            })
            .collect();
        // The server closes each connection on the client's FIN.
        let until = Instant::now() + Duration::from_secs(10);
        let closed = |srv: &Bg| srv.stdout().matches("closed stream=").count();
        while closed(&self.srv) < self.n && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let srv = self.srv.stdout();
        for (i, t) in trips.iter().enumerate() {
            let line = srv
                .lines()
                .find(|l| l.starts_with(&format!("closed stream={i} ")));
            let counts = line.map(|l| (field(l, "rx"), field(l, "tx")));
            m.check(
                counts == Some((Some(16 * t), Some(16 * t))),
                format_args!(
                    "stream {i}: the client made {t} round trips ({} bytes each way); \
                     the server says {line:?}\n{}",
                    16 * t,
                    tails(&self.srv)
                ),
            );
        }
        let (min, max) = (trips.iter().min(), trips.iter().max());
        eprintln!(
            "round trips per stream ({} streams, min {min:?}, max {max:?}): {trips:?}",
            self.n
        );
        trips
    }
}

// ------------------------------------------------------------ 1: rr, 100 streams

/// 100 asyncio streams of 16-byte requests echoed by an asyncio server,
/// 50 ms apart, while the mobile host moves twice: every stream makes
/// round trips after each move, every echo is exactly its request, and
/// the server echoed exactly what each stream sent.
fn rr_100_streams(tag: &str, server: (Node, &str), client: (Node, &str)) {
    const STREAMS: usize = 100;
    let mut m = Mob::new(tag, Proxy::Wisp);
    m.timeline_lines = 60;
    let mut rr = Rr::start(&mut m, server, client, 7500, STREAMS);
    rr.wait_all(&m, "before the first move");
    for i in 1..=2 {
        std::thread::sleep(Duration::from_millis(500));
        m.move_mobile(BBM);
        rr.wait_all(&m, &format!("after move {i} of 2"));
    }
    rr.finish(&m);
    eprintln!("{}", m.summary());
}

#[test]
fn rr_100_streams_server_on_the_moving_host() {
    rr_100_streams("xrrs", (Node::Mobile, BOB), (Node::Corr, "bob.wxyz"));
}

#[test]
fn rr_100_streams_client_on_the_moving_host() {
    rr_100_streams("xrrc", (Node::Corr, FRED), (Node::Mobile, "fred.abcd"));
}

// ------------------------------------------------------------ 6: both, quick succession

/// 10 request/response streams while the mobile host and the
/// correspondent move at the same moment, twice.
#[test]
fn rr_10_streams_both_hosts_moving() {
    let mut m = Mob::new("xrrboth", Proxy::Wisp);
    let mut rr = Rr::start(
        &mut m,
        (Node::Mobile, BOB),
        (Node::Corr, "bob.wxyz"),
        7510,
        10,
    );
    rr.wait_all(&m, "before the moves");
    for round in 1..=2 {
        std::thread::sleep(Duration::from_millis(500));
        m.move_both();
        rr.wait_all(&m, &format!("after both hosts moved (round {round} of 2)"));
    }
    rr.finish(&m);
    eprintln!("{}", m.summary());
}

/// 10 request/response streams while the mobile host moves twice in
/// quick succession (the second move starts 50 ms after the first one's
/// new address is up, so the streams' first move is still under way),
/// twice.
#[test]
fn rr_10_streams_moves_50ms_apart() {
    let mut m = Mob::new("xrrquick", Proxy::Wisp);
    let mut rr = Rr::start(
        &mut m,
        (Node::Mobile, BOB),
        (Node::Corr, "bob.wxyz"),
        7520,
        10,
    );
    rr.wait_all(&m, "before the moves");
    for round in 1..=2 {
        std::thread::sleep(Duration::from_millis(500));
        m.move_mobile(BBM);
        std::thread::sleep(Duration::from_millis(50));
        m.move_mobile(BBM);
        rr.wait_all(
            &m,
            &format!("after two moves 50 ms apart (round {round} of 2)"),
        );
    }
    rr.finish(&m);
    eprintln!("{}", m.summary());
}

// ------------------------------------------------------------ shared

/// Waits for a program's `progress rx=` to grow by `step` past what it is
/// now.
fn wait_rx(m: &Mob, what: &str, prog: &mut Bg, other: &mut Bg, step: u64) -> u64 {
    let out = prog.out.clone();
    let target = progress(&out).0 + step;
    m.wait_growth(what, &mut [prog, other], target, || progress(&out).0)
}

/// Waits for a program to exit and returns its `result ` line; fails
/// unless it exited 0 with a line ending in OK.
fn result_ok(m: &Mob, p: &mut Bg) -> String {
    let st = m.wait_exit(p, FINISH);
    let out = p.stdout();
    let line = line_with(&out, "result ").unwrap_or("(no result line)");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error ")).collect();
    m.check(
        st.success() && line.ends_with(" OK"),
        format_args!(
            "{}: {line} ({st})\n{}\n{}",
            p.name,
            errors.join("\n"),
            tails(p)
        ),
    );
    line.to_string()
}

// ------------------------------------------------------------ 2: HTTP keep-alive

/// python's http.client sends 1000 GETs, 5 ms apart, on ONE keep-alive
/// connection to python's http.server (HTTP/1.1) on the mobile host,
/// which moves three times (at 25 %, 50 % and 75 % of the answers): every
/// body is exactly the one asked for, and the server saw one connection.
#[test]
fn http_keepalive_1000_gets_on_one_connection_across_three_moves() {
    const N: u64 = 1000;
    let mut m = Mob::new("xhttp", Proxy::Wisp);
    let mut srv = m.python(
        Node::Mobile,
        Some(BOB),
        "http-server",
        "httpka.py",
        &["serve", "7530"],
        &[],
    );
    srv.wait_for("listening", Duration::from_secs(20));
    let n = N.to_string();
    let mut cli = m.python(
        Node::Corr,
        None,
        "http-client",
        "httpka.py",
        &["client", "bob.wxyz", "7530", &n, "5"],
        &[],
    );
    let out = cli.out.clone();
    for (i, pct) in [25, 50, 75].into_iter().enumerate() {
        m.wait_growth(
            &format!("answers before move {} (to {pct} %)", i + 1),
            &mut [&mut cli, &mut srv],
            N * pct / 100,
            || progress(&out).0,
        );
        m.move_mobile(BBM);
    }
    m.wait_growth(
        "answers after the last move",
        &mut [&mut cli, &mut srv],
        N,
        || progress(&out).0,
    );
    result_ok(&m, &mut cli);
    let conns = srv.stdout().matches("connection ").count();
    m.check(
        conns == 1,
        format_args!(
            "the server saw {conns} connections, not one\n{}",
            tails(&srv)
        ),
    );
    eprintln!("{}", m.summary());
}

// ------------------------------------------------------------ 3: keystrokes

/// An ssh-like session: one keystroke (2 to 5 bytes) every 100 ms from
/// the correspondent to an echo server on the mobile host, echoed back,
/// while the mobile host, the correspondent, the mobile host and the
/// correspondent move in turn: the echo is exactly what was typed.
#[test]
fn keystrokes_echo_across_moves_of_either_host() {
    let mut m = Mob::new("xkeys", Proxy::Wisp);
    let mut srv = m.python(
        Node::Mobile,
        Some(BOB),
        "echo-server",
        "rr.py",
        &["serve", "7540"],
        &[],
    );
    srv.wait_for("listening", Duration::from_secs(20));
    let stop = m.w.dir.join("keys.stop");
    let mut cli = m.python(
        Node::Corr,
        None,
        "keys",
        "keys.py",
        &["bob.wxyz", "7540", stop.to_str().unwrap()],
        &[],
    );
    cli.wait_for("connected", Duration::from_secs(30));
    wait_rx(&m, "echoes before the moves", &mut cli, &mut srv, 20);
    for (i, node) in [Node::Mobile, Node::Corr, Node::Mobile, Node::Corr]
        .into_iter()
        .enumerate()
    {
        std::thread::sleep(Duration::from_millis(700));
        m.move_node(node, BBM);
        wait_rx(
            &m,
            &format!("echoes after move {} ({})", i + 1, node.as_str()),
            &mut cli,
            &mut srv,
            20,
        );
    }
    std::fs::write(&stop, b"").unwrap();
    let line = result_ok(&m, &mut cli);
    eprintln!("keystrokes: {line}\n{}", m.summary());
}

// ------------------------------------------------------------ 4: burst after idle

/// A stream that exchanged five bytes stays idle for 4 s while the mobile
/// host and then the correspondent move; then the client sends 8 MB as
/// fast as it can while reading the echo: the echo is exactly what was
/// sent (SHA-256) and ends in EOF.
#[test]
fn burst_after_idle_across_moves() {
    const SIZE: u64 = 8 << 20;
    let mut m = Mob::new("xburst", Proxy::Wisp);
    let mut srv = m.python(
        Node::Mobile,
        Some(BOB),
        "echo-server",
        "rr.py",
        &["serve", "7550"],
        &[],
    );
    srv.wait_for("listening", Duration::from_secs(20));
    let go = m.w.dir.join("burst.go");
    let size = SIZE.to_string();
    let mut cli = m.python(
        Node::Corr,
        None,
        "burst",
        "burst.py",
        &["bob.wxyz", "7550", &size, go.to_str().unwrap()],
        &[],
    );
    cli.wait_for("idle", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    m.move_mobile(BBM);
    std::thread::sleep(Duration::from_millis(1500));
    m.move_corr();
    std::thread::sleep(Duration::from_millis(1500));
    m.note("burst starts".into());
    std::fs::write(&go, b"").unwrap();
    let out = cli.out.clone();
    m.wait_growth(
        "the echo of the burst",
        &mut [&mut cli, &mut srv],
        SIZE,
        || progress(&out).0,
    );
    let line = result_ok(&m, &mut cli);
    eprintln!("burst: {line}\n{}", m.summary());
}

// ------------------------------------------------------------ 5: half-close

/// A half-close run: the server on the mobile host reads to EOF, then
/// sends `down` bytes at 2 MB/s; the client on the correspondent sends
/// 256 KiB (its last 64 KiB and FIN when `go` appears, if given).
fn half_close(m: &mut Mob, port: u16, down: u64, go: Option<&std::path::Path>) -> (Bg, Bg) {
    let port = port.to_string();
    let down = down.to_string();
    let mut srv = m.python(
        Node::Mobile,
        Some(BOB),
        "hc-server",
        "halfclose.py",
        &["serve", &port, &down, "2000000"],
        &[],
    );
    srv.wait_for("listening", Duration::from_secs(20));
    let go = go.map_or("-".to_string(), |p| p.to_str().unwrap().to_string());
    let mut cli = m.python(
        Node::Corr,
        None,
        "hc-client",
        "halfclose.py",
        &["client", "bob.wxyz", &port, "262144", &go],
        &[],
    );
    cli.wait_for("connected", Duration::from_secs(30));
    (srv, cli)
}

/// Both programs exit 0 and each direction is exact: what the client
/// sent before its FIN is what the server read before EOF, and what the
/// server sent is what the client read before EOF.
fn half_close_exact(m: &Mob, srv: &mut Bg, cli: &mut Bg, down: u64) {
    let out = cli.out.clone();
    m.wait_growth(
        "the server's data after the client's FIN",
        &mut [cli, srv],
        down,
        || progress(&out).0,
    );
    for p in [&mut *srv, &mut *cli] {
        let st = m.wait_exit(p, FINISH);
        m.check(
            st.success(),
            format_args!("{} failed: {st}\n{}", p.name, tails(p)),
        );
    }
    let (s, c) = (srv.stdout(), cli.stdout());
    let words = |text: &str, prefix: &str| -> String {
        line_with(text, prefix)
            .map(|l| l[prefix.len()..].to_string())
            .unwrap_or_else(|| format!("(no {prefix:?} line)"))
    };
    let (sent, got) = (words(&c, "client sent "), words(&s, "server got-eof "));
    m.check(
        sent == got,
        format_args!("client -> server (up to the FIN): sent {sent}, the server read {got}"),
    );
    let (sent, got) = (words(&s, "server sent "), words(&c, "client received "));
    m.check(
        sent == got && sent.starts_with(&format!("{down} ")),
        format_args!("server -> client (after the FIN): sent {sent}, the client read {got}"),
    );
}

/// The client sends 256 KiB and shuts down its side before any move;
/// the server then streams 8 MB to it while the mobile host moves (at
/// 25 %) and the correspondent moves (at 60 %): the client reads all of
/// it, then EOF.
#[test]
fn half_closed_stream_gets_the_rest_across_moves() {
    const DOWN: u64 = 8 << 20;
    let mut m = Mob::new("xhalf", Proxy::Wisp);
    let (mut srv, mut cli) = half_close(&mut m, 7560, DOWN, None);
    srv.wait_for("server got-eof", Duration::from_secs(30));
    let out = cli.out.clone();
    for (node, pct) in [(Node::Mobile, 25), (Node::Corr, 60)] {
        m.wait_growth(
            &format!(
                "the server's data before the move of {} ({pct} %)",
                node.as_str()
            ),
            &mut [&mut cli, &mut srv],
            DOWN * pct / 100,
            || progress(&out).0,
        );
        m.move_node(node, BBM);
    }
    half_close_exact(&m, &mut srv, &mut cli, DOWN);
    eprintln!("{}", m.summary());
}

/// The client's last 64 KiB and its FIN are sent while the mobile host
/// (the server's) has no address at all (a break-before-make move with a
/// 500 ms gap): they can only arrive through the resumed connection.
/// The server then streams 4 MB back, and the mobile host moves again at
/// 50 %. Both directions are exact.
#[test]
fn fin_in_flight_during_a_move() {
    const DOWN: u64 = 4 << 20;
    let mut m = Mob::new("xfin", Proxy::Wisp);
    let go = m.w.dir.join("fin.go");
    let (mut srv, mut cli) = half_close(&mut m, 7570, DOWN, Some(&go));
    std::thread::sleep(Duration::from_millis(300));
    let old = m.w.lab.mobile_ip.to_string();
    let mv = m.start_move(
        Node::Mobile,
        MoveKind::BreakBeforeMakeGap(Duration::from_millis(500)),
    );
    // Wait until the mobile host's old address is gone, then send the FIN.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let out =
            m.w.lab
                .exec_cmd(Node::Mobile, ["ip", "-4", "-br", "addr"])
                .output()
                .unwrap();
        if !String::from_utf8_lossy(&out.stdout).contains(&old) {
            break;
        }
        m.check(
            Instant::now() < until,
            format_args!("the mobile host still has {old} 10 s into the move"),
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(&go, b"").unwrap();
    m.note("the client's last 64 KiB and FIN go out now".into());
    m.finish_moves(vec![mv]);
    let out = cli.out.clone();
    m.wait_growth(
        "the server's data after the FIN that crossed the move",
        &mut [&mut cli, &mut srv],
        DOWN / 2,
        || progress(&out).0,
    );
    m.move_mobile(BBM);
    half_close_exact(&m, &mut srv, &mut cli, DOWN);
    eprintln!("{}", m.summary());
}
