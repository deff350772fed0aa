//! Handover stall: how long a stream stops when the mobile host changes
//! address, for wisp, for MPTCP (the kernel's path manager, same lab, same
//! moves) and for plain TCP, at several round-trip times.
//!
//! Three `wisp-flow` pairs run at once from the mobile host to the
//! correspondent, each direction a counter stream paced at one 1 KiB write
//! per millisecond: one by name under libwisp.so, one over IPPROTO_MPTCP,
//! one over plain TCP. So every move is made once and measured on all three,
//! and whatever noise the machine has falls on all three alike. The moves
//! alternate break-before-make and make-before-break (the new address
//! first, the old one removed after an overlap), with a quiet second before
//! each.
//!
//! A move's **stall** is the longest pause between two arrivals, at either
//! receiver, that overlaps the moment the path changed (widened by one RTT
//! and 20 ms for what was in flight; for make-before-break, the switch
//! window after the new address appears and the moment the old one goes),
//! read off the receivers' arrival traces. The **recovery** is how stale
//! the receiver's newest byte got at worst against the sender's fixed
//! schedule, less how stale it was before the move: for a clean stall it
//! is about the stall, but a stream that restarts in trickles (MPTCP's
//! peer waiting on its retransmission timer) shows its whole disruption
//! there. The **noise floor** is the same pause measure over an equally
//! long span of the quiet second before the move, when nothing moves: on a
//! shared 2-core machine it is not zero, and it bounds what a
//! make-before-break stall can show.
//!
//! MPTCP gets its best case: the new address's `subflow` endpoint is added
//! right after the address and the old one deleted the moment the new
//! subflow is established (see `moves::Mobile::mptcp_setup`).
//!
//! The library's move line (the mobile side's `move stream=...`) gives the
//! parts of a move; its fields are read by name and any missing one is
//! left out. `WISP_BENCH_RTTS=20,100` measures only those RTTs.

use super::moves::{self, epoch, Flow, Mobile, MoveLines, Proto};
use super::{Ctx, Row, Stats, Target};
use crate::lab::Node;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Round-trip times measured (ms).
pub const RTTS: [u32; 3] = [0, 20, 100];
/// The senders' pace: one chunk every EVERY_US µs.
pub const EVERY_US: u64 = 1000;
pub const CHUNK: u64 = 1024;
/// Quiet time before each move (also the noise floor's window).
const QUIET: f64 = 1.0;
const PORTS: [(Proto, u16); 3] = [
    (Proto::Wisp, 7400),
    (Proto::Mptcp, 7401),
    (Proto::Tcp, 7402),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bbm,
    Mbb,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Bbm => "break-before-make",
            Kind::Mbb => "make-before-break",
        }
    }
}

/// One move and where its stall is looked for.
#[derive(Clone, Debug)]
struct MoveRec {
    kind: Kind,
    /// The move began (the new address, for make-before-break).
    t0: f64,
    /// The moments the paths changed, each widened by what may still be in
    /// flight: a move's stall is the longest pause that overlaps one.
    spans: Vec<(f64, f64)>,
    /// End of the window: the stream must have recovered by then.
    t_end: f64,
}

impl MoveRec {
    /// The spans moved into the quiet second before the move, end to end:
    /// where the noise floor is read.
    fn quiet_spans(&self) -> Vec<(f64, f64)> {
        let len: f64 = self.spans.iter().map(|(a, b)| b - a).sum();
        let from = self.t0 - QUIET + 0.05;
        vec![(from, (from + len).min(self.t0 - 0.01))]
    }
}

/// A picture's worth of one break-before-make move: the downlink's bytes
/// over time for each protocol, relative to the move.
#[derive(Clone, Debug)]
pub struct PlotData {
    pub rtt_ms: u32,
    /// Milliseconds shown before and after the move.
    pub before_ms: f64,
    pub after_ms: f64,
    pub series: Vec<Series>,
}

/// One protocol's line in a picture.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    /// Its stall (ms), if it recovered within the window.
    pub stall: Option<f64>,
    /// (ms since the move, KiB received since the move).
    pub points: Vec<(f64, f64)>,
}

/// The stall section leaves its pictures here for the `plot` section.
pub static PLOTS: Mutex<Vec<PlotData>> = Mutex::new(Vec::new());

/// What one RTT's run measured.
#[derive(Default)]
struct Measured {
    /// (proto, kind) → stalls (ms), recoveries (ms), noise floors (ms).
    stall: BTreeMap<(usize, usize), Vec<f64>>,
    recovery: BTreeMap<(usize, usize), Vec<f64>>,
    noise: BTreeMap<usize, Vec<f64>>,
    /// What became of plain TCP across the first move.
    tcp_fate: String,
    tcp_stall: Option<f64>,
    /// Problems with the streams themselves (exactness, results).
    trouble: Vec<String>,
    /// The wisp client's move lines, with the kind of move they belong to
    /// and the time from the move's start to the line being seen.
    lines: Vec<(Kind, f64, String)>,
    moves_made: usize,
    /// Per move and protocol, for the raw data file.
    raw: String,
}

fn pi(p: Proto) -> usize {
    PORTS.iter().position(|(q, _)| *q == p).unwrap()
}

fn ki(k: Kind) -> usize {
    match k {
        Kind::Bbm => 0,
        Kind::Mbb => 1,
    }
}

/// The longest pause between two arrivals (ms) that overlaps one of
/// `spans` and ended before `until` or was still open then, with the time
/// it ended (`until` if open). 0 when nothing arrived before the spans.
pub fn pause_over(trace: &[(f64, u64)], spans: &[(f64, f64)], until: f64) -> (f64, f64) {
    let hits = |a: f64, b: f64| spans.iter().any(|&(s, e)| a <= e && b >= s);
    let mut worst: (f64, f64) = (0.0, until);
    let mut prev: Option<f64> = None;
    for &(t, _) in trace {
        if t >= until {
            break;
        }
        if let Some(p) = prev {
            if t - p > worst.0 && hits(p, t) {
                worst = (t - p, t);
            }
        }
        prev = Some(t);
    }
    if let Some(p) = prev {
        if until - p > worst.0 && hits(p, until) {
            worst = (until - p, until);
        }
    }
    (worst.0 * 1e3, worst.1)
}

/// [`pause_over`], the longer of two traces (both directions), in ms.
fn stall_of(up: &[(f64, u64)], down: &[(f64, u64)], spans: &[(f64, f64)], until: f64) -> f64 {
    pause_over(up, spans, until)
        .0
        .max(pause_over(down, spans, until).0)
}

/// How much later than before the move the receiver fell behind the
/// schedule at worst (ms): peak lateness in `[from, to)` less the median
/// lateness in `[from - QUIET, from)`.
fn recovery_in(late: &[(f64, f64)], from: f64, to: f64) -> Option<f64> {
    let mut before: Vec<f64> = late
        .iter()
        .filter(|(t, _)| *t >= from - QUIET && *t < from)
        .map(|x| x.1)
        .collect();
    let base = Stats::of(&before)?.median;
    before.clear();
    let peak = late
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|x| x.1)
        .fold(f64::NEG_INFINITY, f64::max);
    // Still behind when the window closed: count up to its end.
    let open = late
        .iter()
        .rev()
        .find(|(t, _)| *t < to)
        .map(|&(t, l)| l + (to - t) * 1e3)
        .unwrap_or(f64::NEG_INFINITY);
    let peak = peak.max(open);
    peak.is_finite().then(|| (peak - base).max(0.0))
}

fn windows(rtt: u32) -> (f64, f64) {
    let rtt = f64::from(rtt) / 1e3;
    // (break-before-make: time allowed to recover; make-before-break: the
    // overlap of the two addresses)
    (2.0 + 15.0 * rtt, 0.5 + 5.0 * rtt)
}

/// Runs the three flows in a lab with this RTT through `per_kind` moves of
/// each kind in `kinds` (alternating), and keeps the first
/// break-before-make move's picture.
fn measure(
    rtt: u32,
    kinds: &[Kind],
    per_kind: usize,
) -> Result<(Measured, Option<PlotData>), String> {
    let w = moves::world("stall", rtt)?;
    let mut mob = Mobile::new(&w.lab);
    mob.mptcp_setup();
    let every = EVERY_US.to_string();
    let chunk = CHUNK.to_string();
    let mut opts = vec![
        "--every-us",
        every.as_str(),
        "--chunk",
        chunk.as_str(),
        "--gap-ms",
        "1000",
    ];
    opts.extend(moves::rt_opts());
    let mut flows: Vec<Flow> = PORTS
        .iter()
        .map(|&(p, port)| Flow::start(&w, p, port, &opts, true))
        .collect();
    for f in flows.iter_mut() {
        f.wait_flowing(64 << 10, Duration::from_secs(20))?;
    }
    let mut lines = MoveLines::new(flows[0].cli_log.as_ref().unwrap());
    let (win, overlap) = windows(rtt);
    let mut recs = Vec::new();
    let mut m = Measured::default();
    let mut tcp_alive = true;
    for i in 0..per_kind * kinds.len() {
        let kind = kinds[i % kinds.len()];
        sleep_until(epoch() + QUIET, &mut lines);
        let before = lines.seen.len();
        let r = f64::from(rtt) / 1e3;
        // t0: the change was made (just after `ip` returned); the spans
        // start when `ip` was started.
        let (t0, spans, t_end) = match kind {
            Kind::Bbm => {
                let (a, t0) = mob.bbm();
                (t0, vec![(a - 0.002, t0 + r + 0.02)], t0 + win)
            }
            Kind::Mbb => {
                let (a, t0) = mob.mbb_make();
                sleep_until(t0 + overlap, &mut lines);
                let (b, t1) = mob.mbb_break();
                // The switch comes when the mover sees the new route (up
                // to its 200 ms coalescing), the break at t1.
                let spans = vec![(a - 0.002, t0 + 0.3 + 3.0 * r), (b - 0.002, t1 + r + 0.02)];
                (t0, spans, t1 + win)
            }
        };
        sleep_until(t_end, &mut lines);
        for (t, l) in &lines.seen[before..] {
            m.lines.push((kind, (t - t0) * 1e3, l.clone()));
        }
        recs.push(MoveRec {
            kind,
            t0,
            spans,
            t_end,
        });
        if tcp_alive {
            // Plain TCP after its first move: did anything get through?
            let f = &mut flows[pi(Proto::Tcp)];
            f.abort();
            tcp_alive = false;
            let after = |p: &std::path::Path| {
                let tr = moves::read_trace(p);
                let at = |t: f64| tr.iter().take_while(|x| x.0 < t).last().map_or(0, |x| x.1);
                // What was in flight at the change may still arrive.
                at(t_end) - at(t0 + r + 0.005)
            };
            let (up, down) = (after(&f.srv_trace), after(&f.cli_trace));
            let errors: Vec<String> = [&f.srv, &f.cli]
                .iter()
                .flat_map(|p| {
                    p.stdout()
                        .lines()
                        .filter(|l| l.starts_with("error"))
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect();
            m.tcp_fate = if up > CHUNK && down > CHUNK {
                format!("plain TCP kept flowing across a {}", kind.name())
            } else {
                format!(
                    "plain TCP died: {up} B up, {down} B down in the {:.1} s after the move{}",
                    t_end - t0,
                    if errors.is_empty() {
                        "; no error reported (TCP retransmits to the old address until tcp_retries2 gives up, ~15 min)".to_string()
                    } else {
                        format!("; {}", errors.join("; "))
                    }
                )
            };
        }
    }
    m.moves_made = recs.len();
    // The sockets as the kernel sees them after the last move, for the raw
    // file (an MPTCP connection that never recovered shows why here).
    for node in [Node::Mobile, Node::Corr] {
        if let Ok(out) = w.lab.exec_cmd(node, ["ss", "-tMnie"]).output() {
            let _ = writeln!(
                m.raw,
                "== ss -tMnie in {node:?} after the moves\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    // Clean ends for wisp and MPTCP: every byte must have arrived once.
    for f in flows.iter_mut().filter(|f| f.proto != Proto::Tcp) {
        match f.finish(Duration::from_secs(20)) {
            Ok((s, c)) => {
                for (side, r, other) in [("uplink", &s, &c), ("downlink", &c, &s)] {
                    let bad = r.missing
                        + r.reordered
                        + r.duplicated
                        + r.stray
                        + other.sent.saturating_sub(r.reach);
                    if bad > 0 || !r.marked {
                        m.trouble
                            .push(format!("{} {side} not exact: {r:?}", f.proto.name()));
                    }
                }
            }
            Err(e) => m.trouble.push(e),
        }
    }
    // Stalls, recoveries, noise floors from the traces.
    let every_s = EVERY_US as f64 / 1e6;
    let mut plot = None;
    let mut series = Vec::new();
    for f in &flows {
        let (srv_start, cli_start) = f.starts();
        let up = moves::read_trace(&f.srv_trace);
        let down = moves::read_trace(&f.cli_trace);
        // The uplink is sent by the client, the downlink by the server.
        let late_up = cli_start
            .map(|s| moves::lateness(&up, s, every_s, CHUNK))
            .unwrap_or_default();
        let late_down = srv_start
            .map(|s| moves::lateness(&down, s, every_s, CHUNK))
            .unwrap_or_default();
        let p = pi(f.proto);
        for (n, r) in recs.iter().enumerate() {
            if f.proto == Proto::Tcp {
                if n == 0 {
                    let s = stall_of(&up, &down, &r.spans, r.t_end);
                    // Only a stall that ended inside the window is one.
                    if s < (r.t_end - r.t0) * 1e3 * 0.9 {
                        m.tcp_stall = Some(s);
                    }
                }
                continue;
            }
            let (su, eu) = pause_over(&up, &r.spans, r.t_end);
            let (sd, ed) = pause_over(&down, &r.spans, r.t_end);
            let s = su.max(sd);
            m.stall.entry((p, ki(r.kind))).or_default().push(s);
            let _ = writeln!(
                m.raw,
                "move {n} {:?} t0={:.3} {}: up {su:.1} ms ending at +{:.1} ms, down {sd:.1} ms ending at +{:.1} ms",
                r.kind,
                r.t0,
                f.proto.name(),
                (eu - r.t0) * 1e3,
                (ed - r.t0) * 1e3
            );
            let rc = [
                recovery_in(&late_up, r.t0, r.t_end),
                recovery_in(&late_down, r.t0, r.t_end),
            ]
            .into_iter()
            .flatten()
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
            if let Some(rc) = rc {
                m.recovery.entry((p, ki(r.kind))).or_default().push(rc);
            }
            let q = stall_of(&up, &down, &r.quiet_spans(), r.t0);
            m.noise.entry(p).or_default().push(q);
        }
        // The picture: the downlink across the first break-before-make move.
        if let Some(r) = recs.iter().find(|r| r.kind == Kind::Bbm) {
            let before = 200.0 + 2.0 * f64::from(rtt);
            let after = (r.t_end - r.t0) * 1e3;
            let at0 = down
                .iter()
                .take_while(|(t, _)| *t < r.t0)
                .last()
                .map_or(0, |x| x.1);
            let pts: Vec<(f64, f64)> = down
                .iter()
                .map(|&(t, b)| ((t - r.t0) * 1e3, (b as f64 - at0 as f64) / 1024.0))
                .filter(|(x, _)| *x >= -before && *x <= after)
                .collect();
            let s = pause_over(&down, &r.spans, r.t_end).0;
            let recovered = s < after * 0.9;
            series.push(Series {
                name: f.proto.name().to_string(),
                stall: recovered.then_some(s),
                points: pts,
            });
            plot = Some((before, after));
        }
    }
    let plot = plot.map(|(before_ms, after_ms)| PlotData {
        rtt_ms: rtt,
        before_ms,
        after_ms,
        series,
    });
    Ok((m, plot))
}

fn sleep_until(t: f64, lines: &mut MoveLines) {
    moves::sleep_until(t, &mut [lines]);
}

/// Display names of the move line's fields, in timeline order.
const FIELDS: &[(&str, &str)] = &[
    ("detect_to_invite_ms", "detection → re-INVITE sent"),
    ("invite_to_answer_ms", "re-INVITE sent → answered"),
    ("tcp_up_ms", "detection → new TCP connection up"),
    ("first_resent_ms", "detection → first resent byte"),
    ("ack_ms", "detection → resume Ack"),
    ("resume_ack_ms", "detection → resume Ack"),
    ("stall_ms", "program's calls held (freeze → swap)"),
    ("done_ms", "detection → move done"),
];

pub fn run(ctx: &Ctx) -> Vec<Row> {
    let mut rows = Vec::new();
    let kinds = [Kind::Bbm, Kind::Mbb];
    for rtt in rtts(&RTTS) {
        match measure(rtt, &kinds, ctx.runs) {
            Ok((m, plot)) => {
                let mut raw = m.raw.clone();
                for (k, at, l) in &m.lines {
                    let _ = writeln!(raw, "{k:?} move line seen at +{at:.1} ms: {l}");
                }
                let _ = std::fs::write(ctx.out.join(format!("stall-{rtt}ms.txt")), raw);
                if let Some(p) = plot {
                    PLOTS.lock().unwrap().push(p);
                }
                rows.extend(rows_of(rtt, &m));
            }
            Err(e) => rows.extend(unmeasured(rtt, &e)),
        }
    }
    rows
}

/// The RTTs to measure: `all`, or those of them listed in
/// `WISP_BENCH_RTTS` (comma-separated ms), for working on one of them.
pub fn rtts(all: &[u32]) -> Vec<u32> {
    match std::env::var("WISP_BENCH_RTTS") {
        Ok(v) => {
            let want: Vec<u32> = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
            all.iter().copied().filter(|r| want.contains(r)).collect()
        }
        Err(_) => all.to_vec(),
    }
}

/// A picture for the `plot` section when the stall section did not run:
/// one break-before-make move at this RTT.
pub fn measure_plot(rtt: u32) -> Result<PlotData, String> {
    let (_, plot) = measure(rtt, &[Kind::Bbm], 1)?;
    plot.ok_or_else(|| "no break-before-make move was made".into())
}

fn bbm_target(rtt: u32) -> f64 {
    1.5 * f64::from(rtt) + 2.0
}

fn mbb_target() -> f64 {
    EVERY_US as f64 / 1e3 + 1.0
}

fn unmeasured(rtt: u32, why: &str) -> Vec<Row> {
    vec![
        Row::new(
            "stall",
            format!("break-before-make stall, {rtt} ms RTT"),
            "ms",
        )
        .baseline("MPTCP", &[])
        .target(
            Target::AtMost(bbm_target(rtt)),
            format!("≤ 1.5 RTT + 2 ms = {} ms", bbm_target(rtt)),
        )
        .note(why),
        Row::new(
            "stall",
            format!("make-before-break stall, {rtt} ms RTT"),
            "ms",
        )
        .baseline("MPTCP", &[])
        .target(
            Target::AtMost(mbb_target()),
            "≤ one inter-packet gap + 1 ms",
        )
        .note(why),
    ]
}

fn med(v: Option<&Vec<f64>>) -> Option<f64> {
    Stats::of(v.map(Vec::as_slice).unwrap_or(&[])).map(|s| s.median)
}

fn rows_of(rtt: u32, m: &Measured) -> Vec<Row> {
    let (w, mp) = (pi(Proto::Wisp), pi(Proto::Mptcp));
    let get = |map: &BTreeMap<(usize, usize), Vec<f64>>, p, k| {
        map.get(&(p, k)).cloned().unwrap_or_default()
    };
    let in_rtts = |x: Option<f64>| match (x, rtt) {
        (Some(x), r) if r > 0 => format!("{:.2} RTT", x / f64::from(r)),
        _ => "—".into(),
    };
    let noise = format!(
        "noise floor (longest pause in the quiet {QUIET:.0} s before a move): wisp {}, MPTCP {} ms",
        med(m.noise.get(&w)).map_or("—".into(), |x| format!("{x:.1}")),
        med(m.noise.get(&mp)).map_or("—".into(), |x| format!("{x:.1}")),
    );
    let trouble = if m.trouble.is_empty() {
        String::new()
    } else {
        format!("; STREAM ERRORS: {}", m.trouble.join("; "))
    };
    let mut rows = Vec::new();
    for kind in [Kind::Bbm, Kind::Mbb] {
        let k = ki(kind);
        let ws = get(&m.stall, w, k);
        let ms = get(&m.stall, mp, k);
        let wm = Stats::of(&ws).map(|s| s.median);
        let mm = Stats::of(&ms).map(|s| s.median);
        let (target, text) = match kind {
            Kind::Bbm => (
                Target::AtMost(bbm_target(rtt)),
                format!("≤ 1.5 RTT + 2 ms = {} ms", bbm_target(rtt)),
            ),
            Kind::Mbb => (
                Target::AtMost(mbb_target()),
                format!("≤ one inter-packet gap + 1 ms = {} ms", mbb_target()),
            ),
        };
        rows.push(
            Row::new("stall", format!("{} stall, {rtt} ms RTT", kind.name()), "ms")
                .value(&ws)
                .baseline("MPTCP", &ms)
                .target(target, text)
                .note(format!(
                    "{} moves; longest pause either way, {CHUNK} B written every {} ms each way; wisp {}, MPTCP {}; {noise}{trouble}",
                    ws.len(),
                    EVERY_US as f64 / 1e3,
                    in_rtts(wm),
                    in_rtts(mm)
                )),
        );
        if kind == Kind::Bbm {
            rows.push(
                Row::new(
                    "stall",
                    format!("break-before-make stall vs MPTCP, {rtt} ms RTT"),
                    "ms",
                )
                .value(&ws)
                .baseline("MPTCP", &ms)
                .target(Target::RatioAtMost(0.5), "≤ 0.5x MPTCP")
                .note("same moves as the row above"),
            );
        }
        rows.push(
            Row::new("stall", format!("{} recovery, {rtt} ms RTT", kind.name()), "ms")
                .value(&get(&m.recovery, w, k))
                .baseline("MPTCP", &get(&m.recovery, mp, k))
                .note("how stale the receiver's newest byte got at worst against the sender's fixed schedule, less before the move: trickles of old data keep it growing"),
        );
        if kind == Kind::Bbm {
            let tcp: Vec<f64> = m.tcp_stall.into_iter().collect();
            rows.push(
                Row::new(
                    "stall",
                    format!("break-before-make stall, plain TCP, {rtt} ms RTT"),
                    "ms",
                )
                .value(&tcp)
                .note(if m.tcp_fate.is_empty() {
                    "not measured".into()
                } else {
                    m.tcp_fate.clone()
                }),
            );
        }
    }
    // The parts of a break-before-make move, from the library's move line.
    let bbm: Vec<&(Kind, f64, String)> = m.lines.iter().filter(|l| l.0 == Kind::Bbm).collect();
    let mut by_field: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut seen_at = Vec::new();
    let mut detect = Vec::new();
    for (_, at, line) in &bbm {
        let f = moves::move_fields(line);
        for (k, v) in &f {
            if k.ends_with("_ms") {
                by_field.entry(k.clone()).or_default().push(*v);
            }
        }
        seen_at.push(*at);
        if let Some((_, done)) = f.iter().find(|(k, _)| k == "done_ms") {
            detect.push(at - done);
        }
    }
    let count_note = format!(
        "{} of {} break-before-make moves logged by the mobile side",
        bbm.len(),
        m.moves_made.div_ceil(2)
    );
    if !detect.is_empty() {
        rows.push(
            Row::new(
                "stall",
                format!("bbm move at {rtt} ms RTT: address change → detection (≈)"),
                "ms",
            )
            .value(&detect)
            .note("move line seen by the bench (polled every 2 ms) less its done_ms"),
        );
    }
    let mut names: Vec<(String, String)> = FIELDS
        .iter()
        .filter(|(k, _)| by_field.contains_key(*k))
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect();
    for k in by_field.keys() {
        if !FIELDS.iter().any(|(f, _)| f == k) {
            names.push((k.clone(), k.clone()));
        }
    }
    for (k, n) in names {
        rows.push(
            Row::new("stall", format!("bbm move at {rtt} ms RTT: {n}"), "ms")
                .value(&by_field[&k])
                .note(format!("move line field {k}; {count_note}")),
        );
    }
    rows.push(
        Row::new(
            "stall",
            format!("bbm move at {rtt} ms RTT: address change → move line seen"),
            "ms",
        )
        .value(&seen_at)
        .note(count_note),
    );
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_windows() {
        let tr: Vec<(f64, u64)> = vec![(10.0, 1), (10.001, 2), (10.050, 3), (10.051, 4), (10.2, 5)];
        // The 49 ms pause overlaps the change at 10.002.
        let (ms, end) = pause_over(&tr, &[(10.002, 10.003)], 11.0);
        assert!((ms - 49.0).abs() < 1e-6 && end == 10.050);
        // The 149 ms pause overlaps a later span.
        assert!((pause_over(&tr, &[(10.002, 10.003), (10.1, 10.1)], 11.0).0 - 149.0).abs() < 1e-6);
        // Still open when the window closes.
        let (ms, end) = pause_over(&tr, &[(10.06, 10.07)], 10.15);
        assert!((ms - 99.0).abs() < 1e-6 && end == 10.15);
        // A pause outside every span does not count.
        assert!((pause_over(&tr, &[(10.0005, 10.0008)], 11.0).0 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn recovery_counts_trickles() {
        // Lateness 1 ms before, then a trickle ramp to 300 ms, back to 1.
        let mut late: Vec<(f64, f64)> = (0..100).map(|i| (9.0 + i as f64 * 0.01, 1.0)).collect();
        late.push((10.2, 200.0));
        late.push((10.3, 301.0));
        late.extend((0..70).map(|i| (10.31 + i as f64 * 0.01, 1.0)));
        assert_eq!(recovery_in(&late, 10.0, 11.0), Some(300.0));
    }
}
