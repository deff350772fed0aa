//! Deterministic mutation fuzzing of everything that reads bytes off the
//! network: `Message::parse`, the typed header views behind it, and the
//! stream framer.
//!
//! Our code runs inside unmodified programs, so a panic on a hostile packet
//! takes down someone else's process. This cannot prove there is none, but
//! it shakes a few hundred thousand near-misses of real messages at the
//! parsers on every `cargo test`, reproducibly: a failure prints the seed
//! and the input.
//!
//! `WISP_FUZZ_ITERS` and `WISP_FUZZ_SEED` override the defaults for a longer
//! or different run.

use sipcore::framing::{Frame, FrameError, StreamDecoder};
use sipcore::msg::{self, Message, Name};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;

/// Valid messages the mutations start from: requests and responses, long
/// and compact header names, IPv4 and IPv6, SDP bodies, digest
/// authentication, folded lines, UTF-8 display names.
const CORPUS: &[&str] = &[
    // RFC 3665-style INVITE with an SDP offer, compact headers, IPv6.
    "INVITE sip:bob@[2001:db8::2]:5060;transport=tcp SIP/2.0\r\n\
v: SIP/2.0/TCP [2001:db8::1]:5062;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
t: Bob <sip:bob@[2001:db8::2]>\r\n\
f: \"Fred\" <sip:fred@abcd.com>;tag=1928301774\r\n\
i: a84b4c76e66710@pc33.abcd.com\r\n\
CSeq: 314159 INVITE\r\n\
m: <sip:fred@[2001:db8::1]:5062;transport=tcp>;expires=60\r\n\
k: replaces, 100rel\r\n\
c: application/sdp\r\n\
l: 131\r\n\
\r\n\
v=0\r\n\
o=fred 2890844526 2890844526 IN IP6 2001:db8::1\r\n\
s=-\r\n\
c=IN IP6 2001:db8::1\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n",
    // REGISTER carrying digest credentials.
    "REGISTER sip:registrar.biloxi.com SIP/2.0\r\n\
Via: SIP/2.0/UDP bobspc.biloxi.com:5060;branch=z9hG4bKnashds7\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.com>\r\n\
From: Bob <sip:bob@biloxi.com>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1827 REGISTER\r\n\
Contact: <sip:bob@192.0.2.4>;expires=7200, <sip:bob@[2001:db8::4]:5070>;q=0.5\r\n\
Authorization: Digest username=\"bob\", realm=\"biloxi.com\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"sip:registrar.biloxi.com\", qop=auth, nc=00000001, cnonce=\"0a4f113b\", response=\"6629fae49393a05397450978507c4ef1\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\", algorithm=MD5\r\n\
Expires: 7200\r\n\
Content-Length: 0\r\n\
\r\n",
    // The challenge that precedes it.
    "SIP/2.0 401 Unauthorized\r\n\
Via: SIP/2.0/UDP bobspc.biloxi.com:5060;branch=z9hG4bKnashds7;received=192.0.2.4\r\n\
To: Bob <sip:bob@biloxi.com>;tag=2493k59kd\r\n\
From: Bob <sip:bob@biloxi.com>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
WWW-Authenticate: Digest realm=\"biloxi.com\", qop=\"auth,auth-int\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\", algorithm=SHA-256, stale=FALSE\r\n\
Content-Length: 0\r\n\
\r\n",
    // 200 OK with an SDP answer through two proxies.
    "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/TCP ss1.example.com;branch=z9hG4bK2d4790.1;received=192.0.2.111\r\n\
Via: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101\r\n\
Record-Route: <sip:ss1.example.com;lr>, <sip:[2001:db8::99];lr;transport=tcp>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: Bob <sip:bob@biloxi.example.com>;tag=314159\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:bob@client.biloxi.example.com;transport=tcp>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 147\r\n\
\r\n\
v=0\r\n\
o=bob 2890844527 2890844527 IN IP4 client.biloxi.example.com\r\n\
s=-\r\n\
c=IN IP4 192.0.2.201\r\n\
t=0 0\r\n\
m=audio 3456 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n",
    // ACK with Route set.
    "ACK sip:bob@client.biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74b76\r\n\
Max-Forwards: 70\r\n\
Route: <sip:ss1.example.com;lr>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: Bob <sip:bob@biloxi.example.com>;tag=314159\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
CSeq: 1 ACK\r\n\
Content-Length: 0\r\n\
\r\n",
    // RFC 4475 §3.1.1.1 (wsinv): folding, odd spacing and case. Its display
    // name `"J Rosenberg \\\""` is left out: ezk has no quoted-pair.
    "BYE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n\
TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n\
from   : \"J Rosenberg\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n\
MaX-fOrWaRdS: 0068\r\n\
Call-ID: wsinv.ndaksdj@192.0.2.1\r\n\
cseq: 0009\r\n  BYE\r\n\
Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;rport;branch=390skdjuw\r\n\
s :\r\n\
NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n\
UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n\
Content-Length: 0\r\n\
\r\n",
    // OPTIONS over IPv6 with received/rport already stamped.
    "OPTIONS sip:[2001:db8::10]:5070 SIP/2.0\r\n\
Via: SIP/2.0/UDP [2001:db8::9]:40000;branch=z9hG4bKopt1;received=2001:db8::9;rport=40000\r\n\
Max-Forwards: 70\r\n\
To: <sip:[2001:db8::10]:5070>\r\n\
From: <sip:wisp@[2001:db8::9]>;tag=abc\r\n\
Call-ID: opt-1@2001:db8::9\r\n\
CSeq: 7 OPTIONS\r\n\
Accept: application/sdp, text/plain\r\n\
Content-Length: 0\r\n\
\r\n",
    // MESSAGE with a UTF-8 display name and text body.
    "MESSAGE sip:user2@domain.com SIP/2.0\r\n\
Via: SIP/2.0/TCP user1pc.domain.com;branch=z9hG4bK776sgdkse\r\n\
Max-Forwards: 70\r\n\
From: \"Jos\u{e9} M\u{fc}ller \u{20ac}\" <sip:user1@domain.com>;tag=49583\r\n\
To: sip:user2@domain.com\r\n\
Call-ID: asd88asd77a@1.2.3.4\r\n\
CSeq: 1 MESSAGE\r\n\
Content-Type: text/plain;charset=UTF-8\r\n\
Content-Length: 18\r\n\
\r\n\
Watson, come here.",
    // 180 with compact names and a lower-case long one.
    "SIP/2.0 180 Ringing\r\n\
v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1;received=192.0.2.1\r\n\
f: <sip:a@b.example>;tag=1\r\n\
t: <sip:c@d.example>;tag=2\r\n\
i: 12345@192.0.2.1\r\n\
cseq: 2 INVITE\r\n\
m: <sip:c@192.0.2.2:5070>\r\n\
rseq: 1\r\n\
require: 100rel\r\n\
l: 0\r\n\
\r\n",
    // SUBSCRIBE with proxy credentials and event package.
    "SUBSCRIBE sip:presentity@example.com SIP/2.0\r\n\
Via: SIP/2.0/TLS watcher.example.com:5061;branch=z9hG4bKsub1\r\n\
Max-Forwards: 70\r\n\
From: <sip:watcher@example.com>;tag=xfg9\r\n\
To: <sip:presentity@example.com>\r\n\
Call-ID: 2010@watcher.example.com\r\n\
CSeq: 17766 SUBSCRIBE\r\n\
Event: presence;id=1\r\n\
Accept: application/pidf+xml\r\n\
Proxy-Authorization: Digest username=\"watcher\", realm=\"example.com\", nonce=\"ea9c8e88df84f1cec4341ae6cbe5a359\", uri=\"sip:presentity@example.com\", response=\"dfe56131d1958046689d83306477ecc\", algorithm=AKAv1-MD5\r\n\
Contact: <sip:watcher@watcher.example.com;transport=tls>\r\n\
Expires: 600\r\n\
Content-Length: 0\r\n\
\r\n",
    // CANCEL.
    "CANCEL sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9\r\n\
Max-Forwards: 70\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
CSeq: 1 CANCEL\r\n\
Content-Length: 0\r\n\
\r\n",
];

/// Inputs that once panicked inside a parser, run first on every seed.
const KNOWN_TRAPS: &[&str] = &[
    // ezk-sip-types 0.6.5 slices a digest algorithm at byte 4 (auth.rs:488).
    "REGISTER sip:r.example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP 192.0.2.4;branch=z9hG4bK1\r\n\
To: <sip:bob@example.com>\r\n\
From: <sip:bob@example.com>;tag=1\r\n\
Call-ID: trap1\r\n\
CSeq: 1 REGISTER\r\n\
Authorization: Digest username=\"bob\", realm=\"x\", nonce=\"1\", uri=\"sip:x\", response=\"0\", algorithm=SHA\u{e9}-256\r\n\
Content-Length: 0\r\n\
\r\n",
    "SIP/2.0 407 Proxy Authentication Required\r\n\
Via: SIP/2.0/TCP 192.0.2.4;branch=z9hG4bK1\r\n\
To: <sip:bob@example.com>;tag=2\r\n\
From: <sip:bob@example.com>;tag=1\r\n\
Call-ID: trap2\r\n\
CSeq: 1 INVITE\r\n\
Proxy-Authenticate: Digest realm=\"x\", nonce=\"1\", algorithm=\"AKA\u{e9}-MD5\"\r\n\
Content-Length: 0\r\n\
\r\n",
];

/// xorshift64*: tiny, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    /// Every seed its own stream (splitmix64 of it), never the all-zero
    /// state xorshift cannot leave.
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)).max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Bytes that matter to SIP's grammar, plus the ones that break UTF-8.
const INTERESTING: &[u8] =
    b"\r\n \t:;,=<>\"\\[]@%?&/0123456789-.+*~\x00\x7f\x80\xbf\xc3\xe2\xf0\xff";

/// Replacements for a digit run: overflow every integer type ezk or we
/// might parse into, plus signs and empties.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "+1",
    "",
    "256",
    "65536",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999999999999999999",
    "1e9",
    "0x10",
    "\u{661}",
];

/// Text fragments that have tripped string-slicing code before: multi-byte
/// characters where byte offsets are assumed to be char boundaries.
const UNICODE: &[&str] = &[
    "\u{e9}",
    "\u{20ac}",
    "\u{1d11e}",
    "AKAv\u{e9}-MD5",
    "\u{feff}",
    "\u{a0}",
];

/// Parameters whose values the grammars read.
const PARAMS: &[&str] = &[
    "algorithm",
    "qop",
    "nc",
    "nonce",
    "realm",
    "stale",
    "uri",
    "response",
    "tag",
    "branch",
    "received",
    "rport",
    "expires",
    "q",
    "transport",
    "lr",
    "maddr",
    "ttl",
    "id",
    "charset",
];

/// Pieces of parameter values, ASCII and not.
const PARAM_PIECES: &[&str] = &[
    "AKA",
    "v",
    "1",
    "-",
    "MD5",
    "SHA-256",
    "sess",
    "\"",
    "\u{e9}",
    "\u{20ac}",
    "\u{1d11e}",
    "=",
    "",
    "0",
    "99999999999",
    "[",
    "::1",
    "]",
    "%",
];

fn lines(text: &[u8]) -> Vec<&[u8]> {
    text.split_inclusive(|&b| b == b'\n').collect()
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(14) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let b = if rng.chance(2) {
                    *rng.pick(INTERESTING)
                } else {
                    rng.next() as u8
                };
                input.insert(rng.below(len + 1), b);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below(8.min(len - i));
                input.drain(i..i + n);
            }
            3 => {
                // Splice a line from another message in at a line boundary.
                let other = rng.pick(CORPUS).as_bytes();
                let their = lines(other);
                let line = rng.pick(&their).to_vec();
                let ours = lines(input);
                let at: usize = ours[..rng.below(ours.len() + 1)]
                    .iter()
                    .map(|l| l.len())
                    .sum();
                input.splice(at..at, line);
            }
            4 => {
                // Duplicate a header line (Via, Content-Length, Call-ID...).
                let ours = lines(input);
                if ours.len() > 1 {
                    let k = 1 + rng.below(ours.len() - 1);
                    let at: usize = ours[..k].iter().map(|l| l.len()).sum();
                    let line = ours[k].to_vec();
                    input.splice(at..at, line);
                }
            }
            5 => {
                // Replace a digit run by a huge or odd number.
                let digits: Vec<usize> = (0..len).filter(|&i| input[i].is_ascii_digit()).collect();
                if !digits.is_empty() {
                    let start = *rng.pick(&digits);
                    let end = (start..len)
                        .find(|&i| !input[i].is_ascii_digit())
                        .unwrap_or(len);
                    let number = rng.pick(NUMBERS).as_bytes().to_vec();
                    input.splice(start..end, number);
                }
            }
            6 => {
                let bad: &[&[u8]] = &[
                    b"\xff",
                    b"\xc3\x28",
                    b"\xe2\x82",
                    b"\xf0\x9f\x92",
                    b"\xed\xa0\x80",
                ];
                let seq = rng.pick(bad).to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, seq);
            }
            7 => {
                let at = rng.below(len + 1);
                input.truncate(at);
            }
            8 => {
                let text = rng.pick(UNICODE).as_bytes().to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, text);
            }
            9 => {
                // Line ending games: CRLF to LF, LF to CR, fold a line.
                let crlf: Vec<usize> = (0..len.saturating_sub(1))
                    .filter(|&i| &input[i..i + 2] == b"\r\n")
                    .collect();
                if !crlf.is_empty() {
                    let i = *rng.pick(&crlf);
                    match rng.below(3) {
                        0 => drop(input.remove(i)),
                        1 => drop(input.remove(i + 1)),
                        _ => input.insert(i + 2, b' '),
                    }
                }
            }
            10 => {
                let ours = lines(input);
                if ours.len() > 2 {
                    let (a, b) = (rng.below(ours.len()), rng.below(ours.len()));
                    let mut shuffled: Vec<Vec<u8>> = ours.iter().map(|l| l.to_vec()).collect();
                    shuffled.swap(a, b);
                    *input = shuffled.concat();
                }
            }
            11 if len > 0 => {
                // Repeat a chunk: long values, long heads. Rarely past the
                // size limit, where the framer has to give up.
                let i = rng.below(len);
                let n = 1 + rng.below(16.min(len - i));
                let times = if rng.chance(200) {
                    MAX_REPEAT
                } else {
                    1 + rng.below(64)
                };
                let chunk = input[i..i + n].repeat(times);
                input.splice(i..i, chunk);
            }
            12 if rng.chance(2) => {
                // Give a parameter an odd value: the typed grammars slice
                // and match on these.
                let text = String::from_utf8_lossy(input).into_owned();
                let name = rng.pick(PARAMS);
                if let Some(at) = text.find(&format!("{name}=")) {
                    let start = at + name.len() + 1;
                    let end = text[start..]
                        .find([',', ';', '\r', '>', ' '])
                        .map_or(text.len(), |e| start + e);
                    let value: String = (0..1 + rng.below(4))
                        .map(|_| *rng.pick(PARAM_PIECES))
                        .collect();
                    *input = format!("{}{value}{}", &text[..start], &text[end..]).into_bytes();
                }
            }
            12 => {
                // Retarget Content-Length at a random nearby value.
                let text = String::from_utf8_lossy(input).into_owned();
                let n = rng.below(300);
                let replaced = text
                    .replacen("Content-Length: 0", &format!("Content-Length: {n}"), 1)
                    .replacen("l: 0", &format!("l: {n}"), 1);
                if replaced != text {
                    *input = replaced.into_bytes();
                }
            }
            _ => {
                // Join with another message, as on a stream.
                let other = rng.pick(CORPUS).as_bytes();
                if rng.chance(2) {
                    input.extend_from_slice(b"\r\n\r\n");
                }
                input.extend_from_slice(other);
            }
        }
    }
}

const MAX_REPEAT: usize = 5000;

thread_local! {
    /// Panics counted here are the fuzzer's business; any other is a test
    /// failure and goes to the usual hook.
    static FUZZING: Cell<bool> = const { Cell::new(false) };
}

/// Every panic seen while fuzzing, by location, including those that
/// msg.rs's own `catch_unwind` stops.
static PANICS: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

/// Run `f`, turning a panic into `Err` without letting it print.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, ()> {
    FUZZING.with(|c| c.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f)).map_err(|_| ());
    FUZZING.with(|c| c.set(false));
    result
}

/// Use every read-only view a transport or proxy will, on a message that
/// parsed; they must not panic either.
fn exercise(m: &Message) {
    use ezk_sip_types::header::typed::{AuthChallenge, AuthResponse, ContentType, Routing};
    let _ = (m.top_via(), m.branch(), m.cseq(), m.call_id());
    let _ = (m.from(), m.to(), m.from_tag(), m.to_tag());
    let _ = (
        m.contacts(),
        m.content_type(),
        m.expires(),
        m.max_forwards(),
    );
    for via in m.vias() {
        let _ = msg::response_target(&via, 5060);
    }
    if let Some(uri) = m.uri() {
        let _ = msg::uri_addr(uri);
    }
    for name in [Name::RECORD_ROUTE, Name::ROUTE] {
        for v in m.list(&name) {
            let _ = msg::parse_value::<Routing>(&v);
        }
    }
    for name in [Name::WWW_AUTHENTICATE, Name::PROXY_AUTHENTICATE] {
        for v in m.headers.get_raw(&name) {
            let _ = msg::parse_value::<AuthChallenge>(v);
        }
    }
    for name in [Name::AUTHORIZATION, Name::PROXY_AUTHORIZATION] {
        for v in m.headers.get_raw(&name) {
            let _ = msg::parse_value::<AuthResponse>(v);
        }
    }
    if let Some(v) = m.content_type() {
        let _ = msg::parse_value::<ContentType>(v);
    }
    let mut stamped = m.clone();
    let src: SocketAddr = "[2001:db8::77]:41000".parse().unwrap();
    stamped.stamp_received(src);
    let _ = stamped.to_bytes();
    if m.is_request() {
        let _ = Message::response_to(m, 200, Some("fuzz")).to_bytes();
    }
}

/// One decoder item, comparable across chunkings: a keep-alive, a message
/// as printed, or an error.
fn describe(item: Result<Frame, FrameError>) -> Option<String> {
    match item {
        Ok(Frame::Message(m)) => Some(format!("MSG {}", String::from_utf8_lossy(&m.to_bytes()))),
        Ok(Frame::Ping) => Some("PING".into()),
        // Whether a CRLF is first seen alone depends on where reads split.
        Ok(Frame::Pong) => None,
        Err(e) => Some(format!("ERR {e:?}")),
    }
}

fn decode(input: &[u8], cuts: &[usize]) -> Vec<String> {
    let mut d = StreamDecoder::new();
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain([input.len()].iter()) {
        d.push(&input[from..cut]);
        from = cut;
        for item in d.by_ref() {
            out.extend(describe(item));
        }
    }
    out
}

#[derive(Default, Debug)]
struct Tally {
    inputs: usize,
    parsed: usize,
    rejected: BTreeMap<&'static str, usize>,
    frames: usize,
    malformed_frames: usize,
    fatal_streams: usize,
    escaped_panics: usize,
    reprint_too_large: usize,
}

fn error_kind(e: &msg::ParseError) -> &'static str {
    use msg::ParseError::*;
    match e {
        TooLarge(_) => "TooLarge",
        NotUtf8 => "NotUtf8",
        Incomplete => "Incomplete",
        BadStartLine(_) => "BadStartLine",
        BadHeaderLine(_) => "BadHeaderLine",
        BadHeader(..) => "BadHeader",
        MissingHeader(_) => "MissingHeader",
        BadContentLength(_) => "BadContentLength",
        BodyTruncated { .. } => "BodyTruncated",
    }
}

fn fuzz_one(input: &[u8], rng: &mut Rng, tally: &mut Tally, failures: &mut Vec<String>) {
    tally.inputs += 1;
    let show = |input: &[u8]| {
        let text = String::from_utf8_lossy(input).escape_debug().to_string();
        match text.char_indices().nth(600) {
            Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], input.len()),
            None => text,
        }
    };

    match guarded(|| Message::parse(input)) {
        Err(()) => {
            tally.escaped_panics += 1;
            failures.push(format!("Message::parse panicked on {}", show(input)));
        }
        Ok(Err(e)) => *tally.rejected.entry(error_kind(&e)).or_default() += 1,
        Ok(Ok(m)) => {
            tally.parsed += 1;
            if guarded(|| exercise(&m)).is_err() {
                tally.escaped_panics += 1;
                failures.push(format!("a view panicked on {}", show(input)));
            }
            let printed = m.to_bytes();
            match guarded(|| Message::parse(&printed)) {
                Ok(Ok(again)) => {
                    // Printing is a fixed point after one round.
                    if again.to_bytes() != printed {
                        failures.push(format!("reprint differs for {}", show(input)));
                    }
                }
                // Compact names print long, so a message near the limit
                // can outgrow it: noted, not a bug in the round trip.
                Ok(Err(msg::ParseError::TooLarge(_))) if printed.len() > msg::MAX_MESSAGE => {
                    tally.reprint_too_large += 1;
                }
                Ok(Err(e)) => failures.push(format!(
                    "reprint does not parse ({e}): {} from {}",
                    show(&printed),
                    show(input)
                )),
                Err(()) => {
                    tally.escaped_panics += 1;
                    failures.push(format!("reparse panicked on {}", show(&printed)));
                }
            }
        }
    }

    // The stream framer: whole, then cut at random points; the result must
    // not depend on where reads split.
    let mut cuts: Vec<usize> = (0..rng.below(6))
        .map(|_| rng.below(input.len() + 1))
        .collect();
    if rng.chance(50) && input.len() < 4096 {
        cuts = (1..input.len()).collect();
    }
    cuts.sort_unstable();
    match (
        guarded(|| decode(input, &[])),
        guarded(|| decode(input, &cuts)),
    ) {
        (Ok(whole), Ok(chunked)) => {
            tally.frames += whole.iter().filter(|s| s.starts_with("MSG")).count();
            tally.malformed_frames += whole
                .iter()
                .filter(|s| s.starts_with("ERR Malformed"))
                .count();
            tally.fatal_streams += whole
                .iter()
                .filter(|s| s.starts_with("ERR") && !s.starts_with("ERR Malformed"))
                .count();
            if whole != chunked {
                failures.push(format!(
                    "framing depends on chunking {cuts:?}: {whole:?} vs {chunked:?} for {}",
                    show(input)
                ));
            }
        }
        _ => {
            tally.escaped_panics += 1;
            failures.push(format!("StreamDecoder panicked on {}", show(input)));
        }
    }
}

#[test]
fn mutated_messages_never_panic_and_reprint() {
    let iterations: usize = std::env::var("WISP_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            20_000
        } else {
            200_000
        });
    let seed: u64 = std::env::var("WISP_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5157_5f66_757a_7a31);

    // Count panics instead of printing them; only while fuzzing, so a
    // failing assertion below still reports as usual.
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if FUZZING.with(Cell::get) {
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let what: String = what.chars().take(120).collect();
            *PANICS
                .lock()
                .unwrap()
                .entry(format!("{at}: {what}"))
                .or_default() += 1;
        } else {
            default_hook(info);
        }
    }));

    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for text in CORPUS {
        // The corpus itself must be valid, or the mutations prove little.
        if let Err(e) = Message::parse(text.as_bytes()) {
            panic!("corpus does not parse ({e:?}): {text}");
        }
        fuzz_one(text.as_bytes(), &mut rng, &mut tally, &mut failures);
    }
    for text in KNOWN_TRAPS {
        fuzz_one(text.as_bytes(), &mut rng, &mut tally, &mut failures);
    }
    while tally.inputs < iterations {
        let mut input = rng.pick(CORPUS).as_bytes().to_vec();
        mutate(&mut rng, &mut input);
        fuzz_one(&input, &mut rng, &mut tally, &mut failures);
    }
    let _ = panic::take_hook();

    let panics = PANICS.lock().unwrap().clone();
    eprintln!("fuzz_parsers: seed {seed:#x}, {} inputs run", tally.inputs);
    eprintln!("fuzz_parsers: {tally:?}");
    for (at, n) in &panics {
        eprintln!("fuzz_parsers: {n} panic(s) at {at}");
    }
    for f in failures.iter().take(5) {
        eprintln!("fuzz_parsers: FAILURE {f}");
    }
    assert!(
        failures.is_empty(),
        "{} failures, first: {}",
        failures.len(),
        failures[0]
    );
    assert_eq!(tally.escaped_panics, 0);
    assert!(
        panics.is_empty(),
        "panics caught inside the parsers: {panics:?}"
    );
    // The mutations must leave a fair share parseable, or they only test
    // the first few bytes of the grammar.
    assert!(tally.parsed * 10 > tally.inputs, "{tally:?}");
}
