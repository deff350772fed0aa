//! What the hooks do for descriptors that are wisp streams: connect by
//! name, listen and accept under `WISP_NAME`, and end the dialog on close.
//!
//! Runs on the program's own threads; all SIP work is handed to the SIP
//! thread, and connect() waits for its answer.

use crate::fdtable::{self, Kind};
use crate::real;
use crate::resolve;
use crate::sip::{self, Command};
use crate::sock::{family, sock_name, sock_type, to_sockaddr};
use crate::table::{self, Entry, Expected, Listener, PeerName, Stream};
use libc::{c_int, sockaddr, socklen_t};
use parking_lot::Mutex;
use sipcore::sdp::ChannelProto;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// End the stream's dialog with BYE, once.
pub fn hang_up(s: &Stream) {
    let call = s.call.lock().take();
    if let (Some(call), Ok(h)) = (call, sip::handle()) {
        h.send(Command::Hangup { call });
    }
}

/// shutdown(SHUT_RDWR) ends the stream both ways: the dialog ends with it.
/// A half-close (SHUT_WR) is the stream's business, carried by TCP's FIN.
pub fn after_shutdown(fd: c_int, how: c_int) {
    let Some(s) = table::stream(fd) else { return };
    if how == libc::SHUT_RDWR && s.owner == std::process::id() {
        hang_up(&s);
    }
}

/// shutdown(SHUT_WR): the FIN is part of the stream from now on.
pub fn before_shutdown(fd: c_int, how: c_int) {
    if how == libc::SHUT_WR || how == libc::SHUT_RDWR {
        if let Some(s) = table::stream(fd) {
            s.io.shut_wr();
        }
    }
}

/// A new stream of this process: the status socket comes up with the
/// first, and a movable one joins the movers' list.
fn registered(s: &Arc<Stream>) {
    crate::status::ensure();
    table::register_mobile(s);
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

pub use crate::sock::set_errno;

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
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
    let mobility = mobility.map(|m| {
        crate::mobility::Mobility::new(
            m.key,
            m.id,
            call.clone(),
            proto,
            remote,
            local.ip(),
            peer_sip,
        )
    });
    if let Some(m) = &mobility {
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
    table::insert(fd, Entry::Stream(stream));
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
    table::insert(fd, Entry::Listener(listener));
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

/// A connection accepted on a wisp listener: if it is the one a caller
/// announced, it becomes that dialog's stream.
pub fn after_accept(listen_fd: c_int, fd: c_int) {
    if fdtable::kind(listen_fd) != Kind::Listener {
        return;
    }
    let Some(peer) = sock_name(fd, true) else {
        return;
    };
    let expected = table::take_expected(peer);
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
            crate::mobility::Mobility::new(
                m.key,
                m.id,
                call.clone(),
                ChannelProto::Tcp,
                peer,
                local,
                peer_sip,
            )
        });
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
        table::insert(fd, Entry::Stream(stream));
        fdtable::set(fd, Kind::Stream);
    }
}

/// The descriptor `fd` is going away (close, or dup2 over it).
pub fn release(fd: c_int) {
    if fdtable::borrowed() {
        return;
    }
    if fdtable::kind(fd) == Kind::Datagram {
        crate::datagrams::forget(fd);
    }
    let entry = table::remove(fd);
    fdtable::clear(fd);
    let Some(entry) = entry else { return };
    let pid = std::process::id();
    match entry {
        Entry::Stream(s) => {
            // Last descriptor of this stream, in the process that owns it.
            if Arc::strong_count(&s) == 1 && s.owner == pid {
                let (tx, rx) = s.io.counters();
                info!("stream closed: {tx} bytes sent, {rx} received");
                hang_up(&s);
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
    if table::duplicate(old, new) {
        fdtable::set(new, kind);
    }
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
