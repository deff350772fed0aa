//! The peers and the harness on their own, without wisp: these must pass on
//! any machine with kamailio, sipsak, libnet-sip-perl and tshark, and they
//! prove that a failure in `sip_interop.rs` is wisp's.

use std::io::Write;
use std::net::{TcpListener, TcpStream, UdpSocket};

use shim_tests::*;

/// Receives one datagram on `sock` (bounded by the default timeout).
fn recv_text(sock: &UdpSocket) -> String {
    sock.set_read_timeout(Some(timeout())).unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = sock.recv_from(&mut buf).expect("no datagram");
    String::from_utf8_lossy(&buf[..n]).to_string()
}

fn status_code(msg: &str) -> u16 {
    msg.strip_prefix("SIP/2.0 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Receives datagrams until a final response arrives.
fn recv_final(sock: &UdpSocket) -> String {
    loop {
        let msg = recv_text(sock);
        if status_code(&msg) >= 200 {
            return msg;
        }
    }
}

#[test]
fn kamailio_accepts_sipsak_register() {
    let kport = free_port();
    let udp_contact = free_port();
    let tcp_contact = free_port();
    let mut cap = Capture::start(&[kport, udp_contact, tcp_contact]);
    let _kam = Kamailio::start(kport);
    let proxy = lo(kport);

    // REGISTER over UDP and TCP (-p before -s: see shim_tests::sipsak)
    // (sipsak writes -C verbatim into the Contact header: without <> a
    // ;transport=tcp would be a header parameter, not part of the URI)
    let contact = format!("<sip:sipsak@127.0.0.1:{udp_contact}>");
    let out = sipsak(&[
        "-U",
        "-x",
        "600",
        "-C",
        &contact,
        "-p",
        &proxy,
        "-s",
        "sip:sipsak@abcd.com",
        "-H",
        "127.0.0.1",
        "-vv",
    ]);
    assert!(out.success(), "sipsak REGISTER/UDP: {}", out.text);
    assert!(out.text.contains("OK"), "{}", out.text);

    let contact = format!("<sip:sipsak-tcp@127.0.0.1:{tcp_contact};transport=tcp>");
    let out = sipsak(&[
        "-U",
        "-x",
        "600",
        "-C",
        &contact,
        "-E",
        "tcp",
        "-p",
        &proxy,
        "-s",
        "sip:sipsak-tcp@wxyz.com",
        "-H",
        "127.0.0.1",
        "-vv",
    ]);
    assert!(out.success(), "sipsak REGISTER/TCP: {}", out.text);

    // OPTIONS to the proxy itself over UDP and TCP
    let target = format!("sip:127.0.0.1:{kport}");
    for transport in ["udp", "tcp"] {
        let out = sipsak(&["-vv", "-E", transport, "-s", &target, "-H", "127.0.0.1"]);
        assert!(out.success(), "sipsak OPTIONS/{transport}: {}", out.text);
        assert!(out.text.contains("SIP/2.0 200"), "{}", out.text);
    }

    // The bindings are real: an OPTIONS to each AOR reaches its contact,
    // and the contact's 200 finds its way back.
    let contact_sock = UdpSocket::bind(lo_addr(udp_contact)).unwrap();
    let client = UdpSocket::bind(lo_addr(0)).unwrap();
    let req = SipRequest::new(
        "OPTIONS",
        "sip:sipsak@abcd.com",
        client.local_addr().unwrap(),
    )
    .build();
    client.send_to(req.as_bytes(), lo_addr(kport)).unwrap();
    let fwd = recv_text(&contact_sock);
    assert!(
        fwd.starts_with(&format!("OPTIONS sip:sipsak@127.0.0.1:{udp_contact} ")),
        "{fwd}"
    );
    contact_sock
        .send_to(sip_response(&fwd, 200, "OK").as_bytes(), lo_addr(kport))
        .unwrap();
    let resp = recv_final(&client);
    assert_eq!(status_code(&resp), 200, "{resp}");

    // an unknown user is a 404
    let req = SipRequest::new(
        "OPTIONS",
        "sip:nobody@abcd.com",
        client.local_addr().unwrap(),
    )
    .build();
    client.send_to(req.as_bytes(), lo_addr(kport)).unwrap();
    let resp = recv_final(&client);
    assert_eq!(status_code(&resp), 404, "{resp}");

    let listener = TcpListener::bind(lo_addr(tcp_contact)).unwrap();
    let mut conn = TcpStream::connect(lo_addr(kport)).unwrap();
    conn.set_read_timeout(Some(timeout())).unwrap();
    let req = SipRequest::new(
        "OPTIONS",
        "sip:sipsak-tcp@wxyz.com",
        conn.local_addr().unwrap(),
    )
    .transport("TCP")
    .build();
    conn.write_all(req.as_bytes()).unwrap();
    let mut inbound = accept_within(&listener, timeout());
    let fwd = read_sip_message(&mut inbound).unwrap();
    assert!(
        fwd.starts_with("OPTIONS sip:sipsak-tcp@127.0.0.1:"),
        "{fwd}"
    );
    inbound
        .write_all(sip_response(&fwd, 200, "OK").as_bytes())
        .unwrap();
    let resp = loop {
        let m = read_sip_message(&mut conn).unwrap();
        if status_code(&m) >= 200 {
            break m;
        }
    };
    assert_eq!(status_code(&resp), 200, "{resp}");

    let summary = cap.assert_well_formed();
    assert!(summary.count("REGISTER") >= 2, "{summary}");
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
