//! `wisp-flow`: the probe program of the benchmark's mobility sections. One
//! TCP (or MPTCP) connection carrying paced, self-checking counter streams
//! (see `shim_tests::bench::flow`), with every pause between two arrivals
//! reported, so a move's stall is read off the receiver's clock.
//!
//! ```text
//! wisp-flow serve PORT [options]        listen on 0.0.0.0:PORT, one connection
//! wisp-flow connect HOST PORT [options] HOST by name (getaddrinfo) or address
//! options:
//!   --mptcp          an IPPROTO_MPTCP socket
//!   --every-us N     write one chunk every N µs (default 1000), on a fixed
//!                    schedule: what could not be written during a stall is
//!                    written after it
//!   --chunk BYTES    bytes per write, a multiple of 8 (default 1024)
//!   --dir both|up|down  who sends counters (up: the client); default both
//!   --gap-ms MS      report pauses between arrivals longer than MS (default 5)
//!   --trace FILE     write "EPOCH_S BYTES" for every arrival at the end
//!   --stop FILE      (client) end the run when FILE exists
//!   --rt PRIO        run SCHED_FIFO at PRIO (threads made later inherit it),
//!                    so that other load on the machine does not show as pauses
//!   --abort FILE     write the trace and result at once and exit 3 when FILE
//!                    exists (for a connection that died)
//! stdout:
//!   listening | connected
//!   start EPOCH_S                      the sender's schedule begins (chunk k
//!                                      is due at EPOCH_S + k * every)
//!   progress rx=BYTES tx=BYTES         every 50 ms
//!   gap END_EPOCH_S MS                 a pause that ended at END
//!   result sent=B received=B missing=B reordered=B duplicated=B stray=B
//!          reach=B marked=0|1 OK|FAIL|ABORTED
//! ```
//! The client ends the run by sending the end marker and half-closing; the
//! server, on the marker, does the same; each side reads to EOF.

use shim_tests::bench::flow::{wire, Checker, MARK};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const IPPROTO_MPTCP: i32 = 262;

struct Opts {
    serve: bool,
    host: String,
    port: u16,
    mptcp: bool,
    every: Duration,
    chunk: usize,
    dir: String,
    gap_ms: f64,
    trace: Option<PathBuf>,
    stop: Option<PathBuf>,
    abort: Option<PathBuf>,
    rt: Option<i32>,
}

fn usage() -> ! {
    eprintln!("usage: wisp-flow serve PORT | connect HOST PORT [--mptcp] [--every-us N] [--chunk B] [--dir both|up|down] [--gap-ms MS] [--trace F] [--stop F] [--abort F] [--rt PRIO]");
    std::process::exit(2)
}

fn parse() -> Opts {
    let mut a = std::env::args().skip(1);
    let role = a.next().unwrap_or_else(|| usage());
    let (serve, host) = match role.as_str() {
        "serve" => (true, String::new()),
        "connect" => (false, a.next().unwrap_or_else(|| usage())),
        _ => usage(),
    };
    let port = a
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| usage());
    let mut o = Opts {
        serve,
        host,
        port,
        mptcp: false,
        every: Duration::from_millis(1),
        chunk: 1024,
        dir: "both".into(),
        gap_ms: 5.0,
        trace: None,
        stop: None,
        abort: None,
        rt: None,
    };
    while let Some(k) = a.next() {
        let mut v = || a.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "--mptcp" => o.mptcp = true,
            "--every-us" => {
                o.every = Duration::from_micros(v().parse().unwrap_or_else(|_| usage()))
            }
            "--chunk" => o.chunk = v().parse().unwrap_or_else(|_| usage()),
            "--dir" => o.dir = v(),
            "--gap-ms" => o.gap_ms = v().parse().unwrap_or_else(|_| usage()),
            "--trace" => o.trace = Some(v().into()),
            "--stop" => o.stop = Some(v().into()),
            "--abort" => o.abort = Some(v().into()),
            "--rt" => o.rt = Some(v().parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    if o.chunk == 0 || o.chunk & 7 != 0 || !["both", "up", "down"].contains(&o.dir.as_str()) {
        usage();
    }
    o
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn die(what: &str, e: std::io::Error) -> ! {
    say(&format!("error {what}: {e}"));
    std::process::exit(1)
}

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn check(rc: i32, what: &str) {
    if rc < 0 {
        die(what, std::io::Error::last_os_error());
    }
}

fn sockaddr_in(a: std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A stream socket, MPTCP or TCP; the calls go through libc, so a
/// preloaded library sees them.
fn socket(mptcp: bool) -> i32 {
    let proto = if mptcp { IPPROTO_MPTCP } else { 0 };
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, proto) };
    check(fd, "socket");
    fd
}

fn open(o: &Opts) -> TcpStream {
    let fd = if o.serve {
        let ls = socket(o.mptcp);
        let one: libc::c_int = 1;
        // SAFETY: valid fd and option buffer.
        unsafe {
            libc::setsockopt(
                ls,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &one as *const _ as *const libc::c_void,
                4,
            )
        };
        let sa = sockaddr_in(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::UNSPECIFIED,
            o.port,
        ));
        // SAFETY: valid sockaddr_in.
        check(
            unsafe {
                libc::bind(
                    ls,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            },
            "bind",
        );
        // SAFETY: valid fd.
        check(unsafe { libc::listen(ls, 1) }, "listen");
        say("listening");
        // SAFETY: valid fd; the peer address is not wanted.
        let fd = unsafe { libc::accept(ls, std::ptr::null_mut(), std::ptr::null_mut()) };
        check(fd, "accept");
        fd
    } else {
        let addr = (o.host.as_str(), o.port)
            .to_socket_addrs()
            .unwrap_or_else(|e| die("resolve", e))
            .find_map(|a| match a {
                SocketAddr::V4(v4) => Some(v4),
                SocketAddr::V6(_) => None,
            })
            .unwrap_or_else(|| die("resolve", std::io::ErrorKind::NotFound.into()));
        let fd = socket(o.mptcp);
        let sa = sockaddr_in(addr);
        // SAFETY: valid sockaddr_in.
        check(
            unsafe {
                libc::connect(
                    fd,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            },
            "connect",
        );
        fd
    };
    // SAFETY: a connected socket we own.
    let s = unsafe { TcpStream::from_raw_fd(fd) };
    let _ = s.set_nodelay(true);
    say("connected");
    s
}

struct Shared {
    sent: AtomicU64,
    stop: AtomicBool,
    recv: Mutex<Recv>,
}

struct Recv {
    check: Checker,
    bytes: u64,
    trace: Vec<(f64, u64)>,
}

fn sender(s: &TcpStream, sh: &Shared, o: &Opts, counters: bool) {
    let per = (o.chunk / 8) as u64;
    let mut n = 0u64;
    let mut next = Instant::now();
    if counters {
        say(&format!("start {:.6}", epoch()));
    }
    let mut w = s;
    while counters && !sh.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += o.every;
        if let Err(e) = w.write_all(&wire(n, per)) {
            say(&format!("error send failed after {} bytes: {e}", n * 8));
            return;
        }
        n += per;
        sh.sent.store(n * 8, Ordering::Relaxed);
    }
    while !sh.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Err(e) = w.write_all(&MARK.to_be_bytes()) {
        say(&format!("error sending the end marker: {e}"));
    }
    let _ = s.shutdown(Shutdown::Write);
}

fn receiver(s: &TcpStream, sh: &Shared, o: &Opts) {
    let mut buf = vec![0u8; 1 << 16];
    let mut last: Option<Instant> = None;
    let tracing = o.trace.is_some();
    let mut r = s;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                say(&format!("error recv: {e}"));
                break;
            }
        };
        let now = Instant::now();
        let end = epoch();
        if let Some(l) = last {
            let ms = (now - l).as_secs_f64() * 1e3;
            if ms > o.gap_ms {
                say(&format!("gap {end:.6} {ms:.3}"));
            }
        }
        last = Some(now);
        let mut st = sh.recv.lock().unwrap();
        let was_marked = st.check.marked;
        st.check.feed(&buf[..n]);
        st.bytes += n as u64;
        if tracing {
            let b = st.bytes;
            st.trace.push((end, b));
        }
        let marked = st.check.marked && !was_marked;
        drop(st);
        if marked && o.serve {
            sh.stop.store(true, Ordering::Relaxed);
        }
    }
}

fn finish(sh: &Shared, o: &Opts, verdict: Option<&str>) -> bool {
    let st = sh.recv.lock().unwrap();
    if let Some(p) = &o.trace {
        let mut t = String::with_capacity(st.trace.len() * 24);
        for (e, b) in &st.trace {
            t.push_str(&format!("{e:.6} {b}\n"));
        }
        let _ = std::fs::write(p, t);
    }
    let c = &st.check;
    let ok =
        c.marked && c.missing() == 0 && c.reordered == 0 && c.duplicated == 0 && c.stray() == 0;
    let sent = sh.sent.load(Ordering::Relaxed);
    say(&format!("progress rx={} tx={sent}", c.counters * 8));
    say(&format!(
        "result sent={sent} received={} missing={} reordered={} duplicated={} stray={} reach={} marked={} {}",
        c.counters * 8,
        c.missing() * 8,
        c.reordered * 8,
        c.duplicated * 8,
        c.stray(),
        c.expected * 8,
        u8::from(c.marked),
        verdict.unwrap_or(if ok { "OK" } else { "FAIL" })
    ));
    ok
}

fn main() {
    let o = Arc::new(parse());
    if let Some(prio) = o.rt {
        let p = libc::sched_param {
            sched_priority: prio,
        };
        // SAFETY: a valid sched_param for this process.
        check(
            unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) },
            "sched_setscheduler",
        );
    }
    let s = Arc::new(open(&o));
    let sh = Arc::new(Shared {
        sent: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        recv: Mutex::new(Recv {
            check: Checker::new(),
            bytes: 0,
            trace: Vec::new(),
        }),
    });
    let sends = match o.dir.as_str() {
        "both" => true,
        "up" => !o.serve,
        _ => o.serve,
    };
    let tx = {
        let (s, sh, o) = (s.clone(), sh.clone(), o.clone());
        std::thread::spawn(move || sender(&s, &sh, &o, sends))
    };
    let rx = {
        let (s, sh, o) = (s.clone(), sh.clone(), o.clone());
        std::thread::spawn(move || receiver(&s, &sh, &o))
    };
    // Progress, the stop file and the abort file, until the receiver is done.
    while !rx.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        let rxb = sh.recv.lock().unwrap().check.counters * 8;
        say(&format!(
            "progress rx={rxb} tx={}",
            sh.sent.load(Ordering::Relaxed)
        ));
        if o.stop.as_ref().is_some_and(|p| p.exists()) {
            sh.stop.store(true, Ordering::Relaxed);
        }
        if o.abort.as_ref().is_some_and(|p| p.exists()) {
            finish(&sh, &o, Some("ABORTED"));
            std::process::exit(3);
        }
    }
    sh.stop.store(true, Ordering::Relaxed);
    let _ = tx.join();
    let ok = finish(&sh, &o, None);
    std::process::exit(if ok { 0 } else { 1 });
}
