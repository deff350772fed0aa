//! `wisp registrar` as a user runs it: a real process on a free loopback
//! port, spoken to over raw UDP and TCP sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WISP: &str = env!("CARGO_BIN_EXE_wisp");

/// A running registrar; killed if the test fails before stopping it.
struct Registrar {
    child: Child,
    addr: SocketAddr,
    stderr: mpsc::Receiver<String>,
}

impl Registrar {
    fn start(extra: &[&str]) -> Registrar {
        let mut child = Command::new(WISP)
            .args([
                "registrar",
                "--listen",
                "127.0.0.1:0",
                "--domain",
                "example.test",
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stderr) = mpsc::channel();
        let pipe = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in pipe.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = stderr.recv_timeout(Duration::from_secs(20)).unwrap();
        let addr = first
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("first line {first:?}"))
            .parse()
            .unwrap();
        Registrar {
            child,
            addr,
            stderr,
        }
    }

    /// Wait for a stderr line containing `needle`.
    fn expect_log(&self, needle: &str) -> String {
        loop {
            let line = self
                .stderr
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn stop(mut self, signal: libc::c_int) -> i32 {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        let status = self.child.wait().unwrap();
        status.code().unwrap_or(-1)
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn options(transport: &str, me: SocketAddr, call_id: &str) -> String {
    format!(
        "OPTIONS sip:example.test SIP/2.0\r\n\
Via: SIP/2.0/{transport} {me};branch=z9hG4bK{call_id};rport\r\n\
Max-Forwards: 70\r\nTo: <sip:example.test>\r\nFrom: <sip:t@example.test>;tag=t1\r\n\
Call-ID: {call_id}@{me}\r\nCSeq: 1 OPTIONS\r\nContact: <sip:t@{me}>\r\n\
Content-Length: 0\r\n\r\n"
    )
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or_default()
}

#[test]
fn registrar_answers_options_over_udp_and_tcp_and_stops_on_sigterm() {
    let reg = Registrar::start(&["--t1-ms", "100"]);

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let me = udp.local_addr().unwrap();
    udp.send_to(options("UDP", me, "udp1").as_bytes(), reg.addr)
        .unwrap();
    let mut buf = [0u8; 4096];
    let (n, from) = udp.recv_from(&mut buf).unwrap();
    assert_eq!(from, reg.addr);
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert_eq!(status_line(&text), "SIP/2.0 200 OK", "{text}");
    assert!(text.contains("udp1@"));
    let line = reg.expect_log("call-id=udp1@");
    assert!(
        line.starts_with("OPTIONS") && line.contains("result=200"),
        "{line}"
    );

    let mut tcp = TcpStream::connect(reg.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let me = tcp.local_addr().unwrap();
    tcp.write_all(options("TCP", me, "tcp1").as_bytes())
        .unwrap();
    let mut text = String::new();
    while !text.contains("\r\n\r\n") {
        let n = tcp.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed after {text:?}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(status_line(&text), "SIP/2.0 200 OK", "{text}");
    assert!(text.contains("tcp1@"));
    let line = reg.expect_log("call-id=tcp1@");
    assert!(line.contains("result=200"), "{line}");

    assert_eq!(reg.stop(libc::SIGTERM), 0);
}

#[test]
fn sigint_stops_cleanly() {
    let reg = Registrar::start(&["--log", "error"]);
    assert_eq!(reg.stop(libc::SIGINT), 0);
}

fn wisp(args: &[&str]) -> std::process::Output {
    Command::new(WISP).args(args).output().unwrap()
}

#[test]
fn help_documents_every_flag() {
    let out = wisp(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("registrar"));
    let out = wisp(&["registrar", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen", "--domain", "--route", "--users", "--log", "--t1-ms", "--help",
    ] {
        assert!(text.contains(flag), "{flag} missing from help");
    }
}

#[test]
fn bad_flags_and_values_exit_2_naming_the_flag() {
    for (args, flag) in [
        (&["registrar", "--frobnicate"][..], "--frobnicate"),
        (
            &["registrar", "--listen", "nowhere", "--domain", "a"][..],
            "--listen",
        ),
        (
            &[
                "registrar",
                "--listen",
                "127.0.0.1:0",
                "--domain",
                "a",
                "--t1-ms",
                "x",
            ][..],
            "--t1-ms",
        ),
        (&["--nope"][..], "--nope"),
        (&["nope"][..], "nope"),
    ] {
        let out = wisp(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[test]
fn bad_users_file_names_file_and_line() {
    let dir = std::env::temp_dir().join(format!("wisp-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("users");
    std::fs::write(
        &path,
        "# accounts\nalice@example.test:pw\nbob-without-domain\n",
    )
    .unwrap();
    let path_str = path.to_str().unwrap();
    let out = wisp(&[
        "registrar",
        "--listen",
        "127.0.0.1:0",
        "--domain",
        "example.test",
        "--users",
        path_str,
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{path_str}:3")), "{err}");
}
