//! A blocking, single-threaded driver that puts any [`SansIo`] core on real
//! sockets: one UDP socket and one TCP listener on the same address and
//! port, the TCP connections accepted or opened from there, and a wake fd.
//!
//! Behind the `io` feature so that sipcore proper stays pure and testable
//! without sockets. Plain `poll(2)` rather than an async runtime: the
//! preload library runs this inside arbitrary host programs, where a
//! runtime's worker threads and signal handling would be unwelcome guests,
//! and a SIP node's load (a few messages a second) never needs more.
//!
//! Nothing that arrives from the network may stop the loop: per-peer
//! failures (a refused connect, a reset, a datagram to an unreachable
//! address) close that connection or drop that datagram, and the
//! transaction layer's timers turn the silence into a timeout. Only a
//! failure of `poll` itself is returned from [`Driver::step`].

use crate::endpoint::SansIo;
use crate::framing::{Frame, FrameError, StreamDecoder};
use crate::transaction::{Peer, Transport};
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits of a [`Driver`]. The defaults suit a registrar or a user agent.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// A TCP connection with no bytes in either direction for this long is
    /// closed; a client that still needs it opens a new one. RFC 5626's
    /// keep-alives (CRLFCRLF every ~2 min) keep a live flow well inside it.
    pub idle_timeout: Duration,
    /// An outgoing connect that has not completed by then is abandoned.
    /// 64·T1: a request over it would have timed out anyway.
    pub connect_timeout: Duration,
    /// At most this many TCP connections at once; beyond it new inbound ones
    /// are closed at once and sends needing a new outbound one are dropped,
    /// so a flood of connections cannot exhaust file descriptors.
    pub max_connections: usize,
    /// Bytes queued for one connection that its peer has not read. A peer
    /// that lets this much SIP pile up is gone or hostile: the connection is
    /// closed rather than buffered without bound.
    pub max_queued: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            idle_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(32),
            max_connections: 1024,
            max_queued: 4 * crate::msg::MAX_MESSAGE,
        }
    }
}

/// Wakes a [`Driver`] blocked in [`Driver::step`] from another thread, so
/// that thread can hand the core work and have it sent without waiting for
/// the next timer. Cheap to clone; outlives the driver harmlessly.
#[derive(Clone, Debug)]
pub struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    pub fn wake(&self) {
        let one: u64 = 1;
        // EAGAIN means the counter is already non-zero: a wake is pending,
        // which is all we wanted. Nothing else can fail on an eventfd.
        // SAFETY: writes 8 bytes from a live u64 to an fd we own.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

/// One TCP connection, inbound or outbound, keyed by its remote address.
struct Conn {
    stream: TcpStream,
    /// An outbound connect still in progress: writable means done.
    connecting: bool,
    out: Vec<u8>,
    decoder: StreamDecoder,
    /// The bytes the decoder holds, mirrored: the decoder hands out parsed
    /// messages, but the core takes bytes, and the peer's own bytes are
    /// better than a re-print (compact names and folding left as sent).
    raw: Vec<u8>,
    opened: Instant,
    last_active: Instant,
    /// An accepted connection whose first bytes have not been looked at:
    /// it may be a resumed stream rather than SIP (see [`Handoff`]).
    sniffing: bool,
}

impl Conn {
    fn new(stream: TcpStream, connecting: bool, now: Instant) -> Conn {
        Conn {
            stream,
            connecting,
            out: Vec::new(),
            decoder: StreamDecoder::new(),
            raw: Vec::new(),
            opened: now,
            last_active: now,
            sniffing: false,
        }
    }

    /// When this connection is to be closed if nothing happens before.
    fn expiry(&self, config: &DriverConfig) -> Instant {
        if self.connecting {
            self.opened + config.connect_timeout
        } else {
            self.last_active + config.idle_timeout
        }
    }

    /// Write as much of the queue as the socket takes. `Err` means the
    /// connection is dead.
    fn write_some(&mut self, now: Instant) -> io::Result<()> {
        while !self.out.is_empty() {
            // send(2) with MSG_NOSIGNAL, not write(2): a peer that reset the
            // connection must not raise SIGPIPE in a host program that never
            // asked to ignore it.
            // SAFETY: the pointer and length describe our live buffer.
            let n = unsafe {
                libc::send(
                    self.stream.as_raw_fd(),
                    self.out.as_ptr().cast(),
                    self.out.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(()),
                    _ => return Err(e),
                }
            }
            self.out.drain(..n as usize);
            self.last_active = now;
        }
        Ok(())
    }
}

/// What to do with a connection after reading from it.
enum ReadOutcome {
    Open,
    Close,
    /// Not SIP: give it to the [`Handoff`].
    Handoff,
}

/// Takes accepted connections whose first bytes are `magic` instead of SIP,
/// with the bytes already read. wisp resumes a moved stream on a new TCP
/// connection to the peer's SIP address, so after a move the one address a
/// peer is sure to know (its Contact) also reaches the stream.
pub struct Handoff {
    pub magic: &'static [u8],
    pub take: Box<dyn FnMut(TcpStream, SocketAddr, Vec<u8>) + Send>,
}

/// Serves one [`SansIo`] core on a UDP socket and a TCP listener bound to
/// the same address, and the TCP connections that come and go.
pub struct Driver {
    udp: UdpSocket,
    listener: TcpListener,
    local: SocketAddr,
    conns: HashMap<SocketAddr, Conn>,
    wake: Arc<OwnedFd>,
    config: DriverConfig,
    /// After accept fails for want of fds, stop polling the listener for a
    /// moment instead of spinning on its readiness.
    listen_paused_until: Option<Instant>,
    buf: Vec<u8>,
    handoff: Option<Handoff>,
}

/// Largest UDP payload, and the size of one TCP read.
const RECV_BUF: usize = 65535;
/// Datagrams, accepts or reads handled per socket per step, so one busy
/// peer cannot starve the others or the timers.
const BURST: usize = 64;

impl Driver {
    /// Bind UDP and TCP on `addr`. Port 0 picks one port free for both.
    pub fn bind(addr: SocketAddr) -> io::Result<Driver> {
        Driver::bind_with(addr, DriverConfig::default())
    }

    pub fn bind_with(addr: SocketAddr, config: DriverConfig) -> io::Result<Driver> {
        let (udp, listener) = bind_pair(addr)?;
        let local = udp.local_addr()?;
        // SAFETY: eventfd has no memory-safety preconditions.
        let wake = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: a fresh fd we now own alone.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(wake) });
        Ok(Driver {
            udp,
            listener,
            local,
            conns: HashMap::new(),
            wake,
            config,
            listen_paused_until: None,
            buf: vec![0; RECV_BUF],
            handoff: None,
        })
    }

    /// The address both sockets are bound to (with the port picked, if 0
    /// was asked for): what belongs in Via and Contact.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn waker(&self) -> Waker {
        Waker {
            fd: self.wake.clone(),
        }
    }

    /// Accepted connections that start with `handoff.magic` go to it.
    pub fn set_handoff(&mut self, handoff: Handoff) {
        self.handoff = Some(handoff);
    }

    /// Open TCP connections (for tests and status).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// One turn of the loop: send what the core has, wait up to `max_wait`
    /// (less if the core's next timer or a connection's expiry is sooner, or
    /// a [`Waker`] fires) for the network, feed the core what arrived, run
    /// its timers when due, and send what that produced.
    pub fn step(&mut self, core: &mut impl SansIo, max_wait: Duration) -> io::Result<()> {
        let now = Instant::now();
        self.flush(core, now);

        let mut deadline = now + max_wait;
        if let Some(t) = core.poll_timeout() {
            deadline = deadline.min(t);
        }
        for c in self.conns.values() {
            deadline = deadline.min(c.expiry(&self.config));
        }

        let listening = !matches!(self.listen_paused_until, Some(t) if t > now);
        let mut fds = Vec::with_capacity(3 + self.conns.len());
        let mut addrs = Vec::with_capacity(self.conns.len());
        fds.push(pollfd(self.wake.as_raw_fd(), libc::POLLIN));
        fds.push(pollfd(self.udp.as_raw_fd(), libc::POLLIN));
        fds.push(pollfd(
            self.listener.as_raw_fd(),
            if listening { libc::POLLIN } else { 0 },
        ));
        for (addr, c) in &self.conns {
            let mut events = 0;
            if !c.connecting {
                events |= libc::POLLIN;
            }
            if c.connecting || !c.out.is_empty() {
                events |= libc::POLLOUT;
            }
            fds.push(pollfd(c.stream.as_raw_fd(), events));
            addrs.push(*addr);
        }
        poll_until(&mut fds, deadline)?;

        let now = Instant::now();
        if fds[0].revents != 0 {
            self.drain_wake();
        }
        if fds[1].revents != 0 {
            self.read_udp(core, now);
        }
        if fds[2].revents != 0 {
            self.accept(now);
        }
        for (pfd, addr) in fds[3..].iter().zip(addrs) {
            match self.service(core, addr, pfd.revents, now) {
                _ if pfd.revents == 0 => {}
                Ok(()) => {}
                Err(ReadOutcome::Handoff) => {
                    if let (Some(conn), Some(h)) = (self.conns.remove(&addr), self.handoff.as_mut())
                    {
                        (h.take)(conn.stream, addr, conn.raw);
                    }
                }
                Err(_) => {
                    self.conns.remove(&addr);
                }
            }
        }

        let now = Instant::now();
        if core.poll_timeout().is_some_and(|t| t <= now) {
            core.handle_timeout(now);
        }
        let config = &self.config;
        self.conns.retain(|_, c| c.expiry(config) > now);
        self.flush(core, now);
        Ok(())
    }

    /// Hand the core's transmits to the sockets.
    fn flush(&mut self, core: &mut impl SansIo, now: Instant) {
        while let Some(t) = core.poll_transmit() {
            match t.to.transport {
                // UDP is lossy by contract: a full buffer or an unreachable
                // address loses the datagram, and the transaction layer
                // retransmits or times out.
                Transport::Udp => {
                    let _ = self.udp.send_to(&t.bytes, t.to.addr);
                }
                Transport::Tcp => self.send_tcp(t.to.addr, &t.bytes, now),
            }
        }
    }

    /// Queue bytes on the connection to `to`, opening one if there is none.
    fn send_tcp(&mut self, to: SocketAddr, bytes: &[u8], now: Instant) {
        if !self.conns.contains_key(&to) {
            if self.conns.len() >= self.config.max_connections {
                return;
            }
            match connect(to) {
                Ok(stream) => {
                    self.conns.insert(to, Conn::new(stream, true, now));
                }
                Err(_) => return,
            }
        }
        let Some(conn) = self.conns.get_mut(&to) else {
            return;
        };
        if conn.out.len() + bytes.len() > self.config.max_queued {
            self.conns.remove(&to);
            return;
        }
        conn.out.extend_from_slice(bytes);
        if !conn.connecting && conn.write_some(now).is_err() {
            self.conns.remove(&to);
        }
    }

    fn drain_wake(&mut self) {
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into a live u64; the fd is non-blocking.
        unsafe {
            libc::read(
                self.wake.as_raw_fd(),
                (&mut n as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    fn read_udp(&mut self, core: &mut impl SansIo, now: Instant) {
        for _ in 0..BURST {
            match self.udp.recv_from(&mut self.buf) {
                Ok((n, from)) => core.receive(
                    &self.buf[..n],
                    Peer {
                        transport: Transport::Udp,
                        addr: from,
                    },
                    now,
                ),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: drained. Anything else (an ICMP error queued
                // on the socket) concerns one peer, not the loop.
                Err(_) => break,
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        for _ in 0..BURST {
            match self.listener.accept() {
                Ok((stream, from)) => {
                    // Over the limit: accepting and closing at once drains
                    // the backlog, so the listener does not stay readable.
                    if self.conns.len() >= self.config.max_connections
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue;
                    }
                    let mut conn = Conn::new(stream, false, now);
                    conn.sniffing = self.handoff.is_some();
                    self.conns.insert(from, conn);
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => continue,
                    io::ErrorKind::WouldBlock => break,
                    // Out of fds (EMFILE/ENFILE) or memory: the pending
                    // connection stays queued and the listener readable;
                    // look again later rather than spin.
                    _ => {
                        self.listen_paused_until = Some(now + Duration::from_millis(100));
                        break;
                    }
                },
            }
        }
    }

    /// Handle poll readiness on one connection. `Err` closes it.
    fn service(
        &mut self,
        core: &mut impl SansIo,
        addr: SocketAddr,
        revents: libc::c_short,
        now: Instant,
    ) -> Result<(), ReadOutcome> {
        if revents == 0 {
            return Ok(());
        }
        let magic = self.handoff.as_ref().map(|h| h.magic).unwrap_or(b"");
        let conn = self.conns.get_mut(&addr).ok_or(ReadOutcome::Close)?;
        if conn.connecting {
            if revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) == 0 {
                return Ok(());
            }
            match conn.stream.take_error() {
                Ok(None) => {
                    conn.connecting = false;
                    conn.last_active = now;
                }
                _ => return Err(ReadOutcome::Close),
            }
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match read_conn(conn, &mut self.buf, core, addr, now, magic) {
                ReadOutcome::Open => {}
                other => return Err(other),
            }
            // Pongs queue up too: a peer that pings without reading is cut
            // off like any other that lets its queue grow.
            if conn.out.len() > self.config.max_queued {
                return Err(ReadOutcome::Close);
            }
        }
        conn.write_some(now).map_err(|_| ReadOutcome::Close)
    }
}

/// Read what a connection has, cut it into messages and hand them on.
fn read_conn(
    conn: &mut Conn,
    buf: &mut [u8],
    core: &mut impl SansIo,
    addr: SocketAddr,
    now: Instant,
    magic: &[u8],
) -> ReadOutcome {
    let from = Peer {
        transport: Transport::Tcp,
        addr,
    };
    for _ in 0..BURST {
        let n = match conn.stream.read(buf) {
            Ok(0) => return ReadOutcome::Close,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Open,
            Err(_) => return ReadOutcome::Close,
        };
        conn.last_active = now;
        if conn.sniffing {
            conn.raw.extend_from_slice(&buf[..n]);
            let seen = conn.raw.len().min(magic.len());
            if conn.raw[..seen] != magic[..seen] {
                // SIP after all: the decoder gets everything so far.
                conn.sniffing = false;
                conn.decoder.push(&conn.raw);
            } else if seen == magic.len() {
                return ReadOutcome::Handoff;
            } else {
                continue;
            }
        } else {
            conn.decoder.push(&buf[..n]);
            conn.raw.extend_from_slice(&buf[..n]);
        }
        while let Some(item) = conn.decoder.next() {
            // What the decoder let go of since the last item is this item,
            // after any stray line ends it skipped in front of a message.
            let consumed = conn.raw.len().saturating_sub(conn.decoder.buffered());
            let frame: Vec<u8> = conn.raw.drain(..consumed).collect();
            let start = frame
                .iter()
                .position(|b| !matches!(b, b'\r' | b'\n'))
                .unwrap_or(frame.len());
            match item {
                Ok(Frame::Message(_)) => core.receive(&frame[start..], from, now),
                // RFC 5626 §3.5.1: a CRLFCRLF ping is answered by a CRLF pong.
                Ok(Frame::Ping) => conn.out.extend_from_slice(b"\r\n"),
                Ok(Frame::Pong) => {}
                // Cut cleanly but unreadable: the core answers a request
                // with 400 (RFC 3261 §8.2.2) and the stream reads on.
                Err(FrameError::Malformed { raw, .. }) => core.receive(&raw, from, now),
                // The stream has lost its framing: nothing after this point
                // can be trusted to start a message.
                Err(_) => return ReadOutcome::Close,
            }
        }
    }
    ReadOutcome::Open
}

fn pollfd(fd: libc::c_int, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// poll(2) until something is ready or `deadline`, restarting on EINTR
/// with the time that is left.
fn poll_until(fds: &mut [libc::pollfd], deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up: waking a fraction of a millisecond early would find the
        // timer not yet due and spin through zero-timeout polls.
        let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: fds is a live, correctly sized slice of pollfd.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        for f in fds.iter_mut() {
            f.revents = 0;
        }
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A non-blocking, close-on-exec socket for `addr`'s family. IPv6 sockets
/// are IPv6-only, so `[::]:5060` and `0.0.0.0:5060` can both be bound and
/// IPv4 peers never appear as mapped `::ffff:` addresses.
fn socket(addr: &SocketAddr, ty: libc::c_int) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket has no memory-safety preconditions.
    let fd =
        cvt(unsafe { libc::socket(domain, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh fd we now own alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if addr.is_ipv6() {
        set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    Ok(fd)
}

fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a live c_int and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any
            // sockaddr type; that is its purpose.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn bind_fd(fd: &OwnedFd, addr: &SocketAddr) -> io::Result<()> {
    let (sa, len) = sockaddr(addr);
    // SAFETY: sa is a valid sockaddr of length len.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
    .map(drop)
}

fn bind_udp(addr: &SocketAddr) -> io::Result<UdpSocket> {
    let fd = socket(addr, libc::SOCK_DGRAM)?;
    bind_fd(&fd, addr)?;
    Ok(UdpSocket::from(fd))
}

fn bind_tcp(addr: &SocketAddr) -> io::Result<TcpListener> {
    let fd = socket(addr, libc::SOCK_STREAM)?;
    // A restarted registrar must get its port back while old connections
    // linger in TIME_WAIT.
    set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind_fd(&fd, addr)?;
    // SAFETY: listen has no memory-safety preconditions.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
    Ok(TcpListener::from(fd))
}

/// UDP and TCP on one port. For port 0 the kernel picks a UDP port, which
/// may be taken for TCP: then try again with another.
fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    const TRIES: usize = 16;
    let mut last = None;
    for _ in 0..TRIES {
        let udp = bind_udp(&addr)?;
        let mut tcp_addr = addr;
        tcp_addr.set_port(udp.local_addr()?.port());
        match bind_tcp(&tcp_addr) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

/// Start a non-blocking connect; the connection is usable once writable.
fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    let fd = socket(&to, libc::SOCK_STREAM)?;
    let (sa, len) = sockaddr(&to);
    // SAFETY: sa is a valid sockaddr of length len.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(TcpStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{Config, Endpoint, Event, TxKey};
    use crate::msg::Message;
    use std::io::Write;

    const TICK: Duration = Duration::from_millis(5);

    fn options(from: SocketAddr, to: SocketAddr, transport: Transport) -> Message {
        let text = format!(
            "OPTIONS sip:b@{to} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
To: <sip:b@{to}>\r\nFrom: <sip:a@{host}>;tag={tag}\r\nCall-ID: {cid}\r\n\
CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            to = crate::endpoint::host_port(to),
            host = crate::endpoint::host_port(from),
            via = Endpoint::via(transport, from),
            tag = crate::ids::tag(),
            cid = crate::ids::call_id("test"),
        );
        Message::parse(text.as_bytes()).unwrap()
    }

    /// Step both nodes until `f` finds what it is looking for.
    fn pump<T>(
        a: &mut (Driver, Endpoint),
        b: &mut (Driver, Endpoint),
        mut f: impl FnMut(&mut Endpoint, &mut Endpoint) -> Option<T>,
    ) -> T {
        for _ in 0..400 {
            a.0.step(&mut a.1, TICK).unwrap();
            b.0.step(&mut b.1, TICK).unwrap();
            if let Some(t) = f(&mut a.1, &mut b.1) {
                return t;
            }
        }
        panic!("nothing arrived");
    }

    fn node(addr: &str) -> (Driver, Endpoint) {
        (
            Driver::bind(addr.parse().unwrap()).unwrap(),
            Endpoint::new(Config::default()),
        )
    }

    fn request(ep: &mut Endpoint) -> Option<(TxKey, Message, Peer)> {
        match ep.poll_event() {
            Some(Event::Request { key, msg, from }) => Some((key, msg, from)),
            _ => None,
        }
    }

    fn round_trip(transport: Transport, ip: &str) {
        let mut a = node(&format!("{ip}:0"));
        let mut b = node(&format!("{ip}:0"));
        let (a_addr, b_addr) = (a.0.local_addr(), b.0.local_addr());
        let to = Peer {
            transport,
            addr: b_addr,
        };
        let key =
            a.1.send_request(options(a_addr, b_addr, transport), to, Instant::now());
        let (skey, req, from) = pump(&mut a, &mut b, |_, eb| request(eb));
        assert_eq!(from.transport, transport);
        if transport == Transport::Udp {
            assert_eq!(from.addr, a_addr);
        }
        b.1.respond(
            &skey,
            Message::response_to(&req, 200, Some("b1")),
            Instant::now(),
        );
        let resp = pump(&mut a, &mut b, |ea, _| match ea.poll_event() {
            Some(Event::Response { key: k, msg }) if k == key => Some(msg),
            _ => None,
        });
        assert_eq!(resp.code(), Some(200));
        let conns = usize::from(transport == Transport::Tcp);
        assert_eq!(
            (a.0.connection_count(), b.0.connection_count()),
            (conns, conns)
        );
    }

    #[test]
    fn options_round_trip_over_udp() {
        round_trip(Transport::Udp, "127.0.0.1");
    }

    #[test]
    fn options_round_trip_over_tcp() {
        round_trip(Transport::Tcp, "127.0.0.1");
    }

    fn have_ipv6() -> bool {
        UdpSocket::bind("[::1]:0").is_ok()
    }

    #[test]
    fn options_round_trip_over_ipv6() {
        if !have_ipv6() {
            return;
        }
        round_trip(Transport::Udp, "[::1]");
        round_trip(Transport::Tcp, "[::1]");
    }

    #[test]
    fn port_zero_gives_udp_and_tcp_the_same_port_and_v6_does_not_take_v4() {
        let d = Driver::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = d.local_addr().port();
        assert_ne!(port, 0);
        assert_eq!(d.listener.local_addr().unwrap().port(), port);
        // The port is ours: binding it again fails.
        assert!(Driver::bind(d.local_addr()).is_err());
        if have_ipv6() {
            let v6 = Driver::bind("[::]:0".parse().unwrap()).unwrap();
            let v4: SocketAddr = ([0, 0, 0, 0], v6.local_addr().port()).into();
            Driver::bind(v4).unwrap();
        }
    }

    fn raw_client(d: &Driver) -> TcpStream {
        let s = TcpStream::connect(d.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    #[test]
    fn tcp_message_split_across_many_writes_and_pipelined() {
        let mut b = node("127.0.0.1:0");
        let mut raw = raw_client(&b.0);
        let me = raw.local_addr().unwrap();
        let mut bytes = options(me, b.0.local_addr(), Transport::Tcp).to_bytes();
        bytes.extend(options(me, b.0.local_addr(), Transport::Tcp).to_bytes());
        for chunk in bytes.chunks(7) {
            raw.write_all(chunk).unwrap();
            b.0.step(&mut b.1, Duration::from_millis(1)).unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..100 {
            b.0.step(&mut b.1, TICK).unwrap();
            while let Some(r) = request(&mut b.1) {
                got.push(r);
            }
            if got.len() == 2 {
                break;
            }
        }
        assert_eq!(got.len(), 2);
        let (key, req, from) = &got[0];
        assert_eq!(
            *from,
            Peer {
                transport: Transport::Tcp,
                addr: me
            }
        );
        b.1.respond(
            key,
            Message::response_to(req, 200, Some("t")),
            Instant::now(),
        );
        b.0.step(&mut b.1, Duration::ZERO).unwrap();
        let mut buf = vec![0; 4096];
        let n = raw.read(&mut buf).unwrap();
        let resp = Message::parse(&buf[..n]).unwrap();
        assert_eq!(resp.code(), Some(200));
        assert_eq!(resp.call_id().unwrap(), req.call_id().unwrap());
    }

    /// Keeps what it is given, sends nothing.
    #[derive(Default)]
    struct Recorder(Vec<Vec<u8>>);

    impl SansIo for Recorder {
        fn receive(&mut self, bytes: &[u8], _: Peer, _: Instant) {
            self.0.push(bytes.to_vec());
        }
        fn handle_timeout(&mut self, _: Instant) {}
        fn poll_transmit(&mut self) -> Option<crate::endpoint::Transmit> {
            None
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
    }

    #[test]
    fn tcp_frames_reach_the_core_as_sent_and_malformed_ones_get_400() {
        let mut d = Driver::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut raw = raw_client(&d);
        let me = raw.local_addr().unwrap();
        let sent = options(me, d.local_addr(), Transport::Tcp).to_bytes();
        // Compact names and a body: exactly these bytes must come through.
        let compact = String::from_utf8(sent.clone())
            .unwrap()
            .replace("Content-Length: 0\r\n\r\n", "l: 3\r\n\r\nabc")
            .replace("Call-ID:", "i:");
        let mut rec = Recorder::default();
        raw.write_all(format!("\r\n{compact}").as_bytes()).unwrap();
        for _ in 0..20 {
            d.step(&mut rec, TICK).unwrap();
        }
        assert_eq!(rec.0, vec![compact.as_bytes().to_vec()]);

        // Framed by its Content-Length but missing Call-ID: the endpoint
        // answers 400 and the connection stays.
        let broken = String::from_utf8(sent).unwrap();
        let start = broken.find("Call-ID:").unwrap();
        let end = start + broken[start..].find("\r\n").unwrap() + 2;
        let broken = format!("{}{}", &broken[..start], &broken[end..]);
        let mut ep = Endpoint::new(Config::default());
        raw.write_all(broken.as_bytes()).unwrap();
        for _ in 0..20 {
            d.step(&mut ep, TICK).unwrap();
        }
        let mut buf = vec![0; 4096];
        let n = raw.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"SIP/2.0 400"));
        assert_eq!(d.connection_count(), 1);
    }

    #[test]
    fn ping_is_answered_with_pong() {
        let mut b = node("127.0.0.1:0");
        let mut raw = raw_client(&b.0);
        raw.write_all(b"\r\n\r\n").unwrap();
        for _ in 0..20 {
            b.0.step(&mut b.1, TICK).unwrap();
        }
        let mut pong = [0u8; 8];
        let n = raw.read(&mut pong).unwrap();
        assert_eq!(&pong[..n], b"\r\n");
        assert_eq!(b.0.connection_count(), 1);
    }

    #[test]
    fn unframeable_stream_and_idle_connections_are_closed() {
        let config = DriverConfig {
            idle_timeout: Duration::from_millis(100),
            ..Default::default()
        };
        let mut d = Driver::bind_with("127.0.0.1:0".parse().unwrap(), config).unwrap();
        let mut ep = Endpoint::new(Config::default());
        let mut bad = raw_client(&d);
        let idle = raw_client(&d);
        // A head without Content-Length: on a stream nothing says where the
        // next message starts.
        bad.write_all(b"OPTIONS sip:x SIP/2.0\r\nVia: x\r\n\r\n")
            .unwrap();
        for _ in 0..20 {
            d.step(&mut ep, TICK).unwrap();
        }
        assert_eq!(d.connection_count(), 1);
        let mut buf = [0u8; 16];
        assert_eq!(bad.read(&mut buf).unwrap(), 0);
        let t0 = Instant::now();
        while d.connection_count() > 0 && t0.elapsed() < Duration::from_secs(5) {
            d.step(&mut ep, Duration::from_secs(1)).unwrap();
        }
        assert_eq!(d.connection_count(), 0);
        assert_eq!((&idle).read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn refused_connect_is_dropped_quietly() {
        // A port that was just free: nobody listens on it.
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut a = node("127.0.0.1:0");
        let to = Peer {
            transport: Transport::Tcp,
            addr: free,
        };
        let req = options(a.0.local_addr(), free, Transport::Tcp);
        a.1.send_request(req, to, Instant::now());
        for _ in 0..20 {
            a.0.step(&mut a.1, TICK).unwrap();
        }
        assert_eq!(a.0.connection_count(), 0);
    }

    #[test]
    fn waker_ends_a_blocked_step_early() {
        let (mut d, mut ep) = node("127.0.0.1:0");
        let waker = d.waker();
        let t0 = Instant::now();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            waker.wake();
        });
        d.step(&mut ep, Duration::from_secs(30)).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(10));
        thread.join().unwrap();
        // The wake is consumed: the next step waits its full time again.
        let t1 = Instant::now();
        d.step(&mut ep, Duration::from_millis(50)).unwrap();
        assert!(t1.elapsed() >= Duration::from_millis(50));
    }
}
