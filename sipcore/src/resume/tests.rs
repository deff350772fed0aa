use super::*;
use crate::keys::test_pair;

const SID: StreamId = StreamId([0x5a; 16]);

/// A responder's stream: key, counter guard, ring with `sent` bytes of
/// which the peer acknowledged `acked`, and our rx.
struct Side {
    key: StreamKey,
    counter: MoveCounter,
    ring: ReplayRing,
    rx: u64,
}

impl Side {
    fn new(key: StreamKey, sent: usize, acked: u64, rx: u64) -> Side {
        let mut ring = ReplayRing::new(1 << 16);
        ring.push(&vec![b'x'; sent]);
        ring.trim_to(acked);
        Side {
            key,
            counter: MoveCounter::new(),
            ring,
            rx,
        }
    }

    fn state(&mut self) -> StreamState<'_> {
        StreamState {
            key: &self.key,
            counter: &mut self.counter,
            ring: &self.ring,
            rx: self.rx,
        }
    }

    /// Answer `bytes` as the responder for stream [`SID`].
    fn answer(&mut self, bytes: &[u8]) -> Result<Accepted, ResumeError> {
        let mut input = bytes;
        let r = Responder::new()
            .push(&mut input, |id| (*id == SID).then(|| self.state()))
            .expect("a whole message");
        assert!(input.is_empty());
        r
    }
}

fn pair_sides() -> (StreamKey, Side) {
    let (o, a) = test_pair("call@x");
    (o, Side::new(a, 1000, 400, 777))
}

#[test]
fn sizes_and_layout() {
    let init = Init {
        stream_id: StreamId([1; 16]),
        counter: 0x0102_0304_0506_0708,
        rx: 9,
        from: 0x1112_1314_1516_1718,
        mac: [0xee; 32],
    };
    let b = init.encode();
    assert_eq!(b.len(), 78);
    assert_eq!(&b[..6], b"WISP\x02\x01");
    assert_eq!(&b[22..30], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        &b[38..46],
        &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
    );
    assert_eq!(&b[46..], &[0xee; 32]);
    assert_eq!(decode(&b), Ok(Some((Msg::Init(init), 78))));
    let ack = Ack {
        rx: u64::MAX,
        mac: [3; 32],
    };
    let b = ack.encode();
    assert_eq!(b.len(), 46);
    assert_eq!(&b[..6], b"WISP\x02\x02");
    assert_eq!(decode(&b), Ok(Some((Msg::Ack(ack), 46))));
}

#[test]
fn decode_needs_more_then_stops_at_the_message() {
    let (o, _) = test_pair("c");
    let bytes = Init::new(&o, SID, 1, 2, 0).encode();
    for n in 0..bytes.len() {
        assert_eq!(decode(&bytes[..n]), Ok(None), "prefix {n}");
    }
    let mut with_data = bytes.to_vec();
    with_data.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let (msg, used) = decode(&with_data).unwrap().unwrap();
    assert_eq!(used, INIT_LEN);
    assert_eq!(msg, Msg::Init(Init::new(&o, SID, 1, 2, 0)));
}

#[test]
fn decode_errors_show_early() {
    assert_eq!(decode(b"G"), Err(ResumeError::BadMagic));
    assert_eq!(decode(b"GET / HTTP/1.1"), Err(ResumeError::BadMagic));
    assert_eq!(decode(b"WIS!"), Err(ResumeError::BadMagic));
    assert_eq!(decode(b"wisp"), Err(ResumeError::BadMagic));
    assert_eq!(decode(b"WISP\x01"), Err(ResumeError::BadVersion(1)));
    assert_eq!(decode(b"WISP\x00\x01"), Err(ResumeError::BadVersion(0)));
    assert_eq!(decode(b"WISP\x02\x03"), Err(ResumeError::BadType(3)));
    assert_eq!(decode(b"WISP\x02\x00"), Err(ResumeError::BadType(0)));
    for e in [
        ResumeError::BadMagic,
        ResumeError::BadVersion(2),
        ResumeError::BadType(3),
        ResumeError::Unexpected,
        ResumeError::BadMac,
        ResumeError::StaleCounter {
            counter: 1,
            last: 2,
        },
        ResumeError::UnknownStream(SID),
        ResumeError::Unresumable {
            peer_rx: 1,
            ring_start: 2,
        },
        ResumeError::PeerAhead { peer_rx: 3, tx: 2 },
        ResumeError::Gap { from: 3, rx: 2 },
    ] {
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn decoder_byte_by_byte_leaves_stream_data() {
    let (o, a) = test_pair("c");
    let mut wire = Init::new(&o, SID, 3, 4, 0).encode().to_vec();
    wire.extend_from_slice(&Ack::new(&a, &SID, 3, 5).encode());
    wire.extend_from_slice(b"stream data");
    let mut d = Decoder::new();
    let mut got = Vec::new();
    let mut pos = 0;
    while got.len() < 2 {
        let mut one = &wire[pos..pos + 1];
        if let Some(m) = d.push(&mut one) {
            got.push(m.unwrap());
        }
        assert!(
            one.is_empty(),
            "one byte is always taken while a message is open"
        );
        pos += 1;
    }
    assert_eq!(pos, INIT_LEN + ACK_LEN);
    assert_eq!(got[0], Msg::Init(Init::new(&o, SID, 3, 4, 0)));
    assert_eq!(got[1], Msg::Ack(Ack::new(&a, &SID, 3, 5)));
    assert_eq!(&wire[pos..], b"stream data");
}

#[test]
fn decoder_takes_exactly_one_message_from_a_big_read() {
    let (o, _) = test_pair("c");
    let mut wire = Init::new(&o, SID, 3, 4, 0).encode().to_vec();
    wire.extend_from_slice(b"WISP\x01\x01 looks like a handshake but is data");
    let mut input = &wire[..];
    let mut d = Decoder::new();
    assert!(matches!(d.push(&mut input), Some(Ok(Msg::Init(_)))));
    assert_eq!(input, b"WISP\x01\x01 looks like a handshake but is data");
    // Split reads: header in one, rest plus data in the next.
    let mut d = Decoder::new();
    let mut first = &wire[..3];
    assert_eq!(d.push(&mut first), None);
    assert!(first.is_empty());
    let mut rest = &wire[3..];
    assert!(matches!(d.push(&mut rest), Some(Ok(Msg::Init(_)))));
    assert_eq!(rest.len(), wire.len() - INIT_LEN);
    let mut empty: &[u8] = &[];
    assert_eq!(Decoder::default().push(&mut empty), None);
}

#[test]
fn decoder_error_is_sticky() {
    let mut d = Decoder::new();
    let mut input: &[u8] = b"HTTP/1.1 200 OK";
    assert_eq!(d.push(&mut input), Some(Err(ResumeError::BadMagic)));
    let mut more: &[u8] = b"WISP";
    assert_eq!(d.push(&mut more), Some(Err(ResumeError::BadMagic)));
    assert_eq!(more, b"WISP", "nothing taken after an error");
}

#[test]
fn full_handshake() {
    let (o, mut b) = pair_sides();
    let mut ring_a = ReplayRing::new(4096);
    ring_a.push(&[b'a'; 900]);
    ring_a.trim_to(700);
    let mut init = Initiator::new(&o, SID, 1, 650, 700);
    assert!(format!("{init:?}").contains("counter: 1"));
    let acc = b.answer(&init.init()).unwrap();
    assert_eq!(acc.stream_id, SID);
    // b has 777 of a's bytes; a resends from 700 at once: 77 are dropped.
    assert_eq!(acc.skip, 77);
    assert_eq!(
        acc.resend,
        Resend {
            from: 650,
            len: 350
        }
    );
    assert_eq!(b.counter.last(), 1);
    let mut wire = acc.ack.to_vec();
    wire.extend_from_slice(b"resent");
    let mut input = &wire[..];
    let ours = init.push(&mut input, &ring_a).unwrap().unwrap();
    assert_eq!(
        ours,
        Resend {
            from: 777,
            len: 123
        }
    );
    assert_eq!(input, b"resent");
}

#[test]
fn responder_refusals() {
    let (o, mut b) = pair_sides();
    // Unknown stream.
    let other = Init::new(&o, StreamId([1; 16]), 1, 650, 0).encode();
    assert_eq!(
        b.answer(&other),
        Err(ResumeError::UnknownStream(StreamId([1; 16])))
    );
    // An Ack where the Init belongs.
    let ack = Ack::new(&o, &SID, 1, 1).encode();
    assert_eq!(b.answer(&ack), Err(ResumeError::Unexpected));
    // Our own Init reflected back: made with the answerer's key.
    let reflected = Init::new(&b.key, SID, 1, 650, 0).encode();
    assert_eq!(b.answer(&reflected), Err(ResumeError::BadMac));
    // Made under another stream's key.
    let (o2, _) = test_pair("other call");
    assert_eq!(
        b.answer(&Init::new(&o2, SID, 1, 650, 0).encode()),
        Err(ResumeError::BadMac)
    );
    assert_eq!(b.counter.last(), 0, "failures take no counter");
    // Peer's rx beyond what we sent, or below what we still hold.
    assert_eq!(
        b.answer(&Init::new(&o, SID, 1, 1001, 0).encode()),
        Err(ResumeError::PeerAhead {
            peer_rx: 1001,
            tx: 1000
        })
    );
    assert_eq!(
        b.answer(&Init::new(&o, SID, 1, 399, 0).encode()),
        Err(ResumeError::Unresumable {
            peer_rx: 399,
            ring_start: 400
        })
    );
    assert_eq!(b.counter.last(), 0);
    // The initiator would resend from beyond what we received.
    assert_eq!(
        b.answer(&Init::new(&o, SID, 1, 650, 778).encode()),
        Err(ResumeError::Gap { from: 778, rx: 777 })
    );
    assert_eq!(b.counter.last(), 0);
    // A lazy Init (nothing follows it) has nothing to skip.
    let acc = b
        .answer(&Init::new(&o, SID, 1, 650, LAZY).encode())
        .unwrap();
    assert_eq!(acc.skip, 0);
    // Edges are fine: everything held, or nothing to resend.
    assert!(b.answer(&Init::new(&o, SID, 2, 400, 0).encode()).is_ok());
    let acc = b.answer(&Init::new(&o, SID, 3, 1000, 0).encode()).unwrap();
    assert_eq!(acc.resend, Resend { from: 1000, len: 0 });
}

#[test]
fn replayed_init_is_refused() {
    let (o, mut b) = pair_sides();
    let wire = Init::new(&o, SID, 5, 650, 0).encode();
    assert!(b.answer(&wire).is_ok());
    assert_eq!(
        b.answer(&wire),
        Err(ResumeError::StaleCounter {
            counter: 5,
            last: 5
        })
    );
    assert_eq!(
        b.answer(&Init::new(&o, SID, 4, 650, 0).encode()),
        Err(ResumeError::StaleCounter {
            counter: 4,
            last: 5
        })
    );
    assert!(b.answer(&Init::new(&o, SID, 6, 650, 0).encode()).is_ok());
}

#[test]
fn every_init_byte_is_covered() {
    let (o, mut b) = pair_sides();
    let good = Init::new(&o, SID, 7, 650, 0).encode();
    for i in 0..INIT_LEN {
        let mut bad = good;
        bad[i] ^= 0x10;
        // Accept any stream id here, so a changed id is caught by the MAC
        // and not merely by the lookup.
        let mut input = &bad[..];
        let r = Responder::new()
            .push(&mut input, |_| Some(b.state()))
            .unwrap();
        let want = match i {
            0..=3 => ResumeError::BadMagic,
            4 => ResumeError::BadVersion(0x12),
            5 => ResumeError::BadType(0x11),
            _ => ResumeError::BadMac,
        };
        assert_eq!(r, Err(want), "byte {i}");
    }
    assert_eq!(b.counter.last(), 0);
    assert!(b.answer(&good).is_ok());
}

#[test]
fn every_ack_byte_is_covered() {
    let (o, b) = pair_sides();
    let ring = ReplayRing::new(16);
    let init = Initiator::new(&o, SID, 7, 0, 0);
    let good = Ack::new(&b.key, &SID, 7, 0).encode();
    let check = |bytes: &[u8]| {
        let mut i = Initiator::new(&o, SID, 7, 0, 0);
        let mut input = bytes;
        i.push(&mut input, &ring).unwrap()
    };
    assert_eq!(check(&good), Ok(Resend { from: 0, len: 0 }));
    for i in 0..ACK_LEN {
        let mut bad = good;
        bad[i] ^= 0x10;
        let want = match i {
            0..=3 => ResumeError::BadMagic,
            4 => ResumeError::BadVersion(0x12),
            5 => ResumeError::BadType(0x12),
            _ => ResumeError::BadMac,
        };
        assert_eq!(check(&bad), Err(want), "byte {i}");
    }
    // An Ack for another counter or stream, or made by ourselves.
    let stale = Msg::Ack(Ack::new(&b.key, &SID, 6, 0));
    assert_eq!(init.check(&stale, &ring), Err(ResumeError::BadMac));
    let other = Msg::Ack(Ack::new(&b.key, &StreamId([0; 16]), 7, 0));
    assert_eq!(init.check(&other, &ring), Err(ResumeError::BadMac));
    let own = Msg::Ack(Ack::new(&o, &SID, 7, 0));
    assert_eq!(init.check(&own, &ring), Err(ResumeError::BadMac));
    let not_ack = Msg::Init(Init::new(&b.key, SID, 7, 0, 0));
    assert_eq!(init.check(&not_ack, &ring), Err(ResumeError::Unexpected));
    assert!(Ack::new(&b.key, &SID, 7, 0).verify(&o, &SID, 7));
}

#[test]
fn initiator_plans_from_the_acked_rx() {
    let (o, b) = pair_sides();
    let mut ring = ReplayRing::new(100);
    ring.push(&[1; 60]);
    ring.trim_to(20);
    let init = Initiator::new(&o, SID, 1, 0, 20);
    let ack = |rx| Msg::Ack(Ack::new(&b.key, &SID, 1, rx));
    assert_eq!(
        init.check(&ack(19), &ring),
        Err(ResumeError::Unresumable {
            peer_rx: 19,
            ring_start: 20
        })
    );
    assert_eq!(
        init.check(&ack(61), &ring),
        Err(ResumeError::PeerAhead {
            peer_rx: 61,
            tx: 60
        })
    );
    assert_eq!(
        init.check(&ack(25), &ring),
        Ok(Resend { from: 25, len: 35 })
    );
}

#[test]
fn plan_edges() {
    let mut ring = ReplayRing::new(10);
    assert_eq!(plan(&ring, 0), Ok(Resend { from: 0, len: 0 }));
    assert_eq!(
        plan(&ring, 1),
        Err(ResumeError::PeerAhead { peer_rx: 1, tx: 0 })
    );
    ring.push(b"0123456789");
    ring.trim_to(10);
    ring.push(b"ab");
    assert_eq!(plan(&ring, 10), Ok(Resend { from: 10, len: 2 }));
    assert_eq!(plan(&ring, 12), Ok(Resend { from: 12, len: 0 }));
    assert_eq!(
        plan(&ring, 9),
        Err(ResumeError::Unresumable {
            peer_rx: 9,
            ring_start: 10
        })
    );
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// 50k near-misses of real handshakes (bit flips, byte changes, cuts,
/// duplications, insertions, random chunking) through `decode`, the
/// `Decoder` and the `Responder`: no panic, the two decoders agree, and
/// nothing is ever consumed past the message.
#[test]
fn mutation_fuzz() {
    let (o, mut b) = pair_sides();
    let seeds: Vec<Vec<u8>> = vec![
        Init::new(&o, SID, 1, 650, 0).encode().to_vec(),
        Ack::new(&b.key, &SID, 1, 3).encode().to_vec(),
        [&Init::new(&o, SID, 9, 700, 0).encode()[..], b"data after"].concat(),
        b"WISP\x01".to_vec(),
        Vec::new(),
    ];
    let mut rng = Rng(0x0bad_5eed_1234_5678);
    let mut accepted = 0;
    for case in 0..50_000 {
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let n = input.len();
            match rng.below(6) {
                0 if n > 0 => {
                    let i = rng.below(n);
                    input[i] ^= 1 << rng.below(8);
                }
                1 if n > 0 => {
                    let i = rng.below(n);
                    input[i] = rng.next() as u8;
                }
                2 if n > 0 => input.truncate(rng.below(n)),
                3 => {
                    let i = rng.below(n + 1);
                    input.insert(i, rng.next() as u8);
                }
                4 if n > 0 => {
                    let i = rng.below(n);
                    let j = i + rng.below(n - i) + 1;
                    let piece = input[i..j].to_vec();
                    input.splice(i..i, piece);
                }
                _ => {}
            }
        }
        let whole = decode(&input);
        if let Ok(Some((_, used))) = &whole {
            assert!(*used <= input.len(), "case {case}");
        }
        // The same bytes in random pieces through a Decoder.
        let mut d = Decoder::new();
        let mut pos = 0;
        let mut piecewise = None;
        while pos < input.len() && piecewise.is_none() {
            let end = (pos + 1 + rng.below(80)).min(input.len());
            let mut chunk = &input[pos..end];
            piecewise = d.push(&mut chunk);
            pos = end - chunk.len();
            if piecewise.is_none() {
                assert!(chunk.is_empty(), "case {case}");
            }
        }
        match (&whole, &piecewise) {
            (Ok(Some((m, used))), Some(Ok(m2))) => {
                assert_eq!(m, m2, "case {case}");
                assert_eq!(*used, pos, "case {case}");
            }
            (Ok(None), None) => {}
            (Err(e), Some(Err(e2))) => assert_eq!(e, e2, "case {case}"),
            other => panic!("case {case}: decode and Decoder disagree: {other:?}"),
        }
        let mut rest = &input[..];
        if let Some(Ok(_)) = Responder::new().push(&mut rest, |id| (*id == SID).then(|| b.state()))
        {
            accepted += 1;
        }
    }
    // Only untouched Inits with a fresh counter pass: the first of each.
    assert!(accepted <= 2, "{accepted} forged handshakes accepted");
}
