//! Dialog state (RFC 3261 §12): the identifiers, sequence numbers, remote
//! target and route set that make in-dialog requests find their peer.

use crate::endpoint::{host_port, Endpoint};
use crate::msg::{self, Message, Method, Name, SipUri};
use crate::transaction::{Peer, Transport};
use std::net::SocketAddr;

/// Call-ID plus both tags: what names a dialog on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogState {
    /// The INVITE got a 2xx (or we sent one) but the ACK exchange is not over.
    Confirmed,
    Terminated,
}

#[derive(Clone, Debug)]
pub struct Dialog {
    pub id: DialogId,
    pub state: DialogState,
    /// We sent the INVITE that made this dialog.
    pub we_called: bool,
    pub local_uri: String,
    pub remote_uri: String,
    pub local_seq: u32,
    pub remote_seq: Option<u32>,
    /// The peer's Contact URI: where in-dialog requests go (target refresh
    /// by re-INVITE moves it, which is exactly what a host move does).
    pub remote_target: String,
    /// Record-Route URIs in the order our requests must carry them.
    pub route_set: Vec<String>,
}

impl Dialog {
    /// The UAC side, from our INVITE and its 2xx (§12.1.2).
    pub fn from_uac(invite: &Message, ok: &Message) -> Option<Dialog> {
        let remote_target = contact_uri(ok)?;
        let mut route_set = ok.list(&Name::RECORD_ROUTE);
        route_set.reverse();
        Some(Dialog {
            id: DialogId {
                call_id: invite.call_id().ok()?,
                local_tag: invite.from_tag()?,
                remote_tag: ok.to_tag()?,
            },
            state: DialogState::Confirmed,
            we_called: true,
            local_uri: invite.raw(&Name::FROM)?.to_string(),
            remote_uri: ok.raw(&Name::TO)?.to_string(),
            local_seq: invite.cseq().ok()?.cseq,
            remote_seq: None,
            remote_target,
            route_set,
        })
    }

    /// The UAS side, from the INVITE we answer and our To-tag (§12.1.1).
    pub fn from_uas(invite: &Message, local_tag: &str) -> Option<Dialog> {
        let remote_target = contact_uri(invite)?;
        Some(Dialog {
            id: DialogId {
                call_id: invite.call_id().ok()?,
                local_tag: local_tag.to_string(),
                remote_tag: invite.from_tag()?,
            },
            state: DialogState::Confirmed,
            we_called: false,
            local_uri: format!("{};tag={local_tag}", invite.raw(&Name::TO)?),
            remote_uri: invite.raw(&Name::FROM)?.to_string(),
            local_seq: 0,
            remote_seq: Some(invite.cseq().ok()?.cseq),
            remote_target,
            route_set: invite.list(&Name::RECORD_ROUTE),
        })
    }

    /// An in-dialog request (§12.2.1.1). `local` is our current address, so
    /// a request after a move already carries the new Via.
    pub fn request(
        &mut self,
        method: Method,
        transport: Transport,
        local: SocketAddr,
    ) -> Option<Message> {
        if method != Method::ACK && method != Method::CANCEL {
            self.local_seq += 1;
        }
        let uri = msg::parse_whole::<SipUri>(strip_angle(&self.remote_target))?;
        let mut m = Message::request(method.clone(), uri);
        m.add(Name::VIA, Endpoint::via(transport, local));
        m.add(Name::MAX_FORWARDS, "70");
        m.add(Name::FROM, self.local_uri.clone());
        m.add(Name::TO, self.remote_uri.clone());
        m.add(Name::CALL_ID, self.id.call_id.clone());
        m.add(Name::CSEQ, format!("{} {method}", self.local_seq));
        for r in &self.route_set {
            m.add(Name::ROUTE, r.clone());
        }
        Some(m)
    }

    /// Check and record an in-dialog request's CSeq: a lower one is a stale
    /// retransmission or an attack and gets 500 (§12.2.2).
    pub fn accept_remote_seq(&mut self, req: &Message) -> bool {
        let Ok(cseq) = req.cseq() else { return false };
        if req.method() == Some(&Method::ACK) {
            return true;
        }
        if self.remote_seq.is_some_and(|s| cseq.cseq <= s) {
            return false;
        }
        self.remote_seq = Some(cseq.cseq);
        true
    }

    /// Target refresh (§12.2): a re-INVITE or its 2xx with a new Contact
    /// moves where our next requests go.
    pub fn refresh_target(&mut self, m: &Message) {
        if let Some(t) = contact_uri(m) {
            self.remote_target = t;
        }
    }

    /// Where the next in-dialog request physically goes: the first route
    /// (loose routing) or the remote target.
    pub fn next_hop(&self, default_transport: Transport) -> Option<Peer> {
        let first = self.route_set.first().unwrap_or(&self.remote_target);
        uri_peer(first, default_transport)
    }
}

/// The URI inside the first Contact, without its header params.
pub fn contact_uri(m: &Message) -> Option<String> {
    let (raw, typed) = m.contacts().into_iter().next()?;
    typed?;
    Some(strip_angle(&raw).to_string())
}

/// `<sip:...>;params` → `sip:...`; a bare URI stays as it is.
pub fn strip_angle(v: &str) -> &str {
    match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v.trim(),
    }
}

/// The transport address a SIP URI (or `<URI>` route) names, when its host
/// is a literal; `;transport=tcp` picks TCP.
pub fn uri_peer(uri: &str, default_transport: Transport) -> Option<Peer> {
    let parsed = msg::parse_whole::<SipUri>(strip_angle(uri))?;
    let addr = msg::uri_addr(&parsed)?;
    let transport = parsed
        .uri_params
        .get_val("transport")
        .and_then(|t| Transport::parse(t))
        .unwrap_or(default_transport);
    Some(Peer { transport, addr })
}

/// A Contact value for us at `local`.
pub fn contact_for(user: &str, transport: Transport, local: SocketAddr) -> String {
    let t = match transport {
        Transport::Tcp => ";transport=tcp",
        Transport::Udp => "",
    };
    if user.is_empty() {
        format!("<sip:{}{t}>", host_port(local))
    } else {
        format!("<sip:{user}@{}{t}>", host_port(local))
    }
}
