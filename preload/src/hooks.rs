//! Every libc function libwisp.so stands in front of, in one place.
//!
//! Each hook is thin: ask the fd table (or the name map) whether the call is
//! ours, and if not, call the real function at once. Anything that is ours
//! goes to the engine inside `guard`, which turns a panic into -1/errno and
//! a log line: a panic must never unwind into C, and never fall through to
//! the real call with a placeholder address.
//!
//! The safety contract of every hook is that of the libc function it
//! replaces (its man page): C callers cannot read a `# Safety` section.
#![allow(clippy::missing_safety_doc)]

use crate::real;
use crate::resolve;
use libc::{addrinfo, c_char, c_int, hostent, sockaddr, socklen_t};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `f`; on panic log it, set errno and return `fail`.
fn guard<T>(what: &str, fail: T, f: impl FnOnce() -> T) -> T {
    let _inside = crate::state::Inside::enter();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            error!("internal error in {what}; the call fails with EIO");
            set_errno(libc::EIO);
            fail
        }
    }
}

use crate::engine::{self, set_errno};
use crate::fdtable;
use crate::table;

// ---- name resolution --------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    let numeric = !hints.is_null() && unsafe { (*hints).ai_flags } & libc::AI_NUMERICHOST != 0;
    if !numeric {
        if let Some(index) = guard("getaddrinfo", None, || unsafe { resolve::lookup(node) }) {
            return guard("getaddrinfo", libc::EAI_FAIL, || unsafe {
                resolve::getaddrinfo(index, service, hints, res)
            });
        }
    }
    unsafe { real::getaddrinfo(node, service, hints, res) }
}

/// Storage for the non-reentrant gethostbyname family, one per thread
/// (glibc's is per process; per thread is strictly safer).
struct HostBuf {
    ent: hostent,
    buf: [c_char; 512],
}

thread_local! {
    static HOSTBUF: std::cell::UnsafeCell<HostBuf> = const { std::cell::UnsafeCell::new(HostBuf {
        ent: hostent { h_name: std::ptr::null_mut(), h_aliases: std::ptr::null_mut(), h_addrtype: 0, h_length: 0, h_addr_list: std::ptr::null_mut() },
        buf: [0; 512],
    }) };
}

fn static_hostent(index: usize, af: c_int) -> *mut hostent {
    HOSTBUF.with(|cell| {
        let hb = cell.get();
        // SAFETY: thread-local, and the result is only valid until this
        // thread's next call, exactly as gethostbyname documents.
        let rc = unsafe {
            resolve::fill_hostent(index, af, &mut (*hb).ent, (*hb).buf.as_mut_ptr(), 512)
        };
        if rc == 0 {
            unsafe { &mut (*hb).ent as *mut hostent }
        } else {
            std::ptr::null_mut()
        }
    })
}

/// The reentrant gethostby*_r answer for map entry `index`, in the
/// caller's buffer, with the result and h_errno set as glibc sets them.
unsafe fn hostent_r(
    index: usize,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: libc::size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    let rc = unsafe { resolve::fill_hostent(index, af, ret, buf, buflen) };
    unsafe {
        *result = if rc == 0 { ret } else { std::ptr::null_mut() };
        if !h_errnop.is_null() {
            // NETDB_INTERNAL (-1): errno (ERANGE) says why.
            *h_errnop = if rc == 0 { 0 } else { -1 };
        }
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut hostent {
    match guard("gethostbyname", None, || unsafe { resolve::lookup(name) }) {
        Some(index) => static_hostent(index, libc::AF_INET),
        None => unsafe { real::gethostbyname(name) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn gethostbyname2(name: *const c_char, af: c_int) -> *mut hostent {
    match guard("gethostbyname2", None, || unsafe { resolve::lookup(name) }) {
        Some(index) => static_hostent(index, af),
        None => unsafe { real::gethostbyname2(name, af) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn gethostbyname_r(
    name: *const c_char,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: libc::size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    unsafe { gethostbyname2_r(name, libc::AF_INET, ret, buf, buflen, result, h_errnop) }
}

#[no_mangle]
pub unsafe extern "C" fn gethostbyname2_r(
    name: *const c_char,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: libc::size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    if let Some(index) = guard("gethostbyname_r", None, || unsafe { resolve::lookup(name) }) {
        return unsafe { hostent_r(index, af, ret, buf, buflen, result, h_errnop) };
    }
    static REAL: real::Sym = real::Sym::new(b"gethostbyname2_r\0");
    type F = unsafe extern "C" fn(
        *const c_char,
        c_int,
        *mut hostent,
        *mut c_char,
        libc::size_t,
        *mut *mut hostent,
        *mut c_int,
    ) -> c_int;
    // SAFETY: glibc's gethostbyname2_r has this signature.
    let f: F = unsafe { std::mem::transmute(REAL.get()) };
    unsafe { f(name, af, ret, buf, buflen, result, h_errnop) }
}

/// gethostbyaddr for a placeholder gives its name back.
#[no_mangle]
pub unsafe extern "C" fn gethostbyaddr(
    addr: *const c_void,
    len: socklen_t,
    af: c_int,
) -> *mut hostent {
    let ours = guard("gethostbyaddr", None, || unsafe {
        placeholder_index(addr, len, af)
    });
    match ours {
        Some(index) => static_hostent(index, af),
        None => {
            static REAL: real::Sym = real::Sym::new(b"gethostbyaddr\0");
            type F = unsafe extern "C" fn(*const c_void, socklen_t, c_int) -> *mut hostent;
            // SAFETY: glibc's gethostbyaddr has this signature.
            let f: F = unsafe { std::mem::transmute(REAL.get()) };
            unsafe { f(addr, len, af) }
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn gethostbyaddr_r(
    addr: *const c_void,
    len: socklen_t,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: libc::size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    if let Some(index) = guard("gethostbyaddr_r", None, || unsafe {
        placeholder_index(addr, len, af)
    }) {
        return unsafe { hostent_r(index, af, ret, buf, buflen, result, h_errnop) };
    }
    static REAL: real::Sym = real::Sym::new(b"gethostbyaddr_r\0");
    type F = unsafe extern "C" fn(
        *const c_void,
        socklen_t,
        c_int,
        *mut hostent,
        *mut c_char,
        libc::size_t,
        *mut *mut hostent,
        *mut c_int,
    ) -> c_int;
    // SAFETY: glibc's gethostbyaddr_r has this signature.
    let f: F = unsafe { std::mem::transmute(REAL.get()) };
    unsafe { f(addr, len, af, ret, buf, buflen, result, h_errnop) }
}

/// The map entry of a raw in_addr/in6_addr, if it is a placeholder.
unsafe fn placeholder_index(addr: *const c_void, len: socklen_t, af: c_int) -> Option<usize> {
    if addr.is_null() {
        return None;
    }
    let ip: std::net::IpAddr = match (af, len) {
        (libc::AF_INET, 4) => std::net::Ipv4Addr::from(unsafe { *(addr as *const [u8; 4]) }).into(),
        (libc::AF_INET6, 16) => {
            std::net::Ipv6Addr::from(unsafe { *(addr as *const [u8; 16]) }).into()
        }
        _ => return None,
    };
    resolve::entry_of_ip(ip)
}

#[no_mangle]
pub unsafe extern "C" fn getnameinfo(
    addr: *const sockaddr,
    len: socklen_t,
    host: *mut c_char,
    hostlen: socklen_t,
    serv: *mut c_char,
    servlen: socklen_t,
    flags: c_int,
) -> c_int {
    let ours = guard("getnameinfo", None, || {
        let (ip, port) = unsafe { resolve::sockaddr_ip(addr, len) }?;
        Some((resolve::entry_of_ip(ip)?, port))
    });
    if let Some((index, port)) = ours {
        if flags & libc::NI_NUMERICHOST == 0 && !host.is_null() && hostlen > 0 {
            let name = crate::state::shared()
                .names
                .entry(index)
                .and_then(|e| e.names.first().cloned())
                .unwrap_or_default();
            if !unsafe { resolve::copy_cstr(&name, host, hostlen) } {
                return libc::EAI_OVERFLOW;
            }
            if !serv.is_null() && servlen > 0 {
                let service = resolve::service_name(port, flags);
                if !unsafe { resolve::copy_cstr(&service, serv, servlen) } {
                    return libc::EAI_OVERFLOW;
                }
            }
            return 0;
        }
    }
    unsafe { real::getnameinfo(addr, len, host, hostlen, serv, servlen, flags) }
}

// ---- sockets: set-up and tear-down --------------------------------------

#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if let Some((ip, port)) = unsafe { resolve::sockaddr_ip(addr, len) } {
        if crate::names::NameMap::is_placeholder(ip) {
            let target = std::net::SocketAddr::new(ip, port);
            return guard("connect", -1, || engine::connect(fd, target));
        }
    }
    unsafe { real::connect(fd, addr, len) }
}

#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let rc = unsafe { real::bind(fd, addr, len) };
    if rc == 0 && crate::state::wants_listeners() && !crate::state::Inside::is() {
        let saved = unsafe { *libc::__errno_location() };
        guard("bind", (), || engine::after_bind(fd));
        set_errno(saved);
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let rc = unsafe { real::listen(fd, backlog) };
    if rc == 0 && crate::state::wants_listeners() && !crate::state::Inside::is() {
        let saved = unsafe { *libc::__errno_location() };
        guard("listen", (), || engine::after_listen(fd));
        set_errno(saved);
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let new = unsafe { real::accept(fd, addr, len) };
    if new >= 0 && fdtable::is_managed(fd) {
        guard("accept", (), || engine::after_accept(fd, new));
    }
    new
}

#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let new = unsafe { real::accept4(fd, addr, len, flags) };
    if new >= 0 && fdtable::is_managed(fd) {
        guard("accept4", (), || engine::after_accept(fd, new));
    }
    new
}

#[no_mangle]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if fdtable::kind(fd) == fdtable::Kind::Stream {
        if let Some(seen) = guard("getpeername", None, || table::peer_seen(fd)) {
            let rc = unsafe { real::getpeername(fd, addr, len) };
            if rc == 0 {
                unsafe { engine::write_out(seen, engine::socket_family(fd), addr, len) };
            }
            return rc;
        }
    }
    unsafe { real::getpeername(fd, addr, len) }
}

#[no_mangle]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    if fdtable::kind(fd) == fdtable::Kind::Stream {
        // Noted before the FIN goes: a move swapping sockets meanwhile
        // then sends it on the new one too.
        guard("shutdown", (), || engine::before_shutdown(fd, how));
    }
    let rc = unsafe { real::shutdown(fd, how) };
    if rc == 0 && fdtable::kind(fd) == fdtable::Kind::Stream {
        guard("shutdown", (), || engine::after_shutdown(fd, how));
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if fdtable::is_managed(fd) {
        guard("close", (), || engine::release(fd));
    }
    unsafe { real::close(fd) }
}

#[no_mangle]
pub unsafe extern "C" fn close_range(
    first: libc::c_uint,
    last: libc::c_uint,
    flags: c_int,
) -> c_int {
    static REAL: real::Sym = real::Sym::new(b"close_range\0");
    type F = unsafe extern "C" fn(libc::c_uint, libc::c_uint, c_int) -> c_int;
    // SAFETY: glibc's close_range has this signature.
    let f: F = unsafe { std::mem::transmute(REAL.get()) };
    let rc = unsafe { f(first, last, flags) };
    if rc == 0 && flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
        let end = (last as usize).min(fdtable::MAX_FD - 1);
        for fd in first as usize..=end {
            if fdtable::is_managed(fd as c_int) {
                guard("close_range", (), || engine::release(fd as c_int));
            }
        }
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    let new = unsafe { real::dup(fd) };
    if new >= 0 && fdtable::is_managed(fd) {
        guard("dup", (), || engine::duplicated(fd, new));
    }
    new
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    unsafe { dup3_common(old, new, None) }
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    unsafe { dup3_common(old, new, Some(flags)) }
}

unsafe fn dup3_common(old: c_int, new: c_int, flags: Option<c_int>) -> c_int {
    let rc = match flags {
        None => unsafe { real::dup2(old, new) },
        Some(f) => unsafe { real::dup3(old, new, f) },
    };
    if rc >= 0 && old != new && (fdtable::is_managed(new) || fdtable::is_managed(old)) {
        guard("dup2", (), || {
            engine::release(new);
            engine::duplicated(old, new);
        });
    }
    rc
}

/// fcntl is variadic; on x86_64 and aarch64 the optional third argument
/// travels in a register either way, so taking it as a long is exact.
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    static REAL: real::Sym = real::Sym::new(b"fcntl\0");
    unsafe { fcntl_common(&REAL, fd, cmd, arg) }
}

#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    static REAL: real::Sym = real::Sym::new(b"fcntl64\0");
    unsafe { fcntl_common(&REAL, fd, cmd, arg) }
}

unsafe fn fcntl_common(sym: &real::Sym, fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    type F = unsafe extern "C" fn(c_int, c_int, libc::c_ulong) -> c_int;
    // SAFETY: fcntl's ABI as described above.
    let f: F = unsafe { std::mem::transmute(sym.get()) };
    let rc = unsafe { f(fd, cmd, arg) };
    if rc >= 0 && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) && fdtable::is_managed(fd)
    {
        guard("fcntl", (), || engine::duplicated(fd, rc));
    }
    rc
}

// ---- the data path ------------------------------------------------------
//
// Descriptors that are not streams go straight to libc. A stream's bytes go
// through `StreamIo`, which counts them, keeps what the peer may not have,
// and never blocks inside the kernel (see stream.rs for why).

use crate::stream::{one, RecvCall, SendCall};
use libc::{
    c_uint, c_void, epoll_event, fd_set, iovec, mmsghdr, msghdr, nfds_t, off_t, pollfd, sigset_t,
    size_t, ssize_t, timespec, timeval,
};

/// The data-path hooks, each split in two: the exported function is the
/// fast path, where a descriptor the table does not know (anything but a
/// wisp stream, listener or datagram socket) goes straight to libc before
/// anything else is looked at: a bounds check, one load, and a tail call,
/// with no stack frame. Everything else is in `managed_<name>`, kept out
/// of line so its frame and spills never reach the fast path (extern "C",
/// so the call to it is a tail call too: the hooks catch panics inside).
macro_rules! data_hooks {
    ($($name:ident => $managed:ident, $fd:ident: fn($($a:ident: $t:ty),*) -> $r:ty;)*) => {
        $(
            #[no_mangle]
            pub unsafe extern "C" fn $name($($a: $t),*) -> $r {
                if !fdtable::is_managed($fd) {
                    return unsafe { real::$name($($a),*) };
                }
                unsafe { $managed($($a),*) }
            }
        )*
    };
}

data_hooks! {
    read => managed_read, fd: fn(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t;
    write => managed_write, fd: fn(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t;
    readv => managed_readv, fd: fn(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t;
    writev => managed_writev, fd: fn(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t;
    recv => managed_recv, fd: fn(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t;
    send => managed_send, fd: fn(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t;
    recvfrom => managed_recvfrom, fd: fn(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    recvmsg => managed_recvmsg, fd: fn(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    sendmsg => managed_sendmsg, fd: fn(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    sendfile => managed_sendfile, out: fn(out: c_int, inp: c_int, off: *mut off_t, n: size_t) -> ssize_t;
    sendfile64 => managed_sendfile64, out: fn(out: c_int, inp: c_int, off: *mut off_t, n: size_t) -> ssize_t;
}

/// The iovec list of a msghdr.
///
/// # Safety
/// `m` is a valid header.
#[allow(clippy::unnecessary_cast)] // msg_iovlen is not usize on every libc
unsafe fn iov_of(m: &msghdr) -> &[iovec] {
    if m.msg_iov.is_null() {
        &[]
    } else {
        unsafe { std::slice::from_raw_parts(m.msg_iov, m.msg_iovlen as usize) }
    }
}

/// The stream behind `fd`, if it is one; one atomic load when it is not.
#[inline]
fn stream_of(fd: c_int) -> Option<std::sync::Arc<table::Stream>> {
    if fdtable::kind(fd) != fdtable::Kind::Stream {
        return None;
    }
    guard("stream lookup", None, || table::stream(fd))
}

fn send_io(
    what: &str,
    s: &table::Stream,
    fd: c_int,
    iov: &[iovec],
    msg: Option<&msghdr>,
    flags: c_int,
) -> ssize_t {
    guard(what, -1, || s.io.send(fd, SendCall { iov, msg, flags }))
}

fn recv_io(
    what: &str,
    s: &table::Stream,
    fd: c_int,
    iov: &[iovec],
    msg: Option<*mut msghdr>,
    flags: c_int,
) -> ssize_t {
    guard(what, -1, || s.io.recv(fd, RecvCall { iov, msg, flags }))
}

/// send/write on a wisp datagram socket go through the queue that holds
/// datagrams while the host has no route; None for any other descriptor.
unsafe fn datagram_send(
    what: &str,
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
) -> Option<ssize_t> {
    if fdtable::kind(fd) != fdtable::Kind::Datagram || buf.is_null() {
        return None;
    }
    let data = unsafe { std::slice::from_raw_parts(buf as *const u8, n) };
    Some(guard(what, -1, || crate::datagrams::send(fd, data, flags)))
}

#[inline(never)]
unsafe extern "C" fn managed_read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    match stream_of(fd) {
        Some(s) => recv_io("read", &s, fd, &[one(buf, n)], None, 0),
        None => unsafe { real::read(fd, buf, n) },
    }
}

#[inline(never)]
unsafe extern "C" fn managed_write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    if let Some(rc) = unsafe { datagram_send("write", fd, buf, n, 0) } {
        return rc;
    }
    match stream_of(fd) {
        Some(s) => send_io("write", &s, fd, &[one(buf, n)], None, 0),
        None => unsafe { real::write(fd, buf, n) },
    }
}

#[inline(never)]
unsafe extern "C" fn managed_readv(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
    match stream_of(fd) {
        Some(s) if n >= 0 && !iov.is_null() => {
            let v = unsafe { std::slice::from_raw_parts(iov, n as usize) };
            recv_io("readv", &s, fd, v, None, 0)
        }
        _ => unsafe { real::readv(fd, iov, n) },
    }
}

#[inline(never)]
unsafe extern "C" fn managed_writev(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
    match stream_of(fd) {
        Some(s) if n >= 0 && !iov.is_null() => {
            let v = unsafe { std::slice::from_raw_parts(iov, n as usize) };
            send_io("writev", &s, fd, v, None, 0)
        }
        _ => unsafe { real::writev(fd, iov, n) },
    }
}

#[inline(never)]
unsafe extern "C" fn managed_recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    match stream_of(fd) {
        Some(s) => recv_io("recv", &s, fd, &[one(buf, n)], None, flags),
        None => unsafe { real::recv(fd, buf, n, flags) },
    }
}

#[inline(never)]
unsafe extern "C" fn managed_send(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
) -> ssize_t {
    if let Some(rc) = unsafe { datagram_send("send", fd, buf, n, flags) } {
        return rc;
    }
    match stream_of(fd) {
        Some(s) => send_io("send", &s, fd, &[one(buf, n)], None, flags),
        None => unsafe { real::send(fd, buf, n, flags) },
    }
}

#[inline(never)]
unsafe extern "C" fn managed_recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    match stream_of(fd) {
        Some(s) => {
            // A connected TCP socket reports no source address.
            if !len.is_null() {
                unsafe { *len = 0 };
            }
            recv_io("recvfrom", &s, fd, &[one(buf, n)], None, flags)
        }
        None => unsafe { real::recvfrom(fd, buf, n, flags, addr, len) },
    }
}

#[inline(never)]
unsafe extern "C" fn managed_recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    match stream_of(fd) {
        Some(s) if !msg.is_null() => {
            let m = unsafe { &*msg };
            let v = unsafe { iov_of(m) };
            recv_io("recvmsg", &s, fd, v, Some(msg), flags)
        }
        _ => unsafe { real::recvmsg(fd, msg, flags) },
    }
}

#[inline(never)]
unsafe extern "C" fn managed_sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    match stream_of(fd) {
        Some(s) if !msg.is_null() => {
            let m = unsafe { &*msg };
            let v = unsafe { iov_of(m) };
            send_io("sendmsg", &s, fd, v, Some(m), flags)
        }
        _ => unsafe { real::sendmsg(fd, msg, flags) },
    }
}

/// sendfile() to a stream is done as read + send, so its bytes reach the
/// replay ring; from a file, as the kernel would, it moves the offset by
/// what was sent.
unsafe fn sendfile_common(
    out: c_int,
    inp: c_int,
    off: *mut off_t,
    n: size_t,
    s: &table::Stream,
) -> ssize_t {
    let mut buf = vec![0u8; n.min(256 * 1024)];
    let got = if off.is_null() {
        unsafe { real::read(inp, buf.as_mut_ptr().cast(), buf.len()) }
    } else {
        unsafe { libc::pread(inp, buf.as_mut_ptr().cast(), buf.len(), *off) }
    };
    if got <= 0 {
        return got;
    }
    let sent = send_io(
        "sendfile",
        s,
        out,
        &[one(buf.as_ptr().cast(), got as usize)],
        None,
        0,
    );
    let moved = sent.max(0);
    if off.is_null() {
        if moved < got {
            // Put back what was read and not sent.
            unsafe { libc::lseek(inp, (moved - got) as off_t, libc::SEEK_CUR) };
        }
    } else {
        unsafe { *off += moved as off_t };
    }
    sent
}

#[inline(never)]
unsafe extern "C" fn managed_sendfile(
    out: c_int,
    inp: c_int,
    off: *mut off_t,
    n: size_t,
) -> ssize_t {
    match stream_of(out) {
        Some(s) => unsafe { sendfile_common(out, inp, off, n, &s) },
        None => unsafe { real::sendfile(out, inp, off, n) },
    }
}

#[inline(never)]
unsafe extern "C" fn managed_sendfile64(
    out: c_int,
    inp: c_int,
    off: *mut off_t,
    n: size_t,
) -> ssize_t {
    match stream_of(out) {
        Some(s) => unsafe { sendfile_common(out, inp, off, n, &s) },
        None => unsafe { real::sendfile64(out, inp, off, n) },
    }
}

// ---- the waits ----------------------------------------------------------
//
// These pass through: readiness of a stream is its socket's readiness. They
// are here so moves can put back what a descriptor swap takes away (epoll
// registrations) in one place.

macro_rules! passthrough {
    ($($name:ident($($a:ident: $t:ty),*) -> $r:ty;)*) => {
        $(
            #[no_mangle]
            pub unsafe extern "C" fn $name($($a: $t),*) -> $r {
                unsafe { real::$name($($a),*) }
            }
        )*
    };
}

passthrough! {
    recvmmsg(fd: c_int, msgs: *mut mmsghdr, n: c_uint, flags: c_int, timeout: *mut timespec) -> c_int;
    sendmmsg(fd: c_int, msgs: *mut mmsghdr, n: c_uint, flags: c_int) -> c_int;
}

/// Does a poll set include a stream? One atomic load per entry.
unsafe fn polls_a_stream(fds: *const pollfd, n: nfds_t) -> bool {
    !fds.is_null()
        && (0..n as usize)
            .any(|i| fdtable::kind(unsafe { (*fds.add(i)).fd }) == fdtable::Kind::Stream)
}

/// Does a select set include a stream?
unsafe fn selects_a_stream(n: c_int, sets: [*mut fd_set; 3]) -> bool {
    (0..n.clamp(0, libc::FD_SETSIZE as c_int)).any(|fd| {
        fdtable::kind(fd) == fdtable::Kind::Stream
            && sets
                .iter()
                .any(|s| !s.is_null() && unsafe { libc::FD_ISSET(fd, *s) })
    })
}

/// Bytes the library holds for a stream (drained during a move) make it
/// readable though its socket is not: report them on top of what the
/// kernel said. Returns the new count of ready entries.
unsafe fn poll_with_pending(fds: *mut pollfd, n: nfds_t, rc: c_int) -> c_int {
    if rc < 0 {
        return rc;
    }
    let mut marked = false;
    for i in 0..n as usize {
        let p = unsafe { &mut *fds.add(i) };
        if p.events & libc::POLLIN != 0 && table::has_pending(p.fd) {
            p.revents |= libc::POLLIN;
            marked = true;
        }
    }
    if !marked {
        return rc;
    }
    (0..n as usize)
        .filter(|&i| unsafe { (*fds.add(i)).revents } != 0)
        .count() as c_int
}

/// Held bytes anywhere in the set: answer at once (a zero-timeout poll
/// for the rest), else None and the caller waits.
unsafe fn poll_now_if_pending(fds: *mut pollfd, n: nfds_t) -> Option<c_int> {
    let any = (0..n as usize).any(|i| {
        let p = unsafe { &*fds.add(i) };
        p.events & libc::POLLIN != 0 && table::has_pending(p.fd)
    });
    any.then(|| {
        let rc = unsafe { real::poll(fds, n, 0) };
        unsafe { poll_with_pending(fds, n, rc) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int {
    if !unsafe { polls_a_stream(fds, n) } {
        return unsafe { real::poll(fds, n, timeout) };
    }
    if let Some(rc) = unsafe { poll_now_if_pending(fds, n) } {
        return rc;
    }
    if timeout == 0 {
        return unsafe { real::poll(fds, n, 0) };
    }
    crate::waits::sliced(crate::waits::from_ms(timeout), |ms| {
        if let Some(rc) = unsafe { poll_now_if_pending(fds, n) } {
            return rc;
        }
        unsafe { real::poll(fds, n, ms) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut pollfd,
    n: nfds_t,
    ts: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    if !unsafe { polls_a_stream(fds, n) } {
        return unsafe { real::ppoll(fds, n, ts, mask) };
    }
    let timeout = (!ts.is_null())
        .then(|| unsafe { std::time::Duration::new((*ts).tv_sec as u64, (*ts).tv_nsec as u32) });
    crate::waits::sliced(timeout, |ms| {
        if let Some(rc) = unsafe { poll_now_if_pending(fds, n) } {
            return rc;
        }
        let slice = timespec {
            tv_sec: (ms / 1000) as _,
            tv_nsec: ((ms % 1000) as i64 * 1_000_000) as _,
        };
        unsafe { real::ppoll(fds, n, &slice, mask) }
    })
}

/// select/pselect in slices: the sets are in/out, so each slice starts
/// from the program's own sets again.
unsafe fn select_sliced(
    sets: [*mut fd_set; 3],
    timeout: Option<std::time::Duration>,
    mut once: impl FnMut(*mut fd_set, *mut fd_set, *mut fd_set, i32) -> c_int,
) -> c_int {
    let saved: Vec<Option<fd_set>> = sets
        .iter()
        .map(|s| (!s.is_null()).then(|| unsafe { **s }))
        .collect();
    crate::waits::sliced(timeout, |ms| {
        for (s, copy) in sets.iter().zip(&saved) {
            if let Some(c) = copy {
                unsafe { **s = *c };
            }
        }
        // Streams asked for reading that have bytes held for them are
        // ready whatever their sockets say.
        let held: Vec<c_int> = match saved[0] {
            Some(r) => (0..libc::FD_SETSIZE as c_int)
                .filter(|&fd| unsafe { libc::FD_ISSET(fd, &r) } && table::has_pending(fd))
                .collect(),
            None => Vec::new(),
        };
        if held.is_empty() {
            return once(sets[0], sets[1], sets[2], ms);
        }
        let rc = once(sets[0], sets[1], sets[2], 0);
        if rc < 0 {
            return rc;
        }
        let mut extra = 0;
        for &fd in &held {
            if !unsafe { libc::FD_ISSET(fd, sets[0]) } {
                unsafe { libc::FD_SET(fd, sets[0]) };
                extra += 1;
            }
        }
        rc + extra
    })
}

#[no_mangle]
pub unsafe extern "C" fn select(
    n: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    t: *mut timeval,
) -> c_int {
    let is_zero = !t.is_null() && unsafe { (*t).tv_sec == 0 && (*t).tv_usec == 0 };
    if is_zero || !unsafe { selects_a_stream(n, [r, w, e]) } {
        return unsafe { real::select(n, r, w, e, t) };
    }
    let timeout = (!t.is_null()).then(|| unsafe {
        std::time::Duration::new((*t).tv_sec as u64, (*t).tv_usec as u32 * 1000)
    });
    let start = std::time::Instant::now();
    let rc = unsafe {
        select_sliced([r, w, e], timeout, |r, w, e, ms| {
            let mut slice = timeval {
                tv_sec: (ms / 1000) as _,
                tv_usec: ((ms % 1000) * 1000) as _,
            };
            real::select(n, r, w, e, &mut slice)
        })
    };
    // Linux reports the time left in *t; keep doing so.
    if let Some(total) = timeout {
        let left = total.saturating_sub(start.elapsed());
        unsafe {
            (*t).tv_sec = left.as_secs() as _;
            (*t).tv_usec = left.subsec_micros() as _;
        }
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn pselect(
    n: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    t: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    if !unsafe { selects_a_stream(n, [r, w, e]) } {
        return unsafe { real::pselect(n, r, w, e, t, mask) };
    }
    let timeout = (!t.is_null())
        .then(|| unsafe { std::time::Duration::new((*t).tv_sec as u64, (*t).tv_nsec as u32) });
    unsafe {
        select_sliced([r, w, e], timeout, |r, w, e, ms| {
            let slice = timespec {
                tv_sec: (ms / 1000) as _,
                tv_nsec: ((ms % 1000) as i64 * 1_000_000) as _,
            };
            real::pselect(n, r, w, e, &slice, mask)
        })
    }
}

/// epoll_wait: streams registered with EPOLLIN that have bytes held for
/// them are reported without waiting (their sockets cannot say so), and a
/// wait that a move ends through our eventfd in the set goes on with the
/// time left unless the move left something to report (`epolls`).
#[no_mangle]
pub unsafe extern "C" fn epoll_wait(
    ep: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    unsafe { epoll_pwait(ep, evs, max, timeout, std::ptr::null()) }
}

#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    ep: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const sigset_t,
) -> c_int {
    if fdtable::kind(ep) != fdtable::Kind::Epoll || max <= 0 || evs.is_null() {
        return unsafe { real::epoll_pwait(ep, evs, max, timeout, mask) };
    }
    let deadline = crate::waits::from_ms(timeout).map(|t| std::time::Instant::now() + t);
    loop {
        let held = guard("epoll_wait", Vec::new(), || {
            crate::epolls::pending_events(ep, table::has_pending)
        });
        let n = held.len().min(max as usize);
        for (i, ev) in held.iter().take(n).enumerate() {
            unsafe { *evs.add(i) = *ev };
        }
        let wait = match deadline {
            _ if n > 0 => 0,
            None => -1,
            Some(d) => d
                .saturating_duration_since(std::time::Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as c_int,
        };
        let rc = unsafe { real::epoll_pwait(ep, evs.add(n), max - n as c_int, wait, mask) };
        if rc < 0 {
            return if n > 0 { n as c_int } else { rc };
        }
        let (kept, ours) = unsafe { crate::epolls::strip_ours(ep, evs.add(n), rc as usize) };
        // A registration reported both ways (held bytes and a ready new
        // socket) is one entry, as the kernel would make it.
        let mut total = n;
        for i in n..n + kept {
            let ev = unsafe { *evs.add(i) };
            match (0..n).find(|&j| unsafe { (*evs.add(j)).u64 } == ev.u64) {
                Some(j) => unsafe { (*evs.add(j)).events |= ev.events },
                None => {
                    unsafe { *evs.add(total) = ev };
                    total += 1;
                }
            }
        }
        if total > 0 || !ours || wait == 0 {
            return total as c_int;
        }
    }
}

/// FIONREAD counts the bytes held for the program too (the seed names
/// Ioctlsocket): a program that sizes its read by it must see them.
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, req: libc::c_ulong, arg: *mut c_void) -> c_int {
    let rc = unsafe { real::ioctl(fd, req, arg) };
    if rc == 0
        && req == libc::FIONREAD
        && !arg.is_null()
        && fdtable::kind(fd) == fdtable::Kind::Stream
    {
        let held = guard("ioctl", 0, || table::pending(fd));
        unsafe { *(arg as *mut c_int) += held as c_int };
    }
    rc
}

/// sendto() to a placeholder on an unconnected socket would put the
/// placeholder on the wire: refuse it rather than fall through.
#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> ssize_t {
    if let Some((ip, _)) = unsafe { resolve::sockaddr_ip(addr, len) } {
        if crate::names::NameMap::is_placeholder(ip) {
            warn!("sendto a wisp name on an unconnected socket is not supported yet; connect() the socket first");
            set_errno(libc::EDESTADDRREQ);
            return -1;
        }
    }
    if let Some(s) = stream_of(fd) {
        // A connected TCP socket ignores the address.
        return send_io("sendto", &s, fd, &[one(buf, n)], None, flags);
    }
    unsafe { real::sendto(fd, buf, n, flags, addr, len) }
}

/// epoll keys its entries by open file description: remember the program's
/// registrations of streams so a move can put them back on the new socket.
#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(ep: c_int, op: c_int, fd: c_int, ev: *mut epoll_event) -> c_int {
    if fdtable::kind(fd) == fdtable::Kind::Stream {
        return guard("epoll_ctl", -1, || unsafe {
            crate::epolls::ctl(ep, op, fd, ev)
        });
    }
    unsafe { real::epoll_ctl(ep, op, fd, ev) }
}

// Fortified (_FORTIFY_SOURCE) entry points: the same calls with a buffer
// size check, which glibc does before calling the plain function.

#[no_mangle]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
) -> ssize_t {
    if n > buflen {
        unsafe { libc::abort() };
    }
    unsafe { read(fd, buf, n) }
}

#[no_mangle]
pub unsafe extern "C" fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
) -> ssize_t {
    if n > buflen {
        unsafe { libc::abort() };
    }
    unsafe { recv(fd, buf, n, flags) }
}

#[no_mangle]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    if n > buflen {
        unsafe { libc::abort() };
    }
    unsafe { recvfrom(fd, buf, n, flags, addr, len) }
}

#[no_mangle]
pub unsafe extern "C" fn __poll_chk(
    fds: *mut pollfd,
    n: nfds_t,
    timeout: c_int,
    fdslen: size_t,
) -> c_int {
    if (fdslen / std::mem::size_of::<pollfd>()) < n as usize {
        unsafe { libc::abort() };
    }
    unsafe { poll(fds, n, timeout) }
}
