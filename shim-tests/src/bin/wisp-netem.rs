//! `wisp-netem`: the lab's link emulator. It bridges two network interfaces
//! frame by frame and adds a one-way delay, random loss and optionally a
//! bottleneck rate, each way. `scripts/lab up --rtt MS` splices one into every
//! host's link (see there); the kernel the lab runs on has no `netem` qdisc
//! (and no IPIP), so the delay is done here, in userspace.
//!
//! ```text
//! wisp-netem [--delay MS] [--loss PCT] [--rate-mbit N] [--queue-bytes N] [--seed N] IF1 IF2
//! ```
//!
//! How, and why:
//!
//! * **AF_PACKET raw sockets** (`SOCK_RAW`, `ETH_P_ALL`), one bound to each
//!   interface: every frame the interface receives is read whole (Ethernet
//!   header included) and written out of the other one unchanged. The
//!   interfaces carry no addresses; `scripts/lab` turns IPv6 and ARP off on
//!   them so that the kernel sends nothing of its own out of them. The socket
//!   is created with protocol 0 and only then bound with `ETH_P_ALL` to its
//!   interface, so it never sees another interface's frames.
//! * **`PACKET_VNET_HDR`** on both sockets: each frame comes with a
//!   `virtio_net_hdr` and goes out with the same one. veth has TSO and
//!   checksum offload on, so TCP hands it 64 KiB GSO super-frames whose
//!   checksum is left for "the hardware" (CHECKSUM_PARTIAL). Without the
//!   header those frames would be read without their GSO metadata and be
//!   too big to send back (the kernel refuses a non-GSO frame above the
//!   MTU), and the checksums would be wrong on re-injection. With it the
//!   kernel rebuilds the super-frame, offloads intact, so the relay costs one
//!   copy per super-frame rather than per segment. (No offload has to be
//!   turned off, and this machine has no `ethtool` anyway.)
//! * **`PACKET_IGNORE_OUTGOING`**: a packet socket also sees the frames that
//!   leave its interface, i.e. the relay's own transmissions; this option
//!   (Linux 4.20) hides them. `sll_pkttype == PACKET_OUTGOING` is checked as
//!   well, in case the option is missing.
//! * **One thread per direction**: each one reads its interface, asks the
//!   [`LinkModel`] (in `shim_tests::netem`, unit-tested without sockets)
//!   whether and when the frame goes, keeps it in a FIFO, and sleeps in
//!   `ppoll` until the next frame is due or another arrives. Two threads so
//!   that a bulk transfer one way and its ACKs the other way use both cores;
//!   each thread sets its timer slack to 1 ns so the wake-ups are on time.
//! * Frames are stamped when the relay reads them (CLOCK_MONOTONIC), not when
//!   the kernel received them, so the relay's own scheduling latency adds to
//!   the delay; BENCHMARKS.md ("Lab link") measures it at 0 ms delay.
//! * **Buffer**: a bounded number of bytes per direction (drop-tail); see
//!   [`shim_tests::netem::default_queue_bytes`] for the default.
//! * **Loss**: one seeded PRNG draw per frame. A GSO super-frame is one frame
//!   here (losing it loses all its segments), which is why `scripts/lab`
//!   caps GSO at one segment on lossy labs.
//! * **Signals**: SIGTERM, SIGINT and SIGHUP are blocked in every thread and
//!   taken by `sigwait` in the main thread, which wakes the workers through
//!   an eventfd, joins them, prints one line of counters per direction and
//!   exits 0. Frames still held are dropped.
//!
//! It logs one line to stderr once both sockets are bound (`scripts/lab`
//! waits for it), and one per direction at exit. Needs CAP_NET_RAW (root).

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use shim_tests::netem::{default_queue_bytes, wire_len, LinkConfig, LinkModel, Verdict, VnetHdr};

const USAGE: &str = "\
Usage: wisp-netem [OPTIONS] IF1 IF2

Bridges every frame between the two interfaces, both ways, adding:
  --delay MS         one-way delay, each way (default 0; decimals allowed)
  --loss PCT         loss probability per frame, each way, in percent (default 0)
  --rate-mbit N      bottleneck rate, each way, in Mbit/s (default: none)
  --queue-bytes N    bytes held at most per direction, drop-tail beyond
                     (default: 64 MiB; with --rate-mbit, what the link carries
                     in the delay plus 100 ms, at least 256 KiB)
  --seed N           loss PRNG seed (default 1; IF2->IF1 uses a derived one)
Stops on SIGTERM/SIGINT. Needs CAP_NET_RAW.";

/// Room for the vnet header and a 64 KiB GSO super-frame, with margin. A
/// frame that does not fit is counted (`too_big`) and dropped.
const BUF_LEN: usize = 256 << 10;
/// Frames read in a row before the loop looks at the clock and the stop
/// signal again.
const BATCH: usize = 64;
/// Receive buffer of each socket: bursts of super-frames while a thread is
/// not scheduled must not overflow it.
const RCVBUF: libc::c_int = 32 << 20;

const ETH_P_ALL: u16 = 0x0003;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_OUTGOING: u8 = 4;

#[derive(Debug, PartialEq)]
struct Args {
    ifs: [String; 2],
    delay: Duration,
    /// 0.0 to 1.0
    loss: f64,
    rate_bps: Option<u64>,
    queue_bytes: Option<usize>,
    seed: u64,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    fn num(opt: &str, v: Option<String>) -> Result<f64, String> {
        let v = v.ok_or_else(|| format!("{opt} needs a value"))?;
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
            _ => Err(format!("{opt}: not a non-negative number: {v:?}")),
        }
    }
    let mut ifs = Vec::new();
    let mut delay = Duration::ZERO;
    let mut loss = 0.0;
    let mut rate_bps = None;
    let mut queue_bytes = None;
    let mut seed = 1;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--delay" => delay = Duration::from_secs_f64(num(&a, it.next())? / 1000.0),
            "--loss" => {
                loss = num(&a, it.next())?;
                if loss > 100.0 {
                    return Err(format!("--loss: {loss} is over 100 %"));
                }
                loss /= 100.0;
            }
            "--rate-mbit" => {
                let r = num(&a, it.next())?;
                if r == 0.0 {
                    return Err("--rate-mbit must be above 0".into());
                }
                rate_bps = Some((r * 1e6).round() as u64);
            }
            "--queue-bytes" => {
                let v = it.next().ok_or("--queue-bytes needs a value")?;
                queue_bytes = Some(v.parse().map_err(|_| format!("--queue-bytes: {v:?}"))?);
            }
            "--seed" => {
                let v = it.next().ok_or("--seed needs a value")?;
                seed = v.parse().map_err(|_| format!("--seed: {v:?}"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s:?}")),
            _ => ifs.push(a),
        }
    }
    let [a, b]: [String; 2] = ifs
        .try_into()
        .map_err(|_| "needs exactly two interfaces".to_string())?;
    if a == b {
        return Err("the two interfaces must differ".into());
    }
    Ok(Args {
        ifs: [a, b],
        delay,
        loss,
        rate_bps,
        queue_bytes,
        seed,
    })
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// One interface: its name, index and bound packet socket.
struct Port {
    name: String,
    ifindex: libc::c_int,
    fd: OwnedFd,
}

fn ifindex(name: &str) -> Option<libc::c_int> {
    let c = CString::new(name).ok()?;
    // SAFETY: a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i as libc::c_int)
}

fn open_port(name: &str) -> Result<Port, String> {
    let e = |what: &str| format!("{name}: {what}: {}", errno());
    let ifindex = ifindex(name).ok_or_else(|| format!("{name}: no such interface"))?;
    // Protocol 0: receive nothing until bound to the interface below.
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(e("socket(AF_PACKET)"));
    }
    // SAFETY: fd is a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    setsockopt_int(raw, libc::SOL_PACKET, PACKET_VNET_HDR, 1).map_err(|_| e("PACKET_VNET_HDR"))?;
    if setsockopt_int(raw, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1).is_err() {
        eprintln!(
            "wisp-netem: {name}: no PACKET_IGNORE_OUTGOING ({}); filtering by sll_pkttype",
            errno()
        );
    }
    if setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
        let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
    }
    // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = ifindex;
    // SAFETY: sll is a sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(
            raw,
            (&sll as *const libc::sockaddr_ll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(e("bind"));
    }
    Ok(Port {
        name: name.to_string(),
        ifindex,
        fd,
    })
}

/// What one direction counted, for the exit line.
#[derive(Default)]
struct DirStats {
    model: shim_tests::netem::Stats,
    sent: u64,
    gso: u64,
    too_big: u64,
    tx_errors: u64,
    /// How late frames went out (sent minus due), summed and at most: the
    /// relay's own delay on top of the emulated one.
    late_sum: Duration,
    late_max: Duration,
    first_tx_error: Option<String>,
    fatal: Option<String>,
}

/// Sends a frame (vnet header included) out of `tx`.
fn send(tx: &Port, frame: &[u8], st: &mut DirStats) {
    // SAFETY: frame is a valid buffer; the socket is bound, so no address.
    let r = unsafe { libc::send(tx.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    if r < 0 {
        st.tx_errors += 1;
        if st.first_tx_error.is_none() {
            st.first_tx_error = Some(errno().to_string());
        }
    } else {
        st.sent += 1;
    }
}

fn flush_due(model: &mut LinkModel<Vec<u8>>, tx: &Port, st: &mut DirStats) -> Instant {
    let now = Instant::now();
    while let Some(due) = model.next_due().filter(|&d| d <= now) {
        let Some(frame) = model.pop_due(now) else {
            break;
        };
        send(tx, &frame, st);
        let late = now - due;
        st.late_sum += late;
        st.late_max = st.late_max.max(late);
    }
    now
}

/// One direction: `rx` to `tx` until `stop` is readable or `rx` is gone.
fn forward(rx: &Port, tx: &Port, cfg: &LinkConfig, stop: RawFd) -> DirStats {
    // SAFETY: prctl with an integer argument, for this thread only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut model: LinkModel<Vec<u8>> = LinkModel::new(cfg);
    let mut st = DirStats::default();
    let mut buf = vec![0u8; BUF_LEN];
    let rxfd = rx.fd.as_raw_fd();
    loop {
        let now = flush_due(&mut model, tx, &mut st);
        let ts = model.next_due().map(|due| {
            let d = due.saturating_duration_since(now);
            libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            }
        });
        let mut fds = [
            libc::pollfd {
                fd: rxfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: two valid pollfds; tsp is null or points to ts.
        let r = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, tsp, std::ptr::null()) };
        if r < 0 {
            let err = errno();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            st.fatal = Some(format!("ppoll: {err}"));
            break;
        }
        if fds[1].revents != 0 {
            break;
        }
        if fds[0].revents == 0 {
            continue;
        }
        for _ in 0..BATCH {
            // SAFETY: an all-zero sockaddr_ll is valid.
            let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
            let mut fromlen = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    rxfd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut fromlen,
                )
            };
            if n < 0 {
                let err = errno();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) => break,
                    // The interface went down (its frames stop; a socket
                    // reports that once) or away (then there is no point).
                    Some(libc::ENETDOWN) => {
                        if ifindex(&rx.name) != Some(rx.ifindex) {
                            st.fatal = Some(format!("{}: interface gone", rx.name));
                            return st;
                        }
                        break;
                    }
                    _ => {
                        st.fatal = Some(format!("{}: recvfrom: {err}", rx.name));
                        return st;
                    }
                }
            }
            let n = n as usize;
            if from.sll_pkttype == PACKET_OUTGOING {
                continue;
            }
            if n > buf.len() {
                st.too_big += 1;
                continue;
            }
            let Some(hdr) = VnetHdr::parse(&buf[..n]) else {
                continue;
            };
            let frame = &buf[VnetHdr::LEN..n];
            if hdr.is_gso() {
                st.gso += 1;
            }
            let wire = wire_len(&hdr, frame);
            let now = Instant::now();
            if let Verdict::Due(_) = model.offer(now, frame.len(), wire, buf[..n].to_vec()) {
                // With no delay the frame is due now: send it before reading on.
                if model.next_due().is_some_and(|d| d <= now) {
                    flush_due(&mut model, tx, &mut st);
                }
            }
        }
    }
    st.model = model.stats();
    st
}

fn stats_line(from: &str, to: &str, s: &DirStats) -> String {
    let m = &s.model;
    let taken = m.frames - m.lost - m.queue_full;
    let late_mean = s.late_sum.as_secs_f64() * 1e6 / taken.max(1) as f64;
    let mut line = format!(
        "wisp-netem: {from} -> {to}: frames={} bytes={} gso={} sent={} lost={} queue_full={} \
         too_big={} tx_errors={} max_held={} late_mean_us={late_mean:.1} late_max_us={:.1}",
        m.frames,
        m.bytes,
        s.gso,
        s.sent,
        m.lost,
        m.queue_full,
        s.too_big,
        s.tx_errors,
        m.max_held,
        s.late_max.as_secs_f64() * 1e6
    );
    if let Some(e) = &s.first_tx_error {
        line += &format!(" (first tx error: {e})");
    }
    if let Some(e) = &s.fatal {
        line += &format!(" STOPPED: {e}");
    }
    line
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("wisp-netem: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    // Block the stop signals before any thread exists, so every thread
    // inherits the mask and only sigwait below takes them.
    // SAFETY: sigset manipulation on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };

    let ports = match (open_port(&args.ifs[0]), open_port(&args.ifs[1])) {
        (Ok(a), Ok(b)) => [a, b],
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("wisp-netem: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: plain eventfd(2).
    let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if stop < 0 {
        eprintln!("wisp-netem: eventfd: {}", errno());
        return ExitCode::FAILURE;
    }
    // SAFETY: a new descriptor we own.
    let stop = unsafe { OwnedFd::from_raw_fd(stop) };

    let queue_bytes = args
        .queue_bytes
        .unwrap_or_else(|| default_queue_bytes(args.delay, args.rate_bps));
    let cfg = |seed| LinkConfig {
        delay: args.delay,
        loss: args.loss,
        rate_bps: args.rate_bps,
        queue_bytes,
        seed,
    };
    let cfgs = [cfg(args.seed), cfg(args.seed ^ 0xD1B5_4A32_D192_ED03)];
    // One write: the lab's relays share a log file, and a line written in
    // pieces interleaves with theirs (the lab counts these lines).
    let line = format!(
        "wisp-netem: {} <-> {}: delay {:.3} ms, loss {}%, rate {}, queue {} bytes, seed {}\n",
        ports[0].name,
        ports[1].name,
        args.delay.as_secs_f64() * 1000.0,
        args.loss * 100.0,
        args.rate_bps
            .map_or("none".to_string(), |r| format!("{} Mbit/s", r as f64 / 1e6)),
        queue_bytes,
        args.seed
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());

    let fatal = Mutex::new(None::<String>);
    let stop_raw = stop.as_raw_fd();
    let results = thread::scope(|s| {
        let workers: Vec<_> = [(0, 1), (1, 0)]
            .into_iter()
            .map(|(i, o)| {
                let (rx, tx, cfg) = (&ports[i], &ports[o], &cfgs[i]);
                thread::Builder::new()
                    .name(format!("{}>{}", rx.name, tx.name))
                    .spawn_scoped(s, move || {
                        let st = forward(rx, tx, cfg, stop_raw);
                        if st.fatal.is_some() {
                            // Wake the main thread: the relay stops as a whole.
                            // SAFETY: kill(2) to our own process.
                            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
                        }
                        st
                    })
                    .expect("spawn a worker thread")
            })
            .collect();
        let mut sig: libc::c_int = 0;
        // SAFETY: set is an initialised sigset, sig a valid out pointer.
        unsafe { libc::sigwait(&set, &mut sig) };
        let one: u64 = 1;
        // SAFETY: writes 8 bytes to the eventfd.
        unsafe { libc::write(stop_raw, (&one as *const u64).cast(), 8) };
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect::<Vec<_>>()
    });
    for (i, st) in results.iter().enumerate() {
        let (from, to) = (&ports[i].name, &ports[1 - i].name);
        eprintln!("{}", stats_line(from, to, st));
        if let Some(e) = &st.fatal {
            *fatal.lock().unwrap() = Some(e.clone());
        }
    }
    if fatal.into_inner().unwrap().is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, String> {
        parse_args(s.split_whitespace().map(String::from))
    }

    #[test]
    fn arguments() {
        let a = parse("--delay 12.5 --loss 2.5 --rate-mbit 100 --seed 9 x y").unwrap();
        assert_eq!(a.ifs, ["x".to_string(), "y".to_string()]);
        assert_eq!(a.delay, Duration::from_micros(12_500));
        assert!((a.loss - 0.025).abs() < 1e-12);
        assert_eq!(a.rate_bps, Some(100_000_000));
        assert_eq!(a.seed, 9);
        assert_eq!(a.queue_bytes, None);
        let d = parse("a b").unwrap();
        assert_eq!(
            (d.delay, d.loss, d.rate_bps, d.seed),
            (Duration::ZERO, 0.0, None, 1)
        );
        for bad in [
            "a",
            "a b c",
            "a a",
            "--delay -1 a b",
            "--delay x a b",
            "--loss 101 a b",
            "--rate-mbit 0 a b",
            "--bogus a b",
            "--delay",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
