//! The host's routes as the library asks about them, and a count of
//! netlink event batches that movers waiting for a route sleep on. Below
//! both the SIP thread (which bumps the count) and the mover.

use parking_lot::Mutex;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// The source address the kernel would use towards `dest`: asked with a
/// connected UDP socket, which sends nothing.
pub fn route_ip(dest: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match dest {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(any).ok()?;
    s.connect(dest).ok()?;
    Some(s.local_addr().ok()?.ip())
}

/// Counts batches of netlink events, for threads that wait for the
/// network to change (a mover while the host has no route) without
/// waiting for the coalesced notification.
static NET_EPOCH: Mutex<u64> = Mutex::new(0);
static NET_EPOCH_CV: parking_lot::Condvar = parking_lot::Condvar::new();

pub fn bump_net_epoch() {
    *NET_EPOCH.lock() += 1;
    NET_EPOCH_CV.notify_all();
}

/// The current count of netlink event batches.
pub fn net_epoch() -> u64 {
    *NET_EPOCH.lock()
}

/// Wait until netlink events arrive after `seen` (or `timeout`); returns
/// the count to wait on next.
pub fn wait_net_change(seen: u64, timeout: Duration) -> u64 {
    let mut e = NET_EPOCH.lock();
    if *e == seen {
        NET_EPOCH_CV.wait_for(&mut e, timeout);
    }
    *e
}
