//! Where to send SIP for a domain (RFC 3263, its SRV and A/AAAA steps):
//! `_sip._udp` and `_sip._tcp` SRV records from the system's nameservers,
//! each target's addresses from the system resolver (so /etc/hosts
//! applies), and without SRV the domain's own addresses on 5060.
//!
//! Blocking, so behind the `io` feature and meant for a helper thread, not
//! the driver's loop. Not a general resolver: no NAPTR, no EDNS, no TCP
//! retry of a truncated answer (its records are used as far as they go),
//! no caching.

use crate::dns::{
    decode_response, encode_query, nameservers, order_srv, DnsError, Response, TYPE_SRV,
};
use crate::io::Waker;
use crate::transaction::Transport;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

/// The system's nameservers, or the local host's when none are configured
/// (what glibc assumes too).
pub fn system_nameservers() -> Vec<SocketAddr> {
    let servers = std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| nameservers(&t))
        .unwrap_or_default();
    if servers.is_empty() {
        vec![SocketAddr::from(([127, 0, 0, 1], 53))]
    } else {
        servers
    }
}

/// A query id nobody off-path can predict (the kernel's random source port
/// adds more): RandomState is seeded from the OS per process and per call.
fn query_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish() as u16
}

/// Ask each server in turn (twice round), waiting `timeout` for each.
pub fn query(
    servers: &[SocketAddr],
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> io::Result<Response> {
    let invalid = |e: DnsError| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no nameserver");
    for _round in 0..2 {
        for server in servers {
            let id = query_id();
            let packet = encode_query(id, name, qtype).map_err(invalid)?;
            match ask(*server, &packet, id, timeout) {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
    }
    Err(last)
}

fn ask(server: SocketAddr, packet: &[u8], id: u16, timeout: Duration) -> io::Result<Response> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    // Connected: the kernel drops datagrams from anyone but the server.
    socket.connect(server)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(packet)?;
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let n = socket.recv(&mut buf)?;
        // A stray or spoofed datagram with another id: keep waiting.
        if let Ok(r) = decode_response(&buf[..n]) {
            if r.id == id {
                return Ok(r);
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        socket.set_read_timeout(Some(left))?;
    }
}

/// One place to send SIP for a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// Where to send SIP for `domain`, best first: SRV for UDP then TCP, each
/// target's addresses from the system resolver; without SRV, the domain's
/// own addresses on 5060 over UDP. Empty when nothing is found.
pub fn locate(domain: &str, servers: &[SocketAddr], timeout: Duration) -> Vec<Target> {
    if let Ok(ip) = domain.parse::<IpAddr>() {
        return vec![Target {
            transport: Transport::Udp,
            addr: SocketAddr::new(ip, 5060),
        }];
    }
    let mut out = Vec::new();
    for (transport, service) in [(Transport::Udp, "_sip._udp"), (Transport::Tcp, "_sip._tcp")] {
        let Ok(resp) = query(servers, &format!("{service}.{domain}"), TYPE_SRV, timeout) else {
            continue;
        };
        for srv in order_srv(&resp.answers) {
            let addrs = (srv.target.as_str(), srv.port).to_socket_addrs();
            for addr in addrs.into_iter().flatten() {
                let t = Target { transport, addr };
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
    }
    if out.is_empty() {
        if let Ok(addrs) = (domain, 5060).to_socket_addrs() {
            out.extend(addrs.map(|addr| Target {
                transport: Transport::Udp,
                addr,
            }));
        }
    }
    out
}

/// Runs [`locate`] on a helper thread, so the driver's loop never waits on
/// DNS: the loop asks with [`Resolver::request`], goes on serving, and the
/// helper's [`Waker`] brings it back to [`Resolver::poll`] the answer.
/// Domains with a static route (a lab without DNS, a test) are answered
/// from the table without a lookup. Dropping it ends the thread.
pub struct Resolver {
    jobs: mpsc::Sender<String>,
    done: mpsc::Receiver<(String, Vec<Target>)>,
    /// Answers ready without a lookup, and those from the helper.
    ready: VecDeque<(String, Vec<Target>)>,
    routes: HashMap<String, Vec<Target>>,
    /// Domains asked for and not yet answered: asked again, they are not
    /// looked up twice.
    pending: HashSet<String>,
}

impl Resolver {
    /// `servers`: usually [`system_nameservers`]; `timeout` per query.
    pub fn spawn(
        waker: Waker,
        servers: Vec<SocketAddr>,
        timeout: Duration,
        routes: HashMap<String, Vec<Target>>,
    ) -> io::Result<Resolver> {
        let (jobs, job_rx) = mpsc::channel::<String>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("wisp-dns".into())
            .spawn(move || {
                for domain in job_rx {
                    let targets = locate(&domain, &servers, timeout);
                    if done_tx.send((domain, targets)).is_err() {
                        break;
                    }
                    waker.wake();
                }
            })?;
        Ok(Resolver {
            jobs,
            done,
            ready: VecDeque::new(),
            routes,
            pending: HashSet::new(),
        })
    }

    /// Start finding `domain` (compared lowercase); the answer comes out of
    /// [`Resolver::poll`], an empty list when nothing was found.
    pub fn request(&mut self, domain: &str) {
        let domain = domain.to_ascii_lowercase();
        if let Some(targets) = self.routes.get(&domain) {
            self.ready.push_back((domain, targets.clone()));
        } else if self.pending.insert(domain.clone()) && self.jobs.send(domain.clone()).is_err() {
            // The helper is gone (it cannot panic short of a bug): answer
            // "nothing found" rather than leave the asker waiting.
            self.pending.remove(&domain);
            self.ready.push_back((domain, Vec::new()));
        }
    }

    pub fn poll(&mut self) -> Option<(String, Vec<Target>)> {
        if let Some(r) = self.ready.pop_front() {
            return Some(r);
        }
        let (domain, targets) = self.done.try_recv().ok()?;
        self.pending.remove(&domain);
        Some((domain, targets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::tests::srv_answer;

    #[test]
    fn query_against_a_fake_server() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            assert_eq!(&buf[n - 4..n], &[0, 33, 0, 1]);
            // First a reply with the wrong id, which must be ignored.
            server
                .send_to(&srv_answer(id.wrapping_add(1)), from)
                .unwrap();
            server.send_to(&srv_answer(id), from).unwrap();
        });
        let r = query(
            &[addr],
            "_sip._udp.example.com",
            TYPE_SRV,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(order_srv(&r.answers).len(), 2);
        t.join().unwrap();
    }

    #[test]
    fn locate_ip_literal_and_fallback() {
        let none: [SocketAddr; 0] = [];
        let t = locate("192.0.2.1", &none, Duration::from_millis(10));
        assert_eq!(t[0].addr, "192.0.2.1:5060".parse().unwrap());
        // No nameserver answers: falls back to the system resolver.
        let t = locate("localhost", &none, Duration::from_millis(10));
        assert!(t
            .iter()
            .all(|t| t.addr.port() == 5060 && t.addr.ip().is_loopback()));
        assert!(!t.is_empty());
    }

    #[test]
    fn resolver_answers_routes_at_once_and_lookups_with_a_wake() {
        let (mut driver, mut ep) = (
            crate::io::Driver::bind("127.0.0.1:0".parse().unwrap()).unwrap(),
            crate::endpoint::Endpoint::default(),
        );
        let routed = Target {
            transport: Transport::Tcp,
            addr: "192.0.2.9:5070".parse().unwrap(),
        };
        let routes = HashMap::from([("lab.test".to_string(), vec![routed])]);
        let mut r = Resolver::spawn(
            driver.waker(),
            Vec::new(),
            Duration::from_millis(10),
            routes,
        )
        .unwrap();
        r.request("LAB.test");
        assert_eq!(r.poll(), Some(("lab.test".to_string(), vec![routed])));
        r.request("localhost");
        r.request("localhost");
        // The answer wakes a step that would otherwise sleep for a minute.
        let t0 = std::time::Instant::now();
        let answer = loop {
            driver.step(&mut ep, Duration::from_secs(60)).unwrap();
            if let Some(a) = r.poll() {
                break a;
            }
            assert!(t0.elapsed() < Duration::from_secs(30));
        };
        assert_eq!(answer.0, "localhost");
        assert!(answer.1.iter().all(|t| t.addr.ip().is_loopback()));
        // Asked twice while pending, looked up once.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(r.poll(), None);
    }
}
