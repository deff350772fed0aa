//! The picture: bytes received over time across one break-before-make
//! move, for wisp, MPTCP and plain TCP on the same move (the downlink of
//! the `stall` section's first such move, at 20 ms RTT when the lab has a
//! delay relay, else at 0). Written as hand-made SVG to `move.svg` in the
//! output directory. When the `stall` section ran in the same invocation
//! its data is used; otherwise one move is made for the picture.

use super::stall::{self, PlotData, CHUNK, EVERY_US};
use super::{Ctx, Row};
use std::fmt::Write as _;

/// The RTT the picture prefers.
const RTT: u32 = 20;

pub fn run(ctx: &Ctx) -> Vec<Row> {
    let kept = stall::PLOTS.lock().unwrap().clone();
    let data = kept
        .iter()
        .find(|p| p.rtt_ms == RTT)
        .or_else(|| kept.iter().find(|p| p.rtt_ms == 0))
        .cloned()
        .map(Ok)
        .unwrap_or_else(|| stall::measure_plot(RTT).or_else(|_| stall::measure_plot(0)));
    let p = match data {
        Ok(p) => p,
        Err(e) => {
            return vec![
                Row::new("plot", "picture of a move", "ms").note(format!("no picture: {e}"))
            ]
        }
    };
    let path = ctx.out.join("move.svg");
    let note = match std::fs::write(&path, svg(&p)) {
        Ok(()) => "pictured in move.svg (output directory)".to_string(),
        Err(e) => format!("could not write {}: {e}", path.display()),
    };
    p.series
        .iter()
        .map(|s| {
            let v: Vec<f64> = s.stall.into_iter().collect();
            Row::new(
                "plot",
                format!("pictured move ({} ms RTT): {} stall", p.rtt_ms, s.name),
                "ms",
            )
            .value(&v)
            .note(if s.stall.is_some() {
                note.clone()
            } else {
                format!("nothing received after the move; {note}")
            })
        })
        .collect()
}

fn color(name: &str) -> &'static str {
    match name {
        "wisp" => "#1f77b4",
        "MPTCP" => "#e6550d",
        _ => "#7f7f7f",
    }
}

/// A tick label: no "-0", no float noise.
fn label(v: f64) -> String {
    let r = (v * 1000.0).round() / 1000.0;
    if r == 0.0 {
        "0".into()
    } else {
        format!("{r}")
    }
}

/// A step of 1, 2 or 5 times a power of ten giving about `n` ticks.
fn tick_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-9);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

/// The SVG: x in ms since the move, y in KiB received since the move, the
/// sender's schedule as a dashed reference line.
pub fn svg(p: &PlotData) -> String {
    let rtt = f64::from(p.rtt_ms);
    let rate = CHUNK as f64 / 1024.0 / (EVERY_US as f64 / 1e3); // KiB per ms
                                                                // Show every stream that recovered until it has caught up with what
                                                                // the sender wrote (within 8 KiB), with a margin.
    let caught_at: Vec<Option<f64>> = p
        .series
        .iter()
        .map(|s| {
            let stall = s.stall?;
            s.points
                .iter()
                .find(|&&(x, y)| x > stall && y >= x * rate - 8.0)
                .map(|&(x, _)| x)
        })
        .collect();
    let caught = caught_at.iter().flatten().fold(0.0, |a: f64, &b| a.max(b));
    let x0 = -(50f64.max(2.0 * rtt));
    let x1 = (1.15 * caught + 2.0 * rtt).clamp(150.0, p.after_ms.max(150.0));
    let mut y0: f64 = x0 * rate;
    let mut y1: f64 = x1 * rate;
    for s in &p.series {
        for &(x, y) in &s.points {
            if x >= x0 && x <= x1 {
                y0 = y0.min(y);
                y1 = y1.max(y);
            }
        }
    }
    let (w, h) = (900.0, 480.0);
    let (l, r, t, b) = (70.0, 260.0, 50.0, 55.0);
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| h - b - (y - y0) / (y1 - y0).max(1e-9) * (h - t - b);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">Bytes received across a break-before-make move, {} ms RTT</text>"#,
        (l + w - r) / 2.0,
        p.rtt_ms
    );
    let _ = writeln!(
        o,
        r##"<text x="{}" y="38" text-anchor="middle" fill="#555">correspondent → mobile host, {CHUNK} B written every {} ms; the same move for all three</text>"##,
        (l + w - r) / 2.0,
        EVERY_US as f64 / 1e3
    );
    // Grid and ticks.
    let xs = tick_step(x1 - x0, 8.0);
    let mut x = (x0 / xs).ceil() * xs;
    while x <= x1 {
        let _ = writeln!(
            o,
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#e5e5e5"/><text x="{0:.1}" y="{3}" text-anchor="middle">{4}</text>"##,
            px(x),
            t,
            h - b,
            h - b + 16.0,
            label(x)
        );
        x += xs;
    }
    let ys = tick_step(y1 - y0, 6.0);
    let mut y = (y0 / ys).ceil() * ys;
    while y <= y1 {
        let _ = writeln!(
            o,
            r##"<line x1="{1}" y1="{0:.1}" x2="{2}" y2="{0:.1}" stroke="#e5e5e5"/><text x="{3}" y="{4:.1}" text-anchor="end">{5}</text>"##,
            py(y),
            l,
            w - r,
            l - 6.0,
            py(y) + 4.0,
            label(y)
        );
        y += ys;
    }
    let _ = writeln!(
        o,
        r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        w - l - r,
        h - t - b
    );
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">ms since the move</text>"#,
        (l + w - r) / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        o,
        r#"<text x="18" y="{0}" text-anchor="middle" transform="rotate(-90 18 {0})">KiB received since the move</text>"#,
        (t + h - b) / 2.0
    );
    // The move, and what the sender wrote.
    let _ = writeln!(
        o,
        r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#333" stroke-dasharray="4 3"/><text x="{3:.1}" y="{4}">move</text>"##,
        px(0.0),
        t,
        h - b,
        px(0.0) + 4.0,
        t + 14.0
    );
    let _ = writeln!(
        o,
        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="2 3"/>"##,
        px(x0),
        py(x0 * rate),
        px(x1),
        py(x1 * rate)
    );
    // The receivers: a step line per protocol (bytes only ever go up),
    // wisp drawn last so that it is on top.
    for s in p.series.iter().rev() {
        let mut d = String::new();
        let mut last: Option<f64> = None;
        for &(x, y) in s.points.iter().filter(|(x, _)| *x >= x0 && *x <= x1) {
            match last {
                None => {
                    let _ = write!(d, "M{:.1},{:.1}", px(x), py(y));
                }
                Some(ly) => {
                    let _ = write!(d, " L{:.1},{:.1} L{:.1},{:.1}", px(x), py(ly), px(x), py(y));
                }
            }
            last = Some(y);
        }
        if let Some(ly) = last {
            // Flat to the right edge: nothing more came in view.
            let _ = write!(d, " L{:.1},{:.1}", px(x1), py(ly));
        }
        let _ = writeln!(
            o,
            r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.8"/>"#,
            color(&s.name)
        );
    }
    // Legend.
    let mut ly = t + 10.0;
    let lx = w - r + 15.0;
    for (s, caught) in p.series.iter().zip(&caught_at) {
        let what = match (s.stall, caught) {
            (Some(ms), Some(c)) => format!("stall {ms:.0} ms, caught up at {c:.0} ms"),
            (Some(ms), None) => format!("stall {ms:.0} ms"),
            (None, _) => "no byte after the move".to_string(),
        };
        let _ = writeln!(
            o,
            r##"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{x}" y="{}">{}</text><text x="{x}" y="{}" fill="#555">{what}</text>"##,
            lx + 22.0,
            color(&s.name),
            ly + 4.0,
            s.name,
            ly + 19.0,
            x = lx + 28.0,
        );
        ly += 38.0;
    }
    let _ = writeln!(
        o,
        r##"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="#999" stroke-dasharray="2 3"/><text x="{}" y="{}">written by the sender</text>"##,
        lx + 22.0,
        lx + 28.0,
        ly + 4.0
    );
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stall::Series;

    #[test]
    fn ticks() {
        assert_eq!(tick_step(100.0, 10.0), 10.0);
        assert_eq!(tick_step(130.0, 8.0), 20.0);
        assert_eq!(tick_step(3.0, 6.0), 0.5);
        assert_eq!(label(-0.0), "0");
        assert_eq!(label(0.1 + 0.2), "0.3");
        assert_eq!(label(-50.0), "-50");
    }

    #[test]
    fn svg_has_every_series() {
        let p = PlotData {
            rtt_ms: 0,
            before_ms: 200.0,
            after_ms: 1000.0,
            series: vec![
                Series {
                    name: "wisp".into(),
                    stall: Some(32.0),
                    points: vec![(-10.0, -10.0), (0.0, 0.0), (32.0, 0.0), (33.0, 33.0)],
                },
                Series {
                    name: "plain TCP".into(),
                    stall: None,
                    points: vec![(-10.0, -10.0), (0.0, 0.0)],
                },
            ],
        };
        let s = svg(&p);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains(">stall 32 ms, caught up at 33 ms<"));
        assert!(s.contains(">no byte after the move<"));
        assert_eq!(s.matches("<path").count(), 2);
    }
}
