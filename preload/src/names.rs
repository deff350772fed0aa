//! The name map: `/etc/hosts` in shape, a SIP URI first, then the names a
//! program may use for it (`sip:bob@wxyz.com  bob.wxyz  bob`).
//!
//! Each entry gets a placeholder address of each family from ranges that
//! are never routed (198.18.0.0/15, RFC 2544; 100::/64, RFC 6666 discard),
//! so a connect() to one can only mean "this wisp name" and, should it ever
//! escape us, goes nowhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub uri: String,
    pub names: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct NameMap {
    entries: Vec<Entry>,
}

/// A line the map could not use, reported with where it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub reason: String,
}

const V4_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const V4_SIZE: u32 = 1 << 17;
const V6_BASE: u128 = 0x0100_0000_0000_0000_0000_0000_0000_0000;

impl NameMap {
    /// Parse the map; bad lines are skipped and returned for the log.
    pub fn parse(text: &str) -> (NameMap, Vec<BadLine>) {
        let mut map = NameMap::default();
        let mut bad = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let uri = fields.next().unwrap_or_default();
            let names: Vec<String> = fields
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .collect();
            let reason = if !is_sip_uri(uri) {
                Some(format!("{uri:?} is not a sip: URI with a user and a host"))
            } else if names.is_empty() {
                Some("no names follow the URI".to_string())
            } else if let Some(n) = names.iter().find(|n| !is_hostname(n)) {
                Some(format!("{n:?} is not a host name"))
            } else if let Some(n) = names.iter().find(|n| map.lookup(n).is_some()) {
                Some(format!("{n:?} is already mapped"))
            } else if map.entries.len() as u32 >= V4_SIZE - 2 {
                Some("too many entries".to_string())
            } else {
                None
            };
            match reason {
                Some(reason) => bad.push(BadLine {
                    line: i + 1,
                    reason,
                }),
                None => map.entries.push(Entry {
                    uri: uri.to_string(),
                    names,
                }),
            }
        }
        (map, bad)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry index for a name a program used.
    pub fn lookup(&self, name: &str) -> Option<usize> {
        let name = name.trim_end_matches('.');
        self.entries
            .iter()
            .position(|e| e.names.iter().any(|n| n.eq_ignore_ascii_case(name)))
    }

    pub fn entry(&self, index: usize) -> Option<&Entry> {
        self.entries.get(index)
    }

    /// The first name the map gives a URI (compared without case).
    pub fn name_of_uri(&self, uri: &str) -> Option<String> {
        self.entries
            .iter()
            .find(|e| e.uri.eq_ignore_ascii_case(uri))
            .and_then(|e| e.names.first().cloned())
    }

    pub fn placeholder_v4(index: usize) -> Ipv4Addr {
        Ipv4Addr::from(V4_BASE + 1 + index as u32)
    }

    pub fn placeholder_v6(index: usize) -> Ipv6Addr {
        Ipv6Addr::from(V6_BASE + 1 + index as u128)
    }

    /// Which entry a placeholder address stands for (also IPv4-mapped IPv6,
    /// which dual-stack programs pass to connect()).
    pub fn entry_of(&self, ip: IpAddr) -> Option<usize> {
        let index = match ip {
            IpAddr::V4(v4) => u32::from(v4).checked_sub(V4_BASE + 1)? as usize,
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return self.entry_of(IpAddr::V4(v4));
                }
                u128::from(v6).checked_sub(V6_BASE + 1)? as usize
            }
        };
        (index < self.entries.len()).then_some(index)
    }

    /// Cheap test used before any map is loaded: is this in our ranges at all?
    pub fn is_placeholder(ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => (u32::from(v4) & !(V4_SIZE - 1)) == V4_BASE,
            IpAddr::V6(v6) => {
                v6.to_ipv4_mapped()
                    .is_some_and(|v4| NameMap::is_placeholder(IpAddr::V4(v4)))
                    || (u128::from(v6) >> 64) == (V6_BASE >> 64)
            }
        }
    }
}

fn is_sip_uri(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("sip:").or_else(|| s.strip_prefix("sips:")) else {
        return false;
    };
    matches!(rest.split_once('@'), Some((u, h)) if !u.is_empty() && !h.is_empty())
        && sipcore::msg::parse_whole::<sipcore::msg::SipUri>(s).is_some()
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && s.parse::<IpAddr>().is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_reports_bad_lines() {
        let text = "# wisp names\n\
sip:bob@wxyz.com   bob.wxyz   bob\n\
\n\
sip:alice@abcd.com alice.abcd # trailing comment\n\
notauri name\n\
sip:carol@abcd.com\n\
sip:dave@abcd.com bob\n\
sip:erin@abcd.com 10.0.0.1\n";
        let (map, bad) = NameMap::parse(text);
        assert_eq!(map.len(), 2);
        assert_eq!(map.lookup("BOB.wxyz."), Some(0));
        assert_eq!(map.lookup("alice.abcd"), Some(1));
        assert_eq!(map.lookup("nobody"), None);
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![5, 6, 7, 8]);
    }

    #[test]
    fn placeholders_round_trip_both_families() {
        let (map, _) = NameMap::parse("sip:a@x.com a\nsip:b@x.com b\n");
        for i in 0..2 {
            let v4 = NameMap::placeholder_v4(i);
            let v6 = NameMap::placeholder_v6(i);
            assert_eq!(map.entry_of(IpAddr::V4(v4)), Some(i));
            assert_eq!(map.entry_of(IpAddr::V6(v6)), Some(i));
            assert_eq!(map.entry_of(IpAddr::V6(v4.to_ipv6_mapped())), Some(i));
            assert!(NameMap::is_placeholder(IpAddr::V4(v4)));
            assert!(NameMap::is_placeholder(IpAddr::V6(v6)));
        }
        assert_eq!(map.entry_of(IpAddr::V4(NameMap::placeholder_v4(2))), None);
        assert!(!NameMap::is_placeholder("10.0.0.1".parse().unwrap()));
        assert!(!NameMap::is_placeholder("::1".parse().unwrap()));
        assert_eq!(NameMap::placeholder_v4(0).to_string(), "198.18.0.1");
        assert_eq!(NameMap::placeholder_v6(0).to_string(), "100::1");
    }
}
