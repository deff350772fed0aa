//! The SDP that describes wisp's data channel: typed, strict, and printed so
//! that any SIP stack or capture tool reads it as ordinary RFC 8866 SDP.
//!
//! A wisp INVITE carries one `m=application PORT TCP wisp` section per data
//! channel (RFC 4145 gives TCP its `a=setup` and `a=connection`); a re-INVITE
//! after a host move carries the same section with the new address. Every
//! field in it steers a live connection (which side dials, where to, from
//! which byte to resume, which key proves the move is genuine), so a body we
//! cannot read completely is refused with an error naming the line, never
//! half-read: guessing a default for a garbled `a=wisp-rx` would silently
//! corrupt the stream it resumes.
//!
//! Line structure is left to `sdp-types`. What it tolerates and we do not
//! (type letters it skips, an `o=` it invents, signs in numbers) is caught
//! by a second walk over the lines in [`SessionDesc::parse`].
//!
//! Grammar of the channel attributes (media level, each at most once per
//! section; names match without case; `a=setup` and `a=connection` may also
//! stand at session level as a default for every channel, RFC 4145 §4, §5):
//!
//! ```text
//! a=setup:active|passive|actpass|holdconn   required
//! a=connection:new|existing                 required
//! a=wisp-port:<1-65535>
//! a=wisp-key:<base64 of 32 bytes>           X25519 public key
//! a=wisp-move:<u64>
//! a=wisp-mac:<base64 of 32 bytes>           HMAC-SHA256
//! a=wisp-rx:<u64>
//! a=wisp-stream:<1*128 token-char>          RFC 8866 token
//! ```
//!
//! Numbers are canonical decimal (digits only, no sign, no leading zero), and
//! base64 is RFC 4648 §4 with padding and zero pad bits, so every value has
//! exactly one spelling: a MAC computed over the text and one computed over
//! the values cannot disagree.

use sdp_types as sdpt;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Largest body we read. Our own bodies are a few hundred bytes and a
/// softphone's offer a few KiB; anything bigger is not worth a parser's time.
pub const MAX_SDP: usize = 16 * 1024;

/// Longest `a=wisp-stream` token; stream ids are short random tokens and a
/// bound keeps hostile bodies from smuggling payloads in them.
pub const MAX_STREAM_ID: usize = 128;

/// Transport of the data channel, the `<proto>` of its m= line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelProto {
    Tcp,
    Udp,
}

impl ChannelProto {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelProto::Tcp => "TCP",
            ChannelProto::Udp => "UDP",
        }
    }
}

/// RFC 4145 §4 `a=setup`: which side opens the TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setup {
    Active,
    Passive,
    ActPass,
    HoldConn,
}

impl Setup {
    pub fn as_str(self) -> &'static str {
        match self {
            Setup::Active => "active",
            Setup::Passive => "passive",
            Setup::ActPass => "actpass",
            Setup::HoldConn => "holdconn",
        }
    }

    /// ABNF literals are case-insensitive, so `ACTIVE` is as good as `active`.
    fn from_value(v: &str) -> Option<Setup> {
        [
            Setup::Active,
            Setup::Passive,
            Setup::ActPass,
            Setup::HoldConn,
        ]
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(v))
    }
}

/// RFC 4145 §5 `a=connection`: whether a re-INVITE keeps the TCP connection
/// or asks for a new one (a host move always needs a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionAttr {
    New,
    Existing,
}

impl ConnectionAttr {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionAttr::New => "new",
            ConnectionAttr::Existing => "existing",
        }
    }

    fn from_value(v: &str) -> Option<ConnectionAttr> {
        [ConnectionAttr::New, ConnectionAttr::Existing]
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(v))
    }
}

/// One wisp data channel: one `m=application PORT TCP|UDP wisp` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub proto: ChannelProto,
    /// From the c= line in force (media level over session level) and the
    /// m= port. Port 0 is kept as written: in an answer it refuses the
    /// channel (RFC 3264 §6), in an active offer it says "no listener".
    /// An IPv6 scope id or flow label has no SDP spelling and is not printed.
    pub addr: SocketAddr,
    pub setup: Setup,
    pub connection: ConnectionAttr,
    /// `a=wisp-port`: the port the application connect()ed to on the
    /// placeholder address, so the callee knows which local service it meant.
    pub wanted_port: Option<u16>,
    /// `a=wisp-key`: X25519 public key for the channel's key agreement.
    pub key_share: Option<[u8; 32]>,
    /// `a=wisp-move`: grows with every move so a replayed old re-INVITE is
    /// recognisable.
    pub move_counter: Option<u64>,
    /// `a=wisp-mac`: HMAC-SHA256 proving a move comes from the key holder.
    pub move_mac: Option<[u8; 32]>,
    /// `a=wisp-rx`: bytes this side has received, where the peer resumes.
    pub rx_bytes: Option<u64>,
    /// `a=wisp-stream`: names the stream a re-INVITE is moving.
    pub stream_id: Option<String>,
}

impl Channel {
    /// A channel with none of the optional wisp attributes.
    pub fn new(
        proto: ChannelProto,
        addr: SocketAddr,
        setup: Setup,
        connection: ConnectionAttr,
    ) -> Channel {
        Channel {
            proto,
            addr,
            setup,
            connection,
            wanted_port: None,
            key_share: None,
            move_counter: None,
            move_mac: None,
            rx_bytes: None,
            stream_id: None,
        }
    }
}

/// A whole wisp session description: `o=` identity plus the data channels.
/// Other media (a softphone's audio) are not kept; wisp never answers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDesc {
    /// `o=` sess-id: fixed for the dialog.
    pub session_id: u64,
    /// `o=` sess-version: RFC 3264 §8 wants it raised on every changed offer.
    pub version: u64,
    pub origin_addr: IpAddr,
    pub channels: Vec<Channel>,
}

/// Why a body is not a wisp SDP we can act on. Line numbers are 1-based and
/// count every line of the body, as a capture tool shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdpError {
    TooLarge(usize),
    NotUtf8,
    /// `sdp-types` refused the structure; its message names the line.
    Syntax(String),
    /// `sdp-types` panicked; contained so the host program survives.
    ParserPanicked,
    /// A type letter that is unknown, or not allowed where it stands.
    BadLine {
        line: usize,
        key: char,
    },
    /// A required session-level line (`o=`, `s=`, `t=`) is absent.
    MissingLine(&'static str),
    BadOrigin {
        line: usize,
        why: &'static str,
    },
    /// No `m=application ... wisp` section at all.
    NoChannel,
    BadMedia {
        line: usize,
        field: &'static str,
        value: String,
    },
    /// Neither the channel's section nor the session has a c= line.
    MissingConnection {
        line: usize,
    },
    BadConnection {
        line: usize,
        value: String,
        why: &'static str,
    },
    MissingAttribute {
        line: usize,
        name: &'static str,
    },
    DuplicateAttribute {
        line: usize,
        name: &'static str,
    },
    BadAttribute {
        line: usize,
        name: &'static str,
        value: String,
        why: &'static str,
    },
    /// A channel attribute at session level, where it names no channel.
    MisplacedAttribute {
        line: usize,
        name: &'static str,
    },
    /// Only from [`SessionDesc::validate`]: the description has a value
    /// that has no faithful SDP spelling.
    Unprintable(&'static str),
}

impl fmt::Display for SdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SdpError::TooLarge(n) => write!(f, "SDP of {n} bytes exceeds {MAX_SDP}"),
            SdpError::NotUtf8 => write!(f, "SDP is not UTF-8"),
            SdpError::Syntax(e) => write!(f, "SDP syntax: {e}"),
            SdpError::ParserPanicked => write!(f, "SDP parser panicked on this body"),
            SdpError::BadLine { line, key } => {
                write!(f, "line {line}: {key:?}= line unknown or out of place")
            }
            SdpError::MissingLine(l) => write!(f, "no session-level {l} line"),
            SdpError::BadOrigin { line, why } => write!(f, "line {line}: bad o= line: {why}"),
            SdpError::NoChannel => write!(f, "no m=application ... wisp channel"),
            SdpError::BadMedia { line, field, value } => {
                write!(f, "line {line}: bad {field} {value:?} in wisp m= line")
            }
            SdpError::MissingConnection { line } => {
                write!(
                    f,
                    "line {line}: wisp channel has no c= line, nor has the session"
                )
            }
            SdpError::BadConnection { line, value, why } => {
                write!(f, "line {line}: c={value:?} unusable for wisp: {why}")
            }
            SdpError::MissingAttribute { line, name } => {
                write!(f, "line {line}: wisp channel lacks a={name}")
            }
            SdpError::DuplicateAttribute { line, name } => {
                write!(f, "line {line}: a={name} given twice")
            }
            SdpError::BadAttribute {
                line,
                name,
                value,
                why,
            } => write!(f, "line {line}: bad a={name} value {value:?}: {why}"),
            SdpError::MisplacedAttribute { line, name } => {
                write!(
                    f,
                    "line {line}: a={name} at session level, outside any channel"
                )
            }
            SdpError::Unprintable(why) => write!(f, "cannot print as SDP: {why}"),
        }
    }
}

impl std::error::Error for SdpError {}

/// RFC 4145 §4.1: the answerer's role for an offered role.
///
/// For `actpass` we answer `passive`: the answerer is the side whose
/// application is listening, so it already accepts connections, while the
/// offerer is the one that called connect() and is the side more likely to
/// sit behind a NAT that drops unsolicited SYNs. The TCP connection then
/// runs in the same direction as the application's own.
pub fn answer_setup(offer: Setup) -> Setup {
    match offer {
        Setup::Active => Setup::Passive,
        Setup::Passive => Setup::Active,
        Setup::ActPass => Setup::Passive,
        Setup::HoldConn => Setup::HoldConn,
    }
}

/// Whether `answer` is a role RFC 4145 §4.1 allows in reply to `offer`.
/// `holdconn` is always allowed (the answerer may put the stream on hold);
/// `actpass` never, because after the answer the roles must be settled.
pub fn setup_compatible(offer: Setup, answer: Setup) -> bool {
    matches!(
        (offer, answer),
        (_, Setup::HoldConn)
            | (Setup::Active, Setup::Passive)
            | (Setup::Passive, Setup::Active)
            | (Setup::ActPass, Setup::Active | Setup::Passive)
    )
}

// Attribute names, matched case-insensitively as sdp-types does.
const SETUP: &str = "setup";
const CONNECTION: &str = "connection";
const WISP_PORT: &str = "wisp-port";
const WISP_KEY: &str = "wisp-key";
const WISP_MOVE: &str = "wisp-move";
const WISP_MAC: &str = "wisp-mac";
const WISP_RX: &str = "wisp-rx";
const WISP_STREAM: &str = "wisp-stream";
const CHANNEL_ATTRS: [&str; 8] = [
    SETUP,
    CONNECTION,
    WISP_PORT,
    WISP_KEY,
    WISP_MOVE,
    WISP_MAC,
    WISP_RX,
    WISP_STREAM,
];

/// Session-level type letters of RFC 8866 §5 (`v=` only as the first line).
const SESSION_KEYS: &[u8] = b"osiuepcbtrzka";
/// Media-level type letters of RFC 8866 §5.
const MEDIA_KEYS: &[u8] = b"icbka";

/// Where things stand in the body, line-numbered. sdp-types keeps no line
/// numbers, but it keeps a=, c= and m= lines in body order, so the n-th
/// attribute of a section it returns is the n-th a= line recorded here.
#[derive(Default)]
struct Section<'a> {
    line: usize,
    raw_m: &'a str,
    attrs: Vec<usize>,
    conns: Vec<usize>,
}

struct Layout<'a> {
    origin: Option<(usize, &'a str)>,
    session: Section<'a>,
    /// One per m= line.
    media: Vec<Section<'a>>,
}

/// RFC 8866 §5: "An SDP parser MUST completely ignore or reject" a type
/// letter it does not understand; sdp-types ignores it, and also ignores a
/// session-level line (a second `v=`, an `o=`) inside a media section. Both
/// would let a body say something we never read, so we reject them.
fn scan(text: &str) -> Result<Layout<'_>, SdpError> {
    let mut layout = Layout {
        origin: None,
        session: Section::default(),
        media: Vec::new(),
    };
    let (mut seen_v, mut seen_s, mut seen_t) = (false, false, false);
    // Lines split as sdp-types splits them (on LF, dropping a CR before it)
    // so line numbers agree with its messages.
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let Some(&key) = line.as_bytes().first() else {
            continue;
        };
        let value = line.get(2..).unwrap_or("");
        let in_media = !layout.media.is_empty();
        let section = layout.media.last_mut().unwrap_or(&mut layout.session);
        match key {
            b'v' if !seen_v => seen_v = true,
            b'm' => layout.media.push(Section {
                line: n,
                raw_m: value,
                ..Section::default()
            }),
            b'a' => section.attrs.push(n),
            b'c' => section.conns.push(n),
            b'o' if !in_media => layout.origin = Some((n, value)),
            b's' if !in_media => seen_s = true,
            b't' if !in_media => seen_t = true,
            k if !in_media && SESSION_KEYS.contains(&k) => {}
            k if in_media && MEDIA_KEYS.contains(&k) => {}
            k => {
                return Err(SdpError::BadLine {
                    line: n,
                    key: char::from(k),
                })
            }
        }
    }
    if layout.origin.is_none() {
        return Err(SdpError::MissingLine("o="));
    }
    if !seen_s {
        return Err(SdpError::MissingLine("s="));
    }
    if !seen_t {
        return Err(SdpError::MissingLine("t="));
    }
    Ok(layout)
}

/// Run a third-party parser so that a panic inside it becomes an error:
/// wisp runs inside other people's programs (LD_PRELOAD), and a hostile SDP
/// must not be able to take one of them down.
fn guarded<T>(parse: impl FnOnce() -> Result<T, SdpError>) -> Result<T, SdpError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse))
        .unwrap_or(Err(SdpError::ParserPanicked))
}

/// Canonical decimal: one spelling per number, so nothing can hide in `+7`
/// or `007` (Rust's `parse` takes a leading `+`).
fn canonical_dec<T: std::str::FromStr>(s: &str) -> Option<T> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = s.len() > 1 && s.starts_with('0');
    if digits && !leading_zero {
        s.parse().ok()
    } else {
        None
    }
}

/// RFC 8866 §9 token-char.
fn is_token_char(b: u8) -> bool {
    matches!(
        b,
        0x21 | 0x23..=0x27 | 0x2a..=0x2b | 0x2d..=0x2e | 0x30..=0x39 | 0x41..=0x5a | 0x5e..=0x7e
    )
}

fn is_stream_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_STREAM_ID && s.bytes().all(is_token_char)
}

/// Keep error messages bounded whatever a peer sent.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(B64[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Strict RFC 4648 §4 decoding: padded, no whitespace, pad bits zero, so
/// that decode followed by encode gives back the same text.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.chunks_exact(4).remainder().is_empty() {
        return None;
    }
    let pad = bytes.iter().rev().take_while(|&&b| b == b'=').count();
    if pad > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in &bytes[..bytes.len() - pad] {
        let v = B64.iter().position(|&c| c == b)? as u32;
        acc = (acc << 6 | v) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // Leftover bits must be padding zeros, or two texts decode alike.
    if acc & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

fn key32(text: &str) -> Result<[u8; 32], &'static str> {
    let bytes = base64_decode(text).ok_or("not padded base64")?;
    bytes.try_into().map_err(|_| "not 32 bytes")
}

/// One channel's attribute values as they are collected, each at most once.
#[derive(Default)]
struct Attrs {
    setup: Option<Setup>,
    connection: Option<ConnectionAttr>,
    wanted_port: Option<u16>,
    key_share: Option<[u8; 32]>,
    move_counter: Option<u64>,
    move_mac: Option<[u8; 32]>,
    rx_bytes: Option<u64>,
    stream_id: Option<String>,
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    line: usize,
    name: &'static str,
) -> Result<(), SdpError> {
    if slot.is_some() {
        return Err(SdpError::DuplicateAttribute { line, name });
    }
    *slot = Some(value);
    Ok(())
}

/// Which of our attributes `raw` names, if any. A name that is ours only
/// after trimming (`a=wisp-rx :5`, which sdp-types hands over as the name
/// `"wisp-rx "`) is refused rather than skipped as somebody else's.
fn our_name(raw: &str, line: usize) -> Result<Option<&'static str>, SdpError> {
    let Some(name) = CHANNEL_ATTRS
        .into_iter()
        .find(|n| n.eq_ignore_ascii_case(raw.trim()))
    else {
        return Ok(None);
    };
    if raw != raw.trim() {
        return Err(SdpError::BadAttribute {
            line,
            name,
            value: clip(raw),
            why: "white space around the attribute name",
        });
    }
    Ok(Some(name))
}

/// Read the attributes of one level into `attrs`. At session level only
/// `a=setup` and `a=connection` may appear (RFC 4145 lets them default the
/// media level); wisp attributes there belong to no channel.
fn read_attrs(
    list: &[sdpt::Attribute],
    lines: &[usize],
    session_level: bool,
    attrs: &mut Attrs,
) -> Result<(), SdpError> {
    for (i, a) in list.iter().enumerate() {
        let line = lines.get(i).copied().unwrap_or(0);
        let Some(name) = our_name(&a.attribute, line)? else {
            continue;
        };
        if session_level && name != SETUP && name != CONNECTION {
            return Err(SdpError::MisplacedAttribute { line, name });
        }
        let value = a.value.as_deref().unwrap_or("");
        let bad = |why| SdpError::BadAttribute {
            line,
            name,
            value: clip(value),
            why,
        };
        if a.value.is_none() || value.is_empty() {
            return Err(bad("no value"));
        }
        match name {
            SETUP => {
                let v = Setup::from_value(value)
                    .ok_or_else(|| bad("not active, passive, actpass or holdconn"))?;
                set_once(&mut attrs.setup, v, line, name)?;
            }
            CONNECTION => {
                let v =
                    ConnectionAttr::from_value(value).ok_or_else(|| bad("not new or existing"))?;
                set_once(&mut attrs.connection, v, line, name)?;
            }
            WISP_PORT => {
                let v = canonical_dec::<u16>(value)
                    .filter(|&p| p != 0)
                    .ok_or_else(|| bad("not a port number 1-65535"))?;
                set_once(&mut attrs.wanted_port, v, line, name)?;
            }
            WISP_KEY => set_once(&mut attrs.key_share, key32(value).map_err(bad)?, line, name)?,
            WISP_MAC => set_once(&mut attrs.move_mac, key32(value).map_err(bad)?, line, name)?,
            WISP_MOVE | WISP_RX => {
                let v = canonical_dec::<u64>(value)
                    .ok_or_else(|| bad("not a canonical decimal 64-bit number"))?;
                let slot = if name == WISP_MOVE {
                    &mut attrs.move_counter
                } else {
                    &mut attrs.rx_bytes
                };
                set_once(slot, v, line, name)?;
            }
            _ => {
                if !is_stream_id(value) {
                    return Err(bad("not a token of at most 128 characters"));
                }
                set_once(&mut attrs.stream_id, value.to_string(), line, name)?;
            }
        }
    }
    Ok(())
}

/// The address of a c= line, refusing what a unicast TCP/UDP peer cannot
/// use: other network types, a family that contradicts the address, and
/// multicast TTL or address-count suffixes.
fn connection_ip(c: &sdpt::Connection, line: usize) -> Result<IpAddr, SdpError> {
    let bad = |why| SdpError::BadConnection {
        line,
        value: clip(&format!(
            "{} {} {}",
            c.nettype, c.addrtype, c.connection_address
        )),
        why,
    };
    if c.nettype != sdpt::NetType::In {
        return Err(bad("network type is not IN"));
    }
    let ip: IpAddr = c
        .connection_address
        .parse()
        .map_err(|_| bad("not an IP address literal"))?;
    match (&c.addrtype, ip) {
        (sdpt::AddrType::Ip4, IpAddr::V4(_)) | (sdpt::AddrType::Ip6, IpAddr::V6(_)) => Ok(ip),
        _ => Err(bad("address does not match IP4/IP6")),
    }
}

fn read_origin(o: &sdpt::Origin, line: usize, raw: &str) -> Result<(u64, u64, IpAddr), SdpError> {
    let bad = |why| SdpError::BadOrigin { line, why };
    // sdp-types keeps sess-id as text and reads sess-version with Rust's
    // parse (which accepts "+1"); check both fields as written.
    let mut fields = raw.split(' ').filter(|f| !f.is_empty()).skip(1);
    let id = fields.next().and_then(|f| {
        f.parse::<u64>()
            .ok()
            .filter(|_| f.bytes().all(|b| b.is_ascii_digit()))
    });
    let id = id.ok_or(bad("sess-id is not a 64-bit decimal number"))?;
    if !fields
        .next()
        .is_some_and(|f| f.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad("sess-version is not a decimal number"));
    }
    if o.nettype != sdpt::NetType::In {
        return Err(bad("network type is not IN"));
    }
    let ip: IpAddr = o
        .unicast_address
        .parse()
        .map_err(|_| bad("unicast-address is not an IP address literal"))?;
    match (&o.addrtype, ip) {
        (sdpt::AddrType::Ip4, IpAddr::V4(_)) | (sdpt::AddrType::Ip6, IpAddr::V6(_)) => {
            Ok((id, o.sess_version, ip))
        }
        _ => Err(bad("address does not match IP4/IP6")),
    }
}

impl SessionDesc {
    /// Print as RFC 8866 SDP with CRLF line ends. The session-level c= names
    /// the first channel's address so that the common single-channel body
    /// reads like any other SIP offer; channels elsewhere get their own c=.
    /// Only a description that passes [`SessionDesc::validate`] is promised
    /// to parse back; the printing itself never fails.
    pub fn to_bytes(&self) -> Vec<u8> {
        let session_ip = self
            .channels
            .first()
            .map(|c| c.addr.ip())
            .unwrap_or(self.origin_addr);
        let mut s = sdpt::Session::new(
            sdpt::Origin::with_ip_addr(self.session_id, self.version, self.origin_addr),
            "-",
        );
        s.connection = Some(sdpt::Connection::from_ip_addr(session_ip));
        s.times.push(sdpt::Time::new(0, 0));
        for ch in &self.channels {
            let mut m = sdpt::Media {
                media: "application".into(),
                port: ch.addr.port(),
                num_ports: None,
                proto: ch.proto.as_str().into(),
                fmt: "wisp".into(),
                media_title: None,
                connections: Vec::new(),
                bandwidths: Vec::new(),
                key: None,
                attributes: Vec::new(),
            };
            if ch.addr.ip() != session_ip {
                m.connections
                    .push(sdpt::Connection::from_ip_addr(ch.addr.ip()));
            }
            let mut attr = |name: &str, value: String| {
                m.attributes.push(sdpt::Attribute::with_value(name, value));
            };
            attr(SETUP, ch.setup.as_str().into());
            attr(CONNECTION, ch.connection.as_str().into());
            if let Some(p) = ch.wanted_port {
                attr(WISP_PORT, p.to_string());
            }
            if let Some(k) = &ch.key_share {
                attr(WISP_KEY, base64_encode(k));
            }
            if let Some(n) = ch.move_counter {
                attr(WISP_MOVE, n.to_string());
            }
            if let Some(k) = &ch.move_mac {
                attr(WISP_MAC, base64_encode(k));
            }
            if let Some(n) = ch.rx_bytes {
                attr(WISP_RX, n.to_string());
            }
            if let Some(id) = &ch.stream_id {
                attr(WISP_STREAM, id.clone());
            }
            s.medias.push(m);
        }
        let mut out = Vec::with_capacity(256 + 160 * self.channels.len());
        s.write(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Whether [`SessionDesc::to_bytes`] will print something that
    /// [`SessionDesc::parse`] reads back as this same description.
    pub fn validate(&self) -> Result<(), SdpError> {
        if self.channels.is_empty() {
            return Err(SdpError::Unprintable("no channel"));
        }
        for ch in &self.channels {
            if let SocketAddr::V6(a) = ch.addr {
                if a.scope_id() != 0 || a.flowinfo() != 0 {
                    return Err(SdpError::Unprintable("IPv6 scope id or flow label"));
                }
            }
            if ch.wanted_port == Some(0) {
                return Err(SdpError::Unprintable("wanted port 0"));
            }
            if ch.stream_id.as_deref().is_some_and(|s| !is_stream_id(s)) {
                return Err(SdpError::Unprintable("stream id is not a short token"));
            }
        }
        Ok(())
    }

    /// Read a body, refusing anything we cannot read completely.
    pub fn parse(bytes: &[u8]) -> Result<SessionDesc, SdpError> {
        if bytes.len() > MAX_SDP {
            return Err(SdpError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| SdpError::NotUtf8)?;
        let session = guarded(|| {
            sdpt::Session::parse(bytes).map_err(|e| SdpError::Syntax(clip(&e.to_string())))
        })?;
        let layout = scan(text)?;
        if layout.media.len() != session.medias.len() {
            return Err(SdpError::Syntax("media sections miscounted".into()));
        }
        let (o_line, o_raw) = layout.origin.unwrap_or((0, ""));
        let (session_id, version, origin_addr) = read_origin(&session.origin, o_line, o_raw)?;

        let mut defaults = Attrs::default();
        read_attrs(
            &session.attributes,
            &layout.session.attrs,
            true,
            &mut defaults,
        )?;
        let session_c = layout.session.conns.first().copied().unwrap_or(0);

        let mut channels = Vec::new();
        for (m, sec) in session.medias.iter().zip(&layout.media) {
            let fmts: Vec<&str> = m.fmt.split_whitespace().collect();
            if !m.media.eq_ignore_ascii_case("application") || !fmts.contains(&"wisp") {
                continue;
            }
            let line = sec.line;
            let bad_media = |field, value: &str| SdpError::BadMedia {
                line,
                field,
                value: clip(value),
            };
            if fmts != ["wisp"] {
                return Err(bad_media("format list", &m.fmt));
            }
            let proto = match m.proto.as_str() {
                "TCP" => ChannelProto::Tcp,
                "UDP" => ChannelProto::Udp,
                other => return Err(bad_media("proto", other)),
            };
            // sdp-types read the port with Rust's parse; check the spelling.
            let raw_port = sec.raw_m.split(' ').nth(1).unwrap_or("");
            if m.num_ports.is_some() {
                return Err(bad_media("port count", raw_port));
            }
            if canonical_dec::<u16>(raw_port) != Some(m.port) {
                return Err(bad_media("port", raw_port));
            }

            let ip = match (m.connections.as_slice(), &session.connection) {
                ([c], _) => connection_ip(c, sec.conns.first().copied().unwrap_or(line))?,
                ([], Some(c)) => connection_ip(c, session_c)?,
                ([], None) => return Err(SdpError::MissingConnection { line }),
                (_, _) => {
                    return Err(SdpError::BadConnection {
                        line: sec.conns.get(1).copied().unwrap_or(line),
                        value: clip(&m.connections[1].connection_address),
                        why: "more than one c= line for one channel",
                    })
                }
            };

            let mut a = Attrs::default();
            read_attrs(&m.attributes, &sec.attrs, false, &mut a)?;
            let setup = a
                .setup
                .or(defaults.setup)
                .ok_or(SdpError::MissingAttribute { line, name: SETUP })?;
            let connection =
                a.connection
                    .or(defaults.connection)
                    .ok_or(SdpError::MissingAttribute {
                        line,
                        name: CONNECTION,
                    })?;
            channels.push(Channel {
                proto,
                addr: SocketAddr::new(ip, m.port),
                setup,
                connection,
                wanted_port: a.wanted_port,
                key_share: a.key_share,
                move_counter: a.move_counter,
                move_mac: a.move_mac,
                rx_bytes: a.rx_bytes,
                stream_id: a.stream_id,
            });
        }
        if channels.is_empty() {
            return Err(SdpError::NoChannel);
        }
        Ok(SessionDesc {
            session_id,
            version,
            origin_addr,
            channels,
        })
    }
}

impl fmt::Display for SessionDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const MAC_B64: &str = "paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaU=";

    fn key() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    fn full_v4() -> SessionDesc {
        SessionDesc {
            session_id: 4242,
            version: 7,
            origin_addr: "192.0.2.10".parse().unwrap(),
            channels: vec![Channel {
                wanted_port: Some(8080),
                key_share: Some(key()),
                move_counter: Some(3),
                move_mac: Some([0xa5; 32]),
                rx_bytes: Some(123_456_789),
                stream_id: Some("s-1a2b".into()),
                ..Channel::new(
                    ChannelProto::Tcp,
                    "192.0.2.10:40001".parse().unwrap(),
                    Setup::ActPass,
                    ConnectionAttr::New,
                )
            }],
        }
    }

    const FULL_V4: &str = "v=0\r\n\
o=- 4242 7 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=application 40001 TCP wisp\r\n\
a=setup:actpass\r\n\
a=connection:new\r\n\
a=wisp-port:8080\r\n\
a=wisp-key:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\r\n\
a=wisp-move:3\r\n\
a=wisp-mac:paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaU=\r\n\
a=wisp-rx:123456789\r\n\
a=wisp-stream:s-1a2b\r\n";

    fn minimal_v6() -> SessionDesc {
        SessionDesc {
            session_id: u64::MAX,
            version: 0,
            origin_addr: "2001:db8::1".parse().unwrap(),
            channels: vec![Channel::new(
                ChannelProto::Udp,
                "[2001:db8::1]:0".parse().unwrap(),
                Setup::HoldConn,
                ConnectionAttr::Existing,
            )],
        }
    }

    /// Several channels, mixed families: the second and third need their
    /// own c= lines.
    fn multi() -> SessionDesc {
        let mut d = minimal_v6();
        d.channels.push(Channel {
            rx_bytes: Some(u64::MAX),
            ..Channel::new(
                ChannelProto::Tcp,
                "198.51.100.7:9".parse().unwrap(),
                Setup::Active,
                ConnectionAttr::New,
            )
        });
        d.channels.push(Channel {
            stream_id: Some("x".repeat(MAX_STREAM_ID)),
            ..Channel::new(
                ChannelProto::Tcp,
                "[::ffff:203.0.113.5]:65535".parse().unwrap(),
                Setup::Passive,
                ConnectionAttr::Existing,
            )
        });
        d
    }

    /// A softphone's audio offer (Linphone-like) with a wisp channel added.
    const SOFTPHONE: &str = "v=0\r\n\
o=alice 3724394400 3724394401 IN IP4 192.168.1.20\r\n\
s=Talk\r\n\
c=IN IP4 192.168.1.20\r\n\
b=AS:380\r\n\
t=0 0\r\n\
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics\r\n\
a=record:off\r\n\
m=audio 7078 RTP/AVP 96 0 8 101\r\n\
b=TIAS:64000\r\n\
a=rtpmap:96 opus/48000/2\r\n\
a=fmtp:96 useinbandfec=1\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=rtcp:7079\r\n\
a=sendrecv\r\n\
a=rtcp-fb:* trr-int 1000\r\n\
m=video 0 RTP/AVP 96\r\n\
m=application 9 TCP wisp\r\n\
a=setup:active\r\n\
a=connection:new\r\n\
a=wisp-port:5432\r\n\
a=sendrecv\r\n\
a=tool:something\r\n";

    fn round_trip(d: &SessionDesc) -> Vec<u8> {
        d.validate().unwrap();
        let bytes = d.to_bytes();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.ends_with("\r\n") && !text.replace("\r\n", "").contains(['\r', '\n']));
        let parsed = SessionDesc::parse(&bytes).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(&parsed, d);
        assert_eq!(parsed.to_bytes(), bytes, "print-parse-print differs");
        bytes
    }

    #[test]
    fn prints_the_documented_text() {
        assert_eq!(String::from_utf8(round_trip(&full_v4())).unwrap(), FULL_V4);
        assert_eq!(full_v4().to_string(), FULL_V4);
        let v6 = String::from_utf8(round_trip(&minimal_v6())).unwrap();
        assert_eq!(
            v6,
            "v=0\r\no=- 18446744073709551615 0 IN IP6 2001:db8::1\r\ns=-\r\n\
c=IN IP6 2001:db8::1\r\nt=0 0\r\nm=application 0 UDP wisp\r\n\
a=setup:holdconn\r\na=connection:existing\r\n"
        );
    }

    #[test]
    fn round_trips_every_optional_attribute_alone() {
        let addrs = ["10.1.2.3:5000", "[2001:db8::42]:5000"];
        for (n, addr) in addrs.iter().enumerate() {
            for opt in 0..=6 {
                let mut ch = Channel::new(
                    [ChannelProto::Tcp, ChannelProto::Udp][opt % 2],
                    addr.parse().unwrap(),
                    [
                        Setup::Active,
                        Setup::Passive,
                        Setup::ActPass,
                        Setup::HoldConn,
                    ][opt % 4],
                    [ConnectionAttr::New, ConnectionAttr::Existing][(opt / 2) % 2],
                );
                match opt {
                    0 => {}
                    1 => ch.wanted_port = Some(65535),
                    2 => ch.key_share = Some([0; 32]),
                    3 => ch.move_counter = Some(0),
                    4 => ch.move_mac = Some([0xff; 32]),
                    5 => ch.rx_bytes = Some(1),
                    _ => ch.stream_id = Some("~!#$%&'*+-.^_`{|}~09AZaz".into()),
                }
                let d = SessionDesc {
                    session_id: opt as u64,
                    version: n as u64,
                    origin_addr: ch.addr.ip(),
                    channels: vec![ch],
                };
                round_trip(&d);
            }
        }
    }

    #[test]
    fn round_trips_several_channels_and_families() {
        let text = String::from_utf8(round_trip(&multi())).unwrap();
        assert!(text.contains("c=IN IP6 2001:db8::1\r\nt=0 0\r\n"));
        assert!(text.contains("m=application 9 TCP wisp\r\nc=IN IP4 198.51.100.7\r\n"));
        assert!(text.contains("c=IN IP6 ::ffff:203.0.113.5\r\n"));
        // The origin address need not be a channel's.
        let mut d = full_v4();
        d.origin_addr = "2001:db8::9".parse().unwrap();
        round_trip(&d);
    }

    #[test]
    fn media_level_c_overrides_session_level() {
        let text = FULL_V4.replace(
            "m=application 40001 TCP wisp\r\n",
            "m=application 40001 TCP wisp\r\nc=IN IP6 2001:db8::7\r\n",
        );
        let d = SessionDesc::parse(text.as_bytes()).unwrap();
        assert_eq!(d.channels[0].addr, "[2001:db8::7]:40001".parse().unwrap());
    }

    #[test]
    fn bare_lf_and_blank_lines_read_like_crlf() {
        let lf = FULL_V4.replace("\r\n", "\n");
        assert_eq!(SessionDesc::parse(lf.as_bytes()).unwrap(), full_v4());
        let blank = FULL_V4.replace("t=0 0\r\n", "t=0 0\r\n\r\n");
        assert_eq!(SessionDesc::parse(blank.as_bytes()).unwrap(), full_v4());
    }

    #[test]
    fn softphone_offer_with_wisp_line_parses() {
        let d = SessionDesc::parse(SOFTPHONE.as_bytes()).unwrap();
        assert_eq!(d.session_id, 3724394400);
        assert_eq!(d.version, 3724394401);
        assert_eq!(d.channels.len(), 1, "audio and video are not channels");
        let ch = &d.channels[0];
        assert_eq!(ch.addr, "192.168.1.20:9".parse().unwrap());
        assert_eq!((ch.proto, ch.setup), (ChannelProto::Tcp, Setup::Active));
        assert_eq!(ch.wanted_port, Some(5432));
        assert_eq!(ch.key_share, None);

        // pjsip-style: c= only inside the audio section. That address is the
        // audio's, not ours.
        let pj = SOFTPHONE
            .replace("c=IN IP4 192.168.1.20\r\nb=AS:380\r\n", "")
            .replace(
                "m=audio 7078 RTP/AVP 96 0 8 101\r\n",
                "m=audio 7078 RTP/AVP 96 0 8 101\r\nc=IN IP4 192.168.1.20\r\n",
            );
        assert_eq!(
            SessionDesc::parse(pj.as_bytes()),
            Err(SdpError::MissingConnection { line: 17 })
        );
    }

    /// `FULL_V4` with `from` replaced by `to`; the replacement must happen.
    fn edit(from: &str, to: &str) -> String {
        assert!(FULL_V4.contains(from), "{from:?}");
        FULL_V4.replacen(from, to, 1)
    }

    fn refused(text: &str) -> SdpError {
        match SessionDesc::parse(text.as_bytes()) {
            Ok(d) => panic!("accepted {d:?} from\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn refuses_bad_media_lines() {
        let m = "m=application 40001 TCP wisp";
        for (to, field) in [
            ("m=application 40001 TCP/TLS wisp", "proto"),
            ("m=application 40001 SCTP wisp", "proto"),
            ("m=application 40001 tcp wisp", "proto"),
            ("m=application 40001 TCP wisp wisp", "format list"),
            ("m=application 40001 TCP wisp 5", "format list"),
            ("m=application +40001 TCP wisp", "port"),
            ("m=application 040001 TCP wisp", "port"),
            ("m=application 40001/2 TCP wisp", "port count"),
        ] {
            let e = refused(&edit(m, to));
            assert!(
                matches!(&e, SdpError::BadMedia { line: 6, field: f, .. } if *f == field),
                "{to}: {e:?}"
            );
            assert!(e.to_string().starts_with("line 6: bad "), "{e}");
        }
        for to in [
            "m=application 65536 TCP wisp",
            "m=application x TCP wisp",
            "m=application 40001 TCP",
        ] {
            assert!(matches!(refused(&edit(m, to)), SdpError::Syntax(_)), "{to}");
        }
    }

    #[test]
    fn refuses_missing_or_unusable_addresses() {
        let c = "c=IN IP4 192.0.2.10\r\n";
        assert_eq!(
            refused(&edit(c, "")),
            SdpError::MissingConnection { line: 5 }
        );
        assert_eq!(
            refused(&edit(c, "")).to_string(),
            "line 5: wisp channel has no c= line, nor has the session"
        );
        for to in [
            "c=IN IP4 2001:db8::1\r\n",
            "c=IN IP6 192.0.2.10\r\n",
            "c=IN IP4 224.2.1.1/127\r\n",
            "c=IN IP4 host.example.com\r\n",
            "c=IN IP4 192.0.2.010\r\n",
            "c=ATM NSAP 47.0091.8100.0000.0060.3e64.fd01.0060.3e64.fd01.00\r\n",
        ] {
            let e = refused(&edit(c, to));
            assert!(
                matches!(e, SdpError::BadConnection { line: 4, .. }),
                "{to}: {e:?}"
            );
        }
        let two = edit(
            "m=application 40001 TCP wisp\r\n",
            "m=application 40001 TCP wisp\r\nc=IN IP4 10.0.0.1\r\nc=IN IP4 10.0.0.2\r\n",
        );
        assert!(matches!(
            refused(&two),
            SdpError::BadConnection { line: 8, .. }
        ));
    }

    #[test]
    fn refuses_bad_setup_and_connection() {
        let e = refused(&edit("a=setup:actpass", "a=setup:sometimes"));
        assert_eq!(
            e.to_string(),
            "line 7: bad a=setup value \"sometimes\": not active, passive, actpass or holdconn"
        );
        assert!(matches!(
            refused(&edit("a=connection:new", "a=connection:maybe")),
            SdpError::BadAttribute {
                line: 8,
                name: "connection",
                ..
            }
        ));
        assert_eq!(
            refused(&edit("a=setup:actpass\r\n", "")),
            SdpError::MissingAttribute {
                line: 6,
                name: "setup"
            }
        );
        assert_eq!(
            refused(&edit("a=connection:new\r\n", "")),
            SdpError::MissingAttribute {
                line: 6,
                name: "connection"
            }
        );
        // Upper case is the same literal (ABNF), and prints back in lower case.
        let d = SessionDesc::parse(edit("a=setup:actpass", "a=setup:ACTPASS").as_bytes()).unwrap();
        assert_eq!(d, full_v4());
    }

    #[test]
    fn refuses_malformed_wisp_attributes() {
        let cases: &[(&str, &str)] = &[
            ("a=wisp-port:8080", "a=wisp-port:0"),
            ("a=wisp-port:8080", "a=wisp-port:65536"),
            ("a=wisp-port:8080", "a=wisp-port:http"),
            ("a=wisp-port:8080", "a=wisp-port: 8080"),
            ("a=wisp-port:8080", "a=wisp-port"),
            ("a=wisp-port:8080", "a=wisp-port:"),
            ("a=wisp-port:8080", "a=wisp-port :8080"),
            ("a=wisp-key:AAEC", "a=wisp-key:!!EC"),
            ("a=wisp-key:AAEC", "a=wisp-key: AAEC"),
            (KEY_B64, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg=="), // 31 bytes
            (KEY_B64, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g"), // 33 bytes
            (KEY_B64, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9="), // pad bits
            (KEY_B64, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"),  // unpadded
            (MAC_B64, "paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaU"),
            (MAC_B64, "paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpa=="),
            ("a=wisp-move:3", "a=wisp-move:-1"),
            ("a=wisp-move:3", "a=wisp-move:+3"),
            ("a=wisp-move:3", "a=wisp-move:03"),
            ("a=wisp-move:3", "a=wisp-move:3.0"),
            ("a=wisp-move:3", "a=wisp-move:18446744073709551616"),
            ("a=wisp-rx:123456789", "a=wisp-rx:0x75bcd15"),
            (
                "a=wisp-rx:123456789",
                "a=wisp-rx:99999999999999999999999999",
            ),
            ("a=wisp-stream:s-1a2b", "a=wisp-stream:s 1a2b"),
            ("a=wisp-stream:s-1a2b", "a=wisp-stream:s/1a2b"),
            ("a=wisp-stream:s-1a2b", "a=wisp-stream:s\u{e9}"),
        ];
        for (from, to) in cases {
            let e = refused(&edit(from, to));
            assert!(matches!(e, SdpError::BadAttribute { .. }), "{to}: {e:?}");
            assert!(e.to_string().contains(" bad a=wisp-"), "{e}");
        }
        let long = format!("a=wisp-stream:{}", "x".repeat(MAX_STREAM_ID + 1));
        assert!(matches!(
            refused(&edit("a=wisp-stream:s-1a2b", &long)),
            SdpError::BadAttribute {
                line: 14,
                name: "wisp-stream",
                ..
            }
        ));
    }

    #[test]
    fn refuses_duplicate_attributes() {
        for line in FULL_V4.lines().filter(|l| l.starts_with("a=")) {
            let twice = edit(line, &format!("{line}\r\n{line}"));
            let e = refused(&twice);
            assert!(
                matches!(e, SdpError::DuplicateAttribute { .. }),
                "{line}: {e:?}"
            );
            assert!(e.to_string().ends_with(" given twice"));
        }
        // Names compare without case, so a shouted copy is still a copy.
        let shout = edit("a=wisp-rx:123456789", "a=wisp-rx:123456789\r\na=WISP-RX:1");
        assert_eq!(
            refused(&shout),
            SdpError::DuplicateAttribute {
                line: 14,
                name: "wisp-rx"
            }
        );
    }

    #[test]
    fn session_level_attributes() {
        // a=setup and a=connection may default every channel (RFC 4145) ...
        let moved =
            edit("a=setup:actpass\r\n", "").replace("t=0 0\r\n", "t=0 0\r\na=setup:actpass\r\n");
        assert_eq!(SessionDesc::parse(moved.as_bytes()).unwrap(), full_v4());
        // ... and the media level wins over them.
        let both = FULL_V4.replace("t=0 0\r\n", "t=0 0\r\na=setup:passive\r\n");
        assert_eq!(SessionDesc::parse(both.as_bytes()).unwrap(), full_v4());
        // A wisp attribute there belongs to no channel.
        let misplaced = FULL_V4.replace("t=0 0\r\n", "t=0 0\r\na=wisp-rx:5\r\n");
        assert_eq!(
            refused(&misplaced),
            SdpError::MisplacedAttribute {
                line: 6,
                name: "wisp-rx"
            }
        );
    }

    #[test]
    fn refuses_bad_bodies() {
        let big = format!("{FULL_V4}{}", "a=x-pad:0123456789abcdef\r\n".repeat(700));
        assert_eq!(refused(&big), SdpError::TooLarge(big.len()));
        let mut latin1 = FULL_V4.as_bytes().to_vec();
        latin1.extend_from_slice(b"a=tool:caf\xe9\r\n");
        assert_eq!(SessionDesc::parse(&latin1), Err(SdpError::NotUtf8));
        assert!(matches!(refused(""), SdpError::Syntax(_)));
        assert!(matches!(refused("v=1\r\n"), SdpError::Syntax(_)));

        let audio_only = SOFTPHONE.split("m=application").next().unwrap();
        assert_eq!(refused(audio_only), SdpError::NoChannel);
        let other_app = SOFTPHONE.replace("TCP wisp", "UDP/DTLS/SCTP webrtc-datachannel");
        assert_eq!(refused(&other_app), SdpError::NoChannel);

        assert_eq!(
            refused(&edit("o=- 4242 7 IN IP4 192.0.2.10\r\n", "")),
            SdpError::MissingLine("o=")
        );
        assert_eq!(refused(&edit("s=-\r\n", "")), SdpError::MissingLine("s="));
        assert_eq!(refused(&edit("t=0 0\r\n", "")), SdpError::MissingLine("t="));
        for to in [
            "o=- 4242 7 IN IP4 host.example.com",
            "o=- 4242 7 IN IP6 192.0.2.10",
            "o=- 4242 +7 IN IP4 192.0.2.10",
            "o=- x4242 7 IN IP4 192.0.2.10",
            "o=- 18446744073709551616 7 IN IP4 192.0.2.10",
            "o=- 4242 7 TN RFC2543 192.0.2.10",
        ] {
            let e = refused(&edit("o=- 4242 7 IN IP4 192.0.2.10", to));
            assert!(
                matches!(e, SdpError::BadOrigin { line: 2, .. }),
                "{to}: {e:?}"
            );
        }
    }

    #[test]
    fn refuses_unknown_and_misplaced_line_types() {
        for (from, to, line, key) in [
            ("t=0 0\r\n", "t=0 0\r\nx=extension\r\n", 6, 'x'),
            ("a=setup:actpass\r\n", "a=setup:actpass\r\nX=1\r\n", 8, 'X'),
            ("a=setup:actpass\r\n", "a=setup:actpass\r\nv=0\r\n", 8, 'v'),
            (
                "a=setup:actpass\r\n",
                "a=setup:actpass\r\no=- 1 1 IN IP4 1.2.3.4\r\n",
                8,
                'o',
            ),
            (
                "a=setup:actpass\r\n",
                "a=setup:actpass\r\nt=0 0\r\n",
                8,
                't',
            ),
            ("s=-\r\n", "s=-\r\nv=0\r\n", 4, 'v'),
        ] {
            assert_eq!(
                refused(&edit(from, to)),
                SdpError::BadLine { line, key },
                "{to}"
            );
        }
    }

    #[test]
    fn offer_answer_roles() {
        use Setup::*;
        assert_eq!(answer_setup(Active), Passive);
        assert_eq!(answer_setup(Passive), Active);
        assert_eq!(answer_setup(ActPass), Passive);
        assert_eq!(answer_setup(HoldConn), HoldConn);
        let all = [Active, Passive, ActPass, HoldConn];
        let allowed: Vec<(Setup, Setup)> = all
            .iter()
            .flat_map(|&o| all.iter().map(move |&a| (o, a)))
            .filter(|&(o, a)| setup_compatible(o, a))
            .collect();
        assert_eq!(
            allowed,
            [
                (Active, Passive),
                (Active, HoldConn),
                (Passive, Active),
                (Passive, HoldConn),
                (ActPass, Active),
                (ActPass, Passive),
                (ActPass, HoldConn),
                (HoldConn, HoldConn),
            ]
        );
        for o in all {
            assert!(setup_compatible(o, answer_setup(o)));
        }
    }

    #[test]
    fn validate_names_what_cannot_be_printed() {
        let mut d = minimal_v6();
        d.channels[0].addr = "[fe80::1%2]:80".parse().unwrap();
        assert!(d.validate().is_err());
        let mut d = full_v4();
        d.channels[0].stream_id = Some("two words".into());
        assert!(d.validate().is_err());
        d.channels.clear();
        assert_eq!(d.validate(), Err(SdpError::Unprintable("no channel")));
        // Printing still never injects a line.
        let mut d = full_v4();
        d.channels[0].stream_id = Some("a\r\nm=audio 1 RTP/AVP 0".into());
        let text = String::from_utf8(d.to_bytes()).unwrap();
        assert!(text.contains("a=wisp-stream:am=audio 1 RTP/AVP 0\r\n"));
        assert!(SessionDesc::parse(text.as_bytes()).is_err());
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            assert_eq!(base64_decode(enc).as_deref(), Some(plain.as_bytes()));
        }
        assert_eq!(base64_encode(&key()), KEY_B64);
        for bad in [
            "Zg=", "Zh==", "Zm9=", "Z===", "====", "Zg==Zg==", "Zm9v\n", "Zm-v",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    /// Behaviour of sdp-types 0.3.1 that this module has to make up for.
    #[test]
    fn sdp_types_quirks() {
        let lenient = |text: &str| sdpt::Session::parse(text.as_bytes());

        // It skips unknown type letters and session lines inside a media
        // section, and invents an origin when o= is missing.
        assert!(lenient(&edit("t=0 0\r\n", "t=0 0\r\nx=1\r\n")).is_ok());
        assert!(lenient(&edit("a=setup:actpass\r\n", "a=setup:actpass\r\nv=9\r\n")).is_ok());
        let no_o = lenient(&edit("o=- 4242 7 IN IP4 192.0.2.10\r\n", "")).unwrap();
        assert_eq!(no_o.origin.unicast_address, "0.0.0.0");

        // Numbers go through Rust's parse, which takes a leading '+'.
        let plus = lenient(&edit("m=application 40001", "m=application +40001")).unwrap();
        assert_eq!(plus.medias[0].port, 40001);
        let plus = lenient(&edit(" 4242 7 ", " 4242 +7 ")).unwrap();
        assert_eq!(plus.origin.sess_version, 7);

        // Attribute names are not checked for being tokens.
        let spaced = lenient(&edit("a=wisp-rx:", "a=wisp-rx :")).unwrap();
        assert!(spaced.medias[0]
            .attributes
            .iter()
            .any(|a| a.attribute == "wisp-rx "));

        // Huge r= and z= values: overflow is an error, not a wrap or panic,
        // and a valid extreme value is kept (we ignore both lines).
        for (line, ok) in [
            ("r=7d 1h 0 25h", true),
            ("r=18446744073709551615 1", true),
            ("r=18446744073709551616 1", false),
            ("r=213503982334602d 1h", false),
            ("r=307445734561825861m 1", false),
            ("r=1d", false),
            ("z=0 -9223372036854775808", true),
            ("z=0 -9223372036854775809", false),
            ("z=0 9223372036854775808", false),
            ("z=18446744073709551615 -106751991167300d", true),
            ("z=0 1h 1", false),
            ("z=\u{1F600} 1", false),
        ] {
            let text = edit("t=0 0\r\n", &format!("t=0 0\r\n{line}\r\n"));
            assert_eq!(lenient(&text).is_ok(), ok, "{line}");
            let ours = SessionDesc::parse(text.as_bytes());
            if ok {
                assert_eq!(ours.unwrap(), full_v4(), "{line}");
            } else {
                assert!(matches!(ours, Err(SdpError::Syntax(_))), "{line}");
            }
        }
        // t= is u64 too.
        assert!(lenient(&edit("t=0 0", "t=0 18446744073709551615")).is_ok());
        assert!(SessionDesc::parse(edit("t=0 0", "t=0 18446744073709551616").as_bytes()).is_err());

        // Garbage gives errors, not panics. A lone "v=0" (or "v=0" plus an
        // m= line) is a whole session to sdp-types: o=, s= and t= are all
        // optional to it.
        for (junk, lenient_ok) in [
            (&b"\0"[..], false),
            (b"v", false),
            (b"v=0", true),
            (b"v=0\r\nm=", false),
            (b"v=0\nm=application 9 TCP wisp", true),
            (b"=\n=", false),
            (b"v=0\nm=a 1 b c\nc=", false),
            (b"\xff\xfe", false),
        ] {
            assert_eq!(sdpt::Session::parse(junk).is_ok(), lenient_ok, "{junk:?}");
            assert!(SessionDesc::parse(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn a_panicking_parser_is_contained() {
        let r: Result<(), SdpError> = guarded(|| panic!("sdp-types blew up"));
        assert_eq!(r, Err(SdpError::ParserPanicked));
        assert_eq!(guarded(|| Ok(5)), Ok(5));
    }

    /// xorshift64: deterministic, dependency-free randomness for the fuzz.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    fn split_lines(b: &[u8]) -> Vec<Vec<u8>> {
        b.split_inclusive(|&c| c == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        const BYTES: &[u8] = b"=: /\r\n\0\x7f\xc3\xa9\xff+-.0123456789amcvotsxIP4";
        const HUGE: &[&str] = &[
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999999999",
            "-9223372036854775808",
            "213503982334602d",
            "0",
            "65536",
            "+1",
            "-1",
            "1e9",
        ];
        let pos = rng.below(buf.len() + 1);
        match rng.below(11) {
            0 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] ^= 1 << rng.below(8);
            }
            1 => {
                let b = if rng.below(2) == 0 {
                    *rng.pick(BYTES)
                } else {
                    rng.next() as u8
                };
                buf.insert(pos, b);
            }
            2 if pos < buf.len() => {
                buf.remove(pos);
            }
            3 => {
                let end = (pos + rng.below(24)).min(buf.len());
                buf.drain(pos..end);
            }
            4 | 5 => {
                // Splice a line from any sample (possibly a duplicate).
                let mut lines = split_lines(buf);
                let donor = split_lines(&corpus[rng.below(corpus.len())]);
                let line = rng.pick(&donor).clone();
                let at = rng.below(lines.len() + 1);
                lines.insert(at, line);
                *buf = lines.concat();
            }
            6 => {
                // Replace the digit run nearest `pos` with an extreme number.
                let start = buf[pos..]
                    .iter()
                    .position(u8::is_ascii_digit)
                    .map(|i| pos + i);
                if let Some(s) = start {
                    let len = buf[s..].iter().take_while(|b| b.is_ascii_digit()).count();
                    buf.splice(s..s + len, rng.pick(HUGE).bytes());
                }
            }
            7 => {
                let mut lines = split_lines(buf);
                if lines.len() > 1 {
                    let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                    lines.swap(a, b);
                }
                *buf = lines.concat();
            }
            8 => {
                let names = [
                    "setup",
                    "connection",
                    "wisp-port",
                    "wisp-key",
                    "wisp-move",
                    "wisp-mac",
                    "wisp-rx",
                    "wisp-stream",
                    "WISP-KEY",
                ];
                let line = format!("a={}:{}\r\n", rng.pick(&names), rng.pick(HUGE));
                let mut lines = split_lines(buf);
                let at = rng.below(lines.len() + 1);
                lines.insert(at, line.into_bytes());
                *buf = lines.concat();
            }
            9 => buf.truncate(pos),
            _ => {
                // Blow a line up, sometimes past the size limit.
                let lines = split_lines(buf);
                if !lines.is_empty() {
                    let line = rng.pick(&lines).clone();
                    for _ in 0..rng.below(1200) {
                        buf.extend_from_slice(&line);
                    }
                }
            }
        }
    }

    #[test]
    fn mutation_fuzz_never_panics() {
        let corpus: Vec<Vec<u8>> = vec![
            FULL_V4.as_bytes().to_vec(),
            minimal_v6().to_bytes(),
            multi().to_bytes(),
            SOFTPHONE.as_bytes().to_vec(),
            FULL_V4.replace("\r\n", "\n").into_bytes(),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut runs, mut accepted) = (0, 0);
        for _ in 0..20_000 {
            let mut buf = rng.pick(&corpus).clone();
            for _ in 0..=rng.below(3) {
                mutate(&mut rng, &mut buf, &corpus);
            }
            runs += 1;
            match SessionDesc::parse(&buf) {
                Ok(d) => {
                    accepted += 1;
                    // Whatever we accept, we can say again and read back.
                    d.validate().unwrap();
                    assert_eq!(SessionDesc::parse(&d.to_bytes()).as_ref(), Ok(&d));
                }
                Err(e) => {
                    assert_ne!(
                        e,
                        SdpError::ParserPanicked,
                        "{:?}",
                        String::from_utf8_lossy(&buf)
                    );
                    let _ = e.to_string();
                }
            }
        }
        println!("sdp mutation fuzz: {runs} bodies parsed, {accepted} accepted, no panic");
        assert_eq!(runs, 20_000);
        assert!(accepted > 0 && accepted < runs);
    }
}
