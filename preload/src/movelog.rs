//! The one structured log line each move of a stream gets.
//!
//! A move's stages finish on different threads: the SIP thread sends the
//! re-INVITE and sees its answer, a mover thread brings the new connection
//! up and resends. Each stage stamps its time here (measured from the
//! first netlink event of the change, "detection"); whichever of the two
//! threads finishes last writes the line, so it always has every stage that
//! happened:
//!
//! ```text
//! move stream=… n=2 old=10.1.2.2 new=10.1.3.2 peer=10.1.1.2:5060
//!   detect_to_invite_ms=3.10 invite_to_answer_ms=0.61 tcp_up_ms=3.30
//!   first_resent_ms=3.52 ack_ms=3.71 stall_ms=0.62 resent=81234 code=200 attempts=1
//! ```
//!
//! `tcp_up_ms`, `first_resent_ms` and `ack_ms` count from detection too;
//! `stall_ms` is how long the program's calls were held (freeze to swap).
//! A stage that did not happen prints `-`.

use parking_lot::Mutex;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// What the mover knows when the stream runs on its new connection.
pub struct Resumed {
    pub n: u64,
    pub old: IpAddr,
    pub new: IpAddr,
    pub peer: SocketAddr,
    pub tcp_up: Option<Instant>,
    pub first_resent: Option<Instant>,
    pub ack: Option<Instant>,
    pub stall: Duration,
    pub resent: u64,
    pub attempts: u32,
}

#[derive(Default)]
struct Record {
    detected: Option<Instant>,
    invite: Option<Instant>,
    /// When the re-INVITE's final answer came, and its status (408 when
    /// it timed out).
    answer: Option<(Instant, u16)>,
    resumed: Option<Resumed>,
}

/// The move under way on one stream, if any.
#[derive(Default)]
pub struct MoveLog {
    rec: Mutex<Record>,
}

impl MoveLog {
    /// The network changed at `at` (its first event). A move already under
    /// way keeps its earlier detection time: the stall started then.
    pub fn detected(&self, at: Instant) {
        let mut r = self.rec.lock();
        if r.detected.is_none() {
            r.detected = Some(at);
        }
    }

    pub fn invite_sent(&self, at: Instant) {
        let mut r = self.rec.lock();
        if r.invite.is_none() {
            r.invite = Some(at);
        }
    }

    /// The move's re-INVITE is finished with `code`.
    pub fn answered(&self, stream: &impl std::fmt::Display, at: Instant, code: u16) {
        let mut r = self.rec.lock();
        r.answer = Some((at, code));
        if r.resumed.is_some() {
            emit(stream, &mut r);
        }
    }

    /// The stream runs on its new connection. Logs now unless a re-INVITE
    /// is still waiting for its answer.
    pub fn resumed(&self, stream: &impl std::fmt::Display, done: Resumed) {
        let mut r = self.rec.lock();
        r.resumed = Some(done);
        if r.invite.is_none() || r.answer.is_some() {
            emit(stream, &mut r);
        }
    }
}

fn emit(stream: &impl std::fmt::Display, r: &mut Record) {
    let rec = std::mem::take(r);
    let Some(m) = rec.resumed else { return };
    let base = rec.detected.or(rec.invite);
    let since = |t: Option<Instant>, from: Option<Instant>| match (t, from) {
        (Some(t), Some(f)) => format!("{:.2}", t.saturating_duration_since(f).as_secs_f64() * 1e3),
        _ => "-".into(),
    };
    let (answer_at, code) = match rec.answer {
        Some((t, c)) => (Some(t), c.to_string()),
        None => (None, "-".into()),
    };
    info!(
        "move stream={stream} n={} old={} new={} peer={} detect_to_invite_ms={} invite_to_answer_ms={} tcp_up_ms={} first_resent_ms={} ack_ms={} stall_ms={:.2} resent={} code={code} attempts={}",
        m.n,
        m.old,
        m.new,
        m.peer,
        since(rec.invite, rec.detected),
        since(answer_at, rec.invite),
        since(m.tcp_up, base),
        since(m.first_resent, base),
        since(m.ack, base),
        m.stall.as_secs_f64() * 1e3,
        m.resent,
        m.attempts,
    );
}
