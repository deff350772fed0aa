//! What the hooks do for descriptors that are wisp streams: connect by
//! name, listen and accept under `WISP_NAME`, and end the dialog on close.
//!
//! Runs on the program's own threads; all SIP work is handed to the SIP
//! thread, and connect() waits for its answer.

use crate::fdtable::{self, Kind};
use crate::real;
use crate::resolve;
use crate::sip::{self, Command};
use libc::{c_int, sockaddr, sockaddr_storage, socklen_t};
use parking_lot::Mutex;
use sipcore::sdp::ChannelProto;
use sipcore::ua::CallId;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What the library knows of one stream. Shared between duplicates of the
/// descriptor (dup, dup2, F_DUPFD): the dialog ends when the last goes.
pub struct Stream {
    /// The dialog; taken when it is ended (once, by close or shutdown).
    pub call: Mutex<Option<CallId>>,
    /// The counted, replayable data path.
    pub io: crate::stream::StreamIo,
    /// Key, id and peer addresses, when both ends can move the stream.
    pub mobility: Option<crate::mover::Mobility>,
    /// What getpeername() reports: the placeholder the program dialled.
    pub peer_seen: Option<SocketAddr>,
    /// The process that made the dialog; a forked child closing its copy
    /// of the descriptor must not hang up its parent's call.
    pub owner: u32,
    /// Who the stream is with, as named (for `wisp status`).
    pub peer: PeerName,
    /// We dialled (connect by name), rather than answered.
    pub outgoing: bool,
    /// The peer ended the dialog (BYE) while the program still holds the
    /// descriptor.
    pub ended: std::sync::atomic::AtomicBool,
}

/// The peer of a stream as names go: its SIP URI and the map name the
/// program used for it (for a caller, the map's name of its URI, if any).
#[derive(Clone, Debug, Default)]
pub struct PeerName {
    pub uri: String,
    pub name: Option<String>,
}

impl PeerName {
    /// The peer of an answered stream: the caller's URI, and its map name.
    fn caller(uri: String) -> PeerName {
        let name = crate::state::shared().names.name_of_uri(&uri);
        PeerName { uri, name }
    }
}

impl Stream {
    /// End the dialog with BYE, once.
    pub fn hang_up(&self) {
        let call = self.call.lock().take();
        if let (Some(call), Ok(h)) = (call, sip::handle()) {
            h.send(Command::Hangup { call });
        }
    }
}

/// shutdown(SHUT_RDWR) ends the stream both ways: the dialog ends with it.
/// A half-close (SHUT_WR) is the stream's business, carried by TCP's FIN.
pub fn after_shutdown(fd: c_int, how: c_int) {
    let Some(s) = stream(fd) else { return };
    if how == libc::SHUT_RDWR && s.owner == std::process::id() {
        s.hang_up();
    }
}

/// shutdown(SHUT_WR): the FIN is part of the stream from now on.
pub fn before_shutdown(fd: c_int, how: c_int) {
    if how == libc::SHUT_WR || how == libc::SHUT_RDWR {
        if let Some(s) = stream(fd) {
            s.io.shut_wr();
        }
    }
}

/// A listening socket of a process that answers for `WISP_NAME`.
#[derive(Debug)]
pub struct Listener {
    pub proto: ChannelProto,
    pub port: u16,
    pub owner: u32,
}

#[derive(Clone)]
enum Entry {
    Stream(Arc<Stream>),
    Listener(Arc<Listener>),
}

static TABLE: Mutex<Option<HashMap<c_int, Entry>>> = Mutex::new(None);
/// Callers we answered but whose connection has not been accepted yet, by
/// the address their connection will come from.
static EXPECTED: Mutex<Option<HashMap<SocketAddr, Expected>>> = Mutex::new(None);

/// A caller the SIP thread answered, waiting for its connection.
pub struct Expected {
    pub call: CallId,
    pub mobility: Option<Keys>,
    pub peer_sip: Option<SocketAddr>,
    /// The caller's URI (From).
    pub peer_uri: String,
}

/// The stream key and id agreed in the offer/answer.
pub struct Keys {
    pub key: sipcore::keys::StreamKey,
    pub id: sipcore::ids::StreamId,
}

/// Movable streams of this process, by weak reference: the table of
/// descriptors owns them.
static MOBILE: Mutex<Vec<std::sync::Weak<Stream>>> = Mutex::new(Vec::new());

/// A new stream of this process: the status socket comes up with the
/// first, and a movable one joins the movers' list.
fn registered(s: &Arc<Stream>) {
    crate::status::ensure();
    if s.mobility.is_some() {
        let mut m = MOBILE.lock();
        m.retain(|w| w.strong_count() > 0);
        m.push(Arc::downgrade(s));
    }
}

/// Every movable stream that is still open.
pub fn mobile_streams() -> Vec<Arc<Stream>> {
    MOBILE.lock().iter().filter_map(|w| w.upgrade()).collect()
}

/// The stream a resume Init names.
pub fn stream_by_id(id: &sipcore::ids::StreamId) -> Option<Arc<Stream>> {
    mobile_streams()
        .into_iter()
        .find(|s| s.mobility.as_ref().is_some_and(|m| m.id == *id))
}

/// The stream of a dialog.
pub fn stream_by_call(call: &str) -> Option<Arc<Stream>> {
    mobile_streams()
        .into_iter()
        .find(|s| s.mobility.as_ref().is_some_and(|m| m.call_id == call))
}

/// Every descriptor of the program that refers to `stream`.
pub fn fds_of(stream: &Stream) -> Vec<c_int> {
    with_table(|t| {
        let mut fds: Vec<c_int> = t
            .iter()
            .filter_map(|(fd, e)| match e {
                Entry::Stream(s) if std::ptr::eq(Arc::as_ptr(s), stream) => Some(*fd),
                _ => None,
            })
            .collect();
        fds.sort_unstable();
        fds
    })
}

/// A move ended (or gave up): wake the program's epoll waits on the
/// stream, whose sockets cannot report the bytes held for it.
pub fn wake_epolls(stream: &Stream) {
    crate::epolls::wake(&fds_of(stream));
}

/// Whether a read on this stream descriptor would not wait although its
/// socket may say so: bytes are held for the program, or the stream has
/// failed for good (the read returns the error).
pub fn has_pending(fd: c_int) -> bool {
    if fdtable::kind(fd) != Kind::Stream {
        return false;
    }
    stream(fd).is_some_and(|s| s.io.readable_here())
}

pub fn pending(fd: c_int) -> usize {
    if fdtable::kind(fd) != Kind::Stream {
        return 0;
    }
    stream(fd).map_or(0, |s| s.io.pending())
}

/// The program's socket options, from the old socket to the new one: the
/// ones a program sets on a connected TCP socket and would miss if they
/// went (the new socket's own handshake timeouts must not stay either).
unsafe fn copy_sockopts(old: c_int, new: c_int) {
    fn copy<T: Copy>(old: c_int, new: c_int, level: c_int, name: c_int, zero: T) {
        let mut v = zero;
        let mut len = std::mem::size_of::<T>() as socklen_t;
        // SAFETY: T is the option's type; both descriptors are sockets.
        unsafe {
            if libc::getsockopt(old, level, name, &mut v as *mut T as *mut _, &mut len) == 0 {
                libc::setsockopt(new, level, name, &v as *const T as *const _, len);
            }
        }
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    copy(old, new, libc::SOL_SOCKET, libc::SO_RCVTIMEO, tv);
    copy(old, new, libc::SOL_SOCKET, libc::SO_SNDTIMEO, tv);
    for (level, name) in [
        (libc::IPPROTO_TCP, libc::TCP_NODELAY),
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
        (libc::SOL_SOCKET, libc::SO_PRIORITY),
        (libc::IPPROTO_IP, libc::IP_TOS),
    ] {
        copy::<c_int>(old, new, level, name, 0);
    }
}

/// Bound how long a movable TCP stream waits for a peer that never comes
/// back, on the side that did not move too (the mover's WISP_MOVE_TIMEOUT
/// only bounds the side whose address changed). Bytes unacknowledged for
/// the move timeout end the connection (TCP_USER_TIMEOUT); an idle stream
/// is probed after it (keepalive, unless the program set its own), so a
/// peer gone for good ends in ETIMEDOUT within the move timeout plus three
/// probes. A peer that moves comes back through a resume long before.
fn bound_liveness(fd: c_int) {
    let t = crate::state::shared().config.move_timeout;
    let set = |level: c_int, name: c_int, v: c_int| {
        // SAFETY: an int option on a TCP socket.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &v as *const c_int as *const _,
                std::mem::size_of::<c_int>() as socklen_t,
            )
        };
    };
    let ms = t.as_millis().min(i32::MAX as u128) as c_int;
    set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms.max(1));
    let mut on: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: valid out pointers.
    let got = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            &mut on as *mut c_int as *mut _,
            &mut len,
        )
    };
    if got == 0 && on == 0 {
        let secs = t.as_secs().clamp(1, 32767) as c_int;
        set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs);
        set(
            libc::IPPROTO_TCP,
            libc::TCP_KEEPINTVL,
            (secs / 10).clamp(1, 10),
        );
        set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
        set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    }
}

/// Put the new socket `new` under every descriptor of `stream`, keeping
/// each descriptor's O_NONBLOCK, close-on-exec, TCP_NODELAY and epoll
/// registrations, then close `new` (the descriptors hold it now).
pub fn swap(stream: &Stream, new: c_int) {
    let _epoll = crate::epolls::hold();
    if let Some(&old) = fds_of(stream).first() {
        abort_on_close(old);
    }
    for fd in fds_of(stream) {
        // SAFETY: fcntl/getsockopt/setsockopt on descriptors we hold.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl >= 0 {
                let nfl = libc::fcntl(new, libc::F_GETFL);
                libc::fcntl(
                    new,
                    libc::F_SETFL,
                    (nfl & !libc::O_NONBLOCK) | (fl & libc::O_NONBLOCK),
                );
            }
            copy_sockopts(fd, new);
            let cloexec = libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0;
            crate::epolls::remove(fd);
            real::dup3(new, fd, if cloexec { libc::O_CLOEXEC } else { 0 });
        }
        crate::epolls::readd(fd);
    }
    // SAFETY: our temporary descriptor.
    unsafe { real::close(new) };
}

/// Make the socket's close a reset rather than a FIN: the library closes
/// a stream's socket only when it leaves it (after a swap, or an attempt
/// given up), and a FIN there would reach the peer's program as the end
/// of the stream. A reset is a lost connection, which the peer resumes.
pub fn abort_on_close(fd: c_int) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a linger struct on a socket descriptor.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const _,
            std::mem::size_of::<libc::linger>() as socklen_t,
        )
    };
}

fn with_table<T>(f: impl FnOnce(&mut HashMap<c_int, Entry>) -> T) -> T {
    f(TABLE.lock().get_or_insert_with(HashMap::new))
}

pub fn set_errno(e: c_int) {
    // SAFETY: errno location is always valid for the calling thread.
    unsafe { *libc::__errno_location() = e };
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Addresses compared across families: a dual-stack socket sees IPv4 peers
/// as `::ffff:a.b.c.d`.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        _ => a,
    }
}

fn sock_name(fd: c_int, peer: bool) -> Option<SocketAddr> {
    let mut ss: sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<sockaddr_storage>() as socklen_t;
    let p = &mut ss as *mut sockaddr_storage as *mut sockaddr;
    // SAFETY: buffer and length are valid.
    let rc = unsafe {
        if peer {
            real::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if rc != 0 {
        return None;
    }
    unsafe { resolve::sockaddr_ip(p, len) }.map(|(ip, port)| canonical(SocketAddr::new(ip, port)))
}

fn family(fd: c_int) -> c_int {
    let mut ss: sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<sockaddr_storage>() as socklen_t;
    // SAFETY: valid buffer.
    unsafe { libc::getsockname(fd, &mut ss as *mut _ as *mut sockaddr, &mut len) };
    ss.ss_family as c_int
}

fn sock_type(fd: c_int) -> c_int {
    let mut t: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: valid out pointers.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut t as *mut c_int as *mut _,
            &mut len,
        )
    };
    t
}

/// A sockaddr for `addr` suited to a socket of `fam` (IPv4 peers of an
/// IPv6 socket become v4-mapped).
fn to_sockaddr(addr: SocketAddr, fam: c_int) -> (sockaddr_storage, socklen_t) {
    let addr = match (addr, fam) {
        (SocketAddr::V4(v4), libc::AF_INET6) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => addr,
    };
    let mut ss: sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: storage is large enough for either family.
    unsafe { resolve::write_sockaddr(addr.ip(), addr.port(), &mut ss as *mut _ as *mut sockaddr) };
    let len = match addr {
        SocketAddr::V4(_) => std::mem::size_of::<libc::sockaddr_in>(),
        SocketAddr::V6(_) => std::mem::size_of::<libc::sockaddr_in6>(),
    };
    (ss, len as socklen_t)
}

/// connect() to a placeholder: INVITE the name, then connect the program's
/// own descriptor to the answered address, so the kernel's own semantics
/// (EINPROGRESS, SO_ERROR, poll, epoll) hold from there on.
///
/// A non-blocking connect waits for the SIP answer too (one round trip via
/// the registrar); only the TCP handshake runs in the background.
pub fn connect(fd: c_int, placeholder: SocketAddr) -> c_int {
    let shared = crate::state::shared();
    let Some(index) = shared.names.entry_of(placeholder.ip()) else {
        warn!("connect to {placeholder}: a placeholder address no name maps to");
        set_errno(libc::EHOSTUNREACH);
        return -1;
    };
    let uri = shared
        .names
        .entry(index)
        .map(|e| e.uri.clone())
        .unwrap_or_default();
    let peer_name = PeerName {
        uri: uri.clone(),
        name: resolve::name_used(index).or_else(|| {
            shared
                .names
                .entry(index)
                .and_then(|e| e.names.first().cloned())
        }),
    };
    let proto = match sock_type(fd) {
        libc::SOCK_STREAM => ChannelProto::Tcp,
        libc::SOCK_DGRAM => ChannelProto::Udp,
        _ => {
            set_errno(libc::EPROTOTYPE);
            return -1;
        }
    };
    let handle = match sip::handle() {
        Ok(h) => h,
        Err(e) => {
            warn!("connect to {uri}: {e}");
            set_errno(libc::ENETUNREACH);
            return -1;
        }
    };
    let fam = family(fd);
    // Bind to the address the SIP side uses, so the offer can say where the
    // connection will come from and the callee can tie it to the dialog.
    let bound = sock_name(fd, false).filter(|a| a.port() != 0);
    let local = match bound {
        Some(a) => a,
        None => {
            // A datagram socket binds to the wildcard: the kernel then picks
            // the source address per send, which is how it follows a move.
            let bind_ip = match (proto, handle.local_ip) {
                (ChannelProto::Udp, IpAddr::V4(_)) => IpAddr::from([0u8; 4]),
                (ChannelProto::Udp, IpAddr::V6(_)) => IpAddr::from([0u16; 8]),
                (ChannelProto::Tcp, ip) => ip,
            };
            let (ss, len) = to_sockaddr(SocketAddr::new(bind_ip, 0), fam);
            // SAFETY: valid sockaddr.
            if unsafe { libc::bind(fd, &ss as *const _ as *const sockaddr, len) } != 0 {
                let e = errno();
                warn!(
                    "connect to {uri}: cannot bind to {}: errno {e}",
                    handle.local_ip
                );
                set_errno(e);
                return -1;
            }
            match sock_name(fd, false) {
                Some(a) if a.ip().is_unspecified() => SocketAddr::new(handle.local_ip, a.port()),
                Some(a) => a,
                None => {
                    set_errno(libc::EINVAL);
                    return -1;
                }
            }
        }
    };
    let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
    handle.send(Command::Connect {
        uri: uri.clone(),
        proto,
        local,
        wanted_port: placeholder.port(),
        reply: reply_tx,
    });
    let (call, remote, mobility, peer_sip) =
        match reply_rx.recv_timeout(shared.config.connect_timeout) {
            Ok(Ok(r)) => (r.call, r.addr, r.mobility, r.peer_sip),
            Ok(Err(e)) => {
                set_errno(e);
                return -1;
            }
            Err(_) => {
                warn!(
                    "connect to {uri}: no SIP answer within {:?} (WISP_CONNECT_TIMEOUT)",
                    shared.config.connect_timeout
                );
                set_errno(libc::ETIMEDOUT);
                return -1;
            }
        };
    let io = match crate::stream::StreamIo::new() {
        Ok(io) => io,
        Err(e) => {
            warn!("connect to {uri}: {e}");
            set_errno(libc::EMFILE);
            return -1;
        }
    };
    let mobility = mobility
        .map(|m| crate::mover::Mobility::new(m.key, m.id, call.clone(), proto, remote, local.ip()));
    if let Some(m) = &mobility {
        *m.peer_sip.lock() = peer_sip;
        m.local_port
            .store(local.port(), std::sync::atomic::Ordering::Relaxed);
    }
    let stream = Arc::new(Stream {
        call: Mutex::new(Some(call)),
        io,
        mobility,
        peer_seen: Some(placeholder),
        owner: std::process::id(),
        peer: peer_name,
        outgoing: true,
        ended: Default::default(),
    });
    if proto == ChannelProto::Tcp && stream.mobility.is_some() {
        bound_liveness(fd);
    }
    registered(&stream);
    with_table(|t| t.insert(fd, Entry::Stream(stream)));
    // Datagrams pass the data-path hooks untouched (nothing to replay);
    // the table entry is what lets a peer's move re-point the socket.
    fdtable::set(
        fd,
        if proto == ChannelProto::Udp {
            Kind::Datagram
        } else {
            Kind::Stream
        },
    );
    let (ss, len) = to_sockaddr(remote, fam);
    info!("{uri} port {} is {remote}", placeholder.port());
    // SAFETY: valid sockaddr; this is the program's own connect, for real.
    unsafe { real::connect(fd, &ss as *const _ as *const sockaddr, len) }
}

/// listen() under `WISP_NAME`: register the name (once) and answer
/// INVITEs for this port. Waits a little for the registration so that, when
/// the program says it is serving, its name already reaches it.
pub fn after_listen(fd: c_int) {
    let shared = crate::state::shared();
    if shared.config.name.is_none() || sock_type(fd) != libc::SOCK_STREAM {
        return;
    }
    let Some(local) = sock_name(fd, false) else {
        return;
    };
    let handle = match sip::handle() {
        Ok(h) => h,
        Err(e) => {
            warn!(
                "listening on port {}: cannot answer for WISP_NAME: {e}",
                local.port()
            );
            return;
        }
    };
    let listener = Arc::new(Listener {
        proto: ChannelProto::Tcp,
        port: local.port(),
        owner: std::process::id(),
    });
    with_table(|t| t.insert(fd, Entry::Listener(listener)));
    fdtable::set(fd, Kind::Listener);
    let (tx, rx) = crossbeam_channel::bounded(1);
    handle.send(Command::Listen {
        proto: ChannelProto::Tcp,
        port: local.port(),
        registered: tx,
    });
    let wait = shared
        .config
        .connect_timeout
        .min(std::time::Duration::from_secs(3));
    match rx.recv_timeout(wait) {
        Ok(true) => {}
        Ok(false) | Err(_) => warn!(
            "port {}: serving, but the name is not registered yet",
            local.port()
        ),
    }
}

/// bind() of a datagram socket under `WISP_NAME`: the port answers INVITEs
/// for UDP channels (there is no listen() for datagrams).
pub fn after_bind(fd: c_int) {
    if crate::state::shared().config.name.is_none() || sock_type(fd) != libc::SOCK_DGRAM {
        return;
    }
    let Some(local) = sock_name(fd, false) else {
        return;
    };
    if local.port() == 0 {
        return;
    }
    let handle = match sip::handle() {
        Ok(h) => h,
        Err(e) => {
            warn!(
                "UDP port {}: cannot answer for WISP_NAME: {e}",
                local.port()
            );
            return;
        }
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    handle.send(Command::Listen {
        proto: ChannelProto::Udp,
        port: local.port(),
        registered: tx,
    });
    let wait = crate::state::shared()
        .config
        .connect_timeout
        .min(std::time::Duration::from_secs(3));
    let _ = rx.recv_timeout(wait);
}

/// Datagram dialogs we answered: no descriptor of ours stands for them
/// (the program's bound socket takes datagrams from anyone), so they are
/// held here until the dialog ends, for their moves to be announced.
static ANSWERED_DATAGRAMS: Mutex<Vec<Arc<Stream>>> = Mutex::new(Vec::new());

/// The SIP thread answered a datagram channel: keep what moving it needs.
pub fn answered_datagram(
    call: CallId,
    keys: Keys,
    peer: SocketAddr,
    local: SocketAddr,
    peer_uri: String,
) {
    let Ok(io) = crate::stream::StreamIo::new() else {
        return;
    };
    let mob = crate::mover::Mobility::new(
        keys.key,
        keys.id,
        call.clone(),
        ChannelProto::Udp,
        peer,
        local.ip(),
    );
    mob.local_port
        .store(local.port(), std::sync::atomic::Ordering::Relaxed);
    let stream = Arc::new(Stream {
        call: Mutex::new(Some(call)),
        io,
        mobility: Some(mob),
        peer_seen: None,
        owner: std::process::id(),
        peer: PeerName::caller(peer_uri),
        outgoing: false,
        ended: Default::default(),
    });
    registered(&stream);
    ANSWERED_DATAGRAMS.lock().push(stream);
}

/// Re-point a datagram stream's sockets at the peer's new address.
pub fn retarget(stream: &Stream, to: SocketAddr) {
    let fds = fds_of(stream);
    for &fd in &fds {
        // Disconnect first: a connected UDP socket keeps the source
        // address it picked at connect() (which a move may have taken
        // away); AF_UNSPEC lets the next connect pick again.
        let unspec = libc::sockaddr {
            sa_family: libc::AF_UNSPEC as _,
            sa_data: [0; 14],
        };
        // SAFETY: a valid AF_UNSPEC sockaddr.
        unsafe {
            real::connect(
                fd,
                &unspec,
                std::mem::size_of::<libc::sockaddr>() as socklen_t,
            )
        };
        let (ss, len) = to_sockaddr(to, family(fd));
        // SAFETY: valid sockaddr; the real connect, never a placeholder.
        let rc = unsafe { real::connect(fd, &ss as *const _ as *const sockaddr, len) };
        debug!("datagram fd {fd} now sends to {to} (connect: {rc})");
    }
    if fds.is_empty() {
        debug!("datagram stream to re-point has no descriptor");
    }
}

/// A connection accepted on a wisp listener: if it is the one a caller
/// announced, it becomes that dialog's stream.
pub fn after_accept(listen_fd: c_int, fd: c_int) {
    if fdtable::kind(listen_fd) != Kind::Listener {
        return;
    }
    let Some(peer) = sock_name(fd, true) else {
        return;
    };
    let expected = EXPECTED.lock().as_mut().and_then(|m| m.remove(&peer));
    if let Some(Expected {
        call,
        mobility,
        peer_sip,
        peer_uri,
    }) = expected
    {
        debug!("accepted {peer} on fd {fd}: call {call}");
        let Ok(io) = crate::stream::StreamIo::new() else {
            warn!("accepted {peer}: no eventfd; the stream is not tracked");
            return;
        };
        let local = sock_name(fd, false)
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let mobility = mobility.map(|m| {
            crate::mover::Mobility::new(m.key, m.id, call.clone(), ChannelProto::Tcp, peer, local)
        });
        if let Some(m) = &mobility {
            *m.peer_sip.lock() = peer_sip;
        }
        let stream = Arc::new(Stream {
            call: Mutex::new(Some(call)),
            io,
            mobility,
            peer_seen: None,
            owner: std::process::id(),
            peer: PeerName::caller(peer_uri),
            outgoing: false,
            ended: Default::default(),
        });
        if stream.mobility.is_some() {
            bound_liveness(fd);
        }
        registered(&stream);
        with_table(|t| t.insert(fd, Entry::Stream(stream)));
        fdtable::set(fd, Kind::Stream);
    }
}

/// The SIP thread answered a caller who will connect from `caller`.
pub fn expect_caller(caller: SocketAddr, expected: Expected) {
    let mut g = EXPECTED.lock();
    let m = g.get_or_insert_with(HashMap::new);
    // Bounded: callers that never connect must not pile up.
    if m.len() > 4096 {
        m.clear();
    }
    m.insert(canonical(caller), expected);
}

/// The dialog ended (BYE from the peer): nothing to hang up any more.
pub fn forget_call(call: &CallId) {
    if let Some(m) = EXPECTED.lock().as_mut() {
        m.retain(|_, e| e.call != *call);
    }
    let (streams, _) = snapshot(usize::MAX);
    for (s, _) in streams {
        if s.call.lock().as_ref() == Some(call) {
            s.ended.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    ANSWERED_DATAGRAMS
        .lock()
        .retain(|s| s.mobility.as_ref().is_none_or(|m| m.call_id != *call));
}

/// The descriptor `fd` is going away (close, or dup2 over it).
pub fn release(fd: c_int) {
    if fdtable::borrowed() {
        return;
    }
    if fdtable::kind(fd) == Kind::Datagram {
        crate::datagrams::forget(fd);
    }
    let entry = with_table(|t| t.remove(&fd));
    fdtable::clear(fd);
    crate::epolls::forget(fd);
    let Some(entry) = entry else { return };
    let pid = std::process::id();
    match entry {
        Entry::Stream(s) => {
            // Last descriptor of this stream, in the process that owns it.
            if Arc::strong_count(&s) == 1 && s.owner == pid {
                let (tx, rx) = s.io.counters();
                info!("stream closed: {tx} bytes sent, {rx} received");
                s.hang_up();
            }
        }
        Entry::Listener(l) => {
            if Arc::strong_count(&l) == 1 && l.owner == pid {
                if let Ok(h) = sip::handle() {
                    h.send(Command::Unlisten {
                        proto: l.proto,
                        port: l.port,
                    });
                }
            }
        }
    }
}

/// `new` now refers to what `old` does (dup family).
pub fn duplicated(old: c_int, new: c_int) {
    if fdtable::borrowed() {
        return;
    }
    let kind = fdtable::kind(old);
    if kind == Kind::Epoll {
        crate::epolls::duplicated(old, new);
        fdtable::set(new, kind);
        return;
    }
    let entry = with_table(|t| t.get(&old).cloned());
    if let Some(e) = entry {
        with_table(|t| t.insert(new, e));
        fdtable::set(new, kind);
    }
}

/// A stream and the descriptors that name it (none for an answered
/// datagram dialog).
pub type StreamFds = (Arc<Stream>, Vec<c_int>);

/// Every stream of this process (at most `max`, lowest descriptor first)
/// with its descriptors, and how many there are in all. The table's lock is
/// held only to copy references out; the streams are read after.
pub fn snapshot(max: usize) -> (Vec<StreamFds>, usize) {
    let mut all: Vec<StreamFds> = Vec::new();
    with_table(|t| {
        let mut by_ptr: HashMap<*const Stream, usize> = HashMap::new();
        for (fd, e) in t.iter() {
            if let Entry::Stream(s) = e {
                match by_ptr.get(&Arc::as_ptr(s)) {
                    Some(&i) => all[i].1.push(*fd),
                    None => {
                        by_ptr.insert(Arc::as_ptr(s), all.len());
                        all.push((s.clone(), vec![*fd]));
                    }
                }
            }
        }
    });
    for (_, fds) in &mut all {
        fds.sort_unstable();
    }
    all.sort_by_key(|(_, fds)| fds[0]);
    // Answered datagram dialogs have no descriptor of their own.
    for s in ANSWERED_DATAGRAMS.lock().iter() {
        if !all.iter().any(|(a, _)| Arc::ptr_eq(a, s)) {
            all.push((s.clone(), Vec::new()));
        }
    }
    let total = all.len();
    all.truncate(max);
    (all, total)
}

/// The real (peer, local) addresses of a descriptor's socket.
pub fn addresses(fd: c_int) -> (Option<SocketAddr>, Option<SocketAddr>) {
    (sock_name(fd, true), sock_name(fd, false))
}

/// Does `fd` still name `stream`? (A descriptor read outside the table's
/// lock may have been closed and reused meanwhile.)
pub fn still_names(fd: c_int, stream: &Arc<Stream>) -> bool {
    with_table(|t| matches!(t.get(&fd), Some(Entry::Stream(s)) if Arc::ptr_eq(s, stream)))
}

/// The stream behind a descriptor, for the data-path hooks.
pub fn stream(fd: c_int) -> Option<Arc<Stream>> {
    with_table(|t| match t.get(&fd) {
        Some(Entry::Stream(s)) => Some(s.clone()),
        _ => None,
    })
}

/// getpeername() on a stream reports the placeholder the program dialled.
pub fn peer_seen(fd: c_int) -> Option<SocketAddr> {
    with_table(|t| match t.get(&fd) {
        Some(Entry::Stream(s)) => s.peer_seen,
        _ => None,
    })
}

/// Write `addr` to a caller's sockaddr buffer, truncating as the kernel does.
///
/// # Safety
/// `out`/`len` as for getpeername(2).
pub unsafe fn write_out(addr: SocketAddr, fam: c_int, out: *mut sockaddr, len: *mut socklen_t) {
    let (ss, full) = to_sockaddr(addr, fam);
    if out.is_null() || len.is_null() {
        return;
    }
    let n = unsafe { *len }.min(full) as usize;
    unsafe {
        std::ptr::copy_nonoverlapping(&ss as *const _ as *const u8, out as *mut u8, n);
        *len = full;
    }
}

pub fn socket_family(fd: c_int) -> c_int {
    family(fd)
}
