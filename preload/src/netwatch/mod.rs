//! Learning that the host's addresses, routes or links changed, so the SIP
//! thread can re-REGISTER and move its streams (DESIGN.md §5).
//!
//! - [`parse`]: rtnetlink datagrams → [`NetEvent`]s (pure).
//! - [`coalesce`]: events → at most one [`Change`] per quiet period, and
//!   the current address set (pure, time passed in).
//!
//! Nothing here uses the rest of the library (no logging, no state), so an
//! integration test can compile this directory on its own.

pub mod coalesce;
pub mod parse;

pub use coalesce::{Change, Coalescer, DEFAULT_MAX_DELAY, DEFAULT_SETTLE};
pub use parse::{AddrFlags, IfAddr, Link, NetEvent, Route, Snapshot};
