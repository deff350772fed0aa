//! The location service (RFC 3261 §10.3): which contacts an address of
//! record can be reached at right now, written by REGISTER and read by the
//! proxy when it routes a request into one of its domains.
//!
//! Pure bookkeeping, no transport: the proxy hands in a parsed REGISTER and
//! the peer it came from, and gets back the bindings or the reason to
//! refuse. Time only enters through `now`, so expiry is walked in tests by
//! moving an `Instant` forward.

use crate::msg::{self, Host, Message, Name, SipUri};
use crate::transaction::Peer;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Bounds on what a registration may ask for and on how much state REGISTER
/// can make us hold: every binding is memory a stranger can ask for.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Shorter non-zero lifetimes are refused with 423 (RFC 3261 §10.3
    /// step 7): refreshing every second would be a load amplifier.
    pub min_expires: u32,
    /// Longer lifetimes are shortened to this.
    pub max_expires: u32,
    /// Neither the contact nor the request says how long.
    pub default_expires: u32,
    /// Addresses of record remembered at once (including those whose
    /// bindings all expired, which we keep to answer 480 rather than 404).
    pub max_aors: usize,
    pub max_contacts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_expires: 60,
            max_expires: 86_400,
            default_expires: 3_600,
            max_aors: 10_000,
            max_contacts: 16,
        }
    }
}

/// One contact of an address of record.
#[derive(Clone, Debug)]
pub struct Binding {
    /// The Contact value as the UA wrote it, minus its `expires` param: the
    /// 200 OK echoes it with the remaining lifetime appended, so params we
    /// do not understand (`+sip.instance`, `reg-id`) survive.
    pub contact: String,
    pub uri: SipUri,
    pub expires_at: Instant,
    pub call_id: String,
    pub cseq: u32,
    /// Where the REGISTER really came from: the way back through a NAT.
    pub source: Peer,
    /// Last write: the most recently refreshed binding is tried first.
    pub updated: Instant,
}

impl Binding {
    /// Whole seconds left, as the `expires` param of a 200 OK states them.
    pub fn remaining(&self, now: Instant) -> u32 {
        let left = self.expires_at.saturating_duration_since(now).as_secs();
        u32::try_from(left).unwrap_or(u32::MAX)
    }

    fn live(&self, now: Instant) -> bool {
        self.expires_at > now
    }

    /// The UA asked for its flow to be reused (RFC 5626 `;ob`): reach it
    /// through the address its REGISTER came from, not the one it wrote.
    pub fn wants_flow(&self) -> bool {
        self.uri.uri_params.get("ob").is_some()
    }
}

/// Why a REGISTER changed nothing. Each maps to one response code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// 400: `Contact: *` mixed with other contacts or a non-zero Expires,
    /// or a Contact we cannot read.
    BadRequest(&'static str),
    /// 423 with `Min-Expires`.
    IntervalTooBrief(u32),
    /// 500: same Call-ID, CSeq not higher than the stored one (§10.3 step
    /// 7): a stale or reordered REGISTER must not undo a newer one.
    OutOfOrder,
    /// 403: more contacts than [`Limits::max_contacts`].
    TooManyContacts,
    /// 503: the table holds [`Limits::max_aors`] addresses already.
    Full,
}

impl RegisterError {
    pub fn code(&self) -> u16 {
        match self {
            RegisterError::BadRequest(_) => 400,
            RegisterError::IntervalTooBrief(_) => 423,
            RegisterError::OutOfOrder => 500,
            RegisterError::TooManyContacts => 403,
            RegisterError::Full => 503,
        }
    }
}

/// What the location service knows about an address of record.
#[derive(Debug)]
pub enum Lookup {
    /// Never registered here (since it was forgotten): 404.
    Unknown,
    /// Registered before, nothing live now: 480.
    Offline,
    /// Live bindings, most recently refreshed first.
    Bindings(Vec<Binding>),
}

#[derive(Debug, Default)]
pub struct Location {
    pub limits: Limits,
    /// `user@domain` (domain lowercased) → bindings; an empty list means
    /// "known, offline".
    aors: HashMap<String, Vec<Binding>>,
    /// When the soonest binding expires: keeps [`Location::poll_timeout`]
    /// O(1), however large the table.
    next_expiry: Option<Instant>,
}

/// The key of an address of record: user part as is (it is case-sensitive,
/// RFC 3261 §19.1.4), domain lowercased.
pub fn aor_key(user: &str, domain: &str) -> String {
    format!("{user}@{}", domain.to_ascii_lowercase())
}

impl Location {
    pub fn new(limits: Limits) -> Location {
        Location {
            limits,
            ..Default::default()
        }
    }

    /// Apply a REGISTER for `aor` (RFC 3261 §10.3 steps 6–7). All of its
    /// contacts take effect or none does. Returns the bindings now current
    /// (a REGISTER without Contact only asks for them).
    pub fn register(
        &mut self,
        aor: &str,
        req: &Message,
        source: Peer,
        now: Instant,
    ) -> Result<Vec<Binding>, RegisterError> {
        let call_id = req
            .call_id()
            .map_err(|_| RegisterError::BadRequest("Call-ID"))?;
        let cseq = req
            .cseq()
            .map_err(|_| RegisterError::BadRequest("CSeq"))?
            .cseq;
        let mut bindings: Vec<Binding> = self
            .aors
            .get(aor)
            .map(|b| b.iter().filter(|b| b.live(now)).cloned().collect())
            .unwrap_or_default();
        let contacts = req.contacts();
        // Only a reordered request may not touch a binding; other Call-IDs
        // (another UA, or this one after a reboot) always may.
        let stale = |b: &Binding| b.call_id == call_id && cseq <= b.cseq;

        if contacts.iter().any(|(raw, _)| raw.trim() == "*") {
            if contacts.len() != 1 || req.expires() != Some(0) {
                return Err(RegisterError::BadRequest(
                    "Contact: * needs Expires: 0 alone",
                ));
            }
            if bindings.iter().any(stale) {
                return Err(RegisterError::OutOfOrder);
            }
            bindings.clear();
        } else {
            for (raw, typed) in &contacts {
                let contact = typed
                    .as_ref()
                    .ok_or(RegisterError::BadRequest("unreadable Contact"))?;
                let requested = msg::param(raw, "expires")
                    .and_then(|v| v.parse::<u64>().ok())
                    .or(req.expires().map(u64::from))
                    .unwrap_or(u64::from(self.limits.default_expires));
                if requested != 0 && requested < u64::from(self.limits.min_expires) {
                    return Err(RegisterError::IntervalTooBrief(self.limits.min_expires));
                }
                let expires = requested.min(u64::from(self.limits.max_expires));
                let uri = &contact.uri.uri;
                match bindings.iter().position(|b| same_uri(&b.uri, uri)) {
                    Some(i) if stale(&bindings[i]) => return Err(RegisterError::OutOfOrder),
                    Some(i) if expires == 0 => {
                        bindings.remove(i);
                    }
                    None if expires == 0 => {}
                    found => {
                        let binding = Binding {
                            contact: strip_param(raw, "expires"),
                            uri: uri.clone(),
                            expires_at: now + Duration::from_secs(expires),
                            call_id: call_id.clone(),
                            cseq,
                            source,
                            updated: now,
                        };
                        match found {
                            Some(i) => bindings[i] = binding,
                            None => bindings.push(binding),
                        }
                    }
                }
            }
            if bindings.len() > self.limits.max_contacts {
                return Err(RegisterError::TooManyContacts);
            }
        }

        if !self.aors.contains_key(aor) && self.aors.len() >= self.limits.max_aors {
            // Make room from the dead before refusing the living.
            self.sweep(now);
            self.aors.retain(|_, b| !b.is_empty());
            if self.aors.len() >= self.limits.max_aors {
                return Err(RegisterError::Full);
            }
        }
        bindings.sort_by_key(|b| std::cmp::Reverse(b.updated));
        if let Some(soonest) = bindings.iter().map(|b| b.expires_at).min() {
            self.next_expiry = Some(self.next_expiry.map_or(soonest, |n| n.min(soonest)));
        }
        self.aors.insert(aor.to_string(), bindings.clone());
        Ok(bindings)
    }

    /// The whole of §10.3 after authorization: apply `req` and build the
    /// response (200 listing every binding with its remaining lifetime, or
    /// the refusal).
    pub fn handle_register(
        &mut self,
        aor: &str,
        req: &Message,
        source: Peer,
        now: Instant,
        to_tag: &str,
    ) -> Message {
        match self.register(aor, req, source, now) {
            Ok(bindings) => {
                let mut resp = Message::response_to(req, 200, Some(to_tag));
                for b in &bindings {
                    resp.add(
                        Name::CONTACT,
                        format!("{};expires={}", b.contact, b.remaining(now)),
                    );
                }
                resp
            }
            Err(e) => {
                let mut resp = Message::response_to(req, e.code(), Some(to_tag));
                match e {
                    RegisterError::IntervalTooBrief(min) => {
                        resp.add(Name::MIN_EXPIRES, min.to_string())
                    }
                    RegisterError::BadRequest(why) => {
                        resp.set_reason(&format!("Bad Request ({why})"))
                    }
                    RegisterError::OutOfOrder => resp.set_reason("Out Of Order REGISTER"),
                    RegisterError::TooManyContacts => resp.set_reason("Too Many Contacts"),
                    RegisterError::Full => resp.add(Name::RETRY_AFTER, "60"),
                }
                resp
            }
        }
    }

    /// Where `aor` can be reached at `now`. Expired bindings are dropped on
    /// the way, so a lookup is right even if no timer ran.
    pub fn lookup(&mut self, aor: &str, now: Instant) -> Lookup {
        match self.aors.get_mut(aor) {
            None => Lookup::Unknown,
            Some(bindings) => {
                bindings.retain(|b| b.live(now));
                if bindings.is_empty() {
                    Lookup::Offline
                } else {
                    Lookup::Bindings(bindings.clone())
                }
            }
        }
    }

    /// Whether `aor` has been seen (live or not).
    pub fn knows(&self, aor: &str) -> bool {
        self.aors.contains_key(aor)
    }

    pub fn aor_count(&self) -> usize {
        self.aors.len()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_expiry
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_expiry.is_some_and(|t| t <= now) {
            self.sweep(now);
        }
    }

    fn sweep(&mut self, now: Instant) {
        let mut next: Option<Instant> = None;
        for bindings in self.aors.values_mut() {
            bindings.retain(|b| b.live(now));
            for b in bindings.iter() {
                next = Some(next.map_or(b.expires_at, |n| n.min(b.expires_at)));
            }
        }
        self.next_expiry = next;
    }
}

/// RFC 3261 §19.1.4 URI equality, as far as it matters for contacts: user
/// case-sensitive, host not, ports equal only if both present or both
/// absent, and the params that change where a request goes must agree.
pub fn same_uri(a: &SipUri, b: &SipUri) -> bool {
    let same_host = match (&a.host_port.host, &b.host_port.host) {
        (Host::IP4(x), Host::IP4(y)) => x == y,
        (Host::IP6(x), Host::IP6(y)) => x == y,
        (Host::Name(x), Host::Name(y)) => x.eq_ignore_ascii_case(y),
        (x, y) => x.to_string().eq_ignore_ascii_case(&y.to_string()),
    };
    let same_param = |n: &str| {
        let va = a.uri_params.get(n).map(|p| p.value.as_deref());
        let vb = b.uri_params.get(n).map(|p| p.value.as_deref());
        match (va, vb) {
            (Some(Some(x)), Some(Some(y))) => x.eq_ignore_ascii_case(y),
            (x, y) => x == y,
        }
    };
    a.sips == b.sips
        && a.host_port.port == b.host_port.port
        && a.user_part == b.user_part
        && same_host
        && ["transport", "user", "method", "maddr", "ttl"]
            .into_iter()
            .all(same_param)
}

/// `value` without its `;name[=...]` param (outside `<...>`).
fn strip_param(value: &str, name: &str) -> String {
    let split = value.rfind('>').map_or(0, |i| i + 1);
    let (head, tail) = value.split_at(split);
    let mut parts = tail.split(';');
    let mut out = String::from(head);
    // The text before the first ';' is URI (bare form) or nothing.
    out.push_str(parts.next().unwrap_or(""));
    for p in parts {
        let key = p.split('=').next().unwrap_or("").trim();
        if !key.eq_ignore_ascii_case(name) {
            out.push(';');
            out.push_str(p);
        }
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transaction::Transport;

    fn source() -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: "192.0.2.7:40000".parse().unwrap(),
        }
    }

    fn register(call_id: &str, cseq: u32, expires: Option<u32>, contacts: &[&str]) -> Message {
        let mut text = format!(
            "REGISTER sip:abcd.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK{cseq}\r\n\
Max-Forwards: 70\r\nTo: <sip:fred@abcd.com>\r\nFrom: <sip:fred@abcd.com>;tag=r1\r\n\
Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n"
        );
        for c in contacts {
            text.push_str(&format!("Contact: {c}\r\n"));
        }
        if let Some(e) = expires {
            text.push_str(&format!("Expires: {e}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        Message::parse(text.as_bytes()).unwrap()
    }

    const AOR: &str = "fred@abcd.com";

    fn live(loc: &mut Location, now: Instant) -> Vec<String> {
        match loc.lookup(AOR, now) {
            Lookup::Bindings(b) => b.into_iter().map(|b| b.contact).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn register_refresh_and_expire() {
        let t0 = Instant::now();
        let mut loc = Location::new(Limits::default());
        assert!(matches!(loc.lookup(AOR, t0), Lookup::Unknown));
        let req = register(
            "c1",
            1,
            Some(120),
            &["<sip:fred@192.0.2.7:5060>;+sip.instance=\"<x>\""],
        );
        let resp = loc.handle_register(AOR, &req, source(), t0, "tt");
        assert_eq!(resp.code(), Some(200));
        assert_eq!(
            resp.list(&Name::CONTACT),
            vec!["<sip:fred@192.0.2.7:5060>;+sip.instance=\"<x>\";expires=120"]
        );
        // A second contact with its own lifetime, param beating header.
        let t1 = t0 + Duration::from_secs(30);
        let req = register(
            "c1",
            2,
            Some(120),
            &["<sip:fred@198.51.100.1;transport=tcp>;expires=600"],
        );
        let resp = loc.handle_register(AOR, &req, source(), t1, "tt");
        let contacts = resp.list(&Name::CONTACT);
        assert_eq!(contacts.len(), 2);
        assert!(contacts[0].ends_with("transport=tcp>;expires=600"));
        assert!(contacts[1].ends_with(";expires=90"));
        // Refresh of the first: same URI replaces, no third binding.
        let t2 = t0 + Duration::from_secs(100);
        let req = register("c1", 3, None, &["<sip:fred@192.0.2.7:5060>;expires=300"]);
        loc.register(AOR, &req, source(), t2).unwrap();
        assert_eq!(live(&mut loc, t2).len(), 2);
        // Most recent first.
        assert!(live(&mut loc, t2)[0].contains("192.0.2.7"));
        // The refreshed binding lives to t2+300, the tcp one to t1+600.
        // The first wake-up is the original 120 s: a refresh never delays
        // a sweep, the sweep just finds nothing and aims at the next one.
        assert_eq!(loc.poll_timeout(), Some(t0 + Duration::from_secs(120)));
        loc.handle_timeout(t0 + Duration::from_secs(120));
        assert_eq!(loc.poll_timeout(), Some(t2 + Duration::from_secs(300)));
        assert_eq!(live(&mut loc, t2 + Duration::from_secs(300)).len(), 1);
        loc.handle_timeout(t2 + Duration::from_secs(300));
        assert_eq!(loc.poll_timeout(), Some(t1 + Duration::from_secs(600)));
        loc.handle_timeout(t1 + Duration::from_secs(600));
        assert!(matches!(
            loc.lookup(AOR, t1 + Duration::from_secs(600)),
            Lookup::Offline
        ));
        assert_eq!(loc.poll_timeout(), None);
    }

    #[test]
    fn default_clamp_and_too_brief() {
        let t0 = Instant::now();
        let mut loc = Location::new(Limits::default());
        let resp = loc.handle_register(
            AOR,
            &register("c", 1, None, &["<sip:a@h1>"]),
            source(),
            t0,
            "t",
        );
        assert!(resp.list(&Name::CONTACT)[0].ends_with(";expires=3600"));
        let resp = loc.handle_register(
            AOR,
            &register("c", 2, Some(999_999), &["<sip:a@h1>"]),
            source(),
            t0,
            "t",
        );
        assert!(resp.list(&Name::CONTACT)[0].ends_with(";expires=86400"));
        let resp = loc.handle_register(
            AOR,
            &register("c", 3, Some(30), &["<sip:a@h2>"]),
            source(),
            t0,
            "t",
        );
        assert_eq!(resp.code(), Some(423));
        assert_eq!(resp.raw(&Name::MIN_EXPIRES), Some("60"));
        // Atomic: a brief contact spoils the whole request.
        let req = register("c", 4, None, &["<sip:a@h3>", "<sip:a@h4>;expires=5"]);
        assert_eq!(
            loc.register(AOR, &req, source(), t0).unwrap_err(),
            RegisterError::IntervalTooBrief(60)
        );
        assert_eq!(live(&mut loc, t0).len(), 1);
    }

    #[test]
    fn unregister_one_and_all() {
        let t0 = Instant::now();
        let mut loc = Location::new(Limits::default());
        let req = register("c", 1, Some(600), &["<sip:a@h1>", "<sip:a@h2>"]);
        assert_eq!(loc.register(AOR, &req, source(), t0).unwrap().len(), 2);
        let req = register("c", 2, Some(600), &["<sip:a@h1>;expires=0"]);
        assert_eq!(loc.register(AOR, &req, source(), t0).unwrap().len(), 1);
        // Contact: * needs Expires: 0 and nothing else.
        let req = register("c", 3, Some(600), &["*"]);
        assert_eq!(
            loc.register(AOR, &req, source(), t0).unwrap_err().code(),
            400
        );
        let req = register("c", 3, Some(0), &["*", "<sip:a@h2>"]);
        assert_eq!(
            loc.register(AOR, &req, source(), t0).unwrap_err().code(),
            400
        );
        let req = register("c", 3, Some(0), &["*"]);
        assert!(loc.register(AOR, &req, source(), t0).unwrap().is_empty());
        assert!(matches!(loc.lookup(AOR, t0), Lookup::Offline));
    }

    #[test]
    fn call_id_and_cseq_ordering() {
        let t0 = Instant::now();
        let mut loc = Location::new(Limits::default());
        loc.register(AOR, &register("c", 5, None, &["<sip:a@h1>"]), source(), t0)
            .unwrap();
        // Same Call-ID, CSeq not higher: refused, binding untouched.
        let req = register("c", 5, Some(0), &["<sip:a@h1>"]);
        assert_eq!(
            loc.register(AOR, &req, source(), t0).unwrap_err(),
            RegisterError::OutOfOrder
        );
        let req = register("c", 4, Some(0), &["*"]);
        assert_eq!(
            loc.register(AOR, &req, source(), t0).unwrap_err(),
            RegisterError::OutOfOrder
        );
        assert_eq!(live(&mut loc, t0).len(), 1);
        // Another Call-ID (the UA rebooted) may, whatever its CSeq.
        let req = register("other", 1, Some(0), &["<sip:a@h1>"]);
        assert!(loc.register(AOR, &req, source(), t0).unwrap().is_empty());
    }

    #[test]
    fn bounds_hold() {
        let t0 = Instant::now();
        let mut loc = Location::new(Limits {
            max_aors: 2,
            max_contacts: 2,
            ..Limits::default()
        });
        let req = register("c", 1, None, &["<sip:a@h1>", "<sip:a@h2>", "<sip:a@h3>"]);
        assert_eq!(
            loc.register(AOR, &req, source(), t0).unwrap_err(),
            RegisterError::TooManyContacts
        );
        let req = register("c", 2, Some(60), &["<sip:a@h1>"]);
        loc.register("a@x", &req, source(), t0).unwrap();
        loc.register("b@x", &req, source(), t0).unwrap();
        assert_eq!(
            loc.register("c@x", &req, source(), t0).unwrap_err(),
            RegisterError::Full
        );
        // Once those expire, their room is reused.
        let later = t0 + Duration::from_secs(61);
        loc.register("c@x", &req, source(), later).unwrap();
        assert!(loc.aor_count() <= 2);
    }

    #[test]
    fn uri_equality_and_ob() {
        let u = |s: &str| msg::parse_whole::<SipUri>(s).unwrap();
        assert!(same_uri(
            &u("sip:a@HOST.com:5060"),
            &u("sip:a@host.com:5060;foo=1")
        ));
        assert!(!same_uri(&u("sip:a@host.com"), &u("sip:a@host.com:5060")));
        assert!(!same_uri(&u("sip:A@host.com"), &u("sip:a@host.com")));
        assert!(!same_uri(&u("sip:a@h;transport=tcp"), &u("sip:a@h")));
        assert!(same_uri(
            &u("sip:a@[2001:db8::1]:5062"),
            &u("sip:a@[2001:DB8::1]:5062")
        ));
        let t0 = Instant::now();
        let mut loc = Location::new(Limits::default());
        let req = register(
            "c",
            1,
            None,
            &["<sip:a@10.0.0.5:5060;ob>", "sip:b@h;expires=100"],
        );
        let b = loc.register(AOR, &req, source(), t0).unwrap();
        assert!(b.iter().any(|b| b.wants_flow()));
        assert!(b
            .iter()
            .any(|b| b.contact == "sip:b@h" && b.remaining(t0) == 100));
    }
}
