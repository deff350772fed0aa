//! Samples, summaries, targets and the table the suite prints.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What every section gets: how hard to try and where to put files.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Repetitions of each measurement (medians are taken over these).
    pub runs: usize,
    /// A shorter run for trying the suite out (fewer repetitions, smaller
    /// transfers); its numbers are not the ones to publish.
    pub quick: bool,
    /// Where sections leave their raw data and pictures.
    pub out: PathBuf,
}

impl Ctx {
    /// `full` in a full run, `quick` in a quick one.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// The summary of repeated measurements of one figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// 90th percentile (nearest rank): storms report their tail with it.
    pub p90: f64,
}

impl Stats {
    /// Summarise samples; `None` when there are none (a figure that could not
    /// be measured is shown as such, never as zero).
    pub fn of(samples: &[f64]) -> Option<Stats> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        let rank = ((0.9 * n as f64).ceil() as usize).clamp(1, n);
        Some(Stats {
            n,
            median,
            min: v[0],
            max: v[n - 1],
            p90: v[rank - 1],
        })
    }
}

/// What the project is going for on a figure, and how to tell if it is met.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Informational only: no target was set.
    None,
    /// The median must be at most this (in the row's unit).
    AtMost(f64),
    /// The median must be at least this.
    AtLeast(f64),
    /// median / baseline median at least this (throughput).
    RatioAtLeast(f64),
    /// median / baseline median at most this (stall vs MPTCP's).
    RatioAtMost(f64),
    /// median - baseline median at most this (added cost per call).
    AddedAtMost(f64),
}

/// One line of the table: a figure, its baseline from the same run, and the
/// verdict against its target.
#[derive(Clone, Debug)]
pub struct Row {
    /// Section name (`stall`, `throughput`, ...).
    pub section: &'static str,
    /// What was measured, in words: "break-before-make stall, 20 ms RTT".
    pub figure: String,
    pub unit: &'static str,
    pub value: Option<Stats>,
    /// The baseline's name ("plain TCP", "MPTCP", "Kamailio", "without
    /// library") and its figure from the same run.
    pub baseline: Option<(String, Option<Stats>)>,
    pub target: Target,
    /// The target in words, as the issue states it ("≤ 1.5 RTT + 2 ms").
    pub target_text: String,
    /// Anything a reader needs to read the figure right.
    pub note: String,
}

impl Row {
    pub fn new(section: &'static str, figure: impl Into<String>, unit: &'static str) -> Row {
        Row {
            section,
            figure: figure.into(),
            unit,
            value: None,
            baseline: None,
            target: Target::None,
            target_text: String::new(),
            note: String::new(),
        }
    }

    pub fn value(mut self, samples: &[f64]) -> Row {
        self.value = Stats::of(samples);
        self
    }

    pub fn baseline(mut self, name: impl Into<String>, samples: &[f64]) -> Row {
        self.baseline = Some((name.into(), Stats::of(samples)));
        self
    }

    pub fn target(mut self, target: Target, text: impl Into<String>) -> Row {
        self.target = target;
        self.target_text = text.into();
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }

    /// median / baseline median, when both exist and the baseline is not 0.
    pub fn ratio(&self) -> Option<f64> {
        let v = self.value.as_ref()?.median;
        let b = self.baseline.as_ref()?.1.as_ref()?.median;
        (b != 0.0).then(|| v / b)
    }

    /// "met", "missed by ...", "n/a" (no target) or "not measured".
    pub fn verdict(&self) -> String {
        let Some(v) = self.value.as_ref().map(|s| s.median) else {
            return "not measured".into();
        };
        let base = self
            .baseline
            .as_ref()
            .and_then(|(_, s)| s.as_ref())
            .map(|s| s.median);
        let unit = self.unit;
        match self.target {
            Target::None => "n/a".into(),
            Target::AtMost(t) => miss(v <= t, || format!("{} {unit}", fmt_num(v - t))),
            Target::AtLeast(t) => miss(v >= t, || format!("{} {unit}", fmt_num(t - v))),
            Target::RatioAtLeast(t) => match self.ratio() {
                Some(r) => miss(r >= t, || format!("{}x", fmt_num(t - r))),
                None => "no baseline".into(),
            },
            Target::RatioAtMost(t) => match self.ratio() {
                Some(r) => miss(r <= t, || format!("{}x", fmt_num(r - t))),
                None => "no baseline".into(),
            },
            Target::AddedAtMost(t) => match base {
                Some(b) => miss(v - b <= t, || format!("{} {unit}", fmt_num(v - b - t))),
                None => "no baseline".into(),
            },
        }
    }
}

fn miss(met: bool, by: impl FnOnce() -> String) -> String {
    if met {
        "met".into()
    } else {
        format!("missed by {}", by())
    }
}

/// Three significant digits, without exponent for the ranges we print.
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn fmt_stats(s: &Option<Stats>) -> String {
    match s {
        Some(s) => format!(
            "{} ({}–{}, n={})",
            fmt_num(s.median),
            fmt_num(s.min),
            fmt_num(s.max),
            s.n
        ),
        None => "—".into(),
    }
}

/// The table as Markdown, the form BENCHMARKS.md holds.
pub fn markdown(rows: &[Row]) -> String {
    let mut t = String::new();
    t.push_str("| figure | wisp: median (min–max, n) | baseline: median (min–max) | ratio | target | verdict | note |\n");
    t.push_str("|---|---|---|---|---|---|---|\n");
    for r in rows {
        let (bname, bstats) = match &r.baseline {
            Some((n, s)) => (n.as_str(), fmt_stats(s)),
            None => ("", "—".into()),
        };
        let base = if bname.is_empty() {
            bstats
        } else {
            format!("{bname}: {bstats}")
        };
        let ratio = r
            .ratio()
            .map(|x| format!("{}x", fmt_num(x)))
            .unwrap_or("—".into());
        let _ = writeln!(
            t,
            "| {} [{}] | {} | {} | {} | {} | {} | {} |",
            r.figure,
            r.unit,
            fmt_stats(&r.value),
            base,
            ratio,
            r.target_text,
            r.verdict(),
            r.note.replace('|', "/")
        );
    }
    t
}

/// The rows as JSON lines (hand-written: the suite needs no serde), for
/// scripts and for comparing runs.
pub fn json_lines(rows: &[Row]) -> String {
    fn st(s: &Option<Stats>) -> String {
        match s {
            Some(s) => format!(
                "{{\"n\":{},\"median\":{},\"min\":{},\"max\":{},\"p90\":{}}}",
                s.n, s.median, s.min, s.max, s.p90
            ),
            None => "null".into(),
        }
    }
    let mut out = String::new();
    for r in rows {
        let (bn, bs) = match &r.baseline {
            Some((n, s)) => (json_str(n), st(s)),
            None => ("null".into(), "null".into()),
        };
        let _ = writeln!(
            out,
            "{{\"section\":{},\"figure\":{},\"unit\":{},\"value\":{},\"baseline_name\":{},\"baseline\":{},\"ratio\":{},\"target\":{},\"verdict\":{},\"note\":{}}}",
            json_str(r.section),
            json_str(&r.figure),
            json_str(r.unit),
            st(&r.value),
            bn,
            bs,
            r.ratio().map(|x| x.to_string()).unwrap_or("null".into()),
            json_str(&r.target_text),
            json_str(&r.verdict()),
            json_str(&r.note)
        );
    }
    out
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Write a section's C program into `out/<section>/<name>.c` (next to its
/// results, so a reader can see what ran) and compile it with `cc -O2` and
/// `flags`; returns the binary's absolute path.
pub fn compile_c(
    out: &Path,
    section: &str,
    name: &str,
    source: &str,
    flags: &[&str],
) -> Result<PathBuf, String> {
    let dir = out.join(section);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let src = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    std::fs::write(&src, source).map_err(|e| e.to_string())?;
    let st = Command::new("cc")
        .arg("-O2")
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .status()
        .map_err(|e| format!("cc: {e}"))?;
    if !st.success() {
        return Err(format!("cc failed: {st}"));
    }
    bin.canonicalize().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_median_spread_p90() {
        let s = Stats::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(
            (s.n, s.median, s.min, s.max, s.p90),
            (5, 3.0, 1.0, 5.0, 5.0)
        );
        let s = Stats::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Stats::of(&[]).is_none());
        assert!(Stats::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn verdicts() {
        let r = Row::new("x", "stall", "ms")
            .value(&[3.0])
            .target(Target::AtMost(2.0), "≤ 2 ms");
        assert_eq!(r.verdict(), "missed by 1.00 ms");
        let r = Row::new("x", "tput", "Gbit/s")
            .value(&[9.9])
            .baseline("plain TCP", &[10.0])
            .target(Target::RatioAtLeast(0.98), "≥ 0.98x");
        assert_eq!(r.verdict(), "met");
        let r = Row::new("x", "ns/call", "ns")
            .value(&[110.0])
            .baseline("without", &[100.0])
            .target(Target::AddedAtMost(5.0), "≤ +5 ns");
        assert_eq!(r.verdict(), "missed by 5.00 ns");
        let r = Row::new("x", "y", "ms").target(Target::AtMost(1.0), "");
        assert_eq!(r.verdict(), "not measured");
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\\n\u{1}"), "\"a\\\"b\\\\\\n\\u0001\"");
        let rows = [Row::new("s", "f", "ms").value(&[1.0])];
        let j = json_lines(&rows);
        assert!(j.starts_with("{\"section\":\"s\""), "{j}");
        assert!(markdown(&rows).contains("| f [ms] | 1.00 (1.00–1.00, n=1)"));
    }
}
