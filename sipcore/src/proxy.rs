//! A stateful proxy that is also the registrar of its domains (RFC 3261
//! §16 and §10, next hops per RFC 3263, responses per RFC 3581), sans-IO on
//! top of an [`Endpoint`].
//!
//! The proxy owns the transaction layer: bytes and time go in through
//! [`SansIo`], and after each call every endpoint event has been turned into
//! responses, forwarded requests and state. What the proxy cannot do
//! without I/O it asks for: DNS through [`Proxy::poll_resolve`] /
//! [`Proxy::resolved`] (or [`Proxy::resolved_peers`]), and one log line per
//! transaction through [`Proxy::poll_log`].
//!
//! Choices where the RFCs leave room:
//! - Forking is parallel to every live binding of an address of record,
//!   most recently refreshed first; `q` values are not consulted. The best
//!   final response is chosen per §16.7 (2xx at once, 6xx wins, else the
//!   lowest class, 503 sent on as 500, 401/407 challenges merged).
//! - A binding is reached at its Contact URI, unless the UA asked for flow
//!   reuse (`;ob`, RFC 5626) or the proxy runs with `nat`: then at the
//!   address its REGISTER came from.
//! - REGISTER is handled here when its Request-URI names one of our domains
//!   (or our address); any other REGISTER is proxied like any request. An
//!   address of record outside our domains is refused with 403.
//! - Only loose routing: a Route is always treated as `;lr`, and strict
//!   routers (RFC 2543) are not accommodated.
//! - Our address stands for the first configured domain, so `sip:bob@IP`
//!   (IP being the proxy's own address) reaches bob of that domain.
//! - With a users map, REGISTER and out-of-dialog INVITE whose From is in
//!   our domains must carry digest credentials of that same user (realm =
//!   the domain); an INVITE from elsewhere to elsewhere is refused (403):
//!   with accounts configured we are nobody's open relay.
//! - A CANCEL that matches no INVITE gets 481 rather than stateless
//!   forwarding: we never forward INVITE statelessly, so there is nothing
//!   downstream for it to cancel.

use crate::digest::{AuthError, Credentials, Verifier};
use crate::endpoint::{self, Endpoint, Event, SansIo, Transmit, TxKey};
use crate::msg::{self, Host, HostPort, Message, Method, Name, SipUri};
use crate::registrar::{self, Limits, Location, Lookup};
use crate::transaction::{Peer, Timers, Transport};
use ezk_sip_types::print::AppendCtx;
use ezk_sip_types::uri::SipUriUserPart;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Methods we know, so that one addressed to us is 405 rather than 501.
const KNOWN: [Method; 14] = [
    Method::INVITE,
    Method::ACK,
    Method::CANCEL,
    Method::BYE,
    Method::REGISTER,
    Method::MESSAGE,
    Method::UPDATE,
    Method::PRACK,
    Method::OPTIONS,
    Method::SUBSCRIBE,
    Method::NOTIFY,
    Method::PUBLISH,
    Method::INFO,
    Method::REFER,
];

/// What the proxy itself answers as a UAS.
pub const ALLOW: &str = "OPTIONS, REGISTER, ACK, CANCEL";

/// A resolved name's addresses are tried in order on 503 or timeout (RFC
/// 3263 §4.3); more than this many is a misconfigured zone.
const MAX_ALTERNATES: usize = 8;

/// Unread log lines kept; older ones are dropped first.
const MAX_LOG_LINES: usize = 4096;

#[derive(Clone, Debug)]
pub struct Config {
    /// Where the driver's UDP socket is bound; named in our Via and
    /// Record-Route for UDP. Must be a concrete address, not a wildcard:
    /// peers send in-dialog requests to it.
    pub local_udp: SocketAddr,
    /// The TCP listener (in wisp the same IP:port as UDP).
    pub local_tcp: SocketAddr,
    /// Domains we are registrar and proxy for; the first is also what our
    /// own address stands for.
    pub domains: Vec<String>,
    /// Next hop for other domains (`--route DOMAIN=IP:PORT`), before DNS.
    pub routes: HashMap<String, SocketAddr>,
    /// `user@domain` → password. Empty: no authentication at all.
    pub users: HashMap<String, String>,
    /// Reach registered UAs at the address their REGISTER came from, even
    /// without `;ob` (every UA is assumed to sit behind a NAT).
    pub nat: bool,
    pub timers: Timers,
    pub limits: Limits,
    /// Proxied server transactions at once; beyond it new requests get 503.
    pub max_transactions: usize,
    /// Requests parked while a name resolves; beyond it, 503.
    pub max_pending_resolves: usize,
    /// A name the driver never answers for is given up after this (503).
    pub resolve_timeout: Duration,
    pub user_agent: String,
    /// Whether to keep the one-line-per-transaction log that
    /// [`Proxy::poll_log`] hands out. A driver that would throw the lines
    /// away says no, and the proxy does not spend time writing them.
    pub log: bool,
}

impl Config {
    /// Both transports on `local`, nothing else configured.
    pub fn new(local: SocketAddr) -> Config {
        Config {
            local_udp: local,
            local_tcp: local,
            domains: Vec::new(),
            routes: HashMap::new(),
            users: HashMap::new(),
            nat: false,
            timers: Timers::default(),
            limits: Limits::default(),
            max_transactions: 10_000,
            max_pending_resolves: 1_024,
            resolve_timeout: Duration::from_secs(10),
            user_agent: format!("wisp-proxy/{}", env!("CARGO_PKG_VERSION")),
            log: true,
        }
    }
}

/// A name the driver must resolve (RFC 3263 §4.2) and hand back through
/// [`Proxy::resolved`] with the same `domain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolve {
    /// Lowercase, no trailing dot.
    pub domain: String,
    pub transport: Transport,
    /// The URI named a port: look up A/AAAA only (RFC 3263 §4.2); the
    /// proxy applies the port itself. `None`: SRV first, then A/AAAA on
    /// 5060.
    pub port: Option<u16>,
}

impl Resolve {
    /// The SRV owner name to query when `port` is `None`.
    pub fn srv_name(&self) -> String {
        let t = match self.transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        };
        format!("_sip._{t}.{}", self.domain)
    }
}

/// Where a request goes next.
#[derive(Clone, Debug)]
enum Hop {
    Direct(Peer),
    Lookup {
        domain: String,
        port: Option<u16>,
        /// The URI's `transport` param; without one, whatever the name's
        /// SRV records offer (RFC 3263 §4.1).
        transport: Option<Transport>,
    },
}

/// One destination of a request: the Request-URI it gets (a binding's
/// contact) and where it is sent.
#[derive(Clone, Debug)]
struct Target {
    ruri: Option<SipUri>,
    hop: Hop,
}

/// What §16.4–16.5 decided.
enum Routing {
    /// Addressed to us: registrar, OPTIONS, 405/501.
    Local,
    Reply(u16),
    Forward(Vec<Target>),
}

/// One forwarded copy of a request: a client transaction.
#[derive(Debug)]
struct Branch {
    client: TxKey,
    /// The request before our Via and Record-Route: resent to the next
    /// address on failover.
    base: Message,
    /// As sent: a CANCEL copies its Request-URI, Via and dialog headers.
    sent: Message,
    peer: Peer,
    alternates: Vec<Peer>,
    provisional: bool,
    /// The upstream cancelled before this branch had a provisional
    /// response; CANCEL may only follow one (§9.1).
    cancel_pending: bool,
    done: bool,
}

/// The response context of one proxied server transaction (§16.7).
#[derive(Debug)]
struct Context {
    /// As received: synthesized responses are built from it.
    request: Message,
    invite: bool,
    branches: Vec<Branch>,
    /// Targets still waiting for DNS.
    resolving: usize,
    best: Option<Message>,
    /// WWW-/Proxy-Authenticate of every 401/407: all are sent on (§16.7
    /// step 7) so the UA can answer each proxy on a forked path.
    challenges: Vec<(Name, String)>,
    final_sent: bool,
    cancelled: bool,
    forwarded: Vec<String>,
}

#[derive(Debug)]
enum Work {
    /// A branch to start once the name resolves.
    Branch { server: TxKey, base: Message },
    /// An ACK for a 2xx, forwarded statelessly once the name resolves.
    Ack { msg: Message },
}

#[derive(Debug)]
struct PendingResolve {
    domain: String,
    port: Option<u16>,
    transport: Option<Transport>,
    deadline: Instant,
    work: Work,
}

/// Outcome of the digest check.
enum Auth {
    /// Nothing to check, or the credentials prove this user.
    Pass(Option<String>),
    Reply(Box<Message>),
}

/// The proxy and registrar. Drive it through [`SansIo`]; besides bytes it
/// wants names resolved and has log lines to give.
pub struct Proxy {
    config: Config,
    endpoint: Endpoint,
    location: Location,
    /// One per domain: the realm is the domain.
    verifiers: HashMap<String, Verifier>,
    contexts: HashMap<TxKey, Context>,
    /// Client transaction → the server transaction it serves.
    clients: HashMap<TxKey, TxKey>,
    pending: Vec<PendingResolve>,
    resolves: VecDeque<Resolve>,
    /// Names with a query out, so a burst of calls asks once.
    asked: HashSet<String>,
    logs: VecDeque<String>,
    /// Keys the stateless ACK branches: a retransmitted ACK gets the same
    /// branch (§16.11), a third party cannot predict it.
    secret: String,
    /// Digest nonces carry seconds; sans-IO time is an `Instant`, so count
    /// from the first one we see.
    epoch: Option<Instant>,
}

impl Proxy {
    pub fn new(mut config: Config) -> Proxy {
        config.domains = config
            .domains
            .iter()
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        config.routes = config
            .routes
            .iter()
            .map(|(d, a)| (d.trim().trim_end_matches('.').to_ascii_lowercase(), *a))
            .collect();
        config.users = config
            .users
            .iter()
            .map(|(k, v)| match k.rsplit_once('@') {
                Some((u, d)) => (registrar::aor_key(u, d), v.clone()),
                None => (k.clone(), v.clone()),
            })
            .collect();
        let verifiers = config
            .domains
            .iter()
            .map(|d| {
                let secret: [u8; 32] = Sha256::digest(crate::ids::token(64).as_bytes()).into();
                (d.clone(), Verifier::new(secret, d))
            })
            .collect();
        let endpoint = Endpoint::new(endpoint::Config {
            timers: config.timers,
            retransmit_2xx: false,
            user_agent: config.user_agent.clone(),
        });
        Proxy {
            location: Location::new(config.limits),
            endpoint,
            verifiers,
            contexts: HashMap::new(),
            clients: HashMap::new(),
            pending: Vec::new(),
            resolves: VecDeque::new(),
            asked: HashSet::new(),
            logs: VecDeque::new(),
            secret: crate::ids::token(32),
            epoch: None,
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// A message a stream decoder already cut and parsed from TCP.
    pub fn receive_message(&mut self, msg: Message, from: Peer, now: Instant) {
        self.endpoint.receive_message(msg, from, now);
        self.process(now);
    }

    /// The next name to resolve for a parked request.
    pub fn poll_resolve(&mut self) -> Option<Resolve> {
        self.resolves.pop_front()
    }

    /// The driver's answer for `domain`: its addresses in preference order
    /// (SRV priority/weight already applied), or none if the name does not
    /// exist or has no SIP service (the request then gets 404). Each is
    /// used with the transport the request asked for.
    pub fn resolved(&mut self, domain: &str, addrs: Vec<SocketAddr>, now: Instant) {
        self.answer(domain, &addrs, &[], now);
    }

    /// Like [`Proxy::resolved`], for a resolver that tells which transport
    /// each target's SRV record was for (`_sip._udp` / `_sip._tcp`): a
    /// request whose URI named a transport only uses targets of that one.
    pub fn resolved_peers(&mut self, domain: &str, targets: Vec<Peer>, now: Instant) {
        self.answer(domain, &[], &targets, now);
    }

    fn answer(&mut self, domain: &str, addrs: &[SocketAddr], targets: &[Peer], now: Instant) {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        self.asked.remove(&domain);
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.domain == domain);
        self.pending = rest;
        for p in mine {
            let preferred = p.transport.unwrap_or(Transport::Udp);
            let candidates = addrs
                .iter()
                .map(|&addr| Peer {
                    transport: preferred,
                    addr,
                })
                .chain(
                    targets
                        .iter()
                        .copied()
                        .filter(|t| p.transport.unwrap_or(t.transport) == t.transport),
                );
            let mut list: Vec<Peer> = Vec::new();
            for mut peer in candidates {
                // An explicit port in the URI beats the SRV port (§4.2).
                peer.addr.set_port(p.port.unwrap_or(peer.addr.port()));
                if !list.contains(&peer) && list.len() < MAX_ALTERNATES {
                    list.push(peer);
                }
            }
            self.run_work(p.work, list, 404, now);
        }
        self.process(now);
    }

    /// One line per transaction handled: method, Call-ID, From, To, result,
    /// and where it went. The binary prints these to stderr. For example
    /// `INVITE call-id=a84b@pc33 from=sip:fred@abcd.com to=sip:bob@wxyz.com
    /// result=200 forwarded=udp:198.51.100.10:5060` (one line; `result=-`
    /// for an ACK, `forwarded=-` for what we answered ourselves).
    pub fn poll_log(&mut self) -> Option<String> {
        self.logs.pop_front()
    }

    // ---- event pump ------------------------------------------------------

    fn process(&mut self, now: Instant) {
        while let Some(ev) = self.endpoint.poll_event() {
            match ev {
                Event::Request { key, msg, from } => self.on_request(key, msg, from, now),
                Event::Ack { msg, .. } => self.on_ack(msg, now),
                Event::Response { key, msg } => self.on_response(key, msg, now),
                Event::StrayResponse { msg, .. } => self.relay_stray(msg),
                Event::Timeout { key } => self.on_timeout(key, now),
                // Already answered with 400 by the endpoint where possible.
                Event::Malformed { .. } => {}
            }
        }
    }

    // ---- requests --------------------------------------------------------

    fn on_request(&mut self, key: TxKey, mut req: Message, from: Peer, now: Instant) {
        let Some(method) = req.method().cloned() else {
            return;
        };
        if method == Method::CANCEL {
            return self.on_cancel(key, &req, now);
        }
        // §16.3 step 3: a request that has run out of hops ends here;
        // OPTIONS may be answered by us as its final recipient.
        if req.max_forwards() == Some(0) {
            if method == Method::OPTIONS {
                return self.answer_locally(key, req, from, now);
            }
            return self.reply(&key, &req, 483, now);
        }
        // §16.3 step 6: we implement no extensions.
        let required = req.list(&Name::PROXY_REQUIRE);
        if !required.is_empty() {
            let mut resp = synth(&req, 420);
            resp.add(Name::UNSUPPORTED, required.join(", "));
            return self.reply_with(&key, &req, resp, now);
        }
        if method == Method::INVITE && req.to_tag().is_none() {
            match self.authorize(&req, false, now) {
                Auth::Reply(resp) => return self.reply_with(&key, &req, *resp, now),
                Auth::Pass(Some(_)) => self.strip_credentials(&mut req),
                Auth::Pass(None) => {}
            }
        }
        self.strip_own_route(&mut req);
        match self.route(&req, now) {
            Routing::Local => self.answer_locally(key, req, from, now),
            Routing::Reply(code) => self.reply(&key, &req, code, now),
            Routing::Forward(targets) => self.forward(key, req, targets, now),
        }
    }

    /// §16.4: the top Route naming us has done its job.
    fn strip_own_route(&self, req: &mut Message) {
        let mut routes = req.list(&Name::ROUTE);
        let ours = routes
            .first()
            .and_then(|r| route_uri(r))
            .is_some_and(|u| self.is_us(&u));
        if ours {
            routes.remove(0);
            req.set_list(Name::ROUTE, &routes);
        }
    }

    /// §16.5 target set: the remaining Route, else ourselves, else the
    /// location service for our domains, else the Request-URI's host.
    fn route(&mut self, req: &Message, now: Instant) -> Routing {
        if let Some(top) = req.list(&Name::ROUTE).first() {
            return match route_uri(top) {
                Some(uri) => Routing::Forward(vec![Target {
                    ruri: None,
                    hop: self.hop_for(&uri),
                }]),
                None => Routing::Reply(400),
            };
        }
        let Some(uri) = req.uri().cloned() else {
            return Routing::Reply(400);
        };
        let Some(domain) = self.our_domain(&uri.host_port) else {
            return Routing::Forward(vec![Target {
                ruri: None,
                hop: self.hop_for(&uri),
            }]);
        };
        let user = match user_of(&uri) {
            Some(u) if req.method() != Some(&Method::REGISTER) => u,
            _ => return Routing::Local,
        };
        let aor = registrar::aor_key(&user, &domain);
        match self.location.lookup(&aor, now) {
            Lookup::Bindings(bindings) => Routing::Forward(
                bindings
                    .iter()
                    .map(|b| Target {
                        ruri: Some(b.uri.clone()),
                        hop: if self.config.nat || b.wants_flow() {
                            Hop::Direct(b.source)
                        } else {
                            self.hop_for(&b.uri)
                        },
                    })
                    .collect(),
            ),
            Lookup::Offline => Routing::Reply(480),
            Lookup::Unknown if self.config.users.contains_key(&aor) => Routing::Reply(480),
            Lookup::Unknown => Routing::Reply(404),
        }
    }

    /// RFC 3263 in the small: an IP literal is the address; a configured
    /// route wins over DNS; anything else is looked up by the driver.
    fn hop_for(&self, uri: &SipUri) -> Hop {
        let forced = uri
            .uri_params
            .get_val("transport")
            .and_then(|t| Transport::parse(t));
        let transport = forced.unwrap_or(Transport::Udp);
        if let Some(addr) = msg::uri_addr(uri) {
            return Hop::Direct(Peer { transport, addr });
        }
        let domain = uri
            .host_port
            .host
            .to_string()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        match self.config.routes.get(&domain) {
            Some(addr) => Hop::Direct(Peer {
                transport,
                addr: *addr,
            }),
            None => Hop::Lookup {
                domain,
                port: uri.host_port.port,
                transport: forced,
            },
        }
    }

    fn is_our_addr(&self, hp: &HostPort) -> bool {
        let Some(ip) = hp.ip() else {
            return false;
        };
        let port = hp.port.unwrap_or(5060);
        [self.config.local_udp, self.config.local_tcp]
            .iter()
            .any(|a| a.ip() == ip && a.port() == port)
    }

    fn is_local_peer(&self, peer: Peer) -> bool {
        peer.addr == self.config.local_udp || peer.addr == self.config.local_tcp
    }

    /// The domain a host names, if it is ours (our own address counts as
    /// the first domain).
    fn our_domain(&self, hp: &HostPort) -> Option<String> {
        match &hp.host {
            // Names match whatever the port; an address only with ours, so
            // a UA on our host but another port is not us.
            Host::Name(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                self.config.domains.iter().find(|d| **d == name).cloned()
            }
            _ if self.is_our_addr(hp) => Some(
                self.config
                    .domains
                    .first()
                    .cloned()
                    .unwrap_or_else(|| hp.host.to_string()),
            ),
            _ => None,
        }
    }

    /// A Route or Request-URI that means this proxy.
    fn is_us(&self, uri: &SipUri) -> bool {
        self.is_our_addr(&uri.host_port)
            || (matches!(uri.host_port.host, Host::Name(_))
                && uri.user_part == SipUriUserPart::Empty
                && self.our_domain(&uri.host_port).is_some())
    }

    fn answer_locally(&mut self, key: TxKey, req: Message, from: Peer, now: Instant) {
        let method = req.method().cloned().unwrap_or(Method::OPTIONS);
        if method == Method::REGISTER {
            return self.register(key, req, from, now);
        }
        if method == Method::OPTIONS {
            let mut resp = synth(&req, 200);
            resp.add(Name::ALLOW, ALLOW);
            resp.add(Name::ACCEPT, "application/sdp");
            return self.reply_with(&key, &req, resp, now);
        }
        if !KNOWN.contains(&method) {
            return self.reply(&key, &req, 501, now);
        }
        if req.to_tag().is_some() {
            // An in-dialog request for a dialog we are not part of.
            return self.reply(&key, &req, 481, now);
        }
        let mut resp = synth(&req, 405);
        resp.add(Name::ALLOW, ALLOW);
        self.reply_with(&key, &req, resp, now)
    }

    /// §10.3 with the location service.
    fn register(&mut self, key: TxKey, req: Message, from: Peer, now: Instant) {
        let Ok(to) = req.to() else {
            return self.reply(&key, &req, 400, now);
        };
        let to_uri = &to.uri.uri;
        let Some(domain) = self.our_domain(&to_uri.host_port) else {
            return self.reply(&key, &req, 403, now);
        };
        let Some(user) = user_of(to_uri) else {
            return self.reply(&key, &req, 400, now);
        };
        match self.authorize(&req, true, now) {
            Auth::Reply(resp) => return self.reply_with(&key, &req, *resp, now),
            // Only the owner of an address of record may bind it.
            Auth::Pass(Some(authed)) if authed != user => {
                return self.reply(&key, &req, 403, now);
            }
            Auth::Pass(_) => {}
        }
        let aor = registrar::aor_key(&user, &domain);
        let tag = crate::ids::tag();
        let resp = self.location.handle_register(&aor, &req, from, now, &tag);
        self.reply_with(&key, &req, resp, now)
    }

    /// Digest check for REGISTER (`registrar`: 401/Authorization) or an
    /// INVITE (407/Proxy-Authorization) whose From is one of our users.
    fn authorize(&mut self, req: &Message, registrar: bool, now: Instant) -> Auth {
        if self.config.users.is_empty() {
            return Auth::Pass(None);
        }
        let Ok(from) = req.from() else {
            return Auth::Reply(Box::new(synth(req, 400)));
        };
        let from_uri = &from.uri.uri;
        let from_user = user_of(from_uri).unwrap_or_default();
        let Some(realm) = self.our_domain(&from_uri.host_port) else {
            if registrar {
                return Auth::Reply(Box::new(synth(req, 403)));
            }
            // Not our user: acceptable only as a call into our domains.
            let inbound = req
                .uri()
                .is_some_and(|u| self.our_domain(&u.host_port).is_some());
            return if inbound {
                Auth::Pass(None)
            } else {
                Auth::Reply(Box::new(synth(req, 403)))
            };
        };
        let Some(verifier) = self.verifiers.get(&realm) else {
            return Auth::Reply(Box::new(synth(req, 500)));
        };
        let secs = {
            let epoch = *self.epoch.get_or_insert(now);
            now.saturating_duration_since(epoch).as_secs()
        };
        let (cred_name, chal_name, code) = if registrar {
            (Name::AUTHORIZATION, Name::WWW_AUTHENTICATE, 401)
        } else {
            (Name::PROXY_AUTHORIZATION, Name::PROXY_AUTHENTICATE, 407)
        };
        let method = req.method().map(|m| m.to_string()).unwrap_or_default();
        let ruri = req
            .uri()
            .map(|u| u.default_print_ctx().to_string())
            .unwrap_or_default();
        let users = &self.config.users;
        let lookup = |name: &str| users.get(&registrar::aor_key(name, &realm)).cloned();
        let mut stale = false;
        for value in req.headers.get_raw(&cred_name) {
            let Ok(c) = Credentials::parse(value) else {
                continue;
            };
            if c.realm != verifier.realm() {
                continue;
            }
            match verifier.verify(value, &method, &ruri, lookup, secs) {
                Ok(user) if user == from_user => return Auth::Pass(Some(user)),
                // Someone else's password does not make this From theirs.
                Ok(_) => return Auth::Reply(Box::new(synth(req, 403))),
                Err(AuthError::StaleNonce) => stale = true,
                Err(_) => {}
            }
        }
        let mut resp = synth(req, code);
        for c in verifier.challenges(secs, stale) {
            resp.add(chal_name.clone(), c);
        }
        Auth::Reply(Box::new(resp))
    }

    /// Credentials for our realms end here (§22.3 lets each proxy consume
    /// its own).
    fn strip_credentials(&self, req: &mut Message) {
        let kept: Vec<String> = req
            .headers
            .get_raw(&Name::PROXY_AUTHORIZATION)
            .filter(|v| {
                Credentials::parse(v).map_or(true, |c| !self.verifiers.contains_key(&c.realm))
            })
            .map(|v| v.to_string())
            .collect();
        req.set_list(Name::PROXY_AUTHORIZATION, &kept);
    }

    /// Answer a server transaction with a fresh response and log it.
    fn reply(&mut self, key: &TxKey, req: &Message, code: u16, now: Instant) {
        let resp = synth(req, code);
        self.reply_with(key, req, resp, now);
    }

    fn reply_with(&mut self, key: &TxKey, req: &Message, resp: Message, now: Instant) {
        let code = resp.code().unwrap_or(0);
        self.endpoint.respond(key, resp, now);
        self.log(req, Some(code), &[]);
    }

    // ---- forwarding ------------------------------------------------------

    /// §16.6 for every target, with a response context to collect answers.
    fn forward(&mut self, key: TxKey, req: Message, targets: Vec<Target>, now: Instant) {
        if self.contexts.len() >= self.config.max_transactions {
            let mut resp = synth(&req, 503);
            resp.add(Name::RETRY_AFTER, "5");
            return self.reply_with(&key, &req, resp, now);
        }
        let invite = req.method() == Some(&Method::INVITE);
        if invite {
            // §16.2: stop the upstream retransmitting while we work.
            self.endpoint.respond(&key, synth(&req, 100), now);
        }
        self.contexts.insert(
            key.clone(),
            Context {
                request: req.clone(),
                invite,
                branches: Vec::new(),
                resolving: 0,
                best: None,
                challenges: Vec::new(),
                final_sent: false,
                cancelled: false,
                forwarded: Vec::new(),
            },
        );
        for target in targets {
            let base = prepare(&req, target.ruri);
            match target.hop {
                Hop::Direct(peer) => self.send_branch(&key, base, peer, Vec::new(), now),
                Hop::Lookup {
                    domain,
                    port,
                    transport,
                } => {
                    let work = Work::Branch {
                        server: key.clone(),
                        base,
                    };
                    if self.park(domain, port, transport, work, now) {
                        if let Some(ctx) = self.contexts.get_mut(&key) {
                            ctx.resolving += 1;
                        }
                    } else {
                        self.consider(&key, 503);
                    }
                }
            }
        }
        self.settle(&key, now);
    }

    /// Hold work until `domain` resolves; false when too much is parked.
    fn park(
        &mut self,
        domain: String,
        port: Option<u16>,
        transport: Option<Transport>,
        work: Work,
        now: Instant,
    ) -> bool {
        if self.pending.len() >= self.config.max_pending_resolves {
            return false;
        }
        if self.asked.insert(domain.clone()) {
            self.resolves.push_back(Resolve {
                domain: domain.clone(),
                transport: transport.unwrap_or(Transport::Udp),
                port,
            });
        }
        self.pending.push(PendingResolve {
            domain,
            port,
            transport,
            deadline: now + self.config.resolve_timeout,
            work,
        });
        true
    }

    /// Resume parked work with the addresses a name resolved to (none:
    /// answer `fail`).
    fn run_work(&mut self, work: Work, mut peers: Vec<Peer>, fail: u16, now: Instant) {
        match work {
            Work::Branch { server, base } => {
                let Some(ctx) = self.contexts.get_mut(&server) else {
                    return;
                };
                ctx.resolving = ctx.resolving.saturating_sub(1);
                if ctx.final_sent || ctx.cancelled {
                    return self.settle(&server, now);
                }
                if peers.is_empty() {
                    self.consider(&server, fail);
                } else {
                    let first = peers.remove(0);
                    self.send_branch(&server, base, first, peers, now);
                }
                self.settle(&server, now);
            }
            Work::Ack { msg } => {
                if let Some(peer) = peers.first() {
                    self.send_ack(msg, *peer);
                }
            }
        }
    }

    /// Start one client transaction for `server`.
    fn send_branch(
        &mut self,
        server: &TxKey,
        base: Message,
        peer: Peer,
        alternates: Vec<Peer>,
        now: Instant,
    ) {
        if self.is_local_peer(peer) {
            // Sending to ourselves would only burn Max-Forwards.
            return self.consider(server, 482);
        }
        let mut req = base.clone();
        let local = self.local(peer.transport);
        if creates_dialog(&req) {
            let rr = format!(
                "<sip:{};transport={};lr>",
                endpoint::host_port(local),
                transport_param(peer.transport)
            );
            let mut rrs = req.list(&Name::RECORD_ROUTE);
            rrs.insert(0, rr);
            req.set_list(Name::RECORD_ROUTE, &rrs);
        }
        let mut vias = req.vias();
        vias.insert(0, Endpoint::via(peer.transport, local));
        req.set_list(Name::VIA, &vias);
        let client = self.endpoint.send_request(req.clone(), peer, now);
        self.clients.insert(client.clone(), server.clone());
        if let Some(ctx) = self.contexts.get_mut(server) {
            ctx.forwarded.push(describe(peer));
            ctx.branches.push(Branch {
                client,
                base,
                sent: req,
                peer,
                alternates,
                provisional: false,
                cancel_pending: false,
                done: false,
            });
        }
    }

    fn local(&self, transport: Transport) -> SocketAddr {
        match transport {
            Transport::Udp => self.config.local_udp,
            Transport::Tcp => self.config.local_tcp,
        }
    }

    // ---- responses -------------------------------------------------------

    fn on_response(&mut self, client: TxKey, mut resp: Message, now: Instant) {
        if resp.cseq().is_ok_and(|c| c.method == Method::CANCEL) {
            // Our own hop-by-hop CANCEL: nobody upstream asked for it.
            return;
        }
        let Some(server) = self.clients.get(&client).cloned() else {
            return self.relay_stray(resp);
        };
        pop_via(&mut resp);
        let code = resp.code().unwrap_or(0);
        let Some(ctx) = self.contexts.get_mut(&server) else {
            return self.relay(resp);
        };
        let Some(i) = ctx.branches.iter().position(|b| b.client == client) else {
            return;
        };
        let invite = ctx.invite;
        if code < 200 {
            let branch = &mut ctx.branches[i];
            branch.provisional = true;
            let cancel = std::mem::take(&mut branch.cancel_pending);
            let forward = code > 100 && !ctx.final_sent;
            if cancel {
                self.send_cancel(&server, i, now);
            }
            if forward {
                self.upstream(&server, resp, now);
            }
            return;
        }
        if code < 300 {
            ctx.branches[i].done = true;
            let first = !ctx.final_sent;
            ctx.final_sent = true;
            if first {
                let (request, forwarded) = (ctx.request.clone(), ctx.forwarded.clone());
                self.log(&request, Some(code), &forwarded);
            }
            // Every 2xx goes up, even a second one from another fork
            // (§16.7 step 9): each is a dialog the caller must ACK.
            self.upstream(&server, resp, now);
            if first && invite {
                self.cancel_branches(&server, now);
            }
            return self.settle(&server, now);
        }
        let branch = &ctx.branches[i];
        if code == 503 && !branch.provisional && !ctx.cancelled && !branch.alternates.is_empty() {
            return self.failover(&server, i, now);
        }
        ctx.branches[i].done = true;
        if code == 503 {
            // §16.7 step 6: a downstream's overload is not ours; the
            // upstream must not avoid us for it.
            let mut as500 = Message::response(500);
            as500.headers = resp.headers;
            as500.body = resp.body;
            resp = as500;
        }
        self.consider_response(&server, resp);
        if code >= 600 && invite {
            self.cancel_branches(&server, now);
        }
        self.settle(&server, now);
    }

    /// Timer B/F (no answer: 408, or the next address), or Timer C on a
    /// ringing branch (CANCEL it, then 408).
    fn on_timeout(&mut self, key: TxKey, now: Instant) {
        if !key.client {
            return;
        }
        let Some(server) = self.clients.get(&key).cloned() else {
            return;
        };
        let Some(ctx) = self.contexts.get_mut(&server) else {
            return;
        };
        let Some(i) = ctx.branches.iter().position(|b| b.client == key) else {
            return;
        };
        let branch = &ctx.branches[i];
        if branch.done {
            return;
        }
        if branch.provisional && ctx.invite {
            self.send_cancel(&server, i, now);
        } else if !ctx.cancelled && !branch.alternates.is_empty() {
            return self.failover(&server, i, now);
        }
        if let Some(ctx) = self.contexts.get_mut(&server) {
            ctx.branches[i].done = true;
        }
        self.consider(&server, 408);
        self.settle(&server, now);
    }

    /// Retire branch `i` and try its next address (RFC 3263 §4.3).
    fn failover(&mut self, server: &TxKey, i: usize, now: Instant) {
        let Some(ctx) = self.contexts.get_mut(server) else {
            return;
        };
        let branch = &mut ctx.branches[i];
        branch.done = true;
        let mut alternates = std::mem::take(&mut branch.alternates);
        let base = branch.base.clone();
        let client = branch.client.clone();
        self.clients.remove(&client);
        if alternates.is_empty() {
            return self.settle(server, now);
        }
        let next = alternates.remove(0);
        self.send_branch(server, base, next, alternates, now);
        self.settle(server, now);
    }

    /// Record a synthesized final response as a branch outcome.
    fn consider(&mut self, server: &TxKey, code: u16) {
        let Some(ctx) = self.contexts.get(server) else {
            return;
        };
        let resp = synth(&ctx.request, code);
        self.consider_response(server, resp);
    }

    /// §16.7 steps 5–6: keep the best final response so far.
    fn consider_response(&mut self, server: &TxKey, resp: Message) {
        let Some(ctx) = self.contexts.get_mut(server) else {
            return;
        };
        let code = resp.code().unwrap_or(500);
        if code == 401 || code == 407 {
            for name in [Name::WWW_AUTHENTICATE, Name::PROXY_AUTHENTICATE] {
                for v in resp.headers.get_raw(&name) {
                    let entry = (name.clone(), v.to_string());
                    if !ctx.challenges.contains(&entry) {
                        ctx.challenges.push(entry);
                    }
                }
            }
        }
        // (No is_none_or: the workspace's rust-version is 1.80.)
        let better = match &ctx.best {
            None => true,
            Some(b) => rank(code) < rank(b.code().unwrap_or(500)),
        };
        if better {
            ctx.best = Some(resp);
        }
    }

    /// Send the best response once every branch has ended, and forget the
    /// context once nothing more can arrive for it.
    fn settle(&mut self, server: &TxKey, now: Instant) {
        let Some(ctx) = self.contexts.get_mut(server) else {
            return;
        };
        let all_done = ctx.resolving == 0 && ctx.branches.iter().all(|b| b.done);
        if !all_done {
            return;
        }
        if !ctx.final_sent {
            ctx.final_sent = true;
            let mut resp = ctx.best.take().unwrap_or_else(|| synth(&ctx.request, 500));
            let code = resp.code().unwrap_or(500);
            if code == 401 || code == 407 {
                for name in [Name::WWW_AUTHENTICATE, Name::PROXY_AUTHENTICATE] {
                    let values: Vec<String> = ctx
                        .challenges
                        .iter()
                        .filter(|(n, _)| *n == name)
                        .map(|(_, v)| v.clone())
                        .collect();
                    resp.set_list(name.clone(), &values);
                }
            }
            let (request, forwarded) = (ctx.request.clone(), ctx.forwarded.clone());
            self.log(&request, resp.code(), &forwarded);
            self.upstream(server, resp, now);
        }
        if let Some(ctx) = self.contexts.remove(server) {
            for b in ctx.branches {
                self.clients.remove(&b.client);
            }
        }
    }

    /// A response for the server transaction `server` (our Via popped).
    fn upstream(&mut self, server: &TxKey, resp: Message, now: Instant) {
        if self.endpoint.is_live(server) {
            self.endpoint.respond(server, resp, now);
        } else {
            self.relay(resp);
        }
    }

    /// §16.7 for a response without a transaction (typically a 2xx
    /// retransmitted after ours ended): forward statelessly if our Via is
    /// on top.
    fn relay_stray(&mut self, mut resp: Message) {
        if resp.cseq().is_ok_and(|c| c.method == Method::CANCEL) {
            return;
        }
        let ours = resp
            .vias()
            .first()
            .and_then(|v| msg::parse_value::<msg::Via>(v))
            .is_some_and(|v| self.is_our_addr(&v.sent_by));
        if ours {
            pop_via(&mut resp);
            self.relay(resp);
        }
    }

    /// Send a response (our Via already gone) where its top Via says.
    fn relay(&mut self, resp: Message) {
        let Some(top) = resp.vias().first().cloned() else {
            return;
        };
        let transport = msg::parse_value::<msg::Via>(&top)
            .and_then(|v| Transport::parse(&v.transport))
            .unwrap_or(Transport::Udp);
        if let Some(addr) = msg::response_target(&top, 5060) {
            self.endpoint
                .send_stateless(&resp, Peer { transport, addr });
        }
    }

    // ---- CANCEL and ACK --------------------------------------------------

    /// §16.10: answer the CANCEL, cancel every branch; the INVITE's 487
    /// comes back from downstream like any final response.
    fn on_cancel(&mut self, key: TxKey, req: &Message, now: Instant) {
        let invite = req
            .branch()
            .and_then(|b| self.endpoint.invite_for_cancel(&b));
        let Some(invite) = invite else {
            return self.reply(&key, req, 481, now);
        };
        self.reply(&key, req, 200, now);
        let Some(ctx) = self.contexts.get_mut(&invite) else {
            return;
        };
        if ctx.final_sent {
            return;
        }
        ctx.cancelled = true;
        // Parked targets never start; without any live branch the 487 is
        // ours to send.
        let parked = ctx.resolving;
        ctx.resolving = 0;
        if parked > 0 {
            self.pending
                .retain(|p| !matches!(&p.work, Work::Branch { server, .. } if *server == invite));
        }
        self.cancel_branches(&invite, now);
        let live = self
            .contexts
            .get(&invite)
            .is_some_and(|c| c.branches.iter().any(|b| !b.done));
        if !live {
            self.consider(&invite, 487);
        }
        self.settle(&invite, now);
    }

    fn cancel_branches(&mut self, server: &TxKey, now: Instant) {
        let Some(ctx) = self.contexts.get_mut(server) else {
            return;
        };
        if !ctx.invite {
            return;
        }
        let mut now_cancel = Vec::new();
        for (i, b) in ctx.branches.iter_mut().enumerate() {
            if b.done {
                continue;
            }
            if b.provisional {
                now_cancel.push(i);
            } else {
                b.cancel_pending = true;
            }
        }
        for i in now_cancel {
            self.send_cancel(server, i, now);
        }
    }

    /// §9.1: a CANCEL for branch `i`, matching its INVITE hop by hop.
    fn send_cancel(&mut self, server: &TxKey, i: usize, now: Instant) {
        let Some(branch) = self.contexts.get(server).and_then(|c| c.branches.get(i)) else {
            return;
        };
        let inv = &branch.sent;
        let (Some(uri), Some(via), Ok(cseq)) = (inv.uri(), inv.vias().first().cloned(), inv.cseq())
        else {
            return;
        };
        let mut cancel = Message::request(Method::CANCEL, uri.clone());
        cancel.add(Name::VIA, via);
        cancel.add(Name::MAX_FORWARDS, "70");
        for name in [Name::FROM, Name::TO, Name::CALL_ID] {
            if let Some(v) = inv.raw(&name) {
                cancel.add(name, v.to_string());
            }
        }
        cancel.add(Name::CSEQ, format!("{} CANCEL", cseq.cseq));
        for route in inv.list(&Name::ROUTE) {
            cancel.add(Name::ROUTE, route);
        }
        let peer = branch.peer;
        self.endpoint.send_request(cancel, peer, now);
    }

    /// An ACK for a 2xx is its own transaction and gets no response:
    /// route it like the INVITE's dialog says and send it statelessly.
    fn on_ack(&mut self, mut ack: Message, now: Instant) {
        if ack.max_forwards() == Some(0) {
            return self.log(&ack, None, &["dropped (Max-Forwards 0)".into()]);
        }
        self.strip_own_route(&mut ack);
        match self.route(&ack, now) {
            Routing::Local | Routing::Reply(_) => self.log(&ack, None, &["absorbed".into()]),
            Routing::Forward(targets) => {
                let Some(target) = targets.into_iter().next() else {
                    return;
                };
                let msg = prepare(&ack, target.ruri);
                match target.hop {
                    Hop::Direct(peer) => self.send_ack(msg, peer),
                    Hop::Lookup {
                        domain,
                        port,
                        transport,
                    } => {
                        let parked = self.park(domain, port, transport, Work::Ack { msg }, now);
                        if !parked {
                            self.log(&ack, None, &["dropped (resolver busy)".into()]);
                        }
                    }
                }
            }
        }
    }

    fn send_ack(&mut self, mut ack: Message, peer: Peer) {
        if self.is_local_peer(peer) {
            return self.log(&ack, None, &["dropped (loop)".into()]);
        }
        let mut h = Sha256::new();
        h.update(self.secret.as_bytes());
        h.update(ack.branch().unwrap_or_default().as_bytes());
        h.update(describe(peer).as_bytes());
        let branch: String = h.finalize()[..10]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let via = format!(
            "SIP/2.0/{} {};branch=z9hG4bK{branch};rport",
            peer.transport.via_name(),
            endpoint::host_port(self.local(peer.transport))
        );
        let mut vias = ack.vias();
        vias.insert(0, via);
        ack.set_list(Name::VIA, &vias);
        self.endpoint.send_stateless(&ack, peer);
        self.log(&ack, None, &[describe(peer)]);
    }

    // ---- log ---------------------------------------------------------------

    fn log(&mut self, req: &Message, code: Option<u16>, forwarded: &[String]) {
        if !self.config.log {
            return;
        }
        let uri_of = |h: Result<msg::FromTo, msg::ParseError>| {
            h.map(|v| v.uri.uri.default_print_ctx().to_string())
                .unwrap_or_else(|_| "-".into())
        };
        let line = format!(
            "{} call-id={} from={} to={} result={} forwarded={}",
            req.method().map(|m| m.to_string()).unwrap_or_default(),
            req.call_id().unwrap_or_else(|_| "-".into()),
            uri_of(req.from()),
            uri_of(req.to()),
            code.map_or_else(|| "-".to_string(), |c| c.to_string()),
            if forwarded.is_empty() {
                "-".to_string()
            } else {
                forwarded.join(",")
            },
        );
        // A driver that never reads the log must not make it a leak.
        if self.logs.len() >= MAX_LOG_LINES {
            self.logs.pop_front();
        }
        // Header values cannot hold CR/LF, but a line is a line.
        self.logs.push_back(line.replace(['\r', '\n'], " "));
    }
}

impl SansIo for Proxy {
    fn receive(&mut self, bytes: &[u8], from: Peer, now: Instant) {
        self.endpoint.receive(bytes, from, now);
        self.process(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.endpoint.handle_timeout(now);
        self.process(now);
        self.location.handle_timeout(now);
        let (expired, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.deadline <= now);
        self.pending = rest;
        for p in expired {
            self.asked.remove(&p.domain);
            self.run_work(p.work, Vec::new(), 503, now);
        }
        self.process(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.endpoint.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let parked = self.pending.iter().map(|p| p.deadline).min();
        [
            self.endpoint.poll_timeout(),
            self.location.poll_timeout(),
            parked,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

// ---- message surgery -------------------------------------------------------

/// A fresh response from us (with a To tag, §8.2.6.2).
fn synth(req: &Message, code: u16) -> Message {
    Message::response_to(req, code, Some(&crate::ids::tag()))
}

/// §16.6 steps 1–3: copy, retarget, count the hop.
fn prepare(req: &Message, ruri: Option<SipUri>) -> Message {
    let mut out = req.clone();
    if let (Some(uri), Some(slot)) = (ruri, out.uri_mut()) {
        *slot = uri;
    }
    let hops = req.max_forwards().map_or(70, |n| n.saturating_sub(1));
    let pos = out.headers.contains(&Name::MAX_FORWARDS);
    if pos {
        out.set_list(Name::MAX_FORWARDS, &[hops.to_string()]);
    } else {
        out.add(Name::MAX_FORWARDS, hops.to_string());
    }
    out
}

/// Requests whose 2xx creates a dialog: we Record-Route them so the
/// dialog's later requests pass through us too (§16.6 step 4).
fn creates_dialog(req: &Message) -> bool {
    req.to_tag().is_none()
        && matches!(
            req.method(),
            Some(m) if *m == Method::INVITE || *m == Method::SUBSCRIBE || *m == Method::REFER
        )
}

fn user_of(uri: &SipUri) -> Option<String> {
    match &uri.user_part {
        SipUriUserPart::Empty => None,
        SipUriUserPart::User(u) => Some(u.to_string()),
        SipUriUserPart::UserPw(u) => Some(u.user.to_string()),
    }
}

/// The URI of a Route / Record-Route element.
fn route_uri(value: &str) -> Option<SipUri> {
    msg::parse_value::<msg::Contact>(value).map(|c| c.uri.uri)
}

fn pop_via(resp: &mut Message) {
    let mut vias = resp.vias();
    if !vias.is_empty() {
        vias.remove(0);
    }
    resp.set_list(Name::VIA, &vias);
}

fn transport_param(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    }
}

fn describe(peer: Peer) -> String {
    format!("{}:{}", transport_param(peer.transport), peer.addr)
}

/// §16.7 step 6 as an ordering: any 6xx, else 3xx before 4xx before 5xx;
/// among 4xx the ones a UA can act on (credentials, media types,
/// extensions, address completion) first.
fn rank(code: u16) -> (u8, u8) {
    let class = match code / 100 {
        6 => 0,
        3 => 1,
        4 => 2,
        5 => 3,
        _ => 4,
    };
    let actionable = matches!(code, 401 | 407 | 415 | 420 | 484);
    (class, u8::from(!actionable))
}

#[cfg(test)]
mod tests;
