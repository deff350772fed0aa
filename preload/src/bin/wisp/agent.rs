//! `wisp agent`: sipcore's user agent on its own, outside any host program.
//!
//! It exists so the SIP layer can be driven against independent peers
//! (Kamailio, Net::SIP, sipsak) with nothing else in the way, and it prints
//! one event per line on stdout so a test (or a person) can follow a call.

use crate::cli::{self, usage, Arg, Args, Failure};
use crate::signals;
use bytes::Bytes;
use sipcore::io::Driver;
use sipcore::sdp::{answer_setup, Channel, ChannelProto, ConnectionAttr, SessionDesc};
use sipcore::session;
use sipcore::transaction::{Timers, Transport};
use sipcore::ua::{Ua, UaConfig, UaEvent};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub const HELP: &str = "\
Run a SIP user agent: register, place or answer calls with a wisp data
channel offer, re-INVITE, hang up. Prints one event per line on stdout:
listening, registered CODE, call CODE, reinvite CODE, bye CODE,
incoming-call FROM, incoming-reinvite, incoming-bye, done.

Usage: wisp agent --uri SIP-URI --listen IP:PORT [FLAGS]

Flags:
  --uri URI            Our address of record, e.g. sip:alice@abcd.com (required)
  --listen IP:PORT     Local address for SIP over UDP and TCP (required; port
                       0 picks one)
  --proxy IP:PORT      Outbound proxy and registrar
  --transport udp|tcp  Transport towards the proxy (default udp)
  --password PW        Password for digest challenges
  --register           Register before anything else
  --call URI           Call URI with a TCP data channel offer
  --reinvite           In the call, send a re-INVITE after --hold-ms
  --hold-ms N          How long to keep a call up before hanging up
                       (default 500)
  --answer             Answer incoming calls (200 with a data channel answer)
  --exit-after-calls N With --answer: exit after N calls have ended
  --timeout-ms N       Give up (exit 1) after N ms (default 20000)
  --t1-ms N            SIP timer T1 in ms (default 500)
  -h, --help           Print this help.
";

struct Options {
    uri: String,
    listen: SocketAddr,
    proxy: Option<SocketAddr>,
    transport: Transport,
    password: Option<String>,
    register: bool,
    call: Option<String>,
    reinvite: bool,
    hold: Duration,
    answer: bool,
    exit_after_calls: Option<u32>,
    timeout: Duration,
    t1: Duration,
}

fn parse(mut args: Args) -> cli::Result<Option<Options>> {
    let mut o = Options {
        uri: String::new(),
        listen: "0.0.0.0:0".parse().expect("literal"),
        proxy: None,
        transport: Transport::Udp,
        password: None,
        register: false,
        call: None,
        reinvite: false,
        hold: Duration::from_millis(500),
        answer: false,
        exit_after_calls: None,
        timeout: Duration::from_secs(20),
        t1: Duration::from_millis(500),
    };
    let mut listen = None;
    while let Some(arg) = args.next()? {
        let flag = match arg {
            Arg::Flag(f) => f,
            Arg::Positional(p) => return Err(usage(format!("agent: unexpected argument '{p}'"))),
        };
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            "--uri" => o.uri = args.value()?,
            "--listen" => listen = Some(args.parse::<SocketAddr>()?),
            "--proxy" => o.proxy = Some(args.parse::<SocketAddr>()?),
            "--transport" => {
                let v = args.value()?;
                o.transport = Transport::parse(&v).ok_or_else(|| {
                    usage(format!(
                        "invalid value {v:?} for --transport: expected udp or tcp"
                    ))
                })?;
            }
            "--password" => o.password = Some(args.value()?),
            "--register" => o.register = true,
            "--call" => o.call = Some(args.value()?),
            "--reinvite" => o.reinvite = true,
            "--hold-ms" => o.hold = Duration::from_millis(args.parse()?),
            "--answer" => o.answer = true,
            "--exit-after-calls" => o.exit_after_calls = Some(args.parse()?),
            "--timeout-ms" => o.timeout = Duration::from_millis(args.parse()?),
            "--t1-ms" => o.t1 = Duration::from_millis(args.parse::<u64>()?.max(1)),
            _ => {
                return Err(usage(format!(
                    "agent: unknown flag '{flag}' (see 'wisp agent --help')"
                )))
            }
        }
    }
    if o.uri.is_empty() {
        return Err(usage("agent: --uri is required"));
    }
    o.listen = listen.ok_or_else(|| usage("agent: --listen IP:PORT is required"))?;
    Ok(Some(o))
}

/// What the agent is doing next, for the scripted (calling) side.
#[derive(Debug, PartialEq)]
enum Step {
    Registering,
    Calling,
    Holding(Instant),
    Reinviting,
    Hanging,
    Serving,
    Done,
}

pub fn main(args: Args) -> cli::Result<()> {
    let Some(o) = parse(args)? else { return Ok(()) };
    let mut driver = Driver::bind(o.listen)
        .map_err(|e| Failure::Runtime(format!("agent: cannot bind {}: {e}", o.listen)))?;
    let stop = signals::on_stop(driver.waker())
        .map_err(|e| Failure::Runtime(format!("agent: signals: {e}")))?;
    let mut local = driver.local_addr();
    if local.ip().is_unspecified() {
        if let Some(ip) = o.proxy.and_then(route_ip) {
            local.set_ip(ip);
        }
    }
    let mut config = UaConfig::new(&o.uri, o.transport, local);
    config.proxy = o.proxy;
    config.password = o.password.clone();
    config.endpoint.timers = Timers {
        t1: o.t1,
        ..Timers::default()
    };
    let mut ua = Ua::new(config)
        .ok_or_else(|| usage(format!("agent: --uri {:?} is not a SIP URI", o.uri)))?;
    println!("listening {local}");

    let start = Instant::now();
    let mut step = if o.register {
        ua.register(start);
        Step::Registering
    } else {
        Step::Calling
    };
    let mut call = None;
    let mut ended = 0u32;
    let mut failed = false;
    let mut reinvited = false;
    if step == Step::Calling {
        call = begin_call(&o, &mut ua, local, &mut step, start);
    }
    loop {
        if stop.load(Ordering::SeqCst) || start.elapsed() > o.timeout {
            if start.elapsed() > o.timeout {
                println!("timeout");
                failed = true;
            }
            break;
        }
        driver
            .step(&mut ua, Duration::from_millis(50))
            .map_err(|e| Failure::Runtime(format!("agent: {e}")))?;
        let now = Instant::now();
        while let Some(ev) = ua.poll_event() {
            match ev {
                UaEvent::Registered { .. } => {
                    if step == Step::Registering {
                        println!("registered 200");
                        call = begin_call(&o, &mut ua, local, &mut step, now);
                    }
                }
                UaEvent::RegisterFailed { code } => {
                    println!("registered {code}");
                    failed = true;
                    step = Step::Done;
                }
                UaEvent::CallAnswered { body, .. } => {
                    println!("call 200");
                    if let Err(e) = session::answered_addr(&body) {
                        println!("bad-answer {e}");
                        failed = true;
                    }
                    step = Step::Holding(now + o.hold);
                }
                UaEvent::CallFailed { code, .. } => {
                    println!("call {code}");
                    failed = true;
                    step = Step::Done;
                }
                UaEvent::ReinviteDone { code, .. } => {
                    println!("reinvite {code}");
                    failed |= !(200..300).contains(&code);
                    step = Step::Holding(now + o.hold);
                }
                UaEvent::IncomingCall {
                    call: c,
                    from,
                    body,
                    ..
                } => {
                    println!("incoming-call {from}");
                    if o.answer {
                        match answer_any(&body, local) {
                            Ok(answer) => ua.answer(&c, 200, Some(Bytes::from(answer)), now),
                            Err(code) => ua.answer(&c, code, None, now),
                        }
                    } else {
                        ua.answer(&c, 486, None, now);
                    }
                }
                UaEvent::IncomingReinvite { call: c, body } => {
                    println!("incoming-reinvite");
                    match answer_any(&body, local) {
                        Ok(a) => ua.answer(&c, 200, Some(Bytes::from(a)), now),
                        Err(code) => ua.answer(&c, code, None, now),
                    }
                }
                UaEvent::CallEnded { by_peer, .. } => {
                    if by_peer {
                        println!("incoming-bye");
                    } else {
                        println!("bye 200");
                    }
                    ended += 1;
                    if step != Step::Serving || o.exit_after_calls.is_some_and(|n| ended >= n) {
                        step = Step::Done;
                    }
                }
                UaEvent::CallConfirmed { .. }
                | UaEvent::Unregistered
                | UaEvent::OptionsDone { .. } => {}
            }
        }
        if let (Step::Holding(until), Some(c)) = (&step, &call) {
            if now >= *until {
                if o.reinvite && !reinvited {
                    reinvited = true;
                    let offer =
                        session::offer(ChannelProto::Tcp, SocketAddr::new(local.ip(), 9), 9, 2);
                    ua.reinvite(c, Bytes::from(offer), now);
                    step = Step::Reinviting;
                } else {
                    ua.hangup(c, now);
                    step = Step::Hanging;
                }
            }
        }
        if step == Step::Done {
            break;
        }
    }
    // Leave the registrar clean: unregister and give it a moment to answer.
    if o.register {
        let now = Instant::now();
        ua.unregister(now);
        let until = now + Duration::from_millis(1000);
        while Instant::now() < until {
            let _ = driver.step(&mut ua, Duration::from_millis(50));
            if std::iter::from_fn(|| ua.poll_event())
                .any(|e| matches!(e, UaEvent::Unregistered | UaEvent::RegisterFailed { .. }))
            {
                break;
            }
        }
    }
    println!("done");
    if failed {
        Err(Failure::Runtime("agent: a step failed".into()))
    } else {
        Ok(())
    }
}

fn begin_call(
    o: &Options,
    ua: &mut Ua,
    local: SocketAddr,
    step: &mut Step,
    now: Instant,
) -> Option<String> {
    match &o.call {
        Some(target) => {
            let offer = session::offer(ChannelProto::Tcp, SocketAddr::new(local.ip(), 9), 9, 1);
            let call = ua.invite(target, Bytes::from(offer), now);
            if call.is_none() {
                println!("call 0");
                *step = Step::Done;
            } else {
                *step = Step::Calling;
            }
            call
        }
        None => {
            *step = if o.answer { Step::Serving } else { Step::Done };
            None
        }
    }
}

/// Answer any readable wisp channel offer, whether or not it names an
/// application port (`a=wisp-port`): the agent is a plain SIP peer and the
/// passive end it describes is its own SIP address. 488 for anything else.
fn answer_any(offer: &[u8], local: SocketAddr) -> Result<Vec<u8>, u16> {
    let desc = SessionDesc::parse(offer).map_err(|_| 488u16)?;
    let ch = desc.channels.first().ok_or(488u16)?;
    let mut mine = Channel::new(ch.proto, local, answer_setup(ch.setup), ConnectionAttr::New);
    mine.wanted_port = ch.wanted_port;
    Ok(SessionDesc {
        session_id: 1,
        version: 1,
        origin_addr: local.ip(),
        channels: vec![mine],
    }
    .to_bytes())
}

/// The source address the kernel picks towards `dest`.
fn route_ip(dest: SocketAddr) -> Option<std::net::IpAddr> {
    let any: SocketAddr = if dest.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .ok()?;
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(dest).ok()?;
    Some(s.local_addr().ok()?.ip())
}
