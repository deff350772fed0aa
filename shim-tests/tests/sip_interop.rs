//! Acceptance tests for `wisp registrar` and `wisp agent` against
//! independent SIP implementations (sipsak, Net::SIP, Kamailio), written
//! against the command-line contract:
//!
//! ```text
//! wisp registrar --listen IP:PORT --domain D [--domain D2 ...]
//!                [--route DOMAIN=IP:PORT ...] [--users FILE] [--log LEVEL]
//!     UDP and TCP on IP:PORT; prints `listening IP:PORT` on stderr when ready.
//! wisp agent --uri URI --listen IP:PORT --proxy IP:PORT [--transport udp|tcp]
//!            [--password PW] [--register] [--call URI] [--reinvite] [--answer]
//!            [--hold-ms N] [--exit-after-calls N] [--timeout-ms N]
//!     prints one event per line on stdout: listening IP:PORT, registered CODE,
//!     call CODE, reinvite CODE, bye CODE, incoming-call FROM-URI,
//!     incoming-reinvite, incoming-bye, done; exit code 0 on success.
//! ```
//!
//! The same scenarios against Kamailio and between the peers themselves are
//! in `peers_sanity.rs`; when those pass and these fail, the fault is
//! wisp's. Every test captures its own ports with tshark and checks
//! that the SIP/SDP on the wire is well formed.

use shim_tests::*;

const BOTH_DOMAINS: [&str; 2] = ["abcd.com", "wxyz.com"];

/// Upper bound an agent gives itself (it should fail on its own, not hang).
const AGENT_TIMEOUT_MS: &str = "60000";

/// Spawns `wisp agent --uri URI --listen 127.0.0.1:PORT --proxy
/// 127.0.0.1:PROXY --timeout-ms .. EXTRA...` and waits for `listening`.
fn agent(name: &str, uri: &str, port: u16, proxy_port: u16, extra: &[&str]) -> Proc {
    let listen = lo(port);
    let proxy = lo(proxy_port);
    let mut args = vec![
        "agent",
        "--uri",
        uri,
        "--listen",
        &listen,
        "--proxy",
        &proxy,
        "--timeout-ms",
        AGENT_TIMEOUT_MS,
    ];
    args.extend(extra);
    let p = wisp(name, &args);
    p.wait_line(&format!("listening {listen}"), timeout());
    p
}

/// Spawns the Net::SIP UA and waits until it is registered.
fn netsip(name: &str, uri: &str, port: u16, registrar_port: u16, extra: &[&str]) -> Proc {
    let listen = lo(port);
    let registrar = lo(registrar_port);
    let mut args = vec!["--uri", uri, "--listen", &listen, "--registrar", &registrar];
    args.extend(extra);
    let p = netsip_ua(name, &args);
    p.wait_line("registered 200", timeout());
    p
}

/// The checks on a capture of one call: clean, and the call's requests
/// were all on the wire.
fn assert_call_capture(cap: &mut Capture, reinvite: bool) -> CaptureSummary {
    let summary = cap.assert_well_formed();
    let invites = if reinvite { 2 } else { 1 };
    // the initial INVITE went UA -> proxy -> UA
    assert!(summary.count("INVITE") > invites, "{summary}");
    assert!(summary.count("ACK") >= invites, "{summary}");
    assert!(summary.count("BYE") >= 1, "{summary}");
    // offer and answer of the initial INVITE each cross the proxy, those of
    // a re-INVITE at least the wire once
    assert!(summary.sdp_bodies >= 2 + 2 * invites, "{summary}");
    summary
}

// ---------------------------------------------------------------------------
// a. sipsak REGISTERs and OPTIONS wisp registrar

fn registrar_with_sipsak(transport: &str) {
    let rport = free_port();
    let contact = free_port();
    let mut cap = Capture::start(&[rport, contact]);
    let _registrar = wisp_registrar("registrar", rport, &BOTH_DOMAINS, &[]);

    sipsak_scenario(rport, transport, "sipsak", "abcd.com", contact);
    assert_unknown_user_rejected(rport, "sip:nobody@wxyz.com");

    let summary = cap.assert_well_formed();
    assert!(summary.count("REGISTER") >= 1, "{summary}");
    assert!(summary.count("OPTIONS") >= 3, "{summary}");
}

#[test]
fn registrar_serves_sipsak_over_udp() {
    registrar_with_sipsak("udp");
}

#[test]
fn registrar_serves_sipsak_over_tcp() {
    registrar_with_sipsak("tcp");
}

// ---------------------------------------------------------------------------
// b. Net::SIP <-> wisp agent through wisp registrar

/// fred (wisp agent, over `agent_transport`) calls carol (Net::SIP, UDP).
fn agent_calls_netsip(agent_transport: &str) {
    let rport = free_port();
    let carol_port = free_port();
    let fred_port = free_port();
    let mut cap = Capture::start(&[rport, carol_port, fred_port]);
    let _registrar = wisp_registrar("registrar", rport, &BOTH_DOMAINS, &[]);

    let mut carol = netsip(
        "carol",
        "sip:carol@wxyz.com",
        carol_port,
        rport,
        &["--answer", "--exit-after-calls", "1"],
    );
    let mut fred = agent(
        "fred",
        "sip:fred@abcd.com",
        fred_port,
        rport,
        &[
            "--transport",
            agent_transport,
            "--register",
            "--call",
            "sip:carol@wxyz.com",
            "--hold-ms",
            "300",
        ],
    );

    fred.wait_line("registered 200", timeout());
    fred.wait_line("call 200", timeout());
    fred.wait_line("bye 200", timeout());
    fred.wait_line("done", timeout());
    fred.wait_success(timeout());

    carol.wait_line("incoming-call sip:fred@abcd.com", timeout());
    let offer = carol.wait_line("offer-sdp ", timeout());
    assert!(offer.contains("m=application 9 TCP wisp"), "{offer}");
    assert!(offer.contains("a=setup:active"), "{offer}");
    assert!(offer.contains("a=connection:new"), "{offer}");
    carol.wait_line("incoming-ack", timeout());
    carol.wait_line("incoming-bye", timeout());
    carol.wait_line("done", timeout());
    carol.wait_success(timeout());

    assert_call_capture(&mut cap, false);
}

#[test]
fn wisp_agent_calls_netsip_via_registrar() {
    agent_calls_netsip("udp");
}

#[test]
fn wisp_agent_over_tcp_calls_netsip_over_udp_via_registrar() {
    agent_calls_netsip("tcp");
}

#[test]
fn netsip_calls_wisp_agent_via_registrar() {
    let rport = free_port();
    let bob_port = free_port();
    let dave_port = free_port();
    let mut cap = Capture::start(&[rport, bob_port, dave_port]);
    let _registrar = wisp_registrar("registrar", rport, &BOTH_DOMAINS, &[]);

    let mut bob = agent(
        "bob",
        "sip:bob@wxyz.com",
        bob_port,
        rport,
        &["--register", "--answer", "--exit-after-calls", "1"],
    );
    bob.wait_line("registered 200", timeout());

    let mut dave = netsip(
        "dave",
        "sip:dave@abcd.com",
        dave_port,
        rport,
        &[
            "--call",
            "sip:bob@wxyz.com",
            "--reinvite",
            "--hold-ms",
            "300",
        ],
    );
    dave.wait_line("call 200", timeout());
    let answer = dave.wait_line("answer-sdp ", timeout());
    let m_port = answer
        .split("m=application ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse::<u16>().ok());
    assert!(
        matches!(m_port, Some(p) if p != 0),
        "answer needs a real port: {answer}"
    );
    assert!(answer.contains(" TCP wisp"), "{answer}");
    assert!(answer.contains("a=setup:passive"), "{answer}");
    dave.wait_line("reinvite 200", timeout());
    dave.wait_line("bye 200", timeout());
    dave.wait_line("done", timeout());
    dave.wait_success(timeout());

    bob.wait_line("incoming-call sip:dave@abcd.com", timeout());
    bob.wait_line("incoming-reinvite", timeout());
    bob.wait_line("incoming-bye", timeout());
    bob.wait_line("done", timeout());
    bob.wait_success(timeout());

    assert_call_capture(&mut cap, true);
}

// ---------------------------------------------------------------------------
// c. Two wisp agents through Kamailio

fn agents_through_kamailio(transport: &str) {
    let kport = free_port();
    let alice_port = free_port();
    let bob_port = free_port();
    let mut cap = Capture::start(&[kport, alice_port, bob_port]);
    let _kam = Kamailio::start(kport);

    let mut bob = agent(
        "bob",
        "sip:bob@wxyz.com",
        bob_port,
        kport,
        &[
            "--transport",
            transport,
            "--register",
            "--answer",
            "--exit-after-calls",
            "1",
        ],
    );
    bob.wait_line("registered 200", timeout());

    let mut alice = agent(
        "alice",
        "sip:alice@abcd.com",
        alice_port,
        kport,
        &[
            "--transport",
            transport,
            "--register",
            "--call",
            "sip:bob@wxyz.com",
            "--reinvite",
            "--hold-ms",
            "300",
        ],
    );
    alice.wait_line("registered 200", timeout());
    alice.wait_line("call 200", timeout());
    alice.wait_line("reinvite 200", timeout());
    alice.wait_line("bye 200", timeout());
    alice.wait_line("done", timeout());
    alice.wait_success(timeout());

    bob.wait_line("incoming-call sip:alice@abcd.com", timeout());
    bob.wait_line("incoming-reinvite", timeout());
    bob.wait_line("incoming-bye", timeout());
    bob.wait_line("done", timeout());
    bob.wait_success(timeout());

    let summary = assert_call_capture(&mut cap, true);
    // Kamailio record-routes: in-dialog requests cross it too
    assert!(summary.count("ACK") >= 4, "{summary}");
    assert!(summary.count("BYE") >= 2, "{summary}");
}

#[test]
fn wisp_agents_call_through_kamailio_udp() {
    agents_through_kamailio("udp");
}

#[test]
fn wisp_agents_call_through_kamailio_tcp() {
    agents_through_kamailio("tcp");
}

// ---------------------------------------------------------------------------
// d. Two wisp registrars routing between their domains

#[test]
fn two_registrars_route_between_domains() {
    let a_port = free_port();
    let b_port = free_port();
    let fred_port = free_port();
    let bob_port = free_port();
    let mut cap = Capture::start(&[a_port, b_port, fred_port, bob_port]);

    let to_b = format!("wxyz.com={}", lo(b_port));
    let to_a = format!("abcd.com={}", lo(a_port));
    let _a = wisp_registrar("registrar-a", a_port, &["abcd.com"], &["--route", &to_b]);
    let _b = wisp_registrar("registrar-b", b_port, &["wxyz.com"], &["--route", &to_a]);

    let mut bob = agent(
        "bob",
        "sip:bob@wxyz.com",
        bob_port,
        b_port,
        &["--register", "--answer", "--exit-after-calls", "1"],
    );
    bob.wait_line("registered 200", timeout());

    let mut fred = agent(
        "fred",
        "sip:fred@abcd.com",
        fred_port,
        a_port,
        &[
            "--register",
            "--call",
            "sip:bob@wxyz.com",
            "--reinvite",
            "--hold-ms",
            "300",
        ],
    );
    fred.wait_line("registered 200", timeout());
    fred.wait_line("call 200", timeout());
    fred.wait_line("reinvite 200", timeout());
    fred.wait_line("bye 200", timeout());
    fred.wait_line("done", timeout());
    fred.wait_success(timeout());

    bob.wait_line("incoming-call sip:fred@abcd.com", timeout());
    bob.wait_line("incoming-reinvite", timeout());
    bob.wait_line("incoming-bye", timeout());
    bob.wait_line("done", timeout());
    bob.wait_success(timeout());

    let summary = assert_call_capture(&mut cap, true);
    // fred -> A -> B -> bob
    assert!(summary.count("INVITE") >= 4, "{summary}");
}

// ---------------------------------------------------------------------------
// f. Registrar robustness

#[test]
fn registrar_survives_garbage_half_messages_and_a_register_flood() {
    let rport = free_port();
    let mut registrar = wisp_registrar("registrar", rport, &BOTH_DOMAINS, &[]);

    let abuse = abuse_server(rport);
    assert!(abuse.flood_ok > 0, "no REGISTER of the flood got a 2xx");
    assert!(
        registrar.exited().is_none(),
        "registrar died\n{}",
        registrar.dump()
    );
    assert_still_serving(rport);
    drop(abuse);
    assert!(registrar.exited().is_none(), "{}", registrar.dump());
}
