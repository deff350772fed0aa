//! The status socket: what `wisp status` asks a process about its streams.
//!
//! Nothing here runs until the process's first wisp stream appears
//! ([`ensure`], from the engine): then one thread, `wisp-status`, makes
//! `<dir>/<pid>.sock` (see [`place`]) and serves it. A client connects,
//! may write one line (`status\n`; the only request there is), and gets one
//! JSON document (keys documented in README.md, "wisp status") and the end
//! of the stream.
//!
//! The host program comes first: the thread's socket calls go to libc
//! directly (`real`, and the thread is marked `Inside`), it blocks every
//! signal, answers only its own user (SO_PEERCRED), bounds the answer and
//! the time a client may take, and reads the streams from a snapshot: the
//! descriptor table's lock is held only to copy references, and the
//! counters are atomics, so a move in progress is never waited for.

pub mod json;
pub mod place;

use crate::real;
use crate::table::{self, Stream};
use libc::c_int;
use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Streams described in one answer at most (the rest are counted).
const MAX_STREAMS: usize = 1024;
/// Bytes of one answer at most, and of any name in it.
const MAX_ANSWER: usize = 1 << 20;
const MAX_NAME: usize = 256;
/// How long a client may take to send its request line (it may send
/// none), and to read the whole answer.
const REQUEST_WAIT: Duration = Duration::from_millis(200);
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// The process whose server runs (or is starting); a forked child sees
/// its parent's pid here and starts its own.
static SERVER_PID: AtomicU32 = AtomicU32::new(0);
/// The listening socket, for the fork handler to close in a child: an
/// inherited copy would keep a dead parent's socket accepting connections
/// nobody answers.
static LISTEN_FD: AtomicI32 = AtomicI32::new(-1);
/// `(pid, path)` of our socket, for the exit handler.
static SOCKET: parking_lot::Mutex<Option<(u32, CString)>> = parking_lot::Mutex::new(None);
/// The fork handshake: the status thread holds the library's locks only
/// while `READING`; fork() waits for that to end (and keeps it from
/// starting), so a child never inherits a lock taken by this thread.
static READING: AtomicBool = AtomicBool::new(false);
static FORKING: AtomicBool = AtomicBool::new(false);

/// The process has a wisp stream: make sure its status socket is served.
/// Cheap after the first call (one getpid and one atomic load).
pub fn ensure() {
    let pid = std::process::id();
    let was = SERVER_PID.load(Ordering::Acquire);
    if was == pid
        || SERVER_PID
            .compare_exchange(was, pid, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    {
        return;
    }
    install_handlers();
    let spawned = std::thread::Builder::new()
        .name("wisp-status".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            crate::state::Inside::forever();
            block_signals();
            match open(pid) {
                Ok(fd) => serve(fd),
                Err(e) => warn!("no status socket (wisp status will not list this process): {e}"),
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the status thread: {e}");
    }
}

/// Once per process: remove the socket at exit (or when the library is
/// unloaded: atexit from a shared object runs then too), and keep the
/// fork handshake.
fn install_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain function pointers with the C signatures.
        unsafe {
            libc::atexit(at_exit);
            libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
        }
    });
}

extern "C" fn at_exit() {
    // try_lock: the status thread may be anywhere at exit.
    if let Some(g) = SOCKET.try_lock() {
        if let Some((pid, path)) = g.as_ref() {
            if *pid == std::process::id() {
                // SAFETY: a valid C string.
                unsafe { libc::unlink(path.as_ptr()) };
            }
        }
    }
}

extern "C" fn fork_prepare() {
    FORKING.store(true, Ordering::SeqCst);
    while READING.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
}

extern "C" fn fork_parent() {
    FORKING.store(false, Ordering::SeqCst);
}

extern "C" fn fork_child() {
    FORKING.store(false, Ordering::SeqCst);
    let fd = LISTEN_FD.swap(-1, Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: the parent's listening socket, inherited; the raw
        // syscall (async-signal-safe, no hook) as after any fork.
        unsafe { libc::syscall(libc::SYS_close, fd) };
    }
}

fn block_signals() {
    // SAFETY: a full set, applied to this thread only.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn cpath(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: NUL in path", p.display()))
}

/// The directory, from `$XDG_RUNTIME_DIR` read with getenv (no lock a
/// forking program could leave held).
fn dir() -> std::path::PathBuf {
    // SAFETY: a NUL-terminated name; the result is copied at once.
    let v = unsafe { libc::getenv(c"XDG_RUNTIME_DIR".as_ptr()) };
    let v = (!v.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(v) }.to_bytes().to_vec());
    place::dir_from(v.as_deref().map(std::ffi::OsStr::from_bytes))
}

/// Make the directory, clear leftovers of dead processes (and of an
/// earlier program of this pid, before an exec), and listen on
/// `<pid>.tmp`, renamed to `<pid>.sock` once it accepts.
fn open(pid: u32) -> Result<c_int, String> {
    let dir = dir();
    place::make_dir(&dir)?;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if let Some((p, _)) = place::parse_name(&e.file_name()) {
                if p == pid || !place::pid_alive(p) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    let path = dir.join(place::socket_name(pid));
    let tmp = dir.join(place::tmp_name(pid));
    let (cpath, ctmp) = (cpath(&path)?, cpath(&tmp)?);
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as _;
    let bytes = ctmp.as_bytes_with_nul();
    if bytes.len() > sun.sun_path.len() {
        return Err(format!("{}: path too long for a socket", tmp.display()));
    }
    for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket calls on our own descriptor and address.
    unsafe {
        let fd = real::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let fail = |what: &str| {
            let e = std::io::Error::last_os_error();
            real::close(fd);
            libc::unlink(ctmp.as_ptr());
            Err(format!("{what} {}: {e}", tmp.display()))
        };
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if real::bind(fd, &sun as *const _ as *const libc::sockaddr, len) != 0 {
            return fail("bind");
        }
        if libc::chmod(ctmp.as_ptr(), 0o600) != 0 {
            return fail("chmod");
        }
        if real::listen(fd, 16) != 0 {
            return fail("listen");
        }
        if libc::rename(ctmp.as_ptr(), cpath.as_ptr()) != 0 {
            return fail("rename");
        }
        LISTEN_FD.store(fd, Ordering::Relaxed);
        *SOCKET.lock() = Some((pid, cpath));
        debug!("status socket at {}", path.display());
        Ok(fd)
    }
}

/// Answer clients one at a time, for ever.
fn serve(listen: c_int) {
    loop {
        let mut p = libc::pollfd {
            fd: listen,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { real::poll(&mut p, 1, -1) } < 0 {
            if errno() != libc::EINTR {
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        // SAFETY: our listening socket; the peer's address is not wanted.
        let c = unsafe {
            real::accept4(
                listen,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if c < 0 {
            // EMFILE and friends: the program's descriptors come first.
            if errno() != libc::EAGAIN && errno() != libc::EINTR {
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        if std::panic::catch_unwind(|| answer(c)).is_err() {
            error!("internal error answering a status request");
        }
        // SAFETY: the client's descriptor, ours. SHUT_WR first: a forked
        // child holding a copy must not keep the client waiting for EOF.
        unsafe {
            real::shutdown(c, libc::SHUT_WR);
            real::close(c);
        }
    }
}

/// The uid of the peer of a Unix socket.
fn peer_uid(fd: c_int) -> Option<u32> {
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

fn answer(c: c_int) {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match peer_uid(c) {
        Some(uid) if uid == me => {}
        other => {
            debug!("status request from uid {other:?} refused (not {me})");
            return;
        }
    }
    let request = read_request(c);
    let doc = match request.trim() {
        "" | "status" => document(),
        _ => {
            let mut out = String::new();
            let mut o = json::Obj::new(&mut out);
            o.u64("format", 1)
                .str("error", "unknown request (the only one is \"status\")");
            o.end();
            out.push('\n');
            out
        }
    };
    write_all(c, doc.as_bytes(), Instant::now() + ANSWER_WAIT);
}

/// The client's request line, if it sends one soon (it need not).
fn read_request(c: c_int) -> String {
    let deadline = Instant::now() + REQUEST_WAIT;
    let mut buf = [0u8; 128];
    let mut got = 0;
    while got < buf.len() && !buf[..got].contains(&b'\n') {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut p = libc::pollfd {
            fd: c,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; then our buffer.
        unsafe {
            if real::poll(&mut p, 1, left.as_millis().max(1) as c_int) <= 0 {
                continue;
            }
            let n = real::recv(
                c,
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
                libc::MSG_DONTWAIT,
            );
            if n <= 0 {
                break;
            }
            got += n as usize;
        }
    }
    let line = buf[..got].split(|&b| b == b'\n').next().unwrap_or(&[]);
    String::from_utf8_lossy(line).into_owned()
}

fn write_all(c: c_int, mut bytes: &[u8], deadline: Instant) {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            debug!("status client too slow; answer cut");
            return;
        }
        let mut p = libc::pollfd {
            fd: c,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd; then our buffer.
        unsafe {
            if real::poll(&mut p, 1, left.as_millis().max(1) as c_int) <= 0 {
                continue;
            }
            let n = real::send(
                c,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
            if n < 0 {
                if errno() == libc::EAGAIN || errno() == libc::EINTR {
                    continue;
                }
                return;
            }
            bytes = &bytes[n as usize..];
        }
    }
}

/// What the process is, for the answer.
pub struct ProcessView {
    pub pid: u32,
    pub program: String,
    /// `WISP_NAME`, when the process answers for one.
    pub name: Option<String>,
}

/// One stream, as the answer describes it.
#[derive(Clone, Debug, Default)]
pub struct StreamView {
    pub fds: Vec<c_int>,
    pub id: Option<String>,
    pub proto: &'static str,
    pub direction: &'static str,
    pub peer_name: Option<String>,
    pub peer_uri: String,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub state: &'static str,
    pub mobile: bool,
    pub moves: u64,
    pub last_stall_ms: Option<f64>,
    pub resent_last: Option<u64>,
    pub resent_total: u64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub ring_held: u64,
    pub ring_capacity: u64,
}

/// The answer to `status`: this process and its streams.
fn document() -> String {
    let process = ProcessView {
        pid: std::process::id(),
        program: std::fs::read_to_string("/proc/self/comm")
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default(),
        name: crate::state::loaded().and_then(|s| s.config.name.clone()),
    };
    let (streams, total) = read_streams();
    render(&process, &streams, total)
}

/// The streams, read while fork() is kept waiting (see [`READING`]).
fn read_streams() -> (Vec<StreamView>, usize) {
    loop {
        while FORKING.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        READING.store(true, Ordering::SeqCst);
        if !FORKING.load(Ordering::SeqCst) {
            break;
        }
        READING.store(false, Ordering::SeqCst);
    }
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            READING.store(false, Ordering::SeqCst);
        }
    }
    let _done = Done;
    let (streams, total) = table::snapshot(MAX_STREAMS);
    let views = streams.iter().filter_map(|(s, fds)| view(s, fds)).collect();
    (views, total)
}

fn view(s: &Arc<Stream>, fds: &[c_int]) -> Option<StreamView> {
    let mob = s.mobility.as_ref();
    let udp = match mob {
        Some(m) => m.proto == sipcore::sdp::ChannelProto::Udp,
        None => fds
            .first()
            .is_some_and(|&fd| crate::fdtable::kind(fd) == crate::fdtable::Kind::Datagram),
    };
    let (peer, local) = match fds.first() {
        Some(&fd) => {
            let a = table::addresses(fd);
            // Closed (and the number perhaps reused) since the snapshot.
            if !table::still_names(fd, s) {
                return None;
            }
            a
        }
        None => match mob {
            Some(m) => (
                Some(*m.peer_data.lock()),
                Some(SocketAddr::new(
                    *m.local_ip.lock(),
                    m.local_port.load(Ordering::Relaxed),
                )),
            ),
            None => (None, None),
        },
    };
    let io = s.io.stats();
    let moves = mob.map_or(0, |m| m.moves.load(Ordering::Acquire));
    let ended = s.ended.load(Ordering::Relaxed) || s.call.lock().is_none();
    let state = if io.broken != 0 {
        "timed-out"
    } else if ended {
        "closed-waiting"
    } else if io.frozen {
        "frozen"
    } else if mob.is_some_and(|m| m.mover_running.load(Ordering::Relaxed)) {
        "moving"
    } else {
        "up"
    };
    let after_move = |v: u64| (moves > 0).then_some(v);
    Some(StreamView {
        fds: fds.to_vec(),
        id: mob.map(|m| m.id.to_string()),
        proto: if udp { "udp" } else { "tcp" },
        direction: if s.outgoing { "out" } else { "in" },
        peer_name: s.peer.name.clone(),
        peer_uri: s.peer.uri.clone(),
        peer,
        local,
        state,
        mobile: mob.is_some(),
        moves,
        last_stall_ms: mob
            .and_then(|m| after_move(m.last_stall_us.load(Ordering::Relaxed)))
            .map(|us| us as f64 / 1000.0),
        resent_last: mob.and_then(|m| after_move(m.last_resent.load(Ordering::Relaxed))),
        resent_total: mob.map_or(0, |m| m.resent.load(Ordering::Relaxed)),
        // Datagrams bypass the counted data path: no counts, no ring.
        tx_bytes: if udp { 0 } else { io.tx },
        rx_bytes: if udp { 0 } else { io.rx },
        ring_held: if udp { 0 } else { io.ring_held },
        ring_capacity: if udp { 0 } else { io.ring_capacity },
    })
}

/// The JSON document (one line), at most [`MAX_ANSWER`] bytes: streams
/// past that are left out and `truncated` says so.
pub fn render(p: &ProcessView, streams: &[StreamView], total: usize) -> String {
    let mut out = String::with_capacity(512 + 512 * streams.len().min(64));
    let mut doc = json::Obj::new(&mut out);
    doc.u64("format", 1)
        .u64("pid", u64::from(p.pid))
        .str("program", json::clip(&p.program, MAX_NAME))
        .opt_str("name", p.name.as_deref().map(|n| json::clip(n, MAX_NAME)))
        .u64("streams_total", total as u64);
    let mut listed = 0;
    {
        let out = doc.key("streams");
        out.push('[');
        for s in streams {
            if out.len() > MAX_ANSWER - 4096 {
                break;
            }
            if listed > 0 {
                out.push(',');
            }
            stream_json(out, s);
            listed += 1;
        }
        out.push(']');
    }
    doc.bool("truncated", listed < total);
    doc.end();
    out.push('\n');
    out
}

fn stream_json(out: &mut String, s: &StreamView) {
    let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string());
    let mut o = json::Obj::new(out);
    {
        let fds = o.key("fds");
        fds.push('[');
        for (i, fd) in s.fds.iter().enumerate() {
            if i > 0 {
                fds.push(',');
            }
            fds.push_str(&fd.to_string());
        }
        fds.push(']');
    }
    o.opt_str("id", s.id.as_deref())
        .str("proto", s.proto)
        .str("direction", s.direction)
        .opt_str(
            "peer_name",
            s.peer_name.as_deref().map(|n| json::clip(n, MAX_NAME)),
        )
        .str("peer_uri", json::clip(&s.peer_uri, MAX_NAME))
        .opt_str("peer", addr(s.peer).as_deref())
        .opt_str("local", addr(s.local).as_deref())
        .str("state", s.state)
        .bool("mobile", s.mobile)
        .u64("moves", s.moves)
        .opt_f64("last_stall_ms", s.last_stall_ms)
        .opt_u64("resent_last", s.resent_last)
        .u64("resent_total", s.resent_total)
        .u64("tx_bytes", s.tx_bytes)
        .u64("rx_bytes", s.rx_bytes)
        .u64("ring_held", s.ring_held)
        .u64("ring_capacity", s.ring_capacity);
    o.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(name: &str) -> StreamView {
        StreamView {
            fds: vec![3, 7],
            id: Some("00ff".into()),
            proto: "tcp",
            direction: "out",
            peer_name: Some(name.into()),
            peer_uri: "sip:bob@wxyz.com".into(),
            peer: Some("10.0.2.2:8080".parse().unwrap()),
            local: Some("[fd00::1]:4000".parse().unwrap()),
            state: "up",
            mobile: true,
            moves: 1,
            last_stall_ms: Some(12.5),
            resent_last: Some(10),
            resent_total: 20,
            tx_bytes: 100,
            rx_bytes: 200,
            ring_held: 30,
            ring_capacity: 262144,
        }
    }

    fn process() -> ProcessView {
        ProcessView {
            pid: 42,
            program: "py\"thon".into(),
            name: None,
        }
    }

    #[test]
    fn document_keys_and_escapes() {
        let doc = render(&process(), &[stream("bo\"b\\\n")], 1);
        assert_eq!(
            doc,
            concat!(
                r#"{"format":1,"pid":42,"program":"py\"thon","name":null,"streams_total":1,"streams":["#,
                r#"{"fds":[3,7],"id":"00ff","proto":"tcp","direction":"out","peer_name":"bo\"b\\\n","#,
                r#""peer_uri":"sip:bob@wxyz.com","peer":"10.0.2.2:8080","local":"[fd00::1]:4000","#,
                r#""state":"up","mobile":true,"moves":1,"last_stall_ms":12.500,"resent_last":10,"#,
                r#""resent_total":20,"tx_bytes":100,"rx_bytes":200,"ring_held":30,"ring_capacity":262144}"#,
                "],\"truncated\":false}\n"
            )
        );
    }

    #[test]
    fn answer_is_bounded() {
        let long = "n".repeat(10_000);
        let streams = vec![stream(&long); MAX_STREAMS];
        let doc = render(&process(), &streams, 5000);
        assert!(doc.len() <= MAX_ANSWER, "{}", doc.len());
        assert!(doc.ends_with(",\"truncated\":true}\n"));
        assert!(!doc.contains(&"n".repeat(MAX_NAME + 1)));
    }
}
