//! Random tokens for branches, tags, Call-IDs and stream ids.
//!
//! RFC 3261 asks that tags and Call-IDs be globally unique and hard to guess
//! (§19.3): a guessed tag lets a third party inject requests into a dialog.
//! One getrandom seed per generator, then a counter through SHA-256, keeps
//! the cost of a token low without trusting a weak PRNG.

use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn seed() -> [u8; 32] {
    static SEED: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        let mut s = [0u8; 32];
        if getrandom::getrandom(&mut s).is_err() {
            // No entropy source at all: fall back to time and pid, still
            // unique per process, which is what framing needs most.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            s[..16].copy_from_slice(&t.to_le_bytes());
            s[16..20].copy_from_slice(&std::process::id().to_le_bytes());
        }
        s
    })
}

/// `len` characters of lowercase hex-ish alphanumerics.
pub fn token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut h = Sha256::new();
        h.update(seed());
        h.update(n.to_le_bytes());
        // A forked child inherits seed and counter: its pid keeps its
        // tokens (Call-IDs, stream ids, resume nonces) its own.
        h.update(std::process::id().to_le_bytes());
        for b in h.finalize() {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[(b as usize) % ALPHABET.len()] as char);
        }
    }
    out
}

/// A Via branch with RFC 3261's magic cookie, so peers treat our
/// transactions by branch rather than by the RFC 2543 matching rules.
pub fn branch() -> String {
    format!("z9hG4bK{}", token(16))
}

pub fn tag() -> String {
    token(12)
}

pub fn call_id(host: &str) -> String {
    format!("{}@{}", token(20), host)
}

/// Names one wisp stream to both of its ends: in the SDP (`a=wisp-stream`)
/// and in the first bytes of every connection that resumes it, where the
/// accepting side looks the stream up by it. Not a secret (it crosses the
/// proxies in clear): what proves a claim to the stream is the stream key.
/// 16 random bytes, so two streams never share one by chance.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub [u8; 16]);

impl StreamId {
    pub fn random() -> StreamId {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut h = Sha256::new();
        h.update(seed());
        h.update(b"stream-id");
        h.update(n.to_le_bytes());
        h.update(std::process::id().to_le_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.finalize()[..16]);
        StreamId(id)
    }

    /// The `a=wisp-stream` spelling: 32 lowercase hex digits.
    pub fn to_token(&self) -> String {
        self.to_string()
    }

    /// Only the exact spelling [`StreamId::to_token`] prints, so one id
    /// has one token (a MAC or a table lookup over the text cannot be
    /// fooled by `ABC` versus `abc`).
    pub fn from_token(s: &str) -> Option<StreamId> {
        let s = s.as_bytes();
        if s.len() != 32 {
            return None;
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut id = [0u8; 16];
        for (i, pair) in s.chunks(2).enumerate() {
            id[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(StreamId(id))
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamId({self})")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_distinct() {
        let a = super::branch();
        let b = super::branch();
        assert!(a.starts_with("z9hG4bK"));
        assert_ne!(a, b);
        assert_eq!(super::token(40).len(), 40);
    }

    #[test]
    fn stream_id_tokens() {
        use super::StreamId;
        let a = StreamId::random();
        assert_ne!(a, StreamId::random());
        let t = a.to_token();
        assert_eq!(t.len(), 32);
        assert_eq!(StreamId::from_token(&t), Some(a));
        let id = StreamId([0xab; 16]);
        assert_eq!(id.to_token(), "ab".repeat(16));
        for bad in [
            "AB".repeat(16),
            "ab".repeat(15),
            "ab".repeat(17),
            format!("{}g", "a".repeat(31)),
            format!("{}+", "a".repeat(31)),
            format!("{}\u{e9}", "a".repeat(30)),
            String::new(),
        ] {
            assert_eq!(StreamId::from_token(&bad), None, "{bad:?}");
        }
    }
}
