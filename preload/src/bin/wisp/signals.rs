//! SIGINT and SIGTERM as a flag and a wake-up, without a signal handler.
//!
//! The signals are blocked in the calling thread (and so in every thread it
//! starts later) and a dedicated thread takes them with `sigwait`. Ordinary
//! code then runs on receipt, not async-signal-safe code in a handler, and
//! the [`Waker`] makes the driver's blocked `poll` return at once.

use sipcore::io::Waker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Call before starting any other thread.
pub fn on_stop(waker: Waker) -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    };
    // SAFETY: a valid sigset; the old mask is not wanted.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("wisp-signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: a valid sigset and a live c_int to write into.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                flag.store(true, Ordering::SeqCst);
                waker.wake();
            }
        })?;
    Ok(stop)
}
