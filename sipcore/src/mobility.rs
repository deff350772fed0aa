//! A host move as SDP: the re-INVITE offer a host sends when its address
//! changes, the checks its peer makes before believing it, and the answer.
//!
//! Believing a re-INVITE means freezing a working stream and tearing down
//! its connection, so a forged one is at least a denial of service. The
//! offer therefore carries the move's number (`a=wisp-move`) and a MAC
//! under the stream key over Call-ID, number and new address
//! (`a=wisp-mac`, [`StreamKey::move_mac`]); the peer checks the MAC first
//! and the number second, and takes the number only when both pass.
//!
//! What the MAC does not cover is advisory. `a=wisp-rx` lets the peer see
//! early how far we got, but the count both sides resend from is the one
//! in the authenticated resume handshake ([`crate::resume`]), and the
//! answer carries no MAC at all: whoever answers, the new connection is
//! only accepted from, or completed to, a holder of the key. An attacker
//! on the signalling path who alters the answer can stall the move, which
//! dropping it would do as well.

use crate::ids::StreamId;
use crate::keys::{MoveCounter, StreamKey};
use crate::sdp::{Channel, ChannelProto, ConnectionAttr, SdpError, SessionDesc, Setup};
use std::fmt;
use std::net::SocketAddr;

/// One side's half of a move: where its end of the stream now is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub stream: StreamId,
    pub proto: ChannelProto,
    /// The data address, as the SDP prints it (no IPv6 scope).
    pub addr: SocketAddr,
    /// Which side opens the new connection (RFC 4145).
    pub setup: Setup,
    /// The move's number. In an offer it must exceed every earlier one
    /// from this side; an answer echoes the offer's.
    pub counter: u64,
    /// Stream bytes this side has received (advisory, see module docs).
    pub rx: u64,
}

/// Why a re-INVITE or its answer is not believed. The stream goes on as it
/// was; the reason is for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveRefused {
    Unreadable(SdpError),
    /// No channel in the body names our stream.
    NoSuchStream,
    /// A move attribute we need is absent (a re-INVITE without
    /// `a=wisp-move` is a session refresh, not a move).
    Missing(&'static str),
    /// The MAC does not verify: made with another key, or the Call-ID,
    /// counter, address or port was altered after it was made.
    BadMac,
    /// A move number at or below one already taken: a replay.
    Replayed {
        counter: u64,
        last: u64,
    },
    /// An answer that echoes another move's number.
    WrongCounter {
        offered: u64,
        answered: u64,
    },
}

impl MoveRefused {
    /// The SIP status to refuse the re-INVITE with: 403 when it is not
    /// from the key holder or is replayed, 488 when it is no move we can
    /// read.
    pub fn status(&self) -> u16 {
        match self {
            MoveRefused::BadMac | MoveRefused::Replayed { .. } => 403,
            _ => 488,
        }
    }
}

impl fmt::Display for MoveRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoveRefused::Unreadable(e) => write!(f, "unreadable move SDP: {e}"),
            MoveRefused::NoSuchStream => write!(f, "no channel for this stream"),
            MoveRefused::Missing(a) => write!(f, "move lacks a={a}"),
            MoveRefused::BadMac => write!(
                f,
                "move MAC does not verify (wrong key, or Call-ID, counter, address or port altered)"
            ),
            MoveRefused::Replayed { counter, last } => {
                write!(f, "move {counter} replayed (last accepted {last})")
            }
            MoveRefused::WrongCounter { offered, answered } => {
                write!(f, "answer for move {answered}, we offered move {offered}")
            }
        }
    }
}

impl std::error::Error for MoveRefused {}

fn channel(m: &Move) -> Channel {
    let mut ch = Channel::new(m.proto, m.addr, m.setup, ConnectionAttr::New);
    ch.stream_id = Some(m.stream.to_token());
    ch.move_counter = Some(m.counter);
    ch.rx_bytes = Some(m.rx);
    ch
}

fn body(ch: Channel, session_id: u64, version: u64) -> Vec<u8> {
    SessionDesc {
        session_id,
        version,
        origin_addr: ch.addr.ip(),
        channels: vec![ch],
    }
    .to_bytes()
}

/// The re-INVITE body announcing `m`, signed with our move key. `version`
/// is the dialog's next `o=` version (RFC 3264 §8).
pub fn move_offer(
    m: &Move,
    key: &StreamKey,
    call_id: &str,
    session_id: u64,
    version: u64,
) -> Vec<u8> {
    let mut ch = channel(m);
    ch.move_mac = Some(key.move_mac(call_id, m.counter, m.addr));
    body(ch, session_id, version)
}

/// Find our stream's channel and read its move attributes.
fn read(body: &[u8], stream: &StreamId) -> Result<(Channel, u64, u64), MoveRefused> {
    let desc = SessionDesc::parse(body).map_err(MoveRefused::Unreadable)?;
    let token = stream.to_token();
    let ch = desc
        .channels
        .into_iter()
        .find(|c| c.stream_id.as_deref() == Some(token.as_str()))
        .ok_or(MoveRefused::NoSuchStream)?;
    let counter = ch.move_counter.ok_or(MoveRefused::Missing("wisp-move"))?;
    let rx = ch.rx_bytes.ok_or(MoveRefused::Missing("wisp-rx"))?;
    Ok((ch, counter, rx))
}

/// Believe a re-INVITE only if its MAC verifies under the peer's move key
/// for this dialog's `call_id`, and its number is fresh; then take the
/// number. Returns the peer's new end of the stream.
pub fn check_move(
    body: &[u8],
    call_id: &str,
    key: &StreamKey,
    counter: &mut MoveCounter,
    stream: &StreamId,
) -> Result<Move, MoveRefused> {
    let (ch, n, rx) = read(body, stream)?;
    let mac = ch.move_mac.ok_or(MoveRefused::Missing("wisp-mac"))?;
    if !key.verify_move(call_id, n, ch.addr, &mac) {
        return Err(MoveRefused::BadMac);
    }
    if !counter.accept(n) {
        return Err(MoveRefused::Replayed {
            counter: n,
            last: counter.last(),
        });
    }
    Ok(Move {
        stream: *stream,
        proto: ch.proto,
        addr: ch.addr,
        setup: ch.setup,
        counter: n,
        rx,
    })
}

/// The 200 OK body for a believed move: our end `m` (with the offer's
/// number in `m.counter` and our role per [`crate::sdp::answer_setup`]).
pub fn move_answer(m: &Move, session_id: u64, version: u64) -> Vec<u8> {
    body(channel(m), session_id, version)
}

/// Read the answer to our move offer numbered `offered`.
pub fn check_move_answer(
    body: &[u8],
    offered: u64,
    stream: &StreamId,
) -> Result<Move, MoveRefused> {
    let (ch, n, rx) = read(body, stream)?;
    if n != offered {
        return Err(MoveRefused::WrongCounter {
            offered,
            answered: n,
        });
    }
    Ok(Move {
        stream: *stream,
        proto: ch.proto,
        addr: ch.addr,
        setup: ch.setup,
        counter: n,
        rx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::test_pair;

    const CALL: &str = "a84b4c76e66710@pc33.abcd.com";
    const SID: StreamId = StreamId([0x42; 16]);

    fn moved(addr: &str, counter: u64) -> Move {
        Move {
            stream: SID,
            proto: ChannelProto::Tcp,
            addr: addr.parse().unwrap(),
            setup: Setup::Active,
            counter,
            rx: 123_456,
        }
    }

    #[test]
    fn move_round_trip() {
        let (mobile, fixed) = test_pair(CALL);
        let m = moved("198.51.100.9:40001", 1);
        let offer = move_offer(&m, &mobile, CALL, 77, 2);
        let text = String::from_utf8(offer.clone()).unwrap();
        assert!(text.contains("a=wisp-move:1\r\n"), "{text}");
        assert!(text.contains("a=wisp-mac:"), "{text}");
        assert!(text.contains(&format!("a=wisp-stream:{}\r\n", SID.to_token())));
        assert!(text.contains("a=connection:new\r\n"));
        let mut seen = MoveCounter::new();
        assert_eq!(check_move(&offer, CALL, &fixed, &mut seen, &SID), Ok(m));
        assert_eq!(seen.last(), 1);

        let mine = Move {
            addr: "203.0.113.5:8080".parse().unwrap(),
            setup: crate::sdp::answer_setup(Setup::Active),
            rx: 99,
            ..moved("198.51.100.9:40001", 1)
        };
        let ans = move_answer(&mine, 78, 2);
        assert_eq!(check_move_answer(&ans, 1, &SID), Ok(mine.clone()));
        assert_eq!(
            check_move_answer(&ans, 2, &SID),
            Err(MoveRefused::WrongCounter {
                offered: 2,
                answered: 1
            })
        );
        assert_eq!(
            check_move_answer(&ans, 1, &StreamId([0; 16])),
            Err(MoveRefused::NoSuchStream)
        );
    }

    #[test]
    fn ipv6_move() {
        let (mobile, fixed) = test_pair(CALL);
        let m = moved("[2001:db8:2::9]:40001", 3);
        let offer = move_offer(&m, &mobile, CALL, 77, 2);
        let mut seen = MoveCounter::new();
        assert_eq!(check_move(&offer, CALL, &fixed, &mut seen, &SID), Ok(m));
    }

    fn refused(body: &[u8], call: &str, key: &StreamKey) -> MoveRefused {
        let mut seen = MoveCounter::new();
        let e = check_move(body, call, key, &mut seen, &SID).unwrap_err();
        assert_eq!(seen.last(), 0, "a refused move takes no number");
        e
    }

    #[test]
    fn tampering_is_refused() {
        let (mobile, fixed) = test_pair(CALL);
        let offer = String::from_utf8(move_offer(
            &moved("198.51.100.9:40001", 5),
            &mobile,
            CALL,
            77,
            2,
        ))
        .unwrap();
        let edits = [
            ("c=IN IP4 198.51.100.9", "c=IN IP4 198.51.100.66"),
            ("m=application 40001", "m=application 40002"),
            ("a=wisp-move:5", "a=wisp-move:6"),
            ("a=wisp-move:5", "a=wisp-move:4"),
        ];
        for (from, to) in edits {
            assert!(offer.contains(from), "{from} in {offer}");
            let bad = offer.replace(from, to);
            assert_eq!(
                refused(bad.as_bytes(), CALL, &fixed),
                MoveRefused::BadMac,
                "{from} -> {to}"
            );
        }
        // Another dialog's Call-ID.
        assert_eq!(
            refused(offer.as_bytes(), "other@pc33.abcd.com", &fixed),
            MoveRefused::BadMac
        );
        // Another stream key (a third party's, or our own: reflection).
        let (other, _) = test_pair("x");
        assert_eq!(refused(offer.as_bytes(), CALL, &other), MoveRefused::BadMac);
        assert_eq!(
            refused(offer.as_bytes(), CALL, &mobile),
            MoveRefused::BadMac
        );
        // A changed MAC.
        let mac_at = offer.find("a=wisp-mac:").unwrap() + "a=wisp-mac:".len();
        let mut bad = offer.clone().into_bytes();
        bad[mac_at] = if bad[mac_at] == b'A' { b'B' } else { b'A' };
        assert_eq!(refused(&bad, CALL, &fixed), MoveRefused::BadMac);
        // A changed address family: the same host as IPv4-mapped IPv6.
        let v6 = offer.replace("IN IP4 198.51.100.9", "IN IP6 ::ffff:198.51.100.9");
        assert_eq!(refused(v6.as_bytes(), CALL, &fixed), MoveRefused::BadMac);
    }

    #[test]
    fn replay_is_refused() {
        let (mobile, fixed) = test_pair(CALL);
        let mut seen = MoveCounter::new();
        let first = move_offer(&moved("198.51.100.9:1", 1), &mobile, CALL, 1, 2);
        let second = move_offer(&moved("198.51.100.10:1", 2), &mobile, CALL, 1, 3);
        assert!(check_move(&first, CALL, &fixed, &mut seen, &SID).is_ok());
        assert!(check_move(&second, CALL, &fixed, &mut seen, &SID).is_ok());
        let e = check_move(&first, CALL, &fixed, &mut seen, &SID).unwrap_err();
        assert_eq!(
            e,
            MoveRefused::Replayed {
                counter: 1,
                last: 2
            }
        );
        assert_eq!(e.status(), 403);
        assert!(e.to_string().contains("replayed"));
        // A forged move with a huge number burns nothing.
        let forged = move_offer(&moved("6.6.6.6:1", u64::MAX), &fixed, CALL, 1, 4);
        assert_eq!(
            check_move(&forged, CALL, &fixed, &mut seen, &SID),
            Err(MoveRefused::BadMac)
        );
        assert_eq!(seen.last(), 2);
        let third = move_offer(&moved("198.51.100.11:1", 3), &mobile, CALL, 1, 5);
        assert!(check_move(&third, CALL, &fixed, &mut seen, &SID).is_ok());
    }

    #[test]
    fn unreadable_or_incomplete_moves() {
        let (mobile, fixed) = test_pair(CALL);
        let offer = String::from_utf8(move_offer(
            &moved("198.51.100.9:40001", 5),
            &mobile,
            CALL,
            77,
            2,
        ))
        .unwrap();
        let e = refused(b"not sdp", CALL, &fixed);
        assert!(matches!(e, MoveRefused::Unreadable(_)));
        assert_eq!(e.status(), 488);
        let cut = |attr: &str| {
            offer
                .lines()
                .filter(|l| !l.starts_with(attr))
                .map(|l| format!("{l}\r\n"))
                .collect::<String>()
        };
        assert_eq!(
            refused(cut("a=wisp-mac").as_bytes(), CALL, &fixed),
            MoveRefused::Missing("wisp-mac")
        );
        assert_eq!(
            refused(cut("a=wisp-move").as_bytes(), CALL, &fixed),
            MoveRefused::Missing("wisp-move")
        );
        assert_eq!(
            refused(cut("a=wisp-rx").as_bytes(), CALL, &fixed),
            MoveRefused::Missing("wisp-rx")
        );
        assert_eq!(
            refused(cut("a=wisp-stream").as_bytes(), CALL, &fixed),
            MoveRefused::NoSuchStream
        );
        let other = offer.replace(&SID.to_token(), &StreamId([1; 16]).to_token());
        assert_eq!(
            refused(other.as_bytes(), CALL, &fixed),
            MoveRefused::NoSuchStream
        );
        for e in [
            MoveRefused::NoSuchStream,
            MoveRefused::Missing("wisp-mac"),
            MoveRefused::BadMac,
            MoveRefused::WrongCounter {
                offered: 1,
                answered: 2,
            },
        ] {
            assert!(!e.to_string().is_empty());
        }
    }
}
