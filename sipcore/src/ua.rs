//! A SIP user agent: registration, calls (INVITE/200/ACK with an SDP body
//! the caller supplies), re-INVITE with glare handling, BYE, OPTIONS.
//!
//! The UA neither reads nor writes SDP: bodies pass through as bytes, so
//! the wisp session layer decides what a channel is and the UA stays a
//! plain RFC 3261 agent that any proxy (ours, Kamailio) can route.

use crate::dialog::{self, Dialog, DialogState};
use crate::endpoint::{self, Endpoint, Event, SansIo, Transmit, TxKey};
use crate::msg::{self, Message, Method, Name, SipUri};
use crate::transaction::{Peer, Transport};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS";

#[derive(Clone, Debug)]
pub struct UaConfig {
    /// Our address of record, e.g. `sip:alice@abcd.com`.
    pub aor: String,
    /// Transport for our Via/Contact and towards the proxy.
    pub transport: Transport,
    /// The address our I/O driver is bound to (what Via/Contact say).
    pub local: SocketAddr,
    /// Outbound proxy and registrar.
    pub proxy: Option<SocketAddr>,
    pub password: Option<String>,
    pub register_expires: u32,
    pub endpoint: endpoint::Config,
}

impl UaConfig {
    pub fn new(aor: &str, transport: Transport, local: SocketAddr) -> UaConfig {
        UaConfig {
            aor: aor.to_string(),
            transport,
            local,
            proxy: None,
            password: None,
            register_expires: 600,
            endpoint: endpoint::Config::default(),
        }
    }
}

/// A call is named by its Call-ID: one dialog per call (we never fork).
pub type CallId = String;

#[derive(Debug, Clone, PartialEq)]
pub enum UaEvent {
    Registered {
        expires: u32,
    },
    /// `code` 0 means no answer at all (Timer F).
    RegisterFailed {
        code: u16,
    },
    Unregistered,
    IncomingCall {
        call: CallId,
        from: String,
        to: String,
        body: Bytes,
    },
    /// 2xx to our INVITE; ACK already sent.
    CallAnswered {
        call: CallId,
        body: Bytes,
    },
    /// Non-2xx final to our INVITE (408 when nobody answered).
    CallFailed {
        call: CallId,
        code: u16,
    },
    /// The peer ACKed our 2xx.
    CallConfirmed {
        call: CallId,
    },
    IncomingReinvite {
        call: CallId,
        body: Bytes,
    },
    /// Final answer to our re-INVITE. 491 is retried internally and never
    /// surfaces; a failure leaves the session as it was (§14.1).
    ReinviteDone {
        call: CallId,
        code: u16,
        body: Bytes,
    },
    CallEnded {
        call: CallId,
        by_peer: bool,
    },
    OptionsDone {
        code: u16,
    },
}

#[derive(Debug, Clone)]
enum Pending {
    Register,
    Invite(CallId),
    Reinvite(CallId),
    Bye(CallId),
    Options,
    Cancel,
}

#[derive(Debug, Default)]
struct Call {
    dialog: Option<Dialog>,
    /// Our INVITE (caller side) or theirs (callee side).
    invite: Option<Message>,
    /// Server transaction of an INVITE or re-INVITE awaiting our answer.
    incoming: Option<TxKey>,
    /// Our INVITE or re-INVITE client transaction not yet finally answered.
    outgoing: Option<TxKey>,
    /// The ACK we sent for the last 2xx, resent if that 2xx comes again.
    ack: Option<(Message, Peer)>,
    /// A re-INVITE that met 491 and waits for its retry time (§14.1).
    retry: Option<(Instant, Bytes)>,
    local_tag: String,
    auth_tries: u8,
}

#[derive(Debug)]
struct Registration {
    call_id: String,
    from_tag: String,
    cseq: u32,
    expires: u32,
    refresh_at: Option<Instant>,
    auth_tries: u8,
    unregistering: bool,
}

pub struct Ua {
    pub config: UaConfig,
    ep: Endpoint,
    calls: HashMap<CallId, Call>,
    pending: HashMap<TxKey, Pending>,
    registration: Option<Registration>,
    events: VecDeque<UaEvent>,
    user: String,
    domain: String,
}

impl Ua {
    pub fn new(config: UaConfig) -> Option<Ua> {
        let uri = msg::parse_whole::<SipUri>(&config.aor)?;
        let user = user_of(&config.aor);
        let domain = uri.host_port.host.to_string();
        Some(Ua {
            ep: Endpoint::new(config.endpoint.clone()),
            config,
            calls: HashMap::new(),
            pending: HashMap::new(),
            registration: None,
            events: VecDeque::new(),
            user,
            domain,
        })
    }

    pub fn poll_event(&mut self) -> Option<UaEvent> {
        self.events.pop_front()
    }

    /// After a move the driver is bound elsewhere: every Via and Contact
    /// from now on names the new address.
    pub fn set_local(&mut self, local: SocketAddr) {
        self.config.local = local;
    }

    fn contact(&self) -> String {
        dialog::contact_for(&self.user, self.config.transport, self.config.local)
    }

    fn proxy_peer(&self) -> Option<Peer> {
        self.config.proxy.map(|addr| Peer {
            transport: self.config.transport,
            addr,
        })
    }

    /// Out-of-dialog requests go to the outbound proxy, else straight to the
    /// Request-URI's host.
    fn out_of_dialog_hop(&self, uri: &str) -> Option<Peer> {
        self.proxy_peer()
            .or_else(|| dialog::uri_peer(uri, self.config.transport))
    }

    fn new_request(
        &self,
        method: Method,
        uri: &str,
        to: &str,
        from_tag: &str,
        call_id: &str,
        cseq: u32,
    ) -> Option<Message> {
        let parsed = msg::parse_whole::<SipUri>(uri)?;
        let mut m = Message::request(method.clone(), parsed);
        m.add(
            Name::VIA,
            Endpoint::via(self.config.transport, self.config.local),
        );
        m.add(Name::MAX_FORWARDS, "70");
        m.add(Name::FROM, format!("<{}>;tag={from_tag}", self.config.aor));
        m.add(Name::TO, format!("<{to}>"));
        m.add(Name::CALL_ID, call_id.to_string());
        m.add(Name::CSEQ, format!("{cseq} {method}"));
        m.add(Name::USER_AGENT, self.config.endpoint.user_agent.clone());
        Some(m)
    }

    // ---- registration -------------------------------------------------

    /// Register our Contact and keep it refreshed (at half the granted
    /// lifetime, so one lost refresh still leaves time for a retry).
    pub fn register(&mut self, now: Instant) {
        let reg = self.registration.get_or_insert_with(|| Registration {
            call_id: crate::ids::call_id(&self.domain),
            from_tag: crate::ids::tag(),
            cseq: 0,
            expires: self.config.register_expires,
            refresh_at: None,
            auth_tries: 0,
            unregistering: false,
        });
        reg.unregistering = false;
        reg.auth_tries = 0;
        self.send_register(self.config.register_expires, None, now);
    }

    /// Remove our binding (on shutdown).
    pub fn unregister(&mut self, now: Instant) {
        if let Some(reg) = &mut self.registration {
            reg.unregistering = true;
            reg.refresh_at = None;
            reg.auth_tries = 0;
            self.send_register(0, None, now);
        }
    }

    fn send_register(&mut self, expires: u32, auth: Option<(Name, String)>, now: Instant) {
        let Some(reg) = &mut self.registration else {
            return;
        };
        reg.cseq += 1;
        let (call_id, tag, cseq) = (reg.call_id.clone(), reg.from_tag.clone(), reg.cseq);
        let registrar = format!("sip:{}", self.domain);
        let aor = self.config.aor.clone();
        let Some(mut m) =
            self.new_request(Method::REGISTER, &registrar, &aor, &tag, &call_id, cseq)
        else {
            return;
        };
        m.add(
            Name::CONTACT,
            format!("{};expires={expires}", self.contact()),
        );
        m.add(Name::EXPIRES, expires.to_string());
        if let Some((name, value)) = auth {
            m.add(name, value);
        }
        let Some(hop) = self.out_of_dialog_hop(&registrar) else {
            self.events.push_back(UaEvent::RegisterFailed { code: 0 });
            return;
        };
        let key = self.ep.send_request(m, hop, now);
        self.pending.insert(key, Pending::Register);
    }

    fn on_register_response(&mut self, req: Option<Message>, resp: &Message, now: Instant) {
        let code = resp.code().unwrap_or(0);
        let Some(reg) = &self.registration else {
            return;
        };
        if code < 200 {
            return;
        }
        let (tries, unregistering, asked) = (reg.auth_tries, reg.unregistering, reg.expires);
        if code == 401 || code == 407 {
            let auth = req.and_then(|r| self.authorize(&r, resp));
            if let (true, Some(auth)) = (tries < 2, auth) {
                if let Some(reg) = &mut self.registration {
                    reg.auth_tries += 1;
                }
                let expires = if unregistering {
                    0
                } else {
                    self.config.register_expires
                };
                self.send_register(expires, Some(auth), now);
                return;
            }
            self.events.push_back(UaEvent::RegisterFailed { code });
            return;
        }
        if code == 423 {
            if let Some(min) = resp
                .raw(&Name::MIN_EXPIRES)
                .and_then(|v| v.trim().parse().ok())
            {
                self.config.register_expires = min;
                self.send_register(min, None, now);
                return;
            }
        }
        if !(200..300).contains(&code) {
            self.events.push_back(UaEvent::RegisterFailed { code });
            return;
        }
        if unregistering {
            self.events.push_back(UaEvent::Unregistered);
            return;
        }
        // The registrar may grant less than we asked: find our own binding.
        let ours = self.contact();
        let granted = resp
            .contacts()
            .iter()
            .find(|(raw, _)| dialog::strip_angle(raw) == dialog::strip_angle(&ours))
            .and_then(|(raw, _)| msg::param(raw, "expires").and_then(|e| e.parse().ok()))
            .or_else(|| resp.expires())
            .unwrap_or(asked);
        if let Some(reg) = &mut self.registration {
            reg.auth_tries = 0;
            reg.expires = granted;
            reg.refresh_at = Some(now + Duration::from_secs(u64::from(granted.max(2) / 2)));
        }
        self.events
            .push_back(UaEvent::Registered { expires: granted });
    }

    /// Credentials for a 401/407 challenge, when we have a password: the
    /// strongest algorithm offered (SHA-256 over MD5, RFC 8760).
    fn authorize(&self, req: &Message, resp: &Message) -> Option<(Name, String)> {
        let password = self.config.password.as_deref()?;
        let (challenge_header, answer_header) = match resp.code() {
            Some(407) => (Name::PROXY_AUTHENTICATE, Name::PROXY_AUTHORIZATION),
            _ => (Name::WWW_AUTHENTICATE, Name::AUTHORIZATION),
        };
        let values: Vec<String> = resp
            .headers
            .get_raw(&challenge_header)
            .map(|v| v.to_string())
            .collect();
        let challenge = crate::digest::strongest(values.iter().map(String::as_str))?;
        let cnonce = crate::digest::new_cnonce().ok()?;
        let method = req.method()?.to_string();
        let uri = req.uri_text()?;
        let value = crate::digest::respond(
            &challenge, &self.user, password, &method, &uri, &req.body, &cnonce, 1,
        );
        Some((answer_header, value))
    }

    // ---- calls ----------------------------------------------------------

    /// Call `target` (a SIP URI) offering `sdp`.
    pub fn invite(&mut self, target: &str, sdp: Bytes, now: Instant) -> Option<CallId> {
        let call_id = crate::ids::call_id(&self.domain);
        let tag = crate::ids::tag();
        let mut m = self.new_request(Method::INVITE, target, target, &tag, &call_id, 1)?;
        m.add(Name::CONTACT, self.contact());
        m.add(Name::ALLOW, ALLOW);
        m.set_body("application/sdp", sdp);
        let hop = self.out_of_dialog_hop(target)?;
        let key = self.ep.send_request(m.clone(), hop, now);
        self.pending
            .insert(key.clone(), Pending::Invite(call_id.clone()));
        self.calls.insert(
            call_id.clone(),
            Call {
                invite: Some(m),
                outgoing: Some(key),
                local_tag: tag,
                ..Default::default()
            },
        );
        Some(call_id)
    }

    /// Answer an incoming INVITE (or re-INVITE) with 2xx and our SDP, or
    /// refuse it with `code`.
    pub fn answer(&mut self, call: &str, code: u16, sdp: Option<Bytes>, now: Instant) {
        let contact = self.contact();
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        let Some(key) = c.incoming.take() else { return };
        let Some(req) = self.ep.request(&key).cloned() else {
            return;
        };
        let mut resp = Message::response_to(&req, code, Some(&c.local_tag));
        if (200..300).contains(&code) {
            resp.add(Name::CONTACT, contact);
            resp.add(Name::ALLOW, ALLOW);
            for rr in req.headers.get_raw(&Name::RECORD_ROUTE) {
                resp.add(Name::RECORD_ROUTE, rr.to_string());
            }
            if let Some(sdp) = sdp {
                resp.set_body("application/sdp", sdp);
            }
            if c.dialog.is_none() {
                c.dialog = Dialog::from_uas(&req, &c.local_tag);
            }
        } else if c.dialog.is_none() {
            // A refused initial INVITE leaves no call behind.
            self.calls.remove(call);
        }
        self.ep.respond(&key, resp, now);
    }

    /// Offer new SDP inside the call (a host move). Refused while another
    /// offer is in flight in either direction (§14.1).
    pub fn reinvite(&mut self, call: &str, sdp: Bytes, now: Instant) -> bool {
        self.reinvite_via(call, sdp, false, now)
    }

    /// A re-INVITE sent straight to the peer's Contact, past the proxies
    /// of the route set: after a move this saves the detour through the
    /// registrar. If nothing answers it ends as `ReinviteDone { code: 408 }`
    /// (the call stays up) and the caller can try [`Ua::reinvite`].
    pub fn reinvite_direct(&mut self, call: &str, sdp: Bytes, now: Instant) -> bool {
        self.reinvite_via(call, sdp, true, now)
    }

    fn reinvite_via(&mut self, call: &str, sdp: Bytes, direct: bool, now: Instant) -> bool {
        let (transport, local, contact) =
            (self.config.transport, self.config.local, self.contact());
        let Some(c) = self.calls.get_mut(call) else {
            return false;
        };
        if c.outgoing.is_some() || c.incoming.is_some() {
            return false;
        }
        let Some(d) = c.dialog.as_mut() else {
            return false;
        };
        let Some(mut m) = d.request(Method::INVITE, transport, local) else {
            return false;
        };
        m.add(Name::CONTACT, contact);
        m.set_body("application/sdp", sdp);
        let hop = if direct {
            m.headers.remove(&Name::ROUTE);
            dialog::uri_peer(&d.remote_target, transport)
        } else {
            d.next_hop(transport)
        };
        let Some(hop) = hop else {
            return false;
        };
        let key = self.ep.send_request(m.clone(), hop, now);
        c.invite = Some(m);
        c.outgoing = Some(key.clone());
        // A 491 retry still waiting carries an older offer: this one
        // supersedes it.
        c.retry = None;
        self.pending
            .insert(key, Pending::Reinvite(call.to_string()));
        true
    }

    /// Give up waiting for our re-INVITE in flight in `call`, so that a
    /// newer offer can go: a host that moves again while its last move's
    /// re-INVITE is still unanswered (sent to where the peer was, or stuck
    /// behind the peer's own move) must not wait out Timer B (32 s) before
    /// it can say where it is now. The old transaction runs on unheeded; a
    /// late answer to it is ignored. Returns whether one was in flight.
    pub fn supersede_reinvite(&mut self, call: &str) -> bool {
        let Some(c) = self.calls.get_mut(call) else {
            return false;
        };
        let Some(key) = c.outgoing.clone() else {
            return false;
        };
        if !matches!(self.pending.get(&key), Some(Pending::Reinvite(_))) {
            return false;
        }
        self.pending.remove(&key);
        c.outgoing = None;
        true
    }

    /// End the call: BYE for an established one, CANCEL for one still
    /// ringing on our side.
    pub fn hangup(&mut self, call: &str, now: Instant) {
        let transport = self.config.transport;
        let local = self.config.local;
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        if let Some(d) = c.dialog.as_mut() {
            if let (Some(m), Some(hop)) = (
                d.request(Method::BYE, transport, local),
                d.next_hop(transport),
            ) {
                d.state = DialogState::Terminated;
                let key = self.ep.send_request(m, hop, now);
                self.pending.insert(key, Pending::Bye(call.to_string()));
            }
            return;
        }
        let Some(invite) = c.invite.clone().filter(|_| c.outgoing.is_some()) else {
            return;
        };
        let mut cancel = invite.clone();
        if let Some(uri) = invite.uri().cloned() {
            cancel.line = Message::request(Method::CANCEL, uri).line;
        }
        if let Ok(cseq) = invite.cseq() {
            cancel.set(Name::CSEQ, format!("{} CANCEL", cseq.cseq));
        }
        for h in [Name::CONTACT, Name::CONTENT_TYPE, Name::ALLOW] {
            cancel.headers.remove(&h);
        }
        cancel.body = Bytes::new();
        if let Some(hop) = self.out_of_dialog_hop(&invite.uri_text().unwrap_or_default()) {
            let key = self.ep.send_request(cancel, hop, now);
            self.pending.insert(key, Pending::Cancel);
        }
    }

    pub fn options(&mut self, target: &str, now: Instant) {
        let call_id = crate::ids::call_id(&self.domain);
        let tag = crate::ids::tag();
        let Some(mut m) = self.new_request(Method::OPTIONS, target, target, &tag, &call_id, 1)
        else {
            return;
        };
        m.add(Name::ACCEPT, "application/sdp");
        if let Some(hop) = self.out_of_dialog_hop(target) {
            let key = self.ep.send_request(m, hop, now);
            self.pending.insert(key, Pending::Options);
        }
    }

    pub fn dialog(&self, call: &str) -> Option<&Dialog> {
        self.calls.get(call).and_then(|c| c.dialog.as_ref())
    }

    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    // ---- event processing ---------------------------------------------

    fn process(&mut self, now: Instant) {
        while let Some(ev) = self.ep.poll_event() {
            match ev {
                Event::Request { key, msg, from } => self.on_request(key, msg, from, now),
                Event::Ack { msg, .. } => self.on_ack(&msg),
                Event::Response { key, msg } => self.on_response(&key, msg, now),
                Event::StrayResponse { msg, .. } => self.on_stray(&msg),
                Event::Timeout { key } => self.on_timeout(&key, now),
                Event::Malformed { .. } => {}
            }
        }
    }

    fn reply(&mut self, key: &TxKey, req: &Message, code: u16, now: Instant) {
        let mut resp = Message::response_to(req, code, Some(&crate::ids::tag()));
        if code == 405 || code == 200 {
            resp.add(Name::ALLOW, ALLOW);
        }
        self.ep.respond(key, resp, now);
    }

    fn on_request(&mut self, key: TxKey, req: Message, from: Peer, now: Instant) {
        let Some(method) = req.method().cloned() else {
            return;
        };
        let known = [
            Method::INVITE,
            Method::ACK,
            Method::CANCEL,
            Method::BYE,
            Method::OPTIONS,
        ];
        let other_known = [
            Method::REGISTER,
            Method::SUBSCRIBE,
            Method::NOTIFY,
            Method::MESSAGE,
            Method::INFO,
            Method::UPDATE,
            Method::REFER,
            Method::PRACK,
            Method::PUBLISH,
        ];
        if !known.contains(&method) {
            let code = if other_known.contains(&method) {
                405
            } else {
                501
            };
            return self.reply(&key, &req, code, now);
        }
        if method == Method::OPTIONS {
            return self.reply(&key, &req, 200, now);
        }
        if method == Method::CANCEL {
            return self.on_cancel(key, req, now);
        }
        let call_id = req.call_id().unwrap_or_default();
        if req.to_tag().is_some() {
            return self.on_in_dialog(key, req, call_id, now);
        }
        match method {
            Method::INVITE => {
                if self.calls.contains_key(&call_id) {
                    // A second INVITE for a call we know without a To-tag:
                    // a loop or a fork we will not handle (§8.2.2.2).
                    return self.reply(&key, &req, 482, now);
                }
                let local_tag = crate::ids::tag();
                let mut ringing = Message::response_to(&req, 100, None);
                ringing.set_reason("Trying");
                self.ep.respond(&key, ringing, now);
                let from_uri = req
                    .raw(&Name::FROM)
                    .map(dialog::strip_angle)
                    .unwrap_or("")
                    .to_string();
                let to_uri = req
                    .raw(&Name::TO)
                    .map(dialog::strip_angle)
                    .unwrap_or("")
                    .to_string();
                let body = req.body.clone();
                self.calls.insert(
                    call_id.clone(),
                    Call {
                        invite: Some(req),
                        incoming: Some(key),
                        local_tag,
                        ..Default::default()
                    },
                );
                let _ = from;
                self.events.push_back(UaEvent::IncomingCall {
                    call: call_id,
                    from: from_uri,
                    to: to_uri,
                    body,
                });
            }
            _ => self.reply(&key, &req, 481, now),
        }
    }

    fn on_in_dialog(&mut self, key: TxKey, req: Message, call_id: String, now: Instant) {
        let method = req.method().cloned().unwrap_or(Method::OPTIONS);
        let local_tag = req.to_tag().unwrap_or_default();
        let matches = self
            .calls
            .get(&call_id)
            .and_then(|c| c.dialog.as_ref())
            .is_some_and(|d| {
                d.id.local_tag == local_tag && Some(&d.id.remote_tag) == req.from_tag().as_ref()
            });
        if !matches {
            return self.reply(&key, &req, 481, now);
        }
        let Some(c) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some(d) = c.dialog.as_mut() else { return };
        if !d.accept_remote_seq(&req) {
            return self.reply(&key, &req, 500, now);
        }
        match method {
            Method::BYE => {
                d.state = DialogState::Terminated;
                self.calls.remove(&call_id);
                self.reply(&key, &req, 200, now);
                self.events.push_back(UaEvent::CallEnded {
                    call: call_id,
                    by_peer: true,
                });
            }
            Method::INVITE => {
                if c.outgoing.is_some() {
                    // Glare: both offered at once (§14.2).
                    return self.reply(&key, &req, 491, now);
                }
                if c.incoming.is_some() {
                    let mut resp = Message::response_to(&req, 500, None);
                    resp.add(Name::RETRY_AFTER, "1");
                    return self.ep.respond(&key, resp, now);
                }
                d.refresh_target(&req);
                c.incoming = Some(key);
                let body = req.body.clone();
                c.invite = Some(req);
                self.events.push_back(UaEvent::IncomingReinvite {
                    call: call_id,
                    body,
                });
            }
            _ => self.reply(&key, &req, 405, now),
        }
    }

    fn on_cancel(&mut self, key: TxKey, req: Message, now: Instant) {
        let target = req.branch().and_then(|b| self.ep.invite_for_cancel(&b));
        let Some(invite_key) = target.filter(|k| self.ep.is_proceeding(k)) else {
            return self.reply(&key, &req, 481, now);
        };
        self.reply(&key, &req, 200, now);
        let call_id = req.call_id().unwrap_or_default();
        if let Some(invite) = self.ep.request(&invite_key).cloned() {
            let tag = self
                .calls
                .get(&call_id)
                .map(|c| c.local_tag.clone())
                .unwrap_or_default();
            let resp = Message::response_to(&invite, 487, Some(&tag));
            self.ep.respond(&invite_key, resp, now);
        }
        if self.calls.get(&call_id).is_some_and(|c| c.dialog.is_none()) {
            self.calls.remove(&call_id);
            self.events.push_back(UaEvent::CallEnded {
                call: call_id,
                by_peer: true,
            });
        }
    }

    fn on_ack(&mut self, ack: &Message) {
        let call_id = ack.call_id().unwrap_or_default();
        if self.calls.get(&call_id).is_some_and(|c| c.dialog.is_some()) {
            self.events
                .push_back(UaEvent::CallConfirmed { call: call_id });
        }
    }

    fn on_response(&mut self, key: &TxKey, resp: Message, now: Instant) {
        let code = resp.code().unwrap_or(0);
        let Some(pending) = self.pending.get(key).cloned() else {
            // A 2xx retransmitted into our lingering INVITE transaction: the
            // peer did not get our ACK.
            return self.on_stray(&resp);
        };
        if code >= 200 {
            self.pending.remove(key);
        }
        match pending {
            Pending::Register => {
                let req = self.ep.request(key).cloned();
                self.on_register_response(req, &resp, now)
            }
            Pending::Invite(call) => self.on_invite_response(&call, key, resp, now),
            Pending::Reinvite(call) => self.on_reinvite_response(&call, resp, now),
            Pending::Bye(call) if code >= 200 => {
                self.calls.remove(&call);
                self.events.push_back(UaEvent::CallEnded {
                    call,
                    by_peer: false,
                });
            }
            Pending::Options if code >= 200 => self.events.push_back(UaEvent::OptionsDone { code }),
            _ => {}
        }
    }

    fn on_invite_response(&mut self, call: &str, key: &TxKey, resp: Message, now: Instant) {
        let code = resp.code().unwrap_or(0);
        if code < 200 {
            return;
        }
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        if (200..300).contains(&code) {
            if c.dialog.is_none() {
                let Some(invite) = c.invite.as_ref() else {
                    return;
                };
                c.dialog = Dialog::from_uac(invite, &resp);
            }
            c.outgoing = None;
            self.send_ack(call, &resp);
            self.events.push_back(UaEvent::CallAnswered {
                call: call.to_string(),
                body: resp.body.clone(),
            });
            return;
        }
        if (code == 401 || code == 407) && c.auth_tries < 2 {
            c.auth_tries += 1;
            let invite = c.invite.clone();
            if let Some(mut invite) = invite {
                if let Some((name, value)) = self.authorize(&invite, &resp) {
                    if let Ok(cseq) = invite.cseq() {
                        invite.set(Name::CSEQ, format!("{} INVITE", cseq.cseq + 1));
                    }
                    invite.set(
                        Name::VIA,
                        Endpoint::via(self.config.transport, self.config.local),
                    );
                    invite.set(name, value);
                    if let Some(hop) =
                        self.out_of_dialog_hop(&invite.uri_text().unwrap_or_default())
                    {
                        let new_key = self.ep.send_request(invite.clone(), hop, now);
                        self.pending
                            .insert(new_key.clone(), Pending::Invite(call.to_string()));
                        if let Some(c) = self.calls.get_mut(call) {
                            c.invite = Some(invite);
                            c.outgoing = Some(new_key);
                        }
                        return;
                    }
                }
            }
        }
        let _ = key;
        self.calls.remove(call);
        self.events.push_back(UaEvent::CallFailed {
            call: call.to_string(),
            code,
        });
    }

    fn on_reinvite_response(&mut self, call: &str, resp: Message, now: Instant) {
        let code = resp.code().unwrap_or(0);
        if code < 200 {
            return;
        }
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        c.outgoing = None;
        if (200..300).contains(&code) {
            if let Some(d) = c.dialog.as_mut() {
                d.refresh_target(&resp);
            }
            self.send_ack(call, &resp);
            self.events.push_back(UaEvent::ReinviteDone {
                call: call.to_string(),
                code,
                body: resp.body.clone(),
            });
            return;
        }
        if code == 491 {
            // §14.1: the Call-ID owner retries after 2.1–4 s, the other side
            // after 0–2 s, so the two retries do not collide again.
            let owner = c.dialog.as_ref().is_some_and(|d| d.we_called);
            let jitter = u64::from(crate::ids::token(2).bytes().map(u32::from).sum::<u32>() % 100);
            let wait = if owner {
                2100 + jitter * 19
            } else {
                jitter * 20
            };
            let body = c
                .invite
                .as_ref()
                .map(|m| m.body.clone())
                .unwrap_or_default();
            c.retry = Some((now + Duration::from_millis(wait), body));
            return;
        }
        if code == 481 {
            // The dialog is gone at the far end (§12.2.1.2). A 408 is not
            // taken for that here, unlike §12.2.1.2's advice: a proxy
            // answers 408 when the peer is between addresses (it moved
            // too), and the call and its streams are still up.
            self.calls.remove(call);
            self.events.push_back(UaEvent::CallEnded {
                call: call.to_string(),
                by_peer: true,
            });
            return;
        }
        self.events.push_back(UaEvent::ReinviteDone {
            call: call.to_string(),
            code,
            body: Bytes::new(),
        });
    }

    /// ACK a 2xx (a new transaction-less request, §13.2.2.4), remembering it
    /// to resend when the 2xx is retransmitted.
    fn send_ack(&mut self, call: &str, ok: &Message) {
        let (transport, local) = (self.config.transport, self.config.local);
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        let Some(d) = c.dialog.as_mut() else { return };
        let Some(mut ack) = d.request(Method::ACK, transport, local) else {
            return;
        };
        if let Ok(cseq) = ok.cseq() {
            ack.set(Name::CSEQ, format!("{} ACK", cseq.cseq));
        }
        let Some(hop) = d.next_hop(transport) else {
            return;
        };
        self.ep.send_stateless(&ack, hop);
        c.ack = Some((ack, hop));
    }

    fn on_stray(&mut self, resp: &Message) {
        // A retransmitted 2xx after our transaction ended: our ACK was lost.
        let Some(call) = resp.call_id().ok() else {
            return;
        };
        if let Some((ack, hop)) = self.calls.get(&call).and_then(|c| c.ack.clone()) {
            if resp.cseq().ok().map(|c| c.cseq) == ack.cseq().ok().map(|c| c.cseq) {
                self.ep.send_stateless(&ack, hop);
            }
        }
    }

    fn on_timeout(&mut self, key: &TxKey, now: Instant) {
        match self.pending.remove(key) {
            Some(Pending::Register) => self.events.push_back(UaEvent::RegisterFailed { code: 0 }),
            Some(Pending::Invite(call)) => {
                self.calls.remove(&call);
                self.events
                    .push_back(UaEvent::CallFailed { call, code: 408 });
            }
            Some(Pending::Reinvite(call)) => {
                // Unlike RFC 3261 §14.1's advice to end the dialog, a
                // re-INVITE lost during a move (the peer may be moving too)
                // leaves the call up: the caller retries another way.
                if let Some(c) = self.calls.get_mut(&call) {
                    c.outgoing = None;
                }
                self.events.push_back(UaEvent::ReinviteDone {
                    call,
                    code: 408,
                    body: Bytes::new(),
                });
            }
            Some(Pending::Bye(call)) => {
                self.calls.remove(&call);
                self.events.push_back(UaEvent::CallEnded {
                    call,
                    by_peer: true,
                });
            }
            Some(Pending::Options) => self.events.push_back(UaEvent::OptionsDone { code: 408 }),
            Some(Pending::Cancel) => {}
            None => {
                // Our 2xx was never ACKed (§13.3.1.4): end the call with BYE.
                if !key.client {
                    let call = self
                        .calls
                        .iter()
                        .find(|(_, c)| {
                            c.dialog.is_some()
                                && c.invite.as_ref().and_then(|m| m.branch())
                                    == Some(key.branch.clone())
                        })
                        .map(|(id, _)| id.clone());
                    if let Some(call) = call {
                        self.hangup(&call, now);
                    }
                }
            }
        }
    }

    fn run_timers(&mut self, now: Instant) {
        if let Some(reg) = &self.registration {
            if reg.refresh_at.is_some_and(|t| t <= now) && !reg.unregistering {
                if let Some(reg) = &mut self.registration {
                    reg.refresh_at = None;
                }
                self.send_register(self.config.register_expires, None, now);
            }
        }
        let due: Vec<(CallId, Bytes)> = self
            .calls
            .iter_mut()
            .filter_map(|(id, c)| match &c.retry {
                Some((at, _)) if *at <= now => c.retry.take().map(|(_, b)| (id.clone(), b)),
                _ => None,
            })
            .collect();
        for (call, body) in due {
            if !self.reinvite(&call, body.clone(), now) {
                if let Some(c) = self.calls.get_mut(&call) {
                    c.retry = Some((now + Duration::from_millis(500), body));
                }
            }
        }
    }
}

impl SansIo for Ua {
    fn receive(&mut self, bytes: &[u8], from: Peer, now: Instant) {
        self.ep.receive(bytes, from, now);
        self.process(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.ep.handle_timeout(now);
        self.process(now);
        self.run_timers(now);
        self.process(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.ep.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let reg = self.registration.as_ref().and_then(|r| r.refresh_at);
        let retries = self
            .calls
            .values()
            .filter_map(|c| c.retry.as_ref().map(|r| r.0));
        [self.ep.poll_timeout(), reg]
            .into_iter()
            .flatten()
            .chain(retries)
            .min()
    }
}

/// The user part of a SIP URI string (`sip:bob@x` → `bob`).
fn user_of(uri: &str) -> String {
    let s = uri.trim_start_matches("sips:").trim_start_matches("sip:");
    s.split_once('@')
        .map(|(u, _)| u.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two (or more) agents on a lossless simulated UDP network, with a
    /// clock we move by hand.
    struct Net {
        now: Instant,
        nodes: Vec<Ua>,
        /// Drop transmits whose text starts with this (to lose an ACK).
        drop_prefix: Option<&'static str>,
    }

    impl Net {
        fn new(names: &[&str]) -> Net {
            let nodes = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let local = SocketAddr::from(([127, 0, 0, 1], 5070 + i as u16));
                    Ua::new(UaConfig::new(
                        &format!("sip:{n}@127.0.0.1"),
                        Transport::Udp,
                        local,
                    ))
                    .unwrap()
                })
                .collect();
            Net {
                now: Instant::now(),
                nodes,
                drop_prefix: None,
            }
        }

        fn addr(&self, i: usize) -> SocketAddr {
            self.nodes[i].config.local
        }

        /// Deliver until quiet.
        fn run(&mut self) {
            for _ in 0..100 {
                let mut moved = false;
                for i in 0..self.nodes.len() {
                    while let Some(t) = self.nodes[i].poll_transmit() {
                        moved = true;
                        if self
                            .drop_prefix
                            .is_some_and(|p| t.bytes.starts_with(p.as_bytes()))
                        {
                            continue;
                        }
                        let from = Peer {
                            transport: Transport::Udp,
                            addr: self.addr(i),
                        };
                        if let Some(j) = self.nodes.iter().position(|n| n.config.local == t.to.addr)
                        {
                            let now = self.now;
                            self.nodes[j].receive(&t.bytes, from, now);
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
            panic!("network never went quiet");
        }

        fn advance(&mut self, d: Duration) {
            let end = self.now + d;
            loop {
                let next = self.nodes.iter().filter_map(|n| n.poll_timeout()).min();
                match next {
                    Some(t) if t <= end => {
                        self.now = self.now.max(t);
                        let now = self.now;
                        for n in &mut self.nodes {
                            n.handle_timeout(now);
                        }
                        self.run();
                    }
                    _ => break,
                }
            }
            self.now = end;
        }

        fn events(&mut self, i: usize) -> Vec<UaEvent> {
            std::iter::from_fn(|| self.nodes[i].poll_event()).collect()
        }
    }

    fn call(net: &mut Net) -> (CallId, CallId) {
        let now = net.now;
        let target = format!("sip:n1@{}", net.addr(1));
        let call = net.nodes[0]
            .invite(&target, Bytes::from_static(b"offer"), now)
            .unwrap();
        net.run();
        let ev = net.events(1);
        let UaEvent::IncomingCall {
            call: callee_call,
            body,
            ..
        } = &ev[0]
        else {
            panic!("{ev:?}")
        };
        assert_eq!(&body[..], b"offer");
        net.nodes[1].answer(callee_call, 200, Some(Bytes::from_static(b"answer")), now);
        net.run();
        assert_eq!(
            net.events(0),
            vec![UaEvent::CallAnswered {
                call: call.clone(),
                body: Bytes::from_static(b"answer")
            }]
        );
        assert_eq!(
            net.events(1),
            vec![UaEvent::CallConfirmed {
                call: callee_call.clone()
            }]
        );
        (call, callee_call.clone())
    }

    #[test]
    fn call_reinvite_and_bye() {
        let mut net = Net::new(&["n0", "n1"]);
        let (a, b) = call(&mut net);
        assert_eq!(a, b, "both sides name the call by its Call-ID");
        let now = net.now;
        assert!(net.nodes[0].reinvite(&a, Bytes::from_static(b"moved"), now));
        net.run();
        assert_eq!(
            net.events(1),
            vec![UaEvent::IncomingReinvite {
                call: b.clone(),
                body: Bytes::from_static(b"moved")
            }]
        );
        net.nodes[1].answer(&b, 200, Some(Bytes::from_static(b"ok")), now);
        net.run();
        assert_eq!(
            net.events(0),
            vec![UaEvent::ReinviteDone {
                call: a.clone(),
                code: 200,
                body: Bytes::from_static(b"ok")
            }]
        );
        net.events(1);
        net.nodes[1].hangup(&b, now);
        net.run();
        assert_eq!(
            net.events(0),
            vec![UaEvent::CallEnded {
                call: a.clone(),
                by_peer: true
            }]
        );
        assert_eq!(
            net.events(1),
            vec![UaEvent::CallEnded {
                call: b,
                by_peer: false
            }]
        );
        assert_eq!(net.nodes[0].call_count(), 0);
        assert_eq!(net.nodes[1].call_count(), 0);
    }

    #[test]
    fn reinvite_glare_resolves_with_491_and_retry() {
        let mut net = Net::new(&["n0", "n1"]);
        let (a, b) = call(&mut net);
        let now = net.now;
        assert!(net.nodes[0].reinvite(&a, Bytes::from_static(b"from-a"), now));
        assert!(net.nodes[1].reinvite(&b, Bytes::from_static(b"from-b"), now));
        net.run();
        // Both crossed: each answered the other's 491, nobody saw an offer.
        assert!(net.events(0).is_empty());
        assert!(net.events(1).is_empty());
        // The callee (not the Call-ID owner) retries first, within 2 s.
        net.advance(Duration::from_millis(2050));
        assert_eq!(
            net.events(0),
            vec![UaEvent::IncomingReinvite {
                call: a.clone(),
                body: Bytes::from_static(b"from-b")
            }]
        );
        let now = net.now;
        net.nodes[0].answer(&a, 200, Some(Bytes::from_static(b"ok-b")), now);
        net.run();
        assert!(matches!(
            &net.events(1)[..],
            [UaEvent::ReinviteDone { code: 200, .. }]
        ));
        // The caller retries after 2.1 s.
        net.advance(Duration::from_secs(3));
        assert_eq!(
            net.events(1),
            vec![UaEvent::IncomingReinvite {
                call: b.clone(),
                body: Bytes::from_static(b"from-a")
            }]
        );
    }

    #[test]
    fn a_newer_move_supersedes_a_reinvite_still_unanswered() {
        let mut net = Net::new(&["n0", "n1"]);
        let (a, b) = call(&mut net);
        let now = net.now;
        // The peer never answers the first (it is between addresses).
        assert!(net.nodes[0].reinvite(&a, Bytes::from_static(b"move-1"), now));
        net.run();
        assert!(matches!(
            &net.events(1)[..],
            [UaEvent::IncomingReinvite { .. }]
        ));
        assert!(!net.nodes[0].reinvite(&a, Bytes::from_static(b"move-2"), now));
        assert!(net.nodes[0].supersede_reinvite(&a));
        assert!(
            !net.nodes[0].supersede_reinvite(&a),
            "only one was in flight"
        );
        // The first is answered meanwhile: its answer is ignored.
        let now = net.now;
        net.nodes[1].answer(&b, 200, Some(Bytes::from_static(b"ok-1")), now);
        net.run();
        assert!(net.events(0).is_empty());
        let now = net.now;
        assert!(net.nodes[0].reinvite(&a, Bytes::from_static(b"move-2"), now));
        net.run();
        assert_eq!(
            net.events(1),
            vec![UaEvent::IncomingReinvite {
                call: b.clone(),
                body: Bytes::from_static(b"move-2")
            }]
        );
        let now = net.now;
        net.nodes[1].answer(&b, 200, Some(Bytes::from_static(b"ok-2")), now);
        net.run();
        assert!(matches!(
            &net.events(0)[..],
            [UaEvent::ReinviteDone { code: 200, .. }]
        ));
        assert_eq!(net.nodes[0].call_count(), 1);
    }

    #[test]
    fn a_408_to_a_reinvite_leaves_the_call_up() {
        let mut net = Net::new(&["n0", "n1"]);
        let (a, b) = call(&mut net);
        let now = net.now;
        assert!(net.nodes[0].reinvite(&a, Bytes::from_static(b"move"), now));
        net.run();
        net.events(1);
        let now = net.now;
        net.nodes[1].answer(&b, 408, None, now);
        net.run();
        assert!(matches!(
            &net.events(0)[..],
            [UaEvent::ReinviteDone { code: 408, .. }]
        ));
        assert_eq!(net.nodes[0].call_count(), 1);
        let now = net.now;
        assert!(net.nodes[0].reinvite(&a, Bytes::from_static(b"again"), now));
    }

    #[test]
    fn lost_ack_is_recovered_by_2xx_retransmission() {
        let mut net = Net::new(&["n0", "n1"]);
        let now = net.now;
        let target = format!("sip:n1@{}", net.addr(1));
        let call = net.nodes[0].invite(&target, Bytes::new(), now).unwrap();
        net.run();
        net.events(1);
        net.drop_prefix = Some("ACK ");
        net.nodes[1].answer(&call, 200, Some(Bytes::new()), now);
        net.run();
        assert!(matches!(&net.events(0)[..], [UaEvent::CallAnswered { .. }]));
        assert!(net.events(1).is_empty(), "ACK was lost");
        net.drop_prefix = None;
        net.advance(Duration::from_millis(600));
        assert_eq!(
            net.events(1),
            vec![UaEvent::CallConfirmed { call: call.clone() }]
        );
        // No more 2xx retransmissions after the ACK.
        net.advance(Duration::from_secs(40));
        assert!(net.events(0).is_empty());
        assert!(net.nodes[1].dialog(&call).is_some());
    }

    #[test]
    fn unknown_methods_get_501_and_405_and_options_200() {
        let mut net = Net::new(&["n0", "n1"]);
        let now = net.now;
        let target = format!("sip:n1@{}", net.addr(1));
        net.nodes[0].options(&target, now);
        net.run();
        assert_eq!(net.events(0), vec![UaEvent::OptionsDone { code: 200 }]);
        for (method, code) in [("FOO", "501"), ("SUBSCRIBE", "405")] {
            let text = format!(
                "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{method}\r\n\
Max-Forwards: 70\r\nTo: <{target}>\r\nFrom: <sip:n0@127.0.0.1>;tag=x\r\nCall-ID: u1\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
            );
            let from = Peer {
                transport: Transport::Udp,
                addr: net.addr(0),
            };
            net.nodes[1].receive(text.as_bytes(), from, now);
            let t = net.nodes[1].poll_transmit().unwrap();
            assert!(String::from_utf8_lossy(&t.bytes).starts_with(&format!("SIP/2.0 {code}")));
        }
    }

    #[test]
    fn call_to_nobody_fails_with_408_after_timer_b() {
        let mut net = Net::new(&["n0"]);
        let now = net.now;
        let call = net.nodes[0]
            .invite("sip:ghost@127.0.0.1:5999", Bytes::new(), now)
            .unwrap();
        net.run();
        net.advance(Duration::from_secs(31));
        assert!(net.events(0).is_empty());
        net.advance(Duration::from_secs(2));
        assert_eq!(net.events(0), vec![UaEvent::CallFailed { call, code: 408 }]);
    }

    #[test]
    fn cancel_before_answer() {
        let mut net = Net::new(&["n0", "n1"]);
        let now = net.now;
        let target = format!("sip:n1@{}", net.addr(1));
        let call = net.nodes[0].invite(&target, Bytes::new(), now).unwrap();
        net.run();
        net.events(1);
        net.nodes[0].hangup(&call, now);
        net.run();
        assert_eq!(
            net.events(1),
            vec![UaEvent::CallEnded {
                call: call.clone(),
                by_peer: true
            }]
        );
        assert_eq!(net.events(0), vec![UaEvent::CallFailed { call, code: 487 }]);
    }

    #[test]
    fn registration_refreshes_before_expiry() {
        // n1 plays a registrar by hand: answer each REGISTER 200, granting 60 s.
        let mut net = Net::new(&["n0"]);
        let registrar: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        net.nodes[0].config.proxy = Some(registrar);
        let now = net.now;
        net.nodes[0].register(now);
        let mut registers = 0;
        let mut answer = |net: &mut Net| {
            while let Some(t) = net.nodes[0].poll_transmit() {
                let req = Message::parse(&t.bytes).unwrap();
                assert_eq!(req.method(), Some(&Method::REGISTER));
                registers += 1;
                let mut ok = Message::response_to(&req, 200, Some("r"));
                let contact = req.contacts()[0].0.replace("expires=600", "expires=60");
                ok.add(Name::CONTACT, contact);
                let now = net.now;
                net.nodes[0].receive(
                    &ok.to_bytes(),
                    Peer {
                        transport: Transport::Udp,
                        addr: registrar,
                    },
                    now,
                );
            }
        };
        answer(&mut net);
        assert_eq!(net.events(0), vec![UaEvent::Registered { expires: 60 }]);
        // 100 s of simulated time at 30 s per refresh: three refreshes.
        let end = net.now + Duration::from_secs(100);
        while let Some(at) = net.nodes[0].poll_timeout().filter(|t| *t <= end) {
            net.now = at;
            let now = net.now;
            net.nodes[0].handle_timeout(now);
            answer(&mut net);
        }
        assert_eq!(registers, 4);
        net.nodes[0].unregister(net.now);
        let t = net.nodes[0].poll_transmit().unwrap();
        assert!(String::from_utf8_lossy(&t.bytes).contains("Expires: 0"));
    }

    #[test]
    fn register_answers_a_digest_challenge() {
        let mut net = Net::new(&["alice"]);
        let registrar: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        net.nodes[0].config.proxy = Some(registrar);
        net.nodes[0].config.password = Some("secret".into());
        let verifier = crate::digest::Verifier::new([7; 32], "127.0.0.1");
        let now = net.now;
        net.nodes[0].register(now);
        let from = Peer {
            transport: Transport::Udp,
            addr: registrar,
        };
        let mut verified = None;
        for _ in 0..3 {
            let Some(t) = net.nodes[0].poll_transmit() else {
                break;
            };
            let req = Message::parse(&t.bytes).unwrap();
            let resp = match req.raw(&Name::AUTHORIZATION) {
                None => {
                    let mut r = Message::response_to(&req, 401, Some("r"));
                    for c in verifier.challenges(1000, false) {
                        r.add(Name::WWW_AUTHENTICATE, c);
                    }
                    r
                }
                Some(creds) => {
                    assert!(
                        creds.contains("SHA-256"),
                        "strongest algorithm chosen: {creds}"
                    );
                    let uri = req.uri_text().unwrap();
                    verified = Some(verifier.verify(
                        creds,
                        "REGISTER",
                        &uri,
                        |u| (u == "alice").then(|| "secret".to_string()),
                        1001,
                    ));
                    Message::response_to(&req, 200, Some("r"))
                }
            };
            net.nodes[0].receive(&resp.to_bytes(), from, now);
        }
        assert_eq!(verified, Some(Ok("alice".to_string())));
        assert!(matches!(&net.events(0)[..], [UaEvent::Registered { .. }]));
    }
}
