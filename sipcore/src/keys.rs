//! Per-stream secrets: who may move a stream, and who may resume it.
//!
//! A move is the dangerous moment. A forged re-INVITE that is believed
//! points the stream at the forger, and a forged first message on a new TCP
//! connection hands the stream to whoever opened it. So the first offer and
//! answer carry X25519 key shares (`a=wisp-key`), both ends derive the same
//! stream key from them, and every later claim on the stream (a re-INVITE,
//! a resume handshake) carries an HMAC-SHA256 under that key.
//!
//! The stream key is four subkeys, one per purpose and direction (HKDF,
//! RFC 5869, with distinct labels). Per purpose, so that a MAC made for a
//! move can never pass as one for a resume. Per direction, because both
//! ends hold the same secret: with one key per purpose, an attacker could
//! reflect our own re-INVITE back at us ("your peer moved to your own
//! address") or our own resume Init back to our listener, and it would
//! verify. With directional keys we only ever verify what the *other* role
//! made.
//!
//! A replayed re-INVITE would verify too, so each move carries a counter
//! that must grow ([`MoveCounter`]).
//!
//! The key shares are ephemeral: one fresh secret per stream, consumed by
//! [`derive`], never stored.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::net::SocketAddr;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroize;

type HmacSha256 = Hmac<Sha256>;

/// HKDF-Extract salt: names the protocol and its version, so a key
/// derived here means nothing to any other protocol that happens to reuse
/// an X25519 shared secret.
const SALT: &[u8] = b"wisp stream key v1";

/// Why no stream key could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The operating system gave no randomness. A predictable secret would
    /// be worse than none, so there is no fallback: the stream runs without
    /// mobility.
    NoEntropy,
    /// The peer's share is a low-order point: the shared secret came out
    /// all zero, which anyone can compute (RFC 7748 §6.1).
    LowOrderPoint,
    /// The offerer and answerer shares given are not our share and the
    /// peer's one: the caller mixed up streams or roles.
    NotOurShares,
    /// The peer's share is our own, sent back to us.
    Reflected,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NoEntropy => write!(f, "no randomness for a key share"),
            KeyError::LowOrderPoint => {
                write!(f, "peer key share is a low-order point (all-zero secret)")
            }
            KeyError::NotOurShares => write!(f, "key shares do not belong to this secret"),
            KeyError::Reflected => write!(f, "peer key share is our own"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Our half of a key agreement. Zeroed when dropped (x25519-dalek's
/// `zeroize` feature, on by default).
pub struct KeySecret(StaticSecret);

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySecret(public {:02x?})", self.public())
    }
}

impl KeySecret {
    /// A secret from given bytes: for test vectors and reproducible tests.
    /// Real streams use [`KeyShare::generate`].
    pub fn from_bytes(bytes: [u8; 32]) -> KeySecret {
        KeySecret(StaticSecret::from(bytes))
    }

    /// The share to put in `a=wisp-key`.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
    }
}

/// Key share generation.
pub struct KeyShare;

impl KeyShare {
    /// A fresh secret and the public share that goes into the SDP.
    pub fn generate() -> Result<(KeySecret, [u8; 32]), KeyError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|_| KeyError::NoEntropy)?;
        let secret = KeySecret::from_bytes(bytes);
        bytes.zeroize();
        let public = secret.public();
        Ok((secret, public))
    }
}

/// Which end of the first offer/answer a side was. It decides which
/// directional subkeys it sends with and which it verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Offerer,
    Answerer,
}

/// One HMAC-SHA256 key, zeroed when dropped.
#[derive(Clone)]
pub(crate) struct MacKey([u8; 32]);

impl Drop for MacKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl MacKey {
    fn hmac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut m =
            <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        for p in parts {
            m.update(p);
        }
        m
    }

    /// The tag over the concatenation of `parts`.
    pub(crate) fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.hmac(parts).finalize().into_bytes().into()
    }

    /// Whether `tag` is the tag over `parts`, in constant time (hmac's
    /// `verify_slice` compares with `subtle`), so timing tells a forger
    /// nothing about how many leading bytes were right.
    pub(crate) fn verify(&self, parts: &[&[u8]], tag: &[u8; 32]) -> bool {
        self.hmac(parts).verify_slice(tag).is_ok()
    }
}

/// The secrets of one stream, the same at both ends.
// The resume keys are read by the resume handshake, landing next.
#[allow(dead_code)]
pub struct StreamKey {
    role: Role,
    move_out: MacKey,
    move_in: MacKey,
    resume_out: MacKey,
    resume_in: MacKey,
}

impl fmt::Debug for StreamKey {
    /// Never the key bytes: this ends up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamKey")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Agree on the stream key. `secret` is ours, `peer_public` the other
/// side's share; `offerer_public` and `answerer_public` are the two shares
/// as they stood in the offer and the answer, and `call_id` the dialog's
/// Call-ID: all of it goes into the derivation, so a key is bound to this
/// dialog and this exchange and to nothing else.
pub fn derive(
    secret: KeySecret,
    peer_public: &[u8; 32],
    call_id: &str,
    offerer_public: &[u8; 32],
    answerer_public: &[u8; 32],
) -> Result<StreamKey, KeyError> {
    let own = secret.public();
    if own == *peer_public {
        return Err(KeyError::Reflected);
    }
    let role = if (own, *peer_public) == (*offerer_public, *answerer_public) {
        Role::Offerer
    } else if (own, *peer_public) == (*answerer_public, *offerer_public) {
        Role::Answerer
    } else {
        return Err(KeyError::NotOurShares);
    };
    let shared = secret.0.diffie_hellman(&PublicKey::from(*peer_public));
    // Constant-time all-zero check: the peer sent a point of small order.
    if !shared.was_contributory() {
        return Err(KeyError::LowOrderPoint);
    }
    let hk = Hkdf::<Sha256>::new(Some(SALT), shared.as_bytes());
    let call_len = (call_id.len() as u64).to_be_bytes();
    let expand = |label: &str| {
        let mut okm = [0u8; 32];
        hk.expand_multi_info(
            &[
                &[label.len() as u8],
                label.as_bytes(),
                &call_len,
                call_id.as_bytes(),
                offerer_public,
                answerer_public,
            ],
            &mut okm,
        )
        .expect("32 bytes is a valid HKDF-SHA256 output length");
        MacKey(okm)
    };
    let move_o = expand("move-auth offerer");
    let move_a = expand("move-auth answerer");
    let resume_o = expand("resume-auth offerer");
    let resume_a = expand("resume-auth answerer");
    Ok(match role {
        Role::Offerer => StreamKey {
            role,
            move_out: move_o,
            move_in: move_a,
            resume_out: resume_o,
            resume_in: resume_a,
        },
        Role::Answerer => StreamKey {
            role,
            move_out: move_a,
            move_in: move_o,
            resume_out: resume_a,
            resume_in: resume_o,
        },
    })
}

impl StreamKey {
    pub fn role(&self) -> Role {
        self.role
    }

    /// The `a=wisp-mac` of a move we announce: `counter` is the move's
    /// number and `addr` our new data address, as the SDP will print it.
    pub fn move_mac(&self, call_id: &str, counter: u64, addr: SocketAddr) -> [u8; 32] {
        let enc = MoveInput::new(call_id, counter, addr);
        self.move_out.tag(&enc.parts())
    }

    /// Whether `mac` is the peer's MAC over this move. Any change to the
    /// call-id, the counter, the address family, the IP or the port fails.
    pub fn verify_move(
        &self,
        call_id: &str,
        counter: u64,
        addr: SocketAddr,
        mac: &[u8; 32],
    ) -> bool {
        let enc = MoveInput::new(call_id, counter, addr);
        self.move_in.verify(&enc.parts(), mac)
    }

    /// Key for what we send in a resume handshake.
    #[allow(dead_code)]
    pub(crate) fn resume_out(&self) -> &MacKey {
        &self.resume_out
    }

    /// Key for what the peer sends in a resume handshake.
    #[allow(dead_code)]
    pub(crate) fn resume_in(&self) -> &MacKey {
        &self.resume_in
    }
}

/// The bytes a move MAC covers, one unambiguous encoding: Call-ID with a
/// length prefix (u64 BE) so no boundary can shift, counter (u64 BE),
/// family byte (4 or 6), the IP's 4 or 16 bytes, port (u16 BE). IPv6 scope
/// and flow label have no SDP spelling and are not covered.
struct MoveInput<'a> {
    call_len: [u8; 8],
    call_id: &'a [u8],
    counter: [u8; 8],
    family: [u8; 1],
    ip: [u8; 16],
    ip_len: usize,
    port: [u8; 2],
}

impl<'a> MoveInput<'a> {
    fn new(call_id: &'a str, counter: u64, addr: SocketAddr) -> MoveInput<'a> {
        let mut ip = [0u8; 16];
        let (family, ip_len) = match addr {
            SocketAddr::V4(a) => {
                ip[..4].copy_from_slice(&a.ip().octets());
                (4, 4)
            }
            SocketAddr::V6(a) => {
                ip.copy_from_slice(&a.ip().octets());
                (6, 16)
            }
        };
        MoveInput {
            call_len: (call_id.len() as u64).to_be_bytes(),
            call_id: call_id.as_bytes(),
            counter: counter.to_be_bytes(),
            family: [family],
            ip,
            ip_len,
            port: addr.port().to_be_bytes(),
        }
    }

    fn parts(&self) -> [&[u8]; 6] {
        [
            &self.call_len,
            self.call_id,
            &self.counter,
            &self.family,
            &self.ip[..self.ip_len],
            &self.port,
        ]
    }
}

/// Replay guard for numbered claims from the peer (move counters, resume
/// counters): each number is good once, and only if it is higher than
/// every number accepted before. Starts at 0, which the first offer is,
/// so the first real move is 1.
///
/// Check the MAC before the counter and [`MoveCounter::accept`] only what
/// verified: otherwise a forger could burn the counter up to `u64::MAX`
/// and lock the real peer out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoveCounter {
    last: u64,
}

impl MoveCounter {
    pub fn new() -> MoveCounter {
        MoveCounter { last: 0 }
    }

    /// The highest number accepted so far.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Whether `counter` would be accepted, without taking it.
    pub fn is_fresh(&self, counter: u64) -> bool {
        counter > self.last
    }

    /// Take `counter` if it is fresh; `false` means a replay (or a stale
    /// claim overtaken by a newer one).
    pub fn accept(&mut self, counter: u64) -> bool {
        if self.is_fresh(counter) {
            self.last = counter;
            true
        } else {
            false
        }
    }
}

/// A key pair of an offerer and an answerer, for tests across modules.
#[cfg(test)]
pub(crate) fn test_pair(call_id: &str) -> (StreamKey, StreamKey) {
    let a = KeySecret::from_bytes([7; 32]);
    let b = KeySecret::from_bytes([9; 32]);
    let (pa, pb) = (a.public(), b.public());
    (
        derive(a, &pb, call_id, &pa, &pb).unwrap(),
        derive(b, &pa, call_id, &pa, &pb).unwrap(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn agree(call: &str) -> (StreamKey, StreamKey) {
        let (a, pa) = KeyShare::generate().unwrap();
        let (b, pb) = KeyShare::generate().unwrap();
        assert_ne!(pa, pb);
        (
            derive(a, &pb, call, &pa, &pb).unwrap(),
            derive(b, &pa, call, &pa, &pb).unwrap(),
        )
    }

    #[test]
    fn rfc7748_public_key_vector() {
        // RFC 7748 §6.1, Alice.
        let sk: [u8; 32] =
            hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        assert_eq!(
            KeySecret::from_bytes(sk).public(),
            hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn both_ends_agree_and_directions_differ() {
        let (o, a) = agree("call-1@host");
        assert_eq!((o.role(), a.role()), (Role::Offerer, Role::Answerer));
        let at = addr("192.0.2.7:40000");
        let mac = o.move_mac("call-1@host", 1, at);
        assert!(a.verify_move("call-1@host", 1, at, &mac));
        // Reflected back to its maker, it does not verify.
        assert!(!o.verify_move("call-1@host", 1, at, &mac));
        let mac = a.move_mac("call-1@host", 1, at);
        assert!(o.verify_move("call-1@host", 1, at, &mac));
        assert!(!a.verify_move("call-1@host", 1, at, &mac));
        // Purposes and directions have distinct keys.
        let keys = [&o.move_out.0, &o.move_in.0, &o.resume_out.0, &o.resume_in.0];
        for (i, x) in keys.iter().enumerate() {
            for y in &keys[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(o.resume_out.0, a.resume_in.0);
        assert_eq!(o.move_out.0, a.move_in.0);
    }

    #[test]
    fn move_mac_covers_every_field() {
        let (o, a) = test_pair("c@h");
        let at = addr("192.0.2.7:40000");
        let mac = o.move_mac("c@h", 5, at);
        assert!(a.verify_move("c@h", 5, at, &mac));
        assert!(!a.verify_move("c@h2", 5, at, &mac), "call-id");
        assert!(!a.verify_move("c@h", 6, at, &mac), "counter");
        assert!(
            !a.verify_move("c@h", 5, addr("192.0.2.8:40000"), &mac),
            "ip"
        );
        assert!(
            !a.verify_move("c@h", 5, addr("192.0.2.7:40001"), &mac),
            "port"
        );
        assert!(
            !a.verify_move("c@h", 5, addr("[::ffff:192.0.2.7]:40000"), &mac),
            "family"
        );
        for i in 0..32 {
            let mut bad = mac;
            bad[i] ^= 0x01;
            assert!(!a.verify_move("c@h", 5, at, &bad), "mac byte {i}");
        }
        let v6 = addr("[2001:db8::7]:9");
        let mac6 = o.move_mac("c@h", 5, v6);
        assert!(a.verify_move("c@h", 5, v6, &mac6));
        assert!(!a.verify_move("c@h", 5, addr("[2001:db8::8]:9"), &mac6));
    }

    #[test]
    fn keys_are_bound_to_the_dialog() {
        let a = KeySecret::from_bytes([7; 32]);
        let b = KeySecret::from_bytes([9; 32]);
        let (pa, pb) = (a.public(), b.public());
        let k1 = derive(a, &pb, "one", &pa, &pb).unwrap();
        let k2 = derive(b, &pa, "two", &pa, &pb).unwrap();
        let at = addr("10.0.0.1:1");
        assert!(!k2.verify_move("one", 1, at, &k1.move_mac("one", 1, at)));
    }

    #[test]
    fn another_key_does_not_verify() {
        let (o, _) = agree("c");
        let (_, a2) = agree("c");
        let at = addr("10.0.0.1:1");
        assert!(!a2.verify_move("c", 1, at, &o.move_mac("c", 1, at)));
    }

    #[test]
    fn low_order_points_are_refused() {
        let mut p = [0xffu8; 32];
        let mut minus = |last: u8, first: u8| {
            p[0] = first;
            p[31] = last;
            p
        };
        let points: Vec<[u8; 32]> = vec![
            [0; 32],
            {
                let mut one = [0u8; 32];
                one[0] = 1;
                one
            },
            hex32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
            hex32("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
            minus(0x7f, 0xec), // p - 1
            minus(0x7f, 0xed), // p
            minus(0x7f, 0xee), // p + 1
        ];
        for (i, bad) in points.iter().enumerate() {
            let ours = KeySecret::from_bytes([3; 32]);
            let pub_ours = ours.public();
            assert_eq!(
                derive(ours, bad, "c", &pub_ours, bad).unwrap_err(),
                KeyError::LowOrderPoint,
                "point {i}"
            );
        }
    }

    #[test]
    fn shares_must_fit_the_secret() {
        let a = || KeySecret::from_bytes([7; 32]);
        let pa = a().public();
        let pb = KeySecret::from_bytes([9; 32]).public();
        let pc = KeySecret::from_bytes([11; 32]).public();
        assert_eq!(
            derive(a(), &pb, "c", &pc, &pb).unwrap_err(),
            KeyError::NotOurShares
        );
        assert_eq!(
            derive(a(), &pb, "c", &pa, &pc).unwrap_err(),
            KeyError::NotOurShares
        );
        assert_eq!(
            derive(a(), &pa, "c", &pa, &pa).unwrap_err(),
            KeyError::Reflected
        );
        assert!(KeyError::LowOrderPoint.to_string().contains("low-order"));
    }

    #[test]
    fn debug_shows_no_secrets() {
        let (o, _) = test_pair("c");
        let text = format!("{o:?}");
        assert!(text.contains("Offerer"));
        assert!(!text.contains(&format!("{:?}", o.move_out.0)));
        let (s, p) = KeyShare::generate().unwrap();
        assert_eq!(s.public(), p);
    }

    #[test]
    fn counter_only_grows() {
        let mut c = MoveCounter::new();
        assert!(!c.accept(0), "0 is the first offer, never a move");
        assert!(c.accept(1));
        assert!(!c.accept(1), "replay");
        assert!(c.accept(5));
        assert!(!c.is_fresh(4));
        assert!(c.is_fresh(6));
        assert!(!c.accept(3));
        assert_eq!(c.last(), 5);
        assert!(c.accept(u64::MAX));
        assert!(!c.accept(u64::MAX));
    }
}
