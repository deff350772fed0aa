//! `wisp run`: start a program with libwisp.so preloaded (the `mptcpize
//! run` / `torsocks` convention), settings passed as environment.
//!
//! Everything is checked before the program starts: a typo in a flag must
//! fail here with a message, not later inside someone else's program.

use crate::cli::{self, usage, Arg, Args, Failure};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

pub const HELP: &str = "\
Run a program with libwisp.so preloaded, so it can reach peers by SIP name
and keep its connections when the host moves.

Usage: wisp run [FLAGS] -- COMMAND [ARGS...]

Flags (each sets the environment variable named):
  --hosts FILE          Name map, /etc/hosts shape with a SIP URI first
                        (WISP_HOSTS; default ~/.config/wisp/hosts, then
                        /etc/wisp/hosts)
  --proxy IP:PORT       Outbound proxy and registrar (WISP_PROXY)
  --transport udp|tcp   Transport to the proxy (WISP_TRANSPORT; default udp)
  --name URI            SIP URI this program answers for when it listens
                        (WISP_NAME)
  --log LEVEL           error, warn, info, debug or trace (WISP_LOG; default
                        warn)
  --log-file FILE       Log there instead of stderr (WISP_LOG_FILE)
  --connect-timeout S   Seconds connect() waits for the SIP set-up
                        (WISP_CONNECT_TIMEOUT; default 10)
  --move-timeout S      Seconds a stream waits for a move to finish
                        (WISP_MOVE_TIMEOUT; default 300)
  -h, --help            Print this help.

The libwisp.so next to this wisp binary is put first in LD_PRELOAD, before
any library already there.
";

pub fn main(mut args: Args) -> cli::Result<()> {
    let mut env: Vec<(&'static str, String)> = Vec::new();
    let mut command: Vec<String> = Vec::new();
    while let Some(arg) = args.next()? {
        let flag = match arg {
            Arg::Flag(f) if f == "--" => {
                command = args.rest();
                break;
            }
            Arg::Flag(f) => f,
            Arg::Positional(p) => {
                command.push(p);
                command.extend(args.rest());
                break;
            }
        };
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(());
            }
            "--hosts" => {
                let f = args.value()?;
                if !PathBuf::from(&f).is_file() {
                    return Err(usage(format!("run: --hosts {f:?}: no such file")));
                }
                env.push(("WISP_HOSTS", f));
            }
            "--proxy" => env.push(("WISP_PROXY", args.parse::<SocketAddr>()?.to_string())),
            "--transport" => {
                let v = args.value()?;
                if !matches!(v.to_ascii_lowercase().as_str(), "udp" | "tcp") {
                    return Err(usage(format!(
                        "invalid value {v:?} for --transport: expected udp or tcp"
                    )));
                }
                env.push(("WISP_TRANSPORT", v));
            }
            "--name" => {
                let v = args.value()?;
                if !v.contains('@')
                    || sipcore::msg::parse_whole::<sipcore::msg::SipUri>(&v).is_none()
                {
                    return Err(usage(format!(
                        "invalid value {v:?} for --name: expected a SIP URI like sip:bob@wxyz.com"
                    )));
                }
                env.push(("WISP_NAME", v));
            }
            "--log" => {
                let v = args.value()?;
                if !matches!(v.as_str(), "error" | "warn" | "info" | "debug" | "trace") {
                    return Err(usage(format!(
                        "invalid value {v:?} for --log: expected error, warn, info, debug or trace"
                    )));
                }
                env.push(("WISP_LOG", v));
            }
            "--log-file" => env.push(("WISP_LOG_FILE", args.value()?)),
            "--connect-timeout" | "--move-timeout" => {
                let secs: f64 = args.parse()?;
                if !(secs > 0.0 && secs < 1e7) {
                    return Err(usage(format!("invalid value \"{secs}\" for {flag}: expected a positive number of seconds")));
                }
                let var = if flag == "--connect-timeout" {
                    "WISP_CONNECT_TIMEOUT"
                } else {
                    "WISP_MOVE_TIMEOUT"
                };
                env.push((var, secs.to_string()));
            }
            _ => {
                return Err(usage(format!(
                    "run: unknown flag '{flag}' (see 'wisp run --help')"
                )))
            }
        }
    }
    if command.is_empty() {
        return Err(usage(
            "run: no command given (wisp run [FLAGS] -- COMMAND [ARGS...])",
        ));
    }
    let lib = library()?;
    let preload = match std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        Some(existing) => {
            let mut v = OsString::from(&lib);
            v.push(":");
            v.push(existing);
            v
        }
        None => OsString::from(&lib),
    };
    let err = std::process::Command::new(&command[0])
        .args(&command[1..])
        .envs(env)
        .env("LD_PRELOAD", preload)
        .exec();
    Err(Failure::Runtime(format!(
        "run: cannot run {:?}: {err}",
        command[0]
    )))
}

/// The libwisp.so installed beside this binary, as an absolute path (a
/// relative one would break as soon as the program changes directory).
fn library() -> cli::Result<PathBuf> {
    let exe =
        std::env::current_exe().map_err(|e| Failure::Runtime(format!("run: where am I? {e}")))?;
    let lib = exe.with_file_name("libwisp.so");
    if !lib.is_file() {
        return Err(Failure::Runtime(format!(
            "run: {} not found (it is built beside the wisp binary by 'cargo build --release')",
            lib.display()
        )));
    }
    Ok(lib)
}
