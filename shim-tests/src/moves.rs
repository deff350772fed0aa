//! The fixture of the move tests (`tests/mobility.rs`,
//! `tests/exact_moves.rs`): a [`World`] plus what a test did in it, so that
//! every failure message carries the moves made (wall-clock time), the move
//! lines and `stream closed` lines of every library log (`WISP_LOG_FILE`)
//! and the lab's addresses.
//!
//! Nothing here waits without a bound: a measure that makes no progress for
//! [`STALL`] (or the bound a caller gives) fails the test, every program is
//! killed when its [`Bg`] is dropped and the lab is torn down when the
//! world is, on a panic too.

use crate::e2e::{move_timelines, py, run, wisp_bin, Bg, LibLog, Proxy, World};
use crate::lab::{MoveKind, Node};
use std::ffi::OsStr;
use std::fmt::Display;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The name the mobile host's servers answer for.
pub const BOB: &str = "sip:bob@wxyz.com";
/// The name the correspondent's servers answer for.
pub const FRED: &str = "sip:fred@abcd.com";

/// How long a stream may make no progress at all before the test fails. A
/// move should cost well under a second; this bound only keeps a broken
/// move from hanging the test (the library itself would wait
/// `WISP_MOVE_TIMEOUT`, minutes, before giving the program an error).
pub const STALL: Duration = Duration::from_secs(30);

/// How long a program may take to exit once its work is done.
pub const FINISH: Duration = Duration::from_secs(60);

/// Seconds since the epoch, as the moves and the programs stamp them.
pub fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The last `n` lines of `text` other than progress reports, then its last
/// progress report.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("progress "))
        .collect();
    let mut s = lines[lines.len().saturating_sub(n)..].join("\n");
    if let Some(p) = text.lines().rev().find(|l| l.starts_with("progress ")) {
        s += "\n(last) ";
        s += p;
    }
    s
}

/// A program's last lines, for failure messages.
pub fn tails(bg: &Bg) -> String {
    format!(
        "-- {} stdout:\n{}\n-- {} stderr:\n{}",
        bg.name,
        tail(&bg.stdout(), 15),
        bg.name,
        tail(&bg.stderr(), 15)
    )
}

/// The last `progress rx=N tx=M` line a program printed: (rx, tx).
pub fn progress(out: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    for line in text.lines().rev() {
        if let Some(rest) = line.strip_prefix("progress ") {
            let (rx, tx) = (field(rest, "rx"), field(rest, "tx"));
            if let (Some(rx), Some(tx)) = (rx, tx) {
                return (rx, tx);
            }
        }
    }
    (0, 0)
}

/// `key=N` in a line of `key=value` words.
pub fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The first line of `text` starting with `prefix`.
pub fn line_with<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

/// The `stream closed: T bytes sent, R received` lines of the logs: per
/// log how many there are, and up to `max` of those whose two counts
/// differ (an echo's streams should show equal counts on the server).
pub fn closed_streams(logs: &[LibLog], max: usize) -> String {
    let mut s = String::new();
    for log in logs {
        let closed = log.lines_with(&["stream closed"]);
        let uneven: Vec<&String> = closed
            .iter()
            .filter(|l| {
                let n: Vec<u64> = l
                    .split_whitespace()
                    .filter_map(|w| w.trim_end_matches(',').parse().ok())
                    .collect();
                n.len() >= 2 && n[n.len() - 2] != n[n.len() - 1]
            })
            .collect();
        s += &format!(
            "== {}: {} streams closed, {} with sent != received{}\n",
            log.tag,
            closed.len(),
            uneven.len(),
            if uneven.len() > max {
                format!(" (first {max} shown)")
            } else {
                String::new()
            }
        );
        for l in uneven.iter().take(max) {
            s += "   ";
            s += l;
            s += "\n";
        }
    }
    s
}

/// The library's own view of some of a process's streams, from `wisp
/// status --json` (state, moves, the bytes it counted each way, what the
/// last move resent): one line per stream that has one of `fds` (every
/// stream when `fds` is empty), for failure messages.
pub fn lib_streams(pid: u32, fds: &[u64]) -> String {
    const PICK: &str = r#"
import json, sys
doc = json.load(open(sys.argv[1]))
pid, fds = int(sys.argv[2]), set(int(f) for f in sys.argv[3].split(",") if f)
keys = ("fds", "state", "moves", "tx_bytes", "rx_bytes", "resent_last",
        "resent_total", "ring_held", "last_stall_ms", "local", "peer", "id")
for p in doc.get("processes", []):
    if p.get("pid") != pid:
        continue
    if "error" in p:
        print("error", p["error"])
    for s in p.get("streams", []):
        if not fds or fds & set(s.get("fds", [])):
            v = lambda x: ",".join(map(str, x)) if isinstance(x, list) else x
            print(" ".join(f"{k}={v(s.get(k))}" for k in keys))
"#;
    let dir = crate::TempDir::new("status");
    let file = dir.join("status.json");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#""$0" status --json > "$1""#)
        .arg(wisp_bin())
        .arg(&file);
    let (st, _, err) = run(cmd, Duration::from_secs(15));
    if !st.success() {
        return format!("(wisp status --json: {st}: {err})");
    }
    let fds: Vec<String> = fds.iter().map(u64::to_string).collect();
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PICK])
        .arg(&file)
        .arg(pid.to_string())
        .arg(fds.join(","));
    let (st, out, err) = run(cmd, Duration::from_secs(15));
    if !st.success() {
        return format!("(reading wisp status --json: {st}: {err})");
    }
    if out.trim().is_empty() {
        format!("(wisp status lists no such stream of pid {pid})")
    } else {
        out
    }
}

/// A world and what the test did in it: the library logs of the programs
/// it started and the moves it made, for failure messages.
pub struct Mob {
    pub w: World,
    pub logs: Vec<LibLog>,
    pub moves: Vec<String>,
    /// How many move lines of each log a failure message shows.
    pub timeline_lines: usize,
    /// The programs started under the library (tag, pid): a failure
    /// message shows their libraries' streams (`wisp status`).
    pub pids: Vec<(String, u32)>,
    /// Moves made so far (for their numbers).
    pub moved: usize,
}

impl Mob {
    pub fn new(tag: &str, proxy: Proxy) -> Mob {
        Mob {
            w: World::new(tag, proxy),
            logs: Vec::new(),
            moves: Vec::new(),
            timeline_lines: 40,
            pids: Vec::new(),
            moved: 0,
        }
    }

    /// A command under the library in `node`, logging to `<tag>.wisp.log`.
    pub fn cmd<I, S>(&mut self, node: Node, name: Option<&str>, tag: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.w.wisp_cmd(node, name, args);
        let log = self.w.lib_log(tag);
        log.apply(&mut cmd);
        self.logs.push(log);
        cmd
    }

    pub fn spawn<I, S>(&mut self, node: Node, name: Option<&str>, tag: &str, args: I) -> Bg
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let cmd = self.cmd(node, name, tag, args);
        let bg = Bg::spawn(cmd, &self.w.dir, tag);
        self.pids.push((tag.to_string(), bg.child.id()));
        bg
    }

    /// One of the programs in shim-tests/py under the library.
    pub fn python(
        &mut self,
        node: Node,
        name: Option<&str>,
        tag: &str,
        script: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Bg {
        let script = py(script);
        let mut cmd = self.cmd(node, name, tag, [OsStr::new("python3"), script.as_os_str()]);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let bg = Bg::spawn(cmd, &self.w.dir, tag);
        self.pids.push((tag.to_string(), bg.child.id()));
        bg
    }

    /// Notes something in the move timeline of failure messages.
    pub fn note(&mut self, what: String) {
        self.moves.push(format!("{:.3} {what}", epoch()));
    }

    /// Moves `node` (Mobile or Corr) to its other link and notes it.
    pub fn move_node(&mut self, node: Node, kind: MoveKind) {
        let ip = |m: &Mob| match node {
            Node::Corr => m.w.lab.corr_ip,
            _ => m.w.lab.mobile_ip,
        };
        let from = ip(self);
        self.moved += 1;
        let n = self.moved;
        let t = epoch();
        self.w.lab.move_node(node, None, kind);
        let to = ip(self);
        self.moves.push(format!(
            "{t:.3} move {n}: {} {from} -> {to} ({kind:?}), done at {:.3}",
            node.as_str(),
            epoch()
        ));
    }

    /// Moves the mobile host to its other link.
    pub fn move_mobile(&mut self, kind: MoveKind) {
        self.move_node(Node::Mobile, kind);
    }

    /// Moves the correspondent to its other link, break-before-make.
    pub fn move_corr(&mut self) {
        self.move_node(Node::Corr, MoveKind::BreakBeforeMake);
    }

    /// Starts `scripts/lab move` for `node` without waiting for it; see
    /// [`Mob::finish_moves`].
    pub fn start_move(&mut self, node: Node, kind: MoveKind) -> Bg {
        self.moved += 1;
        let n = self.moved;
        let tag = format!("move-{n}-{}", node.as_str());
        self.note(format!("move {n}: {} ({kind:?}) started", node.as_str()));
        Bg::spawn(self.w.lab.move_cmd(node, None, kind), &self.w.dir, &tag)
    }

    /// Waits for moves started with [`Mob::start_move`] (each must
    /// succeed), then re-reads the lab's addresses and notes them.
    pub fn finish_moves(&mut self, mut moves: Vec<Bg>) {
        for p in moves.iter_mut() {
            let st = self.wait_exit(p, Duration::from_secs(30));
            self.check(
                st.success(),
                format_args!("{} failed: {st}\n{}", p.name, tails(p)),
            );
        }
        self.w.lab.refresh();
        let (m, c) = (self.w.lab.mobile_ip, self.w.lab.corr_ip);
        self.note(format!("moves done: mobile at {m}, corr at {c}"));
    }

    /// Moves the mobile host and the correspondent at once: both `scripts/lab
    /// move` commands are started together. (The script serializes moves of
    /// one lab, so the second runs as soon as the first is done: tens of
    /// milliseconds apart.)
    pub fn move_both(&mut self) {
        let kind = MoveKind::BreakBeforeMake;
        let a = self.start_move(Node::Mobile, kind);
        let b = self.start_move(Node::Corr, kind);
        self.finish_moves(vec![a, b]);
    }

    /// The streams of the programs still running, as their libraries
    /// count them (`wisp status`), at most `max` per program.
    pub fn lib_views(&self, max: usize) -> String {
        let mut s = String::new();
        for (tag, pid) in &self.pids {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let view = lib_streams(*pid, &[]);
            let lines: Vec<&str> = view.lines().collect();
            s += &format!("== {tag} (pid {pid}): {} streams\n", lines.len());
            for l in lines.iter().take(max) {
                s += &format!("   {l}\n");
            }
        }
        s
    }

    /// Everything known about the run, for a failure message.
    pub fn context(&self) -> String {
        format!(
            "\n\nmoves made (epoch seconds):\n{}\n\nlibrary logs:\n{}\nstreams closed:\n{}\n\
             the libraries' streams now (wisp status):\n{}\nlab:\n{}",
            if self.moves.is_empty() {
                "   (none)".to_string()
            } else {
                self.moves
                    .iter()
                    .map(|m| format!("   {m}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            },
            move_timelines(&self.logs, self.timeline_lines),
            closed_streams(&self.logs, 10),
            self.lib_views(6),
            self.w.lab.status()
        )
    }

    /// The moves made and, per library log, how many stream moves it
    /// completed and how many streams it closed: for a passing test's
    /// output (`--nocapture`).
    pub fn summary(&self) -> String {
        let mut s = String::from("moves made:\n");
        for m in &self.moves {
            s += &format!("   {m}\n");
        }
        for log in &self.logs {
            let text = log.text();
            s += &format!(
                "{}: {} stream moves logged, {} streams closed\n",
                log.tag,
                text.lines().filter(|l| l.contains("move stream=")).count(),
                text.lines().filter(|l| l.contains("stream closed")).count()
            );
        }
        s
    }

    pub fn fail(&self, msg: impl Display) -> ! {
        panic!("{msg}{}", self.context());
    }

    pub fn check(&self, ok: bool, msg: impl Display) {
        if !ok {
            self.fail(msg);
        }
    }

    /// Waits until `measure()` reaches `target`. Fails if it makes no
    /// progress for [`STALL`], or if one of `procs` exits first.
    pub fn wait_growth(
        &self,
        what: &str,
        procs: &mut [&mut Bg],
        target: u64,
        measure: impl FnMut() -> u64,
    ) -> u64 {
        self.wait_growth_within(what, procs, target, STALL, measure)
    }

    /// [`Mob::wait_growth`] with a stall bound of `stall`.
    pub fn wait_growth_within(
        &self,
        what: &str,
        procs: &mut [&mut Bg],
        target: u64,
        stall: Duration,
        mut measure: impl FnMut() -> u64,
    ) -> u64 {
        let mut last = measure();
        let mut since = Instant::now();
        loop {
            let v = measure();
            if v >= target {
                return v;
            }
            if v != last {
                last = v;
                since = Instant::now();
            }
            for p in procs.iter_mut() {
                if let Ok(Some(st)) = p.child.try_wait() {
                    let v = measure();
                    if v >= target {
                        return v;
                    }
                    self.fail(format_args!(
                        "{what}: {} exited ({st}) at {v} of {target}\n{}",
                        p.name,
                        tails(p)
                    ));
                }
            }
            if since.elapsed() > stall {
                let out: Vec<String> = procs.iter().map(|p| tails(p)).collect();
                self.fail(format_args!(
                    "{what}: no progress for {stall:?}, stuck at {last} of {target}\n{}",
                    out.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a program to exit; fails past `timeout`.
    pub fn wait_exit(&self, bg: &mut Bg, timeout: Duration) -> ExitStatus {
        match self.try_wait_exit(bg, timeout) {
            Some(st) => st,
            None => self.fail(format_args!(
                "{} still running after {timeout:?}\n{}",
                bg.name,
                tails(bg)
            )),
        }
    }

    /// Waits for a program to exit; `None` past `timeout`.
    pub fn try_wait_exit(&self, bg: &mut Bg, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = bg.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
