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
use sipcore::ids::StreamId;
use sipcore::io::{Driver, Waker};
use sipcore::keys::{self, KeySecret, KeyShare};
use sipcore::mobility::{self, Move};
use sipcore::sdp::ChannelProto;
use sipcore::sdp::Setup;
use sipcore::session;
use sipcore::transaction::Transport;
use sipcore::ua::{CallId, Ua, UaConfig, UaEvent};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// A connect by name that worked: the call, the peer's data address, the
/// stream's keys (when the peer can move streams) and the peer's SIP
/// address (where a moved stream resumes).
pub struct Connected {
    pub call: CallId,
    pub addr: SocketAddr,
    pub mobility: Option<crate::table::Keys>,
    pub peer_sip: Option<SocketAddr>,
}

/// The outcome of a connect by name, or the errno the program should see.
pub type ConnectResult = Result<Connected, i32>;

/// What the caller keeps of its offer until the answer comes.
struct Offered {
    uri: String,
    reply: Sender<ConnectResult>,
    secret: Option<KeySecret>,
    mobility: Option<session::Mobility>,
}

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
    /// The host's addresses or routes changed (from the netlink watcher),
    /// the first of the changes at `since`.
    NetChanged {
        since: Instant,
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

fn start(config: &Config) -> Result<Handle, String> {
    let local_ip = match config.proxy {
        Some(p) => {
            crate::routes::route_ip(p).ok_or_else(|| format!("no route to WISP_PROXY {p}"))?
        }
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
    let mut driver = driver;
    driver.set_handoff(sipcore::io::Handoff {
        magic: b"WISP",
        take: Box::new(crate::mover::accept_resume),
    });
    let waker = driver.waker();
    start_watcher(tx.clone(), waker.clone());
    let thread = SipThread {
        driver,
        ua,
        rx,
        local_ip,
        listening: HashSet::new(),
        connects: HashMap::new(),
        registered_waiters: Vec::new(),
        registered: false,
        move_timeout: config.move_timeout,
        proxy: config.proxy,
        moves_out: HashMap::new(),
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
    connects: HashMap<CallId, Offered>,
    registered_waiters: Vec<Sender<bool>>,
    registered: bool,
    move_timeout: Duration,
    proxy: Option<SocketAddr>,
    /// Our latest move re-INVITE per call, until the peer has it: sent
    /// straight to the peer's Contact first, through the proxy if that
    /// goes unanswered (the peer may have moved too).
    moves_out: HashMap<CallId, OutMove>,
}

struct OutMove {
    body: bytes::Bytes,
    via_proxy: bool,
    sent: bool,
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
                // A key share and a stream id make the stream movable; if
                // getrandom fails the stream simply cannot move.
                let (secret, mobility) = match KeyShare::generate() {
                    Ok((secret, public)) => (
                        Some(secret),
                        Some(session::Mobility {
                            key_share: public,
                            stream: StreamId::random(),
                        }),
                    ),
                    Err(e) => {
                        warn!("no key share for the stream ({e}); it will not survive a move");
                        (None, None)
                    }
                };
                let body = session::offer_mobile(
                    proto,
                    local,
                    wanted_port,
                    session_id(),
                    mobility.as_ref(),
                );
                match self.ua.invite(&uri, body.into(), now) {
                    Some(call) => {
                        debug!("INVITE {uri} port {wanted_port} from {local}: call {call}");
                        self.connects.insert(
                            call,
                            Offered {
                                uri,
                                reply,
                                secret,
                                mobility,
                            },
                        );
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
            Command::NetChanged { since } => {
                self.net_changed(now, since);
                crate::datagrams::flush_all();
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
                let share = KeyShare::generate().ok();
                let answered = session::answer_mobile(
                    &body,
                    self.local_ip,
                    |p, port| listening.contains(&(p, port)),
                    session_id(),
                    share.as_ref().map(|(_, public)| public),
                    |id| crate::table::stream_by_id(id).is_some(),
                );
                match answered {
                    Ok(acc) => {
                        info!(
                            "stream from {from} to port {} accepted (call {call})",
                            acc.port
                        );
                        let mobility = match (share, acc.offered) {
                            (Some((secret, ours)), Some(theirs)) => {
                                match keys::derive(
                                    secret,
                                    &theirs.key_share,
                                    &call,
                                    &theirs.key_share,
                                    &ours,
                                ) {
                                    Ok(key) => Some(crate::table::Keys {
                                        key,
                                        id: theirs.stream,
                                    }),
                                    Err(e) => {
                                        warn!("stream from {from}: no stream key ({e}); it will not move");
                                        None
                                    }
                                }
                            }
                            _ => None,
                        };
                        self.ua.answer(&call, 200, Some(acc.answer.into()), now);
                        let peer_sip = self.peer_sip(&call);
                        match (acc.proto, mobility) {
                            (ChannelProto::Udp, Some(keys)) => {
                                crate::table::answered_datagram(
                                    call.clone(),
                                    keys,
                                    acc.caller,
                                    SocketAddr::new(self.local_ip, acc.port),
                                    from.clone(),
                                );
                                crate::status::ensure();
                            }
                            (ChannelProto::Udp, None) => {}
                            (ChannelProto::Tcp, mobility) => crate::table::expect_caller(
                                acc.caller,
                                crate::table::Expected {
                                    call: call.clone(),
                                    mobility,
                                    peer_sip,
                                    peer_uri: from.clone(),
                                },
                            ),
                        }
                    }
                    Err(r) => {
                        warn!("refused stream from {from}: {}", r.reason);
                        self.ua.answer(&call, r.code, None, now);
                    }
                }
            }
            UaEvent::CallAnswered { call, body } => {
                let Some(offered) = self.connects.remove(&call) else {
                    // The program gave up waiting: end the call it no longer wants.
                    self.ua.hangup(&call, now);
                    return;
                };
                match session::answered_mobile(&body, offered.mobility.as_ref()) {
                    Ok(ans) => {
                        debug!("{} answered: data at {}", offered.uri, ans.addr);
                        let mobility = match (offered.secret, offered.mobility, ans.peer_share) {
                            (Some(secret), Some(ours), Some(theirs)) => {
                                match keys::derive(secret, &theirs, &call, &ours.key_share, &theirs)
                                {
                                    Ok(key) => Some(crate::table::Keys {
                                        key,
                                        id: ours.stream,
                                    }),
                                    Err(e) => {
                                        warn!(
                                            "{}: no stream key ({e}); the stream will not move",
                                            offered.uri
                                        );
                                        None
                                    }
                                }
                            }
                            _ => None,
                        };
                        let peer_sip = self.peer_sip(&call);
                        let _ = offered.reply.send(Ok(Connected {
                            call,
                            addr: ans.addr,
                            mobility,
                            peer_sip,
                        }));
                    }
                    Err(e) => {
                        warn!("connect to {}: {e}", offered.uri);
                        self.ua.hangup(&call, now);
                        let _ = offered.reply.send(Err(session::libc_errno::EHOSTUNREACH));
                    }
                }
            }
            UaEvent::CallFailed { call, code } => {
                if let Some(offered) = self.connects.remove(&call) {
                    let errno = session::errno_for_status(code);
                    warn!("connect to {} failed: {}", offered.uri, describe(code));
                    let _ = offered.reply.send(Err(errno));
                }
            }
            UaEvent::IncomingReinvite { call, body } => {
                self.peer_moved(&call, &body, now);
                // Both moved at once: ours waited for theirs to be answered.
                if self.moves_out.get(&call).is_some_and(|m| !m.sent) {
                    self.push_move(&call, now);
                }
            }
            UaEvent::ReinviteDone { call, code, .. } => self.move_answered(&call, code, now),
            UaEvent::CallEnded { call, .. } => {
                self.connects.remove(&call);
                crate::table::forget_call(&call);
            }
            UaEvent::CallConfirmed { .. } | UaEvent::Unregistered | UaEvent::OptionsDone { .. } => {
            }
        }
    }
}

impl SipThread {
    /// The peer's SIP address for a call (its Contact): where a moved
    /// stream is resumed.
    fn peer_sip(&self, call: &str) -> Option<SocketAddr> {
        let d = self.ua.dialog(call)?;
        sipcore::dialog::uri_peer(&d.remote_target, Transport::Tcp).map(|p| p.addr)
    }

    /// The host's addresses changed: follow with our SIP address (and
    /// re-REGISTER), then move every stream whose address is gone or is no
    /// longer the one the routes pick.
    fn net_changed(&mut self, now: Instant, since: Instant) {
        if let Some(proxy) = self.proxy {
            if let Some(ip) = crate::routes::route_ip(proxy) {
                if ip != self.local_ip {
                    info!("SIP address {} -> {ip}", self.local_ip);
                    self.local_ip = ip;
                    let port = self.driver.local_addr().port();
                    self.ua.set_local(SocketAddr::new(ip, port));
                    if self.registered || !self.listening.is_empty() {
                        self.ua.register(now);
                    }
                }
            }
        }
        for stream in crate::table::mobile_streams() {
            let Some(mob) = stream.mobility.as_ref() else {
                continue;
            };
            let old = *mob.local_ip.lock();
            let peer = *mob.peer_data.lock();
            let new = crate::routes::route_ip(peer);
            if new == Some(old) {
                continue;
            }
            if mob.proto == ChannelProto::Udp {
                // Datagrams need no resume: the socket is re-pointed from
                // the new address, and the peer learns where to send.
                if let Some(new) = new {
                    info!("stream {}: {old} -> {new}", mob.id);
                    *mob.local_ip.lock() = new;
                    // A connected UDP socket keeps the source address it
                    // chose at connect(): connecting again picks the new one.
                    crate::table::retarget(&stream, peer);
                    self.send_move(mob, new, now);
                }
                continue;
            }
            mob.log.detected(since);
            // One mover per stream; it follows later route changes itself,
            // and waits (up to WISP_MOVE_TIMEOUT) while there is no route.
            if !mob
                .mover_running
                .swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                info!(
                    "stream {}: {old} -> {}, moving",
                    mob.id,
                    new.map_or("(no route yet)".to_string(), |n| n.to_string())
                );
                let deadline = Instant::now() + self.move_timeout;
                let s = stream.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("wisp-move".into())
                        .spawn(move || {
                            crate::state::Inside::forever();
                            crate::mover::initiate(s, deadline);
                        });
                if spawned.is_err() {
                    mob.mover_running
                        .store(false, std::sync::atomic::Ordering::Release);
                }
            }
            if let Some(new) = new {
                self.send_move(mob, new, now);
            }
        }
    }

    /// The re-INVITE that tells the peer (and the proxies) where we are
    /// now: counter and MAC so nobody else can say it for us.
    fn send_move(&mut self, mob: &crate::mobility::Mobility, new: IpAddr, now: Instant) {
        let counter = mob
            .moves_sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        // A TCP stream resumes at our SIP port; datagrams come to our data port.
        let port = match mob.proto {
            ChannelProto::Tcp => self.driver.local_addr().port(),
            ChannelProto::Udp => mob.local_port.load(std::sync::atomic::Ordering::Relaxed),
        };
        let m = Move {
            stream: mob.id,
            proto: mob.proto,
            addr: SocketAddr::new(new, port),
            setup: Setup::Active,
            counter,
            rx: 0,
        };
        let body = mobility::move_offer(&m, &mob.key, &mob.call_id, session_id(), counter + 1);
        let previous = self.moves_out.insert(
            mob.call_id.clone(),
            OutMove {
                body: body.into(),
                via_proxy: false,
                sent: false,
            },
        );
        if previous.is_some_and(|p| p.sent) && self.ua.supersede_reinvite(&mob.call_id) {
            // The last move's re-INVITE is still unanswered: it named an
            // address we have left anyway.
            debug!(
                "call {}: a newer move supersedes the re-INVITE in flight",
                mob.call_id
            );
        }
        self.push_move(&mob.call_id.clone(), now);
    }

    /// Send (or resend another way) the pending move of `call`, if the
    /// dialog is free for an offer.
    fn push_move(&mut self, call: &str, now: Instant) {
        let Some(m) = self.moves_out.get_mut(call) else {
            return;
        };
        let sent = if m.via_proxy {
            self.ua.reinvite(call, m.body.clone(), now)
        } else {
            self.ua.reinvite_direct(call, m.body.clone(), now)
        };
        m.sent = sent;
        if !sent {
            debug!("call {call}: move re-INVITE waits for the offer in flight");
        } else if let Some(s) = crate::table::stream_by_call(call) {
            if let Some(mob) = s.mobility.as_ref() {
                mob.log.invite_sent(Instant::now());
            }
        }
    }

    /// The answer to a re-INVITE of ours.
    fn move_answered(&mut self, call: &str, code: u16, now: Instant) {
        let Some(m) = self.moves_out.get_mut(call) else {
            return;
        };
        if !m.sent {
            // That answer was for another offer; ours can go now.
            return self.push_move(call, now);
        }
        if !(200..300).contains(&code) && !m.via_proxy && matches!(code, 408 | 503) {
            debug!("call {call}: no answer straight from the peer; the move re-INVITE goes through the proxy");
            m.via_proxy = true;
            return self.push_move(call, now);
        }
        if !(200..300).contains(&code) {
            warn!("call {call}: our move's re-INVITE got {code}");
        }
        self.moves_out.remove(call);
        if let Some(s) = crate::table::stream_by_call(call) {
            if let Some(mob) = s.mobility.as_ref() {
                mob.log.answered(&mob.id, Instant::now(), code);
            }
        }
    }

    /// A re-INVITE from the peer: a move only if its MAC and counter check
    /// out; anything else is refused and the stream goes on as it was.
    fn peer_moved(&mut self, call: &str, body: &[u8], now: Instant) {
        let Some(stream) = crate::table::stream_by_call(call) else {
            self.ua.answer(call, 488, None, now);
            return;
        };
        let Some(mob) = stream.mobility.as_ref() else {
            self.ua.answer(call, 488, None, now);
            return;
        };
        let checked =
            mobility::check_move(body, call, &mob.key, &mut mob.moves_seen.lock(), &mob.id);
        match checked {
            Ok(m) => {
                info!(
                    "stream {}: peer moved to {} (move {})",
                    mob.id, m.addr, m.counter
                );
                match mob.proto {
                    ChannelProto::Tcp => {
                        *mob.peer_by_invite.lock() =
                            (crate::mobility::Mobility::stamp(), Some(m.addr))
                    }
                    ChannelProto::Udp => {
                        *mob.peer_data.lock() = m.addr;
                        crate::table::retarget(&stream, m.addr);
                    }
                }
                let ours = Move {
                    setup: Setup::Passive,
                    addr: SocketAddr::new(self.local_ip, self.driver.local_addr().port()),
                    ..m
                };
                let answer = mobility::move_answer(&ours, session_id(), m.counter + 1);
                self.ua.answer(call, 200, Some(answer.into()), now);
            }
            Err(e) => {
                warn!("refused a re-INVITE for stream {}: {e}", mob.id);
                self.ua.answer(call, e.status(), None, now);
            }
        }
    }
}

/// Watch the host's addresses and routes on a thread of its own and tell
/// the SIP thread (coalesced, so a flapping link is one change).
fn start_watcher(tx: Sender<Command>, waker: Waker) {
    let spawned = std::thread::Builder::new()
        .name("wisp-netwatch".into())
        .spawn(move || {
            crate::state::Inside::forever();
            let mut w = match crate::netwatch::Watcher::open() {
                Ok(w) => w,
                Err(e) => {
                    warn!("cannot watch the host's addresses ({e}); streams will not follow moves");
                    return;
                }
            };
            loop {
                let now = Instant::now();
                let timeout = w
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(now).as_millis().min(1000) as i32)
                    .unwrap_or(1000);
                let mut p = libc::pollfd {
                    fd: w.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { crate::real::poll(&mut p, 1, timeout) };
                let now = Instant::now();
                if p.revents != 0 {
                    let _ = w.on_readable(now);
                    // Movers waiting for a route look again at once.
                    crate::routes::bump_net_epoch();
                }
                let since = w.pending_since().unwrap_or(now);
                if w.handle_timeout(now).is_some() {
                    if tx.send(Command::NetChanged { since }).is_err() {
                        return;
                    }
                    waker.wake();
                }
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the address watcher: {e}");
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
