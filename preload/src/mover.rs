//! Moving a stream to a new TCP connection, exact to the byte.
//!
//! The side whose address changed dials the peer's SIP address (its Driver
//! hands connections that start with `WISP` to [`accept_resume`]) from its
//! new address. Everything the handshake decides is in
//! `sipcore::resume::Exchange`; this module carries its bytes, freezes the
//! stream when it asks (no program call in the old socket, its receive
//! queue drained), takes the attempt's number under the stream's move
//! lock, and puts the new socket under the program's descriptors. See
//! ARCHITECTURE.md, "Moves".

use crate::mobility::{Mobility, ANSWERING, DIALLING, DIALLING_FROZEN, IDLE, YIELDED};
use crate::movelog::Resumed;
use crate::real;
use crate::table::{self, Stream};
use libc::c_int;
use parking_lot::Mutex;
use sipcore::ids::StreamId;
use sipcore::resume::{self, Admit, Exchange, Need, Resend};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one resume handshake may take before it is abandoned (the
/// mover then tries again, until the move timeout).
const HANDSHAKE: Duration = Duration::from_secs(3);

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

/// Connect from `local` (port chosen by the kernel) with a timeout; given
/// up as soon as `stale()` says the peer is known to be elsewhere now (its
/// re-INVITE arrived while we dialled the address it left).
fn dial(
    local: IpAddr,
    peer: SocketAddr,
    timeout: Duration,
    stale: &dyn Fn() -> bool,
) -> std::io::Result<TcpStream> {
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
        let until = Instant::now() + timeout;
        loop {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { real::poll(&mut p, 1, 50) };
            if n > 0 {
                break;
            }
            if stale() {
                return Err(std::io::Error::from_raw_os_error(libc::ECANCELED));
            }
            if Instant::now() > until {
                return Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
            }
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
    frozen_at: Option<Instant>,
    /// How long the program's calls were held (freeze to swap).
    stall: Duration,
    /// Stream bytes written on the new connection before the swap.
    resent: u64,
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
    let mut seen = crate::routes::net_epoch();
    while Instant::now() < deadline {
        let peer_data = *mob.peer_data.lock();
        let Some(new_ip) = crate::routes::route_ip(peer_data) else {
            seen = crate::routes::wait_net_change(seen, Duration::from_millis(100));
            continue;
        };
        let Some(peer) = mob.peer_sip() else {
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
            Err(e) if e.fatal => {
                warn!(
                    "stream {}: {}; the program now sees ECONNRESET",
                    mob.id, e.why
                );
                stream.io.break_with(libc::ECONNRESET);
                table::wake_epolls(&stream);
                mob.mover_running.store(false, Ordering::Release);
                return;
            }
            Err(e) => {
                debug!(
                    "move of stream {} via {peer} failed: {}; trying again",
                    mob.id, e.why
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
    table::wake_epolls(&stream);
    mob.mover_running.store(false, Ordering::Release);
}

/// Why an attempt failed, and whether the stream can never be exact again.
struct Failed {
    why: String,
    fatal: bool,
}

impl From<String> for Failed {
    fn from(why: String) -> Failed {
        Failed { why, fatal: false }
    }
}

impl From<&str> for Failed {
    fn from(why: &str) -> Failed {
        Failed {
            why: why.to_string(),
            fatal: false,
        }
    }
}

impl From<resume::ResumeError> for Failed {
    fn from(e: resume::ResumeError) -> Failed {
        Failed {
            why: e.to_string(),
            fatal: e.is_fatal(),
        }
    }
}

/// A fresh, unpredictable nonce (the ids generator: SHA-256 over a
/// getrandom seed and a counter).
fn nonce() -> resume::Nonce {
    sipcore::ids::StreamId::random().0
}

fn initiate_once(
    stream: &Stream,
    mob: &Mobility,
    new_ip: IpAddr,
    peer: SocketAddr,
    st: &mut Stamps,
) -> Result<u64, Failed> {
    let moved_elsewhere = || mob.peer_sip() != Some(peer);
    let sock =
        dial(new_ip, peer, HANDSHAKE, &moved_elsewhere).map_err(|e| format!("connect: {e}"))?;
    st.tcp_up = Some(Instant::now());
    set_timeouts(&sock, HANDSHAKE);
    let _one = Holding::new(
        mob,
        mob.lock
            .try_lock_for(HANDSHAKE)
            .ok_or("another move of this stream is under way")?,
        DIALLING,
    );
    // Break-before-make (the old address is gone): what the old connection
    // had in flight is lost, so resend it right behind the Proof.
    // Make-before-break: the old path still delivers its flight, which the
    // peer's rx in the Ack then counts; resending it eagerly would push a
    // whole window through the new connection's slow start instead.
    let mode = Resend::for_move(is_local(*mob.local_ip.lock()));
    let counter = mob.gate.lock().next_attempt();
    let ex = Exchange::dial(&mob.key, mob.id, counter, nonce(), mode);
    *mob.dial_nonce.lock() = ex.nonce_a();
    // Give up on this connection as soon as the address it was dialled
    // from is gone: the next attempt dials from the new one.
    let mut seen = crate::routes::net_epoch();
    let peer_data = *mob.peer_data.lock();
    let mut moved_on = move || {
        if mob.role.load(Ordering::Acquire) == YIELDED {
            return true;
        }
        let now = crate::routes::net_epoch();
        if now == seen {
            return false;
        }
        seen = now;
        crate::routes::route_ip(peer_data) != Some(new_ip)
    };
    let mut run = Run::new(stream, mob, sock, ex, st, None);
    run.drive(&[], &mut moved_on)?;
    Ok(run.finish())
}

/// One attempt carried out: the machine, the connection, the stream.
struct Run<'a> {
    /// Answering: our place among unproven connections, left on the Proof
    /// (declared before `sock`, so dropped before the socket closes).
    place: Option<Unproven>,
    stream: &'a Stream,
    mob: &'a Mobility,
    sock: TcpStream,
    ex: Exchange,
    st: &'a mut Stamps,
    /// Answering: the move lock, taken on the Proof.
    holder: Option<Holding<'a>>,
    /// The stream, frozen, once the attempt succeeded.
    kept: Option<crate::stream::Frozen<'a>>,
    /// Our descriptor of the socket the program's descriptors named at
    /// the freeze.
    old: Option<OwnedFd>,
}

impl<'a> Run<'a> {
    fn new(
        stream: &'a Stream,
        mob: &'a Mobility,
        sock: TcpStream,
        ex: Exchange,
        st: &'a mut Stamps,
        place: Option<Unproven>,
    ) -> Run<'a> {
        Run {
            stream,
            mob,
            sock,
            ex,
            st,
            holder: None,
            place,
            kept: None,
            old: None,
        }
    }

    /// Carry the handshake and both resends until the connection can be
    /// swapped in. Returns with the stream frozen in `self.st.frozen`.
    fn drive(&mut self, first: &[u8], superseded: &mut dyn FnMut() -> bool) -> Result<(), Failed> {
        let fd_of = || table::fds_of(self.stream).first().copied();
        let sfd = self.sock.as_raw_fd();
        let mut frozen: Option<crate::stream::Frozen<'a>> = None;
        let mut old_fd: c_int = -1;
        let mut buf = vec![0u8; 64 * 1024];
        let mut carry: Vec<u8> = first.to_vec();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        let mut peer_fin = false;
        let result = loop {
            if Instant::now() > deadline {
                break Err("resend did not finish".into());
            }
            // The Challenge within 3 s; once frozen, 3 s more for the Ack
            // (the answerer may wait up to 3 s for its move lock).
            if !self.ex.established()
                && started.elapsed()
                    > if frozen.is_some() {
                        2 * HANDSHAKE
                    } else {
                        HANDSHAKE
                    }
            {
                break Err("no handshake in time".into());
            }
            if superseded() {
                break Err("a newer move took over".into());
            }
            // What arrived, through the machine.
            let mut input = &carry[..];
            let mut outcome = Ok(());
            loop {
                let need = match frozen.as_mut() {
                    Some(f) => {
                        let mut view = crate::stream::View {
                            frozen: f,
                            old: old_fd,
                        };
                        self.ex.input(&mut input, Some(&mut view))
                    }
                    None => self.ex.input(&mut input, None),
                };
                match need {
                    Err(e) => {
                        outcome = Err(Failed::from(e));
                        break;
                    }
                    Ok(Need::Input) => break,
                    Ok(Need::Lookup(_)) => {
                        outcome = Err("lookup after the stream was found".into());
                        break;
                    }
                    Ok(Need::Freeze) | Ok(Need::Commit(_)) => {
                        if let Ok(Need::Commit(c)) = need {
                            if let Err(e) = self.commit(c) {
                                outcome = Err(e);
                                break;
                            }
                        }
                        let Some(fd) = fd_of() else {
                            outcome = Err("the stream has no descriptor".into());
                            break;
                        };
                        // Our own descriptor of the old socket for the rest
                        // of the attempt: the program may close its own
                        // meanwhile, and the number be reused by another
                        // socket of the program.
                        // SAFETY: dup of a descriptor the stream names.
                        let dup = unsafe { real::dup(fd) };
                        if dup < 0 {
                            outcome = Err("cannot hold the old socket".into());
                            break;
                        }
                        // SAFETY: a fresh descriptor of ours.
                        let owned = unsafe { <OwnedFd as FromRawFd>::from_raw_fd(dup) };
                        old_fd = owned.as_raw_fd();
                        self.old = Some(owned);
                        if self.holder.is_none()
                            && self
                                .mob
                                .role
                                .compare_exchange(
                                    DIALLING,
                                    DIALLING_FROZEN,
                                    Ordering::AcqRel,
                                    Ordering::Acquire,
                                )
                                .is_err()
                        {
                            outcome = Err("gave way to the peer's proven attempt".into());
                            break;
                        }
                        self.st.frozen_at = Some(Instant::now());
                        let f = frozen.insert(self.stream.io.freeze(fd));
                        let mut view = crate::stream::View {
                            frozen: f,
                            old: old_fd,
                        };
                        if let Err(e) = self.ex.frozen(&mut view) {
                            outcome = Err(e.into());
                            break;
                        }
                    }
                }
            }
            let used = carry.len() - input.len();
            carry.drain(..used);
            if let Err(e) = outcome {
                break Err(e);
            }
            if self.ex.established() && self.st.ack.is_none() {
                self.st.ack = Some(Instant::now());
            }
            if let Some(f) = frozen.as_ref() {
                if self.ex.is_done(f.ring()) {
                    break Ok(());
                }
            }
            // Write what the machine has, read what comes.
            let want_out = self
                .ex
                .poll_transmit(frozen.as_ref().map(|f| f.ring()))
                .is_some();
            let mut p = libc::pollfd {
                fd: sfd,
                events: if peer_fin { 0 } else { libc::POLLIN }
                    | if want_out { libc::POLLOUT } else { 0 },
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { real::poll(&mut p, 1, 50) };
            if want_out && p.revents & libc::POLLOUT != 0 {
                let handshake = self.ex.handshake_pending();
                if let Some(out) = self.ex.poll_transmit(frozen.as_ref().map(|f| f.ring())) {
                    // SAFETY: a live slice.
                    let n = unsafe {
                        real::send(
                            sfd,
                            out.as_ptr().cast(),
                            out.len(),
                            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        )
                    };
                    if n > 0 {
                        self.ex.transmitted(n as usize);
                        if !handshake {
                            self.st.resent += n as u64;
                            self.st.first_resent.get_or_insert_with(Instant::now);
                        }
                    } else if n < 0 && errno() != libc::EAGAIN {
                        break Err(format!("resend: {}", std::io::Error::last_os_error()).into());
                    }
                }
            }
            if p.revents & libc::POLLIN != 0 && carry.is_empty() {
                // SAFETY: our buffer.
                let n = unsafe {
                    real::recv(sfd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                if n == 0 {
                    if !self.ex.established() {
                        break Err("peer closed the new connection (refused)".into());
                    }
                    // After the handshake an end of file is the peer
                    // program's FIN (a half-closed stream), sent again
                    // behind its resend: the program reads it once the
                    // socket is its own. Our own resend goes on.
                    peer_fin = true;
                }
                if n > 0 {
                    carry.extend_from_slice(&buf[..n as usize]);
                    continue;
                }
            }
            if p.revents & libc::POLLERR != 0
                || (p.revents & libc::POLLHUP != 0 && p.revents & libc::POLLIN == 0 && !peer_fin)
            {
                break Err("new connection failed".into());
            }
        };
        match result {
            Ok(()) => {
                self.kept = frozen;
                Ok(())
            }
            Err(e) => {
                if let Some(mut f) = frozen {
                    {
                        // Giving up on a connection the stream was frozen
                        // for: what it brought, our TCP acknowledged, and a
                        // peer that swapped to it trims by that. Take it,
                        // through the handshake check (an Ack that does
                        // not verify stops this), placed by offset (the old
                        // socket may bring it again).
                        let mut input = &carry[..];
                        let mut view = crate::stream::View {
                            frozen: &mut f,
                            old: old_fd,
                        };
                        let _ = self.ex.input(&mut input, Some(&mut view));
                        loop {
                            // SAFETY: our buffer.
                            let n = unsafe {
                                real::recv(
                                    sfd,
                                    buf.as_mut_ptr().cast(),
                                    buf.len(),
                                    libc::MSG_DONTWAIT,
                                )
                            };
                            if n <= 0 {
                                break;
                            }
                            let mut input = &buf[..n as usize];
                            if self.ex.input(&mut input, Some(&mut view)).is_err() {
                                break;
                            }
                        }
                    }
                    if superseded() || (self.holder.is_none() && !e.fatal) {
                        // Leave the stream held for the next attempt. A newer
                        // attempt's answer freezes it again at once; a
                        // dialler that sent its Proof retries, and the peer
                        // may have swapped to this connection already and
                        // left (reset) the one the descriptor still names.
                        f.hand_over();
                    }
                }
                // The connection is left: a reset, never a FIN the peer's
                // program could take for the end of the stream.
                table::abort_on_close(sfd);
                if e.fatal {
                    self.stream.io.break_with(libc::ECONNRESET);
                }
                // Bytes the freeze drained wait for the program: wake its
                // epoll waits (the socket cannot say so).
                table::wake_epolls(self.stream);
                Err(e)
            }
        }
    }

    /// Answering: the dialler proved attempt `counter` here. Take the move
    /// lock (both ends dialling: the lower address's connection wins),
    /// then the number.
    fn commit(&mut self, counter: u64) -> Result<(), Failed> {
        self.place.take();
        self.mob.gate.lock().proven(counter);
        let mob = self.mob;
        let guard = match mob.lock.try_lock() {
            Some(g) => g,
            None => {
                // Our dialler holds the move. Before it froze it gives way
                // (one compare-and-swap decides between its freeze and this
                // yield); after, the lower dialler nonce wins.
                let yielded = mob
                    .role
                    .compare_exchange(DIALLING, YIELDED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if !yielded && mob.role.load(Ordering::Acquire) == DIALLING_FROZEN {
                    let ours = *mob.dial_nonce.lock();
                    let theirs = self.ex.nonce_a();
                    if let (Some(o), Some(t)) = (ours, theirs) {
                        if resume::contention(true, &o, &t) == resume::Contention::TheirsRefused {
                            return Err("both ends are resuming; ours wins".into());
                        }
                    }
                }
                mob.lock
                    .try_lock_for(HANDSHAKE)
                    .ok_or("another move of this stream is under way")?
            }
        };
        self.holder = Some(Holding::new(mob, guard, ANSWERING));
        mob.gate.lock().commit(counter)?;
        Ok(())
    }

    /// The attempt succeeded: put the new socket under the descriptors,
    /// thaw, wake the program's waits. Returns the bytes resent.
    fn finish(mut self) -> u64 {
        let mut frozen = self
            .kept
            .take()
            .expect("drive returned with the stream frozen");
        // What the old socket's kernel took (and acknowledged) since the
        // freeze: the peer will not send it again. Placed by offset.
        if let Some(old) = self.old.as_ref() {
            frozen.drain(old.as_raw_fd());
        }
        table::swap(self.stream, self.sock.into_raw_fd());
        frozen.swapped(self.ex.inbound());
        if self.stream.io.is_shut_wr() {
            // The program's FIN follows the resend, as it followed the
            // data on the old connection.
            if let Some(&fd) = table::fds_of(self.stream).first() {
                // SAFETY: shutdown has no pointer arguments.
                unsafe { real::shutdown(fd, libc::SHUT_WR) };
            }
        }
        drop(frozen);
        table::wake_epolls(self.stream);
        if let Some(at) = self.st.frozen_at {
            self.st.stall = at.elapsed();
        }
        let resent = self.st.resent;
        self.mob.resent.fetch_add(resent, Ordering::Relaxed);
        resent
    }
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Resume connections that have not proved themselves yet, to bound what
/// strangers (or an observer replaying a genuine Init) can make us hold:
/// before the Init by source address, after it by source and stream
/// (`resume::admit` decides who goes). Each entry: id, key, descriptor.
type Waiting<K> = Mutex<Vec<(u64, K, c_int)>>;
static BEFORE_INIT: Waiting<IpAddr> = Mutex::new(Vec::new());
static BEFORE_PROOF: Waiting<(IpAddr, StreamId)> = Mutex::new(Vec::new());

/// A place in one of those lists, left when dropped (before the socket
/// it names is closed: a `Run` drops it first).
struct Unproven(u64, fn(u64));

impl Unproven {
    fn admit<K: PartialEq + Copy + std::fmt::Debug>(
        list: &'static Waiting<K>,
        key: K,
        fd: c_int,
        bounds: resume::Bounds,
        leave: fn(u64),
    ) -> Unproven {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut u = list.lock();
        let keys: Vec<K> = u.iter().map(|e| e.1).collect();
        if let Admit::Evict(k) = resume::admit(&keys, &key, bounds) {
            let (_, victim_key, victim) = u.remove(k);
            debug!("resume connection {victim_key:?} dropped: too many unproven");
            // SAFETY: shuts the victim's socket (its thread then ends); the
            // descriptor is open until that thread leaves the list.
            unsafe { libc::shutdown(victim, libc::SHUT_RDWR) };
        }
        u.push((id, key, fd));
        Unproven(id, leave)
    }

    fn before_init(source: IpAddr, fd: c_int) -> Unproven {
        Unproven::admit(&BEFORE_INIT, source, fd, resume::BEFORE_INIT, |id| {
            BEFORE_INIT.lock().retain(|e| e.0 != id)
        })
    }

    fn before_proof(source: IpAddr, stream: StreamId, fd: c_int) -> Unproven {
        Unproven::admit(
            &BEFORE_PROOF,
            (source, stream),
            fd,
            resume::BEFORE_PROOF,
            |id| BEFORE_PROOF.lock().retain(|e| e.0 != id),
        )
    }
}

impl Drop for Unproven {
    fn drop(&mut self) {
        (self.1)(self.0);
    }
}

/// A connection the Driver handed over because it starts with `WISP`: a
/// peer resuming a stream. Runs on its own thread.
pub fn accept_resume(sock: TcpStream, from: SocketAddr, first: Vec<u8>) {
    let _ = std::thread::Builder::new()
        .name("wisp-resume".into())
        .spawn(move || {
            crate::state::Inside::forever();
            if let Err(e) = respond(sock, from, first) {
                warn!("resume from {from} refused: {}", e.why);
            }
        });
}

fn respond(sock: TcpStream, from: SocketAddr, first: Vec<u8>) -> Result<(), Failed> {
    let _ = sock.set_nonblocking(false);
    set_timeouts(&sock, HANDSHAKE);
    // Held (and dropped) for its place in the list until the Init is read.
    let before_init = Unproven::before_init(from.ip(), sock.as_raw_fd());
    // Read up to the Init, within a second in all (a stranger trickling
    // bytes holds its place no longer).
    let init_by = Instant::now() + Duration::from_secs(1);
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let mut ex = Exchange::answer();
    let mut got = first;
    let mut buf = [0u8; 512];
    let id = loop {
        if Instant::now() > init_by {
            return Err("no whole Init within a second".into());
        }
        let mut input = &got[..];
        match ex.input(&mut input, None)? {
            Need::Lookup(id) => {
                let used = got.len() - input.len();
                got.drain(..used);
                break id;
            }
            _ => {
                let used = got.len() - input.len();
                got.drain(..used);
                let n = match std::io::Read::read(&mut &sock, &mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                    Err(e) => return Err(format!("read Init: {e}").into()),
                };
                if n == 0 {
                    return Err("closed before a whole Init".into());
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
    };
    let stream = table::stream_by_id(&id).ok_or_else(|| format!("unknown stream {id}"))?;
    let place = Unproven::before_proof(from.ip(), id, sock.as_raw_fd());
    drop(before_init);
    set_timeouts(&sock, HANDSHAKE);
    let mob = stream.mobility.as_ref().ok_or("stream is not movable")?;
    // Nothing is decided on the Init: a copy of a genuine one passes here
    // and earns only a Challenge that its sender cannot answer.
    ex.found(&mob.key, &mob.gate.lock(), nonce())?;
    let counter = ex.counter().unwrap_or(0);
    let local = sock.local_addr().map(|a| a.ip()).ok();
    let mut st = Stamps::default();
    let mut run = Run::new(&stream, mob, sock, ex, &mut st, Some(place));
    // A newer attempt proven on another connection: the peer has moved on
    // from this one.
    let mut superseded = || mob.gate.lock().superseded(counter);
    run.drive(&got, &mut superseded)?;
    // The peer is where this connection came from, if no newer attempt
    // was proven meanwhile (a late connection may come from an address
    // the peer has left again); its SIP port is what it was. The re-INVITE
    // says the same when it arrives, but a move that completes before the
    // host's next coalesced netlink notification sends none.
    if !mob.gate.lock().superseded(counter) {
        let port = mob.peer_sip().map_or(from.port(), |a| a.port());
        *mob.peer_by_resume.lock() = (Mobility::stamp(), Some(SocketAddr::new(from.ip(), port)));
    }
    // We are where the peer reached us.
    if let Some(ip) = local {
        *mob.local_ip.lock() = ip;
    }
    let sent = run.finish();
    let n = mob.completed(st.stall, sent);
    info!(
        "move stream={} n={n} peer_new={from} stall_ms={:.2} resent={sent} (the peer moved)",
        mob.id,
        st.stall.as_secs_f64() * 1000.0
    );
    Ok(())
}
