//! Every libc function libwisp.so stands in front of, in one place.
//!
//! Each hook is thin: ask the fd table (or the name map) whether the call is
//! ours, and if not, call the real function at once. Anything that is ours
//! goes to the engine inside `guard`, which turns a panic into -1/errno and
//! a log line: a panic must never unwind into C, and never fall through to
//! the real call with a placeholder address.

use crate::real;
use crate::resolve;
use libc::{addrinfo, c_char, c_int, hostent, sockaddr, socklen_t};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `f`; on panic log it, set errno and return `fail`.
fn guard<T>(what: &str, fail: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            error!("internal error in {what}; the call fails with EIO");
            set_errno(libc::EIO);
            fail
        }
    }
}

pub fn set_errno(e: c_int) {
    // SAFETY: errno location is always valid for the calling thread.
    unsafe { *libc::__errno_location() = e };
}

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
        if let Some(index) = guard("getaddrinfo", None, || resolve::lookup(node)) {
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

#[no_mangle]
pub unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut hostent {
    match guard("gethostbyname", None, || resolve::lookup(name)) {
        Some(index) => static_hostent(index, libc::AF_INET),
        None => unsafe { real::gethostbyname(name) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn gethostbyname2(name: *const c_char, af: c_int) -> *mut hostent {
    match guard("gethostbyname2", None, || resolve::lookup(name)) {
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
    if let Some(index) = guard("gethostbyname_r", None, || resolve::lookup(name)) {
        let rc = unsafe { resolve::fill_hostent(index, af, ret, buf, buflen) };
        unsafe {
            *result = if rc == 0 { ret } else { std::ptr::null_mut() };
            if !h_errnop.is_null() {
                *h_errnop = if rc == 0 {
                    0
                } else {
                    -1 /* NETDB_INTERNAL */
                };
            }
        }
        return rc;
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
        let index = resolve::entry_of_ip(ip)?;
        Some((index, port))
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
            if !serv.is_null()
                && servlen > 0
                && !unsafe { resolve::copy_cstr(&port.to_string(), serv, servlen) }
            {
                return libc::EAI_OVERFLOW;
            }
            return 0;
        }
    }
    unsafe { real::getnameinfo(addr, len, host, hostlen, serv, servlen, flags) }
}
