//! SIP messages: parse from bytes, print to bytes, and the few typed views
//! the rest of sipcore needs.
//!
//! Parsing rests on `ezk-sip-types` (start line, header names including the
//! compact forms, typed header grammars). Header values are kept as the raw
//! text that arrived, so a proxy echoes Via, Contact and Record-Route exactly
//! as their author wrote them, and a value we cannot type never blocks a
//! message we only need to forward.

use bytes::Bytes;
use bytesstr::BytesStr;
use ezk_sip_types::header::headers::OneOrMore;
use ezk_sip_types::header::typed::{AuthChallenge, AuthResponse};
use ezk_sip_types::header::ExtendValues;
use ezk_sip_types::header::HeaderParse;
use ezk_sip_types::msg::{MessageLine, PullParser, RequestLine, StatusLine};
use ezk_sip_types::parse::Parse;
use ezk_sip_types::print::{AppendCtx, PrintCtx};
use std::any::TypeId;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

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

/// A CSeq value, read as ezk's grammar reads it (digits, optional
/// whitespace, a method token; the whole value) without going through nom:
/// every message's CSeq is read several times on its way through.
/// `tests::cseq_reads_as_ezk_does` holds the two to the same answers.
pub fn parse_cseq(value: &str) -> Option<CSeq> {
    // ezk's `token` and `whitespace` character classes.
    let token = |c: char| {
        c.is_alphanumeric()
            || matches!(
                c,
                '-' | '.' | '!' | '%' | '*' | '_' | '`' | '\'' | '~' | '+'
            )
    };
    let v = value.trim();
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    if digits == 0 {
        return None;
    }
    let cseq = v[..digits].parse::<u32>().ok()?;
    let rest = v[digits..].trim_start_matches([' ', '\t', '\r', '\n']);
    let end = rest.find(|c: char| !token(c)).unwrap_or(rest.len());
    if end == 0 || !rest[end..].trim().is_empty() {
        return None;
    }
    let method = match &rest[..end] {
        "REGISTER" => Method::REGISTER,
        "INVITE" => Method::INVITE,
        "ACK" => Method::ACK,
        "BYE" => Method::BYE,
        "CANCEL" => Method::CANCEL,
        "OPTIONS" => Method::OPTIONS,
        other => Method::from(other),
    };
    Some(CSeq { cseq, method })
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
    list_elements(value).collect()
}

/// The elements [`split_list`] returns, one at a time: the first one costs
/// no more than scanning up to its end.
pub fn list_elements(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || loop {
        let v = rest?;
        let (mut quoted, mut angle, mut escaped) = (false, false, false);
        let mut end = None;
        // Bytes, not chars: every delimiter is ASCII, and no byte of a
        // multi-byte UTF-8 character is.
        for (i, &c) in v.as_bytes().iter().enumerate() {
            if escaped {
                escaped = false;
                continue;
            }
            match c {
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b'<' if !quoted => angle = true,
                b'>' if !quoted => angle = false,
                b',' if !quoted && !angle => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let element = match end {
            Some(i) => {
                rest = Some(&v[i + 1..]);
                v[..i].trim()
            }
            None => {
                rest = None;
                v.trim()
            }
        };
        if !element.is_empty() {
            return Some(element);
        }
    })
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
/// expanding RFC 3261 compact forms. The names every message carries are
/// looked up in a short table first (ezk's own answers, made once): ezk
/// walks its whole list of names, compact forms included, for each one.
fn header_name(raw: &str) -> Name {
    static COMMON: OnceLock<Vec<(&'static str, Name)>> = OnceLock::new();
    let common = COMMON.get_or_init(|| {
        [
            "via",
            "v",
            "from",
            "f",
            "to",
            "t",
            "call-id",
            "i",
            "cseq",
            "contact",
            "m",
            "max-forwards",
            "content-length",
            "l",
            "expires",
            "content-type",
            "c",
            "user-agent",
            "server",
            "allow",
            "supported",
            "k",
            "route",
            "record-route",
            "authorization",
            "proxy-authorization",
            "www-authenticate",
            "proxy-authenticate",
        ]
        .into_iter()
        .map(|n| (n, Name::from(n)))
        .collect()
    });
    common
        .iter()
        .find(|(n, _)| n.len() == raw.len() && n.eq_ignore_ascii_case(raw))
        .map(|(_, name)| name.clone())
        .unwrap_or_else(|| Name::from(raw))
}

/// Header-name equality, as ezk's `Name == Name` decides it for the names
/// sipcore meets (known names, and unknown ones kept as they arrived), for
/// a fraction of the cost: ezk compares every long and compact spelling of
/// both names, case-insensitively, at each step of each lookup.
pub fn same_name(a: &Name, b: &Name) -> bool {
    let (a, b) = (a.as_print_str(), b.as_print_str());
    a.len() == b.len() && a.eq_ignore_ascii_case(b)
}

/// Whether a header value read off the wire needs RFC 3261 §7.3.1 folding
/// (collapsing whitespace runs, line folds included, to one space) beyond
/// trimming spaces at its ends.
fn needs_folding(value: &str) -> bool {
    let v = value.trim_matches(' ');
    !v.is_ascii() || v.bytes().any(|b| (9..=13).contains(&b)) || v.contains("  ")
}

/// A header value stored as it is, without ezk printing it again.
struct RawValue(BytesStr);

impl ExtendValues for RawValue {
    fn extend_values(&self, _: PrintCtx<'_>, values: &mut OneOrMore) {
        values.push(self.0.clone());
    }

    fn create_values(&self, _: PrintCtx<'_>) -> OneOrMore {
        OneOrMore::One(self.0.clone())
    }
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

        // One copy of the head; header values that need no folding are
        // slices of it rather than a string each.
        let head = Bytes::copy_from_slice(&buf[..head_len]);
        // Every line was UTF-8, and so are the line ends between them.
        let head_text = std::str::from_utf8(&head).map_err(|_| ParseError::NotUtf8)?;
        let in_head = |text: &str| -> &str {
            let start = text.as_ptr() as usize - buf.as_ptr() as usize;
            &head_text[start..start + text.len()]
        };
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
            let value = if needs_folding(value) {
                BytesStr::from(value.split_whitespace().collect::<Vec<_>>().join(" "))
            } else {
                BytesStr::from_parse(&head, in_head(value.trim_matches(' ')))
            };
            headers.insert_type(header_name(name), &RawValue(value));
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
        content_length_of(self.values(&Name::CONTENT_LENGTH))
    }

    /// The headers every transaction needs must be present and readable
    /// (RFC 3261 §8.1.1, §8.2.2): anything less is answered 400 up front so
    /// no later layer meets a half-formed message.
    fn validate(&self) -> Result<(), ParseError> {
        self.top_via()?;
        let cseq = self.cseq()?;
        self.call_id()?;
        self.from()?;
        self.to()?;
        if self.is_request() {
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

    /// Every raw value of a header, in order: `headers.get_raw(name)`
    /// with a cheaper name comparison ([`same_name`]).
    pub fn values<'a>(&'a self, name: &'a Name) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| same_name(n, name))
            .map(|(_, v)| v.as_str())
    }

    /// First raw value of a header.
    pub fn raw(&self, name: &Name) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| same_name(n, name))
            .map(|(_, v)| v.as_str())
    }

    /// All elements of a list header, one per comma-separated element,
    /// across all lines that carry it, in order.
    pub fn list(&self, name: &Name) -> Vec<String> {
        self.values(name)
            .flat_map(list_elements)
            .map(str::to_string)
            .collect()
    }

    /// Replace every value of `name` with one value.
    pub fn set(&mut self, name: Name, value: impl Into<String>) {
        self.headers.remove(&name);
        self.add(name, value);
    }

    pub fn add(&mut self, name: Name, value: impl Into<String>) {
        self.add_raw(name, BytesStr::from(value.into()));
    }

    /// Append a value as it is (ezk's `insert` would print it into a new
    /// string first).
    fn add_raw(&mut self, name: Name, value: BytesStr) {
        self.headers.insert_type(name, &RawValue(value));
    }

    /// The stored values of a header, shared rather than copied.
    fn raw_values<'a>(&'a self, name: &'a Name) -> impl Iterator<Item = &'a BytesStr> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| same_name(n, name))
            .map(|(_, v)| v)
    }

    /// Replace a list header by the given elements (one line per element)
    /// where it stood, so pushing a Via or popping a Route leaves Via the
    /// first header a person reading a trace sees. No elements: removed.
    pub fn set_list(&mut self, name: Name, values: &[String]) {
        let mut out = Headers::with_capacity(self.headers.iter().count() + values.len());
        let mut placed = false;
        let add =
            |out: &mut Headers, n: &Name, v: BytesStr| out.insert_type(n.clone(), &RawValue(v));
        for (n, v) in self.headers.iter() {
            if same_name(n, &name) {
                if !placed {
                    for x in values {
                        add(&mut out, n, BytesStr::from(x.as_str()));
                    }
                    placed = true;
                }
                continue;
            }
            add(&mut out, n, v.clone());
        }
        if !placed {
            for x in values {
                add(&mut out, &name, BytesStr::from(x.as_str()));
            }
        }
        self.headers = out;
    }

    pub fn vias(&self) -> Vec<String> {
        self.list(&Name::VIA)
    }

    /// The first element of the first Via, as text: `vias()[0]` without
    /// copying every Via.
    pub fn top_via_text(&self) -> Option<&str> {
        self.values(&Name::VIA)
            .find_map(|v| list_elements(v).next())
    }

    pub fn top_via(&self) -> Result<Via, ParseError> {
        let top = self
            .top_via_text()
            .ok_or(ParseError::MissingHeader("Via"))?;
        parse_value::<Via>(top).ok_or_else(|| ParseError::BadHeader("Via", top.into()))
    }

    /// The branch of the top Via: the transaction key (RFC 3261 §17.2.3).
    pub fn branch(&self) -> Option<String> {
        self.top_via_text()
            .and_then(|v| param(v, "branch"))
            .map(str::to_string)
    }

    pub fn cseq(&self) -> Result<CSeq, ParseError> {
        let v = self
            .raw(&Name::CSEQ)
            .ok_or(ParseError::MissingHeader("CSeq"))?;
        parse_cseq(v).ok_or_else(|| ParseError::BadHeader("CSeq", v.into()))
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
        for via in req.raw_values(&Name::VIA) {
            resp.add_raw(Name::VIA, via.clone());
        }
        for name in [Name::FROM, Name::TO, Name::CALL_ID, Name::CSEQ] {
            let first = req.raw_values(&name).next().cloned();
            if let Some(v) = first {
                let tag = to_tag.filter(|_| name == Name::TO && code != 100);
                match tag {
                    Some(tag) if req.to_tag().is_none() => {
                        resp.add(name, format!("{};tag={tag}", v.as_str()));
                    }
                    _ => resp.add_raw(name, v),
                }
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
            if same_name(name, &Name::CONTENT_LENGTH) {
                continue;
            }
            out.push_str(name.as_print_str());
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
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
        let Some(top) = self.top_via_text() else {
            return;
        };
        let sent_by_host = via_sent_by(top).and_then(|(ip, _)| ip);
        let key = |p: &str| {
            p.split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        };
        let has_rport = top.split(';').skip(1).any(|p| key(p) == "rport");
        let has_received = top.split(';').skip(1).any(|p| key(p) == "received");
        let add_received = sent_by_host != Some(source.ip()) || has_rport;
        if !has_rport && !has_received && !add_received {
            // The Via already says where the request came from: the common
            // case, and worth not rebuilding the headers for.
            return;
        }
        let mut params: Vec<&str> = top.split(';').collect();
        params.retain(|p| {
            let k = key(p);
            k != "received" && !(has_rport && k == "rport")
        });
        let mut new_top = params.join(";");
        if add_received {
            new_top.push_str(&format!(";received={}", source.ip()));
        }
        if has_rport {
            new_top.push_str(&format!(";rport={}", source.port()));
        }
        self.replace_top_via(new_top);
    }

    /// Put `top` in place of the first Via element. When Via leads the
    /// headers and its first line holds one element (what every UA sends)
    /// that is one value swapped; otherwise the list is rebuilt in place.
    fn replace_top_via(&mut self, top: String) {
        let leads = self.headers.iter().next().is_some_and(|(n, v)| {
            same_name(n, &Name::VIA) && list_elements(v.as_str()).nth(1).is_none()
        });
        if !leads {
            let mut vias = self.vias();
            if let Some(first) = vias.first_mut() {
                *first = top;
            }
            return self.set_list(Name::VIA, &vias);
        }
        let mut lines = self.headers.remove(&Name::VIA).unwrap_or_default();
        let rest = lines.split_off(1.min(lines.len()));
        self.headers.insert_front(Name::VIA, top);
        for line in rest {
            self.add_raw(Name::VIA, line);
        }
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
    let (sent_by_ip, sent_by_port) = via_sent_by(via)?;
    let host = match param(via, "received").and_then(|r| r.parse::<IpAddr>().ok()) {
        Some(ip) => ip,
        None => sent_by_ip?,
    };
    let port = param(via, "rport")
        .and_then(|p| p.parse::<u16>().ok())
        .or(sent_by_port)
        .unwrap_or(default_port);
    Some(SocketAddr::new(host, port))
}

/// The sent-by of a Via value: its host when that is an IP literal (`None`
/// for a name) and its port; `None` when the Via does not parse. The plain
/// shape every UA sends (`SIP/2.0/UDP 192.0.2.1:5060;...`, IPv6 bracketed)
/// is read directly; anything else goes through ezk's Via grammar.
/// `tests::sent_by_reads_as_ezk_does` holds the two to the same answers.
fn via_sent_by(via: &str) -> Option<(Option<IpAddr>, Option<u16>)> {
    let fast = || {
        let head = via.trim().split(';').next()?;
        let rest = head.strip_prefix("SIP/2.0/")?;
        let (transport, sent_by) = rest.split_once(' ')?;
        if transport.is_empty() || !transport.bytes().all(is_token_byte) {
            return None;
        }
        let sent_by = sent_by.trim_end();
        if let Ok(a) = sent_by.parse::<SocketAddr>() {
            return Some((Some(a.ip()), Some(a.port())));
        }
        let ip = match sent_by.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            Some(v6) => IpAddr::V6(v6.parse().ok()?),
            None => IpAddr::V4(sent_by.parse().ok()?),
        };
        Some((Some(ip), None))
    };
    if let Some(found) = fast() {
        return Some(found);
    }
    let parsed = parse_value::<Via>(via)?;
    let ip = match parsed.sent_by.host {
        Host::IP4(ip) => Some(IpAddr::V4(ip)),
        Host::IP6(ip) => Some(IpAddr::V6(ip)),
        Host::Name(_) => None,
    };
    Some((ip, parsed.sent_by.port))
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

    #[test]
    fn sent_by_reads_as_ezk_does() {
        let ezk = |v: &str| {
            parse_value::<Via>(v).map(|p| {
                let ip = match p.sent_by.host {
                    Host::IP4(ip) => Some(IpAddr::V4(ip)),
                    Host::IP6(ip) => Some(IpAddr::V6(ip)),
                    Host::Name(_) => None,
                };
                (ip, p.sent_by.port)
            })
        };
        for v in [
            "SIP/2.0/UDP 127.0.0.1:16000;branch=z9hG4bK-1",
            "SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK-1;rport",
            "sip/2.0/udp 10.0.0.1:5060",
            "SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bK776",
            "SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK776",
            "SIP/2.0/UDP host.example:5060;branch=x",
            "SIP/2.0/UDP host.example;branch=x",
            "SIP / 2.0 / UDP 10.0.0.1:5060;branch=x",
            "SIP/2.0/UDP 10.0.0.1 : 5060;branch=x",
            "SIP/2.0/UDP  10.0.0.1:5060;branch=x",
            "SIP/2.0/UDP 10.0.0.1:70000;branch=x",
            "SIP/2.0/UDP 010.0.0.1:5060;branch=x",
            "SIP/2.0/UDP 10.0.0.1:5060 ;branch=x",
            "SIP/2.0/UDP 10.0.0.1:5060, SIP/2.0/UDP 10.0.0.2",
            "SIP/2.0/ 10.0.0.1:5060",
            "SIP/2.0/UDP",
            "garbage",
            "",
        ] {
            let fast = via_sent_by(v);
            assert_eq!(fast, ezk(v), "{v:?}");
        }
    }

    #[test]
    fn cseq_reads_as_ezk_does() {
        let cases = [
            "1 REGISTER",
            "  42   INVITE  ",
            "7\tACK",
            "7ACK",
            "0001 BYE",
            "4294967295 OPTIONS",
            "4294967296 OPTIONS",
            "1 register",
            "1 INVITEX",
            "1 FOO",
            "1 PUBLISHING",
            "1 INFO",
            "1 Ünïcode",
            "1 A B",
            "1",
            "REGISTER",
            "",
            "+1 INVITE",
            "-1 INVITE",
            "1 INVITE;x",
            "1 \r\n INVITE",
            "1 \u{a0}INVITE",
            "1 INVITE \u{3000}",
            "١ INVITE",
        ];
        for v in cases {
            assert_eq!(parse_cseq(v), parse_value::<CSeq>(v), "{v:?}");
        }
    }

    #[test]
    fn header_values_fold_as_before() {
        // The folding rule the parser used for every value, against what it
        // does now (slices of the head where nothing needs folding).
        let fold = |v: &str| v.split_whitespace().collect::<Vec<_>>().join(" ");
        for v in [
            "plain",
            " lead",
            "trail ",
            "  two  spaces  ",
            "a\tb",
            "a\r\n b",
            "x\u{a0}y",
            " \u{3000}z",
            "",
            "   ",
            "\"A  B\" <sip:a@b>",
        ] {
            let text = format!(
                "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\
X-Test:{v}\r\nContent-Length: 0\r\n\r\n"
            );
            let m = Message::parse(text.as_bytes()).unwrap();
            assert_eq!(
                m.raw(&Name::from("X-Test")),
                Some(fold(v).as_str()),
                "{v:?}"
            );
        }
    }

    #[test]
    fn fast_name_lookup_agrees_with_ezk() {
        let text = "INVITE sip:bob@wxyz.com SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\
f: <sip:a@b>;tag=1\r\nt: <sip:a@b>\r\ni: c\r\nCSeq: 1 INVITE\r\nm: <sip:a@h>\r\n\
X-Foo: 1\r\nx-foo: 2\r\nVIA: SIP/2.0/TCP g;branch=z9hG4bKy\r\nl: 0\r\n\r\n";
        let m = Message::parse(text.as_bytes()).unwrap();
        for name in [
            Name::VIA,
            Name::FROM,
            Name::TO,
            Name::CALL_ID,
            Name::CSEQ,
            Name::CONTACT,
            Name::CONTENT_LENGTH,
            Name::from("X-Foo"),
            Name::from("X-FOO"),
            Name::from("x-bar"),
            Name::ROUTE,
        ] {
            let ezk: Vec<&str> = m.headers.get_raw(&name).map(|v| v.as_str()).collect();
            let ours: Vec<&str> = m.values(&name).collect();
            assert_eq!(ours, ezk, "{name:?}");
        }
        assert_eq!(m.values(&Name::VIA).count(), 2);
    }

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
