//! The start of a TCP connection that resumes a moved stream, as a state
//! machine with no I/O, no clock and no threads (the quinn-proto way): the
//! I/O layer feeds it the bytes it reads, writes what it says, and does
//! what it asks (find the stream, take the attempt's number, freeze the
//! stream), through [`StreamView`] for everything it needs of the stream.
//! The same machine runs in the preload library and, against a simulated
//! kernel, network and attacker, in `tests/move_sim.rs`.
//!
//! # The handshake (wire format in [`wire`])
//!
//! ```text
//! dialler (the side that moved)            answerer (its peer's SIP port)
//!   Init{stream, counter, nonce_a}  ──────▶  MAC ok, counter fresh?
//!                                   ◀──────  Challenge{nonce_b}
//!   MAC ok: freeze, drain
//!   Proof{rx, from} [+ stream from `from`] ─▶ MAC ok: take the counter,
//!                                             freeze, drain
//!                                   ◀──────  Ack{rx, from} + stream from `from`
//!   drain, skip what it has                   skip what it has
//!   swap, thaw                                swap, thaw
//! ```
//!
//! As in MPTCP's MP_JOIN (RFC 8684 §3.2), each side contributes a fresh
//! nonce and every MAC after the Init covers both: a copied Init is
//! useless on any other connection, because that connection's Challenge
//! carries another nonce and only the key holder can answer it. Nothing is
//! decided on an Init alone: the answerer takes the attempt's number
//! ([`Gate::commit`], check and record in one step) only on a genuine
//! Proof, freezes only then, and hands no byte of the connection to the
//! program before it. A refused, raced or abandoned attempt therefore
//! costs the real peer nothing. The Challenge's MAC proves the answerer
//! too, so the dialler freezes for no one else.
//!
//! The price against a handshake of one round trip is one round trip: the
//! dialler's first stream byte leaves 1 RTT after the connection is up
//! (behind its Proof) rather than with the Init.
//!
//! # The arithmetic
//!
//! Each side counts `rx`, stream bytes received (handed to the program
//! plus held for it), and keeps a [`ReplayRing`] of what it sent that the
//! peer may lack, trimmed only to what the peer's TCP acknowledged. Both
//! rx counts are taken after draining the old connection, so every byte a
//! TCP acknowledged is counted by its receiver.
//!
//! - The dialler sends from `from`: eager (the old address is gone, its
//!   flight is lost) from the first byte its old connection had not seen
//!   acknowledged; lazy (make-before-break: the old path still delivers
//!   its flight) not before the Ack, from the answerer's rx, so a window
//!   in flight is not pushed again through a new slow start.
//! - The answerer sends from `max(proof.rx, ring start)`: between the
//!   dialler's freeze and its own, the dialler's kernel may acknowledge
//!   (and our ring drop) more of our bytes than the dialler had counted.
//!   The dialler then drains its old connection again and has them.
//! - Each side drops the first `its rx - their from` bytes that follow the
//!   other's message: it has them already. A `from` above the rx (a hole),
//!   a peer's rx the ring no longer holds, or an rx above what was ever
//!   sent cannot be made exact: the attempt fails with that error and is
//!   never rounded off.

pub mod wire;

use crate::ids::StreamId;
use crate::keys::{MacKey, MoveCounter, StreamKey};
use crate::ring::{ReplayRing, RingError};
use std::fmt;
use wire::{Binding, Decoder, Init, Msg};
pub use wire::{Nonce, WireError};

/// A Proof's `from` when no stream bytes follow it: the dialler resends
/// only after the Ack, from the answerer's rx.
pub const LAZY: u64 = u64::MAX;

/// Why an attempt failed. Each one ends the new connection; the stream
/// goes on waiting for a good one, except after
/// [`ResumeError::Unresumable`], [`ResumeError::PeerAhead`] and
/// [`ResumeError::Gap`] on a genuine peer, after which it can never be
/// made exact again and must be reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeError {
    /// The bytes are not a handshake we speak.
    Wire(WireError),
    /// A readable message out of its place (an Ack where an Init belongs).
    Unexpected,
    /// The MAC does not verify: wrong key, a field altered, or a message
    /// made for another connection.
    BadMac,
    /// An attempt number at or below one already taken: a replay, or an
    /// attempt overtaken by a newer one.
    StaleCounter { counter: u64, last: u64 },
    /// No stream by that id here.
    UnknownStream(StreamId),
    /// The peer needs bytes from `peer_rx` on, but we hold them only from
    /// `ring_start`.
    Unresumable { peer_rx: u64, ring_start: u64 },
    /// The peer claims to have received more than we ever sent.
    PeerAhead { peer_rx: u64, tx: u64 },
    /// The peer resends from `from`, but we have received only `rx`: the
    /// bytes between were acknowledged to it and then lost here.
    Gap { from: u64, rx: u64 },
    /// The I/O layer broke the machine's rules (fed stream bytes before
    /// the freeze it was asked for): a bug, reported rather than obeyed.
    Misuse(&'static str),
}

impl From<WireError> for ResumeError {
    fn from(e: WireError) -> ResumeError {
        ResumeError::Wire(e)
    }
}

impl fmt::Display for ResumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResumeError::Wire(WireError::BadMagic) => {
                write!(f, "not a wisp resume handshake (bad magic)")
            }
            ResumeError::Wire(WireError::BadVersion(v)) => {
                write!(f, "resume handshake version {v} unsupported")
            }
            ResumeError::Wire(WireError::BadType(t)) => {
                write!(f, "unknown resume message type {t}")
            }
            ResumeError::Unexpected => write!(f, "resume message out of its place"),
            ResumeError::BadMac => write!(f, "resume MAC does not verify"),
            ResumeError::StaleCounter { counter, last } => write!(
                f,
                "resume counter {counter} not above {last} (replayed or overtaken)"
            ),
            ResumeError::UnknownStream(id) => write!(f, "unknown stream {id}"),
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
            ResumeError::Misuse(what) => write!(f, "resume machine misused: {what}"),
        }
    }
}

impl std::error::Error for ResumeError {}

impl ResumeError {
    /// Whether the stream itself can never be exact again (reset it),
    /// rather than just this connection having failed.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ResumeError::Unresumable { .. }
                | ResumeError::PeerAhead { .. }
                | ResumeError::Gap { .. }
        )
    }
}

/// What a move needs of the stream, frozen: no program call is inside
/// the old connection, and none starts until the move is over.
pub trait StreamView {
    /// Stream bytes received: handed to the program plus held for it.
    fn rx(&self) -> u64;
    /// Our sent bytes the peer may lack.
    fn ring(&self) -> &ReplayRing;
    /// Read everything the old connection still holds for us into the
    /// bytes held for the program, placed by offset ([`Cursor`]): an
    /// earlier attempt's connection may have brought some of them.
    fn drain_old(&mut self);
    /// How far our bytes were acknowledged on the old connection (tx less
    /// the old socket's unacknowledged count), if that can be known.
    fn acked_on_old(&mut self) -> Option<u64>;
    /// Forget ring bytes below `to`: the peer's TCP has them.
    fn trim(&mut self, to: u64);
    /// Stream bytes that arrived on the new connection: held for the
    /// program, read before anything the new socket brings later.
    fn deliver(&mut self, bytes: &[u8]);
}

/// Where the next byte a connection brings sits in the stream. Every
/// inbound byte is placed by its offset: what lies below the stream's rx
/// arrived already, through another connection, and is dropped. An
/// attempt that failed after its connection brought bytes leaves the old
/// connection behind by that much, and its bytes up to rx are the same
/// ones again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub next: u64,
}

impl Cursor {
    /// The part of `bytes` (the connection's next ones) the stream lacks,
    /// given it has received `rx`; the cursor moves past all of `bytes`.
    /// A cursor beyond `rx` would leave a hole: never rounded off.
    pub fn take<'a>(&mut self, rx: u64, bytes: &'a [u8]) -> Result<&'a [u8], ResumeError> {
        if self.next > rx {
            return Err(ResumeError::Gap {
                from: self.next,
                rx,
            });
        }
        let dup = (rx - self.next).min(bytes.len() as u64) as usize;
        self.next += bytes.len() as u64;
        Ok(&bytes[dup..])
    }

    /// How many bytes to read and drop before the connection brings
    /// anything new.
    pub fn behind(&self, rx: u64) -> u64 {
        rx.saturating_sub(self.next)
    }
}

/// How the dialler resends what its old connection had in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Right behind the Proof, from the first byte the old connection had
    /// not seen acknowledged: the old address is gone, and its flight with
    /// it.
    Eager,
    /// After the Ack, from the answerer's rx: the old address is still
    /// ours (make-before-break), and the old path still delivers.
    Lazy,
}

impl Resend {
    pub fn for_move(old_address_still_ours: bool) -> Resend {
        if old_address_still_ours {
            Resend::Lazy
        } else {
            Resend::Eager
        }
    }
}

/// What an answer does when the peer has proved an attempt while our own
/// dialler holds the stream's move (both ends moved at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contention {
    /// Our dialler gives way: the peer's connection reached us where we
    /// are and proved itself just now, so it serves both moves, while
    /// ours may be dialling an address the peer has left.
    OursYields,
    /// Refuse the peer's: both dialled and both froze; the attempt with
    /// the lower dialler nonce is kept.
    TheirsRefused,
    /// Wait for our dialler to fail: the peer refuses it.
    Wait,
}

/// `our_dial_frozen`: our dialler has had its Challenge (and froze).
/// `ours`/`theirs`: the `nonce_a` of our dialler's Init and of the peer's:
/// both ends hold the same two and so decide alike (addresses would not
/// do: behind NAT each end sees the other's differently).
pub fn contention(our_dial_frozen: bool, ours: &Nonce, theirs: &Nonce) -> Contention {
    if !our_dial_frozen {
        Contention::OursYields
    } else if ours < theirs {
        Contention::TheirsRefused
    } else {
        Contention::Wait
    }
}

/// Bounds on resume connections that have not proved themselves yet:
/// at most `per_key` with the same key and `max` in all (per process).
/// Anyone may open connections to a SIP port, and an on-path observer may
/// replay a genuine Init on each, but none of them can crowd out the
/// genuine dialler's, whose key is its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub per_key: usize,
    pub max: usize,
}

/// Before the Init is read (at most a second): keyed by source address.
/// A host that moves opens one connection per stream at once, all from
/// one address, so the share per source is wide.
pub const BEFORE_INIT: Bounds = Bounds {
    per_key: 64,
    max: 256,
};

/// After the Init, before the Proof: keyed by source address and stream.
/// The genuine dialler has one per stream (two when a retry overlaps);
/// an observer replaying that Init from its own address gets its own
/// share, never the dialler's.
pub const BEFORE_PROOF: Bounds = Bounds {
    per_key: 2,
    max: 256,
};

/// What to do with a new connection keyed `key`, given the keys of those
/// waiting (oldest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Admit it after dropping the waiting one at this index: the oldest
    /// of its own key when that key is at its share, else the oldest of
    /// the key holding the most.
    Evict(usize),
}

pub fn admit<K: PartialEq>(waiting: &[K], key: &K, bounds: Bounds) -> Admit {
    let count = |a: &K| waiting.iter().filter(|w| *w == a).count();
    if count(key) >= bounds.per_key {
        return Admit::Evict(waiting.iter().position(|w| w == key).unwrap_or(0));
    }
    if waiting.len() >= bounds.max {
        let most = (0..waiting.len())
            .max_by_key(|&i| (count(&waiting[i]), std::cmp::Reverse(i)))
            .unwrap_or(0);
        return Admit::Evict(most);
    }
    Admit::Yes
}

/// A stream's record of resume attempts: our own attempt numbers and the
/// peer's, as taken. One per stream, behind the stream's lock in the I/O
/// layer: [`Gate::commit`] is the single place a number is taken.
#[derive(Debug, Default)]
pub struct Gate {
    taken: MoveCounter,
    sent: u64,
    proven: u64,
}

impl Gate {
    /// The number for our next attempt: above all we used, since the peer
    /// takes each at most once and either side may be the one that dials.
    pub fn next_attempt(&mut self) -> u64 {
        self.sent += 1;
        self.sent
    }

    /// Whether an Init numbered `counter` is worth a Challenge.
    pub fn is_fresh(&self, counter: u64) -> bool {
        self.taken.is_fresh(counter)
    }

    /// The peer proved attempt `counter` on some connection: an answer
    /// still under way for an older one gives way ([`Gate::superseded`]).
    pub fn proven(&mut self, counter: u64) {
        self.proven = self.proven.max(counter);
    }

    /// Take attempt `counter`: check and record in one step, so two
    /// connections racing with the same number cannot both have it.
    pub fn commit(&mut self, counter: u64) -> Result<(), ResumeError> {
        let last = self.taken.last();
        if self.taken.accept(counter) {
            self.proven(counter);
            Ok(())
        } else {
            Err(ResumeError::StaleCounter { counter, last })
        }
    }

    /// Whether a newer attempt than `counter` has been proven: the peer
    /// has moved on from the connection `counter` runs on.
    pub fn superseded(&self, counter: u64) -> bool {
        self.proven > counter
    }

    /// The highest attempt number taken.
    pub fn last_taken(&self) -> u64 {
        self.taken.last()
    }
}

/// What the machine asks of the I/O layer before it can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: feed it more bytes (and write what it has to send).
    Input,
    /// An Init names this stream: find it and call [`Exchange::found`].
    Lookup(StreamId),
    /// The answerer proved the key: freeze the stream, then call
    /// [`Exchange::frozen`].
    Freeze,
    /// The dialler proved attempt `counter` on this connection: take it
    /// with [`Gate::commit`] (an error ends the connection), freeze the
    /// stream, then call [`Exchange::frozen`].
    Commit(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Answerer: waiting for the Init; then for the lookup.
    AwaitInit,
    Lookup,
    /// Answerer: Challenge sent, waiting for the Proof; then for the
    /// commit and freeze.
    AwaitProof,
    Commit,
    /// Dialler: Init sent, waiting for the Challenge; then for the freeze.
    AwaitChallenge,
    Freeze,
    /// Dialler: Proof sent, waiting for the Ack.
    AwaitAck,
    /// Answerer, make-before-break: Ack sent, waiting for the dialler's
    /// count after its drain (Resume) before resending.
    AwaitResume,
    /// Handshake done: the peer's bytes go to the stream, placed by
    /// offset from `inbound`.
    Stream,
}

/// One resume attempt on one connection, either role.
pub struct Exchange {
    state: State,
    decoder: Decoder,
    /// Our key for what we send, and the peer's for what we check.
    keys: Option<(MacKey, MacKey)>,
    init: Option<Init>,
    binding: Option<Binding>,
    /// Handshake bytes not yet written.
    out: Vec<u8>,
    /// Where our resent stream goes on from (None: not yet known).
    resend_at: Option<u64>,
    /// Dialler: how it resends, and what its Proof said.
    mode: Resend,
    claimed_rx: u64,
    claimed_from: u64,
    /// Where the next stream byte from the peer on this connection sits.
    inbound: Cursor,
}

impl fmt::Debug for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exchange")
            .field("state", &self.state)
            .field("resend_at", &self.resend_at)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Exchange {
    fn blank(state: State) -> Exchange {
        Exchange {
            state,
            decoder: Decoder::default(),
            keys: None,
            init: None,
            binding: None,
            out: Vec::new(),
            resend_at: None,
            mode: Resend::Eager,
            claimed_rx: 0,
            claimed_from: 0,
            inbound: Cursor { next: 0 },
        }
    }

    /// The side that moved opens attempt `counter` (from
    /// [`Gate::next_attempt`]) with a fresh random `nonce_a`.
    pub fn dial(
        key: &StreamKey,
        stream_id: StreamId,
        counter: u64,
        nonce_a: Nonce,
        mode: Resend,
    ) -> Exchange {
        let out_key = key.resume_out().clone();
        let init = Init::new(&out_key, stream_id, counter, nonce_a);
        let mut ex = Exchange::blank(State::AwaitChallenge);
        ex.out = Msg::Init(init.clone()).encode();
        ex.keys = Some((out_key, key.resume_in().clone()));
        ex.init = Some(init);
        ex.mode = mode;
        ex
    }

    /// A connection to our SIP port that starts with the magic.
    pub fn answer() -> Exchange {
        Exchange::blank(State::AwaitInit)
    }

    /// The attempt's number, once an Init was read or sent.
    pub fn counter(&self) -> Option<u64> {
        self.init.as_ref().map(|i| i.counter)
    }

    /// The dialler's nonce of this attempt (ours when dialling, the peer's
    /// when answering), once the Init was sent or read.
    pub fn nonce_a(&self) -> Option<Nonce> {
        self.init.as_ref().map(|i| i.nonce_a)
    }

    /// The stream the Init named.
    pub fn stream_id(&self) -> Option<StreamId> {
        self.init.as_ref().map(|i| i.stream_id)
    }

    /// Whether the handshake has completed: the peer proved the key on
    /// this very connection and stream bytes now flow.
    pub fn established(&self) -> bool {
        self.state == State::Stream
    }

    /// Whether the freeze was asked for and made (the stream is this
    /// attempt's until it ends).
    pub fn holds_stream(&self) -> bool {
        matches!(
            self.state,
            State::AwaitAck | State::AwaitResume | State::Stream
        )
    }

    /// Where the next stream byte this connection brings sits: the data
    /// path places what it reads there after the swap (what lies below
    /// the stream's rx then is a duplicate and is dropped).
    pub fn inbound(&self) -> Cursor {
        self.inbound
    }

    /// Take bytes read from the connection. Consumes handshake messages,
    /// drops the overlap, hands stream bytes to `view`; stops at anything
    /// the I/O layer must do first (the rest stays in `input`). `view` is
    /// needed once the stream is frozen.
    pub fn input(
        &mut self,
        input: &mut &[u8],
        mut view: Option<&mut dyn StreamView>,
    ) -> Result<Need, ResumeError> {
        loop {
            match self.state {
                State::Lookup => return Ok(Need::Lookup(self.init.as_ref().unwrap().stream_id)),
                State::Freeze => return Ok(Need::Freeze),
                State::Commit => return Ok(Need::Commit(self.init.as_ref().unwrap().counter)),
                State::Stream => {
                    if input.is_empty() {
                        return Ok(Need::Input);
                    }
                    let view = view.ok_or(ResumeError::Misuse("stream bytes before the freeze"))?;
                    let new = self.inbound.take(view.rx(), input)?;
                    view.deliver(new);
                    *input = &[];
                    return Ok(Need::Input);
                }
                _ => {}
            }
            let msg = match self.decoder.push(input) {
                None => return Ok(Need::Input),
                Some(m) => m?,
            };
            match (self.state, msg) {
                (State::AwaitInit, Msg::Init(init)) => {
                    self.init = Some(init);
                    self.state = State::Lookup;
                }
                (State::AwaitChallenge, Msg::Challenge(c)) => {
                    let init = self.init.as_ref().unwrap();
                    let binding = Binding {
                        stream_id: init.stream_id,
                        counter: init.counter,
                        nonce_a: init.nonce_a,
                        nonce_b: c.nonce_b,
                    };
                    if !binding.challenge_ok(&self.keys.as_ref().unwrap().1, &c) {
                        return Err(ResumeError::BadMac);
                    }
                    self.binding = Some(binding);
                    self.state = State::Freeze;
                }
                (State::AwaitProof, Msg::Proof(p)) => {
                    let (_, inn) = self.keys.as_ref().unwrap();
                    if !self.binding.as_ref().unwrap().proof_ok(inn, &p) {
                        return Err(ResumeError::BadMac);
                    }
                    self.claimed_rx = p.rx;
                    self.claimed_from = p.from;
                    self.state = State::Commit;
                }
                (State::AwaitResume, Msg::Resume(r)) => {
                    let (_, inn) = self.keys.as_ref().unwrap();
                    if !self.binding.as_ref().unwrap().resume_ok(inn, &r) {
                        return Err(ResumeError::BadMac);
                    }
                    let view = view
                        .as_deref_mut()
                        .ok_or(ResumeError::Misuse("a Resume before the freeze"))?;
                    if r.rx < self.claimed_rx {
                        return Err(ResumeError::Gap {
                            from: self.claimed_rx,
                            rx: r.rx,
                        });
                    }
                    plan(view.ring(), r.rx)?;
                    self.resend_at = Some(r.rx);
                    self.state = State::Stream;
                }
                (State::AwaitAck, Msg::Ack(a)) => {
                    let (_, inn) = self.keys.as_ref().unwrap();
                    if !self.binding.as_ref().unwrap().ack_ok(inn, &a) {
                        return Err(ResumeError::BadMac);
                    }
                    let view = view
                        .as_deref_mut()
                        .ok_or(ResumeError::Misuse("an Ack before the freeze"))?;
                    self.acked(&a, view)?;
                }
                _ => return Err(ResumeError::Unexpected),
            }
        }
    }

    /// Answerer: the stream the Init named, with its key and gate. Checks
    /// the Init (a copy of a genuine one passes: nothing is decided here)
    /// and queues our Challenge with the fresh `nonce_b`.
    pub fn found(
        &mut self,
        key: &StreamKey,
        gate: &Gate,
        nonce_b: Nonce,
    ) -> Result<(), ResumeError> {
        if self.state != State::Lookup {
            return Err(ResumeError::Misuse("found() without a lookup"));
        }
        let init = self.init.as_ref().unwrap();
        let (out, inn) = (key.resume_out().clone(), key.resume_in().clone());
        if !init.verify(&inn) {
            return Err(ResumeError::BadMac);
        }
        if !gate.is_fresh(init.counter) {
            return Err(ResumeError::StaleCounter {
                counter: init.counter,
                last: gate.last_taken(),
            });
        }
        let binding = Binding {
            stream_id: init.stream_id,
            counter: init.counter,
            nonce_a: init.nonce_a,
            nonce_b,
        };
        self.out
            .extend(Msg::Challenge(binding.challenge(&out)).encode());
        self.binding = Some(binding);
        self.keys = Some((out, inn));
        self.state = State::AwaitProof;
        Ok(())
    }

    /// The stream is frozen (and, answering, the attempt's number taken):
    /// take the counts and queue our Proof or Ack.
    pub fn frozen(&mut self, view: &mut dyn StreamView) -> Result<(), ResumeError> {
        let binding = self
            .binding
            .as_ref()
            .ok_or(ResumeError::Misuse("frozen() before the handshake"))?;
        let out = &self.keys.as_ref().unwrap().0;
        match self.state {
            State::Freeze => {
                view.drain_old();
                let from = match self.mode {
                    Resend::Eager => {
                        if let Some(acked) = view.acked_on_old() {
                            view.trim(acked);
                        }
                        view.ring().start()
                    }
                    Resend::Lazy => LAZY,
                };
                let rx = view.rx();
                self.out
                    .extend(Msg::Proof(binding.proof(out, rx, from)).encode());
                self.claimed_rx = rx;
                self.claimed_from = from;
                if from != LAZY {
                    self.resend_at = Some(from);
                }
                self.state = State::AwaitAck;
                Ok(())
            }
            State::Commit => {
                view.drain_old();
                let ring = view.ring();
                let peer_rx = self.claimed_rx;
                if peer_rx > ring.tx() {
                    return Err(ResumeError::PeerAhead {
                        peer_rx,
                        tx: ring.tx(),
                    });
                }
                // Our ring may have dropped more than the peer counted (its
                // kernel acknowledged them after its freeze): it drains them
                // on our Ack.
                let from = peer_rx.max(ring.start());
                let rx = view.rx();
                // The dialler's bytes start at its `from`, or (lazy) at our
                // rx once it has our Ack; a `from` above our rx is a hole.
                let inbound = if self.claimed_from == LAZY {
                    rx
                } else {
                    skip(self.claimed_from, rx)?;
                    self.claimed_from
                };
                self.inbound = Cursor { next: inbound };
                if self.claimed_from == LAZY {
                    // Make-before-break: the old path still delivers our
                    // flight, which the dialler drains on this Ack; it says
                    // what it then has (Resume) and we resend from there,
                    // so nothing crosses the new connection twice.
                    self.out
                        .extend(Msg::Ack(binding.ack(out, rx, LAZY)).encode());
                    self.state = State::AwaitResume;
                } else {
                    self.out
                        .extend(Msg::Ack(binding.ack(out, rx, from)).encode());
                    self.resend_at = Some(from);
                    self.state = State::Stream;
                }
                Ok(())
            }
            _ => Err(ResumeError::Misuse("frozen() not asked for")),
        }
    }

    /// Dialler: a genuine Ack.
    fn acked(&mut self, a: &wire::Ack, view: &mut dyn StreamView) -> Result<(), ResumeError> {
        // Bytes our kernel acknowledged since our freeze may be what the
        // answerer no longer holds: they are in the old socket.
        view.drain_old();
        let rx = view.rx();
        if a.from == LAZY {
            // The answerer waits for our count after this drain and
            // resends from it.
            if self.mode != Resend::Lazy {
                return Err(ResumeError::Unexpected);
            }
            plan(view.ring(), a.rx)?;
            let binding = self.binding.as_ref().unwrap();
            let out = &self.keys.as_ref().unwrap().0;
            self.out
                .extend(Msg::Resume(binding.resume(out, rx)).encode());
            self.inbound = Cursor { next: rx };
            self.resend_at = Some(a.rx);
            self.state = State::Stream;
            return Ok(());
        }
        if a.from > rx {
            return Err(ResumeError::Gap { from: a.from, rx });
        }
        self.inbound = Cursor { next: a.from };
        if a.from < self.claimed_rx {
            // The answerer resends from below what we said we had: a
            // genuine answerer never does (MAC-checked, so a bug).
            return Err(ResumeError::Gap {
                from: a.from,
                rx: self.claimed_rx,
            });
        }
        match self.mode {
            Resend::Eager => {
                // We resend from `claimed_from`: the answerer must have
                // everything before it.
                if a.rx < self.claimed_from {
                    return Err(ResumeError::Unresumable {
                        peer_rx: a.rx,
                        ring_start: self.claimed_from,
                    });
                }
                if a.rx > view.ring().tx() {
                    return Err(ResumeError::PeerAhead {
                        peer_rx: a.rx,
                        tx: view.ring().tx(),
                    });
                }
            }
            Resend::Lazy => {
                plan(view.ring(), a.rx)?;
                self.resend_at = Some(a.rx);
            }
        }
        self.state = State::Stream;
        Ok(())
    }

    /// The next bytes to write: handshake first, then our stream from
    /// where the peer needs it. None: nothing to write now.
    pub fn poll_transmit<'a>(&'a self, ring: Option<&'a ReplayRing>) -> Option<&'a [u8]> {
        if !self.out.is_empty() {
            return Some(&self.out);
        }
        let (at, ring) = (self.resend_at?, ring?);
        let (a, b) = ring.slice_from(at).ok()?;
        let s = if a.is_empty() { b } else { a };
        (!s.is_empty()).then_some(s)
    }

    /// Whether what [`Exchange::poll_transmit`] gives now is handshake
    /// (rather than stream bytes).
    pub fn handshake_pending(&self) -> bool {
        !self.out.is_empty()
    }

    /// `n` bytes of what [`Exchange::poll_transmit`] gave were written.
    pub fn transmitted(&mut self, n: usize) {
        if !self.out.is_empty() {
            self.out.drain(..n.min(self.out.len()));
        } else if let Some(at) = self.resend_at.as_mut() {
            *at += n as u64;
        }
    }

    /// The connection can be put under the program's descriptors: the
    /// handshake is complete and everything the peer lacked written
    /// (whatever the program writes next follows it). The overlap the
    /// peer resends need not have arrived: the data path drops it by
    /// offset ([`Exchange::inbound`]).
    pub fn is_done(&self, ring: &ReplayRing) -> bool {
        self.out.is_empty()
            && self.state == State::Stream
            && self.resend_at.is_none_or(|at| at >= ring.tx())
    }
}

/// The resume arithmetic: the peer has our bytes below `peer_rx`, so we
/// resend from there. A gap (the ring no longer holds `peer_rx`) or a
/// claim beyond what we sent is an error and never rounded off: a stream
/// that skips or repeats bytes is worse than one that is reset.
pub fn plan(ring: &ReplayRing, peer_rx: u64) -> Result<u64, ResumeError> {
    match ring.slice_from(peer_rx) {
        Ok(_) => Ok(ring.tx() - peer_rx),
        Err(RingError::Gone { start, .. }) => Err(ResumeError::Unresumable {
            peer_rx,
            ring_start: start,
        }),
        Err(RingError::Ahead { tx, .. }) => Err(ResumeError::PeerAhead { peer_rx, tx }),
    }
}

/// How many of the peer's resent bytes, which start at `from`, we already
/// have after receiving `rx`. A `from` beyond `rx` is a hole nobody can
/// fill.
pub fn skip(from: u64, rx: u64) -> Result<u64, ResumeError> {
    if from == LAZY {
        return Ok(0);
    }
    rx.checked_sub(from).ok_or(ResumeError::Gap { from, rx })
}

#[cfg(test)]
mod tests;
