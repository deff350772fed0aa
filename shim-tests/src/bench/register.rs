//! Registrar throughput: REGISTER transactions per second on one core,
//! `wisp registrar` against Kamailio on the same machine, loaded the same way.
//!
//! Both servers run on loopback, pinned to the same core (`taskset`), with
//! no authentication and no per-request logging (`wisp registrar --log
//! warn`; Kamailio with `kamailio/bench-registrar.cfg`: the REGISTER path of
//! the test configuration, one UDP worker, no xlog). The load generator is
//! SIPp (`sip-tester`), pinned to another core: a REGISTER scenario over
//! UDP, closed loop with 200 transactions outstanding, each REGISTER a new
//! Call-ID for one of 5,000 users taken in turn (wisp's registrar holds at
//! most 10,000 addresses of record, `Limits::max_aors`; a pool keeps both
//! servers refreshing bindings rather than one of them refusing). Runs
//! alternate between the two servers.
//!
//! The figure with the target is REGISTERs completed per CPU-second the
//! server used (user + system time of all its threads and processes, from
//! /proc): on a shared machine a server pinned to a core does not get that
//! core to itself, and wall-clock rates move with whoever else runs there.
//! The wall-clock rate is reported beside it.

use super::{Ctx, Row, Stats, Target};
use crate::e2e::{run as run_cmd, wisp_bin, Bg};
use crate::{free_port, TempDir};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Users the load cycles through.
const USERS: usize = 5000;
/// Transactions SIPp keeps outstanding.
const OUTSTANDING: usize = 200;

const SCENARIO: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="wisp-bench register">
  <send retrans="500">
    <![CDATA[
REGISTER sip:[field1] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:[field0]@[field1]>;tag=[call_number]
To: <sip:[field0]@[field1]>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:[field0]@[local_ip]:[local_port]>
Expires: 3600
User-Agent: wisp-bench
Content-Length: 0

    ]]>
  </send>
  <recv response="200" />
</scenario>
"#;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Server {
    Wisp,
    Kamailio,
}

/// One SIPp run against one server.
#[derive(Debug)]
struct RunStats {
    ok: f64,
    failed: f64,
    retrans: f64,
    wall: f64,
    cpu: f64,
}

pub fn run(ctx: &Ctx) -> Vec<Row> {
    match measure(ctx) {
        Ok(rows) => rows,
        Err(e) => vec![
            Row::new("register", "REGISTER/s per core-second", "REGISTER/s")
                .target(Target::RatioAtLeast(1.0), "≥ Kamailio's (1.0x)")
                .note(format!("not measured: {e}")),
        ],
    }
}

fn measure(ctx: &Ctx) -> Result<Vec<Row>, String> {
    let calls = ctx.pick(40_000, 10_000);
    let rounds = ctx.pick(8, 2);
    which("sipp").ok_or("sipp not installed (Debian package sip-tester; scripts/setup)")?;
    which("kamailio").ok_or("kamailio not installed")?;
    let dir = TempDir::new("bench-register");
    let out = ctx.out.join("register");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let scenario = dir.join("register.xml");
    std::fs::write(&scenario, SCENARIO).map_err(|e| e.to_string())?;
    let users = dir.join("users.csv");
    let mut text = String::from("SEQUENTIAL\n");
    for i in 0..USERS {
        let _ = writeln!(text, "u{i};wxyz.com");
    }
    std::fs::write(&users, text).map_err(|e| e.to_string())?;

    // The servers share the last CPU; the load runs on the first.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server_cpu = (cpus - 1).to_string();
    let load_cpu = (cpus > 1).then(|| "0".to_string());

    let wisp_port = free_port();
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &server_cpu])
        .arg(wisp_bin())
        .args(["registrar", "--listen", &format!("127.0.0.1:{wisp_port}")])
        .args(["--domain", "wxyz.com", "--log", "warn"]);
    let mut wisp = Bg::spawn(cmd, &dir, "wisp-registrar");
    wisp.wait_for("listening", Duration::from_secs(10));

    let kam_port = free_port();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("kamailio/bench-registrar.cfg");
    let run_dir = dir.join("kamailio-run");
    std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &server_cpu, "kamailio", "-DD", "-E", "-f"])
        .arg(&cfg)
        .args(["-l", &format!("udp:127.0.0.1:{kam_port}")])
        .args(["-m", "64", "-M", "8", "-Y"])
        .arg(&run_dir)
        .arg("-P")
        .arg(run_dir.join("kamailio.pid"));
    let mut kam = Family(Bg::spawn(cmd, &dir, "kamailio"));
    kam.0.wait_for("Listening on", Duration::from_secs(15));
    // Kamailio prints its sockets before its workers are up.
    std::thread::sleep(Duration::from_millis(500));

    // One source port for every run: each user's binding (its Contact
    // names this port) is refreshed run after run, not added to.
    let sipp_port = free_port();
    let sipp = |port: u16, n: usize, tag: &str| -> Result<RunStats, String> {
        let stat = dir.join(&format!("stat-{tag}.csv"));
        let _ = std::fs::remove_file(&stat);
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", load_cpu.as_deref().unwrap_or(&server_cpu), "sipp"])
            .arg("-sf")
            .arg(&scenario)
            .arg("-inf")
            .arg(&users)
            .arg(format!("127.0.0.1:{port}"))
            .args(["-i", "127.0.0.1", "-p", &sipp_port.to_string()])
            .args(["-m", &n.to_string(), "-l", &OUTSTANDING.to_string()])
            .args(["-r", "1000000", "-nostdin", "-trace_stat", "-fd", "3600"])
            .arg("-stf")
            .arg(&stat);
        let t = Instant::now();
        let (st, _, err) = run_cmd(cmd, Duration::from_secs(300));
        let wall = t.elapsed().as_secs_f64();
        // 0: every call succeeded; 1: some failed (counted below).
        if !matches!(st.code(), Some(0 | 1)) {
            return Err(format!("sipp failed ({st}): {}", err.trim()));
        }
        let text = std::fs::read_to_string(&stat).map_err(|e| format!("sipp stats: {e}"))?;
        let (ok, failed, retrans) = parse_stats(&text).ok_or("sipp stats unreadable")?;
        Ok(RunStats {
            ok,
            failed,
            retrans,
            wall,
            cpu: 0.0,
        })
    };
    let pids = |s: Server| -> Vec<u32> {
        match s {
            Server::Wisp => vec![wisp.child.id()],
            Server::Kamailio => family(kam.0.child.id()),
        }
    };
    let port = |s: Server| match s {
        Server::Wisp => wisp_port,
        Server::Kamailio => kam_port,
    };

    // Warm up: both tables hold every user before anything is counted.
    for s in [Server::Wisp, Server::Kamailio] {
        sipp(port(s), USERS * 2, "warmup")?;
    }
    let mut runs: Vec<(Server, RunStats)> = Vec::new();
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            [Server::Wisp, Server::Kamailio]
        } else {
            [Server::Kamailio, Server::Wisp]
        };
        for s in order {
            let before = cpu_secs(&pids(s));
            let mut st = sipp(port(s), calls, &format!("{s:?}-{r}"))?;
            st.cpu = cpu_secs(&pids(s)) - before;
            runs.push((s, st));
        }
    }
    for (bg, what) in [(&mut wisp, "wisp registrar"), (&mut kam.0, "kamailio")] {
        if let Ok(Some(st)) = bg.child.try_wait() {
            return Err(format!("{what} exited during the runs ({st})"));
        }
    }
    let mut raw = String::new();
    for (s, st) in &runs {
        let _ = writeln!(raw, "{s:?} {st:?}");
    }
    let _ = std::fs::write(out.join("runs.txt"), raw);

    let pick = |s: Server, f: &dyn Fn(&RunStats) -> f64| -> Vec<f64> {
        runs.iter()
            .filter(|(x, _)| *x == s)
            .map(|(_, r)| f(r))
            .collect()
    };
    let per_cpu = |r: &RunStats| if r.cpu > 0.0 { r.ok / r.cpu } else { f64::NAN };
    let per_wall = |r: &RunStats| r.ok / r.wall;
    let sum = |s: Server, f: &dyn Fn(&RunStats) -> f64| pick(s, f).iter().sum::<f64>();
    let us_per = |s: Server| {
        let v: Vec<f64> = pick(s, &|r| 1e6 * r.cpu / r.ok);
        Stats::of(&v).map_or(f64::NAN, |x| x.median)
    };
    let counts = format!(
        "failed transactions: wisp {}, Kamailio {}; UDP retransmissions: wisp {}, Kamailio {}",
        sum(Server::Wisp, &|r| r.failed),
        sum(Server::Kamailio, &|r| r.failed),
        sum(Server::Wisp, &|r| r.retrans),
        sum(Server::Kamailio, &|r| r.retrans),
    );
    let pinning = match &load_cpu {
        Some(l) => format!("servers on CPU {server_cpu}, SIPp on CPU {l}"),
        None => "one CPU: servers and SIPp share it".to_string(),
    };
    Ok(vec![
        Row::new("register", "REGISTER/s per core-second (UDP, no auth)", "REGISTER/s")
            .value(&pick(Server::Wisp, &per_cpu))
            .baseline("Kamailio", &pick(Server::Kamailio, &per_cpu))
            .target(Target::RatioAtLeast(1.0), "≥ Kamailio's (1.0x)")
            .note(format!(
                "REGISTERs answered 200 / CPU seconds the server used (user+system, all threads and processes); {:.1} µs per REGISTER for wisp, {:.1} for Kamailio. SIPp 3.6 closed loop, {OUTSTANDING} outstanding, {calls} REGISTERs a run, {USERS} users in turn, a new Call-ID each; {pinning}; Kamailio 5.6 with one UDP worker (children=1), both without auth or per-request logs; {counts}",
                us_per(Server::Wisp),
                us_per(Server::Kamailio),
            )),
        Row::new("register", "REGISTER/s wall clock, servers pinned to one core", "REGISTER/s")
            .value(&pick(Server::Wisp, &per_wall))
            .baseline("Kamailio", &pick(Server::Kamailio, &per_wall))
            .target(Target::None, "none (see the row above)")
            .note("REGISTERs answered 200 / run time, same runs; on a shared machine the pinned core is not the server's alone"),
    ])
}

/// A server that forks workers (Kamailio) outside a lab namespace, whose
/// workers outlive a killed main process: on drop the main process is asked
/// to stop (SIGTERM ends the workers too), and whatever is left of the
/// family is killed.
struct Family(Bg);

impl Drop for Family {
    fn drop(&mut self) {
        let members = family(self.0.child.id());
        self.0.signal("TERM");
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until && matches!(self.0.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in members.iter().skip(1) {
            // The workers are not our children: a pid whose process has
            // gone may have been reused, so only one still running
            // Kamailio is signalled.
            let ours = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with("kamailio"));
            if ours {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// SuccessfulCall, FailedCall and Retransmissions (cumulative) from the last
/// line of a SIPp `-trace_stat` file (`;`-separated, a header line first).
fn parse_stats(text: &str) -> Option<(f64, f64, f64)> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next()?.split(';').collect();
    let last: Vec<&str> = lines.next_back()?.split(';').collect();
    let col = |name: &str| -> Option<f64> {
        let i = header.iter().position(|h| h.trim() == name)?;
        last.get(i)?.trim().parse().ok()
    };
    Some((
        col("SuccessfulCall(C)")?,
        col("FailedCall(C)")?,
        col("Retransmissions(C)")?,
    ))
}

/// A process and all its descendants (Kamailio's workers).
fn family(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    let procs: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(
            procs
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    all
}

/// User + system CPU seconds of every thread of these processes.
fn cpu_secs(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut ticks = 0u64;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            // Fields after the command: state is the 1st, utime the 12th.
            let f: Vec<&str> = rest.split_whitespace().collect();
            let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            ticks += field(11) + field(12);
        }
    }
    ticks as f64 / tick
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sipp_stats_last_line() {
        let text = "StartTime;SuccessfulCall(C);FailedCall(C);Retransmissions(C);\n\
a;0;0;0;\n\
b;3990;10;7;\n";
        assert_eq!(parse_stats(text), Some((3990.0, 10.0, 7.0)));
        assert_eq!(parse_stats("x;y\n"), None);
    }

    #[test]
    fn own_process_has_cpu_time_and_family() {
        let me = std::process::id();
        assert!(family(me).contains(&me));
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(30) {}
        assert!(cpu_secs(&[me]) > 0.0);
    }
}
