//! Memory: what a process pays in resident memory for its wisp streams.
//!
//! One process (`memclient.c`, compiled here with `cc -O2`) on the
//! correspondent host opens N connections to a server on the mobile host
//! and reads its own RSS as it goes: by name with libwisp.so preloaded
//! (each connection a wisp stream, set up by an INVITE through the lab's
//! registrar), and the same program to the server's address without the
//! library (plain TCP, the baseline), in alternating runs. The server, a
//! Python program answering for the name, accepts and holds every
//! connection and never reads, so in the loaded phase each sending stream
//! ends up with everything its peer has not acknowledged held: by the
//! kernel (both cases) and by the library's replay ring (wisp).

use super::{Ctx, Row, Stats, Target};
use crate::e2e::{run as run_cmd, Bg, Proxy, World};
use crate::lab::Node;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

const SOURCE: &str = include_str!("memclient.c");
/// Clients fill the connections to this port, whose peer never reads.
const HOLD_PORT: u16 = 7300;
/// ... and stream to this one, whose peer reads everything.
const DRAIN_PORT: u16 = 7301;

/// The server: accepts on both ports; reads and discards everything on
/// DRAIN_PORT's connections, never reads on HOLD_PORT's (it only watches
/// them for the peer's close, EPOLLRDHUP, to let them go).
const SERVER: &str = r#"
import resource, select, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
ep = select.epoll()
listeners, conns = {}, {}
for port, drain in ((int(sys.argv[1]), False), (int(sys.argv[2]), True)):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4096)
    listeners[s.fileno()] = (s, drain)
    ep.register(s.fileno(), select.EPOLLIN)
print("listening", flush=True)
buf = bytearray(1 << 18)
while True:
    for fd, ev in ep.poll():
        if fd in listeners:
            s, drain = listeners[fd]
            c, _ = s.accept()
            c.setblocking(False)
            conns[c.fileno()] = (c, drain)
            ep.register(c.fileno(), select.EPOLLIN | select.EPOLLRDHUP if drain else select.EPOLLRDHUP)
            continue
        c, drain = conns[fd]
        gone = not drain
        while drain:
            try:
                n = c.recv_into(buf)
            except BlockingIOError:
                break
            except OSError:
                n = 0
            if n == 0:
                gone = True
                break
        if gone:
            ep.unregister(fd)
            del conns[fd]
            c.close()
"#;

/// One client run's report: the "key value" lines of memclient.
type Report = BTreeMap<String, f64>;

/// What one run measures: the idle and hold phases, then the stream phase.
#[derive(Default)]
struct Reports {
    hold: Vec<Report>,
    stream: Vec<Report>,
}

pub fn run(ctx: &Ctx) -> Vec<Row> {
    let n = ctx.pick(1000, 100);
    let loaded = ctx.pick(50, 20);
    let secs = ctx.pick(3, 1);
    let runs = ctx.pick(ctx.runs.clamp(1, 3), 1);
    let fail =
        |why: String| vec![Row::new("memory", format!("RSS, {n} idle streams"), "KiB").note(why)];
    let client = match super::report::compile_c(&ctx.out, "memory", "memclient", SOURCE, &[]) {
        Ok(p) => p,
        Err(e) => return fail(format!("not built: {e}")),
    };
    let w = World::new("bench-memory", Proxy::Wisp);
    // TCP would otherwise start each run's connections from the cwnd and
    // ssthresh the last run left in its per-destination cache, and the
    // send buffers autotune from there: runs would not be alike.
    for node in [Node::Corr, Node::Mobile] {
        let _ = w
            .lab
            .exec_cmd(node, ["sysctl", "-qw", "net.ipv4.tcp_no_metrics_save=1"])
            .status();
    }
    let server_py = w.dir.join("server.py");
    std::fs::write(&server_py, SERVER).unwrap();
    let mut cmd = w.wisp_cmd(Node::Mobile, Some("sip:bob@wxyz.com"), ["python3", "-u"]);
    cmd.arg(&server_py)
        .args([HOLD_PORT.to_string(), DRAIN_PORT.to_string()])
        .env("WISP_LOG", "warn");
    let mut srv = Bg::spawn(cmd, &w.dir, "server");
    srv.wait_for("listening", Duration::from_secs(20));
    w.wait_listening(Node::Mobile, DRAIN_PORT);

    let (mut wisp, mut plain) = (Reports::default(), Reports::default());
    // Every client's report, for reading the figures behind the table.
    let mut raw = String::new();
    for r in 0..runs {
        for by_name in [r % 2 == 0, r % 2 == 1] {
            let into = if by_name { &mut wisp } else { &mut plain };
            for (mode, port, count, arg) in [
                ("hold", HOLD_PORT as usize, n, loaded),
                ("stream", DRAIN_PORT as usize, loaded, secs),
            ] {
                let (mut cmd, host) = if by_name {
                    let mut cmd = w.wisp_cmd(Node::Corr, None, [&client]);
                    cmd.env("WISP_LOG", "warn");
                    (cmd, "bob.wxyz".to_string())
                } else {
                    let mut cmd = w.lab.exec_cmd(Node::Corr, [&client]);
                    cmd.env_remove("LD_PRELOAD");
                    (cmd, w.lab.mobile_ip.to_string())
                };
                cmd.args([mode, &host])
                    .args([port, count, arg].map(|x| x.to_string()));
                let got = client_run(cmd);
                if let Ok(rep) = &got {
                    let what = if by_name { "wisp" } else { "plain" };
                    raw.push_str(&format!("{what} {mode} run {r}: {rep:?}\n"));
                }
                match got {
                    Ok(rep) if mode == "hold" => into.hold.push(rep),
                    Ok(rep) => into.stream.push(rep),
                    Err(e) => return fail(e),
                }
            }
        }
    }
    drop(srv);
    let _ = std::fs::write(ctx.out.join("memory").join("reports.txt"), raw);
    rows(n, loaded, secs, &wisp, &plain)
}

fn rows(n: usize, loaded: usize, secs: usize, wisp: &Reports, plain: &Reports) -> Vec<Row> {
    let col = |reps: &[Report], f: &dyn Fn(&Report) -> Option<f64>| -> Vec<f64> {
        reps.iter().filter_map(f).collect()
    };
    let median = |reps: &[Report], key: &str| {
        Stats::of(&col(reps, &|r| r.get(key).copied())).map_or(f64::NAN, |s| s.median)
    };
    let total = |r: &Report| r.get("rssN").copied();
    let per_idle = |r: &Report| Some((r.get("rssN")? - r.get("rss1")?) / (n - 1) as f64);
    let per_loaded = |r: &Report| Some((r.get("rss_loaded")? - r.get("rssN")?) / loaded as f64);
    let wmem = median(&wisp.hold, "wmem") / 1024.0;
    // The target reads "one socket send buffer + 16 KiB": the buffer the
    // socket has, which the kernel autotunes far above tcp_wmem's default.
    // The absolute rows say how far that is from the default.
    let target = Target::AtMost(wmem + 16.0);
    let target_text = format!("≤ tcp_wmem default + 16 KiB ({} KiB)", wmem + 16.0);
    let above = |reps: &[Report]| col(reps, &|r| Some(per_loaded(r)? - r.get("sndbuf")? / 1024.0));
    let kib = |reps: &[Report], key: &str| median(reps, key) / 1024.0;
    // How far the added memory per loaded stream is above the send buffer
    // the kernel autotuned for it (SO_SNDBUF), per run.
    let over_sndbuf = |reps: &[Report]| {
        let over = col(reps, &|r| Some(per_loaded(r)? - r.get("sndbuf")? / 1024.0));
        Stats::of(&over).map_or(f64::NAN, |s| s.median)
    };
    let loaded_note = |reps: &[Report], base: &[Report], how: &str| {
        format!(
            "{how}: {:.0} KiB accepted per stream; at the end SO_SNDBUF {:.0} KiB (autotuned; plain TCP {:.0}), {:.0} KiB unacknowledged (SIOCOUTQ); added RSS − SO_SNDBUF = {:.0} KiB. The ring holds what the kernel holds unsent or unacknowledged, up to the autotuned send buffer; the target's send buffer is tcp_wmem's default, {wmem:.0} KiB",
            kib(reps, "sent"),
            kib(reps, "sndbuf"),
            kib(base, "sndbuf"),
            kib(reps, "outq"),
            over_sndbuf(reps),
        )
    };
    let setup = median(&wisp.hold, "connect_ms") / n as f64;
    let setup_plain = median(&plain.hold, "connect_ms") / n as f64;
    vec![
        Row::new("memory", format!("RSS of one process holding {n} idle streams"), "KiB")
            .value(&col(&wisp.hold, &total))
            .baseline("plain TCP", &col(&plain.hold, &total))
            .note(format!(
                "C client on corr, server on mobile; wisp: by name, one INVITE each through the registrar ({setup:.2} ms per connection; plain {setup_plain:.2} ms)"
            )),
        Row::new("memory", "RSS per idle stream", "KiB")
            .value(&col(&wisp.hold, &per_idle))
            .baseline("plain TCP", &col(&plain.hold, &per_idle))
            .note(format!(
                "(RSS with {n} open − RSS after the first) / {}, 0.3 s after the last INVITE (the first also starts the SIP thread). Mostly SIP state: the INVITE and ACK each call keeps, the INVITE transaction (kept 32 s), the SDP",
                n - 1
            )),
        Row::new("memory", format!("added RSS per sending stream, {loaded} streaming"), "KiB")
            .value(&col(&wisp.stream, &per_loaded))
            .baseline("plain TCP", &col(&plain.stream, &per_loaded))
            .target(target.clone(), target_text.clone())
            .note(loaded_note(
                &wisp.stream,
                &plain.stream,
                &format!("(RSS after {secs} s of sending − RSS before) / {loaded}; the peer reads everything"),
            )),
        Row::new("memory", format!("added RSS per sending stream, {loaded} of {n} stalled"), "KiB")
            .value(&col(&wisp.hold, &per_loaded))
            .baseline("plain TCP", &col(&plain.hold, &per_loaded))
            .target(target, target_text)
            .note(loaded_note(
                &wisp.hold,
                &plain.hold,
                &format!("(RSS after − RSS before) / {loaded}; the peer never reads, each stream is sent to until no byte more is taken"),
            )),
        Row::new("memory", format!("added RSS per streaming stream above its SO_SNDBUF, {loaded} streaming"), "KiB")
            .value(&above(&wisp.stream))
            .target(Target::AtMost(16.0), "≤ one socket send buffer + 16 KiB")
            .note("per run: added RSS per stream − the socket's (autotuned) SO_SNDBUF at the end"),
        Row::new("memory", format!("added RSS per stalled stream above its SO_SNDBUF, {loaded} of {n}"), "KiB")
            .value(&above(&wisp.hold))
            .target(Target::AtMost(16.0), "≤ one socket send buffer + 16 KiB")
            .note("per run: added RSS per stream − the socket's (autotuned) SO_SNDBUF at the end"),
    ]
}

fn client_run(cmd: Command) -> Result<Report, String> {
    let (st, out, err) = run_cmd(cmd, Duration::from_secs(300));
    if !st.success() {
        return Err(format!("memclient failed ({st}): {}", err.trim()));
    }
    Ok(parse_report(&out))
}

/// memclient's "key value" lines.
pub fn parse_report(out: &str) -> Report {
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_are_parsed_and_rows_computed() {
        let w = parse_report(
            "wmem 16384\nrss0 1000\nrss1 1100\nrssN 2100\nrss_loaded 3100\nsent 65536\nbogus\n",
        );
        assert_eq!(w.get("rss1"), Some(&1100.0));
        assert_eq!(w.len(), 6);
        let p = parse_report("rss1 500\nrssN 600\nrss_loaded 600\n");
        let wisp = Reports {
            hold: vec![w.clone()],
            stream: vec![w],
        };
        let plain = Reports {
            hold: vec![p.clone()],
            stream: vec![p],
        };
        let rows = rows(11, 10, 1, &wisp, &plain);
        let median = |r: &Row| r.value.as_ref().unwrap().median;
        assert_eq!(median(&rows[0]), 2100.0);
        assert_eq!(median(&rows[1]), 100.0);
        assert_eq!(
            rows[1]
                .baseline
                .as_ref()
                .unwrap()
                .1
                .as_ref()
                .unwrap()
                .median,
            10.0
        );
        assert_eq!(median(&rows[2]), 100.0);
        assert_eq!(rows[2].target, Target::AtMost(32.0));
        assert_eq!(rows[3].verdict(), "missed by 68.0 KiB");
    }
}
