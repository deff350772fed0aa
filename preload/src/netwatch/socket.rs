//! The NETLINK_ROUTE sockets: the only part of netwatch that touches the OS.
//!
//! Two sockets, both made when the watcher is: one subscribed to link,
//! address and route changes, read when poll says so, and one that only
//! ever asks for dumps. Keeping dumps off the subscribed socket means a dump
//! never has to be told apart from notifications interleaved with it, and a
//! re-dump after an overrun never meets a dump still running there
//! (EBUSY). Both are made up front because a socket belongs to the network
//! namespace it was created in, not to the one its user happens to be in
//! later.

use super::parse::{self, Body, Dump, NetEvent, Snapshot, NLM_F_DUMP_INTR};
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// RTMGRP_LINK too, though only addresses and routes are what we are
/// after: see [`NetEvent::LinkChanged`] for what they alone would miss.
const GROUPS: u32 = (libc::RTMGRP_LINK
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV6_ROUTE) as u32;
/// The kernel never sends a netlink datagram larger than 32 KiB.
const RECV_BUF: usize = 64 * 1024;
/// Route churn on a busy host must not overrun us more than it has to;
/// the kernel caps this at net.core.rmem_max.
const WANTED_RCVBUF: libc::c_int = 1 << 20;
/// So a link that never stops flapping cannot keep the caller in
/// [`NetlinkSocket::read_events`]; the rest waits for the next poll.
const MAX_DATAGRAMS_PER_READ: usize = 1024;
/// A dump is produced as we read it, so only a broken kernel makes us wait.
const DUMP_TIMEOUT: Duration = Duration::from_secs(1);
/// A dump interrupted by a concurrent change is tried this often.
const DUMP_ATTEMPTS: u32 = 3;
/// More datagrams than any dump needs.
const MAX_DUMP_DATAGRAMS: usize = 1 << 16;

/// Counts of what was read and could not be used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages the parser refused.
    pub malformed: u64,
    /// Datagrams larger than our buffer (cannot happen with a sane kernel).
    pub truncated: u64,
    /// Datagrams not sent by the kernel: any local process may send to our
    /// port, and a forged RTM_DELADDR would make us move streams.
    pub foreign: u64,
    /// ENOBUFS: the kernel dropped notifications because we were slow.
    pub overruns: u64,
}

pub struct NetlinkSocket {
    monitor: OwnedFd,
    dumper: OwnedFd,
    dump_seq: u32,
    buf: Vec<u8>,
    resync_pending: bool,
    stats: Stats,
}

impl NetlinkSocket {
    /// Subscribe, then dump. A change that lands between the two is both in
    /// the dump and queued as a notification; applying it twice is
    /// harmless, while the other order could miss it.
    pub fn open() -> io::Result<(NetlinkSocket, Snapshot)> {
        let monitor = open_socket(libc::SOCK_NONBLOCK, GROUPS)?;
        set_int(&monitor, libc::SO_RCVBUF, WANTED_RCVBUF).ok();
        let dumper = open_socket(0, 0)?;
        let timeout = libc::timeval {
            tv_sec: DUMP_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        set_opt(&dumper, libc::SO_RCVTIMEO, &timeout)?;
        let mut s = NetlinkSocket {
            monitor,
            dumper,
            dump_seq: 0,
            buf: vec![0; RECV_BUF],
            resync_pending: false,
            stats: Stats::default(),
        };
        let snapshot = s.snapshot()?;
        Ok((s, snapshot))
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.monitor.as_raw_fd()
    }

    /// Drain what the kernel has queued, appending to `out`. After an
    /// overrun the last event is a [`NetEvent::Resync`]. On error `out`
    /// still holds what was read; if the re-dump was what failed,
    /// [`Self::resync_pending`] stays true and the next call tries again.
    pub fn read_events(&mut self, out: &mut Vec<NetEvent>) -> io::Result<()> {
        for _ in 0..MAX_DATAGRAMS_PER_READ {
            match recv(&self.monitor, &mut self.buf, 0) {
                Ok(Recv::Data(n)) => {
                    let d = parse::parse(&self.buf[..n]);
                    self.stats.malformed += u64::from(d.errors);
                    out.extend(d.messages.into_iter().filter_map(|m| match m.body {
                        Body::Event(e) => Some(e),
                        _ => None,
                    }));
                }
                Ok(Recv::Truncated) => {
                    self.stats.truncated += 1;
                    self.resync_pending = true;
                }
                Ok(Recv::Foreign) => self.stats.foreign += 1,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.stats.overruns += 1;
                    self.resync_pending = true;
                }
                Err(e) => return Err(e),
            }
        }
        if self.resync_pending {
            let all = self.snapshot()?;
            self.resync_pending = false;
            out.push(NetEvent::Resync(all));
        }
        Ok(())
    }

    /// Events were lost and the re-dump has not succeeded yet.
    pub fn resync_pending(&self) -> bool {
        self.resync_pending
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Ask for a receive buffer of `bytes` (the kernel doubles it and caps
    /// it at net.core.rmem_max). Tests shrink it to provoke an overrun.
    pub fn set_receive_buffer(&self, bytes: usize) -> io::Result<()> {
        let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        set_int(&self.monitor, libc::SO_RCVBUF, v)
    }

    /// Every link and address, from fresh dumps on the dump socket.
    pub fn snapshot(&mut self) -> io::Result<Snapshot> {
        let mut snapshot = Snapshot::default();
        for what in [Dump::Links, Dump::Addresses] {
            for event in self.dump(what)? {
                match event {
                    NetEvent::AddrAdded(a) => snapshot.addrs.push(a),
                    NetEvent::LinkChanged(l) => snapshot.links.push(l),
                    _ => {}
                }
            }
        }
        Ok(snapshot)
    }

    fn dump(&mut self, what: Dump) -> io::Result<Vec<NetEvent>> {
        for _ in 0..DUMP_ATTEMPTS {
            if let Some(events) = self.dump_once(what)? {
                return Ok(events);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "dump interrupted by changes on every attempt",
        ))
    }

    /// None: the dump was inconsistent (NLM_F_DUMP_INTR) or cut short.
    fn dump_once(&mut self, what: Dump) -> io::Result<Option<Vec<NetEvent>>> {
        self.drain_dumper();
        self.dump_seq = self.dump_seq.wrapping_add(1);
        let seq = self.dump_seq;
        let req = parse::dump_request(what, seq);
        // SAFETY: req is a valid buffer of req.len() bytes.
        let n = unsafe { libc::send(self.dumper.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut events = Vec::new();
        let mut interrupted = false;
        for _ in 0..MAX_DUMP_DATAGRAMS {
            let n = match recv(&self.dumper, &mut self.buf, 0) {
                Ok(Recv::Data(n)) => n,
                Ok(Recv::Foreign) => continue,
                Ok(Recv::Truncated) => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the kernel did not finish a dump",
                    ))
                }
                Err(e) => return Err(e),
            };
            let d = parse::parse(&self.buf[..n]);
            self.stats.malformed += u64::from(d.errors);
            for m in d.messages.into_iter().filter(|m| m.header.seq == seq) {
                interrupted |= m.header.flags & NLM_F_DUMP_INTR != 0;
                match m.body {
                    Body::Event(e) => events.push(e),
                    Body::Done { errno: 0 } => return Ok((!interrupted).then_some(events)),
                    Body::Done { errno } | Body::Error { errno } if errno != 0 => {
                        return Err(io::Error::from_raw_os_error(errno))
                    }
                    _ => {}
                }
            }
        }
        Ok(None)
    }

    /// Read away what an earlier, failed dump left behind. Each read makes
    /// the kernel produce the next part of a dump still running, so this
    /// also runs such a dump to its end and the next request is not
    /// refused with EBUSY.
    fn drain_dumper(&mut self) {
        for _ in 0..MAX_DUMP_DATAGRAMS {
            if recv(&self.dumper, &mut self.buf, libc::MSG_DONTWAIT).is_err() {
                return;
            }
        }
    }
}

enum Recv {
    Data(usize),
    Truncated,
    Foreign,
}

fn recv(fd: &OwnedFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<Recv> {
    loop {
        // SAFETY: sockaddr_nl is plain data; all zeroes is valid.
        let mut from: libc::sockaddr_nl = unsafe { zeroed() };
        let mut from_len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: buf and from are valid for the lengths given; MSG_TRUNC
        // makes the kernel report the full length without writing past buf.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags | libc::MSG_TRUNC,
                (&mut from as *mut libc::sockaddr_nl).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        return Ok(if n > buf.len() {
            Recv::Truncated
        } else if from.nl_pid != 0 {
            Recv::Foreign
        } else {
            Recv::Data(n)
        });
    }
}

fn open_socket(flags: libc::c_int, groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor we just opened and nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: as in recv.
    let mut addr: libc::sockaddr_nl = unsafe { zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    // SAFETY: addr is a valid sockaddr_nl of the length given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn set_int(fd: &OwnedFd, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    set_opt(fd, opt, &v)
}

fn set_opt<T>(fd: &OwnedFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: v points to a T of the length given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
