//! The link model of the lab's delay relay (`wisp-netem`, see
//! `src/bin/wisp-netem.rs`): which frame is dropped and when a kept one is
//! due. No sockets and no clock here (time comes in as an argument), so that
//! unit tests can walk it with made-up instants.
//!
//! One [`LinkModel`] is one direction of one link. A frame that arrives at
//! `now` goes through, in this order:
//!
//! 1. **Loss**: dropped with probability `loss` (one PRNG draw per frame,
//!    [`SplitMix64`], seeded: the same seed and the same frames give the same
//!    drops). Loss is decided first, so a lost frame takes neither buffer
//!    space nor bottleneck time: it is the sender's frame that never made it.
//! 2. **Buffer**: dropped (drop-tail, like a router) when the bytes the link
//!    holds (waiting for the bottleneck plus "on the wire") and this frame
//!    would exceed `queue_bytes`. A frame that finds the link empty is always
//!    taken, whatever its size.
//! 3. **Bottleneck** (only with `rate_bps`): the frame is serialized after the
//!    ones before it, taking `wire_len * 8 / rate` seconds.
//! 4. **Propagation**: it is due `delay` after it left the bottleneck (after
//!    `now` without one).
//!
//! The delay is constant and the bottleneck is one FIFO, so due times never
//! go backwards: the frames leave in the order they came, and a plain
//! `VecDeque` is the whole queue.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The settings of one direction of a link.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Probability that a frame is lost, 0.0 to 1.0.
    pub loss: f64,
    /// Bottleneck rate in bits per second, `None` for none.
    pub rate_bps: Option<u64>,
    /// The most bytes the link may hold at once (see the module doc).
    pub queue_bytes: usize,
    /// Seed of the loss PRNG.
    pub seed: u64,
}

/// The default buffer without a bottleneck: 64 MiB, what 100 ms of one-way
/// delay holds at 5 Gbit/s (a lab path of 100 ms RTT puts 25 ms on each
/// relay, so there this allows 20 Gbit/s). It only bounds memory: nothing is
/// allocated until frames arrive.
pub const DEFAULT_QUEUE_BYTES: usize = 64 << 20;

/// The smallest default buffer: room for a few 64 KiB GSO super-frames.
pub const MIN_QUEUE_BYTES: usize = 256 << 10;

/// The default buffer: [`DEFAULT_QUEUE_BYTES`] without a bottleneck; with
/// one, what the link carries in `delay` plus 100 ms at `rate_bps` (the
/// frames on the wire plus a 100 ms router buffer, the classic
/// one-RTT-of-a-100-ms-path rule), at least [`MIN_QUEUE_BYTES`].
pub fn default_queue_bytes(delay: Duration, rate_bps: Option<u64>) -> usize {
    match rate_bps {
        None => DEFAULT_QUEUE_BYTES,
        Some(rate) => {
            let secs = delay.as_secs_f64() + 0.1;
            ((rate as f64 * secs / 8.0) as usize).max(MIN_QUEUE_BYTES)
        }
    }
}

/// What became of an offered frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Queued; to be sent at this instant.
    Due(Instant),
    /// Dropped by the loss draw.
    Lost,
    /// Dropped because the buffer was full.
    QueueFull,
}

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames offered.
    pub frames: u64,
    /// Bytes offered.
    pub bytes: u64,
    /// Frames dropped by the loss draw.
    pub lost: u64,
    /// Frames dropped because the buffer was full.
    pub queue_full: u64,
    /// The most bytes held at once.
    pub max_held: usize,
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for
/// drop decisions; seeded, so runs repeat.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// One direction of a link: decides each frame's fate and holds the kept
/// ones (`T`: the frame) until they are due.
#[derive(Debug)]
pub struct LinkModel<T> {
    delay: Duration,
    /// A frame is lost when a draw is below this (`u64::MAX`: always).
    loss_below: u64,
    always_lose: bool,
    rate_bps: Option<u64>,
    queue_bytes: usize,
    rng: SplitMix64,
    /// When the bottleneck has finished serializing the last taken frame.
    free_at: Option<Instant>,
    queue: VecDeque<(Instant, usize, T)>,
    held: usize,
    stats: Stats,
}

impl<T> LinkModel<T> {
    pub fn new(cfg: &LinkConfig) -> LinkModel<T> {
        let loss = if cfg.loss.is_nan() {
            0.0
        } else {
            cfg.loss.clamp(0.0, 1.0)
        };
        LinkModel {
            delay: cfg.delay,
            // 2^64 * loss, exact enough: the draw is uniform on 0..2^64.
            loss_below: (loss * 18_446_744_073_709_551_616.0) as u64,
            always_lose: loss >= 1.0,
            rate_bps: cfg.rate_bps.filter(|&r| r > 0),
            queue_bytes: cfg.queue_bytes,
            rng: SplitMix64::new(cfg.seed),
            free_at: None,
            queue: VecDeque::new(),
            held: 0,
            stats: Stats::default(),
        }
    }

    /// Offers a frame of `len` bytes (what the buffer counts) that takes
    /// `wire_len` bytes of bottleneck time (see [`wire_len`]), arrived at
    /// `now`. A frame that is `Due` is kept and comes out of
    /// [`LinkModel::pop_due`].
    pub fn offer(&mut self, now: Instant, len: usize, wire_len: usize, frame: T) -> Verdict {
        self.stats.frames += 1;
        self.stats.bytes += len as u64;
        let draw = self.rng.next_u64();
        if self.always_lose || draw < self.loss_below {
            self.stats.lost += 1;
            return Verdict::Lost;
        }
        if self.held > 0 && self.held + len > self.queue_bytes {
            self.stats.queue_full += 1;
            return Verdict::QueueFull;
        }
        let sent = match self.rate_bps {
            None => now,
            Some(rate) => {
                let start = match self.free_at {
                    Some(f) if f > now => f,
                    _ => now,
                };
                let end = start + serialization(wire_len, rate);
                self.free_at = Some(end);
                end
            }
        };
        let mut due = sent + self.delay;
        // Never behind the frame before (it cannot be, see the module doc;
        // this keeps FIFO order even if a caller's clock went backwards).
        if let Some(&(last, _, _)) = self.queue.back() {
            due = due.max(last);
        }
        self.queue.push_back((due, len, frame));
        self.held += len;
        self.stats.max_held = self.stats.max_held.max(self.held);
        Verdict::Due(due)
    }

    /// When the next frame is due, if one is held.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|&(due, _, _)| due)
    }

    /// The next frame if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        match self.queue.front() {
            Some(&(due, _, _)) if due <= now => {
                let (_, len, frame) = self.queue.pop_front()?;
                self.held -= len;
                Some(frame)
            }
            _ => None,
        }
    }

    /// Bytes held (queued, not yet due).
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }
}

/// Time to serialize `bytes` at `rate_bps` (rounded up to a nanosecond).
pub fn serialization(bytes: usize, rate_bps: u64) -> Duration {
    let ns = (bytes as u128 * 8 * 1_000_000_000).div_ceil(rate_bps as u128);
    Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
}

/// The `struct virtio_net_hdr` that a packet socket with `PACKET_VNET_HDR`
/// puts before every frame (and wants before every frame it sends): how the
/// kernel describes a GSO super-frame and a checksum left to finish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Its size on the socket (the legacy header, no `num_buffers`).
    pub const LEN: usize = 10;
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: csum_start/csum_offset are valid.
    pub const F_NEEDS_CSUM: u8 = 1;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    pub const GSO_UDP: u8 = 3;
    pub const GSO_TCPV6: u8 = 4;
    pub const GSO_UDP_L4: u8 = 5;
    pub const GSO_ECN: u8 = 0x80;

    /// Parses the first [`VnetHdr::LEN`] bytes (native byte order, which is
    /// what a packet socket uses on a little-endian host).
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..Self::LEN)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    pub fn is_gso(&self) -> bool {
        self.gso_type & !Self::GSO_ECN != Self::GSO_NONE
    }
}

/// The bytes a frame takes on a real wire: a GSO super-frame of `frame.len()`
/// bytes becomes `n` frames that each repeat the headers (Ethernet, IP, TCP
/// or UDP), so it takes `len + (n - 1) * headers`. The header length is
/// `csum_start` (where the transport header begins) plus the transport
/// header's own length; when that cannot be worked out, `len` (about 3%
/// short for full-sized TCP segments). A plain frame takes its length.
/// Preamble, FCS and inter-frame gap are not counted.
pub fn wire_len(hdr: &VnetHdr, frame: &[u8]) -> usize {
    let len = frame.len();
    if !hdr.is_gso() || hdr.gso_size == 0 || hdr.flags & VnetHdr::F_NEEDS_CSUM == 0 {
        return len;
    }
    let l4 = usize::from(hdr.csum_start);
    let l4_len = match hdr.gso_type & !VnetHdr::GSO_ECN {
        VnetHdr::GSO_TCPV4 | VnetHdr::GSO_TCPV6 => match frame.get(l4 + 12) {
            Some(b) if b >> 4 >= 5 => usize::from(b >> 4) * 4,
            _ => return len,
        },
        VnetHdr::GSO_UDP | VnetHdr::GSO_UDP_L4 => 8,
        _ => return len,
    };
    let headers = l4 + l4_len;
    if headers >= len {
        return len;
    }
    let segments = (len - headers).div_ceil(usize::from(hdr.gso_size));
    len + (segments - 1) * headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LinkConfig {
        LinkConfig {
            delay: Duration::from_millis(10),
            loss: 0.0,
            rate_bps: None,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            seed: 1,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn constant_delay_keeps_order_and_releases_on_time() {
        let t0 = Instant::now();
        let mut m = LinkModel::new(&cfg());
        assert_eq!(m.offer(t0, 100, 100, 1), Verdict::Due(t0 + ms(10)));
        assert_eq!(m.offer(t0 + ms(3), 200, 200, 2), Verdict::Due(t0 + ms(13)));
        assert_eq!(m.held(), 300);
        assert_eq!(m.next_due(), Some(t0 + ms(10)));
        assert_eq!(m.pop_due(t0 + ms(9)), None);
        assert_eq!(m.pop_due(t0 + ms(10)), Some(1));
        assert_eq!(m.pop_due(t0 + ms(12)), None);
        assert_eq!(m.held(), 200);
        assert_eq!(m.pop_due(t0 + ms(100)), Some(2));
        assert_eq!(m.pop_due(t0 + ms(100)), None);
        assert_eq!(m.next_due(), None);
        assert_eq!(m.held(), 0);
    }

    #[test]
    fn zero_delay_is_due_at_once() {
        let t0 = Instant::now();
        let mut m = LinkModel::new(&LinkConfig {
            delay: Duration::ZERO,
            ..cfg()
        });
        assert_eq!(m.offer(t0, 60, 60, ()), Verdict::Due(t0));
        assert_eq!(m.pop_due(t0), Some(()));
    }

    #[test]
    fn a_clock_going_backwards_does_not_reorder() {
        let t0 = Instant::now();
        let mut m = LinkModel::new(&cfg());
        m.offer(t0 + ms(5), 1, 1, 'a');
        assert_eq!(m.offer(t0, 1, 1, 'b'), Verdict::Due(t0 + ms(15)));
        assert_eq!(m.pop_due(t0 + ms(15)), Some('a'));
        assert_eq!(m.pop_due(t0 + ms(15)), Some('b'));
    }

    #[test]
    fn buffer_drops_tail_and_frees_on_release() {
        let t0 = Instant::now();
        let mut m = LinkModel::new(&LinkConfig {
            queue_bytes: 1000,
            ..cfg()
        });
        assert!(matches!(m.offer(t0, 600, 600, 1), Verdict::Due(_)));
        assert!(matches!(m.offer(t0, 400, 400, 2), Verdict::Due(_)));
        assert_eq!(m.offer(t0, 1, 1, 3), Verdict::QueueFull);
        assert_eq!(m.pop_due(t0 + ms(10)), Some(1));
        assert!(matches!(m.offer(t0 + ms(10), 600, 600, 4), Verdict::Due(_)));
        assert_eq!(m.stats().queue_full, 1);
        assert_eq!(m.stats().max_held, 1000);
    }

    #[test]
    fn an_oversized_frame_on_an_empty_link_is_taken() {
        let t0 = Instant::now();
        let mut m = LinkModel::new(&LinkConfig {
            queue_bytes: 100,
            ..cfg()
        });
        assert!(matches!(m.offer(t0, 5000, 5000, ()), Verdict::Due(_)));
        assert_eq!(m.offer(t0, 1, 1, ()), Verdict::QueueFull);
    }

    #[test]
    fn bottleneck_serializes_back_to_back() {
        let t0 = Instant::now();
        // 8 Mbit/s: 1000 bytes take 1 ms.
        let mut m = LinkModel::new(&LinkConfig {
            rate_bps: Some(8_000_000),
            ..cfg()
        });
        assert_eq!(m.offer(t0, 1000, 1000, 1), Verdict::Due(t0 + ms(11)));
        // Arrives while the first is on the bottleneck: waits for it.
        assert_eq!(m.offer(t0, 1000, 1000, 2), Verdict::Due(t0 + ms(12)));
        // The wire length, not the buffer length, sets the time.
        assert_eq!(m.offer(t0, 10, 3000, 3), Verdict::Due(t0 + ms(15)));
        // After an idle gap the bottleneck starts fresh.
        assert_eq!(
            m.offer(t0 + ms(50), 1000, 1000, 4),
            Verdict::Due(t0 + ms(61))
        );
    }

    #[test]
    fn bottleneck_backlog_fills_the_buffer() {
        let t0 = Instant::now();
        // 8 Mbit/s, no delay, 10 000 bytes of buffer: 10 frames of 1000 fit,
        // the 11th does not until one has gone.
        let mut m = LinkModel::new(&LinkConfig {
            delay: Duration::ZERO,
            rate_bps: Some(8_000_000),
            queue_bytes: 10_000,
            ..cfg()
        });
        for i in 0..10 {
            assert_eq!(
                m.offer(t0, 1000, 1000, i),
                Verdict::Due(t0 + ms(i + 1)),
                "{i}"
            );
        }
        assert_eq!(m.offer(t0, 1000, 1000, 10), Verdict::QueueFull);
        assert_eq!(m.pop_due(t0 + ms(1)), Some(0));
        assert_eq!(
            m.offer(t0 + ms(1), 1000, 1000, 11),
            Verdict::Due(t0 + ms(11))
        );
    }

    #[test]
    fn loss_rate_is_close_and_repeats_with_the_seed() {
        let t0 = Instant::now();
        let run = |seed: u64| {
            let mut m = LinkModel::new(&LinkConfig {
                loss: 0.05,
                delay: Duration::ZERO,
                seed,
                ..cfg()
            });
            let verdicts: Vec<bool> = (0..100_000u32)
                .map(|i| {
                    let v = m.offer(t0, 100, 100, i) == Verdict::Lost;
                    m.pop_due(t0);
                    v
                })
                .collect();
            (m.stats().lost, verdicts)
        };
        let (lost, a) = run(7);
        assert!((4_500..5_500).contains(&lost), "{lost} of 100000");
        assert_eq!(run(7).1, a, "same seed, same drops");
        assert_ne!(run(8).1, a, "another seed, other drops");
    }

    #[test]
    fn no_loss_and_full_loss() {
        let t0 = Instant::now();
        let mut keep = LinkModel::new(&cfg());
        let mut lose = LinkModel::new(&LinkConfig { loss: 1.0, ..cfg() });
        for i in 0..10_000 {
            assert_ne!(keep.offer(t0, 1, 1, i), Verdict::Lost);
            assert_eq!(lose.offer(t0, 1, 1, i), Verdict::Lost);
        }
        assert_eq!(lose.held(), 0);
        assert_eq!(lose.next_due(), None);
    }

    #[test]
    fn default_buffers() {
        assert_eq!(default_queue_bytes(ms(25), None), DEFAULT_QUEUE_BYTES);
        // 100 Mbit/s, 25 ms: 125 ms of 12.5 MB/s.
        assert_eq!(default_queue_bytes(ms(25), Some(100_000_000)), 1_562_500);
        assert_eq!(default_queue_bytes(ms(0), Some(1_000_000)), MIN_QUEUE_BYTES);
    }

    #[test]
    fn serialization_times() {
        assert_eq!(
            serialization(1500, 1_000_000_000),
            Duration::from_nanos(12_000)
        );
        assert_eq!(serialization(1, 3), Duration::from_nanos(2_666_666_667));
    }

    /// An Ethernet + IPv4 + TCP (20-byte header plus `opts`) frame with
    /// `payload` bytes.
    fn tcp4_frame(opts: usize, payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20 + opts + payload];
        f[14 + 20 + 12] = (((20 + opts) / 4) as u8) << 4;
        f
    }

    #[test]
    fn wire_length_of_frames() {
        let plain = VnetHdr::default();
        assert_eq!(wire_len(&plain, &[0; 1514]), 1514);
        // A TSO super-frame: 66 bytes of headers (TCP with timestamps),
        // 10 segments of 1448 bytes, the last one short.
        let f = tcp4_frame(12, 9 * 1448 + 100);
        let gso = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: VnetHdr::GSO_TCPV4 | VnetHdr::GSO_ECN,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        assert_eq!(wire_len(&gso, &f), f.len() + 9 * 66);
        // UDP GSO: 8-byte header.
        let udp = VnetHdr {
            gso_type: VnetHdr::GSO_UDP_L4,
            gso_size: 1000,
            ..gso
        };
        assert_eq!(wire_len(&udp, &[0; 42 + 3000]), 3042 + 2 * 42);
        // Headers that cannot be read: the frame's own length.
        let short = VnetHdr {
            csum_start: 20_000,
            ..gso
        };
        assert_eq!(wire_len(&short, &f), f.len());
        let no_tcp = VnetHdr {
            csum_start: 2000,
            ..gso
        };
        assert_eq!(wire_len(&no_tcp, &f), f.len());
    }

    #[test]
    fn vnet_header_parses() {
        let mut b = [0u8; 12];
        b[0] = 1;
        b[1] = 4;
        b[4..6].copy_from_slice(&1428u16.to_ne_bytes());
        b[6..8].copy_from_slice(&54u16.to_ne_bytes());
        let h = VnetHdr::parse(&b).unwrap();
        assert_eq!(
            (h.flags, h.gso_type, h.gso_size, h.csum_start),
            (1, 4, 1428, 54)
        );
        assert!(h.is_gso());
        assert!(VnetHdr::parse(&b[..9]).is_none());
    }
}
