//! What the mobility sections (`stall`, `storm`, `plot`) share: a world in
//! a lab with a given round-trip time, moves of the mobile host driven with
//! one `ip -batch` each (fast enough for a storm, and with MPTCP's path
//! manager endpoints following the addresses), pairs of `wisp-flow`
//! programs over wisp, MPTCP or plain TCP, and the library's move lines.
//!
//! Every flow runs from the mobile host (client) to the correspondent
//! (server): that is how MPTCP is deployed (the client's path manager opens
//! the subflows), and wisp is given the same shape (the server named
//! `sip:bob@wxyz.com` on `corr`, the client dialling `bob.wxyz`).

use super::flow::{self, FlowResult};
use crate::e2e::{target_dir, Bg, LibLog, Proxy, World};
use crate::lab::{Lab, LabOptions, Link, Node};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The name the wisp flows' server registers.
pub const BOB: &str = "sip:bob@wxyz.com";

/// Wall-clock seconds: the clock `wisp-flow` stamps its pauses with (all
/// namespaces share it).
pub fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A lab whose hosts are this round-trip time apart: the plain lab for 0,
/// else one with a `wisp-netem` relay on every host link (SIP to the
/// registrar crosses the same kind of path as the data).
/// A loaded machine sometimes starts the relays too slowly for
/// `scripts/lab up`; it is tried three times.
pub fn lab(rtt_ms: u32) -> Result<Lab, String> {
    let mut last = String::new();
    for _ in 0..3 {
        let lab = if rtt_ms == 0 {
            Lab::try_up()
        } else {
            Lab::try_up_with(LabOptions {
                rtt: Duration::from_millis(u64::from(rtt_ms)),
                ..LabOptions::default()
            })
        };
        match lab {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(format!("no lab: {}", last.lines().next().unwrap_or("")))
}

/// A lab with this RTT and the wisp registrar in it.
pub fn world(tag: &str, rtt_ms: u32) -> Result<World, String> {
    Ok(World::on(lab(rtt_ms)?, tag, Proxy::Wisp))
}

/// Run `ip -n NS -batch -` with these lines; panics with ip's complaint.
pub fn ip_batch(ns: &str, lines: &str) {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ip");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .expect("write to ip -batch");
    let out = child.wait_with_output().expect("wait for ip");
    assert!(
        out.status.success(),
        "ip -n {ns} -batch failed ({}): {}\n{lines}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// One `ip -n NS -batch -` kept running: commands written to it take
/// effect at once (starting `ip` for each move took 10-30 ms on a loaded
/// machine, which blurred when a move happened). Each run ends with a
/// command whose output marks that ip has done everything before it; an
/// error makes ip exit, which the run reports.
pub struct IpShell {
    ns: String,
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl IpShell {
    pub fn new(ns: &str) -> IpShell {
        let mut child = Command::new("ip")
            .args(["-n", ns, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip -batch");
        let stdin = child.stdin.take().unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        IpShell {
            ns: ns.to_string(),
            child,
            stdin,
            out,
        }
    }

    /// Runs the lines; returns once ip has carried them all out.
    pub fn run(&mut self, lines: &str) {
        use std::io::BufRead;
        let ok = self
            .stdin
            .write_all(format!("{lines}link show dev lo\n").as_bytes())
            .and_then(|_| self.stdin.flush())
            .is_ok();
        let mut line = String::new();
        if ok {
            loop {
                line.clear();
                match self.out.read_line(&mut line) {
                    Ok(n) if n > 0 => {
                        if line.starts_with("    link/loopback") {
                            return;
                        }
                    }
                    _ => break,
                }
            }
        }
        let _ = self.child.kill();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        panic!("ip -n {} -batch failed: {}\n{lines}", self.ns, err.trim());
    }
}

impl Drop for IpShell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the MPTCP path-manager helper is told.
enum PmMsg {
    /// A line of `ip mptcp monitor`.
    Event(String),
    /// Delete endpoint `id` once a subflow from `new_ip` is established
    /// (or after `limit`).
    DeleteWhenUp {
        id: usize,
        new_ip: String,
        limit: Duration,
    },
    /// Delete endpoint `id` now.
    Delete(usize),
    Stop,
}

/// Plays the part of a path-manager daemon on the mobile host, as well as
/// one can: it watches `ip mptcp monitor` and deletes the old address's
/// endpoint the moment the subflow from the new address is established,
/// so that the REMOVE_ADDR travels on a working subflow and the peer stops
/// scheduling on the dead one at once. (Deleting it with the address, as a
/// daemon following RTM_DELADDR does, leaves the peer retransmitting on the
/// dead subflow until its own timers give up: about a second at 0 ms RTT,
/// trickles of 200+ ms at 20 ms. Deleting it a fixed 50 ms later at 20 ms
/// RTT stalled the downlink ~95 ms once. Even at the best moment, the
/// data the peer had sent on the dead subflow waits for MPTCP's own
/// retransmission timer: 120-320 ms at 20 ms RTT.)
struct MptcpPm {
    tx: std::sync::mpsc::Sender<PmMsg>,
    monitor: std::process::Child,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl MptcpPm {
    fn new(ns: &str) -> MptcpPm {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel::<PmMsg>();
        let mut monitor = Command::new("ip")
            .args(["-n", ns, "mptcp", "monitor"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ip mptcp monitor");
        let out = std::io::BufReader::new(monitor.stdout.take().unwrap());
        let events = tx.clone();
        let reader = std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if events.send(PmMsg::Event(line)).is_err() {
                    break;
                }
            }
        });
        let mut shell = IpShell::new(ns);
        let worker = std::thread::spawn(move || {
            let mut pending: Option<(usize, String, Instant)> = None;
            loop {
                let msg = match &pending {
                    Some((_, _, until)) => {
                        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                            Ok(m) => m,
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                                let (id, _, _) = pending.take().unwrap();
                                shell.run(&format!("mptcp endpoint delete id {id}\n"));
                                continue;
                            }
                            Err(_) => return,
                        }
                    }
                    None => match rx.recv() {
                        Ok(m) => m,
                        Err(_) => return,
                    },
                };
                match msg {
                    PmMsg::Event(line) => {
                        let up = pending.as_ref().is_some_and(|(_, ip, _)| {
                            line.contains("SF_ESTABLISHED")
                                && line.contains(&format!("saddr4={ip} "))
                        });
                        if up {
                            let (id, _, _) = pending.take().unwrap();
                            shell.run(&format!("mptcp endpoint delete id {id}\n"));
                        }
                    }
                    PmMsg::DeleteWhenUp { id, new_ip, limit } => {
                        if let Some((old, _, _)) = pending.take() {
                            shell.run(&format!("mptcp endpoint delete id {old}\n"));
                        }
                        pending = Some((id, new_ip, Instant::now() + limit));
                    }
                    PmMsg::Delete(id) => {
                        shell.run(&format!("mptcp endpoint delete id {id}\n"));
                    }
                    PmMsg::Stop => return,
                }
            }
        });
        MptcpPm {
            tx,
            monitor,
            threads: vec![reader, worker],
        }
    }

    fn send(&self, m: PmMsg) {
        let _ = self.tx.send(m);
    }
}

impl Drop for MptcpPm {
    fn drop(&mut self) {
        let _ = self.tx.send(PmMsg::Stop);
        let _ = self.monitor.kill();
        let _ = self.monitor.wait();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The mobile host's two links, moved through one running `ip -batch` (the
/// same addresses and routes as `scripts/lab move`, without its per-move
/// bash, locking and process starts). The lab's state file is not updated:
/// a lab moved this way is only moved this way.
pub struct Mobile {
    ip: IpShell,
    ns: String,
    ns_corr: String,
    /// Index of the link holding the addresses (0 = a, 1 = b).
    cur: usize,
    ip4: [String; 2],
    ip6: [String; 2],
    gw4: [String; 2],
    gw6: [String; 2],
    dev: [String; 2],
    /// MPTCP endpoints follow the addresses (see [`Mobile::mptcp_setup`]).
    pm: Option<MptcpPm>,
}

impl Mobile {
    pub fn new(lab: &Lab) -> Mobile {
        let v = |k: &str| {
            lab.var(k)
                .unwrap_or_else(|| panic!("lab has no {k}"))
                .to_string()
        };
        Mobile {
            ip: IpShell::new(&lab.ns_mobile),
            ns: lab.ns_mobile.clone(),
            ns_corr: lab.ns_corr.clone(),
            cur: usize::from(lab.mobile_link == Link::B),
            ip4: [v("MOBILE_IP_A"), v("MOBILE_IP_B")],
            ip6: [v("MOBILE_IP6_A"), v("MOBILE_IP6_B")],
            gw4: [v("ROUTER_MOBILE_A_IP"), v("ROUTER_MOBILE_B_IP")],
            gw6: [v("ROUTER_MOBILE_A_IP6"), v("ROUTER_MOBILE_B_IP6")],
            dev: [v("MOBILE_IF_A"), v("MOBILE_IF_B")],
            pm: None,
        }
    }

    /// The mobile host's current IPv4 address.
    pub fn ip(&self) -> &str {
        &self.ip4[self.cur]
    }

    /// MPTCP with the kernel's path manager on both hosts: room for
    /// subflows, and a `subflow` endpoint for the mobile host's address
    /// (endpoint id 1 for link a, 2 for link b). At each move the new
    /// address's endpoint is added right after the address (no daemon's
    /// reaction time), and the old one is deleted as soon as the new
    /// subflow is up (see `MptcpPm`).
    pub fn mptcp_setup(&mut self) {
        for ns in [&self.ns, &self.ns_corr] {
            ip_batch(
                ns,
                "mptcp limits set subflow 8 add_addr_accepted 8\nmptcp endpoint flush\n",
            );
        }
        let add = self.endpoint_add(self.cur);
        self.ip.run(&add);
        self.pm = Some(MptcpPm::new(&self.ns));
    }

    fn endpoint_add(&self, i: usize) -> String {
        format!(
            "mptcp endpoint add {} dev {} subflow id {}\n",
            self.ip4[i],
            self.dev[i],
            i + 1
        )
    }

    fn detach(&self, i: usize, metric: u32) -> String {
        format!(
            "route del default via {gw4} dev {dev} metric {metric}\n\
             route del default via {gw6} dev {dev} metric {metric}\n\
             address del {ip4}/24 dev {dev}\n\
             address del {ip6}/64 dev {dev}\n",
            gw4 = self.gw4[i],
            gw6 = self.gw6[i],
            ip4 = self.ip4[i],
            ip6 = self.ip6[i],
            dev = self.dev[i],
        )
    }

    fn attach(&self, i: usize, metric: u32) -> String {
        format!(
            "address add {ip4}/24 dev {dev}\n\
             address add {ip6}/64 dev {dev} nodad\n\
             route add default via {gw4} dev {dev} metric {metric}\n\
             route add default via {gw6} dev {dev} metric {metric}\n",
            gw4 = self.gw4[i],
            gw6 = self.gw6[i],
            ip4 = self.ip4[i],
            ip6 = self.ip6[i],
            dev = self.dev[i],
        )
    }

    /// Break-before-make to the other link: the old addresses and routes
    /// go, then the new ones come. Returns the wall-clock times just before
    /// the commands were handed to ip and just after it had carried them out.
    pub fn bbm(&mut self) -> (f64, f64) {
        let (old, new) = (self.cur, 1 - self.cur);
        let b = self.detach(old, 100) + &self.attach(new, 100);
        let t = epoch();
        self.ip.run(&b);
        let t1 = epoch();
        if let Some(pm) = &self.pm {
            // Told before the endpoint exists, so that its subflow's
            // SF_ESTABLISHED cannot come first.
            pm.send(PmMsg::DeleteWhenUp {
                id: old + 1,
                new_ip: self.ip4[new].clone(),
                limit: Duration::from_secs(3),
            });
            let e = self.endpoint_add(new);
            self.ip.run(&e);
        }
        self.cur = new;
        (t, t1)
    }

    /// Make-before-break, first half: the new link's addresses and a
    /// preferred default route (metric 50) join the old ones.
    pub fn mbb_make(&mut self) -> (f64, f64) {
        let new = 1 - self.cur;
        let b = self.attach(new, 50);
        let t = epoch();
        self.ip.run(&b);
        let t1 = epoch();
        if self.pm.is_some() {
            let e = self.endpoint_add(new);
            self.ip.run(&e);
        }
        (t, t1)
    }

    /// Make-before-break, second half: the old link's addresses go, and the
    /// new default route gets the normal metric back.
    pub fn mbb_break(&mut self) -> (f64, f64) {
        let (old, new) = (self.cur, 1 - self.cur);
        let mut b = self.detach(old, 100);
        b += &format!(
            "route add default via {gw4} dev {dev} metric 100\n\
             route del default via {gw4} dev {dev} metric 50\n\
             route add default via {gw6} dev {dev} metric 100\n\
             route del default via {gw6} dev {dev} metric 50\n",
            gw4 = self.gw4[new],
            gw6 = self.gw6[new],
            dev = self.dev[new],
        );
        let t = epoch();
        self.ip.run(&b);
        let t1 = epoch();
        if let Some(pm) = &self.pm {
            // Its subflow has been up for the whole overlap.
            pm.send(PmMsg::Delete(old + 1));
        }
        self.cur = new;
        (t, t1)
    }
}

/// `wisp-flow` options that make it run SCHED_FIFO, when
/// `WISP_BENCH_RT=1`: the neighbours' load then hardly shows as pauses, but
/// the library's threads (the mover's too) run real-time as well, so it is
/// not the default.
pub fn rt_opts() -> &'static [&'static str] {
    if std::env::var("WISP_BENCH_RT").is_ok_and(|v| v == "1") {
        &["--rt", "10"]
    } else {
        &[]
    }
}

/// The path of a program of this build (`wisp-flow`, ...).
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.is_file(),
        "{} missing: run cargo build --release --workspace first",
        p.display()
    );
    p
}

/// Pauses a receiver reported: (end, epoch seconds; length, ms).
pub type Gaps = Vec<(f64, f64)>;

/// What carries a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// By name, both ends under libwisp.so.
    Wisp,
    /// IPPROTO_MPTCP to the correspondent's address, no library.
    Mptcp,
    /// Plain TCP to the correspondent's address, no library.
    Tcp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Wisp => "wisp",
            Proto::Mptcp => "MPTCP",
            Proto::Tcp => "plain TCP",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Proto::Wisp => "wisp",
            Proto::Mptcp => "mptcp",
            Proto::Tcp => "tcp",
        }
    }
}

/// A running pair of `wisp-flow` programs: server on `corr`, client on
/// `mobile`.
pub struct Flow {
    pub proto: Proto,
    pub srv: Bg,
    pub cli: Bg,
    stop: PathBuf,
    abort: PathBuf,
    /// Arrival traces (when asked for): the server's receives the uplink
    /// (mobile → corr), the client's the downlink.
    pub srv_trace: PathBuf,
    pub cli_trace: PathBuf,
    /// The library logs (wisp only): the mobile client's, the server's.
    pub cli_log: Option<LibLog>,
    pub srv_log: Option<LibLog>,
}

impl Flow {
    /// Starts the pair and waits until it is connected. `opts` go to both
    /// programs (`--every-us`, `--chunk`, `--gap-ms`, `--dir`).
    pub fn start(w: &World, proto: Proto, port: u16, opts: &[&str], trace: bool) -> Flow {
        let tag = format!("{}-{port}", proto.tag());
        let f = |s: &str| w.dir.join(&format!("{tag}.{s}"));
        let (stop, abort, srv_trace, cli_trace) =
            (f("stop"), f("abort"), f("srv.trace"), f("cli.trace"));
        let port_s = port.to_string();
        let prog = bin("wisp-flow");
        let mut srv_args: Vec<String> =
            vec![prog.display().to_string(), "serve".into(), port_s.clone()];
        let corr_ip = w.lab.corr_ip.to_string();
        let host = if proto == Proto::Wisp {
            "bob.wxyz"
        } else {
            corr_ip.as_str()
        };
        let mut cli_args: Vec<String> = vec![
            prog.display().to_string(),
            "connect".into(),
            host.into(),
            port_s,
        ];
        let both = |v: &mut Vec<String>, trace_file: &Path| {
            v.extend(opts.iter().map(|s| s.to_string()));
            v.extend(["--abort".into(), abort.display().to_string()]);
            if trace {
                v.extend(["--trace".into(), trace_file.display().to_string()]);
            }
            if proto == Proto::Mptcp {
                v.push("--mptcp".into());
            }
        };
        both(&mut srv_args, &srv_trace);
        both(&mut cli_args, &cli_trace);
        cli_args.extend(["--stop".into(), stop.display().to_string()]);
        let (mut srv_cmd, mut cli_cmd, srv_log, cli_log) = if proto == Proto::Wisp {
            let mut s = w.wisp_cmd(Node::Corr, Some(BOB), &srv_args);
            let mut c = w.wisp_cmd(Node::Mobile, None, &cli_args);
            let (sl, cl) = (
                w.lib_log(&format!("{tag}-srv")),
                w.lib_log(&format!("{tag}-cli")),
            );
            sl.apply(&mut s);
            cl.apply(&mut c);
            (s, c, Some(sl), Some(cl))
        } else {
            (
                w.lab.exec_cmd(Node::Corr, &srv_args),
                w.lab.exec_cmd(Node::Mobile, &cli_args),
                None,
                None,
            )
        };
        if proto != Proto::Wisp {
            srv_cmd.env_remove("LD_PRELOAD");
            cli_cmd.env_remove("LD_PRELOAD");
        }
        let mut srv = Bg::spawn(srv_cmd, &w.dir, &format!("{tag}-srv"));
        srv.wait_for("listening", Duration::from_secs(20));
        let mut cli = Bg::spawn(cli_cmd, &w.dir, &format!("{tag}-cli"));
        cli.wait_for("connected", Duration::from_secs(30));
        Flow {
            proto,
            srv,
            cli,
            stop,
            abort,
            srv_trace,
            cli_trace,
            cli_log,
            srv_log,
        }
    }

    /// Waits until both receivers have more than `bytes` more than now.
    pub fn wait_flowing(&mut self, bytes: u64, timeout: Duration) -> Result<(), String> {
        let until = Instant::now() + timeout;
        let base = (
            flow::progress(&self.srv.stdout()).0,
            flow::progress(&self.cli.stdout()).0,
        );
        loop {
            let now = (
                flow::progress(&self.srv.stdout()).0,
                flow::progress(&self.cli.stdout()).0,
            );
            if now.0 >= base.0 + bytes && now.1 >= base.1 + bytes {
                return Ok(());
            }
            for p in [&mut self.srv, &mut self.cli] {
                if let Ok(Some(st)) = p.child.try_wait() {
                    return Err(format!("{} exited ({st}): {}", p.name, tail(&p.stdout())));
                }
            }
            if Instant::now() > until {
                return Err(format!(
                    "{}: not flowing after {timeout:?} (received {now:?}, from {base:?})",
                    self.proto.name()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pauses each receiver reported: (uplink at the server, downlink
    /// at the client).
    pub fn gaps(&self) -> (Gaps, Gaps) {
        (
            flow::gaps(&self.srv.stdout()),
            flow::gaps(&self.cli.stdout()),
        )
    }

    /// The sender's schedule start (`start EPOCH` line) of each side:
    /// (server's, client's).
    pub fn starts(&self) -> (Option<f64>, Option<f64>) {
        let start = |out: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix("start ")?.trim().parse().ok())
        };
        (start(&self.srv.stdout()), start(&self.cli.stdout()))
    }

    /// Ends the run cleanly (end markers both ways) and returns both
    /// results: (server's, client's).
    pub fn finish(&mut self, timeout: Duration) -> Result<(FlowResult, FlowResult), String> {
        std::fs::write(&self.stop, b"").map_err(|e| e.to_string())?;
        let until = Instant::now() + timeout;
        let mut late = None;
        'wait: for p in [&mut self.cli, &mut self.srv] {
            while !matches!(p.child.try_wait(), Ok(Some(_))) {
                if Instant::now() > until {
                    late = Some(format!(
                        "{} did not finish in {timeout:?}: {}",
                        p.name,
                        tail(&p.stdout())
                    ));
                    break 'wait;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(e) = late {
            // Both write their traces and results on the way out.
            self.abort();
            return Err(e);
        }
        let r = |p: &Bg| {
            FlowResult::parse(&p.stdout())
                .ok_or_else(|| format!("{} printed no result: {}", p.name, tail(&p.stdout())))
        };
        Ok((r(&self.srv)?, r(&self.cli)?))
    }

    /// Ends the run at once (a connection that died): both programs write
    /// their traces and results and exit.
    pub fn abort(&mut self) {
        let _ = std::fs::write(&self.abort, b"");
        let until = Instant::now() + Duration::from_secs(3);
        for p in [&mut self.cli, &mut self.srv] {
            while !matches!(p.child.try_wait(), Ok(Some(_))) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The last lines of a program's output, for error messages.
pub fn tail(out: &str) -> String {
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("progress "))
        .collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

/// A trace file of `wisp-flow`: (arrival, epoch seconds; bytes so far).
pub fn read_trace(p: &Path) -> Vec<(f64, u64)> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// How stale the receiver's data was against the sender's fixed schedule
/// (chunk k written at `start + k * every`), sampled just before each
/// arrival: (arrival, ms since the newest byte received so far was due).
/// A stall shows as a ramp, and trickles of old data keep it rising; its
/// peak is how far behind the receiver fell.
pub fn lateness(trace: &[(f64, u64)], start: f64, every_s: f64, chunk: u64) -> Vec<(f64, f64)> {
    trace
        .windows(2)
        .filter(|w| w[0].1 > 0)
        .map(|w| {
            let k = (w[0].1 - 1) / chunk;
            (w[1].0, (w[1].0 - (start + k as f64 * every_s)) * 1e3)
        })
        .collect()
}

/// A library log read as it grows: the mover's own `move stream=` lines
/// (this side moved), each with the wall-clock time it was first seen.
pub struct MoveLines {
    path: PathBuf,
    off: u64,
    part: String,
    pub seen: Vec<(f64, String)>,
}

impl MoveLines {
    pub fn new(log: &LibLog) -> MoveLines {
        MoveLines {
            path: log.path.clone(),
            off: 0,
            part: String::new(),
            seen: Vec::new(),
        }
    }

    /// Reads what was added since the last call; returns how many move
    /// lines it found.
    pub fn poll(&mut self) -> usize {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return 0;
        };
        let now = epoch();
        if f.seek(SeekFrom::Start(self.off)).is_err() {
            return 0;
        }
        let mut buf = String::new();
        let Ok(n) = f.read_to_string(&mut buf) else {
            return 0;
        };
        self.off += n as u64;
        self.part.push_str(&buf);
        let mut found = 0;
        while let Some(i) = self.part.find('\n') {
            let line: String = self.part.drain(..=i).collect();
            if is_own_move(&line) {
                self.seen.push((now, line.trim_end().to_string()));
                found += 1;
            }
        }
        found
    }
}

/// A completed move of this side (not the peer's move seen from here).
pub fn is_own_move(line: &str) -> bool {
    line.contains("move stream=") && line.contains(" new=") && !line.contains("peer_new=")
}

/// The numeric `key=value` fields of a line (values like `1.25`, `3ms`).
pub fn move_fields(line: &str) -> Vec<(String, f64)> {
    line.split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            let v = v.trim_end_matches("ms");
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Sleeps until `t` (epoch seconds), polling `lines` every 2 ms.
pub fn sleep_until(t: f64, lines: &mut [&mut MoveLines]) {
    loop {
        for l in lines.iter_mut() {
            l.poll();
        }
        let left = t - epoch();
        if left <= 0.0 {
            return;
        }
        std::thread::sleep(Duration::from_secs_f64(left.min(0.002)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_lines_are_told_apart() {
        let own = "wisp[12] info: move stream=ab n=1 old=10.1.2.2 new=10.1.3.2 peer=10.1.1.2:5060 tcp_up_ms=0.12 resume_ack_ms=1.50 stall_ms=2.00 done_ms=3.10 resent=0 attempts=1";
        let peer = "wisp[13] info: move stream=ab n=1 peer_new=10.1.3.2:4000 stall_ms=1.20 resent=0 (the peer moved)";
        assert!(is_own_move(own));
        assert!(!is_own_move(peer));
        let f = move_fields(own);
        assert!(f.contains(&("tcp_up_ms".to_string(), 0.12)));
        assert!(f.contains(&("done_ms".to_string(), 3.1)));
        assert!(f.contains(&("resent".to_string(), 0.0)));
        assert!(!f.iter().any(|(k, _)| k == "old"));
    }

    #[test]
    fn lateness_against_the_schedule() {
        // chunk 8 bytes every 1 ms from t=100: byte 16 (chunk 1) due at
        // 100.001, so just before the arrival at 100.050 the newest data was
        // 49 ms old; the backlog came then (byte 400 due at 100.049), so
        // just before the arrival at 100.051 it was 2 ms old.
        let l = lateness(
            &[(100.0015, 16), (100.050, 400), (100.051, 408)],
            100.0,
            0.001,
            8,
        );
        assert_eq!(l.len(), 2);
        assert!((l[0].1 - 49.0).abs() < 1e-6);
        assert!((l[1].1 - 2.0).abs() < 1e-6);
    }
}
