//! The counter stream of `wisp-flow` (`src/bin/wisp-flow.rs`), the probe
//! program of the mobility sections: what goes on the wire, the receiver's
//! exactness check, and the bench's reading of the program's output.
//!
//! Each direction carries 8-byte big-endian counters 0, 1, 2, ... and ends
//! with [`MARK`]. The receiver classifies every counter that is not the next
//! one expected: a jump forward leaves a range of *missing* counters; a
//! counter that fills part of such a range later was *reordered*; any other
//! counter below the expected one is a *duplicate*. Whatever is still
//! missing at the end (plus what the sender sent but never arrived) was
//! *lost*. A correct stream has all three at zero.

use std::collections::BTreeMap;

/// The end marker of a direction.
pub const MARK: u64 = u64::MAX;

/// `n` counters from `first`, on the wire.
pub fn wire(first: u64, n: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(n as usize * 8);
    for c in first..first + n {
        v.extend_from_slice(&c.to_be_bytes());
    }
    v
}

/// The receiving side's check of one direction.
#[derive(Debug, Default)]
pub struct Checker {
    /// Bytes of a counter split across two reads.
    part: Vec<u8>,
    /// The counter expected next (one past the highest seen).
    pub expected: u64,
    /// Ranges `[start, end)` skipped over and not (yet) filled.
    missing: BTreeMap<u64, u64>,
    /// Counters seen (the marker not counted).
    pub counters: u64,
    pub reordered: u64,
    pub duplicated: u64,
    /// The end marker has arrived.
    pub marked: bool,
    /// Bytes that came after the end marker.
    pub after_mark: u64,
}

impl Checker {
    pub fn new() -> Checker {
        Checker::default()
    }

    /// Take received bytes.
    pub fn feed(&mut self, mut data: &[u8]) {
        if !self.part.is_empty() {
            let need = 8 - self.part.len();
            let take = need.min(data.len());
            self.part.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.part.len() < 8 {
                return;
            }
            let v = u64::from_be_bytes(self.part[..8].try_into().unwrap());
            self.part.clear();
            self.one(v);
        }
        let whole = data.len() / 8 * 8;
        let mut chunks = data[..whole].chunks_exact(8);
        for c in &mut chunks {
            let v = u64::from_be_bytes(c.try_into().unwrap());
            if self.marked {
                self.after_mark += 8;
                continue;
            }
            // The common case, without the map.
            if v == self.expected {
                self.expected += 1;
                self.counters += 1;
            } else {
                self.one(v);
            }
        }
        self.part.extend_from_slice(&data[whole..]);
    }

    fn one(&mut self, v: u64) {
        if self.marked {
            self.after_mark += 8;
            return;
        }
        if v == MARK {
            self.marked = true;
            return;
        }
        self.counters += 1;
        if v == self.expected {
            self.expected += 1;
        } else if v > self.expected {
            self.missing.insert(self.expected, v);
            self.expected = v + 1;
        } else {
            // Inside a missing range? Then it came late; otherwise twice.
            let hit = self
                .missing
                .range(..=v)
                .next_back()
                .filter(|(_, &end)| v < end)
                .map(|(&s, &e)| (s, e));
            match hit {
                Some((s, e)) => {
                    self.reordered += 1;
                    self.missing.remove(&s);
                    if s < v {
                        self.missing.insert(s, v);
                    }
                    if v + 1 < e {
                        self.missing.insert(v + 1, e);
                    }
                }
                None => self.duplicated += 1,
            }
        }
    }

    /// Counters skipped and never filled so far.
    pub fn missing(&self) -> u64 {
        self.missing.iter().map(|(s, e)| e - s).sum()
    }

    /// Bytes left over that do not make a whole counter.
    pub fn stray(&self) -> u64 {
        self.part.len() as u64 + self.after_mark
    }
}

/// One `result` line of wisp-flow.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowResult {
    /// Counter bytes this side sent and received.
    pub sent: u64,
    pub received: u64,
    /// Bytes missing inside the received sequence, reordered, duplicated,
    /// and stray (partial counter, bytes after the marker).
    pub missing: u64,
    pub reordered: u64,
    pub duplicated: u64,
    pub stray: u64,
    /// One past the highest counter received, in bytes.
    pub reach: u64,
    pub marked: bool,
}

/// `key=N` in a line of words.
pub fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

impl FlowResult {
    pub fn parse(out: &str) -> Option<FlowResult> {
        let line = out.lines().rev().find(|l| l.starts_with("result "))?;
        let f = |k| field(line, k).map(|x| x as u64);
        Some(FlowResult {
            sent: f("sent")?,
            received: f("received")?,
            missing: f("missing")?,
            reordered: f("reordered")?,
            duplicated: f("duplicated")?,
            stray: f("stray")?,
            reach: f("reach")?,
            marked: f("marked")? == 1,
        })
    }
}

/// The `gap END MS` lines: (end of the pause, epoch seconds; its length, ms).
pub fn gaps(out: &str) -> Vec<(f64, f64)> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("gap ")?.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}

/// The last `progress rx=N tx=M` line: (rx, tx) bytes.
pub fn progress(out: &str) -> (u64, u64) {
    out.lines()
        .rev()
        .find(|l| l.starts_with("progress "))
        .map(|l| {
            (
                field(l, "rx").unwrap_or(0.0) as u64,
                field(l, "tx").unwrap_or(0.0) as u64,
            )
        })
        .unwrap_or((0, 0))
}

/// The longest pause that ended in `[from, to)` (epoch seconds), 0 if none
/// was reported.
pub fn longest_gap(gaps: &[(f64, f64)], from: f64, to: f64) -> f64 {
    gaps.iter()
        .filter(|(end, _)| *end >= from && *end < to)
        .map(|(_, ms)| *ms)
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_stream_in_odd_pieces() {
        let mut c = Checker::new();
        let mut w = wire(0, 1000);
        w.extend_from_slice(&MARK.to_be_bytes());
        for piece in w.chunks(13) {
            c.feed(piece);
        }
        assert_eq!((c.counters, c.expected, c.missing()), (1000, 1000, 0));
        assert_eq!((c.reordered, c.duplicated, c.stray()), (0, 0, 0));
        assert!(c.marked);
    }

    #[test]
    fn lost_reordered_duplicated() {
        let mut c = Checker::new();
        c.feed(&wire(0, 10));
        c.feed(&wire(15, 5)); // 10..15 missing
        c.feed(&wire(12, 1)); // late
        c.feed(&wire(3, 2)); // twice
        c.feed(&wire(20, 1));
        assert_eq!(c.missing(), 4);
        assert_eq!(c.reordered, 1);
        assert_eq!(c.duplicated, 2);
        c.feed(&wire(10, 2));
        c.feed(&wire(13, 2));
        assert_eq!(c.missing(), 0);
        assert_eq!(c.reordered, 5);
        c.feed(&MARK.to_be_bytes());
        c.feed(&[1, 2, 3]);
        assert_eq!(c.stray(), 3);
    }

    #[test]
    fn output_lines() {
        let out = "connected\nprogress rx=8 tx=16\ngap 100.5 12.0\ngap 101.0 40.5\n\
                   progress rx=80 tx=160\nresult sent=160 received=80 missing=0 reordered=0 \
                   duplicated=0 stray=0 reach=80 marked=1 OK\n";
        assert_eq!(progress(out), (80, 160));
        let g = gaps(out);
        assert_eq!(g, vec![(100.5, 12.0), (101.0, 40.5)]);
        assert_eq!(longest_gap(&g, 100.0, 101.0), 12.0);
        assert_eq!(longest_gap(&g, 100.0, 102.0), 40.5);
        assert_eq!(longest_gap(&g, 102.0, 103.0), 0.0);
        let r = FlowResult::parse(out).unwrap();
        assert_eq!((r.sent, r.received, r.reach, r.marked), (160, 80, 80, true));
    }
}
