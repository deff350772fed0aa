//! `wisp registrar`: a domain's registrar and proxy on one UDP+TCP port.
//!
//! Flags become a [`Options`], the core runs under `sipcore::io::Driver`,
//! and each finished transaction is one line on stderr. SIGINT or SIGTERM
//! ends it with exit status 0.

use crate::cli::{self, usage, Arg, Args, Failure};
use crate::{signals, users};
use sipcore::endpoint::{Config, Endpoint, Event, SansIo, Transmit};
use sipcore::io::Driver;
use sipcore::msg::{Message, Method, Name};
use sipcore::transaction::{Peer, Timers};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub const HELP: &str = "\
Run a SIP registrar and proxy for one or more domains.

Usage: wisp registrar --listen IP:PORT --domain DOMAIN [FLAGS]

Flags:
  --listen IP:PORT       Address for both UDP and TCP (required). Port 0 picks
                         a free port; the one chosen is printed as
                         'listening IP:PORT' on stderr once bound.
  --domain DOMAIN        A domain this registrar is authoritative for
                         (required; repeat for more domains).
  --route DOMAIN=IP:PORT Send requests for DOMAIN to IP:PORT instead of looking
                         up its DNS SRV/A/AAAA records (repeatable).
  --users FILE           Accounts that may register, one 'user@domain:password'
                         a line; '#' starts a comment line. Without it anyone
                         may register.
  --log LEVEL            What to print on stderr: error, warn, info (default:
                         one line per transaction) or debug (also every
                         message).
  --t1-ms N              SIP timer T1 in milliseconds (default 500); timeouts
                         scale with it (64*T1).
  -h, --help             Print this help.

SIGINT or SIGTERM stops the registrar (exit status 0).
";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl std::str::FromStr for Level {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Level, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Ok(Level::Error),
            "warn" => Ok(Level::Warn),
            "info" => Ok(Level::Info),
            "debug" => Ok(Level::Debug),
            _ => Err("expected error, warn, info or debug"),
        }
    }
}

#[derive(Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub domains: Vec<String>,
    pub routes: Vec<(String, SocketAddr)>,
    pub users: Option<PathBuf>,
    pub log: Level,
    pub t1: Option<Duration>,
}

/// A domain as a flag gives it: lowercased, letters, digits, dots, dashes.
fn domain(flag: &str, value: &str) -> cli::Result<String> {
    let d = value.trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if ok {
        Ok(d)
    } else {
        Err(usage(format!(
            "invalid value {value:?} for {flag}: not a domain name"
        )))
    }
}

/// `None` when help was asked for (and printed).
pub fn parse(mut args: Args) -> cli::Result<Option<Options>> {
    let mut listen = None;
    let mut domains = Vec::new();
    let mut routes = Vec::new();
    let mut users = None;
    let mut log = Level::Info;
    let mut t1 = None;
    while let Some(arg) = args.next()? {
        let flag = match arg {
            Arg::Flag(f) => f,
            Arg::Positional(p) => {
                return Err(usage(format!(
                    "registrar: unexpected argument '{p}' (see 'wisp registrar --help')"
                )))
            }
        };
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            "--listen" => listen = Some(args.parse::<SocketAddr>()?),
            "--domain" => domains.push(domain(&flag, &args.value()?)?),
            "--route" => {
                let value = args.value()?;
                let bad = |why: &str| usage(format!("invalid value {value:?} for --route: {why}"));
                let (d, addr) = value
                    .split_once('=')
                    .ok_or_else(|| bad("expected DOMAIN=IP:PORT"))?;
                let addr = addr
                    .parse::<SocketAddr>()
                    .map_err(|_| bad("expected DOMAIN=IP:PORT"))?;
                routes.push((domain("--route", d)?, addr));
            }
            "--users" => users = Some(PathBuf::from(args.value()?)),
            "--log" => log = args.parse()?,
            "--t1-ms" => {
                let ms: u64 = args.parse()?;
                if !(1..=60_000).contains(&ms) {
                    return Err(usage(format!(
                        "invalid value \"{ms}\" for --t1-ms: expected 1 to 60000"
                    )));
                }
                t1 = Some(Duration::from_millis(ms));
            }
            _ => {
                return Err(usage(format!(
                    "registrar: unknown flag '{flag}' (see 'wisp registrar --help')"
                )))
            }
        }
    }
    let listen = listen.ok_or_else(|| usage("registrar: --listen IP:PORT is required"))?;
    if domains.is_empty() {
        return Err(usage("registrar: at least one --domain is required"));
    }
    Ok(Some(Options {
        listen,
        domains,
        routes,
        users,
        log,
        t1,
    }))
}

pub fn main(args: Args) -> cli::Result<()> {
    let Some(opts) = parse(args)? else {
        return Ok(());
    };
    let accounts = match &opts.users {
        Some(path) => users::load(path).map_err(Failure::Runtime)?,
        None => Vec::new(),
    };
    let mut timers = Timers::default();
    if let Some(t1) = opts.t1 {
        timers.t1 = t1;
        timers.t2 = timers.t2.max(t1);
    }
    let config = Config {
        timers,
        ..Config::default()
    };

    let mut driver = Driver::bind(opts.listen).map_err(|e| {
        Failure::Runtime(format!("registrar: cannot listen on {}: {e}", opts.listen))
    })?;
    let stop = signals::on_stop(driver.waker())
        .map_err(|e| Failure::Runtime(format!("registrar: signal setup: {e}")))?;
    let mut core = Stub::new(Endpoint::new(config), opts.log);
    eprintln!("listening {}", driver.local_addr());
    if opts.log >= Level::Info {
        eprintln!(
            "domains {}; {} account(s); {} static route(s)",
            opts.domains.join(", "),
            accounts.len(),
            opts.routes.len()
        );
    }
    while !stop.load(Ordering::SeqCst) {
        driver
            .step(&mut core, Duration::from_secs(1))
            .map_err(|e| Failure::Runtime(format!("registrar: {e}")))?;
    }
    if opts.log >= Level::Info {
        eprintln!("stopped");
    }
    Ok(())
}

/// Stand-in for sipcore's proxy until it lands: answers OPTIONS and
/// REGISTER with 200 and anything else with 501, so the command's plumbing
/// (flags, sockets, logging, signals) can be run and tested now.
struct Stub {
    ep: Endpoint,
    log: Level,
}

impl Stub {
    fn new(ep: Endpoint, log: Level) -> Stub {
        Stub { ep, log }
    }

    fn answer(&mut self, now: Instant) {
        while let Some(ev) = self.ep.poll_event() {
            match ev {
                Event::Request { key, msg, from } => {
                    let method = msg.method().cloned();
                    let code = match method {
                        Some(Method::OPTIONS) | Some(Method::REGISTER) => 200,
                        _ => 501,
                    };
                    let mut resp = Message::response_to(&msg, code, Some(&sipcore::ids::tag()));
                    if method == Some(Method::REGISTER) {
                        for (raw, _) in msg.contacts() {
                            resp.add(Name::CONTACT, raw);
                        }
                    }
                    self.ep.respond(&key, resp, now);
                    if self.log >= Level::Info {
                        // The request line without its "SIP/2.0".
                        let text = msg.to_string();
                        let line = text.lines().next().unwrap_or_default();
                        let line = line.strip_suffix(" SIP/2.0").unwrap_or(line);
                        eprintln!("{line} from {} -> {code}", describe(from));
                    }
                }
                Event::Malformed { from, error } if self.log >= Level::Warn => {
                    eprintln!("malformed from {}: {error}", describe(from));
                }
                _ => {}
            }
        }
    }
}

fn describe(p: Peer) -> String {
    format!("{}:{}", p.transport.via_name().to_ascii_lowercase(), p.addr)
}

impl SansIo for Stub {
    fn receive(&mut self, bytes: &[u8], from: Peer, now: Instant) {
        if self.log >= Level::Debug {
            eprintln!("<- {}\n{}", describe(from), String::from_utf8_lossy(bytes));
        }
        self.ep.receive(bytes, from, now);
        self.answer(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.ep.handle_timeout(now);
        self.answer(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.ep.poll_transmit()?;
        if self.log >= Level::Debug {
            eprintln!(
                "-> {}\n{}",
                describe(t.to),
                String::from_utf8_lossy(&t.bytes)
            );
        }
        Some(t)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.ep.poll_timeout()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn parse_words(words: &[&str]) -> cli::Result<Option<Options>> {
        parse(Args::new(words.iter().map(OsString::from).collect()).unwrap())
    }

    fn usage_error(words: &[&str]) -> String {
        match parse_words(words) {
            Err(Failure::Usage(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn all_flags() {
        let o = parse_words(&[
            "--listen",
            "[::1]:5060",
            "--domain",
            "A.example",
            "--domain=b.example",
            "--route",
            "c.example=192.0.2.1:5070",
            "--users",
            "/x",
            "--log",
            "debug",
            "--t1-ms",
            "100",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(o.listen, "[::1]:5060".parse().unwrap());
        assert_eq!(o.domains, ["a.example", "b.example"]);
        assert_eq!(
            o.routes,
            [("c.example".to_string(), "192.0.2.1:5070".parse().unwrap())]
        );
        assert_eq!(o.log, Level::Debug);
        assert_eq!(o.t1, Some(Duration::from_millis(100)));
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(usage_error(&["--listen", "nope", "--domain", "a"]).contains("--listen"));
        assert!(usage_error(&["--listen", "1.2.3.4:5", "--domain", "a b"]).contains("--domain"));
        assert!(
            usage_error(&["--listen", "1.2.3.4:5", "--domain", "a", "--route", "x"])
                .contains("--route")
        );
        assert!(
            usage_error(&["--listen", "1.2.3.4:5", "--domain", "a", "--t1-ms", "0"])
                .contains("--t1-ms")
        );
        assert!(
            usage_error(&["--listen", "1.2.3.4:5", "--domain", "a", "--log", "loud"])
                .contains("--log")
        );
        assert!(usage_error(&["--frobnicate"]).contains("--frobnicate"));
        assert!(usage_error(&["--domain", "a"]).contains("--listen"));
        assert!(usage_error(&["--listen", "1.2.3.4:5"]).contains("--domain"));
    }
}
