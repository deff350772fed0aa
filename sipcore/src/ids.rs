//! Random tokens for branches, tags and Call-IDs.
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
}
