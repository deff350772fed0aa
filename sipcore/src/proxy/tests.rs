//! The proxy driven with bytes and a hand-moved clock: what goes in is wire
//! text, what is checked is what `poll_transmit` would put on the wire.

use super::*;
use crate::digest::{respond, Challenge};

const A: &str = "192.0.2.10:5060";
const FRED: &str = "192.0.2.1:5062";
const BOB: &str = "198.51.100.2:5064";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn udp(s: &str) -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: addr(s),
    }
}

fn tcp(s: &str) -> Peer {
    Peer {
        transport: Transport::Tcp,
        addr: addr(s),
    }
}

fn config(local: &str, domain: &str) -> Config {
    let mut c = Config::new(addr(local));
    c.domains = vec![domain.to_string()];
    c
}

fn proxy() -> Proxy {
    Proxy::new(config(A, "abcd.com"))
}

/// A request as a UA would write it.
#[derive(Clone)]
struct R {
    method: String,
    uri: String,
    via: String,
    branch: String,
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
    extra: Vec<String>,
}

impl R {
    fn new(method: &str, uri: &str) -> R {
        R {
            method: method.into(),
            uri: uri.into(),
            via: format!("SIP/2.0/UDP {FRED}"),
            branch: crate::ids::branch(),
            from: "<sip:fred@abcd.com>;tag=ff1".into(),
            to: "<sip:bob@abcd.com>".into(),
            call_id: "call-1@fred".into(),
            cseq: 1,
            extra: Vec::new(),
        }
    }

    /// The next request of the same UA: new transaction, higher CSeq.
    fn next(&self, cseq: u32) -> R {
        R {
            cseq,
            branch: crate::ids::branch(),
            ..self.clone()
        }
    }

    fn h(mut self, line: &str) -> R {
        self.extra.push(line.to_string());
        self
    }

    fn text(&self) -> String {
        let mut t = format!(
            "{} {} SIP/2.0\r\nVia: {};branch={};rport\r\nFrom: {}\r\nTo: {}\r\n\
Call-ID: {}\r\nCSeq: {} {}\r\n",
            self.method,
            self.uri,
            self.via,
            self.branch,
            self.from,
            self.to,
            self.call_id,
            self.cseq,
            self.method
        );
        if !self.extra.iter().any(|h| h.starts_with("Max-Forwards")) {
            t.push_str("Max-Forwards: 70\r\n");
        }
        for h in &self.extra {
            t.push_str(h);
            t.push_str("\r\n");
        }
        t.push_str("Content-Length: 0\r\n\r\n");
        t
    }
}

fn sent(p: &mut Proxy) -> Vec<(Peer, Message)> {
    std::iter::from_fn(|| p.poll_transmit())
        .map(|t| (t.to, Message::parse(&t.bytes).expect("we send valid SIP")))
        .collect()
}

fn logs(p: &mut Proxy) -> Vec<String> {
    std::iter::from_fn(|| p.poll_log()).collect()
}

fn only(out: Vec<(Peer, Message)>) -> (Peer, Message) {
    assert_eq!(out.len(), 1, "{out:#?}");
    out.into_iter().next().unwrap()
}

/// A response to `req` as a UA would send it: same Vias, its own To tag.
fn answer(req: &Message, code: u16, tag: &str) -> Vec<u8> {
    let mut r = Message::response_to(req, code, Some(tag));
    if (200..300).contains(&code) && req.method() == Some(&Method::INVITE) {
        for rr in req.list(&Name::RECORD_ROUTE) {
            r.add(Name::RECORD_ROUTE, rr);
        }
        r.add(Name::CONTACT, format!("<sip:bob@{BOB}>"));
    }
    r.to_bytes()
}

fn register_bob(p: &mut Proxy, contact: &str, now: Instant) {
    let reg = R::new("REGISTER", "sip:abcd.com")
        .h(&format!("Contact: {contact}"))
        .h("Expires: 600");
    let reg = R {
        via: format!("SIP/2.0/UDP {BOB}"),
        from: "<sip:bob@abcd.com>;tag=rb".into(),
        call_id: format!("reg-{contact}"),
        ..reg
    };
    p.receive(reg.text().as_bytes(), udp(BOB), now);
    let (to, resp) = only(sent(p));
    assert_eq!(to, udp(BOB));
    assert_eq!(resp.code(), Some(200), "{resp}");
    logs(p);
}

// ---- registrar -------------------------------------------------------------

#[test]
fn register_refresh_expire_unregister_through_the_wire() {
    let t0 = Instant::now();
    let mut p = proxy();
    let reg = |cseq: u32, contact: &str, expires: &str| {
        R {
            cseq,
            call_id: "reg1".into(),
            to: "<sip:fred@abcd.com>".into(),
            ..R::new("REGISTER", "sip:abcd.com")
        }
        .h(&format!("Contact: {contact}"))
        .h(&format!("Expires: {expires}"))
        .text()
    };
    p.receive(
        reg(1, "<sip:fred@192.0.2.1:5062>", "120").as_bytes(),
        udp(FRED),
        t0,
    );
    let (to, ok) = only(sent(&mut p));
    assert_eq!(to, udp(FRED));
    assert_eq!(ok.code(), Some(200));
    assert_eq!(
        ok.list(&Name::CONTACT),
        vec!["<sip:fred@192.0.2.1:5062>;expires=120"]
    );
    assert!(ok.to_tag().is_some());
    let log = logs(&mut p);
    assert_eq!(log.len(), 1);
    assert!(log[0].starts_with(
        "REGISTER call-id=reg1 from=sip:fred@abcd.com to=sip:fred@abcd.com result=200"
    ));

    // A second device, then a refresh of the first.
    p.receive(
        reg(2, "<sip:fred@192.0.2.99;transport=tcp>", "300").as_bytes(),
        udp(FRED),
        t0,
    );
    assert_eq!(only(sent(&mut p)).1.list(&Name::CONTACT).len(), 2);
    let t1 = t0 + Duration::from_secs(100);
    p.receive(
        reg(3, "<sip:fred@192.0.2.1:5062>", "600").as_bytes(),
        udp(FRED),
        t1,
    );
    let contacts = only(sent(&mut p)).1.list(&Name::CONTACT);
    assert_eq!(
        contacts,
        vec![
            "<sip:fred@192.0.2.1:5062>;expires=600".to_string(),
            "<sip:fred@192.0.2.99;transport=tcp>;expires=200".to_string()
        ]
    );

    // Too brief.
    p.receive(
        reg(4, "<sip:fred@192.0.2.5>", "10").as_bytes(),
        udp(FRED),
        t1,
    );
    let r = only(sent(&mut p)).1;
    assert_eq!(r.code(), Some(423));
    assert_eq!(r.raw(&Name::MIN_EXPIRES), Some("60"));
    // Out of order: same Call-ID, old CSeq.
    p.receive(
        reg(2, "<sip:fred@192.0.2.1:5062>", "0").as_bytes(),
        udp(FRED),
        t1,
    );
    assert_eq!(only(sent(&mut p)).1.code(), Some(500));

    // The timer walks the second binding out at t0+300.
    let wake = p.poll_timeout().unwrap();
    assert!(wake <= t0 + Duration::from_secs(300));
    let t2 = t0 + Duration::from_secs(300);
    p.handle_timeout(t2);
    match p.location.lookup("fred@abcd.com", t2) {
        Lookup::Bindings(b) => assert_eq!(b.len(), 1),
        other => panic!("{other:?}"),
    }
    // Expires: 0 on the contact removes it; fred is now offline: 480.
    p.receive(
        reg(5, "<sip:fred@192.0.2.1:5062>;expires=0", "600").as_bytes(),
        udp(FRED),
        t2,
    );
    let r = only(sent(&mut p)).1;
    assert_eq!(r.code(), Some(200));
    assert!(r.list(&Name::CONTACT).is_empty());
    let invite = R {
        to: "<sip:fred@abcd.com>".into(),
        call_id: "c480".into(),
        ..R::new("INVITE", "sip:fred@abcd.com")
    };
    p.receive(invite.text().as_bytes(), udp(BOB), t2);
    assert_eq!(only(sent(&mut p)).1.code(), Some(480));

    // Contact: * with Expires: 0 clears everything; with anything else, 400.
    p.receive(
        reg(6, "<sip:fred@192.0.2.7>", "600").as_bytes(),
        udp(FRED),
        t2,
    );
    sent(&mut p);
    p.receive(reg(7, "*", "60").as_bytes(), udp(FRED), t2);
    assert_eq!(only(sent(&mut p)).1.code(), Some(400));
    p.receive(reg(8, "*", "0").as_bytes(), udp(FRED), t2);
    assert_eq!(only(sent(&mut p)).1.code(), Some(200));
    assert!(matches!(
        p.location.lookup("fred@abcd.com", t2),
        Lookup::Offline
    ));
}

#[test]
fn never_registered_is_404_and_foreign_aor_is_403() {
    let t0 = Instant::now();
    let mut p = proxy();
    p.receive(
        R::new("INVITE", "sip:nobody@abcd.com").text().as_bytes(),
        udp(FRED),
        t0,
    );
    assert_eq!(only(sent(&mut p)).1.code(), Some(404));
    let log = logs(&mut p);
    assert_eq!(log.len(), 1);
    assert!(log[0].contains("result=404 forwarded=-"), "{}", log[0]);
    // Registering an AOR of a domain we do not serve, at us.
    let reg = R {
        to: "<sip:bob@wxyz.com>".into(),
        ..R::new("REGISTER", "sip:abcd.com")
    }
    .h("Contact: <sip:bob@192.0.2.1>");
    p.receive(reg.text().as_bytes(), udp(FRED), t0);
    assert_eq!(only(sent(&mut p)).1.code(), Some(403));
}

#[test]
fn user_in_users_map_without_binding_is_480() {
    let t0 = Instant::now();
    let mut c = config(A, "abcd.com");
    c.users.insert("bob@ABCD.com".into(), "pw".into());
    let mut p = Proxy::new(c);
    // From a foreign domain: no challenge for calls into our domain.
    let inv = R {
        from: "<sip:carol@wxyz.com>;tag=c".into(),
        ..R::new("INVITE", "sip:bob@abcd.com")
    };
    p.receive(inv.text().as_bytes(), udp(FRED), t0);
    assert_eq!(only(sent(&mut p)).1.code(), Some(480));
}

#[test]
fn binding_table_bounds() {
    let t0 = Instant::now();
    let mut c = config(A, "abcd.com");
    c.limits.max_contacts = 1;
    let mut p = Proxy::new(c);
    let reg =
        R::new("REGISTER", "sip:abcd.com").h("Contact: <sip:bob@192.0.2.3>, <sip:bob@192.0.2.4>");
    p.receive(reg.text().as_bytes(), udp(BOB), t0);
    assert_eq!(only(sent(&mut p)).1.code(), Some(403));
}

// ---- proxying --------------------------------------------------------------

/// fred calls bob (registered at BOB); returns the INVITE as bob got it.
fn call_bob(p: &mut Proxy, inv: &R, now: Instant) -> Message {
    p.receive(inv.text().as_bytes(), udp(FRED), now);
    let out = sent(p);
    assert_eq!(out.len(), 2, "{out:#?}");
    let (to, trying) = &out[0];
    assert_eq!(*to, udp(FRED));
    assert_eq!(trying.code(), Some(100));
    let (to, fwd) = &out[1];
    assert_eq!(*to, udp(BOB));
    fwd.clone()
}

#[test]
fn invite_is_record_routed_and_responses_come_back() {
    let t0 = Instant::now();
    let mut p = proxy();
    register_bob(&mut p, &format!("<sip:bob@{BOB}>"), t0);
    let inv = R::new("INVITE", "sip:bob@abcd.com").h(&format!("Contact: <sip:fred@{FRED}>"));
    let fwd = call_bob(&mut p, &inv, t0);
    // Retargeted to the binding, one hop used, our Via and RR on top.
    assert_eq!(
        fwd.uri().unwrap().default_print_ctx().to_string(),
        format!("sip:bob@{BOB}")
    );
    assert_eq!(fwd.max_forwards(), Some(69));
    assert_eq!(
        fwd.list(&Name::RECORD_ROUTE),
        vec![format!("<sip:{A};transport=udp;lr>")]
    );
    let vias = fwd.vias();
    assert_eq!(vias.len(), 2);
    assert!(vias[0].starts_with(&format!("SIP/2.0/UDP {A};branch=z9hG4bK")));
    assert!(vias[1].contains(&inv.branch) && vias[1].contains("received=192.0.2.1"));
    assert_eq!(fwd.branch().unwrap().len(), "z9hG4bK".len() + 16);
    // Header order otherwise kept: Via still first.
    assert!(fwd.to_string().lines().nth(1).unwrap().starts_with("Via:"));

    // 180 and 200 come back with our Via popped, to where fred sent from.
    p.receive(&answer(&fwd, 180, "bt"), udp(BOB), t0);
    let (to, ringing) = only(sent(&mut p));
    assert_eq!(to, udp(FRED));
    assert_eq!(ringing.code(), Some(180));
    assert_eq!(ringing.vias().len(), 1);
    assert!(ringing.vias()[0].contains(&inv.branch));
    p.receive(&answer(&fwd, 200, "bt"), udp(BOB), t0);
    let (to, ok) = only(sent(&mut p));
    assert_eq!(to, udp(FRED));
    assert_eq!(ok.code(), Some(200));
    assert_eq!(
        ok.list(&Name::RECORD_ROUTE),
        vec![format!("<sip:{A};transport=udp;lr>")]
    );
    let log = logs(&mut p);
    assert_eq!(log, vec![format!(
        "INVITE call-id=call-1@fred from=sip:fred@abcd.com to=sip:bob@abcd.com result=200 forwarded=udp:{BOB}"
    )]);

    // A 2xx retransmitted by bob is relayed again (client tx Accepted).
    p.receive(
        &answer(&fwd, 200, "bt"),
        udp(BOB),
        t0 + Duration::from_millis(500),
    );
    assert_eq!(only(sent(&mut p)).1.code(), Some(200));
    // ... and still after every transaction is gone (stray, stateless).
    let late = t0 + Duration::from_secs(40);
    p.handle_timeout(late);
    sent(&mut p);
    p.receive(&answer(&fwd, 200, "bt"), udp(BOB), late);
    let (to, ok) = only(sent(&mut p));
    assert_eq!((to, ok.code()), (udp(FRED), Some(200)));
    assert!(logs(&mut p).is_empty());
}

#[test]
fn in_dialog_requests_follow_loose_routes_and_ack_is_stateless() {
    let t0 = Instant::now();
    let mut p = proxy();
    register_bob(&mut p, &format!("<sip:bob@{BOB}>"), t0);
    let inv = R::new("INVITE", "sip:bob@abcd.com");
    let fwd = call_bob(&mut p, &inv, t0);
    p.receive(&answer(&fwd, 200, "bt"), udp(BOB), t0);
    sent(&mut p);
    logs(&mut p);

    // fred's ACK: R-URI = bob's Contact, Route = our Record-Route.
    let in_dialog = |method: &str, cseq: u32| {
        R {
            to: "<sip:bob@abcd.com>;tag=bt".into(),
            cseq,
            ..R::new(method, &format!("sip:bob@{BOB}"))
        }
        .h(&format!("Route: <sip:{A};transport=udp;lr>"))
    };
    let ack = in_dialog("ACK", 1);
    p.receive(ack.text().as_bytes(), udp(FRED), t0);
    let (to, fwd_ack) = only(sent(&mut p));
    assert_eq!(to, udp(BOB));
    assert_eq!(fwd_ack.method(), Some(&Method::ACK));
    assert!(fwd_ack.list(&Name::ROUTE).is_empty());
    assert_eq!(fwd_ack.vias().len(), 2);
    assert_eq!(fwd_ack.max_forwards(), Some(69));
    let log = logs(&mut p);
    assert_eq!(log.len(), 1);
    assert!(
        log[0].starts_with("ACK ") && log[0].ends_with(&format!("result=- forwarded=udp:{BOB}"))
    );
    // A retransmitted ACK gets the same branch (stateless, §16.11).
    p.receive(ack.text().as_bytes(), udp(FRED), t0);
    assert_eq!(only(sent(&mut p)).1.branch(), fwd_ack.branch());

    // re-INVITE from fred: loose-routed, no second Record-Route.
    let reinv = in_dialog("INVITE", 2);
    p.receive(reinv.text().as_bytes(), udp(FRED), t0);
    let out = sent(&mut p);
    assert_eq!(out.len(), 2);
    let (to, fwd_re) = &out[1];
    assert_eq!(*to, udp(BOB));
    assert!(fwd_re.list(&Name::ROUTE).is_empty());
    assert!(fwd_re.list(&Name::RECORD_ROUTE).is_empty());
    p.receive(&answer(fwd_re, 200, "bt"), udp(BOB), t0);
    assert_eq!(only(sent(&mut p)).1.code(), Some(200));

    // BYE from bob towards fred's Contact.
    let bye = R {
        via: format!("SIP/2.0/UDP {BOB}"),
        from: "<sip:bob@abcd.com>;tag=bt".into(),
        to: "<sip:fred@abcd.com>;tag=ff1".into(),
        cseq: 7,
        ..R::new("BYE", &format!("sip:fred@{FRED}"))
    }
    .h(&format!("Route: <sip:{A};transport=udp;lr>"));
    p.receive(bye.text().as_bytes(), udp(BOB), t0);
    let (to, fwd_bye) = only(sent(&mut p));
    assert_eq!(to, udp(FRED));
    assert!(fwd_bye.list(&Name::ROUTE).is_empty());
    p.receive(&answer(&fwd_bye, 200, "x"), udp(FRED), t0);
    let (to, ok) = only(sent(&mut p));
    assert_eq!((to, ok.code()), (udp(BOB), Some(200)));
    let log = logs(&mut p);
    assert!(log.last().unwrap().starts_with("BYE "), "{log:?}");
    assert!(log.last().unwrap().contains("result=200"));
}

#[test]
fn cancel_reaches_the_branch_and_487_comes_back() {
    let t0 = Instant::now();
    let mut p = proxy();
    register_bob(&mut p, &format!("<sip:bob@{BOB}>"), t0);
    let inv = R::new("INVITE", "sip:bob@abcd.com");
    let fwd = call_bob(&mut p, &inv, t0);
    p.receive(&answer(&fwd, 180, "bt"), udp(BOB), t0);
    sent(&mut p);

    let cancel = R {
        branch: inv.branch.clone(),
        ..R::new("CANCEL", "sip:bob@abcd.com")
    };
    p.receive(cancel.text().as_bytes(), udp(FRED), t0);
    let out = sent(&mut p);
    assert_eq!(out.len(), 2, "{out:#?}");
    let (to, ok) = &out[0];
    assert_eq!((*to, ok.code()), (udp(FRED), Some(200)));
    assert_eq!(ok.cseq().unwrap().method, Method::CANCEL);
    let (to, c) = &out[1];
    assert_eq!(*to, udp(BOB));
    assert_eq!(c.method(), Some(&Method::CANCEL));
    assert_eq!(c.branch(), fwd.branch());
    assert_eq!(
        c.uri().unwrap().default_print_ctx().to_string(),
        format!("sip:bob@{BOB}")
    );
    assert_eq!(c.cseq().unwrap().cseq, 1);
    assert_eq!(c.vias().len(), 1);

    // bob: 200 for the CANCEL (absorbed), 487 for the INVITE (relayed, and
    // ACKed by our client transaction).
    p.receive(&answer(c, 200, "bt"), udp(BOB), t0);
    assert!(sent(&mut p).is_empty());
    p.receive(&answer(&fwd, 487, "bt"), udp(BOB), t0);
    let out = sent(&mut p);
    assert_eq!(out.len(), 2, "{out:#?}");
    assert!(out
        .iter()
        .any(|(to, m)| *to == udp(BOB) && m.method() == Some(&Method::ACK)));
    assert!(out
        .iter()
        .any(|(to, m)| *to == udp(FRED) && m.code() == Some(487)));
    let log = logs(&mut p);
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[0].starts_with("CANCEL ") && log[0].contains("result=200"));
    assert!(log[1].starts_with("INVITE ") && log[1].contains("result=487"));
    // fred's ACK for the 487 ends our server transaction quietly.
    let mut ack = R {
        branch: inv.branch.clone(),
        to: "<sip:bob@abcd.com>;tag=bt".into(),
        ..R::new("ACK", "sip:bob@abcd.com")
    };
    ack.cseq = 1;
    p.receive(ack.text().as_bytes(), udp(FRED), t0);
    assert!(sent(&mut p).is_empty());
    assert!(logs(&mut p).is_empty());
}

#[test]
fn cancel_before_any_provisional_waits_for_one() {
    let t0 = Instant::now();
    let mut p = proxy();
    register_bob(&mut p, &format!("<sip:bob@{BOB}>"), t0);
    let inv = R::new("INVITE", "sip:bob@abcd.com");
    let fwd = call_bob(&mut p, &inv, t0);
    let cancel = R {
        branch: inv.branch.clone(),
        ..R::new("CANCEL", "sip:bob@abcd.com")
    };
    p.receive(cancel.text().as_bytes(), udp(FRED), t0);
    // Only the 200 to the CANCEL: no CANCEL downstream yet (§9.1).
    assert_eq!(only(sent(&mut p)).1.code(), Some(200));
    p.receive(&answer(&fwd, 100, ""), udp(BOB), t0);
    let (to, c) = only(sent(&mut p));
    assert_eq!((to, c.method()), (udp(BOB), Some(&Method::CANCEL)));
    // A CANCEL for nothing we know.
    let stray = R::new("CANCEL", "sip:bob@abcd.com");
    p.receive(stray.text().as_bytes(), udp(FRED), t0);
    assert_eq!(only(sent(&mut p)).1.code(), Some(481));
}

#[test]
fn max_forwards_and_requests_for_the_proxy_itself() {
    let t0 = Instant::now();
    let mut p = proxy();
    register_bob(&mut p, &format!("<sip:bob@{BOB}>"), t0);
    let zero = R::new("INVITE", "sip:bob@abcd.com").h("Max-Forwards: 0");
    p.receive(zero.text().as_bytes(), udp(FRED), t0);
    assert_eq!(only(sent(&mut p)).1.code(), Some(483));
    // OPTIONS with no hops left is ours to answer.
    let opt = R::new("OPTIONS", "sip:bob@abcd.com").h("Max-Forwards: 0");
    p.receive(opt.text().as_bytes(), udp(FRED), t0);
    let r = only(sent(&mut p)).1;
    assert_eq!(r.code(), Some(200));
    assert_eq!(r.raw(&Name::ALLOW), Some(ALLOW));

    // Addressed to us: by domain without user, or by our address.
    for uri in ["sip:abcd.com", &format!("sip:{A}")] {
        p.receive(R::new("OPTIONS", uri).text().as_bytes(), udp(FRED), t0);
        let r = only(sent(&mut p)).1;
        assert_eq!(r.code(), Some(200));
        assert_eq!(r.raw(&Name::ACCEPT), Some("application/sdp"));
        p.receive(R::new("MESSAGE", uri).text().as_bytes(), udp(FRED), t0);
        let r = only(sent(&mut p)).1;
        assert_eq!(r.code(), Some(405));
        assert_eq!(r.raw(&Name::ALLOW), Some(ALLOW));
        p.receive(R::new("FROBNICATE", uri).text().as_bytes(), udp(FRED), t0);
        assert_eq!(only(sent(&mut p)).1.code(), Some(501));
    }
    // Missing Max-Forwards: forwarded with 70.
    let mut none = R::new("OPTIONS", "sip:bob@abcd.com").text();
    none = none.replace("Max-Forwards: 70\r\n", "");
    p.receive(none.as_bytes(), udp(FRED), t0);
    let (to, fwd) = only(sent(&mut p));
    assert_eq!((to, fwd.max_forwards()), (udp(BOB), Some(70)));
    // An extension we do not implement.
    let req = R::new("OPTIONS", "sip:bob@abcd.com").h("Proxy-Require: foo");
    p.receive(req.text().as_bytes(), udp(FRED), t0);
    let r = only(sent(&mut p)).1;
    assert_eq!(
        (r.code(), r.raw(&Name::UNSUPPORTED)),
        (Some(420), Some("foo"))
    );
}

#[test]
fn static_route_and_tcp_target() {
    let t0 = Instant::now();
    let mut c = config(A, "abcd.com");
    c.routes.insert("WXYZ.com".into(), addr("203.0.113.9:5080"));
    let mut p = Proxy::new(c);
    let inv = R {
        to: "<sip:bob@wxyz.com>".into(),
        ..R::new("INVITE", "sip:bob@wxyz.com;transport=tcp")
    };
    p.receive(inv.text().as_bytes(), udp(FRED), t0);
    let out = sent(&mut p);
    let (to, fwd) = &out[1];
    assert_eq!(*to, tcp("203.0.113.9:5080"));
    // The Request-URI is not ours to change; Via and RR say TCP.
    assert_eq!(
        fwd.uri().unwrap().default_print_ctx().to_string(),
        "sip:bob@wxyz.com;transport=tcp"
    );
    assert!(fwd.vias()[0].starts_with(&format!("SIP/2.0/TCP {A};")));
    assert_eq!(
        fwd.list(&Name::RECORD_ROUTE),
        vec![format!("<sip:{A};transport=tcp;lr>")]
    );
    // The answer comes back over TCP but goes to fred over UDP.
    let mut ok = Message::parse(&answer(fwd, 200, "w")).unwrap();
    ok.set(Name::CONTACT, "<sip:bob@203.0.113.50>");
    p.receive(&ok.to_bytes(), tcp("203.0.113.9:5080"), t0);
    let (to, ok) = only(sent(&mut p));
    assert_eq!((to, ok.code()), (udp(FRED), Some(200)));
}

#[test]
fn srv_resolution_round_trip_and_failures() {
    let t0 = Instant::now();
    let mut p = proxy();
    let inv = |n: u32| R {
        call_id: format!("srv-{n}"),
        to: "<sip:bob@example.net>".into(),
        ..R::new("INVITE", "sip:bob@Example.NET")
    };
    let first = inv(1);
    p.receive(first.text().as_bytes(), udp(FRED), t0);
    assert_eq!(only(sent(&mut p)).1.code(), Some(100));
    // A second call to the same domain parks without asking again.
    p.receive(inv(2).text().as_bytes(), udp(FRED), t0);
    sent(&mut p);
    let q = p.poll_resolve().unwrap();
    assert_eq!(
        q,
        Resolve {
            domain: "example.net".into(),
            transport: Transport::Udp,
            port: None
        }
    );
    assert_eq!(q.srv_name(), "_sip._udp.example.net");
    assert!(p.poll_resolve().is_none());
    let servers = vec![addr("203.0.113.20:5060"), addr("203.0.113.21:5070")];
    p.resolved("example.net.", servers, t0);
    let out = sent(&mut p);
    assert_eq!(out.len(), 2);
    assert!(out
        .iter()
        .all(|(to, m)| *to == udp("203.0.113.20:5060") && m.method() == Some(&Method::INVITE)));

    // The first server never answers: Timer B, then the next address.
    let mut t = t0;
    while let Some(at) = p.poll_timeout() {
        if at > t0 + Duration::from_secs(33) {
            break;
        }
        t = at;
        p.handle_timeout(t);
        for (to, m) in sent(&mut p) {
            if m.method() == Some(&Method::INVITE) && to.addr.port() == 5070 {
                assert_eq!(to, udp("203.0.113.21:5070"));
                assert_ne!(m.branch(), out[0].1.branch());
                assert!(logs(&mut p).is_empty());
                return srv_failures(p, t);
            }
        }
    }
    panic!("no failover by {t:?}");
}

fn srv_failures(mut p: Proxy, t: Instant) {
    // A name that does not exist: 404.
    let inv = R {
        to: "<sip:x@nowhere.invalid>".into(),
        ..R::new("INVITE", "sip:x@nowhere.invalid:5099")
    };
    p.receive(inv.text().as_bytes(), udp(FRED), t);
    sent(&mut p);
    let q = p.poll_resolve().unwrap();
    assert_eq!(q.port, Some(5099));
    p.resolved("nowhere.invalid", Vec::new(), t);
    assert_eq!(only(sent(&mut p)).1.code(), Some(404));
    // The driver never answers: 503 after resolve_timeout.
    let opt = R::new("OPTIONS", "sip:x@silent.example");
    p.receive(opt.text().as_bytes(), udp(FRED), t);
    assert!(sent(&mut p).is_empty());
    p.handle_timeout(t + Duration::from_secs(10));
    let r = sent(&mut p);
    assert!(
        r.iter()
            .any(|(_, m)| m.code() == Some(503) && m.cseq().unwrap().method == Method::OPTIONS),
        "{r:#?}"
    );
    // A late answer finds nothing parked.
    p.resolved(
        "silent.example",
        vec![addr("203.0.113.1:5060")],
        t + Duration::from_secs(11),
    );
    assert!(sent(&mut p)
        .iter()
        .all(|(_, m)| m.method() != Some(&Method::OPTIONS)));
}

#[test]
fn srv_targets_choose_the_transport_unless_the_uri_does() {
    let t0 = Instant::now();
    let mut p = proxy();
    let srv = vec![tcp("203.0.113.30:5061"), udp("203.0.113.31:5060")];
    // No transport in the URI: the first SRV target's (TCP) is used.
    let inv = R {
        to: "<sip:bob@example.org>".into(),
        ..R::new("INVITE", "sip:bob@example.org")
    };
    p.receive(inv.text().as_bytes(), udp(FRED), t0);
    sent(&mut p);
    assert_eq!(p.poll_resolve().unwrap().transport, Transport::Udp);
    p.resolved_peers("example.org", srv.clone(), t0);
    let (to, fwd) = only(sent(&mut p));
    assert_eq!(to, tcp("203.0.113.30:5061"));
    assert!(fwd.vias()[0].starts_with("SIP/2.0/TCP "));
    assert_eq!(
        fwd.list(&Name::RECORD_ROUTE),
        vec![format!("<sip:{A};transport=tcp;lr>")]
    );
    // transport=udp in the URI: TCP targets are skipped.
    let inv = R {
        call_id: "udp-only".into(),
        to: "<sip:bob@example.org>".into(),
        ..R::new("INVITE", "sip:bob@example.org;transport=udp")
    };
    p.receive(inv.text().as_bytes(), udp(FRED), t0);
    sent(&mut p);
    p.poll_resolve().unwrap();
    p.resolved_peers("example.org", srv, t0);
    assert_eq!(only(sent(&mut p)).0, udp("203.0.113.31:5060"));
}

#[test]
fn branch_timeout_is_408() {
    let t0 = Instant::now();
    let mut p = proxy();
    register_bob(&mut p, &format!("<sip:bob@{BOB}>"), t0);
    p.receive(
        R::new("MESSAGE", "sip:bob@abcd.com").text().as_bytes(),
        udp(FRED),
        t0,
    );
    sent(&mut p);
    p.handle_timeout(t0 + Duration::from_secs(32));
    let out = sent(&mut p);
    assert!(
        out.iter()
            .any(|(to, m)| *to == udp(FRED) && m.code() == Some(408)),
        "{out:#?}"
    );
    assert!(logs(&mut p)[0].contains("result=408"));
}

#[test]
fn ringing_branch_gets_timer_c_cancel() {
    let t0 = Instant::now();
    let mut p = proxy();
    register_bob(&mut p, &format!("<sip:bob@{BOB}>"), t0);
    let fwd = call_bob(&mut p, &R::new("INVITE", "sip:bob@abcd.com"), t0);
    p.receive(&answer(&fwd, 180, "bt"), udp(BOB), t0);
    sent(&mut p);
    // Ringing past Timer B is fine.
    p.handle_timeout(t0 + Duration::from_secs(60));
    assert!(sent(&mut p)
        .iter()
        .all(|(_, m)| m.code().unwrap_or(0) < 200));
    p.handle_timeout(t0 + crate::transaction::TIMER_C);
    let out = sent(&mut p);
    assert!(out
        .iter()
        .any(|(to, m)| *to == udp(BOB) && m.method() == Some(&Method::CANCEL)));
    assert!(out
        .iter()
        .any(|(to, m)| *to == udp(FRED) && m.code() == Some(408)));
}

#[test]
fn parallel_fork_best_response_and_2xx_cancels_the_rest() {
    let t0 = Instant::now();
    let mut p = proxy();
    let bob2 = "198.51.100.3:5066";
    register_bob(&mut p, &format!("<sip:bob@{BOB}>"), t0);
    register_bob(
        &mut p,
        &format!("<sip:bob@{bob2}>"),
        t0 + Duration::from_secs(1),
    );
    let inv = R::new("INVITE", "sip:bob@abcd.com");
    p.receive(
        inv.text().as_bytes(),
        udp(FRED),
        t0 + Duration::from_secs(2),
    );
    let out = sent(&mut p);
    assert_eq!(out.len(), 3);
    // Most recent binding first.
    assert_eq!(out[1].0, udp(bob2));
    assert_eq!(out[2].0, udp(BOB));
    let (f2, f1) = (out[1].1.clone(), out[2].1.clone());
    assert_ne!(f1.branch(), f2.branch());
    p.receive(&answer(&f2, 180, "b2"), udp(bob2), t0);
    p.receive(&answer(&f1, 486, "b1"), udp(BOB), t0);
    // The 486 is held (ACKed hop by hop); the 180 went up.
    let out = sent(&mut p);
    assert!(out
        .iter()
        .any(|(to, m)| *to == udp(FRED) && m.code() == Some(180)));
    assert!(out.iter().all(|(_, m)| m.code() != Some(486)));
    p.receive(&answer(&f2, 200, "b2"), udp(bob2), t0);
    let out = sent(&mut p);
    assert!(out
        .iter()
        .any(|(to, m)| *to == udp(FRED) && m.code() == Some(200)));
    assert!(logs(&mut p)
        .iter()
        .any(|l| l.contains(&format!("result=200 forwarded=udp:{bob2},udp:{BOB}"))));

    // Another call: 404 and 503 → the 404 wins; a 503 alone goes up as 500.
    let inv = R {
        call_id: "c2".into(),
        ..R::new("INVITE", "sip:bob@abcd.com")
    };
    p.receive(inv.text().as_bytes(), udp(FRED), t0);
    let out = sent(&mut p);
    p.receive(
        &answer(&out[1].1, 503, "x"),
        out[1]
            .0
            .addr
            .to_string()
            .parse::<SocketAddr>()
            .map(|a| Peer {
                transport: Transport::Udp,
                addr: a,
            })
            .unwrap(),
        t0,
    );
    p.receive(&answer(&out[2].1, 404, "y"), out[2].0, t0);
    let up: Vec<_> = sent(&mut p)
        .into_iter()
        .filter(|(to, _)| *to == udp(FRED))
        .collect();
    assert_eq!(only(up).1.code(), Some(404));

    let inv = R {
        call_id: "c3".into(),
        ..R::new("INVITE", "sip:bob@abcd.com")
    };
    p.receive(inv.text().as_bytes(), udp(FRED), t0);
    let out = sent(&mut p);
    p.receive(&answer(&out[1].1, 180, "x"), out[1].0, t0);
    p.receive(&answer(&out[2].1, 603, "y"), out[2].0, t0);
    // 6xx: the ringing branch is cancelled; its 487 completes the context
    // and the 603 goes up.
    let after = sent(&mut p);
    let cancel = after
        .iter()
        .find(|(_, m)| m.method() == Some(&Method::CANCEL))
        .expect("CANCEL for the ringing branch");
    assert_eq!(cancel.0, out[1].0);
    p.receive(&answer(&out[1].1, 487, "x"), out[1].0, t0);
    let up: Vec<_> = sent(&mut p)
        .into_iter()
        .filter(|(to, _)| *to == udp(FRED))
        .collect();
    assert_eq!(only(up).1.code(), Some(603));

    let inv = R {
        call_id: "c4".into(),
        ..R::new("INVITE", "sip:bob@abcd.com")
    };
    p.receive(inv.text().as_bytes(), udp(FRED), t0);
    let out = sent(&mut p);
    p.receive(&answer(&out[1].1, 503, "x"), out[1].0, t0);
    p.receive(&answer(&out[2].1, 503, "y"), out[2].0, t0);
    let up: Vec<_> = sent(&mut p)
        .into_iter()
        .filter(|(to, _)| *to == udp(FRED))
        .collect();
    assert_eq!(only(up).1.code(), Some(500));
}

#[test]
fn nat_and_ob_reach_the_registering_address() {
    let t0 = Instant::now();
    let mut p = proxy();
    // bob writes a private address but registers from a public one.
    let reg = R {
        via: "SIP/2.0/UDP 10.0.0.5:5060".into(),
        from: "<sip:bob@abcd.com>;tag=r".into(),
        ..R::new("REGISTER", "sip:abcd.com")
    }
    .h("Contact: <sip:bob@10.0.0.5:5060;ob>");
    p.receive(reg.text().as_bytes(), udp("203.0.113.77:31000"), t0);
    assert_eq!(only(sent(&mut p)).1.code(), Some(200));
    p.receive(
        R::new("INVITE", "sip:bob@abcd.com").text().as_bytes(),
        udp(FRED),
        t0,
    );
    let out = sent(&mut p);
    assert_eq!(out[1].0, udp("203.0.113.77:31000"));
    assert_eq!(
        out[1].1.uri().unwrap().default_print_ctx().to_string(),
        "sip:bob@10.0.0.5:5060;ob"
    );
}

#[test]
fn register_for_another_domain_is_proxied() {
    let t0 = Instant::now();
    let mut c = config(A, "abcd.com");
    c.routes.insert("wxyz.com".into(), addr("203.0.113.9:5060"));
    let mut p = Proxy::new(c);
    let reg = R {
        to: "<sip:bob@wxyz.com>".into(),
        ..R::new("REGISTER", "sip:wxyz.com")
    }
    .h("Contact: <sip:bob@192.0.2.1>");
    p.receive(reg.text().as_bytes(), udp(FRED), t0);
    let (to, fwd) = only(sent(&mut p));
    assert_eq!(to, udp("203.0.113.9:5060"));
    assert_eq!(fwd.method(), Some(&Method::REGISTER));
    assert!(fwd.list(&Name::RECORD_ROUTE).is_empty());
}

#[test]
fn ipv6_everywhere() {
    let t0 = Instant::now();
    let me = "[2001:db8::10]:5060";
    let bob = "[2001:db8::2]:5062";
    let fred = "[2001:db8::1]:5064";
    let mut p = Proxy::new(config(me, "abcd.com"));
    let reg = R {
        via: format!("SIP/2.0/UDP {bob}"),
        from: "<sip:bob@abcd.com>;tag=r".into(),
        ..R::new("REGISTER", "sip:abcd.com")
    }
    .h(&format!("Contact: <sip:bob@{bob}>"));
    p.receive(reg.text().as_bytes(), udp(bob), t0);
    let ok = only(sent(&mut p)).1;
    assert_eq!(
        ok.list(&Name::CONTACT),
        vec![format!("<sip:bob@{bob}>;expires=3600")]
    );
    // Calling by the proxy's own address reaches bob of our domain.
    let inv = R {
        via: format!("SIP/2.0/UDP {fred}"),
        ..R::new("INVITE", &format!("sip:bob@{me}"))
    };
    p.receive(inv.text().as_bytes(), udp(fred), t0);
    let out = sent(&mut p);
    assert_eq!(out[0].0, udp(fred));
    let (to, fwd) = &out[1];
    assert_eq!(*to, udp(bob));
    assert!(fwd.vias()[0].starts_with(&format!("SIP/2.0/UDP {me};branch=")));
    assert!(fwd.vias()[1].contains("received=2001:db8::1"));
    assert_eq!(
        fwd.list(&Name::RECORD_ROUTE),
        vec![format!("<sip:{me};transport=udp;lr>")]
    );
    p.receive(&answer(fwd, 200, "b"), udp(bob), t0);
    assert_eq!(only(sent(&mut p)).0, udp(fred));
    // A UA on our host at another port is not us.
    let direct = R::new("OPTIONS", "sip:carol@[2001:db8::10]:5070");
    p.receive(direct.text().as_bytes(), udp(fred), t0);
    assert_eq!(only(sent(&mut p)).0, udp("[2001:db8::10]:5070"));
}

#[test]
fn request_to_ourselves_is_a_loop() {
    let t0 = Instant::now();
    let mut c = config(A, "abcd.com");
    c.routes.insert("wxyz.com".into(), addr(A));
    let mut p = Proxy::new(c);
    p.receive(
        R::new("MESSAGE", "sip:bob@wxyz.com").text().as_bytes(),
        udp(FRED),
        t0,
    );
    assert_eq!(only(sent(&mut p)).1.code(), Some(482));
}

// ---- two proxies -----------------------------------------------------------

/// Proxies and phones on a lossless network; phones just collect.
struct Net {
    now: Instant,
    proxies: Vec<Proxy>,
    inbox: Vec<(SocketAddr, Peer, Message)>,
}

impl Net {
    /// Deliver until quiet; phones' mail lands in `inbox` (to, from, msg).
    fn run(&mut self) {
        for _ in 0..100 {
            let mut moved = false;
            for i in 0..self.proxies.len() {
                let from_addr = self.proxies[i].config().local_udp;
                while let Some(t) = self.proxies[i].poll_transmit() {
                    moved = true;
                    let from = Peer {
                        transport: t.to.transport,
                        addr: from_addr,
                    };
                    let now = self.now;
                    match self
                        .proxies
                        .iter()
                        .position(|p| p.config().local_udp == t.to.addr)
                    {
                        Some(j) => self.proxies[j].receive(&t.bytes, from, now),
                        None => {
                            self.inbox
                                .push((t.to.addr, from, Message::parse(&t.bytes).unwrap()))
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("network never went quiet");
    }

    fn send(&mut self, to: usize, bytes: &[u8], from: &str) {
        let now = self.now;
        self.proxies[to].receive(bytes, udp(from), now);
        self.run();
    }

    fn take(&mut self, at: &str) -> Vec<Message> {
        let at = addr(at);
        let (mine, rest) = std::mem::take(&mut self.inbox)
            .into_iter()
            .partition(|(to, _, _)| *to == at);
        self.inbox = rest;
        mine.into_iter().map(|(_, _, m)| m).collect()
    }
}

#[test]
fn two_proxies_route_fred_at_abcd_to_bob_at_wxyz() {
    let a = "192.0.2.10:5060";
    let b = "198.51.100.10:5060";
    let mut ca = config(a, "abcd.com");
    ca.routes.insert("wxyz.com".into(), addr(b));
    let mut cb = config(b, "wxyz.com");
    cb.routes.insert("abcd.com".into(), addr(a));
    let mut net = Net {
        now: Instant::now(),
        proxies: vec![Proxy::new(ca), Proxy::new(cb)],
        inbox: Vec::new(),
    };
    // bob registers with wxyz.com.
    let reg = R {
        via: format!("SIP/2.0/UDP {BOB}"),
        from: "<sip:bob@wxyz.com>;tag=r".into(),
        to: "<sip:bob@wxyz.com>".into(),
        ..R::new("REGISTER", "sip:wxyz.com")
    }
    .h(&format!("Contact: <sip:bob@{BOB}>"));
    net.send(1, reg.text().as_bytes(), BOB);
    assert_eq!(net.take(BOB)[0].code(), Some(200));

    // fred (abcd.com) calls bob@wxyz.com through his own proxy.
    let inv = R {
        to: "<sip:bob@wxyz.com>".into(),
        ..R::new("INVITE", "sip:bob@wxyz.com")
    }
    .h(&format!("Contact: <sip:fred@{FRED}>"));
    net.send(0, inv.text().as_bytes(), FRED);
    let at_bob = net.take(BOB);
    let fwd = only(at_bob.into_iter().map(|m| (udp(BOB), m)).collect()).1;
    assert_eq!(
        fwd.uri().unwrap().default_print_ctx().to_string(),
        format!("sip:bob@{BOB}")
    );
    assert_eq!(fwd.max_forwards(), Some(68));
    assert_eq!(
        fwd.list(&Name::RECORD_ROUTE),
        vec![
            format!("<sip:{b};transport=udp;lr>"),
            format!("<sip:{a};transport=udp;lr>")
        ]
    );
    assert_eq!(fwd.vias().len(), 3);
    assert_eq!(
        net.take(FRED)
            .iter()
            .filter_map(|m| m.code())
            .collect::<Vec<_>>(),
        vec![100]
    );

    net.send(1, &answer(&fwd, 180, "bt"), BOB);
    net.send(1, &answer(&fwd, 200, "bt"), BOB);
    let at_fred: Vec<_> = net.take(FRED).iter().filter_map(|m| m.code()).collect();
    assert_eq!(at_fred, vec![180, 200]);

    // fred's ACK carries the route set A, B (reversed Record-Route).
    let ack = R {
        to: "<sip:bob@wxyz.com>;tag=bt".into(),
        ..R::new("ACK", &format!("sip:bob@{BOB}"))
    }
    .h(&format!(
        "Route: <sip:{a};transport=udp;lr>, <sip:{b};transport=udp;lr>"
    ));
    net.send(0, ack.text().as_bytes(), FRED);
    let acks = net.take(BOB);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].method(), Some(&Method::ACK));
    assert_eq!(acks[0].vias().len(), 3);
    assert!(acks[0].list(&Name::ROUTE).is_empty());

    // bob hangs up: route set B, A.
    let bye = R {
        via: format!("SIP/2.0/UDP {BOB}"),
        from: "<sip:bob@wxyz.com>;tag=bt".into(),
        to: "<sip:fred@abcd.com>;tag=ff1".into(),
        cseq: 9,
        ..R::new("BYE", &format!("sip:fred@{FRED}"))
    }
    .h(&format!("Route: <sip:{b};transport=udp;lr>"))
    .h(&format!("Route: <sip:{a};transport=udp;lr>"));
    net.send(1, bye.text().as_bytes(), BOB);
    let byes = net.take(FRED);
    assert_eq!(byes.len(), 1);
    net.send(0, &answer(&byes[0], 200, "x"), FRED);
    let oks = net.take(BOB);
    assert_eq!(oks.len(), 1);
    assert_eq!(
        (oks[0].code(), oks[0].cseq().unwrap().method),
        (Some(200), Method::BYE)
    );

    let la: Vec<String> = std::iter::from_fn(|| net.proxies[0].poll_log()).collect();
    let lb: Vec<String> = std::iter::from_fn(|| net.proxies[1].poll_log()).collect();
    assert_eq!(la.len(), 3, "{la:?}");
    assert!(la[0].contains(&format!("INVITE call-id=call-1@fred from=sip:fred@abcd.com to=sip:bob@wxyz.com result=200 forwarded=udp:{b}")));
    assert_eq!(lb.len(), 4, "{lb:?}");
    assert!(lb[0].starts_with("REGISTER "));
    assert!(lb[1].contains(&format!("result=200 forwarded=udp:{BOB}")));
}

// ---- authentication ------------------------------------------------------

fn challenge_of(resp: &Message, name: &Name) -> Vec<Challenge> {
    resp.headers
        .get_raw(name)
        .map(|v| Challenge::parse(v).unwrap())
        .collect()
}

fn authed_proxy() -> Proxy {
    let mut c = config(A, "abcd.com");
    c.users.insert("fred@abcd.com".into(), "secret".into());
    c.users.insert("bob@abcd.com".into(), "hunter2".into());
    Proxy::new(c)
}

#[test]
fn register_is_challenged_sha256_first_then_accepted() {
    let t0 = Instant::now();
    let mut p = authed_proxy();
    let reg = R {
        to: "<sip:fred@abcd.com>".into(),
        ..R::new("REGISTER", "sip:abcd.com")
    }
    .h(&format!("Contact: <sip:fred@{FRED}>"));
    p.receive(reg.text().as_bytes(), udp(FRED), t0);
    let r = only(sent(&mut p)).1;
    assert_eq!(r.code(), Some(401));
    let ch = challenge_of(&r, &Name::WWW_AUTHENTICATE);
    assert_eq!(ch.len(), 2);
    assert_eq!(ch[0].algorithm.as_str(), "SHA-256");
    assert_eq!(ch[1].algorithm.as_str(), "MD5");
    assert_eq!(ch[0].realm, "abcd.com");

    for (i, c) in ch.iter().enumerate() {
        let cred = respond(
            c,
            "fred",
            "secret",
            "REGISTER",
            "sip:abcd.com",
            b"",
            "cn",
            1,
        );
        let again = reg.next(2 + i as u32).h(&format!("Authorization: {cred}"));
        p.receive(again.text().as_bytes(), udp(FRED), t0);
        assert_eq!(
            only(sent(&mut p)).1.code(),
            Some(200),
            "{}",
            c.algorithm.as_str()
        );
    }
    // Wrong password: challenged afresh, not stale.
    let cred = respond(
        &ch[0],
        "fred",
        "guess",
        "REGISTER",
        "sip:abcd.com",
        b"",
        "cn",
        1,
    );
    let bad = reg.next(9).h(&format!("Authorization: {cred}"));
    p.receive(bad.text().as_bytes(), udp(FRED), t0);
    let r = only(sent(&mut p)).1;
    assert_eq!(r.code(), Some(401));
    assert!(!challenge_of(&r, &Name::WWW_AUTHENTICATE)[0].stale);
    // An old nonce with the right password: stale=true.
    let later = t0 + Duration::from_secs(301);
    let cred = respond(
        &ch[0],
        "fred",
        "secret",
        "REGISTER",
        "sip:abcd.com",
        b"",
        "cn",
        2,
    );
    let old = reg.next(10).h(&format!("Authorization: {cred}"));
    p.receive(old.text().as_bytes(), udp(FRED), later);
    let r = only(sent(&mut p)).1;
    assert_eq!(r.code(), Some(401));
    assert!(challenge_of(&r, &Name::WWW_AUTHENTICATE)[0].stale);
}

#[test]
fn only_the_owner_registers_an_aor() {
    let t0 = Instant::now();
    let mut p = authed_proxy();
    // fred, with fred's valid credentials, tries to bind bob's AOR.
    let reg = R {
        to: "<sip:bob@abcd.com>".into(),
        ..R::new("REGISTER", "sip:abcd.com")
    }
    .h(&format!("Contact: <sip:fred@{FRED}>"));
    p.receive(reg.text().as_bytes(), udp(FRED), t0);
    let ch = challenge_of(&only(sent(&mut p)).1, &Name::WWW_AUTHENTICATE);
    let cred = respond(
        &ch[0],
        "fred",
        "secret",
        "REGISTER",
        "sip:abcd.com",
        b"",
        "cn",
        1,
    );
    let again = reg.next(2).h(&format!("Authorization: {cred}"));
    p.receive(again.text().as_bytes(), udp(FRED), t0);
    assert_eq!(only(sent(&mut p)).1.code(), Some(403));
    // bob's password under fred's From is not fred either.
    let reg = R {
        to: "<sip:fred@abcd.com>".into(),
        cseq: 3,
        ..R::new("REGISTER", "sip:abcd.com")
    };
    let cred = respond(
        &ch[0],
        "bob",
        "hunter2",
        "REGISTER",
        "sip:abcd.com",
        b"",
        "cn",
        1,
    );
    p.receive(
        reg.h(&format!("Authorization: {cred}")).text().as_bytes(),
        udp(FRED),
        t0,
    );
    assert_eq!(only(sent(&mut p)).1.code(), Some(403));
}

#[test]
fn invite_from_our_user_needs_proxy_auth() {
    let t0 = Instant::now();
    let mut p = authed_proxy();
    // bob registers (authenticated).
    let reg = R {
        via: format!("SIP/2.0/UDP {BOB}"),
        from: "<sip:bob@abcd.com>;tag=rb".into(),
        ..R::new("REGISTER", "sip:abcd.com")
    }
    .h(&format!("Contact: <sip:bob@{BOB}>"));
    p.receive(reg.text().as_bytes(), udp(BOB), t0);
    let ch = challenge_of(&only(sent(&mut p)).1, &Name::WWW_AUTHENTICATE);
    let cred = respond(
        &ch[1],
        "bob",
        "hunter2",
        "REGISTER",
        "sip:abcd.com",
        b"",
        "c",
        1,
    );
    let reg = reg.next(2).h(&format!("Authorization: {cred}"));
    p.receive(reg.text().as_bytes(), udp(BOB), t0);
    assert_eq!(only(sent(&mut p)).1.code(), Some(200));

    let inv = R::new("INVITE", "sip:bob@abcd.com");
    p.receive(inv.text().as_bytes(), udp(FRED), t0);
    let r = only(sent(&mut p)).1;
    assert_eq!(r.code(), Some(407));
    let ch = challenge_of(&r, &Name::PROXY_AUTHENTICATE);
    assert_eq!(ch.len(), 2);
    let cred = respond(
        &ch[0],
        "fred",
        "secret",
        "INVITE",
        "sip:bob@abcd.com",
        b"",
        "c",
        1,
    );
    let inv = inv.next(2).h(&format!("Proxy-Authorization: {cred}"));
    let fwd = call_bob(&mut p, &inv, t0);
    // Our realm's credentials stop here.
    assert!(!fwd.headers.contains(&Name::PROXY_AUTHORIZATION));

    // A stranger relaying foreign to foreign is refused.
    let relay = R {
        from: "<sip:eve@evil.example>;tag=e".into(),
        call_id: "relay".into(),
        ..R::new("INVITE", "sip:victim@elsewhere.example")
    };
    p.receive(relay.text().as_bytes(), udp(FRED), t0);
    assert_eq!(only(sent(&mut p)).1.code(), Some(403));
}

// ---- robustness ------------------------------------------------------------

#[test]
fn mangled_input_never_panics() {
    let t0 = Instant::now();
    let mut p = authed_proxy();
    p.config
        .routes
        .insert("wxyz.com".into(), addr("203.0.113.9:5060"));
    register_bob_unauthed(&mut p, t0);
    let seeds = [
        R::new("INVITE", "sip:bob@abcd.com").h("Contact: <sip:fred@192.0.2.1>").text(),
        R::new("REGISTER", "sip:abcd.com").h("Contact: *").h("Expires: 0").text(),
        R::new("ACK", &format!("sip:bob@{BOB}")).h(&format!("Route: <sip:{A};lr>, <sip:x@[::1]>")).text(),
        R::new("CANCEL", "sip:bob@wxyz.com").text(),
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKx, SIP/2.0/UDP 1.2.3.4\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n"
            .to_string(),
    ];
    // A small xorshift: deterministic, no dependency.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let alphabet = b" :;,<>@\"[]\r\n=0123456789abcdefSIP/2.0z9hG4bK*";
    for round in 0..3000 {
        let mut bytes = seeds[round % seeds.len()].clone().into_bytes();
        for _ in 0..(1 + rand() % 6) {
            let i = (rand() as usize) % bytes.len();
            match rand() % 3 {
                0 => bytes[i] = alphabet[(rand() as usize) % alphabet.len()],
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, alphabet[(rand() as usize) % alphabet.len()]),
            }
        }
        let now = t0 + Duration::from_millis(round as u64 * 37);
        p.receive(&bytes, udp(FRED), now);
        p.handle_timeout(now);
        while p.poll_transmit().is_some() {}
        while p.poll_log().is_some() {}
        while let Some(r) = p.poll_resolve() {
            p.resolved(&r.domain, vec![addr("203.0.113.1:5060")], now);
        }
    }
}

fn register_bob_unauthed(p: &mut Proxy, now: Instant) {
    p.location
        .register(
            "bob@abcd.com",
            &Message::parse(
                R::new("REGISTER", "sip:abcd.com")
                    .h(&format!("Contact: <sip:bob@{BOB}>"))
                    .text()
                    .as_bytes(),
            )
            .unwrap(),
            udp(BOB),
            now,
        )
        .unwrap();
}

#[test]
fn pending_resolves_are_bounded() {
    let t0 = Instant::now();
    let mut c = config(A, "abcd.com");
    c.max_pending_resolves = 2;
    let mut p = Proxy::new(c);
    for n in 0..3 {
        let req = R {
            call_id: format!("b{n}"),
            ..R::new("MESSAGE", &format!("sip:x@d{n}.example"))
        };
        p.receive(req.text().as_bytes(), udp(FRED), t0);
    }
    let out = sent(&mut p);
    assert_eq!(only(out).1.code(), Some(503));
    assert_eq!(std::iter::from_fn(|| p.poll_resolve()).count(), 2);
}

// ---- with the real user agent ------------------------------------------

mod with_ua {
    use super::*;
    use crate::ua::{Ua, UaConfig, UaEvent};
    use bytes::Bytes;

    enum Node {
        Ua(Box<Ua>),
        Proxy(Box<Proxy>),
    }

    impl Node {
        fn io(&mut self) -> &mut dyn SansIo {
            match self {
                Node::Ua(u) => u.as_mut(),
                Node::Proxy(p) => p.as_mut(),
            }
        }
    }

    /// fred@abcd.com — proxy A — proxy B — bob@wxyz.com, UDP, lossless.
    struct World {
        now: Instant,
        nodes: Vec<(SocketAddr, Node)>,
    }

    const FRED_UA: usize = 0;
    const BOB_UA: usize = 3;

    impl World {
        fn new() -> World {
            World::with_fred_password(None)
        }

        /// Proxy A knows fred's password "secret"; fred's UA has `password`.
        fn with_fred_password(password: Option<&str>) -> World {
            let (a, b) = (addr("192.0.2.10:5060"), addr("198.51.100.10:5060"));
            let mut ca = config("192.0.2.10:5060", "abcd.com");
            ca.routes.insert("wxyz.com".into(), b);
            if password.is_some() {
                ca.users.insert("fred@abcd.com".into(), "secret".into());
            }
            let mut cb = config("198.51.100.10:5060", "wxyz.com");
            cb.routes.insert("abcd.com".into(), a);
            let ua = |aor: &str, local: &str, proxy: SocketAddr, password: Option<&str>| {
                let mut c = UaConfig::new(aor, Transport::Udp, addr(local));
                c.proxy = Some(proxy);
                c.password = password.map(str::to_string);
                Node::Ua(Box::new(Ua::new(c).unwrap()))
            };
            World {
                now: Instant::now(),
                nodes: vec![
                    (addr(FRED), ua("sip:fred@abcd.com", FRED, a, password)),
                    (a, Node::Proxy(Box::new(Proxy::new(ca)))),
                    (b, Node::Proxy(Box::new(Proxy::new(cb)))),
                    (addr(BOB), ua("sip:bob@wxyz.com", BOB, b, None)),
                ],
            }
        }

        fn ua(&mut self, i: usize) -> &mut Ua {
            match &mut self.nodes[i].1 {
                Node::Ua(u) => u,
                Node::Proxy(_) => panic!("node {i} is a proxy"),
            }
        }

        fn run(&mut self) {
            for _ in 0..200 {
                let mut moved = false;
                for i in 0..self.nodes.len() {
                    let from = udp(&self.nodes[i].0.to_string());
                    while let Some(t) = self.nodes[i].1.io().poll_transmit() {
                        moved = true;
                        let now = self.now;
                        if let Some(j) = self.nodes.iter().position(|(a, _)| *a == t.to.addr) {
                            self.nodes[j].1.io().receive(&t.bytes, from, now);
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
            panic!("network never went quiet");
        }

        fn events(&mut self, i: usize) -> Vec<UaEvent> {
            let ua = self.ua(i);
            std::iter::from_fn(|| ua.poll_event()).collect()
        }
    }

    #[test]
    fn ua_to_ua_through_two_proxies() {
        let mut w = World::new();
        let now = w.now;
        w.ua(FRED_UA).register(now);
        w.ua(BOB_UA).register(now);
        w.run();
        assert_eq!(
            w.events(FRED_UA),
            vec![UaEvent::Registered { expires: 600 }]
        );
        assert_eq!(w.events(BOB_UA), vec![UaEvent::Registered { expires: 600 }]);

        let call = w
            .ua(FRED_UA)
            .invite("sip:bob@wxyz.com", Bytes::from_static(b"v=0\r\n"), now)
            .unwrap();
        w.run();
        let ev = w.events(BOB_UA);
        let Some(UaEvent::IncomingCall {
            call: bob_call,
            body,
            ..
        }) = ev.first()
        else {
            panic!("{ev:?}")
        };
        assert_eq!(&body[..], b"v=0\r\n");
        let bob_call = bob_call.clone();
        w.ua(BOB_UA).answer(
            &bob_call,
            200,
            Some(Bytes::from_static(b"v=0 answer\r\n")),
            now,
        );
        w.run();
        assert!(
            matches!(&w.events(FRED_UA)[..], [UaEvent::CallAnswered { call: c, .. }] if *c == call)
        );
        // The ACK found bob through both proxies (Record-Route → Route).
        assert!(matches!(
            &w.events(BOB_UA)[..],
            [UaEvent::CallConfirmed { .. }]
        ));

        // bob moves: re-INVITE through the proxies.
        assert!(w
            .ua(BOB_UA)
            .reinvite(&bob_call, Bytes::from_static(b"v=0 moved\r\n"), now));
        w.run();
        assert!(matches!(
            &w.events(FRED_UA)[..],
            [UaEvent::IncomingReinvite { .. }]
        ));
        w.ua(FRED_UA)
            .answer(&call, 200, Some(Bytes::from_static(b"v=0 ok\r\n")), now);
        w.run();
        assert!(matches!(
            &w.events(BOB_UA)[..],
            [UaEvent::ReinviteDone { code: 200, .. }]
        ));
        // bob's ACK for the re-INVITE's 2xx reached fred the same way.
        assert!(matches!(
            &w.events(FRED_UA)[..],
            [UaEvent::CallConfirmed { .. }]
        ));

        w.ua(FRED_UA).hangup(&call, now);
        w.run();
        assert!(matches!(
            &w.events(BOB_UA)[..],
            [UaEvent::CallEnded { by_peer: true, .. }]
        ));
        let ev = w.events(FRED_UA);
        assert!(
            matches!(&ev[..], [UaEvent::CallEnded { by_peer: false, .. }]),
            "{ev:?}"
        );

        // A call given up while ringing: CANCEL hop by hop, 487 back.
        let call = w
            .ua(FRED_UA)
            .invite("sip:bob@wxyz.com", Bytes::from_static(b"v=0\r\n"), now)
            .unwrap();
        w.run();
        assert!(matches!(
            &w.events(BOB_UA)[..],
            [UaEvent::IncomingCall { .. }]
        ));
        w.ua(FRED_UA).hangup(&call, now);
        w.run();
        assert!(matches!(
            &w.events(BOB_UA)[..],
            [UaEvent::CallEnded { by_peer: true, .. }]
        ));
        assert!(matches!(
            &w.events(FRED_UA)[..],
            [UaEvent::CallFailed { code: 487, .. }]
        ));
    }

    #[test]
    fn ua_answers_our_challenges() {
        let mut w = World::with_fred_password(Some("secret"));
        let now = w.now;
        w.ua(FRED_UA).register(now);
        w.ua(BOB_UA).register(now);
        w.run();
        assert_eq!(
            w.events(FRED_UA),
            vec![UaEvent::Registered { expires: 600 }]
        );
        assert_eq!(w.events(BOB_UA), vec![UaEvent::Registered { expires: 600 }]);
        w.ua(FRED_UA)
            .invite("sip:bob@wxyz.com", Bytes::from_static(b"v=0\r\n"), now)
            .unwrap();
        w.run();
        let lines: Vec<String> = match &mut w.nodes[1].1 {
            Node::Proxy(p) => std::iter::from_fn(|| p.poll_log()).collect(),
            Node::Ua(_) => unreachable!(),
        };
        let codes: Vec<&str> = lines
            .iter()
            .map(|l| {
                l.split("result=")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(codes, vec!["401", "200", "407"], "{lines:?}");
        // The UA answered the 407 and the call went on to bob.
        assert!(matches!(
            &w.events(BOB_UA)[..],
            [UaEvent::IncomingCall { .. }]
        ));

        let mut w = World::with_fred_password(Some("wrong"));
        w.ua(FRED_UA).register(now);
        w.run();
        assert_eq!(
            w.events(FRED_UA),
            vec![UaEvent::RegisterFailed { code: 401 }]
        );
    }
}
