//! SIP messages: parse from bytes, print to bytes, and the few typed views
//! the rest of sipcore needs.
//!
//! Parsing rests on `ezk-sip-types` (start line, header names including the
//! compact forms, typed header grammars). Header values are kept as the raw
//! text that arrived, so a proxy echoes Via, Contact and Record-Route exactly
//! as their author wrote them, and a value we cannot type never blocks a
//! message we only need to forward.

use bytes::Bytes;
use ezk_sip_types::header::typed::{AuthChallenge, AuthResponse};
use ezk_sip_types::header::HeaderParse;
use ezk_sip_types::msg::{MessageLine, PullParser, RequestLine, StatusLine};
use ezk_sip_types::parse::Parse;
use ezk_sip_types::print::AppendCtx;
use std::any::TypeId;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

pub use ezk_sip_types::header::typed::{CSeq, CallID, Contact, FromTo, Via};
pub use ezk_sip_types::host::{Host, HostPort};
pub use ezk_sip_types::uri::{NameAddr, SipUri};
pub use ezk_sip_types::{CodeKind, Headers, Method, Name, StatusCode};

/// Largest message we accept, head and body. SIP over UDP is limited to
/// 64 KiB by the datagram anyway; on TCP a peer that sends more is broken or
/// hostile, and buffering without bound would let it exhaust memory.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Why bytes were not a SIP message. Every variant maps to a 400 (or to
/// silently dropping a malformed response, as RFC 3261 §18.1.2 asks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    TooLarge(usize),
    NotUtf8,
    Incomplete,
    BadStartLine(String),
    BadHeaderLine(String),
    BadHeader(&'static str, String),
    MissingHeader(&'static str),
    BadContentLength(String),
    BodyTruncated { expected: usize, got: usize },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooLarge(n) => write!(f, "message of {n} bytes exceeds {MAX_MESSAGE}"),
            ParseError::NotUtf8 => write!(f, "message head is not UTF-8"),
            ParseError::Incomplete => write!(f, "message head is incomplete"),
            ParseError::BadStartLine(l) => write!(f, "bad start line {l:?}"),
            ParseError::BadHeaderLine(l) => write!(f, "bad header line {l:?}"),
            ParseError::BadHeader(n, v) => write!(f, "bad {n} header {v:?}"),
            ParseError::MissingHeader(n) => write!(f, "missing {n} header"),
            ParseError::BadContentLength(v) => write!(f, "bad Content-Length {v:?}"),
            ParseError::BodyTruncated { expected, got } => {
                write!(f, "body has {got} bytes, Content-Length says {expected}")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// One SIP request or response.
#[derive(Debug, Clone)]
pub struct Message {
    pub line: MessageLine,
    pub headers: Headers,
    pub body: Bytes,
}

/// Parse one header value with an ezk typed grammar, requiring that the
/// whole value is consumed. ezk's parsers slice their input out of a
/// `Bytes` they are handed, so the text must live inside that buffer.
pub fn parse_value<H: HeaderParse + 'static>(value: &str) -> Option<H> {
    if trips_ezk::<H>(value) {
        return None;
    }
    let src = Bytes::copy_from_slice(value.trim().as_bytes());
    let text = std::str::from_utf8(&src).ok()?;
    // ezk's grammars are nom parsers over untrusted text; a panic in one must
    // not take the process (our host program) down with it.
    let parsed = std::panic::catch_unwind(|| match H::parse(&src, text) {
        Ok((rest, h)) if rest.trim().is_empty() => Some(h),
        _ => None,
    });
    parsed.ok().flatten()
}

/// Values known to panic inside ezk, refused before it sees them. The
/// `catch_unwind` in [`parse_value`] keeps such a panic out of the host
/// program, but its message still lands on the host's stderr, and a build
/// with `panic = "abort"` would not survive it at all.
fn trips_ezk<H: 'static>(value: &str) -> bool {
    // ezk-sip-types 0.6.5 `Algorithm::from` (auth.rs:488) slices a digest
    // `algorithm` at byte 4 when the text before its first '-' is five bytes
    // long: inside a multi-byte character that panics. ezk's tokens take any
    // Unicode letter, so `algorithm=SHA\u{e9}-256` gets there. An algorithm
    // is an ASCII token (RFC 3261 §25.1), so refusing non-ASCII loses nothing.
    let id = TypeId::of::<H>();
    if id != TypeId::of::<AuthChallenge>() && id != TypeId::of::<AuthResponse>() {
        return false;
    }
    // ASCII lowercasing keeps byte offsets, so `i` indexes `value` too.
    let lower = value.to_ascii_lowercase();
    lower.match_indices("algorithm").any(|(i, name)| {
        let Some(rest) = value[i + name.len()..].trim_start().strip_prefix('=') else {
            return false;
        };
        // Up to the next comma outside quotes; ezk ends a quoted value at
        // the next '"' whatever precedes it, and so does this.
        let mut quoted = false;
        rest.chars()
            .take_while(|&c| {
                quoted ^= c == '"';
                quoted || c != ','
            })
            .any(|c| !c.is_ascii())
    })
}

/// Parse a whole `Parse` value (URI, host) from text, requiring full use.
pub fn parse_whole<T: Parse>(value: &str) -> Option<T> {
    let src = Bytes::copy_from_slice(value.trim().as_bytes());
    let text = std::str::from_utf8(&src).ok()?;
    let parsed = std::panic::catch_unwind(|| match T::parse(&src)(text) {
        Ok((rest, v)) if rest.trim().is_empty() => Some(v),
        _ => None,
    });
    parsed.ok().flatten()
}

/// Split a header value at the commas that separate list elements, leaving
/// commas inside quoted strings and `<...>` alone.
pub fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// The value of `;name=value` among `;`-separated params (case-insensitive
/// name), outside quotes and angle brackets. `Some("")` for a flag param.
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    // Params of a name-addr follow the closing '>'; of a bare URI, they start
    // at the first ';'.
    let tail = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    tail.split(';').skip(1).find_map(|p| {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (p.trim(), ""),
        };
        k.eq_ignore_ascii_case(name).then_some(v.trim_matches('"'))
    })
}

/// Content-Length from every value a head carries for it. The stream
/// framer calls this too, so the length that cuts a TCP stream is exactly
/// the length the parser believes: two readings of one header that differ
/// are how requests get smuggled past a proxy.
pub(crate) fn content_length_of<'a>(
    mut values: impl Iterator<Item = &'a str>,
) -> Result<Option<usize>, ParseError> {
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let first = first.trim();
    // 1*DIGIT only (RFC 3261 §20.14): `parse` alone would also take "+5",
    // which another stack on the path may read differently.
    let bad = || ParseError::BadContentLength(first.chars().take(80).collect());
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n = first.parse::<usize>().map_err(|_| bad())?;
    if values.any(|v| v.trim() != first) {
        return Err(ParseError::BadContentLength("conflicting values".into()));
    }
    if n > MAX_MESSAGE {
        return Err(ParseError::TooLarge(n));
    }
    Ok(Some(n))
}

/// Canonical (long) header name for a name as it appeared on the wire,
/// expanding RFC 3261 compact forms.
fn header_name(raw: &str) -> Name {
    Name::from(raw)
}

impl Message {
    pub fn request(method: Method, uri: SipUri) -> Message {
        Message {
            line: MessageLine::Request(RequestLine { method, uri }),
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    pub fn response(code: u16) -> Message {
        let code = StatusCode::from(code);
        let reason = code.text().map(Into::into);
        Message {
            line: MessageLine::Response(StatusLine { code, reason }),
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// Parse a complete message (a UDP datagram, or a frame cut by
    /// [`crate::framing::StreamDecoder`]). Without Content-Length (allowed
    /// only on UDP) the body is the rest of the datagram.
    pub fn parse(buf: &[u8]) -> Result<Message, ParseError> {
        if buf.len() > MAX_MESSAGE {
            return Err(ParseError::TooLarge(buf.len()));
        }
        let (mut msg, head_len, content_length) = Message::parse_head(buf)?;
        let rest = &buf[head_len..];
        let body_len = match content_length {
            Some(n) if n > rest.len() => {
                return Err(ParseError::BodyTruncated {
                    expected: n,
                    got: rest.len(),
                })
            }
            Some(n) => n,
            None => rest.len(),
        };
        msg.body = Bytes::copy_from_slice(&rest[..body_len]);
        Ok(msg)
    }

    /// Parse the head of a message: returns the message with an empty body,
    /// the length of the head including the blank line, and Content-Length.
    pub fn parse_head(buf: &[u8]) -> Result<(Message, usize, Option<usize>), ParseError> {
        let mut lines = PullParser::new(buf, 0);
        let mut line_texts = Vec::new();
        for line in lines.by_ref() {
            let line = line.map_err(|_| ParseError::Incomplete)?;
            line_texts.push(std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?);
        }
        let head_len = lines.head_end();
        if head_len == lines.progress() {
            return Err(ParseError::Incomplete);
        }
        let first = *line_texts.first().ok_or(ParseError::Incomplete)?;
        let line = parse_whole::<MessageLine>(first)
            .ok_or_else(|| ParseError::BadStartLine(first.chars().take(80).collect()))?;

        let mut headers = Headers::with_capacity(line_texts.len());
        for text in &line_texts[1..] {
            let (name, value) = text
                .split_once(':')
                .ok_or_else(|| ParseError::BadHeaderLine(text.chars().take(80).collect()))?;
            let name = name.trim();
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(ParseError::BadHeaderLine(text.chars().take(80).collect()));
            }
            // Folded continuation lines collapse to one space (RFC 3261 §7.3.1).
            let value: String = value.split_whitespace().collect::<Vec<_>>().join(" ");
            headers.insert(header_name(name), value);
        }
        let msg = Message {
            line,
            headers,
            body: Bytes::new(),
        };
        let content_length = msg.content_length()?;
        msg.validate()?;
        Ok((msg, head_len, content_length))
    }

    fn content_length(&self) -> Result<Option<usize>, ParseError> {
        content_length_of(
            self.headers
                .get_raw(&Name::CONTENT_LENGTH)
                .map(|v| v.as_str()),
        )
    }

    /// The headers every transaction needs must be present and readable
    /// (RFC 3261 §8.1.1, §8.2.2): anything less is answered 400 up front so
    /// no later layer meets a half-formed message.
    fn validate(&self) -> Result<(), ParseError> {
        self.top_via()?;
        self.cseq()?;
        self.call_id()?;
        self.from()?;
        self.to()?;
        if self.is_request() {
            let cseq = self.cseq()?;
            if Some(&cseq.method) != self.method() {
                return Err(ParseError::BadHeader("CSeq", "method mismatch".into()));
            }
            if let Some(mf) = self.raw(&Name::MAX_FORWARDS) {
                mf.trim()
                    .parse::<u8>()
                    .map_err(|_| ParseError::BadHeader("Max-Forwards", mf.into()))?;
            }
        }
        Ok(())
    }

    pub fn is_request(&self) -> bool {
        self.line.is_request()
    }

    pub fn method(&self) -> Option<&Method> {
        self.line.request_method()
    }

    pub fn uri(&self) -> Option<&SipUri> {
        match &self.line {
            MessageLine::Request(r) => Some(&r.uri),
            MessageLine::Response(_) => None,
        }
    }

    /// The Request-URI as text.
    pub fn uri_text(&self) -> Option<String> {
        self.uri().map(|u| u.default_print_ctx().to_string())
    }

    pub fn uri_mut(&mut self) -> Option<&mut SipUri> {
        match &mut self.line {
            MessageLine::Request(r) => Some(&mut r.uri),
            MessageLine::Response(_) => None,
        }
    }

    pub fn code(&self) -> Option<u16> {
        match &self.line {
            MessageLine::Response(s) => Some(s.code.into_u16()),
            MessageLine::Request(_) => None,
        }
    }

    /// First raw value of a header.
    pub fn raw(&self, name: &Name) -> Option<&str> {
        self.headers.get_raw(name).next().map(|v| v.as_str())
    }

    /// All elements of a list header, one per comma-separated element,
    /// across all lines that carry it, in order.
    pub fn list(&self, name: &Name) -> Vec<String> {
        self.headers
            .get_raw(name)
            .flat_map(|v| {
                split_list(v)
                    .into_iter()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Replace every value of `name` with one value.
    pub fn set(&mut self, name: Name, value: impl Into<String>) {
        self.headers.remove(&name);
        self.headers.insert(name, value.into());
    }

    pub fn add(&mut self, name: Name, value: impl Into<String>) {
        self.headers.insert(name, value.into());
    }

    /// Replace a list header by the given elements (one line per element)
    /// where it stood, so pushing a Via or popping a Route leaves Via the
    /// first header a person reading a trace sees. No elements: removed.
    pub fn set_list(&mut self, name: Name, values: &[String]) {
        let mut out = Headers::with_capacity(self.headers.iter().count() + values.len());
        let mut placed = false;
        for (n, v) in self.headers.iter() {
            if *n == name {
                if !placed {
                    for x in values {
                        out.insert(n.clone(), x.clone());
                    }
                    placed = true;
                }
                continue;
            }
            out.insert(n.clone(), v.as_str().to_string());
        }
        if !placed {
            for x in values {
                out.insert(name.clone(), x.clone());
            }
        }
        self.headers = out;
    }

    pub fn vias(&self) -> Vec<String> {
        self.list(&Name::VIA)
    }

    pub fn top_via(&self) -> Result<Via, ParseError> {
        let vias = self.vias();
        let top = vias.first().ok_or(ParseError::MissingHeader("Via"))?;
        parse_value::<Via>(top).ok_or_else(|| ParseError::BadHeader("Via", top.clone()))
    }

    /// The branch of the top Via: the transaction key (RFC 3261 §17.2.3).
    pub fn branch(&self) -> Option<String> {
        self.vias()
            .first()
            .and_then(|v| param(v, "branch"))
            .map(str::to_string)
    }

    pub fn cseq(&self) -> Result<CSeq, ParseError> {
        let v = self
            .raw(&Name::CSEQ)
            .ok_or(ParseError::MissingHeader("CSeq"))?;
        parse_value::<CSeq>(v).ok_or_else(|| ParseError::BadHeader("CSeq", v.into()))
    }

    pub fn call_id(&self) -> Result<String, ParseError> {
        let v = self
            .raw(&Name::CALL_ID)
            .ok_or(ParseError::MissingHeader("Call-ID"))?;
        if v.is_empty() || v.contains(char::is_whitespace) {
            return Err(ParseError::BadHeader("Call-ID", v.into()));
        }
        Ok(v.to_string())
    }

    pub fn from(&self) -> Result<FromTo, ParseError> {
        self.name_addr_header(&Name::FROM, "From")
    }

    pub fn to(&self) -> Result<FromTo, ParseError> {
        self.name_addr_header(&Name::TO, "To")
    }

    fn name_addr_header(&self, name: &Name, label: &'static str) -> Result<FromTo, ParseError> {
        let v = self.raw(name).ok_or(ParseError::MissingHeader(label))?;
        parse_value::<FromTo>(v).ok_or_else(|| ParseError::BadHeader(label, v.into()))
    }

    pub fn from_tag(&self) -> Option<String> {
        self.raw(&Name::FROM)
            .and_then(|v| param(v, "tag"))
            .map(str::to_string)
    }

    pub fn to_tag(&self) -> Option<String> {
        self.raw(&Name::TO)
            .and_then(|v| param(v, "tag"))
            .map(str::to_string)
    }

    /// Contacts, raw (so `*` and unknown params survive) and typed.
    pub fn contacts(&self) -> Vec<(String, Option<Contact>)> {
        self.list(&Name::CONTACT)
            .into_iter()
            .map(|raw| {
                let typed = parse_value::<Contact>(&raw);
                (raw, typed)
            })
            .collect()
    }

    pub fn content_type(&self) -> Option<&str> {
        self.raw(&Name::CONTENT_TYPE)
    }

    pub fn expires(&self) -> Option<u32> {
        self.raw(&Name::EXPIRES).and_then(|v| v.trim().parse().ok())
    }

    pub fn max_forwards(&self) -> Option<u8> {
        self.raw(&Name::MAX_FORWARDS)
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn set_body(&mut self, content_type: &str, body: impl Into<Bytes>) {
        self.body = body.into();
        self.set(Name::CONTENT_TYPE, content_type);
    }

    /// A response to `req` with the headers RFC 3261 §8.2.6.2 says to copy.
    /// `to_tag` is added to To when the request had none.
    pub fn response_to(req: &Message, code: u16, to_tag: Option<&str>) -> Message {
        let mut resp = Message::response(code);
        for via in req.headers.get_raw(&Name::VIA) {
            resp.headers.insert(Name::VIA, via.clone());
        }
        for name in [Name::FROM, Name::TO, Name::CALL_ID, Name::CSEQ] {
            if let Some(v) = req.raw(&name) {
                let mut v = v.to_string();
                if name == Name::TO && code != 100 && req.to_tag().is_none() {
                    if let Some(tag) = to_tag {
                        v.push_str(";tag=");
                        v.push_str(tag);
                    }
                }
                resp.headers.insert(name, v);
            }
        }
        resp
    }

    pub fn set_reason(&mut self, reason: &str) {
        if let MessageLine::Response(s) = &mut self.line {
            s.reason = Some(reason.to_string().into());
        }
    }

    /// Print to wire bytes. Content-Length always states the body length,
    /// so nothing we send can be mis-framed on a stream transport.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(512 + self.body.len());
        use std::fmt::Write;
        let _ = match &self.line {
            MessageLine::Request(r) => write!(
                out,
                "{} {} SIP/2.0\r\n",
                r.method,
                r.uri.default_print_ctx()
            ),
            MessageLine::Response(s) => write!(out, "{s}\r\n"),
        };
        for (name, value) in self.headers.iter() {
            if *name == Name::CONTENT_LENGTH {
                continue;
            }
            let _ = write!(out, "{}: {}\r\n", name.as_print_str(), value);
        }
        let _ = write!(out, "Content-Length: {}\r\n\r\n", self.body.len());
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// `rport`/`received` handling (RFC 3261 §18.2.1, RFC 3581 §4): note
    /// where a request really came from in its top Via so the response finds
    /// its way back through NAT.
    pub fn stamp_received(&mut self, source: SocketAddr) {
        let mut vias = self.vias();
        let Some(top) = vias.first_mut() else { return };
        let sent_by_host = parse_value::<Via>(top).and_then(|v| match v.sent_by.host {
            Host::IP4(ip) => Some(IpAddr::V4(ip)),
            Host::IP6(ip) => Some(IpAddr::V6(ip)),
            Host::Name(_) => None,
        });
        let mut params: Vec<String> = top.split(';').map(str::to_string).collect();
        let has_rport = params.iter().any(|p| {
            p.trim().eq_ignore_ascii_case("rport")
                || p.trim().to_ascii_lowercase().starts_with("rport=")
        });
        params.retain(|p| {
            let k = p
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            k != "received" && !(has_rport && k == "rport")
        });
        if sent_by_host != Some(source.ip()) || has_rport {
            params.push(format!("received={}", source.ip()));
        }
        if has_rport {
            params.push(format!("rport={}", source.port()));
        }
        *top = params.join(";");
        self.set_list(Name::VIA, &vias);
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Where a response to a request goes (RFC 3261 §18.2.2 with RFC 3581):
/// the top Via's `received`/`rport` when present, else its sent-by.
pub fn response_target(via: &str, default_port: u16) -> Option<SocketAddr> {
    let parsed = parse_value::<Via>(via)?;
    let host = match param(via, "received").and_then(|r| r.parse::<IpAddr>().ok()) {
        Some(ip) => ip,
        None => match parsed.sent_by.host {
            Host::IP4(ip) => IpAddr::V4(ip),
            Host::IP6(ip) => IpAddr::V6(ip),
            Host::Name(_) => return None,
        },
    };
    let port = param(via, "rport")
        .and_then(|p| p.parse::<u16>().ok())
        .or(parsed.sent_by.port)
        .unwrap_or(default_port);
    Some(SocketAddr::new(host, port))
}

/// A SIP URI's host and port as a socket address, when the host is a literal.
pub fn uri_addr(uri: &SipUri) -> Option<SocketAddr> {
    let ip = match &uri.host_port.host {
        Host::IP4(ip) => IpAddr::V4(*ip),
        Host::IP6(ip) => IpAddr::V6(*ip),
        Host::Name(_) => return None,
    };
    Some(SocketAddr::new(ip, uri.host_port.port.unwrap_or(5060)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:bob@wxyz.com SIP/2.0\r\n\
v: SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
t: Bob <sip:bob@wxyz.com>\r\n\
f: Fred <sip:fred@abcd.com>;tag=1928301774\r\n\
i: a84b4c76e66710@pc33.abcd.com\r\n\
CSeq: 314159 INVITE\r\n\
m: <sip:fred@[2001:db8::1]:5062;transport=udp>;expires=60\r\n\
c: application/sdp\r\n\
l: 4\r\n\
\r\n\
v=0\r\n";

    #[test]
    fn parses_compact_headers_and_ipv6() {
        let m = Message::parse(INVITE.as_bytes()).unwrap();
        assert_eq!(m.method(), Some(&Method::INVITE));
        assert_eq!(m.call_id().unwrap(), "a84b4c76e66710@pc33.abcd.com");
        assert_eq!(m.cseq().unwrap().cseq, 314159);
        assert_eq!(m.from_tag().as_deref(), Some("1928301774"));
        assert_eq!(m.to_tag(), None);
        assert_eq!(m.branch().as_deref(), Some("z9hG4bK776asdhds"));
        assert_eq!(&m.body[..], b"v=0\r");
        let via = m.top_via().unwrap();
        assert_eq!(via.sent_by.host, Host::IP6("2001:db8::1".parse().unwrap()));
        let contacts = m.contacts();
        assert_eq!(contacts.len(), 1);
        let c = contacts[0].1.as_ref().unwrap();
        assert_eq!(c.uri.uri.host_port.port, Some(5062));
        assert_eq!(param(&contacts[0].0, "expires"), Some("60"));
    }

    #[test]
    fn prints_long_names_and_exact_length() {
        let m = Message::parse(INVITE.as_bytes()).unwrap();
        let text = String::from_utf8(m.to_bytes()).unwrap();
        assert!(text.starts_with("INVITE sip:bob@wxyz.com SIP/2.0\r\n"));
        assert!(text
            .contains("\r\nVia: SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bK776asdhds;rport\r\n"));
        assert!(text.contains("\r\nContent-Length: 4\r\n\r\nv=0\r"));
        let again = Message::parse(text.as_bytes()).unwrap();
        assert_eq!(again.to_bytes(), m.to_bytes());
    }

    #[test]
    fn rejects_missing_and_broken_headers() {
        let no_callid = INVITE.replace("i: a84b4c76e66710@pc33.abcd.com\r\n", "");
        assert_eq!(
            Message::parse(no_callid.as_bytes()).unwrap_err(),
            ParseError::MissingHeader("Call-ID")
        );
        let bad_cseq = INVITE.replace("CSeq: 314159 INVITE", "CSeq: x INVITE");
        assert!(matches!(
            Message::parse(bad_cseq.as_bytes()),
            Err(ParseError::BadHeader("CSeq", _))
        ));
        let short = INVITE.replace("l: 4", "l: 40");
        assert!(matches!(
            Message::parse(short.as_bytes()),
            Err(ParseError::BodyTruncated { .. })
        ));
        let signed = INVITE.replace("l: 4", "l: +4");
        assert!(matches!(
            Message::parse(signed.as_bytes()),
            Err(ParseError::BadContentLength(_))
        ));
        assert!(Message::parse(b"\x00\xff garbage").is_err());
        assert!(Message::parse(b"").is_err());
    }

    #[test]
    fn received_and_rport_are_stamped() {
        let mut m = Message::parse(INVITE.as_bytes()).unwrap();
        let src: SocketAddr = "[2001:db8::9]:40000".parse().unwrap();
        m.stamp_received(src);
        let top = &m.vias()[0];
        assert_eq!(param(top, "received"), Some("2001:db8::9"));
        assert_eq!(param(top, "rport"), Some("40000"));
        assert_eq!(response_target(top, 5060), Some(src));
    }

    #[test]
    fn set_list_keeps_the_header_in_place() {
        let mut m = Message::parse(INVITE.as_bytes()).unwrap();
        m.stamp_received("192.0.2.9:5060".parse().unwrap());
        let mut vias = m.vias();
        vias.insert(0, "SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKp".into());
        m.set_list(Name::VIA, &vias);
        let text = m.to_string();
        let mut lines = text.lines().skip(1);
        assert!(lines.next().unwrap().ends_with("branch=z9hG4bKp"));
        assert!(lines.next().unwrap().contains("received=192.0.2.9"));
        m.set_list(Name::CONTACT, &[]);
        assert!(!m.headers.contains(&Name::CONTACT));
    }

    #[test]
    fn response_copies_dialog_headers() {
        let m = Message::parse(INVITE.as_bytes()).unwrap();
        let r = Message::response_to(&m, 180, Some("xyz"));
        assert_eq!(r.code(), Some(180));
        assert_eq!(r.to_tag().as_deref(), Some("xyz"));
        assert_eq!(r.call_id().unwrap(), m.call_id().unwrap());
        let parsed = Message::parse(&r.to_bytes()).unwrap();
        assert_eq!(parsed.code(), Some(180));
    }

    #[test]
    fn non_ascii_digest_algorithm_is_refused_before_ezk() {
        for v in [
            "Digest username=\"bob\", realm=\"x\", nonce=\"1\", uri=\"sip:x\", response=\"0\", algorithm=SHA\u{e9}-256",
            "Digest realm=\"x\", nonce=\"1\", ALGORITHM = \"AKA\u{e9}-MD5\"",
            "Digest realm=\"x\", nonce=\"1\", algorithm=\"ab,\u{e9}-x\"",
        ] {
            assert!(trips_ezk::<AuthResponse>(v), "{v}");
            assert!(trips_ezk::<AuthChallenge>(v), "{v}");
            assert!(parse_value::<AuthResponse>(v).is_none());
        }
        // Non-ASCII elsewhere is ezk's to judge, and other headers are not
        // affected at all.
        let ok = "Digest realm=\"M\u{fc}nchen\", nonce=\"1\", algorithm=SHA-256";
        assert!(!trips_ezk::<AuthChallenge>(ok));
        assert!(parse_value::<AuthChallenge>(ok).is_some());
        assert!(!trips_ezk::<FromTo>("\"algorithm=\u{e9}\" <sip:a@b>"));
    }

    #[test]
    fn list_splitting_respects_quotes_and_brackets() {
        let v = r#""a, b" <sip:x@y;lr>;p=1, <sip:z@w>"#;
        assert_eq!(split_list(v).len(), 2);
    }
}
