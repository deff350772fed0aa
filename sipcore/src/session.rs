//! The wisp session protocol on top of SDP offer/answer: what a caller
//! offers for a connect(), how a callee decides, and what each outcome
//! means to the program that called connect().
//!
//! A stream that can move carries [`Mobility`] in both the offer and the
//! answer: each side's X25519 share (`a=wisp-key`) and the stream's id
//! (`a=wisp-stream`, chosen by the offerer, echoed by the answerer). A
//! side that sends none, or gets none back, has an ordinary stream that
//! dies with its address, so a wisp without mobility still interworks.
//!
//! Pure functions: the preload library's SIP thread calls them, unit tests
//! walk every branch.

use crate::ids::StreamId;
use crate::sdp::{Channel, ChannelProto, ConnectionAttr, SdpError, SessionDesc, Setup};
use std::net::{IpAddr, SocketAddr};

/// One side's part in making a stream movable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mobility {
    /// The X25519 public share for [`crate::keys::derive`].
    pub key_share: [u8; 32],
    pub stream: StreamId,
}

impl Mobility {
    /// A stream's key share and id from a channel, if it has both. Half of
    /// them is an error: a peer that sends a key without naming the stream
    /// (or the reverse) is broken, and guessing would tie keys to the
    /// wrong stream.
    fn from_channel(ch: &Channel) -> Result<Option<Mobility>, String> {
        match (&ch.key_share, &ch.stream_id) {
            (None, None) => Ok(None),
            (Some(k), Some(id)) => match StreamId::from_token(id) {
                Some(stream) => Ok(Some(Mobility {
                    key_share: *k,
                    stream,
                })),
                None => Err(format!("a=wisp-stream {id:?} is not a wisp stream id")),
            },
            (Some(_), None) => Err("a=wisp-key without a=wisp-stream".into()),
            (None, Some(_)) => Err("a=wisp-stream without a=wisp-key".into()),
        }
    }

    fn put(&self, ch: &mut Channel) {
        ch.key_share = Some(self.key_share);
        ch.stream_id = Some(self.stream.to_token());
    }
}

/// The offer for a new stream: we dial (`a=setup:active`) from `local` to
/// the program's `wanted_port` at the callee.
pub fn offer(proto: ChannelProto, local: SocketAddr, wanted_port: u16, session_id: u64) -> Vec<u8> {
    offer_mobile(proto, local, wanted_port, session_id, None)
}

/// [`offer`] for a stream that may move: `mobility` is our key share and
/// a fresh [`StreamId`].
pub fn offer_mobile(
    proto: ChannelProto,
    local: SocketAddr,
    wanted_port: u16,
    session_id: u64,
    mobility: Option<&Mobility>,
) -> Vec<u8> {
    let mut ch = Channel::new(proto, local, Setup::Active, ConnectionAttr::New);
    ch.wanted_port = Some(wanted_port);
    if let Some(m) = mobility {
        m.put(&mut ch);
    }
    SessionDesc {
        session_id,
        version: 1,
        origin_addr: local.ip(),
        channels: vec![ch],
    }
    .to_bytes()
}

/// What the callee makes of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The answer body.
    pub answer: Vec<u8>,
    /// Where the caller's connection will come from: how the accepted
    /// socket is tied to this dialog.
    pub caller: SocketAddr,
    pub proto: ChannelProto,
    pub port: u16,
    /// The offerer's key share and the stream id, when both sides made the
    /// stream movable (we answered with our own share).
    pub offered: Option<Mobility>,
}

/// Why an offer is refused, as the SIP status the callee sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: u16,
    pub reason: String,
}

/// Decide on an offer: accept when the program listens on the wanted port
/// (`listening(proto, port)`), answering with our address `local_ip`.
pub fn answer(
    offer: &[u8],
    local_ip: IpAddr,
    listening: impl Fn(ChannelProto, u16) -> bool,
    session_id: u64,
) -> Result<Accepted, Refused> {
    answer_mobile(offer, local_ip, listening, session_id, None, |_| false)
}

/// [`answer`] that makes the stream movable when the offer asks for it:
/// `our_share` is our X25519 share, answered with the offerer's stream id.
/// `stream_in_use` tells whether we already hold a stream by the offered
/// id; such an offer is refused, because resuming connections find their
/// stream by id and two streams under one id would let one peer's offer
/// shadow another's stream.
pub fn answer_mobile(
    offer: &[u8],
    local_ip: IpAddr,
    listening: impl Fn(ChannelProto, u16) -> bool,
    session_id: u64,
    our_share: Option<&[u8; 32]>,
    stream_in_use: impl Fn(&StreamId) -> bool,
) -> Result<Accepted, Refused> {
    let refuse = |reason: String| Refused { code: 488, reason };
    let desc = SessionDesc::parse(offer)
        .map_err(|e: SdpError| refuse(format!("unreadable offer: {e}")))?;
    let ch = desc
        .channels
        .first()
        .ok_or_else(|| refuse("no wisp channel".into()))?;
    let port = ch
        .wanted_port
        .ok_or_else(|| refuse("offer names no port (a=wisp-port)".into()))?;
    if !listening(ch.proto, port) {
        return Err(refuse(format!(
            "nothing listens on {} port {port}",
            ch.proto.as_str()
        )));
    }
    let offered = match our_share {
        Some(_) => Mobility::from_channel(ch).map_err(refuse)?,
        None => None,
    };
    if let Some(m) = &offered {
        if stream_in_use(&m.stream) {
            return Err(refuse(format!("stream id {} already in use", m.stream)));
        }
    }
    let mut mine = Channel::new(
        ch.proto,
        SocketAddr::new(local_ip, port),
        crate::sdp::answer_setup(ch.setup),
        ConnectionAttr::New,
    );
    mine.wanted_port = Some(port);
    if let (Some(theirs), Some(share)) = (&offered, our_share) {
        Mobility {
            key_share: *share,
            stream: theirs.stream,
        }
        .put(&mut mine);
    }
    let answer = SessionDesc {
        session_id,
        version: 1,
        origin_addr: local_ip,
        channels: vec![mine],
    }
    .to_bytes();
    Ok(Accepted {
        answer,
        caller: ch.addr,
        proto: ch.proto,
        port,
        offered,
    })
}

/// The callee's data address from its answer.
pub fn answered_addr(answer: &[u8]) -> Result<SocketAddr, String> {
    answered_mobile(answer, None).map(|a| a.addr)
}

/// What an answer tells the offerer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// The callee's data address.
    pub addr: SocketAddr,
    /// The callee's key share, when it made the stream movable.
    pub peer_share: Option<[u8; 32]>,
}

/// Read an answer to an offer that carried `ours` (or none). The answer
/// must name our stream id if it sends a key share: a share for some other
/// stream must not key this one.
pub fn answered_mobile(answer: &[u8], ours: Option<&Mobility>) -> Result<Answered, String> {
    let desc = SessionDesc::parse(answer).map_err(|e| format!("unreadable answer: {e}"))?;
    let ch = desc.channels.first().ok_or("answer has no wisp channel")?;
    if ch.addr.port() == 0 {
        return Err("answer refuses the channel (port 0)".into());
    }
    let peer_share = match ours {
        None => None,
        Some(ours) => match Mobility::from_channel(ch)? {
            None => None,
            Some(m) if m.stream == ours.stream => Some(m.key_share),
            Some(m) => {
                return Err(format!(
                    "answer names stream {}, we offered {}",
                    m.stream, ours.stream
                ))
            }
        },
    };
    Ok(Answered {
        addr: ch.addr,
        peer_share,
    })
}

/// The errno a program's connect() should see for a failed INVITE: a name
/// nobody answers for, or nothing listening, is a refused connection (what
/// a TCP RST says); silence is a timeout.
pub fn errno_for_status(code: u16) -> i32 {
    match code {
        0 | 408 | 504 => libc_errno::ETIMEDOUT,
        404 | 480 | 486 | 488 | 603 | 604 | 606 => libc_errno::ECONNREFUSED,
        401 | 403 | 407 => libc_errno::EACCES,
        _ => libc_errno::EHOSTUNREACH,
    }
}

/// Linux errno values, so this pure module needs no libc.
pub mod libc_errno {
    pub const EACCES: i32 = 13;
    pub const ECONNREFUSED: i32 = 111;
    pub const EHOSTUNREACH: i32 = 113;
    pub const ETIMEDOUT: i32 = 110;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_answer_round_trip() {
        let local: SocketAddr = "10.1.1.2:40000".parse().unwrap();
        let body = offer(ChannelProto::Tcp, local, 8080, 7);
        let acc = answer(
            &body,
            "10.1.2.2".parse().unwrap(),
            |p, port| p == ChannelProto::Tcp && port == 8080,
            9,
        )
        .unwrap();
        assert_eq!(acc.caller, local);
        assert_eq!(acc.port, 8080);
        assert_eq!(
            answered_addr(&acc.answer).unwrap(),
            "10.1.2.2:8080".parse().unwrap()
        );
        let desc = SessionDesc::parse(&acc.answer).unwrap();
        assert_eq!(desc.channels[0].setup, Setup::Passive);
    }

    #[test]
    fn refusals() {
        let local: SocketAddr = "[fd00::2]:40000".parse().unwrap();
        let body = offer(ChannelProto::Tcp, local, 8080, 7);
        let r = answer(&body, "fd00::3".parse().unwrap(), |_, _| false, 1).unwrap_err();
        assert_eq!(r.code, 488);
        assert!(r.reason.contains("8080"));
        let r = answer(b"v=0\r\n", "fd00::3".parse().unwrap(), |_, _| true, 1).unwrap_err();
        assert_eq!(r.code, 488);
        assert_eq!(errno_for_status(404), libc_errno::ECONNREFUSED);
        assert_eq!(errno_for_status(408), libc_errno::ETIMEDOUT);
        assert_eq!(errno_for_status(500), libc_errno::EHOSTUNREACH);
    }

    use crate::keys::{derive, KeyShare};

    const CALL: &str = "3848276298220188511@atlanta.example.com";

    fn tcp_8080(p: ChannelProto, port: u16) -> bool {
        p == ChannelProto::Tcp && port == 8080
    }

    #[test]
    fn mobile_offer_answer_agree_on_a_key() {
        let local: SocketAddr = "10.1.1.2:40000".parse().unwrap();
        let (sa, pa) = KeyShare::generate().unwrap();
        let (sb, pb) = KeyShare::generate().unwrap();
        let ours = Mobility {
            key_share: pa,
            stream: StreamId::random(),
        };
        let body = offer_mobile(ChannelProto::Tcp, local, 8080, 7, Some(&ours));
        let acc = answer_mobile(
            &body,
            "10.1.2.2".parse().unwrap(),
            tcp_8080,
            9,
            Some(&pb),
            |_| false,
        )
        .unwrap();
        assert_eq!(acc.offered, Some(ours));
        let got = answered_mobile(&acc.answer, Some(&ours)).unwrap();
        assert_eq!(got.addr, "10.1.2.2:8080".parse().unwrap());
        assert_eq!(got.peer_share, Some(pb));
        let ka = derive(sa, &pb, CALL, &pa, &pb).unwrap();
        let kb = derive(sb, &pa, CALL, &pa, &pb).unwrap();
        let at: SocketAddr = "10.9.9.9:1".parse().unwrap();
        assert!(kb.verify_move(CALL, 1, at, &ka.move_mac(CALL, 1, at)));
        // The plain functions still read the mobile bodies.
        assert_eq!(answered_addr(&acc.answer).unwrap(), got.addr);
    }

    #[test]
    fn mobility_is_optional_on_each_side() {
        let local: SocketAddr = "10.1.1.2:40000".parse().unwrap();
        let ip = "10.1.2.2".parse().unwrap();
        let ours = Mobility {
            key_share: [5; 32],
            stream: StreamId([8; 16]),
        };
        // A mobile offer to a plain answerer: an ordinary stream.
        let mobile = offer_mobile(ChannelProto::Tcp, local, 8080, 7, Some(&ours));
        let acc = answer(&mobile, ip, tcp_8080, 9).unwrap();
        assert_eq!(acc.offered, None);
        let text = String::from_utf8(acc.answer.clone()).unwrap();
        assert!(!text.contains("a=wisp-key") && !text.contains("a=wisp-stream"));
        let got = answered_mobile(&acc.answer, Some(&ours)).unwrap();
        assert_eq!(got.peer_share, None);
        // A plain offer to a mobile answerer: no share in the answer.
        let plain = offer(ChannelProto::Tcp, local, 8080, 7);
        let acc = answer_mobile(&plain, ip, tcp_8080, 9, Some(&[6; 32]), |_| false).unwrap();
        assert_eq!(acc.offered, None);
        assert!(!String::from_utf8(acc.answer.clone())
            .unwrap()
            .contains("a=wisp-key"));
        // A share we did not ask for is ignored.
        let acc = answer_mobile(&mobile, ip, tcp_8080, 9, Some(&[6; 32]), |_| false).unwrap();
        assert_eq!(answered_mobile(&acc.answer, None).unwrap().peer_share, None);
    }

    #[test]
    fn mobile_refusals() {
        let local: SocketAddr = "10.1.1.2:40000".parse().unwrap();
        let ip = "10.1.2.2".parse().unwrap();
        let ours = Mobility {
            key_share: [5; 32],
            stream: StreamId([0xab; 16]),
        };
        let body = String::from_utf8(offer_mobile(ChannelProto::Tcp, local, 8080, 7, Some(&ours)))
            .unwrap();
        let try_answer = |b: &str, in_use: bool| {
            answer_mobile(b.as_bytes(), ip, tcp_8080, 9, Some(&[6; 32]), |_| in_use)
        };
        let r = try_answer(&body, true).unwrap_err();
        assert_eq!(r.code, 488);
        assert!(r.reason.contains("in use"), "{}", r.reason);
        let token = ours.stream.to_token();
        let no_stream = body.replace(&format!("a=wisp-stream:{token}\r\n"), "");
        assert!(try_answer(&no_stream, false)
            .unwrap_err()
            .reason
            .contains("without a=wisp-stream"));
        let key_line = body.lines().find(|l| l.starts_with("a=wisp-key")).unwrap();
        let no_key = body.replace(&format!("{key_line}\r\n"), "");
        assert!(try_answer(&no_key, false)
            .unwrap_err()
            .reason
            .contains("without a=wisp-key"));
        let upper = body.replace(&token, &token.to_uppercase());
        assert!(try_answer(&upper, false)
            .unwrap_err()
            .reason
            .contains("not a wisp stream id"));

        // An answer for another stream must not key ours.
        let acc = try_answer(&body, false).unwrap();
        let other = Mobility {
            stream: StreamId([9; 16]),
            ..ours
        };
        let e = answered_mobile(&acc.answer, Some(&other)).unwrap_err();
        assert!(e.contains("names stream"), "{e}");
    }
}
