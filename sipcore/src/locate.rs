//! Where to send SIP for a domain once the transport is chosen (RFC 3263
//! §4.2): with a port in the URI, the domain's A/AAAA addresses; without,
//! its `_sip._udp` or `_sip._tcp` SRV records from the system's nameservers,
//! each target's addresses from the system resolver (so /etc/hosts
//! applies), and when there are no SRV records the domain's own addresses
//! on 5060.
//!
//! Blocking, so behind the `io` feature and meant for a helper thread, not
//! the driver's loop. Not a general resolver: no NAPTR, no EDNS, no TCP
//! retry of a truncated answer (its records are used as far as they go),
//! no caching.

use crate::dns::{
    decode_response, encode_query, nameservers, order_srv, DnsError, RData, Response, TYPE_SRV,
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

/// What to find: the domain of a SIP URI, the transport chosen for it, and
/// the URI's port if it named one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lookup {
    /// Compared lowercase, without a trailing dot.
    pub domain: String,
    pub transport: Transport,
    pub port: Option<u16>,
}

/// Where to send SIP for `lookup`, best first; empty when nothing is found
/// or the domain's SRV says the service is not offered (target ".").
pub fn locate(lookup: &Lookup, servers: &[SocketAddr], timeout: Duration) -> Vec<Target> {
    let transport = lookup.transport;
    let domain = lookup.domain.as_str();
    let target = |addr| Target { transport, addr };
    if let Ok(ip) = domain.parse::<IpAddr>() {
        return vec![target(SocketAddr::new(ip, lookup.port.unwrap_or(5060)))];
    }
    let a_records = |port: u16| -> Vec<Target> {
        let addrs = (domain, port).to_socket_addrs();
        addrs.into_iter().flatten().map(target).collect()
    };
    // An explicit port means no SRV (RFC 3263 §4.2).
    if let Some(port) = lookup.port {
        return a_records(port);
    }
    let service = match transport {
        Transport::Udp => "_sip._udp",
        Transport::Tcp => "_sip._tcp",
    };
    let answers = query(servers, &format!("{service}.{domain}"), TYPE_SRV, timeout)
        .map(|r| r.answers)
        .unwrap_or_default();
    let has_srv = answers.iter().any(|r| matches!(r.data, RData::Srv(_)));
    if !has_srv {
        return a_records(5060);
    }
    let mut out = Vec::new();
    for srv in order_srv(&answers) {
        let addrs = (srv.target.as_str(), srv.port).to_socket_addrs();
        for t in addrs.into_iter().flatten().map(target) {
            if !out.contains(&t) {
                out.push(t);
            }
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
    jobs: mpsc::Sender<Lookup>,
    done: mpsc::Receiver<(Lookup, Vec<Target>)>,
    /// Answers ready without a lookup.
    ready: VecDeque<(Lookup, Vec<Target>)>,
    routes: HashMap<String, Vec<Target>>,
    /// Asked for and not yet answered: asked again, not looked up twice.
    pending: HashSet<Lookup>,
}

impl Resolver {
    /// `servers`: usually [`system_nameservers`]; `timeout` per query.
    pub fn spawn(
        waker: Waker,
        servers: Vec<SocketAddr>,
        timeout: Duration,
        routes: HashMap<String, Vec<Target>>,
    ) -> io::Result<Resolver> {
        let (jobs, job_rx) = mpsc::channel::<Lookup>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("wisp-dns".into())
            .spawn(move || {
                for lookup in job_rx {
                    let targets = locate(&lookup, &servers, timeout);
                    if done_tx.send((lookup, targets)).is_err() {
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

    /// Start finding `lookup`; the answer comes out of [`Resolver::poll`]
    /// with the lookup it answers (domain lowercased, trailing dot gone),
    /// an empty list when nothing was found.
    pub fn request(&mut self, mut lookup: Lookup) {
        lookup.domain = lookup.domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some(targets) = self.routes.get(&lookup.domain) {
            self.ready.push_back((lookup, targets.clone()));
        } else if self.pending.insert(lookup.clone()) && self.jobs.send(lookup.clone()).is_err() {
            // The helper is gone (it cannot panic short of a bug): answer
            // "nothing found" rather than leave the asker waiting.
            self.pending.remove(&lookup);
            self.ready.push_back((lookup, Vec::new()));
        }
    }

    pub fn poll(&mut self) -> Option<(Lookup, Vec<Target>)> {
        if let Some(r) = self.ready.pop_front() {
            return Some(r);
        }
        let (lookup, targets) = self.done.try_recv().ok()?;
        self.pending.remove(&lookup);
        Some((lookup, targets))
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

    fn lookup(domain: &str, transport: Transport, port: Option<u16>) -> Lookup {
        Lookup {
            domain: domain.into(),
            transport,
            port,
        }
    }

    /// An SRV answer (id 0) with (priority, port, target) records.
    fn srv_reply(records: &[(u16, u16, &str)]) -> Vec<u8> {
        let mut m = vec![0, 0, 0x81, 0x80, 0, 0, 0, records.len() as u8, 0, 0, 0, 0];
        for (priority, port, target) in records {
            crate::dns::encode_name("_sip._x.example.com", &mut m).unwrap();
            m.extend_from_slice(&[0, 33, 0, 1, 0, 0, 0, 60]);
            let mut rdata = Vec::new();
            rdata.extend_from_slice(&priority.to_be_bytes());
            rdata.extend_from_slice(&[0, 1]);
            rdata.extend_from_slice(&port.to_be_bytes());
            if *target == "." {
                rdata.push(0);
            } else {
                crate::dns::encode_name(target, &mut rdata).unwrap();
            }
            m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            m.extend_from_slice(&rdata);
        }
        m
    }

    /// A nameserver on loopback that answers every query with `answer`
    /// (its id patched in), `n` times.
    fn fake_server(
        answer: Vec<u8>,
        n: usize,
    ) -> (SocketAddr, std::thread::JoinHandle<Vec<String>>) {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut asked = Vec::new();
            for _ in 0..n {
                let mut buf = [0u8; 512];
                let (len, from) = server.recv_from(&mut buf).unwrap();
                // The question's name, for the test to check.
                let mut name = Vec::new();
                let mut i = 12;
                while i < len && buf[i] != 0 {
                    let l = buf[i] as usize;
                    name.push(String::from_utf8_lossy(&buf[i + 1..i + 1 + l]).to_string());
                    i += 1 + l;
                }
                asked.push(name.join("."));
                let mut reply = answer.clone();
                reply[..2].copy_from_slice(&buf[..2]);
                server.send_to(&reply, from).unwrap();
            }
            asked
        });
        (addr, t)
    }

    #[test]
    fn locate_follows_rfc3263_for_the_chosen_transport() {
        let none: [SocketAddr; 0] = [];
        let short = Duration::from_millis(10);
        // IP literal: as is, default port 5060.
        let t = locate(&lookup("192.0.2.1", Transport::Tcp, None), &none, short);
        assert_eq!(
            t,
            [Target {
                transport: Transport::Tcp,
                addr: "192.0.2.1:5060".parse().unwrap()
            }]
        );
        // No nameserver answers: A/AAAA on 5060 from the system resolver.
        let t = locate(&lookup("localhost", Transport::Udp, None), &none, short);
        assert!(!t.is_empty());
        assert!(t
            .iter()
            .all(|t| t.addr.port() == 5060 && t.addr.ip().is_loopback()));
        // SRV targets, in priority order, from the asked-for service only.
        let (server, asked) = fake_server(
            srv_reply(&[(20, 5062, "localhost"), (10, 5061, "localhost")]),
            1,
        );
        let t = locate(
            &lookup("example.com", Transport::Tcp, None),
            &[server],
            Duration::from_secs(5),
        );
        assert_eq!(asked.join().unwrap(), ["_sip._tcp.example.com"]);
        assert!(!t.is_empty());
        assert!(t
            .iter()
            .all(|t| t.transport == Transport::Tcp && t.addr.ip().is_loopback()));
        assert_eq!(t[0].addr.port(), 5061);
        assert_eq!(t.last().unwrap().addr.port(), 5062);
        // SRV records that do not resolve: nothing, and no fallback to the
        // domain's own addresses (those are for domains without SRV).
        let (server, _) = fake_server(srv_reply(&[(10, 5060, "nowhere.invalid")]), 1);
        let t = locate(
            &lookup("localhost", Transport::Udp, None),
            &[server],
            Duration::from_secs(5),
        );
        assert_eq!(t, []);
        // Target ".": the service is decidedly not offered.
        let (server, _) = fake_server(srv_reply(&[(0, 0, ".")]), 1);
        let t = locate(
            &lookup("localhost", Transport::Udp, None),
            &[server],
            Duration::from_secs(5),
        );
        assert_eq!(t, []);
        // An explicit port: no SRV query at all.
        let (server, asked) = fake_server(srv_answer(0), 0);
        let t = locate(
            &lookup("localhost", Transport::Tcp, Some(5070)),
            &[server],
            short,
        );
        assert_eq!(asked.join().unwrap(), Vec::<String>::new());
        assert!(!t.is_empty());
        assert!(t
            .iter()
            .all(|t| t.addr.port() == 5070 && t.transport == Transport::Tcp));
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
        r.request(lookup("LAB.test.", Transport::Udp, None));
        assert_eq!(
            r.poll(),
            Some((lookup("lab.test", Transport::Udp, None), vec![routed]))
        );
        r.request(lookup("localhost", Transport::Udp, None));
        r.request(lookup("localhost", Transport::Udp, None));
        // The answer wakes a step that would otherwise sleep for a minute.
        let t0 = std::time::Instant::now();
        let answer = loop {
            driver.step(&mut ep, Duration::from_secs(60)).unwrap();
            if let Some(a) = r.poll() {
                break a;
            }
            assert!(t0.elapsed() < Duration::from_secs(30));
        };
        assert_eq!(answer.0.domain, "localhost");
        assert!(answer.1.iter().all(|t| t.addr.ip().is_loopback()));
        // Asked twice while pending, looked up once.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(r.poll(), None);
    }
}
