//! What makes a stream movable, shared by every module that touches a
//! move: its key and id, where the peer is, the attempt numbers, the move
//! lock and who holds it, and the counters `wisp status` shows. Data only:
//! the mover decides, the SIP thread learns addresses, the table keeps it
//! with the stream.

use crate::movelog::MoveLog;
use parking_lot::Mutex;
use sipcore::ids::StreamId;
use sipcore::keys::{MoveCounter, StreamKey};
use sipcore::resume::{self, Gate};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What makes a stream movable: its key, its id, where the peer is.
pub struct Mobility {
    pub key: StreamKey,
    pub id: StreamId,
    pub call_id: String,
    /// TCP streams resume on a new connection; UDP ones are re-pointed.
    pub proto: sipcore::sdp::ChannelProto,
    /// Where the peer's SIP port is (TCP: where resumed connections go),
    /// as each source last said it, stamped from one sequence so the newer
    /// wins ([`Mobility::peer_sip`]). Each has one writer: the SIP thread
    /// (the peer's authenticated, numbered move re-INVITEs) and the mover
    /// (the source of the peer's newest proven resume; a move that completes
    /// before the host's next coalesced netlink notification sends no
    /// re-INVITE, so this is the one that always comes). The first offer or
    /// answer sets the re-INVITE one.
    pub peer_by_invite: Mutex<(u64, Option<SocketAddr>)>,
    pub peer_by_resume: Mutex<(u64, Option<SocketAddr>)>,
    /// The peer's data address, for route checks.
    pub peer_data: Mutex<SocketAddr>,
    /// The address this side's data connection uses now: written by the
    /// mover (TCP) or the SIP thread (UDP, which has no mover).
    pub local_ip: Mutex<IpAddr>,
    /// This side's data port (datagram streams announce it in a move).
    pub local_port: std::sync::atomic::AtomicU16,
    /// Resume attempt numbers, ours and the peer's as taken.
    pub(crate) gate: Mutex<Gate>,
    /// Our re-INVITE counter, and the peer's we have accepted.
    pub moves_sent: AtomicU64,
    pub moves_seen: Mutex<MoveCounter>,
    /// One move at a time.
    pub(crate) lock: Mutex<()>,
    /// Who holds `lock`: [`IDLE`], [`DIALLING`], [`DIALLING_FROZEN`],
    /// [`YIELDED`] or [`ANSWERING`].
    pub(crate) role: std::sync::atomic::AtomicU8,
    /// Our dialler's nonce, for contention (both ends compare the same
    /// two nonces).
    pub(crate) dial_nonce: Mutex<Option<resume::Nonce>>,
    /// A mover thread is working on this stream (it follows every later
    /// change of route itself).
    pub mover_running: std::sync::atomic::AtomicBool,
    /// Completed moves and bytes resent, for the log and status.
    pub moves: AtomicU64,
    pub resent: AtomicU64,
    /// The stages of the move under way, for its log line.
    pub log: MoveLog,
    /// The last completed move's stall (µs) and bytes resent, for status.
    pub last_stall_us: AtomicU64,
    pub last_resent: AtomicU64,
}

impl Mobility {
    pub fn new(
        key: StreamKey,
        id: StreamId,
        call_id: String,
        proto: sipcore::sdp::ChannelProto,
        peer_data: SocketAddr,
        local_ip: IpAddr,
        peer_sip: Option<SocketAddr>,
    ) -> Mobility {
        Mobility {
            key,
            id,
            call_id,
            proto,
            peer_by_invite: Mutex::new((0, peer_sip)),
            peer_by_resume: Mutex::new((0, None)),
            peer_data: Mutex::new(peer_data),
            local_ip: Mutex::new(local_ip),
            local_port: std::sync::atomic::AtomicU16::new(0),
            gate: Mutex::new(Gate::default()),
            moves_sent: AtomicU64::new(0),
            moves_seen: Mutex::new(MoveCounter::new()),
            lock: Mutex::new(()),
            role: std::sync::atomic::AtomicU8::new(IDLE),
            dial_nonce: Mutex::new(None),
            mover_running: std::sync::atomic::AtomicBool::new(false),
            moves: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            log: MoveLog::default(),
            last_stall_us: AtomicU64::new(0),
            last_resent: AtomicU64::new(0),
        }
    }

    /// The peer's SIP address as last learned from either source.
    pub fn peer_sip(&self) -> Option<SocketAddr> {
        let a = *self.peer_by_invite.lock();
        let b = *self.peer_by_resume.lock();
        if b.0 > a.0 {
            b.1
        } else {
            a.1
        }
    }

    /// A stamp later than every one given before.
    pub fn stamp() -> u64 {
        static SEQ: AtomicU64 = AtomicU64::new(1);
        SEQ.fetch_add(1, Ordering::Relaxed)
    }

    /// A move completed: its stall and resent bytes, then the count (so a
    /// reader that sees the count sees this move's figures).
    pub(crate) fn completed(&self, stall: Duration, resent: u64) -> u64 {
        self.last_stall_us
            .store(stall.as_micros() as u64, Ordering::Relaxed);
        self.last_resent.store(resent, Ordering::Relaxed);
        self.moves.fetch_add(1, Ordering::Release) + 1
    }
}

pub(crate) const IDLE: u8 = 0;
/// Dialling, before the peer's Challenge (the stream not frozen yet).
pub(crate) const DIALLING: u8 = 1;
pub(crate) const ANSWERING: u8 = 2;
/// Dialling, frozen: the peer proved itself on our connection. Reached
/// from DIALLING by a compare-and-swap that races [`YIELDED`].
pub(crate) const DIALLING_FROZEN: u8 = 3;
/// Dialling, told to give way to the peer's proven attempt before it
/// froze: it ends without freezing.
pub(crate) const YIELDED: u8 = 4;
