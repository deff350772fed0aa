//! The peers and the harness on their own, without wisp: these must pass on
//! any machine with kamailio, sipsak, libnet-sip-perl and tshark, and they
//! prove that a failure in `sip_interop.rs` is wisp's.

use std::net::UdpSocket;

use shim_tests::*;

#[test]
fn kamailio_accepts_sipsak_register() {
    let kport = free_port();
    let udp_contact = free_port();
    let tcp_contact = free_port();
    let mut cap = Capture::start(&[kport, udp_contact, tcp_contact]);
    let _kam = Kamailio::start(kport);

    sipsak_scenario(kport, "udp", "sipsak", "abcd.com", udp_contact);
    sipsak_scenario(kport, "tcp", "sipsak-tcp", "wxyz.com", tcp_contact);
    assert_unknown_user_rejected(kport, "sip:nobody@abcd.com");

    let summary = cap.assert_well_formed();
    assert!(summary.count("REGISTER") >= 2, "{summary}");
    // sipsak's two, and the two routed ones: client -> proxy -> contact
    assert!(summary.count("OPTIONS") >= 6, "{summary}");
}

/// carol answers, dave calls (with a re-INVITE) through Kamailio.
fn netsip_call_through_kamailio(transport: &str) {
    let kport = free_port();
    let carol_port = free_port();
    let dave_port = free_port();
    let mut cap = Capture::start(&[kport, carol_port, dave_port]);
    let _kam = Kamailio::start(kport);
    let proxy = lo(kport);

    let carol_listen = lo(carol_port);
    let mut carol = netsip_ua(
        "carol",
        &[
            "--uri",
            "sip:carol@abcd.com",
            "--listen",
            &carol_listen,
            "--registrar",
            &proxy,
            "--transport",
            transport,
            "--answer",
            "--exit-after-calls",
            "1",
        ],
    );
    carol.wait_line("registered 200", timeout());

    let dave_listen = lo(dave_port);
    let mut dave = netsip_ua(
        "dave",
        &[
            "--uri",
            "sip:dave@wxyz.com",
            "--listen",
            &dave_listen,
            "--registrar",
            &proxy,
            "--transport",
            transport,
            "--call",
            "sip:carol@abcd.com",
            "--reinvite",
            "--hold-ms",
            "300",
        ],
    );
    dave.wait_line("registered 200", timeout());
    dave.wait_line("call 200", timeout());
    let answer = dave.wait_line("answer-sdp ", timeout());
    assert!(answer.contains(" TCP wisp"), "{answer}");
    assert!(answer.contains("a=setup:passive"), "{answer}");
    dave.wait_line("reinvite 200", timeout());
    dave.wait_line("bye 200", timeout());
    dave.wait_line("done", timeout());
    dave.wait_success(timeout());

    carol.wait_line("incoming-call sip:dave@wxyz.com", timeout());
    let offer = carol.wait_line("offer-sdp ", timeout());
    assert!(offer.contains("m=application 9 TCP wisp"), "{offer}");
    assert!(offer.contains("a=setup:active"), "{offer}");
    assert!(offer.contains("a=connection:new"), "{offer}");
    carol.wait_line("incoming-ack", timeout());
    carol.wait_line("incoming-reinvite", timeout());
    carol.wait_line("incoming-ack", timeout());
    carol.wait_line("incoming-bye", timeout());
    carol.wait_line("done", timeout());
    carol.wait_success(timeout());

    let summary = cap.assert_well_formed();
    // each request crosses the proxy: UA -> proxy -> UA
    for kind in ["REGISTER", "INVITE", "ACK", "BYE"] {
        assert!(summary.count(kind) >= 2, "{kind}: {summary}");
    }
    assert!(summary.sdp_bodies >= 8, "{summary}");
}

#[test]
fn netsip_uas_call_through_kamailio_udp() {
    netsip_call_through_kamailio("udp");
}

#[test]
fn netsip_uas_call_through_kamailio_tcp() {
    netsip_call_through_kamailio("tcp");
}

/// The capture check itself: clean SIP passes, broken SIP is reported.
#[test]
fn capture_check_tells_good_from_bad() {
    let port = free_port();
    let sender = UdpSocket::bind(lo_addr(0)).unwrap();
    let local = sender.local_addr().unwrap();
    let ruri = format!("sip:x@127.0.0.1:{port}");
    let good = SipRequest::new("OPTIONS", &ruri, local).build();

    let mut cap = Capture::start(&[port]);
    sender.send_to(good.as_bytes(), lo_addr(port)).unwrap();
    let summary = cap.check_well_formed().expect("clean capture");
    assert_eq!(summary.sip_messages, 1, "{summary}");
    assert_eq!(summary.count("OPTIONS"), 1, "{summary}");

    let no_colon = good.replacen("Max-Forwards: 70\r\n", "Max-Forwards 70\r\n", 1);
    let bad_sdp = SipRequest::new("INVITE", &ruri, local)
        .header("Content-Type: application/sdp")
        .body("v=0\r\nthis is no sdp line\r\nm=application 9 TCP wisp\r\n")
        .build();
    for (what, msg, expect) in [
        ("header without colon", no_colon.as_bytes(), "colon"),
        ("broken SDP", bad_sdp.as_bytes(), "SDP line"),
        (
            "garbage",
            &b"\x00\x01garbage\xff"[..],
            "not decodable as SIP",
        ),
    ] {
        let mut cap = Capture::start(&[port]);
        sender.send_to(msg, lo_addr(port)).unwrap();
        let err = cap
            .check_well_formed()
            .expect_err(&format!("{what} must be reported"));
        assert!(err.contains(expect), "{what}: {err}");
    }
}

/// The robustness abuse of sip_interop.rs, against Kamailio: proves the
/// abuse itself is sane (bounded, and a real server survives it).
#[test]
fn kamailio_survives_the_registrar_abuse() {
    let kport = free_port();
    let mut kam = Kamailio::start(kport);
    let abuse = abuse_server(kport);
    assert!(abuse.flood_ok > 0, "no REGISTER of the flood got a 2xx");
    assert!(kam.exited().is_none(), "kamailio died\n{}", kam.dump());
    assert_still_serving(kport);
    drop(abuse);
}
