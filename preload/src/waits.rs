//! poll/select on stream descriptors across a move.
//!
//! A thread blocked in poll() or select() waits on the open file the
//! descriptor named when it started; after a move puts a new socket under
//! the descriptor, that wait would go on watching the old, dead socket.
//! So a wait that includes a stream descriptor runs in short slices, each
//! a fresh call on whatever the descriptors name now. Waits on descriptors
//! that are not streams are untouched. (epoll needs none of this: its
//! registrations are put back on the new socket, and a blocked epoll_wait
//! sees them.)

use std::time::{Duration, Instant};

/// Longest a slice lasts: the most a move can add to a wait's wake-up.
const SLICE: Duration = Duration::from_millis(50);

/// Run `once(slice_ms)` until it reports something (non-zero) or the
/// program's `timeout` (None: forever) has passed. `once` must restore any
/// in/out sets itself before each call.
pub fn sliced(timeout: Option<Duration>, mut once: impl FnMut(i32) -> i32) -> i32 {
    let start = Instant::now();
    loop {
        let slice = match timeout {
            None => SLICE,
            Some(t) => {
                let left = t.saturating_sub(start.elapsed());
                left.min(SLICE)
            }
        };
        let rc = once(slice.as_millis() as i32);
        if rc != 0 {
            return rc;
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return 0;
        }
    }
}

/// A poll()-style timeout in milliseconds (negative: forever).
pub fn from_ms(ms: i32) -> Option<Duration> {
    (ms >= 0).then(|| Duration::from_millis(ms as u64))
}
