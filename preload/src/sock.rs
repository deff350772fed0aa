//! Socket addresses and facts about a descriptor's socket, through libc
//! with no state of ours: the bottom layer the table and the engine share.

use crate::real;
use crate::resolve;
use libc::{c_int, sockaddr, sockaddr_storage, socklen_t};
use std::net::{IpAddr, SocketAddr};

pub fn set_errno(e: c_int) {
    // SAFETY: errno location is always valid for the calling thread.
    unsafe { *libc::__errno_location() = e };
}

/// Addresses compared across families: a dual-stack socket sees IPv4 peers
/// as `::ffff:a.b.c.d`.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        _ => a,
    }
}

pub fn sock_name(fd: c_int, peer: bool) -> Option<SocketAddr> {
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

pub fn family(fd: c_int) -> c_int {
    let mut ss: sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<sockaddr_storage>() as socklen_t;
    // SAFETY: valid buffer.
    unsafe { libc::getsockname(fd, &mut ss as *mut _ as *mut sockaddr, &mut len) };
    ss.ss_family as c_int
}

pub fn sock_type(fd: c_int) -> c_int {
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
pub fn to_sockaddr(addr: SocketAddr, fam: c_int) -> (sockaddr_storage, socklen_t) {
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
