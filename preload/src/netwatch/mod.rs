//! Learning that the host's addresses, routes or links changed, so the SIP
//! thread can re-REGISTER and move its streams (DESIGN.md §5).
//!
//! - [`parse`]: rtnetlink datagrams → [`NetEvent`]s (pure).
//!
//! Nothing here uses the rest of the library (no logging, no state), so an
//! integration test can compile this directory on its own.

pub mod parse;

pub use parse::{AddrFlags, IfAddr, Link, NetEvent, Route, Snapshot};
