//! Which descriptors are wisp streams: one atomic byte per fd.
//!
//! Every hooked call asks this first, so the answer for an ordinary fd must
//! cost a bounds check and a relaxed load: no lock, no allocation, safe in a
//! signal handler or a vfork child. Descriptors past the table are never
//! managed (we refuse to take them over rather than slow everyone down).

use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

pub const MAX_FD: usize = 65536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    None = 0,
    /// A socket the program asked to connect to a placeholder address.
    Stream = 1,
    /// A listening socket of a process that answers for `WISP_NAME`.
    Listener = 2,
    /// A UDP socket whose peer is a wisp name.
    Datagram = 3,
    /// An epoll instance that watches a stream (it holds our wake eventfd).
    Epoll = 4,
}

static TABLE: [AtomicU8; MAX_FD] = [const { AtomicU8::new(0) }; MAX_FD];

#[inline]
pub fn kind(fd: i32) -> Kind {
    match TABLE.get(fd as usize).map(|k| k.load(Ordering::Acquire)) {
        Some(1) => Kind::Stream,
        Some(2) => Kind::Listener,
        Some(3) => Kind::Datagram,
        Some(4) => Kind::Epoll,
        _ => Kind::None,
    }
}

#[inline]
pub fn is_managed(fd: i32) -> bool {
    TABLE
        .get(fd as usize)
        .is_some_and(|k| k.load(Ordering::Acquire) != 0)
}

/// The process whose descriptors the table describes. A vfork child (and
/// posix_spawn's, and a `clone(CLONE_VM)` child) shares our memory but not
/// our descriptors: when it closes or dup2()s descriptors before exec,
/// as python's subprocess does with close_range, the table must not change,
/// or the parent would forget its streams. fork() children get their own
/// copy of memory and say so through the atfork handler.
static OWNER: AtomicI32 = AtomicI32::new(0);

extern "C" fn forked_child() {
    // SAFETY: getpid has no preconditions.
    OWNER.store(unsafe { libc::getpid() }, Ordering::Release);
}

/// Whether this is a process that only borrows the table's memory (a vfork
/// child): changes to descriptors here are not changes to ours. Costs a
/// getpid() only when the table holds something.
pub fn borrowed() -> bool {
    let owner = OWNER.load(Ordering::Acquire);
    // SAFETY: getpid has no preconditions.
    owner != 0 && owner != unsafe { libc::getpid() }
}

fn own() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        forked_child();
        // SAFETY: a plain function pointer; registered once.
        unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
    });
}

/// Returns false when `fd` is past the table.
pub fn set(fd: i32, kind: Kind) -> bool {
    own();
    match TABLE.get(fd as usize) {
        Some(slot) => {
            slot.store(kind as u8, Ordering::Release);
            true
        }
        None => false,
    }
}

pub fn clear(fd: i32) {
    if let Some(slot) = TABLE.get(fd as usize) {
        slot.store(0, Ordering::Release);
    }
}
