//! The four messages at the start of a resumed connection, their MACs and
//! their decoding. Everything here is pure and fixed-size: a reader knows a
//! message's length from its type byte alone, and a decoder never holds
//! more than one message.
//!
//! ```text
//! Init (78 bytes)            Challenge (54)          Proof (54)          Ack (54)
//!  0 magic  "WISP"            0 magic "WISP"          0 magic "WISP"      0 magic "WISP"
//!  4 version 3                4 version 3             4 version 3         4 version 3
//!  5 type    1                5 type    2             5 type    3         5 type    4
//!  6 stream  16 bytes         6 nonce_b 16 bytes      6 rx      u64       6 rx      u64
//! 22 counter u64             22 mac     32 bytes     14 from    u64      14 from    u64
//! 30 nonce_a 16 bytes                                22 mac     32 bytes 22 mac     32 bytes
//! 46 mac     32 bytes
//!
//! Init      mac = HMAC(dialler's key,  "init"      | stream | counter | nonce_a)
//! Challenge mac = HMAC(answerer's key, "challenge" | stream | counter | nonce_a | nonce_b)
//! Proof     mac = HMAC(dialler's key,  "proof"     | stream | counter | nonce_a | nonce_b | rx | from)
//! Ack       mac = HMAC(answerer's key, "ack"       | stream | counter | nonce_a | nonce_b | rx | from)
//! Resume    mac = HMAC(dialler's key,  "resume"    | stream | counter | nonce_a | nonce_b | rx | 0)
//! ```
//!
//! Resume (type 5, make-before-break only) has the layout of a Proof with
//! `from` = 0.
//!
//! Integers are big-endian. The keys are the stream's per-direction resume
//! subkeys ([`crate::keys`]), so a message reflected back to its maker
//! never verifies.

use crate::ids::StreamId;
use crate::keys::MacKey;

pub const MAGIC: [u8; 4] = *b"WISP";
pub const VERSION: u8 = 3;
/// Magic, version, type: enough to know the message's length.
pub const HEADER_LEN: usize = 6;
pub const INIT_LEN: usize = HEADER_LEN + 16 + 8 + 16 + 32;
pub const CHALLENGE_LEN: usize = HEADER_LEN + 16 + 32;
pub const PROOF_LEN: usize = HEADER_LEN + 8 + 8 + 32;
pub const ACK_LEN: usize = HEADER_LEN + 8 + 8 + 32;
pub const RESUME_LEN: usize = HEADER_LEN + 8 + 8 + 32;
/// The longest message: what a [`Decoder`] holds at most.
pub const MAX_LEN: usize = INIT_LEN;

const TYPE_INIT: u8 = 1;
const TYPE_CHALLENGE: u8 = 2;
const TYPE_PROOF: u8 = 3;
const TYPE_ACK: u8 = 4;
const TYPE_RESUME: u8 = 5;

pub type Nonce = [u8; 16];
pub type Tag = [u8; 32];

/// A message that could not be read at all. (Whether a readable message
/// is genuine is the MAC's business, checked by the handshake.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Not a wisp handshake (a port scanner, a stray client).
    BadMagic,
    /// A wisp handshake of a version we do not speak.
    BadVersion(u8),
    /// A message type we do not know.
    BadType(u8),
}

/// The dialler's opening: which stream, which attempt, and its nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    pub stream_id: StreamId,
    pub counter: u64,
    pub nonce_a: Nonce,
    pub mac: Tag,
}

/// The answerer's nonce for this connection alone, and its proof of the
/// key over both nonces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub nonce_b: Nonce,
    pub mac: Tag,
}

/// The dialler's proof over both nonces, with what it has received (`rx`)
/// and where the stream bytes it sends right behind start (`from`, or
/// [`super::LAZY`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub rx: u64,
    pub from: u64,
    pub mac: Tag,
}

/// The answerer's counts: what it has received (`rx`) and where the
/// stream bytes it sends right behind start (`from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub rx: u64,
    pub from: u64,
    pub mac: Tag,
}

/// Make-before-break only: the dialler's count after draining its old
/// connection on the Ack (the old path delivered the answerer's flight),
/// from which the answerer resends. The `from` slot of the layout is 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub rx: u64,
    pub mac: Tag,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Init(Init),
    Challenge(Challenge),
    Proof(Proof),
    Ack(Ack),
    Resume(Resume),
}

/// What every MAC after the Init covers: the stream, the attempt and both
/// nonces, so a message made for one connection is worthless on another.
pub(crate) struct Binding {
    pub stream_id: StreamId,
    pub counter: u64,
    pub nonce_a: Nonce,
    pub nonce_b: Nonce,
}

impl Binding {
    /// What a MAC covers: the label, the binding, and the counts if any.
    fn input(&self, label: &[u8], rx_from: Option<(u64, u64)>) -> Vec<u8> {
        let mut b = Vec::with_capacity(label.len() + 16 + 8 + 32 + 16);
        b.extend_from_slice(label);
        b.extend_from_slice(&self.stream_id.0);
        b.extend_from_slice(&self.counter.to_be_bytes());
        b.extend_from_slice(&self.nonce_a);
        b.extend_from_slice(&self.nonce_b);
        if let Some((rx, from)) = rx_from {
            b.extend_from_slice(&rx.to_be_bytes());
            b.extend_from_slice(&from.to_be_bytes());
        }
        b
    }

    fn tag(&self, key: &MacKey, label: &[u8], rx_from: Option<(u64, u64)>) -> Tag {
        key.tag(&[&self.input(label, rx_from)])
    }

    fn verify(&self, key: &MacKey, label: &[u8], rx_from: Option<(u64, u64)>, mac: &Tag) -> bool {
        key.verify(&[&self.input(label, rx_from)], mac)
    }

    pub fn challenge(&self, key: &MacKey) -> Challenge {
        Challenge {
            nonce_b: self.nonce_b,
            mac: self.tag(key, b"challenge", None),
        }
    }

    pub fn challenge_ok(&self, key: &MacKey, c: &Challenge) -> bool {
        self.verify(key, b"challenge", None, &c.mac)
    }

    pub fn proof(&self, key: &MacKey, rx: u64, from: u64) -> Proof {
        Proof {
            rx,
            from,
            mac: self.tag(key, b"proof", Some((rx, from))),
        }
    }

    pub fn proof_ok(&self, key: &MacKey, p: &Proof) -> bool {
        self.verify(key, b"proof", Some((p.rx, p.from)), &p.mac)
    }

    pub fn ack(&self, key: &MacKey, rx: u64, from: u64) -> Ack {
        Ack {
            rx,
            from,
            mac: self.tag(key, b"ack", Some((rx, from))),
        }
    }

    pub fn ack_ok(&self, key: &MacKey, a: &Ack) -> bool {
        self.verify(key, b"ack", Some((a.rx, a.from)), &a.mac)
    }

    pub fn resume(&self, key: &MacKey, rx: u64) -> Resume {
        Resume {
            rx,
            mac: self.tag(key, b"resume", Some((rx, 0))),
        }
    }

    pub fn resume_ok(&self, key: &MacKey, r: &Resume) -> bool {
        self.verify(key, b"resume", Some((r.rx, 0)), &r.mac)
    }
}

impl Init {
    pub(crate) fn new(key: &MacKey, stream_id: StreamId, counter: u64, nonce_a: Nonce) -> Init {
        let mac = key.tag(&init_parts(&stream_id, &counter.to_be_bytes(), &nonce_a));
        Init {
            stream_id,
            counter,
            nonce_a,
            mac,
        }
    }

    pub(crate) fn verify(&self, key: &MacKey) -> bool {
        let c = self.counter.to_be_bytes();
        key.verify(&init_parts(&self.stream_id, &c, &self.nonce_a), &self.mac)
    }
}

fn init_parts<'a>(id: &'a StreamId, counter: &'a [u8; 8], nonce: &'a Nonce) -> [&'a [u8]; 4] {
    [b"init", &id.0, counter, nonce]
}

fn header(kind: u8) -> [u8; HEADER_LEN] {
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION, kind]
}

fn counts(kind: u8, rx: u64, from: u64, mac: &Tag) -> Vec<u8> {
    let mut out = header(kind).to_vec();
    out.extend_from_slice(&rx.to_be_bytes());
    out.extend_from_slice(&from.to_be_bytes());
    out.extend_from_slice(mac);
    out
}

impl Msg {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Init(m) => {
                let mut out = header(TYPE_INIT).to_vec();
                out.extend_from_slice(&m.stream_id.0);
                out.extend_from_slice(&m.counter.to_be_bytes());
                out.extend_from_slice(&m.nonce_a);
                out.extend_from_slice(&m.mac);
                out
            }
            Msg::Challenge(m) => {
                let mut out = header(TYPE_CHALLENGE).to_vec();
                out.extend_from_slice(&m.nonce_b);
                out.extend_from_slice(&m.mac);
                out
            }
            Msg::Proof(m) => counts(TYPE_PROOF, m.rx, m.from, &m.mac),
            Msg::Ack(m) => counts(TYPE_ACK, m.rx, m.from, &m.mac),
            Msg::Resume(m) => counts(TYPE_RESUME, m.rx, 0, &m.mac),
        }
    }
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

fn array_at<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut m = [0u8; N];
    m.copy_from_slice(&buf[at..at + N]);
    m
}

fn msg_len(kind: u8) -> Result<usize, WireError> {
    match kind {
        TYPE_INIT => Ok(INIT_LEN),
        TYPE_CHALLENGE => Ok(CHALLENGE_LEN),
        TYPE_PROOF => Ok(PROOF_LEN),
        TYPE_ACK => Ok(ACK_LEN),
        TYPE_RESUME => Ok(RESUME_LEN),
        other => Err(WireError::BadType(other)),
    }
}

/// Read one message from the front of `buf`. `Ok(None)`: not all of it is
/// there yet. `Ok(Some((msg, n)))`: the message took `buf[..n]`. Errors
/// come as soon as the bytes so far show them: a connection that does not
/// start with `WISP` is refused at its first byte.
pub fn decode(buf: &[u8]) -> Result<Option<(Msg, usize)>, WireError> {
    let seen = buf.len().min(MAGIC.len());
    if buf[..seen] != MAGIC[..seen] {
        return Err(WireError::BadMagic);
    }
    if let Some(&v) = buf.get(4) {
        if v != VERSION {
            return Err(WireError::BadVersion(v));
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
        TYPE_INIT => Msg::Init(Init {
            stream_id: StreamId(array_at(buf, 6)),
            counter: u64_at(buf, 22),
            nonce_a: array_at(buf, 30),
            mac: array_at(buf, 46),
        }),
        TYPE_CHALLENGE => Msg::Challenge(Challenge {
            nonce_b: array_at(buf, 6),
            mac: array_at(buf, 22),
        }),
        TYPE_PROOF => Msg::Proof(Proof {
            rx: u64_at(buf, 6),
            from: u64_at(buf, 14),
            mac: array_at(buf, 22),
        }),
        TYPE_RESUME => Msg::Resume(Resume {
            rx: u64_at(buf, 6),
            mac: array_at(buf, 22),
        }),
        _ => Msg::Ack(Ack {
            rx: u64_at(buf, 6),
            from: u64_at(buf, 14),
            mac: array_at(buf, 22),
        }),
    };
    Ok(Some((msg, len)))
}

/// [`decode`] for bytes that arrive in pieces: keeps the partial message
/// (at most [`MAX_LEN`] bytes, no allocation) between reads.
#[derive(Debug, Clone)]
pub struct Decoder {
    buf: [u8; MAX_LEN],
    fill: usize,
    failed: Option<WireError>,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder {
            buf: [0; MAX_LEN],
            fill: 0,
            failed: None,
        }
    }
}

impl Decoder {
    /// Take bytes from the front of `input`, only as many as the message
    /// needs, and advance `input` past them: what is left in it after a
    /// message is the caller's. `None`: need more. After an error the
    /// decoder takes nothing more and repeats the error.
    pub fn push(&mut self, input: &mut &[u8]) -> Option<Result<Msg, WireError>> {
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
