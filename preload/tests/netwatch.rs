//! The netlink watcher against a real kernel. Each test makes its own
//! network namespace, so nothing outside it changes, and removes it again
//! even when the test fails. Needs root and iproute2.
//!
//! libwisp is a cdylib, which a test cannot link against, so the watcher's
//! directory is compiled into this test as well: it depends on nothing
//! else in the library for exactly this reason. (Its unit tests come along
//! and run here a second time; they take milliseconds.)

#[allow(dead_code, unused_imports)]
#[path = "../src/netwatch/mod.rs"]
mod netwatch;

use netwatch::{AddrFlags, Change, Coalescer, IfAddr, Link, NetEvent, NetlinkSocket, Watcher};
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A network namespace with a link `d0` (and its veth peer `d1`), both up
/// and without IPv6 link-local addresses, so the only addresses are the
/// ones a test adds. Deleted on drop.
struct Netns {
    name: String,
    ifindex: u32,
}

impl Netns {
    fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "wisp-nw-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let mut ns = Netns { name, ifindex: 0 };
        // A veth pair rather than a dummy: the lab needs veth anyway, some
        // kernels (this one) build no dummy driver, and a dummy is NOARP,
        // so IPv6 would skip duplicate address detection on it.
        ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
        for dev in ["d1", "d0"] {
            ns.ip(&["link", "set", dev, "addrgenmode", "none"]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        let out = ns.ip(&["-o", "link", "show", "d0"]);
        ns.ifindex = out.split(':').next().unwrap().trim().parse().unwrap();
        ns
    }

    /// `ip -n NAME args…`, which must succeed; its stdout.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Run `f` on a thread that has entered the namespace, so the sockets
    /// it opens belong there (they stay there when used from elsewhere).
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap();
                // SAFETY: a valid namespace fd; affects this thread only.
                let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Wait up to `ms` for `fd` to be readable.
fn readable(fd: i32, ms: u64) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms.min(i32::MAX as u64) as i32) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// Drive the watcher as the SIP thread's poll loop would, collecting the
/// changes it reports, until `done` says enough or `within` runs out.
fn pump(w: &mut Watcher, within: Duration, mut done: impl FnMut(&Watcher) -> bool) -> Vec<Change> {
    let deadline = Instant::now() + within;
    let mut changes = Vec::new();
    while !done(w) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wake = w.poll_timeout().map_or(deadline, |t| t.min(deadline));
        let ms = wake
            .saturating_duration_since(now)
            .as_micros()
            .div_ceil(1000) as u64;
        if readable(w.fd(), ms) {
            w.on_readable(Instant::now()).unwrap();
        }
        changes.extend(w.handle_timeout(Instant::now()));
    }
    changes
}

/// Read raw events until `want` matches one; all events read, in order.
fn read_until(s: &mut NetlinkSocket, mut want: impl FnMut(&NetEvent) -> bool) -> Vec<NetEvent> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if readable(s.fd(), 100) {
            let from = seen.len();
            s.read_events(&mut seen).unwrap();
            if seen[from..].iter().any(&mut want) {
                return seen;
            }
        }
    }
    panic!("event not seen; got {seen:#?}");
}

fn added(seen: &[NetEvent], addr: IpAddr) -> Option<&IfAddr> {
    seen.iter().find_map(|e| match e {
        NetEvent::AddrAdded(a) if a.addr == addr => Some(a),
        _ => None,
    })
}

fn removed(seen: &[NetEvent], addr: IpAddr) -> bool {
    seen.iter()
        .any(|e| matches!(e, NetEvent::AddrRemoved(a) if a.addr == addr))
}

#[test]
fn raw_events_for_both_families() {
    let ns = Netns::new();
    let (mut s, initial) = ns.enter(NetlinkSocket::open).unwrap();
    // Even loopback has no address until it is brought up.
    assert_eq!(initial.addrs, []);
    let d0 = Link {
        ifindex: ns.ifindex,
        up: true,
    };
    assert!(initial.links.contains(&d0), "{initial:?}");
    assert_eq!(initial.links.len(), 3, "lo, d0, d1: {initial:?}");
    let (v4, v6) = (ip("10.77.0.1"), ip("fd77::1"));

    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "d0"]);
    ns.ip(&["-6", "addr", "add", "fd77::1/64", "dev", "d0", "nodad"]);
    let mut seen = read_until(&mut s, |e| added(std::slice::from_ref(e), v6).is_some());
    let a4 = *added(&seen, v4).expect("IPv4 address announced");
    let a6 = *added(&seen, v6).unwrap();
    assert_eq!((a4.ifindex, a4.prefix_len), (ns.ifindex, 24));
    assert_eq!((a6.ifindex, a6.prefix_len), (ns.ifindex, 64));
    assert!(a4.flags.usable() && a6.flags.usable(), "{a4:?} {a6:?}");
    assert!(
        seen.iter().any(
            |e| matches!(e, NetEvent::RouteChanged { removed: false, route }
            if route.dst == ip("10.77.0.0") && route.dst_len == 24 && route.oif == Some(ns.ifindex))
        ),
        "the IPv4 prefix route: {seen:#?}"
    );

    ns.ip(&["addr", "del", "10.77.0.1/24", "dev", "d0"]);
    ns.ip(&["-6", "addr", "del", "fd77::1/64", "dev", "d0"]);
    seen = read_until(&mut s, |e| removed(std::slice::from_ref(e), v6));
    assert!(removed(&seen, v4), "{seen:#?}");
    assert_eq!(s.stats(), Default::default());
}

#[test]
fn tentative_until_dad_completes() {
    let ns = Netns::new();
    let (mut s, initial) = ns.enter(NetlinkSocket::open).unwrap();
    let mut c = Coalescer::default();
    c.seed(initial);
    let addr = ip("fd77::2");
    ns.ip(&["-6", "addr", "add", "fd77::2/64", "dev", "d0"]);

    let seen = read_until(
        &mut s,
        |e| matches!(e, NetEvent::AddrAdded(a) if a.addr == addr),
    );
    let first = added(&seen, addr).unwrap();
    assert!(first.flags.has(AddrFlags::TENTATIVE), "{first:?}");
    let now = Instant::now();
    seen.iter().for_each(|e| c.handle_event(e, now));
    assert!(!c.has(addr), "not usable while tentative");

    // The kernel announces the address again once DAD has passed (about
    // a second: one probe, RetransTimer 1 s).
    let seen = read_until(
        &mut s,
        |e| matches!(e, NetEvent::AddrAdded(a) if a.addr == addr && a.flags.usable()),
    );
    seen.iter().for_each(|e| c.handle_event(e, now));
    assert!(c.has(addr));
}

#[test]
fn watcher_reports_addresses_coming_and_going() {
    let ns = Netns::new();
    let mut w = ns.enter(Watcher::open).unwrap();
    assert!(w.addresses().is_empty());
    let (v4, v6) = (ip("10.77.0.1"), ip("fd77::1"));
    let within = Duration::from_secs(10);

    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "d0"]);
    ns.ip(&["-6", "addr", "add", "fd77::1/64", "dev", "d0", "nodad"]);
    let changes = pump(&mut w, within, |w| w.has(v4) && w.has(v6));
    assert_eq!(w.addresses(), [v4, v6]);
    // The set is current at once; the notification follows the quiet time.
    let mut changes = [
        changes,
        pump(&mut w, within, |w| w.poll_timeout().is_none()),
    ]
    .concat();
    let added: Vec<_> = changes.iter().flat_map(|c| c.added.clone()).collect();
    assert!(added.contains(&v4) && added.contains(&v6), "{changes:?}");

    ns.ip(&["addr", "del", "10.77.0.1/24", "dev", "d0"]);
    ns.ip(&["-6", "addr", "del", "fd77::1/64", "dev", "d0"]);
    pump(&mut w, within, |w| !w.has(v4) && !w.has(v6));
    changes = pump(&mut w, within, |w| w.poll_timeout().is_none());
    let removed: Vec<_> = changes.iter().flat_map(|c| c.removed.clone()).collect();
    assert!(
        removed.contains(&v4) && removed.contains(&v6),
        "{changes:?}"
    );
    assert!(w.addresses().is_empty());
}

#[test]
fn links_going_down_are_changes_even_when_nothing_else_says_so() {
    let ns = Netns::new();
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "d0"]);
    ns.ip(&["route", "add", "default", "via", "10.77.0.254"]);
    let mut w = ns.enter(Watcher::open).unwrap();
    let v4 = ip("10.77.0.1");
    assert_eq!(w.addresses(), [v4]);
    let within = Duration::from_secs(10);
    let settled = |w: &Watcher| w.poll_timeout().is_none();

    // The peer going down takes d0's carrier: no address or route event.
    ns.ip(&["link", "set", "d1", "down"]);
    let changes = pump(&mut w, within, |w| !settled(w));
    let changes = [changes, pump(&mut w, within, settled)].concat();
    assert!(changes.iter().any(|c| c.links_changed), "{changes:?}");

    // Set down, d0 keeps its IPv4 address; its routes (the default one
    // too) go without an RTM_DELROUTE.
    ns.ip(&["link", "set", "d1", "up"]);
    pump(&mut w, within, |w| !settled(w));
    pump(&mut w, within, settled);
    ns.ip(&["link", "set", "d0", "down"]);
    let changes = pump(&mut w, within, |w| !settled(w));
    let changes = [changes, pump(&mut w, within, settled)].concat();
    assert!(changes.iter().any(|c| c.links_changed), "{changes:?}");
    assert!(w.has(v4));
    let routes = ns.ip(&["route", "show"]);
    assert_eq!(routes.trim(), "", "the kernel flushed them");
}

#[test]
fn flapping_address_gives_few_notifications() {
    let ns = Netns::new();
    // A longer settle than the default so that the flapper being put off
    // the CPU for a moment (this machine is shared) does not count as the
    // link going quiet; the bound below holds only while events keep
    // coming closer together than `settle`.
    let (settle, max_delay) = (Duration::from_millis(100), Duration::from_millis(200));
    let mut w = ns
        .enter(|| Watcher::with_timing(settle, max_delay))
        .unwrap();
    let started = Instant::now();
    let mut flapper = Command::new("ip")
        .args(["-n", &ns.name, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = flapper.stdin.take().unwrap();
    for _ in 0..50 {
        writeln!(stdin, "addr add 10.77.1.1/24 dev d0").unwrap();
        writeln!(stdin, "addr del 10.77.1.1/24 dev d0").unwrap();
    }
    drop(stdin);
    let mut changes = pump(&mut w, Duration::from_secs(60), |_| {
        flapper.try_wait().unwrap().is_some()
    });
    let flapping = started.elapsed();
    assert!(flapper.wait().unwrap().success());
    changes.extend(pump(&mut w, Duration::from_secs(10), |w| {
        w.poll_timeout().is_none()
    }));
    // At most one per max_delay while it flaps, and one after it settles.
    let bound = (flapping.as_millis() / max_delay.as_millis()) as usize + 2;
    eprintln!(
        "50 flaps in {flapping:?}: {} notifications (bound {bound}), {:?}",
        changes.len(),
        w.stats()
    );
    assert!(!changes.is_empty());
    assert!(changes.len() <= bound, "{changes:#?}");
    assert!(!w.has(ip("10.77.1.1")));
}

#[test]
fn overrun_is_repaired_by_a_resync() {
    let ns = Netns::new();
    let mut w = ns.enter(Watcher::open).unwrap();
    // The smallest buffer the kernel allows holds a few messages.
    w.set_receive_buffer(0).unwrap();
    let mut batch = Command::new("ip")
        .args(["-n", &ns.name, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = batch.stdin.take().unwrap();
    for i in 1..=200 {
        writeln!(
            stdin,
            "addr add 10.78.{}.{}/32 dev d0",
            i / 100,
            i % 100 + 1
        )
        .unwrap();
    }
    drop(stdin);
    assert!(batch.wait().unwrap().success());

    let all = |w: &Watcher| w.addresses().len() == 200;
    let mut changes = pump(&mut w, Duration::from_secs(10), all);
    changes.extend(pump(&mut w, Duration::from_secs(10), |w| {
        w.poll_timeout().is_none()
    }));
    assert!(all(&w), "{} addresses", w.addresses().len());
    assert!(w.stats().overruns > 0, "{:?}", w.stats());
    assert!(changes.iter().any(|c| c.resynced), "{changes:?}");
    assert!(w.has(ip("10.78.1.100")));
}
