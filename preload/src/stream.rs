//! The data path of a wisp stream: every byte the program sends is counted
//! and kept in the replay ring until the peer's TCP has it, every byte it
//! receives is counted, and no program thread ever blocks inside the
//! kernel on the stream's socket.
//!
//! Why the last: a move must be able to stop all traffic on the old socket
//! at an exact byte count and wake every thread waiting on it without
//! tearing the old connection down (a FIN the peer read too early would be
//! an end of stream it never asked for). So each call is made with
//! MSG_DONTWAIT, and a call the program made blocking waits in our poll(),
//! on the socket and on the stream's wake eventfd. The program's own view of
//! O_NONBLOCK is untouched: it is read from the file at each call.

use crate::real;
use libc::{c_int, c_void, iovec, msghdr, ssize_t};
use parking_lot::{Condvar, Mutex};
use sipcore::resume::{Cursor, StreamView};
use sipcore::ring::ReplayRing;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where the ring starts; it grows with the socket's send buffer (the
/// kernel cannot hold more unacknowledged bytes than that).
const RING_START: usize = 256 * 1024;

/// Bytes sent and not known to be received, and how many were sent.
struct TxSide {
    ring: ReplayRing,
}

/// Bytes received, and bytes taken from an old socket during a move that
/// the program has not read yet (it gets them before anything new).
struct RxSide {
    rx: u64,
    pending: Vec<u8>,
    pending_at: usize,
    /// Where the next byte from the socket under the descriptor sits in
    /// the stream: behind `rx + held` after a move attempt that failed
    /// once its connection had brought bytes, which the old socket then
    /// brings again (they are read and dropped first).
    cursor: Cursor,
}

impl RxSide {
    /// Received: handed to the program plus held for it.
    fn total(&self) -> u64 {
        self.rx + (self.pending.len() - self.pending_at) as u64
    }

    fn hold(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.pending_at == self.pending.len() {
            self.pending.clear();
            self.pending_at = 0;
        }
        self.pending.extend_from_slice(bytes);
    }

    /// Read what the socket `fd` has now, placed by offset: duplicates
    /// dropped, the rest held.
    fn read_placed(&mut self, fd: c_int, buf: &mut [u8]) -> Placed {
        // SAFETY: our buffer.
        let n = unsafe { real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n == 0 {
            return Placed::Eof;
        }
        if n < 0 {
            let e = errno();
            return if e == libc::EAGAIN || e == libc::EINTR {
                Placed::Nothing
            } else {
                Placed::Failed(e)
            };
        }
        let total = self.total();
        match self.cursor.take(total, &buf[..n as usize]) {
            Ok(new) => {
                let new = new.to_vec();
                self.hold(&new);
                Placed::Got
            }
            Err(e) => {
                warn!("stream bytes out of place ({e}); the stream is reset");
                Placed::Failed(libc::ECONNRESET)
            }
        }
    }
}

/// What one placed read of a socket found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    Got,
    Nothing,
    Eof,
    Failed(c_int),
}

impl RxSide {}

pub struct StreamIo {
    tx: Mutex<TxSide>,
    rx: Mutex<RxSide>,
    moving: AtomicBool,
    /// The program shut down its sending side (shutdown SHUT_WR): the
    /// FIN is part of the stream, and a connection that resumes it is
    /// shut down too once the resend is written.
    wr_shut: AtomicBool,
    /// Set when no move completed within WISP_MOVE_TIMEOUT: the errno every
    /// later call on the stream gets (held bytes are still delivered).
    broken: std::sync::atomic::AtomicI32,
    settled: Mutex<()>,
    settled_cv: Condvar,
    /// The eventfd waiters poll beside the socket. A move writes it and
    /// then replaces it with a fresh one, never resetting it: a waiter that
    /// picked the old one up just before the move still finds it readable,
    /// so no thread can sleep on a socket that a move has taken away.
    wake: Mutex<std::sync::Arc<Wake>>,
    /// Copies of the counters, for `wisp status`: read without the data
    /// path's locks (a move holds those for its whole handshake).
    stats: Stats,
}

/// Relaxed copies of what the locked sides know, stored as they change.
#[derive(Default)]
struct Stats {
    tx: AtomicU64,
    rx: AtomicU64,
    ring_held: AtomicU64,
    ring_capacity: AtomicU64,
    /// Bytes held for the program: poll, epoll_wait and FIONREAD read it
    /// without the rx lock, which a move holds for its whole handshake.
    pending: AtomicU64,
}

/// The counters of a stream, as `wisp status` shows them.
#[derive(Clone, Copy, Debug, Default)]
pub struct IoStats {
    pub tx: u64,
    pub rx: u64,
    pub ring_held: u64,
    pub ring_capacity: u64,
    /// Held still for a move (between freeze and swap).
    pub frozen: bool,
    /// The errno the stream now fails with (no move in time), or 0.
    pub broken: c_int,
}

struct Wake(c_int);

impl Wake {
    fn new() -> std::io::Result<Wake> {
        // SAFETY: eventfd has no pointer arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Wake(fd))
    }

    fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { real::write(self.0, (&one as *const u64).cast(), 8) };
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        // SAFETY: our own eventfd.
        unsafe { real::close(self.0) };
    }
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn set_errno(e: c_int) {
    crate::sock::set_errno(e)
}

/// The program's own blocking mode for the socket, read from the file.
fn program_nonblocking(fd: c_int) -> bool {
    // SAFETY: F_GETFL has no pointer arguments.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    fl >= 0 && fl & libc::O_NONBLOCK != 0
}

/// SO_RCVTIMEO / SO_SNDTIMEO: a blocking call that waits longer fails with
/// EAGAIN, as the kernel's would.
fn socket_timeout(fd: c_int, opt: c_int) -> Option<Duration> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: valid out pointers.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &mut tv as *mut _ as *mut c_void,
            &mut len,
        )
    };
    if rc != 0 || (tv.tv_sec == 0 && tv.tv_usec == 0) {
        return None;
    }
    Some(Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64))
}

/// Total length of an iovec list.
///
/// # Safety
/// `iov` valid for `n` entries.
unsafe fn iov_len(iov: *const iovec, n: usize) -> usize {
    (0..n).map(|i| unsafe { (*iov.add(i)).iov_len }).sum()
}

/// The first `limit` bytes of an iovec list, as a new list.
///
/// # Safety
/// `iov` valid for `n` entries.
unsafe fn iov_prefix(iov: *const iovec, n: usize, limit: usize) -> Vec<iovec> {
    let mut out = Vec::with_capacity(n);
    let mut left = limit;
    for i in 0..n {
        if left == 0 {
            break;
        }
        let v = unsafe { *iov.add(i) };
        let take = v.iov_len.min(left);
        out.push(iovec {
            iov_base: v.iov_base,
            iov_len: take,
        });
        left -= take;
    }
    out
}

/// Call `f` for each slice of the first `n` bytes of an iovec list.
///
/// # Safety
/// `iov` valid for `count` entries with readable buffers.
unsafe fn for_each_slice(iov: *const iovec, count: usize, n: usize, mut f: impl FnMut(&[u8])) {
    let mut left = n;
    for i in 0..count {
        if left == 0 {
            break;
        }
        let v = unsafe { *iov.add(i) };
        let take = v.iov_len.min(left);
        if take > 0 {
            f(unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, take) });
        }
        left -= take;
    }
}

/// Before the ring's storage grows, drop what the peer's TCP has
/// acknowledged, so the storage follows the unacknowledged bytes (at most
/// one send buffer) rather than everything sent since the ring last filled:
/// a stream that sends a lot to a peer that keeps up then holds little.
/// Called after `sent` more bytes went into the socket and before they are
/// pushed: SIOCOUTQ counts them already.
fn trim_acked(fd: c_int, ring: &mut ReplayRing, sent: usize) {
    let mut outq: c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut outq) } == 0 && outq >= 0 {
        let acked = (ring.tx() + sent as u64).saturating_sub(outq as u64);
        ring.trim_to(acked.min(ring.tx()));
    }
}

/// A send-family call, reduced to what the data path needs.
pub struct SendCall<'a> {
    pub iov: &'a [iovec],
    /// The program's sendmsg header (name, control data, flags), if any.
    pub msg: Option<&'a msghdr>,
    pub flags: c_int,
}

/// A receive-family call.
pub struct RecvCall<'a> {
    pub iov: &'a [iovec],
    pub msg: Option<*mut msghdr>,
    pub flags: c_int,
}

impl StreamIo {
    pub fn new() -> std::io::Result<StreamIo> {
        let wake = Wake::new()?;
        Ok(StreamIo {
            tx: Mutex::new(TxSide {
                ring: ReplayRing::new(RING_START),
            }),
            rx: Mutex::new(RxSide {
                rx: 0,
                pending: Vec::new(),
                pending_at: 0,
                cursor: Cursor { next: 0 },
            }),
            moving: AtomicBool::new(false),
            wr_shut: AtomicBool::new(false),
            broken: std::sync::atomic::AtomicI32::new(0),
            settled: Mutex::new(()),
            settled_cv: Condvar::new(),
            wake: Mutex::new(std::sync::Arc::new(wake)),
            stats: Stats {
                ring_capacity: AtomicU64::new(RING_START as u64),
                ..Stats::default()
            },
        })
    }

    /// The stream's counters, without taking any of its locks.
    pub fn stats(&self) -> IoStats {
        let s = &self.stats;
        IoStats {
            tx: s.tx.load(Ordering::Relaxed),
            rx: s.rx.load(Ordering::Relaxed),
            ring_held: s.ring_held.load(Ordering::Relaxed),
            ring_capacity: s.ring_capacity.load(Ordering::Relaxed),
            frozen: self.moving.load(Ordering::Relaxed),
            broken: self.broken.load(Ordering::Relaxed),
        }
    }

    fn note_ring(&self, ring: &ReplayRing) {
        self.stats.tx.store(ring.tx(), Ordering::Relaxed);
        self.stats
            .ring_held
            .store(ring.len() as u64, Ordering::Relaxed);
        self.stats
            .ring_capacity
            .store(ring.capacity() as u64, Ordering::Relaxed);
    }

    /// Bytes sent (accepted from the program) and received (handed to it).
    pub fn counters(&self) -> (u64, u64) {
        let tx = self.tx.lock().ring.tx();
        let rx = self.rx.lock().rx;
        (tx, rx)
    }

    /// Bytes held for the program (drained from an old socket), for
    /// FIONREAD and readiness. Never waits for a move.
    pub fn pending(&self) -> usize {
        self.stats.pending.load(Ordering::Acquire) as usize
    }

    /// The program called shutdown(SHUT_WR) (or SHUT_RDWR).
    pub fn shut_wr(&self) {
        self.wr_shut.store(true, Ordering::Release);
    }

    pub fn is_shut_wr(&self) -> bool {
        self.wr_shut.load(Ordering::Acquire)
    }

    /// Bytes held for the program, or a failure to report: a read returns
    /// without the socket.
    pub fn readable_here(&self) -> bool {
        self.pending() > 0 || self.broken.load(Ordering::Acquire) != 0
    }

    fn note_pending(&self, r: &RxSide) {
        self.stats
            .pending
            .store((r.pending.len() - r.pending_at) as u64, Ordering::Release);
    }

    /// Wait (a blocking call) until the socket is ready for `events` or a
    /// move wakes us. Returns false on timeout.
    fn wait(&self, fd: c_int, events: i16, deadline: Option<Instant>) -> bool {
        loop {
            // Taken before `moving` is looked at: a move that starts after
            // this line rings exactly this eventfd.
            let wake = self.wake.lock().clone();
            // A move may have left bytes for us in `pending` while this
            // thread was between checks: the socket would never say so.
            if events & libc::POLLIN != 0 && self.pending() > 0 {
                return true;
            }
            if self.broken.load(Ordering::Acquire) != 0 {
                return true;
            }
            if self.moving.load(Ordering::Acquire) {
                let mut g = self.settled.lock();
                while self.moving.load(Ordering::Acquire) {
                    self.settled_cv.wait_for(&mut g, Duration::from_millis(200));
                }
                return true;
            }
            let timeout = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    left.as_millis().clamp(1, i32::MAX as u128) as c_int
                }
            };
            let mut fds = [
                libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                },
                libc::pollfd {
                    fd: wake.0,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            let rc = unsafe { real::poll(fds.as_mut_ptr(), 2, timeout) };
            if rc < 0 && errno() != libc::EINTR {
                return true;
            }
            if fds[0].revents != 0 {
                return true;
            }
        }
    }

    /// send/write/writev/sendmsg on a stream.
    pub fn send(&self, fd: c_int, call: SendCall<'_>) -> ssize_t {
        if call.flags & libc::MSG_OOB != 0 {
            // An urgent byte is outside the stream the receiver counts (no
            // SO_OOBINLINE): a resume would count it twice. Refused.
            warn!("MSG_OOB on a wisp stream is not supported");
            set_errno(libc::EOPNOTSUPP);
            return -1;
        }
        let want = unsafe { iov_len(call.iov.as_ptr(), call.iov.len()) };
        let blocking = call.flags & libc::MSG_DONTWAIT == 0 && !program_nonblocking(fd);
        let deadline = if blocking {
            socket_timeout(fd, libc::SO_SNDTIMEO).map(|t| Instant::now() + t)
        } else {
            None
        };
        loop {
            let broken = self.broken.load(Ordering::Acquire);
            if broken != 0 {
                set_errno(broken);
                return -1;
            }
            if self.moving.load(Ordering::Acquire) {
                if !blocking {
                    set_errno(libc::EAGAIN);
                    return -1;
                }
                self.wait(fd, libc::POLLOUT, deadline);
                continue;
            }
            let mut tx = self.tx.lock();
            if self.moving.load(Ordering::Acquire) {
                continue;
            }
            if tx.ring.free() < want.max(1) {
                self.make_room(fd, &mut tx.ring);
            }
            let room = tx.ring.free();
            if room == 0 {
                // Everything we may hold is unacknowledged: the socket's
                // buffer is full too, so wait as the kernel would.
                drop(tx);
                if !blocking {
                    set_errno(libc::EAGAIN);
                    return -1;
                }
                if !self.wait(fd, libc::POLLOUT, deadline) {
                    set_errno(libc::EAGAIN);
                    return -1;
                }
                continue;
            }
            let iov = unsafe { iov_prefix(call.iov.as_ptr(), call.iov.len(), room) };
            let mut msg: msghdr = match call.msg {
                Some(m) => *m,
                // SAFETY: an all-zero msghdr is a valid empty header.
                None => unsafe { std::mem::zeroed() },
            };
            msg.msg_iov = iov.as_ptr() as *mut iovec;
            msg.msg_iovlen = iov.len() as _;
            // SAFETY: msg points at live iovecs and the program's buffers.
            let n = unsafe { real::sendmsg(fd, &msg, call.flags | libc::MSG_DONTWAIT) };
            if n > 0 {
                if tx.ring.len() + n as usize > tx.ring.reserved() {
                    trim_acked(fd, &mut tx.ring, n as usize);
                }
                unsafe {
                    for_each_slice(iov.as_ptr(), iov.len(), n as usize, |s| {
                        tx.ring.push(s);
                    })
                };
                self.note_ring(&tx.ring);
                return n;
            }
            let e = errno();
            drop(tx);
            if n == 0 || e != libc::EAGAIN || !blocking {
                set_errno(e);
                return n;
            }
            if !self.wait(fd, libc::POLLOUT, deadline) {
                set_errno(libc::EAGAIN);
                return -1;
            }
        }
    }

    /// Drop from the ring what the peer's TCP has acknowledged (SIOCOUTQ is
    /// what is still unacknowledged), and let the ring follow the socket's
    /// send buffer as the kernel autotunes it.
    fn make_room(&self, fd: c_int, ring: &mut ReplayRing) {
        let mut outq: c_int = 0;
        // SAFETY: SIOCOUTQ writes one int.
        if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut outq) } == 0 && outq >= 0 {
            let acked = ring.tx().saturating_sub(outq as u64);
            ring.trim_to(acked);
        }
        let mut sndbuf: c_int = 0;
        let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
        // SAFETY: valid out pointers.
        if unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                &mut sndbuf as *mut _ as *mut c_void,
                &mut len,
            )
        } == 0
        {
            ring.grow_to(sndbuf.max(0) as usize);
        }
        self.note_ring(ring);
    }

    /// recv/read/readv/recvfrom/recvmsg on a stream. MSG_WAITALL on a
    /// blocking call is honoured piecewise, so a move can come between the
    /// pieces.
    pub fn recv(&self, fd: c_int, call: RecvCall<'_>) -> ssize_t {
        let waitall = call.flags & libc::MSG_WAITALL != 0 && call.flags & libc::MSG_PEEK == 0;
        if !waitall || program_nonblocking(fd) || call.flags & libc::MSG_DONTWAIT != 0 {
            return self.recv_once(fd, call);
        }
        let want = unsafe { iov_len(call.iov.as_ptr(), call.iov.len()) };
        let mut got = 0usize;
        while got < want {
            let rest = iov_skip(call.iov, got);
            let n = self.recv_once(
                fd,
                RecvCall {
                    iov: &rest,
                    msg: call.msg,
                    flags: call.flags,
                },
            );
            if n <= 0 {
                return if got > 0 { got as ssize_t } else { n };
            }
            got += n as usize;
        }
        got as ssize_t
    }

    fn recv_once(&self, fd: c_int, call: RecvCall<'_>) -> ssize_t {
        let peek = call.flags & libc::MSG_PEEK != 0;
        let blocking = call.flags & libc::MSG_DONTWAIT == 0 && !program_nonblocking(fd);
        let deadline = if blocking {
            socket_timeout(fd, libc::SO_RCVTIMEO).map(|t| Instant::now() + t)
        } else {
            None
        };
        let want = unsafe { iov_len(call.iov.as_ptr(), call.iov.len()) };
        if want == 0 {
            return 0;
        }
        loop {
            if self.moving.load(Ordering::Acquire) {
                if !blocking {
                    set_errno(libc::EAGAIN);
                    return -1;
                }
                self.wait(fd, libc::POLLIN, deadline);
                continue;
            }
            let mut rx = self.rx.lock();
            if self.moving.load(Ordering::Acquire) {
                continue;
            }
            if rx.pending_at < rx.pending.len() {
                let n = scatter(&rx.pending[rx.pending_at..], call.iov);
                if !peek {
                    rx.pending_at += n;
                    rx.rx += n as u64;
                    self.stats.rx.store(rx.rx, Ordering::Relaxed);
                    if rx.pending_at == rx.pending.len() {
                        rx.pending.clear();
                        rx.pending_at = 0;
                    }
                    self.note_pending(&rx);
                }
                return n as ssize_t;
            }
            let broken = self.broken.load(Ordering::Acquire);
            if broken != 0 {
                set_errno(broken);
                return -1;
            }
            if rx.cursor.behind(rx.total()) > 0 {
                // The socket first brings bytes the program has had.
                let mut buf = vec![0u8; 64 * 1024];
                match rx.read_placed(fd, &mut buf) {
                    Placed::Got => {
                        self.note_pending(&rx);
                        continue;
                    }
                    Placed::Eof => return 0,
                    Placed::Failed(e) => {
                        drop(rx);
                        self.break_with(e);
                        set_errno(e);
                        return -1;
                    }
                    Placed::Nothing => {}
                }
                drop(rx);
                if !blocking {
                    set_errno(libc::EAGAIN);
                    return -1;
                }
                if !self.wait(fd, libc::POLLIN, deadline) {
                    set_errno(libc::EAGAIN);
                    return -1;
                }
                continue;
            }
            let mut msg: msghdr = match call.msg {
                // SAFETY: the program's header, valid for this call.
                Some(m) => unsafe { *m },
                None => unsafe { std::mem::zeroed() },
            };
            msg.msg_iov = call.iov.as_ptr() as *mut iovec;
            msg.msg_iovlen = call.iov.len() as _;
            // MSG_WAITALL is done here, a piece at a time, so a move can
            // come between the pieces.
            let flags = (call.flags | libc::MSG_DONTWAIT) & !libc::MSG_WAITALL;
            // SAFETY: msg points at the program's buffers.
            let n = unsafe { real::recvmsg(fd, &mut msg, flags) };
            if n > 0 {
                if !peek {
                    rx.rx += n as u64;
                    rx.cursor.next += n as u64;
                    self.stats.rx.store(rx.rx, Ordering::Relaxed);
                }
                if let Some(m) = call.msg {
                    // SAFETY: the program's header: report what the kernel said.
                    unsafe {
                        (*m).msg_namelen = msg.msg_namelen;
                        (*m).msg_controllen = msg.msg_controllen;
                        (*m).msg_flags = msg.msg_flags;
                    }
                }
                return n;
            }
            let e = errno();
            drop(rx);
            if n == 0 || e != libc::EAGAIN || !blocking {
                set_errno(e);
                return n;
            }
            if !self.wait(fd, libc::POLLIN, deadline) {
                set_errno(libc::EAGAIN);
                return -1;
            }
        }
    }
}

/// An iovec list without its first `skip` bytes.
fn iov_skip(iov: &[iovec], mut skip: usize) -> Vec<iovec> {
    let mut out = Vec::with_capacity(iov.len());
    for v in iov {
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        // SAFETY: stays inside the program's buffer.
        out.push(iovec {
            iov_base: unsafe { (v.iov_base as *mut u8).add(skip) } as *mut c_void,
            iov_len: v.iov_len - skip,
        });
        skip = 0;
    }
    out
}

/// Copy `src` into an iovec list; returns how much fit.
fn scatter(src: &[u8], iov: &[iovec]) -> usize {
    let mut done = 0;
    for v in iov {
        if done == src.len() {
            break;
        }
        let take = v.iov_len.min(src.len() - done);
        // SAFETY: the program's buffer, iov_len bytes long.
        unsafe { std::ptr::copy_nonoverlapping(src[done..].as_ptr(), v.iov_base as *mut u8, take) };
        done += take;
    }
    done
}

/// A single buffer as an iovec.
pub fn one(buf: *const c_void, len: usize) -> iovec {
    iovec {
        iov_base: buf as *mut c_void,
        iov_len: len,
    }
}

/// The stream held still for a move: no program call is inside the old
/// socket, what it had received is drained into `pending`, and `rx` counts
/// it. Dropping it lets calls run again (on whatever socket the descriptor
/// then names).
pub struct Frozen<'a> {
    io: &'a StreamIo,
    tx: parking_lot::MutexGuard<'a, TxSide>,
    rx: parking_lot::MutexGuard<'a, RxSide>,
    /// Let go of the locks but leave the stream held (see `hand_over`).
    keep: bool,
}

impl Frozen<'_> {
    /// Release the locks for the next move to freeze the stream again, but
    /// leave the program's calls held: the descriptor still names a socket
    /// whose peer has moved on (it may answer with a reset or an end of
    /// file that belongs to no one), and a newer resume is about to take
    /// over.
    pub fn hand_over(mut self) {
        self.keep = true;
    }

    /// Bytes this side has received: handed to the program plus drained.
    pub fn rx(&self) -> u64 {
        self.rx.total()
    }

    /// The new socket is under the descriptor; `next` is where its next
    /// byte sits in the stream (the resume machine's inbound cursor).
    pub fn swapped(&mut self, next: Cursor) {
        self.rx.cursor = next;
    }

    /// Read everything the old socket `fd` has for us, placed by offset.
    pub fn drain(&mut self, fd: c_int) {
        let mut buf = vec![0u8; 64 * 1024];
        while self.rx.read_placed(fd, &mut buf) == Placed::Got {}
        self.io.note_pending(&self.rx);
    }

    pub fn ring(&self) -> &ReplayRing {
        &self.tx.ring
    }

    /// Bytes that arrived on the new connection before it was put under
    /// the program's descriptor: the program reads them first.
    pub fn push_pending(&mut self, bytes: &[u8]) {
        self.rx.hold(bytes);
        self.io.note_pending(&self.rx);
    }
}

/// A frozen stream as the resume machine sees it: `old` is the socket the
/// descriptors name until the swap.
pub struct View<'f, 'a> {
    pub frozen: &'f mut Frozen<'a>,
    pub old: c_int,
}

impl StreamView for View<'_, '_> {
    fn rx(&self) -> u64 {
        self.frozen.rx()
    }
    fn ring(&self) -> &ReplayRing {
        self.frozen.ring()
    }
    fn drain_old(&mut self) {
        self.frozen.drain(self.old);
    }
    fn acked_on_old(&mut self) -> Option<u64> {
        let mut outq: c_int = 0;
        // SAFETY: SIOCOUTQ writes one int.
        (unsafe { libc::ioctl(self.old, libc::TIOCOUTQ, &mut outq) } == 0 && outq >= 0)
            .then(|| self.frozen.ring().tx().saturating_sub(outq as u64))
    }
    fn trim(&mut self, to: u64) {
        self.frozen.tx.ring.trim_to(to);
    }
    fn deliver(&mut self, bytes: &[u8]) {
        self.frozen.push_pending(bytes);
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        // Later waits use a fresh eventfd; the rung one stays readable for
        // any waiter still holding it.
        if let Ok(w) = Wake::new() {
            *self.io.wake.lock() = std::sync::Arc::new(w);
        }
        if !self.keep {
            self.io.moving.store(false, Ordering::Release);
        }
        let _g = self.io.settled.lock();
        self.io.settled_cv.notify_all();
    }
}

impl StreamIo {
    /// No move completed in time: every later call fails with `errno`
    /// (after the bytes already held for the program), and waiters wake.
    pub fn break_with(&self, errno: c_int) {
        self.broken.store(errno, Ordering::Release);
        // A stream left held for a newer move (hand_over) that never came
        // must not keep its callers waiting: they get the error now.
        self.moving.store(false, Ordering::Release);
        self.wake.lock().ring();
        let _g = self.settled.lock();
        self.settled_cv.notify_all();
    }

    /// Stop the stream at an exact byte count: new calls wait (or get
    /// EAGAIN), threads waiting in our poll() are woken, calls already in a
    /// (non-blocking) socket call finish, then everything the old socket
    /// still holds for us is read into `pending`.
    pub fn freeze(&self, fd: c_int) -> Frozen<'_> {
        self.moving.store(true, Ordering::Release);
        self.wake.lock().ring();
        let tx = self.tx.lock();
        let rx = self.rx.lock();
        let mut f = Frozen {
            io: self,
            tx,
            rx,
            keep: false,
        };
        f.drain(fd);
        f
    }
}
