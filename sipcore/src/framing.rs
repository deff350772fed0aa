//! Cutting the byte stream of a TCP (or TLS) connection into SIP messages
//! (RFC 3261 §18.3).
//!
//! On a stream only Content-Length says where a message ends. When it is
//! missing, unreadable or absurd there is no telling where the next message
//! starts, so those errors are fatal: the transport must close the
//! connection. A message that frames cleanly but does not parse costs only
//! itself; the transport can answer it with a 400 and read on.
//!
//! Sans-IO: the transport [`push`](StreamDecoder::push)es what it reads and
//! then drains the decoder (it is an [`Iterator`]) until it yields `None`.

use crate::msg::{content_length_of, Message, Name, ParseError, MAX_MESSAGE};
use bytes::{Buf, Bytes, BytesMut};
use std::fmt;

/// One item cut from the stream.
// Nearly every item is a message: boxing it would cost an allocation per
// message to save bytes on the rare keep-alive.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Frame {
    Message(Message),
    /// A double CRLF between messages: an RFC 5626 §3.5.1 keep-alive ping.
    /// The transport should answer with a single CRLF.
    Ping,
    /// A single CRLF between messages not (yet) followed by a second one:
    /// the answer to our ping (RFC 5626 §4.4.1). If the second CRLF arrives
    /// later the pair is reported as a [`Frame::Ping`] after this `Pong`, so
    /// a ping split across reads is still answered. A CRLF that merely
    /// precedes a message (RFC 3261 §7.5) is reported as a `Pong` too, which
    /// a transport not waiting for one can ignore.
    Pong,
}

/// Why the stream did not yield a message. Only
/// [`FrameError::Malformed`] leaves the connection usable; see
/// [`FrameError::is_fatal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The message was cut cleanly but does not parse. `raw` is the whole
    /// frame, head and body, so the transport can build a 400 from what is
    /// readable in it (RFC 3261 §8.2.2), or drop it if it was a response.
    Malformed { error: ParseError, raw: Bytes },
    /// A head without Content-Length: allowed on UDP only (RFC 3261 §18.3).
    MissingContentLength,
    /// Content-Length unreadable, or given twice with different values.
    BadContentLength(String),
    /// No blank line within [`MAX_MESSAGE`] bytes.
    HeadTooLong,
    /// Head plus Content-Length would exceed [`MAX_MESSAGE`]; the value is
    /// the length the message claimed.
    TooLarge(usize),
}

impl FrameError {
    /// True when the stream cannot be cut any further and the connection
    /// must be closed. The decoder yields nothing after a fatal error.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::Malformed { .. })
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Malformed { error, raw } => {
                write!(f, "malformed message of {} bytes: {error}", raw.len())
            }
            FrameError::MissingContentLength => {
                write!(f, "message on a stream without Content-Length")
            }
            FrameError::BadContentLength(v) => write!(f, "bad Content-Length {v:?}"),
            FrameError::HeadTooLong => {
                write!(f, "no end of message head within {MAX_MESSAGE} bytes")
            }
            FrameError::TooLarge(n) => {
                write!(f, "message of {n} bytes exceeds {MAX_MESSAGE}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

#[derive(Debug)]
enum State {
    /// Between messages: CRLF keep-alives may come before the next head.
    Idle,
    /// A head starts at the front of the buffer. `searched` bytes of it have
    /// been looked through for the blank line already, so a head that
    /// trickles in a byte at a time is scanned once, not once per byte.
    Head { searched: usize },
    /// The head is read and parsed; waiting for the rest of the frame.
    Body {
        head_len: usize,
        frame_len: usize,
        head: Box<Result<Message, ParseError>>,
    },
    /// A fatal error was reported.
    Closed,
}

/// Splits a stream into SIP messages by Content-Length.
///
/// Feed it with [`push`](Self::push), then call `next` until it returns
/// `None`, which means "need more bytes" (so the iterator is not fused) or,
/// after a fatal error, "never again". Drained that way after every read,
/// the buffer holds less than one [`MAX_MESSAGE`] plus the last read:
/// consumed bytes are released, and a peer that never finishes a message is
/// cut off at `MAX_MESSAGE`.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: BytesMut,
    state: State,
    /// The last item was a [`Frame::Pong`] for a CRLF that a second CRLF may
    /// still turn into a ping.
    lone_crlf: bool,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        StreamDecoder::new()
    }
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder {
            buf: BytesMut::new(),
            state: State::Idle,
            lone_crlf: false,
        }
    }

    /// Append bytes read from the connection. Ignored once the stream is
    /// closed, so a transport slow to act on a fatal error does not pile up
    /// a hostile peer's bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.is_closed() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes received but not yet yielded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// A fatal error has been reported; the connection should be closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    fn fail(&mut self, error: FrameError) -> Option<Result<Frame, FrameError>> {
        self.state = State::Closed;
        self.buf = BytesMut::new();
        Some(Err(error))
    }

    /// Keep-alives in front of the next head (RFC 5626 §3.5.1, RFC 3261
    /// §7.5): `Some(Some(frame))` for one, `Some(None)` once a head starts
    /// at the front of the buffer, `None` when more bytes must decide.
    fn idle(&mut self) -> Option<Option<Frame>> {
        loop {
            match &self.buf[..] {
                [b'\r', b'\n', ..] if self.lone_crlf => {
                    self.buf.advance(2);
                    self.lone_crlf = false;
                    return Some(Some(Frame::Ping));
                }
                [] | [b'\r'] | [b'\r', b'\n', b'\r'] => return None,
                // Stray LFs from LF-only peers carry nothing; skip them.
                [b'\n', ..] => self.buf.advance(1),
                [b'\r', b'\n', b'\r', b'\n', ..] => {
                    self.buf.advance(4);
                    return Some(Some(Frame::Ping));
                }
                [b'\r', b'\n', ..] => {
                    self.buf.advance(2);
                    self.lone_crlf = true;
                    return Some(Some(Frame::Pong));
                }
                _ => {
                    self.lone_crlf = false;
                    return Some(None);
                }
            }
        }
    }

    /// Find the blank line ending a head that started at the front of the
    /// buffer, looking only at bytes from `from` on. Both CRLF CRLF and the
    /// LF LF of LF-only peers end it, as they do for [`Message::parse_head`].
    fn head_end(&self, from: usize) -> Option<usize> {
        let buf = &self.buf[..];
        let mut i = from;
        while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
            let lf = i + off;
            if (lf >= 1 && buf[lf - 1] == b'\n') || (lf >= 3 && &buf[lf - 3..lf] == b"\r\n\r") {
                return Some(lf + 1);
            }
            i = lf + 1;
        }
        None
    }

    /// Content-Length of a complete head, read leniently enough to frame a
    /// head that [`Message::parse_head`] rejects for other reasons, and with
    /// the parser's own rules where it has any: header names as ezk reads
    /// them (so `l` counts), folded lines joined, whitespace collapsed.
    fn content_length(head: &[u8]) -> Result<Option<usize>, ParseError> {
        // Unfold first (RFC 3261 §7.3.1), as the parser does, so a name or
        // value spread over continuation lines reads the same here.
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for line in head.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match lines.last_mut() {
                Some(last) if line.first().is_some_and(|&b| b == b' ' || b == b'\t') => {
                    last.push(b' ');
                    last.extend_from_slice(line);
                }
                _ => lines.push(line.to_vec()),
            }
        }
        let values: Vec<String> = lines
            .iter()
            .skip(1) // the start line
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                let name = std::str::from_utf8(&line[..colon]).ok()?;
                (Name::CONTENT_LENGTH == *name.trim()).then(|| {
                    let value = String::from_utf8_lossy(&line[colon + 1..]);
                    value.split_whitespace().collect::<Vec<_>>().join(" ")
                })
            })
            .collect();
        content_length_of(values.iter().map(String::as_str))
    }

    /// Once the head is complete: decide the frame length and parse the head.
    fn start_body(&mut self, head_len: usize) -> Option<Result<Frame, FrameError>> {
        let head = &self.buf[..head_len];
        let content_length = match StreamDecoder::content_length(head) {
            Ok(Some(n)) => n,
            Ok(None) => return self.fail(FrameError::MissingContentLength),
            Err(ParseError::TooLarge(n)) => return self.fail(FrameError::TooLarge(head_len + n)),
            Err(ParseError::BadContentLength(v)) => {
                return self.fail(FrameError::BadContentLength(v))
            }
            Err(e) => return self.fail(FrameError::BadContentLength(e.to_string())),
        };
        let frame_len = head_len + content_length;
        if frame_len > MAX_MESSAGE {
            return self.fail(FrameError::TooLarge(frame_len));
        }
        let parsed = match Message::parse_head(head) {
            Ok((msg, len, n)) if len == head_len && n == Some(content_length) => Ok(msg),
            // Our reading and the parser's must agree, or the stream could
            // be cut where a downstream hop would not cut it.
            Ok((_, _, n)) if n != Some(content_length) => {
                return self.fail(FrameError::BadContentLength(format!(
                    "framed as {content_length}, parsed as {n:?}"
                )))
            }
            Ok(_) => Err(ParseError::Incomplete),
            Err(ParseError::BadContentLength(v)) => {
                return self.fail(FrameError::BadContentLength(v))
            }
            Err(ParseError::TooLarge(n)) => return self.fail(FrameError::TooLarge(head_len + n)),
            Err(e) => Err(e),
        };
        self.state = State::Body {
            head_len,
            frame_len,
            head: Box::new(parsed),
        };
        None
    }

    /// Hand out the frame whose bytes are all buffered.
    fn take_frame(&mut self) -> Option<Result<Frame, FrameError>> {
        let State::Body {
            head_len,
            frame_len,
            head,
        } = std::mem::replace(&mut self.state, State::Idle)
        else {
            return None;
        };
        let raw = self.buf.split_to(frame_len).freeze();
        Some(match *head {
            Ok(mut msg) => {
                msg.body = raw.slice(head_len..);
                Ok(Frame::Message(msg))
            }
            Err(error) => Err(FrameError::Malformed { error, raw }),
        })
    }
}

impl Iterator for StreamDecoder {
    type Item = Result<Frame, FrameError>;

    /// The next message, keep-alive or error; `None` when more bytes are
    /// needed, and forever after a fatal error.
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match &mut self.state {
                State::Closed => return None,
                State::Idle => match self.idle()? {
                    Some(frame) => return Some(Ok(frame)),
                    None => self.state = State::Head { searched: 0 },
                },
                State::Head { searched } => {
                    let from = *searched;
                    match self.head_end(from) {
                        Some(head_len) if head_len > MAX_MESSAGE => {
                            return self.fail(FrameError::HeadTooLong)
                        }
                        Some(head_len) => {
                            if let Some(fatal) = self.start_body(head_len) {
                                return Some(fatal);
                            }
                        }
                        None if self.buf.len() > MAX_MESSAGE => {
                            return self.fail(FrameError::HeadTooLong)
                        }
                        None => {
                            self.state = State::Head {
                                searched: self.buf.len(),
                            };
                            return None;
                        }
                    }
                }
                State::Body { frame_len, .. } => {
                    if self.buf.len() < *frame_len {
                        return None;
                    }
                    return self.take_frame();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &str = "REGISTER sip:registrar.example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP 192.0.2.4:5060;branch=z9hG4bKnashds7\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.com>\r\n\
From: Bob <sip:bob@example.com>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:bob@192.0.2.4;transport=tcp>\r\n\
Expires: 7200\r\n\
Content-Length: 0\r\n\
\r\n";

    /// Compact headers, and an SDP body with an empty line in it, so a
    /// framer that looked for the blank line twice would cut it short.
    const INVITE: &str = "INVITE sip:bob@[2001:db8::2] SIP/2.0\r\n\
v: SIP/2.0/TCP [2001:db8::1]:5062;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
t: Bob <sip:bob@[2001:db8::2]>\r\n\
f: Fred <sip:fred@abcd.com>;tag=1928301774\r\n\
i: a84b4c76e66710@pc33.abcd.com\r\n\
CSeq: 314159 INVITE\r\n\
m: <sip:fred@[2001:db8::1]:5062;transport=tcp>\r\n\
c: application/sdp\r\n\
l: 30\r\n\
\r\n\
v=0\r\n\
\r\n\
\r\n\
s=-\r\n\
\r\n\
c=IN IP6 ::1\r\n";

    const OK: &str = "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/TCP 192.0.2.4:5060;branch=z9hG4bKnashds7;received=192.0.2.4\r\n\
To: Bob <sip:bob@example.com>;tag=2493k59kd\r\n\
From: Bob <sip:bob@example.com>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Content-Length: 0\r\n\
\r\n";

    fn drain(d: &mut StreamDecoder) -> Vec<Result<Frame, FrameError>> {
        d.by_ref().collect()
    }

    /// What came out, as text a test can compare: the message re-printed,
    /// or the name of a keep-alive or error.
    fn show(items: &[Result<Frame, FrameError>]) -> Vec<String> {
        items
            .iter()
            .map(|item| match item {
                Ok(Frame::Message(m)) => String::from_utf8(m.to_bytes()).unwrap(),
                Ok(Frame::Ping) => "PING".into(),
                Ok(Frame::Pong) => "PONG".into(),
                Err(FrameError::Malformed { error, raw }) => {
                    format!("MALFORMED {error:?} {}", raw.len())
                }
                Err(e) => format!("FATAL {e:?}"),
            })
            .collect()
    }

    fn printed(text: &str) -> String {
        String::from_utf8(Message::parse(text.as_bytes()).unwrap().to_bytes()).unwrap()
    }

    fn decode_all(bytes: &[u8]) -> Vec<Result<Frame, FrameError>> {
        let mut d = StreamDecoder::new();
        d.push(bytes);
        drain(&mut d)
    }

    #[test]
    fn one_message_split_at_every_byte() {
        for text in [REGISTER, INVITE, OK] {
            let bytes = text.as_bytes();
            for cut in 0..=bytes.len() {
                let mut d = StreamDecoder::new();
                d.push(&bytes[..cut]);
                let mut items = drain(&mut d);
                if cut < bytes.len() {
                    assert!(items.is_empty(), "{cut}");
                }
                d.push(&bytes[cut..]);
                items.extend(drain(&mut d));
                assert_eq!(show(&items), [printed(text)], "cut at {cut}");
                assert_eq!(d.buffered(), 0);
            }
        }
    }

    #[test]
    fn body_with_blank_lines_is_kept_whole() {
        let items = decode_all(format!("{INVITE}{OK}").as_bytes());
        let Ok(Frame::Message(m)) = &items[0] else {
            panic!("{:?}", show(&items))
        };
        assert_eq!(&m.body[..], b"v=0\r\n\r\n\r\ns=-\r\n\r\nc=IN IP6 ::1\r\n");
        assert_eq!(show(&items[1..]), [printed(OK)]);
    }

    #[test]
    fn many_messages_in_one_push() {
        let all = [REGISTER, INVITE, OK].repeat(20).concat();
        let items = decode_all(all.as_bytes());
        let expected: Vec<String> = [REGISTER, INVITE, OK]
            .repeat(20)
            .into_iter()
            .map(printed)
            .collect();
        assert_eq!(show(&items), expected);
    }

    #[test]
    fn compact_content_length() {
        let text = INVITE.replace("l: 30\r\n", "l:30\r\n");
        let items = decode_all(text.as_bytes());
        let Ok(Frame::Message(m)) = &items[0] else {
            panic!("{:?}", show(&items))
        };
        assert_eq!(m.body.len(), 30);
        // Lower case long form, and a value folded onto the next line.
        let text = REGISTER.replace("Content-Length: 0", "content-length:\r\n  0");
        assert_eq!(show(&decode_all(text.as_bytes())), [printed(REGISTER)]);
    }

    #[test]
    fn keepalives_between_messages() {
        let stream = format!("\r\n\r\n{REGISTER}\r\n\r\n\r\n\r\n{OK}\r\n{OK}\r\n");
        assert_eq!(
            show(&decode_all(stream.as_bytes())),
            ["PING", &printed(REGISTER), "PING", "PING", &printed(OK)]
                .into_iter()
                .map(String::from)
                .chain([String::from("PONG"), printed(OK), "PONG".into()])
                .collect::<Vec<_>>()
        );
        // A ping split across reads still comes out as a ping.
        let mut d = StreamDecoder::new();
        d.push(b"\r\n");
        assert_eq!(show(&drain(&mut d)), ["PONG"]);
        d.push(b"\r");
        assert!(drain(&mut d).is_empty());
        d.push(b"\n");
        assert_eq!(show(&drain(&mut d)), ["PING"]);
        // Whole in one read, it is only a ping.
        d.push(b"\r\n\r");
        assert!(drain(&mut d).is_empty());
        d.push(b"\n");
        assert_eq!(show(&drain(&mut d)), ["PING"]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn fatal_framing_errors_close_the_stream() {
        let cases: Vec<(String, FrameError)> = vec![
            (
                REGISTER.replace("Content-Length: 0\r\n", ""),
                FrameError::MissingContentLength,
            ),
            (
                REGISTER.replace("Content-Length: 0", "Content-Length: zero"),
                FrameError::BadContentLength("zero".into()),
            ),
            (
                REGISTER.replace("Content-Length: 0", "Content-Length: +0"),
                FrameError::BadContentLength("+0".into()),
            ),
            (
                REGISTER.replace(
                    "Content-Length: 0",
                    "Content-Length: 99999999999999999999999",
                ),
                FrameError::BadContentLength("99999999999999999999999".into()),
            ),
            (
                REGISTER.replace("Content-Length: 0", "Content-Length: 0\r\nl: 10"),
                FrameError::BadContentLength("conflicting values".into()),
            ),
            (
                REGISTER.replace("Content-Length: 0", "Content-Length: 70000"),
                FrameError::TooLarge(REGISTER.len() + 4 + 70000),
            ),
            // Head and body each under the limit, together over it.
            (
                REGISTER.replace("Content-Length: 0", "Content-Length: 65500"),
                FrameError::TooLarge(REGISTER.len() + 4 + 65500),
            ),
        ];
        for (text, expected) in cases {
            let mut d = StreamDecoder::new();
            d.push(text.as_bytes());
            assert_eq!(d.next().unwrap().unwrap_err(), expected, "{text}");
            assert!(d.is_closed());
            d.push(REGISTER.as_bytes());
            assert!(d.next().is_none());
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn endless_head_is_cut_off() {
        let mut d = StreamDecoder::new();
        d.push(b"INVITE sip:x@y SIP/2.0\r\nSubject: ");
        let chunk = [b'a'; 1000];
        let mut pushed = 0;
        let error = loop {
            d.push(&chunk);
            pushed += chunk.len();
            assert!(pushed <= MAX_MESSAGE + chunk.len(), "never cut off");
            if let Some(item) = d.next() {
                break item.unwrap_err();
            }
        };
        assert_eq!(error, FrameError::HeadTooLong);
        assert!(error.is_fatal());
        assert!(d.next().is_none());
    }

    #[test]
    fn malformed_message_is_skipped() {
        let broken = REGISTER
            .replace("Call-ID: 843817637684230@998sdasdh09\r\n", "")
            .replace("Content-Length: 0", "Content-Length: 5")
            + "hello";
        let garbage = "\u{1}\u{2} not SIP at all\r\nl: 3\r\n\r\nabc";
        let items = decode_all(format!("{broken}{garbage}{OK}").as_bytes());
        assert_eq!(items.len(), 3, "{:?}", show(&items));
        let Err(e @ FrameError::Malformed { error, raw }) = &items[0] else {
            panic!("{:?}", show(&items))
        };
        assert!(!e.is_fatal());
        assert_eq!(*error, ParseError::MissingHeader("Call-ID"));
        assert_eq!(&raw[..], broken.as_bytes());
        let Err(FrameError::Malformed { raw, .. }) = &items[1] else {
            panic!("{:?}", show(&items))
        };
        assert_eq!(&raw[..], garbage.as_bytes());
        assert_eq!(show(&items[2..]), [printed(OK)]);
    }

    #[test]
    fn byte_at_a_time() {
        let mut stream = String::new();
        let mut expected = Vec::new();
        for i in 0..100 {
            let text = [REGISTER, INVITE, OK][i % 3];
            stream.push_str(text);
            expected.push(printed(text));
            if i % 7 == 0 {
                stream.push_str("\r\n\r\n");
                expected.push("PING".into());
            }
        }
        let mut d = StreamDecoder::new();
        let mut items = Vec::new();
        for b in stream.as_bytes() {
            d.push(std::slice::from_ref(b));
            items.extend(drain(&mut d));
            // A partial head is never scanned twice.
            if let State::Head { searched } = d.state {
                assert_eq!(searched, d.buffered());
            }
            assert!(d.buffered() < INVITE.len());
        }
        // A ping trickling in shows as a pong then a ping; compare the rest.
        let items: Vec<String> = show(&items).into_iter().filter(|s| s != "PONG").collect();
        assert_eq!(items, expected);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn lf_only_messages_frame_too() {
        let text = REGISTER.replace("\r\n", "\n");
        let items = decode_all(format!("{text}\n{text}").as_bytes());
        assert_eq!(show(&items), [printed(REGISTER), printed(REGISTER)]);
    }
}
