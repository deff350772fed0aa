//! `wisp registrar`: a domain's registrar and proxy on one UDP+TCP port.
//!
//! Flags become a [`Options`], the core runs under `sipcore::io::Driver`,
//! and each finished transaction is one line on stderr. SIGINT or SIGTERM
//! ends it with exit status 0.

use crate::cli::{self, usage, Arg, Args, Failure};
use crate::{signals, users};
use sipcore::endpoint::{SansIo, Transmit};
use sipcore::io::Driver;
use sipcore::locate::{self, Lookup, Resolver};
use sipcore::proxy::{Config as ProxyConfig, Proxy};
use sipcore::transaction::Peer;
use std::collections::HashMap;
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
    let mut driver = Driver::bind(opts.listen).map_err(|e| {
        Failure::Runtime(format!("registrar: cannot listen on {}: {e}", opts.listen))
    })?;
    let stop = signals::on_stop(driver.waker())
        .map_err(|e| Failure::Runtime(format!("registrar: signal setup: {e}")))?;
    let local = driver.local_addr();
    if local.ip().is_unspecified() {
        return Err(usage(
            "registrar: --listen needs a concrete address (peers are told to send in-dialog requests to it)",
        ));
    }
    let mut config = ProxyConfig::new(local);
    config.domains = opts.domains.clone();
    config.routes = opts.routes.iter().cloned().collect();
    config.users = accounts
        .iter()
        .map(|u| (format!("{}@{}", u.user, u.domain), u.password.clone()))
        .collect();
    // Below info the lines would only be dropped: do not make them.
    config.log = opts.log >= Level::Info;
    if let Some(t1) = opts.t1 {
        config.timers.t1 = t1;
        config.timers.t2 = config.timers.t2.max(t1);
    }
    let mut resolver = Resolver::spawn(
        driver.waker(),
        locate::system_nameservers(),
        Duration::from_secs(2),
        HashMap::new(),
    )
    .map_err(|e| Failure::Runtime(format!("registrar: resolver thread: {e}")))?;
    let mut core = Core {
        proxy: Proxy::new(config),
        log: opts.log,
    };
    eprintln!("listening {local}");
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
        // RFC 3263 lookups run on the resolver's thread; answers come back
        // here, and wake the driver when they do.
        while let Some(r) = core.proxy.poll_resolve() {
            resolver.request(Lookup {
                domain: r.domain,
                transport: r.transport,
                port: r.port,
            });
        }
        while let Some((lookup, targets)) = resolver.poll() {
            let addrs = targets.into_iter().map(|t| t.addr).collect();
            core.proxy.resolved(&lookup.domain, addrs, Instant::now());
        }
        core.print_logs();
    }
    if opts.log >= Level::Info {
        eprintln!("stopped");
    }
    Ok(())
}

/// The proxy, with the command's logging around it.
struct Core {
    proxy: Proxy,
    log: Level,
}

impl Core {
    fn print_logs(&mut self) {
        while let Some(line) = self.proxy.poll_log() {
            if self.log >= Level::Info {
                eprintln!("{line}");
            }
        }
    }
}

fn describe(p: Peer) -> String {
    format!("{}:{}", p.transport.via_name().to_ascii_lowercase(), p.addr)
}

impl SansIo for Core {
    fn receive(&mut self, bytes: &[u8], from: Peer, now: Instant) {
        if self.log >= Level::Debug {
            eprintln!("<- {}\n{}", describe(from), String::from_utf8_lossy(bytes));
        }
        self.proxy.receive(bytes, from, now);
        self.print_logs();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.proxy.handle_timeout(now);
        self.print_logs();
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.proxy.poll_transmit()?;
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
        self.proxy.poll_timeout()
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
