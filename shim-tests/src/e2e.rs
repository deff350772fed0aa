//! Fixtures for end-to-end tests of libwisp.so: a lab, a registrar in its
//! `reg` node, and programs started in the lab's hosts with the library
//! preloaded and the wisp settings in their environment.

use crate::lab::{Lab, Node};
pub use crate::TempDir;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The release build the tests drive (scripts/test builds it first).
pub fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("WISP_TARGET_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release")
}

pub fn wisp_bin() -> PathBuf {
    let p = target_dir().join("wisp");
    assert!(
        p.is_file(),
        "{} missing: run cargo build --release first",
        p.display()
    );
    p
}

pub fn libwisp() -> PathBuf {
    let p = target_dir().join("libwisp.so");
    assert!(
        p.is_file(),
        "{} missing: run cargo build --release first",
        p.display()
    );
    p.canonicalize().unwrap()
}

/// A background process whose stdout and stderr go to files; killed (and
/// reaped) on drop, so a failing test leaves nothing running.
pub struct Bg {
    pub child: Child,
    pub name: String,
    pub out: PathBuf,
    pub err: PathBuf,
}

impl Bg {
    pub fn spawn(mut cmd: Command, dir: &TempDir, name: &str) -> Bg {
        let out = dir.join(&format!("{name}.out"));
        let err = dir.join(&format!("{name}.err"));
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Bg {
            child,
            name: name.to_string(),
            out,
            err,
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Send a signal by name (`"INT"`, `"TERM"`, ...) with kill(1), for a
    /// program that should stop the way a user stops it.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Wait until stdout or stderr contains `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "{} exited ({st}) before printing {needle:?}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} did not print {needle:?} in {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            self.name,
            self.stdout(),
            self.stderr()
        );
    }

    /// Wait for exit; panics (after killing it) past `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} still running after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which registrar/proxy the world runs in its `reg` node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxy {
    Wisp,
    Kamailio,
}

/// A lab with a registrar for wxyz.com and abcd.com, and a name map that
/// knows bob (wxyz.com) and fred (abcd.com).
pub struct World {
    pub lab: Lab,
    pub dir: TempDir,
    pub proxy: SocketAddr,
    pub hosts: PathBuf,
    pub registrar: Option<Bg>,
}

pub const HOSTS: &str = "\
# wisp name map used by the end-to-end tests
sip:bob@wxyz.com      bob.wxyz   bob
sip:fred@abcd.com     fred.abcd  fred
sip:nobody@wxyz.com   nobody.wxyz
";

impl World {
    pub fn new(tag: &str, proxy: Proxy) -> World {
        World::on(Lab::up(), tag, proxy)
    }

    /// A world in a lab brought up by the caller (with a delay, say).
    pub fn on(lab: Lab, tag: &str, proxy: Proxy) -> World {
        let dir = TempDir::new(tag);
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, HOSTS).unwrap();
        let addr = SocketAddr::new(lab.reg_ip.into(), 5060);
        let mut w = World {
            lab,
            dir,
            proxy: addr,
            hosts,
            registrar: None,
        };
        w.start_registrar(proxy);
        w
    }

    pub fn start_registrar(&mut self, proxy: Proxy) {
        let bg = match proxy {
            Proxy::Wisp => {
                let mut cmd = self.lab.exec_cmd(Node::Reg, [wisp_bin().to_str().unwrap()]);
                cmd.args([
                    "registrar",
                    "--listen",
                    &self.proxy.to_string(),
                    "--domain",
                    "wxyz.com",
                    "--domain",
                    "abcd.com",
                ]);
                let mut bg = Bg::spawn(cmd, &self.dir, "registrar");
                bg.wait_for("listening", Duration::from_secs(10));
                bg
            }
            Proxy::Kamailio => kamailio(&self.lab, Node::Reg, self.proxy, &self.dir),
        };
        self.registrar = Some(bg);
    }

    pub fn stop_registrar(&mut self) {
        self.registrar = None;
    }

    /// A command in `node` with libwisp.so preloaded and the world's settings.
    pub fn wisp_cmd<I, S>(&self, node: Node, name: Option<&str>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.lab.exec_cmd(node, args);
        cmd.env("LD_PRELOAD", libwisp())
            .env("WISP_HOSTS", &self.hosts)
            .env("WISP_PROXY", self.proxy.to_string())
            .env(
                "WISP_LOG",
                std::env::var("WISP_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("WISP_NAME");
        if let Some(n) = name {
            cmd.env("WISP_NAME", n);
        }
        cmd
    }

    /// Wait until `port` listens (TCP) in `node` and (when the program runs
    /// under WISP_NAME) its name is registered: listen() returns after that.
    pub fn wait_listening(&self, node: Node, port: u16) {
        for _ in 0..500 {
            let out = self.lab.exec_cmd(node, ["ss", "-Htln"]).output().unwrap();
            if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
                // listen() returned; registration ran inside it.
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nothing listens on {port} in {node:?}");
    }

    /// A library log file (`WISP_LOG_FILE`) in this world's directory,
    /// named after `tag`; [`LibLog::apply`] points a command at it.
    pub fn lib_log(&self, tag: &str) -> LibLog {
        LibLog {
            tag: tag.to_string(),
            path: self.dir.join(&format!("{tag}.wisp.log")),
        }
    }

    /// Write `len` random bytes to a file and return its path and SHA-256.
    pub fn random_file(&self, name: &str, len: usize) -> (PathBuf, String) {
        let p = self.dir.join(name);
        let mut src = std::fs::File::open("/dev/urandom").unwrap();
        let mut f = std::fs::File::create(&p).unwrap();
        let mut left = len;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = left.min(buf.len());
            src.read_exact(&mut buf[..n]).unwrap();
            std::io::Write::write_all(&mut f, &buf[..n]).unwrap();
            left -= n;
        }
        let h = sha256(&p);
        (p, h)
    }
}

pub fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// A program of the test suite kept in `shim-tests/py/`.
pub fn py(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name);
    assert!(p.is_file(), "{} missing", p.display());
    p
}

/// Words that mark the lines of a library log that tell a move's story:
/// the address change seen, the re-INVITE, the resume handshake.
pub const MOVE_WORDS: &[&str] = &[
    "move",
    "re-invite",
    "reinvite",
    "resume",
    "netwatch",
    "address",
    "refused",
];

/// The log file of one program's library (`WISP_LOG_FILE`).
#[derive(Clone, Debug)]
pub struct LibLog {
    pub tag: String,
    pub path: PathBuf,
}

impl LibLog {
    /// Make `cmd` log there (appending; the file is created on first use).
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("WISP_LOG_FILE", &self.path);
    }

    /// The whole log ("" before the library has written anything).
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// The lines containing any of `words`, case-insensitively.
    pub fn lines_with(&self, words: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                words.iter().any(|w| l.contains(&w.to_ascii_lowercase()))
            })
            .map(str::to_string)
            .collect()
    }

    /// The move timeline: the lines with any of [`MOVE_WORDS`].
    pub fn timeline(&self) -> Vec<String> {
        self.lines_with(MOVE_WORDS)
    }
}

/// The move timelines of several logs, for a failure message: per log, its
/// last `max` timeline lines (or its last lines of any kind if none is one).
pub fn move_timelines(logs: &[LibLog], max: usize) -> String {
    let mut s = String::new();
    for log in logs {
        let mut lines = log.timeline();
        let what = if lines.is_empty() {
            lines = log.text().lines().map(str::to_string).collect();
            "no move lines; its last lines"
        } else {
            "move lines"
        };
        let skip = lines.len().saturating_sub(max);
        s += &format!(
            "== {} ({}): {what}, {} of {}\n",
            log.tag,
            log.path.display(),
            lines.len() - skip,
            lines.len()
        );
        for l in &lines[skip..] {
            s += "   ";
            s += l;
            s += "\n";
        }
    }
    s
}

/// Run to completion with a bound; returns (status, stdout, stderr).
pub fn run(cmd: Command, timeout: Duration) -> (std::process::ExitStatus, String, String) {
    let dir = TempDir::new("run");
    let mut bg = Bg::spawn(cmd, &dir, "cmd");
    let st = bg.wait(timeout);
    (st, bg.stdout(), bg.stderr())
}

/// Kamailio as the registrar/proxy, with the minimal configuration kept in
/// shim-tests/kamailio/, listening on `addr` (UDP and TCP) in `node`.
pub fn kamailio(lab: &Lab, node: Node, addr: SocketAddr, dir: &TempDir) -> Bg {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("kamailio/kamailio.cfg");
    let run = dir.join("kamailio-run");
    std::fs::create_dir_all(&run).unwrap();
    let mut cmd = lab.exec_cmd(node, ["kamailio"]);
    cmd.arg("-DD")
        .arg("-E")
        .arg("-f")
        .arg(&cfg)
        .arg("-l")
        .arg(format!("udp:{addr}"))
        .arg("-l")
        .arg(format!("tcp:{addr}"))
        .args(["-m", "64", "-M", "8", "-n", "2"])
        .arg("-Y")
        .arg(&run)
        .arg("-P")
        .arg(run.join("kamailio.pid"));
    let mut bg = Bg::spawn(cmd, dir, "kamailio");
    bg.wait_for("INFO", Duration::from_secs(15));
    // Kamailio logs before its sockets are ready; give its workers a moment.
    std::thread::sleep(Duration::from_millis(500));
    bg
}
