//! RFC 3261 §17 transactions as sans-IO state machines.
//!
//! Each transaction owns its retransmission and timeout timers. Time only
//! enters through `now` arguments and [`Tx::on_timer`], so every timer path
//! (A–K, plus RFC 6026's L and M) is walked in unit tests without sleeping.
//! Reliable transports (TCP) never retransmit and zero the "wait for
//! stragglers" timers, as §17.1.1.2 and friends require.

use crate::msg::{Message, Method, Name};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp)
    }

    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }

    pub fn parse(s: &str) -> Option<Transport> {
        if s.eq_ignore_ascii_case("udp") {
            Some(Transport::Udp)
        } else if s.eq_ignore_ascii_case("tcp") {
            Some(Transport::Tcp)
        } else {
            None
        }
    }
}

/// How long a client INVITE waits in Proceeding after the latest
/// provisional response before giving up (RFC 3261 §16.6 step 11: more than
/// three minutes). A proxy answers that timeout with CANCEL and 408; a UA
/// learns that the callee stopped ringing.
pub const TIMER_C: Duration = Duration::from_secs(181);

/// Where a message goes or came from. For TCP the address names the
/// connection's remote end; the I/O layer keeps one connection per peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// T1, T2, T4 of RFC 3261 §17.1.1.1; settable because a lab link with
/// 100 ms of delay or a test that wants to see Timer B fire needs other
/// values than the 500 ms / 4 s / 5 s defaults.
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    /// 64·T1: Timers B, F, H, J, L, M.
    pub fn long(&self) -> Duration {
        self.t1 * 64
    }
}

/// What a transaction asks of its owner.
#[derive(Debug)]
pub enum Output {
    /// Put these bytes on the wire to the transaction's peer.
    Send(Vec<u8>),
    /// A response for the transaction user (client side).
    Response(Box<Message>),
    /// Timer B or F: no final response came (client side), or Timer H: the
    /// ACK for our final response never came (server side).
    Timeout,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Calling,
    Trying,
    Proceeding,
    Completed,
    /// RFC 6026: an INVITE transaction that saw a 2xx and lingers to absorb
    /// its retransmissions.
    Accepted,
    Confirmed,
    Terminated,
}

/// One timer slot: when it fires and the interval to double next.
#[derive(Clone, Copy, Debug)]
struct Retransmit {
    at: Instant,
    interval: Duration,
}

/// A client or server transaction.
#[derive(Debug)]
pub struct Tx {
    pub kind: Kind,
    pub state: State,
    pub peer: Peer,
    timers: Timers,
    /// The bytes to retransmit: our request (client) or last response (server).
    last: Vec<u8>,
    /// The request that created the transaction; a client INVITE needs it to
    /// build the ACK for a non-2xx final response. A non-INVITE server
    /// transaction lets go of it once answered: all it does from then on is
    /// resend `last` (Timer J keeps it 32 s on UDP, and a registrar holds
    /// tens of thousands of them).
    request: Option<Message>,
    retransmit: Option<Retransmit>,
    /// The one timer that moves the state on (B, D, F, H, I, J, K, L, M).
    deadline: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ClientInvite,
    ClientNonInvite,
    ServerInvite,
    ServerNonInvite,
}

impl Tx {
    /// Start a client transaction: returns it and the first send.
    pub fn client(request: Message, peer: Peer, timers: Timers, now: Instant) -> (Tx, Output) {
        let invite = request.method() == Some(&Method::INVITE);
        let bytes = request.to_bytes();
        let retransmit = (!peer.transport.is_reliable()).then_some(Retransmit {
            at: now + timers.t1,
            interval: timers.t1,
        });
        let tx = Tx {
            kind: if invite {
                Kind::ClientInvite
            } else {
                Kind::ClientNonInvite
            },
            state: if invite {
                State::Calling
            } else {
                State::Trying
            },
            peer,
            timers,
            last: bytes.clone(),
            request: Some(request),
            retransmit,
            deadline: Some(now + timers.long()),
        };
        (tx, Output::Send(bytes))
    }

    /// Start a server transaction for a request just received.
    pub fn server(request: Message, peer: Peer, timers: Timers) -> Tx {
        let invite = request.method() == Some(&Method::INVITE);
        Tx {
            kind: if invite {
                Kind::ServerInvite
            } else {
                Kind::ServerNonInvite
            },
            state: if invite {
                State::Proceeding
            } else {
                State::Trying
            },
            peer,
            timers,
            last: Vec::new(),
            request: Some(request),
            retransmit: None,
            deadline: None,
        }
    }

    /// The request that created the transaction; `None` once a non-INVITE
    /// server transaction has sent its final response.
    pub fn request(&self) -> Option<&Message> {
        self.request.as_ref()
    }

    pub fn is_terminated(&self) -> bool {
        self.state == State::Terminated
    }

    /// The earliest instant at which [`Tx::on_timer`] has work.
    pub fn next_timer(&self) -> Option<Instant> {
        match (self.retransmit.map(|r| r.at), self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn reliable(&self) -> bool {
        self.peer.transport.is_reliable()
    }

    /// Wait `d` on unreliable transports, nothing on reliable ones.
    fn linger(&self, now: Instant, d: Duration) -> Option<Instant> {
        Some(if self.reliable() { now } else { now + d })
    }

    fn terminate(&mut self) {
        self.state = State::Terminated;
        self.retransmit = None;
        self.deadline = None;
    }

    /// A response arrived for this client transaction.
    pub fn on_response(&mut self, resp: Message, now: Instant) -> Vec<Output> {
        let code = resp.code().unwrap_or(0);
        let mut out = Vec::new();
        match (self.kind, self.state) {
            (Kind::ClientInvite, State::Calling | State::Proceeding) => {
                self.retransmit = None;
                if code < 200 {
                    // Timer B only guards Calling (§17.1.1.2): a callee may
                    // ring for minutes. Timer C stands in, restarted by every
                    // provisional, so a transaction is never immortal.
                    self.state = State::Proceeding;
                    self.deadline = Some(now + TIMER_C);
                    out.push(Output::Response(Box::new(resp)));
                } else if code < 300 {
                    // Timer M (RFC 6026 §8.4).
                    self.state = State::Accepted;
                    self.deadline = Some(now + self.timers.long());
                    out.push(Output::Response(Box::new(resp)));
                } else {
                    let ack = self.ack_for(&resp);
                    self.last = ack.clone();
                    out.push(Output::Send(ack));
                    out.push(Output::Response(Box::new(resp)));
                    self.state = State::Completed;
                    // Timer D: at least 32 s on UDP.
                    self.deadline =
                        self.linger(now, Duration::from_secs(32).max(self.timers.long()));
                }
            }
            (Kind::ClientInvite, State::Accepted) if (200..300).contains(&code) => {
                // Retransmitted (or forked) 2xx: the TU must ACK each.
                out.push(Output::Response(Box::new(resp)));
            }
            (Kind::ClientInvite, State::Completed) if code >= 300 => {
                out.push(Output::Send(self.last.clone()));
            }
            (Kind::ClientNonInvite, State::Trying | State::Proceeding) => {
                if code < 200 {
                    self.state = State::Proceeding;
                    out.push(Output::Response(Box::new(resp)));
                } else {
                    self.state = State::Completed;
                    self.retransmit = None;
                    self.deadline = self.linger(now, self.timers.t4);
                    out.push(Output::Response(Box::new(resp)));
                }
            }
            _ => {}
        }
        out
    }

    /// The ACK for a non-2xx final response: same branch, the response's To
    /// (RFC 3261 §17.1.1.3), so it ends this very transaction at the peer.
    fn ack_for(&self, resp: &Message) -> Vec<u8> {
        // Client INVITE transactions keep their request for their whole life.
        let Some(request) = &self.request else {
            return Vec::new();
        };
        let mut ack = request.clone();
        if let Some(uri) = request.uri().cloned() {
            ack.line = Message::request(Method::ACK, uri).line;
        }
        let top = request.headers.get_raw(&Name::VIA).next().cloned();
        ack.headers.remove(&Name::VIA);
        if let Some(top) = top {
            // Only the top element of that line: a request we built has one.
            let first = crate::msg::split_list(&top)
                .first()
                .map(|s| s.to_string())
                .unwrap_or_default();
            ack.add(Name::VIA, first);
        }
        if let Some(to) = resp.raw(&Name::TO) {
            ack.set(Name::TO, to);
        }
        if let Ok(cseq) = request.cseq() {
            ack.set(Name::CSEQ, format!("{} ACK", cseq.cseq));
        }
        for h in [
            Name::CONTENT_TYPE,
            Name::CONTACT,
            Name::AUTHORIZATION,
            Name::PROXY_AUTHORIZATION,
        ] {
            ack.headers.remove(&h);
        }
        ack.body = Default::default();
        ack.to_bytes()
    }

    /// The transaction user answers this server transaction.
    pub fn respond(&mut self, resp: &Message, now: Instant) -> Vec<Output> {
        let code = resp.code().unwrap_or(0);
        let bytes = resp.to_bytes();
        let mut out = Vec::new();
        match (self.kind, self.state) {
            (Kind::ServerInvite, State::Proceeding) => {
                self.last = bytes.clone();
                out.push(Output::Send(bytes));
                if (200..300).contains(&code) {
                    // Timer L (RFC 6026 §8.7); 2xx retransmission is the
                    // TU's job (§13.3.1.4), done by the endpoint.
                    self.state = State::Accepted;
                    self.deadline = Some(now + self.timers.long());
                } else if code >= 300 {
                    self.state = State::Completed;
                    if !self.reliable() {
                        self.retransmit = Some(Retransmit {
                            at: now + self.timers.t1,
                            interval: self.timers.t1,
                        });
                    }
                    // Timer H.
                    self.deadline = Some(now + self.timers.long());
                }
            }
            (Kind::ServerInvite, State::Accepted) if (200..300).contains(&code) => {
                out.push(Output::Send(bytes));
            }
            (Kind::ServerNonInvite, State::Trying | State::Proceeding) => {
                self.last = bytes.clone();
                out.push(Output::Send(bytes));
                if code < 200 {
                    self.state = State::Proceeding;
                } else {
                    self.state = State::Completed;
                    self.request = None;
                    // Timer J.
                    self.deadline = self.linger(now, self.timers.long());
                }
            }
            _ => {}
        }
        out
    }

    /// A retransmission of the request (or, for a server INVITE, its ACK)
    /// reached this server transaction.
    pub fn on_request(&mut self, req: &Message, now: Instant) -> Vec<Output> {
        let is_ack = req.method() == Some(&Method::ACK);
        match (self.kind, self.state, is_ack) {
            (Kind::ServerInvite, State::Completed, true) => {
                self.state = State::Confirmed;
                self.retransmit = None;
                // Timer I.
                self.deadline = self.linger(now, self.timers.t4);
                Vec::new()
            }
            (_, State::Proceeding | State::Completed, false) if !self.last.is_empty() => {
                vec![Output::Send(self.last.clone())]
            }
            _ => Vec::new(),
        }
    }

    /// Run the timers that are due at `now`.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        if let Some(r) = self.retransmit {
            if r.at <= now {
                out.push(Output::Send(self.last.clone()));
                // Timer A doubles without bound; E and G cap at T2; E in
                // Proceeding runs at T2 straight away (§17.1.2.2).
                let interval = match (self.kind, self.state) {
                    (Kind::ClientInvite, _) => r.interval * 2,
                    (Kind::ClientNonInvite, State::Proceeding) => self.timers.t2,
                    _ => (r.interval * 2).min(self.timers.t2),
                };
                self.retransmit = Some(Retransmit {
                    at: now + interval,
                    interval,
                });
            }
        }
        if let Some(d) = self.deadline {
            if d <= now {
                let timed_out = matches!(
                    (self.kind, self.state),
                    (Kind::ClientInvite, State::Calling | State::Proceeding)
                        | (Kind::ClientNonInvite, State::Trying | State::Proceeding)
                        | (Kind::ServerInvite, State::Completed)
                );
                self.terminate();
                if timed_out {
                    out.retain(|o| !matches!(o, Output::Send(_)));
                    out.push(Output::Timeout);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Message;

    fn request(method: &str) -> Message {
        let text = format!(
            "{method} sip:bob@wxyz.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc\r\n\
Max-Forwards: 70\r\nTo: <sip:bob@wxyz.com>\r\nFrom: <sip:fred@abcd.com>;tag=f1\r\n\
Call-ID: c1@abcd.com\r\nCSeq: 1 {method}\r\nContact: <sip:fred@10.0.0.1>\r\nContent-Length: 0\r\n\r\n"
        );
        Message::parse(text.as_bytes()).unwrap()
    }

    fn udp() -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: "10.0.0.2:5060".parse().unwrap(),
        }
    }

    fn tcp() -> Peer {
        Peer {
            transport: Transport::Tcp,
            ..udp()
        }
    }

    fn sends(out: &[Output]) -> usize {
        out.iter().filter(|o| matches!(o, Output::Send(_))).count()
    }

    /// Drive timers until the transaction terminates; returns the instants
    /// (as offsets from t0) at which something was sent, and whether it
    /// timed out.
    fn run_timers(tx: &mut Tx, t0: Instant) -> (Vec<Duration>, bool) {
        let mut sent = Vec::new();
        let mut timeout = false;
        while let Some(at) = tx.next_timer() {
            let out = tx.on_timer(at);
            for _ in 0..sends(&out) {
                sent.push(at - t0);
            }
            timeout |= out.iter().any(|o| matches!(o, Output::Timeout));
            if tx.is_terminated() {
                break;
            }
        }
        (sent, timeout)
    }

    #[test]
    fn timer_a_doubles_and_timer_b_fires() {
        let t0 = Instant::now();
        let (mut tx, first) = Tx::client(request("INVITE"), udp(), Timers::default(), t0);
        assert!(matches!(first, Output::Send(_)));
        let (sent, timeout) = run_timers(&mut tx, t0);
        let ms: Vec<u128> = sent.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert!(timeout);
    }

    #[test]
    fn timer_e_caps_at_t2_and_timer_f_fires() {
        let t0 = Instant::now();
        let (mut tx, _) = Tx::client(request("OPTIONS"), udp(), Timers::default(), t0);
        let (sent, timeout) = run_timers(&mut tx, t0);
        let ms: Vec<u128> = sent.iter().map(|d| d.as_millis()).collect();
        assert_eq!(&ms[..5], &[500, 1500, 3500, 7500, 11500]);
        assert!(ms.windows(2).skip(4).all(|w| w[1] - w[0] == 4000));
        assert!(timeout);
    }

    #[test]
    fn tcp_never_retransmits_but_still_times_out() {
        let t0 = Instant::now();
        let (mut tx, _) = Tx::client(request("INVITE"), tcp(), Timers::default(), t0);
        let (sent, timeout) = run_timers(&mut tx, t0);
        assert!(sent.is_empty());
        assert!(timeout);
    }

    #[test]
    fn non_2xx_final_is_acked_and_retransmissions_reacked() {
        let t0 = Instant::now();
        let (mut tx, _) = Tx::client(request("INVITE"), udp(), Timers::default(), t0);
        let resp = Message::response_to(tx.request().unwrap(), 486, Some("t2"));
        let out = tx.on_response(resp.clone(), t0);
        assert_eq!(sends(&out), 1);
        let Output::Send(ack) = &out[0] else { panic!() };
        let ack = Message::parse(ack).unwrap();
        assert_eq!(ack.method(), Some(&Method::ACK));
        assert_eq!(ack.branch().as_deref(), Some("z9hG4bKabc"));
        assert_eq!(ack.to_tag().as_deref(), Some("t2"));
        assert_eq!(ack.cseq().unwrap().cseq, 1);
        assert_eq!(tx.state, State::Completed);
        let again = tx.on_response(resp, t0 + Duration::from_secs(1));
        assert_eq!(sends(&again), 1);
        // Timer D (32 s) ends it quietly.
        let (_, timeout) = run_timers(&mut tx, t0);
        assert!(!timeout);
        assert!(tx.is_terminated());
    }

    #[test]
    fn provisional_stops_timer_b_and_starts_timer_c() {
        let t0 = Instant::now();
        let (mut tx, _) = Tx::client(request("INVITE"), udp(), Timers::default(), t0);
        let ringing = Message::response_to(tx.request().unwrap(), 180, Some("t2"));
        let t1 = t0 + Duration::from_secs(10);
        assert!(matches!(
            tx.on_response(ringing.clone(), t1)[..],
            [Output::Response(_)]
        ));
        // Timer A is off and Timer B (32 s) no longer applies.
        assert_eq!(tx.next_timer(), Some(t1 + TIMER_C));
        // Every provisional restarts Timer C.
        let t2 = t0 + Duration::from_secs(100);
        tx.on_response(ringing, t2);
        assert!(tx.on_timer(t1 + TIMER_C).is_empty());
        let out = tx.on_timer(t2 + TIMER_C);
        assert!(matches!(out[..], [Output::Timeout]));
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_2xx_enters_accepted_and_passes_retransmissions_up() {
        let t0 = Instant::now();
        let (mut tx, _) = Tx::client(request("INVITE"), udp(), Timers::default(), t0);
        let ok = Message::response_to(tx.request().unwrap(), 200, Some("t2"));
        assert!(matches!(
            tx.on_response(ok.clone(), t0)[..],
            [Output::Response(_)]
        ));
        assert_eq!(tx.state, State::Accepted);
        assert!(matches!(tx.on_response(ok, t0)[..], [Output::Response(_)]));
        assert_eq!(tx.next_timer(), Some(t0 + Duration::from_secs(32)));
    }

    #[test]
    fn server_invite_timer_g_h_and_ack() {
        let t0 = Instant::now();
        let req = request("INVITE");
        let mut tx = Tx::server(req.clone(), udp(), Timers::default());
        let out = tx.respond(&Message::response_to(&req, 404, Some("x")), t0);
        assert_eq!(sends(&out), 1);
        // Timer G: 500, 1500, 3500, 7500, 11500, ... capped at T2.
        let out = tx.on_timer(t0 + Duration::from_millis(500));
        assert_eq!(sends(&out), 1);
        let out = tx.on_timer(t0 + Duration::from_millis(1500));
        assert_eq!(sends(&out), 1);
        // A retransmitted INVITE gets the response again.
        assert_eq!(sends(&tx.on_request(&req, t0)), 1);
        // The ACK confirms; Timer I then ends it.
        let mut ack = req.clone();
        ack.line = Message::request(Method::ACK, req.uri().unwrap().clone()).line;
        tx.on_request(&ack, t0 + Duration::from_secs(2));
        assert_eq!(tx.state, State::Confirmed);
        let out = tx.on_timer(t0 + Duration::from_secs(7));
        assert!(out.is_empty());
        assert!(tx.is_terminated());
    }

    #[test]
    fn server_invite_without_ack_times_out_with_timer_h() {
        let t0 = Instant::now();
        let req = request("INVITE");
        let mut tx = Tx::server(req.clone(), udp(), Timers::default());
        tx.respond(&Message::response_to(&req, 500, Some("x")), t0);
        let (sent, timeout) = run_timers(&mut tx, t0);
        assert!(timeout);
        assert!(sent.iter().all(|d| *d < Duration::from_secs(32)));
        assert_eq!(sent.len(), 10);
    }

    #[test]
    fn server_non_invite_absorbs_retransmissions_until_timer_j() {
        let t0 = Instant::now();
        let req = request("REGISTER");
        let mut tx = Tx::server(req.clone(), udp(), Timers::default());
        tx.respond(&Message::response_to(&req, 200, Some("x")), t0);
        assert_eq!(sends(&tx.on_request(&req, t0 + Duration::from_secs(1))), 1);
        assert_eq!(tx.next_timer(), Some(t0 + Duration::from_secs(32)));
        let mut tcp_tx = Tx::server(req.clone(), tcp(), Timers::default());
        tcp_tx.respond(&Message::response_to(&req, 200, Some("x")), t0);
        assert_eq!(tcp_tx.next_timer(), Some(t0));
    }

    #[test]
    fn settable_t1_scales_everything() {
        let timers = Timers {
            t1: Duration::from_millis(50),
            t2: Duration::from_millis(400),
            t4: Duration::from_millis(500),
        };
        let t0 = Instant::now();
        let (mut tx, _) = Tx::client(request("OPTIONS"), udp(), timers, t0);
        let (sent, timeout) = run_timers(&mut tx, t0);
        assert_eq!(sent[0], Duration::from_millis(50));
        assert!(timeout);
        assert!(sent.last().unwrap() < &Duration::from_millis(3200));
    }
}
