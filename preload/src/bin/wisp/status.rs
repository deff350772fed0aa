//! `wisp status`: every process of this user with wisp streams, and its
//! streams, asked over each process's status socket (see
//! preload/src/status/). Sockets whose process is gone are removed on the
//! way, never listed.

use crate::cli::{self, usage, Arg, Args, Failure};
use crate::json::{self, Value};
use crate::json_out;
use crate::place;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const HELP: &str = "\
List the processes of this user that have wisp streams, and their streams:
peer name, addresses, state, moves, last stall, bytes resent, replay ring.

Usage: wisp status [FLAGS]

Flags:
  --json             One JSON document (keys in README.md, \"wisp status\")
  --watch [SECS]     Redraw every SECS seconds (default 2) until stopped;
                     with --json, one document per line
  --count N          Stop after N redraws (implies --watch)
  -h, --help         Print this help.

Processes serve their status on $XDG_RUNTIME_DIR/wisp/<pid>.sock (or
/run/wisp/ when XDG_RUNTIME_DIR is unset); only their own user may ask.
";

/// How long one process may take to accept, and to answer.
const CONNECT_WAIT: Duration = Duration::from_secs(1);
const ANSWER_WAIT: Duration = Duration::from_secs(3);
/// The most one answer may be (the library sends at most 1 MiB).
const MAX_ANSWER: u64 = 4 << 20;

pub fn main(mut args: Args) -> cli::Result<()> {
    let mut as_json = false;
    let mut watch: Option<f64> = None;
    let mut count: Option<u64> = None;
    let mut after_watch = false;
    while let Some(arg) = args.next()? {
        let flag = match arg {
            // `--watch 5`: the seconds may follow as their own word.
            Arg::Positional(p) if after_watch => {
                watch = Some(seconds(&p)?);
                after_watch = false;
                continue;
            }
            Arg::Positional(p) => {
                return Err(usage(format!(
                    "status: unexpected argument '{p}' (see 'wisp status --help')"
                )))
            }
            Arg::Flag(f) => f,
        };
        after_watch = false;
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(());
            }
            "--json" => as_json = true,
            "--watch" => match args.inline_value() {
                Some(v) => watch = Some(seconds(&v)?),
                None => {
                    watch = Some(2.0);
                    after_watch = true;
                }
            },
            "--count" => {
                let n: u64 = args.parse()?;
                if n == 0 {
                    return Err(usage("invalid value \"0\" for --count: at least 1"));
                }
                count = Some(n);
            }
            _ => {
                return Err(usage(format!(
                    "status: unknown flag '{flag}' (see 'wisp status --help')"
                )))
            }
        }
    }
    let dir = place::dir_from(std::env::var_os("XDG_RUNTIME_DIR").as_deref());
    let (watch, count) = match (watch, count) {
        (None, None) => (None, Some(1)),
        (w, c) => (Some(w.unwrap_or(2.0)), c),
    };
    let mut out = std::io::stdout().lock();
    let mut frame = 0u64;
    loop {
        if frame > 0 {
            std::thread::sleep(Duration::from_secs_f64(watch.unwrap_or(0.0)));
        }
        let procs = collect(&dir)?;
        let text = if as_json {
            document(&procs)
        } else {
            let mut s = String::new();
            if let Some(secs) = watch {
                // Clear the screen and home the cursor, as watch(1) does.
                s += &format!("\x1b[H\x1b[2Jevery {secs}s: wisp status, {}\n\n", clock());
            }
            s + &text(&procs, &dir)
        };
        let written = out.write_all(text.as_bytes()).and_then(|_| out.flush());
        if written.is_err() {
            // A closed pipe (`wisp status --watch | head`) ends the watch.
            return Ok(());
        }
        frame += 1;
        if count.is_some_and(|c| frame >= c) {
            return Ok(());
        }
    }
}

fn seconds(v: &str) -> cli::Result<f64> {
    match v.parse::<f64>() {
        Ok(s) if s > 0.0 && s < 1e6 => Ok(s),
        _ => Err(usage(format!(
            "invalid value {v:?} for --watch: expected a positive number of seconds"
        ))),
    }
}

/// One process's entry: its answer, or why there is none.
struct Proc {
    pid: u32,
    /// The answer as sent (one JSON document) and as read.
    answer: Result<(String, Value), String>,
}

/// Ask every process with a socket in `dir`; remove the sockets of
/// processes that are gone.
fn collect(dir: &Path) -> cli::Result<Vec<Proc>> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(Vec::new());
    }
    place::check_dir(dir).map_err(Failure::Runtime)?;
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Failure::Runtime(format!("status: {}: {e}", dir.display())))?;
    let mut sockets: Vec<(u32, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        match place::parse_name(&e.file_name()) {
            // A socket being set up; left alone unless its process is gone.
            Some((pid, true)) if !place::pid_alive(pid) => {
                place::remove_if_same(&path, place::identity(&path));
            }
            Some((pid, false)) => sockets.push((pid, path)),
            Some(_) | None => {}
        }
    }
    sockets.sort();
    Ok(sockets
        .into_iter()
        .filter_map(|(pid, path)| query(pid, &path))
        .collect())
}

/// Ask one process; None when its socket turned out stale (and was
/// removed) or vanished meanwhile.
fn query(pid: u32, path: &Path) -> Option<Proc> {
    let id = place::identity(path);
    if !place::pid_alive(pid) {
        place::remove_if_same(path, id);
        return None;
    }
    let sock = match connect(path) {
        Ok(s) => s,
        // Nobody listens: its process is gone (or exec'd without us).
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            place::remove_if_same(path, id);
            return None;
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return None,
        Err(e) => {
            if !place::pid_alive(pid) {
                place::remove_if_same(path, id);
                return None;
            }
            return Some(Proc {
                pid,
                answer: Err(format!("no answer ({e})")),
            });
        }
    };
    Some(Proc {
        pid,
        answer: ask(sock),
    })
}

/// A connection to `path`, given up after [`CONNECT_WAIT`] (a process
/// whose queue is full, or stopped).
fn connect(path: &Path) -> std::io::Result<UnixStream> {
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as _;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= sun.sun_path.len() {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a fresh socket, owned by the UnixStream at once.
    let sock = unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        UnixStream::from_raw_fd(fd)
    };
    // A blocking connect of a Unix socket waits at most SO_SNDTIMEO.
    sock.set_write_timeout(Some(CONNECT_WAIT))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: a valid sockaddr_un.
    if unsafe { libc::connect(fd, &sun as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

fn peer_uid(sock: &UnixStream) -> Option<u32> {
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

fn ask(mut sock: UnixStream) -> Result<(String, Value), String> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match peer_uid(&sock) {
        Some(uid) if uid == me => {}
        other => {
            return Err(format!(
                "socket served by uid {other:?}, not {me}; not asked"
            ))
        }
    }
    let deadline = Instant::now() + ANSWER_WAIT;
    let _ = sock.set_write_timeout(Some(ANSWER_WAIT));
    sock.write_all(b"status\n")
        .map_err(|e| format!("no answer ({e})"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no whole answer in time".into());
        }
        let _ = sock.set_read_timeout(Some(left));
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() as u64 > MAX_ANSWER {
                    return Err("answer too long".into());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("no whole answer ({e})")),
        }
    }
    let text = String::from_utf8(raw).map_err(|_| "answer is not UTF-8".to_string())?;
    let value = json::parse(&text)?;
    if let Some(e) = value.get("error").and_then(Value::str) {
        return Err(format!("the process says: {e}"));
    }
    Ok((text.trim().to_string(), value))
}

/// `{"format":1,"processes":[...]}`: each process's own document as it
/// sent it; one that did not answer is `{"pid":N,"error":"..."}`.
fn document(procs: &[Proc]) -> String {
    let mut out = String::from("{\"format\":1,\"processes\":[");
    for (i, p) in procs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match &p.answer {
            Ok((raw, _)) => out.push_str(raw),
            Err(e) => {
                let mut o = json_out::Obj::new(&mut out);
                o.u64("pid", u64::from(p.pid)).str("error", e);
                o.end();
            }
        }
    }
    out.push_str("]}\n");
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The plain-text listing.
fn text(procs: &[Proc], dir: &Path) -> String {
    if procs.is_empty() {
        return format!("no wisp processes (sockets in {})\n", dir.display());
    }
    let mut s = String::new();
    for p in procs {
        let (_, v) = match &p.answer {
            Ok(a) => a,
            Err(e) => {
                s += &format!("pid {}: {e}\n\n", p.pid);
                continue;
            }
        };
        let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::str).unwrap_or("").to_string();
        let num = |v: &Value, k: &str| v.get(k).and_then(Value::u64).unwrap_or(0);
        s += &format!("pid {}  {}", p.pid, str_of(v, "program"));
        if let Some(name) = v.get("name").and_then(Value::str) {
            s += &format!("  (answers for {name})");
        }
        s.push('\n');
        let streams = v.get("streams").map(Value::array).unwrap_or(&[]);
        if streams.is_empty() {
            s += "  no open streams\n";
        }
        for st in streams {
            let name = st.get("peer_name").and_then(Value::str);
            let uri = str_of(st, "peer_uri");
            let who = match name {
                Some(n) => format!("{n} <{uri}>"),
                None => uri,
            };
            s += &format!(
                "  {who}  {} {}  {}\n",
                str_of(st, "proto"),
                str_of(st, "direction"),
                str_of(st, "state")
            );
            let addr = |k: &str| st.get(k).and_then(Value::str).unwrap_or("-").to_string();
            let fds: Vec<String> = st
                .get("fds")
                .map(Value::array)
                .unwrap_or(&[])
                .iter()
                .filter_map(Value::u64)
                .map(|f| f.to_string())
                .collect();
            s += &format!(
                "    peer {}  local {}  fd {}\n",
                addr("peer"),
                addr("local"),
                if fds.is_empty() {
                    "-".into()
                } else {
                    fds.join(",")
                }
            );
            if st.get("mobile").and_then(Value::bool) == Some(false) {
                s += "    not movable (the peer offered no key)\n";
            } else {
                let stall = st
                    .get("last_stall_ms")
                    .and_then(Value::f64)
                    .map_or("-".into(), |ms| format!("{ms:.1} ms"));
                let last = st
                    .get("resent_last")
                    .and_then(Value::u64)
                    .map_or("-".into(), bytes);
                s += &format!(
                    "    moves {}  last stall {stall}  resent {last} last, {} total\n",
                    num(st, "moves"),
                    bytes(num(st, "resent_total"))
                );
            }
            if str_of(st, "proto") == "tcp" {
                s += &format!(
                    "    sent {}  received {}  replay ring {} held of {}\n",
                    bytes(num(st, "tx_bytes")),
                    bytes(num(st, "rx_bytes")),
                    bytes(num(st, "ring_held")),
                    bytes(num(st, "ring_capacity"))
                );
            }
        }
        let total = num(v, "streams_total");
        if total > streams.len() as u64 {
            s += &format!("  ... and {} more streams\n", total - streams.len() as u64);
        }
        s.push('\n');
    }
    s
}

/// The time of day (UTC), for the watch header.
fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(4 << 20), "4.0 MiB");
    }

    #[test]
    fn listing_and_document() {
        let raw = r#"{"format":1,"pid":7,"program":"curl","name":null,"streams_total":1,"streams":[{"fds":[3],"id":"ab","proto":"tcp","direction":"out","peer_name":"bob.wxyz","peer_uri":"sip:bob@wxyz.com","peer":"10.0.2.2:80","local":"10.0.1.2:4000","state":"up","mobile":true,"moves":1,"last_stall_ms":12.5,"resent_last":0,"resent_total":0,"tx_bytes":10,"rx_bytes":2048,"ring_held":0,"ring_capacity":262144}],"truncated":false}"#;
        let procs = vec![
            Proc {
                pid: 7,
                answer: Ok((raw.into(), json::parse(raw).unwrap())),
            },
            Proc {
                pid: 9,
                answer: Err("no \"answer\"".into()),
            },
        ];
        let t = text(&procs, Path::new("/run/wisp"));
        assert!(t.contains("pid 7  curl\n"), "{t}");
        assert!(
            t.contains("bob.wxyz <sip:bob@wxyz.com>  tcp out  up"),
            "{t}"
        );
        assert!(
            t.contains("peer 10.0.2.2:80  local 10.0.1.2:4000  fd 3"),
            "{t}"
        );
        assert!(
            t.contains("moves 1  last stall 12.5 ms  resent 0 B last"),
            "{t}"
        );
        assert!(
            t.contains("received 2.0 KiB  replay ring 0 B held of 256.0 KiB"),
            "{t}"
        );
        assert!(t.contains("pid 9: no \"answer\""), "{t}");
        let d = document(&procs);
        let v = json::parse(&d).unwrap();
        let ps = v.get("processes").unwrap().array();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].get("pid").and_then(Value::u64), Some(7));
        assert_eq!(
            ps[1].get("error").and_then(Value::str),
            Some("no \"answer\"")
        );
    }
}
