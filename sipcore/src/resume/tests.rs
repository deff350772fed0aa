use super::*;
use crate::keys::test_pair;

const SID: StreamId = StreamId([0x5a; 16]);

/// A frozen stream: the ring of what we sent, what we received, and what
/// the old connection still holds for us and saw acknowledged.
struct View {
    ring: ReplayRing,
    rx: u64,
    /// Bytes the old connection's kernel holds for us (drained on demand).
    old_queue: u64,
    acked: Option<u64>,
    delivered: Vec<u8>,
}

impl View {
    fn new(sent: usize, ring_start: u64, rx: u64) -> View {
        let mut ring = ReplayRing::new(1 << 16);
        let data: Vec<u8> = (0..sent).map(|i| i as u8).collect();
        ring.push(&data);
        ring.trim_to(ring_start);
        View {
            ring,
            rx,
            old_queue: 0,
            acked: None,
            delivered: Vec::new(),
        }
    }
}

impl StreamView for View {
    fn rx(&self) -> u64 {
        self.rx
    }
    fn ring(&self) -> &ReplayRing {
        &self.ring
    }
    fn drain_old(&mut self) {
        self.rx += self.old_queue;
        self.old_queue = 0;
    }
    fn acked_on_old(&mut self) -> Option<u64> {
        self.acked
    }
    fn trim(&mut self, to: u64) {
        self.ring.trim_to(to);
    }
    fn deliver(&mut self, bytes: &[u8]) {
        self.delivered.extend_from_slice(bytes);
        self.rx += bytes.len() as u64;
    }
}

/// Everything `ex` wants written now, as one buffer.
fn drain_out(ex: &mut Exchange, ring: Option<&ReplayRing>) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(b) = ex.poll_transmit(ring) {
        let b = b.to_vec();
        ex.transmitted(b.len());
        all.extend(b);
    }
    all
}

struct Pair {
    dialler: Exchange,
    answerer: Exchange,
    dkey: StreamKey,
    akey: StreamKey,
    gate: Gate,
}

fn pair(mode: Resend) -> Pair {
    let (dkey, akey) = test_pair("call@x");
    let mut gate = Gate::default();
    let counter = gate.next_attempt();
    Pair {
        dialler: Exchange::dial(&dkey, SID, counter, [1; 16], mode),
        answerer: Exchange::answer(),
        dkey,
        akey,
        gate: Gate::default(),
    }
}

/// Run the handshake to the answerer's Challenge; returns the Challenge.
fn to_challenge(p: &mut Pair) -> Vec<u8> {
    let init = Msg::Init(p.dialler.init.clone().unwrap()).encode();
    drain_out(&mut p.dialler, None);
    assert_eq!(init.len(), wire::INIT_LEN);
    let mut input = &init[..];
    assert_eq!(p.answerer.input(&mut input, None), Ok(Need::Lookup(SID)));
    p.answerer.found(&p.akey, &p.gate, [2; 16]).unwrap();
    drain_out(&mut p.answerer, None)
}

#[test]
fn a_whole_eager_exchange_is_exact() {
    let mut p = pair(Resend::Eager);
    // Dialler sent 100, the old connection saw 60 acknowledged; it got 50.
    let mut dv = View::new(100, 0, 50);
    dv.acked = Some(60);
    // Answerer has 70 of the dialler's (more than the 60 acknowledged:
    // delivered, the acknowledgement lost), sent 80 of which 50 arrived.
    let mut av = View::new(80, 50, 70);
    let challenge = to_challenge(&mut p);
    assert_eq!(challenge.len(), wire::CHALLENGE_LEN);
    let mut input = &challenge[..];
    assert_eq!(p.dialler.input(&mut input, None), Ok(Need::Freeze));
    p.dialler.frozen(&mut dv).unwrap();
    let proof_and_data = drain_out(&mut p.dialler, Some(&dv.ring));
    assert_eq!(proof_and_data.len(), wire::PROOF_LEN + 40);
    let mut input = &proof_and_data[..];
    assert_eq!(p.answerer.input(&mut input, None), Ok(Need::Commit(1)));
    p.gate.commit(1).unwrap();
    p.answerer.frozen(&mut av).unwrap();
    assert_eq!(p.answerer.input(&mut input, Some(&mut av)), Ok(Need::Input));
    // 70 - 60 = 10 dropped, 30 delivered: bytes 70..100.
    assert_eq!(av.delivered, (70..100).map(|i| i as u8).collect::<Vec<_>>());
    let ack_and_data = drain_out(&mut p.answerer, Some(&av.ring));
    assert_eq!(ack_and_data.len(), wire::ACK_LEN + 30);
    let mut input = &ack_and_data[..];
    assert_eq!(p.dialler.input(&mut input, Some(&mut dv)), Ok(Need::Input));
    assert_eq!(dv.delivered, (50..80).map(|i| i as u8).collect::<Vec<_>>());
    assert!(p.dialler.is_done(&dv.ring));
    assert!(p.answerer.is_done(&av.ring));
}

#[test]
fn make_before_break_resends_nothing_twice() {
    // The dialler (rx 50 at its freeze) sent 100, of which the answerer
    // had 90 at its own; the answerer sent 80, of which 20 more arrive at
    // the dialler's old socket after its freeze, through the old path.
    let mut p = pair(Resend::Lazy);
    let mut dv = View::new(100, 20, 50);
    let mut av = View::new(80, 50, 90);
    let challenge = to_challenge(&mut p);
    let mut input = &challenge[..];
    assert_eq!(p.dialler.input(&mut input, None), Ok(Need::Freeze));
    p.dialler.frozen(&mut dv).unwrap();
    let proof = drain_out(&mut p.dialler, Some(&dv.ring));
    assert_eq!(proof.len(), wire::PROOF_LEN, "nothing behind a lazy proof");
    let mut input = &proof[..];
    assert_eq!(p.answerer.input(&mut input, None), Ok(Need::Commit(1)));
    p.gate.commit(1).unwrap();
    p.answerer.frozen(&mut av).unwrap();
    let ack = drain_out(&mut p.answerer, Some(&av.ring));
    assert_eq!(ack.len(), wire::ACK_LEN, "nothing behind a lazy Ack");
    dv.old_queue = 20;
    let mut input = &ack[..];
    p.dialler.input(&mut input, Some(&mut dv)).unwrap();
    assert_eq!(dv.rx, 70, "drained the old path on the Ack");
    // Resume{70}, then the dialler's own bytes from the answerer's rx.
    let out = drain_out(&mut p.dialler, Some(&dv.ring));
    assert_eq!(out.len(), wire::RESUME_LEN + 10);
    assert_eq!(
        &out[wire::RESUME_LEN..],
        &(90..100).map(|i| i as u8).collect::<Vec<_>>()[..]
    );
    let mut input = &out[..];
    p.answerer.input(&mut input, Some(&mut av)).unwrap();
    assert_eq!(av.rx, 100);
    // The answerer resends from 70: only what the old path did not bring.
    let back = drain_out(&mut p.answerer, Some(&av.ring));
    assert_eq!(back, (70..80).map(|i| i as u8).collect::<Vec<_>>());
    assert!(p.answerer.is_done(&av.ring));
    let mut input = &back[..];
    p.dialler.input(&mut input, Some(&mut dv)).unwrap();
    assert_eq!(dv.rx, 80);
    assert!(p.dialler.is_done(&dv.ring));
}

#[test]
fn the_answerer_resends_from_its_ring_start_and_the_dialler_drains_to_it() {
    // After the dialler's freeze (rx 50) its kernel acknowledged 15 more,
    // and the answerer's ring dropped them.
    let mut p = pair(Resend::Eager);
    let mut dv = View::new(10, 0, 50);
    dv.acked = Some(10);
    let mut av = View::new(80, 65, 10);
    let challenge = to_challenge(&mut p);
    let mut input = &challenge[..];
    p.dialler.input(&mut input, None).unwrap();
    p.dialler.frozen(&mut dv).unwrap();
    let proof = drain_out(&mut p.dialler, Some(&dv.ring));
    let mut input = &proof[..];
    p.answerer.input(&mut input, None).unwrap();
    p.gate.commit(1).unwrap();
    p.answerer.frozen(&mut av).unwrap();
    let ack = drain_out(&mut p.answerer, Some(&av.ring));
    assert_eq!(ack.len(), wire::ACK_LEN + 15);
    // The 15 wait in the dialler's old socket.
    dv.old_queue = 15;
    let mut input = &ack[..];
    p.dialler.input(&mut input, Some(&mut dv)).unwrap();
    assert_eq!(dv.rx, 80);
    assert_eq!(dv.delivered, (65..80).map(|i| i as u8).collect::<Vec<_>>());
    // Without them the Ack is a gap, never papered over.
    let mut p = pair(Resend::Eager);
    let mut dv = View::new(10, 0, 50);
    let challenge = to_challenge(&mut p);
    let mut input = &challenge[..];
    p.dialler.input(&mut input, None).unwrap();
    p.dialler.frozen(&mut dv).unwrap();
    let proof = drain_out(&mut p.dialler, Some(&dv.ring));
    let mut input = &proof[..];
    p.answerer.input(&mut input, None).unwrap();
    p.gate.commit(1).unwrap();
    let mut av = View::new(80, 65, 10);
    p.answerer.frozen(&mut av).unwrap();
    let ack = drain_out(&mut p.answerer, Some(&av.ring));
    let mut input = &ack[..];
    assert_eq!(
        p.dialler.input(&mut input, Some(&mut dv)),
        Err(ResumeError::Gap { from: 65, rx: 50 })
    );
}

#[test]
fn a_copied_init_is_worthless_on_another_connection() {
    let mut p = pair(Resend::Eager);
    let init = drain_out(&mut p.dialler, None);
    // The attacker's connection: same Init, another Challenge nonce.
    let mut stolen = Exchange::answer();
    let mut input = &init[..];
    assert_eq!(stolen.input(&mut input, None), Ok(Need::Lookup(SID)));
    stolen.found(&p.akey, &p.gate, [9; 16]).unwrap();
    // The genuine connection's Challenge and the dialler's Proof for it.
    let challenge = to_challenge(&mut p);
    let mut input = &challenge[..];
    p.dialler.input(&mut input, None).unwrap();
    let mut dv = View::new(10, 0, 0);
    p.dialler.frozen(&mut dv).unwrap();
    let proof = drain_out(&mut p.dialler, Some(&dv.ring));
    // Replayed on the attacker's connection, the Proof does not verify
    // (it covers the other nonce): no commit, no freeze, nothing read.
    let mut input = &proof[..];
    assert_eq!(stolen.input(&mut input, None), Err(ResumeError::BadMac));
    // The genuine one takes the number.
    let mut input = &proof[..];
    assert_eq!(p.answerer.input(&mut input, None), Ok(Need::Commit(1)));
    assert_eq!(p.gate.commit(1), Ok(()));
    assert_eq!(
        p.gate.commit(1),
        Err(ResumeError::StaleCounter {
            counter: 1,
            last: 1
        })
    );
}

#[test]
fn an_init_under_the_wrong_key_or_reflected_is_refused() {
    let mut p = pair(Resend::Eager);
    let init = drain_out(&mut p.dialler, None);
    // Reflected: the dialler's own key checks it as the peer's.
    let mut back = Exchange::answer();
    let mut input = &init[..];
    back.input(&mut input, None).unwrap();
    assert_eq!(
        back.found(&p.dkey, &p.gate, [3; 16]),
        Err(ResumeError::BadMac)
    );
    // Any field altered.
    for i in 6..wire::INIT_LEN {
        let mut bad = init.clone();
        bad[i] ^= 1;
        let mut ex = Exchange::answer();
        let mut input = &bad[..];
        if let Ok(Need::Lookup(_)) = ex.input(&mut input, None) {
            assert_eq!(
                ex.found(&p.akey, &p.gate, [3; 16]),
                Err(ResumeError::BadMac)
            );
        }
    }
}

#[test]
fn a_challenge_not_made_with_the_key_freezes_nothing() {
    let mut p = pair(Resend::Eager);
    let mut challenge = to_challenge(&mut p);
    challenge[10] ^= 0x40;
    let mut input = &challenge[..];
    assert_eq!(p.dialler.input(&mut input, None), Err(ResumeError::BadMac));
    assert!(!p.dialler.holds_stream());
}

#[test]
fn stale_counters_get_no_challenge() {
    let mut p = pair(Resend::Eager);
    p.gate.commit(1).unwrap();
    let init = drain_out(&mut p.dialler, None);
    let mut input = &init[..];
    p.answerer.input(&mut input, None).unwrap();
    assert_eq!(
        p.answerer.found(&p.akey, &p.gate, [2; 16]),
        Err(ResumeError::StaleCounter {
            counter: 1,
            last: 1
        })
    );
    assert_eq!(p.answerer.poll_transmit(None), None);
}

#[test]
fn proof_claims_beyond_what_was_sent_or_below_the_ring_are_refused() {
    let mut p = pair(Resend::Eager);
    let challenge = to_challenge(&mut p);
    let mut input = &challenge[..];
    p.dialler.input(&mut input, None).unwrap();
    // The dialler claims 200 received; the answerer only sent 80.
    let mut dv = View::new(0, 0, 200);
    p.dialler.frozen(&mut dv).unwrap();
    let proof = drain_out(&mut p.dialler, Some(&dv.ring));
    let mut input = &proof[..];
    p.answerer.input(&mut input, None).unwrap();
    p.gate.commit(1).unwrap();
    let mut av = View::new(80, 0, 0);
    assert_eq!(
        p.answerer.frozen(&mut av),
        Err(ResumeError::PeerAhead {
            peer_rx: 200,
            tx: 80
        })
    );
    // A `from` above what the answerer received is a hole.
    assert_eq!(skip(30, 20), Err(ResumeError::Gap { from: 30, rx: 20 }));
    assert_eq!(skip(LAZY, 20), Ok(0));
}

#[test]
fn messages_out_of_their_place_are_refused() {
    let mut p = pair(Resend::Eager);
    let init = drain_out(&mut p.dialler, None);
    // An Init sent to a dialler.
    let mut input = &init[..];
    assert_eq!(
        p.dialler.input(&mut input, None),
        Err(ResumeError::Unexpected)
    );
    // Garbage to an answerer: refused at the first byte.
    let mut ex = Exchange::answer();
    let mut input = &b"GET / HTTP/1.1\r\n"[..];
    assert_eq!(
        ex.input(&mut input, None),
        Err(ResumeError::Wire(WireError::BadMagic))
    );
    assert_eq!(
        ex.input(&mut input, None),
        Err(ResumeError::Wire(WireError::BadMagic))
    );
}

#[test]
fn the_gate_gives_way_only_to_proven_attempts() {
    let mut g = Gate::default();
    assert!(g.is_fresh(1));
    g.commit(3).unwrap();
    assert!(!g.is_fresh(3) && !g.is_fresh(2) && g.is_fresh(4));
    assert!(!g.superseded(3));
    g.proven(5);
    assert!(g.superseded(3) && !g.superseded(5));
    assert_eq!(g.next_attempt(), 1);
    assert_eq!(g.next_attempt(), 2);
}

#[test]
fn decoding_takes_exactly_one_message_in_any_pieces() {
    let mut p = pair(Resend::Eager);
    let mut bytes = drain_out(&mut p.dialler, None);
    bytes.extend_from_slice(b"stream");
    for cut in 0..bytes.len() {
        let mut d = wire::Decoder::default();
        let (a, b) = bytes.split_at(cut);
        let mut ia = a;
        let first = d.push(&mut ia);
        let mut ib = b;
        let msg = first.or_else(|| d.push(&mut ib)).unwrap().unwrap();
        assert!(matches!(msg, wire::Msg::Init(_)));
        let rest: Vec<u8> = ia.iter().chain(ib.iter()).copied().collect();
        assert_eq!(rest, b"stream");
    }
}

/// Random and mutated bytes, in random pieces, at both roles: never a
/// panic, and never a Commit or a Freeze without the key.
#[test]
fn fuzzed_input_never_panics_nor_gets_past_the_macs() {
    let iters: u64 = std::env::var("WISP_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let (dkey, akey) = test_pair("fuzz@x");
    let mut gate = Gate::default();
    let real_init = Msg::Init(Init::new(dkey.resume_out(), SID, 1, [4; 16])).encode();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut challenged = 0u64;
    for _ in 0..iters {
        // A genuine Init, mutated, or noise behind the magic.
        let mut bytes = if next() % 2 == 0 {
            real_init.clone()
        } else {
            let mut b = b"WISP\x03".to_vec();
            b.push((next() % 6) as u8);
            b
        };
        let extra = (next() % 120) as usize;
        bytes.extend((0..extra).map(|_| next() as u8));
        for _ in 0..(next() % 4) {
            let n = bytes.len();
            let at = (next() as usize) % n;
            bytes[at] ^= 1 << (next() % 8);
        }
        for role in 0..2 {
            let mut ex = if role == 0 {
                Exchange::answer()
            } else {
                Exchange::dial(&dkey, SID, 1, [4; 16], Resend::Eager)
            };
            let mut pos = 0;
            'feed: while pos < bytes.len() {
                let end = (pos + 1 + (next() % 40) as usize).min(bytes.len());
                let mut input = &bytes[pos..end];
                loop {
                    let r = ex.input(&mut input, None);
                    pos = end - input.len();
                    match r {
                        Ok(Need::Lookup(_)) => {
                            if ex.found(&akey, &gate, [5; 16]).is_err() {
                                break 'feed;
                            }
                            challenged += 1;
                        }
                        Ok(Need::Commit(_)) | Ok(Need::Freeze) => {
                            panic!("got past the MACs without the key: {bytes:?}")
                        }
                        Ok(Need::Input) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }
        gate = Gate::default();
    }
    // The genuine Inits that survived mutation were challenged (the loop
    // reached the machine's later states).
    assert!(challenged > iters / 10, "only {challenged} challenged");
}

#[test]
fn a_cursor_drops_what_arrived_elsewhere_and_refuses_a_hole() {
    // The connection's next byte is 10; the stream has 14.
    let mut c = Cursor { next: 10 };
    assert_eq!(c.behind(14), 4);
    assert_eq!(c.take(14, b"abcdefgh"), Ok(&b"efgh"[..]));
    assert_eq!(c.next, 18);
    assert_eq!(c.take(18, b"ij"), Ok(&b"ij"[..]));
    // All of it old.
    let mut c = Cursor { next: 0 };
    assert_eq!(c.take(100, b"xyz"), Ok(&b""[..]));
    // Ahead of the stream: bytes between were never seen.
    let mut c = Cursor { next: 20 };
    assert_eq!(c.take(18, b"k"), Err(ResumeError::Gap { from: 20, rx: 18 }));
}

#[test]
fn admission_keeps_every_key_its_share() {
    let b = Bounds { per_key: 2, max: 4 };
    assert_eq!(admit::<u8>(&[], &1, b), Admit::Yes);
    // Its own key at its share: its own oldest goes.
    assert_eq!(admit(&[7, 1, 7], &7, b), Admit::Evict(0));
    // Full: the oldest of the key holding the most goes, not the newcomer's.
    assert_eq!(admit(&[1, 2, 2, 3], &4, b), Admit::Evict(1));
    // A flood from one key cannot push out another key's single entry.
    let mut waiting = vec![9u8];
    for _ in 0..100 {
        match admit(&waiting, &5, b) {
            Admit::Yes => waiting.push(5),
            Admit::Evict(k) => {
                assert_ne!(waiting[k], 9, "the genuine one was evicted");
                waiting.remove(k);
                waiting.push(5);
            }
        }
    }
    assert!(waiting.contains(&9));
}

#[test]
fn both_ends_decide_contention_alike() {
    let (x, y) = ([1u8; 16], [2u8; 16]);
    // Not yet frozen: ours gives way, whatever the nonces.
    assert_eq!(contention(false, &x, &y), Contention::OursYields);
    assert_eq!(contention(false, &y, &x), Contention::OursYields);
    // Both frozen: exactly one side refuses the other's, the other waits.
    assert_eq!(contention(true, &x, &y), Contention::TheirsRefused);
    assert_eq!(contention(true, &y, &x), Contention::Wait);
}
