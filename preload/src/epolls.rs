//! The program's epoll instances that watch streams, and how a move keeps
//! them truthful.
//!
//! Two things a move does are invisible to the kernel's epoll:
//!
//! - dup3() puts a new socket under the descriptor, and epoll keys its
//!   entries by open file description, so the registration stays with the
//!   old socket. [`readd`] puts the program's registrations back on the new
//!   one (the kernel then reports whatever the new socket is ready for).
//! - Bytes drained from the old socket, or read on the new one during the
//!   handshake, wait in the library for the program. No socket says so, and
//!   a thread already asleep in epoll_wait() would sleep on (a
//!   request/response program waits there for the very reply the move
//!   drained: it would hang for good). So every epoll instance that watches
//!   a stream gets one eventfd of ours registered in it under [`TOKEN`];
//!   [`wake`] writes it after a move, the hook takes our entry out of what
//!   the kernel returned and reports the held bytes instead
//!   ([`pending_events`]).
//!
//! The instance's descriptor is marked `Kind::Epoll` in the descriptor
//! table, so epoll_wait() on an instance that never saw a stream costs one
//! load, and close() of the instance releases our eventfd.

use crate::fdtable::{self, Kind};
use crate::real;
use libc::{c_int, epoll_event};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// The data of our eventfd's entry in a program's epoll set: not a
/// canonical user-space address and far beyond any descriptor number, so
/// no program's own entry carries it in practice.
pub const TOKEN: u64 = 0xfff7_7769_7370_7761;

/// Our eventfd in one epoll instance, shared by every descriptor that
/// names the instance (dup); closed with the last of them.
struct Waker(c_int);

impl Drop for Waker {
    fn drop(&mut self) {
        // SAFETY: our own eventfd.
        unsafe { real::close(self.0) };
    }
}

impl Waker {
    fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { real::write(self.0, (&one as *const u64).cast(), 8) };
    }

    fn reset(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        unsafe { real::read(self.0, (&mut v as *mut u64).cast(), 8) };
    }
}

#[derive(Default)]
struct Table {
    /// (instance, stream descriptor, the program's event).
    regs: Vec<(c_int, c_int, epoll_event)>,
    /// Our eventfd per instance descriptor.
    wakers: HashMap<c_int, Arc<Waker>>,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// Held across a program's epoll_ctl() on a stream and across a swap's
/// dup3() + re-add, so that neither sees the other half done: a program
/// that MODs its registration between our dup3() and our re-add would get
/// ENOENT for a registration it never removed.
static CTL: Mutex<()> = Mutex::new(());

/// Hold off the program's epoll_ctl() on streams while descriptors are
/// swapped.
pub fn hold() -> parking_lot::MutexGuard<'static, ()> {
    CTL.lock()
}

/// The program's epoll_ctl() on a stream descriptor: made, and tracked,
/// under [`hold`].
///
/// # Safety
/// As for epoll_ctl(2).
pub unsafe fn ctl(ep: c_int, op: c_int, fd: c_int, ev: *mut epoll_event) -> c_int {
    let _g = hold();
    // SAFETY: the program's arguments.
    let rc = unsafe { real::epoll_ctl(ep, op, fd, ev) };
    if rc == 0 {
        // SAFETY: a non-null event is the program's, valid for this call.
        let event = (!ev.is_null()).then(|| unsafe { *ev });
        track(ep, op, fd, event);
    }
    rc
}

fn with<T>(f: impl FnOnce(&mut Table) -> T) -> T {
    f(TABLE.lock().get_or_insert_with(Table::default))
}

/// Our eventfd for instance `ep`, registered in it on first use.
fn waker_for(t: &mut Table, ep: c_int) -> Option<Arc<Waker>> {
    if let Some(w) = t.wakers.get(&ep) {
        return Some(w.clone());
    }
    // SAFETY: eventfd has no pointer arguments.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        return None;
    }
    let w = Arc::new(Waker(efd));
    let mut ev = epoll_event {
        events: libc::EPOLLIN as u32,
        u64: TOKEN,
    };
    // SAFETY: the program's epoll instance, our eventfd, a live event.
    if unsafe { real::epoll_ctl(ep, libc::EPOLL_CTL_ADD, efd, &mut ev) } != 0 {
        return None;
    }
    if !fdtable::set(ep, Kind::Epoll) {
        return None;
    }
    t.wakers.insert(ep, w.clone());
    Some(w)
}

/// epoll_ctl succeeded on a stream descriptor: remember the registration,
/// and make sure the instance can be woken.
pub fn track(ep: c_int, op: c_int, fd: c_int, ev: Option<epoll_event>) {
    with(|t| {
        t.regs.retain(|(e, f, _)| !(*e == ep && *f == fd));
        if op != libc::EPOLL_CTL_DEL {
            if let Some(ev) = ev {
                t.regs.push((ep, fd, ev));
                let _ = waker_for(t, ep);
            }
        }
    });
}

/// A descriptor is going away: a stream's registrations go with it; an
/// instance's descriptor takes our eventfd with it once no other
/// descriptor names the instance.
pub fn forget(fd: c_int) {
    let dropped = with(|t| {
        t.regs.retain(|(e, f, _)| *f != fd && *e != fd);
        t.wakers.remove(&fd)
    });
    drop(dropped);
}

/// `new` now names the instance `old` does (dup family).
pub fn duplicated(old: c_int, new: c_int) {
    with(|t| {
        if let Some(w) = t.wakers.get(&old).cloned() {
            t.wakers.insert(new, w);
            for i in 0..t.regs.len() {
                let (e, f, ev) = t.regs[i];
                if e == old {
                    t.regs.push((new, f, ev));
                }
            }
        }
    });
}

/// Before a swap: take the program's registrations of `fd` off the socket
/// it names now. epoll drops an entry only when the last reference to its
/// file goes; a copy of the old socket elsewhere (a child that inherited
/// it) would keep the entry, and the old socket's end would be reported
/// for the program's descriptor.
pub fn remove(fd: c_int) {
    let regs: Vec<_> = with(|t| t.regs.iter().filter(|r| r.1 == fd).copied().collect());
    for (ep, f, _) in regs {
        // SAFETY: the program's epoll instance; a DEL needs no event.
        unsafe { real::epoll_ctl(ep, libc::EPOLL_CTL_DEL, f, std::ptr::null_mut()) };
    }
}

/// After a swap: put the program's registrations of `fd` back, now on the
/// socket `fd` names.
pub fn readd(fd: c_int) {
    let regs: Vec<_> = with(|t| t.regs.iter().filter(|r| r.1 == fd).copied().collect());
    for (ep, f, mut ev) in regs {
        // SAFETY: the program's epoll instance and event.
        unsafe { real::epoll_ctl(ep, libc::EPOLL_CTL_ADD, f, &mut ev) };
    }
}

/// Wake every instance that watches one of `fds`: held bytes or an error
/// appeared that no socket reports.
pub fn wake(fds: &[c_int]) {
    let wakers: Vec<Arc<Waker>> = with(|t| {
        let eps: Vec<c_int> = t
            .regs
            .iter()
            .filter(|r| fds.contains(&r.1))
            .map(|r| r.0)
            .collect();
        eps.iter()
            .filter_map(|ep| t.wakers.get(ep).cloned())
            .collect()
    });
    for w in wakers {
        w.ring();
    }
}

/// Stream registrations of instance `ep` that the kernel cannot report:
/// readable through bytes held for the program, or failed for good.
pub fn pending_events(ep: c_int, ready: impl Fn(c_int) -> bool) -> Vec<epoll_event> {
    let regs: Vec<_> = with(|t| t.regs.iter().filter(|r| r.0 == ep).copied().collect());
    regs.into_iter()
        .filter(|(_, fd, ev)| ev.events & libc::EPOLLIN as u32 != 0 && ready(*fd))
        .map(|(_, _, ev)| epoll_event {
            events: libc::EPOLLIN as u32,
            u64: ev.u64,
        })
        .collect()
}

/// Take our entry out of what the kernel returned (`evs[..n]`), resetting
/// our eventfd if it was there. Returns the count left and whether ours
/// was among them.
///
/// # Safety
/// `evs` valid for `n` entries.
pub unsafe fn strip_ours(ep: c_int, evs: *mut epoll_event, n: usize) -> (usize, bool) {
    let mut kept = 0;
    let mut ours = false;
    for i in 0..n {
        // SAFETY: i < n, within the caller's array.
        let ev = unsafe { *evs.add(i) };
        if ev.u64 == TOKEN {
            ours = true;
            continue;
        }
        // SAFETY: kept <= i < n.
        unsafe { *evs.add(kept) = ev };
        kept += 1;
    }
    if ours {
        if let Some(w) = with(|t| t.wakers.get(&ep).cloned()) {
            w.reset();
        }
    }
    (kept, ours)
}
