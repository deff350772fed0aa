//! Bulk TCP throughput with and without the library: iperf3 from the mobile
//! host to the correspondent over the same path, once by name with
//! libwisp.so preloaded on both ends (control and data connections are both
//! wisp streams) and once plain to the address with no library anywhere.
//! Two iperf3 servers run side by side on `corr` (one plain, one under
//! `WISP_NAME`); the runs alternate which variant goes first, and the figure
//! is the median of the receiver's rate. Every byte a wisp stream sends is
//! also copied into its replay ring (the bytes a move may have to resend),
//! which is the cost this section exposes.

use super::moves::{self, BOB};
use super::{Ctx, Row, Target};
use crate::e2e::{Bg, World};
use crate::lab::Node;
use std::process::Command;
use std::time::Duration;

/// Round-trip times measured (ms).
pub const RTTS: [u32; 2] = [0, 20];
const PLAIN_PORT: u16 = 5201;
const WISP_PORT: u16 = 5202;

pub fn run(ctx: &Ctx) -> Vec<Row> {
    let mut rows = Vec::new();
    for rtt in super::stall::rtts(&RTTS) {
        // Both directions where the CPU is the limit; at 20 ms the window
        // is, and one direction says as much.
        let dirs: &[bool] = if rtt == 0 { &[false, true] } else { &[false] };
        match measure(ctx, rtt, dirs) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                for &rev in dirs {
                    rows.push(row(rtt, rev, &[], &[]).note(e.clone()));
                }
            }
        }
    }
    rows
}

fn row(rtt: u32, reverse: bool, wisp: &[f64], plain: &[f64]) -> Row {
    let dir = if reverse {
        "corr → mobile (iperf3 -R)"
    } else {
        "mobile → corr"
    };
    Row::new(
        "throughput",
        format!("bulk TCP {dir}, {rtt} ms RTT"),
        "Gbit/s",
    )
    .value(wisp)
    .baseline("plain TCP", plain)
    .target(Target::RatioAtLeast(0.98), "≥ 0.98x plain TCP")
}

fn measure(ctx: &Ctx, rtt: u32, dirs: &[bool]) -> Result<Vec<Row>, String> {
    let w = moves::world("tput", rtt)?;
    let plain = w.lab.exec_cmd(
        Node::Corr,
        ["iperf3", "-s", "-4", "-p", &PLAIN_PORT.to_string()],
    );
    let _plain = Bg::spawn(plain, &w.dir, "iperf3-plain");
    let mut named = w.wisp_cmd(
        Node::Corr,
        Some(BOB),
        ["iperf3", "-s", "-4", "-p", &WISP_PORT.to_string()],
    );
    w.lib_log("iperf3-server").apply(&mut named);
    let _named = Bg::spawn(named, &w.dir, "iperf3-wisp");
    w.wait_listening(Node::Corr, PLAIN_PORT);
    w.wait_listening(Node::Corr, WISP_PORT);
    let secs = ctx.pick(5, 2);
    let mut rows = Vec::new();
    for &rev in dirs {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let (mut cpu_with, mut cpu_without) = (Vec::new(), Vec::new());
        // One short warm-up of each (first SIP calls, page cache).
        client(&w, true, rev, 1)?;
        client(&w, false, rev, 1)?;
        for i in 0..ctx.runs {
            // Alternate which goes first.
            for wisp in [i % 2 == 0, i % 2 == 1] {
                let (g, cpu) = client(&w, wisp, rev, secs)?;
                let (r, c) = if wisp {
                    (&mut with, &mut cpu_with)
                } else {
                    (&mut without, &mut cpu_without)
                };
                r.push(g);
                c.extend(cpu);
            }
        }
        rows.push(row(rtt, rev, &with, &without).note(format!(
            "iperf3 -t {secs} -O 1, receiver's rate, median of {} interleaved runs",
            ctx.runs
        )));
        let dir = if rev {
            "corr → mobile"
        } else {
            "mobile → corr"
        };
        rows.push(
            Row::new(
                "throughput",
                format!("CPU per GB, both iperf3 ends, {dir}, {rtt} ms RTT"),
                "s/GB",
            )
            .value(&cpu_with)
            .baseline("plain TCP", &cpu_without)
            .note("iperf3's own CPU figures (user + system, both processes), same runs: steadier than the rate on a shared machine"),
        );
    }
    Ok(rows)
}

/// One iperf3 client run: the receiver's rate in Gbit/s, and the CPU time
/// both ends took per GB.
fn client(w: &World, wisp: bool, reverse: bool, secs: u32) -> Result<(f64, Option<f64>), String> {
    let host = if wisp {
        "bob.wxyz".to_string()
    } else {
        w.lab.corr_ip.to_string()
    };
    let port = if wisp { WISP_PORT } else { PLAIN_PORT };
    let mut args = vec![
        "iperf3".to_string(),
        "-4".into(),
        "-c".into(),
        host,
        "-p".into(),
        port.to_string(),
        "-t".into(),
        secs.to_string(),
        "-O".into(),
        "1".into(),
        "-J".into(),
    ];
    if reverse {
        args.push("-R".into());
    }
    let mut cmd: Command = if wisp {
        let mut c = w.wisp_cmd(Node::Mobile, None, &args);
        w.lib_log("iperf3-client").apply(&mut c);
        c
    } else {
        let mut c = w.lab.exec_cmd(Node::Mobile, &args);
        c.env_remove("LD_PRELOAD");
        c
    };
    cmd.stdin(std::process::Stdio::null());
    let (st, out, err) = crate::e2e::run(cmd, Duration::from_secs(u64::from(secs) + 30));
    let bps = received_bps(&out);
    match (st.success(), bps) {
        (true, Some(b)) => Ok((b / 1e9, cpu_s_per_gb(&out))),
        _ => Err(format!(
            "iperf3 {} failed ({st}): {}",
            if wisp { "by name" } else { "plain" },
            err.lines()
                .chain(out.lines())
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        )),
    }
}

/// `end.sum_received.bits_per_second` of iperf3's JSON.
pub fn received_bps(json: &str) -> Option<f64> {
    number_after(json, &["\"sum_received\"", "\"bits_per_second\""])
}

/// CPU seconds both iperf3 processes spent per GB received, from
/// `end.cpu_utilization_percent` (host_total + remote_total, in % of the
/// run) and `end.sum_received` (seconds, bytes).
pub fn cpu_s_per_gb(json: &str) -> Option<f64> {
    let host = number_after(json, &["\"cpu_utilization_percent\"", "\"host_total\""])?;
    let remote = number_after(json, &["\"cpu_utilization_percent\"", "\"remote_total\""])?;
    let secs = number_after(json, &["\"sum_received\"", "\"seconds\""])?;
    let bytes = number_after(json, &["\"sum_received\"", "\"bytes\""])?;
    (bytes > 0.0).then(|| (host + remote) / 100.0 * secs / (bytes / 1e9))
}

/// The number after the last of `keys`, each looked for after the one
/// before it (a poor man's JSON path, enough for iperf3's output).
fn number_after(json: &str, keys: &[&str]) -> Option<f64> {
    let mut rest = json;
    for k in keys {
        rest = &rest[rest.find(k)? + k.len()..];
    }
    let v = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = v
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')))
        .unwrap_or(v.len());
    v[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_json() {
        let j = r#"{"end": {"sum_sent": {"bits_per_second": 1.0e9},
            "sum_received": {"start": 0, "seconds": 5.0, "bits_per_second":	7269151234.5, "sender": true}}}"#;
        assert_eq!(received_bps(j), Some(7269151234.5));
        assert_eq!(received_bps("{}"), None);
        let j = r#"{"end": {"sum_received": {"seconds": 4.0, "bytes": 2000000000,
            "bits_per_second": 4e9}, "cpu_utilization_percent": {"host_total": 30.0,
            "host_user": 1.0, "remote_total": 20.0}}}"#;
        // (30% + 20%) of 4 s for 2 GB: 1 CPU second per GB.
        assert_eq!(cpu_s_per_gb(j), Some(1.0));
    }
}
