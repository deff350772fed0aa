//! Answers for the resolver calls when the name is in the wisp map:
//! placeholder addresses laid out exactly as glibc lays out its own, so the
//! program's `freeaddrinfo` frees ours without knowing.

use crate::names::NameMap;
use crate::state::shared;
use libc::{addrinfo, c_char, c_int, hostent, sockaddr, sockaddr_in, sockaddr_in6, socklen_t};
use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ptr;

/// The map entry for a name, or None (and the real resolver takes over).
///
/// # Safety
/// `name` is null or a C string.
pub unsafe fn lookup(name: *const c_char) -> Option<usize> {
    if name.is_null() {
        return None;
    }
    // SAFETY: the caller passed a C string.
    let name = unsafe { CStr::from_ptr(name) }.to_str().ok()?;
    // Literals never need the map; skip loading it for them.
    if name.parse::<IpAddr>().is_ok() || name.is_empty() {
        return None;
    }
    let names = &shared().names;
    let index = names.lookup(name)?;
    note_used(index, name);
    Some(index)
}

/// The map name a program last resolved for each entry, so a stream can
/// show the name its program dialled (`wisp status`), not just the URI.
static USED: parking_lot::Mutex<Vec<(usize, String)>> = parking_lot::Mutex::new(Vec::new());

fn note_used(index: usize, name: &str) {
    let name = name.trim_end_matches('.');
    let mut used = USED.lock();
    match used.iter().position(|(i, _)| *i == index) {
        Some(at) if used[at].1.eq_ignore_ascii_case(name) => {}
        Some(at) => used[at].1 = name.to_ascii_lowercase(),
        // Bounded: one entry per map line a program resolves.
        None if used.len() < 4096 => used.push((index, name.to_ascii_lowercase())),
        None => {}
    }
}

/// The name the program last resolved to entry `index`, if any.
pub fn name_used(index: usize) -> Option<String> {
    USED.lock()
        .iter()
        .find(|(i, _)| *i == index)
        .map(|(_, n)| n.clone())
}

fn port_of(service: *const c_char, proto: c_int) -> Result<u16, c_int> {
    if service.is_null() {
        return Ok(0);
    }
    // SAFETY: C string from the caller.
    let s = unsafe { CStr::from_ptr(service) };
    if let Some(p) = s.to_str().ok().and_then(|s| s.parse::<u16>().ok()) {
        return Ok(p);
    }
    let proto: &[u8] = if proto == libc::IPPROTO_UDP {
        b"udp\0"
    } else {
        b"tcp\0"
    };
    let mut ent: libc::servent = unsafe { std::mem::zeroed() };
    let mut buf = [0 as c_char; 1024];
    let mut out: *mut libc::servent = ptr::null_mut();
    // SAFETY: all buffers are valid for the call.
    let rc = unsafe {
        getservbyname_r(
            s.as_ptr(),
            proto.as_ptr().cast(),
            &mut ent,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return Err(libc::EAI_SERVICE);
    }
    Ok(u16::from_be(ent.s_port as u16))
}

extern "C" {
    fn getservbyport_r(
        port: c_int,
        proto: *const c_char,
        ret: *mut libc::servent,
        buf: *mut c_char,
        buflen: libc::size_t,
        result: *mut *mut libc::servent,
    ) -> c_int;
    fn getservbyname_r(
        name: *const c_char,
        proto: *const c_char,
        ret: *mut libc::servent,
        buf: *mut c_char,
        buflen: libc::size_t,
        result: *mut *mut libc::servent,
    ) -> c_int;
}

/// getaddrinfo for a mapped name. Returns an EAI_* code.
///
/// # Safety
/// Pointers as for getaddrinfo(3).
pub unsafe fn getaddrinfo(
    index: usize,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    let (family, socktype, protocol, flags) = if hints.is_null() {
        (libc::AF_UNSPEC, 0, 0, 0)
    } else {
        let h = unsafe { &*hints };
        (h.ai_family, h.ai_socktype, h.ai_protocol, h.ai_flags)
    };
    let families: &[c_int] = match family {
        libc::AF_UNSPEC => &[libc::AF_INET, libc::AF_INET6],
        libc::AF_INET => &[libc::AF_INET],
        libc::AF_INET6 => &[libc::AF_INET6],
        _ => return libc::EAI_FAMILY,
    };
    let types: &[(c_int, c_int)] = match socktype {
        0 => &[
            (libc::SOCK_STREAM, libc::IPPROTO_TCP),
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP),
        ],
        libc::SOCK_STREAM => &[(libc::SOCK_STREAM, libc::IPPROTO_TCP)],
        libc::SOCK_DGRAM => &[(libc::SOCK_DGRAM, libc::IPPROTO_UDP)],
        _ => return libc::EAI_SOCKTYPE,
    };
    let port = match port_of(service, protocol) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let name = shared()
        .names
        .entry(index)
        .and_then(|e| e.names.first().cloned())
        .unwrap_or_default();
    let mut head: *mut addrinfo = ptr::null_mut();
    let mut tail: *mut *mut addrinfo = &mut head;
    for &fam in families {
        for &(st, proto) in types {
            if protocol != 0 && protocol != proto {
                continue;
            }
            let ip = match fam {
                libc::AF_INET => IpAddr::V4(NameMap::placeholder_v4(index)),
                _ => IpAddr::V6(NameMap::placeholder_v6(index)),
            };
            let node = unsafe { alloc_node(ip, port, st, proto) };
            if node.is_null() {
                unsafe { free_list(head) };
                return libc::EAI_MEMORY;
            }
            if head.is_null() && flags & libc::AI_CANONNAME != 0 {
                unsafe { (*node).ai_canonname = strdup(&name) };
            }
            unsafe {
                *tail = node;
                tail = &mut (*node).ai_next;
            }
        }
    }
    if head.is_null() {
        return libc::EAI_NONAME;
    }
    unsafe { *res = head };
    0
}

/// One addrinfo with its sockaddr in the same malloc block, as glibc does.
unsafe fn alloc_node(ip: IpAddr, port: u16, socktype: c_int, proto: c_int) -> *mut addrinfo {
    let salen = match ip {
        IpAddr::V4(_) => std::mem::size_of::<sockaddr_in>(),
        IpAddr::V6(_) => std::mem::size_of::<sockaddr_in6>(),
    };
    let size = std::mem::size_of::<addrinfo>() + salen;
    let p = unsafe { libc::calloc(1, size) } as *mut addrinfo;
    if p.is_null() {
        return p;
    }
    let sa = unsafe { (p as *mut u8).add(std::mem::size_of::<addrinfo>()) } as *mut sockaddr;
    unsafe {
        write_sockaddr(ip, port, sa);
        (*p).ai_family = if ip.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        (*p).ai_socktype = socktype;
        (*p).ai_protocol = proto;
        (*p).ai_addrlen = salen as socklen_t;
        (*p).ai_addr = sa;
    }
    p
}

/// Write `ip:port` into a sockaddr big enough for its family.
///
/// # Safety
/// `sa` must have room for a sockaddr_in6 (or sockaddr_in for IPv4).
pub unsafe fn write_sockaddr(ip: IpAddr, port: u16, sa: *mut sockaddr) {
    match ip {
        IpAddr::V4(v4) => {
            let sin = sa as *mut sockaddr_in;
            unsafe {
                (*sin).sin_family = libc::AF_INET as _;
                (*sin).sin_port = port.to_be();
                (*sin).sin_addr.s_addr = u32::from(v4).to_be();
            }
        }
        IpAddr::V6(v6) => {
            let sin6 = sa as *mut sockaddr_in6;
            unsafe {
                (*sin6).sin6_family = libc::AF_INET6 as _;
                (*sin6).sin6_port = port.to_be();
                (*sin6).sin6_addr.s6_addr = v6.octets();
            }
        }
    }
}

unsafe fn free_list(mut p: *mut addrinfo) {
    while !p.is_null() {
        let next = unsafe { (*p).ai_next };
        unsafe {
            libc::free((*p).ai_canonname.cast());
            libc::free(p.cast());
        }
        p = next;
    }
}

fn strdup(s: &str) -> *mut c_char {
    let p = unsafe { libc::malloc(s.len() + 1) } as *mut u8;
    if !p.is_null() {
        unsafe {
            ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
            *p.add(s.len()) = 0;
        }
    }
    p.cast()
}

/// Fill a hostent in the caller's buffer (gethostbyname*_r layout): name,
/// empty alias list, one address. Returns an errno value (ERANGE if small).
///
/// # Safety
/// Pointers as for gethostbyname_r(3).
pub unsafe fn fill_hostent(
    index: usize,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: usize,
) -> c_int {
    let name = shared()
        .names
        .entry(index)
        .and_then(|e| e.names.first().cloned())
        .unwrap_or_default();
    let addr: Vec<u8> = match af {
        libc::AF_INET6 => NameMap::placeholder_v6(index).octets().to_vec(),
        _ => NameMap::placeholder_v4(index).octets().to_vec(),
    };
    let ptr_size = std::mem::size_of::<*mut c_char>();
    // Layout: [addr_list: 2 ptrs][aliases: 1 ptr][addr bytes][name\0], aligned.
    let need = 3 * ptr_size + addr.len() + name.len() + 1 + ptr_size;
    if buflen < need {
        return libc::ERANGE;
    }
    let align = (buf as usize).wrapping_neg() % ptr_size;
    let base = unsafe { (buf as *mut u8).add(align) };
    let list = base as *mut *mut c_char;
    let addr_at = unsafe { base.add(3 * ptr_size) };
    let name_at = unsafe { addr_at.add(addr.len()) };
    unsafe {
        ptr::copy_nonoverlapping(addr.as_ptr(), addr_at, addr.len());
        ptr::copy_nonoverlapping(name.as_ptr(), name_at, name.len());
        *name_at.add(name.len()) = 0;
        *list = addr_at.cast();
        *list.add(1) = ptr::null_mut();
        *list.add(2) = ptr::null_mut();
        (*ret).h_name = name_at.cast();
        (*ret).h_aliases = list.add(2);
        (*ret).h_addrtype = if af == libc::AF_INET6 {
            libc::AF_INET6
        } else {
            libc::AF_INET
        };
        (*ret).h_length = addr.len() as c_int;
        (*ret).h_addr_list = list;
    }
    0
}

/// The IP of a sockaddr, if it is an Internet one.
///
/// # Safety
/// `sa` valid for `len` bytes.
pub unsafe fn sockaddr_ip(sa: *const sockaddr, len: socklen_t) -> Option<(IpAddr, u16)> {
    if sa.is_null() {
        return None;
    }
    match unsafe { (*sa).sa_family } as c_int {
        libc::AF_INET if len as usize >= std::mem::size_of::<sockaddr_in>() => {
            let sin = unsafe { &*(sa as *const sockaddr_in) };
            Some((
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<sockaddr_in6>() => {
            let sin6 = unsafe { &*(sa as *const sockaddr_in6) };
            Some((
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => None,
    }
}

/// The map entry a placeholder address names.
pub fn entry_of_ip(ip: IpAddr) -> Option<usize> {
    if !NameMap::is_placeholder(ip) {
        return None;
    }
    shared().names.entry_of(ip)
}

/// Copy `s` NUL-terminated into a caller buffer; false if it does not fit.
///
/// # Safety
/// `buf` valid for `len` bytes.
pub unsafe fn copy_cstr(s: &str, buf: *mut c_char, len: socklen_t) -> bool {
    if buf.is_null() || (len as usize) < s.len() + 1 {
        return false;
    }
    unsafe {
        ptr::copy_nonoverlapping(s.as_ptr(), buf as *mut u8, s.len());
        *buf.add(s.len()) = 0;
    }
    true
}

/// The service part getnameinfo() gives for `port`: its name from the
/// services database unless NI_NUMERICSERV (or it has none).
pub fn service_name(port: u16, flags: c_int) -> String {
    if flags & libc::NI_NUMERICSERV == 0 {
        let proto: &[u8] = if flags & libc::NI_DGRAM != 0 {
            b"udp\0"
        } else {
            b"tcp\0"
        };
        // SAFETY: an all-zero servent is a valid out-parameter.
        let mut ent: libc::servent = unsafe { std::mem::zeroed() };
        let mut buf = [0 as c_char; 1024];
        let mut out: *mut libc::servent = ptr::null_mut();
        // SAFETY: all buffers are valid for the call.
        let rc = unsafe {
            getservbyport_r(
                c_int::from(port.to_be()),
                proto.as_ptr().cast(),
                &mut ent,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        if rc == 0 && !out.is_null() && !ent.s_name.is_null() {
            // SAFETY: s_name points into buf, NUL-terminated.
            if let Ok(name) = unsafe { CStr::from_ptr(ent.s_name) }.to_str() {
                return name.to_string();
            }
        }
    }
    port.to_string()
}
