//! The transaction layer: matches what arrives to transactions, runs their
//! timers, and hands the transaction user (a UA or the proxy) events.
//!
//! Sans-IO in the quinn-proto manner: bytes go in through
//! [`Endpoint::receive`], time through [`Endpoint::handle_timeout`]; bytes
//! come out of [`Endpoint::poll_transmit`], happenings out of
//! [`Endpoint::poll_event`], and [`Endpoint::poll_timeout`] says when to call
//! back. The I/O layer owns sockets and nothing else.

use crate::msg::{self, Message, Method, Name};
use crate::transaction::{Output, Peer, Timers, Transport, Tx};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Bytes for the I/O layer to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub to: Peer,
    pub bytes: Vec<u8>,
}

/// What an I/O driver needs of a sans-IO SIP core (the endpoint itself, a
/// user agent, the proxy): bytes and time in, bytes and a deadline out.
/// One driver loop then serves every role.
pub trait SansIo {
    /// One whole datagram, or one message the driver cut from a TCP stream.
    fn receive(&mut self, bytes: &[u8], from: Peer, now: Instant);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self) -> Option<Transmit>;
    fn poll_timeout(&self) -> Option<Instant>;
}

impl SansIo for Endpoint {
    fn receive(&mut self, bytes: &[u8], from: Peer, now: Instant) {
        Endpoint::receive(self, bytes, from, now)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Endpoint::handle_timeout(self, now)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Endpoint::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Endpoint::poll_timeout(self)
    }
}

/// Names one transaction: its branch and the method it matches on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxKey {
    pub branch: String,
    pub method: Method,
    pub client: bool,
}

#[derive(Debug)]
pub enum Event {
    /// A new request: a server transaction `key` waits for our response.
    Request {
        key: TxKey,
        msg: Message,
        from: Peer,
    },
    /// An ACK for a 2xx (it is its own transaction and gets no response).
    Ack { msg: Message, from: Peer },
    /// A response on one of our client transactions.
    Response { key: TxKey, msg: Message },
    /// A response that matches no transaction: a proxy forwards these
    /// (late 2xx retransmissions), a UA re-ACKs a 2xx it has seen.
    StrayResponse { msg: Message, from: Peer },
    /// No final response in time (Timer B/F), or the peer never ACKed our
    /// final response (Timer H), or never ACKed our 2xx (§13.3.1.4).
    Timeout { key: TxKey },
    /// Something arrived that was not SIP we could read; already answered
    /// with 400 where it was a request.
    Malformed { from: Peer, error: msg::ParseError },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub timers: Timers,
    /// A UA retransmits its own 2xx to INVITE until the ACK comes (RFC 3261
    /// §13.3.1.4); a proxy must not (the UAS does it end to end).
    pub retransmit_2xx: bool,
    /// Product token for User-Agent/Server headers.
    pub user_agent: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timers: Timers::default(),
            retransmit_2xx: true,
            user_agent: format!("wisp/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// A 2xx to INVITE that we keep sending until its ACK arrives.
#[derive(Debug)]
struct PendingOk {
    to: Peer,
    bytes: Vec<u8>,
    next: Instant,
    interval: Duration,
    give_up: Instant,
    key: TxKey,
}

/// A transaction and the instant its entry in [`Endpoint::timers`] was
/// made for.
#[derive(Debug)]
struct Slot {
    tx: Tx,
    armed: Option<Instant>,
}

#[derive(Default)]
pub struct Endpoint {
    pub config: Config,
    /// Boxed: the table doubles as it grows, and a slot is hundreds of
    /// bytes; a pointer per bucket keeps the empty half small.
    txs: HashMap<TxKey, Box<Slot>>,
    /// Every transaction's next timer, soonest first, so that neither
    /// [`Endpoint::poll_timeout`] nor [`Endpoint::handle_timeout`] walks all
    /// transactions (a registrar holds tens of thousands, each for Timer J's
    /// 32 s). An entry whose instant is not its slot's `armed` is stale (the
    /// timer moved, or the transaction ended) and is skipped; the top entry
    /// is never stale between calls, so `poll_timeout` is exact.
    timers: BinaryHeap<Reverse<(Instant, TxKey)>>,
    pending_oks: HashMap<(String, u32), PendingOk>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl Endpoint {
    pub fn new(config: Config) -> Endpoint {
        Endpoint {
            config,
            ..Default::default()
        }
    }

    /// Bytes from the wire.
    pub fn receive(&mut self, bytes: &[u8], from: Peer, now: Instant) {
        match Message::parse(bytes) {
            Ok(m) => self.receive_message(m, from, now),
            Err(error) => {
                if let Some(reply) = bad_request(bytes, &error) {
                    self.transmits.push_back(Transmit {
                        to: from,
                        bytes: reply,
                    });
                }
                self.events.push_back(Event::Malformed { from, error });
            }
        }
    }

    /// A message already parsed (a stream decoder cut it from TCP).
    pub fn receive_message(&mut self, mut m: Message, from: Peer, now: Instant) {
        if m.is_request() {
            m.stamp_received(from.addr);
            self.receive_request(m, from, now)
        } else {
            self.receive_response(m, from, now)
        }
    }

    fn receive_request(&mut self, m: Message, from: Peer, now: Instant) {
        let Some(branch) = m.branch() else {
            let reply = Message::response_to(&m, 400, Some(&crate::ids::tag()));
            self.transmits.push_back(Transmit {
                to: from,
                bytes: reply.to_bytes(),
            });
            return;
        };
        let method = m.method().cloned().unwrap_or(Method::OPTIONS);
        if method == Method::ACK {
            if let (Ok(cid), Ok(cseq)) = (m.call_id(), m.cseq()) {
                self.pending_oks.remove(&(cid, cseq.cseq));
            }
        }
        let key = TxKey {
            branch: branch.clone(),
            method: if method == Method::ACK {
                Method::INVITE
            } else {
                method.clone()
            },
            client: false,
        };
        if let Some(slot) = self.txs.get_mut(&key) {
            let outputs = slot.tx.on_request(&m, now);
            let peer = slot.tx.peer;
            // An ACK that reaches an INVITE transaction we answered 2xx is
            // the end-to-end ACK: the TU sees it (RFC 6026 §8.7).
            let accepted = slot.tx.state == crate::transaction::State::Accepted;
            self.rearm(&key);
            self.apply(&key, peer, outputs);
            if method == Method::ACK && accepted {
                self.events.push_back(Event::Ack { msg: m, from });
            }
            return;
        }
        if method == Method::ACK {
            self.events.push_back(Event::Ack { msg: m, from });
            return;
        }
        // Responses go back where RFC 3261 §18.2.2 says: the same connection
        // for TCP, the Via's received/rport for UDP.
        let reply_to = match from.transport {
            Transport::Tcp => from,
            Transport::Udp => Peer {
                transport: Transport::Udp,
                addr: m
                    .top_via_text()
                    .and_then(|v| msg::response_target(v, 5060))
                    .unwrap_or(from.addr),
            },
        };
        let tx = Tx::server(m.clone(), reply_to, self.config.timers);
        self.insert(key.clone(), tx);
        self.events.push_back(Event::Request { key, msg: m, from });
    }

    fn receive_response(&mut self, m: Message, from: Peer, now: Instant) {
        let key = match (m.branch(), m.cseq()) {
            (Some(branch), Ok(cseq)) => TxKey {
                branch,
                method: cseq.method,
                client: true,
            },
            _ => return,
        };
        match self.txs.get_mut(&key) {
            Some(slot) => {
                let outputs = slot.tx.on_response(m, now);
                let peer = slot.tx.peer;
                self.rearm(&key);
                self.apply(&key, peer, outputs);
            }
            None => self.events.push_back(Event::StrayResponse { msg: m, from }),
        }
    }

    fn apply(&mut self, key: &TxKey, peer: Peer, outputs: Vec<Output>) {
        for o in outputs {
            match o {
                Output::Send(bytes) => self.transmits.push_back(Transmit { to: peer, bytes }),
                Output::Response(msg) => self.events.push_back(Event::Response {
                    key: key.clone(),
                    msg: *msg,
                }),
                Output::Timeout => self.events.push_back(Event::Timeout { key: key.clone() }),
            }
        }
    }

    /// Start a client transaction for `req` (which carries its top Via with
    /// a fresh branch) towards `to`. ACK is not a transaction: use
    /// [`Endpoint::send_stateless`].
    pub fn send_request(&mut self, req: Message, to: Peer, now: Instant) -> TxKey {
        let key = TxKey {
            branch: req.branch().unwrap_or_default(),
            method: req.method().cloned().unwrap_or(Method::OPTIONS),
            client: true,
        };
        let (tx, first) = Tx::client(req, to, self.config.timers, now);
        self.insert(key.clone(), tx);
        self.apply(&key, to, vec![first]);
        key
    }

    /// Answer the server transaction `key`.
    pub fn respond(&mut self, key: &TxKey, mut resp: Message, now: Instant) {
        if resp.raw(&Name::SERVER).is_none() {
            resp.add(Name::SERVER, self.config.user_agent.clone());
        }
        let Some(slot) = self.txs.get_mut(key) else {
            return;
        };
        let tx = &mut slot.tx;
        let peer = tx.peer;
        let outputs = tx.respond(&resp, now);
        let code = resp.code().unwrap_or(0);
        if self.config.retransmit_2xx
            && (200..300).contains(&code)
            && tx.kind == crate::transaction::Kind::ServerInvite
        {
            if let (Ok(cid), Ok(cseq)) = (resp.call_id(), resp.cseq()) {
                let t1 = self.config.timers.t1;
                self.pending_oks.insert(
                    (cid, cseq.cseq),
                    PendingOk {
                        to: peer,
                        bytes: resp.to_bytes(),
                        next: now + t1,
                        interval: t1,
                        give_up: now + self.config.timers.long(),
                        key: key.clone(),
                    },
                );
            }
        }
        self.rearm(key);
        self.apply(key, peer, outputs);
    }

    /// Send without a transaction: ACK for a 2xx, or a proxy forwarding a
    /// stray 2xx.
    pub fn send_stateless(&mut self, msg: &Message, to: Peer) {
        self.transmits.push_back(Transmit {
            to,
            bytes: msg.to_bytes(),
        });
    }

    /// The server transaction for an INVITE that a CANCEL with `branch`
    /// targets (RFC 3261 §9.2).
    pub fn invite_for_cancel(&self, branch: &str) -> Option<TxKey> {
        let key = TxKey {
            branch: branch.to_string(),
            method: Method::INVITE,
            client: false,
        };
        self.txs.contains_key(&key).then_some(key)
    }

    /// The request that opened transaction `key` (either side).
    pub fn request(&self, key: &TxKey) -> Option<&Message> {
        self.txs.get(key).and_then(|s| s.tx.request())
    }

    pub fn is_live(&self, key: &TxKey) -> bool {
        self.txs.contains_key(key)
    }

    /// Whether a server INVITE transaction has not yet sent a final response.
    pub fn is_proceeding(&self, key: &TxKey) -> bool {
        self.txs
            .get(key)
            .is_some_and(|s| s.tx.state == crate::transaction::State::Proceeding)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let txs = self.timers.peek().map(|Reverse((at, _))| *at);
        let oks = self.pending_oks.values().map(|p| p.next.min(p.give_up));
        txs.into_iter().chain(oks).min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.timers.pop() else {
                break;
            };
            let Some(slot) = self.txs.get_mut(&key) else {
                continue;
            };
            if slot.armed != Some(at) {
                continue;
            }
            slot.armed = None;
            let outputs = slot.tx.on_timer(now);
            let peer = slot.tx.peer;
            if slot.tx.is_terminated() {
                self.txs.remove(&key);
            } else {
                self.rearm(&key);
            }
            self.apply(&key, peer, outputs);
        }
        self.drop_stale();

        let t2 = self.config.timers.t2;
        let mut gave_up = Vec::new();
        for (id, p) in self.pending_oks.iter_mut() {
            if p.give_up <= now {
                gave_up.push(id.clone());
            } else if p.next <= now {
                self.transmits.push_back(Transmit {
                    to: p.to,
                    bytes: p.bytes.clone(),
                });
                p.interval = (p.interval * 2).min(t2);
                p.next = now + p.interval;
            }
        }
        for id in gave_up {
            if let Some(p) = self.pending_oks.remove(&id) {
                self.events.push_back(Event::Timeout { key: p.key });
            }
        }
    }

    fn insert(&mut self, key: TxKey, tx: Tx) {
        self.txs
            .insert(key.clone(), Box::new(Slot { tx, armed: None }));
        self.rearm(&key);
    }

    /// After a transaction's timers may have moved: queue its next one.
    fn rearm(&mut self, key: &TxKey) {
        let Some(slot) = self.txs.get_mut(key) else {
            return;
        };
        let next = slot.tx.next_timer();
        if next == slot.armed {
            return;
        }
        slot.armed = next;
        if let Some(at) = next {
            self.timers.push(Reverse((at, key.clone())));
        }
        self.drop_stale();
    }

    /// Pop stale entries off the top of the timer heap, so the top is a
    /// live timer (what `poll_timeout` reports). Stale entries deeper down
    /// wait until they reach the top.
    fn drop_stale(&mut self) {
        while let Some(Reverse((at, key))) = self.timers.peek() {
            let live = self.txs.get(key).is_some_and(|s| s.armed == Some(*at));
            if live {
                break;
            }
            self.timers.pop();
        }
    }

    /// How many transactions are alive (for tests and status).
    pub fn transaction_count(&self) -> usize {
        self.txs.len()
    }

    /// Local address as it should appear in a Via or Contact: the I/O layer
    /// tells the TU, the endpoint only formats it.
    pub fn via(transport: Transport, local: SocketAddr) -> String {
        format!(
            "SIP/2.0/{} {};branch={};rport",
            transport.via_name(),
            host_port(local),
            crate::ids::branch()
        )
    }
}

/// `host:port` with IPv6 literals bracketed, as SIP URIs and Vias want.
pub fn host_port(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// Best-effort 400 for bytes that looked like a request but did not parse:
/// copy what we can of the headers a client needs to match the answer
/// (RFC 3261 §8.2.6.2). Responses and unreadable junk get nothing.
pub fn bad_request(bytes: &[u8], error: &msg::ParseError) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(msg::MAX_MESSAGE)]);
    let mut lines = text.lines();
    let first = lines.next()?;
    if first.starts_with("SIP/") || !first.trim_end().ends_with("SIP/2.0") {
        return None;
    }
    let mut out = String::from("SIP/2.0 400 Bad Request\r\n");
    let mut have_via = false;
    for line in lines.take_while(|l| !l.trim().is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let long = match name.trim().to_ascii_lowercase().as_str() {
            "via" | "v" => "Via",
            "from" | "f" => "From",
            "to" | "t" => "To",
            "call-id" | "i" => "Call-ID",
            "cseq" => "CSeq",
            _ => continue,
        };
        have_via |= long == "Via";
        out.push_str(&format!("{long}: {}\r\n", value.trim()));
    }
    if !have_via {
        return None;
    }
    let reason: String = error
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .map(|c| if c == '"' { '\'' } else { c })
        .take(100)
        .collect();
    out.push_str(&format!(
        "Warning: 399 wisp \"{reason}\"\r\nContent-Length: 0\r\n\r\n"
    ));
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn invite() -> Message {
        let text = "INVITE sip:bob@127.0.0.1:5070 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKinv1;rport\r\n\
Max-Forwards: 70\r\nTo: <sip:bob@wxyz.com>\r\nFrom: <sip:fred@abcd.com>;tag=f1\r\n\
Call-ID: c1@abcd.com\r\nCSeq: 7 INVITE\r\nContact: <sip:fred@127.0.0.1:5060>\r\nContent-Length: 0\r\n\r\n";
        Message::parse(text.as_bytes()).unwrap()
    }

    fn drain(ep: &mut Endpoint) -> (Vec<Transmit>, Vec<Event>) {
        let mut t = Vec::new();
        let mut e = Vec::new();
        while let Some(x) = ep.poll_transmit() {
            t.push(x);
        }
        while let Some(x) = ep.poll_event() {
            e.push(x);
        }
        (t, e)
    }

    #[test]
    fn invite_through_two_endpoints_with_2xx_retransmission_until_ack() {
        let t0 = Instant::now();
        let mut uac = Endpoint::new(Config::default());
        let mut uas = Endpoint::new(Config::default());
        let key = uac.send_request(invite(), peer(5070), t0);
        let (t, _) = drain(&mut uac);
        uas.receive(&t[0].bytes, peer(5060), t0);
        let (_, ev) = drain(&mut uas);
        let Event::Request { key: skey, msg, .. } = &ev[0] else {
            panic!("{ev:?}")
        };
        // The request as received is stamped with where it came from.
        assert!(msg.vias()[0].contains("rport=5060"));
        let ok = Message::response_to(msg, 200, Some("b1"));
        uas.respond(skey, ok, t0);
        let (t, _) = drain(&mut uas);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].to, peer(5060));
        uac.receive(&t[0].bytes, peer(5070), t0);
        let (_, ev) = drain(&mut uac);
        assert!(
            matches!(&ev[0], Event::Response { key: k, msg } if *k == key && msg.code() == Some(200))
        );

        // No ACK yet: the UAS retransmits its 2xx at T1, 2T1, ...
        uas.handle_timeout(t0 + Duration::from_millis(500));
        uas.handle_timeout(t0 + Duration::from_millis(1500));
        let (t, _) = drain(&mut uas);
        assert_eq!(t.len(), 2);
        // The ACK stops it.
        let mut ack = invite();
        ack.line = Message::request(Method::ACK, ack.uri().unwrap().clone()).line;
        ack.set(Name::VIA, "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKack1");
        ack.set(Name::CSEQ, "7 ACK");
        uas.receive(&ack.to_bytes(), peer(5060), t0 + Duration::from_secs(2));
        let (_, ev) = drain(&mut uas);
        assert!(matches!(ev[0], Event::Ack { .. }));
        uas.handle_timeout(t0 + Duration::from_secs(10));
        let (t, ev) = drain(&mut uas);
        assert!(t.is_empty() && ev.is_empty());
    }

    fn register(branch: &str) -> Vec<u8> {
        format!(
            "REGISTER sip:wxyz.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n\
Max-Forwards: 70\r\nTo: <sip:bob@wxyz.com>\r\nFrom: <sip:bob@wxyz.com>;tag=f1\r\n\
Call-ID: {branch}@h\r\nCSeq: 1 REGISTER\r\nContact: <sip:bob@127.0.0.1:5060>\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    /// The timer index answers what a walk over every transaction would:
    /// the soonest timer, also after timers moved later or went away.
    #[test]
    fn poll_timeout_follows_moved_and_finished_timers() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut ep = Endpoint::new(Config::default());
        // A client OPTIONS: Timer E at T1, Timer F at 64·T1.
        let mut options = invite();
        options.line = Message::request(Method::OPTIONS, options.uri().unwrap().clone()).line;
        options.set(Name::CSEQ, "8 OPTIONS");
        ep.send_request(options, peer(5070), t0);
        let (t, _) = drain(&mut ep);
        let sent = Message::parse(&t[0].bytes).unwrap();
        assert_eq!(ep.poll_timeout(), Some(t0 + Duration::from_millis(500)));
        // Two REGISTERs in, answered at 1 s and 2 s: Timer J for each.
        for b in ["z9hG4bKa", "z9hG4bKb"] {
            ep.receive(&register(b), peer(5060), t0);
        }
        let (_, ev) = drain(&mut ep);
        let keys: Vec<TxKey> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Request { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(keys.len(), 2);
        for (i, key) in keys.iter().enumerate() {
            let req = ep.request(key).unwrap().clone();
            ep.respond(
                key,
                Message::response_to(&req, 200, Some("t")),
                t0 + s(1 + i as u64),
            );
        }
        // The answered REGISTERs let go of their requests.
        assert!(ep.request(&keys[0]).is_none());
        // A 200 for the OPTIONS moves its timer from T1 to T4 later.
        drain(&mut ep);
        let ok = Message::response_to(&sent, 200, Some("u"));
        ep.receive(&ok.to_bytes(), peer(5070), t0 + Duration::from_millis(100));
        let (_, ev) = drain(&mut ep);
        assert!(matches!(ev[..], [Event::Response { .. }]), "{ev:?}");
        assert_eq!(ep.poll_timeout(), Some(t0 + Duration::from_millis(5100)));
        ep.handle_timeout(t0 + s(6));
        assert_eq!(ep.transaction_count(), 2);
        assert_eq!(ep.poll_timeout(), Some(t0 + s(33)));
        ep.handle_timeout(t0 + s(33));
        assert_eq!(ep.transaction_count(), 1);
        assert_eq!(ep.poll_timeout(), Some(t0 + s(34)));
        // A retransmitted REGISTER still gets the stored answer.
        ep.receive(&register("z9hG4bKb"), peer(5060), t0 + s(33));
        let (t, ev) = drain(&mut ep);
        assert_eq!((t.len(), ev.len()), (1, 0));
        ep.handle_timeout(t0 + s(34));
        assert_eq!((ep.transaction_count(), ep.poll_timeout()), (0, None));
    }

    #[test]
    fn missing_ack_is_reported() {
        let t0 = Instant::now();
        let mut uas = Endpoint::new(Config::default());
        uas.receive(&invite().to_bytes(), peer(5060), t0);
        let (_, ev) = drain(&mut uas);
        let Event::Request { key, msg, .. } = &ev[0] else {
            panic!()
        };
        uas.respond(key, Message::response_to(msg, 200, Some("b")), t0);
        let mut t = t0;
        for _ in 0..100 {
            t += Duration::from_secs(1);
            uas.handle_timeout(t);
        }
        let (_, ev) = drain(&mut uas);
        assert!(ev.iter().any(|e| matches!(e, Event::Timeout { .. })));
    }

    #[test]
    fn retransmitted_request_is_absorbed() {
        let t0 = Instant::now();
        let mut uas = Endpoint::new(Config::default());
        let bytes = invite().to_bytes();
        uas.receive(&bytes, peer(5060), t0);
        uas.receive(&bytes, peer(5060), t0);
        let (_, ev) = drain(&mut uas);
        assert_eq!(ev.len(), 1);
    }

    #[test]
    fn garbage_request_gets_400_and_garbage_response_nothing() {
        let t0 = Instant::now();
        let mut ep = Endpoint::new(Config::default());
        let broken = "OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCSeq: 1 OPTIONS\r\n\r\n";
        ep.receive(broken.as_bytes(), peer(5060), t0);
        let (t, ev) = drain(&mut ep);
        assert!(matches!(ev[0], Event::Malformed { .. }));
        let reply = Message::parse(&t[0].bytes).unwrap_err();
        // Call-ID was missing, so even our 400 lacks it; it still frames.
        assert_eq!(reply, msg::ParseError::MissingHeader("Call-ID"));
        assert!(String::from_utf8_lossy(&t[0].bytes).starts_with("SIP/2.0 400"));
        ep.receive(b"SIP/2.0 200 OK\r\n\r\n", peer(5060), t0);
        let (t, _) = drain(&mut ep);
        assert!(t.is_empty());
    }
}
