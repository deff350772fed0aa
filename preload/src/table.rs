//! The process's wisp descriptors and streams: which descriptor names
//! which stream (dup'd copies share one), the movable streams by id and
//! by call, callers answered but not yet accepted, and the socket surgery
//! of a move (putting a new socket under a stream's descriptors).
//!
//! It knows nothing of SIP and starts no threads: the engine (program
//! threads), the SIP thread and the mover all come to it.

use crate::fdtable::{self, Kind};
use crate::real;
use crate::sock::{canonical, family, sock_name, to_sockaddr};
use libc::{c_int, sockaddr, socklen_t};
use parking_lot::Mutex;
use sipcore::sdp::ChannelProto;
use sipcore::ua::CallId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the library knows of one stream. Shared between duplicates of the
/// descriptor (dup, dup2, F_DUPFD): the dialog ends when the last goes.
pub struct Stream {
    /// The dialog; taken when it is ended (once, by close or shutdown).
    pub call: Mutex<Option<CallId>>,
    /// The counted, replayable data path.
    pub io: crate::stream::StreamIo,
    /// Key, id and peer addresses, when both ends can move the stream.
    pub mobility: Option<crate::mobility::Mobility>,
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
    pub fn caller(uri: String) -> PeerName {
        let name = crate::state::shared().names.name_of_uri(&uri);
        PeerName { uri, name }
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
pub enum Entry {
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

/// A movable stream joins the movers' list.
pub fn register_mobile(s: &Arc<Stream>) {
    if s.mobility.is_some() {
        let mut m = MOBILE.lock();
        m.retain(|w| w.strong_count() > 0);
        m.push(Arc::downgrade(s));
    }
}

/// `fd` now names `entry`.
pub fn insert(fd: c_int, entry: Entry) {
    with_table(|t| t.insert(fd, entry));
}

/// `fd` is going away: what it named, if anything (the caller decides
/// whether that was the last descriptor).
pub fn remove(fd: c_int) -> Option<Entry> {
    let entry = with_table(|t| t.remove(&fd));
    crate::epolls::forget(fd);
    entry
}

/// `new` now names what `old` does; false when `old` names nothing here.
pub fn duplicate(old: c_int, new: c_int) -> bool {
    let entry = with_table(|t| t.get(&old).cloned());
    match entry {
        Some(e) => {
            with_table(|t| t.insert(new, e));
            true
        }
        None => false,
    }
}

/// The caller answered from `peer`, if one was expected there.
pub fn take_expected(peer: SocketAddr) -> Option<Expected> {
    EXPECTED.lock().as_mut().and_then(|m| m.remove(&peer))
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
    let mob = crate::mobility::Mobility::new(
        keys.key,
        keys.id,
        call.clone(),
        ChannelProto::Udp,
        peer,
        local.ip(),
        None,
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
    register_mobile(&stream);
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
