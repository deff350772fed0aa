//! An on-path attacker for the resume attack tests
//! (`tests/resume_attacks.rs`), all in the test process, no capture tool.
//!
//! * [`Replay`]: a TCP connection the attacker opens from its own host (the
//!   lab's `spare` namespace) to the correspondent's SIP port *before* the
//!   move, plus a packet socket (`AF_PACKET`) in the router's namespace that
//!   watches the traffic forwarded to that port. The first TCP segment from
//!   any other host whose payload starts with `WISP` (a resumed connection's
//!   first bytes, whatever the handshake looks like behind its magic) is
//!   copied, at most [`COPY_MAX`] bytes of it, and sent verbatim on the
//!   pre-opened connection at once, followed by junk. Everything that comes
//!   back on that connection is counted: an attacker that is refused gets
//!   nothing, or one short handshake message.
//! * [`DropFirstInit`]: an nftables rule in the router that drops the first
//!   such segment (the genuine one; the attacker's own is let through), so
//!   the genuine host's TCP has to retransmit it. Removed on drop.
//!
//! Sockets keep the namespace they were made in, so the attacker's
//! connection is made on a thread that joined `spare` and the packet socket
//! on one that joined the router ([`Lab::in_node`]); both are then used from
//! ordinary threads of the test. Every wait is bounded, and dropping a
//! [`Replay`] stops and joins its threads.

use crate::lab::{Lab, Node};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The magic a resumed connection starts with (`sipcore::resume`).
pub const MAGIC: &[u8] = b"WISP";

/// How much of the genuine connection's first segment is replayed.
pub const COPY_MAX: usize = 200;

/// The junk the attacker sends right after the copied bytes: "JUNK"
/// repeated, which no counter stream of the tests contains.
pub fn junk(len: usize) -> Vec<u8> {
    b"JUNK".iter().copied().cycle().take(len).collect()
}

/// The genuine segment the attacker copied.
#[derive(Clone, Debug)]
pub struct Copied {
    /// The genuine connection's source (the moved host's new address).
    pub src: SocketAddrV4,
    /// The whole payload length of the segment seen.
    pub seg_len: usize,
    /// What was replayed: the segment's first bytes, at most [`COPY_MAX`].
    pub bytes: Vec<u8>,
    /// When the copy was seen, and when copy and junk were written.
    pub seen: Instant,
    pub replayed: Option<Instant>,
    /// A failed write of the copy or the junk (the target may have closed
    /// the connection at once: not an error of the test).
    pub write_error: Option<String>,
}

/// What came back on the attacker's connection.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub total: u64,
    /// The first bytes received (up to 512).
    pub head: Vec<u8>,
    /// How the connection ended, if it did: "EOF", an error.
    pub end: Option<String>,
}

#[derive(Default)]
struct State {
    copied: Option<Copied>,
    /// Segments to the target starting with the magic, from hosts other
    /// than the attacker (retransmissions included), seen on the router.
    genuine_segments: u64,
    received: Received,
    sniff_error: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    stop: AtomicBool,
}

/// A pre-opened connection and the on-path copier; see the module docs.
pub struct Replay {
    shared: Arc<Shared>,
    conn: TcpStream,
    local: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Replay {
    /// Opens the attacker's connection from `from` (its own host, never one
    /// of the real ones) to `target`, and arms the copier in the router.
    /// Returns once both are in place.
    pub fn start(lab: &Lab, from: Node, target: SocketAddrV4, junk_len: usize) -> Replay {
        assert!(
            !matches!(from, Node::Corr | Node::Mobile | Node::Router),
            "the attacker runs on a host of its own"
        );
        let conn = lab
            .in_node(from, move || {
                TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(5))
            })
            .unwrap_or_else(|e| panic!("attacker: cannot connect to {target} from {from:?}: {e}"));
        let local = conn.local_addr().expect("attacker's local address");
        let attacker_ip = match local {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(a) => panic!("attacker connected over IPv6 ({a})"),
        };
        let packets = lab
            .in_node(Node::Router, packet_socket)
            .unwrap_or_else(|e| panic!("attacker: packet socket in the router: {e}"));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        {
            let shared = shared.clone();
            let mut rx = conn.try_clone().expect("clone the attacker's socket");
            rx.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("read timeout");
            threads.push(
                std::thread::Builder::new()
                    .name("attacker-rx".into())
                    .spawn(move || read_all(&mut rx, &shared))
                    .expect("spawn"),
            );
        }
        {
            let shared = shared.clone();
            let mut tx = conn.try_clone().expect("clone the attacker's socket");
            tx.set_write_timeout(Some(Duration::from_secs(2)))
                .expect("write timeout");
            let junk = junk(junk_len);
            threads.push(
                std::thread::Builder::new()
                    .name("attacker-sniff".into())
                    .spawn(move || sniff(packets, target, attacker_ip, &mut tx, &junk, &shared))
                    .expect("spawn"),
            );
        }
        Replay {
            shared,
            conn,
            local,
            threads,
        }
    }

    /// The attacker's end of its connection.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Waits until the copy was replayed (or the copier failed); `None`
    /// when nothing was seen within `timeout`.
    pub fn wait_replayed(&self, timeout: Duration) -> Option<Copied> {
        let until = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        loop {
            if let Some(c) = &st.copied {
                if c.replayed.is_some() || c.write_error.is_some() {
                    return Some(c.clone());
                }
            }
            if st.sniff_error.is_some() {
                return None;
            }
            let now = Instant::now();
            if now >= until {
                return None;
            }
            st = self.shared.cond.wait_timeout(st, until - now).unwrap().0;
        }
    }

    /// What came back so far.
    pub fn received(&self) -> Received {
        self.shared.state.lock().unwrap().received.clone()
    }

    /// How many genuine segments starting with the magic crossed the router.
    pub fn genuine_segments(&self) -> u64 {
        self.shared.state.lock().unwrap().genuine_segments
    }

    /// A report of the attack, for failure messages.
    pub fn report(&self) -> String {
        let st = self.shared.state.lock().unwrap();
        let mut s = format!("attacker connection {} ->\n", self.local);
        match &st.copied {
            None => s += "   copied: nothing\n",
            Some(c) => {
                s += &format!(
                    "   copied from {}: {} of a {}-byte segment: {}\n   replayed {} after seeing it{}\n",
                    c.src,
                    c.bytes.len(),
                    c.seg_len,
                    hex(&c.bytes, 48),
                    c.replayed
                        .map(|r| format!("{:?}", r - c.seen))
                        .unwrap_or_else(|| "never".into()),
                    c.write_error
                        .as_ref()
                        .map(|e| format!(" (write failed: {e})"))
                        .unwrap_or_default()
                )
            }
        }
        s += &format!(
            "   genuine segments starting with WISP seen on the router: {}\n",
            st.genuine_segments
        );
        s += &format!(
            "   received back: {} bytes, first: {}\n   connection end: {}\n",
            st.received.total,
            hex(&st.received.head, 64),
            st.received.end.as_deref().unwrap_or("still open")
        );
        if let Some(e) = &st.sniff_error {
            s += &format!("   copier error: {e}\n");
        }
        s
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.conn.shutdown(Shutdown::Both);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `bytes` in hex, at most `max` of them.
pub fn hex(bytes: &[u8], max: usize) -> String {
    let mut s: String = bytes.iter().take(max).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > max {
        s += &format!("... ({} bytes)", bytes.len());
    }
    if s.is_empty() {
        s = "(none)".into();
    }
    s
}

/// An AF_PACKET socket for IPv4 on every interface of the calling thread's
/// namespace, link headers removed, with a 50 ms receive timeout.
fn packet_socket() -> std::io::Result<OwnedFd> {
    let proto = (libc::ETH_P_IP as u16).to_be() as libc::c_int;
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just made and own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    let big: libc::c_int = 8 << 20;
    // SAFETY: valid option values of the right sizes.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&big as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(fd)
}

/// A TCP segment of an IPv4 packet.
#[derive(Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: &'a [u8],
}

/// Parses an IPv4 packet carrying TCP; `None` for anything else. A GSO
/// packet larger than 64 KiB (total length 0) counts up to the buffer.
pub fn parse_tcp(ip: &[u8]) -> Option<Segment<'_>> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != libc::IPPROTO_TCP as u8 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let end = if total == 0 || total > ip.len() {
        ip.len()
    } else {
        total
    };
    // Only a first fragment (or an unfragmented packet) has the TCP header.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 || ihl < 20 || end < ihl + 20 {
        return None;
    }
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let tcp = &ip[ihl..end];
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 || doff > tcp.len() {
        return None;
    }
    Some(Segment {
        src: SocketAddrV4::new(src_ip, u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: SocketAddrV4::new(dst_ip, u16::from_be_bytes([tcp[2], tcp[3]])),
        payload: &tcp[doff..],
    })
}

fn sniff(
    packets: OwnedFd,
    target: SocketAddrV4,
    attacker: Ipv4Addr,
    conn: &mut TcpStream,
    junk: &[u8],
    shared: &Shared,
) {
    let mut buf = vec![0u8; 256 * 1024];
    while !shared.stop.load(Ordering::Acquire) {
        // SAFETY: zeroed sockaddr_ll is valid; our buffer and lengths.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        let n = unsafe {
            libc::recvfrom(
                packets.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                _ => {
                    shared.state.lock().unwrap().sniff_error = Some(format!("recvfrom: {e}"));
                    shared.cond.notify_all();
                    return;
                }
            }
        }
        // A forwarded packet shows up twice, coming in and going out.
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let Some(seg) = parse_tcp(&buf[..n as usize]) else {
            continue;
        };
        if seg.dst != target || *seg.src.ip() == attacker || !seg.payload.starts_with(MAGIC) {
            continue;
        }
        let first = {
            let mut st = shared.state.lock().unwrap();
            st.genuine_segments += 1;
            if st.copied.is_none() {
                st.copied = Some(Copied {
                    src: seg.src,
                    seg_len: seg.payload.len(),
                    bytes: seg.payload[..seg.payload.len().min(COPY_MAX)].to_vec(),
                    seen: Instant::now(),
                    replayed: None,
                    write_error: None,
                });
                true
            } else {
                false
            }
        };
        if !first {
            continue;
        }
        // Replay at once: the copy and the junk in one write.
        let mut out = seg.payload[..seg.payload.len().min(COPY_MAX)].to_vec();
        out.extend_from_slice(junk);
        let r = conn.write_all(&out);
        let mut st = shared.state.lock().unwrap();
        let c = st.copied.as_mut().expect("set above");
        match r {
            Ok(()) => c.replayed = Some(Instant::now()),
            Err(e) => c.write_error = Some(e.to_string()),
        }
        shared.cond.notify_all();
    }
}

fn read_all(conn: &mut TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    while !shared.stop.load(Ordering::Acquire) {
        match conn.read(&mut buf) {
            Ok(0) => {
                shared.state.lock().unwrap().received.end = Some("EOF".into());
                return;
            }
            Ok(n) => {
                let mut st = shared.state.lock().unwrap();
                let r = &mut st.received;
                r.total += n as u64;
                let room = 512usize.saturating_sub(r.head.len());
                r.head.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                shared.state.lock().unwrap().received.end = Some(e.to_string());
                return;
            }
        }
    }
}

/// The nftables table the drop rule lives in (router namespace).
const TABLE: &str = "wisp_attack";

/// Drops, in the router, the first TCP segment to `target` whose payload
/// starts with `WISP` and that does not come from `spared` (the attacker);
/// later ones pass. Removed when dropped.
pub struct DropFirstInit {
    lab_id: String,
    script: std::path::PathBuf,
}

impl DropFirstInit {
    /// Installs the rule; panics (saying what is missing) when nft cannot.
    pub fn install(lab: &Lab, target: SocketAddrV4, spared: Ipv4Addr, dir: &Path) -> DropFirstInit {
        let m = format!(
            "ip saddr != {spared} ip daddr {} tcp dport {} @ih,0,32 0x{}",
            target.ip(),
            target.port(),
            MAGIC.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let rules = format!(
            "table inet {TABLE} {{\n\
             \x20 set seen {{ type ipv4_addr; flags dynamic; }}\n\
             \x20 chain drop_init {{\n\
             \x20   type filter hook forward priority 0; policy accept;\n\
             \x20   {m} ip daddr @seen counter accept\n\
             \x20   {m} add @seen {{ ip daddr }} counter drop\n\
             \x20 }}\n\
             }}\n"
        );
        let file = dir.join("drop-first-init.nft");
        std::fs::write(&file, &rules).expect("write the nft rules");
        let guard = DropFirstInit {
            lab_id: lab.id.clone(),
            script: crate::lab::script(),
        };
        let out = lab
            .exec_cmd(Node::Router, ["nft", "-f"])
            .arg(&file)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => guard,
            Ok(o) => panic!(
                "nft -f in the router failed ({}): {}\nrules:\n{rules}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("cannot run nft in the router ({e}): run scripts/setup (nftables)"),
        }
    }

    /// How many segments the rule (accepted, dropped).
    pub fn counts(&self) -> (u64, u64) {
        let text = self.list();
        let packets = |verdict: &str| {
            text.lines()
                .find(|l| l.trim_end().ends_with(verdict) && l.contains("counter packets"))
                .and_then(|l| l.split("counter packets ").nth(1))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (packets(" accept"), packets(" drop"))
    }

    /// The table as nft lists it, for failure messages.
    pub fn list(&self) -> String {
        let out = Command::new(&self.script)
            .args([
                "exec",
                "--id",
                &self.lab_id,
                "router",
                "nft",
                "list",
                "table",
            ])
            .args(["inet", TABLE])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("(nft list: {e})"),
        }
    }
}

impl Drop for DropFirstInit {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .args([
                "exec",
                "--id",
                &self.lab_id,
                "router",
                "nft",
                "delete",
                "table",
            ])
            .args(["inet", TABLE])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(payload: &[u8], doff_words: u8) -> Vec<u8> {
        let doff = usize::from(doff_words) * 4;
        let total = 20 + doff + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 1, 3, 2]);
        p[16..20].copy_from_slice(&[10, 1, 1, 2]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5060u16.to_be_bytes());
        p[32] = doff_words << 4;
        p[20 + doff..].copy_from_slice(payload);
        p
    }

    #[test]
    fn tcp_segments_are_parsed() {
        for doff in [5u8, 8] {
            let p = packet(b"WISP\x02\x01rest", doff);
            let s = parse_tcp(&p).unwrap();
            assert_eq!(s.src, "10.1.3.2:40000".parse().unwrap());
            assert_eq!(s.dst, "10.1.1.2:5060".parse().unwrap());
            assert_eq!(s.payload, b"WISP\x02\x01rest");
        }
        let mut p = packet(b"x", 5);
        p[9] = 17;
        assert_eq!(parse_tcp(&p), None);
        assert_eq!(parse_tcp(&p[..10]), None);
    }

    #[test]
    fn junk_is_not_a_counter_stream() {
        let j = junk(4096);
        assert_eq!(j.len(), 4096);
        assert!(j.starts_with(b"JUNKJUNK"));
    }
}
