//! Moving a stream to a new TCP connection, exact to the byte.
//!
//! The side whose address changed dials the peer's SIP address (its Driver
//! hands connections that start with `WISP` to [`accept_resume`]) from its
//! new address and proves the stream key in the first bytes (resume Init,
//! like MPTCP's MP_JOIN). Both sides freeze the stream (no program call in
//! the old socket, its receive queue drained), exchange how much they have
//! received, resend from there, and put the new socket under the program's
//! descriptors. See ARCHITECTURE.md, "Moves".

use crate::engine::{self, Stream};
use crate::movelog::{MoveLog, Resumed};
use crate::real;
use libc::c_int;
use parking_lot::Mutex;
use sipcore::ids::StreamId;
use sipcore::keys::{MoveCounter, StreamKey};
use sipcore::resume::{self, Initiator, Msg, Resend, INIT_LEN};
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one resume handshake may take before it is abandoned (the
/// mover then tries again, until the move timeout).
const HANDSHAKE: Duration = Duration::from_secs(3);

/// What makes a stream movable: its key, its id, where the peer is.
pub struct Mobility {
    pub key: StreamKey,
    pub id: StreamId,
    pub call_id: String,
    /// TCP streams resume on a new connection; UDP ones are re-pointed.
    pub proto: sipcore::sdp::ChannelProto,
    /// The peer's SIP address (TCP): where resumed connections go.
    pub peer_sip: Mutex<Option<SocketAddr>>,
    /// The peer's data address, for route checks.
    pub peer_data: Mutex<SocketAddr>,
    /// The address this side's data connection uses now.
    pub local_ip: Mutex<IpAddr>,
    /// This side's data port (datagram streams announce it in a move).
    pub local_port: std::sync::atomic::AtomicU16,
    /// Our resume Init counter, and the peer's we have accepted.
    resume_sent: AtomicU64,
    resume_seen: Mutex<MoveCounter>,
    /// Our re-INVITE counter, and the peer's we have accepted.
    pub moves_sent: AtomicU64,
    pub moves_seen: Mutex<MoveCounter>,
    /// One move at a time.
    lock: Mutex<()>,
    /// Who holds `lock`: [`IDLE`], [`DIALLING`] or [`ANSWERING`].
    role: std::sync::atomic::AtomicU8,
    /// The counter of the newest genuine Init: an answer still resending
    /// on an older connection gives way to it (the peer moved again and
    /// that connection's address is gone).
    newest_init: AtomicU64,
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
    ) -> Mobility {
        Mobility {
            key,
            id,
            call_id,
            proto,
            peer_sip: Mutex::new(None),
            peer_data: Mutex::new(peer_data),
            local_ip: Mutex::new(local_ip),
            local_port: std::sync::atomic::AtomicU16::new(0),
            resume_sent: AtomicU64::new(0),
            resume_seen: Mutex::new(MoveCounter::new()),
            moves_sent: AtomicU64::new(0),
            moves_seen: Mutex::new(MoveCounter::new()),
            lock: Mutex::new(()),
            role: std::sync::atomic::AtomicU8::new(IDLE),
            newest_init: AtomicU64::new(0),
            mover_running: std::sync::atomic::AtomicBool::new(false),
            moves: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            log: MoveLog::default(),
            last_stall_us: AtomicU64::new(0),
            last_resent: AtomicU64::new(0),
        }
    }

    /// A move completed: its stall and resent bytes, then the count (so a
    /// reader that sees the count sees this move's figures).
    fn completed(&self, stall: Duration, resent: u64) -> u64 {
        self.last_stall_us
            .store(stall.as_micros() as u64, Ordering::Relaxed);
        self.last_resent.store(resent, Ordering::Relaxed);
        self.moves.fetch_add(1, Ordering::Release) + 1
    }
}

const IDLE: u8 = 0;
const DIALLING: u8 = 1;
const ANSWERING: u8 = 2;

/// Holds a stream's move lock in one role; back to idle when dropped.
struct Holding<'a> {
    mob: &'a Mobility,
    _g: parking_lot::MutexGuard<'a, ()>,
}

impl<'a> Holding<'a> {
    fn new(mob: &'a Mobility, g: parking_lot::MutexGuard<'a, ()>, role: u8) -> Holding<'a> {
        mob.role.store(role, Ordering::Release);
        Holding { mob, _g: g }
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.mob.role.store(IDLE, Ordering::Release);
    }
}

/// Whether `ip` is still one of this host's addresses (binding to it works).
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

fn set_timeouts(s: &TcpStream, d: Duration) {
    let _ = s.set_read_timeout(Some(d));
    let _ = s.set_write_timeout(Some(d));
}

/// Connect from `local` (port chosen by the kernel) with a timeout.
fn dial(local: IpAddr, peer: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let domain = if peer.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket creation.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let sock = unsafe { <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let bind_ip = match (local, peer) {
        (IpAddr::V4(v4), SocketAddr::V6(_)) => IpAddr::V6(v4.to_ipv6_mapped()),
        (l, _) => l,
    };
    let (ss, len) = sockaddr(SocketAddr::new(bind_ip, 0));
    // SAFETY: valid sockaddr.
    if unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (ss, len) = sockaddr(peer);
    // SAFETY: valid sockaddr; the real connect (never a placeholder here).
    let rc = unsafe { real::connect(fd, &ss as *const _ as *const libc::sockaddr, len) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe {
            real::poll(
                &mut p,
                1,
                timeout.as_millis().min(i32::MAX as u128) as c_int,
            )
        };
        if n <= 0 {
            return Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
        }
        if let Some(e) = sock.take_error()? {
            return Err(e);
        }
    }
    sock.set_nonblocking(false)?;
    Ok(sock)
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: storage fits either family.
    unsafe {
        crate::resolve::write_sockaddr(a.ip(), a.port(), &mut ss as *mut _ as *mut libc::sockaddr)
    };
    let len = if a.is_ipv4() {
        std::mem::size_of::<libc::sockaddr_in>()
    } else {
        std::mem::size_of::<libc::sockaddr_in6>()
    };
    (ss, len as libc::socklen_t)
}

/// When the stages of one attempt finished, for the move's log line.
#[derive(Default)]
struct Stamps {
    tcp_up: Option<Instant>,
    first_resent: Option<Instant>,
    ack: Option<Instant>,
    /// How long the program's calls were held (freeze to swap).
    stall: Duration,
    /// A lazy resend's start, once the Ack said it.
    resend_from: Option<u64>,
}

/// This side moved: resume every byte on a new connection to the peer,
/// from whatever address the routes pick. Retries until `deadline` (the
/// peer may be moving too, and its new address arrives with its
/// re-INVITE); while the host has no route it waits for the next netlink
/// event rather than a timer, so it dials the moment the new route exists.
pub fn initiate(stream: Arc<Stream>, deadline: Instant) {
    let Some(mob) = stream.mobility.as_ref() else {
        return;
    };
    let old_ip = *mob.local_ip.lock();
    let mut attempt = 0u32;
    let mut seen = crate::sip::net_epoch();
    while Instant::now() < deadline {
        let peer_data = *mob.peer_data.lock();
        let Some(new_ip) = crate::sip::route_ip(peer_data) else {
            seen = crate::sip::wait_net_change(seen, Duration::from_millis(100));
            continue;
        };
        let Some(peer) = *mob.peer_sip.lock() else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        attempt += 1;
        let mut st = Stamps::default();
        match initiate_once(&stream, mob, new_ip, peer, &mut st) {
            Ok(resent) => {
                *mob.local_ip.lock() = new_ip;
                let n = mob.completed(st.stall, resent);
                mob.log.resumed(
                    &mob.id,
                    Resumed {
                        n,
                        old: old_ip,
                        new: new_ip,
                        peer,
                        tcp_up: st.tcp_up,
                        first_resent: st.first_resent,
                        ack: st.ack,
                        stall: st.stall,
                        resent,
                        attempts: attempt,
                    },
                );
                mob.mover_running.store(false, Ordering::Release);
                return;
            }
            Err(e) => {
                debug!(
                    "move of stream {} via {peer} failed: {e}; trying again",
                    mob.id
                );
                std::thread::sleep(Duration::from_millis(100.min(20 * u64::from(attempt))));
            }
        }
    }
    warn!(
        "stream {}: no move completed within WISP_MOVE_TIMEOUT; the program now sees ETIMEDOUT",
        mob.id
    );
    stream.io.break_with(libc::ETIMEDOUT);
    engine::wake_epolls(&stream);
    mob.mover_running.store(false, Ordering::Release);
}

fn initiate_once(
    stream: &Stream,
    mob: &Mobility,
    new_ip: IpAddr,
    peer: SocketAddr,
    st: &mut Stamps,
) -> Result<u64, String> {
    let sock = dial(new_ip, peer, HANDSHAKE).map_err(|e| format!("connect: {e}"))?;
    st.tcp_up = Some(Instant::now());
    set_timeouts(&sock, HANDSHAKE);
    let _one = Holding::new(
        mob,
        mob.lock
            .try_lock_for(HANDSHAKE)
            .ok_or("another move of this stream is under way")?,
        DIALLING,
    );
    let fd = engine::fds_of(stream)
        .first()
        .copied()
        .ok_or("the stream has no descriptor")?;
    // Break-before-make (the old address is gone): what the old connection
    // had in flight is lost, so resend it at once, without waiting a round
    // trip for the Ack. Make-before-break: the old path still delivers
    // its flight, which the peer's rx in the Ack then counts; resending it
    // eagerly would push a whole window through the new connection's slow
    // start instead, so wait for the Ack.
    let eager = !is_local(*mob.local_ip.lock());
    let frozen_at = Instant::now();
    let mut frozen = stream.io.freeze(fd);
    let from = if eager {
        // What the old connection saw acknowledged the peer has (its freeze
        // drains it): resend the rest.
        frozen.trim_acked(fd);
        frozen.ring().start()
    } else {
        resume::LAZY
    };
    let counter = mob.resume_sent.fetch_add(1, Ordering::Relaxed) + 1;
    let ini = Initiator::new(&mob.key, mob.id, counter, frozen.rx(), from);
    let mut out = ini.init().to_vec();
    if eager {
        let (a, b) = frozen
            .ring()
            .slice_from(from)
            .map_err(|e| format!("ring: {e}"))?;
        out.extend_from_slice(a);
        out.extend_from_slice(b);
    }
    let mut inbound = Inbound::Ack(Box::new(ini), !eager);
    // Give up on this connection as soon as the address it was dialled
    // from is gone: the next attempt dials from the new one.
    let mut seen = crate::sip::net_epoch();
    let peer_data = *mob.peer_data.lock();
    let mut moved_on = || {
        let now = crate::sip::net_epoch();
        if now == seen {
            return false;
        }
        seen = now;
        crate::sip::route_ip(peer_data) != Some(new_ip)
    };
    exchange(
        &sock,
        &mut frozen,
        &mut out,
        INIT_LEN,
        &mut inbound,
        st,
        &mut moved_on,
    )?;
    engine::swap(stream, sock.into_raw_fd());
    drop(frozen);
    engine::wake_epolls(stream);
    st.stall = frozen_at.elapsed();
    let sent = (out.len() - INIT_LEN) as u64;
    mob.resent.fetch_add(sent, Ordering::Relaxed);
    Ok(sent)
}

/// What the new connection brings before the stream's own bytes.
enum Inbound {
    /// The initiator waits for the responder's Ack; resends only after it
    /// when `true` (lazy).
    Ack(Box<Initiator>, bool),
    /// The responder drops this many more of the initiator's resent bytes:
    /// it had them already.
    Skip(u64),
}

impl Inbound {
    fn done(&self) -> bool {
        matches!(self, Inbound::Skip(0))
    }

    /// Take `bytes` off the new connection: handshake and overlap are
    /// consumed here, stream bytes go to the program's pending bytes.
    fn take(
        &mut self,
        mut bytes: &[u8],
        frozen: &mut crate::stream::Frozen<'_>,
        st: &mut Stamps,
    ) -> Result<(), String> {
        if let Inbound::Ack(ini, lazy) = self {
            let Some(r) = ini.push(&mut bytes, frozen.ring()) else {
                return Ok(());
            };
            let plan = r.map_err(|e| format!("Ack: {e}"))?;
            st.ack = Some(Instant::now());
            if *lazy {
                st.resend_from = Some(plan.from);
            }
            *self = Inbound::Skip(0);
        }
        if let Inbound::Skip(left) = self {
            let drop = (*left).min(bytes.len() as u64) as usize;
            *left -= drop as u64;
            frozen.push_pending(&bytes[drop..]);
        }
        Ok(())
    }
}

/// Write `out` (our handshake message, then our resent stream from byte
/// `hs_len` on) while reading what the peer sends: its handshake message,
/// the overlap to drop, and its own resent bytes, which go to the
/// program's pending bytes. Both sides resend at once, and a side that only
/// wrote could fill both socket buffers and stall. Returns when all of
/// `out` is written and the handshake is complete.
fn exchange(
    sock: &TcpStream,
    frozen: &mut crate::stream::Frozen<'_>,
    out: &mut Vec<u8>,
    hs_len: usize,
    inbound: &mut Inbound,
    st: &mut Stamps,
    superseded: &mut dyn FnMut() -> bool,
) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let r = exchange_loop(sock, frozen, out, hs_len, inbound, st, superseded, &mut buf);
    if r.is_err() {
        // Giving up on a connection: whatever its receive queue has, our
        // TCP acknowledged, so the peer will not resend it. Take it before
        // the socket goes (through the handshake check: an Ack that does
        // not verify stops this, and nothing of it is kept).
        let fd = sock.as_raw_fd();
        loop {
            // SAFETY: our buffer.
            let n =
                unsafe { real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n <= 0 || inbound.take(&buf[..n as usize], frozen, st).is_err() {
                break;
            }
        }
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn exchange_loop(
    sock: &TcpStream,
    frozen: &mut crate::stream::Frozen<'_>,
    out: &mut Vec<u8>,
    hs_len: usize,
    inbound: &mut Inbound,
    st: &mut Stamps,
    superseded: &mut dyn FnMut() -> bool,
    buf: &mut [u8],
) -> Result<(), String> {
    let fd = sock.as_raw_fd();
    let mut off = 0usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    while off < out.len() || !inbound.done() {
        if Instant::now() > deadline {
            return Err("resend did not finish".into());
        }
        if superseded() {
            return Err("a newer move took over".into());
        }
        let want_out = off < out.len();
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN | if want_out { libc::POLLOUT } else { 0 },
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { real::poll(&mut p, 1, 50) };
        if p.revents & libc::POLLIN != 0 {
            // SAFETY: our buffer.
            let n =
                unsafe { real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n == 0 {
                return Err("peer closed the new connection (refused)".into());
            }
            if n > 0 {
                inbound.take(&buf[..n as usize], frozen, st)?;
                if let Some(from) = st.resend_from.take() {
                    let (a, b) = frozen
                        .ring()
                        .slice_from(from)
                        .map_err(|e| format!("ring: {e}"))?;
                    out.extend_from_slice(a);
                    out.extend_from_slice(b);
                }
            }
        }
        if want_out && p.revents & libc::POLLOUT != 0 {
            // SAFETY: our buffer.
            let n = unsafe {
                real::send(
                    fd,
                    out[off..].as_ptr().cast(),
                    out.len() - off,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n > 0 {
                off += n as usize;
                if off > hs_len && st.first_resent.is_none() {
                    st.first_resent = Some(Instant::now());
                }
            } else if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
            {
                return Err(format!("resend: {}", std::io::Error::last_os_error()));
            }
        }
        if p.revents & (libc::POLLERR | libc::POLLHUP) != 0 && p.revents & libc::POLLIN == 0 {
            return Err("new connection failed during resend".into());
        }
    }
    // The ring now holds exactly what was sent on the new connection too:
    // everything from the resend's start is unacknowledged there.
    Ok(())
}

/// A connection the Driver handed over because it starts with `WISP`: a
/// peer resuming a stream. Runs on its own thread.
pub fn accept_resume(sock: TcpStream, from: SocketAddr, first: Vec<u8>) {
    let _ = std::thread::Builder::new()
        .name("wisp-resume".into())
        .spawn(move || {
            crate::state::Inside::forever();
            if let Err(e) = respond(sock, from, first) {
                warn!("resume from {from} refused: {e}");
            }
        });
}

fn respond(sock: TcpStream, from: SocketAddr, first: Vec<u8>) -> Result<(), String> {
    let _ = sock.set_nonblocking(false);
    set_timeouts(&sock, HANDSHAKE);
    let mut got = first;
    let mut buf = vec![0u8; 64 * 1024];
    let (init, used) = loop {
        match resume::decode(&got).map_err(|e| e.to_string())? {
            Some((Msg::Init(i), used)) => break (i, used),
            Some((Msg::Ack(_), _)) => return Err("an Ack where an Init belongs".into()),
            None => {
                let n = (&sock)
                    .read(&mut buf)
                    .map_err(|e| format!("read Init: {e}"))?;
                if n == 0 {
                    return Err("closed before a whole Init".into());
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
    };
    let rest = got[used..].to_vec();
    let stream = engine::stream_by_id(&init.stream_id)
        .ok_or_else(|| format!("unknown stream {}", init.stream_id))?;
    let mob = stream.mobility.as_ref().ok_or("stream is not movable")?;
    // Check the key before anything else: a forged Init must not even
    // freeze the stream.
    if !init.verify(&mob.key) {
        return Err(format!("stream {}: wrong key (MAC)", mob.id));
    }
    if !mob.resume_seen.lock().is_fresh(init.counter) {
        return Err(format!(
            "stream {}: replayed resume counter {}",
            mob.id, init.counter
        ));
    }
    // A genuine Init newer than the one we may still be answering: that
    // answer gives way (its connection's far end has moved on).
    mob.newest_init.fetch_max(init.counter, Ordering::AcqRel);
    let local_new = sock.local_addr().map(|a| a.ip()).ok();
    let guard = match mob.lock.try_lock() {
        Some(g) => g,
        // Both ends dialled at once: the lower address's connection wins.
        None if mob.role.load(Ordering::Acquire) == DIALLING
            && local_new.is_some_and(|l| l < from.ip()) =>
        {
            return Err("both ends are resuming; ours wins (lower address)".into())
        }
        None => mob
            .lock
            .try_lock_for(HANDSHAKE)
            .ok_or("another move of this stream is under way")?,
    };
    let _one = Holding::new(mob, guard, ANSWERING);
    let fd = engine::fds_of(&stream)
        .first()
        .copied()
        .ok_or("the stream has no descriptor")?;
    let frozen_at = Instant::now();
    let mut frozen = stream.io.freeze(fd);
    let plan: Resend = resume::plan(frozen.ring(), init.rx).map_err(|e| e.to_string())?;
    let skip = resume::skip(init.from, frozen.rx()).map_err(|e| e.to_string())?;
    mob.resume_seen.lock().accept(init.counter);
    let mut out = resume::Ack::new(&mob.key, &init.stream_id, init.counter, frozen.rx())
        .encode()
        .to_vec();
    let hs_len = out.len();
    let (a, b) = frozen
        .ring()
        .slice_from(plan.from)
        .map_err(|e| format!("ring: {e}"))?;
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    let mut inbound = Inbound::Skip(skip);
    let mut st = Stamps::default();
    inbound.take(&rest, &mut frozen, &mut st)?;
    let mine = init.counter;
    let mut newer = || mob.newest_init.load(Ordering::Acquire) > mine;
    if let Err(e) = exchange(
        &sock,
        &mut frozen,
        &mut out,
        hs_len,
        &mut inbound,
        &mut st,
        &mut newer,
    ) {
        if newer() {
            // The newer Init's answer freezes the stream again at once.
            frozen.hand_over();
        }
        return Err(e);
    }
    let sent = plan.len;
    // The peer is at a new address; its SIP port is what it was.
    let mut peer_sip = mob.peer_sip.lock();
    *peer_sip = Some(SocketAddr::new(
        from.ip(),
        peer_sip.map_or(from.port(), |a| a.port()),
    ));
    drop(peer_sip);
    engine::swap(&stream, sock.into_raw_fd());
    drop(frozen);
    engine::wake_epolls(&stream);
    let stall = frozen_at.elapsed();
    mob.resent.fetch_add(sent, Ordering::Relaxed);
    let n = mob.completed(stall, sent);
    info!(
        "move stream={} n={n} peer_new={from} stall_ms={:.2} resent={sent} (the peer moved)",
        mob.id,
        stall.as_secs_f64() * 1000.0
    );
    Ok(())
}
