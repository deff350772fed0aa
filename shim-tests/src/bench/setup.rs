//! Connection set-up: the time from a program's connect() to the first byte
//! its peer sends, when the peer is named (an INVITE through a registrar
//! sets the connection up) against plain TCP to the peer's address.
//!
//! In a lab (client on corr, servers on mobile, registrars on reg) a small C
//! program (`setup.c`, compiled here with `cc -O2`) times each connection
//! itself: getaddrinfo, connect, recv of the one byte the server sends right
//! after accept. Three variants run in alternating rounds: by name with
//! libwisp.so and `wisp registrar` as the proxy, by name with Kamailio as the
//! proxy, and plain TCP to the server's address without the library. Each
//! client process makes one connection first that is not counted (it also
//! starts the library's SIP thread). The lab RTT is the median time a plain
//! connect() takes (SYN to SYN-ACK), so the figures can be read in round
//! trips; it is measured twice, in a lab without added delay (where the
//! set-up's own processing shows) and in one with a 10 ms RTT between hosts
//! (where its round trips do).

use super::{Ctx, Row, Stats, Target};
use crate::e2e::{kamailio, run as run_cmd, Bg, Proxy, World, HOSTS};
use crate::lab::{Lab, LabOptions, Node};
use crate::TempDir;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SOURCE: &str = include_str!("setup.c");
const BOB: &str = "sip:bob@wxyz.com";
/// Server ports on mobile: registered through wisp, through Kamailio, plain.
const PORT_WISP: u16 = 7400;
const PORT_KAM: u16 = 7401;
const PORT_PLAIN: u16 = 7402;

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Wisp,
    Kamailio,
    Plain,
}

/// One variant's samples: ms to connect() returning and to the first byte.
#[derive(Default)]
struct Samples {
    connect: Vec<f64>,
    first_byte: Vec<f64>,
}

pub fn run(ctx: &Ctx) -> Vec<Row> {
    let bin = match super::report::compile_c(&ctx.out, "setup", "setup", SOURCE, &["-Wall"]) {
        Ok(b) => b,
        Err(e) => {
            return vec![Row::new("setup", "connect → first byte by name", "ms")
                .note(format!("not measured: {e}"))]
        }
    };
    let mut rows = Vec::new();
    for rtt in [Duration::ZERO, Duration::from_millis(10)] {
        rows.extend(measure(ctx, &bin, rtt));
    }
    rows
}

fn measure(ctx: &Ctx, bin: &Path, rtt: Duration) -> Vec<Row> {
    let lab_name = if rtt.is_zero() {
        "lab without added delay".to_string()
    } else {
        format!("lab with {} ms RTT", rtt.as_millis())
    };
    let rounds = ctx.pick(6, 2);
    let per_run = ctx.pick(5, 3);
    let fail = |why: String| {
        vec![Row::new(
            "setup",
            format!("connect → first byte by name, {lab_name}"),
            "ms",
        )
        .note(format!("not measured: {why}"))]
    };
    let lab = if rtt.is_zero() {
        Lab::up()
    } else {
        Lab::up_with(LabOptions {
            rtt,
            ..LabOptions::default()
        })
    };
    let dir = TempDir::new("bench-setup");
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, HOSTS).unwrap();
    let mut w = World {
        proxy: SocketAddr::new(lab.reg_ip.into(), 5060),
        lab,
        dir,
        hosts,
        registrar: None,
    };
    w.start_registrar(Proxy::Wisp);
    let kam_addr = SocketAddr::new(w.lab.reg_ip.into(), 5070);
    let _kam = kamailio(&w.lab, Node::Reg, kam_addr, &w.dir);

    let server = |v: Variant| -> Bg {
        let port = match v {
            Variant::Wisp => PORT_WISP,
            Variant::Kamailio => PORT_KAM,
            Variant::Plain => PORT_PLAIN,
        }
        .to_string();
        let args = [bin.as_os_str(), "serve".as_ref(), port.as_ref()];
        let mut cmd = match v {
            Variant::Plain => {
                let mut c = w.lab.exec_cmd(Node::Mobile, args);
                c.env_remove("LD_PRELOAD");
                c
            }
            _ => {
                let mut c = w.wisp_cmd(Node::Mobile, Some(BOB), args);
                c.env("WISP_LOG", "warn");
                if v == Variant::Kamailio {
                    c.env("WISP_PROXY", kam_addr.to_string());
                }
                c
            }
        };
        cmd.env_remove("WISP_LOG_FILE");
        let mut bg = Bg::spawn(cmd, &w.dir, &format!("server-{port}"));
        bg.wait_for("listening", Duration::from_secs(20));
        bg
    };
    let _servers: Vec<Bg> = [Variant::Wisp, Variant::Kamailio, Variant::Plain]
        .into_iter()
        .map(server)
        .collect();
    for port in [PORT_WISP, PORT_KAM, PORT_PLAIN] {
        w.wait_listening(Node::Mobile, port);
    }

    let client = |v: Variant, n: usize| -> Command {
        let (host, port) = match v {
            Variant::Wisp => ("bob.wxyz".to_string(), PORT_WISP),
            Variant::Kamailio => ("bob.wxyz".to_string(), PORT_KAM),
            Variant::Plain => (w.lab.mobile_ip.to_string(), PORT_PLAIN),
        };
        let args = [
            bin.as_os_str().to_owned(),
            "connect".into(),
            host.into(),
            port.to_string().into(),
            n.to_string().into(),
        ];
        match v {
            Variant::Plain => {
                let mut c = w.lab.exec_cmd(Node::Corr, args);
                c.env_remove("LD_PRELOAD");
                c
            }
            _ => {
                let mut c = w.wisp_cmd(Node::Corr, None, args);
                c.env("WISP_LOG", "warn");
                if v == Variant::Kamailio {
                    c.env("WISP_PROXY", kam_addr.to_string());
                }
                c
            }
        }
    };

    let order = [Variant::Wisp, Variant::Kamailio, Variant::Plain];
    let mut got: [Samples; 3] = Default::default();
    for r in 0..rounds {
        for i in 0..order.len() {
            // Rotate who goes first, so no variant always follows another.
            let v = order[(i + r) % order.len()];
            let (st, out, err) = run_cmd(client(v, per_run + 1), Duration::from_secs(120));
            if !st.success() {
                return fail(format!("client failed ({st}): {}", err.trim()));
            }
            let s = &mut got[order.iter().position(|x| *x == v).unwrap()];
            // The first connection of each process is a warm-up.
            for (c, f) in parse(&out).into_iter().skip(1) {
                s.connect.push(c / 1000.0);
                s.first_byte.push(f / 1000.0);
            }
        }
    }
    let [wisp, kam, plain] = &got;
    let median = |v: &[f64]| Stats::of(v).map_or(f64::NAN, |s| s.median);
    let lab_rtt = median(&plain.connect);
    let row = |proxy: &str, s: &Samples| {
        let m = median(&s.first_byte);
        Row::new(
            "setup",
            format!("connect → first byte by name via {proxy}, {lab_name}"),
            "ms",
        )
        .value(&s.first_byte)
        .baseline("plain TCP", &plain.first_byte)
        .target(Target::None, "none set")
        .note(format!(
            "{:.1} lab RTTs (plain TCP {:.1}); lab RTT = median plain connect() = {lab_rtt:.3} ms{}; connect() alone {:.3} ms by name, {lab_rtt:.3} ms plain. Client on corr, server on mobile, proxy on reg; {} connections per variant, alternating rounds, each client's first connection not counted",
            m / lab_rtt,
            median(&plain.first_byte) / lab_rtt,
            if rtt.is_zero() {
                String::new()
            } else {
                format!(" (set: {} ms)", rtt.as_millis())
            },
            median(&s.connect),
            s.first_byte.len(),
        ))
    };
    vec![row("wisp registrar", wisp), row("Kamailio", kam)]
}

/// The "conn CONNECT_US FIRST_BYTE_US" lines of a client run.
fn parse(out: &str) -> Vec<(f64, f64)> {
    out.lines()
        .filter_map(|l| {
            let mut it = l.strip_prefix("conn ")?.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_lines_are_parsed() {
        let got = parse("conn 1.5 2.5\nnoise\nconn 3 4\nconn x 1\n");
        assert_eq!(got, [(1.5, 2.5), (3.0, 4.0)]);
    }
}
