//! A stream moved a thousand times, through the public API alone, the way
//! the preload library will drive it: key agreement in the first offer and
//! answer, random traffic both ways, and at each move a freeze with the
//! bytes in flight lost, a re-INVITE checked by the peer, the resume
//! handshake carried over a fresh "connection" in random pieces, and each
//! side resending from the other's rx. After every move, what each side's
//! program has read must be exactly what the other's wrote: no byte lost,
//! repeated or reordered.
//!
//! `WISP_SIM_MOVES` and `WISP_SIM_SEED` override the defaults.

use sipcore::ids::StreamId;
use sipcore::keys::{derive, KeyShare, MoveCounter, StreamKey};
use sipcore::mobility::{check_move, check_move_answer, move_answer, move_offer, Move};
use sipcore::resume::{Initiator, Resend, Responder, StreamState};
use sipcore::ring::ReplayRing;
use sipcore::sdp::{answer_setup, ChannelProto, Setup};
use sipcore::session::{answer_mobile, answered_mobile, offer_mobile, Mobility};
use std::collections::VecDeque;
use std::net::SocketAddr;

const CALL: &str = "sim-7d1f@mobile.example";

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

/// One end of the stream.
struct Host {
    name: &'static str,
    key: StreamKey,
    addr: SocketAddr,
    /// Sending side: the replay ring, everything the program managed to
    /// write (the truth the peer must read), and how far the old
    /// connection got: `sent` onto the wire, `acked` by TCP.
    ring: ReplayRing,
    written: Vec<u8>,
    sent: u64,
    acked: u64,
    /// Receiving side: what reached our kernel and waits there, and what
    /// the program has read (its length is our rx).
    kernel: VecDeque<u8>,
    read: Vec<u8>,
    /// Our move numbers, and the peer's as we have accepted them.
    moves_sent: u64,
    peer_moves: MoveCounter,
    /// Our resume Init numbers, and the peer's as we have accepted them.
    inits_sent: u64,
    peer_inits: MoveCounter,
}

impl Host {
    fn new(name: &'static str, key: StreamKey, addr: &str, cap: usize) -> Host {
        Host {
            name,
            key,
            addr: addr.parse().unwrap(),
            ring: ReplayRing::new(cap),
            written: Vec::new(),
            sent: 0,
            acked: 0,
            kernel: VecDeque::new(),
            read: Vec::new(),
            moves_sent: 0,
            peer_moves: MoveCounter::new(),
            inits_sent: 0,
            peer_inits: MoveCounter::new(),
        }
    }

    fn rx(&self) -> u64 {
        self.read.len() as u64
    }

    /// The program writes what fits in the ring (a short write otherwise).
    fn write(&mut self, rng: &mut Rng) {
        let n = rng.below(300);
        let data: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        let took = self.ring.push(&data);
        self.written.extend_from_slice(&data[..took]);
    }

    fn drain(&mut self) {
        self.read.extend(self.kernel.drain(..));
    }
}

/// The old connection, one direction: bytes sent and not yet arrived.
#[derive(Default)]
struct Wire(VecDeque<u8>);

/// One random step of ordinary traffic from `s` to `r` over `wire`.
fn traffic(rng: &mut Rng, s: &mut Host, r: &mut Host, wire: &mut Wire) {
    match rng.below(6) {
        0 | 1 => s.write(rng),
        2 => {
            // The kernel sends some of what the ring holds beyond `sent`.
            let (a, b) = s.ring.slice_from(s.sent).unwrap();
            let n = rng.below(a.len() + b.len() + 1);
            let mut rest = n;
            for part in [a, b] {
                let k = rest.min(part.len());
                wire.0.extend(&part[..k]);
                rest -= k;
            }
            s.sent += n as u64;
        }
        3 => {
            let n = rng.below(wire.0.len() + 1);
            r.kernel.extend(wire.0.drain(..n));
        }
        4 => {
            // TCP acknowledges some of what reached the peer's kernel.
            let arrived = s.sent - wire.0.len() as u64;
            if arrived > s.acked {
                s.acked += rng.below((arrived - s.acked) as usize + 1) as u64;
                s.ring.trim_to(s.acked);
            }
        }
        _ => {
            let n = rng.below(r.kernel.len() + 1);
            r.read.extend(r.kernel.drain(..n));
        }
    }
    if rng.below(50) == 0 {
        let cap = s.ring.capacity();
        s.ring.grow_to(cap + rng.below(256));
    }
}

/// Feed `bytes` to `f` in random pieces; `f` takes what it wants from the
/// front of each piece and the remainder is handed to `rest`.
fn in_pieces(
    rng: &mut Rng,
    bytes: &[u8],
    mut f: impl FnMut(&mut &[u8]) -> bool,
    rest: &mut Vec<u8>,
) {
    let mut pos = 0;
    let mut done = false;
    while pos < bytes.len() {
        let end = (pos + 1 + rng.below(64)).min(bytes.len());
        let mut piece = &bytes[pos..end];
        if !done {
            done = f(&mut piece);
        }
        rest.extend_from_slice(piece);
        pos = end;
    }
    assert!(done, "handshake message never completed");
}

fn resend_bytes(h: &Host, plan: Resend) -> Vec<u8> {
    let (a, b) = h.ring.slice_from(plan.from).unwrap();
    let out = [a, b].concat();
    assert_eq!(out.len() as u64, plan.len);
    out
}

/// One move: `mover` changes address, `init` opens the new connection.
fn do_move(rng: &mut Rng, hosts: &mut [Host; 2], sid: StreamId, mover: usize, init: usize) {
    let (left, right) = hosts.split_at_mut(1);
    let (a, b) = (&mut left[0], &mut right[0]);
    let (m, peer) = if mover == 0 {
        (&mut *a, &mut *b)
    } else {
        (&mut *b, &mut *a)
    };

    // The mover's program may keep writing while the move is under way.
    for _ in 0..rng.below(3) {
        m.write(rng);
    }

    // re-INVITE with the new address, checked by the peer.
    m.moves_sent += 1;
    m.addr = SocketAddr::new(
        format!(
            "10.{}.{}.{}",
            rng.below(250),
            rng.below(250),
            1 + rng.below(250)
        )
        .parse()
        .unwrap(),
        1024 + rng.below(60000) as u16,
    );
    let offer = Move {
        stream: sid,
        proto: ChannelProto::Tcp,
        addr: m.addr,
        setup: Setup::ActPass,
        counter: m.moves_sent,
        rx: m.rx(),
    };
    let body = move_offer(&offer, &m.key, CALL, 1, 1 + m.moves_sent);
    let believed = check_move(&body, CALL, &peer.key, &mut peer.peer_moves, &sid).unwrap();
    assert_eq!(believed, offer);
    let reply = Move {
        addr: peer.addr,
        setup: answer_setup(offer.setup),
        rx: peer.rx(),
        ..offer.clone()
    };
    let answer = move_answer(&reply, 2, 1 + m.moves_sent);
    assert_eq!(
        check_move_answer(&answer, offer.counter, &sid).unwrap(),
        reply
    );

    // The new connection: Init one way, Ack and the responder's resend the
    // other, then the initiator's resend.
    let (i, r) = if init == 0 { (a, b) } else { (b, a) };
    i.inits_sent += 1;
    // The initiator resends everything its ring holds right behind the
    // Init; the responder drops what it already has.
    let from = i.ring.start();
    let eager = resend_bytes(
        i,
        Resend {
            from,
            len: i.ring.tx() - from,
        },
    );
    let mut initiator = Initiator::new(&i.key, sid, i.inits_sent, i.rx(), from);
    let mut responder = Responder::new();
    let mut accepted = None;
    let mut after_init = Vec::new();
    in_pieces(
        rng,
        &initiator.init(),
        |piece| {
            let got = responder.push(piece, |id| {
                (*id == sid).then_some(StreamState {
                    key: &r.key,
                    counter: &mut r.peer_inits,
                    ring: &r.ring,
                    rx: r.read.len() as u64,
                })
            });
            match got {
                Some(res) => {
                    accepted = Some(res.unwrap());
                    true
                }
                None => false,
            }
        },
        &mut after_init,
    );
    assert!(after_init.is_empty());
    let accepted = accepted.unwrap();
    assert_eq!(accepted.resend.from, i.rx());
    let r_rx = r.rx();
    assert_eq!(accepted.skip, r_rx - from);
    let mut to_initiator = accepted.ack.to_vec();
    to_initiator.extend(resend_bytes(r, accepted.resend));
    let mut plan = None;
    let mut data = Vec::new();
    in_pieces(
        rng,
        &to_initiator,
        |piece| match initiator.push(piece, &i.ring) {
            Some(res) => {
                plan = Some(res.unwrap());
                true
            }
            None => false,
        },
        &mut data,
    );
    let plan = plan.unwrap();
    assert_eq!(plan.from, r_rx);
    i.read.extend(data);
    r.read.extend(&eager[accepted.skip as usize..]);

    // Both sides are whole again; the new connection is empty.
    for h in [&mut *i, &mut *r] {
        h.sent = h.ring.tx();
    }
}

#[test]
fn thousand_moves_keep_both_streams_exact() {
    let moves: usize = std::env::var("WISP_SIM_MOVES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("WISP_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x51a1_0ff5_eed5_0001);
    let mut rng = Rng(seed | 1);

    // Key agreement through the first offer and answer.
    let (sa, pa) = KeyShare::generate().unwrap();
    let (sb, pb) = KeyShare::generate().unwrap();
    let ours = Mobility {
        key_share: pa,
        stream: StreamId::random(),
    };
    let local: SocketAddr = "10.1.1.2:40000".parse().unwrap();
    let offer = offer_mobile(ChannelProto::Tcp, local, 8080, 1, Some(&ours));
    let acc = answer_mobile(
        &offer,
        "10.2.2.2".parse().unwrap(),
        |_, _| true,
        2,
        Some(&pb),
        |_| false,
    )
    .unwrap();
    let theirs = acc.offered.unwrap();
    let answered = answered_mobile(&acc.answer, Some(&ours)).unwrap();
    let ka = derive(sa, &answered.peer_share.unwrap(), CALL, &pa, &pb).unwrap();
    let kb = derive(sb, &theirs.key_share, CALL, &theirs.key_share, &pb).unwrap();
    let sid = theirs.stream;

    let mut hosts = [
        Host::new("a", ka, "10.1.1.2:40000", 64 + rng.below(2048)),
        Host::new("b", kb, "10.2.2.2:8080", 64 + rng.below(2048)),
    ];
    let mut wires = [Wire::default(), Wire::default()];
    let mut lost = 0u64;
    for n in 0..moves {
        for _ in 0..rng.below(40) {
            let from = rng.below(2);
            let (left, right) = hosts.split_at_mut(1);
            let (s, r) = if from == 0 {
                (&mut left[0], &mut right[0])
            } else {
                (&mut right[0], &mut left[0])
            };
            traffic(&mut rng, s, r, &mut wires[from]);
        }
        // Freeze: the bytes in flight are lost with the old connection,
        // each side drains its kernel's receive queue.
        for w in &mut wires {
            lost += w.0.len() as u64;
            w.0.clear();
        }
        for h in &mut hosts {
            h.drain();
        }
        let mover = rng.below(2);
        let init = rng.below(2);
        do_move(&mut rng, &mut hosts, sid, mover, init);
        for (me, peer) in [(0, 1), (1, 0)] {
            assert_eq!(
                hosts[me].read, hosts[peer].written,
                "move {n}: {} did not read exactly what {} wrote",
                hosts[me].name, hosts[peer].name
            );
        }
    }
    assert!(lost > 0, "the simulation never lost bytes in flight");
    let total: usize = hosts.iter().map(|h| h.written.len()).sum();
    assert!(total > 100_000, "too little traffic: {total}");
}
