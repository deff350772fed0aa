//! The libc functions our hooks stand in front of, found with
//! `dlsym(RTLD_NEXT)` on first use.
//!
//! Each pointer lives in an atomic so a lookup is one relaxed load on the
//! hot path, with no lock and no allocation: hooks run in signal handlers and
//! vfork children too. A racing first lookup just resolves twice.

use std::sync::atomic::{AtomicUsize, Ordering};

/// One lazily resolved symbol.
pub struct Sym {
    name: &'static [u8],
    addr: AtomicUsize,
}

impl Sym {
    pub const fn new(name: &'static [u8]) -> Sym {
        Sym {
            name,
            addr: AtomicUsize::new(0),
        }
    }

    /// The address of the next definition of this symbol after ours.
    /// Aborts if libc has none: continuing would mean calling null.
    #[inline]
    pub fn get(&self) -> usize {
        let a = self.addr.load(Ordering::Relaxed);
        if a != 0 {
            return a;
        }
        self.resolve()
    }

    /// The address if it was looked up already.
    #[inline]
    pub fn resolved(&self) -> Option<usize> {
        match self.addr.load(Ordering::Relaxed) {
            0 => None,
            a => Some(a),
        }
    }

    #[cold]
    fn resolve(&self) -> usize {
        // SAFETY: name is NUL-terminated (checked by the `real!` macro's
        // concat) and RTLD_NEXT is valid for a shared object.
        let a = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr().cast()) } as usize;
        if a == 0 {
            crate::log::raw_stderr(b"wisp: fatal: libc symbol not found\n");
            // SAFETY: abort is always safe to call.
            unsafe { libc::abort() };
        }
        self.addr.store(a, Ordering::Relaxed);
        a
    }
}

/// Declare a real function: `real!(connect: fn(c_int, *const sockaddr, socklen_t) -> c_int);`
/// makes `real::connect(...)` call the next `connect` in the lookup order.
macro_rules! real {
    ($($name:ident : fn($($arg:ident : $ty:ty),*) -> $ret:ty;)*) => {
        $(
            #[allow(clippy::missing_safety_doc)]
            #[inline]
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                static SYM: Sym = Sym::new(concat!(stringify!($name), "\0").as_bytes());
                // The first call resolves out of line, so that on every
                // later one a hook that ends in this call is a bare tail
                // jump: no stack frame to keep the arguments across a call.
                #[cold]
                #[inline(never)]
                unsafe extern "C" fn first($($arg: $ty),*) -> $ret {
                    // SAFETY: the symbol has this C signature in glibc.
                    let f: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { std::mem::transmute(SYM.get()) };
                    unsafe { f($($arg),*) }
                }
                match SYM.resolved() {
                    // SAFETY: as above.
                    Some(a) => {
                        let f: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { std::mem::transmute(a) };
                        unsafe { f($($arg),*) }
                    }
                    None => unsafe { first($($arg),*) },
                }
            }
        )*
    };
}

use libc::{
    addrinfo, c_char, c_int, c_uint, c_void, epoll_event, fd_set, hostent, iovec, mmsghdr, msghdr,
    nfds_t, off_t, pollfd, sigset_t, size_t, sockaddr, socklen_t, ssize_t, timespec, timeval,
};

real! {
    socket: fn(domain: c_int, ty: c_int, proto: c_int) -> c_int;
    connect: fn(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    bind: fn(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    listen: fn(fd: c_int, backlog: c_int) -> c_int;
    accept: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    accept4: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    close: fn(fd: c_int) -> c_int;
    shutdown: fn(fd: c_int, how: c_int) -> c_int;
    getpeername: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    read: fn(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t;
    write: fn(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t;
    readv: fn(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t;
    writev: fn(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t;
    recv: fn(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t;
    send: fn(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t;
    recvfrom: fn(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    sendto: fn(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t;
    recvmsg: fn(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    sendmsg: fn(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    recvmmsg: fn(fd: c_int, msgs: *mut mmsghdr, n: c_uint, flags: c_int, timeout: *mut timespec) -> c_int;
    sendmmsg: fn(fd: c_int, msgs: *mut mmsghdr, n: c_uint, flags: c_int) -> c_int;
    sendfile: fn(out: c_int, inp: c_int, off: *mut off_t, n: size_t) -> ssize_t;
    sendfile64: fn(out: c_int, inp: c_int, off: *mut off_t, n: size_t) -> ssize_t;
    poll: fn(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int;
    ppoll: fn(fds: *mut pollfd, n: nfds_t, ts: *const timespec, mask: *const sigset_t) -> c_int;
    select: fn(n: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, t: *mut timeval) -> c_int;
    pselect: fn(n: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, t: *const timespec, mask: *const sigset_t) -> c_int;
    epoll_ctl: fn(ep: c_int, op: c_int, fd: c_int, ev: *mut epoll_event) -> c_int;
    epoll_wait: fn(ep: c_int, evs: *mut epoll_event, max: c_int, timeout: c_int) -> c_int;
    epoll_pwait: fn(ep: c_int, evs: *mut epoll_event, max: c_int, timeout: c_int, mask: *const sigset_t) -> c_int;
    dup: fn(fd: c_int) -> c_int;
    dup2: fn(old: c_int, new: c_int) -> c_int;
    dup3: fn(old: c_int, new: c_int, flags: c_int) -> c_int;
    getaddrinfo: fn(node: *const c_char, service: *const c_char, hints: *const addrinfo, res: *mut *mut addrinfo) -> c_int;
    gethostbyname: fn(name: *const c_char) -> *mut hostent;
    gethostbyname2: fn(name: *const c_char, af: c_int) -> *mut hostent;
    getnameinfo: fn(addr: *const sockaddr, len: socklen_t, host: *mut c_char, hostlen: socklen_t, serv: *mut c_char, servlen: socklen_t, flags: c_int) -> c_int;
    ioctl: fn(fd: c_int, req: libc::c_ulong, arg: *mut c_void) -> c_int;
}
