//! Datagrams a wisp UDP socket could not send while its host was between
//! addresses (no route: ENETUNREACH and friends). They wait here, in
//! order, at most [`QUEUE`] per socket, and go out as soon as a route is
//! back (the next send on the socket, or the SIP thread's network-change
//! hook). Each is sent once: a datagram the kernel took is never queued,
//! one that waits is never also sent.

use crate::real;
use libc::c_int;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};

/// Datagrams held per socket. Past it the newest are dropped (and counted
/// in the log): UDP may lose, but must not grow without bound.
pub const QUEUE: usize = 64;

static HELD: Mutex<Option<HashMap<c_int, VecDeque<Vec<u8>>>>> = Mutex::new(None);

fn no_route(e: c_int) -> bool {
    matches!(
        e,
        libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EADDRNOTAVAIL | libc::ENETDOWN
    )
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Send what `fd` holds, in order; false if some are still waiting.
fn flush_fd(fd: c_int, q: &mut VecDeque<Vec<u8>>) -> bool {
    while let Some(d) = q.front() {
        // SAFETY: our own buffer.
        let n = unsafe { real::send(fd, d.as_ptr().cast(), d.len(), libc::MSG_DONTWAIT) };
        if n < 0 && (no_route(errno()) || errno() == libc::EAGAIN) {
            return false;
        }
        // Sent, or refused for good (too big, peer gone): either way done.
        q.pop_front();
    }
    true
}

/// send() on a wisp datagram socket.
pub fn send(fd: c_int, data: &[u8], flags: c_int) -> isize {
    let mut g = HELD.lock();
    let held = g.get_or_insert_with(HashMap::new);
    if let Some(q) = held.get_mut(&fd) {
        if !flush_fd(fd, q) {
            if q.len() < QUEUE {
                q.push_back(data.to_vec());
            } else {
                debug!("datagram queue of fd {fd} full ({QUEUE}): one dropped");
            }
            return data.len() as isize;
        }
        held.remove(&fd);
    }
    // SAFETY: the program's buffer.
    let n = unsafe { real::send(fd, data.as_ptr().cast(), data.len(), flags) };
    if n < 0 && no_route(errno()) {
        held.entry(fd).or_default().push_back(data.to_vec());
        return data.len() as isize;
    }
    n
}

/// The network changed: try every socket's held datagrams.
pub fn flush_all() {
    let mut g = HELD.lock();
    if let Some(held) = g.as_mut() {
        held.retain(|&fd, q| !flush_fd(fd, q));
    }
}

/// The socket is closed: its held datagrams go with it.
pub fn forget(fd: c_int) {
    if let Some(held) = HELD.lock().as_mut() {
        held.remove(&fd);
    }
}
