//! The first bytes of a TCP connection that resumes a moved stream, and
//! the arithmetic of what each side resends.
//!
//! After a re-INVITE has named the new address, one side connects and
//! sends an [`Init`]; the other answers with an [`Ack`]; from the next byte
//! on, the connection carries the stream as plain TCP again. The handshake
//! does two jobs, as MPTCP's MP_JOIN does (RFC 8684 §3.2):
//!
//! - It proves the key. Anyone can open a TCP connection to a listening
//!   port; only the holder of the stream key can make the MACs, so an
//!   attacker who saw the re-INVITE still cannot take the stream over.
//! - It carries each side's rx, the count of stream bytes it has taken
//!   from the dead connection, authenticated. The responder resends its
//!   own stream from the initiator's rx ([`plan`]): exactly the bytes lost
//!   in flight, no more, no less.
//! - The initiator does not wait a round trip to learn the responder's rx:
//!   right behind its Init it resends everything its old connection had
//!   not seen acknowledged, starting at `from` (named in the Init), and the
//!   responder drops the first `rx - from` of those bytes, which it already
//!   has ([`Accepted::skip`]). That overlap is at most what was in flight,
//!   and it saves the round trip that would otherwise stand between the new
//!   connection and the first resent byte: a break-before-make move then
//!   stalls the receiver of the mobile side's data for the TCP handshake
//!   plus one way, 1.5 RTT.
//!
//! Wire format, all integers big-endian, fixed sizes so a reader knows the
//! length from the type byte alone:
//!
//! ```text
//! Init (78 bytes)                        Ack (46 bytes)
//!  0  magic    "WISP"                     0  magic    "WISP"
//!  4  version  2                          4  version  2
//!  5  type     1                          5  type     2
//!  6  stream   16 bytes                   6  rx       u64
//! 22  counter  u64                       14  mac      32 bytes
//! 30  rx       u64
//! 38  from     u64
//! 46  mac      32 bytes
//!
//! Init mac = HMAC-SHA256(initiator's resume key, "init" || stream || counter || rx || from)
//! Ack  mac = HMAC-SHA256(responder's resume key, "ack" || stream || counter || rx)
//! ```
//!
//! The Ack names neither stream nor counter: its MAC covers the ones from
//! the Init, so an Ack made for any other Init does not verify. The resume
//! keys are per direction ([`crate::keys`]), so an Init reflected back to
//! its maker does not verify either; the counter (each value opens at most
//! one connection, [`MoveCounter`]) stops a recorded Init from being
//! replayed.
//!
//! Everything after the handshake is stream data. The decoders consume
//! exactly one message and leave the rest of the caller's buffer alone.

use crate::ids::StreamId;
use crate::keys::{MacKey, MoveCounter, StreamKey};
use crate::ring::{ReplayRing, RingError};
use std::fmt;

pub const MAGIC: [u8; 4] = *b"WISP";
pub const VERSION: u8 = 2;
/// Magic, version, type: enough to know the message's length.
pub const HEADER_LEN: usize = 6;
pub const INIT_LEN: usize = HEADER_LEN + 16 + 8 + 8 + 8 + 32;
pub const ACK_LEN: usize = HEADER_LEN + 8 + 32;

/// An Init's `from` when no stream bytes follow it: the initiator resends
/// only after the Ack, from the responder's rx (a make-before-break move,
/// where the old path still delivers what was in flight).
pub const LAZY: u64 = u64::MAX;

const TYPE_INIT: u8 = 1;
const TYPE_ACK: u8 = 2;

/// Why a handshake failed or a stream cannot be resumed. Each one ends the
/// new connection; the stream itself goes on waiting for a good one,
/// except for [`ResumeError::Unresumable`] and [`ResumeError::PeerAhead`],
/// after which it can never be made exact again and must be reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeError {
    /// Not a wisp handshake at all (a port scanner, a stray client).
    BadMagic,
    /// A wisp handshake of a version we do not speak.
    BadVersion(u8),
    /// A message type we do not know.
    BadType(u8),
    /// A well-formed message of the other direction (an Ack where an Init
    /// belongs, or the reverse).
    Unexpected,
    /// The MAC does not verify: wrong key, or a field altered.
    BadMac,
    /// A counter at or below one already used: a replayed handshake.
    StaleCounter { counter: u64, last: u64 },
    /// No stream by that id here.
    UnknownStream(StreamId),
    /// The peer needs bytes from `peer_rx` on, but we only hold them from
    /// `ring_start`: they were dropped before the peer had them.
    Unresumable { peer_rx: u64, ring_start: u64 },
    /// The peer claims to have received more than we ever sent.
    PeerAhead { peer_rx: u64, tx: u64 },
    /// The initiator resends from `from`, but we have received only `rx`:
    /// the bytes between were acknowledged to it and then lost here.
    Gap { from: u64, rx: u64 },
}

impl fmt::Display for ResumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResumeError::BadMagic => write!(f, "not a wisp resume handshake (bad magic)"),
            ResumeError::BadVersion(v) => write!(f, "resume handshake version {v} unsupported"),
            ResumeError::BadType(t) => write!(f, "unknown resume message type {t}"),
            ResumeError::Unexpected => write!(f, "resume message of the wrong direction"),
            ResumeError::BadMac => write!(f, "resume MAC does not verify"),
            ResumeError::StaleCounter { counter, last } => write!(
                f,
                "resume counter {counter} not above {last} (replayed handshake)"
            ),
            ResumeError::UnknownStream(id) => write!(f, "no stream {id}"),
            ResumeError::Unresumable {
                peer_rx,
                ring_start,
            } => write!(
                f,
                "peer needs bytes from {peer_rx} but they are held only from {ring_start}"
            ),
            ResumeError::PeerAhead { peer_rx, tx } => write!(
                f,
                "peer claims {peer_rx} bytes received, only {tx} were sent"
            ),
            ResumeError::Gap { from, rx } => write!(
                f,
                "peer resends from {from} but only {rx} bytes arrived here"
            ),
        }
    }
}

impl std::error::Error for ResumeError {}

/// The initiator's opening message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    pub stream_id: StreamId,
    /// The claim's number; each value opens at most one connection.
    pub counter: u64,
    /// Stream bytes the initiator has received.
    pub rx: u64,
    /// Where the initiator's stream bytes that follow the Init start.
    pub from: u64,
    pub mac: [u8; 32],
}

/// The responder's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Stream bytes the responder has received.
    pub rx: u64,
    pub mac: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Init(Init),
    Ack(Ack),
}

fn header(kind: u8) -> [u8; HEADER_LEN] {
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION, kind]
}

fn init_tag(key: &MacKey, stream_id: &StreamId, counter: u64, rx: u64, from: u64) -> [u8; 32] {
    key.tag(&init_parts(
        stream_id,
        &counter.to_be_bytes(),
        &rx.to_be_bytes(),
        &from.to_be_bytes(),
    ))
}

fn init_parts<'a>(
    stream_id: &'a StreamId,
    counter: &'a [u8; 8],
    rx: &'a [u8; 8],
    from: &'a [u8; 8],
) -> [&'a [u8]; 5] {
    [b"init", &stream_id.0, counter, rx, from]
}

fn ack_ok(key: &MacKey, ack: &Ack, stream_id: &StreamId, counter: u64) -> bool {
    let (c, r) = (counter.to_be_bytes(), ack.rx.to_be_bytes());
    key.verify(&ack_parts(stream_id, &c, &r), &ack.mac)
}

fn ack_parts<'a>(stream_id: &'a StreamId, counter: &'a [u8; 8], rx: &'a [u8; 8]) -> [&'a [u8]; 4] {
    [b"ack", &stream_id.0, counter, rx]
}

impl Init {
    /// An Init signed with our resume key.
    pub fn new(key: &StreamKey, stream_id: StreamId, counter: u64, rx: u64, from: u64) -> Init {
        Init::new_with(key.resume_out(), stream_id, counter, rx, from)
    }

    fn new_with(key: &MacKey, stream_id: StreamId, counter: u64, rx: u64, from: u64) -> Init {
        let mac = init_tag(key, &stream_id, counter, rx, from);
        Init {
            stream_id,
            counter,
            rx,
            from,
            mac,
        }
    }

    /// Whether the peer made this Init with the stream's key.
    pub fn verify(&self, key: &StreamKey) -> bool {
        let (c, r, f) = (
            self.counter.to_be_bytes(),
            self.rx.to_be_bytes(),
            self.from.to_be_bytes(),
        );
        key.resume_in()
            .verify(&init_parts(&self.stream_id, &c, &r, &f), &self.mac)
    }

    pub fn encode(&self) -> [u8; INIT_LEN] {
        let mut out = [0u8; INIT_LEN];
        out[..HEADER_LEN].copy_from_slice(&header(TYPE_INIT));
        out[6..22].copy_from_slice(&self.stream_id.0);
        out[22..30].copy_from_slice(&self.counter.to_be_bytes());
        out[30..38].copy_from_slice(&self.rx.to_be_bytes());
        out[38..46].copy_from_slice(&self.from.to_be_bytes());
        out[46..78].copy_from_slice(&self.mac);
        out
    }
}

impl Ack {
    /// An Ack to the Init of `stream_id` numbered `counter`, signed with
    /// our resume key.
    pub fn new(key: &StreamKey, stream_id: &StreamId, counter: u64, rx: u64) -> Ack {
        let (c, r) = (counter.to_be_bytes(), rx.to_be_bytes());
        let mac = key.resume_out().tag(&ack_parts(stream_id, &c, &r));
        Ack { rx, mac }
    }

    /// Whether the peer made this Ack, with the stream's key, for our Init
    /// of `stream_id` numbered `counter`.
    pub fn verify(&self, key: &StreamKey, stream_id: &StreamId, counter: u64) -> bool {
        ack_ok(key.resume_in(), self, stream_id, counter)
    }

    pub fn encode(&self) -> [u8; ACK_LEN] {
        let mut out = [0u8; ACK_LEN];
        out[..HEADER_LEN].copy_from_slice(&header(TYPE_ACK));
        out[6..14].copy_from_slice(&self.rx.to_be_bytes());
        out[14..46].copy_from_slice(&self.mac);
        out
    }
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

fn mac_at(buf: &[u8], at: usize) -> [u8; 32] {
    let mut m = [0u8; 32];
    m.copy_from_slice(&buf[at..at + 32]);
    m
}

/// Read one message from the front of `buf`. `Ok(None)`: not all of it is
/// there yet. `Ok(Some((msg, n)))`: the message took `buf[..n]`, and
/// `buf[n..]` is the caller's (stream data). Errors come as soon as the
/// bytes so far show them: a connection that does not start with `WISP`
/// is refused at its first byte.
pub fn decode(buf: &[u8]) -> Result<Option<(Msg, usize)>, ResumeError> {
    let seen = buf.len().min(MAGIC.len());
    if buf[..seen] != MAGIC[..seen] {
        return Err(ResumeError::BadMagic);
    }
    if let Some(&v) = buf.get(4) {
        if v != VERSION {
            return Err(ResumeError::BadVersion(v));
        }
    }
    let Some(&kind) = buf.get(5) else {
        return Ok(None);
    };
    let len = msg_len(kind)?;
    if buf.len() < len {
        return Ok(None);
    }
    let msg = match kind {
        TYPE_INIT => {
            let mut id = [0u8; 16];
            id.copy_from_slice(&buf[6..22]);
            Msg::Init(Init {
                stream_id: StreamId(id),
                counter: u64_at(buf, 22),
                rx: u64_at(buf, 30),
                from: u64_at(buf, 38),
                mac: mac_at(buf, 46),
            })
        }
        _ => Msg::Ack(Ack {
            rx: u64_at(buf, 6),
            mac: mac_at(buf, 14),
        }),
    };
    Ok(Some((msg, len)))
}

fn msg_len(kind: u8) -> Result<usize, ResumeError> {
    match kind {
        TYPE_INIT => Ok(INIT_LEN),
        TYPE_ACK => Ok(ACK_LEN),
        other => Err(ResumeError::BadType(other)),
    }
}

/// [`decode`] for bytes that arrive in pieces: keeps the partial message
/// (at most [`INIT_LEN`] bytes, no allocation) between reads.
#[derive(Debug, Clone)]
pub struct Decoder {
    buf: [u8; INIT_LEN],
    fill: usize,
    failed: Option<ResumeError>,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            buf: [0; INIT_LEN],
            fill: 0,
            failed: None,
        }
    }

    /// Take bytes from the front of `input`, only as many as the message
    /// needs, and advance `input` past them: what is left in it after a
    /// message is stream data. `None`: need more. After an error the
    /// decoder takes nothing more and repeats the error.
    pub fn push(&mut self, input: &mut &[u8]) -> Option<Result<Msg, ResumeError>> {
        if let Some(e) = self.failed {
            return Some(Err(e));
        }
        loop {
            let want = if self.fill < HEADER_LEN {
                HEADER_LEN
            } else {
                // The header is complete and was checked by decode below.
                msg_len(self.buf[5]).unwrap_or(HEADER_LEN)
            };
            let take = (want - self.fill).min(input.len());
            if take == 0 {
                return None;
            }
            self.buf[self.fill..self.fill + take].copy_from_slice(&input[..take]);
            self.fill += take;
            *input = &input[take..];
            match decode(&self.buf[..self.fill]) {
                Err(e) => {
                    self.failed = Some(e);
                    return Some(Err(e));
                }
                Ok(Some((msg, _))) => {
                    self.fill = 0;
                    return Some(Ok(msg));
                }
                Ok(None) => {}
            }
        }
    }
}

/// What to resend on the new connection: our stream from `from` (the
/// peer's rx) to our tx, `len` bytes, then whatever the program writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resend {
    pub from: u64,
    pub len: u64,
}

/// The resume arithmetic: the peer has our bytes below `peer_rx`, so we
/// resend from there. A gap (the ring no longer holds `peer_rx`) or a
/// claim beyond what we sent is an error and never rounded off: a stream
/// that skips or repeats bytes is worse than one that is reset.
pub fn plan(ring: &ReplayRing, peer_rx: u64) -> Result<Resend, ResumeError> {
    match ring.slice_from(peer_rx) {
        Ok(_) => Ok(Resend {
            from: peer_rx,
            len: ring.tx() - peer_rx,
        }),
        Err(RingError::Gone { start, .. }) => Err(ResumeError::Unresumable {
            peer_rx,
            ring_start: start,
        }),
        Err(RingError::Ahead { tx, .. }) => Err(ResumeError::PeerAhead { peer_rx, tx }),
    }
}

/// What the responder knows of a stream, lent for one handshake.
pub struct StreamState<'a> {
    pub key: &'a StreamKey,
    /// Counters of Inits accepted on this stream.
    pub counter: &'a mut MoveCounter,
    /// Our outgoing stream's bytes.
    pub ring: &'a ReplayRing,
    /// Stream bytes we have received (drained from the old connection).
    pub rx: u64,
}

/// The responder's decision on a good Init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub stream_id: StreamId,
    /// Send this first ...
    pub ack: [u8; ACK_LEN],
    /// ... then our stream from the peer's rx; the connection then belongs
    /// to the stream.
    pub resend: Resend,
    /// The first `skip` stream bytes after the Init are ones we already
    /// have (our rx minus the Init's `from`): drop them.
    pub skip: u64,
}

/// The accepting side of a resume: reads the Init off a fresh connection.
#[derive(Debug, Clone, Default)]
pub struct Responder {
    decoder: Decoder,
}

impl Responder {
    pub fn new() -> Responder {
        Responder::default()
    }

    /// Feed bytes read from the connection; takes only the Init, leaving
    /// the rest of `input` (the peer's stream data) to the caller. When the
    /// Init is complete, `lookup` is asked for the stream it names.
    pub fn push<'k>(
        &mut self,
        input: &mut &[u8],
        lookup: impl FnOnce(&StreamId) -> Option<StreamState<'k>>,
    ) -> Option<Result<Accepted, ResumeError>> {
        Some(self.decoder.push(input)?.and_then(|msg| match msg {
            Msg::Init(init) => respond(&init, lookup),
            Msg::Ack(_) => Err(ResumeError::Unexpected),
        }))
    }
}

/// Decide on an Init: the stream must exist, the MAC verify, the counter
/// be fresh and the peer's rx be within what we can resend. The counter is
/// taken only when all of that holds, so neither a forgery nor a failed
/// attempt can use up a number.
pub fn respond<'k>(
    init: &Init,
    lookup: impl FnOnce(&StreamId) -> Option<StreamState<'k>>,
) -> Result<Accepted, ResumeError> {
    let st = lookup(&init.stream_id).ok_or(ResumeError::UnknownStream(init.stream_id))?;
    if !init.verify(st.key) {
        return Err(ResumeError::BadMac);
    }
    if !st.counter.is_fresh(init.counter) {
        return Err(ResumeError::StaleCounter {
            counter: init.counter,
            last: st.counter.last(),
        });
    }
    let resend = plan(st.ring, init.rx)?;
    let skip = skip(init.from, st.rx)?;
    st.counter.accept(init.counter);
    let ack = Ack::new(st.key, &init.stream_id, init.counter, st.rx).encode();
    Ok(Accepted {
        stream_id: init.stream_id,
        ack,
        resend,
        skip,
    })
}

/// How many of the initiator's resent bytes, which start at `from`, the
/// responder already has after receiving `rx`. A `from` beyond `rx` is a
/// hole nobody can fill.
pub fn skip(from: u64, rx: u64) -> Result<u64, ResumeError> {
    if from == LAZY {
        return Ok(0);
    }
    rx.checked_sub(from).ok_or(ResumeError::Gap { from, rx })
}

/// The connecting side of a resume: sends the Init, then reads the Ack.
/// Holds its own copy of the two resume keys, so the I/O layer can keep it
/// in the same structure as the stream key without borrowing.
pub struct Initiator {
    out: MacKey,
    inn: MacKey,
    stream_id: StreamId,
    counter: u64,
    rx: u64,
    from: u64,
    decoder: Decoder,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator")
            .field("stream_id", &self.stream_id)
            .field("counter", &self.counter)
            .field("rx", &self.rx)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// `counter` must be above every Init counter this side has used on
    /// the stream: keep one per stream and add one per attempt, since the
    /// peer takes each number once and either side may be the one that
    /// dials. `rx` is what we received, final: the old connection is
    /// drained before the Init goes out. `from` is where the stream bytes
    /// we write right behind the Init start: the oldest byte the old
    /// connection had not seen acknowledged (the ring's start).
    pub fn new(
        key: &StreamKey,
        stream_id: StreamId,
        counter: u64,
        rx: u64,
        from: u64,
    ) -> Initiator {
        Initiator {
            out: key.resume_out().clone(),
            inn: key.resume_in().clone(),
            stream_id,
            counter,
            rx,
            from,
            decoder: Decoder::new(),
        }
    }

    /// The first bytes to write on the new connection; our stream from
    /// `from` follows at once.
    pub fn init(&self) -> [u8; INIT_LEN] {
        Init::new_with(&self.out, self.stream_id, self.counter, self.rx, self.from).encode()
    }

    /// Feed bytes read from the connection; takes only the Ack, leaving
    /// the rest of `input` (the peer's resent stream) to the caller. When
    /// the Ack is complete and genuine, says what we resend from `ring`.
    pub fn push(
        &mut self,
        input: &mut &[u8],
        ring: &ReplayRing,
    ) -> Option<Result<Resend, ResumeError>> {
        Some(
            self.decoder
                .push(input)?
                .and_then(|msg| self.check(&msg, ring)),
        )
    }

    /// Decide on the peer's answer, however it was read: what the peer
    /// still needed of what we resent from `from`.
    pub fn check(&self, msg: &Msg, ring: &ReplayRing) -> Result<Resend, ResumeError> {
        match msg {
            Msg::Ack(ack) if ack_ok(&self.inn, ack, &self.stream_id, self.counter) => {
                skip(self.from, ack.rx).map_err(|_| ResumeError::Unresumable {
                    peer_rx: ack.rx,
                    ring_start: self.from,
                })?;
                plan(ring, ack.rx)
            }
            Msg::Ack(_) => Err(ResumeError::BadMac),
            Msg::Init(_) => Err(ResumeError::Unexpected),
        }
    }
}

#[cfg(test)]
mod tests;
