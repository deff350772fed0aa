//! The sender's copy of the bytes the peer may not have yet.
//!
//! A move kills the old TCP connection with an unknown amount of data still
//! in flight: written by the program, accepted by our kernel, maybe never
//! seen by the peer's. The peer tells us how much it received (its rx); we
//! must then resend exactly the bytes from there on. The kernel will not
//! give back what sits in a dead socket's send queue, so the library keeps
//! its own copy of every byte until TCP says the peer acknowledged it
//! (`tcpi_bytes_acked`), and drops it then with [`ReplayRing::trim_to`].
//!
//! Positions are absolute stream offsets (`u64`, counted from the first
//! byte the program ever wrote on the stream), never indices into the
//! buffer: the peer's rx, TCP_INFO's acked count and our tx all speak that
//! language, so no conversion can drift.
//!
//! The storage is one contiguous `Vec` used as a circle (head + len), so
//! the bytes to resend come out as at most two borrowed slices, ready for
//! `writev`, with no copy. Memory grows on demand up to the capacity rather
//! than being reserved up front: most streams never fill a kernel-sized
//! send buffer, and memory per stream is one of the numbers we publish.

use std::fmt;

/// Why the bytes from a given offset cannot be handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The bytes from `offset` were already dropped (the oldest one held is
    /// at `start`): the stream cannot be resumed exactly.
    Gone { offset: u64, start: u64 },
    /// `offset` is beyond everything ever sent (`tx`): whoever named it is
    /// wrong or lying.
    Ahead { offset: u64, tx: u64 },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::Gone { offset, start } => write!(
                f,
                "bytes from offset {offset} are gone (oldest held is {start})"
            ),
            RingError::Ahead { offset, tx } => {
                write!(f, "offset {offset} is past the {tx} bytes ever sent")
            }
        }
    }
}

impl std::error::Error for RingError {}

/// Bytes `[start, tx)` of an outgoing stream, bounded by a capacity.
pub struct ReplayRing {
    /// Physical storage; its length grows towards `cap` only as data needs
    /// it. Data is always `buf[head..]` then `buf[..]` wrapped, `len` bytes.
    buf: Vec<u8>,
    head: usize,
    len: usize,
    cap: usize,
    tx: u64,
}

impl fmt::Debug for ReplayRing {
    /// Counters only: the bytes are the program's data, not ours to log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayRing")
            .field("start", &self.start())
            .field("tx", &self.tx)
            .field("len", &self.len)
            .field("capacity", &self.cap)
            .finish()
    }
}

impl ReplayRing {
    /// An empty ring that will hold at most `capacity` bytes.
    pub fn new(capacity: usize) -> ReplayRing {
        ReplayRing {
            buf: Vec::new(),
            head: 0,
            len: 0,
            cap: capacity,
            tx: 0,
        }
    }

    /// Total bytes ever pushed: the stream offset the next byte will get.
    pub fn tx(&self) -> u64 {
        self.tx
    }

    /// Stream offset of the oldest byte held (equal to `tx` when empty).
    pub fn start(&self) -> u64 {
        self.tx - self.len as u64
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of storage reserved so far: it grows towards the capacity
    /// only as the bytes held need it, and never shrinks.
    pub fn reserved(&self) -> usize {
        self.buf.len()
    }

    /// Most bytes the ring will hold.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Room left: how much the next [`ReplayRing::push`] takes at most.
    /// The library accepts no more from the program than this, so every
    /// byte that reaches the socket has a copy here.
    pub fn free(&self) -> usize {
        self.cap - self.len
    }

    /// Append as much of `data` as fits; returns how much that was. The
    /// rest stays with the caller (the program sees a short write or
    /// EAGAIN), so nothing is ever sent that could not be resent.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        if n == 0 {
            return 0;
        }
        self.reserve(self.len + n);
        let size = self.buf.len();
        let tail = (self.head + self.len) % size;
        let first = n.min(size - tail);
        self.buf[tail..tail + first].copy_from_slice(&data[..first]);
        self.buf[..n - first].copy_from_slice(&data[first..n]);
        self.len += n;
        self.tx += n as u64;
        n
    }

    /// Raise the capacity (the kernel autotuned its send buffer up, and the
    /// ring must cover all of it). Never shrinks: lowering the capacity
    /// below what is held would drop bytes the peer may need.
    pub fn grow_to(&mut self, new_cap: usize) {
        self.cap = self.cap.max(new_cap);
    }

    /// Forget the bytes below stream offset `acked`: the peer has them.
    /// An offset below `start` is old news and one beyond `tx` is nonsense
    /// (a stale or garbled count); either is ignored rather than trusted.
    pub fn trim_to(&mut self, acked: u64) {
        if acked < self.start() || acked > self.tx {
            return;
        }
        // acked - start <= len, a usize.
        let drop = (acked - self.start()) as usize;
        if drop == self.len {
            self.head = 0;
            self.len = 0;
        } else {
            self.head = (self.head + drop) % self.buf.len();
            self.len -= drop;
        }
    }

    /// The bytes from stream offset `offset` to `tx`, in order, as at most
    /// two slices (the second empty unless the data wraps).
    pub fn slice_from(&self, offset: u64) -> Result<(&[u8], &[u8]), RingError> {
        let start = self.start();
        if offset < start {
            return Err(RingError::Gone { offset, start });
        }
        if offset > self.tx {
            return Err(RingError::Ahead {
                offset,
                tx: self.tx,
            });
        }
        let skip = (offset - start) as usize;
        let n = self.len - skip;
        if n == 0 {
            return Ok((&[], &[]));
        }
        let size = self.buf.len();
        let from = (self.head + skip) % size;
        let first = n.min(size - from);
        Ok((&self.buf[from..from + first], &self.buf[..n - first]))
    }

    /// Make the storage at least `need` bytes long (never past `cap`),
    /// doubling so that a stream filling its ring copies each byte O(1)
    /// times. Growing lays the data out from index 0 again.
    fn reserve(&mut self, need: usize) {
        if need <= self.buf.len() {
            return;
        }
        let size = need
            .max(self.buf.len().saturating_mul(2))
            .max(4096)
            .min(self.cap);
        let mut fresh = vec![0u8; size];
        if let Ok((a, b)) = self.slice_from(self.start()) {
            fresh[..a.len()].copy_from_slice(a);
            fresh[a.len()..a.len() + b.len()].copy_from_slice(b);
        }
        self.buf = fresh;
        self.head = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(r: &ReplayRing, from: u64) -> Vec<u8> {
        let (a, b) = r.slice_from(from).unwrap();
        [a, b].concat()
    }

    #[test]
    fn push_trim_slice() {
        let mut r = ReplayRing::new(8);
        assert!(r.is_empty());
        assert_eq!(r.push(b"hello"), 5);
        assert_eq!((r.start(), r.tx(), r.len()), (0, 5, 5));
        assert_eq!(r.push(b"world"), 3, "only three bytes fit");
        assert_eq!(r.free(), 0);
        assert_eq!(r.push(b"!"), 0);
        assert_eq!(joined(&r, 0), b"hellowor");
        assert_eq!(joined(&r, 5), b"wor");
        assert_eq!(joined(&r, 8), b"");
        r.trim_to(6);
        assert_eq!((r.start(), r.tx(), r.len()), (6, 8, 2));
        assert_eq!(r.push(b"ld!!!!!"), 6);
        assert_eq!(joined(&r, 6), b"orld!!!!");
        assert_eq!(r.tx(), 14);
    }

    #[test]
    fn storage_is_reserved_as_data_needs_it() {
        let mut r = ReplayRing::new(1 << 20);
        assert_eq!(r.reserved(), 0);
        r.push(&[1; 100]);
        assert_eq!(r.reserved(), 4096);
        r.push(&[2; 4000]);
        assert_eq!(r.reserved(), 8192, "doubles");
        // Trimming first keeps what is held within the storage there is.
        r.trim_to(4000);
        r.push(&[3; 4000]);
        assert_eq!((r.len(), r.reserved()), (4100, 8192));
        assert_eq!(r.slice_from(4000).unwrap().0[..100], [2; 100]);
    }

    #[test]
    fn wrapped_data_comes_as_two_slices() {
        let mut r = ReplayRing::new(4);
        r.push(b"abcd");
        r.trim_to(3);
        r.push(b"efg");
        let (a, b) = r.slice_from(3).unwrap();
        assert_eq!((a, b), (&b"d"[..], &b"efg"[..]));
        let (a, b) = r.slice_from(5).unwrap();
        assert_eq!([a, b].concat(), b"fg");
    }

    #[test]
    fn out_of_range_offsets() {
        let mut r = ReplayRing::new(16);
        r.push(b"0123456789");
        r.trim_to(4);
        assert_eq!(
            r.slice_from(3),
            Err(RingError::Gone {
                offset: 3,
                start: 4
            })
        );
        assert_eq!(
            r.slice_from(11),
            Err(RingError::Ahead { offset: 11, tx: 10 })
        );
        assert!(r.slice_from(3).unwrap_err().to_string().contains("gone"));
        // Stale and impossible acks change nothing.
        r.trim_to(2);
        r.trim_to(11);
        assert_eq!((r.start(), r.tx()), (4, 10));
        r.trim_to(10);
        assert!(r.is_empty());
        assert_eq!(r.start(), 10);
        assert_eq!(joined(&r, 10), b"");
    }

    #[test]
    fn grow_keeps_data_and_never_shrinks() {
        let mut r = ReplayRing::new(4);
        r.push(b"abcd");
        r.trim_to(2);
        r.push(b"ef");
        r.grow_to(6000);
        assert_eq!(r.capacity(), 6000);
        assert_eq!(r.push(&[b'x'; 5000]), 5000);
        assert_eq!(r.push(&[b'y'; 2000]), 996);
        let all = joined(&r, 2);
        assert_eq!(&all[..4], b"cdef");
        assert_eq!(all.len(), 6000);
        r.grow_to(10);
        assert_eq!(r.capacity(), 6000);
        assert_eq!(r.push(b"z"), 0);
    }

    #[test]
    fn zero_capacity_holds_nothing() {
        let mut r = ReplayRing::new(0);
        assert_eq!(r.push(b"abc"), 0);
        assert_eq!(r.tx(), 0);
        assert_eq!(joined(&r, 0), b"");
        r.trim_to(0);
        assert!(format!("{r:?}").contains("capacity: 0"));
    }

    #[test]
    fn storage_grows_lazily() {
        let mut r = ReplayRing::new(1 << 20);
        r.push(b"small");
        assert!(r.buf.len() < 1 << 20);
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// 100k random pushes, trims (sane and absurd), growths and reads,
    /// checked after each against the obvious model: every byte ever
    /// pushed in one Vec, and the start offset.
    #[test]
    fn matches_naive_model() {
        let mut rng = Rng(0x5eed_0f7e_5712_3400);
        let mut r = ReplayRing::new(37);
        let mut sent: Vec<u8> = Vec::new();
        let mut start = 0u64;
        let mut cap = 37usize;
        let mut next_byte = 0u8;
        for step in 0..100_000 {
            match rng.below(10) {
                0..=3 => {
                    let n = rng.below(cap as u64 * 2 + 2) as usize;
                    let data: Vec<u8> = (0..n)
                        .map(|_| {
                            next_byte = next_byte.wrapping_add(1);
                            next_byte
                        })
                        .collect();
                    let took = r.push(&data);
                    let room = cap - (sent.len() - start as usize);
                    assert_eq!(took, n.min(room), "step {step}");
                    sent.extend_from_slice(&data[..took]);
                    next_byte = next_byte.wrapping_sub((n - took) as u8);
                }
                4..=6 => {
                    let tx = sent.len() as u64;
                    let acked = rng.below(tx + 8).saturating_sub(4);
                    r.trim_to(acked);
                    if acked >= start && acked <= tx {
                        start = acked;
                    }
                }
                7 => {
                    // Mostly no-ops (asking for less than there is),
                    // sometimes a real growth.
                    let ask = rng.below(cap as u64 + 10) as usize;
                    r.grow_to(ask);
                    cap = cap.max(ask);
                }
                _ => {
                    let tx = sent.len() as u64;
                    let off = rng.below(tx + 6).saturating_sub(3);
                    match r.slice_from(off) {
                        Ok((a, b)) => {
                            assert!(off >= start && off <= tx, "step {step}");
                            assert_eq!([a, b].concat(), &sent[off as usize..], "step {step}");
                        }
                        Err(RingError::Gone { offset, start: s }) => {
                            assert_eq!((offset, s), (off, start), "step {step}");
                            assert!(off < start);
                        }
                        Err(RingError::Ahead { offset, tx: t }) => {
                            assert_eq!((offset, t), (off, tx), "step {step}");
                            assert!(off > tx);
                        }
                    }
                }
            }
            assert_eq!(r.tx(), sent.len() as u64, "step {step}");
            assert_eq!(r.start(), start, "step {step}");
            assert_eq!(r.len(), sent.len() - start as usize, "step {step}");
            assert_eq!(r.capacity(), cap, "step {step}");
            assert!(r.len() <= r.capacity());
        }
    }
}
