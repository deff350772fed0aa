//! Exactness under a move storm: one wisp stream carrying self-checking
//! counters both ways (8 KiB written every millisecond in each direction)
//! while the mobile host moves break-before-make 1000 times (50 with
//! `--quick`). Each move goes through one running `ip -batch`; the next one
//! comes 0-20 ms (at random) after the library logged the previous one
//! done, so some land while resent bytes are still on their way.
//!
//! Every byte must arrive exactly once and in order: lost, duplicated and
//! reordered bytes (both directions together) are rows whose target is 0.
//! A move's stall is the longest pause at either receiver that overlaps the
//! moment of the change (pauses under 2 ms are not reported and count as 0).

use super::flow::FlowResult;
use super::moves::{self, epoch, Flow, Mobile, MoveLines, Proto};
use super::{Ctx, Row, Stats, Target};
use std::time::Duration;

/// Pauses shorter than this are not reported by the receivers.
const GAP_MS: f64 = 2.0;
/// How long the library may take to finish one move before it counts as
/// not completed (the storm then goes on).
const MOVE_LIMIT: f64 = 5.0;

pub fn run(ctx: &Ctx) -> Vec<Row> {
    let n = ctx.pick(1000, 50);
    match storm(ctx, n) {
        Ok(rows) => rows,
        Err(e) => vec![
            Row::new("storm", format!("exactness across {n} moves"), "B")
                .target(Target::AtMost(0.0), "0")
                .note(format!("storm failed: {e}")),
        ],
    }
}

fn storm(ctx: &Ctx, n: usize) -> Result<Vec<Row>, String> {
    let w = moves::world("storm", 0)?;
    let mut mob = Mobile::new(&w.lab);
    let gap = GAP_MS.to_string();
    let mut opts = vec!["--every-us", "1000", "--chunk", "8192", "--gap-ms", &gap];
    opts.extend(moves::rt_opts());
    let mut flow = Flow::start(&w, Proto::Wisp, 7500, &opts, false);
    flow.wait_flowing(1 << 20, Duration::from_secs(20))?;
    let mut lines = MoveLines::new(flow.cli_log.as_ref().unwrap());
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    // (ip started, change made, move line seen)
    let mut made: Vec<(f64, f64, Option<f64>)> = Vec::with_capacity(n);
    let started = epoch();
    let mut died = None;
    for i in 0..n {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let pause = (rng % 21) as f64 / 1e3;
        moves::sleep_until(epoch() + pause, &mut [&mut lines]);
        let before = lines.seen.len();
        let (a, t0) = mob.bbm();
        let mut done = None;
        while epoch() < t0 + MOVE_LIMIT {
            lines.poll();
            if lines.seen.len() > before {
                done = Some(lines.seen[before].0);
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        made.push((a, t0, done));
        if done.is_none() {
            if let Ok(Some(st)) = flow.cli.child.try_wait() {
                died = Some(format!("the client exited ({st}) after move {}", i + 1));
                break;
            }
        }
        if ctx.quick && i % 10 == 9 || i % 100 == 99 {
            eprintln!("storm: {} moves in {:.0} s", i + 1, epoch() - started);
        }
    }
    let took = epoch() - started;
    // Let the last move's bytes arrive, then end both directions cleanly.
    std::thread::sleep(Duration::from_millis(300));
    let (up_gaps, down_gaps) = flow.gaps();
    let res = flow.finish(Duration::from_secs(30));
    let mut rows = Vec::new();
    let moves_done = made.iter().filter(|m| m.2.is_some()).count();
    let trouble = match (&res, &died) {
        (_, Some(d)) => format!("; {d}"),
        (Err(e), _) => format!("; {e}"),
        _ => String::new(),
    };
    // Exactness, both directions together.
    let (lost, dup, reord, stray) = match &res {
        Ok((srv, cli)) => {
            let tot = |f: fn(&FlowResult, &FlowResult) -> u64| (f(srv, cli) + f(cli, srv)) as f64;
            (
                tot(|r, o| r.missing + o.sent.saturating_sub(r.reach)),
                tot(|r, _| r.duplicated),
                tot(|r, _| r.reordered),
                tot(|r, _| r.stray),
            )
        }
        Err(_) => (f64::NAN, f64::NAN, f64::NAN, f64::NAN),
    };
    let carried = match &res {
        Ok((srv, cli)) => format!(
            "{:.0} MB up, {:.0} MB down",
            srv.received as f64 / 1e6,
            cli.received as f64 / 1e6
        ),
        Err(_) => "no result".into(),
    };
    for (what, v) in [
        ("bytes lost", lost),
        ("bytes duplicated", dup),
        ("bytes reordered", reord),
        ("stray bytes (partial counter, after the end)", stray),
    ] {
        rows.push(
            Row::new("storm", format!("{what} across {} moves", made.len()), "B")
                .value(&[v])
                .target(Target::AtMost(0.0), "0")
                .note(format!("both directions; {carried}{trouble}")),
        );
    }
    rows.push(
        Row::new("storm", "moves the library completed", "moves")
            .value(&[moves_done as f64])
            .target(Target::AtLeast(n as f64), format!("all {n}"))
            .note(format!(
                "{} made in {took:.0} s ({:.1} per s); a move counts when the mobile side logs it done within {MOVE_LIMIT:.0} s",
                made.len(),
                made.len() as f64 / took
            )),
    );
    // Stalls: the longest pause overlapping each change.
    let stall = |(a, t0): (f64, f64)| -> f64 {
        let (s, e) = (a - 0.002, t0 + 0.02);
        up_gaps
            .iter()
            .chain(down_gaps.iter())
            .filter(|(end, ms)| *end >= s && end - ms / 1e3 <= e)
            .map(|(_, ms)| *ms)
            .fold(0.0, f64::max)
    };
    let stalls: Vec<f64> = made.iter().map(|m| stall((m.0, m.1))).collect();
    let done_after: Vec<f64> = made
        .iter()
        .filter_map(|m| m.2.map(|d| (d - m.1) * 1e3))
        .collect();
    let st = Stats::of(&stalls);
    rows.push(
        Row::new("storm", "stall per move (0 ms RTT)", "ms")
            .value(&stalls)
            .note(match &st {
                Some(s) => format!(
                    "median {:.1}, p90 {:.1}, max {:.1} ms; longest pause either way overlapping the change, pauses < {GAP_MS} ms count as 0",
                    s.median, s.p90, s.max
                ),
                None => "no moves".into(),
            }),
    );
    let ds = Stats::of(&done_after);
    rows.push(
        Row::new("storm", "change → move logged done", "ms")
            .value(&done_after)
            .note(ds.map_or("none done".into(), |s| format!("p90 {:.1} ms", s.p90))),
    );
    let mut raw = String::new();
    for (i, (m, s)) in made.iter().zip(&stalls).enumerate() {
        raw += &format!(
            "move {i} t0={:.4} ip={:.2}ms stall={s:.1}ms done={}\n",
            m.1,
            (m.1 - m.0) * 1e3,
            m.2.map_or("never".into(), |d| format!("+{:.1}ms", (d - m.1) * 1e3))
        );
    }
    let _ = std::fs::write(ctx.out.join("storm.txt"), raw);
    // The library's logs, for moves that did not complete.
    for (log, name) in [
        (&flow.cli_log, "storm-mobile.wisp.log"),
        (&flow.srv_log, "storm-corr.wisp.log"),
    ] {
        if let Some(l) = log {
            let _ = std::fs::copy(&l.path, ctx.out.join(name));
        }
    }
    Ok(rows)
}
