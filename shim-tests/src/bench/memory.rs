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
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SOURCE: &str = include_str!("memclient.c");
const PORT: u16 = 7300;

/// Accepts and holds every connection, never reading.
const SERVER: &str = r#"
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(4096)
print("listening", flush=True)
held = []
while True:
    c, _ = s.accept()
    held.append(c)
"#;

/// One client run's report: the "key value" lines of memclient.
type Report = BTreeMap<String, f64>;

pub fn run(ctx: &Ctx) -> Vec<Row> {
    let n = ctx.pick(1000, 100);
    let loaded = ctx.pick(50, 20);
    let runs = ctx.pick(2, 1);
    let fail = |why: String| {
        vec![Row::new("memory", format!("RSS, {n} idle streams"), "KiB").note(why)]
    };
    let client = match build(&ctx.out) {
        Ok(p) => p,
        Err(e) => return fail(format!("not built: {e}")),
    };
    let w = World::new("bench-memory", Proxy::Wisp);
    let server_py = w.dir.join("hold.py");
    std::fs::write(&server_py, SERVER).unwrap();
    let (mut wisp, mut plain) = (Vec::new(), Vec::new());
    for r in 0..runs {
        for by_name in [r % 2 == 0, r % 2 == 1] {
            // A fresh server each time: it holds whatever it accepted.
            let mut cmd = w.wisp_cmd(
                Node::Mobile,
                Some("sip:bob@wxyz.com"),
                ["python3", "-u"],
            );
            cmd.arg(&server_py).arg(PORT.to_string());
            let mut srv = Bg::spawn(cmd, &w.dir, "hold");
            srv.wait_for("listening", Duration::from_secs(20));
            w.wait_listening(Node::Mobile, PORT);
            let report = if by_name {
                let mut cmd = w.wisp_cmd(Node::Corr, None, [&client]);
                cmd.args(["bob.wxyz", &PORT.to_string()])
                    .args([n.to_string(), loaded.to_string()])
                    .env("WISP_LOG", "warn");
                client_run(cmd)
            } else {
                let mut cmd = w.lab.exec_cmd(Node::Corr, [&client]);
                cmd.arg(w.lab.mobile_ip.to_string())
                    .arg(PORT.to_string())
                    .args([n.to_string(), loaded.to_string()])
                    .env_remove("LD_PRELOAD");
                client_run(cmd)
            };
            drop(srv);
            match report {
                Ok(rep) if by_name => wisp.push(rep),
                Ok(rep) => plain.push(rep),
                Err(e) => return fail(e),
            }
        }
    }
    rows(n, loaded, &wisp, &plain)
}

fn rows(n: usize, loaded: usize, wisp: &[Report], plain: &[Report]) -> Vec<Row> {
    let col = |reps: &[Report], f: &dyn Fn(&Report) -> Option<f64>| -> Vec<f64> {
        reps.iter().filter_map(f).collect()
    };
    let total = |r: &Report| r.get("rssN").copied();
    let per_idle = |r: &Report| Some((r.get("rssN")? - r.get("rss1")?) / (n - 1) as f64);
    let per_loaded = |r: &Report| Some((r.get("rss_loaded")? - r.get("rssN")?) / loaded as f64);
    let mean = |reps: &[Report], key: &str| {
        Stats::of(&col(reps, &|r| r.get(key).copied())).map_or(f64::NAN, |s| s.median)
    };
    let wmem = mean(wisp, "wmem") / 1024.0;
    let setup = mean(wisp, "connect_ms") / n as f64;
    let setup_plain = mean(plain, "connect_ms") / n as f64;
    vec![
        Row::new("memory", format!("RSS of one process holding {n} idle streams"), "KiB")
            .value(&col(wisp, &total))
            .baseline("plain TCP", &col(plain, &total))
            .note(format!(
                "C client on corr, server on mobile; wisp: by name, one INVITE each through the registrar ({setup:.2} ms per connection; plain {setup_plain:.2} ms)"
            )),
        Row::new("memory", "RSS per idle stream", "KiB")
            .value(&col(wisp, &per_idle))
            .baseline("plain TCP", &col(plain, &per_idle))
            .note(format!(
                "(RSS with {n} open − RSS after the first) / {}: the first stream also starts the SIP thread",
                n - 1
            )),
        Row::new(
            "memory",
            format!("added RSS per sending stream ({loaded} of {n} sending)"),
            "KiB",
        )
        .value(&col(wisp, &per_loaded))
        .baseline("plain TCP", &col(plain, &per_loaded))
        .target(
            Target::AtMost(wmem + 16.0),
            format!("≤ one send buffer + 16 KiB ({} KiB)", wmem + 16.0),
        )
        .note(format!(
            "peer never reads; each stream sent to until no byte more is taken: {:.0} KiB accepted per stream, SO_SNDBUF {:.0} KiB, {:.0} KiB unacknowledged (SIOCOUTQ); send buffer = tcp_wmem default {wmem:.0} KiB",
            mean(wisp, "sent") / 1024.0,
            mean(wisp, "sndbuf") / 1024.0,
            mean(wisp, "outq") / 1024.0,
        )),
    ]
}

/// Write the C source next to the results and compile it.
fn build(out: &Path) -> Result<PathBuf, String> {
    let dir = out.join("memory");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let src = dir.join("memclient.c");
    let bin = dir.join("memclient");
    std::fs::write(&src, SOURCE).map_err(|e| e.to_string())?;
    let st = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .map_err(|e| format!("cc: {e}"))?;
    if !st.success() {
        return Err(format!("cc failed: {st}"));
    }
    bin.canonicalize().map_err(|e| e.to_string())
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
        let w = parse_report("wmem 16384\nrss0 1000\nrss1 1100\nrssN 2100\nrss_loaded 3100\nsent 65536\nbogus\n");
        assert_eq!(w.get("rss1"), Some(&1100.0));
        assert_eq!(w.len(), 6);
        let p = parse_report("rss1 500\nrssN 600\nrss_loaded 600\n");
        let rows = rows(11, 10, &[w], &[p]);
        assert_eq!(rows[1].value.as_ref().unwrap().median, 100.0);
        assert_eq!(rows[1].baseline.as_ref().unwrap().1.as_ref().unwrap().median, 10.0);
        assert_eq!(rows[2].value.as_ref().unwrap().median, 100.0);
        assert_eq!(rows[2].target, Target::AtMost(32.0));
        assert_eq!(rows[2].verdict(), "missed by 68.0 KiB");
    }
}
