//! The wisp session protocol on top of SDP offer/answer: what a caller
//! offers for a connect(), how a callee decides, and what each outcome
//! means to the program that called connect().
//!
//! Pure functions: the preload library's SIP thread calls them, unit tests
//! walk every branch.

use crate::sdp::{Channel, ChannelProto, ConnectionAttr, SdpError, SessionDesc, Setup};
use std::net::{IpAddr, SocketAddr};

/// The offer for a new stream: we dial (`a=setup:active`) from `local` to
/// the program's `wanted_port` at the callee.
pub fn offer(proto: ChannelProto, local: SocketAddr, wanted_port: u16, session_id: u64) -> Vec<u8> {
    let mut ch = Channel::new(proto, local, Setup::Active, ConnectionAttr::New);
    ch.wanted_port = Some(wanted_port);
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
    let mut mine = Channel::new(
        ch.proto,
        SocketAddr::new(local_ip, port),
        crate::sdp::answer_setup(ch.setup),
        ConnectionAttr::New,
    );
    mine.wanted_port = Some(port);
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
    })
}

/// The callee's data address from its answer.
pub fn answered_addr(answer: &[u8]) -> Result<SocketAddr, String> {
    let desc = SessionDesc::parse(answer).map_err(|e| format!("unreadable answer: {e}"))?;
    let ch = desc.channels.first().ok_or("answer has no wisp channel")?;
    if ch.addr.port() == 0 {
        return Err("answer refuses the channel (port 0)".into());
    }
    Ok(ch.addr)
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
}
