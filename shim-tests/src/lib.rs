//! Helpers shared by the end-to-end tests.
//!
//! * [`Proc`]: a child process whose stdout and stderr are collected line by
//!   line into a shared log by reader threads. It runs in its own process
//!   group and the whole group is terminated when the `Proc` is dropped, also
//!   when the test panics (the log is then printed, to help the diagnosis).
//! * [`free_port`]: a loopback port free for both UDP and TCP.
//! * [`TempDir`]: a uniquely named scratch directory (pid + counter).
//! * [`wisp_bin`], [`wisp`]: the `wisp` command under test.
//! * The independent peers: [`Kamailio`], [`sipsak`], [`netsip_ua`] (Net::SIP).
//! * [`Capture`]: a tshark capture on loopback whose SIP/SDP is checked for
//!   malformed packets and dissector warnings afterwards.
//!
//! Everything talks on 127.0.0.1 only. Timeouts are generous ([`timeout`])
//! and are only ever used as an upper bound to give up waiting; no test
//! asserts on how long something took.

pub mod attacker;
pub mod bench;
pub mod e2e;
pub mod lab;
pub mod moves;
pub mod netem;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The loopback address every test uses.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The default upper bound for waiting on anything (a line, an exit, a
/// peer becoming ready): 60 s, or `WISP_TEST_TIMEOUT_SECS`.
pub fn timeout() -> Duration {
    let secs = std::env::var("WISP_TEST_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// `"127.0.0.1:PORT"`.
pub fn lo(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// `127.0.0.1:PORT` as a socket address.
pub fn lo_addr(port: u16) -> SocketAddr {
    SocketAddr::from((LOOPBACK, port))
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A number unique within this test process.
pub fn unique() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// Temp dirs

/// A scratch directory `$TMPDIR/wisp-LABEL-PID-N`, removed on drop; kept
/// (and its path printed) when the thread is panicking and
/// `WISP_TEST_KEEP` is set, so that logs and captures can be looked at.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("wisp-{label}-{}-{}", std::process::id(), unique()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() && std::env::var_os("WISP_TEST_KEEP").is_some() {
            eprintln!("keeping {} for inspection", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------
// Ports

/// A port on 127.0.0.1 that is free for both UDP and TCP right now, and that
/// this process has not handed out before.
///
/// Ports are 4-digit (2000..=9999): sipsak 0.9.8.1 truncates a 5-digit port
/// in the target URI (`sip:127.0.0.1:25060` goes out as `...:2506`, an
/// off-by-one `snprintf` size), and staying below the kernel's ephemeral
/// range also keeps these ports from being taken by outgoing connections.
pub fn free_port() -> u16 {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    const LO: u32 = 2000;
    const HI: u32 = 9999;
    const AVOID: [u16; 4] = [5060, 5061, 5062, 8080];

    let used = USED.get_or_init(|| Mutex::new(HashSet::new()));
    let mut used = used.lock().unwrap();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ (u64::from(std::process::id()) << 32) ^ (unique() << 16) | 1;
    for _ in 0..20_000 {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = (LO + (x % u64::from(HI - LO + 1)) as u32) as u16;
        if AVOID.contains(&port) || used.contains(&port) {
            continue;
        }
        let tcp = TcpListener::bind((LOOPBACK, port));
        let udp = UdpSocket::bind((LOOPBACK, port));
        if tcp.is_ok() && udp.is_ok() {
            used.insert(port);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {LO}..={HI}");
}

// ---------------------------------------------------------------------------
// Processes

/// Which pipe a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

struct Line {
    stream: Stream,
    text: String,
    consumed: bool,
}

struct LogState {
    lines: Vec<Line>,
    open_streams: usize,
}

struct Log {
    state: Mutex<LogState>,
    cond: Condvar,
}

impl Log {
    fn push(&self, stream: Stream, text: String) {
        let mut st = self.state.lock().unwrap();
        st.lines.push(Line {
            stream,
            text,
            consumed: false,
        });
        self.cond.notify_all();
    }

    fn close_stream(&self) {
        let mut st = self.state.lock().unwrap();
        st.open_streams -= 1;
        self.cond.notify_all();
    }
}

enum WaitOutcome {
    Found(String),
    TimedOut,
    Closed,
}

/// A spawned command with its output collected line by line.
///
/// The child gets stdin from /dev/null, runs in a new process group, and
/// receives SIGTERM if the test thread that spawned it dies. Dropping the
/// `Proc` sends SIGTERM to the group, waits up to 5 s, then SIGKILLs it.
pub struct Proc {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    log: Arc<Log>,
    dirs: Vec<TempDir>,
}

impl Proc {
    /// Spawns `cmd` (stdin, stdout, stderr and process group are set here).
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs in the hook.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let desc = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot spawn {desc}: {e}"));
        let log = Arc::new(Log {
            state: Mutex::new(LogState {
                lines: Vec::new(),
                open_streams: 2,
            }),
            cond: Condvar::new(),
        });
        let echo = std::env::var_os("WISP_TEST_ECHO").is_some();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        spawn_reader(name, out, Stream::Stdout, log.clone(), echo);
        spawn_reader(name, err, Stream::Stderr, log.clone(), echo);
        Proc {
            name: name.to_string(),
            child,
            status: None,
            log,
            dirs: Vec::new(),
        }
    }

    /// Spawns `program args...`.
    pub fn command<I, S>(name: &str, program: impl AsRef<OsStr>, args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Proc::spawn(name, cmd)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Keeps `dir` alive as long as the process (removed after it is gone).
    pub fn keep_dir(&mut self, dir: TempDir) {
        self.dirs.push(dir);
    }

    /// Waits for the first not yet consumed line (stdout or stderr, in
    /// arrival order) containing `pattern`, marks it consumed and returns
    /// it. Lines already printed count, so the order of waits does not
    /// matter; a repeated event is consumed once per call. Panics, printing
    /// the log, on timeout or when the process closed its output first.
    pub fn wait_line(&self, pattern: &str, timeout: Duration) -> String {
        self.wait_line_where(&format!("a line containing {pattern:?}"), timeout, |l| {
            l.contains(pattern)
        })
    }

    /// Like [`Proc::wait_line`] but `None` instead of panicking.
    pub fn try_wait_line(&self, pattern: &str, timeout: Duration) -> Option<String> {
        match self.wait_for(timeout, |l| l.contains(pattern)) {
            WaitOutcome::Found(l) => Some(l),
            _ => None,
        }
    }

    /// Like [`Proc::wait_line`] with a predicate; `what` names it in the
    /// panic message.
    pub fn wait_line_where(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        match self.wait_for(timeout, pred) {
            WaitOutcome::Found(l) => l,
            WaitOutcome::TimedOut => panic!(
                "{}: no {what} within {timeout:?}\n{}",
                self.name,
                self.dump()
            ),
            WaitOutcome::Closed => panic!(
                "{}: closed its output (exited?) without printing {what}\n{}",
                self.name,
                self.dump()
            ),
        }
    }

    fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> WaitOutcome {
        let deadline = Instant::now() + timeout;
        let mut st = self.log.state.lock().unwrap();
        loop {
            if let Some(line) = st.lines.iter_mut().find(|l| !l.consumed && pred(&l.text)) {
                line.consumed = true;
                return WaitOutcome::Found(line.text.clone());
            }
            if st.open_streams == 0 {
                return WaitOutcome::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return WaitOutcome::TimedOut;
            }
            st = self.log.cond.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Whether any line (consumed or not) contains `pattern`.
    pub fn has_line(&self, pattern: &str) -> bool {
        let st = self.log.state.lock().unwrap();
        st.lines.iter().any(|l| l.text.contains(pattern))
    }

    /// All lines so far, both streams, in arrival order.
    pub fn lines(&self) -> Vec<String> {
        let st = self.log.state.lock().unwrap();
        st.lines.iter().map(|l| l.text.clone()).collect()
    }

    /// The lines so far from one stream.
    pub fn stream_lines(&self, stream: Stream) -> Vec<String> {
        let st = self.log.state.lock().unwrap();
        st.lines
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.text.clone())
            .collect()
    }

    /// All output so far as one string, lines joined with '\n'.
    pub fn output(&self) -> String {
        self.lines().join("\n")
    }

    /// The log, each line prefixed with the name and stream (last 400 lines).
    pub fn dump(&self) -> String {
        let st = self.log.state.lock().unwrap();
        let skip = st.lines.len().saturating_sub(400);
        let mut s = format!(
            "----- {} (pid {}) output{} -----\n",
            self.name,
            self.child.id(),
            if skip > 0 {
                format!(", first {skip} lines left out")
            } else {
                String::new()
            }
        );
        for l in st.lines.iter().skip(skip) {
            let tag = match l.stream {
                Stream::Stdout => "out",
                Stream::Stderr => "err",
            };
            s.push_str(&format!("[{} {tag}] {}\n", self.name, l.text));
        }
        s.push_str(&format!("----- end of {} -----", self.name));
        s
    }

    /// The exit status if the process has exited (without blocking).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
            }
        }
        self.status
    }

    /// Waits for the process to exit; `None` on timeout. After the exit it
    /// also waits (briefly) for the output pipes to drain.
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                self.drain(Duration::from_secs(5));
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit; panics, printing the log, on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.try_wait_exit(timeout) {
            Some(s) => s,
            None => panic!(
                "{}: did not exit within {timeout:?}\n{}",
                self.name,
                self.dump()
            ),
        }
    }

    /// Waits for the process to exit and asserts it exited with status 0.
    pub fn wait_success(&mut self, timeout: Duration) {
        let s = self.wait_exit(timeout);
        assert!(
            s.success(),
            "{}: exited with {s}\n{}",
            self.name,
            self.dump()
        );
    }

    fn drain(&self, max: Duration) {
        let deadline = Instant::now() + max;
        let mut st = self.log.state.lock().unwrap();
        while st.open_streams > 0 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            st = self.log.cond.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Sends `sig` to the process itself (not its group).
    pub fn signal(&self, sig: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: plain kill(2) on our own child's pid, which is not
            // reaped yet (status is None), so the pid cannot be reused.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    fn signal_group(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with a negative pid: the process group this child
        // leads (process_group(0) at spawn).
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), sig);
        }
    }

    /// SIGTERM to the process group, up to `grace` to exit, then SIGKILL.
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if let Some(s) = self.exited() {
            return s;
        }
        self.signal_group(libc::SIGTERM);
        if let Some(s) = self.try_wait_exit(grace) {
            return s;
        }
        self.signal_group(libc::SIGKILL);
        let s = self.child.wait().expect("wait");
        self.status = Some(s);
        s
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let was_running = self.exited().is_none();
        if was_running {
            self.terminate(Duration::from_secs(5));
        }
        // Whatever the leader left behind in its group (the leader was just
        // reaped, so the group id is still ours).
        self.signal_group(libc::SIGKILL);
        if thread::panicking() {
            eprintln!("{}", self.dump());
        }
    }
}

fn spawn_reader<R: Read + Send + 'static>(
    name: &str,
    pipe: R,
    stream: Stream,
    log: Arc<Log>,
    echo: bool,
) {
    let name = name.to_string();
    thread::Builder::new()
        .name(format!("{name}-{stream:?}"))
        .spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        if echo {
                            eprintln!("[{name}] {text}");
                        }
                        log.push(stream, text);
                    }
                }
            }
            log.close_stream();
        })
        .expect("spawn reader thread");
}

/// The result of a short-lived tool run to completion.
pub struct ToolOutput {
    pub status: ExitStatus,
    /// stdout and stderr lines, in arrival order.
    pub text: String,
}

impl ToolOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Runs `cmd` to completion (panics, with its output, if it takes longer
/// than `timeout`).
pub fn run_tool(name: &str, cmd: Command, timeout: Duration) -> ToolOutput {
    let mut p = Proc::spawn(name, cmd);
    let status = p.wait_exit(timeout);
    ToolOutput {
        status,
        text: p.output(),
    }
}

// ---------------------------------------------------------------------------
// wisp

/// The `wisp` binary: `$WISP_BIN`, else the newer of
/// `target/release/wisp` and `target/debug/wisp` in the workspace (or in
/// `$CARGO_TARGET_DIR`). Panics if there is none.
pub fn wisp_bin() -> PathBuf {
    built_bin("wisp", "WISP_BIN", "cargo build --release -p wisp")
}

/// The lab's delay relay (`src/bin/wisp-netem.rs`): `$WISP_NETEM`, else the
/// newer of `target/release/wisp-netem` and `target/debug/wisp-netem`.
/// Panics if there is none. (An integration test of this package has it
/// built by cargo before it runs.)
pub fn netem_bin() -> PathBuf {
    built_bin(
        "wisp-netem",
        "WISP_NETEM",
        "cargo build --release -p shim-tests --bin wisp-netem",
    )
}

/// `$ENV`, else the newer of `target/{release,debug}/NAME` in the workspace
/// (or in `$CARGO_TARGET_DIR`); panics naming `build` if there is none.
fn built_bin(name: &str, env: &str, build: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
        Some(t) => workspace.join(t),
        None => workspace.join("target"),
    };
    let candidates = [
        target.join("release").join(name),
        target.join("debug").join(name),
    ];
    candidates
        .iter()
        .filter_map(|p| {
            let m = fs::metadata(p).ok()?;
            m.is_file().then(|| (m.modified().ok(), p.clone()))
        })
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!(
                "{name} binary not found at {} or {}: build it ({build}) or set {env}",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

/// Spawns `wisp ARGS...` as a [`Proc`].
pub fn wisp(name: &str, args: &[&str]) -> Proc {
    Proc::command(name, wisp_bin(), args)
}

/// Spawns `wisp registrar --listen 127.0.0.1:PORT --domain D... EXTRA...`
/// and waits for its `listening` line.
pub fn wisp_registrar(name: &str, port: u16, domains: &[&str], extra: &[&str]) -> Proc {
    let listen = lo(port);
    let mut args: Vec<&str> = vec!["registrar", "--listen", &listen];
    for d in domains {
        args.extend(["--domain", d]);
    }
    args.extend(extra);
    let p = wisp(name, &args);
    p.wait_line(&format!("listening {listen}"), timeout());
    p
}

// ---------------------------------------------------------------------------
// SIP on the wire

/// Sends `OPTIONS sip:IP:PORT` over UDP to `target` (retransmitting) until
/// a final response arrives or `timeout` passes; returns its status line.
pub fn sip_ping_udp(target: SocketAddr, timeout: Duration) -> Option<String> {
    let sock = UdpSocket::bind((LOOPBACK, 0)).ok()?;
    let lport = sock.local_addr().ok()?.port();
    let n = unique();
    let pid = std::process::id();
    let msg = format!(
        "OPTIONS sip:{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK-ping-{pid}-{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:ping@127.0.0.1>;tag=ping{n}\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: ping-{pid}-{n}@127.0.0.1\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .ok()?;
    while Instant::now() < deadline {
        let _ = sock.send_to(msg.as_bytes(), target);
        let resend_at = Instant::now() + Duration::from_millis(500);
        while Instant::now() < resend_at.min(deadline) {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let first = text.lines().next().unwrap_or("").to_string();
                    let code: u16 = first
                        .strip_prefix("SIP/2.0 ")
                        .and_then(|r| r.get(..3))
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    if code >= 200 {
                        return Some(first);
                    }
                }
                // nothing yet, or ICMP port unreachable: keep trying
                Err(_) => continue,
            }
        }
    }
    None
}

/// A hand-built request: `METHOD RURI` with a Via for the transport and
/// the local address as sent-by, and a fresh branch, From tag and Call-ID
/// each time it is built.
///
/// ```text
/// let msg = SipRequest::new("OPTIONS", "sip:bob@wxyz.com", local).build();
/// ```
#[derive(Clone, Debug)]
pub struct SipRequest {
    method: String,
    ruri: String,
    local: SocketAddr,
    transport: String,
    from: String,
    to: String,
    headers: Vec<String>,
    body: String,
}

impl SipRequest {
    /// From is `sip:tester@abcd.com`, To is the Request-URI, transport UDP.
    pub fn new(method: &str, ruri: &str, local: SocketAddr) -> SipRequest {
        SipRequest {
            method: method.to_string(),
            ruri: ruri.to_string(),
            local,
            transport: "UDP".to_string(),
            from: "sip:tester@abcd.com".to_string(),
            to: ruri.to_string(),
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// "UDP" or "TCP" (the Via's transport).
    pub fn transport(mut self, transport: &str) -> Self {
        self.transport = transport.to_string();
        self
    }

    pub fn from(mut self, uri: &str) -> Self {
        self.from = uri.to_string();
        self
    }

    pub fn to(mut self, uri: &str) -> Self {
        self.to = uri.to_string();
        self
    }

    /// An extra header line, without CRLF.
    pub fn header(mut self, line: &str) -> Self {
        self.headers.push(line.to_string());
        self
    }

    pub fn body(mut self, body: &str) -> Self {
        self.body = body.to_string();
        self
    }

    pub fn build(&self) -> String {
        let n = unique();
        let pid = std::process::id();
        let SipRequest {
            method,
            ruri,
            local,
            transport,
            from,
            to,
            headers,
            body,
        } = self;
        let mut msg = format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/{transport} {local};branch=z9hG4bK-t-{pid}-{n};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{from}>;tag=t{pid}x{n}\r\n\
             To: <{to}>\r\n\
             Call-ID: t-{pid}-{n}@127.0.0.1\r\n\
             CSeq: 1 {method}\r\n"
        );
        for h in headers {
            msg.push_str(h);
            msg.push_str("\r\n");
        }
        msg.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        msg
    }
}

/// The values of header `name` (case-insensitive, no compact forms) in `msg`.
pub fn sip_headers<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    let head = msg.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// A response to `request` (all Vias, From, To with a tag, Call-ID, CSeq).
pub fn sip_response(request: &str, code: u16, reason: &str) -> String {
    let mut msg = format!("SIP/2.0 {code} {reason}\r\n");
    for v in sip_headers(request, "Via") {
        msg.push_str(&format!("Via: {v}\r\n"));
    }
    let to = sip_headers(request, "To").first().copied().unwrap_or("");
    let to = if to.contains("tag=") {
        to.to_string()
    } else {
        format!("{to};tag=r{}", unique())
    };
    msg.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
        sip_headers(request, "From").first().copied().unwrap_or(""),
        sip_headers(request, "Call-ID")
            .first()
            .copied()
            .unwrap_or(""),
        sip_headers(request, "CSeq").first().copied().unwrap_or(""),
    ));
    msg
}

/// Accepts one connection on `listener`, giving up (panicking) after
/// `timeout`. The returned stream is blocking, with `timeout` as read
/// timeout.
pub fn accept_within(listener: &TcpListener, timeout: Duration) -> std::net::TcpStream {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                stream
                    .set_read_timeout(Some(timeout))
                    .expect("read timeout");
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "no connection to {:?} within {timeout:?}",
                    listener.local_addr()
                );
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Reads one SIP message (head + Content-Length body) from a stream.
pub fn read_sip_message(stream: &mut impl Read) -> std::io::Result<String> {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        // a CRLF keep-alive before the message is skipped
        if data.is_empty() && (byte[0] == b'\r' || byte[0] == b'\n') {
            continue;
        }
        data.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&data).to_string();
    let len: usize = sip_headers(&head, "Content-Length")
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(head + &String::from_utf8_lossy(&body))
}

// ---------------------------------------------------------------------------
// Peers: Kamailio, sipsak, Net::SIP

/// Kamailio 5.6 with `kamailio/kamailio.cfg`: registrar (in-memory usrloc)
/// and record-routing stateful proxy; abcd.com and wxyz.com are local.
pub struct Kamailio;

impl Kamailio {
    pub fn config() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("kamailio/kamailio.cfg")
    }

    /// The command line used by [`Kamailio::start`].
    pub fn command(port: u16, dir: &Path) -> Command {
        let mut cmd = Command::new("kamailio");
        cmd.arg("-DD") // main process stays in the foreground
            .arg("-E") // log to stderr
            .arg("-f")
            .arg(Self::config())
            .arg("-l")
            .arg(format!("udp:127.0.0.1:{port}"))
            .arg("-l")
            .arg(format!("tcp:127.0.0.1:{port}"))
            .args(["-m", "64", "-M", "8"])
            .arg("-w")
            .arg(dir)
            .arg("-Y")
            .arg(dir)
            .arg("-P")
            .arg(dir.join("kamailio.pid"));
        cmd
    }

    /// Starts Kamailio on 127.0.0.1:`port` (UDP and TCP) in the foreground
    /// with its own run dir, and waits until it answers OPTIONS.
    pub fn start(port: u16) -> Proc {
        let dir = TempDir::new("kamailio");
        let mut p = Proc::spawn(&format!("kamailio:{port}"), Self::command(port, dir.path()));
        p.keep_dir(dir);
        let deadline = Instant::now() + timeout();
        loop {
            if let Some(s) = p.exited() {
                panic!("kamailio exited during start-up with {s}\n{}", p.dump());
            }
            if let Some(status) = sip_ping_udp(lo_addr(port), Duration::from_millis(500)) {
                assert!(
                    status.contains(" 200 "),
                    "kamailio answered OPTIONS with {status}\n{}",
                    p.dump()
                );
                return p;
            }
            if Instant::now() >= deadline {
                panic!("kamailio did not answer OPTIONS on {port}\n{}", p.dump());
            }
        }
    }
}

/// Runs `sipsak ARGS...` to completion. sipsak's exit code is 0 when it got
/// a 200, 1 for another final response, 2 local error, 3 timeout/remote
/// error.
///
/// Quirks of sipsak 0.9.8.1: 5-digit ports in `-s` URIs lose their last
/// digit (see [`free_port`]); `-p` must come before `-s`, otherwise the
/// host in `-s` (abcd.com) is resolved and fails; `-I`/`-M` usrloc modes
/// crash (SIGSEGV).
pub fn sipsak(args: &[&str]) -> ToolOutput {
    let mut cmd = Command::new("sipsak");
    cmd.args(args);
    run_tool("sipsak", cmd, timeout())
}

/// Path of `netsip/ua.pl`.
pub fn netsip_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("netsip/ua.pl")
}

/// Spawns the Net::SIP user agent `perl netsip/ua.pl ARGS...`.
pub fn netsip_ua(name: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new("perl");
    cmd.arg(netsip_script()).args(args);
    Proc::spawn(name, cmd)
}

// ---------------------------------------------------------------------------
// Checks shared by the peer sanity tests and the wisp acceptance tests, so
// that the very same assertions are known to pass against Kamailio.

/// The status code of a response (0 for a request or garbage).
pub fn status_code(msg: &str) -> u16 {
    msg.strip_prefix("SIP/2.0 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Receives one datagram (panics after `timeout`).
pub fn recv_datagram(sock: &UdpSocket, timeout: Duration) -> String {
    sock.set_read_timeout(Some(timeout)).expect("read timeout");
    let mut buf = vec![0u8; 65536];
    let (n, _) = sock.recv_from(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no datagram on {:?} within {timeout:?}: {e}",
            sock.local_addr()
        )
    });
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// Receives datagrams until a final response (>= 200) arrives.
pub fn recv_final_response(sock: &UdpSocket, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no final response within {timeout:?}");
        let msg = recv_datagram(sock, left);
        if status_code(&msg) >= 200 {
            return msg;
        }
    }
}

/// Reads SIP messages from a stream until a final response arrives.
pub fn read_final_response(stream: &mut impl Read) -> String {
    loop {
        let msg = read_sip_message(stream).expect("reading a response");
        if status_code(&msg) >= 200 {
            return msg;
        }
    }
}

/// Asserts that the proxy on `proxy_port` routes an OPTIONS for `aor`
/// (sent over UDP) to `contact`, a UDP socket bound at the registered
/// contact, and relays the contact's 200 back.
pub fn assert_routes_to_udp_contact(proxy_port: u16, aor: &str, contact: &UdpSocket) {
    let client = UdpSocket::bind((LOOPBACK, 0)).expect("client socket");
    let req = SipRequest::new("OPTIONS", aor, client.local_addr().unwrap()).build();
    client.send_to(req.as_bytes(), lo_addr(proxy_port)).unwrap();
    let fwd = recv_datagram(contact, timeout());
    let contact_port = contact.local_addr().unwrap().port();
    let user = aor
        .strip_prefix("sip:")
        .and_then(|r| r.split('@').next())
        .unwrap_or("");
    assert!(
        fwd.starts_with(&format!("OPTIONS sip:{user}@127.0.0.1:{contact_port}")),
        "OPTIONS for {aor} was not retargeted to the contact:\n{fwd}"
    );
    contact
        .send_to(
            sip_response(&fwd, 200, "OK").as_bytes(),
            lo_addr(proxy_port),
        )
        .unwrap();
    let resp = recv_final_response(&client, timeout());
    assert_eq!(
        status_code(&resp),
        200,
        "response relayed for {aor}:\n{resp}"
    );
}

/// Like [`assert_routes_to_udp_contact`] over TCP: the OPTIONS goes to the
/// proxy on a TCP connection and must arrive on a connection the proxy
/// opens to `contact` (the listener at the registered contact).
pub fn assert_routes_to_tcp_contact(proxy_port: u16, aor: &str, contact: &TcpListener) {
    let mut conn = std::net::TcpStream::connect(lo_addr(proxy_port)).expect("connect to proxy");
    conn.set_read_timeout(Some(timeout())).unwrap();
    let req = SipRequest::new("OPTIONS", aor, conn.local_addr().unwrap())
        .transport("TCP")
        .build();
    std::io::Write::write_all(&mut conn, req.as_bytes()).unwrap();
    let mut inbound = accept_within(contact, timeout());
    let fwd = read_sip_message(&mut inbound).expect("forwarded request");
    let contact_port = contact.local_addr().unwrap().port();
    assert!(
        fwd.starts_with("OPTIONS sip:") && fwd.contains(&format!("@127.0.0.1:{contact_port}")),
        "OPTIONS for {aor} was not retargeted to the contact:\n{fwd}"
    );
    std::io::Write::write_all(&mut inbound, sip_response(&fwd, 200, "OK").as_bytes()).unwrap();
    let resp = read_final_response(&mut conn);
    assert_eq!(
        status_code(&resp),
        200,
        "response relayed for {aor}:\n{resp}"
    );
}

/// Asserts that an OPTIONS for an AOR nobody registered gets 404 (or 480,
/// which a registrar may prefer for a known user without bindings).
pub fn assert_unknown_user_rejected(proxy_port: u16, aor: &str) {
    let client = UdpSocket::bind((LOOPBACK, 0)).expect("client socket");
    let req = SipRequest::new("OPTIONS", aor, client.local_addr().unwrap()).build();
    client.send_to(req.as_bytes(), lo_addr(proxy_port)).unwrap();
    let resp = recv_final_response(&client, timeout());
    assert!(
        matches!(status_code(&resp), 404 | 480),
        "OPTIONS for unregistered {aor}:\n{resp}"
    );
}

/// The sipsak scenario against the registrar/proxy on `server_port`, over
/// `transport` ("udp" or "tcp"):
/// 1. `sipsak -U` REGISTERs `sip:USER@DOMAIN` with a contact on
///    `contact_port` (exit code 0 = got a 200),
/// 2. `sipsak` OPTIONS the server itself and gets a 200,
/// 3. an OPTIONS to the AOR reaches the contact, and its 200 comes back.
pub fn sipsak_scenario(
    server_port: u16,
    transport: &str,
    user: &str,
    domain: &str,
    contact_port: u16,
) {
    let proxy = lo(server_port);
    let tcp = transport == "tcp";
    // sipsak writes -C verbatim into the Contact header: without <> a
    // ;transport=tcp would be a header parameter, not part of the URI
    let contact = if tcp {
        format!("<sip:{user}@127.0.0.1:{contact_port};transport=tcp>")
    } else {
        format!("<sip:{user}@127.0.0.1:{contact_port}>")
    };
    let aor = format!("sip:{user}@{domain}");
    // -p must precede -s, or sipsak tries to resolve DOMAIN
    let out = sipsak(&[
        "-U",
        "-x",
        "600",
        "-C",
        &contact,
        "-E",
        transport,
        "-p",
        &proxy,
        "-s",
        &aor,
        "-H",
        "127.0.0.1",
        "-vv",
    ]);
    assert!(
        out.success(),
        "sipsak REGISTER over {transport}: {}",
        out.text
    );

    let target = format!("sip:127.0.0.1:{server_port}");
    let out = sipsak(&["-vv", "-E", transport, "-s", &target, "-H", "127.0.0.1"]);
    assert!(
        out.success(),
        "sipsak OPTIONS over {transport}: {}",
        out.text
    );
    assert!(out.text.contains("SIP/2.0 200"), "{}", out.text);

    if tcp {
        let listener = TcpListener::bind(lo_addr(contact_port)).expect("bind contact");
        assert_routes_to_tcp_contact(server_port, &aor, &listener);
    } else {
        let sock = UdpSocket::bind(lo_addr(contact_port)).expect("bind contact");
        assert_routes_to_udp_contact(server_port, &aor, &sock);
    }
}

// ---------------------------------------------------------------------------
// Abuse: garbage, half messages and a flood, for robustness tests

/// A small deterministic generator for garbage.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Datagrams that are not SIP, or broken SIP: 200 random ones (a quarter
/// behind a plausible request line), then hand-made breakages of a good
/// REGISTER (lengths, CSeq, Via, URIs, folding, bare LF, NUL, bad UTF-8,
/// a 30 kB header, 500 Vias) and a 60 kB datagram.
pub fn garbage_datagrams(local: SocketAddr) -> Vec<Vec<u8>> {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut out: Vec<Vec<u8>> = (0..200)
        .map(|i| {
            let n = 1 + (rng.next_u64() % 1400) as usize;
            let mut b = rng.bytes(n);
            if i % 4 == 0 {
                let mut v = b"REGISTER sip:abcd.com SIP/2.0\r\nVia: ".to_vec();
                v.append(&mut b);
                b = v;
            }
            b
        })
        .collect();
    let good = SipRequest::new("REGISTER", "sip:abcd.com", local)
        .from("sip:x@abcd.com")
        .to("sip:x@abcd.com")
        .header(&format!("Contact: <sip:x@{local}>"))
        .build();
    let cl0 = "Content-Length: 0";
    let variants: Vec<String> = vec![
        String::new(),
        "\r\n\r\n".into(),
        "SIP/2.0 200 OK\r\n\r\n".into(),
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKstray\r\n\
         CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            .into(),
        "REGISTER sip:abcd.com SIP/2.0\r\n".into(),
        "REGISTER sip:abcd.com SIP/3.0\r\n\r\n".into(),
        "INVITE\r\n\r\n".into(),
        " INVITE sip:x@abcd.com SIP/2.0\r\n\r\n".into(),
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\nContent-Length: -1\r\n\r\n".into(),
        good.replace(cl0, "Content-Length: 99999999"),
        good.replace(cl0, "Content-Length: 18446744073709551617"),
        good.replace(cl0, "Content-Length: 5"),
        good.replace("CSeq: 1 REGISTER", "CSeq: REGISTER"),
        good.replace("CSeq: 1 REGISTER", "CSeq: 1 INVITE"),
        good.replace("CSeq: 1 REGISTER", "CSeq: 99999999999999999999 REGISTER"),
        good.replace("Via: ", "Via: SIP/2.0/UDP\r\nX-Via: "),
        good.replace("Via: SIP/2.0/UDP 127.0.0.1", "Via: SIP/2.0/UDP [::1"),
        good.replace("From: <sip:x@abcd.com>", "From: <sip:x@abcd.com"),
        good.replace(
            "To: <sip:x@abcd.com>",
            "To: \"unterminated <sip:x@abcd.com>",
        ),
        good.replace("Contact: <sip:x@", "Contact: <sips:x@[:::]:99999"),
        good.replace("Contact: <", "Contact: *\r\nContact: <"),
        good.replace("Max-Forwards: 70", "Max-Forwards: 0"),
        good.replace("Max-Forwards: 70", "Max-Forwards: -5"),
        good.replace("Call-ID: ", "Call-ID: \r\nX-Call-ID: "),
        good.replace("\r\n", "\n"),
        good.replace("\r\n\r\n", "\r\n"),
        good.replacen(
            "\r\n",
            &format!("\r\nX-Long: {}\r\n", "a".repeat(30_000)),
            1,
        ),
        good.replacen(
            "\r\n",
            &"\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKmany".repeat(500),
            1,
        ),
        good.replacen("\r\n", "\r\nX-Folded: a\r\n  b\r\n\tc\r\n", 1),
    ];
    out.extend(variants.into_iter().map(String::into_bytes));
    let mut nul = good.clone().into_bytes();
    nul[20] = 0;
    out.push(nul);
    let mut bad_utf8 = good.into_bytes();
    bad_utf8.splice(30..30, [0xff, 0xfe, 0xc3, 0x28]);
    out.push(bad_utf8);
    out.push(vec![b'A'; 60_000]);
    out
}

/// What [`abuse_server`] leaves behind: TCP connections held open (a
/// half message, a message whose body never comes, an idle one), closed
/// when this is dropped, and how many flood REGISTERs got a 2xx.
pub struct Abuse {
    pub held: Vec<std::net::TcpStream>,
    pub flood_ok: usize,
}

/// Abuses the SIP server on 127.0.0.1:`port`:
/// * the [`garbage_datagrams`] over UDP,
/// * over TCP: half a message on a connection left open, a message whose
///   Content-Length promises a body that never comes (left open), an idle
///   connection, 8 kB of random bytes, and a 256 kB header line that never
///   ends (both closed),
/// * a flood of 2000 REGISTERs (distinct AORs floodN@abcd.com, contacts on
///   the discard port) sent over UDP as fast as the socket takes them,
///   answers drained until 3 s of silence.
pub fn abuse_server(port: u16) -> Abuse {
    use std::io::Write as _;
    use std::net::TcpStream;
    let server = lo_addr(port);

    let sock = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    for d in garbage_datagrams(sock.local_addr().unwrap()) {
        let _ = sock.send_to(&d, server);
    }

    let mut held = Vec::new();
    let mut half = TcpStream::connect(server).unwrap();
    half.write_all(
        b"REGISTER sip:abcd.com SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKhalf\r\nContent-Le",
    )
    .unwrap();
    held.push(half);
    let mut lying = TcpStream::connect(server).unwrap();
    let local = lying.local_addr().unwrap();
    let msg = SipRequest::new("OPTIONS", &format!("sip:{server}"), local)
        .transport("TCP")
        .build()
        .replace("Content-Length: 0", "Content-Length: 1000");
    lying.write_all(msg.as_bytes()).unwrap();
    held.push(lying);
    held.push(TcpStream::connect(server).unwrap());
    {
        let mut junk = TcpStream::connect(server).unwrap();
        let _ = junk.write_all(&XorShift(42).bytes(8192));
    }
    {
        let mut endless = TcpStream::connect(server).unwrap();
        endless
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // the server may cut us off: fine
        let _ = endless.write_all(b"OPTIONS sip:abcd.com SIP/2.0\r\nX: ");
        let _ = endless.write_all(&vec![b'a'; 256 * 1024]);
    }

    let flood = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    let flood_local = flood.local_addr().unwrap();
    let reader = flood.try_clone().unwrap();
    let drain = thread::spawn(move || {
        let mut ok = 0usize;
        let mut buf = vec![0u8; 65536];
        reader
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        while let Ok((n, _)) = reader.recv_from(&mut buf) {
            if status_code(&String::from_utf8_lossy(&buf[..n])) / 100 == 2 {
                ok += 1;
            }
        }
        ok
    });
    for i in 0..2000 {
        let aor = format!("sip:flood{i}@abcd.com");
        let msg = SipRequest::new("REGISTER", "sip:abcd.com", flood_local)
            .from(&aor)
            .to(&aor)
            .header(&format!("Contact: <sip:flood{i}@127.0.0.1:9>"))
            .header("Expires: 60")
            .build();
        let _ = flood.send_to(msg.as_bytes(), server);
    }
    let flood_ok = drain.join().unwrap();
    Abuse { held, flood_ok }
}

/// After abuse: sipsak OPTIONS over UDP and TCP still get a 200, and a
/// registration and routing to it still work.
pub fn assert_still_serving(port: u16) {
    for transport in ["udp", "tcp"] {
        let target = format!("sip:127.0.0.1:{port}");
        let out = sipsak(&["-vv", "-E", transport, "-s", &target, "-H", "127.0.0.1"]);
        assert!(
            out.success() && out.text.contains("SIP/2.0 200"),
            "OPTIONS over {transport} after the abuse: {}",
            out.text
        );
    }
    sipsak_scenario(port, "udp", "after-abuse", "abcd.com", free_port());
}

// ---------------------------------------------------------------------------
// tshark

/// A tshark capture on `lo` restricted to some ports.
///
/// tshark says "Capturing on 'Loopback: lo'" a little before packets
/// really get captured, and it writes packets some time after they were
/// sent. So the capture also listens on a private probe port: `start`
/// returns once a probe datagram (a CRLF keep-alive) shows up in tshark's
/// live packet list (`-l -P`), and `stop` sends one more probe and waits
/// for it before interrupting tshark, so that everything sent before
/// `stop` is in the file. Probe frames are left out of the analysis.
pub struct Capture {
    proc: Proc,
    file: PathBuf,
    ports: Vec<u16>,
    probe_port: u16,
    stopped: bool,
    _dir: TempDir,
}

/// What [`Capture::check_well_formed`] found in a clean capture.
#[derive(Debug, Clone, Default)]
pub struct CaptureSummary {
    /// Frames in the capture.
    pub frames: usize,
    /// SIP messages the dissector decoded (several may share a frame).
    pub sip_messages: usize,
    /// SDP bodies inside those messages.
    pub sdp_bodies: usize,
    /// Count per SIP message kind: the request method ("INVITE") or the
    /// response code ("200").
    pub kinds: BTreeMap<String, usize>,
}

impl CaptureSummary {
    /// How many messages of one kind ("INVITE", "ACK", "200", ...).
    pub fn count(&self, kind: &str) -> usize {
        self.kinds.get(kind).copied().unwrap_or(0)
    }
}

impl fmt::Display for CaptureSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} frames, {} SIP messages, {} SDP bodies, {:?}",
            self.frames, self.sip_messages, self.sdp_bodies, self.kinds
        )
    }
}

impl Capture {
    /// Starts `tshark -i lo -f "port P1 or port P2 ..." -w FILE` and waits
    /// until it is capturing.
    pub fn start(ports: &[u16]) -> Capture {
        assert!(!ports.is_empty(), "a capture needs ports");
        let dir = TempDir::new("capture");
        let file = dir.join("capture.pcapng");
        let probe_port = free_port();
        let filter = ports
            .iter()
            .chain([&probe_port])
            .map(|p| format!("port {p}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let mut cmd = Command::new("tshark");
        cmd.args(["-n", "-l", "-P", "-i", "lo", "-f", &filter])
            // The probe is plain data: a port some dissector claims (MIPv6
            // took one once) would print the packet without its ports.
            .arg("-d")
            .arg(format!("udp.port=={probe_port},data"))
            .arg("-w")
            .arg(&file);
        let proc = Proc::spawn("tshark", cmd);
        proc.wait_line("Capturing on", timeout());
        let cap = Capture {
            proc,
            file,
            ports: ports.to_vec(),
            probe_port,
            stopped: false,
            _dir: dir,
        };
        cap.probe("start");
        cap
    }

    /// Sends probes until tshark lists one of them.
    fn probe(&self, when: &str) {
        let deadline = Instant::now() + timeout();
        let sock = UdpSocket::bind((LOOPBACK, 0)).expect("probe socket");
        let src = sock.local_addr().expect("probe address").port();
        let seen = format!("{src} \u{2192} {} ", self.probe_port);
        loop {
            let _ = sock.send_to(b"\r\n\r\n", (LOOPBACK, self.probe_port));
            if self
                .proc
                .try_wait_line(&seen, Duration::from_millis(200))
                .is_some()
            {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "tshark did not capture its probe at {when}\n{}",
                    self.proc.dump()
                );
            }
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Stops the capture (SIGINT, so that tshark finishes the file).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.probe("stop");
        self.proc.signal(libc::SIGINT);
        self.proc.wait_exit(timeout());
    }

    /// Stops the capture if needed and checks it: the capture ports are
    /// decoded as SIP (`-d udp.port==P,sip -d tcp.port==P,sip`) and the
    /// check fails on
    /// * any malformed packet (any protocol),
    /// * any expert item of severity warning or error, or of group
    ///   "Malformed" at any severity, inside the SIP dissector's tree (which
    ///   holds the SDP dissector's tree too),
    /// * any payload on those ports that is not SIP at all (shown as Data),
    ///   except CRLF keep-alives.
    ///
    /// The summary counts the decoded SIP messages, so a test can also
    /// assert that the capture was not empty.
    pub fn check_well_formed(&mut self) -> Result<CaptureSummary, String> {
        self.stop();
        let mut cmd = Command::new("tshark");
        cmd.args(["-n", "-V", "-r"]).arg(&self.file);
        cmd.arg("-Y")
            .arg(format!("not udp.port == {}", self.probe_port));
        for p in &self.ports {
            cmd.arg("-d").arg(format!("udp.port=={p},sip"));
            cmd.arg("-d").arg(format!("tcp.port=={p},sip"));
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run tshark -r: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "tshark -r {} failed ({}): {}",
                self.file.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let (summary, problems) = analyse_tshark_verbose(&text);
        if problems.is_empty() {
            Ok(summary)
        } else {
            Err(format!(
                "capture {} ({summary}) has problems:\n  {}",
                self.file.display(),
                problems.join("\n  ")
            ))
        }
    }

    /// [`Capture::check_well_formed`], panicking on problems or when no SIP
    /// message was decoded at all.
    pub fn assert_well_formed(&mut self) -> CaptureSummary {
        match self.check_well_formed() {
            Ok(s) if s.sip_messages > 0 => s,
            Ok(s) => panic!("capture {} has no SIP at all: {s}", self.file.display()),
            Err(e) => {
                // keep the file for inspection
                let keep = std::env::temp_dir().join(format!(
                    "wisp-failed-capture-{}-{}.pcapng",
                    std::process::id(),
                    unique()
                ));
                let _ = fs::copy(&self.file, &keep);
                panic!("{e}\n(capture copied to {})", keep.display())
            }
        }
    }
}

/// Parses `tshark -V` output: returns the summary and the list of problems
/// (see [`Capture::check_well_formed`]).
pub fn analyse_tshark_verbose(text: &str) -> (CaptureSummary, Vec<String>) {
    let mut summary = CaptureSummary::default();
    let mut problems = Vec::new();
    let mut frame = String::new();
    let mut section = String::new();
    for line in text.lines() {
        if line.trim().is_empty() || is_hex_dump_line(line) {
            continue;
        }
        if !line.starts_with(' ') {
            // a top-level protocol (or pseudo-protocol) of the frame
            section = line.to_string();
            if let Some(rest) = line.strip_prefix("Frame ") {
                frame = rest.split(':').next().unwrap_or("?").to_string();
                summary.frames += 1;
            } else if line.starts_with("Session Initiation Protocol") {
                summary.sip_messages += 1;
                let kind = line
                    .rsplit_once('(')
                    .map(|(_, k)| k.trim_end_matches(')').to_string())
                    .unwrap_or_else(|| "?".to_string());
                *summary.kinds.entry(kind).or_default() += 1;
            } else if line.starts_with("[Malformed Packet") {
                problems.push(format!("frame {frame}: {line}"));
            }
            continue;
        }
        let item = line.trim_start();
        let in_sip = section.starts_with("Session Initiation Protocol")
            || section.starts_with("[Malformed Packet");
        if in_sip {
            if item.starts_with("Session Description Protocol") {
                summary.sdp_bodies += 1;
            }
            if let Some(rest) = item.strip_prefix("[Expert Info (") {
                let (class, msg) = rest.split_once("): ").unwrap_or((rest, ""));
                let (severity, group) = class.split_once('/').unwrap_or((class, ""));
                if matches!(severity, "Error" | "Warning") || group == "Malformed" {
                    problems.push(format!(
                        "frame {frame}: {severity}/{group} in {}: {}",
                        section,
                        msg.trim_end_matches(']')
                    ));
                }
            }
        } else if section.starts_with("Data (") {
            if let Some(hex) = item.strip_prefix("Data: ") {
                let keepalive = !hex.is_empty()
                    && hex.len() % 4 == 0
                    && hex.as_bytes().chunks(4).all(|c| c == b"0d0a");
                if !keepalive {
                    let shown: String = hex.chars().take(64).collect();
                    problems.push(format!(
                        "frame {frame}: payload not decodable as SIP: {shown}..."
                    ));
                }
            }
        }
    }
    (summary, problems)
}

fn is_hex_dump_line(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 6 && b[..4].iter().all(u8::is_ascii_hexdigit) && &b[4..6] == b"  "
}

impl Drop for Capture {
    fn drop(&mut self) {
        if !self.stopped {
            self.proc.signal(libc::SIGINT);
            let _ = self.proc.try_wait_exit(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_dump_lines_are_recognised() {
        assert!(is_hex_dump_line(
            "0000  0d 0a 0d 0a                                       ...."
        ));
        assert!(!is_hex_dump_line("Data (4 bytes)"));
        assert!(!is_hex_dump_line("Frame 1: 46 bytes on wire"));
    }

    #[test]
    fn verbose_output_is_analysed() {
        let text = "\
Frame 1: 100 bytes on wire
Session Initiation Protocol (INVITE)
    Request-Line: INVITE sip:x@abcd.com SIP/2.0
    Message Body
        Session Description Protocol
Frame 2: 50 bytes on wire
Session Initiation Protocol (200)
        [Expert Info (Note/Undecoded): Unrecognised SIP header (x-wisp)]
Frame 3: 46 bytes on wire
Data (4 bytes)

0000  0d 0a 0d 0a                                       ....
    Data: 0d0a0d0a
Frame 4: 60 bytes on wire
Session Initiation Protocol (OPTIONS)
        [Expert Info (Note/Malformed): Invalid content_length]
Frame 5: 60 bytes on wire
Transmission Control Protocol, Src Port: 1
    [Expert Info (Warning/Sequence): Connection reset (RST)]
Data (3 bytes)
    Data: 414243
Frame 6: 60 bytes on wire
[Malformed Packet: SIP]
    [Expert Info (Error/Malformed): Malformed Packet (Exception occurred)]
";
        let (s, problems) = analyse_tshark_verbose(text);
        assert_eq!(s.frames, 6);
        assert_eq!(s.sip_messages, 3);
        assert_eq!(s.sdp_bodies, 1);
        assert_eq!(s.count("INVITE"), 1);
        assert_eq!(s.count("200"), 1);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].contains("frame 4") && problems[0].contains("content_length"));
        assert!(problems[1].contains("frame 5") && problems[1].contains("414243"));
        assert!(problems[2].contains("frame 6") && problems[2].contains("[Malformed Packet: SIP]"));
        assert!(problems[3].contains("Exception occurred"));
    }

    #[test]
    fn free_ports_are_distinct_and_four_digit() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let set: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(set.len(), ports.len());
        assert!(ports.iter().all(|p| (2000..=9999).contains(p)));
    }

    #[test]
    fn wait_line_consumes_lines_in_any_order() {
        let p = Proc::command(
            "sh",
            "sh",
            ["-c", "echo one; echo two >&2; echo one; echo three"],
        );
        assert_eq!(p.wait_line("three", timeout()), "three");
        assert_eq!(p.wait_line("one", timeout()), "one");
        assert_eq!(p.wait_line("two", timeout()), "two");
        assert_eq!(p.wait_line("one", timeout()), "one");
        assert_eq!(p.try_wait_line("one", Duration::from_secs(5)), None);
        assert!(p.has_line("two"));
    }

    #[test]
    fn wait_exit_reports_status() {
        let mut p = Proc::command("sh", "sh", ["-c", "echo bye; exit 3"]);
        let s = p.wait_exit(timeout());
        assert_eq!(s.code(), Some(3));
        assert_eq!(p.output(), "bye");
    }

    #[test]
    fn drop_kills_the_whole_process_group() {
        let p = Proc::command("sh", "sh", ["-c", "sleep 1000 & echo child $!; wait"]);
        let line = p.wait_line("child ", timeout());
        let grandchild: i32 = line["child ".len()..].trim().parse().unwrap();
        let leader = p.pid() as i32;
        drop(p);
        // SAFETY: signal 0 only probes for existence.
        let alive = |pid: i32| unsafe { libc::kill(pid, 0) } == 0;
        // the leader is reaped by the drop; the grandchild was killed and,
        // being re-parented, is reaped by init shortly after
        assert!(!alive(leader));
        let deadline = Instant::now() + timeout();
        while alive(grandchild) && !is_zombie(grandchild) {
            assert!(
                Instant::now() < deadline,
                "grandchild {grandchild} survived"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn is_zombie(pid: i32) -> bool {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    }

    #[test]
    fn temp_dirs_are_unique_and_removed() {
        let a = TempDir::new("t");
        let b = TempDir::new("t");
        assert_ne!(a.path(), b.path());
        let pa = a.path().to_path_buf();
        fs::write(a.join("f"), b"x").unwrap();
        drop(a);
        assert!(!pa.exists());
    }
}
