//! Learning that the host's addresses, routes or links changed, so the SIP
//! thread can re-REGISTER and move its streams (DESIGN.md §5).
//!
//! - [`parse`]: rtnetlink datagrams → [`NetEvent`]s (pure).
//! - [`coalesce`]: events → at most one [`Change`] per quiet period, and
//!   the current address set (pure, time passed in).
//! - [`socket`]: the NETLINK_ROUTE sockets (the only I/O).
//!
//! [`Watcher`] puts them together for a poll loop: poll [`Watcher::fd`]
//! for reading with [`Watcher::poll_timeout`] as the deadline, then call
//! [`Watcher::on_readable`] and/or [`Watcher::handle_timeout`].
//!
//! Nothing here uses the rest of the library (no logging, no state), so an
//! integration test can compile this directory on its own.

pub mod coalesce;
pub mod parse;
pub mod socket;

pub use coalesce::{Change, Coalescer, DEFAULT_MAX_DELAY, DEFAULT_SETTLE};
pub use parse::{AddrFlags, IfAddr, Link, NetEvent, Route, Snapshot};
pub use socket::{NetlinkSocket, Stats};

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// How long to wait before retrying a re-dump that failed: events were
/// lost, so the set is wrong until one succeeds, but a kernel that refused
/// just now will not do better at once.
const RESYNC_RETRY: Duration = Duration::from_millis(250);

pub struct Watcher {
    socket: NetlinkSocket,
    coalescer: Coalescer,
    events: Vec<NetEvent>,
    retry_at: Option<Instant>,
}

impl Watcher {
    /// Subscribe and read the current addresses, with the default timing.
    /// Opens its sockets in the calling thread's network namespace.
    pub fn open() -> io::Result<Watcher> {
        Watcher::with_timing(DEFAULT_SETTLE, DEFAULT_MAX_DELAY)
    }

    /// As [`Self::open`], waiting for `settle` of quiet but never more
    /// than `max_delay` before reporting a change.
    pub fn with_timing(settle: Duration, max_delay: Duration) -> io::Result<Watcher> {
        let (socket, snapshot) = NetlinkSocket::open()?;
        let mut coalescer = Coalescer::new(settle, max_delay);
        coalescer.seed(snapshot);
        Ok(Watcher {
            socket,
            coalescer,
            events: Vec::new(),
            retry_at: None,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.socket.fd()
    }

    /// When to call [`Self::handle_timeout`] if the fd stays quiet.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.coalescer.poll_timeout(), self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Read and apply what the kernel sent. The events read are applied
    /// even when this fails; a failed re-dump is retried by
    /// [`Self::handle_timeout`].
    pub fn on_readable(&mut self, now: Instant) -> io::Result<()> {
        let result = self.socket.read_events(&mut self.events);
        for e in self.events.drain(..) {
            self.coalescer.handle_event(&e, now);
        }
        self.retry_at = self.socket.resync_pending().then_some(now + RESYNC_RETRY);
        result
    }

    /// When the first event of the change not yet reported arrived.
    pub fn pending_since(&self) -> Option<Instant> {
        self.coalescer.pending_since()
    }

    /// The change to act on, if one is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Change> {
        if self.retry_at.is_some_and(|t| t <= now) {
            // Failure leaves the retry armed; nothing more to do here.
            self.on_readable(now).ok();
        }
        self.coalescer.handle_timeout(now)
    }

    /// The usable local addresses now, sorted.
    pub fn addresses(&self) -> &[IpAddr] {
        self.coalescer.addresses()
    }

    pub fn has(&self, addr: IpAddr) -> bool {
        self.coalescer.has(addr)
    }

    pub fn stats(&self) -> Stats {
        self.socket.stats()
    }

    /// See [`NetlinkSocket::set_receive_buffer`].
    pub fn set_receive_buffer(&self, bytes: usize) -> io::Result<()> {
        self.socket.set_receive_buffer(bytes)
    }
}
