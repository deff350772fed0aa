//! Many netlink events in, few "the network changed" notifications out.
//!
//! Adding one IPv4 address makes the kernel announce the address and three
//! routes; a flapping link repeats that every few milliseconds. Each
//! notification may cost a re-REGISTER and a re-INVITE per stream, so they
//! are held back until the events pause for `settle`, and never longer than
//! `max_delay` after the first of them, so a link that never stops flapping
//! still gets one notification per `max_delay` and not one per event.
//!
//! The first change after a calm spell (no notification for [`CALM`]) is
//! different: it is what a move looks like, every millisecond of waiting is
//! stall, and a storm cannot start with one notification. It settles for
//! only [`FAST_SETTLE`]; the changes that follow it within the calm spell
//! get the full `settle`.
//!
//! Pure: time comes in as `now`; [`Coalescer::poll_timeout`] says when to
//! call [`Coalescer::handle_timeout`].

use super::parse::{IfAddr, Link, NetEvent, Snapshot};
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const DEFAULT_SETTLE: Duration = Duration::from_millis(30);
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(200);
/// The settle time of the first change after a calm spell: long enough for
/// the kernel's burst (an address and its routes come within microseconds).
pub const FAST_SETTLE: Duration = Duration::from_millis(2);
/// How long without a notification makes the next change a "first" one.
pub const CALM: Duration = Duration::from_secs(1);

/// What changed since the previous notification.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Usable addresses that are new, sorted.
    pub added: Vec<IpAddr>,
    /// Usable addresses that are gone (or stopped being usable), sorted.
    pub removed: Vec<IpAddr>,
    /// A main-table route came or went: a link that went down keeps its
    /// IPv4 address but loses its routes, so this alone can mean a move.
    pub routes_changed: bool,
    /// An interface went up or down, came or went. Nothing else announces
    /// a lost carrier, or the IPv4 routes flushed when a link goes down.
    pub links_changed: bool,
    /// Events were lost and the address set was read afresh; routes may
    /// have changed unseen.
    pub resynced: bool,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && !self.routes_changed
            && !self.links_changed
            && !self.resynced
    }
}

#[derive(Debug)]
pub struct Coalescer {
    settle: Duration,
    max_delay: Duration,
    /// Every address the kernel reported, usable or not (a tentative one
    /// will become usable without being removed first).
    entries: Vec<IfAddr>,
    /// The usable addresses of `entries`, sorted, once each.
    usable: Vec<IpAddr>,
    /// `usable` as of the last notification.
    reported: Vec<IpAddr>,
    links: Vec<Link>,
    pending: Option<Pending>,
    /// When the last notification went out.
    last_note: Option<Instant>,
    routes_changed: bool,
    links_changed: bool,
    resynced: bool,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    first: Instant,
    last: Instant,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer::new(DEFAULT_SETTLE, DEFAULT_MAX_DELAY)
    }
}

impl Coalescer {
    pub fn new(settle: Duration, max_delay: Duration) -> Coalescer {
        Coalescer {
            settle,
            max_delay,
            entries: Vec::new(),
            usable: Vec::new(),
            reported: Vec::new(),
            links: Vec::new(),
            pending: None,
            last_note: None,
            routes_changed: false,
            links_changed: false,
            resynced: false,
        }
    }

    /// Start from dumps. Not a change: whoever asks [`Self::addresses`]
    /// next sees these, and notifications report differences from them.
    pub fn seed(&mut self, snapshot: Snapshot) {
        self.entries = snapshot.addrs;
        self.links = snapshot.links;
        self.refresh();
        self.reported = self.usable.clone();
    }

    pub fn handle_event(&mut self, event: &NetEvent, now: Instant) {
        match event {
            NetEvent::AddrAdded(a) => match self.entries.iter_mut().find(|e| e.same_as(a)) {
                Some(e) => *e = *a,
                None => self.entries.push(*a),
            },
            NetEvent::AddrRemoved(a) => self.entries.retain(|e| !e.same_as(a)),
            NetEvent::RouteChanged { .. } => {
                self.routes_changed = true;
                self.touch(now);
                return;
            }
            NetEvent::LinkChanged(l) => {
                // A link first seen down (just created) changes nothing.
                let was_up = match self.links.iter_mut().find(|k| k.ifindex == l.ifindex) {
                    Some(k) => std::mem::replace(&mut k.up, l.up),
                    None => {
                        self.links.push(*l);
                        false
                    }
                };
                if was_up != l.up {
                    self.links_changed = true;
                    self.touch(now);
                }
                return;
            }
            NetEvent::LinkRemoved { ifindex } => {
                let gone = self.links.iter().position(|k| k.ifindex == *ifindex);
                if let Some(k) = gone.map(|i| self.links.swap_remove(i)) {
                    if k.up {
                        self.links_changed = true;
                        self.touch(now);
                    }
                }
                return;
            }
            NetEvent::Resync(all) => {
                self.entries = all.addrs.clone();
                self.links = all.links.clone();
                self.refresh();
                self.resynced = true;
                self.touch(now);
                return;
            }
        }
        // A repeated announcement (lifetimes refreshed by a router
        // advertisement, a deprecation) changes nothing a mover cares about
        // and must not delay a pending notification.
        if self.refresh() {
            self.touch(now);
        }
    }

    /// When the first event of the pending change arrived.
    pub fn pending_since(&self) -> Option<Instant> {
        self.pending.map(|p| p.first)
    }

    /// When [`Self::handle_timeout`] has something to say; None while
    /// nothing is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let p = self.pending?;
        let calm = self
            .last_note
            .is_none_or(|t| p.first.saturating_duration_since(t) >= CALM);
        let settle = if calm {
            FAST_SETTLE.min(self.settle)
        } else {
            self.settle
        };
        Some((p.last + settle).min(p.first + self.max_delay))
    }

    /// The notification, if one is due at `now`. None too when the changes
    /// cancelled out (an address that went and came back) with no route
    /// change: there is nothing to act on.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Change> {
        if now < self.poll_timeout()? {
            return None;
        }
        self.pending = None;
        self.last_note = Some(now);
        let change = Change {
            added: minus(&self.usable, &self.reported),
            removed: minus(&self.reported, &self.usable),
            routes_changed: std::mem::take(&mut self.routes_changed),
            links_changed: std::mem::take(&mut self.links_changed),
            resynced: std::mem::take(&mut self.resynced),
        };
        self.reported.clone_from(&self.usable);
        (!change.is_empty()).then_some(change)
    }

    /// The usable local addresses now (not as of the last notification),
    /// sorted.
    pub fn addresses(&self) -> &[IpAddr] {
        &self.usable
    }

    pub fn has(&self, addr: IpAddr) -> bool {
        self.usable.binary_search(&addr).is_ok()
    }

    fn touch(&mut self, now: Instant) {
        self.pending = Some(match self.pending {
            Some(p) => Pending {
                first: p.first,
                last: p.last.max(now),
            },
            None => Pending {
                first: now,
                last: now,
            },
        });
    }

    /// Recompute `usable`; true if it changed.
    fn refresh(&mut self) -> bool {
        let mut usable: Vec<IpAddr> = self
            .entries
            .iter()
            .filter(|e| e.flags.usable())
            .map(|e| e.addr)
            .collect();
        usable.sort_unstable();
        usable.dedup();
        let changed = usable != self.usable;
        self.usable = usable;
        changed
    }
}

/// Sorted `a` minus sorted `b`.
fn minus(a: &[IpAddr], b: &[IpAddr]) -> Vec<IpAddr> {
    a.iter()
        .filter(|x| b.binary_search(x).is_err())
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::parse::{AddrFlags, Route};
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ifaddr(ifindex: u32, addr: &str, flags: u32) -> IfAddr {
        IfAddr {
            ifindex,
            addr: addr.parse().unwrap(),
            prefix_len: if addr.contains(':') { 64 } else { 24 },
            flags: AddrFlags(flags),
        }
    }

    fn addrs(addrs: Vec<IfAddr>) -> Snapshot {
        Snapshot {
            addrs,
            links: Vec::new(),
        }
    }

    fn added(addr: &str) -> NetEvent {
        NetEvent::AddrAdded(ifaddr(2, addr, 0))
    }

    fn removed(addr: &str) -> NetEvent {
        NetEvent::AddrRemoved(ifaddr(2, addr, 0))
    }

    fn route() -> NetEvent {
        NetEvent::RouteChanged {
            removed: false,
            route: Route {
                dst: "10.77.0.0".parse().unwrap(),
                dst_len: 24,
                gateway: None,
                oif: Some(2),
                priority: None,
                prefsrc: None,
            },
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Walk the clock 1 ms at a time to `until`, firing timeouts the way a
    /// poll loop would; returns (when, change) for each notification.
    fn run_until(c: &mut Coalescer, now: &mut Instant, until: Instant) -> Vec<(Instant, Change)> {
        let mut out = Vec::new();
        while *now < until {
            *now += MS;
            if c.poll_timeout().is_some_and(|t| t <= *now) {
                out.extend(c.handle_timeout(*now).map(|ch| (*now, ch)));
            }
        }
        out
    }

    #[test]
    fn one_event_is_reported_after_settling() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        assert_eq!(c.poll_timeout(), None);
        c.handle_event(&added("10.77.0.1"), t0);
        assert!(c.has(ip("10.77.0.1")), "the set is current at once");
        // The first change after a calm spell settles fast.
        assert_eq!(c.poll_timeout(), Some(t0 + FAST_SETTLE));
        assert_eq!(c.handle_timeout(t0 + FAST_SETTLE - MS / 2), None);
        let change = c.handle_timeout(t0 + FAST_SETTLE).unwrap();
        assert_eq!(change.added, [ip("10.77.0.1")]);
        assert!(change.removed.is_empty() && !change.routes_changed && !change.resynced);
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.handle_timeout(t0 + 1000 * MS), None);
        // One soon after waits for the full settle time ...
        let t1 = t0 + 100 * MS;
        c.handle_event(&removed("10.77.0.1"), t1);
        assert_eq!(c.poll_timeout(), Some(t1 + 30 * MS));
        assert!(c.handle_timeout(t1 + 30 * MS).is_some());
        // ... and one after a calm spell is fast again.
        let t2 = t1 + 30 * MS + CALM;
        c.handle_event(&added("10.77.0.1"), t2);
        assert_eq!(c.poll_timeout(), Some(t2 + FAST_SETTLE));
    }

    #[test]
    fn a_burst_is_one_notification() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        let mut now = t0;
        let mut notes = Vec::new();
        for i in 0..100u32 {
            now = t0 + Duration::from_micros(u64::from(i) * 100);
            c.handle_event(&added(&format!("10.77.{}.{}", i / 50, i % 50 + 1)), now);
            c.handle_event(&route(), now);
            notes.extend(c.handle_timeout(now));
        }
        notes.extend(
            run_until(&mut c, &mut now, t0 + 500 * MS)
                .into_iter()
                .map(|n| n.1),
        );
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].added.len(), 100);
        assert!(notes[0].routes_changed);
        assert_eq!(c.addresses().len(), 100);
    }

    #[test]
    fn continuous_flapping_is_reported_at_most_every_max_delay() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        let mut now = t0;
        let mut notes = Vec::new();
        for step in 0..100u32 {
            let at = t0 + step * 10 * MS;
            notes.extend(run_until(&mut c, &mut now, at));
            if step % 2 == 0 {
                c.handle_event(&added("10.77.0.1"), now);
            } else {
                c.handle_event(&removed("10.77.0.1"), now);
            }
            c.handle_event(&route(), now);
        }
        notes.extend(run_until(&mut c, &mut now, t0 + 2000 * MS));
        let times: Vec<_> = notes.iter().map(|n| n.0).collect();
        assert!(
            times.windows(2).all(|w| w[1] - w[0] >= DEFAULT_MAX_DELAY),
            "{times:?}"
        );
        // 1 s of flapping: the first event fast, then one per max_delay,
        // then one after it settles.
        assert!(notes.len() <= 7, "{}", notes.len());
        assert_eq!(times.first(), Some(&(t0 + FAST_SETTLE)));
        assert!(times
            .last()
            .is_some_and(|&t| t <= t0 + 990 * MS + DEFAULT_SETTLE));
        assert_eq!(c.poll_timeout(), None);
        assert!(!c.has(ip("10.77.0.1")), "the last event removed it");
    }

    #[test]
    fn changes_that_cancel_out_say_nothing() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        c.seed(addrs(vec![ifaddr(2, "10.77.0.1", 0)]));
        c.handle_event(&removed("10.77.0.1"), t0);
        c.handle_event(&added("10.77.0.1"), t0 + MS);
        assert!(c.poll_timeout().is_some());
        assert_eq!(c.handle_timeout(t0 + 100 * MS), None);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn repeated_announcements_do_not_wake_anyone() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        c.seed(addrs(vec![ifaddr(2, "fd77::1", 0)]));
        c.handle_event(&added("fd77::1"), t0);
        let deprecated = ifaddr(2, "fd77::1", AddrFlags::DEPRECATED);
        c.handle_event(&NetEvent::AddrAdded(deprecated), t0);
        assert_eq!(c.poll_timeout(), None);
        assert!(c.has(ip("fd77::1")));
    }

    #[test]
    fn tentative_addresses_count_once_dad_is_done() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        let tentative = ifaddr(2, "fd77::2", AddrFlags::TENTATIVE);
        c.handle_event(&NetEvent::AddrAdded(tentative), t0);
        assert!(!c.has(ip("fd77::2")));
        assert_eq!(c.poll_timeout(), None, "nothing usable changed");
        c.handle_event(&added("fd77::2"), t0 + 1000 * MS);
        assert!(c.has(ip("fd77::2")));
        let change = c.handle_timeout(t0 + 1030 * MS).unwrap();
        assert_eq!(change.added, [ip("fd77::2")]);
        let failed = ifaddr(2, "fd77::2", AddrFlags::TENTATIVE | AddrFlags::DADFAILED);
        c.handle_event(&NetEvent::AddrAdded(failed), t0 + 2000 * MS);
        let change = c.handle_timeout(t0 + 2030 * MS).unwrap();
        assert_eq!(change.removed, [ip("fd77::2")]);
    }

    #[test]
    fn an_address_on_two_interfaces_stays_until_both_lose_it() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        c.seed(addrs(vec![
            ifaddr(2, "10.0.0.1", 0),
            ifaddr(3, "10.0.0.1", 0),
        ]));
        assert_eq!(c.addresses(), [ip("10.0.0.1")]);
        c.handle_event(&NetEvent::AddrRemoved(ifaddr(3, "10.0.0.1", 0)), t0);
        assert!(c.has(ip("10.0.0.1")));
        assert_eq!(c.poll_timeout(), None);
        c.handle_event(&NetEvent::AddrRemoved(ifaddr(2, "10.0.0.1", 0)), t0);
        assert!(!c.has(ip("10.0.0.1")));
    }

    #[test]
    fn resync_replaces_the_set_and_says_so() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        c.seed(addrs(vec![
            ifaddr(2, "10.0.0.1", 0),
            ifaddr(2, "fd77::1", 0),
        ]));
        let fresh = addrs(vec![ifaddr(2, "fd77::1", 0), ifaddr(4, "192.168.1.9", 0)]);
        c.handle_event(&NetEvent::Resync(fresh), t0);
        assert_eq!(c.addresses(), [ip("192.168.1.9"), ip("fd77::1")]);
        let change = c.handle_timeout(t0 + 30 * MS).unwrap();
        assert_eq!(change.added, [ip("192.168.1.9")]);
        assert_eq!(change.removed, [ip("10.0.0.1")]);
        assert!(change.resynced);
        // Even a resync that finds nothing new is reported: routes may
        // have changed while events were being lost.
        let same = addrs(c.entries.clone());
        c.handle_event(&NetEvent::Resync(same), t0 + 100 * MS);
        assert!(c
            .handle_timeout(t0 + 130 * MS)
            .is_some_and(|ch| ch.resynced));
    }

    #[test]
    fn ipv4_prefixes_are_distinct_addresses() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        let mut wide = ifaddr(2, "10.0.0.1", 0);
        wide.prefix_len = 16;
        c.seed(addrs(vec![ifaddr(2, "10.0.0.1", 0), wide]));
        c.handle_event(&NetEvent::AddrRemoved(wide), t0);
        assert!(c.has(ip("10.0.0.1")), "the /24 is still there");
    }

    #[test]
    fn links_count_when_they_go_up_or_down() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        let link = |ifindex, up| NetEvent::LinkChanged(Link { ifindex, up });
        c.seed(Snapshot {
            addrs: Vec::new(),
            links: vec![Link {
                ifindex: 2,
                up: true,
            }],
        });
        // Still up (an MTU change, say): nothing to tell.
        c.handle_event(&link(2, true), t0);
        // New and down: a link just created.
        c.handle_event(&link(3, false), t0);
        assert_eq!(c.poll_timeout(), None);
        c.handle_event(&link(2, false), t0);
        let change = c.handle_timeout(t0 + 30 * MS).unwrap();
        assert!(change.links_changed && change.added.is_empty() && !change.routes_changed);
        c.handle_event(&link(3, true), t0 + 100 * MS);
        assert!(c
            .handle_timeout(t0 + 130 * MS)
            .is_some_and(|ch| ch.links_changed));
        // Removing a link that was down changes nothing; one that was up does.
        c.handle_event(&NetEvent::LinkRemoved { ifindex: 2 }, t0 + 200 * MS);
        assert_eq!(c.poll_timeout(), None);
        c.handle_event(&NetEvent::LinkRemoved { ifindex: 3 }, t0 + 200 * MS);
        assert!(c
            .handle_timeout(t0 + 230 * MS)
            .is_some_and(|ch| ch.links_changed));
        assert!(c.links.is_empty());
    }
}
