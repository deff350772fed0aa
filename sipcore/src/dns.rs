//! Just enough of the DNS wire format (RFC 1035, RFC 2782 for SRV) to find
//! a domain's SIP servers: libc's resolver cannot ask for SRV records.
//!
//! Sans-IO like the rest of sipcore: queries are encoded and answers decoded
//! here, with every length and compression pointer checked since answers
//! come off the network; `crate::locate` moves the bytes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// A name we were asked to look up is not a valid DNS name.
    BadName,
    /// The answer ends before what it announces.
    Truncated,
    /// A compression pointer loops or points past the message.
    BadPointer,
    /// Not an answer to our question.
    NotOurs,
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DnsError::BadName => "not a valid DNS name",
            DnsError::Truncated => "DNS answer is truncated",
            DnsError::BadPointer => "DNS answer has a bad name pointer",
            DnsError::NotOurs => "DNS answer does not match the question",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv(Srv),
    Other(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub ttl: u32,
    pub data: RData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    /// 0 no error, 3 no such name, ...
    pub rcode: u8,
    pub truncated: bool,
    pub answers: Vec<Record>,
}

/// A recursive query for `name` (without or with the trailing dot).
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, DnsError> {
    let mut out = Vec::with_capacity(18 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00]); // RD
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    encode_name(name, &mut out)?;
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(out)
}

pub fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), DnsError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(DnsError::BadName);
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 || !label.is_ascii() {
            return Err(DnsError::BadName);
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(())
}

/// Bounds-checked reading of a DNS message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DnsError> {
        let end = self.pos.checked_add(n).ok_or(DnsError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(DnsError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, DnsError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DnsError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A possibly compressed name, lowercased, without the trailing dot.
    fn name(&mut self) -> Result<String, DnsError> {
        let mut name = String::new();
        let mut pos = self.pos;
        // Where reading continues once the name is done: after the first
        // pointer, or after the terminating zero if there is none.
        let mut resume = None;
        let mut jumps = 0;
        loop {
            let len = *self.buf.get(pos).ok_or(DnsError::Truncated)?;
            match len {
                0 => {
                    self.pos = resume.unwrap_or(pos + 1);
                    return Ok(name);
                }
                1..=63 => {
                    let label = self
                        .buf
                        .get(pos + 1..pos + 1 + len as usize)
                        .ok_or(DnsError::Truncated)?;
                    if !name.is_empty() {
                        name.push('.');
                    }
                    name.extend(label.iter().map(|b| b.to_ascii_lowercase() as char));
                    if name.len() > 255 {
                        return Err(DnsError::BadPointer);
                    }
                    pos += 1 + len as usize;
                }
                0xC0..=0xFF => {
                    let low = *self.buf.get(pos + 1).ok_or(DnsError::Truncated)?;
                    let target = (usize::from(len & 0x3F) << 8) | usize::from(low);
                    jumps += 1;
                    // Real names need a handful; more means a loop.
                    if jumps > 32 || target >= self.buf.len() {
                        return Err(DnsError::BadPointer);
                    }
                    resume.get_or_insert(pos + 2);
                    pos = target;
                }
                // 0x40 and 0x80 label types are obsolete/reserved.
                _ => return Err(DnsError::BadPointer),
            }
        }
    }
}

/// Decode an answer. Records of types we do not read come out as
/// [`RData::Other`]; malformed input is an error, never a panic.
pub fn decode_response(buf: &[u8]) -> Result<Response, DnsError> {
    let mut r = Reader { buf, pos: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::NotOurs);
    }
    let qd = r.u16()?;
    let an = r.u16()?;
    r.u16()?; // authority
    r.u16()?; // additional
    for _ in 0..qd {
        r.name()?;
        r.bytes(4)?;
    }
    let mut answers = Vec::with_capacity(usize::from(an).min(64));
    for _ in 0..an {
        let name = r.name()?;
        let rtype = r.u16()?;
        let _class = r.u16()?;
        let ttl = r.u32()?;
        let rdlen = usize::from(r.u16()?);
        let start = r.pos;
        r.bytes(rdlen)?;
        // Re-read the data through a reader over the whole message, since
        // names inside it may point anywhere before.
        let mut d = Reader { buf, pos: start };
        let data = match (rtype, rdlen) {
            (TYPE_A, 4) => {
                let b = d.bytes(4)?;
                RData::A(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            (TYPE_AAAA, 16) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(d.bytes(16)?);
                RData::Aaaa(Ipv6Addr::from(o))
            }
            (TYPE_SRV, 7..) => RData::Srv(Srv {
                priority: d.u16()?,
                weight: d.u16()?,
                port: d.u16()?,
                target: d.name()?,
            }),
            _ => RData::Other(rtype),
        };
        if d.pos > start + rdlen {
            return Err(DnsError::Truncated);
        }
        answers.push(Record { name, ttl, data });
    }
    Ok(Response {
        id,
        rcode: (flags & 0x000F) as u8,
        truncated: flags & 0x0200 != 0,
        answers,
    })
}

/// The nameservers of an /etc/resolv.conf text, on port 53.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// SRV records in the order to try them: by priority, and within one
/// priority heavier first (RFC 2782's weighted random pick made
/// deterministic: a registrar's few targets do not need load spreading).
/// A lone target "." means the service is decidedly not offered.
pub fn order_srv(answers: &[Record]) -> Vec<Srv> {
    let mut srvs: Vec<Srv> = answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::Srv(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    srvs.sort_by_key(|s| (s.priority, std::cmp::Reverse(s.weight)));
    srvs.retain(|s| !s.target.is_empty() && s.target != ".");
    srvs
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An answer to `_sip._udp.example.com SRV` with two records, the
    /// second target compressed against the first, plus an A record.
    pub(crate) fn srv_answer(id: u16) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 3, 0, 0, 0, 0]);
        let qname = m.len();
        encode_name("_sip._udp.example.com", &mut m).unwrap();
        m.extend_from_slice(&[0, 33, 0, 1]);
        // Answer 1: name = pointer to question, SRV 20 5 5060 sip2.example.com
        m.extend_from_slice(&[0xC0, qname as u8, 0, 33, 0, 1, 0, 0, 0x0E, 0x10]);
        let mut rdata = vec![0, 20, 0, 5, 0x13, 0xC4];
        let target_at = m.len() + 2 + rdata.len();
        encode_name("sip2.example.com", &mut rdata).unwrap();
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
        // Answer 2: SRV 10 1 5062 sip1.<pointer to "example.com" in target 1>
        m.extend_from_slice(&[0xC0, qname as u8, 0, 33, 0, 1, 0, 0, 0x0E, 0x10]);
        let rdata = [
            0,
            10,
            0,
            1,
            0x13,
            0xC6,
            4,
            b's',
            b'i',
            b'p',
            b'1',
            0xC0,
            (target_at + 5) as u8,
        ];
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
        // Answer 3: A 192.0.2.7 for sip1 (name compressed likewise).
        m.extend_from_slice(&[
            0xC0,
            (target_at + 5) as u8,
            0,
            1,
            0,
            1,
            0,
            0,
            0,
            60,
            0,
            4,
            192,
            0,
            2,
            7,
        ]);
        m
    }

    #[test]
    fn query_is_well_formed() {
        let q = encode_query(0xBEEF, "_sip._tcp.example.com.", TYPE_SRV).unwrap();
        assert_eq!(&q[..4], &[0xBE, 0xEF, 0x01, 0x00]);
        assert_eq!(&q[12..17], b"\x04_sip");
        assert_eq!(&q[q.len() - 4..], &[0, 33, 0, 1]);
        assert_eq!(encode_query(1, "a..b", TYPE_A), Err(DnsError::BadName));
        assert_eq!(
            encode_query(1, &"x".repeat(64), TYPE_A),
            Err(DnsError::BadName)
        );
        assert_eq!(encode_query(1, "", TYPE_A), Err(DnsError::BadName));
    }

    #[test]
    fn srv_answer_with_compression_decodes_and_orders() {
        let r = decode_response(&srv_answer(7)).unwrap();
        assert_eq!((r.id, r.rcode, r.truncated), (7, 0, false));
        assert_eq!(r.answers.len(), 3);
        assert_eq!(r.answers[0].name, "_sip._udp.example.com");
        assert_eq!(r.answers[0].ttl, 3600);
        assert_eq!(r.answers[2].name, "example.com");
        assert_eq!(r.answers[2].data, RData::A(Ipv4Addr::new(192, 0, 2, 7)));
        let srvs = order_srv(&r.answers);
        assert_eq!(srvs.len(), 2);
        assert_eq!(
            (srvs[0].target.as_str(), srvs[0].port),
            ("sip1.example.com", 5062)
        );
        assert_eq!(
            (srvs[1].target.as_str(), srvs[1].port),
            ("sip2.example.com", 5060)
        );
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        let good = srv_answer(7);
        for n in 0..good.len() {
            assert!(decode_response(&good[..n]).is_err(), "prefix {n}");
        }
        // Every single-byte corruption: any result, but no panic.
        for i in 0..good.len() {
            for v in [0x00, 0x3F, 0x40, 0xC0, 0xFF] {
                let mut bad = good.clone();
                bad[i] = v;
                let _ = decode_response(&bad);
            }
        }
        // A pointer to itself.
        let mut looped = good[..12].to_vec();
        looped[5] = 1;
        looped.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert_eq!(decode_response(&looped), Err(DnsError::BadPointer));
        // A query is not an answer.
        let q = encode_query(1, "example.com", TYPE_A).unwrap();
        assert_eq!(decode_response(&q), Err(DnsError::NotOurs));
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# c\nsearch lan\nnameserver 10.0.0.1\nnameserver  ::1 \nnameserver fe80::1%eth0\noptions x\n";
        assert_eq!(
            nameservers(text),
            vec![
                "10.0.0.1:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
