//! The background SIP thread: one per process, started the first time a
//! wisp name is used (and again in a forked child that needs it).
//!
//! Program threads talk to it with [`Command`]s over a channel and wake it
//! through the driver's eventfd; it answers each connect on a channel of its
//! own. All SIP state lives on this thread, so the sans-IO user agent needs
//! no locks.

use crate::config::Config;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use sipcore::io::{Driver, Waker};
use sipcore::sdp::ChannelProto;
use sipcore::session;
use sipcore::transaction::Transport;
use sipcore::ua::{CallId, Ua, UaConfig, UaEvent};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// The outcome of a connect by name: the call and the peer's real address,
/// or the errno the program should see.
pub type ConnectResult = Result<(CallId, SocketAddr), i32>;

pub enum Command {
    Connect {
        uri: String,
        proto: ChannelProto,
        local: SocketAddr,
        wanted_port: u16,
        reply: Sender<ConnectResult>,
    },
    Listen {
        proto: ChannelProto,
        port: u16,
        registered: Sender<bool>,
    },
    Unlisten {
        proto: ChannelProto,
        port: u16,
    },
    Hangup {
        call: CallId,
    },
}

pub struct Handle {
    tx: Sender<Command>,
    waker: Waker,
    pid: u32,
    /// The address our SIP and data sockets use: towards the proxy.
    pub local_ip: IpAddr,
}

impl Handle {
    pub fn send(&self, c: Command) {
        if self.tx.send(c).is_ok() {
            self.waker.wake();
        }
    }
}

static HANDLE: Mutex<Option<&'static Handle>> = Mutex::new(None);

/// The SIP thread of this process, started on first use. A child of fork
/// sees its parent's handle with another pid and starts its own thread.
pub fn handle() -> Result<&'static Handle, String> {
    let mut h = HANDLE.lock();
    let pid = std::process::id();
    if let Some(existing) = *h {
        if existing.pid == pid {
            return Ok(existing);
        }
    }
    let started: &'static Handle = Box::leak(Box::new(start(&crate::state::shared().config)?));
    *h = Some(started);
    Ok(started)
}

/// The source address the kernel would use towards `dest`: asked with a
/// connected UDP socket, which sends nothing.
pub fn route_ip(dest: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match dest {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(any).ok()?;
    s.connect(dest).ok()?;
    Some(s.local_addr().ok()?.ip())
}

fn start(config: &Config) -> Result<Handle, String> {
    let local_ip = match config.proxy {
        Some(p) => route_ip(p).ok_or_else(|| format!("no route to WISP_PROXY {p}"))?,
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let bind: SocketAddr = match local_ip {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, config.sip_port).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, config.sip_port).into(),
    };
    let driver = Driver::bind(bind).map_err(|e| format!("cannot bind SIP socket {bind}: {e}"))?;
    let local = SocketAddr::new(local_ip, driver.local_addr().port());
    let transport = if config.tcp {
        Transport::Tcp
    } else {
        Transport::Udp
    };
    let aor = config
        .name
        .clone()
        .unwrap_or_else(|| format!("sip:anonymous@{}", sipcore::endpoint::host_port(local)));
    let mut ua_config = UaConfig::new(&aor, transport, local);
    ua_config.proxy = config.proxy;
    ua_config.register_expires = 300;
    let ua =
        Ua::new(ua_config).ok_or_else(|| format!("WISP_NAME {aor} is not a usable SIP URI"))?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let waker = driver.waker();
    let thread = SipThread {
        driver,
        ua,
        rx,
        local_ip,
        listening: HashSet::new(),
        connects: HashMap::new(),
        registered_waiters: Vec::new(),
        registered: false,
    };
    std::thread::Builder::new()
        .name("wisp-sip".into())
        .spawn(move || thread.run())
        .map_err(|e| format!("cannot start the SIP thread: {e}"))?;
    info!("SIP thread up at {local} as {aor}");
    Ok(Handle {
        tx,
        waker,
        pid: std::process::id(),
        local_ip,
    })
}

struct SipThread {
    driver: Driver,
    ua: Ua,
    rx: Receiver<Command>,
    local_ip: IpAddr,
    listening: HashSet<(ChannelProto, u16)>,
    connects: HashMap<CallId, (String, Sender<ConnectResult>)>,
    registered_waiters: Vec<Sender<bool>>,
    registered: bool,
}

impl SipThread {
    fn run(mut self) {
        crate::state::Inside::forever();
        loop {
            if let Err(e) = self.driver.step(&mut self.ua, Duration::from_millis(200)) {
                warn!("SIP driver: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            let now = Instant::now();
            while let Ok(c) = self.rx.try_recv() {
                self.command(c, now);
            }
            while let Some(ev) = self.ua.poll_event() {
                self.event(ev, now);
            }
        }
    }

    fn command(&mut self, c: Command, now: Instant) {
        match c {
            Command::Connect {
                uri,
                proto,
                local,
                wanted_port,
                reply,
            } => {
                let body = session::offer(proto, local, wanted_port, session_id());
                match self.ua.invite(&uri, body.into(), now) {
                    Some(call) => {
                        debug!("INVITE {uri} port {wanted_port} from {local}: call {call}");
                        self.connects.insert(call, (uri, reply));
                    }
                    None => {
                        warn!("connect to {uri}: not a routable SIP URI (set WISP_PROXY?)");
                        let _ = reply.send(Err(session::libc_errno::EHOSTUNREACH));
                    }
                }
            }
            Command::Listen {
                proto,
                port,
                registered,
            } => {
                self.listening.insert((proto, port));
                if self.registered {
                    let _ = registered.send(true);
                } else {
                    let first = self.registered_waiters.is_empty();
                    self.registered_waiters.push(registered);
                    if first {
                        self.ua.register(now);
                    }
                }
            }
            Command::Unlisten { proto, port } => {
                self.listening.remove(&(proto, port));
            }
            Command::Hangup { call } => {
                self.connects.remove(&call);
                self.ua.hangup(&call, now);
            }
        }
    }

    fn event(&mut self, ev: UaEvent, now: Instant) {
        match ev {
            UaEvent::Registered { expires } => {
                if !self.registered {
                    info!("registered {} for {expires} s", self.ua.config.aor);
                }
                self.registered = true;
                for w in self.registered_waiters.drain(..) {
                    let _ = w.send(true);
                }
            }
            UaEvent::RegisterFailed { code } => {
                warn!(
                    "registering {} failed: {}",
                    self.ua.config.aor,
                    if code == 0 {
                        "no answer from the registrar".to_string()
                    } else {
                        format!("SIP {code}")
                    }
                );
                for w in self.registered_waiters.drain(..) {
                    let _ = w.send(false);
                }
            }
            UaEvent::IncomingCall {
                call, from, body, ..
            } => {
                let listening = &self.listening;
                match session::answer(
                    &body,
                    self.local_ip,
                    |p, port| listening.contains(&(p, port)),
                    session_id(),
                ) {
                    Ok(acc) => {
                        info!(
                            "stream from {from} to port {} accepted (call {call})",
                            acc.port
                        );
                        crate::engine::expect_caller(acc.caller, call.clone());
                        self.ua.answer(&call, 200, Some(acc.answer.into()), now);
                    }
                    Err(r) => {
                        warn!("refused stream from {from}: {}", r.reason);
                        self.ua.answer(&call, r.code, None, now);
                    }
                }
            }
            UaEvent::CallAnswered { call, body } => {
                let Some((uri, reply)) = self.connects.remove(&call) else {
                    // The program gave up waiting: end the call it no longer wants.
                    self.ua.hangup(&call, now);
                    return;
                };
                match session::answered_addr(&body) {
                    Ok(addr) => {
                        debug!("{uri} answered: data at {addr}");
                        let _ = reply.send(Ok((call, addr)));
                    }
                    Err(e) => {
                        warn!("connect to {uri}: {e}");
                        self.ua.hangup(&call, now);
                        let _ = reply.send(Err(session::libc_errno::EHOSTUNREACH));
                    }
                }
            }
            UaEvent::CallFailed { call, code } => {
                if let Some((uri, reply)) = self.connects.remove(&call) {
                    let errno = session::errno_for_status(code);
                    warn!("connect to {uri} failed: {}", describe(code));
                    let _ = reply.send(Err(errno));
                }
            }
            UaEvent::IncomingReinvite { call, .. } => {
                // Moves arrive with the mobility engine; until then keep the
                // session as it is.
                self.ua.answer(&call, 488, None, now);
            }
            UaEvent::CallEnded { call, .. } => {
                self.connects.remove(&call);
                crate::engine::forget_call(&call);
            }
            UaEvent::CallConfirmed { .. }
            | UaEvent::ReinviteDone { .. }
            | UaEvent::Unregistered
            | UaEvent::OptionsDone { .. } => {}
        }
    }
}

fn describe(code: u16) -> String {
    match code {
        0 | 408 => "no answer (the registrar or the peer is unreachable)".into(),
        404 => "SIP 404: nobody has that name".into(),
        480 => "SIP 480: the name is registered nowhere now".into(),
        488 => "SIP 488: the peer does not listen on that port".into(),
        c => format!("SIP {c}"),
    }
}

fn session_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1)
}
